//! hoard-sim: runs the real hoard server in a simulated world (madsim) that breaks it on purpose,
//! across many seeds, and checks named invariants. Any failure prints its seed and the command
//! that replays it bit for bit. Build with `RUSTFLAGS="--cfg madsim"` (see `sim/run.sh`).

#[cfg(madsim)]
mod bazel_http;
#[cfg(madsim)]
mod ccache;
#[cfg(madsim)]
mod coverage;
#[cfg(madsim)]
mod fsync_latency;
#[cfg(madsim)]
mod http_probes;
#[cfg(madsim)]
mod oracle;
#[cfg(madsim)]
mod plan;
#[cfg(madsim)]
mod tier;
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

    use crate::oracle::Invariant;
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
        /// Run seeds one after another in this process (what `run` starts its children with).
        #[command(hide = true)]
        Batch {
            #[arg(long)]
            seeds: u64,
            #[arg(long)]
            start: u64,
            #[arg(long)]
            check_determinism: bool,
            #[arg(long)]
            planted: Option<String>,
        },
        /// Print the name of every planted bug, one a line (what `sim/run.sh planted` hunts).
        PlantedBugs,
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
            Command::Batch {
                seeds,
                start,
                check_determinism,
                planted,
            } => {
                for seed in start..start + seeds {
                    let failures = run_checked(seed, planted.as_deref(), check_determinism);
                    if !failures.is_empty() {
                        let names: Vec<&str> = failures.iter().map(|i| i.name()).collect();
                        println!("{FAILED_SEED} {seed} {}", names.join(","));
                    }
                }
                std::process::ExitCode::SUCCESS
            }
            Command::PlantedBugs => {
                for bug in hoard::engine::PlantedBug::ALL {
                    println!("{}", bug.name());
                }
                std::process::ExitCode::SUCCESS
            }
            Command::Replay { seed, planted } => {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_env("HOARD_LOG")
                            .unwrap_or_else(|_| "warn".into()),
                    )
                    .without_time()
                    .init();
                let outcome = run_worlds(seed, planted.as_deref(), true);
                print_outcome(seed, planted.as_deref(), &outcome);
                if outcome.failures.is_empty() {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }

    /// Seeds a child process runs: the madsim runtime does not free everything a seed leaves
    /// behind, so seeds run in short-lived child processes to keep memory flat over long runs.
    const BATCH: u64 = 50;

    /// How a child reports a failing seed (after printing its outcome).
    const FAILED_SEED: &str = "FAILED-SEED";

    /// The seed in the server's world, then in the object-store tier's (`sim/tier.rs`).
    fn run_worlds(seed: u64, planted: Option<&str>, verbose: bool) -> Outcome {
        let mut outcome = world::run_seed(seed, planted, verbose);
        let tier = crate::tier::run_seed(seed, planted, verbose);
        outcome.failures.extend(tier.failures);
        outcome.trace_hash = format!("{}+{}", outcome.trace_hash, tier.trace_hash);
        outcome.config = format!("{}\n{}", outcome.config, tier.config);
        outcome.fs_stats = format!("{}\ntier world: {}", outcome.fs_stats, tier.fs_stats);
        outcome
    }

    /// Runs a seed (twice, comparing traces, with `check_determinism`), prints its outcome if it
    /// failed, and returns the names of the invariants it broke.
    fn run_checked(seed: u64, planted: Option<&str>, check_determinism: bool) -> Vec<Invariant> {
        let mut outcome = run_worlds(seed, planted, false);
        if check_determinism {
            let again = run_worlds(seed, planted, false);
            if again.trace_hash != outcome.trace_hash {
                outcome.failures.push(world::Failure {
                    invariant: Invariant::Determinism,
                    detail: format!(
                        "two runs of the seed gave traces {} and {}",
                        outcome.trace_hash, again.trace_hash
                    ),
                });
            }
        }
        if !outcome.failures.is_empty() {
            print_outcome(seed, planted, &outcome);
        }
        outcome.failures.iter().map(|f| f.invariant).collect()
    }

    /// Runs `count` seeds from `first` in a child process; passes its report through and
    /// returns the failing seeds with the invariants each broke.
    fn run_batch(
        first: u64,
        count: u64,
        check_determinism: bool,
        planted: Option<&str>,
    ) -> Vec<(u64, Vec<Invariant>)> {
        let mut command = std::process::Command::new(
            std::env::current_exe().expect("the simulator knows its own path"),
        );
        command.args([
            "batch",
            "--start",
            &first.to_string(),
            "--seeds",
            &count.to_string(),
        ]);
        if check_determinism {
            command.arg("--check-determinism");
        }
        if let Some(bug) = planted {
            command.args(["--planted", bug]);
        }
        let output = match command.stderr(std::process::Stdio::null()).output() {
            Ok(output) => output,
            Err(e) => {
                println!(
                    "seeds {first}..{}: cannot start a child: {e}",
                    first + count
                );
                return (first..first + count)
                    .map(|seed| (seed, vec![Invariant::SimulatorCrash]))
                    .collect();
            }
        };
        let mut failed = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            match line.strip_prefix(FAILED_SEED) {
                Some(rest) => {
                    let mut parts = rest.split_whitespace();
                    let seed = parts.next().and_then(|s| s.parse().ok()).unwrap_or(first);
                    let names = parts.next().unwrap_or_default().split(',');
                    // A name the child printed is one of ours; anything else means it crashed.
                    let invariants = names.map(|name| {
                        Invariant::from_name(name).unwrap_or(Invariant::SimulatorCrash)
                    });
                    failed.push((seed, invariants.collect()));
                }
                None => println!("{line}"),
            }
        }
        if !output.status.success() {
            // A crash outside the per-seed panic guard (out of memory, say): blame the batch.
            println!(
                "seeds {first}..{}: the child process failed ({})",
                first + count,
                output.status
            );
            failed.push((first, vec![Invariant::SimulatorCrash]));
        }
        failed
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
        let failed = Arc::new(Mutex::new(Vec::<(u64, Vec<Invariant>)>::new()));
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
                    let first = next.fetch_add(BATCH, Ordering::Relaxed);
                    if first >= end || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let count = BATCH.min(end - first);
                    let batch = run_batch(first, count, check_determinism, planted.as_deref());
                    done.fetch_add(count as usize, Ordering::Relaxed);
                    if !batch.is_empty() {
                        failed.lock().expect("failures").extend(batch);
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
                let invariants: std::collections::BTreeSet<Invariant> = failed
                    .iter()
                    .flat_map(|(_, invariants)| invariants.iter().copied())
                    .collect();
                let names: Vec<&str> = invariants.into_iter().map(Invariant::name).collect();
                println!(
                    "first failing seed: {seed}; invariants violated: {}",
                    names.join(", ")
                );
                println!("replay with: {}", replay_command(seed, planted.as_deref()));
                println!("{} passed, {} failed", ran - failed.len(), failed.len());
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// The README documents every invariant and planted bug by the name the reports use.
#[cfg(all(test, madsim))]
mod tests {
    const README: &str = include_str!("../README.md");

    #[test]
    fn readme_names_every_invariant() {
        for invariant in crate::oracle::Invariant::ALL {
            let name = format!("`{}`", invariant.name());
            assert!(README.contains(&name), "README does not list {name}");
        }
    }

    #[test]
    fn readme_names_every_planted_bug() {
        for bug in hoard::engine::PlantedBug::ALL {
            let name = format!("`{}`", bug.name());
            assert!(README.contains(&name), "README does not list {name}");
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
