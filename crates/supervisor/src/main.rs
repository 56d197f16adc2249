//! `miostream-supervisor`: init a state directory, authorize or revoke peer
//! keys, and run the TLS WebSocket server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use miostream_protocol::ComponentType;
use miostream_supervisor::{Server, StateDir};

#[derive(Parser)]
#[command(
    name = "miostream-supervisor",
    version,
    about = "MioStream supervisor: authenticates peers, manages streams and their topologies, relays signaling"
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
    /// Create DIR: config.toml, TLS certificate and key, the supervisor's RSA
    /// key pair, an empty authorized-peers list and DIR/trust/ for peers.
    Init {
        /// State directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Address to serve on (written to config.toml; named in the certificate).
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// Extra host names or IPs for the certificate (e.g. the LAN address
        /// peers will use when listening on 0.0.0.0). Repeatable.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Size of the supervisor's RSA key.
        #[arg(long, default_value_t = 2048)]
        rsa_bits: usize,
    },
    /// Authorize a peer's public key (takes effect on a running supervisor).
    Authorize {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// The peer's public key (peer.pub from `keygen`).
        key: PathBuf,
        /// Role the key may authenticate as.
        #[arg(long, default_value = "receiver")]
        role: ComponentType,
    },
    /// Revoke a peer's key; a connected peer with that key is cut off.
    Revoke {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// The peer's public key.
        key: PathBuf,
    },
    /// Print the monitor dashboard's login URL, token included (keep it
    /// private: it opens the dashboard).
    MonitorUrl {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// The host to put in the URL (default: the configured address, or
        /// this host's loopback when it listens on all addresses).
        #[arg(long)]
        host: Option<String>,
    },
    /// Serve wss:// until SIGTERM or SIGINT.
    Run {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Override config.toml's listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` reads the format from config.toml ([log] format) unless the
    // flag gives it; a config that cannot be read is reported by `run`.
    let configured = match &cli.command {
        Command::Run { dir, .. } => StateDir::new(dir)
            .load_config()
            .map(|c| c.log.format())
            .unwrap_or(Ok(miostream_cli::LogFormat::Text)),
        _ => Ok(miostream_cli::LogFormat::Text),
    };
    let format = match (cli.log_format, configured) {
        (Some(f), _) | (None, Ok(f)) => f,
        (None, Err(e)) => {
            eprintln!("miostream-supervisor: [log] format: {e}");
            return ExitCode::FAILURE;
        }
    };
    miostream_cli::init_logging("info", format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "miostream-supervisor: {}",
                miostream_cli::one_line(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            dir,
            listen,
            sans,
            rsa_bits,
        } => {
            let state = StateDir::new(&dir);
            state.init(listen, &sans, rsa_bits)?;
            println!(
                "initialized {}; give peers {} and authorize their keys with `miostream-supervisor authorize --dir {} PEER.pub --role receiver`",
                dir.display(),
                state.trust_dir().display(),
                dir.display()
            );
            Ok(())
        }
        Command::Authorize { dir, key, role } => {
            let fp = StateDir::new(&dir).authorize(&key, role)?;
            println!("authorized {fp} as {role}");
            Ok(())
        }
        Command::Revoke { dir, key } => {
            let fp = StateDir::new(&dir).revoke(&key)?;
            println!("revoked {fp}");
            Ok(())
        }
        Command::MonitorUrl { dir, host } => {
            let state = StateDir::new(&dir);
            let config = state.load_config()?;
            let Some(addr) = config.monitor_addr().map_err(anyhow::Error::msg)? else {
                anyhow::bail!("the monitor is off in {}", state.config_path().display());
            };
            let token = state.load_or_create_monitor_token()?;
            let host = host.unwrap_or_else(|| match addr.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".into(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
            if addr.port() == 0 {
                anyhow::bail!(
                    "the monitor's port is chosen at run time (see `run`'s \"monitor on\" line); \
                     open https://HOST:PORT/login?token=<the token in {}>",
                    state.monitor_token_path().display()
                );
            }
            println!(
                "https://{host}:{}/login?token={}",
                addr.port(),
                token.secret()
            );
            Ok(())
        }
        Command::Run { dir, listen } => {
            let state = StateDir::new(&dir);
            let mut config = state.load_config()?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let server = Server::bind(&state, config).await?;
                println!("listening on wss://{}", server.local_addr());
                if let Some(addr) = server.monitor_addr() {
                    // Without the token: operators read it from DIR/monitor.token
                    // (or run `miostream-supervisor monitor-url --dir DIR`).
                    println!("monitor on https://{addr}/");
                }
                // systemd (Type=notify): serving now; stopping on SIGTERM.
                if let Err(e) = miostream_cli::notify("READY=1") {
                    tracing::warn!("cannot notify systemd: {e}");
                }
                server
                    .run(async {
                        shutdown_signal().await;
                        let _ = miostream_cli::notify("STOPPING=1");
                    })
                    .await;
                anyhow::Ok(())
            })
        }
    }
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
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
