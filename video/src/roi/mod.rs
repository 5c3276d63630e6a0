//! Region of interest: a small face detector through ONNX Runtime, batched across streams, and
//! its boxes turned into a per-block [`QualityMap`] for the encoder.
//!
//! * [`Detector`] — MTCNN (Zhang et al. 2016) with the weights facenet-pytorch 2.6.0 ships
//!   (MIT), exported by `models/face-detector/export.py`. [`Detector::detect`] takes the frames
//!   of several streams at once ([`FrameView`]: YUV 4:2:0, luma only or RGB, any size) and
//!   returns each frame's face boxes in that frame's pixels.
//! * [`quality_map`] — pure: boxes → per-block quantiser offsets (better inside faces, a soft
//!   margin around them, slightly worse elsewhere, bounded).
//! * [`RoiTracker`] — sans-IO: per stream, says on which frame indices the detector is due
//!   (every N frames) and keeps the boxes in between, fading those not seen again (fed frame
//!   indices, never a clock).
//!
//! ## Why MTCNN, and how it batches
//! What is installable here (PyPI, crates.io, Debian, npm) and carries weights inside the package
//! with a clear licence: facenet-pytorch's MTCNN (MIT code, MIT weights from the original
//! authors via davidsandberg/facenet), 2 MB for all three nets. Single-shot face detectors
//! (RetinaFace, YuNet, UltraFace, BlazeFace) either download their weights at run time from
//! hosts this machine cannot reach, or ship them in formats (TFLite inside `mediapipe`) that
//! need TensorFlow to convert; training our own needs a labelled face set we do not have.
//!
//! MTCNN's usual weakness for batching is its image pyramid, whose sizes follow the picture's.
//! Here every frame is first letterboxed onto one fixed *canvas* (320×180 RGB by default, aspect
//! kept, grey padding), so every frame of every stream has the same pyramid: each pyramid level
//! is one P-net run over the whole batch, and the R-net and O-net stages run all candidate crops
//! of all frames as one batch each. A detection is thus `levels + 2` graph runs however many
//! streams are in the batch.
//!
//! Faces only: there is no person detector in the set (a body without a visible face keeps the
//! encoder's own adaptive quantisation). The smallest face found is `min_face` canvas pixels
//! (20 of 180: about a ninth of the picture height).

mod detector;
mod image;
mod map;
mod nms;
mod tracker;

pub use detector::{Detector, DetectorConfig, DetectorManifest};
pub use image::FrameView;
pub use map::{MapStyle, quality_map, quality_map_with};
pub use nms::{Overlap, iou, nms};
pub use tracker::{RoiTracker, TrackerConfig};

pub use crate::encode::QualityMap;

/// One detected face, in the pixels of the frame it was found in (`x0 < x1`, `y0 < y1`,
/// clipped to the frame). `score` is the detector's confidence in `0..=1`; the tracker lowers it
/// as a box ages without being seen again, and [`quality_map`] weighs a box by it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub score: f32,
}

impl RoiBox {
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }
}

/// What the region-of-interest code can fail with. `Unavailable` and `Runtime` mean the
/// detector cannot run (encode without hints); `InvalidFrame` is the caller's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoiError {
    #[error("face detector unavailable ({dir}): {why}")]
    Unavailable { dir: String, why: String },
    #[error(transparent)]
    Runtime(#[from] aic_pipeline::PipelineError),
    #[error("face detector inference: {0}")]
    Inference(String),
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
}
