//! The algorithms and the crypto provider every key source and the verifier share: the
//! asymmetric allow-list a `Jwks` defaults to, and installing and probing `jsonwebtoken`'s
//! provider.

use jsonwebtoken::{Algorithm, DecodingKey};

/// Every asymmetric algorithm `jsonwebtoken` verifies (RSA first, then EC, then EdDSA): the
/// default allow-list for keys from a `Jwks` when the validation was not set.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Installs this crate's `jsonwebtoken` crypto provider as the process-wide default, unless the
/// application installed one first: `aws_lc_rs` when this crate's `aws_lc_rs` feature is on,
/// else `rust_crypto` when its `rust_crypto` feature is. Installing explicitly matters whenever
/// `jsonwebtoken` ends up with both of its backends compiled in (both features of this crate, or
/// an application that enables `jsonwebtoken/aws_lc_rs` itself while this crate uses
/// `rust_crypto`): `jsonwebtoken` cannot pick one then, and panics on every sign or verify.
/// The layer calls it when it is built (and then proves, with a probe verification, that a
/// provider works); call it yourself before *signing* tokens if no layer was built yet.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An `Err` means a provider is installed already (the application's own): keep it.
        #[cfg(feature = "aws_lc_rs")]
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        #[cfg(all(feature = "rust_crypto", not(feature = "aws_lc_rs")))]
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

/// Whether `jsonwebtoken` can verify with `key` and `algorithm` in this process without
/// panicking: it panics on every verification when it has no usable crypto provider (no backend
/// compiled in, or two and none installed). A bogus signature is enough to reach the provider.
pub(super) fn crypto_works(key: &DecodingKey, algorithm: jsonwebtoken::Algorithm) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jsonwebtoken::crypto::verify("AAAA", b"probe.probe", key, algorithm)
    }))
    .is_ok()
}
