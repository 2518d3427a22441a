//! One simulated run: N nodes running the real [`MemberCore`] over a [`SharedDisk`] in virtual
//! time, faults drawn from the seed, invariants checked after every action, then a healing
//! phase in which every transition must complete within a bound, and an idle phase in which
//! every node must do one write and one read per heartbeat interval.
//!
//! [`World`] is also the harness of scripted scenarios (`tests/scenarios.rs`): the same nodes,
//! checks and trace, driven by explicit crashes, freezes and leaves instead of random faults.

use crate::disk::{NodePath, PathFaults, SharedDisk, SECTOR_BYTES};
use crate::lockload::{check_all_released, check_compatible, check_queues_match, Load};
use dlm::DlmCore;
use manager::daemon::{own_records, perform_member};
use manager::member::{Action, MemberCore, MemberEvent, MemberExit, LEAVE_MS_MAX};
use manager::participant::Notification;
use manager::sequencer::SeqEvent;
use manager::steps;
use membership_db::db::{FormatParams, MembershipDb};
use membership_db::format::*;
use membership_db::invariants::MasterChecker;
use membership_db::node::{self, Exit, FenceReason, NodeConfig};
use membership_db::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

/// The cluster's timing in the simulation: the defaults of `sdc format`.
pub const TIMING: Timing = Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 };
/// Clock rates differ from true time by at most this (parts per million): 1%. The timing rule
/// keeps its margin: fence 600 ms runs at most 606 ms, dead 1000 ms at least 990 ms.
pub const DRIFT_PPM_MAX: i64 = 10_000;
/// The link timeout of the simulated cluster: the default of `sdc format`.
pub const LINK_TIMEOUT: u32 = LINK_TIMEOUT_MS_DEFAULT;
/// Slow I/O takes at most this long: less than the fence margin's allowance for one late I/O.
pub const SLOW_IO_MS_MAX: Millis = 50;
/// Trace lines kept for a violation report.
pub const TRACE_LINES: usize = 80;
/// The wall clock of virtual time 0, for the records' display stamps (2026-01-01).
const WALL_EPOCH_MS: u64 = 1_767_225_600_000;
/// How long the healed, converged cluster is watched for its idle I/O.
pub const IDLE_CHECK_MS: Millis = 3_000;
/// After that, the lock manager must settle (every lock where its master says) and then
/// release everything within this.
pub const LOCKS_SETTLE_MS: Millis = 5_000;
/// Resources the nodes' lock clients use.
const LOCK_RESOURCES: u16 = 3;
/// Clusters up to this size run their lock managers too. (At 256 nodes, with dozens of
/// transitions in flight at once, every rebuild notification restarts a recovery round of
/// 3 x 255 `Done` frames per node; the seed did not settle in two minutes of virtual time and
/// takes minutes of CPU: to be understood before the DLM is trusted at that size.)
pub const DLM_NODES_MAX: u16 = 64;

/// Actions a node may issue in one heartbeat interval: far above what the read path needs (a
/// new master's takeover, and two record reads per node four times an interval), far below a
/// node that spins on a failing write.
pub fn io_budget(nodes: u16) -> u64 {
    16 * nodes as u64 + 64
}

/// A node asked to stop ends within this much of its running time: the longest graceful leave,
/// plus the wait for a master that does not come, plus an election.
pub const STOP_BOUND_MS: Millis = LEAVE_MS_MAX + 4 * TIMING.dead_ms as Millis;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: u16,
    /// Faults are injected until this virtual time.
    pub fault_ms: Millis,
    /// After the faults stop, every node must be joined with nothing in flight within this.
    pub liveness_bound_ms: Millis,
    /// Fault likelihood per node per step, per ten thousand.
    pub fault_rate: u64,
    /// Master-eligible nodes.
    pub eligible: NodeSet,
    /// Node slots beyond `nodes`: in the node table, never started (a configured node that is
    /// down), so that damage to records of a node that cannot run is tried too.
    pub spare_slots: u16,
}

impl Config {
    /// The configuration a seed stands for: mostly small clusters, now and then 16, 32, 64 or
    /// 256 nodes.
    pub fn for_seed(seed: u64) -> Config {
        let nodes = match seed {
            s if s % 2000 == 1999 => 256,
            s if s % 1000 == 999 => 64,
            s if s % 500 == 499 => 32,
            s if s % 100 == 99 => 16,
            s => [3, 3, 4, 4, 5, 5, 6, 8][(s % 8) as usize],
        };
        Config {
            seed,
            nodes,
            fault_ms: 8_000,
            liveness_bound_ms: 4 * TIMING.dead_ms as Millis + 6_000 + nodes as Millis * 20,
            fault_rate: if nodes > 32 { 2 } else { 8 },
            eligible: NodeSet::all(nodes.saturating_add(1).min(NODES_MAX)),
            spare_slots: if nodes < NODES_MAX { 1 } else { 0 },
        }
    }

    /// Node slots on the disk: the running nodes and the spare ones.
    pub fn max_nodes(&self) -> u16 {
        self.nodes + self.spare_slots
    }

    /// No random faults: for scripted scenarios.
    pub fn quiet(nodes: u16, seed: u64) -> Config {
        Config { fault_ms: 0, fault_rate: 0, ..Config::for_seed(seed) }.with_nodes(nodes)
    }

    fn with_nodes(mut self, nodes: u16) -> Config {
        self.nodes = nodes;
        self.eligible = NodeSet::all(nodes + self.spare_slots);
        self
    }
}

/// An invariant broken, with what led to it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub invariant: &'static str,
    pub detail: String,
    pub at_ms: Millis,
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: invariant {} violated at t={} ms: {}",
            self.seed, self.invariant, self.at_ms, self.detail
        )?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay: sdc sim --seed {}", self.seed)
    }
}

/// What a run that kept every invariant did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub nodes: u16,
    pub virtual_ms: Millis,
    pub actions: u64,
    pub epochs: u64,
    pub transitions: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// From the end of the faults until every node was joined and nothing in flight.
    pub converged_ms: Millis,
    /// The most reads and writes any node did in the idle phase, and its heartbeat intervals.
    pub idle_reads_max: u64,
    pub idle_writes_max: u64,
    pub idle_intervals: u64,
    /// The crc32 of the whole disk at the end: a seed replays to the same bytes.
    pub disk_crc: u32,
    /// Locks granted to the nodes' lock clients.
    pub lock_grants: u64,
}

struct SimNode {
    id: NodeId,
    core: Option<MemberCore>,
    db: MembershipDb,
    path: Arc<Mutex<PathFaults>>,
    /// The disk is gone for this node: its I/O never completes.
    lost: bool,
    slow_ms: Millis,
    drift_ppm: i64,
    frozen_until: Millis,
    /// An I/O in flight and when it completes (never, while the disk is lost).
    pending: Option<(Millis, Action)>,
    inbox: Vec<(Millis, Notification)>,
    incarnation: u64,
    /// Positions notified on this node, per transition, in order.
    delivered: BTreeMap<u64, Vec<Position>>,
    /// The node crashes in the middle of its next write.
    crash_in_next_write: bool,
    /// Asked to stop (leave) at this virtual time; running time counted since then.
    stop_asked: Option<Millis>,
    running_since_stop_ms: Millis,
    /// Actions in the current heartbeat interval window, for the I/O budget.
    window: (Millis, u64),
    reads: u64,
    writes: u64,
    exits: Vec<MemberExit>,
    /// The incarnation the current daemon runs as, once it took its slot.
    ran_incarnation: Option<u64>,
    /// What its interconnect reaches, as scripted (`None`: it runs none); unscripted, every
    /// running node whose links are not cut.
    reach: Option<NodeSet>,
    reach_scripted: bool,
    /// Its interconnect links are cut until then (a partition of the network, not the disk).
    links_cut_until: Millis,
    /// Its daemon's lock manager, and the DLM-layer notifications it has not answered yet.
    dlm: Option<DlmCore>,
    dlm_notes: Vec<(u64, Notification)>,
}

impl SimNode {
    fn local(&self, t: Millis) -> Millis {
        (t as i64 + t as i64 * self.drift_ppm / 1_000_000) as Millis
    }
}

/// The nodes, the disk, the faults and the invariant checkers of one run.
pub struct World {
    config: Config,
    t: Millis,
    rng: SplitMix64,
    nodes: Vec<SimNode>,
    disk: SharedDisk,
    layout: Layout,
    trace: VecDeque<String>,
    masters: MasterChecker,
    notified: BTreeMap<(u64, Position), BTreeSet<u16>>,
    answered: BTreeMap<(u64, Position), BTreeSet<u16>>,
    outcome: Outcome,
    healing: bool,
    /// The checker's and the operator's own, fault-free path to the disk.
    observer: MembershipDb,
    /// What the operator's node table holds (every slot, spare ones too).
    table: Vec<NodeEntry>,
    /// `sdc leave` requests not yet honoured by a daemon, per node.
    owed_leaves: Vec<bool>,
    /// Daemons (node, incarnation) that reported a graceful stop (left, or never a member): the
    /// cluster must never have to force one of them out.
    graceful_stops: BTreeSet<(u16, u64)>,
    /// The newest cluster state (epoch, sequence) whose write completed.
    newest_state_written: (u64, u64),
    /// A master resumed from an older state than the newest written (all of its copies were
    /// damaged): graceful stops recorded only there may be forgotten.
    states_lost: bool,
    /// Print every trace line as it happens (`SIM_TRACE` set): for debugging a seed.
    echo: bool,
    /// When each daemon (node, incarnation) ended, and every notification of a forced leave at
    /// a layer: (time, subject, subject incarnation, notified node, order).
    ended_at: BTreeMap<(u16, u64), Millis>,
    forced_leave_notes: Vec<(Millis, NodeId, u64, NodeId, u32)>,
    /// The nodes' lock clients and the interconnect between their lock managers.
    load: Load,
    next_dlm_key: u64,
}

type Check = Result<(), (&'static str, String)>;

fn fail(invariant: &'static str, detail: String) -> Check {
    Err((invariant, detail))
}

/// Runs one seed to the end: the fault phase, then healing, then the idle check. `Err` names
/// the broken invariant.
pub fn run(config: &Config) -> Result<Outcome, Violation> {
    let mut w = World::new(config.clone());
    let r = w.run_phases();
    w.finish(r)
}

impl World {
    pub fn new(config: Config) -> World {
        let config_nodes = config.nodes as usize;
        let layout = Layout::new(config.max_nodes(), SECTOR_BYTES as u32);
        let disk = SharedDisk::new(layout.end());
        let params = FormatParams {
            cluster_name: "sim".into(),
            max_nodes: config.max_nodes(),
            timing: TIMING,
            cluster_uuid: [7; 16],
            link_timeout_ms: LINK_TIMEOUT_MS_DEFAULT,
            cluster_key: [9; CLUSTER_KEY_BYTES],
            now_unix_ms: WALL_EPOCH_MS,
        };
        let setup = Arc::new(Mutex::new(PathFaults::default()));
        let observer =
            MembershipDb::format(Box::new(NodePath::new(&disk, setup)), &params).expect("format the simulated disk");
        let table: Vec<NodeEntry> = NodeId::all(config.max_nodes())
            .map(|id| NodeEntry {
                present: true,
                master_eligible: config.eligible.contains(id),
                name: format!("n{id}"),
                ..NodeEntry::absent(id, 2)
            })
            .collect();
        for entry in &table {
            observer.write_node_entry(entry).expect("node table");
        }
        observer.bump_table_generation(WALL_EPOCH_MS).expect("config stamp");
        let mut rng = SplitMix64::new(config.seed);
        let nodes = NodeId::all(config.nodes)
            .map(|id| {
                let path = Arc::new(Mutex::new(PathFaults::default()));
                let db = MembershipDb::open(Box::new(NodePath::new(&disk, path.clone()))).expect("open");
                let drift_ppm = rng.below(2 * DRIFT_PPM_MAX as u64 + 1) as i64 - DRIFT_PPM_MAX;
                SimNode {
                    id,
                    core: None,
                    db,
                    path,
                    lost: false,
                    slow_ms: 0,
                    drift_ppm,
                    frozen_until: 0,
                    pending: None,
                    inbox: Vec::new(),
                    incarnation: 0,
                    delivered: BTreeMap::new(),
                    crash_in_next_write: false,
                    stop_asked: None,
                    running_since_stop_ms: 0,
                    window: (0, 0),
                    reads: 0,
                    writes: 0,
                    exits: Vec::new(),
                    ran_incarnation: None,
                    reach: None,
                    reach_scripted: false,
                    links_cut_until: 0,
                    dlm: None,
                    dlm_notes: Vec::new(),
                }
            })
            .collect();
        let outcome = Outcome { seed: config.seed, nodes: config.nodes, ..Outcome::default() };
        let mut w = World {
            config,
            t: 1,
            rng,
            nodes,
            disk,
            layout,
            trace: VecDeque::new(),
            masters: MasterChecker::new(),
            notified: BTreeMap::new(),
            answered: BTreeMap::new(),
            outcome,
            healing: false,
            observer,
            table,
            owed_leaves: vec![false; config_nodes],
            graceful_stops: BTreeSet::new(),
            newest_state_written: (0, 0),
            states_lost: false,
            echo: std::env::var_os("SIM_TRACE").is_some(),
            ended_at: BTreeMap::new(),
            forced_leave_notes: Vec::new(),
            load: Load::new(config_nodes, LOCK_RESOURCES),
            next_dlm_key: 1,
        };
        for i in 0..w.nodes.len() {
            w.start_index(i);
        }
        w
    }

    // --- the scripted API -----------------------------------------------------------------------

    /// Virtual time, in milliseconds.
    pub fn now(&self) -> Millis {
        self.t
    }

    /// Runs until `cond` holds, checking every invariant; fails after `limit_ms`.
    pub fn run_until(&mut self, limit_ms: Millis, what: &str, cond: impl Fn(&World) -> bool) -> Result<(), Violation> {
        let start = self.t;
        while !cond(self) {
            if self.t - start > limit_ms {
                let detail = format!("not within {limit_ms} ms: {what}; state: {}", self.state_summary());
                return Err(self.violation("scenario", detail));
            }
            if let Err((inv, detail)) = self.step() {
                return Err(self.violation(inv, detail));
            }
        }
        Ok(())
    }

    /// Runs for `ms` of virtual time, checking every invariant.
    pub fn run_for(&mut self, ms: Millis) -> Result<(), Violation> {
        let until = self.t + ms;
        self.run_until(ms + 10, &format!("{ms} ms"), |w| w.t >= until)
    }

    /// kill -9 of a node's daemon.
    pub fn crash(&mut self, node: NodeId) {
        self.crash_index(node.index());
    }

    /// Starts a node's daemon (a new incarnation), as systemd would.
    pub fn start(&mut self, node: NodeId) {
        self.start_index(node.index());
    }

    /// Freezes a node (SIGSTOP, a stalled VM) for `ms`.
    pub fn freeze(&mut self, node: NodeId, ms: Millis) {
        self.nodes[node.index()].frozen_until = self.t + ms;
        self.log(format!("node {node}: frozen until t={}", self.t + ms));
    }

    /// SIGTERM: a graceful leave.
    pub fn leave(&mut self, node: NodeId) {
        if let Some(c) = self.nodes[node.index()].core.as_mut() {
            c.request_leave();
            self.nodes[node.index()].stop_asked.get_or_insert(self.t);
            self.log(format!("node {node}: asked to leave (signal)"));
        }
    }

    /// `sdc leave`: the operator bumps the node's leave count in the node table.
    pub fn operator_leave(&mut self, node: NodeId) {
        let i = node.index();
        let copies = self.observer.read_node_entry_copies().expect("observer reads");
        let seq = self.observer.next_node_entry_seq(&copies[i]);
        self.table[i] = NodeEntry { seq, leave_requests: self.table[i].leave_requests + 1, ..self.table[i].clone() };
        self.observer.write_node_entry(&self.table[i]).expect("observer writes");
        self.observer.bump_table_generation(self.wall()).expect("observer writes");
        self.owed_leaves[i] = true;
        if self.nodes[i].core.is_some() {
            self.nodes[i].stop_asked.get_or_insert(self.t);
        }
        self.log(format!("node {node}: sdc leave (leave request {})", self.table[i].leave_requests));
    }

    /// I/O touching `region` fails with EIO on this node's path (a bad range of the LUN), or
    /// works again.
    pub fn fail_region(&mut self, node: NodeId, region: RegionKind, fails: bool) {
        let r = self.layout.region(region);
        self.nodes[node.index()].path.lock().expect("single-threaded").eio_range = fails.then_some((r.offset, r.end()));
        let what = if fails { "fails" } else { "healed" };
        self.log(format!("node {node}: I/O to the {} region {what}", region.name()));
    }

    /// Damages both copies of a node's claim block (random bytes).
    /// Scripts what `node`'s interconnect reaches (`None`: it runs none); its daemon publishes
    /// it from the next step on, as the daemon's transport would report it.
    pub fn set_reachable(&mut self, node: NodeId, reach: Option<NodeSet>) {
        self.nodes[node.index()].reach = reach;
        self.nodes[node.index()].reach_scripted = true;
        self.log(format!("node {node}: interconnect reaches {reach:?}"));
    }

    /// Every notification of a forced leave at a layer so far: (time, subject, subject
    /// incarnation, notified node, order).
    pub fn forced_leave_notifications(&self) -> &[(Millis, NodeId, u64, NodeId, u32)] {
        &self.forced_leave_notes
    }

    /// When the daemon `incarnation` of `node` ended (exited, fenced, or was killed).
    pub fn ended_at(&self, node: NodeId, incarnation: u64) -> Option<Millis> {
        self.ended_at.get(&(node.0, incarnation)).copied()
    }

    pub fn damage_claim_block(&mut self, node: NodeId) {
        for copy in 0..2 {
            let off = self.layout.claim_offset(node, copy);
            self.damage_at(off, self.layout.slot_bytes as usize);
        }
    }

    /// The membership state of `node` as the acting master (or else the disk) holds it.
    pub fn member(&self, node: NodeId) -> Member {
        self.truth().map_or(Member::INACTIVE, |s| s.member(node))
    }

    /// The node acting as master now.
    pub fn master(&self) -> Option<NodeId> {
        self.acting_masters().first().map(|(n, _)| *n)
    }

    /// The epoch of the master acting now.
    pub fn master_epoch(&self) -> Option<u64> {
        self.acting_masters().first().map(|(_, e)| *e)
    }

    pub fn is_running(&self, node: NodeId) -> bool {
        self.nodes[node.index()].core.is_some()
    }

    /// How a node's daemons ended, in order.
    pub fn exits(&self, node: NodeId) -> &[MemberExit] {
        &self.nodes[node.index()].exits
    }

    /// The incarnation of the node's current (or last) daemon.
    pub fn incarnation(&self, node: NodeId) -> u64 {
        self.nodes[node.index()].incarnation
    }

    /// The last heartbeat on the disk of `node`.
    pub fn heartbeat(&self, node: NodeId) -> Option<Heartbeat> {
        self.observer.read_heartbeats().ok()?.into_iter().nth(node.index())?.ok()
    }

    /// Notifications delivered so far, all nodes together.
    pub fn notifications(&self) -> usize {
        self.notified.values().map(BTreeSet::len).sum()
    }

    /// Every node joined, with its current incarnation, and nothing in flight.
    pub fn all_joined_and_quiet(&self) -> bool {
        self.converged()
    }

    /// The cluster state as the acting master holds it (or else the newest readable copy).
    pub fn cluster_state(&self) -> Option<ClusterState> {
        self.truth()
    }

    /// Whether the node's daemon is leaving (asked by a signal or by `sdc leave`).
    pub fn wants_leave(&self, node: NodeId) -> bool {
        self.nodes[node.index()].core.as_ref().is_some_and(|c| c.wants_leave())
    }

    /// The reads and writes the node's daemons have done so far.
    pub fn io(&self, node: NodeId) -> (u64, u64) {
        let n = &self.nodes[node.index()];
        (n.reads, n.writes)
    }

    // --- phases ---------------------------------------------------------------------------------

    fn run_phases(&mut self) -> Check {
        while self.t < self.config.fault_ms {
            self.inject_faults()?;
            self.step()?;
        }
        self.heal();
        let healed_at = self.t;
        while !self.converged() {
            if self.t - healed_at > self.config.liveness_bound_ms {
                return fail(
                    "liveness",
                    format!(
                        "not every node joined with nothing in flight within {} ms of the faults stopping; state: {}",
                        self.config.liveness_bound_ms,
                        self.state_summary()
                    ),
                );
            }
            self.step()?;
        }
        self.outcome.converged_ms = self.t - healed_at;
        if let Some(i) = self.owed_leaves.iter().position(|owed| *owed) {
            let node = NodeId::from_index(i);
            return fail("lost-leave", format!("node {node} joined again without honouring the sdc leave asked of it"));
        }
        self.check_idle_io()?;
        self.check_locks()
    }

    /// The converged cluster is watched for a while: each node must do one write and one read
    /// per heartbeat interval (what the read path promises), and stay converged.
    fn check_idle_io(&mut self) -> Check {
        // A settling interval for heartbeats written on the last change.
        let settle = self.t + 2 * TIMING.heartbeat_ms as Millis;
        while self.t < settle {
            self.step()?;
        }
        let before: Vec<(u64, u64)> = self.nodes.iter().map(|n| (n.reads, n.writes)).collect();
        let start = self.t;
        while self.t < start + IDLE_CHECK_MS {
            self.step()?;
        }
        if !self.converged() {
            return fail("idle", format!("the cluster left its converged state while idle: {}", self.state_summary()));
        }
        let intervals = (self.t - start) / TIMING.heartbeat_ms as Millis;
        let (mut reads, mut writes) = (0, 0);
        for (n, (r, w)) in self.nodes.iter().zip(before) {
            reads = reads.max(n.reads - r);
            writes = writes.max(n.writes - w);
        }
        self.outcome.idle_reads_max = reads;
        self.outcome.idle_writes_max = writes;
        self.outcome.idle_intervals = intervals;
        // One of each per interval (and one more of each for the interval boundaries).
        if reads > intervals + 2 || writes > intervals + 2 {
            return fail(
                "idle-io",
                format!("a node did {reads} reads and {writes} writes in {intervals} idle heartbeat intervals"),
            );
        }
        Ok(())
    }

    fn finish(mut self, r: Check) -> Result<Outcome, Violation> {
        match r {
            Ok(()) => {
                self.outcome.virtual_ms = self.t;
                self.outcome.epochs = self.masters.masters().len() as u64;
                self.outcome.disk_crc = self.disk.crc();
                self.outcome.lock_grants = self.load.grants;
                Ok(self.outcome)
            }
            Err((invariant, detail)) => Err(self.violation(invariant, detail)),
        }
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        Violation {
            seed: self.config.seed,
            invariant,
            detail,
            at_ms: self.t,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn wall(&self) -> u64 {
        WALL_EPOCH_MS + self.t
    }

    fn log(&mut self, line: String) {
        if self.echo {
            eprintln!("t={:>6} {line}", self.t);
        }
        if self.trace.len() >= TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={:>6} {line}", self.t));
    }

    fn start_index(&mut self, i: usize) {
        let id = self.nodes[i].id;
        // As `sdc join` does: read the node table, the stamp and the node's own records; a
        // daemon that cannot read them does not start (and is started again later).
        let db = &self.nodes[i].db;
        let read = (|| {
            let table = db.read_node_table()?;
            let stamp = db.read_config_stamp()?;
            let leave_requests = table[i].as_ref().map_or(0, |e| e.leave_requests);
            let (own, incarnation_floor) = own_records(db, id, leave_requests)?;
            Ok::<_, membership_db::error::DbError>((table, stamp, own, incarnation_floor))
        })();
        let (table, stamp, own, incarnation_floor) = match read {
            Ok(r) => r,
            Err(e) => {
                self.log(format!("node {id}: daemon failed to start: {e}"));
                return;
            }
        };
        let config = NodeConfig {
            node: id,
            max_nodes: self.config.max_nodes(),
            timing: TIMING,
            cluster_uuid: [7; 16],
            table: TableView::of(&table),
            table_generation: stamp.map_or(0, |s| s.table_generation),
            incarnation_floor,
            pid: id.0 as u32,
            host: "sim".into(),
            link_timeout_ms: LINK_TIMEOUT,
        };
        let node = &mut self.nodes[i];
        let now = node.local(self.t);
        node.core = Some(MemberCore::new(config, standard_layers(), own, now));
        node.dlm = (self.config.nodes <= DLM_NODES_MAX).then(|| DlmCore::new(id));
        node.dlm_notes.clear();
        node.pending = None;
        node.inbox.clear();
        node.delivered.clear();
        node.stop_asked = None;
        node.running_since_stop_ms = 0;
        node.ran_incarnation = None;
        self.load.node_started(i, 1);
        self.log(format!("node {id}: daemon started"));
    }

    fn count(&mut self, fault: &'static str) {
        *self.outcome.faults.entry(fault).or_default() += 1;
    }

    /// The cluster state as the acting master holds it (what the cluster acts on), or else
    /// the newest readable copy.
    fn truth(&self) -> Option<ClusterState> {
        let master = self.master();
        master
            .and_then(|m| self.nodes[m.index()].core.as_ref()?.cluster_state().cloned())
            .or_else(|| self.observer.read_cluster_state().ok().flatten())
    }

    fn state_summary(&self) -> String {
        match self.truth() {
            None => "no cluster state".into(),
            Some(s) => {
                let members: Vec<String> = NodeId::all(self.config.nodes)
                    .map(|n| format!("{n}:{}/{}", s.member(n).state.name(), s.member(n).incarnation))
                    .collect();
                let flight: Vec<String> = s
                    .transitions
                    .iter()
                    .map(|t| format!("{} of {} at {:?}", t.kind.name(), t.subject, t.position))
                    .collect();
                let heartbeats: Vec<String> = self
                    .observer
                    .read_heartbeats()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                h.as_ref().map_or("corrupt".into(), |h| {
                                    format!("{}:{}/{}", h.node, h.state.name(), h.incarnation)
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let daemons: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        format!("{}:{}", n.id, if n.core.is_some() { n.incarnation.to_string() } else { "-".into() })
                    })
                    .collect();
                format!(
                    "epoch {} seq {} members [{}] in flight [{}] heartbeats [{}] daemons [{}]",
                    s.epoch,
                    s.seq,
                    members.join(" "),
                    flight.join("; "),
                    heartbeats.join(" "),
                    daemons.join(" ")
                )
            }
        }
    }

    fn converged(&self) -> bool {
        let Some(s) = self.truth() else { return false };
        self.master().is_some()
            && s.transitions.is_empty()
            && self.nodes.iter().zip(&self.table).all(|(n, entry)| {
                n.core.as_ref().is_some_and(|c| {
                    // Healthy: a heartbeat landed in the last few intervals (not about to fence).
                    let recent = (TIMING.fence_ms - 3 * TIMING.heartbeat_ms) as Millis;
                    let healthy = c.fence_deadline().is_some_and(|d| d >= n.local(self.t) + recent);
                    // No leave asked and not yet done (by a signal, or by `sdc leave`).
                    healthy && !c.wants_leave() && c.leave_requests_seen() >= entry.leave_requests
                }) && s.member(n.id).state == MemberState::Joined
                    && s.member(n.id).incarnation == n.incarnation
            })
    }

    /// Faults stop: paths heal, nothing frozen, every stopped daemon restarts, and the operator
    /// repairs the node table and the config stamp (the records the cluster cannot rewrite).
    fn heal(&mut self) {
        self.healing = true;
        for n in &mut self.nodes {
            *n.path.lock().expect("single-threaded") = PathFaults::default();
            n.lost = false;
            n.slow_ms = 0;
            n.frozen_until = 0;
            n.links_cut_until = 0;
        }
        let copies = self.observer.read_node_entry_copies().expect("observer reads");
        let mut repaired = false;
        for (i, c) in copies.iter().enumerate() {
            if c.iter().any(|c| c.is_err()) || newest(c, |e| e.seq).ok().as_ref() != Some(&self.table[i]) {
                let seq = self.observer.next_node_entry_seq(c);
                self.table[i].seq = seq;
                self.observer.write_node_entry(&self.table[i]).expect("observer writes");
                // Both copies: the other one too.
                self.table[i].seq = seq + 1;
                self.observer.write_node_entry(&self.table[i]).expect("observer writes");
                repaired = true;
            }
        }
        if repaired || self.observer.read_config_stamp().expect("observer reads").is_err() {
            self.observer.bump_table_generation(self.wall()).expect("observer writes");
        }
        self.log("faults stop; healing".into());
    }

    /// Random bytes over `len` bytes at `offset` (a record's slot or copy).
    fn damage_at(&mut self, offset: u64, len: usize) {
        let start = self.rng.below(len as u64 / 2) as usize;
        let bytes: Vec<u8> = (0..len - start).map(|_| self.rng.below(256) as u8).collect();
        self.disk.damage(offset + start as u64, &bytes);
    }

    /// Damages one record at rest: a heartbeat, a claim copy, a request or acknowledgement
    /// copy, a cluster state copy, a node table copy or the config stamp.
    fn damage_random_record(&mut self) {
        let node = NodeId::from_index(self.rng.below(self.config.max_nodes() as u64) as usize);
        let copy = self.rng.below(2) as usize;
        let slot = self.layout.slot_bytes as usize;
        let (what, offset, len) = match self.rng.below(7) {
            0 => ("heartbeat", self.layout.heartbeat_offset(node), slot),
            1 => ("claim copy", self.layout.claim_offset(node, copy), slot),
            2 => ("request copy", self.layout.node_request_offset(node, copy), NODE_RECORD_BYTES),
            3 => ("acknowledgement copy", self.layout.ack_offset(node, copy), NODE_RECORD_BYTES),
            4 => {
                let c = self.rng.below(CLUSTER_STATE_COPIES) as usize;
                ("cluster state copy", self.layout.cluster_state_offset(c), CLUSTER_STATE_RECORD_BYTES)
            }
            5 => ("node table copy", self.layout.node_entry_offset(node, copy), slot),
            _ => ("config stamp", self.layout.config_stamp_offset(), slot),
        };
        self.damage_at(offset, len);
        self.log(format!("damaged the {what} of node {node} at offset {offset}"));
    }

    fn inject_faults(&mut self) -> Check {
        let rate = self.config.fault_rate;
        for i in 0..self.nodes.len() {
            if self.rng.below(10_000) >= rate {
                continue;
            }
            let id = self.nodes[i].id;
            match self.rng.below(12) {
                0 => {
                    self.crash_index(i);
                    self.count("crash");
                }
                1 => self.nodes[i].crash_in_next_write = self.nodes[i].core.is_some(),
                2 => {
                    let until = self.t + self.rng.below(3 * TIMING.dead_ms as u64);
                    self.nodes[i].frozen_until = until;
                    self.log(format!("node {id}: frozen until t={until}"));
                    self.count("freeze");
                }
                3 => {
                    let eio = !self.nodes[i].path.lock().expect("single-threaded").eio;
                    self.nodes[i].path.lock().expect("single-threaded").eio = eio;
                    self.log(format!("node {id}: path {}", if eio { "fails with EIO" } else { "healed" }));
                    self.count("eio");
                }
                4 => {
                    self.nodes[i].slow_ms = self.rng.below(SLOW_IO_MS_MAX + 1);
                    let ms = self.nodes[i].slow_ms;
                    self.log(format!("node {id}: I/O now takes {ms} ms"));
                    self.count("slow-io");
                }
                5 => {
                    self.nodes[i].lost = true;
                    self.log(format!("node {id}: lost the disk"));
                    self.count("disk-loss");
                }
                6 => {
                    if self.nodes[i].core.is_some() {
                        self.leave(id);
                        self.count("leave");
                    }
                }
                7 => {
                    self.operator_leave(id);
                    self.count("sdc-leave");
                }
                8 => {
                    self.damage_random_record();
                    self.count("damage");
                }
                9 => {
                    // A bad range of the LUN on this node's path: I/O touching one region fails
                    // while the rest (its heartbeats) succeeds.
                    let region = [RegionKind::NodeRecords, RegionKind::Claim, RegionKind::ClusterState]
                        [self.rng.below(3) as usize];
                    let fails = self.nodes[i].path.lock().expect("single-threaded").eio_range.is_none();
                    self.fail_region(id, region, fails);
                    self.count("region-eio");
                }
                10 => {
                    // The interconnect breaks for this node (not the disk): healed within the
                    // link timeout, or long enough for the master to force it out.
                    let ms = self.rng.below(5 * LINK_TIMEOUT as u64 / 2);
                    self.nodes[i].links_cut_until = self.t + ms;
                    self.log(format!("node {id}: interconnect links cut for {ms} ms"));
                    self.count(if ms > LINK_TIMEOUT as u64 { "links-cut-long" } else { "links-cut" });
                }
                _ => {
                    if self.nodes[i].core.is_none() {
                        self.start_index(i);
                        self.count("restart");
                    }
                }
            }
        }
        Ok(())
    }

    /// kill -9: a write in flight may land torn (a prefix of its sectors).
    fn crash_index(&mut self, i: usize) {
        let id = self.nodes[i].id;
        if let Some((_, action)) = self.nodes[i].pending.take() {
            if is_write(&action) && !self.nodes[i].lost {
                // Mostly within the first record; sometimes past it, into the next write of
                // the action (a cluster state is up to 64 sectors, written twice).
                let sectors = if self.rng.below(2) == 0 { self.rng.below(8) } else { self.rng.below(129) } as usize;
                self.nodes[i].path.lock().expect("single-threaded").tear_after_sectors = Some(sectors);
                let _ = perform_member(&self.nodes[i].db, action, self.wall());
                self.nodes[i].path.lock().expect("single-threaded").tear_after_sectors = None;
                self.log(format!("node {id}: crashed mid-write, {sectors} sector(s) landed"));
                self.count("torn-write");
            }
        }
        self.nodes[i].core = None;
        self.stop_dlm(i);
        self.nodes[i].inbox.clear();
        self.nodes[i].stop_asked = None;
        self.log(format!("node {id}: crashed (kill -9)"));
    }

    /// One step: every node in an order drawn from the seed, then time moves on.
    pub fn step(&mut self) -> Check {
        let n = self.nodes.len();
        let offset = self.rng.below(n as u64) as usize;
        for k in 0..n {
            let i = (k + offset) % n;
            if self.healing && self.nodes[i].core.is_none() {
                self.start_index(i);
            }
            self.step_node(i)?;
        }
        self.deliver_frames()?;
        // A frozen node's clients are frozen with it: they use nothing until it thaws, and then
        // it fences first if the others may have recovered its locks.
        let t = self.t;
        check_compatible(self.nodes.iter().filter(|n| n.frozen_until <= t).filter_map(|n| n.dlm.as_ref()))?;
        self.check_masters()?;
        for (i, node) in self.nodes.iter().enumerate() {
            // Honoured: the daemon counts the request as seen, and leaves (or has stopped).
            if let Some(c) = node.core.as_ref() {
                if c.leave_requests_seen() >= self.table[i].leave_requests && (c.wants_leave() || c.exit().is_some()) {
                    self.owed_leaves[i] = false;
                }
            }
        }
        let dt = 1 + self.rng.below(5);
        for node in &mut self.nodes {
            // A node asked to stop counts its running time (not frozen, not stuck on a lost disk).
            let running = node.core.is_some() && node.frozen_until <= self.t && !(node.lost && node.pending.is_some());
            if node.stop_asked.is_some() && running {
                node.running_since_stop_ms += dt;
                if node.running_since_stop_ms > STOP_BOUND_MS {
                    let id = node.id;
                    return fail(
                        "bounded-stop",
                        format!("node {id} was asked to stop and still runs after {STOP_BOUND_MS} ms"),
                    );
                }
            }
        }
        self.t += dt;
        Ok(())
    }

    fn step_node(&mut self, i: usize) -> Check {
        if self.nodes[i].core.is_none() || self.nodes[i].frozen_until > self.t {
            return Ok(());
        }
        let id = self.nodes[i].id;
        let local = self.nodes[i].local(self.t);
        // The node's subsystems answer what is due.
        let due: Vec<Notification> = {
            let node = &mut self.nodes[i];
            let (due, later): (Vec<_>, Vec<_>) = node.inbox.drain(..).partition(|(t, _)| *t <= self.t);
            node.inbox = later;
            due.into_iter().map(|(_, n)| n).collect()
        };
        for note in due {
            // The lock manager answers its own barriers, when its recovery is done.
            let barrier = dlm::driver::barrier_of(&note, manager::order::DLM);
            let node = &mut self.nodes[i];
            if let (Some(mut b), Some(dlm)) = (barrier, node.dlm.as_mut()) {
                b.key = self.next_dlm_key;
                self.next_dlm_key += 1;
                node.dlm_notes.push((b.key, note));
                dlm.handle_barrier(b);
                continue;
            }
            self.answered.entry(note.key()).or_default().insert(id.0);
            self.nodes[i].core.as_mut().expect("running").handle_reply(note.key(), false);
        }
        let reach = self.reach_of(i);
        self.nodes[i].core.as_mut().expect("running").set_reachable(local, reach);
        // A node past its fence deadline (it was frozen, or its disk stalled) fences before
        // anything else runs: its watchdog ends the process, lock clients and all.
        let fenced = self.nodes[i].core.as_ref().expect("running").fence_deadline().is_some_and(|d| local > d);
        if let (Some(dlm), false) = (self.nodes[i].dlm.as_mut(), fenced) {
            dlm.handle_timeout(local);
            for said in self.load.act(i, dlm, local, &mut self.rng) {
                self.log(format!("node {id}: {said}"));
            }
            self.drain_dlm(i)?;
        }
        // An I/O in flight: complete it when due; a lost disk never completes, and the fence
        // watchdog thread ends the process at the deadline.
        if let Some((at, _)) = &self.nodes[i].pending {
            if self.nodes[i].lost {
                #[cfg(feature = "planted-bugs")]
                if membership_db::planted::active(membership_db::planted::Bug::NodeDoesNotFence) {
                    return Ok(()); // its watchdog does not fence either
                }
                let deadline = self.nodes[i].core.as_ref().expect("running").fence_deadline();
                if deadline.is_some_and(|d| local >= d) {
                    self.nodes[i].pending = None;
                    self.end_node(
                        i,
                        MemberExit::Node(Exit::Fenced(FenceReason::HeartbeatTimeout { since_ms: 0 })),
                        "watchdog fenced it (disk lost)",
                    );
                }
                return Ok(());
            }
            if *at > self.t {
                return Ok(());
            }
            let (_, action) = self.nodes[i].pending.take().expect("checked");
            self.complete(i, action)?;
        }
        // Bounded like the driver's loop: a node that wants more waits for the next step.
        for _ in 0..manager::daemon::ACTIONS_PER_LOOP_MAX {
            let local = self.nodes[i].local(self.t);
            let Some(core) = self.nodes[i].core.as_mut() else { break };
            let Some(action) = core.poll_action(local) else { break };
            self.check_issue(i, &action)?;
            if self.nodes[i].crash_in_next_write && is_write(&action) && !self.healing {
                self.nodes[i].crash_in_next_write = false;
                self.nodes[i].pending = Some((self.t, action));
                self.crash_index(i);
                self.count("crash");
                return Ok(());
            }
            if self.nodes[i].lost || self.nodes[i].slow_ms > 0 {
                let at = self.t + self.nodes[i].slow_ms.max(1);
                self.nodes[i].pending = Some((at, action));
                break;
            }
            self.complete(i, action)?;
        }
        if let Some(exit) = self.nodes[i].core.as_ref().and_then(|c| c.exit().cloned()) {
            if matches!(exit, MemberExit::ForcedOut(_)) {
                self.mark_fenced(i);
            }
            self.end_node(i, exit, "exited");
        }
        Ok(())
    }

    /// A node forced out has stopped its subsystems (its inbox is dropped with it): it marks
    /// its heartbeat fenced, as the daemon does, unless (with random faults, one time in four)
    /// it is killed first, when the others wait `dead_ms` for its heartbeat to go still.
    fn mark_fenced(&mut self, i: usize) {
        let id = self.nodes[i].id;
        if self.nodes[i].lost || (self.config.fault_rate > 0 && self.t.is_multiple_of(4)) {
            self.log(format!("node {id}: forced out, ends without marking its heartbeat fenced"));
            return;
        }
        let local = self.nodes[i].local(self.t);
        let Some(action) = self.nodes[i].core.as_mut().and_then(|c| c.mark_fenced(local)) else { return };
        let r = perform_member(&self.nodes[i].db, action, self.wall());
        self.log(format!("node {id}: forced out; marked its heartbeat fenced: {r:?}"));
    }

    fn end_node(&mut self, i: usize, exit: MemberExit, how: &str) {
        let id = self.nodes[i].id;
        // The incarnation this daemon ran as (none if it stopped before it took its slot: that
        // incarnation number was never used, and the next daemon may take it).
        self.nodes[i].core = None;
        self.stop_dlm(i);
        let ran = self.nodes[i].ran_incarnation.take();
        if let Some(incarnation) = ran {
            self.ended_at.insert((id.0, incarnation), self.t);
        }
        self.nodes[i].inbox.clear();
        self.nodes[i].stop_asked = None;
        self.log(format!("node {id}: {how}: {exit:?}"));
        if matches!(exit, MemberExit::Node(Exit::Stopped) | MemberExit::StoppedWithoutLeave(_)) {
            self.owed_leaves[i] = false;
        }
        if let (MemberExit::Node(Exit::Stopped), Some(incarnation)) = (&exit, ran) {
            self.graceful_stops.insert((id.0, incarnation));
        }
        self.count(match exit {
            MemberExit::Node(Exit::Stopped) => "left",
            MemberExit::StoppedWithoutLeave(_) => "stopped-without-leave",
            MemberExit::Node(Exit::Fenced(_)) => "fenced",
            MemberExit::ForcedOut(_) => "forced-out",
            _ => "refused",
        });
        self.nodes[i].exits.push(exit);
    }

    /// Performs an action's I/O and hands the result to the node.
    fn complete(&mut self, i: usize, action: Action) -> Check {
        let id = self.nodes[i].id;
        let late = match &action {
            Action::WriteClusterState(s) if s.epoch + 1 < self.masters.newest_epoch() => Some(s.epoch),
            _ => None,
        };
        let newest_before = late.map(|_| self.newest_state_on_disk());
        self.count_io(i, &action)?;
        self.outcome.actions += 1;
        let written = match &action {
            Action::WriteClusterState(s) => Some((s.epoch, s.seq)),
            _ => None,
        };
        let completion = perform_member(&self.nodes[i].db, action, self.wall());
        if let (Some(key), manager::member::Completion::Written(Ok(()))) = (written, &completion) {
            self.newest_state_written = self.newest_state_written.max(key);
        }
        if let (Some(epoch), Some(before)) = (late, newest_before) {
            self.check_late_state_write(id, epoch, before)?;
        }
        let local = self.nodes[i].local(self.t);
        let Some(core) = self.nodes[i].core.as_mut() else { return Ok(()) };
        core.handle_completion(local, completion);
        self.nodes[i].incarnation = core.node().incarnation();
        let mut events = Vec::new();
        while let Some(e) = self.nodes[i].core.as_mut().expect("running").poll_event() {
            events.push(e);
        }
        for e in events {
            if let MemberEvent::Node(node::Event::Started { incarnation }) = &e {
                self.nodes[i].ran_incarnation = Some(*incarnation);
            }
            if let MemberEvent::TookOver { from, .. } = &e {
                if from.unwrap_or((0, 0)) < self.newest_state_written {
                    // Every copy of the newest states was damaged: the cluster resumes from an
                    // older one, and what it recorded since (a graceful leave) is lost with them.
                    self.states_lost = true;
                }
            }
            if let MemberEvent::Sequenced(SeqEvent::Started(t)) = &e {
                self.outcome.transitions += 1;
                if t.kind == TransitionKind::ForcedLeave
                    && !self.states_lost
                    && self.graceful_stops.contains(&(t.subject.0, t.subject_incarnation))
                {
                    return fail(
                        "honest-stop",
                        format!(
                            "node {} incarnation {} reported a graceful stop, and is being forced out",
                            t.subject, t.subject_incarnation
                        ),
                    );
                }
            }
            if !matches!(e, MemberEvent::Node(node::Event::NodesLive { .. })) {
                self.log(format!("node {id}: {e}"));
            }
        }
        while let Some(note) = self.nodes[i].core.as_mut().expect("running").poll_notification() {
            self.check_notification(i, &note)?;
            self.notified.entry(note.key()).or_default().insert(id.0);
            self.log(format!(
                "node {id}: notified {} of node {} at {:?}",
                note.kind.name(),
                note.subject,
                note.position
            ));
            let delay = self.rng.below(3 * TIMING.heartbeat_ms as u64);
            self.nodes[i].inbox.push((self.t + delay, note));
        }
        self.check_masters()
    }

    /// What node `i`'s interconnect reaches: as scripted, or every other running node when
    /// neither end's links are cut (a frozen node's links stay up: its peers' frames wait in
    /// its socket buffers).
    fn reach_of(&self, i: usize) -> Option<NodeSet> {
        if self.nodes[i].reach_scripted {
            return self.nodes[i].reach;
        }
        if self.config.nodes > DLM_NODES_MAX {
            return None; // no lock manager, no interconnect
        }
        let cut = |j: usize| self.nodes[j].links_cut_until > self.t;
        let peers: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&j| j != i && !cut(i) && !cut(j) && self.nodes[j].core.is_some())
            .map(|j| self.nodes[j].id)
            .collect();
        Some(NodeSet::of(&peers))
    }

    /// The daemon of node `i` ended: its lock manager and its clients with it, and what it was
    /// notified of (a later daemon of the node, taking part in the same transitions as a
    /// joining node does, is notified afresh).
    fn stop_dlm(&mut self, i: usize) {
        self.nodes[i].dlm = None;
        self.nodes[i].dlm_notes.clear();
        self.load.node_gone(i);
        let id = self.nodes[i].id.0;
        for notified in self.notified.values_mut() {
            notified.remove(&id);
        }
    }

    /// Takes node `i`'s lock manager outputs: frames, client events, and the barriers it is
    /// done with, answered to the membership manager.
    fn drain_dlm(&mut self, i: usize) -> Check {
        let incarnations: Vec<u64> = self.nodes.iter().map(|n| n.incarnation).collect();
        let t = self.nodes[i].local(self.t);
        let mut lines = Vec::new();
        let Some(dlm) = self.nodes[i].dlm.as_mut() else { return Ok(()) };
        let acks = self.load.drain(i, dlm, t, &mut self.rng, &|j| incarnations[j], &mut |l| lines.push(l))?;
        for line in lines {
            self.log(line);
        }
        let id = self.nodes[i].id;
        for key in acks {
            let Some(k) = self.nodes[i].dlm_notes.iter().position(|(key2, _)| *key2 == key) else { continue };
            let (_, note) = self.nodes[i].dlm_notes.remove(k);
            self.answered.entry(note.key()).or_default().insert(id.0);
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.handle_reply(note.key(), false);
            }
        }
        Ok(())
    }

    /// Frames due on the interconnect reach their lock managers (a frozen node's wait in its
    /// socket buffers; a cut link holds them until it heals).
    fn deliver_frames(&mut self) -> Check {
        let t = self.t;
        let held: Vec<bool> =
            self.nodes.iter().map(|n| n.links_cut_until > t || n.frozen_until > t || n.dlm.is_none()).collect();
        let incarnations: Vec<u64> = self.nodes.iter().map(|n| n.incarnation).collect();
        let due = self.load.due_frames(t, &|i| held[i], &|i| incarnations[i])?;
        for (a, b, frames) in due {
            let from = self.nodes[a].id;
            let Some(dlm) = self.nodes[b].dlm.as_mut() else { continue };
            for f in frames {
                dlm.handle_frame(from, f);
            }
            self.drain_dlm(b)?;
        }
        Ok(())
    }

    /// The converged cluster's lock managers settle with every lock where its master says,
    /// then release everything: no lock lost by recovery, none left behind, every request
    /// ended.
    fn check_locks(&mut self) -> Check {
        self.load.new_requests = false;
        self.load.holding = true;
        if self.config.nodes > DLM_NODES_MAX {
            return Ok(());
        }
        let quiet = |w: &World| {
            w.load.links_empty()
                && w.nodes.iter().all(|n| n.dlm.as_ref().is_some_and(|d| d.state() == dlm::State::Running))
        };
        let start = self.t;
        while !quiet(self) {
            if self.t - start > LOCKS_SETTLE_MS {
                return fail("liveness", format!("the lock managers did not settle within {LOCKS_SETTLE_MS} ms"));
            }
            self.step()?;
        }
        let cores: Vec<&DlmCore> = self.nodes.iter().filter_map(|n| n.dlm.as_ref()).collect();
        check_queues_match(&cores)?;
        self.load.release_all();
        let start = self.t;
        loop {
            let released = self.load.clients_idle()
                && self.nodes.iter().filter_map(|n| n.dlm.as_ref()).all(|d| d.lock_count() == 0);
            if released && quiet(self) {
                break;
            }
            if self.t - start > LOCKS_SETTLE_MS {
                let held: Vec<String> =
                    (0..self.nodes.len()).map(|i| format!("node {}: [{}]", i + 1, self.load.describe(i))).collect();
                return fail(
                    "liveness",
                    format!("locks not all released within {LOCKS_SETTLE_MS} ms: {}", held.join("; ")),
                );
            }
            self.step()?;
        }
        let cores: Vec<&DlmCore> = self.nodes.iter().filter_map(|n| n.dlm.as_ref()).collect();
        check_all_released(&cores)
    }

    /// Counts a node's I/O: its budget per heartbeat interval (a node must never spin on a
    /// failing I/O), and its reads and writes for the idle check.
    fn count_io(&mut self, i: usize, action: &Action) -> Check {
        let budget = io_budget(self.config.nodes);
        let node = &mut self.nodes[i];
        if is_write(action) {
            node.writes += 1;
        } else {
            node.reads += 1;
        }
        let interval = TIMING.heartbeat_ms as Millis;
        if self.t >= node.window.0 + interval {
            node.window = (self.t, 0);
        }
        node.window.1 += 1;
        if node.window.1 > budget {
            let id = node.id;
            return fail(
                "io-budget",
                format!("node {id} issued more than {budget} I/Os in one heartbeat interval (last: {action:?})"),
            );
        }
        Ok(())
    }

    // --- invariants (DESIGN section 8) --------------------------------------------------------

    /// Nodes acting as master now: running, not frozen, not stuck on a lost disk, lease valid.
    fn acting_masters(&self) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter(|n| n.frozen_until <= self.t && !(n.lost && n.pending.is_some()))
            .filter_map(|n| {
                let c = n.core.as_ref()?;
                let lease = c.exit().is_none() && c.fence_deadline().is_some_and(|d| n.local(self.t) < d);
                c.node().master_epoch().filter(|_| lease).map(|e| (n.id, e))
            })
            .collect()
    }

    /// Invariant 1: at most one acting master at any instant, one master per epoch ever.
    fn check_masters(&mut self) -> Check {
        let acting = self.acting_masters();
        match self.masters.check(&acting) {
            Ok(new) => {
                for (node, epoch) in new {
                    self.log(format!("node {node}: acting master of epoch {epoch}"));
                }
                Ok(())
            }
            Err(v) => fail(v.invariant, v.detail),
        }
    }

    /// Invariant 3: cluster-wide records are written only by the acting master, in its epoch.
    fn check_issue(&mut self, i: usize, action: &Action) -> Check {
        if let Action::WriteClusterState(s) = action {
            let id = self.nodes[i].id;
            let acting = self.acting_masters();
            if !acting.contains(&(id, s.epoch)) {
                return fail(
                    "cluster-state-writer",
                    format!(
                        "node {id} writes the cluster state of epoch {} while acting masters are {acting:?}",
                        s.epoch
                    ),
                );
            }
        }
        Ok(())
    }

    fn newest_state_on_disk(&self) -> (u64, u64) {
        self.observer.read_cluster_state().ok().flatten().map_or((0, 0), |s| (s.epoch, s.seq))
    }

    /// A write issued by a master may land late (a frozen VM's I/O lands when it resumes, epochs
    /// later). Epoch parity keeps it off its successor's copies only; two epochs on it lands on
    /// the current master's, and it must not destroy the newest state there (the state is
    /// written to both copies of its parity, so one survives).
    fn check_late_state_write(&mut self, id: NodeId, epoch: u64, before: (u64, u64)) -> Check {
        self.log(format!(
            "node {id}'s cluster state of epoch {epoch} landed late, in epoch {}",
            self.masters.newest_epoch()
        ));
        let after = self.newest_state_on_disk();
        if after < before {
            return fail(
                "cluster-state-writer",
                format!(
                    "node {id}'s late write of epoch {epoch} destroyed the newest state {before:?} (now {after:?})"
                ),
            );
        }
        Ok(())
    }

    /// Invariant 2: on each node, a transition's positions come in order, each once; and a
    /// position is notified only after every node notified of the previous one answered it
    /// (or was dropped from the transition by being forced out or leaving).
    fn check_notification(&mut self, i: usize, n: &Notification) -> Check {
        let node = self.nodes[i].id;
        if n.kind == TransitionKind::ForcedLeave {
            self.forced_leave_notes.push((self.t, n.subject, n.subject_incarnation, node, n.position.order));
            // Recovery waits for the fence: the subject's daemon must be unable to act (ended,
            // or its lease lapsed so that it fences before its next write).
            if let Some(subject) = self.nodes.get(n.subject.index()) {
                let local = subject.local(self.t);
                let acting = subject.core.as_ref().is_some_and(|c| {
                    c.exit().is_none()
                        && c.node().incarnation() == n.subject_incarnation
                        && c.fence_deadline().is_some_and(|d| local < d)
                });
                if acting {
                    return fail(
                        "fence-before-recovery",
                        format!(
                            "node {node} notified of the forced leave of node {} at {:?} while that daemon (incarnation {}) may still act",
                            n.subject, n.position, n.subject_incarnation
                        ),
                    );
                }
            }
        }
        let Some(state) = self.nodes[i].core.as_ref().and_then(|c| c.cluster_state().cloned()) else { return Ok(()) };
        let transition = state.transitions.iter().find(|t| t.id == n.transition);
        let upper = transition.and_then(|t| t.upper);
        let seq = steps::sequence(&state.layers, n.kind, upper);
        let Some(at) = seq.iter().position(|p| *p == n.position) else { return Ok(()) };
        let delivered = self.nodes[i].delivered.entry(n.transition).or_default();
        if let Some(last) = delivered.last() {
            let last_at = seq.iter().position(|p| p == last);
            if last_at.is_some_and(|l| l >= at) {
                return fail(
                    "order",
                    format!("node {node} notified of {:?} of transition {} after {:?}", n.position, n.transition, last),
                );
            }
        }
        delivered.push(n.position);
        if at == 0 {
            return Ok(());
        }
        let prev = (n.transition, seq[at - 1]);
        let participants = transition.map_or(NodeSet::EMPTY, |t| t.participants);
        let notified = self.notified.get(&prev).cloned().unwrap_or_default();
        let answered = self.answered.get(&prev).cloned().unwrap_or_default();
        for waiting in notified.difference(&answered) {
            let w = NodeId(*waiting);
            let dropped = !participants.contains(w);
            let alive = self.nodes[w.index()].core.is_some();
            if alive && !dropped {
                return fail(
                    "barrier",
                    format!(
                        "node {node} notified of {:?} of transition {} while node {w} has not answered {:?}",
                        n.position, n.transition, prev.1
                    ),
                );
            }
        }
        Ok(())
    }
}

fn is_write(a: &Action) -> bool {
    matches!(
        a,
        Action::WriteClusterState(_)
            | Action::WriteRequest(_)
            | Action::WriteAcks(_)
            | Action::Node(node::Action::WriteHeartbeat(_))
            | Action::Node(node::Action::WriteClaim(_))
    )
}

/// The layers every simulated node registers: the four built-in orders, some with two barriers.
pub fn standard_layers() -> Vec<LayerSpec> {
    vec![
        LayerSpec {
            order: manager::order::DLM,
            name: "dlm".into(),
            barriers: Barriers { join: dlm::BARRIERS, leave: dlm::BARRIERS, forced_leave: dlm::BARRIERS },
        },
        LayerSpec { order: 20, name: "vdm".into(), barriers: Barriers::one_each() },
        LayerSpec { order: 30, name: "sfs".into(), barriers: Barriers { join: 1, leave: 2, forced_leave: 1 } },
        LayerSpec { order: 40, name: "em".into(), barriers: Barriers::one_each() },
    ]
}
