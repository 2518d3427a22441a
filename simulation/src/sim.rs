//! One simulated run: N nodes running the real [`MemberCore`] over a [`SharedDisk`] in virtual
//! time, faults drawn from the seed, invariants checked after every action, then a healing
//! phase in which every transition must complete within a bound.

use crate::disk::{NodePath, PathFaults, SharedDisk, SECTOR_BYTES};
use layers::daemon::perform_member;
use layers::member::{Action, MemberCore, MemberEvent, MemberExit};
use layers::participant::Notification;
use layers::sequencer::SeqEvent;
use layers::steps;
use membership_db::db::{FormatParams, MembershipDb};
use membership_db::format::*;
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
/// Slow I/O takes at most this long: less than the fence margin's allowance for one late I/O.
pub const SLOW_IO_MS_MAX: Millis = 50;
/// Trace lines kept for a violation report.
pub const TRACE_LINES: usize = 80;

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
}

impl Config {
    /// The configuration a seed stands for: mostly small clusters, now and then 16 or 32 nodes.
    pub fn for_seed(seed: u64) -> Config {
        let nodes = match seed {
            s if s % 500 == 499 => 32,
            s if s % 100 == 99 => 16,
            s => [3, 3, 4, 4, 5, 5, 6, 8][(s % 8) as usize],
        };
        Config { seed, nodes, fault_ms: 8_000, liveness_bound_ms: 4 * TIMING.dead_ms as Millis + 6_000, fault_rate: 8 }
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
}

impl SimNode {
    fn local(&self, t: Millis) -> Millis {
        (t as i64 + t as i64 * self.drift_ppm / 1_000_000) as Millis
    }
}

struct World {
    config: Config,
    t: Millis,
    rng: SplitMix64,
    nodes: Vec<SimNode>,
    trace: VecDeque<String>,
    masters: BTreeMap<u64, NodeId>,
    notified: BTreeMap<(u64, Position), BTreeSet<u16>>,
    answered: BTreeMap<(u64, Position), BTreeSet<u16>>,
    outcome: Outcome,
    healing: bool,
    /// The checker's own, fault-free path to the disk.
    observer: MembershipDb,
}

type Check = Result<(), (&'static str, String)>;

fn fail(invariant: &'static str, detail: String) -> Check {
    Err((invariant, detail))
}

/// Runs one seed to the end: the fault phase, then healing. `Err` names the broken invariant.
pub fn run(config: &Config) -> Result<Outcome, Violation> {
    let mut w = World::new(config.clone());
    match w.run() {
        Ok(()) => Ok(w.outcome),
        Err((invariant, detail)) => {
            Err(Violation { seed: config.seed, invariant, detail, at_ms: w.t, trace: w.trace.into_iter().collect() })
        }
    }
}

impl World {
    fn new(config: Config) -> World {
        let layout = Layout::new(config.nodes, SECTOR_BYTES as u32);
        let disk = SharedDisk::new(layout.end());
        let params = FormatParams {
            cluster_name: "sim".into(),
            max_nodes: config.nodes,
            timing: TIMING,
            cluster_uuid: [7; 16],
            now_unix_ms: 0,
        };
        let setup = Arc::new(Mutex::new(PathFaults::default()));
        let db = MembershipDb::format(Box::new(NodePath::new(&disk, setup.clone())), &params)
            .expect("format the simulated disk");
        for id in NodeId::all(config.nodes) {
            let entry =
                NodeEntry { present: true, master_eligible: true, name: format!("n{id}"), ..NodeEntry::absent(id, 2) };
            db.write_node_entry(&entry).expect("node table");
        }
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
                }
            })
            .collect();
        let outcome = Outcome { seed: config.seed, nodes: config.nodes, ..Outcome::default() };
        let mut w = World {
            config,
            t: 1,
            rng,
            nodes,
            trace: VecDeque::new(),
            masters: BTreeMap::new(),
            notified: BTreeMap::new(),
            answered: BTreeMap::new(),
            outcome,
            healing: false,
            observer: db,
        };
        for i in 0..w.nodes.len() {
            w.start(i);
        }
        w
    }

    fn log(&mut self, line: String) {
        if self.trace.len() >= TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={:>6} {line}", self.t));
    }

    fn start(&mut self, i: usize) {
        let n = self.config.nodes;
        let node = &mut self.nodes[i];
        let config = NodeConfig {
            node: node.id,
            master_eligible: true,
            max_nodes: n,
            timing: TIMING,
            eligible_nodes: if n == 128 { u128::MAX } else { (1u128 << n) - 1 },
            cluster_uuid: [7; 16],
            pid: node.id.0 as u32,
            host: "sim".into(),
        };
        // As `sdc join` does: a daemon that cannot read its own records does not start (and
        // is started again later, as systemd would).
        let (request_seq, acks_seq) = match layers::daemon::record_seqs(&node.db, node.id) {
            Ok(seqs) => seqs,
            Err(e) => {
                let id = node.id;
                self.log(format!("node {id}: daemon failed to start: {e}"));
                return;
            }
        };
        let now = node.local(self.t);
        node.core = Some(MemberCore::new(config, standard_layers(), request_seq, acks_seq, now));
        node.pending = None;
        node.inbox.clear();
        node.delivered.clear();
        let id = node.id;
        self.log(format!("node {id}: daemon started"));
    }

    fn count(&mut self, fault: &'static str) {
        *self.outcome.faults.entry(fault).or_default() += 1;
    }

    fn run(&mut self) -> Check {
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
        self.outcome.virtual_ms = self.t;
        self.outcome.epochs = self.masters.len() as u64;
        Ok(())
    }

    /// The newest valid cluster state, read by the checker on a path of its own.
    fn cluster_state(&self) -> Option<ClusterState> {
        self.observer.read_cluster_state().ok().flatten()
    }

    fn state_summary(&self) -> String {
        match self.cluster_state() {
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
                let requests: Vec<String> = self
                    .observer
                    .read_requests()
                    .map(|r| {
                        r.iter()
                            .map(|r| {
                                r.as_ref().map_or("corrupt".into(), |r| {
                                    format!("{}:{}/{}", r.node, r.want.name(), r.incarnation)
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
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
                format!(
                    "epoch {} members [{}] in flight [{}] requests [{}] heartbeats [{}]",
                    s.epoch,
                    members.join(" "),
                    flight.join("; "),
                    requests.join(" "),
                    heartbeats.join(" ")
                )
            }
        }
    }

    fn converged(&self) -> bool {
        let Some(s) = self.cluster_state() else { return false };
        s.transitions.is_empty()
            && self.nodes.iter().all(|n| {
                n.core.as_ref().is_some_and(|c| c.exit().is_none())
                    && s.member(n.id).state == MemberState::Joined
                    && s.member(n.id).incarnation == n.incarnation
            })
    }

    /// Faults stop: paths heal, nothing frozen, every stopped daemon restarts.
    fn heal(&mut self) {
        self.healing = true;
        for n in &mut self.nodes {
            *n.path.lock().unwrap() = PathFaults::default();
            n.lost = false;
            n.slow_ms = 0;
            n.frozen_until = 0;
        }
        self.log("faults stop; healing".into());
    }

    fn inject_faults(&mut self) -> Check {
        let rate = self.config.fault_rate;
        for i in 0..self.nodes.len() {
            if self.rng.below(10_000) >= rate {
                continue;
            }
            let id = self.nodes[i].id;
            match self.rng.below(8) {
                0 => {
                    self.crash(i);
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
                    let eio = !self.nodes[i].path.lock().unwrap().eio;
                    self.nodes[i].path.lock().unwrap().eio = eio;
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
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.request_leave();
                        self.log(format!("node {id}: asked to leave"));
                        self.count("leave");
                    }
                }
                _ => {
                    if self.nodes[i].core.is_none() {
                        self.start(i);
                        self.count("restart");
                    }
                }
            }
        }
        Ok(())
    }

    /// kill -9: a write in flight may land torn (a prefix of its sectors).
    fn crash(&mut self, i: usize) {
        let id = self.nodes[i].id;
        if let Some((_, action)) = self.nodes[i].pending.take() {
            if is_write(&action) && !self.nodes[i].lost {
                let sectors = self.rng.below(8) as usize;
                self.nodes[i].path.lock().unwrap().tear_after_sectors = Some(sectors);
                let _ = perform_member(&self.nodes[i].db, action);
                self.nodes[i].path.lock().unwrap().tear_after_sectors = None;
                self.log(format!("node {id}: crashed mid-write, {sectors} sector(s) landed"));
                self.count("torn-write");
            }
        }
        self.nodes[i].core = None;
        self.nodes[i].inbox.clear();
        self.log(format!("node {id}: crashed (kill -9)"));
    }

    fn step(&mut self) -> Check {
        let n = self.nodes.len();
        let offset = self.rng.below(n as u64) as usize;
        for k in 0..n {
            let i = (k + offset) % n;
            if self.healing && self.nodes[i].core.is_none() {
                self.start(i);
            }
            self.step_node(i)?;
        }
        self.check_masters()?;
        self.t += 1 + self.rng.below(5);
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
            self.answered.entry(note.key()).or_default().insert(id.0);
            self.nodes[i].core.as_mut().unwrap().handle_reply(note.key(), false);
        }
        // An I/O in flight: complete it when due; a lost disk never completes, and the fence
        // watchdog thread ends the process at the deadline.
        if let Some((at, _)) = &self.nodes[i].pending {
            if self.nodes[i].lost {
                #[cfg(feature = "planted-bugs")]
                if membership_db::planted::active(membership_db::planted::Bug::NodeDoesNotFence) {
                    return Ok(()); // its watchdog does not fence either
                }
                let deadline = self.nodes[i].core.as_ref().unwrap().fence_deadline();
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
            let (_, action) = self.nodes[i].pending.take().unwrap();
            self.complete(i, action)?;
        }
        for _ in 0..64 {
            let local = self.nodes[i].local(self.t);
            let Some(core) = self.nodes[i].core.as_mut() else { break };
            let Some(action) = core.poll_action(local) else { break };
            self.check_issue(i, &action)?;
            if self.nodes[i].crash_in_next_write && is_write(&action) && !self.healing {
                self.nodes[i].crash_in_next_write = false;
                self.nodes[i].pending = Some((self.t, action));
                self.crash(i);
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
            self.end_node(i, exit, "exited");
        }
        Ok(())
    }

    fn end_node(&mut self, i: usize, exit: MemberExit, how: &str) {
        let id = self.nodes[i].id;
        self.nodes[i].core = None;
        self.nodes[i].inbox.clear();
        self.log(format!("node {id}: {how}: {exit:?}"));
        self.count(match exit {
            MemberExit::Node(Exit::Stopped) => "left",
            MemberExit::Node(Exit::Fenced(_)) => "fenced",
            MemberExit::ForcedOut(_) => "forced-out",
            _ => "refused",
        });
    }

    /// Performs an action's I/O and hands the result to the node.
    fn complete(&mut self, i: usize, action: Action) -> Check {
        let id = self.nodes[i].id;
        if let Action::WriteClusterState(s) = &action {
            self.check_late_state_write(id, s)?;
        }
        self.outcome.actions += 1;
        let completion = perform_member(&self.nodes[i].db, action);
        let local = self.nodes[i].local(self.t);
        let Some(core) = self.nodes[i].core.as_mut() else { return Ok(()) };
        core.handle_completion(local, completion);
        self.nodes[i].incarnation = core.node().incarnation();
        let mut events = Vec::new();
        while let Some(e) = self.nodes[i].core.as_mut().unwrap().poll_event() {
            events.push(e);
        }
        for e in events {
            if matches!(e, MemberEvent::Sequenced(SeqEvent::Started(_))) {
                self.outcome.transitions += 1;
            }
            if !matches!(e, MemberEvent::Node(node::Event::NodeLive { .. })) {
                self.log(format!("node {id}: {e}"));
            }
        }
        while let Some(note) = self.nodes[i].core.as_mut().unwrap().poll_notification() {
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
        if acting.len() > 1 {
            return fail("one-acting-master", format!("nodes acting as master at once: {acting:?}"));
        }
        for (node, epoch) in acting {
            match self.masters.get(&epoch) {
                Some(m) if *m != node => {
                    return fail("one-master-per-epoch", format!("epoch {epoch} has masters {m} and {node}"));
                }
                Some(_) => {}
                None => {
                    self.masters.insert(epoch, node);
                    self.log(format!("node {node}: acting master of epoch {epoch}"));
                }
            }
        }
        Ok(())
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

    /// A write issued by a master may land late (slow I/O); it must never land on a successor
    /// more than one epoch on (the copies are separated by epoch parity only).
    fn check_late_state_write(&self, id: NodeId, s: &ClusterState) -> Check {
        let newest = self.masters.keys().max().copied().unwrap_or(0);
        if s.epoch + 1 < newest {
            return fail(
                "cluster-state-writer",
                format!("node {id}'s cluster state of epoch {} landed in epoch {newest}", s.epoch),
            );
        }
        Ok(())
    }

    /// Invariant 2: on each node, a transition's positions come in order, each once; and a
    /// position is notified only after every node notified of the previous one answered it
    /// (or was dropped from the transition by being forced out or leaving).
    fn check_notification(&self, i: usize, n: &Notification) -> Check {
        let node = self.nodes[i].id;
        let Some(state) = self.cluster_state() else { return Ok(()) };
        let upper = state.transitions.iter().find(|t| t.id == n.transition).and_then(|t| t.upper);
        let seq = steps::sequence(&state.layers, n.kind, upper);
        let Some(at) = seq.iter().position(|p| *p == n.position) else { return Ok(()) };
        if let Some(last) = self.nodes[i].delivered.get(&n.transition).and_then(|v| v.last()) {
            let last_at = seq.iter().position(|p| p == last);
            if last_at.is_some_and(|l| l >= at) {
                return fail(
                    "order",
                    format!("node {node} notified of {:?} of transition {} after {:?}", n.position, n.transition, last),
                );
            }
        }
        if at == 0 {
            return Ok(());
        }
        let prev = (n.transition, seq[at - 1]);
        let participants = state.transitions.iter().find(|t| t.id == n.transition).map_or(0, |t| t.participants);
        let notified = self.notified.get(&prev).cloned().unwrap_or_default();
        let answered = self.answered.get(&prev).cloned().unwrap_or_default();
        for waiting in notified.difference(&answered) {
            let w = NodeId(*waiting);
            let dropped = participants & (1u128 << w.index()) == 0;
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
        LayerSpec { order: 10, name: "dlm".into(), barriers: Barriers { join: 2, leave: 1, forced_leave: 1 } },
        LayerSpec { order: 20, name: "vdm".into(), barriers: Barriers::one_each() },
        LayerSpec { order: 30, name: "sfs".into(), barriers: Barriers { join: 1, leave: 2, forced_leave: 1 } },
        LayerSpec { order: 40, name: "em".into(), barriers: Barriers::one_each() },
    ]
}
