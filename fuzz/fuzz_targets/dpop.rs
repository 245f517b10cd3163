//! The `DPoP` header (RFC 9449 proofs) with arbitrary bytes. Invariants beyond "no panic": raw
//! input never verifies; input split at the first 0xff into a header and a payload JSON,
//! assembled into a proof with a signature nobody made, never verifies either, whatever the JSON
//! says; a normalized URI normalizes to itself.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use tower_jwt_revocation::dpop::{DEFAULT_ALGORITHMS, Expected, normalize_uri, verify_proof};

const EXPECTED: Expected<'static> = Expected {
    method: "GET",
    uri: "https://api.example.com/me",
    access_token: Some("token"),
    jkt: None,
    now: 1_700_000_000,
    max_age: 60,
    leeway: 5,
};

fuzz_target!(|data: &[u8]| {
    tower_jwt_revocation::verify::install_crypto_provider();
    assert!(verify_proof(data, &EXPECTED, &DEFAULT_ALGORITHMS).is_err());
    if let Some(split) = data.iter().position(|b| *b == 0xff) {
        let proof = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&data[..split]),
            URL_SAFE_NO_PAD.encode(&data[split + 1..]),
            URL_SAFE_NO_PAD.encode([7u8; 64]),
        );
        assert!(verify_proof(proof.as_bytes(), &EXPECTED, &DEFAULT_ALGORITHMS).is_err());
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(normal) = normalize_uri(text)
    {
        assert_eq!(normalize_uri(&normal).as_deref(), Some(normal.as_str()));
    }
});
