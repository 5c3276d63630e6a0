//! What the service runs on, started in order and stopped in reverse: the model (one copy per
//! pipeline worker), the control plane first (data dir, store, admin token, gate and its usage
//! flusher, `ControlService`: a server that cannot check keys or meter must not serve), the
//! pipeline (`max_streams` split evenly over the workers), and the bridge link server. At the
//! end: the bridge socket removed, the pipeline drained, usage flushed, the store closed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aic_control::gate::Gate;
use aic_pipeline::driver::Pipeline;
use aic_pipeline::engine::EngineConfig;
use aic_pipeline::model::AicModel;

use crate::{Context as _, Options, Result};

/// The running parts the gRPC server serves from, and what [`stop`](Self::stop) winds down.
pub(crate) struct Started {
    pub(crate) model: Arc<AicModel>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) gate: Arc<Gate>,
    /// The pipeline's slots, all workers together.
    pub(crate) slots: usize,
    /// Most sessions one tenant may hold at once.
    pub(crate) tenant_cap: u32,
    /// The admin token file was made now (not given, and absent before).
    pub(crate) token_made: bool,
    store: aic_control::store::Store,
    flusher: tokio::task::JoinHandle<()>,
    bridge: Option<crate::bridge::BridgeServer>,
}

/// One model per pipeline worker (each has its own model sessions); before the runtime starts.
pub(crate) fn load_models(model_dir: &Path, workers: usize) -> Result<Vec<Arc<AicModel>>> {
    (0..workers.max(1))
        .map(|_| AicModel::load(model_dir, 1).map(Arc::new))
        .collect::<Result<_, _>>()
        .context("loading the AIC model")
}

/// Starts the control plane, the pipeline and the bridge (inside the server's runtime); the
/// `ControlService` comes back beside them, for the gRPC server to serve.
pub(crate) async fn start(
    models: Vec<Arc<AicModel>>,
    opts: &Options,
) -> Result<(Started, aic_control::service::Control)> {
    let model = models[0].clone();
    // The control plane first: a server that cannot check keys or meter must not serve.
    aic_control::service::ensure_data_dir(&opts.data_dir)?;
    let store = aic_control::store::Store::open(&opts.store_url)
        .await
        .with_context(|| format!("opening the control store {}", redact(&opts.store_url)))?;
    let (admin_token, token_made) = match &opts.admin_token {
        Some(t) => (t.clone(), false),
        None => aic_control::service::admin_token_in(&opts.data_dir)?,
    };
    // One number for the slot count: `max_streams` split evenly over the workers (each
    // worker's engine has its own slots), never more in total than asked for.
    let workers = models.len().min(opts.max_streams).max(1);
    let models: Vec<_> = models.into_iter().take(workers).collect();
    let per_worker = opts.max_streams / workers;
    let slots = per_worker * workers;
    let tenant_cap = ((slots as f64 * opts.tenant_slot_share).ceil() as u32).max(1);
    let gate = Arc::new(
        Gate::new(store.clone(), opts.auth, opts.key_cache_ttl)
            .with_tenant_cap(tenant_cap)
            .with_failure_limit(opts.auth_failures_per_minute),
    );
    let flusher = tokio::spawn(gate.clone().run_flusher(opts.meter_flush));
    let control = aic_control::service::Control::new(store.clone(), &admin_token)
        .with_max_level(model.manifest.num_codebooks as u32);
    let pipeline = Arc::new(Pipeline::start_workers(
        models,
        EngineConfig {
            max_batch: per_worker,
            ..Default::default()
        },
    ));
    let bridge = match &opts.bridge_socket {
        Some(path) => {
            let b = crate::bridge::start(
                path,
                pipeline.clone(),
                model.manifest.model_id.clone(),
                gate.clone(),
                opts.bridge_limits.clone(),
            )?;
            Some(b)
        }
        None => None,
    };
    Ok((
        Started {
            model,
            pipeline,
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
            pipeline,
            gate,
            store,
            flusher,
            bridge,
            ..
        } = self;
        flusher.abort();
        drop(bridge); // stops accepting and removes the socket file
        let p = pipeline.clone();
        drop(pipeline);
        // Joins the workers after their queued frames are done.
        tokio::task::spawn_blocking(move || drop(p)).await.ok();
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
