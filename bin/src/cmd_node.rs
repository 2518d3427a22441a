//! `sdc node add | list | remove`: the persistent node table.

use crate::cli::{NodeAddArgs, NodeRemoveArgs, ReadArgs};
use crate::util::{admin_lock, node_id, open_db, print_json, snapshot};
use crate::{exit, fail, CmdResult};
use membership_db::daemon::unix_ms;
use membership_db::format::{validate_address, validate_node_name, NodeEntry};
use membership_db::status::ClusterStatus;

pub fn add(a: NodeAddArgs) -> CmdResult {
    validate_node_name(&a.name)?;
    validate_address(&a.address)?;
    let _lock = admin_lock(&a.disk.disk)?;
    let db = open_db(&a.disk, true)?;
    let node = node_id(&db, a.node)?;
    let copies = db.read_node_entry_copies()?;
    for entry in db.read_node_table()?.iter().flatten().filter(|e| e.present) {
        if entry.node == node {
            return fail(format!("node {node} already exists (name {}); remove it first", entry.name));
        }
        if entry.name == a.name {
            return fail(format!("name {} is already used by node {}", a.name, entry.node));
        }
    }
    let entry = NodeEntry {
        node,
        seq: db.next_node_entry_seq(&copies[node.index()]),
        present: true,
        master_eligible: !a.no_master_eligible,
        name: a.name.clone(),
        address: a.address.clone(),
        updated_unix_ms: unix_ms(),
        leave_requests: 0,
    };
    db.write_node_entry(&entry)?;
    let role = if entry.master_eligible { "master-eligible" } else { "not master-eligible" };
    println!("added node {node} ({}), {role}", entry.name);
    Ok(exit::OK)
}

pub fn remove(a: NodeRemoveArgs) -> CmdResult {
    let _lock = admin_lock(&a.disk.disk)?;
    let db = open_db(&a.disk, true)?;
    let node = node_id(&db, a.node)?;
    let copies = db.read_node_entry_copies()?;
    let table = db.read_node_table()?;
    match &table[node.index()] {
        Ok(e) if !e.present => return fail(format!("node {node} is not in the node table")),
        _ => {}
    }
    let status = ClusterStatus::of(&snapshot(&db)?);
    if status.nodes.iter().any(|n| n.node == node && n.live) {
        return fail(format!("node {node} is live; stop it (sdc leave or SIGTERM) before removing it"));
    }
    let entry = NodeEntry {
        updated_unix_ms: unix_ms(),
        ..NodeEntry::absent(node, db.next_node_entry_seq(&copies[node.index()]))
    };
    db.write_node_entry(&entry)?;
    println!("removed node {node}");
    Ok(exit::OK)
}

pub fn list(a: ReadArgs) -> CmdResult {
    let db = open_db(&a.disk, false)?;
    let table = db.read_node_table()?;
    let present: Vec<&NodeEntry> = table.iter().flatten().filter(|e| e.present).collect();
    if a.json {
        print_json(&serde_json::json!({
            "cluster": db.superblock().cluster_name,
            "nodes": present.iter().map(|e| serde_json::json!({
                "node": e.node, "name": e.name, "master_eligible": e.master_eligible, "address": e.address,
            })).collect::<Vec<_>>(),
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
    for bad in table.iter().filter_map(|r| r.as_ref().err()) {
        eprintln!("sdc: warning: {bad}; that node is not listed (see sdc inspect)");
    }
    Ok(exit::OK)
}
