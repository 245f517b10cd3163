//! Two demo instances on one database, as operators run them: behind a real PgBouncer in
//! transaction mode, with and without `DATABASE_DIRECT_URL`, in lookup and mirror mode, on a
//! database that already holds another application's sqlx migrations; and following a relay's
//! NATS JetStream stream (`REVOCATION_FEED=nats`) with no standing Postgres connection.

#[allow(dead_code)]
#[path = "../examples/server.rs"]
mod server;

mod common;

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use common::nats::NatsServer;
use common::pgbouncer::PgBouncer;
use common::wait_until_within;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, StatusCode};
use server::store::{StoreSettings, WithStore, with_store};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_jwt_revocation::session::Sessions;
use tower_jwt_revocation::{CacheMode, FailurePolicy, RevocationBackend, RevocationStore};

/// Hands the demo's router to the test, then keeps its store (and purger) alive.
struct Handoff(oneshot::Sender<Router>);

impl WithStore for Handoff {
    async fn run<S, X>(self, store: S, sessions: X, _: &'static str) -> Result<(), Box<dyn std::error::Error>>
    where
        S: RevocationBackend + RevocationStore + Clone,
        X: Sessions,
    {
        let config = server::Config {
            secret: b"demo-pooler-secret-demo-pooler-secret".to_vec(),
            admin_subjects: Vec::new(),
            failure_policy: FailurePolicy::Closed,
            metrics: None,
            provider: None,
            audience: None,
            baseline_with_provider: false,
            receivers: None,
            resource: None,
        };
        let _ = self.0.send(server::app(store, sessions, config));
        std::future::pending::<()>().await;
        Ok(())
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    let body = body.map_or_else(Body::empty, |json| Body::from(json.to_owned()));
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn login(app: &Router, sub: &str) -> String {
    let (status, body) = call(
        app,
        "POST",
        "/login",
        None,
        Some(&format!(r#"{{"sub":"{sub}"}}"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["access_token"].as_str().unwrap().to_owned()
}

/// A logout on instance A is refused by instance B within the bound the issue sets.
async fn logout_reaches_the_other_instance(a: &Router, b: &Router, sub: &str, bound: Duration) {
    let token = login(a, sub).await;
    assert_eq!(call(b, "GET", "/me", Some(&token), None).await.0, StatusCode::OK);
    assert_eq!(
        call(a, "POST", "/logout", Some(&token), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(a, "GET", "/me", Some(&token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    wait_until_within(
        &format!("{sub}'s logout is enforced on the other instance"),
        bound,
        || async { call(b, "GET", "/me", Some(&token), None).await.0 == StatusCode::UNAUTHORIZED },
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn demo_instances_behind_pgbouncer_enforce_each_others_logouts(pool: PgPool) {
    let Some(bouncer) = PgBouncer::start(&pool.connect_options()) else {
        return;
    };
    // Another application's migrations are there first.
    sqlx::migrate::Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app_migrations"))
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let options = pool.connect_options();
    let database = common::database_name(&pool).await;
    let pooled = bouncer.url(options.get_username(), &database);
    let direct = format!(
        "postgres://{}@{}:{}/{database}",
        options.get_username(),
        options.get_host(),
        options.get_port()
    );
    for with_direct in [true, false] {
        for mode in [CacheMode::Lookup, CacheMode::Mirror] {
            let settings = StoreSettings {
                database_url: Some(pooled.clone()),
                direct_url: with_direct.then(|| direct.clone()),
                cache: Some(mode),
                nats: None,
                idle_timeout: Duration::from_secs(60),
            };
            let (to_a, from_a) = oneshot::channel();
            let (to_b, from_b) = oneshot::channel();
            let bound = Duration::from_secs(if with_direct { 2 } else { 5 });
            let sub = format!("pia-{with_direct}-{mode:?}");
            tokio::select! {
                ended = with_store(settings.clone(), Handoff(to_a)) => panic!("instance A ended: {ended:?}"),
                ended = with_store(settings, Handoff(to_b)) => panic!("instance B ended: {ended:?}"),
                () = async {
                    let (a, b) = (from_a.await.unwrap(), from_b.await.unwrap());
                    logout_reaches_the_other_instance(&a, &b, &sub, bound).await;
                } => {}
            }
        }
    }
}

/// `REVOCATION_FEED=nats`: a logout on one instance is refused by the other through the
/// stream (a relay publishes it; neither instance has a Postgres feed), and once idle the
/// instances hold no Postgres connection (`DATABASE_IDLE_TIMEOUT_SECS`).
#[sqlx::test(migrations = false)]
async fn demo_instances_on_the_nats_feed_enforce_logouts_and_hold_no_idle_connection(pool: PgPool) {
    let Some(nats) = NatsServer::start() else { return };
    let store = tower_jwt_revocation::PgStore::new(pool.clone()).with_heartbeat(Duration::from_millis(200));
    store.migrate().await.unwrap();
    let client = tower_jwt_revocation::async_nats::connect(nats.url())
        .await
        .unwrap();
    let _relay = tower_jwt_revocation::Relay::builder(store, client)
        .start()
        .unwrap();
    let options = pool.connect_options();
    let database = common::database_name(&pool).await;
    let url = format!(
        "postgres://{}@{}:{}/{database}?application_name=demo-nats-instance",
        options.get_username(),
        options.get_host(),
        options.get_port()
    );
    let settings = |mode: &'static str| {
        let (url, nats) = (url.clone(), nats.url());
        StoreSettings::from_vars(move |name| match name {
            "DATABASE_URL" => Some(url.clone()),
            "REVOCATION_CACHE" => Some(mode.to_owned()),
            "REVOCATION_FEED" => Some("nats".to_owned()),
            "NATS_URL" => Some(nats.clone()),
            "DATABASE_IDLE_TIMEOUT_SECS" => Some("1".to_owned()),
            _ => None,
        })
        .unwrap()
    };
    let (to_a, from_a) = oneshot::channel();
    let (to_b, from_b) = oneshot::channel();
    tokio::select! {
        ended = with_store(settings("lookup"), Handoff(to_a)) => panic!("instance A ended: {ended:?}"),
        ended = with_store(settings("mirror"), Handoff(to_b)) => panic!("instance B ended: {ended:?}"),
        () = async {
            let (a, b) = (from_a.await.unwrap(), from_b.await.unwrap());
            logout_reaches_the_other_instance(&a, &b, "nia", Duration::from_secs(2)).await;
            wait_until_within("the idle instances hold no Postgres connection", Duration::from_secs(15), || async {
                let held: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'demo-nats-instance'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                held == 0
            })
            .await;
        } => {}
    }
}

#[test]
fn the_nats_feed_needs_a_database_and_a_cache() {
    let read = |vars: &[(&str, &str)]| {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        StoreSettings::from_vars(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let db = ("DATABASE_URL", "postgres://db/app");
    let nats = read(&[db, ("REVOCATION_FEED", "nats")]).unwrap();
    assert_eq!(
        nats.nats,
        Some(("nats://127.0.0.1:4222".to_owned(), "JWT_REVOCATIONS".to_owned()))
    );
    assert_eq!(nats.idle_timeout, Duration::from_secs(60));
    assert!(read(&[db, ("REVOCATION_FEED", "nats"), ("REVOCATION_CACHE", "off")]).is_err());
    assert!(read(&[("REVOCATION_FEED", "nats")]).is_err());
    assert!(read(&[db, ("REVOCATION_FEED", "kafka")]).is_err());
    assert!(read(&[db, ("DATABASE_IDLE_TIMEOUT_SECS", "soon")]).is_err());
    assert!(
        read(&[db, ("DATABASE_IDLE_TIMEOUT_SECS", "0")]).is_err(),
        "sqlx's reaper would spin"
    );
    assert_eq!(read(&[db]).unwrap().nats, None);
}

#[test]
fn the_direct_url_defaults_to_the_database_url() {
    let read = |database: Option<&str>, direct: Option<&str>| {
        StoreSettings::from_vars(|name| match name {
            "DATABASE_URL" => database.map(str::to_owned),
            "DATABASE_DIRECT_URL" => direct.map(str::to_owned),
            _ => None,
        })
    };
    let both = read(Some("postgres://bouncer/app"), Some("postgres://db/app")).unwrap();
    assert_eq!(both.direct_url.as_deref(), Some("postgres://db/app"));
    assert_eq!(both.cache, Some(CacheMode::Lookup));
    assert_eq!(read(Some("postgres://db/app"), None).unwrap().direct_url, None);
    assert_eq!(
        read(Some("postgres://db/app"), Some("postgres://db/app"))
            .unwrap()
            .direct_url,
        None
    );
    assert!(read(None, Some("postgres://db/app")).is_err());
}
