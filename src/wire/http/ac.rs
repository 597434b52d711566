//! `/{instance}/ac/{sha256}`: action-cache entries.
//!
//! Bazel's HTTP protocol keys an entry by the action's hash alone, while the engine (like gRPC)
//! keys it by the action's digest, hash and size. HTTP entries are stored with size 0, so the
//! HTTP and gRPC action caches are separate namespaces: an entry written over one protocol is
//! not found over the other.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use prost::Message as _;

use super::body::{read_bounded, Body};
use super::response::{ok, HttpError};
use super::HttpConfig;
use crate::engine::{Digest, Engine, HASH_LEN};
use crate::proto::reapi::ActionResult;

/// The engine key of the HTTP entry for the action hashing to `hash`.
fn action_key(hash: [u8; HASH_LEN]) -> Digest {
    Digest { hash, size: 0 }
}

/// `GET` (and `HEAD`, whose body hyper drops): the stored bytes, exactly as they were put.
pub(super) async fn get(
    engine: &Engine,
    instance: &str,
    hash: [u8; HASH_LEN],
) -> Result<Response<Body>, HttpError> {
    match engine.get_action(instance, &action_key(hash)).await? {
        Some(value) => Ok(ok(Body::full(value))),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no action result for {} in instance {instance:?}",
                hex::encode(hash)
            ),
        )),
    }
}

/// `PUT`: stores the body (bounded by the config) once it passes [`validate`].
pub(super) async fn put(
    engine: &Arc<Engine>,
    config: &HttpConfig,
    instance: &str,
    hash: [u8; HASH_LEN],
    body: &mut Incoming,
) -> Result<Response<Body>, HttpError> {
    let value = read_bounded(body, config.max_action_result_size).await?;
    validate(&value)?;
    engine.put_action(instance, action_key(hash), value).await?;
    Ok(ok(Body::empty()))
}

/// Whether `value` may be stored as an action-cache entry: the single place that decides it.
fn validate(value: &[u8]) -> Result<(), HttpError> {
    ActionResult::decode(value)
        .map(drop)
        .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, format!("not an ActionResult: {e}")))
}
