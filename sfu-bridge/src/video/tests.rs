//! The assembler over all three formats: hand-built streams (loss, reorder, duplicates,
//! keyframe requests) and proptests (packetize → shuffle within the window / duplicate →
//! assemble gives back exactly the input frames; random bytes never panic).

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::av1::{self, Av1Packetizer};
use super::h264::H264Packetizer;
use super::vp8::Vp8Packetizer;
use super::*;
use crate::rtp::RtpPacket;

const SSRC: u32 = 0x5EED;

#[derive(Debug, Clone)]
struct Pkt {
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
    ssrc: u32,
}

impl Pkt {
    fn rtp(&self) -> RtpPacket<'_> {
        RtpPacket {
            marker: self.marker,
            payload_type: 96,
            sequence: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
            csrc_count: 0,
            extension: None,
            payload: &self.payload,
        }
    }
}

/// Packetizes `frames` of one format into RTP packets from sequence number `seq0`, 3000 ticks
/// (30 fps) apart.
fn packetize(payload: VideoPayload, frames: &[Vec<u8>], mtu: usize, seq0: u16) -> Vec<Pkt> {
    let mut vp8 = Vp8Packetizer::new(mtu);
    let mut h264 = H264Packetizer::new(mtu);
    let mut av1 = Av1Packetizer::new(mtu);
    let mut out = Vec::new();
    let mut pkts = Vec::new();
    let mut seq = seq0;
    for (i, f) in frames.iter().enumerate() {
        match payload {
            VideoPayload::Vp8 => vp8.packetize(f, &mut out),
            VideoPayload::H264 => h264.packetize(f, &mut out),
            VideoPayload::Av1 => av1.packetize(f, &mut out),
        }
        .unwrap();
        let n = out.len();
        for (k, p) in out.iter().enumerate() {
            assert!(p.len() <= mtu, "{} > mtu {mtu}", p.len());
            pkts.push(Pkt {
                seq,
                ts: 1000 + 3000 * i as u32,
                marker: k + 1 == n,
                payload: p.clone(),
                ssrc: SSRC,
            });
            seq = seq.wrapping_add(1);
        }
    }
    pkts
}

fn run(a: &mut FrameAssembler, now: Instant, pkts: &[Pkt]) -> Vec<AssembledFrame> {
    let mut got = Vec::new();
    for p in pkts {
        let _ = a.push(now, &p.rtp());
        while let Some(f) = a.poll_frame() {
            got.push(f);
        }
    }
    got
}

/// A VP8 frame: P bit clear for a keyframe.
fn vp8_frame(key: bool, len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len.max(1)];
    f[0] = if key { 0x10 } else { 0x11 };
    f
}

fn vp8_stream(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| vp8_frame(i % 10 == 0, 50 + 37 * i, i as u8))
        .collect()
}

#[test]
fn whole_frames_in_order() {
    let frames = vp8_stream(12);
    let pkts = packetize(VideoPayload::Vp8, &frames, 100, 65_530);
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let now = Instant::now();
    let got = run(&mut a, now, &pkts);
    assert_eq!(got.len(), 12);
    for (i, (f, want)) in got.iter().zip(&frames).enumerate() {
        assert_eq!(&f.data, want, "frame {i}");
        assert_eq!(f.rtp_timestamp, 1000 + 3000 * i as u32);
        assert_eq!(f.keyframe, i % 10 == 0);
    }
    let s = a.stats();
    assert_eq!(
        (s.frames, s.keyframes, s.lost, s.keyframe_requests),
        (12, 2, 0, 0)
    );
    assert_eq!(s.packets, pkts.len() as u64);
    assert!(!a.poll_keyframe_request(now));
}

#[test]
fn a_lost_packet_drops_its_frame_and_asks_for_a_keyframe_until_one_comes() {
    let frames = vp8_stream(15); // keyframes at 0 and 10
    let pkts = packetize(VideoPayload::Vp8, &frames, 100, 0);
    // Drop the second packet of frame 3.
    let lost = pkts.iter().position(|p| p.ts == 1000 + 3 * 3000).unwrap() + 1;
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut requests = Vec::new();
    for (k, p) in pkts.iter().enumerate() {
        // 5 ms per packet.
        let now = t0 + Duration::from_millis(5 * k as u64);
        if k != lost {
            let _ = a.push(now, &p.rtp());
        }
        while let Some(f) = a.poll_frame() {
            got.push(f.rtp_timestamp);
        }
        if a.poll_keyframe_request(now) {
            requests.push(k);
        }
    }
    let want: Vec<u32> = [0, 1, 2, 10, 11, 12, 13, 14]
        .iter()
        .map(|i| 1000 + 3000 * i)
        .collect();
    assert_eq!(got, want, "frames 3..=9 never handed on");
    let s = a.stats();
    assert_eq!(s.lost, 1);
    assert_eq!(s.frames_dropped_incomplete, 1);
    assert_eq!(s.frames_dropped_waiting_keyframe, 6);
    assert!(!requests.is_empty() && requests.len() == s.keyframe_requests as usize);
    // The first request right after the loss was declared (50 ms = 10 packets later at most).
    assert!(
        requests[0] > lost && requests[0] <= lost + 11,
        "{requests:?}"
    );
    // Rate limit: never two within 300 ms (60 packets).
    assert!(
        requests.windows(2).all(|w| w[1] - w[0] >= 60),
        "{requests:?}"
    );
    assert!(!a.waiting_for_keyframe());
}

#[test]
fn keyframe_requests_are_rate_limited_and_repeated() {
    // A stream joined mid-way: delta frames only.
    let frames: Vec<_> = (0..3).map(|i| vp8_frame(false, 30, i)).collect();
    let pkts = packetize(VideoPayload::Vp8, &frames, 1200, 7);
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let t0 = Instant::now();
    assert!(!a.poll_keyframe_request(t0), "nothing asked before a frame");
    assert!(run(&mut a, t0, &pkts).is_empty());
    assert!(a.poll_keyframe_request(t0));
    assert!(!a.poll_keyframe_request(t0 + Duration::from_millis(100)));
    // Another undecodable frame 200 ms later: asked again, but not before 300 ms.
    let more = packetize(VideoPayload::Vp8, &frames, 1200, 10);
    run(&mut a, t0 + Duration::from_millis(200), &more[..1]);
    assert!(!a.poll_keyframe_request(t0 + Duration::from_millis(299)));
    assert!(a.poll_keyframe_request(t0 + Duration::from_millis(300)));
    // Still waiting, nothing new: repeated after 1 s.
    assert!(!a.poll_keyframe_request(t0 + Duration::from_millis(1299)));
    assert!(a.poll_keyframe_request(t0 + Duration::from_millis(1300)));
    assert_eq!(a.stats().keyframe_requests, 3);
}

#[test]
fn reorder_duplicates_timeout_and_window() {
    let frames = vp8_stream(10);
    let pkts = packetize(VideoPayload::Vp8, &frames, 60, 100);
    let t0 = Instant::now();
    // Swap two neighbours and send one twice.
    let mut order: Vec<usize> = (0..pkts.len()).collect();
    order.swap(3, 4);
    order.insert(6, 2);
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let shuffled: Vec<Pkt> = order.iter().map(|&i| pkts[i].clone()).collect();
    let got = run(&mut a, t0, &shuffled);
    assert_eq!(
        got.iter().map(|f| &f.data).collect::<Vec<_>>(),
        frames.iter().collect::<Vec<_>>()
    );
    let s = a.stats();
    assert_eq!((s.reordered, s.duplicates, s.lost), (1, 1, 0));

    // A gap is given up after the reorder timeout (50 ms), noticed by poll_keyframe_request.
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let first_frame = pkts.iter().filter(|p| p.ts == 1000).count();
    run(&mut a, t0, &pkts[..first_frame]);
    assert_eq!(a.stats().frames, 1);
    run(&mut a, t0, &pkts[first_frame + 1..first_frame + 3]);
    assert!(!a.poll_keyframe_request(t0 + Duration::from_millis(49)));
    assert_eq!(a.stats().lost, 0);
    assert!(a.poll_keyframe_request(t0 + Duration::from_millis(50)));
    assert_eq!(a.stats().lost, 1);
    // The late packet is counted, not used.
    let _ = a.push(t0, &pkts[first_frame].rtp());
    assert_eq!(a.stats().late, 1);

    // Window overflow: a gap and then more than 64 packets, all at one instant.
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let big = vec![vp8_frame(true, 20_000, 1), vp8_frame(true, 9_000, 2)];
    let pkts = packetize(VideoPayload::Vp8, &big, 200, 0);
    let mut rest = pkts.clone();
    rest.remove(5);
    let got = run(&mut a, t0, &rest);
    assert_eq!(got.len(), 1, "only the second keyframe");
    assert_eq!(got[0].data, big[1]);
    assert_eq!(a.stats().lost, 1);
}

#[test]
fn a_lost_marker_packet_and_a_keyframe_right_after() {
    // The last packet of frame 1 is lost; frame 2 is a keyframe whose first packet says S=1:
    // it is taken although the boundary before it is unknown.
    let frames = vec![
        vp8_frame(true, 150, 0),
        vp8_frame(false, 150, 1),
        vp8_frame(true, 150, 2),
    ];
    let pkts = packetize(VideoPayload::Vp8, &frames, 100, 0);
    let last_of_1 = pkts.iter().rposition(|p| p.ts == 4000).unwrap();
    let mut rest = pkts.clone();
    rest.remove(last_of_1);
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let t0 = Instant::now();
    let mut got = run(&mut a, t0, &rest);
    // The gap is given up after 50 ms; the keyframe behind it ends the wait at once, so no
    // request is needed.
    assert!(!a.poll_keyframe_request(t0 + Duration::from_millis(50)));
    assert_eq!(a.stats().lost, 1);
    while let Some(f) = a.poll_frame() {
        got.push(f);
    }
    let ts: Vec<u32> = got.iter().map(|f| f.rtp_timestamp).collect();
    assert_eq!(ts, [1000, 7000]);
    assert!(!a.waiting_for_keyframe());
}

#[test]
fn errors_are_counted_and_bounded() {
    let t0 = Instant::now();
    // H.264 STAP-B: unsupported.
    let mut a = FrameAssembler::new(VideoPayload::H264);
    let idr = packetize(
        VideoPayload::H264,
        &[annex_b(&[vec![0x67, 1], vec![0x65, 2]])],
        1200,
        0,
    );
    assert_eq!(run(&mut a, t0, &idr).len(), 1);
    let p = Pkt {
        seq: 1,
        ts: 0,
        marker: true,
        payload: vec![0x19, 0, 1, 0, 2, 0x67, 1],
        ssrc: SSRC,
    };
    assert!(matches!(
        a.push(t0, &p.rtp()),
        Err(VideoRtpError::H264Unsupported { nal_type: 25, .. })
    ));
    assert_eq!(a.stats().errors_unsupported, 1);
    assert_eq!(a.stats().frames_dropped_error, 1);
    assert!(a.poll_keyframe_request(t0));
    // A frame over the byte cap.
    let cfg = AssemblerConfig {
        max_frame_bytes: 1000,
        ..AssemblerConfig::default()
    };
    let mut a = FrameAssembler::with_config(VideoPayload::Vp8, cfg);
    let pkts = packetize(
        VideoPayload::Vp8,
        &[vp8_frame(true, 3000, 1), vp8_frame(true, 500, 2)],
        400,
        9,
    );
    let got = run(&mut a, t0, &pkts);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data.len(), 500);
    assert_eq!(a.stats().errors_too_large, 1);
    // An oversized RTP payload.
    let p = Pkt {
        seq: 1,
        ts: 0,
        marker: true,
        payload: vec![0x10; MAX_PACKET_PAYLOAD + 1],
        ssrc: 1,
    };
    assert!(matches!(
        a.push(t0, &p.rtp()),
        Err(VideoRtpError::PacketTooLarge(_))
    ));
    // A new SSRC starts over.
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let pkts = packetize(VideoPayload::Vp8, &[vp8_frame(true, 10, 1)], 1200, 500);
    run(&mut a, t0, &pkts);
    let mut other = packetize(VideoPayload::Vp8, &[vp8_frame(true, 10, 2)], 1200, 3);
    other[0].ssrc = 99;
    // A stray packet of another SSRC is ignored; once the first is silent, it is followed.
    assert!(run(&mut a, t0, &other).is_empty());
    assert_eq!((a.stats().foreign_ssrc, a.stats().resyncs), (1, 0));
    let got = run(&mut a, t0 + SSRC_SWITCH_SILENCE, &other);
    assert_eq!(got.len(), 1);
    assert_eq!(a.stats().resyncs, 1);
    // Or after 8 packets in a row, while the first still sends.
    let frames: Vec<_> = (0..10).map(|i| vp8_frame(true, 10, i)).collect();
    let mut third = packetize(VideoPayload::Vp8, &frames, 1200, 40);
    for p in &mut third {
        p.ssrc = 5;
    }
    let got = run(&mut a, t0 + SSRC_SWITCH_SILENCE, &third);
    assert_eq!(got.len(), 10 - 7);
    assert_eq!(a.stats().resyncs, 2);
    // A packet far off the stream's numbers is stray; two in a row restart it.
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let pkts = packetize(VideoPayload::Vp8, &frames[..4], 1200, 100);
    run(&mut a, t0, &pkts[..2]);
    let far = packetize(VideoPayload::Vp8, &frames[..2], 1200, 30_000);
    run(&mut a, t0, &far[..1]);
    assert_eq!((a.stats().stray, a.stats().resyncs), (1, 0));
    assert_eq!(run(&mut a, t0, &pkts[2..]).len(), 2, "the stream goes on");
    let far = packetize(VideoPayload::Vp8, &frames[..3], 1200, 40_000);
    assert_eq!(run(&mut a, t0, &far).len(), 2, "restarted at the second");
    assert_eq!((a.stats().stray, a.stats().resyncs), (2, 1));
    // Padding-only packets hold a sequence number and nothing else.
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let mut pkts = packetize(VideoPayload::Vp8, &frames[..3], 1200, 0);
    for p in &mut pkts[1..] {
        p.seq += 1;
    }
    let pad = Pkt {
        seq: 1,
        ts: pkts[0].ts,
        marker: false,
        payload: Vec::new(),
        ssrc: SSRC,
    };
    pkts.insert(1, pad);
    assert_eq!(run(&mut a, t0, &pkts).len(), 3);
    let s = a.stats();
    assert_eq!((s.padding, s.frames_dropped_incomplete, s.lost), (1, 0, 0));
    // Frames not polled: the queue stays bounded.
    let mut a = FrameAssembler::new(VideoPayload::Vp8);
    let frames: Vec<_> = (0..40).map(|i| vp8_frame(true, 10, i)).collect();
    for p in packetize(VideoPayload::Vp8, &frames, 1200, 0) {
        let _ = a.push(t0, &p.rtp());
    }
    assert_eq!(a.stats().frames_dropped_unpolled, 40 - 16);
    assert_eq!(std::iter::from_fn(|| a.poll_frame()).count(), 16);
}

/// An H.264 access unit from NAL units (4-byte start codes).
fn annex_b(nals: &[Vec<u8>]) -> Vec<u8> {
    nals.iter()
        .flat_map(|n| [0, 0, 0, 1].iter().chain(n).copied())
        .collect()
}

fn obu(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![(ty << 3) | 0x02];
    av1::write_leb128(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

fn nal(t: u8, nri: u8, body: &[u8]) -> Vec<u8> {
    let mut n = vec![(nri << 5) | t];
    n.extend_from_slice(body);
    n
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 0..700)
}

/// One access unit in H.264's order (7.4.1.2.3): an optional AUD, SPS + PPS (always in the
/// first), SEIs, then slices (IDR or not).
fn access_unit_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(body(), 0..2),
        prop::collection::vec((any::<bool>(), 0u8..4, body()), 1..4),
    )
        .prop_map(|(aud, params, seis, slices)| {
            let mut au = Vec::new();
            if aud {
                au.push(nal(9, 0, &[0x10]));
            }
            if params {
                au.push(nal(7, 3, &[0x42, 0x1F]));
                au.push(nal(8, 3, &[0xCE]));
            }
            au.extend(seis.iter().map(|b| nal(6, 0, b)));
            au.extend(
                slices
                    .iter()
                    .map(|(idr, nri, b)| nal(if *idr { 5 } else { 1 }, *nri, b)),
            );
            au
        })
}

fn obu_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![3u8, 4, 5, 6, 15]),
        prop::collection::vec(any::<u8>(), 0..900),
    )
        .prop_map(|(t, body)| obu(t, &body))
}

/// Frames of `payload` as its depacketizer gives them back; the first is a keyframe that
/// announces itself as a frame start.
fn frames_strategy(payload: VideoPayload) -> BoxedStrategy<Vec<Vec<u8>>> {
    match payload {
        VideoPayload::Vp8 => prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 1..3000)),
            1..12,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (key, mut f))| {
                    f[0] = (f[0] & !1) | u8::from(!(key || i == 0));
                    f
                })
                .collect()
        })
        .boxed(),
        VideoPayload::H264 => prop::collection::vec(access_unit_strategy(), 1..10)
            .prop_map(|mut aus| {
                if aus[0][0][0] & 0x1F != 9 {
                    aus[0].insert(0, nal(7, 3, &[0x42, 0x1F]));
                }
                aus[0].push(nal(5, 3, &[0x88, 0x84]));
                aus.iter().map(|nals| annex_b(nals)).collect()
            })
            .boxed(),
        VideoPayload::Av1 => {
            prop::collection::vec(prop::collection::vec(obu_strategy(), 1..5), 1..10)
                .prop_map(|tus| {
                    tus.iter()
                        .enumerate()
                        .map(|(i, obus)| {
                            let mut tu = av1::TEMPORAL_DELIMITER.to_vec();
                            if i == 0 {
                                tu.extend(obu(av1::OBU_SEQUENCE_HEADER, &[0x00, 0x01]));
                                tu.extend(obu(av1::OBU_FRAME, &[0x10, 0x77]));
                            }
                            for o in obus {
                                tu.extend(o);
                            }
                            tu
                        })
                        .collect()
                })
                .boxed()
        }
    }
}

fn round_trip(
    payload: VideoPayload,
    frames: &[Vec<u8>],
    mtu: usize,
    seq0: u16,
    swaps: &[(usize, usize)],
    dups: &[(usize, usize)],
) -> Result<(), TestCaseError> {
    let pkts = packetize(payload, frames, mtu, seq0);
    let mut order: Vec<usize> = (0..pkts.len()).collect();
    // Local shuffles: swaps inside blocks of 8 (no packet moves 8 places or more). The first
    // packet stays first: it fixes where the stream starts (earlier ones would be late).
    for &(i, d) in swaps {
        let i = i % order.len();
        let j = (i / 8 * 8 + d % 8).min(order.len() - 1);
        if i != 0 && j != 0 {
            order.swap(i, j);
        }
    }
    for &(i, d) in dups {
        let i = i % order.len();
        let at = (i + d % 8).min(order.len());
        order.insert(at, order[i]);
    }
    let mut a = FrameAssembler::new(payload);
    let shuffled: Vec<Pkt> = order.iter().map(|&i| pkts[i].clone()).collect();
    let got = run(&mut a, Instant::now(), &shuffled);
    let s = a.stats();
    prop_assert_eq!(got.len(), frames.len(), "{:?}", s);
    for (i, (f, want)) in got.iter().zip(frames).enumerate() {
        prop_assert_eq!(&f.data, want, "frame {}", i);
        prop_assert_eq!(f.rtp_timestamp, 1000 + 3000 * i as u32);
    }
    prop_assert!(got[0].keyframe);
    prop_assert_eq!(
        s.lost + s.frames_dropped_incomplete + s.frames_dropped_error,
        0
    );
    prop_assert_eq!(
        s.errors_malformed + s.errors_unsupported + s.errors_too_large,
        0
    );
    prop_assert_eq!(s.keyframe_requests, 0);
    Ok(())
}

fn any_payload() -> impl Strategy<Value = VideoPayload> {
    prop::sample::select(vec![
        VideoPayload::Vp8,
        VideoPayload::H264,
        VideoPayload::Av1,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn packetize_shuffle_duplicate_assemble(
        (payload, frames) in any_payload().prop_flat_map(|p| (Just(p), frames_strategy(p))),
        mtu in 40usize..1300,
        seq0 in any::<u16>(),
        swaps in prop::collection::vec((any::<usize>(), any::<usize>()), 0..20),
        dups in prop::collection::vec((any::<usize>(), any::<usize>()), 0..6),
    ) {
        round_trip(payload, &frames, mtu, seq0, &swaps, &dups)?;
    }

    #[test]
    fn losses_never_hand_on_a_broken_or_undecodable_frame(
        (payload, frames) in any_payload().prop_flat_map(|p| (Just(p), frames_strategy(p))),
        mtu in 40usize..600,
        drops in prop::collection::vec(any::<usize>(), 1..4),
    ) {
        let pkts = packetize(payload, &frames, mtu, 1);
        let drop: Vec<usize> = drops.iter().map(|d| d % pkts.len()).collect();
        let mut a = FrameAssembler::new(payload);
        let t0 = Instant::now();
        let mut got = Vec::new();
        for (k, p) in pkts.iter().enumerate() {
            let now = t0 + Duration::from_millis(k as u64);
            if !drop.contains(&k) {
                let _ = a.push(now, &p.rtp());
            }
            let _ = a.poll_keyframe_request(now);
            got.extend(std::iter::from_fn(|| a.poll_frame()));
        }
        let _ = a.poll_keyframe_request(t0 + Duration::from_secs(10));
        got.extend(std::iter::from_fn(|| a.poll_frame()));
        let key = |i: usize| match payload {
            VideoPayload::Vp8 => frames[i][0] & 1 == 0,
            VideoPayload::H264 => h264::annex_b_nals(&frames[i]).any(|n| n[0] & 0x1F == 5),
            VideoPayload::Av1 => i == 0,
        };
        let mut prev: Option<usize> = None;
        for f in &got {
            let i = ((f.rtp_timestamp - 1000) / 3000) as usize;
            // Whole: VP8 and AV1 exactly; H.264 possibly without the NAL units before an SPS
            // that the assembler took as a frame start after a loss (never a slice).
            let cut = frames[i].len() - f.data.len().min(frames[i].len());
            prop_assert!(frames[i].ends_with(&f.data), "frame {} handed on whole", i);
            if cut > 0 {
                prop_assert_eq!(payload, VideoPayload::H264);
                prop_assert!(f.data.starts_with(&[0, 0, 0, 1, 0x67]));
                let slices = |d: &[u8]| h264::annex_b_nals(d).filter(|n| matches!(n[0] & 0x1F, 1 | 5)).count();
                prop_assert_eq!(slices(&f.data), slices(&frames[i]));
            }
            prop_assert_eq!(f.keyframe, key(i));
            // Decodable: a keyframe, or the frame right after the last one handed on.
            prop_assert!(key(i) || prev == Some(i.wrapping_sub(1)), "frame {} after {:?}", i, prev);
            prev = Some(i);
        }
    }

    #[test]
    fn random_packets_never_panic(
        payload in any_payload(),
        pkts in prop::collection::vec(
            (0u8..8, any::<i8>(), any::<bool>(), 0u8..4, prop::collection::vec(any::<u8>(), 0..64)),
            0..200,
        ),
    ) {
        let mut a = FrameAssembler::new(payload);
        let t0 = Instant::now();
        let (mut seq, mut ts) = (0u16, 0u32);
        for (k, (dt, dseq, marker, dts, body)) in pkts.into_iter().enumerate() {
            seq = seq.wrapping_add(dseq as u16);
            ts = ts.wrapping_add(u32::from(dts) * 3000);
            let now = t0 + Duration::from_millis(u64::from(dt) * k as u64);
            let p = Pkt { seq, ts, marker, payload: body, ssrc: SSRC };
            let _ = a.push(now, &p.rtp());
            let _ = a.poll_keyframe_request(now);
            while let Some(f) = a.poll_frame() {
                prop_assert!(f.data.len() <= DEFAULT_MAX_FRAME_BYTES);
            }
        }
    }

    #[test]
    fn random_payloads_never_panic_the_depacketizers(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
    ) {
        let mut out = Vec::new();
        let mut v = vp8::Vp8Depacketizer::new();
        let mut h = h264::H264Depacketizer::new();
        let mut a = av1::Av1Depacketizer::new();
        for p in &payloads {
            let _ = v.push(p, &mut out);
            let _ = h.push(p, &mut out);
            let _ = a.push(p, &mut out);
        }
        let _ = v.finish(&out);
        let _ = h.finish();
        let _ = a.finish();
        // And as temporal units / access units into the packetizers.
        let mut pk = Vec::new();
        for p in &payloads {
            let _ = Av1Packetizer::new(16).packetize(p, &mut pk);
            let _ = H264Packetizer::new(16).packetize(p, &mut pk);
        }
    }
}
