//! The revocation relay: follows the Postgres ledger's change feed and publishes every event, and
//! a marker at every proof of sync, to a NATS JetStream stream that instances follow
//! (`REVOCATION_FEED=nats` in the demo server). Run two or three side by side: JetStream drops
//! the duplicates by message id.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run --example relay
//! ```
//!
//! Environment:
//! - `DATABASE_URL` (required): the ledger; the relay migrates it at start, as the demo does;
//! - `DATABASE_DIRECT_URL`: a connection past a transaction pooler for the change feed's
//!   `LISTEN` and the migrations (defaults to `DATABASE_URL`);
//! - `NATS_URL` (default `nats://127.0.0.1:4222`), `NATS_STREAM` (default `JWT_REVOCATIONS`;
//!   created when missing, with `NATS_REPLICAS` replicas, default 1);
//! - `RELAY_NAME`: its name in markers and logs, and in its feed connection's
//!   `application_name`, `jwt_revocation_relay/{name}` (default `relay-{pid}`);
//! - `BIND_ADDR`: when set, serves `GET /healthz` (200 once the relay publishes) and
//!   `GET /metrics` (Prometheus text) there.

#[path = "support/store.rs"]
pub mod store;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::postgres::PgPoolOptions;
use tower_jwt_revocation::PgStore;
use tower_jwt_revocation::backend::nats::{DEFAULT_STREAM, Relay};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    store::init_tracing();
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let url = var("DATABASE_URL").ok_or("DATABASE_URL is required")?;
    // Two connections at most: the feed's own (direct) one, and one for its start and repairs.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(url.parse()?)
        .await?;
    let name = var("RELAY_NAME").unwrap_or_else(|| format!("relay-{}", std::process::id()));
    // Its feed's connection, as `pg_stat_activity` shows it: `jwt_revocation_relay/{name}`.
    let mut store = PgStore::new(pool).with_listener_name(format!("jwt_revocation_relay/{name}"));
    if let Some(direct) = var("DATABASE_DIRECT_URL").filter(|direct| *direct != url) {
        store = store.with_direct_url(&direct)?;
    }
    store.migrate().await?;
    let nats_url = var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let client = tower_jwt_revocation::async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats_url.as_str())
        .await?;
    let replicas = match var("NATS_REPLICAS") {
        Some(replicas) => replicas
            .parse()
            .map_err(|_| "NATS_REPLICAS must be a whole number")?,
        None => 1,
    };
    let relay = std::sync::Arc::new(
        Relay::builder(store, client)
            .stream(var("NATS_STREAM").unwrap_or_else(|| DEFAULT_STREAM.to_owned()))
            .replicas(replicas)
            .name(name.clone())
            .start()?,
    );
    tracing::info!(relay = %name, nats = %nats_url, "revocation relay started");
    match var("BIND_ADDR") {
        Some(addr) => {
            let ready = std::sync::Arc::clone(&relay);
            let app = Router::new()
                .route(
                    "/healthz",
                    get(move || {
                        let ready = ready.is_ready();
                        async move {
                            if ready {
                                (StatusCode::OK, "publishing")
                            } else {
                                (StatusCode::SERVICE_UNAVAILABLE, "not publishing")
                            }
                        }
                    }),
                )
                .route("/metrics", get(move || std::future::ready(metrics.render())));
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            tracing::info!(%addr, "serving /healthz and /metrics");
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
        None => {
            tokio::signal::ctrl_c().await?;
        }
    }
    drop(relay);
    Ok(())
}
