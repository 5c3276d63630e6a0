//! The thin driver: one worker thread owns the [`Engine`] and the backend, feeds it the real
//! clock, and talks to streams over channels. All decisions stay in the engine; this module only
//! moves frames in and outputs out, and sleeps exactly until the engine's next deadline (no
//! polling loop).
//!
//! # Transcode streams (one hop in, one hop out)
//!
//! A service that needs both the AIC frames of a microphone and what they sound like after
//! decoding (the SFU bridge forwards the first and hands the second back to the SFU) opens one
//! stream:
//!
//! ```no_run
//! # use aic_pipeline::driver::Pipeline;
//! # use aic_pipeline::engine::{Payload, StreamConfig};
//! # fn f(p: &Pipeline, frames: impl Iterator<Item = Vec<f32>>) {
//! let (tx, rx) = p.open(StreamConfig::transcode(6)).unwrap().split();
//! for pcm in frames {
//!     tx.push_pcm(pcm).unwrap(); // 320 samples at 16 kHz
//! }
//! while let Ok(o) = rx.recv() {
//!     let (bytes, fallback) = match &o.payload {
//!         Payload::Aic(b) => (b, false),
//!         Payload::OpusFallback(b) => (b, true), // deadline missed: this frame is Opus
//!         _ => unreachable!("transcode outputs carry a frame"),
//!     };
//!     // `o.decoded`: the frame's 16 kHz PCM (AIC decoder, or libopus for a fallback frame).
//!     // ... forward `bytes` / `fallback`, play or hand back `o.decoded` ...
//!     # let _ = (bytes, fallback);
//!     tx.recycle(o); // optional: its vectors are reused, nothing is allocated per frame
//! }
//! # }
//! ```
//!
//! Per frame that is one message in (`push_pcm`) and one out (the [`Output`]), plus the
//! optional recycling message; both model calls, the RVQ search, the range coder and the Opus
//! fallback happen on the worker, inside the engine, under the stream's one latency budget.
//! A transcode stream's outputs come in input order (`seq`); for the other kinds they come in
//! completion order (a frame may fall back while its predecessor is still in the model).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::PipelineError;
use crate::engine::{Engine, EngineConfig, EngineError, Output, Poll, StreamConfig, StreamId};
use crate::metrics::PipelineMetrics;
use crate::model::{AicModel, Graph};

/// Runs one model step for a batch. The ONNX Runtime model is the production backend; tests may
/// wrap it (to slow it down, or make it fail).
pub trait Backend: Send {
    fn run(
        &mut self,
        graph: Graph,
        batch: usize,
        input: &[f32],
        state: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), PipelineError>;
}

impl Backend for Arc<AicModel> {
    fn run(
        &mut self,
        graph: Graph,
        batch: usize,
        input: &[f32],
        state: &mut [f32],
        output: &mut [f32],
    ) -> Result<(), PipelineError> {
        self.step(graph, batch, input, state, output)
    }
}

enum Cmd {
    Open(
        StreamConfig,
        Sender<Output>,
        SyncSender<Result<StreamId, EngineError>>,
    ),
    Close(StreamId),
    Pcm(StreamId, Instant, Vec<f32>),
    Aic(StreamId, Instant, Option<Vec<u8>>),
    Recycle(Output),
    Metrics(SyncSender<PipelineMetrics>),
    Shutdown,
}

/// A running pipeline. Dropping it (or [`Pipeline::shutdown`]) finishes every queued frame
/// first: nothing accepted is lost.
#[derive(Debug)]
pub struct Pipeline {
    workers: Vec<WorkerHandle>,
}

/// One worker thread: its own engine, slot table and model sessions (ONNX Runtime sessions run
/// one call at a time, so a second worker needs its own to use a second core).
#[derive(Debug)]
struct WorkerHandle {
    tx: Sender<Cmd>,
    join: Option<JoinHandle<()>>,
    /// Streams open on this worker (for placing new ones).
    open: Arc<AtomicUsize>,
}

/// One open stream: push frames in, read [`Output`]s from `outputs` (in completion order;
/// `Output::seq` gives the input order). Dropping the handle ends the stream once the frames
/// already pushed have come out.
#[derive(Debug)]
pub struct StreamHandle {
    pub id: StreamId,
    sender: StreamSender,
    pub outputs: Receiver<Output>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline has shut down")]
pub struct Closed;

/// The pushing half of a [`StreamHandle`] (see [`StreamHandle::split`]). Dropping it ends the
/// stream once the frames already pushed have come out.
#[derive(Debug)]
pub struct StreamSender {
    /// Unique across the pipeline's workers.
    pub id: StreamId,
    /// The id inside its worker's engine.
    local: StreamId,
    tx: Sender<Cmd>,
    open: Arc<AtomicUsize>,
}

impl StreamSender {
    /// Queues one PCM frame (encode and transcode streams). The vector is kept for later
    /// outputs.
    pub fn push_pcm(&self, pcm: Vec<f32>) -> Result<(), Closed> {
        self.tx
            .send(Cmd::Pcm(self.local, Instant::now(), pcm))
            .map_err(|_| Closed)
    }
    pub fn push_aic(&self, frame: Option<Vec<u8>>) -> Result<(), Closed> {
        self.tx
            .send(Cmd::Aic(self.local, Instant::now(), frame))
            .map_err(|_| Closed)
    }
    /// Hands a spent output back so that its vectors carry later outputs (optional).
    pub fn recycle(&self, o: Output) {
        let _ = self.tx.send(Cmd::Recycle(o));
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Close(self.local));
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamHandle {
    pub fn push_pcm(&self, pcm: Vec<f32>) -> Result<(), Closed> {
        self.sender.push_pcm(pcm)
    }
    pub fn push_aic(&self, frame: Option<Vec<u8>>) -> Result<(), Closed> {
        self.sender.push_aic(frame)
    }
    pub fn recycle(&self, o: Output) {
        self.sender.recycle(o)
    }
    /// Separates pushing from receiving, for callers that do them on different threads. The
    /// receiver ends (returns `Err`) once the stream is closed and drained.
    pub fn split(self) -> (StreamSender, Receiver<Output>) {
        (self.sender, self.outputs)
    }
}

impl Pipeline {
    /// One worker on `model`.
    pub fn start(model: Arc<AicModel>, cfg: EngineConfig) -> Self {
        Self::start_workers(vec![model], cfg)
    }

    /// One worker per model instance (load the model once per worker: each needs its own
    /// sessions). Each worker has `cfg.max_batch` slots; streams go to the least loaded one.
    pub fn start_workers(models: Vec<Arc<AicModel>>, cfg: EngineConfig) -> Self {
        let n = models.len().max(1);
        let backends: Vec<(Arc<AicModel>, Box<dyn Backend>)> = models
            .into_iter()
            .map(|m| (m.clone(), Box::new(m) as Box<dyn Backend>))
            .collect();
        Self::spawn(backends, cfg, n)
    }

    pub fn with_backend(
        model: Arc<AicModel>,
        cfg: EngineConfig,
        backend: Box<dyn Backend>,
    ) -> Self {
        Self::spawn(vec![(model, backend)], cfg, 1)
    }

    fn spawn(
        backends: Vec<(Arc<AicModel>, Box<dyn Backend>)>,
        cfg: EngineConfig,
        n: usize,
    ) -> Self {
        let workers = backends
            .into_iter()
            .enumerate()
            .map(|(w, (model, backend))| {
                let (tx, rx) = mpsc::channel();
                let cfg = cfg.clone();
                let join = std::thread::Builder::new()
                    .name(format!("aic-pipeline-{w}"))
                    .spawn(move || {
                        Worker {
                            engine: Engine::new(model, cfg),
                            backend,
                            routes: HashMap::new(),
                            closing: Vec::new(),
                            rx,
                            index: w as u64,
                            workers: n as u64,
                        }
                        .run()
                    })
                    .expect("spawn pipeline worker");
                WorkerHandle {
                    tx,
                    join: Some(join),
                    open: Arc::new(AtomicUsize::new(0)),
                }
            })
            .collect();
        Self { workers }
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Opens a stream on the least loaded worker (another one if that one is full).
    pub fn open(&self, cfg: StreamConfig) -> Result<StreamHandle, EngineError> {
        let mut order: Vec<usize> = (0..self.workers.len()).collect();
        order.sort_by_key(|&w| self.workers[w].open.load(Ordering::Relaxed));
        let mut last = EngineError::Fallback("pipeline has no workers".into());
        for w in order {
            let wh = &self.workers[w];
            let (otx, orx) = mpsc::channel();
            let (rtx, rrx) = mpsc::sync_channel(1);
            let shut = EngineError::Fallback("pipeline has shut down".into());
            wh.tx
                .send(Cmd::Open(cfg.clone(), otx, rtx))
                .map_err(|_| shut.clone())?;
            match rrx.recv().map_err(|_| shut)? {
                Ok(local) => {
                    wh.open.fetch_add(1, Ordering::Relaxed);
                    let id = local * self.workers.len() as u64 + w as u64;
                    let sender = StreamSender {
                        id,
                        local,
                        tx: wh.tx.clone(),
                        open: wh.open.clone(),
                    };
                    return Ok(StreamHandle {
                        id,
                        sender,
                        outputs: orx,
                    });
                }
                Err(e @ EngineError::Full(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// A snapshot of the engines' metrics, merged over workers.
    pub fn metrics(&self) -> Option<PipelineMetrics> {
        let mut all: Option<PipelineMetrics> = None;
        for wh in &self.workers {
            let (tx, rx) = mpsc::sync_channel(1);
            wh.tx.send(Cmd::Metrics(tx)).ok()?;
            let m = rx.recv().ok()?;
            match all.as_mut() {
                None => all = Some(m),
                Some(a) => a.merge(&m),
            }
        }
        all
    }

    /// Stops accepting streams, finishes queued frames, joins the workers.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for wh in &self.workers {
            let _ = wh.tx.send(Cmd::Shutdown);
        }
        for wh in &mut self.workers {
            if let Some(j) = wh.join.take() {
                let _ = j.join();
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    engine: Engine,
    backend: Box<dyn Backend>,
    routes: HashMap<StreamId, Sender<Output>>,
    /// Streams whose handle was dropped: closed once their queued frames are out.
    closing: Vec<StreamId>,
    rx: Receiver<Cmd>,
    /// This worker's index and the number of workers: global id = local id × workers + index.
    index: u64,
    workers: u64,
}

impl Worker {
    fn run(mut self) {
        let mut stopping = false;
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                stopping |= self.handle(cmd);
            }
            let now = Instant::now();
            match self.engine.poll(now) {
                Poll::Run(mut b) => {
                    let g = b.graph;
                    let (i, s, o, n) = b.buffers();
                    let r = self.backend.run(g, n, i, s, o);
                    self.engine.complete(Instant::now(), b, r);
                }
                Poll::WaitUntil(t) => {
                    match self.rx.recv_timeout(t.saturating_duration_since(now)) {
                        Ok(cmd) => stopping |= self.handle(cmd),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => stopping = true,
                    }
                }
                Poll::Idle if stopping => break,
                // Streams to close (a `Close` taken by `try_recv` above): close them below
                // before sleeping, or they would wait for the next command, maybe forever.
                Poll::Idle if !self.closing.is_empty() => {}
                Poll::Idle => match self.rx.recv() {
                    Ok(cmd) => stopping |= self.handle(cmd),
                    Err(_) => stopping = true,
                },
            }
            while let Some(mut o) = self.engine.pop_output() {
                let local = o.stream;
                o.stream = local * self.workers + self.index;
                if let Some(tx) = self.routes.get(&local) {
                    let _ = tx.send(o); // a receiver that went away just stops listening
                }
            }
            let engine = &mut self.engine;
            let routes = &mut self.routes;
            self.closing.retain(|&id| {
                if engine.pending_frames(id).unwrap_or(0) > 0 {
                    return true;
                }
                let _ = engine.close(id);
                routes.remove(&id);
                false
            });
        }
    }

    /// Returns true on shutdown.
    fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Open(cfg, out, reply) => {
                let r = self.engine.open(cfg);
                if let Ok(id) = r {
                    self.routes.insert(id, out);
                }
                let _ = reply.send(r);
            }
            Cmd::Close(id) => self.closing.push(id),
            Cmd::Pcm(id, at, pcm) => {
                if self.engine.push_pcm(at, id, &pcm).is_err() {
                    self.engine.metrics.rejected_frames += 1;
                }
                self.engine.recycle_pcm(pcm);
            }
            Cmd::Aic(id, at, frame) => {
                if self.engine.push_aic(at, id, frame.as_deref()).is_err() {
                    self.engine.metrics.rejected_frames += 1;
                }
            }
            Cmd::Recycle(o) => self.engine.recycle(o),
            Cmd::Metrics(reply) => {
                let _ = reply.send(self.engine.metrics.clone());
            }
            Cmd::Shutdown => return true,
        }
        false
    }
}
