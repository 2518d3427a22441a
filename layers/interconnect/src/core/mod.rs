//! The sans-IO core: the handshake, the frame codec and the reliability session.
//!
//! Nothing here opens a socket, reads a clock or draws a random number: time comes in as
//! `now_ms`, nonces come in as arguments, bytes come in as slices and go out as `Vec<u8>`. The
//! driver ([`crate::driver`]) does the I/O; a simulator can drive the same code.

pub mod frame;
pub mod handshake;
mod mac;
pub mod session;

pub use mac::FrameKey;
