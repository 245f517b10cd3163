//! `PgStore` against a real Postgres: each test gets its own fresh database with the crate's
//! migrations applied (`#[sqlx::test]`).

mod common;

use std::time::{Duration, Instant, SystemTime};
use tower_jwt_revocation::Revocation;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::*;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tower::ServiceExt;
use tower_jwt_revocation::backend::from_unix_seconds;
use tower_jwt_revocation::backend::postgres::LISTENER_APPLICATION_NAME;
use tower_jwt_revocation::jsonwebtoken::DecodingKey;
use tower_jwt_revocation::{
    Claims, FailurePolicy, FeedItem, JwtRevocationLayer, PgStore, RevocationBackend, RevocationEvent,
    RevocationKind, RevocationStore, StoreError, Subscription, TokenFacts, Verdict,
};

const MIGRATOR: &str = "tower_jwt_revocation::backend::postgres::MIGRATOR";

/// A second, independent pool on the test's database: another process, as far as Postgres knows.
async fn new_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap()
}

fn app(store: PgStore, policy: FailurePolicy) -> Router {
    async fn me(claims: Claims) -> String {
        claims.sub.unwrap_or_default()
    }
    let layer = JwtRevocationLayer::builder(store)
        .decoding_key(DecodingKey::from_secret(SECRET))
        .failure_policy(policy)
        .build()
        .unwrap();
    Router::new().route("/me", get(me)).layer(layer)
}

async fn status(app: &Router, token: &str) -> StatusCode {
    let req = Request::get("/me")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(req).await.unwrap().status()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn facts(jti: &str) -> TokenFacts<'_> {
    TokenFacts {
        jti: Some(jti),
        ..TokenFacts::default()
    }
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revocation_survives_a_restart_and_is_enforced_by_the_layer(pool: PgPool) {
    let _ = MIGRATOR;
    let token = mint(claims("r1", "alice"));
    {
        let first = PgStore::new(new_pool(&pool).await);
        assert_eq!(
            status(&app(first.clone(), FailurePolicy::Closed), &token).await,
            StatusCode::OK
        );
        assert!(
            first
                .revoke(
                    &Revocation::token("r1", in_an_hour())
                        .owner("alice")
                        .reason("logout")
                )
                .await
                .unwrap()
        );
        first.pool().close().await;
    }
    let restarted = PgStore::new(new_pool(&pool).await);
    assert_eq!(
        restarted.check(&facts("r1")).await.unwrap(),
        Verdict::Revoked(tower_jwt_revocation::RevokedBy::Token)
    );
    assert_eq!(
        status(&app(restarted, FailurePolicy::Closed), &token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revoking_twice_or_concurrently_keeps_one_row(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    assert!(
        store
            .revoke(&Revocation::token("twice", in_an_hour()))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke(&Revocation::token("twice", in_an_hour()))
            .await
            .unwrap()
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jwt_revocations WHERE jti = 'twice'").await,
        1
    );

    let racers: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .revoke(&Revocation::token("raced", in_an_hour()).owner("bob"))
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for racer in racers {
        created += usize::from(racer.await.unwrap().expect("a concurrent revoke never errors"));
    }
    assert_eq!(created, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jwt_revocations WHERE jti = 'raced'").await,
        1
    );
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn session_and_subject_revocations_are_enforced(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    let app = app(store.clone(), FailurePolicy::Closed);
    let cutoff = now() - 100;
    let issued =
        |jti: &str, iat: u64| mint(json!({"jti": jti, "sub": "carol", "iat": iat, "exp": now() + 600}));
    let (before, same, after) = (
        issued("b", cutoff - 1),
        issued("s", cutoff),
        issued("a", cutoff + 1),
    );
    let in_session =
        mint(json!({"jti": "x", "sub": "dan", "sid": "sess-1", "iat": now(), "exp": now() + 600}));

    store
        .revoke(&Revocation::subject("carol", from_unix_seconds(cutoff)).reason("password change"))
        .await
        .unwrap();
    store
        .revoke(&Revocation::session("sess-1", in_an_hour()).owner("dan"))
        .await
        .unwrap();
    assert_eq!(status(&app, &before).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, &same).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, &after).await, StatusCode::OK);
    assert_eq!(status(&app, &in_session).await, StatusCode::UNAUTHORIZED);

    // An earlier cutoff does not move it back.
    store
        .revoke(&Revocation::subject("carol", from_unix_seconds(cutoff - 50)))
        .await
        .unwrap();
    assert_eq!(status(&app, &before).await, StatusCode::UNAUTHORIZED);
    let stored: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM not_before)::int8 FROM jwt_subject_revocations WHERE subject = 'carol'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored as u64, cutoff);
    // A later one does move it forward.
    store
        .revoke(&Revocation::subject("carol", from_unix_seconds(cutoff + 1)))
        .await
        .unwrap();
    assert_eq!(status(&app, &after).await, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn list_by_subject_is_newest_first(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    for jti in ["one", "two", "three"] {
        store
            .revoke(&Revocation::token(jti, in_an_hour()).owner("erin"))
            .await
            .unwrap();
    }
    store
        .revoke(&Revocation::session("sess", in_an_hour()).owner("erin"))
        .await
        .unwrap();
    store
        .revoke(&Revocation::token("other", in_an_hour()).owner("frank"))
        .await
        .unwrap();
    let keys: Vec<(RevocationKind, String)> = store
        .list_by_subject("erin", 3)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, r.key))
        .collect();
    assert_eq!(
        keys,
        [
            (RevocationKind::Session, "sess".into()),
            (RevocationKind::Token, "three".into()),
            (RevocationKind::Token, "two".into())
        ]
    );
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn purge_deletes_exactly_the_rows_past_expiry_plus_margin(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    // 2 500 long-expired token rows (several purge batches), some sessions, and rows on both
    // sides of the margin.
    sqlx::query(
        "INSERT INTO jwt_revocations (jti, expires_at) \
         SELECT 'old-' || i, now() - interval '2 hours' FROM generate_series(1, 2500) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jwt_session_revocations (session_id, expires_at) \
         SELECT 'old-session-' || i, now() - interval '2 hours' FROM generate_series(1, 10) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let now = SystemTime::now();
    store
        .revoke(&Revocation::token(
            "inside-margin",
            now - Duration::from_secs(30 * 60),
        ))
        .await
        .unwrap();
    store
        .revoke(&Revocation::token("live", now + Duration::from_secs(600)))
        .await
        .unwrap();
    store.revoke(&Revocation::subject("gina", now)).await.unwrap();

    let deleted = store.purge_expired(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(deleted, 2510);
    assert_eq!(count(&pool, "SELECT count(*) FROM jwt_revocations").await, 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jwt_session_revocations").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jwt_subject_revocations").await,
        1
    );
    assert_eq!(
        store.purge_expired(Duration::from_secs(10 * 60)).await.unwrap(),
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jwt_revocations WHERE jti = 'live'").await,
        1
    );
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn purger_task_purges_until_dropped(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    let purger =
        tower_jwt_revocation::spawn_purger(store.clone(), Duration::from_millis(20), Duration::ZERO).unwrap();
    store
        .revoke(&Revocation::token(
            "expired",
            SystemTime::now() - Duration::from_secs(5),
        ))
        .await
        .unwrap();
    wait_until("the purger deletes the expired row", || async {
        count(&pool, "SELECT count(*) FROM jwt_revocations").await == 0
    })
    .await;
    drop(purger);
    store
        .revoke(&Revocation::token(
            "expired-2",
            SystemTime::now() - Duration::from_secs(5),
        ))
        .await
        .unwrap();
    // The dropped purger's task is aborted: the row stays (checked after a few of its periods).
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM jwt_revocations").await, 1);
}

async fn next_event(feed: &mut Subscription) -> RevocationEvent {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
            Ok(Some(FeedItem::Event(event))) => return event,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("feed ended"),
            Err(_) => panic!("no event within 5 s"),
        }
    }
}

async fn next_in_sync(feed: &mut Subscription) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
            Ok(Some(FeedItem::InSync { .. } | FeedItem::InSyncAt { .. })) => return,
            Ok(Some(FeedItem::Event(event))) => panic!("unexpected event {event:?}"),
            Ok(Some(FeedItem::Disconnected(_))) => continue,
            Ok(None) => panic!("feed ended"),
            Err(_) => panic!("not in sync within 5 s"),
        }
    }
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn subscribers_see_revocations_from_the_store_and_from_plain_sql(pool: PgPool) {
    let writer = PgStore::new(pool.clone());
    let reader = PgStore::new(new_pool(&pool).await).with_heartbeat(Duration::from_millis(100));
    let mut feed = reader.subscribe().unwrap();
    next_in_sync(&mut feed).await;

    writer
        .revoke(
            &Revocation::token("via-store", in_an_hour())
                .owner("hana")
                .reason("logout")
                .revoked_by("hana"),
        )
        .await
        .unwrap();
    let event = next_event(&mut feed).await;
    assert_eq!(
        (event.record.kind, event.record.key.as_str()),
        (RevocationKind::Token, "via-store")
    );
    assert_eq!(event.record.reason.as_deref(), Some("logout"));
    assert!(event.record.expires_at.is_some());

    sqlx::query("INSERT INTO jwt_revocations (jti, subject, expires_at) VALUES ('via-psql', 'ivan', now() + interval '1 hour')")
        .execute(&pool)
        .await
        .unwrap();
    let event = next_event(&mut feed).await;
    assert_eq!(event.record.key, "via-psql");
    assert_eq!(event.record.subject.as_deref(), Some("ivan"));

    writer
        .revoke(&Revocation::subject("jane", SystemTime::now()))
        .await
        .unwrap();
    let event = next_event(&mut feed).await;
    assert_eq!(event.record.kind, RevocationKind::Subject);
    assert!(event.record.not_before.is_some());

    // A key too long for a NOTIFY payload still arrives, read back by seq.
    let long = "k".repeat(9000);
    writer
        .revoke(&Revocation::token(&long, in_an_hour()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut feed).await.record.key, long);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn subscriber_delivers_what_was_written_while_its_connection_was_down(pool: PgPool) {
    let writer = PgStore::new(pool.clone());
    let reader = PgStore::new(new_pool(&pool).await)
        .with_heartbeat(Duration::from_millis(100))
        .with_timeout(Duration::from_millis(500));
    let mut feed = reader.subscribe().unwrap();
    next_in_sync(&mut feed).await;
    writer
        .revoke(&Revocation::token("before", in_an_hour()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut feed).await.record.key, "before");

    // Keep the listener from reconnecting while we write, then kill it.
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut admin = pool.acquire().await.unwrap();
    // A database cannot lock itself out: the switch is thrown from the maintenance database.
    let maintenance_options = pool.connect_options().as_ref().clone().database("postgres");
    let mut maintenance = sqlx::PgConnection::connect_with(&maintenance_options)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&mut maintenance)
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_one(&mut *admin)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .unwrap()
            .unwrap()
        {
            FeedItem::Disconnected(_) => break,
            FeedItem::InSync { .. } | FeedItem::InSyncAt { .. } => continue,
            FeedItem::Event(event) => panic!("unexpected event {event:?}"),
        }
    }
    for jti in ["while-down-1", "while-down-2"] {
        sqlx::query("INSERT INTO jwt_revocations (jti, expires_at) VALUES ($1, now() + interval '1 hour')")
            .bind(jti)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .execute(&mut maintenance)
        .await
        .unwrap();
    drop(admin);

    assert_eq!(next_event(&mut feed).await.record.key, "while-down-1");
    assert_eq!(next_event(&mut feed).await.record.key, "while-down-2");
    writer
        .revoke(&Revocation::token("after", in_an_hour()))
        .await
        .unwrap();
    assert_eq!(next_event(&mut feed).await.record.key, "after");
}

#[tokio::test]
async fn unreachable_database_is_an_error_within_the_timeout_and_follows_the_policy() {
    // Nothing listens on port 1: every connection attempt is refused.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let store = PgStore::new(pool).with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let error = store.check(&facts("any")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, StoreError::Unavailable(_) | StoreError::Timeout(_)),
        "{error:?}"
    );
    assert!(
        store
            .revoke(&Revocation::token("any", in_an_hour()))
            .await
            .is_err()
    );

    let token = mint(claims("down", "kim"));
    assert_eq!(
        status(&app(store.clone(), FailurePolicy::Closed), &token).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(&app(store, FailurePolicy::Open), &token).await,
        StatusCode::OK
    );
}

/// Subject cutoffs used to be kept for ever: a user base that ever logged out everywhere grew
/// the table (and every mirror) for good. With the longest token lifetime known, a purge drops
/// the cutoffs whose every token has expired; bans (`'infinity'`) and recent cutoffs stay.
/// Without it, nothing changes.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn purge_drops_subject_cutoffs_older_than_the_longest_token_lifetime(pool: PgPool) {
    sqlx::query(
        "INSERT INTO jwt_subject_revocations (subject, not_before) \
         SELECT 'old-' || i, now() - interval '3 hours' FROM generate_series(1, 2500) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jwt_subject_revocations (subject, not_before) VALUES \
         ('banned', 'infinity'), ('ancient', '-infinity'), ('recent', now() - interval '90 minutes')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let subjects = || count(&pool, "SELECT count(*) FROM jwt_subject_revocations");
    let store = PgStore::new(pool.clone());
    assert_eq!(store.purge_expired(Duration::from_secs(600)).await.unwrap(), 0);
    assert_eq!(subjects().await, 2503);
    // Tokens live at most two hours; with a 10 min margin, cutoffs older than 130 min go.
    let store = store.with_max_token_lifetime(Duration::from_secs(2 * 3600));
    let deleted = store.purge_expired(Duration::from_secs(600)).await.unwrap();
    assert_eq!(deleted, 2501, "2 500 three hours old and the '-infinity' one");
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM jwt_subject_revocations ORDER BY subject")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kept, ["banned", "recent"]);
    // Saturating settings are clamped, never a query error.
    let store = PgStore::new(pool.clone()).with_max_token_lifetime(Duration::MAX);
    assert_eq!(store.purge_expired(Duration::MAX).await.unwrap(), 0);
}

/// Issue 24, item 3. Lifetime 3600 s and the default 60 s leeway: a token issued at the cutoff
/// (t-3700) with `exp` t-40 is still accepted by the layer (`exp - iat` = lifetime + leeway,
/// `exp` + leeway in the future), so `purge_expired` with the leeway as margin must keep the
/// cutoff that revokes it. Failed on `main` for both stores: the cutoff was purged one leeway
/// early and the token answered 200.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_purge_keeps_every_cutoff_a_still_valid_token_needs(pool: PgPool) {
    let lifetime = Duration::from_secs(3600);
    let cutoff = from_unix_seconds(now() - 3700);
    let token = mint(json!({"jti": "t", "sub": "alice", "iat": now() - 3700, "exp": now() - 40}));
    async fn status<B: tower_jwt_revocation::RevocationBackend + Clone>(
        backend: B,
        lifetime: Duration,
        token: &str,
    ) -> StatusCode {
        async fn me(claims: Claims) -> String {
            claims.sub.unwrap_or_default()
        }
        let layer = JwtRevocationLayer::builder(backend)
            .decoding_key(DecodingKey::from_secret(SECRET))
            .max_token_lifetime(lifetime)
            .build()
            .unwrap();
        let request = Request::get("/me")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        Router::new()
            .route("/me", get(me))
            .layer(layer)
            .oneshot(request)
            .await
            .unwrap()
            .status()
    }
    let pg = PgStore::new(pool.clone()).with_max_token_lifetime(lifetime);
    let memory = tower_jwt_revocation::MemoryStore::new().with_max_token_lifetime(lifetime);
    pg.revoke(&Revocation::subject("alice", cutoff)).await.unwrap();
    memory
        .revoke(&Revocation::subject("alice", cutoff))
        .await
        .unwrap();
    assert_eq!(
        status(pg.clone(), lifetime, &token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(memory.clone(), lifetime, &token).await,
        StatusCode::UNAUTHORIZED
    );
    pg.purge_expired(Duration::from_secs(60)).await.unwrap();
    memory.purge_expired(Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        status(pg, lifetime, &token).await,
        StatusCode::UNAUTHORIZED,
        "PgStore purged it"
    );
    assert_eq!(
        status(memory, lifetime, &token).await,
        StatusCode::UNAUTHORIZED,
        "MemoryStore purged it"
    );
}
