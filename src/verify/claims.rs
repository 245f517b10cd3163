//! The claims a verified token carries on ([`Claims`], with [`Scopes`]), and what a token
//! without `jti` is given instead ([`MissingJti`]).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::backend::{Revocation, TokenFacts, far_future, from_unix_seconds, saturating_add};

/// The claim type used when the application names none: every claim the token carries beyond
/// the registered ones, as JSON.
pub type DefaultClaims = serde_json::Map<String, serde_json::Value>;

/// The verified claims of a request's token, inserted into the request's extensions as an
/// `Arc<Claims<C>>`.
///
/// The registered claims the layer needs are typed fields; every other claim is deserialized
/// into `C` (by default a JSON map). With the `axum` feature, `Claims<C>` and
/// `Option<Claims<C>>` are extractors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims<C = DefaultClaims> {
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Session id: every token of one login session carries the same `sid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Issued at (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Expires at (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// OAuth scopes as RFC 8693 §4.2 writes them (`scope`: a space-separated string; an array
    /// is accepted too). Read them with [`scopes`](Self::scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scopes>,
    /// Scopes as Okta and Entra ID send them (`scp`: an array or a space-separated string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<Scopes>,
    /// The confirmation claim (RFC 7800 §3.1): for a DPoP-bound token, the thumbprint of the key
    /// every request's proof must be signed with (RFC 9449 §6.1). Read it with
    /// [`dpop_jkt`](Self::dpop_jkt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The application's own claims.
    #[serde(flatten)]
    pub custom: C,
    /// The id derived under [`MissingJti::HashSigningInput`] for a token without `jti`.
    #[serde(skip)]
    pub(super) derived_id: Option<String>,
    /// The issuer revocations of this token are keyed by (see [`Claims::revocation_issuer`]).
    #[serde(skip)]
    pub(super) revocation_issuer: Option<std::sync::Arc<str>>,
}

impl<C> Claims<C> {
    /// The id this token is revoked by: its `jti`, or for a token without one under
    /// [`MissingJti::HashSigningInput`], `sha256:` and the base64url SHA-256 of its signing input.
    /// Pass it to [`RevocationStore::revoke`](crate::RevocationStore::revoke) to revoke the token.
    pub fn token_id(&self) -> Option<&str> {
        self.jti.as_deref().or(self.derived_id.as_deref())
    }

    /// A revocation of this token, to pass to
    /// [`RevocationStore::revoke`](crate::RevocationStore::revoke): by its
    /// [`token_id`](Self::token_id), kept until its `exp` (or, without one, until deleted by
    /// hand), owned by its `sub`. `None` for a token without an id (under [`MissingJti::Allow`]).
    ///
    /// ```
    /// # use tower_jwt_revocation::{Claims, RevocationStore};
    /// async fn logout(store: &impl RevocationStore, claims: &Claims) -> Result<(), tower_jwt_revocation::StoreError> {
    ///     if let Some(revocation) = claims.token_revocation() {
    ///         store.revoke(&revocation.reason("logout")).await?;
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn token_revocation(&self) -> Option<Revocation<'_>> {
        let expires_at = self.exp.map_or_else(far_future, from_unix_seconds);
        let jti = self.token_id()?;
        Some(Revocation::token(jti, expires_at).owner(self.sub.as_deref()))
    }

    /// A revocation of this token's session (`sid`), owned by its `sub`, kept for
    /// `longest_token_lifetime` from now or until this token's `exp`, whichever is later: long
    /// enough to outlive every access token minted for the session before it ended. Pass the
    /// longest lifetime your issuer gives access tokens plus the validation leeway. It only
    /// outlives tokens minted *before* the session ended: end the session in your session store
    /// too, so no refresh mints more (the crate's `Sessions::revoke` files this revocation
    /// itself). `None` for a token without `sid`. Keyed by the token's issuer when the layer keys
    /// revocations by issuer ([`revocation_issuer`](Self::revocation_issuer)).
    pub fn session_revocation(&self, longest_token_lifetime: Duration) -> Option<Revocation<'_>> {
        let sid = self.sid.as_deref()?;
        let own = self.exp.map_or_else(far_future, from_unix_seconds);
        let until = saturating_add(SystemTime::now(), longest_token_lifetime).max(own);
        Some(
            Revocation::session(sid, until)
                .owner(self.sub.as_deref())
                .issuer(self.revocation_issuer()),
        )
    }

    /// A cutoff for this token's subject at this moment ("log out everywhere"): every token of
    /// the subject issued up to now is revoked, this one included even when its issuer's clock
    /// runs ahead (the cutoff is at least its `iat`). `None` for a token without `sub`.
    ///
    /// Like [`session_revocation`](Self::session_revocation), it is keyed by the token's issuer
    /// when the layer keys revocations by issuer ([`revocation_issuer`](Self::revocation_issuer)):
    /// it then ends this issuer's user of that `sub`, not another issuer's.
    pub fn subject_revocation(&self) -> Option<Revocation<'_>> {
        let own = self.iat.map_or(std::time::UNIX_EPOCH, from_unix_seconds);
        Some(
            Revocation::subject(self.sub.as_deref()?, SystemTime::now().max(own))
                .issuer(self.revocation_issuer()),
        )
    }

    /// The issuer this token's session and subject revocations are keyed by: its `iss` when the
    /// layer keys revocations by issuer (by default, when its backend declares that the fleet
    /// keys: see
    /// [`key_revocations_by_issuer`](crate::JwtRevocationBuilder::key_revocations_by_issuer)),
    /// `None` otherwise. Set by the layer, never read from the token's claims.
    pub fn revocation_issuer(&self) -> Option<&str> {
        self.revocation_issuer.as_deref()
    }

    /// The RFC 7638 thumbprint of the key this token is bound to (`cnf.jkt`), for a DPoP-bound
    /// token; `None` for a bearer token.
    pub fn dpop_jkt(&self) -> Option<&str> {
        self.cnf.as_ref()?.jkt.as_deref()
    }

    /// Every scope the token grants: those of `scope` and of `scp`.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.iter().chain(self.scp.iter()).flat_map(Scopes::iter)
    }

    /// Whether the token grants `scope` (exact, case-sensitive comparison, as RFC 6749 §3.3
    /// says).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|granted| granted == scope)
    }

    /// The facts the backend checks, borrowed from these claims.
    pub fn facts(&self) -> TokenFacts<'_> {
        TokenFacts {
            jti: self.token_id(),
            session_id: self.sid.as_deref(),
            subject: self.sub.as_deref(),
            issued_at: self.iat,
            expires_at: self.exp,
            issuer: self.revocation_issuer(),
        }
    }
}

/// A token's `cnf` claim (RFC 7800): the key it is bound to. Members other than `jkt` (such as
/// mTLS's `x5t#S256`) are kept in `other`, so a handler can see them; the layer enforces `jkt`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Confirmation {
    /// The base64url SHA-256 thumbprint (RFC 7638) of the DPoP key (RFC 9449 §6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// Every other confirmation member.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A scope claim: a space-separated string (RFC 8693 §4.2) or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scopes {
    /// `"read write"`.
    Text(String),
    /// `["read", "write"]`.
    List(Vec<String>),
}

impl Scopes {
    /// The scopes, one by one.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (text, list): (Option<&str>, &[String]) = match self {
            Scopes::Text(text) => (Some(text), &[]),
            Scopes::List(list) => (None, list),
        };
        text.into_iter()
            .flat_map(|text| text.split(' '))
            .chain(list.iter().map(String::as_str))
            .filter(|scope| !scope.is_empty())
    }
}

/// What to do with a valid token that has no `jti` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingJti {
    /// Refuse it (401 `invalid_token`): a token that cannot be revoked one by one is not
    /// accepted. The default.
    #[default]
    Reject,
    /// Accept it; it can still be revoked through its session (`sid`) or subject cutoff, but
    /// never on its own.
    Allow,
    /// Key it by the SHA-256 of its signing input (`header.payload`, not the signature: an
    /// ECDSA signature or its base64 can be re-encoded into another valid string, the signed
    /// content cannot). See [`Claims::token_id`].
    HashSigningInput,
}
