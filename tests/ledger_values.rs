//! Any value a DBA can write into the ledger, or an issuer into a token, is handled: nothing
//! panics, `'infinity'` means "until deleted by hand", and enforcement goes on for every other
//! row.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower_jwt_revocation::Revocation;

use common::cluster::{Settings, lookup_and_mirror};
use common::*;
use http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tower_jwt_revocation::backend::{far_future, from_unix_seconds};
use tower_jwt_revocation::{
    CacheMode, FailurePolicy, Ledger, MemoryStore, PgStore, RevocationBackend, RevocationKind,
    RevocationStore, TokenFacts, Verdict,
};

/// Rows as a DBA might write them with `psql`: infinite and negative-infinite times, a cutoff
/// that bans a subject for good, a reason too long for a notification.
const HOSTILE_ROWS: &str = "
    INSERT INTO jwt_revocations (jti, subject, expires_at) VALUES ('inf-jti', 'dora', 'infinity');
    INSERT INTO jwt_revocations (jti, subject, expires_at) VALUES ('neg-jti', 'dora', '-infinity');
    INSERT INTO jwt_revocations (jti, subject, expires_at, revoked_at)
        VALUES ('future-revoked-at', 'dora', now() + interval '1 hour', 'infinity');
    INSERT INTO jwt_revocations (jti, subject, expires_at, reason)
        VALUES ('long-reason', 'dora', now() + interval '1 hour', repeat('r', 9000));
    INSERT INTO jwt_session_revocations (session_id, subject, expires_at) VALUES ('inf-sid', 'dora', 'infinity');
    INSERT INTO jwt_subject_revocations (subject, not_before) VALUES ('erin', 'infinity');
    INSERT INTO jwt_subject_revocations (subject, not_before) VALUES ('fred', '-infinity');
";

async fn write_hostile_rows(pool: &PgPool) {
    sqlx::raw_sql(HOSTILE_ROWS).execute(pool).await.unwrap();
}

fn token(jti: &str, sub: &str, sid: Option<&str>) -> String {
    let mut claims = claims(jti, sub);
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    mint(claims)
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn extreme_times_written_by_hand_read_back_without_panicking(pool: PgPool) {
    write_hostile_rows(&pool).await;
    let store = PgStore::new(pool.clone());

    let dora = store.list_by_subject("dora", 10).await.unwrap();
    let by_key = |key: &str| dora.iter().find(|r| r.key == key).unwrap().clone();
    assert_eq!(by_key("inf-jti").expires_at, Some(far_future()));
    assert!(by_key("neg-jti").expires_at.unwrap() <= UNIX_EPOCH);
    assert_eq!(by_key("future-revoked-at").revoked_at, far_future());
    assert_eq!(by_key("inf-sid").kind, RevocationKind::Session);
    assert_eq!(by_key("inf-sid").expires_at, Some(far_future()));
    let erin = store.list_by_subject("erin", 10).await.unwrap();
    assert_eq!(erin[0].not_before, Some(far_future()));

    // The change feed's catch-up and the mirror's snapshot read the same rows.
    assert_eq!(store.events_since(0, 100).await.unwrap().len(), 7);
    let snapshot = store.snapshot().await.unwrap();
    assert!(snapshot.records.iter().any(|r| r.key == "inf-jti"));

    // One check answers for all three keys; an infinite cutoff revokes every token of erin,
    // a negative-infinite one none that carries an `iat`.
    let check = |jti: &'static str, sid: Option<&'static str>, sub: &'static str| {
        let store = store.clone();
        async move {
            let facts = TokenFacts {
                jti: Some(jti),
                session_id: sid,
                subject: Some(sub),
                issued_at: Some(now()),
                expires_at: Some(now() + 600),
                issuer: None,
            };
            store.check(&facts).await.unwrap()
        }
    };
    assert!(matches!(
        check("inf-jti", None, "dora").await,
        Verdict::Revoked(_)
    ));
    assert!(matches!(
        check("x", Some("inf-sid"), "dora").await,
        Verdict::Revoked(_)
    ));
    assert!(matches!(check("y", None, "erin").await, Verdict::Revoked(_)));
    assert_eq!(check("z", None, "fred").await, Verdict::Active);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn times_beyond_the_database_range_are_stored_as_infinity(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    assert!(
        store
            .revoke(&Revocation::token("far", far_future()))
            .await
            .unwrap()
    );
    let long_ago = UNIX_EPOCH - Duration::from_secs(1 << 40);
    assert!(
        store
            .revoke(&Revocation::token("ancient", long_ago))
            .await
            .unwrap()
    );
    store
        .revoke(&Revocation::subject("zed", far_future()))
        .await
        .unwrap();
    let infinite: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM jwt_revocation_log WHERE expires_at = 'infinity' OR not_before = 'infinity' ORDER BY key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(infinite, ["far", "zed"]);
    let ancient: bool =
        sqlx::query_scalar("SELECT expires_at = '-infinity' FROM jwt_revocations WHERE jti = 'ancient'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ancient);
}

/// Reproduced on `main` before the fix: the first hostile row panicked the change feed's task
/// (`Duration::from_secs_f64` of an infinite epoch), after which both instances kept answering
/// 200 for a token revoked by plain SQL (the mirror until `max_staleness`, 10 s here).
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn hostile_rows_do_not_stop_enforcement_on_any_instance(pool: PgPool) {
    let settings = Settings {
        max_staleness: Duration::from_secs(10),
        ..Settings::default()
    };
    let (lookup, mirror) = lookup_and_mirror(&pool, settings).await;
    let later = token("revoked-later", "hank", None);
    for instance in [&lookup, &mirror] {
        // Cached as "not revoked" by the lookup instance.
        assert_eq!(instance.status(&later).await, StatusCode::OK);
    }

    write_hostile_rows(&pool).await;
    let bound = Duration::from_secs(2);
    let refused = [
        token("inf-jti", "dora", None),
        token("neg-jti", "dora", None),
        token("long-reason", "dora", None),
        token("other", "dora", Some("inf-sid")),
        token("banned", "erin", None),
    ];
    for instance in [&lookup, &mirror] {
        for token in &refused {
            instance
                .becomes_within(token, StatusCode::UNAUTHORIZED, bound)
                .await;
        }
        assert_eq!(
            instance.status(&token("fine", "fred", None)).await,
            StatusCode::OK
        );
    }

    // Enforcement goes on: a revocation written by plain SQL after them reaches both.
    sqlx::query(
        "INSERT INTO jwt_revocations (jti, subject, expires_at) VALUES ('revoked-later', 'hank', now() + interval '1 hour')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for instance in [&lookup, &mirror] {
        instance
            .becomes_within(&later, StatusCode::UNAUTHORIZED, bound)
            .await;
        assert!(instance.cache.is_in_sync());
        let dora = instance.cache.list_by_subject("dora", 10).await.unwrap();
        assert_eq!(dora.len(), 5);
    }
}

/// Reproduced on `main` before the fix: `from_unix_seconds(u64::MAX)` and the cache's deadline
/// for a token expiring past the clock's range panicked (`SystemTime` overflow).
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn tokens_expiring_past_any_clock_are_revoked_without_panicking(pool: PgPool) {
    let a = common::cluster::instance(&pool, "a", CacheMode::Lookup, FailurePolicy::Closed).await;
    let b = common::cluster::instance(&pool, "b", CacheMode::Lookup, FailurePolicy::Closed).await;
    for (jti, exp) in [("max", u64::MAX), ("past-i64", i64::MAX as u64 + 1)] {
        let token = mint(json!({"jti": jti, "sub": "ivy", "iat": now(), "exp": exp}));
        assert_eq!(a.status(&token).await, StatusCode::OK);
        a.cache
            .revoke(&Revocation::token(jti, from_unix_seconds(exp)).owner("ivy"))
            .await
            .unwrap();
        assert_eq!(a.status(&token).await, StatusCode::UNAUTHORIZED);
        b.becomes(&token, StatusCode::UNAUTHORIZED).await;
    }

    // The in-memory store keeps such a revocation through purges.
    let memory = MemoryStore::new();
    memory
        .revoke(&Revocation::token("max", from_unix_seconds(u64::MAX)))
        .await
        .unwrap();
    memory.purge_expired(Duration::from_secs(3600)).await.unwrap();
    let facts = TokenFacts {
        jti: Some("max"),
        ..TokenFacts::default()
    };
    assert!(matches!(memory.try_check(&facts), Some(Ok(Verdict::Revoked(_)))));
    assert!(SystemTime::now() < from_unix_seconds(u64::MAX));
}
