//! The CI seed budget: every seed keeps every invariant and converges once faults stop.

/// Seeds run by `cargo test` (the soak is `sdc sim --seeds N` with a larger N).
pub const CI_SEEDS: u64 = 2000;

/// Runs `count` seeds on two threads, seeds taken in turn from one counter so that a large
/// cluster's long seed does not hold one thread while the other idles (each seed is
/// deterministic, whichever thread runs it).
fn run_parallel(count: u64) -> Vec<simulation::Summary> {
    let next = std::sync::atomic::AtomicU64::new(0);
    let work = || {
        let mut total = simulation::Summary::default();
        loop {
            let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if seed >= count {
                return total;
            }
            total.add(simulation::run_seeds(seed, 1, &mut |_, _| {}));
        }
    };
    std::thread::scope(|s| {
        let a = s.spawn(work);
        let b = s.spawn(work);
        vec![a.join().unwrap(), b.join().unwrap()]
    })
}

#[test]
fn seeds_keep_every_invariant_and_converge() {
    let count: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(CI_SEEDS);
    let summaries = run_parallel(count);
    let failed: Vec<&simulation::sim::Violation> = summaries.iter().flat_map(|s| &s.failed).collect();
    if let Some(v) = failed.first() {
        panic!("{} of {count} seeds failed; the first:\n{v}", failed.len());
    }
    let transitions: u64 = summaries.iter().map(|s| s.transitions).sum();
    let torn: u64 = summaries.iter().map(|s| s.faults.get("torn-write").copied().unwrap_or(0)).sum();
    assert!(transitions > count, "the seeds must exercise transitions: {summaries:?}");
    assert!(torn > count / 10, "the seeds must tear writes: {torn} in {count} seeds");
}

/// One seed is one exact run: the same seed gives the same run, action for action.
#[test]
fn a_seed_replays_identically() {
    for seed in [7, 99, 1234] {
        let config = simulation::sim::Config::for_seed(seed);
        let first = simulation::sim::run(&config).expect("no violation");
        let again = simulation::sim::run(&config).expect("no violation");
        assert_eq!(first, again, "seed {seed} did not replay identically");
    }
}
