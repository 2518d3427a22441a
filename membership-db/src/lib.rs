//! # membership-db
//!
//! The membership database of a shared-disk cluster: everything the nodes know about each
//! other lives in records on one shared disk, and this crate owns those records.
//!
//! * [`format`]: the on-disk format, version 1, documented in one place: [`format::Superblock`],
//!   [`format::NodeEntry`], [`format::Heartbeat`], [`format::Claim`], [`format::ClusterState`],
//!   and the [`format::Layout`] of their regions.
//! * [`io`]: the [`io::Disk`] trait with a direct I/O back end (block devices, shared files)
//!   and an mmap back end (one-host clusters).
//! * [`db`]: [`db::MembershipDb`], typed region reads and single-writer record writes.
//! * [`liveness`], [`claim`], [`node`]: the sans-IO protocol cores: judging heartbeats, the
//!   Disk Paxos master claim, and one node's daemon state machine ([`node::NodeCore`]).
//! * [`daemon`]: the thin driver that runs a `NodeCore` on a real disk and clock, with the
//!   fence watchdog.
//! * [`status`]: the cluster as `sdc status` shows it.
//! * [`rng`]: the seeded generator of the deterministic tests.
//!
//! ```no_run
//! use membership_db::{db::MembershipDb, io::{open_disk, IoMode}};
//! let db = MembershipDb::open(open_disk("/dev/loop0".as_ref(), IoMode::Auto, false)?)?;
//! for hb in db.read_heartbeats()? {
//!     match hb {
//!         Ok(hb) => println!("node {} counter {}", hb.node, hb.counter),
//!         Err(corrupt) => println!("{corrupt}"),
//!     }
//! }
//! # Ok::<(), membership_db::error::DbError>(())
//! ```

pub mod claim;
mod codec;
pub mod daemon;
pub mod db;
pub mod error;
pub mod format;
pub mod invariants;
pub mod io;
pub mod liveness;
pub mod node;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod rng;
pub mod status;
pub mod time;
