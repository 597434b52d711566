//! How store errors become gRPC statuses (the mapping itself is [`Error::grpc_code`]), and
//! statuses become per-blob `google.rpc.Status`. `Internal` is the only source of INTERNAL, and
//! it is logged as a bug; disk errors are logged as warnings.

use prost::Message as _;
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
        match error.retry_after() {
            Some(delay) => with_retry_info(error.grpc_code(), message, delay),
            None => Status::new(error.grpc_code(), message),
        }
    }
}

/// A status carrying a `google.rpc.RetryInfo` detail (in `grpc-status-details-bin`, as
/// googleapis clients read it): when the same request may succeed again.
fn with_retry_info(code: tonic::Code, message: String, delay: std::time::Duration) -> Status {
    let retry = rpc::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    let details = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: RETRY_INFO_TYPE_URL.to_owned(),
            value: retry.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

/// The `Any` type URL of [`rpc::RetryInfo`].
const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The `google.rpc.Status` of one item of a batch call.
pub fn rpc_status(result: &Result<(), Status>) -> rpc::Status {
    match result {
        Ok(()) => rpc::Status::default(),
        Err(status) => rpc::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            // What the status carries (a retry hint) goes with the item.
            details: rpc::Status::decode(status.details())
                .map(|s| s.details)
                .unwrap_or_default(),
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
    fn a_busy_refusal_carries_a_retry_delay_and_others_none() {
        let status = Status::from(Error::Busy("slots".into()));
        let details = rpc::Status::decode(status.details()).expect("google.rpc.Status");
        assert_eq!(details.code, Code::ResourceExhausted as i32);
        assert_eq!(details.message, "slots");
        assert_eq!(details.details.len(), 1);
        assert_eq!(details.details[0].type_url, RETRY_INFO_TYPE_URL);
        let retry = rpc::RetryInfo::decode(&details.details[0].value[..]).unwrap();
        let delay = retry.retry_delay.unwrap();
        assert_eq!((delay.seconds, delay.nanos), (1, 0));
        let status = Status::from(Error::NoSpace("full".into()));
        assert!(status.details().is_empty());
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
