//! The decode-only baseline every measurement compares the layer with: a minimal hand-written
//! middleware that takes the bearer token and verifies it with `jsonwebtoken` (same keys, same
//! `Validation`, same claim type), inserts the claims and calls the inner service. It is the
//! floor any JWT layer pays. Shared by the benchmark and the allocation test.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Ready, ready};

use http::{Request, Response, header::AUTHORIZATION};
use tower::Service;
use tower_jwt_revocation::Claims;
use tower_jwt_revocation::jsonwebtoken::{DecodingKey, Validation, decode};

/// The baseline's whole token handling: the `Bearer ` prefix, then `jsonwebtoken::decode`.
pub fn decode_bearer(req: &Request<()>, key: &DecodingKey, validation: &Validation) -> Option<Claims> {
    let token = req
        .headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    decode::<Claims>(token, key, validation)
        .ok()
        .map(|data| data.claims)
}

#[derive(Clone)]
pub struct DecodeOnly<S> {
    pub inner: S,
    pub key: DecodingKey,
    pub validation: Validation,
}

impl<S, B> Service<Request<()>> for DecodeOnly<S>
where
    S: Service<
            Request<()>,
            Response = Response<B>,
            Error = Infallible,
            Future = Ready<Result<Response<B>, Infallible>>,
        >,
    B: Default,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Ready<Result<Response<B>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<()>) -> Self::Future {
        match decode_bearer(&req, &self.key, &self.validation) {
            Some(claims) => {
                req.extensions_mut().insert(claims);
                self.inner.call(req)
            }
            None => {
                let mut res = Response::new(B::default());
                *res.status_mut() = http::StatusCode::UNAUTHORIZED;
                ready(Ok(res))
            }
        }
    }
}

/// The inner service of every measurement: answers at once, allocates nothing.
#[derive(Clone, Copy)]
pub struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}
