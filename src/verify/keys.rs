//! Where keys come from ([`KeySource`]: one key, a [`KeySet`] by `kid`, or a `Jwks`), the
//! accepted issuers ([`Issuer`]), and the prepared keys of each that the verifier chooses from.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

#[cfg(feature = "jwks")]
use super::algorithms::{ASYMMETRIC_ALGORITHMS, crypto_works};
use super::error::InvalidToken;
use super::validation::{KeyMiss, KeyedValidation};
use crate::config::ConfigError;

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

/// The keys of one issuer (or of the only key source), each with its validation.
#[derive(Clone)]
// One per issuer, never moved on the request path: the size difference costs nothing, and
// boxing would add an indirection to every verification.
#[allow(clippy::large_enum_variant)]
pub(super) enum Keys {
    Single(KeyedValidation),
    ByKid(HashMap<String, KeyedValidation>),
    #[cfg(feature = "jwks")]
    Jwks(std::sync::Arc<super::jwks_keys::JwksKeys>),
}

impl Keys {
    /// Runs `verify` with the key `token` names, or says why there is none.
    pub(super) fn with_key<R>(
        &self,
        token: &str,
        verify: impl FnOnce(&KeyedValidation) -> R,
    ) -> Result<R, KeyMiss<'_>> {
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
    pub(super) fn epoch(&self) -> Option<u64> {
        match self {
            Keys::Single(_) | Keys::ByKid(_) => Some(0),
            #[cfg(feature = "jwks")]
            Keys::Jwks(keys) => keys.epoch(),
        }
    }

    pub(super) fn kids(&self) -> Vec<String> {
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
pub(super) enum Issuers {
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

    pub(super) fn into_keys(self, validation: &Validation) -> Result<Keys, ConfigError> {
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
                Keys::Jwks(std::sync::Arc::new(super::jwks_keys::JwksKeys::new(
                    jwks,
                    validation.clone(),
                )))
            }
        })
    }
}
