//! `sdc status`: the cluster as the disk records it, read directly from any host.

use crate::cli::StatusArgs;
use crate::util::{open_db, print_json, snapshot};
use crate::{exit, CmdResult, Failure};
use membership_db::db::read_superblocks;
use membership_db::format::HeartbeatState;
use membership_db::status::ClusterStatus;
use std::fmt::Write;
use std::time::Duration;

/// Refresh interval of `--watch`.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

pub fn run(a: StatusArgs) -> CmdResult {
    let db = open_db(&a.read.disk, false)?;
    for bad in read_superblocks(db.disk())?.iter().filter_map(|c| c.as_ref().err()) {
        eprintln!("sdc: warning: {bad}; using the other copy (see sdc inspect)");
    }
    loop {
        let mut status = ClusterStatus::of(&snapshot(&db)?);
        if !status.corrupt.is_empty() {
            // A read that overlapped a daemon's write (mmap) fails its checksum once; damage
            // stays. Only records that fail twice are reported.
            let again = ClusterStatus::of(&snapshot(&db)?);
            let persistent =
                status.corrupt.iter().filter(|c| again.corrupt.iter().any(|a| a.offset == c.offset)).cloned().collect();
            status = again;
            status.corrupt = persistent;
        }
        match (a.read.json, a.watch) {
            (true, false) => print_json(&status)?,
            (true, true) => {
                let line = serde_json::to_string(&status).map_err(|e| Failure::from(format!("JSON output: {e}")))?;
                println!("{line}");
            }
            // Clear the screen and draw from the top: the view refreshes in place.
            (false, true) => print!("\x1b[H\x1b[2J{}", render(&status)),
            (false, false) => print!("{}", render(&status)),
        }
        for bad in &status.corrupt {
            eprintln!("sdc: warning: {bad}; not used (see sdc inspect)");
        }
        if !a.watch {
            return Ok(exit::OK);
        }
        std::io::Write::flush(&mut std::io::stdout()).map_err(Failure::from)?;
        std::thread::sleep(WATCH_INTERVAL);
    }
}

fn render(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let master = match s.master {
        Some(m) => {
            let name = s.nodes.iter().find(|n| n.node == m).map_or(String::new(), |n| format!(" ({})", n.name));
            format!("node {m}{name}")
        }
        None => "none".into(),
    };
    let _ = writeln!(out, "cluster {} (uuid {})", s.cluster, s.uuid);
    let _ = writeln!(out, "epoch {}, master: {master}", s.epoch);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<5} {:<16} {:<15} {:<7} {:<5} {:>13} {:<8} {:<12} {:<8} HOST",
        "NODE", "NAME", "STATE", "DAEMON", "LIVE", "HEARTBEAT-AGE", "ELIGIBLE", "INCARNATION", "PID"
    );
    for n in &s.nodes {
        let age = match n.heartbeat_age_ms {
            Some(ms) if ms < 10_000 => format!("{ms} ms"),
            Some(ms) => format!("{} s", ms / 1000),
            None => "-".into(),
        };
        let daemon = match n.heartbeat_state {
            _ if s.master == Some(n.node) => "master",
            Some(HeartbeatState::Up) if !n.live => "dead",
            Some(h) => h.name(),
            None => "unreadable",
        };
        let state = n.state.name();
        let _ = writeln!(
            out,
            "{:<5} {:<16} {:<15} {:<7} {:<5} {:>13} {:<8} {:<12} {:<8} {}",
            n.node.0,
            n.name,
            state,
            daemon,
            if n.live { "yes" } else { "no" },
            age,
            if n.master_eligible { "yes" } else { "no" },
            n.incarnation.map_or("-".into(), |i| i.to_string()),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.host.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(out);
    if s.transitions.is_empty() {
        let _ = writeln!(out, "no transitions in flight");
    } else {
        let _ = writeln!(out, "transitions in flight:");
        for t in &s.transitions {
            let who: Vec<String> = t.participants.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(
                out,
                "  {} of node {}: layer {} (order {}), barrier {}; participants {}",
                t.kind.name(),
                t.node,
                t.layer,
                t.order,
                t.barrier,
                who.join(",")
            );
        }
    }
    out
}
