//! The batched streaming pipeline, as a sans-IO state machine.
//!
//! Frames of many independent streams arrive every 20 ms. The engine keeps one **slot** per
//! stream in a fixed table sized from the backend's maximum batch; each slot owns the stream's
//! model state rows. The **batcher** collects at most one frame per stream (a stream's frames
//! must go through the model in order, because each call advances its state) and closes a batch
//! when it is full or when waiting longer would make the oldest frame miss its deadline
//! (DeepStream's `batched-push-timeout`, Triton's `max_queue_delay`).
//!
//! Three kinds of stream ([`Direction`]):
//! * **encode** — PCM in, AIC frames out (encoder graph, RVQ, range coder);
//! * **decode** — AIC frames in, PCM out (frame parser, codeword sums, decoder graph). A frame
//!   lost in transit (`push_aic(.., None)`) or corrupt still goes through the decoder in the
//!   batch, fed the concealment latent of [`crate::conceal`] — the very concealment
//!   [`AicDecoder`](crate::aic::AicDecoder) uses, so the decoder's state advances identically
//!   and the PCM matches it; such outputs are [`Payload::Concealed`] and counted;
//! * **transcode** — PCM in, and per frame one [`Output`] with both the AIC frame (what an SFU
//!   forwards) and [`Output::decoded`], that frame through the decoder (what a subscriber hears).
//!   A frame goes through an encoder batch, then a decoder batch (in the same `poll` round when
//!   the backend is fast), under **one** deadline: the encoder stage is only started when the
//!   estimated encoder + decoder time still fits the frame's budget. A stream's next frame
//!   enters the encoder (or falls back) once the previous one has left the decoder, so its
//!   outputs, and the packets its Opus fallback codes and decodes, stay in order.
//!
//! A frame that can no longer meet its deadline — overload, a backend error, no model — **falls
//! back**: an encode or transcode stream sends that frame as Opus (a transcode stream also
//! decodes it in place with libopus, so [`Output::decoded`] is always there); a decode stream
//! falls back to the model-free last resort of [`crate::conceal`] (a short fade to silence, the
//! next model output faded in). All are marked and counted. Never silence without a reason,
//! never a stall.
//!
//! **Sustained overload sheds whole streams** ([`EngineConfig::shed_window`]): each window, the
//! frames of encode/transcode streams that missed their deadline shed that many streams' worth,
//! the newest first — their frames go as Opus before the encoder — and shed streams are taken
//! back one per window after five windows without misses, while the model's busy share leaves
//! room. Without
//! it, a load 15 % over capacity had every stream alternate between AIC and Opus (thousands of
//! codec switches a minute, each one audible, and smaller batches that carry less); with it a
//! few streams carry the whole excess as steady Opus and the rest stay AIC in full batches
//! (`overload_sheds_whole_streams…` in `tests/transcode.rs`, virtual time).
//!
//! The engine never reads the clock and never calls the model (except once, when it is built:
//! the model's latent of silence for concealment, [`conceal::silence_latent`], computed once per
//! process and model): callers pass `now`, take a
//! [`Batch`] from [`Engine::poll`], run it on a [`Backend`](crate::driver::Backend) (on any
//! thread), and hand it back with [`Engine::complete`]. Streams may close and slots be reused
//! while a batch is out; results addressed to a slot's previous occupant are dropped (moshi's
//! batched server does the same).
//!
//! **Allocation.** Batch tensors are gathered into and scattered from buffers allocated once;
//! the vectors inside [`Output`]s come from pools that [`Engine::recycle`] (spent outputs) and
//! [`Engine::recycle_pcm`] / [`Engine::recycle_bytes`] (the caller's input vectors) refill. A
//! caller that recycles allocates nothing per frame in the steady state on the engine's side
//! (by construction; not measured by a test: the workspace denies the `unsafe` a counting
//! allocator needs); one that does not just gets fresh vectors.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use aic_codec::codec::{CodecInfo, Decoder, Encoder, OperatingPoint};
use aic_codec::opus::{OpusDecoder, OpusEncoder, OpusVariant};

use crate::conceal;
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
    /// PCM in; AIC frames out together with their decoded PCM ([`Output::decoded`]).
    Transcode,
}

impl Direction {
    /// Whether this kind of stream runs through graph `g`.
    fn uses(self, g: Graph) -> bool {
        match self {
            Direction::Encode => g == Graph::Encoder,
            Direction::Decode => g == Graph::Decoder,
            Direction::Transcode => true,
        }
    }
    /// Whether frames are pushed as PCM.
    fn takes_pcm(self) -> bool {
        self != Direction::Decode
    }
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub direction: Direction,
    /// Codebooks sent (encode and transcode); decode streams take whatever level arrives.
    pub level: u8,
    /// Latency budget from a frame's arrival to its output (transcode: both model calls).
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
    /// PCM in; each output carries the AIC frame (or its Opus fallback) and its decoded PCM.
    pub fn transcode(level: u8) -> Self {
        Self {
            direction: Direction::Transcode,
            ..Self::encode(level)
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
    /// Overload control: every window, frames of PCM-in streams that missed the model's
    /// deadline shed whole streams (the newest first; all their frames go as Opus) instead of
    /// every stream alternating between AIC and Opus. Shed streams are taken back one per
    /// window after five windows in a row without such a frame, while the model's busy share
    /// leaves room. Zero turns shedding off.
    pub shed_window: Duration,
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
            shed_window: Duration::from_millis(200),
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
    /// An AIC frame (encode and transcode).
    Aic(Vec<u8>),
    /// The model could not meet this frame's deadline: the frame as Opus (encode and transcode).
    OpusFallback(Vec<u8>),
    /// Decoded PCM (decode direction).
    Pcm(Vec<f32>),
    /// Concealed PCM (decode direction): the frame was lost or corrupt (the decoder ran on the
    /// concealment latent), or its deadline could not be met (the model-free fade); see
    /// [`crate::conceal`].
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
    /// Transcode streams: this frame's PCM at the model rate — the AIC frame through the
    /// decoder, or the Opus fallback through libopus. Empty for the other directions.
    pub decoded: Vec<f32>,
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
    /// Decode streams: the row holds the concealment latent (the frame was lost or corrupt).
    concealed: bool,
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
            self.input.len() / self.rows,
            self.state.len() / self.rows,
            self.output.len() / self.rows,
        );
        (
            &self.input[..n * iw],
            &mut self.state[..n * sw],
            &mut self.output[..n * ow],
            n,
        )
    }
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    arrived: Instant,
    deadline: Instant,
    /// PCM (encode, transcode); recycled through the slot's free list.
    pcm: Vec<f32>,
    /// The AIC frame's bytes (decode; transcode after the encoder).
    bytes: Vec<u8>,
    /// Transcode after the encoder: the quantised latent for the decoder.
    latent: Vec<f32>,
}

struct Slot {
    stream: Option<StreamId>,
    cfg: StreamConfig,
    queue: VecDeque<Pending>,
    free: Vec<Pending>,
    in_flight: bool,
    next_seq: u64,
    counter: u8,
    /// Transcode: the frame between its encoder and decoder batches (`coded` once the encoder
    /// has run). The stream's next frame waits until it has left.
    held: Option<Pending>,
    coded: bool,
    /// Transcode: the held frame went through the encoder in a probe batch; its decoder batch
    /// is a probe too (so that the probe measures both calls and its frame is not wasted).
    probing: bool,
    /// Shed under overload: the stream's frames go as Opus before the encoder.
    shed: bool,
    /// Decode and transcode: the last PCM output (for the model-free fade).
    last_pcm: Vec<f32>,
    /// Decode: the last latent received, and how many frames in a row were concealed since.
    received: Vec<f32>,
    lost_run: u32,
    /// Decode: the last output was the model-free fade; the next model output is faded in.
    faded: bool,
    opus: Option<OpusEncoder>,
    opus_dec: Option<OpusDecoder>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("stream", &self.stream)
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// The frame this slot would put into a batch of graph `g`, if any (ignores `in_flight`).
    fn front(&self, g: Graph) -> Option<&Pending> {
        self.stream?;
        match (self.cfg.direction, g) {
            (Direction::Transcode, Graph::Decoder) => self.held.as_ref().filter(|_| self.coded),
            (Direction::Transcode, Graph::Encoder) if self.held.is_some() => None,
            (d, g) if d.uses(g) => self.queue.front(),
            _ => None,
        }
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

/// Windows without a miss before shed streams are taken back (one per window from then on).
const CALM_WINDOWS: u32 = 5;

/// What the overload control counts over one window.
#[derive(Debug, Default)]
struct Overload {
    start: Option<Instant>,
    /// Frames of unshed PCM-in streams that fell back on their deadline.
    missed: u64,
    /// Model time spent in the window.
    busy: Duration,
    /// Windows in a row without a miss (carried over from window to window).
    calm: u32,
    /// Streams were shed at the end of the last window: this window's misses may still be the
    /// backlog from before, so they shed nothing (carried over).
    cooling: bool,
}

fn bucket(n: usize) -> usize {
    n.max(1).next_power_of_two().trailing_zeros() as usize
}

/// Capacity of pooled byte vectors: the largest Opus packet (AIC frames are shorter).
const BYTES_CAP: usize = aic_codec::opus::MAX_PACKET;

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
    overload: Overload,
    outputs: VecDeque<Output>,
    model: std::sync::Arc<AicModel>,
    indices: Vec<u16>,
    batch_indices: Vec<u16>,
    rvq_scratch: aic_kernels::rvq::BatchScratch,
    /// Reused by `poll` (slots ready for a graph).
    ready_scratch: Vec<usize>,
    /// The model's latent of silence, for concealment ([`conceal::silence_latent`]).
    silence: std::sync::Arc<[f32]>,
    /// Vectors for outputs (see the module docs), bounded.
    pcm_pool: Vec<Vec<f32>>,
    byte_pool: Vec<Vec<u8>>,
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
                held: None,
                coded: false,
                probing: false,
                shed: false,
                last_pcm: vec![0.0; frame],
                received: vec![0.0; latent],
                lost_run: 0,
                faded: false,
                opus: None,
                opus_dec: None,
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
            overload: Overload::default(),
            slots,
            next_stream: 1,
            outputs: VecDeque::with_capacity(4 * n),
            indices: Vec::with_capacity(16),
            batch_indices: Vec::new(),
            rvq_scratch: Default::default(),
            ready_scratch: Vec::with_capacity(n),
            silence: conceal::silence_latent(&model),
            pcm_pool: Vec::with_capacity(Self::pool_cap(n)),
            byte_pool: Vec::with_capacity(Self::pool_cap(n)),
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

    fn pool_cap(slots: usize) -> usize {
        8 * slots + 16
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
        if cfg.direction.takes_pcm() && (cfg.level == 0 || usize::from(cfg.level) > k) {
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
        let rate = self.model.manifest.sample_rate;
        let fb = |e: aic_codec::CodecError| EngineError::Fallback(e.to_string());
        let opus = if cfg.direction.takes_pcm() {
            Some(OpusEncoder::new(OpusVariant::Plain, rate, cfg.fallback_bitrate_bps).map_err(fb)?)
        } else {
            None
        };
        let opus_dec = if cfg.direction == Direction::Transcode {
            let info = CodecInfo {
                codec: "opus".into(),
                model_id: String::new(),
                sample_rate: rate,
                frame_samples: self.frame,
                delay_samples: 0,
                point: OperatingPoint::BitrateBps(cfg.fallback_bitrate_bps),
            };
            Some(OpusDecoder::new(OpusVariant::Plain, &info).map_err(fb)?)
        } else {
            None
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
        s.received.copy_from_slice(&self.silence);
        s.lost_run = 0;
        s.faded = false;
        s.shed = false;
        s.opus = opus;
        s.opus_dec = opus_dec;
        Self::clear_frames(s);
        self.metrics.streams_opened += 1;
        Ok(id)
    }

    fn clear_frames(s: &mut Slot) {
        while let Some(p) = s.queue.pop_front() {
            s.free.push(p);
        }
        if let Some(p) = s.held.take() {
            s.free.push(p);
        }
        s.coded = false;
        s.probing = false;
    }

    /// Ends a stream: queued frames are discarded, an in-flight result will be dropped.
    pub fn close(&mut self, id: StreamId) -> Result<(), EngineError> {
        let idx = self.slot_of(id)?;
        let s = &mut self.slots[idx];
        s.stream = None;
        s.opus = None;
        s.opus_dec = None;
        if std::mem::take(&mut s.shed) {
            self.metrics.shed_now = self.metrics.shed_now.saturating_sub(1);
        }
        Self::clear_frames(s);
        Ok(())
    }

    /// Frames of `id` queued or in a batch that is out (`None`: no such stream).
    pub fn pending_frames(&self, id: StreamId) -> Option<usize> {
        let s = &self.slots[self.slot_of(id).ok()?];
        Some(s.queue.len() + usize::from(s.held.is_some() || s.in_flight))
    }

    /// Gives back a spent output's vectors for later outputs (see the module docs).
    pub fn recycle(&mut self, o: Output) {
        match o.payload {
            Payload::Aic(b) | Payload::OpusFallback(b) => self.recycle_bytes(b),
            Payload::Pcm(p) | Payload::Concealed(p) => self.recycle_pcm(p),
        }
        self.recycle_pcm(o.decoded);
    }

    /// Keeps a PCM vector (e.g. one a frame was pushed from) for a later output.
    pub fn recycle_pcm(&mut self, mut v: Vec<f32>) {
        if v.capacity() >= self.frame && self.pcm_pool.len() < Self::pool_cap(self.slots.len()) {
            v.clear();
            self.pcm_pool.push(v);
        }
    }

    /// Keeps a byte vector (e.g. one a frame was pushed from) for a later output.
    pub fn recycle_bytes(&mut self, mut v: Vec<u8>) {
        if v.capacity() >= BYTES_CAP && self.byte_pool.len() < Self::pool_cap(self.slots.len()) {
            v.clear();
            self.byte_pool.push(v);
        }
    }

    fn take_pcm(&mut self) -> Vec<f32> {
        self.pcm_pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.frame))
    }

    fn take_bytes(&mut self) -> Vec<u8> {
        self.byte_pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BYTES_CAP))
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
            bytes: Vec::with_capacity(BYTES_CAP),
            latent: vec![0.0; self.latent],
        });
        p.seq = s.next_seq;
        s.next_seq += 1;
        p.arrived = now;
        p.deadline = now + s.cfg.budget;
        fill(&mut p);
        s.queue.push_back(p);
        self.metrics.frames_in += 1;
    }

    /// Queues one PCM frame of an encode or transcode stream.
    pub fn push_pcm(&mut self, now: Instant, id: StreamId, pcm: &[f32]) -> Result<(), EngineError> {
        let idx = self.slot_of(id)?;
        if !self.slots[idx].cfg.direction.takes_pcm() {
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
        let d = self.slots[idx].cfg.direction;
        if d != Direction::Decode {
            return Err(EngineError::WrongDirection(id, d));
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

    /// Model time still ahead of a frame of slot `idx` that is about to enter graph `g` in a
    /// batch of `n`: the transcode encoder stage counts the decoder stage too (one budget).
    fn time_ahead(&self, idx: usize, g: Graph, n: usize) -> Duration {
        let t = self.steps[gi(g)].estimate(n) + self.cfg.safety_margin;
        if g == Graph::Encoder && self.slots[idx].cfg.direction == Direction::Transcode {
            t + self.steps[gi(Graph::Decoder)].estimate(n)
        } else {
            t
        }
    }

    /// Decides what to do at `now`: fall back frames that can no longer make it, close a batch
    /// if one is due, or say how long to wait.
    pub fn poll(&mut self, now: Instant) -> Poll {
        self.control_overload(now);
        let mut wake: Option<Instant> = None;
        for g in [Graph::Encoder, Graph::Decoder] {
            if self.spare[gi(g)].is_none() {
                continue; // a batch of this graph is out; its streams wait for it
            }
            // Frames that would miss their deadline even in a batch of one fall back now --
            // unless the model has not run for a probe interval: then one batch re-measures it.
            let probe = self.last_run[gi(g)]
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.probe_interval)
                || (g == Graph::Decoder
                    && self
                        .slots
                        .iter()
                        .any(|s| s.probing && !s.in_flight && s.front(g).is_some()));
            for idx in 0..self.slots.len() {
                if probe {
                    break;
                }
                loop {
                    let s = &self.slots[idx];
                    // A frame in flight is the backend's; a transcode frame waiting behind its
                    // predecessor waits for it, so that a transcode stream's outputs (and the
                    // frames its Opus encoder and decoder see) stay in order.
                    let p = if s.in_flight { None } else { s.front(g) };
                    let shed = s.shed && g == Graph::Encoder;
                    let due =
                        p.is_some_and(|p| shed || now + self.time_ahead(idx, g, 1) > p.deadline);
                    if !due {
                        break;
                    }
                    if shed {
                        self.metrics.shed_frames += 1;
                    } else if self.slots[idx].cfg.direction.takes_pcm() {
                        self.overload.missed += 1;
                    }
                    self.fall_back_front(now, idx, g);
                }
            }
            let mut ready = std::mem::take(&mut self.ready_scratch);
            self.ready(g, &mut ready);
            if ready.is_empty() {
                self.ready_scratch = ready;
                continue;
            }
            let n = ready.len().min(self.cfg.max_batch);
            let front = |i: usize| self.slots[i].front(g).expect("ready slot has a frame");
            let oldest = ready.iter().map(|&i| front(i).arrived).min();
            let latest_start = ready
                .iter()
                .map(|&i| {
                    front(i)
                        .deadline
                        .checked_sub(self.time_ahead(i, g, n))
                        .unwrap_or(now)
                })
                .min();
            let close_at = (oldest.expect("non-empty") + self.cfg.max_queue_delay)
                .min(latest_start.expect("non-empty"));
            let waiting = self.waiting_streams(g);
            if probe || n >= self.cfg.max_batch || now >= close_at || waiting == ready.len() {
                let b = self.take_batch(now, g, &ready, probe);
                self.ready_scratch = ready;
                self.last_run[gi(g)] = Some(now);
                return Poll::Run(b);
            }
            self.ready_scratch = ready;
            wake = Some(wake.map_or(close_at, |w: Instant| w.min(close_at)));
        }
        match wake {
            Some(t) => Poll::WaitUntil(t),
            None if self
                .slots
                .iter()
                .any(|s| !s.queue.is_empty() || s.held.is_some()) =>
            {
                // Only streams whose batch is out have frames: the caller completes it first.
                Poll::WaitUntil(now + self.cfg.max_queue_delay)
            }
            None => Poll::Idle,
        }
    }

    /// Sheds or takes back streams at the end of each overload window (see
    /// [`EngineConfig::shed_window`]). Shedding is by whole streams, the newest first, so the
    /// rest keep full batches and a steady codec: under a load the model cannot carry, the share
    /// of frames sent as Opus approaches the excess instead of every stream flickering between
    /// AIC and Opus. At least one PCM-in stream is always left to the model, so its time keeps
    /// being measured.
    fn control_overload(&mut self, now: Instant) {
        let window = self.cfg.shed_window;
        if window.is_zero() {
            return;
        }
        let Some(start) = self.overload.start else {
            self.overload.start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < window {
            return;
        }
        let mut o = std::mem::take(&mut self.overload);
        self.overload.start = Some(now);
        o.calm = if o.missed > 0 { 0 } else { o.calm + 1 };
        self.overload.calm = o.calm;
        if std::mem::take(&mut o.cooling) {
            return;
        }
        let frame_period = 20e-3;
        let per_stream = (elapsed.as_secs_f64() / frame_period).max(1.0);
        let pcm_in = |s: &Slot| s.stream.is_some() && s.cfg.direction.takes_pcm();
        let unshed = self.slots.iter().filter(|s| pcm_in(s) && !s.shed).count();
        let busy = o.busy.as_secs_f64() / elapsed.as_secs_f64();
        if o.missed > 0 {
            // Streams' worth of frames that missed: shed that many more, newest first — but no
            // more than the model's busy share says it is over (a burst of misses from one
            // stall would otherwise shed far too many), and at least one.
            let missed = (o.missed as f64 / per_stream).ceil() as usize;
            let over = if busy > 0.95 {
                unshed - ((unshed as f64 * 0.95 / busy).floor() as usize).min(unshed)
            } else {
                0
            };
            let k = missed.min(over.max(1)).min(unshed.saturating_sub(1));
            for _ in 0..k {
                let newest = (0..self.slots.len())
                    .filter(|&i| pcm_in(&self.slots[i]) && !self.slots[i].shed)
                    .max_by_key(|&i| self.slots[i].stream);
                if let Some(i) = newest {
                    self.slots[i].shed = true;
                    self.metrics.streams_shed += 1;
                    self.metrics.shed_now += 1;
                    self.overload.cooling = true;
                }
            }
        } else if unshed > 0 && o.calm >= CALM_WINDOWS {
            // After a calm spell, take one shed stream back per window, the oldest first, if
            // the model's busy share leaves room for it: busy time taken as growing linearly
            // with the streams served (batching makes it grow slower: the safe side), up to
            // 90 %. One at a time, after a calm second: misses are not only the model's time
            // (a machine short of CPU misses deadlines at any busy share), so taking many back
            // at once flaps.
            let oldest = (0..self.slots.len())
                .filter(|&i| pcm_in(&self.slots[i]) && self.slots[i].shed)
                .min_by_key(|&i| self.slots[i].stream);
            if let Some(i) = oldest
                && busy * (unshed + 1) as f64 <= 0.9 * unshed as f64
            {
                self.slots[i].shed = false;
                self.metrics.shed_now = self.metrics.shed_now.saturating_sub(1);
            }
        }
    }

    /// Slots with a frame ready for graph `g`, oldest frame first.
    fn ready(&self, g: Graph, v: &mut Vec<usize>) {
        v.clear();
        v.extend(
            (0..self.slots.len())
                .filter(|&i| !self.slots[i].in_flight && self.slots[i].front(g).is_some()),
        );
        v.sort_by_key(|&i| self.slots[i].front(g).map(|p| p.arrived));
    }

    /// Streams that could join a batch of `g` now or with their next frame (none of them in
    /// flight; a transcode stream only where its frame stands). When every one of them already
    /// has a frame ready, waiting longer cannot grow the batch.
    fn waiting_streams(&self, g: Graph) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.stream.is_some()
                    && !s.in_flight
                    && match (s.cfg.direction, g) {
                        (Direction::Transcode, Graph::Encoder) => s.held.is_none(),
                        (Direction::Transcode, Graph::Decoder) => s.coded && s.held.is_some(),
                        (d, g) => d.uses(g),
                    }
            })
            .count()
    }

    fn take_batch(&mut self, now: Instant, g: Graph, ready: &[usize], probe: bool) -> Batch {
        let mut b = self.spare[gi(g)].take().expect("checked by poll");
        b.members.clear();
        b.started = now;
        b.probe = probe;
        let (inw, sw) = match g {
            Graph::Encoder => (self.frame, self.state_width[0]),
            Graph::Decoder => (self.latent, self.state_width[1]),
        };
        for (row, &idx) in ready.iter().take(self.cfg.max_batch).enumerate() {
            let input = &mut b.input[row * inw..(row + 1) * inw];
            let s = &mut self.slots[idx];
            let mut concealed = false;
            let (seq, arrived) = match (s.cfg.direction, g) {
                (Direction::Encode, _) => {
                    let p = s.queue.pop_front().expect("ready slot has a frame");
                    input.copy_from_slice(&p.pcm);
                    let r = (p.seq, p.arrived);
                    s.free.push(p);
                    r
                }
                (Direction::Transcode, Graph::Encoder) => {
                    let p = s.queue.pop_front().expect("ready slot has a frame");
                    input.copy_from_slice(&p.pcm);
                    let r = (p.seq, p.arrived);
                    s.held = Some(p);
                    s.coded = false;
                    s.probing = probe;
                    r
                }
                (Direction::Transcode, Graph::Decoder) => {
                    let p = s.held.as_ref().expect("ready slot has a frame");
                    input.copy_from_slice(&p.latent);
                    (p.seq, p.arrived)
                }
                (Direction::Decode, _) => {
                    let p = s.queue.pop_front().expect("ready slot has a frame");
                    // Parse before the model; a lost or corrupt frame runs on the concealment
                    // latent, so the decoder's state advances as in `AicDecoder`.
                    let ok = !p.bytes.is_empty()
                        && self
                            .model
                            .entropy
                            .read_frame(&p.bytes, &mut self.indices)
                            .is_ok()
                        && self.model.codebooks.decode(&self.indices, input).is_ok();
                    if ok {
                        s.received.copy_from_slice(input);
                        s.lost_run = 0;
                    } else {
                        if !p.bytes.is_empty() {
                            self.metrics.corrupt_frames += 1;
                        }
                        s.lost_run = s.lost_run.saturating_add(1);
                        conceal::latent(&s.received, &self.silence, s.lost_run, input);
                        concealed = true;
                    }
                    let r = (p.seq, p.arrived);
                    s.free.push(p);
                    r
                }
            };
            s.in_flight = true;
            b.state[row * sw..(row + 1) * sw]
                .copy_from_slice(&self.states[gi(g)][idx * sw..(idx + 1) * sw]);
            b.members.push(Member {
                slot: idx,
                stream: s.stream.expect("ready slot is open"),
                seq,
                arrived,
                concealed,
            });
            self.metrics
                .queue_wait
                .record(now.saturating_duration_since(arrived));
        }
        b.size = b.members.len();
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
        self.overload.busy += took;
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
            let direction = s.cfg.direction;
            if !ok {
                let pcm = (direction == Direction::Encode)
                    .then(|| &b.input[row * self.frame..(row + 1) * self.frame]);
                self.fall_back_frame(now, m.slot, m.seq, m.arrived, pcm);
                continue;
            }
            self.states[gi(g)][m.slot * sw..(m.slot + 1) * sw]
                .copy_from_slice(&b.state[row * sw..(row + 1) * sw]);
            match (direction, g) {
                (_, Graph::Encoder) => {
                    let (level, counter) = (usize::from(s.cfg.level), s.counter);
                    let mut frame = match s.held.as_mut() {
                        Some(p) => std::mem::take(&mut p.bytes),
                        None => self.take_bytes(),
                    };
                    let ix = &self.batch_indices[row * rvq_levels..row * rvq_levels + level];
                    let coded = rvq_ok
                        && self
                            .model
                            .entropy
                            .write_frame(counter, ix, &mut frame)
                            .is_ok();
                    let s = &mut self.slots[m.slot];
                    if direction == Direction::Transcode {
                        let p = s.held.as_mut().expect("transcode frame held");
                        p.bytes = frame;
                        // The decoder's input is what a receiver rebuilds from the frame: the
                        // codeword sums of the sent indices.
                        s.coded = coded && self.model.codebooks.decode(ix, &mut p.latent).is_ok();
                        if !s.coded {
                            self.fall_back_frame(now, m.slot, m.seq, m.arrived, None);
                        }
                        continue;
                    }
                    if !coded {
                        self.recycle_bytes(frame);
                        let pcm = &b.input[row * self.frame..(row + 1) * self.frame];
                        self.fall_back_frame(now, m.slot, m.seq, m.arrived, Some(pcm));
                        continue;
                    }
                    s.counter = s.counter.wrapping_add(1) & 3;
                    self.emit(
                        now,
                        m.stream,
                        m.seq,
                        m.arrived,
                        Payload::Aic(frame),
                        Vec::new(),
                    );
                }
                (Direction::Transcode, Graph::Decoder) => {
                    let mut pcm = self.take_pcm();
                    pcm.extend_from_slice(&b.output[row * self.frame..(row + 1) * self.frame]);
                    let s = &mut self.slots[m.slot];
                    s.last_pcm.copy_from_slice(&pcm);
                    s.counter = s.counter.wrapping_add(1) & 3;
                    let mut p = s.held.take().expect("transcode frame held");
                    s.coded = false;
                    s.probing = false;
                    let mut frame = self.take_bytes();
                    std::mem::swap(&mut frame, &mut p.bytes);
                    self.slots[m.slot].free.push(p);
                    self.emit(now, m.stream, m.seq, m.arrived, Payload::Aic(frame), pcm);
                }
                (_, Graph::Decoder) => {
                    let mut pcm = self.take_pcm();
                    pcm.extend_from_slice(&b.output[row * self.frame..(row + 1) * self.frame]);
                    let s = &mut self.slots[m.slot];
                    if std::mem::take(&mut s.faded) {
                        conceal::fade_in(&mut pcm);
                    }
                    s.last_pcm.copy_from_slice(&pcm);
                    let payload = if m.concealed {
                        Payload::Concealed(pcm)
                    } else {
                        Payload::Pcm(pcm)
                    };
                    self.emit(now, m.stream, m.seq, m.arrived, payload, Vec::new());
                }
            }
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
        decoded: Vec<f32>,
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
            decoded,
            latency,
        });
    }

    /// Falls back the frame slot `idx` would next put into a batch of `g`.
    fn fall_back_front(&mut self, now: Instant, idx: usize, g: Graph) {
        let s = &mut self.slots[idx];
        let p = match (s.cfg.direction, g) {
            (Direction::Transcode, Graph::Decoder) => {
                s.coded = false;
                s.probing = false;
                s.held.take()
            }
            _ => s.queue.pop_front(),
        }
        .expect("caller checked");
        let pcm = s.cfg.direction.takes_pcm().then_some(p.pcm.as_slice());
        self.fall_back_frame(now, idx, p.seq, p.arrived, pcm);
        self.slots[idx].free.push(p);
    }

    /// Encode and transcode streams send the frame as Opus (transcode: decoded in place by
    /// libopus); decode streams fade out without the model ([`conceal::fade_out`]). The model's
    /// state for the stream does not see that frame (the next frames are coded from a state one
    /// frame behind, which the causal model tolerates); running it later would only deepen
    /// overload. `pcm`: the input frame (encode, transcode; for a transcode frame held between
    /// its batches, `None` takes the held one).
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
        let direction = self.slots[idx].cfg.direction;
        let held = if pcm.is_none() && direction == Direction::Transcode {
            self.slots[idx].coded = false;
            self.slots[idx].probing = false;
            self.slots[idx].held.take()
        } else {
            None
        };
        let pcm = pcm.or(held.as_ref().map(|p| p.pcm.as_slice()));
        let mut decoded = Vec::new();
        let payload = match direction {
            Direction::Encode | Direction::Transcode => {
                let mut out = self.take_bytes();
                let s = &mut self.slots[idx];
                if let (Some(pcm), Some(enc)) = (pcm, s.opus.as_mut())
                    && let Err(e) = enc.encode_frame(pcm, &mut out)
                {
                    self.metrics.last_backend_error = Some(format!("opus fallback: {e}"));
                    out.clear();
                }
                if direction == Direction::Transcode {
                    decoded = self.take_pcm();
                    let s = &mut self.slots[idx];
                    let ok = !out.is_empty()
                        && s.opus_dec
                            .as_mut()
                            .is_some_and(|d| d.decode_frame(Some(&out), &mut decoded).is_ok());
                    if !ok {
                        decoded.resize(self.frame, 0.0);
                        conceal::fade_out(&s.last_pcm, &mut decoded);
                    }
                    s.last_pcm.copy_from_slice(&decoded);
                }
                Payload::OpusFallback(out)
            }
            Direction::Decode => {
                let mut out = self.take_pcm();
                out.resize(self.frame, 0.0);
                let s = &mut self.slots[idx];
                conceal::fade_out(&s.last_pcm, &mut out);
                s.last_pcm.copy_from_slice(&out);
                s.faded = true;
                Payload::Concealed(out)
            }
        };
        if let Some(p) = held {
            self.slots[idx].free.push(p);
        }
        self.emit(now, stream, seq, arrived, payload, decoded);
    }
}
