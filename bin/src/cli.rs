//! The command line, as clap parses it.

use clap::{Args, Parser, Subcommand};
use membership_db::io::IoMode;
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  error: bad input or an operational failure (one line on stderr says which)
  2  usage error
  3  inspect found corrupt records
  4  join refused: a daemon already runs on that node
  5  join fenced itself: it lost the disk or was deposed as master
  6  join was forced out of the cluster by the other nodes
  7  join was asked to stop and stopped without a graceful leave (no master could sequence it)
  8  lock: the lock was not granted (held elsewhere: at once with --nowait, or within --timeout)
  9  lock: the lock was lost while CMD ran (the node's daemon stopped, was fenced or forced out);
     CMD's process group was killed
  Otherwise `sdc lock` exits with CMD's status (128 + N when CMD was killed by signal N).

Control sockets: /run/sdc/<cluster-uuid>/node-<N>.sock (or $XDG_RUNTIME_DIR/sdc/..., /tmp/sdc-<uid>/...;
$SDC_RUN_DIR overrides). Interconnect: each node listens on its node table address, HOST[:PORT],
default port 7711.";

/// How a command finds a running daemon: its disk and node.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The shared disk of the daemon's cluster.
    #[arg(long, value_name = "PATH", env = "SDC_DISK")]
    pub disk: PathBuf,
    /// The node whose daemon to ask; default: the one daemon of that cluster running on this host.
    #[arg(long, value_name = "ID", env = "SDC_NODE")]
    pub node: Option<u16>,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The lockspace (1 to 32 of letters, digits, '_', '.', '-').
    #[arg(long, value_name = "LS", default_value = "default")]
    pub lockspace: String,
    /// The mode: ex (exclusive, the default), pw, pr (shared read), cw, cr or nl.
    #[arg(long, value_name = "MODE", default_value = "ex")]
    pub mode: String,
    /// Fail at once (exit 8) if the lock is held in an incompatible mode.
    #[arg(long)]
    pub nowait: bool,
    /// Give up waiting for the lock after this many seconds (exit 8).
    #[arg(long, value_name = "SECONDS", conflicts_with = "nowait")]
    pub timeout: Option<f64>,
    /// The resource name (1 to 64 bytes).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command to run while holding the lock, after `--`.
    #[arg(value_name = "CMD", last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct LocksArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// sdc: a cluster of hosts that share one disk, behaving as one system.
///
/// The shared disk (a block device, or a plain file on one host) holds the membership
/// database: the node table, a heartbeat slot per node, the master claim and the cluster
/// state. Nothing else is needed for nodes to find each other and elect a master.
#[derive(Debug, Parser)]
#[command(name = "sdc", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new, empty membership database on a disk or file.
    #[command(
        after_help = "Example:\n  sdc format --disk /var/lib/sdc/disk.img --size 64MiB --cluster prod --max-nodes 8"
    )]
    Format(FormatArgs),
    /// Add, list or remove nodes in the node table.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Decode every region of the disk with its offset and name every corrupt record.
    #[command(after_help = "Exits 3 when any record is corrupt (every one is listed, with its offset).")]
    Inspect(ReadArgs),
    /// Run the node daemon in the foreground: join the cluster through the layers and stay.
    #[command(after_help = "\
SIGTERM or SIGINT (or `sdc leave`) leaves the cluster gracefully through the layers, marks the
node's slot down and exits 0. A node that is not a member stops once the master has read that it
withdraws its join; one whose leave no master sequences for two dead-ms (no eligible node left)
stops without it (exit 7); a second SIGTERM stops at once. An `sdc leave` made while no daemon ran here is honoured when this one starts.
Exit status: 0 left cleanly, 1 error (including a refused join, which names the layer),
4 the node is already running elsewhere, 5 fenced (no heartbeat write for fence-ms, its slot
was taken, deposed as master, the disk reformatted or truncated), 6 forced out by the other
nodes, 7 stopped without a graceful leave (the others force it out).")]
    Join(JoinArgs),
    /// Run the deterministic simulator: the real protocol cores of 3 to 256 nodes on a
    /// simulated disk with injected faults, every invariant checked after every action.
    #[command(after_help = "\
Examples:
  sdc sim --seeds 2000          run seeds 0..2000 and print a summary line
  sdc sim --seed 179            replay one seed exactly, printing its events
Exit status: 0 every seed kept every invariant, 1 a seed violated one (its seed, the invariant
and the trace of its last events are printed; replay it with --seed).")]
    Sim(SimArgs),
    /// Ask a running node to leave the cluster gracefully, and wait until it has.
    #[command(
        after_help = "Works from any host that sees the disk. Exit status: 0 the node left, 1 error or timeout."
    )]
    Leave(LeaveArgs),
    /// Show the cluster as the disk records it: master, epoch, nodes, their membership state
    /// and liveness, and the transitions in flight.
    Status(StatusArgs),
    /// Run a narrated three-node cluster on a loop file in a temporary directory, then clean up.
    ///
    /// Formats a loop file, adds three nodes and starts three `sdc join` daemons, then narrates
    /// a timeline: the joins, a graceful leave, two nodes contending for a lock through `sdc
    /// lock` (its value block handed over valid), a kill -9 of the holder's node and its forced
    /// leave (the waiter gets the lock, the value block not valid), a rejoin, the master's death
    /// and the new master, another rejoin. No arguments and no root needed.
    #[command(after_help = "\
The daemons are `sdc join` processes with four rehearsal layers; each logs to a file in the
temporary directory (kept with --keep). Every step must happen within 20 s.
Exit status: 0 the demo ran to the end, 1 a step failed or did not happen in time (the message
says which), 130 interrupted by Ctrl-C. The daemons are killed on every way out.")]
    Demo(DemoArgs),
    /// Run a command while holding a cluster-wide lock (a cluster-wide flock(1)).
    #[command(after_help = "\
Asks the lock manager of the node's running daemon (through its control socket) for the lock
LOCKSPACE/NAME in MODE, runs CMD once it is granted, releases the lock when CMD ends and exits
with CMD's status. SIGINT and SIGTERM are passed on to CMD.

The lock's value block (32 bytes that travel with the lock) is in CMD's environment:
  SDC_LOCK_LVB        the 32 bytes as 64 lowercase hex digits
  SDC_LOCK_LVB_TEXT   the value as text, when it is UTF-8 without control characters once its
                      trailing zero bytes are trimmed (all zeros: empty); unset otherwise
  SDC_LOCK_LVB_VALID  1 valid; 0 not valid: never written, or a pw/ex holder died (the value may
                      be stale: rebuild it from what it describes)
  SDC_LOCK_LVB_OUT    modes pw and ex only: an empty file, in a fresh 0700 directory in $TMPDIR
                      removed when sdc lock exits, where CMD may write a new value, text or raw,
                      at most 32 bytes (one trailing newline after text is dropped; zero-padded).
When CMD ends, a non-empty file is written as the new value as the lock is released (it is then
valid); an empty one leaves the value as it was. A value that cannot be written (longer than 32
bytes, not a regular file, or the daemon did not confirm the unlock) is one line on stderr, the
lock is released without it, and sdc lock exits 1 if CMD exited 0, else with CMD's status.

If the lock is lost while CMD runs (the daemon's connection drops: the node was fenced, forced
out or stopped), CMD's process group is killed at once with SIGKILL (the other nodes may take the
lock as soon as this node is known stopped), sdc lock waits up to 5 s for it to end and exits 9.
Example:
  sdc lock --disk /dev/sdb --node 1 nightly-backup -- /usr/local/bin/backup.sh
  sdc lock gen -- sh -c 'echo $((${SDC_LOCK_LVB_TEXT:-0} + 1)) > \"$SDC_LOCK_LVB_OUT\"'
Exit status: CMD's status; 1 error (no daemon, bad name or mode, CMD cannot be run, its new value
not written); 8 the lock was not granted (at once with --nowait, or within --timeout); 9 the lock
was lost while CMD ran.")]
    Lock(LockArgs),
    /// Show the lock table as one node's lock manager sees it (like dlm_tool lockdebug).
    #[command(after_help = "\
Shows the node's lock manager state (out, stopped or running), its members, the resources it
masters with their granted, converting and waiting queues (owner node, lock id, modes) and
value-block validity, and the locks of its own clients. Asks the node's running daemon
through its control socket. Exit status: 0 shown, 1 error (no daemon running for the node).")]
    Locks(LocksArgs),
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a node to the node table.
    #[command(after_help = "Example:\n  sdc node add --disk disk.img --node 1 --name alpha --address 10.0.0.1")]
    Add(NodeAddArgs),
    /// List the node table.
    List(ReadArgs),
    /// Remove a node from the node table (refused while it is live).
    Remove(NodeRemoveArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DiskArgs {
    /// The shared disk: a block device or a regular file.
    #[arg(long, value_name = "PATH")]
    pub disk: PathBuf,
    /// I/O back end: direct (O_DIRECT|O_DSYNC; the default for block devices, required when
    /// hosts share the disk) or mmap (the default for regular files; one host only).
    #[arg(long = "io", value_name = "direct|mmap", value_parser = parse_io_mode, default_value = "auto", hide_default_value = true)]
    pub io: IoMode,
}

fn parse_io_mode(s: &str) -> Result<IoMode, String> {
    match s {
        "auto" | "direct" | "mmap" => s.parse(),
        _ => Err("use direct or mmap".into()),
    }
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    #[command(flatten)]
    pub disk: DiskArgs,
    /// Create the file with this size if it does not exist (e.g. 64MiB, 1GiB).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// The cluster's name.
    #[arg(long, value_name = "NAME")]
    pub cluster: String,
    /// Node slots to reserve (node ids 1 to N, at most 256).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_nodes: u16,
    /// Heartbeat interval.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub heartbeat_ms: u32,
    /// A node whose heartbeat has been still this long is dead.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub dead_ms: u32,
    /// A node that cannot write its heartbeat this long fences itself (must be below dead-ms
    /// by one heartbeat plus 100 ms).
    #[arg(long, value_name = "MS", default_value_t = 600)]
    pub fence_ms: u32,
    /// Two joined nodes that cannot reach each other over the interconnect this long are
    /// arbitrated by the master, which forces out the nodes outside the largest group it can
    /// keep. At least two heartbeat intervals, at most 600000; best at or above dead-ms (so a
    /// dead node is judged dead first, and a short pause costs no membership).
    #[arg(long, value_name = "MS", default_value_t = membership_db::format::LINK_TIMEOUT_MS_DEFAULT)]
    pub link_timeout_ms: u32,
    /// Overwrite an existing cluster (refused while any node is live).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub disk: DiskArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Refresh in place every half second until interrupted (with --json: one JSON document
    /// per line).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct NodeAddArgs {
    #[command(flatten)]
    pub disk: DiskArgs,
    /// Node id, from 1 to the cluster's max nodes.
    #[arg(long, value_name = "ID")]
    pub node: u16,
    /// A unique name (letters, digits, '-', '_', '.').
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// This node never becomes master.
    #[arg(long)]
    pub no_master_eligible: bool,
    /// The node's interconnect endpoint, HOST[:PORT]: a host name, an IPv4 address or an
    /// [IPv6] address; port 1 to 65535, 7711 when left out. Its lock manager listens there and
    /// the other nodes dial it; `sdc join` needs one. Adding an existing node again under its
    /// name updates its address (kept when not given) and eligibility.
    #[arg(long, value_name = "HOST[:PORT]", default_value = "")]
    pub address: String,
}

#[derive(Debug, Args)]
pub struct NodeRemoveArgs {
    #[command(flatten)]
    pub disk: DiskArgs,
    /// Node id to remove.
    #[arg(long, value_name = "ID")]
    pub node: u16,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Replay this one seed, printing its outcome (and the trace of a violation).
    #[arg(long, value_name = "S", conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub seeds: u64,
    /// The first seed of the run.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub first: u64,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub disk: DiskArgs,
    /// The node to take out of the cluster.
    #[arg(long, value_name = "ID")]
    pub node: u16,
    /// Give up waiting after this many seconds (the leave goes on).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub disk: DiskArgs,
    /// This node's id in the node table.
    #[arg(long, value_name = "ID")]
    pub node: u16,
    /// Register a rehearsal layer: a subsystem that logs every notification it receives and
    /// acknowledges it at once. NAME:ORDER[:JOIN/LEAVE/FORCED] barriers (default 1/1/1), e.g.
    /// `--layer dlm:10:2/1/1`. Repeat for several layers. Every node must register the same
    /// barriers at one order.
    #[arg(long = "layer", value_name = "NAME:ORDER[:J/L/F]")]
    pub layers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temporary directory (the disk image and each daemon's log) instead of removing
    /// it at the end.
    #[arg(long)]
    pub keep: bool,
    /// Fast timings: heartbeat 50 ms, dead 600 ms, fence 300 ms (the default).
    #[arg(long, overrides_with = "slow")]
    pub fast: bool,
    /// The timings of a default `sdc format` (heartbeat 100 ms, dead 1000 ms, fence 600 ms):
    /// slower, and more tolerant of a busy machine.
    #[arg(long, overrides_with = "fast")]
    pub slow: bool,
}
