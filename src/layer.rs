//! [`JwtRevocationLayer`]: the configuration of the request path, checked once, shared by every
//! service the layer wraps.
//!
//! This module owns the builder and the checks that refuse a bad configuration when the layer is
//! built, never per request. The per-request work is in [`crate::service`] (and its future);
//! the decision each request ends in, with the policies and counters, in [`crate::decision`];
//! token parsing and verification in [`crate::bearer`] and [`crate::verify`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use tower::Layer;

use crate::backend::RevocationBackend;
use crate::bearer::DEFAULT_MAX_TOKEN_LEN;
use crate::config::ConfigError;
use crate::decision::{Counters, FailurePolicy, Metrics, Shared, SkipPaths};
use crate::dpop::{DpopConfig, DpopPolicy};
use crate::reject::{DefaultReject, DpopChallenge, RejectSettings};
use crate::scope::{ClaimsCheck, RequiredScopes};
use crate::service::JwtRevocation;
use crate::verify::token_cache::{self, TokenCache};
use crate::verify::{Claims, DefaultClaims, Issuer, KeySet, KeySource, MissingJti, Verifier};

/// A Tower layer that validates the bearer JWT of every request and refuses revoked tokens.
///
/// `S` is the backend ([`MemoryStore`](crate::MemoryStore), or a chain such as a cache over a
/// database store), `C` the application's own claim type, `R` the rejection hook. Build it
/// with [`JwtRevocationLayer::builder`]; cloning it is cheap and clones share configuration,
/// backend and [`Metrics`].
///
/// ```
/// use jsonwebtoken::{Algorithm, DecodingKey, Validation};
/// use tower_jwt_revocation::{JwtRevocationLayer, MemoryStore};
///
/// let layer = JwtRevocationLayer::builder(MemoryStore::new())
///     .decoding_key(DecodingKey::from_secret(b"a long and random secret"))
///     .validation(Validation::new(Algorithm::HS256))
///     .build()
///     .expect("valid configuration");
/// # let _ = layer;
/// ```
pub struct JwtRevocationLayer<S, C = DefaultClaims, R = DefaultReject> {
    shared: Arc<Shared<S, R>>,
    check: Option<ClaimsCheck<C>>,
    cache: Option<Arc<TokenCache<C>>>,
    _claims: PhantomData<fn() -> C>,
}

impl<S, C, R> Clone for JwtRevocationLayer<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            check: self.check.clone(),
            cache: self.cache.clone(),
            _claims: PhantomData,
        }
    }
}

impl<S: std::fmt::Debug, C, R: std::fmt::Debug> std::fmt::Debug for JwtRevocationLayer<S, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRevocationLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S: RevocationBackend> JwtRevocationLayer<S> {
    /// Starts a configuration over `backend`. At least a decoding key (or key set) must be set
    /// before [`build`](JwtRevocationBuilder::build).
    pub fn builder(backend: S) -> JwtRevocationBuilder<S> {
        JwtRevocationBuilder::new(backend)
    }
}

impl<S, C, R> JwtRevocationLayer<S, C, R> {
    /// The backend the layer checks against.
    pub fn backend(&self) -> &S {
        &self.shared.backend
    }

    /// The decision counts so far.
    pub fn metrics(&self) -> Metrics {
        self.shared.counters.snapshot()
    }

    /// Whether the layer can decide requests, for a readiness probe: every key source holds
    /// keys it may use (an identity provider's first key set arrived and has not gone stale;
    /// with several issuers, every one's: an instance that cannot verify one provider's tokens
    /// would answer them 503) and the backend [is ready](RevocationBackend::is_ready) (a cache
    /// tier has proved sync with its ledger since it started). Liveness is another matter.
    /// Never waits.
    pub fn is_ready(&self) -> bool
    where
        S: RevocationBackend,
    {
        self.shared.verifier.keys_ready() && self.shared.backend.is_ready()
    }
}

impl<Inner, S, C, R> Layer<Inner> for JwtRevocationLayer<S, C, R> {
    type Service = JwtRevocation<Inner, S, C, R>;

    fn layer(&self, inner: Inner) -> Self::Service {
        JwtRevocation::new(
            inner,
            Arc::clone(&self.shared),
            self.check.clone(),
            self.cache.clone(),
        )
    }
}

/// The configuration of a [`JwtRevocationLayer`]. Every setter takes and returns the builder;
/// [`build`](Self::build) checks the whole configuration.
#[must_use = "a builder does nothing until `build` is called"]
pub struct JwtRevocationBuilder<S, C = DefaultClaims, R = DefaultReject> {
    backend: S,
    config: Config,
    reject: R,
    check: Option<ClaimsCheck<C>>,
    _claims: PhantomData<fn() -> C>,
}

/// The builder's settings that do not depend on its type parameters.
struct Config {
    keys: Option<KeySource>,
    issuers: Vec<Issuer>,
    validation: Validation,
    /// The application set the validation (its algorithms are then used as they are).
    validation_set: bool,
    scopes: Vec<String>,
    /// A predicate was set and then dropped by `claims::<C2>()`.
    check_dropped: bool,
    required_typ: Option<String>,
    max_lifetime: Option<Duration>,
    iat_leeway: Option<Duration>,
    policy: FailurePolicy,
    missing_jti: MissingJti,
    optional: bool,
    skip_paths: Option<SkipPaths>,
    cookie: Option<String>,
    max_token_len: usize,
    settings: RejectSettings,
    /// Verified-token cache slots; 0: no cache.
    token_cache_capacity: usize,
    token_cache_max_token_len: usize,
    /// `None`: key revocations by issuer as the backend declares (`issuer_keying`).
    key_by_issuer: Option<bool>,
    dpop: Option<DpopConfig>,
    accept_unchecked_confirmation: bool,
}

impl<S> JwtRevocationBuilder<S> {
    fn new(backend: S) -> Self {
        // `jsonwebtoken` skips `nbf` by default; a token that says it is not valid yet is not.
        let validation = Validation {
            validate_nbf: true,
            ..Validation::default()
        };
        Self {
            backend,
            config: Config {
                keys: None,
                issuers: Vec::new(),
                key_by_issuer: None,
                validation,
                validation_set: false,
                scopes: Vec::new(),
                check_dropped: false,
                required_typ: None,
                max_lifetime: None,
                iat_leeway: None,
                policy: FailurePolicy::default(),
                missing_jti: MissingJti::default(),
                optional: false,
                skip_paths: None,
                cookie: None,
                max_token_len: DEFAULT_MAX_TOKEN_LEN,
                settings: RejectSettings::default(),
                token_cache_capacity: token_cache::DEFAULT_CAPACITY,
                token_cache_max_token_len: token_cache::DEFAULT_MAX_TOKEN_LEN,
                dpop: None,
                accept_unchecked_confirmation: false,
            },
            reject: DefaultReject,
            check: None,
            _claims: PhantomData,
        }
    }
}

impl<S, C, R> JwtRevocationBuilder<S, C, R> {
    /// Verifies every token with this key.
    pub fn decoding_key(mut self, key: DecodingKey) -> Self {
        self.config.keys = Some(KeySource::Single(key));
        self
    }

    /// Verifies each token with the key its header's `kid` names; a token with no or an
    /// unknown `kid` is refused.
    pub fn key_set(mut self, keys: KeySet) -> Self {
        self.config.keys = Some(KeySource::Set(keys));
        self
    }

    /// Verifies each token with the key its header's `kid` names among those an identity
    /// provider publishes (feature `jwks`); a token without `kid` is verified when exactly one
    /// key fits its `alg`. A key source found by discovery also requires `iss` to be its
    /// issuer. Unless [`validation`](Self::validation) is set, the allow-list is every
    /// asymmetric algorithm (see [`ASYMMETRIC_ALGORITHMS`](crate::verify::ASYMMETRIC_ALGORITHMS)).
    /// Set the audience (the validation's `set_audience`, or use [`issuer`](Self::issuer) with
    /// [`Issuer::audience`]): without one, `jsonwebtoken` refuses every token carrying `aud`,
    /// as most providers' access tokens do.
    #[cfg(feature = "jwks")]
    pub fn jwks(mut self, jwks: crate::jwks::Jwks) -> Self {
        self.config.keys = Some(KeySource::Jwks(jwks));
        self
    }

    /// Accepts tokens of `issuer` (call once per issuer): each token is matched to its issuer by
    /// `iss` before any key is tried, and verified with that issuer's keys, audience and
    /// algorithms. Exclusive with [`decoding_key`](Self::decoding_key),
    /// [`key_set`](Self::key_set) and `jwks`.
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.config.issuers.push(issuer);
        self
    }

    /// Whether session and subject revocations are keyed by the token's issuer: the claims then
    /// carry it ([`Claims::revocation_issuer`](crate::Claims::revocation_issuer)), their
    /// revocation helpers file revocations under it, and the backend applies a revocation to a
    /// token when it was filed under its issuer or without one (see
    /// [`TokenFacts::issuer`](crate::TokenFacts::issuer)).
    ///
    /// `sub` and `sid` are unique only per issuer, so a layer accepting several issuers should
    /// key, but only once no instance sharing its ledger runs a build that predates keying (such
    /// a build does not read keyed rows, and would serve a token this one refused). So the
    /// default is the backend's declaration,
    /// [`RevocationBackend::issuer_keying`](crate::RevocationBackend::issuer_keying)
    /// (`PgStore::with_issuer_keying`), which the receivers over the same store follow too: on,
    /// the layer keys whenever it knows its tokens' issuer (configured with `issuer`, a
    /// discovered `jwks`, or a validation naming exactly one `iss`); off (the default), it does
    /// not. A layer that does not key still enforces keyed revocations, for every issuer's
    /// `sid` or `sub` (revoking too much, never too little). Set here, it overrides the
    /// backend's declaration for this layer; [`build`](Self::build) fails with
    /// [`ConfigError::KeyedWithoutIssuer`] when it is on and the issuer is unknown.
    pub fn key_revocations_by_issuer(mut self, keyed: bool) -> Self {
        self.config.key_by_issuer = Some(keyed);
        self
    }

    /// The `jsonwebtoken` validation: algorithm allow-list, `iss`, `aud`, leeway, required
    /// claims. The default is `Validation::default()` (HS256, `exp` required, 60 s leeway) with
    /// `nbf` checking switched on; with keys from a `Jwks`, every asymmetric algorithm instead
    /// of HS256.
    pub fn validation(mut self, validation: Validation) -> Self {
        self.config.validation = validation;
        self.config.validation_set = true;
        self
    }

    /// Requires every token to grant all of `scopes` (in `scope` or `scp`), checked after the
    /// token verified and was found not revoked: 403 `insufficient_scope` naming them
    /// otherwise. For scopes per route, use [`RequireScopes`](crate::RequireScopes).
    pub fn require_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.config.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Requires `predicate` to hold for every token's verified claims, checked after the
    /// revocation check: 403 `insufficient_scope` otherwise. Set the claims type first
    /// ([`claims`](Self::claims)).
    pub fn require(mut self, predicate: impl Fn(&Claims<C>) -> bool + Send + Sync + 'static) -> Self {
        self.check = Some(Arc::new(predicate));
        self
    }

    /// Requires the header's `typ` to be this media type (RFC 8725 §3.11), such as `at+jwt`;
    /// compared case-insensitively, with or without `application/`.
    pub fn required_typ(mut self, typ: impl Into<String>) -> Self {
        self.config.required_typ = Some(typ.into());
        self
    }

    /// Refuses tokens that expire further than `max_lifetime` (plus the leeway) in the future,
    /// that have no `exp`, or whose `exp - iat` exceeds it (plus the leeway). It bounds how long
    /// any accepted token can live, so a revocation whose token expiry is unknown (an admin
    /// revoking a bare `jti`) can be kept for exactly that long and no longer, and a subject
    /// cutoff older than it covers no token that can still be accepted (see
    /// `PgStore::with_max_token_lifetime`).
    pub fn max_token_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.config.max_lifetime = Some(max_lifetime);
        self
    }

    /// How far in the future a token's `iat` may lie before it is refused (401 `invalid_token`,
    /// "token issued in the future"). Default: the validation's leeway (60 s unless set).
    ///
    /// Subject cutoffs ("log out everywhere") compare `iat` with the cutoff, so they assume the
    /// issuers' clocks are within this leeway of the servers'. A token claiming an `iat` past
    /// it is refused outright; one within it can survive a cutoff set less than the leeway after
    /// it was really issued.
    pub fn iat_leeway(mut self, leeway: Duration) -> Self {
        self.config.iat_leeway = Some(leeway);
        self
    }

    /// What to do when the backend cannot answer. Default [`FailurePolicy::Closed`].
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// What to do with a token that has no `jti`. Default [`MissingJti::Reject`].
    pub fn missing_jti(mut self, missing_jti: MissingJti) -> Self {
        self.config.missing_jti = missing_jti;
        self
    }

    /// Lets requests without any bearer token through, with no claims in their extensions.
    /// A token that is present is still verified and checked, and refused if bad. Required
    /// scopes and the claims predicate apply to requests with a token only.
    pub fn optional(mut self) -> Self {
        self.config.optional = true;
        self
    }

    /// Exempts requests whose URI path matches `predicate`: they reach the inner service with
    /// no token required and no claims. For carving out unauthenticated methods of a tonic
    /// server (`/grpc.health.v1.Health/Check`, reflection, a `Login` method), where the layer
    /// wraps the whole server; with axum, prefer `Router::route_layer` on the protected routes.
    ///
    /// ```
    /// # use tower_jwt_revocation::{JwtRevocationLayer, MemoryStore};
    /// # use tower_jwt_revocation::jsonwebtoken::DecodingKey;
    /// let layer = JwtRevocationLayer::builder(MemoryStore::new())
    ///     .decoding_key(DecodingKey::from_secret(b"secret"))
    ///     .skip_paths(|path| path.starts_with("/grpc.health.v1.Health/") || path == "/demo.Auth/Login")
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn skip_paths(mut self, predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.config.skip_paths = Some(Arc::new(predicate));
        self
    }

    /// Also reads the access token from cookie `name` (for browser clients). The
    /// `Authorization` header wins: the cookie is read only when the request has no
    /// `Authorization` header at all, so a malformed header never falls back to the cookie.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.config.cookie = Some(name.into());
        self
    }

    /// The `realm` of the `WWW-Authenticate` challenge.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.config.settings.realm = Some(realm.into());
        self
    }

    /// Accepts DPoP-bound tokens (RFC 9449) as `dpop` says: the `DPoP` scheme with a proof on
    /// every request, checked after the token verified and before its revocation check, its
    /// `jti` recorded in the replay window once the request is admitted (see [`crate::dpop`]). Without it, a bound token is refused (as a bearer token it would let a
    /// thief in) and the `DPoP` scheme is not read.
    pub fn dpop(mut self, dpop: DpopConfig) -> Self {
        self.config.dpop = Some(dpop);
        self
    }

    /// Accepts tokens whose `cnf` binds them by a method other than DPoP's `jkt` (mTLS's
    /// `x5t#S256`, RFC 8705; a `jwk`), which the layer cannot check: only where something in
    /// front of it (a TLS-terminating proxy) checks that binding. Without it such a token is
    /// refused, 401 `invalid_token`, as a bound token without its proof must be.
    pub fn accept_unchecked_confirmation(mut self) -> Self {
        self.config.accept_unchecked_confirmation = true;
        self
    }

    /// Names the protected-resource metadata (RFC 9728) in every 401 challenge:
    /// `resource_metadata="<url>"` (§5.1), so OAuth and MCP clients can discover the
    /// authorization servers. Serve the document itself with
    /// [`ProtectedResourceMetadata`](crate::resource_metadata::ProtectedResourceMetadata), whose
    /// [`url`](crate::resource_metadata::ProtectedResourceMetadata::url) is the value to give here.
    pub fn resource_metadata(mut self, url: impl Into<String>) -> Self {
        self.config.settings.resource_metadata = Some(url.into());
        self
    }

    /// The `Retry-After` of a 503 under [`FailurePolicy::Closed`] (whole seconds, at least 1).
    /// Default 5 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config.settings.retry_after = retry_after;
        self
    }

    /// The longest token accepted, in bytes; longer ones get 400 `invalid_request`. Default
    /// 8 KiB.
    pub fn max_token_len(mut self, max_token_len: usize) -> Self {
        self.config.max_token_len = max_token_len;
        self
    }

    /// How many verified tokens the layer remembers (default
    /// [`DEFAULT_CAPACITY`](crate::verify::token_cache::DEFAULT_CAPACITY), rounded up to a power of
    /// two; `0` switches the cache off, as [`no_verified_token_cache`](Self::no_verified_token_cache)
    /// does). A token seen before skips its signature verification; its time claims are
    /// checked on every request, and the revocation check runs on every request, hit or miss.
    /// See [`token_cache`](crate::verify::token_cache) for what the cache guarantees and the memory it
    /// may use. A capacity over [`MAX_CAPACITY`](crate::verify::token_cache::MAX_CAPACITY) fails
    /// `build()`.
    pub fn verified_token_cache(mut self, capacity: usize) -> Self {
        self.config.token_cache_capacity = capacity;
        self
    }

    /// The longest token the verified-token cache holds, in bytes (default
    /// [`DEFAULT_MAX_TOKEN_LEN`](crate::verify::token_cache::DEFAULT_MAX_TOKEN_LEN), 4 KiB): longer
    /// ones are verified on every request; `0` switches the cache off. Bounds the memory one
    /// entry can take.
    pub fn verified_token_cache_max_token_len(mut self, max_token_len: usize) -> Self {
        self.config.token_cache_max_token_len = max_token_len;
        self
    }

    /// Verifies every token's signature on every request: no verified-token cache.
    pub fn no_verified_token_cache(self) -> Self {
        self.verified_token_cache(0)
    }

    /// Deserializes the application's own claims into `C2` (the registered ones stay typed
    /// fields of [`Claims`](crate::Claims)).
    pub fn claims<C2>(self) -> JwtRevocationBuilder<S, C2, R> {
        let mut config = self.config;
        config.check_dropped |= self.check.is_some();
        JwtRevocationBuilder {
            backend: self.backend,
            config,
            reject: self.reject,
            check: None,
            _claims: PhantomData,
        }
    }

    /// Customises rejection responses with a [`Reject`](crate::Reject) hook (any
    /// `Fn(&Rejection, Response<B>) -> Response<B>`).
    pub fn on_reject<R2>(self, reject: R2) -> JwtRevocationBuilder<S, C, R2> {
        JwtRevocationBuilder {
            backend: self.backend,
            config: self.config,
            reject,
            check: self.check,
            _claims: PhantomData,
        }
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<JwtRevocationLayer<S, C, R>, ConfigError>
    where
        S: RevocationBackend,
    {
        let mut config = self.config;
        if config.check_dropped {
            return Err(ConfigError::PredicateBeforeClaims);
        }
        let scopes = RequiredScopes::new(std::mem::take(&mut config.scopes))?;
        if !scopes.is_empty() {
            config.settings.scope = Some(scopes.challenge());
        }
        if let Some(realm) = &config.settings.realm {
            crate::reject::check_realm(realm)?;
        }
        if let Some(url) = &config.settings.resource_metadata
            && (crate::reject::check_realm(url).is_err() || crate::dpop::normalize_uri(url).is_none())
        {
            return Err(ConfigError::InvalidMetadataUrl(url.clone()));
        }
        let dpop = config.dpop.take().map(DpopConfig::build).transpose()?;
        if let Some(dpop) = &dpop {
            config.settings.dpop = Some(DpopChallenge {
                algs: dpop.algs.clone(),
                bearer_allowed: dpop.policy == DpopPolicy::Allowed,
            });
        }
        if config.max_token_len == 0 {
            return Err(ConfigError::ZeroMaxTokenLen);
        }
        if config.token_cache_capacity > token_cache::MAX_CAPACITY {
            return Err(ConfigError::TokenCacheCapacity(config.token_cache_capacity));
        }
        let cache = (config.token_cache_capacity > 0 && config.token_cache_max_token_len > 0).then(|| {
            Arc::new(TokenCache::new(
                config.token_cache_capacity,
                config.token_cache_max_token_len,
            ))
        });
        if config.cookie.as_deref().is_some_and(|name| {
            name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        }) {
            return Err(ConfigError::InvalidCookieName);
        }
        let mut validation = config.validation;
        let mut verifier = match (config.keys, config.issuers) {
            (Some(_), issuers) if !issuers.is_empty() => return Err(ConfigError::KeysAndIssuers),
            (None, issuers) if issuers.is_empty() => return Err(ConfigError::NoKey),
            (Some(keys), _) => {
                if !config.validation_set
                    && let Some(algorithms) = keys.default_algorithms()
                {
                    validation.algorithms = algorithms;
                }
                #[cfg(feature = "jwks")]
                if let KeySource::Jwks(jwks) = &keys
                    && let Some(discovered) = jwks.issuer()
                {
                    match &validation.iss {
                        None => validation.set_issuer(&[discovered]),
                        Some(accepted) if accepted.contains(discovered) => {}
                        Some(accepted) => {
                            return Err(ConfigError::IssuerMismatch {
                                configured: accepted.iter().cloned().collect::<Vec<_>>().join(" "),
                                discovered: discovered.to_owned(),
                            });
                        }
                    }
                }
                Verifier::new(
                    keys,
                    &validation,
                    config.required_typ,
                    config.missing_jti,
                    config.max_lifetime,
                )?
            }
            (None, mut issuers) => {
                if config.validation_set {
                    // An allow-list the application set applies to every issuer that sets none.
                    for issuer in &mut issuers {
                        issuer
                            .algorithms
                            .get_or_insert_with(|| validation.algorithms.clone());
                    }
                }
                Verifier::for_issuers(
                    issuers,
                    &validation,
                    config.required_typ,
                    config.missing_jti,
                    config.max_lifetime,
                )?
            }
        };
        if let Some(leeway) = config.iat_leeway {
            verifier = verifier.with_iat_leeway(leeway);
        }
        // By default the layer keys the way its store says the fleet does, where it knows whose
        // tokens it verifies.
        let keyed = config
            .key_by_issuer
            .unwrap_or_else(|| self.backend.issuer_keying() && verifier.knows_issuers());
        verifier = verifier.key_revocations_by_issuer(keyed)?;
        Ok(JwtRevocationLayer {
            shared: Arc::new(Shared {
                backend: self.backend,
                verifier,
                policy: config.policy,
                optional: config.optional,
                skip_paths: config.skip_paths,
                cookie: config.cookie,
                max_token_len: config.max_token_len,
                settings: config.settings,
                scopes: (!scopes.is_empty()).then_some(scopes),
                dpop,
                accept_unchecked_confirmation: config.accept_unchecked_confirmation,
                reject: self.reject,
                counters: Counters::default(),
            }),
            check: self.check,
            cache,
            _claims: PhantomData,
        })
    }
}
