//! Recording and streaming egress (issue #13, `docs/egress.md`).
//!
//! One [`Egress`] per request: a supervised worker thread that takes the frames of one stream
//! (PCM for the GStreamer outputs, the AIC packets themselves for the native `.aic` archive),
//! places them on a [`timeline::Timeline`] by frame index — never by arrival time — and writes
//! every output it was given. The pieces:
//!
//! | module | owns |
//! |---|---|
//! | [`spec`] | output specs parsed from a path/URL, never-overwrite file claiming |
//! | [`timeline`] | sans-IO: frame index → timeline position, gaps become silence |
//! | [`state`] | sans-IO: starting → recording ⇄ stalled → stopped / failed, start timeout |
//! | [`archive`] | the native `.aic` output (container v2 pages, flushed every second) |
//! | [`gst`] | the GStreamer outputs: Ogg, WebM, fragmented MP4, HLS, RTMP, SRT, WAV |
//! | [`task`] | the driver: bounded queue in, worker thread, status out |

pub mod archive;
pub mod gst;
pub mod spec;
pub mod state;
pub mod task;
pub mod timeline;

pub use spec::{Format, OutputSpec};
pub use state::State;
pub use task::{Egress, EgressConfig, EgressStatus, OutputStatus};

/// Samples in one 20 ms frame at 16 kHz, the rate every egress input has.
pub const FRAME_SAMPLES: usize = 320;
/// The sample rate of every egress input.
pub const SAMPLE_RATE: u32 = 16_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A bad request: an output location, format or parameter.
    #[error("{0}")]
    Spec(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Gst(String),
    #[error(".aic archive: {0}")]
    Archive(String),
    /// The egress was already stopped.
    #[error("egress stopped")]
    Stopped,
}
