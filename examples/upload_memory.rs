//! The server's memory under concurrent uploads, and after: runs the real `hoard serve` as a
//! child process, sends `UPLOADS` concurrent ByteStream writes of `MIB` MiB each (`CHUNK_KIB` KiB
//! chunks, one channel, as Bazel does), and prints the server's resident memory (VmRSS from /proc)
//! before, at its peak (VmHWM), and 1 s and 15 s after the uploads finished.
//!
//! Run: `cargo build --release && cargo run --release --example upload_memory [UPLOADS] [MIB]`
//! (defaults 64 and 64; the server binary is `target/release/hoard`, or `$HOARD_BIN`). Extra
//! server flags go in `$HOARD_FLAGS`.

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
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use hoard::engine::Digest;
    use hoard::proto::bytestream::byte_stream_client::ByteStreamClient;
    use hoard::proto::bytestream::WriteRequest;
    use tonic::transport::Channel;

    type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

    pub async fn run() -> Result<()> {
        let mut args = std::env::args().skip(1);
        let uploads: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
        let mib: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
        let chunk_kib: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(64);
        let chunk = chunk_kib << 10;
        let binary = std::env::var("HOARD_BIN").unwrap_or_else(|_| "target/release/hoard".into());
        let dir = tempfile::tempdir()?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let mut command = std::process::Command::new(&binary);
        command
            .args(["serve", "--no-http", "--log", "warn", "--access-log=false"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{port}"));
        if let Ok(flags) = std::env::var("HOARD_FLAGS") {
            command.args(flags.split_whitespace());
        }
        let mut server = command.spawn()?;
        let pid = server.id();
        let channel = connect(port).await?;
        println!(
            "server {binary}, {uploads} concurrent uploads of {mib} MiB, {chunk_kib} KiB chunks"
        );
        println!("  before:            RSS {:>6.1} MiB", rss(pid, "VmRSS"));

        let blob_len = mib << 20;
        let base: Vec<u8> = (0..blob_len as u64)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let started = Instant::now();
        let results = futures::stream::iter(0..uploads)
            .map(|i| {
                let client = ByteStreamClient::new(channel.clone());
                let mut data = base.clone();
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                async move { upload(client, i, data, chunk).await }
            })
            .buffer_unordered(uploads)
            .collect::<Vec<_>>()
            .await;
        let elapsed = started.elapsed();
        for result in results {
            result?;
        }
        println!(
            "  uploads done in {:.1} s: peak RSS (VmHWM) {:>6.1} MiB ({:.2} MiB per upload)",
            elapsed.as_secs_f64(),
            rss(pid, "VmHWM"),
            rss(pid, "VmHWM") / uploads as f64
        );
        for after in [1, 15] {
            tokio::time::sleep_until((started + elapsed + Duration::from_secs(after)).into()).await;
            println!(
                "  {after:>2} s after:        RSS {:>6.1} MiB",
                rss(pid, "VmRSS")
            );
        }
        server.kill()?;
        server.wait()?;
        Ok(())
    }

    async fn connect(port: u16) -> Result<Channel> {
        for _ in 0..100 {
            let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect()
                .await;
            if let Ok(channel) = channel {
                return Ok(channel);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("the server did not start".into())
    }

    async fn upload(
        mut client: ByteStreamClient<Channel>,
        i: usize,
        data: Vec<u8>,
        chunk: usize,
    ) -> Result<()> {
        let digest = Digest::of(&data);
        let name = format!("uploads/u{i}/blobs/{}/{}", digest.hex(), digest.size);
        let total = data.len();
        let requests = futures::stream::iter((0..total).step_by(chunk).map(move |at| {
            let end = (at + chunk).min(total);
            WriteRequest {
                resource_name: if at == 0 { name.clone() } else { String::new() },
                write_offset: at as i64,
                finish_write: end == total,
                data: data[at..end].to_vec().into(),
            }
        }));
        let response = client.write(requests).await?.into_inner();
        assert_eq!(response.committed_size, total as i64);
        Ok(())
    }

    /// A `/proc/PID/status` memory field, in MiB.
    fn rss(pid: u32, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix(field)?.strip_prefix(':')?;
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }
}
