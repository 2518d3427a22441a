//! A 256-node cluster on one file (mmap I/O), every daemon with four rehearsal layers
//! ([`LAYERS`]): how long it takes to form, whether it stays quiet when idle and what that
//! costs, and how long it takes to lose a node and to lose the master.
//!
//! Run with `cargo bench -p sdc --bench scale` (about a minute and a half per timing, three
//! with the relaxed rerun); `-- --help` lists the options: `--nodes 256`, `--idle-secs 60`,
//! `--timing 100/1000/600`, `--relaxed 200/3000/2000` (the rerun's timing: see below),
//! `--stagger 2` (daemons started per 100 ms), `--dir` (where the temporary directory goes; the
//! system's by default).
//!
//! * **formation**: a sparse 64 MiB file formatted with `--max-nodes 256`, every node in the
//!   node table, then the daemons are started `--stagger` per 100 ms (256 started at once starved
//!   the 2 cores this was written on, and daemons fenced at the default timing; at 2 per 100 ms
//!   most runs formed with no fence, though once a master fenced while its `msync` of the cluster
//!   state stalled in the file system). It times when a master is first visible (an `up`
//!   heartbeat acting master) and when all nodes are joined with nothing in flight (the cluster
//!   state on the disk). A daemon that exits meanwhile (it fenced itself, say) is reported and
//!   started again, as a service manager would.
//! * **idle**: `--idle-secs` with no faults. Every line any daemon logs in that time is counted
//!   by kind: an idle daemon logs nothing, so each is a spurious event (a node judged dead or
//!   stopped, FENCED, FORCED OUT, claims, a new master, corrupt records, I/O errors,
//!   transitions); the expected count is zero. CPU per daemon over the window, from
//!   `/proc/PID/stat` (utime + stime), as mean, max and total % of one core.
//! * **losing a node**: SIGKILL of a non-master daemon, until the cluster state shows its forced
//!   leave complete (inactive, nothing in flight); then SIGKILL of the master, until a new master
//!   is visible (its heartbeat, and the cluster state it writes) and the old master's forced
//!   leave is complete.
//! * memory: the daemons' proportional set size (PSS, which adds up) and their peak RSS.
//!
//! If, at `--timing`, any daemon fenced, exited, or was judged dead without having been killed
//! (starved of CPU, or stalled in the file system: the log lines it prints say which), the bench
//! says so and runs everything again at
//! `--relaxed`, printing both results. It prints numbers and asserts nothing about speed.
//! Every daemon is SIGKILLed and reaped and every temporary file removed by `Drop` guards, on
//! errors, panics and Ctrl-C too (`common::Cluster`).

#[path = "common/mod.rs"]
mod common;

use anyhow::{anyhow, bail, Result};
use common::{
    check_interrupted, classify, clock_ticks, cpu_ticks, log_len, log_since, machine, ms, pss_kib, rss_kib, shorten,
    steady, timing_text, Cluster, ClusterSpec, DiskKind, LogKinds, Opts, KINDS,
};
use membership_db::format::{MemberState, NodeId, Timing};
use sdc_procs::procs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Registered by every daemon (`--layer NAME:ORDER[:JOIN/LEAVE/FORCED]`).
const LAYERS: [&str; 3] = ["vdm:20", "sfs:30", "em:40"];
const MAX_NODES: u16 = 256;
const DISK_BYTES: u64 = 64 << 20;
const POLL: Duration = Duration::from_millis(20);
/// How long the cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a forced leave or a failover may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The daemons settle this long after the cluster formed, before the idle window.
const SETTLE: Duration = Duration::from_secs(3);
/// How often a daemon that exits on its own is started again, at most, per run.
const RESTARTS_MAX: usize = 64;

struct Config {
    nodes: u16,
    idle: Duration,
    timing: Timing,
    relaxed: Timing,
    stagger: usize,
    dir: Option<PathBuf>,
}

/// What one run (at one timing) measured.
#[derive(Default)]
struct RunResult {
    timing: Option<Timing>,
    spawn_ms: f64,
    master_ms: Option<f64>,
    first_master: Option<(u16, u64)>,
    formed_ms: Option<f64>,
    idle_secs: f64,
    idle_logs: LogKinds,
    /// Per daemon over the idle window, % of one core.
    cpu: Vec<f64>,
    killed_node: Option<u16>,
    node_forced_ms: Option<f64>,
    node_detected_ms: Option<f64>,
    killed_master: Option<(u16, u64)>,
    new_master: Option<(u16, u64)>,
    master_hb_ms: Option<f64>,
    master_state_ms: Option<f64>,
    master_forced_ms: Option<f64>,
    /// Sum of PSS, mean and max VmRSS, max VmHWM (KiB), over the daemons, after the idle window.
    memory: Option<(u64, u64, u64, u64, usize)>,
    /// Threads and open files of one daemon.
    daemon_threads: Option<usize>,
    daemon_fds: Option<usize>,
    /// (phase, node, how it ended, last log line): daemons that exited on their own.
    exits: Vec<(&'static str, u16, String, String)>,
    /// Lines of every log, whole run: FENCED, FORCED OUT, deaths judged of nodes not killed.
    starvation: LogKinds,
    error: Option<String>,
    seconds: f64,
}

impl RunResult {
    /// Signs that the daemons were starved: exits, fences, deaths of nodes nobody killed.
    fn starved(&self) -> bool {
        !self.exits.is_empty() || self.starvation.total > 0
    }
}

fn main() {
    let opts = Opts::parse(
        "scale",
        "A 256-node cluster on one file: formation, an idle minute, losing a node and the master.",
        &[
            ("nodes", "256", "nodes in the cluster (at most 256)"),
            ("idle-secs", "60", "length of the idle window in seconds"),
            ("timing", "100/1000/600", "heartbeat/dead/fence in ms"),
            ("relaxed", "200/3000/2000", "timing of the rerun when the first run shows starvation"),
            ("stagger", "2", "daemons started per 100 ms"),
            ("dir", "", "where the temporary directory goes (empty: the system's temporary directory)"),
        ],
    );
    common::catch_interrupts();
    let config = Config {
        nodes: opts.u64("nodes").clamp(3, MAX_NODES as u64) as u16,
        idle: Duration::from_secs_f64(opts.f64("idle-secs")),
        timing: opts.timing("timing"),
        relaxed: opts.timing("relaxed"),
        stagger: opts.u64("stagger").max(1) as usize,
        dir: opts.path("dir"),
    };
    let began = Instant::now();
    println!("sdc scale benchmark: {} nodes on one file", config.nodes);
    println!("sdc binary: {}", common::SDC);
    println!("machine: {}; kernel {}", machine(), common::kernel());
    println!(
        "disk: a sparse {} MiB file in {}, mmap I/O, format --max-nodes {MAX_NODES}",
        DISK_BYTES >> 20,
        config.dir.clone().unwrap_or_else(std::env::temp_dir).display()
    );
    println!("layers on every node: --layer {}", LAYERS.join(" --layer "));
    println!("{}", limits(config.nodes));
    println!(
        "daemons started {} per 100 ms (staggered: 256 started at once can starve a small machine into fences); idle \
         window {:.0} s",
        config.stagger,
        config.idle.as_secs_f64()
    );
    println!();

    let mut results = Vec::new();
    let mut timings = vec![config.timing];
    if config.relaxed != config.timing {
        timings.push(config.relaxed);
    }
    for (i, &timing) in timings.iter().enumerate() {
        if procs::interrupted().is_some() {
            break;
        }
        println!("Run at {}:", timing_text(&timing));
        let r = run(&config, timing);
        let starved = r.starved();
        let failed = r.error.is_some();
        println!("  ({:.1} s for this run)", r.seconds);
        println!();
        results.push(r);
        if i + 1 < timings.len() {
            if starved || failed {
                println!(
                    "At {} the daemons {}: running it all again at {}.",
                    timing_text(&timing),
                    if starved {
                        "fenced, exited or judged each other dead without being killed (starved of CPU or of file \
                         system time: see the log lines above)"
                    } else {
                        "could not be measured (see above)"
                    },
                    timing_text(&timings[i + 1])
                );
                println!();
            } else {
                break;
            }
        }
    }
    print_results(&config, &results);
    println!("machine at the end: {}", machine());
    println!("total bench time: {:.1} s", began.elapsed().as_secs_f64());
    if procs::interrupted().is_some() {
        eprintln!("interrupted: the results above are all there are");
        std::process::exit(1);
    }
    if results.last().is_none_or(|r| r.error.is_some()) {
        eprintln!("the last run could not be completed; see above");
        std::process::exit(1);
    }
}

/// The limits that matter for hundreds of processes, raised where the soft limit is too low.
fn limits(nodes: u16) -> String {
    let mut parts = Vec::new();
    for (res, name, want) in [
        (libc::RLIMIT_NOFILE, "open files", 4096u64),
        (libc::RLIMIT_NPROC, "processes/threads", 16 * nodes as u64 + 1024),
    ] {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit through the pointer.
        if unsafe { libc::getrlimit(res, &mut l) } != 0 {
            continue;
        }
        let mut note = String::new();
        if l.rlim_cur != libc::RLIM_INFINITY && l.rlim_cur < want && l.rlim_max > l.rlim_cur {
            let raised = libc::rlimit { rlim_cur: l.rlim_max.min(want.max(l.rlim_cur)), rlim_max: l.rlim_max };
            // SAFETY: setrlimit reads one rlimit through the pointer.
            if unsafe { libc::setrlimit(res, &raised) } == 0 {
                note = format!(" (raised from {})", l.rlim_cur);
                l = raised;
            }
        }
        let cur = if l.rlim_cur == libc::RLIM_INFINITY { "unlimited".to_string() } else { l.rlim_cur.to_string() };
        parts.push(format!("{name} {cur}{note}"));
    }
    let read = |p: &str| std::fs::read_to_string(p).map_or("?".into(), |s| s.trim().to_string());
    format!(
        "limits: {}; kernel pid_max {}, threads-max {}",
        parts.join(", "),
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max")
    )
}

fn run(config: &Config, timing: Timing) -> RunResult {
    let began = Instant::now();
    let mut r = RunResult { timing: Some(timing), ..Default::default() };
    let spec = ClusterSpec {
        prefix: "sdc-bench-scale-",
        disk: DiskKind::MmapFile,
        parent: config.dir.clone(),
        bytes: DISK_BYTES,
        max_nodes: MAX_NODES,
        table: config.nodes,
        timing,
        layers: LAYERS.iter().map(|s| s.to_string()).collect(),
    };
    match Cluster::create(spec) {
        Ok(mut c) => {
            if let Err(e) = measure(config, &mut c, &mut r) {
                let mut nodes: Vec<u16> = c.state().map(|st| vec![st.master.0]).unwrap_or_default();
                nodes.extend(r.exits.iter().map(|(_, n, _, _)| *n).take(2));
                nodes.dedup();
                println!("  ERROR: {e:#}\n{}", c.log_tails(&nodes, 8));
                r.error = Some(format!("{e:#}").lines().next().unwrap_or("").to_string());
            }
            scan_starvation(&c, &mut r);
            println!("  stopping {} daemons and removing {}", c.running().len(), c.dir().display());
        }
        Err(e) => r.error = Some(format!("cannot create the cluster: {e:#}")),
    }
    r.seconds = began.elapsed().as_secs_f64();
    r
}

/// Starts again every daemon that exited on its own since the last look, noting it.
fn supervise(c: &mut Cluster, r: &mut RunResult, phase: &'static str) -> Result<()> {
    check_interrupted()?;
    let before = c.unexpected_exits.len();
    if c.reap_exits()? == 0 {
        return Ok(());
    }
    let gone: Vec<(u16, String, String)> = c.unexpected_exits[before..].to_vec();
    for (node, how, last) in gone {
        println!("  node {node} exited during {phase} ({how}): {}", shorten(&last, 200));
        r.exits.push((phase, node, how, last));
        if r.exits.len() > RESTARTS_MAX {
            bail!("more than {RESTARTS_MAX} daemons exited on their own; giving up");
        }
        c.spawn(node)?;
    }
    Ok(())
}

/// Polls the cluster state until `done`, restarting daemons that exit; the time it took.
fn wait(
    c: &mut Cluster,
    r: &mut RunResult,
    phase: &'static str,
    timeout: Duration,
    mut done: impl FnMut(&Cluster) -> Result<bool>,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        supervise(c, r, phase)?;
        if done(c)? {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            let st = c.state().map_or("no cluster state".into(), |st| c.describe(&st));
            bail!("{phase}: not done within {timeout:?}: {st}");
        }
        std::thread::sleep(POLL);
    }
}

fn measure(config: &Config, c: &mut Cluster, r: &mut RunResult) -> Result<()> {
    let n = config.nodes;
    let all: Vec<u16> = (1..=n).collect();
    // --- formation ---
    let t0 = Instant::now();
    let mut spawned = 0usize;
    loop {
        supervise(c, r, "formation")?;
        let due = ((t0.elapsed().as_millis() / 100) as usize + 1) * config.stagger;
        while spawned < due.min(n as usize) {
            spawned += 1;
            c.spawn(spawned as u16)?;
            if spawned == n as usize {
                r.spawn_ms = ms(t0.elapsed());
            }
            if spawned.is_multiple_of(8) {
                look_for_master(c, r, t0)?;
            }
        }
        look_for_master(c, r, t0)?;
        if spawned == n as usize {
            if let Ok(st) = c.state() {
                if steady(&st, n, &all) {
                    break;
                }
            }
        }
        if t0.elapsed() > FORM_TIMEOUT {
            let st = c.state().map_or("no cluster state".into(), |st| c.describe(&st));
            bail!("the cluster did not form within {FORM_TIMEOUT:?}: {st}");
        }
        std::thread::sleep(POLL);
    }
    r.formed_ms = Some(ms(t0.elapsed()));
    println!(
        "  all {n} spawned after {:.0} ms; all joined with nothing in flight after {:.0} ms",
        r.spawn_ms,
        ms(t0.elapsed())
    );
    let settle = Instant::now();
    while settle.elapsed() < SETTLE {
        supervise(c, r, "settling")?;
        std::thread::sleep(POLL);
    }

    // --- idle ---
    let nodes = c.running();
    let pids: Vec<(u16, u32)> = nodes.iter().filter_map(|&n| Some((n, c.pid(n)?))).collect();
    let offsets: Vec<(u16, u64)> = nodes.iter().map(|&n| (n, log_len(&c.log_path(n)))).collect();
    let ticks0: Vec<Option<u64>> = pids.iter().map(|&(_, p)| cpu_ticks(p)).collect();
    let exits_before = r.exits.len();
    let w0 = Instant::now();
    while w0.elapsed() < config.idle {
        supervise(c, r, "the idle window")?;
        std::thread::sleep(Duration::from_millis(100).min(config.idle.saturating_sub(w0.elapsed())));
    }
    r.idle_secs = w0.elapsed().as_secs_f64();
    let ticks1: Vec<Option<u64>> = pids.iter().map(|&(_, p)| cpu_ticks(p)).collect();
    let restarted: Vec<u16> = r.exits[exits_before..].iter().map(|(_, n, _, _)| *n).collect();
    for ((&(node, _), a), b) in pids.iter().zip(&ticks0).zip(&ticks1) {
        if let (Some(a), Some(b)) = (a, b) {
            if !restarted.contains(&node) {
                r.cpu.push(100.0 * (b.saturating_sub(*a)) as f64 / clock_ticks() / r.idle_secs);
            }
        }
    }
    for &(node, off) in &offsets {
        for line in log_since(&c.log_path(node), off) {
            r.idle_logs.add(node, &line, 8);
        }
    }
    let total_cpu: f64 = r.cpu.iter().sum();
    println!(
        "  idle {:.1} s: {} log line(s) from the daemons (0 expected); CPU of the {} daemons {:.1}% of one core in all",
        r.idle_secs,
        r.idle_logs.total,
        r.cpu.len(),
        total_cpu
    );
    let mut pss = 0;
    let (mut rss_sum, mut rss_max, mut hwm_max, mut counted) = (0, 0, 0, 0);
    for &(_, pid) in &pids {
        if let (Some(p), Some((rss, hwm))) = (pss_kib(pid), rss_kib(pid)) {
            pss += p;
            rss_sum += rss;
            rss_max = rss_max.max(rss);
            hwm_max = hwm_max.max(hwm);
            counted += 1;
        }
    }
    if counted > 0 {
        r.memory = Some((pss, rss_sum / counted as u64, rss_max, hwm_max, counted));
    }
    if let Some(&(_, pid)) = pids.first() {
        r.daemon_threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok().map(|d| d.count());
        r.daemon_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count());
    }

    // --- losing a node ---
    wait(c, r, "settling", STEP_TIMEOUT, |c| Ok(c.state().is_ok_and(|st| steady(&st, n, &all))))?;
    let st = c.state()?;
    let master = st.master.0;
    let victim =
        (1..=n).rev().find(|&v| v != master && c.daemon(v).is_some()).ok_or_else(|| anyhow!("no node to kill"))?;
    r.killed_node = Some(victim);
    let t = Instant::now();
    c.kill(victim)?;
    let mut detected = None;
    wait(c, r, "the forced leave of a node", STEP_TIMEOUT, |c| {
        let st = c.state()?;
        let m = st.member(NodeId(victim));
        if m.state == MemberState::ForcedLeaving && detected.is_none() {
            detected = Some(t.elapsed());
        }
        Ok(m.state == MemberState::Inactive && st.transitions.is_empty())
    })?;
    r.node_forced_ms = Some(ms(t.elapsed()));
    r.node_detected_ms = detected.map(ms);
    println!(
        "  kill -9 of node {victim}: forced-leaving after {}, forced leave complete (inactive, nothing in flight) after {:.0} ms",
        detected.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
        ms(t.elapsed())
    );
    let members: Vec<u16> = all.iter().copied().filter(|&x| x != victim).collect();
    wait(c, r, "settling", STEP_TIMEOUT, |c| Ok(c.state().is_ok_and(|st| steady(&st, n, &members))))?;

    // --- losing the master ---
    let (old, old_epoch) = c.master_on_disk()?.ok_or_else(|| anyhow!("no master on the disk"))?;
    r.killed_master = Some((old, old_epoch));
    let t = Instant::now();
    c.kill(old)?;
    let (mut hb_seen, mut state_seen) = (None, None);
    let mut new = None;
    wait(c, r, "the failover", STEP_TIMEOUT, |c| {
        if hb_seen.is_none() {
            if let Some((m, e)) = c.master_on_disk()?.filter(|&(m, e)| m != old && e > old_epoch) {
                hb_seen = Some(t.elapsed());
                new = Some((m, e));
            }
        }
        let st = c.state()?;
        if state_seen.is_none() && st.master.0 != old && st.epoch > old_epoch {
            state_seen = Some(t.elapsed());
        }
        let m = st.member(NodeId(old));
        Ok(hb_seen.is_some() && state_seen.is_some() && m.state == MemberState::Inactive && st.transitions.is_empty())
    })?;
    r.master_forced_ms = Some(ms(t.elapsed()));
    r.master_hb_ms = hb_seen.map(ms);
    r.master_state_ms = state_seen.map(ms);
    r.new_master = new;
    println!(
        "  kill -9 of master node {old} (epoch {old_epoch}): new master node {} (epoch {}) in its heartbeat after {} and \
         in the cluster state after {}; node {old}'s forced leave complete after {:.0} ms",
        new.map_or("-".into(), |m| m.0.to_string()),
        new.map_or("-".into(), |m| m.1.to_string()),
        hb_seen.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
        state_seen.map_or("-".into(), |d| format!("{:.0} ms", ms(d))),
        ms(t.elapsed())
    );
    Ok(())
}

/// Notes when a master is first visible on the disk.
fn look_for_master(c: &Cluster, r: &mut RunResult, t0: Instant) -> Result<()> {
    if r.master_ms.is_none() {
        if let Some(m) = c.master_on_disk()? {
            r.master_ms = Some(ms(t0.elapsed()));
            r.first_master = Some(m);
            println!("  master visible after {:.0} ms: node {} (epoch {})", ms(t0.elapsed()), m.0, m.1);
        }
    }
    Ok(())
}

/// Every log, whole run: fences, forced-outs and deaths judged of nodes the bench did not kill.
fn scan_starvation(c: &Cluster, r: &mut RunResult) {
    let killed: Vec<u16> = r.killed_node.into_iter().chain(r.killed_master.map(|m| m.0)).collect();
    for node in 1..=c.spec.table {
        for line in log_since(&c.log_path(node), 0) {
            let kind = classify(&line);
            let bad = match kind {
                "FENCED" | "FORCED OUT" => true,
                "node judged dead" => {
                    let who = line.split(" is dead: ").next().and_then(|h| h.rsplit(' ').next()?.parse::<u16>().ok());
                    who.is_none_or(|w| !killed.contains(&w))
                }
                _ => false,
            };
            if bad {
                r.starvation.add(node, &line, 6);
            }
        }
    }
}

fn opt_ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}"))
}

fn print_results(config: &Config, results: &[RunResult]) {
    if results.is_empty() {
        return;
    }
    println!("Results ({} nodes; times in ms from the first spawn or from the kill):", config.nodes);
    let label =
        |r: &RunResult| r.timing.map_or("?".into(), |t| format!("{}/{}/{}", t.heartbeat_ms, t.dead_ms, t.fence_ms));
    let mut header = format!("{:<58}", "measure \\ timing (heartbeat/dead/fence ms)");
    for r in results {
        header.push_str(&format!(" | {:>14}", label(r)));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let row = |name: &str, f: &dyn Fn(&RunResult) -> String| {
        let mut line = format!("{name:<58}");
        for r in results {
            line.push_str(&format!(" | {:>14}", f(r)));
        }
        println!("{line}");
    };
    row("formation: all daemons spawned", &|r| format!("{:.0}", r.spawn_ms));
    row("formation: first master visible", &|r| opt_ms(r.master_ms));
    row("formation: all joined, nothing in flight", &|r| opt_ms(r.formed_ms));
    row("daemons that exited on their own, all phases (restarted)", &|r| r.exits.len().to_string());
    row("log lines: FENCED / FORCED OUT / unkilled node judged dead", &|r| {
        format!(
            "{}/{}/{}",
            r.starvation.count("FENCED"),
            r.starvation.count("FORCED OUT"),
            r.starvation.count("node judged dead")
        )
    });
    row("idle: seconds", &|r| format!("{:.1}", r.idle_secs));
    row("idle: spurious log lines, all daemons (0 expected)", &|r| r.idle_logs.total.to_string());
    row("idle: CPU per daemon, mean (% of one core)", &|r| {
        if r.cpu.is_empty() {
            "-".into()
        } else {
            format!("{:.2}", r.cpu.iter().sum::<f64>() / r.cpu.len() as f64)
        }
    });
    row("idle: CPU per daemon, max (% of one core)", &|r| {
        if r.cpu.is_empty() {
            "-".into()
        } else {
            format!("{:.2}", r.cpu.iter().copied().fold(0.0, f64::max))
        }
    });
    row("idle: CPU of all daemons (% of one core)", &|r| {
        if r.cpu.is_empty() {
            "-".into()
        } else {
            format!("{:.1}", r.cpu.iter().sum::<f64>())
        }
    });
    row("kill -9 of a node: forced-leaving in the cluster state", &|r| opt_ms(r.node_detected_ms));
    row("kill -9 of a node: forced leave complete", &|r| opt_ms(r.node_forced_ms));
    row("kill -9 of the master: new master's heartbeat", &|r| opt_ms(r.master_hb_ms));
    row("kill -9 of the master: new master's cluster state", &|r| opt_ms(r.master_state_ms));
    row("kill -9 of the master: its forced leave complete", &|r| opt_ms(r.master_forced_ms));
    row("memory: PSS of all daemons (MiB)", &|r| {
        r.memory.map_or("-".into(), |m| format!("{:.1}", m.0 as f64 / 1024.0))
    });
    row("memory: RSS per daemon, mean / max (MiB)", &|r| {
        r.memory.map_or("-".into(), |m| format!("{:.1} / {:.1}", m.1 as f64 / 1024.0, m.2 as f64 / 1024.0))
    });
    row("memory: peak RSS of a daemon, VmHWM (MiB)", &|r| {
        r.memory.map_or("-".into(), |m| format!("{:.1}", m.3 as f64 / 1024.0))
    });
    row("one daemon: threads / open file descriptors", &|r| {
        format!(
            "{} / {}",
            r.daemon_threads.map_or("-".into(), |x| x.to_string()),
            r.daemon_fds.map_or("-".into(), |x| x.to_string())
        )
    });
    println!();
    for r in results {
        println!("At {}:", label(r));
        if let Some((m, e)) = r.first_master {
            println!("  first master: node {m} (epoch {e})");
        }
        if let (Some(v), Some((m, e))) = (r.killed_node, r.killed_master) {
            println!(
                "  killed node {v}, then master node {m} (epoch {e}); new master {}",
                r.new_master.map_or("-".into(), |(n, e)| format!("node {n} (epoch {e})"))
            );
        }
        let kinds: Vec<String> = KINDS.iter().map(|k| format!("{k} {}", r.idle_logs.count(k))).collect();
        println!("  idle window, log lines of all daemons by kind (each is a spurious event; 0 expected):");
        for chunk in kinds.chunks(6) {
            println!("    {}", chunk.join(", "));
        }
        for (node, line) in &r.idle_logs.first {
            println!("    node {node}: {}", shorten(line, 240));
        }
        for (phase, node, how, last) in &r.exits {
            println!("  exited during {phase}: node {node} ({how}): {}", shorten(last, 200));
        }
        if r.starvation.total > 0 {
            let kinds: Vec<String> = r.starvation.kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            println!("  signs of starvation in the logs (whole run): {}; first lines:", kinds.join(", "));
            for (node, line) in &r.starvation.first {
                println!("    node {node}: {}", shorten(line, 240));
            }
        }
        if let Some(e) = &r.error {
            println!("  ERROR: {e}");
        }
    }
    println!();
}
