//! Loopback clusters for tests and benchmarks (of this crate and of the crates above it).

use crate::{Config, Event, Interconnect, Peer};
use crossbeam_channel::Receiver;

/// The cluster uuid of [`loopback`] clusters.
pub const LOOPBACK_UUID: [u8; 16] = *b"loopback-cluster";
/// The cluster key of [`loopback`] clusters.
pub const LOOPBACK_KEY: [u8; 32] = [0x5a; 32];

/// The configuration of node `me` of a loopback cluster: 127.0.0.1, any port, incarnation 1.
pub fn loopback_config(me: u16, keepalive_ms: u64, silence_ms: u64) -> Config {
    Config {
        me,
        incarnation: 1,
        cluster_uuid: LOOPBACK_UUID,
        cluster_key: LOOPBACK_KEY,
        listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        keepalive_ms,
        silence_ms,
    }
}

/// Starts nodes 1..=n on 127.0.0.1, each listing all the others as peers. Element i is node
/// i + 1 with its event channel.
///
/// # Panics
/// If a node cannot start (no loopback interface, no threads): this is for tests.
pub fn loopback(n: u16, keepalive_ms: u64, silence_ms: u64) -> Vec<(Interconnect, Receiver<Event>)> {
    let nodes: Vec<(Interconnect, Receiver<Event>)> = (1..=n)
        .map(|me| Interconnect::start(loopback_config(me, keepalive_ms, silence_ms)).expect("loopback node starts"))
        .collect();
    let peers: Vec<Peer> = nodes
        .iter()
        .enumerate()
        .map(|(i, (ic, _))| Peer { node: i as u16 + 1, incarnation: 1, endpoint: ic.local_addr().to_string() })
        .collect();
    for (ic, _) in &nodes {
        ic.set_peers(peers.clone());
    }
    nodes
}
