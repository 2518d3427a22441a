//! `sdc format`: create a new membership database.
//!
//! Every check happens before the first byte is written: an existing cluster without
//! `--force`, live nodes even with it, bad timings, a disk too small. A refused format changes
//! nothing on the disk.

use crate::cli::FormatArgs;
use crate::cmd_status::read_status;
use crate::util::admin_lock;
use crate::{exit, fail, CmdResult, Failure};
use membership_db::db::{probe, slot_bytes_for, FormatParams, MembershipDb, Probe};
use membership_db::format::{
    human_bytes, parse_size, validate_cluster_name, validate_link_timeout, Layout, Timing, BLOCK_BYTES,
    CLUSTER_KEY_BYTES, FORMAT_VERSION, NODES_MAX,
};
use membership_db::io::open_disk;
use membership_db::time::unix_ms;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;

fn random_uuid() -> Result<[u8; 16], Failure> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Failure::from(format!("cannot read /dev/urandom for the cluster UUID: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok(b)
}

/// The cluster key: 32 random bytes the interconnect authenticates peers with.
fn random_key() -> Result<[u8; CLUSTER_KEY_BYTES], Failure> {
    let mut b = [0u8; CLUSTER_KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Failure::from(format!("cannot read /dev/urandom for the cluster key: {e}")))?;
    Ok(b)
}

pub fn run(a: FormatArgs) -> CmdResult {
    let timing = Timing { heartbeat_ms: a.heartbeat_ms, dead_ms: a.dead_ms, fence_ms: a.fence_ms };
    timing.validate()?;
    validate_link_timeout(a.link_timeout_ms, &timing)?;
    validate_cluster_name(&a.cluster)?;
    if !(1..=NODES_MAX).contains(&a.max_nodes) {
        return fail(format!("--max-nodes {} is out of range 1 to {NODES_MAX}", a.max_nodes));
    }
    let size = a.size.as_deref().map(parse_size).transpose()?;
    let path = &a.disk.disk;

    // Create the file if asked to; every other check comes first.
    let mut created = false;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(size) = size else {
                return fail(format!("{} does not exist; give --size to create it as a file", path.display()));
            };
            let minimum = Layout::new(a.max_nodes, 512).end();
            if size < minimum {
                return fail(format!(
                    "--size {} is too small: {} nodes need at least {minimum} bytes ({})",
                    human_bytes(size),
                    a.max_nodes,
                    human_bytes(minimum)
                ));
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| Failure::from(format!("cannot create {}: {e}", path.display())))?;
            f.set_len(size).map_err(|e| Failure::from(format!("cannot size {}: {e}", path.display())))?;
            created = true;
        }
        Err(e) => return fail(format!("cannot open {}: {e}", path.display())),
        Ok(meta) if meta.file_type().is_block_device() && size.is_some() => {
            return fail(format!("{} is a block device: its size is fixed, leave out --size", path.display()));
        }
        Ok(meta) if meta.is_file() && meta.len() == 0 && size.is_none() => {
            return fail(format!("{} is empty (0 bytes); give --size to make it a disk of that size", path.display()));
        }
        Ok(meta) if meta.is_file() && size.is_some_and(|s| s < meta.len()) => {
            return fail(format!(
                "{} is already {} bytes; --size {} would shrink it (leave out --size to keep its size)",
                path.display(),
                meta.len(),
                a.size.as_deref().unwrap_or_default()
            ));
        }
        Ok(_) => {}
    }
    let result = format_existing(&a, timing, size, created);
    if result.is_err() && created {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn format_existing(a: &FormatArgs, timing: Timing, size: Option<u64>, created: bool) -> CmdResult {
    let path = &a.disk.disk;
    let _lock = admin_lock(path)?;
    // A file too small to hold the superblocks holds no cluster: nothing to look at.
    let holds_superblocks = std::fs::metadata(path).is_ok_and(|m| !m.is_file() || m.len() >= 2 * BLOCK_BYTES);
    if !created && holds_superblocks {
        // Look before touching anything.
        let disk = open_disk(path, a.disk.io, false)?;
        match probe(disk.as_ref())? {
            Probe::Damaged(errors) if !a.force => {
                let why = errors.first().map(|e| e.to_string()).unwrap_or_default();
                return fail(format!(
                    "{} holds a damaged cluster ({why}); use --force to overwrite it, after stopping every node (with no readable superblock, running nodes cannot be checked)",
                    path.display()
                ));
            }
            Probe::Formatted(sb) if !a.force => {
                return fail(format!(
                    "{} already holds cluster {:?} (uuid {}, {} node slots); use --force to overwrite it",
                    path.display(),
                    sb.cluster_name,
                    sb.uuid_string(),
                    sb.max_nodes
                ));
            }
            Probe::Formatted(_) => {
                if let Ok(db) = MembershipDb::open(disk) {
                    let status = read_status(&db)?;
                    if let Some(n) = status.nodes.iter().find(|n| n.live) {
                        return fail(format!(
                            "node {} ({}) is live; stop every node before reformatting",
                            n.node, n.name
                        ));
                    }
                }
            }
            Probe::OlderFormat { found } if !a.force => {
                return fail(format!(
                    "{} holds a cluster of format version {found}, older than this sdc reads ({FORMAT_VERSION}); stop every node and use --force to reformat it",
                    path.display()
                ));
            }
            Probe::NewerFormat { found } if !a.force => {
                return fail(format!(
                    "{} holds a cluster of format version {found}, newer than this sdc ({FORMAT_VERSION}); use --force to overwrite it",
                    path.display()
                ));
            }
            _ => {}
        }
    }
    if !created {
        if let Some(size) = size {
            let meta = std::fs::metadata(path)?;
            if meta.is_file() && size > meta.len() {
                let minimum = Layout::new(a.max_nodes, 512).end();
                if size < minimum {
                    return fail(format!(
                        "--size {} is too small: at least {}",
                        human_bytes(size),
                        human_bytes(minimum)
                    ));
                }
                std::fs::OpenOptions::new().write(true).open(path)?.set_len(size)?;
            }
        }
    }
    let disk = open_disk(path, a.disk.io, true)?;
    let described = disk.describe();
    let slot = slot_bytes_for(disk.sector_bytes())?;
    let minimum = Layout::new(a.max_nodes, slot).end();
    if disk.len_bytes() < minimum {
        return fail(format!(
            "disk too small: {} bytes; {} nodes need at least {minimum} bytes ({})",
            disk.len_bytes(),
            a.max_nodes,
            human_bytes(minimum)
        ));
    }
    let params = FormatParams {
        cluster_name: a.cluster.clone(),
        max_nodes: a.max_nodes,
        timing,
        link_timeout_ms: a.link_timeout_ms,
        cluster_uuid: random_uuid()?,
        cluster_key: random_key()?,
        now_unix_ms: unix_ms(),
    };
    let db = MembershipDb::format(disk, &params)?;
    let sb = db.superblock();
    println!(
        "formatted {}: cluster {} (uuid {}), {} node slots of {} bytes, {}; heartbeat {} ms, dead {} ms, fence {} ms, link timeout {} ms; cluster key fingerprint {}; {}",
        path.display(),
        sb.cluster_name,
        sb.uuid_string(),
        sb.max_nodes,
        sb.slot_bytes,
        human_bytes(sb.disk_bytes),
        timing.heartbeat_ms,
        timing.dead_ms,
        timing.fence_ms,
        sb.link_timeout_ms,
        sb.key_fingerprint(),
        described
    );
    if described.starts_with("mmap") {
        eprintln!(
            "note: mmap I/O is coherent only between processes of one host; use --io direct when hosts share the disk"
        );
    }
    Ok(exit::OK)
}
