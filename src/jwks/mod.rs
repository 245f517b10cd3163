//! [`Jwks`]: verification keys from an identity provider, found by OIDC discovery or a JWKS URL,
//! refreshed in the background and on an unknown `kid`, without a lock on the request path.
//!
//! This module owns the life of a provider's key set: the first fetch, the refresh schedule
//! (the response's `Cache-Control: max-age`, clamped between
//! [`min_refresh_interval`](JwksBuilder::min_refresh_interval) and
//! [`max_refresh_interval`](JwksBuilder::max_refresh_interval)), the refetch an unknown `kid`
//! asks for (one fetch in flight at a time, at most one per `min_refresh_interval`, however many
//! requests ask), and keeping the last good set when a fetch fails, times out, is too large, is
//! not a key set or holds no usable key. Requests read the current set through an atomically
//! swapped pointer ([`arc_swap`]); only a background task writes it, so a refresh never blocks
//! a request and never leaves a moment with no keys. Which token is verified with which key,
//! under which validation, is [`crate::verify`]'s.
//!
//! ```no_run
//! use tower_jwt_revocation::{Issuer, Jwks, JwtRevocationLayer, MemoryStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Discovery: `{issuer}/.well-known/openid-configuration`, whose `issuer` must match.
//! let issuer = "https://id.example.com/realms/main";
//! let keys = Jwks::discover(issuer)
//!     .build_and_fetch() // wait for the first key set (or `build()`: 503 until it arrives)
//!     .await?;
//! let layer = JwtRevocationLayer::builder(MemoryStore::new())
//!     // `iss` must be the issuer and `aud` name this API: both required.
//!     .issuer(Issuer::new(issuer, keys).audience(["orders-api"]))
//!     .build()?;
//! # let _ = layer; Ok(()) }
//! ```

mod builder;
mod error;
mod http;
pub(crate) mod jwk;
mod refresh;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use ::http::{StatusCode, Uri};
use arc_swap::{ArcSwapOption, Guard};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

pub use self::error::JwksError;
pub use self::http::{FetchFuture, HyperClient, JwksClient, JwksResponse};
use self::jwk::{JwkKey, NotAKeySet};
use crate::telemetry::{self, Count, Level};

/// The keys of one successful fetch: what requests read.
pub(crate) struct KeySnapshot {
    pub(crate) keys: Vec<JwkKey>,
    /// `kid` to index in `keys`; the first key wins when a set repeats a `kid`.
    pub(crate) by_kid: HashMap<String, usize>,
    fetched: Instant,
    /// SHA-256 of the document the keys were read from: an unchanged document is the same set.
    digest: [u8; 32],
}

/// A wait for the fetch in flight to finish (or its time bound), handed to a request whose key
/// is not in the current set.
pub(crate) type KeyWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Counts of a key source's work since it was built. Read with [`Jwks::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct JwksStats {
    /// Fetches that installed a new key set.
    pub refreshes: u64,
    /// Fetches that failed (the last good set stayed in place).
    pub failures: u64,
    /// Fetches started because a token named a key the set did not have (or no set was held).
    pub unknown_kid_fetches: u64,
    /// Keys in the current set.
    pub keys: usize,
    /// Time since the current set was fetched; `None` before the first success.
    pub age: Option<Duration>,
}

/// Where the keys are published.
#[derive(Debug, Clone)]
enum Source {
    Url(Uri),
    Discovery { issuer: String, document: Uri },
}

impl Source {
    /// How logs and metrics name the source: the issuer, or the JWKS URL.
    fn label(&self) -> String {
        match self {
            Source::Url(url) => url.to_string(),
            Source::Discovery { issuer, .. } => issuer.clone(),
        }
    }
}

#[derive(Clone)]
struct Settings {
    min_refresh: Duration,
    max_refresh: Duration,
    fetch_timeout: Duration,
    connect_timeout: Duration,
    request_wait: Duration,
    max_bytes: usize,
    allow_symmetric: bool,
    allow_http: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(30),
            max_refresh: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_wait: Duration::from_secs(2),
            max_bytes: 512 * 1024,
            allow_symmetric: false,
            allow_http: false,
        }
    }
}

/// The configuration of a [`Jwks`]; start with [`Jwks::discover`] or [`Jwks::from_url`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct JwksBuilder {
    source: Result<(bool, String), JwksError>,
    client: Option<Arc<dyn JwksClient>>,
    settings: Settings,
}

impl std::fmt::Debug for JwksBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksBuilder")
            .field("source", &self.source)
            .field("custom_client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// Verification keys published by an identity provider, kept fresh in the background.
///
/// Cloning is cheap and clones share the keys and the refresher; the refresher stops when the
/// last clone (and the last layer holding one) is dropped. Give it to
/// [`JwtRevocationBuilder::jwks`](crate::JwtRevocationBuilder::jwks) for one provider, or to
/// [`Issuer::new`](crate::Issuer::new) for one of several.
#[derive(Clone)]
pub struct Jwks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.inner.source)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Keys of the OpenID Provider `issuer`, found through
    /// `{issuer}/.well-known/openid-configuration` (OIDC Discovery 1.0 §4). The document's
    /// `issuer` must equal `issuer` exactly; its `jwks_uri` is fetched under the same URL rules.
    /// The layer then accepts only tokens whose `iss` is `issuer`.
    pub fn discover(issuer: impl Into<String>) -> JwksBuilder {
        Self::builder(Ok((true, issuer.into())))
    }

    /// Keys from the JWKS document at `url` (no discovery, no issuer implied: set the accepted
    /// `iss` in the validation or with [`Issuer`](crate::Issuer)).
    pub fn from_url(url: impl Into<String>) -> JwksBuilder {
        Self::builder(Ok((false, url.into())))
    }

    fn builder(source: Result<(bool, String), JwksError>) -> JwksBuilder {
        JwksBuilder {
            source,
            client: None,
            settings: Settings::default(),
        }
    }

    /// The issuer this source was discovered from; `None` for a plain JWKS URL.
    pub fn issuer(&self) -> Option<&str> {
        match &self.inner.source {
            Source::Discovery { issuer, .. } => Some(issuer),
            Source::Url(_) => None,
        }
    }

    /// Whether `oct` keys are used ([`JwksBuilder::allow_symmetric_keys`]).
    pub fn allows_symmetric_keys(&self) -> bool {
        self.inner.settings.allow_symmetric
    }

    /// The counts so far, the number of keys held and the age of the set.
    pub fn stats(&self) -> JwksStats {
        let counters = &self.inner.counters;
        let keys = self.inner.keys.load();
        JwksStats {
            refreshes: counters.refreshes.get(),
            failures: counters.failures.get(),
            unknown_kid_fetches: counters.unknown_kid.get(),
            keys: keys.as_ref().map_or(0, |k| k.keys.len()),
            age: keys.as_ref().map(|k| k.fetched.elapsed()),
        }
    }

    /// Asks for a fetch now (under the same limits as an unknown `kid`: none starts within
    /// `min_refresh_interval` of the last) and waits for the fetch in flight to end; returns the
    /// outcome of the last fetch (its error even though the last good keys are still held), or
    /// [`JwksError::NotFetched`] before any. For tests and admin endpoints.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        if let Some(wait) = self.inner.request_fetch(false, self.inner.wait_bound()) {
            wait.await;
        }
        match self.inner.attempts.borrow().last.clone() {
            Some(Err(error)) => Err(error),
            _ if self.inner.keys.load().is_some() => Ok(()),
            _ => Err(JwksError::NotFetched),
        }
    }

    /// The current key set, without a lock.
    pub(crate) fn snapshot(&self) -> Guard<Option<Arc<KeySnapshot>>> {
        self.inner.keys.load()
    }

    /// Whether `snapshot` may still be used. Always, while the refresher runs (a provider
    /// outage keeps the last good set). Once the refresher is gone (its runtime shut down),
    /// nothing will ever remove a key the provider withdrew: the set is then used for two
    /// `max_refresh_interval`s after it was fetched, and refused (503) after that.
    pub(crate) fn usable(&self, snapshot: &KeySnapshot) -> bool {
        self.inner.refresher_alive()
            || snapshot.fetched.elapsed() <= self.inner.settings.max_refresh.saturating_mul(2)
    }

    /// The key set's epoch: it moves whenever a fetch installs a set whose document differs
    /// from the last one (a key added, rotated or withdrawn). `None` while the held set may not
    /// be used (see [`usable`](Self::usable)). Read *before* verifying a token with the set.
    pub(crate) fn key_epoch(&self) -> Option<u64> {
        let epoch = self.inner.generation.load(std::sync::atomic::Ordering::SeqCst);
        match self.snapshot().as_ref() {
            Some(snapshot) if !self.usable(snapshot) => None,
            _ => Some(epoch),
        }
    }

    /// A request named a key the set lacks (or no set is held): starts a fetch if none is in
    /// flight and the last began at least `min_refresh_interval` ago, and returns a wait for the
    /// fetch in flight; `None` when the limit says no.
    pub(crate) fn request_fetch(&self) -> Option<KeyWait> {
        self.inner.request_fetch(
            true,
            self.inner.settings.request_wait.min(self.inner.wait_bound()),
        )
    }
}

/// The outcome of the last fetch, published to waiters.
#[derive(Clone, Default)]
struct Attempt {
    last: Option<Result<(), JwksError>>,
}

struct Control {
    in_flight: bool,
    /// A request asked for the fetch in flight (or about to start): the refresher's wake-up is
    /// not a stale one.
    requested: bool,
    last_started: Option<Instant>,
    /// The `jwks_uri` discovery found; cleared after a failed fetch so the next one rediscovers.
    jwks_uri: Option<Uri>,
    failing: bool,
}

struct Inner {
    source: Source,
    client: Arc<dyn JwksClient>,
    settings: Settings,
    keys: ArcSwapOption<KeySnapshot>,
    /// How many times the key set changed (see [`Jwks::key_epoch`]).
    generation: std::sync::atomic::AtomicU64,
    control: Mutex<Control>,
    wake: Arc<Notify>,
    attempts: watch::Sender<Attempt>,
    counters: Counters,
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// The refresher was found dead (logged once).
    refresher_lost: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

struct Counters {
    refreshes: Count,
    failures: Count,
    unknown_kid: Count,
    keys: Level,
    last_success: Level,
}

impl Counters {
    fn new(source: &str) -> Self {
        telemetry::describe();
        Self {
            refreshes: Count::labeled(telemetry::JWKS_FETCHES, &[("outcome", "success")], source),
            failures: Count::labeled(telemetry::JWKS_FETCHES, &[("outcome", "failure")], source),
            unknown_kid: Count::labeled(telemetry::JWKS_UNKNOWN_KID_FETCHES, &[], source),
            keys: Level::labeled(telemetry::JWKS_KEYS, source),
            last_success: Level::labeled(telemetry::JWKS_LAST_SUCCESS, source),
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}
