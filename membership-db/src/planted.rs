//! Deliberately planted bugs, compiled only with the `planted-bugs` feature, to prove that the
//! simulator catches what it claims to catch. Each is switched on for the current thread only,
//! so tests can plant different bugs side by side.

use std::cell::Cell;

/// The bugs that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The master claim decides after writing its value, without the second read (Disk Paxos
    /// phase 2 unchecked).
    ClaimSkipsSecondRead,
    /// The transition sequencer advances as soon as any participant acknowledged.
    SequencerAdvancesEarly,
    /// A node whose heartbeat writes fail (or which wakes from a freeze) does not fence itself.
    NodeDoesNotFence,
    /// A failed membership write is retried at once (issue 7: a node whose record region fails
    /// spins and cannot be stopped).
    RetryWriteAtOnce,
    /// A damaged claim block is unreadable whoever owns it (issue 7: a damaged block of a node
    /// that is not running stops every election, forever).
    DamagedBlockBlocksElections,
    /// A daemon starts from the node table's leave count as if it were honoured (issue 7: an
    /// `sdc leave` issued while the daemon restarts is lost).
    ForgetPendingLeave,
    /// A node asked to stop before it learnt of its join stops as soon as its withdrawal is
    /// written (found in review of issue 7: the master may have begun, even completed, the join
    /// meanwhile, and then forces out a node that reported a graceful stop).
    StopBeforeWithdrawalRead,
}

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` (or none) for the current thread.
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on the current thread.
pub fn active(bug: Bug) -> bool {
    PLANTED.with(|p| p.get() == Some(bug))
}
