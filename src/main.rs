//! The `hoard` command: `hoard serve` runs the cache.

#[cfg(not(madsim))]
mod cli {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Arc;

    use clap::{Parser, Subcommand};
    use hoard::engine::EngineConfig;
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::TokioRuntime;
    use hoard::server::{self, parse_size, ServeConfig};
    use hoard::wire::grpc::GrpcConfig;
    use hoard::wire::http::HttpConfig;

    /// A remote build cache for Bazel (REAPI v2 gRPC and the HTTP cache protocol).
    #[derive(Parser)]
    #[command(version, about)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Run the cache server.
        Serve(ServeArgs),
    }

    #[derive(clap::Args)]
    struct ServeArgs {
        /// Data directory (default: $XDG_CACHE_HOME/hoard or ~/.cache/hoard).
        #[arg(long, env = "HOARD_DIR")]
        dir: Option<PathBuf>,
        /// gRPC listen address (Bazel: --remote_cache=grpc://ADDR).
        #[arg(long, env = "HOARD_GRPC_ADDR", default_value = "127.0.0.1:9092")]
        grpc_addr: SocketAddr,
        /// HTTP listen address (Bazel: --remote_cache=http://ADDR).
        #[arg(long, env = "HOARD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Disable the HTTP listener.
        #[arg(long, env = "HOARD_NO_HTTP")]
        no_http: bool,
        /// Byte budget for stored blobs, e.g. 50G (default: unbounded).
        #[arg(long, env = "HOARD_MAX_SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Refuse HTTP `/ac/` values that are not REAPI ActionResults (by default they are kept
        /// as opaque values, which is what ccache stores).
        #[arg(long, env = "HOARD_HTTP_AC_STRICT")]
        http_ac_strict: bool,
        /// Largest single blob accepted, e.g. 2G.
        #[arg(long, env = "HOARD_MAX_BLOB_SIZE", value_parser = parse_size, default_value = "64G")]
        max_blob_size: u64,
    }

    pub fn main() -> std::process::ExitCode {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("HOARD_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .init();
        let Command::Serve(args) = Cli::parse().command;
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("hoard: cannot start the runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match runtime.block_on(serve(args)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hoard: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    async fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut engine = EngineConfig::new(args.dir.unwrap_or_else(server::default_data_dir));
        engine.max_size = args.max_size;
        engine.max_blob_size = args.max_blob_size;
        let config = ServeConfig {
            engine,
            grpc_addr: args.grpc_addr,
            http_addr: (!args.no_http).then_some(args.http_addr),
            grpc: GrpcConfig::default(),
            http: HttpConfig {
                ac_strict: args.http_ac_strict,
                ..HttpConfig::default()
            },
        };
        server::serve(
            config,
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
            shutdown_signal(),
        )
        .await
    }

    async fn shutdown_signal() {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C still works");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
fn main() {
    eprintln!("this is the simulator build; run hoard-sim instead");
}
