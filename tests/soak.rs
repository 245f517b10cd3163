//! Fault-injection soak: two instances (`MokaCache<PgStore>`, lookup and mirror, each on its own
//! pool) under concurrent load, while a driver revokes tokens and subjects, kills the instances'
//! change-feed connections, and makes the database refuse every connection for a while.
//!
//! Afterwards: no request was accepted with a token revoked more than the propagation bound
//! earlier; every revocation that returned `Ok` is in the ledger; nothing answered 5xx except
//! 503s, and those only around the outage (the policy is `Closed`).
//!
//! CI runs a short profile (`SOAK_SECONDS`, default 12); the full one is
//! `SOAK_SECONDS=60 scripts/test.sh --test soak -- --nocapture`. Loopback only (in-process).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tower_jwt_revocation::Revocation;

use common::cluster::{Instance, allow_connections, instance_with_timeout, maintenance, terminate};
use common::*;
use http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use tower_jwt_revocation::{CacheMode, FailurePolicy, RevocationStore};

/// How long after a revocation returned `Ok` an instance may still accept the token: the
/// instances' `max_staleness` (1 s, see `cluster::instance`), one feed heartbeat (100 ms), and
/// scheduling slack on a loaded 2-core machine.
const PROPAGATION_BOUND: Duration = Duration::from_millis(2_000);
const TOKENS: usize = 200;
const SUBJECTS: usize = 20;

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

struct Outcome {
    token: usize,
    sent: Instant,
    status: StatusCode,
}

#[derive(Default)]
struct Ledger {
    /// Token index → when its `revoke` returned `Ok`.
    tokens: HashMap<usize, Instant>,
    /// Subject index → when its subject cutoff's `revoke` returned `Ok` (covers every token, all issued
    /// before the soak started).
    subjects: HashMap<usize, Instant>,
    failed_writes: usize,
}

impl Ledger {
    fn revoked_at(&self, token: usize) -> Option<Instant> {
        let by_token = self.tokens.get(&token).copied();
        let by_subject = self.subjects.get(&(token % SUBJECTS)).copied();
        match (by_token, by_subject) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revocations_hold_through_listener_kills_and_a_database_outage(pool: PgPool) {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
        .max(8);
    let duration = Duration::from_secs(seconds);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("soak: {seconds} s, seed {seed}");

    let timeout = Duration::from_secs(1);
    let instances = Arc::new([
        instance_with_timeout(&pool, "soak-a", CacheMode::Lookup, FailurePolicy::Closed, timeout).await,
        instance_with_timeout(&pool, "soak-b", CacheMode::Mirror, FailurePolicy::Closed, timeout).await,
    ]);
    let issued = now() - 10;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..TOKENS)
            .map(|i| mint(json!({"jti": format!("t{i}"), "sub": format!("s{}", i % SUBJECTS), "iat": issued, "exp": now() + 3600})))
            .collect(),
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let deadline = started + duration;
    let outage = (started + duration * 4 / 10, started + duration * 6 / 10);

    // Load: four tasks, random tokens on random instances, as fast as they go.
    let load: Vec<_> = (0..4u64)
        .map(|task| {
            let (instances, tokens) = (Arc::clone(&instances), Arc::clone(&tokens));
            tokio::spawn(async move {
                let mut rng = Xorshift(seed.wrapping_add(task.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
                let mut outcomes = Vec::new();
                while Instant::now() < deadline {
                    let token = rng.next(TOKENS);
                    let on: &Instance = &instances[rng.next(2)];
                    let sent = Instant::now();
                    let status = on.status(&tokens[token]).await;
                    outcomes.push(Outcome { token, sent, status });
                    // A cache hit never pends, so without this a load task would hold the
                    // runtime's thread; in a server each request is its own task.
                    tokio::task::yield_now().await;
                }
                outcomes
            })
        })
        .collect();

    // Driver: revocations through both instances, listener kills, and the outage.
    let (mut admin, db) = maintenance(&pool).await;
    let mut rng = Xorshift(seed.rotate_left(17) | 1);
    let mut killed = 0;
    let (mut outage_on, mut outage_done) = (false, false);
    let mut tick = 0u64;
    while Instant::now() < deadline {
        tick += 1;
        let now_at = Instant::now();
        if !outage_on && !outage_done && now_at >= outage.0 {
            allow_connections(&mut admin, &db, false).await;
            terminate(&mut admin, &db, None).await;
            outage_on = true;
        }
        if outage_on && now_at >= outage.1 {
            allow_connections(&mut admin, &db, true).await;
            (outage_on, outage_done) = (false, true);
        }
        // Kill one instance's feed connection about every second while the database is up.
        if tick.is_multiple_of(15) && !outage_on {
            killed += terminate(
                &mut admin,
                &db,
                Some(if tick.is_multiple_of(30) {
                    "soak-a"
                } else {
                    "soak-b"
                }),
            )
            .await;
        }
        let by = &instances[rng.next(2)].cache;
        if tick.is_multiple_of(10) {
            let subject = rng.next(SUBJECTS);
            let result = by
                .revoke(&Revocation::subject(&format!("s{subject}"), SystemTime::now()).reason("soak"))
                .await;
            let mut ledger = ledger.lock().unwrap();
            match result {
                Ok(_) => {
                    ledger.subjects.entry(subject).or_insert_with(Instant::now);
                }
                Err(_) => ledger.failed_writes += 1,
            }
        } else {
            let token = rng.next(TOKENS);
            let result = by
                .revoke(&Revocation::token(&format!("t{token}"), in_an_hour()).reason("soak"))
                .await;
            let mut ledger = ledger.lock().unwrap();
            match result {
                Ok(_) => {
                    ledger.tokens.entry(token).or_insert_with(Instant::now);
                }
                Err(_) => ledger.failed_writes += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if outage_on {
        allow_connections(&mut admin, &db, true).await;
    }
    let mut outcomes = Vec::new();
    for task in load {
        outcomes.extend(task.await.unwrap());
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());

    // 1. No accepted request carried a token revoked more than the bound before it was sent.
    let mut max_delay = Duration::ZERO;
    let mut violations = Vec::new();
    for o in outcomes.iter().filter(|o| o.status == StatusCode::OK) {
        if let Some(revoked) = ledger.revoked_at(o.token)
            && o.sent > revoked
        {
            let late = o.sent - revoked;
            max_delay = max_delay.max(late);
            if late > PROPAGATION_BOUND {
                violations.push((o.token, late));
            }
        }
    }
    // 2. Every revocation that returned Ok is in the ledger.
    let jtis: Vec<String> = ledger.tokens.keys().map(|t| format!("t{t}")).collect();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jwt_revocations WHERE jti = ANY($1)")
        .bind(&jtis)
        .fetch_one(&pool)
        .await
        .unwrap();
    let subjects: Vec<String> = ledger.subjects.keys().map(|s| format!("s{s}")).collect();
    let stored_subjects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jwt_subject_revocations WHERE subject = ANY($1)")
            .bind(&subjects)
            .fetch_one(&pool)
            .await
            .unwrap();
    // 3. Only 200, 401 and 503; 503s only around the outage.
    let count = |status: StatusCode| outcomes.iter().filter(|o| o.status == status).count();
    let others: Vec<u16> = outcomes
        .iter()
        .map(|o| o.status.as_u16())
        .filter(|s| ![200, 401, 503].contains(s))
        .collect();
    // After the outage: pools reconnect and feeds catch up (their backoff is capped at 5 s).
    let recovery = Duration::from_secs(5);
    let stray_503: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::SERVICE_UNAVAILABLE)
        .filter(|o| o.sent + PROPAGATION_BOUND < outage.0 || o.sent > outage.1 + recovery)
        .map(|o| o.sent - started)
        .collect();

    eprintln!(
        "soak: {} requests: {} accepted, {} rejected (401), {} unavailable (503); {} token and {} subject \
         revocations, {} writes refused during the outage; {killed} listener kills; max accepted-after-revoke \
         delay {max_delay:?}",
        outcomes.len(),
        count(StatusCode::OK),
        count(StatusCode::UNAUTHORIZED),
        count(StatusCode::SERVICE_UNAVAILABLE),
        ledger.tokens.len(),
        ledger.subjects.len(),
        ledger.failed_writes,
    );
    assert!(outcomes.len() > 100, "the load ran");
    assert!(count(StatusCode::UNAUTHORIZED) > 0 && count(StatusCode::OK) > 0);
    assert!(violations.is_empty(), "accepted after the bound: {violations:?}");
    assert_eq!(
        stored as usize,
        ledger.tokens.len(),
        "every Ok token revocation is durable"
    );
    assert_eq!(
        stored_subjects as usize,
        ledger.subjects.len(),
        "every Ok subject revocation is durable"
    );
    assert!(others.is_empty(), "unexpected statuses {others:?}");
    assert!(stray_503.is_empty(), "503 outside the outage at {stray_503:?}");
    assert!(killed >= 1, "the driver killed listeners");
}
