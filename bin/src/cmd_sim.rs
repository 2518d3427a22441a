//! `sdc sim`: run the deterministic simulator over many seeds, or replay one.

use crate::cli::SimArgs;
use crate::{exit, CmdResult};
use simulation::sim::{self, Config};
use std::time::Instant;

pub fn run(a: SimArgs) -> CmdResult {
    let started = Instant::now();
    if let Some(seed) = a.seed {
        let config = Config::for_seed(seed);
        return match sim::run(&config) {
            Ok(o) => {
                println!(
                    "seed {seed}: ok: {} nodes, {} ms virtual, {} actions, {} transitions, {} master epochs, converged {} ms after the faults stopped; faults {:?}",
                    o.nodes, o.virtual_ms, o.actions, o.transitions, o.epochs, o.converged_ms, o.faults
                );
                Ok(exit::OK)
            }
            Err(v) => {
                println!("{v}");
                Ok(exit::ERROR)
            }
        };
    }
    let summary = simulation::run_seeds(a.first, a.seeds, &mut |seed, r| {
        if let Err(v) = r {
            println!("{v}\n");
        } else if seed % 100 == 99 {
            eprintln!("… {} seeds", seed + 1 - a.first);
        }
    });
    let faults: Vec<String> = summary.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "sim: {} seeds, {} failed; {} s virtual, {} actions, {} transitions, slowest convergence {} ms after faults stopped; faults: {}; {:.1} s",
        summary.seeds,
        summary.failed.len(),
        summary.virtual_ms / 1000,
        summary.actions,
        summary.transitions,
        summary.converged_ms_max,
        faults.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(if summary.failed.is_empty() { exit::OK } else { exit::ERROR })
}
