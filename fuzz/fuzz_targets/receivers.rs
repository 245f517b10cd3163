//! The identity provider's revocation messages over `MemoryStore`, with arbitrary bodies: the
//! first byte picks the receiver (OIDC Back-Channel Logout, or Shared Signals SET push), the rest
//! is the body. The invariant is the receivers' promise on bad input: never a panic, and never an
//! answer other than success, 400, or (for a store that cannot answer, which `MemoryStore` never
//! is) 503. The seed corpus holds valid logout tokens and SETs signed with the key below, for
//! libFuzzer to mutate.
#![no_main]

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, StatusCode, header::CONTENT_TYPE};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower::Service;
use tower_jwt_revocation::MemoryStore;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey};
use tower_jwt_revocation::receiver::{BackChannelLogout, SetReceiver};

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret";
const ISSUER: &str = "https://idp.fuzz";
const AUDIENCE: &str = "fuzz-client";

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        // MemoryStore, fixed keys and a full body never wait.
        Poll::Pending => panic!("a receiver waited on an in-memory store"),
    }
}

fn receivers() -> &'static (BackChannelLogout<MemoryStore>, SetReceiver<MemoryStore>) {
    static RECEIVERS: OnceLock<(BackChannelLogout<MemoryStore>, SetReceiver<MemoryStore>)> = OnceLock::new();
    RECEIVERS.get_or_init(|| {
        let store = MemoryStore::new();
        let key = || DecodingKey::from_secret(SECRET);
        let logout = BackChannelLogout::builder(store.clone(), ISSUER, key(), AUDIENCE)
            .algorithms(&[Algorithm::HS256])
            .build()
            .expect("valid configuration");
        let events = SetReceiver::builder(store, ISSUER, key(), AUDIENCE)
            .algorithms(&[Algorithm::HS256])
            .build()
            .expect("valid configuration");
        (logout, events)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let (logout, events) = receivers();
    let (media, ok) = if selector % 2 == 0 {
        ("application/x-www-form-urlencoded", StatusCode::OK)
    } else {
        ("application/secevent+jwt", StatusCode::ACCEPTED)
    };
    let request = Request::post("/")
        .header(CONTENT_TYPE, media)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("a valid request");
    let response = if selector % 2 == 0 {
        block_on(logout.clone().call(request))
    } else {
        block_on(events.clone().call(request))
    }
    .expect("infallible");
    let status = response.status();
    assert!(
        status == ok || status == StatusCode::BAD_REQUEST,
        "unexpected {status} for a {media} body"
    );
});
