//! The lock manager's frames between nodes, and their encoding.
//!
//! A payload handed to the interconnect (which authenticates it and delivers it reliably and
//! in order) is a batch: the protocol version (one byte, [`PROTOCOL_VERSION`]) followed by
//! frames, each a little-endian `u16` length and that many bytes: a tag byte, then the fields
//! in the order of the variant's declaration. A resource is its lockspace (a `u8` length and
//! the bytes) and its name (likewise); an optional mode is one byte, 255 for none; a value
//! block is 32 bytes. A batch that does not decode is refused whole: nothing in it is used.

use crate::mode::Mode;
use crate::types::{LockError, LockId, Lvb, ResName, LVB_BYTES};
use membership_db::format::NodeId;

pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame: a recovered lock with the longest names.
pub const FRAME_BYTES_MAX: usize = 256;

/// Frames between the lock managers of two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Owner to directory node: who masters `res`? `gen` is the asker's recovery generation.
    Lookup {
        gen: u64,
        res: ResName,
    },
    /// Directory node to owner: `master` does (0: ask again, the directory moved).
    LookupReply {
        gen: u64,
        res: ResName,
        master: NodeId,
    },
    /// Owner to master: a new lock.
    Request {
        res: ResName,
        lock: LockId,
        mode: Mode,
        noqueue: bool,
    },
    /// Owner to master: convert a granted lock; `lvb` written when converting down from PW/EX.
    Convert {
        res: ResName,
        lock: LockId,
        mode: Mode,
        noqueue: bool,
        quecvt: bool,
        lvb: Option<Lvb>,
    },
    /// Owner to master: release; `lvb` written when held in PW/EX.
    Unlock {
        res: ResName,
        lock: LockId,
        lvb: Option<Lvb>,
    },
    /// Owner to master: end a waiting request or conversion with `error` (cancel, timeout).
    Cancel {
        res: ResName,
        lock: LockId,
        error: LockError,
    },
    /// Master to owner.
    Granted {
        lock: LockId,
        mode: Mode,
        lvb: Lvb,
        lvb_valid: bool,
    },
    Failed {
        lock: LockId,
        error: LockError,
    },
    Blocking {
        lock: LockId,
        wanted: Mode,
    },
    /// Recovery round `round` has reached step `step` on the sender: it has sent everything
    /// of the steps before.
    Done {
        round: u64,
        step: u8,
    },
    /// Recovery step 2, to the resource's directory node: `master` masters `res` (sent by the
    /// master and by every owner that knows it).
    DirEntry {
        round: u64,
        res: ResName,
        master: NodeId,
    },
    /// Recovery step 3, owner to directory node: who masters `res`, whose master left? The
    /// first to ask becomes its master.
    RecoverLookup {
        round: u64,
        res: ResName,
    },
    RecoverLookupReply {
        round: u64,
        res: ResName,
        master: NodeId,
    },
    /// Recovery step 3, owner to the resource's (new) master: my lock.
    RecoverLock {
        round: u64,
        res: ResName,
        lock: LockId,
        granted: Option<Mode>,
        requested: Option<Mode>,
        quecvt: bool,
        lvb: Lvb,
        lvb_valid: bool,
    },
}

impl Frame {
    /// The recovery round a frame belongs to, if it is a recovery frame.
    pub fn round(&self) -> Option<u64> {
        match self {
            Frame::Done { round, .. }
            | Frame::DirEntry { round, .. }
            | Frame::RecoverLookup { round, .. }
            | Frame::RecoverLookupReply { round, .. }
            | Frame::RecoverLock { round, .. } => Some(*round),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed lock manager frame: {0}")]
pub struct WireError(pub String);

struct Out<'a>(&'a mut Vec<u8>);
impl Out<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn res(&mut self, r: &ResName) {
        self.u8(r.lockspace().len() as u8);
        self.0.extend_from_slice(r.lockspace().as_bytes());
        self.u8(r.name().len() as u8);
        self.0.extend_from_slice(r.name());
    }
    fn mode(&mut self, m: Option<Mode>) {
        self.u8(m.map_or(255, |m| m as u8));
    }
    fn lvb(&mut self, v: &Lvb) {
        self.0.extend_from_slice(v);
    }
    fn opt_lvb(&mut self, v: &Option<Lvb>) {
        self.u8(v.is_some() as u8);
        self.lvb(&v.unwrap_or([0; LVB_BYTES]));
    }
}

struct In<'a>(&'a [u8]);
impl In<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError(format!("flag {v}"))),
        }
    }
    fn res(&mut self) -> Result<ResName, WireError> {
        let n = self.u8()? as usize;
        let space =
            std::str::from_utf8(self.take(n)?).map_err(|_| WireError("lockspace not UTF-8".into()))?.to_string();
        let n = self.u8()? as usize;
        let name = self.take(n)?.to_vec();
        ResName::new(&space, &name).map_err(|e| WireError(e.to_string()))
    }
    fn mode(&mut self) -> Result<Mode, WireError> {
        let v = self.u8()?;
        Mode::from_u8(v).ok_or_else(|| WireError(format!("mode {v}")))
    }
    fn opt_mode(&mut self) -> Result<Option<Mode>, WireError> {
        match self.u8()? {
            255 => Ok(None),
            v => Mode::from_u8(v).map(Some).ok_or_else(|| WireError(format!("mode {v}"))),
        }
    }
    fn lvb(&mut self) -> Result<Lvb, WireError> {
        Ok(self.take(LVB_BYTES)?.try_into().expect("LVB_BYTES"))
    }
    fn opt_lvb(&mut self) -> Result<Option<Lvb>, WireError> {
        let some = self.bool()?;
        let v = self.lvb()?;
        Ok(some.then_some(v))
    }
    fn error(&mut self) -> Result<LockError, WireError> {
        let v = self.u8()?;
        LockError::from_u8(v).ok_or_else(|| WireError(format!("error {v}")))
    }
    fn node(&mut self) -> Result<NodeId, WireError> {
        Ok(NodeId(self.u16()?))
    }
}

impl Frame {
    /// Appends this frame to `buf` (without its length).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let mut o = Out(buf);
        match self {
            Frame::Lookup { gen, res } => {
                o.u8(1);
                o.u64(*gen);
                o.res(res);
            }
            Frame::LookupReply { gen, res, master } => {
                o.u8(2);
                o.u64(*gen);
                o.res(res);
                o.u16(master.0);
            }
            Frame::Request { res, lock, mode, noqueue } => {
                o.u8(3);
                o.res(res);
                o.u64(lock.0);
                o.u8(*mode as u8);
                o.u8(*noqueue as u8);
            }
            Frame::Convert { res, lock, mode, noqueue, quecvt, lvb } => {
                o.u8(4);
                o.res(res);
                o.u64(lock.0);
                o.u8(*mode as u8);
                o.u8(*noqueue as u8);
                o.u8(*quecvt as u8);
                o.opt_lvb(lvb);
            }
            Frame::Unlock { res, lock, lvb } => {
                o.u8(5);
                o.res(res);
                o.u64(lock.0);
                o.opt_lvb(lvb);
            }
            Frame::Cancel { res, lock, error } => {
                o.u8(6);
                o.res(res);
                o.u64(lock.0);
                o.u8(error.to_u8());
            }
            Frame::Granted { lock, mode, lvb, lvb_valid } => {
                o.u8(7);
                o.u64(lock.0);
                o.u8(*mode as u8);
                o.lvb(lvb);
                o.u8(*lvb_valid as u8);
            }
            Frame::Failed { lock, error } => {
                o.u8(8);
                o.u64(lock.0);
                o.u8(error.to_u8());
            }
            Frame::Blocking { lock, wanted } => {
                o.u8(9);
                o.u64(lock.0);
                o.u8(*wanted as u8);
            }
            Frame::Done { round, step } => {
                o.u8(10);
                o.u64(*round);
                o.u8(*step);
            }
            Frame::DirEntry { round, res, master } => {
                o.u8(11);
                o.u64(*round);
                o.res(res);
                o.u16(master.0);
            }
            Frame::RecoverLookup { round, res } => {
                o.u8(12);
                o.u64(*round);
                o.res(res);
            }
            Frame::RecoverLookupReply { round, res, master } => {
                o.u8(13);
                o.u64(*round);
                o.res(res);
                o.u16(master.0);
            }
            Frame::RecoverLock { round, res, lock, granted, requested, quecvt, lvb, lvb_valid } => {
                o.u8(14);
                o.u64(*round);
                o.res(res);
                o.u64(lock.0);
                o.mode(*granted);
                o.mode(*requested);
                o.u8(*quecvt as u8);
                o.lvb(lvb);
                o.u8(*lvb_valid as u8);
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        let mut i = In(bytes);
        let f = match i.u8()? {
            1 => Frame::Lookup { gen: i.u64()?, res: i.res()? },
            2 => Frame::LookupReply { gen: i.u64()?, res: i.res()?, master: i.node()? },
            3 => Frame::Request { res: i.res()?, lock: LockId(i.u64()?), mode: i.mode()?, noqueue: i.bool()? },
            4 => Frame::Convert {
                res: i.res()?,
                lock: LockId(i.u64()?),
                mode: i.mode()?,
                noqueue: i.bool()?,
                quecvt: i.bool()?,
                lvb: i.opt_lvb()?,
            },
            5 => Frame::Unlock { res: i.res()?, lock: LockId(i.u64()?), lvb: i.opt_lvb()? },
            6 => Frame::Cancel { res: i.res()?, lock: LockId(i.u64()?), error: i.error()? },
            7 => Frame::Granted { lock: LockId(i.u64()?), mode: i.mode()?, lvb: i.lvb()?, lvb_valid: i.bool()? },
            8 => Frame::Failed { lock: LockId(i.u64()?), error: i.error()? },
            9 => Frame::Blocking { lock: LockId(i.u64()?), wanted: i.mode()? },
            10 => Frame::Done { round: i.u64()?, step: i.u8()? },
            11 => Frame::DirEntry { round: i.u64()?, res: i.res()?, master: i.node()? },
            12 => Frame::RecoverLookup { round: i.u64()?, res: i.res()? },
            13 => Frame::RecoverLookupReply { round: i.u64()?, res: i.res()?, master: i.node()? },
            14 => Frame::RecoverLock {
                round: i.u64()?,
                res: i.res()?,
                lock: LockId(i.u64()?),
                granted: i.opt_mode()?,
                requested: i.opt_mode()?,
                quecvt: i.bool()?,
                lvb: i.lvb()?,
                lvb_valid: i.bool()?,
            },
            t => return Err(WireError(format!("unknown frame tag {t}"))),
        };
        if !i.0.is_empty() {
            return Err(WireError(format!("{} bytes after the frame", i.0.len())));
        }
        Ok(f)
    }
}

/// Builds one interconnect payload from frames.
#[derive(Debug, Default)]
pub struct Batch(Vec<u8>);

impl Batch {
    pub fn new() -> Batch {
        Batch(vec![PROTOCOL_VERSION])
    }
    pub fn push(&mut self, f: &Frame) {
        if self.0.is_empty() {
            self.0.push(PROTOCOL_VERSION);
        }
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        f.encode(&mut self.0);
        let len = self.0.len() - at - 2;
        assert!(len <= FRAME_BYTES_MAX, "a frame is at most FRAME_BYTES_MAX bytes");
        self.0[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
    }
    pub fn len_bytes(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.len() <= 1
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Decodes a payload: every frame, or an error and none.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<Frame>, WireError> {
    let mut i = In(payload);
    let version = i.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(WireError(format!("protocol version {version}, this node speaks {PROTOCOL_VERSION}")));
    }
    let mut frames = Vec::new();
    while !i.0.is_empty() {
        let len = i.u16()? as usize;
        if len > FRAME_BYTES_MAX {
            return Err(WireError(format!("frame of {len} bytes")));
        }
        frames.push(Frame::decode(i.take(len)?)?);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res() -> ResName {
        ResName::new("default", &[0xff; 64]).unwrap()
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            Frame::Lookup { gen: 3, res: res() },
            Frame::LookupReply { gen: 3, res: res(), master: NodeId(256) },
            Frame::Request { res: res(), lock: LockId(9), mode: Mode::Ex, noqueue: true },
            Frame::Convert {
                res: res(),
                lock: LockId(9),
                mode: Mode::Nl,
                noqueue: false,
                quecvt: true,
                lvb: Some([1; 32]),
            },
            Frame::Unlock { res: res(), lock: LockId(9), lvb: None },
            Frame::Cancel { res: res(), lock: LockId(9), error: LockError::TimedOut },
            Frame::Granted { lock: LockId(9), mode: Mode::Pr, lvb: [2; 32], lvb_valid: true },
            Frame::Failed { lock: LockId(9), error: LockError::Deadlock },
            Frame::Blocking { lock: LockId(9), wanted: Mode::Cw },
            Frame::Done { round: 7, step: 3 },
            Frame::DirEntry { round: 7, res: res(), master: NodeId(3) },
            Frame::RecoverLookup { round: 7, res: res() },
            Frame::RecoverLookupReply { round: 7, res: res(), master: NodeId(2) },
            Frame::RecoverLock {
                round: 7,
                res: ResName::new(&"s".repeat(32), &[1; 64]).unwrap(),
                lock: LockId(u64::MAX),
                granted: Some(Mode::Pw),
                requested: None,
                quecvt: false,
                lvb: [3; 32],
                lvb_valid: false,
            },
        ];
        let mut b = Batch::new();
        for f in &frames {
            b.push(f);
        }
        assert_eq!(decode_batch(&b.into_bytes()).unwrap(), frames);
    }

    #[test]
    fn another_version_is_refused() {
        let mut b = Batch::new().into_bytes();
        b[0] = 2;
        assert!(decode_batch(&b).unwrap_err().0.contains("version 2"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_batch(&bytes);
            let _ = Frame::decode(&bytes);
        }
    }
}
