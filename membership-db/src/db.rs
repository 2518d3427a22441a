//! [`MembershipDb`]: typed access to the regions of a formatted disk.
//!
//! Reads return a `Result` per record (or per copy), so one corrupt record never hides the
//! others. The running nodes' read path is narrow (see the FORMAT document in [`crate::format`]):
//! [`MembershipDb::read_beacons`] reads the config stamp and the heartbeats up to a node id in
//! one I/O, and single records are read by the copy their advertised sequence names. Whole
//! regions are read by the tools (`status`, `inspect`) and by a new master taking over. Writes
//! put one record in the writer's own slot (or copy) and nothing else.

use crate::error::{CorruptRecord, DbError, Problem, RecordKind};
use crate::format::*;
use crate::io::Disk;

/// What is on a disk before formatting it.
#[derive(Debug)]
pub enum Probe {
    /// A valid superblock: a cluster lives here.
    Formatted(Superblock),
    /// A superblock that is newer than this program.
    NewerFormat { found: u16 },
    /// A superblock of an older format than this program reads.
    OlderFormat { found: u16 },
    /// No valid superblock, but the disk holds a cluster: superblocks that carry the cluster
    /// magic but fail their checks, or overwritten superblocks in front of a node table. A
    /// damaged cluster is treated like an existing one (never overwritten without being asked).
    Damaged(Vec<CorruptRecord>),
    /// No valid superblock; the reasons, for both copies.
    Unformatted(Vec<CorruptRecord>),
}

/// What `format` needs besides the disk.
#[derive(Debug, Clone)]
pub struct FormatParams {
    pub cluster_name: String,
    pub max_nodes: u16,
    pub timing: Timing,
    /// See [`Superblock::link_timeout_ms`]; checked by [`validate_link_timeout`].
    pub link_timeout_ms: u32,
    pub cluster_uuid: [u8; 16],
    /// Drawn at random by `sdc format` (fixed in tests and the simulator).
    pub cluster_key: [u8; CLUSTER_KEY_BYTES],
    pub now_unix_ms: u64,
}

/// Zeroes are written in chunks of this size when formatting the reserved regions.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub struct MembershipDb {
    disk: Box<dyn Disk>,
    superblock: Superblock,
    layout: Layout,
}

/// Reads both superblock copies.
pub fn read_superblocks(disk: &dyn Disk) -> Result<[Result<Superblock, CorruptRecord>; 2], DbError> {
    let want = 2 * BLOCK_BYTES;
    if disk.len_bytes() < want {
        return Err(DbError::NotFormatted(format!("the disk is only {} bytes", disk.len_bytes())));
    }
    let mut buf = vec![0u8; want as usize];
    disk.read_at(0, &mut buf)?;
    Ok([0usize, 1].map(|copy| {
        let off = copy as u64 * BLOCK_BYTES;
        Superblock::decode(&buf[off as usize..(off + BLOCK_BYTES) as usize], off)
    }))
}

/// Whether the first node-table slot holds a node entry frame: the node table starts right
/// after the superblocks whatever the geometry, so a disk whose superblocks were overwritten is
/// still recognised as a cluster disk.
fn node_table_follows(disk: &dyn Disk) -> Result<bool, DbError> {
    let at = 2 * BLOCK_BYTES;
    if disk.len_bytes() < at + BLOCK_BYTES {
        return Ok(false);
    }
    let mut buf = vec![0u8; BLOCK_BYTES as usize];
    disk.read_at(at, &mut buf)?;
    Ok(match NodeEntry::decode(&buf, at, NodeId(1), 0) {
        Ok(_) => true,
        Err(e) => !matches!(e.problem, Problem::Blank | Problem::BadMagic { .. } | Problem::Truncated),
    })
}

/// Says whether a cluster lives on the disk, without changing anything.
pub fn probe(disk: &dyn Disk) -> Result<Probe, DbError> {
    if disk.len_bytes() < 2 * BLOCK_BYTES {
        return Ok(Probe::Unformatted(vec![]));
    }
    let copies = read_superblocks(disk)?;
    if let Ok(sb) = newest(&copies, |s| s.generation) {
        return Ok(Probe::Formatted(sb));
    }
    let errors: Vec<CorruptRecord> = copies.into_iter().filter_map(Result::err).collect();
    for e in &errors {
        match e.problem {
            Problem::NewerVersion { found, .. } => return Ok(Probe::NewerFormat { found }),
            Problem::OlderVersion { found, .. } => return Ok(Probe::OlderFormat { found }),
            _ => {}
        }
    }
    let damaged_magic = errors.iter().any(|e| matches!(e.problem, Problem::Checksum { .. } | Problem::Invalid(_)));
    let overwritten = errors.iter().all(|e| !matches!(e.problem, Problem::Blank)) && node_table_follows(disk)?;
    if damaged_magic || overwritten {
        return Ok(Probe::Damaged(errors));
    }
    Ok(Probe::Unformatted(errors))
}

/// The slot size for a device sector size, or an error for one the format cannot use.
pub fn slot_bytes_for(sector: u32) -> Result<u32, DbError> {
    let slot = sector.max(512);
    if !valid_slot_bytes(slot) {
        return Err(DbError::UnsupportedSectorSize(sector));
    }
    Ok(slot)
}

fn padded(record: Vec<u8>, len: usize) -> Vec<u8> {
    let mut out = record;
    out.resize(len, 0);
    out
}

impl MembershipDb {
    /// Opens a formatted disk, checking the superblock, the geometry and the sector size.
    pub fn open(disk: Box<dyn Disk>) -> Result<MembershipDb, DbError> {
        let superblock = match probe(disk.as_ref())? {
            Probe::Formatted(sb) => sb,
            Probe::NewerFormat { found } => return Err(DbError::NewerFormat { found, supported: FORMAT_VERSION }),
            Probe::OlderFormat { found } => return Err(DbError::OlderFormat { found, supported: FORMAT_VERSION }),
            Probe::Unformatted(errors) | Probe::Damaged(errors) => {
                let why = errors.first().map(|e| e.to_string()).unwrap_or_else(|| "the disk is too small".into());
                return Err(DbError::NotFormatted(why));
            }
        };
        let sector = disk.sector_bytes();
        if !valid_slot_bytes(sector.max(512)) {
            return Err(DbError::UnsupportedSectorSize(sector));
        }
        if sector > superblock.slot_bytes {
            return Err(DbError::SectorSizeMismatch { device: sector, slot: superblock.slot_bytes });
        }
        if disk.len_bytes() < superblock.disk_bytes {
            return Err(DbError::Truncated { actual: disk.len_bytes(), expected: superblock.disk_bytes });
        }
        let layout = superblock.layout();
        Ok(MembershipDb { disk, superblock, layout })
    }

    /// Writes a new, empty membership database. The caller has decided that overwriting
    /// whatever is there is intended.
    ///
    /// The old superblocks are wiped first and the new ones written last, so an interrupted
    /// format leaves a disk that is plainly unformatted, never a half-initialised cluster.
    pub fn format(disk: Box<dyn Disk>, params: &FormatParams) -> Result<MembershipDb, DbError> {
        validate_cluster_name(&params.cluster_name).map_err(DbError::InvalidArgument)?;
        params.timing.validate().map_err(DbError::InvalidArgument)?;
        validate_link_timeout(params.link_timeout_ms, &params.timing).map_err(DbError::InvalidArgument)?;
        if !(1..=NODES_MAX).contains(&params.max_nodes) {
            return Err(DbError::InvalidArgument(format!(
                "max nodes {} out of range 1 to {NODES_MAX}",
                params.max_nodes
            )));
        }
        let slot_bytes = slot_bytes_for(disk.sector_bytes())?;
        let layout = Layout::new(params.max_nodes, slot_bytes);
        let minimum = layout.end();
        if disk.len_bytes() < minimum {
            return Err(DbError::TooSmall {
                actual: disk.len_bytes(),
                minimum,
                minimum_human: human_bytes(minimum),
                max_nodes: params.max_nodes,
            });
        }
        let superblock = Superblock {
            generation: 1,
            cluster_uuid: params.cluster_uuid,
            cluster_name: params.cluster_name.clone(),
            max_nodes: params.max_nodes,
            slot_bytes,
            disk_bytes: disk.len_bytes(),
            timing: params.timing,
            link_timeout_ms: params.link_timeout_ms,
            cluster_key: params.cluster_key,
            created_unix_ms: params.now_unix_ms,
        };
        disk.write_at(0, &vec![0u8; 2 * BLOCK_BYTES as usize])?;
        let db = MembershipDb { disk, superblock, layout };
        let nodes: Vec<NodeId> = NodeId::all(params.max_nodes).collect();
        let slot = slot_bytes as usize;

        let node_table: Vec<u8> = nodes
            .iter()
            .flat_map(|&n| [0, 1].map(|seq| padded(NodeEntry::absent(n, seq).encode(), slot)))
            .flatten()
            .collect();
        db.disk.write_at(db.layout.node_entry_offset(NodeId(1), 0), &node_table)?;
        let stamp =
            ConfigStamp { cluster_uuid: params.cluster_uuid, table_generation: 1, written_unix_ms: params.now_unix_ms };
        let beacons: Vec<u8> = std::iter::once(padded(stamp.encode(), slot))
            .chain(nodes.iter().map(|&n| padded(Heartbeat::never(n).encode(), slot)))
            .flatten()
            .collect();
        db.disk.write_at(db.layout.config_stamp_offset(), &beacons)?;
        let claims: Vec<u8> = nodes
            .iter()
            .flat_map(|&n| [0, 1].map(|seq| padded(Claim::initial(n, seq).encode(), slot)))
            .flatten()
            .collect();
        db.disk.write_at(db.layout.claim_offset(NodeId(1), 0), &claims)?;
        for kind in [RegionKind::ClusterState, RegionKind::Layers] {
            db.zero_region(db.layout.region(kind))?;
        }
        let requests: Vec<u8> = nodes
            .iter()
            .flat_map(|&n| [0, 1].map(|seq| padded(NodeRequest::initial(n, seq).encode(), NODE_RECORD_BYTES)))
            .flatten()
            .collect();
        db.disk.write_at(db.layout.node_request_offset(NodeId(1), 0), &requests)?;
        let acks: Vec<u8> = nodes
            .iter()
            .flat_map(|&n| [0, 1].map(|seq| padded(AckRecord::initial(n, seq).encode(), NODE_RECORD_BYTES)))
            .flatten()
            .collect();
        db.disk.write_at(db.layout.ack_offset(NodeId(1), 0), &acks)?;
        let sb = db.superblock.encode();
        for copy in 0..2 {
            db.disk.write_at(db.layout.superblock_offset(copy), &padded(sb.clone(), BLOCK_BYTES as usize))?;
        }
        Ok(db)
    }

    fn zero_region(&self, region: Region) -> Result<(), DbError> {
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut off = region.offset;
        while off < region.end() {
            let n = ((region.end() - off) as usize).min(ZERO_CHUNK_BYTES);
            self.disk.write_at(off, &zeros[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn disk(&self) -> &dyn Disk {
        self.disk.as_ref()
    }
    pub fn max_nodes(&self) -> u16 {
        self.superblock.max_nodes
    }

    /// Checks a node id against the cluster's size, with the message operators see.
    pub fn check_node_id(&self, node: NodeId) -> Result<(), DbError> {
        if !self.layout.contains(node) {
            return Err(DbError::InvalidArgument(format!(
                "node {} is out of range: this cluster has node ids 1 to {}",
                node.0, self.superblock.max_nodes
            )));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` in one I/O.
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, DbError> {
        let mut buf = vec![0u8; len];
        self.disk.read_at(offset, &mut buf)?;
        Ok(buf)
    }

    fn slot<'a>(&self, buf: &'a [u8], index: usize) -> &'a [u8] {
        let s = self.layout.slot_bytes as usize;
        &buf[index * s..(index + 1) * s]
    }

    fn write_slot(&self, offset: u64, record: Vec<u8>) -> Result<(), DbError> {
        self.disk.write_at(offset, &padded(record, self.layout.slot_bytes as usize))
    }

    /// Both copies of every node's slot record of a double-buffered region, in one I/O.
    fn read_slot_copies<T>(
        &self,
        first: u64,
        decode: impl Fn(&[u8], u64, NodeId, usize) -> Result<T, CorruptRecord>,
        offset: impl Fn(NodeId, usize) -> u64,
    ) -> Result<Vec<Copies<T>>, DbError> {
        let n = self.max_nodes() as usize;
        let buf = self.read(first, 2 * n * self.layout.slot_bytes as usize)?;
        Ok(NodeId::all(self.max_nodes())
            .map(|node| {
                [0usize, 1].map(|copy| decode(self.slot(&buf, node.index() * 2 + copy), offset(node, copy), node, copy))
            })
            .collect())
    }

    // --- node table and config stamp ----------------------------------------------------------

    /// Both copies of every node's entry.
    pub fn read_node_entry_copies(&self) -> Result<Vec<Copies<NodeEntry>>, DbError> {
        let l = &self.layout;
        self.read_slot_copies(l.node_entry_offset(NodeId(1), 0), NodeEntry::decode, |n, c| l.node_entry_offset(n, c))
    }

    /// The newest valid entry of every node.
    pub fn read_node_table(&self) -> Result<Vec<Result<NodeEntry, CorruptRecord>>, DbError> {
        Ok(self.read_node_entry_copies()?.iter().map(|c| newest(c, |e| e.seq)).collect())
    }

    /// Writes a node entry into the copy its sequence number selects. Admin commands then
    /// bump the table generation ([`MembershipDb::bump_table_generation`]).
    pub fn write_node_entry(&self, entry: &NodeEntry) -> Result<(), DbError> {
        self.check_node_id(entry.node)?;
        let copy = (entry.seq % 2) as usize;
        self.write_slot(self.layout.node_entry_offset(entry.node, copy), entry.encode())
    }

    /// The sequence number the next write of `node`'s entry must carry: one above the newest
    /// valid copy, so that it lands on the other copy (which, when damaged, it repairs).
    pub fn next_node_entry_seq(&self, copies: &Copies<NodeEntry>) -> u64 {
        copies.iter().flatten().map(|e| e.seq + 1).max().unwrap_or(2)
    }

    pub fn read_config_stamp(&self) -> Result<Result<ConfigStamp, CorruptRecord>, DbError> {
        let off = self.layout.config_stamp_offset();
        Ok(ConfigStamp::decode(&self.read(off, self.layout.slot_bytes as usize)?, off))
    }

    /// Tells the running nodes that the node table changed: writes the config stamp with the
    /// next generation (a damaged stamp is rewritten, with a generation no node has seen).
    pub fn bump_table_generation(&self, now_unix_ms: u64) -> Result<u64, DbError> {
        let generation = match self.read_config_stamp()? {
            Ok(s) => s.table_generation + 1,
            Err(_) => now_unix_ms.max(2),
        };
        let stamp = ConfigStamp {
            cluster_uuid: self.superblock.cluster_uuid,
            table_generation: generation,
            written_unix_ms: now_unix_ms,
        };
        self.write_slot(self.layout.config_stamp_offset(), stamp.encode())?;
        Ok(generation)
    }

    // --- heartbeats -----------------------------------------------------------------------------

    /// The config stamp and the heartbeats of nodes 1 to `through`, in one I/O: what a running
    /// node reads every interval.
    pub fn read_beacons(&self, through: NodeId) -> Result<Beacons, DbError> {
        self.check_node_id(through)?;
        let slots = 1 + through.0 as usize;
        let buf = self.read(self.layout.config_stamp_offset(), slots * self.layout.slot_bytes as usize)?;
        let stamp = ConfigStamp::decode(self.slot(&buf, 0), self.layout.config_stamp_offset());
        let heartbeats = NodeId::all(through.0)
            .map(|node| Heartbeat::decode(self.slot(&buf, node.0 as usize), self.layout.heartbeat_offset(node), node))
            .collect();
        Ok(Beacons { stamp, heartbeats })
    }

    /// Every node's heartbeat.
    pub fn read_heartbeats(&self) -> Result<Vec<Result<Heartbeat, CorruptRecord>>, DbError> {
        Ok(self.read_beacons(NodeId(self.max_nodes()))?.heartbeats)
    }

    /// A heartbeat need only be visible, not durable: it is stale after any crash anyway.
    pub fn write_heartbeat(&self, hb: &Heartbeat) -> Result<(), DbError> {
        self.check_node_id(hb.node)?;
        let data = padded(hb.encode(), self.layout.slot_bytes as usize);
        self.disk.write_visible_at(self.layout.heartbeat_offset(hb.node), &data)
    }

    // --- claims ---------------------------------------------------------------------------------

    pub fn read_claim_copies(&self) -> Result<Vec<Copies<Claim>>, DbError> {
        let l = &self.layout;
        self.read_slot_copies(l.claim_offset(NodeId(1), 0), Claim::decode, |n, c| l.claim_offset(n, c))
    }

    /// The newest valid claim of every node.
    pub fn read_claims(&self) -> Result<Vec<Result<Claim, CorruptRecord>>, DbError> {
        Ok(self.read_claim_copies()?.iter().map(|c| newest(c, |c| c.seq)).collect())
    }

    pub fn write_claim(&self, claim: &Claim) -> Result<(), DbError> {
        self.check_node_id(claim.node)?;
        let copy = (claim.seq % 2) as usize;
        self.write_slot(self.layout.claim_offset(claim.node, copy), claim.encode())
    }

    // --- cluster state --------------------------------------------------------------------------

    /// All four copies; `Ok(None)` for a copy never written.
    pub fn read_cluster_state_copies(&self) -> Result<Vec<Result<Option<ClusterState>, CorruptRecord>>, DbError> {
        let buf = self.read(
            self.layout.cluster_state_offset(0),
            CLUSTER_STATE_COPIES as usize * CLUSTER_STATE_COPY_BYTES as usize,
        )?;
        Ok((0..CLUSTER_STATE_COPIES as usize)
            .map(|copy| {
                let at = copy * CLUSTER_STATE_COPY_BYTES as usize;
                let record = &buf[at..at + CLUSTER_STATE_RECORD_BYTES_MAX];
                ClusterState::decode(record, self.layout.cluster_state_offset(copy), copy, self.max_nodes())
            })
            .collect())
    }

    /// The newest valid cluster state by (epoch, seq), if any was written.
    pub fn read_cluster_state(&self) -> Result<Option<ClusterState>, DbError> {
        Ok(self
            .read_cluster_state_copies()?
            .into_iter()
            .filter_map(|c| c.ok().flatten())
            .max_by_key(|s| (s.epoch, s.seq)))
    }

    /// The cluster state a heartbeat advertises, read from its copy in one I/O of its length.
    /// A copy that holds another epoch, or an older sequence, is not the advertised state: it
    /// is reported as such (a newer sequence of the same epoch is the master's next write).
    pub fn read_cluster_state_at(&self, at: StateRef) -> Result<Result<ClusterState, CorruptRecord>, DbError> {
        let off = self.layout.cluster_state_offset(at.copy());
        let len =
            if valid_cluster_state_len(at.bytes as usize) { at.bytes as usize } else { CLUSTER_STATE_RECORD_BYTES };
        let buf = self.read(off, len)?;
        let wrong = |what: String| CorruptRecord {
            kind: RecordKind::ClusterState,
            offset: off,
            problem: Problem::Invalid(what),
        };
        Ok(match ClusterState::decode(&buf, off, at.copy(), self.max_nodes()) {
            Ok(Some(s)) if s.epoch == at.epoch && s.seq >= at.seq => Ok(s),
            Ok(Some(s)) => Err(wrong(format!(
                "holds epoch {} sequence {} where epoch {} sequence {} was advertised",
                s.epoch, s.seq, at.epoch, at.seq
            ))),
            Ok(None) => Err(CorruptRecord { kind: RecordKind::ClusterState, offset: off, problem: Problem::Blank }),
            Err(e) => Err(e),
        })
    }

    /// Writes the state to both copies of its epoch's parity, its own copy first (see
    /// [`cluster_state_copies`]).
    pub fn write_cluster_state(&self, state: &ClusterState) -> Result<(), DbError> {
        let record = state.encode();
        let first = state.copy();
        let second = cluster_state_copies(state.epoch).into_iter().find(|c| *c != first).expect("two copies");
        self.disk.write_at(self.layout.cluster_state_offset(first), &record)?;
        self.disk.write_at(self.layout.cluster_state_offset(second), &record)
    }

    // --- node requests and acknowledgements -------------------------------------------------------

    fn read_node_records<T>(
        &self,
        first: u64,
        count: usize,
        decode: impl Fn(&[u8], u64, NodeId, usize) -> Result<T, CorruptRecord>,
        offset: impl Fn(NodeId, usize) -> u64,
        nodes: impl Iterator<Item = NodeId>,
    ) -> Result<Vec<Copies<T>>, DbError> {
        let buf = self.read(first, count * 2 * NODE_RECORD_BYTES)?;
        Ok(nodes
            .enumerate()
            .map(|(i, node)| {
                [0usize, 1].map(|copy| {
                    let at = (i * 2 + copy) * NODE_RECORD_BYTES;
                    decode(&buf[at..at + NODE_RECORD_BYTES], offset(node, copy), node, copy)
                })
            })
            .collect())
    }

    /// Both copies of every node's request record, in one I/O.
    pub fn read_request_copies(&self) -> Result<Vec<Copies<NodeRequest>>, DbError> {
        let l = &self.layout;
        let n = self.max_nodes();
        self.read_node_records(
            l.node_request_offset(NodeId(1), 0),
            n as usize,
            NodeRequest::decode,
            |n, c| l.node_request_offset(n, c),
            NodeId::all(n),
        )
    }

    /// Both copies of every node's acknowledgement record, in one I/O.
    pub fn read_ack_copies(&self) -> Result<Vec<Copies<AckRecord>>, DbError> {
        let l = &self.layout;
        let n = self.max_nodes();
        self.read_node_records(
            l.ack_offset(NodeId(1), 0),
            n as usize,
            AckRecord::decode,
            |n, c| l.ack_offset(n, c),
            NodeId::all(n),
        )
    }

    /// Both copies of one node's request record.
    pub fn read_request_copies_of(&self, node: NodeId) -> Result<Copies<NodeRequest>, DbError> {
        self.check_node_id(node)?;
        let l = &self.layout;
        let mut v = self.read_node_records(
            l.node_request_offset(node, 0),
            1,
            NodeRequest::decode,
            |n, c| l.node_request_offset(n, c),
            std::iter::once(node),
        )?;
        Ok(v.remove(0))
    }

    /// Both copies of one node's acknowledgement record.
    pub fn read_ack_copies_of(&self, node: NodeId) -> Result<Copies<AckRecord>, DbError> {
        self.check_node_id(node)?;
        let l = &self.layout;
        let mut v = self.read_node_records(
            l.ack_offset(node, 0),
            1,
            AckRecord::decode,
            |n, c| l.ack_offset(n, c),
            std::iter::once(node),
        )?;
        Ok(v.remove(0))
    }

    /// The copy of `node`'s request record that sequence `seq` lives in.
    pub fn read_request_at(&self, node: NodeId, seq: u64) -> Result<Result<NodeRequest, CorruptRecord>, DbError> {
        self.check_node_id(node)?;
        let copy = (seq % 2) as usize;
        let off = self.layout.node_request_offset(node, copy);
        Ok(NodeRequest::decode(&self.read(off, NODE_RECORD_BYTES)?, off, node, copy))
    }

    /// The copy of `node`'s acknowledgement record that sequence `seq` lives in.
    pub fn read_ack_at(&self, node: NodeId, seq: u64) -> Result<Result<AckRecord, CorruptRecord>, DbError> {
        self.check_node_id(node)?;
        let copy = (seq % 2) as usize;
        let off = self.layout.ack_offset(node, copy);
        Ok(AckRecord::decode(&self.read(off, NODE_RECORD_BYTES)?, off, node, copy))
    }

    pub fn write_request(&self, request: &NodeRequest) -> Result<(), DbError> {
        self.check_node_id(request.node)?;
        let off = self.layout.node_request_offset(request.node, (request.seq % 2) as usize);
        self.disk.write_at(off, &padded(request.encode(), NODE_RECORD_BYTES))
    }

    pub fn write_acks(&self, acks: &AckRecord) -> Result<(), DbError> {
        self.check_node_id(acks.node)?;
        let off = self.layout.ack_offset(acks.node, (acks.seq % 2) as usize);
        self.disk.write_at(off, &padded(acks.encode(), NODE_RECORD_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{open_disk, IoMode};
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A disk whose next write lands only partly: the first `keep` bytes, as a crash in the
    /// middle of a multi-sector (or, for mmap, mid-copy) write leaves it.
    struct TornDisk {
        inner: Box<dyn Disk>,
        keep: Arc<AtomicUsize>,
    }

    impl Disk for TornDisk {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
            match self.keep.swap(usize::MAX, Ordering::SeqCst) {
                usize::MAX => self.inner.write_at(offset, data),
                keep => {
                    let mut torn = vec![0u8; data.len()];
                    self.inner.read_at(offset, &mut torn)?;
                    torn[..keep].copy_from_slice(&data[..keep]);
                    self.inner.write_at(offset, &torn)
                }
            }
        }
        fn len_bytes(&self) -> u64 {
            self.inner.len_bytes()
        }
        fn sector_bytes(&self) -> u32 {
            self.inner.sector_bytes()
        }
        fn describe(&self) -> String {
            "torn".into()
        }
    }

    fn params() -> FormatParams {
        FormatParams {
            cluster_name: "t".into(),
            max_nodes: 4,
            timing: Timing::default(),
            cluster_uuid: [7; 16],
            link_timeout_ms: LINK_TIMEOUT_MS_DEFAULT,
            cluster_key: [9; CLUSTER_KEY_BYTES],
            now_unix_ms: 1,
        }
    }

    fn file(dir: &tempfile::TempDir, size: u64) -> std::path::PathBuf {
        let p = dir.path().join("disk");
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    #[test]
    fn format_then_open_on_both_back_ends() {
        for mode in [IoMode::Mmap, IoMode::Direct] {
            let dir = tempfile::tempdir().unwrap();
            let p = file(&dir, 16 << 20);
            let db = MembershipDb::format(open_disk(&p, mode, true).unwrap(), &params()).unwrap();
            db.write_heartbeat(&Heartbeat { state: HeartbeatState::Up, counter: 9, ..Heartbeat::never(NodeId(2)) })
                .unwrap();
            assert_eq!(db.read_config_stamp().unwrap().unwrap().table_generation, 1);
            assert_eq!(db.bump_table_generation(5).unwrap(), 2);
            drop(db);
            let db = MembershipDb::open(open_disk(&p, mode, false).unwrap()).unwrap();
            assert_eq!(db.superblock().cluster_name, "t");
            assert_eq!(db.read_heartbeats().unwrap()[1].as_ref().unwrap().counter, 9);
            assert!(db.read_node_table().unwrap().iter().all(|e| e.as_ref().is_ok_and(|e| !e.present)));
            assert!(db.read_claims().unwrap().iter().all(|c| c.as_ref().is_ok_and(|c| c.epoch == 0)));
            assert_eq!(db.read_cluster_state().unwrap(), None);
            let beacons = db.read_beacons(NodeId(2)).unwrap();
            assert_eq!(beacons.stamp.unwrap().table_generation, 2);
            assert_eq!(beacons.heartbeats.len(), 2);
            assert_eq!(beacons.heartbeats[1].as_ref().unwrap().counter, 9);
        }
    }

    #[test]
    fn too_small_disk_is_refused_with_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, 1 << 20);
        match MembershipDb::format(open_disk(&p, IoMode::Mmap, true).unwrap(), &params()) {
            Err(DbError::TooSmall { minimum, .. }) => assert_eq!(minimum, Layout::new(4, 512).end()),
            other => panic!("expected TooSmall, got {:?}", other.err()),
        }
        assert!(std::fs::read(&p).unwrap().iter().all(|&b| b == 0), "a refused format wrote nothing");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A torn write of a double-buffered record never loses the previous good copy: the
        /// reader gets either the previous record or the new one, never an error.
        #[test]
        fn torn_double_buffered_writes_keep_the_previous_copy(keep in 0usize..512, updates in 1usize..6) {
            let dir = tempfile::tempdir().unwrap();
            let p = file(&dir, 16 << 20);
            let keep_next = Arc::new(AtomicUsize::new(usize::MAX));
            let disk = TornDisk { inner: open_disk(&p, IoMode::Mmap, true).unwrap(), keep: keep_next.clone() };
            let db = MembershipDb::format(Box::new(disk), &params()).unwrap();
            let node = NodeId(3);

            // Node table entry.
            let mut last_good = None;
            for i in 0..updates {
                let copies = db.read_node_entry_copies().unwrap();
                let seq = db.next_node_entry_seq(&copies[node.index()]);
                let e = NodeEntry { present: true, name: format!("n{i}"), ..NodeEntry::absent(node, seq) };
                db.write_node_entry(&e).unwrap();
                last_good = Some(e);
            }
            let copies = db.read_node_entry_copies().unwrap();
            let seq = db.next_node_entry_seq(&copies[node.index()]);
            keep_next.store(keep, Ordering::SeqCst);
            db.write_node_entry(&NodeEntry { present: true, name: "torn".into(), ..NodeEntry::absent(node, seq) }).unwrap();
            let read = db.read_node_table().unwrap()[node.index()].clone().unwrap();
            prop_assert!(read == last_good.unwrap() || read.name == "torn");

            // Claim block.
            let mut own = db.read_claims().unwrap()[node.index()].clone().unwrap();
            for epoch in 1..=updates as u64 {
                own = Claim { seq: own.seq + 1, epoch, mbal: 300, ..own };
                db.write_claim(&own).unwrap();
            }
            keep_next.store(keep, Ordering::SeqCst);
            db.write_claim(&Claim { seq: own.seq + 1, epoch: 99, ..own.clone() }).unwrap();
            let read = db.read_claims().unwrap()[node.index()].clone().unwrap();
            prop_assert!(read == own || read.epoch == 99);

            // Cluster state.
            let s1 = ClusterState { seq: 1, ..ClusterState::new(4, 5, node, 2) };
            db.write_cluster_state(&s1).unwrap();
            keep_next.store(keep * 8, Ordering::SeqCst);
            db.write_cluster_state(&ClusterState { seq: 2, ..s1.clone() }).unwrap();
            let read = db.read_cluster_state().unwrap().unwrap();
            prop_assert!(read == s1 || read.seq == 2);
        }
    }

    #[test]
    fn superblock_survives_one_damaged_copy_and_not_two() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(&dir, 16 << 20);
        drop(MembershipDb::format(open_disk(&p, IoMode::Mmap, true).unwrap(), &params()).unwrap());
        let disk = open_disk(&p, IoMode::Mmap, true).unwrap();
        disk.write_at(0, &[0xAB; 512]).unwrap();
        let copies = read_superblocks(disk.as_ref()).unwrap();
        assert_eq!(copies[0].as_ref().unwrap_err().offset, 0);
        assert!(MembershipDb::open(disk).is_ok());
        let disk = open_disk(&p, IoMode::Mmap, true).unwrap();
        disk.write_at(4096, &[0xCD; 512]).unwrap();
        assert!(matches!(MembershipDb::open(disk), Err(DbError::NotFormatted(_))));
    }
}
