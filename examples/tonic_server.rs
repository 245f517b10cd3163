//! The layer on a tonic (gRPC) server: `Login`, `Me` and `Logout` on `demo.Auth`.
//!
//! ```text
//! cargo run --example tonic_server      # BIND_ADDR (default 127.0.0.1:50051), JWT_SECRET,
//!                                       # DATABASE_URL, REVOCATION_CACHE, RESOURCE_URL, DPOP
//!                                       # as for the axum demo
//! ```
//!
//! With `RESOURCE_URL`, DPoP-bound tokens are taken as the axum demo takes them: `authorization:
//! DPoP <token>` and a `dpop` proof in the request metadata, whose `htm` is `POST` and whose
//! `htu` is the resource's origin followed by the method's path (`/demo.Auth/Me`).
//!
//! `Server::builder().layer(JwtRevocationLayer)` wraps every method; `skip_paths` carves
//! `Login` out, since a client has no token before it logs in. A method reads the caller's
//! claims from `request.extensions()`. Refusals reach gRPC clients as statuses: missing,
//! invalid or revoked tokens as `UNAUTHENTICATED`, a store outage (policy `Closed`) as
//! `UNAVAILABLE`.
//!
//! The messages are hand-written prost types (no `.proto` build step, no `protoc`); they match:
//!
//! ```proto
//! package demo;
//! service Auth {
//!   rpc Login(LoginRequest) returns (LoginReply);
//!   rpc Me(Empty) returns (MeReply);
//!   rpc Logout(Empty) returns (Empty);
//! }
//! message LoginRequest { string sub = 1; }
//! message LoginReply { string access_token = 1; string jti = 2; uint64 expires_in = 3; }
//! message MeReply { string sub = 1; string jti = 2; uint64 iat = 3; uint64 exp = 4; }
//! message Empty {}
//! ```
#![allow(dead_code)]

#[path = "support/edge.rs"]
mod edge;
#[path = "support/store.rs"]
mod store;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use store::{WithStore, with_store_from_env};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::{Service, service_fn};
use tower_jwt_revocation::backend::unix_seconds;
use tower_jwt_revocation::dpop::DpopConfig;
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use tower_jwt_revocation::{Claims, FailurePolicy, JwtRevocationLayer, RevocationBackend, RevocationStore};

/// `demo.LoginRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoginRequest {
    #[prost(string, tag = "1")]
    pub sub: String,
}

/// `demo.LoginReply`
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoginReply {
    #[prost(string, tag = "1")]
    pub access_token: String,
    #[prost(string, tag = "2")]
    pub jti: String,
    #[prost(uint64, tag = "3")]
    pub expires_in: u64,
}

/// `demo.MeReply`
#[derive(Clone, PartialEq, prost::Message)]
pub struct MeReply {
    #[prost(string, tag = "1")]
    pub sub: String,
    #[prost(string, tag = "2")]
    pub jti: String,
    #[prost(uint64, tag = "3")]
    pub iat: u64,
    #[prost(uint64, tag = "4")]
    pub exp: u64,
}

/// `demo.Empty`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Empty {}

pub const LOGIN: &str = "/demo.Auth/Login";
pub const ME: &str = "/demo.Auth/Me";
pub const LOGOUT: &str = "/demo.Auth/Logout";
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The `demo.Auth` service over any store.
pub struct Auth<S> {
    store: S,
    encoding_key: EncodingKey,
}

impl<S> Auth<S>
where
    S: RevocationStore + Clone,
{
    fn login(&self, request: LoginRequest) -> Result<LoginReply, Status> {
        if request.sub.is_empty() || request.sub.len() > 256 {
            return Err(Status::invalid_argument("sub must be 1 to 256 bytes"));
        }
        let now = unix_seconds(SystemTime::now());
        let jti = uuid::Uuid::new_v4().to_string();
        let claims =
            serde_json::json!({"jti": jti, "sub": request.sub, "iat": now, "exp": now + TOKEN_TTL.as_secs()});
        let access_token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
            .map_err(|_| Status::internal("signing failed"))?;
        Ok(LoginReply {
            access_token,
            jti,
            expires_in: TOKEN_TTL.as_secs(),
        })
    }

    /// The claims the layer put into the request's extensions.
    fn claims<T>(request: &Request<T>) -> Result<Arc<Claims>, Status> {
        request
            .extensions()
            .get::<Arc<Claims>>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified token"))
    }

    async fn logout(&self, claims: Arc<Claims>) -> Result<Empty, Status> {
        let revocation = claims
            .token_revocation()
            .ok_or_else(|| Status::invalid_argument("token has no id"))?;
        self.store
            .revoke(&revocation.reason("logout"))
            .await
            .map_err(|_| Status::unavailable("revocation store unavailable"))?;
        Ok(Empty {})
    }
}

/// The hand-written equivalent of a generated tonic server: routes by path, decodes with prost.
pub struct AuthServer<S> {
    auth: Arc<Auth<S>>,
}

impl<S> AuthServer<S> {
    /// The service, revoking through `store` and signing with the HS256 `secret`.
    pub fn new(store: S, secret: &[u8]) -> Self {
        Self {
            auth: Arc::new(Auth {
                store,
                encoding_key: EncodingKey::from_secret(secret),
            }),
        }
    }
}

impl<S> Clone for AuthServer<S> {
    fn clone(&self) -> Self {
        Self {
            auth: Arc::clone(&self.auth),
        }
    }
}

impl<S> NamedService for AuthServer<S> {
    const NAME: &'static str = "demo.Auth";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for AuthServer<S>
where
    S: RevocationStore + Clone,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let auth = Arc::clone(&self.auth);
        match request.uri().path() {
            LOGIN => Box::pin(async move {
                let method = service_fn(move |req: Request<LoginRequest>| {
                    let auth = Arc::clone(&auth);
                    async move { auth.login(req.into_inner()).map(Response::new) }
                });
                Ok(
                    tonic::server::Grpc::new(ProstCodec::<LoginReply, LoginRequest>::default())
                        .unary(method, request)
                        .await,
                )
            }),
            ME => Box::pin(async move {
                let method = service_fn(|req: Request<Empty>| async move {
                    let claims = Auth::<S>::claims(&req)?;
                    Ok::<_, Status>(Response::new(MeReply {
                        sub: claims.sub.clone().unwrap_or_default(),
                        jti: claims.jti.clone().unwrap_or_default(),
                        iat: claims.iat.unwrap_or_default(),
                        exp: claims.exp.unwrap_or_default(),
                    }))
                });
                Ok(tonic::server::Grpc::new(ProstCodec::<MeReply, Empty>::default())
                    .unary(method, request)
                    .await)
            }),
            LOGOUT => Box::pin(async move {
                let method = service_fn(move |req: Request<Empty>| {
                    let auth = Arc::clone(&auth);
                    async move { auth.logout(Auth::<S>::claims(&req)?).await.map(Response::new) }
                });
                Ok(tonic::server::Grpc::new(ProstCodec::<Empty, Empty>::default())
                    .unary(method, request)
                    .await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The layer as this server configures it: `Login` needs no token.
pub fn auth_layer<S: RevocationBackend>(
    store: S,
    secret: &[u8],
    policy: FailurePolicy,
    dpop: Option<DpopConfig>,
) -> JwtRevocationLayer<S> {
    let builder = JwtRevocationLayer::builder(store)
        .decoding_key(DecodingKey::from_secret(secret))
        .failure_policy(policy)
        .skip_paths(|path| path == LOGIN);
    store::with_dpop(builder, dpop)
        .build()
        .expect("the demo's layer configuration is valid")
}

/// Serves `demo.Auth` on `listener` until the process ends.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    store: S,
    secret: &[u8],
    policy: FailurePolicy,
    dpop: Option<DpopConfig>,
) -> Result<(), tonic::transport::Error>
where
    S: RevocationBackend + RevocationStore + Clone,
{
    let server = AuthServer::new(store.clone(), secret);
    tonic::transport::Server::builder()
        .timeout(edge::TIMEOUT)
        .layer(edge::grpc())
        .layer(auth_layer(store, secret, policy, dpop))
        .add_service(server)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
}

/// A small client for `demo.Auth`, the hand-written equivalent of a generated one.
pub struct AuthClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl AuthClient {
    /// Connects to `http://ADDR`.
    pub async fn connect(addr: std::net::SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn unary<Q, A>(&mut self, path: &'static str, message: Q, token: Option<&str>) -> Result<A, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let credentials = token.map(|token| (format!("Bearer {token}"), None));
        self.call(path, message, credentials).await
    }

    /// Calls `path` with an `authorization` value and, for a DPoP-bound token, its proof.
    async fn call<Q, A>(
        &mut self,
        path: &'static str,
        message: Q,
        credentials: Option<(String, Option<String>)>,
    ) -> Result<A, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("not ready: {e}")))?;
        let mut request = Request::new(message);
        if let Some((authorization, proof)) = credentials {
            let value = authorization
                .parse()
                .map_err(|_| Status::invalid_argument("bad token"))?;
            request.metadata_mut().insert("authorization", value);
            if let Some(proof) = proof {
                let value = proof.parse().map_err(|_| Status::invalid_argument("bad proof"))?;
                request.metadata_mut().insert("dpop", value);
            }
        }
        let codec = ProstCodec::<Q, A>::default();
        Ok(self
            .grpc
            .unary(request, PathAndQuery::from_static(path), codec)
            .await?
            .into_inner())
    }

    pub async fn login(&mut self, sub: &str) -> Result<LoginReply, Status> {
        self.unary(LOGIN, LoginRequest { sub: sub.to_owned() }, None)
            .await
    }

    pub async fn me(&mut self, token: Option<&str>) -> Result<MeReply, Status> {
        self.unary(ME, Empty {}, token).await
    }

    pub async fn logout(&mut self, token: &str) -> Result<Empty, Status> {
        self.unary(LOGOUT, Empty {}, Some(token)).await
    }

    /// `Me` with a DPoP-bound token and its proof (for `POST` on the resource's origin followed
    /// by `/demo.Auth/Me`).
    pub async fn me_with_proof(&mut self, token: &str, proof: &str) -> Result<MeReply, Status> {
        self.call(
            ME,
            Empty {},
            Some((format!("DPoP {token}"), Some(proof.to_owned()))),
        )
        .await
    }
}

struct Demo {
    listener: tokio::net::TcpListener,
    secret: Vec<u8>,
    policy: FailurePolicy,
    dpop: Option<DpopConfig>,
}

impl WithStore for Demo {
    async fn run<S, X>(
        self,
        store: S,
        _sessions: X,
        description: &'static str,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        S: RevocationBackend + RevocationStore + Clone,
        X: tower_jwt_revocation::session::Sessions,
    {
        tracing::info!(addr = %self.listener.local_addr()?, store = description, "gRPC demo listening");
        serve(self.listener, store, &self.secret, self.policy, self.dpop).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    store::init_tracing();
    let (secret, policy) = (store::secret_from_env(), store::failure_policy_from_env()?);
    let dpop = store::dpop_from_env()?;
    let listener = store::listener_from_env("127.0.0.1:50051").await?;
    with_store_from_env(Demo {
        listener,
        secret,
        policy,
        dpop,
    })
    .await
}
