//! Untrusted `.aic` files through the whole decode path of `aic decode`: the stream reader
//! (`PacketReader` over a reader that hands out a few bytes at a time, like a pipe), the bounded
//! packet loop (`container::decode`, strict or lenient), and a real decoder that needs no model
//! files: libopus from the codec registry for Opus-headed files; for AIC-headed files a decoder
//! that runs the real AIC frame parser (`EntropyModel::read_frame`: header, CRC, range decoder,
//! level bounds) and emits silence instead of running the ONNX graphs.
//!
//! Never panics, and the loop keeps its promises whatever the file says: the decoder runs at
//! most twice per packet the header's `total_samples` needs (a refused packet is concealed once
//! in lenient mode), never for more than `MAX_LOST_RUN` + 1 lost frames in a row, and the
//! output is never longer than `total_samples`.
//!
//! Input: one config byte (bit 0: lenient; bits 1–3: bytes per read, 1..=8, or all at once
//! when 0; bit 4: container version 2 pages after a valid header made here), then the file, or
//! with bit 4 set: a u16le frame count (`total_samples` = count · 320, 0 = a live file of
//! unknown length), a codec byte (odd: `opus`, even: `aic`), then the pages.
#![no_main]

use std::io::Read;
use std::sync::LazyLock;

use aic_codec::bitstream::EntropyModel;
use aic_codec::bitstream::container::{self, Header, MAX_LOST_RUN, PacketReader};
use aic_codec::bitstream::range::FreqTable;
use aic_codec::{CodecError, CodecInfo, CodecRegistry, Decoder, OperatingPoint};
use libfuzzer_sys::fuzz_target;

static REGISTRY: LazyLock<CodecRegistry> = LazyLock::new(CodecRegistry::with_builtin);

/// Entropy tables shaped like a trained model's (as in the `aic_frame` target), tag `fuzz`.
static MODEL: LazyLock<EntropyModel> = LazyLock::new(|| {
    let tables = (0..12)
        .map(|k| {
            if k == 0 {
                return FreqTable::uniform(1024).unwrap();
            }
            let w: Vec<f64> = (0..1024)
                .map(|i| 1.0 / (1.0 + i as f64).powf(0.5 + k as f64 * 0.1))
                .collect();
            let s: f64 = w.iter().sum();
            let mut f: Vec<u32> = w.iter().map(|x| 1 + (x / s * 31_744.0) as u32).collect();
            let t: u32 = f.iter().sum();
            f[0] += 32_768 - t;
            FreqTable::new(&f).unwrap()
        })
        .collect();
    EntropyModel::new(tables, *b"fuzz").unwrap()
});

/// The AIC decoder minus the neural network: parses every frame as `AicDecoder` does.
struct AicFrames {
    info: CodecInfo,
    indices: Vec<u16>,
}

impl Decoder for AicFrames {
    fn info(&self) -> &CodecInfo {
        &self.info
    }
    fn decode_frame(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        if let Some(p) = packet {
            MODEL.read_frame(p, &mut self.indices)?;
        }
        out.resize(out.len() + self.info.frame_samples, 0.0);
        Ok(())
    }
    fn reset(&mut self) -> Result<(), CodecError> {
        Ok(())
    }
}

/// Counts what the loop asks of the decoder.
struct Watch {
    dec: Box<dyn Decoder>,
    calls: u64,
    lost_run: u64,
    max_lost_run: u64,
}

impl Decoder for Watch {
    fn info(&self) -> &CodecInfo {
        self.dec.info()
    }
    fn decode_frame(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        self.calls += 1;
        if packet.is_some() {
            self.lost_run = 0;
        } else {
            self.lost_run += 1;
            self.max_lost_run = self.max_lost_run.max(self.lost_run);
        }
        let before = out.len();
        let r = self.dec.decode_frame(packet, out);
        let frame = self.dec.info().frame_samples;
        assert!(out.len() == before + frame || (r.is_err() && out.len() == before));
        r
    }
    fn reset(&mut self) -> Result<(), CodecError> {
        self.dec.reset()
    }
}

/// A reader handing out at most `max` bytes per call.
struct Trickle<'a> {
    b: &'a [u8],
    max: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.max).min(self.b.len());
        buf[..n].copy_from_slice(&self.b[..n]);
        self.b = &self.b[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, file)) = data.split_first() else {
        return;
    };
    let lenient = cfg & 1 == 1;
    let max = match usize::from(cfg >> 1 & 7) {
        0 => usize::MAX,
        n => n,
    };
    let mut owned = Vec::new();
    let file = if cfg & 0x10 != 0 {
        let [a, b, c, pages @ ..] = file else {
            return;
        };
        let opus = c & 1 == 1;
        let h = Header {
            info: CodecInfo {
                codec: if opus { "opus" } else { "aic" }.into(),
                model_id: if opus { "" } else { "fuzz" }.into(),
                sample_rate: 16_000,
                frame_samples: 320,
                delay_samples: if opus { 104 } else { 0 },
                point: if opus {
                    OperatingPoint::BitrateBps(12_000)
                } else {
                    OperatingPoint::Level(2)
                },
            },
            total_samples: u64::from(u16::from_le_bytes([*a, *b])) * 320,
        };
        h.write_version(container::VERSION_2, &mut owned)
            .expect("a valid header");
        owned.extend_from_slice(pages);
        &owned[..]
    } else {
        file
    };
    let Ok(mut packets) = PacketReader::new(Trickle { b: file, max }) else {
        return;
    };
    let h = packets.header().clone();
    let live = packets.is_live();
    let expected = packets.packets_expected();
    let dec: Box<dyn Decoder> = match h.info.codec.as_str() {
        // The real registry decoder, as `aic decode` gets it (refuses rates libopus lacks).
        "opus" | "opus-osce" => match REGISTRY.new_decoder(&h.info) {
            Ok(d) => d,
            Err(_) => return,
        },
        // The AIC factory refuses streams whose rate/frame differ from the model's.
        "aic" if h.info.sample_rate == 16_000 && h.info.frame_samples == 320 => {
            Box::new(AicFrames {
                info: h.info.clone(),
                indices: Vec::new(),
            })
        }
        _ => return,
    };
    let mut dec = Watch {
        dec,
        calls: 0,
        lost_run: 0,
        max_lost_run: 0,
    };
    let mut out = Vec::new();
    let mut refused = 0u64;
    let r = container::decode(&mut packets, &mut dec, lenient, &mut out, |_, _| {
        refused += 1
    });
    assert!(
        dec.calls <= 2 * expected,
        "{} decoder calls for {expected} packets",
        dec.calls
    );
    // Lost frames in a row: the reader's bound, plus one concealment of a refused packet.
    assert!(
        dec.max_lost_run <= u64::from(MAX_LOST_RUN) + 1,
        "{} lost in a row",
        dec.max_lost_run
    );
    // Every packet the decoder saw came from the file: at least 2 bytes each in version 1; in
    // version 2 every run of at most MAX_LOST_RUN lost frames ends at a frame of ≥ 1 byte.
    if packets.version() == 1 {
        assert!(dec.calls - refused <= file.len() as u64 / 2);
    } else {
        assert!(dec.calls - refused <= (u64::from(MAX_LOST_RUN) + 1) * (file.len() as u64 + 1));
    }
    if let Ok(rep) = r {
        assert!(
            live || out.len() as u64 <= h.total_samples,
            "{} samples out, header says {}",
            out.len(),
            h.total_samples
        );
        assert!(rep.decoded_packets <= expected);
        assert_eq!(dec.calls, rep.decoded_packets + refused);
        assert!(lenient || rep.excess_packets == 0);
        assert!(
            lenient
                || rep.stopped_by.is_none()
                || (live
                    && matches!(
                        rep.stopped_by,
                        Some(container::ContainerError::TruncatedPage { .. })
                    ))
        );
    }
});
