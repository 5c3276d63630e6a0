//! `EgressService` (`proto/aic/v1/egress.proto`, issue #13): records live `EncodeStream`
//! sessions through `aic-egress`.
//!
//! A session that names itself (`EncodeOpen.egress_key`) registers a [`Tap`] in the [`Hub`]
//! for its tenant; `StartEgress` attaches an egress to that tap. The session's reader hands each
//! input frame's PCM to the tap, its forwarder each AIC frame; the tap pushes them to every
//! attached egress without blocking (the egress' own bounded queue drops and counts) and meters
//! 20 ms of egress per recorded frame to the key that started it. When the session ends its
//! egresses are stopped (files finished) on a thread of their own.
//!
//! Abuse limits: file outputs are plain names inside `<data-dir>/egress/<tenant>/` (no paths,
//! no dot files, never overwriting); network outputs only with `--egress-network`; at most
//! [`MAX_PER_TENANT`] running egresses per tenant and [`MAX_RUNNING`] in all; each egress is a
//! session of its key (the key's concurrency limit and policy apply: it must be allowed to
//! decode).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aic_codec::CodecInfo;
use aic_control::gate::{Gate, Ticket};
use aic_control::policy::Want;
use aic_egress::{Egress, EgressConfig, EgressStatus, Format, OutputSpec, State};
use aic_pipeline::engine::Payload;
use aic_proto::v1::egress_service_server::EgressService;
use aic_proto::v1::{
    EgressInfo, ListEgressRequest, ListEgressResponse, OutputInfo, StartEgressRequest,
    StopEgressRequest, WatchEgressRequest,
};
use tonic::{Request, Response, Status};

use crate::svc::{RespStream, code_name, count_rpc, ex};

/// Running egresses one tenant may have.
pub(crate) const MAX_PER_TENANT: usize = 8;
/// Running egresses on the server.
pub(crate) const MAX_RUNNING: usize = 64;
/// Finished egresses kept per tenant for List/Watch.
const KEEP_FINISHED: usize = 32;
/// Progress updates on WatchEgress come at most this often (state changes at once).
const WATCH_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One egress.
struct Job {
    id: String,
    tenant: String,
    stream: String,
    started_unix_ms: u64,
    /// The tenant's directory (file locations are reported relative to it).
    dir: PathBuf,
    /// `None` once stopped.
    egress: Mutex<Option<Egress>>,
    status: tokio::sync::watch::Receiver<EgressStatus>,
    /// The key's session while the egress runs: metering, and its place in the key's limit.
    ticket: Mutex<Option<Ticket>>,
}

impl Job {
    fn running(&self) -> bool {
        lock(&self.egress).is_some()
    }

    /// Stops the egress (blocking: up to 5 s per output) and ends the key's session.
    fn stop_blocking(&self) {
        let e = lock(&self.egress).take();
        if let Some(e) = e {
            let _ = e.stop();
        }
        lock(&self.ticket).take();
    }

    fn info(&self) -> EgressInfo {
        let st = self.status.borrow().clone();
        let rel = |loc: &str| {
            Path::new(loc)
                .strip_prefix(&self.dir)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| loc.to_string())
        };
        EgressInfo {
            egress_id: self.id.clone(),
            stream: self.stream.clone(),
            state: st.state().to_string(),
            outputs: st
                .outputs
                .iter()
                .map(|o| OutputInfo {
                    format: o.format.name().to_string(),
                    location: rel(&o.location),
                    state: o.state.name().to_string(),
                    error: match &o.state {
                        State::Failed(why) => why.clone(),
                        _ => String::new(),
                    },
                    media_ms: o.media_ms,
                    frames: o.frames,
                    filled: o.filled,
                    dropped: o.dropped,
                    bytes: o.bytes,
                    start_latency_ms: o.start_latency_ms.unwrap_or(0) as u32,
                })
                .collect(),
            queue_dropped: st.queue_dropped,
            started_unix_ms: self.started_unix_ms,
        }
    }
}

/// A recordable session's frames, handed to the egresses attached to it.
pub(crate) struct Tap {
    info: CodecInfo,
    jobs: Mutex<Vec<Arc<Job>>>,
    closed: AtomicBool,
    /// Whether recent input frames were quiet (by sequence number mod 64): a quiet frame's AIC
    /// packet fills gaps in `.aic` archives.
    quiet: [AtomicU64; 64],
}

impl Tap {
    /// One input frame (16 kHz, 320 samples) of the session.
    pub(crate) fn pcm(&self, seq: u64, pcm: &[f32]) {
        let quiet = pcm.iter().all(|v| v.abs() < 5e-4);
        self.quiet[(seq % 64) as usize].store(seq << 1 | u64::from(quiet), Ordering::Relaxed);
        let jobs = lock(&self.jobs);
        if jobs.is_empty() {
            return;
        }
        let pcm: Vec<i16> = pcm
            .iter()
            .map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .collect();
        for j in jobs.iter() {
            if let Some(e) = lock(&j.egress).as_ref() {
                e.push_pcm(seq, &pcm);
                if let Some(t) = lock(&j.ticket).as_ref() {
                    t.meter.counters.egress_ms(20);
                }
            }
        }
    }

    /// One output of the session's pipeline stream.
    pub(crate) fn frame(&self, seq: u64, payload: &Payload) {
        let jobs = lock(&self.jobs);
        if jobs.is_empty() {
            return;
        }
        let packet = match payload {
            Payload::Aic(b) if !b.is_empty() => Some(&b[..]),
            _ => None,
        };
        let q = self.quiet[(seq % 64) as usize].load(Ordering::Relaxed);
        let quiet = q >> 1 == seq && q & 1 == 1;
        for j in jobs.iter() {
            if let Some(e) = lock(&j.egress).as_ref() {
                e.push_frame(seq, packet, quiet);
            }
        }
    }
}

/// Held by a recordable session (its reader and its forwarder): when both let go, the tap is
/// removed and its egresses are stopped.
pub(crate) struct TapGuard {
    hub: Arc<Hub>,
    key: (String, String),
    pub(crate) tap: Arc<Tap>,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        lock(&self.hub.taps).remove(&self.key);
        self.tap.closed.store(true, Ordering::SeqCst);
        let jobs = std::mem::take(&mut *lock(&self.tap.jobs));
        if !jobs.is_empty() {
            // Finishing files blocks (up to 5 s an output): never on the caller's thread, which
            // may be a tokio worker.
            std::thread::spawn(move || {
                for j in jobs {
                    j.stop_blocking();
                }
            });
        }
    }
}

/// Every recordable session and every egress of the server.
pub(crate) struct Hub {
    dir: PathBuf,
    network: bool,
    taps: Mutex<HashMap<(String, String), Arc<Tap>>>,
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
    next: AtomicU64,
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty()
        || key.len() > 64
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Status::invalid_argument(format!(
            "egress key {} is not 1..=64 of ASCII letters, digits and -_.",
            ex(key)
        )));
    }
    Ok(())
}

impl Hub {
    pub(crate) fn new(data_dir: &Path, network: bool) -> Self {
        Self {
            dir: data_dir.join("egress"),
            network,
            taps: Mutex::new(HashMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Makes a session recordable under `key` (unique among the tenant's live sessions).
    pub(crate) fn register(
        self: &Arc<Self>,
        tenant: &str,
        key: &str,
        info: CodecInfo,
    ) -> Result<Arc<TapGuard>, Status> {
        check_key(key)?;
        let k = (tenant.to_string(), key.to_string());
        let mut taps = lock(&self.taps);
        if taps.contains_key(&k) {
            return Err(Status::already_exists(format!(
                "egress key {} is already used by a live session of this tenant",
                ex(key)
            )));
        }
        let tap = Arc::new(Tap {
            info,
            jobs: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            quiet: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        });
        taps.insert(k.clone(), tap.clone());
        Ok(Arc::new(TapGuard {
            hub: self.clone(),
            key: k,
            tap,
        }))
    }

    fn tenant_dir(&self, tenant: &str) -> Result<PathBuf, Status> {
        // Tenant ids are the store's own (letters, digits, -_), but check: they name a folder.
        if tenant.is_empty()
            || !tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(Status::internal("tenant id unusable as a directory name"));
        }
        let d = self.dir.join(tenant);
        std::fs::create_dir_all(&d)
            .map_err(|e| Status::internal(format!("creating the egress directory: {e}")))?;
        Ok(d)
    }

    fn output(&self, o: &aic_proto::v1::EgressOutput, dir: &Path) -> Result<OutputSpec, Status> {
        let bad = |m: String| Status::invalid_argument(m);
        let format = if o.format.is_empty() {
            None
        } else {
            Some(Format::parse(&o.format).map_err(|e| bad(e.to_string()))?)
        };
        let net = o.location.contains("://");
        let location = if net {
            if !self.network {
                return Err(Status::permission_denied(
                    "network outputs (rtmp://, srt://) are off on this server (aic serve --egress-network)",
                ));
            }
            o.location.clone()
        } else {
            let name = o.location.strip_suffix('/').unwrap_or(&o.location);
            if !plain_name(name) {
                return Err(bad(format!(
                    "output location {} must be a plain file name (letters, digits, -_.; not starting with a dot), or a URL",
                    ex(&o.location)
                )));
            }
            let mut p = dir.join(name).display().to_string();
            if o.location.ends_with('/') {
                p.push('/');
            }
            p
        };
        let mut spec = OutputSpec::parse(&location, format).map_err(|e| bad(e.to_string()))?;
        if o.bitrate_bps != 0 {
            spec = spec
                .with_bitrate(o.bitrate_bps)
                .map_err(|e| bad(e.to_string()))?;
        }
        if o.segment_s != 0 {
            spec = spec
                .with_segment_s(o.segment_s)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(spec)
    }

    fn check_caps(&self, tenant: &str) -> Result<(), Status> {
        let jobs = lock(&self.jobs);
        // An egress whose every output failed holds nothing: it does not count.
        let running: Vec<&Arc<Job>> = jobs
            .values()
            .filter(|j| j.running() && !j.status.borrow().done)
            .collect();
        let mine = running.iter().filter(|j| j.tenant == tenant).count();
        if mine >= MAX_PER_TENANT || running.len() >= MAX_RUNNING {
            return Err(Status::resource_exhausted(format!(
                "{mine} egresses of this tenant running ({MAX_PER_TENANT} allowed; {MAX_RUNNING} on the server)"
            )));
        }
        Ok(())
    }

    /// At server shutdown: stops every egress still running and waits (at most 10 s) until
    /// each has finished its files, whoever is stopping it.
    pub(crate) fn shutdown(&self) {
        let jobs: Vec<Arc<Job>> = lock(&self.jobs).values().cloned().collect();
        for j in &jobs {
            j.stop_blocking();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while jobs.iter().any(|j| !j.status.borrow().done) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !jobs.is_empty() {
            tracing::info!(egresses = jobs.len(), "egresses finished");
        }
    }

    fn job(&self, tenant: &str, id: &str) -> Result<Arc<Job>, Status> {
        lock(&self.jobs)
            .get(id)
            .filter(|j| j.tenant == tenant)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no egress {} for this tenant", ex(id))))
    }

    /// Drops the oldest finished egresses of `tenant` beyond [`KEEP_FINISHED`].
    fn prune(&self, tenant: &str) {
        let mut jobs = lock(&self.jobs);
        let finished: Vec<String> = jobs
            .values()
            .filter(|j| j.tenant == tenant && !j.running())
            .map(|j| j.id.clone())
            .collect();
        if finished.len() > KEEP_FINISHED {
            for id in &finished[..finished.len() - KEEP_FINISHED] {
                jobs.remove(id);
            }
        }
    }
}

pub(crate) struct EgressSvc {
    pub(crate) hub: Arc<Hub>,
    pub(crate) gate: Arc<Gate>,
    /// For archive sources: the served models' pipelines decode them.
    pub(crate) models: Arc<crate::models::Models>,
    pub(crate) slots: Arc<crate::models::Slots>,
}

impl EgressSvc {
    async fn start(
        &self,
        grant: &aic_control::policy::KeyGrant,
        r: StartEgressRequest,
    ) -> Result<EgressInfo, Status> {
        let hub = &self.hub;
        if !r.archive.is_empty() {
            if !r.stream.is_empty() {
                return Err(Status::invalid_argument(
                    "name one source: `stream` or `archive`, not both",
                ));
            }
            return self.start_archive(grant, r).await;
        }
        check_key(&r.stream)?;
        if r.outputs.is_empty() || r.outputs.len() > aic_egress::task::MAX_OUTPUTS {
            return Err(Status::invalid_argument(format!(
                "an egress needs 1..={} outputs",
                aic_egress::task::MAX_OUTPUTS
            )));
        }
        let tap = lock(&hub.taps)
            .get(&(grant.tenant_id.clone(), r.stream.clone()))
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no live session of this tenant has egress key {}",
                    ex(&r.stream)
                ))
            })?;
        hub.check_caps(&grant.tenant_id)?;
        let dir = hub.tenant_dir(&grant.tenant_id)?;
        let outputs = r
            .outputs
            .iter()
            .map(|o| hub.output(o, &dir))
            .collect::<Result<Vec<_>, _>>()?;
        let ticket = self.gate.admit(grant, Want::Decode)?;
        let id = format!("eg_{:08}", hub.next.fetch_add(1, Ordering::Relaxed));
        let mut cfg = EgressConfig::new(id.clone(), outputs);
        cfg.aic_info = Some(tap.info.clone());
        let egress = tokio::task::spawn_blocking(move || Egress::start(cfg))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                aic_egress::Error::Spec(m) => Status::invalid_argument(m),
                other => Status::failed_precondition(other.to_string()),
            })?;
        let job = Arc::new(Job {
            id: id.clone(),
            tenant: grant.tenant_id.clone(),
            stream: r.stream.clone(),
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            dir,
            status: egress.subscribe(),
            egress: Mutex::new(Some(egress)),
            ticket: Mutex::new(Some(ticket)),
        });
        lock(&hub.jobs).insert(id, job.clone());
        lock(&tap.jobs).push(job.clone());
        if tap.closed.load(Ordering::SeqCst) {
            // The session ended while this egress started: it records nothing more.
            let j = job.clone();
            tokio::task::spawn_blocking(move || j.stop_blocking());
        }
        hub.prune(&grant.tenant_id);
        tracing::info!(egress = %job.id, stream = %job.stream, tenant = %job.tenant, "egress started");
        Ok(job.info())
    }
}

/// A plain file name (letters, digits, `-_.`, no leading dot, ≤ 128 bytes).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl EgressSvc {
    /// An egress fed by a `.aic` archive of the tenant: its packets through a decode stream of
    /// the served model's pipeline (one slot, the sessions' flow control, a 1 s budget per
    /// frame so nothing is concealed for lack of time), the PCM to the outputs.
    async fn start_archive(
        &self,
        grant: &aic_control::policy::KeyGrant,
        r: StartEgressRequest,
    ) -> Result<EgressInfo, Status> {
        use aic_codec::bitstream::container::PacketReader;
        let hub = &self.hub;
        if !plain_name(&r.archive) || !r.archive.ends_with(".aic") {
            return Err(Status::invalid_argument(format!(
                "archive {} must be the name of a .aic file in this tenant's egress directory",
                ex(&r.archive)
            )));
        }
        if r.outputs.is_empty() || r.outputs.len() > aic_egress::task::MAX_OUTPUTS {
            return Err(Status::invalid_argument(format!(
                "an egress needs 1..={} outputs",
                aic_egress::task::MAX_OUTPUTS
            )));
        }
        hub.check_caps(&grant.tenant_id)?;
        let dir = hub.tenant_dir(&grant.tenant_id)?;
        let file = std::fs::File::open(dir.join(&r.archive)).map_err(|_| {
            Status::not_found(format!("no archive {} for this tenant", ex(&r.archive)))
        })?;
        let packets = PacketReader::new(std::io::BufReader::new(file))
            .map_err(|e| Status::invalid_argument(format!("{}: {e}", ex(&r.archive))))?;
        let info = packets.header().info.clone();
        if info.codec != "aic" || info.sample_rate != 16_000 {
            return Err(Status::invalid_argument(format!(
                "{}: a {} archive at {} Hz; EgressService renders AIC archives (`aic render` renders any)",
                ex(&r.archive),
                ex(&info.codec),
                info.sample_rate
            )));
        }
        let served = self.models.pick(&info.model_id)?;
        let pipeline = served.pipeline.clone();
        let outputs = r
            .outputs
            .iter()
            .map(|o| hub.output(o, &dir))
            .collect::<Result<Vec<_>, _>>()?;
        let ticket = self.gate.admit(grant, Want::Decode)?;
        let mut stream_cfg = aic_pipeline::engine::StreamConfig::decode();
        stream_cfg.budget = Duration::from_millis(1000);
        let (sender, pipe_out, slot) = self.slots.open_status(&pipeline, stream_cfg)?;
        let id = format!("eg_{:08}", hub.next.fetch_add(1, Ordering::Relaxed));
        let mut cfg = EgressConfig::new(id.clone(), outputs);
        cfg.lossless = true;
        cfg.aic_info = Some(info);
        let egress = tokio::task::spawn_blocking(move || Egress::start(cfg))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                aic_egress::Error::Spec(m) => Status::invalid_argument(m),
                other => Status::failed_precondition(other.to_string()),
            })?;
        let job = Arc::new(Job {
            id: id.clone(),
            tenant: grant.tenant_id.clone(),
            stream: format!("archive:{}", r.archive),
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            dir,
            status: egress.subscribe(),
            egress: Mutex::new(Some(egress)),
            ticket: Mutex::new(Some(ticket)),
        });
        lock(&hub.jobs).insert(id, job.clone());
        hub.prune(&grant.tenant_id);
        let j = job.clone();
        let realtime = r.realtime;
        std::thread::Builder::new()
            .name("egress-archive".into())
            .spawn(move || {
                if let Err(why) = render_archive(&j, packets, sender, pipe_out, realtime) {
                    tracing::warn!(egress = %j.id, %why, "archive render ended early");
                }
                drop(slot);
                j.stop_blocking();
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(egress = %job.id, source = %job.stream, tenant = %job.tenant, "egress started");
        Ok(job.info())
    }
}

/// Reads `packets` into the decode stream `sender` (at most [`crate::svc::IN_FLIGHT`] frames
/// inside the pipeline), hands each decoded frame to the job's egress in order, and meters it.
/// Ends at the archive's end (a live recording's torn last page included), when the egress is
/// stopped, or on an error (returned for the log; the outputs keep what they got).
fn render_archive<R: std::io::Read>(
    job: &Job,
    mut packets: aic_codec::bitstream::container::PacketReader<R>,
    sender: aic_pipeline::driver::StreamSender,
    outputs: std::sync::mpsc::Receiver<aic_pipeline::engine::Output>,
    realtime: bool,
) -> Result<(), String> {
    use aic_codec::bitstream::container::ContainerError;
    let expected = packets.packets_expected();
    let live = packets.is_live();
    let t0 = std::time::Instant::now();
    let mut sent = 0u64;
    let mut done = 0u64;
    let take = |done: &mut u64| -> Result<bool, String> {
        let o = outputs
            .recv_timeout(crate::svc::STALL)
            .map_err(|_| "pipeline stalled".to_string())?;
        let pcm: Vec<i16> = match &o.payload {
            Payload::Pcm(p) | Payload::Concealed(p) => p
                .iter()
                .map(|v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16)
                .collect(),
            other => return Err(format!("unexpected pipeline output {other:?}")),
        };
        if realtime {
            let due = t0 + Duration::from_millis(20 * o.seq);
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
        *done += 1;
        let g = lock(&job.egress);
        let Some(e) = g.as_ref() else {
            return Ok(false); // stopped
        };
        e.push_pcm_blocking(o.seq, &pcm)
            .map_err(|e| e.to_string())?;
        if let Some(t) = lock(&job.ticket).as_ref() {
            t.meter.counters.egress_ms(20);
        }
        Ok(true)
    };
    while sent < expected {
        let p = match packets.next_packet() {
            None => break,
            Some(Ok(p)) => p.map(<[u8]>::to_vec),
            Some(Err(ContainerError::TruncatedPage { .. })) if live => break,
            Some(Err(e)) => return Err(e.to_string()),
        };
        if sent - done >= crate::svc::IN_FLIGHT as u64 && !take(&mut done)? {
            return Ok(());
        }
        sender
            .push_aic(p.filter(|b| !b.is_empty()))
            .map_err(|_| "the pipeline is shutting down".to_string())?;
        sent += 1;
    }
    while done < sent {
        if !take(&mut done)? {
            return Ok(());
        }
    }
    drop(sender);
    let _ = outputs.recv_timeout(crate::svc::STALL);
    Ok(())
}

async fn authed<T, R>(
    svc: &EgressSvc,
    method: &'static str,
    req: Request<T>,
    f: impl AsyncFnOnce(&EgressSvc, aic_control::policy::KeyGrant, T) -> Result<R, Status>,
) -> Result<Response<R>, Status> {
    let peer = req.remote_addr().map(|a| a.ip());
    let r = match svc.gate.authenticate_from(req.metadata(), peer).await {
        Ok(grant) => f(svc, grant, req.into_inner()).await,
        Err(e) => Err(e),
    };
    count_rpc(method, r.as_ref().err().map_or("ok", code_name));
    r.map(Response::new)
}

#[tonic::async_trait]
impl EgressService for EgressSvc {
    type WatchEgressStream = RespStream<EgressInfo>;

    async fn start_egress(
        &self,
        req: Request<StartEgressRequest>,
    ) -> Result<Response<EgressInfo>, Status> {
        authed(self, "StartEgress", req, async |s, g, r| {
            s.start(&g, r).await
        })
        .await
    }

    async fn stop_egress(
        &self,
        req: Request<StopEgressRequest>,
    ) -> Result<Response<EgressInfo>, Status> {
        authed(self, "StopEgress", req, async |s, g, r| {
            let job = s.hub.job(&g.tenant_id, &r.egress_id)?;
            let j = job.clone();
            tokio::task::spawn_blocking(move || j.stop_blocking())
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(job.info())
        })
        .await
    }

    async fn list_egress(
        &self,
        req: Request<ListEgressRequest>,
    ) -> Result<Response<ListEgressResponse>, Status> {
        authed(self, "ListEgress", req, async |s, g, _r| {
            let jobs = lock(&s.hub.jobs);
            Ok(ListEgressResponse {
                egresses: jobs
                    .values()
                    .filter(|j| j.tenant == g.tenant_id)
                    .map(|j| j.info())
                    .collect(),
            })
        })
        .await
    }

    async fn watch_egress(
        &self,
        req: Request<WatchEgressRequest>,
    ) -> Result<Response<Self::WatchEgressStream>, Status> {
        authed(self, "WatchEgress", req, async |s, g, r| {
            let job = s.hub.job(&g.tenant_id, &r.egress_id)?;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(async move {
                let mut status = job.status.clone();
                let mut last = job.info();
                let mut sent_at = tokio::time::Instant::now();
                if tx.send(Ok(last.clone())).await.is_err() {
                    return;
                }
                loop {
                    let done = status.borrow().done;
                    if done {
                        break;
                    }
                    // Ends when the egress is stopped and its status sender dropped.
                    if status.changed().await.is_err() {
                        break;
                    }
                    let now = job.info();
                    let states_changed = now.state != last.state
                        || now
                            .outputs
                            .iter()
                            .zip(&last.outputs)
                            .any(|(a, b)| a.state != b.state);
                    if states_changed || sent_at.elapsed() >= WATCH_EVERY {
                        if tx.send(Ok(now.clone())).await.is_err() {
                            return;
                        }
                        last = now;
                        sent_at = tokio::time::Instant::now();
                    }
                }
                let fin = job.info();
                if fin != last {
                    let _ = tx.send(Ok(fin)).await;
                }
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as RespStream<_>)
        })
        .await
    }
}
