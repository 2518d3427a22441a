//! [`MemberCore`]: a node's whole daemon logic, sans-IO. It wraps the [`NodeCore`] (heartbeat,
//! liveness, master claim, self-fencing) and adds the membership manager: the node's
//! [`Participant`], and, while this node is master, the [`sequencer`](crate::sequencer).
//!
//! One I/O is outstanding at a time and the node core always goes first, so heartbeats and the
//! fence deadline never wait behind membership work; membership writes are issued only after
//! the node core has had its chance to fence (a node that wakes from a freeze fences before it
//! writes anything).
//!
//! # The read path
//!
//! The membership manager reads nothing on its own schedule: it looks at the heartbeats each
//! read of the heartbeat region brings (see the FORMAT document in `membership_db::format`).
//!
//! * A node reads the cluster state when the master's heartbeat advertises a newer one than it
//!   holds, and only that copy. It publishes the state it holds in its own heartbeat, and flags
//!   one it cannot read, so the master writes it again.
//! * The master reads a node's request or acknowledgement record when that node's heartbeat
//!   advertises a newer sequence (or a new incarnation), and only that copy; then it runs the
//!   sequencer and writes the next cluster state, and announces it in its heartbeat at once.
//! * A new master reads every cluster state copy and every node's records once, to take over.
//! * A node writes its own records when they change, and announces them at once.
//!
//! While transitions are in flight the heartbeat region is read four times per interval, so a
//! barrier takes a fraction of an interval; an idle node does one write and one read per
//! interval.

use crate::links::LinkJudge;
use crate::participant::{Notification, Participant, SelfState};
use crate::sequencer::{self, NodeLife, SeqEvent};
use membership_db::error::CorruptRecord;
use membership_db::format::*;
use membership_db::node::{self, Advert, Exit, IoFailure, NodeConfig, NodeCore};
use std::collections::VecDeque;

/// An I/O for the driver. At most one is outstanding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Node(node::Action),
    /// Read the cluster state a heartbeat advertises (one copy, of its length).
    ReadClusterState(StateRef),
    /// A new master reads every copy of the cluster state, and every node's records.
    ReadAllClusterStates,
    ReadAllRequests,
    ReadAllAcks,
    /// The master reads one node's record: the copy of the sequence its heartbeat advertises.
    ReadRequest {
        node: NodeId,
        seq: u64,
    },
    ReadAcks {
        node: NodeId,
        seq: u64,
    },
    /// The driver stamps `written_unix_ms`.
    WriteClusterState(ClusterState),
    WriteRequest(NodeRequest),
    WriteAcks(AckRecord),
}

/// The result of the outstanding action.
#[derive(Debug, Clone)]
pub enum Completion {
    Node(node::Completion),
    ClusterState(Result<Result<ClusterState, CorruptRecord>, IoFailure>),
    AllClusterStates(Result<Vec<Result<Option<ClusterState>, CorruptRecord>>, IoFailure>),
    AllRequests(Result<Vec<Copies<NodeRequest>>, IoFailure>),
    AllAcks(Result<Vec<Copies<AckRecord>>, IoFailure>),
    Request(Result<Result<NodeRequest, CorruptRecord>, IoFailure>),
    Acks(Result<Result<AckRecord, CorruptRecord>, IoFailure>),
    Written(Result<(), IoFailure>),
}

/// How the daemon ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberExit {
    /// As the node core ended: stopped after a completed leave (or with nothing to leave),
    /// refused, or fenced.
    Node(Exit),
    /// The others forced this node out (it was judged dead, a subsystem nacked its join, or it
    /// lost its interconnect links): stop everything, then write one heartbeat marked fenced
    /// ([`MemberCore::mark_fenced`]) and nothing more.
    ForcedOut(Option<JoinRefusal>),
    /// The join was refused before it started (layer registrations disagree).
    JoinRefused(JoinRefusal),
    /// Asked to stop, the node stopped (slot marked down) without a graceful leave: no master
    /// could sequence it in time, or it was asked to stop at once. The others force it out.
    StoppedWithoutLeave(String),
}

/// Worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    Node(node::Event),
    Sequenced(SeqEvent),
    SelfState(SelfState),
    LeaveRequested {
        by_operator: bool,
    },
    /// A leave was asked for by `sdc leave` while no daemon could honour it (it was down or
    /// restarting): this daemon honours it instead of joining.
    PendingLeave {
        requests: u64,
    },
    /// The leave cannot be sequenced; the node stops without it.
    LeaveAbandoned(String),
    TookOver {
        epoch: u64,
        from: Option<(u64, u64)>,
    },
    /// A node could not read the cluster state this master advertises: written again.
    StateRewritten {
        seq: u64,
    },
    IoFailed(String),
    Corrupt(CorruptRecord),
    /// Forced out, this node wrote its heartbeat marked fenced (or could not).
    MarkedFenced(Result<(), String>),
    /// Forced out, this node did not mark its heartbeat fenced: something relying on its
    /// membership could not be known stopped.
    NotMarkedFenced(String),
}

/// Events queued before the oldest are dropped.
pub const MEMBER_EVENTS_MAX: usize = 1024;
/// Reads queued by one look at the heartbeats: two records per node at most, plus a state.
const QUEUE_MAX: usize = 2 * NODES_MAX as usize + 4;
/// A graceful leave that has not completed in this long is given up (the node stops, and the
/// others force it out).
pub const LEAVE_MS_MAX: Millis = 60_000;
/// A failed membership write is retried after a back-off that starts at a quarter interval and
/// doubles up to this many intervals.
const WRITE_RETRY_INTERVALS_MAX: Millis = 8;
/// Consecutive failed reads of the advertised cluster state before this node flags it.
const STATE_READ_FAILURES_FLAGGED: u32 = 2;
/// Own records the cluster has not acted on for this many heartbeat intervals are written
/// again, with new sequence numbers (a copy damaged at rest, a write the master read torn).
/// Acknowledgements wait one interval more per four participants of the transition: the master
/// reads one record per participant for each position, and a large cluster under load must
/// not have every node rewrite its records (and the master read them again) while it does.
const REPUBLISH_INTERVALS: Millis = 8;
const REPUBLISH_PARTICIPANTS_PER_INTERVAL: usize = 4;
/// A stopping daemon tries this many heartbeat intervals to write its final request record.
const FINAL_WRITE_INTERVALS: Millis = 2;

/// What the node's own records on the disk said when the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnRecords {
    /// Sequence numbers of the newest request and acknowledgement records (the next writes go
    /// to the other copies).
    pub request_seq: u64,
    pub ack_seq: u64,
    /// `sdc leave` requests the previous incarnations honoured.
    pub leave_requests_seen: u64,
    /// `sdc leave` requests counted in the node table now.
    pub leave_requests: u64,
}

impl OwnRecords {
    /// A leave asked for while no daemon honoured it.
    pub fn pending_leave(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if membership_db::planted::active(membership_db::planted::Bug::ForgetPendingLeave) {
            return false;
        }
        self.leave_requests > self.leave_requests_seen
    }
}

/// The I/O in flight, with what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Node,
    State(StateRef),
    AllStates,
    AllRequests,
    AllAcks,
    Request(NodeId, u64),
    Acks(NodeId, u64),
    WriteState(ClusterState),
    WriteRequest(NodeRequest),
    WriteAcks(AckRecord),
}

/// The master's copies of one kind of node record, and the sequence at which each node's was
/// found unreadable.
type RecordsAndBad<'a, T> = (&'a mut Vec<Option<T>>, &'a mut Vec<u64>);

/// The master's side: what it has read of every node, by slot index.
#[derive(Debug, Clone)]
struct MasterRole {
    epoch: u64,
    /// The takeover reads are done: the first state of this epoch may be written.
    taken_over: bool,
    requests: Vec<Option<NodeRequest>>,
    acks: Vec<Option<AckRecord>>,
    /// The advertised sequence of each node's request and acknowledgement record that could
    /// not be read: not read again until the node advertises another (it writes its records
    /// again when the cluster does not act on them).
    bad_requests: Vec<u64>,
    bad_acks: Vec<u64>,
    /// When the state was last written again for a node that could not read it (at most once
    /// every two intervals: the node needs an interval to read the new copy).
    rewritten_at: Option<Millis>,
    /// Write the state again even if it did not change.
    rewrite: bool,
    /// An input of the sequencer changed (a look at the heartbeats, a record read or written,
    /// a failed write to retry): run it at the next chance.
    dirty: bool,
    /// Since when each pair of joined nodes has been unable to talk over the interconnect.
    links: LinkJudge,
}

/// The membership manager of a running node.
struct Participating {
    participant: Participant,
    /// The newest cluster state read or written.
    held: Option<ClusterState>,
    master: Option<MasterRole>,
    /// Reads decided by the last look at the heartbeats, issued in order.
    queue: VecDeque<(Action, Pending)>,
    seen_beacon_reads: u64,
    /// The advertised state that could not be read, and how many times in a row.
    state_failures: (StateRef, u32),
    /// After a failed write (own records or, as master, the cluster state), membership writes
    /// wait until then.
    write_retry_at: Millis,
    write_backoff_ms: Millis,
    /// The `sdc leave` count already acted on.
    leave_requests_seen: u64,
    leave_asked_at: Option<Millis>,
    no_master_since: Option<Millis>,
    last_self: Option<SelfState>,
    /// The daemon is ending: its final request record, then the node core's last heartbeat.
    stopping: bool,
    /// When the final write of a stopping daemon began.
    stopping_since: Option<Millis>,
    refused: Option<JoinRefusal>,
    abandoned: Option<String>,
    leave_now: bool,
    /// Since when the master has not read our newest request, and since when a transition
    /// has waited at a position we acknowledged (see [`REPUBLISH_INTERVALS`]).
    request_unread_since: Option<Millis>,
    acks_awaited_since: Option<Millis>,
}

enum Phase {
    /// The node core is probing and acquiring its slot.
    Starting,
    Running(Box<Participating>),
    Done(MemberExit),
}

pub struct MemberCore {
    node: NodeCore,
    layers: Vec<LayerSpec>,
    own: OwnRecords,
    phase: Phase,
    pending: Option<Pending>,
    notifications: VecDeque<Notification>,
    events: VecDeque<MemberEvent>,
}

impl MemberCore {
    /// `layers` are the subsystems registered on this node; `own` what its records said when
    /// the daemon started.
    pub fn new(config: NodeConfig, layers: Vec<LayerSpec>, own: OwnRecords, now: Millis) -> MemberCore {
        MemberCore {
            node: NodeCore::new(config, now),
            layers,
            own,
            phase: Phase::Starting,
            pending: None,
            notifications: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // --- getters ------------------------------------------------------------------------------

    pub fn node(&self) -> &NodeCore {
        &self.node
    }
    pub fn exit(&self) -> Option<&MemberExit> {
        match &self.phase {
            Phase::Done(e) => Some(e),
            _ => None,
        }
    }
    /// The newest cluster state this node holds.
    pub fn cluster_state(&self) -> Option<&ClusterState> {
        match &self.phase {
            Phase::Running(p) => p.held.as_ref(),
            _ => None,
        }
    }
    /// Whether a leave has been asked for (and not given up).
    pub fn wants_leave(&self) -> bool {
        matches!(&self.phase, Phase::Running(p) if p.participant.wants_leave())
    }
    /// The `sdc leave` requests this daemon has seen (in the node table, or at its start).
    pub fn leave_requests_seen(&self) -> u64 {
        match &self.phase {
            Phase::Running(p) => p.leave_requests_seen,
            _ => self.own.leave_requests_seen.max(self.own.leave_requests),
        }
    }
    pub fn fence_deadline(&self) -> Option<Millis> {
        if self.exit().is_some() {
            return None;
        }
        self.node.fence_deadline()
    }
    /// When `poll_action` will next have something to do. (Leave bounds are checked at every
    /// poll; the driver polls at least every `POLL_SLEEP_MS_MAX`.)
    pub fn next_deadline(&self) -> Millis {
        let t = self.node.next_deadline();
        match &self.phase {
            Phase::Running(p) if !p.queue.is_empty() => 0,
            Phase::Running(p) if p.participant.has_writes() || p.master.is_some() => t.min(p.write_retry_at),
            _ => t,
        }
    }
    pub fn poll_notification(&mut self) -> Option<Notification> {
        self.notifications.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        if let Some(e) = self.node.poll_event() {
            return Some(MemberEvent::Node(e));
        }
        self.events.pop_front()
    }

    fn event(&mut self, e: MemberEvent) {
        if self.events.len() >= MEMBER_EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    // --- commands -----------------------------------------------------------------------------

    /// Graceful leave (SIGTERM, or `sdc leave`): leave through the layers, then stop. A node
    /// that is not a member stops once the master has read its withdrawn join (or when no master
    /// is visible for `dead_ms`); one whose leave cannot be sequenced (no master for
    /// two `dead_ms`, or not done within [`LEAVE_MS_MAX`]) stops without it.
    pub fn request_leave(&mut self) {
        match &mut self.phase {
            Phase::Running(p) => p.participant.request_leave(None),
            // Not running yet: nothing to leave.
            Phase::Starting => self.node.request_stop(),
            Phase::Done(_) => {}
        }
    }

    /// Stop now, without a graceful leave (a second SIGTERM): the slot is marked down and the
    /// others force this node out.
    pub fn request_stop_now(&mut self) {
        match &mut self.phase {
            Phase::Running(p) => p.leave_now = true,
            Phase::Starting => self.node.request_stop(),
            Phase::Done(_) => {}
        }
    }

    /// The peers this node reaches over the interconnect, as the driver's transport says, or
    /// `None` when it runs none (it is then never judged by its links). Published in the next
    /// heartbeat (see [`NodeCore::set_reachable`]).
    pub fn set_reachable(&mut self, now: Millis, reachable: Option<NodeSet>) {
        self.node.set_reachable(now, reachable);
    }

    /// After [`MemberExit::ForcedOut`], once the driver has stopped everything this node ran:
    /// the heartbeat write that marks it fenced, so the survivors may recover at once (see
    /// [`NodeCore::mark_fenced`]). `None` when its lease has lapsed or it was already written.
    /// The driver performs it and hands nothing back.
    pub fn mark_fenced(&mut self, now: Millis) -> Option<Action> {
        if !matches!(self.exit(), Some(MemberExit::ForcedOut(_))) {
            return None;
        }
        self.node.mark_fenced(now).map(Action::Node)
    }

    /// A local subsystem answered a notification.
    pub fn handle_reply(&mut self, key: (u64, Position), nack: bool) {
        if let Phase::Running(p) = &mut self.phase {
            p.participant.on_reply(key, nack);
        }
    }

    // --- the I/O ------------------------------------------------------------------------------

    /// The next I/O, if any is due.
    pub fn poll_action(&mut self, now: Millis) -> Option<Action> {
        if self.exit().is_some() || self.pending.is_some() {
            return None;
        }
        if let Some(a) = self.node.poll_action(now) {
            self.pending = Some(Pending::Node);
            return Some(Action::Node(a));
        }
        if self.check_node_exit() || !self.node.is_running() {
            return None;
        }
        if matches!(self.phase, Phase::Starting) {
            self.start_participating();
        }
        self.check_leave(now);
        let Phase::Running(p) = &mut self.phase else { return None };
        if p.stopping {
            return self.finish_stop(now);
        }
        if self.node.beacon_reads() != p.seen_beacon_reads {
            p.seen_beacon_reads = self.node.beacon_reads();
            self.look(now);
        }
        let Phase::Running(p) = &mut self.phase else { return None };
        if let Some((action, pending)) = p.queue.pop_front() {
            self.pending = Some(pending);
            return Some(action);
        }
        if let Some(a) = self.sequence(now) {
            return Some(a);
        }
        self.republish_if_stalled(now);
        self.write_own_records(now)
    }

    /// Writes our records again when the cluster has not acted on them for a while: a master
    /// that cannot read them (a damaged copy) reads the new copy.
    fn republish_if_stalled(&mut self, now: Millis) {
        let hb_ms = self.node.config().timing.heartbeat_ms as Millis;
        let master_visible = self.node.master_visible(now);
        let Phase::Running(p) = &mut self.phase else { return };
        let Some(state) = p.held.as_ref().filter(|_| master_visible) else {
            (p.request_unread_since, p.acks_awaited_since) = (None, None);
            return;
        };
        let unread = p.participant.request_unread(state);
        if stalled(&mut p.request_unread_since, unread, now, REPUBLISH_INTERVALS * hb_ms) {
            p.participant.republish_request();
        }
        let participants = p.participant.acks_awaited(state);
        let intervals = REPUBLISH_INTERVALS + (participants / REPUBLISH_PARTICIPANTS_PER_INTERVAL) as Millis;
        if stalled(&mut p.acks_awaited_since, participants > 0, now, intervals * hb_ms) {
            p.participant.republish_acks();
        }
    }

    /// Hands back the result of the outstanding action.
    pub fn handle_completion(&mut self, now: Millis, completion: Completion) {
        let pending = self.pending.take().expect("a completion without an outstanding action");
        let (pending, completion) = match (pending, completion) {
            (Pending::Node, Completion::Node(c)) => {
                self.node.handle_completion(now, c);
                self.check_node_exit();
                return;
            }
            other => other,
        };
        let Phase::Running(p) = &mut self.phase else { return };
        match (pending, completion) {
            (Pending::State(at), Completion::ClusterState(r)) => self.on_state(at, r),
            (Pending::AllStates, Completion::AllClusterStates(r)) => self.on_all_states(now, r),
            (Pending::AllRequests, Completion::AllRequests(r)) => match r {
                Ok(copies) => {
                    let records = self.newest_of(&copies, |r| r.seq);
                    if let Some(m) = self.master_mut() {
                        m.requests = records;
                    }
                }
                Err(e) => self.takeover_failed(now, e),
            },
            (Pending::AllAcks, Completion::AllAcks(r)) => match r {
                Ok(copies) => {
                    let records = self.newest_of(&copies, |r| r.seq);
                    if let Some(m) = self.master_mut() {
                        m.acks = records;
                        m.taken_over = true;
                    }
                }
                Err(e) => self.takeover_failed(now, e),
            },
            (Pending::Request(n, seq), Completion::Request(r)) => {
                self.on_record(n, seq, r, |m| (&mut m.requests, &mut m.bad_requests))
            }
            (Pending::Acks(n, seq), Completion::Acks(r)) => {
                self.on_record(n, seq, r, |m| (&mut m.acks, &mut m.bad_acks))
            }
            (Pending::WriteState(state), Completion::Written(r)) => match r {
                Ok(()) => {
                    self.participating().write_backoff_ms = 0;
                    if let Some(m) = self.master_mut() {
                        m.rewrite = false;
                    }
                    self.hold(&state);
                    self.node.announce();
                    self.participate(&state);
                }
                Err(e) => self.write_failed(now, e),
            },
            (Pending::WriteRequest(record), Completion::Written(r)) => match r {
                Ok(()) => {
                    p.participant.request_written(record.clone());
                    let i = record.node.index();
                    self.own_record_written(|m| m.requests[i] = Some(record));
                }
                Err(e) => self.write_failed(now, e),
            },
            (Pending::WriteAcks(record), Completion::Written(r)) => match r {
                Ok(()) => {
                    p.participant.acks_written(record.clone());
                    let i = record.node.index();
                    self.own_record_written(|m| m.acks[i] = Some(record));
                }
                Err(e) => self.write_failed(now, e),
            },
            (pending, completion) => panic!("completion {completion:?} does not answer {pending:?}"),
        }
        self.update_fast_poll(now);
    }

    // --- internals ----------------------------------------------------------------------------

    fn participating(&mut self) -> &mut Participating {
        match &mut self.phase {
            Phase::Running(p) => p,
            _ => unreachable!("participating"),
        }
    }

    /// One of our own records landed: as master we have it without reading it back, and our
    /// heartbeat announces its new sequence at once.
    fn own_record_written(&mut self, as_master: impl FnOnce(&mut MasterRole)) {
        self.participating().write_backoff_ms = 0;
        if let Some(m) = self.master_mut() {
            as_master(m);
            m.dirty = true;
        }
        self.advertise();
        self.node.announce();
    }

    /// A node's request or acknowledgements as the master read them: kept, or remembered as
    /// unreadable at that sequence (read again when the node advertises another).
    fn on_record<T>(
        &mut self,
        node: NodeId,
        seq: u64,
        r: Result<Result<T, CorruptRecord>, IoFailure>,
        fields: fn(&mut MasterRole) -> RecordsAndBad<'_, T>,
    ) {
        match r {
            Ok(read) => {
                let corrupt = read.as_ref().err().cloned();
                if let Some(m) = self.master_mut() {
                    m.dirty |= read.is_ok();
                    let (records, bad) = fields(m);
                    match read {
                        Ok(record) => records[node.index()] = Some(record),
                        Err(_) => bad[node.index()] = seq,
                    }
                }
                if let Some(c) = corrupt {
                    self.event(MemberEvent::Corrupt(c));
                }
            }
            Err(e) => self.io_failed(e),
        }
    }

    fn master_mut(&mut self) -> Option<&mut MasterRole> {
        match &mut self.phase {
            Phase::Running(p) => p.master.as_mut(),
            _ => None,
        }
    }

    fn newest_of<T: Clone>(&mut self, copies: &[Copies<T>], seq: impl Fn(&T) -> u64) -> Vec<Option<T>> {
        copies
            .iter()
            .map(|c| match newest_noting(c, &seq) {
                Ok(n) => Some(n.record),
                Err(bad) => {
                    self.event(MemberEvent::Corrupt(bad));
                    None
                }
            })
            .collect()
    }

    fn start_participating(&mut self) {
        let node = self.node.node();
        let incarnation = self.node.incarnation();
        let mut participant = Participant::new(
            node,
            incarnation,
            self.layers.clone(),
            self.own.request_seq,
            self.own.ack_seq,
            self.own.leave_requests_seen,
        );
        let pending_leave = self.own.pending_leave();
        if pending_leave {
            participant.request_leave(Some(self.own.leave_requests));
        }
        self.phase = Phase::Running(Box::new(Participating {
            participant,
            held: None,
            master: None,
            queue: VecDeque::new(),
            seen_beacon_reads: 0,
            state_failures: (StateRef::NONE, 0),
            write_retry_at: 0,
            write_backoff_ms: 0,
            leave_requests_seen: self.own.leave_requests,
            leave_asked_at: None,
            no_master_since: None,
            last_self: None,
            stopping: false,
            stopping_since: None,
            refused: None,
            abandoned: None,
            leave_now: false,
            request_unread_since: None,
            acks_awaited_since: None,
        }));
        if pending_leave {
            self.event(MemberEvent::PendingLeave { requests: self.own.leave_requests });
        }
        self.advertise();
    }

    /// Takes over the node core's exit.
    fn check_node_exit(&mut self) -> bool {
        let Some(exit) = self.node.exit() else { return false };
        if matches!(self.phase, Phase::Done(_)) {
            return true;
        }
        let exit = match (&self.phase, exit) {
            (Phase::Running(p), Exit::Stopped) => match (&p.refused, &p.abandoned) {
                (Some(r), _) => MemberExit::JoinRefused(*r),
                (None, Some(why)) => MemberExit::StoppedWithoutLeave(why.clone()),
                (None, None) => MemberExit::Node(Exit::Stopped),
            },
            (_, exit) => MemberExit::Node(exit.clone()),
        };
        self.phase = Phase::Done(exit);
        true
    }

    fn io_failed(&mut self, e: IoFailure) {
        self.event(MemberEvent::IoFailed(e.0));
    }

    /// A read of the master's takeover failed: taken over again from the start, after the
    /// same back-off as a failed write (a record region that fails must not make the master
    /// read it, and log it, in a loop).
    fn takeover_failed(&mut self, now: Millis, e: IoFailure) {
        self.back_off(now);
        let p = self.participating();
        p.master = None;
        p.queue.clear();
        self.io_failed(e);
    }

    /// A membership write failed (our own request or acknowledgements, or as master the
    /// cluster state): retried after a back-off, so a node whose record region fails while its
    /// heartbeats succeed neither spins nor stops answering a stop request (it fences if the
    /// heartbeats fail too).
    fn write_failed(&mut self, now: Millis, e: IoFailure) {
        self.back_off(now);
        if let Some(m) = self.participating().master.as_mut() {
            m.dirty = true;
        }
        self.io_failed(e);
    }

    /// The next membership write (or takeover) waits: a quarter interval, doubling with each
    /// failure up to [`WRITE_RETRY_INTERVALS_MAX`] intervals; a success resets it.
    fn back_off(&mut self, now: Millis) {
        let quarter = (self.node.config().timing.heartbeat_ms as Millis / 4).max(1);
        let max = WRITE_RETRY_INTERVALS_MAX * self.node.config().timing.heartbeat_ms as Millis;
        let p = self.participating();
        p.write_backoff_ms = (p.write_backoff_ms * 2).clamp(quarter, max);
        p.write_retry_at = now + p.write_backoff_ms;
        #[cfg(feature = "planted-bugs")]
        if membership_db::planted::active(membership_db::planted::Bug::RetryWriteAtOnce) {
            p.write_retry_at = now;
        }
    }

    /// What the heartbeat publishes: the state held, the sequences of our records, and whether
    /// the master's state is unreadable here.
    fn advertise(&mut self) {
        let Phase::Running(p) = &self.phase else { return };
        let advert = Advert {
            cluster_state: p.held.as_ref().map_or(StateRef::NONE, StateRef::of),
            request_seq: p.participant.request_seq(),
            ack_seq: p.participant.acks_seq(),
            state_unreadable: p.state_failures.1 >= STATE_READ_FAILURES_FLAGGED,
        };
        self.node.set_advert(advert);
    }

    fn hold(&mut self, state: &ClusterState) {
        self.node.note_acting_master(state.master, state.epoch);
        let members =
            NodeId::all(state.max_nodes()).filter(|n| state.member(*n).state != MemberState::Inactive).collect();
        self.node.set_watched(members);
        let p = self.participating();
        if p.held.as_ref().is_none_or(|h| (state.epoch, state.seq) >= (h.epoch, h.seq)) {
            p.held = Some(state.clone());
        }
        self.advertise();
    }

    fn update_fast_poll(&mut self, now: Millis) {
        let busy = match &self.phase {
            Phase::Running(p) => p.held.as_ref().is_some_and(|s| !s.transitions.is_empty()),
            _ => false,
        };
        self.node.set_fast_poll(now, busy);
    }

    /// Looks at a new read of the heartbeats: what to read now.
    fn look(&mut self, now: Millis) {
        match self.node.master_epoch() {
            Some(epoch) => self.look_as_master(now, epoch),
            None => {
                self.participating().master = None;
                self.follow_master();
            }
        }
        self.update_fast_poll(now);
    }

    /// A follower reads the state its master advertises when it is newer than the one held.
    fn follow_master(&mut self) {
        let Some((_, master)) = self.node.known_master() else { return };
        let Some(hb) = self.node.heartbeat(master.node) else { return };
        if hb.incarnation != master.incarnation || hb.cluster_state.is_none() {
            return;
        }
        let at = hb.cluster_state;
        let p = self.participating();
        let held = p.held.as_ref().map_or((0, 0), |s| (s.epoch, s.seq));
        if at.key() > held && p.queue.is_empty() {
            p.queue.push_back((Action::ReadClusterState(at), Pending::State(at)));
        }
    }

    fn on_state(&mut self, at: StateRef, r: Result<Result<ClusterState, CorruptRecord>, IoFailure>) {
        match r {
            Ok(Ok(state)) => {
                self.participating().state_failures = (StateRef::NONE, 0);
                self.hold(&state);
                self.participate(&state);
            }
            Ok(Err(bad)) => {
                let p = self.participating();
                p.state_failures = if p.state_failures.0 == at { (at, p.state_failures.1 + 1) } else { (at, 1) };
                if p.state_failures.1 == STATE_READ_FAILURES_FLAGGED {
                    self.event(MemberEvent::Corrupt(bad));
                    self.advertise();
                    self.node.announce();
                }
            }
            Err(e) => self.io_failed(e),
        }
    }

    fn look_as_master(&mut self, now: Millis, epoch: u64) {
        let me = self.node.node();
        let max_nodes = self.node.config().max_nodes as usize;
        let hb_ms = self.node.config().timing.heartbeat_ms as Millis;
        let p = self.participating();
        if p.master.as_ref().is_none_or(|m| m.epoch != epoch) {
            if now < p.write_retry_at {
                return; // a takeover failed: after the back-off
            }
            // Just became master: read every copy and every node's records, once.
            p.master = Some(MasterRole {
                epoch,
                taken_over: false,
                requests: vec![None; max_nodes],
                acks: vec![None; max_nodes],
                bad_requests: vec![0; max_nodes],
                bad_acks: vec![0; max_nodes],
                rewritten_at: None,
                rewrite: false,
                dirty: true,
                links: LinkJudge::new(),
            });
            p.queue.clear();
            p.queue.push_back((Action::ReadAllClusterStates, Pending::AllStates));
            p.queue.push_back((Action::ReadAllRequests, Pending::AllRequests));
            p.queue.push_back((Action::ReadAllAcks, Pending::AllAcks));
            return;
        }
        if !p.queue.is_empty() {
            return;
        }
        // Disjoint fields: the node core's heartbeats, and our master role.
        let node = &self.node;
        let Phase::Running(p) = &mut self.phase else { return };
        let held = p.held.as_ref().map(StateRef::of);
        let Some(m) = p.master.as_mut() else { return };
        let mut flagged = false;
        for n in NodeId::all(max_nodes as u16).filter(|n| *n != me) {
            let Some(hb) = node.heartbeat(n) else { continue };
            if hb.state != HeartbeatState::Up || node.liveness(now, n).is_gone() {
                continue;
            }
            let i = n.index();
            let stale =
                m.requests[i].as_ref().is_none_or(|r| r.incarnation != hb.incarnation || r.seq < hb.request_seq);
            if stale && hb.request_seq > 0 && m.bad_requests[i] != hb.request_seq {
                p.queue.push_back((
                    Action::ReadRequest { node: n, seq: hb.request_seq },
                    Pending::Request(n, hb.request_seq),
                ));
            }
            let stale = m.acks[i].as_ref().is_none_or(|a| a.incarnation != hb.incarnation || a.seq < hb.ack_seq);
            if stale && hb.ack_seq > 0 && m.bad_acks[i] != hb.ack_seq {
                p.queue.push_back((Action::ReadAcks { node: n, seq: hb.ack_seq }, Pending::Acks(n, hb.ack_seq)));
            }
            let cannot_read = hb.flags & heartbeat_flags::STATE_UNREADABLE != 0;
            flagged |= cannot_read && held.is_some_and(|h| h.key() > hb.cluster_state.key());
        }
        assert!(p.queue.len() <= QUEUE_MAX, "reads of one look are bounded");
        m.dirty = true;
        if flagged && m.rewritten_at.is_none_or(|t| now >= t + 2 * hb_ms) {
            m.rewritten_at = Some(now);
            m.rewrite = true;
        }
    }

    fn on_all_states(&mut self, now: Millis, r: Result<Vec<Result<Option<ClusterState>, CorruptRecord>>, IoFailure>) {
        let copies = match r {
            Ok(c) => c,
            Err(e) => return self.takeover_failed(now, e),
        };
        for bad in copies.iter().filter_map(|c| c.as_ref().err()) {
            self.event(MemberEvent::Corrupt(bad.clone()));
        }
        let newest = copies.into_iter().filter_map(|c| c.ok().flatten()).max_by_key(|s| (s.epoch, s.seq));
        let me = self.node.node();
        let incarnation = self.node.incarnation();
        let max_nodes = self.node.config().max_nodes;
        let p = self.participating();
        let Some(m) = p.master.as_ref() else { return };
        let epoch = m.epoch;
        // What we hold as a follower may be newer than any readable copy (damaged copies).
        let base = match (newest, p.held.clone()) {
            (Some(a), Some(b)) => Some(if (b.epoch, b.seq) > (a.epoch, a.seq) { b } else { a }),
            (a, b) => a.or(b),
        };
        let from = base.as_ref().map(|s| (s.epoch, s.seq));
        let mut state = base.unwrap_or_else(|| ClusterState::new(max_nodes, epoch, me, incarnation));
        state.epoch = epoch;
        state.seq = 0;
        state.master = me;
        state.master_incarnation = incarnation;
        // Transition ids of this epoch start above every earlier epoch's, even those of a
        // newer state that could not be read.
        state.next_transition_id = state.next_transition_id.max(epoch << 32);
        p.held = Some(state);
        self.event(MemberEvent::TookOver { epoch, from });
    }

    /// The master runs the sequencer once its reads are done, and writes a changed state.
    fn sequence(&mut self, now: Millis) -> Option<Action> {
        let max_nodes = self.node.config().max_nodes;
        let link_timeout_ms = self.node.config().link_timeout_ms as Millis;
        let acting = self.node.master_epoch();
        let Phase::Running(p) = &self.phase else { return None };
        let m = p.master.as_ref()?;
        let ready = m.taken_over && p.queue.is_empty() && acting == Some(m.epoch) && now >= p.write_retry_at;
        if !ready || !(m.dirty || m.rewrite) {
            return None;
        }
        let current = p.held.clone()?;
        let life: Vec<NodeLife> = NodeId::all(max_nodes)
            .map(|n| NodeLife {
                running: self.node.running_incarnation(now, n),
                stopped: self.node.stopped_incarnation(now, n),
            })
            .collect();
        let reports = self.link_reports(now, &current);
        let me = self.node.node();
        let m = self.master_mut()?;
        let unreachable = m.links.judge(now, me, &reports, link_timeout_ms);
        let Phase::Running(p) = &self.phase else { return None };
        let m = p.master.as_ref()?;
        let inputs = sequencer::Inputs { requests: &m.requests, acks: &m.acks, life: &life, unreachable: &unreachable };
        let (mut next, events) = sequencer::advance(&current, &inputs);
        let changed = next != current || current.seq == 0;
        let rewrite = m.rewrite;
        if let Some(m) = self.master_mut() {
            // Runs again after a failed write (`write_failed` marks it), or on new inputs.
            m.dirty = false;
        }
        for e in events {
            self.event(MemberEvent::Sequenced(e));
        }
        if !changed && !rewrite {
            return None;
        }
        next.seq = current.seq + 1;
        if !changed {
            self.event(MemberEvent::StateRewritten { seq: next.seq });
        }
        self.pending = Some(Pending::WriteState(next.clone()));
        Some(Action::WriteClusterState(next))
    }

    /// What the joined nodes that run an interconnect publish of it, for the master's link
    /// judge: each node's running incarnation's heartbeat (this node's own set as it stands).
    /// Only Joined members are judged: a node joining or leaving may not have its links yet,
    /// or any more.
    fn link_reports(&self, now: Millis, state: &ClusterState) -> Vec<(NodeId, NodeSet)> {
        let me = self.node.node();
        NodeId::all(state.max_nodes())
            .filter(|n| state.member(*n).state == MemberState::Joined)
            .filter_map(|n| {
                let m = state.member(n);
                if n == me {
                    return (m.incarnation == self.node.incarnation())
                        .then_some(self.node.reachable()?)
                        .map(|r| (n, r));
                }
                let hb = self.node.heartbeat(n)?;
                let running = self.node.running_incarnation(now, n) == Some(m.incarnation);
                (running && hb.incarnation == m.incarnation).then_some(hb.reaches?).map(|r| (n, r))
            })
            .collect()
    }

    /// Writes our own request and acknowledgements when they changed (after a back-off when a
    /// write failed).
    fn write_own_records(&mut self, now: Millis) -> Option<Action> {
        let Phase::Running(p) = &mut self.phase else { return None };
        if now < p.write_retry_at {
            return None;
        }
        if let Some(r) = p.participant.request_to_write() {
            self.pending = Some(Pending::WriteRequest(r.clone()));
            return Some(Action::WriteRequest(r));
        }
        if let Some(a) = p.participant.acks_to_write() {
            self.pending = Some(Pending::WriteAcks(a.clone()));
            return Some(Action::WriteAcks(a));
        }
        None
    }

    /// Leaves asked for by `sdc leave` (the node table), and the bounds of a leave.
    fn check_leave(&mut self, now: Millis) {
        let table_leaves = self.node.leave_requests();
        let master_visible = self.node.master_visible(now);
        let dead_ms = self.node.config().timing.dead_ms as Millis;
        let (me, incarnation) = (self.node.config().node, self.node.incarnation());
        let Phase::Running(p) = &mut self.phase else { return };
        if p.stopping {
            return;
        }
        if let Some(n) = table_leaves.filter(|n| *n > p.leave_requests_seen) {
            p.leave_requests_seen = n;
            p.participant.request_leave(Some(n));
            self.event(MemberEvent::LeaveRequested { by_operator: true });
        }
        let p = self.participating();
        if p.leave_now {
            return self.abandon("asked to stop at once".into());
        }
        if !p.participant.wants_leave() {
            return;
        }
        let asked = *p.leave_asked_at.get_or_insert(now);
        p.no_master_since = if master_visible { None } else { Some(p.no_master_since.unwrap_or(now)) };
        let member = p.held.as_ref().map(|s| p.participant.self_state(s));
        if let None | Some(SelfState::Waiting) = member {
            // Not a member as far as this node knows: nothing to leave, but the master may have
            // begun (with no layers, even completed) its join in a state not read yet. The
            // request record withdraws the join; the node stops once the master has read it,
            // or when there is no master to begin a join.
            let written = p.participant.request_to_write().is_none();
            let answered = written
                && p.held.as_ref().is_some_and(|s| s.member(me).request_read(incarnation, p.participant.request_seq()));
            let no_master = p.no_master_since.is_some_and(|s| now >= s + dead_ms);
            #[cfg(feature = "planted-bugs")]
            let answered = answered
                || written && membership_db::planted::active(membership_db::planted::Bug::StopBeforeWithdrawalRead);
            if answered || (written && no_master) {
                self.stop();
            } else if now >= asked + 2 * dead_ms {
                self.abandon(if written {
                    "the master has not read the withdrawn join".into()
                } else {
                    "the request record withdrawing the join could not be written".into()
                });
            }
            return;
        }
        if let Some(since) = p.no_master_since.filter(|s| now >= s + 2 * dead_ms) {
            return self.abandon(format!("no master has been visible for {} ms to sequence the leave", now - since));
        }
        if now >= asked + LEAVE_MS_MAX {
            self.abandon(format!("the leave has not completed within {} s", LEAVE_MS_MAX / 1000));
        }
    }

    fn abandon(&mut self, why: String) {
        self.event(MemberEvent::LeaveAbandoned(why.clone()));
        self.participating().abandoned = Some(why);
        self.stop();
    }

    /// This node's side of a cluster state: notifications, own fate, own records.
    fn participate(&mut self, state: &ClusterState) {
        let Phase::Running(p) = &mut self.phase else { return };
        let notifications = p.participant.on_state(state);
        let me = p.participant.self_state(state);
        self.notifications.extend(notifications);
        let p = self.participating();
        if p.last_self != Some(me) {
            p.last_self = Some(me);
            self.event(MemberEvent::SelfState(me));
        }
        match me {
            SelfState::ForcedOut(refusal) => {
                let p = self.participating();
                p.queue.clear();
                self.phase = Phase::Done(MemberExit::ForcedOut(refusal));
            }
            SelfState::Refused(r) => {
                self.participating().refused = Some(r);
                self.stop();
            }
            // Left: nothing more to leave. (Asked to leave before the join began: the leave
            // bounds stop it, once its request record is written.)
            SelfState::Left => self.stop(),
            _ => {}
        }
    }

    /// Stops: the request record first says which `sdc leave` requests this daemon honoured
    /// (one write, bounded by [`FINAL_WRITE_INTERVALS`]: a daemon killed before it still owes
    /// them, and its successor leaves), then the node core marks the slot down and ends.
    fn stop(&mut self) {
        let p = self.participating();
        p.queue.clear();
        p.stopping = true;
        p.participant.leave_honoured();
    }

    /// While stopping: the final write of the request record, then the node core's stop.
    fn finish_stop(&mut self, now: Millis) -> Option<Action> {
        let wait = FINAL_WRITE_INTERVALS * self.node.config().timing.heartbeat_ms as Millis;
        let p = self.participating();
        let since = *p.stopping_since.get_or_insert(now);
        if now < since + wait {
            if let Some(a) = self.write_own_records(now) {
                return Some(a);
            }
            if self.participating().participant.request_to_write().is_some() {
                return None; // backing off after a failed write
            }
        }
        self.node.request_stop();
        // The node core acts on it at once (its last heartbeat, marked down).
        let a = self.node.poll_action(now)?;
        self.pending = Some(Pending::Node);
        Some(Action::Node(a))
    }
}

/// Whether a wait that has lasted `wait` ms is over (and starts the next one): `since` is when
/// the condition began to hold, cleared when it does not.
fn stalled(since: &mut Option<Millis>, holds: bool, now: Millis, wait: Millis) -> bool {
    match (holds, *since) {
        (false, _) => *since = None,
        (true, None) => *since = Some(now),
        (true, Some(t)) if now >= t + wait => {
            *since = Some(now);
            return true;
        }
        (true, Some(_)) => {}
    }
    false
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
        RefusalReason::Unreachable => format!("cannot reach node {} over the interconnect", r.node),
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
                SeqEvent::Unreachable { subject, peer } => write!(
                    f,
                    "master: forcing node {subject} out: it cannot reach node {peer} over the interconnect (link timeout)"
                ),
                SeqEvent::FenceAwaited { subject, incarnation } => write!(
                    f,
                    "master: the forced leave of node {subject} (incarnation {incarnation}) waits until it is known stopped (fenced, or still for dead-ms) before any layer recovers"
                ),
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
            MemberEvent::PendingLeave { requests } => write!(
                f,
                "sdc leave was asked while no daemon ran here (request {requests}): leaving instead of joining"
            ),
            MemberEvent::LeaveAbandoned(why) => {
                write!(f, "stopping WITHOUT a graceful leave: {why}; the others force this node out")
            }
            MemberEvent::TookOver { epoch, from: Some((e, s)) } => {
                write!(f, "master: epoch {epoch} carries on from the cluster state of epoch {e} sequence {s}")
            }
            MemberEvent::TookOver { epoch, from: None } => {
                write!(f, "master: epoch {epoch} starts the cluster state (none was written before)")
            }
            MemberEvent::StateRewritten { seq } => {
                write!(f, "master: a node cannot read the cluster state; wrote it again (sequence {seq})")
            }
            MemberEvent::LeaveRequested { by_operator: false } => write!(f, "leave requested (signal)"),
            MemberEvent::IoFailed(e) => write!(f, "{e}"),
            MemberEvent::Corrupt(c) => write!(f, "{c}; not used"),
            MemberEvent::MarkedFenced(Ok(())) => {
                write!(f, "marked this node's heartbeat fenced: the others may recover what it held at once")
            }
            MemberEvent::MarkedFenced(Err(e)) => {
                write!(f, "could not mark this node's heartbeat fenced ({e}); the others wait dead-ms before recovering")
            }
            MemberEvent::NotMarkedFenced(why) => {
                write!(f, "did not mark this node's heartbeat fenced ({why}); the others wait dead-ms before recovering")
            }
        }
    }
}
