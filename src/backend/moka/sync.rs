//! Whether the tier's memory is provably current: the change feed's connection, its last proof
//! of sync, its position (`seq`) in the ledger, and whether it is being restarted.
//!
//! A proof of sync is a [`FeedItem::InSync`](crate::FeedItem::InSync) or
//! [`FeedItem::InSyncAt`](crate::FeedItem::InSyncAt): every revocation committed
//! before it was delivered. Negatives are trusted only while connected and within
//! `max_staleness` of the last proof; a mirror's misses within `max_staleness` even while
//! disconnected; nothing while the feed is being restarted. This module only keeps the state;
//! the follower in `follow` moves it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

/// "No proof of sync yet" in `last_sync_ms`; "no position yet" in `cursor`.
const NEVER: u64 = u64::MAX;
const NO_SEQ: i64 = i64::MIN;

pub(super) struct SyncState {
    /// Reference point for the millisecond clock below.
    clock: Instant,
    connected: AtomicBool,
    /// The follower died and a new one is not in sync yet.
    restarting: AtomicBool,
    /// Milliseconds since `clock` of the last proof of sync.
    last_sync_ms: AtomicU64,
    /// The last `seq` applied: where a restarted feed resumes.
    cursor: AtomicI64,
    max_staleness: Duration,
    /// Woken at every proof of sync.
    pub(super) synced: Notify,
}

impl SyncState {
    pub(super) fn new(max_staleness: Duration) -> Self {
        Self {
            // Set `max_staleness` back, so that a proof made before this tier started (and
            // still young enough to count) is dated when it was made, not when the tier began.
            clock: Instant::now()
                .checked_sub(max_staleness)
                .unwrap_or_else(Instant::now),
            connected: AtomicBool::new(false),
            restarting: AtomicBool::new(false),
            last_sync_ms: AtomicU64::new(NEVER),
            cursor: AtomicI64::new(NO_SEQ),
            max_staleness,
            synced: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// Milliseconds since the last proof of sync; `None` before the first.
    pub(super) fn millis_since_sync(&self) -> Option<u64> {
        let last = self.last_sync_ms.load(Ordering::Acquire);
        (last != NEVER).then(|| self.now_ms().saturating_sub(last))
    }

    /// No older than `max_staleness` since the last proof of sync (connected or not), and not
    /// restarting.
    pub(super) fn within_staleness(&self) -> bool {
        !self.restarting.load(Ordering::Acquire)
            && self
                .millis_since_sync()
                .is_some_and(|ms| u128::from(ms) <= self.max_staleness.as_millis())
    }

    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Connected and within staleness: negatives may be answered from memory.
    pub(super) fn fresh(&self) -> bool {
        self.connected() && self.within_staleness()
    }

    /// Records a proof of sync at position `seq`, made now, or at `proved_at` (a relay's proof
    /// delivered later: dated then, never after now, and never moving the last proof back).
    /// Returns whether it ended a disconnection after an earlier sync (a resync).
    pub(super) fn in_sync(&self, seq: i64, proved_at: Option<SystemTime>) -> bool {
        self.set_cursor(seq);
        // A proof older than `max_staleness` (and than a second: a delivery's own delay) proves
        // nothing now, such as the old marker a new consumer delivers first: it connects
        // nothing and dates nothing.
        let too_old = self.max_staleness.max(Duration::from_secs(1));
        let age = proved_at.map(|at| SystemTime::now().duration_since(at).unwrap_or_default());
        if age.is_some_and(|age| age > too_old) {
            return false;
        }
        let was_connected = self.connected.swap(true, Ordering::AcqRel);
        let last = self.last_sync_ms.load(Ordering::Acquire);
        let had_synced = last != NEVER;
        let age_ms = proved_at.map_or(0, |at| {
            let age = SystemTime::now().duration_since(at).unwrap_or_default();
            u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
        });
        let proved_ms = self.now_ms().saturating_sub(age_ms);
        let proved_ms = if had_synced {
            proved_ms.max(last)
        } else {
            proved_ms
        };
        self.last_sync_ms.store(proved_ms, Ordering::Release);
        self.restarting.store(false, Ordering::Release);
        self.synced.notify_waiters();
        !was_connected && had_synced
    }

    /// Records a lost connection. Returns whether it was connected until now.
    pub(super) fn disconnected(&self) -> bool {
        self.connected.swap(false, Ordering::AcqRel)
    }

    /// Records that the follower stopped: nothing is trusted until the next proof of sync.
    pub(super) fn restarting(&self) {
        self.restarting.store(true, Ordering::Release);
        self.connected.store(false, Ordering::Release);
    }

    /// The last `seq` applied, if any.
    pub(super) fn cursor(&self) -> Option<i64> {
        let seq = self.cursor.load(Ordering::Acquire);
        (seq != NO_SEQ).then_some(seq)
    }

    /// Moves the position forward (never back).
    pub(super) fn set_cursor(&self, seq: i64) {
        self.cursor.fetch_max(seq, Ordering::AcqRel);
    }
}
