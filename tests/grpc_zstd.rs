//! zstd over REAPI: ByteStream `compressed-blobs/zstd` reads and writes, compressed batch items,
//! and every bad compressed input with the status it must get. Real tonic clients against a
//! real server on 127.0.0.1:0.
#![cfg(not(madsim))]

mod grpc_support;

use grpc_support::*;
use hoard::engine::Digest;
use hoard::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use hoard::proto::reapi::{
    batch_update_blobs_request, BatchReadBlobsRequest, BatchUpdateBlobsRequest,
};
use tonic::Code;

const IDENTITY: i32 = 0;
const ZSTD: i32 = 1;
const DEFLATE: i32 = 2;
const BROTLI: i32 = 3;

/// Bytes that compress about 2:1 (16 letters, pseudo-random), distinct for each seed.
fn compressible(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random(seed, len)
        .into_iter()
        .map(|b| b'a' + (b & 15))
        .collect()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

fn unzstd(data: &[u8]) -> Vec<u8> {
    zstd::decode_all(data).expect("a valid zstd stream")
}

fn zstd_read_name(instance: &str, digest: &Digest) -> String {
    read_name(instance, digest).replacen("blobs/", "compressed-blobs/zstd/", 1)
}

fn zstd_write_name(instance: &str, uuid: &str, digest: &Digest) -> String {
    write_name(instance, uuid, digest).replacen("/blobs/", "/compressed-blobs/zstd/", 1)
}

/// Write messages carrying `compressed` in `chunk`-byte pieces, for a stream that starts at the
/// uncompressed offset `start`: later offsets add the compressed bytes sent (REAPI).
fn compressed_requests(
    name: &str,
    start: u64,
    compressed: &[u8],
    chunk: usize,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut at = start;
    let mut requests: Vec<WriteRequest> = compressed
        .chunks(chunk)
        .map(|piece| {
            let request = WriteRequest {
                resource_name: if at == start {
                    name.to_owned()
                } else {
                    String::new()
                },
                write_offset: at as i64,
                finish_write: false,
                data: piece.to_vec().into(),
            };
            at += piece.len() as u64;
            request
        })
        .collect();
    requests.last_mut().expect("some data").finish_write = finish;
    requests
}

async fn write(f: &Fixture, requests: Vec<WriteRequest>) -> Result<i64, tonic::Status> {
    Ok(f.bytestream()
        .write(futures::stream::iter(requests))
        .await?
        .into_inner()
        .committed_size)
}

/// Reads a compressed resource, returning the compressed bytes and the message sizes.
async fn read_compressed(
    f: &Fixture,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<(Vec<u8>, Vec<usize>), tonic::Status> {
    let mut stream = f
        .bytestream()
        .read(ReadRequest {
            resource_name: name.to_owned(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let (mut data, mut sizes) = (Vec::new(), Vec::new());
    while let Some(message) = stream.message().await? {
        sizes.push(message.data.len());
        data.extend_from_slice(&message.data);
    }
    Ok((data, sizes))
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

#[tokio::test]
async fn capabilities_list_zstd() {
    let f = Fixture::start().await;
    let cache = f.cache_capabilities().await;
    assert_eq!(cache.supported_compressors, vec![ZSTD]);
    assert_eq!(cache.supported_batch_update_compressors, vec![ZSTD]);
}

/// A few MiB written compressed in many chunks and read back compressed in several messages.
#[tokio::test]
async fn compressed_write_and_read_round_trip() {
    let f = Fixture::start().await;
    let data = compressible(1, 5 << 20);
    let digest = Digest::of(&data);
    let compressed = zstd(&data);
    assert!(compressed.len() > 2 << 20, "several chunks each way");

    let name = zstd_write_name("main", "zz-1", &digest);
    let committed = write(
        &f,
        compressed_requests(&name, 0, &compressed, 64 << 10, true),
    )
    .await
    .unwrap();
    // The first offset plus the compressed bytes: what Bazel checks for a compressed upload.
    assert_eq!(committed, compressed.len() as i64);
    assert!(f.engine.contains(&digest));

    let (got, sizes) = read_compressed(&f, &zstd_read_name("main", &digest), 0, 0)
        .await
        .unwrap();
    assert!(sizes.len() >= 3, "streamed in pieces: {sizes:?}");
    assert!(sizes.iter().all(|&s| s <= 1 << 20), "{sizes:?}");
    assert!(got.len() < data.len(), "the reply is compressed");
    assert_eq!(unzstd(&got), data);

    // read_offset counts uncompressed bytes: the frame holds the blob from there.
    let offset = 3_000_001;
    let (tail, _) = read_compressed(&f, &zstd_read_name("", &digest), offset, 0)
        .await
        .unwrap();
    assert_eq!(unzstd(&tail), &data[offset as usize..]);
    // At the end: a valid frame of nothing.
    let (nothing, _) = read_compressed(&f, &zstd_read_name("", &digest), data.len() as i64, 0)
        .await
        .unwrap();
    assert!(unzstd(&nothing).is_empty());
}

#[tokio::test]
async fn compressed_and_plain_forms_are_interchangeable() {
    let f = Fixture::start().await;
    // Compressed in, plain out.
    let data = compressible(2, 1_500_000);
    let digest = Digest::of(&data);
    let compressed = zstd(&data);
    let name = zstd_write_name("", "zz-2", &digest);
    write(
        &f,
        compressed_requests(&name, 0, &compressed, 100_000, true),
    )
    .await
    .unwrap();
    assert_eq!(f.download(&digest).await.unwrap(), data);

    // Plain in, compressed out (one frame even when the blob is incompressible).
    let random = pseudo_random(3, 2_500_000);
    let plain = f.upload(&random).await;
    let (got, _) = read_compressed(&f, &zstd_read_name("", &plain), 0, 0)
        .await
        .unwrap();
    assert_eq!(unzstd(&got), random);

    // The empty blob always exists, compressed too.
    let (empty, _) = read_compressed(&f, &zstd_read_name("", &Digest::EMPTY), 0, 0)
        .await
        .unwrap();
    assert!(unzstd(&empty).is_empty());
}

/// Several frames back to back are one valid zstd stream.
#[tokio::test]
async fn concatenated_frames_are_accepted() {
    let f = Fixture::start().await;
    let data = compressible(4, 700_000);
    let digest = Digest::of(&data);
    let mut compressed = zstd(&data[..300_000]);
    compressed.extend(zstd(&data[300_000..]));
    let name = zstd_write_name("", "zz-frames", &digest);
    let committed = write(&f, compressed_requests(&name, 0, &compressed, 50_000, true))
        .await
        .unwrap();
    assert_eq!(committed, compressed.len() as i64);
    assert_eq!(f.download(&digest).await.unwrap(), data);
}

#[tokio::test]
async fn existing_blob_completes_a_compressed_write_at_once_with_minus_one() {
    let f = Fixture::start().await;
    let data = compressible(5, 300_000);
    let digest = f.upload(&data).await;
    let name = zstd_write_name("", "zz-dup", &digest);
    let compressed = zstd(&data);
    let committed = write(&f, compressed_requests(&name, 0, &compressed, 10_000, true))
        .await
        .unwrap();
    assert_eq!(
        committed, -1,
        "REAPI: -1 for a compressed upload completed early"
    );
    // Plain uploads still get the full size.
    assert_eq!(
        write(
            &f,
            write_requests(&write_name("", "p", &digest), &data, 50_000)
        )
        .await
        .unwrap(),
        data.len() as i64
    );
    assert_eq!(write_status(&f, &name).await, (data.len() as i64, true));
}

#[tokio::test]
async fn wrong_hash_in_a_compressed_write_stores_nothing() {
    let f = Fixture::start().await;
    let data = compressible(6, 400_000);
    let wrong = Digest::sha256(Digest::of(b"something else").hash, data.len() as u64);
    let name = zstd_write_name("", "zz-wrong", &wrong);
    let status = write(
        &f,
        compressed_requests(&name, 0, &zstd(&data), 30_000, true),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!f.engine.contains(&wrong));
    assert!(!f.engine.contains(&Digest::of(&data)));
    assert_eq!(f.engine.stats().blobs, 0);

    // A right hash with a declared size larger than the stream decodes to: too short.
    let short = Digest {
        size: data.len() as u64 + 1,
        ..Digest::of(&data)
    };
    let name = zstd_write_name("", "zz-short", &short);
    let status = write(
        &f,
        compressed_requests(&name, 0, &zstd(&data), 30_000, true),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(f.engine.stats().blobs, 0);
}

/// A tiny input that expands far past the declared size is refused long before it is inflated.
#[tokio::test]
async fn zstd_bomb_is_refused() {
    let f = Fixture::start().await;
    let bomb = zstd(&vec![0u8; 256 << 20]);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    for (uuid, declared) in [("bomb-small", 1_000u64), ("bomb-big", 4 << 20)] {
        // The hash of what the client claims: the first `declared` bytes (all zeros).
        let claimed = Digest::of(&vec![0u8; declared as usize]);
        let name = zstd_write_name("", uuid, &claimed);
        let status = write(&f, compressed_requests(&name, 0, &bomb, 16 << 10, true))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("declared"), "{status:?}");
        assert!(!f.engine.contains(&claimed));
    }
    assert_eq!(f.engine.stats().blobs, 0);
}

/// A zstd stream whose frame declares a `1 << window_log` byte window: compressed in pieces, so
/// zstd cannot shrink the window to the content size.
fn zstd_with_window(data: &[u8], window_log: u32) -> Vec<u8> {
    use std::io::Write as _;
    use zstd::stream::raw::CParameter;
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder
        .set_parameter(CParameter::WindowLog(window_log))
        .unwrap();
    encoder
        .set_parameter(CParameter::EnableLongDistanceMatching(window_log > 23))
        .unwrap();
    for piece in data.chunks(64 << 10) {
        encoder.write_all(piece).unwrap();
    }
    encoder.finish().unwrap()
}

/// One stream cannot make the server allocate a large decoder window: a frame asking for more
/// than 8 MiB is refused with a message naming the limit, over ByteStream and in a batch; 8 MiB
/// itself (what zstd level 19 uses) is accepted.
#[tokio::test]
async fn zstd_windows_over_the_limit_are_refused() {
    let f = Fixture::start().await;
    let data = compressible(11, 300_000);
    let digest = Digest::of(&data);
    for window_log in [24, 27] {
        let stream = zstd_with_window(&data, window_log);
        assert_eq!(unzstd(&stream), data);
        let name = zstd_write_name("", &format!("wide-{window_log}"), &digest);
        let status = write(&f, compressed_requests(&name, 0, &stream, 40_000, true))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("window"), "{status:?}");
        assert!(status.message().contains("8 MiB"), "{status:?}");
        let batch = f
            .cas()
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![item(&digest, stream, ZSTD)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let item_status = batch.responses[0].status.clone().unwrap();
        assert_eq!(
            item_status.code,
            Code::InvalidArgument as i32,
            "{item_status:?}"
        );
        assert!(item_status.message.contains("window"), "{item_status:?}");
    }
    assert_eq!(f.engine.stats().blobs, 0);
    let within = zstd_with_window(&data, 23);
    let name = zstd_write_name("", "window-23", &digest);
    assert_eq!(
        write(&f, compressed_requests(&name, 0, &within, 40_000, true))
            .await
            .unwrap(),
        within.len() as i64
    );
    assert!(f.engine.contains(&digest));
}

#[tokio::test]
async fn corrupt_zstd_streams_are_invalid_argument() {
    let f = Fixture::start().await;
    let data = compressible(7, 600_000);
    let digest = Digest::of(&data);
    let good = zstd(&data);

    let mut flipped = good.clone();
    for i in (good.len() / 3..good.len() / 2).step_by(97) {
        flipped[i] ^= 0x5a;
    }
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    let truncated = good[..good.len() - 7].to_vec();
    // Every byte of the blob is there, but the frame's checksum is cut off: still truncated.
    let mut checked = zstd::bulk::Compressor::new(3).unwrap();
    checked
        .set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))
        .unwrap();
    let with_checksum = checked.compress(&data).unwrap();
    let no_checksum = with_checksum[..with_checksum.len() - 4].to_vec();
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage after the frame");
    let plain = data.clone();

    for (what, stream) in [
        ("flipped bytes", flipped),
        ("bad magic", bad_magic),
        ("truncated", truncated),
        ("checksum cut off", no_checksum),
        ("trailing garbage", trailing),
        ("not zstd at all", plain),
    ] {
        let name = zstd_write_name("", &format!("corrupt-{}", what.len()), &digest);
        let status = write(&f, compressed_requests(&name, 0, &stream, 40_000, true))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains("zstd"), "{what}: {status:?}");
    }
    assert_eq!(f.engine.stats().blobs, 0);
}

#[tokio::test]
async fn compressed_write_offsets_count_compressed_bytes() {
    let f = Fixture::start().await;
    let data = compressible(8, 500_000);
    let digest = Digest::of(&data);
    let compressed = zstd(&data);
    let name = zstd_write_name("", "zz-offsets", &digest);
    // A client that counts uncompressed bytes in later offsets is refused.
    let mut requests = compressed_requests(&name, 0, &compressed, 20_000, true);
    requests[1].write_offset = 30_000;
    let status = write(&f, requests).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A first offset that is not where the upload ends is refused too.
    let requests = compressed_requests(&name, 5, &compressed, 20_000, true);
    let status = write(&f, requests).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(f.engine.stats().blobs, 0);
}

/// A compressed upload closed early keeps its decoded bytes; the client resumes with a fresh
/// zstd stream from that uncompressed offset.
#[tokio::test]
async fn compressed_write_resumes_at_the_uncompressed_offset() {
    let f = Fixture::start().await;
    let data = compressible(9, 3 << 20);
    let digest = Digest::of(&data);
    let name = zstd_write_name("", "zz-resume", &digest);
    let compressed = zstd(&data);
    let half = compressed.len() / 2;
    let kept = write(
        &f,
        compressed_requests(&name, 0, &compressed[..half], 64 << 10, false),
    )
    .await
    .unwrap();
    assert!(kept > 0 && kept < data.len() as i64, "{kept}");
    assert_eq!(write_status(&f, &name).await, (kept, false));

    let rest = zstd(&data[kept as usize..]);
    let committed = write(
        &f,
        compressed_requests(&name, kept as u64, &rest, 64 << 10, true),
    )
    .await
    .unwrap();
    assert_eq!(committed, kept + rest.len() as i64);
    assert_eq!(f.download(&digest).await.unwrap(), data);
    assert_eq!(write_status(&f, &name).await, (data.len() as i64, true));
}

#[tokio::test]
async fn bad_compressed_reads_get_exact_codes() {
    let f = Fixture::start().await;
    let digest = f.upload(b"twelve bytes").await;
    let h = digest.hex();
    let name = zstd_read_name("", &digest);
    let absent = Digest::of(b"absent");
    let cases = [
        // REAPI: "Servers MUST return INVALID_ARGUMENT if ReadRequest.read_limit is non-zero."
        (name.clone(), 0, 5, Code::InvalidArgument),
        (name.clone(), 13, 0, Code::OutOfRange),
        (name.clone(), -1, 0, Code::InvalidArgument),
        (zstd_read_name("", &absent), 0, 0, Code::NotFound),
        (
            format!("compressed-blobs/deflate/{h}/12"),
            0,
            0,
            Code::InvalidArgument,
        ),
        (
            format!("compressed-blobs/brotli/{h}/12"),
            0,
            0,
            Code::InvalidArgument,
        ),
        (
            format!("compressed-blobs/lz4/{h}/12"),
            0,
            0,
            Code::InvalidArgument,
        ),
        (
            format!("compressed-blobs/{h}/12"),
            0,
            0,
            Code::InvalidArgument,
        ),
    ];
    for (name, offset, limit, expected) in cases {
        let status = read_compressed(&f, &name, offset, limit).await.unwrap_err();
        assert_eq!(
            status.code(),
            expected,
            "{name} @{offset}+{limit}: {status:?}"
        );
        assert!(!status.message().is_empty());
    }
    // Unsupported compressors on writes are refused before any byte is read.
    let data = b"some bytes".to_vec();
    let d = Digest::of(&data);
    for compressor in ["deflate", "brotli", "gzip"] {
        let name = format!(
            "uploads/u/compressed-blobs/{compressor}/{}/{}",
            d.hex(),
            d.size
        );
        let status = write(&f, write_requests(&name, &data, 4))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{compressor}: {status:?}"
        );
        assert!(status.message().contains(compressor), "{status:?}");
    }
}

fn item(digest: &Digest, data: Vec<u8>, compressor: i32) -> batch_update_blobs_request::Request {
    batch_update_blobs_request::Request {
        digest: Some(proto(digest)),
        data: data.into(),
        compressor,
    }
}

#[tokio::test]
async fn batch_update_with_zstd_items() {
    let f = Fixture::start().await;
    let good = compressible(10, 200_000);
    let plain = compressible(11, 1_000);
    let wrong_hash = compressible(12, 5_000);
    let corrupt = compressible(13, 5_000);
    let mut corrupt_frame = zstd(&corrupt);
    let middle = corrupt_frame.len() / 2;
    corrupt_frame[middle] ^= 0xff;
    let bomb_claim = Digest::of(&[0u8; 100]);
    let other = Digest::sha256(Digest::of(b"not it").hash, wrong_hash.len() as u64);
    let unsupported = Digest::of(b"deflated?");
    let requests = vec![
        item(&Digest::of(&good), zstd(&good), ZSTD),
        item(&Digest::of(&plain), plain.clone(), IDENTITY),
        item(&other, zstd(&wrong_hash), ZSTD),
        item(&Digest::of(&corrupt), corrupt_frame, ZSTD),
        item(&bomb_claim, zstd(&vec![0u8; 8 << 20]), ZSTD),
        item(&unsupported, b"deflated?".to_vec(), DEFLATE),
        item(&unsupported, b"deflated?".to_vec(), BROTLI),
        item(&unsupported, b"deflated?".to_vec(), 77),
        item(&Digest::EMPTY, zstd(b""), ZSTD),
    ];
    let expected = [
        Code::Ok,
        Code::Ok,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::InvalidArgument,
        Code::Ok,
    ];
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
    assert_eq!(responses.len(), expected.len());
    for (i, (response, code)) in responses.iter().zip(expected).enumerate() {
        let status = response.status.as_ref().unwrap();
        assert_eq!(status.code, code as i32, "item {i}: {status:?}");
        if code != Code::Ok {
            assert!(!status.message.is_empty(), "item {i}");
        }
    }
    assert!(f.engine.contains(&Digest::of(&good)));
    assert!(f.engine.contains(&Digest::of(&plain)));
    assert_eq!(f.engine.stats().blobs, 2, "no refused item stored anything");
    assert_eq!(f.download(&Digest::of(&good)).await.unwrap(), good);
}

/// The batch limit counts what compressed items expand to.
#[tokio::test]
async fn batch_update_limit_counts_declared_sizes_of_compressed_items() {
    let f = Fixture::start().await;
    let big = vec![7u8; 8 << 20];
    let status = f
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![item(&Digest::of(&big), zstd(&big), ZSTD)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(f.engine.stats().blobs, 0);
}

#[tokio::test]
async fn batch_read_compresses_only_when_accepted_and_smaller() {
    let f = Fixture::start().await;
    let text = compressible(14, 300_000);
    let random = pseudo_random(15, 3_000);
    let tiny = b"x".to_vec();
    let digests: Vec<Digest> = [&text, &random, &tiny]
        .into_iter()
        .map(|d| Digest::of(d))
        .collect();
    for data in [&text, &random, &tiny] {
        f.upload(data).await;
    }
    for (acceptable, want) in [
        (vec![ZSTD], [ZSTD, IDENTITY, IDENTITY]),
        (vec![DEFLATE, ZSTD, 42], [ZSTD, IDENTITY, IDENTITY]),
        (vec![], [IDENTITY; 3]),
        (vec![BROTLI], [IDENTITY; 3]),
    ] {
        let responses = f
            .cas()
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: digests.iter().map(proto).collect(),
                acceptable_compressors: acceptable.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .responses;
        for (response, data) in responses.iter().zip([&text, &random, &tiny]) {
            let digest = Digest::of(data);
            assert_eq!(response.digest, Some(proto(&digest)));
            assert_eq!(response.status.as_ref().unwrap().code, 0);
            let i = digests.iter().position(|d| *d == digest).unwrap();
            assert_eq!(response.compressor, want[i], "{acceptable:?} item {i}");
            let got = if response.compressor == ZSTD {
                assert!(response.data.len() < data.len());
                unzstd(&response.data)
            } else {
                response.data.to_vec()
            };
            assert_eq!(&got, data, "{acceptable:?} item {i}");
        }
    }
}
