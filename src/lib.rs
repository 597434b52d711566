//! hoard: a remote build cache for Bazel and other REAPI v2 / HTTP cache clients.
//!
//! Where a byte goes, by folder:
//! - [`wire`]: the front ends (gRPC REAPI services, the HTTP cache protocol).
//! - [`engine`]: content-addressed storage, the action cache, segments and the index.
//! - [`seam`]: the filesystem and runtime traits the engine is written against, and their real
//!   implementations. The simulator (`sim/`) supplies a simulated world behind the same traits.

pub mod engine;
pub mod proto;
pub mod seam;
pub mod server;
pub mod wire;
