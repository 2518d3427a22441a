//! The subsystem API: how a layer registers with the membership manager and answers its
//! notifications.
//!
//! ```
//! use manager::api::Registry;
//! use membership_db::format::Barriers;
//! let mut registry = Registry::new();
//! let dlm = registry.register(10, "dlm", Barriers { join: 2, leave: 1, forced_leave: 1 }).unwrap();
//! // The daemon owns `registry`; the subsystem's own thread blocks on its notifications:
//! // for n in dlm.notifications() { recover_or_join(&n); dlm.ack(&n); }
//! # drop(dlm);
//! ```

use crate::participant::Notification;
use membership_db::format::{validate_layers, Barriers, LayerSpec, Position};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;

/// Notifications queued for one subsystem before the daemon reports it as not keeping up.
pub const NOTIFICATIONS_QUEUED_MAX: usize = 1024;
/// Replies queued from all subsystems of a node.
pub const REPLIES_QUEUED_MAX: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("cannot register layer {name} at order {order}: {why}")]
    Invalid { order: u32, name: String, why: String },
}

/// A subsystem's answer to one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub order: u32,
    pub key: (u64, Position),
    pub nack: bool,
}

/// A registered subsystem's end: its notifications, and the means to answer them.
pub struct Subsystem {
    spec: LayerSpec,
    notifications: Receiver<Notification>,
    replies: SyncSender<Reply>,
}

impl Subsystem {
    pub fn spec(&self) -> &LayerSpec {
        &self.spec
    }
    /// Blocks until the next notification; `None` once the daemon has gone.
    pub fn recv(&self) -> Option<Notification> {
        self.notifications.recv().ok()
    }
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Notification> {
        self.notifications.recv_timeout(timeout).ok()
    }
    pub fn try_recv(&self) -> Result<Notification, TryRecvError> {
        self.notifications.try_recv()
    }
    /// Iterates notifications until the daemon goes away.
    pub fn notifications(&self) -> impl Iterator<Item = Notification> + '_ {
        self.notifications.iter()
    }
    /// This subsystem has completed its processing of `n` on this node.
    pub fn ack(&self, n: &Notification) {
        self.reply(n, false);
    }
    /// This subsystem refuses `n`: a join is aborted (the joining node is forced out); a
    /// graceful leave becomes a forced leave; a forced leave cannot be refused (logged).
    pub fn nack(&self, n: &Notification) {
        self.reply(n, true);
    }
    fn reply(&self, n: &Notification, nack: bool) {
        // The daemon may be gone; then nobody waits for the answer.
        let _ = self.replies.send(Reply { order: self.spec.order, key: n.key(), nack });
    }
    /// The answering end alone, for a subsystem that receives its notifications on one thread
    /// and answers them on another.
    pub fn responder(&self) -> Responder {
        Responder { order: self.spec.order, replies: self.replies.clone() }
    }
}

/// Answers a registered subsystem's notifications ([`Subsystem::responder`]); cloneable and
/// `Send`, so the thread that acts on a notification can answer it.
#[derive(Debug, Clone)]
pub struct Responder {
    order: u32,
    replies: SyncSender<Reply>,
}

impl Responder {
    /// [`Subsystem::ack`].
    pub fn ack(&self, n: &Notification) {
        let _ = self.replies.send(Reply { order: self.order, key: n.key(), nack: false });
    }
    /// [`Subsystem::nack`].
    pub fn nack(&self, n: &Notification) {
        let _ = self.replies.send(Reply { order: self.order, key: n.key(), nack: true });
    }
}

/// The daemon's end: the registered layers, their notification queues, and the replies.
pub struct Registry {
    layers: Vec<(LayerSpec, SyncSender<Notification>)>,
    replies_tx: SyncSender<Reply>,
    replies_rx: Receiver<Reply>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let (replies_tx, replies_rx) = mpsc::sync_channel(REPLIES_QUEUED_MAX);
        Registry { layers: Vec::new(), replies_tx, replies_rx }
    }

    /// Registers a subsystem at `order` (above 0, which is the membership manager's own) with
    /// its barriers per transition kind. Register every layer before the node joins.
    pub fn register(&mut self, order: u32, name: &str, barriers: Barriers) -> Result<Subsystem, RegisterError> {
        let spec = LayerSpec { order, name: name.to_string(), barriers };
        let mut all: Vec<LayerSpec> = self.layers.iter().map(|(s, _)| s.clone()).collect();
        all.push(spec.clone());
        validate_layers(&all).map_err(|why| RegisterError::Invalid { order, name: name.into(), why })?;
        let (tx, rx) = mpsc::sync_channel(NOTIFICATIONS_QUEUED_MAX);
        self.layers.push((spec.clone(), tx));
        self.layers.sort_by_key(|(s, _)| s.order);
        Ok(Subsystem { spec, notifications: rx, replies: self.replies_tx.clone() })
    }

    /// The registrations, by order.
    pub fn specs(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|(s, _)| s.clone()).collect()
    }

    /// Hands a notification to its subsystem. Returns false when that subsystem's queue is full
    /// or it has gone (its answer then never comes, as with a hung subsystem).
    pub fn deliver(&self, n: Notification) -> bool {
        let Some((_, tx)) = self.layers.iter().find(|(s, _)| s.order == n.position.order) else { return false };
        match tx.try_send(n) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// The next reply from any subsystem, without waiting.
    pub fn try_reply(&self) -> Option<Reply> {
        self.replies_rx.try_recv().ok()
    }
}
