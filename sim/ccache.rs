//! A ccache-shaped client over HTTP: `GET` then `PUT` of opaque values under `/ac/`, with the
//! manifest keys rewritten as entries accumulate (the last writer must win), on one keep-alive
//! connection per round, as ccache does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use madsim::rand::{thread_rng, Rng};
use tokio::net::TcpStream;

use crate::oracle::{Invariant, Oracle};
use crate::plan::Plan;

/// The server's HTTP address inside the simulated network.
pub const SERVER_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 8080);

/// The URL path prefix ccache is configured with (`http://host:port/cache|layout=bazel`).
pub const INSTANCE: &str = "cache";

/// Distinct ccache keys in play (few, so writers overwrite each other).
const KEYS: u64 = 12;

/// ccache's key shape: a 20-byte hash as 40 hex chars, padded to 64 with its first 24 again.
pub fn key(n: u64) -> [u8; 32] {
    let short = &hoard::engine::Digest::of(format!("ccache {n}").as_bytes()).hex()[..40];
    let padded = format!("{short}{}", &short[..24]);
    hoard::engine::parse_hash(&padded).expect("64 hex chars")
}

fn path(key: &[u8; 32]) -> String {
    format!("/{INSTANCE}/ac/{}", hex::encode(key))
}

/// A ccache entry: its magic bytes, then a body no protobuf parser accepts.
fn entry(rng: &mut impl Rng) -> Bytes {
    let mut value = b"\xcc\xac\x00\x01".to_vec();
    let len = rng.gen_range(8..2048);
    value.extend((0..len).map(|_| rng.gen::<u8>()));
    value.into()
}

/// Opens a keep-alive HTTP/1.1 connection, or `None` while the server is down.
pub async fn connect() -> Option<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(SERVER_HTTP))
        .await
        .ok()?
        .ok()?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(sender)
}

/// How long a client waits for an answer (ccache gives up too; a killed server never answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `Authorization` value HTTP clients send: the seed's token as a basic-auth password, as
/// ccache and Bazel send `http://user:TOKEN@host` (an open server ignores it).
pub fn credentials() -> String {
    let pair = format!("ccache:{}", crate::workload::TOKEN);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Sends one request with the seed's credentials; `None` when the connection failed or timed
/// out (a crash, say).
pub async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Option<(StatusCode, Bytes)> {
    send_as(sender, method, path, body, Some(&credentials())).await
}

/// [`send`] with the given `Authorization` value, or none.
pub async fn send_as(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
    authorization: Option<&str>,
) -> Option<(StatusCode, Bytes)> {
    let exchange = exchange(sender, method, path, body, authorization);
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: Bytes,
    authorization: Option<&str>,
) -> Option<(StatusCode, Bytes)> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "hoard")
        .header(CONTENT_LENGTH, body.len());
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let request = request.body(Full::new(body)).expect("a valid request");
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// A full disk must answer 507 (the HTTP side of RESOURCE_EXHAUSTED), never 503 or 500.
pub fn check_full_disk(oracle: &Oracle, what: &str, status: StatusCode, body: &[u8]) {
    let message = String::from_utf8_lossy(body);
    if crate::workload::is_full_disk(&message) && status != StatusCode::INSUFFICIENT_STORAGE {
        oracle.fail(
            Invariant::FullDiskNotResourceExhausted,
            format!("{what}: {status} {message}"),
        );
    }
}

/// Checks a `GET /ac/` answer for a ccache key against what clients stored there. `promise`
/// is [`Oracle::opaque_promise`] taken before the request was sent.
pub fn check_get(
    oracle: &Oracle,
    key: &[u8; 32],
    status: StatusCode,
    body: &[u8],
    promise: Option<u64>,
) {
    let shown = hex::encode(&key[..8]);
    oracle.event(format!("ccache get {shown} {}", status.as_u16()));
    match status {
        StatusCode::OK if !oracle.opaque_value_known(key, body) => oracle.fail(
            Invariant::AcReturnsUnknownValue,
            format!(
                "GET /ac/ of ccache key {shown} returned {} bytes nobody stored",
                body.len()
            ),
        ),
        StatusCode::OK => {}
        StatusCode::NOT_FOUND if oracle.miss_breaks(key, promise) => oracle.fail(
            Invariant::AcknowledgedActionLost,
            format!("acknowledged ccache entry {shown} not found"),
        ),
        s if s.is_server_error()
            && s != StatusCode::SERVICE_UNAVAILABLE
            && s != StatusCode::INSUFFICIENT_STORAGE =>
        {
            oracle.fail(
                Invariant::InternalOnRequest,
                format!("GET of ccache key {shown}: {s}"),
            )
        }
        _ => {}
    }
}

/// A ccache process per round: for a few compilations, GET the manifest and the result, and on a
/// miss PUT the result, then the rewritten manifest.
pub async fn run(id: usize, oracle: Arc<Oracle>, plan: Plan) {
    for round in 0..plan.rounds {
        let Some(mut sender) = connect().await else {
            madsim::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        for _ in 0..thread_rng().gen_range(1..=6) {
            let (manifest, result) = {
                let mut rng = thread_rng();
                (
                    key(rng.gen_range(0..KEYS / 2)),
                    key(KEYS / 2 + rng.gen_range(0..KEYS / 2)),
                )
            };
            if !compile(id, round, &oracle, &mut sender, &manifest, &result).await {
                break;
            }
        }
    }
}

/// One compilation's requests; `false` once the connection is gone.
async fn compile(
    id: usize,
    round: usize,
    oracle: &Oracle,
    sender: &mut SendRequest<Full<Bytes>>,
    manifest: &[u8; 32],
    result: &[u8; 32],
) -> bool {
    for key in [manifest, result] {
        let promise = oracle.opaque_promise(key);
        let Some((status, body)) = send(sender, Method::GET, &path(key), Bytes::new()).await else {
            return false;
        };
        check_get(oracle, key, status, &body, promise);
    }
    for key in [result, manifest] {
        let value = entry(&mut thread_rng());
        oracle.opaque_attempted(key, value.clone());
        let epoch = oracle.evictions(key);
        let Some((status, body)) = send(sender, Method::PUT, &path(key), value).await else {
            return false;
        };
        oracle.event(format!(
            "c{id} r{round} ccache put {} {}",
            hex::encode(&key[..8]),
            status.as_u16()
        ));
        check_full_disk(oracle, "PUT of a ccache entry", status, &body);
        match status {
            StatusCode::OK => oracle.opaque_acked(key, epoch),
            s if s.is_server_error()
                && s != StatusCode::SERVICE_UNAVAILABLE
                && s != StatusCode::INSUFFICIENT_STORAGE =>
            {
                oracle.fail(
                    Invariant::InternalOnRequest,
                    format!(
                        "PUT of a ccache entry: {s} {}",
                        String::from_utf8_lossy(&body)
                    ),
                )
            }
            // A full disk (507) or an I/O error (503) leaves the entry unacknowledged.
            _ => {}
        }
    }
    true
}
