//! Sessions: refresh-token families with rotation and reuse detection (RFC 9700 §4.14.2).
//!
//! This module owns the [`Sessions`] trait and what both implementations share: opaque refresh
//! tokens (256 random bits, base64url) of which only the SHA-256 is stored, the error vocabulary,
//! and the [`AccessToken`] helper that fills `jti`, `sid`, `iat` and `exp`. A session's id is the
//! `sid` claim of its access tokens, so ending a session is a session revocation that the layer
//! enforces like any other. It does not mint tokens for you beyond that helper, and it does not
//! know users: a subject is whatever string the application uses.
//!
//! Rotation is a compare-and-set: of N concurrent rotations of one token exactly one wins. A
//! token that was already rotated away is **reuse**: the whole session is revoked, because either
//! the client or an attacker holds a stale copy and the server cannot tell which. The optional
//! grace window ([`SessionConfig::grace`]) tolerates one replay of the immediately previous token
//! within a few seconds (a client retrying after a lost response) by answering
//! [`SessionError::Superseded`] instead of revoking; the price is that a thief replaying inside
//! that window is not caught by that replay.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;

pub use memory::MemorySessions;
#[cfg(feature = "postgres")]
pub use postgres::PgSessions;

use std::future::Future;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::backend::{StoreError, unix_seconds};

/// Policy shared by both implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// How long a session (its refresh-token family) lives from its start. Default 30 days.
    pub lifetime: Duration,
    /// The longest lifetime of the access tokens minted for a session: a session revocation is
    /// kept that long, so every access token it covers expires first. Default 1 hour.
    pub access_token_lifetime: Duration,
    /// Tolerates one replay of the previous refresh token within this window (default: none).
    pub grace: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(30 * 24 * 3600),
            access_token_lifetime: Duration::from_secs(3600),
            grace: None,
        }
    }
}

/// Optional descriptive data for the "active sessions" screen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionMeta {
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// The client's address.
    pub ip: Option<String>,
}

/// A live session as listed to its owner (no token material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id: the `sid` claim of its access tokens.
    pub id: String,
    /// Whose session it is.
    pub subject: String,
    /// When it started.
    pub created_at: SystemTime,
    /// When its refresh token was last rotated (or the session started).
    pub last_used_at: SystemTime,
    /// When its refresh tokens stop working.
    pub expires_at: SystemTime,
    /// From [`SessionMeta`].
    pub meta: SessionMeta,
}

/// A session and the refresh token the client must present next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The session.
    pub session: Session,
    /// The opaque refresh token (256 random bits, base64url). Shown once; only its SHA-256 is
    /// stored.
    pub refresh_token: String,
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Unknown, expired or revoked refresh token (answer 401).
    #[error("refresh token not valid")]
    Invalid,
    /// A refresh token that was already rotated away was presented: the session is now revoked
    /// (answer 401, the same as [`Invalid`](Self::Invalid), so a thief learns nothing).
    #[error("refresh token reused; session revoked")]
    Reused {
        /// The revoked session.
        session_id: String,
    },
    /// The previous refresh token was replayed inside the grace window: nothing was rotated and
    /// nothing revoked; the client should use the token it received last (answer 401).
    #[error("refresh token superseded")]
    Superseded,
    /// No such session for this subject (answer 404).
    #[error("session not found")]
    NotFound,
    /// The store could not be reached or failed (answer 503). Nothing was changed: the presented
    /// refresh token is still usable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change was sent for commit but the store neither confirmed nor denied it, and its
    /// outcome could not be read back in time (answer 503). The presented refresh token may
    /// have been rotated: a client that retries with it may find it already used, which ends
    /// the session (log in again). Rare: it takes the database to become unreachable between
    /// the `COMMIT` and the read-back.
    #[error("the store did not confirm whether the change was committed")]
    Indeterminate,
}

/// Sessions and refresh-token rotation. Implemented by [`MemorySessions`] and (feature
/// `postgres`) `PgSessions`.
pub trait Sessions: Send + Sync + 'static {
    /// Starts a session for `subject` and returns it with its first refresh token.
    fn start(
        &self,
        subject: &str,
        meta: SessionMeta,
    ) -> impl Future<Output = Result<Issued, SessionError>> + Send;

    /// Exchanges `refresh_token` for a new one of the same session. Exactly one of any number of
    /// concurrent rotations of one token succeeds; presenting a rotated-away token is
    /// [`SessionError::Reused`] and revokes the session.
    fn rotate(&self, refresh_token: &str) -> impl Future<Output = Result<Issued, SessionError>> + Send;

    /// The live sessions of `subject`, most recently used first.
    fn list(&self, subject: &str) -> impl Future<Output = Result<Vec<Session>, SessionError>> + Send;

    /// Ends session `session_id` of `subject` (a session of another subject is
    /// [`SessionError::NotFound`] and is left alone). Its access tokens are refused from then on.
    fn revoke(
        &self,
        session_id: &str,
        subject: &str,
    ) -> impl Future<Output = Result<(), SessionError>> + Send;

    /// Ends every session of `subject` and sets its subject cutoff to now, under the same lock
    /// as [`rotate`](Self::rotate), so a rotation in flight cannot leave a live token behind.
    /// Returns how many sessions were ended.
    fn revoke_all(&self, subject: &str) -> impl Future<Output = Result<u64, SessionError>> + Send;
}

/// A fresh opaque token: 256 random bits, base64url without padding (43 characters).
pub(crate) fn random_token() -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Store(StoreError::Unavailable(Box::new(e))))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A fresh session id: 128 random bits, base64url.
pub(crate) fn random_session_id() -> Result<String, SessionError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| SessionError::Store(StoreError::Unavailable(Box::new(e))))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a refresh token.
pub(crate) fn token_hash(refresh_token: &str) -> [u8; 32] {
    Sha256::digest(refresh_token.as_bytes()).into()
}

/// Claims for an access token of a session: `jti` (random), `sub`, `sid`, `iat`, `exp`, plus
/// the application's own. Sign them with `jsonwebtoken::encode`.
///
/// ```
/// use std::time::Duration;
/// use tower_jwt_revocation::session::AccessToken;
///
/// let claims = AccessToken::new("alice", "session-id", Duration::from_secs(900)).unwrap();
/// assert_eq!(claims.claims["sid"], "session-id");
/// assert_eq!(claims.jti.len(), 22);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AccessToken {
    /// The `jti` it carries (to revoke this one token).
    pub jti: String,
    /// The claims to sign.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl AccessToken {
    /// Fills `jti`, `sub`, `sid`, `iat` and `exp` (`iat` + `ttl`).
    pub fn new(subject: &str, session_id: &str, ttl: Duration) -> Result<Self, SessionError> {
        let jti = random_session_id()?;
        let iat = unix_seconds(SystemTime::now());
        let mut claims = serde_json::Map::new();
        claims.insert("jti".into(), jti.clone().into());
        claims.insert("sub".into(), subject.into());
        claims.insert("sid".into(), session_id.into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), iat.saturating_add(ttl.as_secs()).into());
        Ok(Self { jti, claims })
    }
}
