//! One churn experiment (paper §4.2): N receivers play the stream; R times a
//! second a receiver chosen by the failure distribution over the overlay's
//! positions is killed abruptly and a new viewer takes its place, so the
//! network size stays constant. Every receiver's QoS over the measured
//! window becomes one row of `results.csv`.
//!
//! With a network profile every process runs on its own shaped host; the
//! hosts' interface counters over the window give each receiver's wire
//! bytes (`bytes_sent`, `bytes_received_wire`), the rows of `hosts.csv`
//! (every host: role, slot, class, rates, loss, tx/rx bytes, media bytes
//! delivered) and the run's `offload` (1 − the broadcaster's bytes sent ÷
//! media bytes delivered to all receivers; the same on every row of a run).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use miostream_topology::FailureDistribution;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::attack::AttackPlan;
use crate::cluster::{Bins, Cluster, Settings, STREAM};
use crate::hosts::Bytes;
use crate::network::{HostClass, Profile};
use crate::qos::{self, HostLine, SlotQos, Summary};

/// One experiment's parameters.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Receivers (constant through the run).
    pub receivers: usize,
    /// list, tree or mesh.
    pub topology: String,
    /// Who fails.
    pub distribution: FailureDistribution,
    /// Failures per second (0: none).
    pub rate: f64,
    /// Measured window.
    pub duration: Duration,
    /// Seeds the failure choices.
    pub seed: u64,
    /// Fraction of chunks receivers verify.
    pub threshold: f64,
    /// sign or hmac.
    pub integrity: String,
    /// The broadcast WebM.
    pub input: PathBuf,
    /// Receivers' startup buffer (ms).
    pub startup_ms: u64,
    /// Each process on its own shaped host (`None`: loopback).
    pub network: Option<Profile>,
    /// Malicious receivers (`--attackers K --attack KIND`).
    pub attackers: Option<AttackPlan>,
}

impl Experiment {
    /// The network's name for `results.csv`: the profile's, or `loopback`.
    pub fn network_name(&self) -> String {
        self.network
            .as_ref()
            .map_or_else(|| "loopback".into(), |p| p.name.to_string())
    }

    /// The distribution as recorded (`none` without failures).
    pub fn distribution_name(&self) -> String {
        if self.rate > 0.0 {
            self.distribution.to_string()
        } else {
            "none".into()
        }
    }

    /// What identifies this run's rows in `results.csv` and `hosts.csv`:
    /// (network, topology, distribution, rate, seed, threshold).
    pub fn key(&self) -> RunKey {
        RunKey {
            network: self.network_name(),
            topology: self.topology.clone(),
            distribution: self.distribution_name(),
            rate: self.rate.to_string(),
            seed: self.seed.to_string(),
            threshold: self.threshold.to_string(),
        }
    }
}

/// A run's identity in the CSV files (the cells as written).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunKey {
    /// `network`.
    pub network: String,
    /// `topology`.
    pub topology: String,
    /// `distribution`.
    pub distribution: String,
    /// `rate`.
    pub rate: String,
    /// `seed`.
    pub seed: String,
    /// `threshold`.
    pub threshold: String,
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} network, {}, {} failures/s ({}), threshold {}, seed {}",
            self.network, self.topology, self.rate, self.distribution, self.threshold, self.seed
        )
    }
}

/// One row of `results.csv`: one receiver slot over one run.
#[derive(Debug, Clone)]
pub struct Row {
    /// The run's parameters.
    pub experiment: Experiment,
    /// The slot.
    pub receiver: usize,
    /// Its QoS over the measured window.
    pub qos: SlotQos,
    /// Wire bytes its host sent over the window (or its processes, if they
    /// report it; `None`: unknown).
    pub bytes_sent: Option<u64>,
    /// Wire bytes its host received over the window.
    pub bytes_received_wire: Option<u64>,
    /// The run's offload (the same on every row of the run).
    pub offload: Option<f64>,
    /// Times the supervisor cut this slot out (its receiver exited with a
    /// `Misbehaving` refusal).
    pub cut_out: u32,
    /// The slot ran a malicious receiver (`attacker` = 1).
    pub attacker: bool,
}

/// The CSV header of [`Row`]s.
pub const CSV_HEADER: &str = "topology,distribution,rate,seed,receivers,duration_s,threshold,integrity,receiver,incarnations,stalls,stall_ms,played_ms,goodput_bps,latency_ms_p50,latency_ms_p99,chunks_received,chunks_verified,chunks_rejected,chunks_lost,parent_changes,network,bytes_sent,bytes_received_wire,offload,cut_out,attacker";

/// The column counts of older `results.csv` files, which still read (the
/// newer cells empty): before the network columns, before `cut_out`, and
/// before `attacker`.
const CSV_HEADER_OLD_LENS: [usize; 3] = [21, 25, 26];

/// The CSV header of `hosts.csv`: one row per host per run (with
/// `--network`): the run's key, then the host's role (`supervisor`,
/// `broadcaster`, `receiver`), slot (receivers), class, uplink and
/// downlink (bit/s, empty: unshaped), incoming loss, the wire bytes its
/// interface sent and received over the window, and the media bytes
/// delivered to it (receivers).
pub const HOSTS_HEADER: &str = "network,topology,distribution,rate,seed,threshold,role,slot,class,uplink_bps,downlink_bps,loss,tx_bytes,rx_bytes,bytes_delivered";

/// One host of a run (a row of `hosts.csv`).
#[derive(Debug, Clone)]
pub struct HostRow {
    /// `supervisor`, `broadcaster` or `receiver`.
    pub role: &'static str,
    /// The receiver slot.
    pub slot: Option<usize>,
    /// Its class.
    pub class: HostClass,
    /// Its interface counters over the window.
    pub bytes: Bytes,
    /// Media bytes delivered to it (receivers).
    pub delivered: Option<u64>,
}

impl HostRow {
    /// The row as CSV (no newline) for the run `key`.
    pub fn csv(&self, key: &RunKey) -> String {
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            key.network,
            key.topology,
            key.distribution,
            key.rate,
            key.seed,
            key.threshold,
            self.role,
            self.slot.map_or(String::new(), |s| s.to_string()),
            self.class.name,
            opt(self.class.uplink),
            opt(self.class.downlink),
            self.class.loss,
            self.bytes.tx,
            self.bytes.rx,
            opt(self.delivered)
        )
    }
}

impl Row {
    /// The row as CSV (no newline).
    pub fn csv(&self) -> String {
        let e = &self.experiment;
        let q = &self.qos;
        let distribution = e.distribution_name();
        let mut s = String::new();
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.1},{},{},{},{},{}",
            e.topology,
            distribution,
            e.rate,
            e.seed,
            e.receivers,
            e.duration.as_secs_f64(),
            e.threshold,
            e.integrity,
            self.receiver,
            q.incarnations,
            q.stalls,
            q.stall_ms,
            q.played_ms,
            q.goodput_bps,
            q.latency_ms_p50,
            q.latency_ms_p99,
            q.chunks_received,
            q.chunks_verified,
            q.chunks_rejected,
            q.chunks_lost,
            q.parent_changes
        );
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let _ = write!(
            s,
            ",{},{},{},{}",
            e.network_name(),
            opt(self.bytes_sent),
            opt(self.bytes_received_wire),
            self.offload.map_or(String::new(), |o| format!("{o:.4}"))
        );
        let _ = write!(s, ",{},{}", self.cut_out, u8::from(self.attacker));
        s
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// One row per receiver slot.
    pub rows: Vec<Row>,
    /// Failures injected.
    pub failures: usize,
    /// Receivers that exited on their own during the window (slot, reason).
    pub crashed: Vec<(usize, String)>,
    /// Whether failures were placed by the monitor's overlay order (false:
    /// by join order).
    pub by_overlay_order: bool,
    /// Every host (supervisor, broadcaster, receivers), with `--network`.
    pub hosts: Vec<HostRow>,
    /// The run's offload, when the broadcaster's bytes are known.
    pub offload: Option<f64>,
}

/// Chooses failed receivers: the distribution over overlay positions,
/// seeded. Pure.
#[derive(Debug)]
pub struct Injector {
    distribution: FailureDistribution,
    rng: ChaCha8Rng,
}

impl Injector {
    /// A seeded injector.
    pub fn new(distribution: FailureDistribution, seed: u64) -> Self {
        Self {
            distribution,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The slot to fail, given the slots in overlay order (position 0 first).
    /// Returns (slot, position).
    pub fn choose(&mut self, order: &[usize]) -> Option<(usize, usize)> {
        let position = self.distribution.pick(order.len(), &mut self.rng)?;
        Some((order[position], position))
    }
}

/// The slots in overlay order: the monitor's node order mapped to slots by
/// peer id; nodes whose process has not reported its id yet are left out.
pub fn slots_in_order(nodes: &[String], live: &[Option<Summary>]) -> Vec<usize> {
    nodes
        .iter()
        .filter_map(|peer| {
            live.iter()
                .position(|s| s.as_ref().is_some_and(|s| &s.peer_id == peer))
        })
        .collect()
}

fn say(quiet: bool, line: &str) {
    if !quiet {
        eprintln!("{line}");
    }
}

/// Runs one experiment in `work` (keys kept in `keys`), appending failure
/// events to `failures_csv`. `stop` ends it early (Ctrl-C).
pub async fn run(
    bins: &Bins,
    work: &Path,
    keys: &Path,
    e: &Experiment,
    failures_csv: &mut String,
    stop: &mut watch::Receiver<bool>,
    quiet: bool,
) -> anyhow::Result<Outcome> {
    let settings = Settings {
        receivers: e.receivers,
        topology: e.topology.clone(),
        integrity: e.integrity.clone(),
        input: e.input.clone(),
        threshold: e.threshold,
        startup_ms: e.startup_ms,
        record: false,
        rust_log: crate::cluster::child_log(),
        network: e.network.clone(),
        attackers: e.attackers.clone(),
    };
    let mut cluster = Cluster::start(bins, work, keys, settings).await?;
    let outcome = measure(&mut cluster, e, failures_csv, stop, quiet).await;
    cluster.stop(Duration::from_secs(10)).await;
    let m = outcome?;
    let (baseline, failures, crashed, by_overlay_order) =
        (m.baseline, m.failures, m.crashed, m.by_overlay_order);
    let mut rows: Vec<Row> = (0..cluster.len())
        .map(|slot| {
            let mut history = cluster.history(slot);
            if let (Some(first), Some(Some(base))) = (history.first_mut(), baseline.get(slot)) {
                *first = first.since(base);
            }
            let mut qos = SlotQos::fold(&history);
            // A viewer killed before it wrote its first summary left no
            // QoS, but it held the slot all the same.
            qos.incarnations = cluster.incarnations(slot);
            // On a host, its interface counters; on loopback, what the
            // receivers report, if they do.
            let wire = m.wire.as_ref().and_then(|w| w.get(2 + slot));
            Row {
                experiment: e.clone(),
                receiver: slot,
                bytes_sent: wire.map(|b| b.tx).or(qos.wire_bytes_sent),
                bytes_received_wire: wire.map(|b| b.rx).or(qos.wire_bytes_received),
                qos,
                offload: None,
                cut_out: cluster.cut_outs(slot),
                attacker: cluster.is_attacker(slot),
            }
        })
        .collect();
    let delivered: u64 = rows.iter().map(|r| r.qos.bytes_received).sum();
    let offload = qos::offload(m.wire.as_ref().map(|w| w[1].tx), delivered);
    for r in &mut rows {
        r.offload = offload;
    }
    let mut hosts = Vec::new();
    if let (Some(net), Some(wire)) = (cluster.net(), &m.wire) {
        for (i, (h, bytes)) in net.hosts().zip(wire).enumerate() {
            let (role, slot) = match i {
                0 => ("supervisor", None),
                1 => ("broadcaster", None),
                n => ("receiver", Some(n - 2)),
            };
            hosts.push(HostRow {
                role,
                slot,
                class: h.class.clone(),
                bytes: *bytes,
                delivered: slot.map(|s| rows[s].qos.bytes_received),
            });
        }
    }
    Ok(Outcome {
        rows,
        failures,
        crashed,
        by_overlay_order,
        hosts,
        offload,
    })
}

/// What the measured window left.
struct Measured {
    /// Every slot's summary when the window opened.
    baseline: Vec<Option<Summary>>,
    failures: usize,
    crashed: Vec<(usize, String)>,
    by_overlay_order: bool,
    /// Every host's counters over the window ([`crate::hosts::Net::hosts`]
    /// order), with `--network`.
    wire: Option<Vec<Bytes>>,
}

/// The end-of-run table of one run from its rows in `results.csv` and
/// `hosts.csv` (as read by [`read_results`] / [`read_hosts`]): every
/// receiver slot, then the broadcaster and the supervisor.
pub fn run_table(key: &RunKey, results: &[Vec<String>], hosts: &[Vec<String>]) -> String {
    let col = |name: &str| CSV_HEADER.split(',').position(|c| c == name);
    let hcol = |name: &str| HOSTS_HEADER.split(',').position(|c| c == name);
    let cell = |row: &[String], i: Option<usize>| -> Option<String> {
        i.and_then(|i| row.get(i))
            .filter(|c| !c.is_empty())
            .cloned()
    };
    let num = |row: &[String], name: &str| cell(row, col(name)).and_then(|c| c.parse::<f64>().ok());
    let mine = |row: &[String], idx: &dyn Fn(&str) -> Option<usize>| {
        let get = |n: &str| cell(row, idx(n)).unwrap_or_default();
        let net = get("network");
        let net = if net.is_empty() {
            "loopback".to_string()
        } else {
            net
        };
        net == key.network
            && get("topology") == key.topology
            && get("distribution") == key.distribution
            && get("rate") == key.rate
            && get("seed") == key.seed
            && get("threshold") == key.threshold
    };
    let host_rows: Vec<&Vec<String>> = hosts.iter().filter(|r| mine(r, &hcol)).collect();
    let host_of = |role: &str, slot: Option<&str>| {
        host_rows.iter().find(|r| {
            cell(r, hcol("role")).as_deref() == Some(role)
                && cell(r, hcol("slot")).as_deref() == slot
        })
    };
    let hnum = |r: &[String], name: &str| cell(r, hcol(name)).and_then(|c| c.parse::<u64>().ok());
    let mut lines = Vec::new();
    for row in results.iter().filter(|r| mine(r, &col)) {
        let slot = cell(row, col("receiver")).unwrap_or_default();
        let h = host_of("receiver", Some(&slot));
        let attacker = cell(row, col("attacker")).as_deref() == Some("1");
        let cut = num(row, "cut_out").unwrap_or(0.0) as u64;
        let mut notes = Vec::new();
        if attacker {
            notes.push("attacker".to_string());
        }
        if cut > 0 {
            notes.push(format!("cut out {cut}"));
        }
        lines.push(HostLine {
            host: if notes.is_empty() {
                format!("r{slot}")
            } else {
                format!("r{slot} ({})", notes.join(", "))
            },
            class: h
                .and_then(|h| cell(h, hcol("class")))
                .unwrap_or_else(|| "loopback".into()),
            stalls: num(row, "stalls").map(|v| v as u64),
            stall_ms: num(row, "stall_ms").map(|v| v as u64),
            latency_ms_p50: num(row, "latency_ms_p50"),
            latency_ms_p99: num(row, "latency_ms_p99"),
            tx: num(row, "bytes_sent").map(|v| v as u64),
            rx: num(row, "bytes_received_wire").map(|v| v as u64),
            delivered: h.and_then(|h| hnum(h, "bytes_delivered")),
        });
    }
    for role in ["broadcaster", "supervisor"] {
        let h = host_of(role, None);
        lines.push(HostLine {
            host: role.into(),
            class: h
                .and_then(|h| cell(h, hcol("class")))
                .unwrap_or_else(|| "loopback".into()),
            tx: h.and_then(|h| hnum(h, "tx_bytes")),
            rx: h.and_then(|h| hnum(h, "rx_bytes")),
            ..HostLine::default()
        });
    }
    format!("== {key}\n{}", qos::hosts_table(&lines))
}

async fn measure(
    cluster: &mut Cluster,
    e: &Experiment,
    failures_csv: &mut String,
    stop: &mut watch::Receiver<bool>,
    quiet: bool,
) -> anyhow::Result<Measured> {
    // Warm-up: every receiver joined and playing before the clock starts.
    let started = Instant::now();
    let warmup = Duration::from_secs(30) + Duration::from_millis(300) * e.receivers as u32;
    cluster
        .spawn_in_join_order(warmup, stop, &|line| say(quiet, line))
        .await?;
    let mut tick = interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if *stop.borrow() {
            bail!("interrupted");
        }
        cluster.healthy()?;
        for (slot, why) in cluster.exited() {
            // An attacker may be cut out before everyone plays: a new one
            // takes its place. An honest receiver must not fail.
            if !cluster.is_attacker(slot) {
                bail!("receiver {slot} exited while joining: {why}");
            }
            say(quiet, &format!("  attacker {slot} exited while the others joined: {why}; a new one takes its place"));
            cluster.spawn(slot)?;
        }
        let honest: Vec<usize> = (0..cluster.len())
            .filter(|&s| !cluster.is_attacker(s))
            .collect();
        let playing = honest
            .iter()
            .filter(|&&s| cluster.live(s).is_some_and(|q| q.playing()))
            .count();
        if playing == honest.len() {
            break;
        }
        if started.elapsed() > warmup {
            bail!(
                "only {playing} of {} honest receivers were playing after {warmup:?}",
                honest.len()
            );
        }
    }
    let attackers = e.attackers.as_ref().map_or(String::new(), |a| {
        format!(
            " (and {} attacker(s): {} at {}/s)",
            a.count, a.attack, a.rate
        )
    });
    say(
        quiet,
        &format!(
            "  all {} {}receivers playing after {:.1} s{attackers}; measuring {} s",
            cluster.len() - e.attackers.as_ref().map_or(0, |a| a.count),
            if e.attackers.is_some() { "honest " } else { "" },
            started.elapsed().as_secs_f64(),
            e.duration.as_secs()
        ),
    );
    let baseline: Vec<Option<Summary>> = (0..cluster.len()).map(|s| cluster.live(s)).collect();
    let wire_start = cluster.net().map(|n| n.bytes());

    let mut injector = Injector::new(e.distribution, e.seed);
    let period = if e.rate > 0.0 {
        Duration::from_secs_f64(1.0 / e.rate)
    } else {
        Duration::MAX / 4
    };
    let t0 = Instant::now();
    let end = t0 + e.duration;
    let mut failure_tick = tokio::time::interval_at(t0 + period, period);
    failure_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch_tick = interval(Duration::from_secs(1));
    let mut failures = 0usize;
    let mut crashed = Vec::new();
    let mut by_overlay_order = cluster.monitor.is_some();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = stop.changed() => bail!("interrupted"),
            _ = watch_tick.tick() => {
                cluster.healthy()?;
                for (slot, why) in cluster.exited() {
                    let who = if cluster.is_attacker(slot) { "attacker" } else { "receiver" };
                    say(quiet, &format!("  {who} {slot} exited on its own: {why}; a new viewer takes its place"));
                    crashed.push((slot, why));
                    cluster.spawn(slot)?;
                }
            }
            _ = failure_tick.tick() => {
                if Instant::now() >= end {
                    break; // a failure due at the end would not be measured
                }
                let live: Vec<Option<Summary>> = (0..cluster.len()).map(|s| cluster.live(s)).collect();
                let mut order = Vec::new();
                if let Some(m) = &cluster.monitor {
                    match m.order(STREAM).await {
                        Ok(nodes) => {
                            let peers: Vec<String> = nodes.into_iter().map(|n| n.peer).collect();
                            order = slots_in_order(&peers, &live);
                        }
                        Err(err) => {
                            tracing::warn!("monitor: {err:#}; failures chosen by join order");
                            by_overlay_order = false;
                        }
                    }
                }
                if order.is_empty() {
                    // Join order: the slots whose process has joined.
                    order = (0..cluster.len()).filter(|&s| live[s].as_ref().is_some_and(|q| q.joined_secs > 0.0)).collect();
                }
                let Some((slot, position)) = injector.choose(&order) else { continue };
                let _ = writeln!(failures_csv, "{},{},{},{},{},{},{}",
                    e.topology, e.distribution, e.rate, e.seed,
                    t0.elapsed().as_millis(), slot, position);
                cluster.kill(slot).await;
                cluster.spawn(slot)?;
                failures += 1;
            }
        }
    }
    let wire = match (cluster.net(), wire_start) {
        (Some(n), Some(start)) => Some(
            n.bytes()
                .into_iter()
                .zip(start)
                .map(|(end, start)| end.since(start))
                .collect(),
        ),
        _ => None,
    };
    Ok(Measured {
        baseline,
        failures,
        crashed,
        by_overlay_order,
        wire,
    })
}

/// Reads `path` as a results CSV written by the lab (header checked; a
/// file from before the network columns or before `cut_out` reads with
/// those cells empty).
pub fn read_results(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_results(&text)
        .with_context(|| format!("{} is not a miostream-lab results.csv", path.display()))
}

/// [`read_results`] on a file's text: every row as long as
/// [`CSV_HEADER`] (an older file's missing cells empty).
pub fn parse_results(text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let columns: Vec<&str> = CSV_HEADER.split(',').collect();
    let known = header == CSV_HEADER
        || CSV_HEADER_OLD_LENS
            .iter()
            .any(|&n| header == columns[..n].join(","));
    if !known {
        bail!("unknown header {header:?}");
    }
    Ok(lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut row: Vec<String> = l.split(',').map(str::to_owned).collect();
            if row.len() < columns.len() {
                row.resize(columns.len(), String::new());
            }
            row
        })
        .collect())
}

/// Reads `path` as a `hosts.csv` written by the lab (no file: no rows).
pub fn read_hosts(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(HOSTS_HEADER) {
        bail!("{} is not a miostream-lab hosts.csv", path.display());
    }
    Ok(lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injector_maps_positions_to_slots_and_replays_by_seed() {
        let order = [7, 3, 5, 1];
        let run = |seed| {
            let mut inj = Injector::new(FailureDistribution::Uniform, seed);
            (0..20)
                .map(|_| inj.choose(&order).expect("non-empty"))
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert!(a.iter().all(|&(slot, pos)| order[pos] == slot));
        assert_eq!(
            Injector::new(FailureDistribution::Poisson, 1).choose(&[]),
            None
        );
    }

    #[test]
    fn binomial_failures_hit_the_far_end_of_the_overlay() {
        let order: Vec<usize> = (0..40).rev().collect(); // slot 39 is at position 0
        let mut inj = Injector::new(FailureDistribution::Binomial, 9);
        let positions: Vec<usize> = (0..200)
            .map(|_| inj.choose(&order).expect("non-empty").1)
            .collect();
        let mean = positions.iter().sum::<usize>() as f64 / positions.len() as f64;
        assert!((28.0..35.0).contains(&mean), "mean position {mean}");
    }

    #[test]
    fn overlay_order_is_mapped_through_peer_ids() {
        let s = |id: &str| {
            Some(Summary {
                peer_id: id.into(),
                ..Summary::default()
            })
        };
        let live = vec![s("a"), None, s("c"), s("b")];
        let nodes = ["b".to_string(), "x".into(), "a".into(), "c".into()];
        assert_eq!(slots_in_order(&nodes, &live), vec![3, 0, 2]);
    }

    #[test]
    fn rows_are_csv_with_the_header_columns() {
        let e = Experiment {
            receivers: 3,
            topology: "tree".into(),
            distribution: FailureDistribution::Poisson,
            rate: 2.0,
            duration: Duration::from_secs(60),
            seed: 7,
            threshold: 1.0,
            integrity: "sign".into(),
            input: "x.webm".into(),
            startup_ms: 2000,
            network: None,
            attackers: None,
        };
        let row = Row {
            experiment: e.clone(),
            receiver: 2,
            qos: SlotQos {
                stalls: 1,
                stall_ms: 120,
                ..SlotQos::default()
            },
            bytes_sent: None,
            bytes_received_wire: None,
            offload: None,
            cut_out: 0,
            attacker: false,
        };
        let csv = row.csv();
        assert_eq!(csv.split(',').count(), CSV_HEADER.split(',').count());
        assert!(
            csv.starts_with("tree,poisson,2,7,3,60,1,sign,2,0,1,120,"),
            "{csv}"
        );
        let idle = Row {
            experiment: Experiment { rate: 0.0, ..e },
            ..row
        };
        assert!(
            idle.csv().starts_with("tree,none,0,"),
            "no failures, no distribution"
        );
        assert!(csv.ends_with(",loopback,,,,0,0"), "no wire counters: {csv}");
        let shaped = Row {
            experiment: Experiment {
                network: Some(crate::network::OFFICE),
                ..idle.experiment.clone()
            },
            bytes_sent: Some(1_500_000),
            bytes_received_wire: Some(3_000_000),
            offload: Some(0.625),
            cut_out: 2,
            attacker: true,
            ..idle.clone()
        };
        assert!(
            shaped.csv().ends_with(",office,1500000,3000000,0.6250,2,1"),
            "{}",
            shaped.csv()
        );
    }

    #[test]
    fn a_run_table_joins_results_and_hosts() {
        let e = Experiment {
            receivers: 2,
            topology: "tree".into(),
            distribution: FailureDistribution::Uniform,
            rate: 0.0,
            duration: Duration::from_secs(10),
            seed: 1,
            threshold: 1.0,
            integrity: "sign".into(),
            input: "x.webm".into(),
            startup_ms: 2000,
            network: Some(crate::network::OFFICE),
            attackers: None,
        };
        let split = |s: String| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        let results: Vec<Vec<String>> = (0..2)
            .map(|slot| {
                split(
                    Row {
                        experiment: e.clone(),
                        receiver: slot,
                        qos: SlotQos {
                            latency_ms_p99: 42.0,
                            ..SlotQos::default()
                        },
                        bytes_sent: Some(1000 * slot as u64),
                        bytes_received_wire: Some(2000),
                        offload: Some(0.5),
                        cut_out: u32::from(slot == 1),
                        attacker: slot == 1,
                    }
                    .csv(),
                )
            })
            .collect();
        let class = |name: &str| crate::network::OFFICE.class(name).expect("class").clone();
        let hosts: Vec<Vec<String>> = [
            ("broadcaster", None, "server", 1000, None),
            ("receiver", Some(0), "wifi", 0, Some(1000)),
            ("receiver", Some(1), "wired", 1000, Some(1000)),
        ]
        .into_iter()
        .map(|(role, slot, c, tx, delivered)| {
            split(
                HostRow {
                    role,
                    slot,
                    class: class(c),
                    bytes: Bytes { tx, rx: 2000 },
                    delivered,
                }
                .csv(&e.key()),
            )
        })
        .collect();
        let t = run_table(&e.key(), &results, &hosts);
        assert!(
            t.starts_with("== office network, tree, 0 failures/s (none)"),
            "{t}"
        );
        assert!(t.contains("\nr0                        wifi"), "{t}");
        assert!(t.contains("r1 (attacker, cut out 1)  wired"), "{t}");
        assert!(t.contains("broadcaster               server"), "{t}");
        assert!(t.contains("42.0"), "{t}");
        assert!(t.contains("offload 0.500"), "{t}");
        let other = Experiment { seed: 2, ..e };
        assert!(!run_table(&other.key(), &results, &hosts).contains("wifi"));
    }

    #[test]
    fn older_results_files_read_with_the_newer_cells_empty() {
        let columns: Vec<&str> = CSV_HEADER.split(',').collect();
        let row = |n: usize| vec!["1"; n].join(",");
        for n in [21, 25, 26, columns.len()] {
            let text = format!("{}\n{}\n\n{}\n", columns[..n].join(","), row(n), row(n));
            let rows = parse_results(&text).unwrap();
            assert_eq!(rows.len(), 2, "{n} columns");
            assert!(rows.iter().all(|r| r.len() == columns.len()), "{n} columns");
            let cut = columns.iter().position(|c| *c == "cut_out").unwrap();
            assert_eq!(rows[0][cut], if n >= 26 { "1" } else { "" });
            let attacker = columns.iter().position(|c| *c == "attacker").unwrap();
            assert_eq!(rows[0][attacker], if n == columns.len() { "1" } else { "" });
        }
        assert!(parse_results("topology,rate\n1,2\n").is_err());
        assert!(parse_results("").is_err());
    }
}
