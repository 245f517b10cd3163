//! Fetching key documents over HTTP: the [`JwksClient`] seam, the default client, and the rules
//! every URL and response must meet.
//!
//! This module owns the transport of the key source: one client for the life of the [`Jwks`]
//! (hyper-util's pooled client over rustls with the Mozilla roots, so no OpenSSL), a timeout on
//! connecting, redirects never followed (a 3xx is a failed fetch), a bound on the body read
//! (checked on `Content-Length` and again while reading), HTTPS required except for loopback
//! addresses when explicitly allowed, and the `Cache-Control: max-age` a response carries. The
//! timeout on the whole fetch is the caller's, so it covers a custom client too.
//!
//! [`Jwks`]: super::Jwks

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};

use super::JwksError;

/// A response of a [`JwksClient`]: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct JwksResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers (`Cache-Control` is read from here).
    pub headers: HeaderMap,
    /// The body, at most the `limit` the client was given.
    pub body: Bytes,
}

/// The future a [`JwksClient`] returns.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<JwksResponse, JwksError>> + Send + 'a>>;

/// The HTTP client a [`Jwks`](super::Jwks) fetches discovery documents and key sets with. The
/// default is [`HyperClient`]; implement this to bring your own (a `reqwest::Client` with a
/// corporate CA, a proxy, mTLS). An implementation must not follow redirects and must fail with
/// [`JwksError::TooLarge`] rather than read more than `limit` bytes of body; the key source
/// applies its own timeout around every call.
pub trait JwksClient: Send + Sync + 'static {
    /// Sends `GET url` with `Accept: application/json`.
    fn get<'a>(&'a self, url: &'a Uri, limit: usize) -> FetchFuture<'a>;
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The default [`JwksClient`]: hyper-util's pooled client over rustls (aws-lc-rs crypto, the
/// Mozilla root certificates of `webpki-roots`), HTTP/1.1, a TCP connect timeout, no redirects.
#[derive(Clone)]
pub struct HyperClient {
    client: hyper_util::client::legacy::Client<Connector, Empty<Bytes>>,
}

impl std::fmt::Debug for HyperClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperClient").finish_non_exhaustive()
    }
}

impl HyperClient {
    /// A client that gives up a TCP connect after `connect_timeout` (the key source's fetch
    /// timeout bounds the TLS handshake and the rest).
    pub fn new(connect_timeout: Duration) -> Result<Self, JwksError> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| JwksError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Self { client })
    }
}

impl JwksClient for HyperClient {
    fn get<'a>(&'a self, url: &'a Uri, limit: usize) -> FetchFuture<'a> {
        Box::pin(async move {
            let request = Request::get(url.clone())
                .header(http::header::ACCEPT, "application/json")
                .header(
                    http::header::USER_AGENT,
                    concat!("tower-jwt-revocation/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::<Bytes>::new())
                .map_err(|e| JwksError::Client(e.to_string()))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| JwksError::Transport(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            if declared_length(&parts.headers).is_some_and(|length| length > limit as u64) {
                return Err(JwksError::TooLarge { limit });
            }
            let body = Limited::new(body, limit).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    JwksError::TooLarge { limit }
                } else {
                    JwksError::Transport(e.to_string())
                }
            })?;
            Ok(JwksResponse {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        })
    }
}

/// The error and its sources on one line: hyper's top-level message alone ("client error
/// (Connect)") does not tell an operator what went wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Checks that `url` may be fetched: absolute, `https`, or `http` to a loopback host when
/// `allow_http` is set. A URL with credentials (`user@host`) is refused too: secrets do not
/// belong in a key source's configuration or logs.
pub(crate) fn checked_url(url: &str, allow_http: bool) -> Result<Uri, JwksError> {
    let uri: Uri = url.parse().map_err(|_| JwksError::InvalidUrl(url.to_owned()))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(JwksError::InvalidUrl(url.to_owned()));
    };
    if authority.as_str().contains('@') {
        return Err(JwksError::InvalidUrl(url.to_owned()));
    }
    match scheme {
        "https" => Ok(uri),
        "http" if allow_http && is_loopback(authority.host()) => Ok(uri),
        _ => Err(JwksError::InsecureUrl(url.to_owned())),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The response's `Cache-Control: max-age`, if it gives one; `Some(ZERO)` for `no-cache` or
/// `no-store` (refresh as often as allowed).
pub(crate) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, argument) = directive.split_once('=').unwrap_or((directive, ""));
            let name = name.trim();
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Ok(seconds) = argument.trim().trim_matches('"').parse::<u64>()
            {
                found = Some(Duration::from_secs(seconds));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn urls_must_be_https_or_allowed_loopback_http() {
        assert!(checked_url("https://id.example.com/jwks", false).is_ok());
        for (url, allow_http, ok) in [
            ("http://id.example.com/jwks", true, false),
            ("http://127.0.0.1:8080/jwks", false, false),
            ("http://127.0.0.1:8080/jwks", true, true),
            ("http://[::1]:8080/jwks", true, true),
            ("http://localhost/jwks", true, true),
            ("http://127.0.0.1.example.com/jwks", true, false),
            ("ftp://127.0.0.1/jwks", true, false),
        ] {
            assert_eq!(checked_url(url, allow_http).is_ok(), ok, "{url} {allow_http}");
        }
        assert!(matches!(
            checked_url("/relative", true),
            Err(JwksError::InvalidUrl(_))
        ));
        assert!(matches!(
            checked_url("https://user:pw@id.example.com/", true),
            Err(JwksError::InvalidUrl(_))
        ));
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(
            max_age(&headers(&["public, max-age=3600"])),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            max_age(&headers(&["public", "Max-Age=\"60\""])),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(&headers(&["max-age=60, no-cache"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["max-age=soon"])), None);
    }
}
