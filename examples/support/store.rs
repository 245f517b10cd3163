//! The store set-up every demo server shares: Postgres (behind the cache tier, or not) when
//! `DATABASE_URL` is set, the in-memory store otherwise, plus the sessions (refresh tokens) on
//! the same store, and a purger for each. The demo hands a [`WithStore`] to [`with_store`] (or
//! [`with_store_from_env`]), which calls it with whichever concrete store the settings ask for.
//!
//! Environment: `DATABASE_URL`; `DATABASE_DIRECT_URL` (a connection past a transaction pooler
//! for the change feed and migrations; defaults to `DATABASE_URL`); `DATABASE_IDLE_TIMEOUT_SECS`
//! (pool connections idle this long are closed; default 60); `REVOCATION_CACHE` = `lookup`
//! (default), `mirror` or `off`; `REVOCATION_FEED` = `postgres` (default: the cache follows the
//! ledger's own feed) or `nats` (it follows the relays' JetStream stream: `NATS_URL`, default
//! `nats://127.0.0.1:4222`, and `NATS_STREAM`, default `JWT_REVOCATIONS`; see
//! `examples/relay.rs`); `FAILURE_POLICY` = `closed` (default) or `open`.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tower_jwt_revocation::backend::nats::NatsLedger;
use tower_jwt_revocation::session::{MemorySessions, PgSessions, SessionConfig, Sessions};
use tower_jwt_revocation::{
    CacheMode, FailurePolicy, Ledger, MemoryStore, MokaCache, PgStore, RevocationBackend, RevocationStore,
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

    /// The longest token lifetime the demo's layer enforces, if it enforces one: the store then
    /// purges subject cutoffs older than that (see `PgStore::with_max_token_lifetime`).
    fn max_token_lifetime(&self) -> Option<Duration> {
        None
    }
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

/// The resource identifier (`RESOURCE_URL`), which tokens must be DPoP-bound (`DPOP`), and the
/// secret of required server nonces (`DPOP_NONCE_SECRET`).
#[derive(Clone, Debug)]
pub struct Resource {
    /// The resource identifier, also the origin DPoP proofs name.
    pub url: String,
    /// `DPOP`: `allowed` or `required`.
    pub dpop: tower_jwt_revocation::dpop::DpopPolicy,
    /// `DPOP_NONCE_SECRET`: with it every proof must carry a current server nonce; give every
    /// instance the same one.
    pub nonce_secret: Option<String>,
}

/// Reads `RESOURCE_URL`, `DPOP` and `DPOP_NONCE_SECRET`; either of the last two without
/// `RESOURCE_URL` is refused (the proofs' origin would be unknown).
pub fn resource_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Resource>, String> {
    use tower_jwt_revocation::dpop::{DpopPolicy, MIN_NONCE_SECRET_LEN};
    let dpop = match var("DPOP").as_deref() {
        None | Some("allowed") => DpopPolicy::Allowed,
        Some("required") => DpopPolicy::Required,
        Some(other) => return Err(format!("DPOP must be allowed or required, not {other:?}")),
    };
    let nonce_secret = var("DPOP_NONCE_SECRET");
    if nonce_secret
        .as_ref()
        .is_some_and(|secret| secret.len() < MIN_NONCE_SECRET_LEN)
    {
        return Err(format!(
            "DPOP_NONCE_SECRET must be at least {MIN_NONCE_SECRET_LEN} bytes"
        ));
    }
    match var("RESOURCE_URL") {
        None if var("DPOP").is_some() || nonce_secret.is_some() => {
            Err("DPOP and DPOP_NONCE_SECRET need RESOURCE_URL (the origin proofs name)".into())
        }
        None => Ok(None),
        Some(url) => {
            let metadata = tower_jwt_revocation::resource_metadata::ProtectedResourceMetadata::new(&url)
                .map_err(|e| format!("RESOURCE_URL: {e}"))?;
            // The document's path becomes an axum route: no segment may read as a parameter.
            if metadata.path().contains([':', '*', '{', '}']) {
                return Err(format!(
                    "RESOURCE_URL {url:?}: its path may not hold ':', '*', '{{' or '}}'"
                ));
            }
            Ok(Some(Resource {
                url,
                dpop,
                nonce_secret,
            }))
        }
    }
}

impl Resource {
    /// The layer's DPoP settings for this resource.
    pub fn dpop_config(&self) -> tower_jwt_revocation::dpop::DpopConfig {
        let config = tower_jwt_revocation::dpop::DpopConfig::new(&self.url).policy(self.dpop);
        match &self.nonce_secret {
            Some(secret) => config.require_nonce(secret.as_bytes()),
            None => config,
        }
    }
}

/// `builder` with DPoP when `dpop` is given.
pub fn with_dpop<S, C, R>(
    builder: tower_jwt_revocation::JwtRevocationBuilder<S, C, R>,
    dpop: Option<tower_jwt_revocation::dpop::DpopConfig>,
) -> tower_jwt_revocation::JwtRevocationBuilder<S, C, R> {
    match dpop {
        Some(dpop) => builder.dpop(dpop),
        None => builder,
    }
}

/// `RESOURCE_URL` and `DPOP` from the environment, as DPoP settings for the layer.
pub fn dpop_from_env() -> Result<Option<tower_jwt_revocation::dpop::DpopConfig>, String> {
    Ok(
        resource_from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))?
            .map(|r| r.dpop_config()),
    )
}

/// `REVOCATION_CACHE`: `None` for `off`.
fn cache_mode(value: Option<&str>) -> Result<Option<CacheMode>, String> {
    match value {
        None | Some("lookup") => Ok(Some(CacheMode::Lookup)),
        Some("mirror") => Ok(Some(CacheMode::Mirror)),
        Some("off") => Ok(None),
        Some(other) => Err(format!(
            "REVOCATION_CACHE must be `lookup`, `mirror` or `off`, not {other:?}"
        )),
    }
}

/// Where revocations live, as the environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `DATABASE_URL`: the Postgres ledger (through a pooler or not); `None` keeps revocations in
    /// memory.
    pub database_url: Option<String>,
    /// `DATABASE_DIRECT_URL`: a connection past a transaction pooler for the change feed and the
    /// migrations; `None` (unset, or equal to `DATABASE_URL`) uses `DATABASE_URL` for them too.
    pub direct_url: Option<String>,
    /// `REVOCATION_CACHE`: the cache tier's mode; `None` for `off`.
    pub cache: Option<CacheMode>,
    /// `REVOCATION_FEED=nats`: the cache follows the JetStream stream at this URL
    /// (`NATS_URL`) and name (`NATS_STREAM`); `None` for the Postgres feed.
    pub nats: Option<(String, String)>,
    /// `DATABASE_IDLE_TIMEOUT_SECS`: how long a pool connection may stay idle.
    pub idle_timeout: Duration,
}

impl StoreSettings {
    /// Reads `DATABASE_URL`, `DATABASE_DIRECT_URL` and `REVOCATION_CACHE`.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the same variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let database_url = var("DATABASE_URL");
        let direct_url = var("DATABASE_DIRECT_URL").filter(|direct| Some(direct) != database_url.as_ref());
        if direct_url.is_some() && database_url.is_none() {
            return Err("DATABASE_DIRECT_URL needs DATABASE_URL".to_owned());
        }
        let cache = cache_mode(var("REVOCATION_CACHE").as_deref())?;
        let nats = match var("REVOCATION_FEED").as_deref() {
            None | Some("postgres") => None,
            Some("nats") => Some((
                var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned()),
                var("NATS_STREAM").unwrap_or_else(|| "JWT_REVOCATIONS".to_owned()),
            )),
            Some(other) => {
                return Err(format!(
                    "REVOCATION_FEED must be `postgres` or `nats`, not {other:?}"
                ));
            }
        };
        if nats.is_some() && (database_url.is_none() || cache.is_none()) {
            return Err(
                "REVOCATION_FEED=nats needs DATABASE_URL and REVOCATION_CACHE `lookup` or `mirror`"
                    .to_owned(),
            );
        }
        let idle_timeout = match var("DATABASE_IDLE_TIMEOUT_SECS") {
            None => Duration::from_secs(60),
            Some(secs) => secs
                .parse()
                .ok()
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    format!("DATABASE_IDLE_TIMEOUT_SECS must be whole seconds, at least 1, not {secs:?}")
                })?,
        };
        Ok(Self {
            database_url,
            direct_url,
            cache,
            nats,
            idle_timeout,
        })
    }
}

/// [`with_store`] with the settings of the environment.
pub async fn with_store_from_env<W: WithStore>(demo: W) -> Result<(), Box<dyn std::error::Error>> {
    with_store(StoreSettings::from_env()?, demo).await
}

/// Builds the store `settings` name and runs `demo` on it. Revocations are purged an hour
/// after their token's expiry, far past any validation leeway.
pub async fn with_store<W: WithStore>(
    settings: StoreSettings,
    demo: W,
) -> Result<(), Box<dyn std::error::Error>> {
    let (every, margin) = (Duration::from_secs(600), Duration::from_secs(3600));
    let config = SessionConfig::default();
    let lifetime = demo.max_token_lifetime();
    match settings.database_url {
        Some(url) => {
            // Connections open on demand and close once idle: an instance following the NATS
            // stream holds none between its lookups.
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .min_connections(0)
                .idle_timeout(settings.idle_timeout)
                .acquire_timeout(Duration::from_secs(2))
                .connect_with(url.parse::<PgConnectOptions>()?)
                .await?;
            let mut store = PgStore::new(pool);
            if let Some(lifetime) = lifetime {
                store = store.with_max_token_lifetime(lifetime);
            }
            if let Some(direct) = &settings.direct_url {
                store = store.with_direct_url(direct)?;
            }
            store.migrate().await?;
            let _purger = spawn_purger(store.clone(), every, margin)?;
            let pool = store.pool().clone();
            match (settings.cache, settings.nats) {
                (Some(mode), Some((nats_url, stream))) => {
                    let client = tower_jwt_revocation::async_nats::ConnectOptions::new()
                        .retry_on_initial_connect()
                        .connect(nats_url.as_str())
                        .await?;
                    let ledger = NatsLedger::new(store, client).with_stream(stream);
                    let description = if mode == CacheMode::Mirror {
                        "postgres behind the moka cache (mirror mode), following the NATS stream"
                    } else {
                        "postgres behind the moka cache (lookup mode), following the NATS stream"
                    };
                    run_cached(demo, ledger, mode, pool, (every, margin), description).await
                }
                (Some(mode), None) => {
                    let description = if mode == CacheMode::Mirror {
                        "postgres behind the moka cache (mirror mode)"
                    } else {
                        "postgres behind the moka cache (lookup mode)"
                    };
                    run_cached(demo, store, mode, pool, (every, margin), description).await
                }
                (None, _) => {
                    let sessions = PgSessions::new(pool, store.clone(), config);
                    let _sessions_purger = spawn_purger(sessions.clone(), every, margin)?;
                    demo.run(store, sessions, "postgres, no cache").await
                }
            }
        }
        None => {
            let store = MemoryStore::new();
            let store = match lifetime {
                Some(lifetime) => store.with_max_token_lifetime(lifetime),
                None => store,
            };
            let _purger = spawn_purger(store.clone(), every, margin)?;
            let sessions = MemorySessions::new(store.clone(), config);
            let _sessions_purger = spawn_purger(sessions.clone(), every, margin)?;
            demo.run(store, sessions, "memory (revocations are lost on exit)")
                .await
        }
    }
}

/// Runs `demo` on a cache tier of `mode` over `ledger`, with sessions on `pool`.
async fn run_cached<W: WithStore, L: Ledger>(
    demo: W,
    ledger: L,
    mode: CacheMode,
    pool: sqlx::PgPool,
    (every, margin): (Duration, Duration),
    description: &'static str,
) -> Result<(), Box<dyn std::error::Error>> {
    let cache = MokaCache::builder(ledger).mode(mode).start()?;
    let sessions = PgSessions::new(pool, cache.clone(), SessionConfig::default());
    let _sessions_purger = spawn_purger(sessions.clone(), every, margin)?;
    demo.run(cache, sessions, description).await
}
