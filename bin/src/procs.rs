//! Running `sdc` processes and reading what their daemons log, for the demo, the benchmarks and
//! the integration tests. Its main types: [`Sdc`], the binary at a path, which builds a
//! command, runs one to completion within a deadline, or spawns a [`Daemon`]: a process in the
//! background with its output in a log file, killed and reaped when dropped. A daemon's log
//! lines read back as [`LogLine`]s, and a rehearsal layer's lines as [`LayerNote`]s.
//! [`catch_interrupts`] and [`interrupted`] are the Ctrl-C / SIGTERM flag of a parent that
//! must clean up before it exits; [`exit_text`] says how a process ended.
//!
//! Every child runs in its own process group, so that a Ctrl-C at the terminal reaches the
//! parent alone (which then stops its children), and is killed by the kernel should the
//! thread that started it die first (`PR_SET_PDEATHSIG`). Every wait takes a deadline.
//!
//! Dates are those of `membership_db::time`: a log line starts with [`utc`] of its time.
//!
//! [`utc`]: membership_db::time::utc

use membership_db::daemon::EXIT_FENCED;
use membership_db::time::parse_utc;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The exit status of `sdc join` when the other nodes forced it out of the cluster (the
/// binary's `exit::FORCED_OUT`; `exit::FENCED` is `membership_db`'s [`EXIT_FENCED`]).
pub const EXIT_FORCED_OUT: i32 = 6;

/// How often a wait for a command's end also looks at [`interrupted`].
const INTERRUPT_CHECK: Duration = Duration::from_millis(20);
/// The longest pause between two looks at a child that has not exited: waits start at 1 ms
/// and double up to this, so a quick exit is seen quickly and a slow one costs few wakeups.
const POLL_MAX: Duration = Duration::from_millis(16);
/// How long a SIGKILLed child may take to be reaped: the kernel needs it only to finish an
/// uninterruptible I/O, so this is a bound, not an expected time.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The binary

/// The `sdc` binary at a path, and how its children are started.
#[derive(Debug, Clone)]
pub struct Sdc {
    exe: PathBuf,
    backtraces: bool,
    envs: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

/// Why a command could not be run to completion, or a daemon started; one line each.
#[derive(Debug)]
pub enum Error {
    /// The binary could not be started.
    Start { exe: PathBuf, error: std::io::Error },
    /// The daemon's log file could not be opened.
    Log { path: PathBuf, error: std::io::Error },
    /// The command had not finished by its deadline; it was killed.
    TimedOut,
    /// A SIGINT or SIGTERM arrived ([`interrupted`]) before the command finished; it was killed.
    Interrupted(i32),
    /// Waiting for the command or reading its output failed; it was killed.
    Io(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Start { exe, error } => write!(f, "cannot run {}: {error}", exe.display()),
            Error::Log { path, error } => write!(f, "cannot open the log file {}: {error}", path.display()),
            Error::TimedOut => write!(f, "did not finish in time, and was killed"),
            Error::Interrupted(sig) => write!(f, "interrupted by signal {sig}, and was killed"),
            Error::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Error {}

impl Sdc {
    pub fn new(exe: impl Into<PathBuf>) -> Sdc {
        Sdc { exe: exe.into(), backtraces: false, envs: Vec::new() }
    }

    /// Children run with `RUST_BACKTRACE=1` and without `RUST_LOG`: for tests, where a panic
    /// must show in full. Otherwise they inherit the environment as it is.
    pub fn with_backtraces(mut self) -> Sdc {
        self.backtraces = true;
        self
    }

    /// Children run with `key=value` in their environment (e.g. `SDC_RUN_DIR`, per test).
    pub fn with_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Sdc {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// `sdc ARGS` with stdin from /dev/null, in its own process group, killed by the kernel if
    /// the thread that spawns it dies first. Stdout and stderr are inherited until set.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).stdin(Stdio::null());
        if self.backtraces {
            cmd.env("RUST_BACKTRACE", "1").env_remove("RUST_LOG");
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `sdc ARGS` to completion and returns its status and output. It is killed at
    /// `deadline`, or as soon as [`interrupted`] says so.
    pub fn run<I, S>(&self, args: I, deadline: Instant) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|error| Error::Start { exe: self.exe.clone(), error })?;
        // One thread per pipe, so that a child filling one pipe never blocks on the other; each
        // ends when the child closes its end, which it does when it exits.
        let (tx, rx) = mpsc::channel();
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for (i, pipe) in pipes.into_iter().enumerate() {
            let tx = tx.clone();
            let reader = std::thread::Builder::new().name("sdc-output".into()).spawn(move || {
                let mut bytes = Vec::new();
                let read = match pipe {
                    Some(mut p) => p.read_to_end(&mut bytes).map(|_| bytes),
                    None => Ok(bytes),
                };
                let _ = tx.send((i, read));
            });
            if let Err(e) = reader {
                stop(&mut child);
                return Err(Error::Io(e));
            }
        }
        drop(tx);
        // Waiting for the pipes to close rather than polling the child sees its end at once
        // (the failover bench times `sdc status` calls back to back).
        let mut output: [Option<Vec<u8>>; 2] = [None, None];
        while output.iter().any(Option::is_none) {
            if let Some(sig) = interrupted() {
                stop(&mut child);
                return Err(Error::Interrupted(sig));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                stop(&mut child);
                return Err(Error::TimedOut);
            }
            match rx.recv_timeout(left.min(INTERRUPT_CHECK)) {
                Ok((i, Ok(bytes))) => output[i] = Some(bytes),
                Ok((_, Err(e))) => {
                    stop(&mut child);
                    return Err(Error::Io(e));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    stop(&mut child);
                    return Err(Error::Io(std::io::Error::other("the reader of the command's output is gone")));
                }
            }
        }
        let status = match reap_by(&mut child, deadline) {
            Ok(Some(status)) => status,
            Ok(None) => {
                stop(&mut child);
                return Err(Error::TimedOut);
            }
            Err(e) => {
                stop(&mut child);
                return Err(Error::Io(e));
            }
        };
        let [stdout, stderr] = output.map(Option::unwrap_or_default);
        Ok(Output { status, stdout, stderr })
    }

    /// Starts `sdc ARGS` in the background with its stdout and stderr appended to `log`
    /// (created if need be).
    pub fn spawn<I, S>(&self, args: I, log: &Path) -> Result<Daemon, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log_error = |error| Error::Log { path: log.to_path_buf(), error };
        let file = OpenOptions::new().create(true).append(true).open(log).map_err(log_error)?;
        let mut cmd = self.command(args);
        cmd.stdout(file.try_clone().map_err(log_error)?).stderr(file);
        let child = cmd.spawn().map_err(|error| Error::Start { exe: self.exe.clone(), error })?;
        Ok(Daemon { child, log: log.to_path_buf(), exit: None })
    }
}

/// Polls `child` until it exits or `deadline` passes (looking at least once).
fn reap_by(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// SIGKILL and reap, within [`REAP_TIMEOUT`]; for a child given up on.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    let _ = child.kill();
    reap_by(child, Instant::now() + REAP_TIMEOUT).ok().flatten()
}

// ---------------------------------------------------------------------------------------------
// A daemon

/// An `sdc` process running in the background (a `sdc join` daemon, or a command the caller
/// polls), its output in a log file. Dropping it SIGKILLs it and reaps it.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
    /// Once reaped: after that its pid may belong to another process, so no signal is sent.
    exit: Option<ExitStatus>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout and stderr go to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// How it ended, once a wait has seen it end.
    pub fn exit(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Sends `sig` (SIGTERM, SIGINT, SIGSTOP, SIGCONT, ...); refused once it has been reaped.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if let Some(status) = self.exit {
            return Err(std::io::Error::other(format!("pid {} has already ended ({})", self.pid(), exit_text(status))));
        }
        // SAFETY: kill(2) of our own unreaped child, so the pid cannot have been reused.
        if unsafe { libc::kill(self.pid() as libc::pid_t, sig) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Its exit status if it has ended (reaping it), without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Waits until it ends (reaping it) or `deadline` passes; `None` if it still runs.
    pub fn wait(&mut self, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = reap_by(&mut self.child, deadline)?;
        }
        Ok(self.exit)
    }

    /// SIGKILL, and reap it; its status, or how it had ended already.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        match self.wait(Instant::now() + REAP_TIMEOUT)? {
            Some(status) => Ok(status),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("pid {} was not reaped within {} s of SIGKILL", self.pid(), REAP_TIMEOUT.as_secs()),
            )),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// How a process ended, in words: `exit status 5: fenced`, `killed by signal 9`.
pub fn exit_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(0), _) => "exit status 0".into(),
        (Some(c), _) if c == EXIT_FENCED => format!("exit status {c}: fenced"),
        (Some(c), _) if c == EXIT_FORCED_OUT => format!("exit status {c}: forced out"),
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupts

/// The signal (SIGINT, SIGTERM) that asked this process to stop, or 0.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_interrupt(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::Release);
}

/// From now on SIGINT and SIGTERM only set the flag [`interrupted`] reads, so that the process
/// can stop its children and remove its files before it exits.
pub fn catch_interrupts() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev = unsafe { libc::signal(sig, on_interrupt as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::other(format!("cannot install the handler for signal {sig}: {e}")));
        }
    }
    Ok(())
}

/// The signal that interrupted this process since [`catch_interrupts`], if any.
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::Acquire)).filter(|&sig| sig != 0)
}

// ---------------------------------------------------------------------------------------------
// Logs

/// One line of a daemon's log: `<UTC> sdc[<cluster> node <N> <name>] <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub unix_ms: u64,
    /// What follows the `sdc[...]` prefix (all after the time stamp when there is none).
    pub text: String,
}

impl LogLine {
    /// `None` for a line that does not start with a time stamp.
    pub fn parse(line: &str) -> Option<LogLine> {
        let (stamp, rest) = line.split_once(' ')?;
        let unix_ms = parse_utc(stamp)?;
        Some(LogLine { unix_ms, text: without_prefix(rest).to_string() })
    }

    /// The notification this line reports, if a rehearsal layer logged it.
    pub fn layer_note(&self) -> Option<LayerNote> {
        let rest = self.text.strip_prefix("layer ")?;
        let (layer, rest) = rest.split_once(": ")?;
        let (kind, rest) = rest.split_once(" of node ")?;
        let (subject, rest) = rest.split_once(" (incarnation ")?;
        let (incarnation, rest) = rest.split_once("), barrier ")?;
        let (barrier, rest) = rest.split_once(" of ")?;
        let (of, _) = rest.split_once(';')?;
        Some(LayerNote {
            unix_ms: self.unix_ms,
            layer: layer.to_string(),
            kind: kind.to_string(),
            subject: subject.parse().ok()?,
            incarnation: incarnation.parse().ok()?,
            barrier: barrier.parse().ok()?,
            of: of.parse().ok()?,
        })
    }
}

/// One notification as a rehearsal layer (`sdc join --layer`) logged it, before acknowledging:
/// `layer dlm: join of node 3 (incarnation 1), barrier 1 of 2; view [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerNote {
    pub unix_ms: u64,
    pub layer: String,
    /// `join`, `leave` or `forced-leave`.
    pub kind: String,
    /// The node the transition is of.
    pub subject: u16,
    pub incarnation: u64,
    /// 1-based, as logged.
    pub barrier: u8,
    pub of: u8,
}

/// [`LogLine::layer_note`] of a whole line.
pub fn layer_note(line: &str) -> Option<LayerNote> {
    LogLine::parse(line)?.layer_note()
}

fn without_prefix(rest: &str) -> &str {
    rest.strip_prefix("sdc[").and_then(|r| r.split_once("] ")).map_or(rest, |(_, text)| text)
}

/// The whole log (empty if it cannot be read: a daemon that has not written yet).
pub fn log_text(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Every time-stamped line of the log, in order.
pub fn read_log(path: &Path) -> Vec<LogLine> {
    log_text(path).lines().filter_map(LogLine::parse).collect()
}

/// The last line of the log without its time stamp and prefix, or `(empty)`.
pub fn last_line(path: &Path) -> String {
    let text = log_text(path);
    let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else { return "(empty)".into() };
    match LogLine::parse(line) {
        Some(l) => l.text,
        None => without_prefix(line).to_string(),
    }
}

/// The last `n` lines of the log, as written.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = log_text(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER_LINE: &str = "2026-11-24T05:34:41.298Z sdc[test node 2 n2] layer dlm: join of node 3 (incarnation 1), \
                              barrier 1 of 2; view [1:joining 3:joining]";

    #[test]
    fn log_lines_and_layer_notes_parse() {
        let line = LogLine::parse(LAYER_LINE).unwrap();
        assert_eq!(line.unix_ms, 1_795_498_481_298);
        assert!(line.text.starts_with("layer dlm: join of node 3"), "{line:?}");
        assert_eq!(
            layer_note(LAYER_LINE),
            Some(LayerNote {
                unix_ms: 1_795_498_481_298,
                layer: "dlm".into(),
                kind: "join".into(),
                subject: 3,
                incarnation: 1,
                barrier: 1,
                of: 2
            })
        );
        let plain = LogLine::parse("2026-11-24T05:34:41.298Z sdc[test node 2 n2] running as incarnation 4").unwrap();
        assert_eq!(plain.text, "running as incarnation 4");
        assert_eq!(plain.layer_note(), None);
        assert_eq!(LogLine::parse("2026-11-24 05:34:41.298Z sdc[x] y"), None);
        assert_eq!(LogLine::parse("sdc: error: no such file").map(|l| l.text), None);
    }

    #[test]
    fn whole_logs_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        assert_eq!(last_line(&log), "(empty)");
        let text = format!("{LAYER_LINE}\n2026-11-24T05:34:42.000Z sdc[test node 2 n2] FENCED: lost the disk\n");
        std::fs::write(&log, text).unwrap();
        assert_eq!(read_log(&log).len(), 2);
        assert_eq!(last_line(&log), "FENCED: lost the disk");
        assert_eq!(tail(&log, 1), vec!["2026-11-24T05:34:42.000Z sdc[test node 2 n2] FENCED: lost the disk"]);
        assert_eq!(tail(&log, 9).len(), 2);
    }

    fn sh() -> Sdc {
        Sdc::new("/bin/sh")
    }

    #[test]
    fn a_command_runs_to_completion_or_is_killed_at_its_deadline() {
        let soon = || Instant::now() + Duration::from_secs(10);
        let out = sh().run(["-c", "echo out; echo err >&2; exit 3"], soon()).unwrap();
        assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(3), &b"out\n"[..], &b"err\n"[..]));
        let began = Instant::now();
        let late = sh().run(["-c", "sleep 30"], Instant::now() + Duration::from_millis(200));
        assert!(matches!(late, Err(Error::TimedOut)), "{late:?}");
        assert!(began.elapsed() < Duration::from_secs(5));
        let missing = Sdc::new("/nonexistent/sdc").run(["status"], soon());
        assert!(matches!(missing, Err(Error::Start { .. })), "{missing:?}");
        assert_eq!(exit_text(out.status), "exit status 3");
    }

    #[test]
    fn a_daemon_takes_signals_and_bounded_waits() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let mut d = sh().spawn(["-c", "echo started >&2; exec sleep 30"], &log).unwrap();
        assert_eq!(d.wait(Instant::now() + Duration::from_millis(100)).unwrap(), None);
        d.signal(libc::SIGTERM).unwrap();
        let status = d.wait(Instant::now() + Duration::from_secs(10)).unwrap().expect("ended by SIGTERM");
        assert_eq!(exit_text(status), format!("killed by signal {}", libc::SIGTERM));
        assert!(d.signal(libc::SIGTERM).is_err(), "a reaped daemon takes no signal");
        assert_eq!(d.kill().unwrap(), status);
        assert_eq!(log_text(&log), "started\n");

        let mut d = sh().spawn(["-c", "exec sleep 30"], &log).unwrap();
        assert_eq!(d.try_wait().unwrap(), None);
        assert_eq!(d.kill().unwrap().signal(), Some(libc::SIGKILL));
        let d = sh().spawn(["-c", "exec sleep 30"], &log).unwrap();
        let pid = d.pid() as libc::pid_t;
        drop(d);
        // SAFETY: signal 0 only asks whether the pid exists; a reaped child's does not.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "dropping a daemon kills and reaps it");
    }
}
