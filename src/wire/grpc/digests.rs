//! Converting REAPI `Digest` messages to engine digests and back.

use tonic::Status;

use crate::engine::Digest;
use crate::proto::reapi;
use crate::store::action_result;

/// Parses a digest the request must carry; `what` names the field in error messages.
pub fn required(digest: Option<&reapi::Digest>, what: &str) -> Result<Digest, Status> {
    Ok(action_result::required_digest(digest, what)?)
}

/// Parses a digest: 64 lowercase hex characters and a size that is not negative.
pub fn parse(digest: &reapi::Digest, what: &str) -> Result<Digest, Status> {
    Ok(action_result::parse_digest(digest, what)?)
}

/// The REAPI form of `digest`.
pub fn to_proto(digest: &Digest) -> reapi::Digest {
    reapi::Digest {
        hash: digest.hex(),
        size_bytes: digest.size as i64,
    }
}

/// Rejects requests that name a digest function other than SHA-256. UNKNOWN (0) is what older
/// clients send; it means "infer from the hash", which for 64 hex characters is SHA-256.
pub fn check_function(digest_function: i32) -> Result<(), Status> {
    use reapi::digest_function::Value;
    match Value::try_from(digest_function) {
        Ok(Value::Unknown | Value::Sha256) => Ok(()),
        _ => Err(Status::invalid_argument(format!(
            "digest function {digest_function} is not supported; this server uses SHA256 only"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let d = Digest::of(b"abc");
        assert_eq!(parse(&to_proto(&d), "d").unwrap(), d);
        let bad = reapi::Digest {
            hash: "xyz".into(),
            size_bytes: 3,
        };
        assert_eq!(parse(&bad, "d").unwrap_err().code(), Code::InvalidArgument);
        let negative = reapi::Digest {
            size_bytes: -1,
            ..to_proto(&d)
        };
        assert_eq!(
            parse(&negative, "d").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            required(None, "d").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn only_sha256_is_accepted() {
        assert!(check_function(0).is_ok());
        assert!(check_function(1).is_ok());
        assert!(check_function(9).is_err());
        assert!(check_function(1234).is_err());
    }
}
