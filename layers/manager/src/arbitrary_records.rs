//! The sequencer and a participant fed arbitrary records that pass the decoders: every field
//! drawn at random (then encoded, re-sealed after random byte changes, and decoded, as a damaged
//! but checksum-valid record would be), never a panic, and whatever the sequencer returns can be
//! written.

use crate::participant::Participant;
use crate::sequencer::{advance, Inputs, NodeLife};
use membership_db::format::*;
use proptest::prelude::*;

const N: u16 = 6;

fn position() -> impl Strategy<Value = Position> {
    (prop_oneof![Just(10u32), Just(20), Just(30), Just(40), 0u32..50], 0u8..4)
        .prop_map(|(order, barrier)| Position { order, barrier })
}

fn layers() -> impl Strategy<Value = Vec<LayerSpec>> {
    proptest::collection::btree_map(1u32..50, (0u8..3, 0u8..3, 0u8..3), 0..5).prop_map(|m| {
        m.into_iter()
            .map(|(order, (join, leave, forced_leave))| LayerSpec {
                order,
                name: format!("l{order}"),
                barriers: Barriers { join, leave, forced_leave },
            })
            .collect()
    })
}

fn member() -> impl Strategy<Value = Member> {
    (0u8..5, 0u64..4, 0u64..4, proptest::option::of((0u64..4, 1u8..4, 0u32..50))).prop_map(
        |(state, incarnation, stopped, refusal)| Member {
            state: [
                MemberState::Inactive,
                MemberState::Joining,
                MemberState::Joined,
                MemberState::Leaving,
                MemberState::ForcedLeaving,
            ][state as usize],
            incarnation,
            stopped_incarnation: stopped,
            request_incarnation: incarnation,
            request_seq: stopped,
            refusal: refusal.map(|(incarnation, reason, order)| JoinRefusal {
                incarnation,
                reason: [RefusalReason::BarrierMismatch, RefusalReason::Nacked, RefusalReason::InvalidLayers]
                    [reason as usize - 1],
                order,
                node: 1,
                ours: 1,
                theirs: 2,
            }),
        },
    )
}

fn cluster_state() -> impl Strategy<Value = ClusterState> {
    let transition = (
        1u16..=N,
        0u64..4,
        1u8..4,
        position(),
        proptest::option::of(0u32..50),
        any::<bool>(),
        proptest::collection::vec(1u16..=N, 0..6),
    );
    (
        layers(),
        proptest::collection::vec(member(), N as usize),
        proptest::collection::vec(transition, 0..5),
        1u64..5,
        1u64..9,
    )
        .prop_map(|(layers, members, transitions, epoch, seq)| {
            let mut seen = Vec::new();
            let transitions: Vec<Transition> = transitions
                .into_iter()
                .filter(|t| {
                    let fresh = !seen.contains(&t.0);
                    seen.push(t.0);
                    fresh
                })
                .enumerate()
                .map(|(i, (subject, inc, kind, position, upper, leave_requested, parts))| Transition {
                    id: i as u64 + 1,
                    subject: NodeId(subject),
                    subject_incarnation: inc,
                    kind: [TransitionKind::Join, TransitionKind::Leave, TransitionKind::ForcedLeave][kind as usize - 1],
                    position,
                    upper,
                    leave_requested,
                    participants: parts.into_iter().map(NodeId).collect(),
                })
                .collect();
            ClusterState {
                epoch,
                seq,
                master: NodeId(1),
                master_incarnation: 1,
                written_unix_ms: 0,
                next_transition_id: transitions.len() as u64 + 1,
                layers,
                members,
                transitions,
            }
        })
}

fn request(node: NodeId) -> impl Strategy<Value = Option<NodeRequest>> {
    proptest::option::of((0u64..4, 0u8..3, layers(), 0u64..3)).prop_map(move |r| {
        r.map(|(incarnation, want, layers, leave_requests_seen)| NodeRequest {
            node,
            seq: 2,
            incarnation,
            want: [Want::Nothing, Want::Join, Want::Leave][want as usize],
            layers,
            leave_requests_seen,
        })
    })
}

fn acks(node: NodeId) -> impl Strategy<Value = Option<AckRecord>> {
    proptest::option::of((0u64..4, proptest::collection::btree_map(1u64..6, (position(), any::<bool>()), 0..5)))
        .prop_map(move |a| {
            a.map(|(incarnation, acks)| AckRecord {
                node,
                seq: 2,
                incarnation,
                acks: acks
                    .into_iter()
                    .map(|(transition, (position, nack))| Ack { transition, position, nack })
                    .collect(),
            })
        })
}

/// Re-seals `state`'s encoding after changing some bytes (keeping the frame valid), and decodes
/// it: a checksum-valid record with arbitrary contents, or the state itself when the changes
/// made it undecodable.
fn damaged(state: &ClusterState, changes: &[(usize, u8)]) -> ClusterState {
    let mut bytes = state.encode();
    let n = bytes.len();
    for (at, v) in changes {
        let at = 10 + at % (n - 14); // past the magic, version and length; before the crc
        bytes[at] = *v;
    }
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    match ClusterState::decode(&bytes, 0, state.copy(), N) {
        Ok(Some(s)) => s,
        _ => state.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_decoded_records_never_panic_the_sequencer_or_a_participant(
        state in cluster_state(),
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        requests in (1..=N).map(|n| request(NodeId(n))).collect::<Vec<_>>(),
        acks in (1..=N).map(|n| acks(NodeId(n))).collect::<Vec<_>>(),
        life in proptest::collection::vec((proptest::option::of(0u64..4), proptest::option::of(0u64..4)), N as usize),
        me in 1..=N,
        incarnation in 0u64..4,
    ) {
        // Only what the decoder accepts reaches the cores.
        let Ok(Some(state)) = ClusterState::decode(&state.encode(), 0, state.copy(), N) else { return Ok(()) };
        let state = damaged(&state, &changes);
        let life: Vec<NodeLife> = life.into_iter().map(|(running, stopped)| NodeLife { running, stopped }).collect();
        let inputs = Inputs { requests: &requests, acks: &acks, life: &life, unreachable: &[] };
        let (next, _events) = advance(&state, &inputs);
        // What the master would write next is a valid record.
        let written = ClusterState { seq: state.seq + 1, ..next };
        prop_assert!(written.encode().len() <= CLUSTER_STATE_RECORD_BYTES_MAX);
        let mut p = Participant::new(NodeId(me), incarnation, state.layers.clone(), 1, 1, 0);
        let _ = p.on_state(&state);
        let _ = p.self_state(&state);
        let _ = p.on_state(&written);
        let _ = p.self_state(&written);
    }
}
