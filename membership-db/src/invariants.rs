//! Invariant checkers of the master role (DESIGN section 8, invariant 1), the one copy used by
//! the node core's harness and by the simulator. They live beside the protocol, not in it:
//! nothing in production calls them.

use crate::format::NodeId;
use std::collections::BTreeMap;

/// An invariant broken: its name and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invariant {} violated: {}", self.invariant, self.detail)
    }
}

/// At most one node acting as master at any instant; at most one master per epoch, ever.
#[derive(Debug, Clone, Default)]
pub struct MasterChecker {
    masters: BTreeMap<u64, NodeId>,
}

impl MasterChecker {
    pub fn new() -> MasterChecker {
        MasterChecker::default()
    }

    /// Checks the nodes acting as master now (each with its epoch). Returns the masters seen
    /// acting for the first time.
    pub fn check(&mut self, acting: &[(NodeId, u64)]) -> Result<Vec<(NodeId, u64)>, Violation> {
        if acting.len() > 1 {
            return Err(Violation {
                invariant: "one-acting-master",
                detail: format!("nodes acting as master at once: {acting:?}"),
            });
        }
        let mut new = Vec::new();
        for &(node, epoch) in acting {
            match self.masters.get(&epoch) {
                Some(m) if *m != node => {
                    return Err(Violation {
                        invariant: "one-master-per-epoch",
                        detail: format!("epoch {epoch} has masters {m} and {node}"),
                    });
                }
                Some(_) => {}
                None => {
                    self.masters.insert(epoch, node);
                    new.push((node, epoch));
                }
            }
        }
        Ok(new)
    }

    /// Every epoch that had an acting master, and who it was.
    pub fn masters(&self) -> &BTreeMap<u64, NodeId> {
        &self.masters
    }

    /// The newest epoch that had an acting master.
    pub fn newest_epoch(&self) -> u64 {
        self.masters.keys().next_back().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_acting_masters_or_two_masters_of_an_epoch_are_violations() {
        let mut c = MasterChecker::new();
        assert_eq!(c.check(&[(NodeId(1), 1)]).unwrap(), vec![(NodeId(1), 1)]);
        assert_eq!(c.check(&[(NodeId(1), 1)]).unwrap(), vec![]);
        assert_eq!(c.check(&[(NodeId(1), 1), (NodeId(2), 2)]).unwrap_err().invariant, "one-acting-master");
        assert_eq!(c.check(&[(NodeId(2), 1)]).unwrap_err().invariant, "one-master-per-epoch");
        assert_eq!(c.check(&[(NodeId(2), 2)]).unwrap(), vec![(NodeId(2), 2)]);
        assert_eq!(c.newest_epoch(), 2);
    }
}
