//! ByteStream resource names.
//!
//! - Read: `{instance}/blobs/{digest_function/}{hash}/{size}`
//! - Write: `{instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/metadata...}`
//! - Compressed forms: `compressed-blobs/{compressor}/` in place of `blobs/`, where the hash and
//!   size are those of the UNCOMPRESSED blob; `zstd` is supported (`identity` is taken as a
//!   plain blob), `deflate`, `brotli` and unknown names are INVALID_ARGUMENT.
//! - `digest_function` is the lowercase name of the function (REAPI): `blake3` is served; the
//!   REAPI says it MUST be omitted for SHA-256 (told apart by hash length), so no segment means
//!   SHA-256, and a `sha256` segment is tolerated; any other function is INVALID_ARGUMENT.
//!
//! The instance name may be empty or span several segments; the REAPI forbids it to contain the
//! reserved segments (`blobs`, `uploads`, `compressed-blobs`, ...), so the first reserved segment
//! marks where it ends. A leading `/` is tolerated because some clients join an empty instance
//! name with a slash. Every malformed name is INVALID_ARGUMENT, never INTERNAL.

use tonic::Status;

use super::compression::Compression;
use crate::engine::{Digest, DigestFunction};

/// What a Read resource name designates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResource {
    /// Instance name (the CAS is shared by all instances; kept for logging).
    pub instance: String,
    /// The blob to read.
    pub digest: Digest,
    /// How the bytes are to be sent.
    pub compression: Compression,
}

/// What a Write resource name designates. Also the key of a resumable upload: a client resumes
/// by sending the same instance, uuid and digest again (trailing metadata is ignored). The
/// compression is not part of the key: a parked upload holds uncompressed bytes, and a resumed
/// Write starts at an uncompressed offset in either form (see `bytestream`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteResource {
    /// Instance name.
    pub instance: String,
    /// The client's upload id.
    pub uuid: String,
    /// The blob being written.
    pub digest: Digest,
}

/// Parses a Read resource name.
pub fn parse_read(name: &str) -> Result<ReadResource, Status> {
    let segments = segments(name)?;
    let at = segments
        .iter()
        .position(|s| *s == "blobs" || *s == "compressed-blobs")
        .ok_or_else(|| malformed(name, "expected `{instance}/blobs/{hash}/{size}`"))?;
    let (digest, compression, rest) = blob_part(name, &segments[at..])?;
    if !rest.is_empty() {
        return Err(malformed(name, "unexpected segments after the size"));
    }
    Ok(ReadResource {
        instance: segments[..at].join("/"),
        digest,
        compression,
    })
}

/// Parses a Write resource name: the upload's key and how its bytes arrive.
pub fn parse_write(name: &str) -> Result<(WriteResource, Compression), Status> {
    let segments = segments(name)?;
    let at = segments
        .iter()
        .position(|s| *s == "uploads")
        .ok_or_else(|| {
            malformed(
                name,
                "expected `{instance}/uploads/{uuid}/blobs/{hash}/{size}`",
            )
        })?;
    let uuid = segments
        .get(at + 1)
        .filter(|uuid| !uuid.is_empty())
        .ok_or_else(|| malformed(name, "missing upload id after `uploads`"))?;
    // Trailing segments are client metadata the REAPI lets servers ignore.
    let (digest, compression, _metadata) = blob_part(name, &segments[at + 2..])?;
    let resource = WriteResource {
        instance: segments[..at].join("/"),
        uuid: (*uuid).to_owned(),
        digest,
    };
    Ok((resource, compression))
}

/// Lowercase names of the REAPI digest functions, as they appear in resource names.
const DIGEST_FUNCTIONS: [&str; 9] = [
    "sha256",
    "sha1",
    "md5",
    "vso",
    "sha384",
    "sha512",
    "murmur3",
    "sha256tree",
    "blake3",
];

fn segments(name: &str) -> Result<Vec<&str>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("resource_name is empty"));
    }
    Ok(name.strip_prefix('/').unwrap_or(name).split('/').collect())
}

/// Parses `blobs/{digest_function/}{hash}/{size}` or
/// `compressed-blobs/{compressor}/{digest_function/}{hash}/{size}` at the start of `segments`,
/// returning the digest, the compression and whatever follows the size.
fn blob_part<'a, 'n>(
    name: &str,
    segments: &'a [&'n str],
) -> Result<(Digest, Compression, &'a [&'n str]), Status> {
    let (compression, mut rest) = match segments {
        ["blobs", rest @ ..] => (Compression::Identity, rest),
        ["compressed-blobs", compressor, rest @ ..] => {
            let compression = Compression::from_segment(compressor).map_err(|why| {
                let shown: String = name.chars().take(200).collect();
                Status::invalid_argument(format!("resource name {shown:?}: {why}"))
            })?;
            (compression, rest)
        }
        _ => {
            return Err(malformed(
                name,
                "expected `blobs` or `compressed-blobs/{compressor}` before the digest",
            ))
        }
    };
    // The optional digest function segment names a function other than SHA-256 (whose hashes
    // are told apart by length); "sha256" itself is accepted too.
    let mut function = DigestFunction::Sha256;
    if let Some(named) = rest.first().filter(|s| DIGEST_FUNCTIONS.contains(*s)) {
        function = DigestFunction::from_name(named).ok_or_else(|| {
            Status::invalid_argument(format!(
                "resource name {name:?}: digest function {named:?} is not supported (sha256 and blake3 are)"
            ))
        })?;
        rest = &rest[1..];
    }
    let [hash, size, tail @ ..] = rest else {
        return Err(malformed(name, "expected `{hash}/{size}` after `blobs`"));
    };
    let size: i64 = size
        .parse()
        .map_err(|_| malformed(name, "the size is not a decimal integer"))?;
    let digest = Digest::parse_with(function, hash, size)
        .map_err(|e| Status::invalid_argument(format!("resource name {name:?}: {e}")))?;
    Ok((digest, compression, tail))
}

fn malformed(name: &str, why: &str) -> Status {
    let shown: String = name.chars().take(200).collect();
    Status::invalid_argument(format!("resource name {shown:?} is malformed: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn hash() -> String {
        Digest::of(b"hi").hex()
    }

    #[test]
    fn read_names_with_any_instance() {
        let h = hash();
        for (name, instance) in [
            (format!("blobs/{h}/2"), ""),
            (format!("/blobs/{h}/2"), ""),
            (format!("main/blobs/{h}/2"), "main"),
            (format!("a/b/c/blobs/{h}/2"), "a/b/c"),
            (format!("main/blobs/sha256/{h}/2"), "main"),
        ] {
            let r = parse_read(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.instance, instance);
            assert_eq!(r.digest, Digest::of(b"hi"));
            assert_eq!(r.compression, Compression::Identity);
        }
    }

    #[test]
    fn write_names_with_metadata_and_instance() {
        let h = hash();
        for (name, instance) in [
            (format!("uploads/u-1/blobs/{h}/2"), ""),
            (format!("/uploads/u-1/blobs/{h}/2"), ""),
            (format!("x/y/uploads/u-1/blobs/{h}/2/some/file.o"), "x/y"),
            (format!("x/uploads/u-1/blobs/sha256/{h}/2"), "x"),
        ] {
            let (w, compression) = parse_write(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(w.instance, instance);
            assert_eq!(w.uuid, "u-1");
            assert_eq!(w.digest, Digest::of(b"hi"));
            assert_eq!(compression, Compression::Identity);
        }
    }

    #[test]
    fn compressed_names_carry_the_uncompressed_digest() {
        let h = hash();
        for (name, instance, compression) in [
            (
                format!("compressed-blobs/zstd/{h}/2"),
                "",
                Compression::Zstd,
            ),
            (
                format!("/compressed-blobs/zstd/{h}/2"),
                "",
                Compression::Zstd,
            ),
            (
                format!("a/b/compressed-blobs/zstd/sha256/{h}/2"),
                "a/b",
                Compression::Zstd,
            ),
            (
                format!("main/compressed-blobs/identity/{h}/2"),
                "main",
                Compression::Identity,
            ),
        ] {
            let r = parse_read(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (r.instance.as_str(), r.digest, r.compression),
                (instance, Digest::of(b"hi"), compression)
            );
        }
        for (name, instance) in [
            (format!("uploads/u-1/compressed-blobs/zstd/{h}/2"), ""),
            (
                format!("x/uploads/u-1/compressed-blobs/zstd/{h}/2/meta/data"),
                "x",
            ),
        ] {
            let (w, compression) = parse_write(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(w.instance, instance);
            assert_eq!(w.uuid, "u-1");
            assert_eq!(w.digest, Digest::of(b"hi"));
            assert_eq!(compression, Compression::Zstd);
        }
    }

    #[test]
    fn the_function_segment_selects_blake3_and_nothing_means_sha256() {
        let blake = Digest::of_with(DigestFunction::Blake3, b"hi");
        let b = blake.hex();
        let h = hash();
        let r = parse_read(&format!("main/blobs/blake3/{b}/2")).unwrap();
        assert_eq!((r.instance.as_str(), r.digest), ("main", blake));
        let r = parse_read(&format!("compressed-blobs/zstd/blake3/{b}/2")).unwrap();
        assert_eq!((r.digest, r.compression), (blake, Compression::Zstd));
        let (w, _) = parse_write(&format!("x/uploads/u/blobs/blake3/{b}/2/meta")).unwrap();
        assert_eq!((w.instance.as_str(), w.digest), ("x", blake));
        let (w, c) = parse_write(&format!("uploads/u/compressed-blobs/zstd/blake3/{b}/2")).unwrap();
        assert_eq!((w.digest, c), (blake, Compression::Zstd));
        // The same hash without the segment is a SHA-256 digest: another blob.
        let r = parse_read(&format!("blobs/{h}/2")).unwrap();
        assert_eq!(r.digest.function, DigestFunction::Sha256);
        let (w, _) = parse_write(&format!("uploads/u/blobs/blake3/{h}/2")).unwrap();
        assert_ne!(
            w.digest,
            Digest::of(b"hi"),
            "upload keys keep functions apart"
        );
    }

    #[test]
    fn malformed_names_are_invalid_argument() {
        let h = hash();
        let bad_reads = [
            String::new(),
            "/".into(),
            "blobs".into(),
            format!("blobs/{h}"),
            format!("blobs/{h}/-1"),
            format!("blobs/{h}/two"),
            format!("blobs/{}/2", h.to_uppercase()),
            format!("blobs/{}/2", &h[1..]),
            format!("blobs/{h}/2/extra"),
            format!("blobs/sha1/{h}/2"),
            format!("blobs/blake3/{h}"),
            format!("blobs/sha256tree/{h}/2"),
            format!("compressed-blobs/{h}/2"),
            format!("compressed-blobs/deflate/{h}/2"),
            format!("compressed-blobs/brotli/{h}/2"),
            format!("compressed-blobs/lz4/{h}/2"),
            format!("compressed-blobs/ZSTD/{h}/2"),
            format!("compressed-blobs/zstd/{h}"),
            format!("compressed-blobs/zstd/md5/{h}/2"),
            format!("compressed-blobs/zstd/{h}/2/extra"),
            format!("instance/{h}/2"),
            format!("blobs/{h}/99999999999999999999"),
        ];
        for name in bad_reads {
            let e = parse_read(&name).expect_err(&name);
            assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e}");
        }
        let bad_writes = [
            format!("blobs/{h}/2"),
            format!("uploads/blobs/{h}/2"),
            format!("uploads//blobs/{h}/2"),
            format!("uploads/u/{h}/2"),
            format!("uploads/u/blobs/{h}"),
            format!("uploads/u/compressed-blobs/deflate/{h}/2"),
            format!("uploads/u/compressed-blobs/{h}/2"),
            format!("uploads/u/compressed-blobs/zstd/{h}"),
            "uploads/u/blobs/../../etc/passwd".into(),
        ];
        for name in bad_writes {
            let e = parse_write(&name).expect_err(&name);
            assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e}");
        }
    }

    #[test]
    fn no_name_built_from_tricky_segments_panics() {
        let h = hash();
        let parts = [
            "",
            "/",
            "blobs",
            "uploads",
            "compressed-blobs",
            "zstd",
            "deflate",
            "sha256",
            "blake3",
            "u",
            &h,
            "2",
            "-2",
            "é",
            "\u{0}",
            "99999999999999999999",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    for d in parts {
                        let name = [a, b, c, d].join("/");
                        let _ = parse_read(&name);
                        let _ = parse_write(&name);
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_compressors_are_explained() {
        for compressor in ["deflate", "brotli"] {
            let e = parse_read(&format!("compressed-blobs/{compressor}/{}/2", hash())).unwrap_err();
            assert!(e.message().contains("not supported"), "{e}");
            assert!(e.message().contains("zstd"), "{e}");
        }
    }
}
