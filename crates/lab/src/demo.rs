//! `miostream-lab demo`: a supervisor, a broadcaster on a WebM (looped) and
//! N receivers over real WebRTC on loopback (or each on its own shaped
//! host, with a network profile), progress while it runs, a QoS table and
//! a table per host (wire bytes, offload) at the end and a decode check of
//! what every receiver played.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval, Instant};

use crate::cluster::{Bins, Cluster, Settings};
use crate::network::{show_rate, Profile};
use crate::qos::{hosts_table, table, HostLine, SlotQos};

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct Demo {
    /// Receivers.
    pub receivers: usize,
    /// list, tree or mesh.
    pub topology: String,
    /// How long the receivers play.
    pub duration: Duration,
    /// The broadcast WebM.
    pub input: PathBuf,
    /// sign or hmac.
    pub integrity: String,
    /// Each process on its own shaped host (`None`: loopback).
    pub network: Option<Profile>,
}

/// CPU ticks (user + system) and resident memory (KiB) of a process.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ; 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Runs the demo in `work`; true when every receiver played the whole
/// stream cleanly.
pub async fn run(
    bins: &Bins,
    work: &Path,
    demo: &Demo,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let settings = Settings {
        receivers: demo.receivers,
        topology: demo.topology.clone(),
        integrity: demo.integrity.clone(),
        input: demo.input.clone(),
        threshold: 1.0,
        startup_ms: 2000,
        record: true,
        rust_log: crate::cluster::child_log(),
        network: demo.network.clone(),
        attackers: None,
    };
    eprintln!(
        "== supervisor, broadcaster and {} receivers ({}, {}{}) in {}",
        demo.receivers,
        demo.topology,
        demo.integrity,
        demo.network
            .as_ref()
            .map_or(String::new(), |p| format!(", network {}", p.name)),
        work.display()
    );
    let mut cluster = Cluster::start(bins, work, &work.join("keys"), settings).await?;
    if let Some(net) = cluster.net() {
        let host = |name: &str, h: &crate::hosts::Host| {
            eprintln!(
                "  host {name:<11} {:<15} {:<8} up {}, down {}, loss {} %",
                h.address,
                h.class.name,
                show_rate(h.class.uplink),
                show_rate(h.class.downlink),
                h.class.loss * 100.0
            )
        };
        host("supervisor", &net.supervisor);
        host("broadcaster", &net.broadcaster);
        for (i, h) in net.receivers.iter().enumerate() {
            host(&format!("r{i}"), h);
        }
    }
    eprintln!("supervisor: {}", cluster.url);
    if let Some(m) = &cluster.monitor {
        eprintln!(
            "dashboard: {} (token in {})",
            m.url,
            work.join("supervisor/monitor.token").display()
        );
    }
    eprintln!("broadcaster: streaming {}", demo.input.display());
    let wire_start = cluster.net().map(|n| n.bytes());
    let limit = Duration::from_secs(30) + Duration::from_millis(300) * demo.receivers as u32;
    let outcome = match cluster
        .spawn_in_join_order(limit, stop, &|line| eprintln!("{line}"))
        .await
    {
        Ok(()) => watch_progress(&mut cluster, demo.duration, stop).await,
        Err(e) if *stop.borrow() => {
            tracing::debug!("{e:#}");
            Ok(true)
        }
        Err(e) => Err(e),
    };
    let wire: Option<Vec<crate::hosts::Bytes>> = match (cluster.net(), wire_start) {
        (Some(n), Some(start)) => Some(
            n.bytes()
                .into_iter()
                .zip(start)
                .map(|(end, start)| end.since(start))
                .collect(),
        ),
        _ => None,
    };
    eprintln!("== stopping");
    cluster.stop(Duration::from_secs(10)).await;
    let interrupted = outcome?;

    let mut rows = Vec::new();
    let mut ok = !interrupted;
    for slot in 0..cluster.len() {
        let history = cluster.history(slot);
        let q = (!history.is_empty()).then(|| SlotQos::fold(&history));
        if q.as_ref()
            .is_none_or(|q| q.chunks_received == 0 || q.chunks_rejected > 0)
        {
            ok = false;
        }
        rows.push((format!("r{slot}"), q));
    }
    println!("== QoS per receiver (lost = chunks skipped; latency = broadcaster send to delivery)");
    print!("{}", table(&rows));
    println!(
        "== per host ({}; wire bytes from the host's interface)",
        demo.network
            .as_ref()
            .map_or_else(|| "loopback".to_string(), |p| format!("network {}", p.name))
    );
    print!(
        "{}",
        hosts_table(&host_lines(&cluster, &rows, wire.as_deref()))
    );
    ok &= decode_check(&cluster).await;
    Ok(ok)
}

/// The per-host table's lines: receivers, then the broadcaster and the
/// supervisor; wire bytes from the hosts' counters (`wire`, in
/// [`crate::hosts::Net::hosts`] order) or from the receivers' summaries.
fn host_lines(
    cluster: &Cluster,
    rows: &[(String, Option<SlotQos>)],
    wire: Option<&[crate::hosts::Bytes]>,
) -> Vec<HostLine> {
    let class = |slot: usize| {
        cluster
            .host(slot)
            .map_or_else(|| "loopback".to_string(), |h| h.class.name.to_string())
    };
    let mut lines: Vec<HostLine> = rows
        .iter()
        .enumerate()
        .map(|(slot, (name, q))| {
            let w = wire.and_then(|w| w.get(2 + slot));
            HostLine {
                host: name.clone(),
                class: class(slot),
                stalls: q.as_ref().map(|q| q.stalls),
                stall_ms: q.as_ref().map(|q| q.stall_ms),
                latency_ms_p50: q.as_ref().map(|q| q.latency_ms_p50),
                latency_ms_p99: q.as_ref().map(|q| q.latency_ms_p99),
                tx: w
                    .map(|b| b.tx)
                    .or(q.as_ref().and_then(|q| q.wire_bytes_sent)),
                rx: w
                    .map(|b| b.rx)
                    .or(q.as_ref().and_then(|q| q.wire_bytes_received)),
                delivered: q.as_ref().map(|q| q.bytes_received),
            }
        })
        .collect();
    for (i, role) in [(1, "broadcaster"), (0, "supervisor")] {
        let w = wire.and_then(|w| w.get(i));
        let class = cluster.net().map_or_else(
            || "loopback".to_string(),
            |n| {
                if i == 0 {
                    n.supervisor.class.name.to_string()
                } else {
                    n.broadcaster.class.name.to_string()
                }
            },
        );
        lines.push(HostLine {
            host: role.into(),
            class,
            tx: w.map(|b| b.tx),
            rx: w.map(|b| b.rx),
            ..HostLine::default()
        });
    }
    lines
}

/// Prints progress every 2 s until `duration` passes; true if interrupted.
async fn watch_progress(
    cluster: &mut Cluster,
    duration: Duration,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    let end = start + duration;
    let mut tick = interval(Duration::from_secs(2));
    tick.tick().await;
    let mut last_cpu: Option<(Instant, u64)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => return Ok(false),
            _ = stop.changed() => return Ok(true),
            _ = tick.tick() => {}
        }
        cluster.healthy()?;
        for (slot, why) in cluster.exited() {
            eprintln!("  receiver r{slot} exited: {why}");
        }
        let live: Vec<_> = (0..cluster.len()).filter_map(|s| cluster.live(s)).collect();
        let playing = live.iter().filter(|s| s.playing()).count();
        let chunks: u64 = live.iter().map(|s| s.chunks_received).sum();
        let stalls: u64 = live.iter().map(|s| s.stalls).sum();
        let stall_ms: u64 = live.iter().map(|s| s.stall_ms).sum();
        let rejected: u64 = live.iter().map(|s| s.chunks_rejected).sum();
        let pids = cluster.receiver_pids();
        let (ticks, rss) = pids
            .iter()
            .filter_map(|&p| usage(p))
            .fold((0, 0), |(t, r), (a, b)| (t + a, r + b));
        let now = Instant::now();
        let cpu = match last_cpu {
            Some((t, prev)) if !pids.is_empty() => format!(
                ", {:.1}% of a core and {} MiB per receiver",
                100.0 * ticks.saturating_sub(prev) as f64
                    / USER_HZ
                    / now.duration_since(t).as_secs_f64()
                    / pids.len() as f64,
                rss / 1024 / pids.len() as u64
            ),
            _ => String::new(),
        };
        last_cpu = Some((now, ticks));
        eprintln!(
            "  t={:>3.0}s  {playing}/{} playing  {chunks} chunks delivered  {rejected} rejected  {stalls} stalls ({stall_ms} ms){cpu}",
            start.elapsed().as_secs_f64(),
            cluster.len(),
        );
    }
}

/// Decodes what every receiver played with ffmpeg, if it is installed.
async fn decode_check(cluster: &Cluster) -> bool {
    let probe = tokio::process::Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("(ffmpeg not installed: outputs not decoded)");
        return true;
    }
    let mut ok = true;
    for slot in 0..cluster.len() {
        let path = cluster.output_path(slot);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let out = tokio::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&path)
            .args(["-f", "null", "-"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() && o.stderr.is_empty() && size > 0 => {
                println!("r{slot}: output decodes cleanly ({} KiB)", size / 1024)
            }
            Ok(o) if o.status.success() && size > 0 => println!(
                "r{slot}: output decodes with warnings: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            _ => {
                println!("r{slot}: output does not decode");
                ok = false;
            }
        }
    }
    ok
}
