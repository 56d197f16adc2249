//! One churn experiment (paper §4.2): N receivers play the stream; R times a
//! second a receiver chosen by the failure distribution over the overlay's
//! positions is killed abruptly and a new viewer takes its place, so the
//! network size stays constant. Every receiver's QoS over the measured
//! window becomes one row of `results.csv`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use miostream_topology::FailureDistribution;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::cluster::{Bins, Cluster, Settings, STREAM};
use crate::qos::{SlotQos, Summary};

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
}

/// The CSV header of [`Row`]s.
pub const CSV_HEADER: &str = "topology,distribution,rate,seed,receivers,duration_s,threshold,integrity,receiver,incarnations,stalls,stall_ms,played_ms,goodput_bps,latency_ms_p50,latency_ms_p99,chunks_received,chunks_verified,chunks_rejected,chunks_lost,parent_changes";

impl Row {
    /// The row as CSV (no newline).
    pub fn csv(&self) -> String {
        let e = &self.experiment;
        let q = &self.qos;
        let distribution = if e.rate > 0.0 {
            e.distribution.to_string()
        } else {
            "none".into()
        };
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
    };
    let mut cluster = Cluster::start(bins, work, keys, settings).await?;
    let outcome = measure(&mut cluster, e, failures_csv, stop, quiet).await;
    cluster.stop(Duration::from_secs(10)).await;
    let (baseline, failures, crashed, by_overlay_order) = outcome?;
    let rows = (0..cluster.len())
        .map(|slot| {
            let mut history = cluster.history(slot);
            if let (Some(first), Some(Some(base))) = (history.first_mut(), baseline.get(slot)) {
                *first = first.since(base);
            }
            let mut qos = SlotQos::fold(&history);
            // A viewer killed before it wrote its first summary left no
            // QoS, but it held the slot all the same.
            qos.incarnations = cluster.incarnations(slot);
            Row {
                experiment: e.clone(),
                receiver: slot,
                qos,
            }
        })
        .collect();
    Ok(Outcome {
        rows,
        failures,
        crashed,
        by_overlay_order,
    })
}

type Measured = (Vec<Option<Summary>>, usize, Vec<(usize, String)>, bool);

async fn measure(
    cluster: &mut Cluster,
    e: &Experiment,
    failures_csv: &mut String,
    stop: &mut watch::Receiver<bool>,
    quiet: bool,
) -> anyhow::Result<Measured> {
    for slot in 0..cluster.len() {
        cluster.spawn(slot)?;
    }
    // Warm-up: every receiver joined and playing before the clock starts.
    let started = Instant::now();
    let warmup = Duration::from_secs(30) + Duration::from_millis(300) * e.receivers as u32;
    let mut tick = interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if *stop.borrow() {
            bail!("interrupted");
        }
        cluster.healthy()?;
        if let Some((slot, why)) = cluster.exited().into_iter().next() {
            bail!("receiver {slot} exited while joining: {why}");
        }
        let playing = (0..cluster.len())
            .filter(|&s| cluster.live(s).is_some_and(|q| q.playing()))
            .count();
        if playing == cluster.len() {
            break;
        }
        if started.elapsed() > warmup {
            bail!(
                "only {playing} of {} receivers were playing after {warmup:?}",
                cluster.len()
            );
        }
    }
    say(
        quiet,
        &format!(
            "  all {} receivers playing after {:.1} s; measuring {} s",
            cluster.len(),
            started.elapsed().as_secs_f64(),
            e.duration.as_secs()
        ),
    );
    let baseline: Vec<Option<Summary>> = (0..cluster.len()).map(|s| cluster.live(s)).collect();

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
                    say(quiet, &format!("  receiver {slot} exited on its own: {why}; a new viewer takes its place"));
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
    Ok((baseline, failures, crashed, by_overlay_order))
}

/// Reads `path` as a results CSV written by the lab (header checked).
pub fn read_results(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        bail!("{} is not a miostream-lab results.csv", path.display());
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
        };
        let row = Row {
            experiment: e.clone(),
            receiver: 2,
            qos: SlotQos {
                stalls: 1,
                stall_ms: 120,
                ..SlotQos::default()
            },
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
    }
}
