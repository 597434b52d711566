//! `hoard verify` and the background scrub on the real filesystem: a byte flipped in a segment
//! is found, `--repair` drops exactly that record, and a server started afterwards serves the
//! rest. (Real files and processes: not under madsim.)
#![cfg(not(madsim))]

mod real_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hoard::engine::{AcKind, Digest, DigestFunction, Engine, EngineConfig, Error};
use hoard::seam::real_fs::RealFs;
use hoard::seam::TokioRuntime;
use hoard::verify::{self, Problem};
use real_server::{cas_path, RealServer, HOARD};

/// Held by every test here: a test that forks `hoard` lends the child a copy of each open
/// descriptor until its exec, so an engine another test drops would keep the data directory's
/// lock in that child for a moment, and the test's next open or verify would find it busy.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn verify_command(dir: &Path, repair: bool) -> Output {
    let mut command = Command::new(HOARD);
    command.arg("verify").arg("--dir").arg(dir);
    if repair {
        command.arg("--repair");
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

/// Flips one bit of the first occurrence of `needle` in the data directory's segments.
fn corrupt(dir: &Path, needle: &[u8]) {
    for path in segments(dir) {
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            return;
        }
    }
    panic!("no segment holds {:?}", String::from_utf8_lossy(needle));
}

fn blobs() -> Vec<Vec<u8>> {
    (0..5)
        .map(|i| {
            format!("blob {i} of the verify test ")
                .repeat(40 + i)
                .into_bytes()
        })
        .collect()
}

#[test]
fn a_flipped_byte_is_found_repaired_and_the_rest_is_served() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let server = RealServer::start(dir.path(), &[]);
    for blob in blobs() {
        assert_eq!(server.request("PUT", &cas_path(&blob), &blob).0, 200);
    }
    let action = format!("/ci/ac/{}", "cd".repeat(32));
    assert_eq!(server.request("PUT", &action, b"an action value").0, 200);

    // A running server holds the directory: verify refuses it and changes nothing.
    let refused = verify_command(dir.path(), true);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is in use by another hoard process"),
        "{refused:?}"
    );
    server.stop();

    let clean = verify_command(dir.path(), false);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    assert!(
        stdout(&clean).contains("6 intact records"),
        "{}",
        stdout(&clean)
    );

    let bad = blobs()[2].clone();
    corrupt(dir.path(), &bad);
    let found = verify_command(dir.path(), false);
    assert_eq!(found.status.code(), Some(1), "{}", stdout(&found));
    let digest = Digest::of(&bad);
    assert!(
        stdout(&found).contains("corrupt payload at")
            && stdout(&found).contains(&digest.to_string()),
        "{}",
        stdout(&found)
    );
    assert!(stdout(&found).contains("5 intact records"));

    let repaired = verify_command(dir.path(), true);
    assert_eq!(repaired.status.code(), Some(1), "damage was found");
    assert!(
        stdout(&repaired).contains("repaired"),
        "{}",
        stdout(&repaired)
    );
    let after = verify_command(dir.path(), false);
    assert_eq!(after.status.code(), Some(0), "{}", stdout(&after));
    assert!(
        stdout(&after).contains("5 intact records"),
        "{}",
        stdout(&after)
    );

    let server = RealServer::start(dir.path(), &[]);
    for (i, blob) in blobs().iter().enumerate() {
        let (status, body) = server.request("GET", &cas_path(blob), b"");
        if i == 2 {
            assert_eq!(status, 404, "the corrupt blob is gone");
        } else {
            assert_eq!((status, &body), (200, blob), "blob {i}");
        }
    }
    assert_eq!(server.request("GET", &action, b"").1, b"an action value");
    let status = server.get_text("/status");
    assert!(status.contains("\"blobs\":4,"), "{status}");
}

#[test]
fn a_directory_that_is_not_a_data_directory_is_refused() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let output = verify_command(&dir.path().join("nothing here"), false);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a hoard data directory"));
}

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.segment_size = 1 << 20;
    config
}

async fn open(config: EngineConfig) -> Arc<Engine> {
    Engine::open(config, Arc::new(RealFs), Arc::new(TokioRuntime))
        .await
        .expect("engine opens")
}

async fn report(dir: &Path, repair: bool) -> verify::Report {
    verify::verify(&RealFs, dir, repair, &mut |_, _| {})
        .await
        .unwrap()
}

/// An engine on `dir` holding [`blobs`].
async fn open_with_blobs(dir: &Path) -> Arc<Engine> {
    let engine = open(config(dir)).await;
    for blob in blobs() {
        engine
            .put_blob(Digest::of(&blob), Bytes::from(blob))
            .await
            .unwrap();
    }
    engine
}

#[tokio::test]
async fn a_torn_tail_is_left_to_recovery_and_a_bad_footer_is_damage() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_blobs(dir.path()).await;
    // Busy: the engine holds the lock.
    let busy = verify::verify(&RealFs, dir.path(), false, &mut |_, _| {}).await;
    assert!(matches!(busy, Err(Error::Busy(_))), "{busy:?}");
    // No clean shutdown: the segment stays unsealed; half a record follows, as after a crash.
    drop(engine);
    let segment = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let sealed_len = bytes.len();
    bytes.extend_from_slice(b"HRD2\x01");
    std::fs::write(&segment, &bytes).unwrap();
    let torn = report(dir.path(), false).await;
    assert!(!torn.is_damaged(), "{torn}");
    assert_eq!(torn.intact(), 5);
    assert!(matches!(
        torn.segments[0].problems[..],
        [Problem::TornTail { offset, len: 5, .. }] if offset == sealed_len as u64
    ));

    // Recovery cuts the tail and seals the segment; then a flipped footer byte is damage.
    let engine = open(config(dir.path())).await;
    engine.shutdown().await;
    drop(engine);
    let sealed = report(dir.path(), false).await;
    assert!(
        sealed.segments[0].sealed && sealed.segments[0].problems.is_empty(),
        "{sealed}"
    );
    let mut bytes = std::fs::read(&segment).unwrap();
    let footer_byte = bytes.len() - 30;
    bytes[footer_byte] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let bad_footer = report(dir.path(), false).await;
    assert!(bad_footer.is_damaged(), "{bad_footer}");
    assert!(matches!(
        bad_footer.segments[0].problems[0],
        Problem::BadFooter(_)
    ));
    assert_eq!(bad_footer.intact(), 5, "the records themselves are fine");
    let repaired = report(dir.path(), true).await;
    assert!(repaired.segments[0].repaired.is_some());
    let after = report(dir.path(), false).await;
    assert!(!after.is_damaged() && after.segments[0].sealed, "{after}");
    assert_eq!(after.intact(), 5);
}

#[tokio::test]
async fn a_damaged_header_inside_an_unsealed_segment_is_skipped_not_a_torn_tail() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    drop(open_with_blobs(dir.path()).await);
    // The second record's magic is damaged: nothing says where the third one starts.
    let segment = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let second = bytes[1..]
        .windows(4)
        .position(|w| w == b"HRD2")
        .map(|at| at + 1)
        .unwrap();
    bytes[second] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();

    let damaged = report(dir.path(), false).await;
    assert!(damaged.is_damaged(), "{damaged}");
    assert_eq!(damaged.intact(), 4, "{damaged}");
    let third = bytes[second..]
        .windows(4)
        .position(|w| w == b"HRD2")
        .map(|at| (second + at) as u64)
        .unwrap();
    assert!(
        matches!(
            damaged.segments[0].problems[..],
            [Problem::Unreadable { offset, len, .. }]
                if offset == second as u64 && offset + len == third
        ),
        "{damaged}"
    );
    // The repair keeps the four intact records, as the next start would.
    report(dir.path(), true).await;
    let engine = open(config(dir.path())).await;
    let blobs = blobs();
    for (i, blob) in blobs.iter().enumerate() {
        assert_eq!(engine.contains(&Digest::of(blob)), i != 1, "blob {i}");
    }
}

#[tokio::test]
async fn the_background_scrub_drops_a_cold_corrupt_record() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_blobs(dir.path()).await;
    engine
        .put_action(
            "ci",
            hoard::engine::DigestFunction::Sha256,
            [7; 32],
            AcKind::Opaque,
            Bytes::from_static(b"an action value"),
        )
        .await
        .unwrap();
    engine.shutdown().await;
    drop(engine);
    let bad = blobs()[1].clone();
    corrupt(dir.path(), &bad);

    let mut scrubbing = config(dir.path());
    scrubbing.scrub_rate = Some(1 << 30);
    let engine = open(scrubbing).await;
    assert_eq!(engine.stats().blobs, 5, "a start trusts the footer");
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.stats().blobs == 5 {
        assert!(
            Instant::now() < deadline,
            "the scrub never dropped the corrupt blob"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.stats().blobs, 4);
    assert!(!engine.contains(&Digest::of(&bad)));
    // Its work is counted: every record of the segment, the dropped one included, is re-hashed.
    while engine.stats().scrubbed_records < 6 {
        assert!(Instant::now() < deadline, "{:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let payloads: usize = blobs().iter().map(Vec::len).sum::<usize>() + b"an action value".len();
    assert!(
        engine.stats().scrubbed_bytes >= payloads as u64,
        "{:?}",
        engine.stats()
    );
    for (i, blob) in blobs().iter().enumerate().filter(|(i, _)| *i != 1) {
        let read = engine
            .read_blob(&Digest::of(blob), 0, u64::MAX)
            .await
            .unwrap();
        assert_eq!(&read[..], &blob[..], "blob {i}");
    }
    let value = engine
        .get_action("ci", hoard::engine::DigestFunction::Sha256, &[7; 32])
        .await
        .unwrap();
    assert_eq!(value.unwrap().1, Bytes::from_static(b"an action value"));
}

#[tokio::test]
async fn a_repair_keeps_the_records_that_removed_action_results() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_with_blobs(dir.path()).await;
    let action = Digest::of(b"an action whose result the cascade removed").hash;
    let value = Bytes::from_static(b"an action result naming a blob that is gone");
    engine
        .put_action(
            "",
            DigestFunction::Sha256,
            action,
            AcKind::ActionResult,
            value.clone(),
        )
        .await
        .unwrap();
    let sha = Digest::of(&value).hash;
    assert!(engine
        .remove_action_if_value("", DigestFunction::Sha256, action, sha)
        .await
        .unwrap());
    engine.shutdown().await;
    drop(engine);

    corrupt(dir.path(), &blobs()[1]);
    assert!(report(dir.path(), true).await.is_damaged());
    assert!(!report(dir.path(), false).await.is_damaged());
    // The removal record survived the rewrite of its segment: the entry stays removed.
    let engine = open(config(dir.path())).await;
    assert!(engine
        .peek_action("", DigestFunction::Sha256, &action)
        .await
        .unwrap()
        .is_none());
    assert!(engine.missing(&[Digest::of(&blobs()[0])]).is_empty());
}
