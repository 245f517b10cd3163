//! The per-request decision, shared by every service a layer wraps: the configuration a request
//! needs ([`Shared`]), the failure policy ([`FailurePolicy`]) a deployment decides on, the one
//! place a backend's answer becomes "pass" or a [`Rejection`], the marker of requests let
//! through without a token, and the counters of those decisions.
//!
//! It is the bottom of the request path's modules: `layer` builds a [`Shared`], `service` and
//! `future` use it, and it depends on none of them.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::backend::{StoreError, Verdict};
use crate::bearer::Credentials;
use crate::dpop::{DPOP_NONCE, Dpop, DpopError, Unrecorded};
use serde::de::DeserializeOwned;

use crate::reject::{Reject, RejectSettings, Rejection};
use crate::scope::{ClaimsCheck, RequiredScopes};
use crate::telemetry::{self, Count, Outage};
use crate::verify::token_cache::TokenCache;
use crate::verify::{Claims, Unverified, Verifier};

/// What the layer does with a verified token when the backend cannot say whether it is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Refuse the request with 503 and `Retry-After` (gRPC: UNAVAILABLE). The default: an
    /// outage of the store never lets a revoked token back in. The price is availability: while
    /// the store is down, every request whose answer is not cached fails.
    #[default]
    Closed,
    /// Let the request through as if the token were not revoked, counting it in
    /// [`Metrics::fail_open_passes`] and logging a `warn` event. Keeps the service up through a
    /// store outage, at the price that a revoked but unexpired token is accepted meanwhile.
    Open,
}

/// Counts of the layer's decisions since it was built, shared by every clone of the layer and
/// its services. Read with [`JwtRevocationLayer::metrics`](crate::JwtRevocationLayer::metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Metrics {
    /// Requests passed to the inner service with verified, unrevoked claims.
    pub authorized: u64,
    /// Requests without a token passed through by an `optional()` layer.
    pub anonymous: u64,
    /// Requests whose path the `skip_paths` predicate exempted.
    pub skipped: u64,
    /// 401s for a missing token.
    pub rejected_missing: u64,
    /// 400s for malformed credentials.
    pub rejected_malformed: u64,
    /// 401s for tokens that did not verify.
    pub rejected_invalid: u64,
    /// 401s for revoked tokens.
    pub rejected_revoked: u64,
    /// Backend errors, whatever the policy did with them.
    pub store_errors: u64,
    /// Requests let through by [`FailurePolicy::Open`] during a backend error.
    pub fail_open_passes: u64,
    /// Checks the backend could not answer on its synchronous fast path.
    pub slow_checks: u64,
    /// 403s for valid, unrevoked tokens lacking a required scope (or refused by the claims
    /// predicate).
    pub rejected_forbidden: u64,
    /// 503s because the identity provider's keys were not fetched yet.
    pub rejected_keys_unavailable: u64,
    /// Tokens found in the verified-token cache (their signature verification skipped).
    pub token_cache_hits: u64,
    /// Tokens the verified-token cache did not hold (verified, and cached if they passed).
    pub token_cache_misses: u64,
    /// Requests refused for their DPoP binding or proof ([`Rejection::Dpop`]), but for a full
    /// replay window.
    pub rejected_dpop: u64,
    /// 503s because the DPoP replay window had no room for an admitted request's proof: the
    /// window is too small for this instance's load, or one client is filling it.
    pub dpop_window_full: u64,
}

/// The layer's counters (see [`crate::telemetry`] for the published names), and the outage
/// state that turns store errors into a few log lines.
pub(crate) struct Counters {
    authorized: Count,
    anonymous: Count,
    skipped: Count,
    rejected_missing: Count,
    rejected_malformed: Count,
    rejected_invalid: Count,
    rejected_revoked: Count,
    rejected_unavailable: Count,
    rejected_forbidden: Count,
    rejected_keys_unavailable: Count,
    rejected_dpop: Count,
    dpop_window_full: Count,
    store_errors: Count,
    fail_open_passes: Count,
    slow_checks: Count,
    pub(crate) token_cache_hits: Count,
    pub(crate) token_cache_misses: Count,
    outage: Outage,
}

impl Default for Counters {
    fn default() -> Self {
        telemetry::describe();
        let outcome =
            |outcome: &'static [(&'static str, &'static str)]| Count::new(telemetry::REQUESTS, outcome);
        Self {
            authorized: outcome(&[("outcome", "authorized")]),
            anonymous: outcome(&[("outcome", "anonymous")]),
            skipped: outcome(&[("outcome", "skipped")]),
            rejected_missing: outcome(&[("outcome", "missing_token")]),
            rejected_malformed: outcome(&[("outcome", "malformed")]),
            rejected_invalid: outcome(&[("outcome", "invalid_token")]),
            rejected_revoked: outcome(&[("outcome", "revoked")]),
            rejected_unavailable: outcome(&[("outcome", "unavailable")]),
            rejected_forbidden: outcome(&[("outcome", "insufficient_scope")]),
            rejected_keys_unavailable: outcome(&[("outcome", "keys_unavailable")]),
            rejected_dpop: outcome(&[("outcome", "dpop_refused")]),
            dpop_window_full: outcome(&[("outcome", "dpop_window_full")]),
            fail_open_passes: outcome(&[("outcome", "fail_open")]),
            store_errors: Count::new(telemetry::STORE_ERRORS, &[]),
            slow_checks: Count::new(telemetry::SLOW_CHECKS, &[]),
            token_cache_hits: Count::new(telemetry::TOKEN_CACHE, &[("result", "hit")]),
            token_cache_misses: Count::new(telemetry::TOKEN_CACHE, &[("result", "miss")]),
            outage: Outage::default(),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Metrics {
        Metrics {
            authorized: self.authorized.get(),
            anonymous: self.anonymous.get(),
            skipped: self.skipped.get(),
            rejected_missing: self.rejected_missing.get(),
            rejected_malformed: self.rejected_malformed.get(),
            rejected_invalid: self.rejected_invalid.get(),
            rejected_revoked: self.rejected_revoked.get(),
            store_errors: self.store_errors.get(),
            fail_open_passes: self.fail_open_passes.get(),
            slow_checks: self.slow_checks.get(),
            rejected_forbidden: self.rejected_forbidden.get(),
            rejected_keys_unavailable: self.rejected_keys_unavailable.get(),
            token_cache_hits: self.token_cache_hits.get(),
            token_cache_misses: self.token_cache_misses.get(),
            rejected_dpop: self.rejected_dpop.get(),
            dpop_window_full: self.dpop_window_full.get(),
        }
    }
}

/// A predicate on the request path: `true` exempts the request from the layer.
pub(crate) type SkipPaths = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Everything a request needs, built once and shared by `Arc`.
pub(crate) struct Shared<S, R> {
    pub(crate) backend: S,
    pub(crate) verifier: Verifier,
    pub(crate) policy: FailurePolicy,
    pub(crate) optional: bool,
    pub(crate) skip_paths: Option<SkipPaths>,
    pub(crate) cookie: Option<String>,
    pub(crate) max_token_len: usize,
    pub(crate) settings: RejectSettings,
    pub(crate) scopes: Option<RequiredScopes>,
    /// The DPoP check, when the layer accepts DPoP-bound tokens.
    pub(crate) dpop: Option<Dpop>,
    /// Tokens bound by a `cnf` method other than DPoP's are let in (a proxy checks them).
    pub(crate) accept_unchecked_confirmation: bool,
    pub(crate) reject: R,
    pub(crate) counters: Counters,
}

impl<S: std::fmt::Debug, R: std::fmt::Debug> std::fmt::Debug for Shared<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("backend", &self.backend)
            .field("verifier", &self.verifier)
            .field("policy", &self.policy)
            .field("optional", &self.optional)
            .field("skip_paths", &self.skip_paths.is_some())
            .field("max_token_len", &self.max_token_len)
            .field("settings", &self.settings)
            .field("reject", &self.reject)
            .finish_non_exhaustive()
    }
}

impl<S, R> Shared<S, R> {
    /// Whether the request at `path` is exempt from the layer; counted when it is.
    pub(crate) fn skips(&self, path: &str) -> bool {
        let skip = self.skip_paths.as_ref().is_some_and(|skip| skip(path));
        if skip {
            self.counters.skipped.bump();
        }
        skip
    }

    /// The verified claims of `token`: from the layer's verified-token `cache` when it holds
    /// them under the current keys, else verified (and then cached). `first_attempt` is false
    /// when the request already missed the cache and waited for a key fetch: verify it without
    /// looking again. With `first_attempt`, a token naming a key the key source may still fetch
    /// gets a wait instead of a refusal.
    pub(crate) fn verify<C: DeserializeOwned>(
        &self,
        cache: Option<&TokenCache<C>>,
        token: &str,
        first_attempt: bool,
    ) -> Result<Arc<Claims<C>>, Unverified> {
        let cached = cache.and_then(|cache| Some((cache, cache.key(token)?)));
        if let Some((cache, key)) = cached.filter(|_| first_attempt) {
            if let Some(claims) = cache.get(token, key, |issuer| self.verifier.key_epoch(issuer)) {
                self.counters.token_cache_hits.bump();
                return Ok(claims);
            }
            self.counters.token_cache_misses.bump();
        }
        let verified = self.verifier.check::<C>(token, first_attempt)?;
        let claims = Arc::new(verified.claims);
        if let (Some((cache, key)), Some(cacheable)) = (cached, verified.cacheable) {
            cache.insert(token, key, &claims, cacheable, |issuer| {
                self.verifier.key_epoch(issuer)
            });
        }
        Ok(claims)
    }

    /// Checks a verified token's sender constraint: with DPoP configured, its binding and its
    /// proof ([`Dpop::confirm`]); without, only that it is not bound (a bound token cannot be
    /// accepted by a layer that cannot check its proof), and in either case that it is bound by
    /// no method the layer cannot check. Runs before the revocation check, on every request,
    /// cached token or not; the proof it returns is recorded by [`decide`](Self::decide) once
    /// the request is admitted.
    pub(crate) fn confirm<C, B>(
        &self,
        claims: &Claims<C>,
        credentials: Credentials<'_>,
        request: &Request<B>,
    ) -> Result<Option<Unrecorded>, Rejection> {
        let other_binding = claims.cnf.as_ref().is_some_and(|cnf| !cnf.other.is_empty());
        if other_binding && !self.accept_unchecked_confirmation {
            return Err(Rejection::Dpop(DpopError::UnsupportedBinding));
        }
        match &self.dpop {
            Some(dpop) => dpop
                .confirm(
                    claims,
                    credentials,
                    request.method(),
                    request.uri().path(),
                    request.headers(),
                )
                .map_err(Rejection::Dpop),
            None if claims.dpop_jkt().is_some() => Err(Rejection::Dpop(DpopError::BoundTokenAsBearer)),
            None => Ok(None),
        }
    }

    /// Records the proof of a request about to be admitted (see [`Dpop::record`]).
    fn record(&self, proof: Option<Unrecorded>) -> Result<(), Rejection> {
        match (&self.dpop, proof) {
            (Some(dpop), Some(proof)) => dpop.record(proof).map_err(Rejection::Dpop),
            _ => Ok(()),
        }
    }

    /// Turns a backend answer into "pass" (`Ok`) or a rejection, applying the failure policy,
    /// then, for a token that passes, the required scopes and the claims predicate `check`
    /// (403), which therefore never run for a revoked token, and last the DPoP `proof`'s replay
    /// check, so only an admitted request's proof takes room in the window. The one place this
    /// decision is made, for the fast and the slow path alike. Store errors are logged as an
    /// outage's start and end, not once per request.
    pub(crate) fn decide<C>(
        &self,
        answer: Result<Verdict, StoreError>,
        claims: &Claims<C>,
        check: Option<&ClaimsCheck<C>>,
        proof: Option<Unrecorded>,
    ) -> Result<(), Rejection> {
        let denied = || {
            self.scopes
                .as_ref()
                .is_some_and(|scopes| !scopes.granted_by(claims))
                || check.is_some_and(|check| !check(claims))
        };
        match answer {
            Ok(Verdict::Active) if denied() => Err(Rejection::InsufficientScope),
            Ok(Verdict::Active) => {
                self.record(proof)?;
                self.counters.authorized.bump();
                Ok(())
            }
            Ok(Verdict::Revoked(by)) => Err(Rejection::Revoked(by)),
            Err(error) => {
                self.counters.store_errors.bump();
                match self.policy {
                    FailurePolicy::Closed => {
                        self.counters.outage.failed(&error, "closed");
                        Err(Rejection::Unavailable)
                    }
                    FailurePolicy::Open => {
                        self.counters.outage.failed(&error, "open");
                        if denied() {
                            return Err(Rejection::InsufficientScope);
                        }
                        self.record(proof)?;
                        self.counters.fail_open_passes.bump();
                        Ok(())
                    }
                }
            }
        }
    }

    /// [`decide`](Self::decide) for an answer of the backend's slow path: an answer there ends
    /// an outage.
    pub(crate) fn decide_slow<C>(
        &self,
        answer: Result<Verdict, StoreError>,
        claims: &Claims<C>,
        check: Option<&ClaimsCheck<C>>,
        proof: Option<Unrecorded>,
    ) -> Result<(), Rejection> {
        if answer.is_ok() {
            self.counters.outage.succeeded();
        }
        self.decide(answer, claims, check, proof)
    }

    pub(crate) fn count_anonymous(&self) {
        self.counters.anonymous.bump();
    }

    pub(crate) fn count_slow_check(&self) {
        self.counters.slow_checks.bump();
    }

    /// Builds the response for a rejection: the default one, then the hook.
    pub(crate) fn reject<B: Default>(&self, rejection: Rejection, request_headers: &HeaderMap) -> Response<B>
    where
        R: Reject<B>,
    {
        match rejection {
            Rejection::MissingToken => &self.counters.rejected_missing,
            Rejection::Malformed(_) => &self.counters.rejected_malformed,
            Rejection::Invalid(_) => &self.counters.rejected_invalid,
            Rejection::Revoked(_) => &self.counters.rejected_revoked,
            Rejection::Unavailable => &self.counters.rejected_unavailable,
            Rejection::InsufficientScope => &self.counters.rejected_forbidden,
            Rejection::KeysUnavailable => &self.counters.rejected_keys_unavailable,
            Rejection::Dpop(DpopError::ReplayWindowFull) => &self.counters.dpop_window_full,
            Rejection::Dpop(_) => &self.counters.rejected_dpop,
        }
        .bump();
        tracing::debug!(
            reason = rejection.description(),
            status = rejection.status().as_u16(),
            "request rejected"
        );
        let mut response = rejection.to_response(request_headers, &self.settings);
        // With nonces required, every 401 hands out a current one (RFC 9449 §9), so a client's
        // retry can carry it whatever it was refused for.
        let unauthorized = rejection.status() == StatusCode::UNAUTHORIZED;
        if let Some(nonce) = self.dpop.as_ref().filter(|_| unauthorized).and_then(Dpop::nonce)
            && let Ok(nonce) = HeaderValue::from_str(&nonce)
        {
            response.headers_mut().insert(DPOP_NONCE, nonce);
        }
        self.reject.reject(&rejection, response)
    }
}
