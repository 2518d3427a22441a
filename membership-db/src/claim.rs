//! The master claim: Dekker's flags generalised to N nodes with ballots, which is Gafni and
//! Lamport's Disk Paxos on one disk.
//!
//! Each node owns one [`Claim`] block (double-buffered on the disk). Each master *epoch* is one
//! consensus instance whose value is a [`ClaimValue`]: the node, and its incarnation, that is
//! master in that epoch. To claim epoch `e`, a candidate:
//!
//! 1. *raises its flag*: writes its block with a ballot `b` higher than any it has seen in `e`
//!    (ballots are unique per node: `b ≡ node (mod BALLOT_STRIDE)`), then reads every block.
//!    It aborts if any block is in a later epoch, or in `e` with a higher ballot; it learns the
//!    decision if a block says `e` is decided. Otherwise it takes the value accepted at the
//!    highest ballot in `e`, or proposes itself when there is none;
//! 2. writes its block with that value accepted at `b`, reads every block again, and aborts on
//!    a later epoch or higher ballot as before. Otherwise the value is chosen;
//! 3. writes its block marked `decided`, so that others learn the outcome without a round.
//!
//! Safety needs no timing: two candidates can never see different values chosen in one epoch,
//! however their reads and writes interleave, and a candidate that stops at any point leaves
//! nothing unsafe behind.
//!
//! # Damaged blocks
//!
//! A decision needs every block, so the caller presents each block as a [`BlockView`]:
//!
//! * [`BlockView::Read`]: both copies valid (the newest is used);
//! * [`BlockView::Unreadable`]: a copy is damaged (or torn by a write in progress) and its owner
//!   may be running: the attempt aborts, and the running owner rewrites its block from memory;
//! * [`BlockView::Lost`]: a copy is damaged and its owner cannot be running (its heartbeat has
//!   been still for `dead_ms`, or says it stopped, or never ran). A stopped owner writes nothing
//!   more (a frozen one fences before it writes again), so its block can be read as empty,
//!   except that a decision may have lived only there: the epochs its owner acted as master in
//!   (`acted_through`, from its heartbeat and the cluster state) are never finished again. An
//!   attempt is therefore only made in an epoch above them ([`ClaimSummary::next_epoch`]), so
//!   no two masters ever share an epoch number. Epochs its owner merely took part in are safe
//!   to finish without it: a value chosen there is also in its chooser's block, which the
//!   attempt reads (Paxos keeps every value accepted at a higher ballot equal to it).
//!
//! A node whose own block was damaged when its daemon started writes a fresh block carrying a
//! `floor`: the epochs its previous incarnation may have been master in (from its heartbeat,
//! which a new master writes before it acts). No epoch at or below a block's floor is finished
//! either, for the same reason.
//!
//! [`Attempt`] is one candidate's attempt, sans-IO: the caller writes what it returns, reads all
//! blocks, and feeds them back.

use crate::format::{Claim, ClaimValue, NodeId};

/// One node's claim block as a candidate sees it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockView {
    Read(Claim),
    /// Damaged, owner stopped: empty, but no epoch up to `acted_through` may be decided.
    Lost {
        acted_through: u64,
    },
    /// Damaged, owner possibly running: no decision without it.
    Unreadable,
}

impl BlockView {
    pub fn claim(&self) -> Option<&Claim> {
        match self {
            BlockView::Read(c) => Some(c),
            _ => None,
        }
    }
}

/// Ballots of node `n` are `k * BALLOT_STRIDE + n`: unique per node for any node id.
pub const BALLOT_STRIDE: u64 = 256;
const _: () = assert!(crate::format::NODES_MAX as u64 <= BALLOT_STRIDE);

/// The smallest ballot of `node` above `above`.
pub fn ballot_above(node: NodeId, above: u64) -> u64 {
    (above / BALLOT_STRIDE + 1) * BALLOT_STRIDE + node.0 as u64
}

/// Why an attempt stopped without a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    /// A block could not be read: no decision without every block.
    Unreadable(NodeId),
    /// A lost block's owner acted as master in this epoch or a later one: it is not finished.
    LostDecision { node: NodeId, acted_through: u64 },
    /// Some node is in a later epoch: this one is over.
    NewerEpoch { node: NodeId, epoch: u64 },
    /// Another candidate started a higher ballot in this epoch.
    HigherBallot { node: NodeId, ballot: u64 },
    /// Our own block holds what we did not write: another daemon writes it.
    OwnBlockOverwritten,
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::Unreadable(n) => write!(f, "the claim block of node {n} is unreadable"),
            Abort::LostDecision { node, acted_through } => write!(
                f,
                "the damaged claim block of node {node} may hold the decision of epoch {acted_through}, which is not finished again"
            ),
            Abort::NewerEpoch { node, epoch } => {
                write!(f, "node {node} is already in epoch {epoch}")
            }
            Abort::HigherBallot { node, ballot } => {
                write!(f, "node {node} started a higher ballot {ballot}")
            }
            Abort::OwnBlockOverwritten => {
                write!(f, "our own claim block was overwritten by another writer")
            }
        }
    }
}

/// What to do after feeding an attempt the blocks it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this (own) block, then read all blocks and call [`Attempt::on_read`] again.
    Write(Claim),
    /// The epoch's value is chosen. `commit` is the own block to write marking it decided,
    /// when this attempt chose it (rather than learning it from another block).
    Decided {
        epoch: u64,
        value: ClaimValue,
        commit: Option<Claim>,
    },
    Aborted(Abort),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Flag raised (ballot written), reading.
    Prepare,
    /// Value accepted at our ballot, reading.
    Accept(ClaimValue),
    Over,
}

/// One candidate's attempt to decide one epoch.
#[derive(Debug, Clone)]
pub struct Attempt {
    me: ClaimValue,
    epoch: u64,
    ballot: u64,
    phase: Phase,
    /// The last own block this attempt wrote.
    written: Claim,
}

/// The next own block: `seq` one above `own`'s, so it goes to the other copy.
fn next_block(
    own: &Claim,
    me: ClaimValue,
    epoch: u64,
    mbal: u64,
    bal: u64,
    value: Option<ClaimValue>,
    decided: bool,
) -> Claim {
    Claim {
        node: me.node,
        seq: own.seq + 1,
        writer_incarnation: me.incarnation,
        epoch,
        mbal,
        bal,
        value,
        decided,
        floor: own.floor,
    }
}

impl Attempt {
    /// Starts an attempt for `epoch`. `own` is our block as last written or read; `seen` are the
    /// blocks read most recently (to pick a ballot above theirs). Returns the block to write.
    pub fn start(me: ClaimValue, own: &Claim, epoch: u64, seen: &[BlockView]) -> (Attempt, Claim) {
        assert!(epoch >= own.epoch, "a claim never goes back to an earlier epoch");
        let highest = seen
            .iter()
            .filter_map(BlockView::claim)
            .chain(std::iter::once(own))
            .filter(|c| c.epoch == epoch)
            .map(|c| c.mbal)
            .max()
            .unwrap_or(0);
        let ballot = ballot_above(me.node, highest);
        // Our own accepted value in this epoch must survive the new ballot (Disk Paxos keeps
        // `bal` and `inp` when raising `mbal`).
        let (bal, value) = if own.epoch == epoch { (own.bal, own.value) } else { (0, None) };
        let block = next_block(own, me, epoch, ballot, bal, value, false);
        let attempt = Attempt { me, epoch, ballot, phase: Phase::Prepare, written: block.clone() };
        (attempt, block)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn ballot(&self) -> u64 {
        self.ballot
    }

    /// Feeds every node's block, read after our last write completed.
    pub fn on_read(&mut self, blocks: &[BlockView]) -> Step {
        assert!(self.phase != Phase::Over, "attempt fed after it ended");
        let step = self.evaluate(blocks);
        match &step {
            Step::Write(block) => {
                self.phase = Phase::Accept(block.value.expect("phase 2 block carries a value"));
                self.written = block.clone();
            }
            Step::Decided { .. } | Step::Aborted(_) => self.phase = Phase::Over,
        }
        step
    }

    fn evaluate(&self, blocks: &[BlockView]) -> Step {
        let mut best: Option<(u64, ClaimValue)> = None;
        for (i, block) in blocks.iter().enumerate() {
            let node = NodeId::from_index(i);
            let b = match block {
                BlockView::Read(b) if b.floor >= self.epoch => {
                    return Step::Aborted(Abort::LostDecision { node, acted_through: b.floor });
                }
                BlockView::Read(b) => b,
                BlockView::Unreadable => return Step::Aborted(Abort::Unreadable(node)),
                BlockView::Lost { acted_through } if *acted_through >= self.epoch => {
                    return Step::Aborted(Abort::LostDecision { node, acted_through: *acted_through });
                }
                BlockView::Lost { .. } => continue, // empty in this epoch
            };
            if node == self.me.node {
                if *b != self.written {
                    return Step::Aborted(Abort::OwnBlockOverwritten);
                }
                continue;
            }
            if b.epoch > self.epoch {
                return Step::Aborted(Abort::NewerEpoch { node, epoch: b.epoch });
            }
            if b.epoch < self.epoch {
                continue; // an earlier instance: counts as an empty block in this one
            }
            if b.decided {
                let value = b.value.expect("decided block has a value (checked by decode)");
                return Step::Decided { epoch: self.epoch, value, commit: None };
            }
            if b.mbal > self.ballot {
                return Step::Aborted(Abort::HigherBallot { node, ballot: b.mbal });
            }
            if let Some(v) = b.value {
                if best.is_none_or(|(bal, _)| b.bal > bal) {
                    best = Some((b.bal, v));
                }
            }
        }
        let own = &self.written;
        match self.phase {
            Phase::Prepare => {
                if let Some(v) = own.value {
                    if best.is_none_or(|(bal, _)| own.bal > bal) {
                        best = Some((own.bal, v));
                    }
                }
                let value = best.map(|(_, v)| v).unwrap_or(self.me);
                #[cfg(feature = "planted-bugs")]
                if crate::planted::active(crate::planted::Bug::ClaimSkipsSecondRead) {
                    let commit = next_block(own, self.me, self.epoch, self.ballot, self.ballot, Some(value), true);
                    return Step::Decided { epoch: self.epoch, value, commit: Some(commit) };
                }
                Step::Write(next_block(own, self.me, self.epoch, self.ballot, self.ballot, Some(value), false))
            }
            Phase::Accept(value) => Step::Decided {
                epoch: self.epoch,
                value,
                commit: Some(next_block(own, self.me, self.epoch, self.ballot, self.ballot, Some(value), true)),
            },
            Phase::Over => unreachable!("checked in on_read"),
        }
    }
}

/// What the claim blocks say about the epochs, for deciding whether to claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimSummary {
    /// The highest epoch any readable block is in.
    pub highest_epoch: u64,
    /// The highest epoch known decided, and its value.
    pub decided: Option<(u64, ClaimValue)>,
    /// Blocks that could not be read, of owners that may be running.
    pub unreadable: Vec<NodeId>,
    /// The highest epoch a lost block's owner acted as master in, or a block's floor: never
    /// finished again.
    pub lost_floor: u64,
}

impl ClaimSummary {
    pub fn of(blocks: &[BlockView]) -> ClaimSummary {
        let mut s = ClaimSummary::default();
        for (i, block) in blocks.iter().enumerate() {
            match block {
                BlockView::Read(b) => {
                    s.lost_floor = s.lost_floor.max(b.floor);
                    s.highest_epoch = s.highest_epoch.max(b.epoch);
                    if b.decided && s.decided.is_none_or(|(e, _)| b.epoch > e) {
                        s.decided = Some((b.epoch, b.value.expect("decided block has a value")));
                    }
                }
                BlockView::Lost { acted_through } => s.lost_floor = s.lost_floor.max(*acted_through),
                BlockView::Unreadable => s.unreadable.push(NodeId::from_index(i)),
            }
        }
        s
    }

    /// The summary of blocks read with both copies valid (status, tests).
    pub fn of_claims<'a>(claims: impl IntoIterator<Item = Option<&'a Claim>>) -> ClaimSummary {
        let views: Vec<BlockView> =
            claims.into_iter().map(|c| c.map_or(BlockView::Unreadable, |c| BlockView::Read(c.clone()))).collect();
        ClaimSummary::of(&views)
    }

    /// The master of the highest epoch, when that epoch is decided.
    pub fn current_master(&self) -> Option<(u64, ClaimValue)> {
        self.decided.filter(|(e, _)| *e == self.highest_epoch)
    }

    /// The epoch the next attempt is for: an undecided epoch in progress must be finished
    /// (a candidate there may already believe it won), otherwise the one after the decided one;
    /// and never an epoch a lost block's owner acted as master in.
    pub fn next_epoch(&self) -> u64 {
        let natural = match self.decided {
            Some((e, _)) if e == self.highest_epoch => e + 1,
            _ => self.highest_epoch.max(1),
        };
        natural.max(self.lost_floor + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use std::collections::HashMap;

    enum State {
        Idle,
        /// A write not yet performed; then a read of every block.
        Write {
            block: Claim,
            then_read: bool,
        },
        /// Reading block by block, in a random order, interleaved with everyone else.
        Read {
            got: Vec<Option<Claim>>,
            left: Vec<usize>,
        },
        Crashed,
    }

    struct Candidate {
        me: ClaimValue,
        own: Claim,
        attempt: Option<Attempt>,
        state: State,
        last_read: Vec<BlockView>,
        attempts_left: u32,
    }

    struct World {
        blocks: Vec<Claim>,
        /// Every value any candidate saw chosen, per epoch.
        decided: HashMap<u64, ClaimValue>,
        decisions: usize,
    }

    impl World {
        fn record(&mut self, seed: u64, epoch: u64, value: ClaimValue) {
            let first = *self.decided.entry(epoch).or_insert(value);
            assert_eq!(first, value, "seed {seed}: epoch {epoch} decided twice: {first:?} and {value:?}");
            self.decisions += 1;
        }
    }

    fn start_read(n: usize, rng: &mut SplitMix64) -> State {
        let mut left: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            left.swap(i, rng.below(i as u64 + 1) as usize);
        }
        State::Read { got: vec![None; n], left }
    }

    /// Runs one schedule of `n` candidates; returns how many decisions were seen.
    fn run_schedule(seed: u64, n: usize) -> usize {
        let mut rng = SplitMix64::new(seed);
        let mut world = World {
            blocks: (0..n).map(|i| Claim::initial(NodeId::from_index(i), 1)).collect(),
            decided: HashMap::new(),
            decisions: 0,
        };
        let mut cands: Vec<Candidate> = (0..n)
            .map(|i| Candidate {
                me: ClaimValue { node: NodeId::from_index(i), incarnation: 1 },
                own: world.blocks[i].clone(),
                attempt: None,
                state: State::Idle,
                last_read: world.blocks.iter().cloned().map(BlockView::Read).collect(),
                attempts_left: 4,
            })
            .collect();

        for _step in 0..4000 {
            let i = rng.below(n as u64) as usize;
            let c = &mut cands[i];
            // Crash at any point; an unperformed write may or may not have reached the disk.
            if !matches!(c.state, State::Crashed) && rng.chance(8) {
                if let State::Write { block, .. } = &c.state {
                    if rng.chance(500) {
                        world.blocks[i] = block.clone();
                    }
                }
                c.state = State::Crashed;
                c.attempt = None;
                continue;
            }
            match std::mem::replace(&mut c.state, State::Idle) {
                State::Crashed => {
                    if rng.chance(100) {
                        // Restart: a new incarnation that knows only what its block says.
                        c.me.incarnation += 1;
                        c.own = world.blocks[i].clone();
                        c.attempts_left = 3;
                        c.state = start_read(n, &mut rng);
                    } else {
                        c.state = State::Crashed;
                    }
                }
                State::Idle => {
                    if c.attempts_left == 0 {
                        continue;
                    }
                    c.attempts_left -= 1;
                    let summary = ClaimSummary::of(&c.last_read);
                    let epoch = summary.next_epoch().max(c.own.epoch);
                    let (attempt, block) = Attempt::start(c.me, &c.own, epoch, &c.last_read);
                    c.attempt = Some(attempt);
                    c.state = State::Write { block, then_read: true };
                }
                State::Write { block, then_read } => {
                    world.blocks[i] = block.clone();
                    c.own = block;
                    c.state = if then_read { start_read(n, &mut rng) } else { State::Idle };
                }
                State::Read { mut got, mut left } => {
                    let j = left.pop().expect("reading");
                    got[j] = Some(world.blocks[j].clone());
                    if !left.is_empty() {
                        c.state = State::Read { got, left };
                        continue;
                    }
                    let blocks: Vec<BlockView> = got.into_iter().map(|b| BlockView::Read(b.unwrap())).collect();
                    c.last_read = blocks.clone();
                    let Some(attempt) = c.attempt.as_mut() else {
                        continue; // a survey read after a restart
                    };
                    match attempt.on_read(&blocks) {
                        Step::Write(block) => c.state = State::Write { block, then_read: true },
                        Step::Decided { epoch, value, commit } => {
                            c.attempt = None;
                            world.record(seed, epoch, value);
                            if let Some(block) = commit {
                                c.state = State::Write { block, then_read: false };
                            }
                        }
                        Step::Aborted(Abort::OwnBlockOverwritten) => {
                            panic!("seed {seed}: nobody else writes our block")
                        }
                        Step::Aborted(_) => c.attempt = None,
                    }
                }
            }
        }
        world.decisions
    }

    /// Exactly one value per epoch however N candidates' block reads and writes interleave,
    /// with candidates that crash mid-claim and restart with new incarnations.
    #[test]
    fn one_value_per_epoch_under_arbitrary_interleavings() {
        let seeds: u64 = std::env::var("CLAIM_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(12_000);
        let mut decisions = 0;
        for seed in 0..seeds {
            let n = 2 + (seed % 4) as usize;
            decisions += run_schedule(seed, n);
        }
        // The schedules must actually reach decisions, or the test proves nothing.
        assert!(decisions as u64 > seeds, "only {decisions} decisions in {seeds} schedules");
    }

    #[test]
    fn lone_candidate_decides_itself_in_two_rounds() {
        let me = ClaimValue { node: NodeId(2), incarnation: 7 };
        let mut blocks: Vec<BlockView> = (1..=3).map(|n| BlockView::Read(Claim::initial(NodeId(n), 1))).collect();
        let own = blocks[1].claim().unwrap().clone();
        let (mut a, b1) = Attempt::start(me, &own, 1, &blocks);
        assert_eq!(b1.mbal, ballot_above(NodeId(2), 0));
        blocks[1] = BlockView::Read(b1);
        let Step::Write(b2) = a.on_read(&blocks) else { panic!("phase 2 expected") };
        assert_eq!(b2.value, Some(me));
        blocks[1] = BlockView::Read(b2);
        let Step::Decided { epoch: 1, value, commit: Some(c) } = a.on_read(&blocks) else {
            panic!("decision expected")
        };
        assert_eq!(value, me);
        assert!(c.decided);
    }

    #[test]
    fn candidate_adopts_a_value_accepted_at_a_higher_ballot() {
        let other = ClaimValue { node: NodeId(1), incarnation: 3 };
        let me = ClaimValue { node: NodeId(2), incarnation: 1 };
        let accepted = Claim { epoch: 4, mbal: 257, bal: 257, value: Some(other), ..Claim::initial(NodeId(1), 3) };
        let mut blocks = vec![BlockView::Read(accepted), BlockView::Read(Claim::initial(NodeId(2), 1))];
        let (mut a, b1) = Attempt::start(me, &Claim::initial(NodeId(2), 1), 4, &blocks);
        assert!(b1.mbal > 257);
        blocks[1] = BlockView::Read(b1);
        let Step::Write(b2) = a.on_read(&blocks) else { panic!() };
        assert_eq!(b2.value, Some(other), "a possibly chosen value must be kept");
    }

    #[test]
    fn unreadable_block_or_newer_epoch_aborts() {
        let me = ClaimValue { node: NodeId(1), incarnation: 1 };
        let own = Claim::initial(NodeId(1), 1);
        let mut blocks = vec![BlockView::Read(own.clone()), BlockView::Unreadable];
        let (mut a, b1) = Attempt::start(me, &own, 1, &blocks);
        blocks[0] = BlockView::Read(b1.clone());
        assert_eq!(a.on_read(&blocks), Step::Aborted(Abort::Unreadable(NodeId(2))));
        let (mut a, b1) = Attempt::start(me, &own, 1, &blocks);
        blocks[0] = BlockView::Read(b1);
        blocks[1] = BlockView::Read(Claim { epoch: 2, ..Claim::initial(NodeId(2), 1) });
        assert_eq!(a.on_read(&blocks), Step::Aborted(Abort::NewerEpoch { node: NodeId(2), epoch: 2 }));
    }

    /// A lost block (owner stopped) reads as empty, but the epochs its owner was master of are
    /// skipped: the next attempt goes above them, and one in them aborts.
    #[test]
    fn a_lost_block_is_empty_above_the_epochs_its_owner_acted_in() {
        let me = ClaimValue { node: NodeId(1), incarnation: 1 };
        let own = Claim { epoch: 3, ..Claim::initial(NodeId(1), 1) };
        let mut blocks = vec![BlockView::Read(own.clone()), BlockView::Lost { acted_through: 5 }];
        let summary = ClaimSummary::of(&blocks);
        assert!(summary.unreadable.is_empty());
        assert_eq!(summary.next_epoch(), 6, "epoch 5 may have been decided in the lost block");
        let (mut a, b1) = Attempt::start(me, &own, 5, &blocks);
        blocks[0] = BlockView::Read(b1);
        assert_eq!(a.on_read(&blocks), Step::Aborted(Abort::LostDecision { node: NodeId(2), acted_through: 5 }));
        let (mut a, b1) = Attempt::start(me, &own, 6, &blocks);
        blocks[0] = BlockView::Read(b1);
        let Step::Write(b2) = a.on_read(&blocks) else { panic!("phase 2 expected") };
        blocks[0] = BlockView::Read(b2);
        assert!(matches!(a.on_read(&blocks), Step::Decided { epoch: 6, value, .. } if value == me));
    }
}
