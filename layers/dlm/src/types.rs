//! The vocabulary of the lock manager: resource names, lock ids, flags, value blocks, the
//! errors a request can end with, and what the core tells its clients.

use crate::mode::Mode;
use membership_db::format::NodeId;
use std::fmt;

/// Longest resource name, in bytes (as Linux's DLM_RESNAME_MAXLEN).
pub const NAME_BYTES_MAX: usize = 64;
/// Longest lockspace name, in bytes.
pub const LOCKSPACE_BYTES_MAX: usize = 32;
/// Size of a lock value block.
pub const LVB_BYTES: usize = 32;

/// A lock value block: a few bytes that travel with the lock (a version number, a cached
/// size), read on every grant and written by a PW or EX holder as it converts down or unlocks.
pub type Lvb = [u8; LVB_BYTES];

/// A lock of this node, unique for the life of the node's daemon (one incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct LockId(pub u64);

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A client of this node's lock manager: one connection of the control socket, or one handle
/// in process. Its locks are released when it goes ([`crate::DlmCore::client_gone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ClientId(pub u64);

/// A lock across the cluster: its owner node and the owner's id for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct GlobalLockId {
    pub node: NodeId,
    pub lock: LockId,
}

/// A resource: a name (up to 64 bytes, any bytes) in a lockspace (a namespace of names, up to
/// 32 bytes of `[A-Za-z0-9_.-]`). Lockspaces need not be created: a name's lockspace is part
/// of its identity, as a directory is part of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResName {
    space: Box<str>,
    name: Box<[u8]>,
}

impl ResName {
    pub fn new(lockspace: &str, name: &[u8]) -> Result<ResName, DlmError> {
        validate_lockspace(lockspace)?;
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(DlmError::BadName(format!(
                "a resource name is 1 to {NAME_BYTES_MAX} bytes, not {}",
                name.len()
            )));
        }
        Ok(ResName { space: lockspace.into(), name: name.into() })
    }
    pub fn lockspace(&self) -> &str {
        &self.space
    }
    pub fn name(&self) -> &[u8] {
        &self.name
    }
    /// The name as text: UTF-8 as is, other bytes escaped.
    pub fn name_text(&self) -> String {
        self.name.escape_ascii().to_string()
    }
    /// FNV-1a over lockspace and name: where the resource's directory entry lives.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.space.bytes().chain([0u8]).chain(self.name.iter().copied()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl fmt::Display for ResName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.space, self.name_text())
    }
}

pub fn validate_lockspace(space: &str) -> Result<(), DlmError> {
    let ok = !space.is_empty()
        && space.len() <= LOCKSPACE_BYTES_MAX
        && space.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DlmError::BadName(format!(
            "lockspace {space:?}: use 1 to {LOCKSPACE_BYTES_MAX} characters of letters, digits, '_', '.' and '-'"
        )))
    }
}

/// How a request behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Flags {
    /// Fail at once with [`LockError::WouldBlock`] rather than wait.
    pub noqueue: bool,
    /// A conversion waits behind the conversions already queued, even when it could be granted
    /// now.
    pub quecvt: bool,
    /// Give up waiting after this long ([`LockError::TimedOut`]).
    pub timeout_ms: Option<u64>,
}

impl Flags {
    pub const NOQUEUE: Flags = Flags { noqueue: true, quecvt: false, timeout_ms: None };
}

/// Why a request did not end in a grant. The lock keeps the mode it had (none for a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub enum LockError {
    #[error("would block: the lock is held in an incompatible mode")]
    WouldBlock,
    #[error("timed out waiting for the lock")]
    TimedOut,
    #[error("cancelled")]
    Cancelled,
    #[error(
        "conversion deadlock: another holder is converting and each waits for the other; this conversion was refused"
    )]
    Deadlock,
    #[error("this node is leaving the cluster: its locks are released")]
    NodeLeaving,
    #[error("the lock manager has too many resources or locks")]
    Exhausted,
}

impl LockError {
    pub fn to_u8(self) -> u8 {
        self as u8
    }
    pub fn from_u8(v: u8) -> Option<LockError> {
        use LockError::*;
        [WouldBlock, TimedOut, Cancelled, Deadlock, NodeLeaving, Exhausted].get(v as usize).copied()
    }
}

/// A request the core refuses at once: nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlmError {
    #[error("{0}")]
    BadName(String),
    #[error("no lock {0} held by this client")]
    UnknownLock(LockId),
    #[error("lock {lock} is {state}: {what} it first")]
    Busy { lock: LockId, state: &'static str, what: &'static str },
    #[error("lock {0} is not granted yet: it cannot be converted")]
    NotGranted(LockId),
    #[error("a conversion from {from} to {to} is neither up nor down: convert down to cr first, then up")]
    Sideways { from: Mode, to: Mode },
    #[error("this node is not a member of the lock manager (not joined, or leaving)")]
    NotMember,
    #[error("too many locks on this node (at most {0})")]
    TooManyLocks(usize),
}

/// A grant: the mode now held and the resource's value block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub mode: Mode,
    pub lvb: Lvb,
    /// False after a holder of PW or EX died (or the resource's master died with nobody left
    /// holding a mode that excludes writers), and before the first write: the value may be
    /// stale and must be rebuilt from the data it describes.
    pub lvb_valid: bool,
}

/// What the core tells a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A request (new lock or conversion) ended.
    Completion { client: ClientId, lock: LockId, result: Result<Grant, LockError> },
    /// This lock's granted mode blocks a request for `wanted`: release or convert down when
    /// you can (drop caches on demand).
    Blocking { client: ClientId, lock: LockId, wanted: Mode },
}

/// FNV-1a as a `Hasher`: the lock manager's maps hash with it, so that iterating them is the
/// same on every run (the simulator replays a seed exactly) and short keys hash fast.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A hash map that iterates in the same order on every run.
pub type Map<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;
