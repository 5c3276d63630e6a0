//! API keys and the admin token: formats, generation, parsing, hashing. Pure; the parsers take
//! untrusted bytes (gRPC metadata) and are fuzzed (`fuzz/fuzz_targets/api_key.rs`).
//!
//! An API key is `aick_<key_id>_<secret>`: `key_id` is 16 lowercase hex digits (64 random bits,
//! public: it names the key in listings, logs and usage, and finds its row), `secret` is 64
//! lowercase hex digits (256 random bits). Only SHA-256 of the secret is stored. A plain hash,
//! not a slow password hash (argon2, bcrypt), is right here: slow hashes exist to make guessing
//! *low-entropy* human passwords expensive, and a 256-bit random secret cannot be guessed at any
//! speed, so a fast hash loses nothing and lets every session open check the key in
//! microseconds. The admin token is `aica_<64 hex>` (256 random bits) with the same reasoning.

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

pub const KEY_PREFIX: &str = "aick_";
pub const ADMIN_PREFIX: &str = "aica_";
const KEY_ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;
/// Length of a well-formed API key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_ID_HEX + 1 + SECRET_HEX;
/// Length of a well-formed admin token.
pub const ADMIN_LEN: usize = ADMIN_PREFIX.len() + SECRET_HEX;

/// An API key taken apart; `secret_sha256` is what the store compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub key_id: String,
    pub secret_sha256: String,
}

/// A new key: the full text (shown once) and what the store keeps.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub full: String,
    pub key_id: String,
    pub secret_sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(D[usize::from(b >> 4)]));
        s.push(char::from(D[usize::from(b & 15)]));
    }
    s
}

/// Random lowercase hex of `bytes` random bytes from the OS-seeded CSPRNG.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Equality whose time does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn generate_key() -> NewKey {
    let key_id = random_hex(KEY_ID_HEX / 2);
    let secret = random_hex(SECRET_HEX / 2);
    NewKey {
        full: format!("{KEY_PREFIX}{key_id}_{secret}"),
        secret_sha256: sha256_hex(secret.as_bytes()),
        key_id,
    }
}

/// Takes an API key apart. Never panics; the error says what is wrong without echoing the input.
pub fn parse_key(s: &str) -> Result<ParsedKey> {
    let rest = s
        .strip_prefix(KEY_PREFIX)
        .ok_or(Error::MalformedKey("does not start with aick_"))?;
    if s.len() != KEY_LEN {
        return Err(Error::MalformedKey("wrong length"));
    }
    // Length and prefix are checked and the prefix is ASCII, so these byte offsets are on
    // character boundaries only if the rest is ASCII: check that first.
    if !rest.is_ascii() {
        return Err(Error::MalformedKey("not ASCII"));
    }
    let (key_id, tail) = rest.split_at(KEY_ID_HEX);
    let secret = tail
        .strip_prefix('_')
        .ok_or(Error::MalformedKey("no separator after the key id"))?;
    if !is_lower_hex(key_id) || !is_lower_hex(secret) {
        return Err(Error::MalformedKey("not lowercase hex"));
    }
    Ok(ParsedKey {
        key_id: key_id.to_owned(),
        secret_sha256: sha256_hex(secret.as_bytes()),
    })
}

/// A new admin token (`aica_<64 hex>`).
pub fn generate_admin_token() -> String {
    format!("{ADMIN_PREFIX}{}", random_hex(SECRET_HEX / 2))
}

/// Checks an admin token's form (so a typo is reported as such, not as a wrong token).
pub fn check_admin_token_form(s: &str) -> Result<()> {
    match s.strip_prefix(ADMIN_PREFIX) {
        Some(rest) if s.len() == ADMIN_LEN && is_lower_hex(rest) => Ok(()),
        _ => Err(Error::MalformedKey(
            "admin token is not aica_ + 64 lowercase hex",
        )),
    }
}

/// Short public fingerprint of an admin token (first 8 hex of its SHA-256), for the audit log.
pub fn fingerprint(token: &str) -> String {
    sha256_hex(token.as_bytes())[..8].to_owned()
}

/// The credential in gRPC metadata values: `authorization: Bearer <token>` (scheme matched
/// case-insensitively, RFC 7235) or a bare `x-api-key: <token>`. Pure; fuzzed.
pub fn bearer<'a>(authorization: Option<&'a [u8]>, x_api_key: Option<&'a [u8]>) -> Option<&'a str> {
    if let Some(v) = authorization {
        let v = std::str::from_utf8(v).ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    let v = std::str::from_utf8(x_api_key?).ok()?.trim();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_id_and_hash() {
        let k = generate_key();
        assert_eq!(k.full.len(), KEY_LEN);
        let p = parse_key(&k.full).unwrap();
        assert_eq!(p.key_id, k.key_id);
        assert_eq!(p.secret_sha256, k.secret_sha256);
        assert_ne!(generate_key().full, k.full);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let k = generate_key().full;
        for bad in [
            String::new(),
            k[..KEY_LEN - 1].to_owned(),
            format!("{k}0"),
            k.replace("aick_", "aica_"),
            k.to_uppercase(),
            format!("{}-{}", &k[..21], &k[22..]),
            format!("{}é{}", &k[..30], &k[32..]),
        ] {
            assert!(parse_key(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_changed_secret_changes_the_hash() {
        let k = generate_key().full;
        let last = if k.ends_with('0') { '1' } else { '0' };
        let other = format!("{}{last}", &k[..KEY_LEN - 1]);
        assert_ne!(
            parse_key(&k).unwrap().secret_sha256,
            parse_key(&other).unwrap().secret_sha256
        );
    }

    #[test]
    fn bearer_and_x_api_key() {
        assert_eq!(bearer(Some(b"Bearer abc"), None), Some("abc"));
        assert_eq!(bearer(Some(b"bearer  abc "), None), Some("abc"));
        assert_eq!(bearer(Some(b"Basic abc"), Some(b"k")), None);
        assert_eq!(bearer(Some(b"Bearer "), None), None);
        assert_eq!(bearer(None, Some(b" k ")), Some("k"));
        assert_eq!(bearer(None, None), None);
        assert_eq!(bearer(Some(&[0xff, 0xfe]), None), None);
    }

    #[test]
    fn admin_tokens() {
        let t = generate_admin_token();
        check_admin_token_form(&t).unwrap();
        assert!(check_admin_token_form(&t[1..]).is_err());
        assert_eq!(fingerprint(&t).len(), 8);
        assert!(ct_eq(t.as_bytes(), t.as_bytes()));
        assert!(!ct_eq(t.as_bytes(), generate_admin_token().as_bytes()));
    }
}
