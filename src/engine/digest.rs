//! Content digests: a digest function, a hash and a size, the key of every blob.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::Error;

/// Bytes of a hash (SHA-256 and BLAKE3 alike).
pub const HASH_LEN: usize = 32;

/// The hash function a digest was computed with. Blobs of different functions never share a
/// key: the same bytes under SHA-256 and under BLAKE3 are two entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    /// SHA-256: the default, and the only function of the HTTP protocol.
    #[default]
    Sha256,
    /// BLAKE3 with its default 32-byte output.
    Blake3,
}

impl DigestFunction {
    /// Every function this build serves.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// A fresh incremental hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestFunction::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The hash of `data`.
    pub fn hash(self, data: &[u8]) -> [u8; HASH_LEN] {
        match self {
            DigestFunction::Sha256 => Sha256::digest(data).into(),
            DigestFunction::Blake3 => blake3::hash(data).into(),
        }
    }

    /// The lowercase name used in ByteStream resource names and logs (`sha256`, `blake3`).
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// The function of a ByteStream resource name segment (lowercase, as the spec spells it).
    pub fn from_name(name: &str) -> Option<DigestFunction> {
        DigestFunction::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// An incremental hash under some digest function.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// BLAKE3 state (boxed: it is almost 2 KiB).
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Hashes more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The hash of everything given to `update`.
    pub fn finalize(self) -> [u8; HASH_LEN] {
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => h.finalize().into(),
        }
    }
}

/// A blob's identity: its digest function, the hash of its bytes under it, and their count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// The function `hash` was computed with.
    pub function: DigestFunction,
    /// Hash of the blob's bytes.
    pub hash: [u8; HASH_LEN],
    /// Length of the blob in bytes.
    pub size: u64,
}

impl Digest {
    /// The SHA-256 digest of the empty blob, which every CAS holds without storing it.
    pub const EMPTY: Digest = Digest::sha256(
        [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ],
        0,
    );

    /// A SHA-256 digest.
    pub const fn sha256(hash: [u8; HASH_LEN], size: u64) -> Digest {
        Digest::new(DigestFunction::Sha256, hash, size)
    }

    /// A digest under `function`.
    pub const fn new(function: DigestFunction, hash: [u8; HASH_LEN], size: u64) -> Digest {
        Digest {
            function,
            hash,
            size,
        }
    }

    /// The SHA-256 digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::of_with(DigestFunction::Sha256, data)
    }

    /// The digest of `data` under `function`.
    pub fn of_with(function: DigestFunction, data: &[u8]) -> Digest {
        Digest::new(function, function.hash(data), data.len() as u64)
    }

    /// The BLAKE3 digest of the empty blob.
    pub const EMPTY_BLAKE3: Digest = Digest::new(
        DigestFunction::Blake3,
        [
            0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc,
            0xc9, 0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca,
            0xe4, 0x1f, 0x32, 0x62,
        ],
        0,
    );

    /// The empty blob's digest under `function`.
    pub const fn empty(function: DigestFunction) -> Digest {
        match function {
            DigestFunction::Sha256 => Digest::EMPTY,
            DigestFunction::Blake3 => Digest::EMPTY_BLAKE3,
        }
    }

    /// Parses a SHA-256 hash given as 64 lowercase hex characters and a size that must not be
    /// negative.
    pub fn parse(hash_hex: &str, size: i64) -> Result<Digest, Error> {
        Digest::parse_with(DigestFunction::Sha256, hash_hex, size)
    }

    /// Parses a hash under `function` given as 64 lowercase hex characters and a size that must
    /// not be negative.
    pub fn parse_with(
        function: DigestFunction,
        hash_hex: &str,
        size: i64,
    ) -> Result<Digest, Error> {
        let hash = parse_hash(hash_hex)?;
        let size = u64::try_from(size).map_err(|_| {
            Error::InvalidArgument(format!("digest size {size} of {hash_hex} is negative"))
        })?;
        Ok(Digest::new(function, hash, size))
    }

    /// The hash as 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Whether this is the empty blob (of its function).
    pub fn is_empty(&self) -> bool {
        *self == Digest::empty(self.function)
    }

    /// Whether `data` is this blob: same size, same hash under this digest's function.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.size && self.function.hash(data) == self.hash
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

/// SHA-256 digests print as `hash/size`, others as `function:hash/size`.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function != DigestFunction::Sha256 {
            write!(f, "{}:", self.function.name())?;
        }
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
        assert_eq!(
            Digest::of_with(DigestFunction::Blake3, b""),
            Digest::EMPTY_BLAKE3
        );
        assert!(Digest::EMPTY_BLAKE3.is_empty());
        assert_ne!(Digest::empty(DigestFunction::Blake3), Digest::EMPTY);
    }

    #[test]
    fn blake3_matches_the_reference_vector() {
        // BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
        assert_eq!(
            Digest::of_with(DigestFunction::Blake3, b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let data = vec![7u8; 100_000];
        let mut hasher = DigestFunction::Blake3.hasher();
        for part in data.chunks(999) {
            hasher.update(part);
        }
        assert_eq!(hasher.finalize(), DigestFunction::Blake3.hash(&data));
    }

    #[test]
    fn functions_are_apart_and_named() {
        let sha = Digest::of(b"abc");
        let blake = Digest::of_with(DigestFunction::Blake3, b"abc");
        assert_ne!(sha.hash, blake.hash);
        assert!(blake.matches(b"abc") && !blake.matches(b"abd"));
        let relabelled = Digest::new(DigestFunction::Blake3, sha.hash, sha.size);
        assert!(
            !relabelled.matches(b"abc"),
            "a SHA-256 hash is no BLAKE3 digest"
        );
        for f in DigestFunction::ALL {
            assert_eq!(DigestFunction::from_name(f.name()), Some(f));
        }
        assert_eq!(DigestFunction::from_name("BLAKE3"), None);
        assert!(blake.to_string().starts_with("blake3:"));
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
