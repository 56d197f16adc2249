//! The supervisor's `/metrics`: peers by role, streams, handshakes (ok, and
//! refused by reason), bad-chunk reports and ejections, and per stream its
//! viewers, stalls, goodput, latency and offload, from the receivers'
//! latest QoS reports. [`scrape`] is pure: the hub's figures and the
//! handshake counters in, the Prometheus text out.

use miostream_cli::metrics::prometheus_client::metrics::counter::Counter;
use miostream_cli::metrics::prometheus_client::metrics::family::Family;
use miostream_cli::metrics::{Labels, Scrape};
use miostream_protocol::signal::ErrorCode;
use miostream_protocol::ComponentType;

use crate::monitor::api::{Qos, StreamView};

/// Handshake outcomes, counted by the connection tasks (atomic, shared).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    ok: Counter,
    refused: Family<Labels, Counter>,
}

impl Counters {
    /// A peer authenticated.
    pub fn handshake_ok(&self) {
        self.ok.inc();
    }

    /// A connection refused before or during the handshake: `reason` is the
    /// `ERROR` code sent (`unknown_key`, `revoked`, ...), or `tls` /
    /// `timeout` for a TLS or WebSocket handshake that failed or stalled.
    pub fn handshake_refused(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The reason label of an `ERROR` code.
    pub fn reason(code: ErrorCode) -> String {
        serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "other".into())
    }
}

/// What the hub knows, at one instant.
#[derive(Debug, Clone, Default)]
pub struct HubFigures {
    /// Connected, authenticated peers by role.
    pub peers: Vec<(ComponentType, u64)>,
    /// Every stream's overlay with its receivers' latest reports.
    pub streams: Vec<StreamView>,
    /// Bad-chunk reports taken into account (one per reporter and accused
    /// within the window).
    pub bad_chunk_reports: u64,
    /// Peers cut out for misbehaving (forged chunks, or false accusations).
    pub ejections: u64,
}

/// Per-stream totals over its receivers' latest reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamTotals {
    /// Receivers in the overlay.
    pub viewers: u64,
    /// Receivers that reported.
    pub reporting: u64,
    /// Stalls.
    pub stalls: u64,
    /// Time stalled (s).
    pub stall_seconds: f64,
    /// Goodput summed (bytes/s).
    pub goodput_bytes_per_second: f64,
    /// Median over receivers of their median latency (s).
    pub latency_p50_seconds: f64,
    /// 99th percentile over receivers of their 99th-percentile latency (s).
    pub latency_p99_seconds: f64,
    /// Share of the media bytes received that came from a peer rather than
    /// the broadcaster (`None`: nothing reported yet).
    pub offload: Option<f64>,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

impl StreamTotals {
    /// The totals of one stream.
    pub fn of(stream: &StreamView) -> Self {
        let reports: Vec<&Qos> = stream.nodes.iter().filter_map(|n| n.qos.as_ref()).collect();
        let received: u64 = reports.iter().map(|q| q.bytes_received).sum();
        let direct: u64 = reports
            .iter()
            .map(|q| q.bytes_from_broadcaster.min(q.bytes_received))
            .sum();
        Self {
            viewers: stream.nodes.len() as u64,
            reporting: reports.len() as u64,
            stalls: reports.iter().map(|q| q.stalls).sum(),
            stall_seconds: reports.iter().map(|q| q.stall_ms as f64 / 1e3).sum(),
            goodput_bytes_per_second: reports.iter().map(|q| q.goodput_bps as f64 / 8.0).sum(),
            latency_p50_seconds: percentile(
                reports.iter().map(|q| q.latency_ms_p50 / 1e3).collect(),
                0.5,
            ),
            latency_p99_seconds: percentile(
                reports.iter().map(|q| q.latency_ms_p99 / 1e3).collect(),
                0.99,
            ),
            offload: (received > 0).then(|| 1.0 - direct as f64 / received as f64),
        }
    }
}

/// The scrape.
pub fn scrape(f: &HubFigures, counters: &Counters) -> Scrape {
    let mut s = Scrape::new();
    let mut by_role: Vec<(Labels, f64)> = [ComponentType::Broadcaster, ComponentType::Receiver]
        .into_iter()
        .map(|role| {
            let n = f
                .peers
                .iter()
                .filter(|(r, _)| *r == role)
                .map(|(_, n)| n)
                .sum::<u64>();
            (vec![("role", role.to_string())], n as f64)
        })
        .collect();
    by_role.sort_by(|a, b| a.0.cmp(&b.0));
    s.gauges(
        "miostream_peers",
        "Authenticated peers connected now, by role",
        by_role,
    );
    s.gauge(
        "miostream_streams",
        "Streams announced now",
        f.streams.len() as f64,
    );
    s.register(
        "miostream_handshakes_ok",
        "Peers that completed the authentication handshake",
        counters.ok.clone(),
    );
    s.register(
        "miostream_handshakes_refused",
        "Connections refused before or during the handshake, by reason (the ERROR code sent, or tls/timeout)",
        counters.refused.clone(),
    );
    s.counter(
        "miostream_bad_chunk_reports",
        "Reports of chunks that failed verification, taken into account",
        f.bad_chunk_reports,
    );
    s.counter(
        "miostream_ejections",
        "Peers cut out of the topology for misbehaving",
        f.ejections,
    );
    let totals: Vec<(Labels, StreamTotals)> = f
        .streams
        .iter()
        .map(|st| (vec![("stream", st.name.clone())], StreamTotals::of(st)))
        .collect();
    let each = |get: &dyn Fn(&StreamTotals) -> Option<f64>| -> Vec<(Labels, f64)> {
        totals
            .iter()
            .filter_map(|(l, t)| get(t).map(|v| (l.clone(), v)))
            .collect()
    };
    s.gauges(
        "miostream_stream_viewers",
        "Receivers in the stream's overlay",
        each(&|t| Some(t.viewers as f64)),
    );
    s.gauges(
        "miostream_stream_stalls",
        "Playback stalls reported by the stream's current receivers",
        each(&|t| Some(t.stalls as f64)),
    );
    s.gauges(
        "miostream_stream_stall_seconds",
        "Time stalled, summed over the stream's current receivers",
        each(&|t| Some(t.stall_seconds)),
    );
    s.gauges(
        "miostream_stream_goodput_bytes_per_second",
        "Media goodput summed over the stream's receivers",
        each(&|t| Some(t.goodput_bytes_per_second)),
    );
    let mut latency = Vec::new();
    for (l, t) in &totals {
        if t.reporting == 0 {
            continue;
        }
        for (q, v) in [
            ("0.5", t.latency_p50_seconds),
            ("0.99", t.latency_p99_seconds),
        ] {
            let mut l = l.clone();
            l.push(("quantile", q.to_owned()));
            latency.push((l, v));
        }
    }
    s.gauges(
        "miostream_stream_latency_seconds",
        "Broadcaster-to-receiver latency: quantile 0.5 is the median of the receivers' medians, 0.99 the 99th percentile of their 99th percentiles",
        latency,
    );
    s.gauges(
        "miostream_stream_offload_ratio",
        "Share of the media bytes the receivers got from peers rather than from the broadcaster",
        each(&|t| t.offload),
    );
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::monitor::api::NodeView;
    use miostream_protocol::{IntegrityMode, PeerId, TopologyKind};

    fn qos(bytes: u64, direct: u64, p50: f64, p99: f64) -> Qos {
        Qos {
            stalls: 1,
            stall_ms: 500,
            buffer_ms: 0,
            goodput_bps: 8_000,
            chunks_received: 1,
            chunks_rejected: 0,
            latency_ms_p50: p50,
            latency_ms_p99: p99,
            parent_changes: 0,
            bytes_received: bytes,
            bytes_from_broadcaster: direct,
        }
    }

    fn stream(reports: Vec<Option<Qos>>) -> StreamView {
        StreamView {
            id: "1".into(),
            name: "demo".into(),
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Hmac,
            broadcaster: PeerId::random(),
            nodes: reports
                .into_iter()
                .enumerate()
                .map(|(i, qos)| NodeView {
                    peer: PeerId::random(),
                    position: i,
                    depth: 1,
                    parents: vec![],
                    children: vec![],
                    backup_parents: vec![],
                    backup_children: vec![],
                    neighbours: vec![],
                    qos,
                    address: None,
                    label: None,
                })
                .collect(),
            title: String::new(),
            bitrate_bps: 0,
        }
    }

    #[test]
    fn stream_totals_add_up_the_reports() {
        let t = StreamTotals::of(&stream(vec![
            Some(qos(1000, 1000, 10.0, 30.0)),
            Some(qos(1000, 0, 20.0, 50.0)),
            Some(qos(2000, 0, 30.0, 40.0)),
            None,
        ]));
        assert_eq!(t.viewers, 4);
        assert_eq!(t.reporting, 3);
        assert_eq!(t.stalls, 3);
        assert_eq!(t.stall_seconds, 1.5);
        assert_eq!(t.goodput_bytes_per_second, 3000.0);
        assert_eq!(t.latency_p50_seconds, 0.02);
        assert_eq!(t.latency_p99_seconds, 0.05);
        assert_eq!(t.offload, Some(0.75));
        // Old receivers report no byte counts: no offload figure, not 0 or 1.
        assert_eq!(
            StreamTotals::of(&stream(vec![Some(qos(0, 0, 1.0, 1.0))])).offload,
            None
        );
        assert_eq!(StreamTotals::of(&stream(vec![])), StreamTotals::default());
    }

    #[test]
    fn the_scrape_names_every_metric() {
        let counters = Counters::default();
        counters.handshake_ok();
        counters.handshake_refused(&Counters::reason(ErrorCode::UnknownKey));
        counters.handshake_refused(&Counters::reason(ErrorCode::UnknownKey));
        let f = HubFigures {
            peers: vec![
                (ComponentType::Receiver, 3),
                (ComponentType::Broadcaster, 1),
            ],
            streams: vec![stream(vec![Some(qos(1000, 250, 10.0, 20.0))])],
            bad_chunk_reports: 2,
            ejections: 1,
        };
        let text = scrape(&f, &counters).encode();
        for line in [
            "miostream_peers{role=\"broadcaster\"} 1.0",
            "miostream_peers{role=\"receiver\"} 3.0",
            "miostream_streams 1.0",
            "miostream_handshakes_ok_total 1",
            "miostream_handshakes_refused_total{reason=\"unknown_key\"} 2",
            "miostream_bad_chunk_reports_total 2",
            "miostream_ejections_total 1",
            "miostream_stream_viewers{stream=\"demo\"} 1.0",
            "miostream_stream_stalls{stream=\"demo\"} 1.0",
            "miostream_stream_stall_seconds{stream=\"demo\"} 0.5",
            "miostream_stream_goodput_bytes_per_second{stream=\"demo\"} 1000.0",
            "miostream_stream_latency_seconds{stream=\"demo\",quantile=\"0.5\"} 0.01",
            "miostream_stream_latency_seconds{stream=\"demo\",quantile=\"0.99\"} 0.02",
            "miostream_stream_offload_ratio{stream=\"demo\"} 0.75",
            "# HELP miostream_stream_offload_ratio Share of the media bytes the receivers got from peers rather than from the broadcaster.",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
