//! The batched streaming pipeline, as a sans-IO state machine.
//!
//! Frames of many independent streams arrive every 20 ms. The engine keeps one **slot** per
//! stream in a fixed table sized from the backend's maximum batch; each slot owns the stream's
//! model state rows. The **batcher** collects at most one frame per stream (a stream's frames
//! must go through the model in order, because each call advances its state) and closes a batch
//! when it is full or when waiting longer would make the oldest frame miss its deadline
//! (DeepStream's `batched-push-timeout`, Triton's `max_queue_delay`). A frame that can no longer
//! meet its deadline — overload, a backend error, no model — **falls back**: an encode stream
//! sends that frame as Opus, a decode stream conceals it from its last output; both are marked
//! and counted. Never silence, never a stall.
//!
//! The engine never reads the clock and never calls the model: callers pass `now`, take a
//! [`Batch`] from [`Engine::poll`], run it on a [`Backend`](crate::backend::Backend) (on any
//! thread), and hand it back with [`Engine::complete`]. Streams may close and slots be reused
//! while a batch is out; results addressed to a slot's previous occupant are dropped (moshi's
//! batched server does the same). Batch tensors are gathered into and scattered from buffers
//! that are allocated once and reused, so the steady state allocates nothing per frame on the
//! model path.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aic_codec::codec::Encoder;
use aic_codec::opus::{OpusEncoder, OpusVariant};

use crate::metrics::PipelineMetrics;
use crate::model::{AicModel, Graph};

/// Unique for the life of an engine; never reused (slots are).
pub type StreamId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// PCM in, AIC frames out.
    Encode,
    /// AIC frames in, PCM out.
    Decode,
}

impl Direction {
    fn graph(self) -> Graph {
        match self {
            Direction::Encode => Graph::Encoder,
            Direction::Decode => Graph::Decoder,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub direction: Direction,
    /// Codebooks sent (encode direction); decode streams take whatever level arrives.
    pub level: u8,
    /// Latency budget from a frame's arrival to its output.
    pub budget: Duration,
    /// Bitrate of the Opus frames sent when the model cannot meet a deadline.
    pub fallback_bitrate_bps: u32,
}

impl StreamConfig {
    pub fn encode(level: u8) -> Self {
        Self {
            direction: Direction::Encode,
            level,
            budget: Duration::from_millis(40),
            fallback_bitrate_bps: 16_000,
        }
    }
    pub fn decode() -> Self {
        Self {
            direction: Direction::Decode,
            level: 0,
            budget: Duration::from_millis(40),
            fallback_bitrate_bps: 16_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Slots in the table = the largest batch the backend is given.
    pub max_batch: usize,
    /// Longest a frame waits for companions before its batch closes anyway.
    pub max_queue_delay: Duration,
    /// Frames a stream may have queued; beyond that the oldest is dropped (and counted).
    pub max_pending_per_stream: usize,
    /// Model step time assumed before any has been measured.
    pub initial_step_estimate: Duration,
    /// Slack kept between the predicted end of a batch and the earliest deadline in it.
    pub safety_margin: Duration,
    /// While everything falls back because the model looks too slow, one batch is still run
    /// this often to re-measure it; otherwise a slow spell would never be seen to end.
    pub probe_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_queue_delay: Duration::from_millis(10),
            max_pending_per_stream: 4,
            initial_step_estimate: Duration::from_millis(5),
            safety_margin: Duration::from_millis(1),
            probe_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("all {0} slots are in use")]
    Full(usize),
    #[error("unknown or closed stream {0}")]
    UnknownStream(StreamId),
    #[error("frame has {got} samples, the model takes {expected}")]
    FrameSize { expected: usize, got: usize },
    #[error("stream {0} is a {1:?} stream")]
    WrongDirection(StreamId, Direction),
    #[error("level {level} not in 1..={max}")]
    Level { level: u8, max: usize },
    #[error("AIC frame of {0} bytes is too long")]
    FrameTooLong(usize),
    #[error("fallback codec: {0}")]
    Fallback(String),
}

/// What the engine produced for one input frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// An AIC frame (encode direction).
    Aic(Vec<u8>),
    /// The model could not meet this frame's deadline: the frame as Opus (encode direction).
    OpusFallback(Vec<u8>),
    /// Decoded PCM (decode direction).
    Pcm(Vec<f32>),
    /// PCM concealed without the model (decode direction: deadline missed, frame corrupt, or
    /// backend failure); a fade of the stream's last output.
    Concealed(Vec<f32>),
}

impl Payload {
    pub fn is_fallback(&self) -> bool {
        matches!(self, Payload::OpusFallback(_) | Payload::Concealed(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub stream: StreamId,
    /// Position of the input frame in its stream (0, 1, 2, ...).
    pub seq: u64,
    pub payload: Payload,
    /// From the frame's arrival to this output.
    pub latency: Duration,
}

/// What the caller should do next.
#[derive(Debug)]
pub enum Poll {
    /// Run this batch on the backend, then pass it to [`Engine::complete`].
    Run(Batch),
    /// Nothing to run before this instant (unless a frame arrives).
    WaitUntil(Instant),
    /// Nothing queued.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    slot: usize,
    stream: StreamId,
    seq: u64,
    arrived: Instant,
}

/// A closed batch: `size` rows of `input`, `state` and `output` (row `i` belongs to the same
/// stream in all three). The buffers are the engine's, lent out and reused.
#[derive(Debug)]
pub struct Batch {
    pub graph: Graph,
    pub size: usize,
    pub input: Vec<f32>,
    pub state: Vec<f32>,
    pub output: Vec<f32>,
    members: Vec<Member>,
    started: Instant,
    /// Run to re-measure a model that looked too slow: its time replaces the estimates.
    probe: bool,
    /// Rows the buffers were allocated for (the engine's `max_batch`).
    rows: usize,
}

impl Batch {
    /// The `size` live rows for the backend: input, state (updated in place), output.
    pub fn buffers(&mut self) -> (&[f32], &mut [f32], &mut [f32], usize) {
        let n = self.size;
        let (iw, sw, ow) = (
            self.input.len() / self.cap(),
            self.state.len() / self.cap(),
            self.output.len() / self.cap(),
        );
        (
            &self.input[..n * iw],
            &mut self.state[..n * sw],
            &mut self.output[..n * ow],
            n,
        )
    }

    fn cap(&self) -> usize {
        self.rows
    }
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    arrived: Instant,
    deadline: Instant,
    /// PCM (encode) or the AIC frame's bytes (decode); recycled through the slot's free list.
    pcm: Vec<f32>,
    bytes: Vec<u8>,
}

struct Slot {
    stream: Option<StreamId>,
    cfg: StreamConfig,
    queue: VecDeque<Pending>,
    free: Vec<Pending>,
    in_flight: bool,
    next_seq: u64,
    counter: u8,
    /// Decode direction: the last output, for concealment.
    last_pcm: Vec<f32>,
    opus: Option<OpusEncoder>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("stream", &self.stream)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

/// Step-time estimate per batch-size bucket (powers of two), as an EWMA of measurements.
#[derive(Debug, Clone)]
struct StepModel {
    buckets: Vec<Option<f64>>,
    initial: f64,
}

impl StepModel {
    fn new(max_batch: usize, initial: Duration) -> Self {
        Self {
            buckets: vec![None; bucket(max_batch) + 1],
            initial: initial.as_secs_f64(),
        }
    }
    fn estimate(&self, batch: usize) -> Duration {
        let b = bucket(batch).min(self.buckets.len() - 1);
        // Measured bucket, else the nearest larger measured one (pessimistic), else the guess.
        let s = self.buckets[b..]
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(self.initial);
        Duration::from_secs_f64(s)
    }
    /// Forgets everything but this measurement (after a probe).
    fn reset_with(&mut self, batch: usize, took: Duration) {
        self.buckets.iter_mut().for_each(|b| *b = None);
        self.observe(batch, took);
    }
    fn observe(&mut self, batch: usize, took: Duration) {
        let b = bucket(batch).min(self.buckets.len() - 1);
        let t = took.as_secs_f64();
        self.buckets[b] = Some(self.buckets[b].map_or(t, |old| 0.8 * old + 0.2 * t));
    }
}

fn bucket(n: usize) -> usize {
    n.max(1).next_power_of_two().trailing_zeros() as usize
}

/// The batched pipeline core. See the module docs.
pub struct Engine {
    cfg: EngineConfig,
    frame: usize,
    latent: usize,
    state_width: [usize; 2],
    /// `[slots × state_width]` per graph.
    states: [Vec<f32>; 2],
    slots: Vec<Slot>,
    next_stream: StreamId,
    spare: [Option<Batch>; 2],
    steps: [StepModel; 2],
    last_run: [Option<Instant>; 2],
    outputs: VecDeque<Output>,
    model: std::sync::Arc<AicModel>,
    indices: Vec<u16>,
    batch_indices: Vec<u16>,
    rvq_scratch: aic_kernels::rvq::BatchScratch,
    pub metrics: PipelineMetrics,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .field("open", &self.open_streams())
            .finish_non_exhaustive()
    }
}

fn gi(g: Graph) -> usize {
    match g {
        Graph::Encoder => 0,
        Graph::Decoder => 1,
    }
}

impl Engine {
    pub fn new(model: std::sync::Arc<AicModel>, cfg: EngineConfig) -> Self {
        let m = &model.manifest;
        let (frame, latent) = (m.frame_samples, m.latent_dim);
        let state_width = [
            model.state_size(Graph::Encoder),
            model.state_size(Graph::Decoder),
        ];
        let n = cfg.max_batch.max(1);
        let batch = |g: Graph, inw: usize, sw: usize, outw: usize| Batch {
            graph: g,
            size: 0,
            input: vec![0.0; n * inw],
            state: vec![0.0; n * sw],
            output: vec![0.0; n * outw],
            members: Vec::with_capacity(n),
            started: Instant::now(),
            probe: false,
            rows: n,
        };
        let slots = (0..n)
            .map(|_| Slot {
                stream: None,
                cfg: StreamConfig::decode(),
                queue: VecDeque::with_capacity(cfg.max_pending_per_stream + 1),
                free: Vec::new(),
                in_flight: false,
                next_seq: 0,
                counter: 0,
                last_pcm: vec![0.0; frame],
                opus: None,
            })
            .collect();
        Self {
            states: [vec![0.0; n * state_width[0]], vec![0.0; n * state_width[1]]],
            spare: [
                Some(batch(Graph::Encoder, frame, state_width[0], latent)),
                Some(batch(Graph::Decoder, latent, state_width[1], frame)),
            ],
            steps: [
                StepModel::new(n, cfg.initial_step_estimate),
                StepModel::new(n, cfg.initial_step_estimate),
            ],
            last_run: [None, None],
            slots,
            next_stream: 1,
            outputs: VecDeque::new(),
            indices: Vec::with_capacity(16),
            batch_indices: Vec::new(),
            rvq_scratch: Default::default(),
            metrics: PipelineMetrics::default(),
            frame,
            latent,
            state_width,
            cfg: EngineConfig {
                max_batch: n,
                ..cfg
            },
            model,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    pub fn open_streams(&self) -> usize {
        self.slots.iter().filter(|s| s.stream.is_some()).count()
    }

    /// Admits a stream into a free slot (its state rows are zeroed), or refuses when full.
    pub fn open(&mut self, cfg: StreamConfig) -> Result<StreamId, EngineError> {
        let k = self.model.manifest.num_codebooks;
        if cfg.direction == Direction::Encode && (cfg.level == 0 || usize::from(cfg.level) > k) {
            return Err(EngineError::Level {
                level: cfg.level,
                max: k,
            });
        }
        // Prefer a slot with nothing in flight; a slot whose old stream still has a batch out is
        // usable too: that batch's result is dropped when it comes back (stream ids differ).
        let free = |busy: bool| {
            self.slots
                .iter()
                .position(|s| s.stream.is_none() && s.in_flight == busy)
        };
        let Some(idx) = free(false).or_else(|| free(true)) else {
            self.metrics.rejected_streams += 1;
            return Err(EngineError::Full(self.cfg.max_batch));
        };
        let opus = match cfg.direction {
            Direction::Encode => Some(
                OpusEncoder::new(
                    OpusVariant::Plain,
                    self.model.manifest.sample_rate,
                    cfg.fallback_bitrate_bps,
                )
                .map_err(|e| EngineError::Fallback(e.to_string()))?,
            ),
            Direction::Decode => None,
        };
        let id = self.next_stream;
        self.next_stream += 1;
        for g in 0..2 {
            let w = self.state_width[g];
            self.states[g][idx * w..(idx + 1) * w].fill(0.0);
        }
        let s = &mut self.slots[idx];
        s.stream = Some(id);
        s.cfg = cfg;
        s.next_seq = 0;
        s.counter = 0;
        s.last_pcm.fill(0.0);
        s.opus = opus;
        while let Some(p) = s.queue.pop_front() {
            s.free.push(p);
        }
        self.metrics.streams_opened += 1;
        Ok(id)
    }

    /// Ends a stream: queued frames are discarded, an in-flight result will be dropped.
    pub fn close(&mut self, id: StreamId) -> Result<(), EngineError> {
        let idx = self.slot_of(id)?;
        let s = &mut self.slots[idx];
        s.stream = None;
        s.opus = None;
        while let Some(p) = s.queue.pop_front() {
            s.free.push(p);
        }
        Ok(())
    }

    /// Frames of `id` queued or in a batch that is out (`None`: no such stream).
    pub fn pending_frames(&self, id: StreamId) -> Option<usize> {
        let s = &self.slots[self.slot_of(id).ok()?];
        Some(s.queue.len() + usize::from(s.in_flight))
    }

    fn slot_of(&self, id: StreamId) -> Result<usize, EngineError> {
        self.slots
            .iter()
            .position(|s| s.stream == Some(id))
            .ok_or(EngineError::UnknownStream(id))
    }

    fn enqueue(&mut self, now: Instant, idx: usize, fill: impl FnOnce(&mut Pending)) {
        let max = self.cfg.max_pending_per_stream.max(1);
        let s = &mut self.slots[idx];
        if s.queue.len() >= max {
            // Bounded memory under overload: the oldest frame is the least useful one.
            if let Some(old) = s.queue.pop_front() {
                s.free.push(old);
                self.metrics.dropped += 1;
            }
        }
        let mut p = s.free.pop().unwrap_or_else(|| Pending {
            seq: 0,
            arrived: now,
            deadline: now,
            pcm: Vec::with_capacity(self.frame),
            bytes: Vec::with_capacity(aic_codec::bitstream::frame::MAX_FRAME_BYTES),
        });
        p.seq = s.next_seq;
        s.next_seq += 1;
        p.arrived = now;
        p.deadline = now + s.cfg.budget;
        fill(&mut p);
        s.queue.push_back(p);
        self.metrics.frames_in += 1;
    }

    /// Queues one PCM frame of an encode stream.
    pub fn push_pcm(&mut self, now: Instant, id: StreamId, pcm: &[f32]) -> Result<(), EngineError> {
        let idx = self.slot_of(id)?;
        if self.slots[idx].cfg.direction != Direction::Encode {
            return Err(EngineError::WrongDirection(id, Direction::Decode));
        }
        if pcm.len() != self.frame {
            return Err(EngineError::FrameSize {
                expected: self.frame,
                got: pcm.len(),
            });
        }
        self.enqueue(now, idx, |p| {
            p.pcm.clear();
            p.pcm.extend_from_slice(pcm);
        });
        Ok(())
    }

    /// Queues one AIC frame of a decode stream (`None`: the frame was lost in transit).
    pub fn push_aic(
        &mut self,
        now: Instant,
        id: StreamId,
        frame: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        let idx = self.slot_of(id)?;
        if self.slots[idx].cfg.direction != Direction::Decode {
            return Err(EngineError::WrongDirection(id, Direction::Encode));
        }
        let bytes = frame.unwrap_or(&[]);
        if bytes.len() > aic_codec::bitstream::frame::MAX_FRAME_BYTES {
            return Err(EngineError::FrameTooLong(bytes.len()));
        }
        self.enqueue(now, idx, |p| {
            p.bytes.clear();
            p.bytes.extend_from_slice(bytes);
        });
        Ok(())
    }

    /// The next output, in completion order.
    pub fn pop_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Decides what to do at `now`: fall back frames that can no longer make it, close a batch
    /// if one is due, or say how long to wait.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let mut wake: Option<Instant> = None;
        for g in [Graph::Encoder, Graph::Decoder] {
            if self.spare[gi(g)].is_none() {
                continue; // a batch of this graph is out; its streams wait for it
            }
            // Frames that would miss their deadline even in a batch of one fall back now --
            // unless the model has not run for a probe interval: then one batch re-measures it.
            let probe = self.last_run[gi(g)]
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.probe_interval);
            let solo = self.steps[gi(g)].estimate(1) + self.cfg.safety_margin;
            for idx in 0..self.slots.len() {
                if probe {
                    break;
                }
                loop {
                    let s = &self.slots[idx];
                    let due = s.stream.is_some()
                        && s.cfg.direction.graph() == g
                        && s.queue.front().is_some_and(|p| now + solo > p.deadline);
                    if !due {
                        break;
                    }
                    self.fall_back_front(now, idx);
                }
            }
            let ready: Vec<usize> = self.ready(g);
            if ready.is_empty() {
                continue;
            }
            let n = ready.len().min(self.cfg.max_batch);
            let est = self.steps[gi(g)].estimate(n) + self.cfg.safety_margin;
            let oldest = ready
                .iter()
                .map(|&i| self.slots[i].queue[0].arrived)
                .min()
                .expect("non-empty");
            let earliest_deadline = ready
                .iter()
                .map(|&i| self.slots[i].queue[0].deadline)
                .min()
                .expect("non-empty");
            let close_at = (oldest + self.cfg.max_queue_delay)
                .min(earliest_deadline.checked_sub(est).unwrap_or(now));
            let waiting = self.waiting_streams(g);
            if probe || n >= self.cfg.max_batch || now >= close_at || waiting == ready.len() {
                let mut b = self.take_batch(now, g, &ready);
                b.probe = probe;
                self.last_run[gi(g)] = Some(now);
                return Poll::Run(b);
            }
            wake = Some(wake.map_or(close_at, |w: Instant| w.min(close_at)));
        }
        match wake {
            Some(t) => Poll::WaitUntil(t),
            None if self.slots.iter().any(|s| !s.queue.is_empty()) => {
                // Only streams whose batch is out have frames: the caller completes it first.
                Poll::WaitUntil(now + self.cfg.max_queue_delay)
            }
            None => Poll::Idle,
        }
    }

    /// Slots with a frame ready for graph `g`, oldest frame first.
    fn ready(&self, g: Graph) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.stream.is_some()
                    && !s.in_flight
                    && s.cfg.direction.graph() == g
                    && !s.queue.is_empty()
            })
            .collect();
        v.sort_by_key(|&i| self.slots[i].queue[0].arrived);
        v
    }

    /// Open streams of graph `g` that could join a batch (none of them in flight). When every
    /// one of them already has a frame ready, waiting longer cannot grow the batch.
    fn waiting_streams(&self, g: Graph) -> usize {
        self.slots
            .iter()
            .filter(|s| s.stream.is_some() && !s.in_flight && s.cfg.direction.graph() == g)
            .count()
    }

    fn take_batch(&mut self, now: Instant, g: Graph, ready: &[usize]) -> Batch {
        let mut b = self.spare[gi(g)].take().expect("checked by poll");
        b.members.clear();
        b.started = now;
        b.probe = false;
        let (inw, sw) = match g {
            Graph::Encoder => (self.frame, self.state_width[0]),
            Graph::Decoder => (self.latent, self.state_width[1]),
        };
        let mut row = 0;
        for &idx in ready.iter().take(self.cfg.max_batch) {
            let p = self.slots[idx]
                .queue
                .pop_front()
                .expect("ready slot has a frame");
            let input = &mut b.input[row * inw..(row + 1) * inw];
            match g {
                Graph::Encoder => input.copy_from_slice(&p.pcm),
                Graph::Decoder => {
                    // Parse before the model: a corrupt or lost frame is concealed without it.
                    let ok = !p.bytes.is_empty()
                        && self
                            .model
                            .entropy
                            .read_frame(&p.bytes, &mut self.indices)
                            .is_ok()
                        && self.model.codebooks.decode(&self.indices, input).is_ok();
                    if !ok {
                        if !p.bytes.is_empty() {
                            self.metrics.corrupt_frames += 1;
                        }
                        self.conceal(now, idx, p.seq, p.arrived);
                        self.slots[idx].free.push(p);
                        continue;
                    }
                }
            }
            b.state[row * sw..(row + 1) * sw]
                .copy_from_slice(&self.states[gi(g)][idx * sw..(idx + 1) * sw]);
            let stream = self.slots[idx].stream.expect("ready slot is open");
            b.members.push(Member {
                slot: idx,
                stream,
                seq: p.seq,
                arrived: p.arrived,
            });
            self.slots[idx].in_flight = true;
            self.slots[idx].free.push(p);
            self.metrics
                .queue_wait
                .record(now.saturating_duration_since(b.members[row].arrived));
            row += 1;
        }
        b.size = row;
        b
    }

    /// Takes back a batch the backend has run (`result` is the backend's verdict). Results for
    /// streams that closed meanwhile are dropped; on error every member falls back.
    pub fn complete<E: std::fmt::Display>(
        &mut self,
        now: Instant,
        mut b: Batch,
        result: Result<(), E>,
    ) {
        let g = b.graph;
        let took = now.saturating_duration_since(b.started);
        if b.size > 0 {
            self.metrics.batch_size.record_count(b.size as u64);
            self.metrics.model_time.record(took);
            if b.probe {
                self.steps[gi(g)].reset_with(b.size, took);
            } else {
                self.steps[gi(g)].observe(b.size, took);
            }
        }
        let ok = match &result {
            Ok(()) => true,
            Err(e) => {
                self.metrics.backend_errors += 1;
                self.metrics.last_backend_error = Some(e.to_string());
                false
            }
        };
        let sw = self.state_width[gi(g)];
        let members = std::mem::take(&mut b.members);
        // Encoder batches: one batched RVQ search for all rows, at the deepest level any
        // member needs (RVQ is greedy, so each stream's level is a prefix of that).
        let rvq_levels = if g == Graph::Encoder && ok {
            members
                .iter()
                .map(|m| usize::from(self.slots[m.slot].cfg.level))
                .max()
                .unwrap_or(1)
                .max(1)
        } else {
            1
        };
        let rvq_ok = g == Graph::Encoder && ok && {
            self.batch_indices.resize(b.size * rvq_levels, 0);
            self.model
                .codebooks
                .encode_batch(
                    &b.output[..b.size * self.latent],
                    b.size,
                    rvq_levels,
                    &mut self.batch_indices,
                    &mut self.rvq_scratch,
                )
                .is_ok()
        };
        for (row, m) in members.iter().enumerate() {
            let s = &mut self.slots[m.slot];
            s.in_flight = false;
            if s.stream != Some(m.stream) {
                self.metrics.stale_results += 1;
                continue; // the slot now belongs to someone else (or no one)
            }
            if !ok {
                let pcm = (g == Graph::Encoder)
                    .then(|| &b.input[row * self.frame..(row + 1) * self.frame]);
                self.fall_back_frame(now, m.slot, m.seq, m.arrived, pcm);
                continue;
            }
            self.states[gi(g)][m.slot * sw..(m.slot + 1) * sw]
                .copy_from_slice(&b.state[row * sw..(row + 1) * sw]);
            let payload = match g {
                Graph::Encoder => {
                    let level = usize::from(s.cfg.level);
                    let ix = &self.batch_indices[row * rvq_levels..row * rvq_levels + level];
                    let mut frame = Vec::with_capacity(2 + 2 * level);
                    let coded = rvq_ok
                        && self
                            .model
                            .entropy
                            .write_frame(s.counter, ix, &mut frame)
                            .is_ok();
                    if !coded {
                        let pcm = &b.input[row * self.frame..(row + 1) * self.frame];
                        self.fall_back_frame(now, m.slot, m.seq, m.arrived, Some(pcm));
                        continue;
                    }
                    let s = &mut self.slots[m.slot];
                    s.counter = s.counter.wrapping_add(1) & 3;
                    Payload::Aic(frame)
                }
                Graph::Decoder => {
                    let pcm = &b.output[row * self.frame..(row + 1) * self.frame];
                    s.last_pcm.copy_from_slice(pcm);
                    Payload::Pcm(pcm.to_vec())
                }
            };
            self.emit(now, m.stream, m.seq, m.arrived, payload);
        }
        b.members = members;
        b.members.clear();
        b.size = 0;
        self.spare[gi(g)] = Some(b);
    }

    fn emit(
        &mut self,
        now: Instant,
        stream: StreamId,
        seq: u64,
        arrived: Instant,
        payload: Payload,
    ) {
        let latency = now.saturating_duration_since(arrived);
        self.metrics.e2e_latency.record(latency);
        if let Some(s) = self.slots.iter().find(|s| s.stream == Some(stream))
            && latency > s.cfg.budget
        {
            self.metrics.late += 1;
        }
        if payload.is_fallback() {
            self.metrics.fallbacks += 1;
        }
        self.metrics.frames_out += 1;
        self.outputs.push_back(Output {
            stream,
            seq,
            payload,
            latency,
        });
    }

    fn fall_back_front(&mut self, now: Instant, idx: usize) {
        let p = self.slots[idx].queue.pop_front().expect("caller checked");
        let pcm = (self.slots[idx].cfg.direction == Direction::Encode).then_some(p.pcm.as_slice());
        self.fall_back_frame(now, idx, p.seq, p.arrived, pcm);
        self.slots[idx].free.push(p);
    }

    /// Encode streams send the frame as Opus; decode streams conceal it. The model's state for
    /// the stream does not see that frame (the next frames are coded from a state one frame
    /// behind, which the causal model tolerates); running it later would only deepen overload.
    fn fall_back_frame(
        &mut self,
        now: Instant,
        idx: usize,
        seq: u64,
        arrived: Instant,
        pcm: Option<&[f32]>,
    ) {
        let Some(stream) = self.slots[idx].stream else {
            return;
        };
        match self.slots[idx].cfg.direction {
            Direction::Encode => {
                let mut out = Vec::new();
                if let (Some(pcm), Some(enc)) = (pcm, self.slots[idx].opus.as_mut())
                    && let Err(e) = enc.encode_frame(pcm, &mut out)
                {
                    self.metrics.last_backend_error = Some(format!("opus fallback: {e}"));
                    out.clear();
                }
                self.emit(now, stream, seq, arrived, Payload::OpusFallback(out));
            }
            Direction::Decode => self.conceal(now, idx, seq, arrived),
        }
    }

    fn conceal(&mut self, now: Instant, idx: usize, seq: u64, arrived: Instant) {
        let Some(stream) = self.slots[idx].stream else {
            return;
        };
        let s = &mut self.slots[idx];
        s.last_pcm.iter_mut().for_each(|x| *x *= 0.5);
        let pcm = s.last_pcm.clone();
        self.emit(now, stream, seq, arrived, Payload::Concealed(pcm));
    }
}
