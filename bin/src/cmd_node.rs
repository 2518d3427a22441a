//! `sdc node add | list | remove`: the persistent node table.
//!
//! Every change writes the node's entry (to the copy that does not hold the newest one), then
//! bumps the config stamp's table generation, so running nodes read the table within one
//! heartbeat interval.

use crate::cli::{NodeAddArgs, NodeRemoveArgs, ReadArgs};
use crate::cmd_status::read_status;
use crate::util::{admin_lock, node_id, open_db, print_json};
use crate::{exit, fail, CmdResult};
use membership_db::format::{validate_address, validate_node_name, NodeEntry};
use membership_db::status::{read_copies, Warning};
use membership_db::time::unix_ms;

pub fn add(a: NodeAddArgs) -> CmdResult {
    validate_node_name(&a.name)?;
    validate_address(&a.address)?;
    let _lock = admin_lock(&a.disk.disk)?;
    let db = open_db(&a.disk, true)?;
    let node = node_id(&db, a.node)?;
    let copies = db.read_node_entry_copies()?;
    let mut warnings = Vec::new();
    let table: Vec<Option<NodeEntry>> =
        copies.iter().map(|c| read_copies(c, |e| e.seq, "node table entry", &mut warnings)).collect();
    let mut updating = false;
    for entry in table.iter().flatten().filter(|e| e.present) {
        if entry.node == node && entry.name == a.name {
            // The same node again: its address and eligibility are updated.
            updating = true;
            continue;
        }
        if entry.node == node {
            return fail(format!(
                "node {node} already exists with the name {} (to change its address or eligibility, give that name; to rename it, remove it first)",
                entry.name
            ));
        }
        if entry.name == a.name {
            return fail(format!("name {} is already used by node {}", a.name, entry.node));
        }
    }
    for w in &warnings {
        eprintln!("sdc: warning: {}", w.text);
    }
    let previous = table[node.index()].as_ref();
    let entry = NodeEntry {
        node,
        seq: db.next_node_entry_seq(&copies[node.index()]),
        present: true,
        master_eligible: !a.no_master_eligible,
        name: a.name.clone(),
        // Re-adding a node (to update it, or to repair its entry) keeps its address unless given.
        address: match previous {
            Some(p) if a.address.is_empty() && p.present => p.address.clone(),
            _ => a.address.clone(),
        },
        updated_unix_ms: unix_ms(),
        // The count goes on from the removed entry's: a daemon compares it with the count it
        // honoured, which must never look ahead of it.
        leave_requests: previous.map_or(0, |e| e.leave_requests),
    };
    db.write_node_entry(&entry)?;
    db.bump_table_generation(unix_ms())?;
    let role = if entry.master_eligible { "master-eligible" } else { "not master-eligible" };
    let verb = if updating { "updated" } else { "added" };
    let address =
        if entry.address.is_empty() { "no address".to_string() } else { format!("address {}", entry.address) };
    println!("{verb} node {node} ({}), {role}, {address}", entry.name);
    Ok(exit::OK)
}

pub fn remove(a: NodeRemoveArgs) -> CmdResult {
    let _lock = admin_lock(&a.disk.disk)?;
    let db = open_db(&a.disk, true)?;
    let node = node_id(&db, a.node)?;
    let copies = db.read_node_entry_copies()?;
    let mut warnings = Vec::new();
    let current = read_copies(&copies[node.index()], |e| e.seq, "node table entry", &mut warnings);
    if current.as_ref().is_some_and(|e| !e.present) {
        return fail(format!("node {node} is not in the node table"));
    }
    for w in &warnings {
        eprintln!("sdc: warning: {}", w.text);
    }
    let status = read_status(&db)?;
    if status.nodes.iter().any(|n| n.node == node && n.live) {
        return fail(format!("node {node} is live; stop it (sdc leave or SIGTERM) before removing it"));
    }
    let entry = NodeEntry {
        updated_unix_ms: unix_ms(),
        leave_requests: current.map_or(0, |e| e.leave_requests),
        ..NodeEntry::absent(node, db.next_node_entry_seq(&copies[node.index()]))
    };
    db.write_node_entry(&entry)?;
    db.bump_table_generation(unix_ms())?;
    println!("removed node {node}");
    Ok(exit::OK)
}

pub fn list(a: ReadArgs) -> CmdResult {
    let db = open_db(&a.disk, false)?;
    let copies = db.read_node_entry_copies()?;
    let mut warnings: Vec<Warning> = Vec::new();
    let table: Vec<NodeEntry> = copies
        .iter()
        .enumerate()
        .filter_map(|(i, c)| read_copies(c, |e| e.seq, &format!("node table entry of node {}", i + 1), &mut warnings))
        .collect();
    let present: Vec<&NodeEntry> = table.iter().filter(|e| e.present).collect();
    if a.json {
        print_json(&serde_json::json!({
            "cluster": db.superblock().cluster_name,
            "nodes": present.iter().map(|e| serde_json::json!({
                "node": e.node, "name": e.name, "master_eligible": e.master_eligible, "address": e.address,
            })).collect::<Vec<_>>(),
            "warnings": warnings,
        }))?;
    } else {
        println!("{:<5} {:<20} {:<16} ADDRESS", "NODE", "NAME", "MASTER-ELIGIBLE");
        for e in &present {
            println!(
                "{:<5} {:<20} {:<16} {}",
                e.node.0,
                e.name,
                if e.master_eligible { "yes" } else { "no" },
                e.address
            );
        }
    }
    for w in &warnings {
        eprintln!("sdc: warning: {} (see sdc inspect)", w.text);
    }
    Ok(exit::OK)
}
