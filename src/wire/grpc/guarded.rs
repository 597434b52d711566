//! [`Guarded`]: every gRPC call is checked and recorded by one wrapper around each service.
//!
//! Before the service runs, the call's `authorization` metadata must allow what it does
//! ([`Access::Read`] or [`Access::Write`], see [`crate::auth`]); a refusal is UNAUTHENTICATED and
//! nothing is read or stored. Around it, the call is recorded ([`Call`]: request counts by
//! status, latency, bytes, the access log), refused calls included. Health checks are open: they
//! reveal nothing and probes cannot send credentials.
//!
//! A wrapper of the service traits rather than a tonic interceptor or tower layer: an
//! interceptor cannot tell which method is called (so cannot let reads through while refusing
//! writes), and madsim's transport skips tower layers, so this is the form that runs in the
//! simulator too. What the cache counts (hits, misses, upload failures) is the store's
//! [`crate::store::Metered`] layer, not this.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::{Access, Auth};
use crate::observe::{blob_in_resource, noting, Call, Metrics, Protocol};
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
    ServerCapabilities, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
    UpdateActionResultRequest,
};

/// A service whose every call is authenticated and recorded.
pub(super) struct Guarded<S> {
    inner: S,
    auth: Auth,
    metrics: Arc<Metrics>,
    access_log: bool,
}

/// Which method a call is, for the record.
type Method = (&'static str, &'static str);

impl<S> Guarded<S> {
    /// Wraps `inner`: calls must pass `auth`, and are recorded in `metrics` (and the access log
    /// if `access_log`).
    pub(super) fn new(inner: S, auth: Auth, metrics: Arc<Metrics>, access_log: bool) -> Self {
        Guarded {
            inner,
            auth,
            metrics,
            access_log,
        }
    }

    /// Runs one call: starts its record, lets `describe` fill in what the request is about,
    /// checks the credentials for `access` (`None`: open to all), runs `serve`, lets `sent`
    /// note what the response carries, and finishes the record with the outcome.
    async fn around<Req, Res, Fut>(
        &self,
        (service, method): Method,
        access: Option<Access>,
        request: Request<Req>,
        describe: impl FnOnce(&Req, &mut Call),
        serve: impl FnOnce(Request<Req>) -> Fut,
        sent: impl FnOnce(&Res, &mut Call),
    ) -> Result<Response<Res>, Status>
    where
        Fut: Future<Output = Result<Response<Res>, Status>>,
    {
        let mut call = Call::start(
            &self.metrics,
            self.access_log,
            Protocol::Grpc,
            service,
            method,
        );
        describe(request.get_ref(), &mut call);
        let refused = match access {
            Some(access) => self.check(&request, access).await.err(),
            None => None,
        };
        let result = match refused {
            Some(refused) => Err(refused),
            None => noting(&mut call, serve(request)).await,
        };
        if let Ok(response) = &result {
            sent(response.get_ref(), &mut call);
        }
        let status = match &result {
            Ok(_) => "OK",
            Err(status) => code_name(status.code()),
        };
        call.finish(Cow::Borrowed(status));
        result
    }

    /// [`Guarded::around`] for a unary call: the message sizes are the bytes received and sent.
    async fn unary<Req: Message, Res: Message, Fut>(
        &self,
        method: Method,
        access: Option<Access>,
        request: Request<Req>,
        describe: impl FnOnce(&Req, &mut Call),
        serve: impl FnOnce(Request<Req>) -> Fut,
    ) -> Result<Response<Res>, Status>
    where
        Fut: Future<Output = Result<Response<Res>, Status>>,
    {
        let describe = |message: &Req, call: &mut Call| {
            call.received = message.encoded_len() as u64;
            describe(message, call);
        };
        let sent = |message: &Res, call: &mut Call| call.sent = message.encoded_len() as u64;
        self.around(method, access, request, describe, serve, sent)
            .await
    }

    /// `UNAUTHENTICATED` unless the call's credentials allow `access`. The header is copied
    /// out (cheaply: it shares the bytes) before the check waits, so the future does not hold
    /// the request, whose streaming body need not be `Sync`.
    fn check<T>(
        &self,
        request: &Request<T>,
        access: Access,
    ) -> impl Future<Output = Result<(), Status>> + Send + '_ {
        let header = request.metadata().get("authorization").cloned();
        let auth = &self.auth;
        async move {
            if !auth.is_enabled() {
                return Ok(());
            }
            let header = header.as_ref().map(|value| value.as_bytes());
            auth.check(header, access)
                .await
                .map_err(|denied| Status::unauthenticated(denied.to_string()))
        }
    }

    /// `stream`, counting each item's bytes as sent by `method` (a stream outlives its call's
    /// record).
    fn counting_sent<T, St>(
        &self,
        (service, method): Method,
        stream: St,
        size: fn(&T) -> u64,
    ) -> BoxStream<'static, Result<T, Status>>
    where
        T: Send + 'static,
        St: Stream<Item = Result<T, Status>> + Send + 'static,
    {
        let sent = self.metrics.sent_counter(Protocol::Grpc, service, method);
        stream
            .inspect(move |item| {
                if let Ok(item) = item {
                    sent.inc_by(size(item));
                }
            })
            .boxed()
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

/// `hash/size` of a proto digest, for the access log.
fn digest_key(digest: &crate::proto::reapi::Digest) -> String {
    format!("{}/{}", digest.hash, digest.size_bytes)
}

fn count_of(n: usize, what: &str) -> Option<String> {
    Some(format!("{n} {what}"))
}

/// Names the blob of a ByteStream resource in the record.
fn describe_resource(name: &str, call: &mut Call) {
    if let Some((key, size)) = blob_in_resource(name) {
        call.key = Some(key);
        call.size = Some(size);
    }
}

const READ: Option<Access> = Some(Access::Read);
const WRITE: Option<Access> = Some(Access::Write);

#[tonic::async_trait]
impl<S: Capabilities> Capabilities for Guarded<S> {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let method = ("Capabilities", "GetCapabilities");
        self.unary(
            method,
            READ,
            request,
            |_, _| {},
            |r| self.inner.get_capabilities(r),
        )
        .await
    }
}

#[tonic::async_trait]
impl<S: ActionCache> ActionCache for Guarded<S> {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let method = ("ActionCache", "GetActionResult");
        let describe = |r: &GetActionResultRequest, call: &mut Call| {
            call.key = r.action_digest.as_ref().map(digest_key);
        };
        self.unary(method, READ, request, describe, |r| {
            self.inner.get_action_result(r)
        })
        .await
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let method = ("ActionCache", "UpdateActionResult");
        let describe = |r: &UpdateActionResultRequest, call: &mut Call| {
            call.key = r.action_digest.as_ref().map(digest_key);
            call.size = r.action_result.as_ref().map(|a| a.encoded_len() as u64);
        };
        self.unary(method, WRITE, request, describe, |r| {
            self.inner.update_action_result(r)
        })
        .await
    }
}

#[tonic::async_trait]
impl<S: ContentAddressableStorage> ContentAddressableStorage for Guarded<S> {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let method = ("ContentAddressableStorage", "FindMissingBlobs");
        let describe = |r: &FindMissingBlobsRequest, call: &mut Call| {
            call.key = count_of(r.blob_digests.len(), "digests");
        };
        self.unary(method, READ, request, describe, |r| {
            self.inner.find_missing_blobs(r)
        })
        .await
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let method = ("ContentAddressableStorage", "BatchUpdateBlobs");
        let describe = |r: &BatchUpdateBlobsRequest, call: &mut Call| {
            call.key = count_of(r.requests.len(), "blobs");
            call.size = Some(r.requests.iter().map(|i| i.data.len() as u64).sum());
        };
        self.unary(method, WRITE, request, describe, |r| {
            self.inner.batch_update_blobs(r)
        })
        .await
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let method = ("ContentAddressableStorage", "BatchReadBlobs");
        let describe = |r: &BatchReadBlobsRequest, call: &mut Call| {
            call.key = count_of(r.digests.len(), "digests");
        };
        self.unary(method, READ, request, describe, |r| {
            self.inner.batch_read_blobs(r)
        })
        .await
    }

    /// A read: the chunks it stores are derived from a stored blob, so they add nothing a
    /// reader could not already fetch.
    async fn split_blob(
        &self,
        request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        let method = ("ContentAddressableStorage", "SplitBlob");
        let describe = |r: &SplitBlobRequest, call: &mut Call| {
            call.key = r.blob_digest.as_ref().map(digest_key);
        };
        self.unary(method, READ, request, describe, |r| {
            self.inner.split_blob(r)
        })
        .await
    }

    async fn splice_blob(
        &self,
        request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        let method = ("ContentAddressableStorage", "SpliceBlob");
        let describe = |r: &SpliceBlobRequest, call: &mut Call| {
            call.key = r.blob_digest.as_ref().map(digest_key);
        };
        self.unary(method, WRITE, request, describe, |r| {
            self.inner.splice_blob(r)
        })
        .await
    }

    type GetTreeStream = BoxStream<'static, Result<GetTreeResponse, Status>>;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        let method = ("ContentAddressableStorage", "GetTree");
        let describe = |r: &GetTreeRequest, call: &mut Call| {
            call.key = r.root_digest.as_ref().map(digest_key);
            call.received = r.encoded_len() as u64;
        };
        let serve = |r| async {
            let pages = self.inner.get_tree(r).await?;
            let size = |page: &GetTreeResponse| page.encoded_len() as u64;
            Ok(pages.map(|pages| self.counting_sent(method, pages, size)))
        };
        self.around(method, READ, request, describe, serve, |_, _| {})
            .await
    }
}

#[tonic::async_trait]
impl<S: ByteStream> ByteStream for Guarded<S> {
    type ReadStream = BoxStream<'static, Result<ReadResponse, Status>>;

    /// Timed to the start of the stream; the bytes are counted as they are sent.
    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let method = ("ByteStream", "Read");
        let describe = |r: &ReadRequest, call: &mut Call| {
            describe_resource(&r.resource_name, call);
            call.received = r.encoded_len() as u64;
        };
        let serve = |r| async {
            let chunks = self.inner.read(r).await?;
            let size = |chunk: &ReadResponse| chunk.data.len() as u64;
            Ok(chunks.map(|chunks| self.counting_sent(method, chunks, size)))
        };
        self.around(method, READ, request, describe, serve, |_, _| {})
            .await
    }

    /// The wrapper cannot see the stream's messages: the handler names the blob with
    /// [`crate::observe::note_blob`], and the bytes received are the size the call committed.
    /// Credentials are checked before the first message is read: a refused upload stores
    /// nothing.
    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let method = ("ByteStream", "Write");
        let committed = |response: &WriteResponse, call: &mut Call| {
            call.received = u64::try_from(response.committed_size).unwrap_or(0);
        };
        self.around(
            method,
            WRITE,
            request,
            |_, _| {},
            |r| self.inner.write(r),
            committed,
        )
        .await
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let method = ("ByteStream", "QueryWriteStatus");
        let describe = |r: &QueryWriteStatusRequest, call: &mut Call| {
            describe_resource(&r.resource_name, call);
        };
        self.unary(method, WRITE, request, describe, |r| {
            self.inner.query_write_status(r)
        })
        .await
    }
}

#[tonic::async_trait]
impl<S: Health> Health for Guarded<S> {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let describe = |r: &HealthCheckRequest, call: &mut Call| {
            call.key = Some(r.service.clone()).filter(|s| !s.is_empty());
        };
        self.unary(("Health", "Check"), None, request, describe, |r| {
            self.inner.check(r)
        })
        .await
    }

    type WatchStream = S::WatchStream;

    /// Timed to the first status; the stream then stays open.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let describe = |r: &HealthCheckRequest, call: &mut Call| {
            call.key = Some(r.service.clone()).filter(|s| !s.is_empty());
        };
        let method = ("Health", "Watch");
        self.around(
            method,
            None,
            request,
            describe,
            |r| self.inner.watch(r),
            |_, _| {},
        )
        .await
    }
}
