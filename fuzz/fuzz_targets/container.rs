//! Untrusted `.aic` files: header and packet parsing never panic; packets stay within bounds.
#![no_main]

use aic_codec::bitstream::container::{self, MAX_PACKET_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, packets)) = container::read(data) {
        let mut again = Vec::new();
        h.write(&mut again).expect("a header that parsed must serialise");
        assert_eq!(container::read(&again).unwrap().0, h);
        for p in packets {
            match p {
                Ok(Some(p)) => assert!(!p.is_empty() && p.len() <= MAX_PACKET_BYTES),
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
});
