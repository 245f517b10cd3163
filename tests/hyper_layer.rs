//! The layer under a bare hyper 1 server, no framework (`examples/hyper_server.rs`): a non-axum
//! body type, a real TCP connection on loopback.

#[path = "../examples/hyper_server.rs"]
mod hyper_server;

mod common;

use bytes::Bytes;
use common::*;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tower_jwt_revocation::{FailurePolicy, MemoryStore};

async fn send(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
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
async fn the_hyper_example_enforces_logout_over_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hyper_server::serve(
        listener,
        MemoryStore::new(),
        SECRET,
        FailurePolicy::Closed,
    ));
    let auth = format!("Bearer {}", mint(claims("h1", "hana")));

    let (status, _, body) = send(addr, Method::GET, "/me", Some(&auth)).await;
    assert_eq!(status, StatusCode::OK);
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (me["sub"].as_str(), me["jti"].as_str()),
        (Some("hana"), Some("h1"))
    );

    let (status, challenge, _) = send(addr, Method::GET, "/me", None).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (StatusCode::UNAUTHORIZED, Some("Bearer"))
    );
    assert_eq!(
        send(addr, Method::GET, "/nope", Some(&auth)).await.0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        send(addr, Method::POST, "/logout", Some(&auth)).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, challenge, _) = send(addr, Method::GET, "/me", Some(&auth)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="invalid_token", error_description="token revoked""#)
    );
}
