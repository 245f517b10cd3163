//! Authorization after authentication: required scopes and claims predicates, for the whole
//! layer or per route.
//!
//! This module owns the one rule of what a token must grant (required scopes: every listed
//! scope, from `scope` or `scp`), and [`RequireScopes`], a small layer for one route or router
//! (axum's `route_layer`) behind a [`JwtRevocationLayer`](crate::JwtRevocationLayer): it reads
//! the verified [`Claims`] the main layer inserted and answers 403 `insufficient_scope`
//! (RFC 6750 §3.1; gRPC PERMISSION_DENIED) when one is missing. The main layer applies its own
//! required scopes and predicate only after the token verified and was found not revoked, so a
//! revoked token is always a 401, never a 403.
//!
//! ```
//! use axum::{Router, routing::delete};
//! use tower_jwt_revocation::RequireScopes;
//!
//! async fn revoke() {}
//!
//! // Under the main layer: only tokens granting `revocations:admin` reach `revoke`.
//! let admin: Router = Router::new()
//!     .route("/admin/tokens/{jti}", delete(revoke))
//!     .route_layer(RequireScopes::new(["revocations:admin"]).unwrap());
//! # let _ = admin;
//! ```

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::config::ConfigError;
use crate::reject::{RejectSettings, Rejection, Unauthenticated};
use crate::verify::{Claims, DefaultClaims};

/// A predicate on verified claims; `false` is a 403.
pub(crate) type ClaimsCheck<C> = Arc<dyn Fn(&Claims<C>) -> bool + Send + Sync>;

/// Scopes a token must all grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequiredScopes {
    scopes: Arc<[String]>,
}

impl RequiredScopes {
    /// Checks every scope against RFC 6749 §3.3's `scope-token` (printable ASCII without space,
    /// `"` and `\`), so each can be named in a challenge header.
    pub(crate) fn new<I, T>(scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        if let Some(bad) = scopes.iter().find(|scope| {
            scope.is_empty()
                || !scope
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        }) {
            return Err(ConfigError::InvalidScope(bad.clone()));
        }
        Ok(Self {
            scopes: scopes.into(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether `claims` grant every required scope.
    pub(crate) fn granted_by<C>(&self, claims: &Claims<C>) -> bool {
        self.scopes.iter().all(|scope| claims.has_scope(scope))
    }

    /// The value of the challenge's `scope` parameter.
    pub(crate) fn challenge(&self) -> String {
        self.scopes.join(" ")
    }
}

/// A layer that lets a request through only when the [`Claims`] the main layer verified grant
/// every scope given: 403 with `WWW-Authenticate: Bearer error="insufficient_scope",
/// scope="..."` otherwise (gRPC: PERMISSION_DENIED), 401 when the main layer let the request
/// through without a token (`optional()`, `skip_paths`), and 500 (logged as an error) when the
/// request carries no claims of type `C` at all. Put it on routes behind a
/// [`JwtRevocationLayer`](crate::JwtRevocationLayer) of the same claim type `C`.
pub struct RequireScopes<C = DefaultClaims> {
    scopes: RequiredScopes,
    settings: Arc<RejectSettings>,
    _claims: PhantomData<fn() -> C>,
}

impl<C> Clone for RequireScopes<C> {
    fn clone(&self) -> Self {
        Self {
            scopes: self.scopes.clone(),
            settings: Arc::clone(&self.settings),
            _claims: PhantomData,
        }
    }
}

impl<C> std::fmt::Debug for RequireScopes<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopes")
            .field("scopes", &self.scopes.scopes)
            .finish()
    }
}

impl RequireScopes {
    /// Requires every scope in `scopes`; an empty or malformed scope is an error.
    pub fn new<I, T>(scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::for_claims(scopes)
    }
}

impl<C> RequireScopes<C> {
    /// [`new`](RequireScopes::new) for a main layer whose claim type is `C`.
    pub fn for_claims<I, T>(scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let scopes = RequiredScopes::new(scopes)?;
        let settings = RejectSettings {
            scope: Some(scopes.challenge()),
            ..RejectSettings::default()
        };
        Ok(Self {
            scopes,
            settings: Arc::new(settings),
            _claims: PhantomData,
        })
    }
}

impl<C> RequireScopes<C> {
    /// The `realm` of the challenge, as the main layer's
    /// [`realm`](crate::JwtRevocationBuilder::realm).
    pub fn realm(mut self, realm: impl Into<String>) -> Result<Self, ConfigError> {
        let realm = realm.into();
        crate::reject::check_realm(&realm)?;
        Arc::make_mut(&mut self.settings).realm = Some(realm);
        Ok(self)
    }
}

impl<Inner, C> Layer<Inner> for RequireScopes<C> {
    type Service = RequireScopesService<Inner, C>;

    fn layer(&self, inner: Inner) -> Self::Service {
        RequireScopesService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireScopes`] wraps around a route.
pub struct RequireScopesService<Inner, C = DefaultClaims> {
    inner: Inner,
    layer: RequireScopes<C>,
}

impl<Inner: Clone, C> Clone for RequireScopesService<Inner, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<Inner: std::fmt::Debug, C> std::fmt::Debug for RequireScopesService<Inner, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopesService")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<Inner, C, ReqBody, ResBody> Service<Request<ReqBody>> for RequireScopesService<Inner, C>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>>,
    C: Send + Sync + 'static,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = Inner::Error;
    type Future = RequireScopesFuture<Inner::Future, Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let rejection = match request.extensions().get::<std::sync::Arc<Claims<C>>>() {
            Some(claims) if self.layer.scopes.granted_by(claims) => {
                return RequireScopesFuture {
                    state: ScopeState::Inner {
                        future: self.inner.call(request),
                    },
                };
            }
            Some(_) => Rejection::InsufficientScope,
            None if request.extensions().get::<Unauthenticated>().is_some() => Rejection::MissingToken,
            None => {
                // Not behind the main layer, or behind one of another claims type: a
                // configuration error, as the `Claims` extractor answers it.
                tracing::error!(
                    claims = std::any::type_name::<Claims<C>>(),
                    "RequireScopes found no verified claims of its type: put it behind a JwtRevocationLayer of the same claims type"
                );
                let mut response = Response::new(ResBody::default());
                *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                return RequireScopesFuture {
                    state: ScopeState::Denied {
                        response: Some(response),
                    },
                };
            }
        };
        let response = rejection.to_response(request.headers(), &self.layer.settings);
        RequireScopesFuture {
            state: ScopeState::Denied {
                response: Some(response),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequireScopesService`]: the inner service's, or a refusal.
    pub struct RequireScopesFuture<F, T> {
        #[pin]
        state: ScopeState<F, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = ScopeStateProj]
    enum ScopeState<F, T> {
        Inner { #[pin] future: F },
        Denied { response: Option<T> },
    }
}

impl<F, T, E> std::future::Future for RequireScopesFuture<F, T>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ScopeStateProj::Inner { future } => future.poll(cx),
            // Taken once; a second poll after `Ready` breaks the `Future` contract.
            ScopeStateProj::Denied { response } => Poll::Ready(Ok(response
                .take()
                .expect("RequireScopesFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(RequiredScopes::new(["revocations:admin", "read"]).is_ok());
        for bad in ["", "two words", "quo\"te", "back\\slash", "caf\u{e9}"] {
            assert_eq!(
                RequiredScopes::new([bad]),
                Err(ConfigError::InvalidScope(bad.to_owned()))
            );
        }
    }

    #[test]
    fn every_required_scope_must_be_granted_by_scope_or_scp() {
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "scope": "read  write", "scp": ["admin"]
        }))
        .unwrap();
        assert!(
            RequiredScopes::new(["read", "admin"])
                .unwrap()
                .granted_by(&claims)
        );
        assert!(
            !RequiredScopes::new(["read", "delete"])
                .unwrap()
                .granted_by(&claims)
        );
        assert!(!RequiredScopes::new(["Read"]).unwrap().granted_by(&claims));
        assert_eq!(claims.scopes().collect::<Vec<_>>(), ["read", "write", "admin"]);
    }
}
