//! Keys from an identity provider: a real HTTP provider on loopback (discovery and JWKS), the
//! layer verifying its tokens through rotation, unknown `kid`s, floods, and every way a fetch
//! can fail.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::provider::{
    Key, MIN_REFRESH, Mode, Provider, builder, call, fetched, layer, sign, status, with_header,
};
use common::{now, wait_until_within};
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, EncodingKey, Header, Validation, encode};
use tower_jwt_revocation::{
    Claims, Issuer, Jwks, JwksError, JwtRevocationLayer, MemoryStore, RequireScopes, Revocation,
    RevocationStore,
};

#[tokio::test]
async fn rotation_with_overlap_then_removal() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), Some("RS256"))]).await;
    // Refresh every second in the background: the clamp floor is MIN_REFRESH, max-age asks 1 s.
    provider.set_cache_control("public, max-age=1");
    let jwks = fetched(&provider).await;
    let layer = layer(jwks.clone());
    let old = sign(
        Key::RsaA,
        Algorithm::RS256,
        Some("a"),
        &provider.claims("t1", "ada"),
    );
    assert_eq!(status(&layer, &old).await, StatusCode::OK);

    // The provider publishes the next key ahead of using it: both verify.
    provider.set_keys(vec![
        Key::RsaA.jwk(Some("a"), Some("RS256")),
        Key::RsaB.jwk(Some("b"), Some("RS256")),
    ]);
    let new = sign(
        Key::RsaB,
        Algorithm::RS256,
        Some("b"),
        &provider.claims("t2", "ada"),
    );
    wait_until_within("the new key verifies", Duration::from_secs(5), || async {
        status(&layer, &new).await == StatusCode::OK
    })
    .await;
    assert_eq!(status(&layer, &old).await, StatusCode::OK);

    // The old key is withdrawn: after the refresh that removes it, its tokens fail.
    provider.set_keys(vec![Key::RsaB.jwk(Some("b"), Some("RS256"))]);
    wait_until_within(
        "the withdrawn key stops verifying",
        Duration::from_secs(5),
        || async { status(&layer, &old).await == StatusCode::UNAUTHORIZED },
    )
    .await;
    assert_eq!(status(&layer, &new).await, StatusCode::OK);
    assert!(jwks.stats().refreshes >= 3, "{:?}", jwks.stats());
}

#[tokio::test]
async fn an_unknown_kid_is_answered_after_one_fetch() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = builder(provider.jwks_url(), false)
        .max_refresh_interval(Duration::from_secs(3600))
        .build_and_fetch()
        .await
        .unwrap();
    let layer = layer(jwks.clone());
    assert_eq!(provider.jwks_fetches(), 1);
    provider.set_keys(vec![
        Key::RsaA.jwk(Some("a"), None),
        Key::P256.jwk(Some("c"), None),
    ]);
    // Refetches are at most one per MIN_REFRESH: let that much time pass since the first.
    tokio::time::sleep(MIN_REFRESH).await;
    let token = sign(
        Key::P256,
        Algorithm::ES256,
        Some("c"),
        &json!({"jti": "t", "sub": "cy", "exp": now() + 60}),
    );
    let (code, _) = call(&layer, &token).await;
    assert_eq!(code, StatusCode::OK, "the request waited for the fetch");
    assert_eq!(provider.jwks_fetches(), 2, "exactly one more fetch");
    assert_eq!(jwks.stats().unknown_kid_fetches, 1);
    let metrics = layer.metrics();
    assert_eq!(
        (metrics.token_cache_hits, metrics.token_cache_misses),
        (0, 1),
        "one request, one miss: the check after the wait does not look again"
    );
    assert_eq!(status(&layer, &token).await, StatusCode::OK);
    assert_eq!(provider.jwks_fetches(), 2, "a known kid fetches nothing");
    assert_eq!(
        layer.metrics().token_cache_hits,
        1,
        "verified after the wait, then cached"
    );
}

#[tokio::test]
async fn a_flood_of_random_kids_makes_at_most_one_fetch_per_interval() {
    let (provider, jwks, layer, good) = one_key(|b| b.max_refresh_interval(Duration::from_secs(3600))).await;
    let flood: Vec<String> = (0..1000)
        .map(|i| with_header(&good, "RS256", &format!("random-{i}")))
        .collect();
    // The first fetch's interval has passed: the flood may start one fetch.
    tokio::time::sleep(MIN_REFRESH).await;
    let started = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for token in flood {
        let layer = layer.clone();
        requests.spawn(async move { status(&layer, &token).await });
    }
    let statuses = requests.join_all().await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    let intervals = 1 + (elapsed.as_millis() / MIN_REFRESH.as_millis()) as usize;
    let fetches = provider.jwks_fetches() - 1;
    assert!(
        fetches >= 1 && fetches <= intervals,
        "{fetches} fetches in {elapsed:?}"
    );
    assert_eq!(jwks.stats().unknown_kid_fetches as usize, fetches);
    // The known key still verifies, without another fetch.
    let before = provider.jwks_fetches();
    assert_eq!(status(&layer, &good).await, StatusCode::OK);
    assert_eq!(provider.jwks_fetches(), before);
}

#[tokio::test]
async fn unknown_kids_within_the_interval_fetch_nothing_and_wait_for_nothing() {
    let (provider, jwks, layer, good) = one_key(|b| b.min_refresh_interval(Duration::from_secs(30))).await;
    // One after another, so no fetch is ever in flight to join: only the rate limit stops them.
    let started = tokio::time::Instant::now();
    for i in 0..200 {
        let token = with_header(&good, "RS256", &format!("unknown-{i}"));
        let (code, headers) = call(&layer, &token).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(
            headers[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("unknown key id")
        );
    }
    assert_eq!(provider.jwks_fetches(), 1, "the first fetch only");
    assert_eq!(jwks.stats().unknown_kid_fetches, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no request waited for a fetch: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_refresh_interval_follows_max_age_within_the_bounds() {
    // `no-cache`: as often as the floor allows, and never more often.
    let eager = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    eager.set_cache_control("no-cache");
    let _eager_keys = builder(eager.jwks_url(), false).build_and_fetch().await.unwrap();
    let window = MIN_REFRESH * 5;
    tokio::time::sleep(window).await;
    let fetches = eager.jwks_fetches();
    assert!((3..=6).contains(&fetches), "{fetches} fetches in {window:?}");

    // A day's max-age under a one-second ceiling: refreshed within the ceiling.
    let lazy = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    lazy.set_cache_control("public, max-age=86400");
    let _lazy_keys = builder(lazy.jwks_url(), false)
        .max_refresh_interval(Duration::from_secs(1))
        .build_and_fetch()
        .await
        .unwrap();
    wait_until_within("a background refresh", Duration::from_secs(3), || async {
        lazy.jwks_fetches() >= 2
    })
    .await;
}

#[tokio::test]
async fn a_slow_provider_never_holds_a_request_past_max_request_wait() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = builder(provider.jwks_url(), false)
        .fetch_timeout(Duration::from_secs(5))
        .max_request_wait(Duration::from_millis(300))
        .build_and_fetch()
        .await
        .unwrap();
    let layer = layer(jwks);
    provider.set_mode(Mode::Slow(Duration::from_secs(3)));
    tokio::time::sleep(MIN_REFRESH).await;
    let good = sign(Key::RsaA, Algorithm::RS256, Some("a"), &provider.claims("t", "x"));
    let started = tokio::time::Instant::now();
    let (code, _) = call(&layer, &with_header(&good, "RS256", "new-key")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
    // Meanwhile the known key answers at once.
    assert_eq!(status(&layer, &good).await, StatusCode::OK);
}

#[tokio::test]
async fn build_and_fetch_is_bounded_by_the_fetch_timeout() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    provider.set_mode(Mode::Slow(Duration::from_secs(10)));
    let started = tokio::time::Instant::now();
    let error = builder(provider.jwks_url(), false)
        .build_and_fetch()
        .await
        .unwrap_err();
    assert!(matches!(error, JwksError::Timeout(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_custom_client_fetches_the_keys() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_jwt_revocation::jwks::{FetchFuture, HyperClient, JwksClient};

    struct Counting(HyperClient, Arc<AtomicUsize>);
    impl JwksClient for Counting {
        fn get<'a>(&'a self, url: &'a http::Uri, limit: usize) -> FetchFuture<'a> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.get(url, limit)
        }
    }
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = Counting(
        HyperClient::new(Duration::from_secs(1)).unwrap(),
        Arc::clone(&calls),
    );
    let jwks = builder(provider.issuer(), true)
        .client(client)
        .build_and_fetch()
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "discovery, then the key set");
    let token = sign(
        Key::RsaA,
        Algorithm::RS256,
        Some("a"),
        &provider.claims("t", "cc"),
    );
    assert_eq!(status(&layer(jwks), &token).await, StatusCode::OK);
}

#[tokio::test]
async fn until_the_first_key_set_arrives_requests_get_a_retryable_503() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    provider.stop().await;
    let jwks = builder(provider.issuer(), true).build().unwrap();
    let layer = layer(jwks.clone());
    let token = sign(
        Key::RsaA,
        Algorithm::RS256,
        Some("a"),
        &provider.claims("t", "ann"),
    );
    let (code, headers) = call(&layer, &token).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(RETRY_AFTER));
    assert!(!headers.contains_key(WWW_AUTHENTICATE));
    assert_eq!(layer.metrics().rejected_keys_unavailable, 1);

    provider.restart().await;
    wait_until_within("keys arrive", Duration::from_secs(5), || async {
        status(&layer, &token).await == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn build_and_fetch_fails_fast() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    provider.stop().await;
    let error = builder(provider.issuer(), true)
        .build_and_fetch()
        .await
        .unwrap_err();
    assert!(matches!(error, JwksError::Transport(_)), "{error:?}");
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    provider.claim_issuer("https://evil.example");
    let error = builder(provider.issuer(), true)
        .build_and_fetch()
        .await
        .unwrap_err();
    assert_eq!(
        error,
        JwksError::IssuerMismatch {
            expected: provider.issuer(),
            found: "https://evil.example".into()
        }
    );
    assert_eq!(
        provider.jwks_fetches(),
        0,
        "the key set of a mismatched document is never fetched"
    );

    // A discovery document pointing at plain http elsewhere is refused too.
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    provider.claim_jwks_uri("http://keys.example.com/jwks");
    let error = builder(provider.issuer(), true)
        .build_and_fetch()
        .await
        .unwrap_err();
    assert!(matches!(error, JwksError::InsecureUrl(_)), "{error:?}");
}

#[tokio::test]
async fn urls_must_be_https_unless_loopback_is_explicitly_allowed() {
    assert!(matches!(
        Jwks::from_url("http://127.0.0.1:9/jwks").build(),
        Err(JwksError::InsecureUrl(_))
    ));
    assert!(matches!(
        Jwks::discover("http://id.example.com")
            .allow_http_on_loopback()
            .build(),
        Err(JwksError::InsecureUrl(_))
    ));
    assert!(Jwks::from_url("https://id.example.com/jwks").build().is_ok());
    assert!(matches!(
        Jwks::from_url("https://id.example.com/jwks")
            .min_refresh_interval(Duration::from_secs(60))
            .max_refresh_interval(Duration::from_secs(10))
            .build(),
        Err(JwksError::Setting(_))
    ));
}

/// With several issuers the layer is ready only when every issuer's keys are: an instance that
/// cannot verify one provider's tokens would answer them 503.
#[tokio::test]
async fn a_layer_with_two_issuers_is_ready_only_when_both_have_keys() {
    let one = Provider::start(vec![Key::RsaA.jwk(Some("k"), None)]).await;
    let two = Provider::start(vec![Key::RsaB.jwk(Some("k"), None)]).await;
    two.stop().await;
    let unfetched = Jwks::discover(two.issuer())
        .allow_http_on_loopback()
        .min_refresh_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let layer = JwtRevocationLayer::builder(MemoryStore::new())
        .issuer(Issuer::new(one.issuer(), fetched(&one).await).audience(["api-one"]))
        .issuer(Issuer::new(two.issuer(), unfetched).audience(["api-two"]))
        .build()
        .unwrap();
    assert!(!layer.is_ready(), "the second issuer has no keys yet");
    two.restart().await;
    wait_until_within(
        "the second issuer's keys arrive",
        Duration::from_secs(10),
        || async { layer.is_ready() },
    )
    .await;
}

#[tokio::test]
async fn two_issuers_with_their_own_keys_and_audiences() {
    let one = Provider::start(vec![Key::RsaA.jwk(Some("k"), None)]).await;
    let two = Provider::start(vec![Key::RsaB.jwk(Some("k"), None)]).await;
    let issuers = JwtRevocationLayer::builder(MemoryStore::new())
        .issuer(Issuer::new(one.issuer(), fetched(&one).await).audience(["api-one"]))
        .issuer(Issuer::new(two.issuer(), fetched(&two).await).audience(["api-two"]))
        .build()
        .unwrap();
    let with_aud = |provider: &Provider, aud: &str| {
        let mut claims = provider.claims("t", "sam");
        claims["aud"] = json!(aud);
        claims
    };
    let from_one = sign(Key::RsaA, Algorithm::RS256, Some("k"), &with_aud(&one, "api-one"));
    let from_two = sign(Key::RsaB, Algorithm::RS256, Some("k"), &with_aud(&two, "api-two"));
    assert_eq!(status(&issuers, &from_one).await, StatusCode::OK);
    assert_eq!(status(&issuers, &from_two).await, StatusCode::OK);
    // Each issuer's audience: one's token for two's audience is refused.
    let wrong_aud = sign(Key::RsaA, Algorithm::RS256, Some("k"), &with_aud(&one, "api-two"));
    assert_eq!(status(&issuers, &wrong_aud).await, StatusCode::UNAUTHORIZED);
    // An issuer's audience holds even where the layer's validation switched audiences off.
    let mut lax = Validation::new(Algorithm::RS256);
    lax.validate_aud = false;
    let strict_issuer = JwtRevocationLayer::builder(MemoryStore::new())
        .validation(lax)
        .issuer(Issuer::new(one.issuer(), fetched(&one).await).audience(["api-one"]))
        .build()
        .unwrap();
    assert_eq!(status(&strict_issuer, &from_one).await, StatusCode::OK);
    assert_eq!(status(&strict_issuer, &wrong_aud).await, StatusCode::UNAUTHORIZED);
    // Without any audience configured, a token carrying `aud` is refused (jsonwebtoken's rule).
    assert_eq!(
        status(&layer(fetched(&one).await), &from_one).await,
        StatusCode::UNAUTHORIZED
    );
    // A token without `aud` does not pass an audience check (jsonwebtoken alone lets it).
    let no_aud = sign(Key::RsaA, Algorithm::RS256, Some("k"), &one.claims("t", "sam"));
    assert_eq!(status(&issuers, &no_aud).await, StatusCode::UNAUTHORIZED);
    // A token claiming issuer two, signed with one's key under the same kid and algorithm:
    // only two's key is tried, and it does not verify.
    let forged = sign(Key::RsaA, Algorithm::RS256, Some("k"), &with_aud(&two, "api-two"));
    let (code, headers) = call(&issuers, &forged).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid signature")
    );
    // An issuer nobody configured is refused before any key is tried or fetched.
    let fetches = (one.jwks_fetches(), two.jwks_fetches());
    let mut stranger = with_aud(&one, "api-one");
    stranger["iss"] = json!("https://stranger.example");
    let stranger = sign(Key::RsaA, Algorithm::RS256, Some("zzz"), &stranger);
    let (code, headers) = call(&issuers, &stranger).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("issuer not accepted")
    );
    assert_eq!((one.jwks_fetches(), two.jwks_fetches()), fetches);
}

#[tokio::test]
async fn every_supported_algorithm_verifies_with_its_key_and_no_other() {
    let provider = Provider::start(vec![
        Key::RsaA.jwk(Some("rsa"), None),
        Key::P256.jwk(Some("p256"), None),
        Key::P384.jwk(Some("p384"), Some("ES384")),
        Key::Ed25519.jwk(Some("ed"), Some("EdDSA")),
        Key::RsaB.jwk(Some("ps-only"), Some("PS256")),
    ])
    .await;
    let layer = layer(fetched(&provider).await);
    let claims = provider.claims("t", "al");
    for (key, alg, kid) in [
        (Key::RsaA, Algorithm::RS256, "rsa"),
        (Key::RsaA, Algorithm::RS384, "rsa"),
        (Key::RsaA, Algorithm::RS512, "rsa"),
        (Key::RsaA, Algorithm::PS256, "rsa"),
        (Key::RsaA, Algorithm::PS384, "rsa"),
        (Key::RsaA, Algorithm::PS512, "rsa"),
        (Key::P256, Algorithm::ES256, "p256"),
        (Key::P384, Algorithm::ES384, "p384"),
        (Key::Ed25519, Algorithm::EdDSA, "ed"),
        (Key::RsaB, Algorithm::PS256, "ps-only"),
    ] {
        let token = sign(key, alg, Some(kid), &claims);
        assert_eq!(status(&layer, &token).await, StatusCode::OK, "{alg:?} with {kid}");
    }
    // A token's alg must fit its key: RS256 on a PS256-only key, ES384 on a P-256 key.
    for (key, alg, kid) in [
        (Key::RsaB, Algorithm::RS256, "ps-only"),
        (Key::P384, Algorithm::ES384, "p256"),
    ] {
        let token = sign(key, alg, Some(kid), &claims);
        assert_eq!(
            status(&layer, &token).await,
            StatusCode::UNAUTHORIZED,
            "{alg:?} with {kid}"
        );
    }
    // HMAC with the public key as secret, and alg none: never.
    let public_n = Key::RsaA.jwk(None, None)["n"].as_str().unwrap().to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    let hmac = encode(&header, &claims, &EncodingKey::from_secret(public_n.as_bytes())).unwrap();
    assert_eq!(status(&layer, &hmac).await, StatusCode::UNAUTHORIZED);
    // Even with HS256 on the allow-list (symmetric keys allowed), an RSA key never verifies
    // an HMAC.
    let symmetric = layer_with_symmetric(&provider).await;
    let (code, headers) = call(&symmetric, &hmac).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(
        headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("algorithm not accepted")
    );
    let rs256 = sign(Key::RsaA, Algorithm::RS256, Some("rsa"), &claims);
    assert_eq!(status(&symmetric, &rs256).await, StatusCode::OK);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","kid":"rsa"}"#),
        b64.encode(claims.to_string())
    );
    assert_eq!(status(&layer, &none).await, StatusCode::UNAUTHORIZED);
}

async fn layer_with_symmetric(provider: &Provider) -> JwtRevocationLayer<MemoryStore> {
    layer(
        builder(provider.issuer(), true)
            .allow_symmetric_keys()
            .build_and_fetch()
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn symmetric_keys_only_when_explicitly_allowed() {
    use base64::Engine;
    let secret = b"a-shared-secret-of-at-least-32-bytes!!";
    let oct = json!({"kty": "oct", "kid": "hs", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)});
    let provider = Provider::start(vec![oct, Key::RsaA.jwk(Some("rsa"), None)]).await;
    let claims = provider.claims("t", "sy");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".into());
    let token = encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();

    let refused = layer(fetched(&provider).await);
    assert_eq!(status(&refused, &token).await, StatusCode::UNAUTHORIZED);
    let allowed = layer_with_symmetric(&provider).await;
    assert_eq!(status(&allowed, &token).await, StatusCode::OK);
}

#[tokio::test]
async fn kidless_tokens_against_a_one_key_set() {
    let provider = Provider::start(vec![Key::P256.jwk(None, None)]).await;
    let one_key = layer(fetched(&provider).await);
    let token = sign(Key::P256, Algorithm::ES256, None, &provider.claims("t", "kim"));
    assert_eq!(status(&one_key, &token).await, StatusCode::OK);

    // With two keys of the same algorithm, a token without kid names neither.
    let two = Provider::start(vec![Key::P256.jwk(None, None), Key::P256.jwk(Some("x"), None)]).await;
    let two_keys = layer(fetched(&two).await);
    let token = sign(Key::P256, Algorithm::ES256, None, &two.claims("t", "kim"));
    assert_eq!(status(&two_keys, &token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn scopes_are_checked_after_revocation_with_a_403() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let store = MemoryStore::new();
    let layer = JwtRevocationLayer::builder(store.clone())
        .jwks(fetched(&provider).await)
        .require_scopes(["api"])
        .require(|claims: &Claims| claims.sub.as_deref() != Some("mallory"))
        .build()
        .unwrap();
    let token = |jti: &str, sub: &str, scope: &str| {
        let mut claims = provider.claims(jti, sub);
        claims["scope"] = json!(scope);
        sign(Key::RsaA, Algorithm::RS256, Some("a"), &claims)
    };
    assert_eq!(
        status(&layer, &token("1", "ann", "api read")).await,
        StatusCode::OK
    );
    let (code, headers) = call(&layer, &token("2", "ann", "read")).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        headers[WWW_AUTHENTICATE],
        r#"Bearer error="insufficient_scope", error_description="insufficient scope", scope="api""#
    );
    assert_eq!(
        status(&layer, &token("3", "mallory", "api")).await,
        StatusCode::FORBIDDEN
    );
    // Revoked and lacking the scope: revocation speaks first.
    revoke_jti(&store, "4").await;
    assert_eq!(
        status(&layer, &token("4", "ann", "read")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(layer.metrics().rejected_forbidden, 2);
}

#[tokio::test]
async fn per_route_scopes_with_require_scopes() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let main = layer(fetched(&provider).await);
    let admin = RequireScopes::new(["revocations:admin"]).unwrap();
    let route = tower::ServiceBuilder::new()
        .layer(main)
        .layer(admin)
        .service(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let with_scp = |scp: serde_json::Value| {
        let mut claims = provider.claims("t", "ops");
        claims["scp"] = scp;
        sign(Key::RsaA, Algorithm::RS256, Some("a"), &claims)
    };
    let request = |token: String| {
        Request::get("/admin")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap()
    };
    let ok = route
        .clone()
        .oneshot(request(with_scp(json!(["revocations:admin"]))))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let denied = route
        .oneshot(request(with_scp(json!(["revocations:read"]))))
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(
        denied.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .ends_with(r#"scope="revocations:admin""#)
    );
}

#[tokio::test]
async fn layer_configuration_mistakes_fail_at_build() {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = fetched(&provider).await;
    // A discovered key source under another issuer's name.
    assert!(matches!(
        JwtRevocationLayer::builder(MemoryStore::new())
            .issuer(Issuer::new("https://other.example", jwks.clone()))
            .build(),
        Err(tower_jwt_revocation::ConfigError::IssuerMismatch { .. })
    ));
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&["https://other.example"]);
    assert!(matches!(
        JwtRevocationLayer::builder(MemoryStore::new())
            .jwks(jwks.clone())
            .validation(validation)
            .build(),
        Err(tower_jwt_revocation::ConfigError::IssuerMismatch { .. })
    ));
    assert!(matches!(
        JwtRevocationLayer::builder(MemoryStore::new())
            .jwks(jwks.clone())
            .require_scopes(["two words"])
            .build(),
        Err(tower_jwt_revocation::ConfigError::InvalidScope(_))
    ));
    assert!(matches!(
        JwtRevocationLayer::builder(MemoryStore::new())
            .jwks(jwks.clone())
            .issuer(Issuer::new(provider.issuer(), jwks.clone()))
            .build(),
        Err(tower_jwt_revocation::ConfigError::KeysAndIssuers)
    ));
    assert!(matches!(
        JwtRevocationLayer::builder(MemoryStore::new())
            .issuer(Issuer::new(provider.issuer(), jwks.clone()))
            .issuer(Issuer::new(provider.issuer(), jwks.clone()))
            .build(),
        Err(tower_jwt_revocation::ConfigError::DuplicateIssuer(_))
    ));
    #[derive(Clone, serde::Deserialize)]
    struct Mine {}
    assert!(matches!(
        JwtRevocationLayer::builder(MemoryStore::new())
            .jwks(jwks)
            .require(|_: &Claims| true)
            .claims::<Mine>()
            .build(),
        Err(tower_jwt_revocation::ConfigError::PredicateBeforeClaims)
    ));
}

#[tokio::test]
async fn a_configured_issuer_is_required_not_just_checked_when_present() {
    // Failed on main for a static key: jsonwebtoken checks `iss` only when the token has one.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["https://id.example"]);
    let static_key = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(tower_jwt_revocation::jsonwebtoken::DecodingKey::from_secret(
            common::SECRET,
        ))
        .validation(validation)
        .build()
        .unwrap();
    let no_iss = common::mint(json!({"jti": "j", "sub": "s", "exp": now() + 60}));
    let with_iss =
        common::mint(json!({"jti": "j", "sub": "s", "exp": now() + 60, "iss": "https://id.example"}));
    assert_eq!(status(&static_key, &with_iss).await, StatusCode::OK);
    assert_eq!(status(&static_key, &no_iss).await, StatusCode::UNAUTHORIZED);

    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = fetched(&provider).await;
    let mut claims = provider.claims("t", "s");
    claims.as_object_mut().unwrap().remove("iss");
    let token = sign(Key::RsaA, Algorithm::RS256, Some("a"), &claims);
    let discovered = layer(jwks.clone());
    assert_eq!(status(&discovered, &token).await, StatusCode::UNAUTHORIZED);
    let one_issuer = JwtRevocationLayer::builder(MemoryStore::new())
        .issuer(Issuer::new(provider.issuer(), jwks))
        .build()
        .unwrap();
    assert_eq!(status(&one_issuer, &token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn scopes_are_decided_after_revocation_on_every_path() {
    use common::{FailingBackend, SlowPath};
    use tower_jwt_revocation::FailurePolicy;
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = builder(provider.jwks_url(), false)
        .build_and_fetch()
        .await
        .unwrap();
    let token = |jti: &str, scope: &str, kid: &str| {
        let mut claims = provider.claims(jti, "sc");
        claims["scope"] = json!(scope);
        sign(Key::RsaA, Algorithm::RS256, Some(kid), &claims)
    };
    // The backend's slow path.
    let store = MemoryStore::new();
    let predicate_runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runs = std::sync::Arc::clone(&predicate_runs);
    let slow = JwtRevocationLayer::builder(SlowPath::new(store.clone()))
        .jwks(jwks.clone())
        .require_scopes(["api"])
        .require(move |_: &Claims| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        })
        .build()
        .unwrap();
    assert_eq!(status(&slow, &token("1", "api", "a")).await, StatusCode::OK);
    assert_eq!(
        status(&slow, &token("2", "read", "a")).await,
        StatusCode::FORBIDDEN
    );
    revoke_jti(&store, "3").await;
    let runs_before = predicate_runs.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        status(&slow, &token("3", "read", "a")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        predicate_runs.load(std::sync::atomic::Ordering::SeqCst),
        runs_before,
        "the predicate never runs for a revoked token"
    );

    // A token whose key is fetched on demand (the layer's key-waiting state).
    provider.set_keys(vec![
        Key::RsaA.jwk(Some("a"), None),
        Key::RsaA.jwk(Some("a2"), None),
    ]);
    tokio::time::sleep(MIN_REFRESH).await;
    assert_eq!(
        status(&slow, &token("4", "read", "a2")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(&slow, &token("5", "api", "a2")).await, StatusCode::OK);

    // A store outage under FailurePolicy::Open passes the token, but not without its scope.
    let open = JwtRevocationLayer::builder(FailingBackend::default())
        .jwks(jwks)
        .require_scopes(["api"])
        .failure_policy(FailurePolicy::Open)
        .build()
        .unwrap();
    assert_eq!(status(&open, &token("6", "api", "a")).await, StatusCode::OK);
    assert_eq!(
        status(&open, &token("7", "read", "a")).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn require_scopes_without_a_main_layer_is_a_500_and_without_a_token_a_401() {
    let handler =
        tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
    let alone = RequireScopes::new(["api"]).unwrap().layer(handler);
    let response = alone.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let optional = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(tower_jwt_revocation::jsonwebtoken::DecodingKey::from_secret(
            common::SECRET,
        ))
        .optional()
        .build()
        .unwrap();
    let routed = tower::ServiceBuilder::new()
        .layer(optional)
        .layer(RequireScopes::new(["api"]).unwrap())
        .service(handler);
    let response = routed.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A provider serving one RSA key `a`, its key source built with `configure` (from the JWKS URL,
/// first set fetched), a layer over it, and a good token.
async fn one_key(
    configure: impl FnOnce(tower_jwt_revocation::JwksBuilder) -> tower_jwt_revocation::JwksBuilder,
) -> (Provider, Jwks, JwtRevocationLayer<MemoryStore>, String) {
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = configure(builder(provider.jwks_url(), false))
        .build_and_fetch()
        .await
        .unwrap();
    let good = sign(Key::RsaA, Algorithm::RS256, Some("a"), &provider.claims("t", "x"));
    (provider, jwks.clone(), layer(jwks), good)
}

/// Revokes token `jti` for ten minutes.
async fn revoke_jti(store: &MemoryStore, jti: &str) {
    let until = std::time::SystemTime::now() + Duration::from_secs(600);
    store.revoke(&Revocation::token(jti, until)).await.unwrap();
}

#[tokio::test]
async fn a_panicking_client_is_a_failed_fetch() {
    use tower_jwt_revocation::jwks::{FetchFuture, JwksClient};
    struct Panics;
    impl JwksClient for Panics {
        fn get<'a>(&'a self, _: &'a http::Uri, _: usize) -> FetchFuture<'a> {
            Box::pin(async { panic!("a client bug") })
        }
    }
    let jwks = Jwks::from_url("https://id.example/jwks")
        .client(Panics)
        .min_refresh_interval(MIN_REFRESH)
        .build()
        .unwrap();
    let error = jwks.refresh().await.unwrap_err();
    assert!(matches!(error, JwksError::Client(_)), "{error:?}");
    // The refresher survived it: the next fetch happens.
    tokio::time::sleep(MIN_REFRESH).await;
    assert!(jwks.refresh().await.is_err());
    assert!(jwks.stats().failures >= 2, "{:?}", jwks.stats());
}
