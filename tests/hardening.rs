//! Regression tests for the faults of issue 7 (a hostile tester's findings), each with real
//! `sdc join` daemons on a disk file (the [`Cluster`] fixture of `tests/common`):
//!
//! 1. a damaged claim block (of a node outside the table, of a killed or stopped follower, of
//!    the master itself) does not stop elections;
//! 2. one damaged copy of a running node's own claim block is repaired, not taken for another
//!    daemon's write (the node does not fence); status of a stopped cluster with a damaged
//!    claim copy warns and keeps its epoch;
//! 3. a damaged newest node-table copy is named, does not make a running node vanish, and is
//!    repaired by `sdc node add`;
//! 4. (c) zeroed cluster-state copies under a running cluster are warned about, and rewritten
//!    at the next change ((a) and (b) need no daemon: they are in `tests/cli.rs`);
//! 5. `sdc leave` issued while the node's daemon restarts is honoured;
//! 6. SIGTERM (and `sdc leave`) when no master can exist ends with status 7;
//! 7. truncating the disk file under mmap daemons fences every one (status 5, not SIGBUS);
//! 9. a restart after the forced leave takes the slot at once;
//! 10. every fence line has one format (frozen master, truncated disk).
//!
//! Damage is random bytes written over records whose offsets come from `sdc inspect --json`,
//! never hard-coded. Every wait polls a condition with a generous deadline; the fixture kills
//! every daemon when a test ends and keeps the disk and logs of a failed test.

#[path = "common/mod.rs"]
mod common;

use common::*;
use sdc_procs::procs::LogLine;
use serde_json::Value;
use std::cell::RefCell;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

// -------------------------------------------------------------------------------------------
// Reading a damaged disk: status and inspect that report damage (the fixture's readers treat
// any damage as a failure)

/// `sdc status --json` on a disk that may hold damaged records: it must succeed; returns the
/// status and the command's stderr (its warnings).
#[track_caller]
fn status_warn(c: &Cluster) -> (Value, String) {
    let out = c.sdc(&["status", "--json"]);
    if !out.status.success() {
        panic!("sdc status failed: {}\n{}", describe(&out), c.logs());
    }
    assert_no_panic(&out);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sdc status --json printed no JSON ({e}): {}", describe(&out)));
    (v, stderr(&out))
}

/// Waits until `sdc status` (damage allowed) satisfies `cond`, returning that status.
#[track_caller]
fn wait_status_warn(c: &Cluster, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let last = RefCell::new(Value::Null);
    poll_until(
        DEADLINE,
        what,
        || {
            let (s, _) = status_warn(c);
            let ok = cond(&s);
            *last.borrow_mut() = s.clone();
            ok.then_some(s)
        },
        || format!("last status: {:#}\n{}", last.borrow(), c.logs()),
    )
}

/// `sdc inspect --json` on a disk that may hold damaged records: exit 0 (none) or 3 (some),
/// JSON either way.
#[track_caller]
fn inspect_warn(c: &Cluster) -> Value {
    let out = c.sdc(&["inspect", "--json"]);
    if !matches!(out.status.code(), Some(0) | Some(3)) {
        panic!("sdc inspect failed: {}\n{}", describe(&out), c.logs());
    }
    assert_no_panic(&out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sdc inspect --json printed no JSON ({e}): {}", describe(&out)))
}

/// The corrupt records `inspect --json` lists, as (kind, offset).
fn corrupt_records(inspect: &Value) -> Vec<(String, u64)> {
    inspect["corrupt"]
        .as_array()
        .expect("corrupt in inspect")
        .iter()
        .map(|r| (r["kind"].as_str().unwrap_or("?").to_string(), r["offset"].as_u64().expect("offset")))
        .collect()
}

/// The offsets status's warnings name.
fn warned_offsets(status: &Value) -> Vec<u64> {
    status["warnings"].as_array().expect("warnings in status").iter().filter_map(|w| w["offset"].as_u64()).collect()
}

/// A node's membership state as status shows it (`unknown` when no readable copy holds it).
fn state(s: &Value, node: u16) -> &str {
    node_status(s, node)["state"].as_str().unwrap_or("unknown")
}

fn idle(s: &Value) -> bool {
    s["transitions"].as_array().is_some_and(|t| t.is_empty())
}

/// Nodes `nodes` are joined and live, a master is decided, nothing is in flight.
fn all_joined(s: &Value, nodes: &[u16]) -> bool {
    master(s).is_some() && idle(s) && nodes.iter().all(|&n| state(s, n) == "joined" && is_live(s, n))
}

/// At most one heartbeat in state up acts as master of the status epoch, and it is the status
/// master's (read with an `inspect` that tolerates damage).
#[track_caller]
fn assert_single_master(c: &Cluster, s: &Value) {
    let e = epoch(s);
    let v = inspect_warn(c);
    let claiming: Vec<u16> = v["heartbeats"]
        .as_array()
        .expect("heartbeats")
        .iter()
        .filter(|h| h["record"]["state"] == "up" && h["record"]["master_epoch"].as_u64() == Some(e))
        .map(|h| h["node"].as_u64().unwrap() as u16)
        .collect();
    assert!(
        claiming.len() <= 1 && master(s).is_none_or(|m| claiming.iter().all(|&n| n == m)),
        "heartbeats of nodes {claiming:?} act as master of epoch {e} (status master {:?})\n{s:#}\n{}",
        master(s),
        c.logs()
    );
}

// -------------------------------------------------------------------------------------------
// Damaging records

/// The size of a slot record (claim, node entry, heartbeat, superblock copy).
fn slot_bytes(inspect: &Value) -> usize {
    inspect["superblock"]["slot_bytes"].as_u64().expect("slot_bytes") as usize
}

/// Writes pseudo-random bytes over `len` bytes at `offset`.
fn smash(disk: &Path, offset: u64, len: usize) {
    write_at(disk, offset, &pseudo_random_bytes(len, 0x5dc_0000 ^ offset));
}

/// The (offset, seq) of both copies of a double-buffered slot record of `node` in `section`.
#[track_caller]
fn copies(inspect: &Value, section: &str, node: u16) -> Vec<(u64, u64)> {
    let v: Vec<(u64, u64)> = inspect[section]
        .as_array()
        .unwrap_or_else(|| panic!("no {section} in inspect"))
        .iter()
        .filter(|r| r["node"].as_u64() == Some(node as u64))
        .map(|r| (r["offset"].as_u64().expect("offset"), r["record"]["seq"].as_u64().expect("seq of a good copy")))
        .collect();
    assert_eq!(v.len(), 2, "two {section} copies of node {node}: {:#}", inspect[section]);
    v
}

/// The offset of the newest copy (the higher seq) of `node`'s record in `section`.
#[track_caller]
fn newest_copy(inspect: &Value, section: &str, node: u16) -> u64 {
    let c = copies(inspect, section, node);
    assert_ne!(c[0].1, c[1].1, "the two {section} copies of node {node} have one seq: {c:?}");
    c.into_iter().max_by_key(|&(_, seq)| seq).unwrap().0
}

/// Random bytes over both copies of `node`'s claim block; returns their offsets.
fn smash_claim_block(c: &Cluster, node: u16) -> [u64; 2] {
    let v = c.inspect_json();
    let slot = slot_bytes(&v);
    let offs = [0, 1].map(|copy| record_offset(&v, "claims", node as u64, Some(copy)));
    for off in offs {
        smash(&c.disk, off, slot);
    }
    offs
}

// -------------------------------------------------------------------------------------------
// Daemons and logs

/// Starts `sdc join` on each of `nodes`, returning the processes in that order.
fn start(c: &Cluster, nodes: &[u16]) -> Vec<Proc> {
    nodes.iter().map(|&n| c.join(n)).collect()
}

/// Starts nodes 1..=n of `c` and waits until each daemon says it joined and status agrees
/// (the master records a join complete before the node reads it: without layers, a node
/// signalled in between has not joined in its own eyes).
fn start_joined(c: &Cluster, n: u16) -> (Vec<Proc>, Value) {
    let nodes: Vec<u16> = (1..=n).collect();
    let procs = start(c, &nodes);
    for &p in &procs {
        let node = c.node_of(p);
        c.wait_until(DEADLINE, &format!("node {node} logs that it joined"), || c.log(p).contains("joined the cluster"));
    }
    let s = c.wait_status(&format!("nodes {nodes:?} are joined"), |s| all_joined(s, &nodes));
    (procs, s)
}

/// A formatted cluster of nodes 1..=n, all started and joined.
fn joined_cluster(n: u16) -> (Cluster, Vec<Proc>, Value) {
    let c = Cluster::new(n);
    let (procs, s) = start_joined(&c, n);
    (c, procs, s)
}

/// The highest-numbered of `nodes` that is not `m`.
fn other_than(m: u16, nodes: &[u16]) -> u16 {
    *nodes.iter().rev().find(|&&n| n != m).expect("another node")
}

/// Every line of `p`'s log that contains "FENCED" has the one fence-line format:
/// `<UTC time stamp> sdc[test node N nN] FENCED: <why>`, stamped within the test's run.
/// Returns the number of such lines.
#[track_caller]
fn assert_fence_lines(c: &Cluster, p: Proc, since_unix_ms: u64) -> usize {
    let node = c.node_of(p);
    let log = c.log(p);
    let prefix = format!("sdc[test node {node} n{node}] FENCED: ");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("FENCED")).collect();
    for line in &lines {
        let parsed =
            LogLine::parse(line).unwrap_or_else(|| panic!("fence line without a UTC time stamp: {line:?}\n{log}"));
        let (_, rest) = line.split_once(' ').expect("a stamped line has a space");
        assert!(
            rest.starts_with(&prefix),
            "fence line should start with {prefix:?} after its time stamp: {line:?}\n{log}"
        );
        assert!(parsed.text.starts_with("FENCED: "), "{line:?}");
        let now = membership_db::time::unix_ms();
        assert!(
            (since_unix_ms.saturating_sub(1000)..=now + 1000).contains(&parsed.unix_ms),
            "fence line stamped {} outside the test's run ({since_unix_ms}..{now}): {line:?}",
            parsed.unix_ms
        );
    }
    lines.len()
}

/// The non-empty lines of a command's stderr.
fn err_lines(out: &Output) -> Vec<String> {
    stderr(out).lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()
}

// -------------------------------------------------------------------------------------------
// 1. A damaged claim block must not stop elections

/// 1a. Random bytes over both copies of the claim block of node 5, which is not in the node
/// table and never ran: nodes 1-3 still elect a master and all join; status names the damage.
#[test]
fn damaged_claim_block_of_a_node_outside_the_table_does_not_stop_the_first_election() {
    let c = Cluster::with(ClusterSpec { max_nodes: 8, ..ClusterSpec::nodes(3) });
    let offs = smash_claim_block(&c, 5);
    let v = inspect_warn(&c);
    let corrupt: Vec<u64> = corrupt_records(&v).into_iter().map(|(_, o)| o).collect();
    assert_eq!(corrupt, offs.to_vec(), "inspect names both damaged copies: {:#}", v["corrupt"]);

    start(&c, &[1, 2, 3]);
    let s = wait_status_warn(&c, "a master is elected and nodes 1-3 are joined", |s| all_joined(s, &[1, 2, 3]));
    assert!(epoch(&s) >= 1, "{s:#}");
    assert_single_master(&c, &s);
    let warned = warned_offsets(&s);
    for off in offs {
        assert!(warned.contains(&off), "status should name the damaged claim copy at {off}: {s:#}");
    }
}

/// 1b. Random bytes over both copies of a follower's claim block, and that follower killed;
/// then the master killed: the last node becomes master in a later epoch, and status names the
/// damaged records.
#[test]
fn damaged_claim_block_of_a_killed_follower_does_not_stop_the_next_election() {
    let (c, procs, s) = joined_cluster(3);
    let (m, e) = (master(&s).unwrap(), epoch(&s));
    let f = other_than(m, &[1, 2, 3]);
    let survivor = [1, 2, 3].into_iter().find(|&n| n != m && n != f).unwrap();
    let offs = smash_claim_block(&c, f);
    c.kill9(procs[f as usize - 1]);
    c.kill9(procs[m as usize - 1]);

    let s = wait_status_warn(&c, &format!("node {survivor} is master in an epoch after {e}"), |s| {
        master(s) == Some(survivor) && epoch(s) > e
    });
    assert_single_master(&c, &s);
    c.assert_running(procs[survivor as usize - 1]);
    let (s, err) = status_warn(&c);
    let warned = warned_offsets(&s);
    for off in offs {
        assert!(warned.contains(&off), "status should name the damaged claim copy at {off}: {s:#}");
        assert!(err.contains(&format!("offset {off}")), "status stderr should name offset {off}:\n{err}");
    }
}

/// 1b. The same with the damaged block a stopped node's (it left with SIGTERM first).
#[test]
fn damaged_claim_block_of_a_stopped_node_does_not_stop_the_next_election() {
    let (c, procs, s) = joined_cluster(3);
    let (m, e) = (master(&s).unwrap(), epoch(&s));
    let f = other_than(m, &[1, 2, 3]);
    let survivor = [1, 2, 3].into_iter().find(|&n| n != m && n != f).unwrap();
    c.signal(procs[f as usize - 1], libc::SIGTERM);
    let st = c.wait_exit(procs[f as usize - 1]);
    assert_eq!(st.code(), Some(0), "node {f} after SIGTERM: {}\n{}", exit_text(st), c.logs());
    let offs = smash_claim_block(&c, f);
    c.kill9(procs[m as usize - 1]);

    let s = wait_status_warn(&c, &format!("node {survivor} is master in an epoch after {e}"), |s| {
        master(s) == Some(survivor) && epoch(s) > e
    });
    assert_single_master(&c, &s);
    c.assert_running(procs[survivor as usize - 1]);
    let warned = warned_offsets(&status_warn(&c).0);
    for off in offs {
        assert!(warned.contains(&off), "status should name the damaged claim copy at {off}: {warned:?}");
    }
}

/// 1c. Random bytes over both copies of the master's own claim block, then the master killed:
/// another node becomes master in a higher epoch.
#[test]
fn damaged_claim_block_of_the_killed_master_does_not_stop_the_next_election() {
    let (c, procs, s) = joined_cluster(3);
    let (m, e) = (master(&s).unwrap(), epoch(&s));
    let offs = smash_claim_block(&c, m);
    c.kill9(procs[m as usize - 1]);

    let s = wait_status_warn(&c, &format!("a node other than {m} is master in an epoch after {e}"), |s| {
        master(s).is_some_and(|n| n != m) && epoch(s) > e
    });
    assert_single_master(&c, &s);
    for n in [1, 2, 3].into_iter().filter(|&n| n != m) {
        c.assert_running(procs[n as usize - 1]);
        assert!(!c.log(procs[n as usize - 1]).contains("FENCED"), "{}", c.logs());
    }
    // Nobody but its owner writes the block: it stays damaged, and status says so.
    let warned = warned_offsets(&status_warn(&c).0);
    for off in offs {
        assert!(warned.contains(&off), "status should name the damaged claim copy at {off}: {warned:?}");
    }
}

// -------------------------------------------------------------------------------------------
// 2. One damaged copy of a node's own claim block is not another daemon

/// The newest copy of a running follower's claim block damaged, then an election (the master
/// killed): the follower does not fence, keeps running, and its block is repaired.
#[test]
fn one_damaged_copy_of_a_running_nodes_claim_block_is_repaired_not_fenced() {
    let (c, procs, s) = joined_cluster(3);
    let (m, e) = (master(&s).unwrap(), epoch(&s));
    let f = other_than(m, &[1, 2, 3]);
    let pf = procs[f as usize - 1];
    let v = c.inspect_json();
    let off = newest_copy(&v, "claims", f);
    smash(&c.disk, off, slot_bytes(&v));
    c.kill9(procs[m as usize - 1]);

    let s = wait_status_warn(&c, &format!("a node other than {m} is master in an epoch after {e}"), |s| {
        master(s).is_some_and(|n| n != m) && epoch(s) > e
    });
    assert_single_master(&c, &s);
    // The block is repaired: inspect finds no damaged claim record.
    c.wait_until(DEADLINE, &format!("node {f} repairs its claim block at {off}"), || {
        !corrupt_records(&inspect_warn(&c)).iter().any(|(kind, _)| kind == "claim")
    });
    // And the owner of the block did not take the damage for another daemon's write.
    c.hold("the surviving nodes keep running", Duration::from_millis(DEAD_MS as u64), |_| {
        [1, 2, 3].into_iter().filter(|&n| n != m).all(|n| c.try_exit(procs[n as usize - 1]).is_none())
    });
    assert_eq!(c.try_exit(pf), None, "node {f} exited\n{}", c.logs());
    assert!(!c.log(pf).contains("FENCED"), "node {f} fenced over a damaged copy of its own block\n{}", c.logs());
}

/// The newest copy of the last master's claim block damaged with every daemon stopped: status
/// warns in one line naming its offset, and still shows the cluster's epoch, not 0.
#[test]
fn stopped_cluster_with_a_damaged_master_claim_copy_keeps_its_epoch_in_status() {
    let (c, procs, s) = joined_cluster(3);
    let e = epoch(&s);
    for &p in &procs {
        c.signal(p, libc::SIGTERM);
    }
    for &p in &procs {
        let st = c.wait_exit(p);
        assert_eq!(st.code(), Some(0), "node {} after SIGTERM: {}\n{}", c.node_of(p), exit_text(st), c.logs());
    }
    // The last master: the node whose claim block decided the highest epoch.
    let v = c.inspect_json();
    let (last, decided) = v["claims"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"]["decided"] == true)
        .map(|r| (r["node"].as_u64().unwrap() as u16, r["record"]["epoch"].as_u64().unwrap()))
        .max_by_key(|&(_, epoch)| epoch)
        .unwrap_or_else(|| panic!("no decided claim: {:#}", v["claims"]));
    assert!(decided >= e, "decided epoch {decided} below the running cluster's {e}");
    let off = newest_copy(&v, "claims", last);
    smash(&c.disk, off, slot_bytes(&v));

    let (s, err) = status_warn(&c);
    let naming: Vec<&str> = err.lines().filter(|l| l.contains(&format!("offset {off}"))).collect();
    assert_eq!(naming.len(), 1, "one stderr line should name the damaged claim copy at {off}:\n{err}");
    assert!(naming[0].contains("warning"), "{err}");
    assert!(warned_offsets(&s).contains(&off), "{s:#}");
    assert!(epoch(&s) >= e, "status shows epoch {} after the cluster ran in epoch {e}: {s:#}\n{err}", epoch(&s));
    for n in [1, 2, 3] {
        assert!(!is_live(&s, n), "{s:#}");
    }
}

// -------------------------------------------------------------------------------------------
// 3. A damaged newest node-table copy does not make a node vanish silently

#[test]
fn damaged_newest_node_table_copy_is_named_and_repaired_by_node_add() {
    let (c, procs, _) = joined_cluster(3);
    let v = c.inspect_json();
    let off = newest_copy(&v, "node_table", 2);
    smash(&c.disk, off, slot_bytes(&v));

    // status: warns naming the offset, and still shows node 2 (its heartbeat is live).
    let (s, err) = status_warn(&c);
    assert!(warned_offsets(&s).contains(&off), "status should name the damaged node entry at {off}: {s:#}\n{err}");
    assert!(err.contains(&format!("offset {off}")), "status stderr should name offset {off}:\n{err}");
    assert!(is_live(&s, 2), "node 2 is still shown, and live: {s:#}");

    // node list: warns naming the offset, in text and in JSON.
    let out = c.sdc(&["node", "list"]);
    assert_ok(&out);
    assert!(stderr(&out).contains(&format!("offset {off}")), "node list should name offset {off}: {}", describe(&out));
    let list = json_of(&c.sdc(&["node", "list", "--json"]));
    let warned: Vec<u64> = list["warnings"].as_array().unwrap().iter().filter_map(|w| w["offset"].as_u64()).collect();
    assert!(warned.contains(&off), "node list --json should name offset {off}: {list:#}");

    // Stopped, node 2 cannot join again: its older copy says it is absent, and the error says
    // so in one line, with the way to re-add it.
    c.signal(procs[1], libc::SIGTERM);
    let st = c.wait_exit(procs[1]);
    assert_eq!(st.code(), Some(0), "node 2 after SIGTERM: {}\n{}", exit_text(st), c.logs());
    let p = c.join(2);
    let st = c.wait_exit(p);
    let log = c.log(p);
    assert_eq!(st.code(), Some(1), "sdc join --node 2 with its newest entry damaged: {}\n{log}", exit_text(st));
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{log}");
    let line = lines[0].to_lowercase();
    for needle in ["sdc: error:", "older copy", &format!("offset {off}"), "sdc node add --node 2"] {
        assert!(line.contains(needle), "the join error should mention {needle:?}: {log}");
    }

    // node add repairs it: it writes the damaged copy (with an address: the older copy, of the
    // node before it was added, has none).
    let address = format!("127.0.0.1:{}", free_port());
    let out = c.sdc(&["node", "add", "--node", "2", "--name", "n2", "--address", &address]);
    assert_ok(&out);
    let v = inspect_warn(&c);
    assert_eq!(corrupt_records(&v), vec![], "node add should rewrite the damaged copy at {off}");
    let entry = v["node_table"].as_array().unwrap().iter().find(|r| r["offset"].as_u64() == Some(off)).unwrap();
    assert_eq!((&entry["record"]["present"], &entry["record"]["name"]), (&Value::Bool(true), &Value::from("n2")));
    c.join(2);
    c.wait_status("node 2 is joined again", |s| all_joined(s, &[1, 2, 3]));
}

// -------------------------------------------------------------------------------------------
// 4c. All eight cluster-state copies zeroed under a running cluster

#[test]
fn zeroed_cluster_state_is_warned_about_and_rewritten_at_the_next_change() {
    let (c, procs, _) = joined_cluster(3);
    let (off, len) = region(&c.inspect_json(), "cluster-state");
    write_at(&c.disk, off, &vec![0u8; len as usize]);

    // Status must not show the cluster as inactive: the states are unknown, and it says why
    // (unless the master already wrote the state again).
    let (s, err) = status_warn(&c);
    let warned =
        s["warnings"].as_array().unwrap().iter().any(|w| w["text"].as_str().unwrap().contains("cluster state"));
    let states = [1, 2, 3].map(|n| state(&s, n).to_string());
    assert!(
        (warned && states.iter().all(|st| st == "unknown")) || states.iter().all(|st| st == "joined"),
        "with every cluster state copy zeroed, status shows {states:?} (warned: {warned}): {s:#}\n{err}"
    );
    if warned {
        assert!(
            err.contains("warning") && err.contains("cluster state"),
            "the warning should be on stderr too:\n{err}"
        );
        let text = stdout(&c.sdc(&["status"]));
        assert!(text.contains("unknown"), "the table says the states are unknown:\n{text}");
    }

    // A change makes the master write the state again: consistent, with no warning.
    let out = c.sdc(&["leave", "--node", "3", "--timeout", "30"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("node 3 left the cluster"), "{}", describe(&out));
    let st = c.wait_exit(procs[2]);
    assert_eq!(st.code(), Some(0), "node 3 after sdc leave: {}\n{}", exit_text(st), c.logs());
    let s = wait_status_warn(&c, "status is consistent again: 1 and 2 joined, 3 inactive, no warning", |s| {
        all_joined(s, &[1, 2])
            && state(s, 3) == "inactive"
            && !is_live(s, 3)
            && s["warnings"].as_array().unwrap().is_empty()
    });
    assert_single_master(&c, &s);
}

// -------------------------------------------------------------------------------------------
// 5. `sdc leave` issued while the node's daemon restarts is not lost

#[test]
fn sdc_leave_during_a_restart_is_honoured() {
    let (c, procs, _) = joined_cluster(3);
    let mut p3 = procs[2];
    for round in 1..=3 {
        c.kill9(p3);
        p3 = c.join(3);
        // The scenario's own pause: the leave comes while the new daemon is starting.
        std::thread::sleep(Duration::from_millis(300));
        let out = c.sdc(&["leave", "--node", "3", "--timeout", "30"]);
        if !out.status.success() {
            panic!("round {round}: sdc leave during the restart failed: {}\n{}", describe(&out), c.logs());
        }
        let st = c.wait_exit(p3);
        assert_eq!(
            st.code(),
            Some(0),
            "round {round}: node 3's new daemon should leave (exit 0): {}\n{}",
            exit_text(st),
            c.logs()
        );
        assert_no_panic(&out);
        assert!(stdout(&out).contains("node 3 left the cluster"), "round {round}: {}", describe(&out));
        let log = c.log(p3);
        assert!(log.contains("leave requested (sdc leave)"), "round {round}: the new daemon honours the leave:\n{log}");
        c.wait_status(&format!("round {round}: node 3 is inactive, 1 and 2 joined"), |s| {
            all_joined(s, &[1, 2]) && state(s, 3) == "inactive" && !is_live(s, 3)
        });
        // Back in, for the next round.
        p3 = c.join(3);
        c.wait_until(DEADLINE, &format!("round {round}: node 3 logs that it joined again"), || {
            c.log(p3).contains("joined the cluster")
        });
        c.wait_status(&format!("round {round}: node 3 is joined again"), |s| all_joined(s, &[1, 2, 3]));
    }
}

// -------------------------------------------------------------------------------------------
// 6. SIGTERM when no master can exist

#[test]
fn stop_when_no_master_can_exist_ends_with_status_7() {
    let c = Cluster::with(ClusterSpec::nodes(3).not_eligible(2).not_eligible(3));
    let (procs, s) = start_joined(&c, 3);
    assert_eq!(master(&s), Some(1), "{s:#}");
    c.kill9(procs[0]);

    // SIGTERM: no master can sequence the leave; the daemon stops without it, exit 7.
    c.signal(procs[1], libc::SIGTERM);
    let st = c.wait_exit(procs[1]);
    assert_eq!(st.code(), Some(7), "node 2 after SIGTERM with no master: {}\n{}", exit_text(st), c.logs());
    let log = c.log(procs[1]);
    // (It also says when it decides to: "stopping WITHOUT a graceful leave: <why>".)
    let said: Vec<&str> =
        log.lines().filter(|l| l.to_lowercase().contains("stopped without a graceful leave")).collect();
    assert_eq!(said.len(), 1, "node 2 says once that it stopped without a graceful leave:\n{log}");
    assert_eq!(log.lines().last(), Some(said[0]), "and that is its last word:\n{log}");
    assert!(LogLine::parse(said[0]).is_some(), "{log}");

    // sdc leave: ends too, before its --timeout, with one error line saying why.
    let began = Instant::now();
    let out = c.sdc(&["leave", "--node", "3", "--timeout", "30"]);
    let took = began.elapsed();
    assert!(took < Duration::from_secs(30), "sdc leave ran {took:?}, past its --timeout: {}", describe(&out));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_no_panic(&out);
    let errors: Vec<String> = err_lines(&out).into_iter().filter(|l| l.starts_with("sdc: error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {}", describe(&out));
    assert!(
        errors[0].contains("node 3 stopped without completing a graceful leave"),
        "the error should say node 3 stopped without a graceful leave: {}",
        describe(&out)
    );
    let st = c.wait_exit(procs[2]);
    assert_eq!(st.code(), Some(7), "node 3 after sdc leave with no master: {}\n{}", exit_text(st), c.logs());
}

// -------------------------------------------------------------------------------------------
// 7 and 10. Truncating the disk file under running mmap daemons

#[test]
fn truncated_disk_fences_every_mmap_daemon_with_status_5_and_one_fence_line() {
    let (c, procs, _) = joined_cluster(3);
    let since = membership_db::time::unix_ms();
    std::fs::OpenOptions::new().write(true).open(&c.disk).expect("open the disk").set_len(4096).expect("truncate");
    for &p in &procs {
        let st = c.wait_exit(p);
        assert_eq!(
            st.code(),
            Some(5),
            "node {} after the disk was truncated: {} (exit 5, not killed by SIGBUS)\n{}",
            c.node_of(p),
            exit_text(st),
            c.logs()
        );
        assert_eq!(assert_fence_lines(&c, p, since), 1, "one FENCED line\n{}", c.logs());
    }
}

// -------------------------------------------------------------------------------------------
// 9. Restart after the forced leave takes the slot at once

#[test]
fn restart_after_the_forced_leave_takes_the_slot_at_once() {
    let (c, procs, s) = joined_cluster(3);
    let m = master(&s).unwrap();
    let f = other_than(m, &[1, 2, 3]);
    let old = incarnation(&s, f).unwrap();
    c.kill9(procs[f as usize - 1]);
    c.wait_status(&format!("node {f} is forced out"), |s| state(s, f) == "inactive" && !is_live(s, f) && idle(s));

    let p = c.join(f);
    c.wait_until(DEADLINE, &format!("node {f} takes over its slot at once"), || {
        c.log(p).contains("taking over its slot at once")
    });
    c.wait_until(DEADLINE, &format!("node {f} logs that it joined"), || c.log(p).contains("joined the cluster"));
    let s = c.wait_status(&format!("node {f} is joined in an incarnation above {old}"), |s| {
        all_joined(s, &[1, 2, 3]) && incarnation(s, f).is_some_and(|i| i > old)
    });
    assert_eq!(master(&s), Some(m), "{s:#}");
}

// -------------------------------------------------------------------------------------------
// 10. The fence line has one format: the frozen master

#[test]
fn frozen_master_fences_on_resume_with_the_one_fence_line_format() {
    let (c, procs, s) = joined_cluster(3);
    let (m, e) = (master(&s).unwrap(), epoch(&s));
    let pm = procs[m as usize - 1];
    let since = membership_db::time::unix_ms();
    c.signal(pm, libc::SIGSTOP);
    // Frozen well past fence-ms: the others judge it dead and elect another master.
    c.wait_status(&format!("a node other than the frozen {m} is master in an epoch after {e}"), |s| {
        master(s).is_some_and(|n| n != m) && epoch(s) > e && !is_live(s, m)
    });
    c.signal(pm, libc::SIGCONT);
    let st = c.wait_exit(pm);
    assert_eq!(st.code(), Some(5), "the resumed master: {}\n{}", exit_text(st), c.logs());
    assert_eq!(assert_fence_lines(&c, pm, since), 1, "one FENCED line\n{}", c.logs());
    for n in [1, 2, 3].into_iter().filter(|&n| n != m) {
        c.assert_running(procs[n as usize - 1]);
        assert!(!c.log(procs[n as usize - 1]).contains("FENCED"), "{}", c.logs());
    }
}
