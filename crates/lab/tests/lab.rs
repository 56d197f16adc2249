//! The lab end to end: `miostream-lab` runs the real supervisor, broadcaster
//! and receiver binaries (built by `cargo test --workspace` next to it) over
//! real WebRTC on loopback.

#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use support::{assets, binaries_present, lab, Lab};

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
        // (That a receiver whose parent was killed loses nothing depends on
        // timing, which this busy machine does not promise: the simulator
        // checks it on a virtual clock, crates/sim/tests/sim.rs.)
        let _: u64 = cells[col("chunks_lost")].parse().unwrap();
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

/// `cut_out` counts what the supervisor cut out: a receiver whose process
/// ends with the receiver's refusal line for a `Misbehaving` close (here
/// a stand-in for `miostream-receiver` that plays through the real one,
/// then exits as a cut-out receiver does, once, in slot 2) counts 1 in its
/// slot, and a new viewer takes the slot.
#[test]
fn a_receiver_cut_out_by_the_supervisor_counts_in_its_slot() {
    if !binaries_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    let real = lab().parent().unwrap().to_owned();
    for b in ["miostream-supervisor", "miostream-broadcaster"] {
        std::os::unix::fs::symlink(real.join(b), bins.join(b)).unwrap();
    }
    let marker = tmp.path().join("cut");
    let script = format!(
        r#"#!/bin/sh
case " $* " in
  *" run "*"/keys/r2 "*)
    if [ ! -e '{marker}' ]; then
      : > '{marker}'
      '{real}' "$@" &
      pid=$!
      trap 'kill $pid; wait $pid; exit 143' TERM INT
      sleep 8 &
      wait $!
      kill $pid
      wait $pid
      echo "miostream-receiver: supervisor closed the session: 3 chunks you relayed failed verification (Misbehaving)" >&2
      exit 1
    fi ;;
esac
exec '{real}' "$@"
"#,
        marker = marker.display(),
        real = real.join("miostream-receiver").display()
    );
    let fake = bins.join("miostream-receiver");
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = tmp.path().join("exp");
    let input = assets();
    let d = |s: &'static str| OsStr::new(s);
    let lab = Lab::start(
        &[
            d("experiment"),
            d("--receivers"),
            d("3"),
            d("--topology"),
            d("tree"),
            d("--failures-per-sec"),
            d("0"),
            d("--duration"),
            d("12"),
            d("--input"),
            input.as_os_str(),
            d("--out"),
            out.as_os_str(),
        ],
        &[("MIOSTREAM_BIN_DIR", bins.to_str().unwrap())],
    );
    let run = lab.finish(Duration::from_secs(90));
    let stderr = run.stderr;
    assert!(run.ok, "experiment failed:\n{stderr}");
    assert!(marker.exists(), "slot 2 was cut out: {stderr}");
    assert!(
        stderr.contains("receiver 2 exited on its own")
            && stderr.contains("cut out by the supervisor: supervisor closed the session"),
        "{stderr}"
    );
    assert!(stderr.contains("1 cut out by the supervisor"), "{stderr}");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = results.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for row in results.lines().skip(1) {
        let cells: Vec<&str> = row.split(',').collect();
        let (cut, incarnations) = if cells[col("receiver")] == "2" {
            ("1", "2")
        } else {
            ("0", "1")
        };
        assert_eq!(cells[col("cut_out")], cut, "{row}");
        assert_eq!(cells[col("incarnations")], incarnations, "{row}");
    }
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    let point = report.lines().nth(1).unwrap();
    assert!(point.ends_with("      1  loopback"), "{report}");
}
