//! `PgStore::migrate` beside an application's own sqlx migrations: either order, rolling
//! deploys, instances starting together, and databases migrated the old way.

use std::path::Path;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
mod common;

use tower_jwt_revocation::PgStore;
use tower_jwt_revocation::backend::postgres::{HISTORY_TABLE, MIGRATOR};

/// The check query of the build before issuer keys, as it shipped: one row per key, whatever
/// the keyed tables hold.
const OLD_CHECK: &str = "SELECT \
    EXISTS (SELECT 1 FROM jwt_revocations WHERE jti = $1) AS token, \
    EXISTS (SELECT 1 FROM jwt_session_revocations WHERE session_id = $2) AS session, \
    (SELECT extract(epoch FROM not_before)::float8 FROM jwt_subject_revocations WHERE subject = $3) AS cutoff";

async fn application_migrator() -> Migrator {
    Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app_migrations"))
        .await
        .unwrap()
}

async fn crate_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT version FROM {HISTORY_TABLE} ORDER BY version"))
        .fetch_all(pool)
        .await
        .unwrap()
}

fn expected_versions() -> Vec<i64> {
    MIGRATOR.iter().map(|m| m.version).collect()
}

async fn tables_exist(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT to_regclass('jwt_revocations') IS NOT NULL AND to_regclass('jwt_sessions') IS NOT NULL \
         AND to_regclass('app_users') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Reproduced on `main` before the fix: with the application's migration recorded in
/// `_sqlx_migrations` first, `PgStore::migrate` failed with `VersionMissing(20250101000000)`.
#[sqlx::test(migrations = false)]
async fn the_crates_migrations_coexist_with_the_applications_in_either_order(pool: PgPool) {
    let app = application_migrator().await;
    // The application first, then the crate, then both again (every later start).
    app.run(&pool).await.unwrap();
    PgStore::new(pool.clone()).migrate().await.unwrap();
    app.run(&pool).await.unwrap();
    PgStore::new(pool.clone()).migrate().await.unwrap();
    assert!(tables_exist(&pool).await);
    assert_eq!(crate_versions(&pool).await, expected_versions());
    let app_versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        app_versions,
        [20250101000000, 20250102000000],
        "the crate never writes _sqlx_migrations"
    );
}

#[sqlx::test(migrations = false)]
async fn the_crate_first_then_the_application(pool: PgPool) {
    PgStore::new(pool.clone()).migrate().await.unwrap();
    application_migrator().await.run(&pool).await.unwrap();
    PgStore::new(pool.clone()).migrate().await.unwrap();
    assert!(tables_exist(&pool).await);
}

/// A rolling deploy: an older build starts against a schema a newer build already migrated.
#[sqlx::test(migrations = false)]
async fn an_older_build_starts_against_a_newer_schema(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {HISTORY_TABLE} (version, description, success, checksum, execution_time) \
         VALUES (29991231000000, 'from a newer release', true, '\\x00', 0)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    store.migrate().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn instances_migrating_at_once_apply_each_migration_once(pool: PgPool) {
    let mut instances = Vec::new();
    for _ in 0..4 {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap();
        instances.push(tokio::spawn(async move { PgStore::new(own).migrate().await }));
    }
    for instance in instances {
        instance.await.unwrap().unwrap();
    }
    assert_eq!(crate_versions(&pool).await, expected_versions());
}

/// Databases migrated through `_sqlx_migrations` (the crate's `MIGRATOR`, or `sqlx migrate run`
/// on its `migrations/`) are adopted, not migrated twice.
#[sqlx::test(migrations = false)]
async fn a_database_migrated_through_sqlx_migrations_is_adopted(pool: PgPool) {
    MIGRATOR.run(&pool).await.unwrap();
    PgStore::new(pool.clone()).migrate().await.unwrap();
    assert_eq!(crate_versions(&pool).await, expected_versions());
}

#[sqlx::test(migrations = false)]
async fn a_migration_edited_after_it_ran_is_refused(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    sqlx::query(&format!(
        "UPDATE {HISTORY_TABLE} SET checksum = '\\x00' WHERE version = $1"
    ))
    .bind(expected_versions()[0])
    .execute(&pool)
    .await
    .unwrap();
    let error = store.migrate().await.unwrap_err();
    let message = std::error::Error::source(&error).unwrap().to_string();
    assert!(message.contains(&expected_versions()[0].to_string()), "{message}");
}

/// Found in review: `seq` is in commit order only while its sequence hands out one number at a
/// time; a DBA who gives it a cache is told at the next start.
#[sqlx::test(migrations = false)]
async fn a_cached_sequence_is_reported(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    sqlx::query("ALTER SEQUENCE jwt_revocation_seq CACHE 50")
        .execute(&pool)
        .await
        .unwrap();
    let (_guard, logs) = common::capture_logs();
    store.migrate().await.unwrap();
    assert_eq!(
        logs.count("jwt_revocation_seq has CACHE > 1"),
        1,
        "{}",
        logs.text()
    );
}

/// A rolling deploy across the migration that keys revocations by issuer: every statement the
/// build before it runs (copied here as it shipped) still works on the new schema, with rows
/// written by both builds, and the new build's keyed rows reach the earlier build's feed and
/// snapshot as revocations of that `sid` or `sub` for every issuer (too much, never too little).
#[sqlx::test(migrations = false)]
async fn the_build_before_issuer_keys_runs_on_the_keyed_schema(pool: PgPool) {
    use std::time::{Duration, SystemTime};
    use tower_jwt_revocation::{Revocation, RevocationStore};

    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    for revocation in [
        Revocation::session("s-1", in_an_hour)
            .owner("alice")
            .issuer("https://a.example"),
        Revocation::subject("alice", SystemTime::now()).issuer("https://a.example"),
    ] {
        assert!(store.revoke(&revocation).await.unwrap());
    }
    // The earlier build's writes, each twice (its conflict targets must still exist).
    const OLD_SESSION: &str = "INSERT INTO jwt_session_revocations (session_id, subject, expires_at, reason, revoked_by) \
         VALUES ($1, $2, to_timestamp($3), $4, $5) ON CONFLICT (session_id) DO NOTHING";
    const OLD_SUBJECT: &str = "INSERT INTO jwt_subject_revocations (subject, not_before, reason, revoked_by) \
         VALUES ($1, to_timestamp($2::float8), $3, $4) \
         ON CONFLICT (subject) DO UPDATE SET not_before = excluded.not_before, revoked_at = now(), \
             reason = excluded.reason, revoked_by = excluded.revoked_by \
         WHERE excluded.not_before > jwt_subject_revocations.not_before";
    for _ in 0..2 {
        sqlx::query(OLD_SESSION)
            .bind("s-1")
            .bind("alice")
            .bind(2_000_000_000.0_f64)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(OLD_SUBJECT)
            .bind("alice")
            .bind(1_000.0_f64)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .execute(&pool)
            .await
            .unwrap();
    }
    let (token, session, cutoff): (bool, bool, Option<f64>) = sqlx::query_as(OLD_CHECK)
        .bind("t")
        .bind("s-1")
        .bind("alice")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((token, session, cutoff), (false, true, Some(1_000.0)));
    // What it cannot do: see a key revoked under an issuer only (docs::postgres, "Rolling deploy").
    let keyed_only = Revocation::session("s-2", in_an_hour).issuer("https://a.example");
    assert!(store.revoke(&keyed_only).await.unwrap());
    let (_, session, _): (bool, bool, Option<f64>) = sqlx::query_as(OLD_CHECK)
        .bind("t")
        .bind("s-2")
        .bind("nobody")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!session);
    // Its feed and snapshot read the log by column name, kinds it knows, every row.
    const OLD_LOG: &str = "SELECT kind, key, subject, \
        extract(epoch FROM expires_at)::float8 AS expires_at, \
        extract(epoch FROM not_before)::float8 AS not_before, \
        extract(epoch FROM revoked_at)::float8 AS revoked_at, \
        reason, revoked_by, seq FROM jwt_revocation_log WHERE seq > $1 ORDER BY seq LIMIT $2";
    let rows: Vec<(String, String)> = sqlx::query_as::<
        _,
        (
            String,
            String,
            Option<String>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<String>,
            Option<String>,
            i64,
        ),
    >(OLD_LOG)
    .bind(0_i64)
    .bind(100_i64)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|row| (row.0, row.1))
    .collect();
    let expected = [
        ("session", "s-1"),
        ("subject", "alice"),
        ("session", "s-1"),
        ("subject", "alice"),
        ("session", "s-2"),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (kind, key) in expected {
        assert!(rows.contains(&(kind.to_owned(), key.to_owned())), "{rows:?}");
    }
    // And the new build tells them apart.
    let records = store.list_by_subject("alice", 10).await.unwrap();
    let mut issuers: Vec<_> = records.iter().map(|r| (r.kind, r.issuer.clone())).collect();
    issuers.sort_by_key(|(kind, issuer)| (format!("{kind:?}"), issuer.clone()));
    use tower_jwt_revocation::RevocationKind::{Session, Subject};
    assert_eq!(
        issuers,
        [
            (Session, None),
            (Session, Some("https://a.example".to_owned())),
            (Subject, None),
            (Subject, Some("https://a.example".to_owned())),
        ]
    );
}

/// Issue 24, item 1. A deployment that already accepted two issuers before revocations were
/// keyed, upgraded one instance at a time: the new build's "log out everywhere" and "end this
/// session", filed through a two-issuer layer at its defaults, must be what the previous
/// build's check query (copied as it shipped) finds, or an old instance serves the revoked
/// token. Failed on `main`: the layer keyed by default, its rows went to the keyed tables, and
/// the old query found neither.
#[sqlx::test(migrations = false)]
async fn a_two_issuer_layer_at_its_defaults_files_what_the_previous_build_enforces(pool: PgPool) {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use http::{Request, StatusCode, header::AUTHORIZATION};
    use std::time::Duration;
    use tower::ServiceExt;
    use tower_jwt_revocation::decode::Issuer;
    use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, Header};
    use tower_jwt_revocation::{Claims, JwtRevocationLayer, RevocationStore};

    let store = PgStore::new(pool.clone());
    store.migrate().await.unwrap();
    let layer = JwtRevocationLayer::builder(store.clone())
        .issuer(Issuer::new(
            "https://a.example",
            DecodingKey::from_secret(b"secret-of-a"),
        ))
        .issuer(Issuer::new(
            "https://b.example",
            DecodingKey::from_secret(b"secret-of-b"),
        ))
        .build()
        .unwrap();
    let writer = store.clone();
    let app = Router::new()
        .route(
            "/logout",
            post(move |claims: Claims| async move {
                let session = claims.session_revocation(Duration::from_secs(3600)).unwrap();
                writer.revoke(&session).await.unwrap();
                writer
                    .revoke(&claims.subject_revocation().unwrap())
                    .await
                    .unwrap();
                StatusCode::NO_CONTENT
            }),
        )
        .layer(layer);
    let token = common::mint_with(
        Header::new(Algorithm::HS256),
        serde_json::json!({
            "iss": "https://a.example", "jti": "t-1", "sub": "alice", "sid": "s-1",
            "iat": common::now() - 5, "exp": common::now() + 600,
        }),
        b"secret-of-a",
    );
    let request = Request::post("/logout")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.oneshot(request).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );

    let (_, session, cutoff): (bool, bool, Option<f64>) = sqlx::query_as(OLD_CHECK)
        .bind("t-1")
        .bind("s-1")
        .bind("alice")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(session, "the previous build does not see the session revocation");
    assert!(
        cutoff.is_some_and(|cutoff| cutoff >= (common::now() - 5) as f64),
        "the previous build does not see the cutoff: {cutoff:?}"
    );
}
