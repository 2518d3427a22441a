//! Targeted scenarios, scripted on the simulator: the same real cores, disk and invariant
//! checks as the random seeds (every action is checked), driven by explicit crashes, freezes
//! and leaves. The regressions of issue 7 are here too, each named after what it would have
//! caught.

use manager::member::MemberExit;
use membership_db::format::{HeartbeatState, MemberState, Millis, NodeId, NodeSet, RegionKind};
use membership_db::node::Exit;
use simulation::sim::{Config, Violation, World, TIMING};

const HB: Millis = TIMING.heartbeat_ms as Millis;
const DEAD: Millis = TIMING.dead_ms as Millis;

fn joined(w: &World, nodes: &[u16]) -> bool {
    nodes.iter().all(|n| w.member(NodeId(*n)).state == MemberState::Joined)
}

fn started(nodes: u16, seed: u64) -> Result<World, Violation> {
    let mut w = World::new(Config::quiet(nodes, seed));
    w.run_until(10_000, "every node joined", World::all_joined_and_quiet)?;
    Ok(w)
}

fn check(r: Result<(), Violation>) {
    if let Err(v) = r {
        panic!("{v}");
    }
}

#[test]
fn nodes_join_through_every_layer_with_cluster_wide_barriers() {
    for seed in 0..10 {
        let w = started(4, seed).unwrap_or_else(|v| panic!("{v}"));
        // 4 joins of 5 positions each (dlm has two join barriers), every member notified.
        assert!(w.notifications() >= 4 * 5, "seed {seed}: {} notifications", w.notifications());
    }
}

#[test]
fn crashed_member_is_forced_out_and_rejoins_with_a_new_incarnation() {
    check((|| {
        let mut w = started(3, 1)?;
        w.crash(NodeId(3));
        w.run_until(10_000, "node 3 forced out", |w| {
            let m = w.member(NodeId(3));
            m.state == MemberState::Inactive && m.stopped_incarnation >= 1
        })?;
        w.start(NodeId(3));
        w.run_until(10_000, "node 3 back", World::all_joined_and_quiet)?;
        assert!(w.member(NodeId(3)).incarnation >= 2);
        Ok(())
    })());
}

#[test]
fn graceful_leave_then_the_daemon_stops() {
    check((|| {
        let mut w = started(3, 2)?;
        w.leave(NodeId(2));
        w.run_until(10_000, "node 2 stopped", |w| !w.is_running(NodeId(2)))?;
        assert_eq!(w.exits(NodeId(2)), &[MemberExit::Node(Exit::Stopped)]);
        assert_eq!(w.member(NodeId(2)).state, MemberState::Inactive);
        assert_eq!(w.heartbeat(NodeId(2)).map(|h| h.state), Some(HeartbeatState::Down));
        Ok(())
    })());
}

#[test]
fn frozen_member_fences_on_waking_without_writing_cluster_records() {
    check((|| {
        let mut w = started(3, 3)?;
        let master = w.master().expect("a master");
        let victim = if master == NodeId(3) { NodeId(2) } else { NodeId(3) };
        w.freeze(victim, 5 * DEAD);
        w.run_until(10_000, "victim forced out", |w| w.member(victim).state == MemberState::Inactive)?;
        w.run_until(10_000, "victim woke and ended", |w| !w.is_running(victim))?;
        // It fenced before doing anything: its lease had lapsed while it was frozen.
        assert!(matches!(w.exits(victim), [MemberExit::Node(Exit::Fenced(_))]), "{:?}", w.exits(victim));
        Ok(())
    })());
}

#[test]
fn master_death_mid_join_is_resumed_by_the_new_master() {
    for seed in 0..10 {
        check((|| {
            let mut w = World::new(Config::quiet(4, seed));
            w.crash(NodeId(4));
            w.run_until(10_000, "three joined", |w| joined(w, &[1, 2, 3]))?;
            w.start(NodeId(4));
            w.run_until(10_000, "node 4 joining past the DLM", |w| {
                w.cluster_state().is_some_and(|s| s.transition_of(NodeId(4)).is_some_and(|t| t.position.order >= 20))
            })?;
            let master = w.master().expect("a master");
            w.crash(master);
            w.run_until(20_000, "node 4 joined under the new master", |w| {
                w.member(NodeId(4)).state == MemberState::Joined && w.member(master).state == MemberState::Inactive
            })
        })());
    }
}

/// Issue 7: a node restarted after kill -9 watched its stale slot for dead-ms even when the
/// cluster state already showed that incarnation stopped. Now it takes over at once.
#[test]
fn a_restart_after_the_forced_leave_takes_the_slot_at_once() {
    check((|| {
        let mut w = started(3, 4)?;
        w.crash(NodeId(3));
        w.run_until(10_000, "node 3 forced out", |w| w.member(NodeId(3)).stopped_incarnation >= 1)?;
        let before = w.heartbeat(NodeId(3)).expect("a heartbeat").incarnation;
        w.start(NodeId(3));
        let t = w.now();
        w.run_until(DEAD, "node 3 runs a new incarnation", |w| {
            w.heartbeat(NodeId(3)).is_some_and(|h| h.incarnation > before && h.state == HeartbeatState::Up)
        })?;
        // The delta lease alone: two heartbeat intervals, not dead-ms.
        assert!(w.now() - t < DEAD / 2, "took {} ms", w.now() - t);
        w.run_until(10_000, "node 3 back", World::all_joined_and_quiet)
    })());
}

/// Issue 7: `sdc leave` took up to 8 membership cycles to be noticed. Now the config stamp
/// tells the daemon within an interval, without an extra read per interval.
#[test]
fn sdc_leave_is_noticed_within_two_heartbeats() {
    check((|| {
        let mut w = started(3, 5)?;
        let t = w.now();
        w.operator_leave(NodeId(2));
        w.run_until(2 * HB + 10, "node 2 leaving", |w| w.wants_leave(NodeId(2)))?;
        w.run_until(10_000, "node 2 stopped", |w| !w.is_running(NodeId(2)))?;
        assert_eq!(w.exits(NodeId(2)), &[MemberExit::Node(Exit::Stopped)], "after {} ms", w.now() - t);
        Ok(())
    })());
}

/// Issue 7: an `sdc leave` issued while the node's daemon restarted was lost. The restarted
/// daemon now honours it (its request record keeps the count of leaves it honoured).
#[test]
fn sdc_leave_during_a_restart_is_honoured() {
    check((|| {
        let mut w = started(3, 6)?;
        w.crash(NodeId(3));
        w.start(NodeId(3));
        // 0.3 s later, while the new daemon still watches its stale slot.
        w.run_for(300)?;
        w.operator_leave(NodeId(3));
        w.run_until(10_000, "node 3 stopped", |w| !w.is_running(NodeId(3)))?;
        assert_eq!(w.exits(NodeId(3)), &[MemberExit::Node(Exit::Stopped)]);
        // A later daemon joins: the leave is not honoured twice.
        w.start(NodeId(3));
        w.run_until(10_000, "node 3 back", World::all_joined_and_quiet)
    })());
}

/// Issue 7: SIGTERM hung when no master could exist (only non-eligible nodes left). The
/// daemon now stops within a bound, without a graceful leave, saying so.
#[test]
fn sigterm_without_a_possible_master_stops_within_a_bound() {
    check((|| {
        let mut config = Config::quiet(3, 7);
        config.eligible = NodeSet::of(&[NodeId(1)]);
        let mut w = World::new(config);
        w.run_until(10_000, "every node joined", World::all_joined_and_quiet)?;
        w.crash(NodeId(1));
        w.leave(NodeId(2));
        let t = w.now();
        w.run_until(4 * DEAD, "node 2 stopped", |w| !w.is_running(NodeId(2)))?;
        assert!(
            matches!(w.exits(NodeId(2)), [MemberExit::StoppedWithoutLeave(_)]),
            "after {} ms: {:?}",
            w.now() - t,
            w.exits(NodeId(2))
        );
        Ok(())
    })());
}

/// Issue 7: random bytes over the claim block of a node that never ran stopped every
/// election, forever.
#[test]
fn a_damaged_claim_block_of_a_node_that_never_ran_does_not_stop_elections() {
    check((|| {
        let mut w = World::new(Config::quiet(3, 8));
        // Slot 4 is in the node table and never runs.
        w.damage_claim_block(NodeId(4));
        w.run_until(10_000, "every node joined", World::all_joined_and_quiet)?;
        let master = w.master().expect("a master");
        w.damage_claim_block(master);
        w.crash(master);
        w.run_until(10_000, "a new master", |w| w.master().is_some_and(|m| m != master))
    })());
}

/// The read path: an idle node, master included, does one write and one read per interval.
#[test]
fn an_idle_cluster_does_one_read_and_one_write_per_node_per_heartbeat() {
    check((|| {
        let mut w = started(5, 9)?;
        w.run_for(2 * HB)?;
        let before: Vec<(u64, u64)> = (1..=5).map(|n| w.io(NodeId(n))).collect();
        let start = w.now();
        w.run_for(10_000)?;
        let intervals = (w.now() - start) / HB;
        for n in 1..=5u16 {
            let (r, wr) = w.io(NodeId(n));
            let (r0, w0) = before[n as usize - 1];
            assert!(
                r - r0 <= intervals + 1 && wr - w0 <= intervals + 1,
                "node {n}: {} reads {} writes in {intervals} intervals",
                r - r0,
                wr - w0
            );
        }
        Ok(())
    })());
}

/// A node asked to stop after the master began its join, but before it read that state, stops
/// only once the master has read its withdrawn join: the join turns into a leave through the
/// layers, the stop is graceful, and nobody is forced out (`honest-stop`).
#[test]
fn stop_during_a_join_the_node_has_not_read_is_graceful() {
    for seed in 0..5 {
        check((|| {
            let mut w = started(3, 40 + seed)?;
            w.leave(NodeId(3));
            w.run_until(10_000, "node 3 left", |w| !w.is_running(NodeId(3)))?;
            w.start(NodeId(3));
            w.run_until(10_000, "the master began node 3's join", |w| {
                w.member(NodeId(3)).state == MemberState::Joining
            })?;
            w.leave(NodeId(3));
            w.run_until(10_000, "node 3 stopped", |w| !w.is_running(NodeId(3)))?;
            assert_eq!(w.exits(NodeId(3)).last(), Some(&MemberExit::Node(Exit::Stopped)));
            w.run_until(10_000, "node 3 inactive, nothing in flight", |w| {
                w.member(NodeId(3)).state == MemberState::Inactive
                    && w.cluster_state().is_some_and(|s| s.transitions.is_empty())
            })?;
            w.run_for(2 * DEAD)
        })());
    }
}

/// A new master whose path to the node records fails cannot take over; it tries again after a
/// back-off rather than at every poll (each try reads, and logs, the whole takeover again).
#[test]
fn a_takeover_that_cannot_read_the_records_backs_off() {
    check((|| {
        let mut w = started(3, 50)?;
        let old = w.master().expect("a master");
        let survivors: Vec<NodeId> = NodeId::all(3).filter(|n| *n != old).collect();
        for n in &survivors {
            w.fail_region(*n, RegionKind::NodeRecords, true);
        }
        w.crash(old);
        w.run_until(5 * DEAD, "a new master", |w| w.master().is_some_and(|m| m != old))?;
        let new = w.master().expect("a master");
        w.run_for(2 * DEAD)?;
        let (reads, _) = w.io(new);
        w.run_for(3 * DEAD)?;
        let intervals = 3 * DEAD / HB;
        let per_interval = (w.io(new).0 - reads) as f64 / intervals as f64;
        // One beacon read per interval, and a takeover (two reads) at most every few intervals.
        assert!(per_interval <= 2.0, "{per_interval:.1} reads per interval while the takeover fails");
        for n in &survivors {
            w.fail_region(*n, RegionKind::NodeRecords, false);
        }
        w.run_until(10_000, "the takeover completes and node 1..3 are back", |w| {
            w.master() == Some(new) && w.cluster_state().is_some_and(|s| s.epoch > 1)
        })
    })());
}

/// Regression: a daemon killed during the leave an `sdc leave` asked of it had already recorded
/// that request as honoured; restarted, it joined again and the leave was lost. The record now
/// says so only when the daemon stops, so the restarted daemon leaves.
#[test]
fn a_daemon_killed_during_its_sdc_leave_leaves_when_restarted() {
    for seed in 0..5 {
        check((|| {
            let mut w = started(3, 60 + seed)?;
            w.operator_leave(NodeId(3));
            w.run_until(5_000, "node 3 leaving", |w| w.member(NodeId(3)).state == MemberState::Leaving)?;
            w.crash(NodeId(3));
            w.run_until(10_000, "node 3 forced out", |w| {
                w.member(NodeId(3)).state == MemberState::Inactive
                    && w.cluster_state().is_some_and(|s| s.transitions.is_empty())
            })?;
            w.start(NodeId(3));
            w.run_until(10_000, "node 3's new daemon stopped", |w| !w.is_running(NodeId(3)))?;
            assert_eq!(w.exits(NodeId(3)).last(), Some(&MemberExit::Node(Exit::Stopped)));
            assert_eq!(w.member(NodeId(3)).state, MemberState::Inactive);
            // Honoured now: the next daemon joins.
            w.start(NodeId(3));
            w.run_until(10_000, "node 3 joined again", World::all_joined_and_quiet)
        })());
    }
}

const LINK: Millis = simulation::sim::LINK_TIMEOUT as Millis;

fn set(ids: &[u16]) -> NodeSet {
    ids.iter().map(|i| NodeId(*i)).collect()
}

/// Three joined nodes, each running an interconnect that reaches the other two.
fn interconnected(seed: u64) -> Result<World, Violation> {
    let mut w = started(3, seed)?;
    for (n, peers) in [(1, [2, 3]), (2, [1, 3]), (3, [1, 2])] {
        w.set_reachable(NodeId(n), Some(set(&peers)));
    }
    w.run_for(4 * HB)?;
    Ok(w)
}

/// Issue 8: the disk arbitrates a broken interconnect. Node 3's links are cut (nodes 1 and 2
/// stop listing it, it lists nobody): within the link timeout and a few intervals the master
/// forces it out, it marks its heartbeat fenced, and nodes 1 and 2 stay joined. No survivor is
/// notified of its forced leave at any layer before its daemon ended (the simulator checks
/// that after every action too: `fence-before-recovery`).
#[test]
fn a_node_cut_off_from_the_interconnect_is_forced_out_and_fences() {
    for seed in [11, 12, 13] {
        check((|| {
            let mut w = interconnected(seed)?;
            let incarnation = w.incarnation(NodeId(3));
            let cut_at = w.now();
            w.set_reachable(NodeId(1), Some(set(&[2])));
            w.set_reachable(NodeId(2), Some(set(&[1])));
            w.set_reachable(NodeId(3), Some(NodeSet::EMPTY));
            // Not before the link timeout.
            w.run_until(LINK - 2 * HB, "the link timeout nearly over", |w| w.now() >= cut_at + LINK - 2 * HB)?;
            assert!(w.is_running(NodeId(3)), "seed {seed}: forced out before the link timeout");
            assert_eq!(w.member(NodeId(3)).state, MemberState::Joined);
            w.run_until(4 * HB + 2 * HB, "node 3 forced out", |w| !w.is_running(NodeId(3)))?;
            assert!(matches!(w.exits(NodeId(3)), [MemberExit::ForcedOut(Some(_))]), "{:?}", w.exits(NodeId(3)));
            assert_eq!(w.heartbeat(NodeId(3)).map(|h| h.state), Some(HeartbeatState::Fenced));
            let refusal = w.member(NodeId(3)).refusal.expect("the reason is recorded");
            assert_eq!(refusal.reason, membership_db::format::RefusalReason::Unreachable);
            w.run_until(3 * DEAD, "node 3 inactive", |w| w.member(NodeId(3)).state == MemberState::Inactive)?;
            let ended = w.ended_at(NodeId(3), incarnation).expect("ended");
            let notes: Vec<_> =
                w.forced_leave_notifications().iter().filter(|n| n.1 == NodeId(3) && n.2 == incarnation).collect();
            assert!(notes.iter().any(|n| n.4 == 10), "seed {seed}: the DLM recovered node 3: {notes:?}");
            // Well within dead-ms of its end: the fenced heartbeat, not its silence, let the
            // survivors begin recovering.
            let first = notes.iter().map(|n| n.0).min().expect("notified");
            assert!(first < ended + DEAD, "seed {seed}: recovery began {} ms after node 3 ended", first - ended);
            for (t, _, _, notified, order) in notes {
                assert!(
                    *t >= ended,
                    "seed {seed}: node {notified} notified at order {order} at {t}, node 3 ended at {ended}"
                );
            }
            assert!(joined(&w, &[1, 2]), "nodes 1 and 2 stay joined");
            w.run_for(LINK + 4 * HB)?;
            assert!(joined(&w, &[1, 2]) && w.is_running(NodeId(1)) && w.is_running(NodeId(2)));
            Ok(())
        })());
    }
}

/// A link that heals before the link timeout forces nobody out; nor does a node that runs no
/// interconnect, whoever fails to list it.
#[test]
fn a_link_healed_before_the_timeout_forces_nobody_out() {
    check((|| {
        let mut w = interconnected(21)?;
        w.set_reachable(NodeId(1), Some(set(&[2])));
        w.set_reachable(NodeId(3), Some(set(&[2])));
        w.run_for(LINK - 4 * HB)?;
        w.set_reachable(NodeId(1), Some(set(&[2, 3])));
        w.set_reachable(NodeId(3), Some(set(&[1, 2])));
        w.run_for(2 * LINK)?;
        assert!(w.all_joined_and_quiet());
        // Node 3 stops running an interconnect: never judged by its links.
        w.set_reachable(NodeId(3), None);
        w.set_reachable(NodeId(1), Some(set(&[2])));
        w.set_reachable(NodeId(2), Some(set(&[1])));
        w.run_for(2 * LINK)?;
        assert!(w.all_joined_and_quiet());
        for n in 1..=3 {
            assert!(w.exits(NodeId(n)).is_empty(), "node {n}: {:?}", w.exits(NodeId(n)));
        }
        Ok(())
    })());
}
