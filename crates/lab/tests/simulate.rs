//! `miostream-lab simulate` end to end: the binary writes the experiment's
//! files (same `results.csv` and `hosts.csv` headers), the per-run table
//! and the report, and the same seed writes the same rows.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use miostream_lab::experiment::{CSV_HEADER, HOSTS_HEADER};

fn simulate(out: &std::path::Path) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_miostream-lab"))
        .args(["simulate", "--receivers", "6", "--topology", "tree"])
        .args([
            "--failures-per-sec",
            "0.5",
            "--duration",
            "8",
            "--seed",
            "4",
        ])
        .args(["--network", "office", "--quiet", "--out"])
        .arg(out)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn simulate_writes_the_experiments_files_with_the_same_headers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let table = simulate(&out);
    assert!(table.contains("== office network, tree"), "{table}");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = results.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 6, "{results}");
    let width = CSV_HEADER.split(',').count();
    assert!(
        rows.iter().all(|r| r.split(',').count() == width),
        "{results}"
    );
    let hosts = std::fs::read_to_string(out.join("hosts.csv")).unwrap();
    assert_eq!(hosts.lines().next(), Some(HOSTS_HEADER));
    assert_eq!(hosts.lines().count(), 1 + 2 + 6, "{hosts}");
    assert!(out.join("report.txt").is_file());
    // Deterministic: the same flags give the same rows.
    let again = dir.path().join("b");
    simulate(&again);
    assert_eq!(
        std::fs::read_to_string(again.join("results.csv")).unwrap(),
        results
    );
}
