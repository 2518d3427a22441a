//! The on-disk format, version 3, in one place (the FORMAT document).
//!
//! # Layout
//!
//! All integers are little-endian. Regions start on 4096-byte boundaries. A *slot* is the unit
//! one writer writes on its own: 512 bytes, or the device's logical sector size when that is
//! larger (up to 4096), so that no two writers ever share a sector (single writer per block).
//!
//! | region        | size                          | contents                                              | writer |
//! |---------------|-------------------------------|-------------------------------------------------------|--------|
//! | superblock    | 2 blocks                      | two copies of [`Superblock`], with the region table  | `sdc format` |
//! | node table    | max_nodes × 2 slots           | two copies of each [`NodeEntry`]                      | admin commands |
//! | heartbeat     | (1 + max_nodes) slots         | slot 0: the [`ConfigStamp`]; slot *n*: node *n*'s [`Heartbeat`] | admin commands; node *n* |
//! | claim         | max_nodes × 2 slots           | two copies of each node's [`Claim`]                   | that node |
//! | cluster state | 8 copies × 64 KiB             | [`ClusterState`], two copies per epoch group (`epoch % 4`) | the master of that epoch |
//! | node records  | max_nodes × 16 KiB            | every node's two [`NodeRequest`] copies, then every node's two [`AckRecord`] copies, 4 KiB each | that node |
//! | layers        | 4 MiB                         | reserved: DLM, VDM, SFS, event manager, registration and launch service | per layer |
//!
//! The superblock records each region's kind, version, offset and length; they are checked
//! against this layout when the disk is opened, and a region of a newer version is refused.
//!
//! # Version 3 (issue 8: the interconnect)
//!
//! Format 3 adds, and a disk of format 2 is refused like one of format 1 (`sdc format
//! --force` after stopping every node is the way forward):
//!
//! * to the [`Superblock`]: `link_timeout_ms` (u32, after the timing; see
//!   [`validate_link_timeout`]) and the 32-byte `cluster_key` the interconnect authenticates
//!   peers with, drawn at random by `sdc format`. Only hosts that can read the disk have it;
//!   `sdc inspect` and `sdc format` show its [`key_fingerprint`] (crc32, 8 hex digits), never
//!   the key;
//! * to the [`Heartbeat`]: flag [`heartbeat_flags::INTERCONNECT`] (the node runs an
//!   interconnect) and, after the host name, the [`NodeSet`] of peers it reaches over it (32
//!   bytes, all zero without the flag). The master judges links from these (see
//!   `manager::links`);
//! * [`RefusalReason::Unreachable`] for a member forced out because it lost its interconnect
//!   links (`node` names a peer it cannot reach);
//! * a node's `address` in the node table is its interconnect endpoint, `host[:port]`
//!   ([`parse_address`]; port [`INTERCONNECT_PORT_DEFAULT`] when left out), checked when the
//!   entry is written and when it is read.
//!
//! # The read path: one read per heartbeat interval
//!
//! Everything a running node must see every interval lies in the heartbeat region, which it
//! reads in one I/O from slot 0 up to the highest node id of the node table (so the read grows
//! with the nodes in the table, not with `max_nodes`):
//!
//! * the [`ConfigStamp`] carries the cluster's UUID and the node table's *generation*, bumped by
//!   every admin command that changes the table (`sdc node add`/`remove`, `sdc leave`): a node
//!   reads the node table only when the generation moved, and a changed UUID means the disk was
//!   reformatted;
//! * each [`Heartbeat`] carries, beside the liveness counter, what its writer publishes: the
//!   master epoch it acts in and the epoch of its claim block (elections), the cluster state it
//!   holds ([`StateRef`]: the master's is the one to read), and the sequence numbers of its
//!   request and acknowledgement records. A record is read only when its advertised sequence
//!   says it changed, and then only that one copy.
//!
//! An idle node therefore does one write (its heartbeat) and one read (the heartbeat region) per
//! interval. Claims are read only during elections, the cluster state only when the master's
//! heartbeat advertises a new one, request and acknowledgement records only by the master and
//! only those whose advertised sequence moved.
//!
//! # Records
//!
//! Every record is framed the same way (see `codec`): magic (4 bytes), record version (2
//! bytes), fields, zero padding, and the crc32 of everything before it in its last 4 bytes.
//! Slot records (superblock, node entry, config stamp, heartbeat, claim) are 512 bytes at the
//! start of their slot; the cluster state is a multiple of 4096 bytes (its length is in its
//! header and in the master's [`StateRef`]); node request and acknowledgement records are 4096.
//!
//! # Double buffering
//!
//! A record that is rewritten in place and must survive a torn write has two copies. Each
//! carries a sequence number `seq`; sequence `n` is always written to copy `n % 2`, so a write
//! never touches the copy holding the newest good sequence, and a reader takes the valid copy
//! with the highest sequence. A torn write therefore loses at most the update being written.
//! The cluster state adds the epoch: its two copies are those of the epoch's group
//! (`(epoch % 4) * 2` and the one after), so a deposed master's late write never lands on the
//! copies of the next three epochs. It is written to both of them (its own copy, `seq % 2`,
//! first), so that one copy damaged at rest never loses the newest state either. A reader that falls
//! back to the older copy because the other one is damaged says so ([`Newest::fallback`]).

mod claim;
mod cluster_state;
mod heartbeat;
mod node_records;
mod node_table;
mod superblock;
#[cfg(test)]
mod tests;

pub use claim::*;
pub use cluster_state::*;
pub use heartbeat::*;
pub use node_records::*;
pub use node_table::*;
pub use superblock::*;

use crate::codec::Decoder;
use crate::error::{CorruptRecord, DbError};
use std::fmt;

/// The format version this code writes, and the only one it reads.
pub const FORMAT_VERSION: u16 = 3;
/// Region alignment and the size of multi-sector records.
pub const BLOCK_BYTES: u64 = 4096;
/// Size of the slot records (superblock, node entry, config stamp, heartbeat, claim).
pub const RECORD_BYTES: usize = 512;
/// The largest cluster. Node sets are [`NodeSet`] bitmaps of this many bits.
pub const NODES_MAX: u16 = 256;
/// Longest cluster or node name, in bytes.
pub const NAME_BYTES_MAX: usize = 63;
/// Longest free-text node address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;
/// The interconnect port of a node whose `address` names none (`host` rather than `host:port`).
pub const INTERCONNECT_PORT_DEFAULT: u16 = 7711;
/// Bytes of the cluster key (`sdc format` draws it at random; peers authenticate with it).
pub const CLUSTER_KEY_BYTES: usize = 32;
/// The default `link_timeout_ms`: three default `dead_ms`.
pub const LINK_TIMEOUT_MS_DEFAULT: u32 = 3000;
/// The longest `link_timeout_ms` (as `dead_ms`: ten minutes).
pub const LINK_TIMEOUT_MS_MAX: u32 = 600_000;
/// Longest host name kept in a heartbeat, in bytes.
pub const HOST_BYTES_MAX: usize = 63;
/// Bytes reserved for each copy of the cluster state.
pub const CLUSTER_STATE_COPY_BYTES: u64 = 64 * 1024;
/// Epoch groups of the cluster state's copies (see [`cluster_state_copies`]).
pub const CLUSTER_STATE_GROUPS: u64 = 4;
/// Copies of the cluster state: two per epoch group.
pub const CLUSTER_STATE_COPIES: u64 = 2 * CLUSTER_STATE_GROUPS;
/// Bytes reserved per node for its request and acknowledgement records.
pub const NODE_RECORDS_BYTES_PER_NODE: u64 = 16 * 1024;
/// Bytes reserved for the higher layers.
pub const LAYERS_BYTES: u64 = 4 * 1024 * 1024;

const _: () = assert!(NODES_MAX as usize <= NodeSet::CAPACITY);
const _: () = assert!(RECORD_BYTES as u64 <= BLOCK_BYTES);
// The heartbeat region holds the stamp and every node's heartbeat: a node id fits a slot index.
const _: () = assert!((NODES_MAX as u64 + 1) * BLOCK_BYTES <= u32::MAX as u64);

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

/// A set of nodes, as a bitmap by slot index: 256 bits, 32 bytes on the disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeSet([u64; 4]);

impl NodeSet {
    pub const EMPTY: NodeSet = NodeSet([0; 4]);
    /// How many node ids a set can hold.
    pub const CAPACITY: usize = 256;
    /// Bytes on the disk.
    pub const BYTES: usize = 32;

    /// Nodes 1 to `max_nodes`.
    pub fn all(max_nodes: u16) -> NodeSet {
        NodeId::all(max_nodes).collect()
    }
    pub fn of(nodes: &[NodeId]) -> NodeSet {
        nodes.iter().copied().collect()
    }
    fn at(node: NodeId) -> (usize, u64) {
        let i = node.index();
        assert!(i < Self::CAPACITY, "node {node} beyond the node set capacity");
        (i / 64, 1u64 << (i % 64))
    }
    pub fn insert(&mut self, node: NodeId) {
        let (w, b) = Self::at(node);
        self.0[w] |= b;
    }
    pub fn remove(&mut self, node: NodeId) {
        let (w, b) = Self::at(node);
        self.0[w] &= !b;
    }
    pub fn contains(&self, node: NodeId) -> bool {
        if node.0 == 0 || node.index() >= Self::CAPACITY {
            return false;
        }
        let (w, b) = Self::at(node);
        self.0[w] & b != 0
    }
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// The members, lowest id first.
    pub fn iter(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..Self::CAPACITY).filter(|i| self.0[i / 64] & (1u64 << (i % 64)) != 0).map(NodeId::from_index)
    }
    /// The highest member.
    pub fn highest(&self) -> Option<NodeId> {
        (0..4)
            .rev()
            .find(|w| self.0[*w] != 0)
            .map(|w| NodeId::from_index(w * 64 + 63 - self.0[w].leading_zeros() as usize))
    }
    pub fn union(&self, other: &NodeSet) -> NodeSet {
        NodeSet(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }
    pub fn difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        for (i, w) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> NodeSet {
        NodeSet(std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))))
    }
    /// The members as runs, for a log line: `1-244, 246, 248-250`.
    pub fn ranges_text(&self) -> String {
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for n in self.iter() {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == n.0 => *end = n.0,
                _ => runs.push((n.0, n.0)),
            }
        }
        let text: Vec<String> =
            runs.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
        text.join(", ")
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> NodeSet {
        let mut s = NodeSet::EMPTY;
        for n in iter {
            s.insert(n);
        }
        s
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|n| n.0)).finish()
    }
}

/// In JSON, a list of node ids.
impl serde::Serialize for NodeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
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
    NodeRecords = 6,
    Layers = 7,
}

impl RegionKind {
    pub const ALL: [RegionKind; 7] = [
        RegionKind::Superblock,
        RegionKind::NodeTable,
        RegionKind::Heartbeat,
        RegionKind::Claim,
        RegionKind::ClusterState,
        RegionKind::NodeRecords,
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
            RegionKind::NodeRecords => "node records",
            RegionKind::Layers => "layers (reserved)",
        }
    }
}

/// The version of every region this code lays out; a region of a newer version is refused.
pub const REGION_VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    pub kind: RegionKind,
    pub version: u16,
    pub offset: u64,
    pub len: u64,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
    pub fn contains(&self, offset: u64) -> bool {
        (self.offset..self.end()).contains(&offset)
    }
}

/// Where everything is, derived from `max_nodes` and the slot size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub max_nodes: u16,
    pub slot_bytes: u32,
    pub regions: [Region; 7],
}

pub(crate) fn round_up(n: u64, to: u64) -> u64 {
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
            round_up((1 + n) * slot, BLOCK_BYTES),
            round_up(n * 2 * slot, BLOCK_BYTES),
            CLUSTER_STATE_COPIES * CLUSTER_STATE_COPY_BYTES,
            n * NODE_RECORDS_BYTES_PER_NODE,
            LAYERS_BYTES,
        ];
        let mut offset = 0;
        let regions = std::array::from_fn(|i| {
            let region = Region { kind: RegionKind::ALL[i], version: REGION_VERSION, offset, len: sizes[i] };
            offset += sizes[i];
            region
        });
        Layout { max_nodes, slot_bytes, regions }
    }

    /// The smallest disk that holds this layout.
    pub fn end(&self) -> u64 {
        self.regions[self.regions.len() - 1].end()
    }

    pub fn region(&self, kind: RegionKind) -> Region {
        self.regions[kind as usize - 1]
    }

    /// The region an offset lies in, for messages.
    pub fn region_of(&self, offset: u64) -> Option<RegionKind> {
        self.regions.iter().find(|r| r.contains(offset)).map(|r| r.kind)
    }

    pub fn superblock_offset(&self, copy: usize) -> u64 {
        copy as u64 * BLOCK_BYTES
    }
    pub fn node_entry_offset(&self, node: NodeId, copy: usize) -> u64 {
        self.region(RegionKind::NodeTable).offset + (node.index() as u64 * 2 + copy as u64) * self.slot_bytes as u64
    }
    /// Slot 0 of the heartbeat region.
    pub fn config_stamp_offset(&self) -> u64 {
        self.region(RegionKind::Heartbeat).offset
    }
    /// Slot `node` of the heartbeat region (slot 0 is the config stamp).
    pub fn heartbeat_offset(&self, node: NodeId) -> u64 {
        self.region(RegionKind::Heartbeat).offset + node.0 as u64 * self.slot_bytes as u64
    }
    pub fn claim_offset(&self, node: NodeId, copy: usize) -> u64 {
        self.region(RegionKind::Claim).offset + (node.index() as u64 * 2 + copy as u64) * self.slot_bytes as u64
    }
    pub fn cluster_state_offset(&self, copy: usize) -> u64 {
        self.region(RegionKind::ClusterState).offset + copy as u64 * CLUSTER_STATE_COPY_BYTES
    }
    /// Node records region: every node's two request copies, then every node's two ack copies.
    pub fn node_request_offset(&self, node: NodeId, copy: usize) -> u64 {
        self.region(RegionKind::NodeRecords).offset + (node.index() as u64 * 2 + copy as u64) * NODE_RECORD_BYTES as u64
    }
    pub fn ack_offset(&self, node: NodeId, copy: usize) -> u64 {
        let requests = self.max_nodes as u64 * 2 * NODE_RECORD_BYTES as u64;
        self.region(RegionKind::NodeRecords).offset
            + requests
            + (node.index() as u64 * 2 + copy as u64) * NODE_RECORD_BYTES as u64
    }
    pub fn contains(&self, node: NodeId) -> bool {
        (1..=self.max_nodes).contains(&node.0)
    }
}

/// Slot sizes the format allows: powers of two from 512 to 4096.
pub fn valid_slot_bytes(slot_bytes: u32) -> bool {
    slot_bytes.is_power_of_two() && (512..=BLOCK_BYTES as u32).contains(&slot_bytes)
}

/// Both copies of a double-buffered record, as read.
pub type Copies<T> = [Result<T, CorruptRecord>; 2];

/// The newest valid copy of a double-buffered record, and what the reader must say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest<T> {
    /// The valid copy with the highest sequence number.
    pub record: T,
    /// The other copy failed its checks: the record may be older than the last one written
    /// (when the damaged copy was the newer one). Every reader reports this.
    pub fallback: Option<CorruptRecord>,
}

/// Reads the newest valid copy of a double-buffered record.
///
/// Sequence `n` lives in copy `n % 2` (see the module docs). `Err` names the first copy when
/// neither is valid.
pub fn newest_noting<T: Clone>(copies: &Copies<T>, seq: impl Fn(&T) -> u64) -> Result<Newest<T>, CorruptRecord> {
    let mut best: Option<&T> = None;
    for copy in copies.iter().flatten() {
        if best.is_none_or(|b| seq(copy) > seq(b)) {
            best = Some(copy);
        }
    }
    let damaged = copies.iter().find_map(|c| c.as_ref().err()).cloned();
    match best {
        Some(t) => Ok(Newest { record: t.clone(), fallback: damaged }),
        None => Err(damaged.expect("no valid copy means a damaged one")),
    }
}

/// [`newest_noting`] without the fallback note, for readers that report damage separately.
pub fn newest<T: Clone>(copies: &Copies<T>, seq: impl Fn(&T) -> u64) -> Result<T, CorruptRecord> {
    newest_noting(copies, seq).map(|n| n.record)
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

fn decode_bool(v: u8, what: &str, d: &Decoder<'_>) -> Result<bool, CorruptRecord> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(d.invalid(format!("{what} flag {v}"))),
    }
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
/// Validates a node address: its interconnect endpoint, `host[:port]` (empty: none). `host` is
/// a host name (letters, digits, '-', '.'), an IPv4 address, or an IPv6 address in brackets;
/// `port` is 1 to 65535, [`INTERCONNECT_PORT_DEFAULT`] when left out.
pub fn validate_address(s: &str) -> Result<(), String> {
    parse_address(s).map(|_| ())
}

/// The host and port of a node address (`None` for an empty address).
pub fn parse_address(s: &str) -> Result<Option<(String, u16)>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > ADDRESS_BYTES_MAX {
        return Err(format!("address must be at most {ADDRESS_BYTES_MAX} bytes"));
    }
    let bad = |why: &str| {
        Err(format!(
            "address {s:?} {why}: use host[:port] (a host name, an IPv4 address or [IPv6]; port 1 to 65535, {INTERCONNECT_PORT_DEFAULT} by default)"
        ))
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else { return bad("has no closing ']'") };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("holds no IPv6 address in brackets");
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return bad("has text after ']'"),
            },
        };
        (format!("[{inner}]"), port)
    } else {
        if s.matches(':').count() > 1 {
            return bad("holds an IPv6 address without brackets");
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let ipv4_like = !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.');
        if ipv4_like && host.parse::<std::net::Ipv4Addr>().is_err() {
            return bad("is not a valid IPv4 address");
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !ipv4_like && (host.is_empty() || !host.trim_end_matches('.').split('.').all(label_ok)) {
            return bad("is not a host name");
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => INTERCONNECT_PORT_DEFAULT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n >= 1 && p.chars().all(|c| c.is_ascii_digit()) => n,
            _ => return bad("has a port outside 1 to 65535"),
        },
    };
    Ok(Some((host, port)))
}

/// Checks `link_timeout_ms` against the heartbeat interval and its bound, naming the remedy.
pub fn validate_link_timeout(link_timeout_ms: u32, timing: &Timing) -> Result<(), String> {
    let least = 2 * timing.heartbeat_ms;
    if link_timeout_ms < least {
        return Err(format!(
            "link-timeout-ms {link_timeout_ms} must be at least two heartbeat intervals ({least}): a link is judged by what the heartbeats publish"
        ));
    }
    if link_timeout_ms > LINK_TIMEOUT_MS_MAX {
        return Err(format!("link-timeout-ms {link_timeout_ms} exceeds {LINK_TIMEOUT_MS_MAX}"));
    }
    Ok(())
}

/// A short fingerprint of the cluster key, for operators to compare (the key itself is never
/// printed): the crc32 of the key, 8 hexadecimal digits.
pub fn key_fingerprint(key: &[u8; CLUSTER_KEY_BYTES]) -> String {
    format!("{:08x}", crc32fast::hash(key))
}

/// Formats a byte count the way operators write it (64MiB, 4KiB, 5242880).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
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
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}
