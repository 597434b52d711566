//! The on-disk record format of segments. A segment is a sequence of records:
//!
//! ```text
//! magic "HRD1" | kind u8 | key_len u16 | payload_len u64 | payload_sha256 [32] | key | crc32 u32 | payload
//! ```
//!
//! All integers little-endian; the CRC covers every header byte before it. The header is its own
//! checksum and the payload is checked by its SHA-256, so recovery can tell a complete record from
//! a torn one without trusting anything it did not verify.

use super::digest::{Digest, HASH_LEN};
use super::Error;

const MAGIC: [u8; 4] = *b"HRD1";
/// Header bytes before the key.
const FIXED_LEN: usize = 4 + 1 + 2 + 8 + HASH_LEN;
const CRC_LEN: usize = 4;
/// The largest key a record may carry (an AC key holds the instance name).
pub const MAX_KEY_LEN: usize = 4096;
/// Enough bytes to hold any header.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + MAX_KEY_LEN + CRC_LEN;

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKey {
    /// A CAS blob; the payload is the blob.
    Blob(Digest),
    /// An action-cache entry.
    Action {
        /// Instance name the entry belongs to.
        instance: String,
        /// Hash of the action (its size adds nothing, and HTTP clients never send it).
        action: [u8; HASH_LEN],
        /// What the payload is.
        kind: AcKind,
    },
    /// Written when a segment is closed after a successful sync: everything before it is durable
    /// and was written completely.
    Seal,
}

/// What an action-cache entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcKind {
    /// An encoded REAPI `ActionResult`.
    ActionResult,
    /// Bytes some non-REAPI client (ccache, say) stores under `/ac/`; never served over gRPC.
    Opaque,
}

impl RecordKey {
    fn kind(&self) -> u8 {
        match self {
            RecordKey::Blob(_) => 1,
            RecordKey::Action {
                kind: AcKind::ActionResult,
                ..
            } => 2,
            RecordKey::Seal => 3,
            RecordKey::Action {
                kind: AcKind::Opaque,
                ..
            } => 4,
        }
    }

    fn encode_key(&self, out: &mut Vec<u8>) {
        match self {
            RecordKey::Blob(d) => out.extend_from_slice(&d.hash),
            RecordKey::Action {
                instance, action, ..
            } => {
                out.extend_from_slice(action);
                // Reserved (the format once held the action's size here).
                out.extend_from_slice(&[0; 8]);
                out.extend_from_slice(instance.as_bytes());
            }
            RecordKey::Seal => {}
        }
    }
}

/// A decoded record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the record holds.
    pub key: RecordKey,
    /// SHA-256 of the payload.
    pub payload_sha256: [u8; HASH_LEN],
    /// Payload bytes following the header.
    pub payload_len: u64,
    /// Bytes of the header itself.
    pub header_len: usize,
}

/// Encodes a header for `key` with a payload of `payload_len` bytes hashing to `payload_sha256`.
pub fn encode_header(
    key: &RecordKey,
    payload_len: u64,
    payload_sha256: &[u8; HASH_LEN],
) -> Vec<u8> {
    let mut key_bytes = Vec::new();
    key.encode_key(&mut key_bytes);
    debug_assert!(
        key_bytes.len() <= MAX_KEY_LEN,
        "callers bound instance names"
    );
    let mut out = Vec::with_capacity(FIXED_LEN + key_bytes.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(key.kind());
    out.extend_from_slice(&(key_bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(payload_sha256);
    out.extend_from_slice(&key_bytes);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why bytes at some offset are not a complete header.
#[derive(Debug, PartialEq, Eq)]
pub enum Torn {
    /// Fewer bytes than a header needs: the segment ends inside it.
    Short,
    /// The bytes are not a header (bad magic, kind, CRC or key).
    Corrupt(String),
}

/// Decodes the header at the start of `bytes` (which may run past the header).
pub fn decode_header(bytes: &[u8]) -> Result<Header, Torn> {
    if bytes.len() < FIXED_LEN {
        return Err(Torn::Short);
    }
    if bytes[..4] != MAGIC {
        return Err(Torn::Corrupt("bad magic".into()));
    }
    let kind = bytes[4];
    let key_len = u16::from_le_bytes([bytes[5], bytes[6]]) as usize;
    if key_len > MAX_KEY_LEN {
        return Err(Torn::Corrupt(format!("key length {key_len} too large")));
    }
    let header_len = FIXED_LEN + key_len + CRC_LEN;
    if bytes.len() < header_len {
        return Err(Torn::Short);
    }
    let crc_at = FIXED_LEN + key_len;
    let stored_crc = u32::from_le_bytes(bytes[crc_at..header_len].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..crc_at]) != stored_crc {
        return Err(Torn::Corrupt("header checksum mismatch".into()));
    }
    let payload_len = u64::from_le_bytes(bytes[7..15].try_into().expect("8 bytes"));
    let payload_sha256: [u8; HASH_LEN] = bytes[15..FIXED_LEN].try_into().expect("32 bytes");
    let key_bytes = &bytes[FIXED_LEN..crc_at];
    let key = match kind {
        1 if key_len == HASH_LEN => RecordKey::Blob(Digest {
            hash: key_bytes.try_into().expect("32 bytes"),
            size: payload_len,
        }),
        2 | 4 if key_len >= HASH_LEN + 8 => {
            let instance = std::str::from_utf8(&key_bytes[HASH_LEN + 8..])
                .map_err(|_| Torn::Corrupt("instance name is not UTF-8".into()))?;
            RecordKey::Action {
                instance: instance.to_owned(),
                action: key_bytes[..HASH_LEN].try_into().expect("32 bytes"),
                kind: if kind == 2 {
                    AcKind::ActionResult
                } else {
                    AcKind::Opaque
                },
            }
        }
        3 if key_len == 0 && payload_len == 0 => RecordKey::Seal,
        _ => {
            return Err(Torn::Corrupt(format!(
                "bad kind {kind} or key length {key_len}"
            )))
        }
    };
    Ok(Header {
        key,
        payload_sha256,
        payload_len,
        header_len,
    })
}

/// Checks that an instance name fits in a record key.
pub fn check_instance_name(instance: &str) -> Result<(), Error> {
    if instance.len() > MAX_KEY_LEN - HASH_LEN - 8 {
        return Err(Error::InvalidArgument(format!(
            "instance name of {} bytes is too long",
            instance.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let keys = [
            RecordKey::Blob(Digest::of(b"hello")),
            RecordKey::Action {
                instance: "main/linux".into(),
                action: Digest::of(b"action").hash,
                kind: AcKind::ActionResult,
            },
            RecordKey::Action {
                instance: String::new(),
                action: Digest::of(b"ccache key").hash,
                kind: AcKind::Opaque,
            },
            RecordKey::Seal,
        ];
        for key in keys {
            let len = if key == RecordKey::Seal { 0 } else { 5 };
            let sha = Digest::of(b"hello").hash;
            let bytes = encode_header(&key, len, &sha);
            let header = decode_header(&bytes).unwrap();
            assert_eq!(header.key, key);
            assert_eq!(header.payload_len, len);
            assert_eq!(header.header_len, bytes.len());
        }
    }

    #[test]
    fn any_flipped_bit_or_cut_is_detected() {
        let bytes = encode_header(
            &RecordKey::Blob(Digest::of(b"x")),
            1,
            &Digest::of(b"x").hash,
        );
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_header(&bytes[..cut]),
                Err(Torn::Short),
                "cut at {cut}"
            );
        }
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(decode_header(&flipped).is_err(), "bit {i}");
        }
    }
}
