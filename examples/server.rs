//! The demo server: an axum app whose protected routes sit behind `JwtRevocationLayer`.
//!
//! ```text
//! cargo run --example server
//! ```
//!
//! Environment:
//! - `BIND_ADDR` (default `127.0.0.1:3000`)
//! - `JWT_SECRET` (HS256 secret; a development default with a loud warning when unset)
//! - `ADMIN_SUBJECTS` (comma-separated subjects whose `/login` tokens carry `"admin": true`)
//! - `DATABASE_URL` (when set: the durable Postgres ledger, migrated at start; otherwise an
//!   in-memory store that forgets every revocation when the process exits)
//! - `DATABASE_DIRECT_URL` (with `DATABASE_URL` through a transaction pooler such as PgBouncer:
//!   a connection past it for the change feed and migrations; defaults to `DATABASE_URL`)
//! - `REVOCATION_CACHE` (with `DATABASE_URL`): `lookup` (default), `mirror`, or `off` (every check
//!   queries Postgres)
//! - `FAILURE_POLICY`: `closed` (default: 503 while the store cannot answer) or `open`
//! - `OIDC_ISSUER` (an OpenID Provider: its keys are found through
//!   `{issuer}/.well-known/openid-configuration`) or `JWKS_URL` (a plain JWKS document): verify
//!   tokens from that provider instead of HS256 ones; `/login` and `/refresh` then answer 404.
//!   Until the first key set arrives, protected routes answer 503 with `Retry-After`. A provider
//!   token without `jti` is accepted and revoked by the hash of its signed content.
//! - `JWT_AUDIENCE`: the `aud` every token must name (in HS256 mode `/login` tokens carry it);
//!   unset with a provider, tokens for any audience of that issuer are accepted (with a warning).
//!   `JWKS_URL` implies no issuer: any `iss` signed by those keys is accepted
//! - `JWKS_ALLOW_HTTP=1`: allow plain `http://` to a loopback provider (tests only)
//! - `JWKS_MIN_REFRESH_SECS`: the shortest interval between key-set fetches, in the background
//!   and on an unknown `kid` (default 30)
//! - `OIDC_CLIENT_ID` (with `OIDC_ISSUER`): this relying party's client id. The demo then serves
//!   `POST /backchannel-logout` (OpenID Connect Back-Channel Logout: a `logout_token` form whose
//!   `aud` is the client id ends that session, or every earlier token of that subject) and
//!   `POST /ssf/events` (Shared Signals push delivery: CAEP and RISC security event tokens from
//!   the same issuer), both outside the bearer layer
//! - `SSF_AUDIENCE`: the `aud` security event tokens must name (default `OIDC_CLIENT_ID`)
//! - `BASELINE_ROUTE=1`: serve `GET /baseline/me` with a provider too (for load comparisons; it
//!   checks no revocation, so it is off with a provider unless asked for)
//! - `RESOURCE_URL`: this resource's identifier (RFC 9728), an absolute `http(s)` URL whose
//!   origin is what DPoP proofs' `htu` must name (never the `Host` header). Enables DPoP-bound
//!   tokens (RFC 9449: `Authorization: DPoP` with a `DPoP` proof) and serves
//!   `GET /.well-known/oauth-protected-resource` (the well-known segment before the URL's path,
//!   if it has one), named by `resource_metadata` in every 401 challenge
//! - `DPOP` (with `RESOURCE_URL`): `allowed` (default: bound tokens need proofs, bearer tokens
//!   still work) or `required` (every token must be DPoP-bound)
//! - `DPOP_NONCE_SECRET` (with `RESOURCE_URL`, at least 32 bytes): require a server nonce in every
//!   proof (RFC 9449 §9: a proof without a current one gets 401 `use_dpop_nonce` and a
//!   `DPoP-Nonce`); every instance given the same secret accepts the others' nonces
//!
//! Routes: `GET /healthz` (liveness), `GET /readyz` (200 once the keys are loaded and the
//! revocation tier has proved sync since start, else 503 with `Retry-After`), `GET /metrics` (Prometheus text: the layer's, the cache's and the
//! change feed's counters), `POST /login` (access and refresh token), `POST /refresh`, `GET /me`,
//! `POST /logout` (also ends the session), `POST /logout-all`, `GET /revocations`,
//! `GET /sessions`, `DELETE /sessions/{sid}`, `DELETE /admin/tokens/{jti}`, `GET /admin/keys` (the key
//! source's state); and `GET /baseline/me` (HS256 mode, or with `BASELINE_ROUTE=1`), the same handler as
//! `/me` behind a decode-only middleware (the same keys, signature and time claims, no
//! revocation check, no verified-token cache), so
//! `examples/loadgen.rs` can measure what the revocation check costs end to end. With
//! `OIDC_ISSUER` and `OIDC_CLIENT_ID`: `POST /backchannel-logout` and `POST /ssf/events`, outside
//! the bearer layer. Tokens minted by any other HS256 issuer
//! with the same secret work the same as `/login`'s.
//!
//! The admin routes need the scope `revocations:admin` (with a provider: checked by a
//! `RequireScopes` route layer), or in HS256 mode the `"admin": true` claim `/login` gives
//! `ADMIN_SUBJECTS`.

#[path = "support/edge.rs"]
pub mod edge;
#[path = "support/store.rs"]
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower_jwt_revocation::Revocation;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, post_service};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::{Value, json};
pub use store::{Resource, resource_from_vars};
use store::{WithStore, with_store_from_env};
use tower_jwt_revocation::backend::unix_seconds;
use tower_jwt_revocation::decode::{ASYMMETRIC_ALGORITHMS, KeySource, Verifier};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, encode};
use tower_jwt_revocation::receiver::{BackChannelLogout, SetReceiver};
use tower_jwt_revocation::resource_metadata::ProtectedResourceMetadata;
use tower_jwt_revocation::session::{AccessToken, Issued, SessionError, SessionMeta, Sessions};
use tower_jwt_revocation::{
    Claims, DefaultClaims, FailurePolicy, Jwks, JwtRevocationLayer, MissingJti, Rejection, RequireScopes,
    RevocationBackend, RevocationStore, StoreError,
};

/// Lifetime of the access tokens `/login` issues.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest-lived token the server accepts in HS256 mode. An admin revocation of a bare
/// `jti` (whose token expiry the server does not know) is kept this long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// The same with an identity provider, whose access tokens may live a day (Auth0's default).
pub const PROVIDER_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// What the demo needs besides the store.
#[derive(Clone)]
pub struct Config {
    /// The HS256 secret tokens are signed and verified with.
    pub secret: Vec<u8>,
    /// Subjects whose `/login` tokens carry `"admin": true`.
    pub admin_subjects: Vec<String>,
    /// What the layer does while the store cannot answer.
    pub failure_policy: FailurePolicy,
    /// The Prometheus recorder's handle, served at `GET /metrics` (no such route without it).
    pub metrics: Option<PrometheusHandle>,
    /// The identity provider's keys; `None`: HS256 tokens with `secret`.
    pub provider: Option<Jwks>,
    /// The `aud` every token must name.
    pub audience: Option<String>,
    /// Serve `GET /baseline/me` (no revocation check) with a provider too; it is always served
    /// in HS256 mode.
    pub baseline_with_provider: bool,
    /// `POST /backchannel-logout` and `POST /ssf/events`, for `OIDC_ISSUER`.
    pub receivers: Option<Receivers>,
    /// `RESOURCE_URL` and `DPOP`: DPoP and the protected-resource metadata.
    pub resource: Option<Resource>,
}

/// Where the provider's revocation messages come from and whom they address: `OIDC_ISSUER`
/// (whose keys are `Config::provider`), `OIDC_CLIENT_ID` (the logout tokens' `aud`) and
/// `SSF_AUDIENCE` (the security event tokens' `aud`, default the client id).
#[derive(Clone, Debug)]
pub struct Receivers {
    /// The issuer, which is also the SET transmitter.
    pub issuer: String,
    /// This relying party's client id: `POST /backchannel-logout` is served with one.
    pub client_id: Option<String>,
    /// The audience SETs must name: `POST /ssf/events` is served with one.
    pub ssf_audience: Option<String>,
}

/// The scope the admin routes require.
pub const ADMIN_SCOPE: &str = "revocations:admin";

impl Config {
    /// Reads `JWT_SECRET`, `ADMIN_SUBJECTS`, `FAILURE_POLICY`, `JWT_AUDIENCE`, `RESOURCE_URL`,
    /// `DPOP` and the provider settings (`OIDC_ISSUER` or `JWKS_URL`, `JWKS_ALLOW_HTTP`,
    /// `JWKS_MIN_REFRESH_SECS`); with a
    /// provider, starts fetching its keys (so call it inside the Tokio runtime).
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let provider = provider_from_vars(var)?;
        // With a provider the secret signs and verifies nothing: no warning about its default.
        let secret = match provider {
            None => store::secret_from_env(),
            Some(_) => var("JWT_SECRET").unwrap_or_default().into_bytes(),
        };
        let admin_subjects = std::env::var("ADMIN_SUBJECTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let failure_policy = store::failure_policy_from_env()?;
        let baseline_with_provider = match var("BASELINE_ROUTE").as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(format!("BASELINE_ROUTE must be 0 or 1, not {other:?}")),
        };
        let receivers = receivers_from_vars(var);
        let resource = resource_from_vars(var)?;
        if let Some(resource) = &resource {
            tracing::info!(resource = %resource.url, "DPoP on: proofs must name this origin in htu");
            if resource.dpop == tower_jwt_revocation::dpop::DpopPolicy::Required && provider.is_none() {
                tracing::warn!(
                    "DPOP=required in HS256 mode: /login mints unbound tokens, which are refused; \
                     only tokens minted elsewhere with JWT_SECRET and a cnf.jkt pass"
                );
            }
        }
        Ok(Self {
            secret,
            admin_subjects,
            failure_policy,
            metrics: None,
            provider,
            audience: var("JWT_AUDIENCE"),
            baseline_with_provider,
            receivers,
            resource,
        })
    }
}

impl Config {
    /// The longest token lifetime accepted, and how long an admin revocation of a bare `jti`
    /// is kept.
    pub fn max_token_lifetime(&self) -> Duration {
        if self.provider.is_some() {
            PROVIDER_MAX_TOKEN_LIFETIME
        } else {
            MAX_TOKEN_LIFETIME
        }
    }
}

/// The receivers `OIDC_ISSUER`, `OIDC_CLIENT_ID` and `SSF_AUDIENCE` ask for (with a warning for
/// each one the issuer alone cannot serve); `None` without an issuer, or without an audience for
/// either.
pub fn receivers_from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Receivers> {
    let issuer = var("OIDC_ISSUER")?;
    let client_id = var("OIDC_CLIENT_ID");
    let ssf_audience = var("SSF_AUDIENCE").or_else(|| client_id.clone());
    if client_id.is_none() {
        tracing::warn!("OIDC_CLIENT_ID is not set: POST /backchannel-logout is not served");
    }
    if ssf_audience.is_none() {
        tracing::warn!("neither SSF_AUDIENCE nor OIDC_CLIENT_ID is set: POST /ssf/events is not served");
        return None;
    }
    Some(Receivers {
        issuer,
        client_id,
        ssf_audience,
    })
}

/// The key source `OIDC_ISSUER` or `JWKS_URL` names, if either is set.
pub fn provider_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Jwks>, String> {
    let builder = match (var("OIDC_ISSUER"), var("JWKS_URL")) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err("set OIDC_ISSUER or JWKS_URL, not both".into()),
        (Some(issuer), None) => Jwks::discover(issuer),
        (None, Some(url)) => Jwks::from_url(url),
    };
    let builder = match var("JWKS_ALLOW_HTTP").as_deref() {
        None | Some("0") => builder,
        Some("1") => builder.allow_http_on_loopback(),
        Some(other) => return Err(format!("JWKS_ALLOW_HTTP must be 0 or 1, not {other:?}")),
    };
    let builder = match var("JWKS_MIN_REFRESH_SECS") {
        None => builder,
        Some(secs) => {
            let secs: u64 = secs
                .parse()
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .ok_or_else(|| format!("JWKS_MIN_REFRESH_SECS must be 1 to 86400 seconds, not {secs:?}"))?;
            let min = Duration::from_secs(secs);
            // The background interval's ceiling (10 min by default) never undercuts the floor.
            builder
                .min_refresh_interval(min)
                .max_refresh_interval(min.max(Duration::from_secs(600)))
        }
    };
    builder.build().map(Some).map_err(|e| e.to_string())
}

struct AppState<S, X> {
    store: S,
    sessions: X,
    encoding_key: EncodingKey,
    config: Config,
}

/// The whole application over a fresh in-memory store and in-memory sessions, with no purger
/// (for tests; `main` builds its store from the environment).
pub fn in_memory_app(config: Config) -> Router {
    let store = tower_jwt_revocation::MemoryStore::new();
    let sessions = tower_jwt_revocation::session::MemorySessions::new(
        store.clone(),
        tower_jwt_revocation::session::SessionConfig::default(),
    );
    app(store, sessions, config)
}

/// The whole application over any store that can both check and record revocations.
pub fn app<S, X>(store: S, sessions: X, config: Config) -> Router
where
    S: RevocationBackend + RevocationStore + Clone,
    X: Sessions,
{
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    if let Some(audience) = &config.audience {
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    }
    let auth = JwtRevocationLayer::builder(store.clone());
    let auth = match &config.provider {
        None => auth.decoding_key(DecodingKey::from_secret(&config.secret)),
        Some(jwks) => {
            validation.algorithms = ASYMMETRIC_ALGORITHMS.to_vec();
            if config.audience.is_none() {
                tracing::warn!(
                    "JWT_AUDIENCE is not set: tokens of this issuer for any audience are accepted"
                );
                validation.validate_aud = false;
            }
            // Many providers' access tokens have no `jti` (Auth0, Entra ID): such a token is
            // revoked by the hash of its signed content instead of being refused.
            auth.jwks(jwks.clone()).missing_jti(MissingJti::HashSigningInput)
        }
    };
    // The baseline verifies as the layer does (keys, validation, `jti` rule, maximum lifetime):
    // signature and claims, but no revocation check and no verified-token cache.
    let (keys, missing_jti) = match &config.provider {
        None => (
            KeySource::Single(DecodingKey::from_secret(&config.secret)),
            MissingJti::Reject,
        ),
        Some(jwks) => (KeySource::Jwks(jwks.clone()), MissingJti::HashSigningInput),
    };
    let decode_only = Arc::new(
        Verifier::new(
            keys,
            &validation,
            None,
            missing_jti,
            Some(config.max_token_lifetime()),
        )
        .expect("the demo's baseline configuration is valid"),
    );
    // DPoP and the protected-resource metadata, with `RESOURCE_URL`.
    let metadata = config.resource.as_ref().map(|resource| {
        let dpop = resource.dpop_config();
        let mut metadata = ProtectedResourceMetadata::new(&resource.url)
            .expect("RESOURCE_URL was checked when read")
            .resource_name("tower-jwt-revocation demo")
            .scopes_supported([ADMIN_SCOPE])
            .dpop(&dpop);
        if let Some(issuer) = config.provider.as_ref().and_then(|jwks| jwks.issuer()) {
            metadata = metadata.authorization_server(issuer);
        }
        (dpop, metadata)
    });
    let auth = match &metadata {
        Some((dpop, metadata)) => auth.dpop(dpop.clone()).resource_metadata(metadata.url()),
        None => auth,
    };
    let auth = auth
        .validation(validation)
        .max_token_lifetime(config.max_token_lifetime())
        .failure_policy(config.failure_policy)
        .realm("demo")
        .on_reject(json_rejection)
        .build()
        .expect("the demo's layer configuration is valid");
    let state = Arc::new(AppState {
        store,
        sessions,
        encoding_key: EncodingKey::from_secret(&config.secret),
        config,
    });

    let admin = Router::new()
        .route("/admin/tokens/{jti}", delete(admin_revoke::<S, X>))
        .route("/admin/keys", get(admin_keys::<S, X>));
    // Per-route scopes: with a provider, the scope alone (a `RequireScopes` route layer); in
    // HS256 mode, the scope or the `admin` claim `/login` gives.
    let admin = if state.config.provider.is_some() {
        let scope = RequireScopes::new([ADMIN_SCOPE]).and_then(|scope| scope.realm("demo"));
        admin.route_layer(scope.expect("a valid scope and realm"))
    } else {
        admin.route_layer(axum::middleware::from_fn(require_admin))
    };
    let protected = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout::<S, X>))
        .route("/logout-all", post(logout_all::<S, X>))
        .route("/revocations", get(revocations::<S, X>))
        .route("/sessions", get(list_sessions::<S, X>))
        .route("/sessions/{sid}", delete(end_session::<S, X>))
        .merge(admin)
        .route_layer(auth.clone());
    // Readiness: keys loaded and the revocation tier started (`JwtRevocationLayer::is_ready`).
    let readyz = get(move || {
        let ready = auth.is_ready();
        async move {
            if ready {
                (StatusCode::OK, "ready").into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    "not ready",
                )
                    .into_response()
            }
        }
    });
    let baseline =
        Router::new()
            .route("/baseline/me", get(me))
            .route_layer(axum::middleware::from_fn_with_state(
                decode_only,
                decode_only_auth,
            ));
    let metrics = state.config.metrics.clone();
    let mut router = Router::new();
    if let Some(metrics) = metrics {
        router = router.route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    metrics.run_upkeep();
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        );
    }
    router = router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", readyz);
    if let Some((_, metadata)) = &metadata {
        router = router.route_service(&metadata.path(), metadata.service());
    }
    // Outside the bearer layer: their tokens are the provider's credentials.
    if let (Some(jwks), Some(receivers)) = (&state.config.provider, &state.config.receivers) {
        let lifetime = state.config.max_token_lifetime();
        if let Some(client_id) = &receivers.client_id {
            let logout =
                BackChannelLogout::builder(state.store.clone(), &receivers.issuer, jwks.clone(), client_id)
                    .max_token_lifetime(lifetime)
                    .build()
                    .expect("the demo's back-channel logout configuration is valid");
            router = router.route("/backchannel-logout", post_service(logout));
        }
        if let Some(audience) = &receivers.ssf_audience {
            let events = SetReceiver::builder(state.store.clone(), &receivers.issuer, jwks.clone(), audience)
                .max_token_lifetime(lifetime)
                .build()
                .expect("the demo's security event receiver configuration is valid");
            router = router.route("/ssf/events", post_service(events));
        }
    }
    if state.config.provider.is_none() || state.config.baseline_with_provider {
        router = router.merge(baseline);
    }
    if state.config.provider.is_none() {
        // Tokens come from the provider when there is one: these routes then do not exist.
        router = router
            .route("/login", post(login::<S, X>))
            .route("/refresh", post(refresh::<S, X>));
    }
    router.merge(protected).with_state(state).layer(edge::http())
}

/// HS256 mode's admin check: the admin scope, or the `"admin": true` claim.
async fn require_admin(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let admin = request
        .extensions()
        .get::<std::sync::Arc<Claims>>()
        .is_some_and(|claims| {
            claims.has_scope(ADMIN_SCOPE) || claims.custom.get("admin") == Some(&Value::Bool(true))
        });
    if !admin {
        let body = json!({"error": "insufficient_scope", "error_description": "admin token required"});
        let challenge = format!(r#"Bearer realm="demo", error="insufficient_scope", scope="{ADMIN_SCOPE}""#);
        return (
            StatusCode::FORBIDDEN,
            [(header::WWW_AUTHENTICATE, challenge)],
            Json(body),
        )
            .into_response();
    }
    next.run(request).await
}

async fn admin_keys<S, X>(State(state): State<Arc<AppState<S, X>>>) -> Json<Value> {
    Json(match &state.config.provider {
        None => json!({"mode": "hs256"}),
        Some(jwks) => {
            let stats = jwks.stats();
            json!({
                "mode": "jwks",
                "issuer": jwks.issuer(),
                "keys": stats.keys,
                "age_seconds": stats.age.map(|age| age.as_secs()),
                "refreshes": stats.refreshes,
                "failures": stats.failures,
                "unknown_kid_fetches": stats.unknown_kid_fetches,
            })
        }
    })
}

/// The comparison baseline: verify the token, no revocation check.
async fn decode_only_auth(
    State(decode_only): State<Arc<Verifier>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let claims = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| decode_only.verify::<DefaultClaims>(token).ok())
        // The baseline checks no revocation, but it does not take a sender-constrained token
        // without its proof either: a bound token (`cnf`) is refused here.
        .filter(|claims| claims.cnf.is_none());
    match claims {
        Some(claims) => {
            // Where the layer puts them, so the same handlers serve both routes.
            request.extensions_mut().insert(Arc::new(claims));
            next.run(request).await
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

fn json_rejection(rejection: &Rejection, mut response: Response<Body>) -> Response<Body> {
    if response.status() != StatusCode::OK {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        *response.body_mut() = Body::from(rejection.json_body());
    }
    response
}

fn store_unavailable(error: StoreError) -> Response {
    tracing::warn!(%error, "revocation store call failed");
    let body =
        json!({"error": "temporarily_unavailable", "error_description": "revocation store unavailable"});
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        Json(body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Login {
    sub: String,
}

async fn login<S, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    headers: axum::http::HeaderMap,
    Json(login): Json<Login>,
) -> Response {
    if login.sub.is_empty() || login.sub.len() > 256 {
        let body = json!({"error": "invalid_request", "error_description": "sub must be 1 to 256 bytes"});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match state
        .sessions
        .start(&login.sub, SessionMeta { user_agent, ip: None })
        .await
    {
        Ok(issued) => token_response(&state, &issued),
        Err(error) => session_error(error),
    }
}

#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

async fn refresh<S, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    Json(refresh): Json<Refresh>,
) -> Response {
    match state.sessions.rotate(&refresh.refresh_token).await {
        Ok(issued) => token_response(&state, &issued),
        Err(error) => session_error(error),
    }
}

/// A new access token for the session, with the refresh token to present next.
fn token_response<S, X>(state: &AppState<S, X>, issued: &Issued) -> Response {
    let subject = &issued.session.subject;
    let mut access = match AccessToken::new(subject, &issued.session.id, TOKEN_TTL) {
        Ok(access) => access,
        Err(error) => return session_error(error),
    };
    if state.config.admin_subjects.contains(subject) {
        access.claims.insert("admin".into(), Value::Bool(true));
    }
    if let Some(audience) = &state.config.audience {
        access
            .claims
            .insert("aud".into(), Value::String(audience.clone()));
    }
    let token = match encode(
        &Header::new(Algorithm::HS256),
        &access.claims,
        &state.encoding_key,
    ) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "signing failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_TTL.as_secs(),
        "jti": access.jti,
        "refresh_token": issued.refresh_token,
        "session_id": issued.session.id,
    });
    (
        [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")],
        Json(body),
    )
        .into_response()
}

/// Unknown, expired, reused and superseded refresh tokens all get the same 401: the answer must
/// not tell a thief which one it holds.
fn session_error(error: SessionError) -> Response {
    match error {
        SessionError::Store(error) => store_unavailable(error),
        SessionError::Indeterminate => store_unavailable(StoreError::Unavailable(error.into())),
        SessionError::NotFound => {
            let body = json!({"error": "not_found", "error_description": "no such session"});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        SessionError::Reused { session_id } => {
            tracing::warn!(%session_id, "refresh token reuse: session revoked");
            invalid_grant()
        }
        _ => invalid_grant(),
    }
}

fn invalid_grant() -> Response {
    let body = json!({"error": "invalid_grant", "error_description": "refresh token not valid"});
    (
        StatusCode::UNAUTHORIZED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

async fn list_sessions<S, X: Sessions>(State(state): State<Arc<AppState<S, X>>>, claims: Claims) -> Response {
    let Some(sub) = claims.sub.as_deref() else {
        return Json(Vec::<Value>::new()).into_response();
    };
    match state.sessions.list(sub).await {
        Ok(sessions) => {
            let list: Vec<Value> = sessions
                .iter()
                .map(|s| {
                    json!({
                        "session_id": s.id,
                        "current": claims.sid.as_deref() == Some(s.id.as_str()),
                        "created_at": unix_seconds(s.created_at),
                        "last_used_at": unix_seconds(s.last_used_at),
                        "expires_at": unix_seconds(s.expires_at),
                        "user_agent": s.meta.user_agent,
                        "ip": s.meta.ip,
                    })
                })
                .collect();
            Json(list).into_response()
        }
        Err(error) => session_error(error),
    }
}

async fn end_session<S, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    claims: Claims,
    Path(sid): Path<String>,
) -> Response {
    let sub = claims.sub.as_deref().unwrap_or_default();
    match state.sessions.revoke(&sid, sub).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => session_error(error),
    }
}

async fn me(claims: Claims) -> Json<Value> {
    Json(json!({"sub": claims.sub, "jti": claims.jti, "iat": claims.iat, "exp": claims.exp}))
}

async fn logout<S: RevocationStore, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    claims: Claims,
) -> Response {
    if let Some(revocation) = claims.token_revocation()
        && let Err(error) = state.store.revoke(&revocation.reason("logout")).await
    {
        return store_unavailable(error);
    }
    // Logging out ends the session too: its refresh token and its other access tokens die.
    if let (Some(sid), Some(sub)) = (claims.sid.as_deref(), claims.sub.as_deref()) {
        match state.sessions.revoke(sid, sub).await {
            Ok(()) | Err(SessionError::NotFound) => {}
            Err(error) => return session_error(error),
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn logout_all<S: RevocationStore, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    claims: Claims,
) -> Response {
    let Some(sub) = claims.sub.as_deref() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    // Every session ends and the subject cutoff moves to now, under the sessions' lock.
    match state.sessions.revoke_all(sub).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => session_error(error),
    }
}

fn seconds(time: Option<SystemTime>) -> Option<u64> {
    time.map(unix_seconds)
}

async fn revocations<S: RevocationStore, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    claims: Claims,
) -> Response {
    let Some(sub) = claims.sub.as_deref() else {
        return Json(Vec::<Value>::new()).into_response();
    };
    match state.store.list_by_subject(sub, 100).await {
        Ok(records) => {
            let list: Vec<Value> = records
                .into_iter()
                .map(|r| {
                    json!({
                        "kind": r.kind,
                        "key": r.key,
                        "expires_at": seconds(r.expires_at),
                        "not_before": seconds(r.not_before),
                        "revoked_at": unix_seconds(r.revoked_at),
                        "reason": r.reason,
                        "revoked_by": r.revoked_by,
                    })
                })
                .collect();
            Json(list).into_response()
        }
        Err(error) => store_unavailable(error),
    }
}

async fn admin_revoke<S: RevocationStore, X: Sessions>(
    State(state): State<Arc<AppState<S, X>>>,
    claims: Claims,
    Path(jti): Path<String>,
) -> Response {
    // The route layer checked the admin scope (or claim). The target token's expiry is unknown
    // here; no accepted token outlives the maximum lifetime.
    let expires_at = SystemTime::now() + state.config.max_token_lifetime();
    match state
        .store
        .revoke(
            &Revocation::token(&jti, expires_at)
                .reason("admin")
                .revoked_by(claims.sub.as_deref()),
        )
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => store_unavailable(error),
    }
}

struct Serve {
    config: Config,
    listener: tokio::net::TcpListener,
}

impl WithStore for Serve {
    /// Subject cutoffs are purged in HS256 mode only: `/login` tokens always carry `iat`, and
    /// the layer bounds their `exp - iat`; a provider's tokens might come without `iat`, which
    /// every cutoff covers for as long as it is kept.
    fn max_token_lifetime(&self) -> Option<Duration> {
        self.config
            .provider
            .is_none()
            .then(|| self.config.max_token_lifetime())
    }

    async fn run<S, X>(
        self,
        store: S,
        sessions: X,
        description: &'static str,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        S: RevocationBackend + RevocationStore + Clone,
        X: Sessions,
    {
        tracing::info!(addr = %self.listener.local_addr()?, store = description, "demo server listening");
        axum::serve(self.listener, app(store, sessions, self.config))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    store::init_tracing();
    // Installed before any layer, cache or key source is built: they register their metrics
    // with it then.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let mut config = Config::from_env()?;
    config.metrics = Some(metrics);
    let listener = store::listener_from_env("127.0.0.1:3000").await?;
    with_store_from_env(Serve { config, listener }).await
}
