//! `sdc lock` (a cluster-wide flock(1)) and `sdc locks` (a node's lock table), both through
//! the control socket of the node's daemon (`dlm::driver::control`).

use crate::cli::{DaemonArgs, LockArgs, LocksArgs};
use crate::util::print_json;
use crate::{exit, fail, CmdResult, Failure};
use dlm::driver::control::{find_sockets, run_dirs, LINE_BYTES_MAX, PROTOCOL_VERSION};
use dlm::{Mode, ResName};
use membership_db::db::MembershipDb;
use membership_db::io::{open_disk, IoMode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long, once the lock is lost and CMD's process group is SIGKILLed, `sdc lock` waits for
/// every process of the group to be gone before it exits anyway (a process in uninterruptible
/// I/O dies only when that I/O ends).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How often the wait for CMD looks at the connection and at signals.
const POLL: Duration = Duration::from_millis(20);
/// How long a reply to `snapshot` may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of the daemon `args` name: `--node`, or the only one running here.
fn socket_of(args: &DaemonArgs) -> Result<(u16, PathBuf), Failure> {
    let disk = open_disk(&args.disk, IoMode::Mmap, false)?;
    let db = MembershipDb::open(disk)?;
    let sb = db.superblock();
    let found = find_sockets(&sb.cluster_uuid);
    let looked: Vec<String> = run_dirs().iter().map(|d| d.join(sb.uuid_string()).display().to_string()).collect();
    match args.node {
        Some(n) => match found.into_iter().find(|(node, _)| *node == n) {
            Some(f) => Ok(f),
            None => fail(format!(
                "no daemon of node {n} of cluster {} runs on this host (no live control socket in {}); start it with `sdc join --disk {} --node {n}`",
                sb.cluster_name,
                looked.join(", "),
                args.disk.display()
            )),
        },
        None => match &found[..] {
            [one] => Ok(one.clone()),
            [] => fail(format!(
                "no daemon of cluster {} runs on this host (no live control socket in {}); start one with `sdc join`, or name the node with --node",
                sb.cluster_name,
                looked.join(", ")
            )),
            several => {
                let nodes: Vec<String> = several.iter().map(|(n, _)| n.to_string()).collect();
                fail(format!("daemons of nodes {} run on this host: choose one with --node (or SDC_NODE)", nodes.join(", ")))
            }
        },
    }
}

/// A connection to a control socket, reading one reply line at a time.
struct Conn {
    write: UnixStream,
    read: BufReader<UnixStream>,
}

impl Conn {
    fn open(node: u16, path: &PathBuf) -> Result<Conn, Failure> {
        let s = UnixStream::connect(path)
            .map_err(|e| Failure::from(format!("cannot connect to node {node}'s daemon at {}: {e}", path.display())))?;
        let read = BufReader::new(s.try_clone()?);
        Ok(Conn { write: s, read })
    }
    fn send(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.write.write_all(line.as_bytes())
    }
}

/// Reads one reply; `None` at the end of the connection.
fn read_reply(r: &mut impl BufRead) -> Option<Value> {
    loop {
        let mut line = Vec::new();
        let n = std::io::Read::take(&mut *r, 4 * LINE_BYTES_MAX as u64).read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            return None;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            return Some(v);
        }
    }
}

pub fn run(a: LockArgs) -> CmdResult {
    let mode: Mode = a.mode.parse().map_err(Failure::from)?;
    let res = ResName::new(&a.lockspace, a.name.as_bytes())?;
    let timeout_ms = match a.timeout {
        None => None,
        Some(t) if (0.0..=1e9).contains(&t) => Some((t * 1000.0) as u64),
        Some(t) => return fail(format!("--timeout {t}: give a number of seconds")),
    };
    let (node, path) = socket_of(&a.daemon)?;
    let mut conn = Conn::open(node, &path)?;
    let request = json!({"v": PROTOCOL_VERSION, "id": 1, "op": "lock", "lockspace": a.lockspace, "name": a.name,
                         "mode": mode, "noqueue": a.nowait, "timeout_ms": timeout_ms});
    conn.send(&request).map_err(|e| Failure::from(format!("node {node}'s daemon: {e}")))?;
    let what = format!("lock {res} ({mode}) on node {node}");
    let lock_id = loop {
        let Some(reply) = read_reply(&mut conn.read) else {
            return fail(format!("{what}: the daemon closed the connection before answering (it stopped?)"));
        };
        if reply["id"].as_u64() != Some(1) {
            continue;
        }
        match reply["reply"].as_str() {
            Some("queued") => continue,
            Some("granted") => break reply["lock"].as_u64().unwrap_or(0),
            Some("failed") if matches!(reply["error"].as_str(), Some("would_block" | "timed_out")) => {
                let why =
                    if a.nowait { "held in an incompatible mode (--nowait)" } else { "not granted within --timeout" };
                return Err(Failure { status: exit::LOCK_NOT_GRANTED, message: format!("{what}: not granted: {why}") });
            }
            Some("failed") | Some("error") => {
                return fail(format!("{what}: {}", reply["message"].as_str().unwrap_or("refused")));
            }
            _ => continue,
        }
    };
    // Held: run CMD in its own process group, watching the connection.
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {}: {e}", a.command[0].to_string_lossy())),
    };
    let (lost_tx, lost_rx) = mpsc::channel::<String>();
    let mut reader = conn.read;
    std::thread::spawn(move || loop {
        match read_reply(&mut reader) {
            None => {
                let _ = lost_tx
                    .send("the daemon closed the connection (the node was fenced, forced out or stopped)".into());
                return;
            }
            Some(v) if v["reply"] == "failed" && v["lock"].as_u64() == Some(lock_id) => {
                let why = v["message"].as_str().unwrap_or("failed").to_string();
                let _ = lost_tx.send(why);
                return;
            }
            Some(_) => {}
        }
    });
    let _ = sdc_procs::procs::catch_interrupts();
    let pgid = child.id() as libc::pid_t;
    let mut forwarded = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(why) = lost_rx.try_recv() {
            kill_group(&mut child, pgid);
            return Err(Failure {
                status: exit::LOCK_LOST,
                message: format!("{what}: the lock was lost while the command ran ({why}); killed its process group"),
            });
        }
        if let Some(sig) = sdc_procs::procs::interrupted() {
            if forwarded != Some(sig) {
                forwarded = Some(sig);
                // SAFETY: kill(2) of our child's process group.
                unsafe { libc::kill(-pgid, sig) };
            }
        }
        std::thread::sleep(POLL);
    };
    // Release at once rather than wait for the close (the close alone would do).
    let _ = conn.write.write_all(
        format!("{}\n", json!({"v": PROTOCOL_VERSION, "id": 2, "op": "unlock", "lock": lock_id})).as_bytes(),
    );
    let _ = conn.write.shutdown(std::net::Shutdown::Both);
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => exit::ERROR,
    })
}

/// SIGKILL to the group at once, reap CMD, and wait (at most [`KILL_WAIT`]) until no process of
/// the group is left. No SIGTERM and grace period: the lock is already gone, so whatever CMD does
/// from now on is unprotected, and a forced-out daemon waits only `fence_ms` for this process
/// to exit before it says the node has stopped (after which, or after `dead_ms`, the others
/// recover the lock). This process exits only once its group is gone, so the daemon's wait
/// covers every process of CMD's group, not only its leader.
fn kill_group(child: &mut Child, pgid: libc::pid_t) {
    // SAFETY: kill(2) of our child's process group.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let deadline = Instant::now() + KILL_WAIT;
    let mut reaped = false;
    loop {
        reaped = reaped || matches!(child.try_wait(), Ok(Some(_)));
        if reaped && !group_running(pgid) {
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        // SAFETY: as above, for a process forked after the first SIGKILL.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a process of group `pgid` still runs (zombies have stopped: they only wait to be
/// reaped, by whoever inherited them).
fn group_running(pgid: libc::pid_t) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        // SAFETY: signal 0 only asks whether the group has a process (zombies count).
        return unsafe { libc::kill(-pgid, 0) } == 0;
    };
    dir.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))).any(|e| {
        // After the command name (in parentheses, may hold anything): state, ppid, pgrp.
        std::fs::read_to_string(e.path().join("stat")).ok().is_some_and(|stat| {
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("Z");
            let pgrp = f.nth(1).and_then(|g| g.parse::<libc::pid_t>().ok());
            pgrp == Some(pgid) && !matches!(state, "Z" | "X")
        })
    })
}

fn mode_text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_string()
}

/// `sdc locks`: the snapshot of the node's lock manager, in a stable shape.
pub fn show(a: LocksArgs) -> CmdResult {
    let (node, path) = socket_of(&a.daemon)?;
    let mut conn = Conn::open(node, &path)?;
    conn.write.set_read_timeout(Some(REPLY_TIMEOUT))?;
    conn.send(&json!({"v": PROTOCOL_VERSION, "id": 1, "op": "snapshot"}))?;
    let snap = loop {
        let Some(reply) = read_reply(&mut conn.read) else {
            return fail(format!(
                "node {node}'s daemon closed the connection (or did not answer within {} s)",
                REPLY_TIMEOUT.as_secs()
            ));
        };
        match reply["reply"].as_str() {
            Some("snapshot") if reply["id"] == 1 => break reply["snapshot"].clone(),
            Some("error") => return fail(reply["message"].as_str().unwrap_or("refused").to_string()),
            _ => continue,
        }
    };
    let queue = |q: &Value| -> Vec<Value> {
        q.as_array()
            .map(|locks| {
                locks
                    .iter()
                    .map(|l| json!({"node": l["id"]["node"], "lock": l["id"]["lock"], "granted": l["granted"], "requested": l["requested"]}))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mastered: Vec<Value> = snap["mastered"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    json!({"lockspace": r["lockspace"], "name": r["name"], "lvb_valid": r["queues"]["lvb_valid"],
                           "granted": queue(&r["queues"]["granted"]), "converting": queue(&r["queues"]["converting"]),
                           "waiting": queue(&r["queues"]["waiting"])})
                })
                .collect()
        })
        .unwrap_or_default();
    let locks: Vec<Value> = snap["locks"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    json!({"lock": l["lock"], "client": l["client"], "lockspace": l["lockspace"], "name": l["name"],
                                "granted": l["granted"], "requested": l["requested"], "lvb_valid": l["lvb_valid"]})
                })
                .collect()
        })
        .unwrap_or_default();
    let out = json!({
        "schema": 1,
        "node": snap["node"],
        "state": snap["state"],
        "members": snap["members"],
        "reachable": snap["reachable"],
        "clients": snap["clients"],
        "mastered": mastered,
        "locks": locks,
    });
    if a.json {
        print_json(&out)?;
        return Ok(exit::OK);
    }
    let members: Vec<String> = out["members"]
        .as_array()
        .map(|m| m.iter().map(|m| format!("{} (incarnation {})", m["node"], m["incarnation"])).collect())
        .unwrap_or_default();
    println!(
        "node {}: {}; members: {}",
        node,
        mode_text(&out["state"]),
        if members.is_empty() { "none".into() } else { members.join(", ") }
    );
    println!("resources mastered here: {}", mastered.len());
    for r in &mastered {
        let valid = if r["lvb_valid"] == true { "value block valid" } else { "value block NOT valid" };
        println!("  {}/{}  ({valid})", mode_text(&r["lockspace"]), mode_text(&r["name"]));
        for q in ["granted", "converting", "waiting"] {
            for l in r[q].as_array().into_iter().flatten() {
                println!(
                    "    {q:<10} node {} lock {:x}  granted {}  requested {}",
                    l["node"],
                    l["lock"].as_u64().unwrap_or(0),
                    mode_text(&l["granted"]),
                    mode_text(&l["requested"])
                );
            }
        }
    }
    println!("locks of this node's clients: {}", locks.len());
    for l in &locks {
        println!(
            "  lock {:x}  client {}  {}/{}  granted {}  requested {}",
            l["lock"].as_u64().unwrap_or(0),
            l["client"],
            mode_text(&l["lockspace"]),
            mode_text(&l["name"]),
            mode_text(&l["granted"]),
            mode_text(&l["requested"])
        );
    }
    Ok(exit::OK)
}
