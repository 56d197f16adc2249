//! Live ingest as OBS does it: ffmpeg pushes H.264/AAC over RTMP (and,
//! separately, SRT as MPEG-TS) to a broadcaster whose own ffmpeg listens
//! and transcodes to VP8 + Opus live WebM; a receiver gets every chunk
//! verified, its recording decodes with ffmpeg, and the stream is listed
//! with its title, its viewer and a bitrate (`list --json`). The stream key
//! never shows in the broadcaster's messages. A few seconds of media; every
//! child process is killed at the end.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use miostream_broadcaster::{BroadcastConfig, Input};
use miostream_media_io::{Encoder, IngestUrl};
use miostream_peer::Identity;
use miostream_protocol::{IntegrityMode, TopologyKind};
use miostream_receiver::list::ListedStream;
use miostream_receiver::{Output, ReceiveConfig};
use miostream_test_support::supervisor::{keys, TestSupervisor};
use miostream_test_support::tool_available;

const DEADLINE: Duration = Duration::from_secs(60);
const KEY: &str = "s3cr3t-stream-key";

/// A port the OS just handed out and took back: ffmpeg binds it itself.
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Whether something on this host listens on `port` (TCP) or has bound it
/// (UDP), from /proc: probing with a connection would take ffmpeg's one
/// RTMP client slot.
fn bound(port: u16, udp: bool) -> bool {
    let table = if udp {
        "/proc/net/udp"
    } else {
        "/proc/net/tcp"
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    let port = format!(":{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&port) && (udp || f[3] == "0A")
    })
}

/// Runs one ingest end to end; `push_url` is where the encoder pushes,
/// `format` its container (`flv` for RTMP, `mpegts` for SRT).
async fn ingest(input: &str, push_url: &str, format: &str, udp: bool, port: u16) {
    let sup = TestSupervisor::start(&[0], &[1, 23], |_| {}).await;
    let tmp = tempfile::tempdir().unwrap();
    let url: IngestUrl = input.parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let broadcaster = tokio::spawn(miostream_broadcaster::run(
        BroadcastConfig {
            supervisor: sup.url.clone(),
            identity: Identity::from_key(keys()[0].clone()),
            trust: sup.trust.clone(),
            stream: "obs".into(),
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Sign,
            input: Input::Ingest(url),
            bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ice_servers: vec![],
            title: "Live from OBS".into(),
            encoder: Encoder {
                video_kbps: 600,
                ..Encoder::default()
            },
        },
        async move {
            let _ = stopped.await;
        },
    ));
    // The broadcaster's ffmpeg listens before the encoder may push.
    let until = tokio::time::Instant::now() + DEADLINE;
    while !bound(port, udp) {
        assert!(!broadcaster.is_finished(), "the broadcaster stopped early");
        assert!(tokio::time::Instant::now() < until, "ffmpeg never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // "OBS": H.264 + AAC, 8 s at real time, keyframe every second.
    let encoder = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            "8",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
        ])
        .args(["zerolatency", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "96k", "-f", format, push_url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let listed = sup.wait_listed(23, "obs", DEADLINE).await;
    assert_eq!(listed.title, "Live from OBS");
    assert!(listed.media_type.contains("vp8"), "{}", listed.media_type);

    let out = tmp.path().join("obs.webm");
    let receiver = tokio::spawn(miostream_receiver::run(
        ReceiveConfig {
            supervisor: sup.url.clone(),
            identity: Identity::from_key(keys()[1].clone()),
            trust: sup.trust.clone(),
            stream: "obs".into(),
            out: Output::File(out.clone()),
            serve: None,
            duration: Some(DEADLINE),
            threshold: 1.0,
            startup: Duration::from_millis(500),
            bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ice_servers: vec![],
            live_summary: None,
            wait: false,
            status: false,
            metrics: None,
        },
        std::future::pending(),
    ));

    // While it plays: `list --json` shows the title, one viewer and the
    // bitrate from its goodput report.
    let id_dir = tmp.path().join("id");
    std::fs::create_dir_all(&id_dir).unwrap();
    std::fs::write(id_dir.join("peer.key"), keys()[23].to_pem().unwrap()).unwrap();
    let listed = loop {
        let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_miostream-receiver"))
            .args(["list", "--json", "--supervisor", &sup.url.to_string()])
            .arg("--identity")
            .arg(&id_dir)
            .arg("--trust")
            .arg(sup.state().trust_dir())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            cmd.status.success(),
            "{}",
            String::from_utf8_lossy(&cmd.stderr)
        );
        let listed: Vec<ListedStream> = serde_json::from_slice(&cmd.stdout).unwrap();
        if listed.first().is_some_and(|s| s.bitrate_bps > 0) || receiver.is_finished() {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no bitrate listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].title.as_str(),
            listed[0].viewers
        ),
        ("obs", "Live from OBS", 1)
    );
    // ~600 kbit/s of VP8 plus Opus, averaged since joining.
    assert!(
        (100_000..3_000_000).contains(&listed[0].bitrate_bps),
        "{listed:?}"
    );

    // The encoder stops after 8 s: ffmpeg exits, the broadcast ends, and so
    // does the receiver.
    let pushed = tokio::time::timeout(DEADLINE, encoder.wait_with_output())
        .await
        .expect("the encoder finishes")
        .unwrap();
    assert!(
        pushed.status.success(),
        "encoder: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let report = tokio::time::timeout(DEADLINE, broadcaster)
        .await
        .expect("the broadcast ends with its encoder")
        .unwrap()
        .unwrap();
    assert!(report.clusters >= 4, "{report:?}");
    let summary = tokio::time::timeout(DEADLINE, receiver)
        .await
        .expect("the receiver ends with the stream")
        .unwrap()
        .unwrap();
    assert!(summary.chunks_received > 0);
    assert_eq!(summary.chunks_rejected, 0);
    assert_eq!(summary.chunks_verified, summary.chunks_received);
    drop(stop);

    // What it recorded decodes cleanly and lasts most of the 8 s pushed.
    let decoded = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&out)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "decode: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let secs = miostream_test_support::ffprobe_duration(&out);
    assert!(secs > 3.0 && secs < 9.0, "recorded {secs} s");
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_pushes_rtmp_and_a_receiver_plays_it() {
    if !tool_available("ffmpeg") || !tool_available("ffprobe") {
        return;
    }
    let port = free_port(false);
    let url = format!("rtmp://127.0.0.1:{port}/live/{KEY}");
    ingest(&url, &url, "flv", false, port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_pushes_srt_and_a_receiver_plays_it() {
    if !tool_available("ffmpeg") || !tool_available("ffprobe") {
        return;
    }
    let port = free_port(true);
    ingest(
        &format!("srt://127.0.0.1:{port}?mode=listener"),
        &format!("srt://127.0.0.1:{port}?mode=caller"),
        "mpegts",
        true,
        port,
    )
    .await;
}

#[test]
fn the_stream_key_never_shows_in_errors_or_descriptions() {
    let url: IngestUrl = format!("rtmp://127.0.0.1:1/live/{KEY}").parse().unwrap();
    assert!(!url.to_string().contains(KEY));
    assert!(!format!("{url:?}").contains(KEY));
    assert!(!format!("{:?}", Input::Ingest(url)).contains(KEY));
}
