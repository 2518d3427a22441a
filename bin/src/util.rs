//! Helpers shared by the commands: opening the database, the admin lock, reading a snapshot,
//! and time formatting.

use crate::cli::DiskArgs;
use crate::Failure;
use membership_db::db::{read_superblocks, MembershipDb};
use membership_db::format::NodeId;
use membership_db::io::open_disk;
use membership_db::status::Snapshot;
use membership_db::time::unix_ms;
use std::fs::File;
use std::path::Path;
use std::time::Duration;

pub fn open_db(args: &DiskArgs, writable: bool) -> Result<MembershipDb, Failure> {
    let disk = open_disk(&args.disk, args.io, writable)?;
    Ok(MembershipDb::open(disk)?)
}

/// Serialises commands that rewrite the node table or the whole disk on this host: an
/// exclusive lock on the disk's file, held until the returned handle drops.
pub fn admin_lock(path: &Path) -> Result<File, Failure> {
    let f = File::open(path).map_err(|e| Failure::from(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Failure::from(format!("{} is being changed by another sdc command; try again", path.display())))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Failure::from(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// Reads what status needs, with two heartbeat reads a little over one heartbeat interval
/// apart (bounded to one second) so that a moving heartbeat is seen moving.
pub fn snapshot(db: &MembershipDb) -> Result<Snapshot, Failure> {
    let first = db.read_heartbeats()?;
    let gap = (db.superblock().timing.heartbeat_ms as u64 * 3 / 2).clamp(10, 1000);
    std::thread::sleep(Duration::from_millis(gap));
    let beacons = db.read_beacons(membership_db::format::NodeId(db.max_nodes()))?;
    Ok(Snapshot {
        superblock: db.superblock().clone(),
        superblock_copies: read_superblocks(db.disk())?.to_vec(),
        stamp: beacons.stamp,
        node_table: db.read_node_entry_copies()?,
        heartbeats_first: first,
        heartbeats: beacons.heartbeats,
        claims: db.read_claim_copies()?,
        cluster_states: db.read_cluster_state_copies()?,
        now_unix_ms: unix_ms(),
    })
}

pub fn node_id(db: &MembershipDb, id: u16) -> Result<NodeId, Failure> {
    let node = NodeId(id);
    db.check_node_id(node)?;
    Ok(node)
}

pub use membership_db::time::utc;

/// Prints JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(value).map_err(|e| Failure::from(format!("JSON output: {e}")))?;
    println!("{s}");
    Ok(())
}

/// Writes one log line to stderr in a single `write(2)`: the watchdog and the signal handler
/// write their lines with raw writes, and a line `eprintln!` wrote in pieces could be split
/// by one of them (a log reader then misses the fence line).
pub fn log_line(line: &str) {
    use std::io::Write;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    // Nowhere to report a failed write to stderr.
    let _ = std::io::stderr().lock().write_all(&buf);
}
