//! # dlm
//!
//! The distributed lock manager, layer 10 of the membership manager: the lock service the
//! layers above (the virtual disk manager, the shared file system, the registration and launch
//! service) and any client stand on, with the semantics of the VMS lock manager and Linux's
//! fs/dlm: six modes, granted / converting / waiting queues, conversions, NOQUEUE, QUECVT,
//! timeouts, cancels, conversion-deadlock detection, a value block per resource, completion
//! and blocking callbacks, and recovery driven by the membership manager's barriers.
//!
//! * [`mode`]: the modes and their compatibility.
//! * [`types`]: resource names, lock ids, flags, value blocks, errors, client events.
//! * [`queues`]: a resource as its master keeps it, and what is granted when.
//! * [`wire`]: frames between nodes.
//! * [`core`]: [`DlmCore`], one node's lock manager, sans-IO: directory, mastering, recovery.
//!
//! ```
//! use dlm::{DlmCore, Barrier, Phase, ClientId, ClientEvent, Flags, Mode, ResName};
//! use membership_db::format::NodeId;
//! let mut dlm = DlmCore::new(NodeId(1));
//! // The membership manager takes the node through the DLM layer's barriers as it joins.
//! for (key, phase) in [(1, Phase::Stop), (2, Phase::Rebuild), (3, Phase::Resume)] {
//!     let members = vec![(NodeId(1), 7)];
//!     dlm.handle_barrier(Barrier { key, transition: 1, phase, subject: NodeId(1), members, view: (1, key), leaving: None });
//! }
//! let client = ClientId(1);
//! let res = ResName::new("default", b"license-server").unwrap();
//! let lock = dlm.lock(0, client, res, Mode::Ex, Flags::default()).unwrap();
//! // Mastered here, alone: granted at once, without a message.
//! assert!(matches!(dlm.poll_event(), Some(ClientEvent::Completion { result: Ok(_), .. })));
//! assert!(dlm.poll_transmit().is_none());
//! dlm.unlock(client, lock, Some(*b"generation 2\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0")).unwrap();
//! ```

// One call needs libc (the control socket's peer credentials): allowed there alone.
#![deny(unsafe_code)]

pub mod core;
pub mod driver;
pub mod mode;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod queues;
pub mod types;
pub mod wire;

pub use crate::core::{Barrier, DlmCore, MasteredView, OwnLockView, Phase, State, BARRIERS};
pub use mode::Mode;
pub use types::*;
