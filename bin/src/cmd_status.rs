//! `sdc status`: the cluster as the disk records it, read directly from any host.

use crate::cli::ReadArgs;
use crate::util::{open_db, print_json, snapshot};
use crate::{exit, CmdResult};
use membership_db::db::read_superblocks;
use membership_db::format::HeartbeatState;
use membership_db::status::ClusterStatus;

pub fn run(a: ReadArgs) -> CmdResult {
    let db = open_db(&a.disk, false)?;
    for bad in read_superblocks(db.disk())?.iter().filter_map(|c| c.as_ref().err()) {
        eprintln!("sdc: warning: {bad}; using the other copy (see sdc inspect)");
    }
    let status = ClusterStatus::of(&snapshot(&db)?);
    if a.json {
        print_json(&status)?;
    } else {
        print_text(&status);
    }
    for bad in &status.corrupt {
        eprintln!("sdc: warning: {bad}; not used (see sdc inspect)");
    }
    Ok(exit::OK)
}

fn print_text(s: &ClusterStatus) {
    let master = match s.master {
        Some(m) => {
            let name = s.nodes.iter().find(|n| n.node == m).map_or(String::new(), |n| format!(" ({})", n.name));
            format!("node {m}{name}")
        }
        None => "none".into(),
    };
    println!("cluster {} (uuid {})", s.cluster, s.uuid);
    println!("epoch {}, master: {master}", s.epoch);
    println!();
    println!(
        "{:<5} {:<16} {:<10} {:<5} {:>13} {:<7} {:<12} {:<8} HOST",
        "NODE", "NAME", "STATE", "LIVE", "HEARTBEAT-AGE", "ELIGIBLE", "INCARNATION", "PID"
    );
    for n in &s.nodes {
        let age = match n.heartbeat_age_ms {
            Some(ms) if ms < 10_000 => format!("{ms} ms"),
            Some(ms) => format!("{} s", ms / 1000),
            None => "-".into(),
        };
        let state = match n.heartbeat_state {
            _ if s.master == Some(n.node) => "master",
            Some(HeartbeatState::Up) if !n.live => "dead",
            Some(h) => h.name(),
            None => "unreadable",
        };
        println!(
            "{:<5} {:<16} {:<10} {:<5} {:>13} {:<7} {:<12} {:<8} {}",
            n.node.0,
            n.name,
            state,
            if n.live { "yes" } else { "no" },
            age,
            if n.master_eligible { "yes" } else { "no" },
            n.incarnation.map_or("-".into(), |i| i.to_string()),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.host.as_deref().unwrap_or("-"),
        );
    }
}
