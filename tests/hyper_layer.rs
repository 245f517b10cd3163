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
    send_with_proof(addr, method, path, authorization, None).await
}

async fn send_with_proof(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    proof: Option<&str>,
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
    if let Some(proof) = proof {
        req = req.header("DPoP", proof);
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
        None,
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

#[tokio::test]
async fn the_hyper_example_checks_dpop_proofs_against_its_origin() {
    use common::dpop::ES256;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = "https://hyper.example.com";
    tokio::spawn(hyper_server::serve(
        listener,
        MemoryStore::new(),
        SECRET,
        FailurePolicy::Closed,
        Some(tower_jwt_revocation::dpop::DpopConfig::new(origin)),
    ));
    let mut bound = claims("hd1", "hana");
    bound["cnf"] = serde_json::json!({"jkt": ES256.jkt()});
    let token = mint(bound);
    let auth = format!("DPoP {token}");
    let proof = ES256.proof("GET", &format!("{origin}/me"), &token);
    let (status, _, body) = send_with_proof(addr, Method::GET, "/me", Some(&auth), Some(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The request's Host is localhost; a proof naming it is for another resource.
    let proof = ES256.proof("GET", "http://localhost/me", &token);
    let (status, challenge, _) = send_with_proof(addr, Method::GET, "/me", Some(&auth), Some(&proof)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge
            .unwrap()
            .contains("DPoP proof htu does not match the request URI")
    );
}
