//! Pieces of the daemon driver (whose loop is `layers::daemon`): the clock, the I/O of the node
//! core's actions, and the **fence watchdog**. The driver's main thread can block inside a read
//! or write for as long as the disk likes (a lost SAN path, a suspended device), so a separate
//! thread watches the fence deadline the core publishes and ends the process when it passes,
//! whatever the main thread is doing. The watchdog does no I/O but one line to stderr.

use crate::db::MembershipDb;
use crate::error::DbError;
use crate::format::Millis;
use crate::node::{Action, Completion, IoFailure};
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
pub const POLL_SLEEP_MS_MAX: Millis = 20;

/// Ends the process when the published fence deadline passes.
pub struct FenceWatchdog {
    deadline: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FenceWatchdog {
    /// Starts the watchdog thread; `message` is the line it prints before ending the process.
    pub fn start(check_ms: Millis, message: String) -> FenceWatchdog {
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
    }
}
