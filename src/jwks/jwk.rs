//! Reading a JSON Web Key Set (RFC 7517) into verification keys.
//!
//! This module owns the rules for which published keys the layer will ever verify with: RSA
//! (RS256/384/512, PS256/384/512; at least 2048 bits), EC on P-256 (ES256) and P-384 (ES384),
//! OKP Ed25519 (EdDSA), and `oct` (HMAC) only when explicitly allowed. Each key is read on its
//! own, so one key the crate does not understand (an encryption key, a P-521 curve, a malformed
//! member) is skipped and counted instead of failing the whole set. A key's algorithm is its
//! `alg` when present (it must fit the key's type and curve), else every algorithm the type and
//! curve allow; the layer's allow-list is applied when a token is verified.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// One usable verification key from a JWKS.
#[derive(Clone)]
pub(crate) struct JwkKey {
    /// The key's `kid`, if it has one.
    pub(crate) kid: Option<String>,
    /// The key.
    pub(crate) key: DecodingKey,
    /// The algorithms this key may verify: its `alg`, or every algorithm its type allows.
    pub(crate) algorithms: &'static [Algorithm],
}

impl std::fmt::Debug for JwkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwkKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A parsed key set: the usable keys and how many published keys were skipped.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) keys: Vec<JwkKey>,
    pub(crate) skipped: usize,
}

/// Why a document is not a key set at all (as opposed to holding keys this crate skips).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotAKeySet {
    /// Not JSON, or not an object with a `keys` array.
    Shape,
}

/// The members of a JWK this crate reads; unknown members are ignored, as RFC 7517 §4 says.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Reads `document` as a JWKS. Keys that cannot be used are skipped; an error means the document
/// is not a key set at all.
pub(crate) fn parse(document: &[u8], allow_symmetric: bool) -> Result<Parsed, NotAKeySet> {
    let set: RawSet = serde_json::from_slice(document).map_err(|_| NotAKeySet::Shape)?;
    let mut parsed = Parsed::default();
    for value in set.keys {
        match serde_json::from_value::<RawJwk>(value)
            .ok()
            .and_then(|raw| usable(raw, allow_symmetric))
        {
            Some(key) => parsed.keys.push(key),
            None => parsed.skipped += 1,
        }
    }
    Ok(parsed)
}

/// RS256/384/512 and PS256/384/512: the first six of the asymmetric algorithms.
const RSA: &[Algorithm] = crate::verify::algorithms::ASYMMETRIC_ALGORITHMS.split_at(6).0;
const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;

/// The key `raw` describes, or `None` when this crate must not or cannot verify with it.
fn usable(raw: RawJwk, allow_symmetric: bool) -> Option<JwkKey> {
    // RFC 7517 §4.2/4.3: a key for encryption, or one whose operations exclude verifying, is not
    // a signature key.
    if raw.key_use.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if raw
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return None;
    }
    let (key, allowed): (DecodingKey, &'static [Algorithm]) = match raw.kty.as_deref()? {
        "RSA" => {
            let n = decode(raw.n.as_deref()?)?;
            let e = decode(raw.e.as_deref()?)?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES || e.is_empty() || e.len() > 8 {
                return None;
            }
            (DecodingKey::from_rsa_raw_components(&n, &e), RSA)
        }
        "EC" => {
            let (len, algorithms): (usize, &'static [Algorithm]) = match raw.crv.as_deref()? {
                "P-256" => (32, &[Algorithm::ES256]),
                "P-384" => (48, &[Algorithm::ES384]),
                _ => return None,
            };
            let x = decode(raw.x.as_deref()?)?;
            let y = decode(raw.y.as_deref()?)?;
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (DecodingKey::from_ec_der(&point), algorithms)
        }
        "OKP" => {
            if raw.crv.as_deref()? != "Ed25519" {
                return None;
            }
            let x = decode(raw.x.as_deref()?)?;
            if x.len() != 32 {
                return None;
            }
            (DecodingKey::from_ed_der(&x), &[Algorithm::EdDSA])
        }
        "oct" if allow_symmetric => {
            let k = decode(raw.k.as_deref()?)?;
            // RFC 7518 §3.2: an HMAC key at least as long as the hash output; below 32 bytes
            // no HS algorithm is safe.
            if k.len() < 32 {
                return None;
            }
            (DecodingKey::from_secret(&k), HMAC)
        }
        _ => return None,
    };
    let algorithms = match raw.alg.as_deref() {
        None => allowed,
        Some(alg) => {
            let alg: Algorithm = alg.parse().ok()?;
            let position = allowed.iter().position(|a| *a == alg)?;
            &allowed[position..=position]
        }
    };
    Some(JwkKey {
        kid: raw.kid,
        key,
        algorithms,
    })
}

/// Base64url without padding, as RFC 7518 writes key members; padded input is tolerated.
fn decode(member: &str) -> Option<Vec<u8>> {
    let trimmed = member.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD.decode(trimmed).ok()?;
    (!bytes.is_empty()).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(len: usize, byte: u8) -> String {
        URL_SAFE_NO_PAD.encode(vec![byte; len])
    }

    fn rsa(extra: serde_json::Value) -> serde_json::Value {
        let mut key = json!({"kty": "RSA", "kid": "r", "n": b64(256, 0xc3), "e": "AQAB"});
        key.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        key
    }

    fn parse_keys(keys: Vec<serde_json::Value>, allow_symmetric: bool) -> Parsed {
        parse(json!({ "keys": keys }).to_string().as_bytes(), allow_symmetric).unwrap()
    }

    #[test]
    fn a_document_that_is_not_a_key_set_is_an_error() {
        for document in [&b"<html>"[..], b"{}", b"{\"keys\": 5}", b"[]", b""] {
            assert_eq!(parse(document, false).err(), Some(NotAKeySet::Shape));
        }
    }

    #[test]
    fn keys_are_read_one_by_one() {
        let parsed = parse_keys(
            vec![
                rsa(json!({})),
                json!({"kty": "EC", "crv": "P-256", "x": b64(32, 1), "y": b64(32, 2), "kid": "e"}),
                json!({"kty": "EC", "crv": "P-384", "x": b64(48, 1), "y": b64(48, 2)}),
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(32, 3), "kid": "d"}),
                // Skipped: encryption use, P-521, X25519, short RSA, short EC member, wrong
                // alg for the type, unknown kty, not an object, a symmetric key.
                rsa(json!({"use": "enc"})),
                rsa(json!({"key_ops": ["encrypt"]})),
                json!({"kty": "EC", "crv": "P-521", "x": b64(66, 1), "y": b64(66, 2)}),
                json!({"kty": "OKP", "crv": "X25519", "x": b64(32, 3)}),
                json!({"kty": "RSA", "n": b64(128, 0xc3), "e": "AQAB"}),
                json!({"kty": "EC", "crv": "P-256", "x": b64(31, 1), "y": b64(32, 2)}),
                rsa(json!({"alg": "ES256"})),
                rsa(json!({"alg": "RSA-OAEP"})),
                json!({"kty": "foo"}),
                json!("not a key"),
                json!({"kty": "oct", "k": b64(32, 7)}),
            ],
            false,
        );
        let summary: Vec<_> = parsed
            .keys
            .iter()
            .map(|k| (k.kid.clone(), k.algorithms.to_vec()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some("r".into()), RSA.to_vec()),
                (Some("e".into()), vec![Algorithm::ES256]),
                (None, vec![Algorithm::ES384]),
                (Some("d".into()), vec![Algorithm::EdDSA]),
            ]
        );
        assert_eq!(parsed.skipped, 11);
    }

    #[test]
    fn alg_narrows_the_key_to_one_algorithm() {
        let parsed = parse_keys(vec![rsa(json!({"alg": "PS384", "use": "sig"}))], false);
        assert_eq!(parsed.keys[0].algorithms, &[Algorithm::PS384]);
    }

    #[test]
    fn symmetric_keys_only_when_allowed() {
        let oct = || json!({"kty": "oct", "k": b64(32, 7), "alg": "HS256"});
        assert_eq!(parse_keys(vec![oct()], false).keys.len(), 0);
        let allowed = parse_keys(vec![oct(), json!({"kty": "oct", "k": b64(16, 7)})], true);
        assert_eq!(allowed.keys.len(), 1);
        assert_eq!(allowed.keys[0].algorithms, &[Algorithm::HS256]);
        assert_eq!(allowed.skipped, 1);
    }
}
