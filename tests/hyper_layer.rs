//! The layer under a bare hyper 1 server, no framework: a non-axum body type, a real TCP
//! connection on loopback.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::{Layer, service_fn};
use tower_jwt_revocation::jsonwebtoken::DecodingKey;
use tower_jwt_revocation::{Claims, JwtRevocationLayer, MemoryStore, RevocationStore};

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let sub = req
        .extensions()
        .get::<Claims>()
        .and_then(|c| c.sub.clone())
        .unwrap_or_default();
    Ok(Response::new(Full::new(Bytes::from(format!("hello {sub}")))))
}

async fn serve(store: MemoryStore) -> std::net::SocketAddr {
    let layer = JwtRevocationLayer::builder(store)
        .decoding_key(DecodingKey::from_secret(SECRET))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(hello));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn get(
    addr: std::net::SocketAddr,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", "localhost");
    if let Some(auth) = authorization {
        req = req.header(AUTHORIZATION, auth);
    }
    let res = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let challenge = res
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, challenge, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn layer_serves_a_bare_hyper_server() {
    let store = MemoryStore::new();
    let addr = serve(store.clone()).await;
    let token = mint(claims("h1", "hana"));
    let auth = format!("Bearer {token}");

    assert_eq!(
        get(addr, Some(&auth)).await,
        (StatusCode::OK, None, "hello hana".to_owned())
    );
    assert_eq!(
        get(addr, None).await,
        (StatusCode::UNAUTHORIZED, Some("Bearer".to_owned()), String::new())
    );

    store
        .revoke("h1", Some("hana"), in_an_hour(), None, None)
        .await
        .unwrap();
    let (status, challenge, _) = get(addr, Some(&auth)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="token revoked""#)
    );
}
