//! `aic admin …`: the admin CLI, a thin client of `aic.v1.ControlService` (the same API any
//! other admin tool would use). The admin token comes from `AIC_ADMIN_TOKEN` or a token file
//! (default: the server's `<data dir>/admin.token`), never from a flag (flags show in `ps`).

use std::path::PathBuf;

use aic_proto::v1 as pb;
use aic_proto::v1::control_service_client::ControlServiceClient;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tonic::Request;
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "AIC_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    server: String,
    /// File holding the admin token [default: <data dir>/admin.token]; `AIC_ADMIN_TOKEN` wins.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// The server's data directory (to find admin.token).
    #[arg(long, env = "AIC_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Who is acting, for the audit log [default: $USER].
    #[arg(long, global = true)]
    actor: Option<String>,
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Tenants: `create NAME`, `list`.
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// API keys: `create`, `list`, `revoke`.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// A key's policy: `get KEY_ID`, `set KEY_ID [--aic on|off] [--modes …] …`.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Metered usage per key (totals; `--hourly` for the rows).
    Usage {
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        key: String,
        /// Only the last N hours (0 = all).
        #[arg(long, default_value_t = 0)]
        since_hours: u64,
        #[arg(long)]
        hourly: bool,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCmd {
    Create { name: String },
    List,
}

#[derive(Args, Debug, Default)]
struct PolicyArgs {
    /// AIC on or off for the key (the pricing option).
    #[arg(long, value_parser = ["on", "off"])]
    aic: Option<String>,
    /// Allowed hint modes, comma-separated (conservative,adaptive,aggressive); "all" = every mode.
    #[arg(long)]
    modes: Option<String>,
    /// Highest AIC level (0 = the model's highest).
    #[arg(long)]
    max_level: Option<u32>,
    /// Concurrent sessions (0 = no per-key limit).
    #[arg(long)]
    max_streams: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// A new API key; its secret is printed once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    Revoke {
        key_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    Get {
        key_id: String,
    },
    /// Changes only the given fields.
    Set {
        key_id: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

impl PolicyArgs {
    fn apply(&self, mut p: pb::Policy) -> pb::Policy {
        if let Some(a) = &self.aic {
            p.aic_enabled = a == "on";
        }
        if let Some(m) = &self.modes {
            p.allowed_modes = if m == "all" {
                Vec::new()
            } else {
                m.split(',').map(|s| s.trim().to_owned()).collect()
            };
        }
        if let Some(l) = self.max_level {
            p.max_level = l;
        }
        if let Some(s) = self.max_streams {
            p.max_streams = s;
        }
        p
    }
}

fn token(a: &AdminArgs) -> Result<String> {
    if let Ok(t) = std::env::var("AIC_ADMIN_TOKEN")
        && !t.is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let path = a.token_file.clone().unwrap_or_else(|| {
        a.data_dir
            .clone()
            .unwrap_or_else(crate::config::default_data_dir)
            .join("admin.token")
    });
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no admin token: set AIC_ADMIN_TOKEN or pass --token-file (tried {})",
            path.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

fn fmt_policy(p: Option<&pb::Policy>) -> String {
    let p = p.cloned().unwrap_or_default();
    format!(
        "aic={} modes={} max_level={} max_streams={}",
        if p.aic_enabled { "on" } else { "off" },
        if p.allowed_modes.is_empty() {
            "all".to_owned()
        } else {
            p.allowed_modes.join(",")
        },
        if p.max_level == 0 {
            "model".to_owned()
        } else {
            p.max_level.to_string()
        },
        if p.max_streams == 0 {
            "unlimited".to_owned()
        } else {
            p.max_streams.to_string()
        }
    )
}

fn fmt_key(k: &pb::ApiKey) -> String {
    format!(
        "{}  tenant={} name={:?} {}{}",
        k.key_id,
        k.tenant_id,
        k.name,
        fmt_policy(k.policy.as_ref()),
        if k.revoked_unix_ms != 0 {
            "  REVOKED"
        } else {
            ""
        }
    )
}

fn fmt_usage(u: &pb::Usage) -> String {
    format!(
        "{:<16} {:<20} {:>8} {:>12.1} {:>12.1} {:>12} {:>12} {:>12} {:>12.1}",
        u.key_id,
        u.tenant_id,
        u.sessions,
        u.media_seconds_encoded,
        u.media_seconds_decoded,
        u.bytes_in,
        u.bytes_out,
        u.bytes_saved,
        u.media_seconds_egress
    )
}

/// A request with the admin token and the actor's name in its metadata.
fn authed<T>(m: T, tok: &str, actor: &str) -> Result<Request<T>> {
    let mut r = Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {tok}").parse()?);
    if let Ok(v) = actor.parse() {
        r.metadata_mut().insert("x-aic-actor", v);
    }
    Ok(r)
}

pub fn run(a: AdminArgs) -> Result<()> {
    let tok = token(&a)?;
    let actor = a
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = Channel::from_shared(a.server.clone())
            .with_context(|| format!("--server {:?}", a.server))?
            .connect()
            .await
            .with_context(|| format!("cannot reach {}", a.server))?;
        let mut c = ControlServiceClient::new(channel);
        macro_rules! req {
            ($m:expr) => {
                authed($m, &tok, &actor)
            };
        }
        match a.cmd {
            AdminCmd::Tenant {
                cmd: TenantCmd::Create { name },
            } => {
                let t = c
                    .create_tenant(req!(pb::CreateTenantRequest { name })?)
                    .await?
                    .into_inner();
                println!("{}  {}", t.tenant_id, t.name);
            }
            AdminCmd::Tenant {
                cmd: TenantCmd::List,
            } => {
                for t in c
                    .list_tenants(req!(pb::ListTenantsRequest {})?)
                    .await?
                    .into_inner()
                    .tenants
                {
                    println!("{}  {}", t.tenant_id, t.name);
                }
            }
            AdminCmd::Key {
                cmd:
                    KeyCmd::Create {
                        tenant,
                        name,
                        policy,
                    },
            } => {
                let base = pb::Policy {
                    aic_enabled: true,
                    allowed_modes: Vec::new(),
                    max_level: 0,
                    max_streams: 8,
                };
                let r = c
                    .create_key(req!(pb::CreateKeyRequest {
                        tenant_id: tenant,
                        name,
                        policy: Some(policy.apply(base)),
                    })?)
                    .await?
                    .into_inner();
                let k = r.key.context("server sent no key")?;
                println!("{}", fmt_key(&k));
                println!("API key (shown once; store it now): {}", r.secret);
            }
            AdminCmd::Key {
                cmd: KeyCmd::List { tenant },
            } => {
                for k in c
                    .list_keys(req!(pb::ListKeysRequest { tenant_id: tenant })?)
                    .await?
                    .into_inner()
                    .keys
                {
                    println!("{}", fmt_key(&k));
                }
            }
            AdminCmd::Key {
                cmd: KeyCmd::Revoke { key_id },
            } => {
                let k = c
                    .revoke_key(req!(pb::RevokeKeyRequest { key_id })?)
                    .await?
                    .into_inner();
                println!("{}", fmt_key(&k));
            }
            AdminCmd::Policy {
                cmd: PolicyCmd::Get { key_id },
            } => {
                let keys = c
                    .list_keys(req!(pb::ListKeysRequest::default())?)
                    .await?
                    .into_inner()
                    .keys;
                let Some(k) = keys.iter().find(|k| k.key_id == key_id) else {
                    bail!("no key {key_id}");
                };
                println!("{}", fmt_policy(k.policy.as_ref()));
            }
            AdminCmd::Policy {
                cmd: PolicyCmd::Set { key_id, policy },
            } => {
                let keys = c
                    .list_keys(req!(pb::ListKeysRequest::default())?)
                    .await?
                    .into_inner()
                    .keys;
                let Some(k) = keys.into_iter().find(|k| k.key_id == key_id) else {
                    bail!("no key {key_id}");
                };
                let p = policy.apply(k.policy.unwrap_or_default());
                let k = c
                    .set_policy(req!(pb::SetPolicyRequest {
                        key_id,
                        policy: Some(p),
                    })?)
                    .await?
                    .into_inner();
                println!("{}", fmt_key(&k));
            }
            AdminCmd::Usage {
                tenant,
                key,
                since_hours,
                hourly,
            } => {
                let since = if since_hours == 0 {
                    0
                } else {
                    aic_control::unix_ms(std::time::SystemTime::now())
                        - (since_hours as i64) * 3_600_000
                };
                let u = c
                    .get_usage(req!(pb::GetUsageRequest {
                        tenant_id: tenant,
                        key_id: key,
                        since_unix_ms: since,
                    })?)
                    .await?
                    .into_inner();
                println!(
                    "{:<16} {:<20} {:>8} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
                    "key",
                    "tenant",
                    "sessions",
                    "enc_s",
                    "dec_s",
                    "bytes_in",
                    "bytes_out",
                    "bytes_saved",
                    "egress_s"
                );
                let rows = if hourly { &u.rows } else { &u.totals };
                for r in rows {
                    if hourly {
                        print!("{:>14} ", r.period_start_unix_ms / 1000);
                    }
                    println!("{}", fmt_usage(r));
                }
            }
            AdminCmd::Audit { limit } => {
                for e in c
                    .list_audit(req!(pb::ListAuditRequest { limit })?)
                    .await?
                    .into_inner()
                    .entries
                {
                    println!(
                        "{}  {}  {}  {}  from {}  {}",
                        e.at_unix_ms, e.who, e.action, e.target, e.peer, e.detail
                    );
                }
            }
        }
        Ok(())
    })
}
