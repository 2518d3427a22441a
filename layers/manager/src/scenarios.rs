//! Golden scenarios of seed 004 (Figs. 3-15, Table 1), run through the real sequencer and
//! participants with recording subsystems at the four built-in orders. The "disk" is the
//! records themselves, exchanged in rounds: the master advances, then every node reads the
//! state, delivers notifications, collects its subsystems' answers and writes its records.

use crate::participant::{Participant, SelfState};
use crate::sequencer::{advance, Inputs, NodeLife};
use membership_db::format::*;

const ORDERS: [(u32, &str); 4] = [(10, "dlm"), (20, "vdm"), (30, "sfs"), (40, "em")];

/// A subsystem that records every notification and answers it, unless told to hang on joins
/// of some node or to nack.
struct Recording {
    order: u32,
    hang_on_join_of: Option<NodeId>,
    nack_join_of: Option<NodeId>,
}

struct TestNode {
    participant: Participant,
    subsystems: Vec<Recording>,
    /// What the cluster said of this node after the last round.
    self_state: SelfState,
}

struct Cluster {
    state: ClusterState,
    requests: Vec<Option<NodeRequest>>,
    acks: Vec<Option<AckRecord>>,
    life: Vec<NodeLife>,
    /// What the master's link judge decided (forced out for the interconnect, with a peer).
    unreachable: Vec<(NodeId, NodeId)>,
    nodes: Vec<Option<TestNode>>,
    incarnations: Vec<u64>,
    /// Every delivered notification: (node, layer, kind, subject, barrier), in delivery order.
    log: Vec<(u16, &'static str, TransitionKind, u16, u8)>,
    rounds: usize,
}

fn layers(barriers: &[(u32, Barriers)]) -> Vec<LayerSpec> {
    ORDERS
        .iter()
        .filter_map(|(order, name)| {
            barriers.iter().find(|(o, _)| o == order).map(|(_, b)| LayerSpec {
                order: *order,
                name: name.to_string(),
                barriers: *b,
            })
        })
        .collect()
}

fn standard() -> Vec<LayerSpec> {
    layers(&ORDERS.map(|(o, _)| (o, Barriers::one_each())))
}

impl Cluster {
    fn new(n: u16) -> Cluster {
        Cluster {
            state: ClusterState::new(n, 1, NodeId(1), 1),
            requests: NodeId::all(n).map(|id| Some(NodeRequest::initial(id, 1))).collect(),
            acks: NodeId::all(n).map(|id| Some(AckRecord::initial(id, 1))).collect(),
            life: vec![NodeLife::default(); n as usize],
            unreachable: Vec::new(),
            nodes: (0..n).map(|_| None).collect(),
            incarnations: vec![0; n as usize],
            log: Vec::new(),
            rounds: 0,
        }
    }

    /// Starts node `id`'s daemon with a new incarnation and these layers.
    fn start(&mut self, id: u16, specs: Vec<LayerSpec>) {
        let i = (id - 1) as usize;
        self.incarnations[i] += 1;
        let inc = self.incarnations[i];
        self.life[i] = NodeLife::running(inc);
        let subsystems =
            specs.iter().map(|s| Recording { order: s.order, hang_on_join_of: None, nack_join_of: None }).collect();
        let seqs = (self.requests[i].as_ref().unwrap().seq, self.acks[i].as_ref().unwrap().seq);
        self.nodes[i] = Some(TestNode {
            participant: Participant::new(NodeId(id), inc, specs, seqs.0, seqs.1, 0),
            subsystems,
            self_state: SelfState::Waiting,
        });
    }

    /// kill -9: the daemon is gone; its heartbeat stops.
    fn kill(&mut self, id: u16) {
        self.nodes[(id - 1) as usize] = None;
        self.life[(id - 1) as usize] = NodeLife { running: None, stopped: Some(self.incarnations[(id - 1) as usize]) };
    }

    fn node(&mut self, id: u16) -> &mut TestNode {
        self.nodes[(id - 1) as usize].as_mut().expect("running")
    }

    fn round(&mut self) {
        self.rounds += 1;
        let inputs =
            Inputs { requests: &self.requests, acks: &self.acks, life: &self.life, unreachable: &self.unreachable };
        let (next, _events) = advance(&self.state, &inputs);
        self.state = next;
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].as_mut() else { continue };
            let notifications = node.participant.on_state(&self.state);
            for n in notifications {
                let sub = node.subsystems.iter().find(|s| s.order == n.position.order).expect("registered");
                let name = ORDERS.iter().find(|(o, _)| *o == sub.order).unwrap().1;
                self.log.push((i as u16 + 1, name, n.kind, n.subject.0, n.position.barrier));
                let hang = n.kind == TransitionKind::Join && sub.hang_on_join_of == Some(n.subject);
                let nack = n.kind == TransitionKind::Join && sub.nack_join_of == Some(n.subject);
                if !hang {
                    node.participant.on_reply(n.key(), nack);
                }
            }
            node.self_state = node.participant.self_state(&self.state);
            if node.self_state == SelfState::Left {
                // The daemon stops once it has left, answering nothing more (as `sdc join` does).
                self.nodes[i] = None;
                self.life[i] = NodeLife::default();
                continue;
            }
            if let Some(r) = node.participant.request_to_write() {
                self.requests[i] = Some(r.clone());
                node.participant.request_written(r);
            }
            if let Some(a) = node.participant.acks_to_write() {
                self.acks[i] = Some(a.clone());
                node.participant.acks_written(a);
            }
        }
    }

    /// Runs rounds until `cond` holds; bounded.
    fn until(&mut self, what: &str, cond: impl Fn(&Cluster) -> bool) {
        for _ in 0..200 {
            if cond(self) {
                return;
            }
            self.round();
        }
        panic!("not reached in 200 rounds: {what}; state {:#?}", self.state);
    }

    fn member(&self, id: u16) -> MemberState {
        self.state.member(NodeId(id)).state
    }

    /// The log restricted to one node, as "layer kind subject barrier" strings.
    fn log_of(&self, node: u16) -> Vec<String> {
        self.log
            .iter()
            .filter(|(n, ..)| *n == node)
            .map(|(_, layer, kind, subject, barrier)| format!("{layer} {} n{subject} b{barrier}", kind.name()))
            .collect()
    }

    /// Index in the global log of the first notification matching.
    fn first(&self, node: u16, layer: &str, kind: TransitionKind, subject: u16) -> usize {
        self.log
            .iter()
            .position(|(n, l, k, s, _)| *n == node && *l == layer && *k == kind && *s == subject)
            .unwrap_or_else(|| panic!("n{node} {layer} never saw {} of n{subject}", kind.name()))
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Figs. 3-7: the first node joins alone, bottom-up through every layer.
#[test]
fn first_node_joins_bottom_up() {
    let mut c = Cluster::new(2);
    c.start(1, standard());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    assert_eq!(c.log_of(1), strings(&["dlm join n1 b0", "vdm join n1 b0", "sfs join n1 b0", "em join n1 b0"]));
    assert_eq!(c.node(1).self_state, SelfState::Joined);
}

/// Figs. 8-10: a second node joins; every layer on both nodes processes it before the next
/// layer anywhere is notified.
#[test]
fn second_node_joins_layer_by_layer_on_both_nodes() {
    let mut c = Cluster::new(2);
    c.start(1, standard());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    c.start(2, standard());
    c.until("node 2 joined", |c| c.member(2) == MemberState::Joined);
    let expected = strings(&["dlm join n2 b0", "vdm join n2 b0", "sfs join n2 b0", "em join n2 b0"]);
    assert_eq!(c.log_of(2), expected);
    assert_eq!(c.log_of(1)[4..], expected[..]);
    for (lower, higher) in [("dlm", "vdm"), ("vdm", "sfs"), ("sfs", "em")] {
        let last_lower = c.first(1, lower, TransitionKind::Join, 2).max(c.first(2, lower, TransitionKind::Join, 2));
        let first_higher = c.first(1, higher, TransitionKind::Join, 2).min(c.first(2, higher, TransitionKind::Join, 2));
        assert!(last_lower < first_higher, "{higher} notified before every {lower} had the join");
    }
}

/// Barriers: every DLM acknowledges barrier 0 before any DLM sees barrier 1, then the VDM.
#[test]
fn barriers_are_cluster_wide() {
    let specs = layers(&[(10, Barriers { join: 2, leave: 1, forced_leave: 1 }), (20, Barriers::one_each())]);
    let mut c = Cluster::new(3);
    for id in [1, 2] {
        c.start(id, specs.clone());
        c.until("joined", |c| c.member(id) == MemberState::Joined);
    }
    c.start(3, specs.clone());
    c.until("node 3 joined", |c| c.member(3) == MemberState::Joined);
    let of_3: Vec<_> = c.log.iter().filter(|e| e.3 == 3).cloned().collect();
    let b0_last = of_3.iter().rposition(|e| e.1 == "dlm" && e.4 == 0).unwrap();
    let b1_first = of_3.iter().position(|e| e.1 == "dlm" && e.4 == 1).unwrap();
    let vdm_first = of_3.iter().position(|e| e.1 == "vdm").unwrap();
    assert!(b0_last < b1_first && b1_first < vdm_first, "{of_3:?}");
    assert_eq!(of_3.iter().filter(|e| e.1 == "dlm").count(), 6, "two barriers on three nodes");
}

/// Figs. 11-12: a graceful leave goes top-down, on every node.
#[test]
fn graceful_leave_goes_top_down() {
    let mut c = Cluster::new(2);
    for id in [1, 2] {
        c.start(id, standard());
        c.until("joined", |c| c.member(id) == MemberState::Joined);
    }
    c.node(1).participant.request_leave(None);
    c.until("node 1 left", |c| c.member(1) == MemberState::Inactive);
    let leave: Vec<String> = c.log_of(2).into_iter().filter(|s| s.contains("leave n1")).collect();
    assert_eq!(leave, strings(&["em leave n1 b0", "sfs leave n1 b0", "vdm leave n1 b0", "dlm leave n1 b0"]));
    assert!(c.nodes[0].is_none(), "node 1 stopped after leaving");
    assert_eq!(c.member(2), MemberState::Joined);
}

/// Figs. 13-15 and the hung subsystem: node 2 is joining and its join hangs at the SFS on
/// both nodes; node 2 dies. Node 1 forces it out bottom-up, only through the SFS (the highest
/// layer the join reached); the event manager never hears of it. Node 2 may re-join only once
/// the forced leave completed, with a new incarnation.
#[test]
fn forced_leave_aborts_a_hung_join_and_runs_only_through_the_layer_reached() {
    let mut c = Cluster::new(2);
    c.start(1, standard());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    c.node(1).subsystems[2].hang_on_join_of = Some(NodeId(2));
    c.start(2, standard());
    c.node(2).subsystems[2].hang_on_join_of = Some(NodeId(2));
    c.until("the join of node 2 hangs at the SFS", |c| c.log_of(1).contains(&"sfs join n2 b0".to_string()));
    for _ in 0..10 {
        c.round();
    }
    assert_eq!(c.member(2), MemberState::Joining, "a hung subsystem holds the join");
    assert!(!c.log_of(1).iter().any(|s| s.starts_with("em join n2")));

    // Node 2 restarts at once (a new incarnation) before the others noticed: no join until
    // the forced leave of its old incarnation is complete.
    c.kill(2);
    c.start(2, standard());
    // Node 1's SFS aborts the hung join when the forced leave reaches it (Table 1).
    c.node(1).subsystems[2].hang_on_join_of = None;
    c.until("node 2 forced out and rejoined", |c| c.member(2) == MemberState::Joined);
    let n1 = c.log_of(1);
    let forced: Vec<&String> = n1.iter().filter(|s| s.contains("forced-leave n2")).collect();
    assert_eq!(forced, ["dlm forced-leave n2 b0", "vdm forced-leave n2 b0", "sfs forced-leave n2 b0"]);
    let forced_done = n1.iter().position(|s| s == "sfs forced-leave n2 b0").unwrap();
    let rejoin = n1.iter().rposition(|s| s == "dlm join n2 b0").unwrap();
    assert!(forced_done < rejoin, "re-join began before the forced leave completed: {n1:?}");
    assert_eq!(c.state.member(NodeId(2)).incarnation, 2);
}

/// A forced leave of a joined member runs through every layer, bottom-up, on the survivors only.
#[test]
fn forced_leave_of_a_joined_member_runs_through_every_layer() {
    let mut c = Cluster::new(3);
    for id in [1, 2, 3] {
        c.start(id, standard());
        c.until("joined", |c| c.member(id) == MemberState::Joined);
    }
    c.kill(3);
    c.until("node 3 inactive", |c| c.member(3) == MemberState::Inactive);
    for survivor in [1, 2] {
        let forced: Vec<String> = c.log_of(survivor).into_iter().filter(|s| s.contains("forced-leave n3")).collect();
        assert_eq!(
            forced,
            strings(&[
                "dlm forced-leave n3 b0",
                "vdm forced-leave n3 b0",
                "sfs forced-leave n3 b0",
                "em forced-leave n3 b0"
            ])
        );
    }
}

/// A graceful leave asked for while joining turns the join into a leave only between layers:
/// the layer in progress completes its join first, then the layers reached leave top-down.
#[test]
fn leave_during_join_turns_around_between_layers() {
    let specs = layers(&[
        (10, Barriers { join: 2, leave: 1, forced_leave: 1 }),
        (20, Barriers::one_each()),
        (30, Barriers::one_each()),
    ]);
    let mut c = Cluster::new(2);
    c.start(1, specs.clone());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    c.start(2, specs);
    c.until("dlm barrier 0 of node 2's join", |c| c.log_of(2).contains(&"dlm join n2 b0".to_string()));
    c.node(2).participant.request_leave(None);
    c.until("node 2 left", |c| c.member(2) == MemberState::Inactive);
    // Every layer the join reached completed all its join barriers (the layer in progress
    // finished), and the leave then ran top-down through exactly those layers.
    let log = c.log_of(2);
    let turn = log.iter().position(|s| s.contains("leave")).expect("a leave");
    let (joined, left) = log.split_at(turn);
    assert!(joined.iter().all(|s| s.contains("join")) && left.iter().all(|s| s.contains("leave")), "{log:?}");
    assert!(joined.contains(&"dlm join n2 b1".to_string()), "{log:?}");
    let mut layers_reached: Vec<&str> = joined.iter().map(|s| s.split(' ').next().unwrap()).collect();
    layers_reached.dedup();
    let mut leave_layers: Vec<&str> = left.iter().map(|s| s.split(' ').next().unwrap()).collect();
    leave_layers.reverse();
    assert_eq!(leave_layers, layers_reached, "{log:?}");
    assert!(!log.iter().any(|s| s.starts_with("sfs")), "the join turned around before the SFS: {log:?}");
    assert!(c.nodes[1].is_none(), "node 2 stopped after leaving");
}

/// Every subsystem at one order must register the same barriers everywhere: a joining node
/// that differs is refused, naming the layer, and nothing is notified.
#[test]
fn barrier_mismatch_refuses_the_join_naming_the_layer() {
    let mut c = Cluster::new(2);
    c.start(1, standard());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    let mut odd = standard();
    odd[1].barriers.join = 2;
    c.start(2, odd);
    c.until("node 2 refused", |c| matches!(c.nodes[1].as_ref().unwrap().self_state, SelfState::Refused(_)));
    let SelfState::Refused(r) = c.node(2).self_state else { unreachable!() };
    assert_eq!((r.reason, r.order, r.ours, r.theirs), (RefusalReason::BarrierMismatch, 20, 2, 1));
    assert!(c.log_of(2).is_empty() && c.member(2) == MemberState::Inactive);
}

/// A nack of a join aborts it: the joining node is forced out (it fences itself) and the
/// recovery runs only through the layer that nacked.
/// Node 1 joined, node 2's join nacked by node 1's second layer: node 2 has read that it is
/// forced out (its daemon still runs).
fn node_2_nacked_and_forced_out() -> Cluster {
    let mut c = Cluster::new(2);
    c.start(1, standard());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    c.node(1).subsystems[1].nack_join_of = Some(NodeId(2));
    c.start(2, standard());
    c.until("node 2 forced out", |c| matches!(c.nodes[1].as_ref().unwrap().self_state, SelfState::ForcedOut(Some(_))));
    c
}

/// Node 2 ends up inactive, its forced leave having run only up to the layer its join reached.
fn assert_recovered_node_2_up_to_vdm(c: &mut Cluster) {
    c.until("node 2 inactive", |c| c.member(2) == MemberState::Inactive);
    let forced: Vec<String> = c.log_of(1).into_iter().filter(|s| s.contains("forced-leave n2")).collect();
    assert_eq!(forced, strings(&["dlm forced-leave n2 b0", "vdm forced-leave n2 b0"]));
}

#[test]
fn nacked_join_is_aborted_by_a_forced_leave() {
    let mut c = node_2_nacked_and_forced_out();
    c.kill(2); // it fences itself
    assert_recovered_node_2_up_to_vdm(&mut c);
}

/// Regression (issue 8): the survivors began recovering a nacked node's resources (the DLM's
/// forced-leave barrier) while that node still ran, before it had fenced. The forced leave now
/// waits at the membership manager's own position until the node is known stopped.
#[test]
fn recovery_began_while_the_nacked_node_still_ran() {
    let mut c = node_2_nacked_and_forced_out();
    // Node 2 has read its fate but its daemon still runs: however many rounds pass, no layer
    // is notified of its forced leave, which waits at order 0.
    for _ in 0..20 {
        c.round();
    }
    assert!(c.log_of(1).iter().all(|s| !s.contains("forced-leave")), "{:?}", c.log_of(1));
    let t = c.state.transition_of(NodeId(2)).expect("the forced leave waits");
    assert_eq!((t.kind, t.position), (TransitionKind::ForcedLeave, crate::sequencer::FENCE_WAIT));
    // It marks its heartbeat fenced: the master sees it stopped, and recovery begins.
    c.life[1] = NodeLife { running: None, stopped: Some(c.incarnations[1]) };
    c.nodes[1] = None;
    assert_recovered_node_2_up_to_vdm(&mut c);
}

/// The disk arbitrates a broken interconnect: a joined node the master's link judge names is
/// forced out with the reason recorded, and its recovery waits for its fence as well.
#[test]
fn a_node_cut_off_from_the_interconnect_is_forced_out_with_the_reason() {
    let mut c = Cluster::new(3);
    for id in [1, 2, 3] {
        c.start(id, standard());
        c.until("joined", |c| c.member(id) == MemberState::Joined);
    }
    c.unreachable = vec![(NodeId(3), NodeId(1))];
    c.until("node 3 told", |c| matches!(c.nodes[2].as_ref().unwrap().self_state, SelfState::ForcedOut(Some(_))));
    let r = c.state.member(NodeId(3)).refusal.expect("a reason");
    assert_eq!((r.reason, r.node), (RefusalReason::Unreachable, 1));
    assert_eq!(crate::member::refusal_text(&r), "cannot reach node 1 over the interconnect");
    c.unreachable.clear();
    for _ in 0..10 {
        c.round();
    }
    assert!(c.log_of(1).iter().all(|s| !s.contains("forced-leave")));
    c.kill(3);
    c.until("node 3 inactive", |c| c.member(3) == MemberState::Inactive);
    assert_eq!(c.log_of(2).iter().filter(|s| s.contains("forced-leave n3")).count(), 4, "every layer recovers");
    assert_eq!((c.member(1), c.member(2)), (MemberState::Joined, MemberState::Joined));
}

/// Transitions of different nodes run concurrently: two nodes join at once, and a node leaves
/// while another joins; each node's own transitions stay in order.
#[test]
fn concurrent_transitions_of_different_nodes() {
    let mut c = Cluster::new(4);
    c.start(1, standard());
    c.until("node 1 joined", |c| c.member(1) == MemberState::Joined);
    c.start(2, standard());
    c.start(3, standard());
    c.until("both joined", |c| c.member(2) == MemberState::Joined && c.member(3) == MemberState::Joined);
    let rounds_two = c.rounds;
    c.start(4, standard());
    c.node(2).participant.request_leave(None);
    c.until("4 joined and 2 left", |c| c.member(4) == MemberState::Joined && c.member(2) == MemberState::Inactive);
    for n in [2, 3] {
        let own: Vec<String> = c.log_of(n).into_iter().filter(|s| s.contains(&format!("join n{n}"))).collect();
        assert_eq!(
            own,
            strings(&["dlm join n{} b0", "vdm join n{} b0", "sfs join n{} b0", "em join n{} b0"])
                .iter()
                .map(|s| s.replace("{}", &n.to_string()))
                .collect::<Vec<_>>()
        );
    }
    // Concurrent, not one after the other: the two joins overlapped.
    assert!(rounds_two < 20, "two joins took {rounds_two} rounds");
    assert_eq!(c.member(3), MemberState::Joined);
}

/// A node that completes its graceful leave while another node's join is in flight stops and
/// answers nothing more: it must no longer hold that join up (regression: the join waited for
/// the departed node's acknowledgement forever).
#[test]
fn a_leave_completing_during_another_join_does_not_stall_it() {
    for delay in 0..6 {
        let mut c = Cluster::new(4);
        for id in [1, 2, 3] {
            c.start(id, standard());
            c.until("joined", |c| c.member(id) == MemberState::Joined);
        }
        c.node(3).participant.request_leave(None);
        for _ in 0..delay {
            c.round();
        }
        c.start(4, standard());
        c.until("node 3 left and node 4 joined", |c| {
            c.member(3) == MemberState::Inactive && c.member(4) == MemberState::Joined
        });
        assert!(c.state.transitions.is_empty());
    }
}

/// The master may die and another read the same records: sequencing resumes from the disk.
/// (Here: the sequencer is a pure function of the records, so a fresh call continues.)
#[test]
fn a_new_master_resumes_from_the_records() {
    let mut c = Cluster::new(3);
    for id in [1, 2] {
        c.start(id, standard());
        c.until("joined", |c| c.member(id) == MemberState::Joined);
    }
    c.start(3, standard());
    c.until("node 3 at the vdm", |c| c.state.transition_of(NodeId(3)).is_some_and(|t| t.position.order == 20));
    // Node 1 (the master) dies; node 2 carries on from the same cluster state.
    c.kill(1);
    c.state.master = NodeId(2);
    c.state.epoch += 1;
    c.until("node 3 joined and node 1 forced out", |c| {
        c.member(3) == MemberState::Joined && c.member(1) == MemberState::Inactive
    });
    assert_eq!(c.log_of(3).iter().filter(|s| s.contains("join n3")).count(), 4, "no position repeated or skipped");
}
