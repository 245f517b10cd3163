//! What a DPoP request costs (RFC 9449), next to the same request as `Bearer` and to
//! decode-only, timed in interleaved batches in one process (`support/interleave.rs`), for HS256
//! and ES256 access tokens with ES256 proofs:
//! - `decode_only`: the hand-written decode-only middleware, a bearer token;
//! - `layer_bearer`: the layer over `MemoryStore` with DPoP on (policy `allowed`) and its
//!   verified-token cache warm, an unbound bearer token;
//! - `proof_only`: a service that only verifies the request's proof (`dpop::verify_proof`:
//!   parse, key, thumbprint, the ES256 signature): the floor a DPoP request pays;
//! - `layer_dpop`: the same layer, a bound token (cached) with a fresh proof on every request.
//!
//! The proofs are signed before each batch's clock starts (a client's work, not the server's).
//! `layer_dpop - proof_only` is the layer's cost above the proof's own check, to compare with
//! `layer_bearer`. Writes `target/bench/dpop.jsonl` for `examples/bench_report.rs`.

#[path = "../tests/common/baseline.rs"]
mod baseline;
#[path = "support/interleave.rs"]
mod interleave;
#[path = "../tests/common/provider.rs"]
mod provider;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baseline::{DecodeOnly, Ok200};
use http::header::AUTHORIZATION;
use http::{Request, Response};
use interleave::{Variant, interleaved};
use serde_json::json;
use tower::{Layer, Service};
use tower_jwt_revocation::dpop::{
    DEFAULT_ALGORITHMS, DpopConfig, Expected, jwk_thumbprint, token_hash, verify_proof,
};
use tower_jwt_revocation::jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, crypto, encode,
};
use tower_jwt_revocation::{JwtRevocationLayer, MemoryStore};

const SECRET: &[u8] = b"benchmark-secret-benchmark-secret!!";
const ORIGIN: &str = "https://api.example.test";
const HTU: &str = "https://api.example.test/";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The client: the P-256 test key, its public JWK and thumbprint.
struct Client {
    key: EncodingKey,
    header: String,
    jkt: String,
}

impl Client {
    fn new() -> Self {
        let mut jwk = provider::Key::P256.jwk(None, None);
        jwk.as_object_mut().unwrap().remove("use");
        let jkt = jwk_thumbprint(jwk.as_object().unwrap()).unwrap();
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}).to_string();
        Self {
            key: provider::Key::P256.encoding_key(),
            header: URL_SAFE_NO_PAD.encode(header),
            jkt,
        }
    }

    /// A fresh proof for `GET /` with `token`.
    fn proof(&self, token: &str) -> String {
        let claims = json!({
            "jti": uuid::Uuid::new_v4().to_string(), "htm": "GET", "htu": HTU, "iat": now(),
            "ath": token_hash(token),
        });
        let signing_input = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = crypto::sign(signing_input.as_bytes(), &self.key, Algorithm::ES256).unwrap();
        format!("{signing_input}.{signature}")
    }
}

/// Verifies the request's `DPoP` header and answers 200: the proof's own cost.
#[derive(Clone)]
struct ProofOnly {
    token: String,
}

impl Service<Request<()>> for ProofOnly {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let expected = Expected {
            method: "GET",
            uri: HTU,
            access_token: Some(&self.token),
            jkt: None,
            now: now(),
            max_age: 60,
            leeway: 5,
        };
        let proof = request
            .headers()
            .get("dpop")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let verified = verify_proof(proof, &expected, &DEFAULT_ALGORITHMS);
        let mut response = Response::new(());
        if verified.is_err() {
            *response.status_mut() = http::StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

fn token(algorithm: Algorithm, key: &EncodingKey, cnf: Option<&str>) -> String {
    let now = now();
    let mut claims = json!({
        "jti": uuid::Uuid::new_v4().to_string(), "sub": "user-1234567", "sid": "session-42",
        "iss": "https://auth.example.test", "aud": "api", "iat": now, "nbf": now, "exp": now + 3600,
        "scope": "read write profile", "email": "someone@example.test", "tenant": "acme",
    });
    if let Some(jkt) = cnf {
        claims["cnf"] = json!({"jkt": jkt});
    }
    encode(&Header::new(algorithm), &claims, key).unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) passes nothing: then
    // one small round, so the target is checked without the minutes of a real run.
    let rounds = if std::env::args().any(|arg| arg == "--bench") {
        200
    } else {
        2
    };
    tower_jwt_revocation::decode::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = std::rc::Rc::new(Client::new());
    let mut lines = String::new();
    let es_public = DecodingKey::from_ec_pem(include_bytes!("../tests/keys/jwk/p256-public.pem")).unwrap();
    let keys = [
        (
            "hs256",
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            DecodingKey::from_secret(SECRET),
        ),
        (
            "es256",
            Algorithm::ES256,
            provider::Key::P256.encoding_key(),
            es_public,
        ),
    ];
    for (name, algorithm, encoding, decoding) in keys {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&["https://auth.example.test"]);
        validation.set_audience(&["api"]);
        validation.validate_nbf = true;
        let layer = JwtRevocationLayer::builder(MemoryStore::new())
            .decoding_key(decoding.clone())
            .validation(validation.clone())
            .dpop(DpopConfig::new(ORIGIN))
            .build()
            .unwrap();
        let bearer_token = token(algorithm, &encoding, None);
        let bound_token = token(algorithm, &encoding, Some(&client.jkt));
        let bearer = |token: &str| {
            let header = format!("Bearer {token}");
            Box::new(move || {
                Request::get("/")
                    .header(AUTHORIZATION, header.as_str())
                    .body(())
                    .unwrap()
            }) as Box<dyn FnMut() -> Request<()>>
        };
        let with_proof = |scheme: &'static str| {
            let (client, token) = (std::rc::Rc::clone(&client), bound_token.clone());
            Box::new(move || {
                Request::get("/")
                    .header(AUTHORIZATION, format!("{scheme} {token}"))
                    .header("dpop", client.proof(&token))
                    .body(())
                    .unwrap()
            }) as Box<dyn FnMut() -> Request<()>>
        };
        let decode_only = DecodeOnly {
            inner: Ok200,
            key: decoding,
            validation,
        };
        let variants: Vec<Variant> = vec![
            (
                "decode_only",
                tower::util::BoxService::new(decode_only),
                bearer(&bearer_token),
            ),
            (
                "layer_bearer",
                tower::util::BoxService::new(layer.layer(Ok200)),
                bearer(&bearer_token),
            ),
            (
                "proof_only",
                tower::util::BoxService::new(ProofOnly {
                    token: bound_token.clone(),
                }),
                with_proof("DPoP"),
            ),
            (
                "layer_dpop",
                tower::util::BoxService::new(layer.layer(Ok200)),
                with_proof("DPoP"),
            ),
        ];
        interleaved(&rt, name, variants, rounds, &mut lines);
        let metrics = layer.metrics();
        assert!(
            metrics.token_cache_hits > metrics.token_cache_misses,
            "the tokens are cached: {metrics:?}"
        );
    }
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write("target/bench/dpop.jsonl", lines).unwrap();
}
