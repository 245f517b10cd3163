//! The per-request cost of the layer, next to what a request would cost without it.
//!
//! One request through a tower service stack per iteration (`ready`, then `call`), all variants
//! of one algorithm in one criterion group so the numbers compare within one run:
//! - `bare`: the inner service alone;
//! - `decode_only`: a minimal hand-written middleware that takes the bearer token and verifies
//!   it with `jsonwebtoken` (same key, `Validation` and claim type): the floor any JWT layer pays;
//! - `layer_memory`: `JwtRevocationLayer` over `MemoryStore` holding 10 000 revocations;
//! - `layer_memory_keyset`: the same with a static `KeySet` (the key chosen by `kid`);
//! - `layer_memory_jwks`: the same with the key from a `Jwks` (a JWKS served on loopback):
//!   what verifying against a provider's key set costs per request, next to a static key;
//! - `layer_cache_hit`: the layer over `MokaCache<PgStore>` in lookup mode, warm;
//! - `layer_mirror`: the same in mirror mode;
//! - `naive_pg`: a hand-written middleware that verifies the JWT and then asks Postgres
//!   `SELECT EXISTS(... WHERE jti = $1)` on every request, as most hand-rolled revocation does.
//!
//! Groups `check_hs256` and `check_es256`, with a realistic token (11 claims). A third group,
//! `try_check`, times the backends' synchronous fast path alone. Criterion runs one variant after
//! another, and this machine's speed drifts by up to 2x within a minute, so its medians are
//! absolute times only: every ratio with a target is timed outside criterion, with interleaved
//! batches (`per_request_interleaved`, and `key_sources_interleaved` for a static key, a static
//! key set and a `Jwks`).
//!
//! Every layer here runs with the verified-token cache off, so each request pays verification
//! and the revocation check: these variants measure the revocation tiers and key sources.
//! `benches/peer` measures the verified-token cache (cold and warm) and jwt-authorizer.
//!
//! The Postgres variants find the database the way the tests do (`DATABASE_URL`, else
//! `127.0.0.1:5432`) and use their own database `tower_jwt_revocation_bench`; without Postgres
//! they are skipped with a message.

#[path = "../tests/common/baseline.rs"]
mod baseline;
#[path = "support/interleave.rs"]
mod interleave;
#[path = "../tests/common/provider.rs"]
mod provider;

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower_jwt_revocation::Revocation;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baseline::{DecodeOnly, Ok200};
use criterion::{BenchmarkGroup, Criterion, criterion_group, measurement::WallTime};
use http::{Request, Response, header::AUTHORIZATION};
use interleave::{Variant, interleaved, one};
use serde_json::json;
use tokio::runtime::Runtime;
use tower::{Layer, Service};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, encode};
use tower_jwt_revocation::{
    CacheMode, Jwks, JwtRevocationLayer, KeySet, MemoryStore, MokaCache, PgStore, RevocationBackend,
    RevocationStore, TokenFacts,
};

const SECRET: &[u8] = b"benchmark-secret-benchmark-secret!!";
const JTI: &str = "6f1c2a8e-3b9d-4f57-9a3e-1d2c3b4a5f60";

struct Alg {
    name: &'static str,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as a JWK (with `kid` [`KID`]).
    jwk: serde_json::Value,
}

/// The `kid` every benchmark token names.
const KID: &str = "bench-key";

fn algorithms() -> Vec<Alg> {
    tower_jwt_revocation::decode::install_crypto_provider();
    vec![
        Alg {
            name: "hs256",
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(SECRET),
            decoding: DecodingKey::from_secret(SECRET),
            jwk: json!({"kty": "oct", "kid": KID, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(SECRET)}),
        },
        Alg {
            name: "es256",
            algorithm: Algorithm::ES256,
            encoding: provider::Key::P256.encoding_key(),
            decoding: DecodingKey::from_ec_pem(include_bytes!("../tests/keys/jwk/p256-public.pem")).unwrap(),
            jwk: provider::Key::P256.jwk(Some(KID), Some("ES256")),
        },
    ]
}

fn realistic_token(alg: &Alg) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    // Eleven claims, as an access token from a real issuer carries.
    let claims = json!({
        "jti": JTI, "sub": "user-1234567", "sid": "session-42",
        "iss": "https://auth.example.test", "aud": "api", "iat": now, "nbf": now, "exp": now + 3600,
        "scope": "read write profile", "email": "someone@example.test", "tenant": "acme",
    });
    let mut header = Header::new(alg.algorithm);
    header.kid = Some(KID.into());
    encode(&header, &claims, &alg.encoding).unwrap()
}

fn validation(alg: &Alg) -> Validation {
    let mut v = Validation::new(alg.algorithm);
    v.set_issuer(&["https://auth.example.test"]);
    v.set_audience(&["api"]);
    v.validate_nbf = true;
    v
}

fn request(token: &str) -> Request<()> {
    Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
}

fn bench_service<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    mut service: S,
    token: &str,
) where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    assert_eq!(
        rt.block_on(one(&mut service, request(token))),
        200,
        "{name} must accept the token"
    );
    group.bench_function(name, |b| {
        b.iter(|| rt.block_on(one(&mut service, request(token))))
    });
}

/// The layer `builder` configures (its keys set) over `Ok200`, with `alg`'s validation and the
/// verified-token cache off, as every variant here runs.
fn uncached_service(
    builder: tower_jwt_revocation::JwtRevocationBuilder<MemoryStore>,
    alg: &Alg,
) -> tower_jwt_revocation::JwtRevocation<Ok200, MemoryStore> {
    builder
        .validation(validation(alg))
        .no_verified_token_cache()
        .build()
        .unwrap()
        .layer(Ok200)
}

/// A `Jwks` holding `alg`'s key, served by a provider on loopback (kept alive by the caller).
fn loopback_jwks(rt: &Runtime, alg: &Alg) -> (Jwks, provider::Provider) {
    rt.block_on(async {
        let provider = provider::Provider::start(vec![alg.jwk.clone()]).await;
        let jwks = Jwks::from_url(provider.jwks_url())
            .allow_http_on_loopback()
            .allow_symmetric_keys()
            .build_and_fetch()
            .await
            .expect("the loopback JWKS");
        (jwks, provider)
    })
}

/// A pool on the bench database, created and migrated if needed; `None` without Postgres.
async fn bench_pool() -> Option<sqlx::PgPool> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin = sqlx::postgres::PgConnectOptions::from_str(&url).ok()?;
    let mut conn = admin.connect().await.ok()?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tower_jwt_revocation_bench')",
    )
    .fetch_one(&mut conn)
    .await
    .ok()?;
    if !exists {
        sqlx::query("CREATE DATABASE tower_jwt_revocation_bench")
            .execute(&mut conn)
            .await
            .ok()?;
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(admin.database("tower_jwt_revocation_bench"))
        .await
        .ok()?;
    let store = PgStore::new(pool.clone());
    store.migrate().await.ok()?;
    let exp = SystemTime::now() + Duration::from_secs(3600);
    for i in 0..1_000 {
        store
            .revoke(&Revocation::token(&format!("revoked-{i}"), exp).owner("someone"))
            .await
            .ok()?;
    }
    Some(pool)
}

async fn started_cache(store: &PgStore, mode: CacheMode) -> MokaCache<PgStore> {
    let cache = MokaCache::builder(store.clone()).mode(mode).start().unwrap();
    assert!(
        cache.wait_in_sync(Duration::from_secs(10)).await,
        "cache never in sync"
    );
    cache
}

/// Verifies the JWT, then one query per request.
#[derive(Clone)]
struct NaivePg {
    pool: sqlx::PgPool,
    key: DecodingKey,
    validation: Validation,
}

impl Service<Request<()>> for NaivePg {
    type Response = Response<()>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<()>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<()>) -> Self::Future {
        let verified = baseline::decode_bearer(&req, &self.key, &self.validation);
        let pool = self.pool.clone();
        Box::pin(async move {
            let unauthorized = || {
                let mut res = Response::new(());
                *res.status_mut() = http::StatusCode::UNAUTHORIZED;
                Ok(res)
            };
            let Some(claims) = verified else {
                return unauthorized();
            };
            let revoked: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jwt_revocations WHERE jti = $1)")
                    .bind(claims.jti.clone())
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(true);
            if revoked {
                return unauthorized();
            }
            req.extensions_mut().insert(claims);
            Ok(Response::new(()))
        })
    }
}

/// A `MemoryStore` holding 10 000 token revocations (none of the benchmark token's).
async fn memory_with_revocations() -> MemoryStore {
    let memory = MemoryStore::new();
    let exp = SystemTime::now() + Duration::from_secs(3600);
    for i in 0..10_000 {
        let jti = format!("revoked-{i}");
        memory
            .revoke(&Revocation::token(&jti, exp).owner("someone"))
            .await
            .unwrap();
    }
    memory
}

fn bench_check(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(bench_pool());
    if pool.is_none() {
        eprintln!(
            "SKIPPED layer_cache_hit, layer_mirror, naive_pg and try_check/cache_*: no Postgres (set DATABASE_URL)"
        );
    }
    let memory = rt.block_on(memory_with_revocations());

    for alg in algorithms() {
        let token = realistic_token(&alg);
        let mut group = c.benchmark_group(format!("check_{}", alg.name));
        group
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        let layer = |backend| {
            JwtRevocationLayer::builder(backend)
                .decoding_key(alg.decoding.clone())
                .validation(validation(&alg))
                .no_verified_token_cache()
                .build()
        };

        bench_service(&mut group, &rt, "bare", Ok200, &token);
        let decode_only = DecodeOnly {
            inner: Ok200,
            key: alg.decoding.clone(),
            validation: validation(&alg),
        };
        bench_service(&mut group, &rt, "decode_only", decode_only, &token);
        bench_service(
            &mut group,
            &rt,
            "layer_memory",
            layer(memory.clone()).unwrap().layer(Ok200),
            &token,
        );
        let with_keys = |builder| uncached_service(builder, &alg);
        let keyset = KeySet::new().with_key(KID, alg.decoding.clone());
        let builder = JwtRevocationLayer::builder(memory.clone());
        bench_service(
            &mut group,
            &rt,
            "layer_memory_keyset",
            with_keys(builder.key_set(keyset)),
            &token,
        );
        let (jwks, _provider) = loopback_jwks(&rt, &alg);
        let builder = JwtRevocationLayer::builder(memory.clone());
        bench_service(
            &mut group,
            &rt,
            "layer_memory_jwks",
            with_keys(builder.jwks(jwks)),
            &token,
        );
        if let Some(pool) = &pool {
            let store = PgStore::new(pool.clone());
            for (name, mode) in [
                ("layer_cache_hit", CacheMode::Lookup),
                ("layer_mirror", CacheMode::Mirror),
            ] {
                let cache = rt.block_on(started_cache(&store, mode));
                let service = JwtRevocationLayer::builder(cache.clone())
                    .decoding_key(alg.decoding.clone())
                    .validation(validation(&alg))
                    .no_verified_token_cache()
                    .build()
                    .unwrap()
                    .layer(Ok200);
                bench_service(&mut group, &rt, name, service, &token);
                let m = cache.metrics();
                eprintln!(
                    "{name}: backend_calls={} hits={} misses={}",
                    m.backend_calls, m.hits, m.misses
                );
            }
            let naive = NaivePg {
                pool: pool.clone(),
                key: alg.decoding.clone(),
                validation: validation(&alg),
            };
            bench_service(&mut group, &rt, "naive_pg", naive, &token);
        }
        group.finish();
    }

    let facts = TokenFacts {
        jti: Some(JTI),
        session_id: Some("session-42"),
        subject: Some("user-1234567"),
        issued_at: Some(1),
        expires_at: Some(u64::MAX / 4),
        issuer: None,
    };
    let mut group = c.benchmark_group("try_check");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1));
    // The same token from a layer that keys revocations by issuer (several issuers).
    let keyed = TokenFacts {
        issuer: Some("https://id.example.com/realms/main"),
        ..facts
    };
    group.bench_function("memory", |b| b.iter(|| memory.try_check(black_box(&facts))));
    group.bench_function("memory_keyed", |b| b.iter(|| memory.try_check(black_box(&keyed))));
    if let Some(pool) = &pool {
        let store = PgStore::new(pool.clone());
        for (name, mode) in [
            ("cache_lookup", CacheMode::Lookup),
            ("cache_mirror", CacheMode::Mirror),
        ] {
            let cache = rt.block_on(started_cache(&store, mode));
            for (name, facts) in [(name.to_owned(), &facts), (format!("{name}_keyed"), &keyed)] {
                rt.block_on(cache.check(facts)).unwrap();
                assert!(cache.try_check(facts).is_some(), "{name} must answer from memory");
                group.bench_function(&name, |b| b.iter(|| cache.try_check(black_box(facts))));
            }
        }
    }
    group.finish();
}

/// A static key, a static `KeySet` and a `Jwks`, interleaved: what a provider's key costs next
/// to a static one. Writes `target/bench/key_sources.jsonl` for `bench_report`.
fn key_sources_interleaved(rt: &Runtime) {
    let mut lines = String::new();
    for alg in algorithms() {
        let token = realistic_token(&alg);
        let memory = MemoryStore::new();
        let builder = || JwtRevocationLayer::builder(memory.clone());
        let (jwks, _provider) = loopback_jwks(rt, &alg);
        let with_keys = |name, builder| bearer(name, uncached_service(builder, &alg), &token);
        let variants: Vec<Variant> = vec![
            with_keys("static_key", builder().decoding_key(alg.decoding.clone())),
            with_keys(
                "static_key_set",
                builder().key_set(KeySet::new().with_key(KID, alg.decoding.clone())),
            ),
            with_keys("jwks", builder().jwks(jwks)),
        ];
        interleaved(rt, alg.name, variants, 300, &mut lines);
    }
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write("target/bench/key_sources.jsonl", lines).unwrap();
}

/// The layer over `backend` with `alg`'s key and validation and the verified-token cache off,
/// over `Ok200`.
fn uncached_layer<B: RevocationBackend>(
    backend: B,
    alg: &Alg,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Send + 'static {
    let layer = JwtRevocationLayer::builder(backend)
        .decoding_key(alg.decoding.clone())
        .validation(validation(alg))
        .no_verified_token_cache()
        .build()
        .unwrap();
    layer.layer(Ok200)
}

/// A variant sending `token` as `Bearer` on every request.
fn bearer<S>(name: &'static str, service: S, token: &str) -> Variant
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let token = token.to_owned();
    (
        name,
        tower::util::BoxService::new(service),
        Box::new(move || request(&token)),
    )
}

/// The per-request variants whose ratios have targets (`decode_only`, the layer over
/// `MemoryStore`, over a warm `MokaCache<PgStore>` in both modes, and `naive_pg`), interleaved.
/// Without Postgres only the first two run. Writes `target/bench/per_request.jsonl`.
fn per_request_interleaved(rt: &Runtime) {
    let pool = rt.block_on(bench_pool());
    let memory = rt.block_on(memory_with_revocations());
    let caches = pool.as_ref().map(|pool| {
        let store = PgStore::new(pool.clone());
        let lookup = rt.block_on(started_cache(&store, CacheMode::Lookup));
        let mirror = rt.block_on(started_cache(&store, CacheMode::Mirror));
        (lookup, mirror)
    });
    let mut lines = String::new();
    for alg in algorithms() {
        let token = realistic_token(&alg);
        let decode_only = DecodeOnly {
            inner: Ok200,
            key: alg.decoding.clone(),
            validation: validation(&alg),
        };
        let mut variants: Vec<Variant> = vec![
            bearer("decode_only", decode_only, &token),
            bearer("layer_memory", uncached_layer(memory.clone(), &alg), &token),
        ];
        if let (Some(pool), Some((lookup, mirror))) = (&pool, &caches) {
            variants.push(bearer(
                "layer_cache_hit",
                uncached_layer(lookup.clone(), &alg),
                &token,
            ));
            variants.push(bearer(
                "layer_mirror",
                uncached_layer(mirror.clone(), &alg),
                &token,
            ));
            let naive = NaivePg {
                pool: pool.clone(),
                key: alg.decoding.clone(),
                validation: validation(&alg),
            };
            variants.push(bearer("naive_pg", naive, &token));
        }
        interleaved(rt, alg.name, variants, 200, &mut lines);
    }
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write("target/bench/per_request.jsonl", lines).unwrap();
}

/// Signature verification alone, with each of `jsonwebtoken`'s crypto backends (both are
/// compiled into the benchmarks): what choosing `aws_lc_rs` (the default) or `rust_crypto`
/// costs per request, per algorithm. Each iteration builds the verifier from the key and
/// verifies, as `jsonwebtoken::decode` does.
fn bench_crypto(c: &mut Criterion) {
    use tower_jwt_revocation::jsonwebtoken::crypto::{CryptoProvider, aws_lc, rust_crypto};
    tower_jwt_revocation::decode::install_crypto_provider();
    let jwk = |key: provider::Key| key.jwk(None, None);
    let rsa = jwk(provider::Key::RsaA);
    let ed = jwk(provider::Key::Ed25519);
    let cases = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            DecodingKey::from_secret(SECRET),
        ),
        (
            Algorithm::RS256,
            provider::Key::RsaA.encoding_key(),
            DecodingKey::from_rsa_components(rsa["n"].as_str().unwrap(), rsa["e"].as_str().unwrap()).unwrap(),
        ),
        (
            Algorithm::ES256,
            provider::Key::P256.encoding_key(),
            DecodingKey::from_ec_pem(include_bytes!("../tests/keys/jwk/p256-public.pem")).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            provider::Key::Ed25519.encoding_key(),
            DecodingKey::from_ed_components(ed["x"].as_str().unwrap()).unwrap(),
        ),
    ];
    for (algorithm, encoding, decoding) in cases {
        let token = encode(&Header::new(algorithm), &json!({"sub": "x"}), &encoding).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let mut group = c.benchmark_group(format!("crypto_{algorithm:?}").to_lowercase());
        group
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        let providers: [(&str, &CryptoProvider); 2] = [
            ("aws_lc_rs", &aws_lc::DEFAULT_PROVIDER),
            ("rust_crypto", &rust_crypto::DEFAULT_PROVIDER),
        ];
        for (name, provider) in providers {
            let verify = || {
                let verifier = (provider.verifier_factory)(&algorithm, &decoding).unwrap();
                verifier.verify(message.as_bytes(), &signature).is_ok()
            };
            assert!(verify(), "{name} verifies {algorithm:?}");
            group.bench_function(name, |b| b.iter(|| black_box(verify())));
        }
        group.finish();
    }
}

criterion_group!(benches, bench_check, bench_crypto);

fn main() {
    benches();
    // A filter (`cargo bench --bench check -- try_check`) or a test run (`--test`) times what it
    // names, not the interleaved comparisons.
    if std::env::args()
        .skip(1)
        .any(|arg| arg == "--test" || !arg.starts_with('-'))
    {
        Criterion::default().configure_from_args().final_summary();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    key_sources_interleaved(&rt);
    per_request_interleaved(&rt);
    Criterion::default().configure_from_args().final_summary();
}
