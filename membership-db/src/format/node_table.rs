//! The node table (one double-buffered [`NodeEntry`] per node id) and the [`ConfigStamp`] that
//! tells running nodes when the table changed. Both are written only by admin commands
//! (`sdc format`, `sdc node add`/`remove`, `sdc leave`), which write the entry first and the
//! stamp after it.

use super::*;
use crate::codec::{Decoder, Encoder};
use crate::error::{CorruptRecord, RecordKind};

const MAGIC_NODE_ENTRY: u32 = u32::from_le_bytes(*b"SDNE");
const MAGIC_CONFIG_STAMP: u32 = u32::from_le_bytes(*b"SDCF");

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
    /// Bumped by `sdc leave`: the node's daemon leaves gracefully when it sees it above the
    /// count it has honoured (kept across `node remove` and `node add`, so it never goes back).
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
        let mut d =
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
            validate_address(&address).map_err(|e| d.invalid(e))?;
        }
        Ok(NodeEntry { node, seq, present, master_eligible, name, address, updated_unix_ms, leave_requests })
    }
}

/// What the node table says, as a running node needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableView {
    /// Nodes whose entry is present.
    pub present: NodeSet,
    /// Present and master-eligible.
    pub eligible: NodeSet,
    /// Nodes whose entry could not be read: they may be present.
    pub unreadable: NodeSet,
}

impl TableView {
    pub fn of(table: &[Result<NodeEntry, CorruptRecord>]) -> TableView {
        let mut v = TableView { present: NodeSet::EMPTY, eligible: NodeSet::EMPTY, unreadable: NodeSet::EMPTY };
        for (i, e) in table.iter().enumerate() {
            let node = NodeId::from_index(i);
            match e {
                Ok(e) if e.present => {
                    v.present.insert(node);
                    if e.master_eligible {
                        v.eligible.insert(node);
                    }
                }
                Ok(_) => {}
                Err(_) => v.unreadable.insert(node),
            }
        }
        v
    }

    /// The highest node id that may run: the heartbeat region is read up to its slot.
    pub fn highest(&self) -> Option<NodeId> {
        self.present.union(&self.unreadable).highest()
    }
}

/// Slot 0 of the heartbeat region: which cluster this disk holds and the node table's
/// generation. Read by every running node every interval (with the heartbeats), so a change of
/// the node table (a node added, removed, or asked to leave) is seen within one interval and the
/// table itself is read only then; a different UUID means the disk was reformatted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigStamp {
    #[serde(serialize_with = "serialize_uuid")]
    pub cluster_uuid: [u8; 16],
    /// Bumped after every change of the node table.
    pub table_generation: u64,
    pub written_unix_ms: u64,
}

fn serialize_uuid<S: serde::Serializer>(uuid: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&uuid_string(uuid))
}

impl ConfigStamp {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_CONFIG_STAMP, FORMAT_VERSION);
        e.bytes(&self.cluster_uuid);
        e.u64(self.table_generation);
        e.u64(self.written_unix_ms);
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64) -> Result<ConfigStamp, CorruptRecord> {
        let mut d =
            Decoder::record(&buf[..RECORD_BYTES], RecordKind::ConfigStamp, offset, MAGIC_CONFIG_STAMP, FORMAT_VERSION)?;
        Ok(ConfigStamp { cluster_uuid: d.array()?, table_generation: d.u64()?, written_unix_ms: d.u64()? })
    }
}
