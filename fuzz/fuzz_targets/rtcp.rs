//! Untrusted RTCP compound packets: parsing never panics, and what parses stays in bounds.
#![no_main]

use aic_sfu_bridge::rtcp::{Compound, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for p in Compound::new(data) {
        match p {
            Ok(Packet::SenderReport { blocks, extension, .. })
            | Ok(Packet::ReceiverReport { blocks, extension, .. }) => {
                assert!(blocks.count() * 24 + extension.len() <= data.len());
            }
            Ok(Packet::Other { body, .. }) => assert!(body.len() <= data.len()),
            Ok(Packet::Nack { items, .. }) => {
                assert!(items.clone().count() * 4 <= data.len());
                assert!(items.sequences().count() <= data.len() / 4 * 17);
            }
            Ok(Packet::Pli { .. } | Packet::Fir { .. }) => {}
            Err(_) => {}
        }
    }
});
