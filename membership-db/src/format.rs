//! The on-disk format, version 1, in one place.
//!
//! # Layout
//!
//! All integers are little-endian. Regions start on 4096-byte boundaries. A *slot* is the unit
//! one node writes on its own: 512 bytes, or the device's logical sector size when that is
//! larger (up to 4096), so that no two nodes ever share a sector (single writer per block).
//!
//! | region        | size                                   | contents                                   | writer |
//! |---------------|----------------------------------------|--------------------------------------------|--------|
//! | superblock    | 2 blocks                               | two identical copies of [`Superblock`]     | `sdc format` |
//! | node table    | max_nodes × 2 slots                    | two copies of each [`NodeEntry`]           | `sdc node` commands |
//! | heartbeat     | max_nodes × 1 slot                     | each node's [`Heartbeat`]                  | that node |
//! | claim         | max_nodes × 2 slots                    | two copies of each node's [`Claim`]        | that node |
//! | cluster state | 4 copies × 64 KiB                      | [`ClusterState`], by epoch parity and seq  | the master of that epoch |
//! | node slots    | max_nodes × 16 KiB                     | reserved: per-node acknowledgement and request slots (membership manager) | that node |
//! | layers        | 4 MiB                                  | reserved: DLM, VDM, SFS, event manager, registration and launch service | per layer |
//!
//! Each region's offset and length are also recorded in the superblock, and checked against
//! this layout when the disk is opened.
//!
//! # Records
//!
//! Every record is framed the same way (see `codec`): magic (4 bytes), record version (2
//! bytes), fields, zero padding, and the crc32 of everything before it in its last 4 bytes.
//! Node table entries, claims and superblocks are 512-byte records at the start of their slot;
//! the cluster state record is 4096 bytes at the start of its copy.
//!
//! # Double buffering
//!
//! A record that is rewritten in place and must survive a torn write has two copies. Each
//! carries a sequence number `seq`; sequence `n` is always written to copy `n % 2`, so a write
//! never touches the copy holding the newest good sequence, and a reader takes the valid copy
//! with the highest sequence. A torn write therefore loses at most the update being written.
//! The cluster state adds the epoch's parity: copy `(epoch % 2) * 2 + seq % 2`, so a deposed
//! master's late write can never land on the copies its successor writes.

use crate::codec::{wire_enum, Decoder, Encoder};
use crate::error::{CorruptRecord, DbError, Problem, RecordKind};
use std::fmt;

/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Region alignment and the size of multi-sector records.
pub const BLOCK_BYTES: u64 = 4096;
/// Size of the slot records (node entry, heartbeat, claim, superblock).
pub const RECORD_BYTES: usize = 512;
/// Size of one cluster state record (the start of each 64 KiB copy).
pub const CLUSTER_STATE_RECORD_BYTES: usize = 4096;
/// Bytes reserved for each copy of the cluster state.
pub const CLUSTER_STATE_COPY_BYTES: u64 = 64 * 1024;
/// Copies of the cluster state: 2 epoch parities × 2 sequence parities.
pub const CLUSTER_STATE_COPIES: u64 = 4;
/// Bytes reserved per node for its acknowledgement and request slots.
pub const NODE_SLOTS_BYTES_PER_NODE: u64 = 16 * 1024;
/// Bytes reserved for the higher layers.
pub const LAYERS_BYTES: u64 = 4 * 1024 * 1024;
/// The largest cluster. Node sets fit in a `u128` bitmap.
pub const NODES_MAX: u16 = 128;
/// Longest cluster or node name, in bytes.
pub const NAME_BYTES_MAX: usize = 63;
/// Longest free-text node address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// Longest host name kept in a heartbeat, in bytes.
pub const HOST_BYTES_MAX: usize = 63;

const _: () = assert!(NODES_MAX as u32 <= u128::BITS);
const _: () = assert!(RECORD_BYTES as u64 <= BLOCK_BYTES);
const _: () = assert!(CLUSTER_STATE_RECORD_BYTES as u64 <= CLUSTER_STATE_COPY_BYTES);

const MAGIC_SUPERBLOCK: u32 = u32::from_le_bytes(*b"SDSB");
const MAGIC_NODE_ENTRY: u32 = u32::from_le_bytes(*b"SDNE");
const MAGIC_HEARTBEAT: u32 = u32::from_le_bytes(*b"SDHB");
const MAGIC_CLAIM: u32 = u32::from_le_bytes(*b"SDCL");
const MAGIC_CLUSTER_STATE: u32 = u32::from_le_bytes(*b"SDCS");

/// A node's identifier: 1 to `max_nodes`, as in the node table. Slot index is `id - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct NodeId(pub u16);

impl NodeId {
    pub fn index(self) -> usize {
        debug_assert!(self.0 >= 1);
        (self.0 - 1) as usize
    }
    pub fn from_index(index: usize) -> NodeId {
        NodeId(index as u16 + 1)
    }
    /// Every node id of a cluster of `max_nodes`.
    pub fn all(max_nodes: u16) -> impl Iterator<Item = NodeId> {
        (1..=max_nodes).map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds on some monotonic clock. The protocol cores never read a clock themselves.
pub type Millis = u64;

/// The cluster-wide timing, in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Timing {
    /// Each node writes its heartbeat this often.
    pub heartbeat_ms: u32,
    /// An observer judges a node dead when its heartbeat has been still this long.
    pub dead_ms: u32,
    /// A node that could not complete a heartbeat write this long fences itself.
    pub fence_ms: u32,
}

/// Extra time, beyond one heartbeat interval, that must separate a node fencing itself from the
/// others judging it dead: the time to kill its services plus one I/O that completed late.
pub const FENCE_SLACK_MS: u32 = 100;
/// Bounds on the timing parameters.
pub const HEARTBEAT_MS_MIN: u32 = 10;
pub const HEARTBEAT_MS_MAX: u32 = 10_000;
pub const DEAD_MS_MAX: u32 = 600_000;

impl Default for Timing {
    /// Failover on a local disk in about a second.
    fn default() -> Self {
        Timing { heartbeat_ms: 100, dead_ms: 1000, fence_ms: 600 }
    }
}

impl Timing {
    /// The margin that must separate `fence_ms` from `dead_ms`.
    pub fn fence_margin_ms(&self) -> u32 {
        self.heartbeat_ms + FENCE_SLACK_MS
    }

    /// Checks the rule `fence_ms + margin < dead_ms` and the bounds, naming the remedy.
    pub fn validate(&self) -> Result<(), String> {
        let Timing { heartbeat_ms, dead_ms, fence_ms } = *self;
        if !(HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&heartbeat_ms) {
            return Err(format!(
                "heartbeat-ms {heartbeat_ms} is out of range ({HEARTBEAT_MS_MIN} to {HEARTBEAT_MS_MAX})"
            ));
        }
        if fence_ms < 3 * heartbeat_ms {
            return Err(format!(
                "fence-ms {fence_ms} must be at least three heartbeat intervals ({}), so one slow write does not fence a node",
                3 * heartbeat_ms
            ));
        }
        let margin = self.fence_margin_ms();
        if fence_ms as u64 + margin as u64 >= dead_ms as u64 {
            return Err(format!(
                "fence-ms {fence_ms} plus the margin {margin} (one heartbeat + {FENCE_SLACK_MS} ms) must be below dead-ms {dead_ms}: a node must fence itself before the others judge it dead; raise dead-ms to at least {}",
                fence_ms + margin + 1
            ));
        }
        if dead_ms > DEAD_MS_MAX {
            return Err(format!("dead-ms {dead_ms} exceeds {DEAD_MS_MAX}"));
        }
        Ok(())
    }
}

/// The regions of the disk, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionKind {
    Superblock = 1,
    NodeTable = 2,
    Heartbeat = 3,
    Claim = 4,
    ClusterState = 5,
    NodeSlots = 6,
    Layers = 7,
}

impl RegionKind {
    pub const ALL: [RegionKind; 7] = [
        RegionKind::Superblock,
        RegionKind::NodeTable,
        RegionKind::Heartbeat,
        RegionKind::Claim,
        RegionKind::ClusterState,
        RegionKind::NodeSlots,
        RegionKind::Layers,
    ];
    fn from_u8(v: u8) -> Option<RegionKind> {
        RegionKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Superblock => "superblock",
            RegionKind::NodeTable => "node table",
            RegionKind::Heartbeat => "heartbeat",
            RegionKind::Claim => "claim",
            RegionKind::ClusterState => "cluster state",
            RegionKind::NodeSlots => "node slots (reserved)",
            RegionKind::Layers => "layers (reserved)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    pub kind: RegionKind,
    pub offset: u64,
    pub len: u64,
}

/// Where everything is, derived from `max_nodes` and the slot size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub max_nodes: u16,
    pub slot_bytes: u32,
    pub regions: [Region; 7],
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

impl Layout {
    pub fn new(max_nodes: u16, slot_bytes: u32) -> Layout {
        assert!((1..=NODES_MAX).contains(&max_nodes), "max_nodes out of range");
        assert!(valid_slot_bytes(slot_bytes), "slot size out of range");
        let n = max_nodes as u64;
        let slot = slot_bytes as u64;
        let sizes = [
            2 * BLOCK_BYTES,
            round_up(n * 2 * slot, BLOCK_BYTES),
            round_up(n * slot, BLOCK_BYTES),
            round_up(n * 2 * slot, BLOCK_BYTES),
            CLUSTER_STATE_COPIES * CLUSTER_STATE_COPY_BYTES,
            n * NODE_SLOTS_BYTES_PER_NODE,
            LAYERS_BYTES,
        ];
        let mut offset = 0;
        let regions = std::array::from_fn(|i| {
            let region = Region { kind: RegionKind::ALL[i], offset, len: sizes[i] };
            offset += sizes[i];
            region
        });
        Layout { max_nodes, slot_bytes, regions }
    }

    /// The smallest disk that holds this layout.
    pub fn end(&self) -> u64 {
        let last = self.regions[self.regions.len() - 1];
        last.offset + last.len
    }

    pub fn region(&self, kind: RegionKind) -> Region {
        self.regions[kind as usize - 1]
    }

    pub fn superblock_offset(&self, copy: usize) -> u64 {
        copy as u64 * BLOCK_BYTES
    }
    pub fn node_entry_offset(&self, node: NodeId, copy: usize) -> u64 {
        self.region(RegionKind::NodeTable).offset + (node.index() as u64 * 2 + copy as u64) * self.slot_bytes as u64
    }
    pub fn heartbeat_offset(&self, node: NodeId) -> u64 {
        self.region(RegionKind::Heartbeat).offset + node.index() as u64 * self.slot_bytes as u64
    }
    pub fn claim_offset(&self, node: NodeId, copy: usize) -> u64 {
        self.region(RegionKind::Claim).offset + (node.index() as u64 * 2 + copy as u64) * self.slot_bytes as u64
    }
    pub fn cluster_state_offset(&self, copy: usize) -> u64 {
        self.region(RegionKind::ClusterState).offset + copy as u64 * CLUSTER_STATE_COPY_BYTES
    }
    /// Stride of node request and acknowledgement records: a record, or a slot if larger.
    pub fn node_record_stride(&self) -> u64 {
        (NODE_RECORD_BYTES as u64).max(self.slot_bytes as u64)
    }
    /// Node slots region: every node's two request copies, then every node's two ack copies.
    pub fn node_request_offset(&self, node: NodeId, copy: usize) -> u64 {
        self.region(RegionKind::NodeSlots).offset + (node.index() as u64 * 2 + copy as u64) * self.node_record_stride()
    }
    pub fn ack_offset(&self, node: NodeId, copy: usize) -> u64 {
        let requests = self.max_nodes as u64 * 2 * self.node_record_stride();
        self.region(RegionKind::NodeSlots).offset
            + requests
            + (node.index() as u64 * 2 + copy as u64) * self.node_record_stride()
    }
    pub fn contains(&self, node: NodeId) -> bool {
        (1..=self.max_nodes).contains(&node.0)
    }
}

/// Slot sizes the format allows: powers of two from 512 to 4096.
pub fn valid_slot_bytes(slot_bytes: u32) -> bool {
    slot_bytes.is_power_of_two() && (512..=BLOCK_BYTES as u32).contains(&slot_bytes)
}

/// Reads the newest valid copy of a double-buffered record.
///
/// Sequence `n` lives in copy `n % 2` (see the module docs). A copy whose sequence is in the
/// wrong place is reported as corrupt.
pub fn newest<T: Clone>(copies: &[Result<T, CorruptRecord>; 2], seq: impl Fn(&T) -> u64) -> Result<T, CorruptRecord> {
    let mut best: Option<&T> = None;
    for copy in copies.iter().flatten() {
        if best.is_none_or(|b| seq(copy) > seq(b)) {
            best = Some(copy);
        }
    }
    match best {
        Some(t) => Ok(t.clone()),
        None => Err(copies[0].clone().err().expect("no valid copy")),
    }
}

fn check_copy(seq: u64, copy: usize, dec: &Decoder<'_>) -> Result<(), CorruptRecord> {
    if seq % 2 != copy as u64 {
        return Err(dec.invalid(format!("sequence {seq} stored in copy {copy}")));
    }
    Ok(())
}

fn check_node(found: u16, expected: NodeId, dec: &Decoder<'_>) -> Result<NodeId, CorruptRecord> {
    if found != expected.0 {
        return Err(dec.invalid(format!("record of node {found} in the slot of node {expected}")));
    }
    Ok(expected)
}

fn check_name(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > NAME_BYTES_MAX {
        return Err(format!("{what} must be 1 to {NAME_BYTES_MAX} bytes"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("{what} {s:?} may hold only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Validates a cluster name.
pub fn validate_cluster_name(s: &str) -> Result<(), String> {
    check_name(s, "cluster name")
}
/// Validates a node name.
pub fn validate_node_name(s: &str) -> Result<(), String> {
    check_name(s, "node name")
}
/// Validates a free-text node address.
pub fn validate_address(s: &str) -> Result<(), String> {
    if s.len() > ADDRESS_BYTES_MAX {
        return Err(format!("address must be at most {ADDRESS_BYTES_MAX} bytes"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("address must not contain control characters".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Superblock

/// The cluster's identity, geometry and timing. Written twice by `sdc format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub cluster_uuid: [u8; 16],
    pub cluster_name: String,
    pub max_nodes: u16,
    pub slot_bytes: u32,
    pub disk_bytes: u64,
    pub timing: Timing,
    pub created_unix_ms: u64,
}

impl Superblock {
    pub fn layout(&self) -> Layout {
        Layout::new(self.max_nodes, self.slot_bytes)
    }

    pub fn uuid_string(&self) -> String {
        let h: String = self.cluster_uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_SUPERBLOCK, FORMAT_VERSION);
        e.u64(self.generation);
        e.bytes(&self.cluster_uuid);
        e.text(&self.cluster_name, NAME_BYTES_MAX + 1);
        e.u16(self.max_nodes);
        e.u32(self.slot_bytes);
        e.u64(self.disk_bytes);
        e.u32(self.timing.heartbeat_ms);
        e.u32(self.timing.dead_ms);
        e.u32(self.timing.fence_ms);
        e.u64(self.created_unix_ms);
        let layout = self.layout();
        e.u8(layout.regions.len() as u8);
        for r in layout.regions {
            e.u8(r.kind as u8);
            e.u64(r.offset);
            e.u64(r.len);
        }
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64) -> Result<Superblock, CorruptRecord> {
        let (mut d, _version) = Decoder::record(
            &buf[..RECORD_BYTES.min(buf.len())],
            RecordKind::Superblock,
            offset,
            MAGIC_SUPERBLOCK,
            FORMAT_VERSION,
        )?;
        let generation = d.u64()?;
        let cluster_uuid: [u8; 16] = d.bytes(16)?.try_into().unwrap();
        let cluster_name = d.text(NAME_BYTES_MAX + 1, "cluster name")?;
        let max_nodes = d.u16()?;
        let slot_bytes = d.u32()?;
        let disk_bytes = d.u64()?;
        let timing = Timing { heartbeat_ms: d.u32()?, dead_ms: d.u32()?, fence_ms: d.u32()? };
        let created_unix_ms = d.u64()?;
        if !(1..=NODES_MAX).contains(&max_nodes) {
            return Err(d.invalid(format!("max nodes {max_nodes} out of range 1 to {NODES_MAX}")));
        }
        if !valid_slot_bytes(slot_bytes) {
            return Err(d.invalid(format!("slot size {slot_bytes}")));
        }
        timing.validate().map_err(|e| d.invalid(format!("timing: {e}")))?;
        validate_cluster_name(&cluster_name).map_err(|e| d.invalid(e))?;
        let expected = Layout::new(max_nodes, slot_bytes);
        let count = d.u8()? as usize;
        if count != expected.regions.len() {
            return Err(d.invalid(format!("{count} regions, expected {}", expected.regions.len())));
        }
        for want in expected.regions {
            let kind = d.u8()?;
            let (off, len) = (d.u64()?, d.u64()?);
            if RegionKind::from_u8(kind) != Some(want.kind) || off != want.offset || len != want.len {
                return Err(d.invalid(format!(
                    "region table entry {kind} does not match the layout of version {FORMAT_VERSION}"
                )));
            }
        }
        if disk_bytes < expected.end() {
            return Err(d.invalid(format!("disk size {disk_bytes} smaller than its own layout")));
        }
        Ok(Superblock {
            generation,
            cluster_uuid,
            cluster_name,
            max_nodes,
            slot_bytes,
            disk_bytes,
            timing,
            created_unix_ms,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Node table

/// One node's persistent configuration. `present == false` is an empty (or removed) entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeEntry {
    pub node: NodeId,
    pub seq: u64,
    pub present: bool,
    pub master_eligible: bool,
    pub name: String,
    pub address: String,
    pub updated_unix_ms: u64,
    /// Bumped by `sdc leave`: the node's daemon leaves gracefully when it sees it change.
    pub leave_requests: u64,
}

impl NodeEntry {
    pub fn absent(node: NodeId, seq: u64) -> NodeEntry {
        NodeEntry {
            node,
            seq,
            present: false,
            master_eligible: false,
            name: String::new(),
            address: String::new(),
            updated_unix_ms: 0,
            leave_requests: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_NODE_ENTRY, FORMAT_VERSION);
        e.u64(self.seq);
        e.u16(self.node.0);
        e.u8(self.present as u8);
        e.u8(self.master_eligible as u8);
        e.text(&self.name, NAME_BYTES_MAX + 1);
        e.long_text(&self.address, ADDRESS_BYTES_MAX + 1);
        e.u64(self.updated_unix_ms);
        e.u64(self.leave_requests);
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId, copy: usize) -> Result<NodeEntry, CorruptRecord> {
        let (mut d, _) =
            Decoder::record(&buf[..RECORD_BYTES], RecordKind::NodeEntry, offset, MAGIC_NODE_ENTRY, FORMAT_VERSION)?;
        let seq = d.u64()?;
        check_copy(seq, copy, &d)?;
        let node = check_node(d.u16()?, node, &d)?;
        let present = decode_bool(d.u8()?, "present", &d)?;
        let master_eligible = decode_bool(d.u8()?, "master-eligible", &d)?;
        let name = d.text(NAME_BYTES_MAX + 1, "name")?;
        let address = d.long_text(ADDRESS_BYTES_MAX + 1, "address")?;
        let updated_unix_ms = d.u64()?;
        let leave_requests = d.u64()?;
        if present {
            validate_node_name(&name).map_err(|e| d.invalid(e))?;
        }
        Ok(NodeEntry { node, seq, present, master_eligible, name, address, updated_unix_ms, leave_requests })
    }
}

fn decode_bool(v: u8, what: &str, d: &Decoder<'_>) -> Result<bool, CorruptRecord> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(d.invalid(format!("{what} flag {v}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Heartbeat

wire_enum! {
    /// What a node's daemon says of itself in its heartbeat slot.
    pub enum HeartbeatState {
        /// Formatted; no daemon has run on this slot.
        Never = 0 => "never",
        /// A daemon is running (if the counter moves).
        Up = 1 => "up",
        /// The daemon stopped cleanly.
        Down = 2 => "down",
        /// The daemon fenced itself.
        Fenced = 3 => "fenced",
    }
}

/// One node's heartbeat: rewritten every `heartbeat_ms` by that node alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heartbeat {
    pub node: NodeId,
    pub state: HeartbeatState,
    /// A new value on every start of the daemon.
    pub incarnation: u64,
    /// Advances on every write; observers judge liveness by its movement.
    pub counter: u64,
    /// The epoch this node is acting master of, or 0.
    pub master_epoch: u64,
    /// The writer's wall clock, for display only: decisions never use it.
    pub written_unix_ms: u64,
    pub pid: u32,
    pub host: String,
}

impl Heartbeat {
    pub fn never(node: NodeId) -> Heartbeat {
        Heartbeat {
            node,
            state: HeartbeatState::Never,
            incarnation: 0,
            counter: 0,
            master_epoch: 0,
            written_unix_ms: 0,
            pid: 0,
            host: String::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_HEARTBEAT, FORMAT_VERSION);
        e.u16(self.node.0);
        e.u8(self.state as u8);
        e.u64(self.incarnation);
        e.u64(self.counter);
        e.u64(self.master_epoch);
        e.u64(self.written_unix_ms);
        e.u32(self.pid);
        e.text(&self.host, HOST_BYTES_MAX + 1);
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId) -> Result<Heartbeat, CorruptRecord> {
        let (mut d, _) =
            Decoder::record(&buf[..RECORD_BYTES], RecordKind::Heartbeat, offset, MAGIC_HEARTBEAT, FORMAT_VERSION)?;
        let node = check_node(d.u16()?, node, &d)?;
        let raw_state = d.u8()?;
        let state =
            HeartbeatState::from_u8(raw_state).ok_or_else(|| d.invalid(format!("heartbeat state {raw_state}")))?;
        Ok(Heartbeat {
            node,
            state,
            incarnation: d.u64()?,
            counter: d.u64()?,
            master_epoch: d.u64()?,
            written_unix_ms: d.u64()?,
            pid: d.u32()?,
            host: d.text(HOST_BYTES_MAX + 1, "host")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Claim

/// The value decided in one master epoch: which node, in which incarnation, is master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ClaimValue {
    pub node: NodeId,
    pub incarnation: u64,
}

/// One node's Disk Paxos block for the master claim (see the `claim` module).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Claim {
    pub node: NodeId,
    pub seq: u64,
    /// The incarnation of the daemon that wrote this record.
    pub writer_incarnation: u64,
    /// The Disk Paxos instance: master epoch.
    pub epoch: u64,
    /// Highest ballot this node has started in `epoch` (Disk Paxos `mbal`).
    pub mbal: u64,
    /// Ballot of the value this node last accepted in `epoch` (`bal`), 0 if none.
    pub bal: u64,
    /// The value accepted at `bal` (`inp`).
    pub value: Option<ClaimValue>,
    /// This node saw `value` chosen for `epoch`.
    pub decided: bool,
}

impl Claim {
    pub fn initial(node: NodeId, seq: u64) -> Claim {
        Claim { node, seq, writer_incarnation: 0, epoch: 0, mbal: 0, bal: 0, value: None, decided: false }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_CLAIM, FORMAT_VERSION);
        e.u64(self.seq);
        e.u16(self.node.0);
        e.u64(self.writer_incarnation);
        e.u64(self.epoch);
        e.u64(self.mbal);
        e.u64(self.bal);
        let v = self.value.unwrap_or(ClaimValue { node: NodeId(0), incarnation: 0 });
        e.u16(v.node.0);
        e.u64(v.incarnation);
        e.u8(self.decided as u8);
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId, copy: usize) -> Result<Claim, CorruptRecord> {
        let (mut d, _) = Decoder::record(&buf[..RECORD_BYTES], RecordKind::Claim, offset, MAGIC_CLAIM, FORMAT_VERSION)?;
        let seq = d.u64()?;
        check_copy(seq, copy, &d)?;
        let node = check_node(d.u16()?, node, &d)?;
        let writer_incarnation = d.u64()?;
        let epoch = d.u64()?;
        let mbal = d.u64()?;
        let bal = d.u64()?;
        let value_node = d.u16()?;
        let value_incarnation = d.u64()?;
        let decided = decode_bool(d.u8()?, "decided", &d)?;
        let value = match value_node {
            0 => None,
            n if n <= NODES_MAX => Some(ClaimValue { node: NodeId(n), incarnation: value_incarnation }),
            n => return Err(d.invalid(format!("claimed node {n}"))),
        };
        if bal > mbal {
            return Err(d.invalid(format!("accepted ballot {bal} above started ballot {mbal}")));
        }
        if (bal > 0) != value.is_some() || (decided && value.is_none()) {
            return Err(d.invalid("ballot and value disagree"));
        }
        Ok(Claim { node, seq, writer_incarnation, epoch, mbal, bal, value, decided })
    }
}

// ---------------------------------------------------------------------------------------------
// Membership: cluster state, node requests and acknowledgements

/// Most layers (registered subsystem orders) in a cluster.
pub const LAYERS_MAX: usize = 16;
/// Most barriers a layer may ask for, per transition kind.
pub const BARRIERS_MAX: u8 = 8;
/// Longest layer name, in bytes.
pub const LAYER_NAME_BYTES_MAX: usize = 23;
/// Largest cluster state record; the rest of each 64 KiB copy is reserved.
pub const CLUSTER_STATE_RECORD_BYTES_MAX: usize = 16 * 1024;
/// Size of a node request or acknowledgement record.
pub const NODE_RECORD_BYTES: usize = 2048;

const _: () = assert!(CLUSTER_STATE_RECORD_BYTES_MAX as u64 <= CLUSTER_STATE_COPY_BYTES);
const _: () = assert!(CLUSTER_STATE_RECORD_BYTES_MAX % CLUSTER_STATE_RECORD_BYTES == 0);
// Both node records of every node, two copies each, fit the per-node reservation at any slot size.
const _: () = assert!(2 * 2 * BLOCK_BYTES <= NODE_SLOTS_BYTES_PER_NODE);

const MAGIC_NODE_REQUEST: u32 = u32::from_le_bytes(*b"SDRQ");
const MAGIC_ACKS: u32 = u32::from_le_bytes(*b"SDAK");

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
    }
}

/// A join refused or aborted, kept until that node's next incarnation asks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct JoinRefusal {
    pub incarnation: u64,
    pub reason: RefusalReason,
    /// The layer concerned.
    pub order: u32,
    /// The node whose subsystem nacked (for `Nacked`).
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
    pub refusal: Option<JoinRefusal>,
}

impl Member {
    pub const INACTIVE: Member = Member { state: MemberState::Inactive, incarnation: 0, refusal: None };
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
    /// Nodes that must acknowledge each position, as a bitmap by slot index.
    pub participants: u128,
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
    /// One entry per node slot.
    pub members: Vec<Member>,
    pub transitions: Vec<Transition>,
}

const CLUSTER_STATE_HEADER_BYTES: usize = 4 + 2 + 4 + 8 * 2 + 2 + 8 * 3;
const LAYER_BYTES: usize = 4 + 1 + LAYER_NAME_BYTES_MAX + 3;
const MEMBER_BYTES: usize = 1 + 8 + 1 + 8 + 1 + 4 + 2 + 1 + 1;
const TRANSITION_BYTES: usize = 8 + 2 + 8 + 1 + 4 + 1 + 1 + 4 + 1 + 16;

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

    pub fn transition_of(&self, node: NodeId) -> Option<&Transition> {
        self.transitions.iter().find(|t| t.subject == node)
    }

    fn encoded_len(&self) -> usize {
        let body = CLUSTER_STATE_HEADER_BYTES
            + 1
            + self.layers.len() * LAYER_BYTES
            + 2
            + self.members.len() * MEMBER_BYTES
            + 2
            + self.transitions.len() * TRANSITION_BYTES
            + 4;
        round_up(body as u64, CLUSTER_STATE_RECORD_BYTES as u64) as usize
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = self.encoded_len();
        assert!(len <= CLUSTER_STATE_RECORD_BYTES_MAX, "cluster state of {len} bytes exceeds its bound");
        assert!(self.layers.len() <= LAYERS_MAX && self.members.len() <= NODES_MAX as usize);
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
        e.u16(self.members.len() as u16);
        for m in &self.members {
            e.u8(m.state as u8);
            e.u64(m.incarnation);
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
            e.bytes(&t.participants.to_le_bytes());
        }
        e.seal();
        buf
    }

    /// Decodes copy `copy` from a buffer of at least `CLUSTER_STATE_RECORD_BYTES_MAX` bytes;
    /// `Ok(None)` for a copy that was never written (blank).
    pub fn decode(buf: &[u8], offset: u64, copy: usize) -> Result<Option<ClusterState>, CorruptRecord> {
        let corrupt = |problem| CorruptRecord { kind: RecordKind::ClusterState, offset, problem };
        if buf.len() < CLUSTER_STATE_RECORD_BYTES {
            return Err(corrupt(Problem::Truncated));
        }
        if buf[..CLUSTER_STATE_RECORD_BYTES].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[6..10].try_into().unwrap()) as usize;
        let len_ok = len >= CLUSTER_STATE_RECORD_BYTES
            && len <= CLUSTER_STATE_RECORD_BYTES_MAX.min(buf.len())
            && len % CLUSTER_STATE_RECORD_BYTES == 0;
        // A wrong length is reported after the magic and version checks, which name it better.
        let frame = if len_ok { &buf[..len] } else { &buf[..CLUSTER_STATE_RECORD_BYTES] };
        let (mut d, _) = Decoder::record(frame, RecordKind::ClusterState, offset, MAGIC_CLUSTER_STATE, FORMAT_VERSION)?;
        if !len_ok {
            return Err(d.invalid(format!("record length {len}")));
        }
        d.u32()?;
        let seq = d.u64()?;
        let epoch = d.u64()?;
        let master = d.u16()?;
        if master == 0 || master > NODES_MAX {
            return Err(d.invalid(format!("master node {master}")));
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
        let member_count = d.u16()? as usize;
        if member_count > NODES_MAX as usize {
            return Err(d.invalid(format!("{member_count} members")));
        }
        let mut members = Vec::with_capacity(member_count);
        for _ in 0..member_count {
            let raw = d.u8()?;
            let state = MemberState::from_u8(raw).ok_or_else(|| d.invalid(format!("member state {raw}")))?;
            let incarnation = d.u64()?;
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
            members.push(Member { state, incarnation, refusal });
        }
        let transition_count = d.u16()? as usize;
        if transition_count > NODES_MAX as usize {
            return Err(d.invalid(format!("{transition_count} transitions")));
        }
        let mut transitions = Vec::with_capacity(transition_count);
        for _ in 0..transition_count {
            let id = d.u64()?;
            let subject = d.u16()?;
            if subject == 0 || subject as usize > member_count {
                return Err(d.invalid(format!("transition subject {subject}")));
            }
            let subject_incarnation = d.u64()?;
            let raw = d.u8()?;
            let kind = TransitionKind::from_u8(raw).ok_or_else(|| d.invalid(format!("transition kind {raw}")))?;
            let position = Position { order: d.u32()?, barrier: d.u8()? };
            let has_upper = decode_bool(d.u8()?, "upper", &d)?;
            let upper = d.u32()?;
            let leave_requested = decode_bool(d.u8()?, "leave requested", &d)?;
            let participants = u128::from_le_bytes(d.bytes(16)?.try_into().unwrap());
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
        if state.copy() != copy {
            return Err(d.invalid(format!("epoch {epoch} sequence {seq} stored in copy {copy}")));
        }
        Ok(Some(state))
    }
}

fn encode_layer(e: &mut Encoder<'_>, l: &LayerSpec) {
    e.u32(l.order);
    e.text(&l.name, LAYER_NAME_BYTES_MAX);
    e.u8(l.barriers.join);
    e.u8(l.barriers.leave);
    e.u8(l.barriers.forced_leave);
}

fn decode_layer(d: &mut Decoder<'_>) -> Result<LayerSpec, CorruptRecord> {
    Ok(LayerSpec {
        order: d.u32()?,
        name: d.text(LAYER_NAME_BYTES_MAX, "layer name")?,
        barriers: Barriers { join: d.u8()?, leave: d.u8()?, forced_leave: d.u8()? },
    })
}

/// Copy `(epoch % 2) * 2 + seq % 2` of the cluster state (see the module docs).
pub fn cluster_state_copy(epoch: u64, seq: u64) -> usize {
    ((epoch % 2) * 2 + seq % 2) as usize
}

wire_enum! {
    /// What a node's daemon asks of the master.
    pub enum Want {
        /// Nothing: the daemon is not running, or has just started.
        Nothing = 0 => "nothing",
        Join = 1 => "join",
        Leave = 2 => "leave",
    }
}

/// A node's request record: written only by that node, double-buffered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRequest {
    pub node: NodeId,
    pub seq: u64,
    /// The daemon incarnation asking.
    pub incarnation: u64,
    pub want: Want,
    /// The subsystems registered on this node.
    pub layers: Vec<LayerSpec>,
}

impl NodeRequest {
    pub fn initial(node: NodeId, seq: u64) -> NodeRequest {
        NodeRequest { node, seq, incarnation: 0, want: Want::Nothing, layers: Vec::new() }
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.layers.len() <= LAYERS_MAX, "layer registrations bounded");
        let mut buf = vec![0u8; NODE_RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_NODE_REQUEST, FORMAT_VERSION);
        e.u64(self.seq);
        e.u16(self.node.0);
        e.u64(self.incarnation);
        e.u8(self.want as u8);
        e.u8(self.layers.len() as u8);
        for l in &self.layers {
            encode_layer(&mut e, l);
        }
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId, copy: usize) -> Result<NodeRequest, CorruptRecord> {
        let (mut d, _) = Decoder::record(
            &buf[..NODE_RECORD_BYTES],
            RecordKind::NodeRequest,
            offset,
            MAGIC_NODE_REQUEST,
            FORMAT_VERSION,
        )?;
        let seq = d.u64()?;
        check_copy(seq, copy, &d)?;
        let node = check_node(d.u16()?, node, &d)?;
        let incarnation = d.u64()?;
        let raw = d.u8()?;
        let want = Want::from_u8(raw).ok_or_else(|| d.invalid(format!("request {raw}")))?;
        let count = d.u8()? as usize;
        if count > LAYERS_MAX {
            return Err(d.invalid(format!("{count} layers")));
        }
        let layers = (0..count).map(|_| decode_layer(&mut d)).collect::<Result<Vec<_>, _>>()?;
        Ok(NodeRequest { node, seq, incarnation, want, layers })
    }
}

/// One acknowledgement: this node's subsystems have processed `position` of `transition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ack {
    pub transition: u64,
    pub position: Position,
    /// A subsystem refused (meaningful for a join: it aborts it).
    pub nack: bool,
}

/// A node's acknowledgement record: written only by that node, double-buffered. Holds the
/// latest acknowledged position of each transition in flight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AckRecord {
    pub node: NodeId,
    pub seq: u64,
    pub incarnation: u64,
    pub acks: Vec<Ack>,
}

impl AckRecord {
    pub fn initial(node: NodeId, seq: u64) -> AckRecord {
        AckRecord { node, seq, incarnation: 0, acks: Vec::new() }
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.acks.len() <= NODES_MAX as usize, "one ack per transition in flight");
        let mut buf = vec![0u8; NODE_RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_ACKS, FORMAT_VERSION);
        e.u64(self.seq);
        e.u16(self.node.0);
        e.u64(self.incarnation);
        e.u16(self.acks.len() as u16);
        for a in &self.acks {
            e.u64(a.transition);
            e.u32(a.position.order);
            e.u8(a.position.barrier);
            e.u8(a.nack as u8);
        }
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId, copy: usize) -> Result<AckRecord, CorruptRecord> {
        let (mut d, _) =
            Decoder::record(&buf[..NODE_RECORD_BYTES], RecordKind::Acks, offset, MAGIC_ACKS, FORMAT_VERSION)?;
        let seq = d.u64()?;
        check_copy(seq, copy, &d)?;
        let node = check_node(d.u16()?, node, &d)?;
        let incarnation = d.u64()?;
        let count = d.u16()? as usize;
        if count > NODES_MAX as usize {
            return Err(d.invalid(format!("{count} acknowledgements")));
        }
        let mut acks = Vec::with_capacity(count);
        for _ in 0..count {
            let transition = d.u64()?;
            let position = Position { order: d.u32()?, barrier: d.u8()? };
            let nack = decode_bool(d.u8()?, "nack", &d)?;
            acks.push(Ack { transition, position, nack });
        }
        Ok(AckRecord { node, seq, incarnation, acks })
    }
}

/// Formats a byte count the way operators write it (64MiB, 4KiB, 5242880).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    for (unit, size) in UNITS {
        if n >= size {
            return format!("{:.1}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

/// Parses sizes like `64MiB`, `64M`, `1GiB`, `512KiB`, `4096` (binary units; `MB` is 1000²).
pub fn parse_size(s: &str) -> Result<u64, DbError> {
    let bad =
        || DbError::InvalidArgument(format!("invalid size {s:?}: use a number with an optional unit, like 64MiB"));
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1000,
        "mb" => 1000_000,
        "gb" => 1000_000_000,
        "tb" => 1000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
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
            0u64..1 << 40,
        )
            .prop_map(
                |(generation, cluster_uuid, cluster_name, max_nodes, slot_bytes, timing, created_unix_ms, extra)| {
                    let disk_bytes = Layout::new(max_nodes, slot_bytes).end() + extra;
                    Superblock {
                        generation,
                        cluster_uuid,
                        cluster_name,
                        max_nodes,
                        slot_bytes,
                        disk_bytes,
                        timing,
                        created_unix_ms,
                    }
                },
            )
    }
    fn node_entry() -> impl Strategy<Value = (NodeEntry, usize)> {
        (
            node(NODES_MAX),
            any::<(u64, u64)>(),
            any::<bool>(),
            any::<bool>(),
            name(),
            text(ADDRESS_BYTES_MAX),
            any::<u64>(),
        )
            .prop_map(
                |(node, (seq, leave_requests), present, master_eligible, name, address, updated_unix_ms)| {
                    let e = NodeEntry {
                        node,
                        seq,
                        present,
                        master_eligible,
                        name,
                        address,
                        updated_unix_ms,
                        leave_requests,
                    };
                    (e, (seq % 2) as usize)
                },
            )
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
            any::<(u64, u64, u64, u64, u32)>(),
            text(HOST_BYTES_MAX),
        )
            .prop_map(|(node, state, (incarnation, counter, master_epoch, written_unix_ms, pid), host)| {
                Heartbeat { node, state, incarnation, counter, master_epoch, written_unix_ms, pid, host }
            })
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
                (Claim { node, seq, writer_incarnation, epoch, mbal, bal, value, decided }, (seq % 2) as usize)
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
        (0u8..=4, any::<u64>(), refusal).prop_map(|(state, incarnation, refusal)| Member {
            state: MemberState::from_u8(state).unwrap(),
            incarnation,
            refusal,
        })
    }
    fn cluster_state() -> impl Strategy<Value = ClusterState> {
        (
            any::<(u64, u64, u64, u64, u64)>(),
            node(NODES_MAX),
            layers(),
            proptest::collection::vec(member(), 1..=NODES_MAX as usize),
        )
            .prop_flat_map(|(ids, master, layers, members)| {
                let n = members.len() as u16;
                let transition =
                    (any::<(u64, u64, u32, u8, bool, u128)>(), node(n), 1u8..=3, proptest::option::of(any::<u32>()))
                        .prop_map(
                            |(
                                (id, subject_incarnation, order, barrier, leave_requested, participants),
                                subject,
                                kind,
                                upper,
                            )| {
                                Transition {
                                    id,
                                    subject,
                                    subject_incarnation,
                                    kind: TransitionKind::from_u8(kind).unwrap(),
                                    position: Position { order, barrier },
                                    upper,
                                    leave_requested,
                                    participants,
                                }
                            },
                        );
                (Just((ids, master, layers, members)), proptest::collection::vec(transition, 0..=n as usize))
            })
            .prop_map(
                |(
                    ((epoch, seq, master_incarnation, written_unix_ms, next_transition_id), master, layers, members),
                    transitions,
                )| {
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
        (node(NODES_MAX), any::<(u64, u64)>(), 0u8..=2, layers()).prop_map(
            |(node, (seq, incarnation), want, layers)| {
                let want = [Want::Nothing, Want::Join, Want::Leave][want as usize];
                (NodeRequest { node, seq, incarnation, want, layers }, (seq % 2) as usize)
            },
        )
    }
    fn ack_record() -> impl Strategy<Value = (AckRecord, usize)> {
        let ack = any::<(u64, u32, u8, bool)>().prop_map(|(transition, order, barrier, nack)| Ack {
            transition,
            position: Position { order, barrier },
            nack,
        });
        (node(NODES_MAX), any::<(u64, u64)>(), proptest::collection::vec(ack, 0..=NODES_MAX as usize)).prop_map(
            |(node, (seq, incarnation), acks)| (AckRecord { node, seq, incarnation, acks }, (seq % 2) as usize),
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
            prop_assert_eq!(ClusterState::decode(&buf, 0, s.copy()).unwrap(), Some(s.clone()));
            assert_flip_detected(&buf, pos % buf.len(), bit, |b| ClusterState::decode(b, 0, s.copy()).map(|_| ()));
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
            let _ = Heartbeat::decode(&bytes, 0, NodeId(1));
            let _ = Claim::decode(&bytes, 0, NodeId(1), 1);
            let _ = ClusterState::decode(&bytes, 0, 0);
            let _ = NodeRequest::decode(&bytes, 0, NodeId(1), 0);
            let _ = AckRecord::decode(&bytes, 0, NodeId(1), 0);
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
    fn newer_record_version_is_named_as_newer() {
        let mut buf = Heartbeat::never(NodeId(1)).encode();
        buf[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let n = buf.len();
        let crc = crc32fast::hash(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let e = Heartbeat::decode(&buf, 4096, NodeId(1)).unwrap_err();
        assert_eq!(e.problem, Problem::NewerVersion { found: FORMAT_VERSION + 1, supported: FORMAT_VERSION });
        assert_eq!(e.offset, 4096);
    }

    #[test]
    fn newest_copy_wins_and_one_bad_copy_is_survived() {
        let bad =
            |off| Err(CorruptRecord { kind: crate::error::RecordKind::Claim, offset: off, problem: Problem::Blank });
        let c = |seq| Ok(Claim::initial(NodeId(1), seq));
        assert_eq!(newest(&[c(4), c(5)], |c| c.seq).unwrap().seq, 5);
        assert_eq!(newest(&[c(6), c(5)], |c| c.seq).unwrap().seq, 6);
        assert_eq!(newest(&[bad(0), c(5)], |c| c.seq).unwrap().seq, 5);
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
        for max_nodes in [1, 3, 32, NODES_MAX] {
            for slot in [512, 4096] {
                let l = Layout::new(max_nodes, slot);
                let mut end = 0;
                for r in l.regions {
                    assert_eq!(r.offset % BLOCK_BYTES, 0);
                    assert_eq!(r.offset, end);
                    end = r.offset + r.len;
                }
                let last = NodeId(max_nodes);
                assert!(
                    l.claim_offset(last, 1) + slot as u64
                        <= l.region(RegionKind::Claim).offset + l.region(RegionKind::Claim).len
                );
                assert!(
                    l.heartbeat_offset(last) + slot as u64
                        <= l.region(RegionKind::Heartbeat).offset + l.region(RegionKind::Heartbeat).len
                );
            }
        }
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
}
