//! Digest functions and chunked blobs over a real gRPC server: SHA-256 and BLAKE3 through every
//! RPC and every resource form, functions kept apart, SplitBlob / SpliceBlob of a 100 MiB blob,
//! and the rejections that must store nothing.
#![cfg(not(madsim))]

mod grpc_support;

use grpc_support::{
    proto, pseudo_random, read_all, read_name, write_name, write_requests, Fixture,
};
use hoard::engine::{Digest, DigestFunction};
use hoard::proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
    Directory, FileNode, FindMissingBlobsRequest, GetActionResultRequest, GetTreeRequest,
    OutputFile, SpliceBlobRequest, SplitBlobRequest, UpdateActionResultRequest,
};
use hoard::wire::grpc::GrpcConfig;
use prost::Message as _;
use tonic::Code;

/// The REAPI value of a function.
const SHA256: i32 = 1;
const BLAKE3: i32 = 9;

fn value(function: DigestFunction) -> i32 {
    match function {
        DigestFunction::Sha256 => SHA256,
        DigestFunction::Blake3 => BLAKE3,
    }
}

fn other(function: DigestFunction) -> DigestFunction {
    match function {
        DigestFunction::Sha256 => DigestFunction::Blake3,
        DigestFunction::Blake3 => DigestFunction::Sha256,
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn zstd_read_name(digest: &Digest) -> String {
    read_name("", digest).replacen("blobs/", "compressed-blobs/zstd/", 1)
}

fn zstd_write_name(uuid: &str, digest: &Digest) -> String {
    write_name("", uuid, digest).replacen("/blobs/", "/compressed-blobs/zstd/", 1)
}

/// The digests of `digests` the server reports missing under `function`.
async fn missing(f: &Fixture, function: i32, digests: &[Digest]) -> Vec<String> {
    let request = FindMissingBlobsRequest {
        blob_digests: digests.iter().map(proto).collect(),
        digest_function: function,
        ..Default::default()
    };
    let reply = f.cas().find_missing_blobs(request).await.unwrap();
    let missing = reply.into_inner().missing_blob_digests;
    missing.into_iter().map(|d| d.hash).collect()
}

async fn write(f: &Fixture, name: &str, data: &[u8]) -> Code {
    let requests = write_requests(name, data, 1 << 20);
    code(f.bytestream().write(futures::stream::iter(requests)).await)
}

async fn batch_update(f: &Fixture, function: i32, blobs: &[(Digest, Vec<u8>)]) -> Vec<i32> {
    let request = BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|(digest, data)| batch_update_blobs_request::Request {
                digest: Some(proto(digest)),
                data: data.clone().into(),
                compressor: 0,
            })
            .collect(),
        digest_function: function,
        ..Default::default()
    };
    let reply = f.cas().batch_update_blobs(request).await.unwrap();
    let statuses = reply.into_inner().responses.into_iter();
    statuses.map(|r| r.status.unwrap().code).collect()
}

#[tokio::test]
async fn capabilities_announce_both_functions_chunking_and_the_blob_limit() {
    let f = Fixture::with(|c| c.max_blob_size = 300 << 20, GrpcConfig::default()).await;
    let budget = Fixture::with(|c| c.max_size = Some(200 << 20), GrpcConfig::default()).await;
    let cache = f.cache_capabilities().await;
    assert_eq!(cache.digest_functions, vec![SHA256, BLAKE3]);
    assert_eq!(cache.max_cas_blob_size_bytes, 300 << 20);
    assert!(cache.split_blob_support && cache.splice_blob_support);
    let cdc = cache.fast_cdc_2020_params.unwrap();
    assert_eq!((cdc.avg_chunk_size_bytes, cdc.seed), (512 << 10, 0));
    // Under a size budget the announced limit is what the engine admits: half the budget.
    let cache = budget.cache_capabilities().await;
    assert_eq!(cache.max_cas_blob_size_bytes, 100 << 20);
}

/// One round of every RPC under `function` (sent as `sent`: 0 is "unset", SHA-256 implied).
async fn every_rpc(f: &Fixture, function: DigestFunction, sent: i32, seed: u64) {
    let of = |data: &[u8]| Digest::of_with(function, data);
    let foreign = |d: &Digest| Digest::new(other(function), d.hash, d.size);
    // ByteStream, plain and zstd, both ways.
    let plain = pseudo_random(seed, 300_000);
    let plain_d = of(&plain);
    assert_eq!(
        write(f, &write_name("", "p", &plain_d), &plain).await,
        Code::Ok
    );
    let packed = pseudo_random(seed + 1, 200_000);
    let packed_d = of(&packed);
    let frame = zstd::bulk::compress(&packed, 3).unwrap();
    assert_eq!(
        write(f, &zstd_write_name("z", &packed_d), &frame).await,
        Code::Ok
    );
    let mut bs = f.bytestream();
    assert_eq!(
        read_all(&mut bs, &read_name("", &plain_d), 0, 0)
            .await
            .unwrap(),
        plain
    );
    let zread = read_all(&mut bs, &zstd_read_name(&plain_d), 0, 0)
        .await
        .unwrap();
    assert_eq!(zstd::stream::decode_all(&zread[..]).unwrap(), plain);
    assert_eq!(
        read_all(&mut bs, &read_name("", &packed_d), 0, 0)
            .await
            .unwrap(),
        packed
    );
    // The same hashes under the other function are other blobs.
    let under_other = read_all(&mut bs, &read_name("", &foreign(&plain_d)), 0, 0).await;
    assert_eq!(code(under_other), Code::NotFound);

    // Batches.
    let small = pseudo_random(seed + 2, 1000);
    let small_d = of(&small);
    assert_eq!(
        batch_update(f, sent, &[(small_d, small.clone())]).await,
        [0]
    );
    let read = BatchReadBlobsRequest {
        digests: vec![proto(&small_d)],
        digest_function: sent,
        ..Default::default()
    };
    let got = f.cas().batch_read_blobs(read).await.unwrap().into_inner();
    assert_eq!(got.responses[0].data, small);

    // FindMissingBlobs keeps functions apart.
    let all = [plain_d, packed_d, small_d];
    assert!(missing(f, sent, &all).await.is_empty());
    let other_value = value(other(function));
    assert_eq!(missing(f, other_value, &all).await.len(), 3);

    // GetTree: the directory names its files under the request's function.
    let root = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(proto(&small_d)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root_bytes = root.encode_to_vec();
    let root_d = of(&root_bytes);
    assert_eq!(batch_update(f, sent, &[(root_d, root_bytes)]).await, [0]);
    let tree = |function: i32| GetTreeRequest {
        root_digest: Some(proto(&root_d)),
        digest_function: function,
        ..Default::default()
    };
    let mut pages = f.cas().get_tree(tree(sent)).await.unwrap().into_inner();
    let page = pages.message().await.unwrap().unwrap();
    assert_eq!(page.directories, vec![root.clone()]);
    assert_eq!(
        code(f.cas().get_tree(tree(other_value)).await),
        Code::NotFound
    );

    // The action cache: keyed by function too, and completeness checked under it.
    let action = of(format!("action {seed}").as_bytes());
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out".into(),
            digest: Some(proto(&plain_d)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let update = UpdateActionResultRequest {
        action_digest: Some(proto(&action)),
        action_result: Some(result.clone()),
        digest_function: sent,
        ..Default::default()
    };
    f.ac().update_action_result(update).await.unwrap();
    let get = |function: i32| GetActionResultRequest {
        action_digest: Some(proto(&action)),
        digest_function: function,
        ..Default::default()
    };
    let hit = f
        .ac()
        .get_action_result(get(sent))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.output_files, result.output_files);
    assert_eq!(
        code(f.ac().get_action_result(get(other_value)).await),
        Code::NotFound
    );
    // A result naming a blob stored only under the other function is incomplete: a miss.
    let lost = of(format!("lost {seed}").as_bytes());
    let mut naming_lost = result.clone();
    naming_lost.output_files[0].digest = Some(proto(&lost));
    let other_blob = format!("lost {seed}").into_bytes();
    let other_d = Digest::of_with(other(function), &other_blob);
    assert_eq!(
        batch_update(f, other_value, &[(other_d, other_blob)]).await,
        [0]
    );
    let incomplete = of(format!("incomplete {seed}").as_bytes());
    let update = UpdateActionResultRequest {
        action_digest: Some(proto(&incomplete)),
        action_result: Some(naming_lost),
        digest_function: sent,
        ..Default::default()
    };
    f.ac().update_action_result(update).await.unwrap();
    let get_incomplete = GetActionResultRequest {
        action_digest: Some(proto(&incomplete)),
        digest_function: sent,
        ..Default::default()
    };
    assert_eq!(
        code(f.ac().get_action_result(get_incomplete).await),
        Code::NotFound
    );

    // Split and splice a blob of several chunks under this function.
    let big = pseudo_random(seed + 3, 5 << 20);
    let big_d = of(&big);
    assert_eq!(write(f, &write_name("", "b", &big_d), &big).await, Code::Ok);
    let split = SplitBlobRequest {
        blob_digest: Some(proto(&big_d)),
        digest_function: sent,
        ..Default::default()
    };
    let chunks = f.cas().split_blob(split).await.unwrap().into_inner();
    assert_eq!(chunks.chunking_function, 1, "FAST_CDC_2020");
    assert!(chunks.chunk_digests.len() >= 3);
    let mut joined = Vec::new();
    for chunk in &chunks.chunk_digests {
        let chunk = Digest::parse_with(function, &chunk.hash, chunk.size_bytes).unwrap();
        joined.extend(
            read_all(&mut bs, &read_name("", &chunk), 0, 0)
                .await
                .unwrap(),
        );
    }
    assert_eq!(joined, big);
    let mut reversed = chunks.chunk_digests.clone();
    reversed.reverse();
    let mut expected = Vec::new();
    for chunk in &reversed {
        let start = chunks
            .chunk_digests
            .iter()
            .take_while(|c| *c != chunk)
            .map(|c| c.size_bytes as usize)
            .sum::<usize>();
        expected.extend_from_slice(&big[start..start + chunk.size_bytes as usize]);
    }
    let spliced_d = of(&expected);
    let splice = SpliceBlobRequest {
        blob_digest: Some(proto(&spliced_d)),
        chunk_digests: reversed,
        digest_function: sent,
        ..Default::default()
    };
    let reply = f.cas().splice_blob(splice).await.unwrap().into_inner();
    assert_eq!(reply.blob_digest, Some(proto(&spliced_d)));
    let back = read_all(&mut bs, &read_name("", &spliced_d), 0, 0)
        .await
        .unwrap();
    assert!(back == expected, "spliced bytes differ");
}

#[tokio::test]
async fn both_functions_go_through_every_rpc_and_stay_apart() {
    let f = Fixture::start().await;
    every_rpc(&f, DigestFunction::Sha256, 0, 10).await;
    every_rpc(&f, DigestFunction::Sha256, SHA256, 20).await;
    every_rpc(&f, DigestFunction::Blake3, BLAKE3, 30).await;
}

#[tokio::test]
async fn unsupported_functions_and_unlabelled_blake3_are_refused() {
    let f = Fixture::start().await;
    let data = b"some bytes".to_vec();
    let blake = Digest::of_with(DigestFunction::Blake3, &data);
    // Without its function a BLAKE3 digest is read as SHA-256: the bytes do not match it.
    assert_eq!(
        batch_update(&f, 0, &[(blake, data.clone())]).await,
        [Code::InvalidArgument as i32]
    );
    let unlabelled = read_name("", &blake).replacen("blake3/", "", 1);
    assert_eq!(
        write(
            &f,
            &unlabelled.replacen("blobs", "uploads/u/blobs", 1),
            &data
        )
        .await,
        Code::InvalidArgument
    );
    assert_eq!(
        missing(&f, BLAKE3, &[blake]).await.len(),
        1,
        "nothing stored"
    );

    // SHA1, SHA256TREE, GITSHA1 and an unknown value: INVALID_ARGUMENT from every RPC.
    let d = Some(proto(&blake));
    for function in [3, 8, 10, 99] {
        let cas = f.cas();
        let ac = f.ac();
        let calls = [
            code(
                cas.clone()
                    .find_missing_blobs(FindMissingBlobsRequest {
                        blob_digests: vec![proto(&blake)],
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                cas.clone()
                    .batch_update_blobs(BatchUpdateBlobsRequest {
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                cas.clone()
                    .batch_read_blobs(BatchReadBlobsRequest {
                        digests: vec![proto(&blake)],
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                cas.clone()
                    .get_tree(GetTreeRequest {
                        root_digest: d.clone(),
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                cas.clone()
                    .split_blob(SplitBlobRequest {
                        blob_digest: d.clone(),
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                cas.clone()
                    .splice_blob(SpliceBlobRequest {
                        blob_digest: d.clone(),
                        chunk_digests: vec![proto(&blake)],
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                ac.clone()
                    .get_action_result(GetActionResultRequest {
                        action_digest: d.clone(),
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                ac.clone()
                    .update_action_result(UpdateActionResultRequest {
                        action_digest: d.clone(),
                        action_result: Some(ActionResult::default()),
                        digest_function: function,
                        ..Default::default()
                    })
                    .await,
            ),
        ];
        assert_eq!(calls, [Code::InvalidArgument; 8], "function {function}");
    }
    for segment in ["sha1", "md5", "sha256tree", "sha384"] {
        let name = format!("blobs/{segment}/{}/{}", blake.hex(), blake.size);
        let read = read_all(&mut f.bytestream(), &name, 0, 0).await;
        assert_eq!(code(read), Code::InvalidArgument, "{name}");
        let upload = format!("uploads/u/{name}");
        assert_eq!(
            write(&f, &upload, &data).await,
            Code::InvalidArgument,
            "{upload}"
        );
    }
}

#[tokio::test]
async fn a_100_mib_blob_splits_and_splices_back_byte_exact() {
    let source = Fixture::start().await;
    // Cheap to make, and content-defined cuts still vary: random blocks, some repeated.
    let blocks: Vec<Vec<u8>> = (0..16).map(|i| pseudo_random(i, 1 << 20)).collect();
    let mut data = Vec::with_capacity(100 << 20);
    for i in 0..100u64 {
        data.extend_from_slice(&blocks[((i * 7) % 13) as usize]);
    }
    let digest = Digest::of_with(DigestFunction::Blake3, &data);
    assert_eq!(
        write(&source, &write_name("", "big", &digest), &data).await,
        Code::Ok
    );
    let split = SplitBlobRequest {
        blob_digest: Some(proto(&digest)),
        digest_function: BLAKE3,
        chunking_function: 1,
        ..Default::default()
    };
    let chunks = source
        .cas()
        .split_blob(split)
        .await
        .unwrap()
        .into_inner()
        .chunk_digests;
    let sizes: Vec<i64> = chunks.iter().map(|c| c.size_bytes).collect();
    assert_eq!(sizes.iter().sum::<i64>(), 100 << 20);
    let (last, rest) = sizes.split_last().unwrap();
    assert!(
        rest.iter().all(|&s| (128 << 10..=2 << 20).contains(&s)),
        "{sizes:?}"
    );
    assert!(*last <= 2 << 20);
    // Repeated content gives repeated chunks: fewer distinct chunks than chunks.
    let distinct: std::collections::HashSet<&str> =
        chunks.iter().map(|c| c.hash.as_str()).collect();
    assert!(
        distinct.len() < chunks.len(),
        "{} of {}",
        distinct.len(),
        chunks.len()
    );

    // Fetch the chunks and splice them on another server.
    let target = Fixture::start().await;
    let mut fetched = Vec::new();
    let mut bs = source.bytestream();
    for chunk in &chunks {
        let chunk =
            Digest::parse_with(DigestFunction::Blake3, &chunk.hash, chunk.size_bytes).unwrap();
        let bytes = read_all(&mut bs, &read_name("", &chunk), 0, 0)
            .await
            .unwrap();
        fetched.push((chunk, bytes));
    }
    for batch in fetched.chunks(4) {
        assert!(batch_update(&target, BLAKE3, batch)
            .await
            .iter()
            .all(|&c| c == 0));
    }
    let splice = SpliceBlobRequest {
        blob_digest: Some(proto(&digest)),
        chunk_digests: chunks.clone(),
        digest_function: BLAKE3,
        chunking_function: 1,
        ..Default::default()
    };
    target.cas().splice_blob(splice).await.unwrap();
    let back = read_all(&mut target.bytestream(), &read_name("", &digest), 0, 0)
        .await
        .unwrap();
    assert!(back == data, "the spliced blob differs");
}

#[tokio::test]
async fn bad_splits_and_splices_are_rejected_and_store_nothing() {
    let f = Fixture::start().await;
    for function in DigestFunction::ALL {
        let sent = value(function);
        let parts: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(40 + i, 70_000)).collect();
        let digests: Vec<Digest> = parts.iter().map(|p| Digest::of_with(function, p)).collect();
        let stored: Vec<(Digest, Vec<u8>)> = digests.iter().copied().zip(parts.clone()).collect();
        assert_eq!(batch_update(&f, sent, &stored[..2]).await, [0, 0]);
        let whole = parts.concat();
        let whole_d = Digest::of_with(function, &whole);
        let first_two = Digest::of_with(function, &parts[..2].concat());
        let splice = |blob: Digest, chunks: &[Digest]| SpliceBlobRequest {
            blob_digest: Some(proto(&blob)),
            chunk_digests: chunks.iter().map(proto).collect(),
            digest_function: sent,
            ..Default::default()
        };
        let cas = || f.cas();
        // A chunk that is not stored: NOT_FOUND.
        let reply = cas().splice_blob(splice(whole_d, &digests)).await;
        assert_eq!(code(reply), Code::NotFound);
        // The wrong digest for what the chunks make: INVALID_ARGUMENT.
        let wrong = Digest::new(function, Digest::of(b"not it").hash, first_two.size);
        let reply = cas().splice_blob(splice(wrong, &digests[..2])).await;
        assert_eq!(code(reply), Code::InvalidArgument);
        // Sizes that do not add up: INVALID_ARGUMENT.
        let short = Digest::new(function, first_two.hash, first_two.size - 1);
        let reply = cas().splice_blob(splice(short, &digests[..2])).await;
        assert_eq!(code(reply), Code::InvalidArgument);
        // A chunk named with the wrong size is not that chunk: NOT_FOUND.
        let mut resized = digests[..2].to_vec();
        resized[0].size -= 1;
        resized[1].size += 1;
        let reply = cas().splice_blob(splice(first_two, &resized)).await;
        assert_eq!(code(reply), Code::NotFound);
        // Chunks stored under the other function are not these chunks.
        let foreign: Vec<Digest> = parts[..2]
            .iter()
            .map(|p| Digest::of_with(other(function), p))
            .collect();
        let reply = cas().splice_blob(splice(first_two, &foreign)).await;
        assert_eq!(code(reply), Code::NotFound);
        // A split of a blob that is not stored: NOT_FOUND.
        let split = SplitBlobRequest {
            blob_digest: Some(proto(&whole_d)),
            digest_function: sent,
            ..Default::default()
        };
        assert_eq!(code(cas().split_blob(split).await), Code::NotFound);
        // Nothing of it was stored.
        let absent = missing(&f, sent, &[whole_d, wrong, short, first_two, digests[2]]).await;
        assert_eq!(absent.len(), 5, "{function:?}");
        // And the right splice still works.
        cas()
            .splice_blob(splice(first_two, &digests[..2]))
            .await
            .unwrap();
        assert!(missing(&f, sent, &[first_two]).await.is_empty());
    }
}

#[tokio::test]
async fn http_stays_sha256_and_never_serves_a_blake3_blob() {
    use grpc_support::FrontEnds;
    use hoard::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
    use hoard::store::{MemoryStore, Store};
    use hoard::wire::http::HttpConfig;
    use http_body_util::{BodyExt as _, Full};

    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new(1 << 20, 1 << 24));
    let both = FrontEnds::serve(store, GrpcConfig::default(), HttpConfig::default()).await;
    let data = b"served over both protocols".to_vec();
    let blake = Digest::of_with(DigestFunction::Blake3, &data);
    let sha = Digest::of(&data);
    let mut cas = ContentAddressableStorageClient::new(both.channel.clone());
    for (function, digest) in [(BLAKE3, blake), (SHA256, sha)] {
        let request = BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(proto(&digest)),
                data: data.clone().into(),
                compressor: 0,
            }],
            digest_function: function,
            ..Default::default()
        };
        let reply = cas.batch_update_blobs(request).await.unwrap().into_inner();
        assert_eq!(reply.responses[0].status.as_ref().unwrap().code, 0);
    }
    let get = |digest: Digest| async move {
        let stream = tokio::net::TcpStream::connect(both.http_addr)
            .await
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get(format!("/cas/{}", digest.hex()))
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    };
    assert_eq!(get(sha).await, (200, bytes::Bytes::from(data.clone())));
    assert_eq!(
        get(blake).await.0,
        404,
        "a BLAKE3 hash is not a SHA-256 key"
    );
}
