//! # simulation
//!
//! A deterministic simulator for the membership protocols (DESIGN sections 7 and 8). It runs
//! the real sans-IO cores ([`manager::member::MemberCore`]: heartbeats, the Disk Paxos master
//! claim, the transition sequencer and participants) of 3 to 32 nodes over a simulated shared
//! disk ([`disk`]) in virtual time. The real `MembershipDb` encodes and decodes every record on
//! that disk, so checksums, double buffering and torn writes are the real ones.
//!
//! One seed is one exact run ([`sim::run`]): the interleaving of nodes, the faults (crash and
//! restart, freeze and resume, torn multi-sector writes, EIO on one node's path, slow I/O, a
//! node losing the disk, clock drift), and the subsystems' answer delays all come from it.
//! Invariants are checked after every action; a violation names the invariant and carries the
//! trace of the last events. After the fault phase every transition must complete within a
//! stated bound (liveness).
//!
//! ```
//! let outcome = simulation::sim::run(&simulation::sim::Config::for_seed(7)).expect("no violation");
//! assert!(outcome.actions > 0);
//! ```

#![forbid(unsafe_code)]

pub mod disk;
pub mod lockload;
pub mod locks;
pub mod sim;

/// Results of a range of seeds.
#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub failed: Vec<sim::Violation>,
    pub virtual_ms: u64,
    pub actions: u64,
    pub transitions: u64,
    pub faults: std::collections::BTreeMap<&'static str, u64>,
    pub converged_ms_max: u64,
}

impl Summary {
    /// Adds another range's results to this one.
    pub fn add(&mut self, other: Summary) {
        self.seeds += other.seeds;
        self.failed.extend(other.failed);
        self.virtual_ms += other.virtual_ms;
        self.actions += other.actions;
        self.transitions += other.transitions;
        for (k, v) in other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        self.converged_ms_max = self.converged_ms_max.max(other.converged_ms_max);
    }
}

impl Summary {
    /// Counts one seed's result.
    pub fn add_outcome(&mut self, r: Result<sim::Outcome, sim::Violation>) {
        self.seeds += 1;
        match r {
            Ok(o) => {
                self.virtual_ms += o.virtual_ms;
                self.actions += o.actions;
                self.transitions += o.transitions;
                self.converged_ms_max = self.converged_ms_max.max(o.converged_ms);
                for (k, v) in o.faults {
                    *self.faults.entry(k).or_default() += v;
                }
            }
            Err(v) => self.failed.push(v),
        }
    }
}

/// Runs seeds `first..first + count`; `progress` sees each outcome.
pub fn run_seeds(
    first: u64,
    count: u64,
    progress: &mut dyn FnMut(u64, &Result<sim::Outcome, sim::Violation>),
) -> Summary {
    let mut s = Summary::default();
    for seed in first..first + count {
        let r = sim::run(&sim::Config::for_seed(seed));
        progress(seed, &r);
        s.add_outcome(r);
    }
    s
}
