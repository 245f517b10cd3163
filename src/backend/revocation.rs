//! [`Revocation`]: one revocation in one self-describing shape, for every store.
//!
//! What is revoked and how long the record must be kept are the constructor's arguments, so
//! neither can be left out; the record's description (whose, why, by whom) is added by name, so
//! no two adjacent `Option<&str>` can be swapped unseen. To revoke the token a handler was called
//! with (or its session, or every token of its subject), start from its verified claims:
//! [`Claims::token_revocation`](crate::Claims::token_revocation) and its siblings.
//!
//! Times here are [`SystemTime`], as everywhere the application talks to a store; claims and
//! [`TokenFacts`](super::TokenFacts) carry JWT NumericDates (whole seconds, as the token says),
//! converted with [`from_unix_seconds`](super::from_unix_seconds) and
//! [`unix_seconds`](super::unix_seconds).

use std::time::SystemTime;

/// What a [`Revocation`] revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationTarget<'a> {
    /// One token, by its `jti` (or the id `MissingJti::HashSigningInput` derived for it). The
    /// record is kept at least until `expires_at`, the token's own expiry.
    Token {
        /// The token's id.
        jti: &'a str,
        /// The token's expiry.
        expires_at: SystemTime,
    },
    /// Every token carrying the session id `sid`. The record is kept at least until
    /// `expires_at`, which must cover the expiry of the session's last access token.
    Session {
        /// The session id.
        sid: &'a str,
        /// When the session's last access token expires.
        expires_at: SystemTime,
    },
    /// Every token of `subject` issued at or before `not_before` (see
    /// [`subject_cutoff_covers`](super::subject_cutoff_covers) for the same-second rule). A cutoff
    /// only moves forward: an earlier `not_before` than the one stored changes nothing.
    Subject {
        /// The subject.
        subject: &'a str,
        /// Tokens issued at or before this moment are revoked.
        not_before: SystemTime,
    },
}

/// One revocation, for [`RevocationStore::revoke`](super::RevocationStore::revoke).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_jwt_revocation::{MemoryStore, Revocation, RevocationStore};
///
/// # async fn demo() -> Result<(), tower_jwt_revocation::StoreError> {
/// let store = MemoryStore::new();
/// let expires_at = SystemTime::now() + Duration::from_secs(900);
/// let logout = Revocation::token("jti-1", expires_at).owner("alice").reason("logout");
/// assert!(store.revoke(&logout).await?); // created
/// assert!(!store.revoke(&logout).await?); // already revoked: nothing changed
///
/// let everywhere = Revocation::subject("alice", SystemTime::now())
///     .reason("password changed")
///     .revoked_by("account-service");
/// store.revoke(&everywhere).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Revocation<'a> {
    /// What is revoked, and how long the record must be kept.
    pub target: RevocationTarget<'a>,
    /// Whose token or session it is, for listings ([`list_by_subject`]); a subject cutoff's owner
    /// is its subject.
    ///
    /// [`list_by_subject`]: super::RevocationStore::list_by_subject
    pub owner: Option<&'a str>,
    /// Why, in free text.
    pub reason: Option<&'a str>,
    /// Who revoked (an admin's id, a service's name).
    pub revoked_by: Option<&'a str>,
    /// For a session or a subject cutoff: the issuer whose `sid` or `sub` it is, when
    /// revocations are keyed by issuer (see [`TokenFacts::issuer`](super::TokenFacts::issuer));
    /// `None` revokes that `sid` or `sub` of every issuer. Ignored for a token: a `jti` is
    /// unique across issuers.
    pub issuer: Option<&'a str>,
}

impl<'a> Revocation<'a> {
    /// Revokes one token, kept until `expires_at` (its `exp`).
    pub fn token(jti: &'a str, expires_at: SystemTime) -> Self {
        Self::of(RevocationTarget::Token { jti, expires_at })
    }

    /// Revokes every token of session `sid`, kept until `expires_at` (the expiry of its last
    /// access token).
    pub fn session(sid: &'a str, expires_at: SystemTime) -> Self {
        Self::of(RevocationTarget::Session { sid, expires_at })
    }

    /// Revokes every token of `subject` issued at or before `not_before` ("log out everywhere"
    /// when `not_before` is now).
    pub fn subject(subject: &'a str, not_before: SystemTime) -> Self {
        Self {
            owner: Some(subject),
            ..Self::of(RevocationTarget::Subject { subject, not_before })
        }
    }

    fn of(target: RevocationTarget<'a>) -> Self {
        Self {
            target,
            owner: None,
            reason: None,
            revoked_by: None,
            issuer: None,
        }
    }

    /// Keys a session or subject revocation by `issuer` (the exact `iss` of the tokens it is
    /// for), so that it ends that issuer's session or user only; `None` leaves it unkeyed (every
    /// issuer). Ignored for a token revocation. The claims' own helpers
    /// ([`Claims::session_revocation`](crate::Claims::session_revocation),
    /// [`Claims::subject_revocation`](crate::Claims::subject_revocation)) set it when the layer
    /// keys revocations by issuer.
    #[must_use]
    pub fn issuer(mut self, issuer: impl Into<Option<&'a str>>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// The issuer this revocation is keyed by: `None` for a token, or when it applies to every
    /// issuer.
    pub fn keyed_issuer(&self) -> Option<&'a str> {
        match self.target {
            RevocationTarget::Token { .. } => None,
            _ => self.issuer,
        }
    }

    /// Refuses what no store can file: an empty key, or an issuer that is empty or holds a NUL.
    pub(crate) fn validate(&self) -> Result<(), super::StoreError> {
        if self.key().is_empty() {
            return Err(super::StoreError::InvalidInput("empty revocation key"));
        }
        if self
            .keyed_issuer()
            .is_some_and(|issuer| issuer.is_empty() || issuer.contains('\0'))
        {
            return Err(super::StoreError::InvalidInput(
                "an issuer must be non-empty and hold no NUL",
            ));
        }
        Ok(())
    }

    /// Whose token or session it is (the token's `sub`); `None` leaves it unset.
    #[must_use]
    pub fn owner(mut self, subject: impl Into<Option<&'a str>>) -> Self {
        if let RevocationTarget::Subject { subject, .. } = self.target {
            // A cutoff belongs to its own subject, whatever this says.
            self.owner = Some(subject);
        } else {
            self.owner = subject.into();
        }
        self
    }

    /// Why it was revoked; `None` leaves it unset.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<Option<&'a str>>) -> Self {
        self.reason = reason.into();
        self
    }

    /// Who revoked it; `None` leaves it unset.
    #[must_use]
    pub fn revoked_by(mut self, revoked_by: impl Into<Option<&'a str>>) -> Self {
        self.revoked_by = revoked_by.into();
        self
    }

    /// The kind of key this revocation is filed under.
    pub fn kind(&self) -> RevocationKind {
        match self.target {
            RevocationTarget::Token { .. } => RevocationKind::Token,
            RevocationTarget::Session { .. } => RevocationKind::Session,
            RevocationTarget::Subject { .. } => RevocationKind::Subject,
        }
    }

    /// The `jti`, `sid` or subject it is filed under.
    pub fn key(&self) -> &'a str {
        match self.target {
            RevocationTarget::Token { jti, .. } => jti,
            RevocationTarget::Session { sid, .. } => sid,
            RevocationTarget::Subject { subject, .. } => subject,
        }
    }
}

/// Which kind of key a revocation record is filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// One token, keyed by `jti`.
    Token,
    /// One session, keyed by `sid`.
    Session,
    /// A subject cutoff, keyed by `sub`.
    Subject,
}
