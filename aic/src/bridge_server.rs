//! `aic serve --bridge-socket PATH`: the pipeline side of the bridge ↔ pipeline link
//! (`aic_sfu_bridge::link`). Each link stream becomes two pipeline streams: an encode stream at
//! the requested level, whose AIC frames feed a decode stream, so the bridge gets back both the
//! frame to send and what an AIC receiver hears. Frames the model cannot serve in time come
//! back as the engine's Opus fallback, with the Opus-decoded PCM.
//!
//! Threads per stream (all blocking, none polling): *reader* (ring → encode stream, at most
//! [`IN_FLIGHT`] frames inside the pipeline, so a bridge sending faster than real time is
//! paced by its ring filling up instead of overflowing the engine's bounded queue), *relay*
//! (encode outputs → decode stream), *writer* (decode outputs → ring). A client that closes or
//! dies ends its stream's threads; the listener and other streams carry on.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use aic_codec::codec::Decoder as _;
use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{EngineError, Output, Payload, StreamConfig};
use aic_sfu_bridge::link::{
    FRAME_16K, FrameOut, LinkConfig, LinkConn, LinkError, LinkListener, Request,
};
use anyhow::{Context, Result};

/// Frames one link stream may have inside the pipeline (the engine queues at most 4).
const IN_FLIGHT: usize = 3;
/// How long the writer waits for ring space before dropping a frame (the bridge stopped
/// reading but is still connected).
const WRITE_WAIT: Duration = Duration::from_millis(500);

/// The running link server. Dropping it stops accepting and removes the socket file.
pub struct BridgeServer {
    listener: Arc<LinkListener>,
}

impl Drop for BridgeServer {
    fn drop(&mut self) {
        // Wakes the accept thread (it exits, dropping its clone); the socket file goes now, not
        // with the last clone, so a new server may bind the path at once.
        self.listener.shutdown();
        let _ = std::fs::remove_file(self.listener.path());
    }
}

pub fn start(path: &Path, pipeline: Arc<Pipeline>, model_id: String) -> Result<BridgeServer> {
    let listener = Arc::new(
        LinkListener::bind(path)
            .with_context(|| format!("cannot listen for the bridge on {}", path.display()))?,
    );
    let l = listener.clone();
    std::thread::Builder::new()
        .name("aic-bridge-accept".into())
        .spawn(move || {
            while let Ok(conn) = l.accept() {
                let (p, m) = (pipeline.clone(), model_id.clone());
                let _ = std::thread::Builder::new()
                    .name("aic-bridge-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve_conn(conn, &p, &m) {
                            eprintln!("aic serve: bridge stream: {e}");
                        }
                    });
            }
        })?;
    Ok(BridgeServer { listener })
}

/// Checks a link config and turns it into the two pipeline stream configs.
fn stream_configs(c: &LinkConfig) -> Result<(StreamConfig, StreamConfig), String> {
    let budget_ms = match c.latency_budget_ms {
        0 => 40,
        ms @ 20..=1000 => ms,
        ms => {
            return Err(format!(
                "latency_budget_ms {ms} not in 20..=1000 (0 = default)"
            ));
        }
    };
    let kbps = match c.reference_opus_kbps {
        0 => 16,
        k @ 6..=510 => k,
        k => {
            return Err(format!(
                "reference_opus_kbps {k} not in 6..=510 (0 = default)"
            ));
        }
    };
    let mut enc = StreamConfig::encode(c.level);
    enc.budget = Duration::from_millis(u64::from(budget_ms));
    enc.fallback_bitrate_bps = kbps * 1000;
    let mut dec = StreamConfig::decode();
    dec.budget = enc.budget;
    dec.fallback_bitrate_bps = enc.fallback_bitrate_bps;
    Ok((enc, dec))
}

fn serve_conn(mut conn: LinkConn, pipeline: &Pipeline, model_id: &str) -> Result<(), LinkError> {
    let cfg = match conn.request(Duration::from_secs(5))? {
        Request::Hello => return conn.reply_hello(model_id),
        Request::Open(c) => c,
    };
    let (enc_cfg, dec_cfg) = match stream_configs(&cfg) {
        Ok(c) => c,
        Err(why) => return conn.refuse(&why),
    };
    let refuse = |conn: LinkConn, e: EngineError| conn.refuse(&e.to_string());
    let enc = match pipeline.open(enc_cfg) {
        Ok(h) => h,
        Err(e) => return refuse(conn, e),
    };
    let dec = match pipeline.open(dec_cfg) {
        Ok(h) => h,
        Err(e) => return refuse(conn, e),
    };
    let (mut rx, mut tx) = conn.accept_open(model_id)?;
    let (enc_tx, enc_out) = enc.split();
    let (dec_tx, dec_out) = dec.split();
    // Reader → relay: (client seq, arrival) in push order. Relay → writer: per decode frame.
    let (seq_tx, seq_rx) = mpsc::channel::<(u64, Instant)>();
    let (meta_tx, meta_rx) = mpsc::channel::<Meta>();
    // Credits: the reader sends one per frame pushed (blocking at IN_FLIGHT), the writer takes
    // one back per frame written.
    let (credit_tx, credit_rx) = mpsc::sync_channel::<()>(IN_FLIGHT);
    let level = cfg.level;
    std::thread::Builder::new()
        .name("aic-bridge-relay".into())
        .spawn(move || relay(enc_out, dec_tx, seq_rx, meta_tx, level))?;
    std::thread::Builder::new()
        .name("aic-bridge-writer".into())
        .spawn(move || writer(dec_out, meta_rx, credit_rx, &mut tx))?;
    // This thread is the reader.
    let mut pcm = Vec::with_capacity(FRAME_16K);
    loop {
        let meta = match rx.recv(&mut pcm, Duration::from_secs(3600)) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(LinkError::PeerGone) => break,
            Err(e @ LinkError::Protocol(_)) => {
                eprintln!("aic serve: bridge stream: dropped a frame: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let at = Instant::now();
        if pcm.len() != FRAME_16K {
            eprintln!(
                "aic serve: bridge stream: frame {} has {} samples, not {FRAME_16K}",
                meta.seq,
                pcm.len()
            );
            continue;
        }
        if credit_tx.send(()).is_err() {
            break; // the writer ended: the client is gone
        }
        let x: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
        if seq_tx.send((meta.seq, at)).is_err() || enc_tx.push_pcm(x).is_err() {
            break;
        }
    }
    Ok(()) // dropping enc_tx ends the encode stream once drained; the rest follows
}

/// One frame on its way from the encode stream to the ring.
struct Meta {
    /// Sequence number in the decode stream.
    dec_seq: u64,
    client_seq: u64,
    arrived: Instant,
    fallback: bool,
    level: u8,
    payload: Vec<u8>,
}

/// Encode outputs → decode stream. Outputs may complete out of order (a fallback frame is
/// emitted while its predecessor is still in a batch), so arrivals are matched by sequence.
fn relay(
    enc_out: Receiver<Output>,
    dec_tx: StreamSender,
    seq_rx: Receiver<(u64, Instant)>,
    meta_tx: mpsc::Sender<Meta>,
    level: u8,
) {
    let mut arrivals: VecDeque<(u64, u64, Instant)> = VecDeque::new(); // (enc seq, client seq, at)
    let mut next_enc = 0u64;
    for (dec_seq, o) in (0u64..).zip(enc_out) {
        while !arrivals.iter().any(|a| a.0 == o.seq) {
            let Ok((client_seq, at)) = seq_rx.recv() else {
                return;
            };
            arrivals.push_back((next_enc, client_seq, at));
            next_enc += 1;
        }
        let i = arrivals.iter().position(|a| a.0 == o.seq).expect("found");
        let (_, client_seq, arrived) = arrivals.remove(i).expect("in range");
        let (fallback, payload, push) = match o.payload {
            Payload::Aic(b) => (false, b.clone(), Some(b)),
            Payload::OpusFallback(b) => (true, b, None),
            // Not produced by an encode stream.
            Payload::Pcm(_) | Payload::Concealed(_) => (true, Vec::new(), None),
        };
        // A fallback frame reaches the AIC decoder as a lost frame, keeping the two streams
        // one-to-one; the writer replaces its concealment by the Opus-decoded frame.
        if dec_tx.push_aic(push).is_err() {
            return;
        }
        let m = Meta {
            dec_seq,
            client_seq,
            arrived,
            fallback,
            level: if fallback { 0 } else { level },
            payload,
        };
        if meta_tx.send(m).is_err() {
            return;
        }
    }
}

fn to_i16(x: &[f32], out: &mut Vec<i16>) {
    out.clear();
    out.extend(
        x.iter()
            .map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16),
    );
}

/// Decode outputs → ring, one [`FrameOut`] per input frame.
fn writer(
    dec_out: Receiver<Output>,
    meta_rx: Receiver<Meta>,
    credits: Receiver<()>,
    tx: &mut aic_sfu_bridge::link::ServerSender,
) {
    let mut waiting: VecDeque<Meta> = VecDeque::new();
    let mut opus: Option<aic_codec::opus::OpusDecoder> = None;
    let mut out = FrameOut::default();
    let mut scratch = Vec::with_capacity(FRAME_16K);
    for d in dec_out {
        while !waiting.iter().any(|m| m.dec_seq == d.seq) {
            let Ok(m) = meta_rx.recv() else {
                return;
            };
            waiting.push_back(m);
        }
        let i = waiting
            .iter()
            .position(|m| m.dec_seq == d.seq)
            .expect("found");
        let m = waiting.remove(i).expect("in range");
        out.seq = m.client_seq;
        out.level = m.level;
        out.fallback = m.fallback;
        out.payload.clear();
        out.payload.extend_from_slice(&m.payload);
        let pcm = match &d.payload {
            Payload::Pcm(p) | Payload::Concealed(p) => p.as_slice(),
            Payload::Aic(_) | Payload::OpusFallback(_) => &[],
        };
        to_i16(pcm, &mut out.pcm16k);
        if m.fallback && !m.payload.is_empty() {
            let dec = opus.get_or_insert_with(|| {
                aic_codec::opus::OpusDecoder::new(
                    aic_codec::opus::OpusVariant::Plain,
                    &crate::serve::opus_info(),
                )
                .expect("libopus decoder at 16 kHz")
            });
            scratch.clear();
            if dec.decode_frame(Some(&m.payload), &mut scratch).is_ok() {
                to_i16(&scratch, &mut out.pcm16k);
            }
        }
        out.pcm16k.resize(FRAME_16K, 0);
        out.pipeline_us = m.arrived.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let _ = credits.try_recv();
        match tx.send(&out, WRITE_WAIT) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "aic serve: bridge stream: client not reading, dropped frame {}",
                out.seq
            ),
            Err(_) => return, // gone: dropping our receivers ends the pipeline streams
        }
    }
}
