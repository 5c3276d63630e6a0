//! The SFU bridge: RTP in/out, jitter buffer, (later) shared-memory rings and SFU adapters.
//!
//! Built so far, as sans-IO pieces with tests and fuzz targets:
//! * [`rtp`] — RTP (RFC 3550) with RFC 8285 header extensions: zero-copy parse, write.
//! * [`aic_rtp`] — the AIC RTP payload format and its frame-metadata header extension
//!   (`docs/rtp-payload.md`).
//! * [`jitter`] — fixed-delay jitter buffer: reorder, drop duplicates/late packets, report
//!   losses for concealment, bounded memory.
//!
//! * [`ingest`] — RTP in → jitter buffer → Opus decode to 16 kHz with FEC/PLC, one frame per
//!   20 ms slot.
//! * [`egress`] — frames out as Opus RTP (legacy receivers) and AIC RTP with frame metadata.
//!
//! Not yet: RTCP.

pub mod aic_rtp;
pub mod egress;
pub mod ingest;
pub mod jitter;
pub mod media;
pub mod rtp;
