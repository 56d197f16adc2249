//! The whole system on real media over real WebRTC: a supervisor, the
//! broadcaster on the bundled WebM, receivers writing what they play. Each
//! receiver's output must be the broadcaster's stream from its join
//! point: the init segment, then whole clusters from a keyframe on, frame
//! for frame — recorded as a seekable file (ffprobe reads its duration,
//! ffmpeg seeks into its middle).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use miostream_broadcaster::{BroadcastConfig, Input};
use miostream_media::{Segment, Splitter};
use miostream_peer::Identity;
use miostream_protocol::{IntegrityMode, TopologyKind};
use miostream_receiver::{Output, ReceiveConfig, Summary};
use miostream_test_support::supervisor::{keys, TestSupervisor};
use miostream_test_support::LanHost;

/// The bundled file cut to its first `clusters` clusters (a short stream).
fn short_input(dir: &Path, clusters: usize) -> (PathBuf, Vec<Vec<u8>>) {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"))
        .unwrap();
    let mut s = Splitter::new();
    let segments = s.push(&data).unwrap();
    let Segment::Init(init) = &segments[0] else {
        panic!()
    };
    let clusters: Vec<Vec<u8>> = segments[1..=clusters]
        .iter()
        .map(|c| match c {
            Segment::Cluster(c) => c.bytes.clone(),
            Segment::Init(_) => panic!(),
        })
        .collect();
    let mut file = init.clone();
    for c in &clusters {
        file.extend_from_slice(c);
    }
    let path = dir.join("short.webm");
    std::fs::write(&path, &file).unwrap();
    (path, clusters)
}

/// An EBML variable-length integer: (value, length).
fn vint(b: &[u8]) -> (u64, usize) {
    let len = b[0].leading_zeros() as usize + 1;
    let v = b[1..len]
        .iter()
        .fold(u64::from(b[0]) & (0xFF >> len), |a, x| {
            (a << 8) | u64::from(*x)
        });
    (v, len)
}

/// A Cluster's Timestamp and its other children's bytes (its frames).
fn frames(cluster: &[u8]) -> (u64, Vec<u8>) {
    let (size, sl) = vint(&cluster[4..]);
    let mut body = &cluster[4 + sl..4 + sl + size as usize];
    let (mut ts, mut rest) = (0, Vec::new());
    while !body.is_empty() {
        let il = body[0].leading_zeros() as usize + 1;
        let (size, sl) = vint(&body[il..]);
        let end = il + sl + size as usize;
        if body[..il] == [0xE7] {
            ts = body[il + sl..end]
                .iter()
                .fold(0, |a, x| (a << 8) | u64::from(*x));
        } else {
            rest.extend_from_slice(&body[..end]);
        }
        body = &body[end..];
    }
    (ts, rest)
}

/// Checks that the recording `output` holds the broadcast's clusters k..
/// for some k, frame for frame, its time line starting at 0; returns k.
fn assert_stream_from_join_point(output: &[u8], clusters: &[Vec<u8>], who: &str) -> usize {
    let mut s = Splitter::new();
    let mut segments = s.push(output).unwrap();
    segments.extend(s.finish().unwrap());
    assert!(
        matches!(segments.first(), Some(Segment::Init(_))),
        "{who}: output does not start with an init segment"
    );
    let got: Vec<(u64, Vec<u8>)> = segments[1..]
        .iter()
        .map(|s| match s {
            Segment::Cluster(c) => frames(&c.bytes),
            Segment::Init(_) => panic!("{who}: a second init segment"),
        })
        .collect();
    let sent: Vec<(u64, Vec<u8>)> = clusters.iter().map(|c| frames(c)).collect();
    (0..sent.len())
        .find(|&k| {
            sent.len() - k == got.len()
                && got
                    .iter()
                    .zip(&sent[k..])
                    .all(|(g, s)| g.1 == s.1 && g.0 == s.0 - sent[k].0)
        })
        .unwrap_or_else(|| {
            panic!(
                "{who}: output is not the stream from any cluster on ({} clusters)",
                got.len()
            )
        })
}

/// ffprobe reports the recording's duration (within 0.5 s of the media in
/// it), and ffmpeg seeks to its middle and decodes a frame there.
fn assert_seekable(path: &Path, clusters: &[Vec<u8>], k: usize) {
    if !miostream_test_support::tool_available("ffprobe") {
        return;
    }
    let media_s = {
        let data = std::fs::read(path).unwrap();
        let mut s = Splitter::new();
        let mut segs = s.push(&data).unwrap();
        segs.extend(s.finish().unwrap());
        match segs.last() {
            Some(Segment::Cluster(c)) => c.last_block_ms as f64 / 1000.0,
            _ => panic!("no cluster in {}", path.display()),
        }
    };
    let probed = miostream_test_support::ffprobe_duration(path);
    assert!(
        (probed - media_s).abs() < 0.5,
        "ffprobe says {probed} s, the recording holds {media_s} s (clusters {k}..{})",
        clusters.len()
    );
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &format!("{:.3}", media_s / 2.0), "-i"])
        .arg(path)
        .args(["-frames:v", "1", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg -ss into the middle of {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_play_exactly_the_broadcast_stream_in_each_topology() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (input, clusters) = short_input(tmp.path(), 6);
    let receivers = 10;
    let ids: Vec<usize> = (1..=receivers).collect();
    for topology in [TopologyKind::List, TopologyKind::Tree, TopologyKind::Mesh] {
        let mut authorized = ids.clone();
        authorized.push(23);
        let sup = TestSupervisor::start(&[0], &authorized, |_| {}).await;
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let broadcast = BroadcastConfig {
            supervisor: sup.url.clone(),
            identity: Identity::from_key(keys()[0].clone()),
            trust: sup.trust.clone(),
            stream: "e2e".into(),
            topology,
            integrity: IntegrityMode::Sign,
            input: Input::File {
                path: input.clone(),
                looped: false,
            },
            bind: Some(local),
            ice_servers: vec![],
            title: String::new(),
            encoder: Default::default(),
        };
        let broadcaster = tokio::spawn(miostream_broadcaster::run(
            broadcast,
            std::future::pending(),
        ));
        sup.wait_listed(23, "e2e", Duration::from_secs(10)).await;
        let mut handles = Vec::new();
        for &i in &ids {
            let out = tmp.path().join(format!("{topology}-{i}.webm"));
            let config = ReceiveConfig {
                supervisor: sup.url.clone(),
                identity: Identity::from_key(keys()[i].clone()),
                trust: sup.trust.clone(),
                stream: "e2e".into(),
                out: Output::File(out.clone()),
                serve: None,
                metrics: None,
                duration: Some(Duration::from_secs(30)),
                threshold: 1.0,
                startup: Duration::from_millis(1000),
                bind: Some(local),
                ice_servers: vec![],
                live_summary: None,
                wait: false,
                status: false,
            };
            handles.push((
                out,
                tokio::spawn(miostream_receiver::run(config, std::future::pending())),
            ));
        }
        let report = broadcaster.await.unwrap().unwrap();
        assert_eq!(report.clusters, clusters.len() as u64);
        for (out, h) in handles {
            let summary: Summary = h.await.unwrap().unwrap();
            assert_eq!(summary.chunks_rejected, 0);
            assert_eq!(summary.chunks_verified, summary.chunks_received);
            let output = std::fs::read(&out).unwrap();
            let k = assert_stream_from_join_point(
                &output,
                &clusters,
                &format!("{topology} {}", out.display()),
            );
            assert!(k < clusters.len() - 1, "joined too late (cluster {k})");
            assert_seekable(&out, &clusters, k);
        }
        sup.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_on_another_lan_host_plays_the_stream_over_webrtc() {
    let host = match LanHost::create() {
        Ok(h) => h,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: cannot create a network namespace here ({e})");
            return;
        }
        Err(e) => panic!("CI must be able to create network namespaces: {e}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (input, clusters) = short_input(tmp.path(), 8);
    let gateway = IpAddr::V4(host.gateway);
    let sup = TestSupervisor::start_on(gateway, &[0], &[1, 23], |_| {}).await;
    // The receiver's identity and trust bundle, on disk for the binary.
    let id_dir = tmp.path().join("rx");
    std::fs::create_dir_all(&id_dir).unwrap();
    std::fs::write(id_dir.join("peer.key"), keys()[1].to_pem().unwrap()).unwrap();
    let out = tmp.path().join("lan.webm");
    let summary = tmp.path().join("lan.json");
    let mut cmd = host.command(env!("CARGO_BIN_EXE_miostream-receiver"));
    cmd.args([
        "run",
        "--supervisor",
        &sup.url.to_string(),
        "--stream",
        "lan",
        "--duration",
        "30",
    ])
    .arg("--identity")
    .arg(&id_dir)
    .arg("--trust")
    .arg(sup.state().trust_dir())
    .arg("--out")
    .arg(&out)
    .arg("--summary")
    .arg(&summary)
    .env("RUST_LOG", "warn")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let broadcast = BroadcastConfig {
        supervisor: sup.url.clone(),
        identity: Identity::from_key(keys()[0].clone()),
        trust: sup.trust.clone(),
        stream: "lan".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Sign,
        input: Input::File {
            path: input,
            looped: false,
        },
        bind: None, // the address that routes to the supervisor: the veth
        ice_servers: vec![],
        title: String::new(),
        encoder: Default::default(),
    };
    let broadcaster = tokio::spawn(miostream_broadcaster::run(
        broadcast,
        std::future::pending(),
    ));
    sup.wait_listed(23, "lan", Duration::from_secs(10)).await;
    let child = cmd.spawn().unwrap();
    broadcaster.await.unwrap().unwrap();
    let done = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        done.status.success(),
        "receiver failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert!(s["chunks_received"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["chunks_rejected"].as_u64(), Some(0));
    let output = std::fs::read(&out).unwrap();
    let k = assert_stream_from_join_point(&output, &clusters, "LAN receiver");
    assert_seekable(&out, &clusters, k);
    sup.stop().await;
}
