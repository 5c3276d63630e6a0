//! `aic.v1.ControlService` (`proto/aic/v1/control.proto`): the admin API over the store. Every
//! call needs the admin token; every change is written to the audit log with who (the actor
//! the client names, and the admin token's fingerprint), what, when and from where (peer).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aic_proto::v1 as pb;
use aic_proto::v1::control_service_server::ControlService;
use tonic::{Request, Response, Status};

use crate::meter::Usage;
use crate::policy::Policy;
use crate::store::{KeyRecord, Store, UsageRow};
use crate::{Error, key, unix_ms};

#[derive(Debug)]
pub struct Control {
    store: Store,
    admin_sha256: String,
    admin_fp: String,
    max_level: u32,
}

impl Control {
    /// `admin_token`: the token admin calls must present (`authorization: Bearer …`).
    pub fn new(store: Store, admin_token: &str) -> Self {
        Self {
            store,
            admin_sha256: key::sha256_hex(admin_token.as_bytes()),
            admin_fp: key::fingerprint(admin_token),
            max_level: MAX_LEVEL,
        }
    }

    /// The highest level a policy may cap at: the served model's codebook count (by default
    /// the bitstream's highest level, 15).
    pub fn with_max_level(mut self, max_level: u32) -> Self {
        self.max_level = max_level.clamp(1, MAX_LEVEL);
        self
    }

    /// Checks the admin token; returns (who, peer) for the audit log.
    fn admin<T>(&self, req: &Request<T>) -> Result<(String, String), Status> {
        let md = req.metadata();
        let tok = key::bearer(md.get("authorization").map(|v| v.as_bytes()), None);
        let ok = tok.is_some_and(|t| {
            key::ct_eq(
                key::sha256_hex(t.as_bytes()).as_bytes(),
                self.admin_sha256.as_bytes(),
            )
        });
        if !ok {
            metrics::counter!("aic_auth_failures_total", "reason" => "admin").increment(1);
            return Err(Status::unauthenticated(
                "ControlService needs the admin token: `authorization: Bearer aica_…`",
            ));
        }
        let actor: String = md
            .get("x-aic-actor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let who = if actor.is_empty() {
            format!("admin:{}", self.admin_fp)
        } else {
            format!("{actor} (admin:{})", self.admin_fp)
        };
        let peer = req
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        Ok((who, peer))
    }

    async fn audit(&self, who: &str, peer: &str, action: &str, target: &str, detail: &str) {
        tracing::info!(who, peer, action, target, detail, "admin action");
        if let Err(e) = self
            .store
            .audit(now_ms(), who, action, target, peer, detail)
            .await
        {
            // The action already happened; losing its audit row must at least be loud.
            tracing::error!(error = %e, who, action, target, "audit write failed");
        }
    }
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Maps control errors to statuses a client can act on.
pub fn status(e: Error) -> Status {
    match e {
        Error::NotFound(m) => Status::not_found(format!("{m} not found")),
        Error::AlreadyExists(m) => Status::already_exists(format!("{m} already exists")),
        Error::Invalid(m) => Status::invalid_argument(m),
        Error::MalformedKey(m) => Status::invalid_argument(m),
        e @ (Error::Store(_) | Error::Migrate(_)) => {
            tracing::error!(error = %e, "control store");
            Status::unavailable("the control store cannot be reached; retry")
        }
        e => Status::internal(e.to_string()),
    }
}

/// The AIC bitstream's highest level (a 4-bit field, `docs/bitstream.md`).
pub const MAX_LEVEL: u32 = 15;
/// The most concurrent sessions a key's policy may allow (0 = no per-key limit).
pub const MAX_KEY_STREAMS: u32 = 100_000;

/// A policy from the wire, every number checked against its range (`max_level` against the
/// served model's levels).
pub fn policy_from_pb(p: &pb::Policy, max_level: u32) -> Result<Policy, Status> {
    if p.max_level > max_level {
        return Err(Status::invalid_argument(format!(
            "max_level {} not in 0..={max_level} (0 = the model's highest level)",
            p.max_level
        )));
    }
    if p.max_streams > MAX_KEY_STREAMS {
        return Err(Status::invalid_argument(format!(
            "max_streams {} not in 0..={MAX_KEY_STREAMS} (0 = no per-key limit)",
            p.max_streams
        )));
    }
    if p.allowed_modes.len() > 8 {
        return Err(Status::invalid_argument(format!(
            "{} allowed_modes given; there are 3 modes",
            p.allowed_modes.len()
        )));
    }
    Ok(Policy {
        aic_enabled: p.aic_enabled,
        allowed_modes: Policy::parse_modes(&p.allowed_modes)
            .map_err(|e| Status::invalid_argument(crate::excerpt(&e, 80)))?,
        max_level: p.max_level,
        max_streams: p.max_streams,
    })
}

pub fn policy_to_pb(p: &Policy) -> pb::Policy {
    pb::Policy {
        aic_enabled: p.aic_enabled,
        allowed_modes: p
            .allowed_modes
            .iter()
            .map(|m| m.name().to_owned())
            .collect(),
        max_level: p.max_level,
        max_streams: p.max_streams,
    }
}

fn key_to_pb(k: &KeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id.clone(),
        tenant_id: k.tenant_id.clone(),
        name: k.name.clone(),
        policy: Some(policy_to_pb(&k.policy)),
        created_unix_ms: k.created_ms,
        revoked_unix_ms: k.revoked_ms,
    }
}

fn usage_to_pb(key_id: &str, tenant_id: &str, period: i64, u: &Usage) -> pb::Usage {
    pb::Usage {
        key_id: key_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        period_start_unix_ms: period,
        sessions: u.sessions,
        media_seconds_encoded: u.media_ms_encoded as f64 / 1000.0,
        media_seconds_decoded: u.media_ms_decoded as f64 / 1000.0,
        media_seconds_egress: u.media_ms_egress as f64 / 1000.0,
        bytes_in: u.bytes_in,
        bytes_out: u.bytes_out,
        bytes_saved: u.bytes_saved,
    }
}

fn describe(p: &Policy) -> String {
    format!(
        "aic_enabled={} modes=[{}] max_level={} max_streams={}",
        p.aic_enabled,
        p.modes_text(),
        p.max_level,
        p.max_streams
    )
}

#[tonic::async_trait]
impl ControlService for Control {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let (who, peer) = self.admin(&req)?;
        crate::check_name("tenant", &req.get_ref().name).map_err(status)?;
        let t = self
            .store
            .create_tenant(&req.get_ref().name, now_ms())
            .await
            .map_err(status)?;
        self.audit(
            &who,
            &peer,
            "CreateTenant",
            &t.tenant_id,
            &format!("name={:?}", t.name),
        )
        .await;
        Ok(Response::new(pb::Tenant {
            tenant_id: t.tenant_id,
            name: t.name,
            created_unix_ms: t.created_ms,
        }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.admin(&req)?;
        let tenants = self.store.list_tenants().await.map_err(status)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants
                .into_iter()
                .map(|t| pb::Tenant {
                    tenant_id: t.tenant_id,
                    name: t.name,
                    created_unix_ms: t.created_ms,
                })
                .collect(),
        }))
    }

    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let (who, peer) = self.admin(&req)?;
        let r = req.get_ref();
        let policy = match &r.policy {
            Some(p) => policy_from_pb(p, self.max_level)?,
            None => Policy::default(),
        };
        if !r.name.is_empty() {
            crate::check_name("key", &r.name).map_err(status)?;
        }
        let (k, secret) = self
            .store
            .create_key(&r.tenant_id, &r.name, &policy, now_ms())
            .await
            .map_err(status)?;
        self.audit(
            &who,
            &peer,
            "CreateKey",
            &k.key_id,
            &format!(
                "tenant={} name={:?} {}",
                k.tenant_id,
                k.name,
                describe(&policy)
            ),
        )
        .await;
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key_to_pb(&k)),
            secret,
        }))
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.admin(&req)?;
        let keys = self
            .store
            .list_keys(&req.get_ref().tenant_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(key_to_pb).collect(),
        }))
    }

    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let (who, peer) = self.admin(&req)?;
        let id = &req.get_ref().key_id;
        let k = self.store.revoke_key(id, now_ms()).await.map_err(status)?;
        self.audit(&who, &peer, "RevokeKey", id, "").await;
        Ok(Response::new(key_to_pb(&k)))
    }

    async fn set_policy(
        &self,
        req: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let (who, peer) = self.admin(&req)?;
        let r = req.get_ref();
        let p = policy_from_pb(
            r.policy
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("`policy` is required"))?,
            self.max_level,
        )?;
        let k = self.store.set_policy(&r.key_id, &p).await.map_err(status)?;
        self.audit(&who, &peer, "SetPolicy", &r.key_id, &describe(&p))
            .await;
        Ok(Response::new(key_to_pb(&k)))
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.admin(&req)?;
        let r = req.get_ref();
        let rows = self
            .store
            .usage(&r.tenant_id, &r.key_id, r.since_unix_ms)
            .await
            .map_err(status)?;
        let mut totals: BTreeMap<(String, String), Usage> = BTreeMap::new();
        for UsageRow { account, usage, .. } in &rows {
            totals
                .entry((account.key_id.clone(), account.tenant_id.clone()))
                .or_default()
                .add(usage);
        }
        Ok(Response::new(pb::GetUsageResponse {
            rows: rows
                .iter()
                .map(|r| {
                    usage_to_pb(
                        &r.account.key_id,
                        &r.account.tenant_id,
                        r.period_ms,
                        &r.usage,
                    )
                })
                .collect(),
            totals: totals
                .iter()
                .map(|((k, t), u)| usage_to_pb(k, t, 0, u))
                .collect(),
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.admin(&req)?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n.min(1000),
        };
        let entries = self.store.list_audit(limit).await.map_err(status)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    id: e.id,
                    at_unix_ms: e.at_ms,
                    who: e.who,
                    action: e.action,
                    target: e.target,
                    peer: e.peer,
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}

/// Creates the data directory (mode 0700: it holds the admin token and the store) if absent.
pub fn ensure_data_dir(data_dir: &std::path::Path) -> crate::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|source| Error::Io {
            what: format!("creating {}", data_dir.display()),
            source,
        })
}

/// The admin token kept in the data directory (`admin.token`, mode 0600): read if there, made
/// at first start otherwise. Returns the token and whether it was just made.
pub fn admin_token_in(data_dir: &std::path::Path) -> crate::Result<(String, bool)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |what: String| move |source| Error::Io { what, source };
    ensure_data_dir(data_dir)?;
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            let t = t.trim().to_owned();
            key::check_admin_token_form(&t)?;
            Ok((t, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = key::generate_admin_token();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(format!("creating {}", path.display())))?;
            writeln!(f, "{t}").map_err(io(format!("writing {}", path.display())))?;
            Ok((t, true))
        }
        Err(e) => Err(Error::Io {
            what: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_reports_seconds_including_egress() {
        let u = super::Usage {
            sessions: 2,
            media_ms_encoded: 1_500,
            media_ms_decoded: 20,
            media_ms_egress: 61_250,
            ..super::Usage::default()
        };
        let p = super::usage_to_pb("k", "t", 7, &u);
        assert_eq!((p.key_id.as_str(), p.tenant_id.as_str()), ("k", "t"));
        assert_eq!((p.period_start_unix_ms, p.sessions), (7, 2));
        assert_eq!(p.media_seconds_encoded, 1.5);
        assert_eq!(p.media_seconds_decoded, 0.02);
        assert_eq!(p.media_seconds_egress, 61.25);
    }

    #[test]
    fn admin_token_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let (t, made) = super::admin_token_in(&dir).unwrap();
        assert!(made);
        let (t2, made2) = super::admin_token_in(&dir).unwrap();
        assert_eq!((t2, made2), (t, false));
        let mode = std::fs::metadata(dir.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
