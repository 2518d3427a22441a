//! The signals `sdc` handles, in one place.
//!
//! * SIGTERM and SIGINT ask the daemon (`sdc join`) to leave gracefully; a second one asks it to
//!   stop at once, without a leave.
//! * SIGBUS: the disk file shrank (or its device vanished) under a shared mapping. Reading a
//!   page beyond the new end raises SIGBUS, which would otherwise kill the process with no word.
//!   The daemon treats it as the loss of the disk: it fences, with one line in the same format
//!   as every fence line, and exits 5. Any other command says one error line and exits 1.
//!
//! Handlers only touch atomics and write(2) a line prepared beforehand (async-signal-safe).

use membership_db::daemon::EXIT_FENCED;
use membership_db::time::{unix_ms, utc_into};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Stop requests received (SIGTERM, SIGINT): 1 asks for a graceful leave, 2 or more for a stop.
pub static STOPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOPS.fetch_add(1, Ordering::AcqRel);
}

/// What the SIGBUS handler says: the daemon's log prefix (it fences), or nothing (a command).
static BUS_PREFIX: OnceLock<String> = OnceLock::new();

const BUS_DAEMON: &str =
    " FENCED: the disk shrank or vanished under this daemon (SIGBUS on its shared mapping); stopped acting and exiting\n";
const BUS_COMMAND: &str =
    "sdc: error: the disk shrank or vanished while it was being read (SIGBUS on the shared mapping)\n";

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) of a valid buffer; the result does not matter, the process exits next.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

extern "C" fn on_bus(_: libc::c_int) {
    match BUS_PREFIX.get() {
        Some(prefix) => {
            let mut ts = [0u8; 24];
            utc_into(unix_ms(), &mut ts);
            write_stderr(&ts);
            write_stderr(b" ");
            write_stderr(prefix.as_bytes());
            write_stderr(BUS_DAEMON.as_bytes());
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(EXIT_FENCED) }
        }
        None => {
            write_stderr(BUS_COMMAND.as_bytes());
            // SAFETY: as above.
            unsafe { libc::_exit(crate::exit::ERROR) }
        }
    }
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) -> Result<(), String> {
    // SAFETY: installing a handler that only touches atomics and calls async-signal-safe
    // functions.
    let prev = unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
    if prev == libc::SIG_ERR {
        return Err(format!("cannot install the handler for signal {sig}"));
    }
    Ok(())
}

/// Every command: a SIGBUS is one error line, not a silent death.
pub fn install_bus_handler() -> Result<(), String> {
    install(libc::SIGBUS, on_bus)
}

/// The daemon: SIGTERM and SIGINT stop it, and a SIGBUS fences it with `prefix`'s line.
pub fn install_daemon_handlers(prefix: &str) -> Result<(), String> {
    let _ = BUS_PREFIX.set(prefix.to_string());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        install(sig, on_stop_signal)?;
    }
    Ok(())
}
