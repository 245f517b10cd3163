//! The store set-up every demo server shares: Postgres (behind the cache tier, or not) when
//! `DATABASE_URL` is set, the in-memory store otherwise, plus a purger and the sessions
//! (refresh tokens) on the same store. The demo hands a
//! [`WithStore`] to [`with_store_from_env`], which calls it with whichever concrete store the
//! environment asks for.
//!
//! Environment: `DATABASE_URL`; `REVOCATION_CACHE` = `lookup` (default), `mirror` or `off`;
//! `FAILURE_POLICY` = `closed` (default) or `open`.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use tower_jwt_revocation::session::{MemorySessions, PgSessions, SessionConfig, Sessions};
use tower_jwt_revocation::{
    CacheMode, FailurePolicy, MemoryStore, MokaCache, PgStore, RevocationBackend, RevocationStore,
    spawn_purger,
};

/// What a demo does with its store once it has one.
pub trait WithStore {
    /// Runs the demo on `store` and `sessions`; `description` names them for the logs.
    fn run<S, X>(
        self,
        store: S,
        sessions: X,
        description: &'static str,
    ) -> impl Future<Output = Result<(), Box<dyn std::error::Error>>>
    where
        S: RevocationBackend + RevocationStore + Clone,
        X: Sessions;
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// `JWT_SECRET`, or a public development secret with a loud warning.
pub fn secret_from_env() -> Vec<u8> {
    std::env::var("JWT_SECRET")
        .unwrap_or_else(|_| {
            tracing::warn!(
                "JWT_SECRET is not set: using a PUBLIC DEVELOPMENT SECRET. Anyone can mint tokens for this \
                 server. Set JWT_SECRET before exposing it."
            );
            "dev-only-secret-change-me-dev-only-secret".to_owned()
        })
        .into_bytes()
}

/// Binds `BIND_ADDR`, or `default` when it is unset.
pub async fn listener_from_env(default: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(std::env::var("BIND_ADDR").as_deref().unwrap_or(default)).await
}

/// `FAILURE_POLICY`: `closed` (default) or `open`.
pub fn failure_policy_from_env() -> Result<FailurePolicy, String> {
    match std::env::var("FAILURE_POLICY").as_deref() {
        Err(_) | Ok("closed") => Ok(FailurePolicy::Closed),
        Ok("open") => Ok(FailurePolicy::Open),
        Ok(other) => Err(format!(
            "FAILURE_POLICY must be `closed` or `open`, not {other:?}"
        )),
    }
}

/// `REVOCATION_CACHE`: `None` for `off`.
fn cache_mode_from_env() -> Result<Option<CacheMode>, String> {
    match std::env::var("REVOCATION_CACHE").as_deref() {
        Err(_) | Ok("lookup") => Ok(Some(CacheMode::Lookup)),
        Ok("mirror") => Ok(Some(CacheMode::Mirror)),
        Ok("off") => Ok(None),
        Ok(other) => Err(format!(
            "REVOCATION_CACHE must be `lookup`, `mirror` or `off`, not {other:?}"
        )),
    }
}

/// Builds the store the environment names and runs `demo` on it. Revocations are purged an hour
/// after their token's expiry, far past any validation leeway.
pub async fn with_store_from_env<W: WithStore>(demo: W) -> Result<(), Box<dyn std::error::Error>> {
    let (every, margin) = (Duration::from_secs(600), Duration::from_secs(3600));
    let cache_mode = cache_mode_from_env()?;
    let config = SessionConfig::default();
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let store = PgStore::connect(&url).await?;
            store.migrate().await?;
            let _purger = spawn_purger(store.clone(), every, margin)?;
            let pool = store.pool().clone();
            match cache_mode {
                Some(mode) => {
                    let cache = MokaCache::builder(store).mode(mode).start()?;
                    let sessions = PgSessions::new(pool, cache.clone(), config);
                    let description = if mode == CacheMode::Mirror {
                        "postgres behind the moka cache (mirror mode)"
                    } else {
                        "postgres behind the moka cache (lookup mode)"
                    };
                    demo.run(cache, sessions, description).await
                }
                None => {
                    let sessions = PgSessions::new(pool, store.clone(), config);
                    demo.run(store, sessions, "postgres, no cache").await
                }
            }
        }
        Err(_) => {
            let store = MemoryStore::new();
            let _purger = spawn_purger(store.clone(), every, margin)?;
            let sessions = MemorySessions::new(store.clone(), config);
            demo.run(store, sessions, "memory (revocations are lost on exit)")
                .await
        }
    }
}
