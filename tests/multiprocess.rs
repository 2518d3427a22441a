//! Several `sdc join` daemons on one disk: election, failover, refusal of a second daemon on a
//! node, clean stop, fencing after a freeze, restart, master eligibility, and the same on a loop
//! block device with direct I/O.
//!
//! Every wait is bounded by a generous deadline and polls `sdc status`; nothing here asserts
//! speed. Every daemon is killed when its test ends, passed or failed.

#[path = "common/mod.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

/// Starts `sdc join` for each node, returning (node, process) pairs.
fn start(c: &Cluster, nodes: &[u16]) -> Vec<(u16, Proc)> {
    nodes.iter().map(|&n| (n, c.join(n))).collect()
}

fn proc_of(procs: &[(u16, Proc)], node: u16) -> Proc {
    procs.iter().find(|(n, _)| *n == node).map(|(_, p)| *p).unwrap_or_else(|| panic!("no process for node {node}"))
}

/// Two dead intervals: long enough for anything wrong to show.
fn settle() -> Duration {
    Duration::from_millis(2 * DEAD_MS as u64)
}

/// The common core of the file and loop-device tests: three nodes elect one master; killing
/// it with SIGKILL makes another node master in a later epoch.
fn election_and_kill9_failover(c: &Cluster) {
    let procs = start(c, &[1, 2, 3]);
    let s1 = c.wait_master(&[1, 2, 3]);
    c.assert_one_master(&s1);
    let m1 = master(&s1).unwrap();
    let e1 = epoch(&s1);
    assert!(e1 >= 1, "a decided master has an epoch: {s1:#}");

    c.kill9(proc_of(&procs, m1));
    let s2 = c.wait_status(&format!("a node other than {m1} is master in an epoch after {e1}"), |s| {
        master(s).is_some_and(|m| m != m1) && epoch(s) > e1 && !is_live(s, m1)
    });
    c.assert_one_master(&s2);
    let survivors: Vec<u16> = [1, 2, 3].into_iter().filter(|&n| n != m1).collect();
    for &n in &survivors {
        assert!(is_live(&s2, n), "survivor {n} is live: {s2:#}");
        c.assert_running(proc_of(&procs, n));
    }
    assert_eq!(node_status(&s2, m1)["live"], false);
    assert!(!c.log(proc_of(&procs, master(&s2).unwrap())).contains("FENCED"), "{}", c.logs());
}

#[test]
fn three_nodes_elect_exactly_one_master() {
    let c = Cluster::new(3);
    let procs = start(&c, &[1, 2, 3]);
    let s = c.wait_master(&[1, 2, 3]);
    c.assert_one_master(&s);
    let m = master(&s).unwrap();
    let e = epoch(&s);
    for n in [1, 2, 3] {
        let ns = node_status(&s, n);
        assert_eq!(ns["heartbeat_state"], "up", "{s:#}");
        assert_eq!(ns["incarnation"], 1, "first start of node {n}: {s:#}");
        assert_eq!(ns["pid"].as_u64(), Some(c.pid(proc_of(&procs, n)) as u64), "{s:#}");
    }
    // The master stays put: no duelling, no churn.
    c.hold("the master and epoch stay the same", settle(), |s| {
        master(s) == Some(m) && epoch(s) == e && [1, 2, 3].iter().all(|&n| is_live(s, n))
    });
    // The master wrote the cluster state of its epoch.
    let v = c.inspect_json();
    let newest = v["cluster_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["record"].is_null())
        .map(|r| &r["record"])
        .max_by_key(|r| (r["epoch"].as_u64(), r["seq"].as_u64()))
        .expect("a cluster state record")
        .clone();
    assert_eq!(newest["epoch"].as_u64(), Some(e), "{newest:#}");
    assert_eq!(newest["master"].as_u64(), Some(m as u64), "{newest:#}");
    for (n, p) in &procs {
        c.assert_running(*p);
        assert!(c.log(*p).contains("running as incarnation 1"), "node {n}: {}", c.logs());
    }
}

#[test]
fn kill9_of_master_fails_over() {
    let c = Cluster::new(3);
    election_and_kill9_failover(&c);
}

#[test]
fn second_join_on_a_live_node_is_refused() {
    let c = Cluster::new(3);
    let procs = start(&c, &[1, 2, 3]);
    let s1 = c.wait_master(&[1, 2, 3]);
    let m = master(&s1).unwrap();
    let e = epoch(&s1);
    // The non-master with the highest id, and the master itself.
    let follower = [3, 2, 1].into_iter().find(|&n| n != m).unwrap();
    for target in [follower, m] {
        let inc = incarnation(&s1, target).unwrap();
        let dup = c.join(target);
        let status = c.wait_exit(dup);
        assert_eq!(status.code(), Some(4), "second join of node {target}: {}\n{}", exit_text(status), c.logs());
        let log = c.log(dup);
        let last = log.lines().last().unwrap_or("");
        assert!(last.starts_with("sdc: error:") && last.contains("already running"), "{log}");
        assert_eq!(log.lines().filter(|l| l.starts_with("sdc: error:")).count(), 1, "{log}");
        assert!(!log.contains("panicked"), "{log}");

        // The running daemon is undisturbed.
        c.hold(&format!("node {target} stays live in incarnation {inc} and node {m} stays master"), settle(), |s| {
            is_live(s, target) && incarnation(s, target) == Some(inc) && master(s) == Some(m) && epoch(s) == e
        });
        c.assert_running(proc_of(&procs, target));
    }

    // Admin commands that would pull the disk from under a live node are refused too.
    let out = c.sdc(&["node", "remove", "--node", &follower.to_string()]);
    assert_error(&out, 1, &["is live"]);
    let out = c.sdc(&["format", "--cluster", "again", "--force"]);
    assert_error(&out, 1, &["is live"]);
    let s = c.status_json();
    assert_eq!(master(&s), Some(m));
    assert_eq!(epoch(&s), e);
    assert!([1, 2, 3].iter().all(|&n| is_live(&s, n)), "{s:#}");
    for (_, p) in &procs {
        c.assert_running(*p);
    }
}

#[test]
fn join_of_unknown_node_is_refused() {
    let c = Cluster::with(ClusterSpec { max_nodes: 4, ..ClusterSpec::nodes(2) });
    let before = file_bytes(&c.disk);
    for (node, needle) in
        [(3, "not in the node table"), (4, "not in the node table"), (5, "out of range"), (0, "out of range")]
    {
        let p = c.join(node);
        let status = c.wait_exit(p);
        let log = c.log(p);
        assert_eq!(status.code(), Some(1), "join --node {node}: {}: {log}", exit_text(status));
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "join --node {node} should print one line: {log}");
        assert!(lines[0].starts_with("sdc: error:") && lines[0].contains(needle), "join --node {node}: {log}");
    }
    assert_unchanged(&c.disk, &before, "refused joins");
}

#[test]
fn sigterm_stops_a_node_cleanly_and_the_master_hands_over() {
    let c = Cluster::new(3);
    let procs = start(&c, &[1, 2, 3]);
    let s1 = c.wait_master(&[1, 2, 3]);
    let m1 = master(&s1).unwrap();
    let e1 = epoch(&s1);

    // A follower: exits 0, marked down, nothing else changes.
    let follower = [3, 2, 1].into_iter().find(|&n| n != m1).unwrap();
    let p = proc_of(&procs, follower);
    c.signal(p, libc::SIGTERM);
    let status = c.wait_exit(p);
    assert_eq!(status.code(), Some(0), "SIGTERM of node {follower}: {}\n{}", exit_text(status), c.logs());
    assert!(c.log(p).contains("slot marked down"), "{}", c.log(p));
    let s2 = c.status_json();
    assert!(!is_live(&s2, follower), "{s2:#}");
    assert_eq!(node_status(&s2, follower)["heartbeat_state"], "down");
    assert_eq!(master(&s2), Some(m1), "the master is unchanged: {s2:#}");
    assert_eq!(epoch(&s2), e1);

    // The master: exits 0, the remaining node takes over.
    let last = [1, 2, 3].into_iter().find(|&n| n != m1 && n != follower).unwrap();
    let pm = proc_of(&procs, m1);
    c.signal(pm, libc::SIGTERM);
    let status = c.wait_exit(pm);
    assert_eq!(status.code(), Some(0), "SIGTERM of master {m1}: {}\n{}", exit_text(status), c.logs());
    let s3 = c.wait_status(&format!("node {last} becomes master after {m1} stops"), |s| {
        master(s) == Some(last) && epoch(s) > e1
    });
    assert!(!is_live(&s3, m1) && !is_live(&s3, follower), "{s3:#}");
    assert_eq!(node_status(&s3, m1)["heartbeat_state"], "down");
    c.assert_one_master(&s3);
    c.assert_running(proc_of(&procs, last));

    // SIGINT behaves like SIGTERM.
    let pl = proc_of(&procs, last);
    c.signal(pl, libc::SIGINT);
    let status = c.wait_exit(pl);
    assert_eq!(status.code(), Some(0), "SIGINT of node {last}: {}\n{}", exit_text(status), c.logs());
    let s4 = c.status_json();
    assert!(master(&s4).is_none(), "no node runs, so there is no master: {s4:#}");
    assert!([1, 2, 3].iter().all(|&n| node_status(&s4, n)["heartbeat_state"] == "down"), "{s4:#}");
}

#[test]
fn frozen_master_is_fenced_when_it_resumes() {
    let c = Cluster::new(3);
    let procs = start(&c, &[1, 2, 3]);
    let s1 = c.wait_master(&[1, 2, 3]);
    let m1 = master(&s1).unwrap();
    let e1 = epoch(&s1);
    let p1 = proc_of(&procs, m1);

    c.signal(p1, libc::SIGSTOP);
    let frozen_at = Instant::now();
    // A new master needs the old one still for dead-ms, so by then it has been frozen about
    // that long; the freeze is made to last at least dead-ms (and so fence-ms) in any case.
    let s2 = c.wait_status(&format!("another node is master while node {m1} is frozen"), |s| {
        master(s).is_some_and(|m| m != m1) && epoch(s) > e1
    });
    let m2 = master(&s2).unwrap();
    let e2 = epoch(&s2);
    let inc2 = incarnation(&s2, m2);
    std::thread::sleep(Duration::from_millis(DEAD_MS as u64).saturating_sub(frozen_at.elapsed()));
    c.assert_running(p1);

    c.signal(p1, libc::SIGCONT);
    let status = c.wait_exit(p1);
    assert_eq!(status.code(), Some(5), "the old master must exit fenced: {}\n{}", exit_text(status), c.logs());
    assert!(c.log(p1).contains("FENCED"), "{}", c.log(p1));

    // The new master is undisturbed and alone.
    c.hold(&format!("node {m2} stays master of epoch {e2}"), settle(), |s| {
        master(s) == Some(m2) && epoch(s) == e2 && incarnation(s, m2) == inc2 && !is_live(s, m1)
    });
    let s3 = c.status_json();
    c.assert_one_master(&s3);
    for n in [1, 2, 3].into_iter().filter(|&n| n != m1) {
        assert!(is_live(&s3, n), "{s3:#}");
        c.assert_running(proc_of(&procs, n));
        assert!(!c.log(proc_of(&procs, n)).contains("FENCED"), "{}", c.logs());
    }
    let v = c.inspect_json();
    let old = &v["heartbeats"][(m1 - 1) as usize]["record"];
    assert!(old["master_epoch"].as_u64().unwrap() < e2, "the fenced master does not claim the new epoch: {old:#}");
}

#[test]
fn restarted_node_rejoins_with_a_higher_incarnation() {
    let c = Cluster::new(3);
    let mut procs = start(&c, &[1, 2, 3]);
    let s1 = c.wait_master(&[1, 2, 3]);
    let m1 = master(&s1).unwrap();
    let e1 = epoch(&s1);

    // A follower, killed and restarted at once: the new daemon waits out the stale slot.
    let f = [3, 2, 1].into_iter().find(|&n| n != m1).unwrap();
    let inc = incarnation(&s1, f).unwrap();
    c.kill9(proc_of(&procs, f));
    let pf = c.join(f);
    procs.push((f, pf));
    c.wait_until(DEADLINE, &format!("the restarted node {f} logs that it runs"), || {
        c.log(pf).contains("running as incarnation")
    });
    let s2 = c.wait_status(&format!("node {f} is live again in an incarnation above {inc}"), |s| {
        is_live(s, f) && incarnation(s, f).is_some_and(|i| i > inc)
    });
    assert_eq!(master(&s2), Some(m1), "a follower's restart leaves the master alone: {s2:#}");
    assert_eq!(epoch(&s2), e1);
    let v = c.inspect_json();
    let hb = &v["heartbeats"][(f - 1) as usize]["record"];
    assert_eq!(hb["state"], "up");
    assert_eq!(hb["incarnation"].as_u64(), incarnation(&s2, f), "{hb:#}");
    assert!(c.log(pf).contains("watching it for dead-ms"), "{}", c.log(pf));
    let inc2 = incarnation(&s2, f).unwrap();
    assert!(c.log(pf).contains(&format!("running as incarnation {inc2}")), "{}", c.log(pf));

    // The master, killed and restarted: a later epoch, one master, and the old master's node
    // back as a live member with a higher incarnation.
    let minc = incarnation(&s1, m1).unwrap();
    let pm = procs.iter().rposition(|(n, _)| *n == m1).unwrap();
    c.kill9(procs[pm].1);
    let pm2 = c.join(m1);
    let s3 = c.wait_status(&format!("node {m1} rejoins above incarnation {minc} and a master of a later epoch"), |s| {
        is_live(s, m1) && incarnation(s, m1).is_some_and(|i| i > minc) && master(s).is_some() && epoch(s) > e1
    });
    c.assert_one_master(&s3);
    c.assert_running(pm2);
    c.assert_running(pf);
}

#[test]
fn non_eligible_node_never_becomes_master() {
    let c = Cluster::with(ClusterSpec::nodes(3).not_eligible(3));
    let procs = start(&c, &[1, 2, 3]);
    let s1 = c.wait_master(&[1, 2, 3]);
    assert_ne!(master(&s1), Some(3), "{s1:#}");
    assert_eq!(node_status(&s1, 3)["master_eligible"], false);

    c.kill9(proc_of(&procs, 1));
    c.kill9(proc_of(&procs, 2));
    c.wait_status("only node 3 is live and there is no master", |s| {
        !is_live(s, 1) && !is_live(s, 2) && is_live(s, 3) && master(s).is_none()
    });
    c.hold("node 3 stays live and not master", Duration::from_millis(3 * DEAD_MS as u64), |s| {
        is_live(s, 3) && master(s).is_none()
    });
    let p3 = proc_of(&procs, 3);
    c.assert_running(p3);
    let v = c.inspect_json();
    assert_eq!(v["heartbeats"][2]["record"]["master_epoch"], 0, "{:#}", v["heartbeats"][2]);
    // It never even wrote a claim.
    for claim in v["claims"].as_array().unwrap().iter().filter(|r| r["node"] == 3) {
        assert_eq!(claim["record"]["epoch"], 0, "{claim:#}");
        assert_eq!(claim["record"]["writer_incarnation"], 0, "{claim:#}");
    }
    let log = c.log(p3);
    assert!(!log.contains("claiming master") && !log.contains("now master"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Loop devices (root and losetup needed; skipped otherwise)

/// A zeroed backing file of `bytes` in its own temporary directory.
fn backing_file(bytes: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new().prefix("sdc-loop-").tempdir().unwrap();
    let file = dir.path().join("backing.img");
    std::fs::File::create(&file).unwrap().set_len(bytes).unwrap();
    (dir, file)
}

#[test]
fn loop_device_election_and_kill9_failover() {
    const TEST: &str = "loop device test";
    let (_backing_dir, file) = backing_file(8 << 20);
    let dev = match LoopDevice::attach(&file, &[]) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    // Declared after the device, so the daemons are killed before it is detached.
    let c = Cluster::with(ClusterSpec::nodes(3).on_disk(&dev.path));
    let v = c.inspect_json();
    let io = v["disk"]["io"].as_str().unwrap_or_default();
    assert!(io.contains("direct I/O on block device"), "block devices default to direct I/O: {io}");
    election_and_kill9_failover(&c);
}

#[test]
fn loop_device_with_larger_sectors_is_refused() {
    const TEST: &str = "loop device sector size test";
    let (_backing_dir, file) = backing_file(8 << 20);
    let f = file.to_str().unwrap();
    assert_ok(&sdc(["format", "--disk", f, "--cluster", "c", "--max-nodes", "4"]));
    assert_ok(&sdc(["node", "add", "--disk", f, "--node", "1", "--name", "a"]));
    let v = json_of(&sdc(["inspect", "--disk", f, "--json"]));
    assert_eq!(v["superblock"]["slot_bytes"], 512);
    let dev = match LoopDevice::attach(&file, &["--sector-size", "4096"]) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let d = dev.path.to_str().unwrap();
    let before = file_bytes(&file);
    for args in [
        vec!["status", "--disk", d],
        vec!["inspect", "--disk", d],
        vec!["node", "list", "--disk", d],
        vec!["node", "add", "--disk", d, "--node", "2", "--name", "b"],
        vec!["join", "--disk", d, "--node", "1"],
    ] {
        let out = sdc(&args);
        assert_error(&out, 1, &["sector size 4096", "512"]);
    }
    assert_unchanged(&file, &before, "commands refused on a 4096-byte-sector device");
    // Formatting it anew on the device takes 4096-byte slots, and then it works.
    assert_ok(&sdc(["format", "--disk", d, "--cluster", "c4k", "--max-nodes", "4", "--force"]));
    let v = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    assert_eq!(v["superblock"]["slot_bytes"], 4096);
    let s = json_of(&sdc(["status", "--disk", d, "--json"]));
    assert_eq!(s["cluster"], "c4k");
}

/// A block device with 4096-byte sectors formatted with `--io mmap` must still be usable with
/// the default (direct) I/O.
#[test]
fn loop_device_formatted_with_mmap_keeps_the_device_sector_size() {
    const TEST: &str = "loop device mmap format test";
    let (_backing_dir, file) = backing_file(8 << 20);
    let dev = match LoopDevice::attach(&file, &["--sector-size", "4096"]) {
        Ok(d) => d,
        Err(why) => return skip(TEST, &why),
    };
    let d = dev.path.to_str().unwrap();
    assert_ok(&sdc(["format", "--disk", d, "--io", "mmap", "--cluster", "c", "--max-nodes", "4"]));
    let out = sdc(["status", "--disk", d, "--json"]);
    assert_ok(&out);
}
