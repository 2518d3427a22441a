//! The order in which a transition visits the layers.
//!
//! Joins and forced leaves go bottom-up (lower order first), graceful leaves top-down; within
//! a layer, barriers go 0, 1, ... A layer with no barriers for a kind is skipped. `upper`
//! bounds the layers taken part: a forced leave that aborts a graceful join runs only up to the
//! layer the join reached.
//!
//! The position of a transition is stored as (order, barrier), not as an index, so a layer
//! added to the table while a transition is in flight simply takes its place in the sequence.

use membership_db::format::{LayerSpec, Position, TransitionKind};

/// Sort key of a position in the sequence of `kind`.
fn key(kind: TransitionKind, p: Position) -> (u32, u8) {
    match kind {
        TransitionKind::Join | TransitionKind::ForcedLeave => (p.order, p.barrier),
        TransitionKind::Leave => (u32::MAX - p.order, p.barrier),
    }
}

/// Every position of a transition, in notification order.
pub fn sequence(layers: &[LayerSpec], kind: TransitionKind, upper: Option<u32>) -> Vec<Position> {
    let mut v: Vec<Position> = layers
        .iter()
        .filter(|l| upper.is_none_or(|u| l.order <= u))
        .flat_map(|l| (0..l.barriers.of(kind)).map(move |barrier| Position { order: l.order, barrier }))
        .collect();
    v.sort_by_key(|p| key(kind, *p));
    v
}

/// The first position, or `None` when no layer takes part (the transition completes at once).
pub fn first(layers: &[LayerSpec], kind: TransitionKind, upper: Option<u32>) -> Option<Position> {
    sequence(layers, kind, upper).into_iter().next()
}

/// The position after `current`, or `None` when the transition is complete.
pub fn next(layers: &[LayerSpec], kind: TransitionKind, upper: Option<u32>, current: Position) -> Option<Position> {
    sequence(layers, kind, upper).into_iter().find(|p| key(kind, *p) > key(kind, current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership_db::format::Barriers;

    fn layer(order: u32, join: u8, leave: u8, forced_leave: u8) -> LayerSpec {
        LayerSpec { order, name: format!("l{order}"), barriers: Barriers { join, leave, forced_leave } }
    }
    fn p(order: u32, barrier: u8) -> Position {
        Position { order, barrier }
    }

    #[test]
    fn joins_go_up_leaves_go_down_barriers_in_order() {
        let t = [layer(30, 1, 1, 1), layer(10, 2, 1, 1), layer(20, 0, 2, 1)];
        assert_eq!(sequence(&t, TransitionKind::Join, None), [p(10, 0), p(10, 1), p(30, 0)]);
        assert_eq!(sequence(&t, TransitionKind::Leave, None), [p(30, 0), p(20, 0), p(20, 1), p(10, 0)]);
        assert_eq!(sequence(&t, TransitionKind::ForcedLeave, Some(20)), [p(10, 0), p(20, 0)]);
        assert_eq!(next(&t, TransitionKind::Leave, None, p(20, 1)), Some(p(10, 0)));
        assert_eq!(next(&t, TransitionKind::Join, None, p(30, 0)), None);
        assert_eq!(first(&[], TransitionKind::Join, None), None);
    }

    #[test]
    fn a_layer_added_mid_transition_takes_its_place() {
        let mut t = vec![layer(10, 1, 1, 1), layer(30, 1, 1, 1)];
        let at = p(10, 0);
        t.push(layer(20, 1, 1, 1));
        assert_eq!(next(&t, TransitionKind::Join, None, at), Some(p(20, 0)));
    }
}
