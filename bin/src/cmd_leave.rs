//! `sdc leave`: ask a running node to leave gracefully, from any host that sees the disk.
//!
//! The request goes through the node table (written only by admin commands): the node's entry
//! carries a leave count, and the config stamp's generation tells the running daemons to read
//! the table, which they do within a heartbeat interval. The daemon then leaves through the
//! layers, marks its slot down and exits 0; this command waits for that. A daemon that is
//! restarting when the request is made honours it when it starts (its request record keeps
//! the count it honoured), so a leave is never lost.

use crate::cli::LeaveArgs;
use crate::cmd_status::read_status;
use crate::util::{admin_lock, node_id, open_db};
use crate::{exit, fail, CmdResult};
use membership_db::format::{HeartbeatState, NodeEntry};
use membership_db::status::read_copies;
use membership_db::time::unix_ms;
use std::time::{Duration, Instant};

pub fn run(a: LeaveArgs) -> CmdResult {
    let (db, node) = {
        let _lock = admin_lock(&a.disk.disk)?;
        let db = open_db(&a.disk, true)?;
        let node = node_id(&db, a.node)?;
        let copies = db.read_node_entry_copies()?;
        let mut warnings = Vec::new();
        let entry = match read_copies(&copies[node.index()], |e| e.seq, "node table entry", &mut warnings) {
            Some(e) if e.present => e,
            Some(_) => return fail(format!("node {node} is not in the node table")),
            None => {
                return fail(format!(
                    "the node table entry of node {node} is unreadable: {}",
                    warnings.first().map_or("", |w| w.text.as_str())
                ))
            }
        };
        for w in &warnings {
            eprintln!("sdc: warning: {}", w.text);
        }
        let status = read_status(&db)?;
        if !status.nodes.iter().any(|n| n.node == node && n.live) {
            return fail(format!("node {node} ({}) is not running; nothing to leave", entry.name));
        }
        let next = NodeEntry {
            seq: db.next_node_entry_seq(&copies[node.index()]),
            leave_requests: entry.leave_requests + 1,
            updated_unix_ms: unix_ms(),
            ..entry
        };
        db.write_node_entry(&next)?;
        db.bump_table_generation(unix_ms())?;
        (db, node)
    };
    eprintln!("asked node {node} to leave; waiting for it to leave through the layers");
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    while Instant::now() < deadline {
        let hb = db.read_heartbeats()?[node.index()].clone();
        if let Ok(hb) = hb {
            match hb.state {
                HeartbeatState::Down => {
                    // Stopped: after a graceful leave, or without one (no master could
                    // sequence it): the cluster state says which.
                    let member = db.read_cluster_state()?.map(|s| s.member(node));
                    return match member {
                        Some(m) if m.incarnation == hb.incarnation && m.state.is_member() => fail(format!(
                            "node {node} stopped without completing a graceful leave (no master sequenced it); the others force it out"
                        )),
                        _ => {
                            println!("node {node} left the cluster");
                            Ok(exit::OK)
                        }
                    };
                }
                HeartbeatState::Fenced => return fail(format!("node {node} fenced itself instead of leaving")),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fail(format!(
        "node {node} has not left within {} s; the leave goes on (a daemon that starts on node {node} leaves at once; see sdc status)",
        a.timeout
    ))
}
