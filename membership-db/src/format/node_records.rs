//! A node's own records in the node-records region: its request (join, leave, with its layer
//! registrations) and its acknowledgements of transition positions. Double-buffered, written
//! only by that node; the master reads a node's record when the node's heartbeat advertises a
//! new sequence number.

use super::*;
use crate::codec::{wire_enum, Decoder, Encoder};
use crate::error::{CorruptRecord, RecordKind};

/// Size of a node request or acknowledgement record.
pub const NODE_RECORD_BYTES: usize = 4096;

// Both records of a node, two copies each, fill its reservation.
const _: () = assert!(4 * NODE_RECORD_BYTES as u64 <= NODE_RECORDS_BYTES_PER_NODE);
// The largest acknowledgement record (one per transition in flight) fits.
const _: () = assert!(4 + 2 + 8 + 2 + 8 + 2 + NODES_MAX as usize * ACK_BYTES + 4 <= NODE_RECORD_BYTES);
// The largest request fits.
const _: () = assert!(4 + 2 + 8 + 2 + 8 + 1 + 8 + 1 + LAYERS_MAX * LAYER_BYTES + 4 <= NODE_RECORD_BYTES);

const ACK_BYTES: usize = 8 + 4 + 1 + 1;
const MAGIC_NODE_REQUEST: u32 = u32::from_le_bytes(*b"SDRQ");
const MAGIC_ACKS: u32 = u32::from_le_bytes(*b"SDAK");

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
    /// The count of `sdc leave` requests (the node table's `leave_requests`) this node has
    /// honoured: a daemon that starts and finds the table's count above it was asked to leave
    /// while no daemon ran (or while one restarted), and leaves.
    pub leave_requests_seen: u64,
}

impl NodeRequest {
    pub fn initial(node: NodeId, seq: u64) -> NodeRequest {
        NodeRequest { node, seq, incarnation: 0, want: Want::Nothing, layers: Vec::new(), leave_requests_seen: 0 }
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.layers.len() <= LAYERS_MAX, "layer registrations bounded");
        let mut buf = vec![0u8; NODE_RECORD_BYTES];
        let mut e = Encoder::record(&mut buf, MAGIC_NODE_REQUEST, FORMAT_VERSION);
        e.u64(self.seq);
        e.u16(self.node.0);
        e.u64(self.incarnation);
        e.u8(self.want as u8);
        e.u64(self.leave_requests_seen);
        e.u8(self.layers.len() as u8);
        for l in &self.layers {
            encode_layer(&mut e, l);
        }
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId, copy: usize) -> Result<NodeRequest, CorruptRecord> {
        let mut d = Decoder::record(
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
        let leave_requests_seen = d.u64()?;
        let count = d.u8()? as usize;
        if count > LAYERS_MAX {
            return Err(d.invalid(format!("{count} layers")));
        }
        let layers = (0..count).map(|_| decode_layer(&mut d)).collect::<Result<Vec<_>, _>>()?;
        Ok(NodeRequest { node, seq, incarnation, want, layers, leave_requests_seen })
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
        let mut d = Decoder::record(&buf[..NODE_RECORD_BYTES], RecordKind::Acks, offset, MAGIC_ACKS, FORMAT_VERSION)?;
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
            if acks.iter().any(|a: &Ack| a.transition == transition) {
                return Err(d.invalid(format!("two acknowledgements of transition {transition}")));
            }
            acks.push(Ack { transition, position, nack });
        }
        Ok(AckRecord { node, seq, incarnation, acks })
    }
}
