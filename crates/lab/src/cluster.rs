//! A MioStream deployment on this machine, as real processes: a supervisor
//! in its own state directory, a broadcaster on a WebM file (looped), and
//! receiver slots, each held by one `miostream-receiver` process at a time.
//! A failure kills a slot's process abruptly (SIGKILL) and starts the next
//! one as a new viewer, as in the paper's §4.2.
//!
//! Every child is killed when the [`Cluster`] is dropped, so an error or a
//! Ctrl-C never leaves processes behind; [`Cluster::stop`] ends them
//! politely first (SIGTERM), so receivers write their final summaries.
//!
//! With a network profile ([`Settings::network`]) the supervisor, the
//! broadcaster and every receiver slot run on their own shaped host
//! ([`crate::hosts`]); signals go to the processes `ip netns pids` finds
//! on a host, not to the `ip netns exec` we started, and the hosts are
//! removed with the cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, warn};

use crate::attack::AttackPlan;
use crate::hosts::{Host, Net};
use crate::monitor::Monitor;
use crate::network::Profile;
use crate::qos::Summary;

/// Where the MioStream binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// `MIOSTREAM_BIN_DIR`, else the directory of the running executable
    /// (`target/release` when run through cargo). Checks that all three are
    /// there.
    pub fn locate() -> anyhow::Result<Self> {
        let dir = match std::env::var_os("MIOSTREAM_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => std::env::current_exe()
                .context("cannot find the running executable")?
                .parent()
                .map(Path::to_path_buf)
                .context("the executable has no directory")?,
        };
        let bins = Self { dir };
        for name in [
            "miostream-supervisor",
            "miostream-broadcaster",
            "miostream-receiver",
        ] {
            if !bins.path(name).is_file() {
                bail!(
                    "{name} not found in {} (build all binaries first: cargo build --release --bins, \
                     or set MIOSTREAM_BIN_DIR)",
                    bins.dir.display()
                );
            }
        }
        Ok(bins)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn command(&self, name: &str, log: &Option<String>) -> Command {
        self.command_on(None, name, log)
    }

    /// `name` on `host` (`ip netns exec`), or here.
    fn command_on(&self, host: Option<&Host>, name: &str, log: &Option<String>) -> Command {
        let mut c = match host {
            Some(h) => h.command(&self.path(name)),
            None => Command::new(self.path(name)),
        };
        c.stdin(Stdio::null()).kill_on_drop(true);
        match log {
            Some(filter) => c.env("RUST_LOG", filter),
            None => c.env_remove("RUST_LOG"),
        };
        c
    }
}

/// `RUST_LOG` for the lab's children: `LAB_CHILD_LOG` if set (the lab's own
/// `RUST_LOG` is for the lab).
pub fn child_log() -> Option<String> {
    std::env::var("LAB_CHILD_LOG").ok()
}

/// Runs a short CLI step and fails with its stderr if it fails.
async fn step(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = timeout(Duration::from_secs(60), cmd.output())
        .await
        .with_context(|| format!("{what}: timed out"))?
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How to deploy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Receiver slots.
    pub receivers: usize,
    /// list, tree or mesh.
    pub topology: String,
    /// sign or hmac.
    pub integrity: String,
    /// The WebM the broadcaster loops.
    pub input: PathBuf,
    /// Fraction of chunks receivers verify.
    pub threshold: f64,
    /// Receivers' startup buffer (ms).
    pub startup_ms: u64,
    /// Receivers write what they play to `rN.webm`.
    pub record: bool,
    /// `RUST_LOG` for the children (`None`: each binary's own default,
    /// warnings and errors without the WebRTC stack's chatter).
    pub rust_log: Option<String>,
    /// Each process on its own shaped host (`None`: all on loopback).
    pub network: Option<Profile>,
    /// The first slots run `miostream-attacker` instead (see
    /// [`crate::attack`]); they join before the others.
    pub attackers: Option<AttackPlan>,
}

/// One receiver slot.
#[derive(Debug)]
struct Slot {
    identity: PathBuf,
    child: Option<Child>,
    incarnations: u32,
    /// Incarnations the supervisor cut out (see [`cut_out_reason`]).
    cut_outs: u32,
}

/// A running deployment.
pub struct Cluster {
    bins: Bins,
    dir: PathBuf,
    settings: Settings,
    /// The supervisor's URL.
    pub url: String,
    /// The supervisor's monitor API, when it serves one.
    pub monitor: Option<Monitor>,
    supervisor: Child,
    broadcaster: Child,
    slots: Vec<Slot>,
    /// The hosts, with `--network` (dropped after the children).
    net: Option<Net>,
}

/// The stream name the lab broadcasts.
pub const STREAM: &str = "lab";

/// The lab's malicious receiver binary.
const ATTACKER: &str = "miostream-attacker";

/// Creates identities that do not exist yet: `keys/b` and `keys/r0..rN`.
/// They are kept across runs (a sweep generates them once).
pub async fn ensure_identities(bins: &Bins, keys: &Path, receivers: usize) -> anyhow::Result<()> {
    let mut todo = vec![("miostream-broadcaster", keys.join("b"))];
    todo.extend((0..receivers).map(|i| ("miostream-receiver", keys.join(format!("r{i}")))));
    for (bin, dir) in todo {
        if dir.join("peer.key").exists() {
            continue;
        }
        let mut c = bins.command(bin, &None);
        c.arg("keygen").arg("--out").arg(&dir);
        step(c, &format!("{bin} keygen")).await?;
    }
    Ok(())
}

impl Cluster {
    /// Starts the supervisor (a fresh state directory under `dir`), authorizes
    /// the identities in `keys`, starts the broadcaster and waits until its
    /// stream is listed. Receivers are started with [`Cluster::spawn`].
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        keys: &Path,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        ensure_identities(bins, keys, settings.receivers).await?;
        if settings.attackers.is_some() && !bins.path(ATTACKER).is_file() {
            bail!(
                "{ATTACKER} not found in {} (it is built with the lab: cargo build --release -p miostream-lab)",
                bins.dir.display()
            );
        }
        let net = match &settings.network {
            Some(profile) => {
                let (profile, n) = (profile.clone(), settings.receivers);
                Some(
                    tokio::task::spawn_blocking(move || Net::create(&profile, n))
                        .await
                        .context("creating the hosts")??,
                )
            }
            None => None,
        };
        let listen = match &net {
            Some(n) => format!("{}:0", n.supervisor.address),
            None => "127.0.0.1:0".into(),
        };
        let sup = dir.join("supervisor");
        let mut c = bins.command("miostream-supervisor", &None);
        c.args(["init", "--listen", &listen, "--dir"]).arg(&sup);
        step(c, "supervisor init").await?;
        enable_lab_controls(&sup.join("config.toml"))?;
        let mut authorize = vec![(keys.join("b"), "broadcaster")];
        authorize.extend((0..settings.receivers).map(|i| (keys.join(format!("r{i}")), "receiver")));
        for (id, role) in &authorize {
            let mut c = bins.command("miostream-supervisor", &None);
            c.args(["authorize", "--role", role, "--dir"])
                .arg(&sup)
                .arg(id.join("peer.pub"));
            step(c, "supervisor authorize").await?;
        }

        let mut c = bins.command_on(
            net.as_ref().map(|n| &n.supervisor),
            "miostream-supervisor",
            &settings.rust_log,
        );
        c.args(["run", "--dir"])
            .arg(&sup)
            .stdout(Stdio::piped())
            .stderr(log_file(&dir.join("supervisor.log"))?);
        let mut supervisor = c.spawn().context("cannot start the supervisor")?;
        let stdout = supervisor.stdout.take().context("supervisor stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("the supervisor did not start within 20 s")??
            .with_context(|| {
                format!(
                    "the supervisor exited: {}",
                    tail(&dir.join("supervisor.log"))
                )
            })?;
        let url = first
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected supervisor output {first:?}"))?
            .to_owned();
        // A second line names the monitor, if the supervisor serves one.
        let monitor_url = match timeout(Duration::from_secs(3), lines.next_line()).await {
            Ok(Ok(Some(line))) => line.strip_prefix("monitor on ").map(str::to_owned),
            _ => None,
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let monitor = match monitor_url {
            Some(u) => match Monitor::new(&u, &sup) {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!("monitor unusable, failures chosen by join order: {e:#}");
                    None
                }
            },
            None => None,
        };

        let mut c = bins.command_on(
            net.as_ref().map(|n| &n.broadcaster),
            "miostream-broadcaster",
            &settings.rust_log,
        );
        c.arg("run")
            .args(["--supervisor", &url, "--stream", STREAM])
            .args(["--topology", &settings.topology])
            .args(["--integrity", &settings.integrity])
            .arg("--identity")
            .arg(keys.join("b"))
            .arg("--trust")
            .arg(sup.join("trust"))
            .arg("--input")
            .arg(&settings.input)
            .arg("--loop")
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("broadcaster.log"))?);
        let broadcaster = c.spawn().context("cannot start the broadcaster")?;
        let slots = (0..settings.receivers)
            .map(|i| Slot {
                identity: keys.join(format!("r{i}")),
                child: None,
                incarnations: 0,
                cut_outs: 0,
            })
            .collect();
        let mut cluster = Self {
            bins: bins.clone(),
            dir: dir.to_owned(),
            settings,
            url,
            monitor,
            supervisor,
            broadcaster,
            slots,
            net,
        };
        cluster.wait_listed(keys).await?;
        Ok(cluster)
    }

    /// Polls the stream list until the broadcaster's stream appears.
    async fn wait_listed(&mut self, keys: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.broadcaster.try_wait() {
                bail!(
                    "the broadcaster exited ({status}): {}",
                    tail(&self.dir.join("broadcaster.log"))
                );
            }
            let mut c = self.bins.command("miostream-receiver", &None);
            c.args(["list", "--supervisor", &self.url])
                .arg("--identity")
                .arg(keys.join("r0"))
                .arg("--trust")
                .arg(self.trust());
            if let Ok(out) = step(c, "receiver list").await {
                if out.lines().any(|l| l.split('\t').next() == Some(STREAM)) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the broadcaster's stream was not listed within 30 s");
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    fn trust(&self) -> PathBuf {
        self.dir.join("supervisor").join("trust")
    }

    /// Receiver slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no receiver slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The summary file of a slot's `n`-th process (from 1).
    pub fn summary_path(&self, slot: usize, n: u32) -> PathBuf {
        self.dir.join(format!("r{slot}.{n}.json"))
    }

    /// What a slot's current process plays (when recording).
    pub fn output_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("r{slot}.webm"))
    }

    /// Processes a slot has had.
    pub fn incarnations(&self, slot: usize) -> u32 {
        self.slots.get(slot).map_or(0, |s| s.incarnations)
    }

    /// Incarnations of a slot that the supervisor cut out (as seen by
    /// [`Cluster::exited`] and [`Cluster::stop`]).
    pub fn cut_outs(&self, slot: usize) -> u32 {
        self.slots.get(slot).map_or(0, |s| s.cut_outs)
    }

    /// Whether `slot` runs a malicious receiver.
    pub fn is_attacker(&self, slot: usize) -> bool {
        self.settings
            .attackers
            .as_ref()
            .is_some_and(|a| slot < a.count)
    }

    /// Starts a new receiver process in `slot` (a new viewer; in an
    /// attacker's slot, a new attacker).
    pub fn spawn(&mut self, slot: usize) -> anyhow::Result<()> {
        let n = self.slots[slot].incarnations + 1;
        let summary = self.summary_path(slot, n);
        let log = self.dir.join(format!("r{slot}.{n}.log"));
        let attack = self
            .settings
            .attackers
            .clone()
            .filter(|_| self.is_attacker(slot));
        let bin = if attack.is_some() {
            ATTACKER
        } else {
            "miostream-receiver"
        };
        let mut c = self
            .bins
            .command_on(self.host(slot), bin, &self.settings.rust_log);
        if attack.is_none() {
            c.arg("run")
                .args(["--threshold", &self.settings.threshold.to_string()]);
        }
        c.args(["--supervisor", &self.url, "--stream", STREAM])
            .arg("--identity")
            .arg(&self.slots[slot].identity)
            .arg("--trust")
            .arg(self.trust())
            .arg("--summary")
            .arg(&summary)
            .args(["--startup-ms", &self.settings.startup_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(log_file(&log)?);
        if let Some(a) = &attack {
            c.args(["--attack", a.attack.name()])
                .args(["--attacks-per-sec", &a.rate.to_string()]);
        } else if self.settings.record {
            c.arg("--out").arg(self.output_path(slot));
        }
        let child = c.spawn().context("cannot start a receiver")?;
        let s = &mut self.slots[slot];
        s.child = Some(child);
        s.incarnations = n;
        Ok(())
    }

    /// Kills a slot's process abruptly (SIGKILL: no goodbye to anyone);
    /// on a host, every process there (the receiver itself, not only the
    /// `ip netns exec` we started).
    pub async fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.slots[slot].child.take() {
            if let Some(h) = self.host(slot) {
                h.signal(Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Process ids of the running receivers (on hosts: the processes
    /// running there).
    pub fn receiver_pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.child.is_some())
            .flat_map(|(i, s)| match self.host(i) {
                Some(h) => h.pids(),
                None => s.child.as_ref().and_then(Child::id).into_iter().collect(),
            })
            .collect()
    }

    /// The slots in join groups: with `--network`, the slots whose class
    /// joins `first`, then `any`, then `last` (empty groups left out);
    /// otherwise one group of every slot.
    /// Attackers come first, in a group of their own.
    pub fn join_groups(&self) -> Vec<Vec<usize>> {
        let attackers: Vec<usize> = (0..self.len()).filter(|&s| self.is_attacker(s)).collect();
        let mut groups: Vec<Vec<usize>> = match &self.net {
            None => vec![(0..self.len()).collect()],
            Some(net) => {
                let mut groups: Vec<(crate::network::Join, Vec<usize>)> = Vec::new();
                for (slot, h) in net.receivers.iter().enumerate() {
                    match groups.last_mut() {
                        Some((j, g)) if *j == h.class.join => g.push(slot),
                        _ => groups.push((h.class.join, vec![slot])),
                    }
                }
                groups.into_iter().map(|(_, g)| g).collect()
            }
        };
        if attackers.is_empty() {
            return groups;
        }
        for g in &mut groups {
            g.retain(|s| !attackers.contains(s));
        }
        groups.retain(|g| !g.is_empty());
        groups.insert(0, attackers);
        groups
    }

    /// Starts every slot's first receiver in join order: each join group
    /// (see [`Cluster::join_groups`]) is started once the previous one has
    /// joined the stream (its live summaries say so), within `limit`.
    pub async fn spawn_in_join_order(
        &mut self,
        limit: Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        say: &dyn Fn(&str),
    ) -> anyhow::Result<()> {
        let groups = self.join_groups();
        for (i, group) in groups.iter().enumerate() {
            for &slot in group {
                self.spawn(slot)?;
            }
            if i + 1 == groups.len() {
                break;
            }
            let started = Instant::now();
            loop {
                sleep(Duration::from_millis(100)).await;
                if *stop.borrow() {
                    bail!("interrupted");
                }
                self.healthy()?;
                for (slot, why) in self.exited() {
                    if !self.is_attacker(slot) {
                        bail!("receiver {slot} exited while joining: {why}");
                    }
                    say(&format!(
                        "  attacker {slot} exited while joining: {why}; a new one takes its place"
                    ));
                    self.spawn(slot)?;
                }
                let joined = group
                    .iter()
                    .filter(|&&s| {
                        self.live(s)
                            .is_some_and(|q| q.joined_secs > 0.0 || q.chunks_received > 0)
                    })
                    .count();
                if joined == group.len() {
                    break;
                }
                if started.elapsed() > limit {
                    bail!(
                        "only {joined} of the {} receivers that join first had joined after {limit:?}",
                        group.len()
                    );
                }
            }
            if group.iter().all(|&s| self.is_attacker(s)) {
                say(&format!(
                    "  {} attacker(s) joined first ({:.1} s); starting the others",
                    group.len(),
                    started.elapsed().as_secs_f64()
                ));
                continue;
            }
            let mut classes: Vec<String> = group
                .iter()
                .filter_map(|&s| self.host(s).map(|h| h.class.name.to_string()))
                .collect();
            classes.dedup();
            let class = classes.join("+");
            say(&format!(
                "  {} receiver(s) of class {class} joined first ({:.1} s); starting the others",
                group.len(),
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }

    /// The hosts, with `--network`.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// A slot's host, with `--network`.
    pub fn host(&self, slot: usize) -> Option<&Host> {
        self.net.as_ref().and_then(|n| n.receivers.get(slot))
    }

    /// The deployment's directory (logs, summaries, outputs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest summary of a slot's current process, if it wrote one.
    pub fn live(&self, slot: usize) -> Option<Summary> {
        read_summary(&self.summary_path(slot, self.incarnations(slot)))
    }

    /// Every summary a slot's processes left, in order.
    pub fn history(&self, slot: usize) -> Vec<Summary> {
        (1..=self.incarnations(slot))
            .filter_map(|n| read_summary(&self.summary_path(slot, n)))
            .collect()
    }

    /// Slots whose process exited on its own (not killed by us): a receiver
    /// that fails is a finding, not noise. Returns (slot, reason). One that
    /// the supervisor cut out (a failed exit whose log ends with a
    /// `Misbehaving` refusal, see [`cut_out_reason`]) counts in
    /// [`Cluster::cut_outs`] and its reason says "cut out".
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut gone = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(child) = s.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self.dir.join(format!("r{i}.{}.log", s.incarnations));
                    let cut = if status.success() {
                        None
                    } else {
                        cut_out_reason(&std::fs::read_to_string(&log).unwrap_or_default())
                    };
                    let why = match cut {
                        Some(reason) => {
                            s.cut_outs += 1;
                            warn!(slot = i, "receiver cut out by the supervisor: {reason}");
                            format!("{status}, cut out by the supervisor: {reason}")
                        }
                        None => format!("{status}: {}", tail(&log)),
                    };
                    gone.push((i, why));
                    s.child = None;
                }
            }
        }
        gone
    }

    /// Whether the broadcaster and the supervisor still run.
    pub fn healthy(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(s)) = self.supervisor.try_wait() {
            bail!(
                "the supervisor exited ({s}): {}",
                tail(&self.dir.join("supervisor.log"))
            );
        }
        if let Ok(Some(s)) = self.broadcaster.try_wait() {
            bail!(
                "the broadcaster exited ({s}): {}",
                tail(&self.dir.join("broadcaster.log"))
            );
        }
        Ok(())
    }

    /// Ends every receiver politely (SIGTERM, so they write their final
    /// summaries), then the broadcaster and the supervisor. Whatever has not
    /// exited within `grace` is killed.
    pub async fn stop(&mut self, grace: Duration) {
        // Receivers that exited since the last look still count (a cut-out
        // right before the end).
        for (slot, why) in self.exited() {
            debug!(slot, "exited before the stop: {why}");
        }
        let mut receivers: Vec<(usize, Child)> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.child.take()?)))
            .collect();
        for (i, c) in &receivers {
            terminate(c, self.net.as_ref().and_then(|n| n.receivers.get(*i)));
        }
        let deadline = Instant::now() + grace;
        for (i, c) in &mut receivers {
            finish(
                c,
                deadline,
                self.net.as_ref().and_then(|n| n.receivers.get(*i)),
            )
            .await;
        }
        let (bc, sup) = match &self.net {
            Some(n) => (Some(&n.broadcaster), Some(&n.supervisor)),
            None => (None, None),
        };
        terminate(&self.broadcaster, bc);
        finish(&mut self.broadcaster, Instant::now() + grace, bc).await;
        terminate(&self.supervisor, sup);
        finish(&mut self.supervisor, Instant::now() + grace, sup).await;
    }
}

/// SIGTERM to a child, and to every process on its host if it has one.
fn terminate(child: &Child, host: Option<&Host>) {
    if let Some(h) = host {
        h.signal(Signal::SIGTERM);
    }
    if let Some(pid) = child.id() {
        if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
            debug!(pid, "SIGTERM: {e}");
        }
    }
}

/// Waits for a child until `deadline`, then kills it (and whatever runs
/// on its host).
async fn finish(child: &mut Child, deadline: Instant, host: Option<&Host>) {
    if timeout(
        deadline.saturating_duration_since(Instant::now()),
        child.wait(),
    )
    .await
    .is_err()
    {
        if let Some(h) = host {
            h.signal(Signal::SIGKILL);
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// A summary file, if it exists and parses (a live one is replaced
/// atomically, so a reader never sees half of one).
pub fn read_summary(path: &Path) -> Option<Summary> {
    Summary::parse(&std::fs::read_to_string(path).ok()?).ok()
}

/// Whether a receiver's log (its stderr) ends with the supervisor cutting
/// it out: the binary's final error line (`miostream-receiver: ...` or
/// `miostream-attacker: ...`, printed
/// once at a failed exit) names a `Misbehaving` close, e.g.
/// "supervisor closed the session: 3 chunks you relayed failed verification
/// (Misbehaving)". Returns that reason.
pub fn cut_out_reason(log: &str) -> Option<String> {
    let last = log.lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("miostream-receiver: ")
            .or_else(|| l.strip_prefix("miostream-attacker: "))
    })?;
    (last.contains("(Misbehaving)") || last.contains("chunks you relayed failed verification"))
        .then(|| last.to_owned())
}

/// The last lines of a log, on one line, for an error message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        format!("(nothing in {})", path.display())
    } else {
        t
    }
}

/// Turns `[monitor] lab_controls` on in the config `init` wrote: a lab
/// injects failures and attacks, which a supervisor refuses by default.
fn enable_lab_controls(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let on = text.replacen("lab_controls = false", "lab_controls = true", 1);
    if on == text {
        bail!(
            "{} has no \"lab_controls = false\" line to turn on",
            config.display()
        );
    }
    std::fs::write(config, on).with_context(|| format!("cannot write {}", config.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_final_misbehaving_refusal_is_a_cut_out() {
        let cut = "2026-12-01T20:00:00Z  WARN miostream_peer: link to 1234 silent\n\
                   miostream-receiver: supervisor closed the session: 3 chunks you relayed failed verification (Misbehaving)\n";
        assert_eq!(
            cut_out_reason(cut).as_deref(),
            Some("supervisor closed the session: 3 chunks you relayed failed verification (Misbehaving)")
        );
        for other in [
            "",
            "miostream-receiver: supervisor closed the session: key revoked (Revoked)\n",
            "miostream-receiver: never joined the stream\n",
            // A warning that mentions the code is not the exit line.
            "WARN bad chunk reported (Misbehaving)\n",
        ] {
            assert_eq!(cut_out_reason(other), None, "{other:?}");
        }
    }
}
