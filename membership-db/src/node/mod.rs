//! [`NodeCore`]: one node's daemon logic (heartbeat, liveness, slot ownership, master claim,
//! self-fencing) as a sans-IO state machine.
//!
//! The driver asks [`NodeCore::poll_action`] for the next I/O, performs it, and hands the result
//! back with [`NodeCore::handle_completion`]; at most one I/O is outstanding. The core never
//! reads a clock: every call takes `now`, milliseconds on the driver's monotonic clock.
//!
//! # Lifecycle ([`startup`] and [`running`])
//!
//! * **Probe**: read the heartbeat region. If our slot shows a running daemon (state up), watch
//!   it: if it moves within `dead_ms`, refuse to start and write nothing. It need not be
//!   watched that long when the cluster state proves that incarnation stopped (the master found
//!   its heartbeat still for `dead_ms`, so it fenced or died and can never write again). Then
//!   read the claim blocks.
//! * **Acquire**: write our first heartbeat with a new incarnation, wait two heartbeat
//!   intervals, and read the slot again; if another daemon started at the same moment and
//!   overwrote it, refuse (a delta lease, as sanlock's host ids).
//! * **Running**: every `heartbeat_ms`, write the heartbeat and read the heartbeat region (the
//!   config stamp and every heartbeat up to the highest node of the table): one write and one
//!   read. The claim blocks are read only while no live master is visible (an election), the
//!   node table only when the stamp's generation moved, the superblock only when the stamp's
//!   UUID differs or the stamp stays unreadable.
//! * **Stopping**: write the heartbeat as cleanly down, then exit.
//!
//! # Fencing
//!
//! A node fences itself (stops acting and exits) when no heartbeat write has succeeded for
//! `fence_ms` counted from when that write was *issued* (the data may be visible from then on),
//! when its own slot holds another daemon's writes, or, as master, when a later epoch appears
//! in any heartbeat or claim block: some node judged it dead.

mod running;
mod startup;
#[cfg(test)]
mod tests;

use crate::claim::{Abort, Attempt, BlockView};
use crate::error::{CorruptRecord, RecordKind};
use crate::format::*;
use crate::liveness::{Liveness, NodeLiveness};
use std::collections::VecDeque;

/// What the core needs to know about its node and cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeId,
    pub max_nodes: u16,
    pub timing: Timing,
    /// The cluster this daemon joined; a different one on the disk means it was reformatted.
    pub cluster_uuid: [u8; 16],
    /// The node table as read at start, and the config stamp generation it was read at.
    pub table: TableView,
    pub table_generation: u64,
    /// The highest incarnation any of this node's records shows (request, acknowledgements):
    /// the new incarnation goes above it even when the heartbeat and claim slots are damaged.
    pub incarnation_floor: u64,
    pub pid: u32,
    pub host: HostName,
    /// From the superblock: how long the master lets a pair of joined nodes stay unable to
    /// reach each other over the interconnect before it arbitrates.
    pub link_timeout_ms: u32,
}

impl NodeConfig {
    pub fn master_eligible(&self) -> bool {
        self.table.eligible.contains(self.node)
    }
}

/// A failed I/O, as the core sees it: it only needs to know that it failed, and why for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFailure(pub String);

/// An I/O for the driver to perform. At most one is outstanding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the config stamp and the heartbeats of nodes 1 to `through`, in one I/O.
    ReadBeacons {
        through: NodeId,
    },
    /// The driver stamps `written_unix_ms` (display only) before writing.
    WriteHeartbeat(Heartbeat),
    /// Read both copies of every claim block.
    ReadClaims,
    WriteClaim(Claim),
    /// Read the superblocks: the driver answers with the cluster UUID of the newest valid one.
    ReadSuperblock,
    ReadNodeTable,
    /// Read the cluster state a heartbeat advertises (at startup: the proof that a stale slot's
    /// daemon stopped).
    ReadClusterState(StateRef),
    /// Read every copy of the cluster state: which nodes were master in which epochs, when a
    /// damaged claim block leaves that unknown (rare: an extra read in an election, or at the
    /// start of a daemon whose own block is damaged).
    ReadClusterStates,
}

/// The result of the outstanding action.
#[derive(Debug, Clone)]
pub enum Completion {
    BeaconsRead(Result<Beacons, IoFailure>),
    ClaimsRead(Result<Vec<Copies<Claim>>, IoFailure>),
    Written(Result<(), IoFailure>),
    /// The UUID of the newest valid superblock, or `None` when neither copy is valid.
    SuperblockRead(Result<Option<[u8; 16]>, IoFailure>),
    NodeTableRead(Result<Vec<Result<NodeEntry, CorruptRecord>>, IoFailure>),
    ClusterStateRead(Result<Result<ClusterState, CorruptRecord>, IoFailure>),
    ClusterStatesRead(Result<Vec<Result<Option<ClusterState>, CorruptRecord>>, IoFailure>),
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
    /// Forced out of the cluster, this node stopped everything and marked its heartbeat
    /// fenced ([`NodeCore::mark_fenced`]), so the survivors need not wait `dead_ms`.
    ForcedOut,
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
            FenceReason::ForcedOut => {
                write!(f, "forced out of the cluster: stopped everything and marked itself fenced")
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
    Started {
        incarnation: u64,
    },
    WaitingForStaleSlot {
        incarnation: u64,
    },
    /// The cluster state shows the stale slot's incarnation stopped: no need to wait.
    StaleSlotProvenStopped {
        incarnation: u64,
        epoch: u64,
    },
    /// Nodes whose heartbeats this read found live that were not before (one event per read:
    /// a daemon starting in a large cluster finds hundreds at once), with their incarnations.
    NodesLive {
        nodes: Vec<(NodeId, u64)>,
    },
    NodeGone {
        node: NodeId,
        liveness: NodeLiveness,
    },
    ClaimStarted {
        epoch: u64,
        ballot: u64,
    },
    ClaimAborted {
        epoch: u64,
        reason: Abort,
    },
    MasterKnown {
        epoch: u64,
        master: ClaimValue,
    },
    BecameMaster {
        epoch: u64,
    },
    Corrupt(CorruptRecord),
    IoFailed(String),
    /// A copy of this node's claim block was damaged; it was rewritten from what this daemon
    /// holds.
    ClaimRepaired {
        offset: u64,
    },
    /// This node's claim block was damaged when it started: a fresh block was written, and this
    /// node claims no epoch up to `through` (its lost ballots may have been there).
    OwnClaimReset {
        through: u64,
    },
    /// The node table changed (generation of the config stamp).
    TableChanged {
        generation: u64,
    },
    /// The config stamp cannot be read: the node table and superblock are polled instead.
    StampUnreadable,
}

/// Bound on queued events; older ones are dropped (and counted) past it.
pub const EVENTS_MAX: usize = 256;
/// Bound on follow-up I/O queued by one completion.
const FOLLOW_UPS_MAX: usize = 8;
/// While the config stamp cannot be read, the superblock and the node table are read every this
/// many heartbeat intervals instead.
pub const STAMP_FALLBACK_TICKS: u64 = 8;

/// The right to act: the last heartbeat that landed, and when its write was issued.
#[derive(Debug, Clone)]
struct Lease {
    heartbeat_ok_at: Millis,
    /// What our slot must hold: anything else there is another daemon.
    last_landed: Heartbeat,
}

#[derive(Debug, Clone)]
enum Phase {
    Probe(startup::Probe),
    Acquire(startup::Acquire),
    Running(Box<running::Running>),
    Stopping { lease: Lease },
    Done(Exit),
}

/// The I/O in flight, what it is for, and what it carries until it completes.
#[derive(Debug, Clone)]
enum Pending {
    ProbeBeacons,
    ProbeState,
    ProbeClaims,
    /// The claims as read, while the cluster state copies are read.
    ProbeStates {
        claims: Vec<Copies<Claim>>,
    },
    /// The slot's first heartbeat, and what it starts once it lands.
    AcquireWrite {
        issued_at: Millis,
        acquiring: Box<startup::Acquiring>,
    },
    AcquireCheck,
    FreshClaim,
    /// A heartbeat: it becomes the lease's `last_landed` when the write lands.
    Heartbeat {
        issued_at: Millis,
        heartbeat: Box<Heartbeat>,
    },
    Beacons,
    Claims,
    States,
    ClaimWrite(ClaimWrite),
    Superblock,
    NodeTable,
    FinalHeartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimWrite {
    Attempt,
    /// The decision of `epoch`, for us or for another.
    Commit {
        epoch: u64,
        master: bool,
    },
    Repair,
}

/// What the node publishes in its heartbeat for the membership manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Advert {
    pub cluster_state: StateRef,
    pub request_seq: u64,
    pub ack_seq: u64,
    /// The cluster state the master advertises cannot be read here.
    pub state_unreadable: bool,
}

pub struct NodeCore {
    config: NodeConfig,
    me: ClaimValue,
    phase: Phase,
    pending: Option<Pending>,
    /// I/O decided by completions, issued by the next polls in order.
    follow_ups: VecDeque<(Action, Pending)>,
    /// Heartbeat counter: advances on every write.
    counter: u64,
    liveness: Liveness,
    table: TableView,
    table_generation: u64,
    /// The newest table generation a config stamp showed (the table is read to catch up).
    stamp_generation: Option<u64>,
    /// `sdc leave` requests counted in this node's table entry, as last read.
    leave_requests: Option<u64>,
    /// The highest epoch each node is known to have acted as master in (by slot index).
    acted: Vec<u64>,
    /// Nodes the membership manager needs observed (the members of its cluster state), even
    /// when the node table does not show them.
    watched: NodeSet,
    advert: Advert,
    /// The peers this node reaches over the interconnect (`None`: it runs none), as the driver
    /// last said ([`NodeCore::set_reachable`]); published in every heartbeat.
    reachable: Option<NodeSet>,
    stop_requested: bool,
    reported_live: NodeSet,
    reported_corrupt: Vec<CorruptRecord>,
    suspect_corrupt: Vec<CorruptRecord>,
    events: VecDeque<Event>,
    events_dropped: u64,
}

impl NodeCore {
    pub fn new(config: NodeConfig, now: Millis) -> NodeCore {
        assert!(config.node.0 >= 1 && config.node.0 <= config.max_nodes, "node id inside the cluster");
        assert!(config.max_nodes <= NODES_MAX, "cluster size within the format's bound");
        let liveness = Liveness::new(config.max_nodes, config.timing.dead_ms);
        NodeCore {
            me: ClaimValue { node: config.node, incarnation: 0 },
            table: config.table.clone(),
            table_generation: config.table_generation,
            stamp_generation: None,
            acted: vec![0; config.max_nodes as usize],
            watched: NodeSet::EMPTY,
            config,
            phase: Phase::Probe(startup::Probe::new(now)),
            pending: None,
            follow_ups: VecDeque::new(),
            counter: 0,
            liveness,
            leave_requests: None,
            advert: Advert::default(),
            reachable: None,
            stop_requested: false,
            reported_live: NodeSet::EMPTY,
            reported_corrupt: Vec::new(),
            suspect_corrupt: Vec::new(),
            events: VecDeque::new(),
            events_dropped: 0,
        }
    }

    // --- getters ------------------------------------------------------------------------------

    pub fn node(&self) -> NodeId {
        self.config.node
    }
    pub fn incarnation(&self) -> u64 {
        self.me.incarnation
    }
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }
    /// The epoch this node is acting master of.
    pub fn master_epoch(&self) -> Option<u64> {
        self.running().and_then(|r| r.master_epoch())
    }
    /// The master this node follows: the highest epoch decided in the claims or advertised by a
    /// live heartbeat.
    pub fn known_master(&self) -> Option<(u64, ClaimValue)> {
        self.running().and_then(|r| r.known_master)
    }
    /// Whether a master is visible: known, and not judged gone.
    pub fn master_visible(&self, now: Millis) -> bool {
        self.running().is_some_and(|r| !self.master_gone(now, r))
    }
    pub fn exit(&self) -> Option<&Exit> {
        match &self.phase {
            Phase::Done(exit) => Some(exit),
            _ => None,
        }
    }
    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running(_))
    }
    pub fn liveness(&self, now: Millis, node: NodeId) -> NodeLiveness {
        self.liveness.judge(now, node)
    }
    /// The last readable heartbeat of `node`.
    pub fn heartbeat(&self, node: NodeId) -> Option<&Heartbeat> {
        self.liveness.heartbeat(node)
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
    /// The incarnation of `node` that this node has seen stop: its heartbeat still for
    /// `dead_ms`, or marked down or fenced.
    pub fn stopped_incarnation(&self, now: Millis, node: NodeId) -> Option<u64> {
        if node == self.config.node {
            return None;
        }
        let hb = self.liveness.heartbeat(node)?;
        (hb.state != HeartbeatState::Never && self.liveness.judge(now, node).is_gone()).then_some(hb.incarnation)
    }
    /// Successful reads of the heartbeat region while running: the membership manager looks at
    /// the heartbeats again when this moves.
    pub fn beacon_reads(&self) -> u64 {
        self.running().map_or(0, |r| r.beacon_reads)
    }
    /// Completed heartbeat intervals while running.
    pub fn ticks(&self) -> u64 {
        self.running().map_or(0, |r| r.ticks)
    }
    /// The node table as last read.
    pub fn table(&self) -> &TableView {
        &self.table
    }
    /// The `sdc leave` count of this node's table entry, as last read (`None` before a read).
    pub fn leave_requests(&self) -> Option<u64> {
        self.leave_requests
    }
    /// The instant at which this node must have fenced itself unless a heartbeat write succeeds
    /// first; the driver's watchdog enforces it even while the core's thread is stuck in I/O.
    pub fn fence_deadline(&self) -> Option<Millis> {
        self.lease().map(|l| l.heartbeat_ok_at + self.config.timing.fence_ms as Millis)
    }
    /// When `poll_action` will next have something to do (if nothing is outstanding).
    pub fn next_deadline(&self) -> Millis {
        let mut t = match &self.phase {
            Phase::Probe(p) => p.next_read_at,
            Phase::Acquire(a) => a.written_at + self.acquire_wait_ms(),
            Phase::Running(r) => r.next_deadline(),
            Phase::Stopping { .. } | Phase::Done(_) => Millis::MAX,
        };
        if !self.follow_ups.is_empty() {
            t = 0;
        }
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

    /// What the next heartbeats publish for the membership manager.
    pub fn set_advert(&mut self, advert: Advert) {
        self.advert = advert;
    }

    /// The peers this node reaches over the interconnect, or `None` when it runs none (then it
    /// is never judged by its links). Published in the next heartbeat: when the set changed,
    /// that heartbeat is written early, but no sooner than a quarter interval after the last
    /// one (a flapping link costs at most four writes an interval); an unchanged set costs no
    /// write.
    pub fn set_reachable(&mut self, now: Millis, reachable: Option<NodeSet>) {
        let me = self.config.node;
        let reachable = reachable.map(|mut s| {
            s.remove(me);
            s
        });
        if reachable == self.reachable {
            return;
        }
        self.reachable = reachable;
        let hb_ms = self.config.timing.heartbeat_ms as Millis;
        let quarter = (hb_ms / 4).max(1);
        if let Phase::Running(r) = &mut self.phase {
            let earliest = (r.next_tick_at.saturating_sub(hb_ms) + quarter).max(now);
            r.next_tick_at = r.next_tick_at.min(earliest);
        }
    }

    /// What this node publishes of its interconnect (see [`NodeCore::set_reachable`]).
    pub fn reachable(&self) -> Option<NodeSet> {
        self.reachable
    }

    /// The last write of a node forced out while alive, once it has stopped everything it ran:
    /// its own heartbeat, marked fenced, so that the survivors know at once that it stopped
    /// (instead of waiting `dead_ms` for its heartbeat to go still) and may recover what it held.
    /// Only while its lease holds (a node past its fence deadline may no longer write: the
    /// others will judge it dead) and with no I/O outstanding. The core ends
    /// (`Exit::Fenced(FenceReason::ForcedOut)`); the driver performs the write and hands nothing
    /// back. Its own slot only: the single-writer rule holds.
    pub fn mark_fenced(&mut self, now: Millis) -> Option<Action> {
        if !self.is_running() || self.pending.is_some() || self.fence_deadline().is_none_or(|d| now >= d) {
            return None;
        }
        let hb = self.next_heartbeat(HeartbeatState::Fenced, 0);
        self.finish(Exit::Fenced(FenceReason::ForcedOut));
        Some(Action::WriteHeartbeat(hb))
    }

    /// Writes the heartbeat at the next poll, so that a new advert is seen at once.
    pub fn announce(&mut self) {
        if let Phase::Running(r) = &mut self.phase {
            r.next_tick_at = 0;
        }
    }

    /// Reads the heartbeat region every quarter interval between heartbeats (while transitions
    /// are in flight), or only after each heartbeat.
    pub fn set_fast_poll(&mut self, now: Millis, fast: bool) {
        let quarter = (self.config.timing.heartbeat_ms as Millis / 4).max(1);
        if let Phase::Running(r) = &mut self.phase {
            match (fast, r.next_poll_at) {
                (true, None) => r.next_poll_at = Some(now + quarter),
                (false, Some(_)) => r.next_poll_at = None,
                _ => {}
            }
        }
    }

    /// Nodes whose heartbeats must be read whatever the node table says: the members of the
    /// cluster state (a member whose table entry is damaged or missing is still observed).
    pub fn set_watched(&mut self, nodes: NodeSet) {
        self.watched = nodes;
    }

    /// Learns from cluster state copies which node was master in which epoch.
    fn note_states(&mut self, copies: &[Result<Option<ClusterState>, CorruptRecord>]) {
        for s in copies.iter().flatten().flatten() {
            self.note_acting_master(s.master, s.epoch);
        }
    }

    /// The membership manager holds a cluster state written by `master` in `epoch`: that node
    /// acted as master in that epoch (the claim rule for damaged blocks needs to know).
    pub fn note_acting_master(&mut self, master: NodeId, epoch: u64) {
        if let Some(a) = self.acted.get_mut(master.index()) {
            *a = (*a).max(epoch);
        }
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
                let since_ms = now - self.lease().map_or(now, |l| l.heartbeat_ok_at);
                self.finish(Exit::Fenced(FenceReason::HeartbeatTimeout { since_ms }));
                return None;
            }
        }
        if self.stop_requested {
            match &self.phase {
                Phase::Probe(_) | Phase::Acquire(_) => {
                    self.finish(Exit::Stopped);
                    return None;
                }
                Phase::Running(r) => {
                    let lease = r.lease.clone();
                    self.phase = Phase::Stopping { lease };
                    self.follow_ups.clear();
                    let hb = self.next_heartbeat(HeartbeatState::Down, 0);
                    return self.issue(Action::WriteHeartbeat(hb), Pending::FinalHeartbeat);
                }
                _ => return None,
            }
        }
        if let Some((action, pending)) = self.follow_ups.pop_front() {
            return self.issue(action, pending);
        }
        match &self.phase {
            Phase::Probe(_) => self.poll_probe(now),
            Phase::Acquire(_) => self.poll_acquire(now),
            Phase::Running(_) => self.poll_running(now),
            Phase::Stopping { .. } | Phase::Done(_) => None,
        }
    }

    /// Hands back the result of the outstanding action.
    pub fn handle_completion(&mut self, now: Millis, completion: Completion) {
        let pending = self.pending.take().expect("a completion without an outstanding action");
        if self.exit().is_some() {
            return;
        }
        match (pending, completion) {
            (Pending::ProbeBeacons, Completion::BeaconsRead(r)) => self.on_probe_beacons(now, r),
            (Pending::ProbeState, Completion::ClusterStateRead(r)) => self.on_probe_state(r),
            (Pending::ProbeClaims, Completion::ClaimsRead(r)) => self.on_probe_claims(now, r),
            (Pending::ProbeStates { claims }, Completion::ClusterStatesRead(r)) => self.on_probe_states(now, claims, r),
            (Pending::AcquireWrite { issued_at, acquiring }, Completion::Written(r)) => {
                self.on_acquire_write(now, issued_at, *acquiring, r)
            }
            (Pending::AcquireCheck, Completion::BeaconsRead(r)) => self.on_acquire_check(now, r),
            (Pending::FreshClaim, Completion::Written(r)) => self.on_fresh_claim(now, r),
            (Pending::Heartbeat { issued_at, heartbeat }, Completion::Written(r)) => {
                self.on_heartbeat_written(now, issued_at, *heartbeat, r)
            }
            (Pending::Beacons, Completion::BeaconsRead(r)) => self.on_beacons(now, r),
            (Pending::Claims, Completion::ClaimsRead(r)) => self.on_claims(now, r),
            (Pending::States, Completion::ClusterStatesRead(r)) => self.on_states(r),
            (Pending::ClaimWrite(kind), Completion::Written(r)) => self.on_claim_written(kind, r),
            (Pending::Superblock, Completion::SuperblockRead(r)) => self.on_superblock(r),
            (Pending::NodeTable, Completion::NodeTableRead(r)) => self.on_node_table(r),
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

    // --- internals shared by the phases -------------------------------------------------------

    fn running(&self) -> Option<&running::Running> {
        match &self.phase {
            Phase::Running(r) => Some(r),
            _ => None,
        }
    }

    fn lease(&self) -> Option<&Lease> {
        match &self.phase {
            Phase::Acquire(a) => Some(&a.lease),
            Phase::Running(r) => Some(&r.lease),
            Phase::Stopping { lease } => Some(lease),
            _ => None,
        }
    }

    fn acquire_wait_ms(&self) -> Millis {
        2 * self.config.timing.heartbeat_ms as Millis
    }

    fn issue(&mut self, action: Action, pending: Pending) -> Option<Action> {
        self.pending = Some(pending);
        Some(action)
    }

    fn follow_up(&mut self, action: Action, pending: Pending) {
        assert!(self.follow_ups.len() < FOLLOW_UPS_MAX, "follow-up I/O is bounded");
        if !self.follow_ups.iter().any(|(a, _)| *a == action) {
            self.follow_ups.push_back((action, pending));
        }
    }

    fn finish(&mut self, exit: Exit) {
        self.follow_ups.clear();
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

    /// The next heartbeat to write, with what this node publishes.
    fn next_heartbeat(&mut self, state: HeartbeatState, master_epoch: u64) -> Heartbeat {
        self.counter += 1;
        let claim_epoch = match &self.phase {
            Phase::Running(r) => r.own_claim.epoch,
            Phase::Acquire(a) => a.own.epoch,
            Phase::Stopping { lease } => lease.last_landed.claim_epoch,
            _ => 0,
        };
        let flags = if self.advert.state_unreadable { heartbeat_flags::STATE_UNREADABLE } else { 0 };
        Heartbeat {
            node: self.config.node,
            state,
            flags,
            incarnation: self.me.incarnation,
            counter: self.counter,
            master_epoch,
            claim_epoch: claim_epoch.max(master_epoch),
            acted_epoch: self.acted[self.config.node.index()].max(master_epoch),
            cluster_state: self.advert.cluster_state,
            request_seq: self.advert.request_seq,
            ack_seq: self.advert.ack_seq,
            table_generation: self.table_generation,
            written_unix_ms: 0,
            pid: self.config.pid,
            host: self.config.host,
            reaches: self.reachable,
        }
    }

    /// Reports a corrupt record once, when it has failed two reads in a row: with mmap, a read
    /// that overlaps another process's write fails its checksum once (a torn read, harmless:
    /// it is not used), while real damage stays. Forgets records that read well again.
    fn note_corrupt<'a>(&mut self, kind: RecordKind, records: impl Iterator<Item = Option<&'a CorruptRecord>>) {
        let now_bad: Vec<CorruptRecord> = records.flatten().cloned().collect();
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

    /// Feeds a read of the heartbeat region to the liveness observer (which keeps the
    /// heartbeats: [`NodeCore::heartbeat`]) and the log. Returns the config stamp and the nodes
    /// whose heartbeat this read could decode.
    fn observe(&mut self, now: Millis, beacons: Beacons) -> (Result<ConfigStamp, CorruptRecord>, NodeSet) {
        let stamp_err = beacons.stamp.as_ref().err();
        self.note_corrupt(
            RecordKind::Heartbeat,
            beacons.heartbeats.iter().map(|r| r.as_ref().err()).chain(std::iter::once(stamp_err)),
        );
        let mut readable = NodeSet::EMPTY;
        for (i, hb) in beacons.heartbeats.iter().enumerate() {
            if let Ok(hb) = hb {
                readable.insert(NodeId::from_index(i));
                self.acted[i] = self.acted[i].max(hb.acted_epoch).max(hb.master_epoch);
            }
        }
        let through = beacons.heartbeats.len() as u16;
        self.liveness.observe(now, beacons.heartbeats);
        let mut live = Vec::new();
        for node in NodeId::all(through) {
            if node == self.config.node {
                continue;
            }
            let l = self.liveness.judge(now, node);
            if l.is_live() && !self.reported_live.contains(node) {
                self.reported_live.insert(node);
                live.push((node, self.liveness.heartbeat(node).map_or(0, |h| h.incarnation)));
            } else if l.is_gone() && self.reported_live.contains(node) {
                self.reported_live.remove(node);
                self.event(Event::NodeGone { node, liveness: l });
            }
        }
        if !live.is_empty() {
            self.event(Event::NodesLive { nodes: live });
        }
        (beacons.stamp, readable)
    }

    /// How a candidate sees each claim block (see [`BlockView`]): a block with a damaged copy
    /// is lost when its owner cannot be running, else unreadable. Our own block is judged by
    /// the caller.
    fn block_views(&self, now: Millis, copies: &[Copies<Claim>]) -> Vec<BlockView> {
        copies
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let node = NodeId::from_index(i);
                #[cfg(feature = "planted-bugs")]
                let planted = crate::planted::active(crate::planted::Bug::DamagedBlockBlocksElections);
                #[cfg(not(feature = "planted-bugs"))]
                let planted = false;
                match c {
                    [Ok(a), Ok(b)] => BlockView::Read(if a.seq >= b.seq { a.clone() } else { b.clone() }),
                    _ if !planted && node != self.config.node && self.liveness.judge(now, node).is_gone() => {
                        BlockView::Lost { acted_through: self.acted[i] }
                    }
                    _ => BlockView::Unreadable,
                }
            })
            .collect()
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
            Event::StaleSlotProvenStopped { incarnation, epoch } => write!(
                f,
                "the cluster state of epoch {epoch} shows incarnation {incarnation} stopped: taking over its slot at once"
            ),
            Event::NodesLive { nodes } => match nodes.as_slice() {
                [(node, incarnation)] => write!(f, "node {node} is live (incarnation {incarnation})"),
                _ => {
                    let set: NodeSet = nodes.iter().map(|(n, _)| *n).collect();
                    write!(f, "{} nodes are live: {}", nodes.len(), set.ranges_text())
                }
            },
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
            Event::ClaimRepaired { offset } => {
                write!(f, "a copy of this node's claim block (offset {offset}) was damaged; rewrote it from memory")
            }
            Event::OwnClaimReset { through } => write!(
                f,
                "this node's claim block was damaged; wrote a fresh one, and this node claims no epoch up to {through}"
            ),
            Event::TableChanged { generation } => write!(f, "the node table changed (generation {generation}); read it"),
            Event::StampUnreadable => write!(
                f,
                "the config stamp is unreadable; reading the node table and superblock every {STAMP_FALLBACK_TICKS} heartbeats until an admin command rewrites it"
            ),
        }
    }
}
