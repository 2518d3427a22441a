//! Membership latencies at the default timing (heartbeat 100 ms, dead 1000 ms, fence 600 ms),
//! end to end with real `sdc` daemons, every one with four rehearsal layers ([`LAYERS`]).
//!
//! Run with `cargo bench -p sdc --bench latency` (about five minutes); `-- --help` lists the
//! options: `--iterations 20` (samples of each measure per size), `--master-kills 20`,
//! `--sizes 3,16` (the members a node joins), `--timing 100/1000/600`, `--dir` (where the
//! temporary directory goes; the system's by default).
//!
//! For each size S: a sparse 64 MiB file formatted with `--max-nodes 32` (mmap I/O), nodes
//! 1..S+1 in the node table, daemons 1..S started and joined. Node S+1, the *subject*, then goes
//! through each iteration, every step waiting for the cluster to be steady again (every running
//! node joined, nothing in flight) before the next:
//!
//! * **join**: from spawning `sdc join --node S+1` until the cluster state shows it joined;
//! * **restart at once after kill -9**: SIGKILL of the subject's daemon and a new daemon spawned
//!   at once; from the kill until the cluster state shows the new incarnation joined;
//! * **kill -9 of a member**: SIGKILL, until the cluster state shows its forced leave complete
//!   (the subject inactive, no transition of it in flight);
//! * **restart after the forced leave**: from spawning a new daemon then until it is joined;
//! * **leave**: from just before spawning `sdc leave --node S+1` until the cluster state shows it
//!   inactive (nothing in flight for it), and until the command returns.
//!
//! A restarted daemon logs how it took its slot over: at once, when the cluster state proves its
//! old incarnation stopped ("taking over its slot at once"), or after watching the slot's stale
//! heartbeat for dead-ms ("this node's slot shows a running daemon"). The bench counts which
//! message each restart logged. Then, `--master-kills` times: SIGKILL of the master's daemon,
//! until `sdc status --json` (run back to back; timed when the call that shows another master
//! returns, so its resolution is one call, about 150 ms: each samples the heartbeats twice 1.5
//! intervals apart) shows a new master, until the old master's forced leave is complete, and
//! until an `up` heartbeat acting master in a later epoch is on the disk (read in a thread every
//! millisecond: when the new master acts); the old master is then restarted and rejoins.
//!
//! The observer reads the newest cluster state from the disk in-process every 2 ms. Medians and
//! p99 are nearest rank: with fewer than 100 samples the p99 is the maximum. It prints numbers
//! and asserts nothing about speed. Every daemon is SIGKILLed and reaped and every temporary file
//! removed by `Drop` guards, on errors, panics and Ctrl-C too (`common::Cluster`).

#[path = "common/mod.rs"]
mod common;

use anyhow::{anyhow, bail, Context, Result};
use common::{
    check_interrupted, log_len, log_since, machine, master_of, ms, stats, status_master, steady, timing_text, Cluster,
    ClusterSpec, DiskKind, Opts,
};
use membership_db::format::{MemberState, NodeId, Timing};
use sdc_procs::procs::{self, exit_text, Sdc};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Registered by every daemon (`--layer NAME:ORDER[:JOIN/LEAVE/FORCED]`).
const LAYERS: [&str; 3] = ["vdm:20", "sfs:30", "em:40"];
const MAX_NODES: u16 = 32;
const DISK_BYTES: u64 = 64 << 20;
const POLL: Duration = Duration::from_millis(2);
/// How long one step (a join, a leave, a forced leave, a failover) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first S daemons may take to form the cluster.
const FORM_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Metric {
    Join,
    RestartAtOnce,
    KillForced,
    RestartAfter,
    LeaveInactive,
    LeaveReturned,
    MasterDisk,
    MasterStatus,
    MasterForced,
}

const METRICS: [(Metric, &str); 9] = [
    (Metric::Join, "join: spawn -> joined"),
    (Metric::LeaveInactive, "sdc leave: start -> inactive"),
    (Metric::LeaveReturned, "sdc leave: start -> it returned"),
    (Metric::RestartAtOnce, "(a) kill -9, restart at once: kill -> new joined"),
    (Metric::RestartAfter, "(b) restart after forced leave: spawn -> joined"),
    (Metric::KillForced, "kill -9 member -> forced leave complete"),
    (Metric::MasterDisk, "kill -9 master -> new master's heartbeat on disk"),
    (Metric::MasterStatus, "kill -9 master -> new master in sdc status"),
    (Metric::MasterForced, "kill -9 master -> its forced leave complete"),
];

/// How a restarted daemon took its slot over, as its log says.
#[derive(Default, Clone, Copy)]
struct Takeovers {
    at_once: usize,
    watched: usize,
    neither: usize,
}

impl Takeovers {
    fn text(&self) -> String {
        format!(
            "{} took the slot at once (\"taking over its slot at once\"), {} watched the stale slot for dead-ms (\"slot \
             shows a running daemon\"), {} logged neither",
            self.at_once, self.watched, self.neither
        )
    }
}

struct SizeRun {
    size: u16,
    samples: Vec<(Metric, f64)>,
    restart_at_once: Takeovers,
    restart_after: Takeovers,
    master_restart: Takeovers,
    masters: Vec<u16>,
    formed_ms: f64,
    error: Option<String>,
    seconds: f64,
}

impl SizeRun {
    fn of(&self, m: Metric) -> Vec<f64> {
        self.samples.iter().filter(|(k, _)| *k == m).map(|(_, v)| *v).collect()
    }
}

fn main() {
    let opts = Opts::parse(
        "latency",
        "Join, leave, restart and failover latencies at the default timing.",
        &[
            ("iterations", "20", "samples of each subject measure per size"),
            ("master-kills", "20", "kills of the master per size"),
            ("sizes", "3,16", "how many members the subject joins, each from 2 to 31"),
            ("timing", "100/1000/600", "heartbeat/dead/fence in ms"),
            ("dir", "", "where the temporary directory goes (empty: the system's temporary directory)"),
        ],
    );
    common::catch_interrupts();
    let iterations = opts.u64("iterations") as usize;
    let master_kills = opts.u64("master-kills") as usize;
    let sizes = opts.list_u16("sizes");
    let timing = opts.timing("timing");
    let dir = opts.path("dir");
    if let Some(&bad) = sizes.iter().find(|&&n| !(2..MAX_NODES).contains(&n)) {
        eprintln!("--sizes: {bad} is not from 2 to {}", MAX_NODES - 1);
        std::process::exit(2);
    }
    let began = Instant::now();
    println!("sdc latency benchmark");
    println!("sdc binary: {}", common::SDC);
    println!("machine: {}; kernel {}", machine(), common::kernel());
    println!("timing: {}", timing_text(&timing));
    println!(
        "disk: a sparse {} MiB file in {}, mmap I/O, format --max-nodes {MAX_NODES}",
        DISK_BYTES >> 20,
        dir.clone().unwrap_or_else(std::env::temp_dir).display()
    );
    println!("layers on every node: --layer {}", LAYERS.join(" --layer "));
    println!(
        "{iterations} iterations per size, {master_kills} master kills per size; observer: the newest cluster state read \
         in-process every {} ms",
        POLL.as_millis()
    );
    println!();

    let mut runs = Vec::new();
    for &size in &sizes {
        if procs::interrupted().is_some() {
            break;
        }
        println!("S = {size}: nodes 1..{size} members, node {} the subject", size + 1);
        let run = run_size(size, timing, iterations, master_kills, dir.clone());
        if let Some(e) = &run.error {
            println!("  GIVEN UP: {e}");
        }
        println!("  ({:.1} s for this size)", run.seconds);
        println!();
        runs.push(run);
    }

    println!(
        "Latency in ms (n = samples, median, p99 = nearest-rank 99th percentile, which is the maximum with fewer than \
         100 samples, min):"
    );
    let mut header = format!("{:<50}", "measure \\ members joined");
    let mut sub = format!("{:<50}", "");
    for r in &runs {
        header.push_str(&format!(" | {:^23}", format!("S = {}", r.size)));
        sub.push_str(&format!(" | {:>3} {:>6} {:>6} {:>6}", "n", "median", "p99", "min"));
    }
    println!("{header}");
    println!("{sub}");
    println!("{}", "-".repeat(sub.len()));
    for (metric, label) in METRICS {
        let mut line = format!("{label:<50}");
        for r in &runs {
            line.push_str(&match stats(&r.of(metric)) {
                Some(s) => format!(" | {:>3} {:>6.0} {:>6.0} {:>6.0}", s.n, s.median, s.p99, s.min),
                None => format!(" | {:>3} {:>6} {:>6} {:>6}", 0, "-", "-", "-"),
            });
        }
        println!("{line}");
    }
    println!();
    println!("How restarted daemons took their slot over (from their logs):");
    for r in &runs {
        println!("  S = {}: (a) restart at once after kill -9: {}", r.size, r.restart_at_once.text());
        println!("  S = {}: (b) restart after the forced leave: {}", r.size, r.restart_after.text());
        println!("  S = {}: the killed master restarted after its forced leave: {}", r.size, r.master_restart.text());
    }
    println!();
    for r in &runs {
        let masters: Vec<String> = r.masters.iter().map(|m| m.to_string()).collect();
        println!(
            "S = {}: formed in {:.0} ms; masters in turn: {}; {:.1} s",
            r.size,
            r.formed_ms,
            masters.join(" -> "),
            r.seconds
        );
    }
    println!(
        "Floors: a kill -9 is seen once the heartbeat has been still for dead-ms ({} ms) on the master's clock, \
         counted from its last read of the last write, up to one heartbeat ({} ms) before the kill. A restart at once \
         also waits dead-ms, watching its stale slot, unless the cluster state already proves the old incarnation \
         stopped; a restart after the forced leave pays only the delta lease (two heartbeats) and the join.",
        timing.dead_ms, timing.heartbeat_ms
    );
    println!("machine at the end: {}", machine());
    println!("total bench time: {:.1} s", began.elapsed().as_secs_f64());
    if procs::interrupted().is_some() {
        eprintln!("interrupted: the samples above are all there are");
        std::process::exit(1);
    }
    if runs.iter().any(|r| r.error.is_some()) {
        eprintln!("a size could not be measured completely; see above");
        std::process::exit(1);
    }
}

fn run_size(size: u16, timing: Timing, iterations: usize, master_kills: usize, dir: Option<PathBuf>) -> SizeRun {
    let began = Instant::now();
    let mut run = SizeRun {
        size,
        samples: Vec::new(),
        restart_at_once: Takeovers::default(),
        restart_after: Takeovers::default(),
        master_restart: Takeovers::default(),
        masters: Vec::new(),
        formed_ms: 0.0,
        error: None,
        seconds: 0.0,
    };
    let spec = ClusterSpec {
        prefix: "sdc-bench-latency-",
        disk: DiskKind::MmapFile,
        parent: dir,
        bytes: DISK_BYTES,
        max_nodes: MAX_NODES,
        table: size + 1,
        timing,
        layers: LAYERS.iter().map(|s| s.to_string()).collect(),
    };
    let mut c = match Cluster::create(spec) {
        Ok(c) => c,
        Err(e) => {
            run.error = Some(format!("cannot create the cluster: {e:#}"));
            return run;
        }
    };
    if let Err(e) = measure(&mut c, &mut run, iterations, master_kills) {
        let mut nodes: Vec<u16> = c.state().map(|st| vec![st.master.0]).unwrap_or_default();
        nodes.push(size + 1);
        nodes.extend(c.unexpected_exits.iter().map(|(n, _, _)| *n).take(3));
        nodes.dedup();
        println!("  ERROR: {e:#}\n{}", c.log_tails(&nodes, 12));
        run.error = Some(format!("{e:#}").lines().next().unwrap_or("").to_string());
    }
    run.seconds = began.elapsed().as_secs_f64();
    run
}

/// Waits until `members` are joined, every other node inactive, nothing in flight.
fn wait_steady(c: &mut Cluster, members: &[u16]) -> Result<()> {
    let table = c.spec.table;
    c.wait_for("a steady cluster", STEP_TIMEOUT, POLL, false, |st| steady(st, table, members))?;
    Ok(())
}

/// Waits until node `node` is joined in an incarnation above `above`.
fn wait_joined(c: &mut Cluster, node: u16, above: u64) -> Result<Duration> {
    let (d, _) = c.wait_for(&format!("node {node} to be joined"), STEP_TIMEOUT, POLL, false, |st| {
        let m = st.member(NodeId(node));
        m.state == MemberState::Joined && m.incarnation > above
    })?;
    Ok(d)
}

/// Waits until node `node`'s forced leave is complete: inactive, nothing in flight for it.
fn wait_inactive(c: &mut Cluster, node: u16) -> Result<Duration> {
    let (d, _) = c.wait_for(&format!("node {node} to be inactive"), STEP_TIMEOUT, POLL, false, |st| {
        st.member(NodeId(node)).state == MemberState::Inactive && st.transition_of(NodeId(node)).is_none()
    })?;
    Ok(d)
}

/// Which message the daemon started after byte `from` of its log logged about its slot.
fn takeover(c: &Cluster, node: u16, from: u64, into: &mut Takeovers) {
    let lines = log_since(&c.log_path(node), from);
    if lines.iter().any(|l| l.contains("taking over its slot at once")) {
        into.at_once += 1;
    } else if lines.iter().any(|l| l.contains("this node's slot shows a running daemon")) {
        into.watched += 1;
    } else {
        into.neither += 1;
    }
}

fn incarnation(c: &Cluster, node: u16) -> Result<u64> {
    Ok(c.state()?.member(NodeId(node)).incarnation)
}

fn measure(c: &mut Cluster, run: &mut SizeRun, iterations: usize, master_kills: usize) -> Result<()> {
    let size = run.size;
    let subject = size + 1;
    let mut members: Vec<u16> = (1..=size).collect();
    let t0 = Instant::now();
    for &n in &members {
        c.spawn(n)?;
    }
    let table = c.spec.table;
    let (_, st) = c.wait_for("the cluster to form", FORM_TIMEOUT, POLL, false, |st| steady(st, table, &members))?;
    run.formed_ms = ms(t0.elapsed());
    run.masters.push(st.master.0);
    println!("  nodes 1..{size} joined in {:.0} ms; master node {}", run.formed_ms, st.master);
    let mut with_subject = members.clone();
    with_subject.push(subject);

    for i in 1..=iterations {
        check_interrupted()?;
        // join
        let before = incarnation(c, subject)?;
        let t = Instant::now();
        c.spawn(subject)?;
        wait_joined(c, subject, before)?;
        let join = t.elapsed();
        run.samples.push((Metric::Join, ms(join)));
        wait_steady(c, &with_subject)?;

        // (a) kill -9 and restart at once
        let before = incarnation(c, subject)?;
        let from = log_len(&c.log_path(subject));
        let t = Instant::now();
        c.kill(subject)?;
        c.spawn(subject)?;
        wait_joined(c, subject, before)?;
        let restart_a = t.elapsed();
        run.samples.push((Metric::RestartAtOnce, ms(restart_a)));
        takeover(c, subject, from, &mut run.restart_at_once);
        wait_steady(c, &with_subject)?;

        // kill -9 of a member until its forced leave is complete, then (b) restart
        let before = incarnation(c, subject)?;
        let t = Instant::now();
        c.kill(subject)?;
        wait_inactive(c, subject)?;
        let forced = t.elapsed();
        run.samples.push((Metric::KillForced, ms(forced)));
        wait_steady(c, &members)?;
        let from = log_len(&c.log_path(subject));
        let t = Instant::now();
        c.spawn(subject)?;
        wait_joined(c, subject, before)?;
        let restart_b = t.elapsed();
        run.samples.push((Metric::RestartAfter, ms(restart_b)));
        takeover(c, subject, from, &mut run.restart_after);
        wait_steady(c, &with_subject)?;

        // leave
        let (inactive, returned) = leave(c, subject)?;
        run.samples.push((Metric::LeaveInactive, ms(inactive)));
        run.samples.push((Metric::LeaveReturned, ms(returned)));
        wait_steady(c, &members)?;
        println!(
            "  {i:>2}: join {:>5.0}; restart at once {:>5.0}; kill -> forced leave done {:>5.0}; restart after it {:>5.0}; \
             sdc leave -> inactive {:>4.0}, returned {:>4.0} (ms)",
            ms(join),
            ms(restart_a),
            ms(forced),
            ms(restart_b),
            ms(inactive),
            ms(returned)
        );
    }

    let io = c.io();
    for i in 1..=master_kills {
        check_interrupted()?;
        let st = c.state()?;
        let old = st.master.0;
        if !members.contains(&old) {
            bail!("the master is node {old}, not one of the members {members:?}");
        }
        let before = st.member(NodeId(old)).incarnation;
        let old_epoch = match master_of(c.db())? {
            Some((m, e)) if m == old => e,
            other => bail!("the cluster state says node {old} is master, its heartbeats say {other:?}"),
        };
        let view = c.open_view()?;
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        c.kill(old)?;
        members.retain(|&n| n != old);
        let mut calls = 0;
        // The disk's view too, in a thread: the first `up` heartbeat acting master in a later
        // epoch, read every millisecond (`sdc status` takes about 150 ms a call).
        let (status, on_disk) = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| -> Result<Option<Duration>> {
                while !stop.load(Ordering::Relaxed) && t.elapsed() < STEP_TIMEOUT {
                    if master_of(&view)?.is_some_and(|(m, e)| m != old && e > old_epoch) {
                        return Ok(Some(t.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(None)
            });
            let status = (|| loop {
                check_interrupted()?;
                c.check_exits()?;
                calls += 1;
                let m = status_master(&c.disk, io)?;
                if let Some(m) = m.filter(|&m| m != old) {
                    return Ok((m, t.elapsed()));
                }
                if t.elapsed() > STEP_TIMEOUT {
                    bail!("sdc status showed no new master within {STEP_TIMEOUT:?} of killing master node {old}");
                }
            })();
            stop.store(true, Ordering::Relaxed);
            (status, watcher.join().map_err(|_| anyhow!("the disk watcher panicked")))
        });
        let (new, status_d) = status?;
        let on_disk_ms = on_disk??.map(ms);
        if let Some(d) = on_disk_ms {
            run.samples.push((Metric::MasterDisk, d));
        }
        wait_inactive(c, old)?;
        let forced = t.elapsed();
        run.samples.push((Metric::MasterStatus, ms(status_d)));
        run.samples.push((Metric::MasterForced, ms(forced)));
        run.masters.push(new);
        wait_steady(c, &members)?;
        let from = log_len(&c.log_path(old));
        c.spawn(old)?;
        wait_joined(c, old, before)?;
        members.push(old);
        members.sort_unstable();
        wait_steady(c, &members)?;
        takeover(c, old, from, &mut run.master_restart);
        println!(
            "  master kill {i:>2}: node {old} killed; new master's heartbeat on disk after {} ms; sdc status shows node \
             {new} after {:>5.0} ms ({calls} calls); old master's forced leave done at {:>5.0} ms; it rejoined",
            on_disk_ms.map_or("-".into(), |d| format!("{d:>5.0}")),
            ms(status_d),
            ms(forced)
        );
    }
    Ok(())
}

/// `sdc leave --node NODE`: (until the cluster state shows it inactive, until the command returned).
fn leave(c: &mut Cluster, node: u16) -> Result<(Duration, Duration)> {
    let mut daemon = c.take(node).ok_or_else(|| anyhow!("node {node} has no daemon"))?;
    let args: Vec<OsString> = vec![
        "leave".into(),
        "--disk".into(),
        c.disk.clone().into(),
        "--io".into(),
        c.io().into(),
        "--node".into(),
        node.to_string().into(),
        "--timeout".into(),
        "30".into(),
    ];
    let t = Instant::now();
    let cmd = Sdc::new(common::SDC).spawn(args, &c.dir().join("sdc-leave.log")).context("cannot start sdc leave")?;
    let i = c.add_command(cmd);
    let (mut inactive, mut returned, mut exited) = (None, None, None);
    loop {
        c.check_exits()?;
        let st = c.state()?;
        if inactive.is_none()
            && st.member(NodeId(node)).state == MemberState::Inactive
            && st.transition_of(NodeId(node)).is_none()
        {
            inactive = Some(t.elapsed());
        }
        if returned.is_none() {
            if let Some(status) = c.command_mut(i).try_wait()? {
                if !status.success() {
                    bail!(
                        "sdc leave --node {node} failed ({}): {}",
                        exit_text(status),
                        procs::last_line(&c.dir().join("sdc-leave.log"))
                    );
                }
                returned = Some(t.elapsed());
            }
        }
        if exited.is_none() {
            if let Some(status) = daemon.try_wait()? {
                if !status.success() {
                    bail!("node {node}'s daemon exited with {} after sdc leave", exit_text(status));
                }
                exited = Some(t.elapsed());
            }
        }
        if let (Some(a), Some(b), Some(_)) = (inactive, returned, exited) {
            return Ok((a, b));
        }
        if t.elapsed() > STEP_TIMEOUT {
            bail!(
                "node {node} did not leave within {STEP_TIMEOUT:?} (inactive {}, command returned {}, daemon exited {})",
                inactive.is_some(),
                returned.is_some(),
                exited.is_some()
            );
        }
        std::thread::sleep(POLL);
    }
}
