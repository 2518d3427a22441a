//! The in-process client API: [`Dlm`] (a cloneable handle on a node's lock manager) and
//! [`DlmClient`] (one client: its locks are released when it is dropped).

use crate::core::{MasteredView, OwnLockView, State};
use crate::mode::Mode;
use crate::types::{ClientId, DlmError, Flags, Grant, LockError, LockId, Lvb, ResName};
use crossbeam_channel::{Receiver, Sender};
use membership_db::format::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Requests queued to the lock manager's thread before senders wait.
pub const REQUESTS_QUEUED_MAX: usize = 4096;

/// Why a client call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request ended without a grant (would block, timed out, cancelled, deadlock, this
    /// node leaving); a new lock no longer exists, a conversion keeps its old mode.
    #[error("lock {lock}: {error}")]
    Lock { lock: LockId, error: LockError },
    /// The lock manager refused the request at once; nothing changed.
    #[error(transparent)]
    Dlm(#[from] DlmError),
    /// The lock manager has stopped (the daemon is exiting): every lock is gone.
    #[error("the lock manager has stopped")]
    Stopped,
}

/// What a client hears without having waited for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlmEvent {
    /// A request submitted without a waiter ended; or a held lock was lost
    /// ([`LockError::NodeLeaving`]: this node leaves the cluster).
    Completion { lock: LockId, result: Result<Grant, LockError> },
    /// This lock's mode blocks a request for `wanted` elsewhere: release or convert down.
    Blocking { lock: LockId, wanted: Mode },
}

pub(crate) type Callback = Box<dyn FnOnce(LockId, Result<Grant, LockError>) + Send>;
pub(crate) type EventCallback = Arc<dyn Fn(DlmEvent) + Send + Sync>;

/// Where a request's completion goes.
pub(crate) enum Done {
    Wait(Sender<Result<Grant, LockError>>),
    Callback(Callback),
    /// To the client's sink, as a [`DlmEvent::Completion`].
    Event,
}

/// Where a client's unsolicited events go.
pub(crate) enum Sink {
    Channel(Sender<DlmEvent>),
    Callback(EventCallback),
}

pub(crate) enum Request {
    Register {
        client: ClientId,
        sink: Sink,
    },
    Lock {
        client: ClientId,
        res: ResName,
        mode: Mode,
        flags: Flags,
        done: Done,
        reply: Sender<Result<LockId, DlmError>>,
    },
    Convert {
        client: ClientId,
        lock: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<Lvb>,
        done: Done,
        reply: Sender<Result<(), DlmError>>,
    },
    Unlock {
        client: ClientId,
        lock: LockId,
        lvb: Option<Lvb>,
        reply: Sender<Result<(), DlmError>>,
    },
    Cancel {
        client: ClientId,
        lock: LockId,
        reply: Sender<Result<(), DlmError>>,
    },
    Gone {
        client: ClientId,
    },
    Snapshot {
        reply: Sender<Snapshot>,
    },
}

/// A member of the lock manager, as [`Snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberView {
    pub node: NodeId,
    pub incarnation: u64,
}

/// The lock manager of one node as it sees itself (`sdc locks`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub node: NodeId,
    pub state: State,
    pub members: Vec<MemberView>,
    /// Peers whose interconnect link is up and live.
    pub reachable: Vec<NodeId>,
    /// Resources this node masters, with their queues.
    pub mastered: Vec<MasteredView>,
    /// This node's clients' locks.
    pub locks: Vec<OwnLockView>,
    /// Clients connected (in process and on the control socket).
    pub clients: usize,
}

/// A handle on a node's lock manager; clone it freely. Each user takes its own
/// [`DlmClient`] with [`Dlm::client`].
#[derive(Clone)]
pub struct Dlm {
    pub(crate) requests: Sender<Request>,
    pub(crate) next_client: Arc<AtomicU64>,
}

impl std::fmt::Debug for Dlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlm").finish_non_exhaustive()
    }
}

impl Dlm {
    fn register(&self, sink: Sink) -> ClientId {
        let client = ClientId(self.next_client.fetch_add(1, Ordering::Relaxed));
        // A stopped lock manager: every call of this client then says so.
        let _ = self.requests.send(Request::Register { client, sink });
        client
    }

    /// A new client whose unsolicited events ([`DlmEvent`]) arrive on [`DlmClient::events`].
    pub fn client(&self) -> DlmClient {
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = self.register(Sink::Channel(tx));
        DlmClient { id, dlm: self.clone(), events: Some(rx) }
    }

    /// A new client whose unsolicited events are handed to `on_event`, on the lock manager's
    /// callback thread (which may call back into the lock manager, but should not block
    /// long: the callbacks of every client run there in turn).
    pub fn client_with_callback(&self, on_event: impl Fn(DlmEvent) + Send + Sync + 'static) -> DlmClient {
        let id = self.register(Sink::Callback(Arc::new(on_event)));
        DlmClient { id, dlm: self.clone(), events: None }
    }

    /// The lock manager's view of itself.
    pub fn snapshot(&self) -> Result<Snapshot, ClientError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests.send(Request::Snapshot { reply }).map_err(|_| ClientError::Stopped)?;
        answer.recv().map_err(|_| ClientError::Stopped)
    }
}

/// One client of the lock manager: its locks are its own, and released when it is dropped
/// (as a process's flock(2) locks are when it exits).
///
/// Blocking calls wait for the lock manager's answer; a lock request without a timeout waits
/// until granted, or until the lock manager stops ([`ClientError::Stopped`]).
pub struct DlmClient {
    id: ClientId,
    dlm: Dlm,
    events: Option<Receiver<DlmEvent>>,
}

impl std::fmt::Debug for DlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlmClient").field("id", &self.id).finish_non_exhaustive()
    }
}

impl DlmClient {
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Blocking callbacks, completions of submitted requests, and locks lost as this node
    /// leaves; `None` for a client made with [`Dlm::client_with_callback`].
    pub fn events(&self) -> Option<&Receiver<DlmEvent>> {
        self.events.as_ref()
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<Result<T, DlmError>>) -> Request) -> Result<T, ClientError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.dlm.requests.send(make(reply)).map_err(|_| ClientError::Stopped)?;
        Ok(answer.recv().map_err(|_| ClientError::Stopped)??)
    }

    fn lock_with(&self, res: ResName, mode: Mode, flags: Flags, done: Done) -> Result<LockId, ClientError> {
        let client = self.id;
        self.ask(|reply| Request::Lock { client, res, mode, flags, done, reply })
    }

    /// Asks for a new lock on `res` in `mode` and waits until it is granted or fails
    /// (`flags.noqueue`: at once; `flags.timeout_ms`: at most that long).
    pub fn lock(&self, res: ResName, mode: Mode, flags: Flags) -> Result<(LockId, Grant), ClientError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let lock = self.lock_with(res, mode, flags, Done::Wait(tx))?;
        match rx.recv() {
            Ok(Ok(grant)) => Ok((lock, grant)),
            Ok(Err(error)) => Err(ClientError::Lock { lock, error }),
            Err(_) => Err(ClientError::Stopped),
        }
    }

    /// Asks for a new lock without waiting: `done` runs on the callback thread when the
    /// request ends, with the lock's id. Returns the lock's id (to cancel it).
    pub fn lock_async(
        &self,
        res: ResName,
        mode: Mode,
        flags: Flags,
        done: impl FnOnce(LockId, Result<Grant, LockError>) + Send + 'static,
    ) -> Result<LockId, ClientError> {
        self.lock_with(res, mode, flags, Done::Callback(Box::new(done)))
    }

    /// Asks for a new lock without waiting; its completion is a [`DlmEvent::Completion`].
    pub fn submit_lock(&self, res: ResName, mode: Mode, flags: Flags) -> Result<LockId, ClientError> {
        self.lock_with(res, mode, flags, Done::Event)
    }

    fn convert_with(
        &self,
        lock: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<Lvb>,
        done: Done,
    ) -> Result<(), ClientError> {
        let client = self.id;
        self.ask(|reply| Request::Convert { client, lock, mode, flags, lvb, done, reply })
    }

    /// Converts a granted lock to `mode` and waits for the outcome. `lvb` is written when
    /// converting down from PW or EX.
    pub fn convert(&self, lock: LockId, mode: Mode, flags: Flags, lvb: Option<Lvb>) -> Result<Grant, ClientError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.convert_with(lock, mode, flags, lvb, Done::Wait(tx))?;
        match rx.recv() {
            Ok(Ok(grant)) => Ok(grant),
            Ok(Err(error)) => Err(ClientError::Lock { lock, error }),
            Err(_) => Err(ClientError::Stopped),
        }
    }

    /// [`DlmClient::convert`] without waiting: `done` runs on the callback thread.
    pub fn convert_async(
        &self,
        lock: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<Lvb>,
        done: impl FnOnce(LockId, Result<Grant, LockError>) + Send + 'static,
    ) -> Result<(), ClientError> {
        self.convert_with(lock, mode, flags, lvb, Done::Callback(Box::new(done)))
    }

    /// [`DlmClient::convert`] without waiting; its completion is a [`DlmEvent::Completion`].
    pub fn submit_convert(&self, lock: LockId, mode: Mode, flags: Flags, lvb: Option<Lvb>) -> Result<(), ClientError> {
        self.convert_with(lock, mode, flags, lvb, Done::Event)
    }

    /// Releases a granted lock (`lvb` is written when it is held in PW or EX).
    pub fn unlock(&self, lock: LockId, lvb: Option<Lvb>) -> Result<(), ClientError> {
        let client = self.id;
        self.ask(|reply| Request::Unlock { client, lock, lvb, reply })
    }

    /// Ends a waiting request or conversion: it completes with [`LockError::Cancelled`] (or
    /// with its grant, when that was already on its way).
    pub fn cancel(&self, lock: LockId) -> Result<(), ClientError> {
        let client = self.id;
        self.ask(|reply| Request::Cancel { client, lock, reply })
    }
}

impl Drop for DlmClient {
    fn drop(&mut self) {
        // A stopped lock manager has released everything already.
        let _ = self.dlm.requests.send(Request::Gone { client: self.id });
    }
}

impl DlmClient {
    /// The lock manager this client belongs to.
    pub fn dlm_handle(&self) -> &Dlm {
        &self.dlm
    }
}
