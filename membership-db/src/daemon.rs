//! The thin driver that runs a [`NodeCore`] against a real disk and a real clock.
//!
//! It performs the core's I/O one action at a time, sleeps until the core's next deadline, and
//! runs a **fence watchdog** thread: the main thread can block inside a read or write for as
//! long as the disk likes (a lost SAN path, a suspended device), so a separate thread watches
//! the fence deadline the core publishes and ends the process when it passes, whatever the main
//! thread is doing. The watchdog does no I/O but one line to stderr.

use crate::db::MembershipDb;
use crate::error::DbError;
use crate::format::Millis;
use crate::node::{Action, Completion, Event, Exit, IoFailure, NodeConfig, NodeCore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Exit status of a node that fenced itself.
pub const EXIT_FENCED: i32 = 5;

/// Milliseconds of `CLOCK_BOOTTIME`: monotonic, and it keeps counting while the host sleeps or
/// the process is stopped, so a node that wakes from a freeze sees how long it was gone.
pub fn monotonic_ms() -> Millis {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_BOOTTIME is available on Linux");
    ts.tv_sec as Millis * 1000 + ts.tv_nsec as Millis / 1_000_000
}

/// Milliseconds since the Unix epoch, for display stamps only.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The longest the driver sleeps between polls, so a stop request is seen promptly.
const POLL_SLEEP_MS_MAX: Millis = 20;

/// Ends the process when the published fence deadline passes.
struct FenceWatchdog {
    deadline: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FenceWatchdog {
    fn start(check_ms: Millis, message: String) -> FenceWatchdog {
        let deadline = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (d, f) = (deadline.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("fence-watchdog".into())
            .spawn(move || {
                while !f.load(Ordering::Acquire) {
                    let t = d.load(Ordering::Acquire);
                    if t != 0 && monotonic_ms() >= t {
                        let line = format!("{message}\n");
                        // SAFETY: write(2) on stderr; the result does not matter, we exit next.
                        unsafe {
                            libc::write(2, line.as_ptr().cast(), line.len());
                            libc::_exit(EXIT_FENCED);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(check_ms));
                }
            })
            .expect("spawn the fence watchdog");
        FenceWatchdog { deadline, done, thread: Some(thread) }
    }

    fn publish(&self, deadline: Option<Millis>) {
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

/// Performs one action against the disk.
pub fn perform(db: &MembershipDb, action: Action) -> Completion {
    match action {
        Action::ReadHeartbeats => Completion::HeartbeatsRead(db.read_heartbeats().map_err(failure)),
        Action::ReadClaims => Completion::ClaimsRead(db.read_claims().map_err(failure)),
        Action::WriteHeartbeat(mut hb) => {
            hb.written_unix_ms = unix_ms();
            Completion::Written(db.write_heartbeat(&hb).map_err(failure))
        }
        Action::WriteClaim(c) => Completion::Written(db.write_claim(&c).map_err(failure)),
        Action::ReadSuperblock => Completion::SuperblockRead(
            crate::db::read_superblocks(db.disk())
                .map(|copies| crate::format::newest(&copies, |s| s.generation).ok().map(|s| s.cluster_uuid))
                .map_err(failure),
        ),
        Action::WriteClusterState(mut s) => {
            s.written_unix_ms = unix_ms();
            Completion::Written(db.write_cluster_state(&s).map_err(failure))
        }
    }
}

/// Runs the node until it stops, is refused, or fences itself. `stop` is set by the signal
/// handler; `log` receives one line per event.
pub fn run(db: &MembershipDb, config: NodeConfig, stop: &AtomicBool, log: &mut dyn FnMut(&Event)) -> Exit {
    let check_ms = (config.timing.heartbeat_ms as Millis / 4).clamp(1, 25);
    let watchdog = FenceWatchdog::start(
        check_ms,
        format!("sdc: node {} FENCED: no heartbeat write has succeeded for fence-ms; stopping everything", config.node),
    );
    let mut core = NodeCore::new(config, monotonic_ms());
    loop {
        if stop.load(Ordering::Acquire) {
            core.request_stop();
        }
        while let Some(action) = core.poll_action(monotonic_ms()) {
            let completion = perform(db, action);
            core.handle_completion(monotonic_ms(), completion);
            watchdog.publish(core.fence_deadline());
            while let Some(e) = core.poll_event() {
                log(&e);
            }
        }
        while let Some(e) = core.poll_event() {
            log(&e);
        }
        if let Some(exit) = core.exit() {
            watchdog.publish(None);
            return exit.clone();
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
    use crate::db::FormatParams;
    use crate::format::{NodeId, Timing};
    use crate::io::{open_disk, Disk, IoMode};

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
        // 40 writes: acquisition, election and about a second of heartbeats.
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
        let exit = run(&db, config, &stop, &mut |e| eprintln!("child: {e}"));
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
        assert!(stderr.contains("this node is now master"), "the node ran before the disk hung:\n{stderr}");
    }
}
