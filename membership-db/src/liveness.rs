//! Judging other nodes alive or dead from their heartbeats, without synchronised clocks.
//!
//! As OCFS2's o2hb and sanlock do, an observer never compares its clock with the writer's: it
//! notes, on its *own* monotonic clock, when it last saw a node's heartbeat change. A node whose
//! heartbeat has been still for `dead_ms` of the observer's time is dead. Because the writer
//! fences itself after `fence_ms < dead_ms` without a successful write, a node judged dead has
//! stopped acting by then.
//!
//! [`Liveness`] is sans-IO: it is fed `(now, heartbeats)` and answers questions.

use crate::error::CorruptRecord;
use crate::format::{Heartbeat, HeartbeatState, Millis, NodeId};

/// What an observer can say of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeLiveness {
    /// Its heartbeat changed less than `dead_ms` ago.
    Live,
    /// Seen, but not yet watched for `dead_ms`: undecided.
    Unknown,
    /// Running state, but its heartbeat has been still for `dead_ms` (or unreadable that long).
    Dead,
    /// Its heartbeat says it is not running (never started, stopped cleanly, or fenced).
    NotRunning,
}

impl NodeLiveness {
    pub fn is_live(self) -> bool {
        self == NodeLiveness::Live
    }
    /// Dead or not running: safe to act as if it were gone.
    pub fn is_gone(self) -> bool {
        matches!(self, NodeLiveness::Dead | NodeLiveness::NotRunning)
    }
}

#[derive(Debug, Clone)]
struct Observed {
    /// The last readable heartbeat.
    last: Option<Heartbeat>,
    /// When the observer first read `last` (after a change, or at the start of watching).
    since: Millis,
    /// Whether `since` is a change we saw, rather than the start of watching.
    changed: bool,
}

/// Per-node observations of one observer.
#[derive(Debug, Clone)]
pub struct Liveness {
    dead_ms: Millis,
    nodes: Vec<Option<Observed>>,
}

impl Liveness {
    pub fn new(max_nodes: u16, dead_ms: u32) -> Liveness {
        Liveness { dead_ms: dead_ms as Millis, nodes: vec![None; max_nodes as usize] }
    }

    /// Feeds one read of the heartbeat region (of nodes 1 to its length). An unreadable record
    /// changes nothing: a node whose record stays unreadable for `dead_ms` becomes dead.
    pub fn observe(&mut self, now: Millis, heartbeats: Vec<Result<Heartbeat, CorruptRecord>>) {
        for (i, hb) in heartbeats.into_iter().enumerate().take(self.nodes.len()) {
            let slot = &mut self.nodes[i];
            match (slot.as_mut(), hb) {
                (None, Ok(hb)) => *slot = Some(Observed { last: Some(hb), since: now, changed: false }),
                (None, Err(_)) => *slot = Some(Observed { last: None, since: now, changed: false }),
                (Some(obs), Ok(hb)) => {
                    let moved = obs
                        .last
                        .as_ref()
                        .is_none_or(|l| (l.incarnation, l.counter, l.state) != (hb.incarnation, hb.counter, hb.state));
                    if moved {
                        obs.changed = obs.last.is_some();
                        obs.since = now;
                    }
                    obs.last = Some(hb);
                }
                (Some(_), Err(_)) => {}
            }
        }
    }

    /// The last readable heartbeat of `node`.
    pub fn heartbeat(&self, node: NodeId) -> Option<&Heartbeat> {
        self.nodes.get(node.index())?.as_ref()?.last.as_ref()
    }

    pub fn judge(&self, now: Millis, node: NodeId) -> NodeLiveness {
        let Some(Some(obs)) = self.nodes.get(node.index()) else {
            return NodeLiveness::Unknown;
        };
        if let Some(hb) = &obs.last {
            if hb.state != HeartbeatState::Up {
                return NodeLiveness::NotRunning;
            }
        }
        let still_ms = now.saturating_sub(obs.since);
        if still_ms >= self.dead_ms {
            NodeLiveness::Dead
        } else if obs.changed && obs.last.is_some() {
            NodeLiveness::Live
        } else {
            NodeLiveness::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: u16, counter: u64, state: HeartbeatState) -> Result<Heartbeat, CorruptRecord> {
        Ok(Heartbeat { counter, state, incarnation: 1, ..Heartbeat::never(NodeId(node)) })
    }

    #[test]
    fn moving_heartbeat_is_live_and_still_one_dies_after_dead_ms() {
        let mut l = Liveness::new(2, 1000);
        l.observe(0, vec![hb(1, 1, HeartbeatState::Up), hb(2, 7, HeartbeatState::Up)]);
        assert_eq!(l.judge(0, NodeId(1)), NodeLiveness::Unknown);
        l.observe(100, vec![hb(1, 2, HeartbeatState::Up), hb(2, 7, HeartbeatState::Up)]);
        assert_eq!(l.judge(100, NodeId(1)), NodeLiveness::Live);
        assert_eq!(l.judge(999, NodeId(2)), NodeLiveness::Unknown);
        assert_eq!(l.judge(1000, NodeId(2)), NodeLiveness::Dead);
        assert_eq!(l.judge(1099, NodeId(1)), NodeLiveness::Live);
        assert_eq!(l.judge(1100, NodeId(1)), NodeLiveness::Dead);
    }

    #[test]
    fn clean_stop_is_not_running_at_once() {
        let mut l = Liveness::new(1, 1000);
        l.observe(0, vec![hb(1, 1, HeartbeatState::Up)]);
        l.observe(10, vec![hb(1, 2, HeartbeatState::Down)]);
        assert_eq!(l.judge(10, NodeId(1)), NodeLiveness::NotRunning);
    }

    #[test]
    fn unreadable_record_keeps_the_clock_running() {
        let mut l = Liveness::new(1, 1000);
        l.observe(0, vec![hb(1, 1, HeartbeatState::Up)]);
        l.observe(50, vec![hb(1, 2, HeartbeatState::Up)]);
        let bad = Err(CorruptRecord {
            kind: crate::error::RecordKind::Heartbeat,
            offset: 0,
            problem: crate::error::Problem::Blank,
        });
        l.observe(500, vec![bad.clone()]);
        assert_eq!(l.judge(500, NodeId(1)), NodeLiveness::Live);
        l.observe(1050, vec![bad]);
        assert_eq!(l.judge(1050, NodeId(1)), NodeLiveness::Dead);
    }
}
