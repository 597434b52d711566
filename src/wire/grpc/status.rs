//! How store errors become gRPC statuses (the mapping itself is [`Error::grpc_code`]), and
//! statuses become per-blob `google.rpc.Status`. `Internal` is the only source of INTERNAL, and
//! it is logged as a bug; disk errors are logged as warnings.

use tonic::Status;

use crate::engine::Error;
use crate::proto::google::rpc;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let message = error.to_string();
        match &error {
            Error::Internal(_) => tracing::error!(%message, "internal error"),
            Error::Io { .. } => tracing::warn!(%message, "i/o error"),
            _ => {}
        }
        Status::new(error.grpc_code(), message)
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
    fn store_errors_map_to_codes() {
        let io = || std::io::Error::other("disk on fire");
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::DataLoss("x".into()), Code::NotFound),
            (Error::NoSpace("x".into()), Code::ResourceExhausted),
            (Error::Busy("x".into()), Code::ResourceExhausted),
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
