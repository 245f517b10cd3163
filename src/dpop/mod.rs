//! Sender-constrained tokens: DPoP (RFC 9449) in the layer.
//!
//! A DPoP-bound access token carries the thumbprint of a client key in `cnf.jkt`, and every
//! request that uses it carries a fresh proof signed by that key, so a stolen token is useless
//! without the key. With [`DpopConfig`] given to
//! [`JwtRevocationBuilder::dpop`](crate::JwtRevocationBuilder::dpop), the layer checks, for every
//! request, after the token verified and before its revocation check:
//!
//! ```text
//! Authorization: DPoP <token>      token has cnf.jkt?   proof (exactly one DPoP header)
//!        │                              no ─► 401 invalid_token
//!        ▼                              yes ─► typ dpop+jwt, alg allowed, public jwk, signature,
//!   verified token (cache or decode)        htm = method, htu = origin + path, iat in window,
//!        │                                  ath = hash(token), thumbprint = cnf.jkt,
//!        │                                  nonce current (if required), jti not seen ─► go on
//! Authorization: Bearer <token>    token has cnf.jkt? yes ─► 401 (a bound token needs DPoP)
//!                                  policy Required?   yes ─► 401; else go on as a bearer token
//! ```
//!
//! Revocation, scopes and the verified-token cache apply to bound tokens exactly as to bearer
//! ones: a cached token skips its own signature check, never its proof, which is new on every
//! request. `htu` is compared with the configured origin (never the `Host` header the client
//! sent) followed by the path the request arrived with, so a proxy that rewrites paths must
//! keep them. A layer without `DpopConfig` refuses a bound token sent as `Bearer` too (it cannot
//! check the proof its issuer asked for) and reads no `DPoP` scheme.
//!
//! ```
//! use jsonwebtoken::{DecodingKey, Validation, Algorithm};
//! use tower_jwt_revocation::{JwtRevocationLayer, MemoryStore};
//! use tower_jwt_revocation::dpop::{DpopConfig, DpopPolicy};
//!
//! let layer = JwtRevocationLayer::builder(MemoryStore::new())
//!     .decoding_key(DecodingKey::from_secret(b"a long and random secret"))
//!     .validation(Validation::new(Algorithm::HS256))
//!     .dpop(DpopConfig::new("https://api.example.com").policy(DpopPolicy::Required))
//!     .build()
//!     .expect("valid configuration");
//! # let _ = layer;
//! ```
//!
//! **Replay** ([`DpopConfig::replay_capacity`]): each instance keeps the proofs it accepted, by
//! (`jkt`, `jti`), until their `iat` window closes, in a fixed lock-free table; a full table
//! refuses (503) rather than forgets. The window is per instance: a proof captured on its way to
//! one instance can be replayed once to another one within its window (seconds, by default 60
//! plus the leeway), for the same method and URI. Where that matters, require server nonces
//! ([`DpopConfig::require_nonce`]), which bound how long a proof can be used ahead (the nonce's
//! slot) but not a replay to a second instance, or route each client to one instance. A window
//! shared through a store would close the gap at the price of a round trip on every request;
//! this crate does not ship one.
//!
//! **Answers**: 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"` (or
//! `invalid_token` for the token itself, `use_dpop_nonce` with a `DPoP-Nonce` header when a nonce
//! is required), `algs="..."`, and the `Bearer` challenge beside it under
//! [`DpopPolicy::Allowed`]; two `DPoP` headers are 400 `invalid_request`; gRPC requests get
//! status 16. The cases are [`DpopError`] in [`Rejection::Dpop`](crate::Rejection::Dpop).

mod nonce;
mod proof;
mod replay;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method};
use jsonwebtoken::Algorithm;

pub use nonce::MIN_NONCE_SECRET_LEN;
pub use proof::{
    Expected, InvalidProof, MAX_JTI_LEN, MAX_PROOF_LEN, VerifiedProof, jwk_thumbprint, normalize_uri,
    token_hash, verify_proof,
};

pub(crate) use proof::alg_name;

use crate::bearer::{Credentials, Scheme};
use crate::config::ConfigError;
use crate::verify::{ASYMMETRIC_ALGORITHMS, Claims};
use nonce::Nonces;
use replay::{ReplayWindow, Seen};

/// The request header carrying the proof.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The response header carrying a server nonce (RFC 9449 §8.1, §9).
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The proof algorithms accepted by default, in the order the challenge's `algs` lists them:
/// every asymmetric algorithm, the elliptic-curve ones (what DPoP clients use most) first.
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// The default [`max_age`](DpopConfig::max_age) of a proof.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// The default clock [`leeway`](DpopConfig::leeway).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// The default [`replay_capacity`](DpopConfig::replay_capacity): 2^20 proofs (8 MiB), room for
/// about 8 000 accepted proofs a second with the default window before buckets fill.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1 << 20;
/// The largest replay capacity accepted (2^27 proofs, 1 GiB).
pub const MAX_REPLAY_CAPACITY: usize = 1 << 27;
/// The default [`nonce_lifetime`](DpopConfig::nonce_lifetime).
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// Which tokens must be DPoP-bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopPolicy {
    /// Bound tokens need the `DPoP` scheme and a proof; unbound tokens still work as `Bearer`.
    /// The default, for a migration where some clients have keys and some do not.
    #[default]
    Allowed,
    /// Every token must be DPoP-bound: an unbound token is refused whatever its scheme (FAPI 2.0).
    Required,
}

/// Why the layer refused a request's DPoP binding or proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// The `DPoP` scheme with no `DPoP` header: 401 `invalid_dpop_proof`.
    #[error("DPoP proof required")]
    MissingProof,
    /// More than one `DPoP` header: 400 `invalid_request` (RFC 9449 §4.3 step 1).
    #[error("more than one DPoP header")]
    MultipleProofs,
    /// The proof failed a check: 401 `invalid_dpop_proof`.
    #[error(transparent)]
    InvalidProof(#[from] InvalidProof),
    /// The proof was accepted before within its window: 401 `invalid_dpop_proof`.
    #[error("DPoP proof replayed")]
    Replayed,
    /// A nonce is required and the proof has none, or not a current one: 401 `use_dpop_nonce`
    /// with a fresh `DPoP-Nonce`.
    #[error("DPoP nonce required")]
    UseNonce,
    /// A DPoP-bound token sent as `Bearer` (or in a cookie): 401 `invalid_token`.
    #[error("DPoP-bound token presented as a bearer token")]
    BoundTokenAsBearer,
    /// A token without `cnf.jkt` sent with the `DPoP` scheme, or any unbound token under
    /// [`DpopPolicy::Required`]: 401 `invalid_token`.
    #[error("token is not DPoP-bound")]
    UnboundToken,
    /// The replay window has no room for the proof: 503 with `Retry-After` (a proof that
    /// cannot be recorded is not accepted).
    #[error("DPoP replay window full")]
    ReplayWindowFull,
}

impl DpopError {
    /// The fixed description sent in `error_description`.
    pub fn description(&self) -> &'static str {
        match self {
            DpopError::MissingProof => "DPoP proof required",
            DpopError::MultipleProofs => "more than one DPoP header",
            DpopError::InvalidProof(invalid) => invalid.description(),
            DpopError::Replayed => "DPoP proof replayed",
            DpopError::UseNonce => "resource server requires nonce in DPoP proof",
            DpopError::BoundTokenAsBearer => "DPoP-bound token presented as a bearer token",
            DpopError::UnboundToken => "token is not DPoP-bound",
            DpopError::ReplayWindowFull => "DPoP replay window full",
        }
    }

    /// The error code of the challenge: `invalid_dpop_proof`, `use_dpop_nonce`,
    /// `invalid_token` or `invalid_request`; `None` for the 503.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            DpopError::MissingProof | DpopError::InvalidProof(_) | DpopError::Replayed => {
                Some("invalid_dpop_proof")
            }
            DpopError::UseNonce => Some("use_dpop_nonce"),
            DpopError::BoundTokenAsBearer | DpopError::UnboundToken => Some("invalid_token"),
            DpopError::MultipleProofs => Some("invalid_request"),
            DpopError::ReplayWindowFull => None,
        }
    }
}

/// How the layer checks DPoP (RFC 9449): the resource's origin, the policy, the proof algorithms
/// and window, the replay window's size and optional server nonces. Given to
/// [`JwtRevocationBuilder::dpop`](crate::JwtRevocationBuilder::dpop); checked by `build()`.
#[derive(Clone)]
#[must_use]
pub struct DpopConfig {
    resource: String,
    policy: DpopPolicy,
    algorithms: Vec<Algorithm>,
    max_age: Duration,
    leeway: Duration,
    replay_capacity: usize,
    nonce_secret: Option<Vec<u8>>,
    nonce_lifetime: Duration,
}

impl std::fmt::Debug for DpopConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopConfig")
            .field("resource", &self.resource)
            .field("policy", &self.policy)
            .field("algorithms", &self.algorithms)
            .field("max_age", &self.max_age)
            .field("leeway", &self.leeway)
            .field("replay_capacity", &self.replay_capacity)
            .field("nonces", &self.nonce_secret.is_some())
            .finish()
    }
}

impl DpopConfig {
    /// DPoP for the resource at `resource`: an absolute `http` or `https` URL whose origin
    /// (scheme, host and port) is what every proof's `htu` must start with, followed by the
    /// request's path. A path in it is ignored for `htu` (it is the resource identifier's, for
    /// [`ProtectedResourceMetadata`](crate::resource_metadata::ProtectedResourceMetadata)).
    pub fn new(resource: impl Into<String>) -> Self {
        Self {
            resource: resource.into(),
            policy: DpopPolicy::default(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            max_age: DEFAULT_MAX_AGE,
            leeway: DEFAULT_LEEWAY,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            nonce_secret: None,
            nonce_lifetime: DEFAULT_NONCE_LIFETIME,
        }
    }

    /// Which tokens must be bound. Default [`DpopPolicy::Allowed`].
    pub fn policy(mut self, policy: DpopPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The algorithms a proof may be signed with (advertised in `algs`). Default
    /// [`DEFAULT_ALGORITHMS`], every asymmetric one; an HMAC algorithm or an empty list fails
    /// `build()`.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// How old a proof's `iat` may be (default [`DEFAULT_MAX_AGE`], 60 s); the replay window
    /// keeps each proof this long plus the leeway. Zero fails `build()`.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How far the client's clock may be off, both ways (default [`DEFAULT_LEEWAY`], 5 s): a
    /// proof issued up to this far in the future is accepted, and a stale one this much longer.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// How many accepted proofs the replay window holds (default [`DEFAULT_REPLAY_CAPACITY`],
    /// 8 bytes each, rounded up to whole buckets of 8). At the bound a proof is refused with 503,
    /// never accepted unrecorded. More than [`MAX_REPLAY_CAPACITY`], or zero, fails `build()`.
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }

    /// Requires a server nonce in every proof (RFC 9449 §9): a proof without one, or with one not
    /// issued under `secret` in the current or the previous [lifetime](Self::nonce_lifetime), is
    /// answered 401 `use_dpop_nonce` with a fresh `DPoP-Nonce` header, and never accepted. Give
    /// every instance of a fleet the same secret (at least [`MIN_NONCE_SECRET_LEN`] bytes, from a
    /// secret store; shorter fails `build()`), so each accepts the others' nonces.
    pub fn require_nonce(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.nonce_secret = Some(secret.into());
        self
    }

    /// How long a nonce is issued for (default [`DEFAULT_NONCE_LIFETIME`], 5 min, whole seconds,
    /// at least 1): it is accepted for one to two lifetimes.
    pub fn nonce_lifetime(mut self, lifetime: Duration) -> Self {
        self.nonce_lifetime = lifetime;
        self
    }

    /// The configured policy.
    pub fn policy_in_force(&self) -> DpopPolicy {
        self.policy
    }

    /// The proof algorithms configured.
    pub fn allowed_algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Checks the configuration and builds what the layer checks requests with.
    pub(crate) fn build(self) -> Result<Dpop, ConfigError> {
        let origin = normalize_uri(&self.resource)
            .and_then(|uri| {
                let path_start = uri.find("://")? + 3;
                let path = uri[path_start..].find('/')? + path_start;
                Some(uri[..path].to_owned())
            })
            .ok_or_else(|| ConfigError::InvalidResource(self.resource.clone()))?;
        if self.algorithms.is_empty()
            || self
                .algorithms
                .iter()
                .any(|alg| !ASYMMETRIC_ALGORITHMS.contains(alg))
        {
            return Err(ConfigError::DpopAlgorithms);
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::DpopWindow);
        }
        if self.replay_capacity == 0 || self.replay_capacity > MAX_REPLAY_CAPACITY {
            return Err(ConfigError::ReplayCapacity(self.replay_capacity));
        }
        let nonces = match &self.nonce_secret {
            None => None,
            Some(secret) if secret.len() < MIN_NONCE_SECRET_LEN => return Err(ConfigError::NonceSecret),
            Some(secret) => Some(Nonces::new(secret, self.nonce_lifetime)),
        };
        crate::verify::install_crypto_provider();
        let algs = self
            .algorithms
            .iter()
            .map(|alg| alg_name(*alg))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Dpop {
            origin,
            policy: self.policy,
            algorithms: self.algorithms,
            algs,
            max_age: self.max_age.as_secs(),
            leeway: self.leeway.as_secs(),
            replay: ReplayWindow::new(self.replay_capacity),
            nonces,
        })
    }
}

/// The built DPoP check, shared by every service of a layer.
#[derive(Debug)]
pub(crate) struct Dpop {
    /// `scheme://host[:port]`, normalized, no trailing slash.
    origin: String,
    pub(crate) policy: DpopPolicy,
    algorithms: Vec<Algorithm>,
    /// The `algs` of the challenge: the allow-list, space-separated.
    pub(crate) algs: String,
    max_age: u64,
    leeway: u64,
    replay: ReplayWindow,
    nonces: Option<Nonces>,
}

impl Dpop {
    /// Checks a verified token's binding and, for a bound token, its request's proof.
    pub(crate) fn confirm<C>(
        &self,
        claims: &Claims<C>,
        credentials: Credentials<'_>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), DpopError> {
        let jkt = match (credentials.scheme, claims.dpop_jkt()) {
            (Scheme::Bearer, Some(_)) => return Err(DpopError::BoundTokenAsBearer),
            (Scheme::Bearer, None) if self.policy == DpopPolicy::Required => {
                return Err(DpopError::UnboundToken);
            }
            (Scheme::Bearer, None) => return Ok(()),
            (Scheme::Dpop, None) => return Err(DpopError::UnboundToken),
            (Scheme::Dpop, Some(jkt)) => jkt,
        };
        let mut proofs = headers.get_all(DPOP).iter();
        let proof = proofs.next().ok_or(DpopError::MissingProof)?;
        if proofs.next().is_some() {
            return Err(DpopError::MultipleProofs);
        }
        let now = unix_now();
        let mut uri = String::with_capacity(self.origin.len() + path.len() + 1);
        uri.push_str(&self.origin);
        if !path.starts_with('/') {
            uri.push('/');
        }
        uri.push_str(path);
        let expected = Expected {
            method: method.as_str(),
            uri: &uri,
            access_token: Some(credentials.token),
            jkt: Some(jkt),
            now,
            max_age: self.max_age,
            leeway: self.leeway,
        };
        let proof = verify_proof(proof.as_bytes(), &expected, &self.algorithms)?;
        if let Some(nonces) = &self.nonces
            && !proof
                .nonce
                .as_deref()
                .is_some_and(|nonce| nonces.accepts(nonce, now))
        {
            return Err(DpopError::UseNonce);
        }
        // Recorded last: a proof that fails any other check takes no room in the window. It
        // stays until the `iat` check would refuse it anyway.
        let until = proof.iat.saturating_add(self.max_age).saturating_add(self.leeway);
        match self.replay.record(&proof.jkt, &proof.jti, until, now) {
            Seen::First => Ok(()),
            Seen::Replayed => Err(DpopError::Replayed),
            Seen::Full => Err(DpopError::ReplayWindowFull),
        }
    }

    /// A fresh nonce for a response, when nonces are required.
    pub(crate) fn nonce(&self) -> Option<String> {
        self.nonces.as_ref().map(|nonces| nonces.issue(unix_now()))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
