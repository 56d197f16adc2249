//! The live HTTP endpoint on loopback: `/` is the player page,
//! `/stream.webm` the stream typed with its codecs, other paths 404; ffprobe
//! reads what it serves; each client starts at the init segment and the
//! latest keyframe cluster; a client that stops reading skips ahead (still
//! valid WebM) while others get every cluster, and one whose socket stays
//! full is dropped; stream clients are capped. Synchronisation is on data and client counts, never
//! on sleeps; every server is shut down and every child killed.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use miostream_media::{Reassembled, Splitter};
use miostream_media_io::{LiveServer, Segment, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

fn items() -> Vec<Reassembled> {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"))
        .unwrap();
    let mut s = Splitter::new();
    let mut segs = s.push(&data).unwrap();
    segs.extend(s.finish().unwrap());
    segs.into_iter()
        .map(|seg| match seg {
            Segment::Init(b) => Reassembled::Init(b),
            Segment::Cluster(c) => Reassembled::Cluster {
                first_seq: 0,
                timestamp_ms: c.timestamp_ms,
                keyframe: c.keyframe,
                bytes: c.bytes,
            },
        })
        .collect()
}

fn bytes_of(item: &Reassembled) -> &[u8] {
    match item {
        Reassembled::Init(b) => b,
        Reassembled::Cluster { bytes, .. } => bytes,
        _ => &[],
    }
}

fn with_keyframe(item: &Reassembled, key: bool) -> Reassembled {
    match item {
        Reassembled::Cluster {
            first_seq,
            timestamp_ms,
            bytes,
            ..
        } => Reassembled::Cluster {
            first_seq: *first_seq,
            timestamp_ms: *timestamp_ms,
            keyframe: key,
            bytes: bytes.clone(),
        },
        other => other.clone(),
    }
}

async fn wait_clients(server: &LiveServer, n: usize) {
    let mut rx = server.clients();
    tokio::time::timeout(LIMIT, rx.wait_for(|c| *c >= n))
        .await
        .unwrap()
        .unwrap();
}

/// Connects, sends a GET, and returns the stream once the server counts it.
async fn get(server: &LiveServer, nth: usize) -> TcpStream {
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    // HTTP/1.0: a close-delimited body, read here as it is sent.
    s.write_all(b"GET /stream.webm HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_clients(server, nth).await;
    s
}

/// Reads to the end; returns the body after the response head.
async fn body(mut s: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..at]).to_lowercase();
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: video/webm"), "{head}");
    all.split_off(at)
}

fn concat<'a>(parts: impl IntoIterator<Item = &'a Reassembled>) -> Vec<u8> {
    parts
        .into_iter()
        .flat_map(|i| bytes_of(i).to_vec())
        .collect()
}

#[tokio::test]
async fn each_client_starts_at_the_init_and_the_latest_keyframe_cluster() {
    let items = items();
    let server = LiveServer::bind("127.0.0.1:0".parse().unwrap(), ServeConfig::default())
        .await
        .unwrap();
    // Cluster 1 is a keyframe, 2 and 3 are not (as in ffmpeg's pipe output).
    let published: Vec<Reassembled> = items[..8]
        .iter()
        .enumerate()
        .map(|(i, it)| with_keyframe(it, !matches!(i, 2 | 3 | 6)))
        .collect();
    for it in &published[..4] {
        server.publish(it);
    }
    let a = get(&server, 1).await;
    for it in &published[4..6] {
        server.publish(it);
    }
    let b = get(&server, 2).await;
    for it in &published[6..8] {
        server.publish(it);
    }
    // A repeated init (a new upstream re-sending it) changes nothing.
    server.publish(&published[0]);
    let (ra, rb) = (tokio::spawn(body(a)), tokio::spawn(body(b)));
    server.shutdown(LIMIT).await;
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
    // A joined after clusters 1 (key), 2, 3: gets init + 1, 2, 3, then live.
    let mut expected_a = concat(&published[..1]);
    expected_a.extend(concat(&published[1..8]));
    assert_eq!(ra, expected_a);
    // B joined after cluster 5 (key): init + 5, then 6 (not key) and 7.
    let mut expected_b = concat(&published[..1]);
    expected_b.extend(concat(&published[5..8]));
    assert_eq!(rb, expected_b);
}

#[tokio::test]
async fn a_client_that_stops_reading_skips_ahead_and_others_get_everything() {
    let items = items();
    let server = LiveServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServeConfig {
            ring: 16,
            write_timeout: LIMIT,
            ..ServeConfig::default()
        },
    )
    .await
    .unwrap();
    server.publish(&items[0]);
    let slow = get(&server, 1).await;
    let fast = get(&server, 2).await;
    // The fast reader reports how many body bytes it has.
    let (progress_tx, mut progress) = mpsc::channel::<usize>(1024);
    let fast_reader = tokio::spawn(async move {
        let mut fast = fast;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = fast.read(&mut buf).await.unwrap();
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = progress_tx.try_send(all.len());
        }
    });
    // Publish 240 clusters (~36 MB) in rounds of 8, each round once the fast
    // reader has taken the previous one; the slow one reads nothing.
    let clusters = &items[1..];
    let mut sent = 0usize;
    let mut expected_fast = concat(&items[..1]);
    for round in 0..30 {
        for k in 0..8 {
            let it = &clusters[(round * 8 + k) % clusters.len()];
            server.publish(it);
            expected_fast.extend_from_slice(bytes_of(it));
        }
        sent += 8;
        let want = expected_fast.len();
        tokio::time::timeout(LIMIT, async {
            while let Some(n) = progress.recv().await {
                if n + 256 >= want {
                    break;
                }
            }
        })
        .await
        .unwrap();
    }
    let slow_reader = tokio::spawn(body(slow));
    server.shutdown(LIMIT).await;
    let fast_all = fast_reader.await.unwrap();
    let at = fast_all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &fast_all[at..],
        &expected_fast[..],
        "the fast client lost nothing"
    );
    // The slow client skipped ahead: less than everything, and still a
    // clean WebM (init, then whole clusters).
    let slow_all = slow_reader.await.unwrap();
    assert!(slow_all.len() < expected_fast.len());
    let mut s = Splitter::new();
    let mut segs = s.push(&slow_all).unwrap();
    segs.extend(s.finish().unwrap());
    assert!(matches!(segs[0], Segment::Init(_)));
    assert!(
        segs.len() > 2 && segs.len() < sent + 1,
        "{} segments",
        segs.len()
    );
}

#[tokio::test]
async fn ffprobe_reads_the_served_stream() {
    if std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the player check: ffprobe is not installed"
        );
        eprintln!("NOTICE: ffprobe not installed, player check skipped");
        return;
    }
    let items = items();
    let server = LiveServer::bind("127.0.0.1:0".parse().unwrap(), ServeConfig::default())
        .await
        .unwrap();
    for it in &items[..4] {
        server.publish(it);
    }
    let url = format!("http://{}/stream.webm", server.local_addr());
    let probe = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
            &url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_clients(&server, 1).await;
    for it in &items[4..12] {
        server.publish(it);
    }
    server.shutdown(LIMIT).await;
    let out = tokio::time::timeout(LIMIT, probe.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("vp8,640,360"), "{stdout}");
    assert!(stdout.contains("opus"), "{stdout}");
}

/// Sends a raw request and reads the whole reply: (lower-cased head, body).
async fn request(addr: SocketAddr, raw: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    let body = all.split_off(at);
    (String::from_utf8_lossy(&all).to_lowercase(), body)
}

#[tokio::test]
async fn the_page_the_stream_and_nothing_else() {
    let items = items();
    let server = LiveServer::bind("127.0.0.1:0".parse().unwrap(), ServeConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr();
    // The player page.
    let (head, page) = request(addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("MediaSource") && page.contains("stream.webm"));
    // Other paths and methods.
    for path in [
        "/live.webm",
        "/index.html",
        "/stream.webm/x",
        "/favicon.ico",
    ] {
        let (head, _) = request(addr, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
        assert!(head.starts_with("http/1.0 404"), "{path}: {head}");
    }
    let (head, _) = request(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    assert!(head.contains("allow: get, head"), "{head}");
    let (head, _) = request(addr, "garbage\r\n\r\n").await;
    assert!(
        head.starts_with("http/1.1 400") || head.is_empty(),
        "{head}"
    );
    // The stream's type names its codecs: read from the init segment when
    // the stream info does not, else the stream info's.
    server.publish(&items[0]);
    let (head, body) = request(addr, "HEAD /stream.webm HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(
        head.contains("content-type: video/webm; codecs=\"vp8,opus\""),
        "{head}"
    );
    assert!(body.is_empty());
    server.set_media_type("video/webm; codecs=\"vp9,opus\"");
    let (head, _) = request(addr, "HEAD /stream.webm HTTP/1.0\r\n\r\n").await;
    assert!(
        head.contains("content-type: video/webm; codecs=\"vp9,opus\""),
        "{head}"
    );
    server.set_media_type("video/webm");
    assert_eq!(server.media_type(), "video/webm; codecs=\"vp8,opus\"");
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_full_house_gets_503_and_the_page_still_loads() {
    let server = LiveServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServeConfig {
            max_clients: 1,
            ..ServeConfig::default()
        },
    )
    .await
    .unwrap();
    server.publish(&items()[0]);
    let addr: SocketAddr = server.local_addr();
    let first = get(&server, 1).await;
    let (head, _) = request(addr, "GET /stream.webm HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("http/1.0 503"), "{head}");
    let (head, _) = request(addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    // The slot is free again once the first player leaves.
    drop(first);
    let mut rx = server.clients();
    tokio::time::timeout(LIMIT, rx.wait_for(|c| *c == 0))
        .await
        .unwrap()
        .unwrap();
    let again = get(&server, 1).await;
    drop(again);
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn silent_connections_and_players_that_stop_reading_are_dropped() {
    let items = items();
    let server = LiveServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServeConfig {
            request_timeout: Duration::from_millis(200),
            write_timeout: Duration::from_millis(200),
            ring: 8,
            ..ServeConfig::default()
        },
    )
    .await
    .unwrap();
    // No request head: closed after the request timeout.
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, silent.read_to_end(&mut rest))
        .await
        .expect("the server closes a silent connection")
        .ok();
    // A player that never reads: dropped once its socket is full for the
    // write timeout, however much is published.
    server.publish(&items[0]);
    let stuck = get(&server, 1).await;
    let mut clients = server.clients();
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut n = 0usize;
    loop {
        for _ in 0..8 {
            server.publish(&items[1 + n % (items.len() - 1)]);
            n += 1;
        }
        let gone = tokio::time::timeout(Duration::from_millis(50), clients.wait_for(|c| *c == 0));
        if gone.await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a player that stopped reading was never dropped ({n} clusters)"
        );
    }
    drop(stuck);
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_reset_ends_the_responses_and_new_players_wait_for_the_next_init() {
    let items = items();
    let server = LiveServer::bind("127.0.0.1:0".parse().unwrap(), ServeConfig::default())
        .await
        .unwrap();
    for it in &items[..3] {
        server.publish(it);
    }
    let old = get(&server, 1).await;
    server.reset();
    // The old response ends with what it had: init and the latest
    // keyframe cluster.
    assert_eq!(body(old).await, concat([&items[0], &items[2]]));
    let mut clients = server.clients();
    tokio::time::timeout(LIMIT, clients.wait_for(|c| *c == 0))
        .await
        .unwrap()
        .unwrap();
    // A player that comes now waits for the next init, then gets only the
    // new stream (none of the old backlog).
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    s.write_all(b"GET /stream.webm HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    server.publish(&items[0]);
    wait_clients(&server, 1).await;
    server.publish(&items[5]);
    server.shutdown(LIMIT).await;
    assert_eq!(body(s).await, concat([&items[0], &items[5]]));
}
