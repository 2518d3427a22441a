//! [`DlmCore`]: one node's lock manager, sans-IO.
//!
//! Inputs: client requests ([`DlmCore::lock`], [`DlmCore::convert`], [`DlmCore::unlock`],
//! [`DlmCore::cancel`], [`DlmCore::client_gone`]), frames from the other nodes
//! ([`DlmCore::handle_frame`]), the membership manager's barriers ([`DlmCore::handle_barrier`])
//! and time ([`DlmCore::handle_timeout`]). Outputs, polled in this order after every input:
//! frames to send ([`DlmCore::poll_transmit`]), client events ([`DlmCore::poll_event`]) and
//! barrier acknowledgements ([`DlmCore::poll_ack`]).
//!
//! # Roles
//!
//! Every node is the *owner* of its clients' locks. Each resource has one *master*, which
//! keeps its queues and value block ([`Queues`]), and one *directory node*, chosen by hash of
//! the name over the members, which records who masters it. The first node to lock a resource
//! becomes its master, so a resource used from one node is locked without a message once its
//! master is known (and without any when this node is also its directory node).
//!
//! # Recovery
//!
//! The membership manager takes every transition through the DLM layer's three barriers:
//!
//! * **stop**: no grants and no new requests from here on; frames other than recovery frames
//!   wait until resume. A node leaving gracefully fails its clients' locks with
//!   [`LockError::NodeLeaving`].
//! * **rebuild**: the members change. Every node clears its directory; masters purge the locks
//!   of nodes that left (a PW or EX holder among them makes the value block not valid) and send
//!   a directory entry for each resource they master to its new directory node; owners send
//!   their locks on resources whose master left to the new master (the resource's new
//!   directory node); a master leaving gracefully hands its value blocks over. Each node then
//!   sends a *rebuild done* to every member, and acknowledges the barrier once it has one
//!   from every member (the interconnect delivers in order, so everything sent before it has
//!   arrived). Frames of a round this node has not reached yet are kept until it does.
//! * **resume**: grant what is grantable, resend blocking callbacks, and carry on with what
//!   waited.
//!
//! Transitions of different nodes may be in flight at once: the node stays stopped while any
//! is between its stop and its resume, and a rebuild round is named by the members it is for,
//! so a round overtaken by a later change is simply redone for the new members.

use crate::mode::Mode;
use crate::queues::{MasterOutput, Queues};
use crate::types::*;
use crate::wire::Frame;
use membership_db::format::NodeId;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Locks of this node's clients, at most.
pub const LOCKS_MAX: usize = 4 << 20;
/// Resources this node knows (masters or caches), at most.
pub const RESOURCES_MAX: usize = 4 << 20;
/// Rounds of recovery frames kept for rounds this node has not reached yet.
pub const EARLY_ROUNDS_MAX: usize = 8;
/// Lookups of one resource answered "ask again" before its requests fail.
pub const LOOKUP_RETRIES_MAX: u32 = 8;
/// Frames received while stopped, kept for resume (beyond: the sender is far ahead or hostile).
pub const DEFERRED_FRAMES_MAX: usize = 1 << 22;

/// Which barrier of the DLM layer a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stop,
    Rebuild,
    Resume,
}

/// The DLM layer registers three barriers for every kind of transition.
pub const BARRIERS: u8 = 3;

impl Phase {
    /// The phase of barrier `b` (0-based) of the DLM layer.
    pub fn of_barrier(b: u8) -> Option<Phase> {
        [Phase::Stop, Phase::Rebuild, Phase::Resume].get(b as usize).copied()
    }
}

/// A barrier notification, as the DLM needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    /// Echoed in the acknowledgement.
    pub key: u64,
    pub transition: u64,
    pub phase: Phase,
    /// The node the transition is about. A node has one transition at a time: a newer one
    /// (a forced leave aborting its join) replaces the older, which never resumes.
    pub subject: NodeId,
    /// The members of the lock manager once this transition is through (sorted, with their
    /// incarnations).
    pub members: Vec<(NodeId, u64)>,
    /// A node leaving gracefully in this transition: it takes part in the rebuild (it hands
    /// over its value blocks) though it is no longer a member.
    pub leaving: Option<NodeId>,
}

/// A client operation, routed to the resource's master.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Request { lock: LockId, mode: Mode, noqueue: bool },
    Convert { lock: LockId, mode: Mode, noqueue: bool, quecvt: bool, lvb: Option<Lvb> },
    Unlock { lock: LockId, lvb: Option<Lvb> },
    Cancel { lock: LockId, error: LockError },
}

#[derive(Debug)]
enum Master {
    Me(Queues),
    Remote(NodeId),
    Unknown,
    LookingUp { gen: u64, retries: u32 },
}

#[derive(Debug)]
struct Resource {
    master: Master,
    /// This node's locks on it.
    own: u32,
    /// Operations waiting for the master to be known.
    pending: Vec<Op>,
}

impl Resource {
    fn new(master: Master) -> Resource {
        Resource { master, own: 0, pending: Vec::new() }
    }
}

/// A lock of one of this node's clients.
#[derive(Debug, Clone)]
struct OwnLock {
    client: ClientId,
    res: ResName,
    granted: Option<Mode>,
    requested: Option<Mode>,
    quecvt: bool,
    lvb: Lvb,
    lvb_valid: bool,
    deadline: Option<u64>,
    /// A cancel or timeout has been sent for the request in flight.
    cancelling: Option<LockError>,
    /// The client went: release the lock as soon as it is granted.
    orphan: bool,
}

/// A lock of this node, as `sdc locks` and the simulator's checks see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnLockView {
    pub lock: LockId,
    pub client: ClientId,
    pub lockspace: String,
    pub name: String,
    pub granted: Option<Mode>,
    pub requested: Option<Mode>,
    #[serde(skip)]
    pub res: ResName,
    #[serde(skip)]
    pub lvb: Lvb,
    pub lvb_valid: bool,
}

/// A resource this node masters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MasteredView {
    pub lockspace: String,
    pub name: String,
    #[serde(skip)]
    pub res: ResName,
    pub queues: Queues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not a member of the lock manager: not joined yet, or gone.
    Out,
    /// A transition is being recovered: requests wait.
    Stopped,
    Running,
}

/// How recovery chooses a re-mastered resource's value block.
#[derive(Debug, Default)]
struct LvbChoice {
    handoff: Option<(Lvb, bool)>,
    holder: Option<Lvb>,
}

pub struct DlmCore {
    me: NodeId,
    state: State,
    /// Sorted members with their incarnations; empty while out.
    members: Vec<(NodeId, u64)>,
    /// Transitions between their stop and their resume here, by subject.
    stopped_by: BTreeMap<NodeId, u64>,
    /// The newest transition whose rebuild this node has seen.
    newest_rebuild: u64,
    /// The current recovery round (a fingerprint of `members` and `newest_rebuild`: the same
    /// on every node once they have seen the same rebuilds, whatever their order), and whether
    /// it is complete.
    round: u64,
    round_complete: bool,
    /// Nodes whose rebuild done this round needs.
    round_waits_for: BTreeSet<NodeId>,
    /// Rebuild dones received, by round (the current one and a few early ones).
    done_from: VecDeque<(u64, BTreeSet<NodeId>)>,
    /// Recovery frames of rounds not reached yet, oldest first.
    early: VecDeque<(u64, Vec<(NodeId, Frame)>)>,
    rebuild_acks: Vec<u64>,
    lvb_choices: HashMap<ResName, LvbChoice>,
    /// Bumped by every rebuild: lookups answered for an older one are ignored.
    gen: u64,
    resources: HashMap<ResName, Resource>,
    /// Resources whose directory node this is: their masters.
    directory: HashMap<ResName, NodeId>,
    locks: HashMap<LockId, OwnLock>,
    next_lock: u64,
    deadlines: BTreeSet<(u64, LockId)>,
    /// Client operations made while stopped, for resume.
    parked: VecDeque<(ResName, Op)>,
    /// Frames other than recovery frames received while stopped, for resume.
    deferred: VecDeque<(NodeId, Frame)>,
    transmit: VecDeque<(NodeId, Frame)>,
    events: VecDeque<ClientEvent>,
    acks: VecDeque<u64>,
    scratch: Vec<MasterOutput>,
    /// Frames dropped: from non-members, misrouted, or early beyond the bound.
    pub dropped_frames: u64,
}

fn fingerprint(members: &[(NodeId, u64)], newest_rebuild: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = members.iter().flat_map(|(n, inc)| n.0.to_le_bytes().into_iter().chain(inc.to_le_bytes()));
    for b in bytes.chain(newest_rebuild.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl DlmCore {
    pub fn new(me: NodeId) -> DlmCore {
        DlmCore {
            me,
            state: State::Out,
            members: Vec::new(),
            stopped_by: BTreeMap::new(),
            newest_rebuild: 0,
            round: 0,
            round_complete: true,
            round_waits_for: BTreeSet::new(),
            done_from: VecDeque::new(),
            early: VecDeque::new(),
            rebuild_acks: Vec::new(),
            lvb_choices: HashMap::new(),
            gen: 0,
            resources: HashMap::new(),
            directory: HashMap::new(),
            locks: HashMap::new(),
            next_lock: 1,
            deadlines: BTreeSet::new(),
            parked: VecDeque::new(),
            deferred: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            acks: VecDeque::new(),
            scratch: Vec::new(),
            dropped_frames: 0,
        }
    }

    // ---- getters ----

    pub fn me(&self) -> NodeId {
        self.me
    }
    pub fn state(&self) -> State {
        self.state
    }
    pub fn members(&self) -> &[(NodeId, u64)] {
        &self.members
    }
    fn is_member(&self, n: NodeId) -> bool {
        self.members.iter().any(|(m, _)| *m == n)
    }
    /// The directory node of `res` among the current members.
    fn directory_node(&self, res: &ResName) -> NodeId {
        debug_assert!(!self.members.is_empty());
        self.members[(res.hash() % self.members.len() as u64) as usize].0
    }
    /// The earliest time [`DlmCore::handle_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(t, _)| *t)
    }
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// This node's locks.
    pub fn own_locks(&self) -> Vec<OwnLockView> {
        let mut v: Vec<OwnLockView> = self
            .locks
            .iter()
            .filter(|(_, l)| !l.orphan)
            .map(|(id, l)| OwnLockView {
                lock: *id,
                client: l.client,
                lockspace: l.res.lockspace().to_string(),
                name: l.res.name_text(),
                granted: l.granted,
                requested: l.requested,
                res: l.res.clone(),
                lvb: l.lvb,
                lvb_valid: l.lvb_valid,
            })
            .collect();
        v.sort_by_key(|l| l.lock);
        v
    }

    /// Every granted mode of this node, orphans included (they are held until released).
    pub fn granted_modes(&self) -> impl Iterator<Item = (&ResName, LockId, Mode)> + '_ {
        self.locks.iter().filter_map(|(id, l)| l.granted.map(|g| (&l.res, *id, g)))
    }

    /// The resources this node masters, with their queues.
    pub fn mastered(&self) -> Vec<MasteredView> {
        let mut v: Vec<MasteredView> = self
            .resources
            .iter()
            .filter_map(|(r, res)| match &res.master {
                Master::Me(q) => Some(MasteredView {
                    lockspace: r.lockspace().to_string(),
                    name: r.name_text(),
                    res: r.clone(),
                    queues: q.clone(),
                }),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.res.cmp(&b.res));
        v
    }

    // ---- outputs ----

    pub fn poll_transmit(&mut self) -> Option<(NodeId, Frame)> {
        self.transmit.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
    pub fn poll_ack(&mut self) -> Option<u64> {
        self.acks.pop_front()
    }

    // ---- client requests ----

    fn usable(&self) -> Result<(), DlmError> {
        if self.state == State::Out {
            return Err(DlmError::NotMember);
        }
        Ok(())
    }

    /// Asks for a new lock on `res` in `mode`. The grant (or the failure) comes as a
    /// [`ClientEvent::Completion`], at once when the resource is mastered here.
    pub fn lock(
        &mut self,
        now: u64,
        client: ClientId,
        res: ResName,
        mode: Mode,
        flags: Flags,
    ) -> Result<LockId, DlmError> {
        self.usable()?;
        if self.locks.len() >= LOCKS_MAX {
            return Err(DlmError::TooManyLocks(LOCKS_MAX));
        }
        let id = LockId(self.next_lock);
        self.next_lock += 1;
        let deadline = flags.timeout_ms.map(|t| now.saturating_add(t));
        self.locks.insert(
            id,
            OwnLock {
                client,
                res: res.clone(),
                granted: None,
                requested: Some(mode),
                quecvt: false,
                lvb: [0; LVB_BYTES],
                lvb_valid: false,
                deadline,
                cancelling: None,
                orphan: false,
            },
        );
        if let Some(d) = deadline {
            self.deadlines.insert((d, id));
        }
        self.submit(res, Op::Request { lock: id, mode, noqueue: flags.noqueue }, true);
        Ok(id)
    }

    fn own_lock(&self, client: ClientId, lock: LockId) -> Result<&OwnLock, DlmError> {
        self.usable()?;
        self.locks.get(&lock).filter(|l| l.client == client && !l.orphan).ok_or(DlmError::UnknownLock(lock))
    }

    /// Converts a granted lock to `mode`. `lvb` is written when converting down from PW or EX.
    pub fn convert(
        &mut self,
        now: u64,
        client: ClientId,
        lock: LockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<Lvb>,
    ) -> Result<(), DlmError> {
        let l = self.own_lock(client, lock)?;
        let Some(old) = l.granted else { return Err(DlmError::NotGranted(lock)) };
        if l.requested.is_some() {
            return Err(DlmError::Busy { lock, state: "converting", what: "cancel" });
        }
        let res = l.res.clone();
        let deadline = flags.timeout_ms.map(|t| now.saturating_add(t));
        let l = self.locks.get_mut(&lock).expect("checked above");
        l.requested = Some(mode);
        l.quecvt = flags.quecvt;
        l.deadline = deadline;
        if let Some(v) = lvb.filter(|_| old.writes_value() && !mode.writes_value()) {
            l.lvb = v;
            l.lvb_valid = true;
        }
        if let Some(d) = deadline {
            self.deadlines.insert((d, lock));
        }
        let op = Op::Convert { lock, mode, noqueue: flags.noqueue, quecvt: flags.quecvt, lvb };
        self.submit(res, op, true);
        Ok(())
    }

    /// Releases a granted lock (at once: the master hears of it in order). `lvb` is written
    /// when the lock is held in PW or EX.
    pub fn unlock(&mut self, client: ClientId, lock: LockId, lvb: Option<Lvb>) -> Result<(), DlmError> {
        let l = self.own_lock(client, lock)?;
        match (l.granted, l.requested) {
            (Some(_), None) => {}
            (Some(_), Some(_)) => return Err(DlmError::Busy { lock, state: "converting", what: "cancel" }),
            (None, _) => return Err(DlmError::Busy { lock, state: "waiting", what: "cancel" }),
        }
        self.release(lock, lvb);
        Ok(())
    }

    fn release(&mut self, lock: LockId, lvb: Option<Lvb>) {
        let l = self.locks.remove(&lock).expect("released locks exist");
        self.forget_own(&l.res);
        self.submit(l.res, Op::Unlock { lock, lvb }, false);
    }

    /// Ends a waiting request or conversion: its completion says [`LockError::Cancelled`]
    /// (unless the grant was already on its way, and then it is a grant).
    pub fn cancel(&mut self, client: ClientId, lock: LockId) -> Result<(), DlmError> {
        let l = self.own_lock(client, lock)?;
        if l.requested.is_none() {
            return Err(DlmError::Busy {
                lock,
                state: "granted and not converting",
                what: "nothing to cancel; unlock",
            });
        }
        self.send_cancel(lock, LockError::Cancelled);
        Ok(())
    }

    fn send_cancel(&mut self, lock: LockId, error: LockError) {
        let Some(l) = self.locks.get_mut(&lock) else { return };
        if l.cancelling.is_some() || l.requested.is_none() {
            return;
        }
        l.cancelling = Some(error);
        let res = l.res.clone();
        self.submit(res, Op::Cancel { lock, error }, false);
    }

    /// The client went (its connection closed): its granted locks are released, its waiting
    /// requests cancelled and released if granted meanwhile.
    pub fn client_gone(&mut self, client: ClientId) {
        let mine: Vec<LockId> = self.locks.iter().filter(|(_, l)| l.client == client).map(|(id, _)| *id).collect();
        for id in mine {
            let l = self.locks.get_mut(&id).expect("listed above");
            l.orphan = true;
            if l.requested.is_some() {
                self.send_cancel(id, LockError::Cancelled);
            } else if self.state != State::Out {
                self.release(id, None);
            }
        }
        self.events.retain(|e| match e {
            ClientEvent::Completion { client: c, .. } | ClientEvent::Blocking { client: c, .. } => *c != client,
        });
    }

    /// Times out requests whose deadline has passed.
    pub fn handle_timeout(&mut self, now: u64) {
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            let due = self.locks.get(&id).is_some_and(|l| l.deadline == Some(t) && l.requested.is_some());
            if due {
                self.send_cancel(id, LockError::TimedOut);
            }
        }
    }

    fn forget_own(&mut self, res: &ResName) {
        if let Some(r) = self.resources.get_mut(res) {
            r.own = r.own.saturating_sub(1);
            // A cached master is only a cache: dropped with this node's last lock on it.
            if r.own == 0 && r.pending.is_empty() && matches!(r.master, Master::Remote(_) | Master::Unknown) {
                self.resources.remove(res);
            }
        }
    }

    // ---- routing ----

    /// Sends `op` towards the master of `res`, or keeps it until the master is known or the
    /// lock manager resumes. `counts` is true for an operation creating an own lock's use of
    /// the resource (a request), which keeps the resource's cached master.
    fn submit(&mut self, res: ResName, op: Op, counts: bool) {
        if counts && matches!(op, Op::Request { .. }) {
            self.resource_entry(&res).own += 1;
        }
        if self.state != State::Running {
            self.parked.push_back((res, op));
            return;
        }
        self.route(res, op);
    }

    fn resource_entry(&mut self, res: &ResName) -> &mut Resource {
        if !self.resources.contains_key(res) {
            self.resources.insert(res.clone(), Resource::new(Master::Unknown));
        }
        self.resources.get_mut(res).expect("inserted above")
    }

    fn route(&mut self, res: ResName, op: Op) {
        let (me, gen) = (self.me, self.gen);
        let dir = self.directory_node(&res);
        let r = self.resource_entry(&res);
        match r.master {
            Master::Me(_) => self.master_op(me, &res, op),
            Master::Remote(m) => {
                let frame = op_frame(res, op);
                self.transmit.push_back((m, frame));
            }
            Master::LookingUp { .. } => r.pending.push(op),
            Master::Unknown if dir == me => {
                let master = *self.directory.entry(res.clone()).or_insert(me);
                let r = self.resources.get_mut(&res).expect("exists");
                r.master = if master == me { Master::Me(Queues::default()) } else { Master::Remote(master) };
                self.route(res, op);
            }
            Master::Unknown => {
                r.master = Master::LookingUp { gen, retries: 0 };
                r.pending.push(op);
                self.transmit.push_back((dir, Frame::Lookup { gen, res }));
            }
        }
    }

    /// Applies an operation to a resource mastered here, from its owner `from`.
    fn master_op(&mut self, from: NodeId, res: &ResName, op: Op) {
        let Some(Resource { master: Master::Me(q), .. }) = self.resources.get_mut(res) else {
            self.dropped_frames += 1;
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        let gid = |lock| GlobalLockId { node: from, lock };
        match op {
            Op::Request { lock, mode, noqueue } => {
                q.request(gid(lock), mode, Flags { noqueue, ..Flags::default() }, &mut out)
            }
            Op::Convert { lock, mode, noqueue, quecvt, lvb } => {
                q.convert(gid(lock), mode, Flags { noqueue, quecvt, timeout_ms: None }, lvb, &mut out)
            }
            Op::Unlock { lock, lvb } => q.unlock(gid(lock), lvb, &mut out),
            Op::Cancel { lock, error } => q.cancel(gid(lock), error, &mut out),
        }
        self.deliver(&mut out);
        self.scratch = out;
    }

    /// Hands the master's outputs to their owners: here directly, elsewhere as frames.
    fn deliver(&mut self, out: &mut Vec<MasterOutput>) {
        for o in out.drain(..) {
            let (node, frame) = match o {
                MasterOutput::Granted { id, mode, lvb, lvb_valid } => {
                    (id.node, Frame::Granted { lock: id.lock, mode, lvb, lvb_valid })
                }
                MasterOutput::Failed { id, error } => (id.node, Frame::Failed { lock: id.lock, error }),
                MasterOutput::Blocking { id, wanted } => (id.node, Frame::Blocking { lock: id.lock, wanted }),
            };
            if node == self.me {
                self.owner_frame(frame);
            } else {
                self.transmit.push_back((node, frame));
            }
        }
    }

    /// A master's answer about one of this node's locks.
    fn owner_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Granted { lock, mode, lvb, lvb_valid } => {
                let Some(l) = self.locks.get_mut(&lock) else { return };
                if l.requested.is_none() {
                    return; // a duplicate
                }
                l.granted = Some(mode);
                l.requested = None;
                l.cancelling = None;
                l.deadline = None;
                l.lvb = lvb;
                l.lvb_valid = lvb_valid;
                if l.orphan {
                    self.release(lock, None);
                } else {
                    let client = l.client;
                    let result = Ok(Grant { mode, lvb, lvb_valid });
                    self.events.push_back(ClientEvent::Completion { client, lock, result });
                }
            }
            Frame::Failed { lock, error } => {
                let Some(l) = self.locks.get_mut(&lock) else { return };
                if l.requested.is_none() {
                    return;
                }
                l.requested = None;
                l.cancelling = None;
                l.deadline = None;
                let (client, orphan, held) = (l.client, l.orphan, l.granted.is_some());
                if !held {
                    let l = self.locks.remove(&lock).expect("exists");
                    self.forget_own(&l.res);
                } else if orphan {
                    self.release(lock, None);
                }
                if !orphan {
                    self.events.push_back(ClientEvent::Completion { client, lock, result: Err(error) });
                }
            }
            Frame::Blocking { lock, wanted } => {
                let Some(l) = self.locks.get(&lock) else { return };
                if l.granted.is_some() && !l.orphan {
                    self.events.push_back(ClientEvent::Blocking { client: l.client, lock, wanted });
                }
            }
            _ => unreachable!("only answers about own locks come here"),
        }
    }

    // ---- frames ----

    /// A frame from node `from` (authenticated by the interconnect, in order).
    pub fn handle_frame(&mut self, from: NodeId, frame: Frame) {
        if let Some(round) = frame.round() {
            if round != self.round || self.state == State::Out {
                self.keep_early(round, from, frame);
            } else {
                self.recovery_frame(from, frame);
            }
            return;
        }
        if !self.is_member(from) || from == self.me {
            self.dropped_frames += 1;
            return;
        }
        if self.state != State::Running {
            if self.deferred.len() >= DEFERRED_FRAMES_MAX {
                self.dropped_frames += 1;
                return;
            }
            self.deferred.push_back((from, frame));
            return;
        }
        self.running_frame(from, frame);
    }

    fn keep_early(&mut self, round: u64, from: NodeId, frame: Frame) {
        if let Frame::RebuildDone { round } = frame {
            self.done_entry(round).insert(from);
            return;
        }
        match self.early.iter_mut().find(|(r, _)| *r == round) {
            Some((_, frames)) => frames.push((from, frame)),
            None => {
                if self.early.len() >= EARLY_ROUNDS_MAX {
                    // Rounds are fingerprints, not ordered: drop the one heard of first.
                    self.early.pop_front();
                    self.dropped_frames += 1;
                }
                self.early.push_back((round, vec![(from, frame)]));
            }
        }
    }

    /// The rebuild dones of `round`, kept for the current round and a few others.
    fn done_entry(&mut self, round: u64) -> &mut BTreeSet<NodeId> {
        if let Some(i) = self.done_from.iter().position(|(r, _)| *r == round) {
            return &mut self.done_from[i].1;
        }
        if self.done_from.len() > EARLY_ROUNDS_MAX {
            let current = self.round;
            if let Some(i) = self.done_from.iter().position(|(r, _)| *r != current) {
                self.done_from.remove(i);
            }
        }
        self.done_from.push_back((round, BTreeSet::new()));
        &mut self.done_from.back_mut().expect("pushed").1
    }

    fn running_frame(&mut self, from: NodeId, frame: Frame) {
        match frame {
            Frame::Lookup { gen, res } => {
                let master = if self.directory_node(&res) != self.me {
                    NodeId(0)
                } else {
                    *self.directory.entry(res.clone()).or_insert(from)
                };
                self.transmit.push_back((from, Frame::LookupReply { gen, res, master }));
            }
            Frame::LookupReply { gen, res, master } => self.lookup_reply(gen, res, master),
            Frame::Request { res, lock, mode, noqueue } => {
                self.master_op(from, &res, Op::Request { lock, mode, noqueue })
            }
            Frame::Convert { res, lock, mode, noqueue, quecvt, lvb } => {
                self.master_op(from, &res, Op::Convert { lock, mode, noqueue, quecvt, lvb })
            }
            Frame::Unlock { res, lock, lvb } => self.master_op(from, &res, Op::Unlock { lock, lvb }),
            Frame::Cancel { res, lock, error } => self.master_op(from, &res, Op::Cancel { lock, error }),
            f @ (Frame::Granted { .. } | Frame::Failed { .. } | Frame::Blocking { .. }) => self.owner_frame(f),
            Frame::DirEntry { .. }
            | Frame::RecoverLock { .. }
            | Frame::LvbHandoff { .. }
            | Frame::RebuildDone { .. } => {
                unreachable!("recovery frames are handled apart")
            }
        }
    }

    fn lookup_reply(&mut self, gen: u64, res: ResName, master: NodeId) {
        let me = self.me;
        let Some(r) = self.resources.get_mut(&res) else { return };
        let Master::LookingUp { gen: asked, retries } = r.master else { return };
        if asked != gen || gen != self.gen {
            return;
        }
        if master.0 == 0 || !self.members.iter().any(|(m, _)| *m == master) {
            if retries >= LOOKUP_RETRIES_MAX {
                r.master = Master::Unknown;
                let ops = std::mem::take(&mut r.pending);
                for op in ops {
                    self.fail_op(op, LockError::Exhausted);
                }
                return;
            }
            r.master = Master::LookingUp { gen, retries: retries + 1 };
            let dir = self.directory_node(&res);
            self.transmit.push_back((dir, Frame::Lookup { gen, res }));
            return;
        }
        r.master = if master == me { Master::Me(Queues::default()) } else { Master::Remote(master) };
        let ops = std::mem::take(&mut r.pending);
        for op in ops {
            self.route(res.clone(), op);
        }
    }

    /// An operation that cannot reach a master ends here with `error`.
    fn fail_op(&mut self, op: Op, error: LockError) {
        let lock = match op {
            Op::Request { lock, .. } | Op::Convert { lock, .. } | Op::Cancel { lock, .. } => lock,
            Op::Unlock { .. } => return,
        };
        self.owner_frame(Frame::Failed { lock, error });
    }

    // ---- recovery ----

    /// A barrier of the DLM layer. Its acknowledgement comes from [`DlmCore::poll_ack`], at
    /// once or when the rebuild round completes.
    pub fn handle_barrier(&mut self, b: Barrier) {
        match b.phase {
            Phase::Stop => {
                self.stopped_by.insert(b.subject, b.transition);
                if self.state == State::Running {
                    self.state = State::Stopped;
                }
                if b.leaving == Some(self.me) {
                    self.fail_all_locks(LockError::NodeLeaving);
                }
                self.acks.push_back(b.key);
            }
            Phase::Rebuild => {
                self.stopped_by.insert(b.subject, b.transition);
                let mut members = b.members.clone();
                members.sort();
                members.dedup_by_key(|(n, _)| *n);
                self.newest_rebuild = self.newest_rebuild.max(b.transition);
                let me = self.me;
                let was_member = self.is_member(me);
                if !was_member && !members.iter().any(|(n, _)| *n == me) {
                    // Not a member before or after: nothing to rebuild here.
                    self.acks.push_back(b.key);
                    return;
                }
                if fingerprint(&members, self.newest_rebuild) != self.round {
                    self.rebuild(members, b.leaving);
                }
                if self.round_complete {
                    self.acks.push_back(b.key);
                } else {
                    self.rebuild_acks.push(b.key);
                }
            }
            Phase::Resume => {
                if self.stopped_by.get(&b.subject) == Some(&b.transition) {
                    self.stopped_by.remove(&b.subject);
                }
                self.acks.push_back(b.key);
                self.maybe_resume();
            }
        }
    }

    fn fail_all_locks(&mut self, error: LockError) {
        let all: Vec<(LockId, OwnLock)> = self.locks.drain().collect();
        for (lock, l) in all {
            if !l.orphan {
                self.events.push_back(ClientEvent::Completion { client: l.client, lock, result: Err(error) });
            }
        }
        self.parked.clear();
        self.deadlines.clear();
        for r in self.resources.values_mut() {
            r.own = 0;
            r.pending.clear();
        }
    }

    fn rebuild(&mut self, members: Vec<(NodeId, u64)>, leaving: Option<NodeId>) {
        let old: BTreeSet<NodeId> = self.members.iter().map(|(n, _)| *n).collect();
        let new: BTreeSet<NodeId> = members.iter().map(|(n, _)| *n).collect();
        let departed: Vec<NodeId> = old.difference(&new).copied().collect();
        self.members = members;
        // What was kept for the round being left is stale from now on.
        let left = self.round;
        self.early.retain(|(r, _)| *r != left);
        self.done_from.retain(|(r, _)| *r != left);
        self.round = fingerprint(&self.members, self.newest_rebuild);
        self.gen += 1;
        self.directory.clear();
        self.lvb_choices.clear();
        let round = self.round;
        if !new.contains(&self.me) {
            self.leave_rebuild(round);
            return;
        }
        self.state = State::Stopped;
        // Masters: purge the departed, re-register with the new directory nodes.
        let me = self.me;
        let mut orphaned: BTreeSet<ResName> = BTreeSet::new();
        let names: Vec<ResName> = self.resources.keys().cloned().collect();
        for res in names {
            let dir = self.directory_node(&res);
            let r = self.resources.get_mut(&res).expect("listed");
            match &mut r.master {
                Master::Me(q) => {
                    for d in &departed {
                        q.purge_node(*d);
                    }
                    q.forget_blocking_sent();
                    if dir == me {
                        self.directory.insert(res, me);
                    } else {
                        self.transmit.push_back((dir, Frame::DirEntry { round, res }));
                    }
                }
                Master::Remote(m) if departed.contains(m) => {
                    // Its new master is its new directory node, once a lock of it is recovered
                    // there; until then nobody masters it.
                    r.master = Master::Unknown;
                    orphaned.insert(res);
                }
                Master::Remote(_) | Master::Unknown => {}
                Master::LookingUp { .. } => r.master = Master::Unknown,
            }
        }
        // Owners: report locks on re-mastered resources to their new masters.
        let ids: Vec<LockId> =
            self.locks.iter().filter(|(_, l)| orphaned.contains(&l.res)).map(|(id, _)| *id).collect();
        for id in ids {
            #[cfg(feature = "planted-bugs")]
            if crate::planted::RECOVERY_FORGETS_WAITING.active() && self.locks[&id].granted.is_none() {
                continue;
            }
            let l = self.locks.get_mut(&id).expect("listed");
            if let Some(error) = l.cancelling.take() {
                // The cancel went to a master that left: it is done here.
                l.requested = None;
                l.deadline = None;
                let (client, orphan, held) = (l.client, l.orphan, l.granted.is_some());
                if !held {
                    let l = self.locks.remove(&id).expect("exists");
                    self.forget_own(&l.res);
                }
                if !orphan {
                    self.events.push_back(ClientEvent::Completion { client, lock: id, result: Err(error) });
                }
                if !held {
                    continue;
                }
            }
            let l = &self.locks[&id];
            let frame = Frame::RecoverLock {
                round,
                res: l.res.clone(),
                lock: id,
                granted: l.granted,
                requested: l.requested,
                quecvt: l.quecvt,
                lvb: l.lvb,
                lvb_valid: l.lvb_valid,
            };
            let master = self.directory_node(&l.res);
            if master == me {
                self.recovery_frame(me, frame);
            } else {
                let res = l.res.clone();
                self.resource_entry(&res).master = Master::Remote(master);
                self.transmit.push_back((master, frame));
            }
        }
        self.round_waits_for = new.iter().copied().filter(|n| *n != me).collect();
        if let Some(l) = leaving.filter(|l| *l != me) {
            self.round_waits_for.insert(l);
        }
        self.round_complete = false;
        for (n, _) in &self.members {
            if *n != me {
                self.transmit.push_back((*n, Frame::RebuildDone { round }));
            }
        }
        if let Some(l) = leaving.filter(|l| *l != me) {
            self.transmit.push_back((l, Frame::RebuildDone { round }));
        }
        if let Some(i) = self.early.iter().position(|(r, _)| *r == round) {
            let (_, frames) = self.early.remove(i).expect("found");
            for (from, f) in frames {
                self.recovery_frame(from, f);
            }
        }
        self.check_round();
    }

    /// This node leaves gracefully: hand the value blocks it masters to their new masters.
    fn leave_rebuild(&mut self, round: u64) {
        let mut frames = Vec::new();
        for (res, r) in &self.resources {
            if let Master::Me(q) = &r.master {
                let to = self.directory_node(res);
                frames.push((to, Frame::LvbHandoff { round, res: res.clone(), lvb: q.lvb, lvb_valid: q.lvb_valid }));
            }
        }
        self.transmit.extend(frames);
        for (n, _) in &self.members {
            self.transmit.push_back((*n, Frame::RebuildDone { round }));
        }
        self.go_out();
    }

    fn go_out(&mut self) {
        self.fail_all_locks(LockError::NodeLeaving);
        self.resources.clear();
        self.directory.clear();
        self.deferred.clear();
        self.members.clear();
        self.state = State::Out;
        self.round_complete = true;
        self.acks.extend(self.rebuild_acks.drain(..));
    }

    fn recovery_frame(&mut self, from: NodeId, frame: Frame) {
        let me = self.me;
        match frame {
            Frame::DirEntry { res, .. } => {
                self.directory.insert(res, from);
            }
            Frame::RecoverLock { res, lock, granted, requested, quecvt, lvb, lvb_valid, .. } => {
                let r = self.resource_entry(&res);
                if !matches!(r.master, Master::Me(_)) {
                    r.master = Master::Me(Queues::default());
                }
                let Master::Me(q) = &mut r.master else { unreachable!() };
                q.insert_recovered(GlobalLockId { node: from, lock }, granted, requested, quecvt);
                self.directory.insert(res.clone(), me);
                if granted.is_some_and(Mode::excludes_writers) && lvb_valid {
                    self.lvb_choices.entry(res).or_default().holder = Some(lvb);
                } else {
                    self.lvb_choices.entry(res).or_default();
                }
            }
            Frame::LvbHandoff { res, lvb, lvb_valid, .. } => {
                let r = self.resource_entry(&res);
                if !matches!(r.master, Master::Me(_)) {
                    r.master = Master::Me(Queues::default());
                }
                self.directory.insert(res.clone(), me);
                self.lvb_choices.entry(res).or_default().handoff = Some((lvb, lvb_valid));
            }
            Frame::RebuildDone { round } => {
                self.done_entry(round).insert(from);
                self.check_round();
            }
            _ => unreachable!("only recovery frames come here"),
        }
    }

    fn check_round(&mut self) {
        if self.round_complete || self.state == State::Out {
            return;
        }
        let round = self.round;
        let done = self.done_from.iter().find(|(r, _)| *r == round).map(|(_, d)| d);
        if !self.round_waits_for.iter().all(|n| done.is_some_and(|d| d.contains(n))) {
            return;
        }
        // Every member's recovery frames are in: settle the value blocks.
        for (res, choice) in std::mem::take(&mut self.lvb_choices) {
            let Some(Resource { master: Master::Me(q), .. }) = self.resources.get_mut(&res) else { continue };
            let (lvb, valid) = match (choice.handoff, choice.holder) {
                (Some(h), _) => h,
                (None, Some(v)) => (v, true),
                (None, None) => (q.lvb, false),
            };
            #[cfg(feature = "planted-bugs")]
            let valid = valid || crate::planted::LVB_ALWAYS_VALID.active();
            q.lvb = lvb;
            q.lvb_valid = valid;
        }
        self.round_complete = true;
        self.acks.extend(self.rebuild_acks.drain(..));
        self.maybe_resume();
    }

    fn maybe_resume(&mut self) {
        if self.state != State::Stopped || !self.stopped_by.is_empty() || !self.round_complete {
            return;
        }
        self.state = State::Running;
        let mut out = std::mem::take(&mut self.scratch);
        for r in self.resources.values_mut() {
            if let Master::Me(q) = &mut r.master {
                q.grant_pending(&mut out);
            }
        }
        self.deliver(&mut out);
        self.scratch = out;
        // Frames that waited, then operations that waited, in their order.
        let deferred = std::mem::take(&mut self.deferred);
        for (from, f) in deferred {
            if self.is_member(from) {
                self.running_frame(from, f);
            } else {
                self.dropped_frames += 1;
            }
        }
        let waiting: Vec<(ResName, Vec<Op>)> = self
            .resources
            .iter_mut()
            .filter(|(_, r)| !r.pending.is_empty() && matches!(r.master, Master::Unknown))
            .map(|(n, r)| (n.clone(), std::mem::take(&mut r.pending)))
            .collect();
        for (res, ops) in waiting {
            for op in ops {
                self.route(res.clone(), op);
            }
        }
        let parked = std::mem::take(&mut self.parked);
        for (res, op) in parked {
            if self.state != State::Running {
                self.parked.push_back((res, op));
            } else {
                self.route(res, op);
            }
        }
    }
}

fn op_frame(res: ResName, op: Op) -> Frame {
    match op {
        Op::Request { lock, mode, noqueue } => Frame::Request { res, lock, mode, noqueue },
        Op::Convert { lock, mode, noqueue, quecvt, lvb } => Frame::Convert { res, lock, mode, noqueue, quecvt, lvb },
        Op::Unlock { lock, lvb } => Frame::Unlock { res, lock, lvb },
        Op::Cancel { lock, error } => Frame::Cancel { res, lock, error },
    }
}
