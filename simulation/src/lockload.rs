//! What both simulators of the lock manager share: the clients that load it, the simulated
//! interconnect between the nodes' [`DlmCore`]s, and the checks of what the lock manager
//! promises. The lock simulator ([`crate::locks`]) drives them with a model of the membership
//! manager; the membership simulator ([`crate::sim`]) with the real one, on the simulated disk.
//!
//! Nodes are named by their index (`0..nodes`); a node's incarnation tells frames for a gone
//! daemon from frames for its successor.

use dlm::{ClientEvent, ClientId, DlmCore, Flags, LockError, LockId, Lvb, Mode, ResName};
use membership_db::format::NodeId;
use membership_db::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// A broken invariant: its name and what was seen.
pub type Check = Result<(), (&'static str, String)>;

/// A frame on a link: when it is due, the receiving incarnation it was sent to, its bytes.
type InFlightFrame = (u64, u64, Vec<u8>);

/// Frames delivered together: sender, receiver (node indexes), the frames.
pub type Delivery = (usize, usize, Vec<dlm::wire::Frame>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    Waiting,
    Held { mode: Mode, until: u64 },
    Converting { from: Mode },
}

struct Client {
    id: ClientId,
    lock: Option<(LockId, ResName, CState)>,
}

/// The clients of every node and the interconnect between the nodes.
pub struct Load {
    names: Vec<ResName>,
    clients: Vec<Vec<Client>>,
    next_client: u64,
    /// The value block last written to each resource, as the clients wrote it.
    last_written: HashMap<ResName, Lvb>,
    links: HashMap<(usize, usize), VecDeque<InFlightFrame>>,
    /// Clients ask for new locks (not while the cluster is left to settle).
    pub new_requests: bool,
    /// Clients keep what they hold (while the cluster is left to settle) or release it.
    pub holding: bool,
    pub grants: u64,
    pub valid_lvbs_read: u64,
    /// Print every frame sent and received (`SIM_TRACE`).
    pub echo: bool,
}

fn lvb_of(v: u64) -> Lvb {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&v.to_le_bytes());
    b
}

impl Load {
    pub fn new(nodes: usize, resources: u16) -> Load {
        Load {
            names: (0..resources).map(|i| ResName::new("sim", format!("r{i}").as_bytes()).expect("valid")).collect(),
            clients: (0..nodes).map(|_| Vec::new()).collect(),
            next_client: 1,
            last_written: HashMap::new(),
            links: HashMap::new(),
            new_requests: true,
            holding: false,
            grants: 0,
            valid_lvbs_read: 0,
            echo: std::env::var_os("SIM_TRACE").is_some(),
        }
    }

    /// Node `i`'s daemon started: fresh clients, no frames from before.
    pub fn node_started(&mut self, i: usize, clients: u16) {
        self.node_gone(i);
        self.clients[i] = (0..clients)
            .map(|_| {
                self.next_client += 1;
                Client { id: ClientId(self.next_client), lock: None }
            })
            .collect();
    }

    /// Node `i`'s daemon ended: its clients with it, its frames in flight lost.
    pub fn node_gone(&mut self, i: usize) {
        self.clients[i].clear();
        self.links.retain(|(a, b), _| *a != i && *b != i);
    }

    pub fn links_empty(&self) -> bool {
        self.links.values().all(|q| q.is_empty())
    }

    /// No client holds or waits for a lock.
    pub fn clients_idle(&self) -> bool {
        self.clients.iter().all(|cs| cs.iter().all(|c| c.lock.is_none()))
    }

    /// Clients release what they hold at their next action.
    pub fn release_all(&mut self) {
        self.holding = false;
        for c in self.clients.iter_mut().flatten() {
            if let Some((_, _, CState::Held { until, .. })) = &mut c.lock {
                *until = 0;
            }
        }
    }

    /// What node `i`'s clients hold or wait for, for a report.
    pub fn describe(&self, i: usize) -> String {
        let held: Vec<String> = self.clients[i]
            .iter()
            .filter_map(|c| c.lock.as_ref().map(|(id, r, st)| format!("{id}:{r}:{st:?}")))
            .collect();
        held.join(" ")
    }

    /// One of node `i`'s clients goes away (its connection closes) mid-request or holding.
    pub fn client_gone(&mut self, i: usize, core: &mut DlmCore, rng: &mut SplitMix64) -> Option<String> {
        let k = rng.below(self.clients[i].len().max(1) as u64) as usize;
        let c = self.clients[i].get_mut(k)?;
        core.client_gone(c.id);
        let gone = c.id;
        self.next_client += 1;
        c.id = ClientId(self.next_client);
        c.lock = None;
        Some(format!("client {gone:?} gone"))
    }

    /// Node `i`'s clients act: lock, convert up and down, unlock writing the value block or
    /// not, cancel. Returns what they did, for the trace.
    pub fn act(&mut self, i: usize, core: &mut DlmCore, t: u64, rng: &mut SplitMix64) -> Vec<String> {
        let mut said = Vec::new();
        for k in 0..self.clients[i].len() {
            let roll = rng.below(1000);
            let name = self.names[rng.below(self.names.len() as u64) as usize].clone();
            let mode =
                [Mode::Ex, Mode::Ex, Mode::Pw, Mode::Pr, Mode::Pr, Mode::Cw, Mode::Cr, Mode::Nl][rng.below(8) as usize];
            let value = rng.next_u64();
            let timeout = (rng.below(5) == 0).then(|| 20 + rng.below(200));
            let noqueue = rng.below(7) == 0;
            let quecvt = rng.below(4) == 0;
            let c = &mut self.clients[i][k];
            match c.lock.clone() {
                None if self.new_requests && roll < 30 => {
                    let flags = Flags { noqueue, quecvt: false, timeout_ms: timeout };
                    if let Ok(id) = core.lock(t, c.id, name.clone(), mode, flags) {
                        said.push(format!("lock {id} {name} {mode} {flags:?}"));
                        c.lock = Some((id, name, CState::Waiting));
                    }
                }
                Some((id, res, CState::Held { mode: held, until })) if t >= until && !self.holding => {
                    let writes = held.writes_value() && roll.is_multiple_of(2);
                    if !self.new_requests || roll < 600 {
                        let v = writes.then(|| lvb_of(value));
                        if core.unlock(c.id, id, v).is_ok() {
                            said.push(format!("unlock {id} {res} writing {:?}", v.map(|v| v[0])));
                            c.lock = None;
                            if let Some(v) = v {
                                self.last_written.insert(res, v);
                            }
                        }
                    } else {
                        let flags = Flags { noqueue, quecvt, timeout_ms: timeout };
                        let v = (writes && !mode.writes_value()).then(|| lvb_of(value));
                        if core.convert(t, c.id, id, mode, flags, v).is_ok() {
                            said.push(format!("convert {id} {res} {held}->{mode} writing {:?}", v.map(|v| v[0])));
                            c.lock = Some((id, res.clone(), CState::Converting { from: held }));
                            if let Some(v) = v {
                                self.last_written.insert(res, v);
                            }
                        }
                    }
                }
                Some((id, _, CState::Waiting | CState::Converting { .. }))
                    if roll < 2 && core.cancel(c.id, id).is_ok() =>
                {
                    said.push(format!("cancel {id}"));
                }
                _ => {}
            }
        }
        said
    }

    /// An event for one of node `i`'s clients. Checks the value block a grant carries.
    fn event(
        &mut self,
        i: usize,
        node: NodeId,
        e: ClientEvent,
        t: u64,
        rng: &mut SplitMix64,
    ) -> Result<String, (&'static str, String)> {
        let hold = 1 + rng.below(80);
        let release_early = rng.below(3) == 0;
        match e {
            ClientEvent::Completion { client, lock, result } => {
                let Some(c) = self.clients[i].iter_mut().find(|c| c.id == client) else {
                    return Err((
                        "client-event",
                        format!("node {node}: an event for client {client:?}, which is gone"),
                    ));
                };
                let Some((held_id, res, state)) = c.lock.clone() else {
                    return Err((
                        "client-event",
                        format!("node {node}: a completion for lock {lock} of an idle client"),
                    ));
                };
                if held_id != lock {
                    return Err(("client-event", format!("node {node}: a completion for lock {lock}, not {held_id}")));
                }
                let said = format!("lock {lock} {res} -> {:?}", result.map(|g| (g.mode, g.lvb[0], g.lvb_valid)));
                match result {
                    Ok(g) => {
                        self.grants += 1;
                        // A holder in NL or CR may see a write land between its grant and its
                        // reading the value (a PW holder beside it): only modes that exclude
                        // writers read the last value for sure.
                        if g.lvb_valid && g.mode.excludes_writers() {
                            self.valid_lvbs_read += 1;
                            let last = self.last_written.get(&res);
                            if last != Some(&g.lvb) {
                                return Err((
                                    "lvb",
                                    format!(
                                        "node {node} lock {lock} on {res} granted {} with a valid value block {:?}, but the last written is {:?}",
                                        g.mode,
                                        &g.lvb[..8],
                                        last.map(|v| &v[..8])
                                    ),
                                ));
                            }
                        }
                        c.lock = Some((lock, res, CState::Held { mode: g.mode, until: t + hold }));
                    }
                    Err(err) => {
                        c.lock = match (state, err) {
                            (_, LockError::NodeLeaving) => None,
                            (CState::Converting { from }, _) => {
                                Some((lock, res, CState::Held { mode: from, until: t }))
                            }
                            _ => None,
                        };
                    }
                }
                Ok(said)
            }
            ClientEvent::Blocking { client, lock, wanted } => {
                if let Some(c) = self.clients[i].iter_mut().find(|c| c.id == client) {
                    if let Some((l, _, CState::Held { until, .. })) = &mut c.lock {
                        if *l == lock && release_early {
                            *until = t;
                        }
                    }
                }
                Ok(format!("lock {lock} blocks a request for {wanted}"))
            }
        }
    }

    /// Takes node `i`'s outputs: frames onto the links (for the incarnation of the receiver
    /// the sender knows, as the interconnect's sessions are), events to its clients. Returns
    /// the barrier acknowledgements, and what happened for the trace.
    pub fn drain(
        &mut self,
        i: usize,
        core: &mut DlmCore,
        t: u64,
        rng: &mut SplitMix64,
        incarnation_of: &dyn Fn(usize) -> u64,
        trace: &mut dyn FnMut(String),
    ) -> Result<Vec<u64>, (&'static str, String)> {
        let mut acks = Vec::new();
        // Bounded: each pass takes what the core has; events do not make the core send more.
        for _ in 0..4 {
            let mut progressed = false;
            while let Some((to, frame)) = core.poll_transmit() {
                progressed = true;
                if self.echo {
                    eprintln!("t={t} send {}->{to}: {frame:?}", i + 1);
                }
                let j = to.index();
                let known = core.members().iter().find(|(n, _)| *n == to).map(|(_, inc)| *inc);
                let incarnation = known.unwrap_or_else(|| incarnation_of(j));
                let mut b = dlm::wire::Batch::new();
                b.push(&frame);
                let due = t + 1 + rng.below(4);
                let q = self.links.entry((i, j)).or_default();
                let due = q.back().map_or(due, |(last, _, _)| due.max(*last));
                q.push_back((due, incarnation, b.into_bytes()));
            }
            while let Some(e) = core.poll_event() {
                progressed = true;
                let said = self.event(i, core.me(), e, t, rng)?;
                trace(format!("node {}: {said}", core.me()));
            }
            while let Some(a) = core.poll_ack() {
                progressed = true;
                acks.push(a);
            }
            if !progressed {
                break;
            }
        }
        Ok(acks)
    }

    /// The frames due now on links whose ends are not cut off, for the receiver's current
    /// incarnation, in a fixed order: (sender, receiver, frames).
    pub fn due_frames(
        &mut self,
        t: u64,
        cut: &dyn Fn(usize) -> bool,
        incarnation_of: &dyn Fn(usize) -> u64,
    ) -> Result<Vec<Delivery>, (&'static str, String)> {
        let mut keys: Vec<(usize, usize)> = self.links.keys().copied().collect();
        keys.sort();
        let mut out = Vec::new();
        for (a, b) in keys {
            if cut(a) || cut(b) {
                continue;
            }
            let q = self.links.get_mut(&(a, b)).expect("listed");
            while q.front().is_some_and(|(due, _, _)| *due <= t) {
                let (_, incarnation, bytes) = q.pop_front().expect("checked");
                if incarnation != incarnation_of(b) {
                    continue;
                }
                let frames = dlm::wire::decode_batch(&bytes).map_err(|e| ("wire", e.to_string()))?;
                if self.echo {
                    for f in &frames {
                        eprintln!("t={t} frame {}->{}: {f:?}", a + 1, b + 1);
                    }
                }
                out.push((a, b, frames));
            }
        }
        Ok(out)
    }
}

/// No two incompatible modes are held on one resource by the live nodes (a node forced out
/// counts until its daemon ends: it may still use what it locked).
pub fn check_compatible<'a>(cores: impl Iterator<Item = &'a DlmCore>) -> Check {
    let mut held: BTreeMap<ResName, Vec<(NodeId, LockId, Mode)>> = BTreeMap::new();
    for c in cores {
        for (res, lock, mode) in c.held_modes() {
            held.entry(res).or_default().push((c.me(), lock, mode));
        }
    }
    for (res, locks) in held {
        for (k, a) in locks.iter().enumerate() {
            for b in &locks[k + 1..] {
                if !a.2.compatible(b.2) {
                    return Err((
                        "compatible",
                        format!(
                            "{res}: node {} lock {} holds {} while node {} lock {} holds {}",
                            a.0, a.1, a.2, b.0, b.1, b.2
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A quiet cluster: one master per resource; every lock of a live node is in its master's
/// queues as the owner sees it (no survivor's lock lost by recovery); every queued lock has its
/// owner (no ghost); no lock of a client that went is left.
pub fn check_queues_match(cores: &[&DlmCore]) -> Check {
    let mut masters: HashMap<ResName, (NodeId, dlm::queues::Queues)> = HashMap::new();
    for c in cores {
        for m in c.mastered() {
            if let Some((other, _)) = masters.get(&m.res) {
                return Err(("one-master", format!("{} is mastered by node {other} and node {}", m.res, c.me())));
            }
            masters.insert(m.res.clone(), (c.me(), m.queues));
        }
    }
    let mut owned = BTreeSet::new();
    for c in cores {
        for l in c.own_locks() {
            if l.orphan {
                let seen: Vec<String> =
                    cores.iter().map(|o| format!("node {}: {}", o.me(), o.describe_resource(&l.res))).collect();
                return Err((
                    "orphan",
                    format!(
                        "node {} lock {} on {} ({:?}/{:?}): its client went, and it is still here; {}",
                        c.me(),
                        l.lock,
                        l.res,
                        l.granted,
                        l.requested,
                        seen.join("; ")
                    ),
                ));
            }
            let gid = dlm::GlobalLockId { node: c.me(), lock: l.lock };
            owned.insert(gid);
            let Some((m, q)) = masters.get(&l.res) else {
                return Err(("lost-lock", format!("node {} lock {} on {}: no master has it", c.me(), l.lock, l.res)));
            };
            let found = q.granted.iter().chain(&q.converting).chain(&q.waiting).find(|x| x.id == gid);
            match found {
                Some(x) if x.granted == l.granted && x.requested == l.requested => {}
                other => {
                    return Err((
                        "lost-lock",
                        format!(
                            "node {} lock {} on {} (granted {:?}, requested {:?}) is {:?} at its master, node {m}",
                            c.me(),
                            l.lock,
                            l.res,
                            l.granted,
                            l.requested,
                            other
                        ),
                    ))
                }
            }
        }
    }
    for (res, (m, q)) in &masters {
        for x in q.granted.iter().chain(&q.converting).chain(&q.waiting) {
            if !owned.contains(&x.id) {
                return Err((
                    "ghost-lock",
                    format!("node {m} masters {res} with lock {:?}, which no live node owns", x.id),
                ));
            }
        }
    }
    Ok(())
}

/// Every resource some live node masters has empty queues (once every lock is released).
pub fn check_all_released(cores: &[&DlmCore]) -> Check {
    for c in cores {
        if let Some(m) = c.mastered().iter().find(|m| !m.queues.is_empty()) {
            return Err((
                "ghost-lock",
                format!("node {} masters {} with locks nobody holds: {:?}", c.me(), m.res, m.queues),
            ));
        }
    }
    Ok(())
}
