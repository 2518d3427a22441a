//! Proof that the simulator can fail: each deliberately planted bug is caught within the CI
//! seed budget. Run with `cargo test -p simulation --features planted-bugs`.
#![cfg(feature = "planted-bugs")]

use membership_db::planted::{plant, Bug};
use simulation::sim::{run, Config};

/// A planted bug must be caught within this many seeds (the CI budget is larger).
const BUDGET: u64 = 500;

/// Runs seeds with `bug` planted until one breaks an invariant; returns it.
fn first_violation(bug: Bug) -> Option<simulation::sim::Violation> {
    plant(Some(bug));
    let found = (0..BUDGET).find_map(|seed| run(&Config::for_seed(seed)).err());
    plant(None);
    found
}

fn assert_caught(bug: Bug, invariants: &[&str]) {
    let v = first_violation(bug).unwrap_or_else(|| panic!("{bug:?} not caught within {BUDGET} seeds"));
    assert!(invariants.contains(&v.invariant), "{bug:?} caught, but as {}:\n{v}", v.invariant);
    // The report is replayable: the same seed breaks the same invariant again.
    plant(Some(bug));
    let again = run(&Config::for_seed(v.seed)).expect_err("the seed replays");
    plant(None);
    assert_eq!(
        (again.invariant, again.at_ms, &again.detail, &again.trace),
        (v.invariant, v.at_ms, &v.detail, &v.trace)
    );
    eprintln!("{bug:?}: caught at seed {} as {} at t={} ms", v.seed, v.invariant, v.at_ms);
}

#[test]
fn claim_that_skips_its_second_read_is_caught() {
    assert_caught(Bug::ClaimSkipsSecondRead, &["one-acting-master", "one-master-per-epoch", "cluster-state-writer"]);
}

#[test]
fn sequencer_that_advances_before_every_acknowledgement_is_caught() {
    assert_caught(Bug::SequencerAdvancesEarly, &["barrier"]);
}

#[test]
fn node_that_does_not_fence_itself_is_caught() {
    // A node that does not fence also keeps the locks its peers recover: the lock manager's
    // checks see it too.
    assert_caught(Bug::NodeDoesNotFence, &["one-acting-master", "cluster-state-writer", "compatible"]);
}

#[test]
fn membership_write_retried_at_once_is_caught() {
    assert_caught(Bug::RetryWriteAtOnce, &["io-budget"]);
}

#[test]
fn damaged_claim_block_that_blocks_elections_is_caught() {
    assert_caught(Bug::DamagedBlockBlocksElections, &["liveness"]);
}

#[test]
fn leave_forgotten_across_a_restart_is_caught() {
    assert_caught(Bug::ForgetPendingLeave, &["lost-leave"]);
}

#[test]
fn stop_before_the_withdrawn_join_is_read_is_caught() {
    assert_caught(Bug::StopBeforeWithdrawalRead, &["honest-stop"]);
}

#[test]
fn without_a_planted_bug_the_same_seeds_pass() {
    plant(None);
    for seed in 0..50 {
        if let Err(v) = run(&Config::for_seed(seed)) {
            panic!("{v}");
        }
    }
}

mod lock_manager {
    use dlm::planted::{plant, Bug, GRANT_IGNORES_CONVERTING, LVB_ALWAYS_VALID, RECOVERY_FORGETS_WAITING};
    use simulation::locks::{run, LockConfig};

    /// A planted bug of the lock manager must be caught within this many seeds.
    const BUDGET: u64 = 500;

    fn assert_caught(bug: Bug, invariants: &[&str]) {
        plant(Some(bug));
        let found = (0..BUDGET).find_map(|seed| run(&LockConfig::for_seed(seed)).err());
        plant(None);
        let v = found.unwrap_or_else(|| panic!("{} not caught within {BUDGET} seeds", bug.name()));
        assert!(invariants.contains(&v.invariant), "{} caught, but as {}:\n{v}", bug.name(), v.invariant);
        plant(Some(bug));
        let again = run(&LockConfig::for_seed(v.seed)).expect_err("the seed replays");
        plant(None);
        assert_eq!((again.invariant, again.at_ms, &again.detail), (v.invariant, v.at_ms, &v.detail));
        eprintln!("{}: caught at seed {} as {} at t={} ms", bug.name(), v.seed, v.invariant, v.at_ms);
    }

    #[test]
    fn a_grant_that_ignores_the_converting_queue_is_caught() {
        assert_caught(GRANT_IGNORES_CONVERTING, &["compatible"]);
    }

    #[test]
    fn a_recovery_that_forgets_a_waiting_request_is_caught() {
        assert_caught(RECOVERY_FORGETS_WAITING, &["lost-lock", "liveness"]);
    }

    #[test]
    fn a_value_block_taken_as_valid_after_its_writer_died_is_caught() {
        assert_caught(LVB_ALWAYS_VALID, &["lvb"]);
    }

    #[test]
    fn without_a_planted_bug_the_same_lock_seeds_pass() {
        plant(None);
        for seed in 0..100 {
            if let Err(v) = run(&LockConfig::for_seed(seed)) {
                panic!("{v}");
            }
        }
    }
}
