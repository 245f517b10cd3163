//! [`SetReceiver`]: the receiving end of the Shared Signals Framework's push delivery (RFC 8935)
//! of Security Event Tokens (RFC 8417): a tower service for the `POST` a transmitter (the
//! identity provider, a risk engine) sends with `Content-Type: application/secevent+jwt`,
//! acting on the CAEP and RISC events that end sessions or invalidate credentials.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::post_service};
//! use tower_jwt_revocation::receiver::SetReceiver;
//! use tower_jwt_revocation::{Jwks, MemoryStore};
//!
//! let issuer = "https://login.example.com";
//! let keys = Jwks::discover(issuer).build()?;
//! let receiver = SetReceiver::builder(MemoryStore::new(), issuer, keys, "https://rp.example.com").build()?;
//! let app: Router = Router::new().route("/ssf/events", post_service(receiver));
//! # Ok(()) }
//! ```
//!
//! A SET is validated: the signature with the transmitter's keys (an asymmetric algorithm
//! unless others are configured), `iss`, `aud`, `iat` and `jti` present, the header's `typ`
//! `secevent+jwt` (required unless [`require_typ`](SetReceiverBuilder::require_typ) is off,
//! then checked when present), no `exp` requirement (SETs have none; one that is present and
//! past is refused), and at most 64 KiB.
//!
//! Each event it carries:
//!
//! | event | action |
//! |---|---|
//! | CAEP `session-revoked` | with a session in the subject (a `complex` subject's `session`, or a `sid` in it): revoke that session; otherwise the subject's cutoff |
//! | CAEP `credential-change`, RISC `sessions-revoked`, `account-disabled`, `account-purged` | the subject's cutoff |
//! | anything else | accepted and ignored (counted in [`SetReceiver::ignored_events`]) |
//!
//! A cutoff is set at the event's `event_timestamp` (no later than the SET's `iat`), else the
//! SET's `iat`. The subject is the SET's `sub_id`, else the event's `subject` (RISC puts it
//! there); its format `iss_sub` gives `sub` (its `iss` must be the transmitter's: another
//! issuer's user is someone else), `opaque` gives `id`, a `complex` subject its `user`; other formats (`email`,
//! `phone_number`, ...) go through the resolver given to
//! [`resolve_subjects`](SetReceiverBuilder::resolve_subjects). An event that cannot be acted
//! on (no resolver, or one that answers `None`; a malformed payload or subject) does not hold
//! the others back: every event that can be mapped is acted on, and then the SET is answered
//! 400 `invalid_request` naming what failed, since acknowledging it would drop that
//! revocation silently. Its `jti` is recorded as acted on in part, so a redelivery (or a
//! replay of a captured SET) that still cannot be mapped in full gets the same 400 without
//! writing anything; one that now can (a resolver was added) is acted on in full. A session revocation is kept for
//! [`max_token_lifetime`](SetReceiverBuilder::max_token_lifetime).
//!
//! A SET's `jti` is recorded after its revocations (as a token revocation keyed by the kind of
//! message, the issuer and the `jti`, which no access token's `jti` can equal), for
//! [`replay_window`](SetReceiverBuilder::replay_window), so a redelivery is acknowledged
//! without acting again; a SET with nothing to act on leaves no record.
//!
//! Answers (RFC 8935 §2.2, §2.3): 202 once every revocation is durable (and for a replay, by
//! `jti`); 400 with `{"err": "invalid_request" | "invalid_key" | "invalid_issuer" |
//! "invalid_audience", "description": ...}`; 503 with `Retry-After` while the store cannot
//! record it; 405 for a method other than `POST`. (`authentication_failed` is for a transmitter
//! that fails the HTTP authentication the application puts in front; this service does none.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    Failed, Guard, Refusal, Sender, key_by_issuer_setter, method_not_allowed, read_body, receiver_service,
    respond, unavailable, usable_key,
};
use crate::backend::{
    BoxError, Revocation, RevocationBackend, RevocationStore, from_unix_seconds, saturating_add,
};
use crate::config::ConfigError;
use crate::verify::{KeySource, Verifier};

/// The `typ` of a Security Event Token (RFC 8417 §2.3).
pub const SET_TYP: &str = "secevent+jwt";
/// CAEP: a session was revoked.
pub const CAEP_SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP: a credential was changed (password, key): every earlier token of the subject ends.
pub const CAEP_CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// RISC: every session of the subject was revoked.
pub const RISC_SESSIONS_REVOKED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked";
/// RISC: the account was disabled.
pub const RISC_ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
/// RISC: the account was purged.
pub const RISC_ACCOUNT_PURGED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-purged";

/// Maps a subject identifier (RFC 9493: the JSON object with its `format`) that the receiver
/// cannot map itself to the `sub` the application's tokens carry. It runs on the request's task:
/// it must not block (keep the mapping it needs in memory).
pub type SubjectResolver = Arc<dyn Fn(&Map<String, Value>) -> Option<String> + Send + Sync>;

#[derive(Debug, Deserialize)]
struct SetClaims {
    #[serde(default)]
    events: Option<Map<String, Value>>,
    #[serde(default)]
    sub_id: Option<Value>,
}

/// The configuration of a [`SetReceiver`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct SetReceiverBuilder<S> {
    store: S,
    sender: Sender,
    max_token_lifetime: Duration,
    replay_window: Duration,
    require_typ: bool,
    resolver: Option<SubjectResolver>,
}

impl<S> std::fmt::Debug for SetReceiverBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetReceiverBuilder")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl<S> SetReceiverBuilder<S> {
    /// The algorithms a SET may be signed with. Default: every asymmetric algorithm.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.sender.algorithms = Some(algorithms.to_vec());
        self
    }

    /// The clock skew allowed for `iat` (and an `exp`, if a SET has one). Default 60 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.sender.leeway = leeway;
        self
    }

    /// How long a session revocation is kept: the longest lifetime of an access token of the
    /// session. Default 24 h.
    pub fn max_token_lifetime(mut self, max_token_lifetime: Duration) -> Self {
        self.max_token_lifetime = max_token_lifetime;
        self
    }

    /// How long a SET's `jti` is remembered, so that a redelivery is acknowledged without acting
    /// again (SETs have no `exp` to bound it). Default 7 days.
    pub fn replay_window(mut self, replay_window: Duration) -> Self {
        self.replay_window = replay_window;
        self
    }

    /// Whether the header must carry `typ: secevent+jwt` (default `true`); when off, a `typ`
    /// present must still be that.
    pub fn require_typ(mut self, require_typ: bool) -> Self {
        self.require_typ = require_typ;
        self
    }

    /// Maps subject identifiers of formats the receiver does not map itself (`email`,
    /// `phone_number`, ...) to a `sub`. Without it such a SET is refused.
    pub fn resolve_subjects(
        mut self,
        resolver: impl Fn(&Map<String, Value>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    key_by_issuer_setter!();

    /// Checks the configuration (keys that fit the algorithms, a crypto provider).
    pub fn build(self) -> Result<SetReceiver<S>, ConfigError>
    where
        S: RevocationBackend,
    {
        let typ = self.require_typ.then_some(SET_TYP);
        // SETs have no `exp` (RFC 8417 §2.2): not required, though one that is there is checked.
        let keyed = self.sender.keyed(&self.store);
        let (issuer, verifier) = self.sender.verifier(&["iss", "aud"], typ, keyed)?;
        Ok(SetReceiver {
            inner: Arc::new(Inner {
                store: self.store,
                issuer,
                keyed,
                verifier,
                max_token_lifetime: self.max_token_lifetime,
                replay_window: self.replay_window,
                resolver: self.resolver,
                ignored: AtomicU64::new(0),
            }),
        })
    }
}

/// The SET push endpoint (see the module documentation). Cheap to clone (clones share one
/// receiver and its counter).
pub struct SetReceiver<S> {
    inner: Arc<Inner<S>>,
}

impl<S> std::fmt::Debug for SetReceiver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetReceiver")
            .field("verifier", &self.inner.verifier)
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    store: S,
    /// The transmitter, which names the replay guards and must name `iss_sub` subjects.
    issuer: String,
    /// Revocations are filed under `issuer`.
    keyed: bool,
    verifier: Verifier,
    max_token_lifetime: Duration,
    replay_window: Duration,
    resolver: Option<SubjectResolver>,
    ignored: AtomicU64,
}

impl<S> SetReceiver<S> {
    /// SETs from `issuer` (the transmitter), verified with `keys`, addressed to `audience`,
    /// acted on in `store`.
    pub fn builder(
        store: S,
        issuer: impl Into<String>,
        keys: impl Into<KeySource>,
        audience: impl Into<String>,
    ) -> SetReceiverBuilder<S> {
        SetReceiverBuilder {
            store,
            sender: Sender::new(issuer.into(), keys.into(), audience.into()),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            replay_window: Duration::from_secs(7 * 24 * 3600),
            require_typ: true,
            resolver: None,
        }
    }

    /// Events of types this receiver does not act on, accepted and ignored so far.
    pub fn ignored_events(&self) -> u64 {
        self.inner.ignored.load(Ordering::Relaxed)
    }
}

/// The event types this receiver acts on.
const KNOWN_EVENTS: [&str; 5] = [
    CAEP_SESSION_REVOKED,
    CAEP_CREDENTIAL_CHANGE,
    RISC_SESSIONS_REVOKED,
    RISC_ACCOUNT_DISABLED,
    RISC_ACCOUNT_PURGED,
];

/// What one event asks for.
enum Action {
    Session { sid: String, owner: Option<String> },
    Subject { sub: String, at: u64 },
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
        let body = match read_body(request, "application/secevent+jwt").await {
            Ok(Some(body)) => body,
            Ok(None) => return method_not_allowed(),
            Err(refusal) => return refused(refusal),
        };
        match self.receive(&body).await {
            Ok(()) => respond(StatusCode::ACCEPTED, None),
            Err(refusal) => refused(refusal),
        }
    }

    async fn receive(&self, body: &[u8]) -> Result<(), Refusal> {
        let token = std::str::from_utf8(body)
            .map(str::trim)
            .map_err(|_| Refusal::request("the body is not a JWT"))?;
        let claims = super::verify::<SetClaims>(&self.verifier, token, SET_TYP).await?;
        let (jti, iat) = match (&claims.jti, claims.iat) {
            (Some(jti), Some(iat)) if usable_key(jti) => (jti.as_str(), iat),
            _ => return Err(Refusal::request("a SET needs jti (1 to 1024 bytes) and iat")),
        };
        let events = claims
            .custom
            .events
            .as_ref()
            .filter(|events| !events.is_empty())
            .ok_or(Refusal::request("a SET needs a non-empty events object"))?;
        // A redelivery is acknowledged before anything else is read: what was acted on stays
        // acted on, even if the subject would no longer resolve.
        let guard = Guard::new("security-event", &self.issuer, jti);
        if guard.seen(&self.store).await? {
            return Ok(());
        }
        // Every event that can be mapped is acted on, whatever the others say: a session the
        // provider ended stays ended even when the same SET's credential change names a user
        // this receiver cannot map.
        let (mut actions, mut ignored, mut unmapped) = (Vec::new(), 0, None);
        for (event, payload) in events {
            if !KNOWN_EVENTS.contains(&event.as_str()) {
                ignored += 1;
                tracing::debug!(event, "security event type not acted on; ignored");
                continue;
            }
            match self.action(event, payload, claims.custom.sub_id.as_ref(), iat) {
                Ok(action) => actions.push(action),
                Err(refusal) => {
                    tracing::warn!(event, "a security event could not be acted on; the others are");
                    unmapped.get_or_insert(refusal);
                }
            }
        }
        // One acted on in part before: while it still cannot be mapped in full, its redelivery
        // (or a captured copy: a SET has no `exp`) is refused with the same reason and writes
        // nothing; once it can (a resolver added), it is acted on in full.
        let partial = Guard::new("security-event-partial", &self.issuer, jti);
        if let Some(refusal) = unmapped.take() {
            if partial.seen(&self.store).await? {
                return Err(refusal);
            }
            unmapped = Some(refusal);
        }
        for action in &actions {
            let revocation = match action {
                Action::Session { sid, owner } => {
                    let until = saturating_add(SystemTime::now(), self.max_token_lifetime);
                    Revocation::session(sid, until).owner(owner.as_deref().filter(|owner| usable_key(owner)))
                }
                Action::Subject { sub, at } => Revocation::subject(sub, from_unix_seconds(*at)),
            };
            let revocation = revocation.issuer(self.keyed.then_some(self.issuer.as_str()));
            self.store
                .revoke(&revocation.reason("shared signals security event"))
                .await?;
        }
        self.ignored.fetch_add(ignored, Ordering::Relaxed);
        // Kept `replay_window` from now at the least (an old `iat` must not give a guard that
        // has expired already).
        let from = from_unix_seconds(iat).max(SystemTime::now());
        let guard_until = saturating_add(from, self.replay_window);
        // A SET that acted on nothing leaves no guard: a redelivery is refused, or ignored, again.
        let (guard, reason) = match &unmapped {
            // What could not be acted on is refused (400) after the rest was, so the
            // transmitter's operator sees it; a redelivery is answered the same, acting no more.
            Some(_) => (partial, "security event token acted on in part (replay guard)"),
            None => (guard, "security event token (replay guard)"),
        };
        if !actions.is_empty() {
            guard.record(&self.store, guard_until, reason).await?;
        }
        if let Some(refusal) = unmapped {
            tracing::info!(
                acted = actions.len(),
                ignored,
                "security event token acted on in part"
            );
            return Err(refusal);
        }
        tracing::info!(acted = actions.len(), ignored, "security event token received");
        Ok(())
    }

    /// What one event of a known type asks for: its subject (the SET's `sub_id`, else the
    /// event's `subject`), its moment (`event_timestamp`, no later than the SET's `iat`), and a
    /// session or user this receiver can map it to; a refusal otherwise.
    fn action(
        &self,
        event: &str,
        payload: &Value,
        sub_id: Option<&Value>,
        iat: u64,
    ) -> Result<Action, Refusal> {
        let payload = payload
            .as_object()
            .ok_or(Refusal::request("an event's payload must be an object"))?;
        let subject = sub_id
            .or_else(|| payload.get("subject"))
            .and_then(Value::as_object)
            .ok_or(Refusal::request("an event needs a subject (sub_id)"))?;
        let at = match payload.get("event_timestamp") {
            None => iat,
            Some(at) => numeric_date(at).ok_or(Refusal::request("event_timestamp must be a NumericDate"))?,
        };
        // An event happened before its SET was issued: a later timestamp (a cutoff in the
        // future would lock the user out until then) is the SET's `iat`.
        let at = at.min(iat);
        let sid = (event == CAEP_SESSION_REVOKED)
            .then(|| session(subject))
            .flatten();
        let action = match sid {
            // The session is enough: its user is recorded only when it can be mapped.
            Some(sid) => Action::Session {
                sid,
                owner: self.subject(subject).ok().flatten(),
            },
            None => match self.subject(subject)? {
                Some(sub) => Action::Subject { sub, at },
                None => return Err(Refusal::request("the subject names no user the receiver can map")),
            },
        };
        let key = match &action {
            Action::Session { sid, .. } => sid,
            Action::Subject { sub, .. } => sub,
        };
        if !usable_key(key) {
            return Err(Refusal::request(
                "a session or subject must be 1 to 1024 bytes without control characters",
            ));
        }
        Ok(action)
    }

    /// The `sub` of a subject identifier: `iss_sub`'s `sub`, `opaque`'s `id`, a `complex`
    /// subject's `user`; other formats through the resolver.
    fn subject(&self, subject: &Map<String, Value>) -> Result<Option<String>, Refusal> {
        let text = |name: &str| {
            subject
                .get(name)
                .and_then(Value::as_str)
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        };
        Ok(match subject.get("format").and_then(Value::as_str) {
            Some("iss_sub") => {
                // Another issuer's user of the same `sub` is someone else.
                if text("iss").as_deref() != Some(self.issuer.as_str()) {
                    return Err(Refusal::request("an iss_sub subject of another issuer"));
                }
                Some(text("sub").ok_or(Refusal::request("an iss_sub subject needs sub"))?)
            }
            Some("opaque") => Some(text("id").ok_or(Refusal::request("an opaque subject needs id"))?),
            Some("complex") | None => match subject.get("user").and_then(Value::as_object) {
                Some(user) => self.subject(user)?,
                None => None,
            },
            Some(_) => match &self.resolver {
                Some(resolve) => Some(
                    resolve(subject)
                        .filter(|sub| !sub.is_empty())
                        .ok_or(Refusal::request("the subject could not be resolved"))?,
                ),
                None => return Err(Refusal::request("subject format not supported")),
            },
        })
    }
}

/// A NumericDate (RFC 7519 §2): whole or fractional seconds, not negative; fractions are
/// dropped (the cutoff rule works in whole seconds).
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            // Saturating float-to-int conversion.
            .map(|seconds| seconds.floor() as u64)
    })
}

/// The session of a subject identifier: a `complex` subject's `session` (`opaque` `id`), or a
/// `sid` member.
fn session(subject: &Map<String, Value>) -> Option<String> {
    let sid = subject.get("sid").and_then(Value::as_str);
    let session = subject
        .get("session")
        .and_then(Value::as_object)
        .and_then(|session| session.get("id").or_else(|| session.get("sid")))
        .and_then(Value::as_str);
    session.or(sid).filter(|sid| !sid.is_empty()).map(str::to_owned)
}

/// RFC 8935 §2.3's error shape.
fn refused(refusal: Refusal) -> Response<Full<Bytes>> {
    match refusal {
        Refusal::Invalid(failed, description) => {
            let err = match failed {
                Failed::Request => "invalid_request",
                Failed::Key => "invalid_key",
                Failed::Issuer => "invalid_issuer",
                Failed::Audience => "invalid_audience",
            };
            tracing::info!(err, description, "security event token refused");
            respond(
                StatusCode::BAD_REQUEST,
                Some(serde_json::json!({"err": err, "description": description})),
            )
        }
        Refusal::Unavailable => unavailable(),
    }
}

receiver_service!(SetReceiver);
