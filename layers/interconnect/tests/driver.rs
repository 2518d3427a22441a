//! The driver over loopback TCP: real sockets, real threads, conditions waited for with
//! generous deadlines (never a fixed sleep).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use interconnect::core::handshake::{Acceptor, AcceptorStep, Dialer, DialerStep, Identity};
use interconnect::testing::{loopback, loopback_config, LOOPBACK_KEY, LOOPBACK_UUID};
use interconnect::{Event, Interconnect, Peer, SendError, UNACKED_FRAMES_MAX};

const DEADLINE: Duration = Duration::from_secs(10);

/// Receives events until `pred` picks one; panics at the deadline. Returns it and the others.
fn wait_for<T>(events: &Receiver<Event>, what: &str, mut pred: impl FnMut(&Event) -> Option<T>) -> (T, Vec<Event>) {
    let deadline = Instant::now() + DEADLINE;
    let mut others = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => match pred(&event) {
                Some(found) => return (found, others),
                None => others.push(event),
            },
            Err(_) => panic!("timed out waiting for {what}; saw {others:?}"),
        }
    }
}

/// Receives `count` frames from `from`, checking they are 0, 1, 2, ... (u64 little-endian).
fn expect_sequence(events: &Receiver<Event>, from: u16, count: u64) -> Vec<Event> {
    let mut next = 0u64;
    let mut others = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while next < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Frame { from: f, payload }) if f == from => {
                let got = u64::from_le_bytes(payload[..8].try_into().unwrap());
                assert_eq!(got, next, "frame from {from} out of order or duplicated");
                next += 1;
            }
            Ok(other) => others.push(other),
            Err(_) => panic!("timed out at frame {next} of {count} from {from}; saw {others:?}"),
        }
    }
    others
}

/// Sends `i` as a u64, retrying while the unacknowledged queue is full (bounded).
fn send_counter(ic: &Interconnect, to: u16, i: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match ic.send(to, i.to_le_bytes().to_vec()) {
            Ok(()) => return,
            Err(SendError::QueueFull { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("send {i}: {e}"),
        }
    }
}

fn wait_reachable(ic: &Interconnect, want: &[u16]) {
    let deadline = Instant::now() + DEADLINE;
    while ic.reachable() != want {
        assert!(Instant::now() < deadline, "reachable {:?}, want {want:?}", ic.reachable());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn three_nodes_exchange_frames_in_order() {
    let nodes = loopback(3, 50, 1000);
    for (i, (ic, _)) in nodes.iter().enumerate() {
        let me = i as u16 + 1;
        let others: Vec<u16> = (1..=3).filter(|&n| n != me).collect();
        wait_reachable(ic, &others);
    }
    for (i, (ic, _)) in nodes.iter().enumerate() {
        let me = i as u16 + 1;
        for to in (1..=3).filter(|&n| n != me) {
            ic.send(to, vec![]).unwrap();
        }
    }
    for (i, (ic, _)) in nodes.iter().enumerate() {
        let me = i as u16 + 1;
        for to in (1..=3).filter(|&n| n != me) {
            for k in 0..500u64 {
                send_counter(ic, to, k);
            }
        }
    }
    for (i, (_, events)) in nodes.iter().enumerate() {
        let me = i as u16 + 1;
        // The empty frame first, then the counters, from each other node.
        let mut counts = std::collections::BTreeMap::new();
        let mut empties = 0;
        let deadline = Instant::now() + DEADLINE;
        while counts.values().sum::<u64>() < 1000 {
            match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Frame { from, payload }) if payload.is_empty() => {
                    assert_eq!(counts.get(&from), None, "the empty frame came after the counters");
                    empties += 1;
                }
                Ok(Event::Frame { from, payload }) => {
                    let next = counts.entry(from).or_insert(0u64);
                    assert_eq!(u64::from_le_bytes(payload[..8].try_into().unwrap()), *next, "node {me} from {from}");
                    *next += 1;
                }
                Ok(_) => {}
                Err(_) => panic!("node {me} timed out with {counts:?}"),
            }
        }
        assert_eq!(empties, 2);
    }
    assert_eq!(nodes[0].0.send(9, vec![]), Err(SendError::UnknownPeer(9)));
    for (ic, _) in nodes {
        ic.shutdown();
    }
}

fn severed_stream_stays_exactly_once(sever_on_dialer: bool) {
    let mut nodes = loopback(2, 50, 2000);
    let (two, two_events) = nodes.pop().unwrap();
    let (one, one_events) = nodes.pop().unwrap();
    wait_reachable(&one, &[2]);
    const COUNT: u64 = 30_000;
    let started = Instant::now();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| expect_sequence(&two_events, 1, COUNT));
        for i in 0..COUNT {
            if i == COUNT / 3 || i == 2 * COUNT / 3 {
                let severed = if sever_on_dialer { one.sever(2) } else { two.sever(1) };
                assert!(severed || i > COUNT / 3, "no connection to sever at {i}");
            }
            send_counter(&one, 2, i);
        }
        receiver.join().unwrap();
    });
    let elapsed = started.elapsed();
    eprintln!("{COUNT} frames with two severed connections in {elapsed:?}");
    // The dialer saw the link go down and come back.
    let (why, _) = wait_for(&one_events, "LinkDown on node 1", |e| {
        matches!(e, Event::LinkDown { peer: 2, .. }).then(|| format!("{e:?}"))
    });
    eprintln!("{why}");
    wait_reachable(&one, &[2]);
    // And it still works afterwards.
    one.send(2, b"after".to_vec()).unwrap();
    wait_for(&two_events, "frame after", |e| {
        matches!(e, Event::Frame { from: 1, payload } if payload == b"after").then_some(())
    });
    one.shutdown();
    two.shutdown();
}

#[test]
fn connection_severed_by_dialer_redials_and_stays_exactly_once_in_order() {
    severed_stream_stays_exactly_once(true);
}

#[test]
fn connection_severed_by_acceptor_redials_and_stays_exactly_once_in_order() {
    severed_stream_stays_exactly_once(false);
}

fn identity(node: u16, key: [u8; 32]) -> Identity {
    Identity { cluster_uuid: LOOPBACK_UUID, cluster_key: key, node, incarnation: 1 }
}

/// Plays a dialer's handshake by hand on `stream`; returns how far it got.
fn hand_dial(stream: &mut TcpStream, me: Identity, peer: u16) -> Result<(), String> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut dialer, hello) = Dialer::new(me, peer, 1, 0, [4; 32]);
    stream.write_all(&hello).unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        match dialer.handle_bytes(&buf[..n]).map_err(|e| e.to_string())? {
            DialerStep::Send(auth) => stream.write_all(&auth).unwrap(),
            DialerStep::Established(_) => return Ok(()),
            DialerStep::NeedMore => {}
        }
    }
    Err("no accept".into())
}

#[test]
fn strangers_are_refused_and_reported_with_their_address() {
    let mut nodes = loopback(2, 50, 1000);
    let (two, two_events) = nodes.pop().unwrap();
    let (one, _one_events) = nodes.pop().unwrap();
    wait_reachable(&two, &[1]);
    let refused = |events: &Receiver<Event>, addr: SocketAddr| {
        wait_for(events, "Refused", |e| match e {
            Event::Refused { addr: a, why } if *a == addr => Some(why.clone()),
            _ => None,
        })
        .0
    };

    // The wrong key, claiming to be node 1.
    let mut stranger = TcpStream::connect(two.local_addr()).unwrap();
    let addr = stranger.local_addr().unwrap();
    assert_eq!(hand_dial(&mut stranger, identity(1, [0x11; 32]), 2), Err("closed".into()));
    let why = refused(&two_events, addr);
    assert!(why.contains("MAC"), "{why}");

    // The right key but a node id that is not a listed peer.
    let mut control = TcpStream::connect(two.local_addr()).unwrap();
    assert!(hand_dial(&mut control, identity(1, LOOPBACK_KEY), 2).is_ok(), "control: node 1's identity works");
    drop(control);
    let mut stranger = TcpStream::connect(two.local_addr()).unwrap();
    let addr7 = stranger.local_addr().unwrap();
    assert!(hand_dial(&mut stranger, identity(7, LOOPBACK_KEY), 2).is_err());
    let why = refused(&two_events, addr7);
    assert!(why.contains("not a listed peer"), "{why}");

    // Garbage.
    let mut garbage = TcpStream::connect(two.local_addr()).unwrap();
    let addr = garbage.local_addr().unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let why = refused(&two_events, addr);
    assert!(why.contains("magic"), "{why}");

    // The real link survives all this (the hand-made node 1 replaced it once: it redials).
    wait_reachable(&one, &[2]);
    one.send(2, b"still here".to_vec()).unwrap();
    wait_for(&two_events, "frame", |e| {
        matches!(e, Event::Frame { from: 1, payload } if payload == b"still here").then_some(())
    });
    one.shutdown();
    two.shutdown();
}

#[test]
fn slowloris_and_mute_listener_are_cut_at_the_handshake_bound() {
    // A client that connects to the listener and never speaks.
    let (two, two_events) = Interconnect::start(loopback_config(2, 50, 1000)).unwrap();
    let slow = TcpStream::connect(two.local_addr()).unwrap();
    let slow_addr = slow.local_addr().unwrap();
    // A "peer" that accepts and never speaks.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let (one, one_events) = Interconnect::start(loopback_config(1, 50, 1000)).unwrap();
    one.set_peers(vec![Peer { node: 3, incarnation: 1, endpoint: mute_addr.to_string() }]);
    let started = Instant::now();
    let (why, _) = wait_for(&two_events, "slowloris refused", |e| match e {
        Event::Refused { addr, why } if *addr == slow_addr => Some(why.clone()),
        _ => None,
    });
    assert!(why.contains("not done within"), "{why}");
    let (why, _) = wait_for(&one_events, "mute peer refused", |e| match e {
        Event::Refused { addr, why } if *addr == mute_addr => Some(why.clone()),
        _ => None,
    });
    assert!(why.contains("not done within"), "{why}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(one.reachable().is_empty());
    drop(slow);
    one.shutdown();
    two.shutdown();
}

#[test]
fn peer_that_stops_answering_is_reported_down_within_silence() {
    const SILENCE_MS: u64 = 400;
    // Node 2 is played by hand: it completes the handshake, then never sends a byte.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut acceptor = Acceptor::new(identity(2, LOOPBACK_KEY), [5; 32]);
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            let n = stream.read(&mut buf).unwrap();
            match acceptor.handle_bytes(&buf[..n], |node| (node == 1).then_some(1)).unwrap() {
                AcceptorStep::Send(challenge) => stream.write_all(&challenge).unwrap(),
                AcceptorStep::Authenticated { .. } => {
                    let (accept, _) = acceptor.finish(0).unwrap();
                    stream.write_all(&accept).unwrap();
                    return stream; // kept open, silent
                }
                AcceptorStep::NeedMore => {}
            }
        }
        panic!("handshake did not complete");
    });
    let (one, events) = Interconnect::start(loopback_config(1, 50, SILENCE_MS)).unwrap();
    one.set_peers(vec![Peer { node: 2, incarnation: 1, endpoint }]);
    wait_for(&events, "LinkUp", |e| matches!(e, Event::LinkUp(2)).then_some(()));
    let up_at = Instant::now();
    let _stream = fake.join().unwrap();
    let (why, _) = wait_for(&events, "LinkDown", |e| match e {
        Event::LinkDown { peer: 2, why } => Some(why.clone()),
        _ => None,
    });
    let down_after = up_at.elapsed();
    assert!(why.contains("silent"), "{why}");
    assert!(down_after >= Duration::from_millis(SILENCE_MS - 50), "{down_after:?}");
    assert!(down_after < Duration::from_millis(SILENCE_MS + 1000), "{down_after:?}");
    assert!(one.reachable().is_empty());
    one.shutdown();
}

#[test]
fn restarted_peer_is_refused_until_listed_then_the_session_resets() {
    let mut nodes = loopback(2, 50, 1000);
    let (two, _) = nodes.pop().unwrap();
    let (one, one_events) = nodes.pop().unwrap();
    wait_reachable(&one, &[2]);
    one.send(2, b"to the old incarnation".to_vec()).unwrap();
    two.shutdown();
    wait_for(&one_events, "LinkDown", |e| matches!(e, Event::LinkDown { peer: 2, .. }).then_some(()));

    // Node 2 restarts as incarnation 2 on a new port; node 1 still lists incarnation 1 there.
    let mut config = loopback_config(2, 50, 1000);
    config.incarnation = 2;
    let (two, two_events) = Interconnect::start(config).unwrap();
    two.set_peers(vec![Peer { node: 1, incarnation: 1, endpoint: one.local_addr().to_string() }]);
    let stale = |inc| vec![Peer { node: 2, incarnation: inc, endpoint: two.local_addr().to_string() }];
    one.set_peers(stale(1));
    let (why, _) = wait_for(&two_events, "stale dial refused", |e| match e {
        Event::Refused { why, .. } => Some(why.clone()),
        _ => None,
    });
    assert!(why.contains("incarnation"), "{why}");
    assert!(one.reachable().is_empty());

    // The membership layer learns of the restart.
    one.set_peers(stale(2));
    wait_for(&one_events, "PeerRestarted", |e| matches!(e, Event::PeerRestarted(2)).then_some(()));
    wait_reachable(&one, &[2]);
    one.send(2, b"to the new incarnation".to_vec()).unwrap();
    let (payload, _) = wait_for(&two_events, "frame", |e| match e {
        Event::Frame { from: 1, payload } => Some(payload.clone()),
        _ => None,
    });
    assert_eq!(payload, b"to the new incarnation", "the old incarnation's message was dropped");
    one.shutdown();
    two.shutdown();
}

#[test]
fn unreachable_peer_fills_the_queue_and_send_fails_without_blocking() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (one, _events) = Interconnect::start(loopback_config(1, 50, 1000)).unwrap();
    one.set_peers(vec![Peer { node: 2, incarnation: 1, endpoint }]);
    let started = Instant::now();
    for i in 0..UNACKED_FRAMES_MAX {
        one.send(2, vec![i as u8]).unwrap();
    }
    assert!(matches!(one.send(2, vec![0]), Err(SendError::QueueFull { .. })));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Removing the peer: sends are refused, the link's thread ends.
    one.set_peers(vec![]);
    assert_eq!(one.send(2, vec![0]), Err(SendError::UnknownPeer(2)));
    let started = Instant::now();
    one.shutdown();
    assert!(started.elapsed() < Duration::from_secs(3));
}
