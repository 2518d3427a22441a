//! `sdc demo`: a three-node cluster on a loop file in a temporary directory, with a narrated
//! timeline of what the membership manager does: three joins, a graceful leave, two nodes
//! contending for a lock through `sdc lock` (a clean handover carries the value block, valid),
//! a kill -9 of the holder's node and its forced leave (the holder's `sdc lock` kills its
//! command and exits 9; the waiter gets the lock, its value block not valid), a rejoin, the
//! master's death and the new master, and a second rejoin.
//!
//! The daemons are child processes of this same binary (`sdc join`: the lock manager and three rehearsal layers),
//! each logging to its own file in the temporary directory. The demo drives the scenario by
//! reading the disk as `sdc status` does, and takes what the layers did, and when, from the
//! daemons' logs, so the narration says what really happened. Every step has a deadline. Every
//! child is killed (SIGKILL) on every way out, Ctrl-C included, and the directory is removed
//! unless `--keep`.

use crate::cli::{DemoArgs, DiskArgs};
use crate::util::{open_db, snapshot};
use crate::{exit, fail, CmdResult, Failure};
use membership_db::db::MembershipDb;
use membership_db::format::{MemberState, NodeId, Timing};
use membership_db::io::IoMode;
use membership_db::status::{ClusterStatus, NodeStatus};
use membership_db::time::unix_ms;
use sdc_procs::procs::{self, exit_text, last_line, read_log, Daemon, LogLine, Sdc};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Node names; node ids are 1 to 3.
const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
/// The rehearsal layers every node registers, bottom-up.
const LAYERS: [&str; 3] = ["vdm:20", "sfs:30", "em:40"];
const CLUSTER: &str = "demo";
const DISK_SIZE: &str = "64MiB";
/// fence >= 3 * heartbeat and fence + heartbeat + 100 < dead, as the format requires.
const FAST: Timing = Timing { heartbeat_ms: 50, dead_ms: 600, fence_ms: 300 };
/// The defaults of `sdc format`.
const SLOW: Timing = Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 };
const _: () = assert!(FAST.fence_ms >= 3 * FAST.heartbeat_ms && FAST.fence_ms + FAST.heartbeat_ms + 100 < FAST.dead_ms);
const _: () = assert!(SLOW.fence_ms >= 3 * SLOW.heartbeat_ms && SLOW.fence_ms + SLOW.heartbeat_ms + 100 < SLOW.dead_ms);
/// How long any one step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two polls.
const POLL: Duration = Duration::from_millis(25);
/// How long an `sdc lock` still running at the end may take to stop its command after SIGTERM.
const LOCK_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// The lock the demo's nodes contend for.
const LOCK_NAME: &str = "demo-license";
/// What the reading commands print: the value block as text, and whether it is valid.
const SHOW_LVB: &str = r#"echo "value=$SDC_LOCK_LVB_TEXT valid=$SDC_LOCK_LVB_VALID""#;

fn layer_title(name: &str) -> String {
    match name {
        "dlm" => "DLM".into(),
        "vdm" => "VDM".into(),
        "sfs" => "SFS".into(),
        "em" => "event manager".into(),
        other => other.into(),
    }
}

/// `DLM (3 barriers) → VDM → SFS → event manager`: the layers in the order notified, one
/// notification per barrier.
fn render_steps(layers: &[String]) -> String {
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for l in layers {
        match groups.last_mut() {
            Some((name, n)) if *name == l.as_str() => *n += 1,
            _ => groups.push((l, 1)),
        }
    }
    if groups.is_empty() {
        return "no layer".into();
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(name, n)| if *n > 1 { format!("{} ({n} barriers)", layer_title(name)) } else { layer_title(name) })
        .collect();
    parts.join(" → ")
}

/// `node 1`, `nodes 1 and 2`, `nodes 1, 2 and 3`
fn nodes_text(nodes: &[u16]) -> String {
    match nodes {
        [] => "no node".into(),
        [n] => format!("node {n}"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(|n| n.to_string()).collect();
            format!("nodes {} and {last}", rest.join(", "))
        }
    }
}

/// How a restarted daemon took its slot over, as its log tells. A kill -9 leaves the slot's
/// heartbeat `up`, so the new daemon watches it; it takes the slot over at once when the cluster
/// state shows that incarnation stopped (a completed forced leave records it), else once the
/// heartbeat has stayed still for dead-ms.
fn takeover_text(log: &[LogLine]) -> String {
    let proven = log.iter().find_map(|l| {
        let rest = l.text.strip_prefix("the cluster state of epoch ")?;
        let (epoch, rest) = rest.split_once(" shows incarnation ")?;
        let (stopped, _) = rest.split_once(" stopped: taking over its slot at once")?;
        Some((epoch.to_string(), stopped.to_string()))
    });
    if let Some((epoch, stopped)) = proven {
        return format!(
            ", taking its slot over at once (its heartbeat still showed incarnation {stopped} up, but the cluster \
             state of epoch {epoch} shows that incarnation stopped)"
        );
    }
    if log.iter().any(|l| l.text.starts_with("this node's slot shows a running daemon")) {
        return ", after watching its slot's stale heartbeat for dead-ms".into();
    }
    String::new()
}

fn name(node: u16) -> &'static str {
    NAMES[node as usize - 1]
}

fn node_of(s: &ClusterStatus, node: u16) -> Option<&NodeStatus> {
    s.nodes.iter().find(|n| n.node == NodeId(node))
}

// ---------------------------------------------------------------------------------------------
// The demo

/// The lock handed from node `a` to node `b` through the kill of node `a`.
#[derive(Debug, Clone, Copy)]
struct LockScene {
    a: u16,
    b: u16,
    /// Indexes in `Demo::locks`: a's `sdc lock` holding EX, and b's waiting.
    holder: usize,
    waiter: usize,
    /// The pid of the command node a's `sdc lock` runs.
    holder_pid: i32,
}

/// One `sdc join` daemon the demo started.
struct NodeDaemon {
    node: u16,
    daemon: Daemon,
    /// The demo stops it on purpose (kill -9, sdc leave): its exit is no failure.
    exit_expected: bool,
}

struct Demo {
    started: Instant,
    /// This binary, which runs the commands and the daemons.
    sdc: Sdc,
    dir: PathBuf,
    disk: PathBuf,
    keep: bool,
    timing: Timing,
    db: Option<MembershipDb>,
    daemons: Vec<NodeDaemon>,
    /// The `sdc lock` commands started in the background, and when each was first seen ended
    /// (every wait looks).
    locks: Vec<Daemon>,
    lock_ended: Vec<Option<u64>>,
    /// Set when stdout cannot be written.
    stdout_error: std::cell::RefCell<Option<String>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.kill_all();
        self.db = None;
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Demo {
    fn say(&self, line: impl std::fmt::Display) {
        self.print(&format!("[{:5.2}s] {line}\n", self.started.elapsed().as_secs_f64()));
    }

    /// Writes to stdout; a closed stdout (`sdc demo | head`) stops the demo at the next check.
    fn print(&self, text: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.stdout_error.replace(Some(e.to_string()));
        }
    }

    fn disk_str(&self) -> String {
        self.disk.display().to_string()
    }

    /// Kills every daemon still running; returns how many there were. The `sdc lock` commands
    /// still running get SIGTERM first, which they pass on to their commands before releasing
    /// their locks and exiting (a SIGKILL would leave their commands behind).
    fn kill_all(&mut self) -> usize {
        for l in &self.locks {
            let _ = l.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + LOCK_STOP_TIMEOUT;
        for l in &mut self.locks {
            if !matches!(l.wait(deadline), Ok(Some(_))) {
                let _ = l.kill();
            }
        }
        let mut killed = 0;
        for d in &mut self.daemons {
            if d.daemon.exit().is_none() {
                let _ = d.daemon.kill();
                killed += 1;
            }
        }
        killed
    }

    fn check_interrupted(&self) -> Result<(), Failure> {
        if let Some(e) = self.stdout_error.borrow().as_ref() {
            return fail(format!("cannot write to stdout ({e}); stopped the demo"));
        }
        let Some(sig) = procs::interrupted() else { return Ok(()) };
        let what =
            if sig == libc::SIGINT { "interrupted (SIGINT)".to_string() } else { format!("stopped by signal {sig}") };
        let dir =
            if self.keep { format!("kept {}", self.dir.display()) } else { format!("removed {}", self.dir.display()) };
        Err(Failure { status: 128 + sig, message: format!("demo {what}; killed the daemons and {dir}") })
    }

    /// The tail of a failure message: where to look.
    fn hint(&self) -> String {
        if self.keep {
            format!("; the daemons' logs are in {}", self.dir.display())
        } else {
            "; run `sdc demo --keep` to keep the daemons' logs".into()
        }
    }

    /// Records the daemons that exited; one that exits unasked is a failed demo.
    fn check_daemons(&mut self) -> Result<(), Failure> {
        for i in 0..self.daemons.len() {
            let d = &mut self.daemons[i];
            if d.daemon.exit().is_some() {
                continue;
            }
            let Some(status) = d.daemon.try_wait()? else { continue };
            if !d.exit_expected {
                let node = d.node;
                let last = last_line(d.daemon.log());
                return fail(format!(
                    "the daemon of node {node} ({}) exited unexpectedly ({}); its last log line: {last}{}",
                    name(node),
                    exit_text(status),
                    self.hint()
                ));
            }
        }
        Ok(())
    }

    fn db(&self) -> &MembershipDb {
        self.db.as_ref().expect("the disk is open once formatted")
    }

    fn status(&self) -> Result<ClusterStatus, Failure> {
        Ok(ClusterStatus::of(&snapshot(self.db())?))
    }

    /// `master none, epoch 1; node 1 joined live, node 2 inactive dead, ...`, for failures.
    fn summary(&self) -> String {
        let Ok(s) = self.status() else { return "the disk could not be read".into() };
        let nodes: Vec<String> = s
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "node {} {} {}",
                    n.node,
                    n.state.map_or("unknown", |s| s.name()),
                    if n.live { "live" } else { "not live" }
                )
            })
            .collect();
        let master = s.master.map_or("none".into(), |m| format!("node {m}"));
        let moving: Vec<String> =
            s.transitions.iter().map(|t| format!("{} of node {}", t.kind.name(), t.node)).collect();
        let moving = if moving.is_empty() { String::new() } else { format!("; in flight: {}", moving.join(", ")) };
        format!("master {master}, epoch {}; {}{moving}", s.epoch, nodes.join(", "))
    }

    /// Polls `ready` until it returns a value, within [`STEP_TIMEOUT`].
    fn wait<T>(
        &mut self,
        what: &str,
        mut ready: impl FnMut(&mut Demo) -> Result<Option<T>, Failure>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            self.check_interrupted()?;
            self.check_daemons()?;
            self.note_lock_ends();
            if let Some(v) = ready(self)? {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "gave up after {} s waiting for {what} (the disk says: {}){}",
                    STEP_TIMEOUT.as_secs(),
                    self.summary(),
                    self.hint()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `sdc ARGS` to completion (bounded) and returns its stdout.
    fn sdc(&self, args: &[&str]) -> Result<String, Failure> {
        self.check_interrupted()?;
        let shown = format!("sdc {}", args.first().copied().unwrap_or_default());
        let out = match self.sdc.run(args, Instant::now() + STEP_TIMEOUT) {
            Ok(out) => out,
            Err(procs::Error::TimedOut) => {
                return fail(format!("`{shown}` did not finish within {} s{}", STEP_TIMEOUT.as_secs(), self.hint()))
            }
            Err(procs::Error::Interrupted(_)) => {
                self.check_interrupted()?;
                return fail(format!("`{shown}` was interrupted"));
            }
            Err(e) => return fail(e.to_string()),
        };
        self.check_interrupted()?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").to_string();
            return fail(format!("`{shown}` failed ({}): {why}", exit_text(out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `sdc join` for `node`, logging to a file of its own; returns the daemon's index.
    fn start(&mut self, node: u16) -> Result<usize, Failure> {
        let run = self.daemons.iter().filter(|d| d.node == node).count() + 1;
        let log = self.dir.join(if run == 1 { format!("node{node}.log") } else { format!("node{node}-run{run}.log") });
        let (disk, id) = (self.disk_str(), node.to_string());
        let mut args = vec!["join", "--disk", &disk, "--node", &id];
        for l in LAYERS {
            args.extend(["--layer", l]);
        }
        let daemon = self.sdc.spawn(&args, &log).map_err(|e| Failure::from(e.to_string()))?;
        self.daemons.push(NodeDaemon { node, daemon, exit_expected: false });
        Ok(self.daemons.len() - 1)
    }

    /// The daemon of `node` that runs now.
    fn running(&self, node: u16) -> Option<usize> {
        self.daemons.iter().rposition(|d| d.node == node && d.daemon.exit().is_none())
    }

    /// Fails unless the disk shows `node` as a live, joined member: what the next step needs.
    fn expect_member(&self, node: u16, before: &str) -> Result<(), Failure> {
        let s = self.status()?;
        if node_of(&s, node).is_some_and(|n| n.state == Some(MemberState::Joined) && n.live) {
            return Ok(());
        }
        fail(format!(
            "node {node} ({}) should be a live member before {before}, but the disk says: {}{}",
            name(node),
            self.summary(),
            self.hint()
        ))
    }

    /// The running daemon of `node`, which the scenario needs now.
    fn daemon_of(&self, node: u16) -> Result<usize, Failure> {
        match self.running(node) {
            Some(i) => Ok(i),
            None => fail(format!(
                "node {node} has no running daemon at this step (the disk says: {}){}",
                self.summary(),
                self.hint()
            )),
        }
    }

    fn kill9(&mut self, i: usize) -> u64 {
        let d = &mut self.daemons[i];
        d.exit_expected = true;
        let at = unix_ms();
        let _ = d.daemon.kill();
        at
    }

    /// The layers notified for one transition, in order, as daemon `i` logged them.
    fn steps_seen_by(&self, i: usize, kind: &str, subject: u16, incarnation: u64) -> Vec<String> {
        read_log(self.daemons[i].daemon.log())
            .iter()
            .filter_map(LogLine::layer_note)
            .filter(|n| n.kind == kind && n.subject == subject && n.incarnation == incarnation)
            .map(|n| n.layer)
            .collect()
    }

    /// The nodes whose layers were notified of a transition, from every daemon's log.
    fn took_part(&self, kind: &str, subject: u16, incarnation: u64) -> Vec<u16> {
        let mut nodes: Vec<u16> = (0..self.daemons.len())
            .filter(|&i| !self.steps_seen_by(i, kind, subject, incarnation).is_empty())
            .map(|i| self.daemons[i].node)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// When daemon `i` first logged a line starting with `prefix`, at or after `since`.
    fn logged(&self, i: usize, prefix: &str, since: u64) -> Option<u64> {
        read_log(self.daemons[i].daemon.log())
            .iter()
            .find(|l| l.unix_ms >= since && l.text.starts_with(prefix))
            .map(|l| l.unix_ms)
    }

    // -----------------------------------------------------------------------------------------
    // The steps

    fn setup(&mut self) -> Result<(), Failure> {
        let disk = self.disk_str();
        let t = self.timing;
        self.sdc(&[
            "format",
            "--disk",
            &disk,
            "--size",
            DISK_SIZE,
            "--cluster",
            CLUSTER,
            "--max-nodes",
            "8",
            "--heartbeat-ms",
            &t.heartbeat_ms.to_string(),
            "--dead-ms",
            &t.dead_ms.to_string(),
            "--fence-ms",
            &t.fence_ms.to_string(),
        ])?;
        self.db = Some(open_db(&DiskArgs { disk: self.disk.clone(), io: IoMode::Mmap }, false)?);
        self.say(format!(
            "formatted a 64 MiB loop file at {disk}: cluster {CLUSTER}, heartbeat {} ms, dead {} ms, fence {} ms, mmap I/O",
            t.heartbeat_ms, t.dead_ms, t.fence_ms
        ));
        for node in 1..=3u16 {
            // A free loopback port each for the lock managers' interconnect.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Failure::from(format!("no free loopback port: {e}")))?
                .port();
            let address = format!("127.0.0.1:{port}");
            self.sdc(&[
                "node",
                "add",
                "--disk",
                &disk,
                "--node",
                &node.to_string(),
                "--name",
                name(node),
                "--address",
                &address,
            ])?;
        }
        self.say("added node 1 (alpha), node 2 (bravo) and node 3 (charlie) to the node table");
        self.say(
            "each node runs its lock manager (DLM, order 10, 3 barriers: stop, rebuild, resume) and three rehearsal \
             layers above it, bottom-up: VDM (20), SFS (30), event manager (40); each logs every notification it gets",
        );
        Ok(())
    }

    /// Starts `node` and waits until it has joined; returns (daemon index, incarnation).
    fn join(&mut self, node: u16) -> Result<(usize, u64), Failure> {
        let rejoin = self.daemons.iter().any(|d| d.node == node);
        let i = self.start(node)?;
        let pid = self.daemons[i].daemon.pid();
        if self.daemons.len() == 1 {
            let layers: Vec<String> = LAYERS.iter().map(|l| format!("--layer {l}")).collect();
            self.say(format!(
                "started node {node} ({}), pid {pid}: sdc join --disk {} --node {node} {}",
                name(node),
                self.disk_str(),
                layers.join(" ")
            ));
        } else {
            self.say(format!("started node {node} ({}), pid {pid}: sdc join --node {node}, same layers", name(node)));
        }
        let first = self.daemons.len() == 1;
        if first {
            let epoch = self.wait(&format!("node {node} to become master"), |d| {
                let s = d.status()?;
                Ok((s.master == Some(NodeId(node))).then_some(s.epoch))
            })?;
            self.say(format!(
                "node {node} ({}) is master (epoch {epoch}): the first node up wins the election on the disk",
                name(node)
            ));
        }
        let incarnation = self.wait(&format!("node {node} to join"), |d| {
            let s = d.status()?;
            Ok(node_of(&s, node)
                .filter(|n| n.state == Some(MemberState::Joined) && n.live && n.pid == Some(pid))
                .and_then(|n| n.incarnation))
        })?;
        let steps = render_steps(&self.steps_seen_by(i, "join", node, incarnation));
        let with = nodes_text(&self.took_part("join", node, incarnation));
        if rejoin {
            let takeover = takeover_text(&read_log(self.daemons[i].daemon.log()));
            self.say(format!(
                "node {node} ({}) rejoins with incarnation {incarnation}{takeover}: {steps}; {with} took part",
                name(node)
            ));
        } else if first {
            self.say(format!("node {node} ({}) joined: {steps}, alone", name(node)));
        } else {
            self.say(format!(
                "node {node} ({}) joined: {steps}; {with} took part, each layer a cluster-wide barrier",
                name(node)
            ));
        }
        Ok((i, incarnation))
    }

    fn graceful_leave(&mut self, node: u16, incarnation: u64) -> Result<(), Failure> {
        let i = self.daemon_of(node)?;
        self.expect_member(node, "its graceful leave")?;
        self.say(format!("node {node} ({}) leaves gracefully: sdc leave --node {node}", name(node)));
        self.daemons[i].exit_expected = true;
        let disk = self.disk_str();
        self.sdc(&[
            "leave",
            "--disk",
            &disk,
            "--node",
            &node.to_string(),
            "--timeout",
            &STEP_TIMEOUT.as_secs().to_string(),
        ])?;
        let status = self.wait(&format!("the daemon of node {node} to exit"), |d| Ok(d.daemons[i].daemon.exit()))?;
        if status.code() != Some(0) {
            return fail(format!("the daemon of node {node} left but ended with {}{}", exit_text(status), self.hint()));
        }
        self.wait(&format!("node {node} to be inactive"), |d| {
            let s = d.status()?;
            Ok(node_of(&s, node).filter(|n| n.state == Some(MemberState::Inactive) && !n.live).map(|_| ()))
        })?;
        let steps = render_steps(&self.steps_seen_by(i, "leave", node, incarnation));
        let with = nodes_text(&self.took_part("leave", node, incarnation));
        self.say(format!(
            "node {node} left, top-down: {steps}; {with} took part; its daemon marked its slot down and exited 0"
        ));
        Ok(())
    }

    /// kill -9 of a node that is not master (`why`: what that node is doing); the master forces it out.
    fn kill_member(&mut self, node: u16, incarnation: u64, why: &str) -> Result<u64, Failure> {
        let s = self.status()?;
        let master = s.master.map(|m| m.0).filter(|&m| m != node);
        let Some(master) = master else {
            return fail(format!("no master but node {node} to force it out (the disk says: {})", self.summary()));
        };
        let m = self.daemon_of(master)?;
        let i = self.daemon_of(node)?;
        self.expect_member(node, "its kill -9")?;
        let pid = self.daemons[i].daemon.pid();
        let killed_at = self.kill9(i);
        self.say(format!("kill -9 node {node} ({}), pid {pid}{why}", name(node)));
        let done_prefix = format!("master: forced-leave of node {node} complete");
        let done_at = self.wait(&format!("the master to force node {node} out"), |d| {
            let s = d.status()?;
            let out = node_of(&s, node).is_some_and(|n| n.state == Some(MemberState::Inactive) && !n.live)
                && !s.transitions.iter().any(|t| t.node == NodeId(node));
            Ok(if out { d.logged(m, &done_prefix, killed_at) } else { None })
        })?;
        let noticed = self.logged(m, &format!("node {node} is dead"), killed_at);
        let noticed = noticed.map_or("(its log does not say when)".into(), |t| format!("after {} ms", t - killed_at));
        let steps = render_steps(&self.steps_seen_by(m, "forced-leave", node, incarnation));
        let with = nodes_text(&self.took_part("forced-leave", node, incarnation));
        self.say(format!(
            "node {master} noticed {noticed} (dead-ms {}, counted from the last heartbeat it saw); forced leave of node {node} ran bottom-up through {steps} \
             (acknowledged by {with}); node {node} is inactive {} ms after the kill",
            self.timing.dead_ms,
            done_at - killed_at
        ));
        Ok(killed_at)
    }

    /// kill -9 of the master; another node takes over and forces it out. Returns the new master.
    fn kill_master(&mut self) -> Result<u16, Failure> {
        let s = self.status()?;
        let Some(old) = s.master.map(|m| m.0) else { return fail("no master to kill") };
        let old_epoch = s.epoch;
        let incarnation = node_of(&s, old).and_then(|n| n.incarnation).unwrap_or_default();
        let i = self.daemon_of(old)?;
        self.expect_member(old, "its kill -9")?;
        let pid = self.daemons[i].daemon.pid();
        let killed_at = self.kill9(i);
        self.say(format!("kill -9 the master, node {old} ({}), pid {pid}", name(old)));
        let (new, epoch) = self.wait("a new master", |d| {
            let s = d.status()?;
            Ok(s.master.filter(|m| m.0 != old && s.epoch > old_epoch).map(|m| (m.0, s.epoch)))
        })?;
        let m = self.daemon_of(new)?;
        let done_prefix = format!("master: forced-leave of node {old} complete");
        let done_at = self.wait(&format!("node {new} to force node {old} out"), |d| {
            let s = d.status()?;
            let out = node_of(&s, old).is_some_and(|n| n.state == Some(MemberState::Inactive) && !n.live)
                && !s.transitions.iter().any(|t| t.node == NodeId(old));
            Ok(if out { d.logged(m, &done_prefix, killed_at) } else { None })
        })?;
        let after = |prefix: &str| self.logged(m, prefix, killed_at).map(|t| t - killed_at);
        let became = after(&format!("this node is now master (epoch {epoch})"));
        let noticed = after(&format!("node {old} is dead"));
        let text = match (noticed, became) {
            (Some(n), Some(b)) => {
                format!("judged node {old} dead after {n} ms and is master (epoch {epoch}) after {b} ms")
            }
            (_, Some(b)) => format!("is master (epoch {epoch}) after {b} ms"),
            _ => format!("is master (epoch {epoch})"),
        };
        self.say(format!("node {new} ({}) {text}", name(new)));
        let steps = render_steps(&self.steps_seen_by(m, "forced-leave", old, incarnation));
        let with = nodes_text(&self.took_part("forced-leave", old, incarnation));
        self.say(format!(
            "node {new} forced node {old} out: {steps} (acknowledged by {with}); node {old} is inactive {} ms after the kill",
            done_at - killed_at
        ));
        Ok(new)
    }

    /// `sdc lock --disk D --node N ARGS...` as the demo runs it.
    fn lock_args(&self, node: u16, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> =
            ["lock", "--disk", &self.disk_str(), "--node", &node.to_string()].iter().map(|s| s.to_string()).collect();
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    /// Starts an `sdc lock` in the background, logging to a file of its own; its index.
    fn spawn_lock(&mut self, node: u16, rest: &[&str]) -> Result<usize, Failure> {
        let log = self.dir.join(format!("lock{}-node{node}.log", self.locks.len() + 1));
        let d = self.sdc.spawn(self.lock_args(node, rest), &log).map_err(|e| Failure::from(e.to_string()))?;
        self.locks.push(d);
        self.lock_ended.push(None);
        Ok(self.locks.len() - 1)
    }

    /// Records when each `sdc lock` is first seen ended.
    fn note_lock_ends(&mut self) {
        for (l, ended) in self.locks.iter_mut().zip(self.lock_ended.iter_mut()) {
            if ended.is_none() && matches!(l.try_wait(), Ok(Some(_))) {
                *ended = Some(unix_ms());
            }
        }
    }

    /// Waits until `sdc lock` number `i` has ended; its status and when it was seen ended.
    fn lock_end(&mut self, i: usize, what: &str) -> Result<(std::process::ExitStatus, u64), Failure> {
        self.wait(what, |d| Ok(d.lock_ended[i].and_then(|t| d.locks[i].exit().map(|s| (s, t)))))
    }

    /// `sdc locks --json` of `node`, when its daemon answers.
    fn locks_json(&self, node: u16) -> Option<serde_json::Value> {
        let out = self
            .sdc
            .run(
                ["locks", "--disk", &self.disk_str(), "--node", &node.to_string(), "--json"],
                Instant::now() + STEP_TIMEOUT,
            )
            .ok()?;
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// The value block through `sdc lock`: node `a` writes 42 and hands the lock over cleanly to
    /// node `b`, which reads 42, valid; then `a` holds the lock in EX and `b` waits for it.
    fn lock_contention(&mut self, a: u16, b: u16) -> Result<LockScene, Failure> {
        self.expect_member(a, "it takes a lock")?;
        self.expect_member(b, "it takes a lock")?;
        let write = r#"printf 42 > "$SDC_LOCK_LVB_OUT""#;
        self.sdc(
            &self.lock_args(a, &[LOCK_NAME, "--", "sh", "-c", write]).iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        self.say(format!(
            "node {a} ({}): sdc lock {LOCK_NAME} -- sh -c '{write}': held in EX, its command wrote 42, and sdc lock \
             released the lock writing 42 into its value block (32 bytes that travel with the lock)",
            name(a)
        ));
        let read = self.sdc(
            &self
                .lock_args(b, &["--mode", "pr", LOCK_NAME, "--", "sh", "-c", SHOW_LVB])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        let read = read.trim();
        if read != "value=42 valid=1" {
            return fail(format!("node {b} should have read the value 42, valid, after a clean handover, but its command printed {read:?}{}", self.hint()));
        }
        self.say(format!(
            "node {b} ({}): sdc lock --mode pr {LOCK_NAME} -- sh -c '{SHOW_LVB}' printed `{read}`: a clean handover \
             carries the value block, valid",
            name(b)
        ));
        // Node a holds it in EX and writes nothing; node b waits.
        let pidfile = self.dir.join("holder.pid");
        let hold = format!("echo $$ > {}; exec sleep 600", pidfile.display());
        let holder = self.spawn_lock(a, &[LOCK_NAME, "--", "sh", "-c", &hold])?;
        let holder_pid = self.wait(&format!("node {a}'s sdc lock to hold {LOCK_NAME}"), |d| {
            if let Some(status) = d.locks[holder].try_wait()? {
                return fail(format!(
                    "node {a}'s sdc lock ended ({}): {}",
                    exit_text(status),
                    last_line(d.locks[holder].log())
                ));
            }
            Ok(std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()))
        })?;
        self.say(format!(
            "node {a} ({}): sdc lock {LOCK_NAME} -- sh -c 'echo $$ > holder.pid; exec sleep 600': holds it in EX, \
             writing nothing",
            name(a)
        ));
        let waiter = self.spawn_lock(b, &[LOCK_NAME, "--", "sh", "-c", SHOW_LVB])?;
        let waiting = |v: &serde_json::Value| {
            v["locks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["name"] == LOCK_NAME && l["granted"].is_null() && l["requested"] == "ex")
        };
        self.wait(&format!("node {b}'s sdc lock to wait for {LOCK_NAME}"), |d| {
            if let Some(status) = d.locks[waiter].try_wait()? {
                return fail(format!(
                    "node {b}'s sdc lock ended ({}) while node {a} held the lock: {}",
                    exit_text(status),
                    last_line(d.locks[waiter].log())
                ));
            }
            Ok(d.locks_json(b).filter(|v| waiting(v)).map(|_| ()))
        })?;
        self.say(format!("node {b} ({}): sdc lock {LOCK_NAME} -- sh -c '{SHOW_LVB}': waits for EX", name(b)));
        // The lock table of the node that masters the resource.
        let master = [a, b].into_iter().find(|&n| {
            self.locks_json(n)
                .is_some_and(|v| v["mastered"].as_array().into_iter().flatten().any(|r| r["name"] == LOCK_NAME))
        });
        if let Some(m) = master {
            let table = self.sdc(&["locks", "--disk", &self.disk_str(), "--node", &m.to_string()])?;
            self.say(format!(
                "sdc locks --node {m} (node {m} masters {LOCK_NAME}: node {a} granted EX, node {b} waiting):"
            ));
            self.print(&format!("\n{table}\n"));
        }
        Ok(LockScene { a, b, holder, holder_pid, waiter })
    }

    /// After node `a`'s kill -9: its sdc lock lost the lock and killed its command; node `b`
    /// got the lock once the survivors recovered, its value block not valid.
    fn lock_after_kill(&mut self, scene: &LockScene, killed_at: u64) -> Result<(), Failure> {
        let LockScene { a, b, holder, holder_pid, waiter } = *scene;
        let (status, lost_at) = self.lock_end(holder, &format!("node {a}'s sdc lock to exit"))?;
        let line = last_line(self.locks[holder].log());
        if status.code() != Some(9) || !line.contains("lock was lost") {
            return fail(format!(
                "node {a}'s sdc lock should have lost its lock and exited 9, but it ended with {}: {line}{}",
                exit_text(status),
                self.hint()
            ));
        }
        // SAFETY: signal 0 only asks whether the command's process still exists.
        if unsafe { libc::kill(holder_pid, 0) } == 0 {
            return fail(format!(
                "node {a}'s sdc lock exited 9 but its command (pid {holder_pid}) still runs{}",
                self.hint()
            ));
        }
        let (status, got_at) = self.lock_end(waiter, &format!("node {b}'s sdc lock to get {LOCK_NAME} and exit"))?;
        let out = procs::log_text(self.locks[waiter].log());
        let printed = out.lines().find(|l| l.starts_with("value=")).unwrap_or("").to_string();
        if status.code() != Some(0) || !printed.ends_with(" valid=0") {
            return fail(format!(
                "node {b}'s sdc lock should have run its command with the value block not valid, but it ended with {} and printed {printed:?}{}",
                exit_text(status),
                self.hint()
            ));
        }
        if got_at < lost_at {
            return fail(format!("node {b}'s sdc lock ended before node {a}'s lost the lock{}", self.hint()));
        }
        self.say(format!(
            "node {a}'s sdc lock saw its daemon's connection drop: it killed its command (pid {holder_pid}) at once \
             with SIGKILL and exited 9, seen ended {} ms after the kill: `{}`",
            lost_at.saturating_sub(killed_at),
            line.trim_start_matches("sdc: error: ")
        ));
        self.say(format!(
            "node {b} got {LOCK_NAME} only once the survivors had forced node {a} out and recovered the lock (its \
             sdc lock seen ended {} ms after the kill): its command printed `{printed}`: the value block is NOT valid, \
             because its EX holder died (it may have changed what the value describes without writing it): \
             rebuild it from the data it describes",
            got_at.saturating_sub(killed_at)
        ));
        Ok(())
    }

    fn scenario(&mut self) -> Result<(), Failure> {
        self.say(format!(
            "sdc demo: a three-node cluster in {} ({})",
            self.dir.display(),
            if self.keep { "kept at the end: --keep" } else { "removed at the end; --keep keeps it" }
        ));
        self.setup()?;
        let mut incarnation = [0u64; 4];
        for node in 1..=3u16 {
            incarnation[node as usize] = self.join(node)?.1;
        }
        // Node 1 is master, normally; whichever it is, the other two leave, one gracefully and
        // one by kill -9, and the killed one comes back before the master dies.
        let Some(first_master) = self.status()?.master.map(|m| m.0) else {
            return fail(format!("no master once the three nodes joined (the disk says: {})", self.summary()));
        };
        let others: Vec<u16> = (1..=3).filter(|&n| n != first_master).collect();
        let (victim, leaver) = (others[0], others[1]);
        self.graceful_leave(leaver, incarnation[leaver as usize])?;
        let scene = self.lock_contention(victim, first_master)?;
        let killed_at = self.kill_member(victim, incarnation[victim as usize], ": the lock holder's node dies")?;
        self.lock_after_kill(&scene, killed_at)?;
        self.join(victim)?;
        let old = self.status()?.master.map_or(first_master, |m| m.0);
        let new = self.kill_master()?;
        self.join(old)?;
        let s = self.status()?;
        match s.master {
            Some(m) if m.0 == new => {
                self.say(format!("node {new} stays master (epoch {}): a returning node does not take over", s.epoch))
            }
            Some(m) => self.say(format!("node {m} is master now (epoch {})", s.epoch)),
            None => return fail(format!("no master after node {old} rejoined (the disk says: {})", self.summary())),
        }
        let table = self.sdc(&["status", "--disk", &self.disk_str()])?;
        self.say(format!("sdc status --disk {}", self.disk_str()));
        self.print(&format!("\n{table}\n"));
        self.check_interrupted()
    }
}

fn temp_dir() -> Result<PathBuf, Failure> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("sdc-demo-{}-{}-{attempt}", std::process::id(), unix_ms() % 1_000_000));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return fail(format!("cannot create a directory in {}: {e}", base.display())),
        }
    }
    fail(format!("cannot create a directory in {}: every name tried exists", base.display()))
}

pub fn run(a: DemoArgs) -> CmdResult {
    procs::catch_interrupts()?;
    let exe = std::env::current_exe().map_err(|e| Failure::from(format!("cannot find the sdc executable: {e}")))?;
    let dir = temp_dir()?;
    let mut demo = Demo {
        started: Instant::now(),
        // The daemons' control sockets live (and die) with the demo's directory.
        // So do the files `sdc lock` makes for its commands.
        sdc: Sdc::new(exe).with_env(dlm::driver::control::RUN_DIR_ENV, dir.join("run")).with_env("TMPDIR", &dir),
        disk: dir.join("cluster.img"),
        dir,
        keep: a.keep,
        timing: if a.slow { SLOW } else { FAST },
        db: None,
        daemons: Vec::new(),
        locks: Vec::new(),
        lock_ended: Vec::new(),
        stdout_error: Default::default(),
    };
    demo.scenario()?;
    let killed = demo.kill_all();
    let logs: Vec<String> = demo
        .daemons
        .iter()
        .map(|d| d.daemon.log().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    if demo.keep {
        demo.say(format!(
            "stopped the {killed} running daemons (kill -9); kept {}: cluster.img and the logs {}",
            demo.dir.display(),
            logs.join(", ")
        ));
    } else {
        demo.say(format!("stopped the {killed} running daemons (kill -9) and removed {}", demo.dir.display()));
    }
    demo.say(format!("demo complete in {:.1} s", demo.started.elapsed().as_secs_f64()));
    Ok(exit::OK)
}
