//! The grpc.health.v1 Health service, for load balancers and orchestrators.
//!
//! The server is SERVING as soon as it answers at all (the engine is open before the listener
//! starts), so `""` and each of our service names are SERVING and any other name is
//! SERVICE_UNKNOWN. Watch sends that status once and keeps the stream open, as the protocol
//! asks, until the client leaves or the server stops.

use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::proto::grpc::health::v1::{
    health_check_response::ServingStatus, health_server, HealthCheckRequest, HealthCheckResponse,
};

/// The services this server answers for, by their fully qualified names. Spelled out because
/// the generated `SERVICE_NAME` constants exist only outside madsim; a test checks them.
pub const SERVICES: [&str; 5] = [
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ActionCache",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "google.bytestream.ByteStream",
    "grpc.health.v1.Health",
];

/// Answers Check and Watch from the fixed list of served services.
#[derive(Debug, Default)]
pub struct HealthService;

impl HealthService {
    /// A health service for [`SERVICES`].
    pub fn new() -> Self {
        HealthService
    }

    fn status_of(service: &str) -> HealthCheckResponse {
        let status = if service.is_empty() || SERVICES.contains(&service) {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        HealthCheckResponse {
            status: status as i32,
        }
    }
}

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(Self::status_of(&request.get_ref().service)))
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let current = Self::status_of(&request.get_ref().service);
        // The status never changes while the server runs, so nothing follows the first reply.
        let stream = futures::stream::once(async move { Ok(current) })
            .chain(futures::stream::pending())
            .boxed();
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_services_serve_and_others_are_unknown() {
        let serving = ServingStatus::Serving as i32;
        assert_eq!(HealthService::status_of("").status, serving);
        for service in SERVICES {
            assert_eq!(HealthService::status_of(service).status, serving);
        }
        assert_eq!(
            HealthService::status_of("build.bazel.remote.execution.v2.Execution").status,
            ServingStatus::ServiceUnknown as i32
        );
    }

    #[cfg(not(madsim))]
    #[test]
    fn service_names_match_the_generated_ones() {
        use crate::proto::bytestream::byte_stream_server;
        use crate::proto::reapi::{
            action_cache_server, capabilities_server, content_addressable_storage_server,
        };
        assert_eq!(
            SERVICES,
            [
                capabilities_server::SERVICE_NAME,
                action_cache_server::SERVICE_NAME,
                content_addressable_storage_server::SERVICE_NAME,
                byte_stream_server::SERVICE_NAME,
                health_server::SERVICE_NAME,
            ]
        );
    }
}
