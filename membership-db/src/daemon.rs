//! Pieces of the daemon driver (whose loop is `manager::daemon`): the I/O of the node core's
//! actions, the fence message, and the **fence watchdog**. The driver's main thread can block
//! inside a read or write for as long as the disk likes (a lost SAN path, a suspended device),
//! so a separate thread watches the fence deadline the core publishes and ends the process
//! when it passes, whatever the main thread is doing. The watchdog does no I/O but one line to
//! stderr.

use crate::db::MembershipDb;
use crate::error::DbError;
use crate::format::{newest, Millis};
use crate::node::{Action, Completion, IoFailure};
use crate::time::{monotonic_ms, unix_ms, utc};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status of a node that fenced itself.
pub const EXIT_FENCED: i32 = 5;

/// The longest the driver sleeps between polls, so a stop request is seen promptly.
pub const POLL_SLEEP_MS_MAX: Millis = 20;

/// The one line a node says when it fences, whoever notices (the core, the watchdog thread, the
/// SIGBUS handler): `<utc> <prefix> FENCED: <why>; stopped acting and exiting`.
pub fn fence_line(prefix: &str, why: &str, at_unix_ms: u64) -> String {
    format!("{} {prefix} FENCED: {why}; stopped acting and exiting", utc(at_unix_ms))
}

/// Ends the process when the published fence deadline passes.
pub struct FenceWatchdog {
    deadline: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FenceWatchdog {
    /// Starts the watchdog thread; `prefix` is the log prefix of the node's lines.
    pub fn start(check_ms: Millis, prefix: String) -> Result<FenceWatchdog, std::io::Error> {
        let deadline = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (d, f) = (deadline.clone(), done.clone());
        let thread = std::thread::Builder::new().name("fence-watchdog".into()).spawn(move || {
            while !f.load(Ordering::Acquire) {
                let t = d.load(Ordering::Acquire);
                let now = monotonic_ms();
                if t != 0 && now >= t {
                    let since = now - t;
                    let why = format!(
                        "no heartbeat write has succeeded for fence-ms (+{since} ms; the disk is lost or stalled, and this thread found the main one stuck)"
                    );
                    let line = format!("{}\n", fence_line(&prefix, &why, unix_ms()));
                    // SAFETY: write(2) on stderr; the result does not matter, we exit next.
                    unsafe {
                        libc::write(2, line.as_ptr().cast(), line.len());
                        libc::_exit(EXIT_FENCED);
                    }
                }
                std::thread::sleep(Duration::from_millis(check_ms));
            }
        })?;
        Ok(FenceWatchdog { deadline, done, thread: Some(thread) })
    }

    /// Sets (or clears) the instant at which the process must be gone.
    pub fn publish(&self, deadline: Option<Millis>) {
        self.deadline.store(deadline.unwrap_or(0), Ordering::Release);
    }
}

impl Drop for FenceWatchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        self.deadline.store(0, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn failure(e: DbError) -> IoFailure {
    IoFailure(e.to_string())
}

/// Performs one action against the disk. `wall_ms` stamps the records written (display only;
/// the simulator passes its virtual time so that a seed's disk bytes replay exactly).
pub fn perform(db: &MembershipDb, action: Action, wall_ms: u64) -> Completion {
    match action {
        Action::ReadBeacons { through } => Completion::BeaconsRead(db.read_beacons(through).map_err(failure)),
        Action::ReadClaims => Completion::ClaimsRead(db.read_claim_copies().map_err(failure)),
        Action::WriteHeartbeat(mut hb) => {
            hb.written_unix_ms = wall_ms;
            Completion::Written(db.write_heartbeat(&hb).map_err(failure))
        }
        Action::WriteClaim(c) => Completion::Written(db.write_claim(&c).map_err(failure)),
        Action::ReadSuperblock => Completion::SuperblockRead(
            crate::db::read_superblocks(db.disk())
                .map(|copies| newest(&copies, |s| s.generation).ok().map(|s| s.cluster_uuid))
                .map_err(failure),
        ),
        Action::ReadNodeTable => Completion::NodeTableRead(db.read_node_table().map_err(failure)),
        Action::ReadClusterState(at) => Completion::ClusterStateRead(db.read_cluster_state_at(at).map_err(failure)),
        Action::ReadClusterStates => Completion::ClusterStatesRead(db.read_cluster_state_copies().map_err(failure)),
    }
}
