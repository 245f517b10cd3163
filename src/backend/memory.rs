//! [`MemoryStore`]: the revocation ledger of a single process.
//!
//! It owns three maps (tokens by `jti`, sessions by `sid`, cutoffs by subject), and two more for
//! sessions and cutoffs keyed by issuer (by `sid` or subject, then issuer), behind one `RwLock`, and answers every check synchronously. It is the right backend for a single
//! instance, for tests of an application, and for the demo server. It is not durable: its
//! revocations die with the process, and other processes never see them; use the Postgres store
//! (through the cache tier) for that.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::{
    Revocation, RevocationBackend, RevocationKind, RevocationRecord, RevocationStore, RevocationTarget,
    StoreError, TokenFacts, Verdict, from_unix_seconds, unix_seconds,
};

/// How long past its token's expiry a revocation is kept before writes sweep it away, unless
/// configured otherwise. Larger than any sane validation leeway.
const DEFAULT_RETENTION: Duration = Duration::from_secs(60 * 60);

/// An in-process revocation store: cheap to clone (clones share one ledger), safe to use from
/// any number of tasks.
///
/// Checks take a read lock and never wait on I/O, so the layer answers them on its fast path.
/// Writes take the write lock briefly. Expired records are swept away by
/// [`purge_expired`](RevocationStore::purge_expired), and also automatically during writes once
/// the ledger has doubled since the last sweep, so memory stays proportional to the live set
/// without a background task.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_jwt_revocation::{MemoryStore, Revocation, RevocationStore};
///
/// # async fn demo() -> Result<(), tower_jwt_revocation::StoreError> {
/// let store = MemoryStore::new();
/// let exp = SystemTime::now() + Duration::from_secs(900);
/// let logout = Revocation::token("jti-1", exp).owner("alice").reason("logout");
/// assert!(store.revoke(&logout).await?);
/// assert!(!store.revoke(&logout).await?); // idempotent
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    ledger: Arc<RwLock<Ledger>>,
}

#[derive(Debug, Default)]
struct Ledger {
    tokens: HashMap<String, Entry>,
    sessions: HashMap<String, Entry>,
    subjects: HashMap<String, Cutoff>,
    /// Sessions keyed by issuer: by `sid`, then issuer.
    keyed_sessions: HashMap<String, HashMap<String, Entry>>,
    /// Cutoffs keyed by issuer: by subject, then issuer.
    keyed_subjects: HashMap<String, HashMap<String, Cutoff>>,
    /// Entries in `keyed_sessions` and in `keyed_subjects`, counted as they change.
    keyed_session_count: usize,
    keyed_cutoff_count: usize,
    retention: Option<Duration>,
    /// Subject cutoffs older than this plus twice the sweep's margin are swept.
    max_token_lifetime: Option<Duration>,
    /// Entry count right after the last sweep; the next automatic sweep runs at twice that.
    swept_len: usize,
    /// Layers and receivers over this store key revocations by issuer.
    issuer_keying: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    subject: Option<String>,
    expires_at: SystemTime,
    revoked_at: SystemTime,
    reason: Option<String>,
    revoked_by: Option<String>,
}

#[derive(Debug, Clone)]
struct Cutoff {
    /// Unix seconds; see [`super::subject_cutoff_covers`].
    not_before: u64,
    revoked_at: SystemTime,
    reason: Option<String>,
    revoked_by: Option<String>,
}

impl MemoryStore {
    /// An empty store that keeps records for one hour past their token's expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps records for `retention` past their token's expiry before the
    /// automatic sweep removes them. Keep it above the validation leeway.
    pub fn with_retention(retention: Duration) -> Self {
        let store = Self::new();
        store.write().retention = Some(retention);
        store
    }

    /// The longest lifetime (`exp - iat`) a token this store guards can have (what the layer's
    /// `max_token_lifetime` enforces). With it, a sweep (automatic, or
    /// [`purge_expired`](RevocationStore::purge_expired)`(margin)`) also drops subject cutoffs
    /// older than `max_token_lifetime + 2 × margin` (`margin` at least the validation leeway),
    /// whose tokens with an `iat` have all expired;
    /// without it (the default) cutoffs are kept. Only set it where tokens carry `iat` (a token
    /// without one is covered by every cutoff, and no longer by a purged one); the same rule as
    /// `PgStore::with_max_token_lifetime`.
    #[must_use]
    pub fn with_max_token_lifetime(self, max_token_lifetime: Duration) -> Self {
        self.write().max_token_lifetime = Some(max_token_lifetime);
        self
    }

    /// Layers and receivers over this store key session and subject revocations by issuer (see
    /// [`RevocationBackend::issuer_keying`]). Nothing outside the process shares this store, so
    /// no rollout order applies: turn it on wherever one layer accepts several issuers whose
    /// users may share a `sub`. Default off, as for `PgStore`.
    #[must_use]
    pub fn with_issuer_keying(self, keyed: bool) -> Self {
        self.write().issuer_keying = keyed;
        self
    }

    /// How many token and session revocations are held (subject cutoffs not counted).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no token or session revocation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer for one token, from memory.
    pub fn verdict(&self, facts: &TokenFacts<'_>) -> Verdict {
        let ledger = self.read();
        let token = facts.jti.is_some_and(|jti| ledger.tokens.contains_key(jti));
        let session = facts.session_id.is_some_and(|sid| {
            ledger.sessions.contains_key(sid)
                || keyed_max(&ledger.keyed_sessions, sid, facts.issuer, |_| 0).is_some()
        });
        let cutoff = facts.subject.and_then(|sub| {
            let keyed = keyed_max(&ledger.keyed_subjects, sub, facts.issuer, |c| c.not_before);
            ledger.subjects.get(sub).map(|c| c.not_before).max(keyed)
        });
        Verdict::from_lookups(token, session, cutoff, facts.issued_at)
    }

    // A panic while holding the lock cannot leave the maps half-updated (every write is a single
    // insert or retain), so a poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ledger> {
        self.ledger.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Ledger> {
        self.ledger.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(
        &self,
        kind: RevocationKind,
        issuer: Option<&str>,
        key: &str,
        entry: impl FnOnce() -> Entry,
    ) -> Result<bool, StoreError> {
        let mut ledger = self.write();
        let map = match (kind, issuer) {
            (RevocationKind::Session, Some(issuer)) => ledger
                .keyed_sessions
                .entry(key.to_owned())
                .or_default()
                .entry(issuer.to_owned()),
            (RevocationKind::Session, None) => ledger.sessions.entry(key.to_owned()),
            _ => ledger.tokens.entry(key.to_owned()),
        };
        if let std::collections::hash_map::Entry::Vacant(vacant) = map {
            vacant.insert(entry());
        } else {
            return Ok(false);
        }
        if issuer.is_some() {
            ledger.keyed_session_count += 1;
        }
        if ledger.len() >= 2 * ledger.swept_len.max(512) {
            let margin = ledger.retention.unwrap_or(DEFAULT_RETENTION);
            ledger.sweep(SystemTime::now(), margin);
        }
        Ok(true)
    }
}

impl Ledger {
    /// Token and session revocations held.
    fn len(&self) -> usize {
        self.tokens.len() + self.sessions.len() + self.keyed_session_count
    }

    fn cutoffs(&self) -> usize {
        self.subjects.len() + self.keyed_cutoff_count
    }

    fn sweep(&mut self, now: SystemTime, margin: Duration) -> u64 {
        let before = self.len();
        let live = |e: &mut Entry| super::saturating_add(e.expires_at, margin) >= now;
        self.tokens.retain(|_, e| live(e));
        self.sessions.retain(|_, e| live(e));
        self.keyed_sessions.retain(|_, by_issuer| {
            by_issuer.retain(|_, e| live(e));
            !by_issuer.is_empty()
        });
        self.keyed_session_count = self.keyed_sessions.values().map(HashMap::len).sum();
        self.swept_len = self.len();
        let mut swept = (before - self.swept_len) as u64;
        if let Some(lifetime) = self.max_token_lifetime {
            let (cutoffs, age) = (
                self.cutoffs(),
                super::cutoff_retention(lifetime, margin).as_secs(),
            );
            let now = unix_seconds(now);
            // `u64::MAX` (a ban for good) never passes.
            let live = |cutoff: &mut Cutoff| cutoff.not_before.saturating_add(age) >= now;
            self.subjects.retain(|_, cutoff| live(cutoff));
            self.keyed_subjects.retain(|_, by_issuer| {
                by_issuer.retain(|_, cutoff| live(cutoff));
                !by_issuer.is_empty()
            });
            self.keyed_cutoff_count = self.keyed_subjects.values().map(HashMap::len).sum();
            swept += (cutoffs - self.cutoffs()) as u64;
        }
        swept
    }
}

/// The latest of `value` over what `map` holds for `key` under `issuer`, or under any issuer
/// when `None` (see [`TokenFacts::issuer`]).
fn keyed_max<V>(
    map: &HashMap<String, HashMap<String, V>>,
    key: &str,
    issuer: Option<&str>,
    value: impl Fn(&V) -> u64,
) -> Option<u64> {
    // Most ledgers key nothing by issuer: no hashing then.
    let by_issuer = if map.is_empty() { None } else { map.get(key) }?;
    match issuer {
        Some(issuer) => by_issuer.get(issuer).map(value),
        None => by_issuer.values().map(value).max(),
    }
}

fn entry(revocation: &Revocation<'_>, expires_at: SystemTime) -> Entry {
    Entry {
        subject: revocation.owner.map(str::to_owned),
        expires_at,
        revoked_at: SystemTime::now(),
        reason: revocation.reason.map(str::to_owned),
        revoked_by: revocation.revoked_by.map(str::to_owned),
    }
}

impl RevocationBackend for MemoryStore {
    type Future = Ready<Result<Verdict, StoreError>>;

    fn try_check(&self, facts: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        Some(Ok(self.verdict(facts)))
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        ready(Ok(self.verdict(facts)))
    }

    /// As set by [`with_issuer_keying`](MemoryStore::with_issuer_keying).
    fn issuer_keying(&self) -> bool {
        self.read().issuer_keying
    }
}

impl RevocationStore for MemoryStore {
    async fn revoke(&self, revocation: &Revocation<'_>) -> Result<bool, StoreError> {
        revocation.validate()?;
        let entry = |expires_at| entry(revocation, expires_at);
        let issuer = revocation.keyed_issuer();
        match revocation.target {
            RevocationTarget::Token { jti, expires_at } => {
                self.insert(RevocationKind::Token, None, jti, || entry(expires_at))
            }
            RevocationTarget::Session { sid, expires_at } => {
                self.insert(RevocationKind::Session, issuer, sid, || entry(expires_at))
            }
            RevocationTarget::Subject { subject, not_before } => {
                let not_before = unix_seconds(not_before);
                let mut ledger = self.write();
                let cutoff = match issuer {
                    Some(issuer) => ledger
                        .keyed_subjects
                        .entry(subject.to_owned())
                        .or_default()
                        .entry(issuer.to_owned()),
                    None => ledger.subjects.entry(subject.to_owned()),
                };
                let (moved, new) = match &cutoff {
                    std::collections::hash_map::Entry::Occupied(current) => {
                        (not_before > current.get().not_before, false)
                    }
                    std::collections::hash_map::Entry::Vacant(_) => (true, true),
                };
                // The cutoff only ever moves forward; an earlier one is already covered by it.
                if moved {
                    cutoff.insert_entry(Cutoff {
                        not_before,
                        revoked_at: SystemTime::now(),
                        reason: revocation.reason.map(str::to_owned),
                        revoked_by: revocation.revoked_by.map(str::to_owned),
                    });
                }
                if new && issuer.is_some() {
                    ledger.keyed_cutoff_count += 1;
                }
                Ok(moved)
            }
        }
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let ledger = self.read();
        let record = |kind, key: &String, issuer: Option<&String>, e: &Entry| RevocationRecord {
            kind,
            key: key.clone(),
            issuer: issuer.cloned(),
            subject: e.subject.clone(),
            expires_at: Some(e.expires_at),
            not_before: None,
            revoked_at: e.revoked_at,
            reason: e.reason.clone(),
            revoked_by: e.revoked_by.clone(),
        };
        let of_subject = |e: &&Entry| e.subject.as_deref() == Some(subject);
        let mut records: Vec<RevocationRecord> = ledger
            .tokens
            .iter()
            .filter(|(_, e)| of_subject(e))
            .map(|(k, e)| record(RevocationKind::Token, k, None, e))
            .chain(
                ledger
                    .sessions
                    .iter()
                    .filter(|(_, e)| of_subject(e))
                    .map(|(k, e)| record(RevocationKind::Session, k, None, e)),
            )
            .chain(ledger.keyed_sessions.iter().flat_map(|(k, by_issuer)| {
                by_issuer
                    .iter()
                    .filter(|(_, e)| of_subject(e))
                    .map(move |(issuer, e)| record(RevocationKind::Session, k, Some(issuer), e))
            }))
            .collect();
        let unkeyed = ledger.subjects.get(subject).map(|c| (None, c));
        let keyed = ledger
            .keyed_subjects
            .get(subject)
            .into_iter()
            .flat_map(|by_issuer| by_issuer.iter().map(|(issuer, c)| (Some(issuer.clone()), c)));
        for (issuer, c) in unkeyed.into_iter().chain(keyed) {
            records.push(RevocationRecord {
                kind: RevocationKind::Subject,
                key: subject.to_owned(),
                issuer,
                subject: Some(subject.to_owned()),
                expires_at: None,
                not_before: Some(from_unix_seconds(c.not_before)),
                revoked_at: c.revoked_at,
                reason: c.reason.clone(),
                revoked_by: c.revoked_by.clone(),
            });
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.revoked_at));
        records.truncate(limit);
        Ok(records)
    }

    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        Ok(self.write().sweep(SystemTime::now(), margin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::RevokedBy;

    fn facts<'a>(jti: &'a str, sid: Option<&'a str>, sub: &'a str, iat: u64) -> TokenFacts<'a> {
        TokenFacts {
            jti: Some(jti),
            session_id: sid,
            subject: Some(sub),
            issued_at: Some(iat),
            expires_at: Some(iat + 600),
            issuer: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The store's futures never wait on anything, so one poll completes them.
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("MemoryStore future was pending"),
        }
    }

    fn in_an_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn revoking_twice_keeps_one_record() {
        let store = MemoryStore::new();
        assert!(
            block_on(
                store.revoke(
                    &Revocation::token("a", in_an_hour())
                        .owner("alice")
                        .reason("first")
                )
            )
            .unwrap()
        );
        assert!(
            !block_on(
                store.revoke(
                    &Revocation::token("a", in_an_hour())
                        .owner("alice")
                        .reason("second")
                )
            )
            .unwrap()
        );
        let list = block_on(store.list_by_subject("alice", 10)).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason.as_deref(), Some("first"));
    }

    #[test]
    fn each_revocation_kind_is_enforced() {
        let store = MemoryStore::new();
        block_on(store.revoke(&Revocation::token("t1", in_an_hour()).owner("alice"))).unwrap();
        block_on(store.revoke(&Revocation::session("s1", in_an_hour()).owner("bob"))).unwrap();
        block_on(store.revoke(&Revocation::subject("carol", from_unix_seconds(1_000)))).unwrap();

        assert_eq!(
            store.verdict(&facts("t1", None, "alice", 1)),
            Verdict::Revoked(RevokedBy::Token)
        );
        assert_eq!(store.verdict(&facts("t2", None, "alice", 1)), Verdict::Active);
        assert_eq!(
            store.verdict(&facts("t3", Some("s1"), "bob", 1)),
            Verdict::Revoked(RevokedBy::Session)
        );
        assert_eq!(store.verdict(&facts("t4", Some("s2"), "bob", 1)), Verdict::Active);
        assert_eq!(
            store.verdict(&facts("t5", None, "carol", 999)),
            Verdict::Revoked(RevokedBy::Subject)
        );
        assert_eq!(
            store.verdict(&facts("t6", None, "carol", 1_000)),
            Verdict::Revoked(RevokedBy::Subject)
        );
        assert_eq!(store.verdict(&facts("t7", None, "carol", 1_001)), Verdict::Active);
        let listed = block_on(store.list_by_subject("carol", 10)).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].subject.as_deref(), Some("carol"));
        // A subject cutoff tells a store whose tokens it ends through `owner` too, as token and
        // session revocations do (mutation testing, issue 26: with `owner` dropped from
        // `Revocation::subject`, nothing failed; the crate's stores key cutoffs by the subject,
        // a store of the application's may read `owner` alone).
        let cutoff = Revocation::subject("carol", from_unix_seconds(1_000));
        assert_eq!(cutoff.owner, Some("carol"));
    }

    #[test]
    fn an_earlier_subject_cutoff_does_not_move_it_back() {
        let store = MemoryStore::new();
        block_on(store.revoke(&Revocation::subject("carol", from_unix_seconds(2_000)).reason("late")))
            .unwrap();
        block_on(store.revoke(&Revocation::subject("carol", from_unix_seconds(1_000)).reason("early")))
            .unwrap();
        assert_eq!(
            store.verdict(&facts("t", None, "carol", 1_500)),
            Verdict::Revoked(RevokedBy::Subject)
        );
        let list = block_on(store.list_by_subject("carol", 10)).unwrap();
        assert_eq!(list[0].not_before, Some(from_unix_seconds(2_000)));
        assert_eq!(list[0].reason.as_deref(), Some("late"));
    }

    #[test]
    fn purge_removes_only_records_past_expiry_plus_margin() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        let long_ago = now - Duration::from_secs(7200);
        let recently = now - Duration::from_secs(30);
        block_on(store.revoke(&Revocation::token("old", long_ago))).unwrap();
        block_on(store.revoke(&Revocation::session("old-session", long_ago))).unwrap();
        block_on(store.revoke(&Revocation::token("recent", recently))).unwrap();
        block_on(store.revoke(&Revocation::token("live", in_an_hour()))).unwrap();

        assert_eq!(block_on(store.purge_expired(Duration::from_secs(60))).unwrap(), 2);
        assert_eq!(store.len(), 2);
        assert_eq!(block_on(store.purge_expired(Duration::ZERO)).unwrap(), 1);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn purge_drops_subject_cutoffs_older_than_the_longest_token_lifetime() {
        let now = SystemTime::now();
        let hours = |h: u64| now - Duration::from_secs(h * 3600);
        let cutoffs = |store: &MemoryStore| {
            for (subject, at) in [("old", hours(3)), ("recent", hours(1))] {
                block_on(store.revoke(&Revocation::subject(subject, at))).unwrap();
            }
            block_on(store.revoke(&Revocation::subject("banned", crate::backend::far_future()))).unwrap();
        };
        let keeping = MemoryStore::new();
        cutoffs(&keeping);
        assert_eq!(block_on(keeping.purge_expired(Duration::ZERO)).unwrap(), 0);
        let purging = MemoryStore::new().with_max_token_lifetime(Duration::from_secs(3600));
        cutoffs(&purging);
        assert_eq!(
            block_on(purging.purge_expired(Duration::from_secs(600))).unwrap(),
            1
        );
        let covered = |store: &MemoryStore, sub| {
            store.verdict(&facts("x", None, sub, unix_seconds(hours(4)))) != Verdict::Active
        };
        assert!(covered(&keeping, "old"));
        assert!(!covered(&purging, "old"), "purged");
        assert!(covered(&purging, "recent") && covered(&purging, "banned"));
    }

    #[test]
    fn writes_sweep_expired_records_automatically() {
        let store = MemoryStore::with_retention(Duration::ZERO);
        let past = SystemTime::now() - Duration::from_secs(10);
        for i in 0..5_000 {
            block_on(store.revoke(&Revocation::token(&format!("expired-{i}"), past))).unwrap();
        }
        assert!(store.len() < 1_100, "ledger kept {} expired records", store.len());
    }

    #[test]
    fn list_is_newest_first_and_limited() {
        let store = MemoryStore::new();
        for jti in ["a", "b", "c"] {
            block_on(store.revoke(&Revocation::token(jti, in_an_hour()).owner("alice"))).unwrap();
            std::thread::sleep(Duration::from_millis(2)); // distinct revoked_at, not synchronisation
        }
        block_on(store.revoke(&Revocation::token("x", in_an_hour()).owner("mallory"))).unwrap();
        let keys: Vec<_> = block_on(store.list_by_subject("alice", 2))
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["c", "b"]);
    }

    #[test]
    fn empty_keys_are_refused() {
        let store = MemoryStore::new();
        assert!(matches!(
            block_on(store.revoke(&Revocation::token("", in_an_hour()))),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(matches!(
            block_on(store.revoke(&Revocation::subject("", SystemTime::now()))),
            Err(StoreError::InvalidInput(_))
        ));
    }
}
