//! API keys and bearer credentials arrive in gRPC metadata from anyone: parsing must never
//! panic, and whatever parses must re-format to the same key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (a, b) = data.split_at(data.len() / 2);
    let cred = aic_control::key::bearer(Some(a), Some(b));
    let _ = aic_control::key::bearer(None, Some(b));
    if let Some(c) = cred {
        let _ = aic_control::key::parse_key(c);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(k) = aic_control::key::parse_key(s) {
            assert_eq!(k.key_id.len(), 16);
            assert!(s.contains(&k.key_id));
        }
        let _ = aic_control::key::check_admin_token_form(s);
    }
});
