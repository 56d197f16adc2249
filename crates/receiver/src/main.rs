//! `miostream-receiver`: `keygen`, `list`, `run` and `watch` (see `--help`).

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use miostream_media_io::{LiveServer, ServeConfig, STREAM_PATH};
use miostream_peer::{keygen, ConnectionFlags, PeerPaths, SupervisorClient};
use miostream_protocol::ComponentType;
use miostream_receiver::{run_serving as receive, Bound, Output, ReceiveConfig};

#[derive(Parser)]
#[command(
    name = "miostream-receiver",
    version,
    about = "MioStream receiver: watch (and relay) a live stream"
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
enum Command {
    /// Create an identity: DIR/peer.key (0600) and DIR/peer.pub (give it to
    /// the supervisor's operator to authorize).
    Keygen {
        /// Directory to create the key pair in.
        #[arg(long)]
        out: PathBuf,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// Enroll with an invite from the supervisor's operator: creates this
    /// receiver's identity if there is none, registers its key and stores
    /// the supervisor's URL and trust bundle, so that `run`, `list` and
    /// `watch` need no connection flags.
    Enroll {
        /// The invite file (`miostream-supervisor invite`).
        file: PathBuf,
    },
    /// List the supervisor's live streams.
    List {
        #[command(flatten)]
        conn: ConnectionFlags,
        /// Print one JSON array (name, title, topology, integrity,
        /// viewers, bitrate_bps, media_type) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Join a stream: play it (to a file or stdout), relay it, report QoS.
    Run {
        #[command(flatten)]
        conn: ConnectionFlags,
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// Write the reassembled WebM to FILE.webm, or - for stdout (`| mpv -`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Serve the live stream over HTTP: a browser player page at
        /// http://HOST:PORT/, the raw WebM for mpv/VLC/ffplay at
        /// http://HOST:PORT/stream.webm.
        #[arg(long)]
        serve: Option<std::net::SocketAddr>,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (plain
        /// HTTP; also /healthz and /readyz): state, stalls, goodput, chunks,
        /// latency, upstream changes, players.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<std::net::SocketAddr>,
        /// Write the QoS summary JSON here at exit (and rewrite it every
        /// second while running, with "ended": false).
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Leave after SECS seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Fraction of chunks whose tag is checked (0.0–1.0).
        #[arg(long, default_value_t = 1.0)]
        threshold: f64,
        /// Media buffered before playback starts (ms).
        #[arg(long, default_value_t = 2000)]
        startup_ms: u64,
        /// Local address for WebRTC (default: the one that routes to the supervisor).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// STUN/TURN server URL for NAT traversal (repeatable).
        #[arg(long = "ice-server")]
        ice_servers: Vec<String>,
        /// Wait for a stream that is not announced yet, or whose broadcaster
        /// stops, instead of failing or ending.
        #[arg(long)]
        wait: bool,
    },
    /// Watch a stream: join it, serve it on a free loopback port and open
    /// a player on it; exits when the player closes.
    Watch {
        /// Stream name.
        name: String,
        #[command(flatten)]
        conn: ConnectionFlags,
        /// Which player: the first of mpv, VLC, ffplay and a browser that is
        /// installed (auto), one of them, or none (print the URLs and serve
        /// until interrupted).
        #[arg(long, value_enum, default_value_t = Player::Auto)]
        player: Player,
        /// Wait for a stream that is not announced yet, or whose broadcaster
        /// stops, instead of failing or ending.
        #[arg(long)]
        wait: bool,
        /// Media buffered before playback starts (ms).
        #[arg(long, default_value_t = 2000)]
        startup_ms: u64,
        /// Local address for WebRTC (default: the one that routes to the supervisor).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// STUN/TURN server URL for NAT traversal (repeatable).
        #[arg(long = "ice-server")]
        ice_servers: Vec<String>,
    },
}

/// `watch --player`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Player {
    Auto,
    Mpv,
    Vlc,
    Ffplay,
    Browser,
    None,
}

/// The player programs, in the order `auto` tries them: (choice, program,
/// arguments before the URL, whether it opens the page rather than the
/// raw stream).
const PLAYERS: [(Player, &str, &[&str], bool); 4] = [
    (Player::Mpv, "mpv", &["--force-window=yes"], false),
    (Player::Vlc, "vlc", &["--play-and-exit"], false),
    (
        Player::Ffplay,
        "ffplay",
        &["-loglevel", "warning", "-autoexit"],
        false,
    ),
    (Player::Browser, "xdg-open", &[], true),
];

/// Whether `program` is an executable file on `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The player to launch for `choice` (`None` for `--player none`).
fn pick_player(
    choice: Player,
) -> anyhow::Result<Option<(&'static str, &'static [&'static str], bool)>> {
    if choice == Player::None {
        return Ok(None);
    }
    for (p, program, args, page) in PLAYERS {
        if (choice == Player::Auto || choice == p) && on_path(program) {
            return Ok(Some((program, args, page)));
        }
    }
    match choice {
        Player::Auto => anyhow::bail!(
            "no player found: install mpv, VLC or ffplay, or use --player none and open the URL yourself"
        ),
        _ => {
            let program = PLAYERS
                .iter()
                .find(|(p, ..)| *p == choice)
                .map_or("?", |(_, program, ..)| *program);
            anyhow::bail!("{program} is not installed (or use --player auto|none)")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    miostream_cli::init_logging(
        &format!("warn,{}", miostream_peer::QUIET_WEBRTC),
        cli.log_format.unwrap_or_default(),
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "miostream-receiver: {}",
                miostream_peer::one_line(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Enroll { file } => enroll(&file, ComponentType::Receiver),
        Command::Run {
            conn,
            stream,
            out,
            serve,
            metrics,
            summary,
            duration,
            threshold,
            startup_ms,
            bind,
            ice_servers,
            wait,
        } => {
            if !(0.0..=1.0).contains(&threshold) {
                anyhow::bail!("--threshold must be between 0 and 1");
            }
            let out = match out {
                None => Output::Discard,
                Some(p) if p.as_os_str() == "-" => Output::Stdout,
                Some(p) => Output::File(p),
            };
            let conn = conn.resolve(ComponentType::Receiver)?;
            let config = ReceiveConfig {
                supervisor: conn.supervisor,
                identity: conn.identity,
                trust: conn.trust,
                stream,
                out,
                serve,
                metrics,
                duration: duration.map(Duration::from_secs_f64),
                threshold,
                startup: Duration::from_millis(startup_ms),
                bind,
                ice_servers,
                live_summary: summary.clone(),
                wait,
                status: std::io::stderr().is_terminal(),
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let result = runtime.block_on(async {
                let server = match config.serve {
                    Some(addr) => {
                        let server = LiveServer::bind(addr, ServeConfig::default()).await?;
                        let at = server.local_addr();
                        eprintln!("serving the stream: player page http://{at}/, raw WebM http://{at}{STREAM_PATH}");
                        Some(server)
                    }
                    None => None,
                };
                let metrics = match config.metrics {
                    Some(addr) => {
                        let listener = miostream_receiver::bind_metrics(addr).await?;
                        if let Ok(at) = listener.local_addr() {
                            eprintln!("metrics on http://{at}/metrics");
                        }
                        Some(listener)
                    }
                    None => None,
                };
                receive(config, Bound { server, metrics }, shutdown_signal()).await
            })?;
            match summary {
                Some(path) => miostream_receiver::write_summary(&path, &result)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => eprintln!("{}", serde_json::to_string_pretty(&result)?),
            }
            Ok(())
        }
        Command::Watch {
            name,
            conn,
            player,
            wait,
            startup_ms,
            bind,
            ice_servers,
        } => {
            let player = pick_player(player)?;
            let conn = conn.resolve(ComponentType::Receiver)?;
            let config = ReceiveConfig {
                supervisor: conn.supervisor,
                identity: conn.identity,
                trust: conn.trust,
                stream: name,
                out: Output::Discard,
                serve: None,
                metrics: None,
                duration: None,
                threshold: 1.0,
                startup: Duration::from_millis(startup_ms),
                bind,
                ice_servers,
                live_summary: None,
                wait,
                status: std::io::stderr().is_terminal(),
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(watch(config, player))
        }
        Command::List { conn, json } => {
            let miostream_peer::Connection {
                supervisor,
                identity,
                trust,
            } = conn.resolve(ComponentType::Receiver)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let mut client = SupervisorClient::connect(
                    &supervisor,
                    &identity,
                    &trust,
                    ComponentType::Receiver,
                )
                .await
                .with_context(|| format!("connecting to {supervisor}"))?;
                let streams = client.list_streams().await?;
                client.close().await;
                if json {
                    println!("{}", miostream_receiver::list::to_json(&streams));
                    return anyhow::Ok(());
                }
                if streams.is_empty() {
                    println!("no live streams");
                }
                for s in &streams {
                    println!("{}", miostream_receiver::list::ListedStream::from(s).line());
                }
                anyhow::Ok(())
            })
        }
    }
}

/// `enroll FILE`.
fn enroll(file: &std::path::Path, role: ComponentType) -> anyhow::Result<()> {
    let paths = PeerPaths::from_env(role)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    println!(
        "{}",
        runtime.block_on(miostream_peer::enroll(file, role, paths))?
    );
    Ok(())
}

/// `watch`: serves on a free loopback port, launches the player on it and
/// receives until the player exits (or, without one, until interrupted).
async fn watch(
    config: ReceiveConfig,
    player: Option<(&'static str, &'static [&'static str], bool)>,
) -> anyhow::Result<()> {
    let server = LiveServer::bind(
        (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        ServeConfig::default(),
    )
    .await?;
    let at = server.local_addr();
    let (page, stream) = (format!("http://{at}/"), format!("http://{at}{STREAM_PATH}"));
    let mut child = match player {
        None => {
            println!("{page}");
            println!("{stream}");
            eprintln!(
                "serving {}: player page {page}, raw WebM {stream} (Ctrl-C to stop)",
                config.stream
            );
            None
        }
        Some((program, args, opens_page)) => {
            let url = if opens_page { &page } else { &stream };
            eprintln!("watching {} with {program} ({url})", config.stream);
            let child = tokio::process::Command::new(program)
                .args(args)
                .arg(url)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {program}"))?;
            // A browser opener hands the page over and exits at once: serve
            // until interrupted then.
            (!opens_page).then_some(child)
        }
    };
    let player_closed = async {
        match child.as_mut() {
            Some(c) => {
                let status = c.wait().await;
                tracing::info!(?status, "the player closed");
            }
            None => std::future::pending::<()>().await,
        }
    };
    let ended = async {
        tokio::select! {
            _ = player_closed => {}
            _ = shutdown_signal() => {}
        }
    };
    let bound = Bound {
        server: Some(server),
        metrics: None,
    };
    let result = receive(config, bound, ended).await;
    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    result.map(|_| ())
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
