//! The replay window: each proof `jti` accepted once per key while its proof could still pass
//! the `iat` check (RFC 9449 §11.1), in a fixed table of atomic slots with no lock.
//!
//! A proof is remembered by a keyed 32-bit fingerprint of (`jkt`, `jti`) and the Unix second its
//! `iat` window closes, packed into one `AtomicU64`. The fingerprint's key is random per table,
//! so a client cannot aim two ids at one fingerprint; two different proofs sharing one by chance
//! (about 1 in 500 million per lookup with the 8 slots a bucket has) cost that client a refusal
//! and a retry with a fresh proof, never an accepted replay.
//!
//! What it deliberately does not do: evict a live entry. When all 8 slots of a proof's bucket
//! hold proofs whose window is still open, the proof is refused as [`Seen::Full`] (the layer
//! answers 503 with `Retry-After`) rather than accepted unrecorded, because an unrecorded proof
//! can be replayed. Size the table for the proofs one instance accepts per window
//! ([`DpopConfig::replay_capacity`](super::DpopConfig::replay_capacity)).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots per bucket: the probe reads one cache line.
const WAYS: usize = 8;

/// What [`ReplayWindow::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not seen before; now recorded until its window closes.
    First,
    /// Seen before within its window: a replay.
    Replayed,
    /// Every slot of its bucket holds a live proof: not recorded, so not accepted.
    Full,
}

/// A bounded, lock-free set of the proofs accepted in their windows.
pub(crate) struct ReplayWindow {
    slots: Box<[AtomicU64]>,
    buckets: usize,
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// A window of at least `capacity` slots (rounded up to whole buckets, at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let buckets = capacity.div_ceil(WAYS).max(1);
        Self {
            slots: (0..buckets * WAYS).map(|_| AtomicU64::new(0)).collect(),
            buckets,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// Records proof `jti` of key `jkt`, whose window closes at `until` (Unix seconds), at time
    /// `now`; says whether it was seen before.
    ///
    /// Concurrent calls for the same proof accept it at most once: every caller scans its bucket
    /// after writing its own slot, and a caller that then finds another live copy refuses
    /// (sequentially consistent operations: of two writers, the later one's scan sees the
    /// earlier one's slot). Two copies racing can thus both be refused, never both accepted.
    pub(crate) fn record(&self, jkt: &str, jti: &str, until: u64, now: u64) -> Seen {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(jkt.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(jti.as_bytes());
        let hash = hasher.finish();
        // Never 0 (an empty slot): the low bit is set.
        let fingerprint = (hash >> 32) | 1;
        let bucket = ((hash & 0xffff_ffff) as usize % self.buckets) * WAYS;
        let slots = &self.slots[bucket..bucket + WAYS];
        // Seconds past 2106 saturate: such a window never closes, which only costs a slot.
        let until = until.min(u64::from(u32::MAX));
        let now = now.min(u64::from(u32::MAX));
        let entry = (fingerprint << 32) | until;
        let live = |value: u64| value != 0 && (value & 0xffff_ffff) >= now;
        'retry: loop {
            let mut free = None;
            for (i, slot) in slots.iter().enumerate() {
                let value = slot.load(Ordering::SeqCst);
                if live(value) {
                    if value >> 32 == fingerprint {
                        return Seen::Replayed;
                    }
                } else if free.is_none() {
                    free = Some((i, value));
                }
            }
            let Some((mine, old)) = free else {
                return Seen::Full;
            };
            if slots[mine]
                .compare_exchange(old, entry, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue 'retry;
            }
            let another = slots.iter().enumerate().any(|(i, slot)| {
                let value = slot.load(Ordering::SeqCst);
                i != mine && live(value) && value >> 32 == fingerprint
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
    fn a_proof_is_accepted_once_within_its_window() {
        let window = ReplayWindow::new(64);
        assert_eq!(window.record("k", "a", 100, 50), Seen::First);
        assert_eq!(window.record("k", "a", 100, 60), Seen::Replayed);
        assert_eq!(window.record("k", "a", 100, 100), Seen::Replayed);
        // Another key's proof with the same id is another proof.
        assert_eq!(window.record("other", "a", 100, 60), Seen::First);
        // Once its window closed, the `iat` check refuses it; its slot is free again.
        assert_eq!(window.record("k", "a", 200, 101), Seen::First);
    }

    #[test]
    fn a_full_bucket_refuses_instead_of_forgetting() {
        // One bucket of 8 slots.
        let window = ReplayWindow::new(1);
        for i in 0..WAYS {
            assert_eq!(window.record("k", &i.to_string(), 100, 0), Seen::First);
        }
        assert_eq!(window.record("k", "late", 100, 0), Seen::Full);
        for i in 0..WAYS {
            assert_eq!(window.record("k", &i.to_string(), 100, 0), Seen::Replayed);
        }
        // When the windows close, there is room again.
        assert_eq!(window.record("k", "late", 300, 101), Seen::First);
    }

    #[test]
    fn racing_copies_of_one_proof_are_accepted_at_most_once() {
        for round in 0..200 {
            let window = Arc::new(ReplayWindow::new(8));
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
