//! The node's control socket: how `sdc lock`, `sdc locks` and any other process on the host
//! reach the lock manager of the node's daemon.
//!
//! # Where
//!
//! `<run>/<cluster-uuid>/node-<N>.sock`, a unix socket of mode 0600 in a directory of mode 0700
//! (so: the daemon's user, root in production). `<run>` is the first of `$SDC_RUN_DIR`,
//! `/run/sdc`, `$XDG_RUNTIME_DIR/sdc` and `/tmp/sdc-<uid>` that can be created
//! ([`run_dirs`]); a client looks in each of them ([`find_sockets`]). The daemon removes the
//! socket as it exits; a socket left by a killed daemon is replaced by the next one.
//!
//! # Protocol, version 1
//!
//! Newline-delimited JSON objects, at most [`LINE_BYTES_MAX`] bytes a line, in both
//! directions. Every request carries `"v": 1`, an `"op"` and an `"id"` (a number the client
//! chooses, echoed in the replies to that request):
//!
//! ```text
//! {"v":1,"id":1,"op":"lock","lockspace":"default","name":"backup","mode":"ex",
//!  "noqueue":false,"timeout_ms":5000}               lockspace defaults to "default"
//! {"v":1,"id":2,"op":"convert","lock":7,"mode":"pr","noqueue":false,"quecvt":false,
//!  "timeout_ms":null,"lvb":"<64 hex digits>"}        lvb optional (written converting down from pw/ex)
//! {"v":1,"id":3,"op":"unlock","lock":7,"lvb":null} lvb optional (written when held in pw/ex)
//! {"v":1,"id":4,"op":"cancel","lock":7}
//! {"v":1,"id":5,"op":"snapshot"}
//! ```
//!
//! Replies (`"reply"` says which; every one has `"v": 1` and `"id"`, null when unsolicited):
//!
//! ```text
//! {"reply":"queued","id":1,"lock":7}        lock/convert accepted (may follow its completion)
//! {"reply":"granted","id":1,"lock":7,"mode":"ex","lvb":"<hex>","lvb_valid":false}
//! {"reply":"failed","id":1,"lock":7,"error":"would_block","message":"..."}
//!        error: would_block | timed_out | cancelled | deadlock | node_leaving | exhausted;
//!        with id null: a held lock was lost (node_leaving: this node leaves the cluster)
//! {"reply":"blocking","id":null,"lock":7,"wanted":"pr"}     release or convert down
//! {"reply":"ok","id":3}                     unlock / cancel done
//! {"reply":"snapshot","id":5,"snapshot":{...}}               see `sdc locks --json`
//! {"reply":"error","id":2,"message":"..."}  the request was refused; nothing changed
//! ```
//!
//! A value block (`"lvb"`) is always the 32 bytes as 64 hex digits. A `lock` reply `granted`
//! carries the resource's value block and whether it is valid (`lvb_valid`: false before the
//! first write, and after a pw or ex holder died); an `unlock` or a `convert` down from pw or
//! ex writes the `lvb` it carries (and makes it valid), else leaves it as it was. `sdc lock`
//! hands it to its command (`SDC_LOCK_LVB`, `SDC_LOCK_LVB_OUT`).
//!
//! A client's locks are released when its connection closes, like flock(2): a process that
//! dies releases what it held. When the daemon stops (a fence, a forced leave, a leave) every
//! connection is closed: a client that sees its connection close has lost its locks.
//!
//! # Leases
//!
//! A lock is only as good as the node that holds it: if the daemon stops answering (frozen by
//! SIGSTOP, a paused VM), the others judge it dead after `dead_ms` and take its locks, while a
//! client process that was not frozen with it would go on as if it held them. So the daemon
//! sends every connection `{"v":1,"reply":"alive","id":null,"lease_ms":N}` when it connects and
//! whenever it has sent nothing for `N / 3` ms, `N` being the node's `fence_ms`; a client holding
//! a lock that hears nothing for `N` ms must stop using it (`sdc lock` kills its command). The
//! timing rule (`fence_ms` + `heartbeat_ms` + slack < `dead_ms`) makes that happen before the
//! others recover.
//!
//! # Bounds
//!
//! [`CLIENTS_MAX`] connections (the next one gets an error line and is closed), lines of
//! [`LINE_BYTES_MAX`] bytes (a longer one is answered with an error and skipped), replies
//! queued per connection [`REPLIES_QUEUED_MAX`] and writes that block longer than
//! [`WRITE_TIMEOUT_MS`] (a client that does not read is disconnected, releasing its locks).

use super::{ClientError, Dlm, DlmClient, DlmEvent, LogFn};
use crate::mode::Mode;
use crate::types::{Flags, Grant, LockError, LockId, Lvb, ResName, LVB_BYTES};
use crossbeam_channel::{select, Receiver, Sender};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const PROTOCOL_VERSION: u64 = 1;
/// Longest request or reply line, in bytes (without the newline).
pub const LINE_BYTES_MAX: usize = 8192;
/// Connections at once.
pub const CLIENTS_MAX: usize = 1024;
/// Replies queued for one connection's writer.
pub const REPLIES_QUEUED_MAX: usize = 1024;
/// A write to a client that blocks this long disconnects it.
pub const WRITE_TIMEOUT_MS: u64 = 5000;
/// How long the accept loop pauses after a failed accept.
const ACCEPT_RETRY_MS: u64 = 100;
/// Replies gathered into one write to a client (beyond one line, which is written whole).
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// The environment variable that overrides the run directory (tests).
pub const RUN_DIR_ENV: &str = "SDC_RUN_DIR";
const THREAD_STACK_BYTES: usize = 128 * 1024;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket directory: tried {0}")]
    NoRunDir(String),
    #[error("a daemon already serves node {node}'s control socket at {path}")]
    InUse { node: u16, path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// The candidate run directories, in order of preference.
pub fn run_dirs() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os(RUN_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut v = vec![PathBuf::from("/run/sdc")];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(x).join("sdc"));
    }
    v.push(PathBuf::from(format!("/tmp/sdc-{}", uid())));
    v
}

/// `<cluster-uuid>` as the directory name.
pub fn cluster_dir_name(uuid: &[u8; 16]) -> String {
    membership_db::format::uuid_string(uuid)
}

pub fn socket_name(node: u16) -> String {
    format!("node-{node}.sock")
}

/// Creates (mode 0700) the cluster's socket directory under the first run directory that
/// allows it, and returns it.
pub fn create_cluster_dir(uuid: &[u8; 16]) -> Result<PathBuf, ControlError> {
    let mut tried = Vec::new();
    for base in run_dirs() {
        let dir = base.join(cluster_dir_name(uuid));
        let made = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
        match made {
            Ok(()) => {
                // An existing directory keeps its mode: make it 0700 (ours, or refuse it).
                let ok = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
                    && std::fs::metadata(&dir).is_ok_and(|m| m.uid() == uid());
                if ok {
                    return Ok(dir);
                }
                tried.push(format!("{} (not ours)", dir.display()));
            }
            Err(e) => tried.push(format!("{} ({e})", dir.display())),
        }
    }
    Err(ControlError::NoRunDir(tried.join(", ")))
}

/// The live control sockets of a cluster on this host, by node: every candidate run
/// directory is scanned, and a socket that accepts a connection counts.
pub fn find_sockets(uuid: &[u8; 16]) -> Vec<(u16, PathBuf)> {
    let mut found: Vec<(u16, PathBuf)> = Vec::new();
    for base in run_dirs() {
        let dir = base.join(cluster_dir_name(uuid));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.take(4096).flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_prefix("node-").and_then(|r| r.strip_suffix(".sock")) else { continue };
            let Ok(node) = node.parse::<u16>() else { continue };
            if found.iter().any(|(n, _)| *n == node) {
                continue;
            }
            if UnixStream::connect(e.path()).is_ok() {
                found.push((node, e.path()));
            }
        }
    }
    found.sort();
    found
}

/// The control socket server of one node's daemon.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    conns: Arc<Mutex<HashMap<u64, UnixStream>>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer").field("path", &self.path).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControlServer {
    /// Listens at `dir/node-<node>.sock` (mode 0600) and serves `dlm` there.
    ///
    /// Every connection hears an `alive` line at once and every `lease_ms / 3` after (see
    /// *Leases* in the module doc): `lease_ms` is the node's `fence_ms`.
    pub fn start(dir: &Path, node: u16, dlm: Dlm, log: LogFn, lease_ms: u64) -> Result<ControlServer, ControlError> {
        let path = dir.join(socket_name(node));
        let io = |source| ControlError::Io { path: path.clone(), source };
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(ControlError::InUse { node, path });
            }
            // Left by a daemon that was killed.
            std::fs::remove_file(&path).map_err(io)?;
        }
        let listener = UnixListener::bind(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        // Blocking: a connection is served as soon as it arrives (`stop_now` wakes the loop
        // with a connection of its own).
        listener.set_nonblocking(false).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<HashMap<u64, UnixStream>>> = Arc::new(Mutex::new(HashMap::new()));
        let (s, c) = (stop.clone(), conns.clone());
        let thread = std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || accept_loop(listener, dlm, log, s, c, lease_ms))
            .map_err(io)?;
        Ok(ControlServer { path, stop, thread: Some(thread), conns })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node was forced out: close every connection (their clients have lost their locks;
    /// `sdc lock` kills its command at once and exits) and wait, at most `wait`, until every
    /// client process is gone. `Err` names the clients still running: whatever they do with
    /// the resources they locked is no longer protected, and the node must not say it has
    /// stopped.
    pub fn fence(mut self, wait: Duration) -> Result<(), String> {
        let pids: Vec<Option<u32>> = lock(&self.conns).values().map(peer_pid).collect();
        self.stop_now();
        let began = std::time::Instant::now();
        loop {
            let running: Vec<String> = pids
                .iter()
                .filter(|p| p.is_none_or(process_running))
                .map(|p| p.map_or("a client of unknown process".into(), |p| format!("process {p}")))
                .collect();
            if running.is_empty() {
                return Ok(());
            }
            if began.elapsed() >= wait {
                return Err(format!("lock holders still running: {}", running.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops accepting, closes every connection (their clients see end of file: their locks
    /// are gone) and removes the socket.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // Wake the blocking accept; if nothing can connect (the socket was removed under
            // us), the thread is left blocked rather than waited for.
            if UnixStream::connect(&self.path).is_ok() {
                let _ = t.join();
            }
        }
        for (_, s) in lock(&self.conns).drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process at the other end of a unix socket.
#[allow(unsafe_code)]
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live unix socket owned by `stream`; `cred` and `len` are valid for
    // writes of the size passed, as SO_PEERCRED requires.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Whether process `pid` still runs (a zombie has stopped: it only waits to be reaped).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the command name, which is in parentheses and may hold anything.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn accept_loop(
    listener: UnixListener,
    dlm: Dlm,
    log: LogFn,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, UnixStream>>>,
    lease_ms: u64,
) {
    let ids = AtomicU64::new(1);
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok(_) if stop.load(Ordering::SeqCst) => break,
            Ok((stream, _)) => {
                if lock(&conns).len() >= CLIENTS_MAX {
                    let mut s = stream;
                    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                    let line = reply_error(None, &format!("too many clients (at most {CLIENTS_MAX})"));
                    let _ = s.write_all(format!("{line}\n").as_bytes());
                    continue;
                }
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let Ok(clone) = stream.try_clone() else { continue };
                lock(&conns).insert(id, clone);
                let (dlm, conn_log, conns) = (dlm.clone(), log.clone(), conns.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("control-{id}"))
                    .stack_size(THREAD_STACK_BYTES)
                    .spawn(move || {
                        serve(stream, &dlm, &conn_log, lease_ms);
                        lock(&conns).remove(&id);
                    });
                if let Err(e) = spawned {
                    log(&format!("control socket: cannot start a connection thread: {e}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log(&format!("control socket: accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
            }
        }
    }
}

/// What a line read gave.
enum Line {
    Text(Vec<u8>),
    TooLong,
    End,
}

/// Reads one line of at most [`LINE_BYTES_MAX`] bytes; a longer one is consumed to its end.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Text(buf));
    }
    if buf.len() <= LINE_BYTES_MAX {
        // End of file without a newline: take the line as it is.
        return Ok(Line::Text(buf));
    }
    // Skip to the end of the overlong line, a bounded read at a time.
    loop {
        buf.clear();
        let n = r.by_ref().take(LINE_BYTES_MAX as u64).read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
    }
}

fn serve(stream: UnixStream, dlm: &Dlm, log: &LogFn, lease_ms: u64) {
    let Ok(write_half) = stream.try_clone() else { return };
    let _ = write_half.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)));
    let client = dlm.client();
    let events = client.events().cloned().unwrap_or_else(crossbeam_channel::never);
    let (out_tx, out_rx) = crossbeam_channel::bounded::<String>(REPLIES_QUEUED_MAX);
    let writer = std::thread::Builder::new()
        .name("control-writer".into())
        .stack_size(THREAD_STACK_BYTES)
        .spawn(move || write_loop(write_half, out_rx, events, lease_ms));
    if let Err(e) = writer {
        log(&format!("control socket: cannot start a writer thread: {e}"));
        return;
    }
    let Ok(kill) = stream.try_clone() else { return };
    let kill = Arc::new(kill);
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader) {
            Ok(Line::End) | Err(_) => break,
            Ok(Line::TooLong) => {
                reply_error(None, &format!("request line longer than {LINE_BYTES_MAX} bytes; skipped"))
            }
            Ok(Line::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Line::Text(t)) => handle(&client, &t, &out_tx, &kill),
        };
        if !line.is_empty() && out_tx.send(line).is_err() {
            break;
        }
    }
    // The connection closed: the client goes, and with it its locks.
    drop(client);
    let _ = kill.shutdown(std::net::Shutdown::Both);
}

/// The line that renews a client's lease.
fn alive_line(lease_ms: u64) -> String {
    json!({"v": PROTOCOL_VERSION, "reply": "alive", "id": null, "lease_ms": lease_ms}).to_string()
}

fn write_loop(mut s: UnixStream, out: Receiver<String>, events: Receiver<DlmEvent>, lease_ms: u64) {
    let mut events = events;
    let mut buf: Vec<u8> = Vec::new();
    let renew = Duration::from_millis((lease_ms / 3).max(1));
    let mut first = Some(alive_line(lease_ms));
    loop {
        let line = match first.take() {
            Some(l) => l,
            None => select! {
                recv(out) -> l => match l { Ok(l) => l, Err(_) => break },
                recv(events) -> e => match e {
                    Ok(e) => event_line(&e),
                    Err(_) => { events = crossbeam_channel::never(); continue }
                },
                default(renew) => alive_line(lease_ms),
            },
        };
        // Every reply ready now goes out in one write (not two system calls a line).
        buf.clear();
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        while buf.len() < WRITE_BATCH_BYTES {
            let more = match out.try_recv() {
                Ok(l) => l,
                Err(_) => match events.try_recv() {
                    Ok(e) => event_line(&e),
                    Err(_) => break,
                },
            };
            buf.extend_from_slice(more.as_bytes());
            buf.push(b'\n');
        }
        if s.write_all(&buf).is_err() {
            // A client that does not read (or has gone): disconnect it; its locks go.
            let _ = s.shutdown(std::net::Shutdown::Both);
            break;
        }
    }
}

fn lock_error_name(e: LockError) -> &'static str {
    match e {
        LockError::WouldBlock => "would_block",
        LockError::TimedOut => "timed_out",
        LockError::Cancelled => "cancelled",
        LockError::Deadlock => "deadlock",
        LockError::NodeLeaving => "node_leaving",
        LockError::Exhausted => "exhausted",
    }
}

/// A value block (or any bytes) as lowercase hex digits, as the protocol carries it.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value block from its 64 hex digits.
pub fn unhex(s: &str) -> Result<Lvb, String> {
    let bad = || format!("lvb must be {} hex digits", 2 * LVB_BYTES);
    if s.len() != 2 * LVB_BYTES || !s.is_ascii() {
        return Err(bad());
    }
    let mut v = [0u8; LVB_BYTES];
    for (i, b) in v.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(v)
}

fn completion_line(id: Option<u64>, lock: LockId, result: &Result<Grant, LockError>) -> String {
    let v = match result {
        Ok(g) => json!({"v": PROTOCOL_VERSION, "reply": "granted", "id": id, "lock": lock.0, "mode": g.mode,
                        "lvb": hex(&g.lvb), "lvb_valid": g.lvb_valid}),
        Err(e) => json!({"v": PROTOCOL_VERSION, "reply": "failed", "id": id, "lock": lock.0,
                         "error": lock_error_name(*e), "message": e.to_string()}),
    };
    v.to_string()
}

fn event_line(e: &DlmEvent) -> String {
    match e {
        DlmEvent::Completion { lock, result } => completion_line(None, *lock, result),
        DlmEvent::Blocking { lock, wanted } => {
            json!({"v": PROTOCOL_VERSION, "reply": "blocking", "id": null, "lock": lock.0, "wanted": wanted})
                .to_string()
        }
    }
}

fn reply_error(id: Option<u64>, message: &str) -> String {
    json!({"v": PROTOCOL_VERSION, "reply": "error", "id": id, "message": message}).to_string()
}

/// A request, as parsed.
#[derive(Debug, PartialEq)]
enum Op {
    Lock { res: ResName, mode: Mode, flags: Flags },
    Convert { lock: LockId, mode: Mode, flags: Flags, lvb: Option<Lvb> },
    Unlock { lock: LockId, lvb: Option<Lvb> },
    Cancel { lock: LockId },
    Snapshot,
}

/// Parses a request line into its id and operation, or says what is wrong with it.
fn parse(line: &[u8]) -> (Option<u64>, Result<Op, String>) {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return (None, Err(format!("not a JSON request: {e}"))),
    };
    let id = v.get("id").and_then(Value::as_u64);
    (id, parse_op(&v, id))
}

fn parse_op(v: &Value, id: Option<u64>) -> Result<Op, String> {
    let obj = v.as_object().ok_or("a request is a JSON object")?;
    match obj.get("v").and_then(Value::as_u64) {
        Some(PROTOCOL_VERSION) => {}
        Some(other) => return Err(format!("protocol version {other}: this daemon speaks {PROTOCOL_VERSION}")),
        None => return Err(format!("missing \"v\": {PROTOCOL_VERSION}")),
    }
    if id.is_none() {
        return Err("missing \"id\" (a number echoed in the replies)".into());
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str);
    let flag = |k: &str| -> Result<bool, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("\"{k}\" must be true or false")),
        }
    };
    let mode = || -> Result<Mode, String> {
        text("mode").ok_or_else(|| "missing \"mode\" (nl, cr, cw, pr, pw or ex)".to_string())?.parse::<Mode>()
    };
    let lock = || -> Result<LockId, String> {
        obj.get("lock").and_then(Value::as_u64).map(LockId).ok_or_else(|| "missing \"lock\" (a lock id)".to_string())
    };
    let timeout = || -> Result<Option<u64>, String> {
        match obj.get("timeout_ms") {
            None | Some(Value::Null) => Ok(None),
            Some(t) => t.as_u64().map(Some).ok_or_else(|| "\"timeout_ms\" must be a number of milliseconds".into()),
        }
    };
    let lvb = || -> Result<Option<Lvb>, String> {
        match obj.get("lvb") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => unhex(s).map(Some),
            Some(_) => Err("\"lvb\" must be a hex string".into()),
        }
    };
    match text("op") {
        Some("lock") => {
            let space = match obj.get("lockspace") {
                None | Some(Value::Null) => "default",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err("\"lockspace\" must be a string".into()),
            };
            let name = text("name").ok_or("missing \"name\" (the resource name, a string)")?;
            let res = ResName::new(space, name.as_bytes()).map_err(|e| e.to_string())?;
            let flags = Flags { noqueue: flag("noqueue")?, quecvt: false, timeout_ms: timeout()? };
            Ok(Op::Lock { res, mode: mode()?, flags })
        }
        Some("convert") => {
            let flags = Flags { noqueue: flag("noqueue")?, quecvt: flag("quecvt")?, timeout_ms: timeout()? };
            Ok(Op::Convert { lock: lock()?, mode: mode()?, flags, lvb: lvb()? })
        }
        Some("unlock") => Ok(Op::Unlock { lock: lock()?, lvb: lvb()? }),
        Some("cancel") => Ok(Op::Cancel { lock: lock()? }),
        Some("snapshot") => Ok(Op::Snapshot),
        Some(other) => Err(format!("unknown op {other:?}: use lock, convert, unlock, cancel or snapshot")),
        None => Err("missing \"op\"".into()),
    }
}

/// Handles one request line; returns the reply line (empty: none now).
fn handle(client: &DlmClient, line: &[u8], out: &Sender<String>, conn: &Arc<UnixStream>) -> String {
    let (id, op) = parse(line);
    let op = match op {
        Ok(op) => op,
        Err(why) => return reply_error(id, &why),
    };
    let done = {
        let (out, conn) = (out.clone(), conn.clone());
        move |lock: LockId, result: Result<Grant, LockError>| {
            if out.try_send(completion_line(id, lock, &result)).is_err() {
                // Not reading its replies: disconnect it (its locks are released).
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
    };
    let refused = |e: ClientError| reply_error(id, &e.to_string());
    match op {
        Op::Lock { res, mode, flags } => match client.lock_async(res, mode, flags, done) {
            Ok(lock) => json!({"v": PROTOCOL_VERSION, "reply": "queued", "id": id, "lock": lock.0}).to_string(),
            Err(e) => refused(e),
        },
        Op::Convert { lock, mode, flags, lvb } => match client.convert_async(lock, mode, flags, lvb, done) {
            Ok(()) => json!({"v": PROTOCOL_VERSION, "reply": "queued", "id": id, "lock": lock.0}).to_string(),
            Err(e) => refused(e),
        },
        Op::Unlock { lock, lvb } => match client.unlock(lock, lvb) {
            Ok(()) => json!({"v": PROTOCOL_VERSION, "reply": "ok", "id": id}).to_string(),
            Err(e) => refused(e),
        },
        Op::Cancel { lock } => match client.cancel(lock) {
            Ok(()) => json!({"v": PROTOCOL_VERSION, "reply": "ok", "id": id}).to_string(),
            Err(e) => refused(e),
        },
        Op::Snapshot => match client_snapshot(client) {
            Ok(s) => json!({"v": PROTOCOL_VERSION, "reply": "snapshot", "id": id, "snapshot": s}).to_string(),
            Err(e) => refused(e),
        },
    }
}

fn client_snapshot(client: &DlmClient) -> Result<super::Snapshot, ClientError> {
    client.dlm_handle().snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_nonsense_is_refused_with_a_reason() {
        let ok = |s: &str| parse(s.as_bytes()).1.unwrap();
        let err = |s: &str| parse(s.as_bytes()).1.unwrap_err();
        assert_eq!(
            ok(r#"{"v":1,"id":1,"op":"lock","name":"a","mode":"ex","noqueue":true}"#),
            Op::Lock { res: ResName::new("default", b"a").unwrap(), mode: Mode::Ex, flags: Flags::NOQUEUE }
        );
        assert_eq!(ok(r#"{"v":1,"id":2,"op":"unlock","lock":7}"#), Op::Unlock { lock: LockId(7), lvb: None });
        assert_eq!(ok(r#"{"v":1,"id":2,"op":"snapshot"}"#), Op::Snapshot);
        assert!(err("garbage").contains("not a JSON request"));
        assert!(err("[1]").contains("JSON object"));
        assert!(err(r#"{"v":2,"id":1,"op":"snapshot"}"#).contains("version 2"));
        assert!(err(r#"{"id":1,"op":"snapshot"}"#).contains("\"v\""));
        assert!(err(r#"{"v":1,"op":"snapshot"}"#).contains("\"id\""));
        assert!(err(r#"{"v":1,"id":1,"op":"fly"}"#).contains("unknown op"));
        assert!(err(r#"{"v":1,"id":1,"op":"lock","name":"a","mode":"xx"}"#).contains("unknown lock mode"));
        assert!(err(r#"{"v":1,"id":1,"op":"lock","lockspace":"a b","name":"a","mode":"ex"}"#).contains("lockspace"));
        let long = "n".repeat(65);
        assert!(err(&format!(r#"{{"v":1,"id":1,"op":"lock","name":"{long}","mode":"ex"}}"#)).contains("1 to 64 bytes"));
        assert!(err(r#"{"v":1,"id":1,"op":"convert","mode":"ex"}"#).contains("\"lock\""));
        assert!(err(r#"{"v":1,"id":1,"op":"unlock","lock":1,"lvb":"zz"}"#).contains("hex"));
        assert_eq!(parse(br#"{"v":1,"id":9,"op":"fly"}"#).0, Some(9));
    }

    #[test]
    fn overlong_lines_are_skipped_whole() {
        let mut input = vec![b'x'; 3 * LINE_BYTES_MAX];
        input.extend_from_slice(b"\n{\"ok\":1}\nlast");
        let mut r = BufReader::new(&input[..]);
        assert!(matches!(read_line(&mut r).unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Text(t) if t == b"{\"ok\":1}"));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Text(t) if t == b"last"));
        assert!(matches!(read_line(&mut r).unwrap(), Line::End));
    }

    #[test]
    fn lvb_hex_round_trips() {
        let v: Lvb = std::array::from_fn(|i| i as u8 * 7);
        assert_eq!(unhex(&hex(&v)).unwrap(), v);
        assert!(unhex("00").is_err());
    }
}
