//! The layer around a real axum `Router`: every row of the rejection table, each policy, and
//! what handlers receive.

mod common;

use std::time::{Duration, SystemTime};
use tower_jwt_revocation::Revocation;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::routing::get;
use common::*;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use serde_json::json;
use tower::ServiceExt;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, Header, Validation};
use tower_jwt_revocation::{
    Claims, FailurePolicy, JwtRevocationBuilder, JwtRevocationLayer, MemoryStore, MissingJti,
    RevocationBackend, RevocationStore, backend::from_unix_seconds,
};

async fn whoami(claims: Claims) -> String {
    format!(
        "sub={} jti={}",
        claims.sub.as_deref().unwrap_or_default(),
        claims.token_id().unwrap_or("-")
    )
}

async fn maybe(claims: Option<Claims>) -> String {
    match claims {
        Some(c) => format!("sub={}", c.sub.unwrap_or_default()),
        None => "anonymous".to_owned(),
    }
}

fn builder<S: RevocationBackend>(backend: S) -> JwtRevocationBuilder<S> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    JwtRevocationLayer::builder(backend)
        .decoding_key(tower_jwt_revocation::jsonwebtoken::DecodingKey::from_secret(
            SECRET,
        ))
        .validation(validation)
}

fn app<S: RevocationBackend>(layer: JwtRevocationLayer<S>) -> Router {
    Router::new()
        .route("/me", get(whoami))
        .route("/maybe", get(maybe))
        .layer(layer)
}

fn get_with(path: &str, authorization: &[&str]) -> Request<Body> {
    let mut req = Request::get(path);
    for value in authorization {
        req = req.header(AUTHORIZATION, *value);
    }
    req.body(Body::empty()).unwrap()
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    headers: http::HeaderMap,
    body: String,
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let res: Response<Body> = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let challenge = headers
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = String::from_utf8(to_bytes(res.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    Answer {
        status,
        challenge,
        headers,
        body,
    }
}

async fn bearer(app: &Router, token: &str) -> Answer {
    send(app, get_with("/me", &[&format!("Bearer {token}")])).await
}

fn invalid_token(description: &str) -> Option<String> {
    Some(format!(
        r#"Bearer error="invalid_token", error_description="{description}""#
    ))
}

#[tokio::test]
async fn valid_token_reaches_the_handler_with_its_claims() {
    let app = app(builder(MemoryStore::new()).build().unwrap());
    let answer = bearer(&app, &mint(claims("j1", "alice"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "sub=alice jti=j1");
}

#[tokio::test]
async fn missing_or_foreign_scheme_gets_a_bare_challenge() {
    let app = app(builder(MemoryStore::new()).build().unwrap());
    for auth in [&[][..], &["Basic dXNlcjpwYXNz"][..]] {
        let answer = send(&app, get_with("/me", auth)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(answer.challenge.as_deref(), Some("Bearer"), "{auth:?}");
    }
    let with_realm = self::app(builder(MemoryStore::new()).realm("demo").build().unwrap());
    let answer = send(&with_realm, get_with("/me", &[])).await;
    assert_eq!(answer.challenge.as_deref(), Some(r#"Bearer realm="demo""#));
}

#[tokio::test]
async fn malformed_credentials_are_a_bad_request() {
    let app = app(builder(MemoryStore::new()).max_token_len(1024).build().unwrap());
    let token = mint(claims("j1", "alice"));
    let long = "a".repeat(1025);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!("Bearer {token}"), format!("Bearer {token}")],
            "more than one Authorization header",
        ),
        (vec!["Bearer ".into()], "empty bearer token"),
        (vec!["Bearer".into()], "empty bearer token"),
        (vec!["Bearer abc def".into()], "malformed bearer token"),
        (vec!["Bearer abc\"def".into()], "malformed bearer token"),
        (vec![format!("Bearer {long}")], "bearer token too long"),
    ];
    for (headers, description) in cases {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let answer = send(&app, get_with("/me", &refs)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{description}");
        assert_eq!(
            answer.challenge,
            Some(format!(
                r#"Bearer error="invalid_request", error_description="{description}""#
            ))
        );
    }
}

#[tokio::test]
async fn tokens_that_do_not_verify_are_invalid_tokens() {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_issuer(&["https://issuer.test"]);
    validation.set_audience(&["api"]);
    let store = SlowPath::new(MemoryStore::new());
    let app = app(builder(store.clone())
        .validation(validation)
        .required_typ("JWT")
        .build()
        .unwrap());
    let good =
        || json!({"jti": "j", "sub": "a", "iss": "https://issuer.test", "aud": "api", "exp": now() + 600});
    let with = |patch: serde_json::Value| {
        let mut c = good();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let none_alg = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(serde_json::to_vec(&good()).unwrap().as_slice())
    );
    let cases = [
        (
            mint_with(Header::default(), good(), b"another-secret-another-secret"),
            "invalid signature",
        ),
        (mint(with(json!({"exp": now() - 10}))), "token expired"),
        (mint(with(json!({"nbf": now() + 600}))), "token not yet valid"),
        (
            mint(with(json!({"iss": "https://evil.test"}))),
            "issuer not accepted",
        ),
        (mint(with(json!({"aud": "other"}))), "audience not accepted"),
        (
            mint_with(Header::new(Algorithm::HS384), good(), SECRET),
            "algorithm not accepted",
        ),
        (
            mint_with(
                Header {
                    typ: Some("at+jwt".into()),
                    ..Header::default()
                },
                good(),
                SECRET,
            ),
            "token type not accepted",
        ),
        (none_alg, "malformed token"),
        ("abc.def.ghi".to_owned(), "malformed token"),
        (
            mint(json!({"jti": "j", "iss": "https://issuer.test", "aud": "api"})),
            "missing required claim",
        ),
        (mint(with(json!({"exp": "tomorrow"}))), "malformed token"),
    ];
    for (token, description) in cases {
        let answer = bearer(&app, &token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{description}");
        assert_eq!(answer.challenge, invalid_token(description));
        let leaked = token.split('.').filter(|part| part.len() > 8).any(|part| {
            answer.body.contains(part)
                || answer
                    .headers
                    .values()
                    .any(|v| v.to_str().unwrap_or("").contains(part))
        });
        assert!(!leaked, "the response echoes the token");
    }
    assert_eq!(bearer(&app, &mint(good())).await.status, StatusCode::OK);
    // Only the one good token reached the store: forged and expired ones cost no lookup.
    assert_eq!(store.checks(), 1);
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn revoked_tokens_are_rejected_by_jti_session_and_subject() {
    for slow in [false, true] {
        let store = MemoryStore::new();
        let app = if slow {
            self::app(builder(SlowPath::new(store.clone())).build().unwrap())
        } else {
            self::app(builder(store.clone()).build().unwrap())
        };
        let by_jti = mint(claims("t1", "alice"));
        let by_sid = mint(json!({"jti": "t2", "sub": "bob", "sid": "s1", "iat": now(), "exp": now() + 600}));
        let other = mint(claims("t3", "alice"));
        for token in [&by_jti, &by_sid, &other] {
            assert_eq!(bearer(&app, token).await.status, StatusCode::OK, "slow={slow}");
        }
        store
            .revoke(
                &Revocation::token("t1", in_an_hour())
                    .owner("alice")
                    .reason("logout"),
            )
            .await
            .unwrap();
        store
            .revoke(&Revocation::session("s1", in_an_hour()).owner("bob"))
            .await
            .unwrap();
        for token in [&by_jti, &by_sid] {
            let answer = bearer(&app, token).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "slow={slow}");
            assert_eq!(answer.challenge, invalid_token("token revoked"));
        }
        assert_eq!(bearer(&app, &other).await.status, StatusCode::OK, "slow={slow}");
    }
}

#[tokio::test]
async fn subject_cutoff_revokes_tokens_issued_up_to_its_second_and_not_after() {
    let store = MemoryStore::new();
    let app = app(builder(store.clone()).build().unwrap());
    let cutoff = now() - 100;
    let issued =
        |jti: &str, iat: u64| mint(json!({"jti": jti, "sub": "carol", "iat": iat, "exp": now() + 600}));
    let before = issued("before", cutoff - 1);
    let same_second = issued("same", cutoff);
    let after = issued("after", cutoff + 1);
    let no_iat = mint(json!({"jti": "no-iat", "sub": "carol", "exp": now() + 600}));
    let someone_else = mint(json!({"jti": "dave", "sub": "dave", "iat": cutoff - 1, "exp": now() + 600}));

    store
        .revoke(&Revocation::subject("carol", from_unix_seconds(cutoff)).reason("password change"))
        .await
        .unwrap();
    for token in [&before, &same_second, &no_iat] {
        assert_eq!(
            bearer(&app, token).await.challenge,
            invalid_token("token revoked")
        );
    }
    assert_eq!(bearer(&app, &after).await.status, StatusCode::OK);
    assert_eq!(bearer(&app, &someone_else).await.status, StatusCode::OK);

    // An earlier cutoff later on does not bring the revoked tokens back.
    store
        .revoke(&Revocation::subject("carol", from_unix_seconds(cutoff - 50)))
        .await
        .unwrap();
    assert_eq!(bearer(&app, &before).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bearer(&app, &after).await.status, StatusCode::OK);
}

#[tokio::test]
async fn missing_jti_policies() {
    let no_jti = mint(json!({"sub": "erin", "sid": "s9", "iat": now(), "exp": now() + 600}));

    let reject = app(builder(MemoryStore::new()).build().unwrap());
    assert_eq!(
        bearer(&reject, &no_jti).await.challenge,
        invalid_token("token has no jti")
    );

    let store = MemoryStore::new();
    let allow = app(builder(store.clone())
        .missing_jti(MissingJti::Allow)
        .build()
        .unwrap());
    let answer = bearer(&allow, &no_jti).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "sub=erin jti=-")
    );
    store
        .revoke(&Revocation::session("s9", in_an_hour()).owner("erin"))
        .await
        .unwrap();
    assert_eq!(
        bearer(&allow, &no_jti).await.challenge,
        invalid_token("token revoked")
    );

    let store = MemoryStore::new();
    let hashed = app(builder(store.clone())
        .missing_jti(MissingJti::HashSigningInput)
        .build()
        .unwrap());
    let answer = bearer(&hashed, &no_jti).await;
    assert_eq!(answer.status, StatusCode::OK);
    let id = answer.body.strip_prefix("sub=erin jti=").unwrap().to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    store
        .revoke(&Revocation::token(&id, in_an_hour()).owner("erin"))
        .await
        .unwrap();
    assert_eq!(
        bearer(&hashed, &no_jti).await.challenge,
        invalid_token("token revoked")
    );
}

#[tokio::test]
async fn store_errors_follow_the_failure_policy() {
    for slow in [false, true] {
        let backend = FailingBackend { slow };
        let closed_layer = builder(backend.clone())
            .retry_after(Duration::from_secs(3))
            .build()
            .unwrap();
        let closed = app(closed_layer.clone());
        let answer = bearer(&closed, &mint(claims("j", "a"))).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "slow={slow}");
        assert_eq!(answer.headers.get(RETRY_AFTER).unwrap(), "3");
        assert_eq!(answer.challenge, None);
        assert!(
            !answer.body.contains("refused") && !answer.body.contains("250"),
            "internal error text leaked"
        );
        assert_eq!(closed_layer.metrics().store_errors, 1);
        assert_eq!(closed_layer.metrics().authorized, 0);
        // Mutation testing (issue 26): the slow path is counted, the fast path is not.
        assert_eq!(closed_layer.metrics().slow_checks, u64::from(slow), "slow={slow}");

        let open_layer = builder(backend)
            .failure_policy(FailurePolicy::Open)
            .build()
            .unwrap();
        let open = app(open_layer.clone());
        let answer = bearer(&open, &mint(claims("j", "a"))).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "sub=a jti=j"),
            "slow={slow}"
        );
        assert_eq!(open_layer.metrics().fail_open_passes, 1);
        assert_eq!(open_layer.metrics().store_errors, 1);
        // Policy only applies to store errors: a bad token is still refused.
        assert_eq!(
            bearer(&open, "abc.def.ghi").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn optional_layer_lets_anonymous_requests_through_but_not_bad_tokens() {
    let store = MemoryStore::new();
    let layer = builder(store.clone()).optional().build().unwrap();
    let app = app(layer.clone());
    let anonymous = send(&app, get_with("/maybe", &[])).await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (StatusCode::OK, "anonymous")
    );
    // A handler that requires claims still refuses the anonymous request, with the challenge.
    let required = send(&app, get_with("/me", &[])).await;
    assert_eq!(
        (required.status, required.challenge.as_deref()),
        (StatusCode::UNAUTHORIZED, Some("Bearer"))
    );

    let token = mint(claims("j1", "frank"));
    let known = send(&app, get_with("/maybe", &[&format!("Bearer {token}")])).await;
    assert_eq!(known.body, "sub=frank");
    store
        .revoke(&Revocation::token("j1", in_an_hour()))
        .await
        .unwrap();
    let revoked = send(&app, get_with("/maybe", &[&format!("Bearer {token}")])).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    let garbage = send(&app, get_with("/maybe", &["Bearer abc.def.ghi"])).await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(layer.metrics().anonymous, 2);
}

#[tokio::test]
async fn rejection_hook_shapes_the_response() {
    let layer = builder(MemoryStore::new())
        .on_reject(
            |rejection: &tower_jwt_revocation::Rejection, mut res: Response<Body>| {
                res.headers_mut()
                    .insert(CONTENT_TYPE, "application/json".parse().unwrap());
                *res.body_mut() = Body::from(rejection.json_body());
                res
            },
        )
        .build()
        .unwrap();
    let app = Router::new().route("/me", get(whoami)).layer(layer);
    let answer = bearer(&app, "abc.def.ghi").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.headers[CONTENT_TYPE], "application/json");
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body,
        json!({"error": "invalid_token", "error_description": "malformed token"})
    );
    assert!(answer.challenge.is_some(), "the hook keeps the default challenge");
}

#[tokio::test]
async fn grpc_requests_get_a_grpc_status() {
    let store = MemoryStore::new();
    let app = app(builder(store.clone()).build().unwrap());
    store
        .revoke(&Revocation::token("g1", in_an_hour()))
        .await
        .unwrap();
    let req = Request::get("/me")
        .header(CONTENT_TYPE, "application/grpc")
        .header(AUTHORIZATION, format!("Bearer {}", mint(claims("g1", "a"))))
        .body(Body::empty())
        .unwrap();
    let answer = send(&app, req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["grpc-status"], "16");
    assert_eq!(answer.headers["grpc-message"], "token revoked");
}

#[tokio::test]
async fn bad_configurations_fail_when_the_layer_is_built() {
    use tower_jwt_revocation::ConfigError;
    let no_key = JwtRevocationLayer::builder(MemoryStore::new()).build();
    assert!(matches!(no_key, Err(ConfigError::NoKey)));
    let mut empty = Validation::new(Algorithm::HS256);
    empty.algorithms.clear();
    assert!(matches!(
        builder(MemoryStore::new()).validation(empty).build(),
        Err(ConfigError::NoAlgorithms)
    ));
    let rsa = builder(MemoryStore::new())
        .validation(Validation::new(Algorithm::RS256))
        .build();
    assert!(matches!(rsa, Err(ConfigError::KeyAlgorithmMismatch { .. })));
    let realm = builder(MemoryStore::new()).realm("a\"b").build();
    assert!(matches!(realm, Err(ConfigError::InvalidRealm)));
}

#[tokio::test]
async fn revocation_outlives_the_request_that_made_it() {
    // Revoking through the store a handler shares with the layer takes effect on the next request.
    let store = MemoryStore::new();
    let logout_store = store.clone();
    let logout = move |claims: Claims| {
        let store = logout_store.clone();
        async move {
            let exp = claims.exp.map(from_unix_seconds).unwrap_or_else(SystemTime::now);
            store
                .revoke(
                    &Revocation::token(claims.token_id().unwrap(), exp)
                        .owner(claims.sub.as_deref())
                        .reason("logout"),
                )
                .await
                .unwrap();
            StatusCode::NO_CONTENT
        }
    };
    let app = Router::new()
        .route("/me", get(whoami))
        .route("/logout", axum::routing::post(logout))
        .layer(builder(store).build().unwrap());
    let token = mint(claims("l1", "gina"));
    let req = Request::post("/logout")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        bearer(&app, &token).await.challenge,
        invalid_token("token revoked")
    );
}

#[tokio::test]
async fn skipped_paths_need_no_token_and_get_no_claims() {
    let layer = builder(MemoryStore::new())
        .skip_paths(|path| path == "/maybe")
        .build()
        .unwrap();
    let app = app(layer.clone());
    let skipped = send(&app, get_with("/maybe", &[])).await;
    assert_eq!(
        (skipped.status, skipped.body.as_str()),
        (StatusCode::OK, "anonymous")
    );
    // Even a garbage token is not looked at on a skipped path.
    assert_eq!(
        send(&app, get_with("/maybe", &["Bearer abc.def.ghi"]))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get_with("/me", &[])).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(layer.metrics().skipped, 2);
}

#[tokio::test]
async fn a_cookie_carries_the_token_when_there_is_no_authorization_header() {
    let store = MemoryStore::new();
    let app = app(builder(store.clone()).cookie("access_token").build().unwrap());
    let with_cookie = |cookie: &str, authorization: Option<&str>| {
        let mut req = Request::get("/me").header(http::header::COOKIE, cookie);
        if let Some(auth) = authorization {
            req = req.header(AUTHORIZATION, auth);
        }
        req.body(Body::empty()).unwrap()
    };
    let token = mint(claims("c1", "ivy"));
    let cookie = format!("theme=dark; access_token={token}");
    let answer = send(&app, with_cookie(&cookie, None)).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "sub=ivy jti=c1")
    );

    // The header wins, and a malformed header never falls back to the cookie.
    let other = mint(claims("h1", "jack"));
    assert_eq!(
        send(&app, with_cookie(&cookie, Some(&format!("Bearer {other}"))))
            .await
            .body,
        "sub=jack jti=h1"
    );
    assert_eq!(
        send(&app, with_cookie(&cookie, Some("Bearer a b"))).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&app, with_cookie(&cookie, Some("Basic dXNlcjpwYXNz")))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Ambiguity and revocation apply to cookies as to headers.
    let twice = format!("access_token={token}; access_token={other}");
    assert_eq!(
        send(&app, with_cookie(&twice, None)).await.status,
        StatusCode::BAD_REQUEST
    );
    store
        .revoke(&Revocation::token("c1", in_an_hour()))
        .await
        .unwrap();
    assert_eq!(
        send(&app, with_cookie(&cookie, None)).await.challenge,
        invalid_token("token revoked")
    );
}

/// Reproduced on `main` before the fix: every request during the outage logged its own `warn`
/// (fifty here); an outage is now one line when it begins and one when it ends.
#[tokio::test]
async fn a_store_outage_is_logged_when_it_begins_and_ends_not_per_request() {
    let (_guard, logs) = capture_logs();
    let backend = Outage::default();
    let app = app(builder(backend.clone()).build().unwrap());
    let token = mint(claims("outage", "uma"));
    backend.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..50 {
        assert_eq!(bearer(&app, &token).await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(logs.count("WARN"), 1, "{}", logs.text());
    assert_eq!(logs.count("outage began"), 1);

    backend.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    // An outage ends once checks have stopped failing for a moment (a partial outage is one).
    tokio::time::sleep(tower_jwt_revocation::telemetry::OUTAGE_QUIET).await;
    assert_eq!(bearer(&app, &token).await.status, StatusCode::OK);
    assert_eq!(bearer(&app, &token).await.status, StatusCode::OK);
    let ended = logs.text();
    let ended: Vec<&str> = ended
        .lines()
        .filter(|line| line.contains("outage ended"))
        .collect();
    assert_eq!(ended.len(), 1, "{}", logs.text());
    assert!(ended[0].contains("failed_checks=50"), "{}", ended[0]);
}

/// Reproduced on `main` before the fix: a handler asking for claims the layer did not put there
/// (another claims type, or a route the layer does not wrap) got a silent 401, as if the client
/// had sent no token. Like axum's missing `Extension`, it is now a 500 naming the cause; an
/// anonymous request through an `optional()` layer still gets the 401 challenge.
#[tokio::test]
async fn claims_the_layer_did_not_provide_are_a_server_error_naming_the_cause() {
    #[derive(Clone, serde::Deserialize)]
    struct Custom {
        #[allow(dead_code)]
        admin: Option<bool>,
    }
    let token = mint(claims("mismatch", "xia"));
    let mismatched = Router::new()
        .route("/me", get(whoami))
        .layer(builder(MemoryStore::new()).claims::<Custom>().build().unwrap());
    let answer = bearer(&mismatched, &token).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(answer.body.contains("Claims<"), "{}", answer.body);
    assert!(answer.body.contains("JwtRevocationLayer"), "{}", answer.body);

    let unwrapped = Router::new().route("/me", get(whoami));
    assert_eq!(
        bearer(&unwrapped, &token).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    let optional = app(builder(MemoryStore::new()).optional().build().unwrap());
    let anonymous = send(&optional, get_with("/me", &[])).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.challenge.as_deref(), Some("Bearer"));
}

/// Found in review, reproduced before the fix: `subject_revocation` filed the cutoff at the
/// server's "now", so a token whose issuer clock runs a few seconds ahead (accepted within the
/// `iat` leeway) survived its own "log out everywhere".
#[tokio::test]
async fn the_revocation_helpers_cover_the_token_they_come_from() {
    let store = MemoryStore::new();
    let skew = std::time::Duration::from_secs(60);
    let app = app(builder(store.clone()).iat_leeway(skew).build().unwrap());
    let ahead =
        mint(json!({"jti": "ahead", "sub": "yan", "sid": "s-yan", "iat": now() + 30, "exp": now() + 600}));
    let verifier = |token: &str| {
        tower_jwt_revocation::decode::Verifier::new(
            tower_jwt_revocation::decode::KeySource::Single(
                tower_jwt_revocation::jsonwebtoken::DecodingKey::from_secret(SECRET),
            ),
            &Validation::new(Algorithm::HS256),
            None,
            tower_jwt_revocation::MissingJti::Reject,
            None,
        )
        .unwrap()
        .verify::<tower_jwt_revocation::DefaultClaims>(token)
        .unwrap()
    };
    let claims = verifier(&ahead);
    assert_eq!(bearer(&app, &ahead).await.status, StatusCode::OK);
    store.revoke(&claims.subject_revocation().unwrap()).await.unwrap();
    assert_eq!(bearer(&app, &ahead).await.status, StatusCode::UNAUTHORIZED);

    let other = mint(json!({"jti": "own", "sub": "zed", "sid": "s-zed", "iat": now(), "exp": now() + 600}));
    let sibling =
        mint(json!({"jti": "sibling", "sub": "zed", "sid": "s-zed", "iat": now(), "exp": now() + 600}));
    let claims = verifier(&other);
    store
        .revoke(
            &claims
                .session_revocation(std::time::Duration::from_secs(3600))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bearer(&app, &sibling).await.status, StatusCode::UNAUTHORIZED);
    let lone = mint(json!({"jti": "lone", "sub": "amy", "iat": now(), "exp": now() + 600}));
    store
        .revoke(&verifier(&lone).token_revocation().unwrap())
        .await
        .unwrap();
    assert_eq!(bearer(&app, &lone).await.status, StatusCode::UNAUTHORIZED);
}

/// Found in review: `Option<Claims<C>>` with a `C` the layer does not produce answered `None`
/// for every authenticated user, silently treating them as anonymous.
#[tokio::test]
async fn optional_claims_of_the_wrong_type_are_a_server_error_too() {
    #[derive(Clone, serde::Deserialize)]
    struct Custom {}
    async fn maybe_custom(claims: Option<Claims<Custom>>) -> &'static str {
        if claims.is_some() { "some" } else { "none" }
    }
    let token = mint(claims("opt", "bea"));
    let mismatched = Router::new()
        .route("/maybe", get(maybe_custom))
        .layer(builder(MemoryStore::new()).optional().build().unwrap());
    assert_eq!(
        send(&mismatched, get_with("/maybe", &[&format!("Bearer {token}")]))
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Anonymous through the optional layer: `None`, as before.
    let anonymous = send(&mismatched, get_with("/maybe", &[])).await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (StatusCode::OK, "none")
    );
    // The right type: `Some`.
    let matched = app(builder(MemoryStore::new()).optional().build().unwrap());
    assert_eq!(
        send(&matched, get_with("/maybe", &[&format!("Bearer {token}")]))
            .await
            .body,
        "sub=bea"
    );
}

/// Required scopes and the claims predicate decide after the revocation check, under either
/// failure policy (found by mutation testing, issue 26: with `||` for `&&`, a dropped `!` or the
/// scope guard forced off, no test of this suite failed).
#[tokio::test]
async fn scopes_and_the_predicate_decide_after_the_revocation_check() {
    let token = |jti: &str, sub: &str, scope: &str| {
        let mut claims = claims(jti, sub);
        claims["scope"] = json!(scope);
        mint(claims)
    };
    let store = MemoryStore::new();
    let layer = builder(store.clone())
        .require_scopes(["orders"])
        .require(|claims: &Claims| claims.sub.as_deref() != Some("mallory"))
        .build()
        .unwrap();
    let routes = app(layer.clone());
    // Every scope and the predicate: through.
    assert_eq!(
        bearer(&routes, &token("j1", "alice", "orders read")).await.status,
        StatusCode::OK
    );
    // Scope missing, predicate true: 403 naming the scope.
    let answer = bearer(&routes, &token("j2", "alice", "read")).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.challenge.unwrap().contains("insufficient_scope"));
    // Scope held, predicate false: 403 too (either check alone refuses).
    assert_eq!(
        bearer(&routes, &token("j3", "mallory", "orders")).await.status,
        StatusCode::FORBIDDEN
    );
    // Revoked and missing the scope: 401, the revocation decides first.
    let revoked = token("j4", "alice", "read");
    store
        .revoke(&Revocation::token(
            "j4",
            SystemTime::now() + Duration::from_secs(600),
        ))
        .await
        .unwrap();
    assert_eq!(bearer(&routes, &revoked).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(layer.metrics().authorized, 1);
    assert_eq!(layer.metrics().rejected_forbidden, 2);

    // A predicate alone, and scopes alone.
    let only_predicate = app(builder(MemoryStore::new())
        .require(|claims: &Claims| claims.sub.as_deref() != Some("mallory"))
        .build()
        .unwrap());
    assert_eq!(
        bearer(&only_predicate, &token("j5", "alice", "")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bearer(&only_predicate, &token("j6", "mallory", "")).await.status,
        StatusCode::FORBIDDEN
    );
    let only_scopes = app(builder(MemoryStore::new())
        .require_scopes(["orders"])
        .build()
        .unwrap());
    assert_eq!(
        bearer(&only_scopes, &token("j7", "mallory", "orders"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        bearer(&only_scopes, &token("j8", "alice", "read")).await.status,
        StatusCode::FORBIDDEN
    );

    // Fail open lets an unknown answer through, but never past a missing scope.
    for slow in [false, true] {
        let open_layer = builder(FailingBackend { slow })
            .failure_policy(FailurePolicy::Open)
            .require_scopes(["orders"])
            .build()
            .unwrap();
        let open = app(open_layer.clone());
        assert_eq!(
            bearer(&open, &token("j9", "alice", "orders")).await.status,
            StatusCode::OK
        );
        assert_eq!(
            bearer(&open, &token("j10", "alice", "read")).await.status,
            StatusCode::FORBIDDEN,
            "slow={slow}"
        );
        assert_eq!(open_layer.metrics().fail_open_passes, 1, "slow={slow}");
    }
}
