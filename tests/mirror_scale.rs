//! Mirror mode at scale, against a real Postgres: a live set far larger than the moka maps'
//! `max_capacity`, written by plain SQL as a bulk load would, held compactly and answered with
//! no ledger query for unrevoked tokens; through a database outage; re-read (promoted back from a
//! fallback, shrunk after a purge).

mod common;

use std::time::Duration;

use common::cluster::{allow_connections, maintenance, terminate};
use common::*;
use sqlx::PgPool;
use tower_jwt_revocation::{
    CacheMode, MokaCache, PgStore, RevocationBackend, RevokedBy, StoreError, TokenFacts, Verdict,
};

/// Writes `tokens` token revocations (`bulk-t-<i>`), `sessions` session revocations
/// (`bulk-s-<i>`) and `subjects` subject cutoffs an hour ago (`bulk-u-<i>`) in three statements,
/// the way a DBA or a migration from another system would.
async fn bulk_load(pool: &PgPool, tokens: i64, sessions: i64, subjects: i64) {
    sqlx::query(
        "INSERT INTO jwt_revocations (jti, subject, expires_at) \
         SELECT 'bulk-t-' || i, 'bulk-u-' || (i % 1000), now() + interval '1 hour' FROM generate_series(1, $1) i",
    )
    .bind(tokens)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jwt_session_revocations (session_id, expires_at) \
         SELECT 'bulk-s-' || i, now() + interval '1 hour' FROM generate_series(1, $1) i",
    )
    .bind(sessions)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jwt_subject_revocations (subject, not_before) \
         SELECT 'bulk-u-' || i, now() - interval '1 hour' FROM generate_series(1, $1) i",
    )
    .bind(subjects)
    .execute(pool)
    .await
    .unwrap();
}

fn token<'a>(jti: &'a str, sid: &'a str, sub: &'a str) -> TokenFacts<'a> {
    TokenFacts {
        jti: Some(jti),
        session_id: Some(sid),
        subject: Some(sub),
        issued_at: Some(now()),
        expires_at: Some(now() + 600),
    }
}

async fn answer<B: RevocationBackend>(backend: &B, facts: &TokenFacts<'_>) -> Result<Verdict, StoreError> {
    match backend.try_check(facts) {
        Some(answer) => answer,
        None => backend.check(facts).await,
    }
}

/// The defect: a live set larger than `max_capacity` (the moka maps' bound, 100 000 by default)
/// made the mirror give up and fall back to lookup mode for good. Failed on `main` before the
/// compact mirror: `wait_in_sync` never saw mirroring switch on.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_mirror_holds_far_more_revocations_than_max_capacity_without_queries(pool: PgPool) {
    bulk_load(&pool, 20_000, 2_000, 2_000).await;
    let cache = MokaCache::builder(PgStore::new(pool.clone()))
        .mode(CacheMode::Mirror)
        .max_capacity(100)
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(20)).await, "the mirror never loaded");
    assert!(cache.metrics().mirroring);
    let before = cache.metrics().backend_calls;
    // Unrevoked tokens, with sessions and subjects the ledger has never seen and with subjects
    // whose cutoff is an hour old: all answered from memory, on the fast path.
    for i in 0..20_000 {
        let (jti, sid, sub) = (format!("fresh-t-{i}"), format!("fresh-s-{i}"), format!("bulk-u-{}", i % 3000));
        let facts = token(&jti, &sid, &sub);
        assert_eq!(cache.try_check(&facts).map(Result::unwrap), Some(Verdict::Active), "{jti}");
    }
    assert_eq!(cache.metrics().backend_calls, before, "an unrevoked token cost a ledger query");
    // Revoked by each kind: never "not revoked".
    for (jti, sid, sub, by) in [
        ("bulk-t-1", "fresh", "fresh", RevokedBy::Token),
        ("bulk-t-19999", "fresh", "fresh", RevokedBy::Token),
        ("fresh", "bulk-s-1999", "fresh", RevokedBy::Session),
        ("fresh", "fresh", "bulk-u-1500", RevokedBy::Subject),
    ] {
        let mut facts = token(jti, sid, sub);
        facts.issued_at = Some(now() - 7200);
        assert_eq!(answer(&cache, &facts).await.unwrap(), Verdict::Revoked(by), "{jti} {sid} {sub}");
    }
}

/// With the database gone after sync, the mirror keeps answering within `max_staleness`:
/// unrevoked tokens are not revoked and revoked ones (even ones this instance never looked up)
/// are revoked; past `max_staleness`, it stops answering "not revoked" and errors instead.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn with_the_database_gone_a_mirror_answers_both_ways_until_max_staleness(pool: PgPool) {
    bulk_load(&pool, 5_000, 100, 100).await;
    let store = PgStore::new(pool.clone()).with_timeout(Duration::from_millis(500));
    let cache = MokaCache::builder(store)
        .mode(CacheMode::Mirror)
        .max_capacity(100)
        .max_staleness(Duration::from_secs(4))
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(20)).await, "the mirror never loaded");
    let (mut admin, db) = maintenance(&pool).await;
    allow_connections(&mut admin, &db, false).await;
    terminate(&mut admin, &db, None).await;
    let outage = std::time::Instant::now();
    // Queries now fail: a pooled connection was terminated, and no new one may be opened.
    wait_until("the ledger is unreachable", || async {
        sqlx::query("SELECT 1").execute(&pool).await.is_err()
    })
    .await;
    let unrevoked = token("fresh-t", "fresh-s", "fresh-u");
    let mut revoked = token("bulk-t-4321", "fresh-s", "fresh-u");
    revoked.issued_at = Some(now() - 7200);
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(2) {
        assert_eq!(answer(&cache, &unrevoked).await.unwrap(), Verdict::Active);
        assert_eq!(answer(&cache, &revoked).await.unwrap(), Verdict::Revoked(RevokedBy::Token));
        checks += 1;
    }
    assert!(checks > 0);
    wait_until_within("the mirror stops vouching", Duration::from_secs(15), || async {
        answer(&cache, &unrevoked).await.is_err()
    })
    .await;
    allow_connections(&mut admin, &db, true).await;
}
