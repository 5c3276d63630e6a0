//! `aic-codec`: everything about AIC media that needs no I/O.
//!
//! * [`frame`] — PCM buffers with their sample rate and timeline position.
//! * [`codec`] — the narrow [`Encoder`](codec::Encoder)/[`Decoder`](codec::Decoder) traits every
//!   codec implements (Opus here, the neural AIC codec in `aic-pipeline`).
//! * [`registry`] — codecs found by name, so the CLI and the service can list and pick them.
//! * [`bitstream`] — the AIC wire formats: the per-frame bitstream (v1), its range coder, and the
//!   `.aic` file container. Spec: `docs/bitstream.md`.
//! * [`manifest`] — the model manifest a trained AIC model ships with (shapes, codebooks, entropy
//!   tables), validated before anything runs.
//! * [`opus`] — the libopus 1.6 baselines, with and without its neural decoder enhancement (OSCE).
//! * [`resample`] — sample-rate conversion (rubato).
//! * [`metrics`] — objective quality (STOI, SI-SDR, log-mel distance) and bitrate accounting.
//!
//! Nothing here touches files, sockets or the clock: callers pass bytes (or a `std::io::Read`
//! they opened, for the `.aic` stream reader) and samples in.

pub mod bitstream;
pub mod codec;
pub mod error;
pub mod frame;
pub mod manifest;
pub mod metrics;
pub mod opus;
pub mod registry;
pub mod resample;

pub use codec::{CodecInfo, Decoder, Encoder, OperatingPoint};
pub use error::CodecError;
pub use frame::AudioBuffer;
pub use registry::{CodecDescriptor, CodecFactory, CodecRegistry};
