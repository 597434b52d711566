//! SplitBlob and SpliceBlob: large blobs as lists of content-defined chunks.
//!
//! Chunks are ordinary CAS blobs under the request's digest function. A split streams the
//! stored blob through FastCDC 2020 (`fastcdc`, the parameters the capabilities announce),
//! holding at most one maximum chunk size ahead (2 MiB), and stores each chunk the CAS lacks; the
//! blob's own read verifies it as it goes, so a corrupt blob fails the split. A splice checks
//! that the chunk sizes add up to the blob's and that every chunk is stored before it reads
//! anything, then streams the chunks into one upload of the blob, which is verified against the
//! requested digest before it is stored: a rejected splice stores nothing.

use bytes::BytesMut;
use tonic::Status;

use super::fastcdc::FastCdc;
use crate::store::{Digest, Error, Store};

/// Bytes read from the store per step.
const READ_CHUNK: usize = 1 << 20;

/// Splits the stored blob `blob` into chunks, stores the ones the CAS lacks, and returns their
/// digests in order. NOT_FOUND if the blob is not stored.
pub async fn split(store: &dyn Store, cdc: &FastCdc, blob: &Digest) -> Result<Vec<Digest>, Status> {
    if !store.contains_and_touch(blob).await? {
        return Err(Status::not_found(format!("blob {blob} not found")));
    }
    let mut reader = store.open_blob(blob, 0).await?;
    let mut pending = BytesMut::new();
    let mut chunks = Vec::new();
    let mut at_end = false;
    while !(at_end && pending.is_empty()) {
        while !at_end && pending.len() < cdc.max_size() {
            match reader.next_chunk(READ_CHUNK).await? {
                Some(bytes) => pending.extend_from_slice(&bytes),
                None => at_end = true,
            }
        }
        if pending.is_empty() {
            break;
        }
        let len = cdc.cut(&pending);
        let chunk = pending.split_to(len).freeze();
        let digest = Digest::of_with(blob.function, &chunk);
        if !store.contains_and_touch(&digest).await? {
            store.put_blob(digest, chunk).await?;
        }
        chunks.push(digest);
    }
    Ok(chunks)
}

/// Stores `blob` as the concatenation of the stored `chunks` (all under `blob`'s function),
/// after verifying it. A blob already stored is kept as it is (REAPI allows the no-op).
pub async fn splice(store: &dyn Store, blob: &Digest, chunks: &[Digest]) -> Result<(), Status> {
    let total = chunks
        .iter()
        .try_fold(0u64, |sum, chunk| sum.checked_add(chunk.size));
    if total != Some(blob.size) {
        return Err(Status::invalid_argument(format!(
            "the chunks add up to {} bytes, not the {} of {blob}",
            total.map_or_else(|| "too many".to_owned(), |t| t.to_string()),
            blob.size
        )));
    }
    if store.contains_and_touch(blob).await? {
        return Ok(());
    }
    if let Some(missing) = store.find_missing_and_touch(chunks).await?.first() {
        return Err(Status::not_found(format!(
            "chunk {missing} of {blob} is not stored"
        )));
    }
    let mut upload = store.begin_upload(*blob).await?;
    for chunk in chunks {
        let mut reader = match store.open_blob(chunk, 0).await {
            Ok(reader) => reader,
            // Evicted since the check: the client uploads it again.
            Err(Error::NotFound(_) | Error::DataLoss(_)) => {
                return Err(Status::not_found(format!(
                    "chunk {chunk} of {blob} is not stored"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        while let Some(bytes) = reader.next_chunk(READ_CHUNK).await? {
            upload.write(bytes).await?;
        }
    }
    // Size and hash are checked here; nothing is stored unless they match.
    upload.commit().await?;
    Ok(())
}
