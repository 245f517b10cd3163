//! `Authorization` parsing with arbitrary bytes. Invariants beyond "no panic": a token found
//! is a non-empty slice of the input, within the bound, and entirely RFC 6750 token68.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_jwt_revocation::bearer::parse_credentials;

const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(token)) = parse_credentials(data, MAX) {
        assert!(!token.is_empty() && token.len() <= MAX);
        let start = token.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + token.len() <= data.len(), "the token is a slice of the input");
        let body = token.trim_end_matches('=');
        assert!(!body.is_empty());
        assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
        assert!(data[..start].to_ascii_lowercase().windows(6).any(|w| w == b"bearer"));
    }
});
