//! Shaped hosts for `--network`: every host is a network namespace with one
//! interface (`eth0`) on a bridge that lives in its own "switch" namespace;
//! one veth pair joins the lab's own (root) namespace to that bridge, so
//! the lab reaches the supervisor's monitor. Nothing else is created or
//! changed in the root namespace.
//!
//! - uplink: `tbf` on the host's `eth0` egress (inside the host);
//! - downlink: `tbf` on the host's switch port egress (inside the switch);
//! - incoming loss: an nftables input-hook chain inside the host,
//!   `meta l4proto udp numgen random mod 1000 < N drop` (silent on input).
//!
//! Names carry the lab's pid (`mslab<PID>n<RUN>-<host>`), so stale ones of
//! a lab that died are recognised and removed; addresses are a /24 of
//! 198.19.0.0/16 (RFC 2544's benchmarking range; `miostream-test-support`
//! keeps to 198.18.0.0/16) not in use in the root namespace. Everything is
//! removed when the [`Net`] is dropped: processes still running in a host
//! are found with `ip netns pids` (`ip netns exec` may fork: the child we
//! hold need not be the daemon) and killed before the namespace goes.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::network::{HostClass, Profile};

/// Why `--network` cannot run here, if it cannot: not root, or a tool
/// missing. One line.
pub fn check_support() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("--network needs root (network namespaces)".into());
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("tc", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "--network needs `{tool}` (apt-get install {package})"
            ));
        }
    }
    Ok(())
}

/// Runs a command to completion; its stderr in the error.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// The token bucket for `rate` bit/s: `(burst bytes, queue latency ms)`.
///
/// tbf's bucket must hold at least one full frame (1514 B) or it drops it,
/// and with a coarse kernel timer it must also hold a timer tick's worth of
/// traffic (rate / HZ), or the link runs below its rate. We give it 10 ms of
/// traffic and never less than four full frames (6 KiB): at 2 Mbit/s that is
/// a 6 KiB bucket (a 24 ms burst at line speed), at 100 Mbit/s 125 KB. On
/// this machine a 2 Mbit/s tbf carried 1.92-1.98 Mbit/s of TCP with buckets
/// from 1.6 KB to 20 KB (high-resolution timers), so the floor is a margin,
/// not a necessity. Queue: 100 ms at the rate (a home router's buffer is
/// rarely smaller), after which packets are dropped.
pub fn tbf_bucket(rate: u64) -> (u64, u64) {
    let ten_ms = rate / 8 / 100;
    (ten_ms.max(6 * 1024), 100)
}

/// Interface counters of one host over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Bytes the host sent (its `eth0` tx).
    pub tx: u64,
    /// Bytes the host received (its `eth0` rx).
    pub rx: u64,
}

impl Bytes {
    /// `self - earlier` (counters only grow; saturating all the same).
    pub fn since(self, earlier: Bytes) -> Bytes {
        Bytes {
            tx: self.tx.saturating_sub(earlier.tx),
            rx: self.rx.saturating_sub(earlier.rx),
        }
    }
}

/// One host: a namespace on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its class (rates, loss).
    pub class: HostClass,
}

impl Host {
    /// `ip netns exec NS program`: a command that runs on this host.
    pub fn command(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// The ids of the processes running on this host (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        ns_pids(&self.ns)
    }

    /// Signals every process on this host.
    pub fn signal(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// SIGKILLs every process on this host and waits (bounded) until
    /// none is left.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host's interface counters now.
    pub fn bytes(&self) -> anyhow::Result<Bytes> {
        let json = ip(&["-n", &self.ns, "-j", "-s", "link", "show", "dev", "eth0"])?;
        parse_link_stats(&json)
    }
}

fn ns_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// tx/rx bytes from `ip -j -s link show dev IFACE`.
pub fn parse_link_stats(json: &str) -> anyhow::Result<Bytes> {
    let v: serde_json::Value = serde_json::from_str(json).context("ip -j -s link: not JSON")?;
    let stats = v
        .get(0)
        .and_then(|l| l.get("stats64"))
        .context("ip -j -s link: no stats64")?;
    let get = |dir: &str| {
        stats
            .get(dir)
            .and_then(|d| d.get("bytes"))
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("ip -j -s link: no {dir} bytes"))
    };
    Ok(Bytes {
        tx: get("tx")?,
        rx: get("rx")?,
    })
}

/// The lab's hosts for one run: the supervisor's, the broadcaster's and
/// one per receiver slot, on one bridge. Removed on drop.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    switch: String,
    root_veth: String,
    /// Every namespace created so far (the switch first).
    namespaces: Vec<String>,
    /// The profile's name.
    pub profile: String,
    /// The lab's own address on the bridge (in the root namespace).
    pub gateway: Ipv4Addr,
    /// The supervisor's host.
    pub supervisor: Host,
    /// The broadcaster's host.
    pub broadcaster: Host,
    /// One host per receiver slot.
    pub receivers: Vec<Host>,
}

/// The most receivers a network holds (one /24: the lab, the servers and
/// a few spare addresses besides).
pub const MAX_RECEIVERS: usize = 240;

const NS_PREFIX: &str = "mslab";

fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The lab pid in a namespace name of ours (`mslab<PID>n...`).
fn owner(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(NS_PREFIX)?;
    rest.split_once('n')?.0.parse().ok()
}

/// Namespaces of this run prefix that exist (for tests and checks).
pub fn leftovers(prefix: &str) -> Vec<String> {
    namespaces()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Removes the namespaces of labs that no longer run (killed with
/// SIGKILL, say): their processes first.
pub fn remove_stale() {
    for ns in namespaces() {
        let Some(pid) = owner(&ns) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for p in ns_pids(&ns) {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// A /24 of 198.19.0.0/16 that no address or route of the root
/// namespace uses, starting from one derived from our pid and run.
fn free_subnet(pid: u32, run: u32) -> anyhow::Result<u8> {
    let used = ip(&["-4", "-j", "addr", "show"]).unwrap_or_default()
        + &ip(&["-4", "-j", "route", "show"]).unwrap_or_default();
    let start = pid.wrapping_mul(7).wrapping_add(run.wrapping_mul(13)) % 256;
    for k in 0..256u32 {
        let x = ((start + k) % 256) as u8;
        if !used.contains(&format!("\"198.19.{x}.")) {
            return Ok(x);
        }
    }
    bail!("no free /24 in 198.19.0.0/16 for the lab's network")
}

impl Net {
    /// Creates the switch, the lab's port and every host of `profile` for
    /// `receivers` slots (classes assigned by [`Profile::assign`]).
    pub fn create(profile: &Profile, receivers: usize) -> anyhow::Result<Net> {
        check_support().map_err(anyhow::Error::msg)?;
        if receivers > MAX_RECEIVERS {
            bail!("--network holds at most {MAX_RECEIVERS} receivers");
        }
        remove_stale();
        static RUN: AtomicU32 = AtomicU32::new(0);
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let x = free_subnet(pid, run)?;
        let addr = |last: u8| Ipv4Addr::new(198, 19, x, last);
        let prefix = format!("{NS_PREFIX}{pid}n{run}-");
        let switch = format!("{prefix}sw");
        let host = |name: &str, last: u8, class: &HostClass| Host {
            ns: format!("{prefix}{name}"),
            address: addr(last),
            class: class.clone(),
        };
        let mut net = Net {
            switch: switch.clone(),
            root_veth: format!("msl{pid}n{run}"),
            namespaces: Vec::new(),
            profile: profile.name.to_string(),
            gateway: addr(1),
            supervisor: host("sup", 2, profile.supervisor_class()),
            broadcaster: host("bc", 3, profile.broadcaster_class()),
            receivers: profile
                .assign(receivers)
                .into_iter()
                .enumerate()
                .map(|(i, c)| host(&format!("r{i}"), 10 + i as u8, c))
                .collect(),
            prefix,
        };
        // From here on, Drop removes whatever was created.
        ip(&["netns", "add", &switch])?;
        net.namespaces.push(switch.clone());
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        // The lab's port: one veth pair, its far end on the bridge.
        ip(&[
            "link",
            "add",
            &net.root_veth,
            "type",
            "veth",
            "peer",
            "name",
            "lab",
            "netns",
            &switch,
        ])?;
        ip(&["-n", &switch, "link", "set", "lab", "master", "br0"])?;
        ip(&["-n", &switch, "link", "set", "lab", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &net.root_veth,
        ])?;
        ip(&["link", "set", &net.root_veth, "up"])?;
        let hosts: Vec<(String, Host)> = [
            ("hsup".to_string(), net.supervisor.clone()),
            ("hbc".to_string(), net.broadcaster.clone()),
        ]
        .into_iter()
        .chain(
            net.receivers
                .iter()
                .enumerate()
                .map(|(i, h)| (format!("hr{i}"), h.clone())),
        )
        .collect();
        for (port, h) in hosts {
            net.add_host(&port, &h)?;
        }
        Ok(net)
    }

    fn add_host(&mut self, port: &str, h: &Host) -> anyhow::Result<()> {
        let ns = h.ns.as_str();
        let sw = self.switch.as_str();
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", sw,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", "br0"])?;
        ip(&["-n", sw, "link", "set", port, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", h.address),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        if let Some(rate) = h.class.uplink {
            tbf(ns, "eth0", rate)?;
        }
        if let Some(rate) = h.class.downlink {
            tbf(sw, port, rate)?;
        }
        if h.class.loss > 0.0 {
            let per_mille = (h.class.loss * 1000.0).round() as u32;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    &format!(
                        "add table inet lab ; \
                         add chain inet lab input {{ type filter hook input priority 0 ; policy accept ; }} ; \
                         add rule inet lab input meta l4proto udp numgen random mod 1000 < {per_mille} drop"
                    ),
                ],
            )?;
        }
        Ok(())
    }

    /// The prefix of every namespace of this network.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every host: the supervisor's, the broadcaster's, the receivers'.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.supervisor, &self.broadcaster]
            .into_iter()
            .chain(self.receivers.iter())
    }

    /// Every host's counters now (in [`Net::hosts`] order); a host whose
    /// counters cannot be read counts as zero.
    pub fn bytes(&self) -> Vec<Bytes> {
        self.hosts()
            .map(|h| h.bytes().unwrap_or_default())
            .collect()
    }
}

fn tbf(ns: &str, dev: &str, rate: u64) -> anyhow::Result<()> {
    let (burst, latency_ms) = tbf_bucket(rate);
    run(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{rate}bit"),
            "burst",
            &burst.to_string(),
            "latency",
            &format!("{latency_ms}ms"),
        ],
    )?;
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        // Hosts first (their processes, then the namespace), the switch
        // last; the lab's veth end goes with its peer, but is removed
        // explicitly too (deleting a namespace frees it asynchronously).
        for ns in self.namespaces.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let pids = ns_pids(ns);
                if pids.is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in pids {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("miostream-lab: cannot remove namespace {ns}: {e:#}");
            }
        }
        let _ = ip(&["link", "del", &self.root_veth]);
    }
}

/// Runs `f` on a thread whose network namespace is `ns` (sockets it opens
/// live there). For measurements and tests; the lab's daemons run with
/// `ip netns exec`.
pub fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        Ok(f())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_ten_ms_and_at_least_four_frames() {
        assert_eq!(tbf_bucket(2_000_000), (6 * 1024, 100));
        assert_eq!(tbf_bucket(100_000_000), (125_000, 100));
    }

    #[test]
    fn link_stats_are_read_from_ip_json() {
        let json = r#"[{"ifname":"eth0","stats64":{"rx":{"bytes":290,"packets":3},"tx":{"bytes":90,"packets":1}}}]"#;
        assert_eq!(
            parse_link_stats(json).expect("valid"),
            Bytes { tx: 90, rx: 290 }
        );
        assert!(parse_link_stats("[]").is_err());
        let b = Bytes { tx: 100, rx: 50 }.since(Bytes { tx: 40, rx: 60 });
        assert_eq!(b, Bytes { tx: 60, rx: 0 });
    }

    #[test]
    fn namespace_names_carry_the_lab_pid() {
        assert_eq!(owner("mslab1234n0-r5"), Some(1234));
        assert_eq!(owner("mslab1234n12-sw"), Some(1234));
        assert_eq!(owner("ms1234x0"), None);
        assert_eq!(owner("mslabXn0-sw"), None);
    }
}
