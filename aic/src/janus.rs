//! A small client for the Janus HTTP API (the plain JSON-over-HTTP transport, loopback in
//! practice): sessions, plugin handles, synchronous plugin requests, the long-poll event queue.
//! Only what `aic attach janus` needs; every Janus or plugin error becomes an `anyhow` error
//! with Janus' own words.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct Janus {
    agent: ureq::Agent,
    /// Agent for the long poll (Janus holds it up to 30 s).
    poll_agent: ureq::Agent,
    base: String,
    pub session: u64,
    tx: AtomicU64,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

impl Janus {
    /// Creates a session on the Janus at `base` (e.g. `http://127.0.0.1:8088/janus`).
    pub fn connect(base: &str) -> Result<Self> {
        let mut j = Self {
            agent: agent(Duration::from_secs(5)),
            poll_agent: agent(Duration::from_secs(35)),
            base: base.trim_end_matches('/').to_owned(),
            session: 0,
            tx: AtomicU64::new(1),
        };
        let r = j.post(&j.base.clone(), json!({"janus": "create"}))?;
        j.session = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("Janus create: no session id in {r}"))?;
        Ok(j)
    }

    fn post(&self, url: &str, mut body: Value) -> Result<Value> {
        let t = self.tx.fetch_add(1, Ordering::Relaxed);
        body["transaction"] = json!(format!("aic-{t}"));
        let mut resp = self
            .agent
            .post(url)
            .send_json(&body)
            .with_context(|| format!("POST {url}"))?;
        let v: Value = resp
            .body_mut()
            .read_json()
            .with_context(|| format!("POST {url}: reply is not JSON"))?;
        if v["janus"] == "error" {
            bail!(
                "Janus error {}: {}",
                v["error"]["code"],
                v["error"]["reason"].as_str().unwrap_or("?")
            );
        }
        Ok(v)
    }

    fn session_url(&self) -> String {
        format!("{}/{}", self.base, self.session)
    }

    /// Attaches a handle to `plugin` (e.g. `janus.plugin.videoroom`).
    pub fn attach(&self, plugin: &str) -> Result<u64> {
        let r = self.post(
            &self.session_url(),
            json!({"janus": "attach", "plugin": plugin}),
        )?;
        r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("Janus attach {plugin}: no handle id in {r}"))
    }

    /// A synchronous plugin request: returns the plugin's `data`, or the plugin's error.
    pub fn request(&self, handle: u64, body: Value) -> Result<Value> {
        let what = body["request"].as_str().unwrap_or("?").to_owned();
        let r = self.post(
            &format!("{}/{handle}", self.session_url()),
            json!({"janus": "message", "body": body}),
        )?;
        let data = r["plugindata"]["data"].clone();
        if data.is_null() {
            bail!("Janus {what}: no plugin data in {r}");
        }
        if let Some(e) = data.get("error") {
            bail!("Janus {what}: {} ({})", e, data["error_code"]);
        }
        Ok(data)
    }

    /// An asynchronous plugin request: Janus acks now, the answer comes as an event.
    pub fn send_async(&self, handle: u64, body: Value) -> Result<()> {
        let r = self.post(
            &format!("{}/{handle}", self.session_url()),
            json!({"janus": "message", "body": body}),
        )?;
        if r["janus"] != "ack" && r["janus"] != "success" {
            bail!("Janus: unexpected reply {r}");
        }
        Ok(())
    }

    /// The next event of this session (long poll, at most ~30 s); None when none came.
    pub fn poll_event(&self) -> Result<Option<Value>> {
        let url = format!("{}?maxev=1", self.session_url());
        let mut resp = self
            .poll_agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let v: Value = resp.body_mut().read_json()?;
        Ok((v["janus"] != "keepalive").then_some(v))
    }

    pub fn keepalive(&self) -> Result<()> {
        self.post(&self.session_url(), json!({"janus": "keepalive"}))
            .map(|_| ())
    }

    pub fn detach(&self, handle: u64) -> Result<()> {
        self.post(
            &format!("{}/{handle}", self.session_url()),
            json!({"janus": "detach"}),
        )
        .map(|_| ())
    }

    pub fn destroy(&self) -> Result<()> {
        self.post(&self.session_url(), json!({"janus": "destroy"}))
            .map(|_| ())
    }
}
