//! `sdc`: the shared-disk cluster command-line program.
//!
//! Arguments are parsed by clap into [`cli::Cli`], each command lives in its own module, and
//! every error reaches the user as one line on stderr with an exit status from [`exit`].

mod cli;
mod cmd_demo;
mod cmd_format;
mod cmd_inspect;
mod cmd_join;
mod cmd_leave;
mod cmd_lock;
mod cmd_node;
mod cmd_sim;
mod cmd_status;
mod signals;
mod util;

use clap::Parser;

/// Exit statuses, documented in `sdc --help`.
pub mod exit {
    pub const OK: i32 = 0;
    /// Bad input or an operational error; the message says which.
    pub const ERROR: i32 = 1;
    /// Command-line usage error (from clap).
    pub const USAGE: i32 = 2;
    /// `inspect` found corrupt records.
    pub const CORRUPT: i32 = 3;
    /// `join` refused: a daemon already runs on that node.
    pub const ALREADY_RUNNING: i32 = 4;
    /// `join` fenced itself: it lost the disk or was deposed.
    pub const FENCED: i32 = membership_db::daemon::EXIT_FENCED;
    /// `join` was forced out of the cluster by the other nodes.
    pub const FORCED_OUT: i32 = sdc_procs::procs::EXIT_FORCED_OUT;
    /// `join` was asked to stop and stopped without a graceful leave: no master could sequence
    /// it in time (or a second SIGTERM asked for a stop at once). The others force it out.
    pub const STOPPED_WITHOUT_LEAVE: i32 = 7;
    /// `lock`: the lock was not granted (at once with --nowait, or within --timeout).
    pub const LOCK_NOT_GRANTED: i32 = 8;
    /// `lock`: the lock was lost while CMD ran (the daemon's connection dropped); CMD's process
    /// group was killed.
    pub const LOCK_LOST: i32 = 9;
}

/// A failure with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub status: i32,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure { status: exit::ERROR, message: e.to_string() }
    }
}

pub type CmdResult = Result<i32, Failure>;

pub fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { status: exit::ERROR, message: message.into() })
}

fn main() {
    // A bug must still reach the operator as one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("sdc: internal error: {msg}{at} (please report this)");
    }));

    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            std::process::exit(exit::OK);
        }
        Err(e) => {
            // clap's message spans several lines; the operator gets one.
            let rendered = e.render().to_string();
            let message: Vec<&str> =
                rendered.lines().map(str::trim).take_while(|l| !l.is_empty() && !l.starts_with("Usage:")).collect();
            let line = message.join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("sdc: error: {line} (see sdc --help)");
            std::process::exit(exit::USAGE);
        }
    };
    // Reading commands behave like other Unix tools when their reader goes away (`| head`):
    // SIGPIPE ends them quietly. The daemon keeps ignoring it: a closed log pipe must not kill
    // a node without fencing (its writes to stderr then just fail).
    // `sdc lock` too: its daemon's socket may close under it, which it must notice, not die of.
    if !matches!(cli.command, cli::Command::Join(_) | cli::Command::Lock(_)) {
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = signals::install_bus_handler() {
        eprintln!("sdc: error: {e}");
        std::process::exit(exit::ERROR);
    }
    let result = match cli.command {
        cli::Command::Format(a) => cmd_format::run(a),
        cli::Command::Node(cli::NodeCommand::Add(a)) => cmd_node::add(a),
        cli::Command::Node(cli::NodeCommand::List(a)) => cmd_node::list(a),
        cli::Command::Node(cli::NodeCommand::Remove(a)) => cmd_node::remove(a),
        cli::Command::Inspect(a) => cmd_inspect::run(a),
        cli::Command::Join(a) => cmd_join::run(a),
        cli::Command::Leave(a) => cmd_leave::run(a),
        cli::Command::Sim(a) => cmd_sim::run(a),
        cli::Command::Status(a) => cmd_status::run(a),
        cli::Command::Demo(a) => cmd_demo::run(a),
        cli::Command::Lock(a) => cmd_lock::run(a),
        cli::Command::Locks(a) => cmd_lock::show(a),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(f) => {
            let line = f.message.replace('\n', " ");
            eprintln!("sdc: error: {line}");
            std::process::exit(f.status);
        }
    }
}
