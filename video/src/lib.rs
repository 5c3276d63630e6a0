//! AIC for video (issue #14): the same shape as audio — sans-IO codec state machines and thin
//! drivers. Everything goes through FFmpeg 5.1 (`ffmpeg-next`); no codec is written here.
//!
//! * [`frame`] — [`Yuv420Frame`], the one picture type between decoder, metrics and encoder.
//! * [`decode`] — [`VideoDecoder`]: VP8 / H.264 / VP9 / AV1 packets → frames; bad packets are
//!   counted errors, never panics.
//! * [`encode`] — [`VideoEncoder`]: one frame at a time with [`FrameHints`] (target bitrate,
//!   [`QualityMap`] of per-block quality offsets, keyframe request) for AV1 (libaom realtime;
//!   SVT-AV1 selectable), VP9 and VP8 (libvpx realtime), x264 (`veryfast`/`zerolatency`). Which
//!   encoders honour a quality map in FFmpeg 5.1, and how AV1 gets one anyway, is written there.
//! * [`engine`] — [`Transcoder`](engine::Transcoder): one published stream, publisher packets
//!   in, receivers' packets out, with the fallbacks (keyframe request, hints dropped, forward).
//! * [`live`] — the real-time driver: N paced streams through decode → encode, the face
//!   detector batched across them, hints only when in time, overloaded streams dropped to
//!   forwarding (`aic bench load --video`).
//! * [`resize`] — centred crop + FFmpeg's scaler, for test media of other sizes.
//! * [`prefilter`] — the ROI mechanism for encoders that take no map (AV1 here).
//! * [`metrics`] — PSNR-Y (whole frame, inside a region) and MS-SSIM.
//! * [`file`] — drivers: read clips (Y4M, MP4, WebM, IVF), write Y4M, mux IVF / H.264.
//! * [`roi`] — region of interest: a small face/person detector through ONNX Runtime, batched
//!   across streams, and its boxes turned into a [`QualityMap`] for the encoder.
#![deny(unsafe_code)]

pub mod decode;
pub mod encode;
pub mod engine;
pub mod error;
pub mod file;
pub mod frame;
pub mod live;
pub mod metrics;
pub mod prefilter;
pub mod rate;
pub mod resize;
pub mod roi;
mod side_data;

use std::sync::OnceLock;

pub use decode::{DecodeStats, VideoDecoder};
pub use encode::{
    EncodedPacket, EncoderConfig, EncoderKind, EncoderStats, FrameHints, QualityMap, RoiMechanism,
    VideoCodec, VideoEncoder,
};
pub use error::{Error, Result};
pub use frame::Yuv420Frame;

/// Initialises FFmpeg once per process and quiets its log to errors (`AIC_FFMPEG_LOG=info`,
/// `warning` or `debug` makes it talk again). Every entry point calls it; calling it is cheap.
pub fn init() -> Result<()> {
    static INIT: OnceLock<Result<(), ffmpeg_next::Error>> = OnceLock::new();
    let r = INIT.get_or_init(|| {
        ffmpeg_next::init()?;
        use ffmpeg_next::util::log::{Level, set_level};
        let level = match std::env::var("AIC_FFMPEG_LOG").as_deref() {
            Ok("debug") => Level::Debug,
            Ok("info") => Level::Info,
            Ok("warning") => Level::Warning,
            Ok("quiet") => Level::Quiet,
            _ => Level::Error,
        };
        set_level(level);
        Ok(())
    });
    (*r).map_err(error::ff("init"))
}
