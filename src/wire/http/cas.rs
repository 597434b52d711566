//! `/cas/{sha256}`: blobs, streamed in both directions.

use hyper::body::Body as _;
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{HeaderMap, Response, StatusCode};

use super::body::{next_data, Body, ChunkSender, RequestBody};
use super::response::{ok, HttpError};
use crate::store::{BlobRead, Digest, Store, HASH_LEN};

/// Bytes read from the store per response chunk.
const READ_CHUNK: usize = 1 << 20;

/// `GET`: the blob's bytes, streamed; `HEAD`: only its length. Either counts as a use of the
/// blob (as FindMissingBlobs does over gRPC): a client that checked relies on it staying.
pub(super) async fn get(
    store: &dyn Store,
    hash: &[u8; HASH_LEN],
    head: bool,
) -> Result<Response<Body>, HttpError> {
    let digest = store.resolve_hash_and_touch(hash).await?.ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!("blob {} not found", hex::encode(hash)),
        )
    })?;
    if head || digest.size == 0 {
        // hyper sends no body for HEAD but keeps this header; for the empty blob it matches.
        let mut response = ok(Body::empty());
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(digest.size));
        return Ok(response);
    }
    // Opened before the response head, so a blob gone since the lookup is still a clean 404.
    let reader = store.open_blob(&digest, 0).await?;
    let (sender, body) = Body::channel(digest.size);
    // The body is fed by its own task, which ends when the blob is sent or the client goes away
    // (the channel closes).
    tokio::spawn(send_blob(reader, sender));
    Ok(ok(body))
}

async fn send_blob(mut reader: Box<dyn BlobRead>, sender: ChunkSender) {
    // The reader verifies the hash as it goes and fails the last chunk on a mismatch; the error
    // aborts the response, so a client never receives all the bytes of a corrupt blob.
    while let Some(chunk) = reader.next_chunk(READ_CHUNK).await.transpose() {
        let failed = chunk.is_err();
        if sender.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// `PUT`: streams the body into an upload of exactly `Content-Length` bytes, verified against the
/// hash before it is acknowledged. Nothing is stored unless every byte arrived and matched.
pub(super) async fn put(
    store: &dyn Store,
    hash: [u8; HASH_LEN],
    headers: &HeaderMap,
    body: &mut RequestBody,
) -> Result<Response<Body>, HttpError> {
    let size = declared_length(headers, body)?;
    // Too large, no space and busy are refused here, before a byte of the body is read.
    let mut upload = store.begin_upload(Digest::sha256(hash, size)).await?;
    while let Some(data) = next_data(body).await? {
        upload.write(data).await?;
    }
    // Dropping `upload` on any error above discards what was staged.
    upload.commit().await?;
    Ok(ok(Body::empty()))
}

/// The body's length from `Content-Length`. The store needs the size before the first byte,
/// so a body without one (absent, or sent chunked, where the header does not count) is refused.
fn declared_length(headers: &HeaderMap, body: &RequestBody) -> Result<u64, HttpError> {
    let length_required = |why: &str| {
        HttpError::new(
            StatusCode::LENGTH_REQUIRED,
            format!("a CAS upload needs a Content-Length: {why}"),
        )
    };
    if !headers.contains_key(CONTENT_LENGTH) {
        return Err(length_required("none was sent"));
    }
    // hyper knows the exact length only for a body framed by a valid Content-Length.
    body.size_hint()
        .exact()
        .ok_or_else(|| length_required("the body is chunked"))
}
