//! A resource as its master keeps it: the granted, converting and waiting queues, the value
//! block, and the rules that decide what is granted (VMS and Linux fs/dlm semantics).
//!
//! * A new request is granted at once only if no conversion and no earlier request waits, and
//!   its mode is compatible with every granted mode: so a stream of PR requests never starves
//!   a waiting EX.
//! * A conversion down (to a mode compatible with everything the old one was) is granted at
//!   once. A conversion up is granted at once when compatible with every other granted mode,
//!   unless QUECVT asks it to wait behind the conversions already queued.
//! * When something is released, conversions are granted first (in queue order, any that is
//!   compatible), then waiting requests strictly first-come first-served.
//! * Two conversions that each wait for the other's granted mode would wait forever: the one
//!   arriving second is refused with [`LockError::Deadlock`] and keeps its granted mode.
//! * A holder whose granted mode blocks a queued request is told the mode wanted (a blocking
//!   callback), once per mode.

use crate::mode::Mode;
use crate::types::{Flags, GlobalLockId, LockError, Lvb, LVB_BYTES};

/// A lock as the master of its resource sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MasterLock {
    pub id: GlobalLockId,
    /// The mode held; `None` while a new request waits.
    pub granted: Option<Mode>,
    /// The mode asked for by a waiting request or conversion.
    pub requested: Option<Mode>,
    #[serde(skip)]
    pub quecvt: bool,
    /// The strongest mode this holder has been told is wanted since its grant.
    #[serde(skip)]
    pub blocking_sent: Option<Mode>,
}

/// What the master tells a lock's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterOutput {
    Granted { id: GlobalLockId, mode: Mode, lvb: Lvb, lvb_valid: bool },
    Failed { id: GlobalLockId, error: LockError },
    Blocking { id: GlobalLockId, wanted: Mode },
}

/// Whether converting from `old` to `new` can never be blocked: `new` is compatible with every
/// mode `old` is.
pub fn is_down_conversion(old: Mode, new: Mode) -> bool {
    Mode::ALL.iter().all(|&m| !old.compatible(m) || new.compatible(m))
}

/// What the holder of a lock granted in `granted`, converting to `requested`, may rely on
/// while the conversion is pending: a conversion down gives the old mode up at the request; a
/// conversion up keeps it until the grant; a conversion neither up nor down (CW to PR, PR to
/// CW, which the core refuses) could keep only what both modes allow (CR), since the master
/// may grant the new mode, and others beside it, before the owner hears of it.
pub fn relied_on(granted: Mode, requested: Option<Mode>) -> Mode {
    match requested {
        None => granted,
        Some(r) if is_down_conversion(granted, r) => r,
        Some(r) if is_down_conversion(r, granted) => granted,
        Some(r) => Mode::ALL
            .into_iter()
            .rev()
            .find(|m| is_down_conversion(granted, *m) && is_down_conversion(r, *m))
            .expect("NL is below every mode"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Queues {
    pub granted: Vec<MasterLock>,
    pub converting: Vec<MasterLock>,
    pub waiting: Vec<MasterLock>,
    #[serde(skip)]
    pub lvb: Lvb,
    /// A new resource's value block is not valid until first written.
    pub lvb_valid: bool,
}

impl Default for Queues {
    fn default() -> Self {
        Queues::new([0; LVB_BYTES], false)
    }
}

impl Queues {
    pub fn new(lvb: Lvb, lvb_valid: bool) -> Queues {
        Queues { granted: Vec::new(), converting: Vec::new(), waiting: Vec::new(), lvb, lvb_valid }
    }

    pub fn is_empty(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }

    pub fn len(&self) -> usize {
        self.granted.len() + self.converting.len() + self.waiting.len()
    }

    /// Every granted mode but `except`'s (converting locks hold their granted mode).
    fn holders(&self, except: GlobalLockId) -> impl Iterator<Item = (GlobalLockId, Mode)> + '_ {
        #[cfg(feature = "planted-bugs")]
        let converting = if crate::planted::GRANT_IGNORES_CONVERTING.active() { &[][..] } else { &self.converting[..] };
        #[cfg(not(feature = "planted-bugs"))]
        let converting = &self.converting[..];
        self.granted
            .iter()
            .chain(converting.iter())
            .filter(move |l| l.id != except)
            .filter_map(|l| l.granted.map(|g| (l.id, g)))
    }

    fn compatible_with_holders(&self, id: GlobalLockId, mode: Mode) -> bool {
        self.holders(id).all(|(_, g)| g.compatible(mode))
    }

    fn grant_output(&self, id: GlobalLockId, mode: Mode) -> MasterOutput {
        MasterOutput::Granted { id, mode, lvb: self.lvb, lvb_valid: self.lvb_valid }
    }

    /// Where `id` is: (queue 0 granted / 1 converting / 2 waiting, index).
    fn find(&self, id: GlobalLockId) -> Option<(usize, usize)> {
        [&self.granted, &self.converting, &self.waiting]
            .iter()
            .enumerate()
            .find_map(|(q, v)| v.iter().position(|l| l.id == id).map(|i| (q, i)))
    }

    pub fn contains(&self, id: GlobalLockId) -> bool {
        self.find(id).is_some()
    }

    /// A new lock. A duplicate of a lock already here is ignored.
    pub fn request(&mut self, id: GlobalLockId, mode: Mode, flags: Flags, out: &mut Vec<MasterOutput>) {
        if self.contains(id) {
            return;
        }
        let lock = MasterLock { id, granted: None, requested: Some(mode), quecvt: false, blocking_sent: None };
        let queue_empty = self.converting.is_empty() && self.waiting.is_empty();
        if queue_empty && self.compatible_with_holders(id, mode) {
            self.granted.push(MasterLock { granted: Some(mode), requested: None, ..lock });
            out.push(self.grant_output(id, mode));
        } else if flags.noqueue {
            out.push(MasterOutput::Failed { id, error: LockError::WouldBlock });
        } else {
            self.waiting.push(lock);
            self.send_blocking(out);
        }
    }

    /// A conversion of a granted lock. `lvb` is written when converting down from PW or EX.
    pub fn convert(
        &mut self,
        id: GlobalLockId,
        mode: Mode,
        flags: Flags,
        lvb: Option<Lvb>,
        out: &mut Vec<MasterOutput>,
    ) {
        let Some((0, i)) = self.find(id) else { return };
        let old = self.granted[i].granted.expect("a lock on the granted queue has a mode");
        if old.writes_value() && !mode.writes_value() {
            if let Some(v) = lvb {
                self.lvb = v;
                self.lvb_valid = true;
            }
        }
        if is_down_conversion(old, mode)
            || ((self.converting.is_empty() || !flags.quecvt) && self.compatible_with_holders(id, mode))
        {
            let l = &mut self.granted[i];
            l.granted = Some(mode);
            l.blocking_sent = None;
            out.push(self.grant_output(id, mode));
            self.grant_pending(out);
            return;
        }
        if flags.noqueue {
            out.push(MasterOutput::Failed { id, error: LockError::WouldBlock });
            return;
        }
        let deadlocked = self
            .converting
            .iter()
            .any(|c| c.granted.is_some_and(|g| !g.compatible(mode)) && c.requested.is_some_and(|r| !old.compatible(r)));
        if deadlocked {
            out.push(MasterOutput::Failed { id, error: LockError::Deadlock });
            return;
        }
        let mut l = self.granted.remove(i);
        l.requested = Some(mode);
        l.quecvt = flags.quecvt;
        self.converting.push(l);
        self.send_blocking(out);
    }

    /// Releases a granted lock; `lvb` is written when it was held in PW or EX.
    pub fn unlock(&mut self, id: GlobalLockId, lvb: Option<Lvb>, out: &mut Vec<MasterOutput>) {
        let Some((q, i)) = self.find(id) else { return };
        let l = match q {
            0 => self.granted.remove(i),
            1 => self.converting.remove(i),
            _ => self.waiting.remove(i),
        };
        if let (Some(v), Some(true)) = (lvb, l.granted.map(Mode::writes_value)) {
            self.lvb = v;
            self.lvb_valid = true;
        }
        self.grant_pending(out);
    }

    /// Ends a waiting request or conversion with `error` (a cancel or a timeout); a converting
    /// lock keeps its granted mode. A lock already granted is left alone: its grant is on its
    /// way and wins.
    pub fn cancel(&mut self, id: GlobalLockId, error: LockError, out: &mut Vec<MasterOutput>) {
        match self.find(id) {
            Some((1, i)) => {
                let mut l = self.converting.remove(i);
                l.requested = None;
                self.granted.push(l);
            }
            Some((2, i)) => {
                self.waiting.remove(i);
            }
            _ => return,
        }
        out.push(MasterOutput::Failed { id, error });
        self.grant_pending(out);
    }

    /// Grants what has become grantable: conversions first, then waiting requests in order.
    pub fn grant_pending(&mut self, out: &mut Vec<MasterOutput>) {
        // Each pass grants at least one lock or stops: bounded by the number of locks.
        loop {
            // A QUECVT conversion is not granted past a blocked one ahead of it.
            let mut blocked_ahead = false;
            let grantable = self.converting.iter().position(|c| {
                let mode = c.requested.expect("a converting lock has a requested mode");
                let ok = self.compatible_with_holders(c.id, mode) && !(c.quecvt && blocked_ahead);
                blocked_ahead |= !ok;
                ok
            });
            let Some(i) = grantable else { break };
            let mut l = self.converting.remove(i);
            let mode = l.requested.take().expect("checked above");
            l.granted = Some(mode);
            l.blocking_sent = None;
            out.push(self.grant_output(l.id, mode));
            self.granted.push(l);
        }
        while self.converting.is_empty() {
            let Some(head) = self.waiting.first() else { break };
            let mode = head.requested.expect("a waiting lock has a requested mode");
            if !self.compatible_with_holders(head.id, mode) {
                break;
            }
            let mut l = self.waiting.remove(0);
            l.requested = None;
            l.granted = Some(mode);
            out.push(self.grant_output(l.id, mode));
            self.granted.push(l);
        }
        self.send_blocking(out);
    }

    /// Tells each holder that blocks a queued conversion, or the first waiting request, which
    /// mode is wanted (once per mode per grant).
    pub fn send_blocking(&mut self, out: &mut Vec<MasterOutput>) {
        let blocked: Vec<(GlobalLockId, Mode)> = self
            .converting
            .iter()
            .chain(self.waiting.first())
            .map(|l| (l.id, l.requested.expect("a queued lock has a requested mode")))
            .collect();
        for (waiter, wanted) in blocked {
            for holder in self.granted.iter_mut().chain(self.converting.iter_mut()) {
                let Some(g) = holder.granted else { continue };
                if holder.id == waiter || g.compatible(wanted) {
                    continue;
                }
                if holder.blocking_sent.is_none_or(|sent| wanted > sent) {
                    holder.blocking_sent = Some(wanted);
                    out.push(MasterOutput::Blocking { id: holder.id, wanted });
                }
            }
        }
    }

    /// Blocking callbacks are sent afresh (after recovery: the old master's may be lost).
    pub fn forget_blocking_sent(&mut self) {
        for l in self.granted.iter_mut().chain(self.converting.iter_mut()) {
            l.blocking_sent = None;
        }
    }

    /// Removes every lock of `node` (it left the cluster). Its PW or EX grants may have changed
    /// what the value block describes without writing it: the value block is marked not valid.
    pub fn purge_node(&mut self, node: membership_db::format::NodeId) {
        let mut invalid = false;
        for q in [&mut self.granted, &mut self.converting, &mut self.waiting] {
            q.retain(|l| {
                let keep = l.id.node != node;
                invalid |= !keep && l.granted.is_some_and(Mode::writes_value);
                keep
            });
        }
        if invalid {
            self.lvb_valid = false;
        }
    }

    /// A lock as its owner reports it while the resource is rebuilt on a new master.
    pub fn insert_recovered(&mut self, id: GlobalLockId, granted: Option<Mode>, requested: Option<Mode>, quecvt: bool) {
        if self.contains(id) {
            return;
        }
        let l = MasterLock { id, granted, requested, quecvt, blocking_sent: None };
        match (granted, requested) {
            (Some(_), None) => self.granted.push(l),
            (Some(_), Some(_)) => self.converting.push(l),
            (None, Some(_)) => self.waiting.push(l),
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership_db::format::NodeId;

    fn id(n: u64) -> GlobalLockId {
        GlobalLockId { node: NodeId(1), lock: crate::types::LockId(n) }
    }
    fn granted(out: &[MasterOutput]) -> Vec<(u64, Mode)> {
        out.iter()
            .filter_map(|o| match o {
                MasterOutput::Granted { id, mode, .. } => Some((id.lock.0, *mode)),
                _ => None,
            })
            .collect()
    }
    const Q: Flags = Flags { noqueue: false, quecvt: false, timeout_ms: None };

    #[test]
    fn a_waiting_ex_is_not_starved_by_a_stream_of_pr() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Pr, Q, &mut out);
        r.request(id(2), Mode::Ex, Q, &mut out);
        r.request(id(3), Mode::Pr, Q, &mut out);
        assert_eq!(granted(&out), [(1, Mode::Pr)]);
        assert_eq!(out.last(), Some(&MasterOutput::Blocking { id: id(1), wanted: Mode::Ex }));
        out.clear();
        r.unlock(id(1), None, &mut out);
        assert_eq!(granted(&out), [(2, Mode::Ex)]);
        out.clear();
        r.unlock(id(2), None, &mut out);
        assert_eq!(granted(&out), [(3, Mode::Pr)]);
    }

    #[test]
    fn conversions_go_before_waiting_requests() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Pr, Q, &mut out);
        r.request(id(2), Mode::Pr, Q, &mut out);
        r.request(id(3), Mode::Pw, Q, &mut out); // waits
        r.convert(id(1), Mode::Ex, Q, None, &mut out); // waits for 2's PR
        out.clear();
        r.unlock(id(2), None, &mut out);
        assert_eq!(granted(&out), [(1, Mode::Ex)]);
    }

    #[test]
    fn noqueue_fails_at_once_and_changes_nothing() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Ex, Q, &mut out);
        r.request(id(2), Mode::Cr, Flags::NOQUEUE, &mut out);
        assert_eq!(out.last(), Some(&MasterOutput::Failed { id: id(2), error: LockError::WouldBlock }));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn two_pr_holders_converting_to_ex_is_a_deadlock_refused_to_the_second() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Pr, Q, &mut out);
        r.request(id(2), Mode::Pr, Q, &mut out);
        r.convert(id(1), Mode::Ex, Q, None, &mut out);
        out.clear();
        r.convert(id(2), Mode::Ex, Q, None, &mut out);
        assert_eq!(out, [MasterOutput::Failed { id: id(2), error: LockError::Deadlock }]);
        out.clear();
        r.unlock(id(2), None, &mut out);
        assert_eq!(granted(&out), [(1, Mode::Ex)]);
    }

    #[test]
    fn quecvt_waits_behind_queued_conversions_even_when_compatible() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Cr, Q, &mut out);
        r.request(id(2), Mode::Pr, Q, &mut out);
        r.request(id(3), Mode::Nl, Q, &mut out);
        r.convert(id(1), Mode::Ex, Q, None, &mut out); // blocked by 2's PR
        out.clear();
        let quecvt = Flags { quecvt: true, ..Q };
        r.convert(id(3), Mode::Cr, quecvt, None, &mut out);
        assert!(granted(&out).is_empty(), "{out:?}");
        r.convert(id(3), Mode::Cr, Q, None, &mut out); // already converting: ignored
        out.clear();
        r.cancel(id(1), LockError::Cancelled, &mut out);
        assert_eq!(out[0], MasterOutput::Failed { id: id(1), error: LockError::Cancelled });
        assert_eq!(granted(&out), [(3, Mode::Cr)]);
    }

    #[test]
    fn the_value_block_is_written_by_pw_and_ex_and_invalidated_when_such_a_holder_dies() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Ex, Q, &mut out);
        assert!(matches!(out[0], MasterOutput::Granted { lvb_valid: false, .. }));
        r.convert(id(1), Mode::Nl, Q, Some([7; LVB_BYTES]), &mut out);
        r.request(id(2), Mode::Pr, Q, &mut out);
        assert_eq!(
            out.last(),
            Some(&MasterOutput::Granted { id: id(2), mode: Mode::Pr, lvb: [7; LVB_BYTES], lvb_valid: true })
        );
        r.unlock(id(2), Some([9; LVB_BYTES]), &mut out); // PR does not write
        assert_eq!(r.lvb, [7; LVB_BYTES]);
        r.convert(id(1), Mode::Pw, Q, None, &mut out);
        let other = GlobalLockId { node: NodeId(2), lock: crate::types::LockId(1) };
        r.request(other, Mode::Cr, Q, &mut out);
        r.purge_node(NodeId(1));
        assert!(!r.lvb_valid);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_blocking_callback_is_sent_once_per_mode() {
        let (mut r, mut out) = (Queues::default(), Vec::new());
        r.request(id(1), Mode::Cr, Q, &mut out);
        r.request(id(2), Mode::Ex, Q, &mut out);
        r.request(id(3), Mode::Ex, Q, &mut out);
        let blocking = out.iter().filter(|o| matches!(o, MasterOutput::Blocking { .. })).count();
        assert_eq!(blocking, 1, "{out:?}");
    }

    #[test]
    fn a_pending_conversion_is_relied_on_as_what_both_modes_allow() {
        assert_eq!(relied_on(Mode::Ex, Some(Mode::Nl)), Mode::Nl);
        assert_eq!(relied_on(Mode::Pr, Some(Mode::Ex)), Mode::Pr);
        assert_eq!(relied_on(Mode::Cw, Some(Mode::Pr)), Mode::Cr);
        assert_eq!(relied_on(Mode::Pr, Some(Mode::Cw)), Mode::Cr);
        assert_eq!(relied_on(Mode::Pw, None), Mode::Pw);
    }

    #[test]
    fn down_conversions_are_those_never_blocked() {
        assert!(is_down_conversion(Mode::Ex, Mode::Pr));
        assert!(is_down_conversion(Mode::Pw, Mode::Cr));
        assert!(!is_down_conversion(Mode::Pr, Mode::Cw));
        assert!(!is_down_conversion(Mode::Cw, Mode::Pr));
        assert!(is_down_conversion(Mode::Pr, Mode::Pr));
    }
}
