//! A fresh client's latency while thousands of stalled connections are open, and what the
//! server's timeouts do with them.
//!
//! Opens `STALLED` connections to each listener of an in-process server (default settings, which
//! are what `hoard serve` uses): HTTP ones that send half a request line, gRPC ones that send
//! half the HTTP/2 preface, then nothing. Then it times a fresh client (a new connection per
//! request: HTTP `GET /status`, gRPC `GetCapabilities`) before and while they are open, and
//! counts how many the server has closed after its timeouts (gRPC handshake 10 s; HTTP headers
//! 60 s).
//!
//! Run: `cargo run --release --example stalled_clients [STALLED]` (default 2500 per listener;
//! the example raises its file-descriptor limit to the hard limit).

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo::run())
}

#[cfg(not(madsim))]
mod demo {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hoard::engine::{Engine, EngineConfig};
    use hoard::proto::reapi::capabilities_client::CapabilitiesClient;
    use hoard::proto::reapi::GetCapabilitiesRequest;
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::TokioRuntime;
    use hoard::wire::grpc::{self, GrpcConfig};
    use hoard::wire::http::{self, HttpConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tonic::transport::Channel;

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    const SAMPLES: usize = 50;

    pub async fn run() -> Result<()> {
        let stalled: usize = std::env::args()
            .nth(1)
            .map(|n| n.parse())
            .transpose()?
            .unwrap_or(2500);
        raise_fd_limit();
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(
            EngineConfig::new(dir.path()),
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
        )
        .await?;
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let (grpc_addr, http_addr) = (grpc_listener.local_addr()?, http_listener.local_addr()?);
        let cache = hoard::store::stack::over_engine(engine, &Default::default());
        tokio::spawn(grpc::serve_listener(
            cache.clone(),
            GrpcConfig::default(),
            grpc_listener,
            std::future::pending(),
        ));
        tokio::spawn(http::serve_listener(
            cache,
            HttpConfig::default(),
            http_listener,
            std::future::pending(),
        ));

        report("no stalled connections", http_addr, grpc_addr).await?;
        let opened = Instant::now();
        let mut held = Vec::with_capacity(2 * stalled);
        for _ in 0..stalled {
            let mut http = TcpStream::connect(http_addr).await?;
            http.write_all(b"GET /cas/").await?;
            let mut grpc = TcpStream::connect(grpc_addr).await?;
            grpc.write_all(b"PRI * HTTP/2.0\r\n").await?;
            held.push(http);
            held.push(grpc);
        }
        println!(
            "opened {stalled} stalled HTTP and {stalled} stalled gRPC connections in {:.2} s",
            opened.elapsed().as_secs_f64()
        );
        report(
            &format!("{} stalled connections", 2 * stalled),
            http_addr,
            grpc_addr,
        )
        .await?;

        for wait in [12, 65] {
            let deadline = opened + Duration::from_secs(wait);
            tokio::time::sleep_until(deadline.into()).await;
            let (mut http_closed, mut grpc_closed) = (0, 0);
            for (i, stream) in held.iter_mut().enumerate() {
                if closed(stream).await {
                    if i % 2 == 0 {
                        http_closed += 1;
                    } else {
                        grpc_closed += 1;
                    }
                }
            }
            println!(
                "after {wait:>2} s: the server closed {grpc_closed}/{stalled} stalled gRPC and \
                 {http_closed}/{stalled} stalled HTTP connections"
            );
        }
        Ok(())
    }

    /// Whether the server has closed `stream`: whatever it sent (the gRPC server's SETTINGS) is
    /// followed by end of file or an error, right away.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    async fn report(situation: &str, http_addr: SocketAddr, grpc_addr: SocketAddr) -> Result<()> {
        let mut http = Vec::with_capacity(SAMPLES);
        let mut grpc = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let started = Instant::now();
            http_status(http_addr).await?;
            http.push(started.elapsed());
            let started = Instant::now();
            let channel = Channel::from_shared(format!("http://{grpc_addr}"))?
                .connect()
                .await?;
            CapabilitiesClient::new(channel)
                .get_capabilities(GetCapabilitiesRequest::default())
                .await?;
            grpc.push(started.elapsed());
        }
        println!("{situation}: fresh client, new connection per request ({SAMPLES} each)");
        for (what, samples) in [
            ("HTTP GET /status", &mut http),
            ("gRPC GetCapabilities", &mut grpc),
        ] {
            samples.sort();
            println!(
                "  {what:<22} median {:>7.3} ms   p90 {:>7.3} ms   max {:>7.3} ms",
                ms(samples[samples.len() / 2]),
                ms(samples[samples.len() * 9 / 10]),
                ms(samples[samples.len() - 1])
            );
        }
        Ok(())
    }

    async fn http_status(addr: SocketAddr) -> Result<()> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        if !reply.starts_with(b"HTTP/1.1 200") {
            return Err(format!("unexpected reply: {}", String::from_utf8_lossy(&reply)).into());
        }
        Ok(())
    }

    fn ms(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1e3
    }

    /// Raises the soft limit on open files to the hard limit: the demo holds two descriptors
    /// per stalled connection (client and server side).
    fn raise_fd_limit() {
        // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
        unsafe {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
