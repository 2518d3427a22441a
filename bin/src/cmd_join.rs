//! `sdc join`: the node daemon in the foreground.

use crate::cli::JoinArgs;
use crate::util::{node_id, open_db, utc};
use crate::{exit, fail, CmdResult, Failure};
use membership_db::daemon::{self, unix_ms};
use membership_db::format::HOST_BYTES_MAX;
use membership_db::node::{Exit, NodeConfig, Refusal};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGTERM and SIGINT; the daemon then leaves gracefully.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Release);
}

fn install_signal_handlers() -> Result<(), Failure> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev = unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return fail(format!("cannot install the handler for signal {sig}"));
        }
    }
    Ok(())
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut name = String::from_utf8_lossy(&buf[..end]).into_owned();
    while name.len() > HOST_BYTES_MAX {
        name.pop();
    }
    name
}

pub fn run(a: JoinArgs) -> CmdResult {
    let db = open_db(&a.disk, true)?;
    let node = node_id(&db, a.node)?;
    let table = db.read_node_table()?;
    let entry = match &table[node.index()] {
        Ok(e) if e.present => e.clone(),
        Ok(_) => {
            return fail(format!(
                "node {node} is not in the node table; add it with `sdc node add --node {node} --name NAME`"
            ))
        }
        Err(corrupt) => return fail(format!("the node table entry of node {node} is unreadable: {corrupt}")),
    };
    let eligible_nodes = table
        .iter()
        .flatten()
        .filter(|e| e.present && e.master_eligible)
        .fold(0u128, |bits, e| bits | 1u128 << e.node.index());
    let sb = db.superblock().clone();
    let config = NodeConfig {
        node,
        master_eligible: entry.master_eligible,
        max_nodes: sb.max_nodes,
        timing: sb.timing,
        eligible_nodes,
        cluster_uuid: sb.cluster_uuid,
        pid: std::process::id(),
        host: host_name(),
    };
    install_signal_handlers()?;
    let prefix = format!("sdc[{} node {node} {}]", sb.cluster_name, entry.name);
    eprintln!(
        "{} {prefix} starting on {} (heartbeat {} ms, dead {} ms, fence {} ms)",
        utc(unix_ms()),
        db.disk().describe(),
        sb.timing.heartbeat_ms,
        sb.timing.dead_ms,
        sb.timing.fence_ms
    );
    let exit = daemon::run(&db, config, &STOP, &mut |event| eprintln!("{} {prefix} {event}", utc(unix_ms())));
    match exit {
        Exit::Stopped => {
            eprintln!("{} {prefix} stopped; slot marked down", utc(unix_ms()));
            Ok(exit::OK)
        }
        Exit::Refused(Refusal::AlreadyRunning(why)) => Err(Failure { status: exit::ALREADY_RUNNING, message: why }),
        Exit::Refused(Refusal::Io(why)) => fail(why),
        Exit::Fenced(reason) => {
            eprintln!("{} {prefix} FENCED: {reason}; stopped acting and exiting", utc(unix_ms()));
            Ok(exit::FENCED)
        }
    }
}
