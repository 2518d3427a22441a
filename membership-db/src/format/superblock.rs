//! The superblock: the cluster's identity, geometry, timing, interconnect key and link
//! timeout, and region table. Written twice
//! (blocks 0 and 1) by `sdc format`, never afterwards.

use super::*;
use crate::codec::{Decoder, Encoder};
use crate::error::{CorruptRecord, RecordKind};

const MAGIC_SUPERBLOCK: u32 = u32::from_le_bytes(*b"SDSB");

/// The cluster's identity, geometry and timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub cluster_uuid: [u8; 16],
    pub cluster_name: String,
    pub max_nodes: u16,
    pub slot_bytes: u32,
    pub disk_bytes: u64,
    pub timing: Timing,
    /// Two joined nodes whose interconnect link has been broken this long (on the master's
    /// clock) are arbitrated by the master: see [`validate_link_timeout`]. Kept beside
    /// [`Timing`] rather than in it: `Timing` is the liveness and fencing rule, which this
    /// value takes no part in.
    pub link_timeout_ms: u32,
    /// The secret the interconnect authenticates peers with (only hosts that read the disk
    /// have it). Never printed: see [`key_fingerprint`].
    pub cluster_key: [u8; CLUSTER_KEY_BYTES],
    pub created_unix_ms: u64,
}

impl Superblock {
    pub fn layout(&self) -> Layout {
        Layout::new(self.max_nodes, self.slot_bytes)
    }

    pub fn uuid_string(&self) -> String {
        uuid_string(&self.cluster_uuid)
    }

    /// The cluster key's fingerprint, for display (the key itself is never shown).
    pub fn key_fingerprint(&self) -> String {
        key_fingerprint(&self.cluster_key)
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
        e.u32(self.link_timeout_ms);
        e.bytes(&self.cluster_key);
        e.u64(self.created_unix_ms);
        let layout = self.layout();
        e.u8(layout.regions.len() as u8);
        for r in layout.regions {
            e.u8(r.kind as u8);
            e.u16(r.version);
            e.u64(r.offset);
            e.u64(r.len);
        }
        e.seal();
        buf
    }

    pub fn decode(buf: &[u8], offset: u64) -> Result<Superblock, CorruptRecord> {
        let mut d = Decoder::record(
            &buf[..RECORD_BYTES.min(buf.len())],
            RecordKind::Superblock,
            offset,
            MAGIC_SUPERBLOCK,
            FORMAT_VERSION,
        )?;
        let generation = d.u64()?;
        let cluster_uuid: [u8; 16] = d.array()?;
        let cluster_name = d.text(NAME_BYTES_MAX + 1, "cluster name")?;
        let max_nodes = d.u16()?;
        let slot_bytes = d.u32()?;
        let disk_bytes = d.u64()?;
        let timing = Timing { heartbeat_ms: d.u32()?, dead_ms: d.u32()?, fence_ms: d.u32()? };
        let link_timeout_ms = d.u32()?;
        let cluster_key: [u8; CLUSTER_KEY_BYTES] = d.array()?;
        let created_unix_ms = d.u64()?;
        if !(1..=NODES_MAX).contains(&max_nodes) {
            return Err(d.invalid(format!("max nodes {max_nodes} out of range 1 to {NODES_MAX}")));
        }
        if !valid_slot_bytes(slot_bytes) {
            return Err(d.invalid(format!("slot size {slot_bytes}")));
        }
        timing.validate().map_err(|e| d.invalid(format!("timing: {e}")))?;
        validate_link_timeout(link_timeout_ms, &timing).map_err(|e| d.invalid(format!("timing: {e}")))?;
        validate_cluster_name(&cluster_name).map_err(|e| d.invalid(e))?;
        let expected = Layout::new(max_nodes, slot_bytes);
        let count = d.u8()? as usize;
        if count != expected.regions.len() {
            return Err(d.invalid(format!("{count} regions, expected {}", expected.regions.len())));
        }
        for want in expected.regions {
            let kind = d.u8()?;
            let version = d.u16()?;
            let (off, len) = (d.u64()?, d.u64()?);
            if RegionKind::from_u8(kind) == Some(want.kind) && version > REGION_VERSION {
                return Err(d.invalid(format!(
                    "the {} region is of version {version}, newer than this sdc supports ({REGION_VERSION}); upgrade sdc",
                    want.kind.name()
                )));
            }
            if RegionKind::from_u8(kind) != Some(want.kind) || off != want.offset || len != want.len {
                return Err(d.invalid(format!(
                    "region table entry {kind} does not match the layout of format version {FORMAT_VERSION}"
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
            link_timeout_ms,
            cluster_key,
            created_unix_ms,
        })
    }
}

/// A UUID as operators read it: `8-4-4-4-12` hexadecimal digits.
pub fn uuid_string(uuid: &[u8; 16]) -> String {
    let h: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
