//! A fleet of separate demo processes (issue 25's process-level targets): N demo servers
//! (`examples/server.rs`, `REVOCATION_FEED=nats`, mirror mode) and two relays
//! (`examples/relay.rs`) on one Postgres and a `nats-server -js` this program starts on a free
//! loopback port.
//!
//! ```text
//! cargo build --release --example server --example relay --example fleet_demo
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres target/release/examples/fleet_demo 40
//! ```
//!
//! It measures, and writes as one JSON line to `target/bench/fleet_demo-{n}.jsonl`:
//! - how many instances answer `GET /readyz` 200, and how soon;
//! - Postgres connections per process once ready, and once idle (every process connects with
//!   its own `application_name`; the demos run with `DATABASE_IDLE_TIMEOUT_SECS`, the second
//!   argument, default 10, instead of the demo's 60, so that "idle" comes sooner; a demo's
//!   purgers run at a random moment in their first 10 minutes, so a connection or two may be
//!   open at that moment: each connection's last statement tells a purge from anything else,
//!   and recorded too is how many demo connections have been idle for more than twice the
//!   timeout, which no pool that closes idle connections keeps);
//! - twenty logouts, each on another instance (`POST /logout`), after the token was used on
//!   every instance: for each other instance, the time from sending the logout to its first
//!   401 for that token (each instance is polled over its own keep-alive connection, every
//!   2 ms);
//! - five revocations by plain SQL (`INSERT INTO jwt_revocations`), timed the same way from the
//!   commit, to every instance.
//!
//! It uses a database of its own, `tower_jwt_revocation_fleet_demo`, dropped and created at
//! start; every process it starts is killed when it ends, and leaves its log in
//! `target/bench/fleet-demo/`.

#[path = "../tests/common/nats.rs"]
mod nats_server;
#[path = "support/fleet.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sqlx::postgres::PgPoolOptions;
use support::{find_program, free_port, percentile};

const DATABASE: &str = "tower_jwt_revocation_fleet_demo";
const SECRET: &str = "fleet-demo-secret-fleet-demo-secret";

/// The processes this run started; killed when it ends, however it ends.
struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A program built beside this one (`target/<profile>/examples/<name>`).
fn sibling(name: &str) -> Result<std::path::PathBuf, String> {
    let program = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name(name);
    program.is_file().then_some(program.clone()).ok_or_else(|| {
        format!(
            "{} is missing: cargo build --release --example server --example relay",
            program.display()
        )
    })
}

/// Where a process's log goes: `target/bench/fleet-demo/{name}.log`.
fn log(name: &str) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all("target/bench/fleet-demo")?;
    std::fs::File::create(format!("target/bench/fleet-demo/{name}.log"))
}

/// One keep-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request on `sender`: its status and body.
async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(StatusCode, Bytes), String> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// A token for `sub` from instance `addr`'s `POST /login`, and its `jti`.
async fn login(addr: SocketAddr, sub: &str) -> Result<(String, String), String> {
    let mut sender = connect(addr).await?;
    let (status, body) = call(
        &mut sender,
        Method::POST,
        "/login",
        None,
        &format!(r#"{{"sub":"{sub}"}}"#),
    )
    .await?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let token = value["access_token"]
        .as_str()
        .ok_or_else(|| format!("login answered {status}: {value}"))?
        .to_owned();
    let (_, me) = call(&mut sender, Method::GET, "/me", Some(&token), "").await?;
    let me: serde_json::Value = serde_json::from_slice(&me).map_err(|e| e.to_string())?;
    let jti = me["jti"].as_str().ok_or("GET /me named no jti")?.to_owned();
    Ok((token, jti))
}

/// Uses `token` once on each of `senders`: each must answer 200 (and so has verified it and
/// holds it in its verified-token cache).
async fn warm(senders: &mut [SendRequest<Full<Bytes>>], token: &str) -> Result<(), String> {
    for sender in senders.iter_mut() {
        let (status, _) = call(sender, Method::GET, "/me", Some(token), "").await?;
        if status != StatusCode::OK {
            return Err(format!("a fresh token answered {status}"));
        }
    }
    Ok(())
}

/// Polls every sender every 2 ms until each answers 401 for `token`: how long after `since`
/// each did, in ms (`None` where 10 s passed first).
async fn refused_after(
    senders: &mut [SendRequest<Full<Bytes>>],
    token: &str,
    since: Instant,
) -> Vec<Option<f64>> {
    let polls = senders.iter_mut().map(|sender| async move {
        while since.elapsed() < Duration::from_secs(10) {
            if let Ok((StatusCode::UNAUTHORIZED, _)) = call(sender, Method::GET, "/me", Some(token), "").await
            {
                return Some(since.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    });
    join_all(polls).await
}

/// Polls `futures` together on this task until all are done (the crate has no `futures`
/// dependency, and tasks of their own would need `'static` borrows).
async fn join_all<F: std::future::Future<Output = T>, T>(futures: impl IntoIterator<Item = F>) -> Vec<T> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, future) in out.iter_mut().zip(pending.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *slot = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Postgres connections to the fleet's database by who holds them. Each process connects with
/// its own `application_name` (`demo-{i}`, `relay-{i}`); a relay's feed connection is
/// `jwt_revocation_relay/relay-{i}`.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    /// Every demo's.
    demos: i64,
    /// The most one demo holds.
    demo_max: i64,
    /// Demo connections whose last statement was not a purge's (`DELETE FROM jwt_...`).
    demos_not_purging: i64,
    /// The most one relay holds.
    relay_max: i64,
    /// Anyone else's (this program's own writer among them).
    other: i64,
}

async fn held(admin: &sqlx::PgPool) -> Result<Held, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT application_name, coalesce(query, '') FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(DATABASE)
    .fetch_all(admin)
    .await?;
    let mut held = Held::default();
    let mut per_demo = std::collections::BTreeMap::<&str, i64>::new();
    let mut per_relay = std::collections::BTreeMap::<&str, i64>::new();
    for (name, query) in &rows {
        if name.starts_with("demo-") {
            held.demos += 1;
            *per_demo.entry(name).or_default() += 1;
            if !query.trim_start().starts_with("DELETE FROM jwt_") {
                held.demos_not_purging += 1;
            }
        } else if let Some(relay) = name
            .strip_prefix("jwt_revocation_relay/")
            .or_else(|| name.starts_with("relay-").then_some(name.as_str()))
        {
            *per_relay.entry(relay).or_default() += 1;
        } else {
            held.other += 1;
        }
    }
    held.demo_max = per_demo.values().copied().max().unwrap_or(0);
    held.relay_max = per_relay.values().copied().max().unwrap_or(0);
    Ok(held)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let instances: usize = args.first().map_or(Ok(40), |n| n.parse())?;
    let idle_secs: u64 = args.get(1).map_or(Ok(10), |n| n.parse())?;
    let (server, relay) = (sibling("server")?, sibling("relay")?);
    let (admin_options, options) = support::fresh_database(DATABASE).await?;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(admin_options)
        .await?;
    let writer = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    tower_jwt_revocation::PgStore::new(writer.clone())
        .migrate()
        .await?;
    let max_connections: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&admin)
        .await?;
    let nats = nats_server::NatsServer::start().ok_or("nats-server is not installed")?;
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = base.split('?').next().unwrap_or_default().to_owned();
    let authority = base.find("://").map_or(0, |at| at + 3);
    let server_url = base[authority..]
        .find('/')
        .map_or(base.as_str(), |path| &base[..authority + path]);
    let url = |name: &str| format!("{server_url}/{DATABASE}?application_name={name}");

    let mut fleet = Fleet(Vec::new());
    for i in 0..2 {
        fleet.0.push(
            Command::new(&relay)
                .env("DATABASE_URL", url(&format!("relay-{i}")))
                .env("NATS_URL", nats.url())
                .env("RELAY_NAME", format!("relay-{i}"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log(&format!("relay-{i}"))?)
                .spawn()?,
        );
    }
    let started = Instant::now();
    let mut addrs = Vec::new();
    for i in 0..instances {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        fleet.0.push(
            Command::new(&server)
                .env("DATABASE_URL", url(&format!("demo-{i}")))
                .env("REVOCATION_FEED", "nats")
                .env("REVOCATION_CACHE", "mirror")
                .env("NATS_URL", nats.url())
                .env("DATABASE_IDLE_TIMEOUT_SECS", idle_secs.to_string())
                .env("JWT_SECRET", SECRET)
                .env("BIND_ADDR", addr.to_string())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log(&format!("demo-{i}"))?)
                .spawn()?,
        );
        addrs.push(addr);
    }
    // Ready: every instance's /readyz is 200 (keys loaded, the revocation tier in sync).
    let mut ready = vec![false; instances];
    while started.elapsed() < Duration::from_secs(120) && !ready.iter().all(|r| *r) {
        for (slot, addr) in ready.iter_mut().zip(&addrs) {
            if !*slot && let Ok(mut sender) = connect(*addr).await {
                *slot = matches!(
                    call(&mut sender, Method::GET, "/readyz", None, "").await,
                    Ok((StatusCode::OK, _))
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_s = started.elapsed().as_secs_f64();
    let ready_count = ready.iter().filter(|r| **r).count();
    eprintln!("{ready_count} of {instances} instances ready after {ready_s:.1} s");
    let held_ready = held(&admin).await?;
    let live: Vec<SocketAddr> = addrs
        .iter()
        .zip(&ready)
        .filter(|(_, r)| **r)
        .map(|(a, _)| *a)
        .collect();
    let mut senders = Vec::new();
    for addr in &live {
        senders.push(connect(*addr).await?);
    }

    // Logouts, each taken by another instance; every other instance is timed.
    let (mut logouts, mut missed, mut slowest) = (Vec::new(), 0, Vec::new());
    // How long each logout request took (its commit), within the times above.
    let mut requests = Vec::new();
    for (round, addr) in live.iter().enumerate().take(20) {
        let (token, _) = login(*addr, &format!("fleet-{round}")).await?;
        warm(&mut senders, &token).await?;
        let mut taker = senders.remove(round);
        // Timed from the moment the logout is sent: its commit wakes the relays before the
        // 204 is back.
        let since = Instant::now();
        let (status, body) = call(&mut taker, Method::POST, "/logout", Some(&token), "").await?;
        requests.push(since.elapsed().as_secs_f64() * 1000.0);
        if status != StatusCode::NO_CONTENT {
            let body = String::from_utf8_lossy(&body);
            return Err(format!(
                "logout answered {status}: {body}; connections {:?}",
                held(&admin).await
            )
            .into());
        }
        let lags = refused_after(&mut senders, &token, since).await;
        senders.insert(round, taker);
        for (other, lag) in lags.iter().enumerate() {
            let other = if other >= round { other + 1 } else { other };
            slowest.push((lag.unwrap_or(f64::INFINITY), round, other));
        }
        missed += lags.iter().filter(|lag| lag.is_none()).count();
        logouts.extend(lags.into_iter().flatten());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    logouts.sort_by(f64::total_cmp);
    requests.sort_by(f64::total_cmp);
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    slowest.truncate(5);

    // Revocations by plain SQL, timed from their commit to every instance.
    let mut by_sql = Vec::new();
    for round in 0..5 {
        let (token, jti) = login(live[round % live.len()], &format!("dba-{round}")).await?;
        warm(&mut senders, &token).await?;
        sqlx::query("INSERT INTO jwt_revocations (jti, expires_at) VALUES ($1, now() + interval '1 hour')")
            .bind(&jti)
            .execute(&writer)
            .await?;
        let since = Instant::now();
        let lags = refused_after(&mut senders, &token, since).await;
        missed += lags.iter().filter(|lag| lag.is_none()).count();
        by_sql.extend(lags.into_iter().flatten());
    }
    by_sql.sort_by(f64::total_cmp);
    drop(senders);
    writer.close().await;

    // Idle: past the demos' idle timeout (and a pool's reaper period) with no traffic.
    tokio::time::sleep(Duration::from_secs(2 * idle_secs + 2)).await;
    let held_idle = held(&admin).await?;
    // Demo connections idle past twice the timeout (the pool's reaper runs once per timeout):
    // none, unless a pool keeps what it no longer uses.
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'demo-%' \
         AND state = 'idle' AND now() - state_change > make_interval(secs => $2)",
    )
    .bind(DATABASE)
    .bind(2.0 * idle_secs as f64)
    .fetch_one(&admin)
    .await
    .unwrap_or(-1);
    let line = serde_json::json!({
        "instances": instances,
        "relays": 2,
        "max_connections": max_connections,
        "ready": ready_count,
        "ready_s": ready_s,
        "idle_timeout_s": idle_secs,
        "instances_connections_ready": held_ready.demos,
        "instance_connections_ready_max": held_ready.demo_max,
        "relay_connections_ready_max": held_ready.relay_max,
        "instances_connections_idle": held_idle.demos,
        "instance_connections_idle_max": held_idle.demo_max,
        "instances_connections_idle_not_purging": held_idle.demos_not_purging,
        "instances_connections_idle_past_2x_timeout": stale,
        "relay_connections_idle_max": held_idle.relay_max,
        "other_connections_idle": held_idle.other,
        "logout_samples": logouts.len(),
        "logout_p50_ms": percentile(&logouts, 0.5),
        "logout_p99_ms": percentile(&logouts, 0.99),
        "logout_max_ms": logouts.last(),
        "logout_request_p50_ms": percentile(&requests, 0.5),
        "logout_request_max_ms": requests.last(),
        "sql_samples": by_sql.len(),
        "sql_p50_ms": percentile(&by_sql, 0.5),
        "sql_max_ms": by_sql.last(),
        "missed": missed,
        "logout_slowest": slowest
            .iter()
            .map(|(ms, round, instance)| serde_json::json!({"ms": ms, "round": round, "instance": instance}))
            .collect::<Vec<_>>(),
    });
    drop(fleet);
    support::record(&format!("fleet_demo-{instances}"), &line)
}
