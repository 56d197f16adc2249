//! The receiver: joins a stream through its node, verifies every chunk
//! (threshold 1.0 by default), relays them, reassembles the WebM (whole
//! clusters from a keyframe on) for a file, stdout or media-io's
//! [`LiveServer`] (`--serve`: a player page and `/stream.webm`), runs the
//! playback model, and reports its QoS as the summary JSON of PRODUCT.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use miostream_cli::metrics::Scrape;
use miostream_media::{PlaybackModel, PlaybackStats, Reassembled, Reassembler, ReassemblyConfig};
use miostream_media_io::{LiveServer, ServeConfig, StreamWriter};
use miostream_peer::{
    integrity_check, spawn_node, Identity, NodeConfig, NodeEvent, NodeHandle, SessionConfig,
    SupervisorUrl, Trust,
};
use miostream_protocol::{ChunkFlags, ChunkKind, ComponentType, PeerId, PeerMessage};
use miostream_relay::{RelayConfig, RelayStats};
use miostream_webrtc::WebRtcConfig;
use serde::Serialize;
use tracing::{info, warn};

pub mod list;

/// Where the reassembled WebM goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Nowhere (QoS only).
    Discard,
    /// A file.
    File(PathBuf),
    /// Standard output (e.g. `| mpv -`).
    Stdout,
}

/// A receiver's settings.
#[derive(Debug, Clone)]
pub struct ReceiveConfig {
    /// Supervisor URL.
    pub supervisor: SupervisorUrl,
    /// Our identity.
    pub identity: Identity,
    /// The supervisor's trust bundle.
    pub trust: Trust,
    /// Stream name.
    pub stream: String,
    /// Output.
    pub out: Output,
    /// Serve the live stream to players over HTTP here.
    pub serve: Option<SocketAddr>,
    /// Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` over
    /// plain HTTP here.
    pub metrics: Option<SocketAddr>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Fraction of chunks verified (1.0 = all).
    pub threshold: f64,
    /// Media buffered before playback starts.
    pub startup: Duration,
    /// Local address for WebRTC (default: the one that routes to the supervisor).
    pub bind: Option<IpAddr>,
    /// STUN/TURN URLs.
    pub ice_servers: Vec<String>,
    /// Rewrite the summary here every second while running (atomically), so
    /// that a receiver killed abruptly still leaves its figures.
    pub live_summary: Option<PathBuf>,
    /// Wait for a stream that is not announced yet, or whose broadcaster
    /// stopped, instead of failing or ending.
    pub wait: bool,
    /// Print a one-line status on stderr every few seconds (for a terminal).
    pub status: bool,
}

/// How often the status line is printed.
const STATUS_EVERY: u64 = 3;
/// How long `--wait` waits between two attempts to join.
const WAIT_RETRY: Duration = Duration::from_secs(1);

/// The supervisor's answer to joining a stream it does not know (its
/// `STREAM_NOT_FOUND` message; the node passes failures on as text).
fn is_not_found(reason: &str) -> bool {
    reason.starts_with("no stream named")
}

/// The one-line status: where the receiver is, its buffer, stalls,
/// upstream changes, goodput and players.
pub fn status_line(stream: &str, state: &str, s: &Summary, players: Option<usize>) -> String {
    let mut line = format!(
        "{stream}: {state} · buffer {:.1} s · stalls {} ({} ms) · upstream changes {} · {:.2} Mbit/s",
        s.buffer_ms as f64 / 1000.0,
        s.stalls,
        s.stall_ms,
        s.parent_changes,
        s.goodput_bps as f64 / 1e6,
    );
    if s.chunks_rejected > 0 {
        line.push_str(&format!(" · {} chunks rejected", s.chunks_rejected));
    }
    if let Some(n) = players {
        line.push_str(&format!(" · {n} player{}", if n == 1 { "" } else { "s" }));
    }
    line
}

/// The receiver summary (`--summary FILE.json`); keys as in PRODUCT.md.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Stream name.
    pub stream: String,
    /// This receiver's peer id (random per run).
    pub peer_id: String,
    /// Chunks received (new, accepted).
    pub chunks_received: u64,
    /// Of those, chunks whose tag was checked.
    pub chunks_verified: u64,
    /// Chunks that failed verification (dropped, reported).
    pub chunks_rejected: u64,
    /// Media bytes received.
    pub bytes_received: u64,
    /// Of those, the bytes that came straight from the broadcaster (the
    /// rest came over the overlay).
    pub bytes_from_broadcaster: u64,
    /// Media bytes per second since joining, in bits.
    pub goodput_bps: u64,
    /// Playback stalls.
    pub stalls: u64,
    /// Time stalled (ms).
    pub stall_ms: u64,
    /// First chunk to playback start (ms).
    pub startup_ms: u64,
    /// Media played (ms).
    pub played_ms: u64,
    /// Broadcaster send → delivery here, median over live chunks (ms).
    pub latency_ms_p50: f64,
    /// Broadcaster send → delivery here, 99th percentile (ms).
    pub latency_ms_p99: f64,
    /// Upstream changes after the first (failovers, reconfigurations).
    pub parent_changes: u64,
    /// Chunks skipped because they never arrived.
    pub chunks_skipped: u64,
    /// Duplicate copies dropped (redundant upstreams).
    pub duplicates: u64,
    /// Seconds joined.
    pub joined_secs: f64,
    /// Longest time between two chunk deliveries once playing (ms): a
    /// failover shows here even when the buffer hid it from playback.
    pub max_gap_ms: u64,
    /// Media buffered ahead of the play head (ms).
    pub buffer_ms: u64,
    /// Whether this is the summary written at exit (a live one says false).
    pub ended: bool,
    /// Failures injected by the supervisor's monitor: each one dropped the
    /// node like a crash and joined again as a new viewer (a new peer id).
    /// The other figures add up every incarnation; a rejoin's startup
    /// buffering is not a stall.
    pub failures: u64,
}

/// Writes `summary` to `path` atomically (a temporary file, then a rename):
/// a reader never sees half a file.
pub fn write_summary(path: &std::path::Path, summary: &Summary) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, json + "\n")?;
    std::fs::rename(&tmp, path)
}

/// What the receive loop measures, turned into a [`Summary`] on demand.
struct Qos {
    stream: String,
    peer_id: PeerId,
    playback: PlaybackModel,
    latencies: Vec<f64>,
    skipped: u64,
    joined_at: Option<Instant>,
    max_gap: Duration,
    /// Startup buffer and resume threshold of the playback model.
    startup: Duration,
    /// Injected failures so far, and what the incarnations before the
    /// current one measured.
    failures: u64,
    past_relay: RelayStats,
    past_playback: PlaybackStats,
    past_verified: u64,
    first_startup_ms: Option<u64>,
}

impl Qos {
    /// An injected failure (or, with `injected` false, a rejoin after the
    /// stream went away): the current incarnation's figures are kept, and
    /// the next one starts with an empty playback buffer (as a new viewer).
    fn fail(&mut self, now: Instant, stats: &RelayStats, verified: u64, injected: bool) {
        self.past_verified += verified;
        let p = self.playback.stats(now);
        if self.playback.started() && self.first_startup_ms.is_none() {
            self.first_startup_ms = Some(p.startup_ms);
        }
        let (a, b) = (&mut self.past_playback, p);
        a.stalls += b.stalls;
        a.stall_ms += b.stall_ms;
        a.played_ms += b.played_ms;
        let (a, b) = (&mut self.past_relay, stats);
        a.chunks_received += b.chunks_received;
        a.bytes_received += b.bytes_received;
        a.bytes_from_source += b.bytes_from_source;
        a.duplicates += b.duplicates;
        a.rejected += b.rejected;
        a.delivered += b.delivered;
        a.skipped += b.skipped;
        a.gap_requests += b.gap_requests;
        a.upstream_changes += b.upstream_changes;
        a.dead_links += b.dead_links;
        self.playback = PlaybackModel::new(self.startup, self.startup / 2);
        self.failures += u64::from(injected);
    }

    fn summary(
        &mut self,
        now: Instant,
        current: &RelayStats,
        verified: u64,
        ended: bool,
    ) -> Summary {
        let mut p = self.playback.stats(now);
        p.stalls += self.past_playback.stalls;
        p.stall_ms += self.past_playback.stall_ms;
        p.played_ms += self.past_playback.played_ms;
        if let Some(first) = self.first_startup_ms {
            p.startup_ms = first;
        }
        let stats = &RelayStats {
            chunks_received: self.past_relay.chunks_received + current.chunks_received,
            bytes_received: self.past_relay.bytes_received + current.bytes_received,
            bytes_from_source: self.past_relay.bytes_from_source + current.bytes_from_source,
            duplicates: self.past_relay.duplicates + current.duplicates,
            rejected: self.past_relay.rejected + current.rejected,
            upstream_changes: self.past_relay.upstream_changes + current.upstream_changes,
            ..RelayStats::default()
        };
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let joined_secs = self
            .joined_at
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        Summary {
            stream: self.stream.clone(),
            peer_id: self.peer_id.to_string(),
            chunks_received: stats.chunks_received,
            chunks_verified: self.past_verified + verified,
            chunks_rejected: stats.rejected,
            bytes_received: stats.bytes_received,
            bytes_from_broadcaster: stats.bytes_from_source,
            goodput_bps: if joined_secs > 0.0 {
                (stats.bytes_received as f64 * 8.0 / joined_secs) as u64
            } else {
                0
            },
            stalls: p.stalls,
            stall_ms: p.stall_ms,
            startup_ms: p.startup_ms,
            played_ms: p.played_ms,
            latency_ms_p50: percentile(&sorted, 0.5),
            latency_ms_p99: percentile(&sorted, 0.99),
            parent_changes: stats.upstream_changes,
            chunks_skipped: self.skipped,
            duplicates: stats.duplicates,
            joined_secs,
            max_gap_ms: self.max_gap.as_millis() as u64,
            buffer_ms: self.playback.buffered_ms(now),
            ended,
            failures: self.failures,
        }
    }
}

/// The `QOS_REPORT` the monitor shows, from a summary.
fn qos_report(s: &Summary) -> PeerMessage {
    let ms = |v: f64| {
        if v.is_finite() {
            v.clamp(0.0, miostream_protocol::signal::MAX_REPORTED_MS)
        } else {
            0.0
        }
    };
    PeerMessage::QosReport {
        stalls: s.stalls,
        stall_ms: s.stall_ms,
        buffer_ms: s.buffer_ms,
        goodput_bps: s.goodput_bps,
        chunks_received: s.chunks_received,
        chunks_rejected: s.chunks_rejected,
        latency_ms_p50: ms(s.latency_ms_p50),
        parent_changes: s.parent_changes,
        latency_ms_p99: ms(s.latency_ms_p99),
        bytes_received: s.bytes_received,
        bytes_from_broadcaster: s.bytes_from_broadcaster,
    }
}

/// Where a receiver is: the status line's word and `/metrics`' state.
pub const STATES: [&str; 5] = ["joining", "waiting", "buffering", "playing", "stalled"];

/// The receiver's `/metrics`, from its latest summary.
pub fn metrics(s: &Summary, state: &str, players: Option<usize>) -> Scrape {
    let mut m = Scrape::new();
    m.gauges(
        "miostream_receiver_state",
        "1 for the receiver's current state, 0 for the others",
        STATES.iter().map(|st| {
            (
                vec![("state", (*st).to_owned())],
                f64::from(u8::from(*st == state)),
            )
        }),
    );
    m.counter("miostream_receiver_stalls", "Playback stalls", s.stalls);
    m.counter_f64(
        "miostream_receiver_stall_seconds",
        "Time stalled",
        s.stall_ms as f64 / 1e3,
    );
    m.gauge(
        "miostream_receiver_buffer_seconds",
        "Media buffered ahead of the play head",
        s.buffer_ms as f64 / 1e3,
    );
    m.gauge(
        "miostream_receiver_goodput_bytes_per_second",
        "Media bytes per second since joining",
        s.goodput_bps as f64 / 8.0,
    );
    m.counter(
        "miostream_receiver_chunks_received",
        "Chunks received (new, accepted)",
        s.chunks_received,
    );
    m.counter(
        "miostream_receiver_chunks_verified",
        "Chunks whose integrity tag was checked",
        s.chunks_verified,
    );
    m.counter(
        "miostream_receiver_chunks_rejected",
        "Chunks that failed verification",
        s.chunks_rejected,
    );
    m.counter(
        "miostream_receiver_bytes_received",
        "Media bytes received",
        s.bytes_received,
    );
    m.counter(
        "miostream_receiver_bytes_from_broadcaster",
        "Media bytes received straight from the broadcaster",
        s.bytes_from_broadcaster,
    );
    m.gauges(
        "miostream_receiver_latency_seconds",
        "Broadcaster send to delivery here, over live chunks",
        [("0.5", s.latency_ms_p50), ("0.99", s.latency_ms_p99)]
            .map(|(q, ms)| (vec![("quantile", q.to_owned())], ms / 1e3)),
    );
    m.counter(
        "miostream_receiver_parent_changes",
        "Upstream changes after the first",
        s.parent_changes,
    );
    m.counter(
        "miostream_receiver_failures",
        "Failures injected by the supervisor's monitor",
        s.failures,
    );
    m.gauge(
        "miostream_receiver_players",
        "Players connected to --serve",
        players.unwrap_or(0) as f64,
    );
    m
}

/// What `/metrics` shows: the latest summary, state and player count.
type Figures = (Summary, &'static str, Option<usize>);

/// Serves `/metrics`, `/healthz` and `/readyz` (ready: joined) on
/// `listener` until `stop` turns true.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    figures: tokio::sync::watch::Receiver<Figures>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use miostream_cli::http::{text, StatusCode};
    use miostream_cli::metrics::Endpoint;
    let handler = move |req: miostream_cli::http::HttpRequest, _addr: SocketAddr| {
        let figures = figures.clone();
        async move {
            let (summary, state, players) = figures.borrow().clone();
            match miostream_cli::metrics::route(&req) {
                Endpoint::Metrics => {
                    miostream_cli::metrics::response(&metrics(&summary, state, players))
                }
                Endpoint::Health => text(StatusCode::OK, "ok"),
                Endpoint::Ready if state == "joining" || state == "waiting" => {
                    text(StatusCode::SERVICE_UNAVAILABLE, state)
                }
                Endpoint::Ready => text(StatusCode::OK, "ready"),
                Endpoint::Refused(r) => r,
            }
        }
    };
    miostream_cli::http::serve(
        listener,
        miostream_cli::http::Limits {
            max_connections: 16,
            ..Default::default()
        },
        |tcp, _| async move { Some(tcp) },
        handler,
        async move {
            let _ = stop.changed().await;
        },
    )
    .await;
}

/// The state word: where a receiver is.
fn state(joined: bool, waiting: bool, started: bool, buffer_ms: u64) -> &'static str {
    match (joined, waiting, started) {
        (false, true, _) => "waiting",
        (false, false, _) => "joining",
        (true, _, false) => "buffering",
        (true, _, true) if buffer_ms == 0 => "stalled",
        (true, _, true) => "playing",
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Receives until the stream ends, `duration` passes, or `shutdown`
/// completes; returns the summary. Serves players on `config.serve`.
pub async fn run(
    config: ReceiveConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let server = match config.serve {
        Some(addr) => Some(LiveServer::bind(addr, ServeConfig::default()).await?),
        None => None,
    };
    let metrics = match config.metrics {
        Some(addr) => Some(bind_metrics(addr).await?),
        None => None,
    };
    run_serving(config, Bound { server, metrics }, shutdown).await
}

/// Binds the `--metrics` listener.
pub async fn bind_metrics(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))
}

/// Listeners bound by the caller (e.g. on port 0, to learn their addresses
/// first).
#[derive(Default)]
pub struct Bound {
    /// The players' [`LiveServer`] (`--serve`).
    pub server: Option<LiveServer>,
    /// The `/metrics` listener (`--metrics`, see [`bind_metrics`]).
    pub metrics: Option<tokio::net::TcpListener>,
}

/// [`run`] with its listeners bound by the caller; `config.serve` and
/// `config.metrics` are ignored.
pub async fn run_serving(
    config: ReceiveConfig,
    bound: Bound,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let Bound { server, metrics } = bound;
    let (figures_tx, figures_rx) =
        tokio::sync::watch::channel::<Figures>((Summary::default(), "joining", None));
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics_task = metrics.map(|l| tokio::spawn(serve_metrics(l, figures_rx, metrics_stopped)));
    let bind = match config.bind {
        Some(ip) => ip,
        None => miostream_peer::local_ip_towards(&config.supervisor)
            .await
            .with_context(|| format!("no route to {}", config.supervisor))?,
    };
    // The outputs (file or pipe, HTTP players) get the fixed-up init
    // segment, then whole clusters from a keyframe on: a receiver stopped
    // mid-cluster, or a hole, never leaves a torn cluster.
    let writer = match &config.out {
        Output::Discard => None,
        Output::Stdout => Some(StreamWriter::stdout()),
        Output::File(p) => Some(StreamWriter::create(p).await?),
    };
    let mut out = Outputs {
        server,
        writer,
        written_init: None,
    };
    let mut reassembler = Reassembler::new(ReassemblyConfig::default());
    // After a rejoin, the new incarnation starts at a later keyframe.
    let mut resync = false;
    let mut integrity = Arc::new(Mutex::new(Default::default()));
    let peer_id = PeerId::random();
    let mut node = start_node(&config, bind, peer_id, &integrity);
    let mut qos = Qos {
        stream: config.stream.clone(),
        peer_id,
        playback: PlaybackModel::new(config.startup, config.startup / 2),
        latencies: Vec::new(),
        skipped: 0,
        joined_at: None,
        max_gap: Duration::ZERO,
        startup: config.startup,
        failures: 0,
        past_relay: RelayStats::default(),
        past_playback: PlaybackStats::default(),
        past_verified: 0,
        first_startup_ms: None,
    };
    // Latency counts live chunks only: the backlog a new upstream replays
    // (from the latest keyframe, or after a failover) was sent before we
    // asked for it.
    let mut joined_unix_us = u64::MAX;
    // This incarnation has joined; `--wait` is waiting for the stream; the
    // next init chunks repeat the one the outputs have (a rejoin into the
    // same stream).
    let (mut joined, mut waiting, mut skip_init) = (false, false, false);
    let mut last_delivery: Option<Instant> = None;
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    tokio::pin!(shutdown);
    let ended: anyhow::Result<()> = loop {
        let event = tokio::select! {
            e = node.events.recv() => e,
            _ = &mut shutdown => break Ok(()),
            _ = sleep_until_opt(deadline) => break Ok(()),
            _ = tick.tick() => {
                let stats = node.stats.borrow().clone();
                let s = qos.summary(Instant::now(), &stats, verified(&integrity), false);
                if let Some(path) = &config.live_summary {
                    if let Err(e) = write_summary(path, &s) {
                        warn!("cannot write {}: {e}", path.display());
                    }
                }
                if qos.joined_at.is_some() {
                    // For the supervisor's monitor; dropped while it is unreachable.
                    node.tell_supervisor(qos_report(&s));
                }
                let state = state(joined, waiting, qos.playback.started(), s.buffer_ms);
                let players = out.server.as_ref().map(|srv| *srv.clients().borrow());
                if config.status && ticks % STATUS_EVERY == 0 && joined {
                    let word = if state == "buffering" { "joined, buffering" } else { state };
                    eprintln!("{}", status_line(&config.stream, word, &s, players));
                }
                if ticks % 5 == 0 {
                    info!(chunks = s.chunks_received, rejected = s.chunks_rejected, stalls = s.stalls, stall_ms = s.stall_ms, buffer_ms = s.buffer_ms, upstreams_changed = s.parent_changes, "receiving");
                }
                figures_tx.send_replace((s, state, players));
                ticks += 1;
                continue;
            }
        };
        match event {
            None => break Err(anyhow::anyhow!("the node stopped")),
            Some(NodeEvent::Joined(keys)) => {
                // Goodput counts from the first join, across injected failures.
                qos.joined_at.get_or_insert_with(Instant::now);
                joined_unix_us = unix_us();
                joined = true;
                waiting = false;
                if let Some(s) = &out.server {
                    s.set_media_type(&keys.stream.media_type);
                }
                info!(stream = %config.stream, id = %keys.stream.id, topology = %keys.stream.topology, integrity = %keys.stream.integrity, %bind, "joined");
            }
            Some(NodeEvent::FailureInjected) => {
                // The paper's failure (§4.2): a crash, then a new viewer. No
                // LEAVE_STREAM; dropping the node drops its WebRTC links and
                // its supervisor connection, which the supervisor repairs as
                // a failure.
                let stats = node.stats.borrow().clone();
                qos.fail(Instant::now(), &stats, verified(&integrity), true);
                // The new incarnation counts its own verifications.
                integrity = Arc::new(Mutex::new(Default::default()));
                let peer_id = PeerId::random();
                let old =
                    std::mem::replace(&mut node, start_node(&config, bind, peer_id, &integrity));
                old.kill();
                info!(failures = qos.failures, new_peer_id = %peer_id, "injected failure: rejoining as a new viewer");
                qos.peer_id = peer_id;
                joined_unix_us = u64::MAX;
                last_delivery = None;
                resync = true;
                skip_init = true;
                joined = false;
            }
            // A rejoin starts again with the init segment, which the player
            // has already: the output continues with the next clusters.
            Some(NodeEvent::Deliver { header, .. })
                if skip_init && header.kind == ChunkKind::Init => {}
            Some(NodeEvent::Deliver { header, payload }) => {
                if header.kind == ChunkKind::Media {
                    let now = Instant::now();
                    if qos.playback.started() {
                        if let Some(prev) = last_delivery {
                            qos.max_gap = qos.max_gap.max(now - prev);
                        }
                        last_delivery = Some(now);
                    }
                    // Steady-state latency: not the backlog that filled the
                    // startup buffer (startup_ms reports that phase).
                    if header.send_time_us >= joined_unix_us && qos.playback.started() {
                        let latency = unix_us().saturating_sub(header.send_time_us) as f64 / 1000.0;
                        qos.latencies.push(latency);
                    }
                    if header.flags.contains(ChunkFlags::CLUSTER_END) {
                        qos.playback
                            .cluster_complete(header.timestamp_ms, Instant::now());
                    }
                }
                if out.writer.is_some() || out.server.is_some() {
                    if resync && header.kind == ChunkKind::Media {
                        resync = false;
                        reassembler.skip_to(header.seq);
                    }
                    let pieces = reassembler.push(&header, &payload);
                    emit(pieces, &mut out).await;
                }
            }
            Some(NodeEvent::Skipped { first, count }) => {
                qos.skipped += count;
                let pieces = reassembler.skip_to(first + count);
                emit(pieces, &mut out).await;
            }
            Some(NodeEvent::Ended(reason)) if config.wait => {
                // The broadcaster may come back: join its next stream, from
                // its own init segment and sequence numbers.
                info!("stream ended ({reason}): waiting for it to come back");
                if config.status {
                    eprintln!(
                        "{}: ended ({reason}); waiting for it to come back",
                        config.stream
                    );
                }
                if let Some(s) = &out.server {
                    s.reset();
                }
                let stats = node.stats.borrow().clone();
                qos.fail(Instant::now(), &stats, verified(&integrity), false);
                integrity = Arc::new(Mutex::new(Default::default()));
                let peer_id = PeerId::random();
                node.stop().await;
                node = start_node(&config, bind, peer_id, &integrity);
                qos.peer_id = peer_id;
                reassembler = Reassembler::new(ReassemblyConfig::default());
                joined_unix_us = u64::MAX;
                last_delivery = None;
                resync = false;
                skip_init = false;
                joined = false;
            }
            Some(NodeEvent::Ended(reason)) => {
                info!("stream ended: {reason}");
                break Ok(());
            }
            Some(NodeEvent::Failed(reason)) if config.wait && !joined && is_not_found(&reason) => {
                if !waiting {
                    info!("{reason}: waiting for it to be announced");
                    if config.status {
                        eprintln!("{}: not announced yet; waiting", config.stream);
                    }
                    waiting = true;
                }
                // Not a busy loop: one attempt per WAIT_RETRY.
                tokio::select! {
                    _ = tokio::time::sleep(WAIT_RETRY) => {}
                    _ = &mut shutdown => break Ok(()),
                }
                let peer_id = PeerId::random();
                node.stop().await;
                node = start_node(&config, bind, peer_id, &integrity);
                qos.peer_id = peer_id;
            }
            Some(NodeEvent::Failed(reason)) => break Err(anyhow::anyhow!("{reason}")),
            Some(NodeEvent::Announced(_)) => {}
        }
    };
    if let Some(w) = out.writer {
        // A file gets its Cues, Duration and sizes: it seeks.
        match w.finish().await {
            Ok(Some(ms)) => info!(duration_ms = ms, "recording closed"),
            Ok(None) => {}
            Err(e) => warn!("closing the output failed: {e}"),
        }
    }
    if let Some(s) = out.server {
        // Players get what was published, then the end of the stream.
        s.shutdown(Duration::from_secs(1)).await;
    }
    let stats = node.stats.borrow().clone();
    let summary = qos.summary(Instant::now(), &stats, verified(&integrity), true);
    node.stop().await;
    let _ = stop_metrics.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    match ended {
        Ok(()) if qos.joined_at.is_none() => bail!("never joined the stream"),
        Ok(()) => Ok(summary),
        Err(e) => Err(e),
    }
}

/// Where reassembled pieces go: HTTP players and a file or pipe.
struct Outputs {
    server: Option<LiveServer>,
    writer: Option<StreamWriter>,
    /// The init segment written last: a rejoin (`--wait`) that brings the
    /// same one again does not repeat it in the file.
    written_init: Option<Vec<u8>>,
}

/// Hands reassembled pieces to the players and the output.
async fn emit(pieces: Vec<Reassembled>, out: &mut Outputs) {
    for piece in pieces {
        if let Some(s) = &out.server {
            s.publish(&piece);
        }
        if let Reassembled::Init(b) = &piece {
            if out.written_init.as_ref() == Some(b) {
                continue;
            }
            out.written_init = Some(b.clone());
        }
        let writer = &mut out.writer;
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write(&piece).await {
                // A player that went away (broken pipe) ends the output, not the relay.
                warn!("output closed: {e}");
                *writer = None;
            }
        }
    }
}

/// Chunks verified by one incarnation's integrity check.
fn verified(counters: &Mutex<miostream_integrity::Counters>) -> u64 {
    counters.lock().map(|c| c.verified).unwrap_or(0)
}

/// Starts the receiver's node (one incarnation: a peer id, a transport).
fn start_node(
    config: &ReceiveConfig,
    bind: IpAddr,
    peer_id: PeerId,
    integrity: &Arc<Mutex<miostream_integrity::Counters>>,
) -> NodeHandle {
    let (transport, _counters) = miostream_webrtc::spawn(
        peer_id,
        WebRtcConfig {
            ice_servers: config.ice_servers.clone(),
            ..WebRtcConfig::new(bind)
        },
    );
    spawn_node(
        NodeConfig {
            session: SessionConfig {
                url: config.supervisor.clone(),
                identity: config.identity.clone(),
                trust: config.trust.clone(),
                role: ComponentType::Receiver,
                peer_id,
                backoff_min: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
            },
            stream: config.stream.clone(),
            announce: None,
            relay: RelayConfig::default(),
            verifier: integrity_check(config.threshold, integrity.clone()),
            capacity: None,
        },
        transport,
    )
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_state_buffer_stalls_upstreams_and_players() {
        let s = Summary {
            buffer_ms: 1850,
            stalls: 2,
            stall_ms: 340,
            parent_changes: 1,
            goodput_bps: 1_234_000,
            ..Summary::default()
        };
        assert_eq!(
            status_line("cam", "playing", &s, Some(1)),
            "cam: playing · buffer 1.9 s · stalls 2 (340 ms) · upstream changes 1 · 1.23 Mbit/s · 1 player"
        );
        let bad = Summary {
            chunks_rejected: 3,
            ..s
        };
        let line = status_line("cam", "stalled", &bad, None);
        assert!(line.ends_with("· 3 chunks rejected"), "{line}");
        assert!(is_not_found("no stream named \"cam\""));
        assert!(!is_not_found("unknown key"));
    }
}
