//! The mirror's live set in compact form: every live revocation as a 62-bit hash of its key and
//! a 32-bit number, in one flat open-addressing table (linear probing), 12 bytes a slot.
//!
//! A mirror only has to answer "certainly not revoked" from memory. A key whose hash is absent
//! is certainly not revoked; a key whose hash is present is *maybe* revoked (another key may
//! share the hash), and the tier confirms that with the ledger, so a collision costs one query,
//! never a wrong answer. The hash is foldhash, seeded at random per process, so collisions cannot
//! be aimed; with 62 bits, of which at most 26 pick the slot, two keys that meet in a probe
//! share all of them with a probability of about 2⁻³⁶.
//!
//! The number is, for a token or a session, the Unix second until which the revocation is kept
//! (the token's expiry plus the grace; `u32::MAX` for never), after which the slot is dead and is
//! reused or dropped; for a subject, its cutoff (`u32::MAX`: every token, a ban for good). Two
//! keys of one kind that share a hash keep the larger number, which is the safe side of both.
//!
//! Readers take no lock: they load the table (an `arc-swap` snapshot) and read slots with
//! acquire loads. One writer at a time (a mutex, held for nanoseconds per insert, and for a
//! rebuild's copy when the table grows or sheds dead slots) stores a slot's number before its
//! hash, and never empties a slot in place, so a reader never misses an entry that was in the
//! table when it started: a rebuild fills a new table and swaps it in whole.
//!
//! Memory follows the entry count: the table is at most three quarters full and is rebuilt at
//! twice the live entries (any size: the home slot is picked by multiplying, not masking), so it
//! holds 16 to 24 bytes per entry (a million revocations in 16 to 24 MB, 15.3 to 22.9 MiB). Expired entries hold
//! their slots until a sweep (when they are half of them) or a rebuild drops them, so up to
//! twice that per live entry; a rebuild adds the new table's size for its moment.
//!
//! This module owns the table and the build of a new one from a snapshot (with the writes that
//! arrive while it is read); it knows nothing of the ledger or of trust (see `memory`, `follow`).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use crate::backend::{RevokedBy, TokenFacts, subject_cutoff_covers, unix_seconds};

/// The smallest table, in slots.
const MIN_SLOTS: usize = 1 << 10;
/// Bytes per slot: one `u64` hash, one `u32` number.
pub(super) const SLOT_BYTES: usize = 12;
const HASH_BITS: u64 = (1 << 62) - 1;

/// What a compact entry is filed under (the top two bits of its word; never 0, so a zero word is
/// an empty slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Token = 1,
    Session = 2,
    Subject = 3,
}

/// One revocation in compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    word: u64,
    number: u32,
}

impl Entry {
    fn kind(self) -> u64 {
        self.word >> 62
    }

    /// Whether the entry still matters at `now` (Unix seconds): cutoffs always, tokens and
    /// sessions until their `until`.
    fn alive(self, now: u32) -> bool {
        self.kind() == Kind::Subject as u64 || self.number >= now
    }
}

/// The Unix second `time` as a compact number, saturating at `u32::MAX` (which means "never" for
/// a token's `until` and "every token" for a cutoff: the safe side of both).
pub(super) fn seconds(time: u64) -> u32 {
    u32::try_from(time).unwrap_or(u32::MAX)
}

pub(super) fn now_seconds() -> u32 {
    seconds(unix_seconds(SystemTime::now()))
}

/// What the compact set says of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// None of its keys is revoked.
    Clear,
    /// One of its keys matches a live entry: revoked, or a collision; the ledger decides.
    Maybe(RevokedBy),
}

struct Table {
    words: Box<[AtomicU64]>,
    numbers: Box<[AtomicU32]>,
    slots: usize,
}

/// How [`Table::put`] placed an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Merged into the slot of the same word.
    Merged,
    /// Took a dead slot.
    Reused,
    /// Took an empty slot.
    New,
}

impl Table {
    /// A table of `slots` empty slots.
    fn with_slots(slots: usize) -> Self {
        Self {
            words: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            numbers: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            slots,
        }
    }

    fn slots(&self) -> usize {
        self.slots
    }

    /// The home slot of `word`: its hash bits scaled to the table (a multiply, so any table size
    /// spreads evenly).
    fn home(&self, word: u64) -> usize {
        ((u128::from(word << 2) * self.slots as u128) >> 64) as usize
    }

    fn next(&self, slot: usize) -> usize {
        if slot + 1 == self.slots { 0 } else { slot + 1 }
    }

    /// The number of the entry filed under `word`, if any. Lock-free.
    fn find(&self, word: u64) -> Option<u32> {
        let mut slot = self.home(word);
        loop {
            match self.words[slot].load(Ordering::Acquire) {
                0 => return None,
                found if found == word => return Some(self.numbers[slot].load(Ordering::Acquire)),
                _ => slot = self.next(slot),
            }
        }
    }

    /// Files `entry` (one writer at a time; the table must have an empty slot): merged into the
    /// slot of the same word, else in the first dead slot of its probe run, else in the empty
    /// slot that ends it. The number is stored before the word, so a reader that sees the word
    /// sees the number; a reused slot may show its old word with the new number for an instant,
    /// which only makes a dead key look maybe-revoked.
    fn put(&self, entry: Entry, now: u32) -> Placed {
        let mut slot = self.home(entry.word);
        let mut dead = None;
        loop {
            let word = self.words[slot].load(Ordering::Relaxed);
            if word == entry.word {
                self.numbers[slot].fetch_max(entry.number, Ordering::Release);
                return Placed::Merged;
            }
            if word == 0 {
                let (slot, placed) = dead.map_or((slot, Placed::New), |dead| (dead, Placed::Reused));
                self.numbers[slot].store(entry.number, Ordering::Release);
                self.words[slot].store(entry.word, Ordering::Release);
                return placed;
            }
            let number = self.numbers[slot].load(Ordering::Relaxed);
            if dead.is_none() && !(Entry { word, number }).alive(now) {
                dead = Some(slot);
            }
            slot = self.next(slot);
        }
    }

    /// Every live entry.
    fn live(&self, now: u32) -> impl Iterator<Item = Entry> + '_ {
        self.words
            .iter()
            .zip(self.numbers.iter())
            .map(|(word, number)| Entry {
                word: word.load(Ordering::Acquire),
                number: number.load(Ordering::Acquire),
            })
            .filter(move |entry| entry.word != 0 && entry.alive(now))
    }
}

/// The slots for a table holding `entries` with room to grow: twice the entries, so that at
/// least as many again can be filed before it passes three quarters full and is rebuilt.
fn slots_for(entries: usize) -> usize {
    entries.saturating_mul(2).max(MIN_SLOTS)
}

/// A table and its writer's count of occupied (live or dead) slots.
struct Filled {
    table: Arc<Table>,
    occupied: usize,
}

impl Filled {
    fn with_entries(entries: usize) -> Self {
        Self {
            table: Arc::new(Table::with_slots(slots_for(entries))),
            occupied: 0,
        }
    }

    /// Files `entry`, rebuilding first (without the dead slots, into a table sized for the live
    /// ones) when this one would pass three quarters full or `max_entries` occupied slots.
    /// `Err` when the live entries would pass `max_entries`.
    fn put(&mut self, entry: Entry, now: u32, max_entries: usize) -> Result<(), Overflow> {
        if self.occupied >= max_entries || (self.occupied + 1) * 4 > self.table.slots() * 3 {
            self.rebuild(now, max_entries)?;
        }
        if self.table.put(entry, now) == Placed::New {
            self.occupied += 1;
        }
        Ok(())
    }

    /// Copies the live entries into a table sized for them (larger or smaller than this one).
    fn rebuild(&mut self, now: u32, max_entries: usize) -> Result<(), Overflow> {
        let live = self.table.live(now).count();
        if live >= max_entries {
            return Err(Overflow);
        }
        let rebuilt = Filled::with_entries(live);
        for entry in self.table.live(now) {
            rebuilt.table.put(entry, now);
        }
        *self = Filled {
            occupied: live,
            ..rebuilt
        };
        Ok(())
    }
}

/// What [`Compact::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Filed {
    /// The table that is on, or the one being built, holds the entry.
    pub(super) held: bool,
    /// The table was on and this insert turned it off (it would have passed `max_entries`).
    pub(super) fell_back: bool,
}

/// The live set passed the configured bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overflow;

struct Writer {
    /// The table readers see, when the mirror is on.
    filled: Option<Filled>,
    /// While a new table is built from a snapshot: every entry filed meanwhile, replayed into it
    /// before it is swapped in.
    pending: Option<Vec<Entry>>,
}

/// The compact live set (see the module documentation). `None` table: no mirror (lookup mode,
/// not loaded yet, or fallen back).
pub(super) struct Compact {
    hasher: foldhash::fast::RandomState,
    table: ArcSwapOption<Table>,
    writer: Mutex<Writer>,
    /// The occupied slots of the table that is on, as the writer last left them.
    held: AtomicUsize,
    max_entries: usize,
}

impl Compact {
    /// An empty set, off until a build finishes; it never holds more than `max_entries` live
    /// entries.
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            hasher: foldhash::fast::RandomState::default(),
            table: ArcSwapOption::empty(),
            writer: Mutex::new(Writer {
                filled: None,
                pending: None,
            }),
            held: AtomicUsize::new(0),
            max_entries,
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding it leaves a table no worse than a writer that stopped early.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the writer's table to readers (and its count to [`len`](Self::len)).
    fn publish(&self, filled: Option<&Filled>) {
        self.held
            .store(filled.map_or(0, |filled| filled.occupied), Ordering::Relaxed);
        self.table.store(filled.map(|filled| Arc::clone(&filled.table)));
    }

    /// The compact form of a revocation of `kind` keyed `key` with `number`.
    pub(super) fn entry(&self, kind: Kind, key: &str, number: u32) -> Entry {
        let hash = self.hasher.hash_one((kind as u8, key));
        Entry {
            word: (kind as u64) << 62 | (hash & HASH_BITS),
            number,
        }
    }

    /// Whether a table is on (the mirror is loaded and complete).
    pub(super) fn active(&self) -> bool {
        self.table.load().is_some()
    }

    /// What the set says of `facts`; `None` when no table is on. Lock-free; reads the clock only
    /// when a token or session key matches.
    pub(super) fn probe(&self, facts: &TokenFacts<'_>) -> Option<Probe> {
        let table = self.table.load();
        let table = table.as_deref()?;
        let keys = [
            (Kind::Token, facts.jti, RevokedBy::Token),
            (Kind::Session, facts.session_id, RevokedBy::Session),
        ];
        for (kind, key, by) in keys {
            let Some(key) = key else { continue };
            if let Some(until) = table.find(self.entry(kind, key, 0).word)
                && until >= now_seconds()
            {
                return Some(Probe::Maybe(by));
            }
        }
        if let Some(subject) = facts.subject
            && let Some(cutoff) = table.find(self.entry(Kind::Subject, subject, 0).word)
            && (cutoff == u32::MAX || subject_cutoff_covers(u64::from(cutoff), facts.issued_at))
        {
            return Some(Probe::Maybe(RevokedBy::Subject));
        }
        Some(Probe::Clear)
    }

    /// Files `entry` in the table that is on and in the one being built. A table that would
    /// pass `max_entries` is dropped (the mirror falls back), with a `warn`. Holds the writer's
    /// lock for the insert, or for a rebuild's copy when the table grows (rare: each rebuild
    /// doubles the room).
    pub(super) fn insert(&self, entry: Entry) -> Filed {
        let mut writer = self.writer();
        let mut fell_back = false;
        let now = now_seconds();
        if let Some(pending) = &mut writer.pending {
            pending.push(entry);
        }
        if let Some(filled) = &mut writer.filled {
            let before = Arc::clone(&filled.table);
            match filled.put(entry, now, self.max_entries) {
                Ok(()) if Arc::ptr_eq(&before, &filled.table) => {
                    self.held.store(filled.occupied, Ordering::Relaxed);
                }
                Ok(()) => self.publish(Some(filled)),
                Err(Overflow) => {
                    tracing::warn!(
                        max_entries = self.max_entries,
                        "live revocations passed mirror_max_entries; the mirror falls back to lookup mode until a snapshot fits"
                    );
                    writer.filled = None;
                    self.publish(None);
                    fell_back = true;
                }
            }
        }
        Filed {
            held: writer.filled.is_some() || writer.pending.is_some(),
            fell_back,
        }
    }

    /// Drops dead slots when they are at least half the table's occupied ones, into a table
    /// sized for what is live (so the set shrinks as tokens expire). Returns whether it rebuilt.
    pub(super) fn sweep(&self) -> bool {
        self.sweep_at(now_seconds())
    }

    fn sweep_at(&self, now: u32) -> bool {
        // Counted without the writer's lock (readers need none): writers wait only if a rebuild
        // is due. Entries filed meanwhile only make the count low, which the rebuild corrects.
        let Some(table) = self.table.load_full() else {
            return false;
        };
        let live = table.live(now).count();
        let mut writer = self.writer();
        let Some(filled) = &mut writer.filled else {
            return false;
        };
        let unchanged = Arc::ptr_eq(&filled.table, &table);
        if !unchanged || filled.occupied <= MIN_SLOTS / 2 || live * 2 > filled.occupied {
            return false;
        }
        // Fewer live entries than before: within max_entries.
        if filled.rebuild(now, usize::MAX).is_ok() {
            self.publish(Some(filled));
        }
        true
    }

    /// Entries held (0 when off): the live ones, and expired ones until a sweep or a rebuild
    /// drops them. No scan: the writer's count.
    pub(super) fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Bytes the table that is on takes (0 when off).
    pub(super) fn bytes(&self) -> usize {
        self.table
            .load()
            .as_deref()
            .map_or(0, |table| table.slots() * SLOT_BYTES)
    }

    /// Starts building a new table from a snapshot: every entry filed from now on is also kept,
    /// to be replayed into the new table. Start it *before* the snapshot is read, so that every
    /// write is in the snapshot or in the replay. Dropping the build without finishing it stops
    /// keeping them.
    pub(super) fn build(&self) -> Build<'_> {
        self.writer().pending = Some(Vec::new());
        Build {
            compact: self,
            // Sized for what the table that is on holds: a refresh rebuilds little on the way.
            filled: Some(Filled::with_entries(self.len())),
            read: 0,
            finished: false,
        }
    }
}

/// A table being built from a snapshot (see [`Compact::build`]).
pub(super) struct Build<'a> {
    compact: &'a Compact,
    /// `None` once the snapshot passed `max_entries`: the rest is only counted.
    filled: Option<Filled>,
    read: u64,
    finished: bool,
}

impl Build<'_> {
    /// Adds one entry of the snapshot; dead ones are skipped.
    pub(super) fn add(&mut self, entry: Entry, now: u32) {
        self.read += 1;
        if !entry.alive(now) {
            return;
        }
        if let Some(filled) = &mut self.filled
            && filled.put(entry, now, self.compact.max_entries).is_err()
        {
            self.filled = None;
        }
    }

    /// Entries read from the snapshot so far.
    pub(super) fn read(&self) -> u64 {
        self.read
    }

    /// Replays the writes kept since the build started and swaps the table in. `Err` (and no
    /// table on: the mirror falls back) when the live set passed `max_entries`.
    #[cfg(test)]
    pub(super) fn finish(self) -> Result<(), Overflow> {
        self.finish_reporting().0
    }

    /// [`finish`](Self::finish), and whether a table was on just before, read under the
    /// writer's lock: a table that went off while the snapshot was read (an insert passed
    /// `max_entries`) was not on, so a build that fits is then a promotion.
    pub(super) fn finish_reporting(mut self) -> (Result<(), Overflow>, bool) {
        self.finished = true;
        let mut writer = self.compact.writer();
        let was_on = writer.filled.is_some();
        let pending = writer.pending.take().unwrap_or_default();
        let now = now_seconds();
        let max_entries = self.compact.max_entries;
        let mut filled = self.filled.take().ok_or(Overflow);
        if let Ok(table) = &mut filled {
            for entry in pending {
                if table.put(entry, now, max_entries).is_err() {
                    filled = Err(Overflow);
                    break;
                }
            }
        }
        writer.filled = filled.ok();
        self.compact.publish(writer.filled.as_ref());
        let fits = if writer.filled.is_some() {
            Ok(())
        } else {
            Err(Overflow)
        };
        (fits, was_on)
    }
}

impl Drop for Build<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.compact.writer().pending = None;
        }
    }
}

#[cfg(test)]
mod tests;
