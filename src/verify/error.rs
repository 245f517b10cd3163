//! Why a token was refused: [`InvalidToken`], the vocabulary every key source and the
//! verifier answer in.

use jsonwebtoken::errors::ErrorKind;

/// Why a token was refused. Its [`description`](Self::description) goes into
/// `WWW-Authenticate`; it never contains the token or `jsonwebtoken`'s own error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidToken {
    /// Not a JWT: wrong shape, bad base64 or JSON, a claim of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the selected key.
    #[error("invalid signature")]
    BadSignature,
    /// The header's `alg` is not in the allow-list (including `none`).
    #[error("algorithm not accepted")]
    Algorithm,
    /// The header's `kid` names no configured key (or is missing with a key set).
    #[error("unknown key id")]
    UnknownKey,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not accepted.
    #[error("issuer not accepted")]
    Issuer,
    /// `aud` is not accepted.
    #[error("audience not accepted")]
    Audience,
    /// `sub` is not the one required.
    #[error("subject not accepted")]
    Subject,
    /// A claim required by the validation is missing.
    #[error("missing required claim")]
    MissingClaim,
    /// The header's `typ` is not the required one.
    #[error("token type not accepted")]
    Type,
    /// No `jti`, and [`MissingJti::Reject`](super::MissingJti::Reject) is configured.
    #[error("token has no jti")]
    MissingJti,
    /// `exp` is missing or further in the future than the configured maximum lifetime.
    #[error("token lifetime too long")]
    Lifetime,
    /// `iat` lies further in the future than the leeway allows: such a token would outlive a
    /// subject cutoff ("log out everywhere") set before its claimed issue time.
    #[error("token issued in the future")]
    IssuedInFuture,
}

impl InvalidToken {
    /// The text for `error_description`: fixed, short, and free of request data.
    pub fn description(&self) -> &'static str {
        match self {
            InvalidToken::Malformed => "malformed token",
            InvalidToken::BadSignature => "invalid signature",
            InvalidToken::Algorithm => "algorithm not accepted",
            InvalidToken::UnknownKey => "unknown key id",
            InvalidToken::Expired => "token expired",
            InvalidToken::NotYetValid => "token not yet valid",
            InvalidToken::Issuer => "issuer not accepted",
            InvalidToken::Audience => "audience not accepted",
            InvalidToken::Subject => "subject not accepted",
            InvalidToken::MissingClaim => "missing required claim",
            InvalidToken::Type => "token type not accepted",
            InvalidToken::MissingJti => "token has no jti",
            InvalidToken::Lifetime => "token lifetime too long",
            InvalidToken::IssuedInFuture => "token issued in the future",
        }
    }

    pub(crate) fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::InvalidSignature => InvalidToken::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => InvalidToken::Algorithm,
            ErrorKind::ExpiredSignature => InvalidToken::Expired,
            ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
            ErrorKind::InvalidIssuer => InvalidToken::Issuer,
            ErrorKind::InvalidAudience => InvalidToken::Audience,
            ErrorKind::InvalidSubject => InvalidToken::Subject,
            ErrorKind::MissingRequiredClaim(_) => InvalidToken::MissingClaim,
            // Key errors can only come from a key that does not fit the token's algorithm
            // family (config is checked at build time); everything else is a malformed token.
            ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
                InvalidToken::BadSignature
            }
            _ => InvalidToken::Malformed,
        }
    }
}
