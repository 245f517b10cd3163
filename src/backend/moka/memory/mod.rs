//! What the cache tier holds, and when memory may answer.
//!
//! Revoked keys (`jti`s, `sid`s) and subject cutoffs are **positives**; keys a ledger lookup
//! found not revoked, and subjects whose cutoff it found current, are **negatives**, one entry
//! per key, so that losing any one entry costs a lookup of that key and nothing else. An
//! **epoch** counts the events after which a negative read from the ledger earlier may be stale
//! (a revocation evicted for size, the first sync of a feed that started "from now"); a lookup
//! stores its negatives only if the epoch did not move while it ran.
//! In mirror mode the live set itself is held in compact form (`compact`), not in these maps:
//! they then keep only what lookups found (a fingerprint confirmed revoked, say).
//!
//! Sessions and cutoffs keyed by issuer (see [`TokenFacts::issuer`]) have maps of their own,
//! keyed by issuer and key joined ([`with_issuer_key`]). A token with an issuer is answered
//! from the unkeyed positives, the keyed ones under its issuer, and negatives of its own view
//! ("no revocation of this `sid` without an issuer or under this one"). A token without an issuer
//! must see revocations under any issuer: its negatives say "none without an issuer and none
//! under any", a keyed revocation clears them, and it reads positives kept by key alone ("revoked
//! under some issuer", the latest cutoff under any), once one has ever been stored (a layer that
//! does not key by issuer reading a ledger that does: rare, and then too much, never too little).
//! The mirror files a keyed revocation under its key alone: a hit is confirmed with the ledger,
//! which tells the issuers apart.
//! This module does not decide whether the feed is in sync (see `sync`), and does not talk to the
//! ledger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use std::sync::{PoisonError, RwLock};

use moka::sync::Cache;

use super::compact::{self, Compact, Kind, Probe};
use super::positives::{Dependents, Gate, Map, Positives, Shared};
use crate::backend::{
    LiveRevocation, Lookup, RevocationKind, RevocationRecord, RevokedBy, TokenFacts, Verdict,
    from_unix_seconds, subject_cutoff_covers, unix_seconds,
};
use crate::telemetry::{self, Count};

mod entries;

use entries::{Negatives, Revoked, RevokedExpiry, issuer_key, put_cutoff, put_revoked, with_issuer_key};

/// Which answers from memory may be trusted at the moment of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Trust {
    /// Negative entries (keys a lookup found not revoked).
    pub(super) negatives: bool,
    /// The mirror's completeness: a key it does not hold is not revoked.
    pub(super) mirror: bool,
    /// A key the mirror may hold is confirmed with the ledger (`false` once the ledger failed to
    /// answer: then it is revoked, the safe side of a possible collision).
    pub(super) confirm: bool,
}

/// The maps of the tier and the rules for reading and writing them.
pub(super) struct Memory {
    revoked_tokens: Positives<Revoked, ()>,
    revoked_sessions: Positives<Revoked, ()>,
    /// Subject cutoffs, Unix seconds. A cutoff that covers a token is a positive answer; one that
    /// does not answers "not revoked" only with a current marker in `negatives.subjects`.
    cutoffs: Positives<u64, ()>,
    /// Sessions revoked under one issuer, by issuer and `sid`.
    issuer_sessions: Positives<Revoked, ()>,
    /// Cutoffs under one issuer, by issuer and subject.
    issuer_cutoffs: Positives<u64, ()>,
    /// For tokens without an issuer: sessions revoked under some issuer, by `sid`.
    any_sessions: Positives<Revoked, ()>,
    /// For tokens without an issuer: the latest cutoff under any issuer, by subject.
    any_cutoffs: Positives<u64, ()>,
    /// Whether `any_sessions` or `any_cutoffs` was ever written: until then tokens without an
    /// issuer skip them (most deployments never key by issuer).
    keyed_seen: AtomicBool,
    /// Revocations filed so far (from the feed, a snapshot's replay, a write through the tier):
    /// the generation of single flight (see `flight`).
    filed: AtomicU64,
    negatives: Negatives,
    /// The mirror's live set, when mirroring.
    compact: Compact,
    shared: Arc<Shared>,
    /// Shared by a lookup storing its answer, exclusive for an eviction (see `positives`).
    gate: Gate,
    grace: Duration,
}

impl Memory {
    /// Empty maps of at most about `max_capacity` entries each; negatives live at most
    /// `negative_ttl`; a revocation is kept `grace` past its token's expiry; a mirror holds at
    /// most `mirror_max_entries` live revocations.
    pub(super) fn new(
        max_capacity: u64,
        negative_ttl: Duration,
        grace: Duration,
        mirror_max_entries: usize,
    ) -> Self {
        let negative = || {
            Cache::builder()
                .max_capacity(max_capacity)
                .time_to_live(negative_ttl)
                .build_with_hasher(foldhash::fast::RandomState::default())
        };
        let negatives = Negatives {
            tokens: negative(),
            sessions: negative(),
            subjects: negative(),
            issuer_sessions: negative(),
            issuer_subjects: negative(),
        };
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            evicting: AtomicU64::new(0),
            evicted: Count::new(telemetry::CACHE_EVICTIONS, &[]),
        });
        let gate: Gate = Arc::new(RwLock::new(()));
        let depending = |own: &Map<String, ()>, views: Option<&Map<String, ()>>| Dependents {
            own: own.clone(),
            views: views.cloned(),
        };
        // No moka capacity on positives (see `positives`): they bound themselves.
        let revoked = |dependents| {
            let builder = Cache::builder().expire_after(RevokedExpiry);
            Positives::new(builder, max_capacity, dependents, &shared, &gate)
        };
        let cutoffs = |dependents| Positives::new(Cache::builder(), max_capacity, dependents, &shared, &gate);
        // An unkeyed positive lost stands for every issuer: the keyed views' negatives of its key
        // may predate it (an unkeyed revocation clears no keyed negative), so all of them go.
        Self {
            revoked_tokens: revoked(depending(&negatives.tokens, None)),
            revoked_sessions: revoked(depending(&negatives.sessions, Some(&negatives.issuer_sessions))),
            cutoffs: cutoffs(depending(&negatives.subjects, Some(&negatives.issuer_subjects))),
            issuer_sessions: revoked(depending(&negatives.issuer_sessions, None)),
            issuer_cutoffs: cutoffs(depending(&negatives.issuer_subjects, None)),
            any_sessions: revoked(depending(&negatives.sessions, None)),
            any_cutoffs: cutoffs(depending(&negatives.subjects, None)),
            keyed_seen: AtomicBool::new(false),
            filed: AtomicU64::new(0),
            negatives,
            compact: Compact::new(mirror_max_entries),
            shared,
            gate,
            grace,
        }
    }

    /// The answer memory can give under `trust`: revoked entries always; for a token one of
    /// whose keys the mirror holds, nothing (the ledger confirms) or, if the ledger just failed,
    /// "revoked"; when the mirror is trusted, "not revoked" for a token none of whose keys it
    /// holds; otherwise "not
    /// revoked" when negatives are trusted and every key the token has is known not to be
    /// revoked. Positives are read with `contains_key`, which records no read (most keys are not
    /// revoked), and before negatives, so a positive that arrived while a lookup was storing a
    /// negative for the same key always wins. Reads no clock unless the mirror holds a key.
    pub(super) fn answer(&self, facts: &TokenFacts<'_>, trust: Trust) -> Option<Verdict> {
        let negatives = &self.negatives;
        // Read before anything else: an eviction that overlaps this check forbids "not revoked"
        // from negatives (see `Shared::evicting`).
        let evicting = self.shared.evicting.load(Ordering::SeqCst);
        let negative = |plain: &Map<String, ()>, keyed: &Map<String, ()>, key: &str| match facts.issuer {
            Some(issuer) => with_issuer_key(issuer, key, |key| keyed.contains_key(key)),
            None => plain.contains_key(key),
        };
        let subject_marker = || {
            facts
                .subject
                .is_none_or(|sub| negative(&negatives.subjects, &negatives.issuer_subjects, sub))
        };
        // A lookup stores a subject's cutoffs before its marker: read the marker *before* the
        // cutoffs, and a marker seen has its cutoffs visible below (read after, a lookup storing
        // both in between would pass a covered token). Only where the marker may be used: not
        // while the mirror answers. (Other negatives are stored only for keys found not revoked,
        // so they cannot race their own positive like this.)
        let early_marker = (trust.negatives && !self.compact.active()).then(subject_marker);
        if facts.jti.is_some_and(|jti| self.revoked_tokens.contains_key(jti)) {
            return Some(Verdict::Revoked(RevokedBy::Token));
        }
        // For a token without an issuer, what some issuer revoked; read once anything was kept
        // there (the flag is set before the entry is stored).
        let any = facts.issuer.is_none() && self.keyed_seen.load(Ordering::SeqCst);
        if facts.session_id.is_some_and(|sid| {
            self.revoked_sessions.contains_key(sid)
                || match facts.issuer {
                    Some(issuer) => {
                        with_issuer_key(issuer, sid, |key| self.issuer_sessions.contains_key(key))
                    }
                    None => any && self.any_sessions.contains_key(sid),
                }
        }) {
            return Some(Verdict::Revoked(RevokedBy::Session));
        }
        let covers = |cutoffs: &Positives<u64, ()>, key: &str| {
            cutoffs.contains_key(key)
                && cutoffs
                    .get(key)
                    .is_some_and(|cutoff| subject_cutoff_covers(cutoff, facts.issued_at))
        };
        let subject_covered = || {
            facts.subject.is_some_and(|sub| {
                let any = facts.issuer.is_none() && self.keyed_seen.load(Ordering::SeqCst);
                covers(&self.cutoffs, sub)
                    || match facts.issuer {
                        Some(issuer) => with_issuer_key(issuer, sub, |key| covers(&self.issuer_cutoffs, key)),
                        None => any && covers(&self.any_cutoffs, sub),
                    }
            })
        };
        if subject_covered() {
            return Some(Verdict::Revoked(RevokedBy::Subject));
        }
        // A key the mirror holds is a revocation it was told of (or a collision): like a
        // positive, it is never stale, so it answers "revoked" whenever the ledger cannot confirm.
        match self.compact.probe(facts) {
            Some(Probe::Maybe(by)) => return (!trust.confirm).then_some(Verdict::Revoked(by)),
            Some(Probe::Clear) if trust.mirror => return Some(Verdict::Active),
            // No table (fell back since the trust was read), or not trusted now: as if not
            // mirroring.
            _ => {}
        }
        if !trust.negatives {
            return None;
        }
        let subject_clear = match early_marker {
            Some(marker) => marker,
            // The mirror went off since: the marker read now, then the cutoffs again.
            None => {
                let marker = subject_marker();
                if marker && subject_covered() {
                    return Some(Verdict::Revoked(RevokedBy::Subject));
                }
                marker
            }
        };
        let clear = subject_clear
            && facts.jti.is_none_or(|jti| negatives.tokens.contains_key(jti))
            && facts
                .session_id
                .is_none_or(|sid| negative(&negatives.sessions, &negatives.issuer_sessions, sid));
        // The reads above complete before the sequence is read again (a seqlock reader's fence:
        // an acquire load alone would let them be performed after it).
        std::sync::atomic::fence(Ordering::Acquire);
        let undisturbed =
            evicting.is_multiple_of(2) && self.shared.evicting.load(Ordering::SeqCst) == evicting;
        (clear && undisturbed).then_some(Verdict::Active)
    }

    /// Applies one ledger record (from the feed, a snapshot, or a write through this tier): the
    /// positive first, then the negative of the same key goes.
    pub(super) fn apply(&self, record: &RevocationRecord) {
        let issuer = record.issuer.as_deref();
        match record.kind {
            RevocationKind::Token => self.revoked_token(&record.key, record.expires_at),
            RevocationKind::Session => self.revoked_session(issuer, &record.key, record.expires_at),
            RevocationKind::Subject => {
                if let Some(not_before) = record.not_before {
                    self.cutoff(issuer, &record.key, unix_seconds(not_before));
                }
            }
        }
    }

    /// A revoked `jti` whose token expires at `expires_at` (`None`: never): into the mirror
    /// when there is one, else (or while it loads) into the positives.
    pub(super) fn revoked_token(&self, jti: &str, expires_at: Option<SystemTime>) {
        if self.file_in_mirror(Kind::Token, jti, self.mirror_until(expires_at)) {
            put_revoked(&self.revoked_tokens, jti, self.keep_until(expires_at), None);
        }
        self.negatives.tokens.invalidate(jti);
        self.count_filed();
    }

    /// A revoked `sid` (under `issuer`, or of every issuer) whose last token expires at
    /// `expires_at` (`None`: never), as [`revoked_token`](Self::revoked_token). One under an
    /// issuer is also kept by `sid` alone, for tokens without an issuer.
    pub(super) fn revoked_session(&self, issuer: Option<&str>, sid: &str, expires_at: Option<SystemTime>) {
        if self.file_in_mirror(Kind::Session, sid, self.mirror_until(expires_at)) {
            let until = self.keep_until(expires_at);
            match issuer {
                None => put_revoked(&self.revoked_sessions, sid, until, None),
                Some(issuer) => {
                    put_revoked(&self.issuer_sessions, &issuer_key(issuer, sid), until, None);
                    self.keyed_seen.store(true, Ordering::SeqCst);
                    put_revoked(&self.any_sessions, sid, until, None);
                }
            }
        }
        self.negatives.sessions.invalidate(sid);
        if let Some(issuer) = issuer {
            self.negatives
                .issuer_sessions
                .invalidate(&issuer_key(issuer, sid));
        }
        self.count_filed();
    }

    /// Files a revocation in the mirror (and in the mirror being loaded). Returns whether the
    /// positives must hold it too: no mirror is on to answer for it.
    fn file_in_mirror(&self, kind: Kind, key: &str, number: u32) -> bool {
        let filed = self.compact.insert(self.compact.entry(kind, key, number));
        if filed.fell_back {
            self.mirror_fell_back();
        }
        !filed.held || !self.compact.active()
    }

    /// Swaps in the table a snapshot built, and settles what memory holds around it: a fall-back
    /// (the table was on and the snapshot does not fit) forgets negatives; so does a promotion
    /// (a table that fits where none was on), since negatives stored in lookup mode are not read
    /// while mirroring and would outlive revocations the mirror alone holds (one filed only in
    /// the table clears the negatives of its own key, not those of every issuer's view), to be
    /// read again the moment the mirror falls back. Whether a table was on is read under the
    /// writer's lock as the build finishes: read before, an insert that overflowed in between
    /// would make a promotion look like a refresh, and keep the negatives of lookup mode.
    pub(super) fn finish_load(&self, build: compact::Build<'_>) -> Result<(), compact::Overflow> {
        let (fits, was_on) = build.finish_reporting();
        match (&fits, was_on) {
            (Err(_), true) => self.mirror_fell_back(),
            (Ok(()), false) => self.forget_negatives(),
            _ => {}
        }
        fits
    }

    /// After the mirror's table went off: negatives stored before (or while) it was on may
    /// predate revocations that only the table held (a cutoff filed in it clears no marker), so
    /// none survives, and no lookup in flight stores one.
    pub(super) fn mirror_fell_back(&self) {
        self.forget_negatives();
    }

    /// Moves a subject's cutoff (under `issuer`, or for every issuer) forward (never back); one
    /// under an issuer also moves the subject's latest cutoff under any issuer. A current marker
    /// for the subject stays current: the feed delivers every later cutoff, and cutoffs only move
    /// forward.
    pub(super) fn cutoff(&self, issuer: Option<&str>, subject: &str, cutoff: u64) {
        let positive = self.file_in_mirror(Kind::Subject, subject, compact::seconds(cutoff));
        match (positive, issuer) {
            (true, None) => put_cutoff(&self.cutoffs, subject, cutoff, None),
            (true, Some(issuer)) => {
                put_cutoff(&self.issuer_cutoffs, &issuer_key(issuer, subject), cutoff, None);
                self.keyed_seen.store(true, Ordering::SeqCst);
                put_cutoff(&self.any_cutoffs, subject, cutoff, None);
            }
            // The positives do not know it: a marker saying they are current would lie.
            (false, None) => self.negatives.subjects.invalidate(subject),
            (false, Some(issuer)) => {
                self.negatives.subjects.invalidate(subject);
                self.negatives
                    .issuer_subjects
                    .invalidate(&issuer_key(issuer, subject));
            }
        }
        self.count_filed();
    }

    /// Remembers what a lookup found for `facts`: each revoked key, kept until the token's
    /// expiry plus the grace, and the subject's cutoff, always; and (`negatives`) each key found
    /// not revoked, but only if the epoch is still `started`, the epoch read before the lookup
    /// was sent. A negative that raced an epoch change is removed again, so at worst it was
    /// visible for the instant between the two reads.
    ///
    /// For facts with an issuer, what was found under that issuer is kept under it, and the
    /// negatives are those of its view. For facts without, what was found under some issuer is
    /// kept by key alone, for tokens without an issuer.
    pub(super) fn remember(&self, facts: &TokenFacts<'_>, lookup: &Lookup, started: u64, negatives: bool) {
        let until = || self.keep_until(facts.expires_at.map(from_unix_seconds));
        // Room first: an eviction waits for the gate, held here from the first positive stored
        // to the last negative, so it never removes a cutoff stored here from under the marker
        // stored with it.
        self.make_room();
        let gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let gate = Some(&gate);
        if let (true, Some(jti)) = (lookup.token_revoked, facts.jti) {
            put_revoked(&self.revoked_tokens, jti, until(), gate);
        }
        if let (true, Some(sid)) = (lookup.session_revoked, facts.session_id) {
            put_revoked(&self.revoked_sessions, sid, until(), gate);
        }
        if let (Some(cutoff), Some(sub)) = (lookup.subject_cutoff, facts.subject) {
            put_cutoff(&self.cutoffs, sub, cutoff, gate);
        }
        if let (true, Some(sid)) = (lookup.issuer_session_revoked, facts.session_id) {
            match facts.issuer {
                Some(issuer) => put_revoked(&self.issuer_sessions, &issuer_key(issuer, sid), until(), gate),
                None => {
                    self.keyed_seen.store(true, Ordering::SeqCst);
                    put_revoked(&self.any_sessions, sid, until(), gate);
                }
            }
        }
        if let (Some(cutoff), Some(sub)) = (lookup.issuer_subject_cutoff, facts.subject) {
            match facts.issuer {
                Some(issuer) => put_cutoff(&self.issuer_cutoffs, &issuer_key(issuer, sub), cutoff, gate),
                None => {
                    self.keyed_seen.store(true, Ordering::SeqCst);
                    put_cutoff(&self.any_cutoffs, sub, cutoff, gate);
                }
            }
        }
        if !negatives || self.epoch() != started {
            return;
        }
        let clear_jti = facts.jti.filter(|_| !lookup.token_revoked);
        let clear_sid = facts
            .session_id
            .filter(|_| !lookup.session_revoked && !lookup.issuer_session_revoked);
        // The subject's cutoffs (or their absence) were just stored above: mark them current.
        let clear_sub = facts.subject;
        let keys = [
            (&self.negatives.tokens, clear_jti, None),
            (
                &self.negatives.sessions,
                clear_sid,
                Some(&self.negatives.issuer_sessions),
            ),
            (
                &self.negatives.subjects,
                clear_sub,
                Some(&self.negatives.issuer_subjects),
            ),
        ]
        .map(|(plain, key, keyed)| match (key, facts.issuer, keyed) {
            (Some(key), Some(issuer), Some(keyed)) => Some((keyed, issuer_key(issuer, key))),
            (Some(key), _, _) => Some((plain, key.to_owned())),
            (None, _, _) => None,
        });
        for (map, key) in keys.iter().flatten() {
            map.insert(key.clone(), ());
        }
        if self.epoch() != started {
            for (map, key) in keys.iter().flatten() {
                map.invalidate(key);
            }
        }
    }

    /// Makes room in every positives map (see `positives`), before the gate is taken.
    fn make_room(&self) {
        self.revoked_tokens.make_room();
        self.revoked_sessions.make_room();
        self.cutoffs.make_room();
        self.issuer_sessions.make_room();
        self.issuer_cutoffs.make_room();
        self.any_sessions.make_room();
        self.any_cutoffs.make_room();
    }

    /// How many revocations were filed so far: a lookup that started at a lower count may have
    /// read the ledger before the latest of them.
    pub(super) fn filed(&self) -> u64 {
        self.filed.load(Ordering::SeqCst)
    }

    /// Counts a revocation filed (after it is visible to checks).
    fn count_filed(&self) {
        self.filed.fetch_add(1, Ordering::SeqCst);
    }

    /// The current epoch: read it before sending a lookup, pass it to [`remember`](Self::remember).
    pub(super) fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }

    /// Drops every negative and moves the epoch, so that no lookup in flight stores one either:
    /// for the moments after which a negative read earlier may miss a revocation the feed will
    /// never deliver (the feed's first sync from "now", a restart without a known position).
    pub(super) fn forget_negatives(&self) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.negatives.invalidate_all();
    }

    /// Whether the mirror is loaded and complete.
    pub(super) fn mirroring(&self) -> bool {
        self.compact.active()
    }

    /// The mirror's live set.
    pub(super) fn compact(&self) -> &Compact {
        &self.compact
    }

    /// The compact form of a snapshot's record.
    pub(super) fn compact_entry(&self, record: &LiveRevocation) -> compact::Entry {
        let (kind, number) = match record.kind {
            RevocationKind::Token => (Kind::Token, self.mirror_until(record.expires_at)),
            RevocationKind::Session => (Kind::Session, self.mirror_until(record.expires_at)),
            RevocationKind::Subject => (
                Kind::Subject,
                // A cutoff row always has one; without, cover every token (the safe side).
                record
                    .not_before
                    .map_or(u32::MAX, |not_before| compact::seconds(unix_seconds(not_before))),
            ),
        };
        self.compact.entry(kind, &record.key, number)
    }

    /// Positives evicted for size so far.
    pub(super) fn evicted(&self) -> u64 {
        self.shared.evicted.get()
    }

    /// Entries held in all maps (approximate, as moka counts them).
    pub(super) fn entry_count(&self) -> u64 {
        self.revoked_tokens.entry_count()
            + self.revoked_sessions.entry_count()
            + self.cutoffs.entry_count()
            + self.issuer_sessions.entry_count()
            + self.issuer_cutoffs.entry_count()
            + self.any_sessions.entry_count()
            + self.any_cutoffs.entry_count()
            + self.negatives.entry_count()
    }

    /// [`keep_until`](Self::keep_until) for the mirror: the Unix second until which the
    /// revocation is kept, `u32::MAX` for never.
    fn mirror_until(&self, expires_at: Option<SystemTime>) -> u32 {
        let Some(expires_at) = expires_at else {
            return u32::MAX;
        };
        let from = unix_seconds(expires_at.max(SystemTime::now()));
        compact::seconds(from.saturating_add(self.grace.as_secs()))
    }

    /// How long a revocation of a token (or session) expiring at `expires_at` is kept: until
    /// that expiry plus the grace, and at least the grace from now, so a row whose expiry is
    /// already past (written by hand as `'-infinity'`, say) is still enforced for a while.
    /// `None` keeps it until evicted: no expiry, or one beyond what `Instant` represents
    /// (`'infinity'`, an `exp` near `u64::MAX`).
    fn keep_until(&self, expires_at: Option<SystemTime>) -> Option<Instant> {
        let left = expires_at?
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .checked_add(self.grace)?;
        Instant::now().checked_add(left)
    }
}

#[cfg(test)]
mod tests;
