//! # manager
//!
//! The membership manager (seed 004, "A. Membership manager"): every node join, graceful leave
//! and forced leave is taken through the registered layers in order, with barriers, sequenced
//! by the master through records on the shared disk.
//!
//! * [`steps`]: the order of positions (layer, barrier) of each kind of transition.
//! * [`sequencer`]: the master's rules (Table 1), a pure function from the disk's records to
//!   the next cluster state.
//! * [`participant`]: a node's side: notifications to local subsystems, acknowledgements, its
//!   own request, and what the cluster says of it.
//! * [`links`]: the master's arbitration of a broken interconnect (who stays, who is forced
//!   out), from the reachability each node publishes in its heartbeat.
//! * [`api`]: how subsystems register ([`api::Registry::register`]) and answer
//!   ([`api::Subsystem::ack`], [`api::Subsystem::nack`]).
//!
//! Global order: membership manager 0 (implicit), DLM 10, VDM 20, SFS 30, event manager 40.
//! Orders are numbers, so other subsystems can register in between.

#![forbid(unsafe_code)]

pub mod api;
pub mod daemon;
pub mod links;
pub mod member;
pub mod participant;
pub mod sequencer;
pub mod steps;

/// The global transition orders of the built-in layers.
pub mod order {
    pub const MEMBERSHIP_MANAGER: u32 = 0;
    pub const DLM: u32 = 10;
    pub const VDM: u32 = 20;
    pub const SFS: u32 = 30;
    pub const EVENT_MANAGER: u32 = 40;
}

#[cfg(test)]
mod arbitrary_records;
#[cfg(test)]
mod scenarios;
