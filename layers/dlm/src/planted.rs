//! Deliberately planted bugs of the lock manager, compiled only with the `planted-bugs`
//! feature, to prove that the simulator's checks catch them. Each is switched on for the
//! current thread only.

use std::cell::Cell;

/// A plantable bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bug(&'static str);

/// A grant ignores the converting queue: the modes its locks still hold are not checked.
pub const GRANT_IGNORES_CONVERTING: Bug = Bug("grant-ignores-converting");
/// Recovery forgets a survivor's waiting request on a re-mastered resource.
pub const RECOVERY_FORGETS_WAITING: Bug = Bug("recovery-forgets-waiting");
/// A re-mastered resource's value block is taken as valid whatever the survivors hold.
pub const LVB_ALWAYS_VALID: Bug = Bug("lvb-always-valid");

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` (or none) for the current thread.
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

impl Bug {
    pub fn active(self) -> bool {
        PLANTED.with(|p| p.get() == Some(self))
    }
    pub fn name(self) -> &'static str {
        self.0
    }
}
