//! [`ConfigError`]: every reason a layer refuses to be built. A bad configuration fails once,
//! in `build()`, never per request; the checks live where the settings are understood
//! ([`crate::layer`] for the layer's own, [`crate::decode`] for keys and validation).

/// A configuration the layer refuses to build with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Neither a decoding key nor a key set was given.
    #[error("no decoding key configured")]
    NoKey,
    /// The key set is empty.
    #[error("the key set has no keys")]
    EmptyKeySet,
    /// `Validation::algorithms` is empty.
    #[error("the algorithm allow-list is empty")]
    NoAlgorithms,
    /// A key fits none of the allowed algorithms (for example an HMAC secret with `RS256`).
    #[error("key {kid:?} fits none of the allowed algorithms {algorithms:?}")]
    KeyAlgorithmMismatch {
        /// The key's id (`None` for a single key).
        kid: Option<String>,
        /// The allow-list.
        algorithms: Vec<jsonwebtoken::Algorithm>,
    },
    /// The required `typ` is empty.
    #[error("the required typ is empty")]
    EmptyTyp,
    /// The realm has characters a quoted-string cannot carry (`"`, `\`, controls, non-ASCII).
    #[error("the realm must be printable ASCII without quotes or backslashes")]
    InvalidRealm,
    /// The cookie name is empty or not an RFC 6265 token.
    #[error("the cookie name must be a non-empty RFC 6265 token")]
    InvalidCookieName,
    /// The token length bound is zero.
    #[error("the maximum token length must be positive")]
    ZeroMaxTokenLen,
    /// `jsonwebtoken` has no usable crypto provider in this process (a probe verification
    /// panicked): no backend is compiled in, or two are and none was installed. Enable this
    /// crate's `rust_crypto` or `aws_lc_rs` feature, or install a provider before building.
    #[error(
        "jsonwebtoken has no usable crypto provider (enable the rust_crypto or aws_lc_rs feature, or install one)"
    )]
    NoCryptoProvider,
}
