//! A series of experiments into one output directory: `results.csv` (one
//! row per receiver per run), `failures.csv` (every injected failure),
//! `hosts.csv` (with `--network`: one row per host per run), `report.txt`
//! (per-point averages beside the paper's numbers, then every run's table
//! per host) and the figures.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::sync::watch;

use crate::cluster::Bins;
use crate::experiment::{self, Experiment, RunKey, CSV_HEADER, HOSTS_HEADER};
use crate::figures::{self, Point};

/// The paper's average stalled time per peer (ms), uniform failures, at 0
/// and 5 failures per second (§4.4, Fig. 11).
pub const PAPER_STALL_MS: [(&str, f64, f64); 3] = [
    ("list", 2807.0, 7325.0),
    ("tree", 169.0, 2410.0),
    ("mesh", 169.0, 1093.0),
];

/// The runs of a sweep: for each network (`None`: loopback) and topology,
/// one run without failures per threshold, then every distribution at
/// every non-zero rate (threshold 1).
pub fn plan(
    base: &Experiment,
    networks: &[Option<crate::network::Profile>],
    topologies: &[String],
    distributions: &[miostream_topology::FailureDistribution],
    rates: &[f64],
    thresholds: &[f64],
) -> Vec<Experiment> {
    let mut runs = Vec::new();
    for network in networks {
        let base = &Experiment {
            network: network.clone(),
            ..base.clone()
        };
        plan_one(
            base,
            topologies,
            distributions,
            rates,
            thresholds,
            &mut runs,
        );
    }
    for (i, r) in runs.iter_mut().enumerate() {
        r.seed = base.seed.wrapping_add(i as u64);
    }
    runs
}

fn plan_one(
    base: &Experiment,
    topologies: &[String],
    distributions: &[miostream_topology::FailureDistribution],
    rates: &[f64],
    thresholds: &[f64],
    runs: &mut Vec<Experiment>,
) {
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
            "{}{}-{}-r{}-t{}",
            e.network
                .as_ref()
                .map_or(String::new(), |p| format!("{}-", p.name)),
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
            "== run {}/{total}: {} receivers, {}{}, {} failures/s ({}), threshold {}, {} s, seed {}{eta}",
            i + 1,
            e.receivers,
            e.network.as_ref().map_or(String::new(), |p| format!("network {}, ", p.name)),
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
        if !outcome.hosts.is_empty() {
            let mut csv = String::new();
            for h in &outcome.hosts {
                let _ = writeln!(csv, "{}", h.csv(&e.key()));
            }
            append(&out.join("hosts.csv"), HOSTS_HEADER, &csv)?;
        }
        let all = experiment::read_results(&results)?;
        print!(
            "{}",
            experiment::run_table(
                &e.key(),
                &all,
                &experiment::read_hosts(&out.join("hosts.csv"))?
            )
        );
        let points = figures::aggregate(&all)?;
        if let Some(p) = points.iter().find(|p| {
            p.network == e.network_name()
                && p.topology == e.topology
                && p.rate == e.rate
                && p.threshold == e.threshold
                && (e.rate == 0.0 || p.distribution == e.distribution.to_string())
        }) {
            eprintln!(
                "  {} failures injected{}; per {}peer: {:.0} ms stalled, {:.2} stalls, {:.2} Mbit/s, {:.1} chunks lost; {:.3} % of play stalled; {} cut out by the supervisor{}{}",
                outcome.failures,
                if outcome.failures > 0 && !outcome.by_overlay_order { " (by join order: no monitor)" } else { "" },
                if e.attackers.is_some() { "honest " } else { "" },
                p.stall_ms,
                p.stalls,
                p.goodput_bps / 1e6,
                p.lost,
                p.stalled_pct,
                outcome.rows.iter().map(|r| r.cut_out).sum::<u32>(),
                e.attackers.as_ref().map_or(String::new(), |a| format!(
                    " ({} of them the {} {} attacker(s), {} honest)",
                    outcome.rows.iter().filter(|r| r.attacker).map(|r| r.cut_out).sum::<u32>(),
                    a.count,
                    a.attack,
                    outcome.rows.iter().filter(|r| !r.attacker).map(|r| r.cut_out).sum::<u32>(),
                )),
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

/// Writes `report.txt` (printing its summary part) and the figures from
/// `out/results.csv` (and `out/hosts.csv`, if there is one).
pub fn report(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let results = experiment::read_results(&out.join("results.csv"))?;
    let hosts = experiment::read_hosts(&out.join("hosts.csv"))?;
    let points = figures::aggregate(&results)?;
    let text = report_text(&points);
    print!("{text}");
    let mut full = text;
    let _ = writeln!(
        full,
        "\nper run and host: stalls, latency, wire bytes sent / received over the measured window, \
         media bytes delivered, bytes sent per byte delivered to all receivers, offload"
    );
    for key in run_keys(&results) {
        let _ = write!(full, "\n{}", experiment::run_table(&key, &results, &hosts));
    }
    std::fs::write(out.join("report.txt"), &full)?;
    figures::draw_all(&points, out)
}

/// The runs in `results.csv` rows, in order of first appearance.
fn run_keys(results: &[Vec<String>]) -> Vec<RunKey> {
    let col = |name: &str| {
        CSV_HEADER
            .split(',')
            .position(|c| c == name)
            .unwrap_or_else(|| unreachable!("{name} is a results.csv column"))
    };
    let mut keys: Vec<RunKey> = Vec::new();
    for row in results {
        let get = |name: &str| row.get(col(name)).cloned().unwrap_or_default();
        let network = get("network");
        let key = RunKey {
            network: if network.is_empty() {
                "loopback".into()
            } else {
                network
            },
            topology: get("topology"),
            distribution: get("distribution"),
            rate: get("rate"),
            seed: get("seed"),
            threshold: get("threshold"),
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// The per-point table and the comparison with the paper.
pub fn report_text(points: &[Point]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<9} {:>5} {:>9} {:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>7}  network",
        "topo",
        "dist",
        "rate",
        "threshold",
        "peers",
        "stall ms/peer",
        "stalls/peer",
        "% stalled",
        "Mbit/s",
        "lost/peer",
        "cut out",
    );
    for p in points {
        let _ = writeln!(
            s,
            "{:<6} {:<9} {:>5} {:>9} {:>6} {:>12.1} {:>12.2} {:>10.4} {:>10.2} {:>10.1} {:>7}  {}",
            p.topology,
            p.distribution,
            p.rate,
            p.threshold,
            p.peers,
            p.stall_ms,
            p.stalls,
            p.stalled_pct,
            p.goodput_bps / 1e6,
            p.lost,
            p.cut_out,
            p.network
        );
    }
    let attacked: Vec<&Point> = points.iter().filter(|p| p.attackers > 0).collect();
    if !attacked.is_empty() {
        let _ = writeln!(
            s,
            "\nwith attackers (the figures above are the honest peers'):"
        );
        for p in attacked {
            let _ = writeln!(
                s,
                "{:<6} {:<9} {:>5} {:>9}  {} attacker row(s), cut out {} time(s); honest peers cut out {} time(s)",
                p.topology,
                p.distribution,
                p.rate,
                p.threshold,
                p.attackers,
                p.attackers_cut_out,
                p.cut_out - p.attackers_cut_out
            );
        }
    }
    // The paper's numbers are beside ours on loopback; without loopback
    // runs, beside the first network's.
    let network = points
        .iter()
        .map(|p| p.network.as_str())
        .find(|n| *n == "loopback")
        .or_else(|| points.first().map(|p| p.network.as_str()))
        .unwrap_or("loopback");
    let _ = writeln!(
        s,
        "\nstalled time per peer (ms), uniform failures: ours ({network}) vs the paper (83 receivers, 60 s)"
    );
    for (t, paper0, paper5) in PAPER_STALL_MS {
        let ours = |rate: f64| {
            points
                .iter()
                .find(|p| {
                    p.network == network
                        && p.topology == t
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
            network: None,
            attackers: None,
        }
    }

    #[test]
    fn a_sweep_runs_each_failure_free_point_once() {
        let runs = plan(
            &base(),
            &[None],
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
        let nets = [None, Some(crate::network::OFFICE)];
        let runs = plan(&base(), &nets, &["tree".into()], &D::ALL, &[1.0], &[]);
        assert_eq!(runs.len(), 2 * (1 + 3), "networks are a sweep dimension");
        assert_eq!(
            runs.iter().filter(|r| r.network_name() == "office").count(),
            4
        );
    }

    #[test]
    fn the_report_sets_ours_beside_the_paper() {
        let p = |topology: &str, rate: f64, stall_ms: f64| Point {
            network: "loopback".into(),
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
            cut_out: 0,
            attackers: 0,
            attackers_cut_out: 0,
        };
        let text = report_text(&[p("tree", 0.0, 0.0), p("tree", 5.0, 12.0)]);
        assert!(
            text.contains("tree  0/s:      0 (paper 169)   5/s:     12 (paper 2410)"),
            "{text}"
        );
        assert!(text.contains("list  0/s:      - (paper 2807)"), "{text}");
        let cut = report_text(&[Point {
            cut_out: 3,
            ..p("tree", 1.0, 0.0)
        }]);
        let head = cut.lines().next().unwrap();
        let row = cut.lines().nth(1).unwrap();
        assert!(head.ends_with("cut out  network"), "{cut}");
        assert!(row.ends_with("      3  loopback"), "{cut}");
    }
}
