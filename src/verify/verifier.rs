//! The [`Verifier`]: built once from the layer's configuration, it chooses the issuer and key
//! for a token, verifies it with `jsonwebtoken`, applies the checks `jsonwebtoken` has no
//! setting for (`typ`, lifetime, `iat` in the future, a missing `jti`), and says how long the
//! result may be served from the verified-token cache.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::algorithms::install_crypto_provider;
use super::claims::{Claims, MissingJti};
use super::error::InvalidToken;
use super::keys::{Issuer, Issuers, KeySource, Keys};
use super::token_cache::{KeyStamp, Window};
use super::validation::{KeyMiss, KeyedValidation};
use crate::backend::unix_seconds;
use crate::config::ConfigError;

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
    pub(super) issuers: Issuers,
    /// Each issuer's `iss`, by index (empty for a verifier of keys without issuers).
    pub(super) names: Vec<std::sync::Arc<str>>,
    /// Whether claims carry their issuer for keying revocations ([`Claims::revocation_issuer`]).
    pub(super) keyed: bool,
    pub(super) required_typ: Option<String>,
    pub(super) missing_jti: MissingJti,
    pub(super) max_lifetime: Option<u64>,
    /// How far in the future an `iat` may lie (seconds); `None`: the validation's leeway.
    pub(super) iat_leeway: Option<u64>,
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
    /// revocations by issuer ([`Claims::revocation_issuer`], [`TokenFacts::issuer`](crate::TokenFacts::issuer)). Off by
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
    /// key source to fetch and waits for it. It checks the token alone: a `cnf` binding (a DPoP
    /// `jkt`) is the caller's to enforce, as the layer does ([`crate::dpop`]); refuse a token with
    /// [`Claims::cnf`] where no proof is checked.
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
    pub(super) fn cache_window<C>(&self, validation: &Validation, claims: &Claims<C>) -> Option<Window> {
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

/// `validation`, with `iss` and `aud` required when it names accepted values: `jsonwebtoken`
/// checks each only when the token carries it, so a token without `iss` (or `aud`) would pass
/// any issuer (or audience) check.
pub(super) fn required_when_configured(validation: &Validation) -> Validation {
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
pub(super) fn unverified_issuer(token: &str) -> Option<String> {
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
pub(super) fn signing_input_id(token: &str) -> String {
    // A verified token has exactly two dots, so the signing input is everything before the last.
    let signing_input = token.rsplit_once('.').map_or(token, |(input, _)| input);
    let digest = Sha256::digest(signing_input.as_bytes());
    let mut id = String::with_capacity(7 + 43);
    id.push_str("sha256:");
    URL_SAFE_NO_PAD.encode_string(digest, &mut id);
    id
}
