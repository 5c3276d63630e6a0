//! Running a codec over a whole clip: the shared core of `encode`, `decode` and `bench`.

use std::io::Read;
use std::time::{Duration, Instant};

use aic_codec::bitstream::container::{self, DecodeReport, Header, PacketReader};
use aic_codec::{CodecError, CodecInfo, CodecRegistry, Decoder, OperatingPoint};
use anyhow::{Context, Result};

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
    /// What the bounded decode loop did (packets decoded, past the end, where it stopped).
    pub report: DecodeReport,
}

/// Per-frame decoder errors printed one by one in lenient mode; the rest are only counted.
const MAX_FRAME_WARNINGS: u64 = 10;

/// Decodes a `.aic` stream (header already read by `packets`) through the codec's bounded
/// decode loop (`container::decode`: at most the packets the header's `total_samples` calls
/// for, a bounded run of lost packets), trimming the codec delay and padding so the output
/// lines up with the original input sample for sample. Lenient mode prints a warning per
/// concealed frame (the first few) instead of failing.
pub fn decode<R: Read>(
    reg: &CodecRegistry,
    packets: &mut PacketReader<R>,
    lenient: bool,
) -> Result<Decoded> {
    let info = packets.header().info.clone();
    let mut dec = Timed {
        dec: reg.new_decoder(&info)?,
        time: Duration::ZERO,
    };
    let mut pcm = Vec::new();
    let mut refused = 0u64;
    let report = container::decode(packets, &mut dec, lenient, &mut pcm, |i, e| {
        refused += 1;
        if refused <= MAX_FRAME_WARNINGS {
            eprintln!("warning: frame {i}: {e}; concealed");
        }
    })
    .map_err(|e| match e {
        // The container error itself: `CodecError::Container` shows it and chains it as its
        // source, so `{:#}` would print it twice.
        CodecError::Container(c) => anyhow::Error::from(c),
        e => anyhow::Error::from(e),
    })?;
    if refused > MAX_FRAME_WARNINGS {
        eprintln!(
            "warning: {} more corrupt frames concealed",
            refused - MAX_FRAME_WARNINGS
        );
    }
    Ok(Decoded {
        pcm,
        sample_rate: info.sample_rate,
        decode_time: dec.time,
        concealed: usize::try_from(report.concealed).unwrap_or(usize::MAX),
        report,
    })
}

/// A decoder that adds up the time spent in it (the codec crate does not touch the clock).
struct Timed {
    dec: Box<dyn Decoder>,
    time: Duration,
}

impl Decoder for Timed {
    fn info(&self) -> &CodecInfo {
        self.dec.info()
    }

    fn decode_frame(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        let t0 = Instant::now();
        let r = self.dec.decode_frame(packet, out);
        self.time += t0.elapsed();
        r
    }

    fn reset(&mut self) -> Result<(), CodecError> {
        self.dec.reset()
    }
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
