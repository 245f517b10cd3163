//! The cache tier's consistency model under the races and failures that break naive caches:
//! a feed that dies, a lookup racing the first sync or a feed event, a mirror starting inside the
//! leeway, a full cache, cancelled lookups, and notifications that never arrive.

mod common;

use std::time::{Duration, SystemTime};
use tower_jwt_revocation::Revocation;

use common::cluster::{Settings, instance, lookup_and_mirror};
use common::faulty::{Fault, Faulty};
use common::proxy::Proxy;
use common::*;
use http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tower_jwt_revocation::{
    CacheMode, FailurePolicy, MokaCache, PgStore, RevocationBackend, RevocationStore, RevokedBy, TokenFacts,
    Verdict,
};

fn store(pool: &PgPool) -> PgStore {
    PgStore::new(pool.clone())
        .with_timeout(Duration::from_millis(500))
        .with_heartbeat(Duration::from_millis(100))
}

fn facts(jti: &str) -> TokenFacts<'_> {
    common::facts(jti, "kim")
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_layer_is_ready_once_its_cache_has_proved_sync(pool: PgPool) {
    use tower_jwt_revocation::JwtRevocationLayer;
    use tower_jwt_revocation::jsonwebtoken::DecodingKey;
    let layer = |cache: MokaCache<PgStore>| {
        JwtRevocationLayer::builder(cache)
            .decoding_key(DecodingKey::from_secret(SECRET))
            .build()
            .unwrap()
    };
    // A ledger nothing answers for: its feed never proves sync.
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let cut_off = layer(MokaCache::builder(store(&unreachable)).start().unwrap());
    let connected = layer(MokaCache::builder(store(&pool)).start().unwrap());
    wait_until_within("the connected cache is ready", Duration::from_secs(5), || async {
        connected.is_ready()
    })
    .await;
    assert!(
        !cut_off.is_ready(),
        "a cache that never reached its ledger is not ready"
    );
    assert!(!cut_off.backend().is_in_sync());
}

/// Readiness is a start-up gate: once a cache has proved sync, a later outage of the ledger
/// every instance shares leaves it ready (the failure policy and `max_staleness` handle the
/// outage), rather than taking every instance out of rotation at once.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_ready_cache_stays_ready_through_a_ledger_outage(pool: PgPool) {
    use common::cluster::{allow_connections, maintenance, terminate};
    let cache = MokaCache::builder(store(&pool)).start().unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    assert!(cache.is_ready());
    let (mut admin, db) = maintenance(&pool).await;
    allow_connections(&mut admin, &db, false).await;
    terminate(&mut admin, &db, None).await;
    wait_until_within("the feed notices the outage", Duration::from_secs(5), || async {
        !cache.is_in_sync()
    })
    .await;
    assert!(cache.is_ready(), "an outage after start is not un-readiness");
    allow_connections(&mut admin, &db, true).await;
}

/// Reproduced on `main` before the fix: a feed stream that ended (its task died) was never
/// followed again, so a revocation written afterwards never reached the cache (the mirror kept
/// answering "not revoked" until `max_staleness`).
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_feed_that_ends_or_panics_is_restarted_and_negatives_wait_for_it(pool: PgPool) {
    for mode in [CacheMode::Lookup, CacheMode::Mirror] {
        for fault in [Fault::End, Fault::Panic] {
            let faulty = Faulty::new(store(&pool));
            let cache = MokaCache::builder(faulty.clone())
                .mode(mode)
                .max_staleness(Duration::from_secs(10))
                .start()
                .unwrap();
            assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
            let jti = format!("restart-{mode:?}-{fault:?}");
            assert_eq!(verdict(&cache, &facts(&jti)).await.unwrap(), Verdict::Active);

            faulty.hold_feed(true);
            let subscriptions = faulty.subscriptions();
            faulty.fault(fault);
            wait_until("the feed is started again", || async {
                faulty.subscriptions() > subscriptions
            })
            .await;
            // Until the new feed is in sync, no "not revoked" is answered from memory.
            assert!(!cache.is_in_sync());
            assert!(cache.try_check(&facts(&jti)).is_none(), "{mode:?} {fault:?}");
            assert_eq!(cache.metrics().feed_restarts, 1);

            faulty.hold_feed(false);
            assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
            revoke_by_sql(&pool, &jti).await;
            wait_until_within("the revocation arrives", Duration::from_secs(2), || async {
                matches!(verdict(&cache, &facts(&jti)).await, Ok(Verdict::Revoked(_)))
            })
            .await;
        }
    }
}

/// Reproduced on `main` before the fix: a lookup made before the feed's first sync stored "not
/// revoked", the token was revoked before the feed's starting point, and after the first sync the
/// stale negative was trusted (the revoked token answered Active).
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_negative_stored_before_the_first_sync_is_not_trusted_after_it(pool: PgPool) {
    let faulty = Faulty::new(store(&pool));
    faulty.hold_feed(true);
    let cache = MokaCache::builder(faulty.clone()).start().unwrap();
    assert_eq!(verdict(&cache, &facts("early")).await.unwrap(), Verdict::Active);
    revoke_by_sql(&pool, "early").await;

    faulty.hold_feed(false); // the feed starts after the revocation: it never delivers it
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    assert_eq!(
        verdict(&cache, &facts("early")).await.unwrap(),
        Verdict::Revoked(RevokedBy::Token)
    );
}

/// Reproduced on `main` before the fix: a lookup that finished after the feed delivered a
/// session revocation replaced the revocation's expiry with the (earlier) one of the token it
/// looked up, so the session was forgotten while its newer tokens were still valid.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_lookup_never_shortens_a_revocation_the_feed_delivered(pool: PgPool) {
    let faulty = Faulty::new(store(&pool));
    let cache = MokaCache::builder(faulty.clone())
        .revocation_grace(Duration::ZERO)
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    let short_exp = now() + 2;
    let short = TokenFacts {
        jti: Some("short"),
        session_id: Some("sess"),
        expires_at: Some(short_exp),
        ..TokenFacts::default()
    };
    let long = TokenFacts {
        jti: Some("long"),
        session_id: Some("sess"),
        expires_at: Some(now() + 600),
        ..TokenFacts::default()
    };

    faulty.hold_lookups(true);
    let racing = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let facts = TokenFacts {
                jti: Some("short"),
                session_id: Some("sess"),
                expires_at: Some(short_exp),
                ..TokenFacts::default()
            };
            cache.check(&facts).await
        })
    };
    wait_until("the lookup is asked", || async { faulty.lookups() == 1 }).await;
    faulty
        .store
        .revoke(&Revocation::session("sess", in_an_hour()))
        .await
        .unwrap();
    wait_until("the feed delivers the session revocation", || async {
        cache.try_check(&long).is_some()
    })
    .await;
    faulty.hold_lookups(false);
    assert_eq!(
        racing.await.unwrap().unwrap(),
        Verdict::Revoked(RevokedBy::Session)
    );

    // Past the short token's expiry the session is still remembered, for its newer tokens.
    let past_short = SystemTime::UNIX_EPOCH + Duration::from_secs(short_exp + 1);
    while SystemTime::now() < past_short {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cache.try_check(&short).is_some());
    assert_eq!(
        cache.try_check(&long).map(Result::unwrap),
        Some(Verdict::Revoked(RevokedBy::Session))
    );
}

/// Reproduced on `main` before the fix: the mirror's snapshot skipped revocations whose token
/// expired a moment ago, although such a token still validates within the leeway (60 s), so a
/// mirror starting in that window accepted it.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_mirror_starting_within_the_leeway_loads_revocations_of_just_expired_tokens(pool: PgPool) {
    let expired = now() - 10;
    let token = mint(json!({"jti": "just-expired", "sub": "lou", "iat": now() - 100, "exp": expired}));
    PgStore::new(pool.clone())
        .revoke(
            &Revocation::token(
                "just-expired",
                SystemTime::UNIX_EPOCH + Duration::from_secs(expired),
            )
            .owner("lou"),
        )
        .await
        .unwrap();
    let mirror = instance(&pool, "mirror", CacheMode::Mirror, FailurePolicy::Closed).await;
    assert!(mirror.cache.metrics().mirroring);
    assert_eq!(mirror.status(&token).await, StatusCode::UNAUTHORIZED);
}

/// Reproduced on `main` before the fix: once the revoked-keys cache was full, every revocation
/// the feed delivered was evicted or refused admission, and each such eviction wiped every "not
/// revoked" answer, so all ten known-good tokens were asked again.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_full_cache_pays_for_an_evicted_revocation_with_that_key_only(pool: PgPool) {
    let cache = MokaCache::builder(store(&pool))
        .max_capacity(20)
        .negative_ttl(Duration::from_secs(60))
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    let good: Vec<String> = (0..10).map(|i| format!("good-{i}")).collect();
    for jti in &good {
        assert_eq!(verdict(&cache, &facts(jti)).await.unwrap(), Verdict::Active);
    }
    sqlx::query(
        "INSERT INTO jwt_revocations (jti, expires_at) \
         SELECT 'churn-' || i, now() + interval '1 hour' FROM generate_series(1, 200) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    wait_until("the revocations are applied and some evicted", || async {
        let metrics = cache.metrics();
        metrics.events_applied >= 200 && metrics.evicted_revocations > 0
    })
    .await;

    let calls = cache.metrics().backend_calls;
    for jti in &good {
        assert_eq!(
            cache.try_check(&facts(jti)).map(Result::unwrap),
            Some(Verdict::Active)
        );
    }
    assert_eq!(cache.metrics().backend_calls, calls);
    // An evicted revocation is asked again, never assumed absent.
    assert!(matches!(
        verdict(&cache, &facts("churn-1")).await,
        Ok(Verdict::Revoked(RevokedBy::Token))
    ));
}

/// Before the fix, a lookup whose every waiter was cancelled (clients gone during an outage)
/// left its single-flight entry behind for good: `in_flight_lookups` stayed at 1 here.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_lookup_abandoned_by_every_waiter_leaves_no_flight_behind(pool: PgPool) {
    let faulty = Faulty::new(store(&pool));
    let cache = MokaCache::builder(faulty.clone()).start().unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    faulty.hold_lookups(true);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.check(&facts("abandoned")).await })
        })
        .collect();
    wait_until("the three checks wait on one lookup", || async {
        cache.metrics().coalesced_waits == 2
    })
    .await;
    assert_eq!(cache.metrics().in_flight_lookups, 1);
    for (i, waiter) in waiters.into_iter().enumerate() {
        waiter.abort();
        let _ = waiter.await;
        let left = if i < 2 { 1 } else { 0 };
        assert_eq!(
            cache.metrics().in_flight_lookups,
            left,
            "after {} cancelled",
            i + 1
        );
    }

    faulty.hold_lookups(false);
    let lookups = faulty.lookups();
    assert_eq!(
        verdict(&cache, &facts("abandoned")).await.unwrap(),
        Verdict::Active
    );
    assert_eq!(
        faulty.lookups(),
        lookups + 1,
        "a fresh lookup, not a wait on the abandoned one"
    );
    assert_eq!(cache.metrics().in_flight_lookups, 0);
}

/// Reproduced on `main` before the fix: with notifications lost (here a DBA disabled the
/// trigger; a transaction pooler loses them the same way), the `SELECT 1` heartbeat kept
/// reporting "in sync", negatives were trusted and the mirror never learned of the revocation.
/// The heartbeat now proves sync by reading past the last delivered `seq`.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn without_notifications_a_revocation_arrives_within_one_heartbeat(pool: PgPool) {
    sqlx::query("ALTER TABLE jwt_revocations DISABLE TRIGGER jwt_revocations_notify")
        .execute(&pool)
        .await
        .unwrap();
    let settings = Settings {
        max_staleness: Duration::from_secs(10),
        ..Settings::default()
    };
    let (lookup, mirror) = lookup_and_mirror(&pool, settings).await;
    let token = mint(claims("silent", "max"));
    for instance in [&lookup, &mirror] {
        assert_eq!(instance.status(&token).await, StatusCode::OK);
    }
    revoke_by_sql(&pool, "silent").await;
    // One heartbeat (100 ms) plus the query, with room for a loaded machine.
    for instance in [&lookup, &mirror] {
        instance
            .becomes_within(&token, StatusCode::UNAUTHORIZED, Duration::from_secs(1))
            .await;
    }
}

/// A network partition of the feed's connection (no FIN, no RST): before the fix every reconnect
/// waited for the one-connection pool whose only connection was the dead one (its cleanup waits
/// on a peer that never answers), so the mirror never learned of this revocation.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_blackholed_feed_connection_is_replaced_and_caught_up(pool: PgPool) {
    let options = pool.connect_options();
    let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let database = database_name(&pool).await;
    let through_proxy = format!("postgres://{}@{}/{database}", options.get_username(), proxy.addr);
    let store = store(&pool).with_direct_url(&through_proxy).unwrap();
    let cache = MokaCache::builder(store)
        .mode(CacheMode::Mirror)
        .max_staleness(Duration::from_secs(10))
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    assert_eq!(
        verdict(&cache, &facts("partitioned")).await.unwrap(),
        Verdict::Active
    );

    proxy.blackhole_existing();
    wait_until("the feed notices", || async { !cache.is_in_sync() }).await;
    revoke_by_sql(&pool, "partitioned").await;
    // Heartbeat timeout (500 ms), a fresh connection, a catch-up: the mirror holds the key (its
    // fingerprint now matches, so memory no longer answers "not revoked"; the ledger confirms).
    wait_until_within(
        "the revocation arrives through a new connection",
        Duration::from_secs(3),
        || async { cache.try_check(&facts("partitioned")).is_none() },
    )
    .await;
    assert!(matches!(
        verdict(&cache, &facts("partitioned")).await,
        Ok(Verdict::Revoked(_))
    ));
    assert!(proxy.frozen() >= 1);
    assert!(cache.metrics().resyncs >= 1);
}

/// The cache's and the feed's counters and gauges reach a `metrics` recorder.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn the_cache_and_feed_publish_their_metrics(pool: PgPool) {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let cache = metrics::with_local_recorder(&recorder, || MokaCache::builder(store(&pool)).start().unwrap());
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    assert_eq!(verdict(&cache, &facts("counted")).await.unwrap(), Verdict::Active);
    assert_eq!(verdict(&cache, &facts("counted")).await.unwrap(), Verdict::Active);
    revoke_by_sql(&pool, "counted").await;
    wait_until("the event is applied", || async {
        cache.metrics().events_applied == 1
    })
    .await;
    wait_until("a heartbeat published the state", || async {
        handle.render().contains("jwt_revocation_feed_in_sync 1")
    })
    .await;
    let text = handle.render();
    for line in [
        r#"jwt_revocation_cache_checks_total{answer="miss"} 1"#,
        r#"jwt_revocation_cache_checks_total{answer="hit"} 1"#,
        r#"jwt_revocation_cache_verdicts_total{verdict="active"} 2"#,
        "jwt_revocation_cache_ledger_lookups_total 1",
        "jwt_revocation_feed_events_total 1",
        "jwt_revocation_feed_last_sync_timestamp_seconds ",
        "jwt_revocation_feed_lag_seconds_count 1",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "{line} in\n{text}");
    }
}

/// Found in review, reproduced before the fix: a token with neither `jti` nor `sid`
/// (`MissingJti::Allow`) is known only by its subject. A lookup before the feed's first sync
/// stored the subject's old cutoff; the cutoff moved before the feed's starting point; and the
/// old one kept answering "not revoked" after the first sync, for good.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_cutoff_read_before_the_first_sync_is_not_trusted_after_it(pool: PgPool) {
    let set_cutoff = |at: u64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO jwt_subject_revocations (subject, not_before) VALUES ('zoe', to_timestamp($1)) \
                 ON CONFLICT (subject) DO UPDATE SET not_before = excluded.not_before",
            )
            .bind(at as f64)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set_cutoff(now() - 100).await;
    let faulty = Faulty::new(store(&pool));
    faulty.hold_feed(true);
    let cache = MokaCache::builder(faulty.clone()).start().unwrap();
    let only_subject = TokenFacts {
        subject: Some("zoe"),
        issued_at: Some(now() - 50),
        expires_at: Some(now() + 600),
        ..TokenFacts::default()
    };
    assert_eq!(verdict(&cache, &only_subject).await.unwrap(), Verdict::Active);
    set_cutoff(now()).await; // "log out everywhere"

    faulty.hold_feed(false); // starts after the new cutoff: never delivers it
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    assert_eq!(
        verdict(&cache, &only_subject).await.unwrap(),
        Verdict::Revoked(RevokedBy::Subject)
    );
}

/// B's token in session `s-1`, whose `sid` issuer A revoked (so the mirror holds its
/// fingerprint and every check of it is confirmed with the ledger).
fn hot() -> TokenFacts<'static> {
    TokenFacts {
        jti: Some("b-1"),
        session_id: Some("s-1"),
        subject: Some("alice"),
        issued_at: Some(now() - 5),
        expires_at: Some(now() + 600),
        issuer: Some("https://b.example"),
    }
}

/// Issue 24, item 6. Mirror mode, a hot token whose `sid` another issuer revoked (so every check
/// of it is confirmed with the ledger), a confirmation in flight that read the ledger before a
/// logout: the logout through this instance returns, and the next request must be refused
/// here. Failed on `main`: that request joined the flight that began before the commit and
/// was answered "not revoked".
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_mirror_reads_its_own_logout_while_an_older_lookup_is_in_flight(pool: PgPool) {
    let faulty = Faulty::new(store(&pool));
    let cache = MokaCache::builder(faulty.clone())
        .mode(CacheMode::Mirror)
        .start()
        .unwrap();
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
    cache
        .revoke(&Revocation::session("s-1", in_an_hour()).issuer("https://a.example"))
        .await
        .unwrap();
    assert_eq!(verdict(&cache, &hot()).await.unwrap(), Verdict::Active);

    faulty.hold_answers(true);
    let check = |cache: MokaCache<Faulty>| tokio::spawn(async move { verdict(&cache, &hot()).await });
    let before = faulty.lookups();
    let older = check(cache.clone());
    wait_until("the older lookup read the ledger", || async {
        faulty.lookups() == before + 1
    })
    .await;
    cache
        .revoke(&Revocation::token("b-1", in_an_hour()))
        .await
        .unwrap();
    let waits = cache.metrics().coalesced_waits;
    let newer = check(cache.clone());
    wait_until("the next request waits for a lookup", || async {
        newer.is_finished() || cache.metrics().coalesced_waits > waits || faulty.lookups() > before + 1
    })
    .await;
    faulty.hold_answers(false);
    assert_eq!(
        older.await.unwrap().unwrap(),
        Verdict::Active,
        "it began before the logout"
    );
    assert_eq!(
        newer.await.unwrap().unwrap(),
        Verdict::Revoked(RevokedBy::Token),
        "the instance that took the logout served the token"
    );
}
