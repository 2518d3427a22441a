//! Starting a daemon: probing the slot (and proving a stale one stopped), reading the claim
//! blocks, and acquiring the slot with a delta lease.

use super::running::Running;
use super::*;

/// Watching this node's slot, which shows a running daemon.
#[derive(Debug, Clone, Copy)]
struct Watch {
    incarnation: u64,
    counter: u64,
    since: Millis,
}

#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) next_read_at: Millis,
    watching: Option<Watch>,
    /// The newest cluster state read for a proof, so it is read again only when a newer one is
    /// advertised.
    proof_tried: StateRef,
}

impl Probe {
    pub(super) fn new(now: Millis) -> Probe {
        Probe { next_read_at: now, watching: None, proof_tried: StateRef::NONE }
    }
}

/// What the slot's first heartbeat starts, once it lands.
#[derive(Debug, Clone)]
pub(super) struct Acquiring {
    heartbeat: Heartbeat,
    own: Claim,
    fresh: bool,
    claims: Vec<BlockView>,
    known_master: Option<(u64, ClaimValue)>,
}

#[derive(Debug, Clone)]
pub(super) struct Acquire {
    /// The first heartbeat, landed.
    pub(super) lease: Lease,
    pub(super) written_at: Millis,
    /// Our claim block as it will be (a fresh one when it was damaged).
    pub(super) own: Claim,
    /// `own` must be written before running: the block on the disk was damaged.
    fresh: bool,
    claims: Vec<BlockView>,
    known_master: Option<(u64, ClaimValue)>,
}

impl NodeCore {
    /// Startup cannot go on without this I/O: the daemon is refused, saying what failed.
    fn refuse_io(&mut self, what: &str, e: IoFailure) {
        self.finish(Exit::Refused(Refusal::Io(format!("{what}: {}", e.0))));
    }

    pub(super) fn poll_probe(&mut self, now: Millis) -> Option<Action> {
        let Phase::Probe(p) = &mut self.phase else { unreachable!("probe phase") };
        if now < p.next_read_at {
            return None;
        }
        p.next_read_at = now + self.config.timing.heartbeat_ms as Millis;
        let through = NodeId(self.config.max_nodes);
        self.issue(Action::ReadBeacons { through }, Pending::ProbeBeacons)
    }

    pub(super) fn on_probe_beacons(&mut self, now: Millis, r: Result<Beacons, IoFailure>) {
        let beacons = match r {
            Ok(b) => b,
            Err(e) => return self.refuse_io("cannot read the heartbeat region", e),
        };
        let through = beacons.heartbeats.len() as u16;
        let (_, readable) = self.observe(now, beacons);
        let Phase::Probe(p) = &self.phase else { unreachable!("probe phase") };
        let watching = p.watching;
        let me = self.config.node;
        let own = self.liveness.heartbeat(me).filter(|_| readable.contains(me)).cloned();
        let own = own.as_ref();
        match (own, watching) {
            (Some(hb), None) if hb.state == HeartbeatState::Up => {
                self.event(Event::WaitingForStaleSlot { incarnation: hb.incarnation });
                let w = Watch { incarnation: hb.incarnation, counter: hb.counter, since: now };
                if let Phase::Probe(p) = &mut self.phase {
                    p.watching = Some(w);
                }
                self.try_proof(through);
            }
            (Some(hb), Some(w)) if (hb.incarnation, hb.counter) != (w.incarnation, w.counter) => {
                let host = if hb.host.is_empty() { String::new() } else { format!(" on host {}", hb.host) };
                self.finish(Exit::Refused(Refusal::AlreadyRunning(format!(
                    "node {} is already running (incarnation {}, pid {}{}): its heartbeat is advancing",
                    self.config.node, hb.incarnation, hb.pid, host
                ))));
            }
            (_, Some(w)) if now < w.since + self.config.timing.dead_ms as Millis => self.try_proof(through),
            _ => self.follow_up(Action::ReadClaims, Pending::ProbeClaims),
        }
    }

    /// Reads the newest cluster state any heartbeat advertises, if not read already: it may
    /// show the stale slot's incarnation stopped.
    fn try_proof(&mut self, through: u16) {
        let best = NodeId::all(through)
            .filter_map(|n| self.liveness.heartbeat(n))
            .filter(|hb| hb.node != self.config.node && hb.state == HeartbeatState::Up)
            .map(|hb| hb.cluster_state)
            .filter(|s| !s.is_none())
            .max_by_key(|s| s.key());
        let Phase::Probe(p) = &mut self.phase else { unreachable!("probe phase") };
        if let Some(best) = best.filter(|b| b.key() > p.proof_tried.key()) {
            p.proof_tried = best;
            self.follow_up(Action::ReadClusterState(best), Pending::ProbeState);
        }
    }

    pub(super) fn on_probe_state(&mut self, r: Result<Result<ClusterState, CorruptRecord>, IoFailure>) {
        let state = match r {
            Ok(Ok(state)) => state,
            // No proof: keep watching.
            Ok(Err(_)) | Err(_) => return,
        };
        self.note_acting_master(state.master, state.epoch);
        let Phase::Probe(p) = &self.phase else { unreachable!("probe phase") };
        let Some(w) = p.watching else { return };
        if state.member(self.config.node).stopped_incarnation >= w.incarnation {
            self.event(Event::StaleSlotProvenStopped { incarnation: w.incarnation, epoch: state.epoch });
            self.follow_up(Action::ReadClaims, Pending::ProbeClaims);
        }
    }

    pub(super) fn on_probe_claims(&mut self, now: Millis, r: Result<Vec<Copies<Claim>>, IoFailure>) {
        if !matches!(self.phase, Phase::Probe(_)) {
            return; // a second proof arrived after the first moved us on
        }
        let copies = match r {
            Ok(c) => c,
            Err(e) => return self.refuse_io("cannot read the claim region", e),
        };
        self.note_corrupt(RecordKind::Claim, copies.iter().flatten().map(|c| c.as_ref().err()));
        let me = self.config.node;
        if copies[me.index()].iter().any(|c| c.is_err()) {
            // Our block is damaged: before writing a fresh one, learn from the cluster state
            // which epochs we were master of (our heartbeat may be damaged too).
            return self.follow_up(Action::ReadClusterStates, Pending::ProbeStates { claims: copies });
        }
        self.acquire_with(now, copies);
    }

    pub(super) fn on_probe_states(
        &mut self,
        now: Millis,
        claims: Vec<Copies<Claim>>,
        r: Result<Vec<Result<Option<ClusterState>, CorruptRecord>>, IoFailure>,
    ) {
        match r {
            Ok(states) => self.note_states(&states),
            Err(e) => return self.refuse_io("cannot read the cluster state", e),
        }
        self.acquire_with(now, claims);
    }

    /// Our claim block (fresh when damaged) and our incarnation, then the first heartbeat.
    fn acquire_with(&mut self, now: Millis, copies: Vec<Copies<Claim>>) {
        let me = self.config.node;
        let own_hb = self.liveness.heartbeat(me).cloned();
        let own_copies = &copies[me.index()];
        // Epochs our previous incarnations were master of: carried in our heartbeat, and in our
        // block when it shows one decided for us.
        let decided_for_us = own_copies.iter().flatten().filter(|c| c.decided && c.value.is_some_and(|v| v.node == me));
        let acted = decided_for_us.map(|c| c.epoch).max().unwrap_or(0);
        self.acted[me.index()] = self.acted[me.index()].max(acted);
        let writer_incarnation = own_copies.iter().flatten().map(|c| c.writer_incarnation).max().unwrap_or(0);
        self.me.incarnation =
            own_hb.as_ref().map_or(0, |h| h.incarnation).max(writer_incarnation).max(self.config.incarnation_floor) + 1;
        let (own, fresh) = match own_copies {
            [Ok(a), Ok(b)] => (if a.seq >= b.seq { a.clone() } else { b.clone() }, false),
            _ => {
                // A copy is damaged, and with it the newest state of our block may be lost:
                // ballots of our previous incarnation, even a decision. Write a fresh block in
                // the highest epoch it can have been in, with a floor that keeps every epoch our
                // previous incarnation may have been master of from being decided again (a
                // master announces its epoch in its heartbeat before it acts).
                let valid = || own_copies.iter().flatten();
                let advertised = own_hb.as_ref().map_or(0, |h| h.claim_epoch.max(h.acted_epoch));
                let epoch = valid().map(|c| c.epoch).max().unwrap_or(0).max(advertised);
                let floor = valid().map(|c| c.floor).max().unwrap_or(0).max(advertised).max(self.acted[me.index()]);
                let seq = valid().map(|c| c.seq + 1).max().unwrap_or(2);
                let block = Claim {
                    node: me,
                    seq,
                    writer_incarnation: self.me.incarnation,
                    epoch,
                    mbal: 0,
                    bal: 0,
                    value: None,
                    decided: false,
                    floor,
                };
                (block, true)
            }
        };
        let mut claims = self.block_views(now, &copies);
        claims[me.index()] = BlockView::Read(own.clone());
        let known_master = crate::claim::ClaimSummary::of(&claims).decided;
        let mut heartbeat = self.next_heartbeat(HeartbeatState::Up, 0);
        heartbeat.claim_epoch = own.epoch;
        let acquiring = Box::new(Acquiring { heartbeat: heartbeat.clone(), own, fresh, claims, known_master });
        self.follow_up(Action::WriteHeartbeat(heartbeat), Pending::AcquireWrite { issued_at: now, acquiring });
    }

    pub(super) fn on_acquire_write(
        &mut self,
        now: Millis,
        issued_at: Millis,
        acquiring: Acquiring,
        r: Result<(), IoFailure>,
    ) {
        match r {
            Ok(()) => {
                let Acquiring { heartbeat, own, fresh, claims, known_master } = acquiring;
                let lease = Lease { heartbeat_ok_at: issued_at, last_landed: heartbeat };
                self.phase = Phase::Acquire(Acquire { lease, written_at: now, own, fresh, claims, known_master });
            }
            Err(e) => self.refuse_io("cannot write the heartbeat slot", e),
        }
    }

    pub(super) fn poll_acquire(&mut self, now: Millis) -> Option<Action> {
        let Phase::Acquire(a) = &self.phase else { unreachable!("acquire phase") };
        if now < a.written_at + self.acquire_wait_ms() {
            return None;
        }
        let through = self.table.highest().map_or(self.config.node, |h| h.max(self.config.node));
        self.issue(Action::ReadBeacons { through }, Pending::AcquireCheck)
    }

    pub(super) fn on_acquire_check(&mut self, now: Millis, r: Result<Beacons, IoFailure>) {
        let beacons = match r {
            Ok(b) => b,
            Err(e) => return self.refuse_io("cannot read the heartbeat region", e),
        };
        let (_, readable) = self.observe(now, beacons);
        let me = self.config.node;
        let Phase::Acquire(a) = &self.phase else { unreachable!("acquire phase") };
        let lease = &a.lease;
        if let Some(hb) = self.liveness.heartbeat(me).filter(|_| readable.contains(me)) {
            if (hb.incarnation, hb.counter) != (lease.last_landed.incarnation, lease.last_landed.counter) {
                return self.finish(Exit::Refused(Refusal::AlreadyRunning(format!(
                    "another sdc (pid {}) started on node {} at the same time",
                    hb.pid, self.config.node
                ))));
            }
        }
        if a.fresh {
            let block = a.own.clone();
            self.follow_up(Action::WriteClaim(block), Pending::FreshClaim);
        } else {
            self.start_running(now);
        }
    }

    pub(super) fn on_fresh_claim(&mut self, now: Millis, r: Result<(), IoFailure>) {
        match r {
            Ok(()) => {
                let Phase::Acquire(a) = &self.phase else { unreachable!("acquire phase") };
                let through = a.own.floor;
                self.event(Event::OwnClaimReset { through });
                self.start_running(now);
            }
            Err(e) => self.refuse_io("cannot write the claim block", e),
        }
    }

    fn start_running(&mut self, now: Millis) {
        let Phase::Acquire(a) = std::mem::replace(&mut self.phase, Phase::Probe(Probe::new(now))) else {
            unreachable!("acquire phase")
        };
        self.phase = Phase::Running(Box::new(Running::new(a.lease, a.own, a.claims, a.known_master, now)));
        self.event(Event::Started { incarnation: self.me.incarnation });
    }
}
