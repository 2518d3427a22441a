//! The cluster as `sdc status` shows it, computed from what is on the disk.
//!
//! Status has no running observer behind it, so it judges liveness from two reads of the
//! heartbeat region taken a little over a heartbeat interval apart: a heartbeat that moved
//! between them is live. One that did not is live only if its writer's wall-clock stamp is
//! younger than `dead_ms`, which assumes the hosts' clocks roughly agree (NTP); this is for
//! display only, and the daemons never use wall clocks for decisions.
//!
//! Every damaged record is named in a warning with its offset, and so is every fallback: a
//! double-buffered record read from its older copy because the newer one is damaged.

use crate::claim::ClaimSummary;
use crate::error::CorruptRecord;
use crate::format::*;

/// Everything status reads, as read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub superblock: Superblock,
    pub superblock_copies: Vec<Result<Superblock, CorruptRecord>>,
    pub stamp: Result<ConfigStamp, CorruptRecord>,
    pub node_table: Vec<Copies<NodeEntry>>,
    pub heartbeats_first: Vec<Result<Heartbeat, CorruptRecord>>,
    pub heartbeats: Vec<Result<Heartbeat, CorruptRecord>>,
    pub claims: Vec<Copies<Claim>>,
    pub cluster_states: Vec<Result<Option<ClusterState>, CorruptRecord>>,
    /// Wall clock of the reader when the second heartbeat read was taken.
    pub now_unix_ms: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub name: String,
    /// Membership state, as the master last recorded it; `None` (shown as unknown) when no
    /// readable copy of the cluster state holds it while one should exist (every copy damaged,
    /// or the master holds a state no copy has).
    pub state: Option<MemberState>,
    pub live: bool,
    pub heartbeat_age_ms: Option<u64>,
    pub master_eligible: bool,
    pub address: String,
    pub heartbeat_state: Option<HeartbeatState>,
    pub incarnation: Option<u64>,
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// The peers this node's running daemon reaches over the interconnect, or `None` when it
    /// runs none (or is not running).
    pub reaches: Option<NodeSet>,
    /// Why the cluster forced this node out (or refused its join), for its current incarnation.
    pub refusal: Option<JoinRefusal>,
}

/// Something the reader must be told: a damaged record (with its offset), a fallback to an
/// older copy, or a disagreement between records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// The damaged record's offset, when one is concerned.
    pub offset: Option<u64>,
    pub text: String,
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
    /// What could not be read, and what was read from an older copy.
    pub warnings: Vec<Warning>,
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

/// The warnings of a double-buffered record's copies, and its newest valid copy.
pub fn read_copies<T: Clone>(
    copies: &Copies<T>,
    seq: impl Fn(&T) -> u64,
    what: &str,
    warnings: &mut Vec<Warning>,
) -> Option<T> {
    match newest_noting(copies, &seq) {
        Ok(Newest { record, fallback: None }) => Some(record),
        Ok(Newest { record, fallback: Some(bad) }) => {
            warnings.push(Warning {
                offset: Some(bad.offset),
                text: format!("{bad}; {what}: using the other copy (sequence {}), which may be older", seq(&record)),
            });
            Some(record)
        }
        Err(bad) => {
            for c in copies.iter().filter_map(|c| c.as_ref().err()) {
                warnings.push(Warning { offset: Some(c.offset), text: format!("{c}; {what}: both copies unreadable") });
            }
            let _ = bad;
            None
        }
    }
}

impl ClusterStatus {
    pub fn of(s: &Snapshot) -> ClusterStatus {
        let dead_ms = s.superblock.timing.dead_ms;
        let mut warnings: Vec<Warning> = Vec::new();
        let note = |r: &CorruptRecord, what: &str, w: &mut Vec<Warning>| {
            w.push(Warning { offset: Some(r.offset), text: format!("{r}; {what}") })
        };
        for bad in s.superblock_copies.iter().filter_map(|c| c.as_ref().err()) {
            note(bad, "using the other superblock copy", &mut warnings);
        }
        if let Err(bad) = &s.stamp {
            note(bad, "running nodes cannot see node table changes until an admin command rewrites it", &mut warnings);
        }
        let table: Vec<Option<NodeEntry>> = s
            .node_table
            .iter()
            .enumerate()
            .map(|(i, c)| read_copies(c, |e| e.seq, &format!("node table entry of node {}", i + 1), &mut warnings))
            .collect();
        for (i, hb) in s.heartbeats.iter().enumerate() {
            if let Err(bad) = hb {
                note(bad, &format!("node {} is shown from its last readable heartbeat, if any", i + 1), &mut warnings);
            }
        }
        let claims: Vec<Option<Claim>> = s
            .claims
            .iter()
            .enumerate()
            .map(|(i, c)| read_copies(c, |c| c.seq, &format!("claim block of node {}", i + 1), &mut warnings))
            .collect();
        for bad in s.cluster_states.iter().filter_map(|c| c.as_ref().err()) {
            note(bad, "not used", &mut warnings);
        }

        let live = |node: NodeId| -> bool {
            let Some(Ok(hb)) = s.heartbeats.get(node.index()) else {
                return false;
            };
            let first = s.heartbeats_first.get(node.index()).and_then(|r| r.as_ref().ok());
            heartbeat_live(first, hb, s.now_unix_ms, dead_ms)
        };
        let hb_of = |node: NodeId| s.heartbeats.get(node.index()).and_then(|r| r.as_ref().ok());

        // The master: the live node acting in the highest epoch.
        let master_hb = NodeId::all(s.superblock.max_nodes)
            .filter_map(|n| hb_of(n).filter(|hb| hb.master_epoch > 0 && live(n)))
            .max_by_key(|hb| hb.master_epoch);
        let summary = ClaimSummary::of_claims(claims.iter().map(Option::as_ref));
        let state =
            s.cluster_states.iter().filter_map(|c| c.as_ref().ok().cloned().flatten()).max_by_key(|s| (s.epoch, s.seq));
        let epoch = summary
            .decided
            .map_or(0, |(e, _)| e)
            .max(master_hb.map_or(0, |hb| hb.master_epoch))
            .max(state.as_ref().map_or(0, |st| st.epoch));
        if let Some(m) = master_hb {
            let advertised = m.cluster_state;
            let held = state.as_ref().map_or((0, 0), |st| (st.epoch, st.seq));
            if !advertised.is_none() && held < advertised.key() {
                let shown = match &state {
                    Some(st) => format!("showing the older epoch {} sequence {}", st.epoch, st.seq),
                    None => "membership states are unknown".into(),
                };
                warnings.push(Warning {
                    offset: None,
                    text: format!(
                        "master node {} holds the cluster state of epoch {} sequence {}, but no readable copy has it; {shown} (the master writes it again at the next change)",
                        m.node, advertised.epoch, advertised.seq
                    ),
                });
            }
        }

        // No readable state: a fresh cluster (every node inactive), or a damaged one (unknown).
        let state_lost = state.is_none()
            && (s.cluster_states.iter().any(|c| c.is_err()) || master_hb.is_some_and(|m| !m.cluster_state.is_none()));
        let member_state = |node: NodeId, hb: Option<&Heartbeat>| -> Option<MemberState> {
            let Some(member) = state.as_ref().map(|c| c.member(node)) else {
                return (!state_lost).then_some(MemberState::Inactive);
            };
            Some(match hb {
                // The master records one incarnation; a newer one running is not a member yet.
                Some(hb)
                    if hb.state == HeartbeatState::Up
                        && hb.incarnation > member.incarnation
                        && member.state.is_member() =>
                {
                    MemberState::Inactive
                }
                _ => member.state,
            })
        };

        let mut nodes = Vec::new();
        for node in NodeId::all(s.superblock.max_nodes) {
            let entry = table[node.index()].as_ref().filter(|e| e.present);
            let hb = hb_of(node);
            let running = hb.is_some_and(|h| h.state == HeartbeatState::Up) && live(node);
            if entry.is_none() && !running {
                continue;
            }
            if entry.is_none() {
                warnings.push(Warning {
                    offset: None,
                    text: format!("node {node} is running but has no readable node table entry; shown without its name (re-add it with sdc node add)"),
                });
            }
            let ran = hb.filter(|h| h.state != HeartbeatState::Never);
            nodes.push(NodeStatus {
                node,
                name: entry.map_or_else(|| "?".into(), |e| e.name.clone()),
                state: member_state(node, hb),
                live: live(node),
                heartbeat_age_ms: ran.map(|h| s.now_unix_ms.saturating_sub(h.written_unix_ms)),
                master_eligible: entry.is_some_and(|e| e.master_eligible),
                address: entry.map_or_else(String::new, |e| e.address.clone()),
                heartbeat_state: hb.map(|h| h.state),
                incarnation: ran.map(|h| h.incarnation),
                host: ran.map(|h| h.host.to_string()),
                pid: ran.map(|h| h.pid),
                reaches: hb.filter(|h| h.state == HeartbeatState::Up && live(node)).and_then(|h| h.reaches),
                refusal: state.as_ref().and_then(|c| c.member(node).refusal),
            });
        }

        let transitions = state
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
                    participants: t.participants.iter().collect(),
                })
            })
            .collect();
        ClusterStatus {
            cluster: s.superblock.cluster_name.clone(),
            transitions,
            uuid: s.superblock.uuid_string(),
            epoch,
            master: master_hb.map(|hb| hb.node),
            nodes,
            warnings,
        }
    }
}
