//! The whole system on real media over real WebRTC: a supervisor, the
//! broadcaster on the bundled WebM, receivers writing what they play. Each
//! receiver's output must equal the broadcaster's stream from its join
//! point: the init segment, then whole clusters from a keyframe on.

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
fn short_input(dir: &Path, clusters: usize) -> (PathBuf, Vec<u8>, Vec<Vec<u8>>) {
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
    (path, init.clone(), clusters)
}

/// Waits until the supervisor lists `stream` (asking as pool key 23).
async fn wait_listed(sup: &TestSupervisor, stream: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut client = sup
        .connect(23, miostream_protocol::ComponentType::Receiver)
        .await
        .unwrap();
    while !client
        .list_streams()
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == stream)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream} never announced"
        );
        tokio::task::yield_now().await;
    }
    client.close().await;
}

/// Checks that `output` is the init segment followed by clusters k.. for some k.
fn assert_stream_from_join_point(
    output: &[u8],
    init: &[u8],
    clusters: &[Vec<u8>],
    who: &str,
) -> usize {
    assert!(
        output.starts_with(init),
        "{who}: output does not start with the init segment"
    );
    let rest = &output[init.len()..];
    let k = (0..clusters.len())
        .find(|&k| {
            let expected: Vec<u8> = clusters[k..].concat();
            rest == expected.as_slice()
        })
        .unwrap_or_else(|| {
            panic!(
                "{who}: output is not the stream from any cluster on ({} bytes)",
                rest.len()
            )
        });
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_play_exactly_the_broadcast_stream_in_each_topology() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let (input, init, clusters) = short_input(tmp.path(), 6);
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
        };
        let broadcaster = tokio::spawn(miostream_broadcaster::run(
            broadcast,
            std::future::pending(),
        ));
        wait_listed(&sup, "e2e").await;
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
                &init,
                &clusters,
                &format!("{topology} {}", out.display()),
            );
            assert!(k < clusters.len() - 1, "joined too late (cluster {k})");
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
    let (input, init, clusters) = short_input(tmp.path(), 8);
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
    };
    let broadcaster = tokio::spawn(miostream_broadcaster::run(
        broadcast,
        std::future::pending(),
    ));
    wait_listed(&sup, "lan").await;
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
    assert_stream_from_join_point(&output, &init, &clusters, "LAN receiver");
    sup.stop().await;
}
