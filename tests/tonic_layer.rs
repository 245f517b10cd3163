//! The layer on a real tonic server on a loopback port, called by a real tonic client: gRPC
//! clients get gRPC statuses, methods get the caller's claims.

#[path = "../examples/tonic_server.rs"]
mod tonic_server;

mod common;

use common::{FailingBackend, SECRET, claims, mint};
use tonic::Code;
use tonic_server::{AuthClient, AuthServer, auth_layer};
use tower_jwt_revocation::{FailurePolicy, MemoryStore};

async fn start(store: MemoryStore) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tonic_server::serve(
        listener,
        store,
        SECRET,
        FailurePolicy::Closed,
        None,
    ));
    addr
}

#[tokio::test]
async fn grpc_callers_get_their_claims_or_an_unauthenticated_status() {
    let addr = start(MemoryStore::new()).await;
    let mut client = AuthClient::connect(addr).await.unwrap();

    // Login is carved out of the layer: it needs no token.
    let login = client.login("alice").await.unwrap();
    let me = client.me(Some(&login.access_token)).await.unwrap();
    assert_eq!((me.sub.as_str(), me.jti.as_str()), ("alice", login.jti.as_str()));
    assert!(me.exp > me.iat);

    // A token from another issuer with the same secret works the same.
    let minted = mint(claims("minted-1", "bob"));
    assert_eq!(client.me(Some(&minted)).await.unwrap().sub, "bob");

    let missing = client.me(None).await.unwrap_err();
    assert_eq!(
        (missing.code(), missing.message()),
        (Code::Unauthenticated, "bearer token required")
    );
    let forged = client.me(Some("abc.def.ghi")).await.unwrap_err();
    assert_eq!(
        (forged.code(), forged.message()),
        (Code::Unauthenticated, "malformed token")
    );

    client.logout(&login.access_token).await.unwrap();
    let revoked = client.me(Some(&login.access_token)).await.unwrap_err();
    assert_eq!(
        (revoked.code(), revoked.message()),
        (Code::Unauthenticated, "token revoked")
    );
    assert_eq!(client.me(Some(&minted)).await.unwrap().sub, "bob");
}

#[tokio::test]
async fn a_store_outage_is_unavailable_under_the_closed_policy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(auth_layer(
                FailingBackend::default(),
                SECRET,
                FailurePolicy::Closed,
                None,
            ))
            .add_service(AuthServer::new(MemoryStore::new(), SECRET))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = AuthClient::connect(addr).await.unwrap();
    let down = client.me(Some(&mint(claims("x", "carol")))).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable);
    // Skipped methods do not touch the store at all.
    assert!(client.login("carol").await.is_ok());
}

#[tokio::test]
async fn a_missing_scope_is_permission_denied() {
    use tower_jwt_revocation::JwtRevocationLayer;
    use tower_jwt_revocation::jsonwebtoken::DecodingKey;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = MemoryStore::new();
    let layer = JwtRevocationLayer::builder(store.clone())
        .decoding_key(DecodingKey::from_secret(SECRET))
        .require_scopes(["profile"])
        .build()
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(AuthServer::new(store, SECRET))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = AuthClient::connect(addr).await.unwrap();
    let mut scoped = claims("s1", "dana");
    scoped["scope"] = serde_json::json!("profile email");
    assert_eq!(client.me(Some(&mint(scoped))).await.unwrap().sub, "dana");
    let denied = client.me(Some(&mint(claims("s2", "dana")))).await.unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (Code::PermissionDenied, "insufficient scope")
    );
}

#[tokio::test]
async fn grpc_callers_with_dpop_bound_tokens_send_a_proof_for_the_method() {
    use common::dpop::{ES256, RS256};
    use tower_jwt_revocation::dpop::DpopConfig;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tonic_server::serve(
        listener,
        MemoryStore::new(),
        SECRET,
        FailurePolicy::Closed,
        Some(DpopConfig::new("https://grpc.example.com")),
    ));
    let mut client = AuthClient::connect(addr).await.unwrap();
    let mut bound = claims("g1", "dora");
    bound["cnf"] = serde_json::json!({"jkt": ES256.jkt()});
    let token = mint(bound);
    let htu = "https://grpc.example.com/demo.Auth/Me";
    let me = client
        .me_with_proof(&token, &ES256.proof("POST", htu, &token))
        .await
        .unwrap();
    assert_eq!(me.sub, "dora");
    let as_bearer = client.me(Some(&token)).await.unwrap_err();
    assert_eq!(
        (as_bearer.code(), as_bearer.message()),
        (
            Code::Unauthenticated,
            "DPoP-bound token presented as a bearer token"
        )
    );
    let other_key = client
        .me_with_proof(&token, &RS256.proof("POST", htu, &token))
        .await
        .unwrap_err();
    assert_eq!(other_key.code(), Code::Unauthenticated);
    let wrong_method = client
        .me_with_proof(&token, &ES256.proof("GET", htu, &token))
        .await
        .unwrap_err();
    assert_eq!(
        (wrong_method.code(), wrong_method.message()),
        (
            Code::Unauthenticated,
            "DPoP proof htm does not match the request method"
        )
    );
}
