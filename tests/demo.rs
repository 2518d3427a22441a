//! `sdc demo` runs from start to end and tells the whole story: the README's first command.

use std::process::Command;

#[test]
fn demo_runs_the_whole_story_and_cleans_up() {
    // --slow: the default timings, with room for a loaded CI machine.
    let out = Command::new(env!("CARGO_BIN_EXE_sdc")).args(["demo", "--slow"]).output().expect("run sdc demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sdc demo failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for step in [
        "joined: DLM (2 barriers)",
        "leaves gracefully",
        "kill -9 node",
        "forced leave of node",
        "kill -9 the master",
        "is master (epoch 2)",
        "rejoins with incarnation 2",
        "demo complete",
    ] {
        assert!(stdout.contains(step), "the demo did not tell {step:?}:\n{stdout}");
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
