//! The lab's attacks end to end: `experiment --attackers 1 --attack KIND`
//! runs the lab's malicious receiver (`miostream-attacker`) in slot 0,
//! which joins first (a relay in the tree), beside honest receivers over
//! real WebRTC on loopback. What must hold whatever the timing: no honest
//! slot is ever cut out (nor, but for forgeries, rejects a chunk), the
//! false reporter is cut out (it accuses more peers than the lone-accuser
//! bound and nobody backs it), so is the forger (its children report it),
//! garbage is never a report, and results.csv marks the attacker.

#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::sync::Mutex;
use std::time::Duration;

use support::{assets, binaries_present, Lab};

/// One lab at a time: four deployments at once would starve two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One run's rows of results.csv: (attacker, cut_out, chunks_received,
/// chunks_rejected) per slot, in slot order.
fn attack_run(attack: &str) -> (Vec<(u32, u32, u64, u64)>, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("exp");
    let input = assets();
    let d = OsStr::new;
    let lab = Lab::start(
        &[
            d("experiment"),
            d("--receivers"),
            d("6"),
            d("--topology"),
            d("tree"),
            d("--failures-per-sec"),
            d("0"),
            d("--duration"),
            d("8"),
            d("--attackers"),
            d("1"),
            d("--attack"),
            d(attack),
            d("--input"),
            input.as_os_str(),
            d("--out"),
            out.as_os_str(),
        ],
        &[],
    );
    let run = lab.finish(Duration::from_secs(150));
    assert!(run.ok, "{attack}: experiment failed:\n{}", run.stderr);
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = results.lines().next().unwrap().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("results.csv has {name}: {results}"))
    };
    let mut rows: Vec<(usize, (u32, u32, u64, u64))> = results
        .lines()
        .skip(1)
        .map(|row| {
            let c: Vec<&str> = row.split(',').collect();
            (
                c[col("receiver")].parse().unwrap(),
                (
                    c[col("attacker")].parse().unwrap(),
                    c[col("cut_out")].parse().unwrap(),
                    c[col("chunks_received")].parse().unwrap(),
                    c[col("chunks_rejected")].parse().unwrap(),
                ),
            )
        })
        .collect();
    rows.sort_by_key(|(slot, _)| *slot);
    let report = std::fs::read_to_string(out.join("report.txt")).unwrap();
    assert!(report.contains("with attackers"), "{report}");
    (
        rows.into_iter().map(|(_, r)| r).collect(),
        run.stderr + &report,
    )
}

fn honest_slots_are_never_cut_out_and_play(attack: &str, rows: &[(u32, u32, u64, u64)], log: &str) {
    assert_eq!(rows.len(), 6, "{attack}: one row per slot\n{log}");
    assert_eq!(rows[0].0, 1, "{attack}: slot 0 is the attacker\n{log}");
    for (slot, &(attacker, cut_out, received, rejected)) in rows.iter().enumerate().skip(1) {
        assert_eq!(attacker, 0, "{attack}: slot {slot}\n{log}");
        assert_eq!(cut_out, 0, "{attack}: honest slot {slot} cut out\n{log}");
        assert!(received > 0, "{attack}: slot {slot} got chunks\n{log}");
        if attack != "forge" {
            assert_eq!(rejected, 0, "{attack}: slot {slot}\n{log}");
        }
    }
}

#[test]
fn a_false_reporter_is_cut_out_and_the_peers_it_accuses_are_not() {
    if !binaries_present() {
        return;
    }
    let (rows, log) = attack_run("false-report");
    honest_slots_are_never_cut_out_and_play("false-report", &rows, &log);
    assert!(
        rows[0].1 >= 1,
        "the lone accuser was cut out: {rows:?}\n{log}"
    );
    assert!(log.contains("you reported 3 peers as forgers"), "{log}");
}

#[test]
fn a_garbage_sender_costs_its_links_and_nobody_is_reported() {
    if !binaries_present() {
        return;
    }
    let (rows, log) = attack_run("garbage");
    honest_slots_are_never_cut_out_and_play("garbage", &rows, &log);
    // Garbage is never evidence of forgery: nobody reports the sender.
    assert_eq!(rows[0].1, 0, "{rows:?}\n{log}");
}

#[test]
fn a_forging_relay_is_cut_out_and_its_children_never_are() {
    if !binaries_present() {
        return;
    }
    let (rows, log) = attack_run("forge");
    honest_slots_are_never_cut_out_and_play("forge", &rows, &log);
    assert!(
        rows[0].1 >= 1,
        "the forger's children reported it: {rows:?}\n{log}"
    );
}

#[test]
fn a_gap_flooder_gets_its_replay_budget_and_costs_nobody_their_place() {
    if !binaries_present() {
        return;
    }
    let (rows, log) = attack_run("gap-flood");
    honest_slots_are_never_cut_out_and_play("gap-flood", &rows, &log);
}

#[test]
fn attack_flags_that_do_not_fit_together_are_one_line_errors() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::lab())
            .args(["experiment", "--out", "/nonexistent/x", "--receivers", "4"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    };
    assert_eq!(
        run(&["--attackers", "1"]),
        "miostream-lab: --attackers needs --attack forge|false-report|garbage|gap-flood"
    );
    assert_eq!(
        run(&["--attack", "forge"]),
        "miostream-lab: --attack needs --attackers K (K ≥ 1)"
    );
    assert!(
        run(&["--attackers", "4", "--attack", "forge"]).contains("at least one honest receiver")
    );
    assert!(run(&["--attackers", "1", "--attack", "sybil"]).contains("unknown attack"));
}
