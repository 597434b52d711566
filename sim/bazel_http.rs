//! A Bazel-shaped client of the HTTP cache protocol (`--remote_cache=http://...`): each action
//! uploads its outputs with `PUT /cas/`, stores an `ActionResult` naming them with `PUT /ac/`,
//! and reads it back; a later build reads the action result and downloads every output.
//!
//! Some actions skip uploading one output (a client that died between its uploads), so their
//! action results are incomplete, and a few uploads send bytes that hash elsewhere. What it holds
//! the server to: an action-cache hit names only blobs that can then be downloaded
//! (`ac-hit-references-missing-blob`, unless an eviction excuses it), every downloaded byte is
//! the blob's (`read-hashes-to-digest`), a wrong-hash upload is refused (`bad-input-accepted`),
//! and nothing is a 500 (`internal-on-request`). Action results it completed and had
//! acknowledged join the oracle's promises, which the final audit checks over gRPC: the action
//! cache is one for both protocols.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use madsim::rand::{thread_rng, Rng};
use prost::Message;

use crate::ccache::{connect, send};
use crate::oracle::{Invariant, Oracle, Pool};
use crate::plan::Plan;
use hoard::engine::Digest;
use hoard::proto::reapi;

/// The instance these clients' action results live in (the path prefix before `/ac/`).
pub const INSTANCE: &str = "bazel-http";

/// Distinct actions in play (few, so clients overwrite each other's results).
const ACTIONS: u64 = 16;

/// Probability that an action leaves one of its outputs un-uploaded.
const SKIP_OUTPUT: f64 = 0.25;

/// Share of rounds that end with a probe of the protocol's edges (`sim/http_probes.rs`).
const PROBE_SHARE: f64 = 0.3;

/// Probability that an upload sends bytes that hash to something else than its key.
const WRONG_HASH: f64 = 0.05;

/// A keep-alive HTTP/1.1 connection to the server.
pub type Sender = SendRequest<Full<Bytes>>;

fn is_unexpected_server_error(status: StatusCode) -> bool {
    status.is_server_error()
        && status != StatusCode::SERVICE_UNAVAILABLE
        && status != StatusCode::INSUFFICIENT_STORAGE
}

/// One client: `plan.rounds` rounds of a few actions each, on a keep-alive connection a round.
pub async fn run(id: usize, oracle: Arc<Oracle>, pool: Arc<Pool>, plan: Plan) {
    for round in 0..plan.rounds {
        let Some(mut sender) = connect().await else {
            madsim::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let tag = format!("h{id} r{round}");
        for _ in 0..thread_rng().gen_range(1..=4) {
            let action = Digest::of(
                format!("http action {}", thread_rng().gen_range(0..ACTIONS)).as_bytes(),
            );
            if !build(&tag, &oracle, &pool, &mut sender, action).await {
                break;
            }
        }
        if thread_rng().gen_bool(PROBE_SHARE) {
            crate::http_probes::probe(&tag, &oracle, &mut sender, plan.auth).await;
        }
    }
}

/// One action: read its result; on a miss, upload outputs and store a result. `false` once the
/// connection is gone.
async fn build(
    tag: &str,
    oracle: &Oracle,
    pool: &Pool,
    sender: &mut Sender,
    action: Digest,
) -> bool {
    match read_action(tag, oracle, pool, sender, &action).await {
        None => return false,
        Some(true) => return true,
        Some(false) => {}
    }
    let outputs: Vec<Digest> = {
        let mut rng = thread_rng();
        (0..rng.gen_range(1..=3))
            .map(|_| pool.digests[rng.gen_range(0..pool.digests.len())])
            .collect()
    };
    let skipped = thread_rng()
        .gen_bool(SKIP_OUTPUT)
        .then(|| thread_rng().gen_range(0..outputs.len()));
    let mut complete = true;
    for (i, digest) in outputs.iter().enumerate() {
        if Some(i) == skipped {
            oracle.event(format!("{tag} skips uploading {digest}"));
            complete = false;
            continue;
        }
        match upload(tag, oracle, pool, sender, digest).await {
            None => return false,
            Some(stored) => complete &= stored,
        }
    }
    let result = crate::workload::result_with_outputs("bazel-out/bin/out_", &outputs);
    let value = Bytes::from(result.encode_to_vec());
    let number = oracle.action_attempted(INSTANCE, action, value.clone());
    if !complete {
        oracle.action_may_be_incomplete(INSTANCE, action);
    }
    let epoch = oracle.evictions(&action.hash);
    let path = format!("/{INSTANCE}/ac/{}", action.hex());
    let Some((status, body)) = send(sender, Method::PUT, &path, value).await else {
        return false;
    };
    oracle.action_answered(INSTANCE, action, number, status == StatusCode::OK);
    crate::ccache::check_full_disk(oracle, "PUT /ac/", status, &body);
    oracle.event(format!(
        "{tag} http put-action {action} {} complete={complete}",
        status.as_u16()
    ));
    match status {
        // Only a result whose outputs were all stored is a promise the audit may hold.
        StatusCode::OK if complete => oracle.action_acked(INSTANCE, action, epoch),
        s if is_unexpected_server_error(s) => oracle.fail(
            Invariant::InternalOnRequest,
            format!(
                "PUT /ac/ of {action}: {s} {}",
                String::from_utf8_lossy(&body)
            ),
        ),
        _ => {}
    }
    read_action(tag, oracle, pool, sender, &action)
        .await
        .is_some()
}

/// `PUT /cas/` of `digest` (sometimes with bytes that hash elsewhere, which must be refused).
/// Whether the blob is now stored; `None` once the connection is gone.
async fn upload(
    tag: &str,
    oracle: &Oracle,
    pool: &Pool,
    sender: &mut Sender,
    digest: &Digest,
) -> Option<bool> {
    let content = pool
        .content(digest)
        .expect("outputs come from the pool")
        .clone();
    let wrong = thread_rng().gen_bool(WRONG_HASH);
    let body = if wrong {
        let mut bytes = content.to_vec();
        bytes[0] ^= 0xff;
        Bytes::from(bytes)
    } else {
        content
    };
    let epoch = oracle.evictions(&digest.hash);
    let path = format!("/cas/{}", digest.hex());
    let (status, reply) = send(sender, Method::PUT, &path, body).await?;
    crate::ccache::check_full_disk(oracle, "PUT /cas/", status, &reply);
    oracle.event(format!(
        "{tag} http put-blob {digest} wrong={wrong} {}",
        status.as_u16()
    ));
    match status {
        StatusCode::OK if wrong => oracle.fail(
            Invariant::BadInputAccepted,
            format!("PUT /cas/ of {digest} with bytes hashing elsewhere was accepted"),
        ),
        StatusCode::OK => oracle.blob_acked(*digest, epoch),
        s if is_unexpected_server_error(s) => oracle.fail(
            Invariant::InternalOnRequest,
            format!(
                "PUT /cas/ of {digest}: {s} {}",
                String::from_utf8_lossy(&reply)
            ),
        ),
        _ => {}
    }
    Some(status == StatusCode::OK && !wrong)
}

/// `GET /ac/` of `action`; on a hit, downloads every output it names, each of which must be
/// there. Whether it hit; `None` once the connection is gone.
async fn read_action(
    tag: &str,
    oracle: &Oracle,
    pool: &Pool,
    sender: &mut Sender,
    action: &Digest,
) -> Option<bool> {
    let evictions_before = oracle.total_evictions();
    let path = format!("/{INSTANCE}/ac/{}", action.hex());
    let (status, body) = send(sender, Method::GET, &path, Bytes::new()).await?;
    oracle.event(format!(
        "{tag} http get-action {action} {}",
        status.as_u16()
    ));
    if is_unexpected_server_error(status) {
        oracle.fail(
            Invariant::InternalOnRequest,
            format!("GET /ac/ of {action}: {status}"),
        );
    }
    if status != StatusCode::OK {
        return Some(false);
    }
    if !oracle.action_value_known(INSTANCE, action, &body) {
        oracle.fail(
            Invariant::AcReturnsUnknownValue,
            format!(
                "GET /ac/ of {action} returned {} bytes nobody stored",
                body.len()
            ),
        );
        return Some(true);
    }
    let Ok(result) = reapi::ActionResult::decode(body) else {
        return Some(true);
    };
    for file in &result.output_files {
        let Some(digest) = file
            .digest
            .as_ref()
            .and_then(|d| Digest::parse(&d.hash, d.size_bytes).ok())
        else {
            continue;
        };
        let path = format!("/cas/{}", digest.hex());
        let (status, data) = send(sender, Method::GET, &path, Bytes::new()).await?;
        match status {
            StatusCode::OK => oracle.check_read(pool, &digest, 0, &data),
            StatusCode::NOT_FOUND
                if oracle.total_evictions() == evictions_before
                    && !oracle.damaged_ever(&digest.hash) =>
            {
                oracle.fail(
                    Invariant::AcHitReferencesMissingBlob,
                    format!("GET /ac/ of {action} hit, but its output {digest} is not in the CAS"),
                )
            }
            s if is_unexpected_server_error(s) => oracle.fail(
                Invariant::InternalOnRequest,
                format!("GET /cas/ of {digest}: {s}"),
            ),
            _ => {}
        }
    }
    Some(true)
}
