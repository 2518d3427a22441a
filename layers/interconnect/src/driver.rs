//! The driver: std threads and TCP around the sans-IO core.
//!
//! Names in endpoints are resolved with the system resolver when the link dials, on the link's
//! own thread: a slow resolver delays that link only (and `shutdown` by as much).
//!
//! # Threads
//!
//! - the *listener* accepts connections (polling every [`POLL_MS`] so shutdown is prompt) and
//!   hands each to a *handshake thread* (at most [`HANDSHAKES_MAX`] at once, each bounded by
//!   [`HANDSHAKE_MS_MAX`]);
//! - one *link thread* per listed peer owns the writing side: it encodes what the session has
//!   due into one buffer and writes it with one `write` (so frames queued together cost one
//!   syscall), sends keepalives, declares silence, and, if this node has the lower id, dials
//!   and redials with back-off;
//! - one *reader thread* per connection feeds what it reads to the session and delivers the
//!   completed messages to the event channel.
//!
//! The session of a peer sits in a mutex with its connection. Every connection has an id; a
//! thread acting for a connection that has since been replaced does nothing. Deliveries of one
//! peer pass through a second mutex, held from decoding to the channel, so two readers (an old
//! connection's and its successor's) can never reorder them.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use crate::core::handshake::{Acceptor, AcceptorStep, Dialer, DialerStep, Established, Identity, NONCE_BYTES};
use crate::core::session::{SendError, Session, SessionConfig};
use crate::endpoint::{parse_endpoint, EndpointError};
use crate::NODE_ID_MAX;

/// The longest a handshake may take, connect included (slowloris bound).
pub const HANDSHAKE_MS_MAX: u64 = 2000;
/// Handshakes in progress at once on the listener; more connections are refused.
pub const HANDSHAKES_MAX: usize = 32;
/// The first redial delay after a failure; it doubles up to [`BACKOFF_MS_MAX`].
pub const BACKOFF_MS_MIN: u64 = 50;
pub const BACKOFF_MS_MAX: u64 = 1000;
/// Events held for the application; when full, readers wait (back-pressure on the peers).
pub const EVENTS_MAX: usize = 65_536;
/// Bytes read per `read`.
pub const READ_BYTES_MAX: usize = 64 * 1024;
/// Bytes encoded per `write` when frames queue up.
pub const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;
/// How often blocked threads look at the shutdown flag (read timeouts, accept polling).
pub const POLL_MS: u64 = 50;
/// The longest an idle link thread sleeps before looking again.
pub const WAIT_MS_MAX: u64 = 1000;
/// Addresses tried per resolution of a peer's endpoint.
pub const RESOLVED_ADDRS_MAX: usize = 4;
/// Stack of every thread (they hold little).
const THREAD_STACK_BYTES: usize = 256 * 1024;

const _: () = assert!(BACKOFF_MS_MIN <= BACKOFF_MS_MAX && POLL_MS < HANDSHAKE_MS_MAX);

/// How to run this node's interconnect.
#[derive(Clone)]
pub struct Config {
    /// This node's id, 1..=256.
    pub me: u16,
    /// This daemon start's incarnation.
    pub incarnation: u64,
    pub cluster_uuid: [u8; 16],
    /// The cluster's 32-byte secret (from the shared disk).
    pub cluster_key: [u8; 32],
    /// Where to listen (port 0: any, see [`Interconnect::local_addr`]).
    pub listen: SocketAddr,
    /// Send something at least this often on an idle link.
    pub keepalive_ms: u64,
    /// Declare a link down when the peer sent nothing for this long (> `keepalive_ms`).
    pub silence_ms: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("me", &self.me)
            .field("incarnation", &self.incarnation)
            .field("cluster_uuid", &self.cluster_uuid)
            .field("listen", &self.listen)
            .field("keepalive_ms", &self.keepalive_ms)
            .field("silence_ms", &self.silence_ms)
            .finish_non_exhaustive()
    }
}

/// A node to keep a link with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: u16,
    /// Its current incarnation: a handshake claiming another is refused.
    pub incarnation: u64,
    /// `host[:port]` (see [`parse_endpoint`]); used only when this node dials (lower id).
    pub endpoint: String,
}

/// What happened, in the order it happened for each peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message, delivered once, in the order `from` sent it (within both incarnations).
    Frame { from: u16, payload: Vec<u8> },
    /// A connection to the peer completed its handshake.
    LinkUp(u16),
    /// The connection to the peer is gone (`why` is one line for the log); it is redialled.
    /// Queued messages stay queued.
    LinkDown { peer: u16, why: String },
    /// `set_peers` gave the peer a new incarnation: its session was reset (messages still
    /// queued for the old incarnation were dropped).
    PeerRestarted(u16),
    /// A connection was refused during the handshake (stranger, wrong key or cluster, stale
    /// incarnation, timeout); nothing it sent was acted on.
    Refused { addr: SocketAddr, why: String },
}

/// Why the interconnect could not start.
#[derive(Debug, thiserror::Error)]
pub enum InterconnectError {
    /// The listen address is taken or not local: fix `Config::listen`.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The configuration is inconsistent: fix it.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A thread could not be started (resource limits).
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// One live connection.
struct Conn {
    id: u64,
    stream: Arc<TcpStream>,
    addr: SocketAddr,
}

/// A peer's mutable state, under [`Link::state`].
struct LinkState {
    session: Session,
    endpoint: Result<(String, u16), EndpointError>,
    conn: Option<Conn>,
    conn_ids: u64,
    readers: Vec<JoinHandle<()>>,
    /// Dropped by `set_peers`: the link thread closes and exits.
    removed: bool,
    /// Something to do for the link thread.
    wake: bool,
    backoff_ms: u64,
    next_dial_ms: u64,
}

struct Link {
    node: u16,
    state: Mutex<LinkState>,
    wake: Condvar,
    /// Held from decoding to the event channel: one peer's deliveries stay in order.
    delivery: Mutex<()>,
}

/// The listed peers: each link and its thread.
type LinkTable = BTreeMap<u16, (Arc<Link>, JoinHandle<()>)>;

struct Shared {
    identity: Identity,
    session_config: SessionConfig,
    epoch: Instant,
    stop: AtomicBool,
    events: Sender<Event>,
    links: Mutex<LinkTable>,
    /// Threads of removed links and of handshakes, joined at shutdown.
    retired: Mutex<Vec<JoinHandle<()>>>,
    handshakes: Mutex<Vec<JoinHandle<()>>>,
}

/// This node's interconnect: a listener and one authenticated link per listed peer.
pub struct Interconnect {
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread is a bug already reported; keep the data going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).stack_size(THREAD_STACK_BYTES).spawn(f)
}

fn nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).expect("the operating system's random source failed");
    nonce
}

impl Interconnect {
    /// Binds the listener and starts accepting. No links until [`Interconnect::set_peers`].
    pub fn start(config: Config) -> Result<(Interconnect, Receiver<Event>), InterconnectError> {
        if config.me == 0 || config.me > NODE_ID_MAX {
            return Err(InterconnectError::Config(format!("node id {} outside 1..={NODE_ID_MAX}", config.me)));
        }
        if config.keepalive_ms == 0 || config.keepalive_ms >= config.silence_ms {
            return Err(InterconnectError::Config(format!(
                "need 0 < keepalive_ms ({}) < silence_ms ({})",
                config.keepalive_ms, config.silence_ms
            )));
        }
        let listener = TcpListener::bind(config.listen)
            .map_err(|source| InterconnectError::Bind { addr: config.listen, source })?;
        let local_addr =
            listener.local_addr().map_err(|source| InterconnectError::Bind { addr: config.listen, source })?;
        listener.set_nonblocking(true).map_err(|source| InterconnectError::Bind { addr: config.listen, source })?;
        let (events, receiver) = crossbeam_channel::bounded(EVENTS_MAX);
        let shared = Arc::new(Shared {
            identity: Identity {
                cluster_uuid: config.cluster_uuid,
                cluster_key: config.cluster_key,
                node: config.me,
                incarnation: config.incarnation,
            },
            session_config: SessionConfig { keepalive_ms: config.keepalive_ms, silence_ms: config.silence_ms },
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            events,
            links: Mutex::new(BTreeMap::new()),
            retired: Mutex::new(Vec::new()),
            handshakes: Mutex::new(Vec::new()),
        });
        let listener_shared = shared.clone();
        let listener = spawn(format!("ic{}-listen", config.me), move || run_listener(&listener_shared, listener))
            .map_err(InterconnectError::Thread)?;
        Ok((Interconnect { shared, listener: Some(listener), local_addr }, receiver))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets the peers to keep links with: links to new peers start (the lower id dials);
    /// links to peers no longer listed are closed, and their handshakes refused from now on;
    /// a peer listed with a new incarnation has its session reset ([`Event::PeerRestarted`]).
    /// An entry for this node itself is ignored, so the whole membership can be passed.
    ///
    /// # Panics
    /// On a node id outside 1..=256 (a programmer error: ids come from the node table).
    pub fn set_peers(&self, peers: Vec<Peer>) {
        let me = self.shared.identity.node;
        let mut wanted: BTreeMap<u16, Peer> = BTreeMap::new();
        for peer in peers {
            assert!(peer.node >= 1 && peer.node <= NODE_ID_MAX, "peer id {} outside 1..={NODE_ID_MAX}", peer.node);
            if peer.node != me {
                wanted.insert(peer.node, peer);
            }
        }
        let mut events = Vec::new();
        let mut links = lock(&self.shared.links);
        let gone: Vec<u16> = links.keys().filter(|node| !wanted.contains_key(node)).copied().collect();
        for node in gone {
            let (link, thread) = links.remove(&node).expect("listed");
            let mut state = lock(&link.state);
            state.removed = true;
            if let Some(event) = drop_conn(&self.shared, &link, &mut state, None, "peer removed from the peer list") {
                events.push(event);
            }
            link.wake.notify_all();
            drop(state);
            lock(&self.shared.retired).push(thread);
        }
        for (node, peer) in wanted {
            let endpoint = parse_endpoint(&peer.endpoint);
            if let Some((link, _)) = links.get(&node) {
                let mut state = lock(&link.state);
                state.endpoint = endpoint;
                if state.session.handle_peer_incarnation(peer.incarnation) {
                    if let Some(event) = drop_conn(&self.shared, link, &mut state, None, "peer restarted") {
                        events.push(event);
                    }
                    events.push(Event::PeerRestarted(node));
                }
                state.wake = true;
                link.wake.notify_all();
                continue;
            }
            if let (Err(e), true) = (&endpoint, me < node) {
                events.push(Event::LinkDown {
                    peer: node,
                    why: format!("cannot dial endpoint {:?}: {e}", peer.endpoint),
                });
            }
            let link = Arc::new(Link {
                node,
                state: Mutex::new(LinkState {
                    session: Session::new(self.shared.session_config, peer.incarnation),
                    endpoint,
                    conn: None,
                    conn_ids: 0,
                    readers: Vec::new(),
                    removed: false,
                    wake: false,
                    backoff_ms: BACKOFF_MS_MIN,
                    next_dial_ms: 0,
                }),
                wake: Condvar::new(),
                delivery: Mutex::new(()),
            });
            let (shared, thread_link) = (self.shared.clone(), link.clone());
            match spawn(format!("ic{me}-link{node}"), move || run_link(&shared, &thread_link)) {
                Ok(thread) => {
                    links.insert(node, (link, thread));
                }
                Err(e) => events.push(Event::LinkDown { peer: node, why: format!("cannot start its thread: {e}") }),
            }
        }
        drop(links);
        let mut retired = lock(&self.shared.retired);
        retired.retain(|thread| !thread.is_finished());
        drop(retired);
        for event in events {
            self.shared.emit(event);
        }
    }

    /// Queues `payload` for `to`; never blocks. Delivered once and in order while both
    /// incarnations live, across reconnects. `Err(QueueFull)`: the peer has not acknowledged
    /// for too long; treat the link as broken.
    pub fn send(&self, to: u16, payload: Vec<u8>) -> Result<(), SendError> {
        let link = lock(&self.shared.links).get(&to).map(|(link, _)| link.clone()).ok_or(SendError::UnknownPeer(to))?;
        let mut state = lock(&link.state);
        state.session.send(payload)?;
        if !state.wake {
            state.wake = true;
            link.wake.notify_one();
        }
        Ok(())
    }

    /// Peers whose link is up and that were heard from within `silence_ms`.
    pub fn reachable(&self) -> Vec<u16> {
        let now = self.shared.now_ms();
        let links: Vec<Arc<Link>> = lock(&self.shared.links).values().map(|(link, _)| link.clone()).collect();
        links.into_iter().filter(|link| lock(&link.state).session.is_live(now)).map(|link| link.node).collect()
    }

    /// Fault injection for tests (this crate's and others'): shuts the current connection to
    /// `peer` down at the socket, as a pulled cable would, without telling the session. The
    /// link notices, reports [`Event::LinkDown`] and redials. Returns whether there was one.
    pub fn sever(&self, peer: u16) -> bool {
        let Some(link) = lock(&self.shared.links).get(&peer).map(|(link, _)| link.clone()) else { return false };
        let state = lock(&link.state);
        state.conn.as_ref().map(|conn| conn.stream.shutdown(Shutdown::Both)).is_some()
    }

    /// Closes every connection and joins every thread. Takes at most about
    /// [`HANDSHAKE_MS_MAX`] (a dial in progress) plus [`POLL_MS`].
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
        let links: Vec<(Arc<Link>, JoinHandle<()>)> =
            std::mem::take(&mut *lock(&self.shared.links)).into_values().collect();
        for (link, _) in &links {
            let mut state = lock(&link.state);
            state.removed = true;
            let _ = drop_conn(&self.shared, link, &mut state, None, "shutting down");
            link.wake.notify_all();
        }
        for (_, thread) in links {
            let _ = thread.join();
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.shared.retired))
            .into_iter()
            .chain(std::mem::take(&mut *lock(&self.shared.handshakes)))
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Interconnect {
    fn drop(&mut self) {
        if self.listener.is_some() {
            self.stop();
        }
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Puts an event in the channel, waiting while it is full, until shutdown.
    fn emit(&self, mut event: Event) {
        // Bounded by shutdown: every wait is POLL_MS, and the flag is read after each.
        loop {
            match self.events.send_timeout(event, Duration::from_millis(POLL_MS)) {
                Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.stopping() {
                        return;
                    }
                    event = back;
                }
            }
        }
    }

    fn link(&self, node: u16) -> Option<Arc<Link>> {
        lock(&self.links).get(&node).map(|(link, _)| link.clone())
    }

    fn expected_incarnation(&self, node: u16) -> Option<u64> {
        let link = self.link(node)?;
        let state = lock(&link.state);
        Some(state.session.peer_incarnation())
    }
}

/// Closes the link's connection (if it is `only_id`, when given) and returns the event to
/// report. The next dial may start at once; the back-off applies to failed dials.
fn drop_conn(shared: &Shared, link: &Link, state: &mut LinkState, only_id: Option<u64>, why: &str) -> Option<Event> {
    let conn = state.conn.as_ref()?;
    if only_id.is_some_and(|id| id != conn.id) {
        return None;
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
    let addr = conn.addr;
    state.conn = None;
    state.session.handle_disconnect();
    state.next_dial_ms = shared.now_ms();
    state.wake = true;
    link.wake.notify_all();
    Some(Event::LinkDown { peer: link.node, why: format!("{why} ({addr})") })
}

/// Installs an authenticated connection and starts its reader. Called with the state locked;
/// returns the events to report (after unlocking).
fn install(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    state: &mut LinkState,
    stream: TcpStream,
    addr: SocketAddr,
    established: Established,
) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(event) = drop_conn(shared, link, state, None, "replaced by a new connection") {
        events.push(event);
    }
    if let Err(e) = state.session.handle_established(shared.now_ms(), &established.keys, established.peer_received) {
        let _ = stream.shutdown(Shutdown::Both);
        events.push(Event::Refused { addr, why: format!("node {}: {e}", link.node) });
        return events;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(POLL_MS)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(shared.session_config.silence_ms)));
    let stream = Arc::new(stream);
    state.conn_ids += 1;
    let id = state.conn_ids;
    let (reader_shared, reader_link, reader_stream) = (shared.clone(), link.clone(), stream.clone());
    let rest = established.rest;
    let name = format!("ic{}-read{}", shared.identity.node, link.node);
    match spawn(name, move || run_reader(&reader_shared, &reader_link, id, &reader_stream, rest)) {
        Ok(reader) => state.readers.push(reader),
        Err(e) => {
            state.session.handle_disconnect();
            let _ = stream.shutdown(Shutdown::Both);
            events.push(Event::LinkDown { peer: link.node, why: format!("cannot start a reader: {e}") });
            return events;
        }
    }
    state.conn = Some(Conn { id, stream, addr });
    state.backoff_ms = BACKOFF_MS_MIN;
    state.wake = true;
    link.wake.notify_all();
    events.push(Event::LinkUp(link.node));
    events
}

fn run_listener(shared: &Arc<Shared>, listener: TcpListener) {
    // Bounded by shutdown: each idle turn sleeps POLL_MS.
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, addr)) => {
                let mut handshakes = lock(&shared.handshakes);
                handshakes.retain(|thread| !thread.is_finished());
                if handshakes.len() >= HANDSHAKES_MAX {
                    drop(handshakes);
                    drop(stream);
                    shared.emit(Event::Refused { addr, why: format!("over {HANDSHAKES_MAX} handshakes in progress") });
                    continue;
                }
                let thread_shared = shared.clone();
                let name = format!("ic{}-accept", shared.identity.node);
                match spawn(name, move || accept_one(&thread_shared, stream, addr)) {
                    Ok(thread) => handshakes.push(thread),
                    Err(e) => {
                        drop(handshakes);
                        shared.emit(Event::Refused { addr, why: format!("cannot start a handshake thread: {e}") });
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // WouldBlock (nothing to accept) or a transient error such as EMFILE.
            Err(_) => std::thread::sleep(Duration::from_millis(POLL_MS)),
        }
    }
}

/// Reads into `buf` until something arrives, `deadline_ms` passes or shutdown. The stream
/// has a read timeout of POLL_MS. `Ok(0)`: the peer closed.
fn read_until(shared: &Shared, stream: &TcpStream, buf: &mut [u8], deadline_ms: u64) -> Result<usize, String> {
    // Bounded by the deadline: each turn waits at most POLL_MS.
    loop {
        if shared.stopping() {
            return Err("shutting down".into());
        }
        if shared.now_ms() >= deadline_ms {
            return Err(format!("handshake not done within {HANDSHAKE_MS_MAX} ms"));
        }
        match (&*stream).read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// The accepting side of one connection: handshake, then install it on the peer's link.
fn accept_one(shared: &Arc<Shared>, stream: TcpStream, addr: SocketAddr) {
    let deadline_ms = shared.now_ms() + HANDSHAKE_MS_MAX;
    let refuse = |why: String| shared.emit(Event::Refused { addr, why });
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(POLL_MS))))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX))));
    if let Err(e) = setup {
        return refuse(format!("socket setup failed: {e}"));
    }
    let mut acceptor = Acceptor::new(shared.identity.clone(), nonce());
    let mut buf = vec![0u8; crate::core::handshake::HANDSHAKE_MESSAGE_BYTES_MAX];
    // Bounded by the deadline (read_until) and by the handshake's two inbound messages.
    let (peer, peer_incarnation, peer_received) = loop {
        let n = match read_until(shared, &stream, &mut buf, deadline_ms) {
            Ok(0) => return refuse("closed during the handshake".into()),
            Ok(n) => n,
            Err(why) => return refuse(why),
        };
        match acceptor.handle_bytes(&buf[..n], |node| shared.expected_incarnation(node)) {
            Ok(AcceptorStep::NeedMore) => {}
            Ok(AcceptorStep::Send(bytes)) => {
                if let Err(e) = (&stream).write_all(&bytes) {
                    return refuse(format!("write failed during the handshake: {e}"));
                }
            }
            Ok(AcceptorStep::Authenticated { peer, peer_incarnation, peer_received }) => {
                break (peer, peer_incarnation, peer_received)
            }
            Err(e) => return refuse(e.to_string()),
        }
    };
    let Some(link) = shared.link(peer) else { return refuse(format!("node {peer} is no longer a listed peer")) };
    let mut state = lock(&link.state);
    if state.removed || shared.stopping() {
        return refuse(format!("node {peer} is no longer a listed peer"));
    }
    if state.session.peer_incarnation() != peer_incarnation {
        return refuse(format!("node {peer} incarnation {peer_incarnation} is stale"));
    }
    if let Err(e) = state.session.check_resume(peer_received) {
        return refuse(format!("node {peer}: {e}"));
    }
    // Under the lock: no frame of this connection is written before the Accept, and the
    // received count sent is the one the session resumes from.
    let (accept, established) = match acceptor.finish(state.session.received()) {
        Ok(done) => done,
        Err(e) => return refuse(e.to_string()),
    };
    if let Err(e) = (&stream).write_all(&accept) {
        return refuse(format!("write failed during the handshake: {e}"));
    }
    let events = install(shared, &link, &mut state, stream, addr, established);
    drop(state);
    for event in events {
        shared.emit(event);
    }
}

/// Dials `host:port` and runs the dialer's handshake. `Err((addr, why, refused))`: `refused`
/// when the peer answered but the handshake failed (reported as [`Event::Refused`]).
fn dial(
    shared: &Shared,
    peer: u16,
    (host, port): (&str, u16),
    peer_incarnation: u64,
    received: u64,
) -> Result<(TcpStream, SocketAddr, Established), (Option<SocketAddr>, String)> {
    let deadline_ms = shared.now_ms() + HANDSHAKE_MS_MAX;
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.take(RESOLVED_ADDRS_MAX).collect(),
        Err(e) => return Err((None, format!("cannot resolve {host}: {e}"))),
    };
    let mut last_error = format!("{host} resolves to no address");
    let mut connected = None;
    for addr in addrs {
        let left_ms = deadline_ms.saturating_sub(shared.now_ms()).max(1);
        match TcpStream::connect_timeout(&addr, Duration::from_millis(left_ms)) {
            Ok(stream) => {
                connected = Some((stream, addr));
                break;
            }
            Err(e) => last_error = format!("connect to {addr} failed: {e}"),
        }
    }
    let Some((stream, addr)) = connected else { return Err((None, last_error)) };
    let fail = |why: String| Err((Some(addr), why));
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_millis(POLL_MS))))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_millis(HANDSHAKE_MS_MAX))));
    if let Err(e) = setup {
        return fail(format!("socket setup failed: {e}"));
    }
    let (mut dialer, hello) = Dialer::new(shared.identity.clone(), peer, peer_incarnation, received, nonce());
    if let Err(e) = (&stream).write_all(&hello) {
        return fail(format!("write failed during the handshake: {e}"));
    }
    let mut buf = vec![0u8; READ_BYTES_MAX];
    // Bounded by the deadline (read_until) and by the handshake's two inbound messages.
    loop {
        let n = match read_until(shared, &stream, &mut buf, deadline_ms) {
            Ok(0) => return fail("peer closed during the handshake (it refused us; see its log)".into()),
            Ok(n) => n,
            Err(why) => return fail(why),
        };
        match dialer.handle_bytes(&buf[..n]) {
            Ok(DialerStep::NeedMore) => {}
            Ok(DialerStep::Send(bytes)) => {
                if let Err(e) = (&stream).write_all(&bytes) {
                    return fail(format!("write failed during the handshake: {e}"));
                }
            }
            Ok(DialerStep::Established(established)) => return Ok((stream, addr, established)),
            Err(e) => return fail(e.to_string()),
        }
    }
}

/// Waits on the link's condvar until woken, `until_ms`, or shutdown (at most WAIT_MS_MAX).
fn wait<'a>(
    shared: &Shared,
    link: &'a Link,
    state: MutexGuard<'a, LinkState>,
    until_ms: u64,
) -> MutexGuard<'a, LinkState> {
    let wait_ms = until_ms.saturating_sub(shared.now_ms()).min(WAIT_MS_MAX);
    if wait_ms == 0 {
        return state;
    }
    let (state, _) = link
        .wake
        .wait_timeout_while(state, Duration::from_millis(wait_ms), |s| !s.wake && !s.removed && !shared.stopping())
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    state
}

/// The link thread: writes, keepalives, silence, dialing.
fn run_link(shared: &Arc<Shared>, link: &Arc<Link>) {
    let dials = shared.identity.node < link.node;
    let mut out = Vec::with_capacity(WRITE_BATCH_BYTES_MAX + crate::core::frame::WIRE_FRAME_BYTES_MAX);
    // Bounded by shutdown or removal; every turn does one bounded step or one bounded wait.
    loop {
        let mut state = lock(&link.state);
        if state.removed || shared.stopping() {
            let _ = drop_conn(shared, link, &mut state, None, "closing");
            let readers = std::mem::take(&mut state.readers);
            drop(state);
            for reader in readers {
                let _ = reader.join();
            }
            return;
        }
        state.wake = false;
        state.readers.retain(|reader| !reader.is_finished());
        let now = shared.now_ms();
        if let Some((id, stream)) = state.conn.as_ref().map(|conn| (conn.id, conn.stream.clone())) {
            if let Err(e) = state.session.handle_timeout(now) {
                let event = drop_conn(shared, link, &mut state, Some(id), &e.to_string());
                drop(state);
                event.into_iter().for_each(|event| shared.emit(event));
                continue;
            }
            out.clear();
            state.session.poll_transmit(now, &mut out, WRITE_BATCH_BYTES_MAX);
            if !out.is_empty() {
                drop(state);
                if let Err(e) = (&*stream).write_all(&out) {
                    let mut state = lock(&link.state);
                    let event = drop_conn(shared, link, &mut state, Some(id), &format!("write failed: {e}"));
                    drop(state);
                    event.into_iter().for_each(|event| shared.emit(event));
                }
                continue;
            }
            let deadline = state.session.next_deadline().unwrap_or(now + WAIT_MS_MAX);
            drop(wait(shared, link, state, deadline));
        } else if dials && state.endpoint.is_ok() {
            if now < state.next_dial_ms {
                let until = state.next_dial_ms;
                drop(wait(shared, link, state, until));
                continue;
            }
            let Ok((host, port)) = state.endpoint.clone() else { continue };
            let peer_incarnation = state.session.peer_incarnation();
            let received = state.session.received();
            drop(state);
            let result = dial(shared, link.node, (&host, port), peer_incarnation, received);
            let mut state = lock(&link.state);
            let mut events = Vec::new();
            let current = !state.removed
                && !shared.stopping()
                && state.conn.is_none()
                && state.session.peer_incarnation() == peer_incarnation;
            let up = match result {
                Ok((stream, addr, established)) if current => {
                    events = install(shared, link, &mut state, stream, addr, established);
                    state.conn.is_some()
                }
                Ok((stream, ..)) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    false
                }
                Err((addr, why)) => {
                    if let Some(addr) = addr {
                        events.push(Event::Refused { addr, why: format!("node {}: {why}", link.node) });
                    }
                    false
                }
            };
            if !up {
                state.next_dial_ms = shared.now_ms() + state.backoff_ms;
                state.backoff_ms = (state.backoff_ms * 2).min(BACKOFF_MS_MAX);
            }
            drop(state);
            events.into_iter().for_each(|event| shared.emit(event));
        } else {
            drop(wait(shared, link, state, now + WAIT_MS_MAX));
        }
    }
}

/// The reader of one connection: feeds the session, delivers in order.
fn run_reader(shared: &Arc<Shared>, link: &Arc<Link>, id: u64, stream: &TcpStream, rest: Vec<u8>) {
    if !rest.is_empty() && !feed(shared, link, id, &rest) {
        return;
    }
    let mut buf = vec![0u8; READ_BYTES_MAX];
    // Bounded by the connection: it ends on EOF, an error, replacement or shutdown.
    loop {
        if shared.stopping() {
            return;
        }
        match (&*stream).read(&mut buf) {
            Ok(0) => return close(shared, link, id, "peer closed the connection"),
            Ok(n) => {
                if !feed(shared, link, id, &buf[..n]) {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                let state = lock(&link.state);
                if state.conn.as_ref().map(|c| c.id) != Some(id) {
                    return;
                }
            }
            Err(e) => return close(shared, link, id, &format!("read failed: {e}")),
        }
    }
}

fn close(shared: &Shared, link: &Link, id: u64, why: &str) {
    let mut state = lock(&link.state);
    let event = drop_conn(shared, link, &mut state, Some(id), why);
    drop(state);
    event.into_iter().for_each(|event| shared.emit(event));
}

/// Feeds bytes of connection `id` to the session and delivers what they complete. Returns
/// whether the connection goes on.
fn feed(shared: &Shared, link: &Link, id: u64, bytes: &[u8]) -> bool {
    let _in_order = lock(&link.delivery);
    let mut state = lock(&link.state);
    if state.conn.as_ref().map(|c| c.id) != Some(id) {
        return false;
    }
    let result = state.session.handle_bytes(shared.now_ms(), bytes);
    let delivered: Vec<Vec<u8>> = std::iter::from_fn(|| state.session.poll_delivery()).collect();
    let mut down = None;
    match &result {
        Ok(()) => {
            if state.session.wants_transmit() && !state.wake {
                state.wake = true;
                link.wake.notify_one();
            }
        }
        Err(e) => {
            // The session already dropped the connection: close the socket and report.
            let conn = state.conn.take().expect("checked above");
            let _ = conn.stream.shutdown(Shutdown::Both);
            state.next_dial_ms = shared.now_ms();
            state.wake = true;
            link.wake.notify_all();
            down = Some(Event::LinkDown { peer: link.node, why: format!("{e} ({})", conn.addr) });
        }
    }
    drop(state);
    for payload in delivered {
        shared.emit(Event::Frame { from: link.node, payload });
    }
    if let Some(event) = down {
        shared.emit(event);
    }
    result.is_ok()
}
