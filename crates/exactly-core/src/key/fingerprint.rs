//! A short hash of a payload, to tell a true duplicate from a key reused for another
//! payload.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The first 128 bits of the payload's BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// Fingerprints a payload.
    pub fn of(payload: &[u8]) -> Self {
        let h = blake3::hash(payload);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.as_bytes()[..16]);
        Self(out)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
