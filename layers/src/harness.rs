//! Several [`MemberCore`]s on one in-memory disk in virtual time, with recording subsystems,
//! crashes, freezes and graceful leaves. Invariants are checked after every action; once the
//! faults stop, every node must end joined with nothing in flight.
//!
//! I/O is atomic per action and instantaneous; nodes interleave in an order drawn from the
//! seed, so a seed is one exact run.

use crate::member::{Action, Completion, MemberCore, MemberExit};
use crate::participant::Notification;
use crate::steps;
use membership_db::error::CorruptRecord;
use membership_db::format::*;
use membership_db::node::{self, Exit, NodeConfig};
use membership_db::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet};

const TIMING: Timing = Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 };

fn layer_table() -> Vec<LayerSpec> {
    vec![
        LayerSpec { order: 10, name: "dlm".into(), barriers: Barriers { join: 2, leave: 1, forced_leave: 1 } },
        LayerSpec { order: 20, name: "vdm".into(), barriers: Barriers::one_each() },
        LayerSpec { order: 30, name: "sfs".into(), barriers: Barriers { join: 1, leave: 2, forced_leave: 1 } },
        LayerSpec { order: 40, name: "em".into(), barriers: Barriers::one_each() },
    ]
}

struct Slot {
    core: Option<MemberCore>,
    frozen_until: Millis,
    exits: Vec<MemberExit>,
    /// Notifications delivered to this node's subsystems, answered after a delay.
    inbox: Vec<(Millis, Notification)>,
    incarnation_seen: u64,
}

pub(crate) struct World {
    now: Millis,
    rng: SplitMix64,
    hbs: Vec<Heartbeat>,
    claims: Vec<Claim>,
    states: Vec<ClusterState>,
    requests: Vec<NodeRequest>,
    acks: Vec<AckRecord>,
    table: Vec<NodeEntry>,
    slots: Vec<Slot>,
    /// Per transition position: who was notified, who answered.
    notified: BTreeMap<(u64, Position), BTreeSet<u16>>,
    answered: BTreeMap<(u64, Position), BTreeSet<u16>>,
    /// Subjects (node, incarnation) known forced out or crashed: exempt from barriers.
    gone: BTreeSet<(u16, u64)>,
    /// Kind and position sequence of each transition, as first seen.
    kinds: BTreeMap<u64, (TransitionKind, u16)>,
    masters: Vec<(u64, NodeId)>,
    pub(crate) notifications: usize,
    /// Restart every stopped daemon at once, as systemd's Restart=always would.
    restart_stopped: bool,
}

impl World {
    pub(crate) fn new(n: u16, seed: u64) -> World {
        let mut w = World {
            now: 1,
            rng: SplitMix64::new(seed),
            hbs: NodeId::all(n).map(Heartbeat::never).collect(),
            claims: NodeId::all(n).map(|id| Claim::initial(id, 1)).collect(),
            states: Vec::new(),
            requests: NodeId::all(n).map(|id| NodeRequest::initial(id, 1)).collect(),
            acks: NodeId::all(n).map(|id| AckRecord::initial(id, 1)).collect(),
            table: NodeId::all(n)
                .map(|id| NodeEntry {
                    present: true,
                    master_eligible: true,
                    name: format!("n{id}"),
                    ..NodeEntry::absent(id, 1)
                })
                .collect(),
            slots: (0..n)
                .map(|_| Slot {
                    core: None,
                    frozen_until: 0,
                    exits: Vec::new(),
                    inbox: Vec::new(),
                    incarnation_seen: 0,
                })
                .collect(),
            notified: BTreeMap::new(),
            answered: BTreeMap::new(),
            gone: BTreeSet::new(),
            kinds: BTreeMap::new(),
            masters: Vec::new(),
            notifications: 0,
            restart_stopped: false,
        };
        for id in NodeId::all(n) {
            w.start(id);
        }
        w
    }

    fn n(&self) -> u16 {
        self.hbs.len() as u16
    }

    pub(crate) fn start(&mut self, node: NodeId) {
        let config = NodeConfig {
            node,
            master_eligible: true,
            max_nodes: self.n(),
            timing: TIMING,
            eligible_nodes: (1u128 << self.n()) - 1,
            cluster_uuid: [5; 16],
            pid: node.0 as u32,
            host: "sim".into(),
        };
        let i = node.index();
        let core = MemberCore::new(config, layer_table(), self.requests[i].seq, self.acks[i].seq, self.now);
        self.slots[i] = Slot {
            core: Some(core),
            frozen_until: 0,
            exits: std::mem::take(&mut self.slots[i].exits),
            inbox: Vec::new(),
            incarnation_seen: 0,
        };
    }

    pub(crate) fn crash(&mut self, node: NodeId) {
        let slot = &mut self.slots[node.index()];
        if slot.core.take().is_some() {
            self.gone.insert((node.0, slot.incarnation_seen));
        }
        slot.inbox.clear();
    }

    fn state(&self) -> Option<&ClusterState> {
        self.states.iter().max_by_key(|s| (s.epoch, s.seq))
    }

    pub(crate) fn member(&self, node: NodeId) -> MemberState {
        self.state().map_or(MemberState::Inactive, |s| s.member(node).state)
    }

    fn acting_masters(&self) -> Vec<(NodeId, u64)> {
        self.slots
            .iter()
            .filter(|s| s.frozen_until <= self.now)
            .filter_map(|s| s.core.as_ref())
            .filter(|c| c.exit().is_none() && c.fence_deadline().is_some_and(|d| self.now < d))
            .filter_map(|c| c.node().master_epoch().map(|e| (c.node().node(), e)))
            .collect()
    }

    fn perform(&mut self, i: usize, action: Action) -> Completion {
        match action {
            Action::Node(a) => Completion::Node(match a {
                node::Action::ReadHeartbeats => {
                    node::Completion::HeartbeatsRead(Ok(self.hbs.iter().cloned().map(Ok).collect()))
                }
                node::Action::WriteHeartbeat(hb) => {
                    let k = hb.node.index();
                    self.hbs[k] = hb;
                    node::Completion::Written(Ok(()))
                }
                node::Action::ReadClaims => {
                    node::Completion::ClaimsRead(Ok(self.claims.iter().cloned().map(Ok).collect()))
                }
                node::Action::WriteClaim(c) => {
                    let k = c.node.index();
                    self.claims[k] = c;
                    node::Completion::Written(Ok(()))
                }
                node::Action::ReadSuperblock => node::Completion::SuperblockRead(Ok(Some([5; 16]))),
            }),
            Action::ReadClusterState => Completion::ClusterState(Ok(self.state().cloned())),
            Action::WriteClusterState(s) => {
                // Invariant 3: only the acting master of the record's epoch writes cluster state.
                let writer = NodeId::from_index(i);
                let acting = self.acting_masters();
                assert!(
                    acting.contains(&(writer, s.epoch)),
                    "t={}: node {writer} wrote cluster state of epoch {} while acting masters are {acting:?}",
                    self.now,
                    s.epoch
                );
                for t in &s.transitions {
                    let seq_len = steps::sequence(&s.layers, t.kind, t.upper).len() as u16;
                    self.kinds.entry(t.id).or_insert((t.kind, seq_len));
                }
                self.states.push(s);
                Completion::Written(Ok(()))
            }
            Action::ReadRequests => {
                Completion::Requests(Ok(self.requests.iter().cloned().map(Ok::<_, CorruptRecord>).collect()))
            }
            Action::ReadAcks => Completion::Acks(Ok(self.acks.iter().cloned().map(Ok).collect())),
            Action::WriteRequest(r) => {
                let k = r.node.index();
                self.requests[k] = r;
                Completion::Written(Ok(()))
            }
            Action::WriteAcks(a) => {
                let k = a.node.index();
                self.acks[k] = a;
                Completion::Written(Ok(()))
            }
            Action::ReadNodeTable => Completion::NodeTable(Ok(self.table.iter().cloned().map(Ok).collect())),
        }
    }

    /// Invariant 2: a node is notified of a position only after every node notified of the
    /// previous position of that transition has answered it (or is gone).
    fn check_barrier(&self, node: NodeId, n: &Notification) {
        let Some(state) = self.state() else { return };
        let seq = steps::sequence(
            &state.layers,
            n.kind,
            state.transitions.iter().find(|t| t.id == n.transition).and_then(|t| t.upper),
        );
        let Some(at) = seq.iter().position(|p| *p == n.position) else { return };
        if at == 0 {
            return;
        }
        let prev = (n.transition, seq[at - 1]);
        let notified = self.notified.get(&prev).cloned().unwrap_or_default();
        let answered = self.answered.get(&prev).cloned().unwrap_or_default();
        let participants = state.transitions.iter().find(|t| t.id == n.transition).map_or(0, |t| t.participants);
        for waiting in notified.difference(&answered) {
            let w = NodeId(*waiting);
            // A participant may be dropped only by being forced out.
            let dropped = participants & (1u128 << w.index()) == 0
                && matches!(state.member(w).state, MemberState::ForcedLeaving | MemberState::Inactive);
            let alive = self.slots[w.index()].core.is_some() && !self.gone.iter().any(|(g, _)| g == waiting);
            assert!(
                !alive || dropped,
                "t={}: node {node} notified of {:?} of transition {} while node {waiting} has not answered {:?}",
                self.now,
                n.position,
                n.transition,
                prev.1
            );
        }
    }

    fn step(&mut self) {
        let n = self.slots.len();
        let offset = self.rng.below(n as u64) as usize;
        for k in 0..n {
            let i = (k + offset) % n;
            if self.restart_stopped && self.slots[i].core.is_none() {
                self.start(NodeId::from_index(i));
            }
            if self.slots[i].frozen_until > self.now || self.slots[i].core.is_none() {
                continue;
            }
            // Subsystems answer what is due.
            let due: Vec<Notification> = {
                let slot = &mut self.slots[i];
                let (due, later): (Vec<_>, Vec<_>) = slot.inbox.drain(..).partition(|(t, _)| *t <= self.now);
                slot.inbox = later;
                due.into_iter().map(|(_, n)| n).collect()
            };
            for note in due {
                self.answered.entry(note.key()).or_default().insert(i as u16 + 1);
                self.slots[i].core.as_mut().unwrap().handle_reply(note.key(), false);
            }
            for _ in 0..64 {
                let Some(core) = self.slots[i].core.as_mut() else { break };
                let Some(action) = core.poll_action(self.now) else { break };
                let completion = self.perform(i, action);
                let core = self.slots[i].core.as_mut().unwrap();
                core.handle_completion(self.now, completion);
                self.slots[i].incarnation_seen = core.node().incarnation();
                while let Some(note) = self.slots[i].core.as_mut().unwrap().poll_notification() {
                    let node = NodeId::from_index(i);
                    self.check_barrier(node, &note);
                    self.notified.entry(note.key()).or_default().insert(node.0);
                    self.notifications += 1;
                    let delay = self.rng.below(3 * TIMING.heartbeat_ms as u64);
                    self.slots[i].inbox.push((self.now + delay, note));
                }
                self.check_masters();
            }
            let slot = &mut self.slots[i];
            if let Some(exit) = slot.core.as_ref().and_then(|c| c.exit().cloned()) {
                self.gone.insert((i as u16 + 1, slot.incarnation_seen));
                slot.exits.push(exit);
                slot.core = None;
                slot.inbox.clear();
            }
            while self.slots[i].core.as_mut().and_then(|c| c.poll_event()).is_some() {}
        }
        self.check_masters();
        self.now += 1 + self.rng.below(5);
    }

    /// Invariant 1: at most one acting master at any instant, and one per epoch ever.
    fn check_masters(&mut self) {
        let acting = self.acting_masters();
        assert!(acting.len() <= 1, "t={} two acting masters: {acting:?}", self.now);
        for (node, epoch) in acting {
            if !self.masters.contains(&(epoch, node)) {
                assert!(self.masters.iter().all(|(e, _)| *e != epoch), "epoch {epoch} has two masters");
                self.masters.push((epoch, node));
            }
        }
    }

    pub(crate) fn run_until(&mut self, limit_ms: Millis, what: &str, cond: impl Fn(&World) -> bool) {
        let start = self.now;
        while !cond(self) {
            assert!(
                self.now - start < limit_ms,
                "t={}: not within {limit_ms} ms: {what}; state {:#?}",
                self.now,
                self.state()
            );
            self.step();
        }
    }

    pub(crate) fn all_joined_and_quiet(&self) -> bool {
        let Some(s) = self.state() else { return false };
        s.transitions.is_empty()
            && NodeId::all(self.n()).all(|n| {
                let slot = &self.slots[n.index()];
                slot.core.is_some()
                    && s.member(n) == Member { state: MemberState::Joined, ..s.member(n) }
                    && s.member(n).incarnation == slot.incarnation_seen
            })
    }
}

#[test]
fn nodes_join_through_every_layer_with_cluster_wide_barriers() {
    for seed in 0..10 {
        let mut w = World::new(4, seed);
        w.run_until(10_000, "all joined", World::all_joined_and_quiet);
        // 4 joins; each node is notified of each join at every position: 5 positions.
        assert!(w.notifications >= 4 * 5, "seed {seed}: {} notifications", w.notifications);
    }
}

#[test]
fn crashed_member_is_forced_out_and_rejoins_with_a_new_incarnation() {
    let mut w = World::new(3, 1);
    w.run_until(10_000, "all joined", World::all_joined_and_quiet);
    w.crash(NodeId(3));
    w.run_until(10_000, "node 3 forced out", |w| w.member(NodeId(3)) == MemberState::Inactive);
    w.start(NodeId(3));
    w.run_until(10_000, "node 3 back", World::all_joined_and_quiet);
    assert!(w.state().unwrap().member(NodeId(3)).incarnation >= 2);
}

#[test]
fn graceful_leave_then_the_daemon_stops() {
    let mut w = World::new(3, 2);
    w.run_until(10_000, "all joined", World::all_joined_and_quiet);
    w.slots[1].core.as_mut().unwrap().request_leave();
    w.run_until(10_000, "node 2 stopped", |w| w.slots[1].core.is_none());
    assert_eq!(w.slots[1].exits, vec![MemberExit::Node(Exit::Stopped)]);
    assert_eq!(w.member(NodeId(2)), MemberState::Inactive);
    assert_eq!(w.hbs[1].state, HeartbeatState::Down);
}

#[test]
fn frozen_member_fences_on_waking_without_writing_cluster_records() {
    let mut w = World::new(3, 3);
    w.run_until(10_000, "all joined", World::all_joined_and_quiet);
    let victim = NodeId(3);
    let master = w.acting_masters()[0].0;
    let victim = if victim == master { NodeId(2) } else { victim };
    w.slots[victim.index()].frozen_until = w.now + 5 * TIMING.dead_ms as Millis;
    w.run_until(10_000, "victim forced out", |w| w.member(victim) == MemberState::Inactive);
    w.run_until(10_000, "victim woke and ended", |w| w.slots[victim.index()].core.is_none());
    // It fenced before doing anything (its lease had lapsed while frozen).
    assert!(
        matches!(w.slots[victim.index()].exits[..], [MemberExit::Node(Exit::Fenced(_))]),
        "{:?}",
        w.slots[victim.index()].exits
    );
}

#[test]
fn master_death_mid_join_is_resumed_by_the_new_master() {
    for seed in 0..10 {
        let mut w = World::new(4, seed);
        w.crash(NodeId(4));
        w.run_until(10_000, "three joined", |w| (1..=3).all(|n| w.member(NodeId(n)) == MemberState::Joined));
        w.start(NodeId(4));
        w.run_until(10_000, "node 4 joining", |w| {
            w.state().is_some_and(|s| s.transition_of(NodeId(4)).is_some_and(|t| t.position.order >= 20))
        });
        let master = w.acting_masters()[0].0;
        w.crash(master);
        w.run_until(20_000, "node 4 joined under the new master", |w| {
            w.member(NodeId(4)) == MemberState::Joined && w.member(master) == MemberState::Inactive
        });
    }
}

/// Random crashes, restarts, freezes and leaves; invariants after every action; then the
/// faults stop and every node must end joined with nothing in flight (liveness).
#[test]
fn random_faults_keep_the_invariants_and_converge() {
    for seed in 0..150 {
        let n = 3 + (seed % 3) as u16;
        let mut w = World::new(n, seed);
        while w.now < 15_000 {
            w.step();
            let r = w.rng.below(2000);
            let node = NodeId::from_index(w.rng.below(n as u64) as usize);
            match r {
                0 => w.crash(node),
                1 if w.slots[node.index()].core.is_none() => w.start(node),
                2 => w.slots[node.index()].frozen_until = w.now + w.rng.below(3 * TIMING.dead_ms as u64),
                3 => {
                    if let Some(c) = w.slots[node.index()].core.as_mut() {
                        c.request_leave();
                    }
                }
                _ => {}
            }
        }
        // Faults stop: nothing frozen, every stopped daemon restarted as systemd would.
        for node in NodeId::all(n) {
            w.slots[node.index()].frozen_until = 0;
        }
        w.restart_stopped = true;
        let bound = 30_000;
        w.run_until(bound, &format!("seed {seed}: all joined after the faults stop"), |w| w.all_joined_and_quiet());
    }
}
