//! What can go wrong in a [`super::Store`], one variant per thing a client or a metric must tell
//! apart. Each front end maps a variant once: [`Error::grpc_code`] and [`Error::http_status`].

use std::io;

use crate::engine::Digest;

/// A store operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed: a bad digest, offset, instance name or action result.
    #[error("{0}")]
    InvalidArgument(String),
    /// The uploaded bytes hash to something else than the declared digest.
    #[error("uploaded bytes hash to {}, not to the declared {}", hex::encode(.actual), .expected.hex())]
    HashMismatch {
        /// What the client declared.
        expected: Digest,
        /// What the bytes hash to.
        actual: [u8; 32],
    },
    /// More or fewer bytes arrived than the digest declared.
    #[error("upload of {expected} {}", describe_size_mismatch(.expected.size, *.received))]
    SizeMismatch {
        /// What the client declared.
        expected: Digest,
        /// Bytes that arrived (or would have, counting the refused write).
        received: u64,
    },
    /// The blob is larger than the store accepts.
    #[error("{what} of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large ("blob", "action result", ...).
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The disk (or the size budget) has no room for it.
    #[error("{0}")]
    NoSpace(String),
    /// Too much concurrent work; the same request may succeed a moment later.
    #[error("{0}")]
    Busy(String),
    /// The blob or entry does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Stored bytes failed verification; the entry has been dropped.
    #[error("{0}")]
    DataLoss(String),
    /// The disk failed; a retry may succeed.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A bug or an impossible state.
    #[error("{0}")]
    Internal(String),
}

/// The retry hint of [`Error::Busy`]: upload slots free up and an upload backlog drains within
/// moments, and a whole second keeps HTTP's `Retry-After` (whole seconds) exact.
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

fn describe_size_mismatch(declared: u64, received: u64) -> String {
    if received > declared {
        format!("sent {received} bytes, more than its declared size")
    } else {
        format!("ended after {received} bytes, fewer than its declared size")
    }
}

impl Error {
    /// Wraps an I/O error; a full disk becomes [`Error::NoSpace`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        if source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(libc::ENOSPC)
        {
            return Error::NoSpace(format!("{context}: disk full ({source})"));
        }
        Error::Io { context, source }
    }

    /// The variant's name as a metric label (`hoard_upload_failures_total{reason}`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::HashMismatch { .. } => "hash_mismatch",
            Error::SizeMismatch { .. } => "size_mismatch",
            Error::TooLarge { .. } => "too_large",
            Error::NoSpace(_) => "no_space",
            Error::Busy(_) => "busy",
            Error::NotFound(_) => "not_found",
            Error::DataLoss(_) => "data_loss",
            Error::Io { .. } => "io",
            Error::Internal(_) => "internal",
        }
    }

    /// The gRPC code a front end answers with.
    ///
    /// `DataLoss` is NOT_FOUND: the store already dropped the entry, so to the client it is
    /// absent, and NOT_FOUND is what makes Bazel upload it again. `Io` is UNAVAILABLE: the request
    /// was fine and a retry may succeed. `TooLarge` is INVALID_ARGUMENT, as REAPI asks of an
    /// upload over `max_cas_blob_size_bytes` (no retry can succeed; Bazel retries
    /// RESOURCE_EXHAUSTED). Only `Internal` is INTERNAL.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_)
            | Error::HashMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::TooLarge { .. } => Code::InvalidArgument,
            Error::NoSpace(_) | Error::Busy(_) => Code::ResourceExhausted,
            Error::NotFound(_) | Error::DataLoss(_) => Code::NotFound,
            Error::Io { .. } => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status a front end answers with (same reasoning as [`Error::grpc_code`]);
    /// `Busy` and `Io` are 503, worth a retry.
    pub fn http_status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            Error::InvalidArgument(_) | Error::HashMismatch { .. } | Error::SizeMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Busy(_) | Error::Io { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotFound(_) | Error::DataLoss(_) => StatusCode::NOT_FOUND,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long a client should wait before trying the same request again, for a refusal that
    /// a moment later may succeed (`Busy`): gRPC's `google.rpc.RetryInfo`, HTTP's `Retry-After`.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        matches!(self, Error::Busy(_)).then_some(BUSY_RETRY_AFTER)
    }

    /// Whether the client caused it (and it is logged quietly).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument(_)
                | Error::HashMismatch { .. }
                | Error::SizeMismatch { .. }
                | Error::TooLarge { .. }
                | Error::NotFound(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant.
    fn every_variant() -> Vec<Error> {
        let d = Digest::of(b"abc");
        vec![
            Error::InvalidArgument("bad".into()),
            Error::HashMismatch {
                expected: d,
                actual: [0; 32],
            },
            Error::SizeMismatch {
                expected: d,
                received: 2,
            },
            Error::TooLarge {
                what: "blob",
                size: 10,
                limit: 5,
            },
            Error::NoSpace("full".into()),
            Error::Busy("slots".into()),
            Error::NotFound("gone".into()),
            Error::DataLoss("rot".into()),
            Error::io("reading", io::Error::other("EIO")),
            Error::Internal("bug".into()),
        ]
    }

    #[test]
    fn every_variant_has_its_own_name_and_a_message() {
        let errors = every_variant();
        let mut names: Vec<_> = errors.iter().map(Error::kind_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), errors.len());
        for error in &errors {
            assert!(!error.to_string().is_empty(), "{error:?}");
        }
    }

    #[test]
    fn client_mistakes_are_never_internal_or_5xx() {
        for error in every_variant() {
            if error.is_client_error() {
                assert!(error.http_status().is_client_error(), "{error:?}");
                assert_ne!(error.grpc_code(), tonic::Code::Internal, "{error:?}");
            }
        }
    }

    #[test]
    fn a_full_disk_is_no_space() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(Error::io("appending", full), Error::NoSpace(_)));
        let failed = io::Error::from_raw_os_error(libc::EIO);
        assert!(matches!(Error::io("appending", failed), Error::Io { .. }));
    }

    #[test]
    fn size_mismatch_says_which_way() {
        let d = Digest::of(b"abc");
        let long = Error::SizeMismatch {
            expected: d,
            received: 4,
        };
        let short = Error::SizeMismatch {
            expected: d,
            received: 2,
        };
        assert!(long.to_string().contains("more than its declared size"));
        assert!(short.to_string().contains("fewer than its declared size"));
    }
}
