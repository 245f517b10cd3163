//! Verifying a token: keys, [`Validation`], and the [`Claims`] a request carries on.
//!
//! This module owns everything between "here is a token string" and "here are its verified
//! claims": choosing the key (one [`DecodingKey`], or a [`KeySet`] chosen by the header's `kid`),
//! checking the signature, the time claims, `iss`/`aud` and the algorithm allow-list with
//! `jsonwebtoken`, checking a required `typ` header, and giving a token without `jti` an id per
//! [`MissingJti`]. It does not ask whether the token is revoked; the backend does that after this
//! succeeds, so a forged or expired token never costs a store lookup.
//!
//! Every configuration mistake `jsonwebtoken` would only report per request (an empty
//! algorithm list, an HMAC key with an RSA algorithm) is found in [`Verifier::new`] instead.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Revocation, TokenFacts, far_future, from_unix_seconds, saturating_add, unix_seconds};
use crate::config::ConfigError;
use crate::token_cache::Window;

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
    /// The application's own claims.
    #[serde(flatten)]
    pub custom: C,
    /// The id derived under [`MissingJti::HashSigningInput`] for a token without `jti`.
    #[serde(skip)]
    derived_id: Option<String>,
    /// The issuer revocations of this token are keyed by (see [`Claims::revocation_issuer`]).
    #[serde(skip)]
    revocation_issuer: Option<std::sync::Arc<str>>,
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

/// Decoding keys selected by the JWT header's `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl KeySet {
    /// An empty key set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key for `kid`.
    #[must_use]
    pub fn with_key(mut self, kid: impl Into<String>, key: DecodingKey) -> Self {
        self.keys.insert(kid.into(), key);
        self
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material stays out of logs; the ids are enough to debug a configuration.
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

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
    /// No `jti`, and [`MissingJti::Reject`] is configured.
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

/// Installs this crate's `jsonwebtoken` crypto provider as the process-wide default, unless the
/// application installed one first: `aws_lc_rs` when this crate's `aws_lc_rs` feature is on,
/// else `rust_crypto` when its `rust_crypto` feature is. Installing explicitly matters whenever
/// `jsonwebtoken` ends up with both of its backends compiled in (both features of this crate, or
/// an application that enables `jsonwebtoken/aws_lc_rs` itself while this crate uses
/// `rust_crypto`): `jsonwebtoken` cannot pick one then, and panics on every sign or verify.
/// The layer calls it when it is built (and then proves, with a probe verification, that a
/// provider works); call it yourself before *signing* tokens if no layer was built yet.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An `Err` means a provider is installed already (the application's own): keep it.
        #[cfg(feature = "aws_lc_rs")]
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        #[cfg(all(feature = "rust_crypto", not(feature = "aws_lc_rs")))]
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

/// Whether `jsonwebtoken` can verify with `key` and `algorithm` in this process without
/// panicking: it panics on every verification when it has no usable crypto provider (no backend
/// compiled in, or two and none installed). A bogus signature is enough to reach the provider.
fn crypto_works(key: &DecodingKey, algorithm: jsonwebtoken::Algorithm) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jsonwebtoken::crypto::verify("AAAA", b"probe.probe", key, algorithm)
    }))
    .is_ok()
}

/// One key with the validation restricted to the algorithms it may verify, so `jsonwebtoken`
/// never sees an allow-list mixing families (which it refuses on every request) and a token's
/// `alg` always has to fit its key.
#[derive(Clone)]
pub(crate) struct KeyedValidation {
    key: DecodingKey,
    validation: Validation,
}

impl KeyedValidation {
    pub(crate) fn new(
        kid: Option<&str>,
        key: DecodingKey,
        validation: &Validation,
    ) -> Result<Self, ConfigError> {
        let family = key.family();
        if !validation.algorithms.iter().any(|alg| alg.family() == family) {
            return Err(ConfigError::KeyAlgorithmMismatch {
                kid: kid.map(str::to_owned),
                algorithms: validation.algorithms.clone(),
            });
        }
        let mut validation = validation.clone();
        validation.algorithms.retain(|alg| alg.family() == family);
        if !validation
            .algorithms
            .iter()
            .all(|algorithm| crypto_works(&key, *algorithm))
        {
            return Err(ConfigError::NoCryptoProvider);
        }
        Ok(Self { key, validation })
    }

    /// A key whose algorithms the caller has already narrowed to its family.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) fn unchecked(key: DecodingKey, validation: Validation) -> Self {
        Self { key, validation }
    }

    /// Whether this key verifies tokens signed with `algorithm`.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) fn accepts(&self, algorithm: Algorithm) -> bool {
        self.validation.algorithms.contains(&algorithm)
    }
}

/// The keys of one issuer (or of the only key source), each with its validation.
#[derive(Clone)]
// One per issuer, never moved on the request path: the size difference costs nothing, and
// boxing would add an indirection to every verification.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Single(KeyedValidation),
    ByKid(HashMap<String, KeyedValidation>),
    #[cfg(feature = "jwks")]
    Jwks(std::sync::Arc<crate::jwks::verify::JwksKeys>),
}

/// Why no key was found for a token.
pub(crate) enum KeyMiss<'a> {
    /// The token is refused as it is.
    Invalid(InvalidToken),
    /// The key source may learn the key by fetching: `has_keys` is false when it holds none yet.
    #[cfg(feature = "jwks")]
    Fetch {
        jwks: &'a crate::jwks::Jwks,
        has_keys: bool,
    },
    #[cfg(not(feature = "jwks"))]
    #[allow(dead_code)]
    Never(std::marker::PhantomData<&'a ()>),
}

impl Keys {
    /// Runs `verify` with the key `token` names, or says why there is none.
    fn with_key<R>(&self, token: &str, verify: impl FnOnce(&KeyedValidation) -> R) -> Result<R, KeyMiss<'_>> {
        match self {
            Keys::Single(keyed) => Ok(verify(keyed)),
            Keys::ByKid(map) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| KeyMiss::Invalid(InvalidToken::from_jwt(&e)))?;
                let keyed = header
                    .kid
                    .as_deref()
                    .and_then(|kid| map.get(kid))
                    .ok_or(KeyMiss::Invalid(InvalidToken::UnknownKey))?;
                Ok(verify(keyed))
            }
            #[cfg(feature = "jwks")]
            Keys::Jwks(keys) => keys.with_key(token, verify),
        }
    }

    /// See [`Verifier::key_epoch`]: fixed keys never change.
    fn epoch(&self) -> Option<u64> {
        match self {
            Keys::Single(_) | Keys::ByKid(_) => Some(0),
            #[cfg(feature = "jwks")]
            Keys::Jwks(keys) => keys.epoch(),
        }
    }

    fn kids(&self) -> Vec<String> {
        match self {
            Keys::Single(_) => Vec::new(),
            Keys::ByKid(map) => map.keys().cloned().collect(),
            #[cfg(feature = "jwks")]
            Keys::Jwks(keys) => keys.kids(),
        }
    }
}

/// The accepted issuers: one key source for every token (its validation says which `iss` it
/// accepts), or several chosen by the token's `iss` before any key is tried.
#[derive(Clone)]
// As for `Keys`: one per layer, read in place.
#[allow(clippy::large_enum_variant)]
enum Issuers {
    One(Keys),
    /// `iss` to an index into the keys.
    ByIss(HashMap<String, usize>, Vec<Keys>),
}

/// An accepted token issuer with its own keys, audience and algorithms, for a layer that
/// accepts tokens of several providers ([`JwtRevocationBuilder::issuer`]). A token is matched
/// to its issuer by its (not yet verified) `iss` claim first; only that issuer's keys are
/// tried, under that issuer's validation, so one provider's key can never verify a token
/// claiming to be from another.
///
/// Everything not set here (leeway, required claims, `nbf`) comes from the layer's
/// [`validation`](crate::JwtRevocationBuilder::validation).
///
/// [`JwtRevocationBuilder::issuer`]: crate::JwtRevocationBuilder::issuer
#[derive(Clone, Debug)]
pub struct Issuer {
    pub(crate) iss: String,
    pub(crate) keys: KeySource,
    pub(crate) audience: Option<Vec<String>>,
    pub(crate) algorithms: Option<Vec<Algorithm>>,
}

impl Issuer {
    /// Tokens whose `iss` is `iss`, verified with `keys`: a [`DecodingKey`], a [`KeySet`], or
    /// (feature `jwks`) a `Jwks`, whose discovered issuer must then be `iss`.
    pub fn new(iss: impl Into<String>, keys: impl Into<KeySource>) -> Self {
        Self {
            iss: iss.into(),
            keys: keys.into(),
            audience: None,
            algorithms: None,
        }
    }

    /// The audiences this issuer's tokens must name one of in `aud` (instead of the layer
    /// validation's); required and checked even if the layer's validation has
    /// `validate_aud = false`. Without one, `jsonwebtoken` refuses every token that carries
    /// `aud` (most providers' access tokens do) unless the validation has
    /// `validate_aud = false`.
    #[must_use]
    pub fn audience<I, T>(mut self, audience: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.audience = Some(audience.into_iter().map(Into::into).collect());
        self
    }

    /// The algorithms this issuer's tokens may use (instead of the layer validation's; for a
    /// `Jwks` the default is every asymmetric algorithm).
    #[must_use]
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = Some(algorithms.to_vec());
        self
    }
}

/// Every asymmetric algorithm `jsonwebtoken` verifies (RSA first, then EC, then EdDSA): the
/// default allow-list for keys from a `Jwks` when the validation was not set.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why [`Verifier::check`] did not return claims.
pub(crate) enum Unverified {
    /// Refused: 401.
    Invalid(InvalidToken),
    /// The key source holds no keys yet: 503, retryable.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    KeysUnavailable,
    /// The key source is fetching a key set that may hold the token's key: wait, then check
    /// again without waiting.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    Wait(KeyWait),
}

/// A wait for a key set being fetched.
pub(crate) type KeyWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The token verifier the layer builds once from its configuration and uses for every request.
#[derive(Clone)]
pub struct Verifier {
    issuers: Issuers,
    /// Each issuer's `iss`, by index (empty for a verifier of keys without issuers).
    names: Vec<std::sync::Arc<str>>,
    /// Whether claims carry their issuer for keying revocations ([`Claims::revocation_issuer`]).
    keyed: bool,
    required_typ: Option<String>,
    missing_jti: MissingJti,
    max_lifetime: Option<u64>,
    /// How far in the future an `iat` may lie (seconds); `None`: the validation's leeway.
    iat_leeway: Option<u64>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Verifier");
        match &self.issuers {
            Issuers::One(keys) => debug.field("kids", &keys.kids()),
            Issuers::ByIss(map, _) => debug.field("issuers", &map.keys().collect::<Vec<_>>()),
        };
        debug
            .field("required_typ", &self.required_typ)
            .field("missing_jti", &self.missing_jti)
            .field("max_lifetime", &self.max_lifetime)
            .field("iat_leeway", &self.iat_leeway)
            .finish_non_exhaustive()
    }
}

/// Where the verifier's keys come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KeySource {
    /// One key for every token.
    Single(DecodingKey),
    /// A key chosen by the token header's `kid`.
    Set(KeySet),
    /// Keys published by an identity provider, chosen by `kid`, refreshed in the background.
    #[cfg(feature = "jwks")]
    Jwks(crate::jwks::Jwks),
}

impl From<DecodingKey> for KeySource {
    fn from(key: DecodingKey) -> Self {
        KeySource::Single(key)
    }
}

impl From<KeySet> for KeySource {
    fn from(keys: KeySet) -> Self {
        KeySource::Set(keys)
    }
}

#[cfg(feature = "jwks")]
impl From<crate::jwks::Jwks> for KeySource {
    fn from(jwks: crate::jwks::Jwks) -> Self {
        KeySource::Jwks(jwks)
    }
}

impl KeySource {
    /// The allow-list used when nobody set one: every asymmetric algorithm for a key source
    /// whose keys are not known in advance (plus HMAC when it allows symmetric keys).
    pub(crate) fn default_algorithms(&self) -> Option<Vec<Algorithm>> {
        match self {
            KeySource::Single(_) | KeySource::Set(_) => None,
            #[cfg(feature = "jwks")]
            KeySource::Jwks(jwks) => {
                let mut algorithms = ASYMMETRIC_ALGORITHMS.to_vec();
                if jwks.allows_symmetric_keys() {
                    algorithms.extend([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
                }
                Some(algorithms)
            }
        }
    }

    fn into_keys(self, validation: &Validation) -> Result<Keys, ConfigError> {
        Ok(match self {
            KeySource::Single(key) => Keys::Single(KeyedValidation::new(None, key, validation)?),
            KeySource::Set(set) => {
                if set.keys.is_empty() {
                    return Err(ConfigError::EmptyKeySet);
                }
                let mut by_kid = HashMap::with_capacity(set.keys.len());
                for (kid, key) in set.keys {
                    let keyed = KeyedValidation::new(Some(&kid), key, validation)?;
                    by_kid.insert(kid, keyed);
                }
                Keys::ByKid(by_kid)
            }
            #[cfg(feature = "jwks")]
            KeySource::Jwks(jwks) => {
                // No key is known yet to probe the crypto provider with; any key will do.
                if !crypto_works(&DecodingKey::from_secret(b"probe"), Algorithm::HS256) {
                    return Err(ConfigError::NoCryptoProvider);
                }
                Keys::Jwks(std::sync::Arc::new(crate::jwks::verify::JwksKeys::new(
                    jwks,
                    validation.clone(),
                )))
            }
        })
    }
}

impl Verifier {
    /// Checks the configuration and prepares per-key validations.
    ///
    /// `max_lifetime`, when set, refuses tokens whose `exp` lies further than that (plus the
    /// leeway) in the future, or that have no `exp`: it is what lets a revocation whose token
    /// expiry is unknown (an admin revoking a bare `jti`) be kept for a bounded time.
    pub fn new(
        keys: KeySource,
        validation: &Validation,
        required_typ: Option<String>,
        missing_jti: MissingJti,
        max_lifetime: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        install_crypto_provider();
        if validation.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithms);
        }
        let validation = &required_when_configured(validation);
        // A validation that accepts exactly one `iss` names the issuer of every token.
        let names = match &validation.iss {
            Some(accepted) if accepted.len() == 1 => accepted.iter().map(|iss| iss.as_str().into()).collect(),
            _ => Vec::new(),
        };
        Self::with_issuers(
            Issuers::One(keys.into_keys(validation)?),
            names,
            required_typ,
            missing_jti,
            max_lifetime,
        )
    }

    /// A verifier for several issuers, each with its validation: `base` with the issuer's
    /// `iss`, and its audience and algorithms where it sets them. With one issuer this is
    /// [`new`](Self::new) with `iss` required.
    pub fn for_issuers(
        issuers: Vec<Issuer>,
        base: &Validation,
        required_typ: Option<String>,
        missing_jti: MissingJti,
        max_lifetime: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        install_crypto_provider();
        let count = issuers.len();
        let mut by_iss = HashMap::with_capacity(count);
        for issuer in issuers {
            #[cfg(feature = "jwks")]
            if let KeySource::Jwks(jwks) = &issuer.keys
                && let Some(discovered) = jwks.issuer()
                && discovered != issuer.iss
            {
                return Err(ConfigError::IssuerMismatch {
                    configured: issuer.iss,
                    discovered: discovered.to_owned(),
                });
            }
            let mut validation = base.clone();
            validation.set_issuer(&[&issuer.iss]);
            if let Some(audience) = &issuer.audience {
                validation.set_audience(audience);
                // An issuer's own audience is checked even where the layer's validation
                // switched audience checks off.
                validation.validate_aud = true;
            }
            if let Some(algorithms) = issuer
                .algorithms
                .clone()
                .or_else(|| issuer.keys.default_algorithms())
            {
                validation.algorithms = algorithms;
            }
            if validation.algorithms.is_empty() {
                return Err(ConfigError::NoAlgorithms);
            }
            let keys = issuer.keys.into_keys(&required_when_configured(&validation))?;
            if by_iss.insert(issuer.iss.clone(), keys).is_some() {
                return Err(ConfigError::DuplicateIssuer(issuer.iss));
            }
        }
        let mut names = Vec::with_capacity(by_iss.len());
        let issuers = match by_iss.len() {
            0 => return Err(ConfigError::NoKey),
            1 => {
                let (iss, keys) = by_iss.into_iter().next().ok_or(ConfigError::NoKey)?;
                names.push(iss.into());
                Issuers::One(keys)
            }
            _ => {
                let mut index = HashMap::with_capacity(by_iss.len());
                let mut all = Vec::with_capacity(by_iss.len());
                for (iss, keys) in by_iss {
                    names.push(iss.as_str().into());
                    index.insert(iss, all.len());
                    all.push(keys);
                }
                Issuers::ByIss(index, all)
            }
        };
        Self::with_issuers(issuers, names, required_typ, missing_jti, max_lifetime)
    }

    fn with_issuers(
        issuers: Issuers,
        names: Vec<std::sync::Arc<str>>,
        required_typ: Option<String>,
        missing_jti: MissingJti,
        max_lifetime: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        if required_typ
            .as_deref()
            .is_some_and(|t| normalize_typ(t).is_empty())
        {
            return Err(ConfigError::EmptyTyp);
        }
        Self {
            issuers,
            keyed: false,
            names,
            required_typ,
            missing_jti,
            max_lifetime: max_lifetime.map(|d| d.as_secs()),
            iat_leeway: None,
        }
        .check_keyable()
    }

    /// How far in the future a token's `iat` may lie before the token is refused
    /// ([`InvalidToken::IssuedInFuture`]); default: the validation's leeway. Subject cutoffs
    /// assume the issuers' clocks are within this of the servers': a token claiming to be
    /// issued later would otherwise survive a "log out everywhere" set before that claim.
    #[must_use]
    pub fn with_iat_leeway(mut self, leeway: Duration) -> Self {
        self.iat_leeway = Some(leeway.as_secs());
        self
    }

    /// Whether the claims this verifier returns carry their issuer for keying session and subject
    /// revocations by issuer ([`Claims::revocation_issuer`], [`TokenFacts::issuer`]). Off by
    /// default: every revocation then applies to the `sid` or `sub` of every issuer, which a
    /// build that predates keying enforces too. The layer turns it on when its backend declares
    /// that the fleet keys ([`RevocationBackend::issuer_keying`](crate::RevocationBackend::issuer_keying)).
    ///
    /// Fails with [`ConfigError::KeyedWithoutIssuer`] for a verifier without issuers
    /// ([`new`](Self::new)): it does not know which issuer a token comes from.
    pub fn key_revocations_by_issuer(mut self, keyed: bool) -> Result<Self, ConfigError> {
        if keyed && self.names.is_empty() {
            return Err(ConfigError::KeyedWithoutIssuer);
        }
        self.keyed = keyed;
        self.check_keyable()
    }

    /// Whether it knows the issuer of every token it verifies (and so can key by it).
    pub(crate) fn knows_issuers(&self) -> bool {
        !self.names.is_empty()
    }

    /// Refuses keying by an issuer no store can file a revocation under.
    fn check_keyable(self) -> Result<Self, ConfigError> {
        let unkeyable = self
            .names
            .iter()
            .find(|name| name.is_empty() || name.contains('\0'))
            .filter(|_| self.keyed);
        match unkeyable {
            Some(name) => Err(ConfigError::UnkeyableIssuer(name.to_string())),
            None => Ok(self),
        }
    }

    /// Verifies `token` and returns its claims. A token naming a key a `Jwks`
    /// does not hold is refused here ([`InvalidToken::UnknownKey`]); the layer instead asks the
    /// key source to fetch and waits for it.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<Claims<C>, InvalidToken> {
        self.check(token, false)
            .map(|verified| verified.claims)
            .map_err(|unverified| match unverified {
                Unverified::Invalid(invalid) => invalid,
                Unverified::KeysUnavailable | Unverified::Wait(_) => InvalidToken::UnknownKey,
            })
    }

    /// The current epoch of issuer `issuer`'s keys (see [`KeyStamp`]): it changes whenever its
    /// key source's key set changes. `None` while those keys may not be used (a `Jwks` whose
    /// refresher is gone and whose set went stale), or for an index no issuer has.
    pub(crate) fn key_epoch(&self, issuer: usize) -> Option<u64> {
        match &self.issuers {
            Issuers::One(keys) => keys.epoch(),
            Issuers::ByIss(_, all) => all.get(issuer)?.epoch(),
        }
    }

    /// Whether every issuer's keys can verify now: a `Jwks` holds a key set it may use (fetched,
    /// and not gone stale with a dead refresher); fixed keys always can.
    pub(crate) fn keys_ready(&self) -> bool {
        let ready = |keys: &Keys| match keys {
            Keys::Single(_) | Keys::ByKid(_) => true,
            #[cfg(feature = "jwks")]
            Keys::Jwks(keys) => keys.has_usable_keys(),
        };
        match &self.issuers {
            Issuers::One(keys) => ready(keys),
            Issuers::ByIss(_, all) => all.iter().all(ready),
        }
    }

    /// The issuer whose keys and validation `token` is verified with, by its unverified `iss`
    /// when there are several.
    fn issuer_of(&self, token: &str) -> Result<(usize, &Keys), Unverified> {
        match &self.issuers {
            Issuers::One(keys) => Ok((0, keys)),
            Issuers::ByIss(index, all) => unverified_issuer(token)
                .and_then(|iss| index.get(iss.as_str()).copied())
                .and_then(|at| Some((at, all.get(at)?)))
                .ok_or(Unverified::Invalid(InvalidToken::Issuer)),
        }
    }

    /// Verifies `token`; with `may_fetch`, a token naming a key the key source may learn by
    /// fetching gets a wait for that fetch instead of a refusal.
    pub(crate) fn check<C: DeserializeOwned>(
        &self,
        token: &str,
        may_fetch: bool,
    ) -> Result<Verified<C>, Unverified> {
        let (issuer, keys) = self.issuer_of(token)?;
        // Read before verifying: a stamp never names keys newer than those that verified.
        let stamp = keys.epoch().map(|epoch| KeyStamp { issuer, epoch });
        let revocation_issuer = self.names.get(issuer).filter(|_| self.keyed);
        let verify = |keyed: &KeyedValidation| {
            self.verify_with::<C>(token, keyed).map(|(mut claims, window)| {
                claims.revocation_issuer = revocation_issuer.cloned();
                Verified {
                    claims,
                    cacheable: window.zip(stamp),
                }
            })
        };
        match keys.with_key(token, verify) {
            Ok(verified) => verified.map_err(Unverified::Invalid),
            Err(KeyMiss::Invalid(invalid)) => Err(Unverified::Invalid(invalid)),
            #[cfg(feature = "jwks")]
            Err(KeyMiss::Fetch { jwks, has_keys }) => {
                if may_fetch {
                    if let Some(wait) = jwks.request_fetch() {
                        return Err(Unverified::Wait(wait));
                    }
                    // No fetch may start now; but one may have ended since this request read
                    // the set, and installed the key: look once more.
                    if let Ok(verified) = keys.with_key(token, verify) {
                        return verified.map_err(Unverified::Invalid);
                    }
                }
                Err(if has_keys {
                    Unverified::Invalid(InvalidToken::UnknownKey)
                } else {
                    Unverified::KeysUnavailable
                })
            }
            #[cfg(not(feature = "jwks"))]
            Err(KeyMiss::Never(_)) => {
                let _ = may_fetch;
                Err(Unverified::Invalid(InvalidToken::UnknownKey))
            }
        }
    }

    fn verify_with<C: DeserializeOwned>(
        &self,
        token: &str,
        keyed: &KeyedValidation,
    ) -> Result<(Claims<C>, Option<Window>), InvalidToken> {
        let data = jsonwebtoken::decode::<Claims<C>>(token, &keyed.key, &keyed.validation)
            .map_err(|e| InvalidToken::from_jwt(&e))?;
        if let Some(required) = &self.required_typ {
            let typ_ok = data
                .header
                .typ
                .as_deref()
                .is_some_and(|typ| normalize_typ(typ).eq_ignore_ascii_case(normalize_typ(required)));
            if !typ_ok {
                return Err(InvalidToken::Type);
            }
        }
        let mut claims = data.claims;
        let now = unix_seconds(SystemTime::now());
        let iat_leeway = self.iat_leeway.unwrap_or(keyed.validation.leeway);
        if claims.iat.is_some_and(|iat| iat > now.saturating_add(iat_leeway)) {
            return Err(InvalidToken::IssuedInFuture);
        }
        if let Some(max_lifetime) = self.max_lifetime {
            let longest = max_lifetime.saturating_add(keyed.validation.leeway);
            let latest = now.saturating_add(longest);
            // Its `exp` is near enough now, and (with `iat`) it was issued with a lifetime
            // within the bound: a subject cutoff older than the bound covers no token that can
            // still be accepted, which is what lets a store purge such cutoffs.
            let too_long = claims.exp.is_none_or(|exp| {
                exp > latest || claims.iat.is_some_and(|iat| exp.saturating_sub(iat) > longest)
            });
            if too_long {
                return Err(InvalidToken::Lifetime);
            }
        }
        if claims.jti.is_none() {
            match self.missing_jti {
                MissingJti::Reject => return Err(InvalidToken::MissingJti),
                MissingJti::Allow => {}
                MissingJti::HashSigningInput => claims.derived_id = Some(signing_input_id(token)),
            }
        }
        let window = self.cache_window(&keyed.validation, &claims);
        Ok((claims, window))
    }

    /// The time during which every time-dependent check above accepts `claims`: from the
    /// latest of `nbf` minus the leeway, `iat` minus the `iat` leeway and `exp` minus the
    /// maximum lifetime and the leeway (what a clock set back would otherwise get past), to
    /// `exp` minus `reject_tokens_expiring_in_less_than` plus the leeway, the same bounds
    /// `jsonwebtoken` and the checks above apply. Everything else verification checks
    /// (signature, `iss`, `aud`, `typ`) depends on the token's bytes alone. `None` when the
    /// expiry is not checked: such a token is never cached, so no entry outlives its token.
    fn cache_window<C>(&self, validation: &Validation, claims: &Claims<C>) -> Option<Window> {
        let exp = claims.exp.filter(|_| validation.validate_exp)?;
        let leeway = validation.leeway;
        let not_before = claims
            .nbf
            .filter(|_| validation.validate_nbf)
            .map_or(0, |nbf| nbf.saturating_sub(leeway));
        let iat_leeway = self.iat_leeway.unwrap_or(leeway);
        let issued = claims.iat.map_or(0, |iat| iat.saturating_sub(iat_leeway));
        let within_lifetime = self
            .max_lifetime
            .map_or(0, |max| exp.saturating_sub(max).saturating_sub(leeway));
        let until = exp
            .saturating_sub(validation.reject_tokens_expiring_in_less_than)
            .saturating_add(leeway);
        Some(Window {
            from: not_before.max(issued).max(within_lifetime),
            until,
        })
    }
}

/// A verified token: its claims, and when and under which keys they may be served from a
/// verified-token cache.
pub(crate) struct Verified<C> {
    pub(crate) claims: Claims<C>,
    /// `None`: not cacheable (its expiry is not checked, or its keys may not be used).
    pub(crate) cacheable: Option<(Window, KeyStamp)>,
}

/// The keys a token was verified with: its issuer (an index into the verifier's issuers) and
/// that issuer's key epoch, read before verifying. An entry of a verified-token cache is served
/// only while [`Verifier::key_epoch`] of its issuer still gives the same epoch, so a key set
/// change of one issuer flushes that issuer's tokens and no other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyStamp {
    pub(crate) issuer: usize,
    pub(crate) epoch: u64,
}

/// `validation`, with `iss` and `aud` required when it names accepted values: `jsonwebtoken`
/// checks each only when the token carries it, so a token without `iss` (or `aud`) would pass
/// any issuer (or audience) check.
fn required_when_configured(validation: &Validation) -> Validation {
    let mut validation = validation.clone();
    if validation.iss.is_some() {
        validation.required_spec_claims.insert("iss".to_owned());
    }
    if validation.aud.is_some() && validation.validate_aud {
        validation.required_spec_claims.insert("aud".to_owned());
    }
    validation
}

/// The `iss` of a token's payload, read before verification only to choose the issuer whose
/// keys and validation then verify it. `None` for a token that is not a JWT or has no string
/// `iss`.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let mut parts = token.splitn(3, '.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let decoded = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let iss: Iss = serde_json::from_slice(&decoded).ok()?;
    iss.iss
}

/// RFC 8725 §3.11 / RFC 7515 §4.1.9: `typ` values are media types, compared case-insensitively,
/// and `application/` may be left out.
pub(crate) fn normalize_typ(typ: &str) -> &str {
    let typ = typ.trim();
    match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}

/// `sha256:` + base64url(SHA-256(header "." payload)).
fn signing_input_id(token: &str) -> String {
    // A verified token has exactly two dots, so the signing input is everything before the last.
    let signing_input = token.rsplit_once('.').map_or(token, |(input, _)| input);
    let digest = Sha256::digest(signing_input.as_bytes());
    let mut id = String::with_capacity(7 + 43);
    id.push_str("sha256:");
    URL_SAFE_NO_PAD.encode_string(digest, &mut id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

    fn now() -> u64 {
        crate::backend::unix_seconds(std::time::SystemTime::now())
    }

    fn token(header: Header, claims: serde_json::Value) -> String {
        install_crypto_provider();
        encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn verifier(missing_jti: MissingJti, typ: Option<&str>) -> Verifier {
        Verifier::new(
            KeySource::Single(DecodingKey::from_secret(SECRET)),
            &Validation::new(Algorithm::HS256),
            typ.map(str::to_owned),
            missing_jti,
            None,
        )
        .unwrap()
    }

    #[test]
    fn valid_token_yields_typed_and_custom_claims() {
        let t = token(
            Header::default(),
            json!({"jti": "j1", "sub": "alice", "sid": "s1", "iat": now(), "exp": now() + 60, "admin": true}),
        );
        let claims: Claims = verifier(MissingJti::Reject, None).verify(&t).unwrap();
        assert_eq!(claims.jti.as_deref(), Some("j1"));
        assert_eq!(claims.sid.as_deref(), Some("s1"));
        assert_eq!(claims.custom.get("admin"), Some(&json!(true)));
        assert_eq!(claims.facts().subject, Some("alice"));
    }

    #[test]
    fn missing_jti_follows_the_policy() {
        let t = token(Header::default(), json!({"sub": "alice", "exp": now() + 60}));
        assert_eq!(
            verifier(MissingJti::Reject, None).verify::<DefaultClaims>(&t),
            Err(InvalidToken::MissingJti)
        );
        let allowed: Claims = verifier(MissingJti::Allow, None).verify(&t).unwrap();
        assert_eq!(allowed.token_id(), None);
        let hashed: Claims = verifier(MissingJti::HashSigningInput, None).verify(&t).unwrap();
        let id = hashed.token_id().unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 43, "{id}");
        assert_eq!(hashed.jti, None);
    }

    #[test]
    fn derived_id_ignores_the_signature_encoding() {
        let t = token(Header::default(), json!({"sub": "a", "exp": now() + 60}));
        let (input, _) = t.rsplit_once('.').unwrap();
        assert_eq!(
            signing_input_id(&t),
            signing_input_id(&format!("{input}.other-signature"))
        );
    }

    #[test]
    fn required_typ_is_compared_as_a_media_type() {
        let v = verifier(MissingJti::Reject, Some("at+jwt"));
        let claims = json!({"jti": "j", "exp": now() + 60});
        for (typ, ok) in [
            (Some("at+jwt"), true),
            (Some("AT+JWT"), true),
            (Some("application/at+jwt"), true),
            (Some("JWT"), false),
            (None, false),
        ] {
            let header = Header {
                typ: typ.map(str::to_owned),
                ..Header::default()
            };
            let result = v.verify::<DefaultClaims>(&token(header, claims.clone()));
            assert_eq!(result.is_ok(), ok, "typ {typ:?}: {result:?}");
            if !ok {
                assert_eq!(result, Err(InvalidToken::Type));
            }
        }
    }

    #[test]
    fn the_cache_window_is_when_every_time_check_accepts() {
        let claims = |value: serde_json::Value| -> Claims { serde_json::from_value(value).unwrap() };
        let window = |from, until| Some(Window { from, until });
        let plain = verifier(MissingJti::Reject, None);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 60;
        let exp_only = claims(json!({"exp": 10_000}));
        assert_eq!(plain.cache_window(&validation, &exp_only), window(0, 10_060));
        validation.reject_tokens_expiring_in_less_than = 100;
        assert_eq!(plain.cache_window(&validation, &exp_only), window(0, 9_960));
        let all = claims(json!({"nbf": 5_000, "iat": 4_000, "exp": 10_000}));
        assert_eq!(
            plain.cache_window(&validation, &all),
            window(3_940, 9_960),
            "iat - leeway"
        );
        validation.validate_nbf = true;
        assert_eq!(
            plain.cache_window(&validation, &all),
            window(4_940, 9_960),
            "nbf - leeway"
        );
        let bounded = Verifier::new(
            KeySource::Single(DecodingKey::from_secret(SECRET)),
            &validation,
            None,
            MissingJti::Reject,
            Some(Duration::from_secs(1_000)),
        )
        .unwrap()
        .with_iat_leeway(Duration::from_secs(5));
        // `exp` at most the maximum lifetime (plus the leeway) from now: from 8 940 on.
        assert_eq!(bounded.cache_window(&validation, &all), window(8_940, 9_960));
        let late_iat = claims(json!({"iat": 9_500, "exp": 10_000}));
        assert_eq!(
            bounded.cache_window(&validation, &late_iat),
            window(9_495, 9_960),
            "iat - its own leeway"
        );
        // Saturating, never panicking, at the ends of the range.
        let extreme = claims(json!({"nbf": 0, "iat": 0, "exp": u64::MAX}));
        assert_eq!(
            bounded.cache_window(&validation, &extreme),
            window(u64::MAX - 1_000 - 60, u64::MAX - 100 + 60)
        );
        assert_eq!(
            plain.cache_window(&validation, &claims(json!({"exp": 0}))),
            window(0, 60)
        );
        // An expiry that is not checked: never cached.
        assert_eq!(
            plain.cache_window(&validation, &claims(json!({"sub": "a"}))),
            None
        );
        validation.validate_exp = false;
        assert_eq!(plain.cache_window(&validation, &exp_only), None);
    }

    #[test]
    fn max_lifetime_bounds_exp() {
        let v = Verifier::new(
            KeySource::Single(DecodingKey::from_secret(SECRET)),
            &Validation::new(Algorithm::HS256),
            None,
            MissingJti::Reject,
            Some(Duration::from_secs(600)),
        )
        .unwrap();
        let ok = token(Header::default(), json!({"jti": "j", "exp": now() + 600}));
        assert!(v.verify::<DefaultClaims>(&ok).is_ok());
        let long = token(Header::default(), json!({"jti": "j", "exp": now() + 601 + 60}));
        assert_eq!(v.verify::<DefaultClaims>(&long), Err(InvalidToken::Lifetime));
        // Issued long ago with a long life: its `exp` is near, but its lifetime is over the bound.
        let old = token(
            Header::default(),
            json!({"jti": "j", "iat": now() - 7200, "exp": now() + 60}),
        );
        assert_eq!(v.verify::<DefaultClaims>(&old), Err(InvalidToken::Lifetime));
        let within = token(
            Header::default(),
            json!({"jti": "j", "iat": now() - 500, "exp": now() + 100}),
        );
        assert!(v.verify::<DefaultClaims>(&within).is_ok());
    }

    #[test]
    fn key_set_selects_by_kid() {
        let set = KeySet::new()
            .with_key("k1", DecodingKey::from_secret(SECRET))
            .with_key("k2", DecodingKey::from_secret(b"another-secret"));
        let v = Verifier::new(
            KeySource::Set(set),
            &Validation::new(Algorithm::HS256),
            None,
            MissingJti::Reject,
            None,
        )
        .unwrap();
        let claims = json!({"jti": "j", "exp": now() + 60});
        let with_kid = |kid: Option<&str>| Header {
            kid: kid.map(str::to_owned),
            ..Header::default()
        };
        assert!(
            v.verify::<DefaultClaims>(&token(with_kid(Some("k1")), claims.clone()))
                .is_ok()
        );
        assert_eq!(
            v.verify::<DefaultClaims>(&token(with_kid(Some("k2")), claims.clone())),
            Err(InvalidToken::BadSignature)
        );
        assert_eq!(
            v.verify::<DefaultClaims>(&token(with_kid(Some("nope")), claims.clone())),
            Err(InvalidToken::UnknownKey)
        );
        assert_eq!(
            v.verify::<DefaultClaims>(&token(with_kid(None), claims)),
            Err(InvalidToken::UnknownKey)
        );
    }

    #[test]
    fn bad_configurations_fail_at_build_time() {
        let hmac = || KeySource::Single(DecodingKey::from_secret(SECRET));
        let mut empty = Validation::new(Algorithm::HS256);
        empty.algorithms.clear();
        assert_eq!(
            Verifier::new(hmac(), &empty, None, MissingJti::Reject, None).err(),
            Some(ConfigError::NoAlgorithms)
        );
        assert!(matches!(
            Verifier::new(
                hmac(),
                &Validation::new(Algorithm::RS256),
                None,
                MissingJti::Reject,
                None,
            ),
            Err(ConfigError::KeyAlgorithmMismatch { .. })
        ));
        assert_eq!(
            Verifier::new(
                KeySource::Set(KeySet::new()),
                &Validation::new(Algorithm::HS256),
                None,
                MissingJti::Reject,
                None,
            )
            .err(),
            Some(ConfigError::EmptyKeySet)
        );
        assert_eq!(
            Verifier::new(
                hmac(),
                &Validation::new(Algorithm::HS256),
                Some(" ".into()),
                MissingJti::Reject,
                None,
            )
            .err(),
            Some(ConfigError::EmptyTyp)
        );
    }

    #[test]
    fn invalid_tokens_are_classified() {
        let v = verifier(MissingJti::Reject, None);
        let expired = token(Header::default(), json!({"jti": "j", "exp": now() - 3600}));
        assert_eq!(v.verify::<DefaultClaims>(&expired), Err(InvalidToken::Expired));
        let hs384 = token(
            Header::new(Algorithm::HS384),
            json!({"jti": "j", "exp": now() + 60}),
        );
        assert_eq!(v.verify::<DefaultClaims>(&hs384), Err(InvalidToken::Algorithm));
        assert_eq!(
            v.verify::<DefaultClaims>("not-a-jwt"),
            Err(InvalidToken::Malformed)
        );
        let string_exp = token(Header::default(), json!({"jti": "j", "exp": "tomorrow"}));
        assert!(v.verify::<DefaultClaims>(&string_exp).is_err());
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"jti":"j","exp":{}}}"#, now() + 60))
        );
        assert!(v.verify::<DefaultClaims>(&none).is_err());
    }
}
