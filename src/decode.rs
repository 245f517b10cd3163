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
use jsonwebtoken::{DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Revocation, TokenFacts, far_future, from_unix_seconds, saturating_add, unix_seconds};
use crate::config::ConfigError;

/// The claim type used when the application names none: every claim the token carries beyond
/// the registered ones, as JSON.
pub type DefaultClaims = serde_json::Map<String, serde_json::Value>;

/// The verified claims of a request's token, inserted into the request's extensions.
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
    /// The application's own claims.
    #[serde(flatten)]
    pub custom: C,
    /// The id derived under [`MissingJti::HashSigningInput`] for a token without `jti`.
    #[serde(skip)]
    derived_id: Option<String>,
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
    /// itself). `None` for a token without `sid`.
    pub fn session_revocation(&self, longest_token_lifetime: Duration) -> Option<Revocation<'_>> {
        let sid = self.sid.as_deref()?;
        let own = self.exp.map_or_else(far_future, from_unix_seconds);
        let until = saturating_add(SystemTime::now(), longest_token_lifetime).max(own);
        Some(Revocation::session(sid, until).owner(self.sub.as_deref()))
    }

    /// A cutoff for this token's subject at this moment ("log out everywhere"): every token of
    /// the subject issued up to now is revoked, this one included even when its issuer's clock
    /// runs ahead (the cutoff is at least its `iat`). `None` for a token without `sub`.
    pub fn subject_revocation(&self) -> Option<Revocation<'_>> {
        let own = self.iat.map_or(std::time::UNIX_EPOCH, from_unix_seconds);
        Some(Revocation::subject(
            self.sub.as_deref()?,
            SystemTime::now().max(own),
        ))
    }

    /// The facts the backend checks, borrowed from these claims.
    pub fn facts(&self) -> TokenFacts<'_> {
        TokenFacts {
            jti: self.token_id(),
            session_id: self.sid.as_deref(),
            subject: self.sub.as_deref(),
            issued_at: self.iat,
            expires_at: self.exp,
        }
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

    fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
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

/// One key with the validation restricted to the algorithms of its family, so `jsonwebtoken`
/// never sees an allow-list mixing families (which it refuses on every request).
#[derive(Clone)]
struct KeyedValidation {
    key: DecodingKey,
    validation: Validation,
}

impl KeyedValidation {
    fn new(kid: Option<&str>, key: DecodingKey, validation: &Validation) -> Result<Self, ConfigError> {
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
}

#[derive(Clone)]
// One per layer, never moved on the request path: the size difference costs nothing, and
// boxing would add an indirection to every verification.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Single(KeyedValidation),
    ByKid(HashMap<String, KeyedValidation>),
}

/// The token verifier the layer builds once from its configuration and uses for every request.
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    required_typ: Option<String>,
    missing_jti: MissingJti,
    max_lifetime: Option<u64>,
    /// How far in the future an `iat` may lie (seconds); `None`: the validation's leeway.
    iat_leeway: Option<u64>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = match &self.keys {
            Keys::Single(_) => Vec::new(),
            Keys::ByKid(map) => map.keys().map(String::as_str).collect(),
        };
        f.debug_struct("Verifier")
            .field("kids", &kids)
            .field("required_typ", &self.required_typ)
            .field("missing_jti", &self.missing_jti)
            .field("max_lifetime", &self.max_lifetime)
            .field("iat_leeway", &self.iat_leeway)
            .finish_non_exhaustive()
    }
}

/// Where the verifier's keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// One key for every token.
    Single(DecodingKey),
    /// A key chosen by the token header's `kid`.
    Set(KeySet),
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
        if required_typ
            .as_deref()
            .is_some_and(|t| normalize_typ(t).is_empty())
        {
            return Err(ConfigError::EmptyTyp);
        }
        let keys = match keys {
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
        };
        Ok(Self {
            keys,
            required_typ,
            missing_jti,
            max_lifetime: max_lifetime.map(|d| d.as_secs()),
            iat_leeway: None,
        })
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

    /// Verifies `token` and returns its claims.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<Claims<C>, InvalidToken> {
        let keyed = match &self.keys {
            Keys::Single(keyed) => keyed,
            Keys::ByKid(map) => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| InvalidToken::from_jwt(&e))?;
                header
                    .kid
                    .as_deref()
                    .and_then(|kid| map.get(kid))
                    .ok_or(InvalidToken::UnknownKey)?
            }
        };
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
            let latest = now
                .saturating_add(max_lifetime)
                .saturating_add(keyed.validation.leeway);
            if claims.exp.is_none_or(|exp| exp > latest) {
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
        Ok(claims)
    }
}

/// RFC 8725 §3.11 / RFC 7515 §4.1.9: `typ` values are media types, compared case-insensitively,
/// and `application/` may be left out.
fn normalize_typ(typ: &str) -> &str {
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
