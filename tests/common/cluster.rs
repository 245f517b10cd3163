//! Two (or more) server instances on one database, and the faults a test inflicts on them:
//! each instance is a `MokaCache<PgStore>` on its own pool behind a layer around a small axum
//! app, and its change feed's connection is named so a test can kill exactly that one.
#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tower::ServiceExt;
use tower_jwt_revocation::jsonwebtoken::DecodingKey;
use tower_jwt_revocation::{CacheMode, Claims, FailurePolicy, JwtRevocationLayer, MokaCache, PgStore};

use super::{SECRET, wait_until_within};

pub struct Instance {
    pub cache: MokaCache<PgStore>,
    pub app: Router,
}

/// How an instance of the cluster is tuned; the default is fast enough for tests to wait on.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Every store call (connection wait plus query).
    pub timeout: Duration,
    /// The change feed's heartbeat.
    pub heartbeat: Duration,
    /// How long after its last proof of sync the cache still trusts memory.
    pub max_staleness: Duration,
    /// How long a "not revoked" answer is kept.
    pub negative_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(500),
            heartbeat: Duration::from_millis(100),
            max_staleness: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(60),
        }
    }
}

pub async fn instance(pool: &PgPool, name: &str, mode: CacheMode, policy: FailurePolicy) -> Instance {
    instance_with(pool, name, mode, policy, Settings::default()).await
}

/// An instance whose store calls (connection wait plus query) are bounded by `timeout`.
pub async fn instance_with_timeout(
    pool: &PgPool,
    name: &str,
    mode: CacheMode,
    policy: FailurePolicy,
    timeout: Duration,
) -> Instance {
    let settings = Settings {
        timeout,
        ..Settings::default()
    };
    instance_with(pool, name, mode, policy, settings).await
}

/// An instance tuned by `settings`.
pub async fn instance_with(
    pool: &PgPool,
    name: &str,
    mode: CacheMode,
    policy: FailurePolicy,
    settings: Settings,
) -> Instance {
    let own_pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(settings.timeout)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let store = PgStore::new(own_pool)
        .with_timeout(settings.timeout)
        .with_heartbeat(settings.heartbeat)
        .with_listener_name(name);
    let cache = MokaCache::builder(store)
        .mode(mode)
        .max_staleness(settings.max_staleness)
        .negative_ttl(settings.negative_ttl)
        .start()
        .unwrap();
    assert!(
        cache.wait_in_sync(Duration::from_secs(5)).await,
        "{name} never got in sync"
    );
    async fn me(claims: Claims) -> String {
        claims.sub.unwrap_or_default()
    }
    let layer = JwtRevocationLayer::builder(cache.clone())
        .decoding_key(DecodingKey::from_secret(SECRET))
        .failure_policy(policy)
        .build()
        .unwrap();
    Instance {
        cache,
        app: Router::new().route("/me", get(me)).layer(layer),
    }
}

/// Two instances on one database, one per cache mode, tuned by `settings`.
pub async fn lookup_and_mirror(pool: &PgPool, settings: Settings) -> (Instance, Instance) {
    (
        instance_with(pool, "lookup", CacheMode::Lookup, FailurePolicy::Closed, settings).await,
        instance_with(pool, "mirror", CacheMode::Mirror, FailurePolicy::Closed, settings).await,
    )
}

impl Instance {
    pub async fn status(&self, token: &str) -> StatusCode {
        let req = Request::get("/me")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        self.app.clone().oneshot(req).await.unwrap().status()
    }

    pub async fn becomes(&self, token: &str, expected: StatusCode) {
        self.becomes_within(token, expected, Duration::from_secs(5)).await;
    }

    /// Waits until the instance answers `expected` for `token`; fails the test after `bound`.
    pub async fn becomes_within(&self, token: &str, expected: StatusCode, bound: Duration) {
        wait_until_within(&format!("the instance answers {expected}"), bound, || async {
            self.status(token).await == expected
        })
        .await;
    }
}

pub async fn maintenance(pool: &PgPool) -> (PgConnection, String) {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let options = pool.connect_options().as_ref().clone().database("postgres");
    (PgConnection::connect_with(&options).await.unwrap(), db)
}

pub async fn allow_connections(conn: &mut PgConnection, db: &str, allow: bool) {
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {allow}"))
        .execute(conn)
        .await
        .unwrap();
}

pub async fn terminate(conn: &mut PgConnection, db: &str, application_name: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() AND ($2::text IS NULL OR application_name = $2)",
    )
    .bind(db)
    .bind(application_name)
    .fetch_one(conn)
    .await
    .unwrap()
}
