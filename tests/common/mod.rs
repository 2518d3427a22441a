//! Helpers shared by the `cli` and `multiprocess` integration tests.
//!
//! * [`sdc`] runs the binary under test (through `sdc_procs::procs`, like the demo and the
//!   benchmarks) and returns its output.
//! * [`Cluster`] is a formatted disk in its own temporary directory, with nodes added, that
//!   spawns `sdc join` daemons (the output of each in a log file) and kills every one of them
//!   with SIGKILL when dropped, so a failed test leaves no stray process behind.
//! * [`Cluster::wait_until`] polls a condition until a deadline and, on timeout, panics with the
//!   daemons' logs. Tests never sleep and hope.
//! * [`crc32`], [`flip_byte`], [`assert_unchanged`]: for damaging disks on purpose and checking
//!   that refused commands change nothing.

#![allow(dead_code)]

pub use sdc_procs::procs::exit_text;
pub use sdc_procs::procs::Daemon;
use sdc_procs::procs::{log_text, Sdc};
use serde_json::Value;
use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// The binary under test.
pub const SDC: &str = env!("CARGO_BIN_EXE_sdc");

/// Timings for tests: fast, with room for a loaded two-core CI machine that stalls a process
/// for a few hundred milliseconds (a stall longer than fence-ms fences a healthy node). The
/// format's rule: fence >= 3 * heartbeat (800 >= 300) and fence + heartbeat + 100 < dead
/// (1000 < 1200).
pub const HEARTBEAT_MS: u32 = 100;
pub const FENCE_MS: u32 = 800;
pub const DEAD_MS: u32 = 1200;
const _: () = assert!(FENCE_MS >= 3 * HEARTBEAT_MS);
const _: () = assert!(FENCE_MS + HEARTBEAT_MS + 100 < DEAD_MS);

/// How long any awaited event may take. Generous: CI is a loaded two-core machine, and these
/// tests check behaviour, never speed.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);

/// How long one command may run: longer than any `--timeout` a test passes (`sdc leave
/// --timeout 30`), so that a command that hangs fails the test rather than stalling it.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// `sdc status` and `sdc inspect` reads of a disk that daemons are writing: a torn read is
/// read again, at most this many times in all.
const TORN_READ_TRIES: u32 = 3;

/// Size of the disk files the tests create: room for the layout of 8 nodes.
pub const DISK_SIZE: &str = "8MiB";

// -------------------------------------------------------------------------------------------
// Running sdc

/// The binary under test; a panic in it shows in full.
fn bin() -> Sdc {
    Sdc::new(SDC).with_backtraces()
}

/// A free loopback port for a node's interconnect (bound and released: another process could
/// take it in between, which no test here does on purpose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs `sdc ARGS` to completion (within [`COMMAND_DEADLINE`]) and returns its output.
#[track_caller]
pub fn sdc<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    bin().run(&args, Instant::now() + COMMAND_DEADLINE).unwrap_or_else(|e| panic!("sdc {args:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// For assertion messages.
pub fn describe(out: &Output) -> String {
    format!("status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", out.status, stdout(out), stderr(out))
}

/// Asserts that the command succeeded.
#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "expected success, got {}", describe(out));
    assert_no_panic(out);
}

/// Asserts that the output carries no trace of a panic or a backtrace.
#[track_caller]
pub fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    for bad in ["panicked", "internal error", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "stderr contains {bad:?}: {}", describe(out));
    }
}

/// Asserts a refused command: exit `code`, exactly one non-empty line on stderr, beginning
/// with `prefix`, containing every one of `needles` (case-insensitive), and no panic.
#[track_caller]
pub fn assert_refused_with(out: &Output, code: i32, prefix: &str, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure, got {}", describe(out));
    assert_eq!(out.status.code(), Some(code), "exit status: {}", describe(out));
    assert_no_panic(out);
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected exactly one line on stderr: {}", describe(out));
    assert!(lines[0].starts_with(prefix), "stderr should start with {prefix:?}: {}", describe(out));
    let lower = lines[0].to_lowercase();
    for n in needles {
        assert!(lower.contains(&n.to_lowercase()), "stderr should mention {n:?}: {}", describe(out));
    }
}

/// [`assert_refused_with`] for the usual `sdc: error:` line.
#[track_caller]
pub fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    assert_refused_with(out, code, "sdc: error:", needles);
}

/// Parses a command's stdout as JSON, asserting success first.
#[track_caller]
pub fn json_of(out: &Output) -> Value {
    assert_ok(out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(out)))
}

// -------------------------------------------------------------------------------------------
// Disk bytes

/// The whole content of a file (or device), for comparing before and after a command.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Asserts that `path` still holds exactly `before`, naming the first byte that differs.
#[track_caller]
pub fn assert_unchanged(path: &Path, before: &[u8], what: &str) {
    let after = file_bytes(path);
    if after.len() != before.len() {
        panic!("{what}: {} changed size from {} to {} bytes", path.display(), before.len(), after.len());
    }
    if let Some(i) = before.iter().zip(&after).position(|(a, b)| a != b) {
        panic!(
            "{what}: {} changed; first difference at offset {i} (crc32 {:#010x} -> {:#010x})",
            path.display(),
            crc32(before),
            crc32(&after)
        );
    }
}

/// Runs `sdc ARGS`, which must be refused, and checks that `disk` is byte for byte unchanged.
#[track_caller]
pub fn refused_unchanged(disk: &Path, args: &[&str]) -> Output {
    let before = file_bytes(disk);
    let out = sdc(args);
    assert!(!out.status.success(), "sdc {args:?} should be refused: {}", describe(&out));
    assert_unchanged(disk, &before, &format!("sdc {}", args.join(" ")));
    out
}

/// crc32 (IEEE 802.3, reflected, the one zlib and the disk format use).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *entry = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    buf
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()));
    f.write_all_at(data, offset).unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
    f.sync_all().expect("sync");
}

/// Inverts every bit of the byte at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut b = read_at(path, offset, 1);
    b[0] ^= 0xff;
    write_at(path, offset, &b);
}

/// Deterministic pseudo-random bytes (xorshift64*), for a file that is not a cluster disk.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// -------------------------------------------------------------------------------------------
// Polling

/// Polls `f` every 50 ms until it returns `Some`, or panics after `deadline` with `what` and
/// `context()` (for instance the daemons' logs).
#[track_caller]
pub fn poll_until<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {:?} waiting until {what}\n{}", deadline, context());
        }
        std::thread::sleep(POLL);
    }
}

// -------------------------------------------------------------------------------------------
// A node daemon

/// One `sdc join` process of a [`Cluster`].
struct NodeDaemon {
    node: u16,
    daemon: Daemon,
}

/// A handle to a daemon spawned by a [`Cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc(usize);

// -------------------------------------------------------------------------------------------
// The cluster fixture

/// How to format a [`Cluster`].
pub struct ClusterSpec {
    pub max_nodes: u16,
    /// (id, name, master-eligible)
    pub nodes: Vec<(u16, String, bool)>,
    /// `None`: a new file in the temporary directory. `Some`: an existing disk (a loop device),
    /// formatted without `--size`.
    pub disk: Option<PathBuf>,
    /// More `sdc format` arguments (e.g. `--link-timeout-ms`).
    pub format_args: Vec<String>,
    /// Heartbeat, fence and dead milliseconds.
    pub timing: (u32, u32, u32),
}

impl ClusterSpec {
    /// Nodes 1..=n, named n1, n2, ..., all master-eligible.
    pub fn nodes(n: u16) -> ClusterSpec {
        ClusterSpec {
            max_nodes: 8,
            nodes: (1..=n).map(|i| (i, format!("n{i}"), true)).collect(),
            disk: None,
            format_args: Vec::new(),
            timing: (HEARTBEAT_MS, FENCE_MS, DEAD_MS),
        }
    }
    pub fn not_eligible(mut self, id: u16) -> ClusterSpec {
        self.nodes.iter_mut().filter(|n| n.0 == id).for_each(|n| n.2 = false);
        self
    }
    pub fn on_disk(mut self, disk: &Path) -> ClusterSpec {
        self.disk = Some(disk.to_path_buf());
        self
    }
    /// Formats with these heartbeat, fence and dead milliseconds rather than the tests' own.
    pub fn timing(mut self, heartbeat_ms: u32, fence_ms: u32, dead_ms: u32) -> ClusterSpec {
        self.timing = (heartbeat_ms, fence_ms, dead_ms);
        self
    }
    /// Formats with these extra `sdc format` arguments.
    pub fn format_with(mut self, args: &[&str]) -> ClusterSpec {
        self.format_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// A formatted disk in its own temporary directory, and the daemons running on it.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub disk: PathBuf,
    /// The daemons' control sockets go here (`SDC_RUN_DIR`).
    pub run_dir: PathBuf,
    daemons: RefCell<Vec<NodeDaemon>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL every daemon still running (stopped ones too) and reap it, before the
        // directory with their disk and logs goes.
        for d in self.daemons.get_mut().iter_mut() {
            let _ = d.daemon.kill();
        }
        // A failed test keeps its disk and logs for a post-mortem.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("kept the disk and node logs of the failed test in {}", self.dir.path().display());
        }
    }
}

impl Cluster {
    /// A cluster with nodes 1..=n, all master-eligible, on a file.
    pub fn new(n: u16) -> Cluster {
        Cluster::with(ClusterSpec::nodes(n))
    }

    /// Formats the disk with the fast test timings and adds the nodes.
    pub fn with(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::Builder::new().prefix("sdc-test-").tempdir().expect("temporary directory");
        let (disk, size) = match &spec.disk {
            Some(d) => (d.clone(), None),
            None => (dir.path().join("disk.img"), Some(DISK_SIZE)),
        };
        let mut args: Vec<String> = vec!["format".into(), "--disk".into(), disk.display().to_string()];
        if let Some(size) = size {
            args.extend(["--size".into(), size.into()]);
        }
        args.extend(
            [
                "--cluster",
                "test",
                "--max-nodes",
                &spec.max_nodes.to_string(),
                "--heartbeat-ms",
                &spec.timing.0.to_string(),
                "--fence-ms",
                &spec.timing.1.to_string(),
                "--dead-ms",
                &spec.timing.2.to_string(),
            ]
            .map(String::from),
        );
        args.extend(spec.format_args.iter().cloned());
        if spec.disk.is_some() {
            // A loop device may hold a cluster from an earlier run (nothing runs on it).
            args.push("--force".into());
        }
        assert_ok(&sdc(&args));
        let run_dir = dir.path().join("run");
        let cluster = Cluster { dir, disk, run_dir, daemons: RefCell::new(Vec::new()) };
        for (id, name, eligible) in &spec.nodes {
            let id = id.to_string();
            let address = format!("127.0.0.1:{}", free_port());
            let mut a = vec!["node", "add", "--node", &id, "--name", name, "--address", &address];
            if !eligible {
                a.push("--no-master-eligible");
            }
            assert_ok(&cluster.sdc(&a));
        }
        cluster
    }

    pub fn disk_str(&self) -> &str {
        self.disk.to_str().expect("UTF-8 path")
    }

    /// The binary, with this cluster's run directory, and its temporary directory as TMPDIR (so
    /// what a killed `sdc lock` leaves there goes with the test's directory).
    pub fn bin(&self) -> Sdc {
        bin().with_env("SDC_RUN_DIR", &self.run_dir).with_env("TMPDIR", self.dir.path())
    }

    /// Runs `sdc ARGS --disk DISK`.
    pub fn sdc(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--disk", self.disk_str()]);
        self.sdc_raw(&a)
    }

    /// Runs `sdc ARGS` as given, with this cluster's run directory.
    #[track_caller]
    pub fn sdc_raw(&self, args: &[&str]) -> Output {
        self.bin().run(args, Instant::now() + COMMAND_DEADLINE).unwrap_or_else(|e| panic!("sdc {args:?}: {e}"))
    }

    /// Starts `sdc ARGS` in the background (its output in `log`), killed when dropped.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Daemon {
        self.bin().spawn(args, log).unwrap_or_else(|e| panic!("sdc {args:?}: {e}"))
    }

    /// `sdc status --json`, which must succeed and report no corrupt record.
    ///
    /// With mmap I/O a read can race a daemon's write of the same record and see it torn; the
    /// record's checksum catches that and status warns of a corrupt record and does not use it
    /// for that one read. Such a sample is read again (a few times at most: lasting corruption
    /// fails the test).
    #[track_caller]
    pub fn status_json(&self) -> Value {
        self.status_json_or(|| self.logs())
    }

    /// [`Cluster::status_json`], with `logs` for the failure message (a fixture that runs
    /// daemons of its own passes their logs).
    #[track_caller]
    pub fn status_json_or(&self, logs: impl Fn() -> String) -> Value {
        let mut tries = 0;
        loop {
            tries += 1;
            let out = self.sdc(&["status", "--json"]);
            if !out.status.success() {
                panic!("sdc status failed: {}\n{}", describe(&out), logs());
            }
            if !stderr(&out).contains("corrupt") {
                return json_of(&out);
            }
            if tries >= TORN_READ_TRIES {
                panic!("sdc status reports corruption in {tries} reads in a row: {}\n{}", describe(&out), logs());
            }
        }
    }

    /// `sdc inspect --json`, which must succeed and find no corrupt record (read again, a few
    /// times at most, after a torn read; see [`Cluster::status_json`]).
    #[track_caller]
    pub fn inspect_json(&self) -> Value {
        self.inspect_json_or(|| self.logs())
    }

    /// [`Cluster::inspect_json`], with `logs` for the failure message.
    #[track_caller]
    pub fn inspect_json_or(&self, logs: impl Fn() -> String) -> Value {
        let mut tries = 0;
        loop {
            tries += 1;
            let out = self.sdc(&["inspect", "--json"]);
            // Exit 3: corrupt records found.
            let corrupt = out.status.code() == Some(3);
            if out.status.success() {
                return json_of(&out);
            }
            if !corrupt {
                panic!("sdc inspect failed: {}\n{}", describe(&out), logs());
            }
            if tries >= TORN_READ_TRIES {
                panic!("sdc inspect reports corruption in {tries} reads in a row: {}\n{}", describe(&out), logs());
            }
        }
    }

    // --- daemons -----------------------------------------------------------------------------

    /// Starts `sdc join --node NODE` with stderr in a log file of its own.
    pub fn join(&self, node: u16) -> Proc {
        self.join_with(node, &[])
    }

    /// [`Cluster::join`] with more arguments (e.g. `--layer` registrations).
    pub fn join_with(&self, node: u16, extra: &[&str]) -> Proc {
        let mut daemons = self.daemons.borrow_mut();
        let log = self.dir.path().join(format!("node{node}.{}.log", daemons.len()));
        let id = node.to_string();
        let mut args = vec!["join", "--disk", self.disk_str(), "--node", &id];
        args.extend(extra);
        // The daemon dies with the thread that spawned it (PR_SET_PDEATHSIG), should the test
        // process die without running Drop.
        let daemon = self.bin().spawn(&args, &log).unwrap_or_else(|e| panic!("sdc join --node {node}: {e}"));
        daemons.push(NodeDaemon { node, daemon });
        Proc(daemons.len() - 1)
    }

    /// Every daemon started, in order.
    pub fn procs(&self) -> Vec<Proc> {
        (0..self.daemons.borrow().len()).map(Proc).collect()
    }

    pub fn pid(&self, p: Proc) -> i32 {
        self.daemons.borrow()[p.0].daemon.pid() as i32
    }

    pub fn node_of(&self, p: Proc) -> u16 {
        self.daemons.borrow()[p.0].node
    }

    /// Sends `sig` to a daemon that has not been reaped.
    #[track_caller]
    pub fn signal(&self, p: Proc, sig: i32) {
        let d = &self.daemons.borrow()[p.0];
        if let Err(e) = d.daemon.signal(sig) {
            panic!("signal {sig} to node {} (pid {}): {e}", d.node, d.daemon.pid());
        }
    }

    /// SIGKILLs a daemon and reaps it.
    #[track_caller]
    pub fn kill9(&self, p: Proc) {
        self.signal(p, libc::SIGKILL);
        let status = self.wait_exit(p);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "node {} after SIGKILL", self.node_of(p));
    }

    /// The daemon's exit status if it has exited (reaping it).
    pub fn try_exit(&self, p: Proc) -> Option<ExitStatus> {
        let mut daemons = self.daemons.borrow_mut();
        let d = &mut daemons[p.0];
        d.daemon.try_wait().unwrap_or_else(|e| panic!("wait for node {} (pid {}): {e}", d.node, d.daemon.pid()))
    }

    /// Waits (bounded by [`DEADLINE`]) for the daemon to exit.
    #[track_caller]
    pub fn wait_exit(&self, p: Proc) -> ExitStatus {
        let (node, pid) = (self.node_of(p), self.pid(p));
        let waited = self.daemons.borrow_mut()[p.0].daemon.wait(Instant::now() + DEADLINE);
        match waited {
            Ok(Some(status)) => status,
            Ok(None) => {
                panic!("timed out after {DEADLINE:?} waiting until node {node} (pid {pid}) exits\n{}", self.logs())
            }
            Err(e) => panic!("wait for node {node} (pid {pid}): {e}\n{}", self.logs()),
        }
    }

    /// Asserts that the daemon is still running.
    #[track_caller]
    pub fn assert_running(&self, p: Proc) {
        if let Some(s) = self.try_exit(p) {
            panic!("node {} exited unexpectedly ({})\n{}", self.node_of(p), exit_text(s), self.logs());
        }
    }

    /// One daemon's log so far.
    pub fn log(&self, p: Proc) -> String {
        log_text(self.daemons.borrow()[p.0].daemon.log())
    }

    /// Every daemon's log, with a header naming the node, pid and how it ended.
    pub fn logs(&self) -> String {
        let n = self.daemons.borrow().len();
        let mut s = String::new();
        for i in 0..n {
            let state = match self.try_exit(Proc(i)) {
                Some(st) => exit_text(st),
                None => "running".into(),
            };
            let d = &self.daemons.borrow()[i];
            s += &format!(
                "--- node {} (pid {}, {state}) log {} ---\n{}\n",
                d.node,
                d.daemon.pid(),
                d.daemon.log().display(),
                log_text(d.daemon.log())
            );
        }
        if n == 0 {
            s += "(no daemons were started)\n";
        }
        s
    }

    // --- waiting -----------------------------------------------------------------------------

    /// Polls `cond` every 50 ms until it holds, or panics after `deadline` with `what` and the
    /// daemons' logs. Tests pass [`DEADLINE`] unless they have a reason not to.
    #[track_caller]
    pub fn wait_until(&self, deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        self.wait_for(deadline, what, || cond().then_some(()))
    }

    /// Polls `f` until it returns `Some`, or panics after `deadline` with the daemons' logs.
    #[track_caller]
    pub fn wait_for<T>(&self, deadline: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
        poll_until(deadline, what, f, || self.logs())
    }

    /// Waits until `sdc status` satisfies `cond`, returning that status. The last status seen
    /// is in the panic message on timeout.
    #[track_caller]
    pub fn wait_status(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let last = RefCell::new(Value::Null);
        poll_until(
            DEADLINE,
            what,
            || {
                let s = self.status_json();
                let ok = cond(&s);
                *last.borrow_mut() = s.clone();
                ok.then_some(s)
            },
            || format!("last status: {:#}\n{}", last.borrow(), self.logs()),
        )
    }

    /// Asserts that `sdc status` satisfies `cond` every time it is read over `duration`: for
    /// things that must stay true (a master that stays put, a node that never becomes master).
    #[track_caller]
    pub fn hold(&self, what: &str, duration: Duration, mut cond: impl FnMut(&Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < duration {
            let s = self.status_json();
            if !cond(&s) {
                panic!("{what} no longer holds after {:?}: status {s:#}\n{}", start.elapsed(), self.logs());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until a master is elected and every node in `live` is live, returning the status.
    #[track_caller]
    pub fn wait_master(&self, live: &[u16]) -> Value {
        self.wait_status(&format!("a master is elected and nodes {live:?} are live"), |s| {
            master(s).is_some() && live.iter().all(|&n| is_live(s, n))
        })
    }

    /// Checks with `sdc inspect` that exactly one heartbeat claims the status's master epoch and
    /// that it is the master's; also that no other live node acts as master of any epoch.
    #[track_caller]
    pub fn assert_one_master(&self, status: &Value) {
        let epoch = status["epoch"].as_u64().expect("epoch");
        let m = master(status).expect("a master");
        let inspect = self.inspect_json();
        let hbs = inspect["heartbeats"].as_array().expect("heartbeats");
        let claiming: Vec<u64> = hbs
            .iter()
            .filter(|h| h["record"]["master_epoch"].as_u64() == Some(epoch))
            .map(|h| h["node"].as_u64().unwrap())
            .collect();
        assert_eq!(
            claiming,
            vec![m as u64],
            "exactly one heartbeat should carry master epoch {epoch}, the master's (node {m})\nstatus {status:#}\nheartbeats {hbs:#?}\n{}",
            self.logs()
        );
        for h in hbs {
            let node = h["node"].as_u64().unwrap() as u16;
            let acting = h["record"]["master_epoch"].as_u64().unwrap_or(0);
            if node != m && acting != 0 && h["record"]["state"] == "up" && is_live(status, node) {
                panic!(
                    "live node {node} acts as master of epoch {acting} besides master {m} of epoch {epoch}\n{}",
                    self.logs()
                );
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Reading status JSON

pub fn master(status: &Value) -> Option<u16> {
    status["master"].as_u64().map(|m| m as u16)
}

pub fn epoch(status: &Value) -> u64 {
    status["epoch"].as_u64().expect("epoch in status")
}

#[track_caller]
pub fn node_status(status: &Value, node: u16) -> &Value {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"].as_u64() == Some(node as u64))
        .unwrap_or_else(|| panic!("node {node} is not in the status: {status:#}"))
}

pub fn is_live(status: &Value, node: u16) -> bool {
    node_status(status, node)["live"].as_bool() == Some(true)
}

pub fn incarnation(status: &Value, node: u16) -> Option<u64> {
    node_status(status, node)["incarnation"].as_u64()
}

/// A record's offset in `sdc inspect --json`, by section and node (and copy).
#[track_caller]
pub fn record_offset(inspect: &Value, section: &str, node: u64, copy: Option<u64>) -> u64 {
    inspect[section]
        .as_array()
        .unwrap_or_else(|| panic!("no {section} in inspect"))
        .iter()
        .find(|r| r["node"].as_u64() == Some(node) && copy.is_none_or(|c| r["copy"].as_u64() == Some(c)))
        .and_then(|r| r["offset"].as_u64())
        .unwrap_or_else(|| panic!("no {section} record of node {node} copy {copy:?}"))
}

/// A region's offset and length in `sdc inspect --json`.
#[track_caller]
pub fn region(inspect: &Value, kind: &str) -> (u64, u64) {
    let r = inspect["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no region {kind}"));
    (r["offset"].as_u64().unwrap(), r["len"].as_u64().unwrap())
}

// -------------------------------------------------------------------------------------------
// Loop devices

/// A loop device attached to a file, detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` (with extra `losetup` arguments), or says why it cannot.
    pub fn attach(file: &Path, extra: &[&str]) -> Result<LoopDevice, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let mut cmd = Command::new("losetup");
        cmd.args(extra).args(["-f", "--show"]).arg(file);
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => return Err(format!("cannot run losetup: {e}")),
        };
        if !out.status.success() {
            return Err(format!("losetup {extra:?} -f --show failed: {}", stderr(&out).trim()));
        }
        let path = PathBuf::from(stdout(&out).trim());
        if !path.starts_with("/dev/") {
            return Err(format!("losetup printed {:?}", path));
        }
        let dev = LoopDevice { path };
        if !dev.path.exists() {
            // In some containers the device node is not there; detach again on drop.
            return Err(format!("losetup attached {} but the device node does not exist", dev.path.display()));
        }
        Ok(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let out = Command::new("losetup").arg("-d").arg(&self.path).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("warning: losetup -d {} failed: {}", self.path.display(), stderr(&o).trim()),
            Err(e) => eprintln!("warning: cannot run losetup -d {}: {e}", self.path.display()),
        }
    }
}

/// Prints the skip line the test report looks for.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}
