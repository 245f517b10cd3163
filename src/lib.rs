//! JWT revocation enforcement for any Tower server (axum, tonic, bare hyper), as one layer.
//!
//! [`JwtRevocationLayer`] takes the bearer token of every request, verifies it with
//! [`jsonwebtoken`], and asks a backend whether it was revoked: by its `jti` (logout), by its
//! session `sid` ("revoke session #3 of user X") or by its subject's cutoff ("log out
//! everywhere"). A verified, unrevoked token's [`Claims`] go into the request's extensions (as an
//! `Arc<Claims<C>>`) and the request goes on; anything else is answered with the RFC 6750
//! response (or a gRPC status for gRPC requests) without reaching the inner service. A token the
//! layer verified before skips its signature verification ([`token_cache`]), never its
//! revocation check.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use jsonwebtoken::{Algorithm, DecodingKey, Validation};
//! use tower_jwt_revocation::{Claims, JwtRevocationLayer, MemoryStore};
//!
//! async fn me(claims: Claims) -> String {
//!     format!("hello {}", claims.sub.unwrap_or_default())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new(); // handlers keep a clone to revoke with
//! let auth = JwtRevocationLayer::builder(store.clone())
//!     .decoding_key(DecodingKey::from_secret(b"a long and random secret"))
//!     .validation(Validation::new(Algorithm::HS256))
//!     .build()?;
//! let app: Router = Router::new().route("/me", get(me)).layer(auth);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The request path, in order (each step in its own module):
//! 1. [`bearer`]: exactly one `Authorization: Bearer <token68>` header (or `DPoP`), bounded
//!    length.
//! 2. [`token_cache`]: a token verified before skips step 3 (its time claims are checked again).
//! 3. [`verify`]: signature, algorithm allow-list, time claims, `iss`/`aud`, optional `typ`.
//! 4. [`dpop`]: a DPoP-bound token's proof (RFC 9449), when the layer accepts them; a bound
//!    token without one is refused.
//! 5. [`backend`]: the revocation check, through the synchronous fast path when the backend
//!    can answer from memory, so a cache hit costs no allocation and no `.await`.
//! 6. [`reject`]: the response of every refusal, built in one place.
//!
//! Beside the layer, [`resource_metadata`] serves RFC 9728's protected-resource metadata, which
//! the layer's challenges can name.
//!
//! **The manual is [`docs`]**: one page per topic (keys and identity providers, the backend
//! chain and its consistency model, mirror mode, fleets on NATS, sessions, receivers, failure
//! policy and trade-offs, metrics and operations, feature flags, the source layout), each
//! example a doctest. Items a feature gates carry its badge on docs.rs.

#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, nightly): a badge on every item a feature gates.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
pub mod bearer;
mod config;
mod decision;
pub mod docs;
pub mod dpop;
#[cfg(feature = "axum")]
pub mod extract;
mod future;
#[cfg(feature = "jwks")]
pub mod jwks;
mod layer;
pub mod purge;
#[cfg(feature = "receivers")]
pub mod receiver;
pub mod reject;
pub mod resource_metadata;
pub mod scope;
mod service;
pub mod session;
pub mod telemetry;
pub mod verify;

#[cfg(feature = "moka")]
pub use backend::moka::{CacheMetrics, CacheMode, MokaCache, MokaCacheBuilder};
#[cfg(feature = "nats")]
pub use backend::nats::{NatsLedger, Relay};
#[cfg(feature = "postgres")]
pub use backend::postgres::{PgStore, Subscription};
pub use backend::{
    FeedItem, Ledger, LiveRevocation, Lookup, MemoryStore, Revocation, RevocationBackend, RevocationEvent,
    RevocationKind, RevocationRecord, RevocationStore, RevocationTarget, RevokedBy, Snapshot, StoreError,
    TokenFacts, Verdict,
};
pub use config::ConfigError;
pub use decision::{FailurePolicy, Metrics};
pub use future::ResponseFuture;
#[cfg(feature = "jwks")]
pub use jwks::{Jwks, JwksBuilder, JwksError, JwksStats};
pub use layer::{JwtRevocationBuilder, JwtRevocationLayer};
pub use purge::Purge;
#[cfg(feature = "tokio")]
pub use purge::{Purger, spawn_purger};
pub use reject::{DefaultReject, Reject, Rejection};
pub use scope::RequireScopes;
pub use service::JwtRevocation;
/// The verification module's old path (it was `decode` before issue 26).
pub use verify as decode;
/// The verified-token cache's old path (it is [`verify::token_cache`] now).
pub use verify::token_cache;
pub use verify::{Claims, Confirmation, DefaultClaims, InvalidToken, Issuer, KeySet, MissingJti, Scopes};

/// The NATS client `backend::nats` is built on, re-exported so that a `Client` can be made with
/// the version this crate uses.
#[cfg(feature = "nats")]
pub use async_nats;
/// The `jsonwebtoken` this crate is built with, for keys and `Validation` of the same version.
pub use jsonwebtoken;

/// The README's examples, compiled with the doctests so that the front door never shows code
/// that does not build.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
