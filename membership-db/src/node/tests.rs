//! The node core's harness: several `NodeCore`s on one in-memory disk in virtual time. I/O is
//! instantaneous and atomic per action; the interleaving of nodes is shuffled by a seed. The
//! master invariants are the shared [`MasterChecker`]'s. (The whole daemon, with the membership
//! manager, torn writes and the other faults, runs in the `simulation` crate.)

use super::*;
use crate::error::Problem;
use crate::invariants::MasterChecker;
use crate::rng::SplitMix64;

const TIMING: Timing = Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 };

struct Slot {
    core: Option<NodeCore>,
    frozen_until: Millis,
    exits: Vec<Exit>,
    /// Actions performed, for the I/O budget tests.
    reads: u64,
    writes: u64,
}

struct Sim {
    now: Millis,
    stamp: ConfigStamp,
    hbs: Vec<Heartbeat>,
    /// Both copies of each claim block; `None` is a damaged copy.
    claims: Vec<[Option<Claim>; 2]>,
    slots: Vec<Slot>,
    eligible: NodeSet,
    rng: SplitMix64,
    masters: MasterChecker,
    seed: u64,
    /// The cluster UUID the superblock holds (changed by a "reformat").
    uuid: [u8; 16],
    /// `sdc leave` requests counted in every node's table entry.
    leave_requests: u64,
    /// Reads of the node table fail with EIO.
    table_eio: bool,
}

fn corrupt(kind: RecordKind, offset: u64) -> CorruptRecord {
    CorruptRecord { kind, offset, problem: Problem::Checksum { stored: 1, computed: 2 } }
}

impl Sim {
    fn new(n: u16, eligible: &[u16], seed: u64) -> Sim {
        let mut sim = Sim::stopped(n, eligible, seed);
        for id in NodeId::all(n) {
            sim.start(id);
        }
        sim
    }

    /// Formatted, nothing running.
    fn stopped(n: u16, eligible: &[u16], seed: u64) -> Sim {
        Sim {
            now: 1,
            stamp: ConfigStamp { cluster_uuid: [9; 16], table_generation: 1, written_unix_ms: 0 },
            hbs: NodeId::all(n).map(Heartbeat::never).collect(),
            claims: NodeId::all(n).map(|id| [Some(Claim::initial(id, 0)), Some(Claim::initial(id, 1))]).collect(),
            slots: (0..n)
                .map(|_| Slot { core: None, frozen_until: 0, exits: Vec::new(), reads: 0, writes: 0 })
                .collect(),
            eligible: eligible.iter().map(|i| NodeId(*i)).collect(),
            rng: SplitMix64::new(seed),
            masters: MasterChecker::new(),
            seed,
            uuid: [9; 16],
            leave_requests: 0,
            table_eio: false,
        }
    }

    fn n(&self) -> u16 {
        self.hbs.len() as u16
    }

    fn config(&self, node: NodeId) -> NodeConfig {
        NodeConfig {
            node,
            max_nodes: self.n(),
            timing: TIMING,
            cluster_uuid: [9; 16],
            table: TableView { present: NodeSet::all(self.n()), eligible: self.eligible, unreadable: NodeSet::EMPTY },
            table_generation: 1,
            incarnation_floor: 0,
            pid: node.0 as u32,
            host: "sim".into(),
            link_timeout_ms: LINK_TIMEOUT_MS_DEFAULT,
        }
    }

    fn start(&mut self, node: NodeId) {
        let core = NodeCore::new(self.config(node), self.now);
        self.slots[node.index()].core = Some(core);
    }

    fn core(&self, node: NodeId) -> &NodeCore {
        self.slots[node.index()].core.as_ref().expect("running")
    }

    fn claim_copies(&self) -> Vec<Copies<Claim>> {
        self.claims
            .iter()
            .enumerate()
            .map(|(i, c)| {
                [0usize, 1]
                    .map(|copy| c[copy].clone().ok_or_else(|| corrupt(RecordKind::Claim, (i * 2 + copy) as u64 * 512)))
            })
            .collect()
    }

    fn perform(&mut self, i: usize, action: Action) -> Completion {
        let is_write = matches!(action, Action::WriteHeartbeat(_) | Action::WriteClaim(_));
        if is_write {
            self.slots[i].writes += 1;
        } else {
            self.slots[i].reads += 1;
        }
        match action {
            Action::ReadBeacons { through } => Completion::BeaconsRead(Ok(Beacons {
                stamp: Ok(self.stamp.clone()),
                heartbeats: self.hbs[..through.0 as usize].iter().cloned().map(Ok).collect(),
            })),
            Action::ReadClaims => Completion::ClaimsRead(Ok(self.claim_copies())),
            Action::ReadSuperblock => Completion::SuperblockRead(Ok(Some(self.uuid))),
            Action::ReadNodeTable if self.table_eio => Completion::NodeTableRead(Err(IoFailure("EIO".into()))),
            Action::ReadNodeTable => Completion::NodeTableRead(Ok(NodeId::all(self.n())
                .map(|id| {
                    Ok(NodeEntry {
                        present: true,
                        master_eligible: self.eligible.contains(id),
                        name: format!("n{id}"),
                        leave_requests: self.leave_requests,
                        ..NodeEntry::absent(id, 2)
                    })
                })
                .collect())),
            Action::ReadClusterStates => Completion::ClusterStatesRead(Ok(vec![Ok(None); 8])),
            Action::ReadClusterState(_) => Completion::ClusterStateRead(Ok(Err(CorruptRecord {
                kind: RecordKind::ClusterState,
                offset: 0,
                problem: Problem::Blank,
            }))),
            Action::WriteHeartbeat(hb) => {
                let i = hb.node.index();
                self.hbs[i] = hb;
                Completion::Written(Ok(()))
            }
            Action::WriteClaim(c) => {
                let i = c.node.index();
                let copy = (c.seq % 2) as usize;
                self.claims[i][copy] = Some(c);
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
        if let Err(v) = self.masters.check(&acting) {
            panic!("seed {}: t={}: {v}", self.seed, self.now);
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
                let trace = std::env::var("NODE_TRACE").is_ok();
                if trace {
                    eprintln!(
                        "t={} node {}: do {}",
                        self.now,
                        i + 1,
                        format!("{action:?}").chars().take(200).collect::<String>()
                    );
                }
                let completion = self.perform(i, action);
                let core = self.slots[i].core.as_mut().unwrap();
                core.handle_completion(self.now, completion);
                while let Some(e) = core.poll_event() {
                    if trace {
                        eprintln!("t={} node {}: {e}", self.now, i + 1);
                    }
                }
                self.check_invariants();
            }
            let slot = &mut self.slots[i];
            if let Some(exit) = slot.core.as_ref().and_then(|c| c.exit().cloned()) {
                slot.exits.push(exit);
                slot.core = None;
            }
            while let Some(e) = slot.core.as_mut().and_then(|c| c.poll_event()) {
                if std::env::var("NODE_TRACE").is_ok() {
                    eprintln!("t={} node {}: {e}", self.now, i + 1);
                }
            }
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
        self.acting_masters().first().map(|(n, _)| *n)
    }

    fn everyone_knows(&self, m: NodeId) -> bool {
        self.slots.iter().filter_map(|s| s.core.as_ref()).all(|c| c.known_master().map(|(_, v)| v.node) == Some(m))
    }
}

const ALL3: &[u16] = &[1, 2, 3];

#[test]
fn three_nodes_elect_one_master_and_all_agree() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, ALL3, seed);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        let m = sim.master().unwrap();
        sim.run_until(1000, "everyone knows the master", |s| s.everyone_knows(m));
        let t = sim.now;
        sim.run_until(6000, "five quiet seconds", |s| s.now > t + 5000);
        assert_eq!(sim.master(), Some(m), "seed {seed}: the master stays while it is alive");
    }
}

/// Idle, every running node (the master too) does one write and one read per interval.
#[test]
fn an_idle_node_does_one_write_and_one_read_per_heartbeat() {
    let mut sim = Sim::new(5, &[1, 2, 3, 4, 5], 3);
    sim.run_until(5000, "a master known to all", |s| s.master().is_some_and(|m| s.everyone_knows(m)));
    let t = sim.now;
    sim.run_until(2000, "a settling second", |s| s.now > t + 1000);
    let before: Vec<(u64, u64)> = sim.slots.iter().map(|s| (s.reads, s.writes)).collect();
    let t = sim.now;
    sim.run_until(20_000, "ten seconds", |s| s.now > t + 10_000);
    let intervals = (sim.now - t) as f64 / TIMING.heartbeat_ms as f64;
    for (i, s) in sim.slots.iter().enumerate() {
        let reads = (s.reads - before[i].0) as f64 / intervals;
        let writes = (s.writes - before[i].1) as f64 / intervals;
        assert!((0.9..=1.1).contains(&reads), "node {}: {reads:.2} reads per interval", i + 1);
        assert!((0.9..=1.1).contains(&writes), "node {}: {writes:.2} writes per interval", i + 1);
    }
}

/// A node table change (here an `sdc leave`) is read even when the first read of it fails.
#[test]
fn a_table_change_is_read_again_after_a_failed_read() {
    let mut sim = Sim::new(3, ALL3, 5);
    sim.run_until(3000, "a master known to all", |s| s.master().is_some_and(|m| s.everyone_knows(m)));
    sim.table_eio = true;
    sim.leave_requests = 1;
    sim.stamp.table_generation = 2;
    let t = sim.now;
    sim.run_until(2000, "two seconds of failing table reads", |s| s.now > t + 500);
    assert!(sim.slots.iter().all(|s| s.core.as_ref().unwrap().leave_requests() != Some(1)));
    sim.table_eio = false;
    sim.run_until(1000, "every node read the changed table", |s| {
        s.slots.iter().all(|s| s.core.as_ref().unwrap().leave_requests() == Some(1))
    });
}

#[test]
fn crashed_master_is_replaced_only_after_dead_ms() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, ALL3, seed);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        let old = sim.master().unwrap();
        sim.slots[old.index()].core = None; // kill -9
        let crashed_at = sim.now;
        let t =
            sim.run_until(TIMING.dead_ms as Millis + 3000, "a new master", |s| s.master().is_some_and(|m| m != old));
        assert!(
            t >= crashed_at + (TIMING.dead_ms - TIMING.heartbeat_ms) as Millis,
            "seed {seed}: claimed before dead-ms"
        );
    }
}

#[test]
fn frozen_master_fences_on_waking_and_never_acts_beside_the_new_one() {
    for seed in 0..20 {
        let mut sim = Sim::new(3, ALL3, seed);
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
    let mut sim = Sim::new(3, ALL3, 7);
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
fn a_master_sees_a_later_claim_epoch_in_a_heartbeat_and_fences() {
    let mut sim = Sim::new(3, ALL3, 2);
    sim.run_until(3000, "a master", |s| s.master().is_some());
    let m = sim.master().unwrap();
    let epoch = sim.core(m).master_epoch().unwrap();
    // Another node's heartbeat says its claim block is in a later epoch (it judged the master
    // dead): the master must learn it from the heartbeats alone.
    let other = NodeId(if m.0 == 1 { 2 } else { 1 });
    sim.slots[other.index()].frozen_until = Millis::MAX;
    sim.hbs[other.index()].claim_epoch = epoch + 1;
    sim.run_until(1000, "the master fenced", |s| s.slots[m.index()].core.is_none());
    assert_eq!(sim.slots[m.index()].exits, vec![Exit::Fenced(FenceReason::Deposed { epoch, newer: epoch + 1 })]);
}

#[test]
fn second_daemon_on_a_live_slot_is_refused_and_disturbs_nothing() {
    let mut sim = Sim::new(2, &[1, 2], 3);
    sim.run_until(3000, "a master", |s| s.master().is_some());
    let before = (sim.master(), sim.core(NodeId(2)).incarnation());
    // A second daemon for node 2 in a slot of its own in the simulation: append it.
    sim.slots.push(Slot {
        core: Some(NodeCore::new(sim.config(NodeId(2)), sim.now)),
        frozen_until: 0,
        exits: vec![],
        reads: 0,
        writes: 0,
    });
    sim.run_until(3000, "the second daemon ends", |s| s.slots[2].core.is_none());
    assert!(matches!(sim.slots[2].exits[..], [Exit::Refused(Refusal::AlreadyRunning(_))]), "{:?}", sim.slots[2].exits);
    sim.slots.pop();
    let t = sim.now;
    sim.run_until(3000, "a while", |s| s.now > t + 2000);
    assert_eq!((sim.master(), sim.core(NodeId(2)).incarnation()), before);
    assert!(sim.slots.iter().all(|s| s.exits.is_empty()));
}

#[test]
fn restarted_node_takes_a_new_incarnation() {
    let mut sim = Sim::new(2, &[1, 2], 5);
    sim.run_until(3000, "node 2 running", |s| s.core(NodeId(2)).is_running());
    let first = sim.core(NodeId(2)).incarnation();
    sim.slots[1].core = None;
    sim.start(NodeId(2));
    sim.run_until(5000, "node 2 running again", |s| s.core(NodeId(2)).is_running());
    assert!(sim.core(NodeId(2)).incarnation() > first);
}

#[test]
fn only_eligible_nodes_become_master() {
    let mut sim = Sim::new(3, &[2], 9);
    sim.run_until(3000, "a master", |s| s.master().is_some());
    assert_eq!(sim.master(), Some(NodeId(2)));
    sim.slots[1].core = None;
    let t = sim.now;
    sim.run_until(6000, "a while", |s| s.now > t + 5000);
    assert_eq!(sim.master(), None, "no eligible node is left");
}

#[test]
fn a_torn_read_is_not_reported_but_lasting_damage_is_once() {
    let sim = Sim::new(2, &[1, 2], 1);
    let mut core = NodeCore::new(sim.config(NodeId(1)), 0);
    let bad = corrupt(RecordKind::Heartbeat, 512);
    let reported = |core: &mut NodeCore| {
        std::iter::from_fn(|| core.poll_event()).filter(|e| matches!(e, Event::Corrupt(_))).count()
    };
    let once =
        |core: &mut NodeCore, kind, bad: Option<&CorruptRecord>| core.note_corrupt(kind, [None, bad].into_iter());
    once(&mut core, RecordKind::Heartbeat, Some(&bad));
    assert_eq!(reported(&mut core), 0, "one failed read may be a torn read");
    once(&mut core, RecordKind::Heartbeat, None);
    once(&mut core, RecordKind::Heartbeat, Some(&bad));
    assert_eq!(reported(&mut core), 0, "healed in between: torn again, not damaged");
    once(&mut core, RecordKind::Heartbeat, Some(&bad));
    once(&mut core, RecordKind::Heartbeat, Some(&bad));
    assert_eq!(reported(&mut core), 1, "lasting damage is reported once");
    once(&mut core, RecordKind::Claim, None);
    once(&mut core, RecordKind::Heartbeat, Some(&bad));
    assert_eq!(reported(&mut core), 0, "a read of another kind forgets nothing");
}

#[test]
fn reformatted_disk_fences_every_node() {
    let mut sim = Sim::new(3, ALL3, 11);
    sim.run_until(3000, "a master", |s| s.master().is_some());
    sim.uuid = [0xEE; 16];
    sim.stamp.cluster_uuid = [0xEE; 16];
    sim.run_until(10 * TIMING.heartbeat_ms as Millis, "every node gone", |s| s.slots.iter().all(|x| x.core.is_none()));
    for slot in &sim.slots {
        assert_eq!(slot.exits, vec![Exit::Fenced(FenceReason::Reformatted)]);
    }
}

/// Regression (issue 7): random bytes over both copies of the claim block of a node that never
/// ran (not even in the node table) stopped every election, forever.
#[test]
fn a_damaged_claim_block_of_a_node_that_never_ran_does_not_stop_elections() {
    for seed in 0..10 {
        let mut sim = Sim::stopped(5, &[1, 2, 3, 4, 5], seed);
        sim.claims[4] = [None, None];
        for id in 1..=3 {
            sim.start(NodeId(id));
        }
        sim.run_until(5000, &format!("seed {seed}: a master"), |s| s.master().is_some());
    }
}

/// A damaged claim block of a master that died: its epoch is not finished again, so the new
/// master's epoch is above it.
#[test]
fn a_dead_masters_damaged_block_is_read_as_empty_above_its_epoch() {
    for seed in 0..10 {
        let mut sim = Sim::new(3, ALL3, seed);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        let old = sim.master().unwrap();
        let epoch = sim.core(old).master_epoch().unwrap();
        sim.run_until(1000, "everyone knows the master", |s| s.everyone_knows(old));
        sim.slots[old.index()].core = None; // kill -9
        sim.claims[old.index()] = [None, None];
        sim.run_until(5000, &format!("seed {seed}: a new master"), |s| s.master().is_some_and(|m| m != old));
        let m = sim.master().unwrap();
        assert!(sim.core(m).master_epoch().unwrap() > epoch, "seed {seed}: epoch {epoch} finished again");
    }
}

/// Regression (issue 7): one damaged copy of a running node's own claim block fenced it as if
/// another daemon wrote its slot. It is repaired from memory instead.
#[test]
fn a_damaged_copy_of_a_running_nodes_claim_block_is_repaired() {
    for copy in [0usize, 1] {
        let mut sim = Sim::new(3, ALL3, 4);
        sim.run_until(3000, "a master", |s| s.master().is_some());
        let m = sim.master().unwrap();
        sim.run_until(1000, "everyone knows the master", |s| s.everyone_knows(m));
        let victim = NodeId(if m.0 == 3 { 2 } else { 3 });
        sim.claims[victim.index()][copy] = None;
        // The master dies: an election reads every block, and the victim repairs its own.
        sim.slots[m.index()].core = None;
        sim.run_until(5000, "a new master", |s| s.master().is_some_and(|x| x != m));
        assert!(sim.slots[victim.index()].exits.is_empty(), "copy {copy}: {:?}", sim.slots[victim.index()].exits);
        assert!(sim.claims[victim.index()].iter().all(Option::is_some), "copy {copy}: the block was repaired");
    }
}

/// A node restarted with its own claim block damaged writes a fresh block and takes part.
#[test]
fn a_node_starting_with_a_damaged_claim_block_writes_a_fresh_one() {
    let mut sim = Sim::new(3, ALL3, 8);
    sim.run_until(3000, "a master", |s| s.master().is_some());
    let m = sim.master().unwrap();
    let epoch = sim.core(m).master_epoch().unwrap();
    let victim = NodeId(if m.0 == 1 { 2 } else { 1 });
    sim.slots[victim.index()].core = None;
    sim.claims[victim.index()] = [None, None];
    sim.start(victim);
    sim.run_until(5000, "the victim runs", |s| s.slots[victim.index()].core.as_ref().is_some_and(|c| c.is_running()));
    assert!(sim.claims[victim.index()].iter().any(Option::is_some), "a fresh block was written");
    assert_eq!(sim.core(m).master_epoch(), Some(epoch), "the master was not disturbed");
    sim.slots[m.index()].core = None;
    sim.run_until(5000, "a new master", |s| s.master().is_some_and(|x| x != m));
}

/// Random crashes, restarts, freezes and damaged claim copies; the invariants are checked after
/// every action, and once the faults stop a master is elected within a bound.
#[test]
fn random_faults_keep_one_master_and_recover() {
    let only: Option<u64> = std::env::var("NODE_SEED").ok().and_then(|s| s.parse().ok());
    let seeds: u64 = std::env::var("NODE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    for seed in 0..seeds {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let n = 2 + (seed % 4) as u16;
        let all: Vec<u16> = (1..=n).collect();
        let mut sim = Sim::new(n, &all, seed);
        let fault_until = 20_000;
        while sim.now < fault_until {
            sim.step();
            let r = sim.rng.below(1000);
            let i = sim.rng.below(n as u64) as usize;
            let node = NodeId::from_index(i);
            if r < 4 && std::env::var("NODE_TRACE").is_ok() {
                eprintln!("t={} node {}: fault {r}", sim.now, i + 1);
            }
            match r {
                0 => sim.slots[i].core = None,
                1 if sim.slots[i].core.is_none() => sim.start(node),
                2 => sim.slots[i].frozen_until = sim.now + sim.rng.below(3 * TIMING.dead_ms as u64),
                3 if sim.slots[i].core.is_none() => sim.start(node),
                4 => {
                    if std::env::var("NODE_TRACE").is_ok() {
                        eprintln!("t={} node {}: claim copy damaged", sim.now, i + 1);
                    }
                    sim.claims[i][sim.rng.below(2) as usize] = None
                }
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
        // (dead-ms), plus the staggered claims and the repairs of damaged blocks.
        let bound = 3 * TIMING.dead_ms as Millis + 3000;
        let start = sim.now;
        while sim.master().is_none() {
            assert!(sim.now - start < bound, "seed {seed}: no master within {bound} ms after the faults stop");
            // Nodes that fence on waking are restarted, as an operator or systemd would.
            for node in NodeId::all(n) {
                if sim.slots[node.index()].core.is_none() {
                    sim.start(node);
                }
            }
            sim.step();
        }
    }
}

/// Issue 8: reachability is published in the heartbeat; a change costs one early heartbeat
/// (not before a quarter interval after the last), an unchanged set nothing; a forced-out node's
/// last write marks its own heartbeat fenced, and only while its lease holds.
#[test]
fn reachability_is_published_and_a_forced_out_node_marks_itself_fenced() {
    let mut sim = Sim::new(3, ALL3, 7);
    sim.run_until(3000, "a master known to all", |s| s.master().is_some_and(|m| s.everyone_knows(m)));
    let now = sim.now;
    let writes = sim.slots[1].writes;
    let core = sim.slots[1].core.as_mut().unwrap();
    core.set_reachable(now, Some(NodeSet::of(&[NodeId(1), NodeId(2), NodeId(3)])));
    assert_eq!(core.reachable(), Some(NodeSet::of(&[NodeId(1), NodeId(3)])), "its own id is never listed");
    assert!(core.next_deadline() <= now + (TIMING.heartbeat_ms / 4) as Millis + TIMING.heartbeat_ms as Millis);
    sim.run_until(1000, "published", |s| s.hbs[1].reaches == Some(NodeSet::of(&[NodeId(1), NodeId(3)])));
    // The same set again: no early heartbeat.
    let t = sim.now;
    let deadline = sim.slots[1].core.as_ref().unwrap().next_deadline();
    sim.slots[1].core.as_mut().unwrap().set_reachable(t, Some(NodeSet::of(&[NodeId(1), NodeId(3)])));
    assert_eq!(sim.slots[1].core.as_ref().unwrap().next_deadline(), deadline);
    sim.run_until(2000, "a second", |s| s.now > t + 1000);
    let intervals = (sim.now - now) / TIMING.heartbeat_ms as Millis;
    assert!(sim.slots[1].writes - writes <= intervals + 2, "one write per interval, one more for the change");
    // Forced out: one heartbeat, marked fenced, then nothing.
    let now = sim.now;
    let core = sim.slots[1].core.as_mut().unwrap();
    let Some(Action::WriteHeartbeat(hb)) = core.mark_fenced(now) else { panic!("a fenced heartbeat") };
    assert_eq!(
        (hb.state, hb.node, hb.reaches),
        (HeartbeatState::Fenced, NodeId(2), Some(NodeSet::of(&[NodeId(1), NodeId(3)])))
    );
    assert_eq!(core.exit(), Some(&Exit::Fenced(FenceReason::ForcedOut)));
    assert!(core.mark_fenced(now).is_none() && core.poll_action(now).is_none(), "written once, then nothing");
    // A lapsed lease writes nothing.
    let core = sim.slots[2].core.as_mut().unwrap();
    let late = core.fence_deadline().unwrap();
    assert!(core.mark_fenced(late).is_none());
}
