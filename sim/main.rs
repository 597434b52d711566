//! hoard-sim: the deterministic simulator (build with `RUSTFLAGS="--cfg madsim"`).

#[cfg(madsim)]
mod fs;

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() {
    eprintln!("hoard-sim is the simulator: build it with RUSTFLAGS=\"--cfg madsim\" (see README)");
    std::process::exit(2);
}
