//! axum extractors (feature `axum`): handlers take [`Claims<C>`] or `Option<Claims<C>>`.
//!
//! The layer has already verified the token and put the claims into the request's extensions
//! as an `Arc<Claims<C>>` (shared with its verified-token cache); extracting `Claims<C>` clones
//! them out. A handler that only reads them can take `axum::Extension<Arc<Claims<C>>>` instead
//! and share them, at the price of axum's 500 rather than this module's 401 where the layer let
//! a request through without a token. `Claims<C>` on a request the layer let through without a token
//! (an `optional()` layer and an anonymous request, or a path `skip_paths` exempts) is refused
//! with the same 401 and bare `Bearer` challenge the layer sends for a missing token. On a request
//! the layer never saw (a route it does not wrap), or one whose claims it deserialized into
//! another type than `C`, it is a 500 naming the cause, as axum answers a missing `Extension`:
//! the server is misconfigured, the client did nothing wrong. `Option<Claims<C>>` is `None`
//! where `Claims<C>` would be 401, and the same 500 where it would be 500.

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::reject::{RejectSettings, Rejection, Unauthenticated};
use crate::verify::Claims;

/// The rejection of the `Claims<C>` extractor when the request carries no verified `Claims<C>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MissingClaims {
    /// The layer let the request through without a token: 401 with a bare `Bearer` challenge.
    #[error("no verified bearer token")]
    Anonymous,
    /// The layer did not verify this request for `Claims<C>`: it does not wrap the route, or it
    /// was built with another claims type. 500, with this message as the body.
    #[error(
        "no verified `{claims}` in the request: the route is not behind a JwtRevocationLayer, \
         or the layer was built for another claims type (JwtRevocationBuilder::claims::<C>() must name the \
         same type as the handler's Claims<C>)"
    )]
    NotVerified {
        /// The type the handler asked for.
        claims: &'static str,
    },
}

impl IntoResponse for MissingClaims {
    fn into_response(self) -> Response {
        match self {
            MissingClaims::Anonymous => {
                Rejection::MissingToken.to_response(&http::HeaderMap::new(), &RejectSettings::default())
            }
            MissingClaims::NotVerified { .. } => {
                tracing::error!(%self, "claims extractor without verified claims");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
            }
        }
    }
}

/// The claims of a request: `Ok(Some)` when verified for `C`, `Ok(None)` when the layer let it
/// through without a token, `Err` when the layer never verified it for `C`.
fn claims<C: Clone + Send + Sync + 'static>(parts: &Parts) -> Result<Option<Claims<C>>, MissingClaims> {
    match parts.extensions.get::<std::sync::Arc<Claims<C>>>() {
        Some(claims) => Ok(Some(Claims::clone(claims))),
        None if parts.extensions.get::<Unauthenticated>().is_some() => Ok(None),
        None => Err(MissingClaims::NotVerified {
            claims: std::any::type_name::<Claims<C>>(),
        }),
    }
}

impl<S, C> FromRequestParts<S> for Claims<C>
where
    S: Send + Sync,
    C: Clone + Send + Sync + 'static,
{
    type Rejection = MissingClaims;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        claims(parts)?.ok_or(MissingClaims::Anonymous)
    }
}

/// `None` for a request the layer let through without a token; a request it never verified
/// for `C` is the same 500 as for `Claims<C>`.
impl<S, C> OptionalFromRequestParts<S> for Claims<C>
where
    S: Send + Sync,
    C: Clone + Send + Sync + 'static,
{
    type Rejection = MissingClaims;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        claims(parts)
    }
}
