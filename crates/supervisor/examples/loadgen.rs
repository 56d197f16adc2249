//! Load generator: starts the real `miostream-supervisor` binary, opens many
//! concurrent authenticated connections on loopback, and reports complete
//! handshakes per second and the supervisor's memory per idle peer.
//!
//! ```text
//! cargo build --release -p miostream-supervisor --bins --examples
//! ulimit -n 65536
//! target/release/examples/loadgen --peers 10000 --concurrency 128
//! ```
//! All peers share one authorized key (each connection still runs the full
//! handshake: TLS 1.3, RSA-OAEP challenge both ways). The generator runs on
//! the same machine, so it competes with the supervisor for the CPU: the
//! supervisor's own CPU seconds per handshake are reported as well.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use miostream_auth::PrivateKey;
use miostream_peer::{Identity, SupervisorClient, SupervisorUrl, Trust};
use miostream_protocol::ComponentType;
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    /// Connections to open and keep.
    #[arg(long, default_value_t = 2000)]
    peers: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The supervisor binary (default: next to this example's directory).
    #[arg(long)]
    supervisor_bin: Option<PathBuf>,
    /// Seconds to hold the idle peers before measuring memory.
    #[arg(long, default_value_t = 3)]
    idle_secs: u64,
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.supervisor_bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("locating the target directory")?
            .join("miostream-supervisor"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p miostream-supervisor`",
            bin.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("sup");
    let status = Command::new(&bin)
        .args(["init", "--dir"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("init failed");
    }
    // Heartbeats every 5 s with a 20 s timeout: idle peers cost pings, not CPU.
    let config = std::fs::read_to_string(dir.join("config.toml"))?
        .replace("interval_ms = 1000", "interval_ms = 5000")
        .replace("timeout_ms = 5000\n", "timeout_ms = 20000\n")
        .replace("max_unauthenticated = 1024", "max_unauthenticated = 4096");
    std::fs::write(dir.join("config.toml"), config)?;
    let key = Arc::new(PrivateKey::generate(2048)?);
    std::fs::write(tmp.path().join("peer.pub"), key.public().to_pem())?;
    Command::new(&bin)
        .args(["authorize", "--dir"])
        .arg(&dir)
        .arg(tmp.path().join("peer.pub"))
        .stdout(Stdio::null())
        .status()?;
    let mut child = Command::new(&bin)
        .args(["run", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .context("no 'listening on' line")?
        .to_owned();
    let url: SupervisorUrl = addr.replace("0.0.0.0", "127.0.0.1").parse()?;
    let trust = Trust::load(&dir.join("trust"))?;
    let identity = Identity::from_key(key);
    let rss_before = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    let cpu_before = cpu_secs(pid);

    println!(
        "opening {} authenticated connections to {url} ({} at once)…",
        args.peers, args.concurrency
    );
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.peers);
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::channel::<Result<(), String>>(args.peers.max(1));
    for _ in 0..args.peers {
        let (gate, url, trust, identity, done) = (
            gate.clone(),
            url.clone(),
            trust.clone(),
            identity.clone(),
            done_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let result =
                SupervisorClient::connect(&url, &identity, &trust, ComponentType::Receiver).await;
            drop(permit);
            match result {
                Ok(mut client) => {
                    let _ = done.send(Ok(())).await;
                    // Stay connected, answering pings, until the end.
                    while client.recv().await.is_ok() {}
                }
                Err(e) => {
                    let _ = done.send(Err(e.to_string())).await;
                }
            }
        }));
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut last_report = Instant::now();
    while ok + failed < args.peers {
        match done_rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                if failed < 3 {
                    eprintln!("handshake failed: {e}");
                }
                failed += 1
            }
            None => break,
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            println!(
                "  {ok} connected, {failed} failed, {:.0}/s",
                ok as f64 / start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_before;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let rss_after = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    println!("connected:        {ok} ({failed} failed) in {elapsed:.2} s");
    println!(
        "handshakes/s:     {:.0} (end to end, generator on the same 2 cores)",
        ok as f64 / elapsed
    );
    println!(
        "supervisor CPU:   {:.3} ms per handshake → {:.0} handshakes/s per core of supervisor time",
        cpu * 1000.0 / ok.max(1) as f64,
        ok as f64 / cpu.max(1e-9)
    );
    println!(
        "supervisor RSS:   {} KiB before, {} KiB with {ok} idle peers → {:.1} KiB per idle peer",
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / ok.max(1) as f64
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let status = child.wait()?;
    println!("supervisor exited: {status}");
    for t in tasks {
        t.abort();
    }
    Ok(())
}
