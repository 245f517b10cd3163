//! A process where `jsonwebtoken` has no usable crypto provider: building a layer fails with
//! `ConfigError::NoCryptoProvider` instead of every request panicking. (Its own test binary: the
//! provider is process-wide and installed once.)
//!
//! The other half, a build in which `jsonwebtoken` has both backends compiled in while this
//! crate enables only one, is every other test binary: the dev-dependency on
//! `jsonwebtoken/rust_crypto` in `Cargo.toml` (next to this crate's default `aws_lc_rs`) makes it so, and the layer installs this crate's
//! provider when it is built. (Reproduced on `main` before the fix: every verification there
//! panicked with "Could not automatically determine the process-level CryptoProvider".)

use tower_jwt_revocation::jsonwebtoken::crypto::{CryptoProvider, KeyUtils};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tower_jwt_revocation::{ConfigError, JwtRevocationLayer, MemoryStore};

/// What `jsonwebtoken` falls back to when it cannot pick a backend: a provider that panics.
static UNUSABLE: CryptoProvider = CryptoProvider {
    signer_factory: |_, _| panic!("no crypto provider"),
    verifier_factory: |_, _| panic!("no crypto provider"),
    key_utils: KeyUtils::new_unimplemented(),
};

#[test]
fn a_layer_is_not_built_without_a_usable_crypto_provider() {
    UNUSABLE.install_default().unwrap();
    let built = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(b"a secret"))
        .validation(Validation::new(Algorithm::HS256))
        .build();
    assert_eq!(built.err(), Some(ConfigError::NoCryptoProvider));
}
