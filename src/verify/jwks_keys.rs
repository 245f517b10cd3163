//! Choosing a [`Jwks`] key for a token, under one issuer's validation.
//!
//! This module owns the per-issuer view of a key set: each fetched key paired with the
//! validation it verifies under (the issuer's, with the algorithms narrowed to those the key
//! may verify *and* the allow-list names), derived once per fetched set and swapped in as
//! atomically as the set itself. A request reads two pointers and a map; a token whose `kid`
//! (or, without one, whose `alg`) matches no key asks the key source for a fetch.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Validation;

use super::error::InvalidToken;
use super::validation::{KeyMiss, KeyedValidation};
use crate::jwks::{Jwks, KeySnapshot};

/// One issuer's use of a [`Jwks`].
pub(crate) struct JwksKeys {
    jwks: Jwks,
    validation: Validation,
    derived: ArcSwapOption<Derived>,
}

/// The keys of one fetched set, ready to verify with.
struct Derived {
    /// The set these were derived from (compared by pointer).
    source: Arc<KeySnapshot>,
    by_kid: HashMap<String, KeyedValidation>,
    /// Every usable key, for tokens without `kid`.
    all: Vec<KeyedValidation>,
}

impl JwksKeys {
    pub(crate) fn new(jwks: Jwks, validation: Validation) -> Self {
        Self {
            jwks,
            validation,
            derived: ArcSwapOption::empty(),
        }
    }

    /// Whether a key set is held that may be used.
    pub(crate) fn has_usable_keys(&self) -> bool {
        self.jwks
            .snapshot()
            .as_ref()
            .is_some_and(|snapshot| self.jwks.usable(snapshot))
    }

    pub(crate) fn epoch(&self) -> Option<u64> {
        self.jwks.key_epoch()
    }

    pub(crate) fn kids(&self) -> Vec<String> {
        self.jwks
            .snapshot()
            .as_ref()
            .map(|snapshot| snapshot.by_kid.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn derive(&self, source: &Arc<KeySnapshot>) -> Derived {
        let mut by_kid = HashMap::with_capacity(source.by_kid.len());
        let mut all = Vec::with_capacity(source.keys.len());
        for key in &source.keys {
            let mut validation = self.validation.clone();
            validation
                .algorithms
                .retain(|algorithm| key.algorithms.contains(algorithm));
            if validation.algorithms.is_empty() {
                // The key verifies only algorithms this issuer does not accept.
                continue;
            }
            let keyed = KeyedValidation::unchecked(key.key.clone(), validation);
            if let Some(kid) = &key.kid {
                by_kid.entry(kid.clone()).or_insert_with(|| keyed.clone());
            }
            all.push(keyed);
        }
        Derived {
            source: Arc::clone(source),
            by_kid,
            all,
        }
    }

    /// Runs `verify` with the key `token` names, or says why there is none.
    pub(crate) fn with_key<R>(
        &self,
        token: &str,
        verify: impl FnOnce(&KeyedValidation) -> R,
    ) -> Result<R, KeyMiss<'_>> {
        let snapshot = self.jwks.snapshot();
        let Some(snapshot) = snapshot.as_ref().filter(|snapshot| self.jwks.usable(snapshot)) else {
            return Err(KeyMiss::Fetch {
                jwks: &self.jwks,
                has_keys: false,
            });
        };
        let current = self.derived.load();
        let fresh;
        let derived: &Derived = match current.as_ref() {
            Some(derived) if Arc::ptr_eq(&derived.source, snapshot) => derived,
            _ => {
                // The first request after a refresh derives the new keys; concurrent ones may
                // too, and the last store wins: each is complete.
                fresh = Arc::new(self.derive(snapshot));
                self.derived.store(Some(Arc::clone(&fresh)));
                &fresh
            }
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| KeyMiss::Invalid(InvalidToken::from_jwt(&e)))?;
        if !self.validation.algorithms.contains(&header.alg) {
            // Refused before any lookup: an algorithm outside the allow-list never asks for a
            // fetch (nor picks a key of another family).
            return Err(KeyMiss::Invalid(InvalidToken::Algorithm));
        }
        let keyed = match header.kid.as_deref() {
            Some(kid) => match derived.by_kid.get(kid) {
                // The set has the key, but for algorithms this issuer does not accept: a
                // refetch would not change that.
                None if snapshot.by_kid.contains_key(kid) => {
                    return Err(KeyMiss::Invalid(InvalidToken::Algorithm));
                }
                keyed => keyed,
            },
            None => {
                // Without a `kid`, a key is chosen only when exactly one fits the token's `alg`
                // (the one-key set of many small providers); trying several would let one bogus
                // token cost several verifications.
                let mut fitting = derived.all.iter().filter(|keyed| keyed.accepts(header.alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(only),
                    (Some(_), Some(_)) => return Err(KeyMiss::Invalid(InvalidToken::UnknownKey)),
                    (None, _) => None,
                }
            }
        };
        match keyed {
            Some(keyed) => Ok(verify(keyed)),
            None => Err(KeyMiss::Fetch {
                jwks: &self.jwks,
                has_keys: true,
            }),
        }
    }
}
