//! A warm check through the layer allocates no more than the decode-only baseline: the
//! revocation check on a cache hit adds no heap allocation to a request. And a token the
//! verified-token cache holds allocates less than decoding it: the claims are shared, not
//! deserialized or copied again.
//!
//! A counting global allocator counts this thread's allocations while one request is served.
//! Each service's future is polled by hand with a no-op waker: on these paths it completes in
//! one poll, so no runtime task (and no other thread's work) runs in between.

#[path = "common/baseline.rs"]
mod baseline;
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower_jwt_revocation::Revocation;

use baseline::{DecodeOnly, Ok200};
use common::*;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use sqlx::PgPool;
use tower::{Layer, Service};
use tower_jwt_revocation::jsonwebtoken::{DecodingKey, Validation};
use tower_jwt_revocation::{CacheMode, JwtRevocationLayer, MemoryStore, MokaCache, PgStore, RevocationStore};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: the thread-locals may already be gone while a thread shuts down.
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `service` serves one request (built beforehand).
fn allocations_per_request<S>(service: &mut S, token: &str) -> u64
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    // Warm-up requests (first-use lazies, cache fill), then the measured one.
    let mut measured = 0;
    for round in 0..3 {
        let req = Request::get("/")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap();
        assert!(service.poll_ready(&mut cx).is_ready());
        ALLOCATIONS.with(|n| n.set(0));
        COUNTING.with(|on| on.set(true));
        let mut future = std::pin::pin!(service.call(req));
        let polled = future.as_mut().poll(&mut cx);
        COUNTING.with(|on| on.set(false));
        let Poll::Ready(Ok(response)) = polled else {
            panic!("round {round}: the request did not complete in one poll")
        };
        assert_eq!(response.status(), 200);
        measured = ALLOCATIONS.with(Cell::get);
    }
    measured
}

fn layer<B: tower_jwt_revocation::RevocationBackend>(backend: B) -> JwtRevocationLayer<B> {
    JwtRevocationLayer::builder(backend)
        .decoding_key(DecodingKey::from_secret(SECRET))
        .build()
        .unwrap()
}

fn alloc_token() -> String {
    mint(serde_json::json!({
        "jti": "alloc-1", "sub": "ivy", "sid": "s-1", "iat": now(), "exp": now() + 600,
        "scope": "read write", "tenant": "acme",
    }))
}

/// Allocations of one request through the decode-only baseline.
fn decode_only_allocations(token: &str) -> u64 {
    let mut decode_only = DecodeOnly {
        inner: Ok200,
        key: DecodingKey::from_secret(SECRET),
        validation: Validation::default(),
    };
    let baseline = allocations_per_request(&mut decode_only, token);
    assert!(baseline > 0, "the allocator counts (decoding allocates)");
    baseline
}

#[test]
fn a_token_cache_hit_allocates_less_than_decoding() {
    let token = alloc_token();
    let baseline = decode_only_allocations(&token);
    let memory = MemoryStore::new();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime
        .block_on(memory.revoke(&Revocation::token("other", in_an_hour())))
        .unwrap();
    let with_memory = allocations_per_request(&mut layer(memory.clone()).layer(Ok200), &token);
    let uncached_layer = JwtRevocationLayer::builder(memory)
        .decoding_key(DecodingKey::from_secret(SECRET))
        .no_verified_token_cache()
        .build()
        .unwrap();
    let without_token_cache = allocations_per_request(&mut uncached_layer.layer(Ok200), &token);
    eprintln!(
        "allocations per request: decode_only={baseline} layer_memory={with_memory} \
         layer_memory_without_token_cache={without_token_cache}"
    );
    // Without the token cache the layer decodes as the baseline does, plus the one `Arc` the
    // claims are shared in: the revocation check itself adds nothing.
    assert!(
        without_token_cache <= baseline + 1,
        "without the token cache: {without_token_cache} > {baseline} + 1"
    );
    // A token-cache hit skips the decode's allocations (claims, strings, the JSON map).
    assert!(
        with_memory < baseline && with_memory < without_token_cache,
        "a token-cache hit: {with_memory}, decode only: {baseline}, uncached layer: {without_token_cache}"
    );
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_warm_check_allocates_no_more_than_decoding_alone(pool: PgPool) {
    let token = alloc_token();
    let baseline = decode_only_allocations(&token);
    let store = PgStore::new(pool);
    for mode in [CacheMode::Lookup, CacheMode::Mirror] {
        let cache = MokaCache::builder(store.clone()).mode(mode).start().unwrap();
        assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
        // Lookup mode: the first request misses and is answered by Postgres; fill it here so
        // the measured requests are hits.
        let facts = tower_jwt_revocation::TokenFacts {
            jti: Some("alloc-1"),
            session_id: Some("s-1"),
            subject: Some("ivy"),
            issued_at: Some(now()),
            expires_at: Some(now() + 600),
            issuer: None,
        };
        tower_jwt_revocation::RevocationBackend::check(&cache, &facts)
            .await
            .unwrap();
        // The token cache off: what the revocation tier adds to a request that decodes.
        let uncached = JwtRevocationLayer::builder(cache.clone())
            .decoding_key(DecodingKey::from_secret(SECRET))
            .no_verified_token_cache()
            .build()
            .unwrap();
        let count = allocations_per_request(&mut uncached.layer(Ok200), &token);
        assert_eq!(
            cache.metrics().backend_calls,
            u64::from(mode == CacheMode::Lookup)
        );
        eprintln!("allocations per request: decode_only={baseline} {mode:?}={count}");
        // The one extra is the `Arc` the claims are shared in.
        assert!(count <= baseline + 1, "{mode:?}: {count} > {baseline} + 1");
    }
}
