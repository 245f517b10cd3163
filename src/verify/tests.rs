//! The verifier's unit tests: keys, issuers, claims and the checks `jsonwebtoken` has no
//! setting for.

use std::time::Duration;

use super::token_cache::Window;
use super::verifier::signing_input_id;
use super::*;
use crate::config::ConfigError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, encode};
use serde_json::json;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

fn now() -> u64 {
    crate::backend::unix_seconds(std::time::SystemTime::now())
}

fn token(header: Header, claims: serde_json::Value) -> String {
    install_crypto_provider();
    encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn verifier(missing_jti: MissingJti, typ: Option<&str>) -> Verifier {
    Verifier::new(
        KeySource::Single(DecodingKey::from_secret(SECRET)),
        &Validation::new(Algorithm::HS256),
        typ.map(str::to_owned),
        missing_jti,
        None,
    )
    .unwrap()
}

#[test]
fn valid_token_yields_typed_and_custom_claims() {
    let t = token(
        Header::default(),
        json!({"jti": "j1", "sub": "alice", "sid": "s1", "iat": now(), "exp": now() + 60, "admin": true}),
    );
    let claims: Claims = verifier(MissingJti::Reject, None).verify(&t).unwrap();
    assert_eq!(claims.jti.as_deref(), Some("j1"));
    assert_eq!(claims.sid.as_deref(), Some("s1"));
    assert_eq!(claims.custom.get("admin"), Some(&json!(true)));
    assert_eq!(claims.facts().subject, Some("alice"));
}

#[test]
fn missing_jti_follows_the_policy() {
    let t = token(Header::default(), json!({"sub": "alice", "exp": now() + 60}));
    assert_eq!(
        verifier(MissingJti::Reject, None).verify::<DefaultClaims>(&t),
        Err(InvalidToken::MissingJti)
    );
    let allowed: Claims = verifier(MissingJti::Allow, None).verify(&t).unwrap();
    assert_eq!(allowed.token_id(), None);
    let hashed: Claims = verifier(MissingJti::HashSigningInput, None).verify(&t).unwrap();
    let id = hashed.token_id().unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 7 + 43, "{id}");
    assert_eq!(hashed.jti, None);
}

#[test]
fn derived_id_ignores_the_signature_encoding() {
    let t = token(Header::default(), json!({"sub": "a", "exp": now() + 60}));
    let (input, _) = t.rsplit_once('.').unwrap();
    assert_eq!(
        signing_input_id(&t),
        signing_input_id(&format!("{input}.other-signature"))
    );
}

#[test]
fn required_typ_is_compared_as_a_media_type() {
    let v = verifier(MissingJti::Reject, Some("at+jwt"));
    let claims = json!({"jti": "j", "exp": now() + 60});
    for (typ, ok) in [
        (Some("at+jwt"), true),
        (Some("AT+JWT"), true),
        (Some("application/at+jwt"), true),
        (Some("JWT"), false),
        (None, false),
    ] {
        let header = Header {
            typ: typ.map(str::to_owned),
            ..Header::default()
        };
        let result = v.verify::<DefaultClaims>(&token(header, claims.clone()));
        assert_eq!(result.is_ok(), ok, "typ {typ:?}: {result:?}");
        if !ok {
            assert_eq!(result, Err(InvalidToken::Type));
        }
    }
}

#[test]
fn the_cache_window_is_when_every_time_check_accepts() {
    let claims = |value: serde_json::Value| -> Claims { serde_json::from_value(value).unwrap() };
    let window = |from, until| Some(Window { from, until });
    let plain = verifier(MissingJti::Reject, None);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 60;
    let exp_only = claims(json!({"exp": 10_000}));
    assert_eq!(plain.cache_window(&validation, &exp_only), window(0, 10_060));
    validation.reject_tokens_expiring_in_less_than = 100;
    assert_eq!(plain.cache_window(&validation, &exp_only), window(0, 9_960));
    let all = claims(json!({"nbf": 5_000, "iat": 4_000, "exp": 10_000}));
    assert_eq!(
        plain.cache_window(&validation, &all),
        window(3_940, 9_960),
        "iat - leeway"
    );
    validation.validate_nbf = true;
    assert_eq!(
        plain.cache_window(&validation, &all),
        window(4_940, 9_960),
        "nbf - leeway"
    );
    let bounded = Verifier::new(
        KeySource::Single(DecodingKey::from_secret(SECRET)),
        &validation,
        None,
        MissingJti::Reject,
        Some(Duration::from_secs(1_000)),
    )
    .unwrap()
    .with_iat_leeway(Duration::from_secs(5));
    // `exp` at most the maximum lifetime (plus the leeway) from now: from 8 940 on.
    assert_eq!(bounded.cache_window(&validation, &all), window(8_940, 9_960));
    let late_iat = claims(json!({"iat": 9_500, "exp": 10_000}));
    assert_eq!(
        bounded.cache_window(&validation, &late_iat),
        window(9_495, 9_960),
        "iat - its own leeway"
    );
    // Saturating, never panicking, at the ends of the range.
    let extreme = claims(json!({"nbf": 0, "iat": 0, "exp": u64::MAX}));
    assert_eq!(
        bounded.cache_window(&validation, &extreme),
        window(u64::MAX - 1_000 - 60, u64::MAX - 100 + 60)
    );
    assert_eq!(
        plain.cache_window(&validation, &claims(json!({"exp": 0}))),
        window(0, 60)
    );
    // An expiry that is not checked: never cached.
    assert_eq!(
        plain.cache_window(&validation, &claims(json!({"sub": "a"}))),
        None
    );
    validation.validate_exp = false;
    assert_eq!(plain.cache_window(&validation, &exp_only), None);
}

#[test]
fn max_lifetime_bounds_exp() {
    let v = Verifier::new(
        KeySource::Single(DecodingKey::from_secret(SECRET)),
        &Validation::new(Algorithm::HS256),
        None,
        MissingJti::Reject,
        Some(Duration::from_secs(600)),
    )
    .unwrap();
    let ok = token(Header::default(), json!({"jti": "j", "exp": now() + 600}));
    assert!(v.verify::<DefaultClaims>(&ok).is_ok());
    let long = token(Header::default(), json!({"jti": "j", "exp": now() + 601 + 60}));
    assert_eq!(v.verify::<DefaultClaims>(&long), Err(InvalidToken::Lifetime));
    // Issued long ago with a long life: its `exp` is near, but its lifetime is over the bound.
    let old = token(
        Header::default(),
        json!({"jti": "j", "iat": now() - 7200, "exp": now() + 60}),
    );
    assert_eq!(v.verify::<DefaultClaims>(&old), Err(InvalidToken::Lifetime));
    let within = token(
        Header::default(),
        json!({"jti": "j", "iat": now() - 500, "exp": now() + 100}),
    );
    assert!(v.verify::<DefaultClaims>(&within).is_ok());
}

#[test]
fn key_set_selects_by_kid() {
    let set = KeySet::new()
        .with_key("k1", DecodingKey::from_secret(SECRET))
        .with_key("k2", DecodingKey::from_secret(b"another-secret"));
    let v = Verifier::new(
        KeySource::Set(set),
        &Validation::new(Algorithm::HS256),
        None,
        MissingJti::Reject,
        None,
    )
    .unwrap();
    let claims = json!({"jti": "j", "exp": now() + 60});
    let with_kid = |kid: Option<&str>| Header {
        kid: kid.map(str::to_owned),
        ..Header::default()
    };
    assert!(
        v.verify::<DefaultClaims>(&token(with_kid(Some("k1")), claims.clone()))
            .is_ok()
    );
    assert_eq!(
        v.verify::<DefaultClaims>(&token(with_kid(Some("k2")), claims.clone())),
        Err(InvalidToken::BadSignature)
    );
    assert_eq!(
        v.verify::<DefaultClaims>(&token(with_kid(Some("nope")), claims.clone())),
        Err(InvalidToken::UnknownKey)
    );
    assert_eq!(
        v.verify::<DefaultClaims>(&token(with_kid(None), claims)),
        Err(InvalidToken::UnknownKey)
    );
}

#[test]
fn bad_configurations_fail_at_build_time() {
    let hmac = || KeySource::Single(DecodingKey::from_secret(SECRET));
    let mut empty = Validation::new(Algorithm::HS256);
    empty.algorithms.clear();
    assert_eq!(
        Verifier::new(hmac(), &empty, None, MissingJti::Reject, None).err(),
        Some(ConfigError::NoAlgorithms)
    );
    assert!(matches!(
        Verifier::new(
            hmac(),
            &Validation::new(Algorithm::RS256),
            None,
            MissingJti::Reject,
            None,
        ),
        Err(ConfigError::KeyAlgorithmMismatch { .. })
    ));
    assert_eq!(
        Verifier::new(
            KeySource::Set(KeySet::new()),
            &Validation::new(Algorithm::HS256),
            None,
            MissingJti::Reject,
            None,
        )
        .err(),
        Some(ConfigError::EmptyKeySet)
    );
    assert_eq!(
        Verifier::new(
            hmac(),
            &Validation::new(Algorithm::HS256),
            Some(" ".into()),
            MissingJti::Reject,
            None,
        )
        .err(),
        Some(ConfigError::EmptyTyp)
    );
}

#[test]
fn invalid_tokens_are_classified() {
    let v = verifier(MissingJti::Reject, None);
    let expired = token(Header::default(), json!({"jti": "j", "exp": now() - 3600}));
    assert_eq!(v.verify::<DefaultClaims>(&expired), Err(InvalidToken::Expired));
    let hs384 = token(
        Header::new(Algorithm::HS384),
        json!({"jti": "j", "exp": now() + 60}),
    );
    assert_eq!(v.verify::<DefaultClaims>(&hs384), Err(InvalidToken::Algorithm));
    assert_eq!(
        v.verify::<DefaultClaims>("not-a-jwt"),
        Err(InvalidToken::Malformed)
    );
    let string_exp = token(Header::default(), json!({"jti": "j", "exp": "tomorrow"}));
    assert!(v.verify::<DefaultClaims>(&string_exp).is_err());
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"jti":"j","exp":{}}}"#, now() + 60))
    );
    assert!(v.verify::<DefaultClaims>(&none).is_err());
}
