//! `miostream-broadcaster`: the source of one stream. This build provides
//! `keygen`; `run` arrives with the media pipeline and the WebRTC data plane.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use miostream_peer::keygen;

#[derive(Parser)]
#[command(
    name = "miostream-broadcaster",
    version,
    about = "MioStream broadcaster: stream a live WebM to peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an identity: DIR/peer.key (0600) and DIR/peer.pub (give it to
    /// the supervisor's operator to authorize with --role broadcaster).
    Keygen {
        /// Directory to create the key pair in.
        #[arg(long)]
        out: PathBuf,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
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
    match Cli::parse().command {
        Command::Keygen { out, bits } => match keygen(&out, bits) {
            Ok(id) => {
                println!(
                    "wrote {}/peer.key and {}/peer.pub (fingerprint {})",
                    out.display(),
                    out.display(),
                    id.key().public().fingerprint()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("miostream-broadcaster: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
