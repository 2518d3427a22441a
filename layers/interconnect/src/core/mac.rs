//! HMAC-SHA256: handshake tags, key derivation and the keyed frame MAC.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The full HMAC-SHA256 of the concatenation of `parts`.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `parts` (compared in constant time).
pub(crate) fn hmac_verify(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).is_ok()
}

/// One direction's frame key, keyed once per connection (the HMAC inner and outer pads are
/// computed here, and each frame clones the keyed state).
#[derive(Clone)]
pub struct FrameKey(HmacSha256);

impl FrameKey {
    /// Keys the frame MAC with a direction key derived by the handshake.
    pub fn new(key: &[u8; 32]) -> FrameKey {
        FrameKey(HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"))
    }

    /// The MAC of `bytes`, truncated to `N` bytes (N <= 32).
    pub(crate) fn tag<const N: usize>(&self, bytes: &[u8]) -> [u8; N] {
        let mut mac = self.0.clone();
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; N];
        tag.copy_from_slice(&full[..N]);
        tag
    }

    /// Whether `tag` is the MAC of `bytes`, truncated to `tag.len()` (constant time).
    pub(crate) fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.verify_truncated_left(tag).is_ok()
    }
}

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKey(..)")
    }
}
