//! The disk arbitrates a broken interconnect (DESIGN section 11, the seed's Fig. 13), sans-IO.
//!
//! Each node publishes in its heartbeat the peers it reaches over the interconnect (or that it
//! runs none). On the master, [`LinkJudge`] looks at the joined nodes that run one: a pair
//! (a, b) is *broken* when a does not list b or b does not list a. A pair broken continuously
//! for `link_timeout_ms` of the master's clock (one that heals resets its timer) is *expired*.
//! When some pair has expired, the master keeps the largest group of mutually reachable nodes
//! that includes itself, ties going to the group with the lowest ids, and forces the others
//! out ([`survivors`]).
//!
//! The group is the complement of a minimum vertex cover of the graph of expired pairs, with
//! the master never in the cover: exact branch-and-bound up to [`COVER_STEPS_MAX`] steps,
//! seeded with a greedy cover, whose best (the greedy one if the bound is hit first) is used.
//!
//! **A master that reaches no one keeps itself alone**: every other node is forced out. The
//! rule keeps the master because the master is the one node whose decision the others obey
//! without another round of agreement: a rule that could remove the master would need an
//! election to act on it, and a new master would judge from its own view, which may be as
//! partial. The cost is that a master whose own network fails evicts nodes that could still
//! talk to each other; they rejoin when the links heal (a restarted daemon joins again).
//! Nodes that publish no interconnect are never judged by their links, and are no one's
//! broken peer.

use membership_db::format::{Millis, NodeId, NodeSet};
use std::collections::BTreeMap;

/// Steps of the exact search before the best cover found so far is taken.
pub const COVER_STEPS_MAX: u64 = 20_000;

/// The nodes to force out because the interconnect is broken, each with a peer it cannot reach
/// (for the reason the master records).
pub type Verdict = Vec<(NodeId, NodeId)>;

/// Pairs as (lower id, higher id).
type Pair = (NodeId, NodeId);

/// The master's memory of broken pairs: since when each has been broken, on its clock.
#[derive(Debug, Clone, Default)]
pub struct LinkJudge {
    broken_since: BTreeMap<Pair, Millis>,
}

impl LinkJudge {
    pub fn new() -> LinkJudge {
        LinkJudge::default()
    }

    /// Looks at what the judged nodes publish (`reports`: joined nodes that run an interconnect,
    /// each with the set it reaches; the master's own included when it runs one) and returns
    /// whom to force out, if some pair has been broken for `link_timeout_ms`.
    pub fn judge(
        &mut self,
        now: Millis,
        master: NodeId,
        reports: &[(NodeId, NodeSet)],
        link_timeout_ms: Millis,
    ) -> Verdict {
        let mut broken: Vec<Pair> = Vec::new();
        for (i, (a, reach_a)) in reports.iter().enumerate() {
            for (b, reach_b) in &reports[i + 1..] {
                if a != b && (!reach_a.contains(*b) || !reach_b.contains(*a)) {
                    broken.push(((*a).min(*b), (*a).max(*b)));
                }
            }
        }
        // A pair that healed (or whose nodes are no longer judged) starts again from zero.
        self.broken_since.retain(|p, _| broken.contains(p));
        for p in &broken {
            self.broken_since.entry(*p).or_insert(now);
        }
        let expired: Vec<Pair> =
            self.broken_since.iter().filter(|(_, since)| now >= **since + link_timeout_ms).map(|(p, _)| *p).collect();
        if expired.is_empty() {
            return Vec::new();
        }
        let nodes: NodeSet = reports.iter().map(|(n, _)| *n).chain(std::iter::once(master)).collect();
        let kept = survivors(master, nodes, &expired);
        nodes
            .difference(&kept)
            .iter()
            .map(|out| {
                let partners = expired.iter().filter_map(|(a, b)| match (*a == out, *b == out) {
                    (true, _) => Some(*b),
                    (_, true) => Some(*a),
                    _ => None,
                });
                let mut partners: Vec<NodeId> = partners.collect();
                partners.sort_by_key(|p| (!kept.contains(*p), *p));
                (out, partners.first().copied().unwrap_or(master))
            })
            .collect()
    }

    /// Forgets every timer (a new master starts judging from its own observations).
    pub fn reset(&mut self) {
        self.broken_since.clear();
    }
}

/// The largest group of `nodes` that includes `master` and holds no pair of `broken`; ties go
/// to the group with the lowest ids (compared as sorted lists).
pub fn survivors(master: NodeId, nodes: NodeSet, broken: &[(NodeId, NodeId)]) -> NodeSet {
    let edges: Vec<Pair> = broken
        .iter()
        .filter(|(a, b)| a != b && nodes.contains(*a) && nodes.contains(*b))
        .map(|(a, b)| ((*a).min(*b), (*a).max(*b)))
        .collect();
    // The master stays: every peer it cannot reach goes.
    let mut forced = NodeSet::EMPTY;
    for (a, b) in &edges {
        if *a == master {
            forced.insert(*b);
        } else if *b == master {
            forced.insert(*a);
        }
    }
    let rest: Vec<Pair> = edges.into_iter().filter(|(a, b)| !forced.contains(*a) && !forced.contains(*b)).collect();
    let greedy = greedy_cover(&rest);
    let mut search = Search { best: greedy, steps: 0 };
    search.branch(&rest, NodeSet::EMPTY);
    nodes.difference(&forced.union(&search.best))
}

/// A cover (every pair has a node in it): repeatedly the node in most uncovered pairs, the
/// highest id on a tie (so the lowest ids stay).
fn greedy_cover(edges: &[Pair]) -> NodeSet {
    let mut cover = NodeSet::EMPTY;
    // Bounded: each round covers at least one pair.
    for _ in 0..edges.len() {
        let uncovered: Vec<&Pair> = edges.iter().filter(|(a, b)| !cover.contains(*a) && !cover.contains(*b)).collect();
        if uncovered.is_empty() {
            break;
        }
        let mut degree: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (a, b) in &uncovered {
            *degree.entry(*a).or_default() += 1;
            *degree.entry(*b).or_default() += 1;
        }
        let (node, _) = degree.iter().max_by_key(|(n, d)| (**d, **n)).expect("an uncovered pair");
        cover.insert(*node);
    }
    cover
}

/// Whether cover `a` is better than `b`: smaller, or as small and keeping the lower ids. The
/// groups kept, as sorted lists, first differ at the lowest id that one cover removes and the
/// other does not: the cover that keeps it is better.
fn better(a: &NodeSet, b: &NodeSet) -> bool {
    if a.len() != b.len() {
        return a.len() < b.len();
    }
    match (a.difference(b).iter().next(), b.difference(a).iter().next()) {
        (Some(removed_by_a), Some(removed_by_b)) => removed_by_b < removed_by_a,
        _ => false,
    }
}

struct Search {
    best: NodeSet,
    steps: u64,
}

impl Search {
    /// Exact minimum cover of `edges` by branching on a node of highest degree: it is in the
    /// cover, or all its neighbours are. Bounded by [`COVER_STEPS_MAX`].
    fn branch(&mut self, edges: &[Pair], chosen: NodeSet) {
        self.steps += 1;
        if self.steps > COVER_STEPS_MAX {
            return;
        }
        let uncovered: Vec<Pair> =
            edges.iter().copied().filter(|(a, b)| !chosen.contains(*a) && !chosen.contains(*b)).collect();
        if uncovered.is_empty() {
            if better(&chosen, &self.best) {
                self.best = chosen;
            }
            return;
        }
        // Bound: at least one more node is needed; ties must still be explored.
        if chosen.len() + 1 > self.best.len() {
            return;
        }
        let mut degree: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (a, b) in &uncovered {
            *degree.entry(*a).or_default() += 1;
            *degree.entry(*b).or_default() += 1;
        }
        let (v, _) = degree.iter().max_by_key(|(n, d)| (**d, **n)).map(|(n, d)| (*n, *d)).expect("an uncovered pair");
        let mut with_v = chosen;
        with_v.insert(v);
        self.branch(&uncovered, with_v);
        let mut with_neighbours = chosen;
        for (a, b) in &uncovered {
            if *a == v {
                with_neighbours.insert(*b);
            } else if *b == v {
                with_neighbours.insert(*a);
            }
        }
        if with_neighbours.len() <= self.best.len() {
            self.branch(&uncovered, with_neighbours);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(ids: &[u16]) -> NodeSet {
        ids.iter().map(|i| NodeId(*i)).collect()
    }
    fn pairs(p: &[(u16, u16)]) -> Vec<(NodeId, NodeId)> {
        p.iter().map(|(a, b)| (NodeId(*a), NodeId(*b))).collect()
    }

    #[test]
    fn triangle_keeps_the_master_and_the_lowest_other() {
        // 1, 2, 3 cannot talk at all: every pair is broken, so the master (2) stays alone.
        let kept = survivors(NodeId(2), n(&[1, 2, 3]), &pairs(&[(1, 2), (2, 3), (1, 3)]));
        assert_eq!(kept, n(&[2]));
        // Only 1-3 broken: master 2 keeps itself and the lower of the two.
        let kept = survivors(NodeId(2), n(&[1, 2, 3]), &pairs(&[(1, 3)]));
        assert_eq!(kept, n(&[1, 2]));
    }

    #[test]
    fn star_removes_the_centre_not_the_leaves() {
        // Node 5 cannot reach 2, 3, 4; master 1 reaches everyone.
        let kept = survivors(NodeId(1), n(&[1, 2, 3, 4, 5]), &pairs(&[(5, 2), (5, 3), (5, 4)]));
        assert_eq!(kept, n(&[1, 2, 3, 4]));
    }

    #[test]
    fn two_halves_keep_the_half_of_the_master() {
        // {1,2,3} and {4,5,6} talk within, not across.
        let mut broken = Vec::new();
        for a in 1..=3 {
            for b in 4..=6 {
                broken.push((a, b));
            }
        }
        assert_eq!(survivors(NodeId(5), n(&[1, 2, 3, 4, 5, 6]), &pairs(&broken)), n(&[4, 5, 6]));
        assert_eq!(survivors(NodeId(1), n(&[1, 2, 3, 4, 5, 6]), &pairs(&broken)), n(&[1, 2, 3]));
    }

    #[test]
    fn a_master_isolated_from_everyone_keeps_itself_alone() {
        let kept = survivors(NodeId(3), n(&[1, 2, 3, 4]), &pairs(&[(3, 1), (3, 2), (3, 4)]));
        assert_eq!(kept, n(&[3]));
    }

    #[test]
    fn ties_keep_the_lowest_ids() {
        // A path 2-3-4 plus 5-6, master 1 reaching all: remove 3 (not 2 and 4), and 6 (not 5).
        let kept = survivors(NodeId(1), n(&[1, 2, 3, 4, 5, 6]), &pairs(&[(2, 3), (3, 4), (5, 6)]));
        assert_eq!(kept, n(&[1, 2, 4, 5]));
        // Two equal groups {1,2} and {1,3}: 2 and 3 broken, keep 2.
        assert_eq!(survivors(NodeId(1), n(&[1, 2, 3]), &pairs(&[(2, 3)])), n(&[1, 2]));
        // A 4-cycle 2-3-4-5-2: covers {2,4} or {3,5}; keep {1,2,4} ({1,3,5} is higher).
        let kept = survivors(NodeId(1), n(&[1, 2, 3, 4, 5]), &pairs(&[(2, 3), (3, 4), (4, 5), (5, 2)]));
        assert_eq!(kept, n(&[1, 2, 4]));
    }

    #[test]
    fn exact_beats_greedy_and_large_graphs_stay_bounded() {
        // Greedy takes 8 first (degree 3, highest id), then needs three more for the 6-cycle
        // left; the minimum cover is {5, 6, 7}.
        let edges = pairs(&[(2, 5), (2, 6), (3, 5), (3, 7), (4, 6), (4, 7), (8, 5), (8, 6), (8, 7)]);
        let kept = survivors(NodeId(1), n(&[1, 2, 3, 4, 5, 6, 7, 8]), &edges);
        assert_eq!(kept.len(), 5, "{kept:?}"); // cover {5,6,7}
        assert_eq!(kept, n(&[1, 2, 3, 4, 8]));
        // 200 nodes, every pair among 100..=200 broken: bounded, and a valid group.
        let mut big = Vec::new();
        for a in 100..=200u16 {
            for b in a + 1..=200 {
                big.push((a, b));
            }
        }
        let all: NodeSet = (1..=200).map(NodeId).collect();
        let kept = survivors(NodeId(1), all, &pairs(&big));
        assert!(kept.contains(NodeId(1)));
        for (a, b) in pairs(&big) {
            assert!(!(kept.contains(a) && kept.contains(b)), "{a}-{b} both kept");
        }
        assert_eq!(kept.len(), 100, "one of the clique stays with 1..=99");
    }

    #[test]
    fn a_pair_must_stay_broken_for_the_whole_timeout() {
        let mut j = LinkJudge::new();
        let all = n(&[1, 2, 3]);
        let cut = [(NodeId(1), n(&[2])), (NodeId(2), n(&[1])), (NodeId(3), NodeSet::EMPTY)];
        let whole = [(NodeId(1), n(&[2, 3])), (NodeId(2), n(&[1, 3])), (NodeId(3), n(&[1, 2]))];
        assert!(j.judge(0, NodeId(1), &cut, 1000).is_empty());
        assert!(j.judge(900, NodeId(1), &cut, 1000).is_empty());
        // Healed just before the timeout: the timer starts again.
        assert!(j.judge(950, NodeId(1), &whole, 1000).is_empty());
        assert!(j.judge(1000, NodeId(1), &cut, 1000).is_empty());
        assert!(j.judge(1999, NodeId(1), &cut, 1000).is_empty());
        let verdict = j.judge(2000, NodeId(1), &cut, 1000);
        assert_eq!(verdict, vec![(NodeId(3), NodeId(1))]);
        // 3 is gone from the judged nodes (forced out): nothing more to judge.
        assert!(j.judge(2100, NodeId(1), &cut[..2], 1000).is_empty());
        assert!(all.contains(NodeId(3)));
    }

    #[test]
    fn one_sided_listing_is_a_broken_pair() {
        let mut j = LinkJudge::new();
        // 3 lists 1 and 2, but neither lists 3.
        let r = [(NodeId(1), n(&[2])), (NodeId(2), n(&[1])), (NodeId(3), n(&[1, 2]))];
        assert!(j.judge(0, NodeId(2), &r, 500).is_empty());
        assert_eq!(j.judge(500, NodeId(2), &r, 500), vec![(NodeId(3), NodeId(1))], "the lowest peer it cannot reach");
    }
}
