//! `sdc inspect`: every region decoded with its offset; every corrupt record named.

use crate::cli::ReadArgs;
use crate::util::{print_json, utc};
use crate::{exit, CmdResult};
use membership_db::db::{read_superblocks, MembershipDb};
use membership_db::error::{CorruptRecord, Problem};
use membership_db::format::*;
use membership_db::io::open_disk;
use serde_json::{json, Value};

/// One decoded record, or the reason it is not one.
fn record<T: serde::Serialize>(r: &Result<T, CorruptRecord>, offset: u64, bad: &mut Vec<CorruptRecord>) -> Value {
    match r {
        Ok(v) => json!({ "offset": offset, "ok": true, "record": v }),
        Err(e) => {
            bad.push(e.clone());
            json!({ "offset": offset, "ok": false, "error": e.to_string() })
        }
    }
}

fn corrupt_json(c: &CorruptRecord) -> Value {
    json!({ "kind": c.kind, "offset": c.offset, "problem": c.problem.to_string() })
}

pub fn run(a: ReadArgs) -> CmdResult {
    let disk = open_disk(&a.disk.disk, a.disk.io, false)?;
    let described = disk.describe();
    let disk_bytes = disk.len_bytes();
    // Show both superblock copies even when one is damaged; open() takes the good one.
    let sb_copies = read_superblocks(disk.as_ref())?;
    let db = match MembershipDb::open(disk) {
        Ok(db) => db,
        Err(e) => {
            // Both superblocks damaged (rather than absent): report them as corrupt records.
            let damaged: Vec<&CorruptRecord> = sb_copies
                .iter()
                .filter_map(|r| r.as_ref().err())
                .filter(|c| matches!(c.problem, Problem::Checksum { .. } | Problem::Invalid(_)))
                .collect();
            if damaged.is_empty() {
                return Err(e.into());
            }
            for c in &damaged {
                println!("{c}");
            }
            eprintln!("sdc: error: {e}");
            return Ok(exit::CORRUPT);
        }
    };
    let layout = db.layout().clone();
    let sb = db.superblock().clone();
    let mut bad: Vec<CorruptRecord> = Vec::new();

    let superblocks: Vec<Value> = sb_copies
        .iter()
        .enumerate()
        .map(|(copy, r)| {
            let off = layout.superblock_offset(copy);
            match r {
                Ok(s) => {
                    json!({ "copy": copy, "offset": off, "ok": true, "generation": s.generation })
                }
                Err(e) => {
                    bad.push(e.clone());
                    json!({ "copy": copy, "offset": off, "ok": false, "error": e.to_string() })
                }
            }
        })
        .collect();
    let node_entries: Vec<Value> = db
        .read_node_entry_copies()?
        .iter()
        .zip(NodeId::all(sb.max_nodes))
        .flat_map(|(copies, node)| (0..2).map(move |copy| (node, copy, copies[copy].clone())))
        .map(|(node, copy, r)| {
            let mut v = record(&r, layout.node_entry_offset(node, copy), &mut bad);
            v["node"] = json!(node);
            v["copy"] = json!(copy);
            v
        })
        .collect();
    let heartbeats: Vec<Value> = db
        .read_heartbeats()?
        .iter()
        .zip(NodeId::all(sb.max_nodes))
        .map(|(r, node)| {
            let mut v = record(r, layout.heartbeat_offset(node), &mut bad);
            v["node"] = json!(node);
            v
        })
        .collect();
    let claims: Vec<Value> = db
        .read_claim_copies()?
        .iter()
        .zip(NodeId::all(sb.max_nodes))
        .flat_map(|(copies, node)| (0..2).map(move |copy| (node, copy, copies[copy].clone())))
        .map(|(node, copy, r)| {
            let mut v = record(&r, layout.claim_offset(node, copy), &mut bad);
            v["node"] = json!(node);
            v["copy"] = json!(copy);
            v
        })
        .collect();
    let states: Vec<Value> = db
        .read_cluster_state_copies()?
        .iter()
        .enumerate()
        .map(|(copy, r)| {
            let off = layout.cluster_state_offset(copy);
            match r {
                Ok(None) => json!({ "copy": copy, "offset": off, "ok": true, "record": null }),
                Ok(Some(s)) => json!({ "copy": copy, "offset": off, "ok": true, "record": s }),
                Err(e) => {
                    bad.push(e.clone());
                    json!({ "copy": copy, "offset": off, "ok": false, "error": e.to_string() })
                }
            }
        })
        .collect();

    if a.json {
        print_json(&json!({
            "disk": { "path": a.disk.disk, "bytes": disk_bytes, "io": described },
            "superblock": {
                "copies": superblocks,
                "format_version": FORMAT_VERSION,
                "cluster": sb.cluster_name,
                "uuid": sb.uuid_string(),
                "max_nodes": sb.max_nodes,
                "slot_bytes": sb.slot_bytes,
                "disk_bytes": sb.disk_bytes,
                "timing": sb.timing,
                "created": utc(sb.created_unix_ms),
            },
            "regions": layout.regions,
            "node_table": node_entries,
            "heartbeats": heartbeats,
            "claims": claims,
            "cluster_state": states,
            "corrupt": bad.iter().map(corrupt_json).collect::<Vec<_>>(),
        }))?;
    } else {
        print_text(
            &a,
            &described,
            disk_bytes,
            &sb,
            &layout,
            &superblocks,
            &node_entries,
            &heartbeats,
            &claims,
            &states,
        );
        if bad.is_empty() {
            println!("\ncorrupt records: none");
        } else {
            println!("\ncorrupt records: {}", bad.len());
            for c in &bad {
                println!("  {c}");
            }
        }
    }
    if bad.is_empty() {
        Ok(exit::OK)
    } else {
        eprintln!("sdc: {} corrupt record(s); the first: {}", bad.len(), bad[0]);
        Ok(exit::CORRUPT)
    }
}

fn status_of(v: &Value) -> Option<String> {
    (!v["ok"].as_bool().unwrap_or(false)).then(|| format!("CORRUPT: {}", v["error"].as_str().unwrap_or("")))
}

#[allow(clippy::too_many_arguments)]
fn print_text(
    a: &ReadArgs,
    described: &str,
    disk_bytes: u64,
    sb: &Superblock,
    layout: &Layout,
    superblocks: &[Value],
    node_entries: &[Value],
    heartbeats: &[Value],
    claims: &[Value],
    states: &[Value],
) {
    println!("disk {}: {} bytes ({}), {}", a.disk.disk.display(), disk_bytes, human_bytes(disk_bytes), described);
    println!("\nsuperblock");
    for s in superblocks {
        let state = status_of(s).unwrap_or_else(|| format!("ok, generation {}", s["generation"]));
        println!("  copy {} @{}: {state}", s["copy"], s["offset"]);
    }
    println!(
        "  cluster {} uuid {} format version {FORMAT_VERSION}, created {}",
        sb.cluster_name,
        sb.uuid_string(),
        utc(sb.created_unix_ms)
    );
    println!("  {} node slots of {} bytes; formatted size {} bytes", sb.max_nodes, sb.slot_bytes, sb.disk_bytes);
    println!(
        "  timing: heartbeat {} ms, dead {} ms, fence {} ms",
        sb.timing.heartbeat_ms, sb.timing.dead_ms, sb.timing.fence_ms
    );
    println!("\nregions");
    for r in layout.regions {
        println!("  {:<22} @{:<10} {:>10} bytes ({})", r.kind.name(), r.offset, r.len, human_bytes(r.len));
    }

    println!("\nnode table @{}", layout.region(RegionKind::NodeTable).offset);
    let mut empty = 0;
    for v in node_entries {
        let head = format!("  node {} copy {} @{}", v["node"], v["copy"], v["offset"]);
        match status_of(v) {
            Some(err) => println!("{head}: {err}"),
            None if v["record"]["present"] == json!(true) => {
                let r = &v["record"];
                let eligible =
                    if r["master_eligible"] == json!(true) { "master-eligible" } else { "not master-eligible" };
                println!(
                    "{head}: seq {} {:?} {eligible} address {:?}",
                    r["seq"],
                    r["name"].as_str().unwrap_or(""),
                    r["address"].as_str().unwrap_or("")
                );
            }
            None => empty += 1,
        }
    }
    println!("  ({empty} empty copies not shown)");

    println!("\nheartbeat @{}", layout.region(RegionKind::Heartbeat).offset);
    let mut never = 0;
    for v in heartbeats {
        let head = format!("  node {} @{}", v["node"], v["offset"]);
        match status_of(v) {
            Some(err) => println!("{head}: {err}"),
            None if v["record"]["state"] == json!("never") => never += 1,
            None => {
                let r = &v["record"];
                println!(
                    "{head}: {} incarnation {} counter {} master-epoch {} host {} pid {} written {}",
                    r["state"].as_str().unwrap_or(""),
                    r["incarnation"],
                    r["counter"],
                    r["master_epoch"],
                    r["host"].as_str().unwrap_or(""),
                    r["pid"],
                    utc(r["written_unix_ms"].as_u64().unwrap_or(0))
                );
            }
        }
    }
    println!("  ({never} slots never used not shown)");

    println!("\nclaim @{}", layout.region(RegionKind::Claim).offset);
    let mut initial = 0;
    for v in claims {
        let head = format!("  node {} copy {} @{}", v["node"], v["copy"], v["offset"]);
        match status_of(v) {
            Some(err) => println!("{head}: {err}"),
            None if v["record"]["epoch"] == json!(0) => initial += 1,
            None => {
                let r = &v["record"];
                let value = match &r["value"] {
                    Value::Null => "none".to_string(),
                    val => format!("node {} incarnation {}", val["node"], val["incarnation"]),
                };
                let decided = if r["decided"] == json!(true) { " DECIDED" } else { "" };
                println!(
                    "{head}: seq {} epoch {} mbal {} bal {} value {value}{decided} (writer incarnation {})",
                    r["seq"], r["epoch"], r["mbal"], r["bal"], r["writer_incarnation"]
                );
            }
        }
    }
    println!("  ({initial} initial copies not shown)");

    println!("\ncluster state @{}", layout.region(RegionKind::ClusterState).offset);
    for v in states {
        let head = format!("  copy {} @{}", v["copy"], v["offset"]);
        match status_of(v) {
            Some(err) => println!("{head}: {err}"),
            None if v["record"].is_null() => println!("{head}: never written"),
            None => {
                let r = &v["record"];
                println!(
                    "{head}: epoch {} seq {} master node {} (incarnation {}) written {}",
                    r["epoch"],
                    r["seq"],
                    r["master"],
                    r["master_incarnation"],
                    utc(r["written_unix_ms"].as_u64().unwrap_or(0))
                );
            }
        }
    }
    for kind in [RegionKind::NodeSlots, RegionKind::Layers] {
        let r = layout.region(kind);
        println!("\n{} @{}: {} bytes reserved for later layers", kind.name(), r.offset, r.len);
    }
}
