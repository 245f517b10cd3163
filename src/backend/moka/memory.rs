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

use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::compact::{self, Compact, Kind, Probe};
use crate::backend::{
    LiveRevocation, Lookup, RevocationKind, RevocationRecord, RevokedBy, TokenFacts, Verdict,
    from_unix_seconds, subject_cutoff_covers, unix_seconds,
};
use crate::telemetry::{self, Count};

/// moka caches hashed with foldhash (randomly seeded per cache): keys come from verified tokens,
/// and SipHash cost a third of a warm check here.
type Map<K, V> = Cache<K, V, foldhash::fast::RandomState>;

/// A revoked token or session, kept until `until` (moka drops the entry then); `None` keeps it
/// until it is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revoked {
    until: Option<Instant>,
}

impl Revoked {
    /// Whether this entry lasts at least as long as one kept `until`.
    fn outlasts(&self, until: Option<Instant>) -> bool {
        match (self.until, until) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => mine >= theirs,
        }
    }
}

struct RevokedExpiry;

impl moka::Expiry<String, Revoked> for RevokedExpiry {
    fn expire_after_create(&self, _: &String, value: &Revoked, created_at: Instant) -> Option<Duration> {
        value
            .until
            .map(|until| until.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &String,
        value: &Revoked,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        value
            .until
            .map(|until| until.saturating_duration_since(updated_at))
    }
}

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

/// The negatives, one map per key space. Cloned into the positives' eviction listeners.
#[derive(Clone)]
struct Negatives {
    /// `jti`s a lookup found not revoked.
    tokens: Map<String, ()>,
    /// `sid`s a lookup found not revoked, neither for every issuer nor under any one.
    sessions: Map<String, ()>,
    /// Subjects whose entries in `cutoffs` and `any_cutoffs` (or their absence) a lookup found
    /// current. A cutoff alone proves only that the subject's cutoff is *at least* that; whether
    /// a later one exists is as stale as this marker.
    subjects: Map<String, ()>,
    /// For tokens with an issuer, by issuer and `sid`: neither the `sid` nor the `sid` under
    /// that issuer is revoked. (`sessions` then says: nor under any issuer.)
    issuer_sessions: Map<String, ()>,
    /// For tokens with an issuer, by issuer and subject: the subject's entries in `cutoffs`
    /// and in `issuer_cutoffs` under that issuer are current.
    issuer_subjects: Map<String, ()>,
}

impl Negatives {
    fn entry_count(&self) -> u64 {
        self.tokens.entry_count()
            + self.sessions.entry_count()
            + self.subjects.entry_count()
            + self.issuer_sessions.entry_count()
            + self.issuer_subjects.entry_count()
    }

    fn invalidate_all(&self) {
        self.tokens.invalidate_all();
        self.sessions.invalidate_all();
        self.subjects.invalidate_all();
        self.issuer_sessions.invalidate_all();
        self.issuer_subjects.invalidate_all();
    }
}

/// State the eviction listeners share with the tier.
struct Shared {
    epoch: AtomicU64,
    /// Positives evicted for size (or refused admission).
    evicted: Count,
}

/// The maps of the tier and the rules for reading and writing them.
pub(super) struct Memory {
    revoked_tokens: Map<String, Revoked>,
    revoked_sessions: Map<String, Revoked>,
    /// Subject cutoffs, Unix seconds. A cutoff that covers a token is a positive answer; one that
    /// does not answers "not revoked" only with a current marker in `negatives.subjects`.
    cutoffs: Map<String, u64>,
    /// Sessions revoked under one issuer, by issuer and `sid`.
    issuer_sessions: Map<String, Revoked>,
    /// Cutoffs under one issuer, by issuer and subject.
    issuer_cutoffs: Map<String, u64>,
    /// For tokens without an issuer: sessions revoked under some issuer, by `sid`.
    any_sessions: Map<String, Revoked>,
    /// For tokens without an issuer: the latest cutoff under any issuer, by subject.
    any_cutoffs: Map<String, u64>,
    /// Whether `any_sessions` or `any_cutoffs` was ever written: until then tokens without an
    /// issuer skip them (most deployments never key by issuer).
    keyed_seen: AtomicBool,
    negatives: Negatives,
    /// The mirror's live set, when mirroring.
    compact: Compact,
    shared: Arc<Shared>,
    grace: Duration,
}

impl Memory {
    /// Empty maps of at most `max_capacity` entries each; negatives live at most
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
            evicted: Count::new(telemetry::CACHE_EVICTIONS, &[]),
        });
        // An unkeyed positive lost stands for every issuer: the keyed views' negatives of its key
        // may predate it (an unkeyed revocation clears no keyed negative), so all of them go.
        let revoked = |negative: &Map<String, ()>, views: Option<&Map<String, ()>>| {
            let listener = evicted_for_size(Arc::clone(&shared), negative.clone(), views.cloned());
            Cache::builder()
                .max_capacity(max_capacity)
                .expire_after(RevokedExpiry)
                .eviction_listener(move |key, _, cause| listener(&key, cause))
                .build_with_hasher(foldhash::fast::RandomState::default())
        };
        let cutoffs = |marker: &Map<String, ()>, views: Option<&Map<String, ()>>| {
            let listener = evicted_for_size(Arc::clone(&shared), marker.clone(), views.cloned());
            Cache::builder()
                .max_capacity(max_capacity)
                .eviction_listener(move |key, _, cause| listener(&key, cause))
                .build_with_hasher(foldhash::fast::RandomState::default())
        };
        Self {
            revoked_tokens: revoked(&negatives.tokens, None),
            revoked_sessions: revoked(&negatives.sessions, Some(&negatives.issuer_sessions)),
            cutoffs: cutoffs(&negatives.subjects, Some(&negatives.issuer_subjects)),
            issuer_sessions: revoked(&negatives.issuer_sessions, None),
            issuer_cutoffs: cutoffs(&negatives.issuer_subjects, None),
            any_sessions: revoked(&negatives.sessions, None),
            any_cutoffs: cutoffs(&negatives.subjects, None),
            keyed_seen: AtomicBool::new(false),
            negatives,
            compact: Compact::new(mirror_max_entries),
            shared,
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
        let covers = |cutoffs: &Map<String, u64>, key: &str| {
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
        clear.then_some(Verdict::Active)
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
            put_revoked(&self.revoked_tokens, jti, self.keep_until(expires_at));
        }
        self.negatives.tokens.invalidate(jti);
    }

    /// A revoked `sid` (under `issuer`, or of every issuer) whose last token expires at
    /// `expires_at` (`None`: never), as [`revoked_token`](Self::revoked_token). One under an
    /// issuer is also kept by `sid` alone, for tokens without an issuer.
    pub(super) fn revoked_session(&self, issuer: Option<&str>, sid: &str, expires_at: Option<SystemTime>) {
        if self.file_in_mirror(Kind::Session, sid, self.mirror_until(expires_at)) {
            let until = self.keep_until(expires_at);
            match issuer {
                None => put_revoked(&self.revoked_sessions, sid, until),
                Some(issuer) => {
                    put_revoked(&self.issuer_sessions, &issuer_key(issuer, sid), until);
                    self.keyed_seen.store(true, Ordering::SeqCst);
                    put_revoked(&self.any_sessions, sid, until);
                }
            }
        }
        self.negatives.sessions.invalidate(sid);
        if let Some(issuer) = issuer {
            self.negatives
                .issuer_sessions
                .invalidate(&issuer_key(issuer, sid));
        }
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
            (true, None) => put_cutoff(&self.cutoffs, subject, cutoff),
            (true, Some(issuer)) => {
                put_cutoff(&self.issuer_cutoffs, &issuer_key(issuer, subject), cutoff);
                self.keyed_seen.store(true, Ordering::SeqCst);
                put_cutoff(&self.any_cutoffs, subject, cutoff);
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
        if let (true, Some(jti)) = (lookup.token_revoked, facts.jti) {
            put_revoked(&self.revoked_tokens, jti, until());
        }
        if let (true, Some(sid)) = (lookup.session_revoked, facts.session_id) {
            put_revoked(&self.revoked_sessions, sid, until());
        }
        if let (Some(cutoff), Some(sub)) = (lookup.subject_cutoff, facts.subject) {
            put_cutoff(&self.cutoffs, sub, cutoff);
        }
        if let (true, Some(sid)) = (lookup.issuer_session_revoked, facts.session_id) {
            match facts.issuer {
                Some(issuer) => put_revoked(&self.issuer_sessions, &issuer_key(issuer, sid), until()),
                None => {
                    self.keyed_seen.store(true, Ordering::SeqCst);
                    put_revoked(&self.any_sessions, sid, until());
                }
            }
        }
        if let (Some(cutoff), Some(sub)) = (lookup.issuer_subject_cutoff, facts.subject) {
            match facts.issuer {
                Some(issuer) => put_cutoff(&self.issuer_cutoffs, &issuer_key(issuer, sub), cutoff),
                None => {
                    self.keyed_seen.store(true, Ordering::SeqCst);
                    put_cutoff(&self.any_cutoffs, sub, cutoff);
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

/// Stores a revocation, keeping the longer of its `until` and one already held: a lookup that
/// finishes after the feed delivered the same revocation never shortens it.
fn put_revoked(map: &Map<String, Revoked>, key: &str, until: Option<Instant>) {
    map.entry_by_ref(key).and_compute_with(|existing| match existing {
        Some(current) if current.value().outlasts(until) => Op::Nop,
        _ => Op::Put(Revoked { until }),
    });
}

/// The key a session or subject revocation keyed by `issuer` is held under in memory:
/// `issuer`, a NUL, then `key`. One string, so maps keyed by `String` are asked without
/// allocating; never equal for two different pairs, since an issuer never holds a NUL
/// ([`Revocation::issuer`](crate::Revocation::issuer) refuses one, and Postgres text cannot hold one).
fn with_issuer_key<R>(issuer: &str, key: &str, f: impl FnOnce(&str) -> R) -> R {
    const STACK: usize = 256;
    let len = issuer.len() + 1 + key.len();
    if len <= STACK {
        let mut buffer = [0u8; STACK];
        buffer[..issuer.len()].copy_from_slice(issuer.as_bytes());
        buffer[issuer.len() + 1..len].copy_from_slice(key.as_bytes());
        // Two strings joined by an ASCII byte are UTF-8; the fallback is never taken.
        if let Ok(joined) = std::str::from_utf8(&buffer[..len]) {
            return f(joined);
        }
    }
    f(&issuer_key(issuer, key))
}

/// [`with_issuer_key`]'s key, owned.
fn issuer_key(issuer: &str, key: &str) -> String {
    let mut joined = String::with_capacity(issuer.len() + 1 + key.len());
    joined.push_str(issuer);
    joined.push('\0');
    joined.push_str(key);
    joined
}

/// Moves a cutoff forward (never back).
fn put_cutoff(map: &Map<String, u64>, key: &str, cutoff: u64) {
    map.entry_by_ref(key).and_compute_with(|existing| match existing {
        Some(current) if *current.value() >= cutoff => Op::Nop,
        _ => Op::Put(cutoff),
    });
}

/// The eviction listener of a positives map: an entry lost to capacity pressure (evicted, or
/// refused admission) costs the negative of its own key, which may predate the revocation, and
/// moves the epoch so no lookup in flight stores it again; for an unkeyed positive, every
/// negative of the keyed views (`views`) goes too, since it may be one of them that predates
/// the revocation. (A mirror's live set is not in these maps: losing a positive never makes it
/// incomplete.)
fn evicted_for_size(
    shared: Arc<Shared>,
    negatives: Map<String, ()>,
    views: Option<Map<String, ()>>,
) -> impl Fn(&String, RemovalCause) {
    move |key, cause| {
        if cause != RemovalCause::Size {
            return;
        }
        shared.evicted.bump();
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        negatives.invalidate(key);
        if let Some(views) = &views {
            views.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::far_future;

    fn trust() -> Trust {
        Trust {
            negatives: true,
            mirror: true,
            confirm: true,
        }
    }

    /// Found in review: a subject looked up in lookup mode (a current "no cutoff" marker), then
    /// a mirror promoted, a cutoff filed in its table only, and the mirror fallen back: the
    /// stale marker answered the covered token "not revoked". Now a cutoff filed in the mirror
    /// clears the marker, and a fall-back forgets every negative.
    #[test]
    fn a_mirror_that_falls_back_leaves_no_stale_negative() {
        let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 3);
        let now = unix_seconds(SystemTime::now());
        let facts = TokenFacts {
            jti: Some("t"),
            session_id: None,
            subject: Some("s"),
            issued_at: Some(now - 10),
            expires_at: Some(now + 600),
            issuer: None,
        };
        memory.remember(&facts, &Lookup::default(), memory.epoch(), true);
        assert_eq!(memory.answer(&facts, trust()), Some(Verdict::Active));
        memory.compact().build().finish().unwrap();
        assert!(memory.mirroring());
        memory.cutoff(None, "s", now);
        // Past mirror_max_entries (3): the table goes off.
        for jti in ["a", "b", "c", "d"] {
            memory.revoked_token(jti, Some(far_future()));
        }
        assert!(!memory.mirroring());
        assert_ne!(memory.answer(&facts, trust()), Some(Verdict::Active));
        // The revocations filed after the fall-back are positives.
        let d = TokenFacts {
            jti: Some("d"),
            ..facts
        };
        assert_eq!(
            memory.answer(&d, trust()),
            Some(Verdict::Revoked(RevokedBy::Token))
        );
    }

    /// Issue 24, item 7. moka runs an eviction listener after the entry is gone; what memory
    /// answers in between is what it answers with the positive removed and the listener not yet
    /// run (an explicit `invalidate`, which the listeners ignore, leaves exactly that state).
    /// Failed on `main`: an issuer view's "not revoked" that an unkeyed session revocation
    /// overrode, and a subject's marker beside an evicted cutoff, answered a revoked token
    /// "not revoked".
    #[test]
    fn a_positive_gone_before_its_eviction_listener_ran_exposes_no_negative() {
        let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 1000);
        let now = unix_seconds(SystemTime::now());
        let of_a = TokenFacts {
            jti: Some("t"),
            session_id: Some("s"),
            subject: Some("u"),
            issued_at: Some(now - 10),
            expires_at: Some(now + 600),
            issuer: Some("A"),
        };
        let plain = TokenFacts { issuer: None, ..of_a };
        for facts in [&of_a, &plain] {
            memory.remember(facts, &Lookup::default(), memory.epoch(), true);
            assert_eq!(memory.answer(facts, trust()), Some(Verdict::Active));
        }
        memory.revoked_session(None, "s", Some(far_future()));
        assert_eq!(
            memory.answer(&of_a, trust()),
            Some(Verdict::Revoked(RevokedBy::Session))
        );
        memory.revoked_sessions.invalidate("s");
        assert_ne!(
            memory.answer(&of_a, trust()),
            Some(Verdict::Active),
            "session, issuer view"
        );
        assert_ne!(memory.answer(&plain, trust()), Some(Verdict::Active), "session");

        let no_sid = |facts: TokenFacts<'static>| TokenFacts {
            session_id: None,
            ..facts
        };
        let (of_a, plain) = (no_sid(of_a), no_sid(plain));
        memory.cutoff(None, "u", now);
        for facts in [&of_a, &plain] {
            assert_eq!(
                memory.answer(facts, trust()),
                Some(Verdict::Revoked(RevokedBy::Subject))
            );
        }
        memory.cutoffs.invalidate("u");
        assert_ne!(
            memory.answer(&of_a, trust()),
            Some(Verdict::Active),
            "cutoff, issuer view"
        );
        assert_ne!(memory.answer(&plain, trust()), Some(Verdict::Active), "cutoff");
        // Keyed: a cutoff under A, its positives gone.
        memory.remember(&of_a, &Lookup::default(), memory.epoch(), true);
        memory.cutoff(Some("A"), "u", now + 1);
        memory.issuer_cutoffs.invalidate(&issuer_key("A", "u"));
        memory.any_cutoffs.invalidate("u");
        let later = |facts: TokenFacts<'static>| TokenFacts {
            issued_at: Some(now + 1),
            ..facts
        };
        assert_ne!(
            memory.answer(&later(of_a), trust()),
            Some(Verdict::Active),
            "keyed cutoff"
        );
        assert_ne!(
            memory.answer(&later(plain), trust()),
            Some(Verdict::Active),
            "keyed cutoff, any"
        );
    }

    /// A keyed revocation answers for its issuer's view only, an unkeyed one for every view, and
    /// a view without an issuer (a layer that does not key) sees keyed revocations of every
    /// issuer from memory: from events, and from what its lookups found.
    #[test]
    fn keyed_revocations_answer_their_issuers_view_and_every_unkeyed_one() {
        let memory = Memory::new(1000, Duration::from_secs(30), Duration::from_secs(300), 1000);
        let now = unix_seconds(SystemTime::now());
        let plain = TokenFacts {
            jti: Some("t"),
            session_id: Some("s"),
            subject: Some("u"),
            issued_at: Some(now - 10),
            expires_at: Some(now + 600),
            issuer: None,
        };
        let view = |issuer, facts: TokenFacts<'static>| TokenFacts { issuer, ..facts };
        let (of_a, of_b) = (view(Some("A"), plain), view(Some("B"), plain));
        for facts in [&plain, &of_a, &of_b] {
            memory.remember(facts, &Lookup::default(), memory.epoch(), true);
            assert_eq!(memory.answer(facts, trust()), Some(Verdict::Active));
        }
        memory.revoked_session(Some("A"), "s", Some(far_future()));
        let session = Some(Verdict::Revoked(RevokedBy::Session));
        assert_eq!(memory.answer(&of_a, trust()), session);
        assert_eq!(memory.answer(&of_b, trust()), Some(Verdict::Active));
        assert_eq!(memory.answer(&plain, trust()), session);

        memory.cutoff(Some("B"), "u", now);
        let without_sid = |facts: TokenFacts<'static>| TokenFacts {
            session_id: None,
            ..facts
        };
        let subject = Some(Verdict::Revoked(RevokedBy::Subject));
        assert_eq!(memory.answer(&without_sid(of_b), trust()), subject);
        assert_eq!(memory.answer(&without_sid(of_a), trust()), Some(Verdict::Active));
        assert_eq!(memory.answer(&without_sid(plain), trust()), subject);

        // Unkeyed: every view.
        memory.revoked_session(None, "s2", Some(far_future()));
        for facts in [plain, of_a, of_b] {
            let other = TokenFacts {
                session_id: Some("s2"),
                ..facts
            };
            assert_eq!(memory.answer(&other, trust()), session);
        }
        // What lookups found under an issuer: kept under that issuer for its view, by key alone
        // for a view without one (answered from memory, even while negatives are not trusted).
        let c = TokenFacts {
            jti: Some("t3"),
            session_id: Some("s3"),
            subject: Some("u3"),
            ..of_a
        };
        let found = Lookup {
            issuer_session_revoked: true,
            ..Lookup::default()
        };
        memory.remember(&c, &found, memory.epoch(), true);
        assert_eq!(memory.answer(&c, trust()), session);
        assert_eq!(memory.answer(&view(Some("B"), c), trust()), None);
        let d = view(
            None,
            TokenFacts {
                session_id: Some("s4"),
                ..c
            },
        );
        memory.remember(&d, &found, memory.epoch(), true);
        let outage = Trust {
            negatives: false,
            ..trust()
        };
        assert_eq!(memory.answer(&d, outage), session);
    }
}
