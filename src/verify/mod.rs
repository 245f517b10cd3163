//! Verifying a token: keys, [`Validation`](jsonwebtoken::Validation), and the [`Claims`] a
//! request carries on.
//!
//! This module owns everything between "here is a token string" and "here are its verified
//! claims": choosing the key (one [`DecodingKey`](jsonwebtoken::DecodingKey), or a [`KeySet`]
//! chosen by the header's `kid`, or a `Jwks`), checking the signature, the time claims,
//! `iss`/`aud` and the algorithm allow-list with `jsonwebtoken`, checking a required `typ`
//! header, and giving a token without `jti` an id per [`MissingJti`]; and the
//! [verified-token cache](token_cache) that lets a token's next request skip all of it. It does
//! not ask whether the token is revoked; the backend does that after this succeeds, so a forged
//! or expired token never costs a store lookup.
//!
//! Every configuration mistake `jsonwebtoken` would only report per request (an empty
//! algorithm list, an HMAC key with an RSA algorithm) is found in [`Verifier::new`] instead.
//!
//! Its files import each other one way, each from those below it:
//!
//! ```text
//! verifier ──► keys ──► jwks_keys ──► validation ──► error, algorithms
//!    │           │          └──► crate::jwks (a key source: below it only algorithms)
//!    └──► token_cache ──► claims
//! ```
//!
//! This module was `decode` before; [`crate::decode`] names it still.

pub(crate) mod algorithms;
mod claims;
mod error;
#[cfg(feature = "jwks")]
mod jwks_keys;
mod keys;
pub mod token_cache;
mod validation;
mod verifier;

#[cfg(test)]
mod tests;

pub use algorithms::{ASYMMETRIC_ALGORITHMS, install_crypto_provider};
pub use claims::{Claims, Confirmation, DefaultClaims, MissingJti, Scopes};
pub use error::InvalidToken;
pub use keys::{Issuer, KeySet, KeySource};
pub use verifier::Verifier;
#[cfg(feature = "receivers")]
pub(crate) use verifier::normalize_typ;
pub(crate) use verifier::{KeyWait, Unverified};
