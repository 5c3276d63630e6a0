//! Untrusted RTP from the SFU through the whole sans-IO ingest (parse → SSRC follow → jitter
//! buffer → Opus decode / FEC / PLC): a sequence of datagrams and arrival times, with frames
//! polled as time passes. Never panics, and the ingest keeps its promises: one frame per slot
//! with consecutive indices, every frame accounted for as decoded, FEC, PLC or silence.
//!
//! Input: one config byte, then records `op, ...`:
//! - `op & 3 == 0`: a raw datagram, `len: u8` then `len` bytes;
//! - `op & 3 == 1`: a well-formed RTP header made from `seq_delta: i8, ts_delta: u8` (SSRC one
//!   of four by `op >> 2 & 3`, payload type 111 unless `op & 0x10`), then `len: u8` bytes of
//!   payload (so the Opus decoder, FEC and reordering get exercised, not just the parser);
//! - `op & 3 == 2`: time advances by `ms: u8` and every due frame is popped;
//! - `op & 3 == 3`: frames due now are popped.
#![no_main]

use std::time::{Duration, Instant};

use aic_sfu_bridge::ingest::{FrameSource, Ingest, IngestConfig};
use aic_sfu_bridge::jitter::JitterConfig;
use aic_sfu_bridge::media::FRAME_16K;
use libfuzzer_sys::fuzz_target;

const SSRCS: [u32; 4] = [0x1234_5678, 0x1234_5679, 0, u32::MAX];

struct Run {
    ingest: Ingest,
    next_index: u64,
    popped: u64,
    pcm: [i16; FRAME_16K],
}

impl Run {
    fn pop_due(&mut self, now: Instant) {
        // Each pop consumes one 20 ms slot; time advances at most 255 ms per record, so a
        // bounded number of frames can be due. Hitting the bound means the ingest spins.
        for _ in 0..100_000 {
            let Some(f) = self.ingest.pop(now, &mut self.pcm) else {
                return;
            };
            assert_eq!(
                f.index, self.next_index,
                "frame indices must be consecutive"
            );
            self.next_index += 1;
            self.popped += 1;
            assert_eq!(f.arrived.is_some(), f.source == FrameSource::Decoded);
            if let Some(a) = f.arrived {
                assert!(a <= now, "a frame arrived after it was played");
            }
        }
        panic!("pop() kept returning frames at one instant");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let Ok(ingest) = Ingest::new(IngestConfig {
        jitter: JitterConfig {
            frame: Duration::from_millis(20),
            // The initial target; bit 3 pins it (min = max = delay: a fixed-delay buffer).
            delay: Duration::from_millis(u64::from(cfg & 0x07) * 20),
            min_delay: Duration::from_millis(if cfg & 0x08 != 0 {
                u64::from(cfg & 0x07) * 20
            } else {
                20
            }),
            max_delay: Duration::from_millis(if cfg & 0x08 != 0 {
                u64::from(cfg & 0x07) * 20
            } else {
                300
            }),
            capacity: 1 + usize::from(cfg >> 4 & 7) * 4,
            ..Default::default()
        },
        payload_type: if cfg & 0x80 == 0 { Some(111) } else { None },
    }) else {
        return;
    };
    let mut run = Run {
        ingest,
        next_index: 0,
        popped: 0,
        pcm: [0; FRAME_16K],
    };
    let t0 = Instant::now();
    let mut now = t0;
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut pkt = Vec::with_capacity(12 + 256);
    let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (a, b) = rest.split_at_checked(n)?;
        *rest = b;
        Some(a.to_vec())
    };
    while let Some((&op, r)) = rest.split_first() {
        rest = r;
        match op & 3 {
            0 => {
                let Some(len) = take(&mut rest, 1) else { break };
                let n = usize::from(len[0]).min(rest.len());
                let d = take(&mut rest, n).unwrap_or_default();
                let _ = run.ingest.push(now, &d);
            }
            1 => {
                let Some(h) = take(&mut rest, 3) else { break };
                seq = seq.wrapping_add_signed(i16::from(h[0] as i8));
                ts = ts.wrapping_add(u32::from(h[1]) * 960);
                let n = usize::from(h[2]).min(rest.len());
                let payload = take(&mut rest, n).unwrap_or_default();
                let pt = if op & 0x10 == 0 { 111 } else { 96 };
                pkt.clear();
                pkt.extend_from_slice(&[0x80, pt]);
                pkt.extend_from_slice(&seq.to_be_bytes());
                pkt.extend_from_slice(&ts.to_be_bytes());
                pkt.extend_from_slice(&SSRCS[usize::from(op >> 2 & 3)].to_be_bytes());
                pkt.extend_from_slice(&payload);
                let _ = run.ingest.push(now, &pkt);
            }
            2 => {
                let Some(ms) = take(&mut rest, 1) else { break };
                now += Duration::from_millis(u64::from(ms[0]));
                run.pop_due(now);
            }
            _ => run.pop_due(now),
        }
    }
    // Drain a second past the last packet: the buffer empties without panicking.
    run.pop_due(now + Duration::from_secs(1));
    let s = run.ingest.stats;
    assert_eq!(
        s.decoded + s.fec + s.plc + s.silence,
        run.popped,
        "every frame is decoded, FEC, PLC or silence: {s:?}"
    );
    assert!(s.payload_bytes <= data.len() as u64);
});
