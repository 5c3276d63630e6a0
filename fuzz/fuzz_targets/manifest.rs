//! Untrusted model manifests: validation never panics, and a valid one builds its entropy model.
#![no_main]

use aic_codec::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = Manifest::from_json(text) {
            m.entropy_model().expect("validated manifest has a usable entropy model");
            let _ = m.parse_codebooks(data);
        }
    }
});
