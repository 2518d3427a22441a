//! A node's side of the transition framework, sans-IO.
//!
//! [`Participant`] reads the cluster state, notifies the node's local subsystems of every
//! position of every transition the node takes part in (once each), collects their replies into
//! the node's acknowledgement record, keeps the node's request record (join, then leave), and
//! tells the daemon what the cluster says of the node itself: joined, left, refused, forced out.
//!
//! A position at a layer this node has not registered is acknowledged at once: the layer simply
//! does not run here. An acknowledgement is written to the disk before the master can see it,
//! so "acknowledged" always means "on the disk".

use crate::steps;
use membership_db::format::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A transition notification for one local subsystem (seed 004, Table 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub transition: u64,
    pub subject: NodeId,
    pub subject_incarnation: u64,
    pub kind: TransitionKind,
    pub position: Position,
    /// The layer's name as registered here.
    pub layer: String,
    /// The cluster state this notification comes from, as (epoch, sequence): a later one shows
    /// a later view.
    pub state: (u64, u64),
    /// Every node that is not inactive, as the cluster state says now: its state, incarnation
    /// and the position of its transition in flight, from which a layer works out which nodes
    /// are its members at this moment.
    pub view: Vec<ViewMember>,
}

/// A node as a notification's view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewMember {
    pub node: NodeId,
    pub state: MemberState,
    pub incarnation: u64,
    /// Its transition in flight, if any.
    pub transition: Option<InFlight>,
}

/// A transition in flight, as a view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub kind: TransitionKind,
    pub position: Position,
    /// Only layers at or below this order take part (see [`Transition::upper`]).
    pub upper: Option<u32>,
}

impl ViewMember {
    /// Whether this node is a member of the layer at `order` at this moment: a layer's
    /// membership changes at its barrier `change` (0-based) of a transition, so that a layer
    /// with a stop barrier before its change sees every member stopped first. A node forced
    /// out stays a member until its forced leave reaches that barrier: it is known stopped
    /// only then (it waits at [`crate::sequencer::FENCE_WAIT`] before), unless the forced leave
    /// never visits the layer (the aborted join had not reached it).
    pub fn member_of(&self, order: u32, change: u8) -> bool {
        let before_change = |p: Position| p.order < order || (p.order == order && p.barrier < change);
        match self.transition {
            None => self.state == MemberState::Joined,
            Some(t) => match t.kind {
                TransitionKind::Join => !before_change(t.position),
                // Leaves go top-down: not at the layer yet means a higher order.
                TransitionKind::Leave => {
                    t.position.order > order || (t.position.order == order && t.position.barrier < change)
                }
                TransitionKind::ForcedLeave => t.upper.is_none_or(|u| u >= order) && before_change(t.position),
            },
        }
    }
}

impl Notification {
    /// How many barriers this layer has for this kind (so a subsystem knows which is last).
    pub fn key(&self) -> (u64, Position) {
        (self.transition, self.position)
    }
}

/// What the cluster says of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfState {
    /// Not (yet) a member: the join has not started.
    Waiting,
    Joining,
    Joined,
    Leaving,
    /// The graceful leave completed: the daemon may stop.
    Left,
    /// The join was refused, before or during the join.
    Refused(JoinRefusal),
    /// The others forced this node out: fence.
    ForcedOut(Option<JoinRefusal>),
}

/// Bound on notifications remembered as delivered: one per position of each transition in
/// flight is enough; older ones are pruned with their transitions.
const DELIVERED_MAX: usize = NODES_MAX as usize * LAYERS_MAX * BARRIERS_MAX as usize;
/// Finished transitions remembered: a few cluster lifetimes of every node joining and leaving.
const FINISHED_MAX: usize = 4 * NODES_MAX as usize;

pub struct Participant {
    me: NodeId,
    incarnation: u64,
    layers: Vec<LayerSpec>,
    want: Want,
    request_seq: u64,
    request_written: Option<NodeRequest>,
    acks_seq: u64,
    /// The latest position acknowledged, per transition in flight.
    acked: Vec<Ack>,
    acks_written: Option<Vec<Ack>>,
    delivered: BTreeSet<(u64, Position)>,
    /// Transitions no longer in flight, with the last position delivered here: should one come
    /// back (a new master that could read only an older cluster state), its positions up to
    /// that one are acknowledged without notifying the layers again.
    finished: VecDeque<(u64, Position)>,
    /// The last position delivered of each transition in flight.
    last_delivered: BTreeMap<u64, Position>,
    /// Whether this incarnation has been a member (joining or joined) yet.
    was_member: bool,
    /// The `sdc leave` requests honoured, as the request record says.
    leave_requests_seen: u64,
    /// The `sdc leave` requests being honoured: recorded as honoured only when the daemon
    /// stops ([`Participant::leave_honoured`]), so that one killed during its leave leaves
    /// again when it restarts.
    leave_requests_honouring: u64,
}

impl Participant {
    /// `request_seq` and `acks_seq` are the sequence numbers of this node's newest records on
    /// the disk (the next writes go to the other copies); `leave_requests_seen` the count of
    /// `sdc leave` requests honoured so far.
    pub fn new(
        me: NodeId,
        incarnation: u64,
        layers: Vec<LayerSpec>,
        request_seq: u64,
        acks_seq: u64,
        leave_requests_seen: u64,
    ) -> Participant {
        Participant {
            me,
            incarnation,
            layers,
            want: Want::Join,
            request_seq,
            request_written: None,
            acks_seq,
            acked: Vec::new(),
            acks_written: None,
            delivered: BTreeSet::new(),
            finished: VecDeque::new(),
            last_delivered: BTreeMap::new(),
            was_member: false,
            leave_requests_seen,
            leave_requests_honouring: leave_requests_seen,
        }
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Asks for a graceful leave; `leave_requests` is the `sdc leave` count it honours, if it
    /// comes from one (recorded when the daemon stops, so that a restarted daemon does not
    /// honour it twice).
    pub fn request_leave(&mut self, leave_requests: Option<u64>) {
        self.want = Want::Leave;
        if let Some(n) = leave_requests {
            self.leave_requests_honouring = self.leave_requests_honouring.max(n);
        }
    }

    /// The daemon stops having honoured its `sdc leave` requests: the request record says so
    /// from its next write.
    pub fn leave_honoured(&mut self) {
        self.leave_requests_seen = self.leave_requests_seen.max(self.leave_requests_honouring);
    }

    pub fn wants_leave(&self) -> bool {
        self.want == Want::Leave
    }

    /// The request record to write, when it differs from the last one written.
    pub fn request_to_write(&mut self) -> Option<NodeRequest> {
        if !self.request_differs() {
            return None;
        }
        Some(NodeRequest {
            node: self.me,
            seq: self.request_seq + 1,
            incarnation: self.incarnation,
            want: self.want,
            layers: self.layers.clone(),
            leave_requests_seen: self.leave_requests_seen,
        })
    }

    /// The position of transition `id` this node has acknowledged, if any.
    pub fn acked(&self, id: u64) -> Option<Position> {
        self.acked.iter().find(|a| a.transition == id).map(|a| a.position)
    }

    /// Writes the request record again (with a new sequence number) at the next chance: the
    /// master has not read it for a while (a damaged copy, a lost write).
    pub fn republish_request(&mut self) {
        self.request_written = None;
    }
    /// The same for the acknowledgement record.
    pub fn republish_acks(&mut self) {
        self.acks_written = None;
    }

    /// Whether the master has yet to read our newest request: the cluster state records the
    /// newest request it read of each node.
    pub fn request_unread(&self, state: &ClusterState) -> bool {
        self.request_written.is_some() && !state.member(self.me).request_read(self.incarnation, self.request_seq)
    }

    /// Transitions in flight wait at a position we acknowledged: the master has not yet read
    /// every participant's acknowledgement, ours perhaps among them. Returns how many nodes take
    /// part in the largest such transition (0: none waits on us).
    pub fn acks_awaited(&self, state: &ClusterState) -> usize {
        // Looked up once per transition: both lists grow with the cluster (256 x 256).
        let acked: BTreeMap<u64, Position> = self.acked.iter().map(|a| (a.transition, a.position)).collect();
        state
            .transitions
            .iter()
            .filter(|t| t.participants.contains(self.me) && acked.get(&t.id) == Some(&t.position))
            .map(|t| t.participants.len())
            .max()
            .unwrap_or(0)
    }

    /// The sequence numbers of the newest records on the disk.
    pub fn request_seq(&self) -> u64 {
        self.request_seq
    }
    pub fn acks_seq(&self) -> u64 {
        self.acks_seq
    }

    /// Whether a record differs from the one on the disk.
    pub fn has_writes(&self) -> bool {
        self.request_differs() || self.acks_written.as_ref() != Some(&self.acked)
    }

    /// Whether the request record on the disk (if any) says something else than we would.
    fn request_differs(&self) -> bool {
        self.request_written.as_ref().is_none_or(|w| {
            (w.incarnation, w.want, &w.layers, w.leave_requests_seen)
                != (self.incarnation, self.want, &self.layers, self.leave_requests_seen)
        })
    }

    pub fn request_written(&mut self, r: NodeRequest) {
        self.request_seq = r.seq;
        self.request_written = Some(r);
    }

    /// The acknowledgement record to write, when it differs from the last one written.
    pub fn acks_to_write(&mut self) -> Option<AckRecord> {
        if self.acks_written.as_ref() == Some(&self.acked) {
            return None;
        }
        Some(AckRecord {
            node: self.me,
            seq: self.acks_seq + 1,
            incarnation: self.incarnation,
            acks: self.acked.clone(),
        })
    }

    pub fn acks_written(&mut self, r: AckRecord) {
        self.acks_seq = r.seq;
        self.acks_written = Some(r.acks);
    }

    fn record_ack(&mut self, transition: u64, position: Position, nack: bool) {
        self.acked.retain(|a| a.transition != transition);
        self.acked.push(Ack { transition, position, nack });
    }

    /// A local subsystem answered `key`. Answers to transitions no longer in flight, or to
    /// positions not delivered, are ignored.
    pub fn on_reply(&mut self, key: (u64, Position), nack: bool) {
        if self.delivered.contains(&key) {
            self.record_ack(key.0, key.1, nack);
        }
    }

    /// Feeds the latest cluster state. Returns the notifications to deliver to local
    /// subsystems, and acknowledges at once the positions at layers not registered here.
    pub fn on_state(&mut self, state: &ClusterState) -> Vec<Notification> {
        let in_flight: BTreeSet<u64> = state.transitions.iter().map(|t| t.id).collect();
        self.acked.retain(|a| in_flight.contains(&a.transition));
        let gone: Vec<(u64, Position)> =
            self.last_delivered.iter().filter(|(t, _)| !in_flight.contains(t)).map(|(t, p)| (*t, *p)).collect();
        for (t, p) in gone {
            self.last_delivered.remove(&t);
            self.finished.retain(|(id, _)| *id != t);
            if self.finished.len() >= FINISHED_MAX {
                self.finished.pop_front();
            }
            self.finished.push_back((t, p));
        }
        self.delivered.retain(|(t, _)| in_flight.contains(t));
        // Built once per state, and only if a notification goes out (most states bring none).
        let mut view: Option<Vec<ViewMember>> = None;
        let make_view = || {
            let mut in_flight: Vec<Option<InFlight>> = vec![None; state.members.len()];
            for t in &state.transitions {
                if let Some(slot) = in_flight.get_mut(t.subject.index()) {
                    *slot = Some(InFlight { kind: t.kind, position: t.position, upper: t.upper });
                }
            }
            NodeId::all(state.members.len() as u16)
                .map(|node| {
                    let m = state.member(node);
                    ViewMember { node, state: m.state, incarnation: m.incarnation, transition: in_flight[node.index()] }
                })
                .filter(|v| v.state != MemberState::Inactive)
                .collect::<Vec<_>>()
        };
        // Participants are named by node: while the cluster still counts an earlier daemon of
        // this node (until its forced leave), its positions are that daemon's to answer, not
        // this one's; the master stops waiting for them when it forces that daemon out.
        // (Answered from here, a layer of this daemon would act on a membership it is not in.)
        let mine = state.member(self.me).incarnation == self.incarnation;
        let mut out = Vec::new();
        for t in &state.transitions {
            if !t.participants.contains(self.me) || !mine {
                continue;
            }
            let key = (t.id, t.position);
            if self.delivered.contains(&key) {
                continue;
            }
            if let Some(&(_, last)) = self.finished.iter().find(|(id, _)| *id == t.id) {
                let sequence = steps::sequence(&state.layers, t.kind, t.upper);
                let index = |p: Position| sequence.iter().position(|q| *q == p);
                if index(t.position).zip(index(last)).is_some_and(|(at, done)| at <= done) {
                    // Processed here before: acknowledge the furthest, notify nothing.
                    self.delivered.insert(key);
                    self.record_ack(t.id, last, false);
                    continue;
                }
            }
            assert!(self.delivered.len() < DELIVERED_MAX, "delivered notifications are pruned with their transitions");
            self.delivered.insert(key);
            // Positions are delivered in their sequence's order: the last is the furthest.
            self.last_delivered.insert(t.id, t.position);
            match self.layers.iter().find(|l| l.order == t.position.order) {
                Some(layer) => out.push(Notification {
                    transition: t.id,
                    subject: t.subject,
                    subject_incarnation: t.subject_incarnation,
                    kind: t.kind,
                    position: t.position,
                    layer: layer.name.clone(),
                    state: (state.epoch, state.seq),
                    view: view.get_or_insert_with(make_view).clone(),
                }),
                None => self.record_ack(t.id, t.position, false),
            }
        }
        out
    }

    /// What the cluster state says of this node's incarnation.
    pub fn self_state(&mut self, state: &ClusterState) -> SelfState {
        let m = state.member(self.me);
        let refusal = m.refusal.filter(|r| r.incarnation == self.incarnation);
        // A nack or a broken interconnect forces a member out; the other reasons refuse a join
        // before it starts.
        let forced = |r: &JoinRefusal| matches!(r.reason, RefusalReason::Nacked | RefusalReason::Unreachable);
        if let Some(r) = refusal.filter(|r| !forced(r)) {
            return SelfState::Refused(r); // refused before the join started
        }
        if m.incarnation != self.incarnation {
            // Not about us yet: nothing, or our previous incarnation's forced leave.
            return SelfState::Waiting;
        }
        match m.state {
            MemberState::Joining => {
                self.was_member = true;
                SelfState::Joining
            }
            MemberState::Joined => {
                self.was_member = true;
                SelfState::Joined
            }
            MemberState::Leaving => {
                self.was_member = true;
                SelfState::Leaving
            }
            MemberState::ForcedLeaving => SelfState::ForcedOut(refusal),
            MemberState::Inactive if self.want == Want::Leave && refusal.is_none() => SelfState::Left,
            // Inactive after having been a member, without our leave: forced out, and the others
            // already recovered (this node was frozen through it).
            MemberState::Inactive if self.was_member || refusal.is_some() => SelfState::ForcedOut(refusal),
            MemberState::Inactive => SelfState::Waiting,
        }
    }
}
