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

use membership_db::format::*;
use std::collections::BTreeSet;

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
    /// Every node that is not inactive, with its state, as the cluster state says now.
    pub view: Vec<(NodeId, MemberState)>,
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
    /// Whether this incarnation has been a member (joining or joined) yet.
    was_member: bool,
}

impl Participant {
    /// `request_seq` and `acks_seq` are the sequence numbers of this node's newest records on
    /// the disk (the next writes go to the other copies).
    pub fn new(me: NodeId, incarnation: u64, layers: Vec<LayerSpec>, request_seq: u64, acks_seq: u64) -> Participant {
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
            was_member: false,
        }
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Asks for a graceful leave.
    pub fn request_leave(&mut self) {
        self.want = Want::Leave;
    }

    pub fn wants_leave(&self) -> bool {
        self.want == Want::Leave
    }

    /// The request record to write, when it differs from the last one written.
    pub fn request_to_write(&mut self) -> Option<NodeRequest> {
        let current = (self.incarnation, self.want, &self.layers);
        if let Some(w) = &self.request_written {
            if (w.incarnation, w.want, &w.layers) == current {
                return None;
            }
        }
        Some(NodeRequest {
            node: self.me,
            seq: self.request_seq + 1,
            incarnation: self.incarnation,
            want: self.want,
            layers: self.layers.clone(),
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
        self.delivered.retain(|(t, _)| in_flight.contains(t));
        let view: Vec<(NodeId, MemberState)> = NodeId::all(state.members.len() as u16)
            .map(|n| (n, state.member(n).state))
            .filter(|(_, s)| *s != MemberState::Inactive)
            .collect();
        let mut out = Vec::new();
        for t in &state.transitions {
            if t.participants & (1u128 << self.me.index()) == 0 {
                continue;
            }
            let key = (t.id, t.position);
            if self.delivered.contains(&key) {
                continue;
            }
            assert!(self.delivered.len() < DELIVERED_MAX, "delivered notifications are pruned with their transitions");
            self.delivered.insert(key);
            match self.layers.iter().find(|l| l.order == t.position.order) {
                Some(layer) => out.push(Notification {
                    transition: t.id,
                    subject: t.subject,
                    subject_incarnation: t.subject_incarnation,
                    kind: t.kind,
                    position: t.position,
                    layer: layer.name.clone(),
                    view: view.clone(),
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
        if let Some(r) = refusal.filter(|r| r.reason != RefusalReason::Nacked) {
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
