//! The reliability session with one peer: sequence numbers, the unacknowledged queue,
//! cumulative acks, resend after a reconnect, keepalive and silence deadlines.
//!
//! A session lives as long as both incarnations: connections come and go beneath it. While a
//! connection is up ([`Session::handle_established`] .. [`Session::handle_disconnect`]) it
//! decodes what arrives ([`Session::handle_bytes`]), and [`Session::poll_transmit`] encodes
//! what is due: messages not yet sent on this connection, an ack, a keepalive. A message stays
//! queued until the peer acknowledges it, so after a reconnect it is resent from the point the
//! peer reports in the handshake, and the receiver delivers each sequence number exactly once,
//! in order.
//!
//! Inputs: `handle_*`; commands: [`Session::send`], [`Session::handle_peer_incarnation`];
//! outputs: [`Session::poll_transmit`] (call it after every input), [`Session::next_deadline`]
//! (call [`Session::handle_timeout`] then).

use std::collections::VecDeque;

use super::frame::{self, Frame, FrameError, WIRE_FRAME_BYTES_MAX};
use super::handshake::DirectionKeys;
use super::FrameKey;
use crate::{FRAME_BYTES_MAX, UNACKED_BYTES_MAX, UNACKED_FRAMES_MAX};

/// Timing of a session (from [`crate::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Send a frame (an ack, if nothing else) at least this often.
    pub keepalive_ms: u64,
    /// Declare the connection dead when nothing arrived for this long.
    pub silence_ms: u64,
}

/// Why a message cannot be queued. The caller treats the link as broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The payload exceeds [`FRAME_BYTES_MAX`]: split it.
    #[error("payload of {len} bytes exceeds the maximum {FRAME_BYTES_MAX}")]
    TooLarge { len: usize },
    /// [`UNACKED_FRAMES_MAX`] or [`UNACKED_BYTES_MAX`] reached: the peer has not acknowledged
    /// for a long time; treat the link as broken (the membership layer decides).
    #[error("unacknowledged queue full ({frames} frames, {bytes} bytes)")]
    QueueFull { frames: usize, bytes: usize },
    /// The destination is not a listed peer (see `Interconnect::set_peers`).
    #[error("node {0} is not a listed peer")]
    UnknownPeer(u16),
}

/// Why the session dropped its connection; the driver closes it and reports this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// An authentic frame whose message number is not the next one (a peer bug).
    #[error("message seq {got}, expected {expected}")]
    Sequence { got: u64, expected: u64 },
    /// The peer acknowledged a message never sent (a peer bug).
    #[error("peer acknowledged seq {ack}, only {sent} sent")]
    AckUnsent { ack: u64, sent: u64 },
    /// At a reconnect the peer reported fewer messages received than it had acknowledged
    /// (lost state within one incarnation): resending is impossible, refuse the connection.
    #[error("peer reports {reported} received, but it had acknowledged {acked}")]
    ResumeBehind { reported: u64, acked: u64 },
    /// At a reconnect the peer reported more messages received than were sent.
    #[error("peer reports {reported} received, only {sent} sent")]
    ResumeAhead { reported: u64, sent: u64 },
    /// Nothing arrived for `silence_ms`.
    #[error("peer silent for {ms} ms")]
    Silent { ms: u64 },
}

/// One connection's state, alive from the handshake to the disconnect.
#[derive(Debug)]
struct Connection {
    send_key: FrameKey,
    recv_key: FrameKey,
    /// Counter of the next frame sent / expected on this connection.
    send_frame_seq: u64,
    recv_frame_seq: u64,
    /// The next message to put on this connection.
    next_transmit: u64,
    /// The last cumulative ack put on this connection (or told in the handshake).
    ack_sent: u64,
    /// Bytes of a frame not yet whole (at most one frame plus one read).
    recv_buf: Vec<u8>,
    last_heard_ms: u64,
    last_sent_ms: u64,
}

#[derive(Debug)]
enum Link {
    Down,
    Up(Box<Connection>),
}

/// The reliability session with one peer incarnation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    peer_incarnation: u64,
    /// Sequence number of the next message queued (messages are numbered from 1).
    next_seq: u64,
    /// Sent or not, awaiting the peer's ack, in order, consecutive seqs.
    unacked: VecDeque<(u64, Vec<u8>)>,
    unacked_bytes: usize,
    /// Messages received in order: the cumulative ack.
    received: u64,
    /// Received, not yet taken by [`Session::poll_delivery`] (at most one input's worth).
    delivered: VecDeque<Vec<u8>>,
    link: Link,
}

impl Session {
    /// A fresh session with `peer_incarnation`: nothing sent, nothing received.
    pub fn new(config: SessionConfig, peer_incarnation: u64) -> Session {
        assert!(config.keepalive_ms > 0 && config.keepalive_ms < config.silence_ms, "{config:?}");
        Session {
            config,
            peer_incarnation,
            next_seq: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            received: 0,
            delivered: VecDeque::new(),
            link: Link::Down,
        }
    }

    // Getters.

    pub fn peer_incarnation(&self) -> u64 {
        self.peer_incarnation
    }

    /// Messages received in order from the peer (what the handshake reports).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Messages queued and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    /// Up, and heard from within `silence_ms` of `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        match &self.link {
            Link::Up(c) => now_ms.saturating_sub(c.last_heard_ms) < self.config.silence_ms,
            Link::Down => false,
        }
    }

    /// Whether [`Session::poll_transmit`] has something to send other than a keepalive.
    pub fn wants_transmit(&self) -> bool {
        match &self.link {
            Link::Up(c) => c.next_transmit < self.next_seq || c.ack_sent < self.received,
            Link::Down => false,
        }
    }

    /// When to call [`Session::handle_timeout`] (keepalive or silence), if a connection is up.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.link {
            Link::Up(c) => {
                Some((c.last_sent_ms + self.config.keepalive_ms).min(c.last_heard_ms + self.config.silence_ms))
            }
            Link::Down => None,
        }
    }

    // Commands.

    /// Queues a message; it is sent when a connection is up and kept until acknowledged.
    /// Returns its sequence number.
    pub fn send(&mut self, payload: Vec<u8>) -> Result<u64, SendError> {
        if payload.len() > FRAME_BYTES_MAX {
            return Err(SendError::TooLarge { len: payload.len() });
        }
        if self.unacked.len() >= UNACKED_FRAMES_MAX || self.unacked_bytes + payload.len() > UNACKED_BYTES_MAX {
            return Err(SendError::QueueFull { frames: self.unacked.len(), bytes: self.unacked_bytes });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked_bytes += payload.len();
        self.unacked.push_back((seq, payload));
        Ok(seq)
    }

    /// The peer is now `incarnation` (as the membership layer learnt). If it changed, the
    /// session resets: queued messages are dropped (they were for the dead incarnation), the
    /// counters restart and the connection is dropped. Returns whether it reset.
    pub fn handle_peer_incarnation(&mut self, incarnation: u64) -> bool {
        if incarnation == self.peer_incarnation {
            return false;
        }
        *self = Session::new(self.config, incarnation);
        true
    }

    /// Whether a handshake reporting that the peer received `peer_received` of our messages
    /// can resume this session (what [`Session::handle_established`] will check): call it
    /// before confirming the handshake.
    pub fn check_resume(&self, peer_received: u64) -> Result<(), SessionError> {
        let sent = self.next_seq - 1;
        let acked = self.acked();
        if peer_received > sent {
            return Err(SessionError::ResumeAhead { reported: peer_received, sent });
        }
        if peer_received < acked {
            return Err(SessionError::ResumeBehind { reported: peer_received, acked });
        }
        Ok(())
    }

    // Inputs.

    /// A handshake completed on a new connection: the peer has received `peer_received` of our
    /// messages; resend from the next one. Refused (`Err`, the link stays down) when the
    /// peer's count is impossible for this incarnation pair.
    pub fn handle_established(
        &mut self,
        now_ms: u64,
        keys: &DirectionKeys,
        peer_received: u64,
    ) -> Result<(), SessionError> {
        self.check_resume(peer_received)?;
        self.release_acked(peer_received);
        self.link = Link::Up(Box::new(Connection {
            send_key: FrameKey::new(&keys.send),
            recv_key: FrameKey::new(&keys.recv),
            send_frame_seq: 1,
            recv_frame_seq: 1,
            next_transmit: peer_received + 1,
            ack_sent: self.received,
            recv_buf: Vec::new(),
            last_heard_ms: now_ms,
            last_sent_ms: now_ms,
        }));
        Ok(())
    }

    /// The connection closed (or the driver closed it). Queued messages stay for the next one.
    pub fn handle_disconnect(&mut self) {
        self.link = Link::Down;
    }

    /// Bytes arrived on the connection. The messages they complete are queued for
    /// [`Session::poll_delivery`], in order; drain it after every call, `Ok` or `Err` (the
    /// frames before a bad one are received, hence counted and acknowledged). On `Err` the
    /// connection is dropped (the link is down) and nothing from the bad frame on is delivered.
    /// Bytes while down are ignored.
    pub fn handle_bytes(&mut self, now_ms: u64, bytes: &[u8]) -> Result<(), SessionError> {
        let result = self.receive(now_ms, bytes);
        if result.is_err() {
            self.link = Link::Down;
        }
        result
    }

    fn receive(&mut self, now_ms: u64, bytes: &[u8]) -> Result<(), SessionError> {
        let sent = self.next_seq - 1;
        let Link::Up(conn) = &mut self.link else { return Ok(()) };
        conn.recv_buf.extend_from_slice(bytes);
        let mut acked = None;
        let mut at = 0;
        // Bounded: every iteration consumes at least one whole frame of the input.
        let outcome = loop {
            let frame = match frame::decode(&conn.recv_key, conn.recv_frame_seq, &conn.recv_buf[at..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(SessionError::from(e)),
            };
            let (frame, consumed) = frame;
            conn.recv_frame_seq += 1;
            conn.last_heard_ms = now_ms;
            let ack = match frame {
                Frame::Data { ack, seq, payload } => {
                    if seq != self.received + 1 {
                        break Err(SessionError::Sequence { got: seq, expected: self.received + 1 });
                    }
                    self.received = seq;
                    self.delivered.push_back(payload.to_vec());
                    ack
                }
                Frame::Ack { ack } => ack,
            };
            if ack > sent {
                break Err(SessionError::AckUnsent { ack, sent });
            }
            acked = Some(acked.map_or(ack, |a: u64| a.max(ack)));
            at += consumed;
        };
        conn.recv_buf.drain(..at);
        debug_assert!(conn.recv_buf.len() < WIRE_FRAME_BYTES_MAX + bytes.len());
        if let Some(ack) = acked {
            conn.next_transmit = conn.next_transmit.max(ack + 1);
            self.release_acked(ack);
        }
        outcome
    }

    /// Drops the connection if the peer has been silent for `silence_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), SessionError> {
        if let Link::Up(c) = &self.link {
            let silent_ms = now_ms.saturating_sub(c.last_heard_ms);
            if silent_ms >= self.config.silence_ms {
                self.link = Link::Down;
                return Err(SessionError::Silent { ms: silent_ms });
            }
        }
        Ok(())
    }

    // Outputs.

    /// The next message received, in order.
    pub fn poll_delivery(&mut self) -> Option<Vec<u8>> {
        self.delivered.pop_front()
    }

    /// Appends to `out` the frames due now: queued messages not yet on this connection (until
    /// `out` holds `bytes_max`), then an ack if one is owed or a keepalive if one is due.
    /// Returns the number of frames appended.
    pub fn poll_transmit(&mut self, now_ms: u64, out: &mut Vec<u8>, bytes_max: usize) -> usize {
        let Link::Up(conn) = &mut self.link else { return 0 };
        let mut frames = 0;
        let first_unacked = self.unacked.front().map_or(self.next_seq, |(seq, _)| *seq);
        // Bounded by the queue length and by bytes_max.
        while conn.next_transmit < self.next_seq && out.len() < bytes_max {
            let index = (conn.next_transmit - first_unacked) as usize;
            let (seq, payload) = &self.unacked[index];
            debug_assert_eq!(*seq, conn.next_transmit);
            let data = Frame::Data { ack: self.received, seq: *seq, payload };
            frame::encode(&conn.send_key, conn.send_frame_seq, &data, out);
            conn.send_frame_seq += 1;
            conn.next_transmit += 1;
            conn.ack_sent = self.received;
            frames += 1;
        }
        let keepalive_due = now_ms >= conn.last_sent_ms + self.config.keepalive_ms;
        if conn.ack_sent < self.received || (frames == 0 && keepalive_due) {
            frame::encode(&conn.send_key, conn.send_frame_seq, &Frame::Ack { ack: self.received }, out);
            conn.send_frame_seq += 1;
            conn.ack_sent = self.received;
            frames += 1;
        }
        if frames > 0 {
            conn.last_sent_ms = now_ms;
        }
        frames
    }

    // Internals.

    /// Every message up to this seq has been acknowledged.
    fn acked(&self) -> u64 {
        self.unacked.front().map_or(self.next_seq, |(seq, _)| *seq) - 1
    }

    fn release_acked(&mut self, ack: u64) {
        // Bounded by the queue length.
        while let Some((seq, payload)) = self.unacked.front() {
            if *seq > ack {
                break;
            }
            self.unacked_bytes -= payload.len();
            self.unacked.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: SessionConfig = SessionConfig { keepalive_ms: 100, silence_ms: 500 };
    const BATCH: usize = 64 * 1024;

    /// Keys of connection number `n` (fresh per connection, as the handshake makes them).
    fn keys(n: u8) -> (DirectionKeys, DirectionKeys) {
        let (x, y) = ([n; 32], [n.wrapping_add(100); 32]);
        (DirectionKeys { send: x, recv: y }, DirectionKeys { send: y, recv: x })
    }

    /// Connects `a` and `b` as the handshake would (each told the other's received count).
    fn connect(a: &mut Session, b: &mut Session, n: u8, now: u64) {
        let (ka, kb) = keys(n);
        let (ra, rb) = (a.received(), b.received());
        a.handle_established(now, &ka, rb).unwrap();
        b.handle_established(now, &kb, ra).unwrap();
    }

    fn transmit(from: &mut Session, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        from.poll_transmit(now, &mut out, BATCH);
        out
    }

    fn deliver(to: &mut Session, now: u64, bytes: &[u8]) -> (Vec<Vec<u8>>, Result<(), SessionError>) {
        let result = to.handle_bytes(now, bytes);
        (std::iter::from_fn(|| to.poll_delivery()).collect(), result)
    }

    /// Pumps both ways until quiet; returns what `b` delivered.
    fn pump(a: &mut Session, b: &mut Session, now: u64) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..100 {
            let ab = transmit(a, now);
            let (d, r) = deliver(b, now, &ab);
            r.unwrap();
            got.extend(d);
            let ba = transmit(b, now);
            deliver(a, now, &ba).1.unwrap();
            if ab.is_empty() && ba.is_empty() {
                return got;
            }
        }
        panic!("did not quiesce");
    }

    fn msg(i: u64) -> Vec<u8> {
        i.to_le_bytes().to_vec()
    }

    #[test]
    fn delivers_in_order_exactly_once_and_releases_on_ack() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        for i in 1..=100 {
            assert_eq!(a.send(msg(i)).unwrap(), i);
        }
        assert_eq!(pump(&mut a, &mut b, 0), (1..=100).map(msg).collect::<Vec<_>>());
        assert_eq!(a.unacked(), 0, "cumulative ack released the queue");
        assert_eq!(b.received(), 100);
    }

    #[test]
    fn resends_after_reconnect_exactly_once_in_order() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        for i in 1..=10 {
            a.send(msg(i)).unwrap();
        }
        let bytes = transmit(&mut a, 0);
        // The connection breaks after frame 5 reached b; b's ack never reaches a.
        let frame_bytes = bytes.len() / 10;
        let (got, result) = deliver(&mut b, 0, &bytes[..5 * frame_bytes + 3]);
        result.unwrap();
        assert_eq!(got, (1..=5).map(msg).collect::<Vec<_>>());
        a.handle_disconnect();
        b.handle_disconnect();
        assert_eq!(a.unacked(), 10);
        // Queued while down.
        a.send(msg(11)).unwrap();
        assert_eq!(transmit(&mut a, 1), Vec::<u8>::new(), "nothing is sent while down");
        connect(&mut a, &mut b, 2, 10);
        assert_eq!(a.unacked(), 6, "the handshake's received count released 1..=5");
        assert_eq!(pump(&mut a, &mut b, 10), (6..=11).map(msg).collect::<Vec<_>>());
        assert_eq!((a.unacked(), b.received()), (0, 11));
    }

    #[test]
    fn reconnect_that_would_duplicate_or_skip_is_refused() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        for i in 1..=4 {
            a.send(msg(i)).unwrap();
        }
        pump(&mut a, &mut b, 0);
        a.handle_disconnect();
        let (ka, _) = keys(2);
        assert_eq!(a.handle_established(5, &ka, 2), Err(SessionError::ResumeBehind { reported: 2, acked: 4 }));
        assert_eq!(a.handle_established(5, &ka, 5), Err(SessionError::ResumeAhead { reported: 5, sent: 4 }));
        assert!(!a.is_up());
    }

    #[test]
    fn out_of_sequence_message_is_refused() {
        // An authentic frame whose message number skips: never delivered.
        let (ka, kb) = keys(1);
        let mut b = Session::new(CONFIG, 1);
        b.handle_established(0, &kb, 0).unwrap();
        let mut out = Vec::new();
        frame::encode(&FrameKey::new(&ka.send), 1, &Frame::Data { ack: 0, seq: 2, payload: b"x" }, &mut out);
        let (got, result) = deliver(&mut b, 0, &out);
        assert!(got.is_empty());
        assert_eq!(result, Err(SessionError::Sequence { got: 2, expected: 1 }));
        assert!(!b.is_up());
    }

    #[test]
    fn frames_before_a_bad_one_are_delivered_the_bad_one_is_not() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        for i in 1..=3 {
            a.send(msg(i)).unwrap();
        }
        let mut bytes = transmit(&mut a, 0);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let (got, result) = deliver(&mut b, 0, &bytes);
        assert_eq!(got, vec![msg(1), msg(2)]);
        assert_eq!(result, Err(SessionError::Frame(FrameError::BadMac)));
        assert_eq!(b.received(), 2);
        assert!(!b.is_up());
    }

    #[test]
    fn replayed_bytes_are_refused() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        a.send(msg(1)).unwrap();
        let bytes = transmit(&mut a, 0);
        assert_eq!(deliver(&mut b, 0, &bytes).0, vec![msg(1)]);
        let (got, result) = deliver(&mut b, 0, &bytes);
        assert!(got.is_empty());
        assert_eq!(result, Err(SessionError::Frame(FrameError::Replayed { got: 1, expected: 2 })));
    }

    #[test]
    fn old_connection_frames_fail_on_a_new_connection() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        a.send(msg(1)).unwrap();
        let old = transmit(&mut a, 0);
        a.handle_disconnect();
        b.handle_disconnect();
        connect(&mut a, &mut b, 2, 0);
        let (got, result) = deliver(&mut b, 0, &old);
        assert!(got.is_empty());
        assert_eq!(result, Err(SessionError::Frame(FrameError::BadMac)));
    }

    #[test]
    fn queue_is_bounded_by_frames_and_bytes() {
        let mut a = Session::new(CONFIG, 2);
        for _ in 0..UNACKED_FRAMES_MAX {
            a.send(Vec::new()).unwrap();
        }
        assert!(matches!(a.send(Vec::new()), Err(SendError::QueueFull { .. })));
        let mut a = Session::new(CONFIG, 2);
        let mut sent = 0;
        while a.send(vec![0; FRAME_BYTES_MAX]).is_ok() {
            sent += 1;
            assert!(sent <= UNACKED_BYTES_MAX / FRAME_BYTES_MAX);
        }
        assert_eq!(sent, UNACKED_BYTES_MAX / FRAME_BYTES_MAX);
        assert_eq!(a.send(vec![0; FRAME_BYTES_MAX + 1]), Err(SendError::TooLarge { len: FRAME_BYTES_MAX + 1 }));
    }

    #[test]
    fn new_peer_incarnation_resets_the_session() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        a.send(msg(1)).unwrap();
        b.send(msg(1)).unwrap();
        pump(&mut a, &mut b, 0);
        a.send(msg(2)).unwrap();
        assert!(!a.handle_peer_incarnation(2), "same incarnation: no reset");
        assert!(a.is_up());
        assert!(a.handle_peer_incarnation(3));
        assert_eq!((a.peer_incarnation(), a.unacked(), a.received(), a.is_up()), (3, 0, 0, false));
        assert_eq!(a.send(msg(1)).unwrap(), 1, "numbering restarts");
        // The restarted peer starts from scratch too.
        let mut b = Session::new(CONFIG, 1);
        connect(&mut a, &mut b, 2, 0);
        assert_eq!(pump(&mut a, &mut b, 0), vec![msg(1)]);
    }

    #[test]
    fn keepalive_and_silence_deadlines() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 1000);
        assert_eq!(a.next_deadline(), Some(1100));
        assert!(transmit(&mut a, 1099).is_empty(), "no keepalive before it is due");
        let keepalive = transmit(&mut a, 1100);
        assert!(!keepalive.is_empty());
        deliver(&mut b, 1100, &keepalive).1.unwrap();
        assert!(b.is_live(1599));
        assert_eq!(b.handle_timeout(1599), Ok(()));
        assert!(!b.is_live(1600));
        assert_eq!(b.handle_timeout(1600), Err(SessionError::Silent { ms: 500 }));
        assert!(!b.is_up());
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn ack_for_unsent_message_is_refused() {
        let (ka, kb) = keys(1);
        let mut b = Session::new(CONFIG, 1);
        b.handle_established(0, &kb, 0).unwrap();
        let mut out = Vec::new();
        frame::encode(&FrameKey::new(&ka.send), 1, &Frame::Ack { ack: 1 }, &mut out);
        assert_eq!(deliver(&mut b, 0, &out).1, Err(SessionError::AckUnsent { ack: 1, sent: 0 }));
    }

    #[test]
    fn transmit_respects_the_batch_bound_and_resumes() {
        let (mut a, mut b) = (Session::new(CONFIG, 2), Session::new(CONFIG, 1));
        connect(&mut a, &mut b, 1, 0);
        for i in 1..=10 {
            a.send(vec![i as u8; 1000]).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(a.poll_transmit(0, &mut out, 2500), 3);
        assert_eq!(deliver(&mut b, 0, &out).0.len(), 3);
        assert_eq!(pump(&mut a, &mut b, 0).len(), 7);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_session(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..5)) {
            let mut b = Session::new(CONFIG, 1);
            b.handle_established(0, &keys(1).1, 0).unwrap();
            for chunk in &chunks {
                let _ = b.handle_bytes(0, chunk);
                while b.poll_delivery().is_some() {}
            }
        }
    }
}
