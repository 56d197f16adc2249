//! `miostream-supervisor`: init a state directory, authorize or revoke peer
//! keys, and run the TLS WebSocket server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use miostream_protocol::ComponentType;
use miostream_supervisor::control::{ControlReply, ControlRequest, Presence};
use miostream_supervisor::invites::{parse_duration, utc, InviteRequest};
use miostream_supervisor::state::{unix_now, Authorized};
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
    /// Authorize a peer's public key (a running supervisor accepts it on
    /// the next connection attempt).
    Authorize {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// The peer's public key (peer.pub from `keygen`).
        key: PathBuf,
        /// Role the key may authenticate as.
        #[arg(long, default_value = "receiver")]
        role: ComponentType,
        /// A name for the key, shown by `peers` and the dashboard.
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a peer's key; a connected peer with that key is cut off at once.
    Revoke {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// The peer's public key file, or its fingerprint (as `peers` shows it).
        key: PathBuf,
    },
    /// Write an invite: one file (mode 0600) with the supervisor's URL, its
    /// trust bundle and a one-time secret; `miostream-receiver enroll FILE`
    /// (or the broadcaster's) authorizes the peer's key with it.
    Invite {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// The role enrolled keys get.
        #[arg(long, required_unless_present = "revoke")]
        role: Option<ComponentType>,
        /// How many peers may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_expiry)]
        expires: u64,
        /// A label for enrolled keys (`peers`, the dashboard).
        #[arg(long)]
        label: Option<String>,
        /// Where to write it (default: ./miostream-invite-ID.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The URL peers reach the supervisor at (repeatable; default: where
        /// the running supervisor listens, else config.toml's address).
        #[arg(long = "url", value_name = "wss://HOST:PORT")]
        urls: Vec<String>,
        /// Revoke the invite with this ID instead (enrollments with it are
        /// refused from now on).
        #[arg(long, value_name = "ID", conflicts_with_all = ["role", "label", "out", "urls"])]
        revoke: Option<String>,
    },
    /// List authorized keys: fingerprint, role, label, when added, last
    /// seen and connections now (from the running supervisor).
    Peers {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
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
        Command::Authorize {
            dir,
            key,
            role,
            label,
        } => {
            let state = StateDir::new(&dir);
            let fp = state.authorize(&key, role, label.as_deref())?;
            println!("authorized {fp} as {role}{}", tell_running(&state)?);
            Ok(())
        }
        Command::Revoke { dir, key } => {
            let state = StateDir::new(&dir);
            let fp = state.revoke(&key)?;
            println!("revoked {fp}{}", tell_running(&state)?);
            Ok(())
        }
        Command::Invite {
            dir,
            role,
            uses,
            expires,
            label,
            out,
            urls,
            revoke,
        } => {
            let state = StateDir::new(&dir);
            if let Some(id) = revoke {
                let r = state.revoke_invite(&id)?;
                println!("revoked invite {} ({} uses were left)", r.id, r.uses);
                return Ok(());
            }
            let Some(role) = role else {
                anyhow::bail!("give --role receiver|broadcaster");
            };
            let urls = if urls.is_empty() {
                invite_urls(&state)?
            } else {
                if let Some(bad) = urls.iter().find(|u| !u.starts_with("wss://")) {
                    anyhow::bail!("--url {bad:?}: peers connect to wss://HOST:PORT");
                }
                urls
            };
            let req = InviteRequest {
                role,
                uses,
                valid_secs: expires,
                label,
                urls,
            };
            let (record, file) = state.create_invite(&req, unix_now())?;
            let out = out
                .unwrap_or_else(|| PathBuf::from(format!("miostream-invite-{}.toml", record.id)));
            StateDir::write_invite(&out, &file)?;
            println!(
                "wrote {} (invite {}: {role}, {} use{}, expires {}, {}); the peer runs `miostream-{role} enroll {}`",
                out.display(),
                record.id,
                uses,
                if uses == 1 { "" } else { "s" },
                utc(record.expires),
                file.urls.join(" "),
                out.display()
            );
            Ok(())
        }
        Command::Peers { dir } => {
            let state = StateDir::new(&dir);
            let list = state.load_authorized()?;
            let presence = match state.ask_running(ControlRequest::Peers)? {
                Some(ControlReply::Peers { peers, since }) => Some((peers, since)),
                Some(ControlReply::Error { message }) => {
                    anyhow::bail!("the running supervisor: {message}")
                }
                Some(_) | None => None,
            };
            print!("{}", peers_table(&list, presence.as_ref()));
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

fn parse_expiry(text: &str) -> Result<u64, String> {
    parse_duration(text)
}

/// Tells a running supervisor to apply an edit of the authorized list now;
/// the suffix for the command's output line.
fn tell_running(state: &StateDir) -> anyhow::Result<&'static str> {
    match state.ask_running(ControlRequest::Reload)? {
        Some(ControlReply::Reloaded { .. }) => Ok("; the running supervisor applied it"),
        Some(ControlReply::Error { message }) => {
            anyhow::bail!("the running supervisor did not apply it: {message}")
        }
        Some(_) => anyhow::bail!("the running supervisor gave an unexpected answer"),
        None => Ok(""),
    }
}

/// The URLs an invite names when `--url` is not given: where the running
/// supervisor listens, else config.toml's address. An unspecified address
/// (0.0.0.0) becomes this host's name (which the certificate carries).
fn invite_urls(state: &StateDir) -> anyhow::Result<Vec<String>> {
    let addr = match state.recorded_listening() {
        Some(addr) => addr,
        None => {
            let addr = state.load_config()?.listen;
            if addr.port() == 0 {
                anyhow::bail!(
                    "config.toml listens on port 0 and no supervisor is running on {}: start it or give --url wss://HOST:PORT",
                    state.root().display()
                );
            }
            addr
        }
    };
    let host = match addr.ip() {
        ip if ip.is_unspecified() => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("cannot name this host: give --url wss://HOST:PORT"))?,
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(vec![format!("wss://{host}:{}", addr.port())])
}

/// `peers`' table.
fn peers_table(list: &Authorized, presence: Option<&(Vec<Presence>, u64)>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<64}  {:<11}  {:<20}  {:<20}  {:<20}  CONNECTED",
        "FINGERPRINT", "ROLE", "LABEL", "ADDED", "LAST SEEN"
    );
    for (fp, key) in list.entries() {
        let fp_text = fp.to_string();
        let (seen, connected) = match presence {
            None => ("(not running)".to_owned(), "-".to_owned()),
            Some((peers, since)) => match peers.iter().find(|p| p.fingerprint == fp_text) {
                Some(p) if p.connected > 0 => ("now".to_owned(), p.connected.to_string()),
                Some(p) => (utc(p.last_seen), "0".to_owned()),
                None => (format!("not since {}", utc(*since)), "0".to_owned()),
            },
        };
        let _ = writeln!(
            out,
            "{fp_text:<64}  {:<11}  {:<20}  {:<20}  {:<20}  {connected}",
            key.role.to_string(),
            key.label.as_deref().unwrap_or("-"),
            key.added.map_or("-".to_owned(), utc),
            seen,
        );
    }
    out
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
