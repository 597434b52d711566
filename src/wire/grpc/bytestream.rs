//! The ByteStream service: how Bazel moves every blob, large or small.
//!
//! Write invariants: `write_offset` must continue exactly where the received bytes end; the
//! response reports the full size only after [`Upload::commit`] returned `Ok` (the blob is
//! durable and indexed); a stream that stops before `finish_write` leaves its bytes parked for
//! resumption (see [`ParkedUploads`]).

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::resource::{self, WriteResource};
use super::stream::{self, ResponseStream};
use super::uploads::ParkedUploads;
use crate::engine::{Engine, Upload};
use crate::proto::bytestream::{
    byte_stream_server::ByteStream, QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest,
    ReadResponse, WriteRequest, WriteResponse,
};

/// Bytes per ReadResponse.
const READ_CHUNK: u64 = 1 << 20;
/// ReadResponses read ahead of a slow client.
const READ_AHEAD: usize = 2;

/// Serves ByteStream over the engine's CAS.
pub struct ByteStreamService {
    engine: Arc<Engine>,
    parked: ParkedUploads,
}

impl ByteStreamService {
    /// A ByteStream over `engine`, parking interrupted uploads in `parked`.
    pub fn new(engine: Arc<Engine>, parked: ParkedUploads) -> Self {
        ByteStreamService { engine, parked }
    }

    /// Where a Write whose first message is `first` continues: a parked upload when the client
    /// resumes (offset > 0), otherwise a fresh one. Starting at 0 discards any parked bytes,
    /// which is how a client restarts an upload from scratch.
    async fn start_upload(
        &self,
        resource: &WriteResource,
        first: &WriteRequest,
    ) -> Result<Upload, Status> {
        let parked = self.parked.take(resource);
        match parked {
            Some(upload) if first.write_offset != 0 => Ok(upload),
            _ => {
                // Drop before beginning so the parked upload's engine slot is free again.
                drop(parked);
                Ok(self.engine.begin_upload(resource.digest).await?)
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

/// Feeds the messages of one Write into `upload`, checking the protocol, until the stream ends.
/// Returns whether `finish_write` was seen and how the stream ended.
async fn receive(
    upload: &mut Upload,
    name: &str,
    first: WriteRequest,
    stream: &mut Streaming<WriteRequest>,
) -> Result<(bool, StreamEnd), Status> {
    let mut finished = false;
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
        if message.write_offset != upload.received() as i64 {
            return Err(Status::invalid_argument(format!(
                "write_offset {} does not continue the {} bytes received",
                message.write_offset,
                upload.received()
            )));
        }
        upload.write(&message.data).await?;
        finished = message.finish_write;
        message = match stream.message().await {
            Ok(Some(next)) => next,
            Ok(None) => return Ok((finished, StreamEnd::Closed)),
            Err(status) => return Ok((finished, StreamEnd::Broken(status))),
        };
    }
}

fn committed(size: u64) -> Response<WriteResponse> {
    Response::new(WriteResponse {
        committed_size: size as i64,
    })
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
        tracing::debug!(instance = %resource.instance, %digest, offset = request.read_offset, limit = request.read_limit, "ByteStream.Read");
        let (Ok(offset), Ok(limit)) = (
            u64::try_from(request.read_offset),
            u64::try_from(request.read_limit),
        ) else {
            return Err(Status::invalid_argument(format!(
                "read_offset {} and read_limit {} must not be negative",
                request.read_offset, request.read_limit
            )));
        };
        if offset > digest.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the end of {digest}"
            )));
        }
        if !self.engine.contains(&digest) {
            return Err(Status::not_found(format!("blob {digest} not found")));
        }
        let end = match limit {
            0 => digest.size,
            limit => digest.size.min(offset.saturating_add(limit)),
        };
        let engine = self.engine.clone();
        Ok(Response::new(stream::spawn(
            READ_AHEAD,
            move |sink| async move {
                // From offset 0 the reader hashes as it goes and fails the last chunk on corruption.
                let mut reader = engine.open_blob(&digest, offset)?;
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
            },
        )))
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
        let resource = resource::parse_write(&name)?;
        let digest = resource.digest;
        tracing::debug!(instance = %resource.instance, uuid = %resource.uuid, %digest, offset = first.write_offset, "ByteStream.Write");
        if self.engine.contains(&digest) {
            // Nothing to store: answer at once without reading the rest (the REAPI allows it).
            drop(self.parked.take(&resource));
            return Ok(committed(digest.size));
        }
        let mut upload = self.start_upload(&resource, &first).await?;
        let (finished, end) = receive(&mut upload, &name, first, &mut stream).await?;
        if finished {
            // All bytes are here even if the stream broke after finish_write: keep them.
            upload.commit().await?;
            return Ok(committed(digest.size));
        }
        let received = upload.received();
        tracing::debug!(uuid = %resource.uuid, %digest, received, "Write stopped before finish_write; parking it");
        self.parked.park(resource, upload);
        match end {
            // The client closed without finishing: tell it how much is kept (ByteStream spec).
            StreamEnd::Closed => Ok(committed(received)),
            StreamEnd::Broken(status) => Err(status),
        }
    }

    /// Reports the full size for a stored blob and the parked bytes of an interrupted upload.
    /// An unknown upload reports 0 rather than NOT_FOUND: Bazel treats any QueryWriteStatus
    /// error other than UNIMPLEMENTED as fatal to its retry, and resuming at 0 is always valid.
    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let resource = resource::parse_write(&request.get_ref().resource_name)?;
        tracing::debug!(uuid = %resource.uuid, digest = %resource.digest, "ByteStream.QueryWriteStatus");
        let (committed_size, complete) = if self.engine.contains(&resource.digest) {
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
