//! One DPoP proof, parsed and checked (RFC 9449 §4.2 and §4.3 steps 1 to 11): the `DPoP`
//! header's JWS, its public key, its signature and its claims against the request it came with.
//!
//! This file owns the proof alone; whether the token is bound to the proof's key, whether the
//! `jti` was seen before and whether the server's nonce is current are decided by the caller
//! ([`super::Dpop`]), which has the token, the replay window and the nonce secret.
//!
//! The proof is read from outside, so it is parsed into a typed value at the edge with a bounded
//! size ([`MAX_PROOF_LEN`]), and every check is a comparison with what the server itself knows:
//! the method, the configured origin followed by the request path (never the `Host` header), the
//! clock and the access token. The cheap checks run before the signature, so a proof that could
//! not pass costs no public-key operation.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::htu::normalize_uri;

/// The longest `DPoP` header accepted, in bytes (a proof with an RSA-4096 key is under 2 KiB).
pub const MAX_PROOF_LEN: usize = 8 * 1024;

/// The longest proof `jti` accepted, in bytes.
pub const MAX_JTI_LEN: usize = 256;

/// Why a DPoP proof was refused (401 `invalid_dpop_proof`). The description is fixed text: it
/// never echoes the proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidProof {
    /// Not a compact JWS of three base64url parts holding JSON objects, or a header with `crit`.
    #[error("malformed DPoP proof")]
    Malformed,
    /// Longer than [`MAX_PROOF_LEN`].
    #[error("DPoP proof too long")]
    TooLong,
    /// The header's `typ` is not `dpop+jwt` (or `application/dpop+jwt`).
    #[error("DPoP proof typ is not dpop+jwt")]
    Type,
    /// The header's `alg` is not in the allow-list (which never holds `none` or an HMAC).
    #[error("DPoP proof algorithm not allowed")]
    Algorithm,
    /// The header's `jwk` holds private key members (`d`, `p`, `q`, ... or a symmetric `k`).
    #[error("DPoP proof carries a private key")]
    PrivateKey,
    /// No `jwk` in the header, or one that is not a public key fitting the `alg`.
    #[error("DPoP proof key unusable")]
    Key,
    /// The signature is not the header key's over the proof.
    #[error("DPoP proof signature invalid")]
    Signature,
    /// `jti`, `htm`, `htu` or `iat` is missing or not of its type, or `jti` is longer than
    /// [`MAX_JTI_LEN`].
    #[error("DPoP proof lacks a required claim")]
    MissingClaim,
    /// `htm` is not the request's method.
    #[error("DPoP proof htm does not match the request method")]
    Method,
    /// `htu` is not the resource's origin followed by the request's path.
    #[error("DPoP proof htu does not match the request URI")]
    Uri,
    /// `iat` is older than the accepted window (plus the leeway).
    #[error("DPoP proof is stale")]
    Stale,
    /// `iat` is further in the future than the leeway.
    #[error("DPoP proof issued in the future")]
    IssuedInFuture,
    /// `ath` is missing or is not the hash of the access token sent with it.
    #[error("DPoP proof ath does not match the access token")]
    TokenHash,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    #[error("DPoP proof key does not match the token binding")]
    KeyMismatch,
}

impl InvalidProof {
    /// The fixed description sent in `error_description`.
    pub fn description(&self) -> &'static str {
        match self {
            InvalidProof::Malformed => "malformed DPoP proof",
            InvalidProof::TooLong => "DPoP proof too long",
            InvalidProof::Type => "DPoP proof typ is not dpop+jwt",
            InvalidProof::Algorithm => "DPoP proof algorithm not allowed",
            InvalidProof::PrivateKey => "DPoP proof carries a private key",
            InvalidProof::Key => "DPoP proof key unusable",
            InvalidProof::Signature => "DPoP proof signature invalid",
            InvalidProof::MissingClaim => "DPoP proof lacks a required claim",
            InvalidProof::Method => "DPoP proof htm does not match the request method",
            InvalidProof::Uri => "DPoP proof htu does not match the request URI",
            InvalidProof::Stale => "DPoP proof is stale",
            InvalidProof::IssuedInFuture => "DPoP proof issued in the future",
            InvalidProof::TokenHash => "DPoP proof ath does not match the access token",
            InvalidProof::KeyMismatch => "DPoP proof key does not match the token binding",
        }
    }
}

/// What a proof is checked against: what the server knows of the request, never what the
/// proof says of it.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request's method, as sent (`GET`, `POST`, ...).
    pub method: &'a str,
    /// The normalized target URI: the resource's origin followed by the request's path (see
    /// [`normalize_uri`]).
    pub uri: &'a str,
    /// The access token the proof must hash (`ath`); `None` for a proof sent without one.
    pub access_token: Option<&'a str>,
    /// The key thumbprint the token is bound to; `None` to accept any key.
    pub jkt: Option<&'a str>,
    /// The time now, in Unix seconds.
    pub now: u64,
    /// How old `iat` may be, in seconds (before the leeway).
    pub max_age: u64,
    /// Clock leeway, in seconds, both ways.
    pub leeway: u64,
}

/// A proof that passed every check [`verify_proof`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub jkt: String,
    /// The proof's id, for the replay check.
    pub jti: String,
    /// When it was made (Unix seconds, rounded down).
    pub iat: u64,
    /// The server nonce it carries, if any.
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct ProofHeader {
    #[serde(default)]
    typ: Option<Value>,
    #[serde(default)]
    alg: Option<Value>,
    #[serde(default)]
    jwk: Option<Map<String, Value>>,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct ProofClaims {
    #[serde(default)]
    jti: Option<Value>,
    #[serde(default)]
    htm: Option<Value>,
    #[serde(default)]
    htu: Option<Value>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    ath: Option<Value>,
    #[serde(default)]
    nonce: Option<Value>,
}

/// JWK members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC
/// 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Checks `proof` (the `DPoP` header's value) against `expected`, with `algorithms` the
/// allow-list, and returns what the caller still has to decide on (its key's thumbprint, `jti`
/// and nonce). Any input, however malformed, gives an `Err`, never a panic.
///
/// A `jsonwebtoken` crypto provider must be installed (the layer's `build()` does it).
pub fn verify_proof(
    proof: &[u8],
    expected: &Expected<'_>,
    algorithms: &[Algorithm],
) -> Result<VerifiedProof, InvalidProof> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(InvalidProof::TooLong);
    }
    let proof = std::str::from_utf8(proof).map_err(|_| InvalidProof::Malformed)?;
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidProof::Malformed);
    };
    if signature_b64.is_empty() {
        return Err(InvalidProof::Malformed);
    }
    let header: ProofHeader = json_part(header_b64)?;
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: an extension we do not understand must not be ignored.
        return Err(InvalidProof::Malformed);
    }
    // A media type, compared case-insensitively, with or without `application/` (RFC 7515
    // §4.1.9).
    let typ = header.typ.as_ref().and_then(Value::as_str);
    let typ = typ.map(|typ| {
        typ.get(..12)
            .filter(|prefix| prefix.eq_ignore_ascii_case("application/"))
            .map_or(typ, |_| &typ[12..])
    });
    if !typ.is_some_and(|typ| typ.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(InvalidProof::Type);
    }
    let alg = header
        .alg
        .as_ref()
        .and_then(Value::as_str)
        .and_then(|alg| Algorithm::from_str(alg).ok())
        .filter(|alg| algorithms.contains(alg))
        .ok_or(InvalidProof::Algorithm)?;
    let jwk = header.jwk.ok_or(InvalidProof::Key)?;
    if PRIVATE_MEMBERS.iter().any(|member| jwk.contains_key(*member)) {
        return Err(InvalidProof::PrivateKey);
    }
    if !key_fits(&jwk, alg) {
        return Err(InvalidProof::Key);
    }
    let jkt = jwk_thumbprint(&jwk).ok_or(InvalidProof::Key)?;

    let claims: ProofClaims = json_part(payload_b64)?;
    let text = |value: &Option<Value>| value.as_ref().and_then(Value::as_str).map(str::to_owned);
    let jti = text(&claims.jti)
        .filter(|jti| !jti.is_empty() && jti.len() <= MAX_JTI_LEN)
        .ok_or(InvalidProof::MissingClaim)?;
    let htm = text(&claims.htm).ok_or(InvalidProof::MissingClaim)?;
    let htu = text(&claims.htu).ok_or(InvalidProof::MissingClaim)?;
    let iat = claims
        .iat
        .as_ref()
        .and_then(Value::as_f64)
        .filter(|iat| iat.is_finite() && *iat >= 0.0)
        .ok_or(InvalidProof::MissingClaim)?;
    if htm != expected.method {
        return Err(InvalidProof::Method);
    }
    if normalize_uri(&htu).as_deref() != Some(expected.uri) {
        return Err(InvalidProof::Uri);
    }
    // Whole seconds: `as` saturates a float too large for u64, and `iat` is finite and >= 0.
    let iat = iat as u64;
    if iat > expected.now.saturating_add(expected.leeway) {
        return Err(InvalidProof::IssuedInFuture);
    }
    if iat
        .saturating_add(expected.max_age)
        .saturating_add(expected.leeway)
        < expected.now
    {
        return Err(InvalidProof::Stale);
    }
    if let Some(token) = expected.access_token {
        let ath = text(&claims.ath).ok_or(InvalidProof::TokenHash)?;
        if ath != token_hash(token) {
            return Err(InvalidProof::TokenHash);
        }
    }
    if expected.jkt.is_some_and(|bound| bound != jkt) {
        return Err(InvalidProof::KeyMismatch);
    }
    let nonce = match &claims.nonce {
        None | Some(Value::Null) => None,
        Some(Value::String(nonce)) => Some(nonce.clone()),
        Some(_) => return Err(InvalidProof::MissingClaim),
    };

    // Last, the public-key operation: the key is the one in the header, so this proves the
    // sender holds its private half.
    let jwk: Jwk = serde_json::from_value(Value::Object(jwk)).map_err(|_| InvalidProof::Key)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| InvalidProof::Key)?;
    let signed = &proof[..header_b64.len() + 1 + payload_b64.len()];
    match jsonwebtoken::crypto::verify(signature_b64, signed.as_bytes(), &key, alg) {
        Ok(true) => Ok(VerifiedProof { jkt, jti, iat, nonce }),
        _ => Err(InvalidProof::Signature),
    }
}

/// A base64url (unpadded) JSON object, bounded by the proof's own bound. Only an object: serde
/// would read a JSON array into the same struct, which RFC 7515 does not allow.
fn json_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, InvalidProof> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| InvalidProof::Malformed)?;
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(InvalidProof::Malformed);
    }
    serde_json::from_slice(&bytes).map_err(|_| InvalidProof::Malformed)
}

/// Whether the JWK is a public key of the family and curve `alg` signs with.
fn key_fits(jwk: &Map<String, Value>, alg: Algorithm) -> bool {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    // A key that names its algorithm signs with that one only (RFC 7517 §4.4).
    let stated = jwk
        .get("alg")
        .map(|stated| stated.as_str().and_then(|name| Algorithm::from_str(name).ok()));
    if stated.is_some_and(|stated| stated != Some(alg)) {
        return false;
    }
    // The members the key needs are the thumbprint's to require (`jwk_thumbprint`).
    match (member("kty"), alg) {
        (Some("RSA"), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
        | (Some("RSA"), Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512) => true,
        (Some("EC"), Algorithm::ES256) => member("crv") == Some("P-256"),
        (Some("EC"), Algorithm::ES384) => member("crv") == Some("P-384"),
        (Some("OKP"), Algorithm::EdDSA) => member("crv") == Some("Ed25519"),
        _ => false,
    }
}

/// The JWS name of an algorithm (`ES256`, `EdDSA`, ...), as `jsonwebtoken` serializes it.
pub(crate) fn alg_name(alg: Algorithm) -> String {
    match serde_json::to_value(alg) {
        Ok(Value::String(name)) => name,
        // An `Algorithm` always serializes to its name; this arm is never taken.
        _ => format!("{alg:?}"),
    }
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of a public key given as a
/// JSON object: the hash of its required members in lexicographic order, without whitespace.
/// `None` for a key type other than `RSA`, `EC` or `OKP`, or a required member that is missing or
/// not a string. This is what a DPoP-bound token's `cnf.jkt` holds.
///
/// ```
/// use tower_jwt_revocation::dpop::jwk_thumbprint;
///
/// // RFC 7638 §3.1's example key.
/// let jwk = serde_json::json!({
///     "kty": "RSA",
///     "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
///     "e": "AQAB",
///     "alg": "RS256",
///     "kid": "2011-04-29"
/// });
/// assert_eq!(
///     jwk_thumbprint(jwk.as_object().unwrap()).as_deref(),
///     Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
/// );
/// ```
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = String::with_capacity(256);
    canonical.push('{');
    for (i, name) in members.iter().enumerate() {
        let value = jwk.get(*name)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        // Member names are fixed ASCII; values are JSON strings, escaped as JSON escapes them.
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":");
        canonical.push_str(&Value::String(value.to_owned()).to_string());
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// The `ath` of an access token: base64url (unpadded) SHA-256 of its ASCII bytes (RFC 9449
/// §4.2).
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_need_the_required_members() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "kid": "ignored"});
        let same = serde_json::json!({"y": "b", "x": "a", "crv": "P-256", "kty": "EC"});
        assert_eq!(
            jwk_thumbprint(ec.as_object().unwrap()),
            jwk_thumbprint(same.as_object().unwrap())
        );
        let no_y = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "a"});
        assert_eq!(jwk_thumbprint(no_y.as_object().unwrap()), None);
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(jwk_thumbprint(oct.as_object().unwrap()), None);
        let number = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": 1});
        assert_eq!(jwk_thumbprint(number.as_object().unwrap()), None);
    }

    /// A proof whose header and claims are these, with a signature nobody made: the checks
    /// before the signature decide what it is refused for, so each bound can be tested at its
    /// edge with a fixed clock.
    fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode([7u8; 64])
        )
    }

    const NOW: u64 = 1_000_000;

    /// What the edge tests check against: `GET https://a.example/` at [`NOW`], a 60 s window
    /// with 5 s of leeway, no token hash or binding asked for.
    const AT_NOW: Expected<'static> = Expected {
        method: "GET",
        uri: "https://a.example/",
        access_token: None,
        jkt: None,
        now: NOW,
        max_age: 60,
        leeway: 5,
    };

    fn refusal(claims: serde_json::Value) -> InvalidProof {
        let jwk: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/keys/jwk/p256.json")).unwrap();
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let mut full = serde_json::json!({"jti": "j", "htm": "GET", "htu": "https://a.example/", "iat": NOW});
        full.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        crate::verify::install_crypto_provider();
        verify_proof(unsigned(header, full).as_bytes(), &AT_NOW, &[Algorithm::ES256]).unwrap_err()
    }

    #[test]
    fn iat_is_bounded_at_exactly_max_age_plus_leeway_and_the_leeway_ahead() {
        // Past every claim check, an unsigned proof is refused for its signature.
        assert_eq!(refusal(serde_json::json!({})), InvalidProof::Signature);
        assert_eq!(
            refusal(serde_json::json!({"iat": NOW + 5})),
            InvalidProof::Signature
        );
        assert_eq!(
            refusal(serde_json::json!({"iat": NOW + 6})),
            InvalidProof::IssuedInFuture
        );
        assert_eq!(
            refusal(serde_json::json!({"iat": NOW - 65})),
            InvalidProof::Signature
        );
        assert_eq!(refusal(serde_json::json!({"iat": NOW - 66})), InvalidProof::Stale);
        assert_eq!(
            refusal(serde_json::json!({"iat": NOW - 1_000})),
            InvalidProof::Stale
        );
        // A fraction is rounded down; a negative or text `iat` is no `iat`; a huge one saturates
        // into the future.
        assert_eq!(
            refusal(serde_json::json!({"iat": NOW as f64 + 5.9})),
            InvalidProof::Signature
        );
        assert_eq!(
            refusal(serde_json::json!({"iat": -5})),
            InvalidProof::MissingClaim
        );
        assert_eq!(
            refusal(serde_json::json!({"iat": -5.5})),
            InvalidProof::MissingClaim
        );
        assert_eq!(
            refusal(serde_json::json!({"iat": 1e300})),
            InvalidProof::IssuedInFuture
        );
        assert_eq!(
            refusal(serde_json::json!({"iat": "soon"})),
            InvalidProof::MissingClaim
        );
    }

    #[test]
    fn a_proof_of_exactly_the_bound_is_read() {
        let expected = AT_NOW;
        assert_eq!(
            verify_proof(&vec![b'a'; MAX_PROOF_LEN], &expected, &[Algorithm::ES256]),
            Err(InvalidProof::Malformed)
        );
        assert_eq!(
            verify_proof(&vec![b'a'; MAX_PROOF_LEN + 1], &expected, &[Algorithm::ES256]),
            Err(InvalidProof::TooLong)
        );
    }

    #[test]
    fn garbage_is_refused_without_a_panic() {
        let expected = Expected {
            access_token: Some("t"),
            ..AT_NOW
        };
        let algorithms = [Algorithm::ES256];
        for input in [
            &b""[..],
            b".",
            b"..",
            b"a.b.c",
            b"a.b.c.d",
            b"\xff.\xff.\xff",
            b"eyJ9.e30.c2ln",
            b"e30.e30.",
        ] {
            assert!(verify_proof(input, &expected, &algorithms).is_err());
        }
        assert_eq!(
            verify_proof(&vec![b'a'; MAX_PROOF_LEN + 1], &expected, &algorithms),
            Err(InvalidProof::TooLong)
        );
    }
}
