//! Two identity providers behind one layer, whose users share a `sub` and a `sid`: a logout or
//! security event from one provider ends its own user's tokens only, on every instance and in
//! every cache mode, while revocations filed without an issuer (before keying existed, or by a
//! DBA) keep applying to every issuer.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::provider::{Key, Provider, sign};
use common::*;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use tower_jwt_revocation::decode::Issuer;
use tower_jwt_revocation::jsonwebtoken::Algorithm;
use tower_jwt_revocation::receiver::backchannel::BACKCHANNEL_LOGOUT_EVENT;
use tower_jwt_revocation::receiver::ssf::RISC_ACCOUNT_DISABLED;
use tower_jwt_revocation::receiver::{BackChannelLogout, SetReceiver};
use tower_jwt_revocation::{
    CacheMode, Claims, JwtRevocationLayer, MemoryStore, MokaCache, PgStore, RevocationBackend,
    RevocationStore,
};

const CLIENT: &str = "rp-client";
const API: &str = "api";

/// Provider A signs with the P-256 key, B with RSA key A; both name their key `k1`.
async fn providers() -> (Provider, Provider) {
    (
        Provider::start(vec![Key::P256.jwk(Some("k1"), Some("ES256"))]).await,
        Provider::start(vec![Key::RsaA.jwk(Some("k1"), Some("RS256"))]).await,
    )
}

/// An access token of `provider` (A: ES256, B: RS256) for `sub` in session `sid`.
fn access(provider: &Provider, ours: bool, jti: &str, sub: &str, sid: &str, iat: u64) -> String {
    let claims = json!({
        "iss": provider.issuer(), "aud": API, "jti": jti, "sub": sub, "sid": sid,
        "iat": iat, "exp": now() + 600,
    });
    if ours {
        sign(Key::P256, Algorithm::ES256, Some("k1"), &claims)
    } else {
        sign(Key::RsaA, Algorithm::RS256, Some("k1"), &claims)
    }
}

/// An app behind a layer accepting both providers' tokens, over `backend`.
async fn app<B>(backend: B, a: &Provider, b: &Provider) -> Router
where
    B: RevocationBackend + Clone,
{
    async fn me(claims: Claims) -> String {
        claims.sub.unwrap_or_default()
    }
    let layer = JwtRevocationLayer::builder(backend)
        .issuer(Issuer::new(a.issuer(), a.discovered_keys().await).audience([API]))
        .issuer(Issuer::new(b.issuer(), b.discovered_keys().await).audience([API]))
        .build()
        .unwrap();
    Router::new().route("/me", get(me)).layer(layer)
}

async fn status(app: &Router, token: &str) -> StatusCode {
    let request = Request::get("/me")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

async fn becomes(app: &Router, token: &str, expected: StatusCode) {
    wait_until_within(
        &format!("the instance answers {expected}"),
        Duration::from_secs(5),
        || async { status(app, token).await == expected },
    )
    .await;
}

/// A's Back-Channel Logout endpoint at its defaults (keyed as `store` declares), acting on it.
async fn logout_endpoint<S: RevocationBackend>(a: &Provider, store: S) -> BackChannelLogout<S> {
    BackChannelLogout::builder(store, a.issuer(), a.discovered_keys().await, CLIENT)
        .build()
        .unwrap()
}

/// A's SSF receiver at its defaults (keyed as `store` declares), acting on `store`.
async fn set_receiver<S: RevocationBackend>(a: &Provider, store: S) -> SetReceiver<S> {
    SetReceiver::builder(store, a.issuer(), a.discovered_keys().await, CLIENT)
        .build()
        .unwrap()
}

/// A ledger on `pool` whose fleet has declared that it keys by issuer (every instance runs a
/// build that enforces keyed rows).
fn keyed_store(pool: &PgPool) -> PgStore {
    PgStore::new(pool.clone())
        .with_heartbeat(Duration::from_millis(100))
        .with_issuer_keying(true)
}

fn es256(claims: &Value, typ: &str) -> String {
    tower_jwt_revocation::decode::install_crypto_provider();
    let mut header = tower_jwt_revocation::jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.typ = Some(typ.into());
    tower_jwt_revocation::jsonwebtoken::encode(&header, claims, &Key::P256.encoding_key()).unwrap()
}

async fn logout<S>(endpoint: &BackChannelLogout<S>, a: &Provider, jti: &str, sub: &str, sid: Option<&str>)
where
    S: RevocationStore + RevocationBackend,
{
    let mut claims = json!({
        "iss": a.issuer(), "aud": CLIENT, "jti": jti, "sub": sub,
        "iat": now(), "exp": now() + 120, "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    });
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    let body = format!("logout_token={}", es256(&claims, "logout+jwt"));
    let request = Request::post("/backchannel-logout")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let response = endpoint.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn disable_account<S>(receiver: &SetReceiver<S>, a: &Provider, jti: &str, sub: &str)
where
    S: RevocationStore + RevocationBackend,
{
    let claims = json!({
        "iss": a.issuer(), "aud": CLIENT, "jti": jti, "iat": now(),
        "sub_id": {"format": "iss_sub", "iss": a.issuer(), "sub": sub},
        "events": {RISC_ACCOUNT_DISABLED: {}},
    });
    let request = Request::post("/ssf/events")
        .header(header::CONTENT_TYPE, "application/secevent+jwt")
        .body(Body::from(es256(&claims, "secevent+jwt")))
        .unwrap();
    let response = receiver.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// Two instances (lookup and mirror) on one database, both accepting A's and B's tokens: A's
/// logout of session `s-1` and of user `alice`, and A's "account disabled" for `bob`, end A's
/// tokens on both instances; B's `alice` and `bob`, in the same session ids, keep working.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_providers_logouts_never_end_another_providers_user_of_the_same_sub(pool: PgPool) {
    let (a, b) = providers().await;
    let cache = |mode| MokaCache::builder(keyed_store(&pool)).mode(mode).start().unwrap();
    let (lookup, mirror) = (cache(CacheMode::Lookup), cache(CacheMode::Mirror));
    for tier in [&lookup, &mirror] {
        assert!(tier.wait_in_sync(Duration::from_secs(5)).await);
    }
    let instances = [
        app(lookup.clone(), &a, &b).await,
        app(mirror.clone(), &a, &b).await,
    ];
    let earlier = now() - 5;
    let a_session = access(&a, true, "a1", "alice", "s-1", earlier);
    let a_other = access(&a, true, "a2", "alice", "s-2", earlier);
    let a_bob = access(&a, true, "a3", "bob", "s-3", earlier);
    let b_session = access(&b, false, "b1", "alice", "s-1", earlier);
    let b_bob = access(&b, false, "b3", "bob", "s-3", earlier);
    for app in &instances {
        for token in [&a_session, &a_other, &a_bob, &b_session, &b_bob] {
            assert_eq!(status(app, token).await, StatusCode::OK);
        }
    }

    let endpoint = logout_endpoint(&a, lookup.clone()).await;
    logout(&endpoint, &a, "lo-sid", "alice", Some("s-1")).await;
    for app in &instances {
        becomes(app, &a_session, StatusCode::UNAUTHORIZED).await;
        assert_eq!(status(app, &a_other).await, StatusCode::OK);
        assert_eq!(
            status(app, &b_session).await,
            StatusCode::OK,
            "B's s-1 was revoked"
        );
    }

    logout(&endpoint, &a, "lo-sub", "alice", None).await;
    for app in &instances {
        becomes(app, &a_other, StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            status(app, &b_session).await,
            StatusCode::OK,
            "B's alice was revoked"
        );
    }

    disable_account(&set_receiver(&a, mirror.clone()).await, &a, "set-1", "bob").await;
    for app in &instances {
        becomes(app, &a_bob, StatusCode::UNAUTHORIZED).await;
        assert_eq!(status(app, &b_bob).await, StatusCode::OK, "B's bob was revoked");
    }

    // A fresh instance loads the keyed revocations from the ledger, not from the feed.
    let late = cache(CacheMode::Mirror);
    assert!(late.wait_in_sync(Duration::from_secs(5)).await);
    let late = app(late, &a, &b).await;
    for (token, expected) in [
        (&a_session, StatusCode::UNAUTHORIZED),
        (&a_other, StatusCode::UNAUTHORIZED),
        (&a_bob, StatusCode::UNAUTHORIZED),
        (&b_session, StatusCode::OK),
        (&b_bob, StatusCode::OK),
    ] {
        assert_eq!(status(&late, token).await, expected);
    }
}

/// A ban filed without an issuer (by a DBA, or before revocations were keyed) applies to every
/// issuer's user of that `sub`, in every cache mode; so does a session revoked without one.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revocations_without_an_issuer_apply_to_every_issuer(pool: PgPool) {
    let (a, b) = providers().await;
    let earlier = now() - 5;
    let tokens = [
        access(&a, true, "a1", "carol", "s-9", earlier),
        access(&b, false, "b1", "carol", "s-8", earlier),
        access(&a, true, "a2", "dave", "s-7", earlier),
        access(&b, false, "b2", "erin", "s-7", earlier),
    ];
    sqlx::query("INSERT INTO jwt_subject_revocations (subject, not_before) VALUES ('carol', 'infinity')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO jwt_session_revocations (session_id, expires_at) VALUES ('s-7', now() + interval '1 hour')")
        .execute(&pool)
        .await
        .unwrap();
    for mode in [CacheMode::Lookup, CacheMode::Mirror] {
        let tier = MokaCache::builder(keyed_store(&pool)).mode(mode).start().unwrap();
        assert!(tier.wait_in_sync(Duration::from_secs(5)).await);
        let app = app(tier, &a, &b).await;
        for token in &tokens {
            assert_eq!(status(&app, token).await, StatusCode::UNAUTHORIZED, "{mode:?}");
        }
    }
    let app = app(keyed_store(&pool), &a, &b).await;
    for token in &tokens {
        assert_eq!(status(&app, token).await, StatusCode::UNAUTHORIZED, "no cache");
    }
}

/// The same over the in-memory store, for a logout by session and by user.
#[tokio::test]
async fn the_in_memory_store_keys_by_issuer_too() {
    let (a, b) = providers().await;
    let store = MemoryStore::new().with_issuer_keying(true);
    let app = app(store.clone(), &a, &b).await;
    let earlier = now() - 5;
    let a_session = access(&a, true, "a1", "alice", "s-1", earlier);
    let a_other = access(&a, true, "a2", "alice", "s-2", earlier);
    let b_session = access(&b, false, "b1", "alice", "s-1", earlier);
    let endpoint = logout_endpoint(&a, store.clone()).await;
    logout(&endpoint, &a, "lo-sid", "alice", Some("s-1")).await;
    assert_eq!(status(&app, &a_session).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, &a_other).await, StatusCode::OK);
    assert_eq!(
        status(&app, &b_session).await,
        StatusCode::OK,
        "B's s-1 was revoked"
    );
    logout(&endpoint, &a, "lo-sub", "alice", None).await;
    assert_eq!(status(&app, &a_other).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&app, &b_session).await,
        StatusCode::OK,
        "B's alice was revoked"
    );
}

/// A layer that does not key by issuer (one issuer, the default) still enforces revocations
/// keyed by issuer, whichever issuer they name: never too little, whatever wrote them. Over the
/// in-memory store, Postgres without a cache, and the cache in both modes.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_layer_that_does_not_key_still_enforces_keyed_revocations(pool: PgPool) {
    let (a, _b) = providers().await;
    let memory = MemoryStore::new();
    let moka = |mode| {
        MokaCache::builder(PgStore::new(pool.clone()).with_heartbeat(Duration::from_millis(100)))
            .mode(mode)
            .start()
            .unwrap()
    };
    let (lookup, mirror) = (moka(CacheMode::Lookup), moka(CacheMode::Mirror));
    for tier in [&lookup, &mirror] {
        assert!(tier.wait_in_sync(Duration::from_secs(5)).await);
    }
    let apps = [
        single(memory.clone(), &a).await,
        single(PgStore::new(pool.clone()), &a).await,
        single(lookup.clone(), &a).await,
        single(mirror.clone(), &a).await,
    ];
    let earlier = now() - 5;
    let session = access(&a, true, "a1", "alice", "s-1", earlier);
    let user = access(&a, true, "a2", "bob", "s-2", earlier);
    for app in &apps {
        // Remembered "not revoked" first, so the keyed revocation must clear it.
        assert_eq!(status(app, &session).await, StatusCode::OK);
        assert_eq!(status(app, &user).await, StatusCode::OK);
    }
    let at = std::time::SystemTime::now();
    let until = at + Duration::from_secs(3600);
    for store in [&memory as &dyn Revoke, &lookup] {
        store
            .revoke_keyed(tower_jwt_revocation::Revocation::session("s-1", until).issuer(a.issuer().as_str()))
            .await;
        store
            .revoke_keyed(
                tower_jwt_revocation::Revocation::subject("bob", at).issuer("https://another.example"),
            )
            .await;
    }
    for app in &apps {
        becomes(app, &session, StatusCode::UNAUTHORIZED).await;
        becomes(app, &user, StatusCode::UNAUTHORIZED).await;
    }
}

/// An app behind a layer accepting `a`'s tokens only (so not keying by issuer), over `backend`.
async fn single<B: RevocationBackend + Clone>(backend: B, a: &Provider) -> Router {
    async fn me(claims: Claims) -> String {
        assert_eq!(claims.revocation_issuer(), None);
        claims.sub.unwrap_or_default()
    }
    let layer = JwtRevocationLayer::builder(backend)
        .issuer(Issuer::new(a.issuer(), a.discovered_keys().await).audience([API]))
        .build()
        .unwrap();
    Router::new().route("/me", get(me)).layer(layer)
}

/// Object-safe `revoke` for the test's two kinds of store.
trait Revoke {
    fn revoke_keyed<'a>(
        &'a self,
        revocation: tower_jwt_revocation::Revocation<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;
}

impl<S: RevocationStore> Revoke for S {
    fn revoke_keyed<'a>(
        &'a self,
        revocation: tower_jwt_revocation::Revocation<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
        Box::pin(async move {
            assert!(self.revoke(&revocation).await.unwrap());
        })
    }
}

/// A handler's "log out everywhere" and "end this session" in a layer with two issuers are
/// keyed by the token's issuer: they end that provider's user only.
#[tokio::test]
async fn the_claims_helpers_key_by_the_tokens_issuer() {
    let (a, b) = providers().await;
    let store = MemoryStore::new().with_issuer_keying(true);
    let layer = JwtRevocationLayer::builder(store.clone())
        .issuer(Issuer::new(a.issuer(), a.discovered_keys().await).audience([API]))
        .issuer(Issuer::new(b.issuer(), b.discovered_keys().await).audience([API]))
        .build()
        .unwrap();
    let handler_store = store.clone();
    let logout_everywhere = move |claims: Claims| {
        let store = handler_store.clone();
        async move {
            let session = claims.session_revocation(Duration::from_secs(600)).unwrap();
            let everywhere = claims.subject_revocation().unwrap();
            assert_eq!(session.issuer, claims.revocation_issuer());
            assert_eq!(everywhere.issuer, claims.revocation_issuer());
            store.revoke(&session).await.unwrap();
            store.revoke(&everywhere).await.unwrap();
            claims.revocation_issuer().unwrap_or_default().to_owned()
        }
    };
    let app = Router::new()
        .route(
            "/me",
            get(|claims: Claims| async move { claims.sub.unwrap_or_default() }),
        )
        .route("/logout", get(logout_everywhere))
        .layer(layer);
    let earlier = now() - 5;
    let a_token = access(&a, true, "a1", "alice", "s-1", earlier);
    let b_token = access(&b, false, "b1", "alice", "s-1", earlier);
    let request = Request::get("/logout")
        .header(AUTHORIZATION, format!("Bearer {a_token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(status(&app, &a_token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, &b_token).await, StatusCode::OK);
}

/// Keying follows the store's declaration by default (off unless the fleet declared it: a build
/// that predates keying must enforce whatever this one files), keys every layer that knows its
/// issuer once declared, can be set either way per layer, and cannot be asked of a layer that
/// does not know its issuer.
#[tokio::test]
async fn which_layers_key_by_issuer() {
    use tower_jwt_revocation::ConfigError;
    use tower_jwt_revocation::jsonwebtoken::DecodingKey;

    let (a, b) = providers().await;
    let token = access(&a, true, "a1", "alice", "s-1", now() - 5);
    let issuer_of = |builder: tower_jwt_revocation::JwtRevocationBuilder<MemoryStore>| {
        let token = token.clone();
        async move {
            let app = Router::new()
                .route(
                    "/me",
                    get(|claims: Claims| async move { claims.revocation_issuer().unwrap_or("-").to_owned() }),
                )
                .layer(builder.build().unwrap());
            let request = Request::get("/me")
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let body = app.oneshot(request).await.unwrap().into_body();
            let bytes = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    let one = |store: MemoryStore| {
        let keys = a.discovered_keys();
        async {
            JwtRevocationLayer::builder(store).issuer(Issuer::new(a.issuer(), keys.await).audience([API]))
        }
    };
    let two = |store| async {
        one(store)
            .await
            .issuer(Issuer::new(b.issuer(), b.discovered_keys().await).audience([API]))
    };
    let (plain, keyed) = (MemoryStore::new, || MemoryStore::new().with_issuer_keying(true));
    // Undeclared: no layer keys unless told to.
    assert_eq!(issuer_of(two(plain()).await).await, "-");
    assert_eq!(issuer_of(one(plain()).await).await, "-");
    assert_eq!(
        issuer_of(two(plain()).await.key_revocations_by_issuer(true)).await,
        a.issuer()
    );
    assert_eq!(
        issuer_of(one(plain()).await.key_revocations_by_issuer(true)).await,
        a.issuer()
    );
    // Declared: every layer that knows its issuer keys, unless told not to.
    assert_eq!(issuer_of(two(keyed()).await).await, a.issuer());
    assert_eq!(issuer_of(one(keyed()).await).await, a.issuer());
    assert_eq!(
        issuer_of(two(keyed()).await.key_revocations_by_issuer(false)).await,
        "-"
    );
    let anonymous = JwtRevocationLayer::builder(keyed())
        .decoding_key(DecodingKey::from_secret(b"secret"))
        .build();
    assert!(
        anonymous.is_ok(),
        "a layer that cannot key does not, whatever the store says"
    );
    // A discovered key set names its issuer too.
    let discovered = JwtRevocationLayer::builder(MemoryStore::new())
        .jwks(a.discovered_keys().await)
        .validation({
            let mut validation = tower_jwt_revocation::jsonwebtoken::Validation::new(Algorithm::ES256);
            validation.set_audience(&[API]);
            validation
        })
        .key_revocations_by_issuer(true);
    assert_eq!(issuer_of(discovered).await, a.issuer());
    let unknown = JwtRevocationLayer::builder(MemoryStore::new())
        .decoding_key(DecodingKey::from_secret(b"secret"))
        .key_revocations_by_issuer(true)
        .build();
    assert!(matches!(unknown, Err(ConfigError::KeyedWithoutIssuer)));
    // No store can file a revocation under an empty issuer.
    let empty = two(keyed())
        .await
        .issuer(Issuer::new("", DecodingKey::from_secret(b"secret")))
        .build();
    assert!(matches!(empty, Err(ConfigError::UnkeyableIssuer(name)) if name.is_empty()));
    // Nor a receiver filing under one (every message would be refused, never retried).
    let receiver = BackChannelLogout::builder(MemoryStore::new(), "", a.discovered_keys().await, CLIENT)
        .key_by_issuer(true)
        .build();
    assert!(matches!(receiver, Err(ConfigError::UnkeyableIssuer(_))));
    let receiver = SetReceiver::builder(keyed(), "a\0b", a.discovered_keys().await, CLIENT).build();
    assert!(
        matches!(receiver, Err(ConfigError::UnkeyableIssuer(_))),
        "keyed by the store's declaration"
    );
}

/// What no store can key by: an empty issuer, or one holding a NUL.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn an_issuer_that_cannot_be_stored_is_refused(pool: PgPool) {
    use tower_jwt_revocation::{Revocation, StoreError};
    let until = std::time::SystemTime::now() + Duration::from_secs(60);
    let bad = [
        Revocation::session("s", until).issuer(""),
        Revocation::subject("u", until).issuer("a\0b"),
    ];
    for revocation in &bad {
        let memory = MemoryStore::new().revoke(revocation).await;
        let postgres = PgStore::new(pool.clone()).revoke(revocation).await;
        assert!(matches!(memory, Err(StoreError::InvalidInput(_))), "{memory:?}");
        assert!(
            matches!(postgres, Err(StoreError::InvalidInput(_))),
            "{postgres:?}"
        );
    }
    // A token revocation ignores the issuer: a `jti` is unique across issuers.
    let token = Revocation::token("t", until).issuer("");
    assert!(MemoryStore::new().revoke(&token).await.unwrap());
}

/// Keyed cutoffs only move forward and are purged like unkeyed ones; keyed sessions are purged
/// once expired.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn keyed_rows_move_forward_and_are_purged(pool: PgPool) {
    use std::time::{SystemTime, UNIX_EPOCH};
    use tower_jwt_revocation::{Revocation, TokenFacts, Verdict};
    let store = PgStore::new(pool.clone()).with_max_token_lifetime(Duration::from_secs(3600));
    let issuer = "https://a.example";
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    assert!(
        store
            .revoke(&Revocation::subject("u", at(2_000)).issuer(issuer))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke(&Revocation::subject("u", at(1_000)).issuer(issuer))
            .await
            .unwrap()
    );
    let facts = |iat, issuer| TokenFacts {
        jti: Some("t"),
        subject: Some("u"),
        issued_at: Some(iat),
        issuer,
        ..TokenFacts::default()
    };
    let verdict = |facts: TokenFacts<'static>| store.check(&facts);
    assert_ne!(
        verdict(facts(1_500, Some(issuer))).await.unwrap(),
        Verdict::Active
    );
    assert_eq!(
        verdict(facts(1_500, Some("https://b.example"))).await.unwrap(),
        Verdict::Active
    );
    assert_ne!(verdict(facts(1_500, None)).await.unwrap(), Verdict::Active);
    assert_eq!(
        verdict(facts(2_001, Some(issuer))).await.unwrap(),
        Verdict::Active
    );
    let long_ago = SystemTime::now() - Duration::from_secs(7200);
    assert!(
        store
            .revoke(&Revocation::session("s", long_ago).issuer(issuer))
            .await
            .unwrap()
    );
    assert_eq!(store.purge_expired(Duration::from_secs(60)).await.unwrap(), 2);
    assert!(store.list_by_subject("u", 10).await.unwrap().is_empty());
}

/// Issue 24, item 2. A receiver for provider A at its default, beside a layer that keys by
/// issuer over the same store: A logs out "alice" and B's "alice" keeps working. Failed on
/// `main`: the receiver filed an unkeyed cutoff, so A could end every token of B's user.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_receiver_at_its_default_keys_the_way_the_layers_over_its_store_do(pool: PgPool) {
    let (a, b) = providers().await;
    let store = keyed_store(&pool);
    let instance = app(store.clone(), &a, &b).await;
    let a_alice = access(&a, true, "a1", "alice", "s-1", now() - 5);
    let b_alice = access(&b, false, "b1", "alice", "s-9", now() - 5);
    let endpoint = BackChannelLogout::builder(store.clone(), a.issuer(), a.discovered_keys().await, CLIENT)
        .build()
        .unwrap();
    logout(&endpoint, &a, "lo-default", "alice", None).await;
    assert_eq!(status(&instance, &a_alice).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&instance, &b_alice).await,
        StatusCode::OK,
        "A ended B's alice"
    );

    let receiver = SetReceiver::builder(store.clone(), a.issuer(), a.discovered_keys().await, CLIENT)
        .build()
        .unwrap();
    let b_bob = access(&b, false, "b3", "bob", "s-3", now() - 5);
    disable_account(&receiver, &a, "set-default", "bob").await;
    assert_eq!(status(&instance, &b_bob).await, StatusCode::OK, "A ended B's bob");
}
