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
//! under which validation, is [`crate::decode`]'s.
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

mod http;
pub(crate) mod jwk;
pub(crate) mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use ::http::{StatusCode, Uri};
use arc_swap::{ArcSwapOption, Guard};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

pub use self::http::{FetchFuture, HyperClient, JwksClient, JwksResponse};
use self::jwk::{JwkKey, NotAKeySet};
use crate::telemetry::{self, Count, Level};

/// Why a key document could not be fetched or used, or a [`JwksBuilder`] refused its settings.
/// The text never contains key material or response bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The URL is not an absolute `http(s)` URL (or carries credentials).
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// The URL is plain `http`: allowed only to a loopback address, with
    /// [`JwksBuilder::allow_http_on_loopback`].
    #[error("refusing to fetch keys over plain http from {0:?} (https required)")]
    InsecureUrl(String),
    /// A setting is out of range.
    #[error("invalid key source setting: {0}")]
    Setting(&'static str),
    /// There is no Tokio runtime to run the refresh task on.
    #[error("the key source needs a Tokio runtime (build it inside one)")]
    NoRuntime,
    /// The HTTP client could not be built or the request not formed.
    #[error("HTTP client error: {0}")]
    Client(String),
    /// Connecting or reading failed.
    #[error("fetch failed: {0}")]
    Transport(String),
    /// The fetch took longer than the fetch timeout.
    #[error("fetch timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with a status other than 200 (redirects are not followed).
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    /// The body is larger than the configured bound.
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
    /// The discovery document is not JSON with string `issuer` and `jwks_uri` members.
    #[error("not an OpenID Provider configuration document")]
    NotDiscovery,
    /// The discovery document names another issuer than the configured one (OIDC Discovery
    /// §4.3: the document must not be used).
    #[error("discovery document is for issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The document's `issuer`.
        found: String,
    },
    /// The body is not a JSON object with a `keys` array.
    #[error("not a JSON Web Key Set")]
    NotAKeySet,
    /// The set holds no key this crate can verify with (all skipped: encryption keys,
    /// unsupported curves, symmetric keys not allowed, malformed members).
    #[error("the key set holds no usable signature key ({skipped} skipped)")]
    NoUsableKeys {
        /// How many keys were skipped.
        skipped: usize,
    },
    /// No fetch has succeeded yet.
    #[error("no key set fetched yet")]
    NotFetched,
}

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

impl JwksBuilder {
    /// The shortest time between two fetches, background or asked for by an unknown `kid`,
    /// and the retry interval after a failed fetch. Default 30 s; at least 100 ms.
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.settings.min_refresh = interval;
        self
    }

    /// The longest time a fetched set is used before it is fetched again, whatever its
    /// `max-age`; also the interval when the response has no `max-age`. Default 10 minutes.
    pub fn max_refresh_interval(mut self, interval: Duration) -> Self {
        self.settings.max_refresh = interval;
        self
    }

    /// The bound on each HTTP fetch, from sending the request to the last byte. Default 10 s.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.fetch_timeout = timeout;
        self
    }

    /// The bound on the TCP connect of the default client (the TLS handshake and the rest of
    /// the exchange are bounded by the fetch timeout). Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long a request whose key is not in the set (or that arrives before the first set)
    /// waits for the fetch it started or joined, before it is answered with the keys held then
    /// (401 `unknown key id`, or 503 without any). Default 2 s, so a slow provider never holds
    /// requests past a load balancer's patience; the fetch itself goes on in the background.
    pub fn max_request_wait(mut self, wait: Duration) -> Self {
        self.settings.request_wait = wait;
        self
    }

    /// The largest response body read; a larger one is a failed fetch. Default 512 KiB.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.settings.max_bytes = limit;
        self
    }

    /// Also uses `oct` (HMAC) keys from the set. Off by default: a published key set is public,
    /// and an HMAC key is a shared secret. The layer's algorithm allow-list must then name the
    /// HS algorithms too; an HMAC algorithm never selects an RSA, EC or OKP key.
    pub fn allow_symmetric_keys(mut self) -> Self {
        self.settings.allow_symmetric = true;
        self
    }

    /// Permits plain `http://` URLs (the discovery document, its `jwks_uri`, a JWKS URL) when
    /// the host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`): for tests and
    /// sidecars. Any other `http://` URL is always refused.
    pub fn allow_http_on_loopback(mut self) -> Self {
        self.settings.allow_http = true;
        self
    }

    /// Fetches with `client` instead of the default [`HyperClient`] (for a private CA, a proxy,
    /// mTLS). The fetch timeout and size bound still apply.
    pub fn client(mut self, client: impl JwksClient) -> Self {
        self.client = Some(Arc::new(client));
        self
    }

    /// Checks the settings, starts the background refresher on the current Tokio runtime and
    /// returns at once: the first fetch runs in the background, and until a key set arrives the
    /// layer answers 503 with `Retry-After` (a request arriving while the first fetch is in
    /// flight waits for it, up to [`max_request_wait`](Self::max_request_wait)). This is the
    /// default start-up; for one
    /// that fails fast instead, use [`build_and_fetch`](Self::build_and_fetch).
    pub fn build(self) -> Result<Jwks, JwksError> {
        let settings = self.settings;
        const HOUR: Duration = Duration::from_secs(3600);
        if settings.min_refresh < Duration::from_millis(100) {
            return Err(JwksError::Setting("min_refresh_interval must be at least 100 ms"));
        }
        if settings.max_refresh > 24 * 7 * HOUR {
            return Err(JwksError::Setting("max_refresh_interval must be at most a week"));
        }
        if settings.fetch_timeout > HOUR || settings.connect_timeout > HOUR || settings.request_wait > HOUR {
            return Err(JwksError::Setting("timeouts must be at most an hour"));
        }
        if settings.max_refresh < settings.min_refresh {
            return Err(JwksError::Setting(
                "max_refresh_interval must not be shorter than min_refresh_interval",
            ));
        }
        if settings.fetch_timeout.is_zero()
            || settings.connect_timeout.is_zero()
            || settings.request_wait.is_zero()
        {
            return Err(JwksError::Setting("timeouts must be positive"));
        }
        if settings.max_bytes == 0 {
            return Err(JwksError::Setting("max_response_bytes must be positive"));
        }
        let (discover, url) = self.source?;
        let source = if discover {
            let issuer = url;
            let document = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            Source::Discovery {
                document: http::checked_url(&document, settings.allow_http)?,
                issuer,
            }
        } else {
            Source::Url(http::checked_url(&url, settings.allow_http)?)
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| JwksError::NoRuntime)?;
        let client = match self.client {
            Some(client) => client,
            None => Arc::new(HyperClient::new(settings.connect_timeout)?),
        };
        let label = source.label();
        let (attempts, _) = watch::channel(Attempt::default());
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            source,
            client,
            settings,
            keys: ArcSwapOption::empty(),
            generation: std::sync::atomic::AtomicU64::new(0),
            control: Mutex::new(Control {
                // The first fetch starts now; requests until it ends wait for it.
                in_flight: true,
                requested: false,
                last_started: Some(Instant::now()),
                jwks_uri: None,
                failing: false,
            }),
            wake: Arc::clone(&wake),
            attempts,
            counters: Counters::new(&label),
            task: std::sync::OnceLock::new(),
            refresher_lost: std::sync::atomic::AtomicBool::new(false),
        });
        let task = runtime.spawn(refresher(Arc::downgrade(&inner), wake));
        // Set once, right here, before anyone can read it.
        let _ = inner.task.set(task.abort_handle());
        Ok(Jwks { inner })
    }

    /// [`build`](Self::build), then waits for the first fetch and returns its error if it
    /// failed (an unreachable provider, a discovery document for another issuer, a set with no
    /// usable key): start-up fails fast instead of serving 503s. The wait is bounded by the
    /// fetch timeout (twice with discovery: the document, then the key set).
    pub async fn build_and_fetch(self) -> Result<Jwks, JwksError> {
        let jwks = self.build()?;
        let mut attempts = jwks.inner.attempts.subscribe();
        let bound = jwks.inner.wait_bound();
        let outcome = tokio::time::timeout(bound, async {
            loop {
                if let Some(outcome) = attempts.borrow_and_update().last.clone() {
                    return outcome;
                }
                if attempts.changed().await.is_err() {
                    return Err(JwksError::NotFetched);
                }
            }
        })
        .await
        .unwrap_or(Err(JwksError::Timeout(bound)));
        outcome.map(|()| jwks)
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

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a request waits for a fetch in flight: one document, or two with discovery.
    fn wait_bound(&self) -> Duration {
        let documents = match self.source {
            Source::Url(_) => 1,
            Source::Discovery { .. } => 2,
        };
        self.settings
            .fetch_timeout
            .saturating_mul(documents)
            .saturating_add(Duration::from_millis(100))
    }

    /// Whether the refresher task still runs. It ends only when its Tokio runtime shuts down
    /// (say, a `Jwks` built inside a short-lived runtime): then nobody fetches any more, which
    /// is logged once as an error, and requests stop waiting for fetches that never come.
    fn refresher_alive(&self) -> bool {
        let alive = self.task.get().is_some_and(|task| !task.is_finished());
        let lost = &self.refresher_lost;
        // A load first: once the refresher is gone this runs on every request, and a read
        // shares its cache line where a swap would fight over it.
        if !alive
            && !lost.load(std::sync::atomic::Ordering::Relaxed)
            && !lost.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                source = %self.label(),
                "the JWKS refresher task is gone (its Tokio runtime shut down): keys are no longer refreshed"
            );
        }
        alive
    }

    /// Starts a fetch unless one is in flight or the last began within `min_refresh_interval`,
    /// and returns a wait (at most `wait`) for the fetch in flight; `None` when the limit says
    /// no. `unknown_kid` counts it as asked for by a request.
    fn request_fetch(&self, unknown_kid: bool, wait: Duration) -> Option<KeyWait> {
        if !self.refresher_alive() {
            return None;
        }
        let mut control = self.lock();
        if !control.in_flight {
            if control
                .last_started
                .is_some_and(|started| started.elapsed() < self.settings.min_refresh)
            {
                return None;
            }
            control.in_flight = true;
            control.requested = true;
            control.last_started = Some(Instant::now());
            if unknown_kid {
                self.counters.unknown_kid.bump();
            }
            self.wake.notify_one();
        }
        // Subscribed under the lock while the fetch is in flight: its end is a change this
        // receiver sees.
        let mut attempts = self.attempts.subscribe();
        drop(control);
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(wait, attempts.changed()).await;
        }))
    }

    /// One HTTP GET under the fetch timeout; a 200 body or the reason there is none.
    async fn fetch_document(&self, url: &Uri) -> Result<JwksResponse, JwksError> {
        let timeout = self.settings.fetch_timeout;
        let response = tokio::time::timeout(timeout, self.client.get(url, self.settings.max_bytes))
            .await
            .map_err(|_| JwksError::Timeout(timeout))??;
        if response.status != StatusCode::OK {
            return Err(JwksError::Status(response.status.as_u16()));
        }
        if response.body.len() > self.settings.max_bytes {
            return Err(JwksError::TooLarge {
                limit: self.settings.max_bytes,
            });
        }
        Ok(response)
    }

    async fn jwks_uri(&self) -> Result<Uri, JwksError> {
        let (issuer, document) = match &self.source {
            Source::Url(url) => return Ok(url.clone()),
            Source::Discovery { issuer, document } => (issuer, document),
        };
        if let Some(uri) = self.lock().jwks_uri.clone() {
            return Ok(uri);
        }
        let response = self.fetch_document(document).await?;
        let found: Discovery = serde_json::from_slice(&response.body).map_err(|_| JwksError::NotDiscovery)?;
        if found.issuer != *issuer {
            return Err(JwksError::IssuerMismatch {
                expected: issuer.clone(),
                found: found.issuer,
            });
        }
        let uri = http::checked_url(&found.jwks_uri, self.settings.allow_http)?;
        self.lock().jwks_uri = Some(uri.clone());
        Ok(uri)
    }

    /// Fetches and parses the key set: the new snapshot and the refresh interval it asks for.
    async fn fetch(&self) -> Result<(KeySnapshot, Option<Duration>), JwksError> {
        let url = self.jwks_uri().await?;
        let response = self.fetch_document(&url).await?;
        let parsed = jwk::parse(&response.body, self.settings.allow_symmetric)
            .map_err(|NotAKeySet::Shape| JwksError::NotAKeySet)?;
        if parsed.keys.is_empty() {
            return Err(JwksError::NoUsableKeys {
                skipped: parsed.skipped,
            });
        }
        if parsed.skipped > 0 {
            tracing::debug!(source = %url, skipped = parsed.skipped, "JWKS keys skipped (unsupported or not for signatures)");
        }
        let mut by_kid = HashMap::with_capacity(parsed.keys.len());
        for (index, key) in parsed.keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                by_kid.entry(kid.clone()).or_insert(index);
            }
        }
        let snapshot = KeySnapshot {
            keys: parsed.keys,
            by_kid,
            fetched: Instant::now(),
            digest: <sha2::Sha256 as sha2::Digest>::digest(&response.body).into(),
        };
        Ok((snapshot, http::max_age(&response.headers)))
    }

    /// Installs a fetch's outcome and returns when the next background fetch is due.
    fn finish(&self, outcome: Result<(KeySnapshot, Option<Duration>), JwksError>) -> Instant {
        let settings = &self.settings;
        let source = self.label();
        let (published, delay) = match outcome {
            Ok((snapshot, max_age)) => {
                let keys = snapshot.keys.len();
                let changed = self
                    .keys
                    .load()
                    .as_ref()
                    .is_none_or(|previous| previous.digest != snapshot.digest);
                self.keys.store(Some(Arc::new(snapshot)));
                if changed {
                    // After the store: a reader that sees the new epoch reads the new set, so
                    // nothing verified with a withdrawn key is stamped with the new epoch.
                    self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                self.counters.refreshes.bump();
                self.counters.keys.set(keys as f64);
                self.counters
                    .last_success
                    .set(crate::backend::unix_seconds(std::time::SystemTime::now()) as f64);
                let interval = max_age
                    .unwrap_or(settings.max_refresh)
                    .clamp(settings.min_refresh, settings.max_refresh);
                (Ok(keys), interval)
            }
            Err(error) => {
                self.counters.failures.bump();
                (Err(error), settings.min_refresh)
            }
        };
        let mut control = self.lock();
        match &published {
            Ok(keys) if control.failing => {
                tracing::info!(%source, keys, "JWKS fetch succeeds again");
            }
            Ok(keys) => tracing::debug!(%source, keys, "JWKS refreshed"),
            Err(error) if !control.failing => tracing::warn!(
                %source,
                %error,
                has_keys = self.keys.load().is_some(),
                "JWKS fetch failed; keeping the last good key set (if any) and retrying"
            ),
            Err(error) => tracing::debug!(%source, %error, "JWKS fetch failed again"),
        }
        control.failing = published.is_err();
        if control.failing {
            // The next attempt rediscovers: the provider may have moved its key set.
            control.jwks_uri = None;
        }
        control.in_flight = false;
        // Published under the lock: a request that starts the next fetch subscribes after this
        // change, so it waits for its own fetch, not this one.
        self.attempts
            .send_modify(|attempt| attempt.last = Some(published.map(|_| ())));
        drop(control);
        // Settings are bounded (a week at most), so this cannot overflow; saturate anyway.
        let now = Instant::now();
        now.checked_add(delay).unwrap_or(now)
    }

    fn label(&self) -> String {
        self.source.label()
    }
}

/// The background task: fetches at start, then when the schedule says or a request asks. It
/// holds the key source only while fetching, so dropping the last [`Jwks`] ends it.
async fn refresher(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut due = Instant::now();
    loop {
        let asked = tokio::select! {
            () = tokio::time::sleep_until(due.into()) => false,
            () = wake.notified() => true,
        };
        let Some(inner) = inner.upgrade() else { return };
        {
            let mut control = inner.lock();
            if asked && !control.requested {
                // A wake-up for a fetch that already ran (it was started by the schedule).
                continue;
            }
            control.requested = false;
            if !control.in_flight {
                control.in_flight = true;
                control.last_started = Some(Instant::now());
            }
        }
        // The fetch runs as its own task, so a panic in it (a custom client's) is a failed
        // fetch, not the end of the refresher with `in_flight` stuck.
        let fetching = Arc::clone(&inner);
        let outcome = match tokio::spawn(async move { fetching.fetch().await }).await {
            Ok(outcome) => outcome,
            Err(error) => Err(JwksError::Client(format!("the fetch task failed: {error}"))),
        };
        due = inner.finish(outcome);
    }
}
