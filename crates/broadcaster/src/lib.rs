//! The broadcaster: reads a live WebM (a file paced at real time, stdin, or
//! a webcam through ffmpeg), splits it into the init segment and clusters,
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
use miostream_media::{live_media_type, Segment, Splitter};
use miostream_peer::{
    spawn_node, Announcement, Identity, NodeConfig, NodeEvent, SessionConfig, SupervisorUrl, Trust,
};
use miostream_protocol::{Chunk, ComponentType, IntegrityMode, PeerId, TopologyKind};
use miostream_relay::{AcceptAll, RelayConfig};
use miostream_webrtc::WebRtcConfig;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// The gap left after the last block of a pass before the next one starts.
const LOOP_FRAME_MS: u64 = 40;

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

/// Opens the media source.
async fn open(
    input: &Input,
) -> anyhow::Result<(
    Box<dyn AsyncRead + Unpin + Send>,
    Option<tokio::process::Child>,
)> {
    match input {
        Input::File { path, .. } => {
            let f = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            Ok((Box::new(f), None))
        }
        Input::Stdin => Ok((Box::new(tokio::io::stdin()), None)),
        Input::Webcam { device, audio } => {
            if !device.exists() {
                bail!("camera {} not found", device.display());
            }
            let mut cmd = tokio::process::Command::new("ffmpeg");
            cmd.args(["-hide_banner", "-loglevel", "error", "-f", "v4l2", "-i"])
                .arg(device);
            match audio {
                Some(a) => cmd.args(["-f", "alsa", "-i", a]),
                None => cmd.args(["-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo"]),
            };
            cmd.args([
                "-c:v",
                "libvpx",
                "-b:v",
                "1032k",
                "-g",
                "30",
                "-deadline",
                "realtime",
                "-cpu-used",
                "16",
                "-c:a",
                "libopus",
                "-b:a",
                "128k",
                "-f",
                "webm",
                "-live",
                "1",
                "-cluster_size_limit",
                "5000000",
                "-cluster_time_limit",
                "1100",
                "pipe:1",
            ])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .context("cannot start ffmpeg for the webcam (is ffmpeg installed?)")?;
            let stdout = child.stdout.take().context("ffmpeg stdout")?;
            Ok((Box::new(stdout), Some(child)))
        }
    }
}

/// Reads `reader` until its init segment is whole; returns a reader that
/// yields everything again from the first byte, and the init segment.
async fn read_init(
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
) -> anyhow::Result<(impl AsyncRead + Unpin + Send, Vec<u8>)> {
    let mut splitter = Splitter::new();
    let mut read = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let init = loop {
        let n = reader.read(&mut buf).await.context("reading the input")?;
        let segments = if n == 0 {
            splitter.finish()?
        } else {
            splitter.push(&buf[..n])?
        };
        read.extend_from_slice(&buf[..n]);
        if let Some(Segment::Init(init)) = segments.into_iter().next() {
            break init;
        }
        if n == 0 {
            bail!("the input ended before its first WebM Tracks");
        }
    };
    Ok((std::io::Cursor::new(read).chain(reader), init))
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
    let bind = match config.bind {
        Some(ip) => ip,
        None => miostream_peer::local_ip_towards(&config.supervisor)
            .await
            .with_context(|| format!("no route to {}", config.supervisor))?,
    };
    // Open the input first: a missing file or camera is reported before
    // anything is announced.
    let (reader, child) = open(&config.input).await?;
    // The init segment first: the announced media type names its codecs
    // (`video/webm; codecs="vp8,opus"`), which browser players need. What
    // was read is played from the start.
    tokio::pin!(shutdown);
    let (prefix, init) = tokio::select! {
        r = read_init(reader) => r?,
        _ = &mut shutdown => return Ok(BroadcastReport::default()),
    };
    let media_type = live_media_type("video/webm", Some(&init));
    let mut reader: Box<dyn AsyncRead + Unpin + Send> = Box::new(prefix);
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
    let paced = matches!(config.input, Input::File { .. });
    let looped = matches!(config.input, Input::File { looped: true, .. });
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
        let mut first_ts: Option<u64> = None;
        // Where the media played so far ends (last block), for looping.
        let mut end_ms = 0u64;
        let mut shift = 0u64;
        let mut sent_init = false;
        let mut last_log = Instant::now();
        loop {
            let mut splitter = Splitter::new();
            splitter.set_timestamp_shift(shift);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).await.context("reading the input")?;
                let segments = if n == 0 {
                    splitter.finish()?
                } else {
                    splitter.push(&buf[..n])?
                };
                for segment in &segments {
                    match segment {
                        Segment::Init(_) if sent_init => continue, // a loop pass: same tracks
                        Segment::Init(_) => sent_init = true,
                        Segment::Cluster(c) => {
                            let first = *first_ts.get_or_insert(c.timestamp_ms);
                            end_ms = end_ms.max(c.last_block_ms);
                            if paced {
                                let due = start
                                    + Duration::from_millis(c.timestamp_ms.saturating_sub(first));
                                tokio::time::sleep_until(due.into()).await;
                            }
                            report.clusters += 1;
                        }
                    }
                    let pieces = chunker.chunks(segment, 0);
                    let gap = spacing(segment, pieces.len());
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
                if n == 0 {
                    break;
                }
            }
            if !looped {
                // Let the last chunks reach every receiver before leaving
                // (leaving ends the stream).
                tokio::time::sleep(END_GRACE).await;
                return anyhow::Ok(());
            }
            // Next pass: timestamps continue after the last block, one frame
            // (≤ 40 ms: 25 fps video, 20 ms Opus) later.
            shift = end_ms + LOOP_FRAME_MS - first_ts.unwrap_or(0);
            // Only files loop, and files have no child process.
            reader = open(&config.input).await?.0;
        }
    };
    let result = tokio::select! {
        r = pump => r,
        Some(reason) = node_events.recv() => Err(anyhow::anyhow!("{reason}")),
        _ = &mut shutdown => Ok(()),
    };
    if let Some(mut c) = child {
        let _ = c.kill().await;
    }
    watcher.abort();
    node.stop().await;
    if let Err(e) = &result {
        warn!("broadcast ended: {e:#}");
    }
    result.map(|()| report)
}
