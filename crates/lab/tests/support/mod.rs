//! Helpers shared by the lab's end-to-end tests: whether the peer binaries
//! and the shaped hosts are available (skipped with a notice elsewhere,
//! failed under CI), and the lab as a bounded child process that leaves
//! nothing behind, also when a test fails.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use miostream_lab::hosts;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The lab binary cargo built for these tests.
pub(crate) fn lab() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_miostream-lab"))
}

/// Whether the peer binaries were built beside the lab; outside CI a
/// `cargo test -p miostream-lab` alone does not build them.
pub(crate) fn binaries_present() -> bool {
    let dir = lab().parent().unwrap().to_owned();
    let present = [
        "miostream-supervisor",
        "miostream-broadcaster",
        "miostream-receiver",
    ]
    .iter()
    .all(|b| dir.join(b).is_file());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build every binary (cargo test --workspace)"
        );
        eprintln!("skipped: run `cargo build --bins` (or cargo test --workspace) first");
    }
    present
}

/// Whether this machine can make shaped hosts (root, ip, tc, nft); under
/// CI it must.
pub(crate) fn namespaces_available() -> bool {
    match hosts::check_support() {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {why}");
            false
        }
        Err(why) => panic!("CI must be able to run the shaped-network tests: {why}"),
    }
}

/// The bundled test WebM.
pub(crate) fn assets() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm")
}

/// The lab as a child process in its own process group. Dropped while it
/// runs (a failed assertion, a timeout), it gets SIGTERM (it stops its
/// children and removes its hosts), then its whole group SIGKILL, and
/// namespaces left by dead labs are removed.
pub(crate) struct Lab {
    child: std::process::Child,
}

/// What a finished lab run left.
pub(crate) struct Finished {
    /// Exit status.
    pub(crate) ok: bool,
    /// Its stdout.
    pub(crate) stdout: String,
    /// Its stderr.
    pub(crate) stderr: String,
    /// Wall time.
    pub(crate) took: Duration,
    /// The lab's pid (its hosts are named after it).
    pub(crate) pid: u32,
}

impl Lab {
    /// Starts `miostream-lab ARGS` (RUST_LOG=warn for the lab itself).
    pub(crate) fn start(args: &[&std::ffi::OsStr], envs: &[(&str, &str)]) -> Self {
        let mut c = Command::new(lab());
        c.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in envs {
            c.env(k, v);
        }
        Self {
            child: c.spawn().unwrap(),
        }
    }

    /// Waits for the lab to end within `limit` (panics past it: the guard
    /// then stops everything). Checks that no process of its group is left.
    pub(crate) fn finish(mut self, limit: Duration) -> Finished {
        let started = Instant::now();
        let pid = self.child.id();
        // Drain the pipes on threads so a chatty lab never blocks on them.
        let mut out = self.child.stdout.take().unwrap();
        let mut err = self.child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < limit,
                "the lab took longer than {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let took = started.elapsed();
        let stdout = out.join().unwrap();
        let stderr = err.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "processes of the lab's group are left after it exited:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Finished {
            ok: status.success(),
            stdout,
            stderr,
            took,
            pid,
        }
    }
}

/// Whether any process of the group `pgid` is alive.
fn group_alive(pgid: u32) -> bool {
    kill(Pid::from_raw(-(pgid as i32)), None).is_ok()
}

impl Drop for Lab {
    fn drop(&mut self) {
        let pid = self.child.id();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(25);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if group_alive(pid) {
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if hosts::check_support().is_ok() {
            hosts::remove_stale();
        }
    }
}
