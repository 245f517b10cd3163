//! One key with the validation narrowed to its algorithms ([`KeyedValidation`]), and why a key
//! source had none for a token ([`KeyMiss`]): what the key sources hand the verifier.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::algorithms::crypto_works;
use super::error::InvalidToken;
use crate::config::ConfigError;

/// One key with the validation restricted to the algorithms it may verify, so `jsonwebtoken`
/// never sees an allow-list mixing families (which it refuses on every request) and a token's
/// `alg` always has to fit its key.
#[derive(Clone)]
pub(crate) struct KeyedValidation {
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
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
