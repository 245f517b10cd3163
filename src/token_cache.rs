//! The verified-token cache: exact token bytes → the `Arc` of claims that verified, so a token
//! the layer has seen before skips its signature verification.
//!
//! This module owns what may be remembered about a verified token and for how long. It does
//! not decide whether a token is revoked: the layer asks the backend on every request, hit or
//! miss, so a revocation takes effect exactly as without the cache. What it guarantees:
//!
//! - **Exact bytes.** An entry is found by a seeded hash of the token and then compared byte for
//!   byte, so a re-encoded, altered or colliding token never hits.
//! - **Only successes, and only tokens seen again.** An entry is written only after the token
//!   verified; a failure is never remembered (it would be verified, and refused, again). A token
//!   whose slot is free is written at once; one whose slot holds a live entry replaces it only
//!   on its *second* verification: the first leaves just its 64-bit hash in a doorkeeper table
//!   (one hash per slot, overwritten freely). A stream of one-off tokens thus costs a miss one
//!   hash write once the cache is full, and never evicts the tokens clients reuse (nor frees
//!   their claims, long out of the CPU's caches, which is what made churn slow).
//! - **Time claims on every hit.** A hit is served only while the token's `exp` (minus the
//!   validation's `reject_tokens_expiring_in_less_than`, plus its leeway) has not passed and its
//!   `nbf` (minus the leeway) has, the same bounds `jsonwebtoken` applies. The first request
//!   after that misses, drops the entry, and is verified (and refused) as usual. A token whose
//!   expiry is not checked (no `exp`, or `validate_exp` off) is never cached.
//! - **Key set changes.** Each entry carries its issuer and that issuer's key epoch, read
//!   *before* its token was verified; an entry whose issuer's epoch moved since is a miss (and
//!   its slot counts as free). A key source that changes its keys (a JWKS refresh that installs
//!   a different document: a key added, rotated or removed) moves its issuer's epoch, so a token
//!   signed by a removed key fails on its next request, while other issuers' entries stay; a key
//!   source whose keys may no longer be used serves nothing from the cache until they may.
//! - **Bounds.** A fixed table of `capacity` slots (a power of two), one entry each, replaced
//!   on collision; tokens longer than `max_token_len` are not cached. Memory is at most about
//!   `capacity × (token length + size of the claims + 100 bytes)`, and 16 bytes per slot when
//!   empty. An entry's memory is freed
//!   when its slot is reused, when a read finds it expired, or when a sweep (two slots per miss)
//!   passes it.
//! - **Per layer.** A cache belongs to one layer (and its clones): two layers with other keys or
//!   validation never share entries.
//!
//! Concurrency: a hit reads one slot through `arc-swap` (no lock, nothing that waits) and clones
//! the claims' `Arc`; the only memory it writes that other cores also write is that reference
//! count (and the layer's hit counter). Concurrent misses of one token each verify it and each
//! write it; the last write wins, and every entry written is complete.
//!
//! A hit also skips deserializing the claims: an application claims type whose `Deserialize`
//! checks something that changes over time runs that check once per cached token, not once per
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use crate::backend::unix_seconds;
use crate::decode::{Claims, KeyStamp};

/// The default number of cached tokens.
pub const DEFAULT_CAPACITY: usize = 8192;

/// The default longest token cached, in bytes (as Envoy's `jwt_authn` cache: longer tokens are
/// verified every time).
pub const DEFAULT_MAX_TOKEN_LEN: usize = 4096;

/// The largest capacity accepted (16 Mi entries, 256 MiB of empty slots).
pub const MAX_CAPACITY: usize = 1 << 24;

/// When a verified token may be served from the cache, in Unix seconds (inclusive bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) from: u64,
    pub(crate) until: u64,
}

impl Window {
    fn contains(&self, now: u64) -> bool {
        self.from <= now && now <= self.until
    }
}

struct Entry<C> {
    token: Box<[u8]>,
    claims: Arc<Claims<C>>,
    window: Window,
    stamp: KeyStamp,
}

impl<C> Entry<C> {
    /// Whether this entry may be served at `now` with the keys `current` gives each issuer's
    /// epoch of.
    fn live(&self, now: u64, current: &impl Fn(usize) -> Option<u64>) -> bool {
        self.window.contains(now) && current(self.stamp.issuer) == Some(self.stamp.epoch)
    }
}

/// The cache of one layer. See the module docs for its guarantees.
pub(crate) struct TokenCache<C> {
    slots: Box<[ArcSwapOption<Entry<C>>]>,
    /// The hash of the last token verified whose slot this is, for admission on its next
    /// verification; 0 when none.
    seen: Box<[AtomicU64]>,
    mask: usize,
    hasher: foldhash::fast::RandomState,
    max_token_len: usize,
    /// The next slot the sweep looks at.
    sweep: AtomicUsize,
}

impl<C> std::fmt::Debug for TokenCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.slots.len())
            .field("max_token_len", &self.max_token_len)
            .finish_non_exhaustive()
    }
}

impl<C> TokenCache<C> {
    /// A cache of `capacity` slots (rounded up to a power of two, at most [`MAX_CAPACITY`]),
    /// caching tokens of at most `max_token_len` bytes.
    pub(crate) fn new(capacity: usize, max_token_len: usize) -> Self {
        let capacity = table_size(capacity);
        Self {
            slots: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            seen: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            mask: capacity - 1,
            hasher: foldhash::fast::RandomState::default(),
            max_token_len,
            sweep: AtomicUsize::new(0),
        }
    }

    fn hash(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        // Never 0, the doorkeeper's "none".
        self.hasher.hash_one(token.as_bytes()) | 1
    }

    fn slot(&self, hash: u64) -> &ArcSwapOption<Entry<C>> {
        // `mask` is `slots.len() - 1`: the index is always in bounds.
        &self.slots[(hash as usize) & self.mask]
    }

    /// The claims `token` verified to, if its time claims hold now and `current` (an issuer's
    /// current key epoch) still gives the epoch it was verified under. Never waits, never
    /// allocates.
    pub(crate) fn get(&self, token: &str, current: impl Fn(usize) -> Option<u64>) -> Option<Arc<Claims<C>>> {
        if token.len() > self.max_token_len {
            return None;
        }
        let slot = self.slot(self.hash(token));
        let guard = slot.load();
        let entry = guard.as_ref()?;
        if *entry.token != *token.as_bytes() {
            return None;
        }
        if entry.live(now(), &current) {
            return Some(Arc::clone(&entry.claims));
        }
        // Expired, not yet valid, or verified under keys that changed: drop it (unless another
        // request replaced it meanwhile) and let the token be verified again.
        slot.compare_and_swap(&*guard, None);
        None
    }

    /// Remembers that `token` verified to `claims` under the keys `stamp` names (read before
    /// verifying), servable within `window`: at once into a free slot, else if it was verified
    /// before (the first time only its hash is remembered). A slot whose entry is not live any
    /// more (by the clock and `current`, an issuer's current key epoch) counts as free. Also
    /// sweeps two other slots of entries that are not live.
    pub(crate) fn insert(
        &self,
        token: &str,
        claims: &Arc<Claims<C>>,
        (window, stamp): (Window, KeyStamp),
        current: impl Fn(usize) -> Option<u64>,
    ) {
        if token.len() > self.max_token_len {
            return;
        }
        let now = now();
        if !window.contains(now) {
            return;
        }
        for _ in 0..2 {
            let index = self.sweep.fetch_add(1, Ordering::Relaxed) & self.mask;
            let slot = &self.slots[index];
            let guard = slot.load();
            if guard.as_ref().is_some_and(|entry| !entry.live(now, &current)) {
                slot.compare_and_swap(&*guard, None);
            }
        }
        let hash = self.hash(token);
        let slot = self.slot(hash);
        let vacant = slot
            .load()
            .as_ref()
            .is_none_or(|entry| !entry.live(now, &current));
        // A hint, not synchronisation: a lost race admits a token one verification later.
        let seen_before = self.seen[(hash as usize) & self.mask].swap(hash, Ordering::Relaxed) == hash;
        if !vacant && !seen_before {
            return;
        }
        slot.store(Some(Arc::new(Entry {
            token: token.as_bytes().into(),
            claims: Arc::clone(claims),
            window,
            stamp,
        })));
    }

    /// How many slots hold an entry (expired ones included until they are dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|slot| slot.load().is_some()).count()
    }
}

fn now() -> u64 {
    unix_seconds(SystemTime::now())
}

/// The slots of a cache asked for `capacity`: a power of two from 1 to [`MAX_CAPACITY`].
fn table_size(capacity: usize) -> usize {
    capacity.clamp(1, MAX_CAPACITY).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str) -> Arc<Claims> {
        Arc::new(serde_json::from_value(serde_json::json!({ "sub": sub })).unwrap())
    }

    fn open() -> Window {
        Window {
            from: 0,
            until: u64::MAX,
        }
    }

    fn stamp(issuer: usize, epoch: u64) -> KeyStamp {
        KeyStamp { issuer, epoch }
    }

    /// Every issuer's keys at epoch 0.
    fn epoch_0(_: usize) -> Option<u64> {
        Some(0)
    }

    fn insert(cache: &TokenCache<DefaultClaims>, token: &str, claims: &Arc<Claims>, window: Window) {
        cache.insert(token, claims, (window, stamp(0, 0)), epoch_0);
    }

    /// Inserts as the layer does on two verifications of `token`.
    fn admit(cache: &TokenCache<DefaultClaims>, token: &str, claims: &Arc<Claims>, window: Window) {
        insert(cache, token, claims, window);
        insert(cache, token, claims, window);
    }

    use crate::decode::DefaultClaims;

    #[test]
    fn a_token_evicts_a_live_entry_only_on_its_second_verification() {
        let cache = TokenCache::new(1, 4096);
        insert(&cache, "first", &claims("a"), open());
        assert!(
            cache.get("first", epoch_0).is_some(),
            "a free slot is taken at once"
        );
        insert(&cache, "second", &claims("b"), open());
        assert!(
            cache.get("second", epoch_0).is_none(),
            "seen once: only its hash is kept"
        );
        assert!(cache.get("first", epoch_0).is_some(), "and the live entry stays");
        insert(&cache, "second", &claims("b"), open());
        assert!(cache.get("second", epoch_0).is_some());
        assert!(cache.get("first", epoch_0).is_none());
    }

    #[test]
    fn an_entry_of_keys_that_changed_is_free_to_take_at_once() {
        let cache = TokenCache::new(1, 4096);
        insert(&cache, "old", &claims("a"), open());
        let moved = |_: usize| Some(1);
        cache.insert("new", &claims("b"), (open(), stamp(0, 1)), moved);
        assert!(
            cache.get("new", moved).is_some(),
            "the stale entry did not hold its slot"
        );
    }

    #[test]
    fn a_hit_needs_the_exact_token_and_its_issuers_current_epoch() {
        let cache = TokenCache::new(64, 4096);
        let alice = claims("alice");
        cache.insert("a.b.c", &alice, (open(), stamp(1, 7)), |_| Some(7));
        let epochs = |issuer_1: u64| move |issuer: usize| Some(if issuer == 1 { issuer_1 } else { 0 });
        let hit = cache.get("a.b.c", epochs(7)).expect("hit");
        assert!(Arc::ptr_eq(&hit, &alice), "the claims are shared, not copied");
        assert!(cache.get("a.b.C", epochs(7)).is_none());
        assert!(cache.get("a.b.c ", epochs(7)).is_none());
        assert!(
            cache.get("a.b.c", epochs(7)).is_some(),
            "other tokens' misses leave it"
        );
        assert!(
            cache.get("a.b.c", epochs(8)).is_none(),
            "its issuer's keys changed: a miss"
        );
        assert!(cache.get("a.b.c", epochs(7)).is_none(), "and the entry is gone");
        cache.insert("a.b.c", &alice, (open(), stamp(1, 7)), |_| Some(7));
        assert!(
            cache.get("a.b.c", |_| None).is_none(),
            "keys that may not be used: a miss"
        );
    }

    #[test]
    fn entries_outside_their_window_are_never_served_and_are_dropped() {
        let cache = TokenCache::new(64, 4096);
        let past = Window {
            from: 0,
            until: now() - 1,
        };
        admit(&cache, "expired", &claims("a"), past);
        assert_eq!(
            cache.len(),
            0,
            "an entry already outside its window is not written"
        );
        let future = Window {
            from: now() + 100,
            until: u64::MAX,
        };
        admit(&cache, "early", &claims("a"), future);
        assert_eq!(cache.len(), 0);
        // Written while valid, then its time passes.
        cache.slot(cache.hash("late")).store(Some(Arc::new(Entry {
            token: b"late".as_slice().into(),
            claims: claims("a"),
            window: past,
            stamp: stamp(0, 0),
        })));
        assert!(cache.get("late", epoch_0).is_none());
        assert_eq!(cache.len(), 0, "the read dropped it");
    }

    #[test]
    fn long_tokens_are_not_cached() {
        let cache = TokenCache::new(64, 8);
        admit(&cache, "123456789", &claims("a"), open());
        assert!(cache.get("123456789", epoch_0).is_none());
        admit(&cache, "12345678", &claims("a"), open());
        assert!(cache.get("12345678", epoch_0).is_some());
    }

    #[test]
    fn capacity_bounds_the_entries() {
        let cache = TokenCache::new(100, 4096);
        assert_eq!(cache.slots.len(), 128);
        for i in 0..10_000 {
            admit(&cache, &format!("token-{i}"), &claims("a"), open());
        }
        assert!(cache.len() <= 128);
        assert_eq!(TokenCache::<()>::new(0, 1).slots.len(), 1);
        assert_eq!(table_size(MAX_CAPACITY - 1), MAX_CAPACITY);
        assert_eq!(table_size(usize::MAX), MAX_CAPACITY);
    }

    #[test]
    fn the_sweep_drops_entries_that_are_not_live_on_later_misses() {
        let cache = TokenCache::new(4, 4096);
        for (index, slot) in cache.slots.iter().enumerate() {
            slot.store(Some(Arc::new(Entry {
                token: format!("old-{index}").into_bytes().into_boxed_slice(),
                claims: claims("a"),
                window: Window {
                    from: 0,
                    until: if index % 2 == 0 { 1 } else { u64::MAX },
                },
                // Even slots expired; all verified under keys older than the current ones.
                stamp: stamp(0, u64::from(index % 2 == 0)),
            })));
        }
        let moved = |_: usize| Some(2);
        cache.insert("new-1", &claims("b"), (open(), stamp(0, 2)), moved);
        cache.insert("new-2", &claims("b"), (open(), stamp(0, 2)), moved);
        cache.insert("new-2", &claims("b"), (open(), stamp(0, 2)), moved);
        // Six sweeps over four slots: every entry that is not live is gone, the new ones stay.
        assert!(cache.get("new-2", moved).is_some());
        assert!(
            cache
                .slots
                .iter()
                .all(|slot| slot.load().as_ref().is_none_or(|entry| entry.stamp.epoch == 2))
        );
    }
}
