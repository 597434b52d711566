//! One round trip per REAPI RPC, and each bad input with the exact status code it must get.
#![cfg(not(madsim))]

mod grpc_support;

use futures::StreamExt;
use grpc_support::*;
use hoard::engine::{AcKind, Digest};
use hoard::proto::bytestream::{QueryWriteStatusRequest, WriteRequest};
use hoard::proto::reapi::{
    batch_update_blobs_request, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
    Directory, DirectoryNode, FileNode, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, GetTreeRequest, OutputDirectory, OutputFile, Tree,
    UpdateActionResultRequest,
};
use hoard::wire::grpc::GrpcConfig;
use prost::Message;
use tonic::Code;

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call must fail").code()
}

// ---------------------------------------------------------------------------------------------
// Capabilities

#[tokio::test]
async fn capabilities_satisfy_bazel() {
    let f = Fixture::start().await;
    let caps = f
        .capabilities()
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(cache.digest_functions, vec![1, 9]); // SHA256, BLAKE3
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert_eq!(
        cache.max_batch_total_size_bytes,
        GrpcConfig::default().max_batch_total_size() as i64
    );
    assert_eq!(cache.symlink_absolute_path_strategy, 2); // ALLOWED
    assert_eq!(cache.supported_compressors, vec![1]); // ZSTD
    let (low, high) = (
        caps.low_api_version.unwrap(),
        caps.high_api_version.unwrap(),
    );
    assert_eq!((low.major, low.minor, high.major, high.minor), (2, 0, 2, 3));
}

// ---------------------------------------------------------------------------------------------
// ActionCache

fn result_with_output(output: &Digest) -> ActionResult {
    ActionResult {
        output_files: vec![OutputFile {
            path: "out/a.o".into(),
            digest: Some(proto(output)),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

fn get(instance: &str, action: &Digest) -> GetActionResultRequest {
    GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(proto(action)),
        ..Default::default()
    }
}

fn update(instance: &str, action: &Digest, result: ActionResult) -> UpdateActionResultRequest {
    UpdateActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(proto(action)),
        action_result: Some(result),
        ..Default::default()
    }
}

#[tokio::test]
async fn action_cache_round_trip_is_per_instance() {
    let f = Fixture::start().await;
    let mut ac = f.ac();
    let action = Digest::of(b"action");
    assert_eq!(
        code(ac.get_action_result(get("main", &action)).await),
        Code::NotFound
    );
    let output = f.upload(b"object code").await;
    let result = result_with_output(&output);
    let stored = ac
        .update_action_result(update("main", &action, result.clone()))
        .await
        .unwrap();
    assert_eq!(stored.into_inner(), result);
    assert_eq!(
        ac.get_action_result(get("main", &action))
            .await
            .unwrap()
            .into_inner(),
        result
    );
    assert_eq!(
        code(ac.get_action_result(get("other", &action)).await),
        Code::NotFound
    );
    assert_eq!(
        code(ac.get_action_result(get("", &action)).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn action_cache_rejects_malformed_requests() {
    let f = Fixture::start().await;
    let mut ac = f.ac();
    let action = Digest::of(b"action");
    let bad_digest = hoard::proto::reapi::Digest {
        hash: "ABC".into(),
        size_bytes: 3,
    };
    let mut bad_output = result_with_output(&Digest::of(b"x"));
    bad_output.output_files[0].digest = Some(bad_digest.clone());
    let mut no_output_digest = result_with_output(&Digest::of(b"x"));
    no_output_digest.output_files[0].digest = None;
    let mut negative = result_with_output(&Digest::of(b"x"));
    negative.stdout_digest = Some(hoard::proto::reapi::Digest {
        size_bytes: -5,
        ..proto(&Digest::of(b"x"))
    });
    let mut empty_path = result_with_output(&Digest::of(b"x"));
    empty_path.output_files[0].path.clear();
    for result in [bad_output, no_output_digest, negative, empty_path] {
        let status = ac
            .update_action_result(update("", &action, result))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let mut missing_result = update("", &action, ActionResult::default());
    missing_result.action_result = None;
    assert_eq!(
        code(ac.update_action_result(missing_result).await),
        Code::InvalidArgument
    );
    let mut bad_action = get("", &action);
    bad_action.action_digest = Some(bad_digest);
    assert_eq!(
        code(ac.get_action_result(bad_action).await),
        Code::InvalidArgument
    );
    let mut no_action = get("", &action);
    no_action.action_digest = None;
    assert_eq!(
        code(ac.get_action_result(no_action).await),
        Code::InvalidArgument
    );
    // SHA1 (3), SHA256TREE (8), and values the enum does not know: not served.
    for function in [3, 8, 77] {
        let mut unsupported = get("", &action);
        unsupported.digest_function = function;
        assert_eq!(
            code(ac.get_action_result(unsupported).await),
            Code::InvalidArgument
        );
    }
}

#[tokio::test]
async fn opaque_and_undecodable_action_values_are_misses() {
    let f = Fixture::start().await;
    // What ccache stores under /ac/ over HTTP: served back there, never over gRPC.
    let ccache_key = Digest::of(b"ccache-style entry");
    let ccache_entry = bytes::Bytes::from_static(b"\xcc\xac\x00\x01 manifest");
    f.engine
        .put_action(
            "",
            ccache_key.function,
            ccache_key.hash,
            AcKind::Opaque,
            ccache_entry.clone(),
        )
        .await
        .unwrap();
    assert_eq!(
        code(f.ac().get_action_result(get("", &ccache_key)).await),
        Code::NotFound
    );
    let stored = f
        .engine
        .get_action("", ccache_key.function, &ccache_key.hash)
        .await
        .unwrap();
    assert_eq!(stored, Some((AcKind::Opaque, ccache_entry)));

    // A value tagged as an ActionResult that does not decode is a miss, not INTERNAL.
    let broken = Digest::of(b"broken entry");
    f.engine
        .put_action(
            "",
            broken.function,
            broken.hash,
            AcKind::ActionResult,
            bytes::Bytes::from_static(b"\xcc\xac\xff\xff\xff"),
        )
        .await
        .unwrap();
    assert_eq!(
        code(f.ac().get_action_result(get("", &broken)).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn action_result_is_served_only_when_its_tree_files_exist() {
    let f = Fixture::start().await;
    let mut ac = f.ac();
    let file = Digest::of(b"file in an output directory");
    let tree = Tree {
        root: Some(Directory {
            files: vec![FileNode {
                name: "f".into(),
                digest: Some(proto(&file)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: Vec::new(),
    };
    let tree_digest = f.upload(&tree.encode_to_vec()).await;
    let action = Digest::of(b"dir action");
    let result = ActionResult {
        output_directories: vec![OutputDirectory {
            path: "out/dir".into(),
            tree_digest: Some(proto(&tree_digest)),
            ..Default::default()
        }],
        ..Default::default()
    };
    ac.update_action_result(update("", &action, result))
        .await
        .unwrap();
    assert_eq!(
        code(ac.get_action_result(get("", &action)).await),
        Code::NotFound
    );
    f.upload(b"file in an output directory").await;
    ac.get_action_result(get("", &action)).await.unwrap();
}

#[tokio::test]
async fn inlining_is_on_request_and_within_budget() {
    let f = Fixture::with(
        |_| {},
        GrpcConfig {
            max_inline_bytes: 1000,
            ..GrpcConfig::default()
        },
    )
    .await;
    let mut ac = f.ac();
    let small = f.upload(b"small output").await;
    let stdout = f.upload(b"compiler says hi").await;
    let big_data = vec![7u8; 2000];
    let big = f.upload(&big_data).await;
    let action = Digest::of(b"inline action");
    let mut result = result_with_output(&small);
    result.output_files.push(OutputFile {
        path: "big".into(),
        digest: Some(proto(&big)),
        ..Default::default()
    });
    result.stdout_digest = Some(proto(&stdout));
    ac.update_action_result(update("", &action, result))
        .await
        .unwrap();

    let plain = ac
        .get_action_result(get("", &action))
        .await
        .unwrap()
        .into_inner();
    assert!(
        plain.stdout_raw.is_empty() && plain.output_files.iter().all(|o| o.contents.is_empty())
    );

    let mut request = get("", &action);
    request.inline_stdout = true;
    request.inline_output_files = vec!["out/a.o".into(), "big".into()];
    let inlined = ac.get_action_result(request).await.unwrap().into_inner();
    assert_eq!(inlined.stdout_raw, b"compiler says hi");
    assert_eq!(inlined.output_files[0].contents, b"small output");
    assert!(
        inlined.output_files[1].contents.is_empty(),
        "2000 bytes exceed the 1000 byte budget"
    );
}

// ---------------------------------------------------------------------------------------------
// CAS

#[tokio::test]
async fn find_missing_blobs_handles_ten_thousand_digests() {
    let f = Fixture::start().await;
    let present = f.upload(b"present").await;
    let mut digests: Vec<_> = (0..10_000u32)
        .map(|i| proto(&Digest::of(&i.to_le_bytes())))
        .collect();
    digests[5000] = proto(&present);
    digests.push(proto(&Digest::EMPTY));
    let started = std::time::Instant::now();
    let missing = f
        .cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(missing.len(), 9_999);
    assert!(!missing.contains(&proto(&present)) && !missing.contains(&proto(&Digest::EMPTY)));

    let mut bad = digests;
    bad[7].hash = "not hex".into();
    let request = FindMissingBlobsRequest {
        blob_digests: bad,
        ..Default::default()
    };
    assert_eq!(
        code(f.cas().find_missing_blobs(request).await),
        Code::InvalidArgument
    );
}

fn blob(digest: hoard::proto::reapi::Digest, data: &[u8]) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(digest),
        data: data.to_vec().into(),
        compressor: 0,
    }
}

#[tokio::test]
async fn batch_update_reports_each_blob_alone_in_order() {
    let f = Fixture::start().await;
    let good = Digest::of(b"good");
    let wrong_hash = proto(&Digest::of(b"other"));
    let short = proto(&Digest::of(b"short!"));
    let malformed = hoard::proto::reapi::Digest {
        hash: "zz".into(),
        size_bytes: 4,
    };
    let mut zstd = blob(proto(&Digest::of(b"zstd")), b"zstd");
    zstd.compressor = 1;
    let requests = vec![
        blob(proto(&good), b"good"),
        blob(wrong_hash, b"oth3r"),
        blob(short, b"short"),
        blob(malformed, b"good"),
        zstd,
        blob(proto(&Digest::EMPTY), b""),
    ];
    let expected = [
        Code::Ok,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::Ok,
    ];
    let sent: Vec<_> = requests.iter().map(|r| r.digest.clone()).collect();
    let responses = f
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    let got: Vec<_> = responses
        .iter()
        .map(|r| Code::from_i32(r.status.as_ref().unwrap().code))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        responses
            .iter()
            .map(|r| r.digest.clone())
            .collect::<Vec<_>>(),
        sent
    );
    assert!(responses
        .iter()
        .all(|r| r.status.as_ref().unwrap().code == 0
            || !r.status.as_ref().unwrap().message.is_empty()));
    assert_eq!(f.download(&good).await.unwrap(), b"good");
}

#[tokio::test]
async fn batches_over_the_announced_total_are_invalid_argument() {
    let config = GrpcConfig {
        max_message_size: 1 << 20,
        ..GrpcConfig::default()
    };
    let limit = config.max_batch_total_size() as usize;
    let f = Fixture::with(|_| {}, config).await;
    let data = vec![1u8; limit + 1];
    let request = BatchUpdateBlobsRequest {
        requests: vec![blob(proto(&Digest::of(&data)), &data)],
        ..Default::default()
    };
    assert_eq!(
        code(f.cas().batch_update_blobs(request).await),
        Code::InvalidArgument
    );
    let request = BatchReadBlobsRequest {
        digests: vec![proto(&Digest::of(&data))],
        ..Default::default()
    };
    assert_eq!(
        code(f.cas().batch_read_blobs(request).await),
        Code::InvalidArgument
    );
    // Declared sizes that would overflow a sum are refused, not a panic.
    let absurd = hoard::proto::reapi::Digest {
        size_bytes: i64::MAX,
        ..proto(&Digest::of(b"x"))
    };
    let request = BatchReadBlobsRequest {
        digests: vec![absurd.clone(), absurd],
        ..Default::default()
    };
    assert_eq!(
        code(f.cas().batch_read_blobs(request).await),
        Code::InvalidArgument
    );
    // Above the message limit itself, tonic's decoder refuses it.
    let huge = vec![1u8; 2 << 20];
    let request = BatchUpdateBlobsRequest {
        requests: vec![blob(proto(&Digest::of(&huge)), &huge)],
        ..Default::default()
    };
    assert_eq!(
        code(f.cas().batch_update_blobs(request).await),
        Code::OutOfRange
    );
}

#[tokio::test]
async fn batch_read_reports_each_blob_alone() {
    let f = Fixture::start().await;
    let present = f.upload(b"present").await;
    let absent = Digest::of(b"absent");
    let malformed = hoard::proto::reapi::Digest {
        hash: "nope".into(),
        size_bytes: 1,
    };
    let responses = f
        .cas()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![
                proto(&present),
                proto(&absent),
                malformed,
                proto(&Digest::EMPTY),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    let got: Vec<_> = responses
        .iter()
        .map(|r| {
            (
                Code::from_i32(r.status.as_ref().unwrap().code),
                r.data.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Code::Ok, b"present".to_vec()),
            (Code::NotFound, Vec::new()),
            (Code::InvalidArgument, Vec::new()),
            (Code::Ok, Vec::new()),
        ]
    );
}

/// Uploads a Directory and returns its digest.
async fn put_directory(f: &Fixture, name: &str, children: &[Digest]) -> Digest {
    let directory = Directory {
        files: vec![FileNode {
            name: name.into(),
            digest: Some(proto(&Digest::of(name.as_bytes()))),
            ..Default::default()
        }],
        directories: children
            .iter()
            .enumerate()
            .map(|(i, d)| DirectoryNode {
                name: format!("d{i}"),
                digest: Some(proto(d)),
            })
            .collect(),
        ..Default::default()
    };
    f.upload(&directory.encode_to_vec()).await
}

async fn tree_pages(
    f: &Fixture,
    root: &Digest,
    page_size: i32,
    token: &str,
) -> Result<Vec<(Vec<String>, String)>, tonic::Status> {
    let mut stream = f
        .cas()
        .get_tree(GetTreeRequest {
            root_digest: Some(proto(root)),
            page_size,
            page_token: token.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.next().await {
        let page = page?;
        let names = page
            .directories
            .iter()
            .map(|d| d.files[0].name.clone())
            .collect();
        pages.push((names, page.next_page_token));
    }
    Ok(pages)
}

#[tokio::test]
async fn get_tree_walks_breadth_first_in_resumable_pages() {
    let f = Fixture::start().await;
    let missing = Digest::of(b"a directory nobody uploaded");
    let leaf = put_directory(&f, "leaf", &[]).await;
    let a = put_directory(&f, "a", &[leaf, missing]).await;
    let b = put_directory(&f, "b", &[leaf]).await;
    let root = put_directory(&f, "root", &[a, b]).await;

    let all = tree_pages(&f, &root, 0, "").await.unwrap();
    assert_eq!(
        all,
        vec![(
            vec!["root".into(), "a".into(), "b".into(), "leaf".into()],
            String::new()
        )]
    );

    let pages = tree_pages(&f, &root, 3, "").await.unwrap();
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].0, ["root", "a", "b"]);
    assert_eq!(pages[1], (vec!["leaf".into()], String::new()));
    assert!(!pages[0].1.is_empty());
    // A new call resumes from the first page's token.
    let resumed = tree_pages(&f, &root, 3, &pages[0].1).await.unwrap();
    assert_eq!(resumed, vec![(vec!["leaf".into()], String::new())]);

    assert_eq!(
        code(tree_pages(&f, &root, 3, "bogus").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(tree_pages(&f, &a, 3, &pages[0].1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(tree_pages(&f, &root, -1, "").await),
        Code::InvalidArgument
    );
    assert_eq!(code(tree_pages(&f, &missing, 0, "").await), Code::NotFound);
}

// ---------------------------------------------------------------------------------------------
// ByteStream reads

#[tokio::test]
async fn read_honours_offset_and_limit() {
    let f = Fixture::start().await;
    let data = pseudo_random(1, (2 << 20) + 12345);
    let digest = f.upload(&data).await;
    let mut bs = f.bytestream();
    let name = read_name("", &digest);
    // Chunks are at most 1 MiB.
    let mut stream = bs
        .read(hoard::proto::bytestream::ReadRequest {
            resource_name: name.clone(),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        sizes.push(message.data.len());
    }
    assert_eq!(sizes, vec![1 << 20, 1 << 20, 12345]);
    assert_eq!(
        read_all(&mut bs, &name, 100, 0).await.unwrap(),
        &data[100..]
    );
    assert_eq!(
        read_all(&mut bs, &name, 100, 50).await.unwrap(),
        &data[100..150]
    );
    assert_eq!(read_all(&mut bs, &name, 0, 1 << 30).await.unwrap(), data);
    let size = data.len() as i64;
    assert!(read_all(&mut bs, &name, size, 0).await.unwrap().is_empty());
    // Leading slash and a multi-segment instance name are fine; the CAS is shared.
    assert_eq!(
        read_all(&mut bs, &format!("/{name}"), 0, 10).await.unwrap(),
        &data[..10]
    );
    assert_eq!(
        read_all(&mut bs, &read_name("a/b", &digest), 0, 10)
            .await
            .unwrap(),
        &data[..10]
    );
}

#[tokio::test]
async fn bad_reads_get_exact_codes() {
    let f = Fixture::start().await;
    let digest = f.upload(b"twelve bytes").await;
    let mut bs = f.bytestream();
    let name = read_name("", &digest);
    let absent = Digest::of(b"absent");
    let h = digest.hex();
    let cases = [
        (name.clone(), 13, 0, Code::OutOfRange),
        (name.clone(), -1, 0, Code::InvalidArgument),
        (name.clone(), 0, -1, Code::InvalidArgument),
        (read_name("", &absent), 0, 0, Code::NotFound),
        (format!("blobs/{h}"), 0, 0, Code::InvalidArgument),
        (
            format!("blobs/{}/12", h.to_uppercase()),
            0,
            0,
            Code::InvalidArgument,
        ),
        (format!("blobs/{h}/-12"), 0, 0, Code::InvalidArgument),
        // Compressors we do not offer, and a read_limit on a compressed read (the REAPI says
        // servers must refuse it).
        (
            format!("compressed-blobs/deflate/{h}/12"),
            0,
            0,
            Code::InvalidArgument,
        ),
        (
            format!("compressed-blobs/zstd/{h}/12"),
            0,
            1,
            Code::InvalidArgument,
        ),
        ("".into(), 0, 0, Code::InvalidArgument),
        ("\u{0}/../..".into(), 0, 0, Code::InvalidArgument),
    ];
    for (name, offset, limit, expected) in cases {
        let status = read_all(&mut bs, &name, offset, limit).await.unwrap_err();
        assert_eq!(
            status.code(),
            expected,
            "{name} @{offset}+{limit}: {status:?}"
        );
        assert!(!status.message().is_empty());
    }
    // The empty blob always exists.
    assert!(read_all(&mut bs, &read_name("", &Digest::EMPTY), 0, 0)
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// ByteStream writes

#[tokio::test]
async fn write_in_many_chunks_then_read_back() {
    let f = Fixture::start().await;
    let data = pseudo_random(2, 300_001);
    let digest = Digest::of(&data);
    let name = format!(
        "{}/trailing/metadata",
        write_name("ci/linux", "w-1", &digest)
    );
    let response = f
        .bytestream()
        .write(futures::stream::iter(write_requests(
            &name,
            &data,
            16 << 10,
        )))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
    assert_eq!(f.download(&digest).await.unwrap(), data);
    let status = f
        .bytestream()
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.committed_size, status.complete),
        (data.len() as i64, true)
    );
}

#[tokio::test]
async fn write_of_an_existing_blob_completes_early() {
    let f = Fixture::start().await;
    let data = pseudo_random(3, 100_000);
    let digest = f.upload(&data).await;
    // Only the first chunk is sent: the server answers without needing the rest.
    let first = write_requests(&write_name("", "again", &digest), &data, 10_000).remove(0);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(first).unwrap();
    let response = f.bytestream().write(rx).await.unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
    drop(tx);
    let empty = f
        .bytestream()
        .write(futures::stream::iter(write_requests(
            &write_name("", "e", &Digest::EMPTY),
            b"",
            1,
        )))
        .await
        .unwrap();
    assert_eq!(empty.into_inner().committed_size, 0);
}

async fn write_code(f: &Fixture, requests: Vec<WriteRequest>) -> Code {
    code(f.bytestream().write(futures::stream::iter(requests)).await)
}

#[tokio::test]
async fn bad_writes_get_exact_codes() {
    let f = Fixture::start().await;
    let data = pseudo_random(4, 50_000);
    let digest = Digest::of(&data);
    let name = write_name("", "bad", &digest);
    let good = || write_requests(&name, &data, 10_000);

    let mut corrupted = good();
    corrupted[2].data = vec![0u8; 10_000].into();
    assert_eq!(
        write_code(&f, corrupted).await,
        Code::InvalidArgument,
        "hash mismatch"
    );

    let mut short = good();
    short.pop();
    short.last_mut().unwrap().finish_write = true;
    assert_eq!(
        write_code(&f, short).await,
        Code::InvalidArgument,
        "too short"
    );

    let mut long = good();
    long.last_mut().unwrap().finish_write = false;
    long.push(WriteRequest {
        write_offset: data.len() as i64,
        finish_write: true,
        data: vec![1u8].into(),
        ..Default::default()
    });
    assert_eq!(
        write_code(&f, long).await,
        Code::InvalidArgument,
        "too long"
    );

    let mut gap = good();
    gap[3].write_offset += 1;
    assert_eq!(
        write_code(&f, gap).await,
        Code::InvalidArgument,
        "offset gap"
    );

    let mut overlap = good();
    overlap[3].write_offset -= 1;
    assert_eq!(
        write_code(&f, overlap).await,
        Code::InvalidArgument,
        "offset overlap"
    );

    let mut twice = good();
    twice.push(WriteRequest {
        write_offset: data.len() as i64,
        finish_write: true,
        ..Default::default()
    });
    assert_eq!(
        write_code(&f, twice).await,
        Code::InvalidArgument,
        "second finish_write"
    );

    let mut after = good();
    after.push(WriteRequest {
        write_offset: data.len() as i64,
        data: vec![1u8].into(),
        ..Default::default()
    });
    assert_eq!(
        write_code(&f, after).await,
        Code::InvalidArgument,
        "data after finish_write"
    );

    let mut renamed = good();
    renamed[1].resource_name = write_name("", "other", &digest);
    assert_eq!(
        write_code(&f, renamed).await,
        Code::InvalidArgument,
        "resource name changed"
    );

    let mut unnamed = good();
    unnamed[0].resource_name.clear();
    assert_eq!(
        write_code(&f, unnamed).await,
        Code::InvalidArgument,
        "no resource name"
    );

    let h = digest.hex();
    for bad_name in [
        format!("uploads/x/blobs/{h}"),
        format!("uploads/x/blobs/{h}/-3"),
        format!("blobs/{h}/{}", data.len()),
        format!("uploads/x/compressed-blobs/zstd/{h}/{}", data.len()),
        "garbage".into(),
    ] {
        let requests = write_requests(&bad_name, &data, 10_000);
        assert_eq!(
            write_code(&f, requests).await,
            Code::InvalidArgument,
            "{bad_name}"
        );
    }
    assert_eq!(
        write_code(&f, Vec::new()).await,
        Code::InvalidArgument,
        "empty stream"
    );
    assert!(
        !f.engine.contains(&digest),
        "no failed write stored anything"
    );
    assert_eq!(f.engine.stats().blobs, 0);
}

#[tokio::test]
async fn oversized_blobs_and_too_many_uploads_are_resource_exhausted() {
    let f = Fixture::with(
        |engine| {
            engine.max_blob_size = 1 << 20;
            engine.max_concurrent_uploads = 1;
        },
        GrpcConfig::default(),
    )
    .await;
    let big = Digest::sha256(Digest::of(b"pretend").hash, (1 << 20) + 1);
    let requests = write_requests(&write_name("", "big", &big), b"x", 1);
    assert_eq!(
        write_code(&f, requests).await,
        Code::InvalidArgument,
        "over the size limit (REAPI: INVALID_ARGUMENT)"
    );

    // A half-closed upload stays parked and keeps the only upload slot.
    let data = pseudo_random(5, 1000);
    let digest = Digest::of(&data);
    let partial = write_requests_from(&write_name("", "p", &digest), &data[..500], 0, 100, false);
    let response = f
        .bytestream()
        .write(futures::stream::iter(partial))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, 500);
    let other = b"another blob";
    let requests = write_requests(&write_name("", "q", &Digest::of(other)), other, 4);
    assert_eq!(
        write_code(&f, requests).await,
        Code::ResourceExhausted,
        "too many uploads"
    );
}
