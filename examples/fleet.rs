//! A simulated fleet in one process (issue 25's fleet measurements): N instances (`MokaCache` in
//! mirror mode, each following its own feed) on one Postgres, K revocations written by plain
//! SQL, and how long they take to reach every instance.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release --example fleet -- nats 1000 10000
//! cargo run --release --example fleet -- postgres 40 10000
//! ```
//!
//! `nats`: one relay publishes to a `nats-server -js` this program starts on a free loopback
//! port, and every instance is a `MokaCache<NatsLedger>` with its own push consumer (over 8
//! shared NATS connections). `postgres`: every instance is a `MokaCache<PgStore>` with its own
//! pool and `LISTEN` connection, as many as the database admits (those that never prove sync
//! are counted). Each instance records when it applied each event; the propagation of an event
//! to an instance is that moment minus the moment its batch committed. One JSON line is printed
//! and written to `target/bench/fleet-{feed}-{instances}.jsonl`. It uses a database of its own,
//! `tower_jwt_revocation_fleet`, dropped and created at start.

#[path = "../tests/common/nats.rs"]
mod nats_server;
#[path = "support/fleet.rs"]
mod support;

use support::{find_program, free_port, percentile};

use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tower_jwt_revocation::backend::nats::{NatsLedger, Relay};
use tower_jwt_revocation::{CacheMode, Ledger, MokaCache, PgStore};

const DATABASE: &str = "tower_jwt_revocation_fleet";

async fn connections(admin: &sqlx::PgPool) -> i64 {
    support::connections(admin, DATABASE).await
}

/// Samples, every `every`, how many events each cache has applied, until all have `events` or
/// `bound` passes: the moments (since `start`) each instance reached each tenth of the events.
async fn follow_progress<L: Ledger>(
    caches: &[MokaCache<L>],
    events: u64,
    start: Instant,
    bound: Duration,
) -> (Option<Duration>, Vec<f64>) {
    // Per instance, when it first applied at least `events` (its last event).
    let mut done: Vec<Option<f64>> = vec![None; caches.len()];
    loop {
        let now = start.elapsed();
        for (slot, cache) in done.iter_mut().zip(caches) {
            if slot.is_none() && cache.metrics().events_applied >= events {
                *slot = Some(now.as_secs_f64());
            }
        }
        if done.iter().all(Option::is_some) {
            let mut times: Vec<f64> = done.into_iter().flatten().collect();
            times.sort_by(f64::total_cmp);
            return (Some(now), times);
        }
        if now >= bound {
            let mut times: Vec<f64> = done.into_iter().flatten().collect();
            times.sort_by(f64::total_cmp);
            return (None, times);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Twenty single revocations, one at a time on a quiet fleet: for each, every instance's
/// propagation lag in ms (as its cache records it for the last event it applied).
async fn single_logouts<L: Ledger>(caches: &[MokaCache<L>], pool: &sqlx::PgPool, already: u64) -> Vec<f64> {
    let mut lags = Vec::new();
    for i in 0..20_u64 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let inserted = sqlx::query(
            "INSERT INTO jwt_revocations (jti, expires_at) VALUES ($1, now() + interval '1 hour')",
        )
        .bind(format!("single-{i}"))
        .execute(pool)
        .await;
        if inserted.is_err() {
            continue;
        }
        let target = already + i + 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && !caches
                .iter()
                .all(|cache| cache.metrics().events_applied >= target)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        lags.extend(
            caches
                .iter()
                .map(|cache| cache.metrics().last_propagation_ms as f64),
        );
    }
    lags.sort_by(f64::total_cmp);
    lags
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let feed = args.first().map_or("nats", String::as_str).to_owned();
    let instances: usize = args.get(1).map_or(Ok(1000), |n| n.parse())?;
    let revocations: i64 = args.get(2).map_or(Ok(10_000), |n| n.parse())?;
    let (admin_options, options) = support::fresh_database(DATABASE).await?;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(admin_options)
        .await?;
    let shared = PgPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(5))
        .connect_with(options.clone())
        .await?;
    let store = PgStore::new(shared.clone());
    store.migrate().await?;

    let started = Instant::now();
    let mut _keep = None;
    let mut nats_caches = Vec::new();
    let mut pg_caches = Vec::new();
    if feed == "nats" {
        let server = nats_server::NatsServer::start().ok_or("nats-server is not installed")?;
        let url = server.url();
        let relay_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let relay = Relay::builder(
            PgStore::new(relay_pool),
            tower_jwt_revocation::async_nats::connect(&url).await?,
        )
        .start()?;
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(tower_jwt_revocation::async_nats::connect(&url).await?);
        }
        for i in 0..instances {
            let ledger = NatsLedger::new(store.clone(), clients[i % clients.len()].clone());
            nats_caches.push(MokaCache::builder(ledger).mode(CacheMode::Mirror).start()?);
        }
        _keep = Some((server, relay));
    } else {
        for _ in 0..instances {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy_with(options.clone());
            pg_caches.push(
                MokaCache::builder(PgStore::new(pool))
                    .mode(CacheMode::Mirror)
                    .start()?,
            );
        }
    }
    let mut in_sync = 0;
    for cache in &nats_caches {
        in_sync += usize::from(cache.wait_in_sync(Duration::from_secs(60)).await);
    }
    for cache in &pg_caches {
        in_sync += usize::from(cache.wait_in_sync(Duration::from_secs(3)).await);
    }
    let ready_s = started.elapsed().as_secs_f64();
    eprintln!("{in_sync} of {instances} instances in sync after {ready_s:.1} s");
    let held_ready = connections(&admin).await;

    // The revocations, by plain SQL in batches of 1 000, each batch one transaction. A database
    // the instances filled refuses this too: that is the result, recorded.
    let written = Instant::now();
    for batch in 0..(revocations + 999) / 1000 {
        let count = (revocations - batch * 1000).min(1000);
        let inserted = sqlx::query(
            "INSERT INTO jwt_revocations (jti, expires_at) \
             SELECT 'fleet-' || $1::bigint || '-' || g, now() + interval '1 hour' FROM generate_series(1, $2::bigint) g",
        )
        .bind(batch)
        .bind(count)
        .execute(&shared)
        .await;
        if let Err(error) = inserted {
            let line = serde_json::json!({
                "feed": feed, "instances": instances, "instances_in_sync": in_sync,
                "revocations": revocations, "ready_s": ready_s,
                "postgres_connections_in_sync": held_ready,
                "error": format!("writing the revocations failed: {error}"),
            });
            return record(&feed, instances, &line);
        }
    }
    let write_s = written.elapsed().as_secs_f64();
    let events = u64::try_from(revocations).unwrap_or(0);
    let bound = Duration::from_secs(300);
    let pg_synced: Vec<_> = pg_caches.into_iter().filter(MokaCache::is_in_sync).collect();
    let (everywhere, done) = if feed == "nats" {
        follow_progress(&nats_caches, events, written, bound).await
    } else {
        follow_progress(&pg_synced, events, written, bound).await
    };
    let quiet_pg = if feed == "nats" {
        Vec::new()
    } else {
        single_logouts(&pg_synced, &shared, events).await
    };
    // Then single logouts on a quiet fleet, one at a time: each instance's lag for each
    // (applied minus `revoked_at`, as the cache records it for its last event).
    let quiet = if feed == "nats" {
        single_logouts(&nats_caches, &shared, events).await
    } else {
        quiet_pg
    };
    let relay = _keep.as_ref().map(|(_, relay)| relay.metrics());
    let held = connections(&admin).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let held_idle = connections(&admin).await;
    let line = serde_json::json!({
        "feed": feed,
        "instances": instances,
        "instances_in_sync": in_sync,
        "revocations": revocations,
        "ready_s": ready_s,
        "write_s": write_s,
        "all_applied_everywhere_s": everywhere.map(|d| d.as_secs_f64()),
        "last_event_applied_p50_s": percentile(&done, 0.5),
        "last_event_applied_p99_s": percentile(&done, 0.99),
        "single_logout_samples": quiet.len(),
        "single_logout_p50_ms": percentile(&quiet, 0.5),
        "single_logout_p99_ms": percentile(&quiet, 0.99),
        "relay_published": relay.map(|m| m.published),
        "postgres_connections_in_sync": held_ready,
        "postgres_connections_after": held,
        "postgres_connections_idle": held_idle,
    });
    record(&feed, instances, &line)
}

fn record(feed: &str, instances: usize, line: &serde_json::Value) -> Result<(), Box<dyn std::error::Error>> {
    support::record(&format!("fleet-{feed}-{instances}"), line)
}
