//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the JSON document that tells a client
//! which authorization servers issue tokens for this resource, which scopes it knows and how it
//! takes tokens, served at `/.well-known/oauth-protected-resource` as a tower service beside the
//! layer.
//!
//! The MCP authorization spec and RFC 9728 clients find it through the layer's 401 challenge
//! (`resource_metadata="<url>"`, §5.1): give the layer
//! [`JwtRevocationBuilder::resource_metadata`](crate::JwtRevocationBuilder::resource_metadata)
//! the document's [`url`](ProtectedResourceMetadata::url). When the resource identifier has a
//! path (`https://api.example.com/v1`), the well-known segment goes between the host and the
//! path (§3.1): `https://api.example.com/.well-known/oauth-protected-resource/v1`.
//!
//! ```
//! use axum::Router;
//! use tower_jwt_revocation::dpop::{DpopConfig, DpopPolicy};
//! use tower_jwt_revocation::resource_metadata::ProtectedResourceMetadata;
//!
//! let dpop = DpopConfig::new("https://api.example.com").policy(DpopPolicy::Required);
//! let metadata = ProtectedResourceMetadata::new("https://api.example.com")
//!     .unwrap()
//!     .authorization_server("https://login.example.com")
//!     .scopes_supported(["read", "write"])
//!     .dpop(&dpop);
//! assert_eq!(metadata.url(), "https://api.example.com/.well-known/oauth-protected-resource");
//! let app: Router = Router::new().route_service(&metadata.path(), metadata.service());
//! # let _ = app;
//! ```
//!
//! It does not sign the document (`signed_metadata`, §2.2) and serves it to anyone: the
//! document is public by design.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::config::ConfigError;
use crate::dpop::{DpopConfig, DpopPolicy, normalize_uri};

/// The well-known URI suffix (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The protected-resource metadata document (RFC 9728 §2). Build it with [`new`](Self::new) and
/// the setters, serve it with [`service`](Self::service).
#[derive(Debug, Clone, Serialize)]
#[must_use]
pub struct ProtectedResourceMetadata {
    resource: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    authorization_servers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_uri: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes_supported: Vec<String>,
    bearer_methods_supported: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_documentation: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dpop_signing_alg_values_supported: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dpop_bound_access_tokens_required: bool,
    #[serde(skip)]
    origin: String,
    #[serde(skip)]
    path: String,
}

impl ProtectedResourceMetadata {
    /// The metadata of the resource identified by `resource`: an absolute `https` URL (`http`
    /// only on loopback, for tests) with a host and no query or fragment (§2), sent as it is
    /// given. `bearer_methods_supported`
    /// starts as `["header"]`, the only way the layer reads a token besides an optional cookie.
    pub fn new(resource: impl Into<String>) -> Result<Self, ConfigError> {
        let resource = resource.into();
        let invalid = || ConfigError::InvalidResource(resource.clone());
        if resource.contains(['?', '#']) || !resource.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let normal = normalize_uri(&resource).ok_or_else(invalid)?;
        // RFC 9728 §2: an `https` identifier; plain `http` only on loopback, for tests.
        let loopback = ["http://127.0.0.1", "http://[::1]", "http://localhost"]
            .iter()
            .any(|origin| {
                normal
                    .strip_prefix(origin)
                    .is_some_and(|rest| rest.starts_with([':', '/']))
            });
        if !normal.starts_with("https://") && !loopback {
            return Err(invalid());
        }
        // The URL is built from the identifier as given (§3.1: the suffix goes between its host
        // and its path, a terminating slash of the path dropped), so a client comparing the
        // document's `resource` with the identifier it started from finds the same text.
        let after_scheme = resource.find("://").ok_or_else(invalid)? + 3;
        let authority_end = resource[after_scheme..]
            .find('/')
            .map_or(resource.len(), |slash| after_scheme + slash);
        let origin = resource[..authority_end].to_owned();
        let path = resource[authority_end..].trim_end_matches('/').to_owned();
        Ok(Self {
            resource,
            authorization_servers: Vec::new(),
            jwks_uri: None,
            scopes_supported: Vec::new(),
            bearer_methods_supported: vec!["header".to_owned()],
            resource_name: None,
            resource_documentation: None,
            dpop_signing_alg_values_supported: Vec::new(),
            dpop_bound_access_tokens_required: false,
            origin,
            path,
        })
    }

    /// Adds an authorization server's issuer identifier (`authorization_servers`).
    pub fn authorization_server(mut self, issuer: impl Into<String>) -> Self {
        self.authorization_servers.push(issuer.into());
        self
    }

    /// The resource's own JWK Set, if it signs anything (`jwks_uri`).
    pub fn jwks_uri(mut self, uri: impl Into<String>) -> Self {
        self.jwks_uri = Some(uri.into());
        self
    }

    /// The scopes clients may ask for to use this resource (`scopes_supported`).
    pub fn scopes_supported<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes_supported = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How the resource takes tokens (`bearer_methods_supported`; default `["header"]`).
    pub fn bearer_methods_supported<I, T>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.bearer_methods_supported = methods.into_iter().map(Into::into).collect();
        self
    }

    /// A human-readable name (`resource_name`).
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// Where a developer reads about the resource (`resource_documentation`).
    pub fn resource_documentation(mut self, url: impl Into<String>) -> Self {
        self.resource_documentation = Some(url.into());
        self
    }

    /// Advertises what `dpop` accepts: `dpop_signing_alg_values_supported`, and
    /// `dpop_bound_access_tokens_required` under [`DpopPolicy::Required`].
    pub fn dpop(mut self, dpop: &DpopConfig) -> Self {
        self.dpop_signing_alg_values_supported = dpop
            .allowed_algorithms()
            .iter()
            .map(|alg| crate::dpop::alg_name(*alg))
            .collect();
        self.dpop_bound_access_tokens_required = dpop.policy_in_force() == DpopPolicy::Required;
        self
    }

    /// The path the document is served at: [`WELL_KNOWN`], followed by the resource
    /// identifier's path if it has one.
    pub fn path(&self) -> String {
        format!("{WELL_KNOWN}{}", self.path)
    }

    /// The document's URL, for the layer's challenges
    /// ([`JwtRevocationBuilder::resource_metadata`](crate::JwtRevocationBuilder::resource_metadata)).
    pub fn url(&self) -> String {
        format!("{}{}", self.origin, self.path())
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        // A struct of strings, vectors of strings and a bool always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A tower service answering `GET` and `HEAD` at [`path`](Self::path) with the document
    /// (`application/json`, cacheable for an hour, readable cross-origin), 405 for other methods
    /// there, and 404 elsewhere. Mount it outside the layer: the document needs no token.
    pub fn service(&self) -> ResourceMetadataService {
        ResourceMetadataService {
            body: Arc::from(self.to_json()),
            path: Arc::from(self.path()),
        }
    }
}

/// The service of [`ProtectedResourceMetadata::service`]. Cloning it is cheap; it never fails.
#[derive(Debug, Clone)]
pub struct ResourceMetadataService {
    body: Arc<str>,
    path: Arc<str>,
}

impl<B> tower::Service<Request<B>> for ResourceMetadataService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut response = Response::new(String::new());
        if request.uri().path() != &*self.path {
            *response.status_mut() = StatusCode::NOT_FOUND;
            return ready(Ok(response));
        }
        let headers = response.headers_mut();
        match *request.method() {
            Method::GET | Method::HEAD => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
                if request.method() == Method::GET {
                    *response.body_mut() = self.body.to_string();
                }
            }
            _ => {
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            }
        }
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Service;

    #[test]
    fn the_well_known_segment_goes_before_the_resources_path() {
        let at = |resource: &str| ProtectedResourceMetadata::new(resource).unwrap().url();
        assert_eq!(
            at("https://api.example.com"),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            at("https://api.example.com/"),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            at("https://api.example.com/v1/"),
            "https://api.example.com/.well-known/oauth-protected-resource/v1"
        );
        assert_eq!(
            at("http://127.0.0.1:8080/a/b"),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/a/b"
        );
        for bad in [
            "/v1",
            "ftp://x.example",
            "https://x.example/?a",
            "https://x.example/#f",
            "https://u@x.example",
        ] {
            assert!(ProtectedResourceMetadata::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dpop_settings_are_advertised() {
        use crate::dpop::{DpopConfig, DpopPolicy};
        use jsonwebtoken::Algorithm;
        let required = DpopConfig::new("https://api.example.com")
            .policy(DpopPolicy::Required)
            .algorithms([Algorithm::ES256, Algorithm::EdDSA]);
        let json: serde_json::Value = serde_json::from_str(
            &ProtectedResourceMetadata::new("https://api.example.com")
                .unwrap()
                .scopes_supported(["read"])
                .jwks_uri("https://api.example.com/jwks")
                .resource_documentation("https://docs.example.com")
                .dpop(&required)
                .to_json(),
        )
        .unwrap();
        assert_eq!(
            json["dpop_signing_alg_values_supported"],
            serde_json::json!(["ES256", "EdDSA"])
        );
        assert_eq!(json["dpop_bound_access_tokens_required"], true);
        assert_eq!(json["scopes_supported"], serde_json::json!(["read"]));
        assert_eq!(json["jwks_uri"], "https://api.example.com/jwks");
        assert_eq!(json["resource_documentation"], "https://docs.example.com");
        let allowed = DpopConfig::new("https://api.example.com");
        let json = ProtectedResourceMetadata::new("https://api.example.com")
            .unwrap()
            .dpop(&allowed)
            .to_json();
        assert!(!json.contains("dpop_bound_access_tokens_required"), "{json}");
        assert!(
            json.contains(r#""dpop_signing_alg_values_supported":["ES256","ES384","EdDSA""#),
            "{json}"
        );
    }

    #[test]
    fn the_service_answers_get_and_head_at_its_path_only() {
        let mut service = ProtectedResourceMetadata::new("https://api.example.com/v1")
            .unwrap()
            .authorization_server("https://login.example.com")
            .service();
        let mut call = |method: Method, path: &str| {
            let request = Request::builder().method(method).uri(path).body(()).unwrap();
            let Ok(response) = service.call(request).into_inner();
            response
        };
        let got = call(Method::GET, "/.well-known/oauth-protected-resource/v1");
        assert_eq!(got.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(got.body()).unwrap();
        assert_eq!(json["resource"], "https://api.example.com/v1");
        assert_eq!(json["authorization_servers"][0], "https://login.example.com");
        assert_eq!(json["bearer_methods_supported"][0], "header");
        assert!(json.get("dpop_bound_access_tokens_required").is_none());
        let head = call(Method::HEAD, "/.well-known/oauth-protected-resource/v1");
        assert_eq!((head.status(), head.body().as_str()), (StatusCode::OK, ""));
        assert_eq!(
            call(Method::POST, "/.well-known/oauth-protected-resource/v1").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            call(Method::GET, "/.well-known/oauth-protected-resource").status(),
            StatusCode::NOT_FOUND
        );
    }
}
