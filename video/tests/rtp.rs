//! Real encoders through the SFU bridge's video RTP (issue #14): VP8 (libvpx), H.264 (x264) and
//! AV1 (libaom) frames → packetizer → RTP (`aic_sfu_bridge::rtp::write`) → parse →
//! `FrameAssembler` → `VideoDecoder`. With nothing lost every frame decodes to exactly what the
//! encoder's own packets decode to; with one packet lost the assembler asks for a keyframe and
//! hands the decoder nothing broken until the keyframe comes.

mod common;

use std::time::{Duration, Instant};

use aic_sfu_bridge::rtp::{self, RtpPacket};
use aic_sfu_bridge::video::av1::Av1Packetizer;
use aic_sfu_bridge::video::h264::H264Packetizer;
use aic_sfu_bridge::video::vp8::Vp8Packetizer;
use aic_sfu_bridge::video::{FrameAssembler, VideoPayload};
use aic_video::{
    EncodedPacket, EncoderConfig, EncoderKind, FrameHints, VideoDecoder, VideoEncoder, Yuv420Frame,
};

const FRAMES: usize = 24;
/// The keyframe the loss test recovers with.
const KEY_AT: usize = 14;
/// The frame that loses a packet.
const LOSE_IN: usize = 5;
/// Small, so that frames span several packets.
const MTU: usize = 300;
const TICKS: u32 = 90_000 / 30;

fn payload_of(kind: EncoderKind) -> VideoPayload {
    match kind {
        EncoderKind::Vp8 => VideoPayload::Vp8,
        EncoderKind::X264 => VideoPayload::H264,
        _ => VideoPayload::Av1,
    }
}

/// The clip's frames encoded at 300 kbit/s, a keyframe forced at `KEY_AT`.
fn encode(kind: EncoderKind, frames: &[Yuv420Frame]) -> Vec<EncodedPacket> {
    let (w, h) = (frames[0].width, frames[0].height);
    let mut enc =
        VideoEncoder::new(EncoderConfig::new(kind, w, h, 30, 300_000)).expect("open encoder");
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let hints = FrameHints {
            keyframe: i == KEY_AT,
            ..FrameHints::default()
        };
        enc.encode(f, &hints, &mut out).expect("encode");
    }
    enc.flush(&mut out).expect("flush");
    assert_eq!(
        out.len(),
        frames.len(),
        "{}: one packet per frame",
        kind.name()
    );
    assert!(out[0].keyframe && out[KEY_AT].keyframe, "{}", kind.name());
    out
}

fn decode(kind: EncoderKind, packets: &[&[u8]]) -> (Vec<Yuv420Frame>, u64) {
    let mut dec = VideoDecoder::new(kind.codec()).expect("open decoder");
    let mut out = Vec::new();
    for p in packets {
        let _ = dec.decode(p, &mut out);
    }
    dec.flush(&mut out).expect("flush decoder");
    (out, dec.stats().errors)
}

/// One RTP datagram per payload: (frame index, datagram).
fn to_rtp(kind: EncoderKind, coded: &[EncodedPacket]) -> Vec<(usize, Vec<u8>)> {
    let mut vp8 = Vp8Packetizer::new(MTU);
    let mut h264 = H264Packetizer::new(MTU);
    let mut av1 = Av1Packetizer::new(MTU);
    let mut payloads = Vec::new();
    let mut out = Vec::new();
    let mut seq = 65_500u16; // wraps mid-clip
    for (i, c) in coded.iter().enumerate() {
        match payload_of(kind) {
            VideoPayload::Vp8 => vp8.packetize(&c.data, &mut payloads),
            VideoPayload::H264 => h264.packetize(&c.data, &mut payloads),
            VideoPayload::Av1 => av1.packetize(&c.data, &mut payloads),
        }
        .expect("packetize");
        let last = payloads.len() - 1;
        for (k, p) in payloads.iter().enumerate() {
            assert!(p.len() <= MTU);
            let h = rtp::Header {
                marker: k == last,
                payload_type: 96,
                sequence: seq,
                timestamp: 1234 + TICKS * i as u32,
                ssrc: 0xA1C0,
            };
            let mut d = Vec::new();
            rtp::write(&h, &[], p, &mut d).expect("rtp write");
            out.push((i, d));
            seq = seq.wrapping_add(1);
        }
    }
    if payload_of(kind) == VideoPayload::Av1 {
        assert_eq!(av1.keyframes(), 2, "N=1 on both keyframes");
    }
    out
}

/// Frames handed out (frame index, data), the datagram indices after which a keyframe was
/// asked for, and the assembler.
type Assembled = (Vec<(usize, Vec<u8>)>, Vec<usize>, FrameAssembler);

/// Pushes the datagrams (one frame every 33 ms) through an assembler; returns the frames it
/// hands out (frame index, data) and the indices of the datagrams after which it asked for a
/// keyframe.
fn assemble(kind: EncoderKind, datagrams: &[(usize, Vec<u8>)], skip: Option<usize>) -> Assembled {
    let mut a = FrameAssembler::new(payload_of(kind));
    let t0 = Instant::now();
    let mut frames = Vec::new();
    let mut requests = Vec::new();
    for (k, (i, d)) in datagrams.iter().enumerate() {
        let now = t0 + Duration::from_millis(33 * *i as u64);
        if Some(k) != skip {
            let p = RtpPacket::parse(d).expect("our own RTP parses");
            a.push(now, &p).expect("well-formed payload");
        }
        while let Some(f) = a.poll_frame() {
            let idx = f.rtp_timestamp.wrapping_sub(1234) / TICKS;
            frames.push((idx as usize, f.data));
        }
        if a.poll_keyframe_request(now) {
            requests.push(k);
        }
    }
    (frames, requests, a)
}

fn check(kind: EncoderKind, clip: &[Yuv420Frame]) {
    let name = kind.name();
    let coded = encode(kind, clip);
    let direct_in: Vec<&[u8]> = coded.iter().map(|c| c.data.as_slice()).collect();
    let (direct, errors) = decode(kind, &direct_in);
    assert_eq!((direct.len(), errors), (FRAMES, 0), "{name}: direct decode");
    let datagrams = to_rtp(kind, &coded);
    assert!(datagrams.len() > FRAMES, "{name}: some frames span packets");

    // Nothing lost: every frame, and the same pictures.
    let (frames, requests, a) = assemble(kind, &datagrams, None);
    let s = a.stats();
    assert_eq!(frames.len(), FRAMES, "{name}: {s:?}");
    assert!(requests.is_empty(), "{name}: {requests:?}");
    assert!(frames.iter().enumerate().all(|(k, (i, _))| *i == k));
    let via_rtp_in: Vec<&[u8]> = frames.iter().map(|(_, d)| d.as_slice()).collect();
    let (via_rtp, errors) = decode(kind, &via_rtp_in);
    assert_eq!(errors, 0, "{name}");
    assert_eq!(via_rtp.len(), FRAMES, "{name}");
    for (k, (a, b)) in via_rtp.iter().zip(&direct).enumerate() {
        assert!(a == b, "{name}: frame {k} differs from the direct decode");
    }

    // One packet of frame LOSE_IN lost: frames LOSE_IN..KEY_AT never reach the decoder, a
    // keyframe request is raised, and from KEY_AT on the pictures are the direct decode's.
    let in_frame: Vec<usize> = (0..datagrams.len())
        .filter(|&k| datagrams[k].0 == LOSE_IN)
        .collect();
    let skip = in_frame[in_frame.len() / 2];
    let (frames, requests, a) = assemble(kind, &datagrams, Some(skip));
    let s = a.stats();
    let got: Vec<usize> = frames.iter().map(|(i, _)| *i).collect();
    let want: Vec<usize> = (0..LOSE_IN).chain(KEY_AT..FRAMES).collect();
    assert_eq!(got, want, "{name}: {s:?}");
    assert!(
        !requests.is_empty() && requests[0] > skip,
        "{name}: {requests:?}"
    );
    assert_eq!(s.lost, 1, "{name}");
    let via_rtp_in: Vec<&[u8]> = frames.iter().map(|(_, d)| d.as_slice()).collect();
    let (via_rtp, errors) = decode(kind, &via_rtp_in);
    assert_eq!(errors, 0, "{name}: no broken frame reached the decoder");
    assert_eq!(via_rtp.len(), want.len(), "{name}");
    for (pic, &i) in via_rtp.iter().zip(&want) {
        assert!(
            *pic == direct[i],
            "{name}: frame {i} differs from the direct decode"
        );
    }
}

#[test]
fn vp8_through_rtp() {
    check(EncoderKind::Vp8, &common::qcif(0.8).frames);
}

#[test]
fn h264_through_rtp() {
    check(EncoderKind::X264, &common::qcif(0.8).frames);
}

#[test]
fn av1_through_rtp() {
    check(EncoderKind::Av1, &common::qcif(0.8).frames);
}
