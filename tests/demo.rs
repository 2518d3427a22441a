//! `sdc demo` runs from start to end and tells the whole story: the README's first command.

use sdc_procs::procs::Sdc;
use std::time::{Duration, Instant};

/// Far more than the demo takes (a few seconds): its every step has a deadline of its own.
const DEMO_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn demo_runs_the_whole_story_and_cleans_up() {
    // --slow: the default timings, with room for a loaded CI machine.
    let out = Sdc::new(env!("CARGO_BIN_EXE_sdc"))
        .run(["demo", "--slow"], Instant::now() + DEMO_DEADLINE)
        .unwrap_or_else(|e| panic!("sdc demo: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sdc demo failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for step in [
        "joined: DLM (3 barriers)",
        "leaves gracefully",
        "kill -9 node",
        "forced leave of node",
        "kill -9 the master",
        "is master (epoch 2)",
        "rejoins with incarnation 2",
        "demo complete",
        // The value block through `sdc lock` and the real lock manager: a clean handover
        // carries it, valid; the kill -9 of its EX holder's node leaves it not valid.
        "printed `value=42 valid=1`: a clean handover carries the value block, valid",
        "waits for EX",
        "value block valid",
        "the lock holder's node dies",
        "with SIGKILL and exited 9",
        "the lock was lost while the command ran",
        "valid=0`: the value block is NOT valid, because its EX holder died",
    ] {
        assert!(stdout.contains(step), "the demo did not tell {step:?}:\n{stdout}");
    }
    // In that order: the handover, the holder's loss, then the waiter's grant.
    let at = |needle: &str| stdout.find(needle).unwrap_or_else(|| panic!("{needle:?} in:\n{stdout}"));
    assert!(at("value=42 valid=1") < at("the lock holder's node dies"), "{stdout}");
    assert!(at("the lock holder's node dies") < at("exited 9"), "{stdout}");
    assert!(at("exited 9") < at("valid=0`"), "{stdout}");
    // The lock table it prints: the holder granted EX, the other node waiting.
    assert!(stdout.contains("default/demo-license  (value block valid)"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("waiting") && l.ends_with("requested ex")), "{stdout}");
    // Each rejoin says how the restarted daemon took its slot over, as its log tells.
    let rejoins: Vec<&str> = stdout.lines().filter(|l| l.contains("rejoins with incarnation")).collect();
    assert_eq!(rejoins.len(), 2, "{stdout}");
    for line in rejoins {
        assert!(
            line.contains("taking its slot over at once (its heartbeat still showed incarnation 1 up, but the cluster state of epoch")
                || line.contains("after watching its slot's stale heartbeat for dead-ms"),
            "the rejoin does not say how it took its slot over: {line}"
        );
    }
    // The temporary directory it names is gone.
    let dir = stdout
        .split_whitespace()
        .find(|w| w.starts_with("/tmp/sdc-demo-") || w.contains("sdc-demo-"))
        .expect("names its directory");
    let dir = dir.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '-');
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
