//! [`DlmNode`]: the event loop that runs a [`DlmCore`] in the daemon.

use super::client::{Done, Request, Sink, REQUESTS_QUEUED_MAX};
use super::{barrier_of, notification_line, Dlm, DlmConfig, DlmEvent, MemberView, Outbox, Snapshot};
use crate::core::{DlmCore, BARRIERS};
use crate::types::{ClientEvent, ClientId, LockId};
use crate::wire::decode_batch;
use crossbeam_channel::{select, Receiver, Sender};
use interconnect::{Event, Interconnect, Peer};
use manager::api::{Responder, Subsystem};
use manager::participant::Notification;
use membership_db::format::NodeId;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest the loop waits without an input (the core's deadlines are usually sooner).
pub const IDLE_WAIT_MS_MAX: u64 = 1000;
/// Inputs taken between two flushes of the core's outputs, when several are ready.
pub const INPUTS_PER_FLUSH_MAX: usize = 64;
/// Notifications queued between the subsystem's queue and the loop.
const NOTIFICATIONS_FORWARDED_MAX: usize = 1024;
/// Callbacks queued for the callback thread.
const CALLBACKS_QUEUED_MAX: usize = 65_536;
/// Stack of the loop's helper threads.
const THREAD_STACK_BYTES: usize = 512 * 1024;

/// The node table's `address` of a node (`host[:port]`), read when the node becomes a peer.
pub type AddressBook = Box<dyn FnMut(NodeId) -> Option<String> + Send>;
/// Where the lock manager's log lines go (one line each, without a time stamp or prefix).
pub type LogFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Why the lock manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum DlmStartError {
    /// This node's address cannot be listened on: fix its `address` in the node table
    /// (`sdc node add --node N --name X --address HOST[:PORT]`) or free the port.
    #[error("cannot listen on {addr} (this node's address in the node table): {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    /// A thread could not be started (resource limits).
    #[error("cannot start the lock manager's thread: {0}")]
    Thread(std::io::Error),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Link = Arc<Mutex<Option<Interconnect>>>;

/// One node's lock manager: the core on its own thread, its interconnect, and the handle
/// clients use ([`DlmNode::dlm`]).
pub struct DlmNode {
    dlm: Dlm,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
    link: Link,
}

impl std::fmt::Debug for DlmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlmNode").finish_non_exhaustive()
    }
}

impl DlmNode {
    /// Starts the lock manager of `config.node` on the layer registered as `subsystem`. The
    /// listen address is checked now; the interconnect starts at the first notification that
    /// shows this daemon's incarnation.
    pub fn start(
        config: DlmConfig,
        subsystem: Subsystem,
        addresses: AddressBook,
        log: LogFn,
    ) -> Result<DlmNode, DlmStartError> {
        // Bind once now, so that a taken port is one clear error at start, not a failed join.
        drop(
            std::net::TcpListener::bind(config.listen)
                .map_err(|source| DlmStartError::Listen { addr: config.listen, source })?,
        );
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .stack_size(THREAD_STACK_BYTES)
                .spawn(f)
                .map_err(DlmStartError::Thread)
        };
        let responder = subsystem.responder();
        let (notes_tx, notes_rx) = crossbeam_channel::bounded(NOTIFICATIONS_FORWARDED_MAX);
        // The subsystem's queue is a std channel: a thread forwards it into the select.
        spawn(
            format!("dlm{}-notes", config.node),
            Box::new(move || {
                while let Some(n) = subsystem.recv() {
                    if notes_tx.send(n).is_err() {
                        return;
                    }
                }
            }),
        )?;
        let (cb_tx, cb_rx) = crossbeam_channel::bounded::<Box<dyn FnOnce() + Send>>(CALLBACKS_QUEUED_MAX);
        spawn(
            format!("dlm{}-callbacks", config.node),
            Box::new(move || {
                for f in cb_rx {
                    f();
                }
            }),
        )?;
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(REQUESTS_QUEUED_MAX);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let link: Link = Arc::new(Mutex::new(None));
        let mut driver = Driver {
            core: DlmCore::new(config.node),
            config: config.clone(),
            responder,
            pending: HashMap::new(),
            next_key: 1,
            clients: HashMap::new(),
            outbox: Outbox::new(),
            link: link.clone(),
            ic_events: crossbeam_channel::never(),
            peers: Vec::new(),
            in_flight: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            addresses,
            address_cache: BTreeMap::new(),
            log,
            callbacks: cb_tx,
            epoch: Instant::now(),
        };
        let thread =
            spawn(format!("dlm{}", config.node), Box::new(move || driver.run(notes_rx, requests_rx, stop_rx)))?;
        let dlm = Dlm { requests: requests_tx, next_client: Arc::new(AtomicU64::new(1)) };
        Ok(DlmNode { dlm, stop: stop_tx, thread: Some(thread), link })
    }

    /// The handle clients use.
    pub fn dlm(&self) -> Dlm {
        self.dlm.clone()
    }

    /// Peers whose interconnect link is up and heard from within the link timeout (for the
    /// membership manager's reachability).
    /// The peers the interconnect reaches now; `None` before it has started (the node's first
    /// notification), when it reaches nobody because it has not tried.
    pub fn reachable(&self) -> Option<Vec<NodeId>> {
        lock(&self.link).as_ref().map(|ic| ic.reachable().into_iter().map(NodeId).collect())
    }

    /// Stops the loop (every client's waits end with [`ClientError::Stopped`]) and closes
    /// the interconnect. Bounded: the loop sees the stop within one input; the interconnect
    /// closes within its own bound.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(ic) = lock(&self.link).take() {
            ic.shutdown();
        }
    }
}

impl Drop for DlmNode {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A client as the loop keeps it.
struct ClientEntry {
    sink: Sink,
    waiters: HashMap<LockId, Done>,
}

struct Driver {
    core: DlmCore,
    config: DlmConfig,
    responder: Responder,
    /// Notifications handed to the core, by the key its acknowledgement names.
    pending: HashMap<u64, Notification>,
    next_key: u64,
    clients: HashMap<ClientId, ClientEntry>,
    outbox: Outbox,
    link: Link,
    ic_events: Receiver<Event>,
    /// The interconnect's peers as last set.
    peers: Vec<Peer>,
    /// Per subject of a transition between its stop and its resume here: the nodes its
    /// rebuild involves (members before and after, and a graceful leaver). They stay peers
    /// until its resume, so that the rebuild's frames are delivered.
    in_flight: BTreeMap<NodeId, (u64, Vec<NodeId>)>,
    /// The newest incarnation of every node seen in a view.
    incarnations: BTreeMap<NodeId, u64>,
    addresses: AddressBook,
    /// Addresses read, with the incarnation they were read for: a restarted node is looked
    /// up again (its address may have changed while it was down).
    address_cache: BTreeMap<NodeId, (u64, String)>,
    log: LogFn,
    callbacks: Sender<Box<dyn FnOnce() + Send>>,
    epoch: Instant,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn say(&self, line: &str) {
        (self.log)(&format!("dlm: {line}"))
    }

    fn run(&mut self, notes: Receiver<Notification>, requests: Receiver<Request>, stop: Receiver<()>) {
        let mut notes = notes;
        loop {
            let now = self.now_ms();
            let wait_ms = self.core.next_deadline().map_or(IDLE_WAIT_MS_MAX, |d| d.saturating_sub(now));
            let wait = Duration::from_millis(wait_ms.min(IDLE_WAIT_MS_MAX));
            let ic = self.ic_events.clone();
            select! {
                recv(stop) -> _ => break,
                recv(notes) -> n => match n {
                    Ok(n) => self.on_notification(n),
                    // The membership daemon has gone: serve on until shut down.
                    Err(_) => notes = crossbeam_channel::never(),
                },
                recv(ic) -> e => match e {
                    Ok(e) => self.on_link_event(e),
                    Err(_) => self.ic_events = crossbeam_channel::never(),
                },
                recv(requests) -> r => match r {
                    Ok(r) => self.on_request(r),
                    Err(_) => break,
                },
                default(wait) => {}
            }
            // Take what else is ready before flushing, so that frames batch (bounded).
            for _ in 0..INPUTS_PER_FLUSH_MAX {
                let mut took = false;
                if let Ok(e) = self.ic_events.try_recv() {
                    self.on_link_event(e);
                    took = true;
                }
                if let Ok(r) = requests.try_recv() {
                    self.on_request(r);
                    took = true;
                }
                if !took {
                    break;
                }
            }
            let now = self.now_ms();
            self.core.handle_timeout(now);
            self.flush();
        }
        // Stopped: every waiter's channel closes as the clients go ([`ClientError::Stopped`]).
        self.clients.clear();
    }

    // ---- inputs ----

    fn on_notification(&mut self, n: Notification) {
        // As the rehearsal layers log theirs (the membership tests read these lines).
        (self.log)(&notification_line(&n, BARRIERS));
        let Some(mut barrier) = barrier_of(&n, self.config.order) else {
            // Not a barrier of this layer (a bug elsewhere): answer, so the cluster goes on.
            self.say(&format!("notification at position {:?} is not a DLM barrier; acknowledged", n.position));
            self.responder.ack(&n);
            return;
        };
        for v in &n.view {
            self.incarnations.insert(v.node, v.incarnation);
        }
        if !self.ensure_link(&n) {
            self.responder.nack(&n);
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        barrier.key = key;
        let before: Vec<NodeId> = self.core.members().iter().map(|(m, _)| *m).collect();
        let (phase, subject, transition) = (barrier.phase, barrier.subject, barrier.transition);
        let mut involved: Vec<NodeId> = before;
        involved.extend(barrier.members.iter().map(|(m, _)| *m));
        involved.extend(barrier.leaving);
        self.pending.insert(key, n);
        self.core.handle_barrier(barrier);
        match phase {
            crate::core::Phase::Resume => {
                if self.in_flight.get(&subject).is_some_and(|(t, _)| *t == transition) {
                    self.in_flight.remove(&subject);
                }
            }
            _ => {
                let entry = self.in_flight.entry(subject).or_insert((transition, Vec::new()));
                if entry.0 != transition {
                    *entry = (transition, Vec::new());
                }
                entry.1.extend(involved);
                entry.1.sort();
                entry.1.dedup();
            }
        }
        self.update_peers();
    }

    /// Starts the interconnect once this daemon's incarnation is known (from a view). False
    /// when it cannot start: the notification is refused.
    fn ensure_link(&mut self, n: &Notification) -> bool {
        if lock(&self.link).is_some() {
            return true;
        }
        let me = self.config.node;
        let Some(incarnation) = n.view.iter().find(|v| v.node == me).map(|v| v.incarnation) else {
            // Not in the cluster yet: nothing to talk about.
            return true;
        };
        let config = interconnect::Config {
            me: me.0,
            incarnation,
            cluster_uuid: self.config.cluster_uuid,
            cluster_key: self.config.cluster_key,
            listen: self.config.listen,
            keepalive_ms: self.config.keepalive_ms,
            // A link is down after a third of the link timeout in silence: the disk's
            // arbitration then waits the whole timeout on top.
            silence_ms: (self.config.link_timeout_ms / 3).max(4 * self.config.keepalive_ms),
        };
        match Interconnect::start(config) {
            Ok((ic, events)) => {
                self.say(&format!("interconnect listening on {} (incarnation {incarnation})", ic.local_addr()));
                *lock(&self.link) = Some(ic);
                self.ic_events = events;
                true
            }
            Err(e) => {
                self.say(&format!("cannot start the interconnect: {e}; refusing the DLM barrier"));
                false
            }
        }
    }

    fn update_peers(&mut self) {
        let me = self.config.node;
        let mut nodes: Vec<NodeId> = self.core.members().iter().map(|(m, _)| *m).collect();
        for (_, involved) in self.in_flight.values() {
            nodes.extend(involved.iter().copied());
        }
        nodes.sort();
        nodes.dedup();
        nodes.retain(|n| *n != me);
        let mut peers = Vec::with_capacity(nodes.len());
        for node in nodes {
            let incarnation = self.incarnations.get(&node).copied().unwrap_or(0);
            let endpoint = match self.address_cache.get(&node).filter(|(inc, _)| *inc == incarnation) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = (self.addresses)(node).unwrap_or_default();
                    if a.is_empty() {
                        self.say(&format!(
                            "node {node} has no address in the node table: it cannot be dialled (set one with `sdc node add --node {node} --name NAME --address HOST[:PORT]`)"
                        ));
                    } else {
                        self.address_cache.insert(node, (incarnation, a.clone()));
                    }
                    a
                }
            };
            peers.push(Peer { node: node.0, incarnation, endpoint });
        }
        if peers != self.peers {
            let list: Vec<String> = peers.iter().map(|p| format!("{}@{}", p.node, p.endpoint)).collect();
            self.say(&format!("interconnect peers: [{}]", list.join(" ")));
            if let Some(ic) = lock(&self.link).as_ref() {
                ic.set_peers(peers.clone());
            }
            self.peers = peers;
        }
    }

    fn on_link_event(&mut self, e: Event) {
        match e {
            Event::Frame { from, payload } => match decode_batch(&payload) {
                Ok(frames) => {
                    for f in frames {
                        self.core.handle_frame(NodeId(from), f);
                    }
                }
                Err(e) => self.say(&format!("dropped a payload of {} bytes from node {from}: {e}", payload.len())),
            },
            Event::LinkUp(peer) => self.say(&format!("interconnect link to node {peer} up")),
            Event::LinkDown { peer, why } => self.say(&format!("interconnect link to node {peer} down: {why}")),
            Event::PeerRestarted(peer) => {
                self.say(&format!("interconnect: node {peer} restarted; its session was reset"))
            }
            Event::Refused { addr, why } => self.say(&format!("interconnect refused a connection from {addr}: {why}")),
        }
    }

    fn on_request(&mut self, r: Request) {
        let now = self.now_ms();
        match r {
            Request::Register { client, sink } => {
                self.clients.insert(client, ClientEntry { sink, waiters: HashMap::new() });
            }
            Request::Lock { client, res, mode, flags, done, reply } => {
                let result = self.core.lock(now, client, res, mode, flags);
                if let (Ok(lock), Some(c)) = (&result, self.clients.get_mut(&client)) {
                    c.waiters.insert(*lock, done);
                }
                let _ = reply.send(result);
            }
            Request::Convert { client, lock, mode, flags, lvb, done, reply } => {
                let result = self.core.convert(now, client, lock, mode, flags, lvb);
                if let (Ok(()), Some(c)) = (&result, self.clients.get_mut(&client)) {
                    c.waiters.insert(lock, done);
                }
                let _ = reply.send(result);
            }
            Request::Unlock { client, lock, lvb, reply } => {
                let _ = reply.send(self.core.unlock(client, lock, lvb));
            }
            Request::Cancel { client, lock, reply } => {
                let _ = reply.send(self.core.cancel(client, lock));
            }
            Request::Gone { client } => {
                self.core.client_gone(client);
                self.clients.remove(&client);
            }
            Request::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let reachable =
            lock(&self.link).as_ref().map_or_else(Vec::new, |ic| ic.reachable().into_iter().map(NodeId).collect());
        Snapshot {
            node: self.config.node,
            state: self.core.state(),
            members: self
                .core
                .members()
                .iter()
                .map(|(node, incarnation)| MemberView { node: *node, incarnation: *incarnation })
                .collect(),
            reachable,
            mastered: self.core.mastered(),
            locks: self.core.own_locks(),
            clients: self.clients.len(),
        }
    }

    // ---- outputs ----

    fn send(&self, to: NodeId, payload: Vec<u8>) {
        let guard = lock(&self.link);
        let Some(ic) = guard.as_ref() else {
            self.say(&format!("dropped {} bytes for node {to}: the interconnect has not started", payload.len()));
            return;
        };
        if let Err(e) = ic.send(to.0, payload) {
            self.say(&format!("cannot send to node {to}: {e}"));
        }
    }

    fn flush(&mut self) {
        let me = self.config.node;
        while let Some((to, frame)) = self.core.poll_transmit() {
            if to == me {
                self.say(&format!("the core addressed a frame to this node itself; dropped: {frame:?}"));
                continue;
            }
            if let Some((to, payload)) = self.outbox.push(to, &frame) {
                self.send(to, payload);
            }
        }
        for (to, payload) in self.outbox.drain() {
            self.send(to, payload);
        }
        while let Some(e) = self.core.poll_event() {
            self.deliver(e);
        }
        while let Some(key) = self.core.poll_ack() {
            if let Some(n) = self.pending.remove(&key) {
                self.responder.ack(&n);
            }
        }
    }

    fn deliver(&mut self, e: ClientEvent) {
        let (client, event, lock) = match e {
            ClientEvent::Completion { client, lock, result } => {
                (client, DlmEvent::Completion { lock, result }, Some(lock))
            }
            ClientEvent::Blocking { client, lock, wanted } => (client, DlmEvent::Blocking { lock, wanted }, None),
        };
        let Some(c) = self.clients.get_mut(&client) else { return };
        let done = lock.and_then(|l| c.waiters.remove(&l));
        match (done, event) {
            (Some(Done::Wait(tx)), DlmEvent::Completion { result, .. }) => {
                let _ = tx.send(result);
            }
            (Some(Done::Callback(f)), DlmEvent::Completion { lock, result }) => {
                self.callback(Box::new(move || f(lock, result)));
            }
            (_, event) => match &c.sink {
                Sink::Channel(tx) => {
                    let _ = tx.send(event);
                }
                Sink::Callback(f) => {
                    let f = f.clone();
                    self.callback(Box::new(move || f(event)));
                }
            },
        }
    }

    fn callback(&self, f: Box<dyn FnOnce() + Send>) {
        if self.callbacks.try_send(f).is_err() {
            self.say("a client callback was dropped: the callback thread is stuck or gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{ClientError, DlmEvent};
    use crate::types::{Flags, LockError, ResName};
    use crate::Mode;
    use manager::api::Registry;
    use membership_db::format::Barriers;

    const DLM: u32 = 10;
    const WAIT: Duration = Duration::from_secs(20);

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    struct TestNode {
        registry: Registry,
        node: DlmNode,
    }

    fn start(id: u16, ports: &BTreeMap<u16, u16>) -> TestNode {
        let mut registry = Registry::new();
        let sub = registry.register(DLM, "dlm", Barriers { join: 3, leave: 3, forced_leave: 3 }).unwrap();
        let config = DlmConfig {
            node: NodeId(id),
            order: DLM,
            cluster_uuid: [7; 16],
            cluster_key: [9; 32],
            listen: format!("127.0.0.1:{}", ports[&id]).parse().unwrap(),
            keepalive_ms: 50,
            link_timeout_ms: 2000,
        };
        let book = ports.clone();
        let addresses: AddressBook = Box::new(move |n| book.get(&n.0).map(|p| format!("127.0.0.1:{p}")));
        let node = DlmNode::start(config, sub, addresses, Arc::new(|_: &str| {})).unwrap();
        TestNode { registry, node }
    }

    /// Takes `subject`'s join through the DLM's three barriers on every node of `nodes`,
    /// each barrier cluster-wide (every node acknowledges before the next).
    fn join(nodes: &[&TestNode], subject: u16, joined: &[u16]) {
        for barrier in 0..3u8 {
            let n = crate::driver::join_notification(DLM, subject, joined, barrier);
            for t in nodes {
                assert!(t.registry.deliver(n.clone()));
            }
            for t in nodes {
                let began = Instant::now();
                let reply = loop {
                    if let Some(r) = t.registry.try_reply() {
                        break r;
                    }
                    assert!(began.elapsed() < WAIT, "no acknowledgement of barrier {barrier} of node {subject}'s join");
                    std::thread::sleep(Duration::from_millis(2));
                };
                assert_eq!((reply.key, reply.nack), (n.key(), false));
            }
        }
    }

    #[test]
    fn two_nodes_contend_for_a_lock_across_the_interconnect() {
        let ports: BTreeMap<u16, u16> = [(1, free_port()), (2, free_port())].into();
        let (one, two) = (start(1, &ports), start(2, &ports));
        join(&[&one], 1, &[]);
        join(&[&one, &two], 2, &[1]);
        let res = ResName::new("default", b"r").unwrap();
        let a = one.node.dlm().client();
        let (lock_a, grant) = a.lock(res.clone(), Mode::Ex, Flags::default()).unwrap();
        assert_eq!(grant.mode, Mode::Ex);

        let b = two.node.dlm().client();
        match b.lock(res.clone(), Mode::Pr, Flags::NOQUEUE) {
            Err(ClientError::Lock { error: LockError::WouldBlock, .. }) => {}
            other => panic!("node 2 got {other:?} while node 1 holds EX"),
        }
        // A waiting request from node 2: node 1's client hears a blocking callback.
        let waiter = std::thread::spawn(move || {
            let r = b.lock(res, Mode::Pr, Flags { timeout_ms: Some(20_000), ..Flags::default() });
            (b, r)
        });
        let event = a.events().unwrap().recv_timeout(WAIT).expect("a blocking callback");
        assert_eq!(event, DlmEvent::Blocking { lock: lock_a, wanted: Mode::Pr });
        // Dropping the holder releases its lock: node 2's request is granted.
        drop(a);
        let (b, r) = waiter.join().unwrap();
        assert_eq!(r.unwrap().1.mode, Mode::Pr);
        let snap = two.node.dlm().snapshot().unwrap();
        assert_eq!(snap.members.len(), 2);
        assert_eq!(snap.locks.len(), 1);
        assert!(
            one.node.reachable().unwrap_or_default().contains(&NodeId(2))
                || two.node.reachable().unwrap_or_default().contains(&NodeId(1))
        );
        drop(b);
        // After shutdown, clients are told the lock manager stopped.
        let c = two.node.dlm().client();
        two.node.shutdown();
        let res = ResName::new("default", b"s").unwrap();
        assert_eq!(c.lock(res, Mode::Ex, Flags::default()).unwrap_err(), ClientError::Stopped);
    }
}
