//! How the tier's entries are kept: when a revoked entry expires, the negatives' bookkeeping,
//! and the keys and writes of the maps keyed by issuer.

use std::time::{Duration, Instant};

use super::super::positives::{Map, Positives};

/// A revoked token or session, kept until `until` (moka drops the entry then); `None` keeps it
/// until it is evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Revoked {
    pub(super) until: Option<Instant>,
}

pub(super) struct RevokedExpiry;

/// The negatives, one map per key space. Cloned into the positives, which drop them before
/// an entry they evict.
#[derive(Clone)]
pub(super) struct Negatives {
    /// `jti`s a lookup found not revoked.
    pub(super) tokens: Map<String, ()>,
    /// `sid`s a lookup found not revoked, neither for every issuer nor under any one.
    pub(super) sessions: Map<String, ()>,
    /// Subjects whose entries in `cutoffs` and `any_cutoffs` (or their absence) a lookup found
    /// current. A cutoff alone proves only that the subject's cutoff is *at least* that; whether
    /// a later one exists is as stale as this marker.
    pub(super) subjects: Map<String, ()>,
    /// For tokens with an issuer, by issuer and `sid`: neither the `sid` nor the `sid` under
    /// that issuer is revoked. (`sessions` then says: nor under any issuer.)
    pub(super) issuer_sessions: Map<String, ()>,
    /// For tokens with an issuer, by issuer and subject: the subject's entries in `cutoffs`
    /// and in `issuer_cutoffs` under that issuer are current.
    pub(super) issuer_subjects: Map<String, ()>,
}

/// The gate held shared (see `positives`).
pub(super) type SharedGate<'a> = std::sync::RwLockReadGuard<'a, ()>;

impl Revoked {
    /// Whether this entry lasts at least as long as one kept `until`.
    pub(super) fn outlasts(&self, until: Option<Instant>) -> bool {
        match (self.until, until) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => mine >= theirs,
        }
    }
}

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

impl Negatives {
    pub(super) fn entry_count(&self) -> u64 {
        self.tokens.entry_count()
            + self.sessions.entry_count()
            + self.subjects.entry_count()
            + self.issuer_sessions.entry_count()
            + self.issuer_subjects.entry_count()
    }

    pub(super) fn invalidate_all(&self) {
        self.tokens.invalidate_all();
        self.sessions.invalidate_all();
        self.subjects.invalidate_all();
        self.issuer_sessions.invalidate_all();
        self.issuer_subjects.invalidate_all();
    }
}

/// Stores a revocation, keeping the longer of its `until` and one already held: a lookup that
/// finishes after the feed delivered the same revocation never shortens it. `gate`: the caller
/// holds the gate shared, and made room before taking it.
pub(super) fn put_revoked(
    map: &Positives<Revoked, ()>,
    key: &str,
    until: Option<Instant>,
    gate: Option<&SharedGate<'_>>,
) {
    let keeps = |held: &Revoked| held.outlasts(until);
    match gate {
        Some(_) => map.put_in_room(key, Revoked { until }, keeps),
        None => map.put(key, Revoked { until }, keeps),
    }
}

/// The key a session or subject revocation keyed by `issuer` is held under in memory:
/// `issuer`, a NUL, then `key`. One string, so maps keyed by `String` are asked without
/// allocating; never equal for two different pairs, since an issuer never holds a NUL
/// ([`Revocation::issuer`](crate::Revocation::issuer) refuses one, and Postgres text cannot hold one).
pub(super) fn with_issuer_key<R>(issuer: &str, key: &str, f: impl FnOnce(&str) -> R) -> R {
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
pub(super) fn issuer_key(issuer: &str, key: &str) -> String {
    let mut joined = String::with_capacity(issuer.len() + 1 + key.len());
    joined.push_str(issuer);
    joined.push('\0');
    joined.push_str(key);
    joined
}

/// Moves a cutoff forward (never back). `gate` as for [`put_revoked`].
pub(super) fn put_cutoff(map: &Positives<u64, ()>, key: &str, cutoff: u64, gate: Option<&SharedGate<'_>>) {
    let keeps = |held: &u64| *held >= cutoff;
    match gate {
        Some(_) => map.put_in_room(key, cutoff, keeps),
        None => map.put(key, cutoff, keeps),
    }
}
