//! `--serve` on a real stream: a supervisor, a looping broadcaster and two
//! `miostream-receiver run --serve 127.0.0.1:0` processes in a list
//! (broadcaster → relay → viewer; the list orders its receivers by measured
//! capacity, so which is which is read from the supervisor's monitor). The
//! relay is killed mid-test.
//!
//! - `/stream.webm` is typed with the stream's codecs and starts with the
//!   init segment and a keyframe cluster; across the relay's death it goes
//!   on with whole clusters only (the splitter reads every byte); other
//!   paths are 404 and `/` is the player page.
//! - headless Chromium (Debian's package, driven by playwright-core from
//!   `scripts/browser/player.mjs`) plays the page — `currentTime` advances,
//!   no media error — and keeps playing after the relay is killed. Without
//!   node, Chromium or `npm ci --prefix scripts/browser` that test is
//!   skipped with a notice, except under CI (`CI` set), where it fails.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use miostream_broadcaster::{BroadcastConfig, Input};
use miostream_media::{Segment, Splitter};
use miostream_peer::Identity;
use miostream_protocol::{ComponentType, IntegrityMode, TopologyKind};
use miostream_test_support::https;
use miostream_test_support::supervisor::{keys, TestSupervisor};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Real-time WebRTC on a shared 2-core machine: generous.
const DEADLINE: Duration = Duration::from_secs(60);
const STREAM: &str = "live";
/// The browser check's own limit for each of its two phases.
const BROWSER: Duration = Duration::from_secs(120);
// Pool keys: the broadcaster, the two receivers, and one that lists.
const BROADCASTER: usize = 0;
const RECEIVERS: [usize; 2] = [1, 2];
const LISTER: usize = 23;

/// One scenario at a time: each runs a whole stream.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `miostream-receiver run --serve` process.
struct Receiver {
    child: tokio::process::Child,
    summary: PathBuf,
    /// Its player endpoint, as it printed it.
    http: SocketAddr,
}

impl Receiver {
    fn summary(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(&self.summary).ok()?).ok()
    }

    fn chunks(&self) -> u64 {
        self.summary()
            .map_or(0, |s| s["chunks_received"].as_u64().unwrap_or(0))
    }

    fn peer_id(&self) -> Option<String> {
        Some(self.summary()?["peer_id"].as_str()?.to_owned())
    }
}

struct Scenario {
    sup: TestSupervisor,
    _tmp: tempfile::TempDir,
    broadcaster: (
        oneshot::Sender<()>,
        JoinHandle<anyhow::Result<miostream_broadcaster::BroadcastReport>>,
    ),
    /// Upstream of the viewer, until killed.
    relay: Receiver,
    viewer: Receiver,
}

/// Polls `read` every 100 ms (an interval, not a synchronisation) until it
/// gives a value.
async fn until<T>(what: &str, mut read: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = read() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `miostream-receiver run --serve 127.0.0.1:0` as pool key `key`;
/// returns once it printed where it serves.
async fn spawn_receiver(sup: &TestSupervisor, dir: &Path, key: usize) -> Receiver {
    let id_dir = dir.join(format!("id{key}"));
    std::fs::create_dir_all(&id_dir).unwrap();
    std::fs::write(id_dir.join("peer.key"), keys()[key].to_pem().unwrap()).unwrap();
    let summary = dir.join(format!("receiver{key}.json"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_miostream-receiver"))
        .args([
            "run",
            "--supervisor",
            &sup.url.to_string(),
            "--stream",
            STREAM,
        ])
        .args(["--bind", "127.0.0.1", "--startup-ms", "1000"])
        .args(["--serve", "127.0.0.1:0"])
        .arg("--identity")
        .arg(&id_dir)
        .arg("--trust")
        .arg(sup.state().trust_dir())
        .arg("--summary")
        .arg(&summary)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let http = loop {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("the receiver says where it serves")
            .unwrap()
            .unwrap_or_else(|| panic!("the receiver exited: {seen}"));
        // "serving the stream: player page http://ADDR/, raw WebM http://ADDR/stream.webm"
        if let Some(rest) = line.split("player page http://").nth(1) {
            break rest
                .split('/')
                .next()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap();
        }
        seen.push_str(&line);
        seen.push('\n');
    };
    // Keep draining its log so that it never blocks on a full pipe.
    let log = dir.join(format!("receiver{key}.log"));
    tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
            let _ = std::fs::write(&log, &text);
        }
    });
    Receiver {
        child,
        summary,
        http,
    }
}

impl Scenario {
    async fn start() -> Self {
        let mut authorized = RECEIVERS.to_vec();
        authorized.push(LISTER);
        let sup = TestSupervisor::start(&[BROADCASTER], &authorized, |_| {}).await;
        let tmp = tempfile::tempdir().unwrap();
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (stop, stopped) = oneshot::channel::<()>();
        let config = BroadcastConfig {
            supervisor: sup.url.clone(),
            identity: Identity::from_key(keys()[BROADCASTER].clone()),
            trust: sup.trust.clone(),
            stream: STREAM.into(),
            topology: TopologyKind::List,
            integrity: IntegrityMode::Sign,
            input: Input::File {
                path: repo().join("assets/test.webm"),
                looped: true,
            },
            bind: Some(local),
            ice_servers: vec![],
            title: String::new(),
            encoder: Default::default(),
        };
        let broadcaster = (
            stop,
            tokio::spawn(miostream_broadcaster::run(config, async move {
                let _ = stopped.await;
            })),
        );
        let mut lister = sup.connect(LISTER, ComponentType::Receiver).await.unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let info = loop {
            let listed = lister.list_streams().await.unwrap();
            if let Some(info) = listed.into_iter().find(|s| s.name == STREAM) {
                break info;
            }
            assert!(tokio::time::Instant::now() < deadline, "never announced");
            tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
        };
        lister.close().await;
        // The broadcaster announced the codecs of its input.
        assert_eq!(info.media_type, "video/webm; codecs=\"vp8,opus\"");
        let mut a = spawn_receiver(&sup, tmp.path(), RECEIVERS[0]).await;
        let mut b = spawn_receiver(&sup, tmp.path(), RECEIVERS[1]).await;
        until("both receivers receive chunks", || {
            (a.chunks() > 0 && b.chunks() > 0).then_some(())
        })
        .await;
        // The viewer is the one fed by the other.
        let (ida, idb) = (a.peer_id().unwrap(), b.peer_id().unwrap());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let a_feeds_b = loop {
            let nodes = nodes(&sup).await;
            let parents = |id: &str| {
                nodes
                    .iter()
                    .find(|n| n["peer"] == id)
                    .map(|n| n["parents"].clone())
                    .unwrap_or_default()
            };
            let has = |v: Value, id: &str| v.as_array().is_some_and(|p| p.iter().any(|x| x == id));
            if has(parents(&idb), &ida) {
                break true;
            }
            if has(parents(&ida), &idb) {
                break false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no receiver feeds the other: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
        };
        if !a_feeds_b {
            std::mem::swap(&mut a, &mut b);
        }
        Self {
            sup,
            _tmp: tmp,
            broadcaster,
            relay: a,
            viewer: b,
        }
    }

    /// Kills the relay, the viewer's upstream (SIGKILL), and waits until the
    /// supervisor has repaired the list around it.
    async fn kill_relay(&mut self) {
        let relay = self.relay.peer_id().unwrap();
        let viewer = self.viewer.peer_id().unwrap();
        self.relay.child.start_kill().unwrap();
        tokio::time::timeout(DEADLINE, self.relay.child.wait())
            .await
            .unwrap()
            .unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let nodes = nodes(&self.sup).await;
            let peers: Vec<&Value> = nodes.iter().map(|n| &n["peer"]).collect();
            if peers == [&Value::from(viewer.as_str())] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the list was never repaired around {relay}: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
        }
    }

    async fn stop(mut self) {
        let summary = self.viewer.summary().unwrap();
        for r in [&mut self.viewer, &mut self.relay] {
            let _ = r.child.start_kill();
            let _ = r.child.wait().await;
        }
        let (stop, task) = self.broadcaster;
        let _ = stop.send(());
        let _ = tokio::time::timeout(DEADLINE, task).await;
        self.sup.stop().await;
        assert_eq!(summary["chunks_rejected"], 0, "{summary}");
    }
}

/// The stream's nodes in the supervisor's monitor state.
async fn nodes(sup: &TestSupervisor) -> Vec<Value> {
    let bearer = format!("Bearer {}", sup.monitor_token());
    let r = https::request(
        sup.monitor.unwrap(),
        &sup.state().trust_dir(),
        "GET",
        "/api/state",
        &[("Authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let state: Value = r.json();
    state["streams"][0]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A raw GET (HTTP/1.0: the body is close-delimited); returns the stream
/// positioned after the head, and the head (lower case).
async fn get(addr: SocketAddr, path: &str) -> (BufReader<TcpStream>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        if n == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line.to_lowercase());
    }
    (r, head)
}

/// Reads the body until the splitter has yielded `clusters` clusters after
/// the init segment; every byte must parse (no torn cluster).
async fn read_clusters(
    body: &mut BufReader<TcpStream>,
    splitter: &mut Splitter,
    segments: &mut Vec<Segment>,
    clusters: usize,
) {
    let want = segments.len() + clusters;
    let mut buf = vec![0u8; 64 * 1024];
    while segments.len() < want {
        let n = tokio::time::timeout(DEADLINE, body.read(&mut buf))
            .await
            .expect("the stream goes on")
            .unwrap();
        assert!(n > 0, "the stream ended after {} segments", segments.len());
        segments.extend(splitter.push(&buf[..n]).expect("the served stream parses"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_starts_at_a_keyframe_and_survives_a_relay_failover_whole() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scenario::start().await;
    let (_, head) = get(s.viewer.http, "/nothing").await;
    assert!(head.starts_with("http/1.0 404"), "{head}");
    let (mut page, head) = get(s.viewer.http, "/").await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    let mut html = String::new();
    page.read_to_string(&mut html).await.unwrap();
    assert!(html.contains("MediaSource"));

    let (mut body, head) = get(s.viewer.http, "/stream.webm").await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    // The codecs come from the stream (the bundled media is VP8 + Opus).
    assert!(
        head.contains("content-type: video/webm; codecs=\"vp8,opus\""),
        "{head}"
    );
    let mut splitter = Splitter::new();
    let mut segments = Vec::new();
    read_clusters(&mut body, &mut splitter, &mut segments, 3).await;
    assert!(matches!(segments[0], Segment::Init(_)));
    let Segment::Cluster(first) = &segments[1] else {
        panic!("a second init segment")
    };
    assert!(first.keyframe, "the first cluster starts with a keyframe");

    s.kill_relay().await;
    // After the failover: more whole clusters, still one stream (no new
    // init segment, timestamps move on).
    let before = segments.len();
    read_clusters(&mut body, &mut splitter, &mut segments, 4).await;
    let stamps: Vec<u64> = segments[before - 1..]
        .iter()
        .map(|s| match s {
            Segment::Cluster(c) => c.timestamp_ms,
            Segment::Init(_) => panic!("a new init segment after the failover"),
        })
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
    drop(body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_plays_the_page_across_a_relay_failover() {
    if !miostream_test_support::browser_available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scenario::start().await;
    let mut browser = tokio::process::Command::new("node")
        .arg(repo().join("scripts/browser/player.mjs"))
        .arg(format!("http://{}/", s.viewer.http))
        .arg("6")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = browser.stdin.take().unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut stderr = browser.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let playing = tokio::time::timeout(BROWSER, lines.next_line())
        .await
        .expect("the page plays in time")
        .unwrap();
    let Some(playing) = playing else {
        panic!("the page did not play: {}", errors.await.unwrap());
    };
    let playing: Value = serde_json::from_str(&playing).unwrap();
    assert_eq!(playing["event"], "playing", "{playing}");
    assert_eq!(playing["type"], "video/webm; codecs=\"vp8,opus\"");

    s.kill_relay().await;
    stdin.write_all(b"go\n").await.unwrap();
    let done = tokio::time::timeout(BROWSER, lines.next_line())
        .await
        .expect("the check ends in time")
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, browser.wait())
        .await
        .unwrap()
        .unwrap();
    let errors = errors.await.unwrap();
    assert!(status.success(), "the player check failed: {errors}");
    let done: Value =
        serde_json::from_str(&done.unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {errors}"));
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["mediaErrors"], 0, "{done}");
    assert!(done["played"].as_f64().unwrap() >= 6.0, "{done}");
    eprintln!("player after the failover: {done}");
    s.stop().await;
}
