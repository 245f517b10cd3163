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
//! - `REVOCATION_CACHE` (with `DATABASE_URL`): `lookup` (default), `mirror`, or `off` (every check
//!   queries Postgres)
//! - `FAILURE_POLICY`: `closed` (default: 503 while the store cannot answer) or `open`
//!
//! Routes: `GET /healthz`, `POST /login`, `GET /me`, `POST /logout`, `POST /logout-all`,
//! `GET /revocations`, `DELETE /admin/tokens/{jti}`; and `GET /baseline/me`, the same handler as
//! `/me` behind a decode-only middleware (signature and time claims, no revocation check), so
//! `examples/loadgen.rs` can measure what the revocation check costs end to end. Tokens minted by any other HS256 issuer
//! with the same secret work the same as `/login`'s.

#[path = "support/store.rs"]
mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{WithStore, with_store_from_env};
use tower_jwt_revocation::backend::{from_unix_seconds, unix_seconds};
use tower_jwt_revocation::jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode,
};
use tower_jwt_revocation::{
    Claims, FailurePolicy, JwtRevocationLayer, Rejection, RevocationBackend, RevocationStore, StoreError,
};

/// Lifetime of the access tokens `/login` issues.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest-lived token the server accepts from any issuer. An admin revocation of a bare
/// `jti` (whose token expiry the server does not know) is kept this long.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
const DEV_SECRET: &str = "dev-only-secret-change-me-dev-only-secret";

/// What the demo needs besides the store.
#[derive(Clone)]
pub struct Config {
    /// The HS256 secret tokens are signed and verified with.
    pub secret: Vec<u8>,
    /// Subjects whose `/login` tokens carry `"admin": true`.
    pub admin_subjects: Vec<String>,
    /// What the layer does while the store cannot answer.
    pub failure_policy: FailurePolicy,
}

impl Config {
    /// Reads `JWT_SECRET`, `ADMIN_SUBJECTS` and `FAILURE_POLICY`.
    pub fn from_env() -> Result<Self, String> {
        let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| {
            tracing::warn!(
                "JWT_SECRET is not set: using a PUBLIC DEVELOPMENT SECRET. Anyone can mint tokens for this \
                 server. Set JWT_SECRET before exposing it."
            );
            DEV_SECRET.to_owned()
        });
        let admin_subjects = std::env::var("ADMIN_SUBJECTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let failure_policy = store::failure_policy_from_env()?;
        Ok(Self {
            secret: secret.into_bytes(),
            admin_subjects,
            failure_policy,
        })
    }
}

struct AppState<S> {
    store: S,
    encoding_key: EncodingKey,
    config: Config,
}

/// The whole application over any store that can both check and record revocations.
pub fn app<S>(store: S, config: Config) -> Router
where
    S: RevocationBackend + RevocationStore + Clone,
{
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let decode_only = Arc::new(DecodeOnly {
        key: DecodingKey::from_secret(&config.secret),
        validation: validation.clone(),
    });
    let auth = JwtRevocationLayer::builder(store.clone())
        .decoding_key(DecodingKey::from_secret(&config.secret))
        .validation(validation)
        .max_token_lifetime(MAX_TOKEN_LIFETIME)
        .failure_policy(config.failure_policy)
        .realm("demo")
        .on_reject(json_rejection)
        .build()
        .expect("the demo's layer configuration is valid");
    let state = Arc::new(AppState {
        store,
        encoding_key: EncodingKey::from_secret(&config.secret),
        config,
    });

    let protected = Router::new()
        .route("/me", get(me))
        .route("/logout", post(logout::<S>))
        .route("/logout-all", post(logout_all::<S>))
        .route("/revocations", get(revocations::<S>))
        .route("/admin/tokens/{jti}", delete(admin_revoke::<S>))
        .route_layer(auth);
    let baseline =
        Router::new()
            .route("/baseline/me", get(me))
            .route_layer(axum::middleware::from_fn_with_state(
                decode_only,
                decode_only_auth,
            ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(baseline)
        .route("/login", post(login::<S>))
        .merge(protected)
        .with_state(state)
}

/// The comparison baseline: verify the token, no revocation check.
struct DecodeOnly {
    key: DecodingKey,
    validation: Validation,
}

async fn decode_only_auth(
    State(decode_only): State<Arc<DecodeOnly>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let claims = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| decode::<Claims>(token, &decode_only.key, &decode_only.validation).ok());
    match claims {
        Some(data) => {
            request.extensions_mut().insert(data.claims);
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

async fn login<S>(State(state): State<Arc<AppState<S>>>, Json(login): Json<Login>) -> Response {
    if login.sub.is_empty() || login.sub.len() > 256 {
        let body = json!({"error": "invalid_request", "error_description": "sub must be 1 to 256 bytes"});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let now = unix_seconds(SystemTime::now());
    let jti = uuid::Uuid::new_v4().to_string();
    let mut claims = json!({
        "jti": jti,
        "sub": login.sub,
        "iat": now,
        "exp": now + TOKEN_TTL.as_secs(),
    });
    if state.config.admin_subjects.contains(&login.sub) {
        claims["admin"] = Value::Bool(true);
    }
    let token = match encode(&Header::new(Algorithm::HS256), &claims, &state.encoding_key) {
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
        "jti": jti,
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn me(claims: Claims) -> Json<Value> {
    Json(json!({"sub": claims.sub, "jti": claims.jti, "iat": claims.iat, "exp": claims.exp}))
}

fn token_expiry(claims: &Claims) -> SystemTime {
    // The layer only lets tokens with an `exp` through (it is a required claim here).
    claims
        .exp
        .map_or_else(|| SystemTime::now() + MAX_TOKEN_LIFETIME, from_unix_seconds)
}

async fn logout<S: RevocationStore>(State(state): State<Arc<AppState<S>>>, claims: Claims) -> Response {
    let Some(jti) = claims.token_id() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    match state
        .store
        .revoke(
            jti,
            claims.sub.as_deref(),
            token_expiry(&claims),
            Some("logout"),
            None,
        )
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => store_unavailable(error),
    }
}

async fn logout_all<S: RevocationStore>(State(state): State<Arc<AppState<S>>>, claims: Claims) -> Response {
    let Some(sub) = claims.sub.as_deref() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match state
        .store
        .revoke_subject(sub, SystemTime::now(), Some("logout-all"), Some(sub))
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => store_unavailable(error),
    }
}

fn seconds(time: Option<SystemTime>) -> Option<u64> {
    time.map(unix_seconds)
}

async fn revocations<S: RevocationStore>(State(state): State<Arc<AppState<S>>>, claims: Claims) -> Response {
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

async fn admin_revoke<S: RevocationStore>(
    State(state): State<Arc<AppState<S>>>,
    claims: Claims,
    Path(jti): Path<String>,
) -> Response {
    if claims.custom.get("admin") != Some(&Value::Bool(true)) {
        let body = json!({"error": "insufficient_scope", "error_description": "admin token required"});
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    // The target token's expiry is unknown here; no accepted token outlives MAX_TOKEN_LIFETIME.
    let expires_at = SystemTime::now() + MAX_TOKEN_LIFETIME;
    match state
        .store
        .revoke(&jti, None, expires_at, Some("admin"), claims.sub.as_deref())
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
    async fn run<S>(self, store: S, description: &'static str) -> Result<(), Box<dyn std::error::Error>>
    where
        S: RevocationBackend + RevocationStore + Clone,
    {
        tracing::info!(addr = %self.listener.local_addr()?, store = description, "demo server listening");
        axum::serve(self.listener, app(store, self.config))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env()?;
    let bind = std::env::var("BIND_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    with_store_from_env(Serve { config, listener }).await
}
