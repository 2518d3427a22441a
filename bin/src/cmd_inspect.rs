//! `sdc inspect`: every region decoded with its offset; every corrupt record named.

use crate::cli::ReadArgs;
use crate::util::{print_json, utc};
use crate::{exit, CmdResult};
use membership_db::db::{probe, read_superblocks, MembershipDb, Probe};
use membership_db::error::CorruptRecord;
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

/// Both copies of every node's record of a double-buffered region, each with its offset.
fn copies_section<T: serde::Serialize + Clone>(
    copies: &[Copies<T>],
    offset: impl Fn(NodeId, usize) -> u64,
    bad: &mut Vec<CorruptRecord>,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, c) in copies.iter().enumerate() {
        let node = NodeId::from_index(i);
        for (copy, r) in c.iter().enumerate() {
            let mut v = record(r, offset(node, copy), bad);
            v["node"] = json!(node);
            v["copy"] = json!(copy);
            out.push(v);
        }
    }
    out
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
    // Both superblocks damaged or overwritten on a disk that holds a cluster (rather than a
    // disk that never held one): report them as corrupt records.
    if let Probe::Damaged(damaged) = probe(disk.as_ref())? {
        if a.json {
            print_json(&json!({
                "disk": { "path": a.disk.disk, "bytes": disk_bytes, "io": described },
                "superblock": null,
                "corrupt": damaged.iter().map(corrupt_json).collect::<Vec<_>>(),
            }))?;
        } else {
            for c in &damaged {
                println!("{c}");
            }
        }
        eprintln!(
            "sdc: error: both superblock copies of this cluster disk are damaged ({}); reformat it with sdc format --force after stopping every node",
            damaged.first().map_or(String::new(), |c| c.to_string())
        );
        return Ok(exit::CORRUPT);
    }
    let db = MembershipDb::open(disk)?;
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
    let node_entries = copies_section(&db.read_node_entry_copies()?, |n, c| layout.node_entry_offset(n, c), &mut bad);
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
    let claims = copies_section(&db.read_claim_copies()?, |n, c| layout.claim_offset(n, c), &mut bad);
    let requests = copies_section(&db.read_request_copies()?, |n, c| layout.node_request_offset(n, c), &mut bad);
    let acks = copies_section(&db.read_ack_copies()?, |n, c| layout.ack_offset(n, c), &mut bad);
    let stamp = record(&db.read_config_stamp()?, layout.config_stamp_offset(), &mut bad);
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
                "link_timeout_ms": sb.link_timeout_ms,
                "cluster_key_fingerprint": sb.key_fingerprint(),
                "created": utc(sb.created_unix_ms),
            },
            "regions": layout.regions,
            "node_table": node_entries,
            "config_stamp": stamp,
            "heartbeats": heartbeats,
            "claims": claims,
            "cluster_state": states,
            "requests": requests,
            "acks": acks,
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
            &stamp,
            &heartbeats,
            &claims,
            &states,
            &requests,
            &acks,
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
    stamp: &Value,
    heartbeats: &[Value],
    claims: &[Value],
    states: &[Value],
    requests: &[Value],
    acks: &[Value],
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
        "  timing: heartbeat {} ms, dead {} ms, fence {} ms, link timeout {} ms",
        sb.timing.heartbeat_ms, sb.timing.dead_ms, sb.timing.fence_ms, sb.link_timeout_ms
    );
    println!("  cluster key fingerprint {} (crc32 of the key; the key itself is never shown)", sb.key_fingerprint());
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
    let head = format!("  config stamp @{}", stamp["offset"]);
    match status_of(stamp) {
        Some(err) => println!("{head}: {err}"),
        None => println!(
            "{head}: cluster {} node table generation {} written {}",
            stamp["record"]["cluster_uuid"].as_str().unwrap_or(""),
            stamp["record"]["table_generation"],
            utc(stamp["record"]["written_unix_ms"].as_u64().unwrap_or(0))
        ),
    }
    let mut never = 0;
    for v in heartbeats {
        let head = format!("  node {} @{}", v["node"], v["offset"]);
        match status_of(v) {
            Some(err) => println!("{head}: {err}"),
            None if v["record"]["state"] == json!("never") => never += 1,
            None => {
                let r = &v["record"];
                println!(
                    "{head}: {} incarnation {} counter {} master-epoch {} claim-epoch {} holds state {}/{} request {} acks {} host {} pid {} written {}",
                    r["state"].as_str().unwrap_or(""),
                    r["incarnation"],
                    r["counter"],
                    r["master_epoch"],
                    r["claim_epoch"],
                    r["cluster_state"]["epoch"],
                    r["cluster_state"]["seq"],
                    r["request_seq"],
                    r["ack_seq"],
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
    println!("\nnode records @{}", layout.region(RegionKind::NodeRecords).offset);
    for (what, section) in [("request", requests), ("acknowledgements", acks)] {
        let mut initial = 0;
        for v in section {
            let head = format!("  node {} {what} copy {} @{}", v["node"], v["copy"], v["offset"]);
            match status_of(v) {
                Some(err) => println!("{head}: {err}"),
                None if v["record"]["incarnation"] == json!(0) => initial += 1,
                None => {
                    let r = &v["record"];
                    let detail = match what {
                        "request" => format!(
                            "want {} leave requests honoured {}",
                            r["want"].as_str().unwrap_or(""),
                            r["leave_requests_seen"]
                        ),
                        _ => format!("{} acknowledgement(s)", r["acks"].as_array().map_or(0, Vec::len)),
                    };
                    println!("{head}: seq {} incarnation {} {detail}", r["seq"], r["incarnation"]);
                }
            }
        }
        println!("  ({initial} initial {what} copies not shown)");
    }
    let r = layout.region(RegionKind::Layers);
    println!("\n{} @{}: {} bytes reserved for later layers", RegionKind::Layers.name(), r.offset, r.len);
}
