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
    CacheMode, MokaCache, PgStore, RevocationBackend, RevocationStore, RevokedBy, StoreError, TokenFacts,
    Verdict,
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
        issuer: None,
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
    assert!(
        cache.wait_in_sync(Duration::from_secs(20)).await,
        "the mirror never loaded"
    );
    assert!(cache.metrics().mirroring);
    let before = cache.metrics().backend_calls;
    // Unrevoked tokens, with sessions and subjects the ledger has never seen and with subjects
    // whose cutoff is an hour old: all answered from memory, on the fast path.
    for i in 0..20_000 {
        let (jti, sid, sub) = (
            format!("fresh-t-{i}"),
            format!("fresh-s-{i}"),
            format!("bulk-u-{}", i % 3000),
        );
        let facts = token(&jti, &sid, &sub);
        assert_eq!(
            cache.try_check(&facts).map(Result::unwrap),
            Some(Verdict::Active),
            "{jti}"
        );
    }
    assert_eq!(
        cache.metrics().backend_calls,
        before,
        "an unrevoked token cost a ledger query"
    );
    // Revoked by each kind: never "not revoked".
    for (jti, sid, sub, by) in [
        ("bulk-t-1", "fresh", "fresh", RevokedBy::Token),
        ("bulk-t-19999", "fresh", "fresh", RevokedBy::Token),
        ("fresh", "bulk-s-1999", "fresh", RevokedBy::Session),
        ("fresh", "fresh", "bulk-u-1500", RevokedBy::Subject),
    ] {
        let mut facts = token(jti, sid, sub);
        facts.issued_at = Some(now() - 7200);
        assert_eq!(
            answer(&cache, &facts).await.unwrap(),
            Verdict::Revoked(by),
            "{jti} {sid} {sub}"
        );
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
    assert!(
        cache.wait_in_sync(Duration::from_secs(20)).await,
        "the mirror never loaded"
    );
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
    // Within max_staleness (4 s after the last proof of sync, at most one 2 s heartbeat before
    // the outage): both ways from memory, for 2 s.
    loop {
        assert_eq!(answer(&cache, &unrevoked).await.unwrap(), Verdict::Active);
        assert_eq!(
            answer(&cache, &revoked).await.unwrap(),
            Verdict::Revoked(RevokedBy::Token)
        );
        if outage.elapsed() >= Duration::from_secs(2) {
            break;
        }
    }
    wait_until_within("the mirror stops vouching", Duration::from_secs(15), || async {
        answer(&cache, &unrevoked).await.is_err()
    })
    .await;
    allow_connections(&mut admin, &db, true).await;
}

/// A mirror whose live set passed `mirror_max_entries` falls back to lookup mode, and once the
/// ledger's live set fits again (a purge, here a DBA's `DELETE`), a later snapshot promotes it
/// back, with no restart.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_mirror_that_fell_back_is_promoted_back_once_the_live_set_fits(pool: PgPool) {
    bulk_load(&pool, 150, 0, 0).await;
    let cache = MokaCache::builder(PgStore::new(pool.clone()))
        .mode(CacheMode::Mirror)
        .mirror_max_entries(100)
        .mirror_refresh(Duration::from_secs(1))
        .start()
        .unwrap();
    wait_until("the feed is in sync", || async { cache.is_in_sync() }).await;
    assert!(
        !cache.metrics().mirroring,
        "150 live revocations do not fit in 100"
    );
    let revoked = token("bulk-t-120", "fresh-s", "fresh-u");
    assert_eq!(
        answer(&cache, &revoked).await.unwrap(),
        Verdict::Revoked(RevokedBy::Token)
    );
    sqlx::query("DELETE FROM jwt_revocations WHERE jti NOT LIKE 'bulk-t-1_'")
        .execute(&pool)
        .await
        .unwrap();
    wait_until_within("the mirror is promoted back", Duration::from_secs(10), || async {
        cache.metrics().mirroring
    })
    .await;
    let metrics = cache.metrics();
    assert!(metrics.mirror_snapshots >= 2, "{metrics:?}");
    assert_eq!(metrics.mirror_entries, 10);
    let before = metrics.backend_calls;
    assert_eq!(
        answer(&cache, &token("fresh-t", "fresh-s", "fresh-u"))
            .await
            .unwrap(),
        Verdict::Active
    );
    assert_eq!(cache.metrics().backend_calls, before);
    let revoked = token("bulk-t-13", "fresh-s", "fresh-u");
    assert_eq!(
        answer(&cache, &revoked).await.unwrap(),
        Verdict::Revoked(RevokedBy::Token)
    );
}

/// Each refresh reads the live set again: what the ledger purged leaves memory, and what was
/// revoked while a refresh was reading (here, on another instance, throughout several
/// refreshes) is never lost from the table swapped in.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn refreshes_drop_what_the_ledger_purged_and_lose_no_revocation_made_meanwhile(pool: PgPool) {
    bulk_load(&pool, 20_000, 0, 0).await;
    let cache = MokaCache::builder(PgStore::new(pool.clone()))
        .mode(CacheMode::Mirror)
        .mirror_refresh(Duration::from_secs(1))
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(20)).await);
    assert_eq!(cache.metrics().mirror_entries, 20_000);
    sqlx::query("DELETE FROM jwt_revocations WHERE jti LIKE 'bulk-t-1%'")
        .execute(&pool)
        .await
        .unwrap();
    let writer = PgStore::new(pool.clone());
    let snapshots = cache.metrics().mirror_snapshots;
    let mut written = 0;
    while cache.metrics().mirror_snapshots < snapshots + 3 {
        let jti = format!("meanwhile-{written}");
        writer
            .revoke(&tower_jwt_revocation::Revocation::token(&jti, in_an_hour()))
            .await
            .unwrap();
        written += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(written > 10);
    // Every revocation made meanwhile reached the table in force.
    wait_until("the last one arrived", || async {
        let jti = format!("meanwhile-{}", written - 1);
        cache.try_check(&token(&jti, "x", "x")).is_none()
    })
    .await;
    for i in 0..written {
        let jti = format!("meanwhile-{i}");
        let facts = token(&jti, "fresh-s", "fresh-u");
        assert!(
            cache.try_check(&facts).is_none(),
            "{jti} is missing from the mirror"
        );
        assert_eq!(
            answer(&cache, &facts).await.unwrap(),
            Verdict::Revoked(RevokedBy::Token)
        );
    }
    // 11 111 rows (bulk-t-1, bulk-t-1x, ...) were deleted.
    assert_eq!(cache.metrics().mirror_entries, 20_000 - 11_111 + written);
}
