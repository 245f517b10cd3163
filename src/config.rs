//! [`ConfigError`]: every reason a layer refuses to be built. A bad configuration fails once,
//! in `build()`, never per request; the checks live where the settings are understood
//! ([`crate::layer`] for the layer's own, [`crate::verify`] for keys and validation).

/// The largest verified-token cache capacity accepted (16 Mi entries, 640 MiB of empty slots);
/// also at [`token_cache::MAX_CAPACITY`](crate::verify::token_cache::MAX_CAPACITY).
pub const MAX_CAPACITY: usize = 1 << 24;

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
    /// Both a layer-wide key (`decoding_key`, `key_set`, `jwks`) and per-issuer keys
    /// (`issuer`) were given; use one or the other.
    #[error("both a layer-wide key and per-issuer keys are configured")]
    KeysAndIssuers,
    /// Two issuers with the same `iss`.
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// A key source found by discovery belongs to another issuer than the one it is configured
    /// for (or than the validation's `iss`).
    #[error("keys discovered for issuer {discovered:?} are configured for {configured:?}")]
    IssuerMismatch {
        /// The issuer the configuration names.
        configured: String,
        /// The issuer the key source was discovered from.
        discovered: String,
    },
    /// A required scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`,
    /// `\`, controls, non-ASCII).
    #[error("scope {0:?} is not an RFC 6749 scope token")]
    InvalidScope(String),
    /// `require` was called before `claims::<C2>()`: the predicate was for the old claim type.
    #[error("set the claims type before the claims predicate (`claims::<C>()` then `require`)")]
    PredicateBeforeClaims,
    /// The verified-token cache's capacity exceeds [`MAX_CAPACITY`].
    #[error("the verified-token cache capacity {0} exceeds the maximum of {max}", max = MAX_CAPACITY)]
    TokenCacheCapacity(usize),
    /// Revocations keyed by issuer were asked for, but no issuer is configured: a layer with
    /// keys and no `issuer(...)` does not know which issuer its tokens come from.
    #[error("revocations can be keyed by issuer only when the layer's issuers are configured")]
    KeyedWithoutIssuer,
    /// Revocations are keyed by issuer, and an issuer's `iss` is empty or holds a NUL: no store
    /// can file a revocation under it.
    #[error("issuer {0:?} cannot key revocations: it is empty or holds a NUL")]
    UnkeyableIssuer(String),
    /// The DPoP resource (or the protected-resource metadata's `resource`) is not an absolute
    /// `http` or `https` URL with a host and without user information, query or fragment.
    #[error("resource {0:?} is not an absolute http(s) URL with a host, without query or fragment")]
    InvalidResource(String),
    /// The DPoP proof algorithms are empty or include an HMAC (a proof is signed by a public key).
    #[error("DPoP proof algorithms must be a non-empty list of asymmetric algorithms")]
    DpopAlgorithms,
    /// The DPoP proof's maximum age is zero.
    #[error("the DPoP proof max age must be positive")]
    DpopWindow,
    /// The DPoP replay window's capacity is zero or over
    /// [`MAX_REPLAY_CAPACITY`](crate::dpop::MAX_REPLAY_CAPACITY).
    #[error("the DPoP replay capacity {0} is zero or over the maximum")]
    ReplayCapacity(usize),
    /// The DPoP nonce secret is shorter than
    /// [`MIN_NONCE_SECRET_LEN`](crate::dpop::MIN_NONCE_SECRET_LEN).
    #[error("the DPoP nonce secret must be at least 32 bytes")]
    NonceSecret,
    /// The resource-metadata URL cannot be carried in a challenge (not an absolute `http(s)` URL,
    /// or holding `"`, `\\`, controls or non-ASCII).
    #[error("resource metadata URL {0:?} is not an absolute http(s) URL a challenge can carry")]
    InvalidMetadataUrl(String),
}
