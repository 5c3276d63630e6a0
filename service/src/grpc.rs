//! The tonic server: health (both services), reflection (v1 and v1alpha), `CodecService`
//! ([`Svc`]) and `ControlService` on one port; TLS or mutual TLS (rustls), HTTP/2 and TCP
//! keepalive, a per-connection stream cap, the request size limit; Prometheus `/metrics` on its
//! own port; the startup lines on stderr; graceful shutdown (no new sessions; open ones are cut
//! at the end of the grace period).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aic_control::gate::Auth;
use aic_pipeline::driver::Pipeline;
use aic_proto::v1::codec_service_server::CodecServiceServer;
use aic_proto::v1::control_service_server::ControlServiceServer;
use aic_proto::v1::egress_service_server::EgressServiceServer;

use crate::bootstrap::{Started, redact};
use crate::svc::Svc;
use crate::{Context as _, Options, Result, TlsFiles};

/// Serves until `shutdown` completes and the grace period after it is over (or the server
/// fails); open sessions are cut when it returns.
pub(crate) async fn serve(
    opts: &Options,
    started: &Started,
    control: aic_control::service::Control,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let Started {
        models,
        gate,
        slots,
        tenant_cap,
        token_made,
        ..
    } = started;
    let (tenant_cap, token_made) = (*tenant_cap, *token_made);
    if let Some(addr) = opts.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve /metrics on {addr}"))?;
        for m in models.all() {
            tokio::spawn(publish_pipeline_metrics(
                m.pipeline.clone(),
                m.id().to_owned(),
            ));
        }
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CodecServiceServer<Svc>>()
        .await;
    health_reporter
        .set_serving::<ControlServiceServer<aic_control::service::Control>>()
        .await;
    health_reporter
        .set_serving::<EgressServiceServer<crate::egress::EgressSvc>>()
        .await;
    // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection and older
    // tools only v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aic_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aic_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    // The first line on stderr names the address (tests and scripts read it; port 0 works).
    let served: Vec<String> = models
        .all()
        .iter()
        .map(|m| format!("{} {}", m.id(), m.model.manifest.model_version))
        .collect();
    eprintln!(
        "aic serve: listening on {addr} ({} {}, {} slots, {}; tenant share {tenant_cap})",
        if served.len() == 1 { "model" } else { "models" },
        served.join(", "),
        slots.max(),
        if opts.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        }
    );
    for m in models.all() {
        if let Err(why) = &m.table {
            eprintln!("aic serve: Hints unavailable for {}: {why}", m.id());
        }
    }
    if let Some(path) = &opts.bridge_socket {
        eprintln!("aic serve: bridge link on {}", path.display());
    }
    if token_made {
        tracing::info!(
            path = %opts.data_dir.join("admin.token").display(),
            "made a new admin token (mode 0600)"
        );
    }
    if opts.auth == Auth::Off {
        tracing::warn!("API keys are OFF (--auth off): every caller is served as `anonymous`");
    }
    tracing::info!(
        %addr,
        store = %redact(&opts.store_url),
        auth = ?opts.auth,
        "serving CodecService, ControlService and EgressService"
    );
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
    let hub = Arc::new(crate::egress::Hub::new(&opts.data_dir, opts.egress_network));
    let hub_at_end = hub.clone();
    let egress = crate::egress::EgressSvc {
        hub: hub.clone(),
        gate: gate.clone(),
        models: models.clone(),
        slots: slots.clone(),
    };
    let svc = Svc {
        egress: hub,
        models: models.clone(),
        slots: slots.clone(),
        first_message_timeout: opts.first_message_timeout,
        idle_timeout: opts.idle_timeout,
        cut: cut_rx,
        gate: gate.clone(),
    };
    let signalled = Arc::new(tokio::sync::Notify::new());
    let on_signal = signalled.clone();
    let mut builder = tonic::transport::Server::builder()
        // Dead peers are found (and their sessions freed) even when they send nothing.
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .max_concurrent_streams(Some(opts.max_streams_per_connection));
    if let Some(tls) = &opts.tls {
        builder = builder
            .tls_config(tls_config(tls)?)
            .context("TLS configuration")?;
    }
    let server = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(CodecServiceServer::new(svc).max_decoding_message_size(8 << 20))
        .add_service(ControlServiceServer::new(control))
        .add_service(EgressServiceServer::new(egress))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new sessions; open ones finish");
                on_signal.notify_one();
            },
        );
    // Open sessions finish their in-flight frames; past the grace period they are cut.
    let grace = opts.shutdown_grace;
    tokio::select! {
        r = server => r.context("gRPC server")?,
        _ = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_s = grace.as_secs(), "grace period over; cutting open sessions");
        }
    }
    // Sessions still open stop reading now and end with UNAVAILABLE.
    let _ = cut_tx.send(true);
    // Recordings are finished (trailers, last fragments, playlists) before the process goes.
    let _ = tokio::task::spawn_blocking(move || hub_at_end.shutdown()).await;
    Ok(())
}

/// Reads the PEM files of `--tls-cert`/`--tls-key` (and `--tls-client-ca` for mutual TLS).
fn tls_config(t: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut c = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?),
    );
    if let Some(ca) = &t.client_ca {
        c = c.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(c)
}

/// Copies a model's pipeline's own metrics (histograms and counters kept by the engine) into
/// the Prometheus registry once a second, labelled with the model id.
async fn publish_pipeline_metrics(p: Arc<Pipeline>, model: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let p2 = p.clone();
        let Ok(Some(m)) = tokio::task::spawn_blocking(move || p2.metrics()).await else {
            return;
        };
        for (name, v) in [
            ("aic_pipeline_frames_in_total", m.frames_in),
            ("aic_pipeline_frames_out_total", m.frames_out),
            ("aic_pipeline_fallbacks_total", m.fallbacks),
            ("aic_pipeline_dropped_total", m.dropped),
            ("aic_pipeline_late_total", m.late),
            ("aic_pipeline_corrupt_frames_total", m.corrupt_frames),
            ("aic_pipeline_backend_errors_total", m.backend_errors),
            ("aic_pipeline_rejected_streams_total", m.rejected_streams),
            ("aic_pipeline_streams_shed_total", m.streams_shed),
            ("aic_pipeline_shed_frames_total", m.shed_frames),
        ] {
            metrics::counter!(name, "model" => model.clone()).absolute(v);
        }
        for (name, h) in [
            ("aic_pipeline_frame_latency_seconds", &m.e2e_latency),
            ("aic_pipeline_queue_wait_seconds", &m.queue_wait),
            ("aic_pipeline_model_call_seconds", &m.model_time),
        ] {
            for (q, label) in [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")] {
                metrics::gauge!(name, "quantile" => label, "model" => model.clone())
                    .set(h.quantile(q) as f64 / 1e6);
            }
        }
        metrics::gauge!("aic_pipeline_batch_size_mean", "model" => model.clone())
            .set(m.batch_size.mean());
        metrics::gauge!("aic_pipeline_streams_shed", "model" => model.clone())
            .set(m.shed_now as f64);
    }
}
