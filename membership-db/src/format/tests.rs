//! Round trips of every record, detection of every single-bit flip, and decoders fed arbitrary
//! bytes, both raw and re-sealed with a valid frame so that the field checks are reached.

use super::*;
use crate::error::Problem;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,63}"
}
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::char::range(' ', '~'), 0..=max).prop_map(|v| v.into_iter().collect())
}
fn node(max: u16) -> impl Strategy<Value = NodeId> {
    (1..=max).prop_map(NodeId)
}
fn node_set(max: u16) -> impl Strategy<Value = NodeSet> {
    proptest::collection::vec(node(max), 0..=8).prop_map(|v| v.into_iter().collect())
}
fn timing() -> impl Strategy<Value = Timing> {
    (10u32..=1000, 0u32..=5000, 0u32..=5000).prop_map(|(hb, extra_fence, extra_dead)| {
        let fence_ms = 3 * hb + extra_fence;
        Timing { heartbeat_ms: hb, fence_ms, dead_ms: fence_ms + hb + FENCE_SLACK_MS + 1 + extra_dead }
    })
}
fn superblock() -> impl Strategy<Value = Superblock> {
    (
        any::<u64>(),
        any::<[u8; 16]>(),
        name(),
        1..=NODES_MAX,
        prop_oneof![Just(512u32), Just(1024), Just(4096)],
        timing(),
        any::<u64>(),
        (0u64..1 << 40, any::<[u8; CLUSTER_KEY_BYTES]>(), 0u32..=LINK_TIMEOUT_MS_MAX),
    )
        .prop_map(
            |(generation, cluster_uuid, cluster_name, max_nodes, slot_bytes, timing, created_unix_ms, more)| {
                let (extra, cluster_key, link_seed) = more;
                let disk_bytes = Layout::new(max_nodes, slot_bytes).end() + extra;
                let least = 2 * timing.heartbeat_ms;
                let link_timeout_ms = least + link_seed % (LINK_TIMEOUT_MS_MAX - least + 1);
                Superblock {
                    generation,
                    cluster_uuid,
                    cluster_name,
                    max_nodes,
                    slot_bytes,
                    disk_bytes,
                    timing,
                    link_timeout_ms,
                    cluster_key,
                    created_unix_ms,
                }
            },
        )
}
/// Node addresses as `sdc node add` accepts them: none, a host name, IPv4 or [IPv6], with or
/// without a port.
fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}(:[1-9][0-9]{0,3})?",
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| format!("{}:{port}", std::net::Ipv4Addr::from(ip))),
        any::<[u16; 8]>().prop_map(|ip| format!("[{}]", std::net::Ipv6Addr::from(ip))),
    ]
}
fn node_entry() -> impl Strategy<Value = (NodeEntry, usize)> {
    (node(NODES_MAX), any::<(u64, u64)>(), any::<bool>(), any::<bool>(), name(), address(), any::<u64>()).prop_map(
        |(node, (seq, leave_requests), present, master_eligible, name, address, updated_unix_ms)| {
            let e = NodeEntry { node, seq, present, master_eligible, name, address, updated_unix_ms, leave_requests };
            (e, (seq % 2) as usize)
        },
    )
}
fn config_stamp() -> impl Strategy<Value = ConfigStamp> {
    (any::<[u8; 16]>(), any::<(u64, u64)>()).prop_map(|(cluster_uuid, (table_generation, written_unix_ms))| {
        ConfigStamp { cluster_uuid, table_generation, written_unix_ms }
    })
}
fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        node(NODES_MAX),
        prop_oneof![
            Just(HeartbeatState::Never),
            Just(HeartbeatState::Up),
            Just(HeartbeatState::Down),
            Just(HeartbeatState::Fenced)
        ],
        0..=heartbeat_flags::STATE_UNREADABLE,
        any::<(u64, u64, u64, u32)>(),
        (any::<u64>(), any::<u64>(), 1u32..=8),
        any::<(u64, u64, u64, u64)>(),
        (text(HOST_BYTES_MAX), proptest::option::of(any::<[u8; NodeSet::BYTES]>())),
    )
        .prop_map(
            |(
                node,
                state,
                flags,
                (incarnation, counter, claim_epoch, pid),
                (epoch, seq, units),
                more,
                (host, reach),
            )| {
                let (master_seed, request_seq, ack_seq, written_unix_ms) = more;
                let master_epoch = if claim_epoch == 0 { 0 } else { master_seed % (claim_epoch + 1) };
                let acted_epoch = master_epoch.max(request_seq % 7);
                let cluster_state = if seq == 0 {
                    StateRef::NONE
                } else {
                    StateRef { epoch, seq, bytes: units * CLUSTER_STATE_RECORD_BYTES as u32 }
                };
                Heartbeat {
                    node,
                    state,
                    flags,
                    incarnation,
                    counter,
                    master_epoch,
                    claim_epoch,
                    acted_epoch,
                    cluster_state,
                    request_seq,
                    ack_seq,
                    table_generation: written_unix_ms / 3,
                    written_unix_ms,
                    pid,
                    host: HostName::new(&host),
                    reaches: reach.map(|b| {
                        let mut set = NodeSet::from_bytes(&b);
                        set.remove(node);
                        set
                    }),
                }
            },
        )
}
fn claim() -> impl Strategy<Value = (Claim, usize)> {
    (
        node(NODES_MAX),
        any::<(u64, u64, u64)>(),
        0u64..1 << 60,
        0u64..1 << 60,
        proptest::option::of((node(NODES_MAX), any::<u64>())),
        any::<bool>(),
    )
        .prop_map(|(node, (seq, writer_incarnation, epoch), mbal, bal_seed, value, decided)| {
            let value = value.map(|(node, incarnation)| ClaimValue { node, incarnation });
            let bal = if value.is_some() { 1 + bal_seed % mbal.max(1) } else { 0 };
            let mbal = mbal.max(bal);
            let decided = decided && value.is_some();
            let floor = epoch / 3;
            (Claim { node, seq, writer_incarnation, epoch, mbal, bal, value, decided, floor }, (seq % 2) as usize)
        })
}
fn layer() -> impl Strategy<Value = LayerSpec> {
    (1u32..1000, "[a-z]{1,23}", 0..=BARRIERS_MAX, 0..=BARRIERS_MAX, 0..=BARRIERS_MAX).prop_map(
        |(order, name, join, leave, forced_leave)| LayerSpec {
            order,
            name,
            barriers: Barriers { join, leave, forced_leave },
        },
    )
}
fn layers() -> impl Strategy<Value = Vec<LayerSpec>> {
    proptest::collection::vec(layer(), 0..=LAYERS_MAX).prop_map(|mut v| {
        v.sort_by_key(|l| l.order);
        v.dedup_by_key(|l| l.order);
        v
    })
}
fn member() -> impl Strategy<Value = Member> {
    let refusal = proptest::option::of((any::<(u64, u32, u16, u8, u8)>(), 1u8..=3)).prop_map(|r| {
        r.map(|((incarnation, order, node, ours, theirs), reason)| JoinRefusal {
            incarnation,
            reason: match reason {
                1 => RefusalReason::BarrierMismatch,
                2 => RefusalReason::Nacked,
                _ => RefusalReason::InvalidLayers,
            },
            order,
            node,
            ours,
            theirs,
        })
    });
    (0u8..=4, any::<(u64, u64, u64, u64)>(), refusal).prop_map(
        |(state, (incarnation, stopped_incarnation, request_incarnation, request_seq), refusal)| Member {
            state: MemberState::from_u8(state).unwrap(),
            incarnation,
            stopped_incarnation,
            request_incarnation,
            request_seq,
            refusal,
        },
    )
}
fn cluster_state() -> impl Strategy<Value = ClusterState> {
    (1u16..=NODES_MAX, any::<(u64, u64, u64, u64)>(), 1u64..u64::MAX / 2, layers())
        .prop_flat_map(|(max_nodes, ids, seq, layers)| {
            let members = proptest::collection::vec(member(), max_nodes as usize);
            let transition =
                (any::<(u64, u32, u8, bool)>(), 1u8..=3, proptest::option::of(any::<u32>()), node_set(max_nodes));
            let transitions =
                proptest::collection::btree_map(node(max_nodes), transition, 0..=(max_nodes as usize).min(16));
            (Just((ids, seq, layers)), node(max_nodes), members, transitions)
        })
        .prop_map(
            |(((epoch, master_incarnation, written_unix_ms, next_seed), seq, layers), master, members, transitions)| {
                let epoch = epoch.max(1);
                let transitions: Vec<Transition> = transitions
                    .into_iter()
                    .enumerate()
                    .map(
                        |(
                            i,
                            (
                                subject,
                                ((subject_incarnation, order, barrier, leave_requested), kind, upper, participants),
                            ),
                        )| {
                            Transition {
                                id: i as u64 + 1,
                                subject,
                                subject_incarnation,
                                kind: TransitionKind::from_u8(kind).unwrap(),
                                position: Position { order, barrier },
                                upper,
                                leave_requested,
                                participants,
                            }
                        },
                    )
                    .collect();
                let next_transition_id = transitions.len() as u64 + 1 + next_seed % 1000;
                ClusterState {
                    epoch,
                    seq,
                    master,
                    master_incarnation,
                    written_unix_ms,
                    next_transition_id,
                    layers,
                    members,
                    transitions,
                }
            },
        )
}
fn node_request() -> impl Strategy<Value = (NodeRequest, usize)> {
    (node(NODES_MAX), any::<(u64, u64, u64)>(), 0u8..=2, layers()).prop_map(
        |(node, (seq, incarnation, leave_requests_seen), want, layers)| {
            let want = [Want::Nothing, Want::Join, Want::Leave][want as usize];
            (NodeRequest { node, seq, incarnation, want, layers, leave_requests_seen }, (seq % 2) as usize)
        },
    )
}
fn ack_record() -> impl Strategy<Value = (AckRecord, usize)> {
    let ack = any::<(u32, u8, bool)>();
    (node(NODES_MAX), any::<(u64, u64)>(), proptest::collection::vec(ack, 0..=NODES_MAX as usize)).prop_map(
        |(node, (seq, incarnation), acks)| {
            let acks = acks
                .into_iter()
                .enumerate()
                .map(|(i, (order, barrier, nack))| Ack {
                    transition: i as u64 * 7 + 1,
                    position: Position { order, barrier },
                    nack,
                })
                .collect();
            (AckRecord { node, seq, incarnation, acks }, (seq % 2) as usize)
        },
    )
}

/// Flipping any byte of an encoded record makes it fail to decode, and never panics.
fn assert_flip_detected<T: std::fmt::Debug>(
    buf: &[u8],
    pos: usize,
    bit: u8,
    decode: impl Fn(&[u8]) -> Result<T, CorruptRecord>,
) {
    let mut bad = buf.to_vec();
    bad[pos] ^= 1 << bit;
    let r = decode(&bad);
    assert!(r.is_err(), "flip at byte {pos} bit {bit} went unnoticed: {r:?}");
}

/// Gives arbitrary bytes a valid frame (magic, current version, checksum), so that a decoder's
/// field checks, not its frame check, meet them.
pub(crate) fn reseal(bytes: &mut [u8], magic: &[u8; 4]) {
    bytes[0..4].copy_from_slice(magic);
    bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// A re-sealed cluster state: a valid frame, a valid length, arbitrary fields.
pub(crate) fn resealed_cluster_state(mut bytes: Vec<u8>, units: usize) -> Vec<u8> {
    let len = units.clamp(1, CLUSTER_STATE_RECORD_BYTES_MAX / CLUSTER_STATE_RECORD_BYTES) * CLUSTER_STATE_RECORD_BYTES;
    bytes.resize(len, 0);
    bytes[6..10].copy_from_slice(&(len as u32).to_le_bytes());
    reseal(&mut bytes, b"SDCS");
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn superblock_round_trips(sb in superblock(), pos in 0usize..RECORD_BYTES, bit in 0u8..8) {
        let buf = sb.encode();
        prop_assert_eq!(Superblock::decode(&buf, 0).unwrap(), sb);
        assert_flip_detected(&buf, pos, bit, |b| Superblock::decode(b, 0));
    }

    #[test]
    fn node_entry_round_trips((e, copy) in node_entry(), pos in 0usize..RECORD_BYTES, bit in 0u8..8) {
        let buf = e.encode();
        prop_assert_eq!(NodeEntry::decode(&buf, 8192, e.node, copy).unwrap(), e.clone());
        assert_flip_detected(&buf, pos, bit, |b| NodeEntry::decode(b, 8192, e.node, copy));
    }

    #[test]
    fn config_stamp_round_trips(s in config_stamp(), pos in 0usize..RECORD_BYTES, bit in 0u8..8) {
        let buf = s.encode();
        prop_assert_eq!(ConfigStamp::decode(&buf, 0).unwrap(), s.clone());
        assert_flip_detected(&buf, pos, bit, |b| ConfigStamp::decode(b, 0));
    }

    #[test]
    fn heartbeat_round_trips(hb in heartbeat(), pos in 0usize..RECORD_BYTES, bit in 0u8..8) {
        let buf = hb.encode();
        prop_assert_eq!(Heartbeat::decode(&buf, 0, hb.node).unwrap(), hb.clone());
        assert_flip_detected(&buf, pos, bit, |b| Heartbeat::decode(b, 0, hb.node));
    }

    #[test]
    fn claim_round_trips((c, copy) in claim(), pos in 0usize..RECORD_BYTES, bit in 0u8..8) {
        let buf = c.encode();
        prop_assert_eq!(Claim::decode(&buf, 0, c.node, copy).unwrap(), c.clone());
        assert_flip_detected(&buf, pos, bit, |b| Claim::decode(b, 0, c.node, copy));
    }

    #[test]
    fn cluster_state_round_trips(s in cluster_state(), pos in 0usize..CLUSTER_STATE_RECORD_BYTES_MAX, bit in 0u8..8) {
        let buf = s.encode();
        prop_assert!(buf.len() <= CLUSTER_STATE_RECORD_BYTES_MAX);
        prop_assert_eq!(buf.len(), s.encoded_len());
        let max = s.max_nodes();
        prop_assert_eq!(ClusterState::decode(&buf, 0, s.copy(), max).unwrap(), Some(s.clone()));
        assert_flip_detected(&buf, pos % buf.len(), bit, |b| ClusterState::decode(b, 0, s.copy(), max).map(|_| ()));
    }

    #[test]
    fn node_request_round_trips((r, copy) in node_request(), pos in 0usize..NODE_RECORD_BYTES, bit in 0u8..8) {
        let buf = r.encode();
        prop_assert_eq!(NodeRequest::decode(&buf, 0, r.node, copy).unwrap(), r.clone());
        assert_flip_detected(&buf, pos, bit, |b| NodeRequest::decode(b, 0, r.node, copy));
    }

    #[test]
    fn ack_record_round_trips((a, copy) in ack_record(), pos in 0usize..NODE_RECORD_BYTES, bit in 0u8..8) {
        let buf = a.encode();
        prop_assert_eq!(AckRecord::decode(&buf, 0, a.node, copy).unwrap(), a.clone());
        assert_flip_detected(&buf, pos, bit, |b| AckRecord::decode(b, 0, a.node, copy));
    }

    /// Arbitrary bytes never panic a decoder.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), CLUSTER_STATE_RECORD_BYTES_MAX)) {
        let _ = Superblock::decode(&bytes, 0);
        let _ = NodeEntry::decode(&bytes, 0, NodeId(1), 0);
        let _ = ConfigStamp::decode(&bytes, 0);
        let _ = Heartbeat::decode(&bytes, 0, NodeId(1));
        let _ = Claim::decode(&bytes, 0, NodeId(1), 1);
        let _ = ClusterState::decode(&bytes, 0, 0, 8);
        let _ = NodeRequest::decode(&bytes, 0, NodeId(1), 0);
        let _ = AckRecord::decode(&bytes, 0, NodeId(1), 0);
    }

    /// Arbitrary fields behind a valid frame: every decoder checks its fields and never panics,
    /// and whatever it accepts encodes back to a record that decodes to the same value.
    #[test]
    fn resealed_random_records_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), CLUSTER_STATE_RECORD_BYTES_MAX),
        units in 1usize..=8,
        small in proptest::collection::vec(0u8..4, RECORD_BYTES),
    ) {
        // Mostly small bytes, so counts, flags and enums are often in range.
        let mut slot: Vec<u8> = small.clone();
        for (magic, which) in [(b"SDSB", 0), (b"SDNE", 1), (b"SDCF", 2), (b"SDHB", 3), (b"SDCL", 4)] {
            for source in [&bytes[..RECORD_BYTES], &slot[..]] {
                let mut b = source.to_vec();
                reseal(&mut b, magic);
                match which {
                    0 => { if let Ok(r) = Superblock::decode(&b, 0) { prop_assert_eq!(Superblock::decode(&r.encode(), 0).unwrap(), r) } }
                    1 => { if let Ok(r) = NodeEntry::decode(&b, 0, NodeId(1), 0) { prop_assert_eq!(NodeEntry::decode(&r.encode(), 0, NodeId(1), 0).unwrap(), r) } }
                    2 => { if let Ok(r) = ConfigStamp::decode(&b, 0) { prop_assert_eq!(ConfigStamp::decode(&r.encode(), 0).unwrap(), r) } }
                    3 => { if let Ok(r) = Heartbeat::decode(&b, 0, NodeId(1)) { prop_assert_eq!(Heartbeat::decode(&r.encode(), 0, NodeId(1)).unwrap(), r) } }
                    _ => { if let Ok(r) = Claim::decode(&b, 0, NodeId(1), 0) { prop_assert_eq!(Claim::decode(&r.encode(), 0, NodeId(1), 0).unwrap(), r) } }
                }
            }
        }
        slot.resize(NODE_RECORD_BYTES, 0);
        for source in [&bytes[..NODE_RECORD_BYTES], &slot[..]] {
            let mut b = source.to_vec();
            reseal(&mut b, b"SDRQ");
            if let Ok(r) = NodeRequest::decode(&b, 0, NodeId(1), 0) {
                prop_assert_eq!(NodeRequest::decode(&r.encode(), 0, NodeId(1), 0).unwrap(), r);
            }
            reseal(&mut b, b"SDAK");
            if let Ok(r) = AckRecord::decode(&b, 0, NodeId(1), 0) {
                prop_assert_eq!(AckRecord::decode(&r.encode(), 0, NodeId(1), 0).unwrap(), r);
            }
        }
        let b = resealed_cluster_state(bytes.clone(), units);
        for copy in 0..4 {
            if let Ok(Some(s)) = ClusterState::decode(&b, 0, copy, 8) {
                prop_assert_eq!(ClusterState::decode(&s.encode(), 0, copy, 8).unwrap(), Some(s));
            }
        }
    }
}

#[test]
fn record_in_the_wrong_slot_or_copy_is_corrupt() {
    let e = NodeEntry { present: true, name: "a".into(), ..NodeEntry::absent(NodeId(3), 4) };
    let buf = e.encode();
    assert!(matches!(NodeEntry::decode(&buf, 0, NodeId(2), 0).unwrap_err().problem, Problem::Invalid(_)));
    assert!(matches!(NodeEntry::decode(&buf, 0, NodeId(3), 1).unwrap_err().problem, Problem::Invalid(_)));
}

#[test]
fn newer_and_older_record_versions_are_named_as_such() {
    for (version, newer) in [(FORMAT_VERSION + 1, true), (FORMAT_VERSION - 1, false)] {
        let mut buf = Heartbeat::never(NodeId(1)).encode();
        buf[4..6].copy_from_slice(&version.to_le_bytes());
        let n = buf.len();
        let crc = crc32fast::hash(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let e = Heartbeat::decode(&buf, 4096, NodeId(1)).unwrap_err();
        let want = if newer {
            Problem::NewerVersion { found: version, supported: FORMAT_VERSION }
        } else {
            Problem::OlderVersion { found: version, supported: FORMAT_VERSION }
        };
        assert_eq!(e.problem, want);
        assert_eq!(e.offset, 4096);
    }
}

#[test]
fn newest_copy_wins_and_a_fallback_is_noted() {
    let bad = |off| Err(CorruptRecord { kind: crate::error::RecordKind::Claim, offset: off, problem: Problem::Blank });
    let c = |seq| Ok(Claim::initial(NodeId(1), seq));
    assert_eq!(newest(&[c(4), c(5)], |c| c.seq).unwrap().seq, 5);
    assert_eq!(newest(&[c(6), c(5)], |c| c.seq).unwrap().seq, 6);
    let n = newest_noting(&[bad(0), c(5)], |c| c.seq).unwrap();
    assert_eq!((n.record.seq, n.fallback.map(|f| f.offset)), (5, Some(0)));
    assert_eq!(newest_noting(&[c(4), c(5)], |c| c.seq).unwrap().fallback, None);
    assert_eq!(newest::<Claim>(&[bad(0), bad(512)], |c| c.seq).unwrap_err().offset, 0);
}

#[test]
fn timing_rule_is_enforced() {
    assert!(Timing::default().validate().is_ok());
    let t = Timing { heartbeat_ms: 100, dead_ms: 800, fence_ms: 600 };
    assert!(t.validate().unwrap_err().contains("dead-ms"));
    assert!(Timing { heartbeat_ms: 100, dead_ms: 5000, fence_ms: 200 }.validate().is_err());
    assert!(Timing { heartbeat_ms: 5, dead_ms: 5000, fence_ms: 200 }.validate().is_err());
}

#[test]
fn layout_regions_are_aligned_and_disjoint() {
    for max_nodes in [1, 3, 32, 128, NODES_MAX] {
        for slot in [512, 4096] {
            let l = Layout::new(max_nodes, slot);
            let mut end = 0;
            for r in l.regions {
                assert_eq!(r.offset % BLOCK_BYTES, 0);
                assert_eq!(r.offset, end);
                end = r.end();
            }
            let last = NodeId(max_nodes);
            let within = |kind, off: u64, len: u64| {
                let r = l.region(kind);
                assert!(off >= r.offset && off + len <= r.end(), "{kind:?} record at {off} outside its region");
            };
            within(RegionKind::Claim, l.claim_offset(last, 1), slot as u64);
            within(RegionKind::Heartbeat, l.config_stamp_offset(), slot as u64);
            within(RegionKind::Heartbeat, l.heartbeat_offset(last), slot as u64);
            within(RegionKind::NodeTable, l.node_entry_offset(last, 1), slot as u64);
            within(RegionKind::NodeRecords, l.ack_offset(last, 1), NODE_RECORD_BYTES as u64);
            assert!(l.node_request_offset(last, 1) < l.ack_offset(NodeId(1), 0));
        }
    }
}

#[test]
fn node_sets_hold_every_node_id() {
    let mut s = NodeSet::EMPTY;
    for id in [1u16, 64, 65, 128, 129, 255, NODES_MAX] {
        s.insert(NodeId(id));
    }
    assert_eq!(s.iter().map(|n| n.0).collect::<Vec<_>>(), vec![1, 64, 65, 128, 129, 255, 256]);
    assert_eq!(s.len(), 7);
    assert_eq!(s.highest(), Some(NodeId(256)));
    assert_eq!(NodeSet::from_bytes(&s.to_bytes()), s);
    s.remove(NodeId(256));
    assert_eq!(s.highest(), Some(NodeId(255)));
    assert!(!s.contains(NodeId(0)) && !s.contains(NodeId(300)));
    assert_eq!(NodeSet::all(NODES_MAX).len(), NODES_MAX as usize);
    assert_eq!(NodeSet::EMPTY.highest(), None);
    assert_eq!(s.ranges_text(), "1, 64-65, 128-129, 255");
    assert_eq!(NodeSet::all(NODES_MAX).ranges_text(), "1-256");
    assert_eq!(NodeSet::EMPTY.ranges_text(), "");
}

#[test]
fn cluster_state_grows_with_the_nodes_that_ran_not_with_max_nodes() {
    let mut s = ClusterState { seq: 1, ..ClusterState::new(NODES_MAX, 1, NodeId(1), 1) };
    assert_eq!(s.encoded_len(), CLUSTER_STATE_RECORD_BYTES);
    for m in s.members.iter_mut() {
        *m = Member { state: MemberState::Joined, incarnation: 1, ..Member::INACTIVE };
    }
    s.transitions = NodeId::all(NODES_MAX)
        .map(|n| Transition {
            id: n.0 as u64,
            subject: n,
            subject_incarnation: 1,
            kind: TransitionKind::Join,
            position: Position { order: 10, barrier: 0 },
            upper: None,
            leave_requested: false,
            participants: NodeSet::all(NODES_MAX),
        })
        .collect();
    s.next_transition_id = NODES_MAX as u64 + 1;
    let buf = s.encode();
    assert!(buf.len() <= CLUSTER_STATE_RECORD_BYTES_MAX);
    assert_eq!(ClusterState::decode(&buf, 0, s.copy(), NODES_MAX).unwrap(), Some(s));
}

#[test]
fn sizes_parse_and_print() {
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("64M").unwrap(), 64 << 20);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("99999999999999TiB").is_err());
    assert_eq!(human_bytes(64 << 20), "64MiB");
}

#[test]
fn addresses_are_host_and_optional_port() {
    let ok = |s: &str| parse_address(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok(""), None);
    assert_eq!(ok("alpha"), Some(("alpha".into(), INTERCONNECT_PORT_DEFAULT)));
    assert_eq!(ok("node-1.example.com:9000"), Some(("node-1.example.com".into(), 9000)));
    assert_eq!(ok("10.0.0.1"), Some(("10.0.0.1".into(), 7711)));
    assert_eq!(ok("10.0.0.1:1"), Some(("10.0.0.1".into(), 1)));
    assert_eq!(ok("[fe80::1]"), Some(("[fe80::1]".into(), 7711)));
    assert_eq!(ok("[::1]:65535"), Some(("[::1]".into(), 65535)));
    for bad in [
        "10.0.0.256",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:+80",
        "host:",
        "fe80::1",
        "[fe80::1",
        "[not-v6]:80",
        "[::1]80",
        "bad host",
        "-lead",
        "a..b",
        ":80",
        "host\n",
    ] {
        let e = validate_address(bad).expect_err(bad);
        assert!(!e.contains('\n') && e.contains("host[:port]"), "{bad}: {e}");
    }
    assert!(validate_address(&"a".repeat(ADDRESS_BYTES_MAX + 1)).is_err());
}

#[test]
fn link_timeout_is_at_least_two_heartbeats_and_bounded() {
    let t = Timing::default();
    assert!(validate_link_timeout(LINK_TIMEOUT_MS_DEFAULT, &t).is_ok());
    assert!(validate_link_timeout(2 * t.heartbeat_ms, &t).is_ok());
    assert!(validate_link_timeout(2 * t.heartbeat_ms - 1, &t).unwrap_err().contains("two heartbeat"));
    assert!(validate_link_timeout(LINK_TIMEOUT_MS_MAX + 1, &t).is_err());
}

#[test]
fn the_key_fingerprint_is_short_and_differs_with_the_key() {
    let a = key_fingerprint(&[1; CLUSTER_KEY_BYTES]);
    assert_eq!(a.len(), 8);
    assert_ne!(a, key_fingerprint(&[2; CLUSTER_KEY_BYTES]));
}

#[test]
fn a_heartbeat_without_an_interconnect_lists_no_peer() {
    let hb = Heartbeat { reaches: Some(NodeSet::of(&[NodeId(2)])), ..Heartbeat::never(NodeId(1)) };
    let mut bytes = hb.encode();
    assert_eq!(Heartbeat::decode(&bytes, 0, NodeId(1)).unwrap().reaches, hb.reaches);
    // Clear the flag, keep the set, reseal: a set without the flag is corrupt.
    bytes[9] &= !heartbeat_flags::INTERCONNECT; // magic 4, version 2, node 2, state 1
    let n = bytes.len();
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(Heartbeat::decode(&bytes, 0, NodeId(1)).is_err());
}
