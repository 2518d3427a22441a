//! Runs a range of seeds and prints each violation (a soak):
//! `cargo run --release -p simulation --example seeds -- FIRST COUNT [FAULT_SCALE]`.
//! `FAULT_SCALE` multiplies every seed's fault rate (default 1); `LIVENESS_MS` overrides the
//! liveness bound (to tell a slow seed from a stuck one). `sdc sim` is the operator's
//! entry point; this one exists for long soaks at other fault rates.
fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (first, count) = (args.first().copied().unwrap_or(0), args.get(1).copied().unwrap_or(100));
    let scale = args.get(2).copied().unwrap_or(1);
    let started = std::time::Instant::now();
    let mut summary = simulation::Summary::default();
    for seed in first..first + count {
        let mut config = simulation::sim::Config::for_seed(seed);
        config.fault_rate *= scale;
        if let Some(ms) = std::env::var("LIVENESS_MS").ok().and_then(|v| v.parse().ok()) {
            config.liveness_bound_ms = ms;
        }
        let r = simulation::sim::run(&config);
        match &r {
            Err(v) => println!("{v}\n"),
            Ok(o) if std::env::var_os("VERBOSE").is_some() => println!("seed {seed}: {o:?}"),
            Ok(_) => {}
        }
        summary.add_outcome(r);
    }
    println!(
        "{} seeds, {} failed, {} transitions, faults {:?}, slowest convergence {} ms, {:.1} s",
        summary.seeds,
        summary.failed.len(),
        summary.transitions,
        summary.faults,
        summary.converged_ms_max,
        started.elapsed().as_secs_f64()
    );
}
