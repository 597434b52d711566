//! Converting REAPI `Digest` messages to engine digests and back, and the request's digest
//! function.

use tonic::Status;

use crate::engine::{Digest, DigestFunction};
use crate::proto::reapi;
use crate::store::action_result;

/// Parses a digest under `function` the request must carry; `what` names the field in error
/// messages.
pub fn required(
    function: DigestFunction,
    digest: Option<&reapi::Digest>,
    what: &str,
) -> Result<Digest, Status> {
    Ok(action_result::required_digest(function, digest, what)?)
}

/// Parses a digest under `function`: 64 lowercase hex characters and a size that is not
/// negative.
pub fn parse(
    function: DigestFunction,
    digest: &reapi::Digest,
    what: &str,
) -> Result<Digest, Status> {
    Ok(action_result::parse_digest(function, digest, what)?)
}

/// The digest function a request names. UNKNOWN (0) means "infer it from the hash length"
/// (REAPI): only functions with a hash length of their own may be left unset, so 64 hex
/// characters without a function are SHA-256, and a BLAKE3 request must say so. Any function
/// this server does not serve is INVALID_ARGUMENT.
pub fn function(digest_function: i32) -> Result<DigestFunction, Status> {
    use reapi::digest_function::Value;
    match Value::try_from(digest_function) {
        Ok(Value::Unknown | Value::Sha256) => Ok(DigestFunction::Sha256),
        Ok(Value::Blake3) => Ok(DigestFunction::Blake3),
        _ => Err(Status::invalid_argument(format!(
            "digest function {digest_function} is not supported; this server uses SHA256 and BLAKE3"
        ))),
    }
}

/// The REAPI value of `function` (what capabilities announce).
pub fn function_to_proto(function: DigestFunction) -> i32 {
    reapi::digest_function::Value::from(function) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let sha = DigestFunction::Sha256;
        let d = Digest::of(b"abc");
        assert_eq!(parse(sha, &(&d).into(), "d").unwrap(), d);
        let blake = Digest::of_with(DigestFunction::Blake3, b"abc");
        assert_eq!(
            parse(DigestFunction::Blake3, &(&blake).into(), "d").unwrap(),
            blake
        );
        let bad = reapi::Digest {
            hash: "xyz".into(),
            size_bytes: 3,
        };
        assert_eq!(
            parse(sha, &bad, "d").unwrap_err().code(),
            Code::InvalidArgument
        );
        let negative = reapi::Digest {
            size_bytes: -1,
            ..reapi::Digest::from(&d)
        };
        assert_eq!(
            parse(sha, &negative, "d").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            required(sha, None, "d").unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn sha256_and_blake3_are_accepted_and_nothing_else() {
        assert_eq!(function(0).unwrap(), DigestFunction::Sha256);
        assert_eq!(function(1).unwrap(), DigestFunction::Sha256);
        assert_eq!(function(9).unwrap(), DigestFunction::Blake3);
        for other in [2, 3, 4, 5, 6, 7, 8, 10, 1234, -1] {
            assert_eq!(
                function(other).unwrap_err().code(),
                Code::InvalidArgument,
                "{other}"
            );
        }
        for f in DigestFunction::ALL {
            assert_eq!(function(function_to_proto(f)).unwrap(), f);
        }
    }
}
