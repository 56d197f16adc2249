//! File → splitter → chunker → reassembler on real media: byte-exact round
//! trips, reordering and duplicates, late joins, holes, the init fix-up,
//! and decoding what comes out with ffmpeg (skipped, with a notice, only
//! when ffmpeg is absent).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use miostream_media::chunk::Chunker;
use miostream_media::{
    fix_up_init, MediaError, Reassembled, Reassembler, ReassemblyConfig, Segment, Splitter,
};
use miostream_protocol::{ChunkFlags, ChunkHeader, StreamId};
use proptest::prelude::*;

type Chunks = Vec<(ChunkHeader, Vec<u8>)>;

fn bundled() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm")).unwrap()
}

fn split(data: &[u8]) -> Vec<Segment> {
    let mut s = Splitter::new();
    let mut out = s.push(data).unwrap();
    out.extend(s.finish().unwrap());
    out
}

fn chunk_all(segments: &[Segment]) -> Chunks {
    let mut chunker = Chunker::new(StreamId(7), 0);
    segments
        .iter()
        .flat_map(|s| {
            chunker
                .chunks(s, 0)
                .into_iter()
                .map(|(h, p)| (h, p.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Concatenates what a player would read.
fn play(out: &[Reassembled]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in out {
        match r {
            Reassembled::Init(b) => v.extend_from_slice(b),
            Reassembled::Cluster { bytes, .. } => v.extend_from_slice(bytes),
            _ => {}
        }
    }
    v
}

fn reassemble<'a>(
    chunks: impl IntoIterator<Item = &'a (ChunkHeader, Vec<u8>)>,
) -> Vec<Reassembled> {
    let mut r = Reassembler::new(ReassemblyConfig::default());
    chunks.into_iter().flat_map(|(h, p)| r.push(h, p)).collect()
}

fn ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("NOTICE: ffmpeg not installed, decode check skipped");
    }
    ok
}

/// ffmpeg's error output decoding `webm` (empty = clean).
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
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn expected_from(segments: &[Segment], first_cluster: usize) -> Vec<u8> {
    let Segment::Init(init) = &segments[0] else {
        panic!("init first")
    };
    let mut v = init.clone();
    for s in &segments[first_cluster..] {
        if let Segment::Cluster(c) = s {
            v.extend_from_slice(&c.bytes);
        }
    }
    v
}

#[test]
fn file_to_chunks_to_stream_is_byte_identical() {
    let segments = split(&bundled());
    let chunks = chunk_all(&segments);
    let out = reassemble(&chunks);
    assert!(matches!(out[0], Reassembled::Init(_)));
    assert_eq!(out.len(), segments.len(), "one output per segment");
    assert_eq!(play(&out), expected_from(&segments, 1));
    // Timestamps and keyframe flags survive.
    for (o, s) in out[1..].iter().zip(&segments[1..]) {
        let (
            Reassembled::Cluster {
                timestamp_ms,
                keyframe,
                ..
            },
            Segment::Cluster(c),
        ) = (o, s)
        else {
            panic!("{o:?}")
        };
        assert_eq!((*timestamp_ms, *keyframe), (c.timestamp_ms, c.keyframe));
    }
}

#[test]
fn the_splitters_init_is_already_fixed_up() {
    let segments = split(&bundled());
    let Segment::Init(init) = &segments[0] else {
        panic!()
    };
    assert_eq!(&fix_up_init(init).unwrap(), init);
}

#[test]
fn a_late_joiner_starts_at_a_keyframe_cluster_and_decodes() {
    let segments = split(&bundled());
    let chunks = chunk_all(&segments);
    let init_chunks: Vec<_> = chunks
        .iter()
        .filter(|(h, _)| h.kind == miostream_protocol::ChunkKind::Init)
        .collect();
    // Join in the middle of cluster 5: its tail is useless, cluster 6 is
    // the first one played.
    let c5 = chunks
        .iter()
        .filter(|(h, _)| h.flags.contains(ChunkFlags::CLUSTER_START))
        .nth(5)
        .unwrap()
        .0
        .seq;
    let c6 = chunks
        .iter()
        .filter(|(h, _)| h.flags.contains(ChunkFlags::CLUSTER_START))
        .nth(6)
        .unwrap()
        .0
        .seq;
    assert!(c6 > c5 + 1, "cluster 5 spans several chunks");
    let joined = init_chunks
        .into_iter()
        .chain(chunks.iter().filter(|(h, _)| h.seq > c5));
    let out = reassemble(joined);
    let expected = expected_from(&segments, 6);
    assert_eq!(play(&out), expected);
    if ffmpeg() {
        assert_eq!(decode_errors(&expected), "");
    }
}

#[test]
fn a_lost_chunk_drops_its_cluster_and_resumes_at_the_next_keyframe() {
    let segments = split(&bundled());
    let chunks = chunk_all(&segments);
    let c3 = chunks
        .iter()
        .filter(|(h, _)| h.flags.contains(ChunkFlags::CLUSTER_START))
        .nth(3)
        .unwrap()
        .0
        .seq;
    let lost = c3 + 1;
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let mut out = Vec::new();
    for (h, p) in &chunks {
        if h.seq == lost {
            continue;
        }
        if h.seq == lost + 3 {
            // The upstream says chunk `lost` is gone.
            out.extend(r.skip_to(lost + 1));
        }
        out.extend(r.push(h, p));
    }
    assert!(out.contains(&Reassembled::Hole {
        first_seq: lost,
        count: 1
    }));
    // Init + clusters 1..=3 (segments 1..=2 are clusters 0 and 1, ...):
    // cluster index 2 (segment 3) is the one that lost a chunk.
    let mut expected = expected_from(&segments[..3], 1);
    expected.extend_from_slice(&expected_from(&segments, 4)[segments_init_len(&segments)..]);
    assert_eq!(play(&out), expected);
    if ffmpeg() {
        assert_eq!(decode_errors(&play(&out)), "");
    }
}

fn segments_init_len(segments: &[Segment]) -> usize {
    match &segments[0] {
        Segment::Init(b) => b.len(),
        Segment::Cluster(_) => 0,
    }
}

#[test]
fn a_full_window_gives_up_on_a_missing_chunk() {
    let segments = split(&bundled());
    let chunks = chunk_all(&segments);
    let mut r = Reassembler::new(ReassemblyConfig {
        window: 8,
        ..ReassemblyConfig::default()
    });
    let missing = 20;
    let mut out = Vec::new();
    for (h, p) in chunks.iter().filter(|(h, _)| h.seq != missing).take(40) {
        out.extend(r.push(h, p));
    }
    let hole = out
        .iter()
        .position(|o| {
            matches!(
                o,
                Reassembled::Hole {
                    first_seq: 20,
                    count: 1
                }
            )
        })
        .expect("the hole is reported");
    // Nothing is held beyond the window: the next expected chunk moved on.
    assert!(r.next_seq().unwrap() > missing + 8);
    assert!(hole > 0);
}

#[test]
fn ffmpeg_pipe_output_with_non_keyframe_clusters_joins_at_a_keyframe() {
    if !ffmpeg() {
        return;
    }
    // ffmpeg's default pipe output: clusters every ~1 s, keyframes every 2 s.
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "6",
            "-c:v",
            "libvpx",
            "-g",
            "50",
            "-c:a",
            "libopus",
            "-f",
            "webm",
            "pipe:1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let segments = split(&out.stdout);
    let keys: Vec<bool> = segments[1..]
        .iter()
        .map(|s| matches!(s, Segment::Cluster(c) if c.keyframe))
        .collect();
    let first_non_key = keys
        .iter()
        .position(|k| !k)
        .expect("a non-keyframe cluster");
    let next_key = first_non_key + keys[first_non_key..].iter().position(|k| *k).unwrap();
    let chunks = chunk_all(&segments);
    let starts: Vec<u64> = chunks
        .iter()
        .filter(|(h, _)| {
            h.flags.contains(ChunkFlags::CLUSTER_START)
                && h.kind == miostream_protocol::ChunkKind::Media
        })
        .map(|(h, _)| h.seq)
        .collect();
    // Join exactly at the non-keyframe cluster.
    let from = starts[first_non_key];
    let joined = chunks
        .iter()
        .filter(|(h, _)| h.kind == miostream_protocol::ChunkKind::Init || h.seq >= from);
    let played = play(&reassemble(joined));
    let expected = expected_from(&segments, 1 + next_key);
    assert_eq!(played, expected);
    assert_eq!(decode_errors(&played), "");
}

#[test]
fn fix_up_voids_seek_head_cues_and_duration_of_a_file_and_it_still_decodes() {
    if !ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vod.webm");
    let ok = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
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
    let first_cluster = data
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .unwrap();
    let raw_init = &data[..first_cluster];
    assert!(
        raw_init.windows(2).any(|w| w == [0x44, 0x89]),
        "a file has a Duration"
    );
    let fixed = fix_up_init(raw_init).unwrap();
    // Same length but the Segment size (rewritten as 8 bytes), no SeekHead or Duration ids.
    assert!(!fixed.windows(4).any(|w| w == [0x11, 0x4D, 0x9B, 0x74]));
    assert!(!fixed.windows(2).any(|w| w == [0x44, 0x89]));
    assert_eq!(fix_up_init(&fixed).unwrap(), fixed, "idempotent");
    // Re-served from its third cluster, the file decodes cleanly.
    let segments = split(&data);
    let mut stream = fixed.clone();
    stream.extend_from_slice(&expected_from(&segments, 3)[segments_init_len(&segments)..]);
    assert_eq!(decode_errors(&stream), "");
}

#[test]
fn broken_init_segments_are_typed_errors() {
    let segments = split(&bundled());
    let Segment::Init(init) = &segments[0] else {
        panic!()
    };
    for cut in [0, 3, 10, init.len() - 1] {
        assert!(
            matches!(fix_up_init(&init[..cut]), Err(MediaError::Truncated { .. })),
            "cut at {cut}"
        );
    }
    let mut with_cluster = init.clone();
    with_cluster.extend_from_slice(&[0x1F, 0x43, 0xB6, 0x75, 0x80]);
    assert!(matches!(
        fix_up_init(&with_cluster),
        Err(MediaError::Corrupt { .. })
    ));
    assert!(matches!(
        fix_up_init(b"\x1F\x43\xB6\x75\x80"),
        Err(MediaError::NotWebm { .. })
    ));
    // A reassembler handed a broken init says so and plays nothing.
    let mut r = Reassembler::new(ReassemblyConfig::default());
    let h = ChunkHeader {
        stream: StreamId(1),
        seq: 0,
        kind: miostream_protocol::ChunkKind::Init,
        flags: ChunkFlags::CLUSTER_START.with(ChunkFlags::CLUSTER_END),
        timestamp_ms: 0,
        send_time_us: 0,
    };
    let out = r.push(&h, &init[..init.len() - 1]);
    assert!(matches!(
        out[..],
        [Reassembled::BadInit(MediaError::Truncated { .. })]
    ));
    assert!(r.init().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// After an in-order start, chunks displaced by up to 16 places, some
    /// sent twice: the same bytes come out, and nothing is reported lost.
    #[test]
    fn reordering_and_duplicates_within_the_window_change_nothing(
        keys in proptest::collection::vec(0u64..16, 400),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let segments = split(&bundled());
        let chunks: Chunks = chunk_all(&segments).into_iter().take(400).collect();
        let mut order: Vec<(u64, usize)> = chunks
            .iter()
            .enumerate()
            .map(|(i, _)| (i as u64 + if i < 40 { 0 } else { keys[i] }, i))
            .collect();
        order.sort_unstable();
        let mut sequence: Vec<&(ChunkHeader, Vec<u8>)> = order.iter().map(|(_, i)| &chunks[*i]).collect();
        for d in &dups {
            let c = sequence[d.index(sequence.len())];
            sequence.push(c);
        }
        let reference = reassemble(&chunks);
        let out = reassemble(sequence);
        let holes = out.iter().filter(|o| matches!(o, Reassembled::Hole { .. })).count();
        prop_assert_eq!(holes, 0);
        prop_assert_eq!(play(&out), play(&reference));
    }
}

#[test]
fn vp9_and_opus_late_join_decodes() {
    if !ffmpeg() {
        return;
    }
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "4",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "25",
            "-c:a",
            "libopus",
            "-f",
            "webm",
            "-cluster_time_limit",
            "1000",
            "pipe:1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let segments = split(&out.stdout);
    let chunks = chunk_all(&segments);
    let c2 = chunks
        .iter()
        .filter(|(h, _)| h.flags.contains(ChunkFlags::CLUSTER_START))
        .nth(2)
        .unwrap()
        .0
        .seq;
    // Join one chunk into cluster index 1: the next keyframe cluster plays.
    let joined = chunks
        .iter()
        .filter(|(h, _)| h.kind == miostream_protocol::ChunkKind::Init || h.seq > c2);
    let played = play(&reassemble(joined));
    assert!(played.len() > segments_init_len(&segments));
    assert_eq!(decode_errors(&played), "");
}
