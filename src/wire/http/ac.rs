//! `/{instance}/ac/{sha256}`: action-cache entries.
//!
//! Two kinds of client store values here. Bazel stores encoded `ActionResult`s; ccache (and other
//! non-REAPI clients) store values of their own. A body that decodes as an `ActionResult` is
//! stored as one (and served over gRPC too); any other body is stored as an opaque value that only
//! HTTP serves back, byte for byte, unless [`HttpConfig::ac_strict`] asks for bazel-remote's
//! behaviour of refusing it. Keys are action hashes, shared with gRPC's action cache.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use prost::Message as _;

use super::body::{read_bounded, Body, RequestBody};
use super::response::{ok, HttpError};
use super::HttpConfig;
use crate::engine::{AcKind, Engine, HASH_LEN};
use crate::proto::reapi::ActionResult;

/// `GET` (and `HEAD`, whose body hyper drops): the stored bytes, exactly as they were put.
pub(super) async fn get(
    engine: &Engine,
    instance: &str,
    hash: [u8; HASH_LEN],
) -> Result<Response<Body>, HttpError> {
    match engine.get_action(instance, &hash).await? {
        Some((_, value)) => Ok(ok(Body::full(value))),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no action result for {} in instance {instance:?}",
                hex::encode(hash)
            ),
        )),
    }
}

/// `PUT`: stores the body (bounded by the config) as the kind [`classify`] gives it.
pub(super) async fn put(
    engine: &Arc<Engine>,
    config: &HttpConfig,
    instance: &str,
    hash: [u8; HASH_LEN],
    body: &mut RequestBody,
) -> Result<Response<Body>, HttpError> {
    let value = read_bounded(body, config.max_action_result_size).await?;
    let kind = classify(&value, config.ac_strict)?;
    engine.put_action(instance, hash, kind, value).await?;
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
