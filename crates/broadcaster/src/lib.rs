//! The broadcaster: reads a live WebM (a file paced at real time, stdin, a
//! webcam or an RTMP/SRT ingest through ffmpeg: media-io's `MediaSource`),
//! splits it into the init segment and clusters,
//! cuts them into chunks, tags every chunk (Ed25519 in `sign` mode, HMAC in
//! `hmac` mode) and publishes them into the overlay through its node.
//!
//! `--loop` replays a file seamlessly: the clusters of the next pass carry
//! timestamps that continue the timeline (no re-init), so players never see
//! the stream restart.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use miostream_integrity::{SourceKey, StreamKey, Tagger};
use miostream_media::chunk::Chunker;
use miostream_media::{live_media_type, Segment};
use miostream_media_io::{Encoder, IngestUrl, MediaSource, Source, SourceConfig};
use miostream_peer::{
    spawn_node, Announcement, Identity, NodeConfig, NodeEvent, SessionConfig, SupervisorUrl, Trust,
};
use miostream_protocol::{Chunk, ComponentType, IntegrityMode, PeerId, TopologyKind};
use miostream_relay::{AcceptAll, RelayConfig};
use miostream_webrtc::WebRtcConfig;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long an ingest waits for its encoder to start pushing.
pub const INGEST_WAIT: Duration = Duration::from_secs(120);

/// How long the broadcaster keeps serving after its input ended.
const END_GRACE: Duration = Duration::from_secs(2);

/// The chunks of one cluster leave spread over this share of its span
/// rather than in one burst: a whole cluster at once (≈150 KB at 1.2
/// Mbit/s) queues behind itself at every relay on the way down and meets
/// congestion windows that shrank during the idle second before it.
const SPREAD: f64 = 0.5;

/// The pause between the chunks of `segment` (cut into `pieces`).
fn spacing(segment: &Segment, pieces: usize) -> Duration {
    match segment {
        Segment::Cluster(c) if pieces > 1 => {
            Duration::from_millis(c.span_ms()).mul_f64(SPREAD) / (pieces as u32 - 1)
        }
        _ => Duration::ZERO,
    }
}

/// Where the media comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A WebM file, paced at real time by its cluster timestamps.
    File {
        /// The file.
        path: PathBuf,
        /// Replay it forever, timestamps continuing.
        looped: bool,
    },
    /// A live WebM on standard input (already real time).
    Stdin,
    /// A V4L2 camera, encoded by ffmpeg to VP8 + Opus.
    Webcam {
        /// The device, e.g. `/dev/video0`.
        device: PathBuf,
        /// ALSA capture device for audio; silence when absent.
        audio: Option<String>,
    },
    /// An RTMP or SRT ingest that an encoder (OBS, ffmpeg) pushes to;
    /// ffmpeg listens and transcodes to VP8 + Opus.
    Ingest(IngestUrl),
}

impl Input {
    fn source(&self) -> Source {
        match self {
            Input::File { path, looped } => Source::File {
                path: path.clone(),
                looped: *looped,
            },
            Input::Stdin => Source::Stdin,
            Input::Webcam { device, audio } => Source::Webcam {
                device: device.clone(),
                audio: audio.clone(),
            },
            Input::Ingest(url) => Source::Ingest(url.clone()),
        }
    }
}

/// A broadcaster's settings.
#[derive(Debug, Clone)]
pub struct BroadcastConfig {
    /// Supervisor URL.
    pub supervisor: SupervisorUrl,
    /// Our identity.
    pub identity: Identity,
    /// The supervisor's trust bundle.
    pub trust: Trust,
    /// Stream name.
    pub stream: String,
    /// Overlay.
    pub topology: TopologyKind,
    /// Chunk integrity.
    pub integrity: IntegrityMode,
    /// Media source.
    pub input: Input,
    /// Local address for WebRTC (default: the one that routes to the supervisor).
    pub bind: Option<IpAddr>,
    /// STUN/TURN URLs.
    pub ice_servers: Vec<String>,
    /// Title shown to viewers (`list`, the dashboard); empty: none.
    pub title: String,
    /// How ffmpeg encodes a webcam or an ingest.
    pub encoder: Encoder,
}

/// What a finished broadcast did.
#[derive(Debug, Clone, Copy, Default)]
pub struct BroadcastReport {
    /// Clusters published.
    pub clusters: u64,
    /// Chunks published.
    pub chunks: u64,
    /// Media bytes published.
    pub bytes: u64,
}

/// Sleeps for `d`, or forever when `d` is `Duration::MAX`.
async fn sleep_or_never(d: Duration) {
    match tokio::time::Instant::now().checked_add(d) {
        Some(at) if d != Duration::MAX => tokio::time::sleep_until(at).await,
        _ => std::future::pending().await,
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs a broadcast until the input ends (without `--loop`), the node
/// fails, or `shutdown` completes.
pub async fn run(
    config: BroadcastConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<BroadcastReport> {
    miostream_protocol::signal::check_title(&config.title)
        .map_err(|e| anyhow::anyhow!("--title: {e}"))?;
    let bind = match config.bind {
        Some(ip) => ip,
        None => miostream_peer::local_ip_towards(&config.supervisor)
            .await
            .with_context(|| format!("no route to {}", config.supervisor))?,
    };
    // Open the input first: a missing file, camera or ffmpeg is reported
    // before anything is announced.
    let mut source = MediaSource::open(
        config.input.source(),
        SourceConfig {
            encoder: config.encoder.clone(),
            ..SourceConfig::default()
        },
    )
    .await?;
    // The init segment first: the announced media type names its codecs
    // (`video/webm; codecs="vp8,opus"`), which browser players need. An
    // ingest has none until its encoder pushes.
    tokio::pin!(shutdown);
    let what = source.describe().to_owned();
    let wait = match config.input {
        Input::Ingest(_) => {
            info!(input = %what, "waiting for the encoder to push");
            INGEST_WAIT
        }
        _ => Duration::MAX,
    };
    let first = tokio::select! {
        r = source.next() => r?,
        _ = &mut shutdown => return Ok(BroadcastReport::default()),
        _ = sleep_or_never(wait) => bail!(
            "no input on {what} within {} s: is the encoder streaming to it?",
            wait.as_secs()
        ),
    };
    let init = match first {
        Some(Segment::Init(init)) => init,
        Some(Segment::Cluster(_)) | None => {
            bail!("{what} ended before its first WebM Tracks")
        }
    };
    let media_type = live_media_type("video/webm", Some(&init));
    let source_key = SourceKey::generate(&mut rand::rng());
    let signing_key = (config.integrity == IntegrityMode::Sign).then(|| source_key.public_base64());
    let peer_id = PeerId::random();
    let (transport, counters) = miostream_webrtc::spawn(
        peer_id,
        WebRtcConfig {
            ice_servers: config.ice_servers.clone(),
            ..WebRtcConfig::new(bind)
        },
    );
    let mut node = spawn_node(
        NodeConfig {
            session: SessionConfig {
                url: config.supervisor.clone(),
                identity: config.identity.clone(),
                trust: config.trust.clone(),
                role: ComponentType::Broadcaster,
                peer_id,
                backoff_min: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
            },
            stream: config.stream.clone(),
            announce: Some(Announcement {
                topology: config.topology,
                integrity: config.integrity,
                media_type: media_type.clone(),
                signing_key,
                title: config.title.clone(),
            }),
            relay: RelayConfig::default(),
            verifier: Box::new(|_| Box::new(AcceptAll)),
            capacity: None,
        },
        transport,
    );
    let keys = loop {
        match node.events.recv().await {
            Some(NodeEvent::Announced(keys)) => break keys,
            Some(NodeEvent::Failed(e)) | Some(NodeEvent::Ended(e)) => bail!("{e}"),
            Some(_) => continue,
            None => bail!("the node stopped"),
        }
    };
    info!(stream = %config.stream, id = %keys.stream.id, topology = %config.topology, integrity = %config.integrity, %bind, "streaming");
    let tagger = match config.integrity {
        IntegrityMode::Sign => Tagger::Sign(source_key),
        IntegrityMode::Hmac => Tagger::Hmac(StreamKey::from_base64(&keys.stream_key)?),
    };
    let mut chunker = Chunker::new(keys.stream.id, 0);
    let publish = node.publish.clone();
    let mut report = BroadcastReport::default();
    let (node_events_tx, mut node_events) = mpsc::channel::<String>(4);
    // Watch the node: a failure ends the broadcast.
    let mut events = std::mem::replace(&mut node.events, mpsc::channel(1).1);
    let watcher = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let NodeEvent::Failed(e) | NodeEvent::Ended(e) = ev {
                let _ = node_events_tx.send(e).await;
                return;
            }
        }
    });

    let pump = async {
        let start = Instant::now();
        let mut last_log = Instant::now();
        // The init segment read above, then every segment when due (the
        // source paces and loops files).
        let mut next = Some(Segment::Init(init));
        while let Some(segment) = next {
            if let Segment::Cluster(_) = segment {
                report.clusters += 1;
            }
            let pieces = chunker.chunks(&segment, 0);
            let gap = spacing(&segment, pieces.len());
            let burst = Instant::now();
            for (i, (mut header, payload)) in pieces.into_iter().enumerate() {
                if i > 0 && !gap.is_zero() {
                    tokio::time::sleep_until((burst + gap * i as u32).into()).await;
                }
                // Stamped (and so tagged) when it leaves.
                header.send_time_us = unix_us();
                let tag = tagger.tag(&header, payload);
                let frame = Chunk {
                    header,
                    tag,
                    payload: payload.to_vec(),
                }
                .encode()?;
                report.chunks += 1;
                report.bytes += payload.len() as u64;
                publish
                    .send(Bytes::from(frame))
                    .await
                    .context("the node stopped")?;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                let secs = start.elapsed().as_secs_f64();
                info!(
                    clusters = report.clusters,
                    chunks = report.chunks,
                    kbps = (report.bytes as f64 * 8.0 / secs / 1000.0) as u64,
                    dropped_frames = counters
                        .dropped_frames
                        .load(std::sync::atomic::Ordering::Relaxed),
                    "broadcasting"
                );
                last_log = Instant::now();
            }
            next = source.next().await?;
        }
        if let Input::Ingest(_) = config.input {
            info!(input = %what, "the encoder stopped: ending the stream");
        }
        // Let the last chunks reach every receiver before leaving (leaving
        // ends the stream).
        tokio::time::sleep(END_GRACE).await;
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = pump => r,
        Some(reason) = node_events.recv() => Err(anyhow::anyhow!("{reason}")),
        _ = &mut shutdown => Ok(()),
    };
    // Dropping the source kills its ffmpeg, if any.
    drop(source);
    watcher.abort();
    node.stop().await;
    if let Err(e) = &result {
        warn!("broadcast ended: {e:#}");
    }
    result.map(|()| report)
}
