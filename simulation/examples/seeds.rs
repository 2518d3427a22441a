//! Runs a range of seeds and prints each violation: `cargo run --release -p simulation --example seeds -- FIRST COUNT`.
fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (first, count) = (args.first().copied().unwrap_or(0), args.get(1).copied().unwrap_or(100));
    let started = std::time::Instant::now();
    let s = simulation::run_seeds(first, count, &mut |seed, r| {
        if let Err(v) = r {
            println!("{v}\n");
        } else if std::env::var("VERBOSE").is_ok() {
            println!("seed {seed}: {:?}", r.as_ref().unwrap());
        }
    });
    println!(
        "{} seeds, {} failed, {} transitions, faults {:?}, slowest convergence {} ms, {:.1} s",
        s.seeds,
        s.failed.len(),
        s.transitions,
        s.faults,
        s.converged_ms_max,
        started.elapsed().as_secs_f64()
    );
}
