//! What the service runs on, started in order and stopped in reverse: the models (each one
//! copy per pipeline worker; the manifests first, so two directories with one `model_id` stop
//! the start before any graph is loaded), the control plane first (data dir, store, admin
//! token, gate and its usage flusher, `ControlService`: a server that cannot check keys or
//! meter must not serve), one pipeline per model (`max_streams` split evenly over its
//! workers, so each model alone can hold every slot), the server's one slot count over all of
//! them, and the bridge link server (on the default model). At the end: the bridge socket
//! removed, the pipelines drained, usage flushed, the store closed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aic_control::gate::Gate;
use aic_pipeline::driver::Pipeline;
use aic_pipeline::engine::EngineConfig;
use aic_pipeline::model::AicModel;

use crate::models::{Models, Served, Slots};
use crate::{Context as _, Error, Options, Result};

/// The running parts the gRPC server serves from, and what [`stop`](Self::stop) winds down.
pub(crate) struct Started {
    /// Every served model with its pipeline, the default first.
    pub(crate) models: Arc<Models>,
    pub(crate) gate: Arc<Gate>,
    /// The server's slots, every model and the bridge together.
    pub(crate) slots: Arc<Slots>,
    /// Most sessions one tenant may hold at once.
    pub(crate) tenant_cap: u32,
    /// The admin token file was made now (not given, and absent before).
    pub(crate) token_made: bool,
    store: aic_control::store::Store,
    flusher: tokio::task::JoinHandle<()>,
    bridge: Option<crate::bridge::BridgeServer>,
}

/// One served model as loaded: a copy per pipeline worker (each has its own model sessions).
pub(crate) struct Loaded {
    dir: PathBuf,
    copies: Vec<Arc<AicModel>>,
}

/// Every model directory, in order (the first is the default), one copy per worker; before the
/// runtime starts. The manifests are read first: two directories with the same `model_id` are
/// an error naming both, before any graph is loaded.
pub(crate) fn load_models(dirs: &[PathBuf], workers: usize) -> Result<Vec<Loaded>> {
    if dirs.is_empty() {
        return Err(Error::Invalid("no model directory to serve".into()));
    }
    let mut ids: Vec<(String, &Path)> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let m = aic_pipeline::model::read_manifest(dir)
            .with_context(|| format!("reading the model manifest in {}", dir.display()))?;
        if let Some((_, first)) = ids.iter().find(|(id, _)| *id == m.model_id) {
            return Err(Error::Invalid(format!(
                "model_id {:?} is in two model directories, {} and {}: each served model needs                  its own id",
                m.model_id,
                first.display(),
                dir.display()
            )));
        }
        ids.push((m.model_id, dir));
    }
    dirs.iter()
        .map(|dir| {
            let copies = (0..workers.max(1))
                .map(|_| AicModel::load(dir, 1).map(Arc::new))
                .collect::<Result<_, _>>()
                .with_context(|| format!("loading the AIC model in {}", dir.display()))?;
            Ok(Loaded {
                dir: dir.clone(),
                copies,
            })
        })
        .collect()
}

/// Starts the control plane, the pipeline and the bridge (inside the server's runtime); the
/// `ControlService` comes back beside them, for the gRPC server to serve.
pub(crate) async fn start(
    loaded: Vec<Loaded>,
    opts: &Options,
) -> Result<(Started, aic_control::service::Control)> {
    // The control plane first: a server that cannot check keys or meter must not serve.
    aic_control::service::ensure_data_dir(&opts.data_dir)?;
    let store = aic_control::store::Store::open(&opts.store_url)
        .await
        .with_context(|| format!("opening the control store {}", redact(&opts.store_url)))?;
    let (admin_token, token_made) = match &opts.admin_token {
        Some(t) => (t.clone(), false),
        None => aic_control::service::admin_token_in(&opts.data_dir)?,
    };
    // One number for the slot count: `max_streams` split evenly over a model's workers (each
    // worker's engine has its own slots), never more in total than asked for. Every model's
    // pipeline gets all of them, so that any one model can hold every slot; the server-wide
    // count (`Slots`) keeps the models together within it.
    let workers = loaded[0].copies.len().min(opts.max_streams).max(1);
    let per_worker = opts.max_streams / workers;
    let slots = per_worker * workers;
    let tenant_cap = ((slots as f64 * opts.tenant_slot_share).ceil() as u32).max(1);
    let gate = Arc::new(
        Gate::new(store.clone(), opts.auth, opts.key_cache_ttl)
            .with_tenant_cap(tenant_cap)
            .with_failure_limit(opts.auth_failures_per_minute),
    );
    let flusher = tokio::spawn(gate.clone().run_flusher(opts.meter_flush));
    let max_level = loaded
        .iter()
        .map(|l| l.copies[0].manifest.num_codebooks as u32)
        .max()
        .unwrap_or(1);
    let control =
        aic_control::service::Control::new(store.clone(), &admin_token).with_max_level(max_level);
    let served = loaded
        .into_iter()
        .map(|l| {
            let model = l.copies[0].clone();
            let copies: Vec<_> = l.copies.into_iter().take(workers).collect();
            Served {
                model,
                pipeline: Arc::new(Pipeline::start_workers(
                    copies,
                    EngineConfig {
                        max_batch: per_worker,
                        ..Default::default()
                    },
                )),
                table: crate::hints::load_table(&l.dir),
            }
        })
        .collect();
    let models = Arc::new(Models::new(served));
    let slots = Slots::new(slots);
    let bridge = match &opts.bridge_socket {
        Some(path) => {
            // The bridge link has no model field: it runs on the default model.
            let d = models.default_model();
            let b = crate::bridge::start(
                path,
                d.pipeline.clone(),
                d.id().to_owned(),
                slots.clone(),
                gate.clone(),
                opts.bridge_limits.clone(),
            )?;
            Some(b)
        }
        None => None,
    };
    Ok((
        Started {
            models,
            gate,
            slots,
            tenant_cap,
            token_made,
            store,
            flusher,
            bridge,
        },
        control,
    ))
}

impl Started {
    /// After the gRPC server is done and open sessions were cut: winds everything down and
    /// flushes what was metered.
    pub(crate) async fn stop(self) {
        let Self {
            models,
            gate,
            store,
            flusher,
            bridge,
            ..
        } = self;
        flusher.abort();
        drop(bridge); // stops accepting and removes the socket file
        // Joins every model's workers after their queued frames are done.
        tokio::task::spawn_blocking(move || drop(models)).await.ok();
        // Sessions end as their forwarders finish; wait briefly, then flush everything metered
        // (live sessions' progress included), so nothing is lost.
        for _ in 0..20 {
            if gate.meter.live_sessions() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match gate.flush().await {
            Ok(n) => tracing::info!(accounts = n, "usage flushed"),
            Err(e) => tracing::error!(error = %e, "final usage flush failed"),
        }
        store.close().await;
        tracing::info!("stopped");
    }
}

/// A store URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn store_urls_lose_their_password_only() {
        assert_eq!(
            redact("postgres://aic:s3cret@db:5432/aic"),
            "postgres://aic:***@db:5432/aic"
        );
        assert_eq!(redact("postgres://aic@db/aic"), "postgres://aic@db/aic");
        assert_eq!(
            redact("sqlite://data/control.db"),
            "sqlite://data/control.db"
        );
    }
}
