//! The `miostream-supervisor` binary as users and systemd drive it.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_miostream-supervisor");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// Kills the child if a test fails before stopping it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn init_authorize_run_and_stop_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sup");
    let d = dir.to_str().unwrap();
    let out = run(&["init", "--dir", d, "--listen", "127.0.0.1:0"]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert_eq!(
        std::fs::metadata(dir.join("supervisor.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // A second init refuses, with a one-line reason and a non-zero exit.
    let out = run(&["init", "--dir", d]);
    assert!(!out.status.success());
    let err = stderr_line(&out);
    assert!(
        err.contains("already initialized") && !err.contains('\n'),
        "{err}"
    );

    // Authorize a key; bad files are refused clearly.
    let key = miostream_auth::PrivateKey::generate(2048).unwrap();
    let pub_path = tmp.path().join("peer.pub");
    std::fs::write(&pub_path, key.public().to_pem()).unwrap();
    let out = run(&[
        "authorize",
        "--dir",
        d,
        pub_path.to_str().unwrap(),
        "--role",
        "broadcaster",
    ]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("as broadcaster"));
    let out = run(&["authorize", "--dir", d, "/nonexistent.pub"]);
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("/nonexistent.pub"));
    let out = run(&[
        "authorize",
        "--dir",
        d,
        pub_path.to_str().unwrap(),
        "--role",
        "admin",
    ]);
    assert!(!out.status.success());

    // Run: one "listening on" line on stdout, then SIGTERM stops it with 0.
    let mut child = Command::new(BIN)
        .args(["run", "--dir", d])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = Guard(Some(child));
    let mut line = String::new();
    let mut stdout = BufReader::new(stdout);
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on wss://")
        .unwrap_or_else(|| panic!("{line:?}"));
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_ne!(port, 0);
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Then the monitor's line (its own port, chosen by the OS here).
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let monitor = line
        .trim()
        .strip_prefix("monitor on https://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("{line:?}"));
    let monitor_port: u16 = monitor.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(monitor_port != 0 && monitor_port != port);
    std::net::TcpStream::connect(("127.0.0.1", monitor_port)).unwrap();
    let token = std::fs::read_to_string(Path::new(d).join("monitor.token")).unwrap();
    assert_eq!(token.trim().len(), 64);
    // monitor-url cannot know a port chosen at run time: it says so.
    let out = run(&["monitor-url", "--dir", d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run time"));

    let mut child = guard.0.take().unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("supervisor did not stop on SIGTERM")
        })
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn run_without_init_fails_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["run", "--dir", tmp.path().join("none").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr_line(&out);
    assert!(
        err.contains("config.toml") && err.lines().count() == 1,
        "{err}"
    );
}

/// systemd's service protocol as `Type=notify` with `WatchdogSec=` drives
/// it, on a notification socket the test makes: READY=1 once listening,
/// WATCHDOG=1 while the hub answers, STOPPING=1 on SIGTERM. Logs to a pipe
/// carry no escape codes, and `--log-format json` writes JSON lines.
#[test]
fn notifies_systemd_and_logs_plainly_to_a_pipe() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sup");
    let d = dir.to_str().unwrap();
    let out = run(&["init", "--dir", d, "--listen", "127.0.0.1:0"]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let socket_path = tmp.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--dir", d, "--log-format", "json"])
        .env("NOTIFY_SOCKET", &socket_path)
        // WatchdogSec=0.2 s: a ping every 0.1 s.
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !(got.iter().any(|m| m == "READY=1") && got.iter().any(|m| m == "WATCHDOG=1")) {
        let n = socket.recv(&mut buf).expect("a notification");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got[0], "READY=1", "ready first: {got:?}");
    let child = guard.0.take().unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains('\u{1b}'), "escape codes on a pipe:\n{logs}");
    let lines: Vec<&str> = logs.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn systemd_unit_has_the_required_hardening() {
    let unit = include_str!("../../../config/miostream-supervisor.service");
    for needed in [
        "User=miostream",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/miostream",
        "ExecStart=/usr/local/bin/miostream-supervisor run --dir /var/lib/miostream",
        "KillSignal=SIGTERM",
        "Type=notify",
        "WatchdogSec=30",
    ] {
        assert!(unit.lines().any(|l| l.trim() == needed), "missing {needed}");
    }
}
