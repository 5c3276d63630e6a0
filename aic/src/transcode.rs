//! Running a codec over a whole clip: the shared core of `encode`, `decode` and `bench`.

use std::time::{Duration, Instant};

use aic_codec::bitstream::container::{self, Header};
use aic_codec::{CodecInfo, CodecRegistry, OperatingPoint};
use anyhow::{Context, Result, anyhow};

/// A clip encoded into packets, with the timing of the encoder alone.
pub struct Encoded {
    pub header: Header,
    pub packets: Vec<Vec<u8>>,
    pub encode_time: Duration,
}

/// Encodes `pcm` (already at the codec's sample rate). Extra zero frames are appended so the
/// decoder can flush its delay and the decoded clip can be trimmed to exactly `pcm.len()`.
pub fn encode(
    reg: &CodecRegistry,
    codec: &str,
    point: Option<OperatingPoint>,
    pcm: &[f32],
) -> Result<Encoded> {
    let mut enc = reg.new_encoder(codec, point)?;
    let info = enc.info().clone();
    let n = info.frame_samples;
    let frames = (pcm.len() + info.delay_samples).div_ceil(n).max(1);
    let mut frame = vec![0.0f32; n];
    let mut packets = Vec::with_capacity(frames);
    let mut buf = Vec::with_capacity(1500);
    let t0 = Instant::now();
    for i in 0..frames {
        frame.fill(0.0);
        let lo = (i * n).min(pcm.len());
        let hi = ((i + 1) * n).min(pcm.len());
        frame[..hi - lo].copy_from_slice(&pcm[lo..hi]);
        enc.encode_frame(&frame, &mut buf)
            .with_context(|| format!("encoding frame {i}"))?;
        packets.push(buf.clone());
    }
    let encode_time = t0.elapsed();
    Ok(Encoded {
        header: Header {
            info,
            total_samples: pcm.len() as u64,
        },
        packets,
        encode_time,
    })
}

pub struct Decoded {
    pub pcm: Vec<f32>,
    pub sample_rate: u32,
    pub decode_time: Duration,
    /// Frames that were missing or could not be decoded and were concealed.
    pub concealed: usize,
}

/// Decodes packets described by `info`, trimming the codec delay and padding so the output
/// lines up with the original input sample for sample.
pub fn decode<'a>(
    reg: &CodecRegistry,
    info: &CodecInfo,
    total_samples: u64,
    packets: impl IntoIterator<Item = Result<Option<&'a [u8]>>>,
    lenient: bool,
) -> Result<Decoded> {
    let mut dec = reg.new_decoder(info)?;
    let mut out = Vec::new();
    let mut concealed = 0;
    let mut decode_time = Duration::ZERO;
    for (i, p) in packets.into_iter().enumerate() {
        let p = match p {
            Ok(p) => p,
            Err(e) if lenient => {
                eprintln!("warning: {e:#}; stopping at frame {i}");
                break;
            }
            Err(e) => return Err(e),
        };
        let t0 = Instant::now();
        let r = dec.decode_frame(p, &mut out);
        if p.is_none() {
            concealed += 1;
        }
        if let Err(e) = r {
            if !lenient {
                return Err(anyhow!(e).context(format!("frame {i}")));
            }
            eprintln!("warning: frame {i}: {e}; concealed");
            concealed += 1;
            dec.decode_frame(None, &mut out)?;
        }
        decode_time += t0.elapsed();
    }
    let d = info.delay_samples.min(out.len());
    out.drain(..d);
    let total = usize::try_from(total_samples).unwrap_or(usize::MAX);
    out.truncate(total);
    Ok(Decoded {
        pcm: out,
        sample_rate: info.sample_rate,
        decode_time,
        concealed,
    })
}

/// Serialises an encoded clip as a `.aic` file.
pub fn to_container(e: &Encoded) -> Result<Vec<u8>> {
    let mut f = Vec::with_capacity(64 + e.packets.iter().map(|p| p.len() + 2).sum::<usize>());
    e.header.write(&mut f)?;
    for p in &e.packets {
        container::write_packet(Some(p), &mut f)?;
    }
    Ok(f)
}

/// Payload bytes per second of audio: the codec's own frames, headers included; the
/// container's 2-byte length prefixes are transport framing and are not counted (RTP carries
/// one frame per packet instead).
pub fn bitrate_bps(e: &Encoded) -> f64 {
    let bytes: usize = e.packets.iter().map(Vec::len).sum();
    let secs = e.packets.len() as f64 * e.header.info.frame_samples as f64
        / f64::from(e.header.info.sample_rate);
    bytes as f64 * 8.0 / secs
}
