//! What operators read: counters and gauges, published through the [`metrics`](https://docs.rs/metrics) facade when the
//! `metrics` feature is on, and the log lines that mark an outage's start and end.
//!
//! Every counter is also kept in an atomic, which [`Metrics`](crate::Metrics) and
//! `CacheMetrics` read without any recorder. With the `metrics` feature each is registered with
//! the recorder installed when the layer is built (or the cache started): install the recorder
//! (for example `metrics_exporter_prometheus::PrometheusBuilder::install_recorder`) before
//! building either. Names follow Prometheus conventions; the full list is [`NAMES`].
//!
//! Outages are logged as state changes, never once per request: one `warn` when checks start
//! failing, one `warn` a minute with the count while they go on, one `info` when a check
//! succeeds again after [`OUTAGE_QUIET`] without failures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Requests decided by the layer, by `outcome`: `authorized`, `anonymous`, `skipped`,
/// `missing_token`, `malformed`, `invalid_token`, `revoked`, `unavailable` (503 under
/// `FailurePolicy::Closed`), `fail_open` (let through under `FailurePolicy::Open`),
/// `insufficient_scope` (403), `keys_unavailable` (503 before a key set was fetched),
/// `dpop_refused` (a DPoP binding or proof refused), `dpop_window_full` (503: the DPoP replay
/// window had no room).
pub const REQUESTS: &str = "jwt_revocation_requests_total";
/// Checks the backend could not answer (the failure policy decided).
pub const STORE_ERRORS: &str = "jwt_revocation_store_errors_total";
/// Checks the backend could not answer on its synchronous fast path.
pub const SLOW_CHECKS: &str = "jwt_revocation_slow_checks_total";
/// Tokens looked up in the layer's verified-token cache, by `result`: `hit` (signature
/// verification skipped) or `miss` (verified).
pub const TOKEN_CACHE: &str = "jwt_revocation_token_cache_total";
/// Cache checks by `answer`: `hit` (from memory) or `miss`.
pub const CACHE_CHECKS: &str = "jwt_revocation_cache_checks_total";
/// Cache verdicts by `verdict`: `active`, `revoked_token`, `revoked_session`,
/// `revoked_subject`, `error`.
pub const CACHE_VERDICTS: &str = "jwt_revocation_cache_verdicts_total";
/// Lookups the cache sent to the ledger.
pub const CACHE_LOOKUPS: &str = "jwt_revocation_cache_ledger_lookups_total";
/// Checks that waited for another check's lookup of the same keys.
pub const CACHE_COALESCED: &str = "jwt_revocation_cache_coalesced_waits_total";
/// Revocations dropped from the cache for lack of capacity.
pub const CACHE_EVICTIONS: &str = "jwt_revocation_cache_evictions_total";
/// Entries the cache holds (gauge, updated at every proof of sync).
pub const CACHE_ENTRIES: &str = "jwt_revocation_cache_entries";
/// Lookups in flight (gauge, updated at every proof of sync).
pub const CACHE_IN_FLIGHT: &str = "jwt_revocation_cache_in_flight_lookups";
/// 1 while the cache mirrors the whole ledger, else 0 (gauge).
pub const CACHE_MIRRORING: &str = "jwt_revocation_cache_mirroring";
/// Live revocations the mirror holds in compact form (gauge).
pub const MIRROR_ENTRIES: &str = "jwt_revocation_mirror_entries";
/// Bytes of the mirror's compact table (gauge).
pub const MIRROR_BYTES: &str = "jwt_revocation_mirror_bytes";
/// Times the mirror read the ledger's live set (at start, on refresh, to promote a fallback).
pub const MIRROR_SNAPSHOTS: &str = "jwt_revocation_mirror_snapshots_total";
/// Change-feed events applied.
pub const FEED_EVENTS: &str = "jwt_revocation_feed_events_total";
/// Times the feed came back in sync after a disconnection.
pub const FEED_RESYNCS: &str = "jwt_revocation_feed_resyncs_total";
/// Times the feed's follower stopped and was restarted.
pub const FEED_RESTARTS: &str = "jwt_revocation_feed_restarts_total";
/// 1 while the feed is connected and proved in sync, else 0 (gauge).
pub const FEED_IN_SYNC: &str = "jwt_revocation_feed_in_sync";
/// Unix time of the feed's last proof of sync (gauge): alert on `time() - this`.
pub const FEED_LAST_SYNC: &str = "jwt_revocation_feed_last_sync_timestamp_seconds";
/// Propagation lag of each event applied: applied time minus its `revoked_at` (histogram).
pub const FEED_LAG: &str = "jwt_revocation_feed_lag_seconds";

/// Gaps in a change feed repaired from the ledger (a message lost or unreadable on the NATS
/// stream).
pub const FEED_REPAIRS: &str = "jwt_revocation_feed_repairs_total";
/// Events a relay published, by `outcome` (`stored`, `duplicate`: another relay's copy).
pub const RELAY_PUBLISHED: &str = "jwt_revocation_relay_published_total";
/// Markers (proofs of sync) a relay published.
pub const RELAY_MARKERS: &str = "jwt_revocation_relay_markers_total";
/// A relay's lag: the ledger's last `seq` it has seen minus the last it published (gauge).
pub const RELAY_LAG: &str = "jwt_revocation_relay_lag_seq";

/// Key-set fetches of a `Jwks`, by `outcome` (`success`, `failure`) and `source` (the issuer or
/// JWKS URL).
pub const JWKS_FETCHES: &str = "jwt_revocation_jwks_fetches_total";
/// Key-set fetches started because a token named an unknown `kid`, by `source`.
pub const JWKS_UNKNOWN_KID_FETCHES: &str = "jwt_revocation_jwks_unknown_kid_fetches_total";
/// Keys in a `Jwks`'s current set, by `source` (gauge).
pub const JWKS_KEYS: &str = "jwt_revocation_jwks_keys";
/// Unix time of a `Jwks`'s last successful fetch, by `source` (gauge): the set's age is
/// `time() - this`.
pub const JWKS_LAST_SUCCESS: &str = "jwt_revocation_jwks_last_success_timestamp_seconds";

/// Every metric this crate publishes.
pub const NAMES: [&str; 29] = [
    REQUESTS,
    STORE_ERRORS,
    SLOW_CHECKS,
    TOKEN_CACHE,
    CACHE_CHECKS,
    CACHE_VERDICTS,
    CACHE_LOOKUPS,
    CACHE_COALESCED,
    CACHE_EVICTIONS,
    CACHE_ENTRIES,
    CACHE_IN_FLIGHT,
    CACHE_MIRRORING,
    MIRROR_ENTRIES,
    MIRROR_BYTES,
    MIRROR_SNAPSHOTS,
    FEED_EVENTS,
    FEED_RESYNCS,
    FEED_RESTARTS,
    FEED_IN_SYNC,
    FEED_LAST_SYNC,
    FEED_LAG,
    FEED_REPAIRS,
    RELAY_PUBLISHED,
    RELAY_MARKERS,
    RELAY_LAG,
    JWKS_FETCHES,
    JWKS_UNKNOWN_KID_FETCHES,
    JWKS_KEYS,
    JWKS_LAST_SUCCESS,
];

/// How long checks must have stopped failing before an outage is logged as ended: a partial
/// outage (some checks fail, some succeed) stays one outage instead of flapping.
pub const OUTAGE_QUIET: Duration = Duration::from_secs(1);
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// A counter: an atomic the crate reads, published under `name` and `labels` too.
pub(crate) struct Count {
    value: AtomicU64,
    #[cfg(feature = "metrics")]
    published: metrics::Counter,
}

impl Count {
    pub(crate) fn new(name: &'static str, labels: &'static [(&'static str, &'static str)]) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (name, labels);
        Self {
            value: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            published: metrics::counter!(name, labels),
        }
    }

    /// A counter with a `source` label of runtime value besides the static `labels`.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) fn labeled(
        name: &'static str,
        labels: &'static [(&'static str, &'static str)],
        source: &str,
    ) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (name, labels, source);
        Self {
            value: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            published: {
                let mut all: Vec<metrics::Label> = labels.iter().map(metrics::Label::from).collect();
                all.push(metrics::Label::new("source", source.to_owned()));
                metrics::counter!(name, all)
            },
        }
    }

    #[inline]
    pub(crate) fn bump(&self) {
        // Statistics, not synchronisation: relaxed is enough.
        self.value.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.published.increment(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A gauge, published only (the crate reads its source directly).
#[cfg_attr(not(any(feature = "moka", feature = "jwks")), allow(dead_code))]
pub(crate) struct Level {
    #[cfg(feature = "metrics")]
    published: metrics::Gauge,
}

#[cfg_attr(not(any(feature = "moka", feature = "jwks")), allow(dead_code))]
impl Level {
    #[cfg_attr(not(feature = "moka"), allow(dead_code))]
    pub(crate) fn new(name: &'static str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = name;
        Self {
            #[cfg(feature = "metrics")]
            published: metrics::gauge!(name),
        }
    }

    /// A gauge with a `source` label of runtime value.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) fn labeled(name: &'static str, source: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (name, source);
        Self {
            #[cfg(feature = "metrics")]
            published: metrics::gauge!(name, "source" => source.to_owned()),
        }
    }

    pub(crate) fn set(&self, value: f64) {
        #[cfg(not(feature = "metrics"))]
        let _ = value;
        #[cfg(feature = "metrics")]
        self.published.set(value);
    }
}

/// A histogram, published only.
#[cfg_attr(not(feature = "moka"), allow(dead_code))]
pub(crate) struct Spread {
    #[cfg(feature = "metrics")]
    published: metrics::Histogram,
}

#[cfg_attr(not(feature = "moka"), allow(dead_code))]
impl Spread {
    pub(crate) fn new(name: &'static str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = name;
        Self {
            #[cfg(feature = "metrics")]
            published: metrics::histogram!(name),
        }
    }

    pub(crate) fn record(&self, value: f64) {
        #[cfg(not(feature = "metrics"))]
        let _ = value;
        #[cfg(feature = "metrics")]
        self.published.record(value);
    }
}

/// Registers the descriptions (`# HELP` lines) of every metric with the current recorder.
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            REQUESTS,
            "Requests decided by the JWT revocation layer, by outcome"
        );
        describe_counter!(STORE_ERRORS, "Revocation checks the backend could not answer");
        describe_counter!(
            SLOW_CHECKS,
            "Revocation checks that needed the backend's async path"
        );
        describe_counter!(
            TOKEN_CACHE,
            "Verified-token cache lookups, by result (hit: signature verification skipped)"
        );
        describe_counter!(CACHE_CHECKS, "Revocation cache checks, by answer (hit or miss)");
        describe_counter!(CACHE_VERDICTS, "Revocation cache verdicts, by verdict");
        describe_counter!(CACHE_LOOKUPS, "Lookups the revocation cache sent to the ledger");
        describe_counter!(
            CACHE_COALESCED,
            "Checks that shared another check's ledger lookup"
        );
        describe_counter!(
            CACHE_EVICTIONS,
            "Revocations dropped from the cache for lack of capacity"
        );
        describe_gauge!(CACHE_ENTRIES, "Entries held by the revocation cache");
        describe_gauge!(CACHE_IN_FLIGHT, "Ledger lookups in flight");
        describe_gauge!(CACHE_MIRRORING, "1 while the cache mirrors the whole ledger");
        describe_gauge!(
            MIRROR_ENTRIES,
            "Live revocations held by the mirror's compact table"
        );
        describe_gauge!(MIRROR_BYTES, "Bytes of the mirror's compact table");
        describe_counter!(MIRROR_SNAPSHOTS, "Times the mirror read the ledger's live set");
        describe_counter!(FEED_EVENTS, "Revocation change-feed events applied");
        describe_counter!(FEED_RESYNCS, "Times the change feed came back in sync");
        describe_counter!(FEED_RESTARTS, "Times the change feed's follower was restarted");
        describe_gauge!(
            FEED_IN_SYNC,
            "1 while the change feed is connected and proved in sync"
        );
        describe_gauge!(
            FEED_LAST_SYNC,
            "Unix time of the change feed's last proof of sync"
        );
        describe_histogram!(
            FEED_LAG,
            metrics::Unit::Seconds,
            "Propagation lag of each revocation applied from the change feed"
        );
        describe_counter!(FEED_REPAIRS, "Change-feed gaps repaired from the ledger");
        describe_counter!(
            RELAY_PUBLISHED,
            "Events a relay published to the stream, by outcome"
        );
        describe_counter!(RELAY_MARKERS, "Proofs of sync a relay published to the stream");
        describe_gauge!(
            RELAY_LAG,
            "The ledger's last seq a relay has seen minus the last it published"
        );
        describe_counter!(JWKS_FETCHES, "Key-set fetches, by outcome and source");
        describe_counter!(
            JWKS_UNKNOWN_KID_FETCHES,
            "Key-set fetches asked for by tokens naming an unknown kid"
        );
        describe_gauge!(JWKS_KEYS, "Keys in the current key set, by source");
        describe_gauge!(
            JWKS_LAST_SUCCESS,
            "Unix time of the last successful key-set fetch, by source"
        );
    }
}

/// Turns per-request store errors into a few log lines; see the module documentation.
pub(crate) struct Outage {
    failing: AtomicBool,
    state: Mutex<OutageState>,
}

struct OutageState {
    began: Instant,
    last_failure: Instant,
    last_report: Instant,
    failures: u64,
    since_report: u64,
}

impl Default for Outage {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            failing: AtomicBool::new(false),
            state: Mutex::new(OutageState {
                began: now,
                last_failure: now,
                last_report: now,
                failures: 0,
                since_report: 0,
            }),
        }
    }
}

impl Outage {
    /// A check failed with `error`; `policy` is what the layer did about it.
    pub(crate) fn failed(&self, error: &dyn std::fmt::Display, policy: &'static str) {
        self.failed_at(Instant::now(), error, policy);
    }

    fn failed_at(&self, now: Instant, error: &dyn std::fmt::Display, policy: &'static str) {
        tracing::debug!(%error, policy, "revocation check failed");
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.failing.swap(true, Ordering::AcqRel) {
            *state = OutageState {
                began: now,
                last_failure: now,
                last_report: now,
                failures: 1,
                since_report: 0,
            };
            tracing::warn!(%error, policy, "revocation checks are failing: the store cannot answer (outage began)");
            return;
        }
        state.failures += 1;
        state.since_report += 1;
        state.last_failure = now;
        if now.duration_since(state.last_report) >= OUTAGE_REPORT_EVERY {
            tracing::warn!(
                %error,
                policy,
                failed_checks = state.since_report,
                failed_checks_total = state.failures,
                "revocation checks still failing"
            );
            state.last_report = now;
            state.since_report = 0;
        }
    }

    /// A check was answered by the backend's slow path (the store, or what the cache may still
    /// answer on its behalf).
    #[inline]
    pub(crate) fn succeeded(&self) {
        if self.failing.load(Ordering::Acquire) {
            self.succeeded_at(Instant::now());
        }
    }

    fn succeeded_at(&self, now: Instant) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(state.last_failure) >= OUTAGE_QUIET
            && self.failing.swap(false, Ordering::AcqRel)
        {
            tracing::info!(
                failed_checks = state.failures,
                lasted_ms = u64::try_from(state.last_failure.duration_since(state.began).as_millis())
                    .unwrap_or(u64::MAX),
                "revocation checks succeed again (outage ended)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The outage's log lines, captured for this thread.
    fn captured(run: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_long_outage_is_reported_once_a_minute_and_a_partial_one_does_not_flap() {
        let logs = captured(|| {
            let outage = Outage::default();
            let start = Instant::now();
            let at = |seconds: f64| start + Duration::from_secs_f64(seconds);
            // 90 s of failures every half second, with a success between each two of them.
            for tick in 0..180 {
                outage.failed_at(at(f64::from(tick) * 0.5), &"refused", "closed");
                outage.succeeded_at(at(f64::from(tick) * 0.5 + 0.25));
            }
            outage.succeeded_at(at(91.0));
        });
        let count = |needle: &str| logs.lines().filter(|line| line.contains(needle)).count();
        assert_eq!(count("outage began"), 1, "{logs}");
        assert_eq!(count("still failing"), 1, "{logs}");
        assert_eq!(count("outage ended"), 1, "{logs}");
        assert!(logs.contains("failed_checks=180"), "{logs}");
    }
}
