//! [`JwksError`]: why a key source could not fetch or use a key document, or refused its
//! settings. The fetchers, the builder and the refresh task all report through it; it depends
//! on nothing else in the crate.

use std::time::Duration;

/// Why a key document could not be fetched or used, or a [`JwksBuilder`](super::JwksBuilder) refused its settings.
/// The text never contains key material or response bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The URL is not an absolute `http(s)` URL (or carries credentials).
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// The URL is plain `http`: allowed only to a loopback address, with
    /// [`JwksBuilder::allow_http_on_loopback`](super::JwksBuilder::allow_http_on_loopback).
    #[error("refusing to fetch keys over plain http from {0:?} (https required)")]
    InsecureUrl(String),
    /// A setting is out of range.
    #[error("invalid key source setting: {0}")]
    Setting(&'static str),
    /// There is no Tokio runtime to run the refresh task on.
    #[error("the key source needs a Tokio runtime (build it inside one)")]
    NoRuntime,
    /// The HTTP client could not be built or the request not formed.
    #[error("HTTP client error: {0}")]
    Client(String),
    /// Connecting or reading failed.
    #[error("fetch failed: {0}")]
    Transport(String),
    /// The fetch took longer than the fetch timeout.
    #[error("fetch timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with a status other than 200 (redirects are not followed).
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    /// The body is larger than the configured bound.
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
    /// The discovery document is not JSON with string `issuer` and `jwks_uri` members.
    #[error("not an OpenID Provider configuration document")]
    NotDiscovery,
    /// The discovery document names another issuer than the configured one (OIDC Discovery
    /// §4.3: the document must not be used).
    #[error("discovery document is for issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The document's `issuer`.
        found: String,
    },
    /// The body is not a JSON object with a `keys` array.
    #[error("not a JSON Web Key Set")]
    NotAKeySet,
    /// The set holds no key this crate can verify with (all skipped: encryption keys,
    /// unsupported curves, symmetric keys not allowed, malformed members).
    #[error("the key set holds no usable signature key ({skipped} skipped)")]
    NoUsableKeys {
        /// How many keys were skipped.
        skipped: usize,
    },
    /// No fetch has succeeded yet.
    #[error("no key set fetched yet")]
    NotFetched,
}
