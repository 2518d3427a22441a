//! The driver: runs a [`MemberCore`] against a real disk, a real clock and the node's
//! registered subsystems. It performs one action at a time, hands notifications to the
//! subsystems' queues and their answers back to the core, sleeps until the next deadline, and
//! keeps the fence watchdog informed of the deadline.

use crate::api::Registry;
use crate::member::{Action, Completion, MemberCore, MemberEvent, MemberExit};
use membership_db::daemon::{monotonic_ms, perform, unix_ms, FenceWatchdog, POLL_SLEEP_MS_MAX};
use membership_db::db::MembershipDb;
use membership_db::error::DbError;
use membership_db::format::{newest, Millis, NodeId};
use membership_db::node::{IoFailure, NodeConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn failure(e: DbError) -> IoFailure {
    IoFailure(e.to_string())
}

/// Performs one action of a [`MemberCore`] against the disk (the simulator runs this too).
pub fn perform_member(db: &MembershipDb, action: Action) -> Completion {
    match action {
        Action::Node(a) => Completion::Node(perform(db, a)),
        Action::ReadClusterState => Completion::ClusterState(db.read_cluster_state().map_err(failure)),
        Action::WriteClusterState(mut s) => {
            s.written_unix_ms = unix_ms();
            Completion::Written(db.write_cluster_state(&s).map_err(failure))
        }
        Action::ReadRequests => Completion::Requests(db.read_requests().map_err(failure)),
        Action::ReadAcks => Completion::Acks(db.read_acks().map_err(failure)),
        Action::WriteRequest(r) => Completion::Written(db.write_request(&r).map_err(failure)),
        Action::WriteAcks(a) => Completion::Written(db.write_acks(&a).map_err(failure)),
        Action::ReadNodeTable => Completion::NodeTable(db.read_node_table().map_err(failure)),
    }
}

/// The sequence numbers of `node`'s newest request and acknowledgement records, so that this
/// incarnation's first writes go to the other copies.
pub fn record_seqs(db: &MembershipDb, node: NodeId) -> Result<(u64, u64), DbError> {
    let requests = db.read_request_copies()?;
    let acks = db.read_ack_copies()?;
    let request_seq = newest(&requests[node.index()], |r| r.seq).map_or(1, |r| r.seq);
    let acks_seq = newest(&acks[node.index()], |r| r.seq).map_or(1, |r| r.seq);
    Ok((request_seq, acks_seq))
}

/// Runs the node until it stops, is refused or forced out, or fences itself. `leave` is set by
/// the signal handler (SIGTERM, SIGINT) and asks for a graceful leave.
pub fn run(
    db: &MembershipDb,
    config: NodeConfig,
    registry: &Registry,
    leave: &AtomicBool,
    log: &mut dyn FnMut(&MemberEvent),
) -> Result<MemberExit, DbError> {
    let check_ms = (config.timing.heartbeat_ms as Millis / 4).clamp(1, 25);
    let node = config.node;
    let watchdog = FenceWatchdog::start(
        check_ms,
        format!("sdc: node {node} FENCED: no heartbeat write has succeeded for fence-ms; stopping everything"),
    );
    let (request_seq, acks_seq) = record_seqs(db, node)?;
    let mut core = MemberCore::new(config, registry.specs(), request_seq, acks_seq, monotonic_ms());
    let mut leave_asked = false;
    loop {
        if leave.load(Ordering::Acquire) && !leave_asked {
            leave_asked = true;
            log(&MemberEvent::LeaveRequested { by_operator: false });
            core.request_leave();
        }
        while let Some(reply) = registry.try_reply() {
            core.handle_reply(reply.key, reply.nack);
        }
        while let Some(action) = core.poll_action(monotonic_ms()) {
            let completion = perform_member(db, action);
            core.handle_completion(monotonic_ms(), completion);
            watchdog.publish(core.fence_deadline());
            // Log what happened before the subsystems act on it, so logs read in order.
            while let Some(e) = core.poll_event() {
                log(&e);
            }
            while let Some(n) = core.poll_notification() {
                let layer = n.layer.clone();
                if !registry.deliver(n) {
                    log(&MemberEvent::IoFailed(format!(
                        "layer {layer} is not taking notifications (queue full or gone)"
                    )));
                }
            }
            while let Some(reply) = registry.try_reply() {
                core.handle_reply(reply.key, reply.nack);
            }
        }
        while let Some(e) = core.poll_event() {
            log(&e);
        }
        if let Some(exit) = core.exit() {
            watchdog.publish(None);
            return Ok(exit.clone());
        }
        watchdog.publish(core.fence_deadline());
        let now = monotonic_ms();
        let wait = core.next_deadline().saturating_sub(now).clamp(1, POLL_SLEEP_MS_MAX);
        std::thread::sleep(Duration::from_millis(wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership_db::daemon::EXIT_FENCED;
    use membership_db::db::FormatParams;
    use membership_db::format::Timing;
    use membership_db::io::{open_disk, Disk, IoMode};
    use std::sync::atomic::AtomicU64;

    /// A disk whose writes block forever once `hang_after` writes have been made: a lost SAN
    /// path, where the syscall never returns.
    struct HangingDisk {
        inner: Box<dyn Disk>,
        writes: AtomicU64,
        hang_after: u64,
    }

    impl Disk for HangingDisk {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
            if self.writes.fetch_add(1, Ordering::SeqCst) >= self.hang_after {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            self.inner.write_at(offset, data)
        }
        fn len_bytes(&self) -> u64 {
            self.inner.len_bytes()
        }
        fn sector_bytes(&self) -> u32 {
            self.inner.sector_bytes()
        }
        fn describe(&self) -> String {
            "hanging".into()
        }
    }

    const CHILD_ENV: &str = "SDC_TEST_HANGING_DISK_CHILD";
    const TIMING: Timing = Timing { heartbeat_ms: 50, dead_ms: 600, fence_ms: 300 };

    /// In the child: run a node whose disk hangs after a few seconds of heartbeats.
    fn child(dir: &str) -> ! {
        let path = std::path::Path::new(dir).join("disk");
        std::fs::File::create(&path).unwrap().set_len(16 << 20).unwrap();
        let params = FormatParams {
            cluster_name: "w".into(),
            max_nodes: 2,
            timing: TIMING,
            cluster_uuid: [1; 16],
            now_unix_ms: 0,
        };
        drop(MembershipDb::format(open_disk(&path, IoMode::Mmap, true).unwrap(), &params).unwrap());
        // 40 writes: acquisition, election, joining, and about a second of heartbeats.
        let disk = HangingDisk {
            inner: open_disk(&path, IoMode::Mmap, true).unwrap(),
            writes: AtomicU64::new(0),
            hang_after: 40,
        };
        let db = MembershipDb::open(Box::new(disk)).unwrap();
        let config = NodeConfig {
            node: NodeId(1),
            master_eligible: true,
            max_nodes: 2,
            timing: TIMING,
            eligible_nodes: 0b11,
            cluster_uuid: [1; 16],
            pid: std::process::id(),
            host: "test".into(),
        };
        let stop = AtomicBool::new(false);
        let exit = run(&db, config, &Registry::new(), &stop, &mut |e| eprintln!("child: {e:?}"));
        // Unreachable when the watchdog works: the main thread is stuck in write_at.
        eprintln!("child: run returned {exit:?}");
        std::process::exit(99)
    }

    #[test]
    fn watchdog_fences_while_the_main_thread_is_stuck_in_a_write() {
        if let Ok(dir) = std::env::var(CHILD_ENV) {
            child(&dir);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::tests::watchdog_fences_while_the_main_thread_is_stuck_in_a_write",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a broken watchdog leaves the child stuck in write_at forever.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let status = status.unwrap_or_else(|| panic!("the stuck node never fenced; stderr:\n{stderr}"));
        assert_eq!(status.code(), Some(EXIT_FENCED), "child stderr:\n{stderr}");
        assert!(stderr.contains("FENCED"), "child stderr:\n{stderr}");
        assert!(stderr.contains("BecameMaster"), "the node ran before the disk hung:\n{stderr}");
    }
}
