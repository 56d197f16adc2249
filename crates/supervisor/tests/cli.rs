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

/// Reads `run`'s "listening on" line; returns the port.
fn listening_port(stdout: &mut BufReader<std::process::ChildStdout>) -> u16 {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on wss://")
        .unwrap_or_else(|| panic!("{line:?}"));
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The operator's day: `invite` on a running supervisor that listens on
/// port 0 (the invite names the real port, the file is 0600), `peers` with
/// labels and presence, `authorize --label` accepted on the very next
/// attempt, `revoke` by fingerprint cutting the connected peer off before
/// the command returns, `invite --revoke`. The secret never reaches the
/// supervisor's log.
#[test]
fn invite_peers_authorize_and_revoke_on_a_running_supervisor() {
    use miostream_protocol::signal::ErrorCode;
    use miostream_protocol::{ComponentType, SupervisorMessage};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sup");
    let d = dir.to_str().unwrap();
    let out = run(&["init", "--dir", d, "--listen", "127.0.0.1:0"]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    // Not running and port 0: invite says what to do.
    let out = run(&["invite", "--dir", d, "--role", "receiver"]);
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("--url"), "{}", stderr_line(&out));

    let log = tmp.path().join("supervisor.log");
    let child = Command::new(BIN)
        .args(["run", "--dir", d])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let mut stdout = BufReader::new(guard.0.as_mut().unwrap().stdout.take().unwrap());
    let port = listening_port(&mut stdout);

    let invite_path = tmp.path().join("viewer.toml");
    let out = run(&[
        "invite",
        "--dir",
        d,
        "--role",
        "receiver",
        "--uses",
        "1",
        "--expires",
        "1h",
        "--label",
        "Front row",
        "--out",
        invite_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains(&format!("wss://127.0.0.1:{port}")), "{said}");
    let mode = std::fs::metadata(&invite_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let invites_mode = std::fs::metadata(dir.join("invites.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(invites_mode & 0o777, 0o600);
    let invite: miostream_protocol::signal::InviteFile =
        toml::from_str(&std::fs::read_to_string(&invite_path).unwrap()).unwrap();
    assert_eq!(invite.urls, [format!("wss://127.0.0.1:{port}")]);
    assert_eq!(
        invite.ca_crt,
        std::fs::read_to_string(dir.join("trust/ca.crt")).unwrap()
    );
    assert!(
        !said.contains(&invite.secret.0),
        "the secret is only in the file"
    );
    assert!(!std::fs::read_to_string(dir.join("invites.toml"))
        .unwrap()
        .contains(&invite.secret.0));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peer_dir = tmp.path().join("peer");
    let enrolled = runtime
        .block_on(miostream_peer::enroll(
            &invite_path,
            ComponentType::Receiver,
            miostream_peer::PeerPaths::under(&peer_dir, &peer_dir, ComponentType::Receiver),
        ))
        .unwrap();
    let conn = miostream_peer::resolve(
        ComponentType::Receiver,
        Ok(miostream_peer::PeerPaths::under(
            &peer_dir,
            &peer_dir,
            ComponentType::Receiver,
        )),
        None,
        None,
        None,
    )
    .unwrap();
    let mut client = runtime
        .block_on(miostream_peer::SupervisorClient::connect(
            &conn.supervisor,
            &conn.identity,
            &conn.trust,
            ComponentType::Receiver,
        ))
        .unwrap();

    // peers: the enrolled key, its label, connected now.
    let out = run(&["peers", "--dir", d]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = table
        .lines()
        .find(|l| l.starts_with(&enrolled.fingerprint))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("receiver") && row.contains("Front row") && row.contains("now"),
        "{row}"
    );
    assert!(row.trim_end().ends_with(" 1"), "{row}");

    // authorize --label: accepted on the very next attempt.
    let key = miostream_auth::PrivateKey::generate(2048).unwrap();
    let pub_path = tmp.path().join("cam.pub");
    std::fs::write(&pub_path, key.public().to_pem()).unwrap();
    let out = run(&[
        "authorize",
        "--dir",
        d,
        pub_path.to_str().unwrap(),
        "--role",
        "broadcaster",
        "--label",
        "Stage cam",
    ]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the running supervisor applied it"));
    let cam = runtime
        .block_on(miostream_peer::SupervisorClient::connect(
            &conn.supervisor,
            &miostream_peer::Identity::from_key(std::sync::Arc::new(key)),
            &conn.trust,
            ComponentType::Broadcaster,
        ))
        .expect("authorized keys get in at once");
    let table = String::from_utf8_lossy(&run(&["peers", "--dir", d]).stdout).into_owned();
    assert!(table.contains("Stage cam"), "{table}");

    // revoke by fingerprint: the connected receiver is cut off at once.
    let out = run(&["revoke", "--dir", d, &enrolled.fingerprint]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let cut = runtime.block_on(async {
        loop {
            match client.recv_within(Duration::from_secs(10)).await.unwrap() {
                SupervisorMessage::Error {
                    code, fatal: true, ..
                } => return code,
                _ => continue,
            }
        }
    });
    assert_eq!(cut, ErrorCode::Revoked);
    let table = String::from_utf8_lossy(&run(&["peers", "--dir", d]).stdout).into_owned();
    assert!(!table.contains(&enrolled.fingerprint), "{table}");

    // invite --revoke: the second invite is refused.
    let second = tmp.path().join("second.toml");
    let out = run(&[
        "invite",
        "--dir",
        d,
        "--role",
        "receiver",
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .split("(invite ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .unwrap()
        .to_owned();
    let out = run(&["invite", "--dir", d, "--revoke", &id]);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let err = runtime
        .block_on(miostream_peer::enroll(
            &second,
            ComponentType::Receiver,
            miostream_peer::PeerPaths::under(&peer_dir, &peer_dir, ComponentType::Receiver),
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "enrollment refused: this invite was revoked"
    );
    runtime.block_on(cam.close());

    let child = guard.0.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        !dir.join("listening").exists(),
        "the record goes with the process"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("peer enrolled"), "{logs}");
    assert!(!logs.contains(&invite.secret.0), "the secret is in the log");
}
