//! [`PgStore`]: the durable revocation ledger in Postgres, shared by every server instance.
//!
//! This module owns the SQL side: the schema (`migrations/`, embedded as [`MIGRATOR`]), the
//! queries behind [`RevocationStore`] and [`RevocationBackend`], batched purging
//! ([`spawn_purger`]), and the change feed ([`PgStore::subscribe`]) through which every instance
//! learns of revocations written by any other (or by `psql`). It does not cache: every check is
//! one round trip. Put the cache tier in front of it for the per-request path.
//!
//! # Guarantees
//!
//! - A `revoke*` call returns `Ok` only after its transaction committed: the revocation survives
//!   restarts of every process, and every later `check` on any pool sees it.
//! - Every operation is bounded by [`PgStore::with_timeout`] (default 2 s), covering the wait for
//!   a pooled connection and the query itself. A timeout or a connection failure is a
//!   [`StoreError`], which the layer hands to its failure policy: never a panic, never "not
//!   revoked".
//! - The change feed delivers every committed revocation exactly in `seq` order, at least once,
//!   across lost connections: after a reconnect it re-reads everything past the last `seq` it
//!   delivered ([`PgStore::events_since`]). `seq` is drawn in commit order (see the migration), so
//!   "past the last `seq`" misses nothing.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    FeedItem, Ledger, Lookup, RevocationBackend, RevocationEvent, RevocationKind, RevocationRecord,
    RevocationStore, Snapshot, StoreError, TokenFacts, Verdict,
};

/// The crate's migrations, for `sqlx::test(migrator = ...)` or running them yourself.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The `LISTEN` channel the ledger's triggers notify.
pub const CHANNEL: &str = "jwt_revocation";

/// The `application_name` of the change feed's connection, to find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "tower-jwt-revocation-listener";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
const PURGE_BATCH: i64 = 1_000;
const CATCH_UP_BATCH: i64 = 1_000;
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The columns of `jwt_revocation_log` as [`record_from_row`] reads them; a macro so that
/// queries are assembled with `concat!` at compile time, never at run time.
macro_rules! log_select {
    () => {
        "SELECT kind, key, subject, \
    extract(epoch FROM expires_at)::float8 AS expires_at, \
    extract(epoch FROM not_before)::float8 AS not_before, \
    extract(epoch FROM revoked_at)::float8 AS revoked_at, \
    reason, revoked_by, seq FROM jwt_revocation_log"
    };
}

/// A revocation ledger on a Postgres pool. Cheap to clone (clones share the pool).
///
/// ```no_run
/// use tower_jwt_revocation::{JwtRevocationLayer, PgStore};
/// use tower_jwt_revocation::jsonwebtoken::DecodingKey;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PgStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.migrate().await?;
/// let layer = JwtRevocationLayer::builder(store.clone())
///     .decoding_key(DecodingKey::from_secret(b"secret"))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    timeout: Duration,
    heartbeat: Duration,
    listener_name: std::borrow::Cow<'static, str>,
}

impl PgStore {
    /// Connects a pool to `url` (whose connection wait is bounded by the store's timeout) and
    /// checks that the database answers.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Query(Box::new(e)))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(DEFAULT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(classify)?;
        Ok(Self::new(pool))
    }

    /// A store on an existing pool. Set the pool's `acquire_timeout` no longer than
    /// [`with_timeout`](Self::with_timeout): the store's own timeout bounds each call anyway.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            timeout: DEFAULT_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            listener_name: LISTENER_APPLICATION_NAME.into(),
        }
    }

    /// Bounds every call (connection wait plus query). Default 2 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often the change feed proves its connection alive (and reports
    /// [`FeedItem::InSync`]). Default 2 s.
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The `application_name` of the change feed's connection (default
    /// [`LISTENER_APPLICATION_NAME`]), to tell instances apart in `pg_stat_activity`.
    #[must_use]
    pub fn with_listener_name(mut self, name: impl Into<String>) -> Self {
        self.listener_name = name.into().into();
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs the crate's migrations (idempotent; the same files `sqlx migrate run` applies).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Query(Box::new(e)))
    }

    async fn bounded<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        bounded(self.timeout, operation).await
    }

    /// The highest `seq` in the ledger (0 when empty).
    pub async fn max_seq(&self) -> Result<i64, StoreError> {
        let query =
            sqlx::query_scalar::<_, i64>("SELECT coalesce(max(seq), 0)::int8 FROM jwt_revocation_log");
        self.bounded(query.fetch_one(&self.pool)).await
    }

    /// Every revocation with `seq` greater than `seq`, in `seq` order, at most `limit`: the
    /// catch-up read of the change feed, public for consumers that track their own position.
    pub async fn events_since(&self, seq: i64, limit: i64) -> Result<Vec<RevocationEvent>, StoreError> {
        let query = sqlx::query(concat!(log_select!(), " WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(seq)
            .bind(limit);
        let rows = self.bounded(query.fetch_all(&self.pool)).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// A change feed starting after the ledger's current end: see [`Subscription`].
    ///
    /// Needs a Tokio runtime (it spawns the feed's task); outside one it returns an error.
    pub fn subscribe(&self) -> Result<Subscription, StoreError> {
        self.subscribe_after(None)
    }

    /// A change feed starting after `seq`: the events past it are delivered first.
    pub fn subscribe_from(&self, seq: i64) -> Result<Subscription, StoreError> {
        self.subscribe_after(Some(seq))
    }

    fn subscribe_after(&self, seq: Option<i64>) -> Result<Subscription, StoreError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        // The feed gets its own one-connection pool, named so operators (and tests) can find it.
        let options = self
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&self.listener_name);
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.timeout)
            .connect_lazy_with(options);
        let (sender, receiver) = mpsc::channel(1024);
        let task = runtime.spawn(run_feed(self.clone(), listen_pool, seq, sender));
        Ok(Subscription { receiver, task })
    }

    async fn insert_keyed(
        &self,
        sql: &'static str,
        key: &str,
        subject: Option<&str>,
        expires_at: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidInput("empty revocation key"));
        }
        let query = sqlx::query(sql)
            .bind(key)
            .bind(subject)
            .bind(epoch_seconds(expires_at))
            .bind(reason)
            .bind(revoked_by);
        let result = self.bounded(query.execute(&self.pool)).await?;
        Ok(result.rows_affected() == 1)
    }
}

/// Runs `operation` within `timeout`, classifying its errors.
async fn bounded<T, F>(timeout: Duration, operation: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, sqlx::Error>>,
{
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// [`classify`], for the session module's queries.
pub(crate) fn bounded_sql(error: sqlx::Error) -> StoreError {
    classify(error)
}

/// Tells "the store cannot be reached" from "the store answered with an error".
fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::PoolTimedOut => StoreError::Unavailable(Box::new(error)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(Box::new(error)),
        sqlx::Error::Database(db)
            if db.code().is_some_and(|code| {
                // 08: connection exception; 28: authentication refused; 57P0x: shutdown /
                // cannot connect now; 53300: too many connections; 55000: the database does not
                // accept connections; 3D000: the database does not exist.
                code.starts_with("08")
                    || code.starts_with("28")
                    || code.starts_with("57P")
                    || matches!(code.as_ref(), "53300" | "55000" | "3D000")
            }) =>
        {
            StoreError::Unavailable(Box::new(error))
        }
        _ => StoreError::Query(Box::new(error)),
    }
}

/// The latest and earliest Unix seconds a Postgres `timestamptz` holds (294276 AD, 4714 BC).
const PG_MAX_EPOCH: f64 = 9_224_318_015_999.0;
const PG_MIN_EPOCH: f64 = -210_866_803_200.0;

/// Seconds since the Unix epoch as bound to `to_timestamp($n)`: a time outside Postgres' range
/// becomes `±Infinity`, which `to_timestamp` turns into `'infinity'` / `'-infinity'`, so a
/// revocation kept until [`far_future`](super::far_future) round-trips instead of failing.
pub(crate) fn epoch_seconds(time: SystemTime) -> f64 {
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    };
    if seconds > PG_MAX_EPOCH {
        f64::INFINITY
    } else if seconds < PG_MIN_EPOCH {
        f64::NEG_INFINITY
    } else {
        seconds
    }
}

/// The `SystemTime` of `extract(epoch FROM ...)`. Never panics: `'infinity'` (and anything past
/// the platform's clock) becomes [`far_future`](super::far_future), `'-infinity'` (and anything
/// before the clock's range) the earliest time the clock holds down to the Unix epoch.
pub(crate) fn from_epoch_seconds(seconds: f64) -> SystemTime {
    if seconds.is_nan() {
        return UNIX_EPOCH;
    }
    let magnitude = Duration::try_from_secs_f64(seconds.abs()).ok();
    if seconds >= 0.0 {
        magnitude
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .unwrap_or_else(super::far_future)
    } else {
        magnitude
            .and_then(|d| UNIX_EPOCH.checked_sub(d))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Whole Unix seconds of an epoch value, clamped to `u64` (a cutoff at `'-infinity'` covers only
/// tokens without `iat`; one at `'infinity'` covers every token).
pub(crate) fn epoch_to_unix_seconds(seconds: f64) -> u64 {
    if seconds.is_nan() || seconds <= 0.0 {
        0
    } else {
        // Saturating float-to-int conversion: `+Infinity` becomes `u64::MAX`.
        seconds.floor() as u64
    }
}

fn kind_from_str(kind: &str) -> Result<RevocationKind, StoreError> {
    match kind {
        "token" => Ok(RevocationKind::Token),
        "session" => Ok(RevocationKind::Session),
        "subject" => Ok(RevocationKind::Subject),
        _ => Err(StoreError::Query(
            format!("unknown revocation kind {kind:?}").into(),
        )),
    }
}

fn record_from_row(row: &PgRow) -> Result<RevocationRecord, StoreError> {
    let get_err = |e: sqlx::Error| StoreError::Query(Box::new(e));
    let kind: String = row.try_get("kind").map_err(get_err)?;
    Ok(RevocationRecord {
        kind: kind_from_str(&kind)?,
        key: row.try_get("key").map_err(get_err)?,
        subject: row.try_get("subject").map_err(get_err)?,
        expires_at: row
            .try_get::<Option<f64>, _>("expires_at")
            .map_err(get_err)?
            .map(from_epoch_seconds),
        not_before: row
            .try_get::<Option<f64>, _>("not_before")
            .map_err(get_err)?
            .map(from_epoch_seconds),
        revoked_at: from_epoch_seconds(row.try_get("revoked_at").map_err(get_err)?),
        reason: row.try_get("reason").map_err(get_err)?,
        revoked_by: row.try_get("revoked_by").map_err(get_err)?,
    })
}

fn event_from_row(row: &PgRow) -> Result<RevocationEvent, StoreError> {
    let seq = row.try_get("seq").map_err(|e| StoreError::Query(Box::new(e)))?;
    Ok(RevocationEvent {
        seq,
        record: record_from_row(row)?,
    })
}

/// The answer to one check: three lookups in one round trip. The cutoff is read as a float so
/// that `'infinity'` (a subject banned for good) arrives as `Infinity`, not as a cast error.
const CHECK_SQL: &str = "SELECT \
    EXISTS (SELECT 1 FROM jwt_revocations WHERE jti = $1) AS token, \
    EXISTS (SELECT 1 FROM jwt_session_revocations WHERE session_id = $2) AS session, \
    (SELECT extract(epoch FROM not_before)::float8 FROM jwt_subject_revocations WHERE subject = $3) AS cutoff";

impl RevocationBackend for PgStore {
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

    /// Always `None`: every answer needs a round trip.
    fn try_check(&self, _: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        None
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        let lookup = self.lookup(facts);
        let issued_at = facts.issued_at;
        Box::pin(async move { Ok(lookup.await?.verdict(issued_at)) })
    }
}

impl Ledger for PgStore {
    type LookupFuture = Pin<Box<dyn Future<Output = Result<Lookup, StoreError>> + Send>>;
    type Feed = Subscription;

    fn lookup(&self, facts: &TokenFacts<'_>) -> Self::LookupFuture {
        let pool = self.pool.clone();
        let timeout = self.timeout;
        let jti = facts.jti.map(str::to_owned);
        let sid = facts.session_id.map(str::to_owned);
        let sub = facts.subject.map(str::to_owned);
        Box::pin(async move {
            let query = sqlx::query(CHECK_SQL).bind(jti).bind(sid).bind(sub);
            let row = bounded(timeout, query.fetch_one(&pool)).await?;
            let get_err = |e: sqlx::Error| StoreError::Query(Box::new(e));
            let cutoff: Option<f64> = row.try_get("cutoff").map_err(get_err)?;
            Ok(Lookup {
                token_revoked: row.try_get("token").map_err(get_err)?,
                session_revoked: row.try_get("session").map_err(get_err)?,
                subject_cutoff: cutoff.map(epoch_to_unix_seconds),
            })
        })
    }

    /// Reads the live set and its `seq` in one `REPEATABLE READ` transaction, so that following
    /// the feed from that `seq` misses nothing. Bounded by 30 s or the store's timeout, whichever
    /// is longer (a live set of a million rows takes seconds).
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let read = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            let seq: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0)::int8 FROM jwt_revocation_log")
                .fetch_one(&mut *tx)
                .await?;
            let rows = sqlx::query(concat!(
                log_select!(),
                " WHERE expires_at IS NULL OR expires_at > now() ORDER BY seq"
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>((seq, rows))
        };
        let (seq, rows) = bounded(self.timeout.max(SNAPSHOT_TIMEOUT), read).await?;
        let records = rows.iter().map(record_from_row).collect::<Result<_, _>>()?;
        Ok(Snapshot { records, seq })
    }

    fn feed(&self, after: Option<i64>) -> Result<Subscription, StoreError> {
        self.subscribe_after(after)
    }
}

impl RevocationStore for PgStore {
    async fn revoke(
        &self,
        jti: &str,
        subject: Option<&str>,
        expires_at: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO jwt_revocations (jti, subject, expires_at, reason, revoked_by) \
                           VALUES ($1, $2, to_timestamp($3), $4, $5) ON CONFLICT (jti) DO NOTHING";
        self.insert_keyed(SQL, jti, subject, expires_at, reason, revoked_by)
            .await
    }

    async fn revoke_session(
        &self,
        sid: &str,
        subject: Option<&str>,
        expires_at: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO jwt_session_revocations (session_id, subject, expires_at, reason, revoked_by) \
                           VALUES ($1, $2, to_timestamp($3), $4, $5) ON CONFLICT (session_id) DO NOTHING";
        self.insert_keyed(SQL, sid, subject, expires_at, reason, revoked_by)
            .await
    }

    async fn revoke_subject(
        &self,
        subject: &str,
        not_before: SystemTime,
        reason: Option<&str>,
        revoked_by: Option<&str>,
    ) -> Result<(), StoreError> {
        if subject.is_empty() {
            return Err(StoreError::InvalidInput("empty subject"));
        }
        // Truncated to the second (the JWT `iat` resolution); the cutoff only moves forward.
        let query = sqlx::query(
            "INSERT INTO jwt_subject_revocations (subject, not_before, reason, revoked_by) \
             VALUES ($1, to_timestamp($2::float8), $3, $4) \
             ON CONFLICT (subject) DO UPDATE SET not_before = excluded.not_before, revoked_at = now(), \
                 reason = excluded.reason, revoked_by = excluded.revoked_by \
             WHERE excluded.not_before > jwt_subject_revocations.not_before",
        )
        .bind(subject)
        .bind(epoch_seconds(not_before).floor())
        .bind(reason)
        .bind(revoked_by);
        self.bounded(query.execute(&self.pool)).await?;
        Ok(())
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let query = sqlx::query(concat!(
            log_select!(),
            " WHERE subject = $1 ORDER BY revoked_at DESC, seq DESC LIMIT $2"
        ))
        .bind(subject)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self.bounded(query.fetch_all(&self.pool)).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Deletes in batches of 1 000 rows, each its own short statement that skips rows another
    /// purger holds, so a large purge takes no long locks and several instances may purge at once.
    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        const BATCHES: [&str; 2] = [
            "DELETE FROM jwt_revocations WHERE jti IN ( \
                 SELECT jti FROM jwt_revocations WHERE expires_at < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            "DELETE FROM jwt_session_revocations WHERE session_id IN ( \
                 SELECT session_id FROM jwt_session_revocations WHERE expires_at < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        ];
        let mut deleted = 0;
        for sql in BATCHES {
            loop {
                let query = sqlx::query(sql).bind(margin.as_secs_f64()).bind(PURGE_BATCH);
                let batch = self.bounded(query.execute(&self.pool)).await?.rows_affected();
                deleted += batch;
                if batch < PURGE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

/// A change feed of the ledger, from [`PgStore::subscribe`].
///
/// A background task holds a `LISTEN jwt_revocation` connection and forwards every
/// notification as a [`FeedItem::Event`]. When that connection fails it reports
/// [`FeedItem::Disconnected`], reconnects with backoff, re-reads every event past the last one
/// delivered, and reports [`FeedItem::InSync`]. Dropping the subscription stops the task.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<FeedItem>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// The next item; `None` only if the feed's task ended (which it does not while the
    /// subscription lives, short of a panic).
    pub async fn next(&mut self) -> Option<FeedItem> {
        self.receiver.recv().await
    }
}

impl futures_core::Stream for Subscription {
    type Item = FeedItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FeedItem>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(serde::Deserialize)]
struct Payload {
    kind: String,
    seq: i64,
    #[serde(default)]
    truncated: bool,
    key: Option<String>,
    subject: Option<String>,
    #[serde(default, deserialize_with = "epoch")]
    expires_at: Option<f64>,
    #[serde(default, deserialize_with = "epoch")]
    not_before: Option<f64>,
    #[serde(default, deserialize_with = "epoch")]
    revoked_at: Option<f64>,
    reason: Option<String>,
    revoked_by: Option<String>,
}

/// An epoch as the trigger's `jsonb` carries it: a number, or the strings `"Infinity"` and
/// `"-Infinity"` (jsonb has no infinite numbers) for `'infinity'` timestamps.
fn epoch<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Epoch {
        Number(f64),
        Text(String),
    }
    match <Option<Epoch> as serde::Deserialize>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Epoch::Number(seconds)) => Ok(Some(seconds)),
        Some(Epoch::Text(text)) => text
            .parse::<f64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("epoch is neither a number nor an infinity")),
    }
}

impl Payload {
    /// The event, or `None` when the payload does not carry the whole row.
    fn into_event(self) -> Option<RevocationEvent> {
        if self.truncated {
            return None;
        }
        Some(RevocationEvent {
            seq: self.seq,
            record: RevocationRecord {
                kind: kind_from_str(&self.kind).ok()?,
                key: self.key?,
                subject: self.subject,
                expires_at: self.expires_at.map(from_epoch_seconds),
                not_before: self.not_before.map(from_epoch_seconds),
                revoked_at: from_epoch_seconds(self.revoked_at?),
                reason: self.reason,
                revoked_by: self.revoked_by,
            },
        })
    }
}

/// The feed's task state: where it is, and where it sends.
struct Feed {
    store: PgStore,
    sender: mpsc::Sender<FeedItem>,
    last_seq: Option<i64>,
}

impl Feed {
    /// Sends an item; `false` when the subscription was dropped and the task should end.
    async fn send(&self, item: FeedItem) -> bool {
        self.sender.send(item).await.is_ok()
    }

    async fn deliver(&mut self, event: RevocationEvent) -> bool {
        if self.last_seq.is_some_and(|last| event.seq <= last) {
            return true; // already delivered (a notification overlapping a catch-up)
        }
        self.last_seq = Some(event.seq);
        self.send(FeedItem::Event(event)).await
    }

    /// Delivers everything past `last_seq`. Run only with `LISTEN` in place, so that nothing
    /// committed from the read on can be missed.
    async fn catch_up(&mut self) -> Result<bool, StoreError> {
        let mut after = match self.last_seq {
            Some(seq) => seq,
            None => {
                let seq = self.store.max_seq().await?;
                self.last_seq = Some(seq);
                seq
            }
        };
        loop {
            let events = self.store.events_since(after, CATCH_UP_BATCH).await?;
            let full = events.len() as i64 == CATCH_UP_BATCH;
            for event in events {
                after = event.seq;
                if !self.deliver(event).await {
                    return Ok(false);
                }
            }
            if !full {
                return Ok(true);
            }
        }
    }

    async fn in_sync(&self) -> bool {
        self.send(FeedItem::InSync {
            last_seq: self.last_seq.unwrap_or(0),
        })
        .await
    }

    async fn notification(&mut self, payload: &str) -> Result<bool, StoreError> {
        match serde_json::from_str::<Payload>(payload)
            .ok()
            .and_then(Payload::into_event)
        {
            Some(event) => Ok(self.deliver(event).await),
            // Truncated or foreign payload: read the ledger instead.
            None => self.catch_up().await,
        }
    }
}

async fn listen(pool: &PgPool, timeout: Duration) -> Result<PgListener, StoreError> {
    bounded(timeout, async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    })
    .await
}

/// A round trip on the listening connection proves it alive; notifications that arrived
/// meanwhile were buffered by the listener and are delivered before reporting `InSync`.
async fn heartbeat_round(
    feed: &mut Feed,
    listener: &mut PgListener,
    timeout: Duration,
) -> Result<bool, StoreError> {
    bounded(timeout, listener.execute("SELECT 1")).await?;
    while let Some(notification) = listener.next_buffered() {
        if !feed.notification(notification.payload()).await? {
            return Ok(false);
        }
    }
    Ok(feed.in_sync().await)
}

async fn run_feed(
    store: PgStore,
    listen_pool: PgPool,
    last_seq: Option<i64>,
    sender: mpsc::Sender<FeedItem>,
) {
    let timeout = store.timeout;
    let heartbeat_every = store.heartbeat;
    let mut feed = Feed {
        store,
        sender,
        last_seq,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match listen(&listen_pool, timeout).await {
            Ok(listener) => listener,
            Err(error) => {
                if !feed.send(FeedItem::Disconnected(error)).await {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        match feed.catch_up().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                if !feed.send(FeedItem::Disconnected(error)).await {
                    return;
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        if !feed.in_sync().await {
            return;
        }
        backoff = Duration::from_millis(50);
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let error = loop {
            tokio::select! {
                // `try_recv` is cancel-safe (sqlx keeps partial messages in its buffer), so
                // losing the race to the heartbeat drops nothing.
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => match feed.notification(notification.payload()).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(error) => break error,
                    },
                    Ok(None) => break StoreError::Unavailable("listener connection lost".into()),
                    Err(error) => break classify(error),
                },
                _ = heartbeat.tick() => match heartbeat_round(&mut feed, &mut listener, timeout).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => break error,
                },
            }
        };
        if !feed.send(FeedItem::Disconnected(error)).await {
            return;
        }
        // Drop the (possibly half-dead) listener and build a new one, LISTEN first.
        drop(listener);
    }
}

/// A running purge task from [`spawn_purger`]; dropping it stops the task.
#[derive(Debug)]
pub struct Purger {
    task: JoinHandle<()>,
}

impl Purger {
    /// Stops the task now.
    pub fn cancel(self) {
        drop(self);
    }
}

impl Drop for Purger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs [`RevocationStore::purge_expired`]`(margin)` every `interval` on the current Tokio
/// runtime until the returned [`Purger`] is dropped. Errors are logged and retried at the next
/// tick. With [`PgStore`], several instances may run purgers at once.
///
/// Needs a Tokio runtime; outside one it returns an error.
pub fn spawn_purger<S>(store: S, interval: Duration, margin: Duration) -> Result<Purger, StoreError>
where
    S: RevocationStore + Clone,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| StoreError::Unavailable(Box::new(e)))?;
    let task = runtime.spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.purge_expired(margin).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "purged expired revocations"),
                Err(error) => tracing::warn!(%error, "purging expired revocations failed"),
            }
        }
    });
    Ok(Purger { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_never_unavailable() {
        assert!(matches!(classify(sqlx::Error::RowNotFound), StoreError::Query(_)));
        assert!(matches!(
            classify(sqlx::Error::ColumnNotFound("cutoff".into())),
            StoreError::Query(_)
        ));
        assert!(matches!(
            classify(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify(sqlx::Error::PoolClosed),
            StoreError::Unavailable(_)
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            classify(sqlx::Error::Io(refused)),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn epochs_outside_every_range_saturate_instead_of_panicking() {
        use crate::backend::far_future;
        assert_eq!(from_epoch_seconds(f64::INFINITY), far_future());
        assert_eq!(from_epoch_seconds(1e300), far_future());
        assert_eq!(from_epoch_seconds(f64::NEG_INFINITY), UNIX_EPOCH);
        assert_eq!(from_epoch_seconds(f64::NAN), UNIX_EPOCH);
        assert_eq!(from_epoch_seconds(-1.5), UNIX_EPOCH - Duration::from_millis(1500));
        assert_eq!(epoch_seconds(far_future()), f64::INFINITY);
        assert_eq!(epoch_seconds(UNIX_EPOCH + Duration::from_secs(7)), 7.0);
        assert_eq!(epoch_to_unix_seconds(f64::INFINITY), u64::MAX);
        assert_eq!(epoch_to_unix_seconds(f64::NEG_INFINITY), 0);
        assert_eq!(epoch_to_unix_seconds(1_700_000_000.9), 1_700_000_000);
        let infinite =
            r#"{"kind":"token","key":"j","seq":3,"expires_at":"Infinity","revoked_at":"-Infinity"}"#;
        let event = serde_json::from_str::<Payload>(infinite)
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(event.record.expires_at, Some(far_future()));
        assert_eq!(event.record.revoked_at, UNIX_EPOCH);
    }

    #[test]
    fn notification_payloads_round_trip_and_truncated_ones_are_reread() {
        let full = r#"{"kind":"token","key":"j1","subject":"alice","expires_at":2000000000.5,
            "seq":7,"revoked_at":1700000000.25,"reason":"logout","revoked_by":null}"#;
        let event = serde_json::from_str::<Payload>(full)
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!((event.seq, event.record.key.as_str()), (7, "j1"));
        assert_eq!(event.record.kind, RevocationKind::Token);
        let truncated = r#"{"kind":"token","seq":8,"truncated":true}"#;
        assert!(
            serde_json::from_str::<Payload>(truncated)
                .unwrap()
                .into_event()
                .is_none()
        );
    }
}
