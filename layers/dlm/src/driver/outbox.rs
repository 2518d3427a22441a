//! [`Outbox`]: the core's frames, gathered into one interconnect payload per peer (sans-IO).

use crate::wire::{Batch, Frame, FRAME_BYTES_MAX};
use membership_db::format::NodeId;
use std::collections::BTreeMap;

/// Largest payload the driver hands the interconnect (well below its 1 MiB frame bound): a
/// batch is flushed before a frame could take it past this.
pub const BATCH_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(BATCH_BYTES_MAX + FRAME_BYTES_MAX + 2 <= interconnect::FRAME_BYTES_MAX);

/// Frames gathered per destination; [`Outbox::push`] hands back a full batch, [`Outbox::drain`]
/// the rest. The frames to one peer keep their order across batches.
#[derive(Debug, Default)]
pub struct Outbox {
    batches: BTreeMap<NodeId, Batch>,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Adds `frame` for `to`. Returns a payload to send first when the batch for `to` was too
    /// full to take it.
    pub fn push(&mut self, to: NodeId, frame: &Frame) -> Option<(NodeId, Vec<u8>)> {
        let batch = self.batches.entry(to).or_default();
        let mut flushed = None;
        if !batch.is_empty() && batch.len_bytes() + 2 + FRAME_BYTES_MAX > BATCH_BYTES_MAX {
            flushed = Some((to, std::mem::replace(batch, Batch::new()).into_bytes()));
        }
        batch.push(frame);
        flushed
    }

    /// Every non-empty batch, by destination.
    pub fn drain(&mut self) -> Vec<(NodeId, Vec<u8>)> {
        std::mem::take(&mut self.batches)
            .into_iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(n, b)| (n, b.into_bytes()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LockId, ResName};
    use crate::wire::decode_batch;
    use crate::Mode;

    fn request(i: u64) -> Frame {
        Frame::Request {
            res: ResName::new("default", &[b'x'; 64]).unwrap(),
            lock: LockId(i),
            mode: Mode::Ex,
            noqueue: false,
        }
    }

    #[test]
    fn frames_are_batched_per_peer_in_order_and_split_at_the_bound() {
        let mut out = Outbox::new();
        let mut sent: Vec<(NodeId, Vec<u8>)> = Vec::new();
        for i in 0..2000 {
            sent.extend(out.push(NodeId(2), &request(i)));
            sent.extend(out.push(NodeId(3), &request(10_000 + i)));
        }
        sent.extend(out.drain());
        assert!(out.drain().is_empty(), "drained once");
        let mut to2 = Vec::new();
        let mut to3 = Vec::new();
        for (to, payload) in &sent {
            assert!(payload.len() <= BATCH_BYTES_MAX, "{} bytes", payload.len());
            let frames = decode_batch(payload).unwrap();
            assert!(!frames.is_empty());
            match to.0 {
                2 => to2.extend(frames),
                3 => to3.extend(frames),
                n => panic!("frame to node {n}"),
            }
        }
        assert!(sent.len() > 2, "2000 frames of ~90 bytes to each of two peers need several batches");
        assert_eq!(to2, (0..2000).map(request).collect::<Vec<_>>());
        assert_eq!(to3, (0..2000).map(|i| request(10_000 + i)).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_pushed_nothing_sent() {
        assert!(Outbox::new().drain().is_empty());
    }
}
