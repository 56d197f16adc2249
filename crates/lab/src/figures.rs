//! From `results.csv` to the paper's figures: per (topology, distribution,
//! failure rate, threshold) the average stalled time and stall count per
//! peer, goodput and the stalled share of play (pure), drawn as SVG line
//! charts with `plotters`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::prelude::*;

use crate::experiment::CSV_HEADER;

/// One point of the figures: the receivers of every run with these
/// parameters taken together.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The network: `loopback` or a profile's name.
    pub network: String,
    /// list, tree or mesh.
    pub topology: String,
    /// uniform, binomial, poisson, or none (no failures).
    pub distribution: String,
    /// Failures per second.
    pub rate: f64,
    /// Verification threshold.
    pub threshold: f64,
    /// Receiver rows behind the point (the honest ones, when a run had
    /// attackers).
    pub peers: usize,
    /// Average stalled time per peer (ms).
    pub stall_ms: f64,
    /// Average stalls per peer.
    pub stalls: f64,
    /// Average goodput per peer (bit/s).
    pub goodput_bps: f64,
    /// Stalled time as a share of play (stalled + played), in %.
    pub stalled_pct: f64,
    /// Chunks lost per peer.
    pub lost: f64,
    /// Times a receiver was cut out by the supervisor, all rows together
    /// (files from before `cut_out`: 0).
    pub cut_out: u64,
    /// Rows of malicious receivers (`attacker` = 1). The averages above
    /// are over the honest rows only, when there are any.
    pub attackers: usize,
    /// Of [`Point::cut_out`], the attackers' slots.
    pub attackers_cut_out: u64,
}

fn column(name: &str) -> usize {
    CSV_HEADER
        .split(',')
        .position(|c| c == name)
        .unwrap_or_else(|| unreachable!("{name} is a results.csv column"))
}

/// Groups result rows (as read by [`crate::experiment::read_results`]).
pub fn aggregate(rows: &[Vec<String>]) -> anyhow::Result<Vec<Point>> {
    type Key = (String, String, String, u64, u64);
    let num = |row: &[String], name: &str| -> anyhow::Result<f64> {
        let cell = row
            .get(column(name))
            .with_context(|| format!("a row lacks {name}"))?;
        cell.parse::<f64>()
            .with_context(|| format!("{name} = {cell:?} is not a number"))
    };
    let mut groups: BTreeMap<Key, Vec<&Vec<String>>> = BTreeMap::new();
    for row in rows {
        let rate = num(row, "rate")?;
        let threshold = num(row, "threshold")?;
        let network = row.get(column("network")).cloned().unwrap_or_default();
        let key = (
            if network.is_empty() {
                "loopback".into()
            } else {
                network
            },
            row.get(column("topology"))
                .with_context(|| "a row lacks topology".to_string())?
                .clone(),
            row.get(column("distribution"))
                .with_context(|| "a row lacks distribution".to_string())?
                .clone(),
            rate.to_bits(),
            threshold.to_bits(),
        );
        groups.entry(key).or_default().push(row);
    }
    let mut points = Vec::new();
    for ((network, topology, distribution, rate, threshold), all) in groups {
        let is_attacker = |r: &Vec<String>| r.get(column("attacker")).is_some_and(|c| c == "1");
        let cut_out = |rows: &[&Vec<String>]| -> anyhow::Result<u64> {
            rows.iter()
                .map(|r| {
                    let cell = r.get(column("cut_out")).map_or("", String::as_str);
                    if cell.is_empty() {
                        return Ok(0);
                    }
                    cell.parse::<u64>()
                        .with_context(|| format!("cut_out = {cell:?} is not a count"))
                })
                .sum()
        };
        let attackers: Vec<&Vec<String>> = all.iter().copied().filter(|r| is_attacker(r)).collect();
        let honest: Vec<&Vec<String>> = all.iter().copied().filter(|r| !is_attacker(r)).collect();
        let rows = if honest.is_empty() { &all } else { &honest };
        let n = rows.len() as f64;
        let total = |name: &str| -> anyhow::Result<f64> {
            rows.iter()
                .map(|r| num(r, name))
                .sum::<anyhow::Result<f64>>()
        };
        let (stalled, played) = (total("stall_ms")?, total("played_ms")?);
        points.push(Point {
            network,
            topology,
            distribution,
            rate: f64::from_bits(rate),
            threshold: f64::from_bits(threshold),
            peers: rows.len(),
            stall_ms: stalled / n,
            stalls: total("stalls")? / n,
            goodput_bps: total("goodput_bps")? / n,
            stalled_pct: if stalled + played > 0.0 {
                100.0 * stalled / (stalled + played)
            } else {
                0.0
            },
            lost: total("chunks_lost")? / n,
            cut_out: cut_out(&all)?,
            attackers: attackers.len(),
            attackers_cut_out: cut_out(&attackers)?,
        });
    }
    Ok(points)
}

/// The series "y against failure rate" for `topology` and `distribution`;
/// the run without failures (distribution "none") is every line's x = 0.
pub fn by_rate(
    points: &[Point],
    topology: &str,
    distribution: &str,
    y: fn(&Point) -> f64,
) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.topology == topology && p.threshold == 1.0)
        .filter(|p| p.distribution == distribution || (p.rate == 0.0 && p.distribution == "none"))
        .map(|p| (p.rate, y(p)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// A line chart as SVG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let xs = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (xmin, xmax) = if xmin < xmax {
        (xmin, xmax)
    } else {
        (0.0, 1.0)
    };
    let ymax = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ymax = if ymax > 0.0 { ymax * 1.15 } else { 1.0 };
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(xmin..xmax, 0.0..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws every figure the points support into `dir`; returns the files.
/// With several networks, each gets its own figures (`NAME_NETWORK.svg`).
pub fn draw_all(points: &[Point], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut networks: Vec<&str> = points.iter().map(|p| p.network.as_str()).collect();
    networks.sort_unstable();
    networks.dedup();
    if networks.len() <= 1 {
        return draw_network(points, dir, "");
    }
    let mut written = Vec::new();
    for n in networks {
        let mine: Vec<Point> = points.iter().filter(|p| p.network == n).cloned().collect();
        written.extend(draw_network(&mine, dir, &format!("_{n}"))?);
    }
    Ok(written)
}

fn draw_network(points: &[Point], dir: &Path, suffix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut topologies: Vec<&str> = points.iter().map(|p| p.topology.as_str()).collect();
    topologies.dedup();
    topologies.sort_unstable();
    topologies.dedup();
    let distributions = ["uniform", "binomial", "poisson"];
    let mut draw =
        |file: &str, title: &str, x: &str, y: &str, series: Vec<(String, Vec<(f64, f64)>)>| {
            let series: Vec<_> = series.into_iter().filter(|(_, s)| s.len() > 1).collect();
            if series.is_empty() {
                return Ok::<_, anyhow::Error>(());
            }
            let file = match file.strip_suffix(".svg") {
                Some(stem) => format!("{stem}{suffix}.svg"),
                None => file.to_string(),
            };
            let path = dir.join(file);
            line_chart(&path, title, x, y, &series)?;
            written.push(path);
            Ok(())
        };
    // Figs. 5-10: per topology, one line per distribution.
    for t in &topologies {
        let per = |y: fn(&Point) -> f64| {
            distributions
                .iter()
                .map(|d| (d.to_string(), by_rate(points, t, d, y)))
                .collect::<Vec<_>>()
        };
        draw(
            &format!("stall_time_{t}.svg"),
            &format!("{t}: average stalled time per peer"),
            "failures per second",
            "stalled ms per peer",
            per(|p| p.stall_ms),
        )?;
        draw(
            &format!("stall_count_{t}.svg"),
            &format!("{t}: average stalls per peer"),
            "failures per second",
            "stalls per peer",
            per(|p| p.stalls),
        )?;
    }
    // Fig. 11 and 12: the topologies side by side, uniform failures.
    let across = |y: fn(&Point) -> f64| {
        topologies
            .iter()
            .map(|t| (t.to_string(), by_rate(points, t, "uniform", y)))
            .collect::<Vec<_>>()
    };
    draw(
        "topologies_stall_time.svg",
        "uniform failures: stalled time per peer",
        "failures per second",
        "stalled ms per peer",
        across(|p| p.stall_ms),
    )?;
    // The same beside the paper's figures (§4.4 gives its values at 0 and
    // 5 failures/s; the paper's line joins those two).
    let mut versus = across(|p| p.stall_ms);
    for (t, paper0, paper5) in crate::sweep::PAPER_STALL_MS {
        if topologies.contains(&t) {
            versus.push((format!("paper {t}"), vec![(0.0, paper0), (5.0, paper5)]));
        }
    }
    draw(
        "versus_paper_stall_time.svg",
        "uniform failures, 83 receivers: stalled ms per peer, ours vs the paper",
        "failures per second",
        "stalled ms per peer per minute",
        versus,
    )?;
    draw(
        "topologies_stall_count.svg",
        "uniform failures: stalls per peer",
        "failures per second",
        "stalls per peer",
        across(|p| p.stalls),
    )?;
    draw(
        "goodput.svg",
        "uniform failures: goodput per peer",
        "failures per second",
        "Mbit/s per peer",
        across(|p| p.goodput_bps / 1e6),
    )?;
    // Figs. 13-14: stalls per verification threshold (no failures).
    for (file, title, y_desc, y) in [
        (
            "threshold_stalls.svg",
            "stalls per peer by verification threshold",
            "stalls per peer",
            (|p: &Point| p.stalls) as fn(&Point) -> f64,
        ),
        (
            "threshold_stall_time.svg",
            "stalled time per peer by verification threshold",
            "stalled ms per peer",
            |p: &Point| p.stall_ms,
        ),
    ] {
        let series = topologies
            .iter()
            .map(|t| {
                let mut s: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.topology == *t && p.rate == 0.0)
                    .map(|p| (p.threshold * 100.0, y(p)))
                    .collect();
                s.sort_by(|a, b| a.0.total_cmp(&b.0));
                (t.to_string(), s)
            })
            .collect();
        draw(file, title, "chunks verified (%)", y_desc, series)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        topology: &str,
        dist: &str,
        rate: f64,
        threshold: f64,
        stall_ms: u64,
        stalls: u64,
    ) -> Vec<String> {
        let line = format!(
            "{topology},{dist},{rate},1,2,60,{threshold},sign,0,1,{stalls},{stall_ms},59000,1200000,10.0,40.0,600,600,0,0,0"
        );
        line.split(',').map(str::to_owned).collect()
    }

    #[test]
    fn points_average_per_peer() {
        let rows = vec![
            row("tree", "uniform", 1.0, 1.0, 100, 1),
            row("tree", "uniform", 1.0, 1.0, 300, 3),
            row("tree", "none", 0.0, 1.0, 0, 0),
        ];
        let points = aggregate(&rows).expect("valid");
        assert_eq!(points.len(), 2);
        let p = points.iter().find(|p| p.rate == 1.0).expect("rate 1");
        assert_eq!((p.peers, p.stall_ms, p.stalls), (2, 200.0, 2.0));
        assert!((p.stalled_pct - 100.0 * 400.0 / 118_400.0).abs() < 1e-9);
        assert_eq!(
            by_rate(&points, "tree", "uniform", |p| p.stall_ms),
            vec![(0.0, 0.0), (1.0, 200.0)],
            "the failure-free run starts every line"
        );
    }

    #[test]
    fn cut_outs_add_up_per_point_and_old_rows_count_none() {
        let old = row("tree", "uniform", 1.0, 1.0, 0, 0);
        let mut new = old.clone();
        new.resize(CSV_HEADER.split(',').count(), String::new());
        new[column("cut_out")] = "2".into();
        let mut empty = new.clone();
        empty[column("cut_out")] = String::new();
        let points = aggregate(&[old.clone(), new.clone(), new.clone(), empty]).expect("valid");
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].cut_out, 4);
        assert_eq!(aggregate(&[old]).expect("valid")[0].cut_out, 0);
        new[column("cut_out")] = "x".into();
        let e = aggregate(&[new]).expect_err("not a count");
        assert!(e.to_string().contains("cut_out"), "{e}");
    }

    #[test]
    fn bad_rows_are_errors() {
        let mut r = row("tree", "uniform", 1.0, 1.0, 100, 1);
        r[column("stall_ms")] = "lots".into();
        let e = aggregate(&[r]).expect_err("not a number");
        assert!(e.to_string().contains("stall_ms"), "{e}");
        assert!(aggregate(&[vec!["tree".into()]]).is_err());
    }

    #[test]
    fn draws_svg_figures() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut rows = Vec::new();
        for t in ["list", "tree"] {
            rows.push(row(t, "none", 0.0, 1.0, 0, 0));
            rows.push(row(t, "none", 0.0, 0.5, 0, 0));
            for d in ["uniform", "binomial", "poisson"] {
                rows.push(row(t, d, 1.0, 1.0, 50, 1));
                rows.push(row(t, d, 5.0, 1.0, 250, 4));
            }
        }
        let points = aggregate(&rows).expect("valid");
        let files = draw_all(&points, dir.path()).expect("drawn");
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        for want in [
            "stall_time_list.svg",
            "stall_count_tree.svg",
            "topologies_stall_time.svg",
            "goodput.svg",
            "threshold_stalls.svg",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let svg = std::fs::read_to_string(dir.path().join("stall_time_list.svg")).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("binomial") && svg.contains("polyline"));
    }
}
