//! Sender-constrained tokens: DPoP (RFC 9449) in the layer.
//!
//! A DPoP-bound access token carries the thumbprint of a client key in `cnf.jkt`, and every
//! request that uses it carries a fresh proof signed by that key, so a stolen token is useless
//! without the key. With [`DpopConfig`] given to
//! [`JwtRevocationBuilder::dpop`](crate::JwtRevocationBuilder::dpop), the layer checks, for every
//! request, after the token verified, the binding and the proof before the revocation check,
//! and the proof's `jti` in the replay window after it (only a request about to be admitted
//! takes room there):
//!
//! ```text
//! Authorization: DPoP <token>      token has cnf.jkt?   proof (exactly one DPoP header)
//!        │                              no ─► 401 invalid_token
//!        ▼                              yes ─► typ dpop+jwt, alg allowed, public jwk, signature,
//!   verified token (cache or decode)        htm = method, htu = origin + path, iat in window,
//!        │                                  ath = hash(token), thumbprint = cnf.jkt,
//!        │                                  nonce current (if required) ─► revocation, scopes
//!        │                                  ─► jti not seen before (replay window) ─► go on
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
//! refuses (503) rather than forgets. A proof is recorded only once its token passed the
//! revocation and scope checks, so a revoked token's proofs take no room. The window is per
//! instance: a proof captured on its way to one instance can be replayed once to each other
//! instance within its window (seconds: by default 60 plus the leeway), for the same method,
//! URI and token. Where that matters, route each client to one instance, or shorten the window
//! ([`DpopConfig::max_age`]); server nonces ([`DpopConfig::require_nonce`]) bound how far ahead
//! a stolen key can sign proofs, not a replay to a second instance. A window shared through a
//! store would close the gap at the price of a round trip on every request; this crate does not
//! ship one.
//!
//! **Other bindings**: a token whose `cnf` binds it some other way (mTLS's `x5t#S256`, RFC 8705,
//! or a bare `jwk`) is refused, since the layer cannot check that binding; a deployment whose
//! proxy checks the certificate says so with
//! [`JwtRevocationBuilder::accept_unchecked_confirmation`](crate::JwtRevocationBuilder::accept_unchecked_confirmation).
//!
//! **Paths**: `htu` is compared with the path the layer sees. Put the layer where the request
//! still has the path the client sent (outside `axum::Router::nest`, or any middleware that
//! rewrites the URI), or every honest proof is refused.
//!
//! **Answers**: 401 with `WWW-Authenticate: DPoP error="invalid_dpop_proof"` (or
//! `invalid_token` for the token itself, `use_dpop_nonce` with a `DPoP-Nonce` header when a nonce
//! is required), `algs="..."`, and the `Bearer` challenge beside it under
//! [`DpopPolicy::Allowed`]; two `DPoP` headers are 400 `invalid_request`; gRPC requests get
//! status 16. The cases are [`DpopError`] in [`Rejection::Dpop`](crate::Rejection::Dpop).

mod htu;
mod nonce;
mod proof;
mod replay;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, Method};
use jsonwebtoken::Algorithm;

pub use htu::normalize_uri;
pub use nonce::MIN_NONCE_SECRET_LEN;
pub use proof::{
    Expected, InvalidProof, MAX_JTI_LEN, MAX_PROOF_LEN, VerifiedProof, jwk_thumbprint, token_hash,
    verify_proof,
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
/// The default [`replay_capacity`](DpopConfig::replay_capacity): 2^20 proofs (8 MiB). The table
/// holds 65 % of its capacity live without a refusal (it first refused at 70 % to 72 % when
/// filled), so with the default window (a proof lives up to 80 s: 60 s old, 5 s leeway each way,
/// 10 s of grace) this is room for about 8 500 accepted proofs a second per instance.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1 << 20;
/// The longest proof window accepted: [`max_age`](DpopConfig::max_age) plus the
/// [`leeway`](DpopConfig::leeway) at most an hour.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// The largest replay capacity accepted (2^27 proofs, 1 GiB).
pub const MAX_REPLAY_CAPACITY: usize = 1 << 27;
/// The longest [`nonce_lifetime`](DpopConfig::nonce_lifetime) accepted: a day.
pub const MAX_NONCE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
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
    /// The token's `cnf` binds it by a method the layer cannot check (mTLS's `x5t#S256`, a bare
    /// `jwk`): 401 `invalid_token`, unless the application accepts such tokens.
    #[error("token bound by a confirmation method this resource cannot check")]
    UnsupportedBinding,
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
            DpopError::UnsupportedBinding => {
                "token bound by a confirmation method this resource cannot check"
            }
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
            DpopError::BoundTokenAsBearer | DpopError::UnboundToken | DpopError::UnsupportedBinding => {
                Some("invalid_token")
            }
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
    /// DPoP for the resource at `resource`: an absolute `http` or `https` URL, without query or
    /// fragment, whose origin (scheme, host and port) is what every proof's `htu` must start
    /// with, followed by the request's path. A path in it is ignored for `htu` (it is the
    /// resource identifier's, for
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

    /// How old a proof's `iat` may be (default [`DEFAULT_MAX_AGE`], 60 s, whole seconds); the
    /// replay window keeps each proof this long plus the leeway. Under a second, or with the
    /// leeway over [`MAX_WINDOW`], fails `build()`.
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
    /// 8 bytes each, rounded up to whole buckets of 8, at least 16); plan for 65 % of it live at
    /// once. At the bound a proof is refused with 503, never accepted unrecorded. More than [`MAX_REPLAY_CAPACITY`], or zero, fails `build()`.
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

    /// How long a nonce is issued for (default [`DEFAULT_NONCE_LIFETIME`], 5 min, whole seconds):
    /// it is accepted for one to two lifetimes. Under a second or over [`MAX_NONCE_LIFETIME`]
    /// fails `build()`.
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
        let origin = Some(&self.resource)
            .filter(|resource| !resource.contains(['?', '#']))
            .and_then(|resource| normalize_uri(resource))
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
        if self.max_age.as_secs() == 0 || self.max_age.saturating_add(self.leeway) > MAX_WINDOW {
            return Err(ConfigError::DpopWindow);
        }
        if !(1..=MAX_NONCE_LIFETIME.as_secs()).contains(&self.nonce_lifetime.as_secs()) {
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

/// A proof that passed every check but the replay window's, carried until its request is
/// admitted.
#[derive(Debug)]
pub(crate) struct Unrecorded {
    jkt: String,
    jti: String,
    /// When its `iat` window closes (Unix seconds).
    until: u64,
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
    /// Checks a verified token's binding and, for a bound token, its request's proof: every
    /// check but the replay window's, which [`record`](Self::record) makes once the request is
    /// otherwise admitted. `Ok(None)` for a bearer token the policy lets in.
    pub(crate) fn confirm<C>(
        &self,
        claims: &Claims<C>,
        credentials: Credentials<'_>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Unrecorded>, DpopError> {
        let jkt = match (credentials.scheme, claims.dpop_jkt()) {
            (Scheme::Bearer, Some(_)) => return Err(DpopError::BoundTokenAsBearer),
            (Scheme::Bearer, None) if self.policy == DpopPolicy::Required => {
                return Err(DpopError::UnboundToken);
            }
            (Scheme::Bearer, None) => return Ok(None),
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
        Ok(Some(Unrecorded {
            until: proof.iat.saturating_add(self.max_age).saturating_add(self.leeway),
            jkt: proof.jkt,
            jti: proof.jti,
        }))
    }

    /// Records an admitted request's proof in the replay window: `Err` if it was accepted
    /// before. Last, so that a proof refused for any other reason, or whose token is revoked,
    /// takes no room. The clock is read again here: a request that waited for the revocation
    /// check is recorded at the time it is admitted.
    pub(crate) fn record(&self, proof: Unrecorded) -> Result<(), DpopError> {
        match self
            .replay
            .record(&proof.jkt, &proof.jti, proof.until, unix_now())
        {
            Seen::First => Ok(()),
            Seen::Replayed => Err(DpopError::Replayed),
            Seen::Full => Err(DpopError::ReplayWindowFull),
            Seen::Stale => Err(DpopError::InvalidProof(InvalidProof::Stale)),
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
