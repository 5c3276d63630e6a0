//! The control store: SQLite (one embedded file, the default) or PostgreSQL, chosen by URL
//! (`sqlite://…`, `postgres://…`) through sqlx's `Any` driver, so one set of queries and one
//! schema serve both. Queries use `$N` placeholders, which both SQLite and PostgreSQL accept;
//! every integer is BIGINT (i64), since `Any` cannot widen INTEGER columns for PostgreSQL.
//! Migrations (`migrations/`, versioned, embedded at build time) run at open; each must be valid
//! for both backends (one directory serves both).

use sqlx::Row as _;
use sqlx::any::{AnyPoolOptions, AnyRow};

use crate::meter::{Account, Usage};
use crate::policy::{KeyGrant, Policy};
use crate::{Error, Result, key};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub name: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub name: String,
    pub secret_sha256: String,
    pub policy: Policy,
    pub created_ms: i64,
    /// 0 = not revoked.
    pub revoked_ms: i64,
}

impl KeyRecord {
    pub fn grant(&self) -> KeyGrant {
        KeyGrant {
            key_id: self.key_id.clone(),
            tenant_id: self.tenant_id.clone(),
            secret_sha256: self.secret_sha256.clone(),
            revoked: self.revoked_ms != 0,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub account: Account,
    pub period_ms: i64,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: String,
    pub at_ms: i64,
    pub who: String,
    pub action: String,
    pub target: String,
    pub peer: String,
    pub detail: String,
}

/// Where the store lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: sqlx::AnyPool,
    pub backend: Backend,
}

const HOUR_MS: i64 = 3_600_000;

/// Start of the hour `ms` falls in: usage rows are per key and hour.
pub fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

fn key_from_row(r: &AnyRow) -> Result<KeyRecord> {
    let modes: String = r.try_get("allowed_modes")?;
    let modes: Vec<&str> = modes.split(',').collect();
    Ok(KeyRecord {
        key_id: r.try_get("key_id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        secret_sha256: r.try_get("secret_sha256")?,
        policy: Policy {
            aic_enabled: r.try_get::<i64, _>("aic_enabled")? != 0,
            allowed_modes: Policy::parse_modes(&modes).map_err(Error::Invalid)?,
            max_level: r
                .try_get::<i64, _>("max_level")?
                .clamp(0, i64::from(u32::MAX)) as u32,
            max_streams: r
                .try_get::<i64, _>("max_streams")?
                .clamp(0, i64::from(u32::MAX)) as u32,
        },
        created_ms: r.try_get("created_ms")?,
        revoked_ms: r.try_get("revoked_ms")?,
    })
}

const KEY_COLUMNS: &str = "key_id, tenant_id, name, secret_sha256, aic_enabled, allowed_modes, \
                           max_level, max_streams, created_ms, revoked_ms";

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Store {
    /// Opens (creating an SQLite file if needed) and migrates the store at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::Invalid(
                "store URL must start with sqlite: or postgres:".into(),
            ));
        };
        let pool = AnyPoolOptions::new()
            // One writer at a time is all SQLite allows anyway; the control plane is light.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 4 })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// The SQLite URL of the store file in a data directory.
    pub fn sqlite_url(data_dir: &std::path::Path) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("control.db").display()
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn create_tenant(&self, name: &str, now_ms: i64) -> Result<Tenant> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(Error::Invalid("tenant name must be 1..=200 bytes".into()));
        }
        let t = Tenant {
            tenant_id: format!("t_{}", key::random_hex(8)),
            name: name.to_owned(),
            created_ms: now_ms,
        };
        sqlx::query("INSERT INTO tenants (tenant_id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(&t.tenant_id)
            .bind(&t.name)
            .bind(t.created_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if unique_violation(&e) {
                    Error::AlreadyExists(format!("tenant {name:?}"))
                } else {
                    e.into()
                }
            })?;
        Ok(t)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT tenant_id, name, created_ms FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Tenant {
                    tenant_id: r.try_get("tenant_id")?,
                    name: r.try_get("name")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    async fn tenant_exists(&self, tenant_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT tenant_id FROM tenants WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// A new key for a tenant; returns the record and the full key text (shown once).
    pub async fn create_key(
        &self,
        tenant_id: &str,
        name: &str,
        policy: &Policy,
        now_ms: i64,
    ) -> Result<(KeyRecord, String)> {
        if !self.tenant_exists(tenant_id).await? {
            return Err(Error::NotFound(format!("tenant {tenant_id:?}")));
        }
        let k = key::generate_key();
        let rec = KeyRecord {
            key_id: k.key_id,
            tenant_id: tenant_id.to_owned(),
            name: name.trim().to_owned(),
            secret_sha256: k.secret_sha256,
            policy: policy.clone(),
            created_ms: now_ms,
            revoked_ms: 0,
        };
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&rec.key_id)
        .bind(&rec.tenant_id)
        .bind(&rec.name)
        .bind(&rec.secret_sha256)
        .bind(i64::from(rec.policy.aic_enabled))
        .bind(rec.policy.modes_text())
        .bind(i64::from(rec.policy.max_level))
        .bind(i64::from(rec.policy.max_streams))
        .bind(rec.created_ms)
        .bind(rec.revoked_ms)
        .execute(&self.pool)
        .await?;
        Ok((rec, k.full))
    }

    pub async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    /// Keys of one tenant, or of all when `tenant_id` is empty.
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<KeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1 = '' OR tenant_id = $1) \
             ORDER BY tenant_id, created_ms, key_id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    pub async fn revoke_key(&self, key_id: &str, now_ms: i64) -> Result<KeyRecord> {
        sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE key_id = $2 AND revoked_ms = 0")
            .bind(now_ms)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        self.get_key(key_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("key {key_id:?}")))
    }

    pub async fn set_policy(&self, key_id: &str, p: &Policy) -> Result<KeyRecord> {
        let n = sqlx::query(
            "UPDATE api_keys SET aic_enabled = $1, allowed_modes = $2, max_level = $3, \
             max_streams = $4 WHERE key_id = $5",
        )
        .bind(i64::from(p.aic_enabled))
        .bind(p.modes_text())
        .bind(i64::from(p.max_level))
        .bind(i64::from(p.max_streams))
        .bind(key_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::NotFound(format!("key {key_id:?}")));
        }
        self.get_key(key_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("key {key_id:?}")))
    }

    /// Adds metered usage to each key's row for the hour `period_ms` (one transaction).
    pub async fn add_usage(&self, rows: &[(Account, Usage)], period_ms: i64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (a, u) in rows {
            sqlx::query(
                "INSERT INTO usage_hourly (key_id, tenant_id, period_ms, sessions, \
                 media_ms_encoded, media_ms_decoded, bytes_in, bytes_out, bytes_saved, \
                 media_ms_egress) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (key_id, period_ms) DO UPDATE SET \
                 sessions = usage_hourly.sessions + excluded.sessions, \
                 media_ms_encoded = usage_hourly.media_ms_encoded + excluded.media_ms_encoded, \
                 media_ms_decoded = usage_hourly.media_ms_decoded + excluded.media_ms_decoded, \
                 bytes_in = usage_hourly.bytes_in + excluded.bytes_in, \
                 bytes_out = usage_hourly.bytes_out + excluded.bytes_out, \
                 bytes_saved = usage_hourly.bytes_saved + excluded.bytes_saved, \
                 media_ms_egress = usage_hourly.media_ms_egress + excluded.media_ms_egress",
            )
            .bind(&a.key_id)
            .bind(&a.tenant_id)
            .bind(hour_of(period_ms))
            .bind(i(u.sessions))
            .bind(i(u.media_ms_encoded))
            .bind(i(u.media_ms_decoded))
            .bind(i(u.bytes_in))
            .bind(i(u.bytes_out))
            .bind(i(u.bytes_saved))
            .bind(i(u.media_ms_egress))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Usage rows (per key and hour), filtered; empty filters match everything.
    pub async fn usage(
        &self,
        tenant_id: &str,
        key_id: &str,
        since_ms: i64,
    ) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query(
            "SELECT key_id, tenant_id, period_ms, sessions, media_ms_encoded, media_ms_decoded, \
             media_ms_egress, bytes_in, bytes_out, bytes_saved FROM usage_hourly \
             WHERE ($1 = '' OR tenant_id = $1) AND ($2 = '' OR key_id = $2) AND period_ms >= $3 \
             ORDER BY key_id, period_ms",
        )
        .bind(tenant_id)
        .bind(key_id)
        .bind(hour_of(since_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    account: Account {
                        key_id: r.try_get("key_id")?,
                        tenant_id: r.try_get("tenant_id")?,
                    },
                    period_ms: r.try_get("period_ms")?,
                    usage: Usage {
                        sessions: u(r.try_get("sessions")?),
                        media_ms_encoded: u(r.try_get("media_ms_encoded")?),
                        media_ms_decoded: u(r.try_get("media_ms_decoded")?),
                        media_ms_egress: u(r.try_get("media_ms_egress")?),
                        bytes_in: u(r.try_get("bytes_in")?),
                        bytes_out: u(r.try_get("bytes_out")?),
                        bytes_saved: u(r.try_get("bytes_saved")?),
                    },
                })
            })
            .collect()
    }

    pub async fn audit(
        &self,
        at_ms: i64,
        who: &str,
        action: &str,
        target: &str,
        peer: &str,
        detail: &str,
    ) -> Result<()> {
        // Ids sort by time, then by this process's write order, then by a random part that
        // keeps ids of several servers sharing one PostgreSQL apart.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{at_ms:016x}{seq:016x}{}", key::random_hex(4));
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, who, action, target, peer, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(at_ms)
        .bind(who)
        .bind(action)
        .bind(target)
        .bind(peer)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Newest first.
    pub async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, who, action, target, peer, detail FROM audit_log \
             ORDER BY at_ms DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    who: r.try_get("who")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    peer: r.try_get("peer")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
