//! Fetching and refreshing a key set: one fetch at a time, at most one per `min_refresh`, a
//! refresh before the document's `Cache-Control` lifetime ends, and a wait for callers whose
//! `kid` is not in the current set.

use super::*;

impl Inner {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a request waits for a fetch in flight: one document, or two with discovery.
    pub(super) fn wait_bound(&self) -> Duration {
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
    pub(super) fn refresher_alive(&self) -> bool {
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
    pub(super) fn request_fetch(&self, unknown_kid: bool, wait: Duration) -> Option<KeyWait> {
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
    pub(super) async fn fetch_document(&self, url: &Uri) -> Result<JwksResponse, JwksError> {
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

    pub(super) async fn jwks_uri(&self) -> Result<Uri, JwksError> {
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
    pub(super) async fn fetch(&self) -> Result<(KeySnapshot, Option<Duration>), JwksError> {
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
    pub(super) fn finish(&self, outcome: Result<(KeySnapshot, Option<Duration>), JwksError>) -> Instant {
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

    pub(super) fn label(&self) -> String {
        self.source.label()
    }
}

/// The background task: fetches at start, then when the schedule says or a request asks. It
/// holds the key source only while fetching, so dropping the last [`Jwks`] ends it.
pub(super) async fn refresher(inner: Weak<Inner>, wake: Arc<Notify>) {
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
