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
//!   is dropped). A key source that changes its keys (a JWKS refresh that installs
//!   a different document: a key added, rotated or removed) moves its issuer's epoch, so a token
//!   signed by a removed key fails on its next request, while other issuers' entries stay; a key
//!   source whose keys may no longer be used serves nothing from the cache until they may.
//! - **Bounds.** A fixed table of `capacity` slots (a power of two), one entry each, replaced
//!   on collision; tokens longer than `max_token_len` are not cached. Memory is at most about
//!   `capacity × (token length + size of the claims + 150 bytes)`, and 40 bytes per slot when
//!   empty. An entry that is not live any more is never served; its memory
//!   is freed when its slot is taken by another token or a read of its own token finds it dead.
//!   An expired entry's slot is free to take at once; an entry whose keys changed gives way to
//!   another token on that token's second verification (a miss decides from hints in the slot
//!   itself and never reads the entry, which lives elsewhere in memory).
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::claims::Claims;
use crate::backend::unix_seconds;

/// The default number of cached tokens.
pub const DEFAULT_CAPACITY: usize = 8192;

/// The default longest token cached, in bytes (as Envoy's `jwt_authn` cache: longer tokens are
/// verified every time).
pub const DEFAULT_MAX_TOKEN_LEN: usize = 4096;

pub use crate::config::MAX_CAPACITY;

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

/// The keys a token was verified with: its issuer (an index into the verifier's issuers) and
/// that issuer's key epoch, read before verifying. An entry of a verified-token cache is served
/// only while [`Verifier::key_epoch`] of its issuer still gives the same epoch, so a key set
/// change of one issuer flushes that issuer's tokens and no other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyStamp {
    pub(crate) issuer: usize,
    pub(crate) epoch: u64,
}

struct Entry<C> {
    /// The token's [`Key`].
    hash: u64,
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
    slots: Box<[Slot<C>]>,
    mask: usize,
    hasher: foldhash::fast::RandomState,
    max_token_len: usize,
}

/// One slot: its entry, and beside it (in the same cache line) hints that let a miss decide
/// without reading the entry, which lives elsewhere in memory. The hints may lag the entry for
/// an instant; every decision they make is safe either way (a spurious miss, or an eviction),
/// and whoever changes the entry settles them to the entry that stays (see `settle`).
struct Slot<C> {
    entry: ArcSwapOption<Entry<C>>,
    /// The hash of the entry's token; 0 when empty.
    hash: AtomicU64,
    /// The entry's `window.until`; 0 when empty.
    until: AtomicU64,
    /// The entry's [`KeyStamp`], packed (see `pack`); 0 when empty or not packable.
    stamp: AtomicU64,
    /// The hash of the last token verified whose slot this is, for admission on its next
    /// verification; 0 when none.
    seen: AtomicU64,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Self {
            entry: ArcSwapOption::empty(),
            hash: AtomicU64::new(0),
            until: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }
}

/// A token's place in a [`TokenCache`]: its hash, computed once per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key(u64);

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
            slots: (0..capacity).map(|_| Slot::default()).collect(),
            mask: capacity - 1,
            hasher: foldhash::fast::RandomState::default(),
            max_token_len,
        }
    }

    /// Where `token` is cached; `None` for a token too long to cache.
    pub(crate) fn key(&self, token: &str) -> Option<Key> {
        use std::hash::BuildHasher;
        (token.len() <= self.max_token_len)
            // Never 0, the hints' "none" (a hash of 0 is taken for 1: the index bits stay
            // uniform).
            .then(|| Key(self.hasher.hash_one(token.as_bytes()).max(1)))
    }

    fn slot(&self, key: Key) -> &Slot<C> {
        // `mask` is `slots.len() - 1`: the index is always in bounds.
        &self.slots[(key.0 as usize) & self.mask]
    }

    /// The claims `token` (at `key`) verified to, if its time claims hold now and `current`
    /// (an issuer's current key epoch) still gives the epoch it was verified under. Never
    /// waits, never allocates.
    pub(crate) fn get(
        &self,
        token: &str,
        key: Key,
        current: impl Fn(usize) -> Option<u64>,
    ) -> Option<Arc<Claims<C>>> {
        let slot = self.slot(key);
        if slot.hash.load(Ordering::Relaxed) != key.0 {
            return None;
        }
        let guard = slot.entry.load();
        let entry = guard.as_ref()?;
        if *entry.token != *token.as_bytes() {
            return None;
        }
        if entry.live(now(), &current) {
            return Some(Arc::clone(&entry.claims));
        }
        // Expired, not yet valid, or verified under keys that changed: drop it (unless another
        // request replaced it meanwhile) and let the token be verified again.
        let previous = slot.entry.compare_and_swap(&*guard, None);
        if previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, entry))
        {
            settle(slot);
        }
        None
    }

    /// Remembers that `token` (at `key`) verified to `claims` under the keys `stamp` names (read
    /// before verifying), servable within `window`: at once into a free slot (empty, or holding
    /// an expired entry), else if it was verified before (the first time only its hash is
    /// remembered). A slot whose entry was verified under keys that changed since (by
    /// `current`, an issuer's current key epoch) counts as free too.
    pub(crate) fn insert(
        &self,
        token: &str,
        key: Key,
        claims: &Arc<Claims<C>>,
        (window, stamp): (Window, KeyStamp),
        current: impl Fn(usize) -> Option<u64>,
    ) {
        let now = now();
        if !window.contains(now) {
            return;
        }
        let slot = self.slot(key);
        // Free: empty, expired, or verified under keys that changed since (all by the hints).
        let vacant = slot.until.load(Ordering::Relaxed) < now
            || unpack(slot.stamp.load(Ordering::Relaxed))
                .is_some_and(|held| current(held.issuer).map(|epoch| epoch & EPOCH_BITS) != Some(held.epoch));
        // A hint, not synchronisation: a lost race admits a token one verification later.
        let seen_before = slot.seen.swap(key.0, Ordering::Relaxed) == key.0;
        if !vacant && !seen_before {
            return;
        }
        slot.entry.store(Some(Arc::new(Entry {
            hash: key.0,
            token: token.as_bytes().into(),
            claims: Arc::clone(claims),
            window,
            stamp,
        })));
        settle(slot);
    }

    /// How many slots hold an entry (expired ones included until they are dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.entry.load().is_some())
            .count()
    }
}

/// Writes `slot`'s hints from the entry it holds, until they describe the entry that is there
/// after writing them. Every writer of an entry calls it after its store, so the last one to
/// finish leaves hints that match: a writer whose hints were overwritten by an older entry's
/// sees a newer entry on its check and writes again, and any store after a check is followed by
/// its own writer's call. (Sequentially consistent, so "after" holds across the hints and the
/// entry pointer; only a miss that writes pays for it.)
fn settle<C>(slot: &Slot<C>) {
    loop {
        let held = slot.entry.load();
        let (hash, until, stamp) = held.as_ref().map_or((0, 0, 0), |entry| {
            (entry.hash, entry.window.until, pack(entry.stamp))
        });
        slot.hash.store(hash, Ordering::SeqCst);
        slot.until.store(until, Ordering::SeqCst);
        slot.stamp.store(stamp, Ordering::SeqCst);
        let still = slot.entry.load();
        let same = match (held.as_ref(), still.as_ref()) {
            (Some(before), Some(after)) => Arc::ptr_eq(before, after),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
    }
}

/// The bits of a packed [`KeyStamp`] that hold its epoch (an epoch moves once per key-set
/// change: it never gets near 2^48).
const EPOCH_BITS: u64 = (1 << 48) - 1;

/// A [`KeyStamp`] in one word for the slot's hint: the issuer index plus one in the top 16
/// bits (so never 0), the epoch's low 48 bits below. An issuer index that does not fit (no
/// layer has 65 535 issuers) gives 0, "no hint": such a slot frees by expiry alone.
fn pack(stamp: KeyStamp) -> u64 {
    match u64::try_from(stamp.issuer) {
        Ok(issuer) if issuer < (1 << 16) - 1 => ((issuer + 1) << 48) | (stamp.epoch & EPOCH_BITS),
        _ => 0,
    }
}

/// The [`KeyStamp`] (its epoch's low 48 bits) a hint holds; `None` for 0.
fn unpack(packed: u64) -> Option<KeyStamp> {
    let issuer = usize::try_from(packed >> 48).ok()?.checked_sub(1)?;
    Some(KeyStamp {
        issuer,
        epoch: packed & EPOCH_BITS,
    })
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
    use crate::verify::DefaultClaims;

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

    type Cache = TokenCache<DefaultClaims>;

    fn get(cache: &Cache, token: &str, current: impl Fn(usize) -> Option<u64>) -> Option<Arc<Claims>> {
        cache.get(token, cache.key(token)?, current)
    }

    fn insert_stamped(cache: &Cache, token: &str, claims: &Arc<Claims>, window: Window, stamp: KeyStamp) {
        if let Some(key) = cache.key(token) {
            cache.insert(token, key, claims, (window, stamp), |_| Some(stamp.epoch));
        }
    }

    fn insert(cache: &Cache, token: &str, claims: &Arc<Claims>, window: Window) {
        insert_stamped(cache, token, claims, window, stamp(0, 0));
    }

    /// Inserts as the layer does on two verifications of `token`.
    fn admit(cache: &Cache, token: &str, claims: &Arc<Claims>, window: Window) {
        insert(cache, token, claims, window);
        insert(cache, token, claims, window);
    }

    #[test]
    fn a_token_evicts_a_live_entry_only_on_its_second_verification() {
        let cache = Cache::new(1, 4096);
        insert(&cache, "first", &claims("a"), open());
        assert!(
            get(&cache, "first", epoch_0).is_some(),
            "a free slot is taken at once"
        );
        insert(&cache, "second", &claims("b"), open());
        assert!(
            get(&cache, "second", epoch_0).is_none(),
            "seen once: only its hash is kept"
        );
        assert!(
            get(&cache, "first", epoch_0).is_some(),
            "and the live entry stays"
        );
        insert(&cache, "second", &claims("b"), open());
        assert!(get(&cache, "second", epoch_0).is_some());
        assert!(get(&cache, "first", epoch_0).is_none());
    }

    #[test]
    fn an_expired_entry_is_free_to_take_at_once() {
        let cache = Cache::new(1, 4096);
        insert(&cache, "old", &claims("a"), open());
        assert!(get(&cache, "old", epoch_0).is_some());
        // Time passes (as the slot's hint tells): the next token takes the slot at once.
        cache.slots[0].until.store(1, Ordering::Relaxed);
        insert(&cache, "new", &claims("b"), open());
        assert!(get(&cache, "new", epoch_0).is_some());
    }

    /// A stamp's hint round-trips, and an issuer index past what the hint holds gives "no hint",
    /// never another issuer's (mutation testing, issue 26: `(1 << 16) + 1` as the bound made
    /// issuer 65 536 read back as issuer 0).
    #[test]
    fn a_packed_stamp_reads_back_or_not_at_all() {
        for (issuer, epoch) in [(0, 0), (0, 7), (3, EPOCH_BITS), (65_534, 1)] {
            assert_eq!(unpack(pack(stamp(issuer, epoch))), Some(stamp(issuer, epoch)));
        }
        assert_eq!(
            unpack(pack(stamp(1, EPOCH_BITS + 2))),
            Some(stamp(1, 1)),
            "the epoch's low bits"
        );
        for issuer in [65_535, 65_536, 65_537, usize::MAX] {
            assert_eq!(unpack(pack(stamp(issuer, 5))), None, "issuer {issuer}");
        }
    }

    /// An entry servable until this very second still holds its slot (mutation testing,
    /// issue 26: with `<=` for `<` in the vacancy hint, nothing failed).
    #[test]
    fn an_entry_in_its_last_second_is_not_free() {
        for _ in 0..5 {
            let cache = Cache::new(1, 4096);
            insert(&cache, "old", &claims("a"), open());
            let second = now();
            cache.slots[0].until.store(second, Ordering::Relaxed);
            insert(&cache, "new", &claims("b"), open());
            if now() != second {
                continue; // the clock ticked in between: the entry expired, try again
            }
            assert!(
                get(&cache, "new", epoch_0).is_none(),
                "a first verification takes no live slot"
            );
            assert!(get(&cache, "old", epoch_0).is_some());
            return;
        }
        panic!("the clock ticked during each of five tries");
    }

    #[test]
    fn an_entry_of_keys_that_changed_is_free_to_take_at_once() {
        let cache = Cache::new(1, 4096);
        insert_stamped(&cache, "old", &claims("a"), open(), stamp(3, 7));
        let moved = |_: usize| Some(8);
        let key = cache.key("new").unwrap();
        cache.insert("new", key, &claims("b"), (open(), stamp(3, 8)), moved);
        assert!(get(&cache, "new", moved).is_some());
        // Under unchanged keys, an entry holds its slot against a first verification.
        let key = cache.key("newer").unwrap();
        cache.insert("newer", key, &claims("c"), (open(), stamp(3, 8)), moved);
        assert!(get(&cache, "new", moved).is_some());
    }

    #[test]
    fn the_slot_hints_settle_on_the_entry_that_stays() {
        let cache = Cache::new(1, 4096);
        insert(&cache, "a", &claims("a"), open());
        let slot = &cache.slots[0];
        // A slower writer's hints for an older entry land after the entry's own.
        slot.hash.store(12345, Ordering::SeqCst);
        slot.until.store(1, Ordering::SeqCst);
        assert!(get(&cache, "a", epoch_0).is_none(), "a stale hint: a miss");
        settle(slot);
        assert_eq!(slot.hash.load(Ordering::SeqCst), cache.key("a").unwrap().0);
        assert_eq!(slot.until.load(Ordering::SeqCst), u64::MAX);
        assert!(get(&cache, "a", epoch_0).is_some());
        assert_eq!(unpack(pack(stamp(0, 0))), Some(stamp(0, 0)));
        assert_eq!(unpack(pack(stamp(70_000, 1))), None, "not packable: no hint");
        assert_eq!(pack(stamp(2, u64::MAX)) >> 48, 3);
    }

    #[test]
    fn a_hit_needs_the_exact_token_and_its_issuers_current_epoch() {
        let cache = Cache::new(64, 4096);
        let alice = claims("alice");
        insert_stamped(&cache, "a.b.c", &alice, open(), stamp(1, 7));
        let epochs = |issuer_1: u64| move |issuer: usize| Some(if issuer == 1 { issuer_1 } else { 0 });
        let hit = get(&cache, "a.b.c", epochs(7)).expect("hit");
        assert!(Arc::ptr_eq(&hit, &alice), "the claims are shared, not copied");
        assert!(get(&cache, "a.b.C", epochs(7)).is_none());
        assert!(get(&cache, "a.b.c ", epochs(7)).is_none());
        // Another token whose key collides with this one's is still compared byte for byte.
        let key = cache.key("a.b.c").unwrap();
        assert!(cache.get("x.y.z", key, epochs(7)).is_none());
        assert!(
            get(&cache, "a.b.c", epochs(7)).is_some(),
            "other tokens' misses leave it"
        );
        assert!(
            get(&cache, "a.b.c", epochs(8)).is_none(),
            "its issuer's keys changed: a miss"
        );
        assert!(get(&cache, "a.b.c", epochs(7)).is_none(), "and the entry is gone");
        assert_eq!(cache.len(), 0);
        insert_stamped(&cache, "a.b.c", &alice, open(), stamp(1, 7));
        assert!(
            get(&cache, "a.b.c", |_| None).is_none(),
            "keys that may not be used: a miss"
        );
    }

    #[test]
    fn entries_outside_their_window_are_never_served_and_are_dropped() {
        let cache = Cache::new(64, 4096);
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
        let key = cache.key("late").unwrap();
        let slot = cache.slot(key);
        slot.entry.store(Some(Arc::new(Entry {
            hash: key.0,
            token: b"late".as_slice().into(),
            claims: claims("a"),
            window: past,
            stamp: stamp(0, 0),
        })));
        slot.hash.store(key.0, Ordering::Relaxed);
        assert!(get(&cache, "late", epoch_0).is_none());
        assert_eq!(cache.len(), 0, "the read dropped it");
    }

    #[test]
    fn long_tokens_are_not_cached() {
        let cache = Cache::new(64, 8);
        assert!(cache.key("123456789").is_none());
        admit(&cache, "12345678", &claims("a"), open());
        assert!(get(&cache, "12345678", epoch_0).is_some());
    }

    #[test]
    fn capacity_bounds_the_entries() {
        let cache = Cache::new(100, 4096);
        assert_eq!(cache.slots.len(), 128);
        for i in 0..10_000 {
            admit(&cache, &format!("token-{i}"), &claims("a"), open());
        }
        assert_eq!(cache.len(), 128, "every slot is reachable");
        assert_eq!(TokenCache::<()>::new(0, 1).slots.len(), 1);
        assert_eq!(table_size(MAX_CAPACITY - 1), MAX_CAPACITY);
        assert_eq!(table_size(usize::MAX), MAX_CAPACITY);
    }
}
