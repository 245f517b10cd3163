//! The replay window: each proof `jti` accepted once per key while its proof could still pass
//! the `iat` check (RFC 9449 §11.1), in a fixed table of atomic slots with no lock.
//!
//! A proof is remembered by a keyed 31-bit fingerprint of (`jkt`, `jti`) and the Unix second its
//! entry may be dropped, packed into one `AtomicU64`, in the emptier of two buckets of 8 slots
//! chosen by two independent keyed hashes (SipHash with random keys per table: a client cannot
//! aim its ids at one bucket, and the second choice keeps buckets even). Two different proofs
//! sharing a fingerprint by chance (about 1 in 130 million per lookup, which compares with up to
//! 16 slots) cost that client a refusal and a retry with a fresh proof, never an accepted replay.
//! With two choices, a table first refuses at about 70 % of its capacity live (70 % to 72 % in
//! four fills of the default 2^20 slots, 74 % to 82 % for 16 Ki slots: bigger tables have fuller
//! worst buckets); a unit test fills the default size to 65 % without a refusal.
//!
//! An entry is kept [`GRACE`] seconds past the end of its proof's window, and the caller reads
//! the clock again just before recording, so a copy of a proof that passed the `iat` check at
//! the window's last second still finds the first copy's entry.
//!
//! What it deliberately does not do: evict a live entry. When both buckets of a proof are full
//! of live entries, the proof is refused as [`Seen::Full`] (the layer answers 503 with
//! `Retry-After`) rather than accepted unrecorded, because an unrecorded proof can be replayed.
//! One client holding a bound token and its key can fill the table by sending proofs as fast as
//! the instance verifies them; the layer records a proof only once its token passed the
//! revocation and scope checks, so revoking that token stops it. Size the table for the proofs
//! one instance accepts per window
//! ([`DpopConfig::replay_capacity`](super::DpopConfig::replay_capacity)).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per bucket: the probe of one bucket reads one cache line.
const WAYS: usize = 8;

/// Seconds an entry is kept past the end of its proof's window.
pub(crate) const GRACE: u64 = 10;

/// What [`ReplayWindow::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen before; now recorded until its window closes.
    First,
    /// Seen before within its window: a replay.
    Replayed,
    /// Both buckets of the proof hold live proofs only: not recorded, so not accepted.
    Full,
    /// The proof's window closed before it could be recorded.
    Stale,
}

/// A bounded, lock-free set of the proofs accepted in their windows.
pub(crate) struct ReplayWindow {
    slots: Box<[AtomicU64]>,
    buckets: usize,
    first: RandomState,
    second: RandomState,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// A window of at least `capacity` slots (rounded up to whole buckets, at least two).
    pub(crate) fn new(capacity: usize) -> Self {
        let buckets = capacity.div_ceil(WAYS).max(2);
        Self {
            slots: (0..buckets * WAYS).map(|_| AtomicU64::new(0)).collect(),
            buckets,
            first: RandomState::new(),
            second: RandomState::new(),
        }
    }

    fn hash(state: &RandomState, jkt: &str, jti: &str) -> u64 {
        let mut hasher = state.build_hasher();
        hasher.write(jkt.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(jti.as_bytes());
        hasher.finish()
    }

    /// Records proof `jti` of key `jkt`, whose window closes at `until` (Unix seconds), at time
    /// `now` (read just before the call); says whether it was seen before.
    ///
    /// Concurrent calls for the same proof accept it at most once: every caller scans both
    /// buckets after writing its own slot, and a caller that then finds another live copy
    /// refuses (sequentially consistent operations: of two writers, the later one's scan sees
    /// the earlier one's slot). Two copies racing can thus both be refused, never both accepted.
    pub(crate) fn record(&self, jkt: &str, jti: &str, until: u64, now: u64) -> Seen {
        if until < now {
            return Seen::Stale;
        }
        let first = Self::hash(&self.first, jkt, jti);
        let second = Self::hash(&self.second, jkt, jti);
        // Never 0 (an empty slot): the low bit is set.
        let fingerprint = (first >> 32) | 1;
        let bucket = |hash: u64| ((hash & 0xffff_ffff) as usize % self.buckets) * WAYS;
        let (a, mut b) = (bucket(first), bucket(second));
        if a == b {
            b = (a + WAYS) % self.slots.len();
        }
        let buckets = [&self.slots[a..a + WAYS], &self.slots[b..b + WAYS]];
        // Seconds past 2106 saturate: such an entry is never dropped, which only costs a slot.
        let keep = until.saturating_add(GRACE).min(u64::from(u32::MAX));
        let now = now.min(u64::from(u32::MAX));
        let entry = (fingerprint << 32) | keep;
        let live = |value: u64| value != 0 && (value & 0xffff_ffff) >= now;
        let mine = |value: u64| live(value) && value >> 32 == fingerprint;
        loop {
            // The free slot of the emptier bucket (the first bucket on a tie).
            let mut choice: Option<(usize, usize, u64, usize)> = None;
            for (which, slots) in buckets.iter().enumerate() {
                let mut free = None;
                let mut used = 0;
                for (i, slot) in slots.iter().enumerate() {
                    let value = slot.load(Ordering::SeqCst);
                    if mine(value) {
                        return Seen::Replayed;
                    }
                    if live(value) {
                        used += 1;
                    } else if free.is_none() {
                        free = Some((i, value));
                    }
                }
                if let Some((i, value)) = free
                    && choice.is_none_or(|(_, _, _, fewest)| used < fewest)
                {
                    choice = Some((which, i, value, used));
                }
            }
            let Some((which, i, old, _)) = choice else {
                return Seen::Full;
            };
            if buckets[which][i]
                .compare_exchange(old, entry, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            let another = buckets.iter().enumerate().any(|(w, slots)| {
                slots
                    .iter()
                    .enumerate()
                    .any(|(j, slot)| (w, j) != (which, i) && mine(slot.load(Ordering::SeqCst)))
            });
            return if another { Seen::Replayed } else { Seen::First };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_proof_is_accepted_once_within_its_window_and_its_grace() {
        let window = ReplayWindow::new(64);
        assert_eq!(window.record("k", "a", 100, 50), Seen::First);
        assert_eq!(window.record("k", "a", 100, 60), Seen::Replayed);
        assert_eq!(window.record("k", "a", 100, 100), Seen::Replayed);
        // Another key's proof with the same id is another proof.
        assert_eq!(window.record("other", "a", 100, 60), Seen::First);
        // Past its window a copy is stale; the entry itself stays through the grace.
        assert_eq!(window.record("k", "a", 100, 101), Seen::Stale);
        assert_eq!(
            window.record("k", "a", 100 + GRACE + 50, 100 + GRACE),
            Seen::Replayed
        );
        // Once the grace is over, the slot is free again.
        assert_eq!(window.record("k", "a", 200, 100 + GRACE + 1), Seen::First);
    }

    #[test]
    fn a_copy_checked_at_the_windows_last_second_finds_the_first_copy() {
        // Copy 1 is recorded; another proof arrives a second after the window closed (and could
        // take a free slot); copy 2, which passed its `iat` check at the window's last second,
        // still finds copy 1.
        let window = ReplayWindow::new(16);
        assert_eq!(window.record("k", "p", 100, 90), Seen::First);
        for i in 0..16 {
            window.record("k", &format!("other{i}"), 200, 101);
        }
        assert_eq!(window.record("k", "p", 100, 100), Seen::Replayed);
    }

    #[test]
    fn full_buckets_refuse_instead_of_forgetting() {
        // Two buckets of 8 slots: 16 live proofs fill them.
        let window = ReplayWindow::new(16);
        for i in 0..16 {
            assert_eq!(window.record("k", &i.to_string(), 100, 0), Seen::First, "{i}");
        }
        assert_eq!(window.record("k", "late", 100, 0), Seen::Full);
        for i in 0..16 {
            assert_eq!(window.record("k", &i.to_string(), 100, 0), Seen::Replayed);
        }
        // When the entries expire, there is room again.
        assert_eq!(window.record("k", "late", 300, 101 + GRACE), Seen::First);
    }

    #[test]
    fn the_default_table_holds_65_percent_of_its_capacity_live() {
        for round in 0..2 {
            let window = ReplayWindow::new(crate::dpop::DEFAULT_REPLAY_CAPACITY);
            let live = crate::dpop::DEFAULT_REPLAY_CAPACITY * 65 / 100;
            for i in 0..live {
                assert_eq!(
                    window.record("k", &format!("{round}-{i}"), 100, 0),
                    Seen::First,
                    "round {round}: proof {i} of {live}"
                );
            }
        }
    }

    #[test]
    fn racing_copies_of_one_proof_are_accepted_at_most_once() {
        for round in 0..200 {
            let window = Arc::new(ReplayWindow::new(16));
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let jti = format!("p{round}");
            let accepted: usize = (0..4)
                .map(|_| {
                    let (window, barrier, jti) = (Arc::clone(&window), Arc::clone(&barrier), jti.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        usize::from(window.record("k", &jti, 100, 0) == Seen::First)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|thread| thread.join().unwrap())
                .sum();
            assert!(accepted <= 1, "round {round}: accepted {accepted} times");
        }
    }
}
