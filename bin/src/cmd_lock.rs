//! `sdc lock` (a cluster-wide flock(1)) and `sdc locks` (a node's lock table), both through
//! the control socket of the node's daemon (`dlm::driver::control`).

use crate::cli::{DaemonArgs, LockArgs, LocksArgs};
use crate::util::print_json;
use crate::{exit, fail, CmdResult, Failure};
use dlm::driver::control::{self, find_sockets, run_dirs, LINE_BYTES_MAX, PROTOCOL_VERSION};
use dlm::{Lvb, Mode, ResName, LVB_BYTES};
use membership_db::db::MembershipDb;
use membership_db::io::{open_disk, IoMode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
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
/// How often the wait for CMD looks at CMD and at signals (a lost lock is seen at once).
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

/// The environment CMD gets: the value block as 64 hex digits, always.
pub const ENV_LVB: &str = "SDC_LOCK_LVB";
/// The value block as text, when it is UTF-8 without control characters once its trailing zero
/// bytes are trimmed (an all-zero block is the empty text); unset otherwise.
pub const ENV_LVB_TEXT: &str = "SDC_LOCK_LVB_TEXT";
/// `1` when the value block is valid, `0` when it is not (never written, or a pw/ex holder died).
pub const ENV_LVB_VALID: &str = "SDC_LOCK_LVB_VALID";
/// In modes pw and ex only: a fresh empty file where CMD may write the new value.
pub const ENV_LVB_OUT: &str = "SDC_LOCK_LVB_OUT";

/// The value block as text: UTF-8 without control characters once trailing zeros are trimmed.
fn lvb_text(lvb: &Lvb) -> Option<&str> {
    let end = lvb.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&lvb[..end]).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// The new value in what CMD wrote: `None` when it wrote nothing. One trailing newline is
/// dropped when the rest is text (`echo 42 > "$SDC_LOCK_LVB_OUT"` writes `42`); the bytes are
/// padded with zeros to [`LVB_BYTES`]. `size` is the file's size, for the message.
fn value_of(bytes: &[u8], size: u64) -> Result<Option<Lvb>, String> {
    let mut v = bytes;
    if let Some(rest) = v.strip_suffix(b"\n") {
        if std::str::from_utf8(rest).is_ok_and(|t| !t.chars().any(char::is_control)) {
            v = rest;
        }
    }
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > LVB_BYTES {
        return Err(format!(
            "the value CMD wrote to ${ENV_LVB_OUT} is {} bytes, more than the {LVB_BYTES} of a value block",
            size.max(v.len() as u64)
        ));
    }
    let mut lvb = [0u8; LVB_BYTES];
    lvb[..v.len()].copy_from_slice(v);
    Ok(Some(lvb))
}

/// A 0700 directory of this process's own under the temporary directory, holding the file
/// `SDC_LOCK_LVB_OUT` names; removed when dropped.
struct ValueDir {
    dir: PathBuf,
    file: PathBuf,
}

impl ValueDir {
    fn create() -> Result<ValueDir, Failure> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let base = std::env::temp_dir();
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        for attempt in 0..100u32 {
            let dir = base.join(format!("sdc-lock-{}-{seed:08x}-{attempt}", std::process::id()));
            // Not recursive: fails on anything already there, a symbolic link included.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return fail(format!("cannot create a directory in {}: {e}", base.display())),
            }
            let vd = ValueDir { file: dir.join("lvb"), dir };
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&vd.file)
                .map_err(|e| Failure::from(format!("cannot create {}: {e}", vd.file.display())))?;
            return Ok(vd);
        }
        fail(format!("cannot create a directory in {}: every name tried exists", base.display()))
    }

    /// What CMD wrote (see [`value_of`]); a file CMD removed is nothing written. Reads at most
    /// a few bytes past [`LVB_BYTES`], never follows a link and never blocks (a FIFO is refused).
    fn read(&self) -> Result<Option<Lvb>, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = format!("${ENV_LVB_OUT} ({})", self.file.display());
        let f =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&self.file);
        let f = match f {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {shown}: {e}")),
        };
        let meta = f.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file any more"));
        }
        let mut bytes = Vec::new();
        std::io::Read::take(f, LVB_BYTES as u64 + 2)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        value_of(&bytes, meta.len())
    }
}

impl Drop for ValueDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the connection's reader thread reports.
enum Event {
    /// The lock is no longer held: why.
    Lost(String),
    /// A reply to the unlock.
    Unlocked(Value),
    /// CMD has exited (not reaped yet).
    Exited,
    /// The daemon said something: its lease holds for this long from now (`alive` lines carry
    /// it; any other line renews the last one).
    Heard(Option<u64>),
}

/// The request id of the lock, and of its unlock.
const LOCK_ID: u64 = 1;
const UNLOCK_ID: u64 = 2;

pub fn run(a: LockArgs) -> CmdResult {
    let mode: Mode = a.mode.parse().map_err(Failure::from)?;
    let res = ResName::new(&a.lockspace, a.name.as_bytes())?;
    let timeout_ms = match a.timeout {
        None => None,
        Some(t) if (0.0..=1e9).contains(&t) => Some((t * 1000.0) as u64),
        Some(t) => return fail(format!("--timeout {t}: give a number of seconds")),
    };
    // Made before the lock is asked for: a failure here changes nothing.
    let value_dir = if mode.writes_value() { Some(ValueDir::create()?) } else { None };
    let (node, path) = socket_of(&a.daemon)?;
    let mut conn = Conn::open(node, &path)?;
    let request = json!({"v": PROTOCOL_VERSION, "id": LOCK_ID, "op": "lock", "lockspace": a.lockspace, "name": a.name,
                         "mode": mode, "noqueue": a.nowait, "timeout_ms": timeout_ms});
    conn.send(&request).map_err(|e| Failure::from(format!("node {node}'s daemon: {e}")))?;
    let what = format!("lock {res} ({mode}) on node {node}");
    // The daemon's lease, announced as it connects (see the main wait below).
    let mut lease = None::<Duration>;
    let grant = loop {
        let Some(reply) = read_reply(&mut conn.read) else {
            return fail(format!("{what}: the daemon closed the connection before answering (it stopped?)"));
        };
        if let Some(ms) = reply["lease_ms"].as_u64() {
            lease = Some(Duration::from_millis(ms));
        }
        if reply["id"].as_u64() != Some(LOCK_ID) {
            continue;
        }
        match reply["reply"].as_str() {
            Some("queued") => continue,
            Some("granted") => break reply,
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
    let lock_id = grant["lock"].as_u64().unwrap_or(0);
    // A daemon of this version always sends both; anything else reads as a value not valid.
    let lvb = grant["lvb"].as_str().and_then(|h| control::unhex(h).ok());
    let lvb_valid = lvb.is_some() && grant["lvb_valid"] == true;
    let lvb = lvb.unwrap_or([0; LVB_BYTES]);

    // Held: run CMD in its own process group with the value block in its environment,
    // watching the connection.
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]).process_group(0);
    for k in [ENV_LVB, ENV_LVB_TEXT, ENV_LVB_VALID, ENV_LVB_OUT] {
        cmd.env_remove(k);
    }
    cmd.env(ENV_LVB, control::hex(&lvb)).env(ENV_LVB_VALID, if lvb_valid { "1" } else { "0" });
    if let Some(text) = lvb_text(&lvb) {
        cmd.env(ENV_LVB_TEXT, text);
    }
    if let Some(d) = &value_dir {
        cmd.env(ENV_LVB_OUT, &d.file);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run {}: {e}", a.command[0].to_string_lossy())),
    };
    let (events_tx, events) = mpsc::channel::<Event>();
    let exited_tx = events_tx.clone();
    let mut reader = conn.read;
    std::thread::spawn(move || loop {
        match read_reply(&mut reader) {
            None => {
                let _ = events_tx.send(Event::Lost(
                    "the daemon closed the connection (the node was fenced, forced out or stopped)".into(),
                ));
                return;
            }
            Some(v) if v["reply"] == "failed" && v["lock"].as_u64() == Some(lock_id) && v["id"].is_null() => {
                let why = v["message"].as_str().unwrap_or("failed").to_string();
                let _ = events_tx.send(Event::Lost(why));
                return;
            }
            Some(v) if v["id"].as_u64() == Some(UNLOCK_ID) => {
                let _ = events_tx.send(Event::Unlocked(v));
            }
            Some(v) => {
                let _ = events_tx.send(Event::Heard(v["lease_ms"].as_u64()));
            }
        }
    });
    let _ = sdc_procs::procs::catch_interrupts();
    let pgid = child.id() as libc::pid_t;
    // CMD's exit wakes the wait at once (a poll would add its period to every `sdc lock`);
    // WNOWAIT leaves it to be reaped below.
    std::thread::spawn(move || {
        // SAFETY: waitid(2) on our own child, into a zeroed siginfo; WNOWAIT does not reap.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pgid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            let _ = exited_tx.send(Event::Exited);
        }
    });
    let mut forwarded = None;
    // The daemon's lease (see `dlm::driver::control`, *Leases*): a daemon that says nothing
    // for that long may be frozen, and the others may take the lock soon after.
    let mut heard = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let lost = match events.recv_timeout(POLL) {
            Ok(Event::Lost(why)) => Some(why),
            Ok(Event::Heard(l)) => {
                heard = Instant::now();
                lease = l.map(Duration::from_millis).or(lease);
                None
            }
            Ok(Event::Unlocked(_) | Event::Exited) | Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some("the connection to the daemon failed".into()),
        };
        let lost = lost.or_else(|| {
            lease.filter(|l| heard.elapsed() > *l).map(|l| {
                format!(
                    "no word from the daemon for {} ms, its lease: it may be frozen, and the others may take the lock",
                    l.as_millis()
                )
            })
        });
        if let Some(why) = lost {
            // The survivors may take the lock as soon as this node is known stopped: CMD must
            // not run a moment longer.
            let killed = match kill_group(&mut child, pgid) {
                true => "killed its process group at once (SIGKILL)".to_string(),
                false => format!(
                    "sent SIGKILL to its process group {pgid} at once, but it had not all exited within {} s",
                    KILL_WAIT.as_secs()
                ),
            };
            return Err(Failure {
                status: exit::LOCK_LOST,
                message: format!("{what}: the lock was lost while the command ran ({why}); {killed}"),
            });
        }
        if let Some(sig) = sdc_procs::procs::interrupted() {
            if forwarded != Some(sig) {
                forwarded = Some(sig);
                // SAFETY: kill(2) of our child's process group.
                unsafe { libc::kill(-pgid, sig) };
            }
        }
    };
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => exit::ERROR,
    };
    // The new value, if CMD wrote one that fits; else the lock is released without it.
    let (value, mut problem) = match value_dir.as_ref().map(ValueDir::read).unwrap_or(Ok(None)) {
        Ok(v) => (v, None),
        Err(why) => (None, Some(format!("{why}: released the lock without writing it"))),
    };
    // Release at once and wait (bounded) for the daemon to confirm it, value included.
    let unlock = json!({"v": PROTOCOL_VERSION, "id": UNLOCK_ID, "op": "unlock", "lock": lock_id,
                        "lvb": value.map(|v| control::hex(&v))});
    let sent = conn.write.write_all(format!("{unlock}\n").as_bytes());
    let confirmed = match sent {
        Err(e) => Err(format!("cannot send the unlock ({e})")),
        Ok(()) => {
            let deadline = Instant::now() + REPLY_TIMEOUT;
            // Bounded by the deadline (exit and alive lines may come before the reply).
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                break match events.recv_timeout(left) {
                    Ok(Event::Exited | Event::Heard(_)) => continue,
                    Ok(Event::Unlocked(v)) if v["reply"] == "ok" => Ok(()),
                    Ok(Event::Unlocked(v)) => {
                        Err(format!("the unlock was refused: {}", v["message"].as_str().unwrap_or("?")))
                    }
                    Ok(Event::Lost(why)) => Err(format!("the lock was lost as the command ended ({why})")),
                    Err(_) => {
                        Err(format!("the daemon did not confirm the unlock within {} s", REPLY_TIMEOUT.as_secs()))
                    }
                };
            }
        }
    };
    let _ = conn.write.shutdown(std::net::Shutdown::Both);
    if let (Err(why), Some(v)) = (&confirmed, value) {
        // Closing the connection released the lock; whether with the value is unknown.
        let shown = lvb_text(&v).map_or_else(|| control::hex(&v), |t| format!("{t:?}"));
        problem = Some(format!("{why}: the new value {shown} may not have been written"));
    }
    match problem {
        // CMD's own failure says more; a CMD that succeeded fails for its value.
        Some(why) => {
            Err(Failure { status: if code == 0 { exit::ERROR } else { code }, message: format!("{what}: {why}") })
        }
        None => Ok(code),
    }
}

/// SIGKILL to the group at once, reap CMD, and wait (at most [`KILL_WAIT`]) until no process of
/// the group is left. No SIGTERM and grace period: the lock is already gone, so whatever CMD does
/// from now on is unprotected, and a forced-out daemon waits only `fence_ms` for this process
/// to exit before it says the node has stopped (after which, or after `dead_ms`, the others
/// recover the lock). This process exits only once its group is gone, so the daemon's wait
/// covers every process of CMD's group, not only its leader. Whether it was all gone.
fn kill_group(child: &mut Child, pgid: libc::pid_t) -> bool {
    // SAFETY: kill(2) of our child's process group.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let deadline = Instant::now() + KILL_WAIT;
    let mut reaped = false;
    loop {
        reaped = reaped || matches!(child.try_wait(), Ok(Some(_)));
        if reaped && !group_running(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
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
    // Bounded as a whole: the daemon's `alive` lines would otherwise keep the wait going.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let snap = loop {
        let late = Instant::now() >= deadline;
        let Some(reply) = read_reply(&mut conn.read).filter(|_| !late) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lvb(b: &[u8]) -> Lvb {
        let mut v = [0u8; LVB_BYTES];
        v[..b.len()].copy_from_slice(b);
        v
    }

    #[test]
    fn the_value_block_is_text_only_when_printable_utf8() {
        assert_eq!(lvb_text(&lvb(b"gen-7")), Some("gen-7"));
        assert_eq!(lvb_text(&[0; LVB_BYTES]), Some(""));
        assert_eq!(lvb_text(&lvb("né 42".as_bytes())), Some("né 42"));
        assert_eq!(lvb_text(&lvb(b"a\nb")), None, "control characters");
        assert_eq!(lvb_text(&lvb(b"a\0b")), None, "a zero byte inside");
        assert_eq!(lvb_text(&lvb(&[0xff, 1])), None);
        assert_eq!(lvb_text(&[b'x'; LVB_BYTES]), Some("x".repeat(LVB_BYTES).as_str()));
    }

    #[test]
    fn what_cmd_writes_is_the_value_padded_and_at_most_32_bytes() {
        assert_eq!(value_of(b"", 0), Ok(None));
        assert_eq!(value_of(b"\n", 1), Ok(None));
        assert_eq!(value_of(b"gen-7", 5), Ok(Some(lvb(b"gen-7"))));
        assert_eq!(value_of(b"gen-7\n", 6), Ok(Some(lvb(b"gen-7"))), "echo's newline is dropped");
        assert_eq!(value_of(b"a\n\n", 3), Ok(Some(lvb(b"a\n\n"))), "not text: as it is");
        assert_eq!(value_of(&[1, 0xff, b'\n'], 3), Ok(Some(lvb(&[1, 0xff, b'\n']))), "raw bytes as they are");
        let full = [b'x'; LVB_BYTES];
        assert_eq!(value_of(&full, 32), Ok(Some(full)));
        assert_eq!(value_of(&[&full[..], b"\n"].concat(), 33), Ok(Some(full)));
        let err = value_of(&[b'x'; LVB_BYTES + 2], 40).unwrap_err();
        assert!(err.contains("40 bytes") && err.contains("more than the 32"), "{err}");
    }
}
