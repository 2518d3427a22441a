//! Disk I/O per node per heartbeat interval, counted with strace on a loop device with direct
//! I/O: the claim of ARCHITECTURE.md, *The read path*, that an idle node (master included) does
//! one write (its heartbeat) and one read (the heartbeat region from slot 0 up to the highest
//! node id in the node table) per interval whatever `--max-nodes` is, and that a transition adds
//! reads only of what changed.
//!
//! Run with `cargo bench -p sdc --bench io` (about four minutes); `-- --help` lists the options:
//! `--sizes 3,16,64,256` (cluster sizes), `--idle-secs 10` (the idle window), `--timing
//! 100/1000/600` (heartbeat/dead/fence ms), `--relaxed 200/3000/2000` (the timing a size is run
//! again with when the first shows fences, deaths or daemons that exited), `--stagger 2`
//! (daemons started per 100 ms while a cluster forms: 256 daemons started faster than that, 8
//! per 100 ms say, made a daemon fence itself from CPU starvation on 2 cores at the default
//! timing, with every node reading the heartbeat region four times an interval while hundreds of
//! joins were in flight), `--dir /dev/shm` (where the loop device's backing file goes),
//! `--form-secs 300` (how long a cluster may take to form).
//! It needs root, `losetup` and `strace`; without them it says so and exits 0.
//!
//! For each size N: a 64 MiB backing file (in `--dir`: tmpfs by default, so that the loop
//! device's flushes cost nothing and the numbers are the daemons' own, not the file system's)
//! is attached with `losetup -f --show` and formatted with `--io direct --max-nodes 256` whatever
//! N is, so the numbers show the read scaling with the nodes in the table, not with max-nodes.
//! Nodes 1..N+1 are added to the node table (node N+1 joins later; at N = 256, the most a
//! cluster can have, node 256 is taken out with `sdc leave` before the join window and joins
//! again in it) and daemons 1..N are started (`sdc join --io direct` with four rehearsal layers,
//! [`LAYERS`]). The bench waits until all N are joined with nothing in flight (the cluster state
//! as read from the disk), lets them settle, then:
//!
//! * **idle window**: attaches `strace -f -ff -ttt -s 0 -e trace=pread64,pwrite64 -p PID` to
//!   the master and two followers (every node when N = 3), and counts the calls and the bytes
//!   they returned (their return values) per node per heartbeat interval, over the window (the
//!   calls are time-stamped, and only those inside it count). `/proc/PID/io` (syscr, syscw,
//!   rchar, wchar) of *every* daemon over the same window is the cross-check without a tracer:
//!   an idle daemon writes no log line, so its only read and write calls are its disk I/O.
//! * **join window**: attaches strace the same way to the master and a follower, starts node
//!   N+1's daemon stopped (SIGSTOP before it executes `sdc`), attaches strace to it, lets it go,
//!   and stops tracing when the cluster state shows it joined with nothing in flight.
//!
//! Every I/O is also sorted by the region its offset falls in (heartbeat, cluster state, node
//! records...), so the join window's extra reads show what they read. Daemons' log lines
//! written during the windows are counted by kind: an idle daemon logs nothing, so any line
//! there (a node judged dead, a fence, an election) is an incident.
//!
//! It prints numbers and asserts nothing about speed. Every daemon and tracer is SIGKILLed and
//! reaped, every loop device detached and every temporary file removed by `Drop` guards, on
//! errors, panics and Ctrl-C too (`common::Cluster`).

#[path = "common/mod.rs"]
mod common;

use anyhow::{anyhow, bail, Context, Result};
use common::{
    check_interrupted, load_average, log_len, log_since, machine, ms, need_root_and, proc_io, sdc, steady, timing_text,
    Cluster, ClusterSpec, DiskKind, LogKinds, Opts, ProcIo,
};
use membership_db::format::{Layout, MemberState, NodeId, RegionKind, Timing};
use sdc_procs::procs::{self, Sdc};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Registered by every daemon (`--layer NAME:ORDER[:JOIN/LEAVE/FORCED]`).
const LAYERS: [&str; 3] = ["vdm:20", "sfs:30", "em:40"];
const MAX_NODES: u16 = 256;
const DISK_BYTES: u64 = 64 << 20;
/// How long the bench reads the cluster state between looks (each look is one 512 KiB read of
/// the cluster state copies by the bench, through the same loop device).
const POLL: Duration = Duration::from_millis(20);
/// The daemons settle this long after the cluster formed, before the idle window.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a join (the join window) may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long strace may take to attach to every thread, or to detach and exit.
const TRACER_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls in the last this-long of a window may be cut off mid-interval; the bench counts the
/// whole window, so the per-interval figures have an error of about one call in the window.
const MARGIN_NOTE: &str = "per interval = calls in the window / (window / heartbeat)";

struct Config {
    sizes: Vec<u16>,
    idle: Duration,
    timing: Timing,
    relaxed: Timing,
    stagger: u64,
    dir: Option<PathBuf>,
    form_timeout: Duration,
}

/// One system call as strace logged it.
#[derive(Debug, Clone)]
struct Call {
    /// Unix time in seconds.
    at: f64,
    write: bool,
    fd: i64,
    len: u64,
    offset: u64,
    /// The return value: bytes moved, or negative on error.
    ret: i64,
}

/// A region of the disk by name, and whether the calls wrote it.
type RegionKey = (&'static str, bool);

/// One node's I/O in a window.
#[derive(Default, Clone)]
struct NodeIo {
    reads: u64,
    writes: u64,
    read_bytes: u64,
    written_bytes: u64,
    errors: u64,
    /// (region, write?) -> (calls, bytes)
    by_region: Vec<(RegionKey, (u64, u64))>,
    /// (size, count) of reads of the heartbeat region starting at slot 0.
    beacon_read_sizes: Vec<(u64, u64)>,
    fds: Vec<i64>,
}

impl NodeIo {
    fn of(calls: &[Call], layout: &Layout) -> NodeIo {
        let mut io = NodeIo::default();
        for c in calls {
            if !io.fds.contains(&c.fd) {
                io.fds.push(c.fd);
            }
            let bytes = c.ret.max(0) as u64;
            if c.ret < 0 {
                io.errors += 1;
            }
            if c.write {
                io.writes += 1;
                io.written_bytes += bytes;
            } else {
                io.reads += 1;
                io.read_bytes += bytes;
            }
            let region = region_of(layout, c.offset);
            match io.by_region.iter_mut().find(|(k, _)| *k == (region, c.write)) {
                Some((_, (n, b))) => {
                    *n += 1;
                    *b += bytes;
                }
                None => io.by_region.push(((region, c.write), (1, bytes))),
            }
            if !c.write && c.offset == layout.config_stamp_offset() {
                match io.beacon_read_sizes.iter_mut().find(|(s, _)| *s == c.len) {
                    Some((_, n)) => *n += 1,
                    None => io.beacon_read_sizes.push((c.len, 1)),
                }
            }
        }
        io.beacon_read_sizes.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        io
    }

    fn regions_text(&self, write: bool) -> String {
        let parts: Vec<String> = self
            .by_region
            .iter()
            .filter(|((_, w), _)| *w == write)
            .map(|((r, _), (n, b))| format!("{r} {n} calls {b} B"))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

fn region_of(layout: &Layout, offset: u64) -> &'static str {
    let Some(r) = layout.regions.iter().find(|r| r.contains(offset)) else { return "outside the layout" };
    match r.kind {
        RegionKind::NodeRecords if offset >= layout.ack_offset(NodeId(1), 0) => "acknowledgements",
        RegionKind::NodeRecords => "requests",
        RegionKind::Heartbeat => "heartbeat region",
        k => k.name(),
    }
}

/// A row of the results: one traced node in one window.
struct Row {
    window: &'static str,
    role: String,
    node: u16,
    /// The window's length.
    secs: f64,
    io: NodeIo,
}

/// `/proc/PID/io` of every daemon over the idle window, per interval: (mean, max) of each.
struct ProcRow {
    size: u16,
    nodes: usize,
    syscr: (f64, f64),
    syscw: (f64, f64),
    rchar: (f64, f64),
    wchar: (f64, f64),
    /// Mean syscr per interval of the traced and of the untraced daemons.
    traced_syscr: f64,
    untraced_syscr: Option<f64>,
    /// CPU of all daemons over the idle window, % of one core.
    cpu_pct: f64,
}

struct SizeResult {
    size: u16,
    timing: Timing,
    table: u16,
    formed_ms: f64,
    join_ms: f64,
    rows: Vec<Row>,
    proc_row: ProcRow,
    /// Log lines written during the windows, by kind (any line is an incident: idle daemons
    /// log nothing, and a join logs only its own steps).
    idle_logs: LogKinds,
    join_logs: LogKinds,
    slot_bytes: u32,
}

impl SizeResult {
    /// Lines that show trouble (a death, a fence, an election) in either window.
    fn trouble(&self) -> usize {
        const BAD: [&str; 11] = [
            "FENCED",
            "FORCED OUT",
            "node judged dead",
            "node seen stopped",
            "node seen live (again)",
            "claiming master",
            "claim aborted",
            "became master",
            "new master seen",
            "corrupt record",
            "I/O error",
        ];
        // In the join window the joining node is seen live: that is the join, not trouble.
        BAD.iter()
            .map(|&k| self.idle_logs.count(k) + if k == "node seen live (again)" { 0 } else { self.join_logs.count(k) })
            .sum()
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One strace, attached to one daemon.
struct Trace {
    node: u16,
    pid: u32,
    base: PathBuf,
    log: PathBuf,
    /// Index of its process among the cluster's tracers.
    tracer: usize,
}

fn start_trace(c: &mut Cluster, node: u16, tag: &str) -> Result<Trace> {
    let pid = c.pid(node).ok_or_else(|| anyhow!("node {node} has no daemon to trace"))?;
    let base = c.dir().join(format!("strace-{tag}-node{node}"));
    let log = c.dir().join(format!("strace-{tag}-node{node}.log"));
    let args: Vec<OsString> = [
        "-f",
        "-ff",
        "-ttt",
        "-s",
        "0",
        "-e",
        "trace=pread64,pwrite64",
        "-e",
        "signal=none",
        "-o",
        &base.to_string_lossy(),
        "-p",
        &pid.to_string(),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let d = Sdc::new("strace").spawn(args, &log).context("cannot start strace")?;
    let tracer = c.add_tracer(d);
    Ok(Trace { node, pid, base, log, tracer })
}

/// Waits until every strace has attached to its daemon (every thread of it).
fn wait_attached(c: &mut Cluster, traces: &[Trace]) -> Result<()> {
    let t0 = Instant::now();
    for t in traces {
        loop {
            check_interrupted()?;
            // `strace: Process PID attached` (with ` with N threads` when it has several), once
            // it has attached to all of them.
            if procs::log_text(&t.log).contains(" attached") {
                break;
            }
            if let Some(status) = c.tracer_mut(t.tracer).try_wait()? {
                bail!("strace of node {} exited ({}): {}", t.node, procs::exit_text(status), procs::last_line(&t.log));
            }
            if t0.elapsed() > TRACER_TIMEOUT {
                bail!("strace of node {} (pid {}) did not attach within {TRACER_TIMEOUT:?}", t.node, t.pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// SIGINT every strace (it detaches and exits) and waits for it.
fn stop_traces(c: &mut Cluster, traces: &[Trace]) -> Result<()> {
    for t in traces {
        let _ = c.tracer_mut(t.tracer).signal(libc::SIGINT);
    }
    for t in traces {
        let d = c.tracer_mut(t.tracer);
        if d.wait(Instant::now() + TRACER_TIMEOUT)?.is_none() {
            let _ = d.kill();
            bail!("strace of node {} did not exit within {TRACER_TIMEOUT:?} of SIGINT", t.node);
        }
    }
    Ok(())
}

/// Every pread64/pwrite64 in the files `BASE.TID` (one per thread) between `from` and `to`.
fn read_calls(base: &Path, from: f64, to: f64) -> Result<Vec<Call>> {
    let dir = base.parent().ok_or_else(|| anyhow!("no directory"))?;
    let prefix = format!("{}.", base.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()));
    let mut calls = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || name.ends_with(".log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        for line in text.lines() {
            if let Some(c) = parse_call(line) {
                if c.at >= from && c.at <= to {
                    calls.push(c);
                }
            }
        }
    }
    calls.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(calls)
}

/// `1795607511.530819 pread64(3, ""..., 2560, 20480) = 2560`
fn parse_call(line: &str) -> Option<Call> {
    let (at, rest) = line.split_once(' ')?;
    let at: f64 = at.parse().ok()?;
    let (write, rest) = if let Some(r) = rest.strip_prefix("pread64(") {
        (false, r)
    } else if let Some(r) = rest.strip_prefix("pwrite64(") {
        (true, r)
    } else {
        return None;
    };
    let (args, ret) = rest.rsplit_once(") = ")?;
    let ret: i64 = ret.split_whitespace().next()?.parse().ok()?;
    let a: Vec<&str> = args.split(", ").collect();
    if a.len() < 4 {
        return None;
    }
    let n = a.len();
    Some(Call { at, write, fd: a[0].parse().ok()?, len: a[n - 2].parse().ok()?, offset: a[n - 1].parse().ok()?, ret })
}

fn main() {
    let opts = Opts::parse(
        "io",
        "Disk I/O per node per heartbeat interval (strace, loop device, direct I/O).",
        &[
            ("sizes", "3,16,64,256", "cluster sizes (running nodes), each at most 256"),
            ("idle-secs", "10", "length of the idle window in seconds"),
            ("timing", "100/1000/600", "heartbeat/dead/fence in ms"),
            ("relaxed", "200/3000/2000", "timing a size is run again with if the first shows deaths, fences or exits"),
            ("stagger", "2", "daemons started per 100 ms while a cluster forms"),
            ("dir", "/dev/shm", "where the loop device's backing file goes (empty: the temporary directory)"),
            ("form-secs", "300", "how long a cluster may take to form"),
        ],
    );
    common::catch_interrupts();
    for tool in ["losetup", "strace"] {
        if let Some(why) = need_root_and(tool) {
            println!(
                "SKIPPED io bench: {why}; it needs root, losetup (a loop device for direct I/O) and strace (to count \
                 each daemon's system calls)"
            );
            return;
        }
    }
    let dir = opts.path("dir").filter(|d| d.is_dir());
    let config = Config {
        sizes: opts.list_u16("sizes"),
        idle: Duration::from_secs_f64(opts.f64("idle-secs")),
        timing: opts.timing("timing"),
        relaxed: opts.timing("relaxed"),
        stagger: opts.u64("stagger").max(1),
        dir,
        form_timeout: Duration::from_secs(opts.u64("form-secs")),
    };
    if let Some(&bad) = config.sizes.iter().find(|&&n| n == 0 || n > MAX_NODES) {
        eprintln!("--sizes: {bad} is not a cluster size from 1 to {MAX_NODES}");
        std::process::exit(2);
    }
    let began = Instant::now();
    println!("sdc io benchmark: disk I/O per node per heartbeat interval");
    println!("sdc binary: {}", common::SDC);
    println!("machine: {}; kernel {}", machine(), common::kernel());
    println!(
        "disk: a loop device over a {} MiB file in {} (losetup -f --show), direct I/O (O_DIRECT|O_DSYNC), format \
         --max-nodes {MAX_NODES} for every size",
        DISK_BYTES >> 20,
        config.dir.as_ref().map_or(std::env::temp_dir(), |d| d.clone()).display()
    );
    println!("timing: {}", timing_text(&config.timing));
    println!("layers on every node: --layer {}", LAYERS.join(" --layer "));
    println!(
        "daemons started {} per 100 ms; idle window {:.0} s; tracer: strace -f -ff -ttt -s 0 -e \
         trace=pread64,pwrite64 -p PID",
        config.stagger,
        config.idle.as_secs_f64()
    );
    println!();

    let mut results: Vec<SizeResult> = Vec::new();
    let mut failed = Vec::new();
    for &size in &config.sizes {
        if procs::interrupted().is_some() {
            break;
        }
        let mut timings = vec![config.timing];
        if config.relaxed != config.timing {
            timings.push(config.relaxed);
        }
        for (i, &timing) in timings.iter().enumerate() {
            println!("N = {size}: {}", timing_text(&timing));
            let last = i + 1 == timings.len();
            match run_size(&config, size, timing) {
                Ok(r) => {
                    let trouble = r.trouble();
                    results.push(r);
                    if trouble == 0 {
                        break;
                    }
                    if !last {
                        println!(
                            "  {trouble} log line(s) of deaths, fences or elections in the windows at this timing (see \
                             above): running N = {size} again with {}",
                            timing_text(&timings[i + 1])
                        );
                    }
                }
                Err(e) => {
                    println!("  FAILED: {e:#}");
                    if procs::interrupted().is_some() || last {
                        failed.push(size);
                        break;
                    }
                    println!("  running N = {size} again with {}", timing_text(&timings[i + 1]));
                }
            }
            println!();
        }
        println!();
    }

    print_results(&results);
    println!("machine at the end: {}", machine());
    println!("total bench time: {:.1} s", began.elapsed().as_secs_f64());
    if procs::interrupted().is_some() {
        eprintln!("interrupted: the results above are all there are");
        std::process::exit(1);
    }
    if !failed.is_empty() {
        eprintln!("size(s) {failed:?} could not be measured; see above");
        std::process::exit(1);
    }
}

fn run_size(config: &Config, size: u16, timing: Timing) -> Result<SizeResult> {
    let table = (size + 1).min(MAX_NODES);
    let mut c = Cluster::create(ClusterSpec {
        prefix: "sdc-bench-io-",
        disk: DiskKind::DirectLoop,
        parent: config.dir.clone(),
        bytes: DISK_BYTES,
        max_nodes: MAX_NODES,
        table,
        timing,
        layers: LAYERS.iter().map(|s| s.to_string()).collect(),
    })?;
    let result = measure(config, &mut c, size, table, timing);
    if let Err(e) = &result {
        let mut nodes: Vec<u16> = c.state().map(|st| vec![st.master.0]).unwrap_or_default();
        nodes.extend(c.unexpected_exits.iter().map(|(n, _, _)| *n).take(3));
        nodes.dedup();
        println!("  ({e:#})\n{}", c.log_tails(&nodes, 10));
    }
    result
}

fn measure(config: &Config, c: &mut Cluster, size: u16, table: u16, timing: Timing) -> Result<SizeResult> {
    let hb = timing.heartbeat_ms as f64;
    let layout = c.db().layout().clone();
    let slot_bytes = layout.slot_bytes;
    println!("  {} on {}; node table 1..{table}; starting daemons 1..{size}", c.dir().display(), c.disk.display());
    let t0 = Instant::now();
    let nodes: Vec<u16> = (1..=size).collect();
    for chunk in nodes.chunks(config.stagger as usize) {
        let tick = Instant::now();
        for &n in chunk {
            c.spawn(n)?;
        }
        c.check_exits()?;
        std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
    }
    let (_, st) = c.wait_for("the cluster to form", config.form_timeout, Duration::from_millis(50), false, |st| {
        steady(st, table, &nodes)
    })?;
    let formed_ms = ms(t0.elapsed());
    println!(
        "  formed: {size} joined, nothing in flight, {formed_ms:.0} ms after the first spawn; master node {}",
        st.master
    );
    sleep_checking(c, SETTLE)?;

    // --- idle window ---
    let st = c.state()?;
    let master = st.master.0;
    let followers: Vec<u16> = nodes.iter().copied().filter(|&n| n != master).collect();
    let traced: Vec<u16> = if size <= 3 {
        nodes.clone()
    } else {
        let mut t = vec![master, followers[0], *followers.last().expect("size > 3")];
        t.dedup();
        t
    };
    let offsets: Vec<(u16, u64)> = nodes.iter().map(|&n| (n, log_len(&c.log_path(n)))).collect();
    let mut traces = Vec::new();
    for &n in &traced {
        traces.push(start_trace(c, n, "idle")?);
    }
    wait_attached(c, &traces)?;
    std::thread::sleep(Duration::from_millis(200));
    let pids: Vec<(u16, u32)> = nodes
        .iter()
        .map(|&n| c.pid(n).map(|p| (n, p)).ok_or_else(|| anyhow!("node {n} has no daemon")))
        .collect::<Result<_>>()?;
    let io_before: Vec<Option<ProcIo>> = pids.iter().map(|&(_, p)| proc_io(p)).collect();
    let cpu_before: u64 = pids.iter().filter_map(|&(_, p)| common::cpu_ticks(p)).sum();
    let (from, w0) = (unix_now(), Instant::now());
    sleep_checking(c, config.idle)?;
    let (to, idle_secs) = (unix_now(), w0.elapsed().as_secs_f64());
    let io_after: Vec<Option<ProcIo>> = pids.iter().map(|&(_, p)| proc_io(p)).collect();
    let cpu_after: u64 = pids.iter().filter_map(|&(_, p)| common::cpu_ticks(p)).sum();
    stop_traces(c, &traces)?;
    let mut idle_logs = LogKinds::default();
    for &(n, off) in &offsets {
        for line in log_since(&c.log_path(n), off) {
            idle_logs.add(n, &line, 5);
        }
    }
    let intervals = idle_secs * 1000.0 / hb;
    let mut rows = Vec::new();
    for t in &traces {
        let calls = read_calls(&t.base, from, to)?;
        let role = if t.node == master { "master".to_string() } else { "follower".to_string() };
        rows.push(Row { window: "idle", role, node: t.node, secs: idle_secs, io: NodeIo::of(&calls, &layout) });
    }
    let per = |f: fn(&ProcIo) -> u64| -> Vec<f64> {
        io_before
            .iter()
            .zip(&io_after)
            .filter_map(|(b, a)| Some(f(&a.as_ref()?.since(b.as_ref()?)) as f64 / intervals))
            .collect()
    };
    let mean_max = |v: &[f64]| -> (f64, f64) {
        (v.iter().sum::<f64>() / v.len().max(1) as f64, v.iter().copied().fold(0.0, f64::max))
    };
    let syscr = per(|i| i.syscr);
    let (mut traced_r, mut untraced_r) = (Vec::new(), Vec::new());
    for (i, &(n, _)) in pids.iter().enumerate() {
        if let Some(&v) = syscr.get(i) {
            if traced.contains(&n) {
                traced_r.push(v)
            } else {
                untraced_r.push(v)
            }
        }
    }
    let proc_row = ProcRow {
        size,
        nodes: syscr.len(),
        syscr: mean_max(&syscr),
        syscw: mean_max(&per(|i| i.syscw)),
        rchar: mean_max(&per(|i| i.rchar)),
        wchar: mean_max(&per(|i| i.wchar)),
        traced_syscr: mean_max(&traced_r).0,
        untraced_syscr: (!untraced_r.is_empty()).then(|| mean_max(&untraced_r).0),
        cpu_pct: 100.0 * (cpu_after.saturating_sub(cpu_before)) as f64 / common::clock_ticks() / idle_secs,
    };
    println!(
        "  idle window: {idle_secs:.1} s ({intervals:.1} intervals), traced nodes {traced:?}; {} log line(s) from the \
         {size} daemons in it; CPU of all daemons {:.1}% of one core",
        idle_logs.total, proc_row.cpu_pct
    );
    print_log_kinds(&idle_logs);

    // --- join window ---
    let mut members = nodes.clone();
    let joiner = if size < MAX_NODES {
        size + 1
    } else {
        // No node id is left above 256: node 256 leaves, and joins again in the window.
        let t = Instant::now();
        let id = MAX_NODES.to_string();
        let disk = c.disk.clone();
        sdc([
            OsString::from("leave"),
            "--disk".into(),
            disk.into(),
            "--io".into(),
            "direct".into(),
            "--node".into(),
            id.into(),
        ])?;
        let mut d = c.take(MAX_NODES).ok_or_else(|| anyhow!("node {MAX_NODES} has no daemon"))?;
        match d.wait(Instant::now() + Duration::from_secs(30))? {
            Some(s) if s.success() => {}
            Some(s) => bail!("node {MAX_NODES} exited with {} after sdc leave", procs::exit_text(s)),
            None => bail!("node {MAX_NODES} did not exit within 30 s of sdc leave"),
        }
        members.retain(|&n| n != MAX_NODES);
        c.wait_for("node 256 to be inactive", JOIN_TIMEOUT, POLL, false, |st| steady(st, table, &members))?;
        println!("  node {MAX_NODES} left (sdc leave) in {:.0} ms, to join again in the join window", ms(t.elapsed()));
        sleep_checking(c, SETTLE)?;
        MAX_NODES
    };
    let st = c.state()?;
    let master = st.master.0;
    let follower = members.iter().copied().find(|&n| n != master).ok_or_else(|| anyhow!("no follower"))?;
    let offsets: Vec<(u16, u64)> = members.iter().map(|&n| (n, log_len(&c.log_path(n)))).collect();
    let mut traces = vec![start_trace(c, master, "join")?, start_trace(c, follower, "join")?];
    wait_attached(c, &traces)?;
    c.spawn_stopped(joiner)?;
    traces.push(start_trace(c, joiner, "join")?);
    wait_attached(c, &traces)?;
    std::thread::sleep(Duration::from_millis(100));
    let (from, w0) = (unix_now(), Instant::now());
    c.resume(joiner)?;
    let mut all = members.clone();
    all.push(joiner);
    let joined = c.wait_for(&format!("node {joiner} to join"), JOIN_TIMEOUT, POLL, false, |st| {
        st.member(NodeId(joiner)).state == MemberState::Joined && st.transitions.is_empty()
    });
    let (to, join_secs) = (unix_now(), w0.elapsed().as_secs_f64());
    stop_traces(c, &traces)?;
    joined?;
    let join_ms = join_secs * 1000.0;
    let mut join_logs = LogKinds::default();
    for &(n, off) in &offsets {
        for line in log_since(&c.log_path(n), off) {
            join_logs.add(n, &line, 0);
        }
    }
    for t in &traces {
        let calls = read_calls(&t.base, from, to)?;
        let role = if t.node == joiner {
            "joining".to_string()
        } else if t.node == master {
            "master".to_string()
        } else {
            "follower".to_string()
        };
        rows.push(Row { window: "join", role, node: t.node, secs: join_secs, io: NodeIo::of(&calls, &layout) });
    }
    println!(
        "  join window: node {joiner} joined {join_ms:.0} ms after it was let go ({:.1} intervals); the other daemons \
         logged {} line(s) meanwhile",
        join_ms / hb,
        join_logs.total
    );
    print_log_kinds(&join_logs);
    let r = SizeResult { size, timing, table, formed_ms, join_ms, rows, proc_row, idle_logs, join_logs, slot_bytes };
    if c.reap_exits()? > 0 || !c.unexpected_exits.is_empty() {
        bail!("daemon(s) exited: {:?}", c.unexpected_exits);
    }
    Ok(r)
}

fn sleep_checking(c: &mut Cluster, d: Duration) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        c.check_exits()?;
        std::thread::sleep(Duration::from_millis(50).min(d.saturating_sub(t0.elapsed())));
    }
    Ok(())
}

fn print_log_kinds(k: &LogKinds) {
    if k.total == 0 {
        return;
    }
    let kinds: Vec<String> = k.kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    println!("    log lines by kind: {}", kinds.join(", "));
    for (node, line) in &k.first {
        println!("    node {node}: {}", common::shorten(line, 240));
    }
}

fn print_results(results: &[SizeResult]) {
    if results.is_empty() {
        return;
    }
    println!(
        "Per node per heartbeat interval, from strace ({MARGIN_NOTE}); bytes are the calls' return values; reads and \
         writes: the calls in the whole window:"
    );
    let header = format!(
        "{:>4} {:>14} {:>6} {:>9} {:>4} {:>6} {:>9} {:>10} {:>11} {:>13} {:>6} {:>6} {:>6}",
        "N",
        "timing",
        "window",
        "role",
        "node",
        "secs",
        "reads/int",
        "writes/int",
        "B read/int",
        "B written/int",
        "reads",
        "writes",
        "errors"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in results {
        let t = format!("{}/{}/{}", r.timing.heartbeat_ms, r.timing.dead_ms, r.timing.fence_ms);
        for row in &r.rows {
            let ints = row.secs * 1000.0 / r.timing.heartbeat_ms as f64;
            println!(
                "{:>4} {:>14} {:>6} {:>9} {:>4} {:>6.2} {:>9.2} {:>10.2} {:>11.0} {:>13.0} {:>6} {:>6} {:>6}",
                r.size,
                t,
                row.window,
                row.role,
                row.node,
                row.secs,
                row.io.reads as f64 / ints,
                row.io.writes as f64 / ints,
                row.io.read_bytes as f64 / ints,
                row.io.written_bytes as f64 / ints,
                row.io.reads,
                row.io.writes,
                row.io.errors
            );
        }
    }
    println!();
    println!("The read each node makes every interval (the heartbeat region from slot 0, the config stamp, up to the");
    println!("highest node id H in the node table), as strace saw it in the idle window:");
    let header = format!(
        "{:>4} {:>14} {:>5} {:>4} {:>9} {:>4} {:>24} {:>22} {:>26}",
        "N",
        "timing",
        "table",
        "H",
        "role",
        "node",
        "read size (calls)",
        "(1 + H) x slot bytes",
        "(1 + max-nodes) x slot"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in results {
        let t = format!("{}/{}/{}", r.timing.heartbeat_ms, r.timing.dead_ms, r.timing.fence_ms);
        for row in r.rows.iter().filter(|row| row.window == "idle") {
            let sizes: Vec<String> = row.io.beacon_read_sizes.iter().map(|(s, n)| format!("{s} ({n})")).collect();
            let h = r.table as u64;
            println!(
                "{:>4} {:>14} {:>5} {:>4} {:>9} {:>4} {:>24} {:>22} {:>26}",
                r.size,
                t,
                format!("1..{}", r.table),
                h,
                row.role,
                row.node,
                sizes.join(" "),
                format!("{} = {} x {}", (1 + h) * r.slot_bytes as u64, 1 + h, r.slot_bytes),
                format!("{} = {} x {}", (1 + MAX_NODES as u64) * r.slot_bytes as u64, 1 + MAX_NODES, r.slot_bytes)
            );
        }
    }
    println!();
    println!("What each traced node read and wrote, by region of the disk (whole window):");
    for r in results {
        for row in &r.rows {
            println!(
                "  N = {:>3} {:>4} {:>9} node {:>3}: reads: {}; writes: {}{}",
                r.size,
                row.window,
                row.role,
                row.node,
                row.io.regions_text(false),
                row.io.regions_text(true),
                if row.io.fds.len() > 1 { format!(" (file descriptors {:?})", row.io.fds) } else { String::new() }
            );
        }
    }
    println!();
    println!("Every daemon in the idle window, from /proc/PID/io (no tracer needed: an idle daemon logs nothing, so");
    println!("these are its disk I/O calls), per node per interval, mean and max over the nodes:");
    let header = format!(
        "{:>4} {:>14} {:>5} {:>15} {:>15} {:>19} {:>17} {:>22} {:>14}",
        "N",
        "timing",
        "nodes",
        "syscr mean/max",
        "syscw mean/max",
        "rchar mean/max",
        "wchar mean/max",
        "syscr traced/untraced",
        "CPU all (%1c)"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for r in results {
        let p = &r.proc_row;
        let t = format!("{}/{}/{}", r.timing.heartbeat_ms, r.timing.dead_ms, r.timing.fence_ms);
        println!(
            "{:>4} {:>14} {:>5} {:>15} {:>15} {:>19} {:>17} {:>22} {:>14.1}",
            p.size,
            t,
            p.nodes,
            format!("{:.2}/{:.2}", p.syscr.0, p.syscr.1),
            format!("{:.2}/{:.2}", p.syscw.0, p.syscw.1),
            format!("{:.0}/{:.0}", p.rchar.0, p.rchar.1),
            format!("{:.0}/{:.0}", p.wchar.0, p.wchar.1),
            format!("{:.2}/{}", p.traced_syscr, p.untraced_syscr.map_or("-".into(), |u| format!("{u:.2}"))),
            p.cpu_pct
        );
    }
    let traced_vs_untraced: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let u = r.proc_row.untraced_syscr?;
            Some(format!("N = {}: {:.3} vs {:.3}", r.size, r.proc_row.traced_syscr, u))
        })
        .collect();
    if !traced_vs_untraced.is_empty() {
        println!(
            "strace's effect on the counts: read calls per interval of the traced vs the untraced daemons (/proc): {}",
            traced_vs_untraced.join("; ")
        );
    }
    println!();
    println!("Formation and join times:");
    for r in results {
        println!(
            "  N = {:>3} ({}): formed in {:.0} ms; node {} joined in {:.0} ms; log lines in the idle window: {}, of \
             trouble (deaths, fences, elections, errors) in either window: {}",
            r.size,
            timing_text(&r.timing),
            r.formed_ms,
            if r.size < MAX_NODES { r.size + 1 } else { MAX_NODES },
            r.join_ms,
            r.idle_logs.total,
            r.trouble()
        );
    }
    println!("load at the end: {}", load_average());
}
