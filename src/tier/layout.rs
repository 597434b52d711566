//! Where things live in the bucket (README "Many nodes" shows the same table). Every node, and
//! every later version, reads this layout; a change of it changes [`FORMAT`].
//!
//! | key (under the bucket's prefix) | object |
//! |---|---|
//! | `hoard-format` | [`FORMAT`]: the layout's name and version, written by the first node |
//! | `cas/{function}/{hash}` | a blob's bytes (`sha256` or `blake3`, lowercase hex hash; the size is the object's length) |
//! | `ac/_{instance}/{function}/{hash}` | an action-cache value: one kind byte (`R` an `ActionResult`, `O` opaque), the value's SHA-256 (32 bytes), then the value |
//!
//! A blob's key names its digest function and hash but not its size: the size is the object's
//! length (a HEAD gives it, and every read checks it), so clients that name blobs by hash alone
//! (the HTTP protocol) find them with one request.
//!
//! An action-cache key is the action's hash, not the value's, so the value carries its own
//! SHA-256: a truncated or damaged object is refused, never served or stored (blobs are checked
//! against the digest that names them).
//!
//! The instance name is percent-encoded (every byte outside `A-Z a-z 0-9 . _ -`), behind a `_`
//! so the empty instance has a name too (`ac/_/sha256/...`).
//!
//! The function is part of every key: a BLAKE3 blob and a SHA-256 blob never share an object,
//! nor do action results of different functions.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest as _, Sha256};

use crate::engine::{AcKind, Digest, HASH_LEN};
use crate::store::{ActionKey, ActionValue};

/// The key of the format marker.
pub const FORMAT_KEY: &str = "hoard-format";

/// The marker's content: the layout this build writes and reads.
pub const FORMAT: &[u8] = b"hoard object layout 1\n";

/// The key of a blob: its hash (a blob's size is its object's length).
pub fn blob_key(digest: &Digest) -> String {
    format!("cas/{}/{}", digest.function.name(), digest.hex())
}

/// The key of an action-cache entry.
pub fn action_key(key: &ActionKey) -> String {
    let mut instance = String::with_capacity(key.instance.len() + 1);
    instance.push('_');
    for byte in key.instance.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            instance.push(byte as char);
        } else {
            instance.push_str(&format!("%{byte:02X}"));
        }
    }
    format!(
        "ac/{instance}/{}/{}",
        key.function.name(),
        hex::encode(key.hash)
    )
}

const ACTION_RESULT_TAG: u8 = b'R';
const OPAQUE_TAG: u8 = b'O';

/// An action-cache value as its object holds it.
pub fn encode_action(value: &ActionValue) -> Bytes {
    let mut out = BytesMut::with_capacity(value.bytes.len() + 1 + HASH_LEN);
    out.put_u8(match value.kind {
        AcKind::ActionResult => ACTION_RESULT_TAG,
        AcKind::Opaque => OPAQUE_TAG,
    });
    out.extend_from_slice(&Sha256::digest(&value.bytes));
    out.extend_from_slice(&value.bytes);
    out.freeze()
}

/// The action-cache value an object holds, or why it is not one (damaged or cut short).
pub fn decode_action(object: Bytes) -> Result<ActionValue, String> {
    let kind = match object.first() {
        Some(&ACTION_RESULT_TAG) => AcKind::ActionResult,
        Some(&OPAQUE_TAG) => AcKind::Opaque,
        Some(other) => return Err(format!("unknown action-cache kind byte {other:#04x}")),
        None => return Err("empty action-cache object".to_owned()),
    };
    if object.len() < 1 + HASH_LEN {
        return Err(format!(
            "action-cache object of {} bytes is cut short",
            object.len()
        ));
    }
    let bytes = object.slice(1 + HASH_LEN..);
    if Sha256::digest(&bytes)[..] != object[1..1 + HASH_LEN] {
        return Err("action-cache value fails its checksum".to_owned());
    }
    Ok(ActionValue { kind, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::DigestFunction;

    #[test]
    fn keys_name_digest_function_hash_and_instance() {
        let digest = Digest::of(b"abc");
        assert_eq!(blob_key(&digest), format!("cas/sha256/{}", digest.hex()));
        let blake3 = Digest::of_with(DigestFunction::Blake3, b"abc");
        assert_eq!(blob_key(&blake3), format!("cas/blake3/{}", blake3.hex()));
        let key = ActionKey::with_function("", DigestFunction::Blake3, [1; 32]);
        assert!(action_key(&key).starts_with("ac/_/blake3/"));
        let key = ActionKey::new("main/linux x86", [0xab; 32]);
        assert_eq!(
            action_key(&key),
            format!("ac/_main%2Flinux%20x86/sha256/{}", "ab".repeat(32))
        );
        assert!(action_key(&ActionKey::new("", [1; 32])).starts_with("ac/_/sha256/"));
        // Instances that differ get different keys, however they are spelled.
        assert_ne!(
            action_key(&ActionKey::new("a/b", [1; 32])),
            action_key(&ActionKey::new("a%2Fb", [1; 32]))
        );
    }

    #[test]
    fn action_values_keep_their_kind_and_a_cut_or_damaged_one_is_refused() {
        for kind in [AcKind::ActionResult, AcKind::Opaque] {
            let value = ActionValue {
                kind,
                bytes: Bytes::from_static(b"value"),
            };
            assert_eq!(decode_action(encode_action(&value)), Ok(value));
        }
        assert!(decode_action(Bytes::new()).is_err());
        let object = encode_action(&ActionValue {
            kind: AcKind::Opaque,
            bytes: Bytes::from_static(b"a longer value"),
        });
        let mut unknown = object.to_vec();
        unknown[0] = b'X';
        assert!(decode_action(unknown.into()).is_err());
        for cut in 0..object.len() {
            assert!(decode_action(object.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut flipped = object.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode_action(flipped.into()).is_err());
    }
}
