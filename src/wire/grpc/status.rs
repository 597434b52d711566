//! How engine errors become gRPC statuses, and statuses become per-blob `google.rpc.Status`.
//!
//! Choices worth knowing:
//! - `DataLoss` (stored bytes failed verification) is reported as NOT_FOUND: the engine has
//!   already dropped the blob, so from the client's side it is simply absent, and NOT_FOUND is
//!   what makes Bazel re-upload it (FindMissingBlobs now lists it too).
//! - `Io` is UNAVAILABLE: the request was fine and a retry may succeed; a full disk was already
//!   classified as `ResourceExhausted` by the engine.
//! - `Internal` is the only source of INTERNAL, and it is logged as a bug.

use tonic::Status;

use crate::engine::Error;
use crate::proto::google::rpc;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::NotFound(_) | Error::DataLoss(_) => Status::not_found(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Internal(_) => {
                tracing::error!(%message, "internal error");
                Status::internal(message)
            }
            Error::Io { .. } => {
                tracing::warn!(%message, "i/o error");
                Status::unavailable(message)
            }
        }
    }
}

/// The `google.rpc.Status` of one item of a batch call.
pub fn rpc_status(result: &Result<(), Status>) -> rpc::Status {
    match result {
        Ok(()) => rpc::Status::default(),
        Err(status) => rpc::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn engine_errors_map_to_codes() {
        let io = || std::io::Error::other("disk on fire");
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::DataLoss("x".into()), Code::NotFound),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (Error::Internal("x".into()), Code::Internal),
            (Error::io("reading", io()), Code::Unavailable),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn rpc_status_keeps_code_and_message() {
        assert_eq!(rpc_status(&Ok(())).code, 0);
        let s = rpc_status(&Err(Status::not_found("gone")));
        assert_eq!(
            (s.code, s.message.as_str()),
            (Code::NotFound as i32, "gone")
        );
    }
}
