//! The verified-token cache, specified through the layer: a token seen before skips its
//! signature verification and nothing else. Hits and misses are read from the layer's
//! `Metrics`; every test also asserts the response a client sees.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::provider::{Key, Provider, builder, call, sign, status};
use common::{SECRET, claims, in_an_hour, mint, mint_with, now, wait_until_within};
use http::StatusCode;
use http::header::WWW_AUTHENTICATE;
use serde_json::json;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use tower_jwt_revocation::{
    Issuer, JwtRevocationBuilder, JwtRevocationLayer, MemoryStore, Revocation, RevocationStore,
};

/// A cache large enough that the few tokens of one test share a slot with odds of about one in
/// a hundred thousand (the hash seed is random): exact hit counts stay exact.
const ROOMY: usize = 1 << 17;

fn hs256(store: MemoryStore) -> JwtRevocationBuilder<MemoryStore> {
    JwtRevocationLayer::builder(store)
        .decoding_key(DecodingKey::from_secret(SECRET))
        .verified_token_cache(ROOMY)
}

fn hits_and_misses<S, C, R>(layer: &JwtRevocationLayer<S, C, R>) -> (u64, u64) {
    let metrics = layer.metrics();
    (metrics.token_cache_hits, metrics.token_cache_misses)
}

fn challenge(headers: &http::HeaderMap) -> String {
    headers
        .get(WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_token_seen_before_skips_verification_but_never_the_revocation_check() {
    let store = MemoryStore::new();
    let layer = hs256(store.clone()).build().unwrap();
    let token = mint(claims("cache-1", "ada"));

    assert_eq!(status(&layer, &token).await, StatusCode::OK);
    assert_eq!(hits_and_misses(&layer), (0, 1));
    let (status_code, _) = call(&layer, &token).await;
    assert_eq!(status_code, StatusCode::OK);
    assert_eq!(hits_and_misses(&layer), (1, 1), "the second request is a hit");

    store
        .revoke(&Revocation::token("cache-1", in_an_hour()))
        .await
        .unwrap();
    let (status_code, headers) = call(&layer, &token).await;
    assert_eq!(
        status_code,
        StatusCode::UNAUTHORIZED,
        "a hit is still checked for revocation"
    );
    assert!(challenge(&headers).contains("revoked"), "{}", challenge(&headers));
    assert_eq!(hits_and_misses(&layer), (2, 1));
}

#[tokio::test]
async fn an_altered_or_re_encoded_token_never_hits() {
    let layer = hs256(MemoryStore::new()).build().unwrap();
    let token = mint(claims("cache-2", "ada"));
    assert_eq!(status(&layer, &token).await, StatusCode::OK);

    let (header, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    // The same claims with another `sub`, under the cached token's signature.
    let forged_payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({"jti": "cache-2", "sub": "eve", "iat": now(), "exp": now() + 600}))
            .unwrap(),
    );
    let forged = format!("{header}.{forged_payload}.{signature}");
    // The same bytes re-encoded: a different last base64 character for the signature's two
    // spare bits, which some decoders accept as the same signature.
    let mut re_encoded = token.clone();
    let last = re_encoded.pop().unwrap();
    re_encoded.push(if last == 'A' { 'B' } else { 'A' });
    // Padding characters and a trailing dot are other ways to spell "the same".
    for variant in [forged, re_encoded, format!("{token}="), format!("{token}.")] {
        let before = hits_and_misses(&layer);
        assert_eq!(
            status(&layer, &variant).await,
            StatusCode::UNAUTHORIZED,
            "{variant}"
        );
        assert_eq!(
            hits_and_misses(&layer),
            (before.0, before.1 + 1),
            "{variant} is a miss"
        );
    }
    assert_eq!(
        status(&layer, &token).await,
        StatusCode::OK,
        "the real token still hits"
    );
    assert_eq!(hits_and_misses(&layer).0, 1);
}

#[tokio::test]
async fn failures_are_never_cached() {
    let layer = hs256(MemoryStore::new()).build().unwrap();
    let wrong_key = mint_with(
        Header::new(Algorithm::HS256),
        claims("cache-3", "ada"),
        b"another-secret-of-decent-length!",
    );
    for _ in 0..3 {
        assert_eq!(status(&layer, &wrong_key).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        hits_and_misses(&layer),
        (0, 3),
        "each attempt is verified (and refused)"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_on_the_first_request_after_its_expiry() {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    let layer = hs256(MemoryStore::new()).validation(validation).build().unwrap();
    let exp = now() + 2;
    let token = mint(json!({"jti": "cache-4", "sub": "ada", "exp": exp}));
    assert_eq!(status(&layer, &token).await, StatusCode::OK);
    assert_eq!(status(&layer, &token).await, StatusCode::OK);
    assert_eq!(hits_and_misses(&layer), (1, 1));

    // Each request while the token is valid is a hit; the first one after `exp` is a miss,
    // verified and refused as expired. No request after `exp` is ever a 200.
    wait_until_within("the token expires", Duration::from_secs(10), || {
        let layer = layer.clone();
        let token = token.clone();
        async move {
            let after = now();
            let (status_code, headers) = call(&layer, &token).await;
            if status_code == StatusCode::OK {
                assert!(after <= exp, "a 200 at {after} for a token that expired at {exp}");
                return false;
            }
            assert_eq!(status_code, StatusCode::UNAUTHORIZED);
            assert!(
                challenge(&headers).contains("token expired"),
                "{}",
                challenge(&headers)
            );
            true
        }
    })
    .await;
    let (hits, misses) = hits_and_misses(&layer);
    assert_eq!(status(&layer, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        hits_and_misses(&layer),
        (hits, misses + 1),
        "the expired entry was dropped, not served"
    );
}

#[tokio::test]
async fn required_scopes_and_the_claims_predicate_run_on_every_hit() {
    let layer = hs256(MemoryStore::new())
        .require_scopes(["write"])
        .require(|claims| claims.sub.as_deref() != Some("mallory"))
        .build()
        .unwrap();
    let read_only = mint(json!({"jti": "cache-5a", "sub": "ada", "scope": "read", "exp": now() + 600}));
    let mallory = mint(json!({"jti": "cache-5b", "sub": "mallory", "scope": "write", "exp": now() + 600}));
    for _ in 0..3 {
        assert_eq!(status(&layer, &read_only).await, StatusCode::FORBIDDEN);
        assert_eq!(status(&layer, &mallory).await, StatusCode::FORBIDDEN);
    }
    assert_eq!(
        hits_and_misses(&layer),
        (4, 2),
        "refused by scope, yet cached: a verified token"
    );
}

#[tokio::test]
async fn one_issuers_key_change_flushes_its_tokens_only() {
    let a = Provider::start(vec![Key::RsaA.jwk(Some("a"), Some("RS256"))]).await;
    let b = Provider::start(vec![Key::P256.jwk(Some("b"), Some("ES256"))]).await;
    let fetched = |provider: &Provider| {
        builder(provider.issuer(), true)
            .max_refresh_interval(Duration::from_secs(3600))
            .build_and_fetch()
    };
    let (jwks_a, jwks_b) = (fetched(&a).await.unwrap(), fetched(&b).await.unwrap());
    let layer = JwtRevocationLayer::builder(MemoryStore::new())
        .issuer(Issuer::new(a.issuer(), jwks_a.clone()))
        .issuer(Issuer::new(b.issuer(), jwks_b.clone()))
        .verified_token_cache(ROOMY)
        .build()
        .unwrap();
    let from_a = sign(Key::RsaA, Algorithm::RS256, Some("a"), &a.claims("j-a", "ada"));
    let from_b = sign(Key::P256, Algorithm::ES256, Some("b"), &b.claims("j-b", "ada"));
    for token in [&from_a, &from_b, &from_a, &from_b] {
        assert_eq!(status(&layer, token).await, StatusCode::OK);
    }
    assert_eq!(hits_and_misses(&layer), (2, 2));

    // Issuer b rotates to another key: its token fails on the next request, a's still hits.
    b.set_keys(vec![Key::P384.jwk(Some("b2"), Some("ES384"))]);
    let refreshes = jwks_b.stats().refreshes;
    wait_until_within("b's new key set is installed", Duration::from_secs(5), || async {
        jwks_b.refresh().await.is_ok() && jwks_b.stats().refreshes > refreshes
    })
    .await;
    assert_eq!(status(&layer, &from_b).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&layer, &from_a).await, StatusCode::OK);
    assert_eq!(hits_and_misses(&layer).0, 3, "a's entry survived b's rotation");
}

#[tokio::test]
async fn a_token_without_checked_expiry_is_not_cached() {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let layer = hs256(MemoryStore::new()).validation(validation).build().unwrap();
    let token = mint(json!({"jti": "cache-6", "sub": "ada", "exp": now() + 600}));
    for _ in 0..3 {
        assert_eq!(status(&layer, &token).await, StatusCode::OK);
    }
    assert_eq!(hits_and_misses(&layer), (0, 3));
}

#[tokio::test]
async fn long_tokens_are_verified_every_time_and_the_cache_can_be_switched_off() {
    let padded = mint(json!({"jti": "cache-7", "sub": "ada", "exp": now() + 600, "pad": "x".repeat(600)}));
    let small = hs256(MemoryStore::new())
        .verified_token_cache_max_token_len(512)
        .build()
        .unwrap();
    let off = hs256(MemoryStore::new())
        .no_verified_token_cache()
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(status(&small, &padded).await, StatusCode::OK);
        assert_eq!(status(&off, &padded).await, StatusCode::OK);
    }
    assert_eq!(hits_and_misses(&small).0, 0);
    assert_eq!(hits_and_misses(&off), (0, 0), "no cache, nothing looked up");
    assert!(matches!(
        hs256(MemoryStore::new()).verified_token_cache(usize::MAX).build(),
        Err(tower_jwt_revocation::ConfigError::TokenCacheCapacity(_))
    ));
}

#[tokio::test]
async fn two_layers_never_share_entries() {
    let accepting = hs256(MemoryStore::new()).build().unwrap();
    let other_key = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(b"the-other-layer's-secret-key!!"))
        .build()
        .unwrap();
    let mut strict_validation = Validation::new(Algorithm::HS256);
    strict_validation.set_audience(&["billing"]);
    let other_audience = hs256(MemoryStore::new())
        .validation(strict_validation)
        .build()
        .unwrap();
    let token = mint(claims("cache-8", "ada"));
    assert_eq!(status(&accepting, &token).await, StatusCode::OK);
    assert_eq!(status(&accepting, &token).await, StatusCode::OK);
    assert_eq!(hits_and_misses(&accepting).0, 1);
    // A clone shares the cache; layers built apart do not.
    assert_eq!(status(&accepting.clone(), &token).await, StatusCode::OK);
    assert_eq!(hits_and_misses(&accepting).0, 2);
    assert_eq!(status(&other_key, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&other_audience, &token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_token_share_one_entry() {
    let layer = hs256(MemoryStore::new()).build().unwrap();
    let token = mint(claims("cache-9", "ada"));
    assert_eq!(status(&layer, &token).await, StatusCode::OK);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let layer = layer.clone();
            let token = token.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    assert_eq!(status(&layer, &token).await, StatusCode::OK);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(hits_and_misses(&layer), (1000, 1));
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_fails_at_once_for_cached_tokens() {
    let provider = Provider::start(vec![
        Key::RsaA.jwk(Some("a"), Some("RS256")),
        Key::RsaB.jwk(Some("b"), Some("RS256")),
    ])
    .await;
    let jwks = builder(provider.jwks_url(), false)
        .max_refresh_interval(Duration::from_secs(3600))
        .build_and_fetch()
        .await
        .unwrap();
    let layer = JwtRevocationLayer::builder(MemoryStore::new())
        .jwks(jwks.clone())
        .verified_token_cache(ROOMY)
        .build()
        .unwrap();
    let old = sign(
        Key::RsaA,
        Algorithm::RS256,
        Some("a"),
        &provider.claims("j-a", "ada"),
    );
    let kept = sign(
        Key::RsaB,
        Algorithm::RS256,
        Some("b"),
        &provider.claims("j-b", "ada"),
    );
    for token in [&old, &kept, &old, &kept] {
        assert_eq!(status(&layer, token).await, StatusCode::OK);
    }
    assert_eq!(hits_and_misses(&layer), (2, 2));

    // A refresh that returns the same document keeps the entries.
    wait_until_within("a refresh is allowed again", Duration::from_secs(5), || async {
        jwks.refresh().await.is_ok() && jwks.stats().refreshes >= 2
    })
    .await;
    assert_eq!(status(&layer, &old).await, StatusCode::OK);
    assert_eq!(
        hits_and_misses(&layer),
        (3, 2),
        "an unchanged key set flushes nothing"
    );

    provider.set_keys(vec![Key::RsaB.jwk(Some("b"), Some("RS256"))]);
    let refreshes = jwks.stats().refreshes;
    wait_until_within(
        "the key set without `a` is installed",
        Duration::from_secs(5),
        || async { jwks.refresh().await.is_ok() && jwks.stats().refreshes > refreshes },
    )
    .await;
    // The very next request: no waiting for an entry to age out.
    assert_eq!(status(&layer, &old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&layer, &kept).await,
        StatusCode::OK,
        "re-verified with its key"
    );
    assert_eq!(status(&layer, &kept).await, StatusCode::OK);
    let (hits, misses) = hits_and_misses(&layer);
    assert_eq!(hits, 4, "both entries were flushed, `kept` cached again");
    assert!(misses >= 4, "{misses}");
}
