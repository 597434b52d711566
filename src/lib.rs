//! hoard: a remote build cache for Bazel and other REAPI v2 / HTTP cache clients.
//!
//! Where a byte goes, by folder:
//! - [`wire`]: the front ends (gRPC REAPI services, the HTTP cache protocol).
//! - [`store`]: the [`store::Store`] interface both front ends go through, its layers (action
//!   result validation and completeness, metrics) and implementations (the engine, memory).
//! - [`engine`]: content-addressed storage, the action cache, segments and the index.
//! - [`seam`]: the filesystem and runtime traits the engine is written against, and their real
//!   implementations. The simulator (`sim/`) supplies a simulated world behind the same traits.
//! - [`tier`]: the shared object-store tier (many nodes, one bucket): write-back uploads from
//!   the local log, fills on a local miss.
//! - [`observe`]: metrics (`GET /metrics`), the status page, the access log, per-request
//!   instrumentation.
//! - [`verify`]: `hoard verify`, the offline scrub (and repair) of a data directory.

pub mod auth;
pub mod config;
pub mod engine;
pub mod observe;
pub mod proto;
pub mod seam;
pub mod server;
pub mod store;
pub mod tier;
pub mod tls;
pub mod verify;
pub mod wire;
