//! [`PgSessions`]: sessions in Postgres (`jwt_sessions`, `jwt_session_used_tokens`).
//!
//! Every operation is one transaction. Rotation locks the session row (`SELECT ... FOR UPDATE`)
//! and replaces the hash with a compare-and-set; a concurrent rotation of the same token waits
//! for the lock, then no longer finds the token current and takes the reuse path. Reuse,
//! `revoke` and `revoke_all` write the session revocation (and, for `revoke_all`, the subject
//! cutoff) into the revocation ledger *in the same transaction*, so a session can never be ended
//! without its access tokens being refused. After the commit, the wrapped [`RevocationStore`]
//! (the layer's backend, e.g. a cache) is told too, for read-your-writes on this instance.
//!
//! Only an `Ok` body commits; an error anywhere rolls the whole transaction back, so the presented
//! refresh token is then still the current one. (Outcomes that must persist, such as a used
//! grace replay or a detected reuse, are returned as `Ok` values inside the transaction.)
//!
//! Outcomes are exact. A `COMMIT` whose answer is lost or late may still have committed: the
//! transaction's id is read before it, and its status (`txid_status`) after it, so the call
//! reports what the server did (a rotation that committed returns the new token; one that did not
//! leaves the old token usable). Only if that status cannot be read within the timeout either is
//! the answer [`SessionError::Indeterminate`]. A failure to tell the layer's backend after a
//! commit is logged, not returned: the change is durable and reaches every cache through the feed.
//! (A transaction id is only meaningful on the primary that assigned it: after a failover to an
//! asynchronous replica that lost the commit, a reused id can be misread. The worst outcome is a
//! rotation reported as done whose new token does not exist: the client logs in again.)

use crate::backend::Revocation;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{
    Issued, Session, SessionConfig, SessionError, SessionMeta, Sessions, random_session_id, random_token,
    token_hash,
};
use crate::backend::postgres::{Protocol, Statement, bounded_sql, epoch_seconds, from_epoch_seconds};
use crate::backend::{RevocationStore, StoreError, saturating_add};
use crate::purge::Purge;

/// Runs `$body` (which may `return` early) in one transaction on `$self.pool`, committed only
/// if it returns `Ok`. `$tx` is the transaction and `$protocol` how statements are sent on it.
/// The body is bounded by the sessions' timeout; the commit's outcome is then made exact by
/// [`PgSessions::commit`].
macro_rules! in_tx {
    ($self:ident, |$tx:ident, $protocol:ident| $body:block) => {{
        let prepared = $self
            .bounded(async {
                let mut txn = $self.pool.begin().await.map_err(sql)?;
                server_side_timeouts(&mut txn, $self.protocol, $self.timeout).await?;
                let value: Result<_, SessionError> = {
                    let $tx: &mut Transaction<'static, Postgres> = &mut txn;
                    let $protocol = $self.protocol;
                    async $body.await
                };
                let value = value?;
                let xid = written_xid(&mut txn, $self.protocol).await?;
                Ok((txn, value, xid))
            })
            .await;
        match prepared {
            Ok((txn, value, xid)) => $self.commit(txn, xid).await.map(|()| value),
            Err(error) => Err(error),
        }
    }};
}

/// Bounds the transaction on the server too: a lock wait (the ledger's writes serialise on one
/// advisory lock, see the migration) ends after `timeout`, and so does the transaction if its
/// client goes silent in the middle of it (a partitioned connection would otherwise hold that
/// lock, and stall every revocation of the cluster, until the server notices the dead peer).
async fn server_side_timeouts(
    tx: &mut Transaction<'static, Postgres>,
    protocol: Protocol,
    timeout: std::time::Duration,
) -> Result<(), SessionError> {
    let millis = format!("{}ms", timeout.as_millis().clamp(1, i32::MAX as u128));
    Statement::new(
        "SELECT set_config('lock_timeout', $1, true), \
                set_config('idle_in_transaction_session_timeout', $1, true)",
    )
    .text(millis.as_str())
    .fetch_one(protocol, tx)
    .await
    .map_err(sql)?;
    Ok(())
}

/// The transaction's id if it wrote anything (`None` for a read-only one, which has no commit
/// outcome to establish).
async fn written_xid(
    tx: &mut Transaction<'static, Postgres>,
    protocol: Protocol,
) -> Result<Option<i64>, SessionError> {
    Statement::new("SELECT txid_current_if_assigned() AS xid")
        .fetch_one(protocol, tx)
        .await
        .map_err(sql)?
        .try_get("xid")
        .map_err(sql)
}

/// Postgres [`Sessions`]; `store` is the layer's backend, told of every session it ends.
#[derive(Debug, Clone)]
pub struct PgSessions<S> {
    pool: PgPool,
    protocol: Protocol,
    store: S,
    config: SessionConfig,
    timeout: Duration,
}

impl<S: RevocationStore> PgSessions<S> {
    /// Sessions on `pool` (migrated by [`PgStore::migrate`](crate::PgStore::migrate)), ending
    /// sessions through `store` too. Every call is bounded by the timeout (2 s) for its work,
    /// and by the timeout again for its `COMMIT` and, if that gets no answer, again for reading
    /// the commit's outcome back.
    pub fn new(pool: PgPool, store: S, config: SessionConfig) -> Self {
        Self {
            protocol: Protocol::of(&pool.connect_options()),
            pool,
            store,
            config,
            timeout: Duration::from_secs(2),
        }
    }

    /// Whether the pool's connections go through a transaction-mode pooler; detected from the
    /// pool's `statement-cache-capacity=0` (see
    /// [`PgStore::with_transaction_pooler`](crate::PgStore::with_transaction_pooler)).
    #[must_use]
    pub fn with_transaction_pooler(mut self, behind_pooler: bool) -> Self {
        self.protocol = Protocol::behind_pooler(behind_pooler);
        self
    }

    /// Bounds every call. Default 2 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Store(StoreError::Timeout(self.timeout))),
        }
    }

    /// Deletes sessions that expired (or were revoked and whose access tokens expired) more than
    /// `margin` ago, with their used-token markers, in batches of 1 000; returns how many.
    /// Reuse of a deleted session's tokens is then simply an unknown token, which is refused
    /// the same way.
    pub async fn purge_expired(&self, margin: Duration) -> Result<u64, SessionError> {
        let mut deleted = 0;
        loop {
            let statement = Statement::new(
                "DELETE FROM jwt_sessions WHERE session_id IN ( \
                     SELECT session_id FROM jwt_sessions \
                     WHERE expires_at < now() - make_interval(secs => $1) \
                        OR revoked_at < now() - make_interval(secs => $1 + $2) \
                     LIMIT 1000 FOR UPDATE SKIP LOCKED)",
            )
            .float(margin.as_secs_f64())
            .float(self.config.access_token_lifetime.as_secs_f64());
            let batch = self
                .bounded(async { statement.execute_on(self.protocol, &self.pool).await.map_err(sql) })
                .await?;
            deleted += batch;
            if batch < 1000 {
                return Ok(deleted);
            }
        }
    }

    /// Commits `txn` and reports exactly what the server did. A `COMMIT` that fails or outlives
    /// the timeout may still have committed on the server (its answer was lost, or the server
    /// is slow); then the transaction's status is read back with `txid_status` on another
    /// connection until it is known or the timeout passes again. Only when that fails too is
    /// the outcome [`SessionError::Indeterminate`].
    async fn commit(
        &self,
        txn: Transaction<'static, Postgres>,
        xid: Option<i64>,
    ) -> Result<(), SessionError> {
        let error = match tokio::time::timeout(self.timeout, txn.commit()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => sql(error),
            Err(_) => SessionError::Store(StoreError::Timeout(self.timeout)),
        };
        let Some(xid) = xid else {
            return Err(error); // nothing was written: nothing can have committed
        };
        match self.commit_status(xid).await {
            Some(true) => Ok(()),
            Some(false) => Err(error),
            None => {
                tracing::warn!(%error, xid, "a session change's COMMIT got no answer and its outcome could not be read back");
                Err(SessionError::Indeterminate)
            }
        }
    }

    /// Whether transaction `xid` committed (`Some(true)`), rolled back (`Some(false)`), or is
    /// still unknown when the timeout passes (`None`).
    async fn commit_status(&self, xid: i64) -> Option<bool> {
        let now = tokio::time::Instant::now();
        // A timeout too large to add is as good as "no deadline": a day is past any sane one.
        let deadline = now
            .checked_add(self.timeout)
            .unwrap_or(now + std::time::Duration::from_secs(86_400));
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let status = tokio::time::timeout(left, async {
                let row = Statement::new("SELECT txid_status($1) AS status")
                    .int(xid)
                    .fetch_one_on(self.protocol, &self.pool)
                    .await?;
                row.try_get::<Option<String>, _>("status")
            })
            .await;
            match status {
                Ok(Ok(Some(status))) if status == "committed" => return Some(true),
                Ok(Ok(Some(status))) if status == "aborted" => return Some(false),
                Ok(Ok(None)) => return None, // too old to tell
                Err(_) => return None,
                // "in progress" (the server is still committing) or a failed read: ask again.
                Ok(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// After the commit: tell the layer's backend, for read-your-writes on this instance. The
    /// change is committed (the session revocation is in the ledger, and reaches every
    /// instance's cache through the change feed), so a failure here is logged, not returned.
    async fn tell_store(&self, ended: &[(String, String)], cutoff_subject: Option<&str>) {
        let until = saturating_add(SystemTime::now(), self.config.access_token_lifetime);
        for (sid, subject) in ended {
            if let Err(error) = self
                .store
                .revoke(
                    &Revocation::session(sid, until)
                        .owner(subject.as_str())
                        .reason("session ended"),
                )
                .await
            {
                tracing::warn!(%error, "a committed session revocation could not be applied to this instance's cache; it arrives through the change feed");
            }
        }
        if let Some(subject) = cutoff_subject
            && let Err(error) = self
                .store
                .revoke(&Revocation::subject(subject, SystemTime::now()).reason("revoke_all"))
                .await
        {
            tracing::warn!(%error, "a committed subject cutoff could not be applied to this instance's cache; it arrives through the change feed");
        }
    }
}

fn sql(e: sqlx::Error) -> SessionError {
    SessionError::Store(bounded_sql(e))
}

/// Records the session revocation in the ledger, inside the session transaction.
async fn end_session(
    protocol: Protocol,
    tx: &mut Transaction<'static, Postgres>,
    sid: &str,
    subject: &str,
    access_token_lifetime: Duration,
    reason: &str,
) -> Result<(), SessionError> {
    Statement::new("UPDATE jwt_sessions SET revoked_at = now() WHERE session_id = $1 AND revoked_at IS NULL")
        .text(sid)
        .execute(protocol, tx)
        .await
        .map_err(sql)?;
    Statement::new(
        "INSERT INTO jwt_session_revocations (session_id, subject, expires_at, reason) \
         VALUES ($1, $2, now() + make_interval(secs => $3), $4) ON CONFLICT (session_id) DO NOTHING",
    )
    .text(sid)
    .text(subject)
    .float(access_token_lifetime.as_secs_f64())
    .text(reason)
    .execute(protocol, tx)
    .await
    .map_err(sql)?;
    Ok(())
}

fn session_from_row(row: &PgRow) -> Result<Session, SessionError> {
    let get = |e: sqlx::Error| SessionError::Store(StoreError::Query(Box::new(e)));
    Ok(Session {
        id: row.try_get("session_id").map_err(get)?,
        subject: row.try_get("subject").map_err(get)?,
        created_at: from_epoch_seconds(row.try_get("created_at").map_err(get)?),
        last_used_at: from_epoch_seconds(row.try_get("last_used_at").map_err(get)?),
        expires_at: from_epoch_seconds(row.try_get("expires_at").map_err(get)?),
        meta: SessionMeta {
            user_agent: row.try_get("user_agent").map_err(get)?,
            ip: row.try_get("ip").map_err(get)?,
        },
    })
}

macro_rules! session_columns {
    () => {
        "session_id, subject, user_agent, ip, \
         extract(epoch FROM created_at)::float8 AS created_at, \
         extract(epoch FROM last_used_at)::float8 AS last_used_at, \
         extract(epoch FROM expires_at)::float8 AS expires_at"
    };
}

enum Rotation {
    Rotated(Session),
    /// Committed: `grace_used` is now set.
    Superseded,
    Reused(String, String),
}

impl<S: RevocationStore> Sessions for PgSessions<S> {
    async fn start(&self, subject: &str, meta: SessionMeta) -> Result<Issued, SessionError> {
        let (id, refresh_token) = (random_session_id()?, random_token()?);
        let hash = token_hash(&refresh_token);
        let expires_at = epoch_seconds(saturating_add(SystemTime::now(), self.config.lifetime));
        let session = in_tx!(self, |tx, protocol| {
            let row = Statement::new(concat!(
                "INSERT INTO jwt_sessions (session_id, subject, refresh_hash, expires_at, user_agent, ip) \
                     VALUES ($1, $2, $3, to_timestamp($4), $5, $6) RETURNING ",
                session_columns!()
            ))
            .text(id.as_str())
            .text(subject)
            .bytes(&hash[..])
            .float(expires_at)
            .text(meta.user_agent.as_deref())
            .text(meta.ip.as_deref())
            .fetch_one(protocol, tx)
            .await
            .map_err(sql)?;
            session_from_row(&row)
        })?;
        Ok(Issued {
            session,
            refresh_token,
        })
    }

    async fn rotate(&self, refresh_token: &str) -> Result<Issued, SessionError> {
        let hash = token_hash(refresh_token);
        let next = random_token()?;
        let next_hash = token_hash(&next);
        let grace = self.config.grace.map(|g| g.as_secs_f64());
        let access_lifetime = self.config.access_token_lifetime;
        let outcome = in_tx!(self, |tx, protocol| {
            // The current token: lock its session row, then compare-and-set the hash.
            let current = Statement::new(
                "SELECT session_id, revoked_at IS NOT NULL OR expires_at <= now() AS dead \
                     FROM jwt_sessions WHERE refresh_hash = $1 FOR UPDATE",
            )
            .bytes(&hash[..])
            .fetch_optional(protocol, tx)
            .await
            .map_err(sql)?;
            if let Some(row) = current {
                let sid: String = row.try_get("session_id").map_err(sql)?;
                if row.try_get::<bool, _>("dead").map_err(sql)? {
                    return Err(SessionError::Invalid);
                }
                let updated = Statement::new(concat!(
                        "UPDATE jwt_sessions SET refresh_hash = $1, previous_hash = $2, rotated_at = now(), \
                         last_used_at = now(), grace_used = false WHERE session_id = $3 AND refresh_hash = $2 \
                         RETURNING ",
                        session_columns!()
                    ))
                    .bytes(&next_hash[..])
                    .bytes(&hash[..])
                    .text(sid.as_str())
                    .fetch_optional(protocol, tx)
                    .await
                    .map_err(sql)?;
                let Some(updated) = updated else {
                    return Err(SessionError::Invalid);
                };
                Statement::new(
                    "INSERT INTO jwt_session_used_tokens (refresh_hash, session_id) VALUES ($1, $2)",
                )
                .bytes(&hash[..])
                .text(sid.as_str())
                .execute(protocol, tx)
                .await
                .map_err(sql)?;
                return Ok(Rotation::Rotated(session_from_row(&updated)?));
            }
            // Not current: a token rotated away before is reuse (unless inside the grace window).
            let used = Statement::new(
                "SELECT s.session_id, s.subject, s.revoked_at IS NOT NULL AS revoked, \
                            (s.previous_hash = $1 AND NOT s.grace_used AND $2::float8 IS NOT NULL \
                             AND s.rotated_at > now() - make_interval(secs => $2::float8)) AS in_grace \
                     FROM jwt_session_used_tokens u JOIN jwt_sessions s USING (session_id) \
                     WHERE u.refresh_hash = $1 FOR UPDATE OF s",
            )
            .bytes(&hash[..])
            .float(grace)
            .fetch_optional(protocol, tx)
            .await
            .map_err(sql)?;
            let Some(row) = used else {
                return Err(SessionError::Invalid);
            };
            let sid: String = row.try_get("session_id").map_err(sql)?;
            let subject: String = row.try_get("subject").map_err(sql)?;
            let revoked: bool = row.try_get("revoked").map_err(sql)?;
            if !revoked && row.try_get::<bool, _>("in_grace").map_err(sql)? {
                Statement::new("UPDATE jwt_sessions SET grace_used = true WHERE session_id = $1")
                    .text(sid.as_str())
                    .execute(protocol, tx)
                    .await
                    .map_err(sql)?;
                return Ok(Rotation::Superseded);
            }
            end_session(
                protocol,
                tx,
                &sid,
                &subject,
                access_lifetime,
                "refresh token reuse",
            )
            .await?;
            Ok(Rotation::Reused(sid, subject))
        })?;
        match outcome {
            Rotation::Rotated(session) => Ok(Issued {
                session,
                refresh_token: next,
            }),
            Rotation::Superseded => Err(SessionError::Superseded),
            Rotation::Reused(sid, subject) => {
                self.tell_store(&[(sid.clone(), subject)], None).await;
                Err(SessionError::Reused { session_id: sid })
            }
        }
    }

    async fn list(&self, subject: &str) -> Result<Vec<Session>, SessionError> {
        in_tx!(self, |tx, protocol| {
            let rows = Statement::new(concat!(
                "SELECT ",
                session_columns!(),
                " FROM jwt_sessions WHERE subject = $1 AND revoked_at IS NULL AND expires_at > now() \
                 ORDER BY last_used_at DESC, created_at DESC"
            ))
            .text(subject)
            .fetch_all(protocol, tx)
            .await
            .map_err(sql)?;
            rows.iter().map(session_from_row).collect()
        })
    }

    async fn revoke(&self, session_id: &str, subject: &str) -> Result<(), SessionError> {
        let lifetime = self.config.access_token_lifetime;
        in_tx!(self, |tx, protocol| {
            let found = Statement::new(
                "SELECT 1 FROM jwt_sessions WHERE session_id = $1 AND subject = $2 AND revoked_at IS NULL FOR UPDATE",
            )
            .text(session_id)
            .text(subject)
            .fetch_optional(protocol, tx)
            .await
            .map_err(sql)?;
            if found.is_none() {
                return Err(SessionError::NotFound);
            }
            end_session(protocol, tx, session_id, subject, lifetime, "session revoked").await
        })?;
        self.tell_store(&[(session_id.to_owned(), subject.to_owned())], None)
            .await;
        Ok(())
    }

    async fn revoke_all(&self, subject: &str) -> Result<u64, SessionError> {
        let lifetime = self.config.access_token_lifetime;
        let ended = in_tx!(self, |tx, protocol| {
            // One statement however many sessions the subject has (an attacker with the password
            // can open hundreds). The UPDATE takes the row locks rotate takes: a rotation in
            // flight finishes first, and is then revoked with the rest.
            let row = Statement::new(
                "WITH ended AS ( \
                     UPDATE jwt_sessions SET revoked_at = now() \
                     WHERE subject = $1 AND revoked_at IS NULL RETURNING session_id \
                 ), revoked AS ( \
                     INSERT INTO jwt_session_revocations (session_id, subject, expires_at, reason) \
                     SELECT session_id, $1, now() + make_interval(secs => $2), 'revoke_all' FROM ended \
                     ON CONFLICT (session_id) DO NOTHING \
                 ), cutoff AS ( \
                     INSERT INTO jwt_subject_revocations (subject, not_before, reason) \
                     VALUES ($1, to_timestamp($3::int8), 'revoke_all') \
                     ON CONFLICT (subject) DO UPDATE SET not_before = excluded.not_before, revoked_at = now(), \
                         reason = excluded.reason \
                     WHERE excluded.not_before > jwt_subject_revocations.not_before \
                 ) \
                 SELECT count(*)::int8 AS ended FROM ended",
            )
            .text(subject)
            .float(lifetime.as_secs_f64())
            .int(now_seconds())
            .fetch_one(protocol, tx)
            .await
            .map_err(sql)?;
            row.try_get::<i64, _>("ended").map_err(sql)
        })?;
        // The subject cutoff covers every token of every session just ended.
        self.tell_store(&[], Some(subject)).await;
        Ok(u64::try_from(ended).unwrap_or(0))
    }
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Drives [`PgSessions::purge_expired`] from [`spawn_purger`](crate::purge).
impl<S: RevocationStore> Purge for PgSessions<S> {
    async fn purge(&self, margin: Duration) -> Result<u64, StoreError> {
        self.purge_expired(margin).await.map_err(|error| match error {
            SessionError::Store(error) => error,
            other => StoreError::Query(Box::new(other)),
        })
    }
}
