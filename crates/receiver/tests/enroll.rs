//! invite → `miostream-receiver enroll` → `list` and `watch --player none`
//! with no authorize step and no connection flags: the child processes get
//! their own HOME and XDG directories. Expired and used-up invites are
//! refused with one line and a non-zero exit, and the invite's secret shows
//! up in no log (the supervisor's, captured in process, nor the peer's).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use miostream_broadcaster::{BroadcastConfig, Input};
use miostream_peer::Identity;
use miostream_protocol::{ComponentType, IntegrityMode, TopologyKind};
use miostream_supervisor::invites::InviteRequest;
use miostream_supervisor::state::unix_now;
use miostream_supervisor::StateDir;
use miostream_test_support::supervisor::{keys, TestSupervisor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_miostream-receiver");
const DEADLINE: Duration = Duration::from_secs(60);

/// Everything this process logs (the in-process supervisor), at debug level.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        log
    })
    .clone()
}

/// A peer machine's home: HOME and the XDG directories in a temp dir.
struct Home {
    root: PathBuf,
}

impl Home {
    fn new(tmp: &Path, name: &str) -> Self {
        let root = tmp.join(name);
        std::fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(BIN);
        c.args(args)
            .env("HOME", &self.root)
            .env("XDG_DATA_HOME", self.root.join("data"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env_remove("MIOSTREAM_SUPERVISOR")
            .env_remove("MIOSTREAM_IDENTITY")
            .env_remove("MIOSTREAM_TRUST")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs to completion; returns (success, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(DEADLINE, self.command(args).output())
            .await
            .expect("the command finishes")
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn invite(sup: &TestSupervisor, uses: u32, issued: u64, out: &Path) -> String {
    let req = InviteRequest {
        role: ComponentType::Receiver,
        uses,
        valid_secs: 3600,
        label: Some("viewer".into()),
        urls: vec![sup.url.to_string()],
    };
    let (_, file) = sup.state().create_invite(&req, issued).unwrap();
    StateDir::write_invite(out, &file).unwrap();
    file.secret.0
}

/// The last stderr line, checked to be the binary's one-line error.
fn error_line(stderr: &str) -> &str {
    let last = stderr.trim().lines().last().unwrap_or("");
    assert!(last.starts_with("miostream-receiver: "), "{stderr}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_then_list_and_watch_without_connection_flags() {
    let log = captured_log();
    let sup = TestSupervisor::start(&[0], &[], |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path(), "viewer");
    let mut peer_output = String::new();

    // Not enrolled and no flags: one line saying what to do.
    let (ok, _, err) = home.run(&["list"]).await;
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.contains("miostream-receiver enroll") && line.contains("--supervisor"),
        "{line}"
    );

    let file = tmp.path().join("invite.toml");
    let secret = invite(&sup, 2, unix_now(), &file);
    let (ok, out, err) = home.run(&["enroll", file.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("enrolled ") && out.contains("\"viewer\""),
        "{out}"
    );
    peer_output += &out;
    peer_output += &err;
    let key = home.root.join("data/miostream/receiver/peer.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(home.root.join("config/miostream/receiver.toml").exists());

    let (ok, out, err) = home.run(&["list"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no live streams");
    peer_output += &err;

    // A broadcaster (in process) streams; the enrolled viewer lists and watches it.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = BroadcastConfig {
        supervisor: sup.url.clone(),
        identity: Identity::from_key(keys()[0].clone()),
        trust: sup.trust.clone(),
        stream: "hall".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Sign,
        input: Input::File {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"),
            looped: true,
        },
        bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ice_servers: vec![],
        title: String::new(),
        encoder: Default::default(),
    };
    let broadcast = tokio::spawn(miostream_broadcaster::run(config, async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (ok, out, err) = home.run(&["list"]).await;
        assert!(ok, "{err}");
        peer_output += &err;
        if out.starts_with("hall\t") {
            break;
        }
        // Announcing is the broadcaster's first step; list until it shows.
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed: {out}"
        );
    }

    let watch_log = tmp.path().join("watch.log");
    let mut watch = home
        .command(&["watch", "hall", "--player", "none", "--bind", "127.0.0.1"])
        .args(["--startup-ms", "500"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&watch_log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let page = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("watch prints its URLs")
        .unwrap()
        .expect("watch exited early");
    peer_output += &page;
    let addr: SocketAddr = page
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("not a page URL: {page}"))
        .parse()
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stream.webm HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // The head, the init segment and a first cluster: well over 10 kB.
    while got.len() < 10_000 {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("the stream flows")
            .unwrap();
        assert!(n > 0, "the stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&got[..40])
    );
    drop(s);
    let pid = watch.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, watch.wait())
        .await
        .unwrap()
        .unwrap();
    peer_output += &std::fs::read_to_string(&watch_log).unwrap();
    assert!(status.success(), "watch failed ({status}):\n{peer_output}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(DEADLINE, broadcast).await;

    // Flags still override the profile: a wrong --trust fails to connect.
    let (ok, _, err) = home
        .run(&[
            "list",
            "--trust",
            tmp.path().join("nowhere").to_str().unwrap(),
        ])
        .await;
    assert!(!ok);
    assert!(error_line(&err).contains("nowhere"), "{err}");

    sup.stop().await;
    std::io::stdout().flush().unwrap();
    assert!(
        !peer_output.contains(&secret),
        "the secret is in the peer's output"
    );
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(log.contains("peer enrolled"), "the capture works:\n{log}");
    assert!(
        !log.contains(&secret),
        "the secret is in the supervisor's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_up_and_expired_invites_are_refused_in_one_line() {
    let log = captured_log();
    let sup = TestSupervisor::start(&[], &[], |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();

    let once = tmp.path().join("once.toml");
    let secret = invite(&sup, 1, unix_now(), &once);
    let first = Home::new(tmp.path(), "first");
    let (ok, _, err) = first.run(&["enroll", once.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let second = Home::new(tmp.path(), "second");
    let (ok, out, err) = second.run(&["enroll", once.to_str().unwrap()]).await;
    assert!(!ok, "{out}");
    assert_eq!(
        error_line(&err),
        "miostream-receiver: enrollment refused: this invite is used up"
    );
    assert!(!err.contains(&secret));
    // Refused: nothing was stored for the second viewer but its new key.
    assert!(!second.root.join("config/miostream/receiver.toml").exists());

    let late = tmp.path().join("late.toml");
    let late_secret = invite(&sup, 5, unix_now() - 7200, &late);
    let (ok, _, err) = second.run(&["enroll", late.to_str().unwrap()]).await;
    assert!(!ok);
    let line = error_line(&err);
    assert!(
        line.starts_with("miostream-receiver: enrollment refused: this invite expired at "),
        "{line}"
    );
    assert!(!err.contains(&late_secret));
    sup.stop().await;
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(!log.contains(&secret) && !log.contains(&late_secret));
}
