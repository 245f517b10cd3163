//! The demo server's routes over HTTP semantics, driven through its real router.

#[allow(dead_code)]
#[path = "../examples/server.rs"]
mod server;

mod common;

use axum::Router;
use axum::body::{Body, to_bytes};
use common::{mint_with, now};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_jwt_revocation::MemoryStore;
use tower_jwt_revocation::jsonwebtoken::Header;
use tower_jwt_revocation::session::{MemorySessions, PgSessions, SessionConfig};

const SECRET: &[u8] = b"demo-test-secret-demo-test-secret";

fn demo() -> Router {
    let config = server::Config {
        secret: SECRET.to_vec(),
        admin_subjects: vec!["root".into()],
        failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
        metrics: None,
        provider: None,
        audience: None,
        baseline_with_provider: false,
        receivers: None,
        resource: None,
    };
    server::in_memory_app(config)
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            req = req.header(CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, headers, json)
}

/// An environment of these variables only, for the demo's `*_from_vars` readers.
fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> + Copy {
    move |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

async fn login(app: &Router, sub: &str) -> String {
    let (status, headers, body) = call(app, "POST", "/login", None, Some(json!({"sub": sub}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    body["access_token"].as_str().unwrap().to_owned()
}

/// The tower-http edge (`examples/support/edge.rs`): every answer carries an `x-request-id`
/// (the client's own when it sent one), and the request's span and log line name the path but
/// never the bearer token or a cookie.
#[tokio::test]
async fn requests_are_traced_with_an_id_and_without_their_credentials() {
    let (_guard, logs) = common::capture_logs();
    let app = demo();
    let token = login(&app, "traced").await;
    let (status, headers, _) = call(&app, "GET", "/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let generated = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let request = Request::builder()
        .uri("/me")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header("cookie", "session=cookie-secret")
        .header("x-request-id", "client-chosen-id")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id");
    let text = logs.text();
    assert!(
        text.contains("/me") && text.contains("client-chosen-id"),
        "{text}"
    );
    assert!(
        text.contains(&generated),
        "the id the edge generated is in the trace too: {text}"
    );
    assert!(
        text.contains("Sensitive"),
        "credential headers are shown redacted: {text}"
    );
    assert!(!text.contains(&token), "the bearer token was logged");
    assert!(!text.contains("cookie-secret"), "the cookie was logged");
}

#[tokio::test]
async fn healthz_needs_no_token() {
    assert_eq!(
        call(&demo(), "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn readyz_needs_no_token_and_is_ready_with_fixed_keys_in_memory() {
    let (status, _, _) = call(&demo(), "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn login_me_logout_round_trip() {
    let app = demo();
    let token = login(&app, "alice").await;
    let (status, _, me) = call(&app, "GET", "/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["sub"], "alice");
    assert!(me["jti"].is_string() && me["iat"].is_u64() && me["exp"].is_u64());

    assert_eq!(
        call(&app, "POST", "/logout", Some(&token), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, headers, body) = call(&app, "GET", "/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[WWW_AUTHENTICATE],
        r#"Bearer realm="demo", error="invalid_token", error_description="token revoked""#
    );
    assert_eq!(
        body,
        json!({"error": "invalid_token", "error_description": "token revoked"})
    );

    let (status, _, list) = call(
        &app,
        "GET",
        "/revocations",
        Some(&login(&app, "alice").await),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    // The token itself, and (logout ends the session too) its session.
    assert!(
        list.iter()
            .any(|r| r["kind"] == "token" && r["key"] == me["jti"] && r["reason"] == "logout")
    );
    assert!(list.iter().any(|r| r["kind"] == "session"));
}

#[tokio::test]
async fn logout_all_revokes_every_earlier_token_of_the_caller_only() {
    let app = demo();
    let first = login(&app, "bob").await;
    let second = login(&app, "bob").await;
    let other = login(&app, "carol").await;
    assert_eq!(
        call(&app, "POST", "/logout-all", Some(&second), None).await.0,
        StatusCode::NO_CONTENT
    );
    for token in [&first, &second] {
        assert_eq!(
            call(&app, "GET", "/me", Some(token), None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        call(&app, "GET", "/me", Some(&other), None).await.0,
        StatusCode::OK
    );
    // A token issued after the cutoff's second (minted here with a later iat) is accepted.
    let later = mint_with(
        Header::default(),
        json!({"jti": "later", "sub": "bob", "iat": now() + 1, "exp": now() + 600}),
        SECRET,
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&later), None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn admin_route_needs_an_admin_claim() {
    let app = demo();
    let victim = login(&app, "dave").await;
    let (_, _, me) = call(&app, "GET", "/me", Some(&victim), None).await;
    let path = format!("/admin/tokens/{}", me["jti"].as_str().unwrap());

    let plain = login(&app, "eve").await;
    assert_eq!(
        call(&app, "DELETE", &path, Some(&plain), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&victim), None).await.0,
        StatusCode::OK
    );

    let admin = login(&app, "root").await;
    assert_eq!(
        call(&app, "DELETE", &path, Some(&admin), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&victim), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tokens_from_another_issuer_with_the_secret_work_like_logins() {
    let app = demo();
    let foreign = mint_with(
        Header::default(),
        json!({"jti": "ext-1", "sub": "frank", "iat": now(), "exp": now() + 300, "admin": true}),
        SECRET,
    );
    let (status, _, me) = call(&app, "GET", "/me", Some(&foreign), None).await;
    assert_eq!((status, me["sub"].as_str()), (StatusCode::OK, Some("frank")));
    assert_eq!(
        call(&app, "DELETE", "/admin/tokens/someone", Some(&foreign), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    // A token living longer than the server's maximum lifetime is refused.
    let too_long = mint_with(
        Header::default(),
        json!({"jti": "ext-2", "sub": "frank", "exp": now() + 86_400}),
        SECRET,
    );
    let (status, _, body) = call(&app, "GET", "/me", Some(&too_long), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_description"], "token lifetime too long");
}

#[tokio::test]
async fn bad_input_gets_4xx_never_5xx() {
    let app = demo();
    let (status, _, body) = call(&app, "GET", "/me", None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert_eq!(
        call(&app, "POST", "/login", None, Some(json!({"user": "x"})))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        call(&app, "POST", "/login", None, Some(json!({"sub": ""})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(&app, "GET", "/me", Some("not a token"), None).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn with_postgres_a_logout_survives_a_server_restart(pool: sqlx::PgPool) {
    use tower_jwt_revocation::{MokaCache, PgStore};
    let config = || server::Config {
        secret: SECRET.to_vec(),
        admin_subjects: vec![],
        failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
        metrics: None,
        provider: None,
        audience: None,
        baseline_with_provider: false,
        receivers: None,
        resource: None,
    };
    let fresh_pool = || async {
        sqlx::postgres::PgPoolOptions::new()
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap()
    };

    // The first run uses the cache tier, as the demo does by default with DATABASE_URL.
    let first_pool = fresh_pool().await;
    let cache = MokaCache::builder(PgStore::new(first_pool.clone()))
        .start()
        .unwrap();
    let sessions = PgSessions::new(first_pool, cache.clone(), SessionConfig::default());
    let first = server::app(cache, sessions, config());
    let token = login(&first, "olga").await;
    assert_eq!(
        call(&first, "GET", "/me", Some(&token), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&first, "POST", "/logout", Some(&token), None).await.0,
        StatusCode::NO_CONTENT
    );
    drop(first);

    let second_pool = fresh_pool().await;
    let store = PgStore::new(second_pool.clone());
    let restarted = server::app(
        store.clone(),
        PgSessions::new(second_pool, store, SessionConfig::default()),
        config(),
    );
    let (status, _, body) = call(&restarted, "GET", "/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_description"], "token revoked");
    let (_, _, list) = call(
        &restarted,
        "GET",
        "/revocations",
        Some(&login(&restarted, "olga").await),
        None,
    )
    .await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "token" && r["reason"] == "logout")
    );
}

#[tokio::test]
async fn baseline_route_verifies_tokens_but_checks_no_revocation() {
    let app = demo();
    let token = login(&app, "pat").await;
    let (status, _, me) = call(&app, "GET", "/baseline/me", Some(&token), None).await;
    assert_eq!((status, me["sub"].as_str()), (StatusCode::OK, Some("pat")));
    assert_eq!(
        call(&app, "GET", "/baseline/me", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/baseline/me", Some("abc.def.ghi"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // It is a baseline: a logout is not enforced there, while /me enforces it.
    assert_eq!(
        call(&app, "POST", "/logout", Some(&token), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/baseline/me", Some(&token), None).await.0,
        StatusCode::OK
    );
    // Nor does it take a DPoP-bound token without its proof.
    let bound = mint_with(
        Header::default(),
        json!({"jti": "b", "sub": "pat", "exp": now() + 60, "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
        SECRET,
    );
    assert_eq!(
        call(&app, "GET", "/baseline/me", Some(&bound), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn post_refresh(app: &Router, refresh_token: &str) -> (StatusCode, http::HeaderMap, Value) {
    call(
        app,
        "POST",
        "/refresh",
        None,
        Some(json!({ "refresh_token": refresh_token })),
    )
    .await
}

async fn login_pair(app: &Router, sub: &str) -> (String, String, String) {
    let (status, _, body) = call(app, "POST", "/login", None, Some(json!({"sub": sub}))).await;
    assert_eq!(status, StatusCode::OK);
    let get = |k: &str| body[k].as_str().unwrap().to_owned();
    (get("access_token"), get("refresh_token"), get("session_id"))
}

#[tokio::test]
async fn refresh_rotates_and_a_replayed_refresh_token_ends_the_session() {
    let app = demo();
    let (access, refresh, sid) = login_pair(&app, "kim").await;
    let (status, headers, body) = post_refresh(&app, &refresh).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    assert_eq!(body["session_id"], sid.as_str());
    let (new_access, new_refresh) = (
        body["access_token"].as_str().unwrap(),
        body["refresh_token"].as_str().unwrap(),
    );
    assert_ne!(new_refresh, refresh);
    assert_eq!(
        call(&app, "GET", "/me", Some(new_access), None).await.0,
        StatusCode::OK
    );

    // Replaying the old refresh token is reuse: 401, and the whole session is gone.
    let (status, _, reused) = post_refresh(&app, &refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, after) = post_refresh(&app, new_refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, _, unknown) = post_refresh(&app, "made-up").await;
    assert_eq!(reused, unknown, "reused and unknown tokens get the same body");
    assert_eq!(after, unknown);
    for token in [access.as_str(), new_access] {
        assert_eq!(
            call(&app, "GET", "/me", Some(token), None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn sessions_can_be_listed_and_ended_by_their_owner_only() {
    let app = demo();
    let (first, _, first_sid) = login_pair(&app, "lee").await;
    let (second, second_refresh, second_sid) = login_pair(&app, "lee").await;
    let (mallory, _, _) = login_pair(&app, "mallory").await;

    let (status, _, list) = call(&app, "GET", "/sessions", Some(&first), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["session_id"] == first_sid.as_str() && s["current"] == true)
    );
    assert!(
        !list.to_string().contains("refresh"),
        "no token material in the listing"
    );

    let path = format!("/sessions/{second_sid}");
    assert_eq!(
        call(&app, "DELETE", &path, Some(&mallory), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&second), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "DELETE", &path, Some(&first), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&second), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_refresh(&app, &second_refresh).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&first), None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn logout_ends_the_session_and_its_refresh_token() {
    let app = demo();
    let (access, refresh, _) = login_pair(&app, "max").await;
    assert_eq!(
        call(&app, "POST", "/logout", Some(&access), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, _, body) = post_refresh(&app, &refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let app = metrics::with_local_recorder(&recorder, || {
        let store = MemoryStore::new();
        server::app(
            store.clone(),
            MemorySessions::new(store, SessionConfig::default()),
            server::Config {
                secret: SECRET.to_vec(),
                admin_subjects: Vec::new(),
                failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
                metrics: Some(handle),
                provider: None,
                audience: None,
                baseline_with_provider: false,
                receivers: None,
                resource: None,
            },
        )
    });
    let token = login(&app, "vic").await;
    assert_eq!(
        call(&app, "GET", "/me", Some(&token), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/me", Some("not-a-jwt"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/me", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );

    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/plain; version=0.0.4");
    let text = String::from_utf8(to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    for line in [
        r#"jwt_revocation_requests_total{outcome="authorized"} 1"#,
        r#"jwt_revocation_requests_total{outcome="invalid_token"} 1"#,
        r#"jwt_revocation_requests_total{outcome="missing_token"} 1"#,
        "# HELP jwt_revocation_requests_total",
    ] {
        assert!(
            text.lines().any(|l| l == line || l.starts_with(line)),
            "{line} in\n{text}"
        );
    }
}

/// The demo verifying a provider's tokens: `OIDC_ISSUER` mode, driven through its router.
mod provider_mode {
    use super::*;
    use crate::common::provider::{Key, Provider, sign};
    use tower_jwt_revocation::jsonwebtoken::Algorithm;

    async fn demo_for(provider: &Provider, audience: Option<&str>) -> Router {
        demo_with_baseline(provider, audience, false).await
    }

    async fn demo_with_baseline(provider: &Provider, audience: Option<&str>, baseline: bool) -> Router {
        demo_with(provider, audience, baseline, None).await
    }

    async fn demo_with(
        provider: &Provider,
        audience: Option<&str>,
        baseline: bool,
        client_id: Option<&str>,
    ) -> Router {
        let vars = |name: &str| match name {
            "OIDC_ISSUER" => Some(provider.issuer()),
            "OIDC_CLIENT_ID" => client_id.map(str::to_owned),
            "JWKS_ALLOW_HTTP" => Some("1".to_owned()),
            "JWKS_MIN_REFRESH_SECS" => Some("1".to_owned()),
            _ => None,
        };
        let jwks = server::provider_from_vars(vars).unwrap().unwrap();
        let config = server::Config {
            secret: SECRET.to_vec(),
            admin_subjects: vec!["root".into()],
            failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
            metrics: None,
            provider: Some(jwks),
            audience: audience.map(str::to_owned),
            baseline_with_provider: baseline,
            receivers: server::receivers_from_vars(vars),
            resource: server::resource_from_vars(vars).unwrap(),
        };
        server::in_memory_app(config)
    }

    fn token(provider: &Provider, jti: &str, extra: Value) -> String {
        let mut claims = provider.claims(jti, "pat");
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign(Key::RsaA, Algorithm::RS256, Some("a"), &claims)
    }

    #[tokio::test]
    async fn provider_tokens_are_verified_and_login_is_gone() {
        let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
        let app = demo_for(&provider, Some("demo-api")).await;
        let good = token(&provider, "p1", json!({"aud": "demo-api"}));
        let (status, _, body) = call(&app, "GET", "/me", Some(&good), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["sub"], "pat");
        let other_aud = token(&provider, "p2", json!({"aud": "another-api"}));
        assert_eq!(
            call(&app, "GET", "/me", Some(&other_aud), None).await.0,
            StatusCode::UNAUTHORIZED
        );
        // An HS256 token with the demo secret is not a provider token.
        let hs = mint_with(
            Header::default(),
            json!({"jti": "h", "sub": "pat", "aud": "demo-api", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&hs), None).await.0,
            StatusCode::UNAUTHORIZED
        );
        for path in ["/login", "/refresh"] {
            let (status, _, _) = call(&app, "POST", path, None, Some(json!({"sub": "pat"}))).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(call(&app, "GET", "/healthz", None, None).await.0, StatusCode::OK);
        // A provider token without `jti` is accepted, and its logout revokes it all the same.
        let mut claims = provider.claims("unused", "pat");
        claims.as_object_mut().unwrap().remove("jti");
        claims["aud"] = json!("demo-api");
        let no_jti = sign(Key::RsaA, Algorithm::RS256, Some("a"), &claims);
        assert_eq!(
            call(&app, "GET", "/me", Some(&no_jti), None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "POST", "/logout", Some(&no_jti), None).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&no_jti), None).await.0,
            StatusCode::UNAUTHORIZED
        );
        // Logging out revokes the provider's token here.
        assert_eq!(
            call(&app, "POST", "/logout", Some(&good), None).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&good), None).await.0,
            StatusCode::UNAUTHORIZED
        );
        // No route without a revocation check, unless asked for (BASELINE_ROUTE=1): then it
        // verifies with the provider's keys and audience, and checks no revocation.
        assert_eq!(
            call(&app, "GET", "/baseline/me", Some(&good), None).await.0,
            StatusCode::NOT_FOUND
        );
        let app = demo_with_baseline(&provider, Some("demo-api"), true).await;
        // (The layer waits for the new app's first key set; the baseline does not.)
        assert_eq!(
            call(&app, "GET", "/me", Some(&good), None).await.0,
            StatusCode::OK
        );
        let (status, _, body) = call(&app, "GET", "/baseline/me", Some(&good), None).await;
        assert_eq!((status, body["sub"].as_str()), (StatusCode::OK, Some("pat")));
        for refused in [&other_aud, &hs] {
            assert_eq!(
                call(&app, "GET", "/baseline/me", Some(refused), None).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
    }

    #[tokio::test]
    async fn admin_routes_need_the_admin_scope() {
        let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
        let app = demo_for(&provider, None).await;
        let victim = token(&provider, "victim", json!({}));
        // Without JWT_AUDIENCE any audience of the issuer is accepted.
        let user = token(
            &provider,
            "u",
            json!({"scope": "read", "aud": "x", "admin": true}),
        );
        let admin = token(&provider, "adm", json!({"scope": "read revocations:admin"}));
        let (status, headers, _) = call(&app, "DELETE", "/admin/tokens/victim", Some(&user), None).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the admin claim counts in HS256 mode only"
        );
        assert!(
            headers[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains(r#"realm="demo", error="insufficient_scope""#)
        );
        assert_eq!(
            call(&app, "GET", "/admin/keys", Some(&user), None).await.0,
            StatusCode::FORBIDDEN
        );
        let (status, _, keys) = call(&app, "GET", "/admin/keys", Some(&admin), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(keys["mode"], "jwks");
        assert_eq!(keys["keys"], 1);
        assert_eq!(
            call(&app, "DELETE", "/admin/tokens/victim", Some(&admin), None)
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&victim), None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn in_hs256_mode_the_scope_or_the_admin_claim_opens_admin_routes() {
        let app = demo();
        let scoped = mint_with(
            Header::default(),
            json!({"jti": "s", "sub": "ops", "exp": now() + 60, "scope": "revocations:admin"}),
            SECRET,
        );
        assert_eq!(
            call(&app, "DELETE", "/admin/tokens/x", Some(&scoped), None)
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let (status, _, body) = call(&app, "GET", "/admin/keys", Some(&scoped), None).await;
        assert_eq!((status, body["mode"].as_str()), (StatusCode::OK, Some("hs256")));
        let plain = login(&app, "nobody").await;
        let (status, headers, _) = call(&app, "DELETE", "/admin/tokens/x", Some(&plain), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(
            headers[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("revocations:admin")
        );
    }

    /// With `OIDC_CLIENT_ID`, the provider's logout tokens and security events reach the store
    /// without a bearer token, and end the access tokens they name; without it the routes do
    /// not exist.
    #[tokio::test]
    async fn the_providers_logouts_and_security_events_end_access_tokens() {
        let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
        let app = demo_with(&provider, None, false, Some("demo-client")).await;
        let post = |path: &'static str, media: &'static str, body: String| {
            let app = app.clone();
            async move {
                let request = Request::post(path)
                    .header(CONTENT_TYPE, media)
                    .body(Body::from(body))
                    .unwrap();
                app.oneshot(request).await.unwrap().status()
            }
        };
        let access = token(&provider, "acc-1", json!({"sid": "s-1"}));
        let other = token(&provider, "acc-2", json!({"sid": "s-2", "sub": "quinn"}));
        assert_eq!(
            call(&app, "GET", "/me", Some(&access), None).await.0,
            StatusCode::OK
        );

        let mut logout = provider.claims("logout-1", "pat");
        logout["aud"] = json!("demo-client");
        logout["sid"] = json!("s-1");
        logout["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
        let signed = |claims: &Value, typ: &str| {
            let mut header = tower_jwt_revocation::jsonwebtoken::Header::new(Algorithm::RS256);
            header.kid = Some("a".into());
            header.typ = Some(typ.into());
            tower_jwt_revocation::jsonwebtoken::encode(&header, claims, &Key::RsaA.encoding_key()).unwrap()
        };
        let logout = signed(&logout, "logout+jwt");
        let form = format!("logout_token={logout}");
        assert_eq!(
            post("/backchannel-logout", "application/x-www-form-urlencoded", form).await,
            StatusCode::OK
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&access), None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&other), None).await.0,
            StatusCode::OK
        );

        let mut set = provider.claims("set-1", "ignored");
        set.as_object_mut().unwrap().remove("sub");
        set["aud"] = json!("demo-client");
        set["sub_id"] = json!({"format": "iss_sub", "iss": provider.issuer(), "sub": "quinn"});
        set["events"] = json!({
            "https://schemas.openid.net/secevent/caep/event-type/credential-change": {
                "credential_type": "password", "change_type": "update"
            }
        });
        let set = signed(&set, "secevent+jwt");
        assert_eq!(
            post("/ssf/events", "application/secevent+jwt", set).await,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            call(&app, "GET", "/me", Some(&other), None).await.0,
            StatusCode::UNAUTHORIZED
        );

        let without = demo_with(&provider, None, false, None).await;
        let (status, _, _) = call(&without, "POST", "/backchannel-logout", None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_is_503_until_the_providers_keys_arrive() {
        let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
        provider.stop().await;
        let app = demo_for(&provider, None).await;
        let (status, headers, _) = call(&app, "GET", "/readyz", None, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key(http::header::RETRY_AFTER));
        // The first fetch (started when the key source was built, on another worker) is refused
        // by the stopped provider: still not ready after it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            call(&app, "GET", "/readyz", None, None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(&app, "GET", "/healthz", None, None).await.0,
            StatusCode::OK,
            "yet alive"
        );
        provider.restart().await;
        // The refresher retries at the minimum interval (1 s here).
        crate::common::wait_until_within("the keys arrive", std::time::Duration::from_secs(10), || async {
            call(&app, "GET", "/readyz", None, None).await.0 == StatusCode::OK
        })
        .await;
    }

    #[tokio::test]
    async fn provider_settings_are_checked() {
        assert!(server::provider_from_vars(vars(&[])).unwrap().is_none());
        for bad in [
            &[
                ("OIDC_ISSUER", "https://a.example"),
                ("JWKS_URL", "https://a.example/jwks"),
            ][..],
            &[("JWKS_URL", "http://127.0.0.1:1/jwks")],
            &[("JWKS_URL", "http://keys.example/jwks"), ("JWKS_ALLOW_HTTP", "1")],
            &[
                ("JWKS_URL", "https://a.example/jwks"),
                ("JWKS_MIN_REFRESH_SECS", "0"),
            ],
            &[
                ("JWKS_URL", "https://a.example/jwks"),
                ("JWKS_MIN_REFRESH_SECS", "soon"),
            ],
            &[("JWKS_URL", "https://a.example/jwks"), ("JWKS_ALLOW_HTTP", "yes")],
        ] {
            assert!(server::provider_from_vars(vars(bad)).is_err(), "{bad:?}");
        }
        let ok = server::provider_from_vars(vars(&[
            ("JWKS_URL", "http://127.0.0.1:1/jwks"),
            ("JWKS_ALLOW_HTTP", "1"),
            ("JWKS_MIN_REFRESH_SECS", "3600"),
        ]));
        assert!(matches!(ok, Ok(Some(_))));
    }

    /// `RESOURCE_URL` and `DPOP`: the demo takes DPoP-bound provider tokens and publishes its
    /// protected-resource metadata (on the main issue 27 started from, that path was 404 and a
    /// bound token sent as Bearer was 200).
    mod dpop {
        use super::*;
        use crate::common::dpop::{ES256, RS256};

        const RESOURCE: &str = "http://127.0.0.1:3000";

        async fn demo_dpop(provider: &Provider, policy: &str) -> Router {
            let vars = |name: &str| match name {
                "OIDC_ISSUER" => Some(provider.issuer()),
                "JWKS_ALLOW_HTTP" => Some("1".to_owned()),
                "RESOURCE_URL" => Some(RESOURCE.to_owned()),
                "DPOP" => Some(policy.to_owned()),
                _ => None,
            };
            let config = server::Config {
                secret: SECRET.to_vec(),
                admin_subjects: vec![],
                failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
                metrics: None,
                provider: server::provider_from_vars(vars).unwrap(),
                audience: Some("demo-api".into()),
                baseline_with_provider: false,
                receivers: None,
                resource: server::resource_from_vars(vars).unwrap(),
            };
            server::in_memory_app(config)
        }

        async fn send(
            app: &Router,
            method: &str,
            path: &str,
            authorization: Option<String>,
            proof: Option<String>,
        ) -> (StatusCode, http::HeaderMap, Value) {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(authorization) = authorization {
                req = req.header(AUTHORIZATION, authorization);
            }
            if let Some(proof) = proof {
                req = req.header("DPoP", proof);
            }
            let res = app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let (status, headers) = (res.status(), res.headers().clone());
            let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
            (
                status,
                headers,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }

        fn bound(provider: &Provider, jti: &str, jkt: &str) -> String {
            token(provider, jti, json!({"aud": "demo-api", "cnf": {"jkt": jkt}}))
        }

        #[tokio::test]
        async fn the_metadata_is_served_and_named_by_every_401() {
            let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
            let app = demo_dpop(&provider, "required").await;
            let (status, headers, body) =
                send(&app, "GET", "/.well-known/oauth-protected-resource", None, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(body["resource"], RESOURCE);
            assert_eq!(body["authorization_servers"], json!([provider.issuer()]));
            assert_eq!(body["scopes_supported"], json!(["revocations:admin"]));
            assert_eq!(body["bearer_methods_supported"], json!(["header"]));
            assert_eq!(body["dpop_bound_access_tokens_required"], true);
            assert_eq!(body["dpop_signing_alg_values_supported"][0], "ES256");
            // No token: the DPoP challenge alone under `required`, naming the metadata.
            let (status, headers, _) = send(&app, "GET", "/me", None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let challenge = headers[WWW_AUTHENTICATE].to_str().unwrap();
            assert!(
                challenge.starts_with("DPoP realm=\"demo\", algs=\"ES256"),
                "{challenge}"
            );
            assert!(
                challenge.contains(
                    r#"resource_metadata="http://127.0.0.1:3000/.well-known/oauth-protected-resource""#
                ),
                "{challenge}"
            );
            // Without RESOURCE_URL there is no such document.
            let plain = demo_for(&provider, Some("demo-api")).await;
            assert_eq!(
                call(&plain, "GET", "/.well-known/oauth-protected-resource", None, None)
                    .await
                    .0,
                StatusCode::NOT_FOUND
            );
        }

        #[tokio::test]
        async fn bound_tokens_need_their_proof_and_logout_ends_them() {
            let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
            let app = demo_dpop(&provider, "allowed").await;
            let token = bound(&provider, "d1", &ES256.jkt());
            let url = format!("{RESOURCE}/me");
            let dpop = |proof: String| (Some(format!("DPoP {token}")), Some(proof));
            let (authorization, proof) = dpop(ES256.proof("GET", &url, &token));
            let (status, _, body) = send(&app, "GET", "/me", authorization, proof).await;
            assert_eq!(
                (status, body["sub"].as_str()),
                (StatusCode::OK, Some("pat")),
                "{body}"
            );
            // The bound token alone, as Bearer: refused, with a JSON body and the DPoP challenge.
            let (status, headers, body) =
                send(&app, "GET", "/me", Some(format!("Bearer {token}")), None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"], "invalid_token");
            assert!(
                headers[WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .starts_with("DPoP realm=\"demo\", error=\"invalid_token\"")
            );
            // Another key's proof.
            let (authorization, proof) = dpop(RS256.proof("GET", &url, &token));
            let (status, _, body) = send(&app, "GET", "/me", authorization, proof).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("invalid_dpop_proof"))
            );
            // An unbound token still works as Bearer under `allowed`.
            let plain = token_for(&provider, "d2");
            assert_eq!(
                send(&app, "GET", "/me", Some(format!("Bearer {plain}")), None)
                    .await
                    .0,
                StatusCode::OK
            );
            // Logout with a proof for POST /logout ends the bound token.
            let (authorization, proof) = dpop(ES256.proof("POST", &format!("{RESOURCE}/logout"), &token));
            assert_eq!(
                send(&app, "POST", "/logout", authorization, proof).await.0,
                StatusCode::NO_CONTENT
            );
            let (authorization, proof) = dpop(ES256.proof("GET", &url, &token));
            let (status, _, body) = send(&app, "GET", "/me", authorization, proof).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error_description"], "token revoked");
        }

        fn token_for(provider: &Provider, jti: &str) -> String {
            token(provider, jti, json!({"aud": "demo-api"}))
        }

        #[tokio::test]
        async fn under_required_an_unbound_token_is_refused() {
            let provider = Provider::start(vec![Key::RsaA.jwk(Some("a"), None)]).await;
            let app = demo_dpop(&provider, "required").await;
            let plain = token_for(&provider, "r1");
            let (status, _, body) = send(&app, "GET", "/me", Some(format!("Bearer {plain}")), None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error_description"], "token is not DPoP-bound");
        }

        #[test]
        fn resource_settings_are_checked() {
            assert!(server::resource_from_vars(vars(&[])).unwrap().is_none());
            for bad in [
                &[("DPOP", "required")][..],
                &[("RESOURCE_URL", "https://a.example"), ("DPOP", "yes")],
                &[("RESOURCE_URL", "a.example")],
                &[("RESOURCE_URL", "https://a.example/?q")],
                &[(
                    "DPOP_NONCE_SECRET",
                    "a secret long enough to be accepted, if alone",
                )],
                &[
                    ("RESOURCE_URL", "https://a.example"),
                    ("DPOP_NONCE_SECRET", "short"),
                ],
            ] {
                assert!(server::resource_from_vars(vars(bad)).is_err(), "{bad:?}");
            }
            let ok = server::resource_from_vars(vars(&[("RESOURCE_URL", "https://a.example/v1")]))
                .unwrap()
                .unwrap();
            assert_eq!(
                (ok.url.as_str(), ok.dpop),
                (
                    "https://a.example/v1",
                    tower_jwt_revocation::dpop::DpopPolicy::Allowed
                )
            );
        }
    }
}

#[tokio::test]
async fn jwt_audience_in_hs256_mode_is_required_and_carried_by_login_tokens() {
    let config = server::Config {
        secret: SECRET.to_vec(),
        admin_subjects: vec![],
        failure_policy: tower_jwt_revocation::FailurePolicy::Closed,
        metrics: None,
        provider: None,
        audience: Some("demo-api".into()),
        baseline_with_provider: false,
        receivers: None,
        resource: None,
    };
    let app = server::in_memory_app(config);
    let token = login(&app, "aud-user").await;
    assert_eq!(
        call(&app, "GET", "/me", Some(&token), None).await.0,
        StatusCode::OK
    );
    let without = mint_with(
        Header::default(),
        json!({"jti": "n", "sub": "aud-user", "exp": now() + 60}),
        SECRET,
    );
    assert_eq!(
        call(&app, "GET", "/me", Some(&without), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}
