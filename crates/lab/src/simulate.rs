//! `miostream-lab simulate`: the experiment in virtual time. The same runs
//! as `experiment` (and `--sweep`), the same `results.csv`, `hosts.csv`,
//! report and figures, but produced by `miostream-sim` — the real Manager
//! and node cores over a simulated network — instead of processes over
//! WebRTC. Rows are marked by the `integrity` cell `sim` (the simulator
//! does not check chunks).
//!
//! A `--network` profile's host classes become simulated hosts: their
//! rates and loss as they are; an unshaped class is a veth-like wired
//! host; a class whose uplink is at most 10 Mbit/s is taken to be Wi-Fi or
//! a consumer line (2 ms to the switch, up to 2 ms of jitter, more CPU
//! stalls), others wired (0.1 ms, 50 µs).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use miostream_protocol::TopologyKind;
use miostream_sim::{HostParams, SimConfig, SimOutcome};

use crate::experiment::{self, Experiment, HostRow, Row, CSV_HEADER, HOSTS_HEADER};
use crate::hosts::Bytes;
use crate::network::{HostClass, Join};
use crate::qos::SlotQos;

/// Runs with more receivers than this write no `hosts.csv`.
pub const MAX_HOST_ROWS: usize = 2000;

/// The `integrity` cell of simulated rows.
pub const SIMULATED: &str = "sim";

/// A profile's host class as a simulated host.
pub fn host(class: &HostClass) -> HostParams {
    let wired = HostParams::wired(&class.name);
    let slow = class.uplink.is_some_and(|u| u <= 10_000_000);
    HostParams {
        uplink_bps: class.uplink,
        downlink_bps: class.downlink,
        loss: class.loss,
        latency: if slow {
            Duration::from_millis(2)
        } else {
            wired.latency
        },
        jitter: if slow {
            Duration::from_millis(2)
        } else {
            wired.jitter
        },
        stalls_per_sec: if slow { 0.5 } else { wired.stalls_per_sec },
        ..wired
    }
}

fn unshaped() -> HostClass {
    HostClass {
        name: "loopback".into(),
        uplink: None,
        downlink: None,
        loss: 0.0,
        share: 1.0,
        join: Join::Any,
    }
}

/// The simulator's settings for one experiment.
pub fn config(e: &Experiment, probe: bool) -> anyhow::Result<SimConfig> {
    let topology: TopologyKind = e
        .topology
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown topology {:?}", e.topology))?;
    let mut c = SimConfig::lan(e.receivers, topology, e.seed);
    c.distribution = e.distribution;
    c.failures_per_sec = e.rate;
    c.duration = e.duration;
    c.startup = Duration::from_millis(e.startup_ms);
    c.probe = probe;
    let loopback = unshaped();
    let (sup, bc, slots): (HostClass, HostClass, Vec<HostClass>) = match &e.network {
        Some(p) => (
            p.supervisor_class().clone(),
            p.broadcaster_class().clone(),
            p.assign(e.receivers).into_iter().cloned().collect(),
        ),
        None => (
            loopback.clone(),
            loopback.clone(),
            vec![loopback; e.receivers],
        ),
    };
    c.supervisor = host(&sup);
    c.broadcaster = host(&bc);
    c.receivers = slots.iter().map(host).collect();
    // The lab starts viewers about 20 ms apart; large runs all join
    // within 20 s.
    c.join_interval = Duration::from_millis(20).min(Duration::from_secs(20) / e.receivers as u32);
    c.max_warmup = Duration::from_secs(30) + c.join_interval * e.receivers as u32;
    Ok(c)
}

/// One run's rows of `results.csv` and `hosts.csv`.
pub fn rows(e: &Experiment, out: &SimOutcome) -> (Vec<Row>, Vec<HostRow>) {
    let experiment = Experiment {
        integrity: SIMULATED.into(),
        ..e.clone()
    };
    let delivered: u64 = out.receivers.iter().map(|r| r.bytes_received).sum();
    let offload = crate::qos::offload(Some(out.broadcaster.wire_sent), delivered);
    let classes: Vec<HostClass> = match &e.network {
        Some(p) => p.assign(e.receivers).into_iter().cloned().collect(),
        None => vec![unshaped(); e.receivers],
    };
    let rows = out
        .receivers
        .iter()
        .enumerate()
        .map(|(slot, r)| Row {
            experiment: experiment.clone(),
            receiver: slot,
            qos: SlotQos {
                incarnations: r.incarnations,
                stalls: r.stalls,
                stall_ms: r.stall_ms,
                played_ms: r.played_ms,
                chunks_received: r.chunks_received,
                // Every accepted chunk counts as verified: the simulator
                // accepts all (integrity cost is not simulated).
                chunks_verified: r.chunks_received,
                chunks_rejected: 0,
                chunks_lost: r.chunks_lost,
                goodput_bps: r.goodput_bps,
                latency_ms_p50: r.latency_ms_p50,
                latency_ms_p99: r.latency_ms_p99,
                startup_ms: r.startup_ms,
                parent_changes: r.parent_changes,
                bytes_received: r.bytes_received,
                wire_bytes_sent: Some(r.wire_sent),
                wire_bytes_received: Some(r.wire_received),
            },
            bytes_sent: Some(r.wire_sent),
            bytes_received_wire: Some(r.wire_received),
            offload,
            cut_out: r.cut_out,
            attacker: false,
        })
        .collect();
    let mut hosts = Vec::new();
    if let Some(p) = &e.network {
        let server =
            |role: &'static str, class: &HostClass, h: &miostream_sim::HostOutcome| HostRow {
                role,
                slot: None,
                class: class.clone(),
                bytes: Bytes {
                    tx: h.wire_sent,
                    rx: h.wire_received,
                },
                delivered: None,
            };
        hosts.push(server("supervisor", p.supervisor_class(), &out.supervisor));
        hosts.push(server(
            "broadcaster",
            p.broadcaster_class(),
            &out.broadcaster,
        ));
        for (slot, (r, class)) in out.receivers.iter().zip(&classes).enumerate() {
            hosts.push(HostRow {
                role: "receiver",
                slot: Some(slot),
                class: class.clone(),
                bytes: Bytes {
                    tx: r.wire_sent,
                    rx: r.wire_received,
                },
                delivered: Some(r.bytes_received),
            });
        }
    }
    (rows, hosts)
}

fn append(path: &Path, header: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let fresh = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if fresh {
        writeln!(f, "{header}")?;
    }
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Peak resident memory of this process (kB), from `/proc/self/status`.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Simulates `runs` into `out` (which must not hold a `results.csv` yet):
/// the experiment's files, per-run tables on stdout, progress on stderr
/// (unless `quiet`), then the report and figures. Returns the figures.
/// `probe`: receivers measure their uplinks through the supervisor (see
/// [`SimConfig::probe`]).
pub fn run(
    out: &Path,
    runs: &[Experiment],
    probe: bool,
    quiet: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let results = out.join("results.csv");
    if results.exists() {
        anyhow::bail!(
            "{} exists: choose a new --out directory (or move it away)",
            results.display()
        );
    }
    let started = Instant::now();
    let total = runs.len();
    for (i, e) in runs.iter().enumerate() {
        if !quiet {
            eprintln!(
                "== simulated run {}/{total}: {} receivers, {}{}, {} failures/s ({}), {} s, seed {}",
                i + 1,
                e.receivers,
                e.network
                    .as_ref()
                    .map_or(String::new(), |p| format!("network {}, ", p.name)),
                e.topology,
                e.rate,
                e.distribution_name(),
                e.duration.as_secs(),
                e.seed
            );
        }
        let config = config(e, probe)?;
        let wall = Instant::now();
        let mut progress = |p: miostream_sim::Progress| {
            let secs = p.virtual_time.as_secs();
            if !quiet && secs > 0 && secs % 10 == 0 {
                eprintln!(
                    "  {:>4} s virtual ({}), {} playing, {} failures, {} events, {:.1} s wall",
                    secs,
                    if p.measuring { "measuring" } else { "warm-up" },
                    p.playing,
                    p.failures,
                    p.events,
                    wall.elapsed().as_secs_f64()
                );
            }
        };
        let outcome = miostream_sim::run(&config, &mut progress)
            .with_context(|| format!("simulating {}", e.key()))?;
        let wall = wall.elapsed();
        let (rows, hosts) = rows(e, &outcome);
        let mut csv = String::new();
        for row in &rows {
            let _ = writeln!(csv, "{}", row.csv());
        }
        append(&results, CSV_HEADER, &csv)?;
        let key = Experiment {
            integrity: SIMULATED.into(),
            ..e.clone()
        }
        .key();
        // The run table looks each slot's host row up among all of them
        // (quadratic): past this many slots hosts.csv is left out (the
        // wire bytes per slot are in results.csv all the same).
        if !hosts.is_empty() && e.receivers <= MAX_HOST_ROWS {
            let mut csv = String::new();
            for h in &hosts {
                let _ = writeln!(csv, "{}", h.csv(&key));
            }
            append(&out.join("hosts.csv"), HOSTS_HEADER, &csv)?;
        }
        let all = experiment::read_results(&results)?;
        print!(
            "{}",
            experiment::run_table(&key, &all, &experiment::read_hosts(&out.join("hosts.csv"))?)
        );
        if !quiet {
            let n = outcome.receivers.len().max(1) as f64;
            let stall_ms: u64 = outcome.receivers.iter().map(|r| r.stall_ms).sum();
            let changes: u64 = outcome.receivers.iter().map(|r| r.parent_changes).sum();
            let virt = outcome.warmup + e.duration;
            eprintln!(
                "  {} failures injected; per peer: {:.0} ms stalled, {:.1} parent changes; warm-up {:.1} s; {} events, {} timer spins, {} frames dropped at full send buffers; {:.2} s wall ({:.2} virtual s per wall s)",
                outcome.failures,
                stall_ms as f64 / n,
                changes as f64 / n,
                outcome.warmup.as_secs_f64(),
                outcome.events,
                outcome.timer_spins,
                outcome.frames_dropped,
                wall.as_secs_f64(),
                virt.as_secs_f64() / wall.as_secs_f64().max(1e-9)
            );
        }
    }
    let figures = crate::sweep::report(out)?;
    eprintln!(
        "simulated {total} run(s) in {:.1} s wall; peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        peak_rss_kb().map_or("?".into(), |kb| format!("{:.0}", kb as f64 / 1024.0))
    );
    Ok(figures)
}
