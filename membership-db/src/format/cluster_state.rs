//! The cluster state: the agreed layer table, every node's membership state and incarnation,
//! and the transitions in flight. Written only by the master of its epoch, to the two copies of
//! its epoch's group ([`cluster_state_copies`]); read by the others when the master's heartbeat
//! advertises a new one ([`StateRef`]).

use super::*;
use crate::codec::{wire_enum, Decoder, Encoder};
use crate::error::{CorruptRecord, Problem, RecordKind};

const MAGIC_CLUSTER_STATE: u32 = u32::from_le_bytes(*b"SDCS");

/// Most layers (registered subsystem orders) in a cluster.
pub const LAYERS_MAX: usize = 16;
/// Most barriers a layer may ask for, per transition kind.
pub const BARRIERS_MAX: u8 = 8;
/// Longest layer name, in bytes.
pub const LAYER_NAME_BYTES_MAX: usize = 23;
/// The unit of a cluster state record's length.
pub const CLUSTER_STATE_RECORD_BYTES: usize = 4096;
/// Largest cluster state record; the rest of each 64 KiB copy is reserved.
pub const CLUSTER_STATE_RECORD_BYTES_MAX: usize = 32 * 1024;

const CLUSTER_STATE_HEADER_BYTES: usize = 4 + 2 + 4 + 8 * 2 + 2 + 8 * 3;
pub(super) const LAYER_BYTES: usize = 4 + 1 + LAYER_NAME_BYTES_MAX + 3;
const MEMBER_BYTES: usize = 1 + 8 + 8 + 8 + 8 + 1 + 8 + 1 + 4 + 2 + 1 + 1;
const TRANSITION_BYTES: usize = 8 + 2 + 8 + 1 + 4 + 1 + 1 + 4 + 1 + NodeSet::BYTES;

const _: () = assert!(CLUSTER_STATE_RECORD_BYTES_MAX as u64 <= CLUSTER_STATE_COPY_BYTES);
const _: () = assert!(CLUSTER_STATE_RECORD_BYTES_MAX.is_multiple_of(CLUSTER_STATE_RECORD_BYTES));
// The largest state (every layer, every node a member, one transition per node) fits its bound.
const _: () = assert!(
    CLUSTER_STATE_HEADER_BYTES
        + 1
        + LAYERS_MAX * LAYER_BYTES
        + 2
        + NODES_MAX as usize * MEMBER_BYTES
        + 2
        + NODES_MAX as usize * TRANSITION_BYTES
        + 4
        <= CLUSTER_STATE_RECORD_BYTES_MAX
);

/// Barriers a layer asks for in each kind of transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Barriers {
    pub join: u8,
    pub leave: u8,
    pub forced_leave: u8,
}

impl Barriers {
    pub fn of(&self, kind: TransitionKind) -> u8 {
        match kind {
            TransitionKind::Join => self.join,
            TransitionKind::Leave => self.leave,
            TransitionKind::ForcedLeave => self.forced_leave,
        }
    }
    pub fn one_each() -> Barriers {
        Barriers { join: 1, leave: 1, forced_leave: 1 }
    }
}

/// A registered subsystem level: its global order (lower first on join and forced leave), its
/// name, and its barriers per transition kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct LayerSpec {
    pub order: u32,
    pub name: String,
    pub barriers: Barriers,
}

/// Checks a set of registrations: orders unique and above 0 (the membership manager's own),
/// names valid, barrier counts within bounds, at most `LAYERS_MAX`.
pub fn validate_layers(layers: &[LayerSpec]) -> Result<(), String> {
    if layers.len() > LAYERS_MAX {
        return Err(format!("{} layers registered; at most {LAYERS_MAX}", layers.len()));
    }
    for (i, l) in layers.iter().enumerate() {
        if l.order == 0 {
            return Err(format!("layer {}: order 0 belongs to the membership manager", l.name));
        }
        if l.name.is_empty() || l.name.len() > LAYER_NAME_BYTES_MAX || l.name.chars().any(|c| c.is_control()) {
            return Err(format!("layer name {:?} must be 1 to {LAYER_NAME_BYTES_MAX} printable bytes", l.name));
        }
        for b in [l.barriers.join, l.barriers.leave, l.barriers.forced_leave] {
            if b > BARRIERS_MAX {
                return Err(format!("layer {}: {b} barriers; at most {BARRIERS_MAX}", l.name));
            }
        }
        if layers[..i].iter().any(|o| o.order == l.order) {
            return Err(format!("order {} is registered twice", l.order));
        }
    }
    Ok(())
}

pub(super) fn encode_layer(e: &mut Encoder<'_>, l: &LayerSpec) {
    e.u32(l.order);
    e.text(&l.name, LAYER_NAME_BYTES_MAX);
    e.u8(l.barriers.join);
    e.u8(l.barriers.leave);
    e.u8(l.barriers.forced_leave);
}

pub(super) fn decode_layer(d: &mut Decoder<'_>) -> Result<LayerSpec, CorruptRecord> {
    Ok(LayerSpec {
        order: d.u32()?,
        name: d.text(LAYER_NAME_BYTES_MAX, "layer name")?,
        barriers: Barriers { join: d.u8()?, leave: d.u8()?, forced_leave: d.u8()? },
    })
}

wire_enum! {
    /// The kinds of transition (seed 004).
    pub enum TransitionKind {
        Join = 1 => "join",
        Leave = 2 => "leave",
        ForcedLeave = 3 => "forced-leave",
    }
}

wire_enum! {
    /// A node's membership state (seed 004).
    pub enum MemberState {
        Inactive = 0 => "inactive",
        Joining = 1 => "joining",
        Joined = 2 => "joined",
        Leaving = 3 => "leaving",
        ForcedLeaving = 4 => "forced-leaving",
    }
}

impl MemberState {
    /// In the cluster: its subsystems take part in transitions.
    pub fn is_member(self) -> bool {
        matches!(self, MemberState::Joining | MemberState::Joined | MemberState::Leaving)
    }
}

wire_enum! {
    /// Why a join was refused or aborted.
    pub enum RefusalReason {
        /// The joining node registers a layer with other barrier counts than the cluster.
        BarrierMismatch = 1 => "barrier-mismatch",
        /// A subsystem answered the join notification with a nack.
        Nacked = 2 => "nacked",
        /// The joining node's registrations are invalid (too many, duplicate orders).
        InvalidLayers = 3 => "invalid-layers",
        /// Forced out by the master because it could not reach `node` over the interconnect
        /// for `link_timeout_ms` (the disk arbitrates a broken interconnect).
        Unreachable = 4 => "unreachable",
    }
}

/// A join refused or aborted, kept until that node's next incarnation asks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JoinRefusal {
    pub incarnation: u64,
    pub reason: RefusalReason,
    /// The layer concerned.
    pub order: u32,
    /// The node whose subsystem nacked (for `Nacked`), or a peer it cannot reach (for
    /// `Unreachable`).
    pub node: u16,
    /// Barriers the joining node registered, and the cluster's (for `BarrierMismatch`).
    pub ours: u8,
    pub theirs: u8,
}

/// One node's place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub state: MemberState,
    /// The incarnation this state is about.
    pub incarnation: u64,
    /// The newest incarnation of this node the master found stopped (its heartbeat still for
    /// `dead_ms`, or marked down or fenced): that daemon can never write again, so a restarted
    /// daemon that finds it here need not watch its stale slot for `dead_ms`.
    pub stopped_incarnation: u64,
    /// The newest request of this node the master has read: the incarnation of the daemon that
    /// wrote it and the record's sequence number. A node that withdraws its join before it
    /// learnt of one stops only once its withdrawal is read, so that no join the master began
    /// meanwhile is left to be forced out.
    pub request_incarnation: u64,
    pub request_seq: u64,
    pub refusal: Option<JoinRefusal>,
}

impl Member {
    pub const INACTIVE: Member = Member {
        state: MemberState::Inactive,
        incarnation: 0,
        stopped_incarnation: 0,
        request_incarnation: 0,
        request_seq: 0,
        refusal: None,
    };

    /// Whether the master has read this node's request `seq` (or a newer one) of `incarnation`.
    pub fn request_read(&self, incarnation: u64, seq: u64) -> bool {
        self.request_incarnation == incarnation && self.request_seq >= seq
    }
}

/// Where a transition is: a layer (by order) and a barrier within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Position {
    pub order: u32,
    pub barrier: u8,
}

/// A transition in flight, sequenced by the master.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    /// Unique in the cluster's life; never reused.
    pub id: u64,
    pub subject: NodeId,
    pub subject_incarnation: u64,
    pub kind: TransitionKind,
    /// The position every participant is being notified of.
    pub position: Position,
    /// Only layers at or below this order take part (a forced leave runs only up to the
    /// highest layer the aborted graceful transition reached).
    pub upper: Option<u32>,
    /// A graceful leave asked for while joining: turned into a leave at the next layer boundary.
    pub leave_requested: bool,
    /// Nodes that must acknowledge each position.
    pub participants: NodeSet,
}

/// The cluster-wide state, written only by the master of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterState {
    pub epoch: u64,
    pub seq: u64,
    pub master: NodeId,
    pub master_incarnation: u64,
    pub written_unix_ms: u64,
    pub next_transition_id: u64,
    /// The agreed layer table, by order.
    pub layers: Vec<LayerSpec>,
    /// One entry per node slot (`max_nodes` of them).
    pub members: Vec<Member>,
    pub transitions: Vec<Transition>,
}

/// Whether `len` can be the length of a cluster state record.
pub fn valid_cluster_state_len(len: usize) -> bool {
    (CLUSTER_STATE_RECORD_BYTES..=CLUSTER_STATE_RECORD_BYTES_MAX).contains(&len)
        && len.is_multiple_of(CLUSTER_STATE_RECORD_BYTES)
}

impl ClusterState {
    /// A new cluster's state: every node inactive, no layers, nothing in flight.
    pub fn new(max_nodes: u16, epoch: u64, master: NodeId, master_incarnation: u64) -> ClusterState {
        ClusterState {
            epoch,
            seq: 0,
            master,
            master_incarnation,
            written_unix_ms: 0,
            next_transition_id: 1,
            layers: Vec::new(),
            members: vec![Member::INACTIVE; max_nodes as usize],
            transitions: Vec::new(),
        }
    }

    /// The copy this record belongs in.
    pub fn copy(&self) -> usize {
        cluster_state_copy(self.epoch, self.seq)
    }

    pub fn member(&self, node: NodeId) -> Member {
        self.members.get(node.index()).copied().unwrap_or(Member::INACTIVE)
    }

    pub fn max_nodes(&self) -> u16 {
        self.members.len() as u16
    }

    pub fn transition_of(&self, node: NodeId) -> Option<&Transition> {
        self.transitions.iter().find(|t| t.subject == node)
    }

    /// Members are stored up to the last one that is not [`Member::INACTIVE`], so the record
    /// grows with the nodes that ever ran, not with `max_nodes`.
    fn stored_members(&self) -> usize {
        self.members.iter().rposition(|m| *m != Member::INACTIVE).map_or(0, |i| i + 1)
    }

    /// The record's length on the disk: a multiple of 4096.
    pub fn encoded_len(&self) -> usize {
        let body = CLUSTER_STATE_HEADER_BYTES
            + 1
            + self.layers.len() * LAYER_BYTES
            + 2
            + self.stored_members() * MEMBER_BYTES
            + 2
            + self.transitions.len() * TRANSITION_BYTES
            + 4;
        round_up(body as u64, CLUSTER_STATE_RECORD_BYTES as u64) as usize
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = self.encoded_len();
        assert!(len <= CLUSTER_STATE_RECORD_BYTES_MAX, "cluster state of {len} bytes exceeds its bound");
        assert!(self.layers.len() <= LAYERS_MAX && self.members.len() <= NODES_MAX as usize);
        assert!(self.transitions.len() <= self.members.len(), "one transition per node at most");
        let mut buf = vec![0u8; len];
        let mut e = Encoder::record(&mut buf, MAGIC_CLUSTER_STATE, FORMAT_VERSION);
        e.u32(len as u32);
        e.u64(self.seq);
        e.u64(self.epoch);
        e.u16(self.master.0);
        e.u64(self.master_incarnation);
        e.u64(self.written_unix_ms);
        e.u64(self.next_transition_id);
        e.u8(self.layers.len() as u8);
        for l in &self.layers {
            encode_layer(&mut e, l);
        }
        let stored = self.stored_members();
        e.u16(stored as u16);
        for m in &self.members[..stored] {
            e.u8(m.state as u8);
            e.u64(m.incarnation);
            e.u64(m.stopped_incarnation);
            e.u64(m.request_incarnation);
            e.u64(m.request_seq);
            match &m.refusal {
                None => e.bytes(&[0u8; 1 + 8 + 1 + 4 + 2 + 1 + 1]),
                Some(r) => {
                    e.u8(1);
                    e.u64(r.incarnation);
                    e.u8(r.reason as u8);
                    e.u32(r.order);
                    e.u16(r.node);
                    e.u8(r.ours);
                    e.u8(r.theirs);
                }
            }
        }
        e.u16(self.transitions.len() as u16);
        for t in &self.transitions {
            e.u64(t.id);
            e.u16(t.subject.0);
            e.u64(t.subject_incarnation);
            e.u8(t.kind as u8);
            e.u32(t.position.order);
            e.u8(t.position.barrier);
            e.u8(t.upper.is_some() as u8);
            e.u32(t.upper.unwrap_or(0));
            e.u8(t.leave_requested as u8);
            e.bytes(&t.participants.to_bytes());
        }
        e.seal();
        buf
    }

    /// Decodes copy `copy` of a cluster of `max_nodes` from a buffer holding at least the
    /// record's length (`CLUSTER_STATE_RECORD_BYTES_MAX` when the length is not known);
    /// `Ok(None)` for a copy that was never written (blank).
    pub fn decode(buf: &[u8], offset: u64, copy: usize, max_nodes: u16) -> Result<Option<ClusterState>, CorruptRecord> {
        let corrupt = |problem| CorruptRecord { kind: RecordKind::ClusterState, offset, problem };
        if buf.len() < CLUSTER_STATE_RECORD_BYTES {
            return Err(corrupt(Problem::Truncated));
        }
        if buf[..CLUSTER_STATE_RECORD_BYTES].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[6..10].try_into().expect("4 bytes")) as usize;
        let len_ok = valid_cluster_state_len(len) && len <= buf.len();
        // A wrong length is reported after the magic and version checks, which name it better.
        let frame = if len_ok { &buf[..len] } else { &buf[..CLUSTER_STATE_RECORD_BYTES] };
        let mut d = Decoder::record(frame, RecordKind::ClusterState, offset, MAGIC_CLUSTER_STATE, FORMAT_VERSION)?;
        if !len_ok {
            return Err(d.invalid(format!("record length {len}")));
        }
        d.u32()?;
        let seq = d.u64()?;
        let epoch = d.u64()?;
        let master = d.u16()?;
        if master == 0 || master > max_nodes {
            return Err(d.invalid(format!("master node {master}")));
        }
        if seq == 0 || epoch == 0 {
            return Err(d.invalid(format!("epoch {epoch} sequence {seq}")));
        }
        let master_incarnation = d.u64()?;
        let written_unix_ms = d.u64()?;
        let next_transition_id = d.u64()?;
        let layer_count = d.u8()? as usize;
        if layer_count > LAYERS_MAX {
            return Err(d.invalid(format!("{layer_count} layers")));
        }
        let layers = (0..layer_count).map(|_| decode_layer(&mut d)).collect::<Result<Vec<_>, _>>()?;
        validate_layers(&layers).map_err(|e| d.invalid(e))?;
        if layers.windows(2).any(|w| w[0].order >= w[1].order) {
            return Err(d.invalid("layer table not sorted by order"));
        }
        let member_count = d.u16()? as usize;
        if member_count > max_nodes as usize {
            return Err(d.invalid(format!("{member_count} members in a cluster of {max_nodes}")));
        }
        let mut members = vec![Member::INACTIVE; max_nodes as usize];
        for m in members.iter_mut().take(member_count) {
            let raw = d.u8()?;
            let state = MemberState::from_u8(raw).ok_or_else(|| d.invalid(format!("member state {raw}")))?;
            let incarnation = d.u64()?;
            let stopped_incarnation = d.u64()?;
            let (request_incarnation, request_seq) = (d.u64()?, d.u64()?);
            let has_refusal = decode_bool(d.u8()?, "refusal", &d)?;
            let (r_inc, r_reason, order, node, ours, theirs) =
                (d.u64()?, d.u8()?, d.u32()?, d.u16()?, d.u8()?, d.u8()?);
            let refusal = if has_refusal {
                let reason =
                    RefusalReason::from_u8(r_reason).ok_or_else(|| d.invalid(format!("refusal reason {r_reason}")))?;
                Some(JoinRefusal { incarnation: r_inc, reason, order, node, ours, theirs })
            } else {
                None
            };
            *m = Member { state, incarnation, stopped_incarnation, request_incarnation, request_seq, refusal };
        }
        let transition_count = d.u16()? as usize;
        if transition_count > max_nodes as usize {
            return Err(d.invalid(format!("{transition_count} transitions")));
        }
        let all = NodeSet::all(max_nodes);
        let mut transitions: Vec<Transition> = Vec::with_capacity(transition_count);
        for _ in 0..transition_count {
            let id = d.u64()?;
            let subject = d.u16()?;
            if subject == 0 || subject > max_nodes {
                return Err(d.invalid(format!("transition subject {subject}")));
            }
            let subject_incarnation = d.u64()?;
            let raw = d.u8()?;
            let kind = TransitionKind::from_u8(raw).ok_or_else(|| d.invalid(format!("transition kind {raw}")))?;
            let position = Position { order: d.u32()?, barrier: d.u8()? };
            let has_upper = decode_bool(d.u8()?, "upper", &d)?;
            let upper = d.u32()?;
            let leave_requested = decode_bool(d.u8()?, "leave requested", &d)?;
            let participants = NodeSet::from_bytes(&d.array()?);
            if participants.difference(&all) != NodeSet::EMPTY {
                return Err(d.invalid(format!("participants {participants:?} outside nodes 1 to {max_nodes}")));
            }
            if transitions.iter().any(|t| t.id == id || t.subject.0 == subject) {
                return Err(
                    d.invalid(format!("transition {id} of node {subject} is not the only one of its id or node"))
                );
            }
            if id >= next_transition_id {
                return Err(d.invalid(format!("transition id {id} not below the next id {next_transition_id}")));
            }
            transitions.push(Transition {
                id,
                subject: NodeId(subject),
                subject_incarnation,
                kind,
                position,
                upper: has_upper.then_some(upper),
                leave_requested,
                participants,
            });
        }
        let state = ClusterState {
            epoch,
            seq,
            master: NodeId(master),
            master_incarnation,
            written_unix_ms,
            next_transition_id,
            layers,
            members,
            transitions,
        };
        if !cluster_state_copies(epoch).contains(&copy) {
            return Err(d.invalid(format!("epoch {epoch} stored in copy {copy}")));
        }
        Ok(Some(state))
    }
}

/// Copy `(epoch % 4) * 2 + seq % 2` of the cluster state: the one a state is written to first
/// and read from (see [`cluster_state_copies`]).
pub fn cluster_state_copy(epoch: u64, seq: u64) -> usize {
    cluster_state_copies(epoch)[(seq % 2) as usize]
}

/// The two copies of an epoch's group (`epoch % 4`). A state is written to both, its own copy
/// ([`cluster_state_copy`]) first: the other then still holds the previous state should the
/// first write tear, and one copy damaged at rest never loses the newest state. A deposed
/// master's write that lands late (the I/O of a paused VM lands when it resumes) falls on its
/// own epoch's group, which the next three epochs do not use.
pub fn cluster_state_copies(epoch: u64) -> [usize; 2] {
    let base = ((epoch % CLUSTER_STATE_GROUPS) * 2) as usize;
    [base, base + 1]
}
