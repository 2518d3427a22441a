//! The DLM in the daemon: a thin driver around [`DlmCore`](crate::DlmCore).
//!
//! * [`DlmNode`]: runs the core on one thread. Its inputs are the membership manager's
//!   notifications (through the layer's [`manager::api::Subsystem`]), frames from the other
//!   nodes (through an [`interconnect::Interconnect`], started at the first notification,
//!   when this daemon's incarnation is known), client requests (through [`Dlm`]) and time
//!   (the core's next deadline bounds every wait). After every input it sends what the core
//!   wants sent (one payload per peer, see [`Outbox`]), hands client events to their clients
//!   and acknowledges the barriers the core is done with.
//! * [`Dlm`] and [`DlmClient`]: the in-process client API of the layers above (the virtual
//!   disk manager, the shared file system, the registration and launch service).
//! * [`control`]: the node's control socket, through which `sdc lock` and `sdc locks` (and any
//!   out-of-process client) reach the lock manager.
//! * [`barrier_of`]: what a notification means to the DLM, with the rule for its members.
//!
//! # Example
//!
//! ```no_run
//! use dlm::driver::{ClientError, Dlm};
//! use dlm::{Flags, Mode, ResName};
//! # fn example(dlm: Dlm) -> Result<(), ClientError> {
//! // `dlm` comes from `DlmNode::dlm()`; every user takes its own client.
//! let client = dlm.client();
//! let res = ResName::new("vdm", b"volume-7").map_err(ClientError::Dlm)?;
//! let flags = Flags { timeout_ms: Some(5_000), ..Flags::default() };
//! let (lock, grant) = client.lock(res, Mode::Ex, flags)?; // blocks until granted (or 5 s)
//! assert!(grant.mode == Mode::Ex);
//! // ... the volume is ours, cluster-wide ...
//! client.unlock(lock, Some([7; 32]))?; // write the value block as the EX lock goes
//! // Blocking callbacks (another node wants the resource) arrive on `client.events()`.
//! drop(client); // any lock it still held is released
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! ```text
//! mod.rs      barrier_of, DlmConfig
//! outbox.rs   sans-IO: frames batched per peer
//! node.rs     DlmNode: the event loop (crossbeam select) and its I/O
//! client.rs   Dlm, DlmClient, DlmEvent, ClientError, Snapshot
//! control.rs  the control socket: paths, protocol (newline-delimited JSON), server, client
//! ```

mod client;
pub mod control;
mod node;
mod outbox;

pub use client::{ClientError, Dlm, DlmClient, DlmEvent, MemberView, Snapshot};
pub use node::{AddressBook, DlmNode, DlmStartError, LogFn};
pub use outbox::{Outbox, BATCH_BYTES_MAX};

use crate::core::{Barrier, Phase};
use manager::participant::{Notification, ViewMember};
use membership_db::format::{NodeId, TransitionKind};
use std::net::SocketAddr;

/// How to run the DLM of one node.
#[derive(Clone)]
pub struct DlmConfig {
    pub node: NodeId,
    /// The DLM layer's order (`manager::order::DLM`).
    pub order: u32,
    pub cluster_uuid: [u8; 16],
    /// The interconnect's shared secret (the cluster key on the disk).
    pub cluster_key: [u8; 32],
    /// Where the interconnect listens: this node's `address` in the node table, resolved.
    pub listen: SocketAddr,
    /// The interconnect sends something at least this often on an idle link.
    pub keepalive_ms: u64,
    /// A link silent this long is down (`link_timeout_ms`); above `keepalive_ms`.
    pub link_timeout_ms: u64,
}

impl std::fmt::Debug for DlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlmConfig")
            .field("node", &self.node)
            .field("order", &self.order)
            .field("listen", &self.listen)
            .field("keepalive_ms", &self.keepalive_ms)
            .field("link_timeout_ms", &self.link_timeout_ms)
            .finish_non_exhaustive()
    }
}

/// The DLM layer's membership changes at its rebuild barrier (the second of three): every
/// member has stopped first.
pub const MEMBERSHIP_BARRIER: u8 = 1;

/// Whether `v` is a member of the lock manager at this moment, as seen from a notification at
/// any layer (the DLM layer is at `dlm_order`): [`ViewMember::member_of`] at the rebuild
/// barrier. A joining node is a member from its join's rebuild on; a node leaving gracefully
/// until its leave's rebuild; a node forced out until its forced leave's rebuild, which comes
/// only once it is known stopped (until then it may still hold locks the others must not
/// take), unless its aborted join never reached the DLM.
pub fn is_dlm_member(v: &ViewMember, dlm_order: u32) -> bool {
    v.member_of(dlm_order, MEMBERSHIP_BARRIER)
}

/// What a notification of the DLM layer means to the core: `None` when it is not one (another
/// order, or a barrier beyond the DLM's three). Its `key` is 0: the driver sets its own handle
/// for the acknowledgement. `members` follows [`is_dlm_member`] over the notification's view, sorted,
/// with each member's incarnation; `leaving` is the subject of a graceful leave.
pub fn barrier_of(n: &Notification, dlm_order: u32) -> Option<Barrier> {
    if n.position.order != dlm_order {
        return None;
    }
    let phase = Phase::of_barrier(n.position.barrier)?;
    let mut members: Vec<(NodeId, u64)> =
        n.view.iter().filter(|v| is_dlm_member(v, dlm_order)).map(|v| (v.node, v.incarnation)).collect();
    members.sort();
    members.dedup_by_key(|(node, _)| *node);
    Some(Barrier {
        key: 0,
        transition: n.transition,
        phase,
        subject: n.subject,
        members,
        view: n.state,
        leaving: (n.kind == TransitionKind::Leave).then_some(n.subject),
    })
}

/// The notification of barrier `barrier` of `subject`'s join at the DLM layer (`order`), in a
/// cluster where `joined` are members: how tests and benchmarks take in-process `DlmNode`s
/// through a join without a membership manager (every node must answer each barrier before
/// the next is delivered, as the manager's barriers are cluster-wide).
pub fn join_notification(order: u32, subject: u16, joined: &[u16], barrier: u8) -> Notification {
    use manager::participant::InFlight;
    use membership_db::format::{MemberState, Position};
    let mut view: Vec<ViewMember> = joined
        .iter()
        .map(|&n| ViewMember { node: NodeId(n), state: MemberState::Joined, incarnation: 1, transition: None })
        .collect();
    let position = Position { order, barrier };
    let transition = Some(InFlight { kind: TransitionKind::Join, position, upper: None });
    view.push(ViewMember { node: NodeId(subject), state: MemberState::Joining, incarnation: 1, transition });
    Notification {
        transition: subject as u64,
        subject: NodeId(subject),
        subject_incarnation: 1,
        kind: TransitionKind::Join,
        position,
        layer: "dlm".into(),
        state: (1, subject as u64 * 10 + barrier as u64),
        view,
    }
}

/// The line a layer logs for a notification, in the format of `sdc join`'s rehearsal layers
/// (`sdc_procs::procs::LayerNote` parses it).
pub fn notification_line(n: &Notification, barriers: u8) -> String {
    let view: Vec<String> = n.view.iter().map(|v| format!("{}:{}", v.node, v.state.name())).collect();
    format!(
        "layer {}: {} of node {} (incarnation {}), barrier {} of {}; view [{}]",
        n.layer,
        n.kind.name(),
        n.subject,
        n.subject_incarnation,
        n.position.barrier + 1,
        barriers,
        view.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use manager::participant::InFlight;
    use membership_db::format::{MemberState, Position};

    const DLM: u32 = 10;

    fn v(node: u16, state: MemberState, inc: u64, t: Option<(TransitionKind, u32, u8)>) -> ViewMember {
        ViewMember {
            node: NodeId(node),
            state,
            incarnation: inc,
            transition: t.map(|(kind, order, barrier)| InFlight {
                kind,
                position: Position { order, barrier },
                upper: None,
            }),
        }
    }

    fn note(kind: TransitionKind, subject: u16, order: u32, barrier: u8, view: Vec<ViewMember>) -> Notification {
        Notification {
            transition: 77,
            subject: NodeId(subject),
            subject_incarnation: 3,
            kind,
            position: Position { order, barrier },
            layer: "dlm".into(),
            state: (1, 1),
            view,
        }
    }

    use MemberState::*;
    use TransitionKind::*;

    #[test]
    fn membership_rule_table() {
        let cases = [
            // (view member, member?)
            (v(1, Joined, 1, None), true),
            (v(1, Joining, 1, None), false),
            (v(1, Leaving, 1, None), false),
            (v(1, Inactive, 1, None), false),
            (v(1, Joining, 1, Some((Join, 0, 0))), false),
            (v(1, Joining, 1, Some((Join, DLM, 0))), false),
            (v(1, Joining, 1, Some((Join, DLM, 1))), true),
            (v(1, Joining, 1, Some((Join, DLM, 2))), true),
            (v(1, Joining, 1, Some((Join, 20, 0))), true),
            (v(1, Leaving, 1, Some((Leave, 40, 0))), true),
            (v(1, Leaving, 1, Some((Leave, DLM, 0))), true),
            (v(1, Leaving, 1, Some((Leave, DLM, 1))), false),
            (v(1, Leaving, 1, Some((Leave, DLM, 2))), false),
            (v(1, Leaving, 1, Some((Leave, 0, 0))), false),
            // Forced out: a member until known stopped (its forced leave waits at order 0, then
            // runs bottom-up), not once the DLM has rebuilt without it.
            (v(1, ForcedLeaving, 1, Some((ForcedLeave, 0, 0))), true),
            (v(1, ForcedLeaving, 1, Some((ForcedLeave, DLM, 0))), true),
            (v(1, ForcedLeaving, 1, Some((ForcedLeave, DLM, 1))), false),
            (v(1, ForcedLeaving, 1, Some((ForcedLeave, 40, 0))), false),
        ];
        for (member, want) in cases {
            assert_eq!(is_dlm_member(&member, DLM), want, "{member:?}");
        }
    }

    #[test]
    fn a_join_barrier_has_its_phase_members_and_incarnations() {
        let view = vec![
            v(3, Joining, 9, Some((Join, DLM, 1))),
            v(1, Joined, 4, None),
            v(2, ForcedLeaving, 5, Some((ForcedLeave, DLM, 1))),
        ];
        let b = barrier_of(&note(Join, 3, DLM, 1, view), DLM).unwrap();
        assert_eq!(b.transition, 77);
        assert_eq!(b.phase, Phase::Rebuild);
        assert_eq!(b.subject, NodeId(3));
        assert_eq!(b.members, vec![(NodeId(1), 4), (NodeId(3), 9)]);
        assert_eq!(b.leaving, None);
    }

    #[test]
    fn a_leave_names_its_subject_as_leaving_and_drops_it_at_rebuild() {
        let view = |barrier| vec![v(1, Joined, 4, None), v(2, Leaving, 6, Some((Leave, DLM, barrier)))];
        let stop = barrier_of(&note(Leave, 2, DLM, 0, view(0)), DLM).unwrap();
        assert_eq!((stop.phase, stop.leaving), (Phase::Stop, Some(NodeId(2))));
        assert_eq!(stop.members, vec![(NodeId(1), 4), (NodeId(2), 6)]);
        let rebuild = barrier_of(&note(Leave, 2, DLM, 1, view(1)), DLM).unwrap();
        assert_eq!((rebuild.phase, rebuild.leaving), (Phase::Rebuild, Some(NodeId(2))));
        assert_eq!(rebuild.members, vec![(NodeId(1), 4)]);
        let resume = barrier_of(&note(Leave, 2, DLM, 2, view(2)), DLM).unwrap();
        assert_eq!(resume.phase, Phase::Resume);
    }

    #[test]
    fn a_forced_leave_is_never_leaving_and_its_subject_no_member_from_its_rebuild() {
        let view = vec![v(1, Joined, 4, None), v(2, ForcedLeaving, 6, Some((ForcedLeave, DLM, 1)))];
        let b = barrier_of(&note(ForcedLeave, 2, DLM, 1, view), DLM).unwrap();
        assert_eq!(b.leaving, None);
        assert_eq!(b.members, vec![(NodeId(1), 4)]);
    }

    #[test]
    fn other_layers_and_extra_barriers_are_not_dlm_barriers() {
        assert!(barrier_of(&note(Join, 1, 20, 0, vec![]), DLM).is_none());
        assert!(barrier_of(&note(Join, 1, DLM, 3, vec![]), DLM).is_none());
    }

    #[test]
    fn the_log_line_parses_as_a_layer_note() {
        let n = note(Join, 3, DLM, 1, vec![v(3, Joining, 9, Some((Join, DLM, 1)))]);
        assert_eq!(
            notification_line(&n, 3),
            "layer dlm: join of node 3 (incarnation 3), barrier 2 of 3; view [3:joining]"
        );
    }
}
