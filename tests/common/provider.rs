//! A local OpenID Provider for the key-source tests: a real HTTP server on loopback serving a
//! discovery document and a JWKS, told by the test how to misbehave (down, slow, garbage, huge,
//! another issuer), counting the fetches it answers; and token signing with the test keys in
//! `tests/keys/jwk/`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, Request};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use tower_jwt_revocation::{Claims, Jwks, JwksBuilder, JwtRevocationLayer, MemoryStore};

/// A test key pair: `tests/keys/jwk/{name}.pem` (private) and `{name}.json` (public JWK).
#[derive(Clone, Copy, Debug)]
pub enum Key {
    RsaA,
    RsaB,
    P256,
    P384,
    Ed25519,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::RsaA => "rsa-a",
            Key::RsaB => "rsa-b",
            Key::P256 => "p256",
            Key::P384 => "p384",
            Key::Ed25519 => "ed25519",
        }
    }

    fn file(self, extension: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/keys/jwk/{}.{extension}",
            env!("CARGO_MANIFEST_DIR"),
            self.name()
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The public JWK, with `kid` and `alg` when given, and `use: sig`.
    pub fn jwk(self, kid: Option<&str>, alg: Option<&str>) -> Value {
        let mut jwk: Value = serde_json::from_slice(&self.file("json")).unwrap();
        let object = jwk.as_object_mut().unwrap();
        object.insert("use".into(), json!("sig"));
        if let Some(kid) = kid {
            object.insert("kid".into(), json!(kid));
        }
        if let Some(alg) = alg {
            object.insert("alg".into(), json!(alg));
        }
        jwk
    }

    pub fn encoding_key(self) -> EncodingKey {
        let pem = self.file("pem");
        match self {
            Key::RsaA | Key::RsaB => EncodingKey::from_rsa_pem(&pem),
            Key::P256 | Key::P384 => EncodingKey::from_ec_pem(&pem),
            Key::Ed25519 => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap()
    }
}

/// `token` with its header replaced by one naming `alg` and `kid` (the signature no longer
/// fits: for requests that must fail at key lookup, made without signing).
pub fn with_header(token: &str, alg: &str, kid: &str) -> String {
    use base64::Engine;
    let header = serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
    let (_, rest) = token.split_once('.').unwrap();
    format!(
        "{}.{rest}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header)
    )
}

/// Signs `claims` with `key` under `alg`, naming `kid` in the header when given.
pub fn sign(key: Key, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    tower_jwt_revocation::decode::install_crypto_provider();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key.encoding_key()).unwrap()
}

/// How the provider answers the JWKS URL.
#[derive(Clone, Debug)]
pub enum Mode {
    /// The current key set.
    Normal,
    /// This status and an empty body.
    Status(u16),
    /// The key set after this delay.
    Slow(Duration),
    /// An HTML page.
    Garbage,
    /// A valid JSON document this many bytes long, with `Content-Length`.
    Huge(usize),
    /// The same, streamed without `Content-Length`.
    HugeStreamed(usize),
    /// A redirect to the discovery document.
    Redirect,
}

struct Shared {
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    issuer_override: Mutex<Option<String>>,
    jwks_uri_override: Mutex<Option<String>>,
    cache_control: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    addr: SocketAddr,
}

/// The provider: `issuer()` is `http://127.0.0.1:{port}`, the JWKS is at `/jwks`.
pub struct Provider {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Provider {
    /// Starts serving `keys` on a fresh loopback port.
    pub async fn start(keys: Vec<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = Arc::new(Shared {
            keys: Mutex::new(keys),
            mode: Mutex::new(Mode::Normal),
            issuer_override: Mutex::new(None),
            jwks_uri_override: Mutex::new(None),
            cache_control: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            addr: listener.local_addr().unwrap(),
        });
        let provider = Self {
            shared,
            task: Mutex::new(None),
        };
        provider.serve(listener);
        provider
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(Arc::clone(&self.shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops listening: connections are refused until [`restart`](Self::restart).
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.shared.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.shared.keys.lock().unwrap() = keys;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// The discovery document names this issuer instead of the real one.
    pub fn claim_issuer(&self, issuer: &str) {
        *self.shared.issuer_override.lock().unwrap() = Some(issuer.to_owned());
    }

    /// The discovery document names this `jwks_uri`.
    pub fn claim_jwks_uri(&self, uri: &str) {
        *self.shared.jwks_uri_override.lock().unwrap() = Some(uri.to_owned());
    }

    pub fn set_cache_control(&self, value: &str) {
        *self.shared.cache_control.lock().unwrap() = Some(value.to_owned());
    }

    /// JWKS requests answered (whatever the mode).
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Its keys, found through its discovery document, fetched before this returns.
    pub async fn discovered_keys(&self) -> Jwks {
        Jwks::discover(self.issuer())
            .allow_http_on_loopback()
            .build_and_fetch()
            .await
            .unwrap()
    }

    /// Standard claims of a fresh token from this provider.
    pub fn claims(&self, jti: &str, sub: &str) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({"iss": self.issuer(), "jti": jti, "sub": sub, "iat": now, "exp": now + 600})
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let issuer = format!("http://{}", shared.addr);
    let document = json!({
        "issuer": shared.issuer_override.lock().unwrap().clone().unwrap_or_else(|| issuer.clone()),
        "jwks_uri": shared.jwks_uri_override.lock().unwrap().clone().unwrap_or_else(|| format!("{issuer}/jwks")),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    axum::Json(document).into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let mode = shared.mode.lock().unwrap().clone();
    let keys = || json!({ "keys": shared.keys.lock().unwrap().clone() }).to_string();
    let mut response = match mode {
        Mode::Normal => keys().into_response(),
        Mode::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            keys().into_response()
        }
        Mode::Garbage => "<html><body>Service Unavailable</body></html>".into_response(),
        Mode::Huge(bytes) => padded(bytes).into_response(),
        Mode::HugeStreamed(bytes) => {
            let document = padded(bytes).into_bytes();
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                document.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            Body::from_stream(futures_stream(chunks)).into_response()
        }
        Mode::Redirect => {
            let mut redirect = StatusCode::FOUND.into_response();
            redirect.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&format!(
                    "http://{}/.well-known/openid-configuration",
                    shared.addr
                ))
                .unwrap(),
            );
            return redirect;
        }
    };
    if let Some(value) = shared.cache_control.lock().unwrap().clone() {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_str(&value).unwrap());
    }
    response
}

/// A JWKS document of `bytes` bytes: one usable-looking key padded with a long member.
fn padded(bytes: usize) -> String {
    let head = r#"{"keys":[],"padding":""#;
    let tail = r#""}"#;
    let fill = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "a".repeat(fill))
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Chunks(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Chunks(chunks.into_iter())
}

/// Short refresh bounds so the tests see several refreshes in a few seconds.
pub const MIN_REFRESH: Duration = Duration::from_millis(400);

pub fn builder(url: String, discover: bool) -> JwksBuilder {
    let builder = if discover {
        Jwks::discover(url)
    } else {
        Jwks::from_url(url)
    };
    builder
        .allow_http_on_loopback()
        .min_refresh_interval(MIN_REFRESH)
        .fetch_timeout(Duration::from_millis(500))
}

pub async fn fetched(provider: &Provider) -> Jwks {
    builder(provider.issuer(), true)
        .build_and_fetch()
        .await
        .expect("first fetch")
}

pub fn layer(jwks: Jwks) -> JwtRevocationLayer<MemoryStore> {
    JwtRevocationLayer::builder(MemoryStore::new())
        .jwks(jwks)
        .build()
        .unwrap()
}

/// One request through `layer` to a handler answering 200 with the token's `sub`.
pub async fn call<S, C>(layer: &JwtRevocationLayer<S, C>, token: &str) -> (StatusCode, HeaderMap)
where
    S: tower_jwt_revocation::RevocationBackend,
    C: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let service = layer.layer(tower::service_fn(|request: Request<()>| async move {
        let claims = request.extensions().get::<std::sync::Arc<Claims<C>>>().cloned();
        Ok::<_, std::convert::Infallible>(axum::http::Response::new(
            claims.and_then(|c| c.sub.clone()).unwrap_or_default(),
        ))
    }));
    let request = Request::get("/")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    (response.status(), response.headers().clone())
}

pub async fn status<S, C>(layer: &JwtRevocationLayer<S, C>, token: &str) -> StatusCode
where
    S: tower_jwt_revocation::RevocationBackend,
    C: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    call(layer, token).await.0
}
