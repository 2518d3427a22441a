//! The master's transition sequencer (seed 004, Table 1), as a pure function of what the disk
//! says: [`advance`] takes the cluster state and the nodes' requests, acknowledgements and
//! liveness, and returns the next cluster state and what happened.
//!
//! Rules, in the order `advance` applies them:
//!
//! 1. **Forced leave.** A member whose daemon is gone (heartbeat dead, stopped, or another
//!    incarnation) is forced out: a graceful join or leave in flight for it is aborted, and the
//!    forced leave runs bottom-up only up to the highest layer that graceful transition reached.
//!    It is removed from the participants of every other transition.
//! 2. **Advance.** A transition moves to its next position when every participant has
//!    acknowledged the current one (each barrier is a cluster-wide barrier). A nack aborts a join
//!    (the joining node is forced out, with the nack recorded) or turns a leave into a forced
//!    leave; a forced leave cannot be refused. A join whose leave was requested turns into a
//!    leave at the next layer boundary, never inside a layer.
//! 3. **Requests.** An inactive node asking to join starts a join, if its layer registrations
//!    agree with the cluster's (same barrier counts for every order), else it is refused naming
//!    the layer. A joined node asking to leave starts a leave. There is at most one transition
//!    per node, so a node's transitions never overlap or reorder, and a node cannot re-join
//!    before its forced leave has completed everywhere.
//!    A node whose join starts takes part in every transition already in flight, from its
//!    current position on.
//!
//! 4. **Links.** A joined node the master found cut off from the others over the interconnect
//!    ([`Inputs::unreachable`], decided by [`crate::links`]) is forced out, the reason naming a
//!    peer it cannot reach.
//!
//! **Recovery waits for the fence.** A forced leave whose subject is not known stopped (its
//! heartbeat still for `dead_ms`, marked down or fenced, or another incarnation running on its
//! slot) begins at [`FENCE_WAIT`], the membership manager's own position (order 0, where no
//! layer registers: participants acknowledge it without notifying anything), and moves on to
//! the layers only once the subject is known stopped. A node forced out while alive (a nack,
//! a broken link) therefore cannot still hold what the survivors begin to recover; it marks its
//! heartbeat fenced as soon as it has stopped everything, so the wait is short.
//!
//! Transitions of different nodes run concurrently.

use crate::steps;
use membership_db::format::*;

/// What the master knows of a node's daemon from its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeLife {
    /// The incarnation whose heartbeat is running (not dead, not stopped), if any.
    pub running: Option<u64>,
    /// The incarnation whose heartbeat the master found stopped (still for `dead_ms`, or
    /// marked down or fenced), if any: it can never write again.
    pub stopped: Option<u64>,
}

impl NodeLife {
    pub fn running(incarnation: u64) -> NodeLife {
        NodeLife { running: Some(incarnation), stopped: None }
    }
    pub fn is(&self, incarnation: u64) -> bool {
        self.running == Some(incarnation)
    }
}

/// Where a forced leave waits until its subject is known stopped: the membership manager's own
/// order 0, which no layer registers, so no subsystem is notified there.
pub const FENCE_WAIT: Position = Position { order: 0, barrier: 0 };

/// The inputs of one sequencing round, one entry per node slot: the newest records the master
/// has read of each node (`None`: none readable yet).
pub struct Inputs<'a> {
    pub requests: &'a [Option<NodeRequest>],
    pub acks: &'a [Option<AckRecord>],
    pub life: &'a [NodeLife],
    /// Joined nodes to force out because the interconnect is broken, each with a peer it
    /// cannot reach (the master's [`crate::links::LinkJudge`] decides; empty without one).
    pub unreachable: &'a [(NodeId, NodeId)],
}

/// What a round did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqEvent {
    Started(Transition),
    Advanced {
        transition: u64,
        subject: NodeId,
        kind: TransitionKind,
        position: Position,
    },
    Completed {
        subject: NodeId,
        kind: TransitionKind,
        state: MemberState,
    },
    JoinTurnedIntoLeave {
        subject: NodeId,
        at_order: u32,
    },
    Refused {
        subject: NodeId,
        refusal: JoinRefusal,
    },
    NackIgnored {
        transition: u64,
        node: NodeId,
    },
    /// Forced out: cannot reach `peer` over the interconnect.
    Unreachable {
        subject: NodeId,
        peer: NodeId,
    },
    /// A forced leave waits at [`FENCE_WAIT`] until its subject is known stopped.
    FenceAwaited {
        subject: NodeId,
        incarnation: u64,
    },
}

struct Round<'a> {
    s: ClusterState,
    inputs: &'a Inputs<'a>,
    events: Vec<SeqEvent>,
}

/// Computes the next cluster state from `state` and the nodes' records. The caller stamps
/// epoch and sequence number and writes it when it differs from `state`.
pub fn advance(state: &ClusterState, inputs: &Inputs<'_>) -> (ClusterState, Vec<SeqEvent>) {
    assert_eq!(inputs.life.len(), state.members.len(), "one life entry per node slot");
    let mut r = Round { s: state.clone(), inputs, events: Vec::new() };
    r.record_stopped();
    r.force_out_the_gone();
    r.force_out_the_unreachable();
    r.advance_transitions();
    r.handle_requests();
    (r.s, r.events)
}

impl Round<'_> {
    fn alive(&self, node: NodeId, incarnation: u64) -> bool {
        self.inputs.life[node.index()].is(incarnation)
    }

    /// Whether the daemon `incarnation` of `node` is known stopped: its heartbeat was found
    /// still for `dead_ms`, marked down or fenced, or a later incarnation runs on its slot (a
    /// daemon takes a slot only once the previous one stopped).
    fn known_stopped(&self, node: NodeId, incarnation: u64) -> bool {
        let life = self.inputs.life[node.index()];
        self.s.member(node).stopped_incarnation >= incarnation
            || life.stopped.is_some_and(|s| s >= incarnation)
            || life.running.is_some_and(|r| r > incarnation)
    }

    /// Nodes that take part in a new transition: members whose daemons run.
    fn live_members(&self) -> NodeSet {
        NodeId::all(self.s.members.len() as u16)
            .filter(|n| {
                let m = self.s.member(*n);
                m.state.is_member() && self.alive(*n, m.incarnation)
            })
            .collect()
    }

    /// Records the incarnations found stopped: a daemon restarted on that slot may take it
    /// over at once (see `Member::stopped_incarnation`).
    fn record_stopped(&mut self) {
        for (m, life) in self.s.members.iter_mut().zip(self.inputs.life) {
            if let Some(stopped) = life.stopped {
                m.stopped_incarnation = m.stopped_incarnation.max(stopped);
            }
        }
    }

    fn new_id(&mut self) -> u64 {
        let id = self.s.next_transition_id;
        self.s.next_transition_id += 1;
        id
    }

    /// Starts a transition (replacing any for the same subject), or completes it at once when
    /// no layer takes part.
    fn start(&mut self, subject: NodeId, incarnation: u64, kind: TransitionKind, upper: Option<u32>) {
        self.s.transitions.retain(|t| t.subject != subject);
        let state = match kind {
            TransitionKind::Join => MemberState::Joining,
            TransitionKind::Leave => MemberState::Leaving,
            TransitionKind::ForcedLeave => MemberState::ForcedLeaving,
        };
        let m = &mut self.s.members[subject.index()];
        m.state = state;
        m.incarnation = incarnation;
        let mut participants = self.live_members();
        if kind == TransitionKind::ForcedLeave {
            participants.remove(subject);
        } else {
            participants.insert(subject);
        }
        if kind == TransitionKind::Join {
            // A joining node takes part in the transitions already in flight from where they
            // are: its layers learn of every membership change after their own join's view
            // (the DLM computes its members from what each notification shows).
            for t in &mut self.s.transitions {
                t.participants.insert(subject);
            }
        }
        let first = steps::first(&self.s.layers, kind, upper);
        // A forced leave's layers recover what the subject held: they wait for its fence.
        let fence_wait = kind == TransitionKind::ForcedLeave && !self.known_stopped(subject, incarnation);
        let first = match first {
            Some(_) if fence_wait => {
                self.events.push(SeqEvent::FenceAwaited { subject, incarnation });
                Some(FENCE_WAIT)
            }
            other => other,
        };
        let Some(position) = first else {
            let t = Transition {
                id: self.new_id(),
                subject,
                subject_incarnation: incarnation,
                kind,
                position: Position { order: 0, barrier: 0 },
                upper,
                leave_requested: false,
                participants,
            };
            self.events.push(SeqEvent::Started(t));
            return self.complete(subject, kind, incarnation);
        };
        let t = Transition {
            id: self.new_id(),
            subject,
            subject_incarnation: incarnation,
            kind,
            position,
            upper,
            leave_requested: false,
            participants,
        };
        self.events.push(SeqEvent::Started(t.clone()));
        self.s.transitions.push(t);
    }

    fn complete(&mut self, subject: NodeId, kind: TransitionKind, incarnation: u64) {
        self.s.transitions.retain(|t| t.subject != subject);
        if kind != TransitionKind::Join {
            // Out of the cluster: it answers nothing more, so nothing may wait for it.
            for t in &mut self.s.transitions {
                t.participants.remove(subject);
            }
        }
        let state = match kind {
            TransitionKind::Join => MemberState::Joined,
            TransitionKind::Leave | TransitionKind::ForcedLeave => MemberState::Inactive,
        };
        let m = &mut self.s.members[subject.index()];
        m.state = state;
        m.incarnation = incarnation;
        self.events.push(SeqEvent::Completed { subject, kind, state });
    }

    /// Forces `subject` out: aborts its graceful transition, runs a forced leave up to the
    /// highest layer that one reached, and stops waiting for its acknowledgements anywhere.
    fn force_out(&mut self, subject: NodeId) {
        let m = self.s.member(subject);
        let upper = match self.s.transition_of(subject) {
            Some(t) if t.kind == TransitionKind::Join => {
                Some(t.upper.map_or(t.position.order, |u| u.min(t.position.order)))
            }
            Some(t) => t.upper,
            None => None,
        };
        for t in &mut self.s.transitions {
            t.participants.remove(subject);
        }
        self.start(subject, m.incarnation, TransitionKind::ForcedLeave, upper);
    }

    fn force_out_the_gone(&mut self) {
        for node in NodeId::all(self.s.members.len() as u16) {
            let m = self.s.member(node);
            let gone = match m.state {
                MemberState::Joining | MemberState::Joined | MemberState::Leaving => !self.alive(node, m.incarnation),
                MemberState::Inactive | MemberState::ForcedLeaving => false,
            };
            if gone {
                self.force_out(node);
            }
        }
    }

    /// Nodes the master found cut off over the interconnect: forced out (joined ones only), the
    /// reason recorded for the node and for `sdc status`.
    fn force_out_the_unreachable(&mut self) {
        for &(node, peer) in self.inputs.unreachable {
            let m = self.s.member(node);
            if m.state != MemberState::Joined || self.s.transition_of(node).is_some() {
                continue;
            }
            let refusal = JoinRefusal {
                incarnation: m.incarnation,
                reason: RefusalReason::Unreachable,
                order: 0,
                node: peer.0,
                ours: 0,
                theirs: 0,
            };
            self.s.members[node.index()].refusal = Some(refusal);
            self.events.push(SeqEvent::Unreachable { subject: node, peer });
            self.force_out(node);
        }
    }

    /// The acknowledgement of `node` for transition `t` at its position: `Some(nack)` if given.
    /// An acknowledgement of a later position of the same transition counts too: that node has
    /// processed this one before (a new master that took over an older copy of the cluster
    /// state resumes a transition behind its participants).
    fn ack_of(&self, node: NodeId, t: &Transition) -> Option<bool> {
        let record = self.inputs.acks.get(node.index())?.as_ref()?;
        if record.incarnation != self.s.member(node).incarnation {
            return None;
        }
        let a = record.acks.iter().find(|a| a.transition == t.id)?;
        if a.position == t.position {
            return Some(a.nack);
        }
        let sequence = steps::sequence(&self.s.layers, t.kind, t.upper);
        let index = |p: Position| sequence.iter().position(|q| *q == p);
        let later = index(a.position).zip(index(t.position)).is_some_and(|(acked, at)| acked > at);
        later.then_some(false)
    }

    fn advance_transitions(&mut self) {
        // Bounded: each transition moves at most one position per round, so every
        // participant is notified of every position.
        let ids: Vec<u64> = self.s.transitions.iter().map(|t| t.id).collect();
        for id in ids {
            let Some(t) = self.s.transitions.iter().find(|t| t.id == id).cloned() else { continue };
            if t.kind == TransitionKind::ForcedLeave && t.position == FENCE_WAIT {
                // Nothing is notified here: only the subject's fence is awaited.
                if self.known_stopped(t.subject, t.subject_incarnation) {
                    self.step(t);
                }
                continue;
            }
            let answers: Vec<(NodeId, Option<bool>)> = t.participants.iter().map(|n| (n, self.ack_of(n, &t))).collect();
            #[cfg(feature = "planted-bugs")]
            if membership_db::planted::active(membership_db::planted::Bug::SequencerAdvancesEarly) {
                if answers.iter().all(|(_, a)| a.is_none()) {
                    continue;
                }
            } else if answers.iter().any(|(_, a)| a.is_none()) {
                continue;
            }
            #[cfg(not(feature = "planted-bugs"))]
            if answers.iter().any(|(_, a)| a.is_none()) {
                continue;
            }
            if let Some((nacker, _)) = answers.iter().find(|(_, a)| *a == Some(true)) {
                match t.kind {
                    TransitionKind::Join => {
                        let refusal = JoinRefusal {
                            incarnation: t.subject_incarnation,
                            reason: RefusalReason::Nacked,
                            order: t.position.order,
                            node: nacker.0,
                            ours: 0,
                            theirs: 0,
                        };
                        self.s.members[t.subject.index()].refusal = Some(refusal);
                        self.events.push(SeqEvent::Refused { subject: t.subject, refusal });
                        self.force_out(t.subject);
                        continue;
                    }
                    TransitionKind::Leave => {
                        self.force_out(t.subject);
                        continue;
                    }
                    TransitionKind::ForcedLeave => {
                        self.events.push(SeqEvent::NackIgnored { transition: t.id, node: *nacker });
                    }
                }
            }
            self.step(t);
        }
    }

    fn step(&mut self, t: Transition) {
        let next = steps::next(&self.s.layers, t.kind, t.upper, t.position);
        if t.kind == TransitionKind::Join && t.leave_requested && next.is_none_or(|n| n.order != t.position.order) {
            // Between layers: the join is turned into a leave of the layers it reached.
            self.events.push(SeqEvent::JoinTurnedIntoLeave { subject: t.subject, at_order: t.position.order });
            return self.start(t.subject, t.subject_incarnation, TransitionKind::Leave, Some(t.position.order));
        }
        match next {
            Some(position) => {
                let entry = self.s.transitions.iter_mut().find(|x| x.id == t.id).expect("in flight");
                entry.position = position;
                self.events.push(SeqEvent::Advanced { transition: t.id, subject: t.subject, kind: t.kind, position });
            }
            None => self.complete(t.subject, t.kind, t.subject_incarnation),
        }
    }

    /// Checks a joining node's registrations against the cluster's layer table.
    fn check_layers(&self, req: &NodeRequest) -> Result<Vec<LayerSpec>, JoinRefusal> {
        let refuse = |reason, order, ours, theirs| JoinRefusal {
            incarnation: req.incarnation,
            reason,
            order,
            node: 0,
            ours,
            theirs,
        };
        if validate_layers(&req.layers).is_err() {
            return Err(refuse(RefusalReason::InvalidLayers, 0, 0, 0));
        }
        let mut table = self.s.layers.clone();
        for l in &req.layers {
            match table.iter().find(|t| t.order == l.order) {
                Some(t) => {
                    for kind in [TransitionKind::Join, TransitionKind::Leave, TransitionKind::ForcedLeave] {
                        if t.barriers.of(kind) != l.barriers.of(kind) {
                            return Err(refuse(
                                RefusalReason::BarrierMismatch,
                                l.order,
                                l.barriers.of(kind),
                                t.barriers.of(kind),
                            ));
                        }
                    }
                }
                None => table.push(l.clone()),
            }
        }
        if table.len() > LAYERS_MAX {
            return Err(refuse(RefusalReason::InvalidLayers, 0, 0, 0));
        }
        table.sort_by_key(|l| l.order);
        Ok(table)
    }

    fn handle_requests(&mut self) {
        for node in NodeId::all(self.s.members.len() as u16) {
            let Some(Some(req)) = self.inputs.requests.get(node.index()) else { continue };
            if !self.alive(node, req.incarnation) {
                continue; // a request of a daemon that is no longer running
            }
            // Answered in the state: a node that withdrew its join stops once it reads this.
            let m = &mut self.s.members[node.index()];
            (m.request_incarnation, m.request_seq) = (req.incarnation, req.seq);
            let m = *m;
            let in_flight = self.s.transition_of(node).cloned();
            match req.want {
                Want::Join if m.state == MemberState::Inactive && in_flight.is_none() => {
                    if m.refusal.is_some_and(|r| r.incarnation == req.incarnation) {
                        continue; // refused already: the daemon reads why and exits
                    }
                    match self.check_layers(req) {
                        Ok(table) => {
                            self.s.layers = table;
                            self.s.members[node.index()].refusal = None;
                            self.start(node, req.incarnation, TransitionKind::Join, None);
                        }
                        Err(refusal) => {
                            self.s.members[node.index()] = Member { refusal: Some(refusal), ..m };
                            self.events.push(SeqEvent::Refused { subject: node, refusal });
                        }
                    }
                }
                Want::Leave if m.incarnation == req.incarnation => match (m.state, in_flight) {
                    (MemberState::Joined, None) => self.start(node, req.incarnation, TransitionKind::Leave, None),
                    (MemberState::Joining, Some(t)) if t.kind == TransitionKind::Join && !t.leave_requested => {
                        let entry = self.s.transitions.iter_mut().find(|x| x.id == t.id).expect("in flight");
                        entry.leave_requested = true;
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
}
