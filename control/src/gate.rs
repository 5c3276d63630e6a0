//! The codec API's door: checks the API key when a session (or unary call) opens, applies the
//! key's policy and concurrent-session limit, and meters the session until it ends. Nothing here
//! runs per frame except the [`SessionCounters`](crate::meter::SessionCounters) adds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::limit::{FailureLimiter, Verdict};
use crate::meter::{Account, Meter, SessionMeter};
use crate::policy::{Denial, KeyCache, KeyGrant, Policy, Want, decide};
use crate::store::Store;
use crate::{Error, key, unix_ms};

/// Usage of a server started with `--auth off` is metered under this key id.
pub const ANONYMOUS: &str = "anonymous";

/// Whether the codec API asks for API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Every call needs a valid key (the default).
    On,
    /// Keys are ignored and everything is allowed, metered as [`ANONYMOUS`]: for local
    /// development only (the binary refuses it on a non-loopback address).
    Off,
}

#[derive(Debug)]
pub struct Gate {
    store: Store,
    auth: Auth,
    cache: Mutex<KeyCache>,
    open: Arc<Mutex<OpenCounts>>,
    /// Most sessions one tenant may hold at once (0 = no tenant limit).
    tenant_cap: u32,
    failures: Mutex<FailureLimiter>,
    pub meter: Meter,
}

/// Open sessions per key and per tenant.
#[derive(Debug, Default)]
struct OpenCounts {
    by_key: HashMap<String, u32>,
    by_tenant: HashMap<String, u32>,
}

fn decrement(m: &mut HashMap<String, u32>, k: &str) {
    if let Some(n) = m.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(k);
        }
    }
}

/// An admitted session: who it is, what it may do, its metering. Dropping it ends the session
/// (frees its per-key slot; its usage becomes pending for the next flush).
#[derive(Debug)]
pub struct Ticket {
    pub key_id: String,
    pub tenant_id: String,
    pub policy: Policy,
    pub meter: SessionMeter,
    open: Arc<Mutex<OpenCounts>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        decrement(&mut g.by_key, &self.key_id);
        decrement(&mut g.by_tenant, &self.tenant_id);
    }
}

fn unauthenticated(reason: &'static str, msg: &str) -> Status {
    metrics::counter!("aic_auth_failures_total", "reason" => reason).increment(1);
    Status::unauthenticated(msg.to_owned())
}

impl Gate {
    /// `key_ttl`: how long a looked-up key is trusted before the store is asked again (so
    /// revocations and policy changes apply within it).
    pub fn new(store: Store, auth: Auth, key_ttl: Duration) -> Self {
        Self {
            store,
            auth,
            cache: Mutex::new(KeyCache::new(key_ttl, 10_000)),
            open: Arc::default(),
            tenant_cap: 0,
            failures: Mutex::new(FailureLimiter::new(20, Duration::from_secs(60), 10_000)),
            meter: Meter::default(),
        }
    }

    /// Fair sharing: no tenant's sessions may hold more than `cap` sessions at once (0 = no
    /// limit). The server sets it from its slot count and `tenant_slot_share`, so one tenant
    /// (whatever its keys' `max_streams`) cannot take every pipeline slot. Not applied with
    /// auth off, where there are no tenants.
    pub fn with_tenant_cap(mut self, cap: u32) -> Self {
        self.tenant_cap = if self.auth == Auth::Off { 0 } else { cap };
        self
    }

    /// At most `per_minute` failed authentications per client address and minute; past that
    /// the address is refused (RESOURCE_EXHAUSTED) until its minute is over.
    pub fn with_failure_limit(mut self, per_minute: u32) -> Self {
        self.failures = Mutex::new(FailureLimiter::new(
            per_minute,
            Duration::from_secs(60),
            10_000,
        ));
        self
    }

    pub fn tenant_cap(&self) -> u32 {
        self.tenant_cap
    }

    pub fn auth(&self) -> Auth {
        self.auth
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Who is calling: the key in `authorization: Bearer …` or `x-api-key`, checked against the
    /// store (through the cache). UNAUTHENTICATED for a missing, malformed, unknown, wrong or
    /// revoked key; UNAVAILABLE when the store cannot be asked.
    pub async fn authenticate(&self, md: &MetadataMap) -> Result<KeyGrant, Status> {
        self.authenticate_from(md, None).await
    }

    /// [`authenticate`](Self::authenticate) for a caller at `peer`: failures are counted per
    /// address (see [`with_failure_limit`](Self::with_failure_limit)) and logged.
    pub async fn authenticate_from(
        &self,
        md: &MetadataMap,
        peer: Option<std::net::IpAddr>,
    ) -> Result<KeyGrant, Status> {
        if let Some(ip) = peer {
            let v = self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .check(ip, Instant::now());
            if let Verdict::Blocked { retry_in, first } = v {
                metrics::counter!("aic_auth_failures_total", "reason" => "rate_limited")
                    .increment(1);
                if first {
                    tracing::warn!(peer = %ip, retry_in_s = retry_in.as_secs(),
                        "too many failed authentications from this address; refusing it");
                }
                return Err(Status::resource_exhausted(format!(
                    "too many failed authentications from this address; retry in {} s",
                    retry_in.as_secs().max(1)
                )));
            }
        }
        let r = self.check_key(md).await;
        if let (Err(e), Some(ip)) = (&r, peer)
            && e.code() == tonic::Code::Unauthenticated
        {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failed(ip, Instant::now());
            tracing::info!(peer = %ip, reason = %crate::excerpt(e.message(), 120),
                "authentication failed");
        }
        r
    }

    async fn check_key(&self, md: &MetadataMap) -> Result<KeyGrant, Status> {
        if self.auth == Auth::Off {
            return Ok(KeyGrant {
                key_id: ANONYMOUS.into(),
                tenant_id: String::new(),
                secret_sha256: String::new(),
                revoked: false,
                policy: Policy {
                    max_streams: 0,
                    ..Policy::default()
                },
            });
        }
        let authz = md.get("authorization").map(|v| v.as_bytes());
        let xkey = md.get("x-api-key").map(|v| v.as_bytes());
        let Some(text) = key::bearer(authz, xkey) else {
            return Err(unauthenticated(
                "missing",
                "missing API key: send `authorization: Bearer aick_…` or `x-api-key: aick_…`",
            ));
        };
        let parsed = key::parse_key(text)
            .map_err(|e| unauthenticated("malformed", &format!("invalid API key: {e}")))?;
        let now = Instant::now();
        let cached = self
            .lock_cache()
            .get(&parsed.key_id, now)
            .map(|g| g.cloned());
        let grant = match cached {
            Some(g) => g,
            None => {
                let g = self
                    .store
                    .get_key(&parsed.key_id)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "key lookup failed");
                        Status::unavailable("the control store cannot be reached; retry")
                    })?
                    .map(|r| r.grant());
                self.lock_cache().put(&parsed.key_id, g.clone(), now);
                g
            }
        };
        let Some(grant) = grant else {
            return Err(unauthenticated("unknown", "invalid API key"));
        };
        if !key::ct_eq(
            grant.secret_sha256.as_bytes(),
            parsed.secret_sha256.as_bytes(),
        ) {
            return Err(unauthenticated("unknown", "invalid API key"));
        }
        if grant.revoked {
            return Err(unauthenticated(
                "revoked",
                &Error::Revoked(grant.key_id.clone()).to_string(),
            ));
        }
        Ok(grant)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a session: the policy decision and the per-key concurrent-session count, taken
    /// together under one lock so two opens cannot both take the last slot.
    pub fn admit(&self, grant: &KeyGrant, want: Want) -> Result<Ticket, Status> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.by_key.get(&grant.key_id).copied().unwrap_or(0);
        decide(&grant.policy, want, n).map_err(|d| match d {
            Denial::Forbidden(m) => {
                metrics::counter!("aic_policy_denials_total", "reason" => "forbidden").increment(1);
                Status::permission_denied(m)
            }
            Denial::Limit(m) => {
                metrics::counter!("aic_policy_denials_total", "reason" => "limit").increment(1);
                Status::resource_exhausted(m)
            }
        })?;
        let holds_slot = !matches!(want, Want::Hints { .. } | Want::ListModels);
        if holds_slot && self.tenant_cap > 0 {
            let t = open.by_tenant.get(&grant.tenant_id).copied().unwrap_or(0);
            if t >= self.tenant_cap {
                metrics::counter!("aic_policy_denials_total", "reason" => "tenant_share")
                    .increment(1);
                tracing::warn!(tenant = %grant.tenant_id, key = %grant.key_id, open = t,
                    "tenant at its share of the pipeline slots; session refused");
                return Err(Status::resource_exhausted(format!(
                    "this tenant already holds {t} sessions, its share of the server's slots; \
                     retry when one ends"
                )));
            }
        }
        *open.by_key.entry(grant.key_id.clone()).or_default() += 1;
        *open.by_tenant.entry(grant.tenant_id.clone()).or_default() += 1;
        drop(open);
        Ok(Ticket {
            key_id: grant.key_id.clone(),
            tenant_id: grant.tenant_id.clone(),
            policy: grant.policy.clone(),
            meter: self.meter.start(Account {
                key_id: grant.key_id.clone(),
                tenant_id: grant.tenant_id.clone(),
            }),
            open: self.open.clone(),
        })
    }

    /// Writes everything metered since the last flush; on failure it stays pending.
    pub async fn flush(&self) -> Result<usize, Error> {
        let taken = self.meter.take();
        let n = taken.len();
        match self
            .store
            .add_usage(&taken, unix_ms(SystemTime::now()))
            .await
        {
            Ok(()) => {
                metrics::counter!("aic_meter_flushes_total", "result" => "ok").increment(1);
                Ok(n)
            }
            Err(e) => {
                metrics::counter!("aic_meter_flushes_total", "result" => "error").increment(1);
                self.meter.restore(taken);
                Err(e)
            }
        }
    }

    /// Flushes every `every` until the task is dropped.
    pub async fn run_flusher(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "usage flush failed; kept for the next one");
            }
        }
    }
}
