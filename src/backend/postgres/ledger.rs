//! `PgStore` as a [`Ledger`]: the cache tier's lookups, snapshots (whole or paged), event
//! reads and change feed.

use std::future::Future;
use std::pin::Pin;

use sqlx::Row;

use super::sql::{
    LIVE_CURSOR, LIVE_PAGE, MAX_SEQ, epoch_to_unix_seconds, live_from_row, log_select, record_from_row,
};
use super::*;
use crate::backend::{Ledger, LiveRevocation, Lookup, Snapshot, StoreError, TokenFacts};

impl Ledger for PgStore {
    type LookupFuture = Pin<Box<dyn Future<Output = Result<Lookup, StoreError>> + Send>>;
    type Feed = Subscription;

    /// As set by [`with_issuer_keying`](PgStore::with_issuer_keying).
    fn issuer_keying(&self) -> bool {
        self.issuer_keying
    }

    fn lookup(&self, facts: &TokenFacts<'_>) -> Self::LookupFuture {
        let (pool, protocol, timeout) = (self.pool.clone(), self.protocol, self.timeout);
        let jti = facts.jti.map(str::to_owned);
        let sid = facts.session_id.map(str::to_owned);
        let sub = facts.subject.map(str::to_owned);
        let issuer = facts.issuer.map(str::to_owned);
        Box::pin(async move {
            let statement = Statement::new(CHECK_SQL)
                .text(jti.as_deref())
                .text(sid.as_deref())
                .text(sub.as_deref())
                .text(issuer.as_deref());
            let row = bounded(timeout, statement.fetch_one_on(protocol, &pool)).await?;
            let get_err = |e: sqlx::Error| StoreError::Query(Box::new(e));
            let cutoff = |column| {
                row.try_get::<Option<f64>, _>(column)
                    .map(|cutoff| cutoff.map(epoch_to_unix_seconds))
                    .map_err(get_err)
            };
            Ok(Lookup {
                token_revoked: row.try_get("token").map_err(get_err)?,
                session_revoked: row.try_get("session").map_err(get_err)?,
                subject_cutoff: cutoff("cutoff")?,
                issuer_session_revoked: row.try_get("issuer_session").map_err(get_err)?,
                issuer_subject_cutoff: cutoff("issuer_cutoff")?,
            })
        })
    }

    /// Reads every revocation and its `seq` in one `REPEATABLE READ` transaction, so that
    /// following the feed from that `seq` misses nothing. Bounded by 30 s or the store's timeout,
    /// whichever is longer (a live set of a million rows takes seconds).
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let protocol = self.protocol;
        let read = async {
            let mut tx = self.pool.begin().await?;
            Statement::new("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(protocol, &mut tx)
                .await?;
            let seq: i64 = Statement::new(MAX_SEQ)
                .fetch_one(protocol, &mut tx)
                .await?
                .try_get("seq")?;
            // Every row, expired or not: a token that expired a moment ago still validates within
            // the leeway, and the cache keeps each revocation as long as its token can be
            // presented (see `MokaCacheBuilder::revocation_grace`). Rows long expired are few
            // (the purger deletes them) and are kept in memory for the grace only.
            let rows = Statement::new(concat!(log_select!(), " ORDER BY seq"))
                .fetch_all(protocol, &mut tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>((seq, rows))
        };
        let (seq, rows) = bounded(self.timeout.max(SNAPSHOT_TIMEOUT), read).await?;
        let records = rows.iter().map(record_from_row).collect::<Result<_, _>>()?;
        Ok(Snapshot { records, seq })
    }

    /// Reads the live set through a cursor in one `REPEATABLE READ, READ ONLY` transaction, a
    /// page of 10 000 rows at a time, so memory holds one page however large the set (a
    /// transaction pooler keeps the transaction, and so the cursor, on one server connection).
    /// Each statement is bounded by 30 s or the store's timeout, whichever is longer; the whole
    /// read is not, since it grows with the set.
    async fn snapshot_pages<'a>(
        &'a self,
        page: &'a mut (dyn FnMut(Vec<LiveRevocation>) + Send),
    ) -> Result<i64, StoreError> {
        let (protocol, bound) = (self.protocol, self.timeout.max(SNAPSHOT_TIMEOUT));
        let mut tx = bounded(bound, self.pool.begin()).await?;
        let read_only = Statement::new("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
        bounded(bound, read_only.execute(protocol, &mut tx)).await?;
        let seq: i64 = bounded(bound, Statement::new(MAX_SEQ).fetch_one(protocol, &mut tx))
            .await?
            .try_get("seq")
            .map_err(classify)?;
        bounded(bound, Statement::new(LIVE_CURSOR).execute(protocol, &mut tx)).await?;
        loop {
            let rows = bounded(bound, Statement::new(LIVE_PAGE).fetch_all(protocol, &mut tx)).await?;
            if rows.is_empty() {
                break;
            }
            page(rows.iter().map(live_from_row).collect::<Result<_, _>>()?);
        }
        bounded(bound, tx.commit()).await?;
        Ok(seq)
    }

    fn feed(&self, after: Option<i64>) -> Result<Subscription, StoreError> {
        self.subscribe_after(after)
    }
}
