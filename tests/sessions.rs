//! Sessions and refresh-token rotation, in Postgres (each test its own database) and in memory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::instance;
use common::*;
use http::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tower_jwt_revocation::session::{
    AccessToken, MemorySessions, PgSessions, SessionConfig, SessionError, SessionMeta, Sessions,
};
use tower_jwt_revocation::{CacheMode, FailurePolicy, MemoryStore, PgStore};

fn pg_sessions(pool: &PgPool, config: SessionConfig) -> PgSessions<PgStore> {
    PgSessions::new(pool.clone(), PgStore::new(pool.clone()), config)
}

fn access_token(subject: &str, session_id: &str) -> String {
    let token = AccessToken::new(subject, session_id, Duration::from_secs(600)).unwrap();
    mint(Value::Object(token.claims))
}

/// The contract both implementations keep.
async fn concurrent_rotations_have_one_winner<X: Sessions>(sessions: Arc<X>) {
    let issued = sessions.start("alice", SessionMeta::default()).await.unwrap();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (sessions, token) = (Arc::clone(&sessions), issued.refresh_token.clone());
            tokio::spawn(async move { sessions.rotate(&token).await })
        })
        .collect();
    let (mut won, mut reused) = (0, 0);
    for racer in racers {
        match racer.await.unwrap() {
            Ok(next) => {
                assert_eq!(next.session.id, issued.session.id);
                won += 1;
            }
            Err(SessionError::Reused { session_id }) => {
                assert_eq!(session_id, issued.session.id);
                reused += 1;
            }
            Err(other) => panic!("a racer got {other:?}"),
        }
    }
    assert_eq!((won, reused), (1, 7));
}

async fn reuse_revokes_the_session<X: Sessions>(sessions: &X) -> String {
    let first = sessions.start("bob", SessionMeta::default()).await.unwrap();
    let second = sessions.rotate(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    let third = sessions.rotate(&second.refresh_token).await.unwrap();
    // The thief (or a stale client) presents an old token: the whole family dies.
    assert!(matches!(
        sessions.rotate(&first.refresh_token).await,
        Err(SessionError::Reused { .. })
    ));
    assert!(matches!(
        sessions.rotate(&third.refresh_token).await,
        Err(SessionError::Invalid)
    ));
    assert!(matches!(
        sessions.rotate("never-issued").await,
        Err(SessionError::Invalid)
    ));
    assert!(sessions.list("bob").await.unwrap().is_empty());
    first.session.id
}

async fn sessions_are_private_to_their_subject<X: Sessions>(sessions: &X) {
    let meta = SessionMeta {
        user_agent: Some("curl/8".into()),
        ip: Some("127.0.0.1".into()),
    };
    let carol = sessions.start("carol", meta.clone()).await.unwrap();
    let dave = sessions.start("dave", SessionMeta::default()).await.unwrap();
    assert!(matches!(
        sessions.revoke(&carol.session.id, "dave").await,
        Err(SessionError::NotFound)
    ));
    assert!(matches!(
        sessions.revoke("no-such-session", "carol").await,
        Err(SessionError::NotFound)
    ));
    let listed = sessions.list("carol").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), &listed[0].meta),
        (carol.session.id.as_str(), &meta)
    );
    assert!(
        sessions.rotate(&carol.refresh_token).await.is_ok(),
        "untouched by dave's attempt"
    );
    sessions.revoke(&dave.session.id, "dave").await.unwrap();
    assert!(matches!(
        sessions.rotate(&dave.refresh_token).await,
        Err(SessionError::Invalid)
    ));
}

async fn grace_tolerates_one_immediate_replay<X: Sessions>(sessions: &X) {
    let first = sessions.start("erin", SessionMeta::default()).await.unwrap();
    let second = sessions.rotate(&first.refresh_token).await.unwrap();
    assert!(matches!(
        sessions.rotate(&first.refresh_token).await,
        Err(SessionError::Superseded)
    ));
    // Once only: the second replay is reuse.
    assert!(matches!(
        sessions.rotate(&first.refresh_token).await,
        Err(SessionError::Reused { .. })
    ));
    assert!(matches!(
        sessions.rotate(&second.refresh_token).await,
        Err(SessionError::Invalid)
    ));
}

#[tokio::test]
async fn memory_sessions_keep_the_contract() {
    let store = MemoryStore::new();
    let sessions = Arc::new(MemorySessions::new(store.clone(), SessionConfig::default()));
    concurrent_rotations_have_one_winner(Arc::clone(&sessions)).await;
    let sid = reuse_revokes_the_session(&*sessions).await;
    let facts = tower_jwt_revocation::TokenFacts {
        session_id: Some(&sid),
        ..Default::default()
    };
    assert!(matches!(
        store.verdict(&facts),
        tower_jwt_revocation::Verdict::Revoked(_)
    ));
    sessions_are_private_to_their_subject(&*sessions).await;
    let graceful = MemorySessions::new(
        store,
        SessionConfig {
            grace: Some(Duration::from_secs(5)),
            ..SessionConfig::default()
        },
    );
    grace_tolerates_one_immediate_replay(&graceful).await;
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn postgres_sessions_keep_the_contract(pool: PgPool) {
    let sessions = Arc::new(pg_sessions(&pool, SessionConfig::default()));
    concurrent_rotations_have_one_winner(Arc::clone(&sessions)).await;
    reuse_revokes_the_session(&*sessions).await;
    sessions_are_private_to_their_subject(&*sessions).await;
    let graceful = pg_sessions(
        &pool,
        SessionConfig {
            grace: Some(Duration::from_secs(5)),
            ..SessionConfig::default()
        },
    );
    grace_tolerates_one_immediate_replay(&graceful).await;
    // Only hashes are stored.
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jwt_sessions WHERE octet_length(refresh_hash) = 32")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(stored > 0);
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn reuse_kills_the_sessions_access_tokens_on_another_instance(pool: PgPool) {
    let other = instance(&pool, "other", CacheMode::Lookup, FailurePolicy::Closed).await;
    let sessions = pg_sessions(&pool, SessionConfig::default());
    let first = sessions.start("fay", SessionMeta::default()).await.unwrap();
    let access = access_token("fay", &first.session.id);
    assert_eq!(other.status(&access).await, StatusCode::OK); // cached as not revoked there
    let _second = sessions.rotate(&first.refresh_token).await.unwrap();
    assert!(matches!(
        sessions.rotate(&first.refresh_token).await,
        Err(SessionError::Reused { .. })
    ));
    other.becomes(&access, StatusCode::UNAUTHORIZED).await;
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn revoke_all_racing_rotations_leaves_nothing_usable(pool: PgPool) {
    let other = instance(&pool, "other", CacheMode::Lookup, FailurePolicy::Closed).await;
    let sessions = Arc::new(pg_sessions(&pool, SessionConfig::default()));
    let issued = sessions.start("gus", SessionMeta::default()).await.unwrap();
    let rotating = {
        let sessions = Arc::clone(&sessions);
        tokio::spawn(async move {
            let (mut refresh, mut access) = (issued.refresh_token, Vec::new());
            for _ in 0..200 {
                match sessions.rotate(&refresh).await {
                    Ok(next) => {
                        access.push(access_token("gus", &next.session.id));
                        refresh = next.refresh_token;
                    }
                    Err(SessionError::Invalid) => break,
                    Err(other) => panic!("rotation failed with {other:?}"),
                }
            }
            (refresh, access)
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await; // let some rotations happen first
    assert_eq!(sessions.revoke_all("gus").await.unwrap(), 1);
    let (last_refresh, access) = rotating.await.unwrap();
    assert!(matches!(
        sessions.rotate(&last_refresh).await,
        Err(SessionError::Invalid)
    ));
    assert!(!access.is_empty());
    for token in &access {
        other.becomes(token, StatusCode::UNAUTHORIZED).await;
    }
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_connection_lost_mid_rotation_leaves_the_token_usable(pool: PgPool) {
    let sessions =
        Arc::new(pg_sessions(&pool, SessionConfig::default()).with_timeout(Duration::from_secs(10)));
    let issued = sessions.start("hal", SessionMeta::default()).await.unwrap();
    // Hold the used-tokens table so the rotation blocks after it has locked the session row.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jwt_session_used_tokens IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let rotation = {
        let (sessions, token) = (Arc::clone(&sessions), issued.refresh_token.clone());
        tokio::spawn(async move { sessions.rotate(&token).await })
    };
    let mut admin = pool.acquire().await.unwrap();
    wait_until("the rotation waits on the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut *admin)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    assert!(
        matches!(rotation.await.unwrap(), Err(SessionError::Store(_))),
        "a store error, not a 401"
    );
    blocker.rollback().await.unwrap();
    let next = sessions
        .rotate(&issued.refresh_token)
        .await
        .expect("the token survived the failed call");
    assert!(sessions.rotate(&next.refresh_token).await.is_ok());
}

#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn expired_sessions_are_purged_with_their_used_tokens(pool: PgPool) {
    let sessions = pg_sessions(&pool, SessionConfig::default());
    let old = sessions.start("ned", SessionMeta::default()).await.unwrap();
    sessions.rotate(&old.refresh_token).await.unwrap();
    let live = sessions.start("ned", SessionMeta::default()).await.unwrap();
    sqlx::query("UPDATE jwt_sessions SET expires_at = now() - interval '2 days' WHERE session_id = $1")
        .bind(&old.session.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        sessions.purge_expired(Duration::from_secs(86_400)).await.unwrap(),
        1
    );
    let used: i64 = sqlx::query_scalar("SELECT count(*) FROM jwt_session_used_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(used, 0, "the used-token markers went with their session");
    assert!(matches!(
        sessions.rotate(&old.refresh_token).await,
        Err(SessionError::Invalid)
    ));
    assert!(sessions.rotate(&live.refresh_token).await.is_ok());
}

/// Makes every COMMIT that changed a session take `seconds` on the server (a deferred
/// constraint trigger runs at commit time): the client's wait for the commit times out while the
/// server goes on to commit.
async fn slow_commits(pool: &PgPool, seconds: f64) {
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON jwt_sessions
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Reproduced on `main` before the fix: the rotation's COMMIT outlived the timeout, rotate
/// reported a store error although the server committed, and the client's retry with the same
/// refresh token was taken for reuse: the session was revoked.
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_commit_that_outlives_the_timeout_reports_what_the_server_did(pool: PgPool) {
    let sessions = pg_sessions(&pool, SessionConfig::default()).with_timeout(Duration::from_millis(500));
    let first = sessions.start("quinn", SessionMeta::default()).await.unwrap();
    slow_commits(&pool, 0.8).await;
    let second = sessions
        .rotate(&first.refresh_token)
        .await
        .expect("the rotation committed, and rotate says so");
    assert_eq!(second.session.id, first.session.id);
    sqlx::query("DROP TRIGGER slow_commit ON jwt_sessions")
        .execute(&pool)
        .await
        .unwrap();
    // The refresh token it returned is the current one; the session is alive.
    let third = sessions.rotate(&second.refresh_token).await.unwrap();
    assert_eq!(sessions.list("quinn").await.unwrap().len(), 1);
    assert_ne!(third.refresh_token, second.refresh_token);
}

/// A revocation store that cannot be reached: what `PgSessions` tells after its own commit.
#[derive(Clone)]
struct Unreachable;

impl tower_jwt_revocation::RevocationStore for Unreachable {
    async fn revoke(
        &self,
        _: &tower_jwt_revocation::Revocation<'_>,
    ) -> Result<bool, tower_jwt_revocation::StoreError> {
        Err(tower_jwt_revocation::StoreError::Unavailable("down".into()))
    }

    async fn list_by_subject(
        &self,
        _: &str,
        _: usize,
    ) -> Result<Vec<tower_jwt_revocation::RevocationRecord>, tower_jwt_revocation::StoreError> {
        Ok(Vec::new())
    }

    async fn purge_expired(&self, _: Duration) -> Result<u64, tower_jwt_revocation::StoreError> {
        Ok(0)
    }
}

/// Reproduced on `main` before the fix: after the session transaction committed (the session
/// revocation is in the ledger), failing to also tell the layer's backend made `revoke` and
/// `revoke_all` report a store error, which callers read as "nothing changed".
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn a_committed_change_is_reported_even_when_the_local_cache_cannot_be_told(pool: PgPool) {
    let sessions = PgSessions::new(pool.clone(), Unreachable, SessionConfig::default());
    let one = sessions.start("rae", SessionMeta::default()).await.unwrap();
    let two = sessions.start("rae", SessionMeta::default()).await.unwrap();
    sessions.revoke(&one.session.id, "rae").await.unwrap();
    assert_eq!(sessions.revoke_all("rae").await.unwrap(), 1);
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jwt_session_revocations WHERE subject = 'rae'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(revoked, 2);
    assert!(matches!(
        sessions.rotate(&two.refresh_token).await,
        Err(SessionError::Invalid)
    ));
}

/// Found in review, reproduced before the fix: "log out everywhere" made two round trips per
/// session inside one bounded transaction, so a subject with enough sessions (an attacker with
/// the password can open them) could never be logged out everywhere: here 3 000 of them did not
/// fit in 600 ms. It is one statement now (about 70 ms for these).
#[sqlx::test(migrator = "tower_jwt_revocation::backend::postgres::MIGRATOR")]
async fn log_out_everywhere_ends_hundreds_of_sessions_in_one_statement(pool: PgPool) {
    // The bound a database a few milliseconds away leaves for 3 000 sessions' round trips.
    let sessions = pg_sessions(&pool, SessionConfig::default()).with_timeout(Duration::from_millis(600));
    sqlx::query(
        "INSERT INTO jwt_sessions (session_id, subject, refresh_hash, expires_at) \
         SELECT 'many-' || i, 'wes', sha256(i::text::bytea), now() + interval '1 day' FROM generate_series(1, 3000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let live = sessions.start("wes", SessionMeta::default()).await.unwrap();
    assert_eq!(sessions.revoke_all("wes").await.unwrap(), 3001);
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jwt_session_revocations WHERE subject = 'wes'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(revoked, 3001);
    assert!(sessions.list("wes").await.unwrap().is_empty());
    assert!(matches!(
        sessions.rotate(&live.refresh_token).await,
        Err(SessionError::Invalid)
    ));
    let cutoff: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jwt_subject_revocations WHERE subject = 'wes')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(cutoff);
}

/// Before, the in-memory sessions were never purged: a long-running demo grew without bound.
/// One purger type drives every store, revocations and sessions alike.
#[tokio::test]
async fn memory_sessions_are_purged_by_the_purger_every_store_uses() {
    let store = MemoryStore::new();
    let config = SessionConfig {
        access_token_lifetime: Duration::ZERO,
        ..SessionConfig::default()
    };
    let sessions = MemorySessions::new(store.clone(), config);
    let ended = sessions.start("ann", SessionMeta::default()).await.unwrap();
    let live = sessions.start("ann", SessionMeta::default()).await.unwrap();
    sessions.revoke(&ended.session.id, "ann").await.unwrap();
    assert_eq!(sessions.len(), 2);

    let _purgers = (
        tower_jwt_revocation::spawn_purger(sessions.clone(), Duration::from_millis(10), Duration::ZERO)
            .unwrap(),
        tower_jwt_revocation::spawn_purger(store, Duration::from_millis(10), Duration::ZERO).unwrap(),
    );
    wait_until("the ended session is forgotten", || async { sessions.len() == 1 }).await;
    assert!(sessions.rotate(&live.refresh_token).await.is_ok());
    assert!(matches!(
        sessions.rotate(&ended.refresh_token).await,
        Err(SessionError::Invalid)
    ));
}
