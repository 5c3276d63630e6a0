//! Compression hints: which AIC level (or Opus) a stream should use on its current network,
//! decided from the *measured* rate–quality table of the loaded model, not from constants.
//!
//! The table is the JSON report `aic bench` writes (`models/<model>/rate_quality.json`, made on
//! held-out speech when the model is exported): one row per codec and operating point with its
//! measured bitrate and quality. A hint is a pure function of that table and the network state,
//! so it is cheap (called often) and stateless.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Leave generous headroom; switch to Opus as soon as it is as good.
    Conservative,
    Adaptive,
    /// Use nearly all the bandwidth for AIC.
    Aggressive,
}

impl Mode {
    /// Share of the estimated bandwidth the media may use.
    fn headroom(self) -> f64 {
        match self {
            Mode::Conservative => 0.6,
            Mode::Adaptive => 0.8,
            Mode::Aggressive => 0.95,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetState {
    pub bandwidth_kbps: f64,
    /// 0..=1.
    pub loss: f64,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
}

/// One measured operating point.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Row {
    pub codec: String,
    pub point: String,
    pub bitrate_kbps: f64,
    #[serde(default)]
    pub stoi: Option<f64>,
    #[serde(default)]
    pub pesq_wb: Option<f64>,
    #[serde(default)]
    pub visqol: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RateQualityTable {
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    /// `false`: send Opus at `bitrate_kbps` instead of AIC.
    pub use_aic: bool,
    /// AIC level (0 when `use_aic` is false).
    pub level: u8,
    pub bitrate_kbps: f64,
    pub expected: Row,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HintError {
    #[error("rate-quality table: {0}")]
    Table(String),
    #[error("invalid network state: {0}")]
    Input(String),
}

/// Quality score used to compare rows: STOI, the metric every row has.
fn quality(r: &Row) -> f64 {
    r.stoi.unwrap_or(0.0)
}

impl RateQualityTable {
    pub fn from_json(text: &str) -> Result<Self, HintError> {
        let t: RateQualityTable =
            serde_json::from_str(text).map_err(|e| HintError::Table(e.to_string()))?;
        if !t.rows.iter().any(|r| r.codec == "aic") {
            return Err(HintError::Table("no AIC rows".into()));
        }
        if t.rows
            .iter()
            .any(|r| !r.bitrate_kbps.is_finite() || r.bitrate_kbps <= 0.0)
        {
            return Err(HintError::Table("a row has no valid bitrate".into()));
        }
        Ok(t)
    }

    fn aic_levels(&self) -> impl Iterator<Item = (u8, &Row)> {
        self.rows
            .iter()
            .filter(|r| r.codec == "aic")
            .filter_map(|r| {
                r.point
                    .strip_prefix('L')
                    .and_then(|l| l.parse::<u8>().ok())
                    .map(|l| (l, r))
            })
    }

    pub fn hint(&self, net: &NetState, mode: Mode) -> Result<Hint, HintError> {
        if !(net.bandwidth_kbps.is_finite() && net.bandwidth_kbps > 0.0) {
            return Err(HintError::Input(format!(
                "bandwidth {} kbps",
                net.bandwidth_kbps
            )));
        }
        if !(0.0..=1.0).contains(&net.loss) {
            return Err(HintError::Input(format!("loss {} not in 0..=1", net.loss)));
        }
        // Loss eats into the usable rate; lossy, jittery paths get extra headroom.
        let penalty =
            (1.0 - 2.0 * net.loss).max(0.3) * if net.jitter_ms > 60.0 { 0.8 } else { 1.0 };
        let budget = net.bandwidth_kbps * mode.headroom() * penalty;
        let mut levels: Vec<(u8, &Row)> = self.aic_levels().collect();
        levels.sort_by(|a, b| a.1.bitrate_kbps.total_cmp(&b.1.bitrate_kbps));
        let (lowest_level, lowest) = *levels
            .first()
            .ok_or_else(|| HintError::Table("no AIC levels".into()))?;
        let fitting = levels
            .iter()
            .filter(|(_, r)| r.bitrate_kbps <= budget)
            .max_by(|a, b| quality(a.1).total_cmp(&quality(b.1)));
        let Some(&(level, aic)) = fitting else {
            return Ok(Hint {
                use_aic: true,
                level: lowest_level,
                bitrate_kbps: lowest.bitrate_kbps,
                expected: lowest.clone(),
                reason: format!(
                    "only {budget:.1} kbps usable: the lowest level ({:.2} kbps) is all that can be tried",
                    lowest.bitrate_kbps
                ),
            });
        };
        // Opus (plain, what every receiver decodes) when it fits and is at least as good.
        let opus = self
            .rows
            .iter()
            .filter(|r| r.codec == "opus" && r.bitrate_kbps <= budget)
            .max_by(|a, b| quality(a).total_cmp(&quality(b)));
        let margin = if mode == Mode::Conservative {
            0.0
        } else {
            0.01
        };
        if let Some(o) = opus
            && quality(o) >= quality(aic) + margin
        {
            return Ok(Hint {
                use_aic: false,
                level: 0,
                bitrate_kbps: o.bitrate_kbps,
                expected: o.clone(),
                reason: format!(
                    "{budget:.1} kbps usable: Opus {} (STOI {:.3}) is at least as good as AIC L{level} (STOI {:.3})",
                    o.point,
                    quality(o),
                    quality(aic)
                ),
            });
        }
        Ok(Hint {
            use_aic: true,
            level,
            bitrate_kbps: aic.bitrate_kbps,
            expected: aic.clone(),
            reason: format!("{budget:.1} kbps usable: best measured AIC level that fits"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RateQualityTable {
        let row = |codec: &str, point: &str, kbps: f64, stoi: f64| Row {
            codec: codec.into(),
            point: point.into(),
            bitrate_kbps: kbps,
            stoi: Some(stoi),
            pesq_wb: None,
            visqol: None,
        };
        RateQualityTable {
            rows: vec![
                row("aic", "L1", 1.5, 0.70),
                row("aic", "L4", 3.0, 0.80),
                row("aic", "L12", 6.5, 0.86),
                row("opus", "6k", 6.0, 0.90),
                row("opus", "12k", 11.5, 0.97),
            ],
        }
    }

    fn net(kbps: f64, loss: f64) -> NetState {
        NetState {
            bandwidth_kbps: kbps,
            loss,
            rtt_ms: 50.0,
            jitter_ms: 10.0,
        }
    }

    #[test]
    fn picks_from_the_measured_table() {
        let t = table();
        let h = t.hint(&net(5.0, 0.0), Mode::Adaptive).unwrap(); // 4 kbps usable
        assert!(h.use_aic && h.level == 4, "{h:?}");
        let h = t.hint(&net(30.0, 0.0), Mode::Adaptive).unwrap(); // Opus 12k fits and beats AIC
        assert!(!h.use_aic && h.bitrate_kbps == 11.5, "{h:?}");
        let h = t.hint(&net(1.0, 0.0), Mode::Aggressive).unwrap(); // nothing fits
        assert_eq!((h.use_aic, h.level), (true, 1));
        // Loss shrinks the usable rate: the same link gets a lower level.
        let clean = t.hint(&net(9.0, 0.0), Mode::Aggressive).unwrap();
        let lossy = t.hint(&net(9.0, 0.25), Mode::Aggressive).unwrap();
        assert!(
            lossy.bitrate_kbps < clean.bitrate_kbps,
            "{lossy:?} vs {clean:?}"
        );
        // Conservative keeps more headroom than aggressive.
        let c = t.hint(&net(7.0, 0.0), Mode::Conservative).unwrap();
        let a = t.hint(&net(7.0, 0.0), Mode::Aggressive).unwrap();
        assert!(c.bitrate_kbps <= a.bitrate_kbps);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let t = table();
        assert!(t.hint(&net(f64::NAN, 0.0), Mode::Adaptive).is_err());
        assert!(t.hint(&net(10.0, 1.5), Mode::Adaptive).is_err());
        assert!(RateQualityTable::from_json("{\"rows\": []}").is_err());
        assert!(RateQualityTable::from_json("nope").is_err());
    }
}
