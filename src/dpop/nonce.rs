//! Server nonces (RFC 9449 §9): values a proof must carry once the resource server asks for
//! them, so that a proof cannot be made further ahead than a nonce lives. Any client, with or
//! without credentials, gets the current nonce from any 401: a nonce bounds how long a stolen
//! key can pre-sign proofs (up to two lifetimes), not who can sign them.
//!
//! The nonces are stateless: a nonce is the number of the time slot it was issued in and an
//! HMAC-SHA256 of that number under a secret, so every instance given the same secret issues and
//! accepts the same nonces without sharing any state. A nonce is accepted in the slot it was
//! issued in and the next one, so it lives between one and two [lifetimes](super::DpopConfig::nonce_lifetime).
//! What this does not give: a nonce per client or per request (a nonce is shared by every client
//! in its slot); replays are the replay window's job; a `DPoP-Nonce` on successful responses
//! (clients then learn the next nonce before theirs expires; here they learn it from a
//! `use_dpop_nonce` 401 and retry once).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The shortest secret accepted, in bytes.
pub const MIN_NONCE_SECRET_LEN: usize = 32;

/// SHA-256's block size.
const BLOCK: usize = 64;
/// The truncated MAC's length in a nonce, in bytes (128 bits).
const MAC_LEN: usize = 16;

/// Issues and checks nonces under one secret.
#[derive(Clone)]
pub(crate) struct Nonces {
    /// The key XOR ipad and XOR opad, as HMAC (RFC 2104) uses them.
    inner_key: [u8; BLOCK],
    outer_key: [u8; BLOCK],
    lifetime: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// Nonces under `secret` (at least [`MIN_NONCE_SECRET_LEN`] bytes, checked by the caller),
    /// each issued for `lifetime` (at least one second).
    pub(crate) fn new(secret: &[u8], lifetime: Duration) -> Self {
        let mut key = [0u8; BLOCK];
        if secret.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        Self {
            inner_key: key.map(|b| b ^ 0x36),
            outer_key: key.map(|b| b ^ 0x5c),
            lifetime: lifetime.as_secs().max(1),
        }
    }

    fn mac(&self, slot: u64) -> [u8; MAC_LEN] {
        let inner = Sha256::new()
            .chain_update(self.inner_key)
            .chain_update(b"dpop-nonce")
            .chain_update(slot.to_be_bytes())
            .finalize();
        let outer = Sha256::new()
            .chain_update(self.outer_key)
            .chain_update(inner)
            .finalize();
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&outer[..MAC_LEN]);
        mac
    }

    /// The nonce to hand out at `now` (Unix seconds).
    pub(crate) fn issue(&self, now: u64) -> String {
        let slot = now / self.lifetime;
        let mut raw = [0u8; 8 + MAC_LEN];
        raw[..8].copy_from_slice(&slot.to_be_bytes());
        raw[8..].copy_from_slice(&self.mac(slot));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was issued under this secret in the current slot or the one before.
    pub(crate) fn accepts(&self, nonce: &str, now: u64) -> bool {
        let mut raw = [0u8; 8 + MAC_LEN];
        if nonce.len() != URL_SAFE_NO_PAD.encode(raw).len()
            || URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) != Ok(raw.len())
        {
            return false;
        }
        let mut slot = [0u8; 8];
        slot.copy_from_slice(&raw[..8]);
        let slot = u64::from_be_bytes(slot);
        let current = now / self.lifetime;
        if slot != current && slot.checked_add(1) != Some(current) {
            return false;
        }
        // Compared without an early exit, so the time taken says nothing about the MAC.
        self.mac(slot)
            .iter()
            .zip(&raw[8..])
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_nonce_lives_for_its_slot_and_the_next() {
        let nonces = Nonces::new(SECRET, Duration::from_secs(60));
        let nonce = nonces.issue(1_000);
        assert!(nonces.accepts(&nonce, 1_000));
        assert!(nonces.accepts(&nonce, 1_019)); // the end of slot 16
        assert!(nonces.accepts(&nonce, 1_079)); // slot 17
        assert!(!nonces.accepts(&nonce, 1_080)); // slot 18: too old
        assert!(!nonces.accepts(&nonce, 959)); // slot 15: issued in the future
    }

    #[test]
    fn only_this_secrets_nonces_are_accepted() {
        let nonces = Nonces::new(SECRET, Duration::from_secs(60));
        let other = Nonces::new(
            b"another secret, just as long as that one",
            Duration::from_secs(60),
        );
        assert!(!nonces.accepts(&other.issue(1_000), 1_000));
        let mut tampered = nonces.issue(1_000).into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(!nonces.accepts(std::str::from_utf8(&tampered).unwrap(), 1_000));
        for garbage in ["", "x", "!!!!", &"A".repeat(32), &"A".repeat(33)] {
            assert!(!nonces.accepts(garbage, 1_000), "{garbage:?}");
        }
        // Two instances with the same secret agree.
        let twin = Nonces::new(SECRET, Duration::from_secs(60));
        assert!(twin.accepts(&nonces.issue(1_000), 1_000));
    }
}
