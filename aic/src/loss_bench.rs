//! `aic bench loss`: how well each receiver conceals lost packets, scored.
//!
//! Every clip is encoded once per codec; then, for each loss pattern — random and bursty at the
//! given rates, seeded, the *same 20 ms slots* lost for every method — the packets are decoded
//! with the losses and the output is scored: PLCMOS v2 (the packet-loss-concealment MOS) and
//! DNSMOS P.835 OVRL through the optional Python evaluator (`scripts/eval_quality.py`, both from
//! the `speechmos` package), STOI in Rust. Methods:
//!
//! * `aic`: AIC with its decoder's concealment (`Decoder::decode_frame(None, ..)`);
//! * `aic-repeat`: AIC, each lost frame replaced by the last decoded 20 ms repeated, the decoder
//!   not run (the naive baseline);
//! * `opus`: libopus' classic PLC (the `opus` codec: decoder complexity 0);
//! * `opus-fec`: Opus with in-band FEC (LBRR, `packet_loss_perc` = the pattern's rate, as a
//!   sender told the loss rate would set it); a lost frame is rebuilt from the next packet's FEC
//!   data when that packet arrived (as `sfu-bridge`'s ingest does), else PLC;
//! * `opus-osce`: the `opus-osce` codec (wideband forced, decoder complexity 10), whose lost
//!   frames go through libopus' deep PLC, built in with OSCE/DRED.
//!
//! Rows: the original clip, each codec without loss, then every (pattern, rate) × method. Each
//! row's PLCMOS drop is measured from the same codec's loss-free decode, so codecs at different
//! bitrates compare on what the loss cost them.

use std::path::{Path, PathBuf};

use aic_codec::metrics;
use aic_codec::resample::resample;
use aic_codec::{CodecRegistry, OperatingPoint};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::bench::{self, EVAL_RATE};
use crate::transcode;

/// 20 ms at [`EVAL_RATE`]: the loss patterns are drawn over these slots.
const SLOT: usize = 320;
/// Realisations of the Gilbert–Elliott chain tried to hit the exact loss count.
const MAX_TRIES: usize = 20_000;

/// What the Python evaluator scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Score {
    /// PLCMOS v2 (about 1 s of CPU per clip).
    Plcmos,
    /// DNSMOS P.835 OVRL (several seconds per clip: it loops a short clip to 9 s windows).
    Dnsmos,
}

impl Score {
    /// The evaluator's name for it (`scripts/eval_quality.py --metrics`).
    fn key(self) -> &'static str {
        match self {
            Score::Plcmos => "plcmos",
            Score::Dnsmos => "dnsmos_ovrl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternKind {
    /// Exactly round(rate × frames) frames, chosen uniformly.
    Random,
    /// A two-state Gilbert–Elliott chain (loss in the bad state only) with the given mean
    /// burst, conditioned on exactly round(rate × frames) lost frames.
    Bursty,
}

impl PatternKind {
    fn name(self) -> &'static str {
        match self {
            PatternKind::Random => "random",
            PatternKind::Bursty => "bursty",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// AIC, lost frames concealed by its decoder.
    Aic,
    /// AIC, lost frames = the last decoded frame repeated (naive baseline).
    AicRepeat,
    /// Opus with libopus' classic PLC.
    Opus,
    /// Opus with in-band FEC from the next packet, else PLC.
    OpusFec,
    /// opus-osce: libopus' deep PLC and OSCE (decoder complexity 10).
    OpusOsce,
}

impl Method {
    const ALL: [Method; 5] = [
        Method::Aic,
        Method::AicRepeat,
        Method::Opus,
        Method::OpusFec,
        Method::OpusOsce,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Aic => "aic",
            Method::AicRepeat => "aic-repeat",
            Method::Opus => "opus",
            Method::OpusFec => "opus-fec",
            Method::OpusOsce => "opus-osce",
        }
    }

    fn is_aic(self) -> bool {
        matches!(self, Method::Aic | Method::AicRepeat)
    }

    /// The method whose loss-free decode this one's PLCMOS drop is measured from.
    fn clean_base(self) -> Method {
        match self {
            Method::Aic | Method::AicRepeat => Method::Aic,
            Method::Opus | Method::OpusFec => Method::Opus,
            Method::OpusOsce => Method::OpusOsce,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct LossArgs {
    /// WAV files or directories of WAV files (default: the shipped speech fixtures).
    pub inputs: Vec<PathBuf>,
    /// Methods, comma separated (default: all): aic, aic-repeat, opus, opus-fec, opus-osce.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub methods: Vec<Method>,
    /// AIC level (codebooks sent).
    #[arg(long, default_value_t = 6)]
    pub level: u8,
    /// Opus bitrate(s) of the Opus rows, comma separated (libopus 1.6 sends no in-band FEC at
    /// 16 kbps or below; at 24k it does).
    #[arg(long, value_delimiter = ',', default_value = "16k,24k")]
    pub opus_bitrate: Vec<String>,
    /// Loss rates in percent, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
    pub rates: Vec<f64>,
    /// Loss patterns, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "random,bursty"
    )]
    pub patterns: Vec<PatternKind>,
    /// Mean burst length of the bursty pattern, in 20 ms frames.
    #[arg(long, default_value_t = 3.0)]
    pub burst: f64,
    /// Seed of the loss patterns.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the table as tab-separated values here.
    #[arg(long)]
    pub tsv: Option<PathBuf>,
    /// What the Python evaluator scores, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "plcmos,dnsmos"
    )]
    pub scores: Vec<Score>,
    /// Skip the Python evaluator (PLCMOS, DNSMOS).
    #[arg(long)]
    pub no_external: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `original` (the input itself), or a method.
    pub method: String,
    /// `L6`, `16k`; `-` for the original.
    pub point: String,
    /// `none`, `random`, `bursty`.
    pub pattern: String,
    /// The pattern's loss rate, percent.
    pub loss_pct: f64,
    /// 20 ms slots of the inputs, summed over the clips, and how many were lost.
    pub frames: usize,
    pub lost_frames: usize,
    /// `opus-fec`: lost frames whose next packet arrived carrying FEC (LBRR) data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fec_frames: Option<usize>,
    /// Sent bitrate (all packets, lost or not).
    pub bitrate_kbps: Option<f64>,
    pub stoi: Option<f64>,
    pub plcmos: Option<f64>,
    /// PLCMOS of the same codec without loss, less this row's.
    pub plcmos_drop: Option<f64>,
    pub dnsmos_ovrl: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MaskInfo {
    pub clip: usize,
    pub pattern: PatternKind,
    pub loss_pct: f64,
    pub frames: usize,
    /// Indices of the lost 20 ms slots.
    pub lost: Vec<usize>,
    /// Runs of consecutive lost slots.
    pub bursts: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub aic_version: &'static str,
    pub cpu: String,
    pub aic_model: Option<String>,
    pub aic_level: u8,
    pub opus_bitrates_bps: Vec<u32>,
    pub seed: u64,
    pub mean_burst_frames: f64,
    pub inputs: Vec<bench::InputInfo>,
    pub rows: Vec<Row>,
    pub masks: Vec<MaskInfo>,
    pub notes: Vec<String>,
}

/// SplitMix64: small, seedable, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of one clip's pattern: the same for every method.
fn pattern_seed(seed: u64, clip: usize, kind: PatternKind, loss_pct: f64) -> u64 {
    let rate = (loss_pct * 1000.0).round() as u64;
    mix(seed ^ mix(clip as u64 + 1) ^ mix(((kind as u64 + 1) << 40) | rate))
}

/// Which of `frames` slots are lost: exactly round(rate × frames) of them, for both kinds.
pub fn loss_mask(
    kind: PatternKind,
    loss_pct: f64,
    frames: usize,
    burst: f64,
    seed: u64,
) -> Vec<bool> {
    let q = loss_pct / 100.0;
    let k = ((q * frames as f64).round() as usize).min(frames);
    let mut rng = Rng(seed);
    match kind {
        PatternKind::Random => {
            let mut idx: Vec<usize> = (0..frames).collect();
            let mut mask = vec![false; frames];
            for i in 0..k {
                let j = i + rng.below(frames - i);
                idx.swap(i, j);
                mask[idx[i]] = true;
            }
            mask
        }
        PatternKind::Bursty => {
            // Bad → good with probability r = 1 / burst (mean run = burst); good → bad with p
            // such that the stationary loss is q.
            let r = 1.0 / burst;
            let p = (q * r / (1.0 - q)).min(1.0);
            let mut best = vec![false; frames];
            let mut best_gap = k;
            if k == 0 {
                return best;
            }
            for _ in 0..MAX_TRIES {
                let mut bad = rng.unit() < q;
                let m: Vec<bool> = (0..frames)
                    .map(|_| {
                        let lost = bad;
                        bad = if bad { rng.unit() >= r } else { rng.unit() < p };
                        lost
                    })
                    .collect();
                let gap = m.iter().filter(|&&l| l).count().abs_diff(k);
                if gap < best_gap {
                    best = m;
                    best_gap = gap;
                }
                if best_gap == 0 {
                    break;
                }
            }
            best
        }
    }
}

fn bursts(mask: &[bool]) -> usize {
    mask.iter()
        .enumerate()
        .filter(|&(i, &l)| l && (i == 0 || !mask[i - 1]))
        .count()
}

/// One row to compute: a method (None: the original) at a point, with a pattern or without.
#[derive(Debug, Clone)]
struct Spec {
    method: Option<Method>,
    point: Option<OperatingPoint>,
    pattern: Option<(PatternKind, f64)>,
}

/// Per clip, per row: what was measured.
#[derive(Debug, Default, Clone)]
struct Acc {
    frames: usize,
    lost: usize,
    fec: usize,
    bits: f64,
    secs: f64,
    stoi: Vec<Option<f64>>,
    plcmos: Vec<Option<f64>>,
    dnsmos: Vec<Option<f64>>,
}

fn check(args: &LossArgs) -> Result<Vec<u32>> {
    if args.rates.is_empty() || args.patterns.is_empty() {
        bail!("--rates and --patterns need at least one value each");
    }
    for &r in &args.rates {
        if !(r > 0.0 && r <= 50.0) {
            bail!("--rates {r}: a loss rate is a percentage in (0, 50]");
        }
    }
    if !(1.0..=50.0).contains(&args.burst) {
        bail!("--burst {} not in 1..=50 frames", args.burst);
    }
    let mut bitrates = Vec::new();
    for b in &args.opus_bitrate {
        match bench::parse_point(b)? {
            OperatingPoint::BitrateBps(bps)
                if (aic_codec::opus::MIN_BITRATE..=aic_codec::opus::MAX_BITRATE).contains(&bps) =>
            {
                bitrates.push(bps)
            }
            _ => bail!("--opus-bitrate {b}: expected a bitrate from 6k to 510k"),
        }
    }
    if bitrates.is_empty() {
        bail!("--opus-bitrate needs at least one bitrate");
    }
    Ok(bitrates)
}

fn specs(methods: &[Method], bitrates: &[u32], level: u8, args: &LossArgs) -> Vec<Spec> {
    let point = |m: Method, b: u32| {
        if m.is_aic() {
            OperatingPoint::Level(level)
        } else {
            OperatingPoint::BitrateBps(b)
        }
    };
    // The points a method runs at: AIC at the level, Opus at every bitrate.
    let points = |m: Method| -> Vec<OperatingPoint> {
        if m.is_aic() {
            vec![point(m, 0)]
        } else {
            bitrates.iter().map(|&b| point(m, b)).collect()
        }
    };
    let mut out = vec![Spec {
        method: None,
        point: None,
        pattern: None,
    }];
    let mut bases: Vec<Method> = methods.iter().map(|m| m.clean_base()).collect();
    bases.dedup();
    for m in bases {
        for p in points(m) {
            out.push(Spec {
                method: Some(m),
                point: Some(p),
                pattern: None,
            });
        }
    }
    for &kind in &args.patterns {
        for &rate in &args.rates {
            for &m in methods {
                for p in points(m) {
                    out.push(Spec {
                        method: Some(m),
                        point: Some(p),
                        pattern: Some((kind, rate)),
                    });
                }
            }
        }
    }
    out
}

/// Decodes `e`'s packets with `lost` slots missing: concealed by the decoder, or (`repeat`)
/// replaced by the previous 20 ms of output. Trimmed to line up with the input.
fn decode_lossy(
    reg: &CodecRegistry,
    e: &transcode::Encoded,
    lost: &[bool],
    repeat: bool,
) -> Result<Vec<f32>> {
    let info = &e.header.info;
    let mut dec = reg.new_decoder(info)?;
    let n = info.frame_samples;
    let mut out = Vec::with_capacity(e.packets.len() * n);
    for (i, p) in e.packets.iter().enumerate() {
        if !lost.get(i).copied().unwrap_or(false) {
            dec.decode_frame(Some(p), &mut out)
                .with_context(|| format!("frame {i}"))?;
        } else if repeat {
            let end = out.len();
            if end >= n {
                out.extend_from_within(end - n..end);
            } else {
                out.resize(end + n, 0.0);
            }
        } else {
            dec.decode_frame(None, &mut out)
                .with_context(|| format!("concealing frame {i}"))?;
        }
    }
    out.drain(..info.delay_samples.min(out.len()));
    out.truncate(e.header.total_samples as usize);
    Ok(out)
}

/// `has_lbrr` for the packets our encoder makes (mono, one 20 ms frame, code 0): the LBRR flag
/// is the second bit of the SILK payload (libopus' `opus_packet_has_lbrr`).
fn has_lbrr(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    let celt_only = toc >> 3 >= 16;
    if celt_only || toc & 3 != 0 {
        return false;
    }
    packet.get(1).is_some_and(|b| (b >> 6) & 1 == 1)
}

fn opus_err(e: opusic_c::ErrorCode) -> anyhow::Error {
    anyhow!("libopus: {e:?}")
}

/// Opus at `bps` with in-band FEC for `loss_pct` % loss, at 16 kHz, encoded like the `opus`
/// codec (VoIP, complexity 10). Returns the trimmed output, the bytes sent, and how many lost
/// frames were rebuilt from FEC data in the next packet.
fn opus_fec(
    pcm: &[f32],
    bps: u32,
    loss_pct: f64,
    lost: &[bool],
) -> Result<(Vec<f32>, usize, usize)> {
    use opusic_c::{Application, Bitrate, Channels, InbandFec, SampleRate};
    let mut enc = opusic_c::Encoder::new(Channels::Mono, SampleRate::Hz16000, Application::Voip)
        .map_err(opus_err)?;
    enc.set_bitrate(Bitrate::Value(bps)).map_err(opus_err)?;
    enc.set_complexity(10).map_err(opus_err)?;
    enc.set_inband_fec(InbandFec::Mode1).map_err(opus_err)?;
    enc.set_packet_loss(loss_pct.round().clamp(0.0, 100.0) as u8)
        .map_err(opus_err)?;
    let delay = enc.get_look_ahead().map_err(opus_err)? as usize;
    let frames = (pcm.len() + delay).div_ceil(SLOT).max(1);
    let mut packets = Vec::with_capacity(frames);
    let mut frame = vec![0.0f32; SLOT];
    let mut buf = vec![0u8; aic_codec::opus::MAX_PACKET];
    for i in 0..frames {
        frame.fill(0.0);
        let lo = (i * SLOT).min(pcm.len());
        let hi = ((i + 1) * SLOT).min(pcm.len());
        frame[..hi - lo].copy_from_slice(&pcm[lo..hi]);
        let k = enc
            .encode_float_to_slice(&frame, &mut buf)
            .map_err(opus_err)?;
        packets.push(buf[..k].to_vec());
    }
    let mut dec = opusic_c::Decoder::new(Channels::Mono, SampleRate::Hz16000).map_err(opus_err)?;
    dec.set_complexity(0).map_err(opus_err)?;
    let is_lost = |i: usize| lost.get(i).copied().unwrap_or(false);
    let mut out = vec![0.0f32; frames * SLOT];
    let mut fec = 0;
    for (i, p) in packets.iter().enumerate() {
        let slot = &mut out[i * SLOT..(i + 1) * SLOT];
        let got = if !is_lost(i) {
            dec.decode_float_to_slice(p, slot, false)
        } else if i + 1 < packets.len() && !is_lost(i + 1) {
            // libopus conceals by PLC when the next packet holds no FEC data.
            fec += usize::from(has_lbrr(&packets[i + 1]));
            dec.decode_float_to_slice(&packets[i + 1], slot, true)
        } else {
            dec.decode_float_to_slice(&[], slot, false)
        };
        let got = got.map_err(opus_err)?;
        if got != SLOT {
            bail!("libopus gave {got} samples for a 20 ms frame");
        }
    }
    let bytes = packets.iter().map(Vec::len).sum();
    out.drain(..delay.min(out.len()));
    out.truncate(pcm.len());
    Ok((out, bytes, fec))
}

fn mean_all(v: &[Option<f64>]) -> Option<f64> {
    let xs: Vec<f64> = v.iter().flatten().copied().collect();
    (!xs.is_empty() && xs.len() == v.len()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A clip's path as reported: relative to the repository when it is inside it (the default
/// fixtures), as given otherwise.
fn shown(f: &Path) -> String {
    let inside = f
        .canonicalize()
        .ok()
        .zip(repo_root().canonicalize().ok())
        .and_then(|(f, root)| f.strip_prefix(root).ok().map(Path::to_owned));
    inside.unwrap_or_else(|| f.to_owned()).display().to_string()
}

/// The evaluator, or None with a note saying why not.
fn evaluator(no_external: bool, notes: &mut Vec<String>) -> Option<bench::Evaluator> {
    if no_external {
        notes.push("PLCMOS/DNSMOS not computed (--no-external)".into());
        return None;
    }
    if std::env::var_os("AIC_PYTHON").is_none() && !repo_root().join(".venv/bin/python").exists() {
        notes.push(
            "PLCMOS/DNSMOS not computed: no Python venv at .venv (bash scripts/setup.sh makes \
             it; or point AIC_PYTHON at a Python with speechmos)"
                .into(),
        );
        return None;
    }
    let mut why = Vec::new();
    let ev = bench::Evaluator::find(&mut why);
    notes.extend(
        why.into_iter()
            .map(|w| format!("PLCMOS/DNSMOS {}", w.trim_start_matches("PESQ-WB/ViSQOL "))),
    );
    ev
}

pub fn run(reg: &CodecRegistry, args: &LossArgs) -> Result<Report> {
    let bitrates = check(args)?;
    let mut notes = Vec::new();
    let explicit = !args.methods.is_empty();
    let mut methods: Vec<Method> = if explicit {
        Method::ALL
            .into_iter()
            .filter(|m| args.methods.contains(m))
            .collect()
    } else {
        Method::ALL.to_vec()
    };
    let aic = if methods.iter().any(|m| m.is_aic()) {
        reg.get("aic")?.factory.availability()
    } else {
        Ok(())
    };
    if let Err(why) = aic {
        if explicit {
            bail!("codec aic is not available here: {why}");
        }
        notes.push(format!("aic and aic-repeat skipped: {why}"));
        methods.retain(|m| !m.is_aic());
    }
    let inputs_given = if args.inputs.is_empty() {
        vec![repo_root().join("datasets/fixtures/speech")]
    } else {
        args.inputs.clone()
    };
    let files = bench::collect_inputs(&inputs_given)?;
    let mut clips = Vec::new();
    let mut inputs = Vec::new();
    for f in &files {
        let (pcm, sr) = crate::audio::read_wav(f)?;
        if pcm.len() < sr as usize / 2 {
            bail!("{}: shorter than 0.5 s", f.display());
        }
        let pcm16k = resample(&pcm, sr, EVAL_RATE)?;
        inputs.push(bench::InputInfo {
            path: shown(f),
            seconds: pcm16k.len() as f64 / f64::from(EVAL_RATE),
        });
        clips.push(pcm16k);
    }

    let specs = specs(&methods, &bitrates, args.level, args);
    let mut acc = vec![Acc::default(); specs.len()];
    let mut masks = Vec::new();
    let mut ev = evaluator(args.no_external, &mut notes);
    if !args.scores.contains(&Score::Dnsmos) {
        notes.push("DNSMOS not computed (not in --scores)".into());
    }
    let mut pair_rows = Vec::new();
    let mut aic_model = None;

    for (ci, clip) in clips.iter().enumerate() {
        let frames = clip.len().div_ceil(SLOT);
        let mut clip_masks = Vec::new();
        for &kind in &args.patterns {
            for &rate in &args.rates {
                let seed = pattern_seed(args.seed, ci, kind, rate);
                let m = loss_mask(kind, rate, frames, args.burst, seed);
                masks.push(MaskInfo {
                    clip: ci,
                    pattern: kind,
                    loss_pct: rate,
                    frames,
                    lost: m.iter().enumerate().filter(|p| *p.1).map(|p| p.0).collect(),
                    bursts: bursts(&m),
                });
                clip_masks.push(((kind, rate.to_bits()), m));
            }
        }
        let mask_of = |s: &Spec| -> Vec<bool> {
            match s.pattern {
                None => vec![false; frames],
                Some((k, r)) => clip_masks
                    .iter()
                    .find(|(key, _)| *key == (k, r.to_bits()))
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default(),
            }
        };
        // One encode per codec and point (Opus FEC: per loss rate, below).
        let mut encoded: Vec<((&str, OperatingPoint), transcode::Encoded)> = Vec::new();
        for s in &specs {
            let (Some(m), Some(p)) = (s.method, s.point) else {
                continue;
            };
            let codec = match m {
                Method::Aic | Method::AicRepeat => "aic",
                Method::Opus => "opus",
                Method::OpusOsce => "opus-osce",
                Method::OpusFec => continue,
            };
            if encoded.iter().any(|(k, _)| *k == (codec, p)) {
                continue;
            }
            let d = reg.get(codec)?;
            let input = resample(clip, EVAL_RATE, d.sample_rate)?;
            let e = transcode::encode(reg, codec, Some(p), &input)
                .with_context(|| format!("{codec}@{p}"))?;
            if codec == "aic" {
                aic_model = Some(e.header.info.model_id.clone());
            }
            encoded.push(((codec, p), e));
        }
        for (ri, s) in specs.iter().enumerate() {
            let lost = mask_of(s);
            let a = &mut acc[ri];
            a.frames += frames;
            a.lost += lost.iter().filter(|&&l| l).count();
            let out = match (s.method, s.point) {
                (None, _) | (_, None) => clip.clone(),
                (Some(Method::OpusFec), Some(OperatingPoint::BitrateBps(bps))) => {
                    let rate = s.pattern.map_or(0.0, |p| p.1);
                    let (out, bytes, fec) = opus_fec(clip, bps, rate, &lost)?;
                    a.fec += fec;
                    a.bits += bytes as f64 * 8.0;
                    a.secs += clip.len().div_ceil(SLOT) as f64 * 0.02;
                    out
                }
                (Some(m), Some(p)) => {
                    let codec = match m {
                        Method::Opus | Method::OpusFec => "opus",
                        Method::OpusOsce => "opus-osce",
                        Method::Aic | Method::AicRepeat => "aic",
                    };
                    let e = &encoded
                        .iter()
                        .find(|(k, _)| *k == (codec, p))
                        .context("encoded clip missing")?
                        .1;
                    a.bits += transcode::bitrate_bps(e)
                        * (e.packets.len() * e.header.info.frame_samples) as f64
                        / f64::from(e.header.info.sample_rate);
                    a.secs += (e.packets.len() * e.header.info.frame_samples) as f64
                        / f64::from(e.header.info.sample_rate);
                    let out = decode_lossy(reg, e, &lost, m == Method::AicRepeat)
                        .with_context(|| format!("{}@{p}", m.name()))?;
                    resample(&out, e.header.info.sample_rate, EVAL_RATE)?
                }
            };
            let n = out.len().min(clip.len());
            let (r, o) = (&clip[..n], &out[..n]);
            a.stoi.push(metrics::stoi(r, o, EVAL_RATE).ok());
            if let Some(ev) = ev.as_mut() {
                ev.add(ri, ci, r, o)?;
                pair_rows.push(ri);
            }
        }
        eprintln!("  {} ({} frames) done", inputs[ci].path, frames);
    }

    if let Some(ev) = ev {
        let keys: Vec<&str> = args.scores.iter().map(|s| s.key()).collect();
        eprintln!(
            "  scoring {} ({} clips) ...",
            keys.join(", "),
            pair_rows.len()
        );
        match ev.run(Some(&keys.join(","))) {
            Err(e) => notes.push(format!(
                "PLCMOS/DNSMOS not computed: evaluator failed: {e:#}"
            )),
            Ok(results) => {
                let mut reasons = std::collections::BTreeMap::new();
                for (&ri, v) in pair_rows.iter().zip(&results) {
                    acc[ri]
                        .plcmos
                        .push(v.get("plcmos").and_then(|x| x.as_f64()));
                    acc[ri]
                        .dnsmos
                        .push(v.get("dnsmos_ovrl").and_then(|x| x.as_f64()));
                    if let Some(errs) = v.get("errors").and_then(|e| e.as_object()) {
                        for (k, why) in errs {
                            reasons
                                .entry(k.clone())
                                .or_insert_with(|| why.as_str().unwrap_or("failed").to_owned());
                        }
                    }
                }
                for (k, why) in reasons {
                    notes.push(format!("{k} not computed for some clips: {why}"));
                }
            }
        }
    }

    let mut rows: Vec<Row> = specs
        .iter()
        .zip(&acc)
        .map(|(s, a)| Row {
            method: s.method.map_or("original", Method::name).to_owned(),
            point: s.point.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            pattern: s.pattern.map_or("none", |p| p.0.name()).to_owned(),
            loss_pct: s.pattern.map_or(0.0, |p| p.1),
            frames: a.frames,
            lost_frames: a.lost,
            fec_frames: (s.method == Some(Method::OpusFec)).then_some(a.fec),
            bitrate_kbps: (a.secs > 0.0).then(|| a.bits / a.secs / 1000.0),
            stoi: mean_all(&a.stoi),
            plcmos: mean_all(&a.plcmos),
            plcmos_drop: None,
            dnsmos_ovrl: mean_all(&a.dnsmos),
        })
        .collect();
    let clean: Vec<(Method, Option<OperatingPoint>, Option<f64>)> = specs
        .iter()
        .zip(&rows)
        .filter(|(s, _)| s.pattern.is_none())
        .filter_map(|(s, r)| s.method.map(|m| (m, s.point, r.plcmos)))
        .collect();
    for (s, r) in specs.iter().zip(rows.iter_mut()) {
        let Some(m) = s.method else { continue };
        let base = clean
            .iter()
            .find(|(b, p, _)| *b == m.clean_base() && *p == s.point)
            .and_then(|c| c.2);
        r.plcmos_drop = base.zip(r.plcmos).map(|(b, x)| b - x);
    }
    let (lost, runs) = masks
        .iter()
        .filter(|m| m.pattern == PatternKind::Bursty)
        .fold((0, 0), |(l, b), m| (l + m.lost.len(), b + m.bursts));
    if runs > 0 {
        notes.push(format!(
            "bursty: {:.2} frames per burst on average (target {})",
            lost as f64 / runs as f64,
            args.burst
        ));
    }
    if methods.contains(&Method::OpusFec) {
        notes.push(
            "opus-fec: libopus puts FEC (LBRR) in a packet only when its bitrate, less a \
             loss-dependent share, clears a per-band threshold (wideband at 10 % loss: about \
             20 kbps; none at 16 kbps); fec = lost frames rebuilt from it, 0 = PLC only"
                .into(),
        );
    }
    Ok(Report {
        aic_version: env!("CARGO_PKG_VERSION"),
        cpu: bench::cpu_name(),
        aic_model,
        aic_level: args.level,
        opus_bitrates_bps: bitrates,
        seed: args.seed,
        mean_burst_frames: args.burst,
        inputs,
        rows,
        masks,
        notes,
    })
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

const COLUMNS: [&str; 12] = [
    "pattern", "loss%", "method", "point", "lost", "frames", "fec", "kbps", "STOI", "PLCMOS",
    "drop", "DNSMOS",
];

fn cells(r: &Row) -> [String; 12] {
    [
        r.pattern.clone(),
        format!("{}", r.loss_pct),
        r.method.clone(),
        r.point.clone(),
        r.lost_frames.to_string(),
        r.frames.to_string(),
        r.fec_frames.map_or_else(|| "-".into(), |f| f.to_string()),
        opt(r.bitrate_kbps, 2),
        opt(r.stoi, 3),
        opt(r.plcmos, 2),
        opt(r.plcmos_drop, 2),
        opt(r.dnsmos_ovrl, 2),
    ]
}

pub fn table(rep: &Report) -> String {
    const W: [usize; 12] = [8, 5, 10, 5, 5, 6, 4, 6, 6, 6, 5, 6];
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for (i, (x, w)) in c.iter().zip(W).enumerate() {
            if i == 0 || i == 2 {
                s += &format!("{x:<w$} ");
            } else {
                s += &format!("{x:>w$} ");
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut s = line(&COLUMNS.map(String::from));
    let mut last = None;
    for r in &rep.rows {
        let group = (r.pattern.clone(), r.loss_pct.to_bits());
        if last.as_ref().is_some_and(|g| *g != group) {
            s += "\n";
        }
        last = Some(group);
        s += &line(&cells(r));
    }
    for n in &rep.notes {
        s += &format!("note: {n}\n");
    }
    s
}

pub fn tsv(rep: &Report) -> String {
    let mut s = COLUMNS.join("\t") + "\n";
    for r in &rep.rows {
        s += &(cells(r).join("\t") + "\n");
    }
    s
}

/// `aic bench loss`: run, print the table, write the reports asked for.
pub fn main(reg: &CodecRegistry, args: &LossArgs) -> Result<()> {
    let rep = run(reg, args)?;
    print!("{}", table(&rep));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("report: {}", p.display());
    }
    if let Some(p) = &args.tsv {
        std::fs::write(p, tsv(&rep)).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("table: {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_lose_exactly_the_rate_and_are_seeded() {
        for kind in [PatternKind::Random, PatternKind::Bursty] {
            for (rate, frames) in [(5.0, 190), (10.0, 250), (20.0, 1000)] {
                let m = loss_mask(kind, rate, frames, 3.0, 7);
                let k = m.iter().filter(|&&l| l).count();
                assert_eq!(
                    k,
                    (rate / 100.0 * frames as f64).round() as usize,
                    "{kind:?}"
                );
                assert_eq!(
                    m,
                    loss_mask(kind, rate, frames, 3.0, 7),
                    "same seed, same mask"
                );
                assert_ne!(m, loss_mask(kind, rate, frames, 3.0, 8), "another seed");
            }
        }
    }

    #[test]
    fn bursty_losses_come_in_bursts_of_about_the_mean() {
        let (mut lost, mut runs) = (0, 0);
        let (mut rlost, mut rruns) = (0, 0);
        for seed in 0..50 {
            let m = loss_mask(PatternKind::Bursty, 10.0, 500, 3.0, seed);
            lost += m.iter().filter(|&&l| l).count();
            runs += bursts(&m);
            let m = loss_mask(PatternKind::Random, 10.0, 500, 3.0, seed);
            rlost += m.iter().filter(|&&l| l).count();
            rruns += bursts(&m);
        }
        let mean = lost as f64 / runs as f64;
        assert!((2.5..3.5).contains(&mean), "mean burst {mean}");
        let rmean = rlost as f64 / rruns as f64;
        assert!(rmean < 1.3, "random losses are mostly single: {rmean}");
    }

    #[test]
    fn fec_packets_are_recognised_and_rebuild_lost_frames() {
        let pcm: Vec<f32> = (0..16_000 * 2)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                0.3 * (0.5 + 0.5 * (t * 3.0).sin()) * (t * 2.0 * std::f32::consts::PI * 180.0).sin()
            })
            .collect();
        let frames = pcm.len().div_ceil(SLOT);
        let lost = loss_mask(PatternKind::Random, 20.0, frames, 3.0, 1);
        let (out, _, fec) = opus_fec(&pcm, 24_000, 20.0, &lost).unwrap();
        assert_eq!(out.len(), pcm.len());
        let rebuildable = (0..frames)
            .filter(|&i| lost[i] && !lost.get(i + 1).copied().unwrap_or(false))
            .count();
        assert!(fec > 0 && fec <= rebuildable, "{fec} of {rebuildable}");
        // Without loss to plan for, libopus sends no FEC at all.
        let (_, _, none) = opus_fec(&pcm, 24_000, 0.0, &lost).unwrap();
        assert_eq!(none, 0);
    }

    #[test]
    fn lbrr_flag_is_read_from_silk_packets() {
        // TOC: SILK WB 20 ms (config 9), mono, code 0; payload's second bit = LBRR.
        assert!(has_lbrr(&[9 << 3, 0b0100_0000]));
        assert!(!has_lbrr(&[9 << 3, 0b1000_0000]));
        // CELT-only (config 16+) never carries LBRR.
        assert!(!has_lbrr(&[16 << 3, 0xFF]));
        assert!(!has_lbrr(&[]));
    }
}
