//! `aic render IN.aic -o OUT`: re-renders a `.aic` archive (any container version, any codec in
//! the registry) to Ogg/Opus, WebM, fragmented MP4, WAV, an HLS directory, an RTMP or SRT URL,
//! or another `.aic` (re-framed as container v2 pages, the packets copied untouched).
//!
//! It runs the live egress itself (`aic-egress`): the same timeline, the same GStreamer
//! pipelines and the same supervisor as a recording made by `aic attach … --record`, so what is
//! tested for one holds for the other. GStreamer rather than ffmpeg-next: the live egress needs
//! GStreamer's sinks (hlssink2, rtmp2sink, srtsink) and a streaming-thread model with bounded
//! queues anyway, and one muxing stack means one set of container quirks to know (see
//! `docs/egress.md`); ffmpeg-next would add the libav* development packages for nothing new.
//!
//! The archive is streamed: header, then one packet at a time through the decoder into the
//! egress; nothing is held whole. 16 kHz codecs stream; others are decoded whole and
//! resampled to 16 kHz first (the egress' one input rate). The last partial 20 ms frame is
//! padded with silence (the egress takes whole frames).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aic_codec::bitstream::container::{self, PacketReader};
use aic_codec::{CodecError, CodecInfo, CodecRegistry, Decoder};
use aic_egress::{Egress, EgressConfig, EgressStatus, Format, OutputSpec, State};
use anyhow::{Context, Result, bail};

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The archive to render (`.aic`, container version 1 or 2, a killed recording included).
    pub input: PathBuf,
    /// Output: a file (`.ogg`, `.webm`, `.mp4`, `.wav`, `.aic`), a directory ending in `/` or a
    /// `.m3u8` name (HLS), `rtmp://…` or `srt://…`. An existing file is never overwritten: the
    /// next free name (`out-2.ogg`, …) is used and printed.
    #[arg(short, long)]
    pub output: String,
    /// The output format, when the name does not tell it (aic, ogg, webm, mp4, hls, rtmp, srt, wav).
    #[arg(long)]
    pub format: Option<String>,
    /// Opus/AAC bitrate, e.g. 32k or 32000 (6k..256k).
    #[arg(long)]
    pub bitrate: Option<String>,
    /// HLS segment duration, seconds.
    #[arg(long, default_value_t = aic_egress::spec::DEFAULT_SEGMENT_S)]
    pub segment: u32,
    /// Feed the output at the media's own pace (20 ms per frame), as a live restream does.
    #[arg(long)]
    pub realtime: bool,
    /// Conceal corrupt frames and stop quietly at a damaged tail instead of failing.
    #[arg(long)]
    pub lenient: bool,
    /// Also write the final status (JSON) here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

pub fn run(reg: &CodecRegistry, a: RenderArgs) -> Result<()> {
    let format = a.format.as_deref().map(Format::parse).transpose()?;
    let mut spec = OutputSpec::parse(&a.output, format)?.with_segment_s(a.segment)?;
    if let Some(b) = &a.bitrate {
        spec = spec.with_bitrate(parse_bps(b)?)?;
    }
    let file = std::fs::File::open(&a.input)
        .with_context(|| format!("cannot read {}", a.input.display()))?;
    let mut packets = PacketReader::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}", a.input.display()))?;
    let info = packets.header().info.clone();
    let mut cfg = EgressConfig::new("render", vec![spec.clone()]);
    cfg.lossless = true;
    if spec.format == Format::Aic {
        cfg.aic_info = Some(info.clone());
    }
    let t0 = Instant::now();
    let egress = Egress::start(cfg)?;
    let pace = Pace {
        realtime: a.realtime,
        t0: Instant::now(),
    };
    let fed = if spec.format == Format::Aic {
        copy_packets(&mut packets, &egress, &pace)
    } else if info.sample_rate == aic_egress::SAMPLE_RATE {
        stream_decode(reg, &mut packets, &egress, &pace, a.lenient)
    } else {
        whole_decode(reg, &mut packets, &egress, &pace, a.lenient)
    };
    let status = egress.stop();
    let fed = fed.with_context(|| format!("{}", a.input.display()))?;
    report(&a.input, &status, fed, t0.elapsed());
    if let Some(p) = &a.summary {
        std::fs::write(p, serde_json::to_vec_pretty(&status)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let State::Failed(why) = &status.outputs[0].state {
        bail!("{}: {why}", status.outputs[0].location);
    }
    Ok(())
}

pub fn parse_bps(s: &str) -> Result<u32> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mul) = match t.strip_suffix('k') {
        Some(n) => (n, 1000.0),
        None => (t.as_str(), 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("{s:?}: not a number"))?;
    if !(v * mul).is_finite() || v * mul < 1.0 || v * mul > 1e9 {
        bail!("{s:?} out of range");
    }
    Ok((v * mul).round() as u32)
}

struct Pace {
    realtime: bool,
    t0: Instant,
}

impl Pace {
    fn wait(&self, index: u64) {
        if self.realtime {
            let at = self.t0 + Duration::from_millis(20 * index);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
    }
}

/// What was fed to the egress.
#[derive(Debug, Default, Clone, Copy)]
struct Fed {
    frames: u64,
    concealed: u64,
}

fn copy_packets<R: std::io::Read>(
    packets: &mut PacketReader<R>,
    egress: &Egress,
    pace: &Pace,
) -> Result<Fed> {
    let mut fed = Fed::default();
    let expected = packets.packets_expected();
    let live = packets.is_live();
    while fed.frames < expected {
        let p = match packets.next_packet() {
            None => break,
            Some(Ok(p)) => p,
            // A killed recording's torn last page ends it.
            Some(Err(container::ContainerError::TruncatedPage { .. })) if live => {
                break;
            }
            Some(Err(e)) => return Err(e.into()),
        };
        pace.wait(fed.frames);
        if p.is_none() {
            fed.concealed += 1;
        }
        egress.push_frame_blocking(fed.frames, p, false)?;
        fed.frames += 1;
    }
    Ok(fed)
}

/// A decoder that hands its output to the egress frame by frame instead of keeping it: the
/// container's decode loop (its bounds and error rules) drives it, `out` stays empty.
struct ToEgress<'a> {
    dec: Box<dyn Decoder>,
    egress: &'a Egress,
    pace: &'a Pace,
    /// Codec delay still to drop.
    skip: usize,
    /// Samples still wanted (`total_samples` for a finished file; unbounded for a live one).
    left: u64,
    pending: Vec<f32>,
    frame: Vec<f32>,
    index: u64,
    pushed: Result<(), String>,
}

impl ToEgress<'_> {
    fn push_frames(&mut self, flush: bool) -> Result<(), CodecError> {
        const N: usize = aic_egress::FRAME_SAMPLES;
        if flush && !self.pending.is_empty() {
            self.pending.resize(self.pending.len().div_ceil(N) * N, 0.0);
        }
        let mut at = 0;
        while self.pending.len() - at >= N {
            let pcm: Vec<i16> = self.pending[at..at + N]
                .iter()
                .map(|&v| to_i16(v))
                .collect();
            self.pace.wait(self.index);
            if self.pushed.is_ok()
                && let Err(e) = self.egress.push_pcm_blocking(self.index, &pcm)
            {
                self.pushed = Err(e.to_string());
            }
            self.index += 1;
            at += N;
        }
        self.pending.drain(..at);
        Ok(())
    }
}

impl Decoder for ToEgress<'_> {
    fn info(&self) -> &CodecInfo {
        self.dec.info()
    }

    fn decode_frame(
        &mut self,
        packet: Option<&[u8]>,
        _out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        self.frame.clear();
        self.dec.decode_frame(packet, &mut self.frame)?;
        let drop = self.skip.min(self.frame.len());
        self.skip -= drop;
        let take = ((self.frame.len() - drop) as u64).min(self.left) as usize;
        self.left -= take as u64;
        self.pending
            .extend_from_slice(&self.frame[drop..drop + take]);
        self.push_frames(false)
    }

    fn reset(&mut self) -> Result<(), CodecError> {
        self.dec.reset()
    }
}

fn stream_decode<R: std::io::Read>(
    reg: &CodecRegistry,
    packets: &mut PacketReader<R>,
    egress: &Egress,
    pace: &Pace,
    lenient: bool,
) -> Result<Fed> {
    let h = packets.header().clone();
    let mut sink = ToEgress {
        dec: reg.new_decoder(&h.info)?,
        egress,
        pace,
        skip: h.info.delay_samples,
        left: if packets.is_live() {
            u64::MAX
        } else {
            h.total_samples
        },
        pending: Vec::new(),
        frame: Vec::new(),
        index: 0,
        pushed: Ok(()),
    };
    let mut out = Vec::new();
    let rep = container::decode(packets, &mut sink, lenient, &mut out, |i, e| {
        eprintln!("warning: frame {i}: {e}; concealed");
    })
    .map_err(anyhow::Error::from)?;
    sink.push_frames(true)?;
    if let Err(e) = &sink.pushed {
        bail!("{e}");
    }
    if let Some(e) = &rep.stopped_by {
        eprintln!(
            "warning: {e}; rendered the {} frames before it",
            rep.decoded_packets
        );
    }
    Ok(Fed {
        frames: sink.index,
        concealed: rep.concealed,
    })
}

fn whole_decode<R: std::io::Read>(
    reg: &CodecRegistry,
    packets: &mut PacketReader<R>,
    egress: &Egress,
    pace: &Pace,
    lenient: bool,
) -> Result<Fed> {
    let d = crate::transcode::decode(reg, packets, lenient)?;
    let pcm = aic_codec::resample::resample(&d.pcm, d.sample_rate, aic_egress::SAMPLE_RATE)?;
    let mut fed = Fed {
        frames: 0,
        concealed: d.concealed as u64,
    };
    for chunk in pcm.chunks(aic_egress::FRAME_SAMPLES) {
        let mut f: Vec<i16> = chunk.iter().map(|&v| to_i16(v)).collect();
        f.resize(aic_egress::FRAME_SAMPLES, 0);
        pace.wait(fed.frames);
        egress.push_pcm_blocking(fed.frames, &f)?;
        fed.frames += 1;
    }
    Ok(fed)
}

fn report(input: &Path, s: &EgressStatus, fed: Fed, took: Duration) {
    let o = &s.outputs[0];
    eprintln!(
        "{} -> {} ({}): {} frames, {:.2} s, {} concealed, {} gap frames, {} bytes, {} in {:.2} s",
        input.display(),
        o.location,
        o.format.name(),
        fed.frames,
        o.media_ms as f64 / 1000.0,
        fed.concealed,
        o.filled,
        o.bytes,
        o.state.name(),
        took.as_secs_f64()
    );
}

/// The conversion `aic decode` writes WAV with, so a WAV render equals its output.
fn to_i16(v: f32) -> i16 {
    (v.clamp(-1.0, 1.0) * 32767.0).round() as i16
}
