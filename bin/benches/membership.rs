//! Membership latencies, end to end with real `sdc` daemons: join, leave and failure detection
//! of one node in clusters of 3, 8, 16 and 32 nodes, every node running four rehearsal layers.
//!
//! Run with `cargo bench -p sdc --bench membership` (about five minutes; each size stops early
//! when its iterations exceed a time budget of 85 s, so at most about six). Set
//! `MEMBERSHIP_BENCH_ITERATIONS=N` to run N iterations per cluster size instead (a quick look).
//!
//! A cluster of size N is one sparse file formatted with `--max-nodes 32` in its own temporary
//! directory, with nodes 1 to N in the node table. Nodes 1 to N-1 are started once per size (all
//! at once) and stay up; node N, the *subject*, is joined and taken out again and again. Every
//! daemon registers the same layers ([`LAYERS`]: dlm and sfs have two barriers on some
//! transitions) and writes its stderr to a log file of its own. Each iteration waits for a steady
//! cluster (nodes 1..N-1 joined, node N inactive, no transition in flight), then:
//!
//! * **join**: spawns `sdc join --node N` and times, from just before the spawn, when the cluster
//!   state on the disk first shows node N `joining` and then `joined`. A join that follows a
//!   kill -9 is its own row: the new daemon finds its slot's heartbeat still `up` (written by the
//!   killed incarnation), but it starts only once the forced leave is complete, so the cluster
//!   state records that incarnation as stopped and the daemon takes the slot over at once, paying
//!   only the delta lease (two heartbeats), like a clean join. (A daemon restarted before any
//!   master has judged the old incarnation stopped, which this bench never does, would watch the
//!   stale heartbeat for `dead_ms` first: see ARCHITECTURE.md, *Slot ownership and
//!   incarnations*.)
//! * then, after a pseudo-random pause of 0 to 450 ms (so that the next step is not phase-locked
//!   to the daemons' membership cycles), in turn one of
//!   * **leave by SIGTERM**: until the disk shows node N `inactive` with no transition in
//!     flight for it, and until the daemon has exited (it must exit 0);
//!   * **leave by `sdc leave`**: from just before spawning `sdc leave --node N`, until node N
//!     is `inactive` and until the command has returned (it must return 0). The daemon sees the
//!     request within a heartbeat interval (the config stamp in its beacon read changes);
//!   * **failure**: SIGKILL of node N's daemon, until the disk shows it `forced-leaving` (the
//!     master judged it dead) and until it is `inactive` with no transition in flight for it
//!     (the forced leave has run through every layer on every other node).
//!
//! The observer is cheap and in-process: the bench opens the disk read-only through
//! `membership_db` and reads the newest cluster state about every 2 ms (`sdc status` would
//! sample the heartbeats twice, 1.5 heartbeat intervals apart, and pay a process start).
//!
//! It prints numbers and asserts nothing about speed. An *incident* (a background daemon that
//! exited, e.g. because it fenced itself; a step that failed or timed out) ends that cluster: it is
//! reported with the tails of the master's and the subject's logs, and the size goes on with a
//! fresh cluster, at most three per size. Every log is scanned for FENCED, FORCED OUT, failovers,
//! forced leaves and death judgements of nodes that were not killed, and corrupt (torn) records.
//! The bench exits non-zero only when a size had to be given up (a cluster that never formed, or
//! three incidents) or it was interrupted. Every daemon is SIGKILLed and reaped and every
//! temporary file removed by `Drop` guards, on errors and panics too; SIGINT/SIGTERM of the bench
//! end the current step with an error so that the guards run, and every daemon is started with
//! `PR_SET_PDEATHSIG(SIGKILL)` so that none survives the bench being killed outright (all three
//! by `sdc_procs::procs`).

#[path = "common/mod.rs"]
mod common;
use common::{check_interrupted, machine, ms, sdc, stats};

use anyhow::{anyhow, bail, Context, Result};
use membership_db::db::MembershipDb;
use membership_db::format::{ClusterState, MemberState, NodeId, Timing};
use membership_db::io::{open_disk, IoMode};
use sdc_procs::procs::{self, exit_text, log_text, tail, Daemon, Sdc};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Cargo sets this for the integration tests and benchmarks of the package that owns the binary
/// (and builds the binary, in the bench's profile, before running them).
const SDC: &str = env!("CARGO_BIN_EXE_sdc");
/// The one timing profile: heartbeat 50 ms, dead 600 ms, fence 300 ms.
const TIMING: Timing = Timing { heartbeat_ms: 50, dead_ms: 600, fence_ms: 300 };
/// Registered by every daemon; `NAME:ORDER[:JOIN/LEAVE/FORCED]` barriers.
const LAYERS: [&str; 3] = ["vdm:20", "sfs:30:2/1/1", "em:40"];
const MAX_NODES: u16 = 32;
/// Cluster size, iterations, time budget in seconds for the iterations (not the formation).
/// Iterations rotate SIGTERM leave, `sdc leave`, kill -9, so each gets a third of them.
const PLAN: [(u16, usize, u64); 4] = [(3, 63, 85), (8, 63, 85), (16, 63, 85), (32, 63, 85)];
const POLL: Duration = Duration::from_millis(2);
/// How often a poll loop also checks that no background daemon has exited.
const CHILD_CHECK_EVERY: Duration = Duration::from_millis(100);
/// The subject stays joined for a pseudo-random pause of up to this long before it is taken
/// out, so that the leave is not phase-locked to the daemons' heartbeat intervals (an `sdc leave`
/// is seen at the next beacon read, within an interval).
const PAUSE_MAX_MS: u64 = 450;
/// How long nodes 1..N-1 may take to start and all join.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one step (a join, a leave, a forced leave, settling) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Set by SIGINT/SIGTERM of the bench ([`procs::catch_interrupts`]): the poll loops then fail,
/// and the guards clean up.
fn interrupted() -> bool {
    procs::interrupted().is_some()
}

/// What is measured, one table row each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Metric {
    JoinJoining,
    JoinJoined,
    RejoinJoined,
    TermInactive,
    TermExit,
    LeaveInactive,
    LeaveReturned,
    KillDetected,
    KillInactive,
}

const METRICS: [(Metric, &str); 9] = [
    (Metric::JoinJoining, "join: spawn -> joining"),
    (Metric::JoinJoined, "join: spawn -> joined"),
    (Metric::RejoinJoined, "join after kill -9: spawn -> joined"),
    (Metric::TermInactive, "leave, SIGTERM -> inactive"),
    (Metric::TermExit, "leave, SIGTERM -> daemon exited 0"),
    (Metric::LeaveInactive, "leave, `sdc leave` -> inactive"),
    (Metric::LeaveReturned, "leave, `sdc leave` -> it returned 0"),
    (Metric::KillDetected, "failure, kill -9 -> forced-leaving"),
    (Metric::KillInactive, "failure, kill -9 -> inactive (done)"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Exit {
    Term,
    SdcLeave,
    Kill,
}

const ROTATION: [Exit; 3] = [Exit::Term, Exit::SdcLeave, Exit::Kill];

/// The samples of one cluster size.
#[derive(Default)]
struct Samples(Vec<(Metric, f64)>);

impl Samples {
    fn add(&mut self, m: Metric, v: f64) {
        self.0.push((m, v));
    }
    fn of(&self, m: Metric) -> Vec<f64> {
        self.0.iter().filter(|(k, _)| *k == m).map(|(_, v)| *v).collect()
    }
}

/// One cluster: its temporary directory, its daemons and the bench's read-only view of the disk.
/// Dropping it kills every process it started (SIGKILL, then reaps it), then unmaps the disk,
/// then removes the directory.
struct Cluster {
    size: u16,
    disk: PathBuf,
    // The processes: each is killed and reaped as it drops, in field order (the subject first).
    /// Node `size`'s daemon while it runs.
    subject: Option<Daemon>,
    /// An `sdc leave` in flight.
    leave_cmd: Option<Daemon>,
    /// Nodes 1..size-1, started with the cluster.
    background: Vec<(u16, Daemon)>,
    db: Option<MembershipDb>,
    last_child_check: Instant,
    // Declared last: fields drop after the processes have been killed, then the disk unmapped.
    dir: tempfile::TempDir,
}

/// What a step of an iteration observed.
struct JoinObs {
    joining: Option<Duration>,
    joined: Duration,
}
struct LeaveObs {
    leaving: Option<Duration>,
    inactive: Duration,
    /// When the daemon (SIGTERM) or the `sdc leave` command returned, and how.
    ended: Duration,
    status: ExitStatus,
}
struct KillObs {
    detected: Option<Duration>,
    inactive: Duration,
}

impl Cluster {
    fn start(size: u16) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("sdc-bench-membership-")
            .tempdir_in(std::env::temp_dir())
            .context("cannot create a temporary directory")?;
        let disk = dir.path().join("disk.img");
        let mut c = Cluster {
            size,
            disk,
            background: Vec::new(),
            subject: None,
            leave_cmd: None,
            db: None,
            last_child_check: Instant::now(),
            dir,
        };
        let d = c.disk.clone();
        let (hb, dead, fence, max) = (
            TIMING.heartbeat_ms.to_string(),
            TIMING.dead_ms.to_string(),
            TIMING.fence_ms.to_string(),
            MAX_NODES.to_string(),
        );
        #[rustfmt::skip]
        sdc([
            "format".as_ref(), "--disk".as_ref(), d.as_os_str(), "--size".as_ref(), "64MiB".as_ref(),
            "--cluster".as_ref(), "bench".as_ref(), "--max-nodes".as_ref(), max.as_ref(),
            "--heartbeat-ms".as_ref(), hb.as_ref(), "--dead-ms".as_ref(), dead.as_ref(),
            "--fence-ms".as_ref(), fence.as_ref(),
        ])?;
        for node in 1..=size {
            let (id, name) = (node.to_string(), format!("n{node}"));
            let address = format!("127.0.0.1:{}", free_port()?);
            #[rustfmt::skip]
            sdc([
                "node".as_ref(), "add".as_ref(), "--disk".as_ref(), d.as_os_str(),
                "--node".as_ref(), id.as_ref(), "--name".as_ref(), name.as_ref(),
                "--address".as_ref(), address.as_ref(),
            ])?;
        }
        c.db = Some(MembershipDb::open(open_disk(&c.disk, IoMode::Auto, false)?)?);
        for node in 1..size {
            let child = c.spawn_daemon(node)?;
            c.background.push((node, child));
        }
        Ok(c)
    }

    fn subject_id(&self) -> NodeId {
        NodeId(self.size)
    }

    fn log_path(&self, node: u16) -> PathBuf {
        self.dir.path().join(format!("node-{node}.log"))
    }

    /// `sdc join --node NODE`, its output appended to the node's log (the subject's runs share
    /// one).
    fn spawn_daemon(&self, node: u16) -> Result<Daemon> {
        let id = node.to_string();
        let mut args: Vec<&OsStr> =
            vec!["join".as_ref(), "--disk".as_ref(), self.disk.as_os_str(), "--node".as_ref(), id.as_ref()];
        for l in &LAYERS {
            args.push("--layer".as_ref());
            args.push(l.as_ref());
        }
        Sdc::new(SDC).spawn(args, &self.log_path(node)).with_context(|| format!("cannot start sdc join --node {node}"))
    }

    fn state(&self) -> Result<ClusterState> {
        self.db
            .as_ref()
            .expect("opened in start")
            .read_cluster_state()?
            .ok_or_else(|| anyhow!("no cluster state on the disk yet"))
    }

    /// Fails if a background daemon has exited (checked at most every CHILD_CHECK_EVERY).
    fn check_background(&mut self, force: bool) -> Result<()> {
        check_interrupted()?;
        if !force && self.last_child_check.elapsed() < CHILD_CHECK_EVERY {
            return Ok(());
        }
        self.last_child_check = Instant::now();
        for (node, daemon) in &mut self.background {
            if let Some(st) = daemon.try_wait()? {
                bail!("background node {node} exited ({}); see its log", exit_text(st));
            }
        }
        Ok(())
    }

    fn describe(&self, st: &ClusterState) -> String {
        let members: Vec<String> = (1..=self.size)
            .map(|n| st.member(NodeId(n)))
            .enumerate()
            .filter(|(_, m)| m.state != MemberState::Joined)
            .map(|(i, m)| format!("{}:{}", i + 1, m.state.name()))
            .collect();
        format!(
            "epoch {} master {}; not joined: [{}]; {} transition(s) in flight",
            st.epoch,
            st.master,
            members.join(" "),
            st.transitions.len()
        )
    }

    /// Waits for nodes 1..N-1 joined, node N inactive, nothing in flight; returns (epoch, master).
    fn wait_steady(&mut self, timeout: Duration) -> Result<(u64, NodeId)> {
        let t0 = Instant::now();
        loop {
            self.check_background(false)?;
            let st = self.state().ok();
            if let Some(st) = &st {
                let steady = (1..self.size).all(|n| st.member(NodeId(n)).state == MemberState::Joined)
                    && st.member(self.subject_id()).state == MemberState::Inactive
                    && st.transitions.is_empty();
                if steady {
                    return Ok((st.epoch, st.master));
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the cluster was not steady within {timeout:?}: {}",
                    st.map_or("no cluster state".into(), |st| self.describe(&st))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn join(&mut self) -> Result<JoinObs> {
        let me = self.subject_id();
        let t0 = Instant::now();
        self.subject = Some(self.spawn_daemon(self.size)?);
        let mut joining = None;
        loop {
            let st = self.state()?;
            let now = t0.elapsed();
            match st.member(me).state {
                MemberState::Joining => {
                    joining.get_or_insert(now);
                }
                MemberState::Joined => return Ok(JoinObs { joining, joined: now }),
                _ => {}
            }
            if let Some(status) = self.subject.as_mut().expect("spawned above").try_wait()? {
                self.subject = None;
                bail!("sdc join --node {me} exited during its join ({})", exit_text(status));
            }
            self.check_background(false)?;
            if now > STEP_TIMEOUT {
                bail!("node {me} not joined within {STEP_TIMEOUT:?}: {}", self.describe(&st));
            }
            std::thread::sleep(POLL);
        }
    }

    /// A graceful leave by SIGTERM of the daemon, or by `sdc leave`.
    fn leave(&mut self, by_command: bool) -> Result<LeaveObs> {
        let me = self.subject_id();
        let subject = self.subject.as_ref().ok_or_else(|| anyhow!("node {me} is not running"))?;
        let id = me.0.to_string();
        let t0 = Instant::now();
        if by_command {
            #[rustfmt::skip]
            let args: [&OsStr; 7] = ["leave".as_ref(), "--disk".as_ref(), self.disk.as_os_str(), "--node".as_ref(),
                id.as_ref(), "--timeout".as_ref(), "30".as_ref()];
            let cmd =
                Sdc::new(SDC).spawn(args, &self.dir.path().join("sdc-leave.log")).context("cannot start sdc leave")?;
            self.leave_cmd = Some(cmd);
        } else {
            subject.signal(libc::SIGTERM).with_context(|| format!("cannot SIGTERM node {me}"))?;
        }
        let (mut leaving, mut inactive, mut daemon_exit, mut cmd_exit) = (None, None, None, None);
        loop {
            let st = self.state()?;
            let now = t0.elapsed();
            match st.member(me).state {
                MemberState::Leaving => {
                    leaving.get_or_insert(now);
                }
                MemberState::Inactive if st.transition_of(me).is_none() => {
                    inactive.get_or_insert(now);
                }
                _ => {}
            }
            if daemon_exit.is_none() {
                if let Some(status) = self.subject.as_mut().expect("running").try_wait()? {
                    daemon_exit = Some((t0.elapsed(), status));
                }
            }
            if let Some(cmd) = self.leave_cmd.as_mut() {
                if let Some(status) = cmd.try_wait()? {
                    cmd_exit = Some((t0.elapsed(), status));
                    self.leave_cmd = None;
                }
            }
            let done = inactive.is_some() && daemon_exit.is_some() && (!by_command || cmd_exit.is_some());
            if done {
                self.subject = None;
                let (ended, status) = if by_command { cmd_exit } else { daemon_exit }.expect("done");
                let daemon_status = daemon_exit.expect("done").1;
                if by_command && !daemon_status.success() {
                    bail!("node {me}'s daemon exited with {} after `sdc leave`", exit_text(daemon_status));
                }
                return Ok(LeaveObs { leaving, inactive: inactive.expect("done"), ended, status });
            }
            if let Some((_, status)) = daemon_exit {
                if !status.success() && inactive.is_none() {
                    self.subject = None;
                    bail!("node {me}'s daemon exited with {} before the disk showed it inactive", exit_text(status));
                }
            }
            if let Some((_, status)) = cmd_exit {
                if !status.success() {
                    bail!("sdc leave --node {me} failed ({}); see sdc-leave.log", exit_text(status));
                }
            }
            self.check_background(false)?;
            if now > STEP_TIMEOUT {
                bail!(
                    "node {me} did not leave within {STEP_TIMEOUT:?} (inactive {}, daemon exited {}, command returned {}): {}",
                    inactive.is_some(),
                    daemon_exit.is_some(),
                    cmd_exit.is_some(),
                    self.describe(&st)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL of the subject's daemon, until its forced leave is complete.
    fn kill(&mut self) -> Result<KillObs> {
        let me = self.subject_id();
        let mut daemon = self.subject.take().ok_or_else(|| anyhow!("node {me} is not running"))?;
        let t0 = Instant::now();
        daemon.kill().context("cannot SIGKILL the subject")?;
        let mut detected = None;
        loop {
            let st = self.state()?;
            let now = t0.elapsed();
            match st.member(me).state {
                MemberState::ForcedLeaving => {
                    detected.get_or_insert(now);
                }
                MemberState::Inactive if st.transition_of(me).is_none() => {
                    return Ok(KillObs { detected, inactive: now })
                }
                _ => {}
            }
            self.check_background(false)?;
            if now > STEP_TIMEOUT {
                bail!("node {me}'s forced leave not complete within {STEP_TIMEOUT:?}: {}", self.describe(&st));
            }
            std::thread::sleep(POLL);
        }
    }

    /// CPU seconds (user + system) the running background daemons have used so far.
    fn background_cpu_seconds(&self) -> Option<f64> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            return None;
        }
        let mut total = 0u64;
        for (_, daemon) in &self.background {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).ok()?;
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            total += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        }
        Some(total as f64 / ticks as f64)
    }

    /// The last lines of the logs of `nodes`, for error reports.
    fn log_tails(&self, nodes: &[u16]) -> String {
        let mut s = String::new();
        for &node in nodes {
            s.push_str(&format!("  --- node {node} log (last lines) ---\n"));
            for l in tail(&self.log_path(node), 12) {
                s.push_str(&format!("  {l}\n"));
            }
        }
        s
    }

    /// Reads every daemon log of this cluster for trouble.
    fn scan_logs(&self) -> LogCounts {
        let subject = self.size;
        let mut c = LogCounts::default();
        for node in 1..=self.size {
            let text = log_text(&self.log_path(node));
            for line in text.lines() {
                if line.contains("FENCED") {
                    c.fenced += 1;
                    c.fenced_nodes.push(node);
                }
                if line.contains("FORCED OUT") {
                    c.forced_out += 1;
                }
                if line.contains("this node is now master") {
                    c.became_master += 1;
                }
                if let Some(n) = node_before(line, " is dead: its heartbeat") {
                    if n != subject {
                        c.other_judged_dead += 1;
                    }
                }
                if let Some(rest) = line.split("master: forced-leave of node ").nth(1).filter(|r| r.contains(" begins"))
                {
                    let n: Option<u16> = rest.split(' ').next().and_then(|w| w.parse().ok());
                    if n == Some(subject) {
                        c.subject_forced_leaves += 1;
                    } else {
                        c.other_forced_leaves += 1;
                    }
                }
                if line.contains("slot shows a running daemon") {
                    c.stale_slot_waits += 1;
                }
                let kind = if let Some(rest) = line.split("] corrupt ").nth(1) {
                    // "corrupt heartbeat record at offset 40960: checksum mismatch (...)"
                    let what = rest.split(" at offset").next().unwrap_or(rest);
                    let why = rest.split(": ").nth(1).and_then(|w| w.split(" (").next()).unwrap_or("");
                    Some(format!("corrupt {what}: {why}"))
                } else if line.contains("I/O error") {
                    Some("I/O error".into())
                } else if line.contains("not taking notifications") {
                    Some("layer queue full".into())
                } else if line.contains("aborted:") {
                    Some("claim aborted".into())
                } else {
                    None
                };
                if let Some(kind) = kind {
                    match c.warnings.iter_mut().find(|(k, _, _)| *k == kind) {
                        Some((_, n, _)) => *n += 1,
                        None => c.warnings.push((kind, 1, format!("node {node}: {line}"))),
                    }
                }
            }
        }
        c.fenced_nodes.dedup();
        c
    }
}

/// The node id just before `marker` in "... node 7 is dead: ...".
fn node_before(line: &str, marker: &str) -> Option<u16> {
    let head = &line[..line.find(marker)?];
    head.rsplit(' ').next()?.parse().ok()
}

#[derive(Default)]
struct LogCounts {
    fenced: usize,
    fenced_nodes: Vec<u16>,
    forced_out: usize,
    became_master: usize,
    other_judged_dead: usize,
    subject_forced_leaves: usize,
    other_forced_leaves: usize,
    stale_slot_waits: usize,
    /// Lines naming a corrupt (torn) record, an I/O error, a full layer queue or an aborted claim:
    /// (kind, count, first line).
    warnings: Vec<(String, usize, String)>,
}

impl LogCounts {
    fn add(&mut self, o: LogCounts) {
        self.fenced += o.fenced;
        self.fenced_nodes.extend(o.fenced_nodes);
        self.forced_out += o.forced_out;
        self.became_master += o.became_master;
        self.other_judged_dead += o.other_judged_dead;
        self.subject_forced_leaves += o.subject_forced_leaves;
        self.other_forced_leaves += o.other_forced_leaves;
        self.stale_slot_waits += o.stale_slot_waits;
        for (kind, n, first) in o.warnings {
            match self.warnings.iter_mut().find(|(k, _, _)| *k == kind) {
                Some((_, m, _)) => *m += n,
                None => self.warnings.push((kind, n, first)),
            }
        }
    }
}

/// The outcome of one cluster size.
struct SizeRun {
    size: u16,
    iterations: usize,
    planned: usize,
    samples: Samples,
    /// Set when the size was given up (a cluster that never formed, or too many incidents).
    error: Option<String>,
    budget_hit: bool,
    /// Clusters started for this size, each with its formation time and masters seen.
    clusters: Vec<ClusterRun>,
    /// Failures that ended a cluster (a fenced or dead daemon, a step that timed out); the size
    /// then goes on with a fresh cluster.
    incidents: Vec<String>,
    logs: LogCounts,
    seconds: f64,
    /// CPU seconds of the background daemons and the wall time they ran, over all clusters.
    background_cpu: (f64, f64),
    /// When the first iteration started: the time budget counts from there.
    iterations_began: Option<Instant>,
    /// xorshift64 state for the pauses; fixed seed, so every run pauses alike.
    rng: u64,
}

struct ClusterRun {
    formed_ms: Option<f64>,
    masters: Vec<(u64, NodeId)>,
}

/// At most this many clusters per size: after that many incidents the size is given up.
const MAX_CLUSTERS_PER_SIZE: usize = 3;

fn run_size(size: u16, planned: usize, budget: Duration) -> SizeRun {
    let began = Instant::now();
    let mut run = SizeRun {
        size,
        iterations: 0,
        planned,
        samples: Samples::default(),
        error: None,
        budget_hit: false,
        clusters: Vec::new(),
        incidents: Vec::new(),
        logs: LogCounts::default(),
        seconds: 0.0,
        background_cpu: (0.0, 0.0),
        iterations_began: None,
        rng: 0x2545_f491_4f6c_dd1d ^ size as u64,
    };
    while run.iterations < run.planned && !run.budget_hit && !interrupted() {
        if run.clusters.len() == MAX_CLUSTERS_PER_SIZE {
            run.error = Some(format!("given up after {MAX_CLUSTERS_PER_SIZE} clusters, each ended by an incident"));
            break;
        }
        if !run.clusters.is_empty() {
            println!("  starting a fresh cluster of {size} to go on");
        }
        run.clusters.push(ClusterRun { formed_ms: None, masters: Vec::new() });
        let mut cluster = match Cluster::start(size) {
            Ok(c) => c,
            Err(e) => {
                run.error = Some(format!("cannot start the cluster: {e:#}"));
                break;
            }
        };
        let spawned = Instant::now();
        let result = iterate(&mut cluster, &mut run, budget);
        if let Some(cpu) = cluster.background_cpu_seconds() {
            run.background_cpu.0 += cpu;
            run.background_cpu.1 += spawned.elapsed().as_secs_f64();
        }
        // Stop the subject first, so that its log is complete before it is read.
        if let Some(mut daemon) = cluster.subject.take() {
            let _ = daemon.kill();
        }
        let logs = cluster.scan_logs();
        if let Err(e) = result {
            let formed = run.clusters.last().is_some_and(|c| c.formed_ms.is_some());
            let master = run.clusters.last().and_then(|c| c.masters.last()).map_or(1, |(_, m)| m.0);
            let mut nodes = vec![master, size];
            nodes.dedup();
            let fenced = if logs.fenced_nodes.is_empty() {
                String::new()
            } else {
                format!("; FENCED nodes {:?}", logs.fenced_nodes)
            };
            println!("  INCIDENT in iteration {}: {e:#}{fenced}\n{}", run.iterations + 1, cluster.log_tails(&nodes));
            run.incidents.push(format!(
                "iteration {}: {}{fenced}",
                run.iterations + 1,
                format!("{e:#}").lines().next().unwrap_or("")
            ));
            if !formed || interrupted() {
                run.error = Some(format!("{e:#}"));
                run.logs.add(logs);
                break;
            }
        }
        run.logs.add(logs);
    }
    run.seconds = began.elapsed().as_secs_f64();
    run
}

fn iterate(cluster: &mut Cluster, run: &mut SizeRun, budget: Duration) -> Result<()> {
    let t0 = Instant::now();
    let formed = cluster.wait_steady(FORM_TIMEOUT)?;
    let this = run.clusters.last_mut().expect("pushed by run_size");
    this.formed_ms = Some(ms(t0.elapsed()));
    this.masters.push(formed);
    println!(
        "  nodes 1..{} started and joined in {:.0} ms; master node {} (epoch {})",
        cluster.size - 1,
        ms(t0.elapsed()),
        formed.1,
        formed.0
    );
    let me = cluster.subject_id();
    let began = *run.iterations_began.get_or_insert_with(Instant::now);
    let mut after_kill = false;
    while run.iterations < run.planned {
        let i = run.iterations;
        if began.elapsed() > budget {
            run.budget_hit = true;
            println!("  time budget of {budget:?} used up after {i} iterations");
            break;
        }
        let (epoch, master) = cluster.wait_steady(STEP_TIMEOUT)?;
        let masters = &mut run.clusters.last_mut().expect("pushed by run_size").masters;
        if masters.last() != Some(&(epoch, master)) {
            masters.push((epoch, master));
            println!("  master is now node {master} (epoch {epoch})");
        }
        if master == me {
            bail!("node {me}, the subject, became master; the bench only measures non-master nodes");
        }
        let j = cluster.join()?;
        let join_text = format!(
            "{} {:>5.0} ms (joining at {})",
            if after_kill { "join after kill" } else { "join" },
            ms(j.joined),
            j.joining.map_or("-".into(), |d| format!("{:.0}", ms(d)))
        );
        if after_kill {
            run.samples.add(Metric::RejoinJoined, ms(j.joined));
        } else {
            run.samples.add(Metric::JoinJoined, ms(j.joined));
            if let Some(d) = j.joining {
                run.samples.add(Metric::JoinJoining, ms(d));
            }
        }
        run.rng ^= run.rng << 13;
        run.rng ^= run.rng >> 7;
        run.rng ^= run.rng << 17;
        let pause = Duration::from_millis(run.rng % (PAUSE_MAX_MS + 1));
        std::thread::sleep(pause);
        cluster.check_background(true)?;
        let still = cluster.state()?.member(me).state;
        if still != MemberState::Joined {
            bail!("node {me} is {} after a pause of {pause:?}, not joined", still.name());
        }
        if let Some(status) = cluster.subject.as_mut().expect("joined").try_wait()? {
            cluster.subject = None;
            bail!("node {me}'s daemon exited ({}) while joined", exit_text(status));
        }
        let exit = ROTATION[i % ROTATION.len()];
        let exit_text = match exit {
            Exit::Term | Exit::SdcLeave => {
                let by_command = exit == Exit::SdcLeave;
                let l = cluster.leave(by_command)?;
                if !l.status.success() {
                    bail!("{} ended with {}", if by_command { "sdc leave" } else { "the daemon" }, exit_text(l.status));
                }
                let (inactive, ended) = if by_command {
                    (Metric::LeaveInactive, Metric::LeaveReturned)
                } else {
                    (Metric::TermInactive, Metric::TermExit)
                };
                run.samples.add(inactive, ms(l.inactive));
                run.samples.add(ended, ms(l.ended));
                format!(
                    "{}: leaving at {}, inactive {:.0} ms, {} {:.0} ms",
                    if by_command { "sdc leave" } else { "SIGTERM" },
                    l.leaving.map_or("-".into(), |d| format!("{:.0}", ms(d))),
                    ms(l.inactive),
                    if by_command { "returned 0" } else { "exited 0" },
                    ms(l.ended)
                )
            }
            Exit::Kill => {
                let k = cluster.kill()?;
                if let Some(d) = k.detected {
                    run.samples.add(Metric::KillDetected, ms(d));
                }
                run.samples.add(Metric::KillInactive, ms(k.inactive));
                format!(
                    "kill -9: forced-leaving at {}, inactive {:.0} ms",
                    k.detected.map_or("-".into(), |d| format!("{:.0}", ms(d))),
                    ms(k.inactive)
                )
            }
        };
        after_kill = exit == Exit::Kill;
        run.iterations += 1;
        println!("  {:>2}: {join_text}; pause {:>3} ms; {exit_text}", i + 1, pause.as_millis());
    }
    // Everything must still be steady (and the background daemons alive) at the end.
    cluster.wait_steady(STEP_TIMEOUT)?;
    cluster.check_background(true)?;
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this harness has no options.
    common::catch_interrupts();
    let began = Instant::now();
    let override_iters: Option<usize> =
        std::env::var("MEMBERSHIP_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
    if let Err(e) = TIMING.validate() {
        eprintln!("bad timing profile: {e}");
        std::process::exit(1);
    }
    let layer_args: Vec<String> = LAYERS.iter().map(|l| format!("--layer {l}")).collect();
    println!("sdc membership benchmark");
    println!("sdc binary: {SDC}");
    println!("machine: {}", machine());
    println!("temporary directory: {} (mmap I/O on a sparse file)", std::env::temp_dir().display());
    println!(
        "timing: heartbeat {} ms, dead {} ms, fence {} ms; format --max-nodes {MAX_NODES}",
        TIMING.heartbeat_ms, TIMING.dead_ms, TIMING.fence_ms
    );
    println!("layers on every node: {}", layer_args.join(" "));
    println!("observer: newest cluster state read from the disk in-process every {} ms", POLL.as_millis());
    println!();

    let mut runs = Vec::new();
    for (size, iters, budget_s) in PLAN {
        if interrupted() {
            break;
        }
        let planned = override_iters.unwrap_or(iters);
        println!(
            "cluster of {size}: nodes 1..{} in the background, node {size} joins and leaves; {planned} iterations",
            size - 1
        );
        let run = run_size(size, planned, Duration::from_secs(budget_s));
        if let Some(e) = &run.error {
            println!("  GIVEN UP after {} iterations: {e}", run.iterations);
        }
        println!("  ({:.1} s for this size)", run.seconds);
        runs.push(run);
        println!();
    }

    println!(
        "Latency in ms (n = samples, med = median, p99 = nearest-rank 99th percentile, which equals the max with \
         fewer than 100 samples; min):"
    );
    let mut header = format!("{:<38}", "measure \\ cluster size");
    let mut sub = format!("{:<38}", "");
    for r in &runs {
        header.push_str(&format!(" | {:^21}", format!("N = {}", r.size)));
        sub.push_str(&format!(" | {:>3} {:>5} {:>5} {:>5}", "n", "med", "p99", "min"));
    }
    println!("{header}");
    println!("{sub}");
    println!("{}", "-".repeat(sub.len()));
    for (metric, label) in METRICS {
        let mut line = format!("{label:<38}");
        for r in &runs {
            line.push_str(&match stats(&r.samples.of(metric)) {
                Some(s) => format!(" | {:>3} {:>5.0} {:>5.0} {:>5.0}", s.n, s.median, s.p99, s.min),
                None => format!(" | {:>3} {:>5} {:>5} {:>5}", 0, "-", "-", "-"),
            });
        }
        println!("{line}");
    }
    println!();
    println!("Per size:");
    for r in &runs {
        let clusters: Vec<String> = r
            .clusters
            .iter()
            .map(|c| {
                let masters: Vec<String> = c.masters.iter().map(|(e, m)| format!("node {m} (epoch {e})")).collect();
                format!(
                    "formed in {}, master {}",
                    c.formed_ms.map_or("-".into(), |m| format!("{m:.0} ms")),
                    if masters.is_empty() { "-".into() } else { masters.join(" -> ") }
                )
            })
            .collect();
        println!(
            "  N = {:>2}: {} of {} iterations{}{}; {} cluster(s) [{}]; {:.1} s",
            r.size,
            r.iterations,
            r.planned,
            if r.budget_hit { " (time budget)" } else { "" },
            if r.error.is_some() { " (GIVEN UP)" } else { "" },
            r.clusters.len(),
            clusters.join("; "),
            r.seconds
        );
        for incident in &r.incidents {
            println!("          INCIDENT (cluster restarted): {incident}");
        }
        let l = &r.logs;
        println!(
            "          logs: {} FENCED line(s){}, {} FORCED OUT, {} 'now master' (1 per cluster expected), {} forced \
             leave(s) of node {} (one per kill), {} forced leave(s) of other nodes, {} 'is dead' judgement(s) of other \
             nodes, {} stale-slot notice(s) (one per join after kill: the new daemon sees the stale `up` slot, \
             then the cluster state's proof that its incarnation stopped lets it take the slot at once)",
            l.fenced,
            if l.fenced_nodes.is_empty() { String::new() } else { format!(" (nodes {:?})", l.fenced_nodes) },
            l.forced_out,
            l.became_master,
            l.subject_forced_leaves,
            r.size,
            l.other_forced_leaves,
            l.other_judged_dead,
            l.stale_slot_waits
        );
        for (kind, n, first) in &l.warnings {
            println!("          {n} log line(s) of {kind}; first: {first}");
        }
        let (cpu, wall) = r.background_cpu;
        if wall > 0.0 {
            let daemons = (r.size - 1) as f64;
            println!(
                "          CPU of the {} background daemons: {cpu:.1} s in {wall:.1} s ({:.0}% of one core; {:.1}% per daemon)",
                r.size - 1,
                100.0 * cpu / wall,
                100.0 * cpu / wall / daemons
            );
        }
    }
    println!();
    println!(
        "Floors: failure detection cannot be below dead_ms = {} ms (the master judges a heartbeat dead after it has \
         been still that long on its own clock; counted from its last read of the last write, which may precede the \
         kill by up to one heartbeat of {} ms). A join after kill -9 costs no further dead_ms here: it starts after the \
         forced leave, whose cluster state shows the old incarnation stopped, so the new daemon takes its slot over \
         at once instead of watching the stale `up` heartbeat (a restart before any master judged the old \
         incarnation stopped would watch it for dead_ms). A clean join includes about two \
         heartbeats of slot acquisition (write, wait, read back).",
        TIMING.dead_ms, TIMING.heartbeat_ms
    );
    println!(
        "Membership cycles run every heartbeat ({} ms), every {} ms while a transition is in flight; each barrier \
         needs every participant to read the new state, acknowledge, and the master to read the acks.",
        TIMING.heartbeat_ms,
        (TIMING.heartbeat_ms / 4).max(1)
    );
    println!("machine at the end: {}", machine());
    println!("total bench time: {:.1} s", began.elapsed().as_secs_f64());
    let incidents: usize = runs.iter().map(|r| r.incidents.len()).sum();
    if incidents > 0 {
        println!("{incidents} INCIDENT(S): a cluster ended early and was restarted; see above");
    }
    let failed = runs.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 || interrupted() {
        eprintln!("{failed} cluster size(s) could not be measured completely; see above");
        std::process::exit(1);
    }
}

/// A free loopback port for a node's interconnect address.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
