//! [`MokaCacheBuilder`]: the settings of a [`MokaCache`] and the start of its follower.
//!
//! Every number that bounds the tier's behaviour is set here, with what happens at the bound in
//! its documentation.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::flight::Flights;
use super::memory::Memory;
use super::sync::SyncState;
use super::{CacheMode, Counters, MokaCache, Tier, follow};
use crate::backend::{Ledger, StoreError};

/// The configuration of a [`MokaCache`].
#[must_use = "a builder does nothing until `start` is called"]
#[derive(Debug)]
pub struct MokaCacheBuilder<B> {
    backend: B,
    mode: CacheMode,
    max_capacity: u64,
    negative_ttl: Duration,
    max_staleness: Duration,
    revocation_grace: Duration,
    mirror_max_entries: usize,
    mirror_refresh: Duration,
}

/// The default of [`MokaCacheBuilder::mirror_max_entries`]: 32 Mi live revocations, a compact
/// table of at most 768 MiB.
pub const DEFAULT_MIRROR_MAX_ENTRIES: usize = 1 << 25;

impl<B: Ledger> MokaCache<B> {
    /// Starts a configuration over `backend`.
    pub fn builder(backend: B) -> MokaCacheBuilder<B> {
        MokaCacheBuilder {
            backend,
            mode: CacheMode::Lookup,
            max_capacity: 100_000,
            negative_ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(10),
            revocation_grace: Duration::from_secs(5 * 60),
            mirror_max_entries: DEFAULT_MIRROR_MAX_ENTRIES,
            mirror_refresh: Duration::from_secs(60 * 60),
        }
    }
}

impl<B: Ledger> MokaCacheBuilder<B> {
    /// Lookup (default) or mirror.
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// The most entries each moka map holds, for revocations and for "not revoked" answers
    /// alike (`jti`, `sid`, subject). Default 100 000. Past it, moka evicts: a lost "not
    /// revoked" answer or revocation costs one lookup of its key. A mirror's live set is not
    /// held in these maps (see [`mirror_max_entries`](Self::mirror_max_entries)).
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// The longest a "not revoked" answer is kept. Default 30 s; at most 1 000 years
    /// ([`start`](Self::start) refuses more).
    pub fn negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// How long after its last proof of sync the tier still answers "not revoked" from memory
    /// when the feed is down (mirror mode) or the ledger too (lookup mode). Default 10 s; keep
    /// it above the feed's heartbeat (2 s for `PgStore`).
    pub fn max_staleness(mut self, max_staleness: Duration) -> Self {
        self.max_staleness = max_staleness;
        self
    }

    /// How long past its token's expiry a revocation stays in memory. Default 5 min; keep it at
    /// least the layer's validation leeway, or a token revoked just before it expired could be
    /// accepted again within the leeway once its revocation has left memory (mirror mode).
    pub fn revocation_grace(mut self, revocation_grace: Duration) -> Self {
        self.revocation_grace = revocation_grace;
        self
    }

    /// The most live revocations (tokens, sessions and subject cutoffs together) a mirror holds.
    /// Default [`DEFAULT_MIRROR_MAX_ENTRIES`] (32 Mi). Memory follows the count: 12 bytes a
    /// slot, 16 to 24 bytes a revocation (1 000 000 in 16 to 24 MB, 15.3 to 22.9 MiB), up to twice that while
    /// expired ones wait for the sweep (once a minute, when they are half the table), plus the
    /// new table's size while a refresh builds it. Past the bound the mirror falls back to lookup mode, with a
    /// `warn`, and is promoted back once a snapshot fits again (see
    /// [`mirror_refresh`](Self::mirror_refresh)). Lookup mode ignores it.
    pub fn mirror_max_entries(mut self, mirror_max_entries: usize) -> Self {
        self.mirror_max_entries = mirror_max_entries;
        self
    }

    /// How often a mirror reads the ledger's live set again, so that revocations the ledger
    /// purged leave memory (expired tokens and sessions leave by themselves; subject cutoffs
    /// only this way). Default 1 hour. A mirror that fell back to lookup mode tries again at the
    /// next resync of the feed, and otherwise after 1 minute, doubling up to this interval.
    /// Each read costs the ledger a scan of its tables; the old table answers until the new one
    /// is swapped in. At least 1 s ([`start`](Self::start) refuses less).
    pub fn mirror_refresh(mut self, mirror_refresh: Duration) -> Self {
        self.mirror_refresh = mirror_refresh;
        self
    }

    /// Builds the tier and starts following the ledger's change feed on the current Tokio
    /// runtime (in mirror mode, after loading the live set). Returns at once; see
    /// [`MokaCache::wait_in_sync`]. The follower runs until the last clone of the cache is
    /// dropped; if it stops earlier it is restarted (see the module documentation).
    pub fn start(self) -> Result<MokaCache<B>, StoreError> {
        // moka refuses (panics on) a time to live over 1 000 years.
        if self.negative_ttl > Duration::from_secs(1_000 * 365 * 24 * 3600) {
            return Err(StoreError::Config("negative_ttl must be at most 1 000 years"));
        }
        if self.mirror_refresh < Duration::from_secs(1) {
            return Err(StoreError::Config("mirror_refresh must be at least 1 s"));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("needs a Tokio runtime (call it from within one)"))?;
        let tier = Arc::new(Tier {
            backend: self.backend,
            memory: Memory::new(
                self.max_capacity,
                self.negative_ttl,
                self.revocation_grace,
                self.mirror_max_entries,
            ),
            sync: SyncState::new(self.max_staleness),
            mode: self.mode,
            mirror_max_entries: self.mirror_max_entries,
            mirror_refresh: self.mirror_refresh,
            snapshot_loaded: AtomicBool::new(false),
            counters: Counters::default(),
            flights: Flights::default(),
            supervisor: Mutex::new(None),
        });
        let supervisor = runtime.spawn(follow::supervise(Arc::downgrade(&tier)));
        *tier.supervisor.lock().unwrap_or_else(PoisonError::into_inner) = Some(supervisor);
        Ok(MokaCache { tier })
    }
}
