//! The egress driver: a bounded queue in, one worker thread, status out.
//!
//! The media path calls [`Egress::push_pcm`] / [`Egress::push_frame`], which never block: the
//! queue holds [`EgressConfig::queue_frames`] frames and a frame that finds it full is dropped
//! and counted (it becomes silence on the timeline, which keeps its length). The worker places
//! each frame on every output's [`Timeline`] by its index, writes it, and every
//! [`TICK`] reads each pipeline's bus, drives its [`Supervisor`] and publishes an
//! [`EgressStatus`] on a `tokio::sync::watch` channel (what the gRPC status stream and the CLI
//! read). [`Egress::stop`] (or dropping the handle) finishes every output within
//! [`FINISH_TIMEOUT`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aic_codec::codec::CodecInfo;
use serde::Serialize;
use tokio::sync::watch;

use crate::archive::AicOutput;
use crate::gst::GstOutput;
use crate::spec::{Format, OutputSpec, claim_dir, claim_file};
use crate::state::{State, Supervisor};
use crate::timeline::{Placement, Timeline};
use crate::{Error, FRAME_SAMPLES};

/// How often the worker reads the buses and publishes status.
pub const TICK: Duration = Duration::from_millis(100);
/// How long stopping waits for each output to finish (trailers, last fragment, playlist end).
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default queue: 250 frames = 5 s.
pub const DEFAULT_QUEUE_FRAMES: usize = 250;
/// The most outputs one egress may have.
pub const MAX_OUTPUTS: usize = 8;

#[derive(Debug, Clone)]
pub struct EgressConfig {
    pub id: String,
    pub outputs: Vec<OutputSpec>,
    /// Frames the queue into the worker holds before frames are dropped.
    pub queue_frames: usize,
    /// The codec of the frames a `.aic` output stores (required when there is one).
    pub aic_info: Option<CodecInfo>,
    /// A packet that codes silence, to fill gaps in `.aic` outputs (see [`crate::archive`]).
    pub aic_silence: Option<Vec<u8>>,
    /// Offline rendering: wait for slow outputs instead of dropping (never for live media).
    pub lossless: bool,
}

impl EgressConfig {
    pub fn new(id: impl Into<String>, outputs: Vec<OutputSpec>) -> Self {
        Self {
            id: id.into(),
            outputs,
            queue_frames: DEFAULT_QUEUE_FRAMES,
            aic_info: None,
            aic_silence: None,
            lossless: false,
        }
    }
}

/// One output as the status reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputStatus {
    pub format: Format,
    /// The file actually written (after never-overwrite numbering), the HLS playlist, or URL.
    pub location: String,
    pub state: State,
    /// Media time on the output's timeline.
    pub media_ms: u64,
    /// Frames that arrived and were written.
    pub frames: u64,
    /// Silent (or, in `.aic`, quiet/lost) frames written for gaps.
    pub filled: u64,
    /// Frames the output could not take (its sink was full): silence in their place.
    pub dropped: u64,
    /// Frames that went backwards (duplicates, late) and were ignored.
    pub behind: u64,
    /// Bytes on disk (file outputs and `.aic`; 0 for network outputs).
    pub bytes: u64,
    /// Time from the egress start to this output recording.
    pub start_latency_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EgressStatus {
    pub id: String,
    pub outputs: Vec<OutputStatus>,
    /// Frames dropped at the queue into the worker (the worker fell behind).
    pub queue_dropped: u64,
    /// Every output has stopped or failed.
    pub done: bool,
}

impl EgressStatus {
    /// The egress-level state: failed if every output failed, stalled if any is, recording
    /// when all live outputs record, else the least advanced one.
    pub fn state(&self) -> &'static str {
        let names: Vec<&str> = self.outputs.iter().map(|o| o.state.name()).collect();
        if names.iter().all(|n| *n == "failed") {
            "failed"
        } else if names.contains(&"stalled") {
            "stalled"
        } else if names.contains(&"starting") {
            "starting"
        } else if names.contains(&"stopping") {
            "stopping"
        } else if names.contains(&"recording") {
            "recording"
        } else {
            "stopped"
        }
    }
}

enum Msg {
    Pcm(u64, Vec<i16>),
    Frame(u64, Option<Vec<u8>>, bool),
    Stop,
}

enum Sink {
    Gst(GstOutput),
    Aic(AicOutput),
    /// Finished or failed: nothing more is written.
    Closed,
}

struct Output {
    sink: Sink,
    timeline: Timeline,
    sup: Supervisor,
    status: OutputStatus,
    /// The file whose size is reported as `bytes`.
    file: Option<PathBuf>,
}

/// A running egress. Pushing never blocks (except the `_blocking` variants for offline use).
pub struct Egress {
    tx: SyncSender<Msg>,
    queue_dropped: Arc<AtomicU64>,
    status: watch::Receiver<EgressStatus>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Egress {
    /// Claims every file (never overwriting), builds every output and starts the worker. Any
    /// output that cannot be built fails the whole start (files it claimed are removed).
    pub fn start(cfg: EgressConfig) -> Result<Egress, Error> {
        if cfg.outputs.is_empty() || cfg.outputs.len() > MAX_OUTPUTS {
            return Err(Error::Spec(format!(
                "an egress needs 1..={MAX_OUTPUTS} outputs, got {}",
                cfg.outputs.len()
            )));
        }
        let t0 = Instant::now();
        let mut outputs = Vec::with_capacity(cfg.outputs.len());
        let mut claimed: Vec<PathBuf> = Vec::new();
        let built = (|| -> Result<(), Error> {
            for spec in &cfg.outputs {
                outputs.push(build(&cfg, spec, t0, &mut claimed)?);
            }
            Ok(())
        })();
        if let Err(e) = built {
            drop(outputs);
            for p in claimed.iter().rev() {
                let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
            }
            return Err(e);
        }
        let queue_dropped = Arc::new(AtomicU64::new(0));
        let initial = snapshot(&cfg.id, &outputs, 0);
        let (status_tx, status) = watch::channel(initial);
        let (tx, rx) = sync_channel(cfg.queue_frames.clamp(1, 3000));
        let worker = Worker {
            id: cfg.id.clone(),
            outputs,
            lossless: cfg.lossless,
            status: status_tx,
            queue_dropped: queue_dropped.clone(),
        };
        let worker = std::thread::Builder::new()
            .name(format!("egress-{}", cfg.id))
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Io(format!("starting the egress worker: {e}")))?;
        Ok(Egress {
            tx,
            queue_dropped,
            status,
            worker: Some(worker),
        })
    }

    fn offer(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queue_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Offers frame `index` of 16 kHz PCM (320 samples) to the PCM outputs. Never blocks.
    pub fn push_pcm(&self, index: u64, pcm: &[i16]) {
        self.offer(Msg::Pcm(index, pcm.to_vec()));
    }

    /// Offers AIC frame `index` (`None`: lost) to the `.aic` outputs; `quiet` marks a packet
    /// that codes silence. Never blocks.
    pub fn push_frame(&self, index: u64, packet: Option<&[u8]>, quiet: bool) {
        self.offer(Msg::Frame(index, packet.map(<[u8]>::to_vec), quiet));
    }

    /// [`Self::push_pcm`] that waits for room (offline rendering).
    pub fn push_pcm_blocking(&self, index: u64, pcm: &[i16]) -> Result<(), Error> {
        self.tx
            .send(Msg::Pcm(index, pcm.to_vec()))
            .map_err(|_| Error::Stopped)
    }

    /// [`Self::push_frame`] that waits for room (offline re-muxing).
    pub fn push_frame_blocking(
        &self,
        index: u64,
        packet: Option<&[u8]>,
        quiet: bool,
    ) -> Result<(), Error> {
        self.tx
            .send(Msg::Frame(index, packet.map(<[u8]>::to_vec), quiet))
            .map_err(|_| Error::Stopped)
    }

    /// The latest status.
    pub fn status(&self) -> EgressStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (and a refresh every [`TICK`]).
    pub fn subscribe(&self) -> watch::Receiver<EgressStatus> {
        self.status.clone()
    }

    /// Finishes every output (bounded by [`FINISH_TIMEOUT`] each) and returns the final status.
    pub fn stop(mut self) -> EgressStatus {
        self.shutdown();
        self.status()
    }

    fn shutdown(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = self.tx.send(Msg::Stop);
            let _ = w.join();
        }
    }
}

impl Drop for Egress {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn build(
    cfg: &EgressConfig,
    spec: &OutputSpec,
    t0: Instant,
    claimed: &mut Vec<PathBuf>,
) -> Result<Output, Error> {
    let (sink, location, file) = match spec.format {
        Format::Aic => {
            let info = cfg.aic_info.as_ref().ok_or_else(|| {
                Error::Spec(".aic output: this stream has no AIC frames to store".into())
            })?;
            let (path, f): (PathBuf, File) = claim_file(spec.location.as_ref())?;
            claimed.push(path.clone());
            let mut out = AicOutput::start(info, f, &path)?;
            if let Some(q) = &cfg.aic_silence {
                out.set_quiet(q.clone());
            }
            let loc = out.location.clone();
            (Sink::Aic(out), loc, Some(path))
        }
        Format::Hls => {
            // `rec.m3u8` names the directory `rec/` (playlist `rec/index.m3u8`).
            let loc = spec.location.trim_end_matches('/');
            let loc = loc.strip_suffix(".m3u8").unwrap_or(loc);
            let dir = claim_dir(loc.as_ref())?;
            claimed.push(dir.clone());
            let mut out = GstOutput::start(spec, Some(&dir))?;
            out.wait_for_room = cfg.lossless;
            let loc = out.location.clone();
            (Sink::Gst(out), loc, None)
        }
        Format::Rtmp | Format::Srt => {
            let mut out = GstOutput::start(spec, None)?;
            out.wait_for_room = cfg.lossless;
            let loc = out.location.clone();
            (Sink::Gst(out), loc, None)
        }
        Format::Ogg | Format::Webm | Format::Mp4 | Format::Wav => {
            let (path, f) = claim_file(spec.location.as_ref())?;
            drop(f); // filesink opens it again (truncating the empty file we created)
            claimed.push(path.clone());
            let mut out = GstOutput::start(spec, Some(&path))?;
            out.wait_for_room = cfg.lossless;
            let loc = out.location.clone();
            (Sink::Gst(out), loc, Some(path))
        }
    };
    let sup = Supervisor::new(t0);
    Ok(Output {
        status: OutputStatus {
            format: spec.format,
            location,
            state: sup.state().clone(),
            media_ms: 0,
            frames: 0,
            filled: 0,
            dropped: 0,
            behind: 0,
            bytes: 0,
            start_latency_ms: None,
        },
        sink,
        timeline: Timeline::new(),
        sup,
        file,
    })
}

fn snapshot(id: &str, outputs: &[Output], queue_dropped: u64) -> EgressStatus {
    EgressStatus {
        id: id.to_string(),
        outputs: outputs.iter().map(|o| o.status.clone()).collect(),
        queue_dropped,
        done: outputs.iter().all(|o| o.sup.state().is_final()),
    }
}

struct Worker {
    id: String,
    outputs: Vec<Output>,
    lossless: bool,
    status: watch::Sender<EgressStatus>,
    queue_dropped: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut next_tick = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Pcm(i, pcm)) => self.pcm(i, &pcm),
                Ok(Msg::Frame(i, p, quiet)) => self.frame(i, p.as_deref(), quiet),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
        }
        self.finish();
    }

    fn pcm(&mut self, index: u64, pcm: &[i16]) {
        if pcm.len() != FRAME_SAMPLES {
            return;
        }
        let now = Instant::now();
        let mut changed = false;
        for o in &mut self.outputs {
            let Sink::Gst(g) = &mut o.sink else { continue };
            let Placement::Write { fill } = o.timeline.place(index) else {
                o.status.behind += 1;
                continue;
            };
            if let Err(e) = g.write(fill, pcm) {
                fail(o, now, e.to_string());
                continue;
            }
            // While starting, look at the bus after every write: the start latency is then
            // measured to the frame, not to the next tick.
            if *o.sup.state() == State::Starting {
                let news = g.poll();
                if let Some(why) = news.error {
                    fail(o, now, why);
                } else if news.playing && o.sup.progress(now) {
                    changed = true;
                }
            }
        }
        if changed {
            for o in &mut self.outputs {
                refresh(o);
            }
            self.publish();
        }
    }

    fn frame(&mut self, index: u64, packet: Option<&[u8]>, quiet: bool) {
        let now = Instant::now();
        let mut changed = false;
        for o in &mut self.outputs {
            let Sink::Aic(a) = &mut o.sink else { continue };
            let Placement::Write { fill } = o.timeline.place(index) else {
                o.status.behind += 1;
                continue;
            };
            match a.write(fill, packet, quiet) {
                Ok(()) => changed |= o.sup.progress(now),
                Err(e) => fail(o, now, e.to_string()),
            }
        }
        if changed {
            for o in &mut self.outputs {
                refresh(o);
            }
            self.publish();
        }
    }

    fn tick(&mut self, now: Instant) {
        for o in &mut self.outputs {
            if let Sink::Gst(g) = &mut o.sink {
                let news = g.poll();
                if let Some(why) = news.error {
                    fail(o, now, why);
                } else {
                    let waiting = g.waiting();
                    if news.playing && !waiting {
                        o.sup.progress(now);
                    } else {
                        o.sup.poll(now, waiting);
                    }
                    o.status.dropped = g.dropped;
                    if o.sup.state().is_final() {
                        // Failed by the supervisor (start timeout): stop the pipeline.
                        o.sink = Sink::Closed;
                    }
                }
            }
            refresh(o);
        }
        self.publish();
    }

    fn publish(&self) {
        let s = snapshot(
            &self.id,
            &self.outputs,
            self.queue_dropped.load(Ordering::Relaxed),
        );
        self.status.send_if_modified(|old| {
            if *old != s {
                *old = s;
                true
            } else {
                false
            }
        });
    }

    fn finish(&mut self) {
        let now = Instant::now();
        for o in &mut self.outputs {
            if !o.sup.state().is_final() {
                o.sup.stopping(now);
            }
        }
        self.publish();
        let _ = self.lossless;
        for o in &mut self.outputs {
            let sink = std::mem::replace(&mut o.sink, Sink::Closed);
            let done = match sink {
                Sink::Gst(g) => g.finish(FINISH_TIMEOUT).map(|_| ()),
                Sink::Aic(a) => a.finish().map(|_| ()),
                Sink::Closed => continue,
            };
            let now = Instant::now();
            match done {
                Ok(()) => {
                    o.sup.stopped(now);
                }
                Err(e) => {
                    o.sup.failed(now, e.to_string());
                }
            }
            refresh(o);
        }
        self.publish();
    }
}

fn fail(o: &mut Output, now: Instant, why: String) {
    o.sup.failed(now, why);
    o.sink = Sink::Closed;
    refresh(o);
}

fn refresh(o: &mut Output) {
    let st = o.timeline.stats;
    o.status.state = o.sup.state().clone();
    o.status.frames = st.frames;
    o.status.filled = st.filled;
    o.status.behind = st.behind;
    o.status.media_ms = o.timeline.media_time().as_millis() as u64;
    o.status.start_latency_ms = o.sup.start_latency().map(|d| d.as_millis() as u64);
    if let Sink::Gst(g) = &o.sink {
        o.status.dropped = g.dropped;
    }
    o.status.bytes = match (&o.sink, &o.file) {
        (Sink::Aic(a), _) => a.bytes(),
        (_, Some(p)) => std::fs::metadata(p)
            .map(|m| m.len())
            .unwrap_or(o.status.bytes),
        _ => 0,
    };
}
