//! Untrusted AIC frames: parsing never panics, and whatever parses re-encodes to the same indices.
#![no_main]

use aic_codec::bitstream::EntropyModel;
use aic_codec::bitstream::range::FreqTable;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static MODEL: LazyLock<EntropyModel> = LazyLock::new(|| {
    // One flat and several skewed tables, like a trained model's.
    let tables = (0..12)
        .map(|k| {
            if k == 0 {
                return FreqTable::uniform(1024).unwrap();
            }
            let w: Vec<f64> = (0..1024).map(|i| 1.0 / (1.0 + i as f64).powf(0.5 + k as f64 * 0.1)).collect();
            let s: f64 = w.iter().sum();
            let mut f: Vec<u32> = w.iter().map(|x| 1 + (x / s * 31_744.0) as u32).collect();
            let t: u32 = f.iter().sum();
            f[0] += 32_768 - t;
            FreqTable::new(&f).unwrap()
        })
        .collect();
    EntropyModel::new(tables, *b"fuzz").unwrap()
});

fuzz_target!(|data: &[u8]| {
    let mut ix = Vec::new();
    if let Ok(h) = MODEL.read_frame(data, &mut ix) {
        assert_eq!(ix.len(), usize::from(h.level));
        let mut again = Vec::new();
        MODEL.write_frame(h.counter, &ix, &mut again).unwrap();
        let mut ix2 = Vec::new();
        MODEL.read_frame(&again, &mut ix2).unwrap();
        assert_eq!(ix, ix2);
        let mut cut = Vec::new();
        MODEL.truncate_frame(data, 1, &mut cut).unwrap();
    }
});
