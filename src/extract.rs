//! axum extractors (feature `axum`): handlers take [`Claims<C>`] or `Option<Claims<C>>`.
//!
//! The layer has already verified the token and put the claims into the request's extensions;
//! extracting clones them out. `Claims<C>` on a request that has none (an `optional()` layer and
//! an anonymous request, or a route the layer does not wrap) is refused with the same 401 and
//! bare `Bearer` challenge the layer sends for a missing token. `Option<Claims<C>>` never fails.

use std::convert::Infallible;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use crate::decode::Claims;
use crate::reject::{RejectSettings, Rejection};

/// The rejection of the `Claims<C>` extractor when the request carries no verified claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no verified bearer token")]
pub struct MissingClaims;

impl IntoResponse for MissingClaims {
    fn into_response(self) -> Response {
        Rejection::MissingToken.to_response(&http::HeaderMap::new(), &RejectSettings::default())
    }
}

impl<S, C> FromRequestParts<S> for Claims<C>
where
    S: Send + Sync,
    C: Clone + Send + Sync + 'static,
{
    type Rejection = MissingClaims;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Claims<C>>().cloned().ok_or(MissingClaims)
    }
}

impl<S, C> OptionalFromRequestParts<S> for Claims<C>
where
    S: Send + Sync,
    C: Clone + Send + Sync + 'static,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Claims<C>>().cloned())
    }
}
