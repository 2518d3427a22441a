//! What the benchmarks share: summary statistics of a set of samples; and, for the benchmarks
//! that run whole clusters (io, latency, scale), their options, the machine they run on, a
//! cluster of `sdc join` daemons on one disk (a file, or a loop device) with the bench's own
//! read-only view of that disk, and what a daemon's `/proc` entry and log say.
//!
//! Every cluster is in a temporary directory of its own; dropping a [`Cluster`] SIGKILLs and
//! reaps every process it started (tracers first, then daemons, then commands), closes the disk,
//! detaches its loop device and removes the directory. Every wait takes a deadline and looks
//! at [`procs::interrupted`], so a Ctrl-C ends the current step with an error and the guards run.

// Each bench uses a part of this module.
#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use membership_db::db::MembershipDb;
use membership_db::format::{ClusterState, HeartbeatState, MemberState, NodeId, Timing};
use membership_db::io::{open_disk, IoMode};
use sdc_procs::procs::{self, exit_text, Daemon, LogLine, Sdc};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Summary of samples (milliseconds). Each benchmark shows the fields its table needs.
pub struct Stats {
    pub n: usize,
    pub median: f64,
    /// Nearest rank: with fewer than 100 samples this is the maximum.
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary of `xs`, or `None` when there are no samples.
pub fn stats(xs: &[f64]) -> Option<Stats> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Some(Stats { n, median, p99: v[rank - 1], min: v[0], max: v[n - 1] })
}

// ---------------------------------------------------------------------------------------------
// Running `sdc`

/// Cargo sets this for the benchmarks of the package that owns the binary (and builds the
/// binary, in the bench's profile, before running them).
pub const SDC: &str = env!("CARGO_BIN_EXE_sdc");
/// How long one `sdc` command (format, node add, leave, status) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Makes SIGINT and SIGTERM of the bench end the current step with an error (the guards then
/// clean up); a bench that cannot set that up says why and exits 1.
pub fn catch_interrupts() {
    if let Err(e) = procs::catch_interrupts() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

pub fn check_interrupted() -> Result<()> {
    match procs::interrupted() {
        Some(sig) => bail!("interrupted by signal {sig}"),
        None => Ok(()),
    }
}

/// Runs `sdc ARGS` to completion (killed after [`COMMAND_TIMEOUT`]); its stdout, or an error
/// naming the command, its exit and its stderr.
pub fn sdc<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = || args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
    let out = Sdc::new(SDC)
        .run(&args, Instant::now() + COMMAND_TIMEOUT)
        .with_context(|| format!("sdc {} did not complete", shown()))?;
    if !out.status.success() {
        bail!("sdc {} failed ({}): {}", shown(), exit_text(out.status), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The master as `sdc status --json` shows it (`None` while none is visible).
pub fn status_master(disk: &Path, io: &str) -> Result<Option<u16>> {
    let out = sdc([
        OsStr::new("status"),
        "--disk".as_ref(),
        disk.as_os_str(),
        "--io".as_ref(),
        io.as_ref(),
        "--json".as_ref(),
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("status JSON: {out}"))?;
    Ok(v["master"].as_u64().map(|m| m as u16))
}

// ---------------------------------------------------------------------------------------------
// Options

/// `--name value` (or `--name=value`) options with defaults; `cargo bench` adds `--bench`,
/// which is ignored. `--help` prints them and exits 0; an unknown option exits 2.
pub struct Opts {
    values: Vec<(&'static str, String)>,
}

impl Opts {
    /// `spec`: (name without dashes, default, help).
    pub fn parse(bench: &str, about: &str, spec: &[(&'static str, &str, &str)]) -> Opts {
        let usage = || {
            let mut s = format!("{about}\n\nUsage: cargo bench -p sdc --bench {bench} [-- OPTIONS]\n\nOptions:\n");
            for (name, default, help) in spec {
                s.push_str(&format!("  --{name} <{}>  {help} [default: {default}]\n", name.to_uppercase()));
            }
            s
        };
        let mut values: Vec<(&'static str, String)> = spec.iter().map(|(n, d, _)| (*n, d.to_string())).collect();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                print!("{}", usage());
                std::process::exit(0);
            }
            let Some(opt) = arg.strip_prefix("--") else {
                eprintln!("unexpected argument {arg:?}\n\n{}", usage());
                std::process::exit(2);
            };
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (opt.to_string(), None),
            };
            let Some(slot) = values.iter_mut().find(|(n, _)| *n == name) else {
                eprintln!("unknown option --{name}\n\n{}", usage());
                std::process::exit(2);
            };
            match value.or_else(|| args.next()) {
                Some(v) => slot.1 = v,
                None => {
                    eprintln!("--{name} needs a value\n\n{}", usage());
                    std::process::exit(2);
                }
            }
        }
        Opts { values }
    }

    pub fn str(&self, name: &str) -> &str {
        &self.values.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no option {name}")).1
    }

    fn bad(&self, name: &str, what: &str) -> ! {
        eprintln!("--{name} {:?}: {what}", self.str(name));
        std::process::exit(2);
    }

    pub fn u64(&self, name: &str) -> u64 {
        self.str(name).parse().unwrap_or_else(|_| self.bad(name, "expected a whole number"))
    }

    pub fn f64(&self, name: &str) -> f64 {
        self.str(name).parse().unwrap_or_else(|_| self.bad(name, "expected a number"))
    }

    pub fn list_u16(&self, name: &str) -> Vec<u16> {
        let v: Option<Vec<u16>> = self.str(name).split(',').map(|x| x.trim().parse().ok()).collect();
        v.filter(|v| !v.is_empty()).unwrap_or_else(|| self.bad(name, "expected numbers separated by commas"))
    }

    /// `HEARTBEAT/DEAD/FENCE` in milliseconds, checked as `sdc format` checks it.
    pub fn timing(&self, name: &str) -> Timing {
        let v: Option<Vec<u32>> = self.str(name).split('/').map(|x| x.trim().parse().ok()).collect();
        let t = match v.as_deref() {
            Some(&[heartbeat_ms, dead_ms, fence_ms]) => Timing { heartbeat_ms, dead_ms, fence_ms },
            _ => self.bad(name, "expected HEARTBEAT_MS/DEAD_MS/FENCE_MS, like 100/1000/600"),
        };
        if let Err(e) = t.validate() {
            self.bad(name, &e);
        }
        t
    }

    /// An optional path: empty means none.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        Some(self.str(name)).filter(|s| !s.is_empty()).map(PathBuf::from)
    }
}

pub fn timing_text(t: &Timing) -> String {
    format!("heartbeat {} ms, dead {} ms, fence {} ms", t.heartbeat_ms, t.dead_ms, t.fence_ms)
}

// ---------------------------------------------------------------------------------------------
// The machine

/// `2 cores (AMD EPYC), load average 0.1 0.2 0.3`
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({model}), {}", load_average())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or("load average unknown".into(), |l| {
        format!("load average {}", l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
    })
}

/// The kernel, in one line.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or("unknown".into(), |s| s.trim().to_string())
}

/// `None` when this process runs as root, else why loop devices cannot be used.
pub fn need_root_and(tool: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    match Command::new(tool).arg("--version").output() {
        Ok(_) => None,
        Err(e) => Some(format!("cannot run {tool}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// What /proc says about a process

/// Clock ticks per second of `/proc/PID/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `/proc/PID/io`: read and write system calls and the bytes they moved.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcIo {
    pub syscr: u64,
    pub syscw: u64,
    pub rchar: u64,
    pub wchar: u64,
}

pub fn proc_io(pid: u32) -> Option<ProcIo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
    };
    Some(ProcIo { syscr: field("syscr")?, syscw: field("syscw")?, rchar: field("rchar")?, wchar: field("wchar")? })
}

impl ProcIo {
    pub fn since(&self, before: &ProcIo) -> ProcIo {
        ProcIo {
            syscr: self.syscr.saturating_sub(before.syscr),
            syscw: self.syscw.saturating_sub(before.syscw),
            rchar: self.rchar.saturating_sub(before.rchar),
            wchar: self.wchar.saturating_sub(before.wchar),
        }
    }
}

/// (VmRSS, VmHWM) of a process in KiB: its resident memory now and at its peak.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The proportional set size of a process in KiB (its private memory plus its share of shared
/// pages), from `/proc/PID/smaps_rollup`: these add up to the memory the processes use.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Pss:")?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The process's state letter (`R`, `S`, `T` for stopped, `Z`...).
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

// ---------------------------------------------------------------------------------------------
// Loop devices

/// A loop device attached to a file, detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// `losetup -f --show FILE`.
    pub fn attach(file: &Path) -> Result<LoopDevice> {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file).output().context("cannot run losetup")?;
        if !out.status.success() {
            bail!("losetup -f --show {} failed: {}", file.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !path.starts_with("/dev/") {
            bail!("losetup printed {path:?}");
        }
        // Detached on drop from here on, whatever happens next.
        let dev = LoopDevice { path };
        if !dev.path.exists() {
            bail!("losetup attached {} but the device node does not exist", dev.path.display());
        }
        Ok(dev)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("-d").arg(&self.path).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "warning: losetup -d {} failed: {}",
                    self.path.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => eprintln!("warning: cannot run losetup -d {}: {e}", self.path.display()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A cluster

/// Where the cluster's disk is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DiskKind {
    /// A sparse file, with mmap I/O.
    MmapFile,
    /// A loop device over a file, with direct I/O (root and losetup needed).
    DirectLoop,
}

pub struct ClusterSpec {
    /// Prefix of the temporary directory's name.
    pub prefix: &'static str,
    pub disk: DiskKind,
    /// Where to make the temporary directory (the system's temporary directory if `None`).
    pub parent: Option<PathBuf>,
    /// The disk file's size in bytes.
    pub bytes: u64,
    pub max_nodes: u16,
    /// Nodes 1..=table are added to the node table.
    pub table: u16,
    pub timing: Timing,
    /// `--layer` arguments of every daemon.
    pub layers: Vec<String>,
}

/// One cluster: its temporary directory, its disk, its processes and the bench's read-only view
/// of the disk. Fields drop in declaration order: the processes first, then the disk is closed
/// and its loop device detached, then the directory removed.
pub struct Cluster {
    /// Processes watching the daemons (strace): killed first.
    tracers: Vec<Daemon>,
    /// Node `n`'s daemon at index `n - 1`, while the bench runs one.
    daemons: Vec<Option<Daemon>>,
    /// Commands in flight (`sdc leave`).
    commands: Vec<Daemon>,
    db: Option<MembershipDb>,
    loop_dev: Option<LoopDevice>,
    pub disk: PathBuf,
    pub spec: ClusterSpec,
    /// The exits of daemons the bench did not stop: (node, how it ended, its last log line).
    pub unexpected_exits: Vec<(u16, String, String)>,
    last_exit_check: Instant,
    // Declared last: removed after everything else has gone.
    dir: tempfile::TempDir,
}

/// How often waits look for daemons that exited.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(100);

impl Cluster {
    /// Makes the directory and the disk, formats it and fills the node table.
    pub fn create(spec: ClusterSpec) -> Result<Cluster> {
        let parent = spec.parent.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(spec.prefix)
            .tempdir_in(&parent)
            .with_context(|| format!("cannot create a temporary directory in {}", parent.display()))?;
        let file = dir.path().join("disk.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(spec.bytes))
            .with_context(|| format!("cannot create {}", file.display()))?;
        let mut c = Cluster {
            tracers: Vec::new(),
            daemons: (0..spec.max_nodes).map(|_| None).collect(),
            commands: Vec::new(),
            db: None,
            loop_dev: None,
            disk: file.clone(),
            spec,
            unexpected_exits: Vec::new(),
            last_exit_check: Instant::now(),
            dir,
        };
        if c.spec.disk == DiskKind::DirectLoop {
            let dev = LoopDevice::attach(&file)?;
            c.disk = dev.path.clone();
            c.loop_dev = Some(dev);
        }
        let t = c.spec.timing;
        let (hb, dead, fence, max) =
            (t.heartbeat_ms.to_string(), t.dead_ms.to_string(), t.fence_ms.to_string(), c.spec.max_nodes.to_string());
        let d = c.disk.clone();
        #[rustfmt::skip]
        sdc([
            OsStr::new("format"), "--disk".as_ref(), d.as_os_str(), "--io".as_ref(), c.io().as_ref(),
            "--cluster".as_ref(), "bench".as_ref(), "--max-nodes".as_ref(), max.as_ref(),
            "--heartbeat-ms".as_ref(), hb.as_ref(), "--dead-ms".as_ref(), dead.as_ref(),
            "--fence-ms".as_ref(), fence.as_ref(),
        ])?;
        for node in 1..=c.spec.table {
            check_interrupted()?;
            let (id, name) = (node.to_string(), format!("n{node}"));
            let address = format!("127.0.0.1:{}", free_port()?);
            #[rustfmt::skip]
            sdc([
                OsStr::new("node"), "add".as_ref(), "--disk".as_ref(), d.as_os_str(), "--io".as_ref(),
                c.io().as_ref(), "--node".as_ref(), id.as_ref(), "--name".as_ref(), name.as_ref(),
                "--address".as_ref(), address.as_ref(),
            ])?;
        }
        let mode = if c.spec.disk == DiskKind::DirectLoop { IoMode::Direct } else { IoMode::Mmap };
        c.db = Some(MembershipDb::open(open_disk(&c.disk, mode, false)?)?);
        Ok(c)
    }

    /// The `--io` argument of every command.
    pub fn io(&self) -> &'static str {
        match self.spec.disk {
            DiskKind::MmapFile => "mmap",
            DiskKind::DirectLoop => "direct",
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> &MembershipDb {
        self.db.as_ref().expect("opened in create")
    }

    pub fn log_path(&self, node: u16) -> PathBuf {
        self.dir.path().join(format!("node-{node}.log"))
    }

    /// `join --disk D --io IO --node N --layer ...`
    pub fn join_args(&self, node: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["join", "--disk"].iter().map(OsString::from).collect();
        args.push(self.disk.clone().into());
        for a in ["--io", self.io(), "--node", &node.to_string()] {
            args.push(a.into());
        }
        for l in &self.spec.layers {
            args.push("--layer".into());
            args.push(l.into());
        }
        args
    }

    /// `sdc join --node NODE` in the background, its output appended to the node's log.
    pub fn spawn(&mut self, node: u16) -> Result<()> {
        if self.daemons[node as usize - 1].is_some() {
            bail!("node {node} already has a daemon");
        }
        let d = Sdc::new(SDC)
            .spawn(self.join_args(node), &self.log_path(node))
            .with_context(|| format!("cannot start sdc join --node {node}"))?;
        self.daemons[node as usize - 1] = Some(d);
        Ok(())
    }

    /// As [`Cluster::spawn`], but the process stops itself (SIGSTOP) before it executes `sdc`,
    /// so that a tracer can attach to it first; [`Cluster::resume`] lets it go on. Its pid is
    /// the daemon's from the start.
    pub fn spawn_stopped(&mut self, node: u16) -> Result<u32> {
        if self.daemons[node as usize - 1].is_some() {
            bail!("node {node} already has a daemon");
        }
        let mut args: Vec<OsString> = vec!["-c".into(), "kill -STOP $$; exec \"$0\" \"$@\"".into(), SDC.into()];
        args.extend(self.join_args(node));
        let d = Sdc::new("/bin/sh")
            .spawn(args, &self.log_path(node))
            .with_context(|| format!("cannot start sdc join --node {node}"))?;
        let pid = d.pid();
        self.daemons[node as usize - 1] = Some(d);
        let t0 = Instant::now();
        while proc_state(pid) != Some('T') {
            check_interrupted()?;
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("node {node}'s process did not stop itself within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(pid)
    }

    pub fn resume(&self, node: u16) -> Result<()> {
        let d = self.daemon(node).ok_or_else(|| anyhow!("node {node} has no daemon"))?;
        d.signal(libc::SIGCONT).with_context(|| format!("cannot SIGCONT node {node}"))
    }

    pub fn daemon(&self, node: u16) -> Option<&Daemon> {
        self.daemons.get(node as usize - 1)?.as_ref()
    }

    pub fn pid(&self, node: u16) -> Option<u32> {
        self.daemon(node).map(Daemon::pid)
    }

    /// The nodes the bench runs a daemon for.
    pub fn running(&self) -> Vec<u16> {
        (1..=self.spec.max_nodes).filter(|&n| self.daemons[n as usize - 1].is_some()).collect()
    }

    /// Hands node `node`'s daemon over to the caller (which then waits for it or kills it).
    pub fn take(&mut self, node: u16) -> Option<Daemon> {
        self.daemons.get_mut(node as usize - 1)?.take()
    }

    /// SIGKILL node `node`'s daemon and reap it.
    pub fn kill(&mut self, node: u16) -> Result<ExitStatus> {
        let mut d = self.take(node).ok_or_else(|| anyhow!("node {node} has no daemon"))?;
        d.kill().with_context(|| format!("cannot SIGKILL node {node}"))
    }

    /// Keeps a process (a tracer) to be killed when the cluster drops, before the daemons.
    pub fn add_tracer(&mut self, d: Daemon) -> usize {
        self.tracers.push(d);
        self.tracers.len() - 1
    }

    pub fn tracer_mut(&mut self, i: usize) -> &mut Daemon {
        &mut self.tracers[i]
    }

    /// Keeps a command in flight, killed when the cluster drops if it is still running.
    pub fn add_command(&mut self, d: Daemon) -> usize {
        self.commands.push(d);
        self.commands.len() - 1
    }

    pub fn command_mut(&mut self, i: usize) -> &mut Daemon {
        &mut self.commands[i]
    }

    /// Notes (in [`Cluster::unexpected_exits`]) every daemon that has exited on its own since
    /// the last look, and forgets it; returns how many there were.
    pub fn reap_exits(&mut self) -> Result<usize> {
        let mut n = 0;
        for i in 0..self.daemons.len() {
            let Some(d) = self.daemons[i].as_mut() else { continue };
            if let Some(status) = d.try_wait()? {
                let node = i as u16 + 1;
                let last = exit_reason(&self.log_path(node));
                self.unexpected_exits.push((node, exit_text(status), last));
                self.daemons[i] = None;
                n += 1;
            }
        }
        self.last_exit_check = Instant::now();
        Ok(n)
    }

    /// Fails when a daemon has exited that the bench did not stop (looked at every 100 ms).
    pub fn check_exits(&mut self) -> Result<()> {
        check_interrupted()?;
        if self.last_exit_check.elapsed() < EXIT_CHECK_EVERY {
            return Ok(());
        }
        let before = self.unexpected_exits.len();
        if self.reap_exits()? > 0 {
            let gone: Vec<String> = self.unexpected_exits[before..]
                .iter()
                .map(|(n, how, last)| format!("node {n} ({how}: {last})"))
                .collect();
            bail!("daemon(s) exited: {}", gone.join("; "));
        }
        Ok(())
    }

    /// The newest cluster state on the disk.
    pub fn state(&self) -> Result<ClusterState> {
        self.db().read_cluster_state()?.ok_or_else(|| anyhow!("no cluster state on the disk yet"))
    }

    /// The node whose heartbeat is `up` acting master in the highest epoch: (node, epoch).
    pub fn master_on_disk(&self) -> Result<Option<(u16, u64)>> {
        master_of(self.db())
    }

    /// A read-only view of the disk of its own (for a thread of the bench).
    pub fn open_view(&self) -> Result<MembershipDb> {
        let mode = if self.spec.disk == DiskKind::DirectLoop { IoMode::Direct } else { IoMode::Mmap };
        Ok(MembershipDb::open(open_disk(&self.disk, mode, false)?)?)
    }

    /// Polls the cluster state every `poll` until `done` holds; the time it took and that
    /// state. Fails at `timeout`, or when a daemon exits that the bench did not stop (unless
    /// `tolerate_exits`), or on an interrupt.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        tolerate_exits: bool,
        mut done: impl FnMut(&ClusterState) -> bool,
    ) -> Result<(Duration, ClusterState)> {
        let t0 = Instant::now();
        loop {
            if tolerate_exits {
                check_interrupted()?;
                if self.last_exit_check.elapsed() >= EXIT_CHECK_EVERY {
                    self.reap_exits()?;
                }
            } else {
                self.check_exits().with_context(|| format!("while waiting for {what}"))?;
            }
            let st = self.state().ok();
            if let Some(st) = &st {
                if done(st) {
                    return Ok((t0.elapsed(), st.clone()));
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{what}: not within {timeout:?}: {}",
                    st.as_ref().map_or("no cluster state".into(), |st| self.describe(st))
                );
            }
            std::thread::sleep(poll);
        }
    }

    /// `epoch 2 master 1; joined 14; not joined: [3:joining 15:inactive]; 1 transition(s) in flight`
    pub fn describe(&self, st: &ClusterState) -> String {
        let mut joined = 0;
        let mut others = Vec::new();
        for n in 1..=self.spec.table {
            let m = st.member(NodeId(n));
            if m.state == MemberState::Joined {
                joined += 1;
            } else if m.state != MemberState::Inactive || self.daemon(n).is_some() {
                others.push(format!("{n}:{}", m.state.name()));
            }
        }
        let shown = others.len().min(12);
        format!(
            "epoch {} master {}; {joined} joined; others: [{}{}]; {} transition(s) in flight",
            st.epoch,
            st.master,
            others[..shown].join(" "),
            if others.len() > shown { format!(" and {} more", others.len() - shown) } else { String::new() },
            st.transitions.len()
        )
    }

    /// The last `n` lines of the logs of `nodes`, for error reports.
    pub fn log_tails(&self, nodes: &[u16], n: usize) -> String {
        let mut s = String::new();
        for &node in nodes {
            s.push_str(&format!("  --- node {node} log (last lines) ---\n"));
            for l in procs::tail(&self.log_path(node), n) {
                s.push_str(&format!("  {}\n", shorten(&l, 300)));
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Tracers first, so that none holds a daemon stopped; then the daemons, then commands.
        for t in &mut self.tracers {
            let _ = t.kill();
        }
        for d in self.daemons.iter_mut().flatten() {
            let _ = d.signal(libc::SIGKILL);
        }
        for d in self.daemons.iter_mut().flatten() {
            let _ = d.kill();
        }
        for c in &mut self.commands {
            let _ = c.kill();
        }
        // The rest (the disk, the loop device, the directory) drops in field order.
    }
}

/// The node whose heartbeat is `up` acting master in the highest epoch: (node, epoch).
pub fn master_of(db: &MembershipDb) -> Result<Option<(u16, u64)>> {
    Ok(db
        .read_heartbeats()?
        .into_iter()
        .flatten()
        .filter(|hb| hb.state == HeartbeatState::Up && hb.master_epoch > 0)
        .max_by_key(|hb| hb.master_epoch)
        .map(|hb| (hb.node.0, hb.master_epoch)))
}

/// Why a daemon ended, from the end of its log: its fence or forced-out text if there is one,
/// else its last line. (A fence noticed by the watchdog thread is written with one raw write(2),
/// which can land in the middle of a line another thread is writing: so the text is looked for
/// anywhere in a line, not only after a time stamp.)
pub fn exit_reason(log: &Path) -> String {
    for line in procs::tail(log, 40).iter().rev() {
        for marker in ["FENCED: ", "FORCED OUT"] {
            if let Some(i) = line.find(marker) {
                return line[i..].to_string();
            }
        }
    }
    procs::last_line(log)
}

/// Every node in `joined` is joined, every other node of the table inactive, and no
/// transition is in flight.
pub fn steady(st: &ClusterState, table: u16, joined: &[u16]) -> bool {
    st.transitions.is_empty()
        && (1..=table).all(|n| {
            let want = if joined.contains(&n) { MemberState::Joined } else { MemberState::Inactive };
            st.member(NodeId(n)).state == want
        })
}

/// At most `max` characters of `s`, with `...` when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}...")
}

// ---------------------------------------------------------------------------------------------
// Logs

/// Where a log file ends now: what it says from here on is read with [`log_since`].
pub fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What a log says after byte `from`, line by line (lines without a time stamp included).
pub fn log_since(path: &Path, from: u64) -> Vec<String> {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(std::io::SeekFrom::Start(from)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text.lines().map(str::to_string).collect()
}

/// Every kind [`classify`] gives, in the order reports list them.
pub const KINDS: [&str; 22] = [
    "node judged dead",
    "node seen stopped",
    "node seen live (again)",
    "FENCED",
    "FORCED OUT",
    "claiming master",
    "claim aborted",
    "became master",
    "new master seen",
    "master took over the cluster state",
    "corrupt record",
    "I/O error",
    "transition step (master)",
    "layer notification",
    "own membership change",
    "slot takeover",
    "leave or stop",
    "node table change",
    "warning or repair",
    "daemon start",
    "line without a time stamp",
    "other",
];

/// The kind of event a daemon's log line reports, for counting.
pub fn classify(line: &str) -> &'static str {
    let text = LogLine::parse(line).map_or_else(|| line.to_string(), |l| l.text);
    let t = text.as_str();
    if t.contains("FENCED") {
        "FENCED"
    } else if t.contains("FORCED OUT") {
        "FORCED OUT"
    } else if t.contains(" is dead: ") {
        "node judged dead"
    } else if t.starts_with("node ") && t.ends_with(" stopped") {
        "node seen stopped"
    } else if (t.starts_with("node ") && t.contains(" is live (incarnation")) || t.contains(" nodes are live: ") {
        "node seen live (again)"
    } else if t.starts_with("claiming master") {
        "claiming master"
    } else if t.starts_with("claim for epoch") {
        "claim aborted"
    } else if t.contains("this node is now master") {
        "became master"
    } else if t.starts_with("master of epoch ") {
        "new master seen"
    } else if t.starts_with("master: epoch ") {
        "master took over the cluster state"
    } else if t.contains("corrupt ") {
        "corrupt record"
    } else if t.contains("I/O error") || t.contains("not taking notifications") {
        "I/O error"
    } else if t.starts_with("master: ") {
        "transition step (master)"
    } else if t.starts_with("layer ") {
        "layer notification"
    } else if ["waiting to join", "joining", "joined the cluster", "leaving", "left the cluster"].contains(&t)
        || t.starts_with("join refused")
    {
        "own membership change"
    } else if t.contains("taking over its slot") || t.starts_with("this node's slot shows a running daemon") {
        "slot takeover"
    } else if t.starts_with("leave requested") || t.contains("WITHOUT") || t.starts_with("stopped") {
        "leave or stop"
    } else if t.starts_with("the node table changed") || t.starts_with("the config stamp") {
        "node table change"
    } else if t.starts_with("warning") || t.contains("was damaged") || t.contains("damaged;") {
        "warning or repair"
    } else if t.starts_with("starting on") || t.starts_with("running as incarnation") {
        "daemon start"
    } else if LogLine::parse(line).is_none() {
        "line without a time stamp"
    } else {
        "other"
    }
}

/// Log lines counted by kind, with the first few lines of all.
#[derive(Default)]
pub struct LogKinds {
    pub kinds: Vec<(&'static str, usize)>,
    /// (node, line) of the first lines counted.
    pub first: Vec<(u16, String)>,
    pub total: usize,
}

impl LogKinds {
    pub fn add(&mut self, node: u16, line: &str, keep_first: usize) {
        let kind = classify(line);
        match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.kinds.push((kind, 1)),
        }
        self.total += 1;
        if self.first.len() < keep_first {
            self.first.push((node, line.to_string()));
        }
    }

    pub fn count(&self, kind: &str) -> usize {
        self.kinds.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }
}

/// A free loopback port for a node's interconnect address.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
