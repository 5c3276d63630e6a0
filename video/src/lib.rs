//! AIC for video (issue #14): the same shape as audio — a sans-IO engine and thin drivers.
//!
//! * [`roi`] — region of interest: a small face/person detector through ONNX Runtime, batched
//!   across streams, and its boxes turned into a per-block quality-offset map for the encoder.
#![deny(unsafe_code)]

pub mod roi;
