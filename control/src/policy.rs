//! What a key may do, decided by pure functions; and the key cache, fed `now`.
//!
//! The codec API asks once per session (or unary call), never per frame: [`decide`] takes the
//! key's [`Policy`] and what the call wants, and answers with a [`Denial`] the caller maps to a
//! gRPC status (PERMISSION_DENIED or RESOURCE_EXHAUSTED).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Hint modes, the "modes" a key's policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Conservative,
    Adaptive,
    Aggressive,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Conservative, Mode::Adaptive, Mode::Aggressive];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Conservative => "conservative",
            Mode::Adaptive => "adaptive",
            Mode::Aggressive => "aggressive",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// A key's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The pricing option: AIC on or off for this key.
    pub aic_enabled: bool,
    /// Empty = every mode.
    pub allowed_modes: Vec<Mode>,
    /// 0 = no cap below the model's highest level.
    pub max_level: u32,
    /// 0 = no per-key limit (the pipeline's slots still apply).
    pub max_streams: u32,
}

impl Default for Policy {
    /// What a new key gets unless told otherwise: AIC on, everything allowed, 8 streams.
    fn default() -> Self {
        Self {
            aic_enabled: true,
            allowed_modes: Vec::new(),
            max_level: 0,
            max_streams: 8,
        }
    }
}

impl Policy {
    /// Modes as stored: comma-separated names, empty = all.
    pub fn modes_text(&self) -> String {
        self.allowed_modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn parse_modes<S: AsRef<str>>(names: &[S]) -> Result<Vec<Mode>, String> {
        let mut v = Vec::new();
        for n in names {
            let n = n.as_ref().trim();
            if n.is_empty() {
                continue;
            }
            let m = Mode::parse(n).ok_or_else(|| {
                format!("unknown mode {n:?} (conservative, adaptive, aggressive)")
            })?;
            if !v.contains(&m) {
                v.push(m);
            }
        }
        Ok(v)
    }

    pub fn allows_mode(&self, m: Mode) -> bool {
        self.allowed_modes.is_empty() || self.allowed_modes.contains(&m)
    }

    /// The highest level this key may use with a model whose highest level is `model_max`.
    pub fn level_cap(&self, model_max: u32) -> u32 {
        if self.max_level == 0 {
            model_max
        } else {
            self.max_level.min(model_max)
        }
    }
}

/// What a call wants from the codec API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Encode at this level (already resolved: 0 never reaches here).
    Encode {
        level: u32,
    },
    Decode,
    Hints {
        mode: Mode,
    },
    /// Model listing: allowed to every valid key.
    ListModels,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// PERMISSION_DENIED.
    Forbidden(String),
    /// RESOURCE_EXHAUSTED.
    Limit(String),
}

/// The decision for one call: policy against what it wants and the key's open sessions.
pub fn decide(p: &Policy, want: Want, open_streams: u32) -> Result<(), Denial> {
    let aic = match want {
        Want::ListModels => return Ok(()),
        Want::Encode { .. } | Want::Decode | Want::Hints { .. } => true,
    };
    if aic && !p.aic_enabled {
        return Err(Denial::Forbidden(
            "AIC is off for this API key (enable it in the key's policy)".into(),
        ));
    }
    if let Want::Hints { mode } = want
        && !p.allows_mode(mode)
    {
        return Err(Denial::Forbidden(format!(
            "mode {} is not allowed for this API key (allowed: {})",
            mode.name(),
            p.modes_text()
        )));
    }
    if let Want::Encode { level } = want
        && p.max_level != 0
        && level > p.max_level
    {
        return Err(Denial::Forbidden(format!(
            "level {level} is above this API key's max level {}",
            p.max_level
        )));
    }
    if !matches!(want, Want::Hints { .. }) && p.max_streams != 0 && open_streams >= p.max_streams {
        return Err(Denial::Limit(format!(
            "this API key already has {open_streams} of its {} concurrent sessions open",
            p.max_streams
        )));
    }
    Ok(())
}

/// A key as the codec API needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub key_id: String,
    pub tenant_id: String,
    pub secret_sha256: String,
    pub revoked: bool,
    pub policy: Policy,
}

/// Keys looked up recently, so a session open costs a store query at most once per TTL per
/// key; revocations and policy changes apply within the TTL. Unknown keys are cached too
/// (`None`), so a flood of bad keys does not become a flood of queries. Sans-IO: `now` is given.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<String, (Instant, Option<KeyGrant>)>,
}

impl KeyCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
        }
    }

    /// `Some(entry)` when fresh; `None` when the store must be asked.
    pub fn get(&self, key_id: &str, now: Instant) -> Option<Option<&KeyGrant>> {
        let (at, g) = self.entries.get(key_id)?;
        (now.saturating_duration_since(*at) < self.ttl).then_some(g.as_ref())
    }

    pub fn put(&mut self, key_id: &str, grant: Option<KeyGrant>, now: Instant) {
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(key_id) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.max_entries {
                self.entries.clear(); // bounded memory beats a perfect hit rate
            }
        }
        self.entries.insert(key_id.to_owned(), (now, grant));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aic_off_forbids_aic_but_not_listing() {
        let p = Policy {
            aic_enabled: false,
            ..Policy::default()
        };
        assert!(matches!(
            decide(&p, Want::Encode { level: 1 }, 0),
            Err(Denial::Forbidden(_))
        ));
        assert!(matches!(
            decide(&p, Want::Decode, 0),
            Err(Denial::Forbidden(_))
        ));
        assert_eq!(decide(&p, Want::ListModels, 100), Ok(()));
    }

    #[test]
    fn level_modes_and_streams() {
        let p = Policy {
            aic_enabled: true,
            allowed_modes: vec![Mode::Conservative],
            max_level: 4,
            max_streams: 2,
        };
        assert_eq!(decide(&p, Want::Encode { level: 4 }, 1), Ok(()));
        assert!(matches!(
            decide(&p, Want::Encode { level: 5 }, 0),
            Err(Denial::Forbidden(_))
        ));
        assert!(matches!(decide(&p, Want::Decode, 2), Err(Denial::Limit(_))));
        assert_eq!(
            decide(
                &p,
                Want::Hints {
                    mode: Mode::Conservative
                },
                9
            ),
            Ok(())
        );
        assert!(matches!(
            decide(
                &p,
                Want::Hints {
                    mode: Mode::Aggressive
                },
                0
            ),
            Err(Denial::Forbidden(_))
        ));
        assert_eq!(p.level_cap(8), 4);
        assert_eq!(Policy::default().level_cap(8), 8);
        let unlimited = Policy {
            max_streams: 0,
            ..Policy::default()
        };
        assert_eq!(decide(&unlimited, Want::Decode, 10_000), Ok(()));
    }

    #[test]
    fn modes_parse_and_print() {
        let m = Policy::parse_modes(&["adaptive", " conservative", "adaptive", ""]).unwrap();
        assert_eq!(m, vec![Mode::Adaptive, Mode::Conservative]);
        assert!(Policy::parse_modes(&["fast"]).is_err());
        let p = Policy {
            allowed_modes: m,
            ..Policy::default()
        };
        assert_eq!(p.modes_text(), "adaptive,conservative");
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut c = KeyCache::new(Duration::from_secs(5), 2);
        c.put("a", None, t0);
        assert_eq!(c.get("a", t0 + Duration::from_secs(4)), Some(None));
        assert_eq!(c.get("a", t0 + Duration::from_secs(5)), None);
        c.put("b", None, t0);
        c.put("c", None, t0 + Duration::from_secs(1));
        assert!(c.entries.len() <= 2);
        assert!(c.get("c", t0 + Duration::from_secs(1)).is_some());
    }
}
