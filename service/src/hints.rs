//! `Hints` (level-or-Opus from the named model's measured rate–quality table, capped at the
//! key's level) and `ListModels` (every served model, the default first).

use std::path::Path;

use aic_control::policy::{KeyGrant, Want};
use aic_pipeline::hints::{Mode, NetState, RateQualityTable};
use aic_pipeline::model::AicModel;
use aic_proto::v1::{
    HintMode, HintsRequest, HintsResponse, Level, ListModelsRequest, ListModelsResponse, ModelInfo,
};
use tonic::{Request, Response, Status};

use crate::models::Served;
use crate::svc::{Svc, cap, code_name, count_rpc};

impl Svc {
    pub(crate) fn hints_inner(
        &self,
        grant: &KeyGrant,
        r: HintsRequest,
    ) -> Result<HintsResponse, Status> {
        let served = self.models.pick(&r.model_id)?;
        let table = served
            .table
            .as_ref()
            .map_err(|why| Status::failed_precondition(why.clone()))?;
        let mode = match HintMode::try_from(r.mode) {
            Ok(HintMode::Conservative) => Mode::Conservative,
            Ok(HintMode::Aggressive) => Mode::Aggressive,
            Ok(HintMode::Adaptive | HintMode::Unspecified) => Mode::Adaptive,
            Err(_) => return Err(Status::invalid_argument(format!("unknown mode {}", r.mode))),
        };
        let pmode = match mode {
            Mode::Conservative => aic_control::policy::Mode::Conservative,
            Mode::Adaptive => aic_control::policy::Mode::Adaptive,
            Mode::Aggressive => aic_control::policy::Mode::Aggressive,
        };
        drop(self.gate.admit(grant, Want::Hints { mode: pmode })?);
        for (name, v, max) in [
            ("bandwidth_kbps", r.bandwidth_kbps, 1e6),
            ("loss", r.loss, 1.0),
            ("rtt_ms", r.rtt_ms, 60_000.0),
            ("jitter_ms", r.jitter_ms, 60_000.0),
        ] {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(Status::invalid_argument(format!(
                    "{name} {v} not in 0..={max}"
                )));
            }
        }
        let net = NetState {
            bandwidth_kbps: r.bandwidth_kbps,
            loss: r.loss,
            rtt_ms: r.rtt_ms,
            jitter_ms: r.jitter_ms,
        };
        let mut h = table
            .hint(&net, mode)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cap = cap(served, grant);
        if h.use_aic && u32::from(h.level) > cap {
            // Never recommend a level the key may not encode at.
            h.level = cap as u8;
            // The measured row of the capped level, when the table has one.
            match table
                .rows
                .iter()
                .find(|r| r.codec == "aic" && r.point == format!("L{cap}"))
            {
                Some(row) => {
                    h.bitrate_kbps = row.bitrate_kbps;
                    h.expected = row.clone();
                }
                None => {
                    h.bitrate_kbps = expected_kbps(&served.model, h.level);
                    h.expected.stoi = None;
                    h.expected.pesq_wb = None;
                    h.expected.visqol = None;
                }
            }
            h.reason = format!("{} (capped at this API key's max level {cap})", h.reason);
        }
        Ok(HintsResponse {
            use_aic: h.use_aic,
            level: u32::from(h.level),
            bitrate_kbps: h.bitrate_kbps,
            expected_stoi: h.expected.stoi,
            expected_pesq_wb: h.expected.pesq_wb,
            expected_visqol: h.expected.visqol,
            reason: h.reason,
        })
    }

    pub(crate) async fn list_models_inner(
        &self,
        req: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let grant = self
            .gate
            .authenticate_from(req.metadata(), req.remote_addr().map(|a| a.ip()))
            .await
            .inspect_err(|e| count_rpc("ListModels", code_name(e)))?;
        self.gate
            .admit(&grant, Want::ListModels)
            .inspect_err(|e| count_rpc("ListModels", code_name(e)))
            .map(drop)?;
        Ok(Response::new(ListModelsResponse {
            models: self.models.all().iter().map(model_info).collect(),
        }))
    }
}

/// What `ListModels` says about one served model.
fn model_info(served: &Served) -> ModelInfo {
    let m = &served.model.manifest;
    ModelInfo {
        model_id: m.model_id.clone(),
        model_version: m.model_version.clone(),
        sample_rate: m.sample_rate,
        frame_ms: (m.frame_samples as u32 * 1000) / m.sample_rate,
        algorithmic_latency_ms: (m.frame_samples + m.decoder_delay_samples) as f64 * 1000.0
            / f64::from(m.sample_rate),
        levels: m
            .levels
            .iter()
            .map(|&l| Level {
                level: u32::from(l),
                bitrate_kbps: expected_kbps(&served.model, l),
            })
            .collect(),
    }
}

/// Expected bitrate of a level from the model's code statistics: the entropy of each sent
/// codebook's symbol distribution, plus the 16-bit frame header and about one byte of range-coder
/// termination per frame, at 50 frames/s.
pub(crate) fn expected_kbps(model: &AicModel, level: u8) -> f64 {
    let bits: f64 = model.manifest.entropy.frequencies[..usize::from(level)]
        .iter()
        .map(|f| {
            let total: f64 = f.iter().map(|&x| f64::from(x)).sum();
            f.iter()
                .map(|&x| f64::from(x) / total)
                .map(|p| -p * p.log2())
                .sum::<f64>()
        })
        .sum();
    (16.0 + bits + 6.0) * 50.0 / 1000.0
}

/// The model's measured rate–quality table (`rate_quality.json` beside the manifest), or why
/// `Hints` is unavailable.
pub(crate) fn load_table(model_dir: &Path) -> Result<RateQualityTable, String> {
    let table_path = model_dir.join("rate_quality.json");
    std::fs::read_to_string(&table_path)
        .map_err(|e| {
            format!(
                "no measured rate-quality table ({}: {e})",
                table_path.display()
            )
        })
        .and_then(|t| {
            RateQualityTable::from_json(&t).map_err(|e| format!("{}: {e}", table_path.display()))
        })
}
