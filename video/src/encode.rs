//! The encoder: one [`Yuv420Frame`] in at a time, with optional per-frame [`FrameHints`] (a
//! target bitrate from the bandwidth estimate, a [`QualityMap`] from the region-of-interest
//! detector), coded packets out. No I/O and no clock: the caller times calls if it wants to.
//!
//! ## Encoders (all through FFmpeg 5.1's wrappers)
//! | [`EncoderKind`] | FFmpeg encoder | settings (real-time, one pass, no frame reordering) |
//! |---|---|---|
//! | `av1` | `libaom-av1` | `usage=realtime`, `cpu-used=8`, `lag-in-frames=0`, `row-mt=1`, CBR |
//! | `av1-svt` | `libsvtav1` (SVT-AV1 1.4) | `preset=10`, `pred-struct=1` (low delay), `rc=2` (CBR) |
//! | `vp9` | `libvpx-vp9` | `deadline=realtime`, `cpu-used=8`, `lag-in-frames=0`, `row-mt=1`, CBR |
//! | `vp8` | `libvpx` | `deadline=realtime`, `cpu-used=-6` (libwebrtc's desktop default), `lag-in-frames=0`, CBR |
//! | `x264` | `libx264` | `preset=veryfast`, `tune=zerolatency`, VBV of one second |
//!
//! Why libaom for AV1: measured on this machine (2 shared cores, one encoder thread), on
//! `carphone` (QCIF) in one `aic video bench` run, libaom realtime `cpu-used=8` and SVT-AV1
//! 1.4 `preset 10` low-delay CBR reach the same quality at the same rate (PSNR-Y within
//! 0.2 dB, VMAF within 0.5 from 100 to 300 kbit/s) at about the same throughput, but SVT-AV1
//! holds frames in its pipeline: its per-frame latency (frame in → packet out) is 9–15 ms at
//! p50 against libaom's 1.4–2.5 ms. SVT-AV1 `preset 12` is as fast as libaom but 1 dB worse (an
//! `ffmpeg` run at 200 kbit/s: 38.3 vs 39.3 dB), and SVT-AV1 1.4 itself warns that its
//! low-delay mode is "a work-in-progress ... not for benchmarking". So at equal quality libaom
//! realtime is the faster one *per frame*, which is what real time needs; SVT-AV1 stays
//! selectable (`av1-svt`) for larger pictures and more cores, where its parallelism pays.
//! `docs/video.md` has the table.
//!
//! ## Region of interest: what FFmpeg 5.1 honours
//! FFmpeg's way to pass per-region quality to an encoder is `AV_FRAME_DATA_REGIONS_OF_INTEREST`
//! side data (an array of `AVRegionOfInterest`: a rectangle and a `qoffset` in [-1, 1] of the
//! encoder's quantiser range, negative = better). In FFmpeg 5.1 (Debian 12's `libavcodec59`) it
//! is read by:
//! * `libx264` — per-macroblock `quant_offsets` (`qoffset × 25` QP); needs adaptive
//!   quantisation on (it is, with `veryfast`/`zerolatency`);
//! * `libvpx` (VP8) — the `VP8E_SET_ROI_MAP` segment map: at most **3** distinct offsets
//!   (segment 0 is reserved for "no ROI"); extra ones are dropped by FFmpeg with a warning;
//! * `libvpx-vp9` — `VP9E_SET_ROI_MAP`, at most 7 distinct offsets, and only when
//!   `aq-mode=0`, `cpu-used ≥ 5` and the real-time deadline (this module sets all three when the
//!   config says ROI maps will come);
//! * **not** `libaom-av1`, **not** `libsvtav1`, **not** `librav1e`: their 5.1 wrappers ignore
//!   the side data (the wrappers' log strings in `libavcodec.so.59` name ROI only for libvpx,
//!   libx264 and the hardware encoders). libaom's own `AOME_SET_ROI_MAP` control would not help
//!   either: the wrapper keeps its `aom_codec_ctx_t` private, `aom-params` only sets named
//!   options (none is a map), and in the libaom 3.x encoder sources we read
//!   (`av1/av1_cx_iface.c`) `ctrl_set_roi_map` returns `AOM_CODEC_INVALID_PARAM` ("TODO: Need to
//!   re-implement and test for AV1"). SVT-AV1 1.4 (Debian 12) has no ROI map input.
//!
//! So for AV1 this module encodes the map through the one mechanism every encoder honours: the
//! picture itself. [`prefilter`](crate::prefilter) low-passes each block in proportion to how
//! much *lower* its quality offset is than the map's best block, so the background's residual
//! costs fewer bits and the encoder's rate control spends what it saves where the detail was
//! kept. It is a real, measurable effect (the ROI test: +0.8 dB PSNR-Y inside at 100 kbit/s),
//! but a much blunter one than a QP map: it takes detail away outside, and libaom's frame-level
//! rate control hands only part of the saving to the region, so whole-frame quality (and VMAF)
//! drops far more than the region gains (`docs/video.md`). Encoders that honour the side data
//! get it as side data, without the pre-filter.
//!
//! ## Bitrate changes between frames
//! `libx264` reconfigures itself when `AVCodecContext.bit_rate` changes between frames (its
//! wrapper calls `x264_encoder_reconfig`), so its target follows the hint without a keyframe.
//! The 5.1 wrappers of libvpx, libaom and SVT-AV1 read the bitrate only when they open; for them
//! a changed target re-opens the encoder, and the next frame is a keyframe (counted in
//! [`EncoderStats::reopens`]). A caller should therefore change their target only when it moves
//! enough to be worth a keyframe (the hint controller's job, not this module's).

use ff::codec;
use ff::format::Pixel;
use ff::util::error::EAGAIN;
use ff::{Dictionary, Rational, frame, picture};
use ffmpeg_next as ff;

use crate::error::{Error, Result, ff};
use crate::frame::{Yuv420Frame, check_size};
use crate::prefilter;
use crate::side_data::{RoiRect, set_regions_of_interest};

/// The bitstream formats this crate decodes and encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VideoCodec {
    Av1,
    Vp9,
    Vp8,
    H264,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            Self::Av1 => "av1",
            Self::Vp9 => "vp9",
            Self::Vp8 => "vp8",
            Self::H264 => "h264",
        }
    }

    pub(crate) fn id(self) -> codec::Id {
        match self {
            Self::Av1 => codec::Id::AV1,
            Self::Vp9 => codec::Id::VP9,
            Self::Vp8 => codec::Id::VP8,
            Self::H264 => codec::Id::H264,
        }
    }

    pub(crate) fn from_id(id: codec::Id) -> Option<Self> {
        Some(match id {
            codec::Id::AV1 => Self::Av1,
            codec::Id::VP9 => Self::Vp9,
            codec::Id::VP8 => Self::Vp8,
            codec::Id::H264 => Self::H264,
            _ => return None,
        })
    }
}

/// Which encoder (library and settings) to run. See the module docs for the settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncoderKind {
    /// AV1 through libaom in its real-time mode: the receivers' codec.
    Av1,
    /// AV1 through SVT-AV1 (low-delay CBR), kept for comparison and for larger pictures.
    Av1Svt,
    /// VP9 through libvpx, real-time: the first fallback.
    Vp9,
    /// VP8 through libvpx, real-time: what browsers send; the last fallback.
    Vp8,
    /// H.264 through x264 `veryfast`/`zerolatency`: the baseline.
    X264,
}

impl EncoderKind {
    pub const ALL: [EncoderKind; 5] = [Self::Av1, Self::Av1Svt, Self::Vp9, Self::Vp8, Self::X264];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Av1 => "av1",
            Self::Av1Svt => "av1-svt",
            Self::Vp9 => "vp9",
            Self::Vp8 => "vp8",
            Self::X264 => "x264",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// FFmpeg's name of the encoder.
    pub fn ffmpeg_name(self) -> &'static str {
        match self {
            Self::Av1 => "libaom-av1",
            Self::Av1Svt => "libsvtav1",
            Self::Vp9 => "libvpx-vp9",
            Self::Vp8 => "libvpx",
            Self::X264 => "libx264",
        }
    }

    pub fn codec(self) -> VideoCodec {
        match self {
            Self::Av1 | Self::Av1Svt => VideoCodec::Av1,
            Self::Vp9 => VideoCodec::Vp9,
            Self::Vp8 => VideoCodec::Vp8,
            Self::X264 => VideoCodec::H264,
        }
    }

    /// How this encoder receives a [`QualityMap`]: FFmpeg ROI side data where its 5.1 wrapper
    /// reads it, else the pre-filter (see the module docs).
    pub fn roi_mechanism(self) -> RoiMechanism {
        match self {
            Self::Vp8 | Self::Vp9 | Self::X264 => RoiMechanism::SideData,
            Self::Av1 | Self::Av1Svt => RoiMechanism::Prefilter,
        }
    }

    /// Whether the wrapper follows a bitrate change without re-opening (see the module docs).
    fn reconfigures_bitrate(self) -> bool {
        self == Self::X264
    }

    /// Whether this FFmpeg build has the encoder.
    pub fn available(self) -> bool {
        crate::init().is_ok() && ff::encoder::find_by_name(self.ffmpeg_name()).is_some()
    }
}

/// How an encoder takes a quality map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoiMechanism {
    /// `AV_FRAME_DATA_REGIONS_OF_INTEREST` side data, read by the FFmpeg wrapper.
    SideData,
    /// The picture is low-passed where the map asks for lower quality, before encoding.
    Prefilter,
}

/// What one encoder is opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    pub kind: EncoderKind,
    pub width: u32,
    pub height: u32,
    /// Frames per second; the stream's time base is `1/fps` and pts count frames.
    pub fps: u32,
    /// The initial target, bits per second (a [`FrameHints::bitrate_bps`] changes it).
    pub bitrate_bps: u32,
    /// Longest run of frames between keyframes; 0 leaves it to the encoder. Real-time streams
    /// usually rely on keyframe requests (PLI/FIR → [`FrameHints::keyframe`]) instead.
    pub keyint: u32,
    /// Encoder threads (1 is what a many-streams server wants per stream).
    pub threads: u32,
    /// Quality maps will come: VP9 then runs with `aq-mode=0`, which its ROI needs (libvpx
    /// ignores ROI maps otherwise); for the others this changes nothing.
    pub roi: bool,
    /// libaom's realtime speed (`cpu-used`, 0..=10 with `usage=realtime`; libaom 3.6 takes 9
    /// and 10 only through `aom-params`, FFmpeg 5.1's option stops at 8); `None` takes
    /// `AIC_AV1_SPEED` if set, else 8. Only `av1` reads it. `docs/video.md` has the measured trade-off.
    pub av1_speed: Option<u8>,
}

impl EncoderConfig {
    pub const MIN_BITRATE: u32 = 10_000;
    pub const MAX_BITRATE: u32 = 100_000_000;

    pub fn new(kind: EncoderKind, width: u32, height: u32, fps: u32, bitrate_bps: u32) -> Self {
        Self {
            kind,
            width,
            height,
            fps,
            bitrate_bps,
            keyint: 0,
            threads: 1,
            roi: false,
            av1_speed: None,
        }
    }

    fn validate(&self) -> Result<()> {
        check_size(self.width, self.height).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        if !self.width.is_multiple_of(2) || !self.height.is_multiple_of(2) {
            return Err(Error::InvalidConfig(format!(
                "size {}x{} (4:2:0 encoding needs even width and height)",
                self.width, self.height
            )));
        }
        if !(1..=240).contains(&self.fps) {
            return Err(Error::InvalidConfig(format!(
                "fps {} (expected 1..=240)",
                self.fps
            )));
        }
        check_bitrate(self.bitrate_bps)?;
        if let Some(s) = self.av1_speed
            && s > 10
        {
            return Err(Error::InvalidConfig(format!(
                "av1 speed {s} (libaom realtime takes 0..=10)"
            )));
        }
        if !(1..=16).contains(&self.threads) {
            return Err(Error::InvalidConfig(format!(
                "threads {} (expected 1..=16)",
                self.threads
            )));
        }
        Ok(())
    }
}

fn check_bitrate(bps: u32) -> Result<()> {
    if !(EncoderConfig::MIN_BITRATE..=EncoderConfig::MAX_BITRATE).contains(&bps) {
        return Err(Error::InvalidConfig(format!(
            "bitrate {bps} bit/s (expected {}..={})",
            EncoderConfig::MIN_BITRATE,
            EncoderConfig::MAX_BITRATE
        )));
    }
    Ok(())
}

/// Per-block quality offsets for one frame: what the region-of-interest code produces (from
/// detector boxes) and what [`VideoEncoder::encode`] consumes.
///
/// * The frame is cut into square blocks of `block` pixels, `cols = ceil(width / block)` by
///   `rows = ceil(height / block)` (the last column/row may be partial); 16 matches the
///   macroblocks of H.264 and VP8, the finest grain x264 and libvpx apply a map at.
/// * `offsets` is row-major (`offsets[row * cols + col]`), one `i8` per block in
///   `-MAX_OFFSET..=MAX_OFFSET`: the block's quantiser offset as a fraction `offset / 64` of the
///   encoder's quantiser range (exactly FFmpeg's `AVRegionOfInterest.qoffset`). **Negative =
///   better quality** (more bits), positive = worse (fewer bits), 0 = leave it to the encoder.
///   For x264, −16 is about −6 QP; for VP8, −16 about −16 of its 0..127 q index.
/// * Encoders that cannot take a map (AV1 here, see the module docs) get its *relative* shape:
///   a block is smoothed in proportion to `(offset − min offset) / 64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QualityMap {
    pub block: u32,
    pub cols: u32,
    pub rows: u32,
    pub offsets: Vec<i8>,
}

impl QualityMap {
    pub const MAX_OFFSET: i8 = 64;

    /// An all-zero map (no preference) for a `width × height` picture.
    pub fn new(width: u32, height: u32, block: u32) -> Result<Self> {
        if !(4..=256).contains(&block) {
            return Err(Error::InvalidQualityMap(format!(
                "block {block} px (expected 4..=256)"
            )));
        }
        check_size(width, height).map_err(|e| Error::InvalidQualityMap(e.to_string()))?;
        let (cols, rows) = (width.div_ceil(block), height.div_ceil(block));
        Ok(Self {
            block,
            cols,
            rows,
            offsets: vec![0; (cols * rows) as usize],
        })
    }

    /// Sets every block that the pixel rectangle `x0..x1 × y0..y1` touches to `offset`
    /// (clamped to ±[`Self::MAX_OFFSET`]); the rectangle is clipped to the map.
    pub fn fill_rect(&mut self, x0: u32, y0: u32, x1: u32, y1: u32, offset: i8) {
        let o = offset.clamp(-Self::MAX_OFFSET, Self::MAX_OFFSET);
        if x1 <= x0 || y1 <= y0 {
            return;
        }
        let (c0, r0) = (x0 / self.block, y0 / self.block);
        let c1 = (x1.div_ceil(self.block)).min(self.cols);
        let r1 = (y1.div_ceil(self.block)).min(self.rows);
        for r in r0..r1 {
            for c in c0..c1 {
                self.offsets[(r * self.cols + c) as usize] = o;
            }
        }
    }

    /// **Placeholder until the detector's maps exist** (the `roi` module): `inside` for the
    /// blocks whose centre lies in the centred ellipse covering `frac` of the width and height
    /// (where a talking head usually is), `outside` elsewhere. No detection happens here.
    pub fn centre_weighted(
        width: u32,
        height: u32,
        block: u32,
        frac: f32,
        inside: i8,
        outside: i8,
    ) -> Result<Self> {
        let mut m = Self::new(width, height, block)?;
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        let (ax, ay) = (width as f32 * frac / 2.0, height as f32 * frac / 2.0);
        for r in 0..m.rows {
            for c in 0..m.cols {
                let x = ((c * block) as f32 + block as f32 / 2.0).min(width as f32) - cx;
                let y = ((r * block) as f32 + block as f32 / 2.0).min(height as f32) - cy;
                let inside_ellipse = (x / ax).powi(2) + (y / ay).powi(2) <= 1.0;
                m.offsets[(r * m.cols + c) as usize] =
                    (if inside_ellipse { inside } else { outside })
                        .clamp(-Self::MAX_OFFSET, Self::MAX_OFFSET);
            }
        }
        Ok(m)
    }

    /// The offset of the block holding pixel (x, y) (clamped into the map).
    pub fn offset_at(&self, x: u32, y: u32) -> i8 {
        let c = (x / self.block).min(self.cols - 1);
        let r = (y / self.block).min(self.rows - 1);
        self.offsets[(r * self.cols + c) as usize]
    }

    /// Checks that the map fits a `width × height` picture and its values are in range.
    pub fn validate(&self, width: u32, height: u32) -> Result<()> {
        if !(4..=256).contains(&self.block) {
            return Err(Error::InvalidQualityMap(format!(
                "block {} px (expected 4..=256)",
                self.block
            )));
        }
        let (cols, rows) = (width.div_ceil(self.block), height.div_ceil(self.block));
        if self.cols != cols || self.rows != rows {
            return Err(Error::InvalidQualityMap(format!(
                "{}x{} blocks of {} px; a {width}x{height} picture needs {cols}x{rows}",
                self.cols, self.rows, self.block
            )));
        }
        if self.offsets.len() != (cols * rows) as usize {
            return Err(Error::InvalidQualityMap(format!(
                "{} offsets for {cols}x{rows} blocks",
                self.offsets.len()
            )));
        }
        if let Some(o) = self
            .offsets
            .iter()
            .find(|o| o.unsigned_abs() > Self::MAX_OFFSET as u8)
        {
            return Err(Error::InvalidQualityMap(format!(
                "offset {o} (expected -64..=64)"
            )));
        }
        Ok(())
    }

    /// The map as non-overlapping rectangles of equal nonzero offset: runs along each block row,
    /// merged with the run right above when it spans the same columns.
    pub(crate) fn to_rects(&self, width: u32, height: u32) -> Vec<RoiRect> {
        let mut out: Vec<RoiRect> = Vec::new();
        // Rectangles that end on the previous block row, by (c0, c1, offset) → index in `out`.
        let mut open: Vec<(u32, u32, i8, usize)> = Vec::new();
        for r in 0..self.rows {
            let mut next_open = Vec::new();
            let mut c = 0;
            while c < self.cols {
                let o = self.offsets[(r * self.cols + c) as usize];
                let c0 = c;
                while c < self.cols && self.offsets[(r * self.cols + c) as usize] == o {
                    c += 1;
                }
                if o == 0 {
                    continue;
                }
                let bottom = ((r + 1) * self.block).min(height) as i32;
                if let Some(&(_, _, _, i)) = open
                    .iter()
                    .find(|&&(a, b, oo, _)| a == c0 && b == c && oo == o)
                {
                    out[i].bottom = bottom;
                    next_open.push((c0, c, o, i));
                } else {
                    out.push(RoiRect {
                        top: (r * self.block) as i32,
                        bottom,
                        left: (c0 * self.block) as i32,
                        right: (c * self.block).min(width) as i32,
                        qoffset_num: i32::from(o),
                        qoffset_den: 64,
                    });
                    next_open.push((c0, c, o, out.len() - 1));
                }
            }
            open = next_open;
        }
        out
    }
}

/// What may change from one frame to the next.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameHints<'a> {
    /// A new target bitrate (bit/s), e.g. the receiver's bandwidth estimate; `None` keeps it.
    pub bitrate_bps: Option<u32>,
    /// Per-block quality offsets for this frame; `None` = none.
    pub quality: Option<&'a QualityMap>,
    /// Code this frame as a keyframe (a keyframe request from a receiver).
    pub keyframe: bool,
}

/// One coded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPacket {
    pub data: Vec<u8>,
    /// The input frame's index (its pts in the `1/fps` time base).
    pub pts: i64,
    pub keyframe: bool,
}

/// Counters since the encoder was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderStats {
    pub frames_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Frames that carried a quality map.
    pub roi_frames: u64,
    /// Times the encoder was re-opened for a new bitrate (each one costs a keyframe).
    pub reopens: u64,
}

/// One stream's encoder.
pub struct VideoEncoder {
    cfg: EncoderConfig,
    enc: ff::encoder::Video,
    /// Scratch for the pre-filtered picture (AV1's ROI), reused across frames.
    filtered: Option<Yuv420Frame>,
    next_pts: i64,
    stats: EncoderStats,
}

impl std::fmt::Debug for VideoEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoEncoder")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .finish()
    }
}

impl VideoEncoder {
    pub fn new(cfg: EncoderConfig) -> Result<Self> {
        cfg.validate()?;
        crate::init()?;
        let enc = open(&cfg)?;
        Ok(Self {
            cfg,
            enc,
            filtered: None,
            next_pts: 0,
            stats: EncoderStats::default(),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    /// The opened encoder's stream parameters (for a muxer).
    pub fn parameters(&self) -> codec::Parameters {
        codec::Parameters::from(&*self.enc)
    }

    /// Encodes one frame with its hints; appends whatever packets the encoder hands out now
    /// (all five encoders here are configured not to hold frames back, so normally exactly one).
    pub fn encode(
        &mut self,
        input: &Yuv420Frame,
        hints: &FrameHints<'_>,
        out: &mut Vec<EncodedPacket>,
    ) -> Result<()> {
        if input.width != self.cfg.width || input.height != self.cfg.height {
            return Err(Error::InvalidFrame(format!(
                "{}x{} frame for a {}x{} encoder",
                input.width, input.height, self.cfg.width, self.cfg.height
            )));
        }
        let mut keyframe = hints.keyframe;
        if let Some(bps) = hints.bitrate_bps {
            check_bitrate(bps)?;
            if bps != self.cfg.bitrate_bps {
                self.cfg.bitrate_bps = bps;
                if self.cfg.kind.reconfigures_bitrate() {
                    // x264's wrapper compares these with its parameters before every frame.
                    self.enc.set_bit_rate(bps as usize);
                    self.enc.set_max_bit_rate(bps as usize);
                } else {
                    self.drain_eof(out)?;
                    self.enc = open(&self.cfg)?;
                    self.stats.reopens += 1;
                    keyframe = true;
                }
            }
        }
        let mut rects = Vec::new();
        let mut picture = input;
        if let Some(map) = hints.quality {
            map.validate(input.width, input.height)?;
            self.stats.roi_frames += 1;
            match self.cfg.kind.roi_mechanism() {
                RoiMechanism::SideData => rects = map.to_rects(input.width, input.height),
                RoiMechanism::Prefilter => {
                    let dst = self.filtered.get_or_insert_with(|| input.clone());
                    prefilter::smooth_by_map(input, map, dst);
                    picture = dst;
                }
            }
        }
        let mut f = to_ffmpeg(picture);
        f.set_pts(Some(self.next_pts));
        if keyframe {
            f.set_kind(picture::Type::I);
        }
        set_regions_of_interest(&mut f, &rects)?;
        self.next_pts += 1;
        self.stats.frames_in += 1;
        self.enc
            .send_frame(&f)
            .map_err(ff("send frame to encoder"))?;
        self.receive(out)
    }

    /// Ends the stream: hands out every packet the encoder still holds. The encoder cannot be
    /// used afterwards (a new one is cheap).
    pub fn flush(&mut self, out: &mut Vec<EncodedPacket>) -> Result<()> {
        self.drain_eof(out)
    }

    fn drain_eof(&mut self, out: &mut Vec<EncodedPacket>) -> Result<()> {
        self.enc.send_eof().map_err(ff("flush encoder"))?;
        self.receive(out)
    }

    fn receive(&mut self, out: &mut Vec<EncodedPacket>) -> Result<()> {
        let mut p = ff::Packet::empty();
        loop {
            match self.enc.receive_packet(&mut p) {
                Ok(()) => {
                    let data = p.data().map(<[u8]>::to_vec).unwrap_or_default();
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += data.len() as u64;
                    out.push(EncodedPacket {
                        data,
                        pts: p.pts().unwrap_or(-1),
                        keyframe: p.is_key(),
                    });
                }
                Err(ff::Error::Other { errno }) if errno == EAGAIN => return Ok(()),
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) => return Err(ff("receive packet from encoder")(e)),
            }
        }
    }
}

/// `AIC_AV1_SPEED` (0..=10): libaom's realtime speed where the config leaves it open, so that
/// tools which do not expose [`EncoderConfig::av1_speed`] (`aic video bench`) can compare speeds.
fn av1_speed_from_env() -> Option<u8> {
    std::env::var("AIC_AV1_SPEED")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|s| *s <= 10)
}

/// Opens the FFmpeg encoder for `cfg` (see the module docs for the settings).
fn open(cfg: &EncoderConfig) -> Result<ff::encoder::Video> {
    let name = cfg.kind.ffmpeg_name();
    let codec = ff::encoder::find_by_name(name).ok_or(Error::EncoderUnavailable(name))?;
    let mut v = codec::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(ff("make encoder context"))?;
    v.set_width(cfg.width);
    v.set_height(cfg.height);
    v.set_format(Pixel::YUV420P);
    v.set_time_base(Rational::new(1, cfg.fps as i32));
    v.set_frame_rate(Some(Rational::new(cfg.fps as i32, 1)));
    v.set_max_b_frames(0);
    if cfg.keyint > 0 {
        v.set_gop(cfg.keyint);
    }
    v.set_bit_rate(cfg.bitrate_bps as usize);
    let b = cfg.bitrate_bps.to_string();
    let mut o = Dictionary::new();
    o.set("threads", &cfg.threads.to_string());
    match cfg.kind {
        EncoderKind::Av1 => {
            o.set("usage", "realtime");
            let speed = cfg.av1_speed.or_else(av1_speed_from_env).unwrap_or(8);
            o.set("cpu-used", &speed.min(8).to_string());
            if speed > 8 {
                o.set("aom-params", &format!("cpu-used={speed}"));
            }
            o.set("lag-in-frames", "0");
            o.set("row-mt", "1");
            // minrate = maxrate = bitrate selects libaom's CBR in the 5.1 wrapper.
            o.set("minrate", &b);
            o.set("maxrate", &b);
            o.set("bufsize", &b);
        }
        EncoderKind::Av1Svt => {
            o.set("preset", "10");
            o.set("svtav1-params", "pred-struct=1:rc=2");
        }
        EncoderKind::Vp9 => {
            o.set("deadline", "realtime");
            o.set("cpu-used", "8");
            o.set("lag-in-frames", "0");
            o.set("row-mt", "1");
            o.set("aq-mode", if cfg.roi { "0" } else { "3" });
            o.set("minrate", &b);
            o.set("maxrate", &b);
            o.set("bufsize", &b);
        }
        EncoderKind::Vp8 => {
            o.set("deadline", "realtime");
            o.set("cpu-used", "-6");
            o.set("lag-in-frames", "0");
            o.set("minrate", &b);
            o.set("maxrate", &b);
            o.set("bufsize", &b);
        }
        EncoderKind::X264 => {
            o.set("preset", "veryfast");
            o.set("tune", "zerolatency");
            o.set("maxrate", &b);
            o.set("bufsize", &b);
        }
    }
    v.open_as_with(codec, o).map_err(ff("open encoder"))
}

/// Copies a packed frame into a new FFmpeg frame (strided planes).
pub(crate) fn to_ffmpeg(src: &Yuv420Frame) -> frame::Video {
    let mut f = frame::Video::new(Pixel::YUV420P, src.width, src.height);
    let (cw, ch) = (src.chroma_width() as usize, src.chroma_height() as usize);
    copy_plane(&src.y, src.width as usize, src.height as usize, &mut f, 0);
    copy_plane(&src.u, cw, ch, &mut f, 1);
    copy_plane(&src.v, cw, ch, &mut f, 2);
    f
}

fn copy_plane(src: &[u8], w: usize, h: usize, f: &mut frame::Video, plane: usize) {
    let stride = f.stride(plane);
    let dst = f.data_mut(plane);
    for (row, line) in src.chunks_exact(w).take(h).enumerate() {
        dst[row * stride..row * stride + w].copy_from_slice(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rects_cover_exactly_the_nonzero_blocks() {
        let mut m = QualityMap::new(100, 70, 16).unwrap();
        assert_eq!((m.cols, m.rows), (7, 5));
        m.fill_rect(16, 16, 64, 48, -20);
        m.fill_rect(96, 64, 100, 70, 10);
        let rects = m.to_rects(100, 70);
        assert_eq!(rects.len(), 2, "{rects:?}");
        assert_eq!(
            (rects[0].left, rects[0].right, rects[0].top, rects[0].bottom),
            (16, 64, 16, 48)
        );
        assert_eq!(
            (
                rects[1].left,
                rects[1].right,
                rects[1].top,
                rects[1].bottom,
                rects[1].qoffset_num
            ),
            (96, 100, 64, 70, 10)
        );
        for y in 0..70 {
            for x in 0..100 {
                let want = m.offset_at(x, y);
                let got = rects
                    .iter()
                    .find(|r| {
                        (r.left..r.right).contains(&(x as i32))
                            && (r.top..r.bottom).contains(&(y as i32))
                    })
                    .map_or(0, |r| r.qoffset_num as i8);
                assert_eq!(got, want, "pixel {x},{y}");
            }
        }
    }

    #[test]
    fn maps_are_checked_against_the_picture() {
        let m = QualityMap::new(176, 144, 16).unwrap();
        assert!(m.validate(176, 144).is_ok());
        assert!(m.validate(352, 288).is_err());
        let mut bad = m.clone();
        bad.offsets[0] = 100;
        assert!(bad.validate(176, 144).is_err());
        assert!(QualityMap::new(176, 144, 2).is_err());
    }

    #[test]
    fn centre_weighted_puts_the_inside_value_in_the_middle() {
        let m = QualityMap::centre_weighted(176, 144, 16, 0.5, -20, 12).unwrap();
        assert_eq!(m.offset_at(88, 72), -20);
        assert_eq!(m.offset_at(0, 0), 12);
        assert_eq!(m.offset_at(175, 143), 12);
    }
}
