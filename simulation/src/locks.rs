//! The lock manager's simulator: the real [`DlmCore`]s of 3 to 6 nodes, their clients, a
//! simulated interconnect and the membership manager's barriers, in virtual time, one seed one
//! run.
//!
//! * **Network.** Each ordered pair of nodes is a FIFO (the interconnect delivers in order and
//!   exactly once, across reconnects): a frame is delivered after a delay drawn from the seed.
//!   A node's links can be cut (a partition): its frames wait. Frames go through the real wire
//!   encoding both ways.
//! * **Membership.** A model of the membership manager takes every join, graceful leave and
//!   forced leave through the DLM layer's three barriers, with each participant notified and
//!   answering after its own delay, several transitions in flight at once, and a node that
//!   starts joining taking part in the transitions already in flight. A node cut off for longer
//!   than the link timeout is forced out while alive: it fences itself a little later, and its
//!   forced leave (its recovery) starts only then, as the disk arbitration does.
//! * **Faults.** Crashes (kill -9) and restarts, graceful leaves, partitions healed in time or
//!   not, clients vanishing mid-request.
//! * **Clients** lock, convert up and down, unlock with and without writing the value block,
//!   cancel, time out, use NOQUEUE, and answer blocking callbacks.
//!
//! Checked after every step: no two incompatible modes are held on one resource across the live
//! nodes (a forced-out node counts until it has fenced); a value block handed over as valid is
//! the last one written. Once the faults stop and the cluster is quiet: every lock a live node
//! holds or waits for is in its master's queues and every queued lock has its owner (no
//! survivor's lock lost by recovery, no ghost); then, within a bound, every request is granted,
//! cancelled or failed and every lock released (liveness).

use crate::lockload::{check_all_released, check_compatible, check_queues_match, Check, Load};
use crate::sim::Violation;
use dlm::{Barrier, DlmCore, Phase, State};
use membership_db::format::NodeId;
use membership_db::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A partition longer than this forces the cut-off node out.
const LINK_TIMEOUT_MS: u64 = 300;
/// Trace lines kept for a violation report.
const TRACE_MAX: usize = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockConfig {
    pub seed: u64,
    pub nodes: u16,
    pub resources: u16,
    pub clients_per_node: u16,
    /// Faults (and new requests) until this virtual time.
    pub fault_ms: u64,
    /// After the faults, everything must be quiet and released within this.
    pub liveness_bound_ms: u64,
    /// Fault likelihood per step, per hundred thousand.
    pub fault_rate: u64,
}

impl LockConfig {
    pub fn for_seed(seed: u64) -> LockConfig {
        LockConfig {
            seed,
            nodes: 3 + (seed % 4) as u16,
            resources: 1 + (seed % 5) as u16,
            clients_per_node: 1 + (seed % 3) as u16,
            fault_ms: 3_000,
            liveness_bound_ms: 10_000,
            fault_rate: 150,
        }
    }
}

/// What a run that kept every invariant did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockOutcome {
    pub seed: u64,
    pub grants: u64,
    pub transitions: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub valid_lvbs_read: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Join,
    Leave,
    Forced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Inactive,
    Joining,
    Joined,
    Leaving,
    ForcedLeaving,
}

struct Trans {
    id: u64,
    subject: usize,
    kind: Kind,
    barrier: u8,
    participants: BTreeSet<usize>,
    notified: BTreeSet<usize>,
    acked: BTreeSet<usize>,
}

struct Node {
    id: NodeId,
    incarnation: u64,
    core: Option<DlmCore>,
    standing: Standing,
    /// Forced out while alive: fences itself at this time.
    fence_at: Option<u64>,
    /// Links cut since, until.
    cut: Option<(u64, u64)>,
    inbox: Vec<(u64, Barrier)>,
}

struct LockWorld {
    config: LockConfig,
    t: u64,
    rng: SplitMix64,
    nodes: Vec<Node>,
    load: Load,
    transitions: Vec<Trans>,
    next_transition: u64,
    /// Numbers the views notifications are made from.
    views: u64,
    trace: VecDeque<String>,
    outcome: LockOutcome,
    /// Print every trace line as it happens (`SIM_TRACE` set): for debugging a seed.
    echo: bool,
}

/// Runs one seed. `Err` names the broken invariant.
pub fn run(config: &LockConfig) -> Result<LockOutcome, Violation> {
    let mut w = LockWorld::new(config.clone());
    let r = w.run_phases();
    w.outcome.grants = w.load.grants;
    w.outcome.valid_lvbs_read = w.load.valid_lvbs_read;
    match r {
        Ok(()) => Ok(w.outcome),
        Err((invariant, detail)) => {
            Err(Violation { seed: config.seed, invariant, detail, at_ms: w.t, trace: w.trace.into_iter().collect() })
        }
    }
}

impl LockWorld {
    fn new(config: LockConfig) -> LockWorld {
        let mut rng = SplitMix64::new(config.seed ^ 0x6c6f_636b_7331);
        let nodes = (0..config.nodes)
            .map(|i| Node {
                id: NodeId(i + 1),
                incarnation: 0,
                core: None,
                standing: Standing::Inactive,
                fence_at: None,
                cut: None,
                inbox: Vec::new(),
            })
            .collect();
        let _ = rng.next_u64();
        let load = Load::new(config.nodes as usize, config.resources);
        LockWorld {
            load,
            config,
            t: 0,
            rng,
            nodes,
            transitions: Vec::new(),
            next_transition: 1,
            views: 0,
            trace: VecDeque::new(),
            outcome: LockOutcome::default(),
            echo: std::env::var_os("SIM_TRACE").is_some(),
        }
    }

    fn log(&mut self, line: String) {
        if self.echo {
            eprintln!("t={} {line}", self.t);
        }
        if self.trace.len() >= TRACE_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.t));
    }

    fn count(&mut self, fault: &'static str) {
        *self.outcome.faults.entry(fault).or_default() += 1;
    }

    fn run_phases(&mut self) -> Check {
        self.outcome.seed = self.config.seed;
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        while self.t < self.config.fault_ms {
            self.faults();
            self.step()?;
        }
        // Faults stop: heal, restart, freeze the clients, wait for quiet.
        for i in 0..self.nodes.len() {
            self.nodes[i].cut = None;
        }
        self.load.new_requests = false;
        self.load.holding = true;
        let deadline = self.t + self.config.liveness_bound_ms;
        loop {
            for i in 0..self.nodes.len() {
                if self.nodes[i].core.is_none() && self.nodes[i].standing == Standing::Inactive {
                    self.start_node(i);
                }
            }
            self.step()?;
            if self.quiet() {
                break;
            }
            if self.t > deadline {
                return Err((
                    "liveness",
                    format!("not quiet {} ms after the faults: {}", self.config.liveness_bound_ms, self.describe()),
                ));
            }
        }
        check_queues_match(&self.cores())?;
        // Release everything: every request must end, every lock go.
        self.load.release_all();
        let deadline = self.t + self.config.liveness_bound_ms;
        loop {
            self.step()?;
            let released = self.load.clients_idle()
                && self.nodes.iter().filter_map(|n| n.core.as_ref()).all(|c| c.lock_count() == 0);
            if released && self.quiet() {
                break;
            }
            if self.t > deadline {
                return Err((
                    "liveness",
                    format!(
                        "locks not all released {} ms after the faults: {}",
                        self.config.liveness_bound_ms,
                        self.describe()
                    ),
                ));
            }
        }
        check_all_released(&self.cores())
    }

    fn cores(&self) -> Vec<&DlmCore> {
        self.nodes.iter().filter_map(|n| n.core.as_ref()).collect()
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let state = n
                .core
                .as_ref()
                .map(|c| {
                    let locks: Vec<_> =
                        c.own_locks().iter().map(|l| (l.lock, l.granted, l.requested, l.orphan)).collect();
                    format!("{:?} locks {locks:?}", c.state())
                })
                .unwrap_or("down".into());
            let state = format!("{state} ({} with orphans)", n.core.as_ref().map_or(0, |c| c.lock_count()));
            s += &format!("node {} {:?} {state} clients [{}]; ", n.id, n.standing, self.load.describe(i));
        }
        for t in &self.transitions {
            s += &format!(
                "transition {} {:?} of node {} at barrier {} acked {:?} of {:?}; ",
                t.id,
                t.kind,
                t.subject + 1,
                t.barrier,
                t.acked,
                t.participants
            );
        }
        s
    }

    fn quiet(&self) -> bool {
        self.transitions.is_empty()
            && self.load.links_empty()
            && self.nodes.iter().all(|n| {
                n.inbox.is_empty()
                    && n.fence_at.is_none()
                    && match &n.core {
                        None => n.standing == Standing::Inactive,
                        Some(c) => c.state() == State::Running,
                    }
            })
    }

    // ---- membership model ----

    fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.core = Some(DlmCore::new(n.id));
        n.standing = Standing::Joining;
        n.fence_at = None;
        n.cut = None;
        n.inbox.clear();
        let id = n.id;
        self.load.node_started(i, self.config.clients_per_node);
        self.log(format!("node {id}: starts, incarnation {}", self.nodes[i].incarnation));
        self.start_transition(i, Kind::Join);
    }

    fn start_transition(&mut self, subject: usize, kind: Kind) {
        self.transitions.retain(|t| t.subject != subject);
        for t in &mut self.transitions {
            t.participants.remove(&subject);
            t.acked.remove(&subject);
        }
        let mut participants: BTreeSet<usize> = (0..self.nodes.len())
            .filter(|&j| {
                let n = &self.nodes[j];
                n.core.is_some()
                    && n.fence_at.is_none()
                    && matches!(n.standing, Standing::Joining | Standing::Joined | Standing::Leaving)
            })
            .collect();
        if kind == Kind::Forced {
            participants.remove(&subject);
        } else {
            participants.insert(subject);
        }
        if kind == Kind::Join {
            // A joining node takes part in every transition already in flight.
            for t in &mut self.transitions {
                t.participants.insert(subject);
            }
        }
        let id = self.next_transition;
        self.next_transition += 1;
        self.outcome.transitions += 1;
        self.log(format!("transition {id}: {kind:?} of node {} starts, participants {participants:?}", subject + 1));
        self.transitions.push(Trans {
            id,
            subject,
            kind,
            barrier: 0,
            participants,
            notified: BTreeSet::new(),
            acked: BTreeSet::new(),
        });
    }

    /// The DLM's members as a notification sent now shows them (the rule of the DLM driver).
    fn members_now(&self) -> Vec<(NodeId, u64)> {
        let mut v = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let member = match self.transitions.iter().find(|t| t.subject == i) {
                None => n.standing == Standing::Joined,
                Some(t) => match t.kind {
                    Kind::Join => t.barrier >= 1,
                    Kind::Leave | Kind::Forced => t.barrier < 1,
                },
            };
            if member {
                v.push((n.id, n.incarnation));
            }
        }
        v
    }

    fn advance_transitions(&mut self) {
        // Notify.
        for k in 0..self.transitions.len() {
            let pending: Vec<usize> = {
                let t = &self.transitions[k];
                t.participants.difference(&t.notified).copied().collect()
            };
            for p in pending {
                let members = self.members_now();
                self.views += 1;
                let t = &mut self.transitions[k];
                t.notified.insert(p);
                let barrier = Barrier {
                    key: t.id << 8 | t.barrier as u64,
                    transition: t.id,
                    phase: Phase::of_barrier(t.barrier).expect("three barriers"),
                    subject: self.nodes[t.subject].id,
                    members,
                    view: (0, self.views),
                    leaving: (t.kind == Kind::Leave).then_some(self.nodes[t.subject].id),
                };
                let delay = self.rng.below(12);
                self.nodes[p].inbox.push((self.t + delay, barrier));
            }
        }
        // Advance.
        let mut done = Vec::new();
        for (k, t) in self.transitions.iter_mut().enumerate() {
            if t.participants.is_subset(&t.acked) {
                t.barrier += 1;
                t.notified.clear();
                t.acked.clear();
                if t.barrier == dlm::BARRIERS {
                    done.push(k);
                }
            }
        }
        for k in done.into_iter().rev() {
            let t = self.transitions.remove(k);
            let s = t.subject;
            self.log(format!("transition {}: {:?} of node {} complete", t.id, t.kind, s + 1));
            match t.kind {
                Kind::Join => self.nodes[s].standing = Standing::Joined,
                Kind::Leave => {
                    self.nodes[s].standing = Standing::Inactive;
                    self.stop_node(s, "left gracefully");
                }
                Kind::Forced => self.nodes[s].standing = Standing::Inactive,
            }
            if t.kind != Kind::Join {
                for o in &mut self.transitions {
                    o.participants.remove(&s);
                }
            }
        }
    }

    fn stop_node(&mut self, i: usize, why: &str) {
        self.nodes[i].core = None;
        self.nodes[i].inbox.clear();
        self.nodes[i].fence_at = None;
        self.nodes[i].cut = None;
        self.load.node_gone(i);
        for t in &mut self.transitions {
            // A later incarnation is notified afresh.
            t.notified.remove(&i);
            t.acked.remove(&i);
        }
        let id = self.nodes[i].id;
        self.log(format!("node {id}: stops ({why})"));
    }

    /// The node is gone (crashed or fenced): forced out, its locks recovered by the others.
    fn node_gone(&mut self, i: usize, why: &str) {
        self.stop_node(i, why);
        for t in &mut self.transitions {
            t.participants.remove(&i);
            t.acked.remove(&i);
        }
        if self.nodes[i].standing == Standing::Inactive {
            return;
        }
        self.nodes[i].standing = Standing::ForcedLeaving;
        self.start_transition(i, Kind::Forced);
    }

    fn faults(&mut self) {
        let rate = self.config.fault_rate;
        let n = self.nodes.len();
        if self.rng.below(100_000) < rate {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].core.is_some() {
                self.count("crash");
                self.node_gone(i, "crashed (kill -9)");
            }
        }
        if self.rng.below(100_000) < rate {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].core.is_none() && self.nodes[i].standing == Standing::Inactive {
                self.count("restart");
                self.start_node(i);
            }
        }
        if self.rng.below(100_000) < rate {
            let i = self.rng.below(n as u64) as usize;
            let idle = !self.transitions.iter().any(|t| t.subject == i);
            if self.nodes[i].standing == Standing::Joined && idle && self.nodes[i].fence_at.is_none() {
                self.count("leave");
                self.nodes[i].standing = Standing::Leaving;
                self.start_transition(i, Kind::Leave);
            }
        }
        if self.rng.below(100_000) < rate {
            let i = self.rng.below(n as u64) as usize;
            let cut_now = self.nodes.iter().any(|n| n.cut.is_some());
            if self.nodes[i].core.is_some() && self.nodes[i].fence_at.is_none() && !cut_now {
                let long = self.rng.chance(400);
                let len =
                    if long { LINK_TIMEOUT_MS + 1 + self.rng.below(300) } else { 1 + self.rng.below(LINK_TIMEOUT_MS) };
                self.count(if long { "partition-forced-out" } else { "partition-healed" });
                self.nodes[i].cut = Some((self.t, self.t + len));
                let id = self.nodes[i].id;
                self.log(format!("node {id}: links cut for {len} ms"));
            }
        }
        if self.rng.below(100_000) < rate {
            let i = self.rng.below(n as u64) as usize;
            if let Some(core) = self.nodes[i].core.as_mut() {
                if let Some(said) = self.load.client_gone(i, core, &mut self.rng) {
                    let id = self.nodes[i].id;
                    self.log(format!("node {id}: {said}"));
                    self.count("client-gone");
                }
            }
        }
    }

    // ---- one step ----

    fn step(&mut self) -> Check {
        // Partitions end, or force the node out; forced-out nodes fence.
        for i in 0..self.nodes.len() {
            if let Some((from, until)) = self.nodes[i].cut {
                if self.t >= until {
                    self.nodes[i].cut = None;
                } else if self.t >= from + LINK_TIMEOUT_MS && self.nodes[i].fence_at.is_none() {
                    // The disk arbitrates: forced out while alive; it fences a little later.
                    let at = self.t + self.rng.below(150);
                    self.nodes[i].fence_at = Some(at);
                    self.transitions.retain(|t| t.subject != i);
                    for t in &mut self.transitions {
                        t.participants.remove(&i);
                        t.acked.remove(&i);
                    }
                    let id = self.nodes[i].id;
                    self.log(format!("node {id}: forced out (links), fences at {at}"));
                }
            }
            if self.nodes[i].fence_at.is_some_and(|at| self.t >= at) {
                self.node_gone(i, "fenced after being forced out");
            }
        }
        self.advance_transitions();
        let n = self.nodes.len();
        let offset = self.rng.below(n as u64) as usize;
        for k in 0..n {
            let i = (k + offset) % n;
            if self.nodes[i].core.is_some() {
                self.step_node(i)?;
            }
        }
        self.deliver_frames()?;
        check_compatible(self.nodes.iter().filter_map(|n| n.core.as_ref()))?;
        self.t += 1;
        Ok(())
    }

    fn step_node(&mut self, i: usize) -> Check {
        let t = self.t;
        let (due, later): (Vec<_>, Vec<_>) = self.nodes[i].inbox.drain(..).partition(|(at, _)| *at <= t);
        self.nodes[i].inbox = later;
        for (_, b) in due {
            let id = self.nodes[i].id;
            self.log(format!("node {id}: {:?} of transition {} (members {:?})", b.phase, b.transition, b.members));
            self.nodes[i].core.as_mut().expect("running").handle_barrier(b);
        }
        let core = self.nodes[i].core.as_mut().expect("running");
        core.handle_timeout(t);
        let id = core.me();
        for said in self.load.act(i, core, t, &mut self.rng) {
            self.log(format!("node {id}: {said}"));
        }
        self.drain(i)
    }

    /// Collects a node's outputs: frames onto the links, events to clients, acknowledgements.
    fn drain(&mut self, i: usize) -> Check {
        let incarnations: Vec<u64> = self.nodes.iter().map(|n| n.incarnation).collect();
        let mut lines = Vec::new();
        let core = self.nodes[i].core.as_mut().expect("running");
        let acks =
            self.load.drain(i, core, self.t, &mut self.rng, &|j| incarnations[j], &mut |line| lines.push(line))?;
        for line in lines {
            self.log(line);
        }
        for key in acks {
            let (id, barrier) = (key >> 8, (key & 0xff) as u8);
            if let Some(t) = self.transitions.iter_mut().find(|t| t.id == id && t.barrier == barrier) {
                t.acked.insert(i);
            }
        }
        Ok(())
    }

    fn deliver_frames(&mut self) -> Check {
        let cut: Vec<bool> = self.nodes.iter().map(|n| n.cut.is_some()).collect();
        let incarnations: Vec<u64> = self.nodes.iter().map(|n| n.incarnation).collect();
        let due = self.load.due_frames(self.t, &|i| cut[i], &|i| incarnations[i])?;
        for (a, b, frames) in due {
            let from = self.nodes[a].id;
            let Some(core) = self.nodes[b].core.as_mut() else { continue };
            for f in frames {
                core.handle_frame(from, f);
            }
            self.drain(b)?;
        }
        Ok(())
    }
}
