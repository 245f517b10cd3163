//! [`JwksBuilder`]'s settings: where the keys are published, how often they are fetched, and
//! what a key document may hold.

use super::refresh::refresher;
use super::*;

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
