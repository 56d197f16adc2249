//! Receivers' QoS as the lab sees it: the summary JSON each receiver writes
//! (`--summary`, rewritten every second while it runs), and the arithmetic
//! over them: one receiver slot across its incarnations, medians, the demo's
//! table. Pure: no IO beyond parsing a file's text.

use serde::Deserialize;

/// One receiver process's summary (the keys of PRODUCT.md and a few more).
/// Unknown keys are ignored: the receiver may report more than we read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// This process's peer id.
    pub peer_id: String,
    /// Chunks received (new, accepted).
    pub chunks_received: u64,
    /// Chunks whose tag was checked.
    pub chunks_verified: u64,
    /// Chunks that failed verification.
    pub chunks_rejected: u64,
    /// Media bytes received.
    pub bytes_received: u64,
    /// Media bits per second since joining.
    pub goodput_bps: u64,
    /// Playback stalls.
    pub stalls: u64,
    /// Time stalled (ms).
    pub stall_ms: u64,
    /// First chunk to playback start (ms).
    pub startup_ms: u64,
    /// Media played (ms).
    pub played_ms: u64,
    /// Broadcaster send → delivery, median (ms).
    pub latency_ms_p50: f64,
    /// Broadcaster send → delivery, 99th percentile (ms).
    pub latency_ms_p99: f64,
    /// Upstream changes after the first.
    pub parent_changes: u64,
    /// Chunks that never arrived (playback skipped them).
    pub chunks_skipped: u64,
    /// Seconds joined.
    pub joined_secs: f64,
    /// Media buffered ahead of the play head (ms).
    pub buffer_ms: u64,
    /// Written at exit (false: a live snapshot).
    pub ended: bool,
    /// Bytes this process sent on the wire, if the receiver reports it.
    pub wire_bytes_sent: Option<u64>,
    /// Bytes this process received on the wire, if the receiver reports it.
    pub wire_bytes_received: Option<u64>,
}

impl Summary {
    /// Parses a summary file's text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if !value.is_object() {
            // serde would also read a struct from an array.
            return Err(serde::de::Error::custom("a summary is a JSON object"));
        }
        serde_json::from_value(value)
    }

    /// Whether playback has started.
    pub fn playing(&self) -> bool {
        self.played_ms > 0 || self.startup_ms > 0
    }

    /// `self` minus an earlier snapshot of the same process: what happened
    /// after `earlier` was taken (counters only; levels are kept).
    pub fn since(&self, earlier: &Summary) -> Summary {
        Summary {
            chunks_received: self.chunks_received.saturating_sub(earlier.chunks_received),
            chunks_verified: self.chunks_verified.saturating_sub(earlier.chunks_verified),
            chunks_rejected: self.chunks_rejected.saturating_sub(earlier.chunks_rejected),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            stalls: self.stalls.saturating_sub(earlier.stalls),
            stall_ms: self.stall_ms.saturating_sub(earlier.stall_ms),
            played_ms: self.played_ms.saturating_sub(earlier.played_ms),
            parent_changes: self.parent_changes.saturating_sub(earlier.parent_changes),
            chunks_skipped: self.chunks_skipped.saturating_sub(earlier.chunks_skipped),
            joined_secs: (self.joined_secs - earlier.joined_secs).max(0.0),
            wire_bytes_sent: self
                .wire_bytes_sent
                .map(|b| b.saturating_sub(earlier.wire_bytes_sent.unwrap_or(0))),
            wire_bytes_received: self
                .wire_bytes_received
                .map(|b| b.saturating_sub(earlier.wire_bytes_received.unwrap_or(0))),
            ..self.clone()
        }
    }
}

/// One receiver slot over a run: the processes that held it in turn (a
/// failure kills one and starts the next as a new viewer).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotQos {
    /// Processes that held the slot.
    pub incarnations: u32,
    /// Stalls, all incarnations.
    pub stalls: u64,
    /// Time stalled (ms), all incarnations.
    pub stall_ms: u64,
    /// Media played (ms), all incarnations.
    pub played_ms: u64,
    /// Chunks received.
    pub chunks_received: u64,
    /// Chunks verified.
    pub chunks_verified: u64,
    /// Chunks rejected.
    pub chunks_rejected: u64,
    /// Chunks skipped (lost).
    pub chunks_lost: u64,
    /// Media bits per second while joined.
    pub goodput_bps: u64,
    /// Latency median of the longest-lived incarnation (ms).
    pub latency_ms_p50: f64,
    /// Latency p99 of the longest-lived incarnation (ms).
    pub latency_ms_p99: f64,
    /// Startup of the first incarnation (ms).
    pub startup_ms: u64,
    /// Upstream changes.
    pub parent_changes: u64,
    /// Media (payload) bytes received, all incarnations.
    pub bytes_received: u64,
    /// Wire bytes sent, all incarnations, if the receivers report them.
    pub wire_bytes_sent: Option<u64>,
    /// Wire bytes received, all incarnations, if the receivers report them.
    pub wire_bytes_received: Option<u64>,
}

impl SlotQos {
    /// Folds a slot's incarnations (in order) into one row.
    pub fn fold(incarnations: &[Summary]) -> SlotQos {
        let mut q = SlotQos {
            incarnations: incarnations.len() as u32,
            startup_ms: incarnations.first().map_or(0, |s| s.startup_ms),
            ..SlotQos::default()
        };
        let (mut bytes, mut secs) = (0u64, 0f64);
        for s in incarnations {
            q.stalls += s.stalls;
            q.stall_ms += s.stall_ms;
            q.played_ms += s.played_ms;
            q.chunks_received += s.chunks_received;
            q.chunks_verified += s.chunks_verified;
            q.chunks_rejected += s.chunks_rejected;
            q.chunks_lost += s.chunks_skipped;
            q.parent_changes += s.parent_changes;
            bytes += s.bytes_received;
            secs += s.joined_secs;
            if let Some(b) = s.wire_bytes_sent {
                q.wire_bytes_sent = Some(q.wire_bytes_sent.unwrap_or(0) + b);
            }
            if let Some(b) = s.wire_bytes_received {
                q.wire_bytes_received = Some(q.wire_bytes_received.unwrap_or(0) + b);
            }
        }
        q.bytes_received = bytes;
        if secs > 0.0 {
            q.goodput_bps = (bytes as f64 * 8.0 / secs) as u64;
        }
        if let Some(longest) = incarnations
            .iter()
            .max_by(|a, b| a.joined_secs.total_cmp(&b.joined_secs))
        {
            q.latency_ms_p50 = longest.latency_ms_p50;
            q.latency_ms_p99 = longest.latency_ms_p99;
        }
        q
    }
}

/// The median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The `p`-quantile of `values` by nearest rank (0 for none).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    v[i]
}

/// The demo's table: one row per receiver and an overall row (sums of
/// counters, medians of rates and latencies), right-aligned columns.
pub fn table(rows: &[(String, Option<SlotQos>)]) -> String {
    const HEAD: [&str; 11] = [
        "receiver",
        "chunks",
        "verified",
        "rejected",
        "lost",
        "stalls",
        "stall ms",
        "startup ms",
        "Mbit/s",
        "p50 ms",
        "p99 ms",
    ];
    let cells = |q: &SlotQos| {
        vec![
            q.chunks_received.to_string(),
            q.chunks_verified.to_string(),
            q.chunks_rejected.to_string(),
            q.chunks_lost.to_string(),
            q.stalls.to_string(),
            q.stall_ms.to_string(),
            q.startup_ms.to_string(),
            format!("{:.2}", q.goodput_bps as f64 / 1e6),
            format!("{:.1}", q.latency_ms_p50),
            format!("{:.1}", q.latency_ms_p99),
        ]
    };
    let mut lines: Vec<Vec<String>> = vec![HEAD.iter().map(|s| s.to_string()).collect()];
    let mut ok = Vec::new();
    for (name, q) in rows {
        let mut line = vec![name.clone()];
        match q {
            Some(q) => {
                line.extend(cells(q));
                ok.push(q.clone());
            }
            None => line.extend(std::iter::repeat_n("-".to_string(), HEAD.len() - 1)),
        }
        lines.push(line);
    }
    if !ok.is_empty() {
        let sum = |f: fn(&SlotQos) -> u64| ok.iter().map(f).sum::<u64>();
        let med = |f: fn(&SlotQos) -> f64| median(&ok.iter().map(f).collect::<Vec<_>>());
        let all = SlotQos {
            chunks_received: sum(|q| q.chunks_received),
            chunks_verified: sum(|q| q.chunks_verified),
            chunks_rejected: sum(|q| q.chunks_rejected),
            chunks_lost: sum(|q| q.chunks_lost),
            stalls: sum(|q| q.stalls),
            stall_ms: sum(|q| q.stall_ms),
            startup_ms: med(|q| q.startup_ms as f64) as u64,
            goodput_bps: med(|q| q.goodput_bps as f64) as u64,
            latency_ms_p50: med(|q| q.latency_ms_p50),
            latency_ms_p99: percentile(
                &ok.iter().map(|q| q.latency_ms_p99).collect::<Vec<_>>(),
                1.0,
            ),
            ..SlotQos::default()
        };
        let mut line = vec!["all".to_string()];
        line.extend(cells(&all));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..HEAD.len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let row: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:>w$}"))
            .collect();
        out.push_str(row.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One host in a run's end-of-run table: a receiver slot, the
/// broadcaster or the supervisor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostLine {
    /// `r0`, `r1`, ..., `broadcaster`, `supervisor`.
    pub host: String,
    /// Its class (`loopback` without `--network`).
    pub class: String,
    /// Stalls (receivers).
    pub stalls: Option<u64>,
    /// Time stalled, ms (receivers).
    pub stall_ms: Option<u64>,
    /// Latency median, ms (receivers).
    pub latency_ms_p50: Option<f64>,
    /// Latency 99th percentile, ms (receivers).
    pub latency_ms_p99: Option<f64>,
    /// Wire bytes sent over the window.
    pub tx: Option<u64>,
    /// Wire bytes received over the window.
    pub rx: Option<u64>,
    /// Media bytes delivered to it (receivers: `bytes_received`).
    pub delivered: Option<u64>,
}

/// Offload: 1 − bytes the broadcaster sent ÷ bytes delivered to all
/// receivers (`None` without a broadcaster count or a delivery).
pub fn offload(broadcaster_sent: Option<u64>, delivered: u64) -> Option<f64> {
    let sent = broadcaster_sent?;
    (delivered > 0).then(|| 1.0 - sent as f64 / delivered as f64)
}

/// A run's table per host: stalls, latency, wire bytes sent and received,
/// media bytes delivered, and each host's bytes sent per byte delivered to
/// all receivers (its share of the delivery; the broadcaster's share is
/// 1 − offload); then the run's offload.
pub fn hosts_table(lines: &[HostLine]) -> String {
    const HEAD: [&str; 11] = [
        "host",
        "class",
        "stalls",
        "stall ms",
        "p50 ms",
        "p99 ms",
        "sent MB",
        "recv MB",
        "delivered MB",
        "sent/deliv",
        "",
    ];
    let delivered: u64 = lines.iter().filter_map(|l| l.delivered).sum();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mb = |b: Option<u64>| opt(b.map(|b| format!("{:.2}", b as f64 / 1e6)));
    let mut rows: Vec<Vec<String>> = vec![HEAD[..10].iter().map(|s| s.to_string()).collect()];
    for l in lines {
        rows.push(vec![
            l.host.clone(),
            l.class.clone(),
            opt(l.stalls.map(|v| v.to_string())),
            opt(l.stall_ms.map(|v| v.to_string())),
            opt(l.latency_ms_p50.map(|v| format!("{v:.1}"))),
            opt(l.latency_ms_p99.map(|v| format!("{v:.1}"))),
            mb(l.tx),
            mb(l.rx),
            mb(l.delivered),
            opt(l
                .tx
                .filter(|_| delivered > 0)
                .map(|t| format!("{:.3}", t as f64 / delivered as f64))),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let bc = lines
        .iter()
        .find(|l| l.host == "broadcaster")
        .and_then(|l| l.tx);
    match offload(bc, delivered) {
        Some(o) => out.push_str(&format!(
            "offload {o:.3} (1 - broadcaster's wire bytes sent / media bytes delivered to all receivers)\n"
        )),
        None => out.push_str("offload - (no wire counters: run with --network)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(stalls: u64, stall_ms: u64, bytes: u64, secs: f64, p50: f64) -> Summary {
        Summary {
            stalls,
            stall_ms,
            bytes_received: bytes,
            joined_secs: secs,
            latency_ms_p50: p50,
            chunks_received: bytes / 1000,
            ..Summary::default()
        }
    }

    #[test]
    fn parses_a_receiver_summary_and_ignores_unknown_keys() {
        let s = Summary::parse(
            r#"{"stream":"demo","peer_id":"p","chunks_received":5,"stalls":1,"stall_ms":250,
                "latency_ms_p50":12.5,"ended":true,"some_future_key":[1,2]}"#,
        )
        .expect("valid");
        assert_eq!(
            (s.chunks_received, s.stalls, s.stall_ms, s.ended),
            (5, 1, 250, true)
        );
        assert_eq!(s.latency_ms_p50, 12.5);
        assert!(Summary::parse("{\"stalls\":").is_err());
        assert!(Summary::parse("[]").is_err());
    }

    #[test]
    fn a_slot_adds_up_its_incarnations() {
        let q = SlotQos::fold(&[
            summary(1, 100, 1_000_000, 10.0, 20.0),
            summary(2, 300, 500_000, 2.0, 90.0),
        ]);
        assert_eq!(q.incarnations, 2);
        assert_eq!((q.stalls, q.stall_ms), (3, 400));
        assert_eq!(q.goodput_bps, 1_000_000); // 1.5 MB over 12 s
        assert_eq!(q.latency_ms_p50, 20.0, "from the longest-lived process");
        assert_eq!(SlotQos::fold(&[]), SlotQos::default());
    }

    #[test]
    fn since_subtracts_counters_only() {
        let before = Summary {
            buffer_ms: 1,
            ..summary(1, 100, 1000, 5.0, 10.0)
        };
        let after = Summary {
            buffer_ms: 2000,
            ..summary(3, 150, 4000, 9.0, 11.0)
        };
        let d = after.since(&before);
        assert_eq!((d.stalls, d.stall_ms, d.bytes_received), (2, 50, 3000));
        assert_eq!(d.joined_secs, 4.0);
        assert_eq!((d.buffer_ms, d.latency_ms_p50), (2000, 11.0));
        // A restarted counter never goes negative.
        assert_eq!(before.since(&after).stalls, 0);
    }

    #[test]
    fn the_hosts_table_shows_wire_bytes_and_offload() {
        let r = |host: &str, tx, rx, delivered| HostLine {
            host: host.into(),
            class: "wifi".into(),
            stalls: Some(0),
            stall_ms: Some(0),
            latency_ms_p50: Some(20.0),
            latency_ms_p99: Some(45.5),
            tx: Some(tx),
            rx: Some(rx),
            delivered: Some(delivered),
        };
        let lines = [
            HostLine {
                host: "broadcaster".into(),
                class: "server".into(),
                tx: Some(3_000_000),
                rx: Some(100_000),
                ..HostLine::default()
            },
            r("r0", 2_000_000, 3_100_000, 3_000_000),
            r("r1", 0, 2_050_000, 2_000_000),
            r("r2", 0, 5_200_000, 5_000_000),
        ];
        let t = hosts_table(&lines);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 6, "{t}");
        assert!(rows[1].starts_with("broadcaster  server"), "{t}");
        assert!(rows[1].contains("3.00") && rows[1].contains("0.300"), "{t}");
        assert!(rows[2].contains("45.5"), "{t}");
        assert!(rows[5].starts_with("offload 0.700"), "{t}");
        assert_eq!(offload(None, 5), None);
        assert_eq!(offload(Some(5), 0), None);
        let loopback = hosts_table(&[HostLine {
            host: "r0".into(),
            class: "loopback".into(),
            ..HostLine::default()
        }]);
        assert!(loopback.contains("offload -"), "{loopback}");
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 100.0], 1.0), 100.0);
        assert_eq!(percentile(&[5.0, f64::NAN], 0.5), 5.0);
    }

    #[test]
    fn the_table_has_a_row_per_receiver_and_an_overall_row() {
        let q = SlotQos::fold(&[summary(1, 100, 1_500_000, 10.0, 20.0)]);
        let t = table(&[
            ("r1".into(), Some(q.clone())),
            ("r2".into(), None),
            ("r3".into(), Some(q)),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("receiver"));
        assert!(lines[2].trim_start().starts_with("r2") && lines[2].contains(" -"));
        let all: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(all[0], "all");
        assert_eq!(all[1], "3000", "chunks add up");
        assert_eq!(all[5], "2", "stalls add up");
        assert_eq!(all[8], "1.20", "goodput is the median");
    }
}
