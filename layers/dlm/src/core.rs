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
//! * **rebuild**: the members change, and a recovery *round* runs among the new members, in
//!   three steps, each ended by a `Done` from every member (the interconnect delivers in order,
//!   so whatever a node sent before its `Done` has arrived with it):
//!   1. *agree*: masters purge the locks of the nodes that left (a PW or EX holder among them
//!      makes the value block not valid); caches of a departed master are forgotten. Every
//!      member reaching this step proves it works from the same members.
//!   2. *directory*: every node sends, for each resource whose master it knows and which is
//!      still here, an entry to the resource's directory node (the directory is rebuilt from
//!      scratch).
//!   3. *masters*: an owner of locks on a resource whose master left asks its directory node,
//!      which names the first to ask; the owner then sends its locks to that master. The new
//!      master takes the value block from a holder whose mode excludes writers (CW, PR, PW,
//!      EX: nobody can have written it since their grant), else marks it not valid.
//!
//!   The barrier is acknowledged once the round completes.
//! * **resume**: grant what is grantable, resend blocking callbacks, and carry on with what
//!   waited.
//!
//! Transitions of different nodes may be in flight at once: the node stays stopped while any
//! is between its stop and its resume. A round is named by its members and the newest
//! transition whose rebuild it follows, so every node reaches the same last round whatever the
//! order it saw the rebuilds in; a round overtaken by a later one is left, and what it did stays
//! true (a master chosen in it keeps its resources, and says so in the next directory).

use crate::mode::Mode;
use crate::queues::{MasterOutput, Queues};
use crate::types::*;
use crate::wire::Frame;
use membership_db::format::NodeId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Locks of this node's clients, at most.
pub const LOCKS_MAX: usize = 4 << 20;
/// Resources this node knows (masters or caches), at most.
pub const RESOURCES_MAX: usize = 4 << 20;
/// Rounds of directory entries kept for rounds this node has not reached yet.
pub const EARLY_ROUNDS_MAX: usize = 8;
/// Directory entries kept per such round.
pub const EARLY_ENTRIES_MAX: usize = RESOURCES_MAX;
/// (round, step) pairs whose `Done`s are counted.
pub const DONE_ENTRIES_MAX: usize = 3 * (EARLY_ROUNDS_MAX + 1);
/// Recovery lookups kept for a later step.
pub const RECOVER_LOOKUPS_MAX: usize = RESOURCES_MAX;
/// The step of a completed recovery round.
pub const STEP_COMPLETE: u8 = 4;
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
    /// The members of the lock manager as the view this notification comes from shows them
    /// (with their incarnations).
    pub members: Vec<(NodeId, u64)>,
    /// Orders the views: notifications may be processed out of the order of their views, and
    /// a rebuild always works from the latest view seen.
    pub view: (u64, u64),
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
    /// Its client has gone: it is being cancelled or released.
    pub orphan: bool,
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

pub struct DlmCore {
    me: NodeId,
    state: State,
    /// Sorted members with their incarnations; empty while out.
    members: Vec<(NodeId, u64)>,
    /// Transitions between their stop and their resume here, by subject.
    stopped_by: BTreeMap<NodeId, u64>,
    /// The newest transition whose rebuild this node has seen.
    newest_rebuild: u64,
    /// The members as the latest view of any rebuild notification shows them.
    latest_view: (u64, u64),
    latest_members: Vec<(NodeId, u64)>,
    /// The current recovery round (a fingerprint of `members` and `newest_rebuild`: the same
    /// on every node once they have seen the same rebuilds, whatever their order), and its step
    /// (1 to 3, then [`STEP_COMPLETE`]).
    round: u64,
    step: u8,
    /// The nodes that reached (round, step), for the current round and a few others.
    done_from: VecDeque<(u64, u8, BTreeSet<NodeId>)>,
    /// Directory entries of rounds this node has not reached yet.
    early_entries: VecDeque<(u64, Vec<(ResName, NodeId)>)>,
    /// Recovery lookups this node, as directory node, answers in step 3 of their round.
    recover_lookups: Vec<(NodeId, u64, ResName)>,
    /// Resources whose master this node asked for in step 3.
    awaiting_masters: BTreeSet<ResName>,
    /// Resources this node masters since a recovery whose value block is not settled yet, and
    /// the value blocks their holders reported.
    recovering: BTreeSet<ResName>,
    recovered_lvbs: Map<(ResName, GlobalLockId), Lvb>,
    /// This node's locks sent whole to a new master since the last resume, with the count of
    /// operations parked then: their requests and conversions parked before are in what was
    /// sent, and are not sent again.
    recovered_locks: Map<LockId, u64>,
    rebuild_acks: Vec<u64>,
    /// Bumped by every rebuild: lookups answered for an older one are ignored.
    gen: u64,
    resources: Map<ResName, Resource>,
    /// Resources whose directory node this is: their masters.
    directory: Map<ResName, NodeId>,
    locks: Map<LockId, OwnLock>,
    next_lock: u64,
    deadlines: BTreeSet<(u64, LockId)>,
    /// Client operations made while stopped, for resume.
    /// Each with the count of operations parked before it (see `recovered_locks`).
    parked: VecDeque<(u64, ResName, Op)>,
    parked_count: u64,
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
            latest_view: (0, 0),
            latest_members: Vec::new(),
            round: 0,
            step: STEP_COMPLETE,
            done_from: VecDeque::new(),
            early_entries: VecDeque::new(),
            recover_lookups: Vec::new(),
            awaiting_masters: BTreeSet::new(),
            recovering: BTreeSet::new(),
            recovered_lvbs: Map::default(),
            recovered_locks: Map::default(),
            rebuild_acks: Vec::new(),
            gen: 0,
            resources: Map::default(),
            directory: Map::default(),
            locks: Map::default(),
            next_lock: 1,
            deadlines: BTreeSet::new(),
            parked: VecDeque::new(),
            parked_count: 0,
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
        debug_assert!(!self.members.is_empty(), "a member asks for directory nodes");
        if self.members.is_empty() {
            return self.me;
        }
        self.members[(res.hash() % self.members.len() as u64) as usize].0
    }
    /// The earliest time [`DlmCore::handle_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(t, _)| *t)
    }
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// This node's locks, those of clients gone included (`orphan`).
    pub fn own_locks(&self) -> Vec<OwnLockView> {
        let mut v: Vec<OwnLockView> = self
            .locks
            .iter()
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
                orphan: l.orphan,
            })
            .collect();
        v.sort_by_key(|l| l.lock);
        v
    }

    /// Every lock of this node that holds a mode, orphans included (they hold it until
    /// released), with the mode its client may rely on ([`crate::queues::relied_on`]).
    pub fn held_modes(&self) -> Vec<(ResName, LockId, Mode)> {
        self.locks
            .iter()
            .filter_map(|(id, l)| {
                let g = l.granted?;
                Some((l.res.clone(), *id, crate::queues::relied_on(g, l.requested)))
            })
            .collect()
    }

    /// Whether a lock of this node is waiting for a grant (or conversion), or released but
    /// not yet by its master (an orphan).
    pub fn requests_in_flight(&self) -> usize {
        self.locks.values().filter(|l| l.requested.is_some() || l.orphan).count()
    }

    /// What this node knows of `res`, for diagnostics: its master (or lookup) and queues.
    pub fn describe_resource(&self, res: &ResName) -> String {
        match self.resources.get(res) {
            None => "unknown here".into(),
            Some(r) => format!(
                "{:?}, {} own, pending {:?}, directory says {:?}",
                r.master,
                r.own,
                r.pending,
                self.directory.get(res)
            ),
        }
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
        self.submit(res, Op::Request { lock: id, mode, noqueue: flags.noqueue });
        Ok(id)
    }

    fn own_lock(&self, client: ClientId, lock: LockId) -> Result<&OwnLock, DlmError> {
        self.usable()?;
        self.locks.get(&lock).filter(|l| l.client == client && !l.orphan).ok_or(DlmError::UnknownLock(lock))
    }

    /// Converts a granted lock to `mode`, up or down. `lvb` is written when converting down
    /// from PW or EX. A conversion down counts at once: the master may grant others beside the
    /// new mode before its completion arrives. A conversion neither up nor down (PR to CW, CW to
    /// PR) is refused ([`DlmError::Sideways`]): while it waited, the holder could rely only on
    /// what both modes allow, and a cancel could not give the old mode back; convert down to
    /// CR first, then up.
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
        if !crate::queues::is_down_conversion(old, mode) && !crate::queues::is_down_conversion(mode, old) {
            return Err(DlmError::Sideways { from: old, to: mode });
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
        self.submit(res, op);
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
        // Sent while the resource's master is still cached here, then forgotten.
        self.submit(l.res.clone(), Op::Unlock { lock, lvb });
        self.forget_own(&l.res);
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
        self.submit(res, Op::Cancel { lock, error });
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
    /// lock manager resumes. A request is a new own lock of the resource, which keeps the
    /// resource's cached master.
    fn submit(&mut self, res: ResName, op: Op) {
        if matches!(op, Op::Request { .. }) {
            self.resource_entry(&res).own += 1;
        }
        if self.state != State::Running {
            self.parked_count += 1;
            self.parked.push_back((self.parked_count, res, op));
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

    /// Whether an operation that waited (for a lookup, or for resume) still stands: recovery
    /// may have ended its lock meanwhile (a cancel completed when its master left).
    fn still_wanted(&self, op: &Op) -> bool {
        match op {
            Op::Request { lock, .. } => self.locks.get(lock).is_some_and(|l| l.granted.is_none()),
            Op::Convert { lock, .. } => {
                self.locks.get(lock).is_some_and(|l| l.granted.is_some() && l.requested.is_some())
            }
            Op::Cancel { lock, .. } => self.locks.get(lock).is_some_and(|l| l.requested.is_some()),
            Op::Unlock { .. } => true,
        }
    }

    fn route(&mut self, res: ResName, op: Op) {
        if !self.still_wanted(&op) {
            return;
        }
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
        // The directory named this node master before this node heard so (its own lookup's
        // answer is on its way): it masters the resource from now, and what waited for the
        // answer goes on here.
        let r = self.resource_entry(res);
        let mut waited = Vec::new();
        if matches!(r.master, Master::Unknown | Master::LookingUp { .. }) {
            r.master = Master::Me(Queues::default());
            waited = std::mem::take(&mut r.pending);
        }
        for op in waited {
            self.route(res.clone(), op);
        }
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
        if from == self.me {
            self.dropped_frames += 1;
            return;
        }
        // Recovery frames count even before this node joins: a joiner hears the others'
        // `Done`s and directory entries before its own rebuild notification may arrive.
        if frame.round().is_some() {
            self.recovery_frame(from, frame);
            return;
        }
        if self.state == State::Out || !self.is_member(from) {
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
            _ => unreachable!("recovery frames are handled apart"),
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
                self.newest_rebuild = self.newest_rebuild.max(b.transition);
                if b.view >= self.latest_view {
                    self.latest_view = b.view;
                    let mut members = b.members.clone();
                    members.sort();
                    members.dedup_by_key(|(n, _)| *n);
                    self.latest_members = members;
                }
                let members = self.latest_members.clone();
                let me = self.me;
                let member_after = members.iter().any(|(n, _)| *n == me);
                if !member_after {
                    // Leaving (or not a member yet): nothing to rebuild here.
                    if self.state != State::Out {
                        self.go_out();
                    }
                    self.acks.push_back(b.key);
                    return;
                }
                if fingerprint(&members, self.newest_rebuild) != self.round {
                    self.rebuild(members);
                }
                if self.step == STEP_COMPLETE {
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

    fn go_out(&mut self) {
        self.fail_all_locks(LockError::NodeLeaving);
        self.resources.clear();
        self.directory.clear();
        self.deferred.clear();
        self.members.clear();
        self.recovering.clear();
        self.state = State::Out;
        self.round = 0;
        self.step = STEP_COMPLETE;
        self.acks.extend(self.rebuild_acks.drain(..));
    }

    /// Starts recovery round for `members` (this node among them).
    fn rebuild(&mut self, members: Vec<(NodeId, u64)>) {
        let departed: Vec<NodeId> = self.members.iter().filter(|m| !members.contains(m)).map(|(n, _)| *n).collect();
        self.members = members;
        // What a departed incarnation sent and waits here is void: its node may be back as a
        // new incarnation by the time it would be processed.
        self.deferred.retain(|(from, _)| !departed.contains(from));
        self.round = fingerprint(&self.members, self.newest_rebuild);
        self.step = 1;
        self.gen += 1;
        self.state = State::Stopped;
        self.directory.clear();
        self.awaiting_masters.clear();
        let round = self.round;
        self.recover_lookups.retain(|(_, r, _)| *r == round);
        // Directory entries sent by nodes that reached this round first.
        if let Some(i) = self.early_entries.iter().position(|(r, _)| *r == round) {
            let (_, entries) = self.early_entries.remove(i).expect("found");
            for (res, master) in entries {
                self.directory.entry(res).or_insert(master);
            }
        }
        self.early_entries.retain(|(r, _)| *r != round);
        // Masters forget the departed; caches and lookups of a departed master are void.
        for (res, r) in self.resources.iter_mut() {
            match &mut r.master {
                Master::Me(q) => {
                    for d in &departed {
                        q.purge_node(*d);
                    }
                    q.forget_blocking_sent();
                }
                Master::Remote(m) if departed.contains(m) => r.master = Master::Unknown,
                Master::LookingUp { .. } => {
                    // The lookup is void; what waited for it goes again at resume (a request
                    // or conversion recovered in step 3 meanwhile is then a duplicate, which
                    // masters ignore).
                    r.master = Master::Unknown;
                    for op in r.pending.drain(..).rev() {
                        // Older than anything parked: numbered below it.
                        self.parked.push_front((0, res.clone(), op));
                    }
                }
                Master::Remote(_) | Master::Unknown => {}
            }
        }
        // Requests whose master left, answer unknown: a conversion down cannot be refused, so
        // it is done (the master may have granted others beside the new mode already); a
        // cancel of anything else is done too: that request never reached a queue that lives.
        let unanswered: Vec<LockId> = self
            .locks
            .iter()
            .filter(|(_, l)| l.requested.is_some())
            .filter(|(_, l)| self.resources.get(&l.res).is_none_or(|r| matches!(r.master, Master::Unknown)))
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            let l = self.locks.get_mut(&id).expect("listed");
            let (client, orphan) = (l.client, l.orphan);
            let requested = l.requested.expect("filtered");
            match l.granted {
                Some(g) if crate::queues::is_down_conversion(g, requested) => {
                    l.granted = Some(requested);
                    l.requested = None;
                    l.cancelling = None;
                    l.deadline = None;
                    let grant = Grant { mode: requested, lvb: l.lvb, lvb_valid: l.lvb_valid };
                    if orphan {
                        self.release(id, None);
                    } else {
                        self.events.push_back(ClientEvent::Completion { client, lock: id, result: Ok(grant) });
                    }
                }
                held => {
                    let Some(error) = l.cancelling.take() else { continue };
                    l.requested = None;
                    l.deadline = None;
                    if held.is_none() {
                        let l = self.locks.remove(&id).expect("exists");
                        self.forget_own(&l.res);
                    } else if orphan {
                        self.release(id, None);
                    }
                    if !orphan {
                        self.events.push_back(ClientEvent::Completion { client, lock: id, result: Err(error) });
                    }
                }
            }
        }
        self.send_done();
        self.check_step();
    }

    fn send_done(&mut self) {
        let (round, step) = (self.round, self.step);
        for (n, _) in &self.members {
            if *n != self.me {
                self.transmit.push_back((*n, Frame::Done { round, step }));
            }
        }
        let me = self.me;
        self.done_entry(round, step).insert(me);
    }

    /// The nodes that reached `step` of `round`, kept for a few rounds.
    fn done_entry(&mut self, round: u64, step: u8) -> &mut BTreeSet<NodeId> {
        if let Some(i) = self.done_from.iter().position(|(r, s, _)| *r == round && *s == step) {
            return &mut self.done_from[i].2;
        }
        if self.done_from.len() >= DONE_ENTRIES_MAX {
            let current = self.round;
            if let Some(i) = self.done_from.iter().position(|(r, _, _)| *r != current) {
                self.done_from.remove(i);
            }
        }
        self.done_from.push_back((round, step, BTreeSet::new()));
        &mut self.done_from.back_mut().expect("pushed").2
    }

    fn step_reached_by_all(&self) -> bool {
        let (round, step) = (self.round, self.step);
        let Some((_, _, done)) = self.done_from.iter().find(|(r, s, _)| *r == round && *s == step) else {
            return false;
        };
        self.members.iter().all(|(n, _)| done.contains(n))
    }

    /// Moves recovery on while every member has reached the current step.
    fn check_step(&mut self) {
        // Three steps at most per call: bounded.
        for _ in 0..STEP_COMPLETE {
            if self.step == STEP_COMPLETE || self.state == State::Out || !self.step_reached_by_all() {
                return;
            }
            match self.step {
                // Every member is in this round: they agree on the members. Rebuild the
                // directory from what every node knows of the masters that are still here.
                1 => {
                    self.step = 2;
                    let round = self.round;
                    let me = self.me;
                    let mut entries = Vec::new();
                    for (res, r) in &self.resources {
                        let master = match r.master {
                            Master::Me(_) => me,
                            Master::Remote(m) => m,
                            _ => continue,
                        };
                        entries.push((self.directory_node(res), res.clone(), master));
                    }
                    for (dir, res, master) in entries {
                        if dir == me {
                            self.directory.entry(res).or_insert(master);
                        } else {
                            self.transmit.push_back((dir, Frame::DirEntry { round, res, master }));
                        }
                    }
                    self.send_done();
                }
                // The directory is complete: find masters for this node's locks whose master
                // left, and send them there.
                2 => {
                    self.step = 3;
                    let round = self.round;
                    let me = self.me;
                    let unmastered: BTreeSet<ResName> = self
                        .locks
                        .values()
                        .map(|l| &l.res)
                        .filter(|res| self.resources.get(*res).is_none_or(|r| matches!(r.master, Master::Unknown)))
                        .cloned()
                        .collect();
                    for res in unmastered {
                        if self.directory_node(&res) == me {
                            let master = *self.directory.entry(res.clone()).or_insert(me);
                            self.master_found(res, master);
                        } else {
                            let dir = self.directory_node(&res);
                            self.awaiting_masters.insert(res.clone());
                            self.transmit.push_back((dir, Frame::RecoverLookup { round, res }));
                        }
                    }
                    let asked: Vec<(NodeId, u64, ResName)> = std::mem::take(&mut self.recover_lookups);
                    for (from, r, res) in asked {
                        self.answer_recover_lookup(from, r, res);
                    }
                    if self.awaiting_masters.is_empty() {
                        self.send_done();
                    }
                }
                // Every member's locks are with their masters.
                _ => {
                    self.step = STEP_COMPLETE;
                    for res in std::mem::take(&mut self.recovering) {
                        let Some(Resource { master: Master::Me(q), .. }) = self.resources.get_mut(&res) else {
                            continue;
                        };
                        // The value block is current only if some holder excludes writers.
                        let holder = q
                            .granted
                            .iter()
                            .chain(q.converting.iter())
                            .filter(|l| l.granted.is_some_and(Mode::excludes_writers))
                            .find_map(|l| self.recovered_lvbs.get(&(res.clone(), l.id)).copied());
                        let valid = holder.is_some();
                        #[cfg(feature = "planted-bugs")]
                        let valid = valid || crate::planted::LVB_ALWAYS_VALID.active();
                        if let Some(v) = holder {
                            q.lvb = v;
                        }
                        q.lvb_valid = valid;
                    }
                    self.recovered_lvbs.clear();
                    self.acks.extend(self.rebuild_acks.drain(..));
                    self.maybe_resume();
                }
            }
        }
    }

    /// The master of `res`, whose master left, is `master`: send it this node's locks on it.
    fn master_found(&mut self, res: ResName, master: NodeId) {
        let me = self.me;
        let round = self.round;
        {
            let r = self.resource_entry(&res);
            if master == me {
                if !matches!(r.master, Master::Me(_)) {
                    r.master = Master::Me(Queues::default());
                }
            } else {
                r.master = Master::Remote(master);
            }
        }
        let mut ids: Vec<LockId> = self.locks.iter().filter(|(_, l)| l.res == res).map(|(id, _)| *id).collect();
        ids.sort();
        for id in ids {
            let l = &self.locks[&id];
            #[cfg(feature = "planted-bugs")]
            if crate::planted::RECOVERY_FORGETS_WAITING.active() && l.granted.is_none() {
                continue;
            }
            // Its state goes whole: a request or conversion that waited to be sent is in it.
            self.recovered_locks.insert(id, self.parked_count);
            let frame = Frame::RecoverLock {
                round,
                res: res.clone(),
                lock: id,
                granted: l.granted,
                requested: l.requested,
                quecvt: l.quecvt,
                lvb: l.lvb,
                lvb_valid: l.lvb_valid,
            };
            if master == me {
                self.recover_lock(me, frame);
            } else {
                self.transmit.push_back((master, frame));
            }
        }
    }

    fn answer_recover_lookup(&mut self, from: NodeId, round: u64, res: ResName) {
        if round != self.round || self.directory_node(&res) != self.me || !self.is_member(from) {
            return; // the asker has moved on too, or will ask again in the round both reach
        }
        let master = *self.directory.entry(res.clone()).or_insert(from);
        self.transmit.push_back((from, Frame::RecoverLookupReply { round, res, master }));
    }

    fn recover_lock(&mut self, from: NodeId, frame: Frame) {
        let Frame::RecoverLock { res, lock, granted, requested, quecvt, lvb, lvb_valid, .. } = frame else {
            unreachable!("only RecoverLock comes here")
        };
        let r = self.resource_entry(&res);
        let created = !matches!(r.master, Master::Me(_));
        if created {
            r.master = Master::Me(Queues::default());
            self.recovering.insert(res.clone());
        }
        let Some(Resource { master: Master::Me(q), .. }) = self.resources.get_mut(&res) else { unreachable!() };
        let id = GlobalLockId { node: from, lock };
        q.insert_recovered(id, granted, requested, quecvt);
        if lvb_valid && self.recovering.contains(&res) {
            self.recovered_lvbs.insert((res.clone(), id), lvb);
        }
        if created && from != self.me {
            // This node masters it now (another owner was told so): its own locks on it,
            // whose master left, join the queues too.
            self.master_found(res, self.me);
        }
    }

    /// Recovery frames: applied whenever they come from a member (a node ahead of this one in
    /// a later round sends what is true of the masters it knows); `Done` counts per round.
    fn recovery_frame(&mut self, from: NodeId, frame: Frame) {
        match frame {
            Frame::Done { round, step } => {
                self.done_entry(round, step).insert(from);
                if round == self.round {
                    self.check_step();
                }
            }
            Frame::DirEntry { round, res, master } => {
                if round == self.round {
                    if self.is_member(master) {
                        self.directory.entry(res).or_insert(master);
                    }
                } else {
                    self.keep_early_entry(round, res, master);
                }
            }
            Frame::RecoverLookup { round, res } => {
                if round == self.round && self.step >= 3 {
                    self.answer_recover_lookup(from, round, res);
                } else if self.recover_lookups.len() < RECOVER_LOOKUPS_MAX {
                    self.recover_lookups.push((from, round, res));
                } else {
                    self.dropped_frames += 1;
                }
            }
            Frame::RecoverLookupReply { round, res, master } => {
                if round != self.round || !self.awaiting_masters.remove(&res) {
                    return;
                }
                if self.is_member(master) {
                    self.master_found(res, master);
                }
                if self.awaiting_masters.is_empty() && self.step == 3 {
                    self.send_done();
                    self.check_step();
                }
            }
            f @ Frame::RecoverLock { .. } => {
                if self.is_member(from) {
                    self.recover_lock(from, f);
                } else {
                    self.dropped_frames += 1;
                }
            }
            _ => unreachable!("only recovery frames come here"),
        }
    }

    fn keep_early_entry(&mut self, round: u64, res: ResName, master: NodeId) {
        match self.early_entries.iter_mut().find(|(r, _)| *r == round) {
            Some((_, v)) if v.len() < EARLY_ENTRIES_MAX => v.push((res, master)),
            Some(_) => self.dropped_frames += 1,
            None => {
                if self.early_entries.len() >= EARLY_ROUNDS_MAX {
                    self.early_entries.pop_front();
                    self.dropped_frames += 1;
                }
                self.early_entries.push_back((round, vec![(res, master)]));
            }
        }
    }

    fn maybe_resume(&mut self) {
        if self.state != State::Stopped || !self.stopped_by.is_empty() || self.step != STEP_COMPLETE {
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
        let parked = std::mem::take(&mut self.parked);
        let recovered = std::mem::take(&mut self.recovered_locks);
        for (count, res, op) in parked {
            let sent_whole = match &op {
                Op::Request { lock, .. } | Op::Convert { lock, .. } => recovered.get(lock).is_some_and(|c| count <= *c),
                Op::Unlock { .. } | Op::Cancel { .. } => false,
            };
            if !sent_whole {
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
