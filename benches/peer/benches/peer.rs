//! This crate's layer next to jwt-authorizer 0.15 and the decode-only floor, in one process.
//!
//! Per algorithm (HS256, RS256, ES256, EdDSA), each variant serves requests through
//! `ready().call()` to the same inner service (an axum 0.7 `Response`, which jwt-authorizer
//! requires), with the same 11-claim token shape:
//! - `jwt_authorizer`: jwt-authorizer's layer (jsonwebtoken 9 with ring), keys given as JWKS
//!   text, no revocation at all;
//! - `decode_only`: a hand-written middleware that verifies with `jsonwebtoken` and nothing else;
//! - `layer_uncached`: this crate's layer, default features (aws-lc), over `MemoryStore` holding
//!   10 000 revocations, verified-token cache off;
//! - `layer_cold`: the same with the cache on (default capacity), every token new: more
//!   distinct tokens than requests are timed, so none is ever seen twice;
//! - `layer_warm`: the same, tokens seen before (16 tokens, cached).
//!
//! Variants are timed in interleaved batches (round-robin, the order rotating each round) so a
//! slow spell of this shared 2-core machine hits all alike, and the median batch is kept.
//! Then the verified-token cache's hits are timed on one thread and on two at once, next to
//! decode-only on one and two (which shares nothing): the ratio of the two scalings says what
//! cross-core contention a hit adds.
//!
//! Writes `target/bench/peer.jsonl` (at the repository root) for `bench_report`.

#[path = "../../../tests/common/baseline.rs"]
mod baseline;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use baseline::DecodeOnly;
use http::{Request, Response, header::AUTHORIZATION};
use jwt_authorizer::IntoLayer;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_jwt_revocation::jsonwebtoken::jwk::Jwk;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, encode};
use tower_jwt_revocation::{JwtRevocationLayer, MemoryStore, Revocation, RevocationStore};

const SECRET: &str = "benchmark-secret-benchmark-secret!!";
const ISS: &str = "https://auth.example.test";
const KID: &str = "bench-key";
const WARM_TOKENS: usize = 16;
/// Batches per variant.
const ROUNDS: usize = 200;

struct Alg {
    name: &'static str,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public key as a JWK; `None` for HMAC.
    jwk: Option<Value>,
}

fn key_file(name: &str) -> Vec<u8> {
    let path = format!("{}/../../tests/keys/jwk/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn public_jwk(name: &str, alg: &str) -> Value {
    let mut jwk: Value = serde_json::from_slice(&key_file(&format!("{name}.json"))).unwrap();
    let object = jwk.as_object_mut().unwrap();
    object.insert("kid".into(), json!(KID));
    object.insert("alg".into(), json!(alg));
    object.insert("use".into(), json!("sig"));
    jwk
}

fn asymmetric(name: &'static str, algorithm: Algorithm, file: &str, encoding: EncodingKey) -> Alg {
    let jwk = public_jwk(file, &format!("{algorithm:?}"));
    let parsed: Jwk = serde_json::from_value(jwk.clone()).unwrap();
    Alg {
        name,
        algorithm,
        encoding,
        decoding: DecodingKey::from_jwk(&parsed).unwrap(),
        jwk: Some(jwk),
    }
}

fn algorithms() -> Vec<Alg> {
    tower_jwt_revocation::decode::install_crypto_provider();
    let pem = |file: &str| key_file(&format!("{file}.pem"));
    vec![
        Alg {
            name: "hs256",
            algorithm: Algorithm::HS256,
            encoding: EncodingKey::from_secret(SECRET.as_bytes()),
            decoding: DecodingKey::from_secret(SECRET.as_bytes()),
            jwk: None,
        },
        asymmetric(
            "rs256",
            Algorithm::RS256,
            "rsa-a",
            EncodingKey::from_rsa_pem(&pem("rsa-a")).unwrap(),
        ),
        asymmetric(
            "es256",
            Algorithm::ES256,
            "p256",
            EncodingKey::from_ec_pem(&pem("p256")).unwrap(),
        ),
        asymmetric(
            "eddsa",
            Algorithm::EdDSA,
            "ed25519",
            EncodingKey::from_ed_pem(&pem("ed25519")).unwrap(),
        ),
    ]
}

/// `count` tokens of eleven claims each, as a real issuer's access token carries, differing
/// only in `jti`.
fn tokens(alg: &Alg, count: usize, prefix: &str) -> Vec<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut header = Header::new(alg.algorithm);
    header.kid = Some(KID.into());
    (0..count)
        .map(|i| {
            let claims = json!({
                "jti": format!("{prefix}-{i:08}-3b9d-4f57-9a3e"), "sub": "user-1234567", "sid": "session-42",
                "iss": ISS, "aud": "api", "iat": now, "nbf": now, "exp": now + 3600,
                "scope": "read write profile", "email": "someone@example.test", "tenant": "acme",
            });
            encode(&header, &claims, &alg.encoding).unwrap()
        })
        .collect()
}

fn validation(alg: &Alg) -> Validation {
    let mut v = Validation::new(alg.algorithm);
    v.set_issuer(&[ISS]);
    v.set_audience(&["api"]);
    v.validate_nbf = true;
    v
}

/// The inner service of every variant: answers at once with an empty axum body.
#[derive(Clone, Copy)]
struct Ok200;

impl Service<Request<()>> for Ok200 {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Body::empty())))
    }
}

fn request(token: &str) -> Request<()> {
    Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
}

/// A variant: serves `n` requests, cycling through its tokens.
type Batch = Box<dyn FnMut(&Runtime, u32)>;

fn batch_of<S>(mut service: S, tokens: Vec<String>) -> Batch
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible> + 'static,
{
    let mut next = 0;
    Box::new(move |rt, n| {
        rt.block_on(async {
            for _ in 0..n {
                let token = &tokens[next % tokens.len()];
                next += 1;
                let response = service.ready().await.unwrap().call(request(token)).await.unwrap();
                assert_eq!(response.status(), 200);
                black_box(response);
            }
        })
    })
}

/// Median nanoseconds per request of each variant, batches interleaved; `batch` gives a
/// variant's requests per batch (about a millisecond's worth, so its own code and data are back
/// in the CPU's caches for most of the batch).
fn interleaved(
    rt: &Runtime,
    variants: &mut [(&'static str, Batch)],
    batch: impl Fn(&str) -> u32,
    rounds: usize,
) -> Vec<f64> {
    for (name, run) in variants.iter_mut() {
        run(rt, batch(name)); // warm-up
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let n = batch(variants[i].0);
            let started = Instant::now();
            (variants[i].1)(rt, n);
            samples[i].push(started.elapsed().as_nanos() as f64 / f64::from(n));
        }
    }
    samples
        .into_iter()
        .map(|mut times| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        })
        .collect()
}

fn our_layer(alg: &Alg, store: &MemoryStore, capacity: usize) -> JwtRevocationLayer<MemoryStore> {
    JwtRevocationLayer::builder(store.clone())
        .decoding_key(alg.decoding.clone())
        .validation(validation(alg))
        .verified_token_cache(capacity)
        .build()
        .unwrap()
}

fn jwt_authorizer(rt: &Runtime, alg: &Alg) -> jwt_authorizer::layer::AuthorizationLayer<Value> {
    let builder = match &alg.jwk {
        None => jwt_authorizer::JwtAuthorizer::<Value>::from_secret(SECRET),
        Some(jwk) => jwt_authorizer::JwtAuthorizer::from_jwks_text(&json!({ "keys": [jwk] }).to_string()),
    };
    let validation = jwt_authorizer::Validation::new()
        .iss(&[ISS])
        .aud(&["api"])
        .nbf(true);
    let authorizer = rt
        .block_on(builder.validation(validation).build())
        .expect("jwt-authorizer builds");
    vec![authorizer].into_layer()
}

/// Requests per second of `threads` threads each serving `per_thread` requests at once, each
/// thread with its own runtime and service clone.
fn throughput<S>(service: &S, token: &str, threads: usize, per_thread: u32) -> f64
where
    S: Service<Request<()>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (service, token) = (service.clone(), token.to_owned());
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut run = batch_of(service, vec![token]);
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                run(&rt, 1000); // warm-up
                barrier.wait();
                run(&rt, per_thread);
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    (threads as f64 * f64::from(per_thread)) / started.elapsed().as_secs_f64()
}

/// Appends one result to the JSON-lines report.
fn record(lines: &mut String, result: Value) {
    lines.push_str(&result.to_string());
    lines.push('\n');
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = MemoryStore::new();
    rt.block_on(async {
        let exp = SystemTime::now() + Duration::from_secs(3600);
        for i in 0..10_000 {
            store
                .revoke(&Revocation::token(&format!("revoked-{i}"), exp).owner("someone"))
                .await
                .unwrap();
        }
    });
    let mut lines = String::new();
    for alg in algorithms() {
        let verifying = if alg.name == "hs256" { 200 } else { 20 };
        let batch = |name: &str| if name == "layer_warm" { 1000 } else { verifying };
        // Every request of the cold variants (the warm-up batch too) has a token of its own.
        let cold = tokens(&alg, (ROUNDS + 1) * verifying as usize, "cold");
        let warm = tokens(&alg, WARM_TOKENS, "warm");
        let decode_only = DecodeOnly {
            inner: Ok200,
            key: alg.decoding.clone(),
            validation: validation(&alg),
        };
        let cold_layer = our_layer(&alg, &store, tower_jwt_revocation::token_cache::DEFAULT_CAPACITY);
        let warm_layer = our_layer(&alg, &store, tower_jwt_revocation::token_cache::DEFAULT_CAPACITY);
        let mut variants: Vec<(&'static str, Batch)> = vec![
            (
                "jwt_authorizer",
                batch_of(jwt_authorizer(&rt, &alg).layer(Ok200), cold.clone()),
            ),
            ("decode_only", batch_of(decode_only.clone(), cold.clone())),
            (
                "layer_uncached",
                batch_of(our_layer(&alg, &store, 0).layer(Ok200), cold.clone()),
            ),
            ("layer_cold", batch_of(cold_layer.layer(Ok200), cold.clone())),
            ("layer_warm", batch_of(warm_layer.layer(Ok200), warm.clone())),
        ];
        let medians = interleaved(&rt, &mut variants, batch, ROUNDS);
        let ratio_of = |name: &str| {
            let position = variants.iter().position(|(n, _)| *n == name).unwrap();
            medians[position]
        };
        let hit_rate = |layer: &JwtRevocationLayer<MemoryStore>| {
            let m = layer.metrics();
            m.token_cache_hits as f64 / (m.token_cache_hits + m.token_cache_misses).max(1) as f64
        };
        for ((name, _), median) in variants.iter().zip(&medians) {
            eprintln!(
                "peer/{}/{name}: {median:.0} ns ({:.3} x decode_only)",
                alg.name,
                median / ratio_of("decode_only")
            );
            record(
                &mut lines,
                json!({"alg": alg.name, "variant": name, "median_ns": median}),
            );
        }
        let (cold_hits, warm_hits) = (hit_rate(&cold_layer), hit_rate(&warm_layer));
        assert_eq!(cold_layer.metrics().token_cache_hits, 0, "layer_cold is cold");
        eprintln!(
            "peer/{}: hit rate cold {cold_hits:.4}, warm {warm_hits:.4}",
            alg.name
        );
        record(
            &mut lines,
            json!({"alg": alg.name, "hit_rate_cold": cold_hits, "hit_rate_warm": warm_hits}),
        );

        if alg.name == "hs256" || alg.name == "es256" {
            // Five alternating rounds; the median of each scaling.
            let per_thread = 200_000;
            let warm_service = warm_layer.layer(Ok200);
            let mut hit_scaling = Vec::new();
            let mut decode_scaling = Vec::new();
            for _ in 0..5 {
                hit_scaling.push(
                    throughput(&warm_service, &warm[0], 2, per_thread)
                        / throughput(&warm_service, &warm[0], 1, per_thread),
                );
                let decode_per_thread = if alg.name == "hs256" { 20_000 } else { 2_000 };
                decode_scaling.push(
                    throughput(&decode_only, &warm[0], 2, decode_per_thread)
                        / throughput(&decode_only, &warm[0], 1, decode_per_thread),
                );
            }
            for scaling in [&mut hit_scaling, &mut decode_scaling] {
                scaling.sort_by(f64::total_cmp);
            }
            let (hit, decode) = (hit_scaling[2], decode_scaling[2]);
            eprintln!(
                "peer/{}: two threads / one: layer_warm {hit:.2}, decode_only {decode:.2}",
                alg.name
            );
            record(
                &mut lines,
                json!({"alg": alg.name, "two_thread_scaling_warm": hit, "two_thread_scaling_decode_only": decode}),
            );
        }
    }
    let dir = format!("{}/../../target/bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/peer.jsonl"), lines).unwrap();
}
