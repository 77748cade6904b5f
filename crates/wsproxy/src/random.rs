//! Random numbers that need no secrecy: masking keys and the keepalive
//! ping token.

use std::hash::{BuildHasher, Hasher, RandomState};

/// A random number from the standard library's randomly keyed hasher
/// (good enough for masking keys and the ping token: neither is a secret,
/// and the proxy's frames carry no attacker-chosen payload).
pub(crate) fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}
