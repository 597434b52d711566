//! Whole-client scenarios over real gRPC: many concurrent uploads, duplicate uploads, resumed
//! uploads, and action results whose outputs come and go.
#![cfg(not(madsim))]

mod grpc_support;

use std::time::Duration;

use grpc_support::*;
use hoard::engine::Digest;
use hoard::proto::bytestream::QueryWriteStatusRequest;
use hoard::proto::reapi::{
    ActionResult, FindMissingBlobsRequest, GetActionResultRequest, OutputFile,
    UpdateActionResultRequest,
};

/// Sizes from 100 B to 4 MiB, spread evenly on a log scale (so most blobs are small, as in a
/// real build, and the run stays fast), both ends included.
fn seed_sizes(count: usize) -> Vec<usize> {
    let (low, high) = (100f64, (4u64 << 20) as f64);
    (0..count)
        .map(|i| {
            let t = i as f64 / (count - 1) as f64;
            (low * (high / low).powf(t)).round() as usize
        })
        .collect()
}

/// The seed scenario: 339 concurrent ByteStream writes of distinct blobs from one client, then
/// every blob read back byte-exact and none reported missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_distinct_writes_all_land() {
    let f = Fixture::start().await;
    let blobs: Vec<Vec<u8>> = seed_sizes(339)
        .into_iter()
        .enumerate()
        .map(|(i, size)| pseudo_random(1000 + i as u64, size))
        .collect();
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    let writes = blobs
        .iter()
        .zip(&digests)
        .enumerate()
        .map(|(i, (data, digest))| {
            let requests = write_requests(
                &write_name("", &format!("seed-{i}"), digest),
                data,
                64 << 10,
            );
            let mut client = f.bytestream();
            tokio::spawn(async move { client.write(futures::stream::iter(requests)).await })
        });
    let results = futures::future::join_all(writes.collect::<Vec<_>>()).await;
    for (result, digest) in results.into_iter().zip(&digests) {
        let response = result
            .expect("task")
            .unwrap_or_else(|s| panic!("write {digest}: {s:?}"));
        assert_eq!(response.into_inner().committed_size, digest.size as i64);
    }

    let reads = digests.iter().map(|digest| {
        let mut client = f.bytestream();
        let name = read_name("", digest);
        tokio::spawn(async move { read_all(&mut client, &name, 0, 0).await })
    });
    let read_back = futures::future::join_all(reads.collect::<Vec<_>>()).await;
    for ((result, data), digest) in read_back.into_iter().zip(&blobs).zip(&digests) {
        let got = result
            .expect("task")
            .unwrap_or_else(|s| panic!("read {digest}: {s:?}"));
        assert!(got == *data, "blob {digest} read back differently");
    }

    let missing = f
        .cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests.iter().map(proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty(), "{} reported missing", missing.len());
    assert_eq!(f.engine.stats().blobs, 339);
}

/// 64 writers of one digest all succeed, and one copy is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_digest_store_one_copy() {
    let f = Fixture::start().await;
    let data = pseudo_random(7, 1_500_000);
    let digest = Digest::of(&data);
    let writes = (0..64).map(|i| {
        let requests = write_requests(
            &write_name("", &format!("same-{i}"), &digest),
            &data,
            64 << 10,
        );
        let mut client = f.bytestream();
        tokio::spawn(async move { client.write(futures::stream::iter(requests)).await })
    });
    for result in futures::future::join_all(writes.collect::<Vec<_>>()).await {
        let response = result.expect("task").expect("every writer succeeds");
        assert_eq!(response.into_inner().committed_size, data.len() as i64);
    }
    assert_eq!(f.engine.stats().blobs, 1);
    assert_eq!(f.download(&digest).await.unwrap(), data);
}

async fn write_status(f: &Fixture, name: &str) -> (i64, bool) {
    let status = f
        .bytestream()
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (status.committed_size, status.complete)
}

/// A stream closed before finish_write keeps its bytes; a new Write resumes at committed_size.
#[tokio::test]
async fn closed_write_resumes_where_it_stopped() {
    let f = Fixture::start().await;
    let data = pseudo_random(8, 3 << 20);
    let digest = Digest::of(&data);
    let name = write_name("", "resume-1", &digest);
    assert_eq!(write_status(&f, &name).await, (0, false));

    let first_part = write_requests_from(&name, &data[..1 << 20], 0, 64 << 10, false);
    let response = f
        .bytestream()
        .write(futures::stream::iter(first_part))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, 1 << 20);
    assert_eq!(write_status(&f, &name).await, (1 << 20, false));

    let rest = write_requests_from(&name, &data, 1 << 20, 64 << 10, true);
    let response = f
        .bytestream()
        .write(futures::stream::iter(rest))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
    assert_eq!(write_status(&f, &name).await, (data.len() as i64, true));
    assert_eq!(f.download(&digest).await.unwrap(), data);
}

/// A stream that breaks (the client call is dropped) is parked too, and a client that follows
/// QueryWriteStatus completes it.
#[tokio::test]
async fn broken_write_resumes_from_query_write_status() {
    let f = Fixture::start().await;
    let data = pseudo_random(9, 600_000);
    let digest = Digest::of(&data);
    let name = write_name("inst", "resume-2", &digest);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    for request in write_requests_from(&name, &data[..200_000], 0, 50_000, false) {
        tx.unbounded_send(request).unwrap();
    }
    let mut client = f.bytestream();
    let call = tokio::spawn(async move { client.write(rx).await });
    // Let the chunks reach the server, then break the stream without finishing it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    call.abort();
    drop(tx);
    let committed = loop {
        let (committed, complete) = write_status(&f, &name).await;
        assert!(!complete);
        if committed > 0 {
            break committed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken upload was never parked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        committed <= 200_000 && committed % 50_000 == 0,
        "{committed}"
    );

    let rest = write_requests_from(&name, &data, committed as usize, 50_000, true);
    let response = f
        .bytestream()
        .write(futures::stream::iter(rest))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
    assert_eq!(f.download(&digest).await.unwrap(), data);
}

/// Restarting at offset 0 discards parked bytes; resuming at a wrong offset is refused.
#[tokio::test]
async fn resume_must_continue_at_the_committed_size() {
    let f = Fixture::start().await;
    let data = pseudo_random(10, 100_000);
    let digest = Digest::of(&data);
    let name = write_name("", "resume-3", &digest);
    let part = write_requests_from(&name, &data[..40_000], 0, 10_000, false);
    f.bytestream()
        .write(futures::stream::iter(part))
        .await
        .unwrap();
    let wrong = write_requests_from(&name, &data, 30_000, 10_000, true);
    let status = f
        .bytestream()
        .write(futures::stream::iter(wrong))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let restart = write_requests(&name, &data, 10_000);
    let response = f
        .bytestream()
        .write(futures::stream::iter(restart))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
}

/// An action result is a hit only while the blobs it references exist.
#[tokio::test]
async fn action_result_hit_needs_its_outputs() {
    let f = Fixture::start().await;
    let output = b"linked binary".to_vec();
    let stdout = b"warning: unused variable".to_vec();
    let action = Digest::of(b"link action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "bin/app".into(),
            digest: Some(proto(&Digest::of(&output))),
            is_executable: true,
            ..Default::default()
        }],
        stdout_digest: Some(proto(&Digest::of(&stdout))),
        ..Default::default()
    };
    let mut ac = f.ac();
    ac.update_action_result(UpdateActionResultRequest {
        action_digest: Some(proto(&action)),
        action_result: Some(result.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = || GetActionResultRequest {
        action_digest: Some(proto(&action)),
        ..Default::default()
    };
    let miss = ac.get_action_result(get()).await.unwrap_err();
    assert_eq!(miss.code(), tonic::Code::NotFound, "{miss:?}");
    f.upload(&output).await;
    assert_eq!(
        ac.get_action_result(get()).await.unwrap_err().code(),
        tonic::Code::NotFound,
        "stdout still missing"
    );
    f.upload(&stdout).await;
    assert_eq!(
        ac.get_action_result(get()).await.unwrap().into_inner(),
        result
    );
}
