//! Per-RPC instrumentation of the gRPC services, as wrappers at the service-impl level.
//!
//! [`Observed`] implements each generated service trait by delegating to the real service and
//! recording the call around it. It is plain code inside the handler, so it runs under madsim
//! too, where tower layers and interceptors are ignored.

use std::borrow::Cow;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{noting, Call, FailureClass, Metrics, Protocol, UploadFailure};
use crate::proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use crate::proto::grpc::health::v1::{
    health_server::Health, HealthCheckRequest, HealthCheckResponse,
};
use crate::proto::reapi::{
    action_cache_server::ActionCache, capabilities_server::Capabilities,
    content_addressable_storage_server::ContentAddressableStorage, ActionResult,
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest, GetTreeResponse,
    ServerCapabilities, UpdateActionResultRequest,
};

/// A gRPC service whose every call is counted, timed and logged.
pub struct Observed<S> {
    inner: S,
    metrics: Arc<Metrics>,
    access_log: bool,
}

impl<S> Observed<S> {
    /// Wraps `inner`, recording into `metrics` (and the access log if `access_log`).
    pub fn new(inner: S, metrics: Arc<Metrics>, access_log: bool) -> Observed<S> {
        Observed {
            inner,
            metrics,
            access_log,
        }
    }

    fn start(&self, service: &'static str, method: &'static str) -> Call {
        Call::start(
            &self.metrics,
            self.access_log,
            Protocol::Grpc,
            service,
            method,
        )
    }

    /// Records `call` with the status of `result` and hands `result` back.
    fn finish<T>(
        &self,
        call: Call,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        let status = match &result {
            Ok(_) => "OK",
            Err(status) => code_name(status.code()),
        };
        call.finish(Cow::Borrowed(status));
        result
    }
}

/// The canonical name of a gRPC status code (the `status` label).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why an upload that ended with `code` and `message` failed.
fn upload_failure(code: Code, message: &str) -> UploadFailure {
    let class = match code {
        Code::InvalidArgument => FailureClass::InvalidArgument,
        Code::ResourceExhausted => FailureClass::ResourceExhausted,
        Code::Unavailable => FailureClass::Unavailable,
        _ => FailureClass::Other,
    };
    UploadFailure::classify(class, message)
}

/// `hash/size` of a proto digest, for the access log.
fn digest_key(digest: &crate::proto::reapi::Digest) -> String {
    format!("{}/{}", digest.hash, digest.size_bytes)
}

fn count_of(n: usize, what: &str) -> Option<String> {
    Some(format!("{n} {what}"))
}

#[tonic::async_trait]
impl<S: Capabilities> Capabilities for Observed<S> {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let mut call = self.start("Capabilities", "GetCapabilities");
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.get_capabilities(request).await;
        if let Ok(response) = &result {
            call.sent = response.get_ref().encoded_len() as u64;
        }
        self.finish(call, result)
    }
}

#[tonic::async_trait]
impl<S: ActionCache> ActionCache for Observed<S> {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let mut call = self.start("ActionCache", "GetActionResult");
        call.key = request.get_ref().action_digest.as_ref().map(digest_key);
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.get_action_result(request).await;
        match &result {
            Ok(response) => {
                self.metrics.ac_lookup(Protocol::Grpc, true);
                call.sent = response.get_ref().encoded_len() as u64;
                call.size = Some(call.sent);
            }
            Err(status) if status.code() == Code::NotFound => {
                self.metrics.ac_lookup(Protocol::Grpc, false);
            }
            Err(_) => {}
        }
        self.finish(call, result)
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let mut call = self.start("ActionCache", "UpdateActionResult");
        let message = request.get_ref();
        call.key = message.action_digest.as_ref().map(digest_key);
        call.size = message
            .action_result
            .as_ref()
            .map(|r| r.encoded_len() as u64);
        call.received = message.encoded_len() as u64;
        let result = self.inner.update_action_result(request).await;
        if let Ok(response) = &result {
            call.sent = response.get_ref().encoded_len() as u64;
        }
        self.finish(call, result)
    }
}

#[tonic::async_trait]
impl<S: ContentAddressableStorage> ContentAddressableStorage for Observed<S> {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let mut call = self.start("ContentAddressableStorage", "FindMissingBlobs");
        let asked = request.get_ref().blob_digests.len();
        call.key = count_of(asked, "digests");
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.find_missing_blobs(request).await;
        if let Ok(response) = &result {
            let missing = response.get_ref().missing_blob_digests.len();
            call.sent = response.get_ref().encoded_len() as u64;
            self.metrics.cas_lookups(
                Protocol::Grpc,
                "FindMissingBlobs",
                asked.saturating_sub(missing) as u64,
                missing as u64,
            );
        }
        self.finish(call, result)
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let mut call = self.start("ContentAddressableStorage", "BatchUpdateBlobs");
        let items = &request.get_ref().requests;
        let bytes: u64 = items.iter().map(|r| r.data.len() as u64).sum();
        call.key = count_of(items.len(), "blobs");
        call.size = Some(bytes);
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.batch_update_blobs(request).await;
        if let Ok(response) = &result {
            call.sent = response.get_ref().encoded_len() as u64;
            for item in &response.get_ref().responses {
                let status = item.status.clone().unwrap_or_default();
                if status.code != Code::Ok as i32 {
                    let reason = upload_failure(Code::from(status.code), &status.message);
                    self.metrics.upload_failed(Protocol::Grpc, reason);
                }
            }
        }
        self.finish(call, result)
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let mut call = self.start("ContentAddressableStorage", "BatchReadBlobs");
        call.key = count_of(request.get_ref().digests.len(), "digests");
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.batch_read_blobs(request).await;
        if let Ok(response) = &result {
            let (mut hits, mut misses, mut bytes) = (0, 0, 0);
            for item in &response.get_ref().responses {
                match item.status.as_ref().map_or(0, |s| s.code) {
                    0 => {
                        hits += 1;
                        bytes += item.data.len() as u64;
                    }
                    code if code == Code::NotFound as i32 => misses += 1,
                    _ => {}
                }
            }
            self.metrics
                .cas_lookups(Protocol::Grpc, "BatchReadBlobs", hits, misses);
            call.size = Some(bytes);
            call.sent = response.get_ref().encoded_len() as u64;
        }
        self.finish(call, result)
    }

    type GetTreeStream = BoxStream<'static, Result<GetTreeResponse, Status>>;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let mut call = self.start("ContentAddressableStorage", "GetTree");
        call.key = request.get_ref().root_digest.as_ref().map(digest_key);
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.get_tree(request).await;
        let sent = self
            .metrics
            .sent_counter(Protocol::Grpc, call.service, call.method);
        let result = result.map(|response| {
            response.map(|pages| {
                pages
                    .inspect(move |page| {
                        if let Ok(page) = page {
                            sent.inc_by(page.encoded_len() as u64);
                        }
                    })
                    .boxed()
            })
        });
        self.finish(call, result)
    }
}

#[tonic::async_trait]
impl<S: ByteStream> ByteStream for Observed<S> {
    type ReadStream = BoxStream<'static, Result<ReadResponse, Status>>;

    /// Timed to the start of the stream; the bytes are counted as they are sent.
    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let mut call = self.start("ByteStream", "Read");
        if let Some((key, size)) = super::blob_in_resource(&request.get_ref().resource_name) {
            call.key = Some(key);
            call.size = Some(size);
        }
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.read(request).await;
        match &result {
            Ok(_) => self.metrics.cas_lookups(Protocol::Grpc, "Read", 1, 0),
            Err(status) if status.code() == Code::NotFound => {
                self.metrics.cas_lookups(Protocol::Grpc, "Read", 0, 1);
            }
            Err(_) => {}
        }
        let sent = self
            .metrics
            .sent_counter(Protocol::Grpc, call.service, call.method);
        let result = result.map(|response| {
            response.map(|chunks| {
                chunks
                    .inspect(move |chunk| {
                        if let Ok(chunk) = chunk {
                            sent.inc_by(chunk.data.len() as u64);
                        }
                    })
                    .boxed()
            })
        });
        self.finish(call, result)
    }

    /// The wrapper cannot see the stream's messages: the handler names the blob with
    /// [`super::note_blob`], and the bytes received are the size the call committed.
    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut call = self.start("ByteStream", "Write");
        let result = noting(&mut call, self.inner.write(request)).await;
        match &result {
            Ok(response) => {
                call.received = u64::try_from(response.get_ref().committed_size).unwrap_or(0);
            }
            Err(status) => {
                let reason = upload_failure(status.code(), status.message());
                self.metrics.upload_failed(Protocol::Grpc, reason);
            }
        }
        self.finish(call, result)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let mut call = self.start("ByteStream", "QueryWriteStatus");
        if let Some((key, size)) = super::blob_in_resource(&request.get_ref().resource_name) {
            call.key = Some(key);
            call.size = Some(size);
        }
        call.received = request.get_ref().encoded_len() as u64;
        let result = self.inner.query_write_status(request).await;
        if let Ok(response) = &result {
            call.sent = response.get_ref().encoded_len() as u64;
        }
        self.finish(call, result)
    }
}

#[tonic::async_trait]
impl<S: Health> Health for Observed<S> {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let mut call = self.start("Health", "Check");
        call.key = Some(request.get_ref().service.clone()).filter(|s| !s.is_empty());
        let result = self.inner.check(request).await;
        self.finish(call, result)
    }

    type WatchStream = S::WatchStream;

    /// Timed to the first status; the stream then stays open.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut call = self.start("Health", "Watch");
        call.key = Some(request.get_ref().service.clone()).filter(|s| !s.is_empty());
        let result = self.inner.watch(request).await;
        self.finish(call, result)
    }
}
