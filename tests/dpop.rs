//! DPoP (RFC 9449) in the layer, with real signatures: tokens bound to a client key by
//! `cnf.jkt`, proofs signed by ES256, RS256 and EdDSA test keys, and one failing case for every
//! rule the layer enforces.

mod common;

use std::sync::Arc;

use common::dpop::{Client, EDDSA, ES256, RS256, ath};
use common::{mint, now};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_jwt_revocation::dpop::{DpopConfig, DpopError, DpopPolicy, InvalidProof};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tower_jwt_revocation::{
    Claims, ConfigError, JwtRevocationLayer, MemoryStore, Rejection, RevocationStore,
};

const ORIGIN: &str = "https://api.example.com";
const URL: &str = "https://api.example.com/me";

fn layer_with(store: &MemoryStore, dpop: Option<DpopConfig>) -> JwtRevocationLayer<MemoryStore> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_nbf = true;
    let builder = JwtRevocationLayer::builder(store.clone())
        .decoding_key(DecodingKey::from_secret(common::SECRET))
        .validation(validation)
        .realm("api");
    match dpop {
        Some(dpop) => builder.dpop(dpop),
        None => builder,
    }
    .build()
    .unwrap()
}

fn layer(dpop: DpopConfig) -> JwtRevocationLayer<MemoryStore> {
    layer_with(&MemoryStore::new(), Some(dpop))
}

/// A fresh token bound to `client`'s key.
fn bound_token(jti: &str, client: Client) -> String {
    let mut claims = common::claims(jti, "alice");
    claims["cnf"] = json!({"jkt": client.jkt()});
    mint(claims)
}

fn bearer_token(jti: &str) -> String {
    mint(common::claims(jti, "alice"))
}

/// What the inner service saw: the token's key binding, from the claims in the extensions.
async fn send<S: tower_jwt_revocation::RevocationBackend>(
    layer: &JwtRevocationLayer<S>,
    request: http::request::Builder,
) -> (StatusCode, HeaderMap, String) {
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let claims = request.extensions().get::<Arc<Claims>>().cloned();
        let seen = claims
            .map(|c| c.dpop_jkt().unwrap_or("bearer").to_owned())
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(http::Response::new(seen))
    }));
    let response = service.oneshot(request.body(()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body)
}

fn dpop_request(token: &str, proof: &str) -> http::request::Builder {
    Request::get("/me")
        .header(AUTHORIZATION, format!("DPoP {token}"))
        .header("DPoP", proof)
}

fn challenge(headers: &HeaderMap) -> String {
    headers
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_dpop_bound_token_sent_as_bearer_is_refused() {
    // Fails on the main of issue 27's start: a layer that cannot check proofs let a bound token
    // in as a bearer token, so a thief needed nothing but the token.
    let without_dpop = layer_with(&MemoryStore::new(), None);
    let token = bound_token("b1", ES256);
    let (status, headers, _) = send(
        &without_dpop,
        Request::get("/me").header(AUTHORIZATION, format!("Bearer {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers).contains(r#"error="invalid_token""#),
        "{headers:?}"
    );

    let with_dpop = layer(DpopConfig::new(ORIGIN));
    let (status, headers, _) = send(
        &with_dpop,
        Request::get("/me").header(AUTHORIZATION, format!("Bearer {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers).starts_with(r#"DPoP realm="api", error="invalid_token", error_description="DPoP-bound token presented as a bearer token""#),
        "{headers:?}"
    );
    // The same token with its proof is accepted.
    let (status, _, seen) = send(&with_dpop, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
    assert_eq!((status, seen), (StatusCode::OK, ES256.jkt()));
}

#[tokio::test]
async fn proofs_signed_with_es256_rs256_and_eddsa_are_accepted() {
    let layer = layer(DpopConfig::new(ORIGIN));
    for (i, client) in [ES256, RS256, EDDSA].into_iter().enumerate() {
        let token = bound_token(&format!("k{i}"), client);
        let (status, headers, seen) =
            send(&layer, dpop_request(&token, &client.proof("GET", URL, &token))).await;
        assert_eq!(status, StatusCode::OK, "{client:?}: {headers:?}");
        assert_eq!(seen, client.jkt());
    }
    // Unbound bearer tokens still work under the default policy.
    let (status, _, seen) = send(
        &layer,
        Request::get("/me").header(AUTHORIZATION, format!("Bearer {}", bearer_token("plain"))),
    )
    .await;
    assert_eq!((status, seen.as_str()), (StatusCode::OK, "bearer"));
}

/// How a case breaks a good proof: the header and claims it changes, or another signer.
struct Case {
    name: &'static str,
    header: Value,
    claims: Value,
    expected: DpopError,
}

fn case(name: &'static str, header: Value, claims: Value, expected: DpopError) -> Case {
    Case {
        name,
        header,
        claims,
        expected,
    }
}

#[tokio::test]
async fn every_rule_of_rfc_9449_has_a_failing_case() {
    let layer = layer(DpopConfig::new(ORIGIN).max_age(std::time::Duration::from_secs(60)));
    let token = bound_token("rules", ES256);
    let other_token = bound_token("other", ES256);
    let mut private = ES256.jwk();
    private["d"] = json!("c2VjcmV0LXNjYWxhci1ub3QtcmVhbGx5LWEta2V5LWF0LWFsbA");
    let cases = vec![
        case(
            "another method",
            json!({}),
            json!({"htm": "POST"}),
            DpopError::InvalidProof(InvalidProof::Method),
        ),
        case(
            "another path",
            json!({}),
            json!({"htu": "https://api.example.com/admin"}),
            DpopError::InvalidProof(InvalidProof::Uri),
        ),
        case(
            "another host",
            json!({}),
            json!({"htu": "https://evil.example.com/me"}),
            DpopError::InvalidProof(InvalidProof::Uri),
        ),
        case(
            "another scheme",
            json!({}),
            json!({"htu": "http://api.example.com/me"}),
            DpopError::InvalidProof(InvalidProof::Uri),
        ),
        case(
            "no ath",
            json!({}),
            json!({"ath": null}),
            DpopError::InvalidProof(InvalidProof::TokenHash),
        ),
        case(
            "another token's ath",
            json!({}),
            json!({"ath": ath(&other_token)}),
            DpopError::InvalidProof(InvalidProof::TokenHash),
        ),
        case(
            "stale iat",
            json!({}),
            json!({"iat": now() - 120}),
            DpopError::InvalidProof(InvalidProof::Stale),
        ),
        case(
            "future iat",
            json!({}),
            json!({"iat": now() + 60}),
            DpopError::InvalidProof(InvalidProof::IssuedInFuture),
        ),
        case(
            "no iat",
            json!({}),
            json!({"iat": null}),
            DpopError::InvalidProof(InvalidProof::MissingClaim),
        ),
        case(
            "no jti",
            json!({}),
            json!({"jti": null}),
            DpopError::InvalidProof(InvalidProof::MissingClaim),
        ),
        case(
            "typ JWT",
            json!({"typ": "JWT"}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Type),
        ),
        case(
            "no typ",
            json!({"typ": null}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Type),
        ),
        case(
            "private key in the header",
            json!({"jwk": private}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::PrivateKey),
        ),
        case(
            "no jwk",
            json!({"jwk": null}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Key),
        ),
        case(
            "an RSA key for ES256",
            json!({"jwk": RS256.jwk()}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Key),
        ),
        case(
            "alg none",
            json!({"alg": "none"}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Algorithm),
        ),
        case(
            "alg HS256",
            json!({"alg": "HS256"}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Algorithm),
        ),
        case(
            "a crit header",
            json!({"crit": ["exp"]}),
            json!({}),
            DpopError::InvalidProof(InvalidProof::Malformed),
        ),
    ];
    for case in cases {
        let mut header = ES256.header();
        let mut claims = ES256.claims("GET", URL, &token);
        for (target, changes) in [(&mut header, &case.header), (&mut claims, &case.claims)] {
            for (name, value) in changes.as_object().unwrap() {
                match value {
                    Value::Null => target.remove(name),
                    value => target.insert(name.clone(), value.clone()),
                };
            }
        }
        let proof = ES256.sign(&header, &claims);
        let (status, headers, _) = send(&layer, dpop_request(&token, &proof)).await;
        let expected = Rejection::Dpop(case.expected);
        assert_eq!(status, expected.status(), "{}", case.name);
        let challenge = challenge(&headers);
        assert!(
            challenge.starts_with(&format!(
                r#"DPoP realm="api", error="{}", error_description="{}""#,
                expected.error_code().unwrap(),
                expected.description()
            )),
            "{}: {challenge}",
            case.name
        );
        assert!(
            challenge.contains(r#"algs="ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512""#),
            "{challenge}"
        );
        assert!(
            challenge.contains(r#"Bearer realm="api""#),
            "the Bearer challenge beside: {challenge}"
        );
    }
    assert_eq!(layer.metrics().rejected_dpop, 18);
    assert_eq!(layer.metrics().authorized, 0);
}

#[tokio::test]
async fn another_key_another_token_and_two_proofs_are_refused() {
    let layer = layer(DpopConfig::new(ORIGIN));
    let token = bound_token("t", ES256);
    // A proof by another client's key, well-formed in every other way.
    let (status, headers, _) = send(&layer, dpop_request(&token, &EDDSA.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&headers).contains("DPoP proof key does not match the token binding"));
    // The header names one key (the token's), another key signs.
    let named = Client {
        key: common::provider::Key::RsaA,
        alg: Algorithm::RS256,
    };
    let bound_to_named = bound_token("named", named);
    let proof = RS256.sign(&named.header(), &named.claims("GET", URL, &bound_to_named));
    let (status, headers, _) = send(&layer, dpop_request(&bound_to_named, &proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers).contains("DPoP proof signature invalid"),
        "{headers:?}"
    );
    // Two DPoP headers: 400 invalid_request.
    let request = dpop_request(&token, &ES256.proof("GET", URL, &token))
        .header("DPoP", ES256.proof("GET", URL, &token));
    let (status, headers, _) = send(&layer, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(challenge(&headers).contains(r#"error="invalid_request""#));
    // The DPoP scheme without a proof.
    let (status, headers, _) = send(
        &layer,
        Request::get("/me").header(AUTHORIZATION, format!("DPoP {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers)
            .contains(r#"error="invalid_dpop_proof", error_description="DPoP proof required""#)
    );
    // An unbound token under the DPoP scheme, with a proof.
    let unbound = bearer_token("u");
    let (status, headers, _) = send(&layer, dpop_request(&unbound, &ES256.proof("GET", URL, &unbound))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&headers).contains("token is not DPoP-bound"));
    // Garbage in the header: refused, never a panic or a 500.
    for garbage in [
        "x",
        "a.b.c",
        "....",
        "eyJhbGciOiJub25lIn0.e30.",
        &"A".repeat(9000),
    ] {
        let (status, _, _) = send(&layer, dpop_request(&token, garbage)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{garbage:.20}");
    }
}

#[tokio::test]
async fn the_host_header_is_never_the_origin_and_the_query_is_ignored() {
    let layer = layer(DpopConfig::new("HTTPS://API.example.com:443"));
    let token = bound_token("h", ES256);
    // A proof for the host the client claims, not the configured one: refused.
    let proof = ES256.proof("GET", "https://evil.example.com/me", &token);
    let request = dpop_request(&token, &proof).header(HOST, "evil.example.com");
    assert_eq!(send(&layer, request).await.0, StatusCode::UNAUTHORIZED);
    // The configured origin, whatever Host says; query and fragment are not compared.
    let proof = ES256.proof("GET", "https://api.example.com/me?page=2#top", &token);
    let request = Request::get("/me?page=3")
        .header(AUTHORIZATION, format!("DPoP {token}"))
        .header("DPoP", proof)
        .header(HOST, "evil.example.com");
    assert_eq!(send(&layer, request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_proof_is_accepted_once_and_a_cached_token_still_needs_a_fresh_one() {
    let layer = layer(DpopConfig::new(ORIGIN));
    let token = bound_token("cached", ES256);
    let proof = ES256.proof("GET", URL, &token);
    assert_eq!(send(&layer, dpop_request(&token, &proof)).await.0, StatusCode::OK);
    // The token is in the verified-token cache now; its replayed proof is refused all the same.
    let (status, headers, _) = send(&layer, dpop_request(&token, &proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&headers).contains("DPoP proof replayed"));
    let (status, _, _) = send(
        &layer,
        Request::get("/me").header(AUTHORIZATION, format!("DPoP {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no proof, cached token");
    assert_eq!(
        send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token)))
            .await
            .0,
        StatusCode::OK
    );
    let metrics = layer.metrics();
    assert!(metrics.token_cache_hits >= 3, "{metrics:?}");
    assert_eq!(metrics.authorized, 2);
}

#[tokio::test]
async fn revocation_and_scopes_apply_to_bound_tokens_as_to_bearer_ones() {
    let store = MemoryStore::new();
    let layer = layer_with(&store, Some(DpopConfig::new(ORIGIN)));
    let token = bound_token("revoked", ES256);
    assert_eq!(
        send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token)))
            .await
            .0,
        StatusCode::OK
    );
    store
        .revoke(&tower_jwt_revocation::Revocation::token(
            "revoked",
            common::in_an_hour(),
        ))
        .await
        .unwrap();
    let (status, headers, _) = send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers)
            .starts_with(r#"DPoP realm="api", error="invalid_token", error_description="token revoked""#),
        "{headers:?}"
    );

    let scoped = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(common::SECRET))
        .validation(Validation::new(Algorithm::HS256))
        .require_scopes(["admin"])
        .dpop(DpopConfig::new(ORIGIN))
        .build()
        .unwrap();
    let token = bound_token("scoped", ES256);
    let (status, headers, _) = send(&scoped, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        challenge(&headers).starts_with(r#"DPoP error="insufficient_scope""#),
        "{headers:?}"
    );
}

#[tokio::test]
async fn under_required_every_token_must_be_bound() {
    let layer = layer(DpopConfig::new(ORIGIN).policy(DpopPolicy::Required));
    let (status, headers, _) = send(
        &layer,
        Request::get("/me").header(AUTHORIZATION, format!("Bearer {}", bearer_token("unbound"))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        r#"DPoP realm="api", error="invalid_token", error_description="token is not DPoP-bound", algs="ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512""#
    );
    // No token: the DPoP challenge alone.
    let (status, headers, _) = send(&layer, Request::get("/me")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers).starts_with("DPoP realm=\"api\", algs="),
        "{headers:?}"
    );
    let token = bound_token("bound", RS256);
    assert_eq!(
        send(&layer, dpop_request(&token, &RS256.proof("GET", URL, &token)))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn once_a_nonce_is_required_a_proof_without_one_is_never_accepted() {
    let secret = b"a nonce secret shared by the fleet, 32+ bytes";
    let layer = layer(DpopConfig::new(ORIGIN).require_nonce(secret.to_vec()));
    let token = bound_token("n", ES256);
    let (status, headers, _) = send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers).starts_with(r#"DPoP realm="api", error="use_dpop_nonce""#),
        "{headers:?}"
    );
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();
    for bad in [json!("not-a-nonce"), json!(""), json!(42)] {
        let mut claims = ES256.claims("GET", URL, &token);
        claims.insert("nonce".into(), bad.clone());
        let (status, _, _) = send(
            &layer,
            dpop_request(&token, &ES256.sign(&ES256.header(), &claims)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let mut claims = ES256.claims("GET", URL, &token);
    claims.insert("nonce".into(), json!(nonce));
    let (status, headers, _) = send(
        &layer,
        dpop_request(&token, &ES256.sign(&ES256.header(), &claims)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{headers:?}");
    // Another instance with the same secret accepts the same nonce.
    let twin = self::layer(DpopConfig::new(ORIGIN).require_nonce(secret.to_vec()));
    let mut claims = ES256.claims("GET", URL, &token);
    claims.insert("nonce".into(), json!(nonce));
    assert_eq!(
        send(&twin, dpop_request(&token, &ES256.sign(&ES256.header(), &claims)))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_full_replay_window_refuses_with_503_instead_of_forgetting() {
    // Two buckets of 8 slots: every proof can go to either.
    let layer = layer(DpopConfig::new(ORIGIN).replay_capacity(16));
    let token = bound_token("full", ES256);
    for _ in 0..16 {
        assert_eq!(
            send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token)))
                .await
                .0,
            StatusCode::OK
        );
    }
    let (status, headers, _) = send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let metrics = layer.metrics();
    assert_eq!(
        (metrics.dpop_window_full, metrics.rejected_dpop),
        (1, 0),
        "{metrics:?}"
    );
}

#[tokio::test]
async fn grpc_requests_get_status_16_and_challenges_name_the_metadata() {
    let layer = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(common::SECRET))
        .validation(Validation::new(Algorithm::HS256))
        .dpop(DpopConfig::new(ORIGIN))
        .resource_metadata("https://api.example.com/.well-known/oauth-protected-resource")
        .build()
        .unwrap();
    let token = bound_token("g", ES256);
    let request = Request::post("/demo.Greeter/Hello")
        .header(CONTENT_TYPE, "application/grpc")
        .header(AUTHORIZATION, format!("Bearer {token}"));
    let (status, headers, _) = send(&layer, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "16");
    // A gRPC proof names POST and the method's path.
    let proof = ES256.proof("POST", "https://api.example.com/demo.Greeter/Hello", &token);
    let request = Request::post("/demo.Greeter/Hello")
        .header(CONTENT_TYPE, "application/grpc")
        .header(AUTHORIZATION, format!("DPoP {token}"))
        .header("DPoP", proof);
    let (status, headers, _) = send(&layer, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("grpc-status"));
    let (status, headers, _) = send(&layer, Request::get("/me")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&headers),
        r#"Bearer resource_metadata="https://api.example.com/.well-known/oauth-protected-resource", DPoP algs="ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512", resource_metadata="https://api.example.com/.well-known/oauth-protected-resource""#
    );
}

#[test]
fn bad_dpop_settings_fail_the_build() {
    let build = |dpop: DpopConfig| {
        JwtRevocationLayer::builder(MemoryStore::new())
            .decoding_key(DecodingKey::from_secret(common::SECRET))
            .dpop(dpop)
            .build()
            .err()
    };
    assert_eq!(
        build(DpopConfig::new("api.example.com")),
        Some(ConfigError::InvalidResource("api.example.com".into()))
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).algorithms([Algorithm::HS256])),
        Some(ConfigError::DpopAlgorithms)
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).algorithms([])),
        Some(ConfigError::DpopAlgorithms)
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).require_nonce(b"short".to_vec())),
        Some(ConfigError::NonceSecret)
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).replay_capacity(0)),
        Some(ConfigError::ReplayCapacity(0))
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).max_age(std::time::Duration::ZERO)),
        Some(ConfigError::DpopWindow)
    );
    // The bounds, at and past them.
    use std::time::Duration;
    use tower_jwt_revocation::dpop::{MAX_NONCE_LIFETIME, MAX_REPLAY_CAPACITY, MAX_WINDOW};
    assert_eq!(MAX_NONCE_LIFETIME, Duration::from_secs(86_400));
    assert_eq!(MAX_WINDOW, Duration::from_secs(3_600));
    let nonces = |lifetime| {
        DpopConfig::new(ORIGIN)
            .require_nonce(vec![7; 32])
            .nonce_lifetime(lifetime)
    };
    assert_eq!(build(nonces(Duration::from_secs(86_400))), None);
    assert_eq!(
        build(nonces(Duration::from_secs(86_401))),
        Some(ConfigError::DpopWindow)
    );
    assert_eq!(
        build(nonces(Duration::from_millis(999))),
        Some(ConfigError::DpopWindow)
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).max_age(Duration::from_secs(3_595))),
        None
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).max_age(Duration::from_secs(3_596))),
        Some(ConfigError::DpopWindow)
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).max_age(Duration::from_millis(999))),
        Some(ConfigError::DpopWindow)
    );
    assert_eq!(
        build(DpopConfig::new(ORIGIN).replay_capacity(MAX_REPLAY_CAPACITY + 1)),
        Some(ConfigError::ReplayCapacity(MAX_REPLAY_CAPACITY + 1))
    );
    assert_eq!(MAX_REPLAY_CAPACITY, 1 << 27);
    let metadata = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(common::SECRET))
        .resource_metadata("https://x.example/\"quoted\"")
        .build()
        .err();
    assert!(matches!(metadata, Some(ConfigError::InvalidMetadataUrl(_))));
}

#[tokio::test]
async fn the_key_wait_path_checks_the_binding_and_proof_as_the_fast_path_does() {
    use common::provider::{Key, MIN_REFRESH, Provider, builder, sign};
    let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
    let jwks = builder(provider.jwks_url(), false)
        .max_refresh_interval(std::time::Duration::from_secs(3600))
        .build_and_fetch()
        .await
        .unwrap();
    let layer = JwtRevocationLayer::builder(MemoryStore::new())
        .jwks(jwks.clone())
        .dpop(DpopConfig::new(ORIGIN))
        .build()
        .unwrap();
    let mut keys = vec![Key::RsaA.jwk(Some("a"), None)];
    // Each request names a key the layer has not seen, so it waits for a fetch first.
    let cases: [(Key, Algorithm, &str, &str, StatusCode, &str); 3] = [
        (Key::P384, Algorithm::ES384, "c", "proof", StatusCode::OK, ""),
        (
            Key::RsaB,
            Algorithm::RS256,
            "d",
            "no proof",
            StatusCode::UNAUTHORIZED,
            "DPoP proof required",
        ),
        (
            Key::Ed25519,
            Algorithm::EdDSA,
            "e",
            "as bearer",
            StatusCode::UNAUTHORIZED,
            "DPoP-bound token presented as a bearer token",
        ),
    ];
    for (i, (key, alg, kid, how, expected, description)) in cases.into_iter().enumerate() {
        keys.push(key.jwk(Some(kid), None));
        provider.set_keys(keys.clone());
        // Refetches are at most one per MIN_REFRESH: let that much pass since the last one.
        tokio::time::sleep(MIN_REFRESH).await;
        let claims = json!({"jti": kid, "sub": "kw", "exp": now() + 60, "cnf": {"jkt": ES256.jkt()}});
        let token = sign(key, alg, Some(kid), &claims);
        let request = match how {
            "proof" => dpop_request(&token, &ES256.proof("GET", URL, &token)),
            "no proof" => Request::get("/me").header(AUTHORIZATION, format!("DPoP {token}")),
            _ => Request::get("/me").header(AUTHORIZATION, format!("Bearer {token}")),
        };
        let (status, headers, _) = send(&layer, request).await;
        assert_eq!(status, expected, "{how}: {headers:?}");
        assert!(challenge(&headers).contains(description), "{how}: {headers:?}");
        assert_eq!(
            jwks.stats().unknown_kid_fetches,
            i as u64 + 1,
            "{how} took the key-wait path"
        );
    }
}

#[tokio::test]
async fn the_iat_window_is_max_age_plus_the_leeway_each_way() {
    // max_age 60 s, leeway 5 s: accepted from 65 s old to 5 s ahead (margins of 2-3 s for the
    // test's own clock).
    let layer = layer(DpopConfig::new(ORIGIN));
    let token = bound_token("iat", ES256);
    let at = |iat: u64| {
        let mut claims = ES256.claims("GET", URL, &token);
        claims.insert("iat".into(), json!(iat));
        ES256.sign(&ES256.header(), &claims)
    };
    for (iat, expected) in [
        (now() - 62, StatusCode::OK),
        (now() + 3, StatusCode::OK),
        (now() - 68, StatusCode::UNAUTHORIZED),
        (now() + 8, StatusCode::UNAUTHORIZED),
    ] {
        assert_eq!(
            send(&layer, dpop_request(&token, &at(iat))).await.0,
            expected,
            "iat {iat} at {}",
            now()
        );
    }
}

#[tokio::test]
async fn more_malformed_proofs_are_refused() {
    let layer = layer(DpopConfig::new(ORIGIN));
    let token = bound_token("more", ES256);
    let p384 = Client {
        key: common::provider::Key::P384,
        alg: Algorithm::ES384,
    };
    let refused = |header: Value, claims: Value, expected: InvalidProof| (header, claims, expected);
    let cases = [
        refused(json!({"jwk": {"alg": "ES384"}}), json!({}), InvalidProof::Key),
        refused(json!({"jwk": p384.jwk()}), json!({}), InvalidProof::Key),
        refused(
            json!({"jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
            json!({}),
            InvalidProof::PrivateKey,
        ),
        refused(
            json!({}),
            json!({"jti": "x".repeat(257)}),
            InvalidProof::MissingClaim,
        ),
        refused(json!({}), json!({"htm": ["GET"]}), InvalidProof::MissingClaim),
        refused(json!({}), json!({"htu": null}), InvalidProof::MissingClaim),
        refused(json!({}), json!({"iat": "now"}), InvalidProof::MissingClaim),
        refused(json!({}), json!({"nonce": 42}), InvalidProof::MissingClaim),
    ];
    for (header_changes, claim_changes, expected) in cases {
        let mut header = ES256.header();
        let mut claims = ES256.claims("GET", URL, &token);
        for (target, changes) in [(&mut header, &header_changes), (&mut claims, &claim_changes)] {
            for (name, value) in changes.as_object().unwrap() {
                match (name.as_str(), value) {
                    (_, Value::Null) => {
                        target.remove(name);
                    }
                    // Merge into the header's key.
                    ("jwk", Value::Object(members)) if !members.contains_key("kty") => {
                        target["jwk"].as_object_mut().unwrap().extend(members.clone());
                    }
                    _ => {
                        target.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        let (status, headers, _) = send(&layer, dpop_request(&token, &ES256.sign(&header, &claims))).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{header_changes} {claim_changes}"
        );
        assert!(
            challenge(&headers).contains(expected.description()),
            "{header_changes} {claim_changes}: {headers:?}"
        );
    }
    // JSON arrays where objects belong, and a duplicate member.
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let good = ES256.proof("GET", URL, &token);
    let (header, rest) = good.split_once('.').unwrap();
    let header_json: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    let as_array = json!([header_json["typ"], header_json["alg"], header_json["jwk"]]).to_string();
    let duplicate = header_json.to_string().replacen('{', r#"{"alg":"ES256","#, 1);
    for header in [as_array, duplicate] {
        let proof = format!("{}.{rest}", b64(&header));
        let (status, headers, _) = send(&layer, dpop_request(&token, &proof)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
        assert!(
            challenge(&headers).contains("malformed DPoP proof"),
            "{header}: {headers:?}"
        );
    }
    // `application/dpop+jwt` is the same media type.
    let mut header = ES256.header();
    header.insert("typ".into(), json!("application/DPoP+JWT"));
    let proof = ES256.sign(&header, &ES256.claims("GET", URL, &token));
    assert_eq!(send(&layer, dpop_request(&token, &proof)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_algorithm_list_narrows_what_proofs_may_use() {
    let layer = layer(DpopConfig::new(ORIGIN).algorithms([Algorithm::ES256]));
    let token = bound_token("narrow", EDDSA);
    let (status, headers, _) = send(&layer, dpop_request(&token, &EDDSA.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&headers).contains(r#"DPoP proof algorithm not allowed", algs="ES256""#),
        "{headers:?}"
    );
    // And PS256, ES384 proofs pass where they are allowed.
    let wide = self::layer(DpopConfig::new(ORIGIN));
    for client in [
        Client {
            key: common::provider::Key::RsaA,
            alg: Algorithm::PS256,
        },
        Client {
            key: common::provider::Key::P384,
            alg: Algorithm::ES384,
        },
    ] {
        let token = bound_token(&format!("{:?}", client.alg), client);
        let (status, headers, _) = send(&wide, dpop_request(&token, &client.proof("GET", URL, &token))).await;
        assert_eq!(status, StatusCode::OK, "{client:?}: {headers:?}");
    }
}

#[tokio::test]
async fn nonce_refusals_say_use_dpop_nonce_and_every_401_hands_one_out() {
    let secret = b"a nonce secret shared by the fleet, 32+ bytes";
    let layer = layer(DpopConfig::new(ORIGIN).require_nonce(secret.to_vec()));
    let other =
        self::layer(DpopConfig::new(ORIGIN).require_nonce(b"another fleet's nonce secret, as long".to_vec()));
    let token = bound_token("nonce-codes", ES256);
    let (_, headers, _) = send(&other, Request::get("/me")).await;
    let foreign = headers["dpop-nonce"].to_str().unwrap().to_owned();
    for nonce in [json!("not-a-nonce"), json!(""), json!(foreign)] {
        let mut claims = ES256.claims("GET", URL, &token);
        claims.insert("nonce".into(), nonce.clone());
        let (status, headers, _) = send(
            &layer,
            dpop_request(&token, &ES256.sign(&ES256.header(), &claims)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{nonce}");
        assert!(
            challenge(&headers).contains(r#"error="use_dpop_nonce""#),
            "{nonce}: {headers:?}"
        );
        assert!(headers.contains_key("dpop-nonce"));
    }
    // Any 401 hands out a nonce: no token, a bad token, a bearer token under the wrong scheme.
    for request in [
        Request::get("/me"),
        Request::get("/me").header(AUTHORIZATION, "Bearer abc.def.ghi"),
        Request::get("/me").header(AUTHORIZATION, format!("Bearer {token}")),
    ] {
        let (status, headers, _) = send(&layer, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key("dpop-nonce"), "{headers:?}");
    }
    // A 200 does not (a client learns the next nonce from its next use_dpop_nonce).
    let (_, headers, _) = send(&layer, Request::get("/me")).await;
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_owned();
    let mut claims = ES256.claims("GET", URL, &token);
    claims.insert("nonce".into(), json!(nonce));
    let (status, headers, _) = send(
        &layer,
        dpop_request(&token, &ES256.sign(&ES256.header(), &claims)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("dpop-nonce"));
}

#[tokio::test]
async fn bound_tokens_in_cookies_and_the_dpop_scheme_without_dpop_are_refused() {
    let store = MemoryStore::new();
    let with_cookie = JwtRevocationLayer::builder(store.clone())
        .decoding_key(DecodingKey::from_secret(common::SECRET))
        .validation(Validation::new(Algorithm::HS256))
        .cookie("at")
        .dpop(DpopConfig::new(ORIGIN))
        .build()
        .unwrap();
    let token = bound_token("cookie", ES256);
    let (status, headers, _) = send(
        &with_cookie,
        Request::get("/me").header("cookie", format!("at={token}")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge(&headers).contains("DPoP-bound token presented as a bearer token"));
    // A layer without DPoP does not read the DPoP scheme: no token, a bare challenge.
    let without = layer_with(&store, None);
    let (status, headers, _) = send(&without, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&headers), r#"Bearer realm="api""#);
}

#[tokio::test]
async fn tokens_bound_another_way_are_refused_unless_a_proxy_checks_them() {
    let mut claims = common::claims("mtls", "alice");
    claims["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"});
    let token = mint(claims);
    let bearer = || Request::get("/me").header(AUTHORIZATION, format!("Bearer {token}"));
    for layer in [
        layer_with(&MemoryStore::new(), None),
        layer(DpopConfig::new(ORIGIN)),
    ] {
        let (status, headers, _) = send(&layer, bearer()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            challenge(&headers).contains("token bound by a confirmation method this resource cannot check")
        );
    }
    let behind_proxy = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(common::SECRET))
        .validation(Validation::new(Algorithm::HS256))
        .accept_unchecked_confirmation()
        .build()
        .unwrap();
    assert_eq!(send(&behind_proxy, bearer()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_tokens_proofs_take_no_room_in_the_replay_window() {
    let store = MemoryStore::new();
    let layer = layer_with(&store, Some(DpopConfig::new(ORIGIN).replay_capacity(16)));
    let revoked = bound_token("gone", ES256);
    store
        .revoke(&tower_jwt_revocation::Revocation::token(
            "gone",
            common::in_an_hour(),
        ))
        .await
        .unwrap();
    for _ in 0..40 {
        let (status, headers, _) =
            send(&layer, dpop_request(&revoked, &ES256.proof("GET", URL, &revoked))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(challenge(&headers).contains("token revoked"));
    }
    // The window's 16 slots are all free for a live token.
    let token = bound_token("live", ES256);
    for i in 0..16 {
        assert_eq!(
            send(&layer, dpop_request(&token, &ES256.proof("GET", URL, &token)))
                .await
                .0,
            StatusCode::OK,
            "proof {i}"
        );
    }
}

#[tokio::test]
async fn proofs_are_recorded_on_the_slow_path_and_under_the_open_policy_but_not_for_a_403() {
    use common::{FailingBackend, SlowPath};
    use tower_jwt_revocation::FailurePolicy;
    fn on<B: tower_jwt_revocation::RevocationBackend>(
        backend: B,
    ) -> tower_jwt_revocation::JwtRevocationBuilder<B> {
        JwtRevocationLayer::builder(backend)
            .decoding_key(DecodingKey::from_secret(common::SECRET))
            .validation(Validation::new(Algorithm::HS256))
            .dpop(DpopConfig::new(ORIGIN).replay_capacity(16))
    }
    let token = bound_token("paths", ES256);
    // The slow path (a backend that never answers from memory): a replay is refused there too.
    let slow = on(SlowPath::new(MemoryStore::new())).build().unwrap();
    let open = on(FailingBackend { slow: true })
        .failure_policy(FailurePolicy::Open)
        .build()
        .unwrap();
    let proof = ES256.proof("GET", URL, &token);
    for (name, status) in [
        ("slow", send(&slow, dpop_request(&token, &proof)).await.0),
        ("open", send(&open, dpop_request(&token, &proof)).await.0),
    ] {
        assert_eq!(status, StatusCode::OK, "{name}");
    }
    for (name, (status, headers, _)) in [
        ("slow", send(&slow, dpop_request(&token, &proof)).await),
        ("open", send(&open, dpop_request(&token, &proof)).await),
    ] {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(
            challenge(&headers).contains("DPoP proof replayed"),
            "{name}: {headers:?}"
        );
    }
    assert_eq!(open.metrics().fail_open_passes, 1);
    assert_eq!(slow.metrics().authorized, 1);

    // A token refused for its scope takes no room: 40 refusals, then 16 admitted proofs fill
    // the 16 slots.
    let scoped = on(MemoryStore::new()).require_scopes(["admin"]).build().unwrap();
    for _ in 0..40 {
        let (status, _, _) = send(&scoped, dpop_request(&token, &ES256.proof("GET", URL, &token))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let mut claims = common::claims("admin", "root");
    claims["cnf"] = json!({"jkt": ES256.jkt()});
    claims["scope"] = json!("admin");
    let admin = mint(claims);
    for i in 0..16 {
        let (status, _, _) = send(&scoped, dpop_request(&admin, &ES256.proof("GET", URL, &admin))).await;
        assert_eq!(status, StatusCode::OK, "proof {i}");
    }
}
