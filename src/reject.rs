//! Rejection responses: what a refused request gets back.
//!
//! This module owns the one mapping from "why the request was refused" ([`Rejection`]) to a
//! response, shared by every decision point of the layer. For plain HTTP that is the RFC 6750
//! status and `WWW-Authenticate` challenge (or `503` with `Retry-After` when the store is down
//! and the policy is closed). For a gRPC request (`content-type: application/grpc*`) it is a
//! trailers-only gRPC response (HTTP 200, `grpc-status` 16 UNAUTHENTICATED or 14 UNAVAILABLE,
//! `grpc-message`), because gRPC clients read statuses from there, not from the HTTP status.
//!
//! The default body is empty, so the layer works with any `ResBody: Default`. To add a body (or
//! change anything else), give the layer a [`Reject`] hook; [`Rejection::json_body`] has the
//! usual JSON rendering ready.

use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::backend::RevokedBy;
use crate::bearer::{MalformedBearer, names_dpop_scheme};
use crate::dpop::DpopError;
use crate::verify::InvalidToken;

/// Marks a request the layer let through without a token (an `optional()` layer and no token,
/// or a path `skip_paths` exempts), so a handler asking for claims answers 401, not 500. Zero
/// sized: inserting it allocates nothing beyond the extensions map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unauthenticated;

/// Why the layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No bearer token (no `Authorization` header, or another scheme): 401 with a bare
    /// challenge.
    MissingToken,
    /// The credentials are malformed: 400 `invalid_request`.
    Malformed(MalformedBearer),
    /// The token does not verify: 401 `invalid_token`.
    Invalid(InvalidToken),
    /// The token is revoked: 401 `invalid_token`, "token revoked".
    Revoked(RevokedBy),
    /// The revocation store could not answer and the policy is
    /// [`FailurePolicy::Closed`](crate::FailurePolicy::Closed): 503 with `Retry-After`.
    Unavailable,
    /// The token is valid and not revoked but lacks a required scope, or the claims predicate
    /// refused it: 403 `insufficient_scope` (RFC 6750 §3.1) with the required `scope`; gRPC
    /// PERMISSION_DENIED.
    InsufficientScope,
    /// The identity provider's keys have not been fetched yet (or not since start-up): 503 with
    /// `Retry-After`; gRPC UNAVAILABLE.
    KeysUnavailable,
    /// The token's DPoP binding or its proof was refused (RFC 9449): 401 with the `DPoP`
    /// challenge naming `invalid_dpop_proof`, `use_dpop_nonce` or `invalid_token`; 400 for two
    /// `DPoP` headers; 503 when the replay window is full. See [`DpopError`].
    Dpop(DpopError),
}

impl Rejection {
    /// The HTTP status of the plain-HTTP response.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Malformed(_) | Rejection::Dpop(DpopError::MultipleProofs) => StatusCode::BAD_REQUEST,
            Rejection::Unavailable
            | Rejection::KeysUnavailable
            | Rejection::Dpop(DpopError::ReplayWindowFull) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::InsufficientScope => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 error code, if the case has one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Rejection::MissingToken | Rejection::Unavailable | Rejection::KeysUnavailable => None,
            Rejection::Malformed(_) => Some("invalid_request"),
            Rejection::InsufficientScope => Some("insufficient_scope"),
            Rejection::Invalid(_) | Rejection::Revoked(_) => Some("invalid_token"),
            Rejection::Dpop(dpop) => dpop.error_code(),
        }
    }

    /// A short, fixed description. It never contains the token or an internal error's text.
    pub fn description(&self) -> &'static str {
        match self {
            Rejection::MissingToken => "bearer token required",
            Rejection::Malformed(MalformedBearer::MultipleHeaders) => "more than one Authorization header",
            Rejection::Malformed(MalformedBearer::EmptyToken) => "empty bearer token",
            Rejection::Malformed(MalformedBearer::InvalidCharacters) => "malformed bearer token",
            Rejection::Malformed(MalformedBearer::TooLong) => "bearer token too long",
            Rejection::Malformed(MalformedBearer::MultipleCookies) => "more than one access-token cookie",
            Rejection::Invalid(invalid) => invalid.description(),
            Rejection::Revoked(_) => "token revoked",
            Rejection::Unavailable => "authorization temporarily unavailable",
            Rejection::InsufficientScope => "insufficient scope",
            Rejection::KeysUnavailable => "signing keys not available yet",
            Rejection::Dpop(dpop) => dpop.description(),
        }
    }

    /// The gRPC status code: 16 UNAUTHENTICATED, 14 UNAVAILABLE for a store outage or keys
    /// not fetched yet, 7 PERMISSION_DENIED for a missing scope.
    pub fn grpc_status(&self) -> u16 {
        match self {
            Rejection::Unavailable
            | Rejection::KeysUnavailable
            | Rejection::Dpop(DpopError::ReplayWindowFull) => 14,
            Rejection::InsufficientScope => 7,
            _ => 16,
        }
    }

    /// Whether this is a 503 a client should retry (after `Retry-After`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Rejection::Unavailable
                | Rejection::KeysUnavailable
                | Rejection::Dpop(DpopError::ReplayWindowFull)
        )
    }

    /// A small JSON rendering, `{"error": ..., "error_description": ...}`, for hooks that want
    /// a body. The error is the RFC 6750 code, `unauthorized` for a missing token, or
    /// `temporarily_unavailable` for an outage.
    pub fn json_body(&self) -> String {
        let error = self.error_code().unwrap_or(if self.is_retryable() {
            "temporarily_unavailable"
        } else {
            "unauthorized"
        });
        serde_json::json!({ "error": error, "error_description": self.description() }).to_string()
    }

    /// The `WWW-Authenticate` challenge of a layer without DPoP or resource metadata, or `None`
    /// for an outage (RFC 6750 has no code for it). [`to_response`](Self::to_response) renders
    /// the challenge of any configuration (with the `DPoP` one and `resource_metadata`).
    pub fn www_authenticate(&self, realm: Option<&str>) -> Option<HeaderValue> {
        let settings = RejectSettings {
            realm: realm.map(str::to_owned),
            ..RejectSettings::default()
        };
        self.challenge(&settings, false)
    }

    /// The challenges of the response: `Bearer` (RFC 6750), and with DPoP the `DPoP` one (RFC
    /// 9449 §7.1) beside or instead of it, in one field value, the challenge naming the error
    /// first. The error goes to the `DPoP` challenge for a DPoP case, a request that used the
    /// `DPoP` scheme, or a layer that takes no bearer tokens; to the `Bearer` one otherwise. A 403
    /// names the `scope` needed (RFC 6750 §3), a 401 the `resource_metadata` (RFC 9728 §5.1).
    fn challenge(&self, settings: &RejectSettings, dpop_scheme: bool) -> Option<HeaderValue> {
        if self.is_retryable() {
            return None;
        }
        let mut error = Vec::with_capacity(3);
        if let Some(code) = self.error_code() {
            error.push(format!("error=\"{code}\""));
            error.push(format!("error_description=\"{}\"", self.description()));
        }
        if *self == Rejection::InsufficientScope
            && let Some(scope) = &settings.scope
        {
            error.push(format!("scope=\"{scope}\""));
        }
        let metadata = settings
            .resource_metadata
            .as_ref()
            .filter(|_| self.status() == StatusCode::UNAUTHORIZED)
            .map(|url| format!("resource_metadata=\"{url}\""));
        let realm = settings.realm.as_ref().map(|realm| format!("realm=\"{realm}\""));
        let render = |scheme: &str, error: &[String], algs: Option<String>| {
            let params: Vec<&str> = realm
                .iter()
                .chain(error)
                .chain(algs.iter())
                .chain(metadata.iter())
                .map(String::as_str)
                .collect();
            if params.is_empty() {
                scheme.to_owned()
            } else {
                format!("{scheme} {}", params.join(", "))
            }
        };
        let value = match &settings.dpop {
            None => render("Bearer", &error, None),
            Some(dpop) => {
                let on_dpop = matches!(self, Rejection::Dpop(_)) || dpop_scheme || !dpop.bearer_allowed;
                let algs = Some(format!("algs=\"{}\"", dpop.algs));
                let (dpop_error, bearer_error) = if on_dpop {
                    (&error[..], &[][..])
                } else {
                    (&[][..], &error[..])
                };
                let dpop_challenge = render("DPoP", dpop_error, algs);
                match (dpop.bearer_allowed, on_dpop && !error.is_empty()) {
                    (false, _) => dpop_challenge,
                    (true, true) => format!("{dpop_challenge}, {}", render("Bearer", bearer_error, None)),
                    (true, false) => format!("{}, {dpop_challenge}", render("Bearer", bearer_error, None)),
                }
            }
        };
        // Descriptions are fixed ASCII, and realms, scopes, algorithms and the metadata URL are
        // checked when the layer is built, so the value is always a valid header; `ok()` is the
        // fallback never taken.
        HeaderValue::from_str(&value).ok()
    }

    /// The default response for this rejection, as HTTP or as gRPC depending on the request's
    /// `content-type`.
    pub fn to_response<B: Default>(
        &self,
        request_headers: &HeaderMap,
        settings: &RejectSettings,
    ) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        if is_grpc(request_headers) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(self.grpc_status()));
            if let Ok(message) = HeaderValue::from_str(&percent_encode(self.description())) {
                headers.insert("grpc-message", message);
            }
            return response;
        }
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge(settings, names_dpop_scheme(request_headers)) {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if self.is_retryable() {
            headers.insert(
                RETRY_AFTER,
                HeaderValue::from(settings.retry_after.as_secs().max(1)),
            );
        }
        response
    }
}

/// The layer-wide settings rejections are rendered with.
#[derive(Debug, Clone)]
pub struct RejectSettings {
    /// The `realm` of the challenge, if configured.
    pub realm: Option<String>,
    /// The `Retry-After` of a 503.
    pub retry_after: Duration,
    /// The `scope` a 403 names: the required scopes, space-separated.
    pub scope: Option<String>,
    /// With DPoP: the `DPoP` challenge's `algs`, and whether the `Bearer` challenge is offered
    /// beside it.
    pub dpop: Option<DpopChallenge>,
    /// The URL of the protected-resource metadata (RFC 9728), named in every 401 challenge.
    pub resource_metadata: Option<String>,
}

/// What the `DPoP` challenge says (RFC 9449 §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopChallenge {
    /// The proof algorithms accepted, space-separated.
    pub algs: String,
    /// Whether bearer tokens are accepted too ([`DpopPolicy::Allowed`](crate::dpop::DpopPolicy)):
    /// then the `Bearer` challenge is offered beside the `DPoP` one.
    pub bearer_allowed: bool,
}

impl Default for RejectSettings {
    fn default() -> Self {
        Self {
            realm: None,
            retry_after: Duration::from_secs(5),
            scope: None,
            dpop: None,
            resource_metadata: None,
        }
    }
}

/// Customises rejection responses. The layer builds the default response first and hands it to
/// the hook with the reason, so a hook only changes what it cares about.
///
/// Any `Fn(&Rejection, Response<B>) -> Response<B>` is a hook:
///
/// ```
/// use http::{Response, header::CONTENT_TYPE};
/// use tower_jwt_revocation::Rejection;
///
/// let json = |rejection: &Rejection, mut response: Response<String>| {
///     *response.body_mut() = rejection.json_body();
///     response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().unwrap());
///     response
/// };
/// # let _ = json;
/// ```
pub trait Reject<B>: Send + Sync + 'static {
    /// Returns the response to send for `rejection`; `response` is the default one.
    fn reject(&self, rejection: &Rejection, response: Response<B>) -> Response<B>;
}

/// The hook that keeps the default response as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultReject;

impl<B> Reject<B> for DefaultReject {
    fn reject(&self, _: &Rejection, response: Response<B>) -> Response<B> {
        response
    }
}

impl<B, F> Reject<B> for F
where
    F: Fn(&Rejection, Response<B>) -> Response<B> + Send + Sync + 'static,
{
    fn reject(&self, rejection: &Rejection, response: Response<B>) -> Response<B> {
        self(rejection, response)
    }
}

/// Refuses a realm a quoted-string cannot carry (`"`, `\\`, controls, non-ASCII).
pub(crate) fn check_realm(realm: &str) -> Result<(), crate::ConfigError> {
    if realm
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        Ok(())
    } else {
        Err(crate::ConfigError::InvalidRealm)
    }
}

/// Whether the request is gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.as_bytes().get(..16))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"application/grpc"))
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(rejection: Rejection, realm: Option<&str>) -> Option<String> {
        rejection
            .www_authenticate(realm)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(
            challenge(Rejection::MissingToken, None).as_deref(),
            Some("Bearer")
        );
        assert_eq!(
            challenge(Rejection::MissingToken, Some("api")).as_deref(),
            Some(r#"Bearer realm="api""#)
        );
        assert_eq!(
            challenge(Rejection::Revoked(RevokedBy::Token), Some("api")).as_deref(),
            Some(r#"Bearer realm="api", error="invalid_token", error_description="token revoked""#)
        );
        assert_eq!(
            challenge(Rejection::Malformed(MalformedBearer::MultipleHeaders), None).as_deref(),
            Some(r#"Bearer error="invalid_request", error_description="more than one Authorization header""#)
        );
        assert_eq!(challenge(Rejection::Unavailable, None), None);
    }

    #[test]
    fn grpc_requests_get_trailers_only_statuses() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        let settings = RejectSettings::default();
        let revoked: Response<()> = Rejection::Revoked(RevokedBy::Session).to_response(&headers, &settings);
        assert_eq!(revoked.status(), StatusCode::OK);
        assert_eq!(revoked.headers()["grpc-status"], "16");
        assert_eq!(revoked.headers()["grpc-message"], "token revoked");
        let down: Response<()> = Rejection::Unavailable.to_response(&headers, &settings);
        assert_eq!(down.headers()["grpc-status"], "14");
    }

    #[test]
    fn insufficient_scope_is_a_403_naming_the_scope() {
        let settings = RejectSettings {
            realm: Some("api".into()),
            scope: Some("revocations:admin read".into()),
            ..RejectSettings::default()
        };
        let res: Response<()> = Rejection::InsufficientScope.to_response(&HeaderMap::new(), &settings);
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            res.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="revocations:admin read""#
        );
        let mut grpc = HeaderMap::new();
        grpc.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        let denied: Response<()> = Rejection::InsufficientScope.to_response(&grpc, &settings);
        assert_eq!(denied.headers()["grpc-status"], "7");
        let keys: Response<()> = Rejection::KeysUnavailable.to_response(&HeaderMap::new(), &settings);
        assert_eq!(keys.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(keys.headers()[RETRY_AFTER], "5");
        assert!(keys.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn dpop_challenges_follow_rfc_9449_and_name_the_metadata() {
        use http::header::AUTHORIZATION;
        let allowed = RejectSettings {
            realm: Some("api".into()),
            dpop: Some(DpopChallenge {
                algs: "ES256 EdDSA".into(),
                bearer_allowed: true,
            }),
            resource_metadata: Some("https://api.example/.well-known/oauth-protected-resource".into()),
            ..RejectSettings::default()
        };
        let answer = |rejection: Rejection, settings: &RejectSettings, scheme: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(scheme));
            let res: Response<()> = rejection.to_response(&headers, settings);
            let challenge = res
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned());
            (res.status(), challenge)
        };
        let metadata = r#"resource_metadata="https://api.example/.well-known/oauth-protected-resource""#;
        assert_eq!(
            answer(Rejection::Dpop(DpopError::Replayed), &allowed, "DPoP x"),
            (
                StatusCode::UNAUTHORIZED,
                Some(format!(
                    r#"DPoP realm="api", error="invalid_dpop_proof", error_description="DPoP proof replayed", algs="ES256 EdDSA", {metadata}, Bearer realm="api", {metadata}"#
                ))
            )
        );
        // A bearer token's own error stays on the Bearer challenge.
        assert_eq!(
            answer(Rejection::Revoked(RevokedBy::Token), &allowed, "Bearer x").1,
            Some(format!(
                r#"Bearer realm="api", error="invalid_token", error_description="token revoked", {metadata}, DPoP realm="api", algs="ES256 EdDSA", {metadata}"#
            ))
        );
        // The same error under the DPoP scheme is the DPoP challenge's.
        assert!(
            answer(Rejection::Revoked(RevokedBy::Token), &allowed, "DPoP x")
                .1
                .unwrap()
                .starts_with(r#"DPoP realm="api", error="invalid_token""#)
        );
        let required = RejectSettings {
            dpop: Some(DpopChallenge {
                algs: "ES256".into(),
                bearer_allowed: false,
            }),
            ..RejectSettings::default()
        };
        assert_eq!(
            answer(Rejection::MissingToken, &required, "Basic x").1.as_deref(),
            Some(r#"DPoP algs="ES256""#)
        );
        assert_eq!(
            answer(Rejection::Dpop(DpopError::UnboundToken), &required, "Bearer x")
                .1
                .as_deref(),
            Some(r#"DPoP error="invalid_token", error_description="token is not DPoP-bound", algs="ES256""#)
        );
        let (status, challenge) = answer(Rejection::Dpop(DpopError::MultipleProofs), &required, "DPoP x");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(challenge.unwrap().contains(r#"error="invalid_request""#));
        let (status, challenge) = answer(Rejection::Dpop(DpopError::ReplayWindowFull), &required, "DPoP x");
        assert_eq!((status, challenge), (StatusCode::SERVICE_UNAVAILABLE, None));
        // No metadata on a 403; the scope instead.
        let scoped = RejectSettings {
            scope: Some("read".into()),
            ..allowed.clone()
        };
        let forbidden = answer(Rejection::InsufficientScope, &scoped, "Bearer x");
        assert_eq!(forbidden.0, StatusCode::FORBIDDEN);
        assert!(!forbidden.1.unwrap().contains("resource_metadata"));
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%c\u{e9}"), "a b%25c%C3%A9");
    }

    #[test]
    fn outage_sets_retry_after() {
        let settings = RejectSettings {
            retry_after: Duration::from_secs(7),
            ..RejectSettings::default()
        };
        let res: Response<()> = Rejection::Unavailable.to_response(&HeaderMap::new(), &settings);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[RETRY_AFTER], "7");
        assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
    }
}
