//! Fan-out on NATS JetStream against a real `nats-server -js` (each test starts its own on a free
//! port with a temp store) and a real Postgres: relays publish the ledger's changes, instances
//! (`MokaCache<NatsLedger>`) follow the stream, and every fault of issue 25 that can be staged in
//! one process: a relay killed while another runs, every relay gone and back, NATS killed and
//! restarted, a message lost, duplicated or unreadable, rows written by plain SQL, a late
//! instance, and reconnect storms that must not leak consumers.

mod common;

use std::time::Duration;

use common::nats::NatsServer;
use common::*;
use sqlx::PgPool;
use tower_jwt_revocation::async_nats::{self, HeaderMap, jetstream};
use tower_jwt_revocation::backend::nats::{NatsLedger, Relay};
use tower_jwt_revocation::{
    CacheMode, MokaCache, PgStore, Revocation, RevocationBackend, RevocationStore, RevokedBy, TokenFacts,
    Verdict,
};

const MIGRATOR: &str = "tower_jwt_revocation::backend::postgres::MIGRATOR";
const STREAM: &str = "JWT_REVOCATIONS";

fn store(pool: &PgPool) -> PgStore {
    PgStore::new(pool.clone())
        .with_timeout(Duration::from_millis(500))
        .with_heartbeat(Duration::from_millis(100))
}

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap()
}

async fn relay(pool: &PgPool, server: &NatsServer, name: &str) -> Relay {
    Relay::builder(store(pool), client(server).await)
        .name(name)
        .start()
        .unwrap()
}

/// An instance following the stream, in sync (the relay's first marker arrived).
async fn instance(pool: &PgPool, server: &NatsServer, mode: CacheMode) -> MokaCache<NatsLedger> {
    let ledger = NatsLedger::new(store(pool), client(server).await);
    let cache = MokaCache::builder(ledger)
        .mode(mode)
        .max_staleness(Duration::from_secs(2))
        .start()
        .unwrap();
    assert!(
        cache.wait_in_sync(Duration::from_secs(10)).await,
        "the instance never proved sync"
    );
    cache
}

async fn answer(cache: &MokaCache<NatsLedger>, jti: &str) -> Verdict {
    verdict(cache, &common::facts(jti, "kim")).await.unwrap()
}

/// Waits until `cache`, in sync, no longer answers `jti` "not revoked" from memory (in lookup
/// mode it holds the revocation; in mirror mode its table holds the key, which the ledger then
/// confirms), then checks that it refuses it. A lookup-mode instance must have been asked
/// about `jti` before (so that memory answered "not revoked" until the feed said otherwise).
async fn refused_within(cache: &MokaCache<NatsLedger>, jti: &str, bound: Duration) {
    wait_until_within(
        &format!("the instance learns that {jti} is revoked"),
        bound,
        || async {
            cache.is_in_sync()
                && !matches!(
                    cache.try_check(&common::facts(jti, "kim")),
                    Some(Ok(Verdict::Active))
                )
        },
    )
    .await;
    assert_eq!(answer(cache, jti).await, Verdict::Revoked(RevokedBy::Token));
}

/// Two relays publish every event; JetStream stores each once and drops the other copy, and
/// every instance (lookup and mirror) refuses revocations made through another instance or by
/// plain SQL, from memory, without a Postgres feed of its own.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revocations_reach_every_instance_through_the_stream_and_copies_are_dropped(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let relays = [relay(&pool, &server, "a").await, relay(&pool, &server, "b").await];
    let lookup = instance(&pool, &server, CacheMode::Lookup).await;
    let mirror = instance(&pool, &server, CacheMode::Mirror).await;
    for jti in ["t-1", "t-2", "t-3"] {
        assert_eq!(answer(&lookup, jti).await, Verdict::Active);
    }
    lookup
        .revoke(&Revocation::token("t-1", in_an_hour()))
        .await
        .unwrap();
    refused_within(&mirror, "t-1", Duration::from_secs(2)).await;
    revoke_by_sql(&pool, "t-2").await;
    mirror
        .revoke(&Revocation::token("t-3", in_an_hour()))
        .await
        .unwrap();
    for cache in [&lookup, &mirror] {
        for jti in ["t-1", "t-2", "t-3"] {
            refused_within(cache, jti, Duration::from_secs(2)).await;
        }
    }
    wait_until("both relays published all three", || async {
        relays
            .iter()
            .all(|relay| relay.metrics().published_seq >= relays[0].metrics().ledger_seq)
            && relays
                .iter()
                .map(|r| r.metrics().published + r.metrics().deduplicated)
                .sum::<u64>()
                >= 6
    })
    .await;
    let stored: u64 = relays.iter().map(|relay| relay.metrics().published).sum();
    let dropped: u64 = relays.iter().map(|relay| relay.metrics().deduplicated).sum();
    assert_eq!(
        (stored, dropped),
        (3, 3),
        "each event stored once, its copy dropped"
    );
}

/// A relay killed while another runs: no revocation is lost or delayed past 2 s.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_relay_killed_while_another_runs_loses_nothing(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let (first, second) = (relay(&pool, &server, "a").await, relay(&pool, &server, "b").await);
    let cache = instance(&pool, &server, CacheMode::Mirror).await;
    drop(first);
    revoke_by_sql(&pool, "after-the-kill").await;
    refused_within(&cache, "after-the-kill", Duration::from_secs(2)).await;
    wait_until("the other relay published it", || async {
        second.metrics().published + second.metrics().deduplicated >= 1
    })
    .await;
}

/// The demo's relay as a *process* (`examples/relay.rs`, built by `cargo test` with the other
/// examples), two side by side, one killed with SIGKILL right after a commit it was about to
/// publish, while revocations keep coming: every one of them is refused everywhere within 2 s.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_relay_process_killed_with_sigkill_mid_publish_loses_nothing(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let Some(program) = example_program("relay") else {
        return;
    };
    let database_url = database_url(&pool).await;
    let spawn = |name: &str| {
        std::process::Command::new(&program)
            .env("DATABASE_URL", &database_url)
            .env("NATS_URL", server.url())
            .env("RELAY_NAME", name)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the relay example starts")
    };
    let mut relays = Children(vec![spawn("a"), spawn("b")]);
    // Both publish: a marker from each on the stream's sync subject.
    let markers = client(&server).await;
    let mut markers = markers.subscribe(format!("{STREAM}.sync")).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.len() < 2 {
            let Some(message) = poll_next(&mut markers).await else {
                break;
            };
            let marker: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or_default();
            if let Some(name) = marker["relay"].as_str() {
                seen.insert(name.to_owned());
            }
        }
    })
    .await
    .expect("both relays publish markers");
    let caches = [
        instance(&pool, &server, CacheMode::Mirror).await,
        instance(&pool, &server, CacheMode::Mirror).await,
    ];
    for i in 0..12 {
        let jti = format!("around-the-kill-{i}");
        revoke_by_sql(&pool, &jti).await;
        if i == 6 {
            // SIGKILL: no shutdown code runs; whatever it had in flight is gone.
            assert!(relays.0[0].try_wait().unwrap().is_none(), "relay a was running");
            relays.0[0].kill().unwrap();
            relays.0[0].wait().unwrap();
        }
        for cache in &caches {
            refused_within(cache, &jti, Duration::from_secs(2)).await;
        }
    }
    assert!(
        relays.0[1].try_wait().unwrap().is_none(),
        "the other relay kept running"
    );
}

/// Processes a test started, killed when it ends (even by a failed assertion).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The next item of a stream, without a `StreamExt` dependency.
async fn poll_next<S: futures_core::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// With every relay gone no marker arrives: the instance stops proving sync, so its "not
/// revoked" answers stop after `max_staleness`; revocations made meanwhile are enforced once a
/// relay is back.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn with_every_relay_gone_instances_stop_proving_sync_until_one_returns(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let only = relay(&pool, &server, "only").await;
    let cache = instance(&pool, &server, CacheMode::Mirror).await;
    drop(only);
    wait_until_within(
        "the instance stops trusting its memory",
        Duration::from_secs(5),
        || async { !cache.is_in_sync() },
    )
    .await;
    revoke_by_sql(&pool, "while-no-relay-ran").await;
    // Beyond max_staleness the mirror no longer answers "not revoked" from memory.
    assert!(cache.try_check(&common::facts("unrelated", "kim")).is_none());
    let _back = relay(&pool, &server, "back").await;
    refused_within(&cache, "while-no-relay-ran", Duration::from_secs(5)).await;
    assert!(cache.wait_in_sync(Duration::from_secs(5)).await);
}

/// NATS killed: a logout is still durable and refused at once by the instance that took it;
/// once NATS is back, by every instance.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_logout_while_nats_is_down_is_durable_and_reaches_everyone_once_it_is_back(pool: PgPool) {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let _relay = relay(&pool, &server, "a").await;
    let (taker, other) = (
        instance(&pool, &server, CacheMode::Lookup).await,
        instance(&pool, &server, CacheMode::Mirror).await,
    );
    assert_eq!(answer(&other, "logged-out").await, Verdict::Active);
    server.kill();
    taker
        .revoke(&Revocation::token("logged-out", in_an_hour()))
        .await
        .unwrap();
    assert_eq!(
        answer(&taker, "logged-out").await,
        Verdict::Revoked(RevokedBy::Token)
    );
    let durable = PgStore::new(pool.clone());
    assert_eq!(
        durable.check(&common::facts("logged-out", "kim")).await.unwrap(),
        Verdict::Revoked(RevokedBy::Token)
    );
    server.restart();
    refused_within(&other, "logged-out", Duration::from_secs(15)).await;
    assert!(other.wait_in_sync(Duration::from_secs(10)).await);
}

/// Messages published by hand with no relay running: a copy of an event is harmless, an event
/// whose predecessor was never published is repaired from the ledger, a marker past the
/// instance's position is repaired too before it proves sync, and an unreadable message makes
/// the instance read the ledger (never a panic, never a skipped revocation).
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_lost_duplicated_or_unreadable_message_is_repaired_from_the_ledger(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    // One relay creates the stream and brings the instance in sync, then goes.
    let first = relay(&pool, &server, "setup").await;
    let cache = instance(&pool, &server, CacheMode::Mirror).await;
    drop(first);
    let ledger = PgStore::new(pool.clone());
    let start = ledger.max_seq().await.unwrap();
    for jti in ["lost", "delivered", "behind-a-marker", "behind-garbage"] {
        ledger
            .revoke(&Revocation::token(jti, in_an_hour()))
            .await
            .unwrap();
    }
    let events = ledger.events_since(start, 10).await.unwrap();
    assert_eq!(events.len(), 4);
    let jetstream = jetstream::new(client(&server).await);
    let publish = |subject: String, id: Option<String>, body: Vec<u8>| {
        let jetstream = jetstream.clone();
        async move {
            let mut headers = HeaderMap::new();
            if let Some(id) = id {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            }
            jetstream
                .publish_with_headers(subject, headers, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let event = |i: usize, prev: i64| {
        let e = &events[i];
        serde_json::json!({
            "seq": e.seq, "prev": prev, "kind": "token", "key": e.record.key,
            "expires_at": common::now() as f64 + 3600.0, "revoked_at": common::now() as f64,
        })
        .to_string()
        .into_bytes()
    };
    // "lost" is never published; "delivered" names it as its predecessor.
    let subject = format!("{STREAM}.event");
    publish(
        subject.clone(),
        Some(format!("seq-{}", events[1].seq)),
        event(1, events[0].seq),
    )
    .await;
    refused_within(&cache, "delivered", Duration::from_secs(5)).await;
    refused_within(&cache, "lost", Duration::from_secs(1)).await;
    // A copy under another id (past JetStream's deduplication): applied once, harmless.
    publish(
        subject.clone(),
        Some("another-id".into()),
        event(1, events[0].seq),
    )
    .await;
    // A marker naming a seq the instance has not seen: repaired before it proves sync.
    let marker =
        serde_json::json!({"last_seq": events[2].seq, "proved_at": common::now() as f64, "relay": "hand"});
    publish(format!("{STREAM}.sync"), None, marker.to_string().into_bytes()).await;
    refused_within(&cache, "behind-a-marker", Duration::from_secs(5)).await;
    // Garbage: read the ledger instead.
    publish(subject, None, b"{ not json".to_vec()).await;
    refused_within(&cache, "behind-garbage", Duration::from_secs(5)).await;
    assert_eq!(answer(&cache, "never-revoked").await, Verdict::Active);
}

/// A relay resumes where the stream's last event ends, but never past its ledger's sequence: a
/// stream whose last event names a later `seq` (a ledger restored to an earlier point, another
/// ledger's relay) would otherwise make it skip every revocation up to that `seq`.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_relay_never_resumes_past_its_ledgers_sequence(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let creates = relay(&pool, &server, "creates-the-stream").await;
    let jetstream = jetstream::new(client(&server).await);
    wait_until("the relay created the stream", || {
        let jetstream = jetstream.clone();
        async move { jetstream.get_stream(STREAM).await.is_ok() }
    })
    .await;
    drop(creates);
    let forged = serde_json::json!({
        "seq": 1_000_000, "prev": 999_999, "kind": "token", "key": "elsewhere",
        "revoked_at": common::now() as f64,
    });
    jetstream
        .publish(format!("{STREAM}.event"), forged.to_string().into_bytes().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let resumed = relay(&pool, &server, "resumes").await;
    let cache = instance(&pool, &server, CacheMode::Mirror).await;
    revoke_by_sql(&pool, "after-the-restore").await;
    wait_until_within(
        "the relay publishes the ledger's next event",
        Duration::from_secs(5),
        || async { resumed.metrics().published >= 1 },
    )
    .await;
    refused_within(&cache, "after-the-restore", Duration::from_secs(2)).await;
    assert!(cache.is_in_sync(), "the instance follows the relay's proofs");
}

/// Found in review: an event naming a `seq` the ledger never gave out (another ledger's relay
/// on the same stream, a ledger restored to an earlier point), or naming no predecessor, and a
/// marker past the ledger's sequence, must never move an instance past revocations it has not
/// seen. Before the fix the forged event (no `prev`) was taken and every later real event,
/// with a smaller `seq`, was skipped as a copy.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_seq_the_ledger_never_gave_out_is_never_taken(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let first = relay(&pool, &server, "setup").await;
    let cache = instance(&pool, &server, CacheMode::Mirror).await;
    drop(first);
    let ledger = PgStore::new(pool.clone());
    ledger
        .revoke(&Revocation::token("real-1", in_an_hour()))
        .await
        .unwrap();
    let jetstream = jetstream::new(client(&server).await);
    let publish = |subject: &str, body: serde_json::Value| {
        let (jetstream, subject) = (jetstream.clone(), format!("{STREAM}.{subject}"));
        async move {
            jetstream
                .publish(subject, body.to_string().into_bytes().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let forged = |seq: i64, key: &str| serde_json::json!({"seq": seq, "kind": "token", "key": key, "revoked_at": common::now() as f64});
    // No `prev`: the instance reads the ledger instead, and takes "real-1" from it.
    publish("event", forged(1_000_000, "forged")).await;
    refused_within(&cache, "real-1", Duration::from_secs(5)).await;
    // A marker past the ledger's sequence proves nothing.
    publish(
        "sync",
        serde_json::json!({"last_seq": 2_000_000, "proved_at": common::now() as f64, "relay": "elsewhere"}),
    )
    .await;
    wait_until("the instance stops trusting its memory", || async {
        !cache.is_in_sync()
    })
    .await;
    // The next real event still arrives: the position never jumped.
    let before = ledger.max_seq().await.unwrap();
    ledger
        .revoke(&Revocation::token("real-2", in_an_hour()))
        .await
        .unwrap();
    let real = ledger.events_since(before, 1).await.unwrap().remove(0);
    let mut body = forged(real.seq, "real-2");
    body["prev"] = serde_json::json!(before);
    publish("event", body).await;
    let proof = serde_json::json!({"last_seq": real.seq, "proved_at": common::now() as f64, "relay": "hand"});
    publish("sync", proof).await;
    refused_within(&cache, "real-2", Duration::from_secs(5)).await;
    assert_eq!(
        answer(&cache, "forged").await,
        Verdict::Active,
        "the forged revocation was taken"
    );
}

/// A late instance loads the live set from Postgres, then follows the stream from the
/// snapshot's seq: nothing is missed between the two.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_late_instance_loads_the_snapshot_then_follows_the_stream(pool: PgPool) {
    let Some(server) = NatsServer::start() else { return };
    let _relay = relay(&pool, &server, "a").await;
    let early = instance(&pool, &server, CacheMode::Lookup).await;
    early
        .revoke(&Revocation::token("before", in_an_hour()))
        .await
        .unwrap();
    let late = instance(&pool, &server, CacheMode::Mirror).await;
    refused_within(&late, "before", Duration::from_secs(1)).await;
    early
        .revoke(&Revocation::token("after", in_an_hour()))
        .await
        .unwrap();
    refused_within(&late, "after", Duration::from_secs(2)).await;
}

/// Reconnect storms: NATS restarted twice under forty instances, each with its own connection.
/// Each notices the restart and follows from a new consumer well before the 10 s silence that
/// would replace it anyway, and deletes the one it replaced. Each instance follows the stream
/// through one consumer afterwards, and revocations still arrive.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn reconnect_storms_leave_one_consumer_per_instance(pool: PgPool) {
    const INSTANCES: usize = 40;
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let _relay = relay(&pool, &server, "a").await;
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(instance(&pool, &server, CacheMode::Mirror).await);
    }
    for round in 0..2 {
        server.restart();
        let jti = format!("after-restart-{round}");
        revoke_by_sql(&pool, &jti).await;
        for cache in &instances {
            refused_within(cache, &jti, Duration::from_secs(8)).await;
        }
    }
    let jetstream = jetstream::new(client(&server).await);
    // Consumers the server still holds: replaced ones are deleted (or, if a deletion failed,
    // gone after their 10 s inactivity threshold).
    wait_until_within(
        "at most one consumer per instance",
        Duration::from_secs(20),
        || {
            let jetstream = jetstream.clone();
            async move {
                let Ok(mut stream) = jetstream.get_stream(STREAM).await else {
                    return false;
                };
                stream
                    .info()
                    .await
                    .is_ok_and(|info| info.state.consumer_count <= INSTANCES)
            }
        },
    )
    .await;
}

#[allow(dead_code)]
fn unused(_: TokenFacts<'_>, _: &str) {
    let _ = MIGRATOR;
}
