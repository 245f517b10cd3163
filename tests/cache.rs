//! `MokaCache<PgStore>` against a real Postgres: two tiers on separate pools play two server
//! instances.

mod common;

use std::time::Duration;
use tower_jwt_revocation::Revocation;

use common::cluster::{allow_connections, instance, maintenance, terminate};
use common::*;
use http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tower_jwt_revocation::{
    CacheMode, FailurePolicy, MokaCache, PgStore, RevocationBackend, RevocationStore, RevokedBy, StoreError,
    TokenFacts, Verdict,
};

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_revocation_on_one_instance_is_enforced_on_the_other(pool: PgPool) {
    for mode in [CacheMode::Lookup, CacheMode::Mirror] {
        let a = instance(&pool, "a", mode, FailurePolicy::Closed).await;
        let b = instance(&pool, "b", mode, FailurePolicy::Closed).await;
        let jti = format!("cross-{mode:?}");
        let token = mint(claims(&jti, "alice"));
        // B has seen the token and (in lookup mode) cached it as not revoked.
        assert_eq!(b.status(&token).await, StatusCode::OK);
        assert_eq!(a.status(&token).await, StatusCode::OK);

        a.cache
            .revoke(
                &Revocation::token(&jti, in_an_hour())
                    .owner("alice")
                    .reason("logout"),
            )
            .await
            .unwrap();
        // Read-your-writes on A, without waiting.
        assert_eq!(a.status(&token).await, StatusCode::UNAUTHORIZED, "{mode:?}");
        b.becomes(&token, StatusCode::UNAUTHORIZED).await;
        assert!(b.cache.metrics().events_applied >= 1);

        // A row written with plain SQL reaches both.
        let psql_jti = format!("psql-{mode:?}");
        let psql_token = mint(claims(&psql_jti, "bob"));
        assert_eq!(a.status(&psql_token).await, StatusCode::OK);
        assert_eq!(b.status(&psql_token).await, StatusCode::OK);
        sqlx::query("INSERT INTO jwt_revocations (jti, subject, expires_at) VALUES ($1, 'bob', now() + interval '1 hour')")
            .bind(&psql_jti)
            .execute(&pool)
            .await
            .unwrap();
        a.becomes(&psql_token, StatusCode::UNAUTHORIZED).await;
        b.becomes(&psql_token, StatusCode::UNAUTHORIZED).await;

        // Sessions and subject cutoffs travel the same way.
        let session_token = mint(
            json!({"jti": format!("s-{mode:?}"), "sub": "carl", "sid": format!("sid-{mode:?}"),
            "iat": now() - 10, "exp": now() + 600}),
        );
        assert_eq!(b.status(&session_token).await, StatusCode::OK);
        a.cache
            .revoke(&Revocation::session(&format!("sid-{mode:?}"), in_an_hour()))
            .await
            .unwrap();
        b.becomes(&session_token, StatusCode::UNAUTHORIZED).await;
        let subject_token = mint(
            json!({"jti": format!("u-{mode:?}"), "sub": format!("dora-{mode:?}"), "iat": now() - 10, "exp": now() + 600}),
        );
        assert_eq!(b.status(&subject_token).await, StatusCode::OK);
        a.cache
            .revoke(&Revocation::subject(
                &format!("dora-{mode:?}"),
                std::time::SystemTime::now(),
            ))
            .await
            .unwrap();
        b.becomes(&subject_token, StatusCode::UNAUTHORIZED).await;
    }
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revocations_made_while_the_listener_is_down_are_enforced_after_it_reconnects(pool: PgPool) {
    let _a = instance(&pool, "a", CacheMode::Lookup, FailurePolicy::Closed).await;
    let b = instance(&pool, "b", CacheMode::Lookup, FailurePolicy::Closed).await;
    let queried = mint(claims("while-down-queried", "erin"));
    let caught_up = mint(claims("while-down-caught-up", "erin"));
    for token in [&queried, &caught_up] {
        assert_eq!(b.status(token).await, StatusCode::OK); // cached as not revoked on B
    }

    // Another writer, connected before the outage: one connection, which it waits for rather
    // than opening a new one while connections are refused.
    let writer = PgStore::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap(),
    );
    let (mut admin, db) = maintenance(&pool).await;
    allow_connections(&mut admin, &db, false).await;
    assert_eq!(terminate(&mut admin, &db, Some("b")).await, 1, "B's listener");
    wait_until("B notices its feed is down", || async { !b.cache.is_in_sync() }).await;

    // Revoked while B's feed is down. B's pool still has its open connections.
    writer
        .revoke(&Revocation::token("while-down-queried", in_an_hour()))
        .await
        .unwrap();
    writer
        .revoke(&Revocation::token("while-down-caught-up", in_an_hour()))
        .await
        .unwrap();
    let calls = b.cache.metrics().backend_calls;
    assert_eq!(
        b.status(&queried).await,
        StatusCode::UNAUTHORIZED,
        "B asked the ledger, not its stale negative"
    );
    assert_eq!(b.cache.metrics().backend_calls, calls + 1);

    allow_connections(&mut admin, &db, true).await;
    assert!(b.cache.wait_in_sync(Duration::from_secs(5)).await);
    assert!(b.cache.metrics().resyncs >= 1);
    // The other revocation arrived through the catch-up: answered from memory, no query.
    let calls = b.cache.metrics().backend_calls;
    assert_eq!(b.status(&caught_up).await, StatusCode::UNAUTHORIZED);
    assert_eq!(b.cache.metrics().backend_calls, calls);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn concurrent_misses_for_one_token_make_one_query(pool: PgPool) {
    let b = instance(&pool, "b", CacheMode::Lookup, FailurePolicy::Closed).await;
    let before = b.cache.metrics();
    let checks: Vec<_> = (0..100)
        .map(|_| {
            let cache = b.cache.clone();
            tokio::spawn(async move {
                let facts = TokenFacts {
                    jti: Some("brand-new"),
                    subject: Some("fay"),
                    ..TokenFacts::default()
                };
                match cache.try_check(&facts) {
                    Some(answer) => answer,
                    None => cache.check(&facts).await,
                }
            })
        })
        .collect();
    for check in checks {
        assert_eq!(check.await.unwrap().unwrap(), Verdict::Active);
    }
    let after = b.cache.metrics();
    assert_eq!(after.backend_calls - before.backend_calls, 1);
    assert_eq!(after.active - before.active, 100);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn mirror_answers_unrevoked_tokens_without_queries(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    for i in 0..50 {
        store
            .revoke(&Revocation::token(&format!("old-{i}"), in_an_hour()))
            .await
            .unwrap();
    }
    let b = instance(&pool, "b", CacheMode::Mirror, FailurePolicy::Closed).await;
    assert!(b.cache.metrics().mirroring);
    let before = b.cache.metrics();
    for i in 0..10_000 {
        let jti = format!("fresh-{i}");
        let facts = TokenFacts {
            jti: Some(&jti),
            subject: Some("gus"),
            issued_at: Some(now()),
            ..TokenFacts::default()
        };
        assert_eq!(b.cache.try_check(&facts).unwrap().unwrap(), Verdict::Active);
    }
    let after = b.cache.metrics();
    assert_eq!(after.backend_calls, before.backend_calls);
    // A revoked key is a fingerprint hit: confirmed with the ledger once, then from memory.
    let revoked = TokenFacts {
        jti: Some("old-7"),
        ..TokenFacts::default()
    };
    assert!(b.cache.try_check(&revoked).is_none());
    assert_eq!(
        b.cache.check(&revoked).await.unwrap(),
        Verdict::Revoked(RevokedBy::Token)
    );
    assert_eq!(
        b.cache.try_check(&revoked).map(Result::unwrap),
        Some(Verdict::Revoked(RevokedBy::Token))
    );
    assert_eq!(b.cache.metrics().backend_calls, before.backend_calls + 1);
    assert_eq!(after.misses, before.misses);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn with_the_database_unreachable_memory_answers_within_the_staleness_bound(pool: PgPool) {
    let mirror = instance(&pool, "mirror", CacheMode::Mirror, FailurePolicy::Closed).await;
    let lookup = instance(&pool, "lookup", CacheMode::Lookup, FailurePolicy::Closed).await;
    let revoked = mint(claims("gone", "hal"));
    let cached_ok = mint(claims("cached-ok", "hal"));
    let never_seen = mint(claims("never-seen", "hal"));
    mirror
        .cache
        .revoke(&Revocation::token("gone", in_an_hour()).owner("hal"))
        .await
        .unwrap();
    lookup.becomes(&revoked, StatusCode::UNAUTHORIZED).await;
    assert_eq!(lookup.status(&cached_ok).await, StatusCode::OK);

    let (mut admin, db) = maintenance(&pool).await;
    allow_connections(&mut admin, &db, false).await;
    terminate(&mut admin, &db, None).await;

    // Mirror: still answers from memory (max_staleness is 1 s) ...
    assert_eq!(mirror.status(&never_seen).await, StatusCode::OK);
    assert_eq!(mirror.status(&revoked).await, StatusCode::UNAUTHORIZED);
    // ... then, past the bound, the failure policy decides; revoked entries still reject.
    mirror.becomes(&never_seen, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(mirror.status(&revoked).await, StatusCode::UNAUTHORIZED);

    // Lookup: a miss follows the policy; a cached revocation is still enforced.
    assert_eq!(lookup.status(&never_seen).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(lookup.status(&revoked).await, StatusCode::UNAUTHORIZED);

    allow_connections(&mut admin, &db, true).await;
    assert!(lookup.cache.wait_in_sync(Duration::from_secs(5)).await);
    lookup.becomes(&never_seen, StatusCode::OK).await;
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_mirror_that_does_not_fit_falls_back_to_lookup(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    for i in 0..50 {
        store
            .revoke(&Revocation::token(&format!("big-{i}"), in_an_hour()))
            .await
            .unwrap();
    }
    let cache = tower_jwt_revocation::MokaCache::builder(store)
        .mode(CacheMode::Mirror)
        .mirror_max_entries(10)
        .start()
        .unwrap();
    // Lookup mode is in sync as soon as the feed is; mirroring never switches on.
    wait_until("the feed is in sync", || async { cache.is_in_sync() }).await;
    assert!(!cache.metrics().mirroring);
    // Misses are asked, not assumed: revoked rows beyond the capacity are still found.
    for i in [0, 25, 49] {
        let jti = format!("big-{i}");
        let facts = TokenFacts {
            jti: Some(&jti),
            ..TokenFacts::default()
        };
        let answer = match cache.try_check(&facts) {
            Some(answer) => answer,
            None => cache.check(&facts).await,
        };
        assert!(matches!(answer, Ok(Verdict::Revoked(_))), "{jti}: {answer:?}");
    }
    let facts = TokenFacts {
        jti: Some("fresh"),
        ..TokenFacts::default()
    };
    assert!(cache.try_check(&facts).is_none(), "a miss goes to the ledger");
    assert_eq!(cache.check(&facts).await.unwrap(), Verdict::Active);
}

/// Found in review: a zero heartbeat panicked the feed's task (`tokio::time::interval`), a zero
/// purge interval the purger's, and a `negative_ttl` over moka's bound panicked `start`.
/// Now they are clamped or refused, never a panic.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn settings_at_their_extremes_are_clamped_or_refused(pool: PgPool) {
    let eager = MokaCache::builder(PgStore::new(pool.clone()).with_heartbeat(Duration::ZERO))
        .start()
        .unwrap();
    assert!(eager.wait_in_sync(Duration::from_secs(5)).await);
    assert_eq!(eager.metrics().feed_restarts, 0);
    assert!(matches!(
        MokaCache::builder(PgStore::new(pool.clone()))
            .negative_ttl(Duration::MAX)
            .start(),
        Err(StoreError::Config(_))
    ));
    assert!(matches!(
        tower_jwt_revocation::spawn_purger(PgStore::new(pool), Duration::ZERO, Duration::ZERO),
        Err(StoreError::Config(_))
    ));
}
