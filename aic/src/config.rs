//! `aic serve` settings: one documented precedence, **flag > environment (`AIC_*`) > config
//! file (`--config`/`AIC_CONFIG`, TOML) > default**. Clap merges flag and environment (every
//! field is optional there, so "not given" is visible); [`resolve`] lays that over the file and
//! the defaults. `aic serve --print-config` shows the result without serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The models `aic serve` loads when none is given (no `--model-dir`/`AIC_MODEL_DIRS`, no
/// `--model`/`AIC_MODEL_DIR`, no `model_dirs` in the file): directories under the repository's
/// `models/`, the default model first. Which model is the default is this one line.
pub const DEFAULT_MODELS: &[&str] = &["aic-speech-v2", "aic-speech-v1"];

/// Most model directories one server loads (each has its own pipeline and model sessions).
pub const MAX_MODELS: usize = 8;

/// [`DEFAULT_MODELS`] as directories.
pub fn default_model_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    DEFAULT_MODELS.iter().map(|m| root.join(m)).collect()
}

/// Flags (each also read from its `AIC_*` variable).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file (keys as in `--print-config`).
    #[arg(long, env = "AIC_CONFIG")]
    pub config: Option<PathBuf>,
    /// A model directory to serve; repeat the flag (or comma-separate in the variable) to serve
    /// several side by side, each picked by its `model_id`. The first is the default: requests
    /// that name no model, and the bridge link [default: `--model`/AIC_MODEL_DIR if given, else
    /// the repository's models/aic-speech-v2 and models/aic-speech-v1].
    #[arg(long = "model-dir", env = "AIC_MODEL_DIRS", value_delimiter = ',')]
    pub model_dirs: Vec<PathBuf>,
    /// The global `--model`/`AIC_MODEL_DIR` (one directory), below `--model-dir`.
    #[arg(skip)]
    pub model: Option<PathBuf>,
    /// gRPC address [default: 127.0.0.1:50051].
    #[arg(long, env = "AIC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Pipeline slots: concurrent streams (each gRPC session and bridge stream is one), for the
    /// whole server, every model together [default: 64].
    #[arg(long, env = "AIC_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Pipeline worker threads per served model (each loads its own model sessions; two models
    /// run twice as many) [default: one per CPU].
    #[arg(long, env = "AIC_WORKERS")]
    pub workers: Option<usize>,
    /// Prometheus metrics over HTTP here, or "off" [default: 127.0.0.1:9464].
    #[arg(long, env = "AIC_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Where the server keeps its state: the SQLite store and the admin token
    /// [default: $XDG_DATA_HOME/aic or ~/.local/share/aic].
    #[arg(long, env = "AIC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Control store URL: `sqlite://…` or `postgres://user@host:port/db`
    /// [default: SQLite file control.db in the data dir].
    #[arg(long, env = "AIC_STORE_URL")]
    pub store_url: Option<String>,
    /// Also serve the SFU bridge link (`aic attach janus`) on this Unix socket; a stale socket
    /// file from a dead server is replaced [default: off].
    #[arg(long, env = "AIC_BRIDGE_SOCKET")]
    pub bridge_socket: Option<PathBuf>,
    /// Only these peer uids may use the bridge socket (checked with SO_PEERCRED); repeat the
    /// flag, or comma-separate in the variable [default: any uid the socket's mode 0660 admits].
    #[arg(
        long = "bridge-allowed-uid",
        env = "AIC_BRIDGE_ALLOWED_UIDS",
        value_delimiter = ','
    )]
    pub bridge_allowed_uids: Vec<u32>,
    /// Bridge connections served at once; more are refused with a message [default: 64].
    #[arg(long, env = "AIC_BRIDGE_MAX_CONNS")]
    pub bridge_max_conns: Option<usize>,
    /// API keys on the codec API: "on", or "off" for local development (loopback only)
    /// [default: on].
    #[arg(long, env = "AIC_AUTH")]
    pub auth: Option<String>,
    /// Seconds a checked API key is trusted before the store is asked again; revocations apply
    /// within this [default: 5].
    #[arg(long, env = "AIC_KEY_CACHE_TTL_SECS")]
    pub key_cache_ttl_secs: Option<u64>,
    /// Seconds between usage flushes to the store (also at every session end's next flush and at
    /// shutdown) [default: 10].
    #[arg(long, env = "AIC_METER_FLUSH_SECS")]
    pub meter_flush_secs: Option<u64>,
    /// Seconds open sessions get to finish after SIGTERM before they are cut [default: 10].
    #[arg(long, env = "AIC_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Log format: "text" or "json" [default: text].
    #[arg(long, env = "AIC_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long, env = "AIC_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// TLS certificate chain (PEM) for the gRPC port; with `--tls-key`, the port speaks TLS only.
    #[arg(long, env = "AIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) matching `--tls-cert`.
    #[arg(long, env = "AIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM): clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "AIC_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC on a non-loopback address (refused without it: API keys would
    /// cross the network in clear text).
    #[arg(long, env = "AIC_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Seconds a new stream may take to send its `open` message before DEADLINE_EXCEEDED
    /// [default: 10].
    #[arg(long, env = "AIC_FIRST_MESSAGE_TIMEOUT_SECS")]
    pub first_message_timeout_secs: Option<u64>,
    /// Seconds a stream may go without a message before it is ended with DEADLINE_EXCEEDED and
    /// its pipeline slot freed [default: 30].
    #[arg(long, env = "AIC_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Concurrent gRPC streams one HTTP/2 connection may open [default: 64].
    #[arg(long, env = "AIC_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Largest share of the pipeline's slots one tenant's sessions may hold together, in
    /// (0, 1]; 1 lets one tenant take every slot [default: 0.5]. Not applied with auth off.
    #[arg(long, env = "AIC_TENANT_SLOT_SHARE")]
    pub tenant_slot_share: Option<f64>,
    /// Failed authentications one client address may make per minute before its calls are
    /// refused (RESOURCE_EXHAUSTED) until the minute is over [default: 20].
    #[arg(long, env = "AIC_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Let EgressService push to rtmp:// and srt:// URLs that API clients name (the server then
    /// connects where a key holder says: enable only where that is wanted) [default: false].
    /// File outputs always go to `<data-dir>/egress/<tenant>/`.
    #[arg(long, env = "AIC_EGRESS_NETWORK", num_args = 0..=1, default_missing_value = "true")]
    pub egress_network: Option<bool>,
    /// Print the resolved settings (TOML, secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The config file: the same keys as the flags, with underscores. The admin token may be given
/// here or in `AIC_ADMIN_TOKEN` (never as a flag: flags show in `ps`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    model_dirs: Option<Vec<PathBuf>>,
    listen: Option<SocketAddr>,
    max_streams: Option<usize>,
    workers: Option<usize>,
    metrics_listen: Option<String>,
    data_dir: Option<PathBuf>,
    store_url: Option<String>,
    bridge_socket: Option<PathBuf>,
    bridge_allowed_uids: Option<Vec<u32>>,
    bridge_max_conns: Option<usize>,
    auth: Option<String>,
    admin_token: Option<String>,
    key_cache_ttl_secs: Option<u64>,
    meter_flush_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    log_format: Option<String>,
    log_level: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    insecure: Option<bool>,
    first_message_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_streams_per_connection: Option<u32>,
    tenant_slot_share: Option<f64>,
    auth_failures_per_minute: Option<u32>,
    egress_network: Option<bool>,
}

/// Resolved settings.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Settings {
    /// The served models' directories, the default first.
    pub model_dirs: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub max_streams: usize,
    pub workers: usize,
    pub metrics_listen: String,
    pub data_dir: PathBuf,
    pub store_url: String,
    /// The SFU bridge link socket; absent = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_socket: Option<PathBuf>,
    /// Peer uids allowed on the bridge socket; empty = any the socket's mode admits.
    pub bridge_allowed_uids: Vec<u32>,
    pub bridge_max_conns: usize,
    pub auth: String,
    /// Only from the file or `AIC_ADMIN_TOKEN`; otherwise the server makes one in the data dir.
    #[serde(skip)]
    pub admin_token: Option<String>,
    pub key_cache_ttl_secs: u64,
    pub meter_flush_secs: u64,
    pub shutdown_grace_secs: u64,
    pub log_format: String,
    pub log_level: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    pub insecure: bool,
    pub first_message_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_streams_per_connection: u32,
    pub tenant_slot_share: f64,
    pub auth_failures_per_minute: u32,
    pub egress_network: bool,
}

/// The default data directory: `$XDG_DATA_HOME/aic`, else `~/.local/share/aic`, else `./aic-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("aic");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/aic"),
        None => PathBuf::from("aic-data"),
    }
}

pub fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// flag/env (already merged by clap) > file > default; then checks every value.
pub fn resolve(
    a: &ServeArgs,
    f: FileConfig,
    env_admin_token: Option<String>,
    default_workers: usize,
) -> Result<Settings> {
    let data_dir = a
        .data_dir
        .clone()
        .or(f.data_dir)
        .unwrap_or_else(default_data_dir);
    let s = Settings {
        // An empty list from clap is "not given"; the one-directory `--model` comes after the
        // list flag and before the file.
        model_dirs: Some(a.model_dirs.clone())
            .filter(|v| !v.is_empty())
            .or_else(|| a.model.clone().map(|m| vec![m]))
            .or(f.model_dirs)
            .unwrap_or_else(default_model_dirs),
        listen: a
            .listen
            .or(f.listen)
            .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("literal")),
        max_streams: a.max_streams.or(f.max_streams).unwrap_or(64),
        workers: a.workers.or(f.workers).unwrap_or(default_workers),
        metrics_listen: a
            .metrics_listen
            .clone()
            .or(f.metrics_listen)
            .unwrap_or_else(|| "127.0.0.1:9464".into()),
        store_url: a
            .store_url
            .clone()
            .or(f.store_url)
            .unwrap_or_else(|| aic_control::store::Store::sqlite_url(&data_dir)),
        data_dir,
        bridge_socket: a.bridge_socket.clone().or(f.bridge_socket),
        // An empty list from clap is "not given".
        bridge_allowed_uids: Some(a.bridge_allowed_uids.clone())
            .filter(|v| !v.is_empty())
            .or(f.bridge_allowed_uids)
            .unwrap_or_default(),
        bridge_max_conns: a
            .bridge_max_conns
            .or(f.bridge_max_conns)
            .unwrap_or(aic_service::bridge::DEFAULT_MAX_CONNS),
        auth: a.auth.clone().or(f.auth).unwrap_or_else(|| "on".into()),
        admin_token: env_admin_token.or(f.admin_token),
        key_cache_ttl_secs: a.key_cache_ttl_secs.or(f.key_cache_ttl_secs).unwrap_or(5),
        meter_flush_secs: a.meter_flush_secs.or(f.meter_flush_secs).unwrap_or(10),
        shutdown_grace_secs: a
            .shutdown_grace_secs
            .or(f.shutdown_grace_secs)
            .unwrap_or(10),
        log_format: a
            .log_format
            .clone()
            .or(f.log_format)
            .unwrap_or_else(|| "text".into()),
        log_level: a
            .log_level
            .clone()
            .or(f.log_level)
            .unwrap_or_else(|| "info".into()),
        tls_cert: a.tls_cert.clone().or(f.tls_cert),
        tls_key: a.tls_key.clone().or(f.tls_key),
        tls_client_ca: a.tls_client_ca.clone().or(f.tls_client_ca),
        insecure: a.insecure.or(f.insecure).unwrap_or(false),
        first_message_timeout_secs: a
            .first_message_timeout_secs
            .or(f.first_message_timeout_secs)
            .unwrap_or(10),
        idle_timeout_secs: a.idle_timeout_secs.or(f.idle_timeout_secs).unwrap_or(30),
        max_streams_per_connection: a
            .max_streams_per_connection
            .or(f.max_streams_per_connection)
            .unwrap_or(64),
        tenant_slot_share: a.tenant_slot_share.or(f.tenant_slot_share).unwrap_or(0.5),
        auth_failures_per_minute: a
            .auth_failures_per_minute
            .or(f.auth_failures_per_minute)
            .unwrap_or(20),
        egress_network: a.egress_network.or(f.egress_network).unwrap_or(false),
    };
    if !(1..=MAX_MODELS).contains(&s.model_dirs.len()) {
        bail!(
            "{} model directories; serve 1..={MAX_MODELS}",
            s.model_dirs.len()
        );
    }
    if let Some(d) = s.model_dirs.iter().find(|d| d.as_os_str().is_empty()) {
        bail!("model_dirs has an empty entry ({d:?})");
    }
    if !(1..=1024).contains(&s.max_streams) {
        bail!("max_streams {} not in 1..=1024", s.max_streams);
    }
    if !(1..=64).contains(&s.workers) {
        bail!("workers {} not in 1..=64", s.workers);
    }
    if !(1..=4096).contains(&s.bridge_max_conns) {
        bail!("bridge_max_conns {} not in 1..=4096", s.bridge_max_conns);
    }
    if s.metrics_listen != "off" && s.metrics_listen.parse::<SocketAddr>().is_err() {
        bail!(
            "metrics_listen {:?} is not an address or \"off\"",
            s.metrics_listen
        );
    }
    match s.auth.as_str() {
        "on" => {}
        // Keys off is for a developer's own machine: never on an address others can reach.
        "off" if s.listen.ip().is_loopback() => {}
        "off" => bail!(
            "auth off is only allowed on a loopback address (listen is {})",
            s.listen
        ),
        a => bail!("auth {a:?} is not \"on\" or \"off\""),
    }
    if !(1..=3600).contains(&s.key_cache_ttl_secs) {
        bail!(
            "key_cache_ttl_secs {} not in 1..=3600",
            s.key_cache_ttl_secs
        );
    }
    if !(1..=86_400).contains(&s.meter_flush_secs) {
        bail!("meter_flush_secs {} not in 1..=86400", s.meter_flush_secs);
    }
    if s.shutdown_grace_secs > 3600 {
        bail!(
            "shutdown_grace_secs {} not in 0..=3600",
            s.shutdown_grace_secs
        );
    }
    if !matches!(s.log_format.as_str(), "text" | "json") {
        bail!("log_format {:?} is not \"text\" or \"json\"", s.log_format);
    }
    if s.log_level.parse::<tracing::Level>().is_err() {
        bail!(
            "log_level {:?} is not error/warn/info/debug/trace",
            s.log_level
        );
    }
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), Some(_)) | (None, None) => {}
        _ => bail!("tls_cert and tls_key go together"),
    }
    if s.tls_client_ca.is_some() && s.tls_cert.is_none() {
        bail!("tls_client_ca needs tls_cert and tls_key");
    }
    if s.tls_cert.is_none() && !s.listen.ip().is_loopback() && !s.insecure {
        bail!(
            "plaintext gRPC on {} would send API keys in clear text: give --tls-cert and \
             --tls-key, or --insecure to accept that",
            s.listen
        );
    }
    if !(1..=600).contains(&s.first_message_timeout_secs) {
        bail!(
            "first_message_timeout_secs {} not in 1..=600",
            s.first_message_timeout_secs
        );
    }
    if !(1..=3600).contains(&s.idle_timeout_secs) {
        bail!("idle_timeout_secs {} not in 1..=3600", s.idle_timeout_secs);
    }
    if !(1..=1024).contains(&s.max_streams_per_connection) {
        bail!(
            "max_streams_per_connection {} not in 1..=1024",
            s.max_streams_per_connection
        );
    }
    if !(s.tenant_slot_share > 0.0 && s.tenant_slot_share <= 1.0) {
        bail!("tenant_slot_share {} not in (0, 1]", s.tenant_slot_share);
    }
    if !(1..=10_000).contains(&s.auth_failures_per_minute) {
        bail!(
            "auth_failures_per_minute {} not in 1..=10000",
            s.auth_failures_per_minute
        );
    }
    if let Some(t) = &s.admin_token {
        aic_control::key::check_admin_token_form(t).context("admin_token")?;
    }
    Ok(s)
}

/// Structured logs on stderr, as text or one JSON object per line.
pub fn init_logging(s: &Settings) {
    let level: tracing::Level = s.log_level.parse().unwrap_or(tracing::Level::INFO);
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not take the server down: tracing-subscriber would otherwise
        // report the failed write with `eprintln!`, which panics on a broken pipe.
        .log_internal_errors(false)
        .with_max_level(level)
        .with_target(false);
    // A second init (tests in one process) keeps the first subscriber.
    let _ = if s.log_format == "json" {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(t: &str) -> FileConfig {
        toml::from_str(t).unwrap()
    }

    #[test]
    fn flag_or_env_beats_file_beats_default() {
        let f = || {
            file(
                "listen = \"127.0.0.1:7000\"\nmax_streams = 3\nlog_format = \"json\"\n\
                 data_dir = \"/tmp/aic-x\"\n",
            )
        };
        let none = ServeArgs::default();
        let s = resolve(&none, f(), None, 2).unwrap();
        assert_eq!(s.max_streams, 3);
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(s.log_format, "json");
        assert_eq!(s.store_url, "sqlite:///tmp/aic-x/control.db?mode=rwc");
        assert_eq!(s.auth, "on", "default is safe");
        assert_eq!(s.workers, 2);
        let flags = ServeArgs {
            max_streams: Some(7),
            ..ServeArgs::default()
        };
        let s = resolve(&flags, f(), None, 2).unwrap();
        assert_eq!((s.max_streams, s.listen.port()), (7, 7000));
        let s = resolve(&none, FileConfig::default(), None, 2).unwrap();
        assert_eq!(s.max_streams, 64);
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
    }

    #[test]
    fn model_dirs_follow_the_precedence() {
        let f = || file("model_dirs = [\"m/a\", \"m/b\"]\n");
        let none = ServeArgs::default();
        let s = resolve(&none, FileConfig::default(), None, 1).unwrap();
        assert_eq!(s.model_dirs, default_model_dirs());
        assert_eq!(s.model_dirs.len(), DEFAULT_MODELS.len());
        let s = resolve(&none, f(), None, 1).unwrap();
        assert_eq!(s.model_dirs, [PathBuf::from("m/a"), PathBuf::from("m/b")]);
        let legacy = ServeArgs {
            model: Some("m/x".into()),
            ..ServeArgs::default()
        };
        let s = resolve(&legacy, f(), None, 1).unwrap();
        assert_eq!(s.model_dirs, [PathBuf::from("m/x")]);
        let flags = ServeArgs {
            model_dirs: vec!["m/c".into(), "m/d".into()],
            model: Some("m/x".into()),
            ..ServeArgs::default()
        };
        let s = resolve(&flags, f(), None, 1).unwrap();
        assert_eq!(s.model_dirs, [PathBuf::from("m/c"), PathBuf::from("m/d")]);
        let many = ServeArgs {
            model_dirs: vec!["m".into(); MAX_MODELS + 1],
            ..ServeArgs::default()
        };
        assert!(resolve(&many, FileConfig::default(), None, 1).is_err());
    }

    #[test]
    fn bridge_settings_follow_the_precedence() {
        let f = || file("bridge_allowed_uids = [1000, 1001]\nbridge_max_conns = 8\n");
        let none = ServeArgs::default();
        let s = resolve(&none, FileConfig::default(), None, 1).unwrap();
        assert_eq!(
            (s.bridge_allowed_uids.clone(), s.bridge_max_conns),
            (vec![], 64)
        );
        let s = resolve(&none, f(), None, 1).unwrap();
        assert_eq!(
            (s.bridge_allowed_uids.clone(), s.bridge_max_conns),
            (vec![1000, 1001], 8)
        );
        let flags = ServeArgs {
            bridge_allowed_uids: vec![5],
            bridge_max_conns: Some(2),
            ..ServeArgs::default()
        };
        let s = resolve(&flags, f(), None, 1).unwrap();
        assert_eq!(
            (s.bridge_allowed_uids.clone(), s.bridge_max_conns),
            (vec![5], 2)
        );
        let zero = ServeArgs {
            bridge_max_conns: Some(0),
            ..ServeArgs::default()
        };
        assert!(resolve(&zero, FileConfig::default(), None, 1).is_err());
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("max_stream = 3").is_err());
        let off_public = ServeArgs {
            auth: Some("off".into()),
            listen: Some("0.0.0.0:50051".parse().unwrap()),
            ..ServeArgs::default()
        };
        let e = resolve(&off_public, FileConfig::default(), None, 1).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let bad_token = resolve(
            &ServeArgs::default(),
            FileConfig::default(),
            Some("secret".into()),
            1,
        );
        assert!(bad_token.is_err());
        let log = ServeArgs {
            log_format: Some("xml".into()),
            ..ServeArgs::default()
        };
        assert!(resolve(&log, FileConfig::default(), None, 1).is_err());
    }
}
