//! The heartbeat: rewritten every `heartbeat_ms` by its node alone, and read by every running
//! node every interval. Besides the liveness counter it carries what its writer publishes, so
//! the others read a record only when its advertised sequence moved (see the module docs).

use super::*;
use crate::codec::{wire_enum, Decoder, Encoder};
use crate::error::{CorruptRecord, RecordKind};

const MAGIC_HEARTBEAT: u32 = u32::from_le_bytes(*b"SDHB");

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

/// Which cluster state record a node holds: the master's is the newest, and the one every node
/// reads when it moves. `seq == 0` means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StateRef {
    pub epoch: u64,
    pub seq: u64,
    /// The record's length on the disk, so a reader reads it in one I/O of the right size.
    pub bytes: u32,
}

impl StateRef {
    pub const NONE: StateRef = StateRef { epoch: 0, seq: 0, bytes: 0 };
    pub fn of(state: &ClusterState) -> StateRef {
        StateRef { epoch: state.epoch, seq: state.seq, bytes: state.encoded_len() as u32 }
    }
    pub fn is_none(&self) -> bool {
        self.seq == 0
    }
    /// The copy this state lives in.
    pub fn copy(&self) -> usize {
        cluster_state_copy(self.epoch, self.seq)
    }
    /// Ordered by (epoch, seq).
    pub fn key(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
}

/// A host name kept in a heartbeat: at most [`HOST_BYTES_MAX`] bytes, held inline (a node
/// decodes every heartbeat every interval; nothing in them allocates).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostName {
    len: u8,
    bytes: [u8; HOST_BYTES_MAX],
}

impl HostName {
    pub const EMPTY: HostName = HostName { len: 0, bytes: [0; HOST_BYTES_MAX] };

    /// `name`, cut at a character boundary to fit.
    pub fn new(name: &str) -> HostName {
        let mut end = name.len().min(HOST_BYTES_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut h = HostName { len: end as u8, ..HostName::EMPTY };
        h.bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        h
    }
    pub fn as_str(&self) -> &str {
        // Built from a &str or checked as UTF-8 when decoded, and cut at a char boundary.
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("host names are UTF-8")
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl From<&str> for HostName {
    fn from(s: &str) -> HostName {
        HostName::new(s)
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for HostName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Flags of a heartbeat.
pub mod heartbeat_flags {
    /// The cluster state the master advertises could not be read here (damaged or torn): the
    /// master writes it again.
    pub const STATE_UNREADABLE: u8 = 1;
    /// The node runs an interconnect, and its heartbeat's `reaches` set is meaningful. A node
    /// without one (no layer that talks to peers) is never judged by its links.
    pub const INTERCONNECT: u8 = 2;
    pub const ALL: u8 = STATE_UNREADABLE | INTERCONNECT;
}

/// One node's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heartbeat {
    pub node: NodeId,
    pub state: HeartbeatState,
    /// [`heartbeat_flags`].
    pub flags: u8,
    /// A new value on every start of the daemon.
    pub incarnation: u64,
    /// Advances on every write; observers judge liveness by its movement.
    pub counter: u64,
    /// The epoch this node is acting master of, or 0.
    pub master_epoch: u64,
    /// The epoch of this node's claim block: a master that sees a later one has been deposed.
    pub claim_epoch: u64,
    /// The highest epoch this node, in any incarnation, has acted as master in (carried over by
    /// each new incarnation): the claim rule for damaged blocks never decides such an epoch
    /// again.
    pub acted_epoch: u64,
    /// The cluster state this node holds (the master: the one it wrote last).
    pub cluster_state: StateRef,
    /// Sequence numbers of this node's newest request and acknowledgement records on the disk.
    pub request_seq: u64,
    pub ack_seq: u64,
    /// The node table generation this node has read.
    pub table_generation: u64,
    /// The writer's wall clock, for display only: decisions never use it.
    pub written_unix_ms: u64,
    pub pid: u32,
    pub host: HostName,
    /// The peers this node currently reaches over the interconnect, or `None` when it runs none
    /// (flag [`heartbeat_flags::INTERCONNECT`] clear). Its own id is never listed.
    pub reaches: Option<NodeSet>,
}

impl Heartbeat {
    pub fn never(node: NodeId) -> Heartbeat {
        Heartbeat {
            node,
            state: HeartbeatState::Never,
            flags: 0,
            incarnation: 0,
            counter: 0,
            master_epoch: 0,
            claim_epoch: 0,
            acted_epoch: 0,
            cluster_state: StateRef::NONE,
            request_seq: 0,
            ack_seq: 0,
            table_generation: 0,
            written_unix_ms: 0,
            pid: 0,
            host: HostName::EMPTY,
            reaches: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_HEARTBEAT, FORMAT_VERSION);
        // The flag and the set say the same thing: the set decides.
        let flags = match self.reaches {
            Some(_) => self.flags | heartbeat_flags::INTERCONNECT,
            None => self.flags & !heartbeat_flags::INTERCONNECT,
        };
        e.u16(self.node.0);
        e.u8(self.state as u8);
        e.u8(flags);
        e.u64(self.incarnation);
        e.u64(self.counter);
        e.u64(self.master_epoch);
        e.u64(self.claim_epoch);
        e.u64(self.acted_epoch);
        e.u64(self.cluster_state.epoch);
        e.u64(self.cluster_state.seq);
        e.u32(self.cluster_state.bytes);
        e.u64(self.request_seq);
        e.u64(self.ack_seq);
        e.u64(self.table_generation);
        e.u64(self.written_unix_ms);
        e.u32(self.pid);
        e.text(self.host.as_str(), HOST_BYTES_MAX + 1);
        e.bytes(&self.reaches.unwrap_or(NodeSet::EMPTY).to_bytes());
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId) -> Result<Heartbeat, CorruptRecord> {
        let mut d =
            Decoder::record(&buf[..RECORD_BYTES], RecordKind::Heartbeat, offset, MAGIC_HEARTBEAT, FORMAT_VERSION)?;
        let node = check_node(d.u16()?, node, &d)?;
        let raw_state = d.u8()?;
        let state =
            HeartbeatState::from_u8(raw_state).ok_or_else(|| d.invalid(format!("heartbeat state {raw_state}")))?;
        let flags = d.u8()?;
        if flags & !heartbeat_flags::ALL != 0 {
            return Err(d.invalid(format!("heartbeat flags {flags:#04x}")));
        }
        let incarnation = d.u64()?;
        let counter = d.u64()?;
        let master_epoch = d.u64()?;
        let claim_epoch = d.u64()?;
        let acted_epoch = d.u64()?;
        let cluster_state = StateRef { epoch: d.u64()?, seq: d.u64()?, bytes: d.u32()? };
        if cluster_state.seq != 0 && !valid_cluster_state_len(cluster_state.bytes as usize) {
            return Err(d.invalid(format!("cluster state length {}", cluster_state.bytes)));
        }
        if master_epoch > claim_epoch || master_epoch > acted_epoch {
            return Err(d.invalid(format!(
                "master of epoch {master_epoch} with its claim in epoch {claim_epoch}, having acted through {acted_epoch}"
            )));
        }
        Ok(Heartbeat {
            node,
            state,
            flags: flags & !heartbeat_flags::INTERCONNECT,
            incarnation,
            counter,
            master_epoch,
            claim_epoch,
            acted_epoch,
            cluster_state,
            request_seq: d.u64()?,
            ack_seq: d.u64()?,
            table_generation: d.u64()?,
            written_unix_ms: d.u64()?,
            pid: d.u32()?,
            host: {
                let host = d.text_ref(HOST_BYTES_MAX + 1, "host")?;
                if host.len() > HOST_BYTES_MAX {
                    return Err(d.invalid(format!("host name of {} bytes", host.len())));
                }
                HostName::new(host)
            },
            reaches: {
                let set = NodeSet::from_bytes(&d.array()?);
                match flags & heartbeat_flags::INTERCONNECT != 0 {
                    true if set.contains(node) => return Err(d.invalid("a node listed as reaching itself")),
                    true => Some(set),
                    false if !set.is_empty() => return Err(d.invalid("reachable peers without an interconnect")),
                    false => None,
                }
            },
        })
    }
}

/// What one read of the heartbeat region returns: the config stamp and the heartbeats of nodes
/// 1 to the node read through.
#[derive(Debug, Clone)]
pub struct Beacons {
    pub stamp: Result<ConfigStamp, CorruptRecord>,
    pub heartbeats: Vec<Result<Heartbeat, CorruptRecord>>,
}
