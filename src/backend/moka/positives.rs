//! A map of positives (revoked `jti`s and `sid`s, subject cutoffs) bounded by entry count, whose
//! entries never leave before what depends on them.
//!
//! moka could bound the map itself, but it removes an evicted entry *before* it runs the
//! eviction listener: for that moment the positive is gone while the negatives it overrode are
//! still there, and a revoked token is answered "not revoked". So no positive map here has a
//! moka capacity. At the bound, this map evicts a 64th of its entries itself (at least one),
//! in an order that never exposes a negative: first the epoch moves (no lookup in flight stores
//! a negative any more), then the negatives of the victims' keys go and, for revocations that
//! stand for every issuer, every negative of the keyed views (any of them may predate them),
//! and only then the entries. Entries otherwise leave only by expiry, once their token can no
//! longer be presented. The removals take the `gate` exclusively, and a lookup storing what it
//! found holds it shared, so an eviction never falls between a lookup storing a subject's cutoff
//! and storing the marker that says the cutoffs it holds are current (the marker would outlive
//! the cutoff). Which entries go is moka's iteration order (its first segments first), not
//! recency: at the bound, a revocation costs a lookup of its key sooner or later, never a wrong
//! answer. This module does not decide what a positive means; `memory` does.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::sync::{Cache, CacheBuilder};

use crate::telemetry::Count;

/// moka caches hashed with foldhash (randomly seeded per cache): keys come from verified tokens,
/// and SipHash cost a third of a warm check here.
pub(super) type Map<K, V> = Cache<K, V, foldhash::fast::RandomState>;

/// What the tier's maps share: the epoch that lookups compare, the evictions' sequence that
/// checks compare, and the count of evictions.
pub(super) struct Shared {
    /// Moves at every event after which a negative read from the ledger earlier may be stale.
    pub(super) epoch: AtomicU64,
    /// Odd while an eviction runs, moved twice by each: a check that answers "not revoked"
    /// from negatives reads it before its first read and again before answering, and answers
    /// only if it was even and did not move (the check reads a subject's marker before its
    /// cutoffs, and an eviction drops the marker before the cutoff: without this, a check could
    /// see the marker, then no cutoff).
    pub(super) evicting: AtomicU64,
    /// Positives evicted for size.
    pub(super) evicted: Count,
}

/// The negatives a positive overrides: those of its own key in `own`, and (for a positive that
/// applies to every issuer) all of `views`.
#[derive(Clone)]
pub(super) struct Dependents<N> {
    pub(super) own: Map<String, N>,
    pub(super) views: Option<Map<String, N>>,
}

/// Held exclusively by an eviction's removals, shared by a lookup storing its answer (see the
/// module documentation). Under it: a lookup's few map writes, or an eviction's invalidations
/// (two per victim, a 64th of the map); moka's housekeeping and the choice of victims run
/// before it is taken. A panic cannot leave anything half-done that a poisoned lock would have
/// to protect.
pub(super) type Gate = Arc<RwLock<()>>;

/// A positives map (see the module documentation).
pub(super) struct Positives<V, N> {
    map: Map<String, V>,
    /// Entries held: moka's own count lags its writes until its housekeeping runs, so the
    /// bound is kept on this one (insertions counted as they happen, removals by the listener),
    /// reset from moka's count after its housekeeping at every pass at the bound (an entry past
    /// its expiry that a write replaces is reported replaced, and concurrent writers race the
    /// reset: both only make the count high until the next pass, which costs one pass, never an
    /// eviction on every insert).
    held: Arc<AtomicI64>,
    capacity: u64,
    dependents: Dependents<N>,
    shared: Arc<Shared>,
    gate: Gate,
}

impl<V, N> Positives<V, N>
where
    V: Clone + Send + Sync + 'static,
    N: Clone + Send + Sync + 'static,
{
    /// A map of at most about `capacity` entries (a few more while writers race: each makes room
    /// before it stores, and a lookup stores up to five positives after making room once), built
    /// from `builder` (with its expiry, if any, and no capacity of its own).
    pub(super) fn new(
        builder: CacheBuilder<String, V, Cache<String, V>>,
        capacity: u64,
        dependents: Dependents<N>,
        shared: &Arc<Shared>,
        gate: &Gate,
    ) -> Self {
        Self::with_listener(builder, capacity, dependents, shared, gate, |_| {})
    }

    /// [`new`](Self::new), with `removed` told of every key that left (after it left).
    fn with_listener(
        builder: CacheBuilder<String, V, Cache<String, V>>,
        capacity: u64,
        dependents: Dependents<N>,
        shared: &Arc<Shared>,
        gate: &Gate,
        removed: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        let held = Arc::new(AtomicI64::new(0));
        let counted = Arc::clone(&held);
        let map = builder
            .eviction_listener(move |key: Arc<String>, _, cause| {
                if cause != RemovalCause::Replaced {
                    counted.fetch_sub(1, Ordering::Relaxed);
                }
                removed(key.as_str());
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            map,
            held,
            capacity: capacity.max(1),
            dependents,
            shared: Arc::clone(shared),
            gate: Arc::clone(gate),
        }
    }

    /// Whether `key` is held. Records no read (most keys asked for are not revoked).
    pub(super) fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// What `key` holds.
    pub(super) fn get(&self, key: &str) -> Option<V> {
        self.map.get(key)
    }

    /// Stores `value` under `key` unless `keeps(held)` says the value held already is at least as
    /// strong (a longer revocation, a later cutoff): concurrent writers never weaken an entry.
    /// At the bound, another entry is evicted first (dependents first). Never call it with the
    /// gate held: use [`make_room`](Self::make_room) before taking it and
    /// [`put_in_room`](Self::put_in_room) under it.
    pub(super) fn put(&self, key: &str, value: V, keeps: impl FnOnce(&V) -> bool) {
        self.make_room();
        self.put_in_room(key, value, keeps);
    }

    /// [`put`](Self::put) without making room: for a caller holding the gate, which made room
    /// before taking it.
    pub(super) fn put_in_room(&self, key: &str, value: V, keeps: impl FnOnce(&V) -> bool) {
        let stored = self.map.entry_by_ref(key).and_compute_with(|held| match held {
            Some(held) if keeps(held.value()) => Op::Nop,
            _ => Op::Put(value),
        });
        if let CompResult::Inserted(_) = stored {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn held(&self) -> u64 {
        u64::try_from(self.held.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Entries held (approximate, as moka counts them).
    pub(super) fn entry_count(&self) -> u64 {
        self.map.entry_count()
    }

    /// At the bound, evicts a 64th of the entries (at least one) under the gate, so that the
    /// next inserts find room: the eviction sequence turns odd and the epoch moves, the victims'
    /// dependents go, then the victims, then the sequence turns even. Below the bound (the
    /// common case), one relaxed read of the count.
    pub(super) fn make_room(&self) {
        if self.held() < self.capacity {
            return;
        }
        // Outside the gate (checks and lookups go on meanwhile): drop what expired before
        // evicting anything live, take moka's count, exact once its pending work ran, and
        // choose the victims.
        self.map.run_pending_tasks();
        self.held.store(
            i64::try_from(self.map.entry_count()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        if self.held() < self.capacity {
            return;
        }
        let batch = usize::try_from(self.capacity / 64).unwrap_or(usize::MAX).max(1);
        let victims: Vec<Arc<String>> = self.map.iter().take(batch).map(|(key, _)| key).collect();
        let _exclusive = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let _running = Evicting::begin(&self.shared);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for victim in &victims {
            self.shared.evicted.bump();
            self.dependents.own.invalidate(victim.as_str());
        }
        if let Some(views) = &self.dependents.views {
            views.invalidate_all();
        }
        for victim in &victims {
            self.map.invalidate(victim.as_str());
        }
    }
}

/// An eviction's turn of [`Shared::evicting`]: odd from `begin` until dropped, even again even
/// if the eviction panics (an odd count left behind would stop every negative for good).
struct Evicting<'a>(&'a Shared);

impl<'a> Evicting<'a> {
    fn begin(shared: &'a Shared) -> Self {
        shared.evicting.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Evicting<'_> {
    fn drop(&mut self) {
        self.0.evicting.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 24, item 7: what moka's eviction did on `main` (the entry first, its dependents in
    /// the listener after) is what this checks against. The map's own listener runs once the
    /// entry is gone, and records whether a negative it overrode was still there.
    #[test]
    fn an_eviction_drops_what_depends_on_the_entry_before_the_entry() {
        let map_of = || Cache::builder().build_with_hasher(foldhash::fast::RandomState::default());
        let (own, views): (Map<String, ()>, Map<String, ()>) = (map_of(), map_of());
        let exposed = Arc::new(AtomicU64::new(0));
        let removed = Arc::new(AtomicU64::new(0));
        let listener = {
            let (own, views, exposed, removed) = (
                own.clone(),
                views.clone(),
                Arc::clone(&exposed),
                Arc::clone(&removed),
            );
            move |key: &str| {
                removed.fetch_add(1, Ordering::SeqCst);
                if own.contains_key(key) || views.contains_key(&format!("A\0{key}")) {
                    exposed.fetch_add(1, Ordering::SeqCst);
                }
            }
        };
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            evicting: AtomicU64::new(0),
            evicted: Count::new("test_evictions", &[]),
        });
        let gate: Gate = Arc::new(RwLock::new(()));
        let dependents = Dependents {
            own: own.clone(),
            views: Some(views.clone()),
        };
        let positives = Positives::with_listener(Cache::builder(), 4, dependents, &shared, &gate, listener);
        for i in 0..64 {
            let key = format!("k{i}");
            // A negative stored before the revocation, and one of an issuer's view.
            own.insert(key.clone(), ());
            views.insert(format!("A\0{key}"), ());
            positives.put(&key, 1_u64, |held| *held >= 1);
        }
        positives.map.run_pending_tasks();
        assert!(
            removed.load(Ordering::SeqCst) >= 60,
            "{}",
            removed.load(Ordering::SeqCst)
        );
        assert!(shared.epoch.load(Ordering::SeqCst) >= 1);
        assert_eq!(
            shared.evicting.load(Ordering::SeqCst) % 2,
            0,
            "no eviction left running"
        );
        assert_eq!(
            exposed.load(Ordering::SeqCst),
            0,
            "an entry left before its dependents"
        );
        assert!(positives.held() <= 4, "{}", positives.held());
    }
}
