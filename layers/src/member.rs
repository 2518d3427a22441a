//! [`MemberCore`]: a node's whole daemon logic, sans-IO. It wraps the [`NodeCore`] (heartbeat,
//! liveness, master claim, self-fencing) and adds the membership manager: the node's
//! [`Participant`], and, while this node is master, the [`sequencer`](crate::sequencer).
//!
//! One I/O is outstanding at a time and the node core always goes first, so heartbeats and the
//! fence deadline never wait behind membership work; membership writes are issued only after
//! the node core has had its chance to fence (a node that wakes from a freeze fences before it
//! writes anything).
//!
//! A *membership cycle* reads the cluster state, delivers notifications, and writes the node's
//! request and acknowledgements; the master also reads every node's requests and
//! acknowledgements and writes the next cluster state. Cycles run every heartbeat interval,
//! and four times as often while transitions are in flight.

use crate::participant::{Notification, Participant, SelfState};
use crate::sequencer::{self, NodeLife, SeqEvent};
use membership_db::error::CorruptRecord;
use membership_db::format::*;
use membership_db::node::{self, Exit, IoFailure, NodeConfig, NodeCore};
use std::collections::VecDeque;

/// An I/O for the driver. At most one is outstanding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Node(node::Action),
    ReadClusterState,
    /// The driver stamps `written_unix_ms`.
    WriteClusterState(ClusterState),
    ReadRequests,
    ReadAcks,
    WriteRequest(NodeRequest),
    WriteAcks(AckRecord),
    ReadNodeTable,
}

/// The result of the outstanding action.
#[derive(Debug, Clone)]
pub enum Completion {
    Node(node::Completion),
    ClusterState(Result<Option<ClusterState>, IoFailure>),
    Requests(Result<Vec<Result<NodeRequest, CorruptRecord>>, IoFailure>),
    Acks(Result<Vec<Result<AckRecord, CorruptRecord>>, IoFailure>),
    NodeTable(Result<Vec<Result<NodeEntry, CorruptRecord>>, IoFailure>),
    Written(Result<(), IoFailure>),
}

/// How the daemon ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberExit {
    /// As the node core ended: stopped after a completed leave, refused, or fenced.
    Node(Exit),
    /// The others forced this node out (it was judged dead, or a subsystem nacked its join):
    /// stop everything, write nothing more.
    ForcedOut(Option<JoinRefusal>),
    /// The join was refused before it started (layer registrations disagree).
    JoinRefused(JoinRefusal),
}

/// Worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Node(node::Event),
    Sequenced(SeqEvent),
    SelfState(SelfState),
    LeaveRequested { by_operator: bool },
    IoFailed(String),
    Corrupt(CorruptRecord),
}

/// Events queued before the oldest are dropped.
pub const MEMBER_EVENTS_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Node,
    State,
    Requests,
    Acks,
    WriteState,
    WriteRequest,
    WriteAcks,
    NodeTable,
}

pub struct MemberCore {
    node: NodeCore,
    participant: Option<Participant>,
    layers: Vec<LayerSpec>,
    request_seq: u64,
    acks_seq: u64,
    pending: Option<Pending>,
    /// Follow-up actions of the membership cycle in progress.
    queue: VecDeque<(Action, Pending)>,
    in_cycle: bool,
    next_cycle_at: Millis,
    cycles: u64,
    /// The latest cluster state read or written.
    state: Option<ClusterState>,
    /// Sequencing inputs gathered in this cycle (master only).
    requests: Option<Vec<Result<NodeRequest, CorruptRecord>>>,
    notifications: VecDeque<Notification>,
    events: VecDeque<MemberEvent>,
    exit: Option<MemberExit>,
    last_self: Option<SelfState>,
    leave_requests_seen: Option<u64>,
    stopping: bool,
    refused: Option<JoinRefusal>,
    writing_request: Option<NodeRequest>,
    writing_acks: Option<AckRecord>,
}

/// Read the node table for operator leave requests every this many membership cycles.
const NODE_TABLE_EVERY_CYCLES: u64 = 8;

impl MemberCore {
    /// `layers` are the subsystems registered on this node; `request_seq` and `acks_seq` the
    /// sequence numbers of its newest request and acknowledgement records on the disk.
    pub fn new(config: NodeConfig, layers: Vec<LayerSpec>, request_seq: u64, acks_seq: u64, now: Millis) -> MemberCore {
        MemberCore {
            node: NodeCore::new(config, now),
            participant: None,
            layers,
            request_seq,
            acks_seq,
            pending: None,
            queue: VecDeque::new(),
            in_cycle: false,
            next_cycle_at: now,
            cycles: 0,
            state: None,
            requests: None,
            notifications: VecDeque::new(),
            events: VecDeque::new(),
            exit: None,
            last_self: None,
            leave_requests_seen: None,
            stopping: false,
            refused: None,
            writing_request: None,
            writing_acks: None,
        }
    }

    pub fn node(&self) -> &NodeCore {
        &self.node
    }
    pub fn exit(&self) -> Option<&MemberExit> {
        self.exit.as_ref()
    }
    pub fn cluster_state(&self) -> Option<&ClusterState> {
        self.state.as_ref()
    }
    pub fn fence_deadline(&self) -> Option<Millis> {
        if self.exit.is_some() {
            return None;
        }
        self.node.fence_deadline()
    }
    pub fn next_deadline(&self) -> Millis {
        let t = self.node.next_deadline();
        if self.node.is_running() {
            t.min(self.next_cycle_at)
        } else {
            t
        }
    }
    pub fn poll_notification(&mut self) -> Option<Notification> {
        self.notifications.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        if let Some(e) = self.node_event() {
            return Some(e);
        }
        self.events.pop_front()
    }
    fn node_event(&mut self) -> Option<MemberEvent> {
        self.node.poll_event().map(MemberEvent::Node)
    }

    fn event(&mut self, e: MemberEvent) {
        if self.events.len() >= MEMBER_EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Graceful leave (SIGTERM, or `sdc leave`): leave through the layers, then stop.
    pub fn request_leave(&mut self) {
        match self.participant.as_mut() {
            Some(p) if !p.wants_leave() => {
                p.request_leave();
                self.next_cycle_at = 0;
            }
            Some(_) => {}
            // Not running yet: nothing to leave.
            None => self.node.request_stop(),
        }
    }

    /// A local subsystem answered a notification.
    pub fn handle_reply(&mut self, key: (u64, Position), nack: bool) {
        if let Some(p) = self.participant.as_mut() {
            p.on_reply(key, nack);
        }
    }

    /// The next I/O, if any is due.
    pub fn poll_action(&mut self, now: Millis) -> Option<Action> {
        if self.exit.is_some() || self.pending.is_some() {
            return None;
        }
        if let Some(a) = self.node.poll_action(now) {
            self.pending = Some(Pending::Node);
            return Some(Action::Node(a));
        }
        if self.check_node_exit() {
            return None;
        }
        if !self.node.is_running() || self.stopping {
            return None;
        }
        if self.participant.is_none() {
            let p = Participant::new(
                self.node.node(),
                self.node.incarnation(),
                self.layers.clone(),
                self.request_seq,
                self.acks_seq,
            );
            self.participant = Some(p);
        }
        if let Some((action, pending)) = self.queue.pop_front() {
            return self.issue(action, pending);
        }
        if self.in_cycle {
            self.in_cycle = false;
            self.end_cycle(now);
        }
        // The node's own records go to the disk as soon as they change; answers of local
        // subsystems in particular do not wait for the next cycle.
        let p = self.participant.as_mut().expect("created above");
        if let Some(r) = p.request_to_write() {
            self.writing_request = Some(r.clone());
            return self.issue(Action::WriteRequest(r), Pending::WriteRequest);
        }
        if let Some(a) = p.acks_to_write() {
            self.writing_acks = Some(a.clone());
            return self.issue(Action::WriteAcks(a), Pending::WriteAcks);
        }
        if now >= self.next_cycle_at {
            self.in_cycle = true;
            self.cycles += 1;
            if self.cycles % NODE_TABLE_EVERY_CYCLES == 1 {
                self.queue.push_back((Action::ReadClusterState, Pending::State));
                return self.issue(Action::ReadNodeTable, Pending::NodeTable);
            }
            return self.issue(Action::ReadClusterState, Pending::State);
        }
        None
    }

    /// Takes over the node core's exit; a refused join ends as such once the slot is down.
    fn check_node_exit(&mut self) -> bool {
        let Some(exit) = self.node.exit() else { return false };
        self.exit = Some(match (exit, self.refused) {
            (Exit::Stopped, Some(r)) => MemberExit::JoinRefused(r),
            (exit, _) => MemberExit::Node(exit.clone()),
        });
        true
    }

    fn issue(&mut self, action: Action, pending: Pending) -> Option<Action> {
        self.pending = Some(pending);
        Some(action)
    }

    fn end_cycle(&mut self, now: Millis) {
        let busy = self.state.as_ref().is_some_and(|s| !s.transitions.is_empty());
        let hb = self.node.config().timing.heartbeat_ms as Millis;
        self.next_cycle_at = now + if busy { (hb / 4).max(1) } else { hb };
    }

    /// Hands back the result of the outstanding action.
    pub fn handle_completion(&mut self, now: Millis, completion: Completion) {
        let pending = self.pending.take().expect("a completion without an outstanding action");
        match (pending, completion) {
            (Pending::Node, Completion::Node(c)) => {
                self.node.handle_completion(now, c);
                self.check_node_exit();
            }
            (Pending::State, Completion::ClusterState(r)) => match r {
                Ok(state) => self.on_state(state),
                Err(e) => self.io_failed(e),
            },
            (Pending::Requests, Completion::Requests(r)) => match r {
                Ok(requests) => {
                    self.requests = Some(requests);
                    self.queue.push_back((Action::ReadAcks, Pending::Acks));
                }
                Err(e) => self.io_failed(e),
            },
            (Pending::Acks, Completion::Acks(r)) => match r {
                Ok(acks) => self.sequence(now, acks),
                Err(e) => self.io_failed(e),
            },
            (Pending::NodeTable, Completion::NodeTable(r)) => match r {
                Ok(table) => self.on_node_table(&table),
                Err(e) => self.io_failed(e),
            },
            (Pending::WriteState, Completion::Written(r)) => {
                if let Err(e) = r {
                    self.io_failed(e);
                } else if let Some(state) = self.state.clone() {
                    // The master's own participant works from what it just wrote.
                    self.participate(&state);
                }
            }
            (Pending::WriteRequest, Completion::Written(r)) => {
                let record = self.writing_request.take().expect("request in flight");
                match r {
                    Ok(()) => self.participant.as_mut().expect("participant").request_written(record),
                    Err(e) => self.io_failed(e),
                }
            }
            (Pending::WriteAcks, Completion::Written(r)) => {
                let record = self.writing_acks.take().expect("acks in flight");
                match r {
                    Ok(()) => self.participant.as_mut().expect("participant").acks_written(record),
                    Err(e) => self.io_failed(e),
                }
            }
            (pending, completion) => panic!("completion {completion:?} does not answer {pending:?}"),
        }
    }

    fn io_failed(&mut self, e: IoFailure) {
        // The cycle is abandoned; the next one starts over. The node core fences if the disk
        // stays lost.
        self.queue.clear();
        self.requests = None;
        self.event(MemberEvent::IoFailed(e.0));
    }

    fn on_node_table(&mut self, table: &[Result<NodeEntry, CorruptRecord>]) {
        let Some(Ok(entry)) = table.get(self.node.node().index()) else { return };
        match self.leave_requests_seen {
            None => self.leave_requests_seen = Some(entry.leave_requests),
            Some(seen) if entry.leave_requests > seen => {
                self.leave_requests_seen = Some(entry.leave_requests);
                self.event(MemberEvent::LeaveRequested { by_operator: true });
                self.request_leave();
            }
            Some(_) => {}
        }
    }

    fn on_state(&mut self, state: Option<ClusterState>) {
        if let Some(s) = &state {
            self.state = Some(s.clone());
        }
        if let Some(epoch) = self.node.master_epoch() {
            // The master gathers the nodes' records, then sequences.
            if self.state.as_ref().is_none_or(|s| s.epoch < epoch) {
                let max_nodes = self.node.config().max_nodes;
                let mut base =
                    self.state.clone().unwrap_or_else(|| ClusterState::new(max_nodes, epoch, self.node.node(), 0));
                base.epoch = epoch;
                base.seq = 0;
                base.master = self.node.node();
                base.master_incarnation = self.node.incarnation();
                self.state = Some(base);
            }
            self.queue.push_back((Action::ReadRequests, Pending::Requests));
            return;
        }
        if let Some(s) = state {
            self.participate(&s);
        }
    }

    fn sequence(&mut self, now: Millis, acks: Vec<Result<AckRecord, CorruptRecord>>) {
        let Some(requests) = self.requests.take() else { return };
        let Some(current) = self.state.clone() else { return };
        let life: Vec<NodeLife> = NodeId::all(current.members.len() as u16)
            .map(|n| NodeLife { running: self.node.running_incarnation(now, n) })
            .collect();
        let inputs = sequencer::Inputs { requests: &requests, acks: &acks, life: &life };
        let (mut next, events) = sequencer::advance(&current, &inputs);
        for e in events {
            self.event(MemberEvent::Sequenced(e));
        }
        if next != current || current.seq == 0 {
            next.seq = current.seq + 1;
            self.state = Some(next.clone());
            self.queue.push_back((Action::WriteClusterState(next), Pending::WriteState));
        } else {
            self.participate(&current);
        }
    }

    /// This node's side of a cluster state: notifications, own fate, own records.
    fn participate(&mut self, state: &ClusterState) {
        let Some(p) = self.participant.as_mut() else { return };
        let notifications = p.on_state(state);
        let me = p.self_state(state);
        let wants_leave = p.wants_leave();
        self.notifications.extend(notifications);
        if self.last_self != Some(me) {
            self.last_self = Some(me);
            self.event(MemberEvent::SelfState(me));
        }
        match me {
            SelfState::ForcedOut(refusal) => {
                self.queue.clear();
                self.exit = Some(MemberExit::ForcedOut(refusal));
            }
            SelfState::Refused(r) => {
                self.queue.clear();
                self.refused = Some(r);
                self.stop();
            }
            // Left, or asked to leave before the join began: nothing (more) to leave.
            SelfState::Left => self.stop(),
            SelfState::Waiting if wants_leave => self.stop(),
            _ => {}
        }
    }

    fn stop(&mut self) {
        self.queue.clear();
        self.stopping = true;
        self.node.request_stop();
    }
}

fn position_text(kind: TransitionKind, p: Position) -> String {
    format!("{} at order {} barrier {}", kind.name(), p.order, p.barrier)
}

/// The reason of a refusal, in words, naming the layer (by name when `name` knows it).
pub fn refusal_text(r: &JoinRefusal) -> String {
    refusal_text_named(r, None)
}

/// As [`refusal_text`], with the layer's name as registered on this node.
pub fn refusal_text_named(r: &JoinRefusal, name: Option<&str>) -> String {
    let layer = match name {
        Some(name) => format!("layer {name} (order {})", r.order),
        None => format!("the layer at order {}", r.order),
    };
    match r.reason {
        RefusalReason::BarrierMismatch => format!(
            "{layer} registers {} barriers here but {} in the cluster; every node must register the same barriers at one order",
            r.ours, r.theirs
        ),
        RefusalReason::Nacked => format!("{layer} on node {} refused (nacked) the join", r.node),
        RefusalReason::InvalidLayers => "this node's layer registrations are invalid or exceed the cluster's layer table".into(),
    }
}

impl std::fmt::Display for MemberEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberEvent::Node(e) => write!(f, "{e}"),
            MemberEvent::Sequenced(e) => match e {
                SeqEvent::Started(t) => write!(
                    f,
                    "master: {} of node {} (incarnation {}) begins, transition {}",
                    t.kind.name(),
                    t.subject,
                    t.subject_incarnation,
                    t.id
                ),
                SeqEvent::Advanced { transition, subject, kind, position } => {
                    write!(
                        f,
                        "master: transition {transition} of node {subject} at {}",
                        position_text(*kind, *position)
                    )
                }
                SeqEvent::Completed { subject, kind, state } => {
                    write!(f, "master: {} of node {subject} complete; node {subject} is {}", kind.name(), state.name())
                }
                SeqEvent::JoinTurnedIntoLeave { subject, at_order } => {
                    write!(
                        f,
                        "master: the join of node {subject} turns into a leave after the layer at order {at_order}"
                    )
                }
                SeqEvent::Refused { subject, refusal } => {
                    write!(f, "master: join of node {subject} refused: {}", refusal_text(refusal))
                }
                SeqEvent::NackIgnored { transition, node } => {
                    write!(f, "master: node {node} nacked forced leave {transition}; a forced leave cannot be refused")
                }
            },
            MemberEvent::SelfState(s) => match s {
                SelfState::Waiting => write!(f, "waiting to join"),
                SelfState::Joining => write!(f, "joining"),
                SelfState::Joined => write!(f, "joined the cluster"),
                SelfState::Leaving => write!(f, "leaving"),
                SelfState::Left => write!(f, "left the cluster"),
                SelfState::Refused(r) => write!(f, "join refused: {}", refusal_text(r)),
                SelfState::ForcedOut(_) => write!(f, "FORCED OUT by the other nodes"),
            },
            MemberEvent::LeaveRequested { by_operator: true } => write!(f, "leave requested (sdc leave)"),
            MemberEvent::LeaveRequested { by_operator: false } => write!(f, "leave requested (signal)"),
            MemberEvent::IoFailed(e) => write!(f, "{e}"),
            MemberEvent::Corrupt(c) => write!(f, "{c}; not used"),
        }
    }
}
