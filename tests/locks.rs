//! The lock manager in the daemon, through real `sdc` processes: `sdc lock` (a cluster-wide
//! flock(1)) and `sdc locks` across two nodes, and the control socket's isolation of its
//! clients (garbage, a client killed while holding a lock, a daemon that goes away).
//!
//! Every node listens on a free loopback port; every test has its own disk and run directory.
//! Waits poll with generous deadlines; nothing asserts speed.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `sdc locks --json` of `node`, if its daemon answers.
fn locks(c: &Cluster, node: u16) -> Option<Value> {
    let out = c.sdc(&["locks", "--node", &node.to_string(), "--json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// Starts nodes 1..=n and waits until every lock manager runs with all n as members.
fn running_cluster(n: u16) -> Cluster {
    let c = Cluster::new(n);
    for node in 1..=n {
        c.join(node);
    }
    for node in 1..=n {
        c.wait_until(DEADLINE, &format!("node {node}'s lock manager runs with {n} members"), || {
            locks(&c, node)
                .is_some_and(|v| v["state"] == "running" && v["members"].as_array().map(Vec::len) == Some(n as usize))
        });
    }
    c
}

fn lock_args<'a>(c: &'a Cluster, node: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["lock", "--disk", c.disk_str(), "--node", node];
    a.extend_from_slice(rest);
    a
}

/// Whether node `node`'s clients hold `name` in `mode`.
fn holds(c: &Cluster, node: u16, name: &str, mode: &str) -> bool {
    locks(c, node)
        .is_some_and(|v| v["locks"].as_array().into_iter().flatten().any(|l| l["name"] == name && l["granted"] == mode))
}

fn wait_file(c: &Cluster, path: &Path) {
    c.wait_until(DEADLINE, &format!("{} exists", path.display()), || path.exists());
}

fn wait_exit(c: &Cluster, d: &mut Daemon, what: &str) -> std::process::ExitStatus {
    c.wait_for(DEADLINE, what, || d.try_wait().ok().flatten())
}

#[test]
fn sdc_lock_is_exclusive_across_nodes_and_passes_on_cmds_status() {
    let c = running_cluster(2);
    let held = c.dir.path().join("held");
    let release = c.dir.path().join("release");
    let script = format!("touch {}; while [ ! -e {} ]; do sleep 0.05; done; exit 7", held.display(), release.display());
    let mut first =
        c.spawn(&lock_args(&c, "1", &["backup", "--", "sh", "-c", &script]), &c.dir.path().join("lock1.log"));
    wait_file(&c, &held);

    // The lock table shows it: held on node 1, mastered somewhere with node 1 as holder.
    let table = locks(&c, 1).expect("node 1 answers");
    let own: Vec<&Value> = table["locks"].as_array().unwrap().iter().filter(|l| l["name"] == "backup").collect();
    assert_eq!(own.len(), 1, "{table:#}");
    assert_eq!((own[0]["lockspace"].as_str(), own[0]["granted"].as_str()), (Some("default"), Some("ex")), "{table:#}");
    let mastered: Vec<Value> = [1, 2]
        .iter()
        .filter_map(|&n| locks(&c, n))
        .flat_map(|v| v["mastered"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["name"] == "backup")
        .collect();
    assert_eq!(mastered.len(), 1, "one master of the resource: {mastered:#?}");
    assert_eq!(mastered[0]["granted"][0]["node"], 1, "{mastered:#?}");
    assert_eq!(mastered[0]["granted"][0]["granted"], "ex", "{mastered:#?}");
    assert_eq!(mastered[0]["lvb_valid"], false, "a new resource's value block is not valid");

    // Node 2 cannot have it now.
    let began = Instant::now();
    let out = c.sdc_raw(&lock_args(&c, "2", &["--nowait", "backup", "--", "true"]));
    assert_error(&out, 8, &["not granted", "backup"]);
    assert!(began.elapsed() < Duration::from_secs(15), "--nowait answers at once");
    // Nor within a short timeout; a shared mode conflicts too.
    let out = c.sdc_raw(&lock_args(&c, "2", &["--timeout", "0.3", "--mode", "pr", "backup", "--", "true"]));
    assert_error(&out, 8, &["not granted"]);

    // Node 1's command ends: sdc lock exits with its status, and node 2 gets the lock.
    std::fs::write(&release, b"").unwrap();
    let status = wait_exit(&c, &mut first, "node 1's sdc lock exits");
    assert_eq!(
        status.code(),
        Some(7),
        "sdc lock passes on CMD's status: {}",
        log_text(&c.dir.path().join("lock1.log"))
    );
    let out = c.sdc_raw(&lock_args(&c, "2", &["--timeout", "20", "backup", "--", "sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_no_panic(&out);
    let out = c.sdc_raw(&lock_args(&c, "2", &["--nowait", "backup", "--", "true"]));
    assert_ok(&out);
}

fn log_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A raw client of a node's control socket.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(c: &Cluster, node: u16) -> Raw {
        let path = find_socket(&c.run_dir, node);
        let w = UnixStream::connect(&path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        w.set_read_timeout(Some(DEADLINE)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Raw { w, r }
    }
    fn send_bytes(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
    }
    fn send(&mut self, v: Value) {
        self.send_bytes(format!("{v}\n").as_bytes());
    }
    /// The next reply, the daemon's `alive` lines (its lease, renewed) skipped: each must
    /// carry the lease.
    fn recv(&mut self) -> Value {
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).expect("a reply within the deadline");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"));
            if v["reply"] != "alive" {
                return v;
            }
            assert_eq!(v["lease_ms"], FENCE_MS, "the lease is the node's fence-ms: {v}");
        }
    }
    /// The next reply with this id (others are skipped).
    fn reply_to(&mut self, id: u64) -> Value {
        loop {
            let v = self.recv();
            if v["id"] == id && v["reply"] != "queued" {
                return v;
            }
        }
    }
}

fn find_socket(run: &Path, node: u16) -> PathBuf {
    let dirs = std::fs::read_dir(run).expect("the run directory exists");
    for d in dirs.flatten() {
        let p = d.path().join(format!("node-{node}.sock"));
        if p.exists() {
            return p;
        }
    }
    panic!("no socket of node {node} under {}", run.display())
}

#[test]
fn garbage_on_the_control_socket_gets_an_error_and_leaves_other_clients_locks_alone() {
    let c = running_cluster(1);
    let mut holder = Raw::connect(&c, 1);
    holder.send(json!({"v": 1, "id": 1, "op": "lock", "name": "db", "mode": "ex"}));
    let granted = holder.reply_to(1);
    assert_eq!(granted["reply"], "granted", "{granted}");

    let mut bad = Raw::connect(&c, 1);
    for (line, needle) in [
        (b"this is not json\n".to_vec(), "not a JSON request"),
        (
            format!(
                "{}\n",
                json!({"v": 1, "id": 2, "op": "lock", "lockspace": "no spaces", "name": "x", "mode": "ex"})
            )
            .into_bytes(),
            "lockspace",
        ),
        (
            format!("{}\n", json!({"v": 1, "id": 3, "op": "lock", "name": "n".repeat(65), "mode": "ex"})).into_bytes(),
            "64 bytes",
        ),
        (
            format!("{}\n", json!({"v": 1, "id": 4, "op": "convert", "lock": 999, "mode": "zz"})).into_bytes(),
            "unknown lock mode",
        ),
        (
            format!("{}\n", json!({"v": 1, "id": 5, "op": "convert", "lock": granted["lock"], "mode": "pr"}))
                .into_bytes(),
            "no lock",
        ),
        (format!("{}\n", json!({"v": 1, "id": 6, "op": "unlock", "lock": granted["lock"]})).into_bytes(), "no lock"),
        ([vec![b'{'; 20_000], b"\n".to_vec()].concat(), "longer than"),
        (format!("{}\n", json!({"v": 9, "id": 7, "op": "snapshot"})).into_bytes(), "version 9"),
    ] {
        bad.send_bytes(&line);
        let v = bad.recv();
        assert_eq!(v["reply"], "error", "{v}");
        assert!(v["message"].as_str().unwrap().contains(needle), "{needle:?} in {v}");
    }
    // The garbage client still works, and the holder still holds.
    bad.send(json!({"v": 1, "id": 8, "op": "lock", "name": "db", "mode": "ex", "noqueue": true}));
    let refused = bad.reply_to(8);
    assert_eq!(
        (refused["reply"].as_str(), refused["error"].as_str()),
        (Some("failed"), Some("would_block")),
        "{refused}"
    );
    drop(bad);
    assert!(holds(&c, 1, "db", "ex"), "{:#}", locks(&c, 1).unwrap());

    // A client that goes releases its locks (like flock(2)).
    drop(holder);
    c.wait_until(DEADLINE, "the closed client's lock is released", || !holds(&c, 1, "db", "ex"));
    let out = c.sdc_raw(&lock_args(&c, "1", &["--nowait", "db", "--", "true"]));
    assert_ok(&out);
}

#[test]
fn a_client_killed_while_holding_a_lock_releases_it_and_a_dead_daemon_kills_the_command() {
    let c = running_cluster(2);
    let pidfile = c.dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut holder =
        c.spawn(&lock_args(&c, "1", &["job", "--", "sh", "-c", &script]), &c.dir.path().join("holder.log"));
    wait_file(&c, &pidfile);
    c.wait_until(DEADLINE, "node 1 holds job", || holds(&c, 1, "job", "ex"));
    holder.kill().unwrap();
    // Its command is orphaned in its own group: end it too.
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: kill(2) of the sleep the test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let out = c.sdc_raw(&lock_args(&c, "2", &["--timeout", "20", "job", "--", "true"]));
    assert_ok(&out);

    // The daemon holding a lock for a running command dies: the command is killed at once
    // with SIGKILL (no SIGTERM it could linger on), exit 9.
    let pidfile = c.dir.path().join("pid2");
    let termed = c.dir.path().join("termed");
    let script = format!(
        "trap 'touch {}' TERM; echo $$ > {}; while :; do sleep 0.05; done",
        termed.display(),
        pidfile.display()
    );
    let mut holder =
        c.spawn(&lock_args(&c, "2", &["job", "--", "sh", "-c", &script]), &c.dir.path().join("holder2.log"));
    wait_file(&c, &pidfile);
    let node2 = c.procs().into_iter().find(|p| c.node_of(*p) == 2).unwrap();
    c.kill9(node2);
    let status = wait_exit(&c, &mut holder, "sdc lock exits once its daemon is gone");
    let log = log_text(&c.dir.path().join("holder2.log"));
    assert_eq!(status.code(), Some(9), "{log}");
    assert!(log.contains("lock was lost") && log.contains("SIGKILL"), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("sdc: error")).count(), 1, "one line: {log}");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: signal 0 only asks whether the pid exists.
    assert!(unsafe { libc::kill(pid, 0) } != 0, "the command is gone once sdc lock has exited 9");
    assert!(!termed.exists(), "the command got SIGTERM, not SIGKILL at once");
}

/// Runs `sdc lock --node NODE [extra] NAME -- sh -c SCRIPT` to its end.
fn lock_sh(c: &Cluster, node: &str, extra: &[&str], name: &str, script: &str) -> std::process::Output {
    let mut rest: Vec<&str> = extra.to_vec();
    rest.extend_from_slice(&["--timeout", "20", name, "--", "sh", "-c", script]);
    let out = c.sdc_raw(&lock_args(c, node, &rest));
    assert_no_panic(&out);
    out
}

/// The value block through `sdc lock`: CMD reads it from its environment and, holding pw or
/// ex, writes the next value to the file `SDC_LOCK_LVB_OUT` names; the next holder, on any
/// node, reads it, valid.
#[test]
fn sdc_lock_hands_the_value_block_to_cmd_and_writes_what_cmd_leaves() {
    let c = running_cluster(2);
    let show = r#"echo "[$SDC_LOCK_LVB_TEXT] $SDC_LOCK_LVB_VALID $SDC_LOCK_LVB"; echo "out=${SDC_LOCK_LVB_OUT-unset}""#;
    let zeros = "0".repeat(64);

    // The first lock ever of a name: 32 zero bytes, not valid; an empty file to write to, in a
    // directory of its own (0700) that is gone when sdc lock exits.
    let out = lock_sh(&c, "2", &[], "gen", &format!("{show}; stat -c %a \"$(dirname \"$SDC_LOCK_LVB_OUT\")\"; test -f \"$SDC_LOCK_LVB_OUT\" && test ! -s \"$SDC_LOCK_LVB_OUT\""));
    assert_ok(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("[] 0 {zeros}"), "{text}");
    let path = lines[1].strip_prefix("out=").expect("SDC_LOCK_LVB_OUT is set in ex");
    assert_eq!(lines[2], "700", "{text}");
    assert!(!Path::new(path).exists(), "{path} is removed when sdc lock exits");
    assert!(!Path::new(path).parent().unwrap().exists(), "its directory is removed too");

    // Node 1 writes gen-7 (nothing but the bytes written: printf).
    let out = lock_sh(&c, "1", &[], "gen", r#"printf gen-7 > "$SDC_LOCK_LVB_OUT""#);
    assert_ok(&out);
    // Node 2 reads it, valid; as text and as hex.
    let out = lock_sh(&c, "2", &[], "gen", r#"echo "$SDC_LOCK_LVB_TEXT $SDC_LOCK_LVB_VALID""#);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), "gen-7 1", "{}", describe(&out));
    let out = lock_sh(&c, "2", &["--mode", "pr"], "gen", show);
    assert_ok(&out);
    let hex = format!("{}{}", "67656e2d37", "0".repeat(54));
    assert_eq!(stdout(&out), format!("[gen-7] 1 {hex}\nout=unset\n"), "a reader gets no file to write");

    // `echo` writes text and a newline: the newline is dropped. Raw bytes are not text.
    assert_ok(&lock_sh(&c, "1", &["--mode", "pw"], "gen", r#"echo gen-8 > "$SDC_LOCK_LVB_OUT""#));
    let out = lock_sh(&c, "2", &[], "gen", r#"echo "$SDC_LOCK_LVB_TEXT $SDC_LOCK_LVB_VALID""#);
    assert_eq!(stdout(&out).trim(), "gen-8 1", "{}", describe(&out));
    assert_ok(&lock_sh(&c, "1", &[], "gen", r#"printf '\001\377\n' > "$SDC_LOCK_LVB_OUT""#));
    let out = lock_sh(&c, "2", &[], "gen", r#"echo "${SDC_LOCK_LVB_TEXT-unset} $SDC_LOCK_LVB_VALID $SDC_LOCK_LVB""#);
    assert_eq!(stdout(&out).trim(), format!("unset 1 01ff0a{}", "0".repeat(58)), "{}", describe(&out));

    // A value longer than 32 bytes: one line, the lock released without it; exit 1 when CMD
    // succeeded, else CMD's status.
    let out = lock_sh(&c, "1", &[], "gen", r#"printf %040d 0 > "$SDC_LOCK_LVB_OUT""#);
    assert_error(&out, 1, &["40 bytes", "more than the 32", "released the lock without writing it"]);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", describe(&out));
    let out = lock_sh(&c, "1", &[], "gen", r#"printf %040d 0 > "$SDC_LOCK_LVB_OUT"; exit 5"#);
    assert_error(&out, 5, &["40 bytes"]);
    // An empty file leaves the value as it was.
    assert_ok(&lock_sh(&c, "1", &[], "gen", "true"));
    let out = lock_sh(&c, "2", &[], "gen", r#"echo "$SDC_LOCK_LVB $SDC_LOCK_LVB_VALID""#);
    assert_eq!(stdout(&out).trim(), format!("01ff0a{} 1", "0".repeat(58)), "{}", describe(&out));
}

/// Regression of the daemon's inputs: a node without an interconnect address, a rehearsal
/// layer at the lock manager's order and `sdc lock` with no daemon are one clear line each.
#[test]
fn join_without_an_address_and_lock_without_a_daemon_are_refused_in_one_line() {
    let c = Cluster::new(1);
    let d = c.disk_str().to_string();
    assert_ok(&c.sdc_raw(&["node", "add", "--disk", &d, "--node", "2", "--name", "n2"]));
    let out = c.sdc_raw(&["join", "--disk", &d, "--node", "2"]);
    assert_error(&out, 1, &["no interconnect address", "sdc node add --node 2 --name NAME --address HOST[:PORT]"]);
    // `node add` under the same name sets the address.
    let out = c.sdc_raw(&["node", "add", "--disk", &d, "--node", "2", "--name", "n2", "--address", "127.0.0.1:1"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("updated node 2"), "{}", describe(&out));
    let list = json_of(&c.sdc_raw(&["node", "list", "--disk", &d, "--json"]));
    assert_eq!(list["nodes"][1]["address"], "127.0.0.1:1", "{list:#}");
    let out = c.sdc_raw(&["join", "--disk", &d, "--node", "1", "--layer", "mine:10"]);
    assert_error(&out, 1, &["order 10", "lock manager"]);
    let out = c.sdc_raw(&["lock", "--disk", &d, "--nowait", "x", "--", "true"]);
    assert_error(&out, 1, &["no daemon"]);
    let out = c.sdc_raw(&["lock", "--disk", &d, "--node", "1", "x", "--", "true"]);
    assert_error(&out, 1, &["no daemon of node 1"]);
    let out = c.sdc_raw(&["locks", "--disk", &d, "--node", "1"]);
    assert_error(&out, 1, &["no daemon of node 1"]);
}

/// A daemon frozen while a command holds its lock (SIGSTOP: a paused VM, a stuck process)
/// cannot say its node still holds the lease, and the others will take the lock after
/// dead-ms: `sdc lock` hears nothing for fence-ms (the lease the daemon announced) and kills
/// the command, exit 9, before that can happen.
#[test]
fn a_frozen_daemon_lets_no_command_outlive_its_lease() {
    let c = running_cluster(1);
    let pidfile = c.dir.path().join("pid");
    let script = format!("echo $$ > {}; while :; do sleep 0.05; done", pidfile.display());
    let mut holder =
        c.spawn(&lock_args(&c, "1", &["job", "--", "sh", "-c", &script]), &c.dir.path().join("holder.log"));
    wait_file(&c, &pidfile);
    c.wait_until(DEADLINE, "node 1 holds job", || holds(&c, 1, "job", "ex"));
    let daemon = c.procs().into_iter().find(|p| c.node_of(*p) == 1).unwrap();
    c.signal(daemon, libc::SIGSTOP);
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = holder.try_wait().unwrap() {
            break Some(s);
        }
        if stopped.elapsed() > DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let waited = stopped.elapsed();
    c.signal(daemon, libc::SIGCONT);
    let log = log_text(&c.dir.path().join("holder.log"));
    let status =
        status.unwrap_or_else(|| panic!("sdc lock still runs {} s after its daemon froze: {log}", waited.as_secs()));
    assert_eq!(status.code(), Some(9), "{log}");
    assert!(log.contains("no word from the daemon"), "{log}");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // SAFETY: signal 0 only asks whether the pid exists.
    assert!(unsafe { libc::kill(pid, 0) } != 0, "the command is gone once sdc lock has exited 9");
    eprintln!("sdc lock killed its command {} ms after the daemon froze", waited.as_millis());
}
