//! The on-disk format of segments (version 2). A segment is a sequence of records, and a sealed
//! segment ends with a footer (an index of its records) and a fixed-size trailer:
//!
//! ```text
//! record  := "HRD2" | kind u8 | key_len u16 | payload_len u64 | payload_sha256 [32] | key | crc32 u32 | payload
//! key     := function u8 | hash [32]                              (blob)
//!          | function u8 | action [32] | reserved [8] | instance   (action-cache entry)
//!          | function u8 | action [32] | value_sha256 [32] | instance   (removal of that entry)
//! footer  := "HFT2" | count u32 | entry* | crc32 u32
//! entry   := kind u8 | key_len u16 | payload_len u64 | payload_offset u64 | payload_sha256 [32] | key
//! trailer := "HTL" version u8 | footer_offset u64 | footer_len u64 | crc32 u32   (the file's last 24 bytes)
//! ```
//!
//! All integers little-endian; each CRC covers every byte of its structure before it. The header
//! is its own checksum and the payload is checked by its SHA-256, so recovery can tell a complete
//! record from a torn one without trusting anything it did not verify. A footer is trusted only
//! when both the trailer's and the footer's CRCs match; otherwise the segment is scanned.
//!
//! `function` names the digest function of the key (1 = SHA-256, 2 = BLAKE3): a blob's hash and an
//! action's hash are under it, and keys of different functions never name the same entry. A
//! blob record's `payload_sha256` field holds the payload's hash under the blob's function (so
//! the key is its own checksum and the index keeps one hash per blob); every other record's
//! field is a SHA-256 (see `RecordKey::checksum_function`). The
//! trailer keeps its layout in every version, so a newer format is recognised and refused by
//! name instead of being mistaken for a torn tail. Version 1 records (`HRD1`: keys without the
//! function byte, segments closed by a seal record instead of a footer) are still read; the
//! first start converts their segments by writing a footer after them.

use super::digest::{Digest, DigestFunction, HASH_LEN};
use super::Error;

/// The first bytes of every record this build writes.
pub const MAGIC: [u8; 4] = *b"HRD2";
/// Version 1 records: the same header, keys without the digest function byte.
const MAGIC_V1: [u8; 4] = *b"HRD1";
const FOOTER_MAGIC: [u8; 4] = *b"HFT2";
/// The trailer's magic without its version byte.
const TRAILER_PREFIX: [u8; 3] = *b"HTL";
/// The segment format version this build writes (and the only footer version it reads).
pub const FORMAT_VERSION: u8 = 2;
/// Bytes of the trailer at the end of a sealed segment.
pub const TRAILER_LEN: usize = 4 + 8 + 8 + 4;
/// Footer bytes before the entries.
const FOOTER_FIXED_LEN: usize = 4 + 4;
/// Footer entry bytes before the key.
const ENTRY_FIXED_LEN: usize = 1 + 2 + 8 + 8 + HASH_LEN;
/// The digest function byte of SHA-256 keys.
pub const SHA256_FUNCTION: u8 = 1;
/// The digest function byte of BLAKE3 keys.
pub const BLAKE3_FUNCTION: u8 = 2;

/// The key byte of a digest function.
fn function_byte(function: DigestFunction) -> u8 {
    match function {
        DigestFunction::Sha256 => SHA256_FUNCTION,
        DigestFunction::Blake3 => BLAKE3_FUNCTION,
    }
}

/// The digest function of a key byte.
fn function_of_byte(byte: u8) -> Option<DigestFunction> {
    match byte {
        SHA256_FUNCTION => Some(DigestFunction::Sha256),
        BLAKE3_FUNCTION => Some(DigestFunction::Blake3),
        _ => None,
    }
}
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
        /// The digest function of `action` (and of the digests the value names).
        function: DigestFunction,
        /// Hash of the action (its size adds nothing, and HTTP clients never send it).
        action: [u8; HASH_LEN],
        /// What the payload is.
        kind: AcKind,
    },
    /// Version 1 only: closed a segment after a successful sync (everything before it is durable
    /// and was written completely). Version 2 seals segments with a footer instead.
    Seal,
    /// Removes the action-cache entry `(instance, action)` if its value still hashes to
    /// `value_sha256` (no payload). Naming the value makes the removal safe against an overwrite
    /// that lands just before it in the log: replay removes only the value it was meant for.
    ActionRemoved {
        /// Instance name of the removed entry.
        instance: String,
        /// The digest function of `action`.
        function: DigestFunction,
        /// Hash of the action.
        action: [u8; HASH_LEN],
        /// SHA-256 of the value removed.
        value_sha256: [u8; HASH_LEN],
    },
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
    /// The function the record's `payload_sha256` field is computed with: a blob's own
    /// function (its hash is its checksum), SHA-256 for everything else.
    pub fn checksum_function(&self) -> DigestFunction {
        match self {
            RecordKey::Blob(digest) => digest.function,
            _ => DigestFunction::Sha256,
        }
    }

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
            RecordKey::ActionRemoved { .. } => 5,
        }
    }

    fn encode_key(&self, out: &mut Vec<u8>) {
        match self {
            RecordKey::Blob(d) => {
                out.push(function_byte(d.function));
                out.extend_from_slice(&d.hash);
            }
            RecordKey::Action {
                instance,
                function,
                action,
                ..
            } => {
                out.push(function_byte(*function));
                out.extend_from_slice(action);
                // Reserved (the format once held the action's size here).
                out.extend_from_slice(&[0; 8]);
                out.extend_from_slice(instance.as_bytes());
            }
            RecordKey::ActionRemoved {
                instance,
                function,
                action,
                value_sha256,
            } => {
                out.push(function_byte(*function));
                out.extend_from_slice(action);
                out.extend_from_slice(value_sha256);
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
    /// Hash of the payload under `key.checksum_function()`.
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
    /// A well-formed structure of a format (or digest function) this build does not read.
    Unsupported(String),
}

/// Decodes the header at the start of `bytes` (which may run past the header).
pub fn decode_header(bytes: &[u8]) -> Result<Header, Torn> {
    if bytes.len() < FIXED_LEN {
        return Err(Torn::Short);
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    let version = match magic {
        MAGIC => 2,
        MAGIC_V1 => 1,
        [b'H', b'R', b'D', v] if v.is_ascii_digit() => {
            return Err(unknown_version(bytes, v));
        }
        _ => return Err(Torn::Corrupt("bad magic".into())),
    };
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
    let key = decode_key(kind, version == 2, key_bytes, payload_len)?;
    Ok(Header {
        key,
        payload_sha256,
        payload_len,
        header_len,
    })
}

/// How to read a header whose magic names a version this build does not know. It is a newer
/// format only if it is well formed: its checksum, laid out as every version so far lays it
/// out, matches. Otherwise it is damage (a bit flip in the version digit, a torn or corrupted
/// sector), which must cut a tail like any corrupt header rather than stop a start.
fn unknown_version(bytes: &[u8], version: u8) -> Torn {
    let key_len = u16::from_le_bytes([bytes[5], bytes[6]]) as usize;
    let crc_at = FIXED_LEN + key_len.min(MAX_KEY_LEN);
    let Some(header) = bytes.get(..crc_at + CRC_LEN) else {
        return Torn::Short;
    };
    let stored_crc = u32::from_le_bytes(header[crc_at..].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..crc_at]) == stored_crc {
        Torn::Unsupported(format!("record format version {}", version as char))
    } else {
        Torn::Corrupt(format!(
            "a header naming version {} fails its checksum",
            version as char
        ))
    }
}

/// Decodes a key of record kind `kind`. Version 2 keys (`with_function`) start with the digest
/// function byte; version 1 keys have none (they are SHA-256).
fn decode_key(
    kind: u8,
    with_function: bool,
    key_bytes: &[u8],
    payload_len: u64,
) -> Result<RecordKey, Torn> {
    let (function, key_bytes) = match key_bytes.split_first() {
        _ if !with_function || kind == 3 => (DigestFunction::Sha256, key_bytes),
        Some((&f, rest)) => match function_of_byte(f) {
            Some(function) => (function, rest),
            None => return Err(Torn::Unsupported(format!("digest function {f}"))),
        },
        None => return Err(Torn::Corrupt("empty key".into())),
    };
    let key_len = key_bytes.len();
    Ok(match kind {
        1 if key_len == HASH_LEN => RecordKey::Blob(Digest::new(
            function,
            key_bytes.try_into().expect("32 bytes"),
            payload_len,
        )),
        2 | 4 if key_len >= HASH_LEN + 8 => RecordKey::Action {
            instance: instance_name(&key_bytes[HASH_LEN + 8..])?,
            function,
            action: key_bytes[..HASH_LEN].try_into().expect("32 bytes"),
            kind: if kind == 2 {
                AcKind::ActionResult
            } else {
                AcKind::Opaque
            },
        },
        3 if key_len == 0 && payload_len == 0 && !with_function => RecordKey::Seal,
        5 if key_len >= 2 * HASH_LEN && payload_len == 0 && with_function => {
            RecordKey::ActionRemoved {
                instance: instance_name(&key_bytes[2 * HASH_LEN..])?,
                function,
                action: key_bytes[..HASH_LEN].try_into().expect("32 bytes"),
                value_sha256: key_bytes[HASH_LEN..2 * HASH_LEN]
                    .try_into()
                    .expect("32 bytes"),
            }
        }
        _ => {
            return Err(Torn::Corrupt(format!(
                "bad kind {kind} or key length {key_len}"
            )))
        }
    })
}

fn instance_name(bytes: &[u8]) -> Result<String, Torn> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Torn::Corrupt("instance name is not UTF-8".into()))
}

/// Whether `bytes` start like a footer (recovery stops scanning records there).
pub fn is_footer_start(bytes: &[u8]) -> bool {
    bytes.starts_with(&FOOTER_MAGIC)
}

/// A record as a footer names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FooterEntry {
    /// The record's key.
    pub key: RecordKey,
    /// Offset of the payload's first byte in the segment.
    pub payload_offset: u64,
    /// Payload bytes.
    pub payload_len: u64,
    /// SHA-256 of the payload.
    pub payload_sha256: [u8; HASH_LEN],
}

/// The footer of the segment being written, built as records are appended.
#[derive(Default)]
pub struct FooterBuilder {
    entries: Vec<u8>,
    count: u32,
}

impl FooterBuilder {
    /// Adds a record whose payload starts at `payload_offset`.
    pub fn push(
        &mut self,
        key: &RecordKey,
        payload_offset: u64,
        payload_len: u64,
        sha256: &[u8; HASH_LEN],
    ) {
        let mut key_bytes = Vec::new();
        key.encode_key(&mut key_bytes);
        self.entries.push(key.kind());
        self.entries
            .extend_from_slice(&(key_bytes.len() as u16).to_le_bytes());
        self.entries.extend_from_slice(&payload_len.to_le_bytes());
        self.entries
            .extend_from_slice(&payload_offset.to_le_bytes());
        self.entries.extend_from_slice(sha256);
        self.entries.extend_from_slice(&key_bytes);
        self.count += 1;
    }

    /// Records added so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The footer and trailer bytes, for a footer starting at `footer_offset`.
    pub fn finish(&self, footer_offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(FOOTER_FIXED_LEN + self.entries.len() + 4 + TRAILER_LEN);
        out.extend_from_slice(&FOOTER_MAGIC);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.entries);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let footer_len = out.len() as u64;
        let trailer_at = out.len();
        out.extend_from_slice(&TRAILER_PREFIX);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&footer_offset.to_le_bytes());
        out.extend_from_slice(&footer_len.to_le_bytes());
        let crc = crc32fast::hash(&out[trailer_at..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Where a trailer says the footer is: `(footer_offset, footer_len)`. `Torn::Corrupt` means
/// there is no valid trailer (the segment was never sealed, or the seal was torn).
pub fn decode_trailer(trailer: &[u8], file_len: u64) -> Result<(u64, u64), Torn> {
    if trailer.len() != TRAILER_LEN || trailer[..3] != TRAILER_PREFIX {
        return Err(Torn::Corrupt("no trailer".into()));
    }
    let stored_crc = u32::from_le_bytes(trailer[20..].try_into().expect("4 bytes"));
    if crc32fast::hash(&trailer[..20]) != stored_crc {
        return Err(Torn::Corrupt("trailer checksum mismatch".into()));
    }
    if trailer[3] != FORMAT_VERSION {
        return Err(Torn::Unsupported(format!(
            "segment format version {}",
            trailer[3]
        )));
    }
    let offset = u64::from_le_bytes(trailer[4..12].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(trailer[12..20].try_into().expect("8 bytes"));
    if offset
        .checked_add(len)
        .and_then(|e| e.checked_add(TRAILER_LEN as u64))
        != Some(file_len)
    {
        return Err(Torn::Corrupt(
            "trailer does not match the file length".into(),
        ));
    }
    Ok((offset, len))
}

/// Decodes and checks a footer that starts at `footer_offset`.
pub fn decode_footer(bytes: &[u8], footer_offset: u64) -> Result<Vec<FooterEntry>, Torn> {
    let corrupt = |why: &str| Torn::Corrupt(format!("footer: {why}"));
    if bytes.len() < FOOTER_FIXED_LEN + CRC_LEN || bytes[..4] != FOOTER_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("checksum mismatch"));
    }
    let count = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
    let mut entries = Vec::with_capacity((count as usize).min(body.len() / ENTRY_FIXED_LEN));
    let mut at = FOOTER_FIXED_LEN;
    for _ in 0..count {
        let fixed = body
            .get(at..at + ENTRY_FIXED_LEN)
            .ok_or_else(|| corrupt("ends inside an entry"))?;
        let kind = fixed[0];
        let key_len = u16::from_le_bytes([fixed[1], fixed[2]]) as usize;
        let payload_len = u64::from_le_bytes(fixed[3..11].try_into().expect("8 bytes"));
        let payload_offset = u64::from_le_bytes(fixed[11..19].try_into().expect("8 bytes"));
        let payload_sha256: [u8; HASH_LEN] = fixed[19..].try_into().expect("32 bytes");
        let key_bytes = body
            .get(at + ENTRY_FIXED_LEN..at + ENTRY_FIXED_LEN + key_len)
            .ok_or_else(|| corrupt("ends inside a key"))?;
        let key = decode_key(kind, true, key_bytes, payload_len)?;
        if key == RecordKey::Seal
            || payload_offset
                .checked_add(payload_len)
                .is_none_or(|end| end > footer_offset)
        {
            return Err(corrupt("entry outside the segment's records"));
        }
        entries.push(FooterEntry {
            key,
            payload_offset,
            payload_len,
            payload_sha256,
        });
        at += ENTRY_FIXED_LEN + key_len;
    }
    if at != body.len() {
        return Err(corrupt("bytes after the last entry"));
    }
    Ok(entries)
}

/// How many blob and action-cache records a footer names, counted without decoding keys (a
/// recovery sizes its index with it before inserting anything). `None` if the footer fails its
/// checks. Removal records occupy no index entry and are not counted.
pub fn footer_record_counts(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() < FOOTER_FIXED_LEN + CRC_LEN || bytes[..4] != FOOTER_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return None;
    }
    let count = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
    let (mut blobs, mut actions) = (0, 0);
    let mut at = FOOTER_FIXED_LEN;
    for _ in 0..count {
        let fixed = body.get(at..at + ENTRY_FIXED_LEN)?;
        match fixed[0] {
            1 => blobs += 1,
            2 | 4 => actions += 1,
            _ => {}
        }
        at += ENTRY_FIXED_LEN + u16::from_le_bytes([fixed[1], fixed[2]]) as usize;
    }
    Some((blobs, actions))
}

/// Checks that an instance name fits in a record key.
pub fn check_instance_name(instance: &str) -> Result<(), Error> {
    // The longest key naming an instance is a removal's: function, action, value hash.
    if instance.len() > MAX_KEY_LEN - 1 - 2 * HASH_LEN {
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
                function: DigestFunction::Sha256,
                action: Digest::of(b"action").hash,
                kind: AcKind::ActionResult,
            },
            RecordKey::Action {
                instance: String::new(),
                function: DigestFunction::Sha256,
                action: Digest::of(b"ccache key").hash,
                kind: AcKind::Opaque,
            },
            RecordKey::Blob(Digest::of_with(DigestFunction::Blake3, b"hello")),
            RecordKey::Action {
                instance: "main".into(),
                function: DigestFunction::Blake3,
                action: Digest::of(b"action").hash,
                kind: AcKind::ActionResult,
            },
        ];
        for key in keys {
            let sha = Digest::of(b"hello").hash;
            let bytes = encode_header(&key, 5, &sha);
            assert_eq!(&bytes[..4], b"HRD2");
            let function = match &key {
                RecordKey::Blob(d) => d.function,
                RecordKey::Action { function, .. } => *function,
                _ => unreachable!(),
            };
            assert_eq!(bytes[FIXED_LEN], function_byte(function));
            let header = decode_header(&bytes).unwrap();
            assert_eq!(header.key, key);
            assert_eq!(header.payload_len, 5);
            assert_eq!(header.header_len, bytes.len());
        }
    }

    #[test]
    fn removals_round_trip_in_headers_and_footers() {
        let longest = "i".repeat(MAX_KEY_LEN - 1 - 2 * HASH_LEN);
        check_instance_name(&longest).unwrap();
        assert!(check_instance_name(&format!("{longest}i")).is_err());
        for instance in [String::new(), longest] {
            let key = RecordKey::ActionRemoved {
                instance,
                function: DigestFunction::Sha256,
                action: Digest::of(b"action").hash,
                value_sha256: Digest::of(b"old value").hash,
            };
            let header = encode_header(&key, 0, &Digest::EMPTY.hash);
            assert!(header.len() <= MAX_HEADER_LEN);
            assert_eq!(decode_header(&header).unwrap().key, key);
            let mut footer = FooterBuilder::default();
            footer.push(&key, 100, 0, &Digest::EMPTY.hash);
            let bytes = footer.finish(200);
            let footer_bytes = &bytes[..bytes.len() - TRAILER_LEN];
            let entries = decode_footer(footer_bytes, 200).unwrap();
            assert_eq!(entries[0].key, key);
            assert_eq!(footer_record_counts(footer_bytes), Some((0, 0)));
        }
        // A removal carries no payload.
        let key = RecordKey::ActionRemoved {
            instance: String::new(),
            function: DigestFunction::Sha256,
            action: [1; 32],
            value_sha256: [2; 32],
        };
        assert!(matches!(
            decode_header(&encode_header(&key, 3, &[0; 32])),
            Err(Torn::Corrupt(_))
        ));
    }

    /// A version 1 header: the same layout, keys without the digest function byte.
    fn v1_header(kind: u8, key: &[u8], payload_len: u64, sha: &[u8; 32]) -> Vec<u8> {
        let mut out = b"HRD1".to_vec();
        out.push(kind);
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(sha);
        out.extend_from_slice(key);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn version_1_records_and_seals_are_still_read() {
        let digest = Digest::of(b"hello");
        let header = decode_header(&v1_header(1, &digest.hash, 5, &digest.hash)).unwrap();
        assert_eq!(header.key, RecordKey::Blob(digest));
        let seal = decode_header(&v1_header(3, &[], 0, &Digest::EMPTY.hash)).unwrap();
        assert_eq!(seal.key, RecordKey::Seal);
    }

    #[test]
    fn newer_formats_and_digest_functions_are_refused_by_name() {
        // A header written by a newer version (its own checksum matches) is refused by name...
        let mut bytes = encode_header(&RecordKey::Blob(Digest::of(b"x")), 1, &[0; 32]);
        bytes[3] = b'3';
        let crc_at = bytes.len() - CRC_LEN;
        let crc = crc32fast::hash(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&bytes),
            Err(Torn::Unsupported("record format version 3".into()))
        );
        // ...but a version 2 or 1 header whose version digit took a bit flip fails that
        // checksum, so it is only corrupt: it must not stop a start.
        for (magic, flipped) in [(b'2', b'6'), (b'1', b'3')] {
            let mut bytes = encode_header(&RecordKey::Blob(Digest::of(b"x")), 1, &[0; 32]);
            if magic == b'1' {
                bytes = v1_header(1, &Digest::of(b"x").hash, 1, &[0; 32]);
            }
            bytes[3] = flipped;
            assert!(
                matches!(decode_header(&bytes), Err(Torn::Corrupt(_))),
                "HRD{} flipped to HRD{}",
                magic as char,
                flipped as char
            );
        }
        // A key of an unknown function (3) in a version 2 header, with a valid CRC.
        let mut bytes = encode_header(&RecordKey::Blob(Digest::of(b"x")), 1, &[0; 32]);
        bytes[FIXED_LEN] = 3;
        let crc_at = bytes.len() - CRC_LEN;
        let crc = crc32fast::hash(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&bytes),
            Err(Torn::Unsupported("digest function 3".into()))
        );
        let mut sealed = FooterBuilder::default().finish(0);
        let trailer_at = sealed.len() - TRAILER_LEN;
        sealed[trailer_at + 3] = 3;
        let crc = crc32fast::hash(&sealed[trailer_at..trailer_at + 20]);
        sealed[trailer_at + 20..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_trailer(&sealed[trailer_at..], sealed.len() as u64),
            Err(Torn::Unsupported("segment format version 3".into()))
        );
    }

    #[test]
    fn footers_round_trip_and_any_flipped_bit_is_detected() {
        let records = 300u64;
        let mut footer = FooterBuilder::default();
        let key = RecordKey::Action {
            instance: "ci".into(),
            function: DigestFunction::Sha256,
            action: Digest::of(b"a").hash,
            kind: AcKind::Opaque,
        };
        footer.push(&key, 100, 7, &Digest::of(b"v").hash);
        let blob = Digest::of(b"blob");
        footer.push(&RecordKey::Blob(blob), 200, blob.size, &blob.hash);
        let sealed = footer.finish(records);
        let file_len = records + sealed.len() as u64;
        let (offset, len) =
            decode_trailer(&sealed[sealed.len() - TRAILER_LEN..], file_len).unwrap();
        assert_eq!(offset, records);
        let entries = decode_footer(&sealed[..len as usize], offset).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].key, key);
        assert_eq!(entries[1].key, RecordKey::Blob(blob));
        assert_eq!(entries[1].payload_offset, 200);
        assert_eq!(footer_record_counts(&sealed[..len as usize]), Some((1, 1)));
        for i in 0..sealed.len() * 8 {
            let mut flipped = sealed.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            let trailer = &flipped[flipped.len() - TRAILER_LEN..];
            let decoded = decode_trailer(trailer, file_len)
                .and_then(|(offset, len)| decode_footer(&flipped[..len as usize], offset));
            assert!(decoded.is_err(), "bit {i}");
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
