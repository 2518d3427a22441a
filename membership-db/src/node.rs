//! [`NodeCore`]: one node's daemon logic (heartbeat, liveness, slot ownership, master claim,
//! self-fencing) as a sans-IO state machine.
//!
//! The driver asks [`NodeCore::poll_action`] for the next I/O, performs it, and hands the result
//! back with [`NodeCore::handle_completion`]; at most one I/O is outstanding. The core never
//! reads a clock: every call takes `now`, milliseconds on the driver's monotonic clock.
//!
//! # Lifecycle
//!
//! * **Probe**: read the heartbeat region and the claims. If our slot shows a running daemon
//!   (state up), watch it: if it moves within `dead_ms`, refuse to start and write nothing.
//! * **Acquire**: write our first heartbeat with a new incarnation, wait two heartbeat
//!   intervals, and read the slot again; if another daemon started at the same moment and
//!   overwrote it, refuse (a delta lease, as sanlock's host ids).
//! * **Running**: every `heartbeat_ms`, write the heartbeat, read all heartbeats, read all
//!   claims, and claim the master role when the master is gone (see `claim`).
//! * **Stopping**: write the heartbeat as cleanly down, then exit.
//!
//! # Fencing
//!
//! A node fences itself (stops acting and exits) when no heartbeat write has succeeded for
//! `fence_ms` counted from when that write was *issued* (the data may be visible from then on),
//! when its own slot holds another daemon's writes, or, as master, when a later epoch appears:
//! some node judged it dead.

use crate::claim::{Abort, Attempt, ClaimSummary, Step};
use crate::error::{CorruptRecord, RecordKind};
use crate::format::*;
use crate::liveness::{Liveness, NodeLiveness};
use std::collections::VecDeque;

/// What the core needs to know about its node and cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    pub master_eligible: bool,
    pub max_nodes: u16,
    pub timing: Timing,
    /// Master-eligible nodes of the node table, as a bitmap by slot index.
    pub eligible_nodes: u128,
    /// The cluster this daemon joined; a different one on the disk means it was reformatted.
    pub cluster_uuid: [u8; 16],
    pub pid: u32,
    pub host: String,
}

/// A failed I/O, as the core sees it: it only needs to know that it failed, and why for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure(pub String);

/// An I/O for the driver to perform. At most one is outstanding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ReadHeartbeats,
    /// The driver stamps `written_unix_ms` (display only) before writing.
    WriteHeartbeat(Heartbeat),
    ReadClaims,
    WriteClaim(Claim),
    /// Read the superblocks: the driver answers with the cluster UUID of the newest valid one.
    ReadSuperblock,
}

/// The result of the outstanding action.
#[derive(Debug, Clone)]
pub enum Completion {
    HeartbeatsRead(Result<Vec<Result<Heartbeat, CorruptRecord>>, IoFailure>),
    ClaimsRead(Result<Vec<Result<Claim, CorruptRecord>>, IoFailure>),
    Written(Result<(), IoFailure>),
    /// The UUID of the newest valid superblock, or `None` when neither copy is valid.
    SuperblockRead(Result<Option<[u8; 16]>, IoFailure>),
}

/// Why a node fenced itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReason {
    /// No heartbeat write succeeded for `fence_ms`.
    HeartbeatTimeout { since_ms: Millis },
    /// Another daemon writes our heartbeat or claim slot.
    SlotTaken { incarnation: u64 },
    /// As master of `epoch`, we saw `newer` begun: the others judged us dead.
    Deposed { epoch: u64, newer: u64 },
    /// The disk no longer holds the cluster this daemon joined.
    Reformatted,
}

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceReason::HeartbeatTimeout { since_ms } => {
                write!(f, "no heartbeat write has succeeded for {since_ms} ms (the disk is lost or stalled)")
            }
            FenceReason::SlotTaken { incarnation } => {
                write!(f, "another daemon (incarnation {incarnation}) is writing this node's slot")
            }
            FenceReason::Deposed { epoch, newer } => {
                write!(
                    f,
                    "master of epoch {epoch} was deposed: epoch {newer} has begun, so the others judged this node dead"
                )
            }
            FenceReason::Reformatted => {
                write!(f, "the disk no longer holds this cluster (reformatted, or its superblocks are damaged)")
            }
        }
    }
}

/// How the core ended. After this, `poll_action` returns nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped cleanly: the slot is marked down.
    Stopped,
    /// Refused to start; nothing was written (or only our own overwritten attempt).
    Refused(Refusal),
    /// Fenced: stop every service at once and exit with the fenced status.
    Fenced(FenceReason),
}

/// Why a daemon refused to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another daemon runs (or started at the same moment) on this node's slot.
    AlreadyRunning(String),
    /// The disk could not be read or written.
    Io(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::AlreadyRunning(why) | Refusal::Io(why) => f.write_str(why),
        }
    }
}

/// Things worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started { incarnation: u64 },
    WaitingForStaleSlot { incarnation: u64 },
    NodeLive { node: NodeId, incarnation: u64 },
    NodeGone { node: NodeId, liveness: NodeLiveness },
    ClaimStarted { epoch: u64, ballot: u64 },
    ClaimAborted { epoch: u64, reason: Abort },
    MasterKnown { epoch: u64, master: ClaimValue },
    BecameMaster { epoch: u64 },
    Corrupt(CorruptRecord),
    IoFailed(String),
    OwnClaimReset,
}

/// Bound on queued events; older ones are dropped (and counted) past it.
pub const EVENTS_MAX: usize = 256;
/// A running node checks every this many heartbeat cycles that the disk still holds its cluster.
pub const SUPERBLOCK_CHECK_CYCLES: u64 = 16;

#[derive(Debug, Clone)]
enum Phase {
    Probe { watching: Option<(u64, u64)>, since: Millis },
    Acquire { written_at: Millis },
    Running,
    Stopping,
    Done(Exit),
}

/// The I/O in flight and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    ProbeHeartbeats,
    ProbeClaims,
    AcquireWrite { issued_at: Millis },
    AcquireCheck,
    Heartbeat { issued_at: Millis },
    Heartbeats,
    Claims,
    ClaimWrite,
    CommitWrite { master: bool },
    Superblock,
    FinalHeartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower,
    Master { epoch: u64 },
}

pub struct NodeCore {
    config: NodeConfig,
    me: ClaimValue,
    phase: Phase,
    pending: Option<Pending>,
    /// A follow-up action decided by the last completion, issued by the next poll.
    next: Option<(Action, Pending)>,
    next_tick_at: Millis,
    counter: u64,
    /// When the last successful heartbeat write was issued.
    heartbeat_ok_at: Option<Millis>,
    last_written: Option<Heartbeat>,
    liveness: Liveness,
    /// Our claim block as last written or read.
    own_claim: Option<Claim>,
    claims: Vec<Result<Claim, CorruptRecord>>,
    attempt: Option<Attempt>,
    role: Role,
    known_master: Option<(u64, ClaimValue)>,
    /// When the master was first seen gone, for the staggered claim start.
    master_gone_since: Option<Millis>,
    retry_at: Millis,
    stop_requested: bool,
    reported_live: u128,
    reported_corrupt: Vec<CorruptRecord>,
    suspect_corrupt: Vec<CorruptRecord>,
    events: VecDeque<Event>,
    events_dropped: u64,
    cycles: u64,
}

impl NodeCore {
    pub fn new(config: NodeConfig, now: Millis) -> NodeCore {
        assert!(config.node.0 >= 1 && config.node.0 <= config.max_nodes, "node id inside the cluster");
        let liveness = Liveness::new(config.max_nodes, config.timing.dead_ms);
        NodeCore {
            me: ClaimValue { node: config.node, incarnation: 0 },
            config,
            phase: Phase::Probe { watching: None, since: now },
            pending: None,
            next: None,
            next_tick_at: now,
            counter: 0,
            heartbeat_ok_at: None,
            last_written: None,
            liveness,
            own_claim: None,
            claims: Vec::new(),
            attempt: None,
            role: Role::Follower,
            known_master: None,
            master_gone_since: None,
            retry_at: now,
            stop_requested: false,
            reported_live: 0,
            reported_corrupt: Vec::new(),
            suspect_corrupt: Vec::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            cycles: 0,
        }
    }

    // --- getters ------------------------------------------------------------------------------

    pub fn node(&self) -> NodeId {
        self.config.node
    }
    pub fn incarnation(&self) -> u64 {
        self.me.incarnation
    }
    /// The epoch this node is acting master of.
    pub fn master_epoch(&self) -> Option<u64> {
        match self.role {
            Role::Master { epoch } if self.exit().is_none() => Some(epoch),
            _ => None,
        }
    }
    pub fn known_master(&self) -> Option<(u64, ClaimValue)> {
        self.known_master
    }
    pub fn exit(&self) -> Option<&Exit> {
        match &self.phase {
            Phase::Done(exit) => Some(exit),
            _ => None,
        }
    }
    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }
    pub fn liveness(&self, now: Millis, node: NodeId) -> NodeLiveness {
        self.liveness.judge(now, node)
    }
    /// The incarnation whose daemon runs on `node`, as this node observes it: its heartbeat
    /// says up and has not been still for `dead_ms`. This node's own incarnation for itself.
    pub fn running_incarnation(&self, now: Millis, node: NodeId) -> Option<u64> {
        if node == self.config.node {
            return self.is_running().then_some(self.me.incarnation);
        }
        let hb = self.liveness.heartbeat(node)?;
        (!self.liveness.judge(now, node).is_gone()).then_some(hb.incarnation)
    }
    /// Completed heartbeat cycles (write, read heartbeats, read claims) while running.
    pub fn cycles(&self) -> u64 {
        self.cycles
    }
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }
    /// The instant at which this node must have fenced itself unless a heartbeat write succeeds
    /// first; the driver's watchdog enforces it even while the core's thread is stuck in I/O.
    pub fn fence_deadline(&self) -> Option<Millis> {
        match self.phase {
            Phase::Acquire { .. } | Phase::Running | Phase::Stopping => {
                self.heartbeat_ok_at.map(|t| t + self.config.timing.fence_ms as Millis)
            }
            _ => None,
        }
    }
    /// When `poll_action` will next have something to do (if nothing is outstanding).
    pub fn next_deadline(&self) -> Millis {
        let mut t = match self.phase {
            Phase::Acquire { written_at } => written_at + self.acquire_wait_ms(),
            _ => self.next_tick_at,
        };
        if let Some(f) = self.fence_deadline() {
            t = t.min(f);
        }
        t
    }

    // --- commands -----------------------------------------------------------------------------

    /// Asks for a graceful stop: the slot is marked down after the I/O in flight.
    pub fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    // --- outputs ------------------------------------------------------------------------------

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// The next I/O to perform, if any is due. Returns `None` while one is outstanding.
    pub fn poll_action(&mut self, now: Millis) -> Option<Action> {
        if self.pending.is_some() || self.exit().is_some() {
            return None;
        }
        // Time is checked before anything is written: a node that wakes from a freeze fences
        // before it can act on a stale view.
        #[cfg(feature = "planted-bugs")]
        let planted_no_fence = crate::planted::active(crate::planted::Bug::NodeDoesNotFence);
        #[cfg(not(feature = "planted-bugs"))]
        let planted_no_fence = false;
        if let Some(deadline) = self.fence_deadline().filter(|_| !planted_no_fence) {
            if now >= deadline {
                let since_ms = now - self.heartbeat_ok_at.unwrap_or(now);
                self.finish(Exit::Fenced(FenceReason::HeartbeatTimeout { since_ms }));
                return None;
            }
        }
        if self.stop_requested && self.next.is_none() {
            match self.phase {
                Phase::Probe { .. } | Phase::Acquire { .. } => {
                    self.finish(Exit::Stopped);
                    return None;
                }
                Phase::Running => {
                    self.phase = Phase::Stopping;
                    self.attempt = None;
                    let hb = self.heartbeat(HeartbeatState::Down, 0);
                    return self.issue(Action::WriteHeartbeat(hb), Pending::FinalHeartbeat);
                }
                _ => {}
            }
        }
        if let Some((action, pending)) = self.next.take() {
            return self.issue(action, pending);
        }
        match self.phase {
            Phase::Probe { .. } if now >= self.next_tick_at => {
                self.next_tick_at = now + self.config.timing.heartbeat_ms as Millis;
                self.issue(Action::ReadHeartbeats, Pending::ProbeHeartbeats)
            }
            Phase::Acquire { written_at } if now >= written_at + self.acquire_wait_ms() => {
                self.issue(Action::ReadHeartbeats, Pending::AcquireCheck)
            }
            Phase::Running if now >= self.next_tick_at => {
                self.next_tick_at = now + self.config.timing.heartbeat_ms as Millis;
                let epoch = self.master_epoch().unwrap_or(0);
                let hb = self.heartbeat(HeartbeatState::Up, epoch);
                self.issue(Action::WriteHeartbeat(hb), Pending::Heartbeat { issued_at: now })
            }
            _ => None,
        }
    }

    /// Hands back the result of the outstanding action.
    pub fn handle_completion(&mut self, now: Millis, completion: Completion) {
        let pending = self.pending.take().expect("a completion without an outstanding action");
        match (pending, completion) {
            (Pending::ProbeHeartbeats, Completion::HeartbeatsRead(r)) => self.on_probe_heartbeats(now, r),
            (Pending::ProbeClaims, Completion::ClaimsRead(r)) => self.on_probe_claims(now, r),
            (Pending::AcquireWrite { issued_at }, Completion::Written(r)) => match r {
                Ok(()) => {
                    self.heartbeat_ok_at = Some(issued_at);
                    self.phase = Phase::Acquire { written_at: now };
                }
                Err(e) => self.finish(Exit::Refused(Refusal::Io(format!("cannot write the heartbeat slot: {}", e.0)))),
            },
            (Pending::AcquireCheck, Completion::HeartbeatsRead(r)) => self.on_acquire_check(now, r),
            (Pending::Heartbeat { issued_at }, Completion::Written(r)) => match r {
                Ok(()) => {
                    self.heartbeat_ok_at = Some(issued_at);
                    self.next = Some((Action::ReadHeartbeats, Pending::Heartbeats));
                }
                // A failed heartbeat write is retried at the next tick; fencing follows if they
                // keep failing for fence_ms.
                Err(e) => self.io_failed(e),
            },
            (Pending::Heartbeats, Completion::HeartbeatsRead(r)) => match r {
                Ok(hbs) => {
                    self.observe(now, &hbs);
                    if self.check_own_heartbeat(&hbs) {
                        self.next = Some((Action::ReadClaims, Pending::Claims));
                    }
                }
                Err(e) => self.io_failed(e),
            },
            (Pending::Claims, Completion::ClaimsRead(r)) => match r {
                Ok(claims) => self.on_claims(now, claims),
                Err(e) => self.io_failed(e),
            },
            (Pending::ClaimWrite, Completion::Written(r)) => match r {
                Ok(()) => self.next = Some((Action::ReadClaims, Pending::Claims)),
                Err(e) => {
                    self.attempt = None;
                    self.io_failed(e);
                }
            },
            (Pending::CommitWrite { master }, Completion::Written(r)) => match r {
                Ok(()) if master => self.become_master(),
                Ok(()) => {}
                Err(e) => self.io_failed(e),
            },
            (Pending::Superblock, Completion::SuperblockRead(r)) => match r {
                Ok(Some(uuid)) if uuid == self.config.cluster_uuid => {}
                Ok(_) => self.finish(Exit::Fenced(FenceReason::Reformatted)),
                Err(e) => self.io_failed(e),
            },
            (Pending::FinalHeartbeat, Completion::Written(r)) => {
                if let Err(e) = r {
                    self.io_failed(e);
                }
                self.finish(Exit::Stopped);
            }
            (pending, completion) => {
                panic!("completion {completion:?} does not answer {pending:?}")
            }
        }
    }

    // --- internals ----------------------------------------------------------------------------

    fn acquire_wait_ms(&self) -> Millis {
        2 * self.config.timing.heartbeat_ms as Millis
    }

    fn issue(&mut self, action: Action, pending: Pending) -> Option<Action> {
        if let Action::WriteClaim(c) = &action {
            self.own_claim = Some(c.clone());
        }
        if let Action::WriteHeartbeat(hb) = &action {
            self.last_written = Some(hb.clone());
        }
        self.pending = Some(pending);
        Some(action)
    }

    fn finish(&mut self, exit: Exit) {
        self.next = None;
        self.attempt = None;
        self.phase = Phase::Done(exit);
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn io_failed(&mut self, e: IoFailure) {
        self.event(Event::IoFailed(e.0));
    }

    fn heartbeat(&mut self, state: HeartbeatState, master_epoch: u64) -> Heartbeat {
        self.counter += 1;
        Heartbeat {
            node: self.config.node,
            state,
            incarnation: self.me.incarnation,
            counter: self.counter,
            master_epoch,
            written_unix_ms: 0,
            pid: self.config.pid,
            host: self.config.host.clone(),
        }
    }

    /// Reports a corrupt record once, when it has failed two reads in a row: with mmap, a read
    /// that overlaps another process's write fails its checksum once (a torn read, harmless:
    /// it is not used), while real damage stays. Forgets records that read well again.
    fn note_corrupt<T>(&mut self, kind: RecordKind, records: &[Result<T, CorruptRecord>]) {
        let now_bad: Vec<CorruptRecord> = records.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
        for bad in &now_bad {
            let twice = self.suspect_corrupt.iter().any(|r| r.offset == bad.offset);
            let reported = self.reported_corrupt.iter().any(|r| r.offset == bad.offset);
            if twice && !reported {
                self.reported_corrupt.push(bad.clone());
                self.event(Event::Corrupt(bad.clone()));
            }
        }
        self.reported_corrupt.retain(|r| r.kind != kind || now_bad.iter().any(|b| b.offset == r.offset));
        self.suspect_corrupt.retain(|r| r.kind != kind);
        self.suspect_corrupt.extend(now_bad);
    }

    fn observe(&mut self, now: Millis, hbs: &[Result<Heartbeat, CorruptRecord>]) {
        self.note_corrupt(RecordKind::Heartbeat, hbs);
        self.liveness.observe(now, hbs);
        for node in NodeId::all(self.config.max_nodes) {
            if node == self.config.node {
                continue;
            }
            let bit = 1u128 << node.index();
            let l = self.liveness.judge(now, node);
            if l.is_live() && self.reported_live & bit == 0 {
                self.reported_live |= bit;
                let incarnation = self.liveness.heartbeat(node).map_or(0, |h| h.incarnation);
                self.event(Event::NodeLive { node, incarnation });
            } else if l.is_gone() && self.reported_live & bit != 0 {
                self.reported_live &= !bit;
                self.event(Event::NodeGone { node, liveness: l });
            }
        }
    }

    /// Our slot must hold exactly what we last wrote; anything else is another daemon.
    fn check_own_heartbeat(&mut self, hbs: &[Result<Heartbeat, CorruptRecord>]) -> bool {
        let mine = &hbs[self.config.node.index()];
        match (mine, &self.last_written) {
            (Ok(hb), Some(last)) if hb.incarnation != last.incarnation || hb.counter != last.counter => {
                self.finish(Exit::Fenced(FenceReason::SlotTaken { incarnation: hb.incarnation }));
                false
            }
            _ => true,
        }
    }

    fn on_probe_heartbeats(&mut self, now: Millis, r: Result<Vec<Result<Heartbeat, CorruptRecord>>, IoFailure>) {
        let hbs = match r {
            Ok(hbs) => hbs,
            Err(e) => {
                return self.finish(Exit::Refused(Refusal::Io(format!("cannot read the heartbeat region: {}", e.0))))
            }
        };
        self.observe(now, &hbs);
        let Phase::Probe { watching, since } = self.phase.clone() else { unreachable!() };
        let own = hbs[self.config.node.index()].as_ref().ok();
        match (own, watching) {
            (Some(hb), None) if hb.state == HeartbeatState::Up => {
                self.event(Event::WaitingForStaleSlot { incarnation: hb.incarnation });
                self.phase = Phase::Probe { watching: Some((hb.incarnation, hb.counter)), since: now };
            }
            (Some(hb), Some(seen)) if (hb.incarnation, hb.counter) != seen => {
                let host = if hb.host.is_empty() { String::new() } else { format!(" on host {}", hb.host) };
                self.finish(Exit::Refused(Refusal::AlreadyRunning(format!(
                    "node {} is already running (incarnation {}, pid {}{}): its heartbeat is advancing",
                    self.config.node, hb.incarnation, hb.pid, host
                ))));
            }
            (_, Some(_)) if now < since + self.config.timing.dead_ms as Millis => {} // keep watching
            _ => self.next = Some((Action::ReadClaims, Pending::ProbeClaims)),
        }
    }

    fn on_probe_claims(&mut self, now: Millis, r: Result<Vec<Result<Claim, CorruptRecord>>, IoFailure>) {
        let claims = match r {
            Ok(c) => c,
            Err(e) => return self.finish(Exit::Refused(Refusal::Io(format!("cannot read the claim region: {}", e.0)))),
        };
        self.note_corrupt(RecordKind::Claim, &claims);
        let idx = self.config.node.index();
        let own_hb_incarnation = self.liveness.heartbeat(self.config.node).map_or(0, |h| h.incarnation);
        let own = match &claims[idx] {
            Ok(c) => c.clone(),
            Err(_) => {
                // Both copies are damaged: restart the block. Only this node's own proposals
                // lived there, and this incarnation has made none.
                self.event(Event::OwnClaimReset);
                Claim::initial(self.config.node, 1)
            }
        };
        self.me.incarnation = own_hb_incarnation.max(own.writer_incarnation) + 1;
        self.own_claim = Some(own);
        self.claims = claims;
        let hb = self.heartbeat(HeartbeatState::Up, 0);
        self.next = Some((Action::WriteHeartbeat(hb), Pending::AcquireWrite { issued_at: now }));
    }

    fn on_acquire_check(&mut self, now: Millis, r: Result<Vec<Result<Heartbeat, CorruptRecord>>, IoFailure>) {
        let hbs = match r {
            Ok(h) => h,
            Err(e) => {
                return self.finish(Exit::Refused(Refusal::Io(format!("cannot read the heartbeat region: {}", e.0))))
            }
        };
        self.observe(now, &hbs);
        if let Ok(hb) = &hbs[self.config.node.index()] {
            let ours =
                self.last_written.as_ref().is_some_and(|l| (l.incarnation, l.counter) == (hb.incarnation, hb.counter));
            if !ours {
                return self.finish(Exit::Refused(Refusal::AlreadyRunning(format!(
                    "another sdc (pid {}) started on node {} at the same time",
                    hb.pid, self.config.node
                ))));
            }
        }
        self.phase = Phase::Running;
        self.next_tick_at = now;
        self.event(Event::Started { incarnation: self.me.incarnation });
    }

    fn on_claims(&mut self, now: Millis, claims: Vec<Result<Claim, CorruptRecord>>) {
        self.note_corrupt(RecordKind::Claim, &claims);
        self.cycles += 1;
        if self.cycles % SUPERBLOCK_CHECK_CYCLES == 0 && self.attempt.is_none() {
            self.next = Some((Action::ReadSuperblock, Pending::Superblock));
        }
        if let Some(attempt) = self.attempt.as_mut() {
            let step = attempt.on_read(&claims);
            let epoch = attempt.epoch();
            self.claims = claims;
            return self.on_attempt_step(now, epoch, step);
        }
        // Our own block must be ours.
        if let (Ok(c), Some(own)) = (&claims[self.config.node.index()], &self.own_claim) {
            if c != own {
                return self.finish(Exit::Fenced(FenceReason::SlotTaken { incarnation: c.writer_incarnation }));
            }
        }
        let summary = ClaimSummary::of(&claims);
        self.claims = claims;
        if let Role::Master { epoch } = self.role {
            if summary.highest_epoch > epoch {
                return self.finish(Exit::Fenced(FenceReason::Deposed { epoch, newer: summary.highest_epoch }));
            }
            return;
        }
        if let Some(decided) = summary.decided {
            if self.known_master != Some(decided) {
                self.known_master = Some(decided);
                self.event(Event::MasterKnown { epoch: decided.0, master: decided.1 });
                if decided.1 == self.me && decided.0 == summary.highest_epoch {
                    // Decided for us while our commit was lost (we wrote phase 2 and stopped).
                    return self.become_master_of(decided.0);
                }
            }
        }
        self.maybe_claim(now, &summary);
    }

    fn master_gone(&self, now: Millis, summary: &ClaimSummary) -> bool {
        let Some((_, master)) = summary.decided else {
            return true;
        };
        if master.node == self.config.node {
            return master.incarnation != self.me.incarnation;
        }
        match self.liveness.heartbeat(master.node) {
            Some(hb) if hb.incarnation != master.incarnation => true,
            _ => self.liveness.judge(now, master.node).is_gone(),
        }
    }

    /// Eligible nodes below us that may still be alive go first: they claim at once, we
    /// wait two heartbeat intervals per such node. This avoids duelling ballots; safety does
    /// not depend on it.
    fn claim_delay_ms(&self, now: Millis) -> Millis {
        let rank = NodeId::all(self.config.max_nodes)
            .filter(|n| *n < self.config.node)
            .filter(|n| self.config.eligible_nodes & (1u128 << n.index()) != 0)
            .filter(|n| !self.liveness.judge(now, *n).is_gone())
            .count() as Millis;
        rank * 2 * self.config.timing.heartbeat_ms as Millis
    }

    fn maybe_claim(&mut self, now: Millis, summary: &ClaimSummary) {
        if !self.config.master_eligible || self.stop_requested {
            return;
        }
        if !self.master_gone(now, summary) {
            self.master_gone_since = None;
            return;
        }
        let since = *self.master_gone_since.get_or_insert(now);
        if now < since + self.claim_delay_ms(now) || now < self.retry_at || !summary.unreadable.is_empty() {
            return;
        }
        let own = self.own_claim.clone().expect("own claim known once running");
        let epoch = summary.next_epoch().max(own.epoch);
        let (attempt, block) = Attempt::start(self.me, &own, epoch, &self.claims);
        self.event(Event::ClaimStarted { epoch, ballot: attempt.ballot() });
        self.attempt = Some(attempt);
        self.next = Some((Action::WriteClaim(block), Pending::ClaimWrite));
    }

    fn on_attempt_step(&mut self, now: Millis, epoch: u64, step: Step) {
        match step {
            Step::Write(block) => self.next = Some((Action::WriteClaim(block), Pending::ClaimWrite)),
            Step::Decided { epoch, value, commit } => {
                self.attempt = None;
                self.known_master = Some((epoch, value));
                self.event(Event::MasterKnown { epoch, master: value });
                let master = value == self.me;
                match commit {
                    Some(block) => self.next = Some((Action::WriteClaim(block), Pending::CommitWrite { master })),
                    None if master => self.become_master_of(epoch),
                    None => {}
                }
            }
            Step::Aborted(reason) => {
                self.attempt = None;
                if reason == Abort::OwnBlockOverwritten {
                    let incarnation = match &self.claims[self.config.node.index()] {
                        Ok(c) => c.writer_incarnation,
                        Err(_) => 0,
                    };
                    return self.finish(Exit::Fenced(FenceReason::SlotTaken { incarnation }));
                }
                // Back off by a node-specific amount so that duelling candidates separate.
                let stagger = 1 + (self.config.node.index() as Millis % 4);
                self.retry_at = now + stagger * self.config.timing.heartbeat_ms as Millis;
                self.event(Event::ClaimAborted { epoch, reason });
            }
        }
    }

    fn become_master(&mut self) {
        let (epoch, _) = self.known_master.expect("decided before committing");
        self.become_master_of(epoch);
    }

    fn become_master_of(&mut self, epoch: u64) {
        self.role = Role::Master { epoch };
        self.event(Event::BecameMaster { epoch });
        // Announce at once rather than at the next tick.
        self.next_tick_at = 0;
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Started { incarnation } => write!(f, "running as incarnation {incarnation}"),
            Event::WaitingForStaleSlot { incarnation } => write!(
                f,
                "this node's slot shows a running daemon (incarnation {incarnation}); watching it for dead-ms before taking over"
            ),
            Event::NodeLive { node, incarnation } => write!(f, "node {node} is live (incarnation {incarnation})"),
            Event::NodeGone { node, liveness } => match liveness {
                NodeLiveness::NotRunning => write!(f, "node {node} stopped"),
                _ => write!(f, "node {node} is dead: its heartbeat has been still for dead-ms"),
            },
            Event::ClaimStarted { epoch, ballot } => write!(f, "claiming master for epoch {epoch} (ballot {ballot})"),
            Event::ClaimAborted { epoch, reason } => write!(f, "claim for epoch {epoch} aborted: {reason}"),
            Event::MasterKnown { epoch, master } => {
                write!(f, "master of epoch {epoch} is node {} (incarnation {})", master.node, master.incarnation)
            }
            Event::BecameMaster { epoch } => write!(f, "this node is now master (epoch {epoch})"),
            Event::Corrupt(c) => write!(f, "{c}; not used"),
            Event::IoFailed(e) => write!(f, "{e}"),
            Event::OwnClaimReset => write!(f, "both copies of this node's claim block were unreadable; starting it afresh"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Several `NodeCore`s on one in-memory disk in virtual time. I/O is instantaneous and
    //! atomic per action; the interleaving of nodes is shuffled by a seed.
    use super::*;
    use crate::rng::SplitMix64;

    const TIMING: Timing = Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 };

    struct Slot {
        core: Option<NodeCore>,
        frozen_until: Millis,
        exits: Vec<Exit>,
    }

    struct Sim {
        now: Millis,
        hbs: Vec<Heartbeat>,
        claims: Vec<Claim>,
        slots: Vec<Slot>,
        eligible: u128,
        rng: SplitMix64,
        /// (epoch, node) of every master that ever acted.
        masters: Vec<(u64, NodeId)>,
        /// The cluster UUID the superblock holds (changed by a "reformat").
        uuid: [u8; 16],
    }

    impl Sim {
        fn new(n: u16, eligible: u128, seed: u64) -> Sim {
            let mut sim = Sim {
                now: 1,
                hbs: NodeId::all(n).map(Heartbeat::never).collect(),
                claims: NodeId::all(n).map(|id| Claim::initial(id, 1)).collect(),
                slots: (0..n).map(|_| Slot { core: None, frozen_until: 0, exits: Vec::new() }).collect(),
                eligible,
                rng: SplitMix64::new(seed),
                masters: Vec::new(),
                uuid: [9; 16],
            };
            for id in NodeId::all(n) {
                sim.start(id);
            }
            sim
        }

        fn config(&self, node: NodeId) -> NodeConfig {
            NodeConfig {
                node,
                master_eligible: self.eligible & (1 << node.index()) != 0,
                max_nodes: self.hbs.len() as u16,
                timing: TIMING,
                eligible_nodes: self.eligible,
                cluster_uuid: [9; 16],
                pid: node.0 as u32,
                host: "sim".into(),
            }
        }

        fn start(&mut self, node: NodeId) {
            let core = NodeCore::new(self.config(node), self.now);
            self.slots[node.index()].core = Some(core);
        }

        fn core(&self, node: NodeId) -> &NodeCore {
            self.slots[node.index()].core.as_ref().expect("running")
        }

        fn perform(&mut self, action: Action) -> Completion {
            match action {
                Action::ReadHeartbeats => Completion::HeartbeatsRead(Ok(self.hbs.iter().cloned().map(Ok).collect())),
                Action::ReadClaims => Completion::ClaimsRead(Ok(self.claims.iter().cloned().map(Ok).collect())),
                Action::ReadSuperblock => Completion::SuperblockRead(Ok(Some(self.uuid))),
                Action::WriteHeartbeat(hb) => {
                    let i = hb.node.index();
                    self.hbs[i] = hb;
                    Completion::Written(Ok(()))
                }
                Action::WriteClaim(c) => {
                    let i = c.node.index();
                    self.claims[i] = c;
                    Completion::Written(Ok(()))
                }
            }
        }

        /// Nodes acting as master now: running, not frozen, lease not expired.
        fn acting_masters(&self) -> Vec<(NodeId, u64)> {
            self.slots
                .iter()
                .filter(|s| s.frozen_until <= self.now)
                .filter_map(|s| s.core.as_ref())
                .filter(|c| c.fence_deadline().is_some_and(|d| self.now < d))
                .filter_map(|c| c.master_epoch().map(|e| (c.node(), e)))
                .collect()
        }

        fn check_invariants(&mut self) {
            let acting = self.acting_masters();
            assert!(acting.len() <= 1, "t={} two nodes acting as master: {acting:?}", self.now);
            for (node, epoch) in acting {
                if !self.masters.contains(&(epoch, node)) {
                    assert!(
                        self.masters.iter().all(|(e, _)| *e != epoch),
                        "t={} epoch {epoch} has two masters: {node} and {:?}",
                        self.now,
                        self.masters
                    );
                    self.masters.push((epoch, node));
                }
            }
        }

        fn step(&mut self) {
            let n = self.slots.len();
            let offset = self.rng.below(n as u64) as usize;
            for k in 0..n {
                let i = (k + offset) % n;
                if self.slots[i].frozen_until > self.now {
                    continue;
                }
                for _ in 0..32 {
                    let Some(core) = self.slots[i].core.as_mut() else { break };
                    let Some(action) = core.poll_action(self.now) else { break };
                    let completion = self.perform(action);
                    self.slots[i].core.as_mut().unwrap().handle_completion(self.now, completion);
                    self.check_invariants();
                }
                let slot = &mut self.slots[i];
                if let Some(exit) = slot.core.as_ref().and_then(|c| c.exit().cloned()) {
                    slot.exits.push(exit);
                    slot.core = None;
                }
                while let Some(_e) = slot.core.as_mut().and_then(|c| c.poll_event()) {}
            }
            self.check_invariants();
            self.now += 1 + self.rng.below(5);
        }

        fn run_until(&mut self, limit_ms: Millis, what: &str, cond: impl Fn(&Sim) -> bool) -> Millis {
            let start = self.now;
            while !cond(self) {
                assert!(self.now - start < limit_ms, "t={}: not within {limit_ms} ms: {what}", self.now);
                self.step();
            }
            self.now
        }

        fn master(&self) -> Option<NodeId> {
            let acting = self.acting_masters();
            acting.first().map(|(n, _)| *n)
        }
    }

    #[test]
    fn three_nodes_elect_one_master_and_all_agree() {
        for seed in 0..20 {
            let mut sim = Sim::new(3, 0b111, seed);
            sim.run_until(3000, "a master", |s| s.master().is_some());
            let m = sim.master().unwrap();
            sim.run_until(1000, "everyone knows the master", |s| {
                s.slots.iter().all(|x| x.core.as_ref().unwrap().known_master().map(|(_, v)| v.node) == Some(m))
            });
            let t = sim.now;
            sim.run_until(6000, "five quiet seconds", |s| s.now > t + 5000);
            assert_eq!(sim.master(), Some(m), "seed {seed}: the master stays while it is alive");
        }
    }

    #[test]
    fn crashed_master_is_replaced_only_after_dead_ms() {
        for seed in 0..20 {
            let mut sim = Sim::new(3, 0b111, seed);
            sim.run_until(3000, "a master", |s| s.master().is_some());
            let old = sim.master().unwrap();
            sim.slots[old.index()].core = None; // kill -9
            let crashed_at = sim.now;
            let t = sim
                .run_until(TIMING.dead_ms as Millis + 3000, "a new master", |s| s.master().is_some_and(|m| m != old));
            assert!(
                t >= crashed_at + (TIMING.dead_ms - TIMING.heartbeat_ms) as Millis,
                "seed {seed}: claimed before dead-ms"
            );
        }
    }

    #[test]
    fn frozen_master_fences_on_waking_and_never_acts_beside_the_new_one() {
        for seed in 0..20 {
            let mut sim = Sim::new(3, 0b111, seed);
            sim.run_until(3000, "a master", |s| s.master().is_some());
            let old = sim.master().unwrap();
            sim.slots[old.index()].frozen_until = sim.now + 3 * TIMING.dead_ms as Millis;
            sim.run_until(5000, "a new master", |s| s.master().is_some_and(|m| m != old));
            sim.run_until(5000, "the old master wakes and exits", |s| s.slots[old.index()].core.is_none());
            assert!(
                matches!(sim.slots[old.index()].exits[..], [Exit::Fenced(FenceReason::HeartbeatTimeout { .. })]),
                "seed {seed}: {:?}",
                sim.slots[old.index()].exits
            );
        }
    }

    #[test]
    fn clean_stop_of_the_master_hands_over_without_waiting_for_dead_ms() {
        let mut sim = Sim::new(3, 0b111, 7);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        let old = sim.master().unwrap();
        sim.slots[old.index()].core.as_mut().unwrap().request_stop();
        let stopped_at = sim.now;
        let t = sim.run_until(3000, "a new master", |s| s.master().is_some_and(|m| m != old));
        assert!(t < stopped_at + TIMING.dead_ms as Millis, "handover took {} ms", t - stopped_at);
        assert_eq!(sim.slots[old.index()].exits, vec![Exit::Stopped]);
        assert_eq!(sim.hbs[old.index()].state, HeartbeatState::Down);
    }

    #[test]
    fn second_daemon_on_a_live_slot_is_refused_and_disturbs_nothing() {
        let mut sim = Sim::new(2, 0b11, 3);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        let before = (sim.master(), sim.core(NodeId(2)).incarnation());
        // A second daemon for node 2 in a slot of its own in the simulation: append it.
        sim.slots.push(Slot {
            core: Some(NodeCore::new(sim.config(NodeId(2)), sim.now)),
            frozen_until: 0,
            exits: vec![],
        });
        sim.run_until(3000, "the second daemon ends", |s| s.slots[2].core.is_none());
        assert!(
            matches!(sim.slots[2].exits[..], [Exit::Refused(Refusal::AlreadyRunning(_))]),
            "{:?}",
            sim.slots[2].exits
        );
        sim.slots.pop();
        let t = sim.now;
        sim.run_until(3000, "a while", |s| s.now > t + 2000);
        assert_eq!((sim.master(), sim.core(NodeId(2)).incarnation()), before);
        assert!(sim.slots.iter().all(|s| s.exits.is_empty()));
    }

    #[test]
    fn restarted_node_takes_a_new_incarnation() {
        let mut sim = Sim::new(2, 0b11, 5);
        sim.run_until(3000, "node 2 running", |s| s.core(NodeId(2)).is_running());
        let first = sim.core(NodeId(2)).incarnation();
        sim.slots[1].core = None;
        sim.start(NodeId(2));
        sim.run_until(5000, "node 2 running again", |s| s.core(NodeId(2)).is_running());
        assert!(sim.core(NodeId(2)).incarnation() > first);
    }

    #[test]
    fn only_eligible_nodes_become_master() {
        let mut sim = Sim::new(3, 0b010, 9);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        assert_eq!(sim.master(), Some(NodeId(2)));
        sim.slots[1].core = None;
        let t = sim.now;
        sim.run_until(6000, "a while", |s| s.now > t + 5000);
        assert_eq!(sim.master(), None, "no eligible node is left");
    }

    #[test]
    fn a_torn_read_is_not_reported_but_lasting_damage_is_once() {
        let sim = Sim::new(2, 0b11, 1);
        let mut core = NodeCore::new(sim.config(NodeId(1)), 0);
        let bad = |offset| CorruptRecord { kind: RecordKind::Heartbeat, offset, problem: crate::error::Problem::Blank };
        let good = Ok(Heartbeat::never(NodeId(2)));
        let reported = |core: &mut NodeCore| {
            std::iter::from_fn(|| core.poll_event()).filter(|e| matches!(e, Event::Corrupt(_))).count()
        };
        core.note_corrupt(RecordKind::Heartbeat, &[good.clone(), Err(bad(512))]);
        assert_eq!(reported(&mut core), 0, "one failed read may be a torn read");
        core.note_corrupt(RecordKind::Heartbeat, &[good.clone(), good.clone()]);
        core.note_corrupt(RecordKind::Heartbeat, &[good.clone(), Err(bad(512))]);
        assert_eq!(reported(&mut core), 0, "healed in between: torn again, not damaged");
        core.note_corrupt(RecordKind::Heartbeat, &[good.clone(), Err(bad(512))]);
        core.note_corrupt(RecordKind::Heartbeat, &[good.clone(), Err(bad(512))]);
        assert_eq!(reported(&mut core), 1, "lasting damage is reported once");
        core.note_corrupt(RecordKind::Claim, &[good.clone(), good.clone()]);
        core.note_corrupt(RecordKind::Heartbeat, &[good.clone(), Err(bad(512))]);
        assert_eq!(reported(&mut core), 0, "a read of another kind forgets nothing");
    }

    #[test]
    fn reformatted_disk_fences_every_node() {
        let mut sim = Sim::new(3, 0b111, 11);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        sim.uuid = [0xEE; 16];
        sim.run_until(SUPERBLOCK_CHECK_CYCLES * 2 * TIMING.heartbeat_ms as Millis, "every node gone", |s| {
            s.slots.iter().all(|x| x.core.is_none())
        });
        for slot in &sim.slots {
            assert_eq!(slot.exits, vec![Exit::Fenced(FenceReason::Reformatted)]);
        }
    }

    /// Random crashes, restarts and freezes; the invariants are checked after every action,
    /// and once the faults stop a master is elected within a bound.
    #[test]
    fn random_faults_keep_one_master_and_recover() {
        for seed in 0..300 {
            let n = 2 + (seed % 4) as u16;
            let mut sim = Sim::new(n, (1u128 << n) - 1, seed);
            let fault_until = 20_000;
            while sim.now < fault_until {
                sim.step();
                let r = sim.rng.below(1000);
                let i = sim.rng.below(n as u64) as usize;
                let node = NodeId::from_index(i);
                match r {
                    0 => sim.slots[i].core = None,
                    1 if sim.slots[i].core.is_none() => sim.start(node),
                    2 => sim.slots[i].frozen_until = sim.now + sim.rng.below(3 * TIMING.dead_ms as u64),
                    3 if sim.slots[i].core.is_none() => sim.start(node),
                    _ => {}
                }
            }
            for node in NodeId::all(n) {
                if sim.slots[node.index()].core.is_none() {
                    sim.start(node);
                }
                sim.slots[node.index()].frozen_until = 0;
            }
            // Liveness: with every node up and no faults, a master within a stated bound:
            // dead-ms to notice the old master, plus the acquisition of restarted slots
            // (dead-ms), plus the staggered claims.
            let bound = 3 * TIMING.dead_ms as Millis + 2000;
            sim.run_until(bound, &format!("seed {seed}: a master after the faults stop"), |s| {
                // Nodes fenced during the run are restarted, as an operator or systemd would.
                s.master().is_some()
            });
        }
    }
}
