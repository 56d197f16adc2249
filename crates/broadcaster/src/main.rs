//! `miostream-broadcaster`: `keygen` and `run` (see `--help`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use miostream_broadcaster::{run, BroadcastConfig, Input};
use miostream_media_io::{Encoder, IngestUrl, VideoSize};
use miostream_peer::{keygen, one_line, ConnectionFlags, PeerPaths};
use miostream_protocol::{ComponentType, IntegrityMode, TopologyKind};

#[derive(Parser)]
#[command(
    name = "miostream-broadcaster",
    version,
    about = "MioStream broadcaster: stream a live WebM to peers"
)]
struct Cli {
    /// Log lines as `text` (colour only on a terminal) or `json` (one
    /// object per line); `RUST_LOG` filters them.
    #[arg(long, global = true, value_name = "text|json")]
    log_format: Option<miostream_cli::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Create an identity: DIR/peer.key (0600) and DIR/peer.pub (give it to
    /// the supervisor's operator to authorize with --role broadcaster).
    Keygen {
        /// Directory to create the key pair in.
        #[arg(long)]
        out: PathBuf,
        /// RSA key size (2048, 3072, 4096 or 8192).
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// Enroll with an invite from the supervisor's operator: creates this
    /// broadcaster's identity if there is none, registers its key and
    /// stores the supervisor's URL and trust bundle, so that `run` needs no
    /// connection flags.
    Enroll {
        /// The invite file (`miostream-supervisor invite --role broadcaster`).
        file: PathBuf,
    },
    /// Announce a stream and broadcast it until the input ends or SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        conn: ConnectionFlags,
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// Overlay the receivers are arranged in.
        #[arg(long, default_value = "tree")]
        topology: TopologyKind,
        /// Chunk integrity: sign (Ed25519, relays cannot forge) or hmac (the paper's).
        #[arg(long, default_value = "sign")]
        integrity: IntegrityMode,
        /// A WebM file, - for a live WebM on standard input, or an ingest
        /// that an encoder (OBS, ffmpeg) pushes to: rtmp://HOST:PORT/APP/KEY
        /// or srt://HOST:PORT (ffmpeg listens there and transcodes to VP8 +
        /// Opus).
        #[arg(long, conflicts_with = "webcam", required_unless_present = "webcam")]
        input: Option<PathBuf>,
        /// Replay the file forever (timestamps continue; no re-init).
        #[arg(long, requires = "input")]
        r#loop: bool,
        /// A V4L2 camera (/dev/videoN); ffmpeg encodes VP8 + Opus.
        #[arg(long)]
        webcam: Option<PathBuf>,
        /// ALSA device for the webcam's audio (default: silence).
        #[arg(long, requires = "webcam")]
        audio: Option<String>,
        /// Local address for WebRTC (default: the one that routes to the supervisor).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// STUN/TURN server URL for NAT traversal (repeatable).
        #[arg(long = "ice-server")]
        ice_servers: Vec<String>,
        /// Video bitrate of the webcam or ingest encoder (kbit/s, 50–50000;
        /// default 1032).
        #[arg(long, value_name = "K")]
        video_bitrate: Option<u32>,
        /// Frame size of the webcam or ingest encoder, WxH (default: the input's).
        #[arg(long, value_name = "WxH")]
        video_size: Option<VideoSize>,
        /// Frame rate of the webcam or ingest encoder (1–120; default: the input's).
        #[arg(long, value_name = "F")]
        framerate: Option<u32>,
        /// Frames between keyframes (each starts a cluster; 1–600; default 30).
        #[arg(long, value_name = "N")]
        keyint: Option<u32>,
        /// A title shown to viewers (`miostream-receiver list`, the
        /// dashboard): at most 200 characters, one line.
        #[arg(long, default_value = "")]
        title: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    miostream_cli::init_logging(
        &format!("info,{}", miostream_peer::QUIET_WEBRTC),
        cli.log_format.unwrap_or_default(),
    );
    match main_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("miostream-broadcaster: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn main_inner(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out, bits } => {
            let id = keygen(&out, bits)?;
            println!(
                "wrote {}/peer.key and {}/peer.pub (fingerprint {})",
                out.display(),
                out.display(),
                id.key().public().fingerprint()
            );
            Ok(())
        }
        Command::Enroll { file } => {
            let role = ComponentType::Broadcaster;
            let paths = PeerPaths::from_env(role)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            println!(
                "{}",
                runtime.block_on(miostream_peer::enroll(&file, role, paths))?
            );
            Ok(())
        }
        Command::Run {
            conn,
            stream,
            topology,
            integrity,
            input,
            r#loop,
            webcam,
            audio,
            bind,
            ice_servers,
            title,
            video_bitrate,
            video_size,
            framerate,
            keyint,
        } => {
            let input = match (input, webcam) {
                (Some(p), _) if p.as_os_str() == "-" => Input::Stdin,
                (Some(p), _) if IngestUrl::is_ingest(&p.to_string_lossy()) => Input::Ingest(
                    p.to_string_lossy()
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--input {e}"))?,
                ),
                (Some(path), _) => Input::File {
                    path,
                    looped: r#loop,
                },
                (None, Some(device)) => Input::Webcam { device, audio },
                (None, None) => {
                    anyhow::bail!("give --input FILE.webm, --input -, --input rtmp://… or srt://…, or --webcam /dev/videoN")
                }
            };
            let conn = conn.resolve(ComponentType::Broadcaster)?;
            let defaults = Encoder::default();
            let set = video_bitrate.is_some()
                || video_size.is_some()
                || framerate.is_some()
                || keyint.is_some();
            if set && matches!(input, Input::File { .. } | Input::Stdin) {
                anyhow::bail!(
                    "--video-bitrate, --video-size, --framerate and --keyint apply to what ffmpeg encodes (--webcam, rtmp:// and srt:// inputs), not to a WebM file or stdin"
                );
            }
            let encoder = Encoder {
                video_kbps: video_bitrate.unwrap_or(defaults.video_kbps),
                size: video_size,
                framerate,
                keyint: keyint.unwrap_or(defaults.keyint),
            };
            encoder.check().map_err(anyhow::Error::msg)?;
            let config = BroadcastConfig {
                supervisor: conn.supervisor,
                identity: conn.identity,
                trust: conn.trust,
                stream,
                topology,
                integrity,
                input,
                bind,
                ice_servers,
                title,
                encoder,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let report = runtime.block_on(run(config, shutdown_signal()))?;
            eprintln!(
                "broadcast done: {} clusters, {} chunks, {} bytes",
                report.clusters, report.chunks, report.bytes
            );
            Ok(())
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
