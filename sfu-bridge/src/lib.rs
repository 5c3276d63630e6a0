//! The SFU bridge: RTP in/out, jitter buffer, (later) shared-memory rings and SFU adapters.
//!
//! Built so far, as sans-IO pieces with tests and fuzz targets:
//! * [`rtp`] — RTP (RFC 3550) with RFC 8285 header extensions: zero-copy parse, write.
//! * [`aic_rtp`] — the AIC RTP payload format and its frame-metadata header extension
//!   (`docs/rtp-payload.md`).
//! * [`jitter`] — adaptive jitter buffer: target delay from measured jitter, playout by RTP
//!   timestamp (DTX gaps re-anchor the next talkspurt), shrink/grow towards the target; reorder,
//!   drop duplicates/late packets, report losses for concealment, bounded memory.
//!
//! * [`ingest`] — RTP in → jitter buffer → Opus decode to 16 kHz with FEC/PLC, one frame per
//!   20 ms slot.
//! * [`egress`] — frames out as Opus RTP (legacy receivers) and AIC RTP with frame metadata.
//! * [`session`] — one bridged stream's media logic (RTP in → ingest → frames to the pipeline;
//!   the pipeline's frames → Opus/AIC RTP out; receiver statistics, latency histograms) as a
//!   `handle_input`/`poll_output` state machine fed `now`.
//! * [`rtcp`] — RTCP sender/receiver reports (RFC 3550 §6.4) and video feedback (PLI, FIR,
//!   generic NACK): zero-copy compound parsing, writing, and the receiver-statistics state
//!   machine (loss, jitter, LSR/DLSR) fed `now`.
//! * [`shm`] — single-producer single-consumer rings of fixed-size slots in a sealed memfd,
//!   eventfd wake-ups (the only module with `unsafe`; its trust model is in its docs).
//! * [`link`] — the bridge ↔ pipeline link: control over a Unix `SOCK_SEQPACKET` socket, frames
//!   over two rings per stream, dead-peer detection (client [`link::LinkClient`], server
//!   [`link::LinkListener`]).
//! * [`video`] — video RTP payloads (issue #14): VP8 (RFC 7741) and H.264 (RFC 6184) in, AV1
//!   (AOMedia RTP payload format) out; the [`video::FrameAssembler`] (reorder window, whole
//!   frames only, keyframe requests after a loss for RTCP PLI), packetizers for all three.

pub mod aic_rtp;
pub mod egress;
pub mod ingest;
pub mod jitter;
pub mod link;
pub mod media;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod shm;
pub mod video;
