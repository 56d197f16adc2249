//! The overlay under real conditions, end to end through `miostream-lab
//! experiment` (real processes, real WebRTC): slow hosts that join first
//! end up as leaves, honest relays are never cut out under a rate cap and
//! loss, a killed relay costs no chunk at survivors, and a flash crowd of
//! 30 receivers all play. Behaviour, not timing: every bound below is far
//! from what a healthy run measures.
//!
//! The two tests never overlap (each loads both cores), and each is
//! bounded; the lab runs in its own process group, stopped with
//! everything it started if a test fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use support::{assets, binaries_present, namespaces_available, Lab};

/// One heavy test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A CSV file as (header, rows).
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    (header, rows)
}

fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

fn num(row: &[String], header: &[String], name: &str) -> u64 {
    let cell = &row[col(header, name)];
    cell.parse()
        .unwrap_or_else(|_| panic!("{name} = {cell:?} in {row:?}"))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `office` (2 Wi-Fi hosts with a 2 Mbit/s uplink joining first, 4 wired,
/// 1 % incoming loss on every receiver host), 6 receivers in a tree, two
/// relays killed (seed 6 picks overlay positions 1 and 2: inner nodes of
/// the tree, both feeding children).
#[test]
fn slow_hosts_that_join_first_are_leaves_no_honest_relay_is_cut_out_and_a_killed_relay_costs_no_chunk(
) {
    if !namespaces_available() || !binaries_present() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("office");
    let input = assets();
    let lab = Lab::start(
        &[
            os("experiment"),
            os("--network"),
            os("office"),
            os("--receivers"),
            os("6"),
            os("--topology"),
            os("tree"),
            os("--distribution"),
            os("uniform"),
            os("--failures-per-sec"),
            os("0.15"),
            os("--seed"),
            os("6"),
            os("--duration"),
            os("20"),
            os("--keep-runs"),
            os("--input"),
            input.as_os_str(),
            os("--out"),
            out.as_os_str(),
        ],
        &[],
    );
    // The lab's own warm-up limit is 30 s + 0.3 s per receiver; the window
    // 20 s; the stop at most 10 s per role.
    let run = lab.finish(Duration::from_secs(150));
    eprintln!(
        "office experiment: {:.1} s\n{}{}",
        run.took.as_secs_f64(),
        run.stderr,
        run.stdout
    );
    assert_eq!(
        miostream_lab::hosts::leftovers(&format!("mslab{}n", run.pid)),
        Vec::<String>::new(),
        "the run's namespaces are removed"
    );
    assert!(run.ok, "experiment failed:\n{}\n{}", run.stdout, run.stderr);

    let (header, rows) = csv(&out.join("results.csv"));
    assert_eq!(
        header[header.len() - 2..].join(","),
        "cut_out,attacker",
        "results.csv ends with cut_out and attacker"
    );
    assert_eq!(rows.len(), 6, "one row per receiver");
    let (hheader, hosts) = csv(&out.join("hosts.csv"));
    let host = |slot: &str| {
        hosts
            .iter()
            .find(|h| h[col(&hheader, "role")] == "receiver" && h[col(&hheader, "slot")] == slot)
            .unwrap_or_else(|| panic!("no host for slot {slot}"))
    };
    let (fheader, failures) = csv(&out.join("failures.csv"));
    assert!(
        (1..=2).contains(&failures.len()),
        "about 1-2 kills in the window: {failures:?}"
    );
    assert!(
        failures.iter().any(|f| num(f, &fheader, "position") <= 2),
        "a relay (an inner node of the tree) was killed: {failures:?}"
    );

    let run_dir = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let supervisor_log = std::fs::read_to_string(run_dir.join("supervisor.log")).unwrap();
    let leaf_lines: Vec<&str> = supervisor_log
        .lines()
        .filter(|l| l.contains("joins as a leaf: its uplink cannot carry a relay's copies"))
        .collect();
    eprintln!(
        "supervisor: {} leaf placements, {} demotions, {} bad-chunk reports, {} peers cut off",
        leaf_lines.len(),
        supervisor_log.matches("relay demoted to a leaf").count(),
        supervisor_log.matches("bad chunk reported").count(),
        supervisor_log.matches("cutting peer off").count()
    );
    assert!(
        !supervisor_log
            .lines()
            .any(|l| l.contains("cutting peer off") && l.contains("Misbehaving")),
        "the supervisor cut out nobody:\n{supervisor_log}"
    );

    let mut slow_checked = 0;
    for row in &rows {
        let slot = row[col(&header, "receiver")].clone();
        let h = host(&slot);
        let class = h[col(&hheader, "class")].as_str();
        assert!(
            num(row, &header, "played_ms") > 0,
            "every receiver played: {row:?}"
        );
        assert_eq!(
            num(row, &header, "cut_out"),
            0,
            "no honest relay is cut out: {row:?}"
        );
        assert_eq!(
            num(row, &header, "chunks_lost"),
            0,
            "survivors lose no chunk: {row:?}"
        );
        assert_eq!(num(row, &header, "chunks_rejected"), 0, "{row:?}");
        if class != "wifi" {
            continue;
        }
        // A slow host is placed as a leaf when it joins: the supervisor
        // says so for its (first) peer id...
        let summary = std::fs::read_to_string(run_dir.join(format!("r{slot}.1.json"))).unwrap();
        let peer: serde_json::Value = serde_json::from_str(&summary).unwrap();
        let peer = peer["peer_id"].as_str().unwrap().to_owned();
        assert!(
            leaf_lines.iter().any(|l| l.contains(&peer)),
            "Wi-Fi host r{slot} ({peer}) joined as a leaf:\n{}",
            leaf_lines.join("\n")
        );
        // ... and it feeds nobody: over the window it sent only heartbeats,
        // acknowledgements and reports, far below one copy of what it got.
        // (A new viewer in the slot probes its uplink first: only slots
        // that kept their first process are measured.)
        if num(row, &header, "incarnations") == 1 {
            let sent = num(row, &header, "bytes_sent");
            let media = num(h, &hheader, "bytes_delivered");
            assert!(media > 0, "{h:?}");
            eprintln!(
                "Wi-Fi r{slot}: sent {sent} B on the wire for {media} media bytes received ({:.1} %)",
                100.0 * sent as f64 / media as f64
            );
            assert!(
                (sent as f64) < 0.15 * media as f64,
                "a leaf sends far less than a copy: r{slot} sent {sent} B for {media} B received"
            );
            slow_checked += 1;
        }
    }
    assert!(
        slow_checked >= 1,
        "at least one Wi-Fi host kept its first process (the seed kills inner nodes)"
    );

    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(report.contains("cut out"), "{report}");
    assert!(
        run.stderr.contains("0 cut out by the supervisor"),
        "the per-run line counts cut-outs:\n{}",
        run.stderr
    );
}

/// A flash crowd on loopback: 30 receivers started at once all play (the
/// lab refuses with "only N of M receivers were playing after ..."
/// otherwise), and every row of the window played.
#[test]
fn thirty_receivers_started_at_once_all_play() {
    if !binaries_present() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("crowd");
    let input = assets();
    let lab = Lab::start(
        &[
            os("experiment"),
            os("--receivers"),
            os("30"),
            os("--topology"),
            os("mesh"),
            os("--failures-per-sec"),
            os("0"),
            os("--duration"),
            os("5"),
            os("--input"),
            input.as_os_str(),
            os("--out"),
            out.as_os_str(),
        ],
        &[],
    );
    // Warm-up limit: 30 s + 0.3 s per receiver = 39 s; window 5 s.
    let run = lab.finish(Duration::from_secs(120));
    eprintln!(
        "30 receivers: {:.1} s\n{}{}",
        run.took.as_secs_f64(),
        run.stderr,
        run.stdout
    );
    assert!(run.ok, "experiment failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("all 30 receivers playing after"),
        "{}",
        run.stderr
    );
    let (header, rows) = csv(&out.join("results.csv"));
    assert_eq!(rows.len(), 30, "one row per receiver");
    for row in &rows {
        assert!(
            num(row, &header, "played_ms") > 0,
            "every receiver played in the window: {row:?}"
        );
        assert_eq!(num(row, &header, "cut_out"), 0, "{row:?}");
    }
}
