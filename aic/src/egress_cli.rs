//! `aic egress …`: the EgressService of a running `aic serve` (issue #13) from the command line.

use aic_proto::v1 as pb;
use aic_proto::v1::egress_service_client::EgressServiceClient;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tokio_stream::StreamExt;
use tonic::Request;
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct EgressArgs {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "AIC_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// API key (`aick_…`); not needed by a server run with `--auth off`.
    #[arg(long, env = "AIC_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    cmd: EgressCmd,
}

#[derive(Subcommand)]
enum EgressCmd {
    /// Record the live EncodeStream session opened with `egress_key = STREAM` (or render a
    /// `.aic` archive of the tenant: `--archive NAME`). Outputs: file
    /// names (in the server's `<data-dir>/egress/<tenant>/`: `x.ogg`, `x.webm`, `x.mp4`,
    /// `x.wav`, `x.aic`, `x/` for HLS) or, where the server allows, rtmp:// and srt:// URLs.
    Start {
        /// The live session to record (its `egress_key`).
        #[arg(long, required_unless_present = "archive", conflicts_with = "archive")]
        stream: Option<String>,
        /// Or a `.aic` archive in the tenant's egress directory to render.
        #[arg(long)]
        archive: Option<String>,
        /// Archive: at the media's own pace (a live restream).
        #[arg(long)]
        realtime: bool,
        #[arg(required = true)]
        outputs: Vec<String>,
        /// Opus/AAC bitrate, e.g. 32k.
        #[arg(long)]
        bitrate: Option<String>,
        /// HLS segment duration, s.
        #[arg(long)]
        segment: Option<u32>,
        /// Then follow its status until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Stop an egress (files are finished) and print its final state.
    Stop { egress_id: String },
    /// This tenant's egresses.
    List,
    /// Follow an egress' status until it ends.
    Watch { egress_id: String },
}

fn req<T>(m: T, key: &Option<String>) -> Result<Request<T>> {
    let mut r = Request::new(m);
    if let Some(k) = key {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {k}").parse().context("--api-key")?,
        );
    }
    Ok(r)
}

/// One line per egress, then one indented line per output.
pub fn describe(e: &pb::EgressInfo) -> String {
    let mut s = format!(
        "{}  {}  stream={}  queue_dropped={}",
        e.egress_id, e.state, e.stream, e.queue_dropped
    );
    for o in &e.outputs {
        s.push_str(&format!(
            "\n  {:<5} {:<10} {:>9.2} s  {:>9} B  frames={} filled={} dropped={} start={} ms  {}{}",
            o.format,
            o.state,
            o.media_ms as f64 / 1000.0,
            o.bytes,
            o.frames,
            o.filled,
            o.dropped,
            o.start_latency_ms,
            o.location,
            if o.error.is_empty() {
                String::new()
            } else {
                format!("  error: {}", o.error)
            }
        ));
    }
    s
}

async fn watch(
    c: &mut EgressServiceClient<Channel>,
    id: String,
    key: &Option<String>,
) -> Result<()> {
    let mut s = c
        .watch_egress(req(pb::WatchEgressRequest { egress_id: id }, key)?)
        .await?
        .into_inner();
    let mut last = None;
    while let Some(e) = s.next().await {
        let e = e?;
        println!("{}", describe(&e));
        last = Some(e);
    }
    if let Some(e) = last
        && e.state == "failed"
    {
        bail!("egress {} failed", e.egress_id);
    }
    Ok(())
}

pub fn run(a: EgressArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = Channel::from_shared(a.server.clone())
            .with_context(|| format!("--server {:?}", a.server))?
            .connect()
            .await
            .with_context(|| format!("cannot reach {}", a.server))?;
        let mut c = EgressServiceClient::new(channel);
        let key = a.api_key;
        match a.cmd {
            EgressCmd::Start {
                stream,
                archive,
                realtime,
                outputs,
                bitrate,
                segment,
                watch: follow,
            } => {
                let bitrate_bps = match bitrate {
                    Some(b) => crate::render::parse_bps(&b).context("--bitrate")?,
                    None => 0,
                };
                let outputs = outputs
                    .into_iter()
                    .map(|location| pb::EgressOutput {
                        location,
                        format: String::new(),
                        bitrate_bps,
                        segment_s: segment.unwrap_or(0),
                    })
                    .collect();
                let e = c
                    .start_egress(req(
                        pb::StartEgressRequest {
                            stream: stream.unwrap_or_default(),
                            archive: archive.unwrap_or_default(),
                            outputs,
                            realtime,
                        },
                        &key,
                    )?)
                    .await?
                    .into_inner();
                println!("{}", describe(&e));
                if follow {
                    watch(&mut c, e.egress_id, &key).await?;
                }
            }
            EgressCmd::Stop { egress_id } => {
                let e = c
                    .stop_egress(req(pb::StopEgressRequest { egress_id }, &key)?)
                    .await?
                    .into_inner();
                println!("{}", describe(&e));
            }
            EgressCmd::List => {
                for e in c
                    .list_egress(req(pb::ListEgressRequest {}, &key)?)
                    .await?
                    .into_inner()
                    .egresses
                {
                    println!("{}", describe(&e));
                }
            }
            EgressCmd::Watch { egress_id } => watch(&mut c, egress_id, &key).await?,
        }
        Ok(())
    })
}
