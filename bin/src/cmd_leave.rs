//! `sdc leave`: ask a running node to leave gracefully, from any host that sees the disk.
//!
//! The request goes through the node table (written only by admin commands): the node's entry
//! carries a leave counter that its daemon watches. The daemon then leaves through the layers,
//! marks its slot down and exits 0; this command waits for that.

use crate::cli::LeaveArgs;
use crate::util::{admin_lock, node_id, open_db, snapshot};
use crate::{exit, fail, CmdResult};
use membership_db::daemon::unix_ms;
use membership_db::format::{HeartbeatState, NodeEntry};
use membership_db::status::ClusterStatus;
use std::time::{Duration, Instant};

pub fn run(a: LeaveArgs) -> CmdResult {
    let db = {
        let _lock = admin_lock(&a.disk.disk)?;
        let db = open_db(&a.disk, true)?;
        let node = node_id(&db, a.node)?;
        let copies = db.read_node_entry_copies()?;
        let entry = match &db.read_node_table()?[node.index()] {
            Ok(e) if e.present => e.clone(),
            Ok(_) => return fail(format!("node {node} is not in the node table")),
            Err(c) => return fail(format!("the node table entry of node {node} is unreadable: {c}")),
        };
        let status = ClusterStatus::of(&snapshot(&db)?);
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
        db
    };
    let node = node_id(&db, a.node)?;
    eprintln!("asked node {node} to leave; waiting for it to leave through the layers");
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    while Instant::now() < deadline {
        let hb = db.read_heartbeats()?[node.index()].clone();
        if let Ok(hb) = hb {
            match hb.state {
                HeartbeatState::Down => {
                    println!("node {node} left the cluster");
                    return Ok(exit::OK);
                }
                HeartbeatState::Fenced => return fail(format!("node {node} fenced itself instead of leaving")),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fail(format!("node {node} has not left within {} s; the leave goes on (see sdc status)", a.timeout))
}
