//! The real-time driver for video (issue #14, done-when 2): N published streams, each fed its
//! publisher's packets at the clip's frame rate, decoded and re-encoded for receivers, with one
//! face detector **batched across streams** whose boxes reach each stream's encoder as
//! [`FrameHints`] only when they come in time.
//!
//! The decisions are small pure state machines fed `now` (like the audio engine):
//! * [`HintGate`] — per stream: which frames the detector is due on (every `K`th), and whether
//!   a frame handed to the encoder has hints: the detection of the newest due frame is back
//!   ([`HintState::Fresh`]); or it is not back but its `ai_deadline` has not passed, and the
//!   previous period's detection is (fresh too: the tracker holds those boxes); or the deadline
//!   passed without it ([`HintState::Late`]: encoded **without hints**, never with stale boxes
//!   beyond their period; counted); or the stream's first detection is still under way
//!   ([`HintState::Pending`]).
//! * [`Overload`] — per stream: a frame whose stream already has `max_waiting` newer frames
//!   waiting, or that is older than `drop_age` with a newer one waiting, is decoded (VP8 needs
//!   every frame) but not encoded (counted as dropped; the newest frame is never dropped, so
//!   the picture keeps moving). A stream that drops more than `forward_share` of its frames
//!   over `forward_window` frames is *forwarded* from then on (the publisher's packets go to
//!   receivers as they came: the encoder cannot serve it; never a frozen picture). An encoder
//!   error forwards the stream too, as [`crate::engine::Transcoder`] does.
//!
//! Threads live only in [`run`]: a pacer (the calling thread) sends each stream's packets at
//! their real-time instants; workers (one per stream, or a pool of `workers` threads, each
//! serving its streams oldest frame first) decode, consult the gate, post due frames to the
//! detector and encode; one detector thread takes every posted frame (the newest per stream)
//! as one batch and sends each stream's boxes back to its worker. Nothing blocks on the
//! detector: a worker never waits for boxes.
//!
//! Why not [`crate::engine::Transcoder`] itself: its `push` decodes and encodes in one call,
//! so the decoded picture the detector needs is never visible to a caller. The per-stream path
//! here is the same decoder → encoder with the same rules (decode error = keyframe request;
//! encoder error = forward; size change = encoder re-opened).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use aic_pipeline::metrics::Hist;

use crate::decode::VideoDecoder;
use crate::encode::{
    EncodedPacket, EncoderConfig, EncoderKind, FrameHints, VideoCodec, VideoEncoder,
};
use crate::error::{Error, Result};
use crate::frame::Yuv420Frame;
use crate::roi::{
    Detector, FrameView, MapStyle, RoiBox, RoiError, RoiTracker, TrackerConfig, quality_map_with,
};

/// The block size of the quality maps (16: the macroblocks of H.264 and VP8).
const MAP_BLOCK: u32 = 16;

// ------------------------------------------------------------------------------------------
// Pure parts.

/// Whether a frame handed to the encoder gets the detector's hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintState {
    /// A detection covering this frame is back: encode with its boxes.
    Fresh,
    /// The stream's first detection is under way and within its deadline.
    Pending,
    /// The detection covering this frame missed its deadline: encode without hints.
    Late,
}

/// Per stream: detection cadence and the AI deadline (sans-IO; fed frame indices and `now`).
#[derive(Clone, Debug)]
pub struct HintGate {
    every: u64,
    deadline: Duration,
    /// The newest detection that came back, by frame index.
    accepted: Option<u64>,
    /// The newest due frame seen, and when its publisher packet arrived.
    due: Option<(u64, Instant)>,
}

impl HintGate {
    /// The detector looks at every `every`-th frame (from frame 0); a detection may take
    /// `deadline` from its frame's arrival before the frames it covers go without hints.
    pub fn new(every: u64, deadline: Duration) -> Self {
        HintGate {
            every: every.max(1),
            deadline,
            accepted: None,
            due: None,
        }
    }

    /// Whether the detector should see `frame`.
    pub fn due(&self, frame: u64) -> bool {
        frame.is_multiple_of(self.every)
    }

    /// Every frame, in order, as it is decoded (dropped ones too).
    pub fn on_frame(&mut self, frame: u64, arrival: Instant) {
        if self.due(frame) {
            self.due = Some((frame, arrival));
        }
    }

    /// The detection of `frame` came back.
    pub fn accept(&mut self, frame: u64) {
        if self.accepted.is_none_or(|a| frame > a) {
            self.accepted = Some(frame);
        }
    }

    /// For `frame`, handed to the encoder at `now`.
    pub fn decide(&self, frame: u64, now: Instant) -> HintState {
        let j = frame - frame % self.every;
        if self.accepted.is_some_and(|a| a >= j) {
            return HintState::Fresh;
        }
        let Some((d, arrival)) = self.due else {
            return HintState::Late;
        };
        if d != j || now.saturating_duration_since(arrival) > self.deadline {
            return HintState::Late;
        }
        if j == 0 {
            HintState::Pending
        } else if self.accepted.is_some_and(|a| a + self.every >= j) {
            HintState::Fresh
        } else {
            HintState::Late
        }
    }
}

/// What to do with a decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Encode,
    /// Not encoded: the stream's encoder is behind (a newer frame waits).
    Drop,
    /// The stream is forwarded as the publisher sent it.
    Forward,
}

/// Per stream: drop frames when the encoder falls behind, forward when it keeps falling behind
/// (sans-IO; fed `now`, arrivals and the queue depth).
#[derive(Clone, Debug)]
pub struct Overload {
    max_waiting: usize,
    drop_age: Duration,
    forward_share: f64,
    window: usize,
    recent: VecDeque<bool>,
    dropped_in_window: usize,
    forwarding: bool,
}

impl Overload {
    pub fn new(max_waiting: usize, drop_age: Duration, forward_share: f64, window: usize) -> Self {
        Overload {
            max_waiting: max_waiting.max(1),
            drop_age,
            forward_share: forward_share.clamp(0.0, 1.0),
            window: window.max(1),
            recent: VecDeque::new(),
            dropped_in_window: 0,
            forwarding: false,
        }
    }

    pub fn forwarding(&self) -> bool {
        self.forwarding
    }

    /// A frame that arrived at `arrival`, with `waiting` newer frames of its stream queued.
    pub fn admit(&mut self, now: Instant, arrival: Instant, waiting: usize) -> Admit {
        if self.forwarding {
            return Admit::Forward;
        }
        let late = now.saturating_duration_since(arrival) > self.drop_age;
        let drop = waiting > 0 && (waiting >= self.max_waiting || late);
        self.recent.push_back(drop);
        self.dropped_in_window += usize::from(drop);
        if self.recent.len() > self.window && self.recent.pop_front() == Some(true) {
            self.dropped_in_window -= 1;
        }
        if self.recent.len() == self.window
            && self.dropped_in_window as f64 > self.forward_share * self.window as f64
        {
            self.forwarding = true;
            return Admit::Forward;
        }
        if drop { Admit::Drop } else { Admit::Encode }
    }
}

// ------------------------------------------------------------------------------------------
// Configuration and reports.

/// How a live run is set up.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub streams: usize,
    /// What the publishers send.
    pub input: VideoCodec,
    /// The receivers' encoder.
    pub output: EncoderKind,
    /// libaom realtime speed ([`EncoderConfig::av1_speed`]).
    pub av1_speed: Option<u8>,
    /// Threads per encoder ([`EncoderConfig::threads`]; 1 for many streams, 2 lets libaom's
    /// row multithreading spread one large picture over two cores).
    pub encoder_threads: u32,
    /// Hand the detector's quality maps to the encoders. `false` runs the detector and the
    /// gate (the cost and the timing of the AI) but encodes without maps: for AV1 a map means
    /// the pre-filter, which costs encoder time and does not pay on real content
    /// (`docs/video.md`).
    pub apply_maps: bool,
    pub fps: u32,
    /// The receivers' encoder's target, bit/s.
    pub bitrate_bps: u32,
    /// How long the pacer sends (then the workers drain what is queued).
    pub duration: Duration,
    /// Worker threads; 0 = one per stream. Stream `s` goes to worker `s % workers`.
    pub workers: usize,
    /// The detector looks at every `detect_every`-th frame of each stream.
    pub detect_every: u64,
    /// See [`HintGate`].
    pub ai_deadline: Duration,
    /// The detector runs once every stream has posted its due frame, or this long after the
    /// first one did (the streams' phases spread their due frames over a frame period).
    pub batch_wait: Duration,
    /// The detector thread's nice value (0 = as the encoders). Above 0 the encoders preempt
    /// the detector's runs (≈ 100 ms for four 360p frames here) instead of waiting behind
    /// them; a detection that comes late leaves frames without hints, which [`HintGate`]
    /// counts. Linux only (`renice` on the thread); ignored where that fails.
    pub detector_nice: i32,
    /// See [`Overload`].
    pub max_waiting: usize,
    pub drop_age: Duration,
    pub forward_share: f64,
    pub forward_window: usize,
    pub map_style: MapStyle,
}

impl LiveConfig {
    /// Defaults: detection every 5th frame, batched over at most one frame period, AI deadline
    /// 3 frame periods, drop a frame with 2
    /// newer ones waiting (or older than 50 ms with one waiting), forward a stream that drops
    /// more than half its frames over 2 s.
    pub fn new(streams: usize, output: EncoderKind, fps: u32, bitrate_bps: u32) -> Self {
        let fps = fps.max(1);
        LiveConfig {
            streams,
            input: VideoCodec::Vp8,
            output,
            av1_speed: None,
            encoder_threads: 1,
            apply_maps: true,
            fps,
            bitrate_bps,
            duration: Duration::from_secs(10),
            workers: 0,
            detect_every: 5,
            ai_deadline: Duration::from_micros(3_000_000 / u64::from(fps)),
            batch_wait: Duration::from_micros(1_000_000 / u64::from(fps)),
            detector_nice: 10,
            max_waiting: 2,
            drop_age: Duration::from_millis(50),
            forward_share: 0.5,
            forward_window: 2 * fps as usize,
            map_style: MapStyle::default(),
        }
    }
}

/// One stream's counters and latencies (µs histograms).
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    pub stream: usize,
    pub worker: usize,
    pub packets_in: u64,
    pub frames_decoded: u64,
    pub frames_encoded: u64,
    /// Decoded but not encoded: the encoder was behind ([`Overload`]).
    pub frames_dropped: u64,
    /// Publisher packets forwarded as they came (overload or encoder failure).
    pub packets_forwarded: u64,
    pub decode_errors: u64,
    pub keyframe_requests: u64,
    pub bytes_out: u64,
    /// Encoded frames by [`HintState`] (all zero without a detector).
    pub hints_fresh: u64,
    pub hints_pending: u64,
    pub hints_late: u64,
    /// Encoded frames whose hints held at least one face (a quality map went to the encoder).
    pub frames_with_faces: u64,
    /// Frame handed to the encoder → its packet out.
    pub encode_us: Hist,
    /// Publisher packet arrival → the receivers' packet out.
    pub e2e_us: Hist,
    /// Why the stream is forwarded, if it is.
    pub fallback: Option<String>,
}

/// The detector thread's counters.
#[derive(Clone, Debug, Default)]
pub struct DetectorReport {
    pub runs: u64,
    /// Frames detected on (all batches).
    pub frames: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Posted frames replaced by a newer frame of the same stream before a batch took them.
    pub superseded: u64,
    /// Frames per run.
    pub batch: Hist,
    /// Time per run, µs.
    pub run_us: Hist,
}

#[derive(Clone, Debug)]
pub struct LiveReport {
    pub streams: Vec<StreamReport>,
    pub detector: Option<DetectorReport>,
    /// Packets the pacer sent (all streams).
    pub packets_sent: u64,
    /// The pacer's run (first packet instant → last packet sent).
    pub paced: Duration,
    /// First packet instant → every worker drained.
    pub wall: Duration,
    pub workers: usize,
}

/// Something that finds faces in a batch of frames: the real [`Detector`], or a test's fake.
pub trait Detect: Send {
    fn detect(&mut self, frames: &[FrameView<'_>]) -> Result<Vec<Vec<RoiBox>>, RoiError>;
}

impl Detect for Detector {
    fn detect(&mut self, frames: &[FrameView<'_>]) -> Result<Vec<Vec<RoiBox>>, RoiError> {
        Detector::detect(self, frames)
    }
}

// ------------------------------------------------------------------------------------------
// Test media.

/// What libwebrtc sends for one VP8 stream of this size at most (`GetMaxDefaultVideoBitrateKbps`
/// in its video engine, by pixel count): 600 kbit/s up to 320×240, 1700 up to 640×480, 2000 up
/// to 960×540, 2500 above.
pub fn browser_vp8_bps(width: u32, height: u32) -> u32 {
    let px = u64::from(width) * u64::from(height);
    if px <= 320 * 240 {
        600_000
    } else if px <= 640 * 480 {
        1_700_000
    } else if px <= 960 * 540 {
        2_000_000
    } else {
        2_500_000
    }
}

/// What a browser would publish for these frames: VP8 realtime at [`browser_vp8_bps`], one
/// packet per frame (the first a keyframe, so the clip loops).
pub fn publish_vp8(frames: &[Yuv420Frame], fps: u32) -> Result<Vec<Vec<u8>>> {
    let first = frames
        .first()
        .ok_or_else(|| Error::InvalidFrame("no frames to publish".into()))?;
    let cfg = EncoderConfig::new(
        EncoderKind::Vp8,
        first.width,
        first.height,
        fps,
        browser_vp8_bps(first.width, first.height),
    );
    let mut enc = VideoEncoder::new(cfg)?;
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        enc.encode(f, &FrameHints::default(), &mut out)?;
    }
    enc.flush(&mut out)?;
    if out.len() != frames.len() || !out[0].keyframe {
        return Err(Error::InvalidFrame(format!(
            "VP8 gave {} packets for {} frames",
            out.len(),
            frames.len()
        )));
    }
    Ok(out.into_iter().map(|p| p.data).collect())
}

// ------------------------------------------------------------------------------------------
// The driver.

enum Msg {
    Packet {
        stream: usize,
        frame: u64,
        arrival: Instant,
    },
    Boxes {
        stream: usize,
        frame: u64,
        boxes: Vec<RoiBox>,
    },
    Stop,
}

struct Request {
    stream: usize,
    worker: usize,
    frame: u64,
    picture: Arc<Yuv420Frame>,
}

#[derive(Default)]
struct MailboxState {
    requests: Vec<Request>,
    /// When the oldest request in `requests` was posted.
    first: Option<Instant>,
    stop: bool,
    superseded: u64,
}

/// Frames waiting for the detector: the newest per stream.
#[derive(Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
    cv: Condvar,
}

impl Mailbox {
    fn post(&self, r: Request) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = s.requests.iter_mut().find(|o| o.stream == r.stream) {
            *old = r;
            s.superseded += 1;
        } else {
            s.requests.push(r);
        }
        s.first.get_or_insert_with(Instant::now);
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.cv.notify_all();
    }

    /// Blocks for the next batch: once `expected` streams have posted, or `window` after the
    /// first post (the streams' due frames arrive spread over a frame period), or at stop;
    /// `None` once stopped and empty.
    fn take(&self, expected: usize, window: Duration) -> Option<Vec<Request>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !s.requests.is_empty() {
                let until = s.first.map(|f| f + window);
                let now = Instant::now();
                if s.stop || s.requests.len() >= expected || until.is_none_or(|u| now >= u) {
                    s.first = None;
                    return Some(std::mem::take(&mut s.requests));
                }
                let wait = until.map_or(window, |u| u - now);
                s = self
                    .cv
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            if s.stop {
                return None;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn detector_loop(
    mut det: Box<dyn Detect>,
    mailbox: Arc<Mailbox>,
    workers: Vec<mpsc::Sender<Msg>>,
    (expected, window): (usize, Duration),
    nice: i32,
) -> DetectorReport {
    if nice != 0 {
        lower_this_thread(nice);
    }
    let mut rep = DetectorReport::default();
    while let Some(batch) = mailbox.take(expected, window) {
        let views: Vec<FrameView<'_>> = batch
            .iter()
            .map(|r| {
                let p = &r.picture;
                FrameView::yuv420(p.width, p.height, &p.y, &p.u, &p.v)
            })
            .collect();
        let t = Instant::now();
        let res = det.detect(&views);
        rep.run_us.record(t.elapsed());
        rep.runs += 1;
        rep.batch.record_count(batch.len() as u64);
        match res {
            Ok(boxes) => {
                rep.frames += batch.len() as u64;
                for (r, b) in batch.iter().zip(boxes) {
                    let _ = workers[r.worker].send(Msg::Boxes {
                        stream: r.stream,
                        frame: r.frame,
                        boxes: b,
                    });
                }
            }
            Err(e) => {
                // The frames it covered go without hints (late); the streams go on.
                rep.errors += 1;
                rep.last_error = Some(e.to_string());
            }
        }
    }
    rep.superseded = mailbox
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .superseded;
    rep
}

/// Sets the calling thread's nice value (Linux: `renice` on its thread id from
/// `/proc/thread-self`); best effort, without a C binding in this crate.
fn lower_this_thread(nice: i32) {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else {
        return;
    };
    let _ = std::process::Command::new("renice")
        .args(["-n", &nice.clamp(-20, 19).to_string(), "-p", &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// One stream inside a worker.
struct StreamRun {
    /// `None` when it could not be opened (the stream is forwarded).
    decoder: Option<VideoDecoder>,
    encoder: Option<VideoEncoder>,
    queue: VecDeque<(u64, Instant)>,
    gate: HintGate,
    overload: Overload,
    failed: Option<String>,
    rep: StreamReport,
    frames: Vec<Yuv420Frame>,
    out: Vec<EncodedPacket>,
}

/// What a worker thread starts from (everything `Send`).
struct WorkerSeed {
    id: usize,
    cfg: LiveConfig,
    packets: Arc<Vec<Vec<u8>>>,
    streams: Vec<usize>,
    tracker: RoiTracker<usize>,
    mailbox: Option<Arc<Mailbox>>,
}

impl WorkerSeed {
    fn start(self) -> Worker {
        let mut w = Worker {
            id: self.id,
            cfg: self.cfg,
            packets: self.packets,
            streams: Vec::new(),
            tracker: self.tracker,
            mailbox: self.mailbox,
        };
        w.streams = self.streams.iter().map(|&id| (id, w.open(id))).collect();
        w
    }
}

struct Worker {
    id: usize,
    cfg: LiveConfig,
    packets: Arc<Vec<Vec<u8>>>,
    /// Built on the worker's thread (FFmpeg's contexts are not `Send`).
    streams: Vec<(usize, StreamRun)>,
    tracker: RoiTracker<usize>,
    mailbox: Option<Arc<Mailbox>>,
}

impl Worker {
    fn stream(&mut self, id: usize) -> Option<&mut StreamRun> {
        self.streams
            .iter_mut()
            .find(|(s, _)| *s == id)
            .map(|(_, r)| r)
    }

    fn open(&self, id: usize) -> StreamRun {
        let cfg = &self.cfg;
        let (decoder, failed) = match VideoDecoder::new(cfg.input) {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e.to_string())),
        };
        StreamRun {
            decoder,
            encoder: None,
            queue: VecDeque::new(),
            gate: HintGate::new(cfg.detect_every, cfg.ai_deadline),
            overload: Overload::new(
                cfg.max_waiting,
                cfg.drop_age,
                cfg.forward_share,
                cfg.forward_window,
            ),
            failed,
            rep: StreamReport {
                stream: id,
                worker: self.id,
                ..StreamReport::default()
            },
            frames: Vec::new(),
            out: Vec::new(),
        }
    }

    fn handle(&mut self, m: Msg, stopping: &mut bool) {
        match m {
            Msg::Packet {
                stream,
                frame,
                arrival,
            } => {
                if let Some(s) = self.stream(stream) {
                    s.queue.push_back((frame, arrival));
                }
            }
            Msg::Boxes {
                stream,
                frame,
                boxes,
            } => {
                if let Some(s) = self.stream(stream) {
                    s.gate.accept(frame);
                    self.tracker.update(stream, frame, &boxes);
                }
            }
            Msg::Stop => *stopping = true,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) -> Vec<StreamReport> {
        let mut stopping = false;
        loop {
            let queued = self.streams.iter().any(|(_, s)| !s.queue.is_empty());
            if !queued {
                if stopping {
                    break;
                }
                match rx.recv() {
                    Ok(m) => self.handle(m, &mut stopping),
                    Err(_) => stopping = true,
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.handle(m, &mut stopping);
            }
            // Oldest frame first across this worker's streams.
            let next = self
                .streams
                .iter()
                .enumerate()
                .filter_map(|(i, (_, s))| s.queue.front().map(|&(_, a)| (i, a)))
                .min_by_key(|&(_, a)| a)
                .map(|(i, _)| i);
            if let Some(i) = next {
                self.step(i);
            }
        }
        self.streams.into_iter().map(|(_, s)| s.rep).collect()
    }

    /// Takes the oldest queued packet of the worker's `i`-th stream through decode → encode.
    fn step(&mut self, i: usize) {
        let (id, s) = &mut self.streams[i];
        let id = *id;
        let Some((frame, arrival)) = s.queue.pop_front() else {
            return;
        };
        let waiting = s.queue.len();
        s.rep.packets_in += 1;
        let Some(decoder) = s.decoder.as_mut().filter(|_| s.failed.is_none()) else {
            s.rep.packets_forwarded += 1;
            s.rep.fallback.clone_from(&s.failed);
            return;
        };
        let packet = &self.packets[(frame % self.packets.len() as u64) as usize];
        s.frames.clear();
        if decoder.decode(packet, &mut s.frames).is_err() {
            s.rep.decode_errors += 1;
            s.rep.keyframe_requests += 1;
        }
        let frames = std::mem::take(&mut s.frames);
        for f in frames {
            s.rep.frames_decoded += 1;
            s.gate.on_frame(frame, arrival);
            let f = Arc::new(f);
            if let Some(mb) = &self.mailbox
                && s.gate.due(frame)
            {
                mb.post(Request {
                    stream: id,
                    worker: self.id,
                    frame,
                    picture: f.clone(),
                });
            }
            match s.overload.admit(Instant::now(), arrival, waiting) {
                Admit::Forward => {
                    s.rep.packets_forwarded += 1;
                    s.failed.get_or_insert_with(|| {
                        "the encoder fell behind (dropped frames beyond the bound)".into()
                    });
                    break;
                }
                Admit::Drop => {
                    s.rep.frames_dropped += 1;
                    continue;
                }
                Admit::Encode => {}
            }
            let handed = Instant::now();
            let mut map = None;
            if self.mailbox.is_some() {
                match s.gate.decide(frame, handed) {
                    HintState::Fresh => {
                        s.rep.hints_fresh += 1;
                        let boxes = self.tracker.boxes(id, frame);
                        if !boxes.is_empty() {
                            s.rep.frames_with_faces += 1;
                        }
                        if !boxes.is_empty() && self.cfg.apply_maps {
                            map = Some(quality_map_with(
                                &boxes,
                                f.width,
                                f.height,
                                MAP_BLOCK,
                                &self.cfg.map_style,
                            ));
                        }
                    }
                    HintState::Pending => s.rep.hints_pending += 1,
                    HintState::Late => s.rep.hints_late += 1,
                }
            }
            let hints = FrameHints {
                quality: map.as_ref(),
                ..FrameHints::default()
            };
            match encode(&self.cfg, &mut s.encoder, &f, &hints, &mut s.out) {
                Ok(()) => {
                    let done = Instant::now();
                    s.rep.frames_encoded += 1;
                    s.rep.encode_us.record(done - handed);
                    s.rep.e2e_us.record(done.saturating_duration_since(arrival));
                    s.rep.bytes_out += s.out.iter().map(|p| p.data.len() as u64).sum::<u64>();
                    s.out.clear();
                }
                Err(e) => {
                    s.failed = Some(e.to_string());
                    s.encoder = None;
                    s.rep.packets_forwarded += 1;
                    break;
                }
            }
        }
        s.rep.fallback.clone_from(&s.failed);
    }
}

/// Opens (or re-opens, for a new picture size) the stream's encoder and encodes one frame.
fn encode(
    cfg: &LiveConfig,
    encoder: &mut Option<VideoEncoder>,
    f: &Yuv420Frame,
    hints: &FrameHints<'_>,
    out: &mut Vec<EncodedPacket>,
) -> Result<()> {
    let fits = |e: &VideoEncoder| e.config().width == f.width && e.config().height == f.height;
    if !encoder.as_ref().is_some_and(fits) {
        let mut ec = EncoderConfig::new(cfg.output, f.width, f.height, cfg.fps, cfg.bitrate_bps);
        ec.av1_speed = cfg.av1_speed;
        ec.threads = cfg.encoder_threads;
        *encoder = Some(VideoEncoder::new(ec)?);
    }
    encoder
        .as_mut()
        .expect("opened above")
        .encode(f, hints, out)
}

/// Runs `cfg.streams` streams in real time for `cfg.duration`, every stream looping the
/// publisher's `packets` (one coded frame each, the first a keyframe), at evenly spread phases
/// within a frame period. `detector`: the face detector (batched across streams), or none.
/// Returns when every queued packet has been handled (the workers drain).
pub fn run(
    cfg: &LiveConfig,
    packets: Arc<Vec<Vec<u8>>>,
    detector: Option<Box<dyn Detect>>,
) -> Result<LiveReport> {
    if cfg.streams == 0 || packets.is_empty() {
        return Err(Error::InvalidConfig(
            "a live run needs at least one stream and one packet".into(),
        ));
    }
    // Check the encoder settings once, before any thread starts.
    let mut probe = EncoderConfig::new(cfg.output, 16, 16, cfg.fps, cfg.bitrate_bps);
    probe.av1_speed = cfg.av1_speed;
    probe.threads = cfg.encoder_threads;
    VideoEncoder::new(probe)?;
    let nw = if cfg.workers == 0 {
        cfg.streams
    } else {
        cfg.workers.min(cfg.streams)
    };
    let mailbox = detector.as_ref().map(|_| Arc::new(Mailbox::default()));
    let tcfg = TrackerConfig {
        every: cfg.detect_every.max(1),
        hold: 3 * cfg.detect_every.max(1),
        ..TrackerConfig::default()
    };
    VideoDecoder::new(cfg.input)?;
    let workers: Vec<WorkerSeed> = (0..nw)
        .map(|w| WorkerSeed {
            id: w,
            cfg: cfg.clone(),
            packets: packets.clone(),
            streams: (w..cfg.streams).step_by(nw).collect(),
            tracker: RoiTracker::new(tcfg),
            mailbox: mailbox.clone(),
        })
        .collect();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..nw).map(|_| mpsc::channel::<Msg>()).unzip();
    let batching = (cfg.streams, cfg.batch_wait);
    let nice = cfg.detector_nice;
    let det_thread = match (detector, &mailbox) {
        (Some(d), Some(mb)) => {
            let (mb, txs) = (mb.clone(), txs.clone());
            Some(
                std::thread::Builder::new()
                    .name("aic-video-detect".into())
                    .spawn(move || detector_loop(d, mb, txs, batching, nice))?,
            )
        }
        _ => None,
    };
    let mut handles = Vec::with_capacity(nw);
    for (w, rx) in workers.into_iter().zip(rxs) {
        handles.push(
            std::thread::Builder::new()
                .name(format!("aic-video-{}", w.id))
                .spawn(move || w.start().run(rx))?,
        );
    }

    // The pacer: stream s sends frame k at t0 + k/fps + s/(streams·fps).
    let period = Duration::from_secs(1) / cfg.fps;
    let frames = (cfg.duration.as_secs_f64() * f64::from(cfg.fps))
        .ceil()
        .max(1.0) as u64;
    let n = cfg.streams as u32;
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut sent = 0u64;
    'pace: for k in 0..frames {
        for s in 0..cfg.streams {
            let at = t0 + period * k as u32 + period * s as u32 / n;
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let msg = Msg::Packet {
                stream: s,
                frame: k,
                arrival: at,
            };
            if txs[s % nw].send(msg).is_err() {
                break 'pace;
            }
            sent += 1;
        }
    }
    let paced = t0.elapsed();
    for tx in &txs {
        let _ = tx.send(Msg::Stop);
    }
    let mut streams = Vec::with_capacity(cfg.streams);
    for h in handles {
        streams.extend(
            h.join()
                .map_err(|_| Error::InvalidConfig("a worker panicked".into()))?,
        );
    }
    let wall = t0.elapsed();
    if let Some(mb) = &mailbox {
        mb.stop();
    }
    drop(txs);
    let detector = match det_thread {
        Some(h) => Some(
            h.join()
                .map_err(|_| Error::InvalidConfig("the detector thread panicked".into()))?,
        ),
        None => None,
    };
    streams.sort_by_key(|s| s.stream);
    Ok(LiveReport {
        streams,
        detector,
        packets_sent: sent,
        paced,
        wall,
        workers: nw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, v: u64) -> Instant {
        t0 + Duration::from_millis(v)
    }

    #[test]
    fn hints_are_fresh_pending_or_late_by_the_deadline() {
        let t0 = Instant::now();
        let mut g = HintGate::new(5, Duration::from_millis(40));
        assert!(g.due(0) && !g.due(3) && g.due(10));
        g.on_frame(0, t0);
        assert_eq!(g.decide(0, ms(t0, 5)), HintState::Pending);
        assert_eq!(g.decide(1, ms(t0, 41)), HintState::Late);
        g.accept(0);
        assert_eq!(g.decide(2, ms(t0, 70)), HintState::Fresh);
        // Frame 5's detection is out: within its deadline the previous one still serves.
        g.on_frame(5, ms(t0, 166));
        assert_eq!(g.decide(5, ms(t0, 170)), HintState::Fresh);
        assert_eq!(g.decide(6, ms(t0, 207)), HintState::Late);
        g.accept(5);
        assert_eq!(g.decide(7, ms(t0, 240)), HintState::Fresh);
        // Two missed periods: late even inside the newest one's deadline.
        g.on_frame(15, ms(t0, 500));
        assert_eq!(g.decide(15, ms(t0, 501)), HintState::Late);
    }

    #[test]
    fn a_stream_behind_drops_old_frames_then_is_forwarded() {
        let t0 = Instant::now();
        let mut o = Overload::new(2, Duration::from_millis(50), 0.5, 4);
        assert_eq!(o.admit(ms(t0, 10), t0, 0), Admit::Encode);
        // Old, but nothing newer waits: encode (the picture keeps moving).
        assert_eq!(o.admit(ms(t0, 200), t0, 0), Admit::Encode);
        assert_eq!(o.admit(ms(t0, 60), t0, 1), Admit::Drop);
        assert_eq!(o.admit(ms(t0, 1), t0, 2), Admit::Drop);
        // 3 of the last 4 dropped > half: forwarded from now on.
        assert_eq!(o.admit(ms(t0, 1), t0, 3), Admit::Forward);
        assert!(o.forwarding());
        assert_eq!(o.admit(ms(t0, 1), t0, 0), Admit::Forward);
    }

    #[test]
    fn browser_rates_follow_libwebrtc() {
        assert_eq!(browser_vp8_bps(320, 240), 600_000);
        assert_eq!(browser_vp8_bps(640, 360), 1_700_000);
        assert_eq!(browser_vp8_bps(960, 540), 2_000_000);
        assert_eq!(browser_vp8_bps(1280, 720), 2_500_000);
    }
}
