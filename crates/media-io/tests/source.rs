//! Sources on the bundled WebM: real-time pacing (in tokio's paused time,
//! so exact and instant), `--loop` with continuing timestamps, unpaced
//! readers, and clear errors for a missing file, camera or ffmpeg.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::{Path, PathBuf};

use miostream_media::Splitter;
use miostream_media_io::{MediaIoError, MediaSource, Segment, Source, SourceConfig, LOOP_GAP_MS};
use tokio::time::Instant;

fn bundled_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm")
}

fn reference() -> Vec<Segment> {
    let mut s = Splitter::new();
    let mut out = s.push(&std::fs::read(bundled_path()).unwrap()).unwrap();
    out.extend(s.finish().unwrap());
    out
}

fn file(looped: bool) -> Source {
    Source::File {
        path: bundled_path(),
        looped,
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_is_paced_by_its_cluster_timestamps() {
    let reference = reference();
    let start = Instant::now();
    let mut src = MediaSource::open(file(false), SourceConfig::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(seg) = src.next().await.unwrap() {
        got.push((start.elapsed().as_millis() as u64, seg));
    }
    assert_eq!(got.len(), reference.len());
    let first_ts = match &reference[1] {
        Segment::Cluster(c) => c.timestamp_ms,
        Segment::Init(_) => panic!(),
    };
    for ((at, seg), expected) in got.iter().zip(&reference) {
        assert_eq!(seg, expected);
        if let Segment::Cluster(c) = seg {
            assert_eq!(
                *at,
                c.timestamp_ms - first_ts,
                "cluster at {}",
                c.timestamp_ms
            );
        }
    }
    // The whole 20 s file took 20 s of (paused) time.
    assert!(start.elapsed().as_secs() >= 18);
}

#[tokio::test(start_paused = true)]
async fn loop_continues_timestamps_without_a_second_init() {
    let reference = reference();
    let clusters = reference.len() - 1;
    let mut src = MediaSource::open(file(true), SourceConfig::default())
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..(2 * clusters + 3) {
        got.push(src.next().await.unwrap().unwrap());
    }
    assert!(matches!(got[0], Segment::Init(_)));
    assert!(got[1..].iter().all(|s| matches!(s, Segment::Cluster(_))));
    let ts: Vec<u64> = got[1..]
        .iter()
        .map(|s| match s {
            Segment::Cluster(c) => c.timestamp_ms,
            Segment::Init(_) => 0,
        })
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    let Segment::Cluster(last) = &reference[clusters] else {
        panic!()
    };
    let Segment::Cluster(first) = &reference[1] else {
        panic!()
    };
    // Pass 2 starts one frame after pass 1's last block.
    assert_eq!(ts[clusters], last.last_block_ms + LOOP_GAP_MS);
    let shift = ts[clusters] - first.timestamp_ms;
    // Pass 3 continues likewise, with the cluster bodies unchanged but for the Timestamp.
    assert_eq!(ts[2 * clusters], ts[clusters] + shift);
    let Segment::Init(init) = &got[0] else {
        panic!()
    };
    let mut again = Splitter::new();
    let mut bytes = init.clone();
    if let Segment::Cluster(c) = &got[clusters + 1] {
        bytes.extend_from_slice(&c.bytes);
    }
    let parsed = again.push(&bytes).unwrap();
    let parsed_more = again.finish().unwrap();
    let all: Vec<_> = parsed.into_iter().chain(parsed_more).collect();
    assert!(matches!(&all[1], Segment::Cluster(c) if c.timestamp_ms == ts[clusters]));
}

#[tokio::test(start_paused = true)]
async fn a_reader_is_not_paced() {
    let data = std::fs::read(bundled_path()).unwrap();
    let start = Instant::now();
    let mut src = MediaSource::open(
        Source::Reader(Box::new(std::io::Cursor::new(data))),
        SourceConfig {
            read_size: 1000,
            ..SourceConfig::default()
        },
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    while let Some(seg) = src.next().await.unwrap() {
        got.push(seg);
    }
    assert_eq!(got, reference());
    assert_eq!(start.elapsed().as_millis(), 0);
}

#[tokio::test]
async fn bad_inputs_are_clear_errors() {
    let missing = MediaSource::open(
        Source::File {
            path: "/nonexistent/x.webm".into(),
            looped: false,
        },
        SourceConfig::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, MediaIoError::Open { .. }), "{missing}");
    assert!(missing.to_string().contains("/nonexistent/x.webm"));

    let not_webm = MediaSource::open(
        Source::Reader(Box::new(&b"hello, this is not a video"[..])),
        SourceConfig::default(),
    )
    .await
    .unwrap();
    let mut not_webm = not_webm;
    let e = not_webm.next().await.unwrap_err();
    assert!(matches!(e, MediaIoError::Media { .. }), "{e}");

    let cam = MediaSource::open(
        Source::Webcam {
            device: "/dev/video-none-here".into(),
            audio: None,
        },
        SourceConfig::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(cam.to_string(), "camera /dev/video-none-here not found");

    // A device that exists but no ffmpeg to capture it.
    let dir = tempfile::tempdir().unwrap();
    let fake_device = dir.path().join("video0");
    std::fs::write(&fake_device, b"").unwrap();
    let no_ffmpeg = MediaSource::open(
        Source::Webcam {
            device: fake_device.clone(),
            audio: None,
        },
        SourceConfig {
            ffmpeg: dir.path().join("no-ffmpeg"),
            ..SourceConfig::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(no_ffmpeg, MediaIoError::FfmpegMissing { .. }));
    assert!(no_ffmpeg.to_string().contains("is ffmpeg installed?"));
}

#[tokio::test]
async fn ffmpeg_failing_on_a_device_reports_its_error() {
    if std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("NOTICE: ffmpeg not installed, webcam failure check skipped");
        return;
    }
    // Not a V4L2 device: ffmpeg exits with an error, which the source reports.
    let dir = tempfile::tempdir().unwrap();
    let fake_device = dir.path().join("video0");
    std::fs::write(&fake_device, b"not a camera").unwrap();
    let mut src = MediaSource::open(
        Source::Webcam {
            device: fake_device,
            audio: None,
        },
        SourceConfig::default(),
    )
    .await
    .unwrap();
    let e = src.next().await.unwrap_err();
    assert!(matches!(e, MediaIoError::FfmpegFailed { .. }), "{e}");
    assert!(e.to_string().starts_with("ffmpeg failed"), "{e}");
}
