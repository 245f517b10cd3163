//! The per-request cost of the layer, next to what a request would cost without it.
//!
//! One request through a tower service stack per iteration, all in one criterion group so the
//! numbers compare within one run:
//! - `bare`: the inner service alone;
//! - `decode_only`: a minimal hand-written middleware that takes the bearer token and verifies
//!   it with `jsonwebtoken` (same key, same `Validation`, same claim type): the floor any JWT
//!   layer pays;
//! - `layer_memory`: `JwtRevocationLayer` over `MemoryStore` holding 10 000 revocations;
//! - `layer_cache_hit`: the layer over `MokaCache<PgStore>` in lookup mode, warm;
//! - `layer_mirror`: the same in mirror mode;
//! - `naive_pg`: a hand-written middleware that verifies the JWT and then asks Postgres
//!   `SELECT EXISTS(... WHERE jti = $1)` on every request, as most hand-rolled revocation does.
//!
//! The Postgres benches find the database the way the tests do (`DATABASE_URL`, else
//! `127.0.0.1:5432`) and use their own database `tower_jwt_revocation_bench`; without Postgres
//! they are skipped with a message.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, header::AUTHORIZATION};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_jwt_revocation::jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode,
};
use tower_jwt_revocation::{
    CacheMode, Claims, JwtRevocationLayer, MemoryStore, MokaCache, PgStore, RevocationStore,
};

const SECRET: &[u8] = b"benchmark-secret-benchmark-secret!!";

fn realistic_token() -> String {
    tower_jwt_revocation::decode::install_crypto_provider();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    // About ten claims, as an access token from a real issuer carries.
    let claims = json!({
        "jti": "6f1c2a8e-3b9d-4f57-9a3e-1d2c3b4a5f60", "sub": "user-1234567", "sid": "session-42",
        "iss": "https://auth.example.test", "aud": "api", "iat": now, "nbf": now, "exp": now + 3600,
        "scope": "read write profile", "email": "someone@example.test", "tenant": "acme",
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["https://auth.example.test"]);
    v.set_audience(&["api"]);
    v.validate_nbf = true;
    v
}

async fn inner(_req: Request<()>) -> Result<Response<()>, Infallible> {
    Ok(Response::new(()))
}

fn request(token: &str) -> Request<()> {
    Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
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
    PgStore::new(pool.clone()).migrate().await.ok()?;
    Some(pool)
}

fn bench_check(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let token = realistic_token();
    let mut group = c.benchmark_group("check_hs256");
    group.measurement_time(Duration::from_secs(3));

    let mut bare = service_fn(inner);
    group.bench_function("bare", |b| {
        b.iter(|| rt.block_on(one(&mut bare, request(&token))))
    });

    let key = DecodingKey::from_secret(SECRET);
    let v = validation();
    let mut decode_only = service_fn(move |mut req: Request<()>| {
        let verified = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .and_then(|t| decode::<Claims>(t, &key, &v).ok());
        async move {
            match verified {
                Some(data) => {
                    req.extensions_mut().insert(data.claims);
                    inner(req).await
                }
                None => Ok(Response::builder().status(401).body(()).unwrap()),
            }
        }
    });
    group.bench_function("decode_only", |b| {
        b.iter(|| rt.block_on(one(&mut decode_only, request(&token))))
    });

    let store = MemoryStore::new();
    rt.block_on(async {
        let exp = SystemTime::now() + Duration::from_secs(3600);
        for i in 0..10_000 {
            store
                .revoke(&format!("revoked-{i}"), Some("someone"), exp, None, None)
                .await
                .unwrap();
        }
    });
    let layer = JwtRevocationLayer::builder(store)
        .decoding_key(DecodingKey::from_secret(SECRET))
        .validation(validation())
        .build()
        .unwrap();
    let mut layered = layer.layer(service_fn(inner));
    group.bench_function("layer_memory", |b| {
        b.iter(|| rt.block_on(one(&mut layered, request(&token))))
    });
    match rt.block_on(bench_pool()) {
        None => eprintln!("SKIPPED layer_cache_hit, layer_mirror, naive_pg: no Postgres (set DATABASE_URL)"),
        Some(pool) => {
            let store = PgStore::new(pool.clone());
            rt.block_on(async {
                let exp = SystemTime::now() + Duration::from_secs(3600);
                for i in 0..1_000 {
                    store
                        .revoke(&format!("revoked-{i}"), Some("someone"), exp, None, None)
                        .await
                        .unwrap();
                }
            });
            for (name, mode) in [
                ("layer_cache_hit", CacheMode::Lookup),
                ("layer_mirror", CacheMode::Mirror),
            ] {
                let cache = rt.block_on(async {
                    let cache = MokaCache::builder(store.clone()).mode(mode).start().unwrap();
                    assert!(
                        cache.wait_in_sync(Duration::from_secs(10)).await,
                        "cache never in sync"
                    );
                    cache
                });
                let layer = JwtRevocationLayer::builder(cache.clone())
                    .decoding_key(DecodingKey::from_secret(SECRET))
                    .validation(validation())
                    .build()
                    .unwrap();
                let mut layered = layer.layer(service_fn(inner));
                rt.block_on(one(&mut layered, request(&token))); // warm: the miss, then hits
                group.bench_function(name, |b| {
                    b.iter(|| rt.block_on(one(&mut layered, request(&token))))
                });
                let m = cache.metrics();
                eprintln!(
                    "{name}: backend_calls={} hits={} misses={}",
                    m.backend_calls, m.hits, m.misses
                );
            }

            let key = DecodingKey::from_secret(SECRET);
            let v = validation();
            let naive_pool = pool.clone();
            let mut naive_pg = service_fn(move |mut req: Request<()>| {
                let verified = req
                    .headers()
                    .get(AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .and_then(|t| decode::<Claims>(t, &key, &v).ok());
                let pool = naive_pool.clone();
                async move {
                    let Some(data) = verified else {
                        return Ok(Response::builder().status(401).body(()).unwrap());
                    };
                    let revoked: bool =
                        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jwt_revocations WHERE jti = $1)")
                            .bind(data.claims.jti.clone())
                            .fetch_one(&pool)
                            .await
                            .unwrap_or(true);
                    if revoked {
                        return Ok(Response::builder().status(401).body(()).unwrap());
                    }
                    req.extensions_mut().insert(data.claims);
                    inner(req).await
                }
            });
            group.bench_function("naive_pg", |b| {
                b.iter(|| rt.block_on(one(&mut naive_pg, request(&token))))
            });
        }
    }
    group.finish();
}

/// One request as a server drives a service: `ready().await`, then `call`.
async fn one<S>(service: &mut S, req: Request<()>) -> u16
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible>,
{
    let ready = service.ready().await.unwrap();
    black_box(ready.call(req).await.unwrap().status().as_u16())
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
