//! A running node: one heartbeat write and one read of the heartbeat region per interval, and
//! from what that read shows, elections (reading the claims), deposition, and reading the node
//! table or the superblock when the config stamp says they changed.

use super::*;
use crate::claim::{ClaimSummary, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower,
    /// Decided master of `epoch`: the heartbeat that says so is being written. A master acts
    /// only once that heartbeat has landed, so every epoch a node acted in is on the disk in
    /// its heartbeat (the claim rule for damaged blocks relies on it).
    Announcing {
        epoch: u64,
    },
    Master {
        epoch: u64,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Running {
    pub(super) lease: Lease,
    /// Our claim block as last written (what the disk must hold).
    pub(super) own_claim: Claim,
    /// The claim blocks as last read.
    claims: Vec<BlockView>,
    attempt: Option<Attempt>,
    role: Role,
    pub(super) known_master: Option<(u64, ClaimValue)>,
    /// When the master was first seen gone, for the staggered claim start.
    master_gone_since: Option<Millis>,
    retry_at: Millis,
    pub(super) next_tick_at: Millis,
    /// Reads of the heartbeat region between heartbeats (while transitions are in flight).
    pub(super) next_poll_at: Option<Millis>,
    pub(super) beacon_reads: u64,
    pub(super) ticks: u64,
    /// Consecutive reads that found the config stamp unreadable.
    stamp_unreadable: u64,
    /// The cluster state copies were read in this election (which nodes were master in which
    /// epochs, for lost claim blocks); forgotten when a master is visible again.
    states_read: bool,
}

impl Running {
    pub(super) fn new(
        lease: Lease,
        own_claim: Claim,
        claims: Vec<BlockView>,
        known_master: Option<(u64, ClaimValue)>,
        now: Millis,
    ) -> Running {
        Running {
            lease,
            own_claim,
            claims,
            attempt: None,
            role: Role::Follower,
            known_master,
            master_gone_since: None,
            retry_at: now,
            next_tick_at: now,
            next_poll_at: None,
            beacon_reads: 0,
            ticks: 0,
            stamp_unreadable: 0,
            states_read: false,
        }
    }

    pub(super) fn master_epoch(&self) -> Option<u64> {
        match self.role {
            Role::Master { epoch } => Some(epoch),
            Role::Follower | Role::Announcing { .. } => None,
        }
    }

    /// The epoch this node has been decided master of, announced or not.
    fn decided_epoch(&self) -> Option<u64> {
        match self.role {
            Role::Master { epoch } | Role::Announcing { epoch } => Some(epoch),
            Role::Follower => None,
        }
    }

    pub(super) fn next_deadline(&self) -> Millis {
        self.next_tick_at.min(self.next_poll_at.unwrap_or(Millis::MAX))
    }
}

/// How our claim block reads back.
enum OwnBlock {
    Intact,
    /// A valid copy newer than ours, or our newest copy holding what we did not write.
    Foreign {
        incarnation: u64,
    },
    /// A copy is damaged (or our last write did not land): rewrite ours there.
    Damaged {
        repair: Claim,
        offset: u64,
    },
}

impl NodeCore {
    fn running_mut(&mut self) -> &mut Running {
        match &mut self.phase {
            Phase::Running(r) => r,
            _ => unreachable!("running phase"),
        }
    }

    /// The heartbeat region is read up to the highest node of the table, or whole while an
    /// election is on (every claim block's owner must be judged).
    fn beacons_through(&self, now: Millis) -> NodeId {
        let me = self.config.node;
        let electing = self.running().is_some_and(|r| r.attempt.is_some() || self.master_gone(now, r));
        if electing {
            return NodeId(self.config.max_nodes);
        }
        let highest = self.table.highest().into_iter().chain(self.watched.highest());
        highest.fold(me, NodeId::max)
    }

    pub(super) fn poll_running(&mut self, now: Millis) -> Option<Action> {
        let hb_ms = self.config.timing.heartbeat_ms as Millis;
        let quarter = (hb_ms / 4).max(1);
        let r = self.running_mut();
        if now >= r.next_tick_at {
            r.next_tick_at = now + hb_ms;
            r.ticks += 1;
            if r.next_poll_at.is_some() {
                r.next_poll_at = Some(now + quarter);
            }
            let epoch = r.decided_epoch().unwrap_or(0);
            let hb = self.next_heartbeat(HeartbeatState::Up, epoch);
            let pending = Pending::Heartbeat { issued_at: now, heartbeat: Box::new(hb.clone()) };
            return self.issue(Action::WriteHeartbeat(hb), pending);
        }
        if r.next_poll_at.is_some_and(|p| now >= p) {
            r.next_poll_at = Some(now + quarter);
            let through = self.beacons_through(now);
            return self.issue(Action::ReadBeacons { through }, Pending::Beacons);
        }
        None
    }

    pub(super) fn on_heartbeat_written(
        &mut self,
        now: Millis,
        issued_at: Millis,
        written: Heartbeat,
        r: Result<(), IoFailure>,
    ) {
        match r {
            Ok(()) => {
                let run = self.running_mut();
                if let Role::Announcing { epoch } = run.role {
                    if written.master_epoch == epoch {
                        run.role = Role::Master { epoch };
                        self.event(Event::BecameMaster { epoch });
                    }
                }
                let run = self.running_mut();
                run.lease = Lease { heartbeat_ok_at: issued_at, last_landed: written };
                let through = self.beacons_through(now);
                self.follow_up(Action::ReadBeacons { through }, Pending::Beacons);
            }
            // Retried at the next tick; fencing follows if they keep failing for fence_ms.
            Err(e) => self.io_failed(e),
        }
    }

    pub(super) fn on_beacons(&mut self, now: Millis, r: Result<Beacons, IoFailure>) {
        let beacons = match r {
            Ok(b) => b,
            Err(e) => return self.io_failed(e),
        };
        let through = beacons.heartbeats.len() as u16;
        let (stamp, readable) = self.observe(now, beacons);
        let me = self.config.node;
        // Our slot must hold exactly what we last wrote; anything else is another daemon.
        if readable.contains(me) {
            let hb = self.liveness.heartbeat(me).expect("read just now");
            let last = &self.running().expect("running").lease.last_landed;
            if (hb.incarnation, hb.counter) != (last.incarnation, last.counter) {
                let incarnation = hb.incarnation;
                return self.finish(Exit::Fenced(FenceReason::SlotTaken { incarnation }));
            }
        }
        self.check_stamp(&stamp);
        self.running_mut().beacon_reads += 1;
        self.observe_masters(now, through);
        let r = self.running().expect("running");
        if let Some(epoch) = r.decided_epoch() {
            let newer = NodeId::all(through)
                .filter(|n| *n != me && readable.contains(*n))
                .filter_map(|n| self.liveness.heartbeat(n))
                .filter(|hb| hb.state != HeartbeatState::Never)
                .map(|hb| hb.claim_epoch.max(hb.master_epoch))
                .max()
                .unwrap_or(0);
            if newer > epoch {
                self.finish(Exit::Fenced(FenceReason::Deposed { epoch, newer }));
            }
        } else if r.attempt.is_none() && self.master_gone(now, r) {
            self.follow_up(Action::ReadClaims, Pending::Claims);
        }
    }

    /// The config stamp: a new generation means the node table changed; another UUID, or a
    /// stamp that stays unreadable, means the superblock must be checked.
    fn check_stamp(&mut self, stamp: &Result<ConfigStamp, CorruptRecord>) {
        match stamp {
            Ok(s) if s.cluster_uuid != self.config.cluster_uuid => {
                self.follow_up(Action::ReadSuperblock, Pending::Superblock);
            }
            Ok(s) => {
                self.running_mut().stamp_unreadable = 0;
                if s.table_generation != self.table_generation && self.stamp_generation != Some(s.table_generation) {
                    self.stamp_generation = Some(s.table_generation);
                    self.event(Event::TableChanged { generation: s.table_generation });
                    self.follow_up(Action::ReadNodeTable, Pending::NodeTable);
                }
            }
            Err(_) => {
                let r = self.running_mut();
                r.stamp_unreadable += 1;
                let (count, ticks) = (r.stamp_unreadable, r.ticks);
                if count == 2 {
                    self.event(Event::StampUnreadable);
                }
                if count >= 2 && ticks % STAMP_FALLBACK_TICKS == 0 {
                    self.follow_up(Action::ReadSuperblock, Pending::Superblock);
                    self.follow_up(Action::ReadNodeTable, Pending::NodeTable);
                }
            }
        }
    }

    pub(super) fn on_states(&mut self, r: Result<Vec<Result<Option<ClusterState>, CorruptRecord>>, IoFailure>) {
        match r {
            Ok(states) => self.note_states(&states),
            Err(e) => {
                self.running_mut().states_read = false;
                self.io_failed(e)
            }
        }
    }

    pub(super) fn on_superblock(&mut self, r: Result<Option<[u8; 16]>, IoFailure>) {
        match r {
            // The stamp disagrees with a superblock that still holds our cluster: the stamp is
            // what is wrong, and an admin command rewrites it.
            Ok(Some(uuid)) if uuid == self.config.cluster_uuid => {}
            Ok(_) => self.finish(Exit::Fenced(FenceReason::Reformatted)),
            Err(e) => self.io_failed(e),
        }
    }

    pub(super) fn on_node_table(&mut self, r: Result<Vec<Result<NodeEntry, CorruptRecord>>, IoFailure>) {
        let table = match r {
            Ok(t) => t,
            Err(e) => {
                // Read again at the next beacon that shows the new generation: a table change
                // (an `sdc leave`, a node added) must not be missed for one failed read.
                self.stamp_generation = None;
                return self.io_failed(e);
            }
        };
        self.note_corrupt(RecordKind::NodeEntry, table.iter().map(|e| e.as_ref().err()));
        self.table = TableView::of(&table);
        if let Some(Ok(e)) = table.get(self.config.node.index()) {
            self.leave_requests = Some(e.leave_requests);
        }
        if let Some(g) = self.stamp_generation {
            self.table_generation = g;
        }
    }

    /// Follows the highest epoch a live heartbeat (of nodes 1 to `through`) says it is master of.
    fn observe_masters(&mut self, now: Millis, through: u16) {
        let me = self.config.node;
        let best = NodeId::all(through)
            .filter_map(|n| self.liveness.heartbeat(n))
            .filter(|hb| hb.node != me && hb.state == HeartbeatState::Up && hb.master_epoch > 0)
            .filter(|hb| !self.liveness.judge(now, hb.node).is_gone())
            .map(|hb| (hb.master_epoch, ClaimValue { node: hb.node, incarnation: hb.incarnation }))
            .max_by_key(|(e, _)| *e);
        if let Some(best) = best {
            self.learn_master(best);
        }
    }

    fn learn_master(&mut self, (epoch, master): (u64, ClaimValue)) {
        let r = self.running_mut();
        if r.known_master.is_some_and(|(e, v)| e > epoch || (e, v) == (epoch, master)) {
            return;
        }
        r.known_master = Some((epoch, master));
        self.event(Event::MasterKnown { epoch, master });
    }

    pub(super) fn master_gone(&self, now: Millis, r: &Running) -> bool {
        if r.decided_epoch().is_some() {
            return false;
        }
        let Some((_, master)) = r.known_master else { return true };
        if master.node == self.config.node {
            return master.incarnation != self.me.incarnation;
        }
        match self.liveness.heartbeat(master.node) {
            Some(hb) if hb.incarnation != master.incarnation => true,
            _ => self.liveness.judge(now, master.node).is_gone(),
        }
    }

    /// How our block reads back against what we last wrote (`own`, sequence `s` in copy
    /// `s % 2`; the other copy holds an older sequence of ours).
    fn check_own_block(&self, copies: &Copies<Claim>, own: &Claim) -> OwnBlock {
        let s = own.seq;
        if let Some(c) = copies.iter().flatten().find(|c| c.seq > s || (c.seq == s && *c != own)) {
            return OwnBlock::Foreign { incarnation: c.writer_incarnation };
        }
        let newest_copy = (s % 2) as usize;
        let layout_offset = |copy: usize| copies[copy].as_ref().err().map_or(0, |e| e.offset);
        match &copies[newest_copy] {
            Ok(c) if c == own => {}
            // Damaged, or our write of `s` did not land: write ours there again (same parity).
            _ => {
                let repair = Claim { seq: s + 2, ..own.clone() };
                return OwnBlock::Damaged { repair, offset: layout_offset(newest_copy) };
            }
        }
        if copies[1 - newest_copy].is_err() {
            let repair = Claim { seq: s + 1, ..own.clone() };
            return OwnBlock::Damaged { repair, offset: layout_offset(1 - newest_copy) };
        }
        OwnBlock::Intact
    }

    pub(super) fn on_claims(&mut self, now: Millis, r: Result<Vec<Copies<Claim>>, IoFailure>) {
        let copies = match r {
            Ok(c) => c,
            Err(e) => {
                self.running_mut().attempt = None;
                return self.io_failed(e);
            }
        };
        self.note_corrupt(RecordKind::Claim, copies.iter().flatten().map(|c| c.as_ref().err()));
        let me = self.config.node;
        let own = self.running_mut().own_claim.clone();
        match self.check_own_block(&copies[me.index()], &own) {
            OwnBlock::Intact => {}
            OwnBlock::Foreign { incarnation } => {
                return self.finish(Exit::Fenced(FenceReason::SlotTaken { incarnation }));
            }
            OwnBlock::Damaged { repair, offset } => {
                let r = self.running_mut();
                if let Some(a) = r.attempt.take() {
                    let epoch = a.epoch();
                    r.retry_at = now;
                    self.event(Event::ClaimAborted { epoch, reason: Abort::Unreadable(me) });
                }
                self.running_mut().own_claim = repair.clone();
                self.event(Event::ClaimRepaired { offset });
                return self.follow_up(Action::WriteClaim(repair), Pending::ClaimWrite(ClaimWrite::Repair));
            }
        }
        let mut views = self.block_views(now, &copies);
        views[me.index()] = BlockView::Read(own);
        let r = self.running_mut();
        if let Some(attempt) = r.attempt.as_mut() {
            let step = attempt.on_read(&views);
            let epoch = attempt.epoch();
            r.claims = views;
            return self.on_attempt_step(now, epoch, step);
        }
        let summary = ClaimSummary::of(&views);
        r.claims = views;
        if let Some(epoch) = r.decided_epoch() {
            if summary.highest_epoch > epoch {
                return self.finish(Exit::Fenced(FenceReason::Deposed { epoch, newer: summary.highest_epoch }));
            }
            return;
        }
        if let Some(decided) = summary.decided {
            self.learn_master(decided);
            if decided.1 == self.me && decided.0 == summary.highest_epoch {
                // Decided for us while our commit was lost (we wrote phase 2 and stopped).
                return self.become_master_of(decided.0);
            }
        }
        self.maybe_claim(now, &summary);
    }

    /// Eligible nodes below us that may still be alive go first: they claim at once, we
    /// wait two heartbeat intervals per such node. This avoids duelling ballots; safety does
    /// not depend on it.
    fn claim_delay_ms(&self, now: Millis) -> Millis {
        let rank = self
            .table
            .eligible
            .iter()
            .filter(|n| *n < self.config.node)
            .filter(|n| !self.liveness.judge(now, *n).is_gone())
            .count() as Millis;
        rank * 2 * self.config.timing.heartbeat_ms as Millis
    }

    fn maybe_claim(&mut self, now: Millis, summary: &ClaimSummary) {
        if !self.table.eligible.contains(self.config.node) || self.stop_requested {
            return;
        }
        let r = self.running().expect("running");
        if !self.master_gone(now, r) {
            let r = self.running_mut();
            r.master_gone_since = None;
            r.states_read = false;
            return;
        }
        let lost = r.claims.iter().any(|v| matches!(v, BlockView::Lost { .. }));
        if lost && !r.states_read {
            // A lost block's owner may have been master in epochs its heartbeat no longer
            // shows: the cluster state copies say, once per election.
            self.running_mut().states_read = true;
            return self.follow_up(Action::ReadClusterStates, Pending::States);
        }
        let delay = self.claim_delay_ms(now);
        let me = self.me;
        let r = self.running_mut();
        let since = *r.master_gone_since.get_or_insert(now);
        if now < since + delay || now < r.retry_at || !summary.unreadable.is_empty() {
            return;
        }
        let epoch = summary.next_epoch().max(r.own_claim.epoch);
        let (attempt, block) = Attempt::start(me, &r.own_claim, epoch, &r.claims);
        let ballot = attempt.ballot();
        r.attempt = Some(attempt);
        r.own_claim = block.clone();
        self.event(Event::ClaimStarted { epoch, ballot });
        self.follow_up(Action::WriteClaim(block), Pending::ClaimWrite(ClaimWrite::Attempt));
    }

    fn on_attempt_step(&mut self, now: Millis, epoch: u64, step: Step) {
        match step {
            Step::Write(block) => {
                self.running_mut().own_claim = block.clone();
                self.follow_up(Action::WriteClaim(block), Pending::ClaimWrite(ClaimWrite::Attempt));
            }
            Step::Decided { epoch, value, commit } => {
                let r = self.running_mut();
                r.attempt = None;
                r.known_master = Some((epoch, value));
                self.event(Event::MasterKnown { epoch, master: value });
                let master = value == self.me;
                match commit {
                    Some(block) => {
                        self.running_mut().own_claim = block.clone();
                        let commit = ClaimWrite::Commit { epoch, master };
                        self.follow_up(Action::WriteClaim(block), Pending::ClaimWrite(commit));
                    }
                    None if master => self.become_master_of(epoch),
                    None => {}
                }
            }
            Step::Aborted(reason) => {
                let me = self.config.node;
                // Back off by a node-specific amount so that duelling candidates separate.
                let stagger = 1 + (me.index() as Millis % 4);
                let backoff = stagger * self.config.timing.heartbeat_ms as Millis;
                let r = self.running_mut();
                r.attempt = None;
                if reason == Abort::OwnBlockOverwritten {
                    let incarnation = match r.claims.get(me.index()) {
                        Some(BlockView::Read(c)) => c.writer_incarnation,
                        _ => 0,
                    };
                    return self.finish(Exit::Fenced(FenceReason::SlotTaken { incarnation }));
                }
                r.retry_at = now + backoff;
                self.event(Event::ClaimAborted { epoch, reason });
            }
        }
    }

    pub(super) fn on_claim_written(&mut self, kind: ClaimWrite, r: Result<(), IoFailure>) {
        match (kind, r) {
            (ClaimWrite::Attempt, Ok(())) => self.follow_up(Action::ReadClaims, Pending::Claims),
            (ClaimWrite::Attempt, Err(e)) => {
                self.running_mut().attempt = None;
                self.io_failed(e);
            }
            (ClaimWrite::Commit { epoch, master: true }, Ok(())) => self.become_master_of(epoch),
            (ClaimWrite::Commit { master: false, .. }, Ok(())) | (ClaimWrite::Repair, Ok(())) => {}
            // The next read of the claims finds the copy stale and writes it again.
            (_, Err(e)) => self.io_failed(e),
        }
    }

    /// Decided master: announce it at once; the node acts as master when that heartbeat lands.
    fn become_master_of(&mut self, epoch: u64) {
        let r = self.running_mut();
        r.role = Role::Announcing { epoch };
        r.next_tick_at = 0;
        let me = self.me;
        self.acted[me.node.index()] = self.acted[me.node.index()].max(epoch);
    }
}
