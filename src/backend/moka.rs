//! [`MokaCache`]: the in-process tier that answers most checks from memory.
//!
//! It sits in front of a [`Ledger`] (such as [`PgStore`](super::postgres::PgStore)) and is itself
//! a [`RevocationBackend`] and [`RevocationStore`], so the chain reads
//! `JwtRevocationLayer<MokaCache<PgStore>>`. It owns three `moka` caches of verdicts, keyed by
//! `jti`, by `sid` and by subject; the consumer of the ledger's change feed that keeps them
//! current; and the rules for when an answer from memory may be trusted. It does not own
//! durability: every write goes to the ledger first.
//!
//! # What is cached, and how stale an answer can be
//!
//! - **Revoked** (positive) entries are always trusted. One lives until its token's `exp` plus
//!   five minutes (beyond any validation leeway), so a revoked token never becomes valid again
//!   while it could still be presented. Eviction under capacity pressure only means the next
//!   check asks the ledger again (in lookup mode); an evicted entry is never assumed absent.
//! - **Not revoked** (negative) entries live at most `negative_ttl`, and are trusted only while
//!   the change feed is provably in sync: connected, and its last heartbeat or catch-up no older
//!   than `max_staleness`. A revocation made on another instance reaches this one through the
//!   feed, typically within milliseconds, and turns the negative into a positive.
//!
//! Per mode, the worst case:
//!
//! - [`CacheMode::Lookup`] (default): a miss asks the ledger once (concurrent misses for the same
//!   keys share one query). While connected, an answer is at most as old as the feed's delivery
//!   delay. While the feed is disconnected, negatives are not used: every check not settled by a
//!   positive entry asks the ledger. If the ledger is unreachable as well, a negative no older
//!   than `max_staleness` past the last sync still answers; after that the layer's
//!   [`FailurePolicy`](crate::FailurePolicy) decides.
//! - [`CacheMode::Mirror`]: the tier loads every live revocation at start and follows the feed; a
//!   miss means "not revoked" without a query. Answers are at most as stale as the feed while in
//!   sync, and at most `max_staleness` past the last sync while it is not (the database may be
//!   down: the mirror keeps serving); beyond that, misses go to the ledger and its errors to the
//!   failure policy. If the live set does not fit in `max_capacity`, or an entry is ever evicted
//!   for size, the tier falls back to lookup mode with a `warn`, because a mirror that lost an
//!   entry could call a revoked token valid.
//!
//! Two races are closed by construction: a lookup result never overwrites a revoked entry with
//! "not revoked" (an event that arrived during the query wins), and a subject cutoff only ever
//! moves forward.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_core::Stream as _;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;

use super::{
    FeedItem, Ledger, Lookup, RevocationBackend, RevocationKind, RevocationRecord, RevocationStore,
    RevokedBy, StoreError, TokenFacts, Verdict, subject_cutoff_covers, unix_seconds,
};

/// How long past its token's expiry a revoked entry is kept: beyond any sane validation leeway.
const POSITIVE_GRACE: Duration = Duration::from_secs(5 * 60);

/// How the tier answers a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Ask the ledger (once per key, however many requests wait), then remember the answer.
    #[default]
    Lookup,
    /// Hold every live revocation; a miss is "not revoked" with no query.
    Mirror,
}

/// A revoked token or session, kept until `until` (moka drops the entry then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revoked {
    until: Option<Instant>,
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

/// The key of a negative ("not revoked") entry: a token's three keys together, because the
/// answer "not revoked" is about all three at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKeys {
    jti: Option<String>,
    sid: Option<String>,
    sub: Option<String>,
}

/// [`TokenKeys`] borrowed from a request's claims, to look up without allocating. Its `Hash`
/// equals the owned key's (same fields, same order, `&str` hashes as `String`).
#[derive(Hash)]
struct TokenKeysRef<'a> {
    jti: Option<&'a str>,
    sid: Option<&'a str>,
    sub: Option<&'a str>,
}

impl moka::Equivalent<TokenKeys> for TokenKeysRef<'_> {
    fn equivalent(&self, key: &TokenKeys) -> bool {
        self.jti == key.jti.as_deref() && self.sid == key.sid.as_deref() && self.sub == key.sub.as_deref()
    }
}

impl TokenKeys {
    fn of(facts: &TokenFacts<'_>) -> Self {
        Self {
            jti: facts.jti.map(str::to_owned),
            sid: facts.session_id.map(str::to_owned),
            sub: facts.subject.map(str::to_owned),
        }
    }

    fn facts(&self, issued_at: Option<u64>, expires_at: Option<u64>) -> TokenFacts<'_> {
        TokenFacts {
            jti: self.jti.as_deref(),
            session_id: self.sid.as_deref(),
            subject: self.sub.as_deref(),
            issued_at,
            expires_at,
        }
    }
}

/// The tier's counters, read with [`MokaCache::metrics`] (or through the layer,
/// `layer.backend().metrics()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CacheMetrics {
    /// Checks answered "not revoked".
    pub active: u64,
    /// Checks answered "revoked" by `jti`.
    pub revoked_token: u64,
    /// Checks answered "revoked" by session.
    pub revoked_session: u64,
    /// Checks answered "revoked" by subject cutoff.
    pub revoked_subject: u64,
    /// Checks that ended in an error (the layer's policy then decides).
    pub errors: u64,
    /// Checks answered from memory on the synchronous fast path.
    pub hits: u64,
    /// Checks the fast path could not answer.
    pub misses: u64,
    /// Lookups sent to the ledger.
    pub backend_calls: u64,
    /// Checks that waited for another check's lookup of the same keys instead of sending one.
    pub coalesced_waits: u64,
    /// Change-feed events applied.
    pub events_applied: u64,
    /// Times the feed came back in sync after a disconnection.
    pub resyncs: u64,
    /// Entries held (approximate, as moka counts them).
    pub live_entries: u64,
    /// Propagation lag of the last event applied: applied time minus `revoked_at`, in ms.
    pub last_propagation_ms: u64,
    /// The largest propagation lag seen, in ms.
    pub max_propagation_ms: u64,
    /// Whether mirror mode is active (loaded, and not fallen back to lookup).
    pub mirroring: bool,
}

#[derive(Default)]
struct Counters {
    active: AtomicU64,
    revoked_token: AtomicU64,
    revoked_session: AtomicU64,
    revoked_subject: AtomicU64,
    errors: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    backend_calls: AtomicU64,
    coalesced_waits: AtomicU64,
    events_applied: AtomicU64,
    resyncs: AtomicU64,
    last_propagation_ms: AtomicU64,
    max_propagation_ms: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Whether the change feed is provably current.
struct SyncState {
    /// Reference point for the millisecond clock below.
    epoch: Instant,
    connected: AtomicBool,
    /// Milliseconds since `epoch` of the last `InSync` report; `u64::MAX` before the first.
    last_sync_ms: AtomicU64,
    max_staleness: Duration,
    synced: Notify,
}

impl SyncState {
    fn millis_since_sync(&self) -> Option<u64> {
        let last = self.last_sync_ms.load(Ordering::Acquire);
        (last != u64::MAX).then(|| (self.epoch.elapsed().as_millis() as u64).saturating_sub(last))
    }

    /// No older than `max_staleness` since the last proof of sync (connected or not).
    fn within_staleness(&self) -> bool {
        self.millis_since_sync()
            .is_some_and(|ms| u128::from(ms) <= self.max_staleness.as_millis())
    }

    /// Connected and within staleness: negatives may be answered from memory.
    fn fresh(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.within_staleness()
    }
}

type SharedLookup = Result<Lookup, Arc<StoreError>>;

/// moka caches hashed with foldhash (randomly seeded per cache): keys come from verified tokens,
/// and SipHash cost a third of a warm check here.
type Map<K, V> = Cache<K, V, foldhash::fast::RandomState>;

struct Tier<B> {
    backend: B,
    /// Revoked `jti`s (positive entries).
    tokens: Map<String, Revoked>,
    /// Revoked `sid`s (positive entries).
    sessions: Map<String, Revoked>,
    /// Subject cutoffs, Unix seconds (positive entries; they never expire by time).
    cutoffs: Map<String, u64>,
    /// Tokens whose three keys were all clear when last asked (negative entries).
    clear: Map<TokenKeys, ()>,
    mode: CacheMode,
    max_capacity: u64,
    /// Mirror mode loaded and still trustworthy (not fallen back).
    mirroring: Arc<AtomicBool>,
    sync: SyncState,
    counters: Counters,
    flights: Mutex<HashMap<TokenKeys, Arc<OnceCell<SharedLookup>>>>,
    feed_task: Mutex<Option<JoinHandle<()>>>,
}

impl<B> Drop for Tier<B> {
    fn drop(&mut self) {
        if let Some(task) = self
            .feed_task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// A cache tier over a [`Ledger`]. Build it with [`MokaCache::builder`]; clones share one cache.
///
/// Concurrency: checks never block each other (moka's reads are lock-free); a miss is sent to
/// the ledger by exactly one of the concurrent checks for the same keys, and the others wait for
/// its answer (a cancelled waiter hands the lookup to the next one). Writes go to the ledger
/// first and update this instance's memory before returning, so the revoking instance reads its
/// own writes; other instances learn through the change feed.
pub struct MokaCache<B> {
    tier: Arc<Tier<B>>,
}

impl<B> Clone for MokaCache<B> {
    fn clone(&self) -> Self {
        Self {
            tier: Arc::clone(&self.tier),
        }
    }
}

impl<B> std::fmt::Debug for MokaCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaCache")
            .field("mode", &self.tier.mode)
            .finish_non_exhaustive()
    }
}

/// The configuration of a [`MokaCache`].
#[must_use = "a builder does nothing until `start` is called"]
#[derive(Debug)]
pub struct MokaCacheBuilder<B> {
    backend: B,
    mode: CacheMode,
    max_capacity: u64,
    negative_ttl: Duration,
    max_staleness: Duration,
}

impl<B: Ledger> MokaCache<B> {
    /// Starts a configuration over `backend`.
    pub fn builder(backend: B) -> MokaCacheBuilder<B> {
        MokaCacheBuilder {
            backend,
            mode: CacheMode::Lookup,
            max_capacity: 100_000,
            negative_ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(10),
        }
    }
}

impl<B: Ledger> MokaCacheBuilder<B> {
    /// Lookup (default) or mirror.
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.mode = mode;
        self
    }

    /// The most entries each of the three key spaces (`jti`, `sid`, subject) holds. Default
    /// 100 000.
    pub fn max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// The longest a "not revoked" answer is kept. Default 30 s.
    pub fn negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.negative_ttl = negative_ttl;
        self
    }

    /// How long after its last proof of sync the tier still answers "not revoked" from memory
    /// when the feed is down (mirror mode) or the ledger too (lookup mode). Default 10 s; keep
    /// it above the feed's heartbeat (2 s for `PgStore`).
    pub fn max_staleness(mut self, max_staleness: Duration) -> Self {
        self.max_staleness = max_staleness;
        self
    }

    /// Builds the tier and starts following the ledger's change feed on the current Tokio
    /// runtime (in mirror mode, after loading the live set). Returns at once; see
    /// [`MokaCache::wait_in_sync`].
    pub fn start(self) -> Result<MokaCache<B>, StoreError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let mirroring = Arc::new(AtomicBool::new(false));
        let clear = Cache::builder()
            .max_capacity(self.max_capacity)
            .time_to_live(self.negative_ttl)
            .build_with_hasher(foldhash::fast::RandomState::default());
        // Losing a positive entry to capacity pressure must not leave a negative that relied on
        // it: drop every negative (they are re-asked), and stop trusting a mirror that is no
        // longer complete.
        let on_positive_evicted = {
            let (mirroring, clear) = (Arc::clone(&mirroring), clear.clone());
            move |cause: moka::notification::RemovalCause| {
                if cause == moka::notification::RemovalCause::Size {
                    clear.invalidate_all();
                    if mirroring.swap(false, Ordering::AcqRel) {
                        tracing::warn!(
                            "revocation mirror exceeded max_capacity; falling back to lookup mode"
                        );
                    }
                }
            }
        };
        let revoked = || {
            let evicted = on_positive_evicted.clone();
            Cache::builder()
                .max_capacity(self.max_capacity)
                .expire_after(RevokedExpiry)
                .eviction_listener(move |_, _, cause| evicted(cause))
                .build_with_hasher(foldhash::fast::RandomState::default())
        };
        let evicted = on_positive_evicted.clone();
        let cutoffs = Cache::builder()
            .max_capacity(self.max_capacity)
            .eviction_listener(move |_, _, cause| evicted(cause))
            .build_with_hasher(foldhash::fast::RandomState::default());
        let tier = Arc::new(Tier {
            backend: self.backend,
            tokens: revoked(),
            sessions: revoked(),
            cutoffs,
            clear,
            mode: self.mode,
            max_capacity: self.max_capacity,
            mirroring,
            sync: SyncState {
                epoch: Instant::now(),
                connected: AtomicBool::new(false),
                last_sync_ms: AtomicU64::new(u64::MAX),
                max_staleness: self.max_staleness,
                synced: Notify::new(),
            },
            counters: Counters::default(),
            flights: Mutex::new(HashMap::new()),
            feed_task: Mutex::new(None),
        });
        let task = runtime.spawn(follow(Arc::downgrade(&tier)));
        *tier.feed_task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(MokaCache { tier })
    }
}

/// Follows the ledger: (mirror) load the live set, then apply the feed. Holds only a weak
/// reference, so dropping the last `MokaCache` ends it.
async fn follow<B: Ledger>(weak: Weak<Tier<B>>) {
    use std::future::poll_fn;
    let mut backoff = Duration::from_millis(50);
    let mut feed = loop {
        let Some(tier) = weak.upgrade() else { return };
        let after = if tier.mode == CacheMode::Mirror {
            match tier.backend.snapshot().await {
                Ok(snapshot) => {
                    let fits = snapshot.records.len() as u64 <= tier.max_capacity;
                    for record in &snapshot.records {
                        tier.apply(record);
                    }
                    if fits {
                        tier.mirroring.store(true, Ordering::Release);
                    } else {
                        tracing::warn!(
                            live = snapshot.records.len(),
                            max_capacity = tier.max_capacity,
                            "live revocations exceed the cache capacity; using lookup mode instead of mirror"
                        );
                    }
                    Some(snapshot.seq)
                }
                Err(error) => {
                    tracing::warn!(%error, "loading the revocation mirror failed; retrying");
                    drop(tier);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        } else {
            None
        };
        match tier.backend.feed(after) {
            Ok(feed) => break feed,
            Err(error) => {
                tracing::warn!(%error, "subscribing to revocation changes failed; retrying");
                drop(tier);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    loop {
        let item = poll_fn(|cx| Pin::new(&mut feed).poll_next(cx)).await;
        let (Some(item), Some(tier)) = (item, weak.upgrade()) else {
            return;
        };
        match item {
            FeedItem::Event(event) => {
                tier.apply(&event.record);
                bump(&tier.counters.events_applied);
                let lag = SystemTime::now()
                    .duration_since(event.record.revoked_at)
                    .unwrap_or_default();
                let lag_ms = lag.as_millis() as u64;
                tier.counters.last_propagation_ms.store(lag_ms, Ordering::Relaxed);
                tier.counters
                    .max_propagation_ms
                    .fetch_max(lag_ms, Ordering::Relaxed);
            }
            FeedItem::InSync { .. } => {
                let was_connected = tier.sync.connected.swap(true, Ordering::AcqRel);
                let had_synced = tier.sync.last_sync_ms.load(Ordering::Acquire) != u64::MAX;
                if !was_connected && had_synced {
                    bump(&tier.counters.resyncs);
                }
                let now_ms = tier.sync.epoch.elapsed().as_millis() as u64;
                tier.sync.last_sync_ms.store(now_ms, Ordering::Release);
                tier.sync.synced.notify_waiters();
            }
            FeedItem::Disconnected(error) => {
                if tier.sync.connected.swap(false, Ordering::AcqRel) {
                    tracing::warn!(%error, "revocation change feed disconnected; not trusting cached negatives");
                }
            }
        }
    }
}

/// How long a revocation of a token (or session) expiring at `expires_at` is kept in memory:
/// until that expiry plus [`POSITIVE_GRACE`], and at least the grace from now, so a row whose
/// expiry is already past (written by hand as `'-infinity'`, say) is still enforced for a while.
/// `None` keeps it until it is removed: the expiry lies beyond what `Instant` can represent
/// (`'infinity'`, an `exp` near `u64::MAX`).
fn keep_until(expires_at: SystemTime) -> Option<Instant> {
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .checked_add(POSITIVE_GRACE)?;
    Instant::now().checked_add(left)
}

/// [`keep_until`] for a token's `exp` claim; a token without `exp` never expires.
fn deadline_from_exp(exp: Option<u64>) -> Option<Instant> {
    exp.and_then(|exp| keep_until(super::from_unix_seconds(exp)))
}

impl<B> Tier<B> {
    /// `(trust negatives, trust mirror misses)` as of now, reading the clock once.
    fn trust(&self) -> (bool, bool) {
        let within = self.sync.within_staleness();
        (
            within && self.sync.connected.load(Ordering::Acquire),
            within && self.mirroring.load(Ordering::Acquire),
        )
    }

    /// The answer memory can give: revoked entries always; "not revoked" when `trust_clear`
    /// and a negative entry exists, or when `mirror` (a complete mirror has no entry).
    /// Positive checks use `contains_key`, which records no read: most keys are not revoked.
    fn answer_from_memory(&self, facts: &TokenFacts<'_>, trust_clear: bool, mirror: bool) -> Option<Verdict> {
        if facts.jti.is_some_and(|jti| self.tokens.contains_key(jti)) {
            return Some(Verdict::Revoked(RevokedBy::Token));
        }
        if facts
            .session_id
            .is_some_and(|sid| self.sessions.contains_key(sid))
        {
            return Some(Verdict::Revoked(RevokedBy::Session));
        }
        if let Some(sub) = facts.subject
            && self.cutoffs.contains_key(sub)
            && self
                .cutoffs
                .get(sub)
                .is_some_and(|cutoff| subject_cutoff_covers(cutoff, facts.issued_at))
        {
            return Some(Verdict::Revoked(RevokedBy::Subject));
        }
        if mirror {
            return Some(Verdict::Active);
        }
        let keys = TokenKeysRef {
            jti: facts.jti,
            sid: facts.session_id,
            sub: facts.subject,
        };
        (trust_clear && self.clear.contains_key(&keys)).then_some(Verdict::Active)
    }

    fn count(&self, answer: &Result<Verdict, StoreError>) {
        bump(match answer {
            Ok(Verdict::Active) => &self.counters.active,
            Ok(Verdict::Revoked(RevokedBy::Token)) => &self.counters.revoked_token,
            Ok(Verdict::Revoked(RevokedBy::Session)) => &self.counters.revoked_session,
            Ok(Verdict::Revoked(RevokedBy::Subject)) => &self.counters.revoked_subject,
            Err(_) => &self.counters.errors,
        });
    }

    fn put_revoked(&self, cache: &Map<String, Revoked>, key: &str, until: Option<Instant>) {
        cache.insert(key.to_owned(), Revoked { until });
    }

    /// A revocation of a token (or session) expiring at `expires_at`, kept as [`keep_until`]
    /// says.
    fn remember_revoked(&self, cache: &Map<String, Revoked>, key: &str, expires_at: SystemTime) {
        self.put_revoked(cache, key, keep_until(expires_at));
    }

    /// Moves a subject's cutoff forward (never back).
    fn put_cutoff(&self, subject: &str, cutoff: u64) {
        self.cutoffs
            .entry_by_ref(subject)
            .and_compute_with(|existing| match existing {
                Some(current) if *current.value() >= cutoff => Op::Nop,
                _ => Op::Put(cutoff),
            });
    }

    /// Applies one ledger record (from the feed, a snapshot, or a local write).
    fn apply(&self, record: &RevocationRecord) {
        match record.kind {
            RevocationKind::Token | RevocationKind::Session => {
                let cache = if record.kind == RevocationKind::Token {
                    &self.tokens
                } else {
                    &self.sessions
                };
                match record.expires_at {
                    Some(expires_at) => self.remember_revoked(cache, &record.key, expires_at),
                    None => self.put_revoked(cache, &record.key, None),
                }
            }
            RevocationKind::Subject => {
                if let Some(not_before) = record.not_before {
                    self.put_cutoff(&record.key, unix_seconds(not_before));
                }
            }
        }
    }

    /// Remembers a lookup's answers: each revoked key on its own, and "not revoked" for the
    /// token's keys together. A revocation that lands while the lookup is in flight is applied
    /// as a positive entry, and positives are checked before negatives, so the lookup's older
    /// answer can never hide it.
    fn remember(&self, keys: &TokenKeys, lookup: &Lookup, issued_at: Option<u64>, exp: Option<u64>) {
        if let (true, Some(jti)) = (lookup.token_revoked, &keys.jti) {
            self.put_revoked(&self.tokens, jti, deadline_from_exp(exp));
        }
        if let (true, Some(sid)) = (lookup.session_revoked, &keys.sid) {
            self.put_revoked(&self.sessions, sid, deadline_from_exp(exp));
        }
        if let (Some(cutoff), Some(sub)) = (lookup.subject_cutoff, &keys.sub) {
            self.put_cutoff(sub, cutoff);
        }
        if lookup.verdict(issued_at) == Verdict::Active && !self.mirroring.load(Ordering::Acquire) {
            self.clear.insert(keys.clone(), ());
        }
    }
}

impl<B: Ledger> Tier<B> {
    /// The slow path: one ledger lookup per set of keys, however many checks wait for it.
    async fn check_slow(
        self: Arc<Self>,
        key: TokenKeys,
        issued_at: Option<u64>,
        expires_at: Option<u64>,
    ) -> Result<Verdict, StoreError> {
        let (cell, joined) = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&key) {
                Some(cell) => (Arc::clone(cell), true),
                None => {
                    // A flight for these keys may have just ended: its answer is remembered before
                    // the flight is removed (under this lock), so look again before starting one.
                    let (trust_clear, trust_misses) = self.trust();
                    if let Some(verdict) =
                        self.answer_from_memory(&key.facts(issued_at, expires_at), trust_clear, trust_misses)
                    {
                        return Ok(verdict);
                    }
                    let cell = Arc::new(OnceCell::new());
                    flights.insert(key.clone(), Arc::clone(&cell));
                    (cell, false)
                }
            }
        };
        if joined {
            bump(&self.counters.coalesced_waits);
        }
        let result = cell
            .get_or_init(|| async {
                bump(&self.counters.backend_calls);
                let lookup = self.backend.lookup(&key.facts(issued_at, expires_at)).await;
                if let Ok(lookup) = &lookup {
                    // Remembered before the flight ends, so a check arriving after it hits memory.
                    self.remember(&key, lookup, issued_at, expires_at);
                }
                lookup.map_err(Arc::new)
            })
            .await
            .clone();
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if flights
                .get(&key)
                .is_some_and(|current| Arc::ptr_eq(current, &cell))
            {
                flights.remove(&key);
            }
        }
        match result {
            Ok(lookup) => Ok(lookup.verdict(issued_at)),
            Err(error) => {
                // The ledger is unreachable: a negative no older than `max_staleness` past the
                // last proof of sync may still answer.
                let stale_ok = self.sync.within_staleness();
                match self.answer_from_memory(
                    &key.facts(issued_at, expires_at),
                    stale_ok,
                    stale_ok && self.mirroring.load(Ordering::Acquire),
                ) {
                    Some(verdict) => Ok(verdict),
                    None => Err(shared_error(&error)),
                }
            }
        }
    }
}

/// A copy of a shared lookup error for one waiter, keeping its kind.
fn shared_error(error: &Arc<StoreError>) -> StoreError {
    #[derive(Debug)]
    struct Shared(Arc<StoreError>);
    impl std::fmt::Display for Shared {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }
    impl std::error::Error for Shared {}
    match &**error {
        StoreError::Timeout(timeout) => StoreError::Timeout(*timeout),
        StoreError::InvalidInput(what) => StoreError::InvalidInput(what),
        StoreError::Query(_) => StoreError::Query(Box::new(Shared(Arc::clone(error)))),
        _ => StoreError::Unavailable(Box::new(Shared(Arc::clone(error)))),
    }
}

impl<B: Ledger> MokaCache<B> {
    /// The ledger behind the tier.
    pub fn backend(&self) -> &B {
        &self.tier.backend
    }

    /// The configured mode (see [`CacheMetrics::mirroring`] for whether mirroring is active).
    pub fn mode(&self) -> CacheMode {
        self.tier.mode
    }

    /// The counters so far.
    pub fn metrics(&self) -> CacheMetrics {
        let c = &self.tier.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheMetrics {
            active: read(&c.active),
            revoked_token: read(&c.revoked_token),
            revoked_session: read(&c.revoked_session),
            revoked_subject: read(&c.revoked_subject),
            errors: read(&c.errors),
            hits: read(&c.hits),
            misses: read(&c.misses),
            backend_calls: read(&c.backend_calls),
            coalesced_waits: read(&c.coalesced_waits),
            events_applied: read(&c.events_applied),
            resyncs: read(&c.resyncs),
            live_entries: self.tier.tokens.entry_count()
                + self.tier.sessions.entry_count()
                + self.tier.cutoffs.entry_count()
                + self.tier.clear.entry_count(),
            last_propagation_ms: read(&c.last_propagation_ms),
            max_propagation_ms: read(&c.max_propagation_ms),
            mirroring: self.tier.mirroring.load(Ordering::Acquire),
        }
    }

    /// Whether cached "not revoked" answers are trusted right now (the feed is connected and
    /// its last proof of sync is within `max_staleness`).
    pub fn is_in_sync(&self) -> bool {
        self.tier.sync.fresh()
    }

    /// Waits until the tier is in sync (and, in mirror mode, loaded), at most `timeout`.
    /// Returns whether it is.
    pub async fn wait_in_sync(&self, timeout: Duration) -> bool {
        let ready = || {
            self.tier.sync.fresh()
                && (self.tier.mode != CacheMode::Mirror || self.tier.mirroring.load(Ordering::Acquire))
        };
        let wait = async {
            loop {
                let notified = self.tier.sync.synced.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if ready() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() || ready()
    }
}

impl<B: Ledger> RevocationBackend for MokaCache<B> {
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

    /// Answers from memory when it can: revoked entries always, negatives while in sync, and
    /// (mirror mode) misses within `max_staleness`. No allocation, no lock, no await.
    fn try_check(&self, facts: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        let tier = &*self.tier;
        let (trust_clear, trust_misses) = tier.trust();
        match tier.answer_from_memory(facts, trust_clear, trust_misses) {
            Some(verdict) => {
                bump(&tier.counters.hits);
                let answer = Ok(verdict);
                tier.count(&answer);
                Some(answer)
            }
            None => {
                bump(&tier.counters.misses);
                None
            }
        }
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        let tier = Arc::clone(&self.tier);
        let key = TokenKeys::of(facts);
        let (issued_at, expires_at) = (facts.issued_at, facts.expires_at);
        Box::pin(async move {
            let counted = Arc::clone(&tier);
            let answer = tier.check_slow(key, issued_at, expires_at).await;
            counted.count(&answer);
            answer
        })
    }
}

/// Writes go to the ledger first; the local memory is updated only after the ledger said `Ok`
/// (read-your-writes on this instance).
impl<B: Ledger> RevocationStore for MokaCache<B> {
    async fn revoke(
        &self,
        jti: &str,
        subject: Option<&str>,
        expires_at: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let created = self
            .tier
            .backend
            .revoke(jti, subject, expires_at, reason, revoked_by)
            .await?;
        self.tier.remember_revoked(&self.tier.tokens, jti, expires_at);
        Ok(created)
    }

    async fn revoke_session(
        &self,
        sid: &str,
        subject: Option<&str>,
        expires_at: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let created = self
            .tier
            .backend
            .revoke_session(sid, subject, expires_at, reason, revoked_by)
            .await?;
        self.tier.remember_revoked(&self.tier.sessions, sid, expires_at);
        Ok(created)
    }

    async fn revoke_subject(
        &self,
        subject: &str,
        not_before: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<(), StoreError> {
        self.tier
            .backend
            .revoke_subject(subject, not_before, reason, revoked_by)
            .await?;
        self.tier.put_cutoff(subject, unix_seconds(not_before));
        Ok(())
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        self.tier.backend.list_by_subject(subject, limit).await
    }

    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        self.tier.backend.purge_expired(margin).await
    }
}
