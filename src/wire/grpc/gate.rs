//! Authentication of gRPC calls: [`Gated`] wraps a service and checks every call's
//! `authorization` metadata before the service sees it.
//!
//! A wrapper rather than a tonic interceptor: an interceptor does not know which method is being
//! called (so cannot let reads through while refusing writes), and wrapping the service traits
//! runs the same check under madsim, whose transport skips tower layers. Health checks are not
//! gated: they reveal nothing and probes cannot send credentials.

use std::future::Future;

use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Access, Auth};
use crate::proto::bytestream::byte_stream_server::ByteStream;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, WriteRequest, WriteResponse,
};
use crate::proto::reapi::action_cache_server::ActionCache;
use crate::proto::reapi::capabilities_server::Capabilities;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorage;
use crate::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse,
    GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest, ServerCapabilities,
    UpdateActionResultRequest,
};

/// `inner`, answering only calls that `auth` lets through.
pub(super) struct Gated<S> {
    inner: S,
    auth: Auth,
}

impl<S> Gated<S> {
    pub(super) fn new(inner: S, auth: Auth) -> Gated<S> {
        Gated { inner, auth }
    }

    /// `UNAUTHENTICATED` unless the call's credentials allow `access`.
    fn check<T>(
        &self,
        request: &Request<T>,
        access: Access,
    ) -> impl Future<Output = Result<(), Status>> + Send + '_ {
        check(&self.auth, request, access)
    }
}

/// `UNAUTHENTICATED` unless `request`'s `authorization` metadata allows `access` under `auth`.
///
/// The header is copied out (cheaply: it shares the bytes) before the returned future waits, so
/// the future does not hold the request, whose streaming body need not be `Sync`.
pub(crate) fn check<'a, T>(
    auth: &'a Auth,
    request: &Request<T>,
    access: Access,
) -> impl Future<Output = Result<(), Status>> + Send + 'a {
    let header = request.metadata().get("authorization").cloned();
    async move {
        if !auth.is_enabled() {
            return Ok(());
        }
        auth.check(header.as_ref().map(|value| value.as_bytes()), access)
            .await
            .map_err(|denied| Status::unauthenticated(denied.to_string()))
    }
}

#[tonic::async_trait]
impl<S: Capabilities> Capabilities for Gated<S> {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        self.check(&request, Access::Read).await?;
        self.inner.get_capabilities(request).await
    }
}

#[tonic::async_trait]
impl<S: ActionCache> ActionCache for Gated<S> {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        self.check(&request, Access::Read).await?;
        self.inner.get_action_result(request).await
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        self.check(&request, Access::Write).await?;
        self.inner.update_action_result(request).await
    }
}

#[tonic::async_trait]
impl<S: ContentAddressableStorage> ContentAddressableStorage for Gated<S> {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        self.check(&request, Access::Read).await?;
        self.inner.find_missing_blobs(request).await
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        self.check(&request, Access::Write).await?;
        self.inner.batch_update_blobs(request).await
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        self.check(&request, Access::Read).await?;
        self.inner.batch_read_blobs(request).await
    }

    type GetTreeStream = S::GetTreeStream;

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        self.check(&request, Access::Read).await?;
        self.inner.get_tree(request).await
    }
}

#[tonic::async_trait]
impl<S: ByteStream> ByteStream for Gated<S> {
    type ReadStream = S::ReadStream;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.check(&request, Access::Read).await?;
        self.inner.read(request).await
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        // Checked before the first message is read: a refused upload stores nothing.
        self.check(&request, Access::Write).await?;
        self.inner.write(request).await
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        self.check(&request, Access::Write).await?;
        self.inner.query_write_status(request).await
    }
}
