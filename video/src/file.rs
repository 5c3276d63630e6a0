//! File drivers around the sans-IO encoder and decoder: read any clip FFmpeg can demux (Y4M,
//! MP4, WebM/Matroska, IVF, raw H.264) into [`Yuv420Frame`]s, write Y4M, and mux coded packets
//! into IVF (VP8, VP9, AV1) or raw Annex-B H.264.

use std::io::Write;
use std::path::Path;

use ff::{Rational, media};
use ffmpeg_next as ff;

use crate::decode::VideoDecoder;
use crate::encode::{EncodedPacket, VideoCodec, VideoEncoder};
use crate::error::{Error, Result, ff};
use crate::frame::{Yuv420Frame, check_size};

/// A decoded clip.
#[derive(Clone, Debug)]
pub struct Clip {
    pub frames: Vec<Yuv420Frame>,
    /// Frame rate as FFmpeg reports it (numerator, denominator), e.g. (30000, 1001).
    pub fps: (i32, i32),
    /// Packets the decoder refused or frames it flagged (see [`VideoDecoder`]).
    pub decode_errors: u64,
}

impl Clip {
    /// The frame rate rounded to whole frames per second (at least 1), for encoders.
    pub fn fps_rounded(&self) -> u32 {
        let (n, d) = self.fps;
        if n <= 0 || d <= 0 {
            30
        } else {
            ((f64::from(n) / f64::from(d)).round() as u32).max(1)
        }
    }

    pub fn seconds(&self) -> f64 {
        let (n, d) = self.fps;
        let fps = if n <= 0 || d <= 0 {
            30.0
        } else {
            f64::from(n) / f64::from(d)
        };
        self.frames.len() as f64 / fps
    }
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads up to `max_frames` frames (all when `None`) of the first video stream of `path`. Bad
/// packets are skipped and counted in [`Clip::decode_errors`]; frames of a size other than the
/// first frame's are an error.
pub fn read_video(path: &Path, max_frames: Option<usize>) -> Result<Clip> {
    crate::init()?;
    let mut input = ff::format::input(path).map_err(|e| file_err(path, e))?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| file_err(path, "no video stream"))?;
    let index = stream.index();
    let rate = stream.avg_frame_rate();
    let rate = if rate.numerator() > 0 {
        rate
    } else {
        stream.rate()
    };
    let mut dec =
        VideoDecoder::from_parameters(stream.parameters()).map_err(|e| file_err(path, e))?;
    let limit = max_frames.unwrap_or(usize::MAX);
    let mut frames = Vec::new();
    for (s, packet) in input.packets() {
        if s.index() != index {
            continue;
        }
        if frames.len() >= limit {
            break;
        }
        let _ = dec.decode(packet.data().unwrap_or_default(), &mut frames);
    }
    let _ = dec.flush(&mut frames);
    frames.truncate(limit);
    if let Some(first) = frames.first() {
        let (w, h) = (first.width, first.height);
        if frames.iter().any(|f| f.width != w || f.height != h) {
            return Err(file_err(path, "the picture size changes mid-clip"));
        }
    }
    Ok(Clip {
        frames,
        fps: (rate.numerator(), rate.denominator()),
        decode_errors: dec.stats().errors,
    })
}

/// The coded packets of the first video stream of `path` as they are (no decoding), with the
/// engine's codec for them, e.g. a publisher's recorded VP8 for [`crate::engine::Transcoder`].
/// H.264 comes out as stored: Annex B from raw `.h264` files (what the engine's decoder and RTP
/// depacketizing give), length-prefixed (AVCC) from MP4/Matroska, which the engine does not take.
pub fn read_packets(path: &Path, max_packets: Option<usize>) -> Result<(VideoCodec, Vec<Vec<u8>>)> {
    crate::init()?;
    let mut input = ff::format::input(path).map_err(|e| file_err(path, e))?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| file_err(path, "no video stream"))?;
    let index = stream.index();
    let id = stream.parameters().id();
    let codec = VideoCodec::from_id(id).ok_or_else(|| {
        file_err(
            path,
            format!("video codec {id:?} (expected AV1, VP9, VP8 or H.264)"),
        )
    })?;
    let limit = max_packets.unwrap_or(usize::MAX);
    let mut packets = Vec::new();
    for (s, packet) in input.packets() {
        if packets.len() >= limit {
            break;
        }
        if s.index() == index {
            packets.push(packet.data().unwrap_or_default().to_vec());
        }
    }
    Ok((codec, packets))
}

/// Writes frames as YUV4MPEG2 (`C420jpeg`, the 4:2:0 FFmpeg writes for `yuv420p`).
pub fn write_y4m(path: &Path, frames: &[Yuv420Frame], fps: (i32, i32)) -> Result<()> {
    let first = frames
        .first()
        .ok_or_else(|| file_err(path, "no frames to write"))?;
    check_size(first.width, first.height)?;
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| file_err(path, e))?);
    writeln!(
        out,
        "YUV4MPEG2 W{} H{} F{}:{} Ip A1:1 C420jpeg",
        first.width,
        first.height,
        fps.0.max(1),
        fps.1.max(1)
    )?;
    for f in frames {
        if f.width != first.width || f.height != first.height {
            return Err(file_err(path, "frames of different sizes"));
        }
        out.write_all(b"FRAME\n")?;
        out.write_all(&f.y)?;
        out.write_all(&f.u)?;
        out.write_all(&f.v)?;
    }
    out.flush()?;
    Ok(())
}

/// The container [`write_packets`] uses for a codec: IVF for VP8/VP9/AV1, raw Annex-B for H.264.
pub fn container_for(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::H264 => "h264",
        _ => "ivf",
    }
}

/// Muxes an encoder's packets into `path` ([`container_for`] its codec).
pub fn write_packets(path: &Path, encoder: &VideoEncoder, packets: &[EncodedPacket]) -> Result<()> {
    crate::init()?;
    let fmt = container_for(encoder.config().kind.codec());
    let mut out = ff::format::output_as(path, fmt).map_err(|e| file_err(path, e))?;
    let fps = encoder.config().fps as i32;
    let tb = Rational::new(1, fps);
    {
        let mut st = out
            .add_stream(ff::encoder::find_by_name(
                encoder.config().kind.ffmpeg_name(),
            ))
            .map_err(|e| file_err(path, e))?;
        st.set_parameters(encoder.parameters());
        st.set_time_base(tb);
        st.set_rate(Rational::new(fps, 1));
        st.set_avg_frame_rate(Rational::new(fps, 1));
    }
    out.write_header().map_err(|e| file_err(path, e))?;
    let stream_tb = out.stream(0).map(|s| s.time_base()).unwrap_or(tb);
    for p in packets {
        let mut pkt = ff::Packet::copy(&p.data);
        pkt.set_stream(0);
        pkt.set_pts(Some(p.pts));
        pkt.set_dts(Some(p.pts));
        pkt.set_duration(1);
        if p.keyframe {
            pkt.set_flags(ff::packet::Flags::KEY);
        }
        pkt.rescale_ts(tb, stream_tb);
        pkt.write_interleaved(&mut out)
            .map_err(ff("write packet"))?;
    }
    out.write_trailer().map_err(ff("write trailer"))?;
    Ok(())
}
