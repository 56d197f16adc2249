//! `miostream-lab`: `demo`, `experiment` (one run or `--sweep`), `simulate`
//! (the same in virtual time) and `plot`
//! (see `--help`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use miostream_lab::attack::{Attack, AttackPlan};
use miostream_lab::cluster::Bins;
use miostream_lab::demo::{self, Demo};
use miostream_lab::experiment::Experiment;
use miostream_lab::network::Profile;
use miostream_lab::sweep;
use miostream_topology::FailureDistribution;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "miostream-lab",
    version,
    about = "MioStream lab: the local demo and the paper's churn experiments, with real processes over real WebRTC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A supervisor, a broadcaster on a WebM and N receivers on this machine;
    /// progress while it runs, a QoS table at the end.
    Demo {
        /// Receivers.
        #[arg(long, default_value_t = 10)]
        receivers: usize,
        /// Overlay: list, tree or mesh.
        #[arg(long, default_value = "tree", value_parser = ["list", "tree", "mesh"])]
        topology: String,
        /// Seconds the receivers play.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// The WebM to broadcast (looped).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Chunk integrity: sign (Ed25519) or hmac (the paper's).
        #[arg(long, default_value = "sign", value_parser = ["sign", "hmac"])]
        integrity: String,
        /// Keep the working directory (logs, summaries, outputs) here
        /// instead of a temporary one that is removed.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Each process on its own shaped host: lan, office, home or a
        /// TOML profile file (network namespaces: needs root and nftables).
        #[arg(long, value_name = "PROFILE")]
        network: Option<String>,
    },
    /// The paper's failure experiment (§4.2): N receivers; R times a second
    /// one chosen by the distribution over the overlay's positions is killed
    /// and a new viewer joins. Writes OUT/results.csv (+ report, figures).
    Experiment {
        /// Receivers (the paper: 83).
        #[arg(long, default_value_t = 30)]
        receivers: usize,
        /// Overlay: list, tree or mesh.
        #[arg(long, default_value = "tree", value_parser = ["list", "tree", "mesh"])]
        topology: String,
        /// Who fails: uniform, binomial (20 trials, p = 0.8) or poisson (mean N/2).
        #[arg(long, default_value = "uniform")]
        distribution: FailureDistribution,
        /// Failures per second (0 for none).
        #[arg(long, default_value_t = 1.0)]
        failures_per_sec: f64,
        /// Seconds measured (the paper: 60), after every receiver plays.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Output directory (must not hold a results.csv yet).
        #[arg(long)]
        out: PathBuf,
        /// Seeds the failure choices (recorded per run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of chunks receivers verify.
        #[arg(long, default_value_t = 1.0)]
        threshold: f64,
        /// Chunk integrity: sign or hmac.
        #[arg(long, default_value = "sign", value_parser = ["sign", "hmac"])]
        integrity: String,
        /// The WebM to broadcast (looped).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Receivers' startup buffer (ms).
        #[arg(long, default_value_t = 2000)]
        startup_ms: u64,
        /// Run every topology x distribution x rate (and the thresholds
        /// without failures) and draw the paper's figures.
        #[arg(long)]
        sweep: bool,
        /// Sweep: failure rates.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5")]
        rates: Vec<f64>,
        /// Sweep: topologies.
        #[arg(long, value_delimiter = ',', default_value = "list,tree,mesh")]
        topologies: Vec<String>,
        /// Sweep: distributions.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "uniform,binomial,poisson"
        )]
        distributions: Vec<FailureDistribution>,
        /// Sweep: verification thresholds run without failures (Figs. 13-14).
        #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75")]
        thresholds: Vec<f64>,
        /// Keep every run's logs and summaries under OUT/runs/.
        #[arg(long)]
        keep_runs: bool,
        /// Each process on its own shaped host: lan, office, home or a
        /// TOML profile file (network namespaces: needs root and nftables).
        #[arg(long, value_name = "PROFILE")]
        network: Option<String>,
        /// Sweep: networks (profiles as for --network; `loopback` for none).
        #[arg(long, value_delimiter = ',', value_name = "PROFILES")]
        networks: Vec<String>,
        /// Malicious receivers: the first K slots run the lab's attacker
        /// (they join first, so in a tree they are relays).
        #[arg(long, default_value_t = 0, value_name = "K")]
        attackers: usize,
        /// What the attackers do: forge, false-report, garbage or gap-flood.
        #[arg(long)]
        attack: Option<Attack>,
        /// Attacks per second, per attacker.
        #[arg(long, default_value_t = miostream_lab::attack::DEFAULT_RATE, value_name = "R")]
        attacks_per_sec: f64,
    },
    /// The experiment (or `--sweep`) in virtual time: the real supervisor
    /// Manager and node cores over a simulated network, seeded and
    /// deterministic. Writes OUT/results.csv (+ hosts.csv with --network,
    /// report, figures) as `experiment` does.
    Simulate {
        /// Receivers (the paper: 83).
        #[arg(long, default_value_t = 30)]
        receivers: usize,
        /// Overlay: list, tree or mesh.
        #[arg(long, default_value = "tree", value_parser = ["list", "tree", "mesh"])]
        topology: String,
        /// Who fails: uniform, binomial (20 trials, p = 0.8) or poisson (mean N/2).
        #[arg(long, default_value = "uniform")]
        distribution: FailureDistribution,
        /// Failures per second (0 for none).
        #[arg(long, default_value_t = 1.0)]
        failures_per_sec: f64,
        /// Virtual seconds measured, after every receiver plays.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Output directory (must not hold a results.csv yet).
        #[arg(long)]
        out: PathBuf,
        /// Seeds everything random (recorded per run).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Receivers' startup buffer (ms).
        #[arg(long, default_value_t = 2000)]
        startup_ms: u64,
        /// Run every topology x distribution x rate and draw the paper's figures.
        #[arg(long)]
        sweep: bool,
        /// Sweep: failure rates.
        #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4,5")]
        rates: Vec<f64>,
        /// Sweep: topologies.
        #[arg(long, value_delimiter = ',', default_value = "list,tree,mesh")]
        topologies: Vec<String>,
        /// Sweep: distributions.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "uniform,binomial,poisson"
        )]
        distributions: Vec<FailureDistribution>,
        /// Simulated hosts: lan, office, home or a TOML profile file (no
        /// root needed: nothing is shaped for real).
        #[arg(long, value_name = "PROFILE")]
        network: Option<String>,
        /// Sweep: networks (profiles as for --network; `loopback` for none).
        #[arg(long, value_delimiter = ',', value_name = "PROFILES")]
        networks: Vec<String>,
        /// Receivers report their host's uplink instead of measuring it
        /// through the supervisor (at 100,000 peers the probes alone are
        /// 19.7 GB through the supervisor's link).
        #[arg(long)]
        no_probe: bool,
        /// No progress on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Redraws the report and figures from OUT/results.csv.
    Plot {
        /// The experiment's output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A simulation's thousands of nodes would flood stderr with the
    // warnings that are useful from one real process.
    let default = match cli.command {
        Command::Simulate { .. } => "error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("miostream-lab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("miostream-lab: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}

/// The bundled test WebM: ./assets/test.webm, else the source tree's.
fn default_input() -> PathBuf {
    let here = PathBuf::from("assets/test.webm");
    if here.is_file() {
        return here;
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../assets/test.webm"
    ))
}

fn input_file(input: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let input = input.unwrap_or_else(default_input);
    if !input.is_file() {
        bail!("no such file: {}", input.display());
    }
    Ok(input)
}

/// The profile `--network` names, checked, and checked that this machine
/// can run it (root, ip, tc, nft); `loopback` is none.
fn network(arg: Option<&str>) -> anyhow::Result<Option<Profile>> {
    let Some(arg) = arg.filter(|a| *a != "loopback") else {
        return Ok(None);
    };
    let profile = Profile::load(arg)?;
    miostream_lab::hosts::check_support().map_err(anyhow::Error::msg)?;
    Ok(Some(profile))
}

/// A flag set on Ctrl-C or SIGTERM: runs stop early and clean up.
fn stop_flag() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        eprintln!("== interrupted: stopping every process");
        let _ = tx.send(true);
    });
    rx
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Demo {
            receivers,
            topology,
            duration,
            input,
            integrity,
            keep,
            network: network_arg,
        } => {
            if receivers == 0 {
                bail!("--receivers must be at least 1");
            }
            let network = network(network_arg.as_deref())?;
            let demo = Demo {
                receivers,
                topology,
                duration: Duration::from_secs(duration),
                input: input_file(input)?,
                integrity,
                network,
            };
            let bins = Bins::locate()?;
            let mut stop = stop_flag();
            let tmp;
            let work = match keep {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    dir
                }
                None => {
                    tmp = tempfile::Builder::new()
                        .prefix("miostream-demo")
                        .tempdir()?;
                    tmp.path().to_owned()
                }
            };
            let ok = demo::run(&bins, &work, &demo, &mut stop).await?;
            if !ok {
                eprintln!(
                    "some receivers did not play cleanly (run with --keep DIR to read their logs)"
                );
            }
            Ok(ok)
        }
        Command::Experiment {
            receivers,
            topology,
            distribution,
            failures_per_sec,
            duration,
            out,
            seed,
            threshold,
            integrity,
            input,
            startup_ms,
            sweep: is_sweep,
            rates,
            topologies,
            distributions,
            thresholds,
            keep_runs,
            network: network_arg,
            networks: networks_arg,
            attackers,
            attack,
            attacks_per_sec,
        } => {
            if receivers == 0 {
                bail!("--receivers must be at least 1");
            }
            let attackers = match (attackers, attack) {
                (0, None) => None,
                (0, Some(_)) => bail!("--attack needs --attackers K (K ≥ 1)"),
                (_, None) => {
                    bail!("--attackers needs --attack forge|false-report|garbage|gap-flood")
                }
                (k, Some(_)) if k >= receivers => {
                    bail!("--attackers must leave at least one honest receiver (--receivers {receivers})")
                }
                (count, Some(attack)) => {
                    if !(attacks_per_sec > 0.0 && attacks_per_sec <= 1000.0) {
                        bail!("--attacks-per-sec must be above 0 and at most 1000");
                    }
                    Some(AttackPlan {
                        count,
                        attack,
                        rate: attacks_per_sec,
                    })
                }
            };
            if !(0.0..=1000.0).contains(&failures_per_sec)
                || rates.iter().any(|r| !(0.0..=1000.0).contains(r))
            {
                bail!("failure rates must be between 0 and 1000 per second");
            }
            if !(0.0..=1.0).contains(&threshold)
                || thresholds.iter().any(|t| !(0.0..=1.0).contains(t))
            {
                bail!("thresholds must be between 0 and 1");
            }
            for t in &topologies {
                if !["list", "tree", "mesh"].contains(&t.as_str()) {
                    bail!("unknown topology {t:?} (expected list, tree or mesh)");
                }
            }
            if !networks_arg.is_empty() && !is_sweep {
                bail!("--networks is a sweep dimension: add --sweep (or use --network)");
            }
            if !networks_arg.is_empty() && network_arg.is_some() {
                bail!("give --network or --networks, not both");
            }
            let networks = if networks_arg.is_empty() {
                vec![network(network_arg.as_deref())?]
            } else {
                networks_arg
                    .iter()
                    .map(|n| network(Some(n)))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let base = Experiment {
                receivers,
                topology,
                distribution,
                rate: failures_per_sec,
                duration: Duration::from_secs(duration),
                seed,
                threshold,
                integrity,
                input: input_file(input)?,
                startup_ms,
                network: networks[0].clone(),
                attackers,
            };
            let runs = if is_sweep {
                sweep::plan(
                    &base,
                    &networks,
                    &topologies,
                    &distributions,
                    &rates,
                    &thresholds,
                )
            } else {
                vec![base]
            };
            let bins = Bins::locate()?;
            let mut stop = stop_flag();
            let figures = sweep::run(&bins, &out, &runs, keep_runs, &mut stop).await?;
            eprintln!(
                "wrote {}/results.csv, failures.csv, {}report.txt{}",
                out.display(),
                if out.join("hosts.csv").exists() {
                    "hosts.csv, "
                } else {
                    ""
                },
                if figures.is_empty() {
                    String::new()
                } else {
                    format!(" and {} figures", figures.len())
                }
            );
            Ok(true)
        }
        Command::Simulate {
            receivers,
            topology,
            distribution,
            failures_per_sec,
            duration,
            out,
            seed,
            startup_ms,
            sweep: is_sweep,
            rates,
            topologies,
            distributions,
            network: network_arg,
            networks: networks_arg,
            no_probe,
            quiet,
        } => {
            if receivers == 0 {
                bail!("--receivers must be at least 1");
            }
            if !(0.0..=100_000.0).contains(&failures_per_sec)
                || rates.iter().any(|r| !(0.0..=100_000.0).contains(r))
            {
                bail!("failure rates must be between 0 and 100000 per second");
            }
            for t in &topologies {
                if !["list", "tree", "mesh"].contains(&t.as_str()) {
                    bail!("unknown topology {t:?} (expected list, tree or mesh)");
                }
            }
            if !networks_arg.is_empty() && !is_sweep {
                bail!("--networks is a sweep dimension: add --sweep (or use --network)");
            }
            if !networks_arg.is_empty() && network_arg.is_some() {
                bail!("give --network or --networks, not both");
            }
            let profile = |arg: Option<&str>| -> anyhow::Result<Option<Profile>> {
                arg.filter(|a| *a != "loopback")
                    .map(Profile::load)
                    .transpose()
            };
            let networks = if networks_arg.is_empty() {
                vec![profile(network_arg.as_deref())?]
            } else {
                networks_arg
                    .iter()
                    .map(|n| profile(Some(n)))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            let base = Experiment {
                receivers,
                topology,
                distribution,
                rate: failures_per_sec,
                duration: Duration::from_secs(duration),
                seed,
                threshold: 1.0,
                integrity: miostream_lab::simulate::SIMULATED.into(),
                input: default_input(),
                startup_ms,
                network: networks[0].clone(),
                attackers: None,
            };
            let runs = if is_sweep {
                // Verification is not simulated: no threshold runs.
                sweep::plan(&base, &networks, &topologies, &distributions, &rates, &[])
            } else {
                vec![base]
            };
            let figures = miostream_lab::simulate::run(&out, &runs, !no_probe, quiet)?;
            eprintln!(
                "wrote {}/results.csv, {}report.txt{}",
                out.display(),
                if out.join("hosts.csv").exists() {
                    "hosts.csv, "
                } else {
                    ""
                },
                if figures.is_empty() {
                    String::new()
                } else {
                    format!(" and {} figures", figures.len())
                }
            );
            Ok(true)
        }
        Command::Plot { out } => {
            let figures = sweep::report(&out)?;
            for f in figures {
                eprintln!("wrote {}", f.display());
            }
            Ok(true)
        }
    }
}
