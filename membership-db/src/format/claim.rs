//! The master claim block: one per node, double-buffered, written only by its node. The
//! protocol that uses it (Disk Paxos) is in the `claim` module of this crate.

use super::*;
use crate::codec::{Decoder, Encoder};
use crate::error::{CorruptRecord, RecordKind};

const MAGIC_CLAIM: u32 = u32::from_le_bytes(*b"SDCL");

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
    /// No epoch at or below this may be finished: this node's block was damaged when a daemon
    /// started on it, and a decision of its previous incarnation in those epochs may have been
    /// lost with it (see the `claim` module). 0 for a block that never lost anything.
    pub floor: u64,
}

impl Claim {
    pub fn initial(node: NodeId, seq: u64) -> Claim {
        Claim { node, seq, writer_incarnation: 0, epoch: 0, mbal: 0, bal: 0, value: None, decided: false, floor: 0 }
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
        e.u64(self.floor);
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64, node: NodeId, copy: usize) -> Result<Claim, CorruptRecord> {
        let mut d = Decoder::record(&buf[..RECORD_BYTES], RecordKind::Claim, offset, MAGIC_CLAIM, FORMAT_VERSION)?;
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
        let floor = d.u64()?;
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
        Ok(Claim { node, seq, writer_incarnation, epoch, mbal, bal, value, decided, floor })
    }
}
