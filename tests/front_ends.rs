//! Both front ends over one store stack must give the same answer for the same state: the cache's
//! rules (completeness, validation, limits, what counts as a use) live in the store's layers, not
//! in a protocol. Table-driven: each row prepares a state, asks gRPC and HTTP the same question,
//! and compares the two answers, class for class. (Real sockets: not built under madsim.)
#![cfg(not(madsim))]

mod grpc_support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::Code;

use grpc_support::{proto, read_all, read_name, write_name, write_requests, FrontEnds};
use hoard::engine::{Digest, Engine, EngineConfig};
use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
use hoard::proto::reapi::action_cache_client::ActionCacheClient;
use hoard::proto::reapi::{self, Directory, FileNode, Tree};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::store::{stack, MemoryStore, Store};
use hoard::wire::grpc::GrpcConfig;
use hoard::wire::http::HttpConfig;

/// gRPC and HTTP served over one store stack.
struct Both(FrontEnds);

impl Both {
    async fn serve(cache: Arc<dyn Store>) -> Both {
        Both(FrontEnds::serve(cache, GrpcConfig::default(), HttpConfig::default()).await)
    }

    async fn http(&self, method: Method, path: &str, body: Bytes) -> StatusCode {
        let stream = TcpStream::connect(self.0.http_addr).await.unwrap();
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .body(Full::new(body))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        status
    }

    fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.0.channel.clone())
    }

    fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.0.channel.clone())
    }
}

/// What an answer means to a client, whichever protocol carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Miss,
    Invalid,
    TooLarge,
    Other,
}

fn from_code(code: Code) -> Answer {
    match code {
        Code::Ok => Answer::Ok,
        Code::NotFound => Answer::Miss,
        Code::InvalidArgument => Answer::Invalid,
        _ => Answer::Other,
    }
}

fn from_status(status: StatusCode) -> Answer {
    match status {
        StatusCode::OK => Answer::Ok,
        StatusCode::NOT_FOUND => Answer::Miss,
        StatusCode::BAD_REQUEST => Answer::Invalid,
        StatusCode::PAYLOAD_TOO_LARGE => Answer::TooLarge,
        _ => Answer::Other,
    }
}

fn grpc_answer<T>(result: Result<T, tonic::Status>) -> Answer {
    result.map_or_else(|s| from_code(s.code()), |_| Answer::Ok)
}

/// The question asked of both front ends.
#[derive(Clone, Debug)]
enum Ask {
    /// GetActionResult / `GET /ac/`.
    GetAction(Digest),
    /// UpdateActionResult / `PUT /ac/` of this result, then a read of it.
    PutAction(Digest, Box<reapi::ActionResult>),
    /// ByteStream Read / `GET /cas/`.
    GetBlob(Digest),
    /// ByteStream Write / `PUT /cas/` of these bytes under this digest.
    PutBlob(Digest, Bytes),
}

impl Ask {
    async fn grpc(&self, both: &Both) -> Answer {
        match self {
            Ask::GetAction(action) => grpc_answer(both.ac().get_action_result(get(action)).await),
            Ask::PutAction(action, result) => {
                let put = both
                    .ac()
                    .update_action_result(reapi::UpdateActionResultRequest {
                        action_digest: Some(proto(action)),
                        action_result: Some((**result).clone()),
                        ..Default::default()
                    })
                    .await;
                // A refused write must store nothing.
                let after = both.ac().get_action_result(get(action)).await;
                if put.is_err() {
                    assert_eq!(from_code(after.unwrap_err().code()), Answer::Miss);
                }
                grpc_answer(put)
            }
            Ask::GetBlob(digest) => {
                let name = read_name("", digest);
                grpc_answer(read_all(&mut both.bytestream(), &name, 0, 0).await)
            }
            Ask::PutBlob(digest, data) => {
                let requests = write_requests(&write_name("", "u", digest), data, 1 << 16);
                let stream = futures::stream::iter(requests);
                grpc_answer(both.bytestream().write(stream).await)
            }
        }
    }

    async fn http(&self, both: &Both) -> Answer {
        match self {
            Ask::GetAction(action) => {
                let path = format!("/ac/{}", action.hex());
                from_status(both.http(Method::GET, &path, Bytes::new()).await)
            }
            Ask::PutAction(action, result) => {
                let path = format!("/ac/{}", action.hex());
                let body = Bytes::from(result.encode_to_vec());
                let put = both.http(Method::PUT, &path, body).await;
                if put != StatusCode::OK {
                    let after = both.http(Method::GET, &path, Bytes::new()).await;
                    assert_eq!(after, StatusCode::NOT_FOUND);
                }
                from_status(put)
            }
            Ask::GetBlob(digest) => {
                let path = format!("/cas/{}", digest.hex());
                from_status(both.http(Method::GET, &path, Bytes::new()).await)
            }
            Ask::PutBlob(digest, data) => {
                let path = format!("/cas/{}", digest.hex());
                from_status(both.http(Method::PUT, &path, data.clone()).await)
            }
        }
    }
}

fn get(action: &Digest) -> reapi::GetActionResultRequest {
    reapi::GetActionResultRequest {
        action_digest: Some(proto(action)),
        ..Default::default()
    }
}

/// An action result with one output file `file` and, if given, one output directory `tree`.
fn result_naming(file: &Digest, path: &str, tree: Option<&Digest>) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: path.into(),
            digest: Some(proto(file)),
            ..Default::default()
        }],
        output_directories: tree
            .map(|tree| reapi::OutputDirectory {
                path: "out/dir".into(),
                tree_digest: Some(proto(tree)),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A tree whose root directory holds `file`.
fn tree_holding(file: &Digest) -> Bytes {
    let root = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(proto(file)),
            ..Default::default()
        }],
        ..Default::default()
    };
    Tree {
        root: Some(root),
        children: Vec::new(),
    }
    .encode_to_vec()
    .into()
}

/// A cache over a fresh engine whose blobs may be at most `max_blob_size` bytes, holding
/// `blobs` and the action results `actions`, stored straight through the engine (so the state
/// does not depend on either front end).
async fn cache_with(
    dir: &tempfile::TempDir,
    blobs: &[Bytes],
    actions: &[(Digest, reapi::ActionResult)],
) -> Arc<dyn Store> {
    let mut config = EngineConfig::new(dir.path());
    config.max_blob_size = 1 << 20;
    let engine = Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .unwrap();
    for blob in blobs {
        engine
            .put_blob(Digest::of(blob), blob.clone())
            .await
            .unwrap();
    }
    for (action, result) in actions {
        let bytes = result.encode_to_vec().into();
        let kind = hoard::engine::AcKind::ActionResult;
        engine
            .put_action("", action.function, action.hash, kind, bytes)
            .await
            .unwrap();
    }
    stack::over_engine(engine, &Default::default())
}

#[tokio::test]
async fn grpc_and_http_agree_on_every_state() {
    let output = Bytes::from_static(b"an output file");
    let inner = Bytes::from_static(b"a file inside an output directory");
    let tree = tree_holding(&Digest::of(&inner));
    let (out, dir_file, tree_d) = (Digest::of(&output), Digest::of(&inner), Digest::of(&tree));
    let action = Digest::of(b"the action");
    let complete = result_naming(&out, "bazel-out/bin/a.o", Some(&tree_d));
    let everything = [output.clone(), inner.clone(), tree.clone()];
    let huge = Bytes::from(vec![7u8; (1 << 20) + 1]);
    let wrong_hash = Digest::sha256(Digest::of(b"something else").hash, output.len() as u64);
    type Row = (
        &'static str,
        Vec<Bytes>,
        Option<reapi::ActionResult>,
        Ask,
        Answer,
    );
    let rows: Vec<Row> = vec![
        (
            "a complete action result is a hit",
            everything.to_vec(),
            Some(complete.clone()),
            Ask::GetAction(action),
            Answer::Ok,
        ),
        (
            "an action result whose output file is gone is a miss",
            vec![inner.clone(), tree.clone()],
            Some(complete.clone()),
            Ask::GetAction(action),
            Answer::Miss,
        ),
        (
            "an action result whose tree is gone is a miss",
            vec![output.clone(), inner.clone()],
            Some(complete.clone()),
            Ask::GetAction(action),
            Answer::Miss,
        ),
        (
            "an action result missing a file inside its tree is a miss",
            vec![output.clone(), tree.clone()],
            Some(complete.clone()),
            Ask::GetAction(action),
            Answer::Miss,
        ),
        (
            "no action result is a miss",
            everything.to_vec(),
            None,
            Ask::GetAction(action),
            Answer::Miss,
        ),
        (
            "an output path escaping the output tree is refused",
            everything.to_vec(),
            None,
            Ask::PutAction(action, Box::new(result_naming(&out, "../../etc/x", None))),
            Answer::Invalid,
        ),
        (
            "an absolute output path is refused",
            everything.to_vec(),
            None,
            Ask::PutAction(action, Box::new(result_naming(&out, "/abs/x", None))),
            Answer::Invalid,
        ),
        (
            "a good action result is stored",
            everything.to_vec(),
            None,
            Ask::PutAction(action, Box::new(complete.clone())),
            Answer::Ok,
        ),
        (
            "a stored blob is served",
            vec![output.clone()],
            None,
            Ask::GetBlob(out),
            Answer::Ok,
        ),
        (
            "an absent blob is a miss",
            vec![output.clone()],
            None,
            Ask::GetBlob(dir_file),
            Answer::Miss,
        ),
        (
            "bytes that hash elsewhere are refused",
            Vec::new(),
            None,
            Ask::PutBlob(wrong_hash, output.clone()),
            Answer::Invalid,
        ),
        (
            "a blob over the size limit is refused",
            Vec::new(),
            None,
            Ask::PutBlob(Digest::of(&huge), huge.clone()),
            Answer::TooLarge,
        ),
    ];
    for (name, blobs, result, ask, expected) in rows {
        let actions: Vec<_> = result.into_iter().map(|r| (action, r)).collect();
        let mut answers = Vec::new();
        // Each protocol gets its own copy of the state, so one's writes cannot answer the other.
        for protocol in ["grpc", "http"] {
            let dir = tempfile::tempdir().unwrap();
            let both = Both::serve(cache_with(&dir, &blobs, &actions).await).await;
            let answer = match protocol {
                "grpc" => ask.grpc(&both).await,
                _ => ask.http(&both).await,
            };
            answers.push(answer);
        }
        // REAPI refuses a blob over the limit as INVALID_ARGUMENT; HTTP has 413 for it.
        let over_grpc = match expected {
            Answer::TooLarge => Answer::Invalid,
            other => other,
        };
        assert_eq!(answers, [over_grpc, expected], "{name}: [grpc, http]");
    }
}

#[tokio::test]
async fn a_ccache_value_is_served_over_http_and_a_miss_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let both = Both::serve(cache_with(&dir, &[], &[]).await).await;
    let key = Digest::of(b"ccache key");
    let path = format!("/ac/{}", key.hex());
    let value = Bytes::from_static(b"cc\xac\x00 a ccache entry, not protobuf");
    assert_eq!(both.http(Method::PUT, &path, value).await, StatusCode::OK);
    assert_eq!(
        both.http(Method::GET, &path, Bytes::new()).await,
        StatusCode::OK
    );
    let over_grpc = both.ac().get_action_result(get(&key)).await;
    assert_eq!(grpc_answer(over_grpc), Answer::Miss);
}

/// `HEAD /cas/` counts as a use, as FindMissingBlobs does: over a two-blob LRU store, the blob a
/// client just checked survives the next upload and the other one goes.
#[tokio::test]
async fn an_http_head_keeps_a_blob_like_find_missing_does() {
    let blobs: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 1000])).collect();
    let paths: Vec<String> = blobs
        .iter()
        .map(|b| format!("/cas/{}", Digest::of(b).hex()))
        .collect();
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new(1000, 2000));
    let both = Both::serve(stack::assemble(memory, &Default::default())).await;
    for (path, blob) in paths.iter().zip(&blobs).take(2) {
        let put = both.http(Method::PUT, path, blob.clone()).await;
        assert_eq!(put, StatusCode::OK);
    }
    assert_eq!(
        both.http(Method::HEAD, &paths[0], Bytes::new()).await,
        StatusCode::OK
    );
    let put = both.http(Method::PUT, &paths[2], blobs[2].clone()).await;
    assert_eq!(put, StatusCode::OK);
    let status = |i: usize| both.http(Method::HEAD, &paths[i], Bytes::new());
    assert_eq!(
        status(1).await,
        StatusCode::NOT_FOUND,
        "the unchecked blob is evicted"
    );
    assert_eq!(status(0).await, StatusCode::OK, "the checked blob stays");
}
