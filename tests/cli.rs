//! `sdc` on bad input: every refusal is one `sdc: error:` line with a non-zero exit status, no
//! panic, and a disk that is byte for byte unchanged. Plus the happy path of the admin commands.
//!
//! No daemon runs in these tests.

#[path = "common/mod.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A formatted 4-node cluster disk (8 MiB) with nodes 1 (alpha) and 2 (beta).
fn small_cluster() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("sdc-cli-").tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let d = disk.to_str().unwrap();
    assert_ok(&sdc(["format", "--disk", d, "--size", DISK_SIZE, "--cluster", "cli", "--max-nodes", "4"]));
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "1", "--name", "alpha"]));
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "2", "--name", "beta"]));
    (dir, disk)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every read and admin command on `disk`, each of which must be refused the same way without
/// changing the disk.
fn assert_every_command_refused(disk: &Path, needles: &[&str]) {
    let d = s(disk);
    for args in [
        vec!["status", "--disk", d],
        vec!["status", "--disk", d, "--json"],
        vec!["node", "list", "--disk", d],
        vec!["node", "add", "--disk", d, "--node", "3", "--name", "gamma"],
        vec!["node", "remove", "--disk", d, "--node", "1"],
        vec!["join", "--disk", d, "--node", "1"],
    ] {
        let out = refused_unchanged(disk, &args);
        assert_error(&out, 1, needles);
    }
}

// ---------------------------------------------------------------------------------------------
// Disks that are not usable

#[test]
fn missing_disk_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("absent.img");
    let d = s(&disk);
    for args in [
        vec!["status", "--disk", d],
        vec!["inspect", "--disk", d],
        vec!["node", "list", "--disk", d],
        vec!["node", "add", "--disk", d, "--node", "1", "--name", "a"],
        vec!["node", "remove", "--disk", d, "--node", "1"],
        vec!["join", "--disk", d, "--node", "1"],
    ] {
        let out = sdc(&args);
        assert_error(&out, 1, &["absent.img", "no such file"]);
        assert!(!disk.exists(), "sdc {args:?} created the disk file");
    }
    // format without --size does not create a file either, and says how to.
    let out = sdc(["format", "--disk", d, "--cluster", "c"]);
    assert_error(&out, 1, &["does not exist", "--size"]);
    assert!(!disk.exists());
}

#[test]
fn directory_is_not_a_disk() {
    let dir = tempfile::tempdir().unwrap();
    let out = sdc(["status", "--disk", s(dir.path())]);
    assert_error(&out, 1, &["neither a block device nor a regular file"]);
}

#[test]
fn file_of_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("random.img");
    std::fs::write(&disk, pseudo_random_bytes(8 << 20, 0x5dc)).unwrap();
    assert_every_command_refused(&disk, &["not a cluster disk"]);
    // Random bytes are not a damaged superblock (no magic): inspect gives the same error.
    let out = refused_unchanged(&disk, &["inspect", "--disk", s(&disk)]);
    assert_error(&out, 1, &["not a cluster disk"]);
}

#[test]
fn both_superblock_copies_damaged() {
    let (_dir, disk) = small_cluster();
    flip_byte(&disk, 100);
    flip_byte(&disk, 4096 + 100);
    assert_every_command_refused(&disk, &["not a cluster disk", "superblock", "checksum"]);
    // inspect reports both damaged copies as corrupt records, by offset, and exits 3.
    let out = refused_unchanged(&disk, &["inspect", "--disk", s(&disk)]);
    assert_refused_with(&out, 3, "sdc:", &[]);
    let text = stdout(&out);
    assert!(text.contains("at offset 0:"), "inspect should name offset 0: {}", describe(&out));
    assert!(text.contains("at offset 4096:"), "inspect should name offset 4096: {}", describe(&out));
}

#[test]
fn one_superblock_copy_damaged() {
    for offset in [0u64, 4096] {
        let (_dir, disk) = small_cluster();
        let d = s(&disk);
        flip_byte(&disk, offset + 100);
        // The other copy carries on; reading changes nothing.
        let before = file_bytes(&disk);
        let status = json_of(&sdc(["status", "--disk", d, "--json"]));
        assert_eq!(status["cluster"], "cli");
        assert_eq!(status["nodes"].as_array().unwrap().len(), 2);
        assert_ok(&sdc(["node", "list", "--disk", d]));
        // inspect names the damaged copy and exits 3.
        let out = sdc(["inspect", "--disk", d]);
        assert_refused_with(&out, 3, "sdc:", &[&format!("at offset {offset}:")]);
        let text = stdout(&out);
        assert!(text.contains(&format!("corrupt superblock at offset {offset}")), "{}", describe(&out));
        let out = sdc(["inspect", "--disk", d, "--json"]);
        assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON even when corrupt");
        let corrupt = v["corrupt"].as_array().unwrap();
        assert_eq!(corrupt.len(), 1, "{corrupt:?}");
        assert_eq!(corrupt[0]["offset"].as_u64(), Some(offset));
        assert_eq!(corrupt[0]["kind"], "superblock");
        assert_unchanged(&disk, &before, "status, node list and inspect with one superblock copy damaged");
    }
}

/// Rewrites the version of both superblock copies and reseals them with a valid crc32.
fn make_newer_format(disk: &Path, version: u16) {
    for copy in [0u64, 4096] {
        let mut rec = read_at(disk, copy, 512);
        rec[4..6].copy_from_slice(&version.to_le_bytes());
        let crc = crc32(&rec[..508]);
        rec[508..].copy_from_slice(&crc.to_le_bytes());
        write_at(disk, copy, &rec);
    }
}

#[test]
fn crc32_matches_the_disk_format() {
    // The standard check value, and a superblock as sdc wrote it.
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    let (_dir, disk) = small_cluster();
    let rec = read_at(&disk, 0, 512);
    assert_eq!(crc32(&rec[..508]).to_le_bytes(), rec[508..512]);
}

/// The format version this sdc writes, as `inspect` reports it.
fn format_version(disk: &Path) -> u16 {
    json_of(&sdc(["inspect", "--disk", s(disk), "--json"]))["superblock"]["format_version"].as_u64().unwrap() as u16
}

#[test]
fn newer_format_version() {
    let (_dir, disk) = small_cluster();
    let newer = format_version(&disk) + 1;
    make_newer_format(&disk, newer);
    assert_every_command_refused(&disk, &["newer", &format!("version {newer}")]);
    let d = s(&disk);
    let out = refused_unchanged(&disk, &["inspect", "--disk", d]);
    assert_error(&out, 1, &["newer"]);
    // format will not overwrite it without --force.
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--cluster", "other", "--max-nodes", "4"]);
    assert_error(&out, 1, &["newer", "--force"]);
}

/// A disk formatted by an older sdc is refused with the way forward, never misread.
#[test]
fn older_format_version() {
    let (_dir, disk) = small_cluster();
    let older = format_version(&disk) - 1;
    make_newer_format(&disk, older);
    assert_every_command_refused(&disk, &["older", &format!("version {older}"), "--force"]);
    let d = s(&disk);
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--cluster", "other", "--max-nodes", "4"]);
    assert_error(&out, 1, &["older", "--force"]);
    assert_ok(&sdc(["format", "--disk", d, "--cluster", "other", "--max-nodes", "4", "--force"]));
}

#[test]
fn truncated_disk() {
    let (_dir, disk) = small_cluster();
    let len = std::fs::metadata(&disk).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(len / 2).unwrap();
    assert_every_command_refused(&disk, &["truncated"]);
    let out = refused_unchanged(&disk, &["inspect", "--disk", s(&disk)]);
    assert_error(&out, 1, &["truncated"]);
}

// ---------------------------------------------------------------------------------------------
// Node table

#[test]
fn node_add_out_of_range() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    for id in ["0", "5", "128", "65535"] {
        let out = refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", id, "--name", "x"]);
        assert_error(&out, 1, &["out of range", "1 to 4"]);
    }
    // Not a u16: a usage error.
    let out = refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", "70000", "--name", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_no_panic(&out);
    let out = refused_unchanged(&disk, &["node", "remove", "--disk", d, "--node", "9"]);
    assert_error(&out, 1, &["out of range"]);
}

#[test]
fn node_add_duplicates_and_bad_names() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    let out = refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", "3", "--name", "alpha"]);
    assert_error(&out, 1, &["alpha", "already used by node 1"]);
    let out = refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", "2", "--name", "gamma"]);
    assert_error(&out, 1, &["node 2 already exists", "beta"]);
    for bad in ["", "has space", "slash/name", &"x".repeat(64)] {
        let out = refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", "3", "--name", bad]);
        assert_error(&out, 1, &["node name"]);
    }
    let long = "a".repeat(300);
    let out = refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", "3", "--name", "g", "--address", &long]);
    assert_error(&out, 1, &["address"]);
    let out = refused_unchanged(&disk, &["node", "remove", "--disk", d, "--node", "3"]);
    assert_error(&out, 1, &["node 3 is not in the node table"]);
}

/// Issue 8: the address is the interconnect endpoint, host[:port]; a bad one is one clear line.
#[test]
fn node_add_checks_the_interconnect_address() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    for bad in ["has space", "10.0.0.300", "10.0.0.1:0", "10.0.0.1:70000", "fe80::1", "[fe80::1", "host:port"] {
        let out =
            refused_unchanged(&disk, &["node", "add", "--disk", d, "--node", "3", "--name", "g", "--address", bad]);
        assert_error(&out, 1, &["address", "host[:port]"]);
    }
    for (node, good) in [("3", "gamma.example:7800"), ("4", "[fe80::1]:9")] {
        assert_ok(&sdc(["node", "add", "--disk", d, "--node", node, "--name", &format!("n{node}"), "--address", good]));
    }
    let status = json_of(&sdc(["status", "--disk", d, "--json"]));
    let n3 = status["nodes"].as_array().unwrap().iter().find(|n| n["node"] == 3).unwrap().clone();
    assert_eq!(n3["address"], "gamma.example:7800");
    assert!(n3["reaches"].is_null(), "no daemon, no interconnect: {n3}");
}

/// Issue 8: format stores a random cluster key and the link timeout; inspect shows the key's
/// fingerprint only, never the key.
#[test]
fn format_stores_a_cluster_key_shown_only_as_a_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let d = s(&disk);
    let format = |link_timeout_ms: &str| {
        sdc([
            "format",
            "--disk",
            d,
            "--size",
            "16MiB",
            "--cluster",
            "k",
            "--max-nodes",
            "2",
            "--link-timeout-ms",
            link_timeout_ms,
        ])
    };
    let out = format("150");
    assert_error(&out, 1, &["link-timeout-ms 150", "two heartbeat intervals"]);
    let out = format("5000");
    assert_ok(&out);
    assert!(stdout(&out).contains("link timeout 5000 ms"), "{}", describe(&out));
    let inspect = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    let fingerprint = inspect["superblock"]["cluster_key_fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 8);
    assert_eq!(inspect["superblock"]["link_timeout_ms"], 5000);
    assert!(stdout(&out).contains(&fingerprint));
    // The key is at a fixed place in the superblock: it appears in no output.
    let bytes = std::fs::read(&disk).unwrap();
    let key_hex: String = bytes[KEY_OFFSET..KEY_OFFSET + 32].iter().map(|b| format!("{b:02x}")).collect();
    assert!(bytes[KEY_OFFSET..KEY_OFFSET + 32].iter().any(|b| *b != 0), "a key was drawn");
    let text = stdout(&sdc(["inspect", "--disk", d]));
    let json = stdout(&sdc(["inspect", "--disk", d, "--json"]));
    for out in [&text, &json] {
        assert!(!out.contains(&key_hex[..16]), "the key is printed");
        assert!(out.contains(&fingerprint));
    }
    // Another format, another key.
    assert_ok(&sdc(["format", "--disk", d, "--cluster", "k", "--max-nodes", "2", "--force"]));
    let again = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    assert_ne!(again["superblock"]["cluster_key_fingerprint"].as_str().unwrap(), fingerprint);
}

/// Where the superblock keeps the key: magic 4, version 2, generation 8, uuid 16, name 1 + 64,
/// max nodes 2, slot 4, disk bytes 8, timing 12, link timeout 4.
const KEY_OFFSET: usize = 4 + 2 + 8 + 16 + 65 + 2 + 4 + 8 + 12 + 4;

// ---------------------------------------------------------------------------------------------
// format

#[test]
fn format_over_existing_cluster_needs_force() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--cluster", "other", "--max-nodes", "4"]);
    assert_error(&out, 1, &["already holds cluster", "cli", "--force"]);
    let out =
        refused_unchanged(&disk, &["format", "--disk", d, "--size", "16MiB", "--cluster", "other", "--max-nodes", "4"]);
    assert_error(&out, 1, &["--force"]);
    // With --force it goes ahead (nothing is live).
    assert_ok(&sdc(["format", "--disk", d, "--cluster", "other", "--max-nodes", "4", "--force"]));
    let status = json_of(&sdc(["status", "--disk", d, "--json"]));
    assert_eq!(status["cluster"], "other");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 0);
}

#[test]
fn format_bad_timings() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("new.img");
    let d = s(&disk);
    let timings: [([&str; 3], &[&str]); 5] = [
        // fence + heartbeat + 100 >= dead
        (["50", "300", "450"], &["dead-ms", "451"]),
        (["100", "600", "700"], &["dead-ms"]),
        // fence below three heartbeats
        (["100", "200", "1000"], &["fence-ms", "three heartbeat"]),
        // heartbeat out of bounds
        (["5", "300", "600"], &["heartbeat-ms"]),
        // dead-ms too large
        (["100", "600", "600001"], &["dead-ms"]),
    ];
    for ([hb, fence, dead], needles) in timings {
        let args = [
            "format",
            "--disk",
            d,
            "--size",
            "8MiB",
            "--cluster",
            "c",
            "--heartbeat-ms",
            hb,
            "--fence-ms",
            fence,
            "--dead-ms",
            dead,
        ];
        let out = sdc(args);
        assert_error(&out, 1, needles);
        assert!(!disk.exists(), "a refused format created {d}");
    }
    // Over an existing cluster, with --force: refused before anything is written.
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    let out = refused_unchanged(
        &disk,
        &[
            "format",
            "--disk",
            d,
            "--cluster",
            "c",
            "--heartbeat-ms",
            "50",
            "--fence-ms",
            "300",
            "--dead-ms",
            "400",
            "--force",
        ],
    );
    assert_error(&out, 1, &["dead-ms"]);
}

/// The smallest disk for `max_nodes`, from the layout `inspect` reports.
fn minimum_disk_bytes(max_nodes: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("m.img");
    let d = s(&disk);
    assert_ok(&sdc(["format", "--disk", d, "--size", "64MiB", "--cluster", "m", "--max-nodes", max_nodes]));
    let v = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    let (off, len) = region(&v, "layers");
    let end = v["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap() + r["len"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(end, off + len, "layers is the last region");
    end
}

#[test]
fn format_too_small_disk() {
    let minimum = minimum_disk_bytes("4");
    let dir = tempfile::tempdir().unwrap();

    // A new file.
    let disk = dir.path().join("new.img");
    let d = s(&disk);
    let out = sdc(["format", "--disk", d, "--size", "1MiB", "--cluster", "c", "--max-nodes", "4"]);
    assert_error(&out, 1, &["too small", &minimum.to_string()]);
    assert!(!disk.exists(), "a refused format left {d} behind");
    // One byte short is still too small; the minimum itself is enough.
    let short = (minimum - 1).to_string();
    let out = sdc(["format", "--disk", d, "--size", &short, "--cluster", "c", "--max-nodes", "4"]);
    assert_error(&out, 1, &["too small", &minimum.to_string()]);
    assert!(!disk.exists());
    assert_ok(&sdc(["format", "--disk", d, "--size", &minimum.to_string(), "--cluster", "c", "--max-nodes", "4"]));

    // An existing, unformatted file too small for the layout.
    let small = dir.path().join("small.img");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let out = refused_unchanged(&small, &["format", "--disk", s(&small), "--cluster", "c", "--max-nodes", "4"]);
    assert_error(&out, 1, &["too small", &minimum.to_string()]);
    // ... and asked to grow, but not enough.
    let out = refused_unchanged(
        &small,
        &["format", "--disk", s(&small), "--size", "2MiB", "--cluster", "c", "--max-nodes", "4"],
    );
    assert_error(&out, 1, &["too small"]);
}

#[test]
fn format_size_would_shrink() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--size", "4MiB", "--cluster", "c", "--force"]);
    assert_error(&out, 1, &["shrink"]);
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--size", "4MiB", "--cluster", "c"]);
    assert_error(&out, 1, &["shrink"]);
}

#[test]
fn format_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("new.img");
    let d = s(&disk);
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--cluster", "bad name"], &["cluster name"]),
        (&["--cluster", "c", "--max-nodes", "0"], &["max-nodes", "out of range"]),
        (&["--cluster", "c", "--max-nodes", "257"], &["max-nodes", "out of range"]),
        (&["--cluster", "c", "--size", "lots"], &["invalid size"]),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["format", "--disk", d];
        if !extra.contains(&"--size") {
            args.extend(["--size", "8MiB"]);
        }
        args.extend_from_slice(extra);
        let out = sdc(&args);
        assert_error(&out, 1, needles);
        assert!(!disk.exists(), "sdc {args:?} left the file behind");
    }
}

// ---------------------------------------------------------------------------------------------
// inspect on damaged records

#[test]
fn inspect_names_every_corrupt_record() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    let v = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    assert!(v["corrupt"].as_array().unwrap().is_empty());
    let damaged = [
        ("heartbeat", record_offset(&v, "heartbeats", 2, None)),
        ("heartbeat", record_offset(&v, "heartbeats", 4, None)),
        ("claim", record_offset(&v, "claims", 3, Some(1))),
        ("node-entry", record_offset(&v, "node_table", 1, Some(1))),
        ("node-entry", record_offset(&v, "node_table", 4, Some(0))),
        ("cluster-state", v["cluster_state"][2]["offset"].as_u64().unwrap()),
    ];
    // Each offset lies in its region.
    for (kind, off) in damaged {
        let region_kind = match kind {
            "node-entry" => "node-table",
            k => k,
        };
        let (start, len) = region(&v, region_kind);
        assert!((start..start + len).contains(&off), "{kind} record at {off} outside its region");
        flip_byte(&disk, off + 20);
    }

    let out = refused_unchanged(&disk, &["inspect", "--disk", d]);
    assert_refused_with(&out, 3, "sdc:", &[&format!("{} corrupt record", damaged.len())]);
    let text = stdout(&out);
    for (kind, off) in damaged {
        assert!(
            text.contains(&format!("at offset {off}:")),
            "inspect does not name the {kind} record at {off}: {}",
            describe(&out)
        );
    }

    let out = sdc(["inspect", "--disk", d, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, u64)> = v["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap().to_string(), c["offset"].as_u64().unwrap()))
        .collect();
    found.sort_by_key(|f| f.1);
    let mut want: Vec<(String, u64)> = damaged.iter().map(|(k, o)| (k.to_string(), *o)).collect();
    want.sort_by_key(|f| f.1);
    assert_eq!(found, want);

    // The damage does not stop status or node list (they warn about what they skip), and
    // neither of them repairs or changes anything.
    let before = file_bytes(&disk);
    let out = sdc(["status", "--disk", d, "--json"]);
    let status = json_of(&out);
    assert_eq!(status["cluster"], "cli");
    assert!(stderr(&out).contains("warning"), "status should warn about the damage: {}", describe(&out));
    assert_ok(&sdc(["status", "--disk", d]));
    assert_ok(&sdc(["node", "list", "--disk", d]));
    assert_unchanged(&disk, &before, "status and node list on a damaged disk");
}

// ---------------------------------------------------------------------------------------------
// Usage

#[test]
fn help_on_every_command() {
    for args in [
        vec!["--help"],
        vec!["help"],
        vec!["format", "--help"],
        vec!["node", "--help"],
        vec!["node", "add", "--help"],
        vec!["node", "list", "--help"],
        vec!["node", "remove", "--help"],
        vec!["inspect", "--help"],
        vec!["join", "--help"],
        vec!["status", "--help"],
        vec!["--version"],
    ] {
        let out = sdc(&args);
        assert_ok(&out);
        assert!(stdout(&out).contains("sdc"), "sdc {args:?}: {}", describe(&out));
    }
    let out = sdc(["--help"]);
    let help = stdout(&out);
    assert!(help.contains("Exit status"), "{help}");
    for code in ["0  success", "1  error", "2  usage", "3  inspect", "4  join refused", "5  join fenced"] {
        assert!(help.contains(code), "top-level help should document exit status {code:?}:\n{help}");
    }
    let join = stdout(&sdc(["join", "--help"]));
    assert!(join.contains("SIGTERM") && join.contains("fenced"), "{join}");
}

#[test]
fn usage_errors_exit_2() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    for args in [
        vec!["status", "--disk", d, "--io", "bogus"],
        vec!["inspect", "--disk", d, "--io", "DIRECT"],
        vec!["status"],
        vec!["frobnicate"],
        vec![],
        vec!["node", "add", "--disk", d, "--node", "3"],
        vec!["format", "--disk", d],
    ] {
        let out = refused_unchanged(&disk, &args);
        assert_eq!(out.status.code(), Some(2), "sdc {args:?}: {}", describe(&out));
        assert_no_panic(&out);
    }
    let out = sdc(["status", "--disk", d, "--io", "bogus"]);
    assert!(stderr(&out).contains("use direct or mmap"), "{}", describe(&out));
    // Both valid values are accepted.
    assert_ok(&sdc(["status", "--disk", d, "--io", "mmap"]));
    let direct = sdc(["status", "--disk", d, "--io", "direct"]);
    if !direct.status.success() {
        // Some file systems (tmpfs) have no O_DIRECT; the error says so in one line.
        assert_error(&direct, 1, &["direct I/O"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Happy path

#[test]
fn format_add_list_inspect_remove() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let d = s(&disk);
    let out = sdc(["format", "--disk", d, "--size", "16MiB", "--cluster", "prod", "--max-nodes", "4"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("formatted"), "{}", describe(&out));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 << 20);

    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "1", "--name", "alpha", "--address", "10.0.0.1"]));
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "2", "--name", "beta"]));
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "4", "--name", "delta", "--no-master-eligible"]));

    let list = json_of(&sdc(["node", "list", "--disk", d, "--json"]));
    assert_eq!(list["cluster"], "prod");
    let nodes: Vec<(u64, String, bool, String)> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_u64().unwrap(),
                n["name"].as_str().unwrap().to_string(),
                n["master_eligible"].as_bool().unwrap(),
                n["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        vec![
            (1, "alpha".into(), true, "10.0.0.1".into()),
            (2, "beta".into(), true, String::new()),
            (4, "delta".into(), false, String::new()),
        ]
    );
    let text = stdout(&sdc(["node", "list", "--disk", d]));
    assert!(text.contains("alpha") && text.contains("delta"), "{text}");

    let out = sdc(["inspect", "--disk", d]);
    assert_ok(&out);
    assert!(stdout(&out).contains("corrupt records: none"), "{}", describe(&out));
    let v = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    assert!(v["corrupt"].as_array().unwrap().is_empty());
    assert_eq!(v["superblock"]["max_nodes"], 4);
    assert_eq!(v["superblock"]["cluster"], "prod");
    assert_eq!(v["heartbeats"].as_array().unwrap().len(), 4);
    assert_eq!(v["claims"].as_array().unwrap().len(), 8);
    assert_eq!(v["node_table"].as_array().unwrap().len(), 8);
    // The regions are in order, aligned, and do not overlap.
    let regions = v["regions"].as_array().unwrap();
    let mut end = 0;
    for r in regions {
        let (off, len) = (r["offset"].as_u64().unwrap(), r["len"].as_u64().unwrap());
        assert_eq!(off, end, "region {r} follows the previous one");
        assert_eq!(off % 4096, 0, "region {r} is aligned");
        end = off + len;
    }
    assert!(end <= 16 << 20);

    let status = json_of(&sdc(["status", "--disk", d, "--json"]));
    assert_eq!(status["cluster"], "prod");
    assert_eq!(status["epoch"], 0);
    assert!(status["master"].is_null());
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert!(status["nodes"].as_array().unwrap().iter().all(|n| n["live"] == false));
    assert_eq!(node_status(&status, 4)["master_eligible"], false);
    assert_ok(&sdc(["status", "--disk", d]));

    // Remove a node that is not running; its name and id can be used again.
    let out = sdc(["node", "remove", "--disk", d, "--node", "2"]);
    assert_ok(&out);
    let list = json_of(&sdc(["node", "list", "--disk", d, "--json"]));
    let ids: Vec<u64> = list["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 4]);
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "3", "--name", "beta"]));
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "2", "--name", "beta2"]));
    // Twice more, so that both copies of node 2's entry are rewritten.
    assert_ok(&sdc(["node", "remove", "--disk", d, "--node", "2"]));
    assert_ok(&sdc(["node", "add", "--disk", d, "--node", "2", "--name", "beta3", "--no-master-eligible"]));
    let list = json_of(&sdc(["node", "list", "--disk", d, "--json"]));
    let names: Vec<(u64, &str, bool)> = list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_u64().unwrap(), n["name"].as_str().unwrap(), n["master_eligible"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, vec![(1, "alpha", true), (2, "beta3", false), (3, "beta", true), (4, "delta", false)]);
    let v = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    assert!(v["corrupt"].as_array().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Known product bugs (see the test report); un-ignore once fixed.

/// Both superblock copies damaged (magic intact, checksum wrong) is a damaged cluster, not a
/// blank disk: format must refuse it without --force, as it refuses an intact cluster.
#[test]
fn format_refuses_damaged_cluster_without_force() {
    let (_dir, disk) = small_cluster();
    flip_byte(&disk, 100);
    flip_byte(&disk, 4096 + 100);
    let out = refused_unchanged(&disk, &["format", "--disk", s(&disk), "--cluster", "other", "--max-nodes", "4"]);
    assert_error(&out, 1, &["--force"]);
}

/// An existing empty file (from touch or mktemp) is grown by --size like any smaller file.
#[test]
fn format_grows_an_existing_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("empty.img");
    std::fs::write(&disk, b"").unwrap();
    let d = s(&disk);
    let out = sdc(["status", "--disk", d]);
    assert_error(&out, 1, &["not a cluster disk"]);
    assert_ok(&sdc(["format", "--disk", d, "--size", DISK_SIZE, "--cluster", "c", "--max-nodes", "4"]));
    assert_ok(&sdc(["status", "--disk", d]));
}

/// The fixture reads `sdc status` again after a torn read, but a corrupt record that stays
/// corrupt fails its check on the last read instead of passing unnoticed.
#[test]
fn lasting_corruption_fails_the_fixtures_status_check() {
    let c = Cluster::new(1);
    let (heartbeats, _) = region(&c.inspect_json(), "heartbeat");
    flip_byte(&c.disk, heartbeats + 8);
    let out = c.sdc(&["status", "--json"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("corrupt"), "status should warn of the damaged record: {}", describe(&out));
    // Caught here, so that the cluster is dropped as by a passing test (and its files removed).
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.status_json()));
    let panic = failed.expect_err("status_json must fail while status reports corruption");
    let message = panic.downcast_ref::<String>().map_or("", String::as_str);
    assert!(message.contains("reports corruption in 3 reads in a row"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Issue 7: inspect checks every region; format of an empty file

/// Random bytes over one node request copy and one acknowledgement copy: inspect names both,
/// by offset, in text and in JSON, and exits 3.
#[test]
fn inspect_names_damaged_request_and_ack_copies() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    let v = json_of(&sdc(["inspect", "--disk", d, "--json"]));
    let request = record_offset(&v, "requests", 1, Some(0));
    let ack = record_offset(&v, "acks", 2, Some(1));
    let record = (record_offset(&v, "requests", 1, Some(1)) - request) as usize;
    for off in [request, ack] {
        write_at(&disk, off, &pseudo_random_bytes(record, off));
    }

    let out = refused_unchanged(&disk, &["inspect", "--disk", d]);
    assert_refused_with(&out, 3, "sdc:", &["2 corrupt record"]);
    for off in [request, ack] {
        assert!(stdout(&out).contains(&format!("at offset {off}:")), "inspect should name {off}: {}", describe(&out));
    }
    let out = sdc(["inspect", "--disk", d, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON");
    let corrupt: Vec<(&str, u64)> = v["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(corrupt, vec![("node-request", request), ("acks", ack)]);
}

/// Random bytes over both superblock copies (magic included) of a formatted disk: a damaged
/// cluster, not a blank disk. inspect reports both copies as corrupt (exit 3, not 1), and
/// format will not overwrite it without --force.
#[test]
fn random_bytes_over_both_superblocks_are_a_damaged_cluster() {
    let (_dir, disk) = small_cluster();
    let d = s(&disk);
    for copy in [0u64, 4096] {
        write_at(&disk, copy, &pseudo_random_bytes(4096, copy + 7));
    }
    let out = refused_unchanged(&disk, &["inspect", "--disk", d]);
    assert_refused_with(&out, 3, "sdc:", &["superblock"]);
    for off in [0, 4096] {
        assert!(stdout(&out).contains(&format!("at offset {off}:")), "inspect should name {off}: {}", describe(&out));
    }
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--cluster", "other", "--max-nodes", "4"]);
    assert_error(&out, 1, &["damaged", "--force"]);
}

/// The same disk, with `inspect --json`: the report is JSON (a script reads it), listing both
/// copies as corrupt.
#[test]
fn inspect_json_of_both_superblocks_damaged_is_json() {
    let (_dir, disk) = small_cluster();
    for copy in [0u64, 4096] {
        write_at(&disk, copy, &pseudo_random_bytes(4096, copy + 7));
    }
    let out = refused_unchanged(&disk, &["inspect", "--disk", s(&disk), "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect --json should print JSON ({e}): {}", describe(&out)));
    let offsets: Vec<u64> = v["corrupt"].as_array().unwrap().iter().map(|c| c["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![0, 4096], "{v:#}");
}

/// An existing empty file without --size: one line saying it is empty and to give --size (not
/// to format it, which is what was being done); with --size it is formatted.
#[test]
fn format_of_an_empty_file_says_to_give_size() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("empty.img");
    std::fs::write(&disk, b"").unwrap();
    let d = s(&disk);
    let out = refused_unchanged(&disk, &["format", "--disk", d, "--cluster", "c", "--max-nodes", "4"]);
    assert_error(&out, 1, &["empty", "--size"]);
    assert!(!stderr(&out).contains("format it with"), "{}", describe(&out));
    assert_ok(&sdc(["format", "--disk", d, "--size", DISK_SIZE, "--cluster", "c", "--max-nodes", "4"]));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 << 20);
    assert_eq!(json_of(&sdc(["status", "--disk", d, "--json"]))["cluster"], "c");
}
