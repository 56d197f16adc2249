//! The splitter on real WebM from ffmpeg: the bundled file, a known-size file
//! with Cues, and ffmpeg's pipe output whose clusters do not start with
//! keyframes; piece sizes, late joins, truncation and garbage.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use miostream_media::chunk::Chunker;
use miostream_media::{MediaError, Segment, Splitter};
use miostream_protocol::{ChunkFlags, ChunkKind, StreamId};
use proptest::prelude::*;

fn bundled() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm")).unwrap()
}

fn split_all(data: &[u8], piece: usize) -> Vec<Segment> {
    let mut s = Splitter::new();
    let mut out = Vec::new();
    for p in data.chunks(piece.max(1)) {
        out.extend(s.push(p).unwrap());
    }
    out.extend(s.finish().unwrap());
    out
}

fn ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Decodes WebM bytes with ffmpeg; returns its error output (empty = clean).
fn decode_errors(webm: &[u8]) -> String {
    let mut child = Command::new("ffmpeg")
        .args(["-v", "error", "-i", "pipe:0", "-f", "null", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = webm.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn concat(init: &[u8], clusters: &[&Segment]) -> Vec<u8> {
    let mut v = init.to_vec();
    for c in clusters {
        if let Segment::Cluster(c) = c {
            v.extend_from_slice(&c.bytes);
        }
    }
    v
}

#[test]
fn the_bundled_file_splits_into_init_and_keyframe_clusters() {
    let data = bundled();
    let segments = split_all(&data, 64 * 1024);
    let Segment::Init(init) = &segments[0] else {
        panic!("init first")
    };
    assert!(init.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]));
    let clusters: Vec<_> = segments[1..].iter().collect();
    assert!(clusters.len() >= 15, "{} clusters", clusters.len());
    let mut last_ts = None;
    for c in &clusters {
        let Segment::Cluster(c) = c else {
            panic!("one init only")
        };
        assert!(
            c.keyframe,
            "the bundled file's clusters are keyframe-aligned"
        );
        assert!(last_ts.is_none_or(|t| c.timestamp_ms > t));
        last_ts = Some(c.timestamp_ms);
    }
    // Init + every cluster accounts for every byte but the dropped
    // SeekHead/Tags/Void and the Segment size (rewritten, same length).
    let total: usize = init.len()
        + clusters
            .iter()
            .map(|c| match c {
                Segment::Cluster(c) => c.bytes.len(),
                _ => 0,
            })
            .sum::<usize>();
    assert!(
        total <= data.len() && total + 1024 > data.len(),
        "{total} of {}",
        data.len()
    );
    if ffmpeg() {
        assert_eq!(decode_errors(&concat(init, &clusters)), "");
    }
}

#[test]
fn any_piece_size_gives_the_same_segments() {
    let data = bundled();
    let reference = split_all(&data, data.len());
    for piece in [1usize, 7, 4096, 100_003] {
        assert_eq!(split_all(&data, piece), reference, "pieces of {piece}");
    }
}

#[test]
fn a_late_joiner_from_any_keyframe_cluster_decodes_cleanly() {
    if !ffmpeg() {
        eprintln!("ffmpeg not installed: skipping the decode check");
        return;
    }
    let segments = split_all(&bundled(), 8192);
    let Segment::Init(init) = &segments[0] else {
        panic!()
    };
    for n in [1usize, 5, 12] {
        let from: Vec<&Segment> = segments[n..].iter().collect();
        assert_eq!(
            decode_errors(&concat(init, &from)),
            "",
            "joining at cluster {n}"
        );
    }
}

#[test]
fn chunks_reassemble_byte_exactly() {
    let segments = split_all(&bundled(), 1 << 20);
    let mut chunker = Chunker::new(StreamId(1), 0);
    let mut rebuilt = Vec::new();
    let mut expected = Vec::new();
    let mut seq = 0;
    for s in &segments {
        match s {
            Segment::Init(b) => expected.extend_from_slice(b),
            Segment::Cluster(c) => expected.extend_from_slice(&c.bytes),
        }
        let chunks = chunker.chunks(s, 0);
        assert!(chunks[0].0.flags.contains(ChunkFlags::CLUSTER_START));
        assert!(chunks
            .last()
            .unwrap()
            .0
            .flags
            .contains(ChunkFlags::CLUSTER_END));
        for (h, p) in chunks {
            assert_eq!(h.seq, seq);
            seq += 1;
            assert!(p.len() <= miostream_protocol::MAX_CHUNK_PAYLOAD);
            assert_eq!(h.kind == ChunkKind::Init, matches!(s, Segment::Init(_)));
            rebuilt.extend_from_slice(p);
        }
    }
    assert_eq!(rebuilt, expected);
}

#[test]
fn known_size_files_with_cues_and_non_keyframe_pipe_clusters() {
    if !ffmpeg() {
        eprintln!("ffmpeg not installed: skipping generated-media checks");
        return;
    }
    let dir = std::env::temp_dir().join(format!("miostream-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A file (known-size Segment, SeekHead, Cues) with Vorbis audio.
    let file = dir.join("vod.webm");
    let ok = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "4",
            "-c:v",
            "libvpx",
            "-g",
            "25",
            "-c:a",
            "libvorbis",
        ])
        .arg(&file)
        .status()
        .unwrap();
    assert!(ok.success());
    let data = std::fs::read(&file).unwrap();
    let segments = split_all(&data, 3000);
    let Segment::Init(init) = &segments[0] else {
        panic!()
    };
    assert!(segments.len() > 2);
    let all: Vec<&Segment> = segments[1..].iter().collect();
    assert_eq!(decode_errors(&concat(init, &all)), "");
    // ffmpeg's pipe output with its default clusters: many do not start with a
    // keyframe (a keyframe every 2 s, clusters every ~1 s or 5 MB).
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-t",
            "6",
            "-c:v",
            "libvpx",
            "-g",
            "50",
            "-f",
            "webm",
            "pipe:1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let segments = split_all(&out.stdout, 1500);
    let flags: Vec<bool> = segments[1..]
        .iter()
        .map(|s| matches!(s, Segment::Cluster(c) if c.keyframe))
        .collect();
    assert!(
        flags.iter().any(|k| *k) && flags.iter().any(|k| !*k),
        "{flags:?}"
    );
    let Segment::Init(init) = &segments[0] else {
        panic!()
    };
    let first_key = 1 + flags.iter().rposition(|k| *k).unwrap();
    let from: Vec<&Segment> = segments[first_key..].iter().collect();
    assert_eq!(decode_errors(&concat(init, &from)), "");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_and_foreign_input_are_typed_errors() {
    let data = bundled();
    let mut s = Splitter::new();
    s.push(&data[..data.len() / 2]).unwrap();
    assert!(matches!(s.finish(), Err(MediaError::Truncated { .. })));
    let mut s = Splitter::new();
    assert!(matches!(
        s.push(b"\x00\x01 definitely not webm"),
        Err(MediaError::Corrupt { .. } | MediaError::NotWebm { .. })
    ));
    let mut s = Splitter::new();
    assert!(matches!(
        s.push(&[0x1F, 0x43, 0xB6, 0x75, 0x81, 0x00]),
        Err(MediaError::NotWebm { .. })
    ));
    // A cluster claiming 2^56 bytes is refused before any allocation.
    let mut bad = data[..575].to_vec();
    bad.extend_from_slice(&[
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    let mut s = Splitter::new();
    assert!(matches!(s.push(&bad), Err(MediaError::TooLarge { .. })));
}

#[test]
fn looping_shifts_cluster_timestamps() {
    let data = bundled();
    let mut s = Splitter::new();
    let first: Vec<Segment> = s
        .push(&data)
        .unwrap()
        .into_iter()
        .chain(s.finish().unwrap())
        .collect();
    let Segment::Cluster(c0) = &first[1] else {
        panic!()
    };
    let mut s = Splitter::new();
    s.set_timestamp_shift(20_000);
    let shifted: Vec<Segment> = s.push(&data).unwrap();
    let Segment::Cluster(c1) = &shifted[1] else {
        panic!()
    };
    assert_eq!(c1.timestamp_ms, c0.timestamp_ms + 20_000);
    // The rewritten cluster parses back with its new timestamp.
    let Segment::Init(init) = &first[0] else {
        panic!()
    };
    let mut again = Splitter::new();
    let mut bytes = init.clone();
    bytes.extend_from_slice(&c1.bytes);
    let parsed: Vec<Segment> = again
        .push(&bytes)
        .unwrap()
        .into_iter()
        .chain(again.finish().unwrap())
        .collect();
    let Segment::Cluster(c2) = &parsed[1] else {
        panic!()
    };
    assert_eq!(c2.timestamp_ms, c1.timestamp_ms);
    assert_eq!(c2.bytes, c1.bytes);
}

#[test]
fn the_seeds_hold_an_init_segment_a_cluster_and_truncations() {
    let committed = miostream_protocol::fuzz::corpus("webm_splitter");
    assert!(
        committed.len() >= 5,
        "init, cluster and truncations: {}",
        committed.len()
    );
}

// The `webm_splitter` fuzz target's harness on the stable toolchain.
miostream_protocol::fuzz_proptests!(
    stable,
    "webm_splitter",
    miostream_media::fuzz::webm_splitter,
    256,
    seeds = miostream_media::fuzz::seeds(&bundled())
);

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_real_webm_never_panics(at in 0usize..4000, byte in any::<u8>()) {
        let mut data = bundled();
        data.truncate(200_000);
        data[at] = byte;
        miostream_media::fuzz::webm_splitter(&data);
    }
}
