//! `sdc status`: the cluster as the disk records it, read directly from any host.

use crate::cli::StatusArgs;
use crate::util::{open_db, print_json, snapshot};
use crate::{exit, CmdResult, Failure};
use manager::member::refusal_text;
use membership_db::format::{HeartbeatState, NodeSet, RefusalReason};
use membership_db::status::{ClusterStatus, NodeStatus};
use std::fmt::Write;
use std::time::Duration;

/// Refresh interval of `--watch`.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

pub fn run(a: StatusArgs) -> CmdResult {
    let db = open_db(&a.read.disk, false)?;
    loop {
        let status = read_status(&db)?;
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
        for w in &status.warnings {
            eprintln!("sdc: warning: {} (see sdc inspect)", w.text);
        }
        if !a.watch {
            return Ok(exit::OK);
        }
        std::io::Write::flush(&mut std::io::stdout()).map_err(Failure::from)?;
        std::thread::sleep(WATCH_INTERVAL);
    }
}

/// The status, with the warnings that hold in two readings: a read that overlapped a daemon's
/// write (mmap) fails its checksum once; damage stays.
pub fn read_status(db: &membership_db::db::MembershipDb) -> Result<ClusterStatus, Failure> {
    let status = ClusterStatus::of(&snapshot(db)?);
    if status.warnings.is_empty() {
        return Ok(status);
    }
    let mut again = ClusterStatus::of(&snapshot(db)?);
    again.warnings.retain(|w| status.warnings.iter().any(|v| v.text == w.text));
    Ok(again)
}

/// What a node reaches over the interconnect: `all` (every other node shown that runs one),
/// the peer ids, `none`, or `-` when it runs no interconnect (or no daemon).
fn reaches_text(s: &ClusterStatus, n: &NodeStatus) -> String {
    let Some(reaches) = n.reaches else { return "-".into() };
    let others: NodeSet = s.nodes.iter().filter(|o| o.node != n.node && o.reaches.is_some()).map(|o| o.node).collect();
    if reaches.is_empty() {
        "none".into()
    } else if !others.is_empty() && others.difference(&reaches).is_empty() {
        "all".into()
    } else {
        reaches.ranges_text().replace(' ', "")
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
        "{:<5} {:<16} {:<15} {:<7} {:<5} {:>13} {:<8} {:<12} {:<8} {:<16} {:<21} HOST",
        "NODE",
        "NAME",
        "STATE",
        "DAEMON",
        "LIVE",
        "HEARTBEAT-AGE",
        "ELIGIBLE",
        "INCARNATION",
        "PID",
        "REACHES",
        "ADDRESS"
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
        let state = n.state.map_or("unknown", |s| s.name());
        let _ = writeln!(
            out,
            "{:<5} {:<16} {:<15} {:<7} {:<5} {:>13} {:<8} {:<12} {:<8} {:<16} {:<21} {}",
            n.node.0,
            n.name,
            state,
            daemon,
            if n.live { "yes" } else { "no" },
            age,
            if n.master_eligible { "yes" } else { "no" },
            n.incarnation.map_or("-".into(), |i| i.to_string()),
            n.pid.map_or("-".into(), |p| p.to_string()),
            reaches_text(s, n),
            if n.address.is_empty() { "-" } else { &n.address },
            n.host.as_deref().unwrap_or("-"),
        );
    }
    for n in &s.nodes {
        if let Some(r) = n.refusal.filter(|r| r.incarnation == n.incarnation.unwrap_or(r.incarnation)) {
            let what = match r.reason {
                RefusalReason::Nacked | RefusalReason::Unreachable => "forced out",
                _ => "join refused",
            };
            let _ = writeln!(out, "node {} {what} (incarnation {}): {}", n.node, r.incarnation, refusal_text(&r));
        }
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
