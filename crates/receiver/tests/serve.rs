//! The `--serve` HTTP endpoint: players joining at any time get a stream
//! that starts cleanly (init segment, then a keyframe cluster) — ffprobe
//! reads its tracks.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use miostream_media::chunk::Chunker;
use miostream_media::{Segment, Splitter};
use miostream_protocol::StreamId;
use miostream_receiver::serve::Server;

fn ffprobe(url: &str) -> std::process::Output {
    Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "10000000",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_joining_at_any_time_get_a_clean_stream() {
    if Command::new("ffprobe")
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("ffprobe not installed: skipping");
        return;
    }
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"))
        .unwrap();
    let mut splitter = Splitter::new();
    let segments: Vec<Segment> = splitter.push(&data).unwrap();
    let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}/", server.local_addr());
    let mut chunker = Chunker::new(StreamId(1), 0);
    // A player connects before any chunk exists: it waits for a keyframe.
    let early = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || ffprobe(&url))
    };
    let mut late = None;
    for (i, segment) in segments.iter().take(12).enumerate() {
        for (header, payload) in chunker.chunks(segment, 0) {
            server.deliver(&header, Bytes::copy_from_slice(payload));
        }
        if i == 6 {
            // Another joins mid-stream: init + the current keyframe cluster.
            let url = url.clone();
            late = Some(tokio::task::spawn_blocking(move || ffprobe(&url)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the stream's pace, compressed
    }
    for probe in [early, late.unwrap()] {
        let out = probe.await.unwrap();
        let streams = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            streams.contains("vp8") && streams.contains("opus"),
            "{streams}"
        );
    }
}
