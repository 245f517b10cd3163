//! [`MokaCache`]: the in-process tier that answers most checks from memory.
//!
//! It sits in front of a [`Ledger`] (such as [`PgStore`](super::postgres::PgStore)) and is itself
//! a [`RevocationBackend`] and [`RevocationStore`], so the chain reads
//! `JwtRevocationLayer<MokaCache<PgStore>>`. It owns the `moka` maps of what is known per key
//! (`memory`), the mirror's compact live set (`compact`), the follower of the ledger's change
//! feed that keeps them current (`follow`), the rules for when memory may be trusted (`sync`),
//! and single flight for misses (`flight`). It does not own durability: every write goes to the
//! ledger first.
//!
//! # What is cached, and how stale an answer can be
//!
//! - **Revoked** (positive) entries, per `jti`, per `sid`, and subject cutoffs, are always
//!   trusted. A revocation lives until its token's `exp` plus the
//!   [`revocation_grace`](MokaCacheBuilder::revocation_grace) (5 min, beyond any validation
//!   leeway), so a revoked token never becomes valid again while it can be presented; concurrent
//!   writers never shorten that. Past [`max_capacity`](MokaCacheBuilder::max_capacity) entries
//!   per kind, the tier evicts one itself, after dropping every "not revoked" entry the evicted
//!   one overrode (moka's own eviction runs its listener only once the entry is gone, which
//!   would leave such an entry answering for a moment): losing one only means the next check
//!   of that key asks the ledger again (lookup mode), never that it is assumed absent.
//! - A check that misses joins a lookup of the same keys already in flight only if this
//!   instance filed no revocation since that lookup began: after a logout through this
//!   instance (or one its feed delivered), the next check asks the ledger afresh instead of
//!   taking an answer read before the commit.
//! - **Not revoked** (negative) entries are kept per key (`jti`, `sid`, subject) for at most
//!   `negative_ttl`, and trusted only while the change feed is provably in sync: connected, and
//!   its last proof of sync no older than `max_staleness`. A token is answered "not revoked" from
//!   memory when each of its keys is. A negative is stored only if nothing that could make it
//!   stale happened while its lookup ran (the first sync of a feed that started "from now", an eviction).
//! - The feed proves sync at every heartbeat by reading the ledger past the last change it
//!   delivered (for [`PgStore`](super::postgres::PgStore), every 2 s by default). Notifications
//!   make delivery fast (milliseconds); the heartbeat makes it certain, so a revocation made on
//!   another instance, or written by `psql`, reaches this one within one heartbeat plus a query
//!   even where notifications are lost (a transaction pooler, a proxy), as long as the feed's
//!   connection answers. One that stops answering is declared down when the heartbeat's query
//!   times out (the store's timeout); from then on negatives are not trusted, and in no case are
//!   they trusted past `max_staleness` after the last proof of sync.
//!
//! Per mode, the worst case:
//!
//! - [`CacheMode::Lookup`] (default): a miss asks the ledger once (concurrent misses for the same
//!   keys share one query). While in sync, a "not revoked" answer is at most one heartbeat plus a
//!   query old. While the feed is disconnected, negatives are not used: every check not settled by
//!   a positive entry asks the ledger. If the ledger is unreachable as well, a negative no older
//!   than `max_staleness` past the last sync still answers; after that the layer's
//!   [`FailurePolicy`](crate::FailurePolicy) decides.
//! - [`CacheMode::Mirror`]: the tier loads every live revocation at start (a page at a time) and
//!   follows the feed. It holds them in compact form, a 62-bit fingerprint and a 32-bit expiry or
//!   cutoff per revocation in one flat table (16 to 24 bytes each, up to twice that while
//!   expired ones wait for a sweep: a million in 16 to 24 MB, 15.3 to 22.9 MiB;
//!   see [`mirror_max_entries`](MokaCacheBuilder::mirror_max_entries)). A token none of whose
//!   keys the table holds is "not revoked" without a query. One whose key it holds is confirmed
//!   with the ledger (a fingerprint may collide, with odds around 2⁻³⁶ per check), and the
//!   confirmed revocation is then kept as a positive entry; if the ledger cannot answer, a held
//!   key is "revoked", the safe side. Answers are as stale as in lookup mode while in sync, and
//!   at most `max_staleness` past the last sync while the feed is disconnected (the database may
//!   be down: the mirror keeps serving both ways); beyond that, tokens the table does not hold go
//!   to the ledger and its errors to the failure policy. Revocations leave the table when their
//!   token has expired (plus the grace); a refresh every
//!   [`mirror_refresh`](MokaCacheBuilder::mirror_refresh) re-reads the live set so that what the
//!   ledger purged (old subject cutoffs) leaves too. If the live set passes `mirror_max_entries`
//!   the tier falls back to lookup mode with a `warn`, and is promoted back by the first refresh
//!   (or resync) whose snapshot fits.
//!
//! If the follower of the feed ever stops (its stream ended, a panic), it is restarted from the
//! last change it applied, counted in [`CacheMetrics::feed_restarts`] and logged; until the new
//! one is in sync, nothing is answered "not revoked" from memory, in either mode.

mod builder;
mod compact;
mod flight;
mod follow;
mod memory;
mod positives;
mod sync;

pub use builder::{DEFAULT_MIRROR_MAX_ENTRIES, MokaCacheBuilder};

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

use self::flight::{Flights, TokenKeys};
use self::memory::{Memory, Trust};
use self::sync::SyncState;
use crate::telemetry::{self, Count, Level, Spread};

use super::{
    Ledger, Revocation, RevocationBackend, RevocationRecord, RevocationStore, RevocationTarget, RevokedBy,
    StoreError, TokenFacts, Verdict, unix_seconds,
};

/// How the tier answers a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Ask the ledger (once per key, however many requests wait), then remember the answer.
    #[default]
    Lookup,
    /// Hold every live revocation; a miss is "not revoked" with no query.
    Mirror,
}

/// The tier's counters, read with [`MokaCache::metrics`] (or through the layer,
/// `layer.backend().metrics()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheMetrics {
    /// Checks answered "not revoked".
    pub active: u64,
    /// Checks answered "revoked" by `jti`.
    pub revoked_token: u64,
    /// Checks answered "revoked" by session.
    pub revoked_session: u64,
    /// Checks answered "revoked" by subject cutoff.
    pub revoked_subject: u64,
    /// Checks that ended in an error (the layer's policy then decides).
    pub errors: u64,
    /// Checks answered from memory on the synchronous fast path.
    pub hits: u64,
    /// Checks the fast path could not answer.
    pub misses: u64,
    /// Lookups sent to the ledger.
    pub backend_calls: u64,
    /// Checks that waited for another check's lookup of the same keys instead of sending one.
    pub coalesced_waits: u64,
    /// Lookups in progress right now (each shared by every check waiting for the same keys).
    pub in_flight_lookups: u64,
    /// Change-feed events applied.
    pub events_applied: u64,
    /// Times the feed came back in sync after a disconnection.
    pub resyncs: u64,
    /// Times the feed's follower stopped (its stream ended or it panicked) and was restarted.
    pub feed_restarts: u64,
    /// Revocations (or cutoffs) dropped from memory for lack of capacity; each costs a lookup of
    /// its own key when next asked (a mirror's live set is not held in these maps).
    pub evicted_revocations: u64,
    /// Entries held (approximate, as moka counts them).
    pub live_entries: u64,
    /// Propagation lag of the last event applied: applied time minus `revoked_at`, in ms.
    pub last_propagation_ms: u64,
    /// The largest propagation lag seen, in ms.
    pub max_propagation_ms: u64,
    /// Whether mirror mode is active (loaded, and not fallen back to lookup).
    pub mirroring: bool,
    /// Revocations the mirror holds (0 when not mirroring): the live ones, and expired ones
    /// until a sweep or a rebuild drops them.
    pub mirror_entries: u64,
    /// Bytes of the mirror's compact table (0 when not mirroring).
    pub mirror_bytes: u64,
    /// Times the mirror read the ledger's live set (at start, on refresh, to promote a fallback).
    pub mirror_snapshots: u64,
}

/// The tier's counters and gauges (see [`crate::telemetry`] for the published names).
struct Counters {
    active: Count,
    revoked_token: Count,
    revoked_session: Count,
    revoked_subject: Count,
    errors: Count,
    hits: Count,
    misses: Count,
    backend_calls: Count,
    coalesced_waits: Count,
    events_applied: Count,
    resyncs: Count,
    feed_restarts: Count,
    last_propagation_ms: AtomicU64,
    max_propagation_ms: AtomicU64,
    entries: Level,
    in_flight: Level,
    mirroring: Level,
    mirror_entries: Level,
    mirror_bytes: Level,
    snapshots: Count,
    in_sync: Level,
    last_sync: Level,
    lag: Spread,
}

impl Default for Counters {
    fn default() -> Self {
        telemetry::describe();
        let verdict =
            |label: &'static [(&'static str, &'static str)]| Count::new(telemetry::CACHE_VERDICTS, label);
        Self {
            active: verdict(&[("verdict", "active")]),
            revoked_token: verdict(&[("verdict", "revoked_token")]),
            revoked_session: verdict(&[("verdict", "revoked_session")]),
            revoked_subject: verdict(&[("verdict", "revoked_subject")]),
            errors: verdict(&[("verdict", "error")]),
            hits: Count::new(telemetry::CACHE_CHECKS, &[("answer", "hit")]),
            misses: Count::new(telemetry::CACHE_CHECKS, &[("answer", "miss")]),
            backend_calls: Count::new(telemetry::CACHE_LOOKUPS, &[]),
            coalesced_waits: Count::new(telemetry::CACHE_COALESCED, &[]),
            events_applied: Count::new(telemetry::FEED_EVENTS, &[]),
            resyncs: Count::new(telemetry::FEED_RESYNCS, &[]),
            feed_restarts: Count::new(telemetry::FEED_RESTARTS, &[]),
            last_propagation_ms: AtomicU64::new(0),
            max_propagation_ms: AtomicU64::new(0),
            entries: Level::new(telemetry::CACHE_ENTRIES),
            in_flight: Level::new(telemetry::CACHE_IN_FLIGHT),
            mirroring: Level::new(telemetry::CACHE_MIRRORING),
            mirror_entries: Level::new(telemetry::MIRROR_ENTRIES),
            mirror_bytes: Level::new(telemetry::MIRROR_BYTES),
            snapshots: Count::new(telemetry::MIRROR_SNAPSHOTS, &[]),
            in_sync: Level::new(telemetry::FEED_IN_SYNC),
            last_sync: Level::new(telemetry::FEED_LAST_SYNC),
            lag: Spread::new(telemetry::FEED_LAG),
        }
    }
}

struct Tier<B> {
    backend: B,
    memory: Memory,
    sync: SyncState,
    mode: CacheMode,
    mirror_max_entries: usize,
    mirror_refresh: Duration,
    /// The mirror's snapshot was loaded (whether or not it fit): a restarted follower resumes
    /// from the feed instead of loading it again.
    snapshot_loaded: AtomicBool,
    counters: Counters,
    flights: Flights,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl<B> Drop for Tier<B> {
    fn drop(&mut self) {
        let supervisor = self.supervisor.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = supervisor.take() {
            task.abort();
        }
    }
}

/// A cache tier over a [`Ledger`]. Build it with [`MokaCache::builder`]; clones share one cache.
///
/// Concurrency: checks never block each other (moka's reads are lock-free); a miss is sent to
/// the ledger by exactly one of the concurrent checks for the same keys, and the others wait for
/// its answer (a cancelled waiter hands the lookup to the next one; the last to leave removes
/// it). Writes go to the ledger first and update this instance's memory before returning, so the
/// revoking instance reads its own writes; other instances learn through the change feed.
pub struct MokaCache<B> {
    tier: Arc<Tier<B>>,
}

impl<B> Clone for MokaCache<B> {
    fn clone(&self) -> Self {
        Self {
            tier: Arc::clone(&self.tier),
        }
    }
}

impl<B> std::fmt::Debug for MokaCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaCache")
            .field("mode", &self.tier.mode)
            .finish_non_exhaustive()
    }
}

impl<B> Tier<B> {
    /// What memory may answer right now, reading the clock once.
    fn trust(&self) -> Trust {
        let within = self.sync.within_staleness();
        Trust {
            negatives: within && self.sync.connected(),
            mirror: within && self.memory.mirroring(),
            confirm: true,
        }
    }

    /// What memory may answer when the ledger could not: negatives (and the mirror) up to
    /// `max_staleness` past the last proof of sync, connected or not.
    fn trust_when_unreachable(&self) -> Trust {
        let within = self.sync.within_staleness();
        Trust {
            negatives: within,
            mirror: within && self.memory.mirroring(),
            confirm: false,
        }
    }

    fn count(&self, answer: &Result<Verdict, StoreError>) {
        match answer {
            Ok(Verdict::Active) => &self.counters.active,
            Ok(Verdict::Revoked(RevokedBy::Token)) => &self.counters.revoked_token,
            Ok(Verdict::Revoked(RevokedBy::Session)) => &self.counters.revoked_session,
            Ok(Verdict::Revoked(RevokedBy::Subject)) => &self.counters.revoked_subject,
            Err(_) => &self.counters.errors,
        }
        .bump();
    }

    /// Publishes the gauges that describe the tier's state.
    fn publish_state(&self) {
        let gauge = |on: bool| if on { 1.0 } else { 0.0 };
        self.counters.in_sync.set(gauge(self.sync.fresh()));
        self.counters.mirroring.set(gauge(self.memory.mirroring()));
        self.counters.entries.set(self.memory.entry_count() as f64);
        let compact = self.memory.compact();
        self.counters.mirror_entries.set(compact.len() as f64);
        self.counters.mirror_bytes.set(compact.bytes() as f64);
        self.counters.in_flight.set(self.flights.len() as f64);
    }
}

impl<B: Ledger> Tier<B> {
    /// The slow path: one ledger lookup per set of keys, however many checks wait for it.
    async fn check_slow(
        self: Arc<Self>,
        key: TokenKeys,
        issued_at: Option<u64>,
        expires_at: Option<u64>,
    ) -> Result<Verdict, StoreError> {
        let facts = key.facts(issued_at, expires_at);
        let flight = match self.flights.join(key.clone(), self.memory.filed(), || {
            self.memory.answer(&facts, self.trust())
        }) {
            Ok(flight) => flight,
            Err(answered) => return Ok(answered),
        };
        if flight.joined {
            self.counters.coalesced_waits.bump();
        }
        let result = flight
            .answer(|| async {
                self.counters.backend_calls.bump();
                let started = self.memory.epoch();
                let lookup = self.backend.lookup(&facts).await;
                if let Ok(lookup) = &lookup {
                    // Remembered before the flight ends, so a check arriving after it hits memory.
                    let negatives = !self.memory.mirroring();
                    self.memory.remember(&facts, lookup, started, negatives);
                }
                lookup.map_err(Arc::new)
            })
            .await;
        drop(flight);
        match result {
            Ok(lookup) => Ok(lookup.verdict(issued_at)),
            Err(error) => match self.memory.answer(&facts, self.trust_when_unreachable()) {
                Some(verdict) => Ok(verdict),
                None => Err(shared_error(&error)),
            },
        }
    }
}

/// A copy of a shared lookup error for one waiter, keeping its kind.
fn shared_error(error: &Arc<StoreError>) -> StoreError {
    #[derive(Debug)]
    struct Shared(Arc<StoreError>);
    impl std::fmt::Display for Shared {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }
    impl std::error::Error for Shared {}
    match &**error {
        StoreError::Timeout(timeout) => StoreError::Timeout(*timeout),
        StoreError::InvalidInput(what) => StoreError::InvalidInput(what),
        StoreError::Config(what) => StoreError::Config(what),
        StoreError::Query(_) => StoreError::Query(Box::new(Shared(Arc::clone(error)))),
        _ => StoreError::Unavailable(Box::new(Shared(Arc::clone(error)))),
    }
}

impl<B: Ledger> MokaCache<B> {
    /// The ledger behind the tier.
    pub fn backend(&self) -> &B {
        &self.tier.backend
    }

    /// The configured mode (see [`CacheMetrics::mirroring`] for whether mirroring is active).
    pub fn mode(&self) -> CacheMode {
        self.tier.mode
    }

    /// The counters so far.
    pub fn metrics(&self) -> CacheMetrics {
        let tier = &*self.tier;
        let c = &tier.counters;
        CacheMetrics {
            active: c.active.get(),
            revoked_token: c.revoked_token.get(),
            revoked_session: c.revoked_session.get(),
            revoked_subject: c.revoked_subject.get(),
            errors: c.errors.get(),
            hits: c.hits.get(),
            misses: c.misses.get(),
            backend_calls: c.backend_calls.get(),
            coalesced_waits: c.coalesced_waits.get(),
            in_flight_lookups: tier.flights.len() as u64,
            events_applied: c.events_applied.get(),
            resyncs: c.resyncs.get(),
            feed_restarts: c.feed_restarts.get(),
            evicted_revocations: tier.memory.evicted(),
            live_entries: tier.memory.entry_count(),
            last_propagation_ms: c.last_propagation_ms.load(Ordering::Relaxed),
            max_propagation_ms: c.max_propagation_ms.load(Ordering::Relaxed),
            mirroring: tier.memory.mirroring(),
            mirror_entries: tier.memory.compact().len() as u64,
            mirror_bytes: tier.memory.compact().bytes() as u64,
            mirror_snapshots: c.snapshots.get(),
        }
    }

    /// Whether cached "not revoked" answers are trusted right now (the feed is connected and
    /// its last proof of sync is within `max_staleness`).
    pub fn is_in_sync(&self) -> bool {
        self.tier.sync.fresh()
    }

    /// Waits until the tier is in sync (and, in mirror mode, loaded), at most `timeout`.
    /// Returns whether it is.
    pub async fn wait_in_sync(&self, timeout: Duration) -> bool {
        let ready = || {
            self.tier.sync.fresh() && (self.tier.mode != CacheMode::Mirror || self.tier.memory.mirroring())
        };
        let wait = async {
            loop {
                let notified = self.tier.sync.synced.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if ready() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() || ready()
    }
}

impl<B: Ledger> RevocationBackend for MokaCache<B> {
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

    /// Once the tier has proved sync with its ledger since it started, and from then on. A
    /// later outage is the failure policy's and `max_staleness`'s business, not the probe's:
    /// the ledger is shared by every instance, so a probe following the feed's connection
    /// would take every instance out of rotation at once on one database blip, the outage the
    /// mirror and `FailurePolicy::Open` exist to ride through. In mirror mode an instance is
    /// ready before (or without) its mirror loaded: its answers then come from lookups.
    fn is_ready(&self) -> bool {
        self.tier.sync.millis_since_sync().is_some()
    }

    /// The ledger's ([`Ledger::issuer_keying`]).
    fn issuer_keying(&self) -> bool {
        self.tier.backend.issuer_keying()
    }

    /// Answers from memory when it can: revoked entries always, negatives while in sync, and
    /// (mirror mode) misses within `max_staleness`. No allocation, no lock, no await.
    fn try_check(&self, facts: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        let tier = &*self.tier;
        match tier.memory.answer(facts, tier.trust()) {
            Some(verdict) => {
                tier.counters.hits.bump();
                let answer = Ok(verdict);
                tier.count(&answer);
                Some(answer)
            }
            None => {
                tier.counters.misses.bump();
                None
            }
        }
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        let tier = Arc::clone(&self.tier);
        let key = TokenKeys::of(facts);
        let (issued_at, expires_at) = (facts.issued_at, facts.expires_at);
        Box::pin(async move {
            let counted = Arc::clone(&tier);
            let answer = tier.check_slow(key, issued_at, expires_at).await;
            counted.count(&answer);
            answer
        })
    }
}

/// Writes go to the ledger first; the local memory is updated only after the ledger said `Ok`
/// (read-your-writes on this instance).
impl<B: Ledger> RevocationStore for MokaCache<B> {
    async fn revoke(&self, revocation: &Revocation<'_>) -> Result<bool, StoreError> {
        let changed = self.tier.backend.revoke(revocation).await?;
        let memory = &self.tier.memory;
        match revocation.target {
            RevocationTarget::Token { jti, expires_at } => memory.revoked_token(jti, Some(expires_at)),
            RevocationTarget::Session { sid, expires_at } => {
                memory.revoked_session(revocation.keyed_issuer(), sid, Some(expires_at));
            }
            RevocationTarget::Subject { subject, not_before } => {
                memory.cutoff(revocation.keyed_issuer(), subject, unix_seconds(not_before))
            }
        }
        Ok(changed)
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        self.tier.backend.list_by_subject(subject, limit).await
    }

    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        self.tier.backend.purge_expired(margin).await
    }
}
