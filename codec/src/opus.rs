//! Opus baselines through libopus 1.6 (built from source by `opusic-sys`).
//!
//! Two registered codecs, so a bench shows both side by side:
//! * `opus` — libopus as a WebRTC sender would use it: VoIP application, automatic bandwidth,
//!   decoder complexity 0 (no neural post-processing).
//! * `opus-osce` — the same encoder with wideband forced, decoded with complexity 10 so libopus'
//!   OSCE enhancement (LACE/NoLACE, neural post-filters on 16 kHz SILK frames) runs. Forcing
//!   wideband matters: at 6–8 kbps the encoder would pick narrowband, where OSCE does nothing.
//!
//! Both run at 16 kHz here (wideband speech is what AIC competes on); the SFU side decodes at
//! 48 kHz by asking for a factory at that rate.

use std::sync::Arc;

use opusic_c::{Application, Bandwidth, Bitrate, Channels, SampleRate};

use crate::codec::{CodecInfo, Decoder, Encoder, OperatingPoint, check_frame_len};
use crate::error::CodecError;
use crate::registry::{CodecDescriptor, CodecFactory, CodecRegistry};

/// The largest Opus packet (RFC 6716 §3.2.1).
pub const MAX_PACKET: usize = 1275;
pub const MIN_BITRATE: u32 = 6_000;
pub const MAX_BITRATE: u32 = 510_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpusVariant {
    Plain,
    Osce,
}

impl OpusVariant {
    pub fn name(self) -> &'static str {
        match self {
            OpusVariant::Plain => "opus",
            OpusVariant::Osce => "opus-osce",
        }
    }
    fn decoder_complexity(self) -> u8 {
        match self {
            OpusVariant::Plain => 0,
            OpusVariant::Osce => 10,
        }
    }
}

fn opus_err(e: opusic_c::ErrorCode) -> CodecError {
    CodecError::Opus(format!("{e:?}"))
}

fn opus_rate(hz: u32) -> Result<SampleRate, CodecError> {
    Ok(match hz {
        8000 => SampleRate::Hz8000,
        12000 => SampleRate::Hz12000,
        16000 => SampleRate::Hz16000,
        24000 => SampleRate::Hz24000,
        48000 => SampleRate::Hz48000,
        _ => {
            return Err(CodecError::InvalidConfig(format!(
                "Opus runs at 8000, 12000, 16000, 24000 or 48000 Hz, not {hz}"
            )));
        }
    })
}

pub struct OpusEncoder {
    enc: opusic_c::Encoder,
    info: CodecInfo,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    pub fn new(
        variant: OpusVariant,
        sample_rate: u32,
        bitrate_bps: u32,
    ) -> Result<Self, CodecError> {
        if !(MIN_BITRATE..=MAX_BITRATE).contains(&bitrate_bps) {
            return Err(CodecError::InvalidConfig(format!(
                "Opus bitrate {bitrate_bps} bps not in {MIN_BITRATE}..={MAX_BITRATE}"
            )));
        }
        let mut enc =
            opusic_c::Encoder::new(Channels::Mono, opus_rate(sample_rate)?, Application::Voip)
                .map_err(opus_err)?;
        enc.set_bitrate(Bitrate::Value(bitrate_bps))
            .map_err(opus_err)?;
        enc.set_complexity(10).map_err(opus_err)?;
        if variant == OpusVariant::Osce && sample_rate >= 16_000 {
            enc.set_bandwidth(Bandwidth::Wide).map_err(opus_err)?;
        }
        let lookahead = enc.get_look_ahead().map_err(opus_err)? as usize;
        Ok(Self {
            enc,
            info: CodecInfo {
                codec: variant.name().to_owned(),
                model_id: String::new(),
                sample_rate,
                frame_samples: crate::frame::frame_samples_20ms(sample_rate),
                delay_samples: lookahead,
                point: OperatingPoint::BitrateBps(bitrate_bps),
            },
        })
    }
}

impl Encoder for OpusEncoder {
    fn info(&self) -> &CodecInfo {
        &self.info
    }

    fn encode_frame(&mut self, pcm: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        check_frame_len(&self.info, pcm)?;
        out.clear();
        out.resize(MAX_PACKET, 0);
        let n = self.enc.encode_float_to_slice(pcm, out).map_err(opus_err)?;
        out.truncate(n);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), CodecError> {
        self.enc.reset().map_err(opus_err)
    }
}

pub struct OpusDecoder {
    dec: opusic_c::Decoder,
    info: CodecInfo,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    pub fn new(variant: OpusVariant, info: &CodecInfo) -> Result<Self, CodecError> {
        let mut dec = opusic_c::Decoder::new(Channels::Mono, opus_rate(info.sample_rate)?)
            .map_err(opus_err)?;
        dec.set_complexity(variant.decoder_complexity())
            .map_err(opus_err)?;
        let mut info = info.clone();
        info.codec = variant.name().to_owned();
        info.frame_samples = crate::frame::frame_samples_20ms(info.sample_rate);
        Ok(Self { dec, info })
    }
}

impl Decoder for OpusDecoder {
    fn info(&self) -> &CodecInfo {
        &self.info
    }

    fn decode_frame(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        let n = self.info.frame_samples;
        let start = out.len();
        out.resize(start + n, 0.0);
        // An empty input is libopus' packet-loss concealment.
        let got = self
            .dec
            .decode_float_to_slice(packet.unwrap_or(&[]), &mut out[start..], false);
        match got {
            Ok(k) if k == n => Ok(()),
            Ok(k) => {
                out.truncate(start);
                Err(CodecError::Opus(format!(
                    "packet holds {k} samples, expected one 20 ms frame ({n})"
                )))
            }
            Err(e) => {
                out.truncate(start);
                Err(opus_err(e))
            }
        }
    }

    fn reset(&mut self) -> Result<(), CodecError> {
        self.dec.reset().map_err(opus_err)
    }
}

#[derive(Debug)]
pub struct OpusFactory {
    pub variant: OpusVariant,
    pub sample_rate: u32,
}

impl CodecFactory for OpusFactory {
    fn availability(&self) -> Result<(), String> {
        Ok(())
    }
    fn new_encoder(&self, point: OperatingPoint) -> Result<Box<dyn Encoder>, CodecError> {
        match point {
            OperatingPoint::BitrateBps(b) => Ok(Box::new(OpusEncoder::new(
                self.variant,
                self.sample_rate,
                b,
            )?)),
            OperatingPoint::Level(_) => Err(CodecError::InvalidConfig(
                "Opus takes a bitrate (e.g. --bitrate 12), not a level".into(),
            )),
        }
    }
    fn new_decoder(&self, info: &CodecInfo) -> Result<Box<dyn Decoder>, CodecError> {
        Ok(Box::new(OpusDecoder::new(self.variant, info)?))
    }
}

/// The bitrates `aic bench` compares by default (kbps).
pub const BENCH_LADDER_KBPS: [u32; 5] = [6, 8, 12, 16, 24];

pub fn register(r: &mut CodecRegistry) {
    for (variant, summary) in [
        (
            OpusVariant::Plain,
            "libopus 1.6, VoIP, auto bandwidth, plain decoder",
        ),
        (
            OpusVariant::Osce,
            "libopus 1.6, wideband, decoder with OSCE neural enhancement (LACE/NoLACE)",
        ),
    ] {
        r.register(CodecDescriptor {
            name: variant.name().to_owned(),
            summary: summary.to_owned(),
            sample_rate: 16_000,
            ladder: BENCH_LADDER_KBPS
                .iter()
                .map(|k| OperatingPoint::BitrateBps(k * 1000))
                .collect(),
            default_point: OperatingPoint::BitrateBps(16_000),
            factory: Arc::new(OpusFactory {
                variant,
                sample_rate: 16_000,
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 16_000.0).sin())
            .collect()
    }

    #[test]
    fn roundtrip_reproduces_a_tone_and_respects_bitrate() {
        let r = CodecRegistry::with_builtin();
        for name in ["opus", "opus-osce"] {
            let mut enc = r
                .new_encoder(name, Some(OperatingPoint::BitrateBps(12_000)))
                .unwrap();
            let mut dec = r.new_decoder(enc.info()).unwrap();
            let x = tone(320 * 100);
            let (mut pkt, mut y, mut bytes) = (Vec::new(), Vec::new(), 0usize);
            for f in x.chunks(320) {
                enc.encode_frame(f, &mut pkt).unwrap();
                bytes += pkt.len();
                dec.decode_frame(Some(&pkt), &mut y).unwrap();
            }
            let kbps = bytes as f64 * 8.0 / 2.0 / 1000.0;
            assert!((6.0..18.0).contains(&kbps), "{name}: {kbps} kbps");
            let d = enc.info().delay_samples;
            assert!(d > 0 && d < 320, "lookahead {d}");
            // After the codec delay, output correlates strongly with the input.
            let (a, b) = (&x[1000..30000], &y[1000 + d..30000 + d]);
            let dot: f32 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let na: f32 = a.iter().map(|p| p * p).sum();
            let nb: f32 = b.iter().map(|p| p * p).sum();
            let corr = dot / (na * nb).sqrt();
            assert!(corr > 0.9, "{name}: correlation {corr}");
        }
    }

    #[test]
    fn loss_is_concealed_and_garbage_is_an_error() {
        let r = CodecRegistry::with_builtin();
        let enc = r.new_encoder("opus", None).unwrap();
        let mut dec = r.new_decoder(enc.info()).unwrap();
        let mut y = Vec::new();
        dec.decode_frame(None, &mut y).unwrap();
        assert_eq!(y.len(), 320);
        // A TOC byte announcing a 60 ms frame: not one 20 ms frame.
        assert!(dec.decode_frame(Some(&[0xFF, 0xFF, 0xFF]), &mut y).is_err());
        assert_eq!(
            y.len(),
            320,
            "a failed decode must not leave samples behind"
        );
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(OpusEncoder::new(OpusVariant::Plain, 16_000, 1000).is_err());
        assert!(OpusEncoder::new(OpusVariant::Plain, 44_100, 16_000).is_err());
        let r = CodecRegistry::with_builtin();
        assert!(
            r.new_encoder("opus", Some(OperatingPoint::Level(3)))
                .is_err()
        );
        assert!(matches!(
            r.new_encoder("nope", None),
            Err(CodecError::UnknownCodec { .. })
        ));
    }
}
