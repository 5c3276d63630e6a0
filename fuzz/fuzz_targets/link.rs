//! Untrusted bytes from the other process of the bridge link: control messages (Unix socket),
//! ring slot messages (shared memory) and the shared mapping's header. Decoding never panics,
//! and whatever decodes re-encodes to the same bytes (control messages: to the same message;
//! an `Open` carries an API key of at most 255 bytes since link protocol version 2).
#![no_main]

use aic_sfu_bridge::link::{
    Control, FrameOut, LinkKey, ShmHeader, decode_frame_in, decode_frame_out, encode_frame_out,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Control::decode(data) {
        if let Control::Open { api_key, .. } = &c {
            assert!(api_key.as_str().len() <= LinkKey::MAX_LEN);
        }
        let mut b = Vec::new();
        c.encode(&mut b);
        assert_eq!(Control::decode(&b).ok(), Some(c));
    }
    let mut pcm = Vec::new();
    if decode_frame_in(data, &mut pcm).is_ok() {
        assert!(pcm.len() <= aic_sfu_bridge::link::FRAME_16K);
    }
    let mut out = FrameOut::default();
    if decode_frame_out(data, &mut out).is_ok() {
        let mut b = Vec::new();
        encode_frame_out(&out, &mut b).unwrap();
        assert_eq!(&b[..], data);
    }
    if let Ok(h) = ShmHeader::parse(data) {
        assert!(h.validate().is_ok());
        assert_eq!(&h.write()[..32], &data[..32]);
    }
});
