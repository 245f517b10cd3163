//! Revocations from the identity provider: the standard messages a provider sends when a user
//! logs out there, an administrator disables an account, or a risk engine ends a session, turned
//! into revocations every instance enforces (feature `receivers`).
//!
//! - [`BackChannelLogout`]: OpenID Connect Back-Channel Logout 1.0, a `logout_token` form
//!   `POST`ed by the provider.
//! - [`SetReceiver`]: the Shared Signals Framework's push delivery (RFC 8935) of Security Event
//!   Tokens (RFC 8417), acting on CAEP `session-revoked` and `credential-change` and RISC
//!   `sessions-revoked`, `account-disabled` and `account-purged`.
//!
//! Both are tower services to mount *outside* the bearer layer (their tokens are their
//! credentials), both verify with the same key sources as the layer ([`KeySource`]: a `Jwks`
//! from the provider's discovery, usually), both record each message's `jti` so that a replay
//! is acknowledged without acting twice, and both answer 503 while the store cannot make the
//! revocation durable, so the sender retries: never a success for a revocation that was not
//! recorded. This module owns what they share: reading the body, verifying the token (waiting
//! for the key source when the token names a key it is fetching), the replay guard, and the
//! response shapes.
//!
//! They key their revocations the way the store declares
//! ([`RevocationBackend::issuer_keying`], `PgStore::with_issuer_keying`), as the layers over the
//! same store do: undeclared, their revocations apply to the `sid` or `sub` of every issuer;
//! declared (once every instance enforces keyed rows), they are filed under the provider's
//! issuer, so that one provider's logout never ends another provider's user of the same `sub`.
//! `key_by_issuer(bool)` overrides the declaration for one receiver.
//!
//! [`KeySource`]: crate::verify::KeySource

pub mod backchannel;
pub mod ssf;

pub use backchannel::BackChannelLogout;
pub use ssf::SetReceiver;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;

use crate::backend::{
    BoxError, Revocation, RevocationBackend, RevocationStore, RevokedBy, StoreError, TokenFacts, Verdict,
};
use jsonwebtoken::{Algorithm, Validation};

use crate::config::ConfigError;
use crate::verify::{
    ASYMMETRIC_ALGORITHMS, Claims, InvalidToken, Issuer, KeySource, MissingJti, Unverified, Verifier,
    normalize_typ,
};

/// The largest request body read: these tokens are a few hundred bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Whose tokens a receiver accepts, and how they are checked: the configuration both receivers
/// share.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) issuer: String,
    pub(crate) keys: KeySource,
    pub(crate) audience: String,
    /// `None`: the key source's default, else every asymmetric algorithm.
    pub(crate) algorithms: Option<Vec<Algorithm>>,
    pub(crate) leeway: Duration,
    /// Revocations are keyed by `issuer`; `None`: as the store declares.
    pub(crate) keyed: Option<bool>,
}

impl Sender {
    pub(crate) fn new(issuer: String, keys: KeySource, audience: String) -> Self {
        Self {
            issuer,
            keys,
            audience,
            algorithms: None,
            leeway: Duration::from_secs(60),
            keyed: None,
        }
    }

    /// Whether revocations are filed under the issuer: as set, else as `store` declares the
    /// fleet keys ([`RevocationBackend::issuer_keying`]), like the layers over the same store.
    pub(crate) fn keyed(&self, store: &impl RevocationBackend) -> bool {
        self.keyed.unwrap_or_else(|| store.issuer_keying())
    }

    /// The issuer, and the verifier of its tokens: its keys and algorithms, `iss` and `aud`
    /// required, the spec claims `required` (as `jsonwebtoken` names them) and a `jti`; `typ`
    /// when given. `keyed`: revocations are filed under the issuer.
    pub(crate) fn verifier(
        self,
        required: &[&str],
        typ: Option<&str>,
        keyed: bool,
    ) -> Result<(String, Verifier), ConfigError> {
        // Filed under the issuer: no store can file under an empty one or one with a NUL.
        if keyed && (self.issuer.is_empty() || self.issuer.contains('\0')) {
            return Err(ConfigError::UnkeyableIssuer(self.issuer));
        }
        if keyed {
            tracing::info!(
                issuer = %self.issuer,
                "receiver files its revocations under this issuer: keying layers apply them to tokens whose iss is exactly this"
            );
        }
        let algorithms = self
            .algorithms
            .or_else(|| self.keys.default_algorithms())
            .unwrap_or_else(|| ASYMMETRIC_ALGORITHMS.to_vec());
        let mut validation = Validation::new(*algorithms.first().ok_or(ConfigError::NoAlgorithms)?);
        validation.algorithms = algorithms.clone();
        validation.leeway = self.leeway.as_secs();
        validation.set_required_spec_claims(required);
        let issuer = Issuer::new(self.issuer.clone(), self.keys)
            .audience([self.audience])
            .algorithms(&algorithms);
        let typ = typ.map(str::to_owned);
        let verifier = Verifier::for_issuers(vec![issuer], &validation, typ, MissingJti::Reject, None)?;
        Ok((self.issuer, verifier))
    }
}

/// Which check a refused message failed, for the error codes of each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The request or the token's claims.
    Request,
    /// The signature, algorithm or key.
    Key,
    /// `iss`.
    Issuer,
    /// `aud`.
    Audience,
}

/// Why a message was not acted on.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 400: the check that failed and a fixed description (no request data in it).
    Invalid(Failed, &'static str),
    /// 503: the store or the key source cannot answer now; the sender retries.
    Unavailable,
}

impl Refusal {
    pub(crate) fn request(description: &'static str) -> Self {
        Refusal::Invalid(Failed::Request, description)
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        if let StoreError::InvalidInput(what) = error {
            // The message asks for something no store can record (an empty key): retrying
            // cannot help.
            return Refusal::request(what);
        }
        tracing::warn!(%error, "a revocation from the identity provider could not be recorded; the sender will retry");
        Refusal::Unavailable
    }
}

impl From<InvalidToken> for Refusal {
    fn from(invalid: InvalidToken) -> Self {
        let failed = match invalid {
            InvalidToken::BadSignature | InvalidToken::Algorithm | InvalidToken::UnknownKey => Failed::Key,
            InvalidToken::Issuer => Failed::Issuer,
            InvalidToken::Audience => Failed::Audience,
            _ => Failed::Request,
        };
        Refusal::Invalid(failed, invalid.description())
    }
}

/// The body of a `POST` of media type `media`, at most [`MAX_BODY`] bytes. `Ok(None)` for
/// another method (405).
pub(crate) async fn read_body<B>(request: Request<B>, media: &str) -> Result<Option<Bytes>, Refusal>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    if request.method() != Method::POST {
        return Ok(None);
    }
    let typed = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|found| found.trim().eq_ignore_ascii_case(media));
    if !typed {
        return Err(Refusal::request("unexpected content type"));
    }
    Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|body| Some(body.to_bytes()))
        .map_err(|_| Refusal::request("the body could not be read, or is over 64 KiB"))
}

/// Verifies `token`'s signature and standard claims, waiting once for the key source when the
/// token names a key it is fetching; a header `typ`, when present, must be `typ`.
pub(crate) async fn verify<C: DeserializeOwned>(
    verifier: &Verifier,
    token: &str,
    typ: &str,
) -> Result<Claims<C>, Refusal> {
    let refused = |unverified| match unverified {
        Unverified::Invalid(invalid) => Refusal::from(invalid),
        Unverified::KeysUnavailable => Refusal::Unavailable,
        Unverified::Wait(_) => Refusal::from(InvalidToken::UnknownKey),
    };
    let claims = match verifier.check::<C>(token, true) {
        Ok(verified) => verified.claims,
        Err(Unverified::Wait(wait)) => {
            wait.await;
            verifier.check::<C>(token, false).map_err(refused)?.claims
        }
        Err(unverified) => return Err(refused(unverified)),
    };
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::from(InvalidToken::Malformed))?;
    match header.typ.as_deref() {
        Some(found) if !normalize_typ(found).eq_ignore_ascii_case(typ) => Err(InvalidToken::Type.into()),
        _ => Ok(claims),
    }
}

/// The longest key (`jti`, `sid`, `sub`) a message may name, in bytes.
pub(crate) const MAX_KEY: usize = 1024;

/// Whether `key` can be recorded by every store: not empty, at most [`MAX_KEY`] bytes, no
/// control characters (Postgres refuses NUL, and its indexes refuse keys of a few KiB). A
/// message naming another is refused (400): a store error would be answered 503, and the
/// sender would retry it for ever.
pub(crate) fn usable_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && !key.chars().any(char::is_control)
}

/// A message's replay guard: a token revocation keyed by the kind of message, its issuer and
/// its `jti`, joined by U+001F (a control character, so no `jti` a guard is made from, and no
/// access token's, contains it): a guard never revokes an access token, and an access token's
/// revocation never passes for a replay.
pub(crate) struct Guard {
    key: String,
}

impl Guard {
    pub(crate) fn new(kind: &str, issuer: &str, jti: &str) -> Self {
        Self {
            key: format!("{kind}\u{1f}{issuer}\u{1f}{jti}"),
        }
    }

    /// Whether the message was acted on already.
    pub(crate) async fn seen<S: RevocationBackend>(&self, store: &S) -> Result<bool, StoreError> {
        let facts = TokenFacts {
            jti: Some(&self.key),
            ..TokenFacts::default()
        };
        let verdict = match store.try_check(&facts) {
            Some(verdict) => verdict,
            None => store.check(&facts).await,
        }?;
        Ok(verdict == Verdict::Revoked(RevokedBy::Token))
    }

    /// Records the message until `until`, after its revocations: if this fails the sender
    /// retries and acting again is idempotent (a cutoff only moves forward, a session revoked
    /// twice is revoked once); were it first, a failure after it would lose the revocation to
    /// the replay check.
    pub(crate) async fn record<S: RevocationStore>(
        &self,
        store: &S,
        until: SystemTime,
        reason: &str,
    ) -> Result<(), StoreError> {
        store
            .revoke(&Revocation::token(&self.key, until).reason(reason))
            .await
            .map(drop)
    }
}

/// A response with `Cache-Control: no-store`, and a JSON body when given.
pub(crate) fn respond(status: StatusCode, body: Option<serde_json::Value>) -> Response<Full<Bytes>> {
    let json = body.is_some();
    let body = body.map_or_else(Bytes::new, |body| Bytes::from(body.to_string()));
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if json {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

/// 405 with `Allow: POST`.
pub(crate) fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::METHOD_NOT_ALLOWED, None);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// 503 with `Retry-After`.
pub(crate) fn unavailable() -> Response<Full<Bytes>> {
    let mut response = respond(StatusCode::SERVICE_UNAVAILABLE, None);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The builders' `key_by_issuer` setter: both receivers file their revocations the same way.
macro_rules! key_by_issuer_setter {
    () => {
        /// Files its revocations under this issuer ([`Revocation::issuer`](crate::Revocation::issuer)),
        /// so that they end this provider's sessions and users only, never another provider's user
        /// of the same `sub` or `sid`. By default it does what the store declares
        /// ([`RevocationBackend::issuer_keying`](crate::RevocationBackend::issuer_keying),
        /// `PgStore::with_issuer_keying`), which is also what the layers over that store follow
        /// ([`key_revocations_by_issuer`](crate::JwtRevocationBuilder::key_revocations_by_issuer)),
        /// so a receiver and the layers sharing its store key alike; set here, it overrides that.
        /// Off: the `sid` or `sub` is revoked for every issuer. A layer that does not key by issuer
        /// still enforces keyed revocations (for every issuer).
        ///
        /// The issuer given to `builder` must then be exactly the `iss` of the provider's access
        /// tokens as the layer knows it: a revocation filed under another string (a trailing
        /// slash; Entra ID v1 access tokens against v2 logout tokens) is never applied by a layer
        /// that keys. Where they differ, leave this off.
        pub fn key_by_issuer(mut self, keyed: bool) -> Self {
            self.sender.keyed = Some(keyed);
            self
        }
    };
}

/// The tower service of a receiver: `$name<S>` holding `inner: Arc<Inner<S>>` whose
/// `handle(request)` answers. One definition for both receivers.
macro_rules! receiver_service {
    ($name:ident) => {
        impl<S, B> tower::Service<http::Request<B>> for $name<S>
        where
            S: crate::backend::RevocationStore + crate::backend::RevocationBackend,
            B: http_body::Body + Send + 'static,
            B::Data: Send,
            B::Error: Into<crate::backend::BoxError>,
        {
            type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
            type Error = std::convert::Infallible;
            type Future = std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
            >;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<B>) -> Self::Future {
                let inner = std::sync::Arc::clone(&self.inner);
                Box::pin(async move { Ok(inner.handle(request).await) })
            }
        }

        impl<S> Clone for $name<S> {
            fn clone(&self) -> Self {
                Self {
                    inner: std::sync::Arc::clone(&self.inner),
                }
            }
        }
    };
}
pub(crate) use {key_by_issuer_setter, receiver_service};
