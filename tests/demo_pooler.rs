//! Two demo instances on one database, as operators run them: behind a real PgBouncer in
//! transaction mode, with and without `DATABASE_DIRECT_URL`, in lookup and mirror mode, on a
//! database that already holds another application's sqlx migrations.

#[allow(dead_code)]
#[path = "../examples/server.rs"]
mod server;

mod common;

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
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
