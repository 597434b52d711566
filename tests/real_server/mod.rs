//! A real `hoard serve` process on free ports of 127.0.0.1, and a small blocking HTTP/1.1 client
//! for it: for tests that look at the server from outside (the dashboard's metric names, the
//! status page in a browser, `hoard verify` against a data directory a server wrote).

// Each test file uses its own part of this.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `hoard` binary cargo built for these tests.
pub const HOARD: &str = env!("CARGO_BIN_EXE_hoard");

/// A running `hoard serve`; killed on drop.
pub struct RealServer {
    child: Child,
    /// Its HTTP listener.
    pub http: SocketAddr,
}

/// A free port on 127.0.0.1 (free when asked; the server binds it a moment later).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl RealServer {
    /// Starts `hoard serve --dir DIR` with `extra` flags and waits until HTTP answers.
    pub fn start(dir: &Path, extra: &[&str]) -> RealServer {
        let (http, grpc) = (free_port(), free_port());
        let child = Command::new(HOARD)
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--http-addr", &http.to_string()])
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--access-log=false", "--log", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting hoard serve");
        let mut server = RealServer { child, http };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(http).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("hoard serve exited early: {status}");
            }
            assert!(Instant::now() < deadline, "hoard serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The URL of `path` on the HTTP listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Sends one request (on its own connection) and returns the status and body.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.http,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response[split + 4..].to_vec();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        (status, if chunked { dechunk(&body) } else { body })
    }

    /// The body of a `GET` of `path` as text, which must succeed.
    pub fn get_text(&self, path: &str) -> String {
        let (status, body) = self.request("GET", path, b"");
        assert_eq!(status, 200, "GET {path}");
        String::from_utf8(body).unwrap()
    }

    /// Stops the server with SIGTERM (a clean shutdown that seals the active segment).
    pub fn stop(mut self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "hoard serve exited with {status}");
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

/// The CAS path of `data` (`/cas/{sha256}`).
pub fn cas_path(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("/cas/{}", hex::encode(sha2::Sha256::digest(data)))
}
