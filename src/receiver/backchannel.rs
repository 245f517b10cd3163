//! [`BackChannelLogout`]: the relying-party side of [OpenID Connect Back-Channel Logout 1.0]: a
//! tower service for the `POST` an identity provider sends when a user logs out there, which
//! turns the logout into a revocation every instance enforces.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::post_service};
//! use tower_jwt_revocation::receiver::BackChannelLogout;
//! use tower_jwt_revocation::{Jwks, MemoryStore};
//!
//! let store = MemoryStore::new();
//! let issuer = "https://login.example.com";
//! let keys = Jwks::discover(issuer).build()?;
//! let logout = BackChannelLogout::builder(store.clone(), issuer, keys, "my-client-id").build()?;
//! // Outside the bearer layer: the logout token is the request's credential.
//! let app: Router = Router::new().route("/backchannel-logout", post_service(logout));
//! # Ok(()) }
//! ```
//!
//! The request is `application/x-www-form-urlencoded` with one `logout_token`, a JWT validated
//! as the specification's §2.6 requires: signed by the issuer's keys (an asymmetric algorithm
//! unless others are configured; never `none`), `iss` the issuer, `aud` naming the client id,
//! `iat` and `exp` present and current (within the leeway), `jti` present, `events` holding
//! the member `http://schemas.openid.net/event/backchannel-logout` with a JSON object value,
//! `sub` or `sid` present, no `nonce`, and `typ` `logout+jwt` when the header carries one
//! (always, with [`require_typ`](BackChannelLogoutBuilder::require_typ)).
//!
//! What it does with a valid one: a `sid` revokes that session (kept for
//! [`max_token_lifetime`](BackChannelLogoutBuilder::max_token_lifetime), the provider's longest
//! access token); a `sub` without `sid` sets the subject's cutoff at the logout token's `iat`
//! (every token issued up to then); then the logout token's own `jti` is recorded (as a token
//! revocation keyed by the kind of message, the issuer and the `jti`, which no access token's
//! `jti` can equal), so a replay is answered 200 without acting again. A `jti`, `sid` or `sub`
//! that no store can record (empty, over 1 KiB, control characters) is refused with 400. The revocation comes first: if the store
//! fails after it, the provider's retry acts again, which is idempotent.
//!
//! Answers: 200 with `Cache-Control: no-store` once the revocation is durable (and for a
//! replay); 400 with `{"error":"invalid_request","error_description":...}` for a request or
//! token that fails validation; 503 with `Retry-After` when the store (or the key source) cannot
//! answer, so the provider retries: never 200 for a revocation that was not made durable; 405
//! for a method other than `POST`.
//!
//! [OpenID Connect Back-Channel Logout 1.0]: https://openid.net/specs/openid-connect-backchannel-1_0.html

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{
    Guard, Refusal, Sender, key_by_issuer_setter, method_not_allowed, read_body, receiver_service, respond,
    unavailable, usable_key,
};
use crate::backend::{
    BoxError, Revocation, RevocationBackend, RevocationStore, from_unix_seconds, saturating_add,
};
use crate::config::ConfigError;
use crate::verify::{KeySource, Verifier};

/// The `events` member that makes a JWT a logout token (§2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// The `typ` of a logout token (§2.4): `logout+jwt`.
pub const LOGOUT_TOKEN_TYP: &str = "logout+jwt";
const REASON: &str = "oidc back-channel logout";

/// The claims of a logout token beyond the standard ones.
#[derive(Debug, Deserialize)]
struct LogoutClaims {
    #[serde(default)]
    events: Option<serde_json::Value>,
    #[serde(default)]
    nonce: Option<serde_json::Value>,
}

/// The configuration of a [`BackChannelLogout`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug)]
pub struct BackChannelLogoutBuilder<S> {
    store: S,
    sender: Sender,
    max_token_lifetime: Duration,
    require_typ: bool,
}

impl<S> BackChannelLogoutBuilder<S> {
    /// The algorithms a logout token may be signed with. Default: every asymmetric algorithm
    /// (for a `Jwks` that allows symmetric keys, HMAC too). Name an HMAC algorithm here to
    /// accept logout tokens signed with a shared secret.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.sender.algorithms = Some(algorithms.to_vec());
        self
    }

    /// The clock skew allowed for `exp`, `iat` and `nbf`. Default 60 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.sender.leeway = leeway;
        self
    }

    /// How long a session revocation is kept: the longest lifetime of an access token the
    /// provider issues for the session. Default 24 h.
    pub fn max_token_lifetime(mut self, max_token_lifetime: Duration) -> Self {
        self.max_token_lifetime = max_token_lifetime;
        self
    }

    /// Requires the header's `typ` to be `logout+jwt` (by default a `typ` is checked only when
    /// present, since providers that predate the final specification send none).
    pub fn require_typ(mut self, require_typ: bool) -> Self {
        self.require_typ = require_typ;
        self
    }

    key_by_issuer_setter!();

    /// Checks the configuration (keys that fit the algorithms, a crypto provider).
    pub fn build(self) -> Result<BackChannelLogout<S>, ConfigError>
    where
        S: RevocationBackend,
    {
        let leeway = self.sender.leeway;
        let typ = self.require_typ.then_some(LOGOUT_TOKEN_TYP);
        let keyed = self.sender.keyed(&self.store);
        let (issuer, verifier) = self.sender.verifier(&["exp", "iss", "aud"], typ, keyed)?;
        Ok(BackChannelLogout {
            inner: Arc::new(Inner {
                store: self.store,
                issuer,
                keyed,
                verifier,
                max_token_lifetime: self.max_token_lifetime,
                leeway,
            }),
        })
    }
}

/// The back-channel logout endpoint (see the module documentation). Cheap to clone.
pub struct BackChannelLogout<S> {
    inner: Arc<Inner<S>>,
}

impl<S> std::fmt::Debug for BackChannelLogout<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackChannelLogout")
            .field("verifier", &self.inner.verifier)
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    store: S,
    /// The issuer, which names the replay guards.
    issuer: String,
    /// Revocations are filed under `issuer`.
    keyed: bool,
    verifier: Verifier,
    max_token_lifetime: Duration,
    leeway: Duration,
}

impl<S> BackChannelLogout<S> {
    /// Logout tokens from `issuer`, verified with `keys` (a `Jwks` from its discovery, usually),
    /// addressed to `client_id`, acted on in `store`.
    pub fn builder(
        store: S,
        issuer: impl Into<String>,
        keys: impl Into<KeySource>,
        client_id: impl Into<String>,
    ) -> BackChannelLogoutBuilder<S> {
        BackChannelLogoutBuilder {
            store,
            sender: Sender::new(issuer.into(), keys.into(), client_id.into()),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            require_typ: false,
        }
    }
}

impl<S> Inner<S>
where
    S: RevocationStore + RevocationBackend,
{
    async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        let body = match read_body(request, "application/x-www-form-urlencoded").await {
            Ok(Some(body)) => body,
            Ok(None) => return method_not_allowed(),
            Err(refusal) => return self.refused(refusal),
        };
        match self.logout(&body).await {
            Ok(()) => respond(StatusCode::OK, None),
            Err(refusal) => self.refused(refusal),
        }
    }

    fn refused(&self, refusal: Refusal) -> Response<Full<Bytes>> {
        match refusal {
            Refusal::Invalid(_, description) => {
                tracing::info!(description, "back-channel logout refused");
                let body = serde_json::json!({"error": "invalid_request", "error_description": description});
                respond(StatusCode::BAD_REQUEST, Some(body))
            }
            Refusal::Unavailable => unavailable(),
        }
    }

    async fn logout(&self, body: &[u8]) -> Result<(), Refusal> {
        let token = form_value(body, "logout_token")?.ok_or(Refusal::request("no logout_token"))?;
        let claims = super::verify::<LogoutClaims>(&self.verifier, &token, LOGOUT_TOKEN_TYP).await?;
        let (jti, iat, exp) = match (&claims.jti, claims.iat, claims.exp) {
            (Some(jti), Some(iat), Some(exp)) => (jti.as_str(), iat, exp),
            _ => return Err(Refusal::request("a logout token needs jti, iat and exp")),
        };
        let is_logout = claims
            .custom
            .events
            .as_ref()
            .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
            .is_some_and(serde_json::Value::is_object);
        if !is_logout {
            return Err(Refusal::request("events has no back-channel logout member"));
        }
        if claims.custom.nonce.is_some() {
            return Err(Refusal::request("a logout token must not carry a nonce"));
        }
        let non_empty = |claim: &Option<String>| claim.clone().filter(|value| !value.is_empty());
        let (sid, sub) = (non_empty(&claims.sid), non_empty(&claims.sub));
        if sid.is_none() && sub.is_none() {
            return Err(Refusal::request("a logout token needs sub or sid"));
        }
        let named = [Some(jti), sid.as_deref(), sub.as_deref()];
        if !named.into_iter().flatten().all(usable_key) {
            return Err(Refusal::request(
                "jti, sid and sub must be 1 to 1024 bytes without control characters",
            ));
        }
        let guard = Guard::new("oidc-backchannel-logout", &self.issuer, jti);
        if guard.seen(&self.store).await? {
            return Ok(());
        }
        let revocation = match (&sid, &sub) {
            (Some(sid), sub) => {
                let until = saturating_add(SystemTime::now(), self.max_token_lifetime);
                Revocation::session(sid, until).owner(sub.as_deref())
            }
            (None, Some(sub)) => Revocation::subject(sub, from_unix_seconds(iat)),
            (None, None) => return Err(Refusal::request("a logout token needs sub or sid")),
        };
        let revocation = revocation.issuer(self.keyed.then_some(self.issuer.as_str()));
        self.store.revoke(&revocation.reason(REASON)).await?;
        // Kept past the logout token's own validity (no longer than the longest a token lives:
        // an `exp` far away must not keep a guard for ever), so a replay within it is
        // recognised; one after it is refused as expired.
        let latest = saturating_add(SystemTime::now(), self.max_token_lifetime);
        let guard_until = saturating_add(from_unix_seconds(exp).min(latest), self.leeway);
        guard
            .record(
                &self.store,
                guard_until,
                "oidc back-channel logout token (replay guard)",
            )
            .await?;
        tracing::info!(session = sid.is_some(), "back-channel logout recorded");
        Ok(())
    }
}

/// The only value of `name` in an `application/x-www-form-urlencoded` body; more than one is
/// refused, as the specification's single parameter allows no choice between them.
fn form_value(body: &[u8], name: &str) -> Result<Option<String>, Refusal> {
    let mut found = None;
    for pair in body.split(|&byte| byte == b'&').filter(|pair| !pair.is_empty()) {
        let (key, value) = match pair.iter().position(|&byte| byte == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        if percent_decode(key).ok_or(Refusal::request("malformed form body"))? != name.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Err(Refusal::request("more than one logout_token"));
        }
        let value = percent_decode(value).ok_or(Refusal::request("malformed form body"))?;
        found = Some(String::from_utf8(value).map_err(|_| Refusal::request("malformed form body"))?);
    }
    Ok(found)
}

/// Decodes `+` and `%XX`; `None` for a `%` not followed by two hex digits.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&byte) = bytes.next() {
        out.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = (*bytes.next()? as char).to_digit(16)?;
                let low = (*bytes.next()? as char).to_digit(16)?;
                (high * 16 + low) as u8
            }
            other => other,
        });
    }
    Some(out)
}

receiver_service!(BackChannelLogout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded_and_unique() {
        let value = |body: &str| form_value(body.as_bytes(), "logout_token").map_err(|_| ());
        assert_eq!(value("logout_token=a.b.c"), Ok(Some("a.b.c".into())));
        assert_eq!(value("x=1&logout_token=a%2Eb+c&y"), Ok(Some("a.b c".into())));
        assert_eq!(value("logout%5Ftoken=z"), Ok(Some("z".into())));
        assert_eq!(value("other=1"), Ok(None));
        assert_eq!(value(""), Ok(None));
        assert!(value("logout_token=a&logout_token=b").is_err());
        assert!(value("logout_token=%zz").is_err());
        assert!(value("logout_token=%4").is_err());
        assert!(value("logout_token=%ff").is_err(), "not UTF-8");
    }
}
