//! The lock manager's speed: in process (the core alone, the threaded client API, two nodes over
//! loopback TCP) and end to end with real `sdc join` daemons (`sdc lock` from the command line,
//! recovery after kill -9 of a node holding 100,000 locks).
//!
//! Run with `cargo bench -p sdc --bench dlm` (about a minute and a half); `-- --help` lists the
//! options. Each measure prints what it measured, how, N and its figure: a rate in ops/s, a
//! latency as median and p99 (nearest rank: with fewer than 100 samples the p99 is the maximum).
//! It prints numbers and asserts nothing about speed.
//!
//! 1. **core**: a [`DlmCore`] taken alone through its three join barriers (one node, so it
//!    masters and is directory node of everything), then lock(EX) + poll_event + unlock of one
//!    name in a loop, and of `--names` distinct names in turn; timed per batch of 1,000.
//!    **client**: the same through [`DlmClient::lock`] / [`DlmClient::unlock`] on a one-node
//!    [`DlmNode`] (the core on its own thread: two thread round trips per lock + unlock), each
//!    timed; and pipelined with `submit_lock` (a window of requests outstanding per thread).
//! 2. **remote**: two [`DlmNode`]s in process over loopback TCP, joined through synthetic
//!    barrier notifications (as node.rs's tests do); node 1 locks and unlocks every name first,
//!    so it masters them; then `--threads` clients on node 2 lock (EX) + unlock them with
//!    `submit_lock`, `--window` requests outstanding per client, each on a name of its own.
//!    Twice: as is (node 2 drops its cached master with its last lock on a name, so a name
//!    whose directory node is node 1 costs a lookup per lock), and with node 2 holding an NL
//!    lock on every name (the master stays cached).
//! 3. **ping-pong**: one name, one client on each node; each takes EX, holds it until it hears
//!    the other's blocking callback, releases, and asks again; transfers per second. Twice: new
//!    lock + unlock each time, and each node keeping one lock and converting NL <-> EX.
//! 4. **sdc lock**: three real daemons (mmap disk file, default timing 100/1000/600 ms, every
//!    node with a loopback `--address`); `sdc lock --node 1 NAME -- true` run to completion,
//!    process start included, `--cli-runs` times; the same on node 2 (the name mastered on node
//!    1); and `sdc --version` for the cost of starting the process alone.
//! 5. **recovery**: on the same cluster, one connection to node 3's control socket asks for
//!    `--recovery-locks` EX locks on distinct names (pipelined, `--ctl-window` outstanding, the
//!    replies read by a thread); a connection to node 1's control socket then asks for one of
//!    those names in EX (node 3's connection hears the blocking callback: the request waits at
//!    node 3, its master). kill -9 of node 3's daemon; (a) from the kill until node 1's waiter
//!    reads its grant; (b) from node 1's DLM logging the forced leave's first DLM barrier
//!    (`layer dlm: forced-leave of node 3 ..., barrier 1 of 3`, log time stamps are
//!    milliseconds) until the grant; with the steps between as node 1's log shows them.
//!
//! Anchors (what others measured; not run here):
//! * Linux DLM (2004): about 31,000 new local locks/s and about 4,000 remote up-conversions/s.
//! * etcd 3.4, 3 members: 465 lock+unlock/s from one client, 780/s from 16, 158/s with 16
//!   contending for one lock; `etcdctl lock NAME -- true` 19 ms; a crashed holder's lock passes
//!   after its lease TTL (10 s by default), and the holder's command is never stopped.

#[path = "common/mod.rs"]
mod common;

use anyhow::{anyhow, bail, Context, Result};
use common::{check_interrupted, log_since, machine, ms, stats, steady, Cluster, ClusterSpec, DiskKind, Opts, SDC};
use dlm::driver::control::{cluster_dir_name, socket_name, RUN_DIR_ENV};
use dlm::driver::{AddressBook, Dlm, DlmConfig, DlmEvent, DlmNode};
use dlm::{Barrier, ClientEvent, ClientId, DlmCore, Flags, LockId, Mode, Phase, ResName, State};
use manager::api::Registry;
use membership_db::format::{Barriers, NodeId, Timing};
use sdc_procs::procs::{self, LogLine};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DLM_ORDER: u32 = manager::order::DLM;
const WAIT: Duration = Duration::from_secs(30);
const ANCHORS: &str = "Anchors (measured elsewhere, not here): Linux DLM (2004) ~31,000 new local locks/s, ~4,000 \
                       remote up-conversions/s; etcd 3.4 with 3 members: 465 lock+unlock/s from one client, 780/s \
                       from 16, 158/s with 16 contending; `etcdctl lock NAME -- true` 19 ms; a crashed holder's lock \
                       passes after its lease TTL (10 s default) and its command is never stopped.";

/// One line of the summary at the end.
struct Row {
    what: String,
    figure: String,
}

fn main() {
    let opts = Opts::parse(
        "dlm",
        "The lock manager: in-process rates, two nodes over loopback, sdc lock, recovery after kill -9.",
        &[
            ("core-ops", "2000000", "lock+unlock pairs on the core alone, per case"),
            ("names", "10000", "distinct names of the core's and the client's many-names cases"),
            ("client-ops", "50000", "blocking lock+unlock pairs through the in-process client"),
            ("seconds", "3", "how long each rate measure with threads runs"),
            ("threads", "4", "client threads of the pipelined measures"),
            ("window", "64", "requests outstanding per client thread (submit_lock)"),
            ("remote-names", "4096", "names node 1 masters for the remote measure"),
            ("cli-runs", "200", "runs of sdc lock NAME -- true per case"),
            ("recovery-locks", "100000", "EX locks node 3 holds when it is killed"),
            ("ctl-window", "256", "lock requests outstanding on node 3's control socket connection"),
            ("only", "core,client,remote,pingpong,cli,recovery", "which measures to run"),
            ("dir", "", "where the temporary directory goes (empty: the system's temporary directory)"),
        ],
    );
    common::catch_interrupts();
    // Every daemon and every `sdc lock` finds its control socket under a directory of the
    // bench's own (set before any thread starts; the children inherit it).
    let run_dir = match tempfile::Builder::new().prefix("sdc-bench-dlm-run-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a run directory: {e}");
            std::process::exit(1);
        }
    };
    std::env::set_var(RUN_DIR_ENV, run_dir.path());
    let only: Vec<String> = opts.str("only").split(',').map(|s| s.trim().to_string()).collect();
    let run = |name: &str| only.iter().any(|o| o == name);
    let began = Instant::now();
    println!("sdc DLM benchmark");
    println!("sdc binary: {SDC}");
    println!("machine: {}; kernel {}", machine(), common::kernel());
    println!(
        "build: {}",
        if cfg!(debug_assertions) { "debug assertions ON (not a release build)" } else { "release (bench profile)" }
    );
    println!("{ANCHORS}");
    println!();
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = Vec::new();
    let mut step = |name: &str, enabled: bool, f: &mut dyn FnMut(&mut Vec<Row>) -> Result<()>, rows: &mut Vec<Row>| {
        if !enabled || procs::interrupted().is_some() {
            return;
        }
        let t = Instant::now();
        if let Err(e) = f(rows) {
            println!("  ERROR in {name}: {e:#}");
            failed.push(name.to_string());
        }
        println!("  ({name}: {:.1} s; {})", t.elapsed().as_secs_f64(), common::load_average());
        println!();
    };
    step("core", run("core"), &mut |rows| bench_core(&opts, rows), &mut rows);
    step("client", run("client"), &mut |rows| bench_client(&opts, rows), &mut rows);
    step("remote", run("remote"), &mut |rows| bench_remote(&opts, rows, false), &mut rows);
    step("pingpong", run("pingpong"), &mut |rows| bench_remote(&opts, rows, true), &mut rows);
    let (cli, recovery) = (run("cli"), run("recovery"));
    step("daemons", cli || recovery, &mut |rows| bench_cluster(&opts, run_dir.path(), rows, cli, recovery), &mut rows);
    println!("Summary:");
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for r in &rows {
        println!("  {:<width$}  {}", r.what, r.figure);
    }
    println!();
    println!("{ANCHORS}");
    println!("machine at the end: {}", machine());
    println!("total bench time: {:.1} s", began.elapsed().as_secs_f64());
    if procs::interrupted().is_some() {
        eprintln!("interrupted: the figures above are all there are");
        std::process::exit(1);
    }
    if !failed.is_empty() {
        eprintln!("not measured completely: {}", failed.join(", "));
        std::process::exit(1);
    }
}

fn rate_text(n: u64, d: Duration) -> String {
    format!("{:.0} ops/s", n as f64 / d.as_secs_f64())
}

/// `median 1.2 us, p99 3.4 us (n = 100)` of samples in microseconds.
fn us_text(xs: &[f64]) -> String {
    match stats(xs) {
        Some(s) => format!("median {:.2} us, p99 {:.2} us (n = {})", s.median, s.p99, s.n),
        None => "no samples".into(),
    }
}

fn ms_text(xs: &[f64]) -> String {
    match stats(xs) {
        Some(s) => {
            format!("median {:.2} ms, p99 {:.2} ms, min {:.2}, max {:.2} (n = {})", s.median, s.p99, s.min, s.max, s.n)
        }
        None => "no samples".into(),
    }
}

fn names(prefix: &str, n: usize) -> Vec<ResName> {
    (0..n).map(|i| ResName::new("bench", format!("{prefix}-{i}").as_bytes()).expect("a valid name")).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The core alone

fn core_joined() -> Result<DlmCore> {
    let mut dlm = DlmCore::new(NodeId(1));
    for (key, phase) in [(1, Phase::Stop), (2, Phase::Rebuild), (3, Phase::Resume)] {
        let members = vec![(NodeId(1), 7)];
        dlm.handle_barrier(Barrier {
            key,
            transition: 1,
            phase,
            subject: NodeId(1),
            members,
            view: (1, key),
            leaving: None,
        });
    }
    while dlm.poll_ack().is_some() {}
    if dlm.state() != State::Running {
        bail!("the core is {:?} after its three join barriers", dlm.state());
    }
    Ok(dlm)
}

/// lock(EX) + unlock of `names` in turn, `ops` pairs: (pairs, elapsed, ns per pair of each batch).
fn core_loop(names: &[ResName], ops: usize) -> Result<(u64, Duration, Vec<f64>)> {
    const BATCH: usize = 1000;
    let mut dlm = core_joined()?;
    let client = ClientId(1);
    let one = |dlm: &mut DlmCore, res: &ResName| -> Result<()> {
        let lock = dlm.lock(0, client, res.clone(), Mode::Ex, Flags::default())?;
        match dlm.poll_event() {
            Some(ClientEvent::Completion { result: Ok(_), .. }) => {}
            other => bail!("lock of {res}: {other:?} instead of a grant"),
        }
        dlm.unlock(client, lock, None)?;
        Ok(())
    };
    // Warm up: every name once (the first lock of a name creates its resource).
    for res in names {
        one(&mut dlm, res)?;
    }
    let mut per_batch = Vec::with_capacity(ops / BATCH + 1);
    let mut done = 0usize;
    let t0 = Instant::now();
    while done < ops {
        let tb = Instant::now();
        for _ in 0..BATCH {
            one(&mut dlm, &names[done % names.len()])?;
            done += 1;
        }
        per_batch.push(tb.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let elapsed = t0.elapsed();
    if let Some(f) = dlm.poll_transmit() {
        bail!("a one-node core sent a frame: {f:?}");
    }
    Ok((done as u64, elapsed, per_batch))
}

fn bench_core(opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let ops = opts.u64("core-ops") as usize;
    let n = opts.u64("names") as usize;
    println!("1. Uncontended lock(EX) + unlock on the DlmCore alone (one node, through its three join barriers; each pair \
              is lock + poll_event (the grant) + unlock, the name cloned for each lock; timed per batch of 1,000 pairs)");
    for (label, names) in [("one name", names("core", 1)), ("distinct names", names("core", n))] {
        let (done, d, per_batch) = core_loop(&names, ops)?;
        let ns: Vec<f64> = per_batch.iter().map(|x| x / 1000.0).collect();
        let label = if names.len() > 1 { format!("{} {label}", names.len()) } else { label.to_string() };
        println!(
            "   {label}: {done} pairs in {:.3} s: {}; per pair, over batches: {}",
            d.as_secs_f64(),
            rate_text(done, d),
            us_text(&ns)
        );
        rows.push(Row {
            what: format!("1 core lock+unlock, {label}"),
            figure: format!("{} (N = {done})", rate_text(done, d)),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// In-process nodes

struct InProc {
    registry: Registry,
    node: DlmNode,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_node(id: u16, ports: &BTreeMap<u16, u16>) -> Result<InProc> {
    let mut registry = Registry::new();
    let sub = registry.register(DLM_ORDER, "dlm", Barriers { join: 3, leave: 3, forced_leave: 3 })?;
    let config = DlmConfig {
        node: NodeId(id),
        order: DLM_ORDER,
        cluster_uuid: [7; 16],
        cluster_key: [9; 32],
        listen: format!("127.0.0.1:{}", ports[&id]).parse()?,
        keepalive_ms: 100,
        link_timeout_ms: 5000,
    };
    let book = ports.clone();
    let addresses: AddressBook = Box::new(move |n| book.get(&n.0).map(|p| format!("127.0.0.1:{p}")));
    let node = DlmNode::start(config, sub, addresses, Arc::new(|_: &str| {}))?;
    Ok(InProc { registry, node })
}

/// Takes `subject`'s join through the DLM's three barriers on every node of `nodes`, each
/// barrier cluster-wide (every node acknowledges before the next), as node.rs's tests do.
fn join(nodes: &[&InProc], subject: u16, joined: &[u16]) -> Result<()> {
    for barrier in 0..3u8 {
        let n = dlm::driver::join_notification(DLM_ORDER, subject, joined, barrier);
        for t in nodes {
            if !t.registry.deliver(n.clone()) {
                bail!("barrier {barrier} of node {subject}'s join not delivered");
            }
        }
        for t in nodes {
            let began = Instant::now();
            let reply = loop {
                if let Some(r) = t.registry.try_reply() {
                    break r;
                }
                if began.elapsed() > WAIT {
                    bail!("no acknowledgement of barrier {barrier} of node {subject}'s join");
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            if reply.key != n.key() || reply.nack {
                bail!("barrier {barrier} of node {subject}'s join: reply {:?} nack {}", reply.key, reply.nack);
            }
        }
    }
    Ok(())
}

/// What a pipelined run did: pairs done, elapsed, request-to-grant latencies (us), and the
/// CPU time this process used meanwhile (every thread: clients, lock managers, interconnects).
struct Piped {
    done: u64,
    elapsed: Duration,
    grant_us: Vec<f64>,
    cpu: Duration,
}

impl Piped {
    /// Prints how it went (`how` says how it was run) and gives its summary row.
    fn report(&self, how: &str, what: String) -> Row {
        let rate = rate_text(self.done, self.elapsed);
        println!(
            "   {how}: {} pairs in {:.3} s: {rate}; submit -> grant {}; {}",
            self.done,
            self.elapsed.as_secs_f64(),
            us_text(&self.grant_us),
            cpu_text(self.cpu, self.done, self.elapsed)
        );
        Row { what, figure: format!("{rate}; grant {}", us_text(&self.grant_us)) }
    }
}

/// CPU time (user + system) of this process so far, every thread, at clock-tick resolution.
fn cpu_now() -> Duration {
    let ticks = common::cpu_ticks(std::process::id()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / common::clock_ticks())
}

/// `12.3 us of CPU per op (1.45 cores busy)`.
fn cpu_text(cpu: Duration, ops: u64, elapsed: Duration) -> String {
    format!(
        "{:.1} us of CPU per op, {:.2} cores busy",
        cpu.as_secs_f64() * 1e6 / ops.max(1) as f64,
        cpu.as_secs_f64() / elapsed.as_secs_f64()
    )
}

/// `threads` clients of `dlm`, each with `window` `submit_lock`s outstanding on names of its
/// own (`names` split between them), unlocking each as its grant arrives, for `secs`.
fn pipelined(dlm: &Dlm, names: &[ResName], threads: usize, window: usize, secs: f64) -> Result<Piped> {
    let stop = Arc::new(AtomicBool::new(false));
    let per = names.len() / threads;
    if per < window {
        bail!("{} names cannot give {threads} threads a window of {window} each", names.len());
    }
    let (t0, cpu0) = (Instant::now(), cpu_now());
    let results: Vec<Result<(u64, Vec<f64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mine = &names[t * per..(t + 1) * per];
                let (dlm, stop) = (dlm.clone(), stop.clone());
                s.spawn(move || -> Result<(u64, Vec<f64>)> {
                    let client = dlm.client();
                    let events = client.events().ok_or_else(|| anyhow!("no event channel"))?.clone();
                    let mut free: VecDeque<usize> = (0..mine.len()).collect();
                    let mut out: HashMap<LockId, (Instant, usize)> = HashMap::new();
                    let mut lat = Vec::new();
                    let mut done = 0u64;
                    loop {
                        let stopping = stop.load(Ordering::Relaxed);
                        while !stopping && out.len() < window {
                            let Some(i) = free.pop_front() else { break };
                            let t = Instant::now();
                            let lock = client.submit_lock(mine[i].clone(), Mode::Ex, Flags::default())?;
                            out.insert(lock, (t, i));
                        }
                        if out.is_empty() {
                            break;
                        }
                        match events.recv_timeout(WAIT) {
                            Ok(DlmEvent::Completion { lock, result }) => {
                                let (t, i) =
                                    out.remove(&lock).ok_or_else(|| anyhow!("completion of unknown {lock}"))?;
                                result.map_err(|e| anyhow!("lock {lock} of {}: {e}", mine[i]))?;
                                lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
                                client.unlock(lock, None)?;
                                free.push_back(i);
                                done += 1;
                            }
                            Ok(DlmEvent::Blocking { .. }) => {}
                            Err(_) => bail!("no completion within {WAIT:?} ({} outstanding)", out.len()),
                        }
                    }
                    Ok((done, lat))
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < deadline && procs::interrupted().is_none() && !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))).collect()
    });
    let (elapsed, cpu) = (t0.elapsed(), cpu_now().saturating_sub(cpu0));
    let mut p = Piped { done: 0, elapsed, grant_us: Vec::new(), cpu };
    for r in results {
        let (done, lat) = r?;
        p.done += done;
        p.grant_us.extend(lat);
    }
    Ok(p)
}

fn bench_client(opts: &Opts, rows: &mut Vec<Row>) -> Result<()> {
    let ops = opts.u64("client-ops") as usize;
    let (threads, window, secs) = (opts.u64("threads") as usize, opts.u64("window") as usize, opts.f64("seconds"));
    println!(
        "1b. The same through the threaded in-process client API on a one-node DlmNode (the core on its own \
              thread; the node joined through synthetic barrier notifications)"
    );
    let ports: BTreeMap<u16, u16> = [(1, free_port()?)].into();
    let one = start_node(1, &ports)?;
    join(&[&one], 1, &[])?;
    let dlm = one.node.dlm();
    let client = dlm.client();
    let res = ResName::new("bench", b"client-one")?;
    let mut lat = Vec::with_capacity(ops);
    for _ in 0..1000 {
        let (l, _) = client.lock(res.clone(), Mode::Ex, Flags::default())?;
        client.unlock(l, None)?;
    }
    let (t0, cpu0) = (Instant::now(), cpu_now());
    for _ in 0..ops {
        let t = Instant::now();
        let (l, _) = client.lock(res.clone(), Mode::Ex, Flags::default())?;
        client.unlock(l, None)?;
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    let (d, cpu) = (t0.elapsed(), cpu_now().saturating_sub(cpu0));
    println!(
        "   one thread, DlmClient::lock (waits for the grant) + DlmClient::unlock (waits for the answer), one name: {ops} \
         pairs in {:.3} s: {}; per pair {}; {}",
        d.as_secs_f64(),
        rate_text(ops as u64, d),
        us_text(&lat),
        cpu_text(cpu, ops as u64, d)
    );
    rows.push(Row {
        what: "1b client lock+unlock, 1 thread, blocking".into(),
        figure: format!("{}; pair {}", rate_text(ops as u64, d), us_text(&lat)),
    });
    drop(client);
    let names = names("client", (threads * window * 2).max(threads));
    let p = pipelined(&dlm, &names, threads, window, secs)?;
    println!(
        "   {threads} threads, submit_lock with {window} outstanding each, unlock on each grant, {} names: {} pairs in \
         {:.3} s: {}; submit -> grant {}; {}",
        names.len(),
        p.done,
        p.elapsed.as_secs_f64(),
        rate_text(p.done, p.elapsed),
        us_text(&p.grant_us),
        cpu_text(p.cpu, p.done, p.elapsed)
    );
    rows.push(Row {
        what: format!("1b client lock+unlock, {threads} threads x {window} submit_lock"),
        figure: format!("{} (N = {})", rate_text(p.done, p.elapsed), p.done),
    });
    one.node.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Two nodes

fn two_nodes() -> Result<(InProc, InProc)> {
    let ports: BTreeMap<u16, u16> = [(1, free_port()?), (2, free_port()?)].into();
    let (one, two) = (start_node(1, &ports)?, start_node(2, &ports)?);
    join(&[&one], 1, &[])?;
    join(&[&one, &two], 2, &[1])?;
    Ok((one, two))
}

fn bench_remote(opts: &Opts, rows: &mut Vec<Row>, pingpong: bool) -> Result<()> {
    let (threads, window, secs) = (opts.u64("threads") as usize, opts.u64("window") as usize, opts.f64("seconds"));
    let (one, two) = two_nodes()?;
    if pingpong {
        return bench_pingpong(&one, &two, secs, rows);
    }
    let n = (opts.u64("remote-names") as usize).max(threads * window);
    println!(
        "2. Lock(EX) + unlock from node 2 of names node 1 masters: two DlmNodes in process over loopback TCP; node 1 \
         locked and unlocked each of {n} names first"
    );
    let names = names("remote", n);
    {
        let c1 = one.node.dlm().client();
        for r in &names {
            let (l, _) = c1.lock(r.clone(), Mode::Ex, Flags::default())?;
            c1.unlock(l, None)?;
        }
    }
    let mastered = one.node.dlm().snapshot()?.mastered.len();
    let dir_on_1 = names.iter().filter(|r| r.hash() % 2 == 0).count();
    println!("   node 1 masters {mastered} resources; the directory node of {dir_on_1} of the names is node 1");
    let dlm2 = two.node.dlm();
    let p = pipelined(&dlm2, &names, threads, window, secs)?;
    let how =
        format!("(a) as is: {threads} threads on node 2, {window} submit_lock outstanding each, unlock on each grant");
    rows.push(p.report(&how, format!("2 remote lock+unlock, {threads}x{window} outstanding")));
    // Keep the master cached on node 2: an NL lock on every name.
    let keeper = dlm2.client();
    let mut nl = Vec::with_capacity(names.len());
    for r in &names {
        nl.push(keeper.submit_lock(r.clone(), Mode::Nl, Flags::default())?);
    }
    let events = keeper.events().ok_or_else(|| anyhow!("no event channel"))?;
    for _ in 0..nl.len() {
        match events.recv_timeout(WAIT) {
            Ok(DlmEvent::Completion { result: Ok(_), .. }) => {}
            other => bail!("an NL lock: {other:?}"),
        }
    }
    let p = pipelined(&dlm2, &names, threads, window, secs)?;
    let how = "(b) node 2 holding an NL lock on every name (master cached, no lookups)";
    rows.push(p.report(how, format!("2 remote lock+unlock, master cached (NL held), {threads}x{window}")));
    drop(keeper);
    two.node.shutdown();
    one.node.shutdown();
    Ok(())
}

/// One side of the ping-pong: take EX (a new lock, or a conversion up from NL), hold it until
/// the other side's blocking callback, release (unlock, or convert down to NL); again until
/// `stop`. Returns (grants, request -> grant latencies in us).
fn pingpong_side(
    dlm: Dlm,
    res: ResName,
    convert: bool,
    stop: Arc<AtomicBool>,
    first: Arc<AtomicU64>,
) -> Result<(u64, Vec<f64>)> {
    let c = dlm.client();
    let events = c.events().ok_or_else(|| anyhow!("no event channel"))?.clone();
    let flags = Flags { timeout_ms: Some(10_000), ..Flags::default() };
    let held = if convert { Some(c.lock(res.clone(), Mode::Nl, Flags::default())?.0) } else { None };
    first.fetch_add(1, Ordering::SeqCst);
    while first.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    let (mut grants, mut lat) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let lock = match held {
            Some(l) => {
                c.convert(l, Mode::Ex, flags, None)?;
                l
            }
            None => c.lock(res.clone(), Mode::Ex, flags)?.0,
        };
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
        grants += 1;
        loop {
            match events.recv_timeout(Duration::from_millis(50)) {
                Ok(DlmEvent::Blocking { lock: l, .. }) if l == lock => break,
                Ok(_) => {}
                Err(_) if stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        match held {
            Some(l) => {
                c.convert(l, Mode::Nl, Flags::default(), None)?;
            }
            None => c.unlock(lock, None)?,
        }
    }
    Ok((grants, lat))
}

fn bench_pingpong(one: &InProc, two: &InProc, secs: f64, rows: &mut Vec<Row>) -> Result<()> {
    println!(
        "3. EX ping-pong on one name between node 1 and node 2 (in process, loopback TCP); each side takes EX, holds it \
         until it hears the other's blocking callback, releases and asks again; node 1 masters the name"
    );
    for convert in [false, true] {
        let res = ResName::new("bench", if convert { b"pingpong-convert".as_slice() } else { b"pingpong".as_slice() })?;
        {
            let c1 = one.node.dlm().client();
            let (l, _) = c1.lock(res.clone(), Mode::Ex, Flags::default())?;
            c1.unlock(l, None)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let first = Arc::new(AtomicU64::new(0));
        let (t0, cpu0) = (Instant::now(), cpu_now());
        let sides: Vec<_> = [one.node.dlm(), two.node.dlm()]
            .into_iter()
            .map(|dlm| {
                let (res, stop, first) = (res.clone(), stop.clone(), first.clone());
                std::thread::spawn(move || pingpong_side(dlm, res, convert, stop, first))
            })
            .collect();
        let deadline = t0 + Duration::from_secs_f64(secs);
        while Instant::now() < deadline && procs::interrupted().is_none() && !sides.iter().any(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        let (elapsed, cpu) = (t0.elapsed(), cpu_now().saturating_sub(cpu0));
        let mut total = 0;
        let mut per = Vec::new();
        for (i, h) in sides.into_iter().enumerate() {
            let (g, lat) = h.join().map_err(|_| anyhow!("a ping-pong thread panicked"))??;
            total += g;
            per.push(format!("node {}: {g} grants, request -> grant {}", i + 1, us_text(&lat)));
        }
        let how =
            if convert { "one NL lock per node, converted NL -> EX -> NL" } else { "new lock + unlock each time" };
        println!(
            "   {how}: {total} EX grants (transfers) in {:.3} s: {:.0} transfers/s; {}",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            cpu_text(cpu, total, elapsed)
        );
        for p in per {
            println!("      {p}");
        }
        rows.push(Row {
            what: format!("3 ping-pong, {how}"),
            figure: format!("{:.0} transfers/s (N = {total})", total as f64 / elapsed.as_secs_f64()),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4 and 5. Real daemons

/// A connection to a node's control socket: requests written, replies read by a thread and
/// handed over with the time they were read.
struct Ctl {
    w: BufWriter<UnixStream>,
    replies: mpsc::Receiver<(Instant, SystemTime, Value)>,
}

impl Ctl {
    fn connect(path: &Path) -> Result<Ctl> {
        let s = UnixStream::connect(path).with_context(|| format!("cannot connect to {}", path.display()))?;
        let r = s.try_clone()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let (t, wall) = (Instant::now(), SystemTime::now());
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| json!({"reply": "garbage", "line": line}));
                if tx.send((t, wall, v)).is_err() {
                    return;
                }
            }
        });
        Ok(Ctl { w: BufWriter::new(s), replies: rx })
    }

    fn send(&mut self, v: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.w, v)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(self.w.flush()?)
    }

    fn recv(&self, timeout: Duration) -> Result<(Instant, SystemTime, Value)> {
        self.replies
            .recv_timeout(timeout)
            .map_err(|e| anyhow!("no reply from the control socket within {timeout:?}: {e}"))
    }

    /// The reply to request `id` of kind `kind` (other replies skipped).
    fn wait_reply(&self, id: u64, kind: &str, timeout: Duration) -> Result<(Instant, SystemTime, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, wall, v) = self.recv(left)?;
            if v["id"].as_u64() == Some(id) {
                if v["reply"] == kind {
                    return Ok((t, wall, v));
                }
                if v["reply"] == "error" || v["reply"] == "failed" {
                    bail!("request {id}: {v}");
                }
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn socket_path(c: &Cluster, run_dir: &Path, node: u16) -> PathBuf {
    run_dir.join(cluster_dir_name(&c.db().superblock().cluster_uuid)).join(socket_name(node))
}

/// The lock manager of `node` as its control socket shows it: (state, members).
fn dlm_state(path: &Path) -> Result<(String, usize)> {
    let mut ctl = Ctl::connect(path)?;
    ctl.send(&json!({"v": 1, "id": 1, "op": "snapshot"}))?;
    ctl.flush()?;
    let (_, _, v) = ctl.wait_reply(1, "snapshot", Duration::from_secs(5))?;
    let s = &v["snapshot"];
    Ok((s["state"].as_str().unwrap_or("?").to_string(), s["members"].as_array().map_or(0, Vec::len)))
}

fn bench_cluster(opts: &Opts, run_dir: &Path, rows: &mut Vec<Row>, cli: bool, recovery: bool) -> Result<()> {
    let timing = Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 };
    let spec = ClusterSpec {
        prefix: "sdc-bench-dlm-",
        disk: DiskKind::MmapFile,
        parent: opts.path("dir"),
        bytes: 64 << 20,
        max_nodes: 4,
        table: 3,
        timing,
        layers: Vec::new(),
    };
    let mut c = Cluster::create(spec)?;
    let t0 = Instant::now();
    for n in 1..=3 {
        c.spawn(n)?;
    }
    c.wait_for("the cluster to form", Duration::from_secs(60), Duration::from_millis(5), false, |st| {
        steady(st, 3, &[1, 2, 3])
    })?;
    for n in 1..=3 {
        let path = socket_path(&c, run_dir, n);
        let began = Instant::now();
        loop {
            c.check_exits()?;
            if let Ok((state, members)) = dlm_state(&path) {
                if state == "running" && members == 3 {
                    break;
                }
            }
            if began.elapsed() > WAIT {
                bail!("node {n}'s lock manager is not running with 3 members\n{}", c.log_tails(&[n], 10));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "   3 daemons (mmap disk file, heartbeat 100 / dead 1000 / fence 600 ms, loopback addresses) formed and their \
         lock managers running in {:.0} ms",
        ms(t0.elapsed())
    );
    let result = (|| -> Result<()> {
        if cli {
            bench_cli(&mut c, opts.u64("cli-runs") as usize, rows)?;
        }
        if recovery {
            bench_recovery(
                &mut c,
                run_dir,
                opts.u64("recovery-locks") as usize,
                opts.u64("ctl-window") as usize,
                rows,
            )?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        bail!("{e:#}\n{}", c.log_tails(&[1, 2, 3], 12));
    }
    Ok(())
}

/// Runs `sdc ARGS` to completion with its output discarded: the time it took, from spawn to reaped.
fn time_sdc(args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let status =
        Command::new(SDC).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    let d = ms(t.elapsed());
    if !status.status.success() {
        bail!("sdc {} failed: {}", args.join(" "), String::from_utf8_lossy(&status.stderr).trim());
    }
    Ok(d)
}

/// `sdc lock ... NAME -- echo x` to completion: (spawn until CMD's output is read, i.e. the
/// lock granted and CMD started; spawn until reaped).
fn time_sdc_lock(disk: &str, node: &str, name: &str) -> Result<(f64, f64)> {
    let args = ["lock", "--disk", disk, "--node", node, name, "--", "echo", "x"];
    let t = Instant::now();
    let mut child =
        Command::new(SDC).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut byte = [0u8; 1];
    let ran = match std::io::Read::read(&mut out, &mut byte) {
        Ok(1) => Some(ms(t.elapsed())),
        _ => None,
    };
    let done = child.wait_with_output()?;
    let total = ms(t.elapsed());
    match ran {
        Some(ran) if done.status.success() => Ok((ran, total)),
        _ => bail!("sdc {} failed ({}): {}", args.join(" "), done.status, String::from_utf8_lossy(&done.stderr).trim()),
    }
}

fn bench_cli(c: &mut Cluster, runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    println!(
        "4. `sdc lock --disk D --node N NAME -- CMD` end to end, back to back: `true` timed from spawn to reaped (process \
         start included); `echo x` timed until its output is read (the lock granted and CMD started) and until reaped"
    );
    let disk = c.disk.to_string_lossy().into_owned();
    let mut version = Vec::new();
    for _ in 0..runs.min(50) {
        check_interrupted()?;
        version.push(time_sdc(&["--version"])?);
    }
    println!("   baseline, `sdc --version`: {}", ms_text(&version));
    for (node, label) in [("1", "node 1, the name mastered on node 1"), ("2", "node 2, the name mastered on node 1")] {
        // Warm up (the first run on node 1 makes node 1 the name's master).
        time_sdc(&["lock", "--disk", &disk, "--node", node, "cli-bench", "--", "true"])?;
        let mut xs = Vec::with_capacity(runs);
        for _ in 0..runs {
            check_interrupted()?;
            c.check_exits()?;
            xs.push(time_sdc(&["lock", "--disk", &disk, "--node", node, "cli-bench", "--", "true"])?);
        }
        println!("   {label}, `-- true`, spawn -> reaped: {}", ms_text(&xs));
        let (mut ran, mut total) = (Vec::new(), Vec::new());
        for _ in 0..runs.min(100) {
            check_interrupted()?;
            let (r, t) = time_sdc_lock(&disk, node, "cli-bench")?;
            ran.push(r);
            total.push(t);
        }
        println!("   {label}, `-- echo x`, spawn -> CMD's output read: {}", ms_text(&ran));
        println!("   {label}, `-- echo x`, spawn -> reaped: {}", ms_text(&total));
        if let (Some(s), Some(r)) = (stats(&xs), stats(&ran)) {
            rows.push(Row {
                what: format!("4 sdc lock NAME -- true, {label}"),
                figure: format!(
                    "median {:.2} ms, p99 {:.2} ms (N = {}); CMD started after median {:.2} ms, p99 {:.2} ms (N = {})",
                    s.median, s.p99, s.n, r.median, r.p99, r.n
                ),
            });
        }
    }
    if let Some(s) = stats(&version) {
        rows.push(Row {
            what: "4 sdc --version (process start alone)".into(),
            figure: format!("median {:.2} ms, p99 {:.2} ms (N = {})", s.median, s.p99, s.n),
        });
    }
    Ok(())
}

fn bench_recovery(c: &mut Cluster, run_dir: &Path, n: usize, window: usize, rows: &mut Vec<Row>) -> Result<()> {
    println!(
        "5. Recovery after kill -9 of node 3 holding {n} EX locks (one control-socket connection, {window} requests \
         outstanding, distinct names)"
    );
    let mut holder = Ctl::connect(&socket_path(c, run_dir, 3))?;
    let name = |i: usize| format!("held-{i}");
    let t0 = Instant::now();
    let (mut sent, mut granted) = (0usize, 0usize);
    let mut blocking: Vec<Value> = Vec::new();
    let mut last_report = Instant::now();
    while granted < n {
        while sent < n && sent - granted < window {
            holder.send(&json!({"v": 1, "id": sent as u64 + 1, "op": "lock", "name": name(sent), "mode": "ex"}))?;
            sent += 1;
        }
        holder.flush()?;
        let (_, _, v) = holder.recv(WAIT).with_context(|| format!("{granted} of {n} granted"))?;
        match v["reply"].as_str() {
            Some("granted") => granted += 1,
            Some("queued") | Some("alive") => {}
            Some("blocking") => blocking.push(v),
            _ => bail!("node 3's control socket: {v}"),
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            println!("   ... {granted} granted after {:.1} s", t0.elapsed().as_secs_f64());
            last_report = Instant::now();
            c.check_exits()?;
        }
    }
    let took = t0.elapsed();
    println!(
        "   node 3 acquired {n} EX locks in {:.2} s: {} (lookups to the directory nodes included)",
        took.as_secs_f64(),
        rate_text(n as u64, took)
    );
    rows.push(Row {
        what: format!("5 node 3 acquires {n} EX locks over its control socket"),
        figure: format!("{:.2} s, {}", took.as_secs_f64(), rate_text(n as u64, took)),
    });
    let pss = c.pid(3).and_then(common::rss_kib);
    if let Some((rss, _)) = pss {
        println!("   node 3's daemon: {:.0} MiB resident", rss as f64 / 1024.0);
    }
    // The waiter on node 1, for a name node 3 holds (and masters).
    let target = name(n / 2);
    let mut waiter = Ctl::connect(&socket_path(c, run_dir, 1))?;
    waiter.send(&json!({"v": 1, "id": 1, "op": "lock", "name": target, "mode": "ex"}))?;
    waiter.flush()?;
    waiter.wait_reply(1, "queued", WAIT)?;
    // Node 3's holder hears the blocking callback: the request waits at its master.
    let began = Instant::now();
    while blocking.is_empty() {
        let left = WAIT.saturating_sub(began.elapsed());
        let (_, _, v) = holder.recv(left).context("no blocking callback at node 3 for node 1's waiter")?;
        if v["reply"] == "blocking" {
            blocking.push(v);
        }
    }
    println!("   node 1's waiter on {target} is queued at node 3 (node 3's client heard the blocking callback)");
    let logs_from: Vec<u64> = (1..=3).map(|n| common::log_len(&c.log_path(n))).collect();
    let kill_wall = SystemTime::now();
    let kill_at = Instant::now();
    c.kill(3)?;
    let (granted_at, granted_wall, _) = waiter.wait_reply(1, "granted", Duration::from_secs(60))?;
    let a = ms(granted_at - kill_at);
    let (kill_ms, grant_ms) = (unix_ms(kill_wall), unix_ms(granted_wall));
    println!("   (a) kill -9 -> the waiter's grant on node 1: {a:.0} ms");
    rows.push(Row {
        what: format!("5a kill -9 (holder of {n}) -> waiter granted"),
        figure: format!("{a:.0} ms (N = 1)"),
    });
    // What node 1's (and node 2's) log says happened between.
    std::thread::sleep(Duration::from_millis(200));
    let mut b = None;
    for node in [1u16, 2] {
        let mut steps = Vec::new();
        for line in log_since(&c.log_path(node), logs_from[node as usize - 1]) {
            let Some(l) = LogLine::parse(&line) else { continue };
            let t = &l.text;
            let note = l.layer_note().filter(|n| n.layer == "dlm" && n.kind == "forced-leave" && n.subject == 3);
            let interesting =
                note.is_some() || t.contains("node 3") || t.starts_with("dlm:") || t.starts_with("master: ");
            if !interesting {
                continue;
            }
            if node == 1 && b.is_none() && note.as_ref().is_some_and(|n| n.barrier == 1) {
                b = Some(grant_ms as f64 - l.unix_ms as f64);
            }
            steps.push(format!("+{:>5} ms  {}", l.unix_ms as i64 - kill_ms as i64, common::shorten(t, 110)));
        }
        println!("   node {node}'s log after the kill (ms after the kill):");
        for s in steps.iter().take(14) {
            println!("      {s}");
        }
    }
    println!("      +{:>5} ms  node 1's waiter granted", grant_ms as i64 - kill_ms as i64);
    match b {
        Some(b) => {
            println!("   (b) node 1's DLM logs the forced leave's barrier 1 of 3 -> the waiter's grant: {b:.0} ms (log time stamps in ms)");
            rows.push(Row {
                what: format!("5b forced leave at node 1's DLM (barrier 1) -> waiter granted ({n} locks)"),
                figure: format!("{b:.0} ms (N = 1)"),
            });
        }
        None => println!("   (b) not measured: node 1's log shows no DLM forced-leave barrier 1 of node 3"),
    }
    Ok(())
}
