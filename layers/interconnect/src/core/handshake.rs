//! The handshake: four fixed-size messages, a challenge-response on the cluster key.
//!
//! The node with the lower id dials (the *dialer*), the other accepts (the *acceptor*).
//! Every message starts with `magic "SDCI"`, `version u8 = 1`, `kind u8`; integers are
//! little-endian.
//!
//! ```text
//! 1 Hello     dialer -> acceptor, 74 bytes: magic, version, kind 1, cluster_uuid [16],
//!             dialer u16, acceptor u16, dialer_incarnation u64,
//!             acceptor_incarnation u64 (the one the dialer was told), dialer_nonce [32]
//! 2 Challenge acceptor -> dialer, 46 bytes: magic, version, kind 2,
//!             acceptor_incarnation u64, acceptor_nonce [32]
//! 3 Auth      dialer -> acceptor, 46 bytes: magic, version, kind 3, dialer_received u64,
//!             tag [32] = HMAC(cluster_key, "sdc-interconnect/1 auth" | Hello | Challenge | Auth[..14])
//! 4 Accept    acceptor -> dialer, 46 bytes: magic, version, kind 4, acceptor_received u64,
//!             tag [32] = HMAC(cluster_key, "sdc-interconnect/1 accept" | Hello | Challenge | Auth | Accept[..14])
//! ```
//!
//! The acceptor checks the Hello (version, cluster uuid, addressed to it, a listed peer with a
//! lower id, the incarnations it was told) before it answers, and computes no MAC for anyone
//! until the dialer has proven the key (no oracle for strangers). Each tag covers the whole
//! transcript, so both nonces, both ids, both incarnations and the cluster uuid are bound. The
//! `*_received` fields are each side's count of messages received in order from the other in
//! this incarnation pair: the sender resends everything after it.
//!
//! Direction keys, fresh for every connection:
//! `key(x -> y) = HMAC(cluster_key, "sdc-interconnect/1 frames" | cluster_uuid | x u16 | y u16 |
//! incarnation(x) u64 | incarnation(y) u64 | dialer_nonce | acceptor_nonce)`.

use super::mac::{hmac, hmac_verify};

/// The first four bytes of every handshake message.
pub const MAGIC: [u8; 4] = *b"SDCI";
/// The protocol version this crate speaks; a peer with another is refused.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 32;

const PREFIX_BYTES: usize = 6;
const KIND_HELLO: u8 = 1;
const KIND_CHALLENGE: u8 = 2;
const KIND_AUTH: u8 = 3;
const KIND_ACCEPT: u8 = 4;
const HELLO_BYTES: usize = PREFIX_BYTES + 16 + 2 + 2 + 8 + 8 + NONCE_BYTES;
const CHALLENGE_BYTES: usize = PREFIX_BYTES + 8 + NONCE_BYTES;
const AUTH_BYTES: usize = PREFIX_BYTES + 8 + 32;
const ACCEPT_BYTES: usize = PREFIX_BYTES + 8 + 32;
/// The largest handshake message: what a role buffers at most.
pub const HANDSHAKE_MESSAGE_BYTES_MAX: usize = HELLO_BYTES;
const LABEL_AUTH: &[u8] = b"sdc-interconnect/1 auth";
const LABEL_ACCEPT: &[u8] = b"sdc-interconnect/1 accept";
const LABEL_FRAMES: &[u8] = b"sdc-interconnect/1 frames";

const _: () = assert!(HELLO_BYTES >= CHALLENGE_BYTES && HELLO_BYTES >= AUTH_BYTES && HELLO_BYTES >= ACCEPT_BYTES);

/// What a node proves and binds: the cluster, its key, its id and its incarnation.
#[derive(Clone)]
pub struct Identity {
    pub cluster_uuid: [u8; 16],
    pub cluster_key: [u8; 32],
    pub node: u16,
    pub incarnation: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_uuid", &self.cluster_uuid)
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

/// The keys of one connection: `send` MACs what this node sends, `recv` what it receives.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectionKeys(..)")
    }
}

/// A completed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    pub peer: u16,
    pub peer_incarnation: u64,
    pub keys: DirectionKeys,
    /// Messages the peer has received in order from this node: resend those after it.
    pub peer_received: u64,
    /// Bytes that followed the last handshake message (frames already sent): feed them to the
    /// session first.
    pub rest: Vec<u8>,
}

/// Why a handshake was refused. Nothing the peer sent is acted on; the driver closes the
/// connection and reports the reason with the peer's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not the interconnect protocol (bad magic)")]
    BadMagic,
    #[error("protocol version {got}, this node speaks {PROTOCOL_VERSION}")]
    Version { got: u8 },
    #[error("unexpected handshake message kind {got}, expected {expected}")]
    UnexpectedKind { got: u8, expected: u8 },
    #[error("peer belongs to another cluster (uuid mismatch)")]
    ClusterUuid,
    #[error("hello addressed to node {to}, this is node {me}")]
    NotAddressedToMe { to: u16, me: u16 },
    #[error("node {0} is not a listed peer")]
    UnknownNode(u16),
    #[error("node {node} dialed node {me}: the lower id dials, so only lower ids may dial here")]
    WrongRole { node: u16, me: u16 },
    #[error("node {node} is incarnation {got}, expected {expected} (stale or restarted)")]
    StaleIncarnation { node: u16, got: u64, expected: u64 },
    #[error("peer expects this node's incarnation {expected}, it is {mine}")]
    MyIncarnation { expected: u64, mine: u64 },
    #[error("handshake MAC does not match (wrong cluster key or tampered)")]
    BadMac,
    #[error("unexpected bytes during the handshake")]
    UnexpectedBytes,
    #[error("handshake already over")]
    Finished,
}

/// The dialer's states; each holds what the next message needs.
enum DialerState {
    AwaitChallenge,
    AwaitAccept { acceptor_nonce: [u8; NONCE_BYTES] },
    Done,
}

/// The dialing side of the handshake.
pub struct Dialer {
    me: Identity,
    peer: u16,
    peer_incarnation: u64,
    nonce: [u8; NONCE_BYTES],
    received: u64,
    transcript: Vec<u8>,
    buf: Vec<u8>,
    state: DialerState,
}

/// What the dialer wants next.
#[derive(Debug)]
pub enum DialerStep {
    /// Read more bytes.
    NeedMore,
    /// Send these bytes (the Auth), then read more.
    Send(Vec<u8>),
    /// Done: the connection carries frames from now on.
    Established(Established),
}

impl Dialer {
    /// Starts a handshake with `peer`, which this node was told is `peer_incarnation`;
    /// `received` is what this node has received in order from it. Returns the Hello to send.
    pub fn new(
        me: Identity,
        peer: u16,
        peer_incarnation: u64,
        received: u64,
        nonce: [u8; NONCE_BYTES],
    ) -> (Dialer, Vec<u8>) {
        let mut hello = Vec::with_capacity(HELLO_BYTES);
        hello.extend_from_slice(&MAGIC);
        hello.push(PROTOCOL_VERSION);
        hello.push(KIND_HELLO);
        hello.extend_from_slice(&me.cluster_uuid);
        hello.extend_from_slice(&me.node.to_le_bytes());
        hello.extend_from_slice(&peer.to_le_bytes());
        hello.extend_from_slice(&me.incarnation.to_le_bytes());
        hello.extend_from_slice(&peer_incarnation.to_le_bytes());
        hello.extend_from_slice(&nonce);
        debug_assert_eq!(hello.len(), HELLO_BYTES);
        let dialer = Dialer {
            me,
            peer,
            peer_incarnation,
            nonce,
            received,
            transcript: hello.clone(),
            buf: Vec::new(),
            state: DialerState::AwaitChallenge,
        };
        (dialer, hello)
    }

    /// Feeds bytes read from the connection.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<DialerStep, HandshakeError> {
        let result = self.step(input);
        if result.is_err() {
            self.state = DialerState::Done;
        }
        result
    }

    fn step(&mut self, input: &[u8]) -> Result<DialerStep, HandshakeError> {
        self.buf.extend_from_slice(input);
        match self.state {
            DialerState::AwaitChallenge => {
                let Some(challenge) = take_message(&self.buf, KIND_CHALLENGE, CHALLENGE_BYTES, false)? else {
                    return Ok(DialerStep::NeedMore);
                };
                let incarnation = u64_at(challenge, PREFIX_BYTES);
                if incarnation != self.peer_incarnation {
                    return Err(HandshakeError::StaleIncarnation {
                        node: self.peer,
                        got: incarnation,
                        expected: self.peer_incarnation,
                    });
                }
                let mut acceptor_nonce = [0u8; NONCE_BYTES];
                acceptor_nonce.copy_from_slice(&challenge[PREFIX_BYTES + 8..]);
                self.transcript.extend_from_slice(challenge);
                self.buf.clear();
                let mut auth = prefix(KIND_AUTH);
                auth.extend_from_slice(&self.received.to_le_bytes());
                let tag = hmac(&self.me.cluster_key, &[LABEL_AUTH, &self.transcript, &auth]);
                auth.extend_from_slice(&tag);
                self.transcript.extend_from_slice(&auth);
                self.state = DialerState::AwaitAccept { acceptor_nonce };
                Ok(DialerStep::Send(auth))
            }
            DialerState::AwaitAccept { acceptor_nonce } => {
                let Some(accept) = take_message(&self.buf, KIND_ACCEPT, ACCEPT_BYTES, true)? else {
                    return Ok(DialerStep::NeedMore);
                };
                let (body, tag) = accept.split_at(PREFIX_BYTES + 8);
                if !hmac_verify(&self.me.cluster_key, &[LABEL_ACCEPT, &self.transcript, body], tag) {
                    return Err(HandshakeError::BadMac);
                }
                let peer_received = u64_at(accept, PREFIX_BYTES);
                let rest = self.buf[ACCEPT_BYTES..].to_vec();
                let keys = derive_keys(&self.me, self.peer, self.peer_incarnation, &self.nonce, &acceptor_nonce);
                self.state = DialerState::Done;
                Ok(DialerStep::Established(Established {
                    peer: self.peer,
                    peer_incarnation: self.peer_incarnation,
                    keys,
                    peer_received,
                    rest,
                }))
            }
            DialerState::Done => Err(HandshakeError::Finished),
        }
    }
}

/// The acceptor's states.
enum AcceptorState {
    AwaitHello,
    AwaitAuth { peer: u16, peer_incarnation: u64, dialer_nonce: [u8; NONCE_BYTES] },
    Authenticated { peer: u16, peer_incarnation: u64, dialer_nonce: [u8; NONCE_BYTES], peer_received: u64 },
    Done,
}

/// The accepting side of the handshake.
pub struct Acceptor {
    me: Identity,
    nonce: [u8; NONCE_BYTES],
    transcript: Vec<u8>,
    buf: Vec<u8>,
    state: AcceptorState,
}

/// What the acceptor wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptorStep {
    /// Read more bytes.
    NeedMore,
    /// Send these bytes (the Challenge), then read more.
    Send(Vec<u8>),
    /// The dialer proved the key: call [`Acceptor::finish`] with this node's received count
    /// for `peer`.
    Authenticated { peer: u16, peer_incarnation: u64, peer_received: u64 },
}

impl Acceptor {
    /// Waits for a Hello; `nonce` is this connection's fresh random nonce.
    pub fn new(me: Identity, nonce: [u8; NONCE_BYTES]) -> Acceptor {
        Acceptor { me, nonce, transcript: Vec::new(), buf: Vec::new(), state: AcceptorState::AwaitHello }
    }

    /// Feeds bytes read from the connection. `expected_incarnation(node)` is the incarnation
    /// this node was told `node` is, or `None` if `node` is not a listed peer.
    pub fn handle_bytes(
        &mut self,
        input: &[u8],
        expected_incarnation: impl FnOnce(u16) -> Option<u64>,
    ) -> Result<AcceptorStep, HandshakeError> {
        let result = self.step(input, expected_incarnation);
        if result.is_err() {
            self.state = AcceptorState::Done;
        }
        result
    }

    fn step(
        &mut self,
        input: &[u8],
        expected_incarnation: impl FnOnce(u16) -> Option<u64>,
    ) -> Result<AcceptorStep, HandshakeError> {
        self.buf.extend_from_slice(input);
        match self.state {
            AcceptorState::AwaitHello => {
                let Some(hello) = take_message(&self.buf, KIND_HELLO, HELLO_BYTES, false)? else {
                    return Ok(AcceptorStep::NeedMore);
                };
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(&hello[PREFIX_BYTES..PREFIX_BYTES + 16]);
                let at = PREFIX_BYTES + 16;
                let dialer = u16::from_le_bytes([hello[at], hello[at + 1]]);
                let to = u16::from_le_bytes([hello[at + 2], hello[at + 3]]);
                let dialer_incarnation = u64_at(hello, at + 4);
                let my_incarnation = u64_at(hello, at + 12);
                let mut dialer_nonce = [0u8; NONCE_BYTES];
                dialer_nonce.copy_from_slice(&hello[at + 20..]);
                if uuid != self.me.cluster_uuid {
                    return Err(HandshakeError::ClusterUuid);
                }
                if to != self.me.node {
                    return Err(HandshakeError::NotAddressedToMe { to, me: self.me.node });
                }
                let expected = expected_incarnation(dialer).ok_or(HandshakeError::UnknownNode(dialer))?;
                if dialer >= self.me.node {
                    return Err(HandshakeError::WrongRole { node: dialer, me: self.me.node });
                }
                if dialer_incarnation != expected {
                    return Err(HandshakeError::StaleIncarnation { node: dialer, got: dialer_incarnation, expected });
                }
                if my_incarnation != self.me.incarnation {
                    return Err(HandshakeError::MyIncarnation { expected: my_incarnation, mine: self.me.incarnation });
                }
                self.transcript.extend_from_slice(hello);
                self.buf.clear();
                let mut challenge = prefix(KIND_CHALLENGE);
                challenge.extend_from_slice(&self.me.incarnation.to_le_bytes());
                challenge.extend_from_slice(&self.nonce);
                self.transcript.extend_from_slice(&challenge);
                self.state =
                    AcceptorState::AwaitAuth { peer: dialer, peer_incarnation: dialer_incarnation, dialer_nonce };
                Ok(AcceptorStep::Send(challenge))
            }
            AcceptorState::AwaitAuth { peer, peer_incarnation, dialer_nonce } => {
                let Some(auth) = take_message(&self.buf, KIND_AUTH, AUTH_BYTES, false)? else {
                    return Ok(AcceptorStep::NeedMore);
                };
                let (body, tag) = auth.split_at(PREFIX_BYTES + 8);
                if !hmac_verify(&self.me.cluster_key, &[LABEL_AUTH, &self.transcript, body], tag) {
                    return Err(HandshakeError::BadMac);
                }
                let peer_received = u64_at(auth, PREFIX_BYTES);
                self.transcript.extend_from_slice(auth);
                self.buf.clear();
                self.state = AcceptorState::Authenticated { peer, peer_incarnation, dialer_nonce, peer_received };
                Ok(AcceptorStep::Authenticated { peer, peer_incarnation, peer_received })
            }
            AcceptorState::Authenticated { .. } => {
                // The dialer sends nothing until it has the Accept.
                Err(HandshakeError::UnexpectedBytes)
            }
            AcceptorState::Done => Err(HandshakeError::Finished),
        }
    }

    /// Completes an authenticated handshake: `received` is what this node has received in
    /// order from the peer. Returns the Accept to send (before any frame) and the session keys.
    pub fn finish(&mut self, received: u64) -> Result<(Vec<u8>, Established), HandshakeError> {
        let AcceptorState::Authenticated { peer, peer_incarnation, dialer_nonce, peer_received } = self.state else {
            return Err(HandshakeError::Finished);
        };
        let mut accept = prefix(KIND_ACCEPT);
        accept.extend_from_slice(&received.to_le_bytes());
        let tag = hmac(&self.me.cluster_key, &[LABEL_ACCEPT, &self.transcript, &accept]);
        accept.extend_from_slice(&tag);
        let keys = derive_keys(&self.me, peer, peer_incarnation, &dialer_nonce, &self.nonce);
        self.state = AcceptorState::Done;
        Ok((accept, Established { peer, peer_incarnation, keys, peer_received, rest: Vec::new() }))
    }
}

/// The message of `kind` and `size` at the start of `buf`, once whole. Checks the magic and the
/// version as soon as they have arrived. `trailing_allowed`: bytes after it are frames.
fn take_message(buf: &[u8], kind: u8, size: usize, trailing_allowed: bool) -> Result<Option<&[u8]>, HandshakeError> {
    let magic_len = buf.len().min(MAGIC.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Err(HandshakeError::BadMagic);
    }
    if let Some(&version) = buf.get(4) {
        if version != PROTOCOL_VERSION {
            return Err(HandshakeError::Version { got: version });
        }
    }
    if let Some(&got) = buf.get(5) {
        if got != kind {
            return Err(HandshakeError::UnexpectedKind { got, expected: kind });
        }
    }
    if buf.len() < size {
        return Ok(None);
    }
    if buf.len() > size && !trailing_allowed {
        return Err(HandshakeError::UnexpectedBytes);
    }
    Ok(Some(&buf[..size]))
}

fn prefix(kind: u8) -> Vec<u8> {
    let mut message = Vec::with_capacity(HANDSHAKE_MESSAGE_BYTES_MAX);
    message.extend_from_slice(&MAGIC);
    message.push(PROTOCOL_VERSION);
    message.push(kind);
    message
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The two direction keys of a connection, seen from `me`.
fn derive_keys(
    me: &Identity,
    peer: u16,
    peer_incarnation: u64,
    dialer_nonce: &[u8; NONCE_BYTES],
    acceptor_nonce: &[u8; NONCE_BYTES],
) -> DirectionKeys {
    let key = |from: u16, to: u16, from_incarnation: u64, to_incarnation: u64| {
        hmac(
            &me.cluster_key,
            &[
                LABEL_FRAMES,
                &me.cluster_uuid,
                &from.to_le_bytes(),
                &to.to_le_bytes(),
                &from_incarnation.to_le_bytes(),
                &to_incarnation.to_le_bytes(),
                dialer_nonce,
                acceptor_nonce,
            ],
        )
    };
    DirectionKeys {
        send: key(me.node, peer, me.incarnation, peer_incarnation),
        recv: key(peer, me.node, peer_incarnation, me.incarnation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: [u8; 16] = [7; 16];
    const KEY: [u8; 32] = [9; 32];

    fn id(node: u16, incarnation: u64) -> Identity {
        Identity { cluster_uuid: UUID, cluster_key: KEY, node, incarnation }
    }

    /// Runs a handshake between dialer `d` (told the acceptor is `a_told`) and acceptor `a`
    /// (told the dialer is `d_told`), passing each message through `tamper(message_index, bytes)`.
    fn run(
        d: Identity,
        a: Identity,
        a_told: u64,
        d_told: Option<u64>,
        mut tamper: impl FnMut(usize, &mut Vec<u8>),
    ) -> Result<(Established, Established), HandshakeError> {
        let (mut dialer, mut hello) = Dialer::new(d.clone(), a.node, a_told, 11, [1; 32]);
        let mut acceptor = Acceptor::new(a, [2; 32]);
        tamper(0, &mut hello);
        let AcceptorStep::Send(mut challenge) = acceptor.handle_bytes(&hello, |_| d_told)? else {
            panic!("no challenge")
        };
        tamper(1, &mut challenge);
        let DialerStep::Send(mut auth) = dialer.handle_bytes(&challenge)? else { panic!("no auth") };
        tamper(2, &mut auth);
        let step = acceptor.handle_bytes(&auth, |_| panic!("asked twice"))?;
        assert_eq!(
            step,
            AcceptorStep::Authenticated { peer: d.node, peer_incarnation: d.incarnation, peer_received: 11 }
        );
        let (mut accept, on_acceptor) = acceptor.finish(22)?;
        tamper(3, &mut accept);
        accept.extend_from_slice(b"first frame bytes");
        let DialerStep::Established(on_dialer) = dialer.handle_bytes(&accept)? else { panic!("not established") };
        Ok((on_dialer, on_acceptor))
    }

    fn none(_: usize, _: &mut Vec<u8>) {}

    #[test]
    fn good_handshake_agrees_on_keys_and_resume_points() {
        let (d, a) = run(id(1, 100), id(2, 200), 200, Some(100), none).unwrap();
        assert_eq!((d.peer, d.peer_incarnation, d.peer_received), (2, 200, 22));
        assert_eq!((a.peer, a.peer_incarnation, a.peer_received), (1, 100, 11));
        assert_eq!(d.keys.send, a.keys.recv);
        assert_eq!(d.keys.recv, a.keys.send);
        assert_ne!(d.keys.send, d.keys.recv, "one key per direction");
        assert_eq!(d.rest, b"first frame bytes");
        assert!(a.rest.is_empty());
    }

    #[test]
    fn keys_are_fresh_per_connection() {
        let (first, _) = run(id(1, 100), id(2, 200), 200, Some(100), none).unwrap();
        let (mut dialer, hello) = Dialer::new(id(1, 100), 2, 200, 0, [3; 32]);
        let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
        let AcceptorStep::Send(challenge) = acceptor.handle_bytes(&hello, |_| Some(100)).unwrap() else { panic!() };
        let DialerStep::Send(auth) = dialer.handle_bytes(&challenge).unwrap() else { panic!() };
        acceptor.handle_bytes(&auth, |_| None).unwrap();
        let (accept, second) = acceptor.finish(0).unwrap();
        assert!(matches!(dialer.handle_bytes(&accept), Ok(DialerStep::Established(_))));
        assert_ne!(first.keys.send, second.keys.recv);
    }

    #[test]
    fn wrong_key_is_refused_by_the_acceptor() {
        let mut stranger = id(1, 100);
        stranger.cluster_key = [8; 32];
        assert_eq!(run(stranger, id(2, 200), 200, Some(100), none).unwrap_err(), HandshakeError::BadMac);
    }

    #[test]
    fn acceptor_with_wrong_key_is_refused_by_the_dialer() {
        // The dialer cannot tell a wrong-keyed acceptor from a right one until the Accept:
        // the acceptor already fails the Auth, so build the Accept by hand with the wrong key.
        let mut impostor = id(2, 200);
        impostor.cluster_key = [8; 32];
        let (mut dialer, hello) = Dialer::new(id(1, 100), 2, 200, 0, [1; 32]);
        let mut acceptor = Acceptor::new(impostor, [2; 32]);
        let AcceptorStep::Send(challenge) = acceptor.handle_bytes(&hello, |_| Some(100)).unwrap() else { panic!() };
        let DialerStep::Send(auth) = dialer.handle_bytes(&challenge).unwrap() else { panic!() };
        assert_eq!(acceptor.handle_bytes(&auth, |_| None), Err(HandshakeError::BadMac));
        let mut transcript = hello.clone();
        transcript.extend_from_slice(&challenge);
        transcript.extend_from_slice(&auth);
        let mut accept = prefix(KIND_ACCEPT);
        accept.extend_from_slice(&0u64.to_le_bytes());
        let tag = hmac(&[8; 32], &[LABEL_ACCEPT, &transcript, &accept]);
        accept.extend_from_slice(&tag);
        assert_eq!(dialer.handle_bytes(&accept).unwrap_err(), HandshakeError::BadMac);
    }

    #[test]
    fn wrong_cluster_uuid_is_refused() {
        let mut other = id(1, 100);
        other.cluster_uuid = [6; 16];
        assert_eq!(run(other, id(2, 200), 200, Some(100), none).unwrap_err(), HandshakeError::ClusterUuid);
    }

    #[test]
    fn stale_incarnations_are_refused_both_ways() {
        // The dialer restarted (101) but the acceptor was told 100.
        assert_eq!(
            run(id(1, 101), id(2, 200), 200, Some(100), none).unwrap_err(),
            HandshakeError::StaleIncarnation { node: 1, got: 101, expected: 100 }
        );
        // The dialer was told the acceptor's previous incarnation.
        assert_eq!(
            run(id(1, 100), id(2, 200), 199, Some(100), none).unwrap_err(),
            HandshakeError::MyIncarnation { expected: 199, mine: 200 }
        );
    }

    #[test]
    fn unknown_node_and_wrong_role_are_refused() {
        assert_eq!(run(id(1, 100), id(2, 200), 200, None, none).unwrap_err(), HandshakeError::UnknownNode(1));
        assert_eq!(
            run(id(3, 100), id(2, 200), 200, Some(100), none).unwrap_err(),
            HandshakeError::WrongRole { node: 3, me: 2 }
        );
    }

    #[test]
    fn every_tampered_byte_fails_the_handshake() {
        for message in 0..4 {
            for byte in 0..HELLO_BYTES {
                let mut hit = false;
                let result = run(id(1, 100), id(2, 200), 200, Some(100), |i, bytes| {
                    if i == message && byte < bytes.len() {
                        bytes[byte] ^= 0x20;
                        hit = true;
                    }
                });
                if hit {
                    assert!(result.is_err(), "message {message} byte {byte} tampered yet accepted");
                }
            }
        }
    }

    #[test]
    fn other_protocols_and_versions_are_refused_early() {
        let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
        assert_eq!(acceptor.handle_bytes(b"GET / HTTP/1.1\r\n", |_| Some(1)), Err(HandshakeError::BadMagic));
        let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
        assert_eq!(acceptor.handle_bytes(b"SDCI\x02", |_| Some(1)), Err(HandshakeError::Version { got: 2 }));
        let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
        assert_eq!(acceptor.handle_bytes(b"SDC", |_| Some(1)), Ok(AcceptorStep::NeedMore));
        let (_, mut hello) = Dialer::new(id(1, 100), 2, 200, 0, [1; 32]);
        hello.push(0);
        let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
        assert_eq!(acceptor.handle_bytes(&hello, |_| Some(100)), Err(HandshakeError::UnexpectedBytes));
    }

    #[test]
    fn hello_split_across_reads_is_reassembled() {
        let (_, hello) = Dialer::new(id(1, 100), 2, 200, 0, [1; 32]);
        let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
        for byte in &hello[..hello.len() - 1] {
            assert_eq!(acceptor.handle_bytes(std::slice::from_ref(byte), |_| Some(100)), Ok(AcceptorStep::NeedMore));
        }
        assert!(matches!(acceptor.handle_bytes(&hello[hello.len() - 1..], |_| Some(100)), Ok(AcceptorStep::Send(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_either_role(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..4)) {
            let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
            let (mut dialer, _) = Dialer::new(id(1, 100), 2, 200, 0, [1; 32]);
            for chunk in &chunks {
                let _ = acceptor.handle_bytes(chunk, |_| Some(100));
                let _ = dialer.handle_bytes(chunk);
            }
        }

        #[test]
        fn hello_with_arbitrary_body_never_panics(body in proptest::collection::vec(any::<u8>(), HELLO_BYTES - PREFIX_BYTES)) {
            let mut hello = prefix(KIND_HELLO);
            hello.extend_from_slice(&body);
            let mut acceptor = Acceptor::new(id(2, 200), [2; 32]);
            let _ = acceptor.handle_bytes(&hello, |_| Some(100));
        }
    }
}
