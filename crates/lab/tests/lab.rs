//! The lab end to end: `miostream-lab` runs the real supervisor, broadcaster
//! and receiver binaries (built by `cargo test --workspace` next to it) over
//! real WebRTC on loopback.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn lab() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_miostream-lab"))
}

/// Whether the peer binaries were built beside the lab; outside CI a
/// `cargo test -p miostream-lab` alone does not build them.
fn binaries_present() -> bool {
    let dir = lab().parent().unwrap().to_owned();
    let present = [
        "miostream-supervisor",
        "miostream-broadcaster",
        "miostream-receiver",
    ]
    .iter()
    .all(|b| dir.join(b).is_file());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build every binary (cargo test --workspace)"
        );
        eprintln!("skipped: run `cargo build --bins` (or cargo test --workspace) first");
    }
    present
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(lab())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_experiment_kills_and_replaces_receivers_and_writes_one_row_per_receiver() {
    if !binaries_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("exp");
    let input = assets();
    let (ok, stdout, stderr) = run(&[
        "experiment",
        "--receivers",
        "4",
        "--topology",
        "tree",
        "--distribution",
        "uniform",
        "--failures-per-sec",
        "1",
        "--duration",
        "5",
        "--seed",
        "3",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "experiment failed:\n{stdout}\n{stderr}");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = results.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "one row per receiver:\n{results}");
    let header: Vec<&str> = results.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut incarnations = 0;
    for row in &rows {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(&cells[..4], &["tree", "uniform", "1", "3"], "{row}");
        let received: u64 = cells[col("chunks_received")].parse().unwrap();
        let rejected: u64 = cells[col("chunks_rejected")].parse().unwrap();
        assert!(received > 0, "every receiver got chunks: {row}");
        assert_eq!(rejected, 0, "{row}");
        // Gap fill: a receiver whose parent was killed loses nothing.
        let lost: u64 = cells[col("chunks_lost")].parse().unwrap();
        assert_eq!(lost, 0, "chunks lost: {row}");
        incarnations += cells[col("incarnations")].parse::<u32>().unwrap();
    }
    let failures = std::fs::read_to_string(out.join("failures.csv")).unwrap();
    let injected = failures.lines().count() - 1;
    assert!(
        injected >= 3,
        "about one failure a second for 5 s:\n{failures}"
    );
    assert_eq!(
        incarnations as usize,
        4 + injected,
        "every failure started a new viewer"
    );
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(report.contains("paper 169"), "{report}");
    assert!(
        !out.join("runs").join("tree-uniform-r1-t1").exists(),
        "a clean run's logs are removed"
    );
}

#[test]
fn the_demo_plays_to_every_receiver_and_ends_with_a_qos_table() {
    if !binaries_present() {
        return;
    }
    let input = assets();
    let (ok, stdout, stderr) = run(&[
        "demo",
        "--receivers",
        "3",
        "--duration",
        "6",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("3/3 playing"), "progress lines:\n{stderr}");
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("== QoS"))
        .skip(1)
        .collect();
    assert!(table[0].trim_start().starts_with("receiver"), "{stdout}");
    let all = table
        .iter()
        .find(|l| l.trim_start().starts_with("all"))
        .unwrap();
    let cells: Vec<&str> = all.split_whitespace().collect();
    assert!(
        cells[1].parse::<u64>().unwrap() > 0,
        "chunks delivered: {all}"
    );
    assert_eq!(cells[3], "0", "nothing rejected: {all}");
    if Command::new("ffmpeg").arg("-version").output().is_ok() {
        assert_eq!(
            stdout.matches("decodes cleanly").count(),
            3,
            "every output decodes:\n{stdout}"
        );
    }
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let (ok, _, stderr) = run(&["demo", "--input", "/nonexistent.webm"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "miostream-lab: no such file: /nonexistent.webm"
    );
    let (ok, _, stderr) = run(&["experiment", "--out", "/tmp/x", "--distribution", "zipf"]);
    assert!(!ok);
    assert!(stderr.contains("unknown failure distribution"), "{stderr}");
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(&["plot", "--out", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("results.csv"), "{stderr}");
}
