//! Untrusted RTP packets: parsing never panics; whatever parses stays inside the input.
#![no_main]

use aic_sfu_bridge::rtp::RtpPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RtpPacket::parse(data) {
        assert!(p.payload.len() + 12 <= data.len());
        if let Some(els) = p.extension.and_then(|e| e.elements()) {
            for e in els {
                if let Ok((_, v)) = e {
                    assert!(v.len() <= data.len());
                }
            }
        }
    }
});
