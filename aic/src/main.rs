//! `aic` — the AIC command line.

mod admin;
mod attach;
mod audio;
mod bench;
mod config;
mod egress_bench;
mod egress_cli;
mod external;
mod grpc_bench;
mod janus;
mod load;
mod loss_bench;
mod opens;
mod plot;
mod render;
mod soak;
mod transcode;
mod video_attach;
mod video_cli;
mod video_load;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aic_codec::CodecRegistry;
use aic_codec::bitstream::container;
use aic_codec::resample::resample;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aic",
    version,
    about = "AIC neural speech compression: encode, decode, compare with Opus"
)]
struct Cli {
    /// Directory of the AIC model (manifest.json + ONNX graphs). Default: $AIC_MODEL_DIR, else
    /// the model shipped in this repository.
    #[arg(long, global = true, env = "AIC_MODEL_DIR")]
    model: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run: the size does not matter
enum Cmd {
    /// Serve the gRPC codec API (EncodeStream, DecodeStream, Encode, Decode, Hints, ListModels,
    /// health, reflection), the control API (tenants, keys, policy, usage, audit) and Prometheus
    /// metrics. Settings: flag > environment (AIC_*) > config file > default.
    Serve(config::ServeArgs),
    /// Administer tenants, API keys, policies; read usage and the audit log (over the
    /// ControlService gRPC API of a running `aic serve`).
    Admin(admin::AdminArgs),
    /// List registered codecs and whether they can run here.
    Codecs,
    /// Encode a WAV file into a self-describing .aic file.
    Encode {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value = "aic")]
        codec: String,
        /// AIC level: number of codebooks sent (see `aic codecs`).
        #[arg(long, conflicts_with = "bitrate")]
        level: Option<u8>,
        /// Target bitrate for bitrate-driven codecs, e.g. 12k or 12000.
        #[arg(long)]
        bitrate: Option<String>,
        /// Container version: 1 (a 2-byte length per frame) or 2 (CRC-checked 1 s pages, about
        /// 0.5 byte of framing per frame; docs/bitstream.md §3.2). `aic decode` reads both.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        container: u8,
    },
    /// Decode a .aic file to WAV; everything needed comes from the file's header.
    Decode {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Conceal corrupt frames and stop quietly at a damaged tail instead of failing.
        #[arg(long)]
        lenient: bool,
    },
    /// Record live EncodeStream sessions of a running `aic serve` (its EgressService): start,
    /// stop, list, watch.
    Egress(egress_cli::EgressArgs),
    /// Re-render a .aic archive to Ogg/Opus, WebM, fragmented MP4, WAV, HLS, RTMP, SRT or a
    /// paged .aic, through the same GStreamer egress as live recordings.
    Render(render::RenderArgs),
    /// Compare codecs on speech: bitrate, quality, speed, latency (`aic bench load`: the
    /// many-stream pipeline).
    Bench(BenchArgs),
    /// Put AIC in the media path of an SFU: a publisher's audio goes through AIC and comes back.
    #[command(subcommand)]
    Attach(AttachCmd),
    /// Video (issue #14): encode, decode, and the rate–quality bench of the video encoders.
    #[command(subcommand)]
    Video(video_cli::VideoCmd),
}

#[derive(Subcommand)]
enum AttachCmd {
    /// Janus: `rtp_forward` a VideoRoom publisher's audio here, send it back through AIC as a
    /// Streaming mountpoint (Opus decoded from AIC) and optionally as AIC RTP; detaches
    /// cleanly on exit, SIGINT or SIGTERM, printing a summary (latency, CPU, bitrates).
    Janus(AttachJanusArgs),
}

#[derive(clap::Args)]
struct AttachJanusArgs {
    /// Janus HTTP API root.
    #[arg(long, default_value = "http://127.0.0.1:8088/janus")]
    url: String,
    #[arg(long)]
    room: u64,
    /// The VideoRoom publisher (participant id) whose audio goes through AIC.
    #[arg(long)]
    publisher: u64,
    /// The publisher's audio mid (default: read from the room).
    #[arg(long)]
    mid: Option<String>,
    /// `inproc` (the pipeline in this process) or the socket of `aic serve --bridge-socket`.
    #[arg(long, default_value = "inproc")]
    pipeline: String,
    /// API key (`aick_…`) sent when opening the stream on `aic serve --bridge-socket` (not
    /// needed for `inproc`, nor by a server run with `--auth off`).
    #[arg(long, env = "AIC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// AIC level (codebooks sent).
    #[arg(long, default_value_t = 6)]
    level: u8,
    /// Latency budget inside the pipeline per frame, ms.
    #[arg(long, default_value_t = 40)]
    budget_ms: u32,
    /// Streaming mountpoint id to create for the processed audio.
    #[arg(long, default_value_t = 4242)]
    mountpoint: u64,
    /// Also send the AIC RTP (with the frame-meta extension) to this UDP address.
    #[arg(long)]
    aic_dest: Option<std::net::SocketAddr>,
    #[arg(long, default_value_t = 120)]
    aic_pt: u8,
    #[arg(long, default_value_t = 5)]
    aic_ext_id: u8,
    /// Bitrate of the Opus re-encoded for legacy receivers, kbps.
    #[arg(long, default_value_t = 32)]
    opus_kbps: u32,
    /// The jitter buffer's initial target delay, ms (10..=500); the buffer then adapts it to
    /// the measured jitter (within 10..=300 ms: q95 of the relative delay + 5 ms).
    #[arg(long, default_value_t = 20)]
    jitter_ms: u32,
    /// Seconds to wait for the publisher's audio to appear in the room.
    #[arg(long, default_value_t = 10.0)]
    wait: f64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Also write the summary (JSON) here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Also take the publisher's video (VP8 or H.264) through AIC: decoded, re-encoded (AV1 by
    /// default) and sent as the mountpoint's video track; keyframes asked by RTCP PLI both ways.
    #[arg(long)]
    video: bool,
    /// The receivers' video encoder: av1 (libaom realtime), av1-svt, vp9, vp8, x264.
    #[arg(long, default_value = "av1")]
    video_encoder: String,
    /// The receivers' video bitrate, kbit/s.
    #[arg(long, default_value_t = 500)]
    video_kbps: u32,
    /// Payload type of the video track in the mountpoint.
    #[arg(long, default_value_t = 100)]
    video_pt: u8,
    /// The publisher's frame rate (the encoder's time base).
    #[arg(long, default_value_t = 30)]
    video_fps: u32,
    /// Record the publisher's audio (repeatable): a file (`.ogg`, `.webm`, `.mp4`, `.wav`), an
    /// HLS directory (`dir/` or `name.m3u8`), `rtmp://…`, `srt://…`, or a `.aic` archive of
    /// AIC's own frames. Existing files are never overwritten (`rec-2.ogg`, …).
    #[arg(long)]
    record: Vec<String>,
    /// Opus/AAC bitrate of the recordings, e.g. 32k.
    #[arg(long, default_value = "32k")]
    record_bitrate: String,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    sub: Option<BenchSub>,
    /// WAV files or directories of WAV files.
    inputs: Vec<PathBuf>,
    /// Comma-separated codecs and points, e.g. `opus@6k,opus-osce,aic@L2,codec2@3200` (default: all).
    #[arg(long)]
    codecs: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the rate–quality plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Skip the optional Python evaluator (PESQ-WB, ViSQOL).
    #[arg(long)]
    no_external: bool,
}

#[derive(Subcommand)]
enum BenchSub {
    /// Concealment under packet loss: AIC's vs repeat-last-frame, Opus PLC, Opus in-band FEC and
    /// libopus' deep PLC, at random and bursty loss; PLCMOS v2, DNSMOS, STOI.
    Loss(loss_bench::LossArgs),
    /// What recording costs (issue #13): concurrent recordings per core (Ogg/Opus and native
    /// .aic), memory per recording, start latency p50/p99, storage per hour of speech.
    Egress(egress_bench::EgressBenchArgs),
    /// Concurrent real-time EncodeStream sessions against `aic serve` on loopback, next to the
    /// same streams in process: the gRPC overhead as a ratio.
    Grpc {
        #[arg(long, default_value_t = 8)]
        streams: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 6)]
        level: u8,
        #[arg(long, default_value_t = 40)]
        budget_ms: u64,
        #[arg(long)]
        clips: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Session-open rate against a running `aic serve` (see scripts/store-load.sh): opens at a
    /// fixed rate (open loop), keys round-robin; open and first-frame latency percentiles.
    Opens {
        /// The server, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        addr: String,
        /// A file with one API key per line.
        #[arg(long)]
        keys_file: PathBuf,
        /// Opens per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// HTTP/2 connections the sessions are spread over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Reliability soak against a running `aic serve` (see scripts/soak.sh): real-time sessions
    /// that end normally, vanish mid-stream or send a malformed frame, for a while; server RSS
    /// samples and what was sent, for comparison with the metered usage.
    Soak {
        /// The server, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        addr: String,
        /// API key (or AIC_API_KEY); none for a server with --auth off.
        #[arg(long, env = "AIC_API_KEY")]
        key: Option<String>,
        #[arg(long, default_value_t = 64)]
        sessions: usize,
        /// Seconds.
        #[arg(long, default_value_t = 1800)]
        duration: u64,
        /// The server's pid, to sample its RSS.
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Many real-time streams through the batched pipeline: latency, batching, fallbacks, CPU.
    /// `--video`: published video streams instead (VP8 in → AV1 out, the face detector batched
    /// across them): frames out, encode and end-to-end latency, hints in time or late, PASS.
    Load {
        /// Streams per direction (`transcode`, `chain`: PCM-in → PCM-out paths); default 8
        /// (audio), 1 (`--video`); with `--sweep --video` the largest count tried.
        #[arg(long)]
        streams: Option<usize>,
        /// Seconds of real time per run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// What each stream is; `transcode` and `chain` also report CPU per stream.
        #[arg(long, value_enum, default_value_t = load::Mode::Both)]
        mode: load::Mode,
        /// AIC level of the encode streams.
        #[arg(long, default_value_t = 6)]
        level: u8,
        /// Latency budget per frame, ms (arrival to output).
        #[arg(long, default_value_t = 40)]
        budget_ms: u64,
        /// Find the largest stream count held in real time instead of one run.
        #[arg(long)]
        sweep: bool,
        /// Pipeline worker threads (each loads its own model sessions). Default: one per CPU.
        #[arg(long)]
        workers: Option<usize>,
        /// Speech clips the streams loop over (default: the shipped fixtures).
        #[arg(long)]
        clips: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
        /// Video streams (`aic_video::live`) instead of audio; `--workers` then counts encoder
        /// threads (default: one per stream).
        #[arg(long)]
        video: bool,
        /// --video: picture size, `360p`, `720p` or `WxH`.
        #[arg(long, default_value = "360p")]
        size: String,
        /// --video: frames per second of the publishers.
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// --video: the receivers' encoder: av1 (libaom realtime), av1-svt, vp9, vp8, x264.
        #[arg(long, default_value = "av1")]
        codec: String,
        /// --video: the receivers' target, kbit/s (default: what a browser sends for the size).
        #[arg(long)]
        kbps: Option<u32>,
        /// --video: libaom's realtime speed (`cpu-used`, 0..=10; default 8).
        #[arg(long)]
        av1_speed: Option<u8>,
        /// --video: threads per encoder (2: libaom spreads one large picture over two cores).
        #[arg(long, default_value_t = 1)]
        encoder_threads: u32,
        /// --video: hints from the face detector (`face`, needs ONNX Runtime; `detect`: the
        /// detector runs but no map goes to the encoders) or none.
        #[arg(long, value_enum, default_value_t = video_load::Roi::Face)]
        roi: video_load::Roi,
        /// --video: the clip every stream loops (default `$AIC_VIDEO_DIR` or
        /// `$HOME/.cache/aic/video`, `carphone.y4m`; FFmpeg's testsrc2 when absent).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// --video: the detector looks at every N-th frame of each stream.
        #[arg(long, default_value_t = 5)]
        detect_every: u64,
        /// --video: how long after its frame's arrival a detection may come back before the
        /// frames it covers go without hints, ms (default: three frame periods).
        #[arg(long)]
        ai_deadline_ms: Option<u64>,
        /// --video: the detector thread's nice value (encoders preempt it; 0 = same priority).
        #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
        detector_nice: i32,
    },
}

fn registry(model: Option<&Path>) -> CodecRegistry {
    let mut reg = CodecRegistry::with_builtin();
    aic_pipeline::register_aic(&mut reg, model);
    reg
}

/// One pipeline worker per CPU: each worker runs its model calls on one thread.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn check_workers(w: Option<usize>) -> Result<usize> {
    match w {
        None => Ok(default_workers()),
        Some(n @ 1..=64) => Ok(n),
        Some(n) => bail!("--workers {n} not in 1..=64"),
    }
}

/// Checks and assembles the options shared by `bench load` and `bench grpc`.
#[allow(clippy::too_many_arguments)] // one per CLI flag
fn load_options(
    streams: usize,
    max_streams: usize,
    duration: f64,
    level: u8,
    mode: load::Mode,
    budget_ms: u64,
    sweep: bool,
    clips: Option<PathBuf>,
) -> Result<load::Options> {
    if streams == 0 || streams > max_streams {
        bail!("--streams {streams} not in 1..={max_streams}");
    }
    if !(0.5..=600.0).contains(&duration) {
        bail!("--duration {duration} not in 0.5..=600 seconds");
    }
    let clips = clips.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/fixtures/speech")
    });
    Ok(load::Options {
        workers: default_workers(),
        streams,
        duration: std::time::Duration::from_secs_f64(duration),
        level,
        mode,
        budget: std::time::Duration::from_millis(budget_ms),
        sweep,
        clips,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aic: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let reg = registry(cli.model.as_deref());
    let model_dir = cli.model.clone();
    match cli.cmd {
        Cmd::Video(c) => video_cli::run(c)?,
        Cmd::Serve(mut args) => {
            args.model = model_dir;
            let file = match &args.config {
                Some(p) => config::read_file(p)?,
                None => config::FileConfig::default(),
            };
            let env_token = std::env::var("AIC_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            let s = config::resolve(&args, file, env_token, default_workers())?;
            if args.print_config {
                print!("{}", toml::to_string(&s)?);
                return Ok(());
            }
            config::init_logging(&s);
            aic_service::run(
                &s.model_dirs,
                &aic_service::Options {
                    listen: s.listen,
                    max_streams: s.max_streams,
                    metrics_listen: match s.metrics_listen.as_str() {
                        "off" => None,
                        a => Some(a.parse()?),
                    },
                    workers: s.workers,
                    data_dir: s.data_dir,
                    store_url: s.store_url,
                    bridge_socket: s.bridge_socket,
                    bridge_limits: aic_service::bridge::Limits {
                        allowed_uids: s.bridge_allowed_uids,
                        max_conns: s.bridge_max_conns,
                    },
                    auth: if s.auth == "off" {
                        aic_control::gate::Auth::Off
                    } else {
                        aic_control::gate::Auth::On
                    },
                    admin_token: s.admin_token,
                    key_cache_ttl: std::time::Duration::from_secs(s.key_cache_ttl_secs),
                    meter_flush: std::time::Duration::from_secs(s.meter_flush_secs),
                    shutdown_grace: std::time::Duration::from_secs(s.shutdown_grace_secs),
                    tls: match (s.tls_cert, s.tls_key) {
                        (Some(cert), Some(key)) => Some(aic_service::TlsFiles {
                            cert,
                            key,
                            client_ca: s.tls_client_ca,
                        }),
                        _ => None,
                    },
                    first_message_timeout: std::time::Duration::from_secs(
                        s.first_message_timeout_secs,
                    ),
                    idle_timeout: std::time::Duration::from_secs(s.idle_timeout_secs),
                    max_streams_per_connection: s.max_streams_per_connection,
                    tenant_slot_share: s.tenant_slot_share,
                    auth_failures_per_minute: s.auth_failures_per_minute,
                    egress_network: s.egress_network,
                },
                aic_service::shutdown_signal(),
            )?;
        }
        Cmd::Attach(AttachCmd::Janus(a)) => {
            if !(1..=12).contains(&a.level) {
                bail!("--level {} not in 1..=12", a.level);
            }
            if !(1..=14).contains(&a.aic_ext_id) || !(96..=127).contains(&a.aic_pt) {
                bail!("--aic-ext-id must be in 1..=14 and --aic-pt in 96..=127");
            }
            if !(6..=128).contains(&a.opus_kbps) || !(10..=500).contains(&a.jitter_ms) {
                bail!("--opus-kbps must be in 6..=128 and --jitter-ms in 10..=500");
            }
            attach::run(&attach::Options {
                url: a.url,
                room: a.room,
                publisher: a.publisher,
                mid: a.mid,
                pipeline: a.pipeline,
                api_key: aic_sfu_bridge::link::LinkKey::new(a.api_key.as_deref().unwrap_or(""))
                    .context("--api-key")?,
                model_dir: model_dir.unwrap_or_else(aic_pipeline::aic::default_model_dir),
                level: a.level,
                budget_ms: a.budget_ms,
                mountpoint: a.mountpoint,
                aic_dest: a.aic_dest,
                aic_pt: a.aic_pt,
                aic_ext_id: a.aic_ext_id,
                opus_kbps: a.opus_kbps,
                jitter_ms: a.jitter_ms,
                wait: std::time::Duration::from_secs_f64(a.wait.clamp(0.0, 600.0)),
                duration: a
                    .duration
                    .map(|d| std::time::Duration::from_secs_f64(d.clamp(0.0, 86_400.0))),
                summary: a.summary,
                record: a.record,
                record_bitrate_bps: render::parse_bps(&a.record_bitrate)
                    .context("--record-bitrate")?,
                video: if a.video {
                    let encoder = aic_video::EncoderKind::from_name(&a.video_encoder)
                        .with_context(|| format!("--video-encoder {}", a.video_encoder))?;
                    if !(30..=20_000).contains(&a.video_kbps)
                        || !(96..=127).contains(&a.video_pt)
                        || !(1..=120).contains(&a.video_fps)
                    {
                        bail!(
                            "--video-kbps must be in 30..=20000, --video-pt in 96..=127, \
                             --video-fps in 1..=120"
                        );
                    }
                    Some(video_attach::VideoOptions {
                        encoder,
                        kbps: a.video_kbps,
                        pt: a.video_pt,
                        fps: a.video_fps,
                    })
                } else {
                    None
                },
            })?;
        }
        Cmd::Admin(args) => admin::run(args)?,
        Cmd::Render(args) => render::run(&reg, args)?,
        Cmd::Egress(args) => egress_cli::run(args)?,
        Cmd::Codecs => {
            for d in reg.iter() {
                let status = match d.factory.availability() {
                    Ok(()) => "available".to_owned(),
                    Err(why) => format!("UNAVAILABLE: {why}"),
                };
                let ladder: Vec<String> = d.ladder.iter().map(ToString::to_string).collect();
                println!(
                    "{:<10} {:>5} Hz  points {:<28} {}\n           {}",
                    d.name,
                    d.sample_rate,
                    ladder.join(","),
                    status,
                    d.summary
                );
            }
        }
        Cmd::Encode {
            input,
            output,
            codec,
            level,
            bitrate,
            container: version,
        } => {
            let point = match (level, bitrate) {
                (Some(l), _) => Some(aic_codec::OperatingPoint::Level(l)),
                (None, Some(b)) => Some(bench::parse_point(&b)?),
                (None, None) => None,
            };
            let d = reg.get(&codec)?;
            let (pcm, sr) = audio::read_wav(&input)?;
            let pcm = resample(&pcm, sr, d.sample_rate)?;
            let e = transcode::encode(&reg, &codec, point, &pcm)?;
            let bytes = if version == container::VERSION_2 {
                let mut w = container::ArchiveWriter::new(Vec::new(), &e.header)?;
                for (i, p) in e.packets.iter().enumerate() {
                    w.push(i as u64, Some(p))?;
                }
                w.finish()?
            } else {
                transcode::to_container(&e)?
            };
            std::fs::write(&output, &bytes)
                .with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!(
                "{} -> {}: {} {} , {} frames, {:.2} kbps, {} bytes",
                input.display(),
                output.display(),
                e.header.info.codec,
                e.header.info.point,
                e.packets.len(),
                transcode::bitrate_bps(&e) / 1000.0,
                bytes.len()
            );
        }
        Cmd::Decode {
            input,
            output,
            lenient,
        } => {
            // A stream, never the whole file in memory: header first, then one packet at a
            // time; the decode loop stops where the header says the clip ends.
            let file = std::fs::File::open(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let mut packets = container::PacketReader::new(std::io::BufReader::new(file))
                .with_context(|| format!("{}", input.display()))?;
            let h = packets.header().clone();
            let d = transcode::decode(&reg, &mut packets, lenient)
                .with_context(|| format!("{}", input.display()))?;
            // Only lenient mode gets here with these set (strict mode failed above).
            let r = &d.report;
            if let Some(e) = &r.stopped_by {
                eprintln!(
                    "warning: {}: {e}; stopped there, keeping the {} frames before it",
                    input.display(),
                    r.decoded_packets
                );
            }
            if r.excess_packets > 0 {
                eprintln!(
                    "warning: {}: {} packets past the {} that total_samples needs were ignored",
                    input.display(),
                    r.excess_packets,
                    r.expected_packets
                );
            }
            if (d.pcm.len() as u64) < h.total_samples && !lenient {
                bail!(
                    "{}: decoded {} of {} samples",
                    input.display(),
                    d.pcm.len(),
                    h.total_samples
                );
            }
            audio::write_wav(&output, &d.pcm, d.sample_rate)?;
            eprintln!(
                "{} -> {}: {} {} at {} Hz, {:.2} s, {} frames concealed",
                input.display(),
                output.display(),
                h.info.codec,
                h.info.point,
                d.sample_rate,
                d.pcm.len() as f64 / f64::from(d.sample_rate),
                d.concealed
            );
        }
        Cmd::Bench(BenchArgs {
            sub:
                Some(BenchSub::Load {
                    streams,
                    duration,
                    sweep,
                    workers,
                    json,
                    video: true,
                    size,
                    fps,
                    codec,
                    kbps,
                    av1_speed,
                    encoder_threads,
                    roi,
                    clip,
                    detect_every,
                    ai_deadline_ms,
                    detector_nice,
                    ..
                }),
            ..
        }) => {
            let (width, height) = video_load::parse_size(&size)?;
            let streams = streams.unwrap_or(if sweep { 8 } else { 1 });
            if !(1..=64).contains(&streams) || !(1..=120).contains(&fps) {
                bail!("--streams must be in 1..=64, --fps in 1..=120");
            }
            if !(0.5..=600.0).contains(&duration) {
                bail!("--duration {duration} not in 0.5..=600 seconds");
            }
            if !(1..=300).contains(&detect_every) {
                bail!("--detect-every {detect_every} not in 1..=300");
            }
            let codec = aic_video::EncoderKind::from_name(&codec)
                .with_context(|| format!("--codec {codec}: av1, av1-svt, vp9, vp8 or x264"))?;
            let opts = video_load::Options {
                streams,
                sweep,
                width,
                height,
                fps,
                duration: std::time::Duration::from_secs_f64(duration),
                codec,
                kbps,
                av1_speed,
                encoder_threads: encoder_threads.clamp(1, 16),
                roi,
                workers: workers.unwrap_or(0).min(64),
                clip,
                detect_every,
                ai_deadline: ai_deadline_ms.map(std::time::Duration::from_millis),
                detector_nice: detector_nice.clamp(-20, 19),
            };
            let rep = video_load::run(&opts)?;
            print!("{}", video_load::table(&rep));
            if let Some(p) = &json {
                std::fs::write(p, serde_json::to_string_pretty(&rep)?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                eprintln!("report: {}", p.display());
            }
        }
        Cmd::Bench(BenchArgs {
            sub:
                Some(BenchSub::Load {
                    streams,
                    duration,
                    mode,
                    level,
                    budget_ms,
                    sweep,
                    workers,
                    clips,
                    json,
                    ..
                }),
            ..
        }) => {
            let streams = streams.unwrap_or(8);
            let dir = model_dir.unwrap_or_else(aic_pipeline::aic::default_model_dir);
            let mut opts =
                load_options(streams, 512, duration, level, mode, budget_ms, sweep, clips)?;
            opts.workers = check_workers(workers)?;
            let rep = load::run(&dir, &opts)?;
            print!("{}", load::table(&rep));
            if let Some(p) = &json {
                std::fs::write(p, serde_json::to_string_pretty(&rep)?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                eprintln!("report: {}", p.display());
            }
        }
        Cmd::Bench(BenchArgs {
            sub:
                Some(BenchSub::Grpc {
                    streams,
                    duration,
                    level,
                    budget_ms,
                    clips,
                    json,
                }),
            ..
        }) => {
            let dir = model_dir.unwrap_or_else(aic_pipeline::aic::default_model_dir);
            let opts = load_options(
                streams,
                256,
                duration,
                level,
                load::Mode::Encode,
                budget_ms,
                false,
                clips,
            )?;
            let rep = grpc_bench::run(&dir, &opts)?;
            print!("{}", grpc_bench::table(&rep));
            if let Some(p) = &json {
                std::fs::write(p, serde_json::to_string_pretty(&rep)?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                eprintln!("report: {}", p.display());
            }
        }
        Cmd::Bench(BenchArgs {
            sub:
                Some(BenchSub::Opens {
                    addr,
                    keys_file,
                    rate,
                    duration,
                    connections,
                    json,
                }),
            ..
        }) => {
            let keys: Vec<String> = std::fs::read_to_string(&keys_file)
                .with_context(|| format!("cannot read {}", keys_file.display()))?
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            let rep = opens::run(opens::Options {
                url: addr,
                keys,
                rate,
                duration: std::time::Duration::from_secs(duration),
                connections,
            })?;
            let text = serde_json::to_string_pretty(&rep)?;
            println!("{text}");
            if let Some(p) = &json {
                std::fs::write(p, &text)
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
        }
        Cmd::Bench(BenchArgs {
            sub:
                Some(BenchSub::Soak {
                    addr,
                    key,
                    sessions,
                    duration,
                    server_pid,
                    json,
                }),
            ..
        }) => {
            if !(1..=1024).contains(&sessions) || !(1..=86_400).contains(&duration) {
                bail!("--sessions must be in 1..=1024 and --duration in 1..=86400");
            }
            let clips = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/fixtures/speech");
            let speech = load::speech(&clips)?
                .iter()
                .map(|&x| (x.clamp(-1.0, 1.0) * 32767.0) as i16)
                .collect();
            let rep = soak::run(soak::Options {
                url: addr,
                key,
                sessions,
                duration: std::time::Duration::from_secs(duration),
                server_pid,
                speech,
            })?;
            let text = serde_json::to_string_pretty(&rep)?;
            println!("{text}");
            if let Some(p) = &json {
                std::fs::write(p, &text)
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
        }
        Cmd::Bench(BenchArgs {
            sub: Some(BenchSub::Loss(a)),
            ..
        }) => loss_bench::main(&reg, &a)?,
        Cmd::Bench(BenchArgs {
            sub: Some(BenchSub::Egress(a)),
            ..
        }) => egress_bench::run(&reg, &a)?,
        Cmd::Bench(BenchArgs {
            sub: None,
            inputs,
            codecs,
            json,
            plot,
            no_external,
        }) => {
            if inputs.is_empty() {
                bail!("aic bench needs WAV files or directories (or `aic bench load`)");
            }
            let opts = bench::Options {
                inputs,
                codecs,
                json,
                plot,
                external: !no_external,
            };
            let rep = bench::run(&reg, &opts)?;
            print!("{}", bench::table(&rep));
            if let Some(p) = &opts.json {
                std::fs::write(p, serde_json::to_string_pretty(&rep)?)
                    .with_context(|| format!("cannot write {}", p.display()))?;
                eprintln!("report: {}", p.display());
            }
            if let Some(p) = &opts.plot {
                plot::write_svg(&rep, p)?;
                eprintln!("plot: {}", p.display());
            }
        }
    }
    Ok(())
}
