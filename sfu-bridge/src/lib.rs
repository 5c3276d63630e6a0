//! The SFU bridge: RTP in/out, jitter buffer, (later) shared-memory rings and SFU adapters.
//!
//! Built so far, as sans-IO pieces with tests and fuzz targets:
//! * [`rtp`] — RTP (RFC 3550) with RFC 8285 header extensions: zero-copy parse, write.
//! * [`aic_rtp`] — the AIC RTP payload format and its frame-metadata header extension
//!   (`docs/rtp-payload.md`).
//! * [`jitter`] — fixed-delay jitter buffer: reorder, drop duplicates/late packets, report
//!   losses for concealment, bounded memory.
//!
//! Not yet (issue "The SFU bridge"): wiring RTP into the pipeline, RTCP, shared-memory rings,
//! the Janus adapter.

pub mod aic_rtp;
pub mod jitter;
pub mod rtp;
