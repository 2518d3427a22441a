//! The frame codec: length prefix, frame counter, cumulative ack, payload, truncated MAC.
//!
//! ```text
//! offset size  field
//! 0      4     len        u32 LE: bytes after this field (header + [seq + payload] + tag)
//! 4      1     kind       1 = data, 2 = ack (also the keepalive)
//! 5      8     frame_seq  u64 LE: this direction's frame counter on this connection, from 1
//! 13     8     ack        u64 LE: highest data seq received in order from the peer
//! 21     8     seq        u64 LE, data only: the message's sequence number (per incarnation pair)
//! 29     n     payload    data only, n <= FRAME_BYTES_MAX
//! end-16 16    tag        HMAC-SHA256(direction key, every byte from len to payload), first 16 bytes
//! ```
//!
//! The receiver refuses a length above the bound before buffering anything (so a huge prefix
//! costs nothing), then checks the tag, then the frame counter: a replayed, dropped or
//! reordered frame fails the counter, a tampered one the tag. Direction keys are fresh for every
//! connection, so a frame recorded on an earlier connection fails the tag.

use super::FrameKey;
use crate::FRAME_BYTES_MAX;

/// Bytes of the truncated MAC at the end of every frame.
pub const TAG_BYTES: usize = 16;
const LEN_BYTES: usize = 4;
/// kind + frame_seq + ack.
const HEADER_BYTES: usize = 1 + 8 + 8;
const SEQ_BYTES: usize = 8;
const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
/// The smallest `len` (an ack frame).
const BODY_BYTES_MIN: usize = HEADER_BYTES + TAG_BYTES;
/// The largest `len` (a data frame with the largest payload).
const BODY_BYTES_MAX: usize = HEADER_BYTES + SEQ_BYTES + FRAME_BYTES_MAX + TAG_BYTES;
/// The bytes a data frame adds to its payload.
pub const DATA_OVERHEAD_BYTES: usize = LEN_BYTES + HEADER_BYTES + SEQ_BYTES + TAG_BYTES;
/// The largest frame on the wire.
pub const WIRE_FRAME_BYTES_MAX: usize = LEN_BYTES + BODY_BYTES_MAX;

const _: () = assert!(BODY_BYTES_MAX <= u32::MAX as usize);

/// A decoded (authenticated, in-order) frame, borrowing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message: `seq` numbers it in its direction for the life of both incarnations.
    Data { ack: u64, seq: u64, payload: &'a [u8] },
    /// An explicit cumulative acknowledgement; sent also as the keepalive.
    Ack { ack: u64 },
}

/// Why a received frame was refused; the connection is dropped and nothing in it delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length prefix above the bound: a corrupt stream or a hostile peer.
    #[error("frame length {len} exceeds the maximum {max}")]
    Oversize { len: u64, max: u64 },
    /// A length prefix too small to hold a header and a tag.
    #[error("frame length {len} is below the minimum {min}")]
    Undersize { len: u64, min: u64 },
    /// The tag does not match: tampered bytes, or a frame from another connection.
    #[error("frame MAC does not match (tampered or injected frame)")]
    BadMac,
    /// An authentic frame seen before (or older than the last one).
    #[error("replayed frame: counter {got}, expected {expected}")]
    Replayed { got: u64, expected: u64 },
    /// An authentic frame ahead of the next expected one (a frame was dropped or reordered).
    #[error("out-of-order frame: counter {got}, expected {expected}")]
    OutOfOrder { got: u64, expected: u64 },
    /// A kind byte this version does not know, or a body the wrong size for its kind.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Appends the encoding of `frame`, numbered `frame_seq`, to `out`.
///
/// A payload above [`FRAME_BYTES_MAX`] is a programmer error (the session refuses it at `send`).
pub fn encode(key: &FrameKey, frame_seq: u64, frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    let (kind, ack, data) = match *frame {
        Frame::Data { ack, seq, payload } => {
            assert!(payload.len() <= FRAME_BYTES_MAX, "payload of {} bytes", payload.len());
            (KIND_DATA, ack, Some((seq, payload)))
        }
        Frame::Ack { ack } => (KIND_ACK, ack, None),
    };
    let body = HEADER_BYTES + data.map_or(0, |(_, p)| SEQ_BYTES + p.len()) + TAG_BYTES;
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&frame_seq.to_le_bytes());
    out.extend_from_slice(&ack.to_le_bytes());
    if let Some((seq, payload)) = data {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(payload);
    }
    let tag: [u8; TAG_BYTES] = key.tag(&out[start..]);
    out.extend_from_slice(&tag);
    debug_assert_eq!(out.len() - start, LEN_BYTES + body);
}

/// Decodes the frame at the start of `buf`, expecting frame counter `expected_frame_seq`.
///
/// `Ok(None)`: `buf` holds only part of a frame (read more). `Ok(Some((frame, consumed)))`: an
/// authentic frame, the next in order. Never panics, whatever `buf` holds.
pub fn decode<'a>(
    key: &FrameKey,
    expected_frame_seq: u64,
    buf: &'a [u8],
) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
    let Some(len_bytes) = buf.get(..LEN_BYTES) else { return Ok(None) };
    let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
    if len > BODY_BYTES_MAX {
        return Err(FrameError::Oversize { len: len as u64, max: BODY_BYTES_MAX as u64 });
    }
    if len < BODY_BYTES_MIN {
        return Err(FrameError::Undersize { len: len as u64, min: BODY_BYTES_MIN as u64 });
    }
    let total = LEN_BYTES + len;
    let Some(whole) = buf.get(..total) else { return Ok(None) };
    let (signed, tag) = whole.split_at(total - TAG_BYTES);
    if !key.verify(signed, tag) {
        return Err(FrameError::BadMac);
    }
    let body = &signed[LEN_BYTES..];
    let frame_seq = u64_at(body, 1);
    if frame_seq != expected_frame_seq {
        return Err(if frame_seq < expected_frame_seq {
            FrameError::Replayed { got: frame_seq, expected: expected_frame_seq }
        } else {
            FrameError::OutOfOrder { got: frame_seq, expected: expected_frame_seq }
        });
    }
    let ack = u64_at(body, 9);
    let frame = match body[0] {
        KIND_DATA if body.len() >= HEADER_BYTES + SEQ_BYTES => {
            Frame::Data { ack, seq: u64_at(body, HEADER_BYTES), payload: &body[HEADER_BYTES + SEQ_BYTES..] }
        }
        KIND_DATA => return Err(FrameError::Malformed("data frame without a sequence number")),
        KIND_ACK if body.len() == HEADER_BYTES => Frame::Ack { ack },
        KIND_ACK => return Err(FrameError::Malformed("ack frame with a body")),
        _ => return Err(FrameError::Malformed("unknown frame kind")),
    };
    Ok(Some((frame, total)))
}

/// The little-endian u64 at `at`; the caller has checked the length.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> FrameKey {
        FrameKey::new(&[b; 32])
    }

    fn data(seq: u64, payload: &[u8]) -> Frame<'_> {
        Frame::Data { ack: 7, seq, payload }
    }

    #[test]
    fn round_trip_data_and_ack() {
        let k = key(1);
        let mut out = Vec::new();
        encode(&k, 1, &data(5, b"hello"), &mut out);
        encode(&k, 2, &Frame::Ack { ack: 9 }, &mut out);
        assert_eq!(out.len(), DATA_OVERHEAD_BYTES + 5 + LEN_BYTES + BODY_BYTES_MIN);
        let (f1, n1) = decode(&k, 1, &out).unwrap().unwrap();
        assert_eq!(f1, data(5, b"hello"));
        let (f2, n2) = decode(&k, 2, &out[n1..]).unwrap().unwrap();
        assert_eq!(f2, Frame::Ack { ack: 9 });
        assert_eq!(n1 + n2, out.len());
    }

    #[test]
    fn empty_and_largest_payloads() {
        let k = key(1);
        let big = vec![0xA5; FRAME_BYTES_MAX];
        for payload in [&[][..], &big[..]] {
            let mut out = Vec::new();
            encode(&k, 1, &data(1, payload), &mut out);
            let (f, n) = decode(&k, 1, &out).unwrap().unwrap();
            assert_eq!(f, data(1, payload));
            assert_eq!(n, out.len());
        }
    }

    #[test]
    fn bad_mac_wrong_key_or_flipped_bit() {
        let mut out = Vec::new();
        encode(&key(1), 1, &data(1, b"payload"), &mut out);
        assert_eq!(decode(&key(2), 1, &out), Err(FrameError::BadMac));
        for i in LEN_BYTES..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x01;
            assert_eq!(decode(&key(1), 1, &bad), Err(FrameError::BadMac), "byte {i}");
        }
    }

    #[test]
    fn replayed_and_reordered_frames_are_refused() {
        let k = key(1);
        let (mut f1, mut f2) = (Vec::new(), Vec::new());
        encode(&k, 1, &data(1, b"a"), &mut f1);
        encode(&k, 2, &data(2, b"b"), &mut f2);
        // Reordered: frame 2 when 1 is expected.
        assert_eq!(decode(&k, 1, &f2), Err(FrameError::OutOfOrder { got: 2, expected: 1 }));
        // Replayed: frame 1 again once 2 is expected.
        assert_eq!(decode(&k, 2, &f1), Err(FrameError::Replayed { got: 1, expected: 2 }));
    }

    #[test]
    fn oversize_prefix_is_refused_before_buffering() {
        let mut bytes = ((BODY_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
        assert!(matches!(decode(&key(1), 1, &bytes), Err(FrameError::Oversize { .. })));
        bytes = u32::MAX.to_le_bytes().to_vec();
        assert!(matches!(decode(&key(1), 1, &bytes), Err(FrameError::Oversize { .. })));
        bytes = 3u32.to_le_bytes().to_vec();
        assert!(matches!(decode(&key(1), 1, &bytes), Err(FrameError::Undersize { .. })));
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let k = key(1);
        let mut out = Vec::new();
        encode(&k, 1, &data(1, b"some payload"), &mut out);
        for cut in 0..out.len() {
            assert_eq!(decode(&k, 1, &out[..cut]), Ok(None), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), seq in any::<u64>()) {
            let _ = decode(&key(3), seq, &bytes);
        }

        #[test]
        fn authentic_frames_with_mangled_length_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..64), len in any::<u32>()) {
            let mut out = Vec::new();
            encode(&key(3), 1, &data(1, &payload), &mut out);
            out[..4].copy_from_slice(&len.to_le_bytes());
            let _ = decode(&key(3), 1, &out);
        }
    }
}
