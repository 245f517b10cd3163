//! [`PgStore`]: the durable revocation ledger in Postgres, shared by every server instance.
//!
//! This module owns the SQL side: the queries behind [`RevocationStore`], [`RevocationBackend`]
//! and [`Ledger`]. Its parts: the schema and its history (`migrations/`, embedded as
//! [`MIGRATOR`], applied by [`PgStore::migrate`]), statements and value conversions that work
//! through a transaction pooler (`sql`), and the change feed ([`Subscription`]). Scheduled
//! purging is [`crate::purge`]'s. It does not cache: every check is one round trip. Put the cache tier in
//! front of it for the per-request path.
//!
//! # Guarantees
//!
//! - A `revoke*` call returns `Ok` only after its transaction committed: the revocation survives
//!   restarts of every process, and every later `check` on any pool sees it.
//! - Every operation but [`migrate`](PgStore::migrate) is bounded by
//!   [`PgStore::with_timeout`] (default 2 s), covering the wait for a pooled connection and the
//!   query itself. A timeout or a connection failure is a [`StoreError`], which the layer hands to
//!   its failure policy: never a panic, never "not revoked".
//! - The change feed delivers every committed revocation in `seq` order, at least once, across
//!   lost connections, and proves at every heartbeat that it has (see [`Subscription`]).
//! - Any value a DBA can write is read without panicking: `'infinity'` (a revocation kept until
//!   deleted by hand, or a subject banned for good) becomes [`far_future`](super::far_future), `'-infinity'` the
//!   Unix epoch.
//!
//! # Behind a transaction pooler (PgBouncer, Supavisor)
//!
//! Give the pool `statement-cache-capacity=0` in its URL (as every sqlx user behind such a pooler
//! does): the store then sends each statement as one simple-protocol message with its values as
//! literals, which a transaction pooler passes through intact (sqlx's prepared statements it does
//! not). Migrations take a transaction-scoped lock, which works through it too. `LISTEN` cannot
//! work through a transaction pooler (worse, the registration would stay on a server connection
//! other clients use, and their queries would receive the notifications), so the change feed
//! does not listen there: its heartbeat delivers every revocation within one interval (2 s by
//! default). For millisecond propagation, give the feed (and migrations) a direct connection
//! with [`with_direct_url`](PgStore::with_direct_url).

mod feed;
mod ledger;
mod migrate;
pub(crate) mod sql;

pub use feed::{CHANNEL, Subscription};
pub use migrate::{HISTORY_TABLE, MIGRATOR};

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use self::feed::FeedConfig;
use self::sql::{EVENTS_SINCE, MAX_SEQ, SEQUENCE_END, event_from_row, log_select, record_from_row};
pub(crate) use self::sql::{Protocol, Statement, bounded, classify, epoch_seconds, from_epoch_seconds};
use super::{
    Ledger, Revocation, RevocationBackend, RevocationEvent, RevocationKind, RevocationRecord,
    RevocationStore, RevocationTarget, StoreError, TokenFacts, Verdict,
};

/// The `application_name` of the change feed's connection, to find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "tower-jwt-revocation-listener";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
const PURGE_BATCH: i64 = 1_000;
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// A revocation ledger on a Postgres pool. Cheap to clone (clones share the pool).
///
/// ```no_run
/// use tower_jwt_revocation::{JwtRevocationLayer, PgStore};
/// use tower_jwt_revocation::jsonwebtoken::DecodingKey;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Through PgBouncer in transaction mode, with a direct connection for the change feed:
/// let store = PgStore::connect("postgres://app@pgbouncer:6432/app?statement-cache-capacity=0")
///     .await?
///     .with_direct_url("postgres://app@db:5432/app")?;
/// store.migrate().await?;
/// let layer = JwtRevocationLayer::builder(store.clone())
///     .decoding_key(DecodingKey::from_secret(b"secret"))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// How statements are sent on the pool's connections.
    protocol: Protocol,
    /// The connection for the change feed and migrations, when not the pool's.
    direct: Option<PgConnectOptions>,
    timeout: Duration,
    heartbeat: Duration,
    listener_name: std::borrow::Cow<'static, str>,
    /// Subject cutoffs older than this plus twice the purge's margin are purged.
    max_token_lifetime: Option<Duration>,
    /// Every instance on this database enforces issuer-keyed revocations.
    issuer_keying: bool,
}

impl PgStore {
    /// Connects a pool to `url` (whose connection wait is bounded by the store's timeout) and
    /// checks that the database answers. Every setting of the URL applies to every connection the
    /// store opens, `statement-cache-capacity=0` included (see the module documentation).
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
    /// A pool whose options turn the statement cache off is treated as sitting behind a
    /// transaction pooler (see [`with_transaction_pooler`](Self::with_transaction_pooler)).
    pub fn new(pool: PgPool) -> Self {
        let protocol = Protocol::of(&pool.connect_options());
        Self {
            pool,
            protocol,
            direct: None,
            timeout: DEFAULT_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            listener_name: LISTENER_APPLICATION_NAME.into(),
            max_token_lifetime: None,
            issuer_keying: false,
        }
    }

    /// Whether the pool's connections go through a transaction-mode pooler (PgBouncer,
    /// Supavisor): then every statement is sent as one simple-protocol message with its values
    /// inlined as literals, instead of as a prepared statement. Detected from the pool's
    /// `statement-cache-capacity=0`; set it here when the pool's settings do not say.
    #[must_use]
    pub fn with_transaction_pooler(mut self, behind_pooler: bool) -> Self {
        self.protocol = Protocol::behind_pooler(behind_pooler);
        self
    }

    /// Runs the change feed and migrations on a direct connection to `url` (past the pooler)
    /// instead of the pool's: `LISTEN` needs a session of its own, which a transaction pooler does
    /// not keep. Without it, notifications are lost behind such a pooler and revocations from
    /// other instances arrive at the feed's heartbeat instead of within milliseconds. The URL's
    /// own settings apply to that connection.
    pub fn with_direct_url(self, url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Query(Box::new(e)))?;
        Ok(self.with_direct_options(options))
    }

    /// [`with_direct_url`](Self::with_direct_url) with parsed options.
    #[must_use]
    pub fn with_direct_options(mut self, options: PgConnectOptions) -> Self {
        self.direct = Some(options);
        self
    }

    /// Bounds every call (connection wait plus query). Default 2 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often the change feed proves sync: it reads the ledger past the last change it
    /// delivered, delivers what it finds, and reports [`FeedItem::InSyncAt`](crate::FeedItem::InSyncAt).
    /// A revocation reaches every instance within this interval plus a query even when no
    /// notification arrives. Default 2 s; at least 1 ms.
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(1));
        self
    }

    /// The longest lifetime (`exp - iat`) a token this ledger guards can have: what every layer
    /// in front of it enforces with
    /// [`max_token_lifetime`](crate::JwtRevocationBuilder::max_token_lifetime) (which bounds
    /// `exp - iat`), or a bound the identity provider guarantees. With it,
    /// [`purge_expired`](RevocationStore::purge_expired)`(margin)` also deletes subject cutoffs
    /// older than `max_token_lifetime + 2 × margin`, with `margin` at least the validation
    /// leeway: a token a cutoff covers was issued before it, the layer accepts
    /// `exp - iat <= max_token_lifetime + leeway`, and `jsonwebtoken` accepts it until
    /// `exp + leeway`, so every such token has expired by then, and the table of cutoffs stops growing
    /// with every user who ever logged out everywhere. Only set it where tokens carry `iat`: a
    /// token without one is covered by every cutoff of its subject, and a purged cutoff no
    /// longer covers it. Without it (the default) cutoffs are kept until deleted by hand. A
    /// cutoff at `'infinity'` (a ban) is never purged.
    #[must_use]
    pub fn with_max_token_lifetime(mut self, max_token_lifetime: Duration) -> Self {
        self.max_token_lifetime = Some(max_token_lifetime);
        self
    }

    /// Declares that every instance using this database runs a build that enforces session and
    /// subject revocations keyed by issuer (this one or later), so that layers and receivers
    /// over this store may file them (see [`RevocationBackend::issuer_keying`]). Turn it on in a
    /// rollout of its own, after the one that brought every instance to this build: a build
    /// that predates keying does not read the keyed tables, and would serve a token this one
    /// refused. Default off: layers and receivers file every revocation for all issuers (too
    /// much with several issuers whose users share a `sub`, never too little).
    ///
    /// Set it before cloning the store for the layers, caches and receivers that share it (a
    /// clone keeps the setting it was cloned with). Once declared, a layer with an issuer no
    /// store can file under (an empty `iss`) fails to build with
    /// [`ConfigError::UnkeyableIssuer`](crate::ConfigError::UnkeyableIssuer).
    #[must_use]
    pub fn with_issuer_keying(mut self, keyed: bool) -> Self {
        self.issuer_keying = keyed;
        self
    }

    /// Whether [`with_issuer_keying`](Self::with_issuer_keying) declared keying (what
    /// [`RevocationBackend::issuer_keying`] and [`Ledger::issuer_keying`] answer).
    pub fn issuer_keying(&self) -> bool {
        self.issuer_keying
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

    /// The direct connection's options and protocol, or else the pool's.
    fn direct_or_pool(&self) -> (PgConnectOptions, Protocol) {
        match &self.direct {
            Some(direct) => (direct.clone(), Protocol::of(direct)),
            None => (self.pool.connect_options().as_ref().clone(), self.protocol),
        }
    }

    /// Applies the crate's migrations that the database lacks, on the direct connection when
    /// there is one. Their history is kept in [`HISTORY_TABLE`], apart from the application's
    /// `_sqlx_migrations`, so both coexist in one schema, in either order. Safe to call from
    /// several instances at once, through a transaction pooler, and from an older build against a
    /// newer schema (versions it does not know are left alone). Not bounded by the store's
    /// timeout.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.direct {
            Some(direct) => {
                let mut connection = direct.connect().await.map_err(classify)?;
                migrate::run(&mut connection, Protocol::of(direct)).await
            }
            None => {
                let mut connection = self.pool.acquire().await.map_err(classify)?;
                migrate::run(&mut connection, self.protocol).await
            }
        }
    }

    async fn bounded<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        bounded(self.timeout, operation).await
    }

    /// The highest `seq` in the ledger (0 when empty).
    pub async fn max_seq(&self) -> Result<i64, StoreError> {
        let row = self
            .bounded(Statement::new(MAX_SEQ).fetch_one_on(self.protocol, &self.pool))
            .await?;
        row.try_get("seq").map_err(|e| StoreError::Query(Box::new(e)))
    }

    /// The last value the ledger's `seq` sequence gave out (0 before the first): no revocation
    /// has or will commit with a `seq` past it that was drawn before this call. What the NATS
    /// feed and relay check a `seq` named by a message against.
    pub async fn sequence_end(&self) -> Result<i64, StoreError> {
        let row = self
            .bounded(Statement::new(SEQUENCE_END).fetch_one_on(self.protocol, &self.pool))
            .await?;
        row.try_get("seq").map_err(|e| StoreError::Query(Box::new(e)))
    }

    /// Every revocation with `seq` greater than `seq`, in `seq` order, at most `limit`: the
    /// catch-up read of the change feed, public for consumers that track their own position.
    pub async fn events_since(&self, seq: i64, limit: i64) -> Result<Vec<RevocationEvent>, StoreError> {
        let statement = Statement::new(EVENTS_SINCE).int(seq).int(limit);
        let rows = self
            .bounded(statement.fetch_all_on(self.protocol, &self.pool))
            .await?;
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
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("needs a Tokio runtime (call it from within one)"))?;
        let (options, protocol) = self.direct_or_pool();
        let listen = self.direct.is_some() || protocol == Protocol::Prepared;
        tracing::info!(
            direct = self.direct.is_some(),
            listen,
            inline_statements = protocol == Protocol::Inline,
            heartbeat_ms = u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            "revocation change feed starting"
        );
        let config = FeedConfig {
            options: options.application_name(&self.listener_name),
            protocol,
            // A direct connection is past any pooler; the pool's connections are behind one when
            // they send inlined statements.
            listen,
            timeout: self.timeout,
            heartbeat: self.heartbeat,
        };
        Ok(Subscription::spawn(&runtime, config, seq))
    }
}

/// [`classify`], for the session module's queries.
pub(crate) fn bounded_sql(error: sqlx::Error) -> StoreError {
    classify(error)
}

/// The answer to one check: every lookup in one round trip, those keyed by issuer under the
/// token's issuer `$4`, or under any issuer when it is `NULL` (see
/// [`TokenFacts::issuer`](crate::TokenFacts::issuer)). Cutoffs are read as floats so that
/// `'infinity'` (a subject banned for good) arrives as `Infinity`, not as a cast error.
const CHECK_SQL: &str = "SELECT \
    EXISTS (SELECT 1 FROM jwt_revocations WHERE jti = $1) AS token, \
    EXISTS (SELECT 1 FROM jwt_session_revocations WHERE session_id = $2) AS session, \
    (SELECT extract(epoch FROM not_before)::float8 FROM jwt_subject_revocations WHERE subject = $3) AS cutoff, \
    EXISTS (SELECT 1 FROM jwt_issuer_session_revocations \
        WHERE session_id = $2 AND ($4::text IS NULL OR issuer = $4)) AS issuer_session, \
    (SELECT extract(epoch FROM max(not_before))::float8 FROM jwt_issuer_subject_revocations \
        WHERE subject = $3 AND ($4::text IS NULL OR issuer = $4)) AS issuer_cutoff";

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

    /// As set by [`with_issuer_keying`](PgStore::with_issuer_keying).
    fn issuer_keying(&self) -> bool {
        self.issuer_keying
    }
}

impl RevocationStore for PgStore {
    async fn revoke(&self, revocation: &Revocation<'_>) -> Result<bool, StoreError> {
        // Truncated to the second (the JWT `iat` resolution); the cutoff only moves forward.
        const SUBJECT: &str = "INSERT INTO jwt_subject_revocations (subject, not_before, reason, revoked_by) \
             VALUES ($1, to_timestamp($2::float8), $3, $4) \
             ON CONFLICT (subject) DO UPDATE SET not_before = excluded.not_before, revoked_at = now(), \
                 reason = excluded.reason, revoked_by = excluded.revoked_by \
             WHERE excluded.not_before > jwt_subject_revocations.not_before";
        const TOKEN: &str = "INSERT INTO jwt_revocations (jti, subject, expires_at, reason, revoked_by) \
             VALUES ($1, $2, to_timestamp($3), $4, $5) ON CONFLICT (jti) DO NOTHING";
        const SESSION: &str = "INSERT INTO jwt_session_revocations (session_id, subject, expires_at, reason, revoked_by) \
             VALUES ($1, $2, to_timestamp($3), $4, $5) ON CONFLICT (session_id) DO NOTHING";
        // Keyed by issuer (the last value): the same statements on the keyed tables.
        const ISSUER_SUBJECT: &str = "INSERT INTO jwt_issuer_subject_revocations \
             (subject, not_before, reason, revoked_by, issuer) \
             VALUES ($1, to_timestamp($2::float8), $3, $4, $5) \
             ON CONFLICT (subject, issuer) DO UPDATE SET not_before = excluded.not_before, revoked_at = now(), \
                 reason = excluded.reason, revoked_by = excluded.revoked_by \
             WHERE excluded.not_before > jwt_issuer_subject_revocations.not_before";
        const ISSUER_SESSION: &str = "INSERT INTO jwt_issuer_session_revocations \
             (session_id, subject, expires_at, reason, revoked_by, issuer) \
             VALUES ($1, $2, to_timestamp($3), $4, $5, $6) ON CONFLICT (session_id, issuer) DO NOTHING";
        revocation.validate()?;
        let key = revocation.key();
        let issuer = revocation.keyed_issuer();
        let statement = match revocation.target {
            RevocationTarget::Subject { not_before, .. } => {
                Statement::new(if issuer.is_some() { ISSUER_SUBJECT } else { SUBJECT })
                    .text(key)
                    .float(epoch_seconds(not_before).floor())
            }
            RevocationTarget::Token { expires_at, .. } | RevocationTarget::Session { expires_at, .. } => {
                let sql = match (revocation.kind(), issuer) {
                    (RevocationKind::Token, _) => TOKEN,
                    (_, None) => SESSION,
                    (_, Some(_)) => ISSUER_SESSION,
                };
                Statement::new(sql)
                    .text(key)
                    .text(revocation.owner)
                    .float(epoch_seconds(expires_at))
            }
        }
        .text(revocation.reason)
        .text(revocation.revoked_by);
        let statement = match issuer {
            Some(issuer) => statement.text(issuer),
            None => statement,
        };
        let changed = self
            .bounded(statement.execute_on(self.protocol, &self.pool))
            .await?;
        Ok(changed == 1)
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let statement = Statement::new(concat!(
            log_select!(),
            " WHERE subject = $1 ORDER BY revoked_at DESC, seq DESC LIMIT $2"
        ))
        .text(subject)
        .int(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self
            .bounded(statement.fetch_all_on(self.protocol, &self.pool))
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Deletes in batches of 1 000 rows, each its own short statement that skips rows another
    /// purger holds, so a large purge takes no long locks and several instances may purge at once.
    /// Subject cutoffs too, with [`with_max_token_lifetime`](Self::with_max_token_lifetime).
    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        const CUTOFFS: [&str; 2] = [
            "DELETE FROM jwt_subject_revocations WHERE subject IN ( \
                 SELECT subject FROM jwt_subject_revocations WHERE not_before < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            "DELETE FROM jwt_issuer_subject_revocations WHERE (subject, issuer) IN ( \
                 SELECT subject, issuer FROM jwt_issuer_subject_revocations \
                 WHERE not_before < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        ];
        const BATCHES: [&str; 3] = [
            "DELETE FROM jwt_revocations WHERE jti IN ( \
                 SELECT jti FROM jwt_revocations WHERE expires_at < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            "DELETE FROM jwt_session_revocations WHERE session_id IN ( \
                 SELECT session_id FROM jwt_session_revocations WHERE expires_at < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            "DELETE FROM jwt_issuer_session_revocations WHERE (session_id, issuer) IN ( \
                 SELECT session_id, issuer FROM jwt_issuer_session_revocations \
                 WHERE expires_at < now() - make_interval(secs => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        ];
        let cutoffs = self
            .max_token_lifetime
            .into_iter()
            .flat_map(|lifetime| CUTOFFS.map(|sql| (sql, super::cutoff_retention(lifetime, margin))));
        let batches = BATCHES.into_iter().map(|sql| (sql, margin)).chain(cutoffs);
        let mut deleted = 0;
        for (sql, age) in batches {
            loop {
                // Postgres intervals end near 178 million years: clamp, never an error.
                let age = age.min(Duration::from_secs(1_000 * 365 * 24 * 3600));
                let statement = Statement::new(sql).float(age.as_secs_f64()).int(PURGE_BATCH);
                let batch = self
                    .bounded(statement.execute_on(self.protocol, &self.pool))
                    .await?;
                deleted += batch;
                if batch < PURGE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_future_is_written_as_infinity() {
        assert_eq!(epoch_seconds(crate::backend::far_future()), f64::INFINITY);
    }
}
