//! The SFU bridge: RTP in/out, jitter buffer, (later) shared-memory rings and SFU adapters.
//!
//! Built so far, as sans-IO pieces with tests and fuzz targets:
//! * [`rtp`] — RTP (RFC 3550) with RFC 8285 header extensions: zero-copy parse, write.
//! * [`jitter`] — fixed-delay jitter buffer: reorder, drop duplicates/late packets, report
//!   losses for concealment, bounded memory.
//!
//! Not yet (issue "The SFU bridge"): Opus/AIC depacketizing into the pipeline, the AIC RTP
//! payload format and its header extension, RTCP, shared-memory rings, the Janus adapter.

pub mod jitter;
pub mod rtp;
