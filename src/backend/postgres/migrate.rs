//! The crate's migrations, applied with a history of their own so that they live beside the
//! application's sqlx migrations in the same database and schema.
//!
//! sqlx's `Migrator` keeps one history, `_sqlx_migrations`, and refuses to run when it holds a
//! version it does not know (`VersionMissing`): an application with migrations of its own could
//! neither run ours through it nor its own after ours. So [`run`] applies the same files
//! (embedded by `sqlx::migrate!`, see [`MIGRATOR`]) and records them in
//! [`HISTORY_TABLE`], with the columns sqlx uses:
//!
//! - Everything happens in one transaction that first takes a transaction-scoped advisory lock:
//!   two instances starting at the same moment apply each migration once (the second waits, then
//!   finds nothing to do), and the lock is released by the commit even through a transaction
//!   pooler, where a session-level lock (what sqlx takes) would be held by whichever server
//!   connection the pooler picked.
//! - Versions recorded that this build does not know (a newer build migrated first, during a
//!   rolling deploy) are left alone. A known version whose checksum differs is an error: its
//!   file was edited after it ran.
//! - A database migrated through `_sqlx_migrations` (by [`MIGRATOR`], or
//!   `sqlx migrate run` on this crate's `migrations/`) is adopted: versions found there with the
//!   same checksum are recorded in [`HISTORY_TABLE`] and not run again. `_sqlx_migrations` itself is
//!   never written.
//!
//! Migrations are not bounded by the store's timeout: they take what they take, once, at start.

use std::time::Instant;

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use super::sql::{Protocol, Statement, classify};
use crate::backend::StoreError;

/// The crate's migrations, for `#[sqlx::test(migrator = ...)]` fixtures and for tools that want
/// to read them. Applications should run them with [`PgStore::migrate`](super::PgStore::migrate), which keeps their
/// history in [`HISTORY_TABLE`] and so coexists with the application's own sqlx migrations;
/// running this `Migrator` records them in `_sqlx_migrations`, where an application's
/// `Migrator` then finds versions it does not know.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The table in which [`PgStore::migrate`](super::PgStore::migrate) records the crate's
/// migrations.
pub const HISTORY_TABLE: &str = "_jwt_revocation_migrations";

/// The key of the advisory lock held while migrating ("jwtrmigr").
const LOCK_KEY: i64 = 0x6a77_7472_6d69_6772;

const CREATE_HISTORY: &str = "CREATE TABLE _jwt_revocation_migrations (
    version        bigint      PRIMARY KEY,
    description    text        NOT NULL,
    installed_on   timestamptz NOT NULL DEFAULT now(),
    success        boolean     NOT NULL,
    checksum       bytea       NOT NULL,
    execution_time bigint      NOT NULL
);
COMMENT ON TABLE _jwt_revocation_migrations IS
    'Migrations of tower-jwt-revocation applied to this database (its own history, beside the application''s _sqlx_migrations).'";

const RECORD: &str = "INSERT INTO _jwt_revocation_migrations \
    (version, description, success, checksum, execution_time) VALUES ($1, $2, true, $3, $4)";

/// Applies every migration of this crate not yet recorded, on `connection`, in one transaction.
pub(super) async fn run(connection: &mut PgConnection, protocol: Protocol) -> Result<(), StoreError> {
    let sql = |e: sqlx::Error| classify(e);
    let mut tx = connection.begin().await.map_err(sql)?;
    Statement::new("SELECT pg_advisory_xact_lock($1)")
        .int(LOCK_KEY)
        .execute(protocol, &mut tx)
        .await
        .map_err(sql)?;
    // Created (and commented) only when missing: on later starts the application's role needs
    // no privilege beyond reading and writing it.
    let history = Statement::new("SELECT to_regclass('_jwt_revocation_migrations') IS NOT NULL AS present")
        .fetch_one(protocol, &mut tx)
        .await
        .map_err(sql)?;
    if !history.try_get::<bool, _>("present").map_err(sql)? {
        (&mut *tx).execute(CREATE_HISTORY).await.map_err(sql)?;
    }
    let applied = versions(
        &mut tx,
        protocol,
        "SELECT version, checksum FROM _jwt_revocation_migrations",
    )
    .await?;
    let adoptable = if applied.is_empty() {
        let sqlx_history = Statement::new("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS present")
            .fetch_one(protocol, &mut tx)
            .await
            .map_err(sql)?;
        if sqlx_history.try_get::<bool, _>("present").map_err(sql)? {
            versions(
                &mut tx,
                protocol,
                "SELECT version, checksum FROM _sqlx_migrations WHERE success",
            )
            .await?
        } else {
            Vec::new()
        }
    } else {
        Vec::new()
    };

    for migration in MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()) {
        let recorded = |list: &[(i64, Vec<u8>)]| {
            list.iter()
                .find(|(version, _)| *version == migration.version)
                .map(|(_, checksum)| checksum.clone())
        };
        if let Some(checksum) = recorded(&applied) {
            if checksum != *migration.checksum {
                return Err(StoreError::Query(
                    format!(
                        "migration {} ({}) was applied with different contents: its file was edited after it ran",
                        migration.version, migration.description
                    )
                    .into(),
                ));
            }
            continue;
        }
        let started = Instant::now();
        if recorded(&adoptable).as_deref() != Some(&*migration.checksum) {
            (&mut *tx).execute(&*migration.sql).await.map_err(|error| {
                StoreError::Query(
                    format!(
                        "migration {} ({}) failed: {error}",
                        migration.version, migration.description
                    )
                    .into(),
                )
            })?;
        }
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        Statement::new(RECORD)
            .int(migration.version)
            .text(Some(&*migration.description))
            .bytes(&migration.checksum)
            .int(nanos)
            .execute(protocol, &mut tx)
            .await
            .map_err(sql)?;
    }
    // `seq` is in commit order only while the sequence hands out one number at a time: with a
    // cache, a session could commit a lower number after others committed higher ones, and the
    // change feed, reading "past the last seq delivered", would skip it.
    let cache = Statement::new(
        "SELECT coalesce((SELECT cache_size FROM pg_sequences \
         WHERE sequencename = 'jwt_revocation_seq' AND schemaname = current_schema()), 1)::int8 AS cache",
    )
    .fetch_one(protocol, &mut tx)
    .await
    .map_err(sql)?
    .try_get::<i64, _>("cache")
    .map_err(sql)?;
    if cache > 1 {
        tracing::warn!(
            cache,
            "jwt_revocation_seq has CACHE > 1: revocations may reach other instances late; ALTER SEQUENCE jwt_revocation_seq CACHE 1"
        );
    }
    tx.commit().await.map_err(sql)
}

async fn versions(
    connection: &mut PgConnection,
    protocol: Protocol,
    query: &'static str,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let rows = Statement::new(query)
        .fetch_all(protocol, &mut *connection)
        .await
        .map_err(classify)?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("version").map_err(classify)?,
                row.try_get("checksum").map_err(classify)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_runs_in_a_transaction() {
        assert!(MIGRATOR.iter().all(|m| !m.no_tx));
        assert!(MIGRATOR.iter().count() >= 2);
    }
}
