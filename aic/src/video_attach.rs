//! The video track of `aic attach janus --video` (issue #14): the publisher's VP8 (or H.264)
//! RTP from Janus' `rtp_forward` → frames (`aic-sfu-bridge::video`: depacketizing, reordering,
//! whole frames only) → `aic-video`'s [`Transcoder`] (decode, AV1 encode) → AV1 RTP (the AOM
//! payload format) into the Streaming mountpoint, on its own thread.
//!
//! Keyframes, both ways, by RTCP:
//! * towards the publisher — a frame lost on the way (or one that does not decode) makes the
//!   assembler wait for a keyframe and ask for one; the PLI goes to the forwarder's RTCP port
//!   in Janus (`local_rtcp_port` of `rtp_forward`), which asks the publisher;
//! * from receivers — a subscriber that needs a keyframe sends PLI/FIR to Janus, which relays
//!   it to the mountpoint's RTCP peer: this thread (it sends a sender report to the
//!   mountpoint's RTCP port every second so Janus knows where that peer is). The next frame is
//!   then coded as a keyframe.
//!
//! Fallback: when the encoder fails, the stream stops carrying AV1 (counted, logged, in the
//! summary): receivers take the publisher's original stream from the VideoRoom, which the
//! bridge never touches.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aic_sfu_bridge::rtcp;
use aic_sfu_bridge::rtp::{self, RtpPacket};
use aic_sfu_bridge::session::Histogram;
use aic_sfu_bridge::video::{FrameAssembler, VideoPayload, av1::Av1Packetizer};
use aic_video::engine::{TranscodeConfig, Transcoder};
use aic_video::{EncodedPacket, EncoderKind, FrameHints, VideoCodec};
use anyhow::{Context, Result};
use serde_json::{Value, json};

/// What the video track is asked to do.
#[derive(Debug, Clone)]
pub struct VideoOptions {
    /// The receivers' encoder (AV1 through libaom by default).
    pub encoder: EncoderKind,
    /// The receivers' target bitrate, kbit/s.
    pub kbps: u32,
    /// Payload type of the AV1 track in the mountpoint.
    pub pt: u8,
    /// The publisher's frame rate (the encoder's time base; RTP timestamps carry the rest).
    pub fps: u32,
}

/// The sockets and addresses of one video track.
pub struct VideoPorts {
    /// Where Janus' `rtp_forward` sends the publisher's video.
    pub rtp_in: UdpSocket,
    /// Our RTCP socket: PLIs out to the forwarder, sender reports out to the mountpoint, PLI/FIR
    /// in from the mountpoint.
    pub rtcp: UdpSocket,
    /// The forwarder's RTCP port in Janus (`local_rtcp_port`).
    pub forwarder_rtcp: Option<SocketAddr>,
    /// The mountpoint's video RTP and RTCP ports.
    pub mount_rtp: SocketAddr,
    pub mount_rtcp: SocketAddr,
    /// What the publisher sends (from the room's stream list).
    pub input: VideoCodec,
}

#[derive(Default)]
struct Counters {
    rtp_in: u64,
    rtp_in_bytes: u64,
    rtp_malformed: u64,
    /// Packets of another payload type than the stream's first: another codec mid-stream is
    /// not taken (counted, dropped; the assembler then misses frames and asks for a keyframe).
    rtp_foreign_pt: u64,
    frames_in: u64,
    rtp_out: u64,
    out_bytes: u64,
    plis_sent: u64,
    keyframe_requests_in: u64,
    keyframes_out: u64,
    rtcp_in: u64,
    encode_failed: Option<String>,
}

/// Runs until `stop`; returns the track's summary.
pub fn run(o: &VideoOptions, p: &VideoPorts, stop: &AtomicBool) -> Result<Value> {
    let payload = match p.input {
        VideoCodec::Vp8 => VideoPayload::Vp8,
        VideoCodec::H264 => VideoPayload::H264,
        other => anyhow::bail!(
            "publisher video {} is not taken (VP8 or H.264)",
            other.name()
        ),
    };
    let mut assembler = FrameAssembler::new(payload);
    let mut transcoder = Transcoder::new(TranscodeConfig {
        input: p.input,
        output: o.encoder,
        fps: o.fps,
        bitrate_bps: o.kbps * 1000,
        roi: false,
    })
    .context("opening the video transcoder")?;
    let mut packetizer = Av1Packetizer::new(1200);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos().rotate_left(11) ^ 0x9e37_79b9)
        .unwrap_or(0xa1c0_0001);
    let ssrc = seed | 1;
    let mut seq = seed as u16;
    let ts_base = seed.rotate_left(5);
    let mut first_in_ts: Option<u32> = None;

    p.rtp_in.set_read_timeout(Some(Duration::from_millis(5)))?;
    p.rtcp.set_nonblocking(true)?;
    let mut buf = vec![0u8; 2048];
    let mut rtcp_buf = [0u8; 1500];
    let mut encoded: Vec<EncodedPacket> = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::with_capacity(1500);
    let mut c = Counters::default();
    let mut force_key = false;
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut encode_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut sender = rtcp::SenderStats::new(ssrc);
    let mut next_sr = Instant::now();
    let mut last_out_ts = ts_base;
    let mut media_ssrc_in = 0u32;
    let mut input_pt: Option<u8> = None;
    let t0 = Instant::now();

    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        // RTCP: the mountpoint's keyframe requests (relayed by Janus from its subscribers).
        while let Ok((n, _)) = p.rtcp.recv_from(&mut rtcp_buf) {
            c.rtcp_in += 1;
            for pkt in rtcp::Compound::new(&rtcp_buf[..n]).flatten() {
                if matches!(pkt, rtcp::Packet::Pli { .. } | rtcp::Packet::Fir { .. }) {
                    c.keyframe_requests_in += 1;
                    force_key = true;
                }
            }
        }
        // A sender report to the mountpoint every second: Janus learns where to send
        // its subscribers' keyframe requests.
        if now >= next_sr {
            next_sr = now + Duration::from_secs(1);
            let ntp = rtcp::ntp_from_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            let info = sender.sender_info(ntp, last_out_ts);
            if let Ok(n) = rtcp::write_sender_report(&info, &[], &mut rtcp_buf) {
                let _ = p.rtcp.send_to(&rtcp_buf[..n], p.mount_rtcp);
            }
        }
        // Our keyframe requests to the publisher (through the forwarder).
        if assembler.poll_keyframe_request(now)
            && let Some(dest) = p.forwarder_rtcp
        {
            let n = rtcp::write_pli(&mut rtcp_buf, ssrc, media_ssrc_in);
            let _ = p.rtcp.send_to(&rtcp_buf[..n], dest);
            c.plis_sent += 1;
        }
        let n = match p.rtp_in.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("receiving video RTP"),
        };
        let arrived = Instant::now();
        let Ok(pkt) = RtpPacket::parse(&buf[..n]) else {
            c.rtp_malformed += 1;
            continue;
        };
        c.rtp_in += 1;
        if *input_pt.get_or_insert(pkt.payload_type) != pkt.payload_type {
            c.rtp_foreign_pt += 1;
            continue;
        }
        c.rtp_in_bytes += pkt.payload.len() as u64;
        media_ssrc_in = pkt.ssrc;
        // Counted by the assembler; a bad packet never stops the track.
        let _ = assembler.push(arrived, &pkt);
        while let Some(frame) = assembler.poll_frame() {
            c.frames_in += 1;
            if c.encode_failed.is_some() {
                continue;
            }
            let hints = FrameHints {
                keyframe: std::mem::take(&mut force_key),
                ..Default::default()
            };
            encoded.clear();
            let t_enc = Instant::now();
            let step = transcoder.push(&frame.data, &hints, &mut encoded);
            let _ = encode_us.record(t_enc.elapsed().as_micros() as u64);
            if step.request_keyframe
                && let Some(dest) = p.forwarder_rtcp
            {
                let n = rtcp::write_pli(&mut rtcp_buf, ssrc, media_ssrc_in);
                let _ = p.rtcp.send_to(&rtcp_buf[..n], dest);
                c.plis_sent += 1;
            }
            if step.forward {
                let why = transcoder
                    .fallback_reason()
                    .unwrap_or("the encoder failed")
                    .to_owned();
                eprintln!(
                    "aic attach: video encoder failed ({why}); the AV1 track stops, receivers \
                     take the publisher's stream from the room"
                );
                c.encode_failed = Some(why);
                continue;
            }
            // The publisher's frame clock carries over (90 kHz), rebased to our start.
            let first = *first_in_ts.get_or_insert(frame.rtp_timestamp);
            let ts = ts_base.wrapping_add(frame.rtp_timestamp.wrapping_sub(first));
            for e in &encoded {
                payloads.clear();
                if let Err(err) = packetizer.packetize(&e.data, &mut payloads) {
                    eprintln!("aic attach: AV1 packetizer: {err}");
                    continue;
                }
                c.keyframes_out += u64::from(e.keyframe);
                let last = payloads.len().saturating_sub(1);
                for (i, pl) in payloads.iter().enumerate() {
                    out.clear();
                    rtp::write(
                        &rtp::Header {
                            marker: i == last,
                            payload_type: o.pt,
                            sequence: seq,
                            timestamp: ts,
                            ssrc,
                        },
                        &[],
                        pl,
                        &mut out,
                    )?;
                    seq = seq.wrapping_add(1);
                    let _ = p.rtp_in.send_to(&out, p.mount_rtp);
                    sender.on_rtp_sent(pl.len());
                    c.rtp_out += 1;
                    c.out_bytes += pl.len() as u64;
                }
                last_out_ts = ts;
            }
            if !encoded.is_empty() {
                let _ = latency_us.record(arrived.elapsed().as_micros() as u64);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    let a = assembler.stats();
    let t = transcoder.stats();
    Ok(json!({
        "input": p.input.name(), "encoder": o.encoder.name(), "target_kbps": o.kbps,
        "seconds": secs,
        "rtp_in": {"packets": c.rtp_in, "malformed": c.rtp_malformed,
                   "foreign_payload_type": c.rtp_foreign_pt},
        "assembler": {"packets": a.packets, "frames": a.frames, "keyframes": a.keyframes,
                      "lost": a.lost, "reordered": a.reordered, "duplicates": a.duplicates,
                      "late": a.late, "dropped_incomplete": a.frames_dropped_incomplete,
                      "dropped_error": a.frames_dropped_error,
                      "dropped_waiting_keyframe": a.frames_dropped_waiting_keyframe,
                      "keyframe_requests": a.keyframe_requests,
                      "errors": {"malformed": a.errors_malformed, "unsupported": a.errors_unsupported,
                                 "too_large": a.errors_too_large},
                      "resyncs": a.resyncs},
        "frames": {"assembled": c.frames_in, "decoded": t.frames_decoded, "encoded": t.frames_encoded,
                   "decode_errors": t.decode_errors, "encoder_opens": t.encoder_opens},
        "keyframes": {"plis_to_publisher": c.plis_sent, "requests_from_receivers": c.keyframe_requests_in,
                      "sent": c.keyframes_out},
        "rtp_out": {"packets": c.rtp_out, "rtcp_in": c.rtcp_in},
        "bitrate_kbps": {"publisher": c.rtp_in_bytes as f64 * 8.0 / secs / 1000.0,
                         "out": c.out_bytes as f64 * 8.0 / secs / 1000.0},
        "latency_frame_in_to_rtp_out": crate::attach::quantiles(&latency_us),
        "transcode_per_frame": crate::attach::quantiles(&encode_us),
        "encoder_failed": c.encode_failed,
    }))
}

/// Starts the track on its own thread; the summary comes back through the handle.
pub fn spawn(
    o: VideoOptions,
    p: VideoPorts,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<Value>>> {
    Ok(std::thread::Builder::new()
        .name("aic-video".into())
        .spawn(move || run(&o, &p, &stop))?)
}
