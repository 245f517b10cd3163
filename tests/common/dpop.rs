//! A DPoP client for the tests (RFC 9449 §4.2): proofs signed with the test keys of
//! `tests/keys/jwk/`, assembled by hand so that a test can break any one part of them, and the
//! key thumbprint computed by `jsonwebtoken` (an implementation independent of the crate's).
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tower_jwt_revocation::jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use tower_jwt_revocation::jsonwebtoken::{Algorithm, crypto};

use super::provider::Key;

/// A client's DPoP key pair.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub key: Key,
    pub alg: Algorithm,
}

pub const ES256: Client = Client {
    key: Key::P256,
    alg: Algorithm::ES256,
};
pub const RS256: Client = Client {
    key: Key::RsaB,
    alg: Algorithm::RS256,
};
pub const EDDSA: Client = Client {
    key: Key::Ed25519,
    alg: Algorithm::EdDSA,
};

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg).unwrap().as_str().unwrap().to_owned()
}

impl Client {
    /// The public JWK, as a client puts it in a proof's header.
    pub fn jwk(self) -> Value {
        let mut jwk = self.key.jwk(None, None);
        jwk.as_object_mut().unwrap().remove("use");
        jwk
    }

    /// The RFC 7638 thumbprint of the key, for a token's `cnf.jkt`.
    pub fn jkt(self) -> String {
        tower_jwt_revocation::decode::install_crypto_provider();
        let jwk: Jwk = serde_json::from_value(self.jwk()).unwrap();
        jwk.thumbprint(ThumbprintHash::SHA256).unwrap()
    }

    /// The header of a well-formed proof.
    pub fn header(self) -> Map<String, Value> {
        json!({"typ": "dpop+jwt", "alg": alg_name(self.alg), "jwk": self.jwk()})
            .as_object()
            .unwrap()
            .clone()
    }

    /// The claims of a well-formed proof for `method` on `url` with `token`, issued now.
    pub fn claims(self, method: &str, url: &str, token: &str) -> Map<String, Value> {
        json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": method,
            "htu": url,
            "iat": super::now(),
            "ath": ath(token),
        })
        .as_object()
        .unwrap()
        .clone()
    }

    /// A well-formed proof.
    pub fn proof(self, method: &str, url: &str, token: &str) -> String {
        self.sign(&self.header(), &self.claims(method, url, token))
    }

    /// A proof with this header and these claims, signed with this client's key.
    pub fn sign(self, header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
        tower_jwt_revocation::decode::install_crypto_provider();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(header.clone()).to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
        );
        let signature = crypto::sign(signing_input.as_bytes(), &self.key.encoding_key(), self.alg).unwrap();
        format!("{signing_input}.{signature}")
    }
}

/// The `ath` of `token`, computed here independently of the crate.
pub fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}
