//! Content digests: a SHA-256 hash and a size, the key of every blob.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::Error;

/// Bytes of a SHA-256 hash.
pub const HASH_LEN: usize = 32;

/// A blob's identity: the SHA-256 of its bytes and their count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// SHA-256 of the blob's bytes.
    pub hash: [u8; HASH_LEN],
    /// Length of the blob in bytes.
    pub size: u64,
}

impl Digest {
    /// The digest of the empty blob, which every CAS holds without storing it.
    pub const EMPTY: Digest = Digest {
        hash: [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ],
        size: 0,
    };

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest {
            hash: Sha256::digest(data).into(),
            size: data.len() as u64,
        }
    }

    /// Parses a hash given as 64 lowercase hex characters and a size that must not be negative.
    pub fn parse(hash_hex: &str, size: i64) -> Result<Digest, Error> {
        let hash = parse_hash(hash_hex)?;
        let size = u64::try_from(size).map_err(|_| {
            Error::InvalidArgument(format!("digest size {size} of {hash_hex} is negative"))
        })?;
        Ok(Digest { hash, size })
    }

    /// The hash as 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Whether this is the empty blob.
    pub fn is_empty(&self) -> bool {
        *self == Digest::EMPTY
    }
}

/// Parses exactly 64 lowercase hex characters into a hash.
pub fn parse_hash(hash_hex: &str) -> Result<[u8; HASH_LEN], Error> {
    // One pass, validating as it decodes: FindMissingBlobs parses thousands per call.
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hash_hex.as_bytes();
    let mut hash = [0; HASH_LEN];
    let decoded = bytes.len() == 2 * HASH_LEN
        && hash
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .all(|(out, pair)| match (nibble(pair[0]), nibble(pair[1])) {
                (Some(high), Some(low)) => {
                    *out = high << 4 | low;
                    true
                }
                _ => false,
            });
    if !decoded {
        let shown: String = hash_hex.chars().take(80).collect();
        return Err(Error::InvalidArgument(format!(
            "digest hash {shown:?} is not 64 lowercase hex characters"
        )));
    }
    Ok(hash)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_matches_sha256_of_nothing() {
        assert_eq!(Digest::of(b""), Digest::EMPTY);
    }

    #[test]
    fn parse_accepts_lowercase_hex_only() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.hex(), 3).unwrap(), d);
        assert!(Digest::parse(&d.hex().to_uppercase(), 3).is_err());
        assert!(Digest::parse(&d.hex()[1..], 3).is_err());
        assert!(Digest::parse("../../etc/passwd", 3).is_err());
        assert!(Digest::parse(&d.hex(), -1).is_err());
    }
}
