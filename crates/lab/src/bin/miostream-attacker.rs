//! `miostream-attacker`: the lab's malicious receiver. A real receiver —
//! identity, supervisor session, WebRTC transport and the unchanged node
//! core — that plays and relays honestly, except that its transport runs
//! through [`Attacker`] (see `miostream_lab::attack`), which at the attack
//! rate forges the chunks it relays, sends garbage, floods its upstream
//! with gap requests, or reports honest peers as forgers. Built for the lab
//! only; the shipped `miostream-receiver` has no attack flags.
//!
//! It writes a summary JSON like the receiver's (the keys the lab reads)
//! every second and at exit, and ends with one line `miostream-attacker:
//! REASON` when it fails (a supervisor's `Misbehaving` close is a cut-out).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use miostream_lab::attack::{Action, Attack, Attacker, DEFAULT_RATE};
use miostream_media::PlaybackModel;
use miostream_node::TransportCommand;
use miostream_peer::transport::TransportHandle;
use miostream_peer::{
    integrity_check, spawn_node, Identity, NodeConfig, NodeEvent, SessionConfig, SupervisorUrl,
    Trust,
};
use miostream_protocol::{ChunkFlags, ChunkKind, ComponentType, PeerId, PeerMessage};
use miostream_relay::RelayConfig;
use miostream_webrtc::WebRtcConfig;
use tokio::sync::mpsc;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "miostream-attacker",
    version,
    about = "The MioStream lab's malicious receiver (never shipped)"
)]
struct Cli {
    /// Supervisor URL, wss://HOST:PORT.
    #[arg(long)]
    supervisor: SupervisorUrl,
    /// Identity directory (from `miostream-receiver keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// The supervisor's trust bundle (its DIR/trust).
    #[arg(long)]
    trust: PathBuf,
    /// Stream name.
    #[arg(long)]
    stream: String,
    /// forge, false-report, garbage or gap-flood.
    #[arg(long)]
    attack: Attack,
    /// Attacks per second.
    #[arg(long, default_value_t = DEFAULT_RATE)]
    attacks_per_sec: f64,
    /// Write the summary JSON here every second and at exit.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Media buffered before playback starts (ms).
    #[arg(long, default_value_t = 2000)]
    startup_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("warn,{}", miostream_peer::QUIET_WEBRTC))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "miostream-attacker: {}",
                miostream_peer::one_line(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Puts `attacker` between the node and the real transport. Reports it
/// wants made go to `reports`.
fn wrap(
    inner: TransportHandle,
    mut attacker: Attacker,
    reports: mpsc::Sender<(PeerId, u64, Option<Bytes>)>,
) -> TransportHandle {
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<TransportCommand>(1024);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let TransportHandle {
        commands,
        mut events,
    } = inner;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(attacker.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let cmd = attacker.outbound(cmd);
                    // Sends may be dropped when full, as the node's own are;
                    // control commands wait for room.
                    match cmd {
                        cmd @ TransportCommand::Send { .. } => { let _ = commands.try_send(cmd); }
                        cmd => if commands.send(cmd).await.is_err() { break },
                    }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    attacker.inbound(&ev, Instant::now());
                    if ev_tx.send(ev).await.is_err() { break }
                }
                _ = tick.tick() => {
                    for action in attacker.tick() {
                        match action {
                            Action::Transport(cmd) => { let _ = commands.try_send(cmd); }
                            Action::Report { upstream, seq, chunk } => { let _ = reports.try_send((upstream, seq, chunk)); }
                        }
                    }
                }
            }
        }
        info!(stats = ?attacker.stats(), "attacker stopped");
    });
    TransportHandle {
        commands: cmd_tx,
        events: ev_rx,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let bind = miostream_peer::local_ip_towards(&cli.supervisor)
        .await
        .with_context(|| format!("no route to {}", cli.supervisor))?;
    let peer_id = PeerId::random();
    let (transport, _counters) = miostream_webrtc::spawn(peer_id, WebRtcConfig::new(bind));
    let (report_tx, mut report_rx) = mpsc::channel(64);
    let attacker = Attacker::new(cli.attack, cli.attacks_per_sec);
    let transport = wrap(transport, attacker, report_tx);
    let integrity = Arc::new(Mutex::new(miostream_integrity::Counters::default()));
    let mut node = spawn_node(
        NodeConfig {
            session: SessionConfig {
                url: cli.supervisor.clone(),
                identity: Identity::load(&cli.identity)?,
                trust: Trust::load(&cli.trust)?,
                role: ComponentType::Receiver,
                peer_id,
                backoff_min: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
            },
            stream: cli.stream.clone(),
            announce: None,
            relay: RelayConfig::default(),
            verifier: integrity_check(1.0, integrity.clone()),
            capacity: None,
        },
        transport,
    );
    warn!(attack = %cli.attack, rate = cli.attacks_per_sec, %peer_id, "attacker starting");
    let startup = Duration::from_millis(cli.startup_ms);
    let mut playback = PlaybackModel::new(startup, startup / 2);
    let mut joined_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let summary = |playback: &mut PlaybackModel, joined_at: Option<Instant>, ended: bool| {
        let stats = node.stats.borrow().clone();
        let now = Instant::now();
        let p = playback.stats(now);
        let joined_secs = joined_at.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        let verified = integrity.lock().map(|c| c.verified).unwrap_or(0);
        serde_json::json!({
            "stream": cli.stream,
            "peer_id": peer_id.to_string(),
            "attack": cli.attack.name(),
            "chunks_received": stats.chunks_received,
            "chunks_verified": verified,
            "chunks_rejected": stats.rejected,
            "bytes_received": stats.bytes_received,
            "goodput_bps": if joined_secs > 0.0 { (stats.bytes_received as f64 * 8.0 / joined_secs) as u64 } else { 0 },
            "stalls": p.stalls,
            "stall_ms": p.stall_ms,
            "startup_ms": p.startup_ms,
            "played_ms": p.played_ms,
            "parent_changes": stats.upstream_changes,
            "chunks_skipped": stats.skipped,
            "duplicates": stats.duplicates,
            "joined_secs": joined_secs,
            "buffer_ms": playback.buffered_ms(now),
            "ended": ended,
        })
    };
    let write = |value: &serde_json::Value| -> anyhow::Result<()> {
        if let Some(path) = &cli.summary {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            std::fs::write(&tmp, format!("{value:#}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    };
    let ended: anyhow::Result<()> = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = tick.tick() => write(&summary(&mut playback, joined_at, false))?,
            Some((upstream, seq, chunk)) = report_rx.recv() => {
                // The lie: a chunk it got intact "failed verification", with
                // a tampered copy of it as the evidence.
                let sent = node.tell_supervisor(PeerMessage::ReportBadChunk {
                    upstream,
                    seq,
                    reason: "bad signature".into(),
                    chunk: chunk.map(|c| B64.encode(&c)),
                });
                info!(%upstream, seq, sent, "false report");
            }
            ev = node.events.recv() => match ev {
                None => break Err(anyhow::anyhow!("the node stopped")),
                Some(NodeEvent::Joined(_)) => {
                    joined_at.get_or_insert_with(Instant::now);
                }
                Some(NodeEvent::Deliver { header, .. }) => {
                    if header.kind == ChunkKind::Media && header.flags.contains(ChunkFlags::CLUSTER_END) {
                        playback.cluster_complete(header.timestamp_ms, Instant::now());
                    }
                }
                Some(NodeEvent::Ended(reason)) => {
                    info!("stream ended: {reason}");
                    break Ok(());
                }
                Some(NodeEvent::Failed(reason)) => break Err(anyhow::anyhow!("{reason}")),
                Some(NodeEvent::FailureInjected) => warn!("failure injection ignored by the attacker"),
                Some(NodeEvent::Skipped { .. } | NodeEvent::Announced(_)) => {}
            },
        }
    };
    write(&summary(&mut playback, joined_at, true))?;
    node.stop().await;
    ended
}
