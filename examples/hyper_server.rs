//! The layer on a bare hyper 1 server (`hyper-util`), no framework.
//!
//! ```text
//! cargo run --example hyper_server      # BIND_ADDR (default 127.0.0.1:3001), JWT_SECRET,
//!                                       # DATABASE_URL, REVOCATION_CACHE, FAILURE_POLICY,
//!                                       # RESOURCE_URL, DPOP (DPoP as in the axum demo)
//! ```
//!
//! `GET /me` answers the caller's claims as JSON; `POST /logout` revokes the presented token;
//! anything else is 404. The layer wraps a `tower::service_fn` whose body type is
//! `http_body_util::Full<Bytes>` (any body with an empty `Default` works), and
//! `TowerToHyperService` hands it to hyper. Tokens are minted elsewhere (the axum demo's
//! `/login`, or any HS256 issuer with the same secret).
#![allow(dead_code)]

#[path = "support/edge.rs"]
mod edge;
#[path = "support/store.rs"]
mod store;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use store::{WithStore, with_store_from_env};
use tower::service_fn;
use tower_jwt_revocation::dpop::DpopConfig;

use tower_jwt_revocation::jsonwebtoken::DecodingKey;
use tower_jwt_revocation::{Claims, FailurePolicy, JwtRevocationLayer, RevocationBackend, RevocationStore};

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle<S: RevocationStore>(
    store: S,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // The layer only lets requests with verified, unrevoked claims through.
    let Some(claims) = request.extensions().get::<std::sync::Arc<Claims>>().cloned() else {
        return Ok(json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "unauthorized"}),
        ));
    };
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/me") => json(
            StatusCode::OK,
            serde_json::json!({"sub": claims.sub, "jti": claims.jti, "exp": claims.exp}),
        ),
        (&Method::POST, "/logout") => match claims.token_revocation() {
            Some(revocation) => match store.revoke(&revocation.reason("logout")).await {
                Ok(_) => Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Full::default())
                    .unwrap_or_default(),
                Err(_) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": "temporarily_unavailable"}),
                ),
            },
            None => json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "token has no id"}),
            ),
        },
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "not_found"})),
    })
}

/// Serves on `listener` until the task is dropped: one hyper HTTP/1.1 connection task per client.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    store: S,
    secret: &[u8],
    policy: FailurePolicy,
    dpop: Option<DpopConfig>,
) where
    S: RevocationBackend + RevocationStore + Clone,
{
    let builder = JwtRevocationLayer::builder(store.clone())
        .decoding_key(DecodingKey::from_secret(secret))
        .failure_policy(policy);
    let layer = store::with_dpop(builder, dpop)
        .build()
        .expect("the demo's layer configuration is valid");
    let service = edge::http()
        .layer(layer)
        .service(service_fn(move |request| handle(store.clone(), request)));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
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
        tracing::info!(addr = %self.listener.local_addr()?, store = description, "hyper demo listening");
        serve(self.listener, store, &self.secret, self.policy, self.dpop).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    store::init_tracing();
    let (secret, policy) = (store::secret_from_env(), store::failure_policy_from_env()?);
    let dpop = store::dpop_from_env()?;
    let listener = store::listener_from_env("127.0.0.1:3001").await?;
    with_store_from_env(Demo {
        listener,
        secret,
        policy,
        dpop,
    })
    .await
}
