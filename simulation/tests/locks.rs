//! The lock manager's seed budget: every seed keeps every invariant of the DLM and every
//! request ends once faults stop.

use simulation::locks::{run, LockConfig};

/// Seeds run by `cargo test` (more: `LOCK_SEEDS=N`).
pub const CI_LOCK_SEEDS: u64 = 2000;

#[test]
fn lock_seeds_keep_every_invariant_and_finish_every_request() {
    let count: u64 = std::env::var("LOCK_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(CI_LOCK_SEEDS);
    let first: u64 = std::env::var("LOCK_FIRST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut failed = Vec::new();
    let (mut grants, mut transitions, mut lvbs) = (0, 0, 0);
    let mut faults = std::collections::BTreeMap::new();
    for seed in first..first + count {
        match run(&LockConfig::for_seed(seed)) {
            Ok(o) => {
                grants += o.grants;
                transitions += o.transitions;
                lvbs += o.valid_lvbs_read;
                for (k, v) in o.faults {
                    *faults.entry(k).or_insert(0) += v;
                }
            }
            Err(v) => failed.push(v),
        }
    }
    if let Some(v) = failed.first() {
        panic!("{} of {count} seeds failed; the first:\n{v}", failed.len());
    }
    eprintln!(
        "{count} seeds: {grants} grants, {transitions} transitions, {lvbs} valid value blocks read; faults {faults:?}"
    );
    assert!(grants > count * 50, "the seeds must grant locks: {grants}");
    assert!(lvbs > count, "the seeds must read value blocks: {lvbs}");
    for f in ["crash", "leave", "partition-forced-out", "partition-healed", "client-gone"] {
        assert!(faults.get(f).copied().unwrap_or(0) > count / 20, "the seeds must inject {f}: {faults:?}");
    }
}

#[test]
fn a_lock_seed_replays_identically() {
    for seed in [3, 77] {
        let c = LockConfig::for_seed(seed);
        assert_eq!(run(&c).expect("no violation"), run(&c).expect("no violation"));
    }
}
