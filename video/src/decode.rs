//! The decoder: coded packets in (what a publisher sends: VP8, H.264; or our own AV1/VP9),
//! [`Yuv420Frame`]s out. Bad input — truncated, corrupted, another codec's bitstream — is an
//! [`Error::Decode`] for that packet, counted in [`DecodeStats::errors`]; the decoder stays
//! usable, and the caller asks the publisher for a keyframe. It never panics on input bytes.
//!
//! Decoders are opened with `err_detect=explode` so that FFmpeg's H.264 decoder reports the
//! damage it would otherwise conceal silently, and libdav1d with `max_frame_delay=1` so AV1
//! frames come out as their packet goes in (real time, not throughput).

use ff::codec;
use ff::format::Pixel;
use ff::software::scaling;
use ff::util::error::EAGAIN;
use ff::{Dictionary, frame};
use ffmpeg_next as ff;

use crate::encode::VideoCodec;
use crate::error::{Error, Result, ff};
use crate::frame::{MAX_HEIGHT, MAX_WIDTH, Yuv420Frame, chroma_size};

/// Counters since the decoder was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub packets: u64,
    pub frames: u64,
    /// Packets the decoder refused and frames it flagged as damaged.
    pub errors: u64,
}

/// One stream's decoder.
pub struct VideoDecoder {
    /// `None` for formats outside the engine's (rawvideo from Y4M, MPEG-4 Part 2, …), which
    /// only files bring.
    codec: Option<VideoCodec>,
    dec: ff::decoder::Video,
    /// Converts to `yuv420p` when the stream is something else (4:4:4, 10-bit, full range).
    scaler: Option<(scaling::Context, Pixel, u32, u32)>,
    stats: DecodeStats,
}

impl std::fmt::Debug for VideoDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoDecoder")
            .field("codec", &self.codec)
            .field("stats", &self.stats)
            .finish()
    }
}

impl VideoDecoder {
    /// A decoder for `codec` with no out-of-band parameters (VP8, VP9, AV1 and Annex-B H.264
    /// carry everything in-band).
    pub fn new(codec: VideoCodec) -> Result<Self> {
        crate::init()?;
        let c = ff::decoder::find(codec.id()).ok_or(Error::DecoderUnavailable(codec.name()))?;
        Self::open(Some(codec), codec::Context::new_with_codec(c), c)
    }

    /// A decoder for a stream read from a file (its parameters carry e.g. H.264's avcC); any
    /// video format this FFmpeg decodes.
    pub(crate) fn from_parameters(params: codec::Parameters) -> Result<Self> {
        crate::init()?;
        let id = params.id();
        let c = ff::decoder::find(id).ok_or(Error::DecoderUnavailable(id.name()))?;
        let ctx = codec::Context::from_parameters(params).map_err(ff("decoder parameters"))?;
        Self::open(VideoCodec::from_id(id), ctx, c)
    }

    fn open(codec: Option<VideoCodec>, ctx: codec::Context, c: ff::Codec) -> Result<Self> {
        let mut o = Dictionary::new();
        o.set("err_detect", "explode");
        o.set("threads", "1");
        if c.name() == "libdav1d" {
            o.set("max_frame_delay", "1");
        }
        let dec = ctx
            .decoder()
            .open_as_with(c, o)
            .map_err(ff("open decoder"))?;
        let dec = dec.video().map_err(ff("open video decoder"))?;
        Ok(Self {
            codec,
            dec,
            scaler: None,
            stats: DecodeStats::default(),
        })
    }

    /// The engine's codec this decoder reads (`None` for other formats read from files).
    pub fn codec(&self) -> Option<VideoCodec> {
        self.codec
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Decodes one packet; appends the frames it completes. An `Err` means this packet (or a
    /// frame it completed) was bad; it is counted, and the next packet may be sent as usual.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<Yuv420Frame>) -> Result<()> {
        self.stats.packets += 1;
        if data.is_empty() {
            self.stats.errors += 1;
            return Err(Error::Decode(ff::Error::InvalidData));
        }
        let p = ff::Packet::copy(data);
        if let Err(e) = self.dec.send_packet(&p) {
            self.stats.errors += 1;
            // Frames the decoder completed before the bad packet are still good.
            let _ = self.receive(out);
            return Err(Error::Decode(e));
        }
        self.receive(out)
    }

    /// Ends the stream: appends the frames the decoder still holds.
    pub fn flush(&mut self, out: &mut Vec<Yuv420Frame>) -> Result<()> {
        self.dec.send_eof().map_err(ff("flush decoder"))?;
        self.receive(out)
    }

    fn receive(&mut self, out: &mut Vec<Yuv420Frame>) -> Result<()> {
        let mut f = frame::Video::empty();
        let mut first_err = None;
        loop {
            match self.dec.receive_frame(&mut f) {
                Ok(()) => {
                    if f.is_corrupt() || f.has_decode_errors() {
                        self.stats.errors += 1;
                        first_err.get_or_insert(Error::Decode(ff::Error::InvalidData));
                        continue;
                    }
                    match self.convert(&f) {
                        Ok(y) => {
                            self.stats.frames += 1;
                            out.push(y);
                        }
                        Err(e) => {
                            self.stats.errors += 1;
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Err(ff::Error::Other { errno }) if errno == EAGAIN => break,
                Err(ff::Error::Eof) => break,
                Err(e) => {
                    self.stats.errors += 1;
                    first_err.get_or_insert(Error::Decode(e));
                    break;
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn convert(&mut self, f: &frame::Video) -> Result<Yuv420Frame> {
        let (w, h) = (f.width(), f.height());
        if w == 0 || h == 0 || w > MAX_WIDTH || h > MAX_HEIGHT {
            return Err(Error::InvalidFrame(format!("decoded size {w}x{h}")));
        }
        if f.format() == Pixel::YUV420P || f.format() == Pixel::YUVJ420P {
            return Ok(from_ffmpeg(f));
        }
        let fresh = !matches!(&self.scaler, Some((_, fmt, sw, sh)) if *fmt == f.format() && *sw == w && *sh == h);
        if fresh {
            let s = scaling::Context::get(
                f.format(),
                w,
                h,
                Pixel::YUV420P,
                w,
                h,
                scaling::Flags::BILINEAR,
            )
            .map_err(ff("pixel format converter"))?;
            self.scaler = Some((s, f.format(), w, h));
        }
        let (s, ..) = self.scaler.as_mut().expect("set above");
        let mut conv = frame::Video::empty();
        s.run(f, &mut conv).map_err(ff("convert to yuv420p"))?;
        Ok(from_ffmpeg(&conv))
    }
}

/// Copies a `yuv420p` FFmpeg frame into a packed one.
pub(crate) fn from_ffmpeg(f: &frame::Video) -> Yuv420Frame {
    let (w, h) = (f.width(), f.height());
    let (cw, ch) = chroma_size(w, h);
    let plane = |i: usize, pw: u32, ph: u32| {
        let stride = f.stride(i);
        let data = f.data(i);
        let mut v = Vec::with_capacity((pw * ph) as usize);
        for row in 0..ph as usize {
            v.extend_from_slice(&data[row * stride..row * stride + pw as usize]);
        }
        v
    };
    Yuv420Frame {
        width: w,
        height: h,
        y: plane(0, w, h),
        u: plane(1, cw, ch),
        v: plane(2, cw, ch),
    }
}
