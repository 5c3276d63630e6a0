//! The SFU bridge: RTP in/out, jitter buffer, shared-memory rings, SFU adapters.
//!
//! Nothing is implemented yet (issue "The SFU bridge"); this crate exists so the workspace has
//! the layout of `DESIGN.md`. It deliberately exports nothing, so nothing can depend on a
//! pretend implementation.
