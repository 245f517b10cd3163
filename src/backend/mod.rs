//! The backend chain: what a token's revocation status is, and how revocations are written.
//!
//! This module owns the two traits every tier implements and the vocabulary they share:
//!
//! - [`RevocationBackend`] is the read side, asked on every request. It has a synchronous fast
//!   path ([`RevocationBackend::try_check`]) that an in-memory tier answers without allocating or
//!   awaiting, and an async slow path ([`RevocationBackend::check`]) for tiers that must ask
//!   something remote.
//! - [`RevocationStore`] is the write side, called from the application's handlers and admin
//!   tools: revoke one token, one session, or every token a subject was issued up to a moment.
//!
//! Which token facts are revoked, and the one rule that decides a subject cutoff
//! ([`subject_cutoff_covers`]), live here so that every backend answers the same way. Storage
//! lives in the backends ([`MemoryStore`] here; Postgres and the cache tier in their own
//! modules).
//!
//! One rule for time: what comes from a token ([`TokenFacts`], the layer's `Claims`) is a JWT
//! NumericDate, whole seconds since the Unix epoch as a `u64`, exactly as the token says; what the
//! application tells a store or reads back from it ([`Revocation`], [`RevocationRecord`]) is a
//! [`SystemTime`]. [`unix_seconds`] and [`from_unix_seconds`] convert, saturating instead of
//! panicking. ([`Lookup::subject_cutoff`] is compared with `iat`, so it is in the token's unit.)

mod error;
mod memory;
#[cfg(feature = "moka")]
pub mod moka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
mod revocation;

pub use error::{BoxError, StoreError};
pub use memory::MemoryStore;
pub use revocation::{Revocation, RevocationKind, RevocationTarget};

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the backend needs to know about a verified token, borrowed from its claims.
///
/// Times are JWT NumericDates: whole seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenFacts<'a> {
    /// The token's id (`jti`), or the id the layer derived for it under
    /// [`MissingJti::HashSigningInput`](crate::MissingJti::HashSigningInput).
    pub jti: Option<&'a str>,
    /// The session the token belongs to (`sid`).
    pub session_id: Option<&'a str>,
    /// The token's subject (`sub`).
    pub subject: Option<&'a str>,
    /// When the token was issued (`iat`).
    pub issued_at: Option<u64>,
    /// When the token expires (`exp`).
    pub expires_at: Option<u64>,
    /// The issuer its session and subject revocations are keyed by: its `iss` when the layer
    /// [keys revocations by issuer](crate::JwtRevocationBuilder::key_revocations_by_issuer)
    /// (by default, when its backend declares [`issuer_keying`](RevocationBackend::issuer_keying)
    /// and the layer knows its tokens' issuer), `None` otherwise.
    ///
    /// With an issuer, a session or subject revocation applies to the token when it was filed
    /// without an issuer or under this one. Without, it applies when filed under any issuer, or
    /// none: a revocation is never ignored because the layer checking it does not key by issuer.
    /// `jti`s are never keyed: RFC 7519 §4.1.7 requires them unique across issuers.
    pub issuer: Option<&'a str>,
}

/// A backend's answer for one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not revoked: the request may go on.
    Active,
    /// Revoked, and by which kind of revocation.
    Revoked(RevokedBy),
}

/// Which revocation caught a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokedBy {
    /// The token itself, by its `jti`.
    Token,
    /// Its session, by its `sid`.
    Session,
    /// Its subject's cutoff: it was issued at or before the subject's `not_before`.
    Subject,
}

impl Verdict {
    /// Combines the three lookups every backend makes into one verdict, in a fixed order of
    /// precedence (token, then session, then subject), so all backends report the same cause.
    pub fn from_lookups(
        token_revoked: bool,
        session_revoked: bool,
        subject_cutoff: Option<u64>,
        issued_at: Option<u64>,
    ) -> Self {
        if token_revoked {
            Verdict::Revoked(RevokedBy::Token)
        } else if session_revoked {
            Verdict::Revoked(RevokedBy::Session)
        } else if subject_cutoff.is_some_and(|cutoff| subject_cutoff_covers(cutoff, issued_at)) {
            Verdict::Revoked(RevokedBy::Subject)
        } else {
            Verdict::Active
        }
    }
}

/// The subject-cutoff rule: does a cutoff at `not_before` (Unix seconds) revoke a token issued
/// at `issued_at`?
///
/// A token is revoked when `iat <= not_before`. JWT `iat` has one-second resolution and
/// cutoffs are stored truncated to the second, so a token issued *in the same second* as a
/// "log out everywhere", even a moment after it, is revoked too. That is the safe side of the
/// ambiguity: a token minted just before the cutoff must never survive it, and the cost is that a
/// client who logs in again within that second has to log in once more. A token without `iat`
/// cannot show it was issued after the cutoff, so it is covered.
///
/// ```
/// use tower_jwt_revocation::backend::subject_cutoff_covers;
/// assert!(subject_cutoff_covers(1_000, Some(999)));
/// assert!(subject_cutoff_covers(1_000, Some(1_000)));
/// assert!(!subject_cutoff_covers(1_000, Some(1_001)));
/// assert!(subject_cutoff_covers(1_000, None));
/// ```
pub fn subject_cutoff_covers(not_before: u64, issued_at: Option<u64>) -> bool {
    issued_at.is_none_or(|iat| iat <= not_before)
}

/// Whole seconds since the Unix epoch; times before it count as 0.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `SystemTime` of a Unix timestamp in seconds, saturating at [`far_future`] for values the
/// platform's clock cannot represent (a token's `exp` may be any `u64`; adding it to the epoch
/// must not panic).
pub fn from_unix_seconds(seconds: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))
        .unwrap_or_else(far_future)
}

/// The latest moment this crate represents: what `'infinity'` in the ledger, or an `exp` past the
/// platform's clock, becomes. A revocation kept until then is kept until it is deleted by hand.
pub fn far_future() -> SystemTime {
    // `SystemTime` spans differ by platform (i64 seconds on Unix, u64 100 ns ticks on Windows):
    // take the largest of these that the platform accepts.
    [i64::MAX as u64, 1 << 40, u64::from(u32::MAX)]
        .into_iter()
        .find_map(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds)))
        .unwrap_or(UNIX_EPOCH)
}

/// `time + duration`, saturating at [`far_future`] instead of panicking.
pub fn saturating_add(time: SystemTime, duration: Duration) -> SystemTime {
    time.checked_add(duration).unwrap_or_else(far_future)
}

/// How old a subject cutoff may grow before a store that knows the longest token lifetime
/// purges it: `lifetime + 2 × margin`, where `margin` is at least the validation leeway. A
/// token the cutoff covers was issued at or before it; the layer accepts `exp - iat` up to
/// `lifetime + leeway` (one leeway) and `jsonwebtoken` accepts it until `exp + leeway` (the
/// other), so the last one such a cutoff revokes stops validating `lifetime + 2 × leeway` after
/// it.
pub(crate) fn cutoff_retention(lifetime: Duration, margin: Duration) -> Duration {
    lifetime.saturating_add(margin.saturating_mul(2))
}

/// The read side of a backend, asked on every request.
///
/// Implementations answer from what they hold in [`try_check`](Self::try_check) when they can:
/// the layer calls it first and only falls back to [`check`](Self::check) on `None`, so a tier
/// that answers from memory costs the request no allocation and no `.await`.
pub trait RevocationBackend: Send + Sync + 'static {
    /// The future of the slow path.
    type Future: Future<Output = Result<Verdict, StoreError>> + Send + 'static;

    /// The synchronous fast path: `Some` when the answer is known without waiting, `None` when
    /// the caller must use [`check`](Self::check).
    fn try_check(&self, facts: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>>;

    /// The asynchronous slow path. The returned future owns what it needs (it is `'static`).
    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future;

    /// Whether this backend has started: for a cache tier, that it has proved sync with its
    /// ledger since it started (before that it answers nothing from memory, so every check is a
    /// lookup). A readiness probe (the demo's `GET /readyz`) routes traffic only to instances
    /// where this holds; it is a start-up gate, never a health check of a store every instance
    /// shares. The default, for backends that ask their store on every check: `true`. A
    /// backend that wraps another must forward it. Never waits; cheap enough to call per probe.
    fn is_ready(&self) -> bool {
        true
    }

    /// Whether every instance sharing this backend's ledger enforces revocations keyed by
    /// issuer ([`TokenFacts::issuer`]), so that they may be filed: the operator's declaration,
    /// made on the store once a rolling upgrade to a build that reads the keyed tables is
    /// complete (`PgStore::with_issuer_keying`, [`MemoryStore::with_issuer_keying`]). Layers
    /// and receivers built over the backend take their default from it, so that the layers
    /// and receivers sharing a store key alike: a layer with a known issuer keys its tokens'
    /// revocations, a receiver files under its provider's issuer. Default `false`: nothing is
    /// filed keyed, so a build that predates keying enforces everything this one files. A
    /// backend that wraps another must forward it.
    fn issuer_keying(&self) -> bool {
        false
    }
}

/// One stored revocation, as listed by [`RevocationStore::list_by_subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// What is revoked.
    pub kind: RevocationKind,
    /// The `jti`, `sid` or subject the revocation is keyed by.
    pub key: String,
    /// For sessions and subject cutoffs: the issuer whose `sid` or `sub` the key is, when the
    /// revocation is keyed by issuer (see [`TokenFacts::issuer`]); `None` applies to every
    /// issuer.
    pub issuer: Option<String>,
    /// The subject the revoked token or session belonged to, when known.
    pub subject: Option<String>,
    /// For tokens and sessions: how long the revocation must be kept (the token's own expiry).
    pub expires_at: Option<SystemTime>,
    /// For subject cutoffs: tokens issued at or before this moment are revoked.
    pub not_before: Option<SystemTime>,
    /// When the revocation was recorded.
    pub revoked_at: SystemTime,
    /// Free-text reason given by the revoker.
    pub reason: Option<String>,
    /// Who revoked (an admin's id, a service name).
    pub revoked_by: Option<String>,
}

/// One change to a durable ledger, in the ledger's global order (`seq`), as a change feed
/// delivers it to the caches of every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationEvent {
    /// The ledger's change number: strictly increasing in commit order.
    pub seq: i64,
    /// The revocation as it now stands.
    pub record: RevocationRecord,
}

/// The write side of a backend: what handlers and admin tools call.
///
/// Every method returns `Ok` only once the revocation is as durable as the store can make it
/// (in memory for [`MemoryStore`]; committed for a database store), and every later
/// [`RevocationBackend::check`] of the same store sees it.
pub trait RevocationStore: Send + Sync + 'static {
    /// Files `revocation`: one token, one session, or a subject's cutoff (see [`Revocation`]).
    /// Idempotent: returns `true` if this call changed the ledger (created the token or session
    /// revocation, or moved the cutoff forward), `false` if it was already in force (the first
    /// record of a token or session is kept as it was; a cutoff never moves back).
    fn revoke(&self, revocation: &Revocation<'_>) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The revocations filed for `subject` (tokens, sessions and its cutoff), newest first, at
    /// most `limit` of them.
    fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RevocationRecord>, StoreError>> + Send;

    /// Deletes token and session revocations whose `expires_at` is more than `margin` in the
    /// past, and returns how many were deleted. `margin` should be at least the validation
    /// leeway, so a record is never dropped while its token could still be accepted. A store
    /// that knows the longest token lifetime also deletes subject cutoffs older than
    /// `lifetime + 2 × margin` (a covered token may be accepted for one leeway past its
    /// lifetime's bound, and then one more past its `exp`).
    fn purge_expired(&self, margin: Duration) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// What a ledger holds for one token's keys, answered per key, so a cache can remember each key
/// on its own (a session's revocation applies to every token carrying its `sid`).
///
/// Revocations filed without an issuer and those keyed by issuer are answered apart, so a
/// cache can tell what applies to every issuer from what applies to one (see
/// [`TokenFacts::issuer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lookup {
    /// The `jti` is revoked.
    pub token_revoked: bool,
    /// The `sid` is revoked for every issuer.
    pub session_revoked: bool,
    /// The subject's cutoff for every issuer (Unix seconds), if it has one.
    pub subject_cutoff: Option<u64>,
    /// The `sid` is revoked under the token's issuer; for facts without an issuer, under any.
    pub issuer_session_revoked: bool,
    /// The subject's cutoff under the token's issuer; for facts without an issuer, the latest
    /// under any.
    pub issuer_subject_cutoff: Option<u64>,
}

impl Lookup {
    /// The verdict for a token issued at `issued_at`.
    pub fn verdict(&self, issued_at: Option<u64>) -> Verdict {
        Verdict::from_lookups(
            self.token_revoked,
            self.session_revoked || self.issuer_session_revoked,
            self.subject_cutoff.max(self.issuer_subject_cutoff),
            issued_at,
        )
    }
}

/// Every live revocation of a ledger at one moment, and the `seq` of that moment: what a
/// mirroring cache loads before following the change feed from `seq` on.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every revocation the ledger holds: tokens and sessions (including those whose token
    /// expired, which may still validate within a leeway, until they are purged) and subject
    /// cutoffs.
    pub records: Vec<RevocationRecord>,
    /// The ledger's last `seq` included in `records`.
    pub seq: i64,
}

/// What a mirror needs of one live revocation: its key and how long it is in force. What
/// [`Ledger::snapshot_pages`] streams (a [`RevocationRecord`] without the bookkeeping columns,
/// so a large live set is read without them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRevocation {
    /// What is revoked.
    pub kind: RevocationKind,
    /// The `jti`, `sid` or subject the revocation is keyed by.
    pub key: String,
    /// The issuer it is keyed by, if any (see [`RevocationRecord::issuer`]).
    pub issuer: Option<String>,
    /// For tokens and sessions: until when the revocation must be kept.
    pub expires_at: Option<SystemTime>,
    /// For subject cutoffs: tokens issued at or before this moment are revoked.
    pub not_before: Option<SystemTime>,
}

impl From<RevocationRecord> for LiveRevocation {
    fn from(record: RevocationRecord) -> Self {
        Self {
            kind: record.kind,
            key: record.key,
            issuer: record.issuer,
            expires_at: record.expires_at,
            not_before: record.not_before,
        }
    }
}

/// What a change feed reports.
#[derive(Debug)]
pub enum FeedItem {
    /// A committed revocation, in `seq` order.
    Event(RevocationEvent),
    /// Every revocation committed before this moment has been delivered (sent after each
    /// catch-up and each heartbeat).
    InSync {
        /// The last `seq` delivered.
        last_seq: i64,
    },
    /// Every revocation committed before `proved_at` has been delivered: a proof of sync made
    /// elsewhere and delivered later (a relay's marker, see `backend::nats`). The cache dates
    /// its last proof of sync `proved_at` (never later than now), not when this arrived.
    InSyncAt {
        /// The last `seq` delivered.
        last_seq: i64,
        /// When the proof's read of the ledger began, on the prover's clock.
        proved_at: SystemTime,
    },
    /// The feed's connection failed: until the next `InSync`, revocations committed meanwhile
    /// may not have been delivered yet (they will be, after the reconnect).
    Disconnected(StoreError),
}

/// A durable, shared ledger that a cache tier can sit in front of: per-key lookups, a snapshot
/// of the live set, and a change feed. `PgStore` (feature `postgres`) is one; a Redis or HTTP
/// ledger can be another.
pub trait Ledger: RevocationStore + Clone {
    /// The future of [`lookup`](Self::lookup); it owns what it needs.
    type LookupFuture: Future<Output = Result<Lookup, StoreError>> + Send + 'static;
    /// The change feed.
    type Feed: futures_core::Stream<Item = FeedItem> + Send + Unpin + 'static;

    /// Answers the three keys of `facts` (one round trip for a remote ledger).
    fn lookup(&self, facts: &TokenFacts<'_>) -> Self::LookupFuture;

    /// Every revocation the ledger holds (see [`Snapshot::records`]), consistent with one `seq`.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// The same live set as [`snapshot`](Self::snapshot), handed to `page` a page at a time as
    /// it is read, so that a mirror of millions of revocations never holds them all at once;
    /// returns the `seq` the pages are consistent with. A ledger whose live set can be large
    /// should override it (`PgStore` reads through a cursor); the default reads
    /// [`snapshot`](Self::snapshot) whole and hands it over as one page.
    fn snapshot_pages<'a>(
        &'a self,
        page: &'a mut (dyn FnMut(Vec<LiveRevocation>) + Send),
    ) -> impl Future<Output = Result<i64, StoreError>> + Send + 'a {
        async move {
            let snapshot = self.snapshot().await?;
            page(snapshot.records.into_iter().map(LiveRevocation::from).collect());
            Ok(snapshot.seq)
        }
    }

    /// A change feed delivering every revocation after `after` (or after the current end when
    /// `None`), reconnecting and catching up by itself.
    fn feed(&self, after: Option<i64>) -> Result<Self::Feed, StoreError>;

    /// What a cache tier over this ledger answers for [`RevocationBackend::issuer_keying`].
    /// Default `false`.
    fn issuer_keying(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_beats_session_beats_subject() {
        assert_eq!(
            Verdict::from_lookups(true, true, Some(10), Some(5)),
            Verdict::Revoked(RevokedBy::Token)
        );
        assert_eq!(
            Verdict::from_lookups(false, true, Some(10), Some(5)),
            Verdict::Revoked(RevokedBy::Session)
        );
        assert_eq!(
            Verdict::from_lookups(false, false, Some(10), Some(5)),
            Verdict::Revoked(RevokedBy::Subject)
        );
        assert_eq!(
            Verdict::from_lookups(false, false, Some(10), Some(11)),
            Verdict::Active
        );
        assert_eq!(Verdict::from_lookups(false, false, None, None), Verdict::Active);
    }
}
