//! [`JwtRevocation`]: the service the layer wraps around an inner service.
//!
//! This module owns the order of the request path: bearer syntax, then signature and time
//! claims, then the sender constraint (DPoP), then revocation, then scopes, so a malformed, forged or expired token never costs a
//! store lookup and a revoked one is a 401 even where it also lacks a scope.
//! A backend that answers on its fast path ([`RevocationBackend::try_check`]) lets the request go
//! straight to the inner service inside `call`; only a backend that must wait gets a
//! [`ResponseFuture`] in its checking state, and only then is the inner service moved into the
//! future.

use std::marker::PhantomData;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower::Service;

use crate::backend::RevocationBackend;
use crate::bearer::request_credentials;
use crate::decision::Shared;
use crate::future::{KeyPending, Pending, ResponseFuture};
use crate::reject::{DefaultReject, Reject, Rejection, Unauthenticated};
use crate::scope::ClaimsCheck;
use crate::verify::token_cache::TokenCache;
use crate::verify::{Claims, DefaultClaims, Unverified};

/// The middleware service built by [`JwtRevocationLayer`](crate::JwtRevocationLayer).
///
/// It never changes the inner service's error type: a refused request is answered with a
/// response, not an error, so an `Infallible` router stays `Infallible`. On success the verified
/// claims are in the request's extensions as an `Arc<Claims<C>>`, shared with the layer's
/// verified-token cache rather than copied per request.
pub struct JwtRevocation<Inner, S, C = DefaultClaims, R = DefaultReject> {
    inner: Inner,
    shared: Arc<Shared<S, R>>,
    check: Option<ClaimsCheck<C>>,
    cache: Option<Arc<TokenCache<C>>>,
    _claims: PhantomData<fn() -> C>,
}

impl<Inner, S, C, R> JwtRevocation<Inner, S, C, R> {
    pub(crate) fn new(
        inner: Inner,
        shared: Arc<Shared<S, R>>,
        check: Option<ClaimsCheck<C>>,
        cache: Option<Arc<TokenCache<C>>>,
    ) -> Self {
        Self {
            inner,
            shared,
            check,
            cache,
            _claims: PhantomData,
        }
    }

    /// The inner service made ready by `poll_ready`, for a future to call later; a fresh clone
    /// stays here for the next `poll_ready` (see tower's docs on cloning services in `call`).
    fn take_ready(&mut self) -> Inner
    where
        Inner: Clone,
    {
        let fresh = self.inner.clone();
        mem::replace(&mut self.inner, fresh)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &Inner {
        &self.inner
    }
}

impl<Inner: Clone, S, C, R> Clone for JwtRevocation<Inner, S, C, R> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.shared),
            self.check.clone(),
            self.cache.clone(),
        )
    }
}

impl<Inner: std::fmt::Debug, S, C, R> std::fmt::Debug for JwtRevocation<Inner, S, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtRevocation")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<Inner, S, C, R, ReqBody, ResBody> Service<Request<ReqBody>> for JwtRevocation<Inner, S, C, R>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S: RevocationBackend,
    C: DeserializeOwned + Clone + Send + Sync + 'static,
    R: Reject<ResBody>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = Inner::Error;
    type Future = ResponseFuture<Inner, ReqBody, S, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &*self.shared;
        if shared.skips(request.uri().path()) {
            request.extensions_mut().insert(Unauthenticated);
            return ResponseFuture::inner(self.inner.call(request));
        }
        let credentials = match request_credentials(
            request.headers(),
            shared.cookie.as_deref(),
            shared.max_token_len,
            shared.dpop.is_some(),
        ) {
            Ok(Some(credentials)) => credentials,
            Ok(None) if shared.optional => {
                shared.count_anonymous();
                request.extensions_mut().insert(Unauthenticated);
                return ResponseFuture::inner(self.inner.call(request));
            }
            Ok(None) => return self.rejected(Rejection::MissingToken, &request),
            Err(malformed) => return self.rejected(Rejection::Malformed(malformed), &request),
        };
        let claims: Arc<Claims<C>> = match shared.verify(self.cache.as_deref(), credentials.token, true) {
            Ok(claims) => claims,
            Err(Unverified::Invalid(invalid)) => return self.rejected(Rejection::Invalid(invalid), &request),
            Err(Unverified::KeysUnavailable) => return self.rejected(Rejection::KeysUnavailable, &request),
            Err(Unverified::Wait(wait)) => {
                let pending = KeyPending {
                    inner: self.take_ready(),
                    request,
                    check: self.check.clone(),
                    cache: self.cache.clone(),
                };
                return ResponseFuture::awaiting_keys(wait, pending, Arc::clone(&self.shared));
            }
        };
        let proof = match shared.confirm(&claims, credentials, &request) {
            Ok(proof) => proof,
            Err(rejection) => return self.rejected(rejection, &request),
        };
        match shared.backend.try_check(&claims.facts()) {
            Some(answer) => match shared.decide(answer, &claims, self.check.as_ref(), proof) {
                Ok(()) => {
                    request.extensions_mut().insert(claims);
                    ResponseFuture::inner(self.inner.call(request))
                }
                Err(rejection) => self.rejected(rejection, &request),
            },
            None => {
                shared.count_slow_check();
                let check = shared.backend.check(&claims.facts());
                ResponseFuture::checking(
                    check,
                    Pending {
                        inner: self.take_ready(),
                        request,
                        claims,
                        check: self.check.clone(),
                        proof,
                    },
                    Arc::clone(&self.shared),
                )
            }
        }
    }
}

impl<Inner, S, C, R> JwtRevocation<Inner, S, C, R> {
    fn rejected<ReqBody, ResBody>(
        &self,
        rejection: Rejection,
        request: &Request<ReqBody>,
    ) -> ResponseFuture<Inner, ReqBody, S, C, R>
    where
        Inner: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
        S: RevocationBackend,
        R: Reject<ResBody>,
        ResBody: Default,
    {
        ResponseFuture::rejected(self.shared.reject(rejection, request.headers()))
    }
}
