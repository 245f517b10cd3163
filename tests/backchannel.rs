//! OpenID Connect Back-Channel Logout against a local provider (discovery and JWKS on loopback,
//! keys from `tests/keys/jwk/`): every validation rule with its own failing token, logouts by
//! `sid` and by `sub` enforced on another instance, a replay, and a store outage.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::cluster::{allow_connections, instance, maintenance, terminate};
use common::provider::{Key, Provider, sign};
use common::*;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower_jwt_revocation::receiver::BackChannelLogout;
use tower_jwt_revocation::receiver::backchannel::BACKCHANNEL_LOGOUT_EVENT;
use tower_jwt_revocation::{
    CacheMode, FailurePolicy, MemoryStore, PgStore, RevocationBackend, RevocationStore, RevokedBy,
    TokenFacts, Verdict,
};

const CLIENT: &str = "rp-client";

async fn provider() -> Provider {
    Provider::start(vec![Key::P256.jwk(Some("k1"), Some("ES256"))]).await
}

/// The BackChannelLogout for `provider`'s tokens addressed to `CLIENT`, acting on `store`.
async fn endpoint_for<S: tower_jwt_revocation::RevocationBackend>(
    provider: &Provider,
    store: S,
) -> BackChannelLogout<S> {
    BackChannelLogout::builder(store, provider.issuer(), provider.discovered_keys().await, CLIENT)
        .build()
        .unwrap()
}

/// Valid logout-token claims from `provider` for `sub` and `sid` (either may be `None`).
fn logout_claims(provider: &Provider, jti: &str, sub: Option<&str>, sid: Option<&str>) -> Value {
    let mut claims = json!({
        "iss": provider.issuer(), "aud": CLIENT, "jti": jti,
        "iat": now(), "exp": now() + 120,
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    claims
}

/// Signed by the provider's key, typed `logout+jwt`.
fn logout_token(claims: &Value) -> String {
    typed(claims, Some("logout+jwt"))
}

fn typed(claims: &Value, typ: Option<&str>) -> String {
    tower_jwt_revocation::decode::install_crypto_provider();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.typ = typ.map(str::to_owned);
    encode(&header, claims, &Key::P256.encoding_key()).unwrap()
}

fn form(body: &str) -> Request<Body> {
    Request::post("/backchannel-logout")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn post<S>(
    endpoint: &BackChannelLogout<S>,
    request: Request<Body>,
) -> (StatusCode, Value, http::HeaderMap)
where
    S: RevocationStore + RevocationBackend,
{
    let response = endpoint.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, json, parts.headers)
}

async fn send<S>(endpoint: &BackChannelLogout<S>, token: &str) -> (StatusCode, Value)
where
    S: RevocationStore + RevocationBackend,
{
    let (status, json, headers) = post(endpoint, form(&format!("logout_token={token}"))).await;
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    (status, json)
}

#[tokio::test]
async fn each_validation_rule_refuses_its_own_token() {
    let provider = provider().await;
    let store = MemoryStore::new();
    let endpoint = endpoint_for(&provider, store.clone()).await;
    let good = logout_claims(&provider, "good", Some("alice"), Some("s-alice"));
    let without = |name: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(name);
        claims
    };
    let with = |name: &str, value: Value| {
        let mut claims = good.clone();
        claims[name] = value;
        claims
    };
    let unsigned = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "logout+jwt"})),
            b64(good.clone())
        )
    };
    let hmac = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        encode(&header, &good, &EncodingKey::from_secret(b"a shared secret")).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "a foreign key",
            sign(Key::P384, Algorithm::ES384, Some("k1"), &good),
        ),
        ("alg none", unsigned),
        ("a symmetric algorithm", hmac),
        (
            "another issuer",
            logout_token(&with("iss", json!("https://evil.example"))),
        ),
        (
            "another audience",
            logout_token(&with("aud", json!("someone-else"))),
        ),
        ("no iat", logout_token(&without("iat"))),
        ("no exp", logout_token(&without("exp"))),
        ("expired", logout_token(&with("exp", json!(now() - 3600)))),
        (
            "issued in the future",
            logout_token(&with("iat", json!(now() + 3600))),
        ),
        ("no jti", logout_token(&without("jti"))),
        ("no events", logout_token(&without("events"))),
        (
            "another event",
            logout_token(&with("events", json!({"urn:other": {}}))),
        ),
        (
            "an event that is not an object",
            logout_token(&with("events", json!({BACKCHANNEL_LOGOUT_EVENT: "yes"}))),
        ),
        (
            "neither sub nor sid",
            logout_token(
                &without("sub")
                    .as_object()
                    .map(|c| {
                        let mut c = c.clone();
                        c.remove("sid");
                        Value::Object(c)
                    })
                    .unwrap(),
            ),
        ),
        ("a nonce", logout_token(&with("nonce", json!("n-123")))),
        ("an empty jti", logout_token(&with("jti", json!("")))),
        ("a sid with a NUL", logout_token(&with("sid", json!("s\u{0}1")))),
        (
            "a sub over 1 KiB",
            logout_token(
                &without("sid")
                    .as_object()
                    .map(|c| {
                        let mut c = c.clone();
                        c.insert("sub".into(), json!("a".repeat(1025)));
                        Value::Object(c)
                    })
                    .unwrap(),
            ),
        ),
        ("another typ", typed(&good, Some("JWT"))),
        ("garbage", "not.a.jwt".into()),
    ];
    for (case, token) in cases {
        let (status, json) = send(&endpoint, &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
        assert_eq!(json["error"], "invalid_request", "{case}");
        assert!(
            json["error_description"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}"
        );
    }
    // Requests that are not a logout form at all.
    for (case, request) in [
        ("no logout_token", form("other=1")),
        ("two logout_tokens", form("logout_token=a&logout_token=b")),
        (
            "JSON instead of a form",
            Request::post("/")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        ),
        (
            "a body over 64 KiB",
            form(&format!("logout_token={}", "a".repeat(70_000))),
        ),
    ] {
        let (status, json, _) = post(&endpoint, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}");
        assert_eq!(json["error"], "invalid_request", "{case}");
    }
    let (status, _, headers) = post(&endpoint, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, &headers[header::ALLOW]),
        (StatusCode::METHOD_NOT_ALLOWED, &"POST".parse().unwrap())
    );
    assert!(store.is_empty(), "nothing was revoked by a refused request");

    // The same claims, valid: accepted, with or without a `typ` (unless one is required).
    assert_eq!(send(&endpoint, &logout_token(&good)).await.0, StatusCode::OK);
    let untyped = typed(&logout_claims(&provider, "untyped", Some("bob"), None), None);
    assert_eq!(send(&endpoint, &untyped).await.0, StatusCode::OK);
    let strict = BackChannelLogout::builder(
        store.clone(),
        provider.issuer(),
        provider.discovered_keys().await,
        CLIENT,
    )
    .require_typ(true)
    .build()
    .unwrap();
    let untyped = typed(&logout_claims(&provider, "untyped-2", Some("bob"), None), None);
    assert_eq!(send(&strict, &untyped).await.0, StatusCode::BAD_REQUEST);
}

/// A logout by `sid`, received by one instance, refuses that session's access tokens on
/// another within the propagation bound, while the user's other sessions keep working.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_logout_by_sid_ends_that_session_on_every_instance(pool: PgPool) {
    let provider = provider().await;
    let a = instance(&pool, "a", CacheMode::Lookup, FailurePolicy::Closed).await;
    let b = instance(&pool, "b", CacheMode::Mirror, FailurePolicy::Closed).await;
    let ended =
        mint(json!({"jti": "t1", "sub": "alice", "sid": "s-ended", "iat": now(), "exp": now() + 600}));
    let other =
        mint(json!({"jti": "t2", "sub": "alice", "sid": "s-other", "iat": now(), "exp": now() + 600}));
    assert_eq!(b.status(&ended).await, StatusCode::OK);
    let endpoint = endpoint_for(&provider, a.cache.clone()).await;
    let token = logout_token(&logout_claims(&provider, "lo-1", Some("alice"), Some("s-ended")));
    assert_eq!(send(&endpoint, &token).await.0, StatusCode::OK);
    b.becomes(&ended, StatusCode::UNAUTHORIZED).await;
    assert_eq!(a.status(&ended).await, StatusCode::UNAUTHORIZED);
    assert_eq!(b.status(&other).await, StatusCode::OK);
}

/// A logout by `sub` alone ends every token of that user issued up to the logout token's
/// `iat`, and no other user's; a token issued after it works.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_logout_by_sub_ends_every_earlier_token_of_that_user_only(pool: PgPool) {
    let provider = provider().await;
    let a = instance(&pool, "a", CacheMode::Lookup, FailurePolicy::Closed).await;
    let b = instance(&pool, "b", CacheMode::Lookup, FailurePolicy::Closed).await;
    let access = |jti: &str, sub: &str, iat: u64| {
        mint(json!({"jti": jti, "sub": sub, "iat": iat, "exp": now() + 600}))
    };
    let earlier = access("e1", "carol", now() - 5);
    let bystander = access("b1", "dave", now() - 5);
    let endpoint = endpoint_for(&provider, a.cache.clone()).await;
    let mut claims = logout_claims(&provider, "lo-sub", Some("carol"), None);
    claims["iat"] = json!(now() - 2);
    assert_eq!(send(&endpoint, &logout_token(&claims)).await.0, StatusCode::OK);
    b.becomes(&earlier, StatusCode::UNAUTHORIZED).await;
    assert_eq!(b.status(&bystander).await, StatusCode::OK);
    assert_eq!(b.status(&access("later", "carol", now())).await, StatusCode::OK);
}

/// A replayed logout token is answered 200 and changes nothing: the ledger's last change is
/// the same before and after.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_replay_is_answered_without_acting_again(pool: PgPool) {
    let provider = provider().await;
    let store = PgStore::new(pool.clone());
    let endpoint = endpoint_for(&provider, store.clone()).await;
    let token = logout_token(&logout_claims(&provider, "lo-replayed", Some("erin"), None));
    assert_eq!(send(&endpoint, &token).await.0, StatusCode::OK);
    let last_change = || async {
        sqlx::query_scalar::<_, i64>("SELECT max(seq) FROM jwt_revocation_log")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = last_change().await;
    // The logout token's jti is recorded (under its own key space: the kind of message and the
    // issuer), so the replay is recognised.
    let guards: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jwt_revocations WHERE jti LIKE '%lo-replayed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(guards, 1);
    assert_eq!(send(&endpoint, &token).await.0, StatusCode::OK);
    assert_eq!(last_change().await, before);
}

/// While the store cannot record the logout the answer is 503 (the provider retries, never a
/// 200 for a revocation that is not durable); the retry once it is back succeeds.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_store_outage_is_503_and_the_retry_succeeds(pool: PgPool) {
    let provider = provider().await;
    let store = PgStore::new(pool.clone()).with_timeout(Duration::from_millis(500));
    let endpoint = endpoint_for(&provider, store.clone()).await;
    let token = logout_token(&logout_claims(
        &provider,
        "lo-retried",
        Some("frank"),
        Some("s-frank"),
    ));
    let (mut admin, db) = maintenance(&pool).await;
    allow_connections(&mut admin, &db, false).await;
    terminate(&mut admin, &db, None).await;
    let response = endpoint
        .clone()
        .oneshot(form(&format!("logout_token={token}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    allow_connections(&mut admin, &db, true).await;
    wait_until("the retry succeeds", || async {
        send(&endpoint, &token).await.0 == StatusCode::OK
    })
    .await;
    let facts = TokenFacts {
        session_id: Some("s-frank"),
        ..TokenFacts::default()
    };
    assert_eq!(
        store.check(&facts).await.unwrap(),
        Verdict::Revoked(RevokedBy::Session)
    );
}

/// A replay writes nothing (counted: the ledger's writes are idempotent anyway); a logout
/// token's `jti` equal to a revoked access token's is not a replay, and its guard revokes no
/// access token of that `jti`.
#[tokio::test]
async fn a_replay_writes_nothing_and_guards_never_meet_access_tokens() {
    let provider = provider().await;
    let store = CountingStore::default();
    let endpoint = endpoint_for(&provider, store.clone()).await;
    let once = logout_token(&logout_claims(&provider, "once", Some("uma"), Some("s-uma")));
    assert_eq!(send(&endpoint, &once).await.0, StatusCode::OK);
    assert_eq!(store.revokes(), 2, "the session and the guard");
    assert_eq!(send(&endpoint, &once).await.0, StatusCode::OK);
    assert_eq!(store.revokes(), 2, "a replay acts on nothing");

    store
        .revoke(&tower_jwt_revocation::Revocation::token(
            "shared-jti",
            in_an_hour(),
        ))
        .await
        .unwrap();
    let shared = logout_token(&logout_claims(
        &provider,
        "shared-jti",
        Some("vic"),
        Some("s-vic"),
    ));
    assert_eq!(send(&endpoint, &shared).await.0, StatusCode::OK);
    let session = TokenFacts {
        session_id: Some("s-vic"),
        ..TokenFacts::default()
    };
    assert_eq!(
        store.check(&session).await.unwrap(),
        Verdict::Revoked(RevokedBy::Session)
    );
    let guarded = TokenFacts {
        jti: Some("once"),
        ..TokenFacts::default()
    };
    assert_eq!(
        store.check(&guarded).await.unwrap(),
        Verdict::Active,
        "a guard is no access-token revocation"
    );
}
