//! The `hoard` command: `hoard serve` runs the cache, `hoard verify` checks a data directory
//! offline. The options and where they come from
//! (command line, `HOARD_*` environment, `--config` file) are in [`hoard::config`].

#[cfg(not(madsim))]
mod cli {
    use std::sync::Arc;

    use std::io::{IsTerminal, Write};

    use hoard::config::{self, Command, ParseError, VerifyArgs};
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
        let args = match cli.command {
            Command::Serve(args) => args,
            Command::Verify(args) => return verify(&args),
        };
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

    /// `hoard verify`: the report on stdout, a progress bar on stderr when it is a terminal.
    fn verify(args: &VerifyArgs) -> std::process::ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("hoard: cannot start the runtime: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        let terminal = std::io::stderr().is_terminal();
        let mut shown = None;
        let mut progress = |done: u64, total: u64| {
            let percent = (done * 100).checked_div(total).unwrap_or(100);
            if terminal && shown != Some(percent) {
                shown = Some(percent);
                let bar = "#".repeat(percent as usize / 5);
                eprint!("\rverifying [{bar:<20}] {percent:3}% of {total} bytes");
                let _ = std::io::stderr().flush();
            }
        };
        let verified = runtime.block_on(hoard::verify::verify(
            &RealFs,
            &args.dir,
            args.repair,
            &mut progress,
        ));
        if terminal {
            eprintln!();
        }
        match verified {
            Ok(report) => {
                println!("{report}");
                if report.is_damaged() {
                    std::process::ExitCode::from(1)
                } else {
                    std::process::ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("hoard verify: {e}");
                std::process::ExitCode::from(2)
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
