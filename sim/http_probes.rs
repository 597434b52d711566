//! Probes of the HTTP front end's edges, run by the Bazel-shaped HTTP clients between builds:
//! `HEAD` of present and missing keys, a `PUT /cas/` whose bytes hash elsewhere, a body shorter
//! than its `Content-Length` whose client then goes away, an absurd `Content-Length`, malformed
//! paths and action results, requests without (or with wrong) credentials, and an action result
//! looked up under instances other than its own (`instance-leak`). Each answer is
//! checked for its status, and that nothing was stored (`wrong-refusal-code`,
//! `bad-input-accepted`, `half-written-visible`, `auth-gate-broken`); the vanished uploads' temp
//! files are held to `temp-file-leak` by the final audit.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use madsim::rand::{thread_rng, Rng};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bazel_http::{Sender, INSTANCE};
use crate::ccache::{connect, credentials, send_as, SERVER_HTTP};
use crate::oracle::{Invariant, Oracle};
use hoard::engine::{Digest, DigestFunction};
use hoard::proto::reapi;

/// Statuses of a server in trouble (busy, full disk): they prove nothing about the input.
const TROUBLE: [StatusCode; 2] = [
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::INSUFFICIENT_STORAGE,
];

/// How long a raw connection waits for the server's answer.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes no client uploads, derived from `tag` and `what`.
fn probe_blob(tag: &str, what: &str, len: usize) -> (Digest, Bytes) {
    let seed = Digest::of(format!("http probe {tag} {what}").as_bytes()).hash;
    let bytes: Bytes = seed.iter().copied().cycle().take(len).collect();
    (Digest::of(&bytes), bytes)
}

/// [`send_as`] on `sender`, reconnecting once if the connection is gone (the server closes it
/// after some refusals, and a crash cuts it): a probe's follow-up must not go unasked.
async fn ask(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Bytes,
    authorization: Option<&str>,
) -> Option<(StatusCode, Bytes)> {
    let answer = send_as(sender, method.clone(), path, body.clone(), authorization).await;
    if answer.is_some() {
        return answer;
    }
    *sender = connect().await?;
    send_as(sender, method, path, body, authorization).await
}

/// [`ask`] with the seed's credentials.
async fn ask_authorized(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Bytes,
) -> Option<(StatusCode, Bytes)> {
    ask(sender, method, path, body, Some(&credentials())).await
}

/// Checks that `status` is one of `expected` (or trouble); `None` (the connection gone) proves
/// nothing either.
fn expect(oracle: &Oracle, what: &str, status: Option<StatusCode>, expected: &[StatusCode]) {
    oracle.event(format!(
        "http probe {what}: {:?}",
        status.map(|s| s.as_u16())
    ));
    let Some(status) = status else { return };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        oracle.fail(Invariant::InternalOnRequest, format!("{what}: {status}"));
    } else if !expected.contains(&status) && !TROUBLE.contains(&status) {
        oracle.fail(
            Invariant::WrongRefusalCode,
            format!("{what} got {status}, expected one of {expected:?}"),
        );
    }
}

/// Fails `invariant` if `HEAD /cas/` finds `digest`, which nothing stored.
async fn absent(sender: &mut Sender, oracle: &Oracle, digest: &Digest, invariant: Invariant) {
    let path = format!("/cas/{}", digest.hex());
    if let Some((StatusCode::OK, _)) =
        ask_authorized(sender, Method::HEAD, &path, Bytes::new()).await
    {
        oracle.fail(
            invariant,
            format!("{digest} is present after a refused PUT"),
        );
    }
}

/// Sends `head` and then `body` on a fresh connection, then reads the answer's status unless
/// `hang_up`, in which case the connection is closed at once (a client going away).
async fn raw(head: String, body: &[u8], hang_up: bool) -> Option<StatusCode> {
    let mut stream = tokio::time::timeout(RAW_TIMEOUT, TcpStream::connect(SERVER_HTTP))
        .await
        .ok()?
        .ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    // madsim's socket sends nothing before a flush.
    stream.flush().await.ok()?;
    if hang_up {
        return None;
    }
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(RAW_TIMEOUT, stream.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    let line = String::from_utf8_lossy(&answer[..read]);
    let code = line.split(' ').nth(1)?.parse::<u16>().ok()?;
    StatusCode::from_u16(code).ok()
}

/// A raw `PUT /cas/{digest}` head declaring `length` bytes.
fn put_head(digest: &Digest, length: u64) -> String {
    format!(
        "PUT /cas/{} HTTP/1.1\r\nhost: hoard\r\nauthorization: {}\r\ncontent-length: {length}\r\n\r\n",
        digest.hex(),
        credentials()
    )
}

/// One probe, its kind drawn from the seed. `auth`: the server requires credentials.
pub async fn probe(tag: &str, oracle: &Oracle, sender: &mut Sender, auth: bool) {
    let kind = thread_rng().gen_range(0..7);
    let (digest, content) = probe_blob(tag, "blob", thread_rng().gen_range(16..4096));
    let cas = format!("/cas/{}", digest.hex());
    match kind {
        0 => {
            // HEAD of a present blob (200, unless evicted) and of missing keys (404).
            if let Some(present) = oracle.acked_blobs(DigestFunction::Sha256).first().copied() {
                let promise = oracle.promise(&present);
                let path = format!("/cas/{}", present.hex());
                let status = ask_authorized(sender, Method::HEAD, &path, Bytes::new()).await;
                let status = status.map(|(s, _)| s);
                if status == Some(StatusCode::NOT_FOUND) {
                    if oracle.miss_breaks(&present.hash, promise) {
                        oracle.fail(
                            Invariant::AcknowledgedBlobLost,
                            format!("HEAD of acknowledged {present}: 404"),
                        );
                    }
                } else {
                    expect(oracle, "HEAD of a present blob", status, &[StatusCode::OK]);
                }
            }
            let status = ask_authorized(sender, Method::HEAD, &cas, Bytes::new()).await;
            expect(
                oracle,
                "HEAD of a missing blob",
                status.map(|(s, _)| s),
                &[StatusCode::NOT_FOUND],
            );
            let path = format!("/{INSTANCE}/ac/{}", digest.hex());
            let status = ask_authorized(sender, Method::HEAD, &path, Bytes::new()).await;
            expect(
                oracle,
                "HEAD of a missing action",
                status.map(|(s, _)| s),
                &[StatusCode::NOT_FOUND],
            );
        }
        1 => {
            // Bytes that hash elsewhere, of the right length.
            let mut wrong = content.to_vec();
            wrong[0] ^= 1;
            let status = ask_authorized(sender, Method::PUT, &cas, Bytes::from(wrong)).await;
            let status = status.map(|(s, _)| s);
            expect(
                oracle,
                "PUT /cas/ of bytes hashing elsewhere",
                status,
                &[StatusCode::BAD_REQUEST],
            );
            absent(sender, oracle, &digest, Invariant::BadInputAccepted).await;
        }
        2 => {
            // Half the declared body, then the client goes away.
            let half = content.len() / 2;
            raw(put_head(&digest, digest.size), &content[..half], true).await;
            oracle.event(format!(
                "{tag} http PUT of {digest} hung up after {half} bytes"
            ));
            absent(sender, oracle, &digest, Invariant::HalfWrittenVisible).await;
        }
        3 => {
            // A Content-Length no disk holds: refused before any of the body is read.
            let status = raw(put_head(&digest, 1 << 50), b"", false).await;
            expect(
                oracle,
                "PUT /cas/ declaring 2^50 bytes",
                status,
                &[StatusCode::PAYLOAD_TOO_LARGE],
            );
        }
        4 => malformed(tag, oracle, sender, &digest).await,
        5 => without_credentials(oracle, sender, auth, &digest, content).await,
        _ => other_instances(tag, oracle, sender, &digest, content).await,
    }
}

/// An action result stored under a probe's own instance over HTTP is served there, and under no
/// other instance name, the default (none) and the Bazel clients' one included.
async fn other_instances(
    tag: &str,
    oracle: &Oracle,
    sender: &mut Sender,
    digest: &Digest,
    content: Bytes,
) {
    let cas = format!("/cas/{}", digest.hex());
    let stored = ask_authorized(sender, Method::PUT, &cas, content).await;
    if !matches!(stored, Some((StatusCode::OK, _))) {
        return;
    }
    let action = Digest::of(format!("http instance probe {tag}").as_bytes());
    let result = crate::workload::result_with_outputs("out/", &[*digest]);
    let own = format!(
        "/http-probe-{}/ac/{}",
        thread_rng().gen_range(0..4),
        action.hex()
    );
    let put = ask_authorized(sender, Method::PUT, &own, result.encode_to_vec().into()).await;
    let put = put.map(|(s, _)| s);
    expect(
        oracle,
        "PUT /ac/ under a probe's instance",
        put,
        &[StatusCode::OK],
    );
    if put != Some(StatusCode::OK) {
        return;
    }
    for other in ["", "http-probe-x", INSTANCE, "http-probe-0/sub"] {
        let path = match other {
            "" => format!("/ac/{}", action.hex()),
            name => format!("/{name}/ac/{}", action.hex()),
        };
        if let Some((StatusCode::OK, _)) =
            ask_authorized(sender, Method::GET, &path, Bytes::new()).await
        {
            oracle.fail(
                Invariant::InstanceLeak,
                format!("GET {path} serves the result stored at {own}"),
            );
        }
    }
}

/// Malformed paths (400) and an action result whose output path leaves the output tree (400,
/// then a miss).
async fn malformed(tag: &str, oracle: &Oracle, sender: &mut Sender, digest: &Digest) {
    let hex = digest.hex();
    let paths = [
        format!("/cas/{}", &hex[..63]),
        format!("/cas/{}g", &hex[..63]),
        format!("/x/../cas/{hex}"),
        format!("/{INSTANCE}/./ac/{hex}"),
        format!("//ac/{hex}"),
        format!("/cas/%2e%2e{hex}"),
    ];
    let path = &paths[thread_rng().gen_range(0..paths.len())];
    let status = ask_authorized(sender, Method::GET, path, Bytes::new()).await;
    expect(
        oracle,
        &format!("GET {path}"),
        status.map(|(s, _)| s),
        &[StatusCode::BAD_REQUEST],
    );
    let action = Digest::of(format!("http bad action {tag}").as_bytes());
    let result = crate::workload::result_with_outputs("../../escape/", &[*digest]);
    let path = format!("/{INSTANCE}/ac/{}", action.hex());
    let status = ask_authorized(sender, Method::PUT, &path, result.encode_to_vec().into()).await;
    let status = status.map(|(s, _)| s);
    expect(
        oracle,
        "PUT /ac/ of a result escaping the output tree",
        status,
        &[StatusCode::BAD_REQUEST],
    );
    if let Some((StatusCode::OK, _)) =
        ask_authorized(sender, Method::GET, &path, Bytes::new()).await
    {
        oracle.fail(
            Invariant::BadInputAccepted,
            "a refused PUT /ac/ of a result escaping the output tree is served",
        );
    }
}

/// Requests without credentials, or with a wrong token: 401 with auth on, and nothing stored;
/// never 401 with it off.
async fn without_credentials(
    oracle: &Oracle,
    sender: &mut Sender,
    auth: bool,
    digest: &Digest,
    content: Bytes,
) {
    let authorization = thread_rng().gen_bool(0.5).then_some("Bearer wrong");
    let cas = format!("/cas/{}", digest.hex());
    let epoch = oracle.evictions(&digest.hash);
    let put = ask(sender, Method::PUT, &cas, content, authorization).await;
    let get = ask(sender, Method::GET, &cas, Bytes::new(), authorization).await;
    let action = reapi::ActionResult::default().encode_to_vec();
    let path = format!("/{INSTANCE}/ac/{}", digest.hex());
    let put_action = ask(sender, Method::PUT, &path, action.into(), authorization).await;
    let answers = [
        ("PUT /cas/", &put),
        ("GET /cas/", &get),
        ("PUT /ac/", &put_action),
    ];
    for (what, answer) in answers {
        let Some((status, _)) = answer else { continue };
        oracle.event(format!(
            "http auth {what} with {authorization:?}: {}",
            status.as_u16()
        ));
        let refused = *status == StatusCode::UNAUTHORIZED;
        if auth != refused && !TROUBLE.contains(status) {
            oracle.fail(
                Invariant::AuthGateBroken,
                format!("{what} with {authorization:?} got {status} (auth on: {auth})"),
            );
        }
    }
    if !auth {
        if let Some((StatusCode::OK, _)) = put {
            oracle.blob_acked(*digest, epoch);
        }
        return;
    }
    absent(sender, oracle, digest, Invariant::AuthGateBroken).await;
    if let Some((StatusCode::OK, _)) =
        ask_authorized(sender, Method::GET, &path, Bytes::new()).await
    {
        oracle.fail(
            Invariant::AuthGateBroken,
            "a PUT /ac/ refused for its credentials is served",
        );
    }
}
