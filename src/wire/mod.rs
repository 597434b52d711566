//! The front ends: how bytes arrive and leave. Each maps engine errors to its protocol's codes.

pub mod grpc;
pub mod http;
pub mod limits;
