//! The store, the cache tier and the sessions through a real PgBouncer in transaction mode
//! (`?statement-cache-capacity=0`, as sqlx users configure it), with and without a direct
//! connection for the change feed. Each test skips, saying why, where PgBouncer is missing.

mod common;

use std::time::{Duration, SystemTime};
use tower_jwt_revocation::Revocation;

use common::pgbouncer::PgBouncer;
use common::*;
use sqlx::PgPool;
use tower_jwt_revocation::session::{PgSessions, SessionConfig, SessionError, Sessions};
use tower_jwt_revocation::{
    CacheMode, Ledger, MokaCache, PgStore, RevocationBackend, RevocationStore, RevokedBy, TokenFacts, Verdict,
};

/// The URL of the test's database straight to Postgres.
fn direct_url(pool: &PgPool, database: &str) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{database}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    )
}

fn facts(jti: &str) -> TokenFacts<'_> {
    common::facts(jti, "nia")
}

async fn cached<B: Ledger>(cache: &MokaCache<B>, jti: &str) -> Verdict {
    verdict(cache, &facts(jti)).await.unwrap()
}

/// Reproduced on `main` before the fix: `migrate` failed through PgBouncer (sqlx's named
/// statements and session-level advisory lock), and so did every query once two clients shared
/// a server connection ("prepared statement \"sqlx_s_1\" already exists").
#[sqlx::test(migrations = false)]
async fn the_store_and_sessions_work_through_a_transaction_pooler(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(&pool.connect_options()) else {
        return;
    };
    let url = bouncer.url(pool.connect_options().get_username(), &database_name(&pool).await);
    let store = PgStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();

    // Many client connections over PgBouncer's 8 server connections, each client reusing
    // server connections other clients prepared statements on.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let jti = format!("pooled-{w}-{i}");
                    assert!(
                        store
                            .revoke(&Revocation::token(&jti, in_an_hour()).owner("nia").reason("it's"))
                            .await
                            .unwrap()
                    );
                    assert_eq!(
                        store.check(&facts(&jti)).await.unwrap(),
                        Verdict::Revoked(RevokedBy::Token)
                    );
                    assert_eq!(
                        store.check(&facts(&format!("free-{w}-{i}"))).await.unwrap(),
                        Verdict::Active
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    store
        .revoke(&Revocation::subject("nia", SystemTime::now()))
        .await
        .unwrap();
    // Keyed by an issuer that needs quoting, and checked under it, under another, and under
    // none: the keyed statements inlined with `$n` used twice.
    let issuer = "https://id.example/'quoted'\\";
    let keyed = [
        Revocation::session("nia-session", in_an_hour())
            .owner("nia")
            .issuer(issuer),
        Revocation::subject("nia", SystemTime::now()).issuer(issuer),
    ];
    for revocation in &keyed {
        assert!(store.revoke(revocation).await.unwrap());
    }
    let of = |issuer| TokenFacts {
        jti: Some("fresh"),
        session_id: Some("nia-session"),
        issuer,
        ..TokenFacts::default()
    };
    assert_eq!(
        store.check(&of(Some(issuer))).await.unwrap(),
        Verdict::Revoked(RevokedBy::Session)
    );
    assert_eq!(
        store.check(&of(Some("https://other.example"))).await.unwrap(),
        Verdict::Active
    );
    assert_eq!(
        store.check(&of(None)).await.unwrap(),
        Verdict::Revoked(RevokedBy::Session)
    );
    assert_eq!(store.list_by_subject("nia", 200).await.unwrap().len(), 83);
    assert_eq!(store.events_since(0, 1_000).await.unwrap().len(), 83);
    assert_eq!(store.snapshot().await.unwrap().records.len(), 83);
    assert!(store.max_seq().await.unwrap() > 0);
    assert_eq!(store.purge_expired(Duration::from_secs(60)).await.unwrap(), 0);

    let sessions = PgSessions::new(store.pool().clone(), store.clone(), SessionConfig::default());
    let first = sessions.start("oli", Default::default()).await.unwrap();
    let second = sessions.rotate(&first.refresh_token).await.unwrap();
    assert!(matches!(
        sessions.rotate(&first.refresh_token).await,
        Err(SessionError::Reused { .. })
    ));
    assert!(matches!(
        sessions.rotate(&second.refresh_token).await,
        Err(SessionError::Invalid)
    ));
    let third = sessions.start("oli", Default::default()).await.unwrap();
    assert_eq!(sessions.list("oli").await.unwrap().len(), 1);
    assert_eq!(sessions.revoke_all("oli").await.unwrap(), 1);
    assert!(sessions.rotate(&third.refresh_token).await.is_err());
}

/// Two instances behind PgBouncer: a revocation on one is refused by the other within 2 s when
/// the change feed has a direct connection (notifications arrive), and within 5 s without one
/// (notifications are lost in the pooler; the default 2 s heartbeat delivers it).
#[sqlx::test(migrations = false)]
async fn instances_behind_a_transaction_pooler_enforce_each_others_revocations(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(&pool.connect_options()) else {
        return;
    };
    let database = database_name(&pool).await;
    let url = bouncer.url(pool.connect_options().get_username(), &database);
    let direct = direct_url(&pool, &database);
    PgStore::connect(&url).await.unwrap().migrate().await.unwrap();
    for with_direct in [true, false] {
        for mode in [CacheMode::Lookup, CacheMode::Mirror] {
            let instance = || async {
                let mut store = PgStore::connect(&url).await.unwrap();
                if with_direct {
                    store = store.with_direct_url(&direct).unwrap();
                }
                let cache = MokaCache::builder(store).mode(mode).start().unwrap();
                assert!(cache.wait_in_sync(Duration::from_secs(10)).await);
                cache
            };
            let (a, b) = (instance().await, instance().await);
            let jti = format!("across-{with_direct}-{mode:?}");
            assert_eq!(cached(&b, &jti).await, Verdict::Active);
            a.revoke(&Revocation::token(&jti, in_an_hour()).owner("nia"))
                .await
                .unwrap();
            assert_eq!(cached(&a, &jti).await, Verdict::Revoked(RevokedBy::Token));
            let bound = Duration::from_secs(if with_direct { 2 } else { 5 });
            wait_until_within(
                &format!("{jti} is refused by the other instance"),
                bound,
                || async { cached(&b, &jti).await == Verdict::Revoked(RevokedBy::Token) },
            )
            .await;
        }
    }
}
