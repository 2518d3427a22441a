//! The simulated shared disk: one byte array that every node reaches through a path of its
//! own, on which faults are injected per node.
//!
//! Each node's [`NodePath`] implements the real [`Disk`] trait, so the nodes run the real
//! `MembershipDb` and the real encoders, decoders and checksums over it. A path can fail every
//! I/O with EIO (a bad HBA or cable), fail only the I/O that touches one region (a bad range of
//! the LUN: the node's heartbeats succeed while its records fail), lose the disk entirely (I/O
//! that never completes: the simulator holds the action and the node's watchdog must act), or
//! tear the write in flight when its node crashes (only a prefix of the sectors lands). Records
//! can also be damaged at rest ([`SharedDisk::damage`]).

use membership_db::error::DbError;
use membership_db::io::Disk;
use std::sync::{Arc, Mutex};

/// Sector size of the simulated disk; writes tear at sector boundaries.
pub const SECTOR_BYTES: usize = 512;

/// The bytes every node shares.
#[derive(Clone)]
pub struct SharedDisk(Arc<Mutex<Vec<u8>>>);

impl SharedDisk {
    pub fn new(bytes: u64) -> SharedDisk {
        SharedDisk(Arc::new(Mutex::new(vec![0u8; bytes as usize])))
    }

    /// Overwrites `bytes.len()` bytes at `offset`, as damage at rest (a bad sector, a stray
    /// write by another program).
    pub fn damage(&self, offset: u64, bytes: &[u8]) {
        let mut disk = self.0.lock().expect("single-threaded simulation");
        let end = (offset as usize + bytes.len()).min(disk.len());
        let n = end - offset as usize;
        disk[offset as usize..end].copy_from_slice(&bytes[..n]);
    }

    /// The crc32 of every byte: two runs of one seed end with the same disk.
    pub fn crc(&self) -> u32 {
        crc32fast::hash(&self.0.lock().expect("single-threaded simulation"))
    }
}

/// How a node's path to the disk behaves now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathFaults {
    /// Every I/O fails with EIO.
    pub eio: bool,
    /// I/O that touches this byte range fails with EIO.
    pub eio_range: Option<(u64, u64)>,
    /// The sectors that still land before the process dies (a crash in the middle of an
    /// action's writes, which are issued one after the other).
    pub tear_after_sectors: Option<usize>,
}

/// One node's path to the shared disk.
pub struct NodePath {
    disk: SharedDisk,
    faults: Arc<Mutex<PathFaults>>,
}

impl NodePath {
    pub fn new(disk: &SharedDisk, faults: Arc<Mutex<PathFaults>>) -> NodePath {
        NodePath { disk: disk.clone(), faults }
    }

    fn faults(&self) -> PathFaults {
        *self.faults.lock().expect("single-threaded simulation")
    }

    fn fails(&self, offset: u64, len: usize) -> bool {
        let f = self.faults();
        f.eio || f.eio_range.is_some_and(|(start, end)| offset < end && offset + len as u64 > start)
    }
}

fn eio(op: &'static str, offset: u64, len: usize) -> DbError {
    DbError::Io { op, offset, len, source: std::io::Error::from_raw_os_error(libc_eio()) }
}

const fn libc_eio() -> i32 {
    5 // EIO on every Unix
}

impl Disk for NodePath {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError> {
        if self.fails(offset, buf.len()) {
            return Err(eio("reading", offset, buf.len()));
        }
        let bytes = self.disk.0.lock().expect("single-threaded simulation");
        let end = offset as usize + buf.len();
        if end > bytes.len() {
            return Err(eio("reading", offset, buf.len()));
        }
        buf.copy_from_slice(&bytes[offset as usize..end]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
        let faults = self.faults();
        if self.fails(offset, data.len()) {
            return Err(eio("writing", offset, data.len()));
        }
        let mut bytes = self.disk.0.lock().expect("single-threaded simulation");
        let end = offset as usize + data.len();
        if end > bytes.len() {
            return Err(eio("writing", offset, data.len()));
        }
        let land = match faults.tear_after_sectors {
            // The process dies during this write: what lands of it is taken from the budget,
            // and the writes it would have made next (the mirror copy of a cluster state, say)
            // never happen.
            Some(sectors) => {
                let land = (sectors * SECTOR_BYTES).min(data.len());
                let left = sectors - land / SECTOR_BYTES;
                self.faults.lock().expect("single-threaded simulation").tear_after_sectors = Some(left);
                land
            }
            None => data.len(),
        };
        bytes[offset as usize..offset as usize + land].copy_from_slice(&data[..land]);
        Ok(())
    }

    fn len_bytes(&self) -> u64 {
        self.disk.0.lock().expect("single-threaded simulation").len() as u64
    }

    fn sector_bytes(&self) -> u32 {
        SECTOR_BYTES as u32
    }

    fn describe(&self) -> String {
        "simulated disk".into()
    }
}
