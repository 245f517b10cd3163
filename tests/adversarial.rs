//! Hostile tokens and headers: each case with the status and challenge it must get. Nothing here
//! may reach the handler, except where the case says a well-formed variant is accepted.

mod common;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;
use tower_jwt_revocation::Revocation;
use tower_jwt_revocation::jsonwebtoken::crypto::sign;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, encode};
use tower_jwt_revocation::{
    Claims, JwtRevocationBuilder, JwtRevocationLayer, KeySet, MemoryStore, MissingJti, RevocationBackend,
    RevocationStore,
};

const RSA_PUBLIC: &[u8] = include_bytes!("keys/rs256-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("keys/es256-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("keys/es256-public.pem");

fn app<S: RevocationBackend>(builder: JwtRevocationBuilder<S>) -> Router {
    async fn me(claims: Claims) -> String {
        format!("ok {}", claims.token_id().unwrap_or("-"))
    }
    Router::new()
        .route("/me", get(me))
        .layer(builder.build().unwrap())
}

fn hs256(store: MemoryStore) -> JwtRevocationBuilder<MemoryStore> {
    JwtRevocationLayer::builder(store).decoding_key(DecodingKey::from_secret(SECRET))
}

async fn send(app: &Router, uri: &str, authorization: &[&str]) -> (StatusCode, Option<String>, String) {
    let mut req = Request::get(uri);
    for value in authorization {
        req = req.header(AUTHORIZATION, *value);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let challenge = res
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let status = res.status();
    let body = String::from_utf8(to_bytes(res.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    (status, challenge, body)
}

async fn bearer(app: &Router, token: &str) -> (StatusCode, Option<String>, String) {
    send(app, "/me", &[&format!("Bearer {token}")]).await
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs an arbitrary header and payload text (not necessarily valid JSON) with HS256.
fn raw_hs256(header: &str, payload: &str, secret: &[u8]) -> String {
    tower_jwt_revocation::decode::install_crypto_provider();
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{signature}")
}

fn assert_invalid_token(answer: &(StatusCode, Option<String>, String), case: &str) {
    assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{case}: {answer:?}");
    let challenge = answer.1.as_deref().unwrap_or("");
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token""#),
        "{case}: {challenge}"
    );
}

#[tokio::test]
async fn unsigned_tokens_are_refused() {
    let app = app(hs256(MemoryStore::new()));
    let payload = json!({"jti": "j", "sub": "a", "exp": now() + 600}).to_string();
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        for signature in ["", "e30"] {
            let token = format!(
                "{}.{}.{signature}",
                b64(header.as_bytes()),
                b64(payload.as_bytes())
            );
            assert_invalid_token(
                &bearer(&app, &token).await,
                &format!("alg {alg:?} sig {signature:?}"),
            );
        }
    }
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_is_refused() {
    // Algorithm confusion: the verifier holds a public key; an attacker uses it as an HMAC secret.
    let mut rs = Validation::new(Algorithm::RS256);
    rs.leeway = 0;
    let rsa = app(JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_rsa_pem(RSA_PUBLIC).unwrap())
        .validation(rs));
    let ec = app(JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_ec_pem(EC_PUBLIC).unwrap())
        .validation(Validation::new(Algorithm::ES256)));
    let claims = json!({"jti": "j", "sub": "mallory", "exp": now() + 600});
    for (app, public) in [(&rsa, RSA_PUBLIC), (&ec, EC_PUBLIC)] {
        let forged = mint_with(Header::new(Algorithm::HS256), claims.clone(), public);
        let answer = bearer(app, &forged).await;
        assert_invalid_token(&answer, "HS256 with a public key");
        assert!(answer.1.unwrap().contains("algorithm not accepted"));
    }
}

#[tokio::test]
async fn unknown_and_hostile_key_ids_are_refused() {
    let keys = KeySet::new().with_key("k1", DecodingKey::from_secret(SECRET));
    let app = app(JwtRevocationLayer::builder(MemoryStore::new()).key_set(keys));
    let claims = json!({"jti": "j", "sub": "a", "exp": now() + 600});
    let with_kid = |kid: &str| Header {
        kid: Some(kid.to_owned()),
        ..Header::new(Algorithm::HS256)
    };
    assert_eq!(
        bearer(&app, &mint_with(with_kid("k1"), claims.clone(), SECRET))
            .await
            .0,
        StatusCode::OK
    );
    let long = "k".repeat(2000);
    for kid in [
        "nope",
        "../../../../etc/passwd",
        "k1\u{0}",
        "K1",
        " k1",
        long.as_str(),
        "http://evil.test/jwks",
    ] {
        let answer = bearer(&app, &mint_with(with_kid(kid), claims.clone(), SECRET)).await;
        assert_invalid_token(&answer, kid);
        assert!(answer.1.unwrap().contains("unknown key id"), "{kid}");
    }
}

/// The order of the P-256 group, big-endian.
const P256_ORDER: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC,
    0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// `n - s`: the other ECDSA signature of the same message with the same key.
fn negate_s(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = P256_ORDER[i] as i16 - s[i] as i16 - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

#[tokio::test]
async fn a_revoked_token_stays_revoked_when_its_signature_is_re_encoded() {
    let store = MemoryStore::new();
    let app = app(JwtRevocationLayer::builder(store.clone())
        .decoding_key(DecodingKey::from_ec_pem(EC_PUBLIC).unwrap())
        .validation(Validation::new(Algorithm::ES256))
        .missing_jti(MissingJti::HashSigningInput));
    tower_jwt_revocation::decode::install_crypto_provider();
    let token = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "victim", "exp": now() + 600}),
        &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
    )
    .unwrap();
    let (status, _, body) = bearer(&app, &token).await;
    assert_eq!(status, StatusCode::OK);
    let id = body.strip_prefix("ok ").unwrap().to_owned();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let high_s = format!("{input}.{}", b64(&[&raw[..32], &negate_s(&raw[32..])].concat()));
    // The premise: the verifier accepts the high-S twin, a different valid token string...
    assert_ne!(high_s, token);
    let (status, _, twin) = bearer(&app, &high_s).await;
    assert_eq!(status, StatusCode::OK, "the verifier accepts high-S signatures");
    // ...which is why the id is derived from the signing input: both strings share it.
    assert_eq!(twin, body);
    store
        .revoke(&Revocation::token(&id, in_an_hour()).owner("victim"))
        .await
        .unwrap();

    // Base64 with the unused low bits of the last character set: decodes to the same bytes
    // under a lenient decoder.
    let mut non_canonical = signature.as_bytes().to_vec();
    let last = non_canonical.last_mut().unwrap();
    *last = if *last == b'A' { b'B' } else { b'A' };
    let non_canonical = format!("{input}.{}", String::from_utf8(non_canonical).unwrap());
    let padded = format!("{token}=");

    for (case, variant) in [
        ("original", &token),
        ("high-S", &high_s),
        ("non-canonical", &non_canonical),
        ("padded", &padded),
    ] {
        let answer = bearer(&app, variant).await;
        assert_eq!(
            answer.0,
            StatusCode::UNAUTHORIZED,
            "{case} must stay refused: {answer:?}"
        );
    }
    assert!(bearer(&app, &token).await.1.unwrap().contains("token revoked"));
}

#[tokio::test]
async fn malformed_claims_are_refused() {
    let app = app(hs256(MemoryStore::new()));
    let exp = now() + 600;
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let nested = format!(
        r#"{{"jti":"n","exp":{exp},"x":{}1{}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let cases = [
        ("duplicate jti", format!(r#"{{"jti":"a","jti":"b","exp":{exp}}}"#)),
        ("lone surrogate jti", format!(r#"{{"jti":"\ud800","exp":{exp}}}"#)),
        ("exp as string", format!(r#"{{"jti":"a","exp":"{exp}"}}"#)),
        ("exp as float", format!(r#"{{"jti":"a","exp":{exp}.5}}"#)),
        ("negative exp", r#"{"jti":"a","exp":-5}"#.to_owned()),
        (
            "iat as string",
            format!(r#"{{"jti":"a","iat":"yesterday","exp":{exp}}}"#),
        ),
        ("jti as number", format!(r#"{{"jti":7,"exp":{exp}}}"#)),
        ("deeply nested", nested),
        ("not an object", "[1,2,3]".to_owned()),
        ("not json", "hello".to_owned()),
    ];
    for (case, payload) in cases {
        let token = raw_hs256(header, &payload, SECRET);
        assert_invalid_token(&bearer(&app, &token).await, case);
    }
}

#[tokio::test]
async fn sizes_and_lifetimes_at_the_edges() {
    let store = MemoryStore::new();
    let strict = app(hs256(store.clone()));
    let huge_jti = "j".repeat(10 * 1024);
    let token = mint(json!({"jti": huge_jti, "sub": "a", "exp": now() + 600}));
    let (status, challenge, _) = bearer(&strict, &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(challenge.unwrap().contains("bearer token too long"));

    // With a larger bound the same token is accepted, and revocable by its 10 KB jti.
    let roomy = app(hs256(store.clone()).max_token_len(64 * 1024));
    assert_eq!(bearer(&roomy, &token).await.0, StatusCode::OK);
    store
        .revoke(&Revocation::token(&huge_jti, in_an_hour()))
        .await
        .unwrap();
    assert!(bearer(&roomy, &token).await.1.unwrap().contains("token revoked"));

    // A far-future exp is a valid JWT; only a lifetime bound refuses it.
    let far = mint(json!({"jti": "far", "sub": "a", "exp": 4_000_000_000_000u64}));
    assert_eq!(bearer(&strict, &far).await.0, StatusCode::OK);
    let bounded = app(hs256(MemoryStore::new()).max_token_lifetime(std::time::Duration::from_secs(3600)));
    assert!(
        bearer(&bounded, &far)
            .await
            .1
            .unwrap()
            .contains("token lifetime too long")
    );
}

#[tokio::test]
async fn header_shapes() {
    let app = app(hs256(MemoryStore::new()));
    let token = mint(claims("h", "a"));
    let cases: Vec<(Vec<String>, StatusCode)> = vec![
        (
            vec![format!("Bearer {token}"), format!("Bearer {token}")],
            StatusCode::BAD_REQUEST,
        ),
        (vec![format!("Bearer\t{token}")], StatusCode::BAD_REQUEST),
        (vec![format!("Bearer {token} extra")], StatusCode::BAD_REQUEST),
        (vec![format!("Bearer   {token}")], StatusCode::OK),
        (vec![format!("bearer {token}")], StatusCode::OK),
        (vec![format!("BEARER {token}")], StatusCode::OK),
        (vec![format!("Token {token}")], StatusCode::UNAUTHORIZED),
        (vec![token.clone()], StatusCode::UNAUTHORIZED),
    ];
    for (headers, expected) in cases {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        assert_eq!(
            send(&app, "/me", &refs).await.0,
            expected,
            "{:?}",
            &headers[0][..20]
        );
    }
    // A token in the query string is not a credential here.
    let (status, challenge, _) = send(&app, &format!("/me?access_token={token}"), &[]).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (StatusCode::UNAUTHORIZED, Some("Bearer"))
    );
}

/// Reproduced on `main` before the fix: a token whose `iat` claimed to lie an hour ahead (an
/// issuer's clock ahead, or a forger with the key) was accepted, and survived "log out
/// everywhere" because its `iat` came after the cutoff.
#[tokio::test]
async fn a_token_claiming_to_be_issued_in_the_future_is_refused() {
    let store = MemoryStore::new();
    store
        .revoke(&Revocation::subject("sam", std::time::SystemTime::now()))
        .await
        .unwrap();
    let layer = app(hs256(store.clone()));
    let ahead = mint(json!({"jti": "ahead", "sub": "sam", "iat": now() + 3600, "exp": now() + 7200}));
    let answer = bearer(&layer, &ahead).await;
    assert_invalid_token(&answer, "iat an hour ahead");
    assert!(answer.1.unwrap().contains("token issued in the future"));

    // Within the leeway (60 s by default) a clock ahead is tolerated ...
    let skewed = mint(json!({"jti": "skewed", "sub": "tim", "iat": now() + 30, "exp": now() + 600}));
    assert_eq!(bearer(&layer, &skewed).await.0, StatusCode::OK);
    // ... and the leeway is the operator's to set.
    let strict = app(hs256(store).iat_leeway(std::time::Duration::ZERO));
    assert!(
        bearer(&strict, &skewed)
            .await
            .1
            .unwrap()
            .contains("token issued in the future")
    );
}
