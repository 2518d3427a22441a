//! Master failover time, measured end to end with real `sdc` processes.
//!
//! Run with `cargo bench -p sdc --bench failover` (about a minute).
//!
//! Each trial formats a fresh sparse file in its own temporary directory, adds three
//! master-eligible nodes, starts three `sdc join` daemons (stderr to a log file each), waits
//! until `sdc status --json` shows a master and all three nodes live, then SIGKILLs the master's
//! daemon and measures, from the kill, when the new master becomes visible:
//!
//! * **disk**: a thread reads the heartbeat region directly through `membership_db` about every
//!   millisecond; the new master is the first other node whose heartbeat says `up` with a
//!   `master_epoch` above the killed master's epoch. This is when a master is acting again.
//! * **status**: the bench runs `sdc status --disk F --json` back to back; the time is when the
//!   first call showing a different master *returned*. Each call samples the heartbeats twice
//!   about 1.5 heartbeat intervals apart and pays a process start, so this column lags the
//!   disk column by roughly that.
//!
//! The floor is `dead_ms`: followers only judge the master dead once its heartbeat has been
//! still for `dead_ms` of their own clocks; what follows is the claim stagger, the Disk Paxos
//! rounds and the new master's first heartbeat. Measured from the kill, a trial can come in up
//! to one heartbeat interval under `dead_ms`: the followers' clock starts at their last read of
//! the master's last write, which may precede the kill by up to one interval.
//!
//! This prints numbers and asserts nothing about speed. It exits non-zero only when a trial could
//! not be run at all (a cluster that never formed or never failed over), or it was interrupted.
//! Every daemon is killed and every temporary file removed by `Drop` guards, on errors and panics
//! too; SIGINT/SIGTERM of the bench end the current trial with an error so that the guards run,
//! and every daemon dies with the bench should it be killed outright (`sdc_procs::procs`).

#[path = "common/mod.rs"]
mod common;
use common::{check_interrupted, ms, sdc, stats};

use anyhow::{anyhow, bail, Context, Result};
use membership_db::db::MembershipDb;
use membership_db::format::{HeartbeatState, NodeId};
use membership_db::io::{open_disk, IoMode};
use sdc_procs::procs::{self, exit_text, tail, Daemon, Sdc};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

/// Cargo sets this for the integration tests and benchmarks of the package that owns the binary
/// (and builds the binary, in the bench's profile, before running them).
const SDC: &str = env!("CARGO_BIN_EXE_sdc");
const NODES: u16 = 3;
const TRIALS: usize = 5;
/// How long a cluster may take to elect its first master with every node live.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
struct Profile {
    name: &'static str,
    heartbeat_ms: u32,
    dead_ms: u32,
    fence_ms: u32,
}

const PROFILES: [Profile; 2] = [
    Profile { name: "default", heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 },
    Profile { name: "fast", heartbeat_ms: 20, dead_ms: 250, fence_ms: 120 },
];

impl Profile {
    /// The rules `sdc format` enforces (membership_db::format::Timing::validate), checked here
    /// too so that a bad profile is reported as such rather than as a failed format.
    fn check(&self) -> Result<()> {
        let t = membership_db::format::Timing {
            heartbeat_ms: self.heartbeat_ms,
            dead_ms: self.dead_ms,
            fence_ms: self.fence_ms,
        };
        t.validate().map_err(|e| anyhow!("profile {}: {e}", self.name))?;
        // The same rules spelled out: fence >= 3 * hb and fence + hb + 100 < dead.
        assert!(self.fence_ms >= 3 * self.heartbeat_ms);
        assert!(self.fence_ms + self.heartbeat_ms + 100 < self.dead_ms);
        Ok(())
    }

    fn failover_timeout(&self) -> Duration {
        Duration::from_millis(5 * self.dead_ms as u64 + 5_000)
    }
}

/// What the bench needs from `sdc status --json`.
struct Status {
    epoch: u64,
    master: Option<u16>,
    live: Vec<u16>,
    /// (node, pid) of every node whose heartbeat names a pid.
    pids: Vec<(u16, u32)>,
}

fn status(disk: &Path) -> Result<Status> {
    let out = sdc([OsStr::new("status"), OsStr::new("--disk"), disk.as_os_str(), OsStr::new("--json")])?;
    let v: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("status JSON: {out}"))?;
    let nodes = v["nodes"].as_array().ok_or_else(|| anyhow!("status JSON without nodes: {out}"))?;
    let node_of = |n: &serde_json::Value| n["node"].as_u64().map(|x| x as u16);
    Ok(Status {
        epoch: v["epoch"].as_u64().ok_or_else(|| anyhow!("status JSON without epoch: {out}"))?,
        master: v["master"].as_u64().map(|m| m as u16),
        live: nodes.iter().filter(|n| n["live"].as_bool() == Some(true)).filter_map(node_of).collect(),
        pids: nodes.iter().filter_map(|n| Some((node_of(n)?, n["pid"].as_u64()? as u32))).collect(),
    })
}

/// One cluster: its temporary directory and its daemons. Dropping it kills every daemon it
/// started (SIGKILL, then reaps it) and only then removes the directory.
struct Cluster {
    daemons: Vec<(u16, Daemon)>,
    disk: PathBuf,
    // Declared last: fields drop after the daemons have been killed.
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(p: &Profile) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("sdc-bench-failover-")
            .tempdir_in(std::env::temp_dir())
            .context("cannot create a temporary directory")?;
        let disk = dir.path().join("disk.img");
        let mut cluster = Cluster { daemons: Vec::new(), disk, dir };
        let d = cluster.disk.as_os_str().to_owned();
        let (hb, dead, fence) = (p.heartbeat_ms.to_string(), p.dead_ms.to_string(), p.fence_ms.to_string());
        sdc([
            OsStr::new("format"),
            OsStr::new("--disk"),
            &d,
            OsStr::new("--size"),
            OsStr::new("64MiB"),
            OsStr::new("--cluster"),
            OsStr::new("bench"),
            OsStr::new("--max-nodes"),
            OsStr::new("8"),
            OsStr::new("--heartbeat-ms"),
            OsStr::new(&hb),
            OsStr::new("--dead-ms"),
            OsStr::new(&dead),
            OsStr::new("--fence-ms"),
            OsStr::new(&fence),
        ])?;
        for node in 1..=NODES {
            let (id, name) = (node.to_string(), format!("n{node}"));
            let address = format!("127.0.0.1:{}", free_port()?);
            sdc([
                OsStr::new("node"),
                OsStr::new("add"),
                OsStr::new("--disk"),
                &d,
                OsStr::new("--node"),
                OsStr::new(&id),
                OsStr::new("--name"),
                OsStr::new(&name),
                OsStr::new("--address"),
                OsStr::new(&address),
            ])?;
        }
        for node in 1..=NODES {
            let id = node.to_string();
            let args = [OsStr::new("join"), OsStr::new("--disk"), &d, OsStr::new("--node"), OsStr::new(&id)];
            let daemon = Sdc::new(SDC)
                .spawn(args, &cluster.log_path(node))
                .with_context(|| format!("cannot start sdc join --node {node}"))?;
            cluster.daemons.push((node, daemon));
        }
        Ok(cluster)
    }

    fn log_path(&self, node: u16) -> PathBuf {
        self.dir.path().join(format!("node-{node}.log"))
    }

    fn daemon(&mut self, node: u16) -> Result<&mut Daemon> {
        self.daemons
            .iter_mut()
            .find(|(n, _)| *n == node)
            .map(|(_, c)| c)
            .ok_or_else(|| anyhow!("no daemon for node {node}"))
    }

    /// Waits until status shows a master and every node live; returns (master, epoch).
    fn wait_ready(&mut self) -> Result<(u16, u64)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            check_interrupted()?;
            for (node, daemon) in &mut self.daemons {
                if let Some(st) = daemon.try_wait()? {
                    bail!("sdc join --node {node} exited early ({})", exit_text(st));
                }
            }
            let s = status(&self.disk)?;
            if let Some(master) = s.master {
                if (1..=NODES).all(|n| s.live.contains(&n)) {
                    // The node id => our child handle, cross-checked with the pid on the disk.
                    let pid = self.daemon(master)?.pid();
                    let on_disk = s.pids.iter().find(|(n, _)| *n == master).map(|(_, p)| *p);
                    if on_disk != Some(pid) {
                        bail!("status gives pid {on_disk:?} for master node {master}, but our daemon is pid {pid}");
                    }
                    return Ok((master, s.epoch));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no master with all {NODES} nodes live after {READY_TIMEOUT:?} (master {:?}, live {:?})",
                    s.master,
                    s.live
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of every daemon's log, for error reports.
    fn log_tails(&self) -> String {
        let mut s = String::new();
        for node in 1..=NODES {
            s.push_str(&format!("  --- node {node} log (last lines) ---\n"));
            for l in tail(&self.log_path(node), 8) {
                s.push_str(&format!("  {l}\n"));
            }
        }
        s
    }
}

/// The first node other than `old` whose heartbeat is `up` with a master epoch above `old_epoch`.
fn new_master_on_disk(db: &MembershipDb, old: u16, old_epoch: u64) -> Result<Option<(u16, u64)>> {
    Ok(db.read_heartbeats()?.into_iter().flatten().find_map(|hb| {
        (hb.node != NodeId(old) && hb.state == HeartbeatState::Up && hb.master_epoch > old_epoch)
            .then_some((hb.node.0, hb.master_epoch))
    }))
}

struct Outcome {
    old_master: u16,
    old_epoch: u64,
    disk_ms: f64,
    disk_master: (u16, u64),
    status_ms: f64,
    status_master: (u16, u64),
    status_calls: u32,
}

fn trial(p: &Profile) -> Result<Outcome> {
    let mut cluster = Cluster::start(p)?;
    run_trial(p, &mut cluster).map_err(|e| anyhow!("{e:#}\n{}", cluster.log_tails()))
}

fn run_trial(p: &Profile, cluster: &mut Cluster) -> Result<Outcome> {
    let (old_master, status_epoch) = cluster.wait_ready()?;
    let db = MembershipDb::open(open_disk(&cluster.disk, IoMode::Auto, false)?)?;
    let old_epoch = match &db.read_heartbeats()?[NodeId(old_master).index()] {
        Ok(hb) => hb.master_epoch,
        Err(corrupt) => bail!("master {old_master}'s heartbeat is unreadable: {corrupt}"),
    };
    if old_epoch != status_epoch {
        bail!("master {old_master}'s heartbeat says epoch {old_epoch}, status says {status_epoch}");
    }
    if new_master_on_disk(&db, old_master, old_epoch)?.is_some() {
        bail!("a second master is already on the disk before the kill");
    }
    let timeout = p.failover_timeout();
    let disk = cluster.disk.clone();
    let master = cluster.daemon(old_master)?;
    let t0: OnceLock<Instant> = OnceLock::new();
    let go = Barrier::new(2);
    let stop = AtomicBool::new(false);

    std::thread::scope(|scope| -> Result<Outcome> {
        // The cheap observer: read the heartbeat region directly, about every millisecond.
        let disk_watch = scope.spawn(|| -> Result<(Duration, (u16, u64))> {
            go.wait();
            let t0 = *t0.get().expect("t0 is set before the barrier");
            loop {
                if let Some(found) = new_master_on_disk(&db, old_master, old_epoch)? {
                    return Ok((t0.elapsed(), found));
                }
                if stop.load(Ordering::Relaxed) {
                    bail!("disk: stopped before a new master appeared");
                }
                if t0.elapsed() > timeout {
                    bail!("disk: no new master within {timeout:?} of the kill");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });

        // Nothing may return between the spawn and the barrier, or the watcher would wait forever.
        let start = *t0.get_or_init(Instant::now);
        let killed = master.signal(libc::SIGKILL);
        go.wait();
        let reaped = killed.and_then(|()| master.wait(start + timeout)).and_then(|status| {
            status.ok_or_else(|| std::io::Error::other(format!("the killed master was not reaped within {timeout:?}")))
        });

        // The operator's view: `sdc status` back to back.
        let mut calls = 0u32;
        let status_result = reaped.map_err(anyhow::Error::from).and_then(|_| loop {
            check_interrupted()?;
            calls += 1;
            let s = status(&disk)?;
            let returned = start.elapsed();
            match s.master {
                Some(m) if m != old_master => return Ok((returned, (m, s.epoch))),
                _ if returned > timeout => bail!("status: no new master within {timeout:?} of the kill"),
                _ => {}
            }
        });
        if status_result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let disk_result = disk_watch.join().expect("the disk watcher panicked");
        let (status_d, status_master) = status_result?;
        let (disk_d, disk_master) = disk_result?;
        Ok(Outcome {
            old_master,
            old_epoch,
            disk_ms: ms(disk_d),
            disk_master,
            status_ms: ms(status_d),
            status_master,
            status_calls: calls,
        })
    })
}

/// A table row: its label and the value it shows of each trial.
type Column = (&'static str, fn(&Outcome) -> f64);

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this harness has no options.
    common::catch_interrupts();
    let began = Instant::now();
    println!("sdc failover benchmark: {NODES} nodes, {TRIALS} trials per profile, each on a fresh cluster");
    println!("sdc binary: {SDC}");
    println!("temporary directory: {}", std::env::temp_dir().display());
    println!();

    let mut results: Vec<(Profile, Vec<Option<Outcome>>)> = Vec::new();
    let mut failures = 0;
    for p in PROFILES {
        if procs::interrupted().is_some() {
            break;
        }
        if let Err(e) = p.check() {
            eprintln!("{e:#}");
            failures += 1;
            continue;
        }
        println!("profile {}: heartbeat {} ms, dead {} ms, fence {} ms", p.name, p.heartbeat_ms, p.dead_ms, p.fence_ms);
        let mut outcomes = Vec::new();
        for i in 1..=TRIALS {
            if procs::interrupted().is_some() {
                break;
            }
            match trial(&p) {
                Ok(o) => {
                    println!(
                        "  trial {i}: killed master node {} (epoch {}); disk: node {} master of epoch {} after {:.0} ms; \
                         status: node {} (epoch {}) after {:.0} ms, {} status calls",
                        o.old_master,
                        o.old_epoch,
                        o.disk_master.0,
                        o.disk_master.1,
                        o.disk_ms,
                        o.status_master.0,
                        o.status_master.1,
                        o.status_ms,
                        o.status_calls
                    );
                    outcomes.push(Some(o));
                }
                Err(e) => {
                    println!("  trial {i}: FAILED: {e:#}");
                    failures += 1;
                    outcomes.push(None);
                }
            }
        }
        results.push((p, outcomes));
        println!();
    }

    println!("Failover time in ms, from SIGKILL of the master's daemon:");
    let trial_cols: String = (1..=TRIALS).map(|i| format!(" {:>6}", format!("t{i}"))).collect();
    let header = format!(
        "{:<8} {:>7} {:<28}{trial_cols} {:>7} {:>6} {:>6}",
        "profile", "dead_ms", "measure", "median", "min", "max"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (p, outcomes) in &results {
        let columns: [Column; 2] =
            [("disk shows new master", |o| o.disk_ms), ("sdc status shows new master", |o| o.status_ms)];
        for (label, get) in columns {
            let cells: String = outcomes
                .iter()
                .map(|o| o.as_ref().map_or(format!(" {:>6}", "FAIL"), |o| format!(" {:>6.0}", get(o))))
                .collect();
            let xs: Vec<f64> = outcomes.iter().flatten().map(get).collect();
            let s = stats(&xs).map_or(format!(" {:>7} {:>6} {:>6}", "-", "-", "-"), |s| {
                format!(" {:>7.0} {:>6.0} {:>6.0}", s.median, s.min, s.max)
            });
            println!("{:<8} {:>7} {:<28}{cells}{s}", p.name, p.dead_ms, label);
        }
    }
    println!();
    for (p, _) in &results {
        println!(
            "{}: detection floor = dead_ms = {} ms: followers judge the master dead once its heartbeat has been \
             still that long on their own clocks, counted from their last read of its last write, which can precede \
             the kill by up to one heartbeat ({} ms); then come the claim stagger, the Disk Paxos rounds and the \
             first heartbeat as master.",
            p.name, p.dead_ms, p.heartbeat_ms
        );
    }
    println!(
        "status column: each `sdc status` samples heartbeats twice ~1.5 heartbeat intervals apart and is timed \
         when it returns, so it lags the disk column by about that plus a process start."
    );
    println!("total bench time: {:.1} s", began.elapsed().as_secs_f64());
    if let Some(sig) = procs::interrupted() {
        eprintln!("interrupted by signal {sig}: the trials above are all there are");
        std::process::exit(1);
    }
    if failures > 0 {
        eprintln!("{failures} trial(s) could not be run; see above");
        std::process::exit(1);
    }
}

/// A free loopback port for a node's interconnect address.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
