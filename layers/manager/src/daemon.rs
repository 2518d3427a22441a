//! The driver: runs a [`MemberCore`] against a real disk, a real clock and the node's
//! registered subsystems. It performs one action at a time, hands notifications to the
//! subsystems' queues and their answers back to the core, sleeps until the next deadline, and
//! keeps the fence watchdog informed of the deadline. Every loop is bounded: a stop request is
//! seen within a few milliseconds whatever the core asks for.

use crate::api::Registry;
use crate::member::{Action, Completion, MemberCore, MemberEvent, MemberExit, OwnRecords};
use membership_db::daemon::{perform, FenceWatchdog, POLL_SLEEP_MS_MAX};
use membership_db::db::MembershipDb;
use membership_db::error::DbError;
use membership_db::format::{Copies, Millis, NodeId, NodeSet};
use membership_db::node::{IoFailure, NodeConfig};
use membership_db::time::{monotonic_ms, unix_ms};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Actions performed between two looks at the stop flags and the subsystems' answers.
pub const ACTIONS_PER_LOOP_MAX: usize = 64;

fn failure(e: DbError) -> IoFailure {
    IoFailure(e.to_string())
}

/// Performs one action of a [`MemberCore`] against the disk (the simulator runs this too).
/// `wall_ms` stamps the records written, for display.
pub fn perform_member(db: &MembershipDb, action: Action, wall_ms: u64) -> Completion {
    match action {
        Action::Node(a) => Completion::Node(perform(db, a, wall_ms)),
        Action::ReadClusterState(at) => Completion::ClusterState(db.read_cluster_state_at(at).map_err(failure)),
        Action::ReadAllClusterStates => Completion::AllClusterStates(db.read_cluster_state_copies().map_err(failure)),
        Action::ReadAllRequests => Completion::AllRequests(db.read_request_copies().map_err(failure)),
        Action::ReadAllAcks => Completion::AllAcks(db.read_ack_copies().map_err(failure)),
        Action::ReadRequest { node, seq } => Completion::Request(db.read_request_at(node, seq).map_err(failure)),
        Action::ReadAcks { node, seq } => Completion::Acks(db.read_ack_at(node, seq).map_err(failure)),
        Action::WriteClusterState(mut s) => {
            s.written_unix_ms = wall_ms;
            Completion::Written(db.write_cluster_state(&s).map_err(failure))
        }
        Action::WriteRequest(r) => Completion::Written(db.write_request(&r).map_err(failure)),
        Action::WriteAcks(a) => Completion::Written(db.write_acks(&a).map_err(failure)),
    }
}

/// The sequence a node's next write of a double-buffered record should follow: one below it
/// lands the write on a damaged copy when there is one, never on the only valid copy.
fn base_seq<T>(copies: &Copies<T>, seq: impl Fn(&T) -> u64, advertised: u64) -> u64 {
    let mut base = copies.iter().flatten().map(&seq).max().unwrap_or(1).max(advertised);
    if let Some(damaged) = copies.iter().position(|c| c.is_err()) {
        if copies.iter().any(|c| c.is_ok()) && (base + 1) % 2 != damaged as u64 {
            base += 1;
        }
    }
    base
}

/// What `node`'s own records say before its daemon starts, and the highest incarnation they
/// show. A damaged record does not stop the daemon: its heartbeat's advertised sequence (or
/// the other copy) carries on.
pub fn own_records(db: &MembershipDb, node: NodeId, leave_requests: u64) -> Result<(OwnRecords, u64), DbError> {
    let requests = db.read_request_copies_of(node)?;
    let acks = db.read_ack_copies_of(node)?;
    let hb = db.read_beacons(node)?.heartbeats.pop().and_then(Result::ok);
    let (adv_request, adv_ack) = hb.as_ref().map_or((0, 0), |h| (h.request_seq, h.ack_seq));
    let request = requests.iter().flatten().max_by_key(|r| r.seq);
    let incarnation_floor = requests
        .iter()
        .flatten()
        .map(|r| r.incarnation)
        .chain(acks.iter().flatten().map(|a| a.incarnation))
        .max()
        .unwrap_or(0);
    let own = OwnRecords {
        request_seq: base_seq(&requests, |r| r.seq, adv_request),
        ack_seq: base_seq(&acks, |a| a.seq, adv_ack),
        // Unknown when both copies of the request record are lost: a leave the operator asked
        // for must not be lost, so the table's count is taken as not yet honoured (at worst
        // the node leaves once more, and its next daemon joins).
        leave_requests_seen: request.map_or(0, |r| r.leave_requests_seen),
        leave_requests,
    };
    Ok((own, incarnation_floor))
}

/// Runs the node until it stops, is refused or forced out, or fences itself. `stops` counts
/// the stop requests (SIGTERM, SIGINT): the first asks for a graceful leave, the second for a
/// stop at once. `prefix` starts the watchdog's fence line, as it starts every log line.
pub fn run(
    db: &MembershipDb,
    config: NodeConfig,
    registry: &Registry,
    own: OwnRecords,
    stops: &AtomicUsize,
    prefix: &str,
    reachable: &dyn Fn() -> Option<NodeSet>,
    log: &mut dyn FnMut(&MemberEvent),
) -> Result<MemberExit, DbError> {
    let check_ms = (config.timing.heartbeat_ms as Millis / 4).clamp(1, 25);
    let watchdog = FenceWatchdog::start(check_ms, prefix.to_string())
        .map_err(|e| DbError::InvalidArgument(format!("cannot start the fence watchdog thread: {e}")))?;
    let mut core = MemberCore::new(config, registry.specs(), own, monotonic_ms());
    let (mut leave_asked, mut stop_asked) = (false, false);
    loop {
        let stop_requests = stops.load(Ordering::Acquire);
        if stop_requests >= 1 && !leave_asked {
            leave_asked = true;
            log(&MemberEvent::LeaveRequested { by_operator: false });
            core.request_leave();
        }
        if stop_requests >= 2 && !stop_asked {
            stop_asked = true;
            core.request_stop_now();
        }
        while let Some(reply) = registry.try_reply() {
            core.handle_reply(reply.key, reply.nack);
        }
        core.set_reachable(monotonic_ms(), reachable());
        for _ in 0..ACTIONS_PER_LOOP_MAX {
            let Some(action) = core.poll_action(monotonic_ms()) else { break };
            let completion = perform_member(db, action, unix_ms());
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
        if let Some(exit) = core.exit().cloned() {
            if matches!(exit, MemberExit::ForcedOut(_)) {
                mark_fenced(db, &mut core, &watchdog, log);
            }
            watchdog.publish(None);
            return Ok(exit);
        }
        watchdog.publish(core.fence_deadline());
        let now = monotonic_ms();
        let wait = core.next_deadline().saturating_sub(now).clamp(1, POLL_SLEEP_MS_MAX);
        std::thread::sleep(Duration::from_millis(wait));
    }
}

/// A node forced out while alive: the notifications stop here (nothing more is delivered to
/// its subsystems, and the process ends when this returns), so it has stopped everything it
/// runs; its heartbeat is marked fenced, once, so that the survivors need not wait `dead_ms`
/// to recover what it held. While the write is in flight the watchdog still holds the fence
/// deadline: a write that hangs past it ends the process as a fence.
fn mark_fenced(db: &MembershipDb, core: &mut MemberCore, watchdog: &FenceWatchdog, log: &mut dyn FnMut(&MemberEvent)) {
    watchdog.publish(core.node().fence_deadline());
    let Some(action) = core.mark_fenced(monotonic_ms()) else { return };
    let result = match perform_member(db, action, unix_ms()) {
        Completion::Node(membership_db::node::Completion::Written(r)) => r.map_err(|e| e.0),
        other => Err(format!("unexpected completion {other:?}")),
    };
    log(&MemberEvent::MarkedFenced(result));
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership_db::daemon::EXIT_FENCED;
    use membership_db::db::FormatParams;
    use membership_db::format::{NodeSet, TableView, Timing};
    use membership_db::io::{open_disk, Disk, IoMode};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// What goes wrong with a [`FaultyDisk`]'s writes.
    enum WriteFault {
        /// Every write blocks forever once this many have been made: a lost SAN path, where
        /// the syscall never returns.
        HangAfter(u64),
        /// Every write touching this byte range fails with EIO: a bad range of a LUN.
        FailRange(u64, u64),
    }

    /// A disk (a real one underneath) whose writes go wrong as `fault` says; `writes` counts
    /// the writes attempted (`HangAfter`) or failed (`FailRange`).
    struct FaultyDisk {
        inner: Box<dyn Disk>,
        fault: WriteFault,
        writes: Arc<AtomicU64>,
    }

    impl Disk for FaultyDisk {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DbError> {
            self.inner.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
            match self.fault {
                WriteFault::HangAfter(n) => {
                    if self.writes.fetch_add(1, Ordering::SeqCst) >= n {
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                }
                WriteFault::FailRange(start, end) => {
                    if offset < end && offset + data.len() as u64 > start {
                        self.writes.fetch_add(1, Ordering::SeqCst);
                        let source = std::io::Error::from_raw_os_error(EIO);
                        return Err(DbError::Io { op: "writing", offset, len: data.len(), source });
                    }
                }
            }
            self.inner.write_at(offset, data)
        }
        fn write_visible_at(&self, offset: u64, data: &[u8]) -> Result<(), DbError> {
            self.write_at(offset, data)
        }
        fn len_bytes(&self) -> u64 {
            self.inner.len_bytes()
        }
        fn sector_bytes(&self) -> u32 {
            self.inner.sector_bytes()
        }
        fn describe(&self) -> String {
            "faulty".into()
        }
    }

    /// Linux's errno for an I/O error.
    const EIO: i32 = 5;

    /// A 16 MiB disk file at `path` formatted for two nodes; returns its layout.
    fn formatted(path: &std::path::Path) -> membership_db::format::Layout {
        std::fs::File::create(path).unwrap().set_len(16 << 20).unwrap();
        let params = FormatParams {
            cluster_name: "w".into(),
            max_nodes: 2,
            timing: TIMING,
            cluster_uuid: [1; 16],
            link_timeout_ms: membership_db::format::LINK_TIMEOUT_MS_DEFAULT,
            cluster_key: [9; membership_db::format::CLUSTER_KEY_BYTES],
            now_unix_ms: 0,
        };
        MembershipDb::format(open_disk(path, IoMode::Mmap, true).unwrap(), &params).unwrap().layout().clone()
    }

    const CHILD_ENV: &str = "SDC_TEST_HANGING_DISK_CHILD";

    /// Node 1 of a cluster of `n` master-eligible nodes, as `sdc join` configures it.
    fn test_config(n: u16) -> NodeConfig {
        NodeConfig {
            node: NodeId(1),
            max_nodes: n,
            timing: TIMING,
            cluster_uuid: [1; 16],
            table: TableView { present: NodeSet::all(n), eligible: NodeSet::all(n), unreadable: NodeSet::EMPTY },
            table_generation: 1,
            incarnation_floor: 0,
            pid: std::process::id(),
            host: "test".into(),
            link_timeout_ms: membership_db::format::LINK_TIMEOUT_MS_DEFAULT,
        }
    }
    const TIMING: Timing = Timing { heartbeat_ms: 50, dead_ms: 600, fence_ms: 300 };

    /// In the child: run a node whose disk hangs after a few seconds of heartbeats.
    fn child(dir: &str) -> ! {
        let path = std::path::Path::new(dir).join("disk");
        formatted(&path);
        // 40 writes: acquisition, election, joining, and about a second of heartbeats.
        let disk = FaultyDisk {
            inner: open_disk(&path, IoMode::Mmap, true).unwrap(),
            fault: WriteFault::HangAfter(40),
            writes: Arc::new(AtomicU64::new(0)),
        };
        let db = MembershipDb::open(Box::new(disk)).unwrap();
        let config = test_config(2);
        let stops = AtomicUsize::new(0);
        let exit = run(&db, config, &Registry::new(), OwnRecords::default(), &stops, "child", &|| None, &mut |e| {
            eprintln!("child: {e:?}")
        });
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
        // One fence line, in the format every fence line has: `<UTC> <prefix> FENCED: <why>`.
        let fenced =
            stderr.lines().find(|l| l.contains("FENCED")).unwrap_or_else(|| panic!("no FENCED line:\n{stderr}"));
        assert!(
            membership_db::time::line_ts(fenced).is_some(),
            "the watchdog's fence line has no time stamp: {fenced}"
        );
        assert!(fenced.contains(" child FENCED: "), "the watchdog's fence line has no prefix: {fenced}");
        assert!(stderr.contains("BecameMaster"), "the node ran before the disk hung:\n{stderr}");
    }

    /// Regression (issue 7): a node whose request and acknowledgement writes fail while its
    /// heartbeats succeed retried them at once and forever: it spun a core, and SIGTERM could
    /// not stop it. The writes now back off, and a stop request ends the daemon within bounds.
    /// (Two `dead_ms` here: the node could not write the request withdrawing its join.)
    #[test]
    fn failing_record_writes_back_off_and_a_stop_request_still_ends_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let records = formatted(&path).region(membership_db::format::RegionKind::NodeRecords);
        let failed_writes = Arc::new(AtomicU64::new(0));
        let disk = FaultyDisk {
            inner: open_disk(&path, IoMode::Mmap, true).unwrap(),
            fault: WriteFault::FailRange(records.offset, records.end()),
            writes: failed_writes.clone(),
        };
        let db = MembershipDb::open(Box::new(disk)).unwrap();
        let stops = Arc::new(AtomicUsize::new(0));
        let (s, f) = (stops.clone(), failed_writes.clone());
        let daemon = std::thread::spawn(move || {
            let exit =
                run(&db, test_config(2), &Registry::new(), OwnRecords::default(), &s, "test", &|| None, &mut |_| {});
            (exit.map_err(|e| e.to_string()), f.load(Ordering::SeqCst))
        });
        // Two seconds of failing writes: a back-off, not a spin.
        std::thread::sleep(Duration::from_secs(2));
        let attempts = failed_writes.load(Ordering::SeqCst);
        assert!((1..=40).contains(&attempts), "{attempts} failed record writes in 2 s");
        stops.store(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !daemon.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the daemon did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (exit, _) = daemon.join().unwrap();
        // Its join request may have landed for all it knows, and it could not withdraw it: it
        // says it stopped without a graceful leave rather than claim one.
        assert!(
            matches!(&exit, Ok(MemberExit::StoppedWithoutLeave(why)) if why.contains("could not be written")),
            "{exit:?}"
        );
    }
}
