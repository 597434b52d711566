//! Calls that never reached the per-call instrumentation (the `Guarded` wrapper):
//! tonic answers some requests before any service method runs (a unary or server-streaming
//! request whose message does not decode, a path no service serves). The connection's service
//! watches each call ([`crate::observe::watching`]) and records these here, so they are counted
//! and logged like every other call. Real world only: madsim-tonic has no such early answers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use hyper::HeaderMap;
use tonic::Code;

use super::guarded::code_name;
use crate::observe::{Call, Metrics, Protocol};

/// The methods served, by service: (full service name, label, methods).
const SERVED: [(&str, &str, &[&str]); 5] = [
    (
        "build.bazel.remote.execution.v2.Capabilities",
        "Capabilities",
        &["GetCapabilities"],
    ),
    (
        "build.bazel.remote.execution.v2.ActionCache",
        "ActionCache",
        &["GetActionResult", "UpdateActionResult"],
    ),
    (
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "ContentAddressableStorage",
        &[
            "FindMissingBlobs",
            "BatchUpdateBlobs",
            "BatchReadBlobs",
            "GetTree",
            "SplitBlob",
            "SpliceBlob",
        ],
    ),
    (
        "google.bytestream.ByteStream",
        "ByteStream",
        &["Read", "Write", "QueryWriteStatus"],
    ),
    ("grpc.health.v1.Health", "Health", &["Check", "Watch"]),
];

/// The `service` and `method` labels of a request path (`/package.Service/Method`); paths
/// that name nothing served are `unknown` (clients choose paths: each label value is a series).
fn labels(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    SERVED.iter().find(|(name, _, _)| *name == service).map_or(
        ("unknown", "unknown"),
        |(_, label, methods)| {
            let method = methods.iter().find(|m| **m == method).copied();
            (*label, method.unwrap_or("unknown"))
        },
    )
}

/// Records a call to `path` that arrived at `started` and was answered with `headers` without
/// reaching the instrumentation. Its status is the `grpc-status` of the (trailers-only) answer.
pub(super) fn record(
    metrics: &Arc<Metrics>,
    access_log: bool,
    path: &str,
    started: Instant,
    headers: &HeaderMap,
) {
    let (service, method) = labels(path);
    let status = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
        .map_or("UNKNOWN", |code| code_name(Code::from(code)));
    let mut call = Call::start(metrics, access_log, Protocol::Grpc, service, method).since(started);
    call.key = Some(path.chars().take(200).collect());
    call.finish(Cow::Borrowed(status));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_bounded_labels() {
        assert_eq!(
            labels("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"),
            ("ContentAddressableStorage", "FindMissingBlobs")
        );
        assert_eq!(
            labels("/google.bytestream.ByteStream/Nope"),
            ("ByteStream", "unknown")
        );
        assert_eq!(labels("/x.Y/Z"), ("unknown", "unknown"));
        assert_eq!(labels(""), ("unknown", "unknown"));
    }
}
