//! What the two fleet benchmarks (`examples/fleet.rs`, in one process, and
//! `examples/fleet_demo.rs`, in separate processes) share: a database of their own, the
//! connection count, percentiles, and the JSON line each leaves for `bench_report`.
#![allow(dead_code)]

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};

/// What `tests/common/nats.rs` takes from the test fixtures: a program on `PATH` or in
/// `/usr/sbin`.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(0)
}

/// The server `DATABASE_URL` names (default the local one), and a fresh `database` on it.
pub async fn fresh_database(database: &str) -> Result<(PgConnectOptions, PgConnectOptions), sqlx::Error> {
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin: PgConnectOptions = admin_url.parse()?;
    let mut setup = admin.connect().await?;
    setup
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await?;
    setup
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await?;
    let options = admin.clone().database(database);
    Ok((admin, options))
}

/// Connections to `database` now.
pub async fn connections(admin: &sqlx::PgPool, database: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
        .bind(database)
        .fetch_one(admin)
        .await
        .unwrap_or(-1)
}

/// The `p` quantile of `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied()
}

/// Prints the run's line and writes it to `target/bench/{name}.jsonl` for `bench_report`.
pub fn record(name: &str, line: &serde_json::Value) -> Result<(), Box<dyn std::error::Error>> {
    println!("{line}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(format!("target/bench/{name}.jsonl"), format!("{line}\n"))?;
    Ok(())
}
