//! The `hoard` command: `hoard serve` runs the cache. The options and where they come from
//! (command line, `HOARD_*` environment, `--config` file) are in [`hoard::config`].

#[cfg(not(madsim))]
mod cli {
    use std::sync::Arc;

    use hoard::config::{self, Command, ParseError};
    use hoard::seam::real_fs::RealFs;
    use hoard::seam::TokioRuntime;
    use hoard::server;

    pub fn main() -> std::process::ExitCode {
        hoard::seam::return_large_buffers_at_once();
        let cli = match config::parse_from(std::env::args_os()) {
            Ok(cli) => cli,
            // `--help` and `--version` end up here too, and exit successfully.
            Err(ParseError::Cli(e)) => e.exit(),
            Err(e) => {
                eprintln!("hoard: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let Command::Serve(args) = cli.command;
        let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("hoard: bad --log filter {:?}: {e}", args.log);
                return std::process::ExitCode::from(2);
            }
        };
        tracing_subscriber::fmt().with_env_filter(filter).init();
        let (config, warnings) = match args.resolve() {
            Ok(resolved) => resolved,
            Err(e) => {
                eprintln!("hoard: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        tracing::info!(
            auth = config.grpc.auth.is_enabled(),
            tls = config.grpc.tls.is_some(),
            dir = %config.engine.dir.display(),
            "starting"
        );
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("hoard: cannot start the runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let served = runtime.block_on(server::serve(
            config,
            Arc::new(RealFs),
            Arc::new(TokioRuntime),
            shutdown_signal(),
        ));
        match served {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hoard: {e}");
                std::process::ExitCode::FAILURE
            }
        }
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
