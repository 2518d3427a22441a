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

use crate::sim::Violation;
use dlm::{Barrier, ClientEvent, ClientId, DlmCore, Flags, LockError, LockId, Lvb, Mode, Phase, ResName, State};
use membership_db::format::NodeId;
use membership_db::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    Waiting,
    Held { mode: Mode, until: u64 },
    Converting { from: Mode },
}

struct Client {
    id: ClientId,
    lock: Option<(LockId, ResName, CState)>,
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
    clients: Vec<Client>,
}

type Check = Result<(), (&'static str, String)>;

/// A frame on a link: when it is due, the receiving incarnation it was sent to, its bytes.
type InFlightFrame = (u64, u64, Vec<u8>);

struct LockWorld {
    config: LockConfig,
    t: u64,
    rng: SplitMix64,
    nodes: Vec<Node>,
    names: Vec<ResName>,
    links: HashMap<(usize, usize), VecDeque<InFlightFrame>>,
    transitions: Vec<Trans>,
    next_transition: u64,
    /// Numbers the views notifications are made from.
    views: u64,
    next_client: u64,
    last_written: HashMap<ResName, Lvb>,
    trace: VecDeque<String>,
    outcome: LockOutcome,
    clients_active: bool,
    /// Clients make new requests (not in the liveness phases).
    new_requests: bool,
    /// Print every trace line as it happens (`SIM_TRACE` set): for debugging a seed.
    echo: bool,
}

/// Runs one seed. `Err` names the broken invariant.
pub fn run(config: &LockConfig) -> Result<LockOutcome, Violation> {
    let mut w = LockWorld::new(config.clone());
    match w.run_phases() {
        Ok(()) => Ok(w.outcome),
        Err((invariant, detail)) => {
            Err(Violation { seed: config.seed, invariant, detail, at_ms: w.t, trace: w.trace.into_iter().collect() })
        }
    }
}

impl LockWorld {
    fn new(config: LockConfig) -> LockWorld {
        let mut rng = SplitMix64::new(config.seed ^ 0x6c6f_636b_7331);
        let names = (0..config.resources).map(|i| ResName::new("sim", format!("r{i}").as_bytes()).unwrap()).collect();
        let nodes = (0..config.nodes)
            .map(|i| Node {
                id: NodeId(i + 1),
                incarnation: 0,
                core: None,
                standing: Standing::Inactive,
                fence_at: None,
                cut: None,
                inbox: Vec::new(),
                clients: Vec::new(),
            })
            .collect();
        let _ = rng.next_u64();
        LockWorld {
            config,
            t: 0,
            rng,
            nodes,
            names,
            links: HashMap::new(),
            transitions: Vec::new(),
            next_transition: 1,
            views: 0,
            next_client: 1,
            last_written: HashMap::new(),
            trace: VecDeque::new(),
            outcome: LockOutcome::default(),
            clients_active: true,
            new_requests: true,
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
        self.clients_active = false;
        self.new_requests = false;
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
        self.check_queues_match()?;
        // Release everything: every request must end, every lock go.
        for n in &mut self.nodes {
            for c in &mut n.clients {
                if let Some((_, _, CState::Held { until, .. })) = &mut c.lock {
                    *until = 0;
                }
            }
        }
        self.clients_active = true;
        let deadline = self.t + self.config.liveness_bound_ms;
        loop {
            self.step()?;
            let released = self.nodes.iter().all(|n| n.clients.iter().all(|c| c.lock.is_none()))
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
        for n in &self.nodes {
            if let Some(c) = &n.core {
                if let Some(m) = c.mastered().iter().find(|m| !m.queues.is_empty()) {
                    return Err((
                        "ghost-lock",
                        format!("node {} masters {} with locks nobody holds: {:?}", n.id, m.res, m.queues),
                    ));
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
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
            let clients: Vec<String> = n
                .clients
                .iter()
                .filter_map(|c| c.lock.as_ref().map(|(id, r, st)| format!("{id}:{r}:{st:?}")))
                .collect();
            s += &format!("node {} {:?} {state} clients [{}]; ", n.id, n.standing, clients.join(" "));
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
            && self.links.values().all(|q| q.is_empty())
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
        n.clients = (0..self.config.clients_per_node)
            .map(|_| {
                self.next_client += 1;
                Client { id: ClientId(self.next_client), lock: None }
            })
            .collect();
        let id = n.id;
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
        self.nodes[i].clients.clear();
        self.nodes[i].fence_at = None;
        self.nodes[i].cut = None;
        self.links.retain(|(a, b), _| *a != i && *b != i);
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
            let k = self.rng.below(self.nodes[i].clients.len().max(1) as u64) as usize;
            let node = &mut self.nodes[i];
            if let (Some(core), Some(c)) = (node.core.as_mut(), node.clients.get_mut(k)) {
                core.client_gone(c.id);
                {
                    if self.echo {
                        eprintln!("t={} node {}: client {:?} gone", self.t, i + 1, c.id);
                    }
                    self.next_client += 1;
                    c.id = ClientId(self.next_client);
                    c.lock = None;
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
        self.check_compatible()?;
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
        self.nodes[i].core.as_mut().expect("running").handle_timeout(t);
        if self.clients_active || self.t > 0 {
            self.client_actions(i);
        }
        self.drain(i)
    }

    /// Collects a node's outputs: frames onto the links, events to clients, acknowledgements.
    fn drain(&mut self, i: usize) -> Check {
        loop {
            let core = self.nodes[i].core.as_mut().expect("running");
            let mut progressed = false;
            let mut frames = Vec::new();
            while let Some(f) = core.poll_transmit() {
                frames.push(f);
            }
            let mut events = Vec::new();
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            let mut acks = Vec::new();
            while let Some(a) = core.poll_ack() {
                acks.push(a);
            }
            for (to, frame) in frames {
                progressed = true;
                if self.echo {
                    eprintln!("t={} send {}->{to}: {frame:?}", self.t, i + 1);
                }
                let j = to.index();
                // The interconnect's session is with the incarnation the sender knows: a frame
                // for an incarnation that has gone is never delivered to the next one.
                let core = self.nodes[i].core.as_ref().expect("running");
                let known = core.members().iter().find(|(n, _)| *n == to).map(|(_, inc)| *inc);
                let incarnation = known.unwrap_or(self.nodes[j].incarnation);
                let mut b = dlm::wire::Batch::new();
                b.push(&frame);
                let delay = 1 + self.rng.below(4);
                let due = self.t + delay;
                let q = self.links.entry((i, j)).or_default();
                let due = q.back().map_or(due, |(last, _, _)| due.max(*last));
                q.push_back((due, incarnation, b.into_bytes()));
            }
            for e in events {
                progressed = true;
                self.client_event(i, e)?;
            }
            for key in acks {
                progressed = true;
                let (id, barrier) = (key >> 8, (key & 0xff) as u8);
                if let Some(t) = self.transitions.iter_mut().find(|t| t.id == id && t.barrier == barrier) {
                    t.acked.insert(i);
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn deliver_frames(&mut self) -> Check {
        let mut keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
        keys.sort();
        for (a, b) in keys {
            if self.nodes[a].cut.is_some() || self.nodes[b].cut.is_some() {
                continue;
            }
            while let Some(q) = self.links.get_mut(&(a, b)) {
                if q.front().is_none_or(|(due, _, _)| *due > self.t) {
                    break;
                }
                let (_, incarnation, bytes) = q.pop_front().expect("checked");
                if incarnation != self.nodes[b].incarnation {
                    continue;
                }
                let from = self.nodes[a].id;
                let frames = dlm::wire::decode_batch(&bytes).map_err(|e| ("wire", e.to_string()))?;
                let Some(core) = self.nodes[b].core.as_mut() else { break };
                for f in frames {
                    if self.echo {
                        eprintln!("t={} frame {from}->{}: {f:?}", self.t, b + 1);
                    }
                    core.handle_frame(from, f);
                }
                self.drain(b)?;
            }
        }
        Ok(())
    }

    // ---- clients ----

    fn client_actions(&mut self, i: usize) {
        let t = self.t;
        for k in 0..self.nodes[i].clients.len() {
            let roll = self.rng.below(1000);
            let name = self.names[self.rng.below(self.names.len() as u64) as usize].clone();
            let mode = [Mode::Ex, Mode::Ex, Mode::Pw, Mode::Pr, Mode::Pr, Mode::Cw, Mode::Cr, Mode::Nl]
                [self.rng.below(8) as usize];
            let value = self.rng.next_u64();
            let hold = 1 + self.rng.below(60);
            let timeout = (self.rng.below(5) == 0).then(|| 20 + self.rng.below(200));
            let noqueue = self.rng.below(7) == 0;
            let quecvt = self.rng.below(4) == 0;
            let node = &mut self.nodes[i];
            let core = node.core.as_mut().expect("running");
            let c = &mut node.clients[k];
            let lvb = |v: u64| -> Lvb {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&v.to_le_bytes());
                b
            };
            let mut said = None;
            match c.lock.clone() {
                None if self.new_requests && roll < 30 => {
                    let flags = Flags { noqueue, quecvt: false, timeout_ms: timeout };
                    if let Ok(id) = core.lock(t, c.id, name.clone(), mode, flags) {
                        said = Some(format!("lock {id} {name} {mode} {flags:?}"));
                        c.lock = Some((id, name, CState::Waiting));
                    }
                }
                Some((id, res, CState::Held { mode: held, until })) if t >= until => {
                    let writes = held.writes_value() && roll.is_multiple_of(2);
                    if !self.clients_active || roll < 600 {
                        let v = writes.then(|| lvb(value));
                        if core.unlock(c.id, id, v).is_ok() {
                            said = Some(format!("unlock {id} {res} writing {:?}", v.map(|v| v[0])));
                            c.lock = None;
                            if let Some(v) = v {
                                self.last_written.insert(res, v);
                            }
                        }
                    } else {
                        let flags = Flags { noqueue, quecvt, timeout_ms: timeout };
                        let v = (writes && !mode.writes_value()).then(|| lvb(value));
                        if core.convert(t, c.id, id, mode, flags, v).is_ok() {
                            said = Some(format!("convert {id} {res} {held}->{mode} writing {:?}", v.map(|v| v[0])));
                            c.lock = Some((id, res.clone(), CState::Converting { from: held }));
                            if let Some(v) = v {
                                self.last_written.insert(res, v);
                            }
                        }
                    }
                    let _ = hold;
                }
                Some((id, _, CState::Waiting | CState::Converting { .. }))
                    if roll < 2 && core.cancel(c.id, id).is_ok() =>
                {
                    said = Some(format!("cancel {id}"));
                }
                _ => {}
            }
            if let Some(line) = said {
                let nid = self.nodes[i].id;
                self.log(format!("node {nid}: {line}"));
            }
        }
    }

    fn client_event(&mut self, i: usize, e: ClientEvent) -> Check {
        let t = self.t;
        let hold = 1 + self.rng.below(80);
        let release_early = self.rng.below(3) == 0;
        let node = &mut self.nodes[i];
        let id = node.id;
        match e {
            ClientEvent::Completion { client, lock, result } => {
                let Some(c) = node.clients.iter_mut().find(|c| c.id == client) else {
                    return Err(("client-event", format!("node {id}: an event for client {client:?}, which is gone")));
                };
                let Some((held_id, res, state)) = c.lock.clone() else {
                    return Err(("client-event", format!("node {id}: a completion for lock {lock} of an idle client")));
                };
                if held_id != lock {
                    return Err(("client-event", format!("node {id}: a completion for lock {lock}, not {held_id}")));
                }
                let said =
                    format!("node {id}: lock {lock} {res} -> {:?}", result.map(|g| (g.mode, g.lvb[0], g.lvb_valid)));
                self.log(said);
                let node = &mut self.nodes[i];
                let c = node.clients.iter_mut().find(|c| c.id == client).expect("found above");
                match result {
                    Ok(g) => {
                        self.outcome.grants += 1;
                        // A holder in NL or CR may see a write land between its grant and its
                        // reading the value (a PW holder beside it): only modes that exclude
                        // writers read the last value for sure.
                        if g.lvb_valid && g.mode.excludes_writers() {
                            self.outcome.valid_lvbs_read += 1;
                            let last = self.last_written.get(&res);
                            if last != Some(&g.lvb) {
                                return Err((
                                    "lvb",
                                    format!(
                                        "node {id} lock {lock} on {res} granted {} with a valid value block {:?}, but the last written is {:?}",
                                        g.mode,
                                        &g.lvb[..8],
                                        last.map(|v| &v[..8])
                                    ),
                                ));
                            }
                        }
                        c.lock = Some((lock, res, CState::Held { mode: g.mode, until: t + hold }));
                    }
                    Err(err) => {
                        c.lock = match (state, err) {
                            (_, LockError::NodeLeaving) => None,
                            (CState::Converting { from }, _) => {
                                Some((lock, res, CState::Held { mode: from, until: t }))
                            }
                            _ => None,
                        };
                    }
                }
            }
            ClientEvent::Blocking { client, lock, .. } => {
                if let Some(c) = node.clients.iter_mut().find(|c| c.id == client) {
                    if let Some((l, _, CState::Held { until, .. })) = &mut c.lock {
                        if *l == lock && release_early {
                            *until = t;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    // ---- checks ----

    /// No two incompatible modes held on one resource by live nodes (a forced-out node that
    /// has not fenced yet still holds its locks).
    fn check_compatible(&self) -> Check {
        let mut held: BTreeMap<ResName, Vec<(NodeId, LockId, Mode)>> = BTreeMap::new();
        for n in &self.nodes {
            if let Some(c) = &n.core {
                for (res, lock, mode) in c.held_modes() {
                    held.entry(res).or_default().push((n.id, lock, mode));
                }
            }
        }
        for (res, locks) in held {
            for (k, a) in locks.iter().enumerate() {
                for b in &locks[k + 1..] {
                    if !a.2.compatible(b.2) {
                        return Err((
                            "compatible",
                            format!(
                                "{res}: node {} lock {} holds {} while node {} lock {} holds {}",
                                a.0, a.1, a.2, b.0, b.1, b.2
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Quiet cluster: every lock of a live node is in its master's queues, as the owner sees
    /// it, and every queued lock has its owner.
    fn check_queues_match(&self) -> Check {
        let mut masters: HashMap<ResName, (NodeId, dlm::queues::Queues)> = HashMap::new();
        for n in &self.nodes {
            let Some(c) = &n.core else { continue };
            for m in c.mastered() {
                if let Some((other, _)) = masters.get(&m.res) {
                    return Err(("one-master", format!("{} is mastered by node {other} and node {}", m.res, n.id)));
                }
                masters.insert(m.res.clone(), (n.id, m.queues));
            }
        }
        let mut owned = BTreeSet::new();
        for n in &self.nodes {
            let Some(c) = &n.core else { continue };
            for l in c.own_locks() {
                if l.orphan {
                    let seen: Vec<String> = self
                        .nodes
                        .iter()
                        .filter_map(|m| {
                            m.core.as_ref().map(|c| format!("node {}: {}", m.id, c.describe_resource(&l.res)))
                        })
                        .collect();
                    return Err((
                        "orphan",
                        format!(
                            "node {} lock {} on {} ({:?}/{:?}): its client went, and it is still here; {}",
                            n.id,
                            l.lock,
                            l.res,
                            l.granted,
                            l.requested,
                            seen.join("; ")
                        ),
                    ));
                }
                let gid = dlm::GlobalLockId { node: n.id, lock: l.lock };
                owned.insert(gid);
                let Some((m, q)) = masters.get(&l.res) else {
                    return Err(("lost-lock", format!("node {} lock {} on {}: no master has it", n.id, l.lock, l.res)));
                };
                let found = q.granted.iter().chain(&q.converting).chain(&q.waiting).find(|x| x.id == gid);
                match found {
                    Some(x) if x.granted == l.granted && x.requested == l.requested => {}
                    other => {
                        return Err((
                            "lost-lock",
                            format!(
                                "node {} lock {} on {} (granted {:?}, requested {:?}) is {:?} at its master, node {m}",
                                n.id, l.lock, l.res, l.granted, l.requested, other
                            ),
                        ))
                    }
                }
            }
        }
        for (res, (m, q)) in &masters {
            for x in q.granted.iter().chain(&q.converting).chain(&q.waiting) {
                if !owned.contains(&x.id) {
                    return Err((
                        "ghost-lock",
                        format!("node {m} masters {res} with lock {:?}, which no live node owns", x.id),
                    ));
                }
            }
        }
        Ok(())
    }
}
