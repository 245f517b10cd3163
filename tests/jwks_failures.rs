//! A provider that fails in every way a fetch can fail, after a good first fetch: the last good
//! keys keep verifying, each failure is counted, and the outage is one `warn` (alone in its test
//! binary, so no other test's events share the log capture).

mod common;

use std::time::Duration;

use common::capture_logs;
use common::provider::{Key, MIN_REFRESH, Mode, Provider, builder, layer, sign, status};
use http::StatusCode;
use serde_json::json;
use tower_jwt_revocation::jsonwebtoken::Algorithm;
use tower_jwt_revocation::{Jwks, JwksError, JwtRevocationLayer, MemoryStore};

/// After a good first fetch, the provider misbehaves: the fetch fails with `expected`, the last
/// good keys keep verifying, and the failure is a metric and one `warn`.
async fn last_good_keys_survive(
    provider: &Provider,
    jwks: &Jwks,
    layer: &JwtRevocationLayer<MemoryStore>,
    expected: impl Fn(&JwksError) -> bool,
) {
    let token = sign(
        Key::RsaA,
        Algorithm::RS256,
        Some("a"),
        &provider.claims("t", "lee"),
    );
    assert_eq!(status(layer, &token).await, StatusCode::OK);
    let failures = jwks.stats().failures;
    tokio::time::sleep(MIN_REFRESH).await;
    let error = jwks.refresh().await.expect_err("the fetch fails");
    assert!(expected(&error), "{error:?}");
    // The refresher also retries on its own after a failure: at least this one was counted.
    assert!(jwks.stats().failures > failures, "{:?}", jwks.stats());
    assert_eq!(jwks.stats().keys, 1, "the last good set is kept");
    assert_eq!(status(layer, &token).await, StatusCode::OK);
}

async fn provider_with_one_key() -> (Provider, Jwks, JwtRevocationLayer<MemoryStore>) {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), Some("RS256"))]).await;
    let jwks = builder(provider.issuer(), true)
        .max_refresh_interval(Duration::from_secs(3600))
        .max_response_bytes(64 * 1024)
        .build_and_fetch()
        .await
        .unwrap();
    let layer = layer(jwks.clone());
    (provider, jwks, layer)
}

#[tokio::test]
async fn a_failing_provider_leaves_the_last_good_keys_in_place() {
    let (logs_guard, logs) = capture_logs();
    let (provider, jwks, layer) = provider_with_one_key().await;

    provider.set_mode(Mode::Status(500));
    last_good_keys_survive(&provider, &jwks, &layer, |e| *e == JwksError::Status(500)).await;
    provider.set_mode(Mode::Slow(Duration::from_secs(3)));
    last_good_keys_survive(&provider, &jwks, &layer, |e| matches!(e, JwksError::Timeout(_))).await;
    provider.set_mode(Mode::Garbage);
    last_good_keys_survive(&provider, &jwks, &layer, |e| *e == JwksError::NotAKeySet).await;
    provider.set_mode(Mode::Huge(10 * 1024 * 1024));
    last_good_keys_survive(&provider, &jwks, &layer, |e| {
        matches!(e, JwksError::TooLarge { .. })
    })
    .await;
    provider.set_mode(Mode::HugeStreamed(10 * 1024 * 1024));
    last_good_keys_survive(&provider, &jwks, &layer, |e| {
        matches!(e, JwksError::TooLarge { .. })
    })
    .await;
    provider.set_mode(Mode::Redirect);
    last_good_keys_survive(&provider, &jwks, &layer, |e| *e == JwksError::Status(302)).await;
    provider.set_mode(Mode::Normal);
    provider.set_keys(vec![
        Key::RsaA.jwk(Some("a"), Some("RSA-OAEP")),
        json!({"kty": "EC", "crv": "P-521"}),
    ]);
    last_good_keys_survive(&provider, &jwks, &layer, |e| {
        *e == JwksError::NoUsableKeys { skipped: 2 }
    })
    .await;
    provider.stop().await;
    last_good_keys_survive(&provider, &jwks, &layer, |e| matches!(e, JwksError::Transport(_))).await;

    // Eight failures in a row: one warning. The recovery is logged once too.
    provider.restart().await;
    provider.set_keys(vec![Key::RsaA.jwk(Some("a"), Some("RS256"))]);
    tokio::time::sleep(MIN_REFRESH).await;
    jwks.refresh().await.expect("the provider is back");
    drop(logs_guard);
    assert_eq!(logs.count("JWKS fetch failed"), 1, "{}", logs.text());
    assert_eq!(logs.count("JWKS fetch succeeds again"), 1, "{}", logs.text());
}

#[test]
fn a_key_source_whose_runtime_is_gone_stops_being_trusted() {
    // The key source is built on a runtime that then shuts down: its refresher dies with it.
    let provider_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let provider = provider_runtime.block_on(Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]));
    let jwks = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let setup = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                setup.block_on(
                    builder(provider.issuer(), true)
                        .max_refresh_interval(Duration::from_millis(500))
                        .build_and_fetch(),
                )
            })
            .join()
            .unwrap()
            .unwrap()
    });
    let serving = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    serving.block_on(async {
        let (_guard, logs) = capture_logs();
        let layer = layer(jwks);
        let token = sign(
            Key::RsaA,
            Algorithm::RS256,
            Some("a"),
            &provider.claims("t", "rt"),
        );
        // Within two refresh intervals of the last fetch the set is still used...
        assert_eq!(status(&layer, &token).await, StatusCode::OK);
        // ...after that nothing could have removed a withdrawn key: refused, loudly.
        common::wait_until_within("the stale set is refused", Duration::from_secs(5), || async {
            status(&layer, &token).await == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
        let unknown = common::provider::with_header(&token, "RS256", "other");
        assert_eq!(status(&layer, &unknown).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(logs.count("JWKS refresher task is gone"), 1, "{}", logs.text());
    });
}
