//! zstd for ByteStream `compressed-blobs` resources and the batch calls.
//!
//! The engine only ever sees uncompressed bytes: compression is a wire format. Two directions:
//! - [`Deflater`] compresses a blob incrementally as the reader hands over chunks (ByteStream
//!   Read), so a large blob is never held whole; [`compress`] does a small blob in one go
//!   (BatchReadBlobs).
//! - [`Inflater`] decompresses incrementally into an [`Upload`] as compressed chunks arrive
//!   (ByteStream Write, BatchUpdateBlobs), in bounded output pieces.
//!
//! Decompression bombs: output is produced in pieces of at most [`OUT_CHUNK`] bytes and every
//! piece is checked against the upload's declared size before it is written, so a tiny input
//! that expands past the declared size is refused (INVALID_ARGUMENT) after at most one piece.
//! The decoder's window is capped at 2^[`WINDOW_LOG_MAX`] bytes, which bounds the memory one
//! stream's frame header can make the decoder allocate; a frame that asks for more is refused
//! (INVALID_ARGUMENT, naming the limit) before anything is allocated for it.
//!
//! Every problem with the client's bytes (corrupt, truncated, trailing garbage, too long) is
//! INVALID_ARGUMENT; compressing stored bytes cannot fail for reasons the client controls.

use std::io;

use bytes::Bytes;
use tonic::Status;
use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;

use crate::proto::reapi::compressor;
use crate::store::BlobUpload;

/// Compression level of what this server sends. Level 1 is zstd's fastest standard level: a
/// cache serves many reads and should spend little CPU on each (the REAPI lets a server pick
/// any level, per blob even).
pub const LEVEL: i32 = 1;

/// Largest piece of decompressed output handled at once (and the decoder's output buffer).
pub const OUT_CHUNK: usize = 256 << 10;

/// Largest zstd window accepted from clients (log2): 8 MiB. Every standard level (1 to 19)
/// declares at most this (2 MiB at level 3, 8 MiB at 19); only `--ultra` levels and `--long`
/// ask for more, and zstd's own default limit (128 MiB) would let each concurrent upload claim
/// that much memory.
pub const WINDOW_LOG_MAX: u32 = 23;

/// How a blob's bytes travel on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Uncompressed.
    Identity,
    /// Zstandard (one or more concatenated frames).
    Zstd,
}

impl Compression {
    /// The compressor named by a `compressed-blobs/{compressor}/` resource segment (the
    /// lowercase `Compressor.Value` name). `identity` is accepted as a plain blob.
    pub fn from_segment(segment: &str) -> Result<Compression, String> {
        match segment {
            "zstd" => Ok(Compression::Zstd),
            "identity" => Ok(Compression::Identity),
            "deflate" | "brotli" => Err(format!(
                "compressor {segment:?} is not supported; this server supports zstd"
            )),
            other => Err(format!(
                "{:?} is not a compressor name (this server supports zstd)",
                other.chars().take(40).collect::<String>()
            )),
        }
    }

    /// The compressor of a `Compressor.Value` field.
    pub fn from_proto(value: i32) -> Result<Compression, Status> {
        match compressor::Value::try_from(value) {
            Ok(compressor::Value::Identity) => Ok(Compression::Identity),
            Ok(compressor::Value::Zstd) => Ok(Compression::Zstd),
            Ok(other) => Err(Status::invalid_argument(format!(
                "compressor {} is not supported; this server supports IDENTITY and ZSTD",
                other.as_str_name()
            ))),
            Err(_) => Err(Status::invalid_argument(format!(
                "compressor {value} is not a Compressor.Value; this server supports IDENTITY and ZSTD"
            ))),
        }
    }

    /// The `Compressor.Value` of this compression.
    pub fn to_proto(self) -> i32 {
        match self {
            Compression::Identity => compressor::Value::Identity as i32,
            Compression::Zstd => compressor::Value::Zstd as i32,
        }
    }
}

/// zstd failing on stored bytes or on allocation: not the client's fault.
fn server_side(what: &str, error: io::Error) -> Status {
    tracing::error!(%error, "{what}");
    Status::internal(format!("{what}: {error}"))
}

/// Compresses `data` as one zstd frame (with its content size).
pub fn compress(data: &[u8]) -> Result<Vec<u8>, Status> {
    zstd::bulk::compress(data, LEVEL).map_err(|e| server_side("zstd compression failed", e))
}

/// Incremental compression of one blob (from some offset) into one zstd frame.
pub struct Deflater {
    encoder: Encoder<'static>,
}

impl Deflater {
    /// A frame that will carry exactly `size` bytes (recorded in its header, which also lets
    /// zstd pick a window no larger than the content).
    pub fn new(size: u64) -> Result<Deflater, Status> {
        let setup = || -> io::Result<Encoder<'static>> {
            let mut encoder = Encoder::new(LEVEL)?;
            encoder.set_pledged_src_size(Some(size))?;
            encoder.set_parameter(CParameter::ChecksumFlag(true))?;
            Ok(encoder)
        };
        let encoder = setup().map_err(|e| server_side("starting zstd compression", e))?;
        Ok(Deflater { encoder })
    }

    /// Compresses `input`, appending whatever compressed bytes are ready to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Status> {
        let mut input = InBuffer::around(input);
        while input.pos() < input.src.len() {
            out.reserve(OUT_CHUNK);
            let mut output = OutBuffer::around_pos(out, out.len());
            self.encoder
                .run(&mut input, &mut output)
                .map_err(|e| server_side("zstd compression failed", e))?;
        }
        Ok(())
    }

    /// Ends the frame (after exactly the pledged bytes), appending the rest of it to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Status> {
        loop {
            out.reserve(OUT_CHUNK);
            let mut output = OutBuffer::around_pos(out, out.len());
            let remaining = self
                .encoder
                .finish(&mut output, true)
                .map_err(|e| server_side("ending the zstd frame", e))?;
            if remaining == 0 {
                return Ok(());
            }
        }
    }
}

/// Incremental decompression of a client's zstd stream into an upload.
///
/// One inflater per Write stream: a resumed compressed upload starts a new zstd stream at the
/// uncompressed offset where the parked bytes end, so no decoder state outlives its stream.
pub struct Inflater {
    decoder: Decoder<'static>,
    buffer: Vec<u8>,
    /// Input was consumed since the last frame ended: the stream may not stop here.
    in_frame: bool,
}

impl Inflater {
    /// An inflater for the rest of `upload` (its output buffer is no larger than one byte past
    /// what the upload can still take, so small uploads cost little memory).
    pub fn new(upload: &dyn BlobUpload) -> Result<Inflater, Status> {
        let remaining = upload.expected().size - upload.received();
        let setup = || -> io::Result<Decoder<'static>> {
            let mut decoder = Decoder::new()?;
            decoder.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
            Ok(decoder)
        };
        let decoder = setup().map_err(|e| {
            tracing::warn!(error = %e, "starting zstd decompression");
            Status::resource_exhausted(format!("cannot start zstd decompression: {e}"))
        })?;
        let capacity = remaining.saturating_add(1).min(OUT_CHUNK as u64) as usize;
        Ok(Inflater {
            decoder,
            buffer: vec![0; capacity],
            in_frame: false,
        })
    }

    /// Decompresses `input` and appends the output to `upload`. Output past the declared size
    /// and malformed input are INVALID_ARGUMENT (the upload is then unusable: drop it).
    pub async fn feed(&mut self, input: &[u8], upload: &mut dyn BlobUpload) -> Result<(), Status> {
        let mut input = InBuffer::around(input);
        loop {
            let before = input.pos();
            let mut output = OutBuffer::around(&mut self.buffer[..]);
            let hint = self
                .decoder
                .run(&mut input, &mut output)
                .map_err(|e| undecodable(&e))?;
            let produced = output.pos();
            if hint == 0 {
                // A frame ended and all its output is out.
                self.in_frame = false;
            } else if input.pos() > before {
                self.in_frame = true;
            }
            if produced > 0 {
                let size = upload.expected().size;
                if upload.received() + produced as u64 > size {
                    return Err(Status::invalid_argument(format!(
                        "the zstd stream decompresses to more than the declared {size} bytes"
                    )));
                }
                upload
                    .write(Bytes::copy_from_slice(&self.buffer[..produced]))
                    .await?;
            }
            let consumed_all = input.pos() == input.src.len();
            if consumed_all && produced < self.buffer.len() {
                // No input left and the decoder had less to give than the buffer holds.
                return Ok(());
            }
            if !consumed_all && produced == 0 && input.pos() == before {
                return Err(Status::invalid_argument(
                    "the zstd stream is corrupt: the decoder made no progress",
                ));
            }
        }
    }

    /// Checks that the stream ended at a frame boundary (a truncated frame is refused even if
    /// the bytes so far happen to be complete).
    pub fn finish(&self) -> Result<(), Status> {
        if self.in_frame {
            return Err(Status::invalid_argument(
                "the zstd stream ends inside a frame (truncated)",
            ));
        }
        Ok(())
    }
}

/// Why the decoder refused the client's bytes: a window over [`WINDOW_LOG_MAX`], or corruption.
fn undecodable(error: &io::Error) -> Status {
    let window_too_large = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<zstd::Error>())
        .is_some_and(|e| e.is(ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge));
    if window_too_large {
        return Status::invalid_argument(format!(
            "the zstd frame needs a window larger than this server's limit of {} MiB \
             (window log {WINDOW_LOG_MAX}); compress at a standard level (1-19) without --long",
            (1u32 << WINDOW_LOG_MAX) >> 20
        ));
    }
    Status::invalid_argument(format!("the zstd stream is corrupt: {error}"))
}

/// Decompresses a whole zstd `data` into `upload` (a BatchUpdateBlobs item).
pub async fn inflate_into(data: &[u8], upload: &mut dyn BlobUpload) -> Result<(), Status> {
    let mut inflater = Inflater::new(upload)?;
    inflater.feed(data, upload).await?;
    inflater.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate_in_pieces(data: &[u8], piece: usize) -> Vec<u8> {
        let mut deflater = Deflater::new(data.len() as u64).unwrap();
        let mut out = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            deflater.compress(chunk, &mut out).unwrap();
        }
        deflater.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn incremental_compression_is_one_valid_frame() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = deflate_in_pieces(&data, 1 << 20);
        assert!(compressed.len() < data.len() / 10);
        assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), data);
        assert_eq!(
            zstd::bulk::Decompressor::upper_bound(&compressed),
            Some(data.len())
        );
        let empty = deflate_in_pieces(b"", 1);
        assert!(!empty.is_empty(), "an empty blob is still a frame");
        assert!(zstd::decode_all(&empty[..]).unwrap().is_empty());
    }

    #[test]
    fn names_and_enum_values() {
        assert_eq!(Compression::from_segment("zstd"), Ok(Compression::Zstd));
        assert_eq!(
            Compression::from_segment("identity"),
            Ok(Compression::Identity)
        );
        for bad in ["deflate", "brotli", "ZSTD", "gzip", ""] {
            assert!(Compression::from_segment(bad).is_err(), "{bad}");
        }
        assert_eq!(Compression::from_proto(0).unwrap(), Compression::Identity);
        assert_eq!(Compression::from_proto(1).unwrap(), Compression::Zstd);
        for bad in [2, 3, 99, -1] {
            let e = Compression::from_proto(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert_eq!(Compression::Zstd.to_proto(), 1);
    }
}
