//! `miostream-receiver`: joins a stream, verifies and relays its chunks, and
//! plays them. This build provides `keygen` and `list`; `run` arrives with
//! the WebRTC data plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use miostream_peer::{keygen, Identity, SupervisorClient, SupervisorUrl, Trust};
use miostream_protocol::ComponentType;

#[derive(Parser)]
#[command(
    name = "miostream-receiver",
    version,
    about = "MioStream receiver: watch (and relay) a live stream"
)]
struct Cli {
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
    /// List the supervisor's live streams.
    List {
        /// Supervisor URL, wss://HOST:PORT.
        #[arg(long)]
        supervisor: SupervisorUrl,
        /// Identity directory (from keygen).
        #[arg(long)]
        identity: PathBuf,
        /// The supervisor's trust bundle (its DIR/trust).
        #[arg(long)]
        trust: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
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
        Command::List {
            supervisor,
            identity,
            trust,
        } => {
            let identity = Identity::load(&identity)?;
            let trust = Trust::load(&trust)?;
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
                if streams.is_empty() {
                    println!("no live streams");
                }
                for s in streams {
                    println!(
                        "{}\t{} topology\t{} integrity\t{} receivers\t{}",
                        s.name, s.topology, s.integrity, s.receivers, s.media_type
                    );
                }
                anyhow::Ok(())
            })
        }
    }
}
