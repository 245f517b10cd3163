//! Shared fixtures of the integration tests: token minting, layers, and backends whose whole
//! job is to misbehave in one specific way.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower_jwt_revocation::{Ledger, MokaCache, RevocationBackend, StoreError, TokenFacts, Verdict};

pub const SECRET: &[u8] = b"integration-test-secret-of-decent-length";

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

/// Signs `claims` with HS256 and [`SECRET`].
pub fn mint(claims: Value) -> String {
    mint_with(Header::new(Algorithm::HS256), claims, SECRET)
}

pub fn mint_with(header: Header, claims: Value, secret: &[u8]) -> String {
    tower_jwt_revocation::decode::install_crypto_provider();
    encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Standard claims of a fresh token for `sub` with id `jti`, valid for ten minutes.
pub fn claims(jti: &str, sub: &str) -> Value {
    json!({"jti": jti, "sub": sub, "iat": now(), "exp": now() + 600})
}

/// The facts of a fresh token `jti` of `subject`, issued now, valid for ten minutes.
pub fn facts<'a>(jti: &'a str, subject: &'a str) -> TokenFacts<'a> {
    TokenFacts {
        jti: Some(jti),
        subject: Some(subject),
        issued_at: Some(now()),
        expires_at: Some(now() + 600),
        ..TokenFacts::default()
    }
}

/// A cache's answer in the layer's order: the fast path, then the slow path.
pub async fn verdict<B: Ledger>(cache: &MokaCache<B>, facts: &TokenFacts<'_>) -> Result<Verdict, StoreError> {
    match cache.try_check(facts) {
        Some(answer) => answer,
        None => cache.check(facts).await,
    }
}

/// The name of the database `pool` connects to (each `#[sqlx::test]` has its own).
pub async fn database_name(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A backend whose every check fails, on the fast path or (with `slow`) the slow path.
#[derive(Clone, Default)]
pub struct FailingBackend {
    pub slow: bool,
}

impl RevocationBackend for FailingBackend {
    type Future = std::future::Ready<Result<Verdict, StoreError>>;

    fn try_check(&self, _: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        (!self.slow).then(|| Err(StoreError::Timeout(Duration::from_millis(250))))
    }

    fn check(&self, _: &TokenFacts<'_>) -> Self::Future {
        std::future::ready(Err(StoreError::Unavailable("connection refused".into())))
    }
}

/// Wraps a backend so that it never answers on the fast path, and its slow path yields to the
/// runtime once before answering: every check goes through the layer's waiting state.
/// It also counts how often it was asked.
#[derive(Clone)]
pub struct SlowPath<B> {
    pub inner: B,
    pub checks: Arc<AtomicUsize>,
}

impl<B> SlowPath<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            checks: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }
}

impl<B: RevocationBackend + Clone> RevocationBackend for SlowPath<B> {
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

    fn try_check(&self, _: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        None
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let answer = self.inner.try_check(facts);
        Box::pin(async move {
            tokio::task::yield_now().await;
            answer.unwrap_or(Err(StoreError::InvalidInput(
                "the wrapped backend has no fast path",
            )))
        })
    }
}

/// Polls `condition` every 10 ms until it holds; fails the test after 5 s.
pub async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_within(what, Duration::from_secs(5), condition).await;
}

/// Polls `condition` every 10 ms until it holds; fails the test after `bound`.
pub async fn wait_until_within<F, Fut>(what: &str, bound: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The path of the program `name` on `PATH` or in the system directories daemons live in.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/local/sbin"),
            PathBuf::from("/usr/local/bin"),
        ])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// One of this package's examples, as `cargo test` built it beside the test binaries
/// (`target/<profile>/examples/<name>`); `None`, with the reason printed, when it was not built
/// (a run of a single test target builds no examples: `scripts/test.sh` runs them all).
pub fn example_program(name: &str) -> Option<std::path::PathBuf> {
    let program = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .join("examples")
        .join(name);
    if program.is_file() {
        Some(program)
    } else {
        eprintln!(
            "SKIPPED: {} was not built (run the whole suite, as scripts/test.sh does, to build the examples)",
            program.display()
        );
        None
    }
}

/// A URL for the database `pool` connects to, on the server `DATABASE_URL` names (for a
/// process a test starts).
pub async fn database_url(pool: &sqlx::PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for Postgres tests");
    let base = base.split('?').next().unwrap_or_default();
    let authority = base.find("://").map_or(0, |at| at + 3);
    let server = base[authority..]
        .find('/')
        .map_or(base, |path| &base[..authority + path]);
    format!("{server}/{}", database_name(pool).await)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A token revocation written by plain SQL, as a DBA or another service would.
pub async fn revoke_by_sql(pool: &sqlx::PgPool, jti: &str) {
    sqlx::query("INSERT INTO jwt_revocations (jti, expires_at) VALUES ($1, now() + interval '1 hour')")
        .bind(jti)
        .execute(pool)
        .await
        .unwrap();
}

pub mod cluster;
pub mod dpop;
pub mod faulty;
pub mod nats;
pub mod pgbouncer;
pub mod provider;
pub mod proxy;

/// A backend that answers on its slow path only, from a `MemoryStore`, or fails while `failing`
/// is set: a store outage that a test switches on and off.
#[derive(Clone, Default)]
pub struct Outage {
    pub store: tower_jwt_revocation::MemoryStore,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl RevocationBackend for Outage {
    type Future = std::future::Ready<Result<Verdict, StoreError>>;

    fn try_check(&self, _: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        None
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        std::future::ready(if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("connection refused".into()))
        } else {
            Ok(self.store.verdict(facts))
        })
    }
}

/// Everything logged (at `info` and above) on this thread while the guard lives.
pub fn capture_logs() -> (tracing::subscriber::DefaultGuard, Logs) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (tracing::subscriber::set_default(subscriber), logs)
}

/// The text a [`capture_logs`] subscriber wrote.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|line| line.contains(needle)).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `MemoryStore` that counts the revocations written through it (to tell "acted again" from
/// "acted on nothing" where writes are idempotent anyway).
#[derive(Clone, Default)]
pub struct CountingStore {
    pub store: tower_jwt_revocation::MemoryStore,
    pub revokes: Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingStore {
    pub fn revokes(&self) -> usize {
        self.revokes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl RevocationBackend for CountingStore {
    type Future = <tower_jwt_revocation::MemoryStore as RevocationBackend>::Future;

    fn try_check(&self, facts: &TokenFacts<'_>) -> Option<Result<Verdict, StoreError>> {
        self.store.try_check(facts)
    }

    fn check(&self, facts: &TokenFacts<'_>) -> Self::Future {
        self.store.check(facts)
    }
}

impl tower_jwt_revocation::RevocationStore for CountingStore {
    async fn revoke(&self, revocation: &tower_jwt_revocation::Revocation<'_>) -> Result<bool, StoreError> {
        self.revokes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.store.revoke(revocation).await
    }

    async fn list_by_subject(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<tower_jwt_revocation::RevocationRecord>, StoreError> {
        self.store.list_by_subject(subject, limit).await
    }

    async fn purge_expired(&self, margin: Duration) -> Result<u64, StoreError> {
        self.store.purge_expired(margin).await
    }
}
