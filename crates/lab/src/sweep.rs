//! A series of experiments into one output directory: `results.csv` (one
//! row per receiver per run), `failures.csv` (every injected failure),
//! `report.txt` (per-point averages beside the paper's numbers) and the
//! figures.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::watch;

use crate::cluster::Bins;
use crate::experiment::{self, Experiment, CSV_HEADER};
use crate::figures::{self, Point};

/// The paper's average stalled time per peer (ms), uniform failures, at 0
/// and 5 failures per second (§4.4, Fig. 11).
pub const PAPER_STALL_MS: [(&str, f64, f64); 3] = [
    ("list", 2807.0, 7325.0),
    ("tree", 169.0, 2410.0),
    ("mesh", 169.0, 1093.0),
];

/// The runs of a sweep: for each topology, one run without failures per
/// threshold, then every distribution at every non-zero rate (threshold 1).
pub fn plan(
    base: &Experiment,
    topologies: &[String],
    distributions: &[miostream_topology::FailureDistribution],
    rates: &[f64],
    thresholds: &[f64],
) -> Vec<Experiment> {
    let mut runs = Vec::new();
    for t in topologies {
        let mut ths: Vec<f64> = thresholds.to_vec();
        if !ths.contains(&1.0) {
            ths.push(1.0);
        }
        for &threshold in &ths {
            runs.push(Experiment {
                topology: t.clone(),
                rate: 0.0,
                threshold,
                ..base.clone()
            });
        }
        for &d in distributions {
            for &rate in rates.iter().filter(|&&r| r > 0.0) {
                runs.push(Experiment {
                    topology: t.clone(),
                    distribution: d,
                    rate,
                    threshold: 1.0,
                    ..base.clone()
                });
            }
        }
    }
    for (i, r) in runs.iter_mut().enumerate() {
        r.seed = base.seed.wrapping_add(i as u64);
    }
    runs
}

fn append(path: &Path, header: &str, text: &str) -> anyhow::Result<()> {
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

/// Runs `runs` into `out`; keeps each run's logs under `out/runs/` only if
/// `keep` (or the run failed). Returns the figures drawn.
pub async fn run(
    bins: &Bins,
    out: &Path,
    runs: &[Experiment],
    keep: bool,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let results = out.join("results.csv");
    if results.exists() {
        anyhow::bail!(
            "{} exists: choose a new --out directory (or move it away)",
            results.display()
        );
    }
    let keys = out.join("keys");
    let total = runs.len();
    let started = std::time::Instant::now();
    for (i, e) in runs.iter().enumerate() {
        let name = format!(
            "{}-{}-r{}-t{}",
            e.topology,
            if e.rate > 0.0 {
                e.distribution.to_string()
            } else {
                "none".into()
            },
            e.rate,
            e.threshold
        );
        let eta = if i > 0 {
            let per = started.elapsed().as_secs_f64() / i as f64;
            format!(", about {:.0} min left", per * (total - i) as f64 / 60.0)
        } else {
            String::new()
        };
        eprintln!(
            "== run {}/{total}: {} receivers, {}, {} failures/s ({}), threshold {}, {} s, seed {}{eta}",
            i + 1,
            e.receivers,
            e.topology,
            e.rate,
            if e.rate > 0.0 { e.distribution.to_string() } else { "none".into() },
            e.threshold,
            e.duration.as_secs(),
            e.seed
        );
        let work = out.join("runs").join(&name);
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work)?;
        let mut failures = String::new();
        let outcome = experiment::run(bins, &work, &keys, e, &mut failures, stop, false).await;
        append(
            &out.join("failures.csv"),
            "topology,distribution,rate,seed,t_ms,receiver,position",
            &failures,
        )?;
        let outcome =
            outcome.with_context(|| format!("run {name} (logs in {})", work.display()))?;
        let mut csv = String::new();
        for row in &outcome.rows {
            let _ = writeln!(csv, "{}", row.csv());
        }
        append(&results, CSV_HEADER, &csv)?;
        let points = figures::aggregate(&experiment::read_results(&results)?)?;
        if let Some(p) = points.iter().find(|p| {
            p.topology == e.topology
                && p.rate == e.rate
                && p.threshold == e.threshold
                && (e.rate == 0.0 || p.distribution == e.distribution.to_string())
        }) {
            eprintln!(
                "  {} failures injected{}; per peer: {:.0} ms stalled, {:.2} stalls, {:.2} Mbit/s, {:.1} chunks lost; {:.3} % of play stalled{}",
                outcome.failures,
                if outcome.failures > 0 && !outcome.by_overlay_order { " (by join order: no monitor)" } else { "" },
                p.stall_ms,
                p.stalls,
                p.goodput_bps / 1e6,
                p.lost,
                p.stalled_pct,
                if outcome.crashed.is_empty() {
                    String::new()
                } else {
                    format!("; {} receiver(s) exited on their own", outcome.crashed.len())
                }
            );
        }
        if !keep && outcome.crashed.is_empty() {
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    report(out)
}

/// Writes `report.txt` and the figures from `out/results.csv`.
pub fn report(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let points = figures::aggregate(&experiment::read_results(&out.join("results.csv"))?)?;
    let text = report_text(&points);
    std::fs::write(out.join("report.txt"), &text)?;
    print!("{text}");
    figures::draw_all(&points, out)
}

/// The per-point table and the comparison with the paper.
pub fn report_text(points: &[Point]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<9} {:>5} {:>9} {:>6} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "topo",
        "dist",
        "rate",
        "threshold",
        "peers",
        "stall ms/peer",
        "stalls/peer",
        "% stalled",
        "Mbit/s",
        "lost/peer"
    );
    for p in points {
        let _ = writeln!(
            s,
            "{:<6} {:<9} {:>5} {:>9} {:>6} {:>12.1} {:>12.2} {:>10.4} {:>10.2} {:>10.1}",
            p.topology,
            p.distribution,
            p.rate,
            p.threshold,
            p.peers,
            p.stall_ms,
            p.stalls,
            p.stalled_pct,
            p.goodput_bps / 1e6,
            p.lost
        );
    }
    let _ = writeln!(
        s,
        "\nstalled time per peer (ms), uniform failures: ours vs the paper (83 receivers, 60 s)"
    );
    for (t, paper0, paper5) in PAPER_STALL_MS {
        let ours = |rate: f64| {
            points
                .iter()
                .find(|p| {
                    p.topology == t
                        && p.rate == rate
                        && p.threshold == 1.0
                        && (rate == 0.0 || p.distribution == "uniform")
                })
                .map_or("-".to_string(), |p| format!("{:.0}", p.stall_ms))
        };
        let _ = writeln!(
            s,
            "  {t:<5} 0/s: {:>6} (paper {paper0:.0})   5/s: {:>6} (paper {paper5:.0})",
            ours(0.0),
            ours(5.0)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use miostream_topology::FailureDistribution as D;
    use std::time::Duration;

    fn base() -> Experiment {
        Experiment {
            receivers: 10,
            topology: "tree".into(),
            distribution: D::Uniform,
            rate: 0.0,
            duration: Duration::from_secs(20),
            seed: 100,
            threshold: 1.0,
            integrity: "sign".into(),
            input: "a.webm".into(),
            startup_ms: 2000,
        }
    }

    #[test]
    fn a_sweep_runs_each_failure_free_point_once() {
        let runs = plan(
            &base(),
            &["list".into(), "mesh".into()],
            &D::ALL,
            &[0.0, 1.0, 5.0],
            &[0.5],
        );
        // Per topology: thresholds 0.5 and 1 without failures, 3 x 2 with.
        assert_eq!(runs.len(), 2 * (2 + 6));
        assert_eq!(runs.iter().filter(|r| r.rate == 0.0).count(), 4);
        assert!(runs
            .iter()
            .filter(|r| r.rate > 0.0)
            .all(|r| r.threshold == 1.0));
        let seeds: std::collections::HashSet<u64> = runs.iter().map(|r| r.seed).collect();
        assert_eq!(
            seeds.len(),
            runs.len(),
            "every run has its own recorded seed"
        );
    }

    #[test]
    fn the_report_sets_ours_beside_the_paper() {
        let p = |topology: &str, rate: f64, stall_ms: f64| Point {
            topology: topology.into(),
            distribution: if rate > 0.0 {
                "uniform".into()
            } else {
                "none".into()
            },
            rate,
            threshold: 1.0,
            peers: 30,
            stall_ms,
            stalls: 0.0,
            goodput_bps: 1.2e6,
            stalled_pct: 0.0,
            lost: 0.0,
        };
        let text = report_text(&[p("tree", 0.0, 0.0), p("tree", 5.0, 12.0)]);
        assert!(
            text.contains("tree  0/s:      0 (paper 169)   5/s:     12 (paper 2410)"),
            "{text}"
        );
        assert!(text.contains("list  0/s:      - (paper 2807)"), "{text}");
    }
}
