//! The cluster as `sdc status` shows it, computed from what is on the disk.
//!
//! Status has no running observer behind it, so it judges liveness from two reads of the
//! heartbeat region taken a little over a heartbeat interval apart: a heartbeat that moved
//! between them is live. One that did not is live only if its writer's wall-clock stamp is
//! younger than `dead_ms`, which assumes the hosts' clocks roughly agree (NTP); this is for
//! display only, and the daemons never use wall clocks for decisions.

use crate::claim::ClaimSummary;
use crate::error::CorruptRecord;
use crate::format::*;

/// Everything status reads, as read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub superblock: Superblock,
    pub node_table: Vec<Result<NodeEntry, CorruptRecord>>,
    pub heartbeats_first: Vec<Result<Heartbeat, CorruptRecord>>,
    pub heartbeats: Vec<Result<Heartbeat, CorruptRecord>>,
    pub claims: Vec<Result<Claim, CorruptRecord>>,
    /// The newest valid cluster state, if a master ever wrote one.
    pub cluster_state: Option<ClusterState>,
    /// Cluster state copies that failed their checks.
    pub cluster_state_corrupt: Vec<CorruptRecord>,
    /// Wall clock of the reader when the second heartbeat read was taken.
    pub now_unix_ms: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub name: String,
    /// Membership state, as the master last recorded it.
    pub state: MemberState,
    pub live: bool,
    pub heartbeat_age_ms: Option<u64>,
    pub master_eligible: bool,
    pub address: String,
    pub heartbeat_state: Option<HeartbeatState>,
    pub incarnation: Option<u64>,
    pub host: Option<String>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub uuid: String,
    pub epoch: u64,
    pub master: Option<NodeId>,
    pub nodes: Vec<NodeStatus>,
    /// Transitions in flight.
    pub transitions: Vec<TransitionStatus>,
    /// Records that could not be read, each with its offset.
    #[serde(skip)]
    pub corrupt: Vec<CorruptRecord>,
}

/// A transition in flight, as status shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransitionStatus {
    pub node: NodeId,
    pub kind: TransitionKind,
    /// The name of the layer being notified (its order when the layer table has no name).
    pub layer: String,
    pub order: u32,
    pub barrier: u8,
    /// The nodes taking part (each must acknowledge every position).
    pub participants: Vec<NodeId>,
}

/// Whether a heartbeat shows a running daemon, from two reads (see the module docs).
pub fn heartbeat_live(first: Option<&Heartbeat>, second: &Heartbeat, now_unix_ms: u64, dead_ms: u32) -> bool {
    if second.state != HeartbeatState::Up {
        return false;
    }
    if first.is_some_and(|f| (f.incarnation, f.counter) != (second.incarnation, second.counter)) {
        return true;
    }
    // A stamp in the future beyond dead_ms means the clocks disagree: trust only movement.
    let dead = dead_ms as u64;
    second.written_unix_ms <= now_unix_ms + dead && now_unix_ms.saturating_sub(second.written_unix_ms) < dead
}

/// The membership state of the daemon that runs on `node` now. The master records the state
/// of one incarnation; when a newer incarnation runs (a restart the master has not yet
/// processed), that one is not a member yet.
fn member_state(s: &Snapshot, node: NodeId, hb: Option<&Heartbeat>) -> MemberState {
    let Some(member) = s.cluster_state.as_ref().map(|c| c.member(node)) else { return MemberState::Inactive };
    match hb {
        Some(hb)
            if hb.state == HeartbeatState::Up && hb.incarnation > member.incarnation && member.state.is_member() =>
        {
            MemberState::Inactive
        }
        _ => member.state,
    }
}

impl ClusterStatus {
    pub fn of(s: &Snapshot) -> ClusterStatus {
        let dead_ms = s.superblock.timing.dead_ms;
        let mut corrupt: Vec<CorruptRecord> = Vec::new();
        corrupt.extend(s.node_table.iter().filter_map(|r| r.as_ref().err().cloned()));
        corrupt.extend(s.heartbeats.iter().filter_map(|r| r.as_ref().err().cloned()));
        corrupt.extend(s.claims.iter().filter_map(|r| r.as_ref().err().cloned()));
        corrupt.extend(s.cluster_state_corrupt.iter().cloned());

        let live = |node: NodeId| -> bool {
            let Some(Ok(hb)) = s.heartbeats.get(node.index()) else {
                return false;
            };
            let first = s.heartbeats_first.get(node.index()).and_then(|r| r.as_ref().ok());
            heartbeat_live(first, hb, s.now_unix_ms, dead_ms)
        };

        let summary = ClaimSummary::of(&s.claims);
        let master = summary.current_master().and_then(|(epoch, v)| {
            let hb = s.heartbeats.get(v.node.index())?.as_ref().ok()?;
            (hb.incarnation == v.incarnation && hb.master_epoch == epoch && live(v.node)).then_some(v.node)
        });

        let nodes = s
            .node_table
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .filter(|e| e.present)
            .map(|e| {
                let hb = s.heartbeats.get(e.node.index()).and_then(|r| r.as_ref().ok());
                let ran = hb.filter(|h| h.state != HeartbeatState::Never);
                NodeStatus {
                    node: e.node,
                    name: e.name.clone(),
                    state: member_state(s, e.node, hb),
                    live: live(e.node),
                    heartbeat_age_ms: ran.map(|h| s.now_unix_ms.saturating_sub(h.written_unix_ms)),
                    master_eligible: e.master_eligible,
                    address: e.address.clone(),
                    heartbeat_state: hb.map(|h| h.state),
                    incarnation: ran.map(|h| h.incarnation),
                    host: ran.map(|h| h.host.clone()),
                    pid: ran.map(|h| h.pid),
                }
            })
            .collect();

        let transitions = s
            .cluster_state
            .iter()
            .flat_map(|c| {
                c.transitions.iter().map(|t| TransitionStatus {
                    node: t.subject,
                    kind: t.kind,
                    layer: c
                        .layers
                        .iter()
                        .find(|l| l.order == t.position.order)
                        .map_or_else(|| format!("order {}", t.position.order), |l| l.name.clone()),
                    order: t.position.order,
                    barrier: t.position.barrier,
                    participants: (0..128usize)
                        .filter(|i| t.participants & (1u128 << i) != 0)
                        .map(NodeId::from_index)
                        .collect(),
                })
            })
            .collect();
        ClusterStatus {
            cluster: s.superblock.cluster_name.clone(),
            transitions,
            uuid: s.superblock.uuid_string(),
            epoch: summary.decided.map_or(0, |(e, _)| e),
            master,
            nodes,
            corrupt,
        }
    }
}
