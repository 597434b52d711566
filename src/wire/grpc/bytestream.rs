//! The ByteStream service: how Bazel moves every blob, large or small.
//!
//! Write invariants: `write_offset` must continue exactly where the received bytes end; the
//! response reports success only after [`BlobUpload::commit`] returned `Ok` (the blob is durable and
//! indexed); a stream that stops before `finish_write` leaves its bytes parked for resumption
//! (see [`ParkedUploads`]).
//!
//! Compressed blobs (`compressed-blobs/zstd/`, REAPI v2.1+), where the REAPI text decides:
//! - Read: "`ReadRequest.read_offset` refers to the offset in the uncompressed form of the
//!   blob" and "Servers MUST return `INVALID_ARGUMENT` if `ReadRequest.read_limit` is
//!   non-zero". So a compressed read streams one zstd frame of the bytes from `read_offset` to
//!   the end, compressed chunk by chunk as they are read.
//! - Write: "the `WriteRequest.write_offset` in the initial request in a stream refers to the
//!   offset in the uncompressed form of the blob. In subsequent requests,
//!   `WriteRequest.write_offset` MUST be the sum of the first request's
//!   'WriteRequest.write_offset' and the total size of all the compressed data bundles in the
//!   previous requests." The stream is decompressed into the upload as it arrives; the engine
//!   verifies the uncompressed size and hash as for any upload.
//! - Early completion: the Write "will terminate immediately without error, and with a response
//!   whose `committed_size` is the value `-1` if this is a compressed upload".
//! - A compressed Write that completes reports the first `write_offset` plus the compressed
//!   bytes received (the spec leaves it open; this is what Bazel checks, and what Buildbarn and
//!   bazel-remote send).
//! - Resumption: a broken compressed Write parks the uncompressed bytes decoded so far;
//!   QueryWriteStatus (and a Write closed without `finish_write`) reports that uncompressed
//!   count, and the client resumes with a new stream, a fresh zstd stream of the blob from that
//!   uncompressed offset (as Bazel's chunker does after a seek). No decoder state is parked.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status, Streaming};

use super::compression::{Compression, Deflater, Inflater};
use super::resource::{self, WriteResource};
use super::stream::{self, ResponseStream, Sink};
use super::uploads::ParkedUploads;
use crate::proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};
use crate::store::{BlobUpload, Digest, Store};

/// Bytes per ReadResponse (also the most compressed bytes in one).
const READ_CHUNK: u64 = 1 << 20;
/// ReadResponses read ahead of a slow client.
const READ_AHEAD: usize = 2;

/// Serves ByteStream over the store's CAS.
pub struct ByteStreamService {
    store: Arc<dyn Store>,
    parked: ParkedUploads,
}

impl ByteStreamService {
    /// A ByteStream over `store`, parking interrupted uploads in `parked`.
    pub fn new(store: Arc<dyn Store>, parked: ParkedUploads) -> Self {
        ByteStreamService { store, parked }
    }

    /// Where a Write whose first message is `first` continues: a parked upload when the client
    /// resumes (offset > 0), otherwise a fresh one. Starting at 0 discards any parked bytes,
    /// which is how a client restarts an upload from scratch.
    async fn start_upload(
        &self,
        resource: &WriteResource,
        first: &WriteRequest,
    ) -> Result<Box<dyn BlobUpload>, Status> {
        let parked = self.parked.take(resource);
        match parked {
            Some(upload) if first.write_offset != 0 => Ok(upload),
            _ => {
                // Drop before beginning so the parked upload's engine slot is free again.
                drop(parked);
                Ok(self.store.begin_upload(resource.digest).await?)
            }
        }
    }
}

/// What ended a Write stream that had no protocol error.
enum StreamEnd {
    /// The client closed its side.
    Closed,
    /// The stream broke (cancelled, connection lost).
    Broken(Status),
}

/// How a Write stream went.
struct Received {
    /// `finish_write` was seen.
    finished: bool,
    /// How the stream ended.
    end: StreamEnd,
    /// Where the next `write_offset` would be: the first offset plus the bytes sent on the wire
    /// (compressed bytes for a compressed upload).
    wire_end: u64,
}

/// Feeds the messages of one Write into `upload`, through `inflater` for a compressed stream,
/// checking the protocol, until the stream ends.
async fn receive(
    upload: &mut dyn BlobUpload,
    mut inflater: Option<&mut Inflater>,
    name: &str,
    first: WriteRequest,
    stream: &mut Streaming<WriteRequest>,
) -> Result<Received, Status> {
    let mut finished = false;
    // The first offset is in uncompressed bytes in both forms: it must be where the (parked or
    // fresh) upload ends. Later offsets count the bytes on the wire.
    let mut wire_end = upload.received();
    let mut message = first;
    loop {
        if finished {
            return Err(Status::invalid_argument(
                "WriteRequest sent after finish_write",
            ));
        }
        if !message.resource_name.is_empty() && message.resource_name != name {
            return Err(Status::invalid_argument(format!(
                "resource_name {:?} differs from the stream's {name:?}",
                message.resource_name
            )));
        }
        if message.write_offset != wire_end as i64 {
            return Err(Status::invalid_argument(match inflater {
                None => format!(
                    "write_offset {} does not continue the {wire_end} bytes received",
                    message.write_offset
                ),
                Some(_) => format!(
                    "write_offset {} does not continue at {wire_end} (the first write_offset \
                     plus the compressed bytes sent since)",
                    message.write_offset
                ),
            }));
        }
        wire_end += message.data.len() as u64;
        finished = message.finish_write;
        // The bytes are moved out here and released before the next message is decoded: they
        // share tonic's receive buffer, which then reuses that memory instead of allocating (and
        // faulting in) a fresh one.
        match inflater.as_deref_mut() {
            None => upload.write(message.data).await?,
            Some(inflater) => {
                let data = message.data;
                inflater.feed(&data, upload).await?;
            }
        }
        let end = match stream.message().await {
            Ok(Some(next)) => {
                message = next;
                continue;
            }
            Ok(None) => StreamEnd::Closed,
            Err(status) => StreamEnd::Broken(status),
        };
        return Ok(Received {
            finished,
            end,
            wire_end,
        });
    }
}

fn committed(size: i64) -> Response<WriteResponse> {
    Response::new(WriteResponse {
        committed_size: size,
    })
}

/// Streams `digest` from `offset` to `end` uncompressed.
async fn send_plain(
    store: &dyn Store,
    digest: Digest,
    offset: u64,
    end: u64,
    sink: Sink<ReadResponse>,
) -> Result<(), Status> {
    // From offset 0 the reader hashes as it goes and fails the last chunk on corruption.
    let mut reader = store.open_blob(&digest, offset).await?;
    let mut position = offset;
    while position < end {
        let Some(data) = reader
            .next_chunk((end - position).min(READ_CHUNK) as usize)
            .await?
        else {
            break;
        };
        position += data.len() as u64;
        sink.send(ReadResponse { data }).await?;
    }
    Ok(())
}

/// Streams `digest` from `offset` to its end as one zstd frame, compressing chunk by chunk.
/// A corrupt blob fails its last chunk before the frame is ended, so a client never receives a
/// complete frame of bad bytes.
async fn send_zstd(
    store: &dyn Store,
    digest: Digest,
    offset: u64,
    sink: Sink<ReadResponse>,
) -> Result<(), Status> {
    let mut reader = store.open_blob(&digest, offset).await?;
    let mut deflater = Deflater::new(digest.size - offset)?;
    let mut pending = Vec::new();
    let mut position = offset;
    while position < digest.size {
        let want = (digest.size - position).min(READ_CHUNK) as usize;
        let Some(data) = reader.next_chunk(want).await? else {
            break;
        };
        position += data.len() as u64;
        deflater.compress(&data, &mut pending)?;
        pending = send_full_chunks(&sink, pending).await?;
    }
    if position != digest.size {
        return Err(Status::internal(format!(
            "blob {digest} ended at {position} bytes while being compressed"
        )));
    }
    deflater.finish(&mut pending)?;
    let rest = send_full_chunks(&sink, pending).await?;
    if !rest.is_empty() {
        sink.send(ReadResponse { data: rest.into() }).await?;
    }
    Ok(())
}

/// Sends `pending` in READ_CHUNK pieces while a whole one is there; returns the remainder.
async fn send_full_chunks(sink: &Sink<ReadResponse>, pending: Vec<u8>) -> Result<Vec<u8>, Status> {
    let chunk = READ_CHUNK as usize;
    if pending.len() < chunk {
        return Ok(pending);
    }
    let all = Bytes::from(pending);
    let full = all.len() - all.len() % chunk;
    for start in (0..full).step_by(chunk) {
        sink.send(ReadResponse {
            data: all.slice(start..start + chunk),
        })
        .await?;
    }
    Ok(all[full..].to_vec())
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ResponseStream<ReadResponse>;

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let resource = resource::parse_read(&request.resource_name)?;
        let digest = resource.digest;
        let compression = resource.compression;
        tracing::debug!(instance = %resource.instance, %digest, ?compression, offset = request.read_offset, limit = request.read_limit, "ByteStream.Read");
        let (Ok(offset), Ok(limit)) = (
            u64::try_from(request.read_offset),
            u64::try_from(request.read_limit),
        ) else {
            return Err(Status::invalid_argument(format!(
                "read_offset {} and read_limit {} must not be negative",
                request.read_offset, request.read_limit
            )));
        };
        if compression == Compression::Zstd && limit != 0 {
            // REAPI: "Servers MUST return INVALID_ARGUMENT if ReadRequest.read_limit is non-zero."
            return Err(Status::invalid_argument(format!(
                "read_limit {limit} is not allowed when reading compressed-blobs (it must be 0)"
            )));
        }
        if offset > digest.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the end of {digest}"
            )));
        }
        if !self.store.contains_and_touch(&digest).await? {
            return Err(Status::not_found(format!("blob {digest} not found")));
        }
        let store = self.store.clone();
        let stream = match compression {
            Compression::Identity => {
                let end = match limit {
                    0 => digest.size,
                    limit => digest.size.min(offset.saturating_add(limit)),
                };
                stream::spawn(READ_AHEAD, move |sink| async move {
                    send_plain(store.as_ref(), digest, offset, end, sink).await
                })
            }
            Compression::Zstd => stream::spawn(READ_AHEAD, move |sink| async move {
                send_zstd(store.as_ref(), digest, offset, sink).await
            }),
        };
        Ok(Response::new(stream))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the Write stream carried no message"))?;
        if first.resource_name.is_empty() {
            return Err(Status::invalid_argument(
                "the first WriteRequest must carry resource_name",
            ));
        }
        let name = first.resource_name.clone();
        let (resource, compression) = resource::parse_write(&name)?;
        let digest = resource.digest;
        let compressed = compression != Compression::Identity;
        tracing::debug!(instance = %resource.instance, uuid = %resource.uuid, %digest, ?compression, offset = first.write_offset, "ByteStream.Write");
        crate::observe::note_blob(&digest);
        if self.store.contains_and_touch(&digest).await? {
            // Nothing to store: answer at once without reading the rest (the REAPI allows it,
            // and asks for -1 as the committed size of a compressed upload).
            drop(self.parked.take(&resource));
            return Ok(committed(if compressed { -1 } else { digest.size as i64 }));
        }
        let mut upload = self.start_upload(&resource, &first).await?;
        let mut inflater = match compression {
            Compression::Identity => None,
            Compression::Zstd => Some(Inflater::new(upload.as_ref())?),
        };
        let received = receive(
            upload.as_mut(),
            inflater.as_mut(),
            &name,
            first,
            &mut stream,
        )
        .await?;
        if received.finished {
            if let Some(inflater) = &inflater {
                inflater.finish()?;
            }
            // All bytes are here even if the stream broke after finish_write: keep them.
            upload.commit().await?;
            return Ok(committed(if compressed {
                received.wire_end as i64
            } else {
                digest.size as i64
            }));
        }
        let kept = upload.received();
        tracing::debug!(uuid = %resource.uuid, %digest, kept, "Write stopped before finish_write; parking it");
        self.parked.park(resource, upload);
        match received.end {
            // The client closed without finishing: tell it how much is kept (ByteStream spec),
            // in uncompressed bytes for a compressed upload: where a resumed Write starts.
            StreamEnd::Closed => Ok(committed(kept as i64)),
            StreamEnd::Broken(status) => Err(status),
        }
    }

    /// Reports the full size for a stored blob and the parked bytes of an interrupted upload
    /// (uncompressed bytes in both forms). An unknown upload reports 0 rather than NOT_FOUND:
    /// Bazel treats any QueryWriteStatus error other than UNIMPLEMENTED as fatal to its retry,
    /// and resuming at 0 is always valid.
    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let (resource, _compression) = resource::parse_write(&request.get_ref().resource_name)?;
        tracing::debug!(uuid = %resource.uuid, digest = %resource.digest, "ByteStream.QueryWriteStatus");
        let (committed_size, complete) = if self.store.contains_and_touch(&resource.digest).await? {
            // Another upload stored it; the client will not resume, so free the parked bytes.
            drop(self.parked.take(&resource));
            (resource.digest.size, true)
        } else {
            (self.parked.received(&resource).unwrap_or(0), false)
        };
        Ok(Response::new(QueryWriteStatusResponse {
            committed_size: committed_size as i64,
            complete,
        }))
    }
}
