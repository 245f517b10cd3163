//! The whole request path (header, verification, revocation) over `MemoryStore`, with
//! arbitrary `Authorization` bytes. The invariant is the layer's promise, checked independently
//! of it: any request that reaches the inner service carries a token that `jsonwebtoken` alone
//! verifies with the configured key, that has not expired, and whose jti is not revoked. Inputs
//! are the raw header value; the seed corpus holds valid, expired, revoked and forged tokens for
//! libFuzzer to mutate.
#![no_main]

use tower_jwt_revocation::Revocation;
use std::convert::Infallible;
use std::future::{Future, ready};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Request, Response, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, Service, service_fn};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use tower_jwt_revocation::{Claims, JwtRevocationLayer, MemoryStore, RevocationStore};

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret";
/// Revoked ids; the seed corpus has tokens carrying them.
const REVOKED: [&str; 2] = ["revoked-1", "revoked-2"];

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        // MemoryStore and the inner service below never wait.
        Poll::Pending => panic!("the request path waited on an in-memory store"),
    }
}

fn layer() -> &'static JwtRevocationLayer<MemoryStore> {
    static LAYER: OnceLock<JwtRevocationLayer<MemoryStore>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let store = MemoryStore::new();
        let exp = SystemTime::now() + Duration::from_secs(86_400 * 365 * 50);
        for jti in REVOKED {
            block_on(store.revoke(&Revocation::token(jti, exp))).expect("memory revoke");
        }
        JwtRevocationLayer::builder(store)
            .decoding_key(DecodingKey::from_secret(SECRET))
            .validation(validation())
            .build()
            .expect("valid configuration")
    })
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.validate_nbf = true;
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let request = Request::builder().uri("/").header(AUTHORIZATION, value).body(()).expect("request");
    let mut service = layer().layer(service_fn(|req: Request<()>| {
        let claims = req.extensions().get::<std::sync::Arc<Claims>>().cloned();
        ready(Ok::<_, Infallible>(Response::new(claims)))
    }));
    let response = block_on(service.call(request)).expect("infallible");
    let status = response.status();
    assert!(status.as_u16() < 500 || status.as_u16() == 503, "no 5xx but an outage: {status}");
    if let Some(claims) = response.into_body() {
        let text = std::str::from_utf8(data).expect("accepted headers are ASCII");
        let token = text.trim().split_once(' ').expect("scheme and token").1.trim_start_matches(' ');
        let verified = decode::<Claims>(token, &DecodingKey::from_secret(SECRET), &validation())
            .expect("an accepted token verifies with the configured key");
        assert_eq!(verified.claims.jti, claims.jti);
        let jti = claims.jti.as_deref().expect("default MissingJti::Reject: accepted tokens have a jti");
        assert!(!REVOKED.contains(&jti), "a revoked token was accepted");
    }
});
