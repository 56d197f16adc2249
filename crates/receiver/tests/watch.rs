//! `miostream-receiver watch NAME --player none --wait`, started before the
//! broadcaster: it prints the player page and stream URLs, waits for the
//! stream to be announced, serves it (init segment, then a keyframe
//! cluster), ends its players' responses when the broadcaster stops, serves
//! the restarted broadcast — seconds of which, fetched from the printed URL,
//! ffmpeg decodes cleanly — and exits 0 on SIGTERM.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use miostream_broadcaster::{BroadcastConfig, BroadcastReport, Input};
use miostream_media::{Segment, Splitter};
use miostream_peer::Identity;
use miostream_protocol::{IntegrityMode, TopologyKind};
use miostream_test_support::supervisor::{keys, TestSupervisor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(60);
const STREAM: &str = "later";

type Broadcast = (
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<BroadcastReport>>,
);

fn broadcast(sup: &TestSupervisor) -> Broadcast {
    let (stop, stopped) = oneshot::channel::<()>();
    let config = BroadcastConfig {
        supervisor: sup.url.clone(),
        identity: Identity::from_key(keys()[0].clone()),
        trust: sup.trust.clone(),
        stream: STREAM.into(),
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
    (
        stop,
        tokio::spawn(miostream_broadcaster::run(config, async move {
            let _ = stopped.await;
        })),
    )
}

/// GETs `path` over HTTP/1.0 (a close-delimited body); returns the stream
/// after the response head, once the head says 200.
async fn get(addr: SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    tokio::time::timeout(DEADLINE, r.read_line(&mut status))
        .await
        .expect("the stream starts in time")
        .unwrap();
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            return r;
        }
    }
}

/// Reads until the init segment and `clusters` clusters arrived; returns
/// them (every byte parses) and the bytes read.
async fn clusters(body: &mut BufReader<TcpStream>, clusters: usize) -> (Vec<Segment>, Vec<u8>) {
    let mut splitter = Splitter::new();
    let mut segments = Vec::new();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while segments.len() < clusters + 1 {
        let n = tokio::time::timeout(DEADLINE, body.read(&mut buf))
            .await
            .expect("the stream goes on")
            .unwrap();
        assert!(n > 0, "the stream ended after {} segments", segments.len());
        raw.extend_from_slice(&buf[..n]);
        segments.extend(splitter.push(&buf[..n]).expect("the stream parses"));
    }
    assert!(matches!(segments[0], Segment::Init(_)), "init first");
    let Segment::Cluster(first) = &segments[1] else {
        panic!("two init segments")
    };
    assert!(first.keyframe, "the first cluster starts with a keyframe");
    (segments, raw)
}

/// Decodes WebM bytes with ffmpeg (a player's view of the URL); returns
/// its error output (empty: clean) and the video frames it decoded.
fn decode(webm: &[u8]) -> (String, u64) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ffmpeg")
        .args([
            "-v", "error", "-i", "pipe:0", "-map", "0:v", "-f", "framemd5", "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = webm.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u64;
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        err.push_str(&format!(" (ffmpeg: {})", out.status));
    }
    (err, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_waits_for_the_stream_serves_it_and_follows_a_restarted_broadcast() {
    let sup = TestSupervisor::start(&[0], &[1], |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let id_dir = tmp.path().join("id");
    std::fs::create_dir_all(&id_dir).unwrap();
    std::fs::write(id_dir.join("peer.key"), keys()[1].to_pem().unwrap()).unwrap();
    let log = std::fs::File::create(tmp.path().join("watch.log")).unwrap();
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_miostream-receiver"))
        .args(["watch", STREAM, "--player", "none", "--wait"])
        .args(["--supervisor", &sup.url.to_string()])
        .args(["--bind", "127.0.0.1", "--startup-ms", "1000"])
        .arg("--identity")
        .arg(&id_dir)
        .arg("--trust")
        .arg(sup.state().trust_dir())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("watch prints its URLs")
            .unwrap()
            .expect("watch exited early");
        urls.push(line);
    }
    let (page, stream) = (urls[0].clone(), urls[1].clone());
    let addr: SocketAddr = page
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("not a page URL: {page}"))
        .parse()
        .unwrap();
    assert_eq!(stream, format!("http://{addr}/stream.webm"));
    assert!(addr.ip().is_loopback());

    // A player connects before the stream exists: it waits, as does watch.
    let first = tokio::spawn(async move {
        let mut body = get(addr, "/stream.webm").await;
        let (segments, _) = clusters(&mut body, 3).await;
        (body, segments)
    });
    let b1 = broadcast(&sup);
    let (mut body, _) = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("the waiting player gets the stream")
        .unwrap();

    // The broadcaster stops: the response ends (after what was sent) ...
    let _ = b1.0.send(());
    tokio::time::timeout(DEADLINE, b1.1)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, body.read_to_end(&mut rest))
        .await
        .expect("the player's response ends with the broadcast")
        .unwrap();
    // ... and watch waits for it to come back, then serves the new one.
    let b2 = broadcast(&sup);
    // A player on the printed stream URL: a few seconds of it decode.
    let path = stream
        .strip_prefix(&format!("http://{addr}"))
        .unwrap()
        .to_owned();
    let mut body = get(addr, &path).await;
    let (segments, raw) = clusters(&mut body, 3).await;
    drop(body);
    let media_ms: u64 = segments[1..]
        .iter()
        .map(|s| match s {
            Segment::Cluster(c) => c.span_ms(),
            Segment::Init(_) => 0,
        })
        .sum();
    assert!(media_ms >= 2000, "{media_ms} ms of media");
    if miostream_test_support::tool_available("ffmpeg") {
        let (errors, frames) = decode(&raw);
        assert!(errors.is_empty(), "the served stream decodes: {errors}");
        // 25 fps: at least one frame per 40 ms of the clusters' spans.
        assert!(frames * 40 >= media_ms, "{frames} frames for {media_ms} ms");
    }
    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch is still running"
    );

    // SIGTERM: a clean exit.
    let pid = watch.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, watch.wait())
        .await
        .unwrap()
        .unwrap();
    let log = std::fs::read_to_string(tmp.path().join("watch.log")).unwrap();
    assert!(status.success(), "watch failed ({status}):\n{log}");
    let _ = b2.0.send(());
    let _ = tokio::time::timeout(DEADLINE, b2.1).await;
    sup.stop().await;
}
