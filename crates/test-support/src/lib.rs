//! Helpers that let end-to-end tests read as scenarios. Test-only.
//!
//! [`supervisor::TestSupervisor`] runs a real supervisor on loopback (and
//! its monitor; [`https`] talks to it; [`metrics`] reads its `/metrics`);
//! [`fake::FakeSupervisor`] is one whose every message a peer's test
//! writes itself.
//!
//! [`LanHost`] gives a test its own "LAN machine": a network namespace joined
//! to the test's namespace by a veth pair on a private /30 from the
//! benchmarking range of RFC 2544 (198.18.0.0/16, the lower half of
//! 198.18.0.0/15: `miostream-lab --network` takes its /24s from
//! 198.19.0.0/16, so both can run at once), removed when dropped. Traffic
//! never leaves the machine.

#![allow(clippy::unwrap_used)] // test support: a failed set-up step fails the test

pub mod fake;
pub mod https;
pub mod metrics;
pub mod supervisor;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a browser test can run: node, Debian's Chromium and the
/// repository's playwright-core (`npm ci --prefix scripts/browser`). Under
/// CI (`CI` set) a missing tool fails the test; elsewhere the test is
/// skipped with a line saying why.
pub fn browser_available() -> bool {
    let why = (|| {
        let node = Command::new("node").arg("--version").output();
        if !node.is_ok_and(|o| o.status.success()) {
            return Err("node is not installed");
        }
        if !Path::new("/usr/bin/chromium").exists() {
            return Err("/usr/bin/chromium is not installed (apt-get install chromium)");
        }
        let playwright = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts/browser/node_modules/playwright-core/package.json");
        if !playwright.exists() {
            return Err("playwright-core is missing (npm ci --prefix scripts/browser)");
        }
        Ok(())
    })();
    match why {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the browser test: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser test: {why}");
            false
        }
    }
}

/// Whether `program` (ffmpeg, ffprobe) runs (`program -version`). Under CI
/// (`CI` set) a missing tool fails the test; elsewhere the test is skipped
/// with a line saying why.
pub fn tool_available(program: &str) -> bool {
    let ok = Command::new(program)
        .arg("-version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI must run this test: {program} is not installed (apt-get install ffmpeg)");
        }
        eprintln!("skipping: {program} is not installed (apt-get install ffmpeg)");
    }
    ok
}

/// What `ffprobe -show_format` gives as the duration of `path` (seconds);
/// fails the test when it gives none.
pub fn ffprobe_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe gives no duration for {}: {text:?}", path.display()))
}

/// A network namespace reachable from the test's namespace over a veth pair.
#[derive(Debug)]
pub struct LanHost {
    name: String,
    /// Our end's address (in the test's namespace): where servers bind.
    pub gateway: Ipv4Addr,
    /// The host's address inside its namespace.
    pub address: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LanHost {
    /// Creates a host, or says why it cannot (not root, no `ip`).
    pub fn create() -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A /30 per host, spread by pid so concurrent test binaries do not clash.
        let slot = (pid.wrapping_mul(64).wrapping_add(n)) % (1 << 14);
        let base = 0xC612_0000u32 | (slot << 2); // 198.18.0.0/16
        let gateway = Ipv4Addr::from(base + 1);
        let address = Ipv4Addr::from(base + 2);
        let name = format!("ms{pid}x{n}");
        let (outer, inner) = (format!("{name}o"), format!("{name}i"));
        ip(&["netns", "add", &name])?;
        let host = Self {
            name: name.clone(),
            gateway,
            address,
        };
        // From here on, Drop cleans up whatever was created.
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &name])?;
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{address}/30"),
            "dev",
            &inner,
        ])?;
        ip(&["-n", &name, "link", "set", &inner, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// A command that runs `program` inside this host.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for LanHost {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it our end.
        let _ = ip(&["link", "del", &format!("{}o", self.name)]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
