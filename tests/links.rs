//! A broken interconnect, arbitrated by the disk, through real `sdc` processes: three nodes on
//! one disk file, each holding locks with `sdc lock`, and node 3's links cut while the disk
//! stays shared (Fig. 13 of the seed).
//!
//! The links are cut with a firewall rule on loopback that drops TCP to and from node 3's
//! interconnect port (node 3 has the highest id, so it dials no one: every link of node 3 is a
//! connection to that port). The rule is an nftables table of its own (or, without nft, two
//! iptables rules; `SDC_TEST_FIREWALL=iptables` chooses them), removed by a guard when the test
//! ends, even on panic. Both need root: a machine without root, nft or iptables prints one
//! `SKIPPED` line per test and the test returns.
//!
//! Waits poll with generous deadlines; nothing asserts speed.

#[path = "common/mod.rs"]
mod common;

use common::*;
use sdc_procs::procs::EXIT_FORCED_OUT;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Two joined nodes that cannot reach each other this long are arbitrated by the master: at
/// or above the common `DEAD_MS` (1200), as `sdc format` advises.
const LINK_TIMEOUT_MS: u32 = 1500;

/// Exit status of `sdc lock` when the lock was lost while CMD ran (the binary's
/// `exit::LOCK_LOST`).
const EXIT_LOCK_LOST: i32 = 9;

// -------------------------------------------------------------------------------------------
// Cutting links

/// The firewall front end that works here.
#[derive(Debug, Clone, Copy)]
enum Firewall {
    Nft,
    Iptables,
}

fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut cmd = Command::new(prog);
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
    if let Some(text) = stdin {
        let _ = child.stdin.take().expect("piped stdin").write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{prog} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A new nftables table name: this process's, one per cut (the tests run in parallel).
fn nft_table(port: u16) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("sdc_links_test_{}_{port}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A table of its own that drops TCP to and from `port` (both directions of loopback traffic
/// pass the input hook).
fn nft_script(table: &str, port: u16) -> String {
    format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    tcp dport {port} drop\n    tcp sport {port} drop\n  }}\n}}\n"
    )
}

impl Firewall {
    /// The front end that can add and remove a rule here, or why none can.
    fn probe() -> Result<Firewall, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root (cutting links needs a firewall rule)".into());
        }
        // Port 0 matches no real traffic: a harmless probe. SDC_TEST_FIREWALL=iptables skips nft.
        let nft = match std::env::var("SDC_TEST_FIREWALL").as_deref() {
            Ok("iptables") => Err("nft not tried (SDC_TEST_FIREWALL=iptables)".to_string()),
            _ => Firewall::Nft.cut(0).map(drop),
        };
        if nft.is_ok() {
            return Ok(Firewall::Nft);
        }
        let ipt = Firewall::Iptables.cut(0).map(drop);
        if ipt.is_ok() {
            return Ok(Firewall::Iptables);
        }
        Err(format!("neither nft nor iptables can add a rule ({}; {})", nft.unwrap_err(), ipt.unwrap_err()))
    }

    /// Drops TCP to and from `port` on this host until the guard is dropped.
    fn cut(self, port: u16) -> Result<LinkCut, String> {
        let p = port.to_string();
        match self {
            Firewall::Nft => {
                let table = nft_table(port);
                run("nft", &["-f", "-"], Some(&nft_script(&table, port)))?;
                return Ok(LinkCut { fw: self, port, table, at: Instant::now() });
            }
            Firewall::Iptables => {
                run("iptables", &["-I", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"], None)?;
                if let Err(e) = run("iptables", &["-I", "INPUT", "-p", "tcp", "--sport", &p, "-j", "DROP"], None) {
                    let _ = run("iptables", &["-D", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"], None);
                    return Err(e);
                }
            }
        }
        Ok(LinkCut { fw: self, port, table: String::new(), at: Instant::now() })
    }
}

/// TCP to and from one port dropped; the rule goes when this is dropped (on panic too).
struct LinkCut {
    fw: Firewall,
    port: u16,
    /// The nftables table (with nft).
    table: String,
    at: Instant,
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let p = self.port.to_string();
        let res = match self.fw {
            Firewall::Nft => run("nft", &["delete", "table", "inet", &self.table], None),
            Firewall::Iptables => run("iptables", &["-D", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"], None)
                .and(run("iptables", &["-D", "INPUT", "-p", "tcp", "--sport", &p, "-j", "DROP"], None)),
        };
        if let Err(e) = res {
            eprintln!("warning: could not remove the firewall rule of port {p} ({:?}): {e}", self.fw);
        }
    }
}

/// The firewall to use, or `None` after printing the skip line.
fn firewall_or_skip(test: &str) -> Option<Firewall> {
    match Firewall::probe() {
        Ok(fw) => Some(fw),
        Err(why) => {
            skip(test, &format!("cannot cut interconnect links on this machine: {why}"));
            None
        }
    }
}

// -------------------------------------------------------------------------------------------
// The cluster

/// `sdc locks --json` of `node`, if its daemon answers.
fn locks(c: &Cluster, node: u16) -> Option<Value> {
    let out = c.sdc(&["locks", "--node", &node.to_string(), "--json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// Whether node `node`'s clients hold `name` in `mode`.
fn holds(c: &Cluster, node: u16, name: &str, mode: &str) -> bool {
    locks(c, node)
        .is_some_and(|v| v["locks"].as_array().into_iter().flatten().any(|l| l["name"] == name && l["granted"] == mode))
}

/// Whether node `node`'s clients wait for `name` (requested, not granted).
fn waits_for(c: &Cluster, node: u16, name: &str) -> bool {
    locks(c, node).is_some_and(|v| {
        v["locks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["name"] == name && l["granted"] != "ex" && l["requested"] == "ex")
    })
}

fn state(s: &Value, node: u16) -> &str {
    node_status(s, node)["state"].as_str().unwrap_or("unknown")
}

fn idle(s: &Value) -> bool {
    s["transitions"].as_array().is_some_and(|t| t.is_empty())
}

/// Three nodes with the short link timeout, node 1 the master (so that cutting node 3 keeps
/// {1, 2}: the master keeps the largest group that includes itself), every lock manager
/// running with all three as members.
fn three_nodes(spec: ClusterSpec) -> (Cluster, [Proc; 3]) {
    let c = Cluster::with(spec.format_with(&["--link-timeout-ms", &LINK_TIMEOUT_MS.to_string()]));
    let p1 = c.join(1);
    let s = c.wait_master(&[1]);
    assert_eq!(master(&s), Some(1), "node 1, alone, is master: {s:#}");
    let p2 = c.join(2);
    let p3 = c.join(3);
    c.wait_status("nodes 1, 2, 3 joined, nothing in flight", |s| {
        idle(s) && (1..=3).all(|n| state(s, n) == "joined" && is_live(s, n))
    });
    for node in 1..=3u16 {
        c.wait_until(DEADLINE, &format!("node {node}'s lock manager runs with 3 members"), || {
            locks(&c, node).is_some_and(|v| v["state"] == "running" && v["members"].as_array().map(Vec::len) == Some(3))
        });
    }
    // Every pair linked: each node reaches the two others (published in its heartbeat).
    c.wait_status("every node reaches the two others over the interconnect", |s| {
        (1..=3u16).all(|n| node_status(s, n)["reaches"].as_array().map(Vec::len) == Some(2))
    });
    (c, [p1, p2, p3])
}

/// Node `node`'s interconnect port, from its node-table address.
fn port_of(c: &Cluster, node: u16) -> u16 {
    let s = c.status_json();
    let addr = node_status(&s, node)["address"].as_str().expect("an address").to_string();
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn lock_args<'a>(c: &'a Cluster, node: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["lock", "--disk", c.disk_str(), "--node", node];
    a.extend_from_slice(rest);
    a
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_file(c: &Cluster, path: &Path) {
    c.wait_until(DEADLINE, &format!("{} exists", path.display()), || text(path).ends_with('\n'));
}

/// The pid a CMD wrote to `pidfile` (`echo $$`): also its process group (`sdc lock` runs CMD in
/// a group of its own).
fn pid_in(pidfile: &Path) -> i32 {
    text(pidfile).trim().parse().unwrap_or_else(|e| panic!("pid in {}: {e}", pidfile.display()))
}

/// Whether a process of group `pgid` still runs (a zombie has stopped).
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return true };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat")).ok().is_some_and(|stat| {
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[2].parse::<i32>().ok() == Some(pgid) && !matches!(f[0], "Z" | "X")
        })
    })
}

/// Kills the process groups of the CMDs started, when the test ends (an `sdc lock` SIGKILLed
/// by its guard leaves its CMD behind).
struct Cmds(Vec<PathBuf>);

impl Drop for Cmds {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Ok(pid) = text(f).trim().parse::<i32>() {
                if pid > 1 {
                    // SAFETY: kill(2) of a process group a CMD of this test made.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// An `sdc lock` that was spawned, with its log.
struct LockProc {
    d: Daemon,
    log: PathBuf,
}

impl LockProc {
    fn spawn(c: &Cluster, node: u16, rest: &[&str], log: &str) -> LockProc {
        let n = node.to_string();
        let log = c.dir.path().join(log);
        LockProc { d: c.spawn(&lock_args(c, &n, rest), &log), log }
    }
    fn running(&mut self) -> bool {
        self.d.try_wait().expect("try_wait").is_none()
    }
    fn wait(&mut self, c: &Cluster, what: &str) -> ExitStatus {
        let log = self.log.clone();
        poll_until(DEADLINE, what, || self.d.try_wait().ok().flatten(), || format!("{}\n{}", text(&log), c.logs()))
    }
}

/// All the logs: the daemons' and the `sdc lock`s'.
fn all_logs(c: &Cluster, lock_logs: &[&Path]) -> String {
    let mut s = c.logs();
    for p in lock_logs {
        s += &format!("--- sdc lock log {} ---\n{}\n", p.display(), text(p));
    }
    s
}

/// The node's forced leave, as the disk records it: asserts the reason is that it cannot reach
/// one of `peers` over the interconnect, in the JSON and in `sdc status`'s text.
fn assert_forced_out_for_links(c: &Cluster, node: u16, peers: &[u16], logs: &dyn Fn() -> String) {
    let s = c.wait_status(&format!("node {node} forced out, its forced leave complete"), |s| {
        state(s, node) == "inactive" && !is_live(s, node) && idle(s) && !node_status(s, node)["refusal"].is_null()
    });
    let r = &node_status(&s, node)["refusal"];
    assert_eq!(r["reason"], "unreachable", "node {node}'s refusal: {s:#}\n{}", logs());
    let peer = r["node"].as_u64().unwrap_or(0) as u16;
    assert!(peers.contains(&peer), "node {node} is recorded as not reaching node {peer}: {s:#}");
    let out = c.sdc(&["status"]);
    assert_ok(&out);
    let line = format!("cannot reach node {peer} over the interconnect");
    assert!(
        stdout(&out).lines().any(|l| l.starts_with(&format!("node {node} forced out")) && l.contains(&line)),
        "sdc status shows why node {node} was forced out ({line:?}): {}",
        describe(&out)
    );
    for n in peers {
        assert_eq!(state(&s, *n), "joined", "node {n} stays joined: {s:#}\n{}", logs());
        assert!(is_live(&s, *n), "node {n} stays live: {s:#}\n{}", logs());
    }
}

// -------------------------------------------------------------------------------------------
// The tests

/// Fig. 13: node 3 loses its interconnect links while the disk stays shared. The master, node
/// 1, forces it out for "cannot reach node N over the interconnect"; node 3's daemon exits
/// forced out, its `sdc lock` exits 9 with its CMD killed; nodes 1 and 2 stay joined with
/// their locks (their CMDs still run), and node 3's former lock can then be taken.
#[test]
fn a_node_that_cannot_communicate_is_forced_out_while_the_rest_keep_their_locks() {
    const TEST: &str = "a_node_that_cannot_communicate_is_forced_out_while_the_rest_keep_their_locks";
    let Some(fw) = firewall_or_skip(TEST) else { return };
    let began = Instant::now();
    let (c, [p1, p2, p3]) = three_nodes(ClusterSpec::nodes(3));
    let dir = c.dir.path().to_path_buf();
    let pidfiles: Vec<PathBuf> = (1..=3).map(|n| dir.join(format!("cmd{n}.pid"))).collect();
    let _cmds = Cmds(pidfiles.clone());
    let names = ["a", "b", "c"];
    let mut holders: Vec<LockProc> = (1..=3u16)
        .map(|n| {
            let script = format!("echo $$ > {}; exec sleep 600", pidfiles[n as usize - 1].display());
            let name = names[n as usize - 1];
            LockProc::spawn(&c, n, &[name, "--", "sh", "-c", &script], &format!("lock{n}.log"))
        })
        .collect();
    for n in 1..=3u16 {
        wait_file(&c, &pidfiles[n as usize - 1]);
        c.wait_until(DEADLINE, &format!("node {n} holds {} in ex", names[n as usize - 1]), || {
            holds(&c, n, names[n as usize - 1], "ex")
        });
    }
    let cmd_pids: Vec<i32> = pidfiles.iter().map(|f| pid_in(f)).collect();
    let s = c.status_json();
    assert_eq!(master(&s), Some(1), "node 1 is still master before the cut: {s:#}");

    // Cut node 3's links; the disk stays shared.
    let port = port_of(&c, 3);
    let cut = fw.cut(port).unwrap_or_else(|e| panic!("cutting node 3's links (port {port}): {e}"));
    eprintln!("cut node 3's links (TCP port {port}, {fw:?}) {:?} after the start", began.elapsed());

    // Node 3: forced out; its daemon exits forced out, its sdc lock exits 9, its CMD is killed.
    let status = c.wait_exit(p3);
    eprintln!("node 3's daemon exited ({}) {:?} after the cut", exit_text(status), cut.at.elapsed());
    let lock_logs: Vec<PathBuf> = holders.iter().map(|h| h.log.clone()).collect();
    let logs = || all_logs(&c, &lock_logs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    assert_eq!(status.code(), Some(EXIT_FORCED_OUT), "node 3's daemon exits forced out\n{}", logs());
    let st = holders[2].wait(&c, "node 3's sdc lock exits");
    let log3 = text(&holders[2].log);
    assert_eq!(st.code(), Some(EXIT_LOCK_LOST), "node 3's sdc lock exits 9 (lock lost): {log3}\n{}", logs());
    assert!(log3.contains("lock was lost"), "{log3}");
    c.wait_until(DEADLINE, "node 3's CMD was killed", || !group_alive(cmd_pids[2]));
    assert_forced_out_for_links(&c, 3, &[1, 2], &logs);
    let master_log = c.log(p1);
    assert!(
        master_log.contains("master: forcing node 3 out: it cannot reach node"),
        "the master logs why it forces node 3 out\n{}",
        logs()
    );

    // Nodes 1 and 2: still running, their sdc lock and CMD still running, their locks granted.
    c.assert_running(p1);
    c.assert_running(p2);
    for n in 1..=2u16 {
        let i = n as usize - 1;
        assert!(holders[i].running(), "node {n}'s sdc lock still runs: {}\n{}", text(&holders[i].log), logs());
        assert!(group_alive(cmd_pids[i]), "node {n}'s CMD still runs\n{}", logs());
        assert!(holds(&c, n, names[i], "ex"), "node {n} still holds {}: {:#?}\n{}", names[i], locks(&c, n), logs());
    }
    // Their locks are still held cluster-wide: the other survivor cannot take them.
    let out = c.sdc_raw(&lock_args(&c, "2", &["--nowait", "a", "--", "true"]));
    assert_error(&out, 8, &["not granted"]);
    let out = c.sdc_raw(&lock_args(&c, "1", &["--nowait", "b", "--", "true"]));
    assert_error(&out, 8, &["not granted"]);
    // Node 3's former lock is free again.
    let out = c.sdc_raw(&lock_args(&c, "1", &["--timeout", "20", "c", "--", "true"]));
    assert_ok(&out);
    // Still: nothing the survivors held was lost meanwhile.
    for n in 1..=2u16 {
        let i = n as usize - 1;
        assert!(holders[i].running(), "node {n}'s sdc lock still runs: {}\n{}", text(&holders[i].log), logs());
    }
    drop(cut);
    eprintln!("test took {:?}", began.elapsed());
}

/// Node 3, forced out while alive, holds EX on a name and its CMD writes a timestamp every
/// 10 ms; node 1 waits for that name. Node 1's CMD must run only after node 3's last write:
/// no survivor is granted the lock before the forced-out node has stopped.
#[test]
fn a_node_forced_out_while_holding_ex_loses_it_only_once_it_has_stopped() {
    const TEST: &str = "a_node_forced_out_while_holding_ex_loses_it_only_once_it_has_stopped";
    let Some(fw) = firewall_or_skip(TEST) else { return };
    forced_out_holder_stops_before_the_grant(fw, ClusterSpec::nodes(3), "");
}

/// The same with a CMD that ignores SIGTERM (as a service that shuts down slowly would take
/// long to end), on `sdc format`'s default timing (heartbeat 100, fence 600, dead 1000 ms):
/// the forced-out node's `sdc lock` must still end CMD before anyone else is granted. (It
/// used to send SIGTERM and wait 2 s before SIGKILL, longer than fence-ms + dead-ms: node 1's
/// CMD ran about 950 ms before node 3's CMD stopped writing.)
#[test]
fn a_forced_out_holder_whose_cmd_ignores_sigterm_is_stopped_before_the_grant() {
    const TEST: &str = "a_forced_out_holder_whose_cmd_ignores_sigterm_is_stopped_before_the_grant";
    let Some(fw) = firewall_or_skip(TEST) else { return };
    forced_out_holder_stops_before_the_grant(fw, ClusterSpec::nodes(3).timing(100, 600, 1000), "trap '' TERM; ");
}

/// Node 3 holds EX on `shared` with a CMD (`prelude` then a loop appending a timestamp every
/// 10 ms), node 1 waits for it, node 3's links are cut: node 1's CMD must run after node 3's
/// last write.
fn forced_out_holder_stops_before_the_grant(fw: Firewall, spec: ClusterSpec, prelude: &str) {
    let began = Instant::now();
    let (c, [p1, p2, p3]) = three_nodes(spec);
    let dir = c.dir.path().to_path_buf();
    let pidfile = dir.join("cmd3.pid");
    let stamps = dir.join("stamps3");
    let granted = dir.join("granted1");
    let _cmds = Cmds(vec![pidfile.clone()]);
    let script = format!(
        "{prelude}echo $$ > {}; while :; do date +%s%N >> {}; sleep 0.01; done",
        pidfile.display(),
        stamps.display()
    );
    let mut holder = LockProc::spawn(&c, 3, &["shared", "--", "sh", "-c", &script], "lock3.log");
    wait_file(&c, &pidfile);
    wait_file(&c, &stamps);
    c.wait_until(DEADLINE, "node 3 holds shared in ex", || holds(&c, 3, "shared", "ex"));
    let cmd3 = pid_in(&pidfile);

    let script1 = format!("date +%s%N > {}", granted.display());
    let mut waiter = LockProc::spawn(&c, 1, &["shared", "--", "sh", "-c", &script1], "lock1.log");
    c.wait_until(DEADLINE, "node 1 waits for shared", || waits_for(&c, 1, "shared"));
    assert!(!granted.exists(), "node 1's CMD ran while node 3 holds the lock");
    assert!(waiter.running(), "node 1's sdc lock waits: {}", text(&waiter.log));
    let s = c.status_json();
    assert_eq!(master(&s), Some(1), "node 1 is still master before the cut: {s:#}");

    let port = port_of(&c, 3);
    let cut_wall = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos();
    let cut = fw.cut(port).unwrap_or_else(|e| panic!("cutting node 3's links (port {port}): {e}"));
    eprintln!("cut node 3's links (TCP port {port}, {fw:?}) {:?} after the start", began.elapsed());

    // Node 1 gets the lock, within a generous bound.
    let st = waiter.wait(&c, "node 1's sdc lock is granted and its CMD ends");
    let grant_after_cut = cut.at.elapsed();
    let (log3, log1) = (holder.log.clone(), waiter.log.clone());
    let logs = || all_logs(&c, &[&log3, &log1]);
    assert_eq!(st.code(), Some(0), "node 1's sdc lock: {}\n{}", text(&waiter.log), logs());
    // Node 3: forced out, its sdc lock lost the lock, its CMD is gone (every process of it).
    let st3 = holder.wait(&c, "node 3's sdc lock exits");
    assert_eq!(st3.code(), Some(EXIT_LOCK_LOST), "node 3's sdc lock: {}\n{}", text(&holder.log), logs());
    c.wait_until(DEADLINE, "node 3's CMD was killed", || !group_alive(cmd3));
    let status = c.wait_exit(p3);
    assert_eq!(status.code(), Some(EXIT_FORCED_OUT), "node 3's daemon exits forced out\n{}", logs());
    assert_forced_out_for_links(&c, 3, &[1, 2], &logs);
    c.assert_running(p1);
    c.assert_running(p2);

    // No overlap: node 1's CMD ran after every timestamp node 3's CMD wrote.
    let all = text(&stamps);
    let written: Vec<u128> =
        all.split_inclusive('\n').filter(|l| l.ends_with('\n')).filter_map(|l| l.trim().parse().ok()).collect();
    assert!(!written.is_empty(), "node 3's CMD wrote timestamps");
    let last3 = *written.iter().max().unwrap();
    let t1: u128 = text(&granted).trim().parse().unwrap_or_else(|e| panic!("node 1's timestamp: {e}"));
    let gap_ms = (t1 as f64 - last3 as f64) / 1e6;
    // Node 3 was forced out while alive: it went on holding the lock and writing after the cut.
    let after_cut = written.iter().filter(|&&t| t > cut_wall).count();
    let held_ms = (last3 as f64 - cut_wall as f64) / 1e6;
    eprintln!(
        "node 3's CMD wrote {} timestamps, {after_cut} after the cut (the last {held_ms:.1} ms after it); node 1's CMD ran {gap_ms:.1} ms after node 3's last write; node 1's sdc lock ended {grant_after_cut:?} after the cut",
        written.len()
    );
    assert!(after_cut > 0, "node 3's CMD went on writing after the cut (forced out while alive)\n{}", logs());
    assert!(
        t1 > last3,
        "OVERLAP: node 1's CMD ran at {t1}, {:.1} ms before node 3's last write at {last3}\n{}",
        -gap_ms,
        logs()
    );
    drop(cut);
    eprintln!("test took {:?}", began.elapsed());
}
