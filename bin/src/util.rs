//! Helpers shared by the commands: opening the database, the admin lock, reading a snapshot,
//! and time formatting.

use crate::cli::DiskArgs;
use crate::Failure;
use membership_db::daemon::unix_ms;
use membership_db::db::MembershipDb;
use membership_db::format::NodeId;
use membership_db::io::open_disk;
use membership_db::status::Snapshot;
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
    let states = db.read_cluster_state_copies()?;
    let gap = (db.superblock().timing.heartbeat_ms as u64 * 3 / 2).clamp(10, 1000);
    std::thread::sleep(Duration::from_millis(gap));
    Ok(Snapshot {
        superblock: db.superblock().clone(),
        node_table: db.read_node_table()?,
        heartbeats_first: first,
        heartbeats: db.read_heartbeats()?,
        claims: db.read_claims()?,
        cluster_state: states
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned().flatten())
            .max_by_key(|s| (s.epoch, s.seq)),
        cluster_state_corrupt: states.iter().filter_map(|c| c.as_ref().err().cloned()).collect(),
        now_unix_ms: unix_ms(),
    })
}

pub fn node_id(db: &MembershipDb, id: u16) -> Result<NodeId, Failure> {
    let node = NodeId(id);
    db.check_node_id(node)?;
    Ok(node)
}

/// `2026-11-24T05:01:02.345Z`
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Prints JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(value).map_err(|e| Failure::from(format!("JSON output: {e}")))?;
    println!("{s}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
