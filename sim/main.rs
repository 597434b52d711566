//! hoard-sim: runs the real hoard server in a simulated world (madsim) that breaks it on purpose,
//! across many seeds, and checks named invariants. Any failure prints its seed and the command
//! that replays it bit for bit. Build with `RUSTFLAGS="--cfg madsim"` (see `sim/run.sh`).

#[cfg(madsim)]
mod ccache;
#[cfg(madsim)]
mod fs;
#[cfg(madsim)]
mod oracle;
#[cfg(madsim)]
mod plan;
#[cfg(madsim)]
mod workload;
#[cfg(madsim)]
mod world;

#[cfg(madsim)]
mod cli {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use clap::{Parser, Subcommand};

    use crate::world::{self, Outcome};

    /// The hoard simulator.
    #[derive(Parser)]
    #[command(about)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Run a range of seeds and report every failure.
        Run {
            /// How many seeds.
            #[arg(long, default_value_t = 1000)]
            seeds: u64,
            /// First seed.
            #[arg(long, default_value_t = 1)]
            start: u64,
            /// Worker threads (one seed at a time each).
            #[arg(long, default_value_t = 2)]
            jobs: usize,
            /// Run each seed twice and require identical traces.
            #[arg(long)]
            check_determinism: bool,
            /// Plant a known bug (needs the `planted-bugs` feature).
            #[arg(long)]
            planted: Option<String>,
            /// Stop at the first failing seed.
            #[arg(long)]
            stop_at_first: bool,
        },
        /// Run one seed verbosely and print its trace hash.
        Replay {
            /// The seed.
            #[arg(long)]
            seed: u64,
            /// Plant a known bug (needs the `planted-bugs` feature).
            #[arg(long)]
            planted: Option<String>,
        },
    }

    pub fn main() -> std::process::ExitCode {
        match Cli::parse().command {
            Command::Run {
                seeds,
                start,
                jobs,
                check_determinism,
                planted,
                stop_at_first,
            } => run(
                seeds,
                start,
                jobs,
                check_determinism,
                planted,
                stop_at_first,
            ),
            Command::Replay { seed, planted } => {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_env("HOARD_LOG")
                            .unwrap_or_else(|_| "warn".into()),
                    )
                    .without_time()
                    .init();
                let outcome = world::run_seed(seed, planted.as_deref(), true);
                print_outcome(seed, planted.as_deref(), &outcome);
                if outcome.failures.is_empty() {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }

    fn replay_command(seed: u64, planted: Option<&str>) -> String {
        let planted_arg = planted
            .map(|p| format!(" --planted {p}"))
            .unwrap_or_default();
        let features = if planted.is_some() {
            " --features planted-bugs"
        } else {
            ""
        };
        format!(
            "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo run --release{features} \
             --bin hoard-sim -- replay --seed {seed}{planted_arg}"
        )
    }

    fn print_outcome(seed: u64, planted: Option<&str>, outcome: &Outcome) {
        println!("seed {seed}: {}", outcome.config);
        println!(
            "seed {seed}: trace {} ({} events)",
            outcome.trace_hash, outcome.events
        );
        println!("seed {seed}: disk {}", outcome.fs_stats);
        for failure in &outcome.failures {
            println!(
                "seed {seed}: INVARIANT VIOLATED [{}] {}",
                failure.invariant, failure.detail
            );
        }
        if !outcome.failures.is_empty() {
            println!(
                "seed {seed}: replay with: {}",
                replay_command(seed, planted)
            );
        }
    }

    fn run(
        seeds: u64,
        start: u64,
        jobs: usize,
        check_determinism: bool,
        planted: Option<String>,
        stop_at_first: bool,
    ) -> std::process::ExitCode {
        let began = Instant::now();
        let next = Arc::new(AtomicU64::new(start));
        let end = start + seeds;
        let failed = Arc::new(Mutex::new(Vec::<(u64, Outcome)>::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..jobs.max(1))
            .map(|_| {
                let (next, failed, done, stop, planted) = (
                    next.clone(),
                    failed.clone(),
                    done.clone(),
                    stop.clone(),
                    planted.clone(),
                );
                std::thread::spawn(move || loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let mut outcome = world::run_seed(seed, planted.as_deref(), false);
                    if check_determinism {
                        let again = world::run_seed(seed, planted.as_deref(), false);
                        if again.trace_hash != outcome.trace_hash {
                            outcome.failures.push(world::Failure {
                                invariant: "determinism",
                                detail: format!(
                                    "two runs of the seed gave traces {} and {}",
                                    outcome.trace_hash, again.trace_hash
                                ),
                            });
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    if !outcome.failures.is_empty() {
                        print_outcome(seed, planted.as_deref(), &outcome);
                        failed.lock().expect("failures").push((seed, outcome));
                        if stop_at_first {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            if worker.join().is_err() {
                eprintln!("a simulator worker thread panicked");
                return std::process::ExitCode::FAILURE;
            }
        }
        let elapsed = began.elapsed().as_secs_f64();
        let ran = done.load(Ordering::Relaxed);
        let mut failed = failed.lock().expect("failures");
        failed.sort_by_key(|(seed, _)| *seed);
        let first = failed.first().map(|(seed, _)| *seed);
        println!(
            "simulated {ran} seeds in {elapsed:.1} s ({:.0} seeds/min){}{}",
            ran as f64 / elapsed * 60.0,
            if check_determinism {
                ", each twice for determinism"
            } else {
                ""
            },
            planted
                .as_deref()
                .map(|p| format!(", planted bug {p}"))
                .unwrap_or_default(),
        );
        match first {
            None => {
                println!("{ran} passed, 0 failed");
                std::process::ExitCode::SUCCESS
            }
            Some(seed) => {
                let invariants: std::collections::BTreeSet<&str> = failed
                    .iter()
                    .flat_map(|(_, o)| o.failures.iter().map(|f| f.invariant))
                    .collect();
                println!(
                    "first failing seed: {seed}; invariants violated: {}",
                    invariants.into_iter().collect::<Vec<_>>().join(", ")
                );
                println!("replay with: {}", replay_command(seed, planted.as_deref()));
                println!("{} passed, {} failed", ran - failed.len(), failed.len());
                std::process::ExitCode::FAILURE
            }
        }
    }
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("hoard-sim is the simulator: build it with RUSTFLAGS=\"--cfg madsim\" (see README)");
    std::process::exit(2);
}
