//! The interconnect: the authenticated node-to-node transport beneath the distributed lock
//! manager (DESIGN.md section 11). It knows nothing of locks: a payload is an opaque
//! `Vec<u8>`, delivered to the peer exactly once and in order for as long as both daemon
//! incarnations live, across reconnects.
//!
//! # Main types
//!
//! - [`Interconnect`]: the driver. [`Interconnect::start`] binds the listener and returns the
//!   [`Event`] channel; [`Interconnect::set_peers`] names the nodes to keep links with (with
//!   their current incarnations and `host[:port]` endpoints); [`Interconnect::send`] queues a
//!   payload without blocking; [`Interconnect::reachable`] lists the peers heard from within
//!   `silence_ms`; [`Interconnect::shutdown`] closes everything.
//! - The sans-IO core under [`core`]: [`core::handshake`] ([`core::handshake::Dialer`],
//!   [`core::handshake::Acceptor`]), [`core::frame`] (the codec), [`core::session`]
//!   ([`core::session::Session`]: sequence numbers, the unacknowledged queue, acks, resend,
//!   keepalive and silence). No sockets, clocks or randomness inside: a simulator can run it.
//! - [`testing::loopback`]: n nodes on 127.0.0.1 wired to each other, for the tests and
//!   benchmarks of other crates.
//!
//! # Links
//!
//! Exactly one TCP connection per pair: the node with the **lower id dials**, the higher one
//! accepts (and refuses a handshake from a higher id). A fixed role means two nodes never
//! dial each other at once, so there is no crossing-connections race to break and no
//! duplicate link; the dialer only redials once it considers the old connection dead, so the
//! acceptor always keeps the newest authenticated connection and closes the older one.
//! Redials back off from 50 ms, doubling to 1 s. TCP_NODELAY is on; frames queued together go
//! out in one `write`.
//!
//! # Wire format, version 1
//!
//! All integers are little-endian. The handshake ([`core::handshake`]) is four fixed-size
//! messages, each opening with `"SDCI"`, a version byte ([`PROTOCOL_VERSION`] = 1: any other
//! is refused) and a kind byte:
//!
//! ```text
//! Hello     D->A  74 B  uuid[16] dialer u16 acceptor u16 inc_D u64 inc_A(as told) u64 nonce_D[32]
//! Challenge A->D  46 B  inc_A u64 nonce_A[32]
//! Auth      D->A  46 B  received_D u64 HMAC(K, "sdc-interconnect/1 auth"   | Hello | Challenge | Auth head)
//! Accept    A->D  46 B  received_A u64 HMAC(K, "sdc-interconnect/1 accept" | ...  | Auth | Accept head)
//! ```
//!
//! `K` is the 32-byte cluster key. The acceptor checks cluster uuid, addressee, that the
//! dialer is a listed peer with a lower id, and both incarnations against what it was told,
//! before it answers; it computes no MAC for anyone who has not proven the key. `received_X`
//! is the number of messages X has received in order from the other in this incarnation
//! pair: each side resends the rest. Per-connection, per-direction keys:
//! `key(x->y) = HMAC(K, "sdc-interconnect/1 frames" | uuid | x | y | inc_x | inc_y | nonce_D | nonce_A)`.
//!
//! Then frames ([`core::frame`]), at most [`FRAME_BYTES_MAX`] of payload:
//!
//! ```text
//! len u32 | kind u8 (1 data, 2 ack/keepalive) | frame_seq u64 | ack u64 | [seq u64 | payload] | tag[16]
//! ```
//!
//! `frame_seq` counts every frame of one direction on one connection from 1 (a replayed,
//! dropped or reordered frame is refused); `ack` is the cumulative count of messages received
//! (piggybacked on data, or an ack frame after each read that completed messages, or as the
//! keepalive); `seq` numbers messages across connections; `tag` is HMAC-SHA256 of everything
//! from `len` to the payload under the direction key, truncated to 16 bytes. A refused frame
//! closes the connection and is reported ([`Event::LinkDown`]); nothing from it on is
//! delivered. A refused handshake is reported as [`Event::Refused`] with the peer's address.
//!
//! # Bounds
//!
//! Unacknowledged messages per peer: [`UNACKED_FRAMES_MAX`] and [`UNACKED_BYTES_MAX`] (then
//! `send` fails with [`SendError::QueueFull`]); handshakes: [`driver::HANDSHAKE_MS_MAX`] each,
//! [`driver::HANDSHAKES_MAX`] at once; events: [`driver::EVENTS_MAX`] (then readers wait, so
//! drain the channel promptly: a reader that waits longer than `silence_ms` lets its link be
//! declared down, though nothing is lost).
//!
//! # Example
//!
//! ```
//! use interconnect::{Config, Event, Interconnect, Peer};
//!
//! let config = |me| Config {
//!     me,
//!     incarnation: 1,
//!     cluster_uuid: [1; 16],
//!     cluster_key: [2; 32],
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     keepalive_ms: 100,
//!     silence_ms: 1000,
//! };
//! let (one, _one_events) = Interconnect::start(config(1)).unwrap();
//! let (two, two_events) = Interconnect::start(config(2)).unwrap();
//! let peer = |node, ic: &Interconnect| Peer { node, incarnation: 1, endpoint: ic.local_addr().to_string() };
//! one.set_peers(vec![peer(2, &two)]);
//! two.set_peers(vec![peer(1, &one)]);
//! one.send(2, b"hello".to_vec()).unwrap();
//! let frame = loop {
//!     match two_events.recv_timeout(std::time::Duration::from_secs(5)).unwrap() {
//!         Event::Frame { from, payload } => break (from, payload),
//!         _ => continue,
//!     }
//! };
//! assert_eq!(frame, (1, b"hello".to_vec()));
//! one.shutdown();
//! two.shutdown();
//! ```
//!
//! # Layout
//!
//! ```text
//! core/handshake.rs  sans-IO: Dialer, Acceptor, key derivation
//! core/frame.rs      sans-IO: frame encode / decode (length bound, MAC, counter)
//! core/session.rs    sans-IO: the reliability session of one peer
//! endpoint.rs        host[:port] parsing
//! driver.rs          threads and TCP: Interconnect
//! testing.rs         loopback clusters for tests
//! ```

pub mod core;
pub mod driver;
mod endpoint;
pub mod testing;

pub use crate::core::handshake::{HandshakeError, PROTOCOL_VERSION};
pub use crate::core::session::SendError;
pub use driver::{Config, Event, Interconnect, InterconnectError, Peer};
pub use endpoint::{parse_endpoint, EndpointError, ENDPOINT_BYTES_MAX};

/// The interconnect port when an endpoint names none.
pub const DEFAULT_PORT: u16 = 7711;
/// The largest node id (ids are 1..=NODE_ID_MAX).
pub const NODE_ID_MAX: u16 = 256;
/// The largest payload of one frame; a larger length prefix drops the connection.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Messages queued per peer awaiting acknowledgement.
pub const UNACKED_FRAMES_MAX: usize = 16_384;
/// Payload bytes queued per peer awaiting acknowledgement.
pub const UNACKED_BYTES_MAX: usize = 32 << 20;

const _: () = assert!(FRAME_BYTES_MAX <= UNACKED_BYTES_MAX);
