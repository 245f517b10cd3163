//! How the Postgres side talks SQL: statements that work through a transaction pooler, the
//! conversions between ledger values and Rust values (none of which may panic, whatever a DBA
//! wrote), and the classification of errors into "unreachable" and "answered with an error".
//!
//! # Statements and transaction poolers
//!
//! sqlx sends a statement with parameters as a named prepared statement (`sqlx_s_N`, parsed
//! once per connection and never closed when the cache is off), and in two round trips (parse,
//! then bind and execute). A transaction-mode pooler (PgBouncer, Supavisor) may hand those round
//! trips, and the next client's `sqlx_s_1`, to different server connections: "prepared statement
//! sqlx_s_1 already exists", or a statement that is gone before it is executed. So a
//! [`Statement`] runs in one of two ways, chosen per connection ([`Protocol::of`]):
//! [`Protocol::Prepared`] (sqlx's way, the fastest on a direct connection) or
//! [`Protocol::Inline`]: one simple-protocol message with every value inlined as a literal, as
//! pgx's simple protocol and PgBouncer's own documentation do. Values are typed (text, integer,
//! float, bytes) and rendered by one function, [`literal`]: text as an `E''` string with quotes
//! and backslashes escaped (correct whatever `standard_conforming_strings` says), numbers in
//! Rust's own notation, bytes in hex; the SQL around them is always a `&'static str` of this
//! crate.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgRow};
use sqlx::{Executor, Postgres, Row};

use crate::backend::{
    LiveRevocation, RevocationEvent, RevocationKind, RevocationRecord, StoreError, far_future,
};

/// How statements are sent on a connection; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Prepared statements with bound parameters, cached per connection (sqlx's default).
    Prepared,
    /// One simple-protocol message per statement with its values inlined as literals: safe
    /// through a transaction-mode pooler.
    Inline,
}

impl Protocol {
    /// [`Inline`](Self::Inline) behind a transaction pooler, [`Prepared`](Self::Prepared)
    /// otherwise.
    pub(crate) fn behind_pooler(behind_pooler: bool) -> Self {
        if behind_pooler {
            Protocol::Inline
        } else {
            Protocol::Prepared
        }
    }

    /// [`Inline`](Self::Inline) for connections whose statement cache is off
    /// (`statement-cache-capacity=0` in the URL), the setting sqlx users give a connection
    /// through a transaction pooler; [`Prepared`](Self::Prepared) otherwise.
    pub(crate) fn of(options: &PgConnectOptions) -> Self {
        // sqlx 0.8 has no getter for the capacity; its `Debug` output names the field.
        let debug = format!("{options:?}");
        if debug.contains("statement_cache_capacity: 0,") || debug.contains("statement_cache_capacity: 0 }") {
            Protocol::Inline
        } else {
            Protocol::Prepared
        }
    }
}

/// The future of a statement on a connection.
pub(crate) type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'c>>;

/// One value of a [`Statement`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Text(Option<&'a str>),
    Int(i64),
    Float(Option<f64>),
    Bytes(&'a [u8]),
}

/// A statement of this crate (`$1`, `$2`, ... placeholders) and its values.
#[derive(Debug)]
pub(crate) struct Statement<'a> {
    sql: &'static str,
    values: Vec<Value<'a>>,
}

impl<'a> Statement<'a> {
    pub(crate) fn new(sql: &'static str) -> Self {
        Self {
            sql,
            values: Vec::new(),
        }
    }

    pub(crate) fn text(mut self, value: impl Into<Option<&'a str>>) -> Self {
        self.values.push(Value::Text(value.into()));
        self
    }

    pub(crate) fn int(mut self, value: i64) -> Self {
        self.values.push(Value::Int(value));
        self
    }

    pub(crate) fn float(mut self, value: impl Into<Option<f64>>) -> Self {
        self.values.push(Value::Float(value.into()));
        self
    }

    pub(crate) fn bytes(mut self, value: &'a [u8]) -> Self {
        self.values.push(Value::Bytes(value));
        self
    }

    // The primitives return boxed futures: an `async fn` here would make every caller's future
    // prove `Executor` for all lifetimes of `&mut PgConnection` to be `Send`, which rustc cannot
    // (the "implementation of `Executor` is not general enough" error).

    /// Every row.
    pub(crate) fn fetch_all<'c>(
        self,
        protocol: Protocol,
        connection: &'c mut PgConnection,
    ) -> BoxFuture<'c, Vec<PgRow>>
    where
        'a: 'c,
    {
        Box::pin(async move {
            match protocol {
                Protocol::Prepared => self.prepared().fetch_all(connection).await,
                Protocol::Inline => {
                    let sql = self.inline()?;
                    connection.fetch_all(sql.as_str()).await
                }
            }
        })
    }

    /// The first row, if any.
    pub(crate) fn fetch_optional<'c>(
        self,
        protocol: Protocol,
        connection: &'c mut PgConnection,
    ) -> BoxFuture<'c, Option<PgRow>>
    where
        'a: 'c,
    {
        Box::pin(async move {
            match protocol {
                Protocol::Prepared => self.prepared().fetch_optional(connection).await,
                Protocol::Inline => {
                    let sql = self.inline()?;
                    connection.fetch_optional(sql.as_str()).await
                }
            }
        })
    }

    /// Exactly one row.
    pub(crate) async fn fetch_one(
        self,
        protocol: Protocol,
        connection: &mut PgConnection,
    ) -> Result<PgRow, sqlx::Error> {
        self.fetch_optional(protocol, connection)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs it; returns the rows affected.
    pub(crate) fn execute<'c>(
        self,
        protocol: Protocol,
        connection: &'c mut PgConnection,
    ) -> BoxFuture<'c, u64>
    where
        'a: 'c,
    {
        Box::pin(async move {
            let result = match protocol {
                Protocol::Prepared => self.prepared().execute(connection).await?,
                Protocol::Inline => {
                    let sql = self.inline()?;
                    connection.execute(sql.as_str()).await?
                }
            };
            Ok(result.rows_affected())
        })
    }

    /// [`fetch_all`](Self::fetch_all) on a connection from `pool`.
    pub(crate) async fn fetch_all_on(
        self,
        protocol: Protocol,
        pool: &PgPool,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        self.fetch_all(protocol, &mut *pool.acquire().await?).await
    }

    /// [`fetch_one`](Self::fetch_one) on a connection from `pool`.
    pub(crate) async fn fetch_one_on(self, protocol: Protocol, pool: &PgPool) -> Result<PgRow, sqlx::Error> {
        self.fetch_one(protocol, &mut *pool.acquire().await?).await
    }

    /// [`execute`](Self::execute) on a connection from `pool`.
    pub(crate) async fn execute_on(self, protocol: Protocol, pool: &PgPool) -> Result<u64, sqlx::Error> {
        self.execute(protocol, &mut *pool.acquire().await?).await
    }

    fn prepared(self) -> sqlx::query::Query<'a, Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(self.sql);
        for value in self.values {
            query = match value {
                Value::Text(text) => query.bind(text),
                Value::Int(int) => query.bind(int),
                Value::Float(float) => query.bind(float),
                Value::Bytes(bytes) => query.bind(bytes),
            };
        }
        query
    }

    /// The SQL with every `$n` replaced by the literal of value `n`. Every value must be used
    /// (as a prepared statement insists on too).
    fn inline(&self) -> Result<String, sqlx::Error> {
        let mut sql = String::with_capacity(self.sql.len() + 16 * self.values.len());
        let mut used = vec![false; self.values.len()];
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            sql.push_str(&rest[..at]);
            let digits = rest[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
            let index = rest[at + 1..at + 1 + digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .filter(|i| *i < self.values.len())
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!("statement placeholder without a value: {}", self.sql))
                })?;
            used[index] = true;
            literal(&mut sql, &self.values[index])?;
            rest = &rest[at + 1 + digits..];
        }
        sql.push_str(rest);
        if used.contains(&false) {
            return Err(sqlx::Error::Protocol(format!(
                "statement value without a placeholder: {}",
                self.sql
            )));
        }
        Ok(sql)
    }
}

/// Appends `value` as an SQL literal.
fn literal(sql: &mut String, value: &Value<'_>) -> Result<(), sqlx::Error> {
    match *value {
        Value::Text(None) => sql.push_str("NULL::text"),
        Value::Text(Some(text)) => {
            if text.contains('\0') {
                // Postgres text cannot hold NUL; a prepared statement is refused the same way.
                return Err(sqlx::Error::Encode("text values cannot contain NUL".into()));
            }
            sql.push_str("E'");
            for c in text.chars() {
                match c {
                    '\'' => sql.push_str("''"),
                    '\\' => sql.push_str("\\\\"),
                    c => sql.push(c),
                }
            }
            sql.push_str("'::text");
        }
        Value::Int(int) => {
            let _ = write!(sql, "({int})::int8");
        }
        Value::Float(None) => sql.push_str("NULL::float8"),
        Value::Float(Some(float)) => {
            if float.is_nan() {
                sql.push_str("'NaN'::float8");
            } else if float.is_infinite() {
                sql.push_str(if float > 0.0 {
                    "'Infinity'::float8"
                } else {
                    "'-Infinity'::float8"
                });
            } else {
                let _ = write!(sql, "'{float:?}'::float8");
            }
        }
        Value::Bytes(bytes) => {
            sql.push_str("decode('");
            for byte in bytes {
                let _ = write!(sql, "{byte:02x}");
            }
            sql.push_str("', 'hex')");
        }
    }
    Ok(())
}

/// Runs `operation` within `timeout`, classifying its errors.
pub(crate) async fn bounded<T, F>(timeout: Duration, operation: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, sqlx::Error>>,
{
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Tells "the store cannot be reached" from "the store answered with an error".
pub(crate) fn classify(error: sqlx::Error) -> StoreError {
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
/// revocation kept until [`far_future`] round-trips instead of failing.
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
/// the platform's clock) becomes [`far_future`], `'-infinity'` (and anything before the clock's
/// range) the earliest time the clock holds down to the Unix epoch.
pub(crate) fn from_epoch_seconds(seconds: f64) -> SystemTime {
    if seconds.is_nan() {
        return UNIX_EPOCH;
    }
    let magnitude = Duration::try_from_secs_f64(seconds.abs()).ok();
    if seconds >= 0.0 {
        magnitude
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .unwrap_or_else(far_future)
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

/// The columns of `jwt_revocation_log` as [`record_from_row`] reads them; a macro so that
/// queries are assembled with `concat!` at compile time, never at run time.
macro_rules! log_select {
    () => {
        "SELECT kind, key, subject, \
    extract(epoch FROM expires_at)::float8 AS expires_at, \
    extract(epoch FROM not_before)::float8 AS not_before, \
    extract(epoch FROM revoked_at)::float8 AS revoked_at, \
    reason, revoked_by, seq, issuer FROM jwt_revocation_log"
    };
}
pub(crate) use log_select;

/// Every revocation with `seq` greater than `$1`, in `seq` order, at most `$2`.
pub(crate) const EVENTS_SINCE: &str = concat!(log_select!(), " WHERE seq > $1 ORDER BY seq LIMIT $2");

/// A cursor over the live set as a mirror reads it: the key columns only, in no particular order
/// (an `ORDER BY` would sort millions of rows before the first page).
pub(crate) const LIVE_CURSOR: &str = "DECLARE jwt_revocation_snapshot NO SCROLL CURSOR FOR \
    SELECT kind, key, extract(epoch FROM expires_at)::float8, extract(epoch FROM not_before)::float8, issuer \
    FROM jwt_revocation_log";

/// One page of [`LIVE_CURSOR`].
pub(crate) const LIVE_PAGE: &str = "FETCH FORWARD 10000 FROM jwt_revocation_snapshot";

/// The highest `seq` in the ledger (0 when empty).
pub(crate) const MAX_SEQ: &str = "SELECT coalesce(max(seq), 0)::int8 AS seq FROM jwt_revocation_log";
/// The sequence's last value (0 before its first `nextval`).
/// (`pg_sequence_last_value` needs `USAGE` or `SELECT` on the sequence, which every writer has.)
pub(crate) const SEQUENCE_END: &str =
    "SELECT coalesce(pg_sequence_last_value('jwt_revocation_seq'::regclass), 0)::int8 AS seq";

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

fn get_error(error: sqlx::Error) -> StoreError {
    StoreError::Query(Box::new(error))
}

pub(crate) fn record_from_row(row: &PgRow) -> Result<RevocationRecord, StoreError> {
    let kind: String = row.try_get("kind").map_err(get_error)?;
    let time = |column: &str| {
        row.try_get::<Option<f64>, _>(column)
            .map(|seconds| seconds.map(from_epoch_seconds))
            .map_err(get_error)
    };
    Ok(RevocationRecord {
        kind: kind_from_str(&kind)?,
        key: row.try_get("key").map_err(get_error)?,
        issuer: row.try_get("issuer").map_err(get_error)?,
        subject: row.try_get("subject").map_err(get_error)?,
        expires_at: time("expires_at")?,
        not_before: time("not_before")?,
        revoked_at: time("revoked_at")?.unwrap_or(UNIX_EPOCH),
        reason: row.try_get("reason").map_err(get_error)?,
        revoked_by: row.try_get("revoked_by").map_err(get_error)?,
    })
}

/// A row of [`LIVE_CURSOR`], read by position.
pub(crate) fn live_from_row(row: &PgRow) -> Result<LiveRevocation, StoreError> {
    let time = |column: usize| {
        row.try_get::<Option<f64>, _>(column)
            .map(|seconds| seconds.map(from_epoch_seconds))
            .map_err(get_error)
    };
    Ok(LiveRevocation {
        kind: kind_from_str(row.try_get(0).map_err(get_error)?)?,
        key: row.try_get(1).map_err(get_error)?,
        issuer: row.try_get(4).map_err(get_error)?,
        expires_at: time(2)?,
        not_before: time(3)?,
    })
}

pub(crate) fn event_from_row(row: &PgRow) -> Result<RevocationEvent, StoreError> {
    Ok(RevocationEvent {
        seq: row.try_get("seq").map_err(get_error)?,
        record: record_from_row(row)?,
    })
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
    }

    #[test]
    fn the_statement_cache_setting_selects_the_protocol() {
        let options = PgConnectOptions::new();
        assert_eq!(Protocol::of(&options), Protocol::Prepared);
        assert_eq!(
            Protocol::of(&options.clone().statement_cache_capacity(0)),
            Protocol::Inline
        );
        assert_eq!(
            Protocol::of(&options.statement_cache_capacity(10)),
            Protocol::Prepared
        );
    }

    #[test]
    fn inlined_values_are_literals_whatever_they_hold() {
        let statement = Statement::new("SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10")
            .text(Some("it's a \\ test ' OR 1=1 --"))
            .text(None)
            .int(-42)
            .float(1.5)
            .float(f64::INFINITY)
            .float(f64::NEG_INFINITY)
            .bytes(&[0, 255, 16])
            .text(Some("ünïcødé"))
            .int(1)
            .int(10);
        assert_eq!(
            statement.inline().unwrap(),
            "SELECT E'it''s a \\\\ test '' OR 1=1 --'::text, NULL::text, (-42)::int8, '1.5'::float8, \
             'Infinity'::float8, '-Infinity'::float8, decode('00ff10', 'hex'), E'ünïcødé'::text, (1)::int8, (10)::int8"
        );
        let nul = Statement::new("SELECT $1").text(Some("a\0b"));
        assert!(nul.inline().is_err());
        let missing = Statement::new("SELECT $1, $2").int(1);
        assert!(missing.inline().is_err());
        let unused = Statement::new("SELECT $1").int(1).int(2);
        assert!(unused.inline().is_err());
    }
}
