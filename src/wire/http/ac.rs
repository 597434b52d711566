//! `/{instance}/ac/{sha256}`: action-cache entries.
//!
//! Two kinds of client store values here. Bazel stores encoded `ActionResult`s; ccache (and other
//! non-REAPI clients) store values of their own. A body that decodes as an `ActionResult` is
//! stored as one (and served over gRPC too); any other body is stored as an opaque value that only
//! HTTP serves back, byte for byte, unless [`HttpConfig::ac_strict`] asks for bazel-remote's
//! behaviour of refusing it. Keys are action hashes, shared with gRPC's action cache, and the
//! cache's rules (validation on the way in, completeness on the way out) are the store's layers,
//! the same for both front ends.

use hyper::{Response, StatusCode};
use prost::Message as _;

use super::body::{read_bounded, Body, RequestBody};
use super::response::{ok, HttpError};
use super::HttpConfig;
use crate::engine::{AcKind, HASH_LEN};
use crate::proto::reapi::ActionResult;
use crate::store::{Accept, ActionKey, ActionValue, Store};

/// `GET` (and `HEAD`, whose body hyper drops): the stored bytes, exactly as they were put. An
/// action result whose blobs are gone is a 404, as over gRPC (the store's completeness check).
pub(super) async fn get(
    store: &dyn Store,
    instance: &str,
    hash: [u8; HASH_LEN],
) -> Result<Response<Body>, HttpError> {
    let key = ActionKey::new(instance, hash);
    match store.get_action(&key, Accept::Any).await? {
        Some(value) => Ok(ok(Body::full(value.bytes))),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no action result for {} in instance {instance:?}",
                hex::encode(hash)
            ),
        )),
    }
}

/// `PUT`: stores the body (bounded by the config) as the kind [`classify`] gives it; the store
/// refuses an action result with malformed digests or paths that leave the output tree.
pub(super) async fn put(
    store: &dyn Store,
    config: &HttpConfig,
    instance: &str,
    hash: [u8; HASH_LEN],
    body: &mut RequestBody,
) -> Result<Response<Body>, HttpError> {
    let value = read_bounded(body, config.max_action_result_size).await?;
    let kind = classify(&value, config.ac_strict)?;
    let key = ActionKey::new(instance, hash);
    store
        .put_action(&key, ActionValue { kind, bytes: value })
        .await?;
    Ok(ok(Body::empty()))
}

/// What kind of action-cache value `value` is, or why it may not be stored: the single place
/// that decides it.
fn classify(value: &[u8], strict: bool) -> Result<AcKind, HttpError> {
    match ActionResult::decode(value) {
        Ok(_) => Ok(AcKind::ActionResult),
        Err(_) if !strict => Ok(AcKind::Opaque),
        Err(e) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("not an ActionResult ({e}); this server runs with --http-ac-strict"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ccache_entries_are_opaque_unless_strict() {
        let ccache_entry = b"cc\xac\x00\x01 not protobuf";
        assert_eq!(classify(ccache_entry, false).unwrap(), AcKind::Opaque);
        assert!(classify(ccache_entry, true).is_err());
        let result = ActionResult {
            exit_code: 1,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(classify(&result, true).unwrap(), AcKind::ActionResult);
        assert_eq!(classify(&result, false).unwrap(), AcKind::ActionResult);
    }
}
