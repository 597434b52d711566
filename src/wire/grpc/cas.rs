//! The ContentAddressableStorage service: FindMissingBlobs, the batch calls, GetTree, and
//! SplitBlob / SpliceBlob (`split`).
//!
//! Batch compression: BatchUpdateBlobs items may be ZSTD (decompressed into the upload, bounded
//! by the declared size, verified by the engine as usual); BatchReadBlobs answers an item in
//! ZSTD when the client lists it in `acceptable_compressors` and the frame is smaller than the
//! blob, IDENTITY otherwise. For the batch limit a compressed item counts its declared
//! (uncompressed) size: that is what the server has to produce from it.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

use super::compression::{self, Compression};
use super::fastcdc::FastCdc;
use super::status::rpc_status;
use super::stream::ResponseStream;
use super::{digests, split, tree};
use crate::proto::reapi::{
    batch_read_blobs_response, batch_update_blobs_request, batch_update_blobs_response,
    chunking_function, content_addressable_storage_server::ContentAddressableStorage,
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse, GetTreeRequest,
    GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
};
use crate::store::{DigestFunction, Store};

/// Items of one batch call processed at once: a whole batch of typical blobs, so its appends
/// all land while one segment sync is in flight and the next sync covers the rest (at 16, a
/// batch of 256 waited for 16 syncs in turn). Each item holds an engine upload slot meanwhile:
/// sixteen such batches at once fill the default 4096, and items past that get RESOURCE_EXHAUSTED.
const BATCH_CONCURRENCY: usize = 256;

/// Serves the CAS from the store (shared by all instance names).
pub struct CasService {
    store: Arc<dyn Store>,
    /// Largest sum of blob sizes in one batch call (announced in the capabilities).
    max_batch_total_size: u64,
    /// Largest gRPC message (bounds BatchReadBlobs and GetTree replies).
    max_message_size: usize,
    /// How SplitBlob cuts (the parameters the capabilities announce).
    chunker: FastCdc,
}

impl CasService {
    /// A CAS over `store` with the given limits.
    pub fn new(store: Arc<dyn Store>, max_batch_total_size: u64, max_message_size: usize) -> Self {
        CasService {
            store,
            max_batch_total_size,
            max_message_size,
            chunker: FastCdc::announced(),
        }
    }

    /// INVALID_ARGUMENT if the blob `sizes` of one batch add up to more than the limit.
    fn check_batch_total(&self, sizes: impl Iterator<Item = u64>) -> Result<(), Status> {
        // Saturating: declared sizes come from the client and may be absurd.
        let total = sizes.fold(0u64, u64::saturating_add);
        if total > self.max_batch_total_size {
            return Err(Status::invalid_argument(format!(
                "batch of {total} bytes exceeds max_batch_total_size_bytes {}; use ByteStream",
                self.max_batch_total_size
            )));
        }
        Ok(())
    }

    async fn update_one(
        &self,
        function: DigestFunction,
        item: batch_update_blobs_request::Request,
    ) -> batch_update_blobs_response::Response {
        let result = async {
            let digest = digests::required(function, item.digest.as_ref(), "digest")?;
            // The engine verifies size and hash before anything is stored.
            match Compression::from_proto(item.compressor)? {
                Compression::Identity => Ok(self.store.put_blob(digest, item.data).await?),
                Compression::Zstd => {
                    let mut upload = self.store.begin_upload(digest).await?;
                    compression::inflate_into(&item.data, upload.as_mut()).await?;
                    Ok(upload.commit().await?)
                }
            }
        }
        .await;
        batch_update_blobs_response::Response {
            digest: item.digest,
            status: Some(rpc_status(&result)),
        }
    }

    /// Reads one blob, in zstd when `zstd_ok` and that makes it smaller.
    async fn read_one(
        &self,
        function: DigestFunction,
        requested: crate::proto::reapi::Digest,
        zstd_ok: bool,
    ) -> batch_read_blobs_response::Response {
        let result = async {
            let digest = digests::parse(function, &requested, "digest")?;
            let data = self.store.read_blob(&digest).await?;
            if zstd_ok && !data.is_empty() {
                let compressed = compression::compress(&data)?;
                if compressed.len() < data.len() {
                    return Ok((Bytes::from(compressed), Compression::Zstd));
                }
            }
            Ok::<_, Status>((data, Compression::Identity))
        }
        .await;
        let ((data, compression), result) = match result {
            Ok(encoded) => (encoded, Ok(())),
            Err(status) => ((Bytes::new(), Compression::Identity), Err(status)),
        };
        batch_read_blobs_response::Response {
            digest: Some(requested),
            data,
            compressor: compression.to_proto(),
            status: Some(rpc_status(&result)),
        }
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        tracing::debug!(count = request.blob_digests.len(), "FindMissingBlobs");
        let wanted = request
            .blob_digests
            .iter()
            .map(|d| digests::parse(function, d, "blob digest"))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self.store.find_missing_and_touch(&wanted).await?;
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing
                .iter()
                .map(crate::proto::reapi::Digest::from)
                .collect(),
        }))
    }

    /// Each blob succeeds or fails alone; responses are in request order.
    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        tracing::debug!(count = request.requests.len(), "BatchUpdateBlobs");
        self.check_batch_total(request.requests.iter().map(|r| {
            let sent = r.data.len() as u64;
            match (r.compressor == Compression::Identity.to_proto(), &r.digest) {
                // What a compressed item expands to (its declared size) is what it costs.
                (false, Some(digest)) => sent.max(digest.size_bytes.max(0) as u64),
                _ => sent,
            }
        }))?;
        let responses = futures::stream::iter(request.requests)
            .map(|item| self.update_one(function, item))
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await;
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    /// Each blob succeeds or fails alone; responses are in request order.
    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        tracing::debug!(count = request.digests.len(), "BatchReadBlobs");
        // IDENTITY is always acceptable; unknown compressors in the list are ignored.
        let zstd_ok = request
            .acceptable_compressors
            .contains(&Compression::Zstd.to_proto());
        self.check_batch_total(request.digests.iter().map(|d| d.size_bytes.max(0) as u64))?;
        let response = BatchReadBlobsResponse {
            responses: futures::stream::iter(request.digests)
                .map(|digest| self.read_one(function, digest, zstd_ok))
                .buffered(BATCH_CONCURRENCY)
                .collect()
                .await,
        };
        // The blob bytes fit the batch limit, but thousands of tiny entries add up too.
        if response.encoded_len() > self.max_message_size {
            return Err(Status::invalid_argument(format!(
                "the reply to {} digests would exceed the {} byte message limit; ask for fewer",
                response.responses.len(),
                self.max_message_size
            )));
        }
        Ok(Response::new(response))
    }

    type GetTreeStream = ResponseStream<GetTreeResponse>;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        let root = digests::required(function, request.root_digest.as_ref(), "root_digest")?;
        tracing::debug!(%root, page_size = request.page_size, "GetTree");
        let walk = tree::Walk::new(
            root,
            request.page_size,
            &request.page_token,
            self.max_message_size,
        )?;
        if !self.store.contains_and_touch(&root).await? {
            return Err(Status::not_found(format!(
                "root directory {root} not found"
            )));
        }
        Ok(Response::new(walk.spawn(self.store.clone())))
    }

    /// Splits with FastCDC 2020 whatever the client prefers (REAPI lets the server choose, and
    /// the reply says which it used).
    async fn split_blob(
        &self,
        request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        let blob = digests::required(function, request.blob_digest.as_ref(), "blob_digest")?;
        tracing::debug!(%blob, "SplitBlob");
        let chunks = split::split(self.store.as_ref(), &self.chunker, &blob).await?;
        Ok(Response::new(SplitBlobResponse {
            chunk_digests: chunks
                .iter()
                .map(crate::proto::reapi::Digest::from)
                .collect(),
            chunking_function: chunking_function::Value::FastCdc2020 as i32,
        }))
    }

    /// Any chunking is accepted: the server only checks that the chunks make the blob.
    async fn splice_blob(
        &self,
        request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        let request = request.into_inner();
        let function = digests::function(request.digest_function)?;
        let blob = digests::required(function, request.blob_digest.as_ref(), "blob_digest")?;
        let chunks = request
            .chunk_digests
            .iter()
            .map(|d| digests::parse(function, d, "chunk digest"))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(%blob, chunks = chunks.len(), "SpliceBlob");
        split::splice(self.store.as_ref(), &blob, &chunks).await?;
        Ok(Response::new(SpliceBlobResponse {
            blob_digest: Some((&blob).into()),
        }))
    }
}
