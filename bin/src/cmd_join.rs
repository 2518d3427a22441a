//! `sdc join`: the node daemon in the foreground.

use crate::cli::{DiskArgs, JoinArgs};
use crate::signals;
use crate::util::{log_line, node_id, open_db, utc};
use crate::{exit, fail, CmdResult, Failure};
use dlm::driver::control::{create_cluster_dir, socket_name, ControlError, ControlServer};
use dlm::driver::{DlmConfig, DlmNode};
use manager::api::{Registry, Subsystem};
use manager::daemon::own_records;
use manager::member::{refusal_text_named, MemberEvent, MemberExit};
use manager::participant::SelfState;
use membership_db::daemon::fence_line;
use membership_db::error::CorruptRecord;
use membership_db::format::{newest, Barriers, HostName, NodeEntry, NodeId, NodeSet, TableView};
use membership_db::node::{Exit, NodeConfig, Refusal};
use membership_db::status::read_copies;
use membership_db::time::unix_ms;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Parses `NAME:ORDER[:JOIN/LEAVE/FORCED]`.
fn parse_layer(spec: &str) -> Result<(String, u32, Barriers), Failure> {
    let bad = || Failure::from(format!("--layer {spec:?}: use NAME:ORDER[:JOIN/LEAVE/FORCED], like dlm:10:2/1/1"));
    let mut parts = spec.split(':');
    let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    let order: u32 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let barriers = match parts.next() {
        None => Barriers::one_each(),
        Some(b) => {
            let n: Vec<u8> = b.split('/').map(|x| x.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
            match n[..] {
                [join, leave, forced_leave] => Barriers { join, leave, forced_leave },
                _ => return Err(bad()),
            }
        }
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((name.to_string(), order, barriers))
}

/// A rehearsal layer: logs each notification and acknowledges it.
fn run_rehearsal_layer(sub: Subsystem, prefix: String) {
    let barriers = sub.spec().barriers;
    let name = sub.spec().name.clone();
    std::thread::spawn(move || {
        for n in sub.notifications() {
            let view: Vec<String> = n.view.iter().map(|v| format!("{}:{}", v.node, v.state.name())).collect();
            log_line(&format!(
                "{} {prefix} layer {name}: {} of node {} (incarnation {}), barrier {} of {}; view [{}]",
                utc(unix_ms()),
                n.kind.name(),
                n.subject,
                n.subject_incarnation,
                n.position.barrier + 1,
                barriers.of(n.kind),
                view.join(" ")
            ));
            sub.ack(&n);
        }
    });
}

/// Resolves this node's `address` (HOST[:PORT]) into the address its interconnect listens on.
fn listen_address(node: NodeId, address: &str) -> Result<SocketAddr, Failure> {
    let set_it = format!("sdc node add --node {node} --name NAME --address HOST[:PORT]");
    if address.trim().is_empty() {
        return fail(format!(
            "node {node} has no interconnect address in the node table; set one with `{set_it}` (default port {})",
            interconnect::DEFAULT_PORT
        ));
    }
    let (host, port) = interconnect::parse_endpoint(address)
        .map_err(|e| Failure::from(format!("node {node}'s address {address:?}: {e}; fix it with `{set_it}`")))?;
    let mut addrs = (host.as_str(), port).to_socket_addrs().map_err(|e| {
        Failure::from(format!("node {node}'s address {address:?} does not resolve: {e}; fix it with `{set_it}`"))
    })?;
    addrs.next().ok_or_else(|| {
        Failure::from(format!("node {node}'s address {address:?} resolves to nothing; fix it with `{set_it}`"))
    })
}

/// The node table's address of each node, read from the disk when the lock manager asks.
fn address_book(disk: DiskArgs) -> dlm::driver::AddressBook {
    Box::new(move |node: NodeId| {
        let db = open_db(&disk, false).ok()?;
        let copies = db.read_node_entry_copies().ok()?;
        let entry = newest(copies.get(node.index())?, |e| e.seq).ok()?;
        (entry.present && !entry.address.is_empty()).then(|| entry.address.clone())
    })
}

pub fn run(a: JoinArgs) -> CmdResult {
    let layer_specs = a.layers.iter().map(|s| parse_layer(s)).collect::<Result<Vec<_>, _>>()?;
    if let Some((name, order, _)) = layer_specs.iter().find(|(_, order, _)| *order == manager::order::DLM) {
        return fail(format!(
            "--layer {name}:{order}: order {order} is the lock manager's (registered by every daemon); give the rehearsal layer another order"
        ));
    }
    let db = open_db(&a.disk, true)?;
    let node = node_id(&db, a.node)?;
    let copies = db.read_node_entry_copies()?;
    let mut warnings = Vec::new();
    let table: Vec<Result<NodeEntry, CorruptRecord>> = copies.iter().map(|c| newest(c, |e| e.seq)).collect();
    let entry = match read_copies(&copies[node.index()], |e| e.seq, "node table entry", &mut warnings) {
        Some(e) if e.present => e,
        Some(_) if !warnings.is_empty() => {
            return fail(format!(
                "node {node} is not in the node table as its older copy reads ({}); re-add it with `sdc node add --node {node} --name NAME --address HOST[:PORT]`",
                warnings[0].text
            ))
        }
        Some(_) => {
            return fail(format!(
                "node {node} is not in the node table; add it with `sdc node add --node {node} --name NAME --address HOST[:PORT]`"
            ))
        }
        None => return fail(format!("the node table entry of node {node} is unreadable: {}", warnings[0].text)),
    };
    let stamp = db.read_config_stamp()?;
    let (own, incarnation_floor) = own_records(&db, node, entry.leave_requests)?;
    let sb = db.superblock().clone();
    let config = NodeConfig {
        node,
        max_nodes: sb.max_nodes,
        timing: sb.timing,
        cluster_uuid: sb.cluster_uuid,
        table: TableView::of(&table),
        table_generation: stamp.as_ref().map_or(0, |s| s.table_generation),
        incarnation_floor,
        pid: std::process::id(),
        host: HostName::new(&host_name()),
        link_timeout_ms: sb.link_timeout_ms,
    };
    let prefix = format!("sdc[{} node {node} {}]", sb.cluster_name, entry.name);
    let say = |what: &str| log_line(&format!("{} {prefix} {what}", utc(unix_ms())));
    for w in &warnings {
        say(&format!("warning: {}", w.text));
    }
    if let Err(bad) = &stamp {
        say(&format!("warning: {bad}; node table changes are polled until an admin command rewrites it"));
    }
    // A second daemon of this node on this host: say so before its port or socket clash.
    let run_dir = create_cluster_dir(&sb.cluster_uuid)?;
    let socket = run_dir.join(socket_name(node.0));
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(Failure {
            status: exit::ALREADY_RUNNING,
            message: format!("node {node} is already running on this host (its daemon serves {})", socket.display()),
        });
    }
    let listen = listen_address(node, &entry.address)?;
    let mut registry = Registry::new();
    let dlm_layer = registry.register(
        manager::order::DLM,
        "dlm",
        Barriers { join: dlm::BARRIERS, leave: dlm::BARRIERS, forced_leave: dlm::BARRIERS },
    )?;
    for (name, order, barriers) in layer_specs {
        let sub = registry.register(order, &name, barriers)?;
        run_rehearsal_layer(sub, prefix.clone());
    }
    let dlm_config = DlmConfig {
        node,
        order: manager::order::DLM,
        cluster_uuid: sb.cluster_uuid,
        cluster_key: sb.cluster_key,
        listen,
        keepalive_ms: (sb.timing.heartbeat_ms as u64).max(10),
        link_timeout_ms: sb.link_timeout_ms as u64,
    };
    let log_prefix = prefix.clone();
    let dlm_log: dlm::driver::LogFn =
        Arc::new(move |what: &str| log_line(&format!("{} {log_prefix} {what}", utc(unix_ms()))));
    let dlm_node = DlmNode::start(dlm_config, dlm_layer, address_book(a.disk.clone()), dlm_log.clone())?;
    let lease_ms = sb.timing.fence_ms as u64;
    let control = ControlServer::start(&run_dir, node.0, dlm_node.dlm(), dlm_log, lease_ms).map_err(|e| match e {
        ControlError::InUse { .. } => Failure { status: exit::ALREADY_RUNNING, message: e.to_string() },
        e => Failure::from(e),
    })?;
    say(&format!("lock manager: interconnect on {listen}, control socket {}", control.path().display()));
    signals::install_daemon_handlers(&prefix)?;
    say(&format!(
        "starting on {} (heartbeat {} ms, dead {} ms, fence {} ms; {} layer(s) registered)",
        db.disk().describe(),
        sb.timing.heartbeat_ms,
        sb.timing.dead_ms,
        sb.timing.fence_ms,
        registry.specs().len()
    ));
    // What the interconnect reaches goes into the heartbeat, for the master to arbitrate.
    let reachable = || dlm_node.reachable().map(|peers| NodeSet::of(&peers));
    // Forced out: the lock holders go first (their connections close, `sdc lock` kills its
    // command), and the heartbeat says fenced only once they are gone.
    let mut control = Some(control);
    let fence_wait = Duration::from_millis(sb.timing.fence_ms as u64);
    let mut stop_all = || control.take().map_or(Ok(()), |c| c.fence(fence_wait));
    let mut services = manager::daemon::Services { reachable: &reachable, stop_all: &mut stop_all };
    let exit =
        manager::daemon::run(&db, config, &registry, own, &signals::STOPS, &prefix, &mut services, &mut |event| {
            // A refused join is said once, in the final error line (which names the layer).
            if !matches!(event, MemberEvent::SelfState(SelfState::Refused(_))) {
                say(&event.to_string())
            }
        });
    // Whatever the end, the control socket closes first: a client holding a lock (`sdc lock`)
    // sees its connection drop, and stops what the lock protected, before this process goes.
    if let Some(c) = control.take() {
        c.shutdown();
    }
    dlm_node.shutdown();
    let exit = exit?;
    let specs = registry.specs();
    let layer_name = |order: u32| specs.iter().find(|l| l.order == order).map(|l| l.name.as_str());
    match exit {
        MemberExit::Node(Exit::Stopped) => {
            say("stopped; slot marked down");
            Ok(exit::OK)
        }
        MemberExit::StoppedWithoutLeave(why) => {
            say(&format!("stopped WITHOUT a graceful leave ({why}); slot marked down"));
            Ok(exit::STOPPED_WITHOUT_LEAVE)
        }
        MemberExit::Node(Exit::Refused(Refusal::AlreadyRunning(why))) => {
            Err(Failure { status: exit::ALREADY_RUNNING, message: why })
        }
        MemberExit::Node(Exit::Refused(Refusal::Io(why))) => fail(why),
        MemberExit::Node(Exit::Fenced(reason)) => {
            log_line(&fence_line(&prefix, &reason.to_string(), unix_ms()));
            Ok(exit::FENCED)
        }
        MemberExit::ForcedOut(refusal) => {
            let why = refusal.map(|r| format!(": {}", refusal_text_named(&r, layer_name(r.order)))).unwrap_or_default();
            say(&format!("FORCED OUT of the cluster by the other nodes{why}; stopped everything it launched, exiting"));
            Ok(exit::FORCED_OUT)
        }
        MemberExit::JoinRefused(r) => fail(format!("join refused: {}", refusal_text_named(&r, layer_name(r.order)))),
    }
}
