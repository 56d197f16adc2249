//! The splitter on hand-built WebM: every element kind it must keep, drop,
//! void or convert, unknown-size Clusters (as browsers' MediaRecorder and
//! GStreamer write them) with Voids inside, BlockGroups, TimestampScale, and
//! hostile sizes.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use miostream_media::{MediaError, Segment, Splitter, MAX_ELEMENT};
use proptest::prelude::*;

/// One element with an 8-byte size (or unknown size).
fn el(id: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    let mut size = (body.len() as u64).to_be_bytes();
    size[0] = 0x01;
    v.extend_from_slice(&size);
    v.extend_from_slice(body);
    v
}

fn unknown(id: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    v.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    v.extend_from_slice(body);
    v
}

fn uint(id: &[u8], v: u64) -> Vec<u8> {
    el(id, &v.to_be_bytes())
}

const EBML: &[u8] = &[0x1A, 0x45, 0xDF, 0xA3];
const SEGMENT: &[u8] = &[0x18, 0x53, 0x80, 0x67];
const SEEK_HEAD: &[u8] = &[0x11, 0x4D, 0x9B, 0x74];
const INFO: &[u8] = &[0x15, 0x49, 0xA9, 0x66];
const TRACKS: &[u8] = &[0x16, 0x54, 0xAE, 0x6B];
const CLUSTER: &[u8] = &[0x1F, 0x43, 0xB6, 0x75];
const CUES: &[u8] = &[0x1C, 0x53, 0xBB, 0x6B];
const TAGS: &[u8] = &[0x12, 0x54, 0xC3, 0x67];
const VOID: &[u8] = &[0xEC];

fn header() -> Vec<u8> {
    el(EBML, &el(&[0x42, 0x82], b"webm"))
}

/// Info with a TimestampScale (ns per tick) and a Duration.
fn info(scale: u64) -> Vec<u8> {
    let mut body = uint(&[0x2A, 0xD7, 0xB1], scale);
    body.extend(el(&[0x44, 0x89], &20_000.0f64.to_be_bytes()));
    body.extend(el(&[0x4D, 0x80], b"test"));
    el(INFO, &body)
}

/// Tracks: 1 = audio, 2 = video.
fn tracks() -> Vec<u8> {
    let mut audio = uint(&[0xD7], 1);
    audio.extend(uint(&[0x83], 2));
    let mut video = uint(&[0xD7], 2);
    video.extend(uint(&[0x83], 1));
    let mut body = el(&[0xAE], &audio);
    body.extend(el(&[0xAE], &video));
    el(TRACKS, &body)
}

fn simple_block(track: u8, rel: i16, key: bool) -> Vec<u8> {
    let mut b = vec![0x80 | track];
    b.extend_from_slice(&rel.to_be_bytes());
    b.push(if key { 0x80 } else { 0 });
    b.extend_from_slice(&[0x55; 40]);
    el(&[0xA3], &b)
}

fn block_group(track: u8, rel: i16, referenced: bool) -> Vec<u8> {
    let mut b = vec![0x80 | track];
    b.extend_from_slice(&rel.to_be_bytes());
    b.push(0);
    b.extend_from_slice(&[0x66; 30]);
    let mut body = el(&[0xA1], &b);
    if referenced {
        body.extend(uint(&[0xFB], 1));
    }
    el(&[0xA0], &body)
}

/// A cluster body: Timestamp, an audio block first (always a keyframe),
/// then video.
fn cluster_body(ticks: u64, video_key: bool, group: bool) -> Vec<u8> {
    let mut body = uint(&[0xE7], ticks);
    body.extend(simple_block(1, 0, true));
    if group {
        body.extend(block_group(2, 5, !video_key));
    } else {
        body.extend(simple_block(2, 5, video_key));
    }
    body.extend(simple_block(1, 30, true));
    body
}

fn split(data: &[u8], piece: usize) -> Result<Vec<Segment>, MediaError> {
    let mut s = Splitter::new();
    let mut out = Vec::new();
    for p in data.chunks(piece.max(1)) {
        out.extend(s.push(p)?);
    }
    out.extend(s.finish()?);
    Ok(out)
}

fn clusters(segments: &[Segment]) -> Vec<(u64, bool, u64)> {
    segments
        .iter()
        .filter_map(|s| match s {
            Segment::Cluster(c) => Some((c.timestamp_ms, c.keyframe, c.last_block_ms)),
            Segment::Init(_) => None,
        })
        .collect()
}

/// A file-like stream: known-size Segment with SeekHead, Cues and Tags.
fn file_like(scale: u64, unknown_clusters: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut cluster_elements = Vec::new();
    for (i, (key, group)) in [(true, false), (false, false), (true, true), (false, true)]
        .into_iter()
        .enumerate()
    {
        let mut body = cluster_body(i as u64 * 100, key, group);
        if unknown_clusters {
            // A Void inside an unknown-size cluster does not end it.
            body.extend(el(VOID, &[0; 5]));
            body.extend(simple_block(1, 60, true));
            cluster_elements.push(unknown(CLUSTER, &body));
        } else {
            cluster_elements.push(el(CLUSTER, &body));
        }
    }
    let mut seg = el(SEEK_HEAD, &[0xAB; 20]);
    seg.extend(el(VOID, &[0; 10]));
    seg.extend(info(scale));
    seg.extend(tracks());
    for c in &cluster_elements {
        seg.extend_from_slice(c);
    }
    seg.extend(el(CUES, &[0xBB; 30]));
    seg.extend(el(TAGS, &[0xCC; 30]));
    let mut data = header();
    data.extend(el(SEGMENT, &seg));
    (data, cluster_elements)
}

#[test]
fn known_size_file_keeps_init_and_clusters_and_drops_the_rest() {
    let (data, cluster_elements) = file_like(1_000_000, false);
    let segments = split(&data, 1 << 20).unwrap();
    let Segment::Init(init) = &segments[0] else {
        panic!("init first")
    };
    // EBML header, Segment header with unknown size, Info (Duration voided
    // in place), Tracks; no SeekHead, Void, Cues or Tags.
    let mut expected = header();
    expected.extend_from_slice(SEGMENT);
    expected.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    let mut fixed_info = info(1_000_000);
    let at = fixed_info
        .windows(2)
        .position(|w| w == [0x44, 0x89])
        .unwrap();
    // Duration: 2-byte id + 8-byte size + 8-byte float = 18 bytes → Void.
    let mut void = vec![0xEC, 0x80 | 16];
    void.extend_from_slice(&[0; 16]);
    fixed_info.splice(at..at + 18, void);
    expected.extend(fixed_info);
    expected.extend(tracks());
    assert_eq!(init, &expected);
    assert_eq!(
        clusters(&segments),
        vec![
            (0, true, 30),
            (100, false, 130),
            (200, true, 230),
            (300, false, 330)
        ]
    );
    for (s, e) in segments[1..].iter().zip(&cluster_elements) {
        let Segment::Cluster(c) = s else { panic!() };
        assert_eq!(&c.bytes, e);
        assert_eq!(c.span_ms(), 30);
    }
}

#[test]
fn unknown_size_clusters_end_at_the_next_top_level_element_not_at_a_void() {
    let (data, cluster_elements) = file_like(1_000_000, true);
    for piece in [1usize, 3, 64, 1 << 20] {
        let segments = split(&data, piece).unwrap();
        assert_eq!(segments.len(), 5, "pieces of {piece}");
        assert_eq!(
            clusters(&segments),
            vec![
                (0, true, 60),
                (100, false, 160),
                (200, true, 260),
                (300, false, 360)
            ]
        );
        for (s, e) in segments[1..].iter().zip(&cluster_elements) {
            let Segment::Cluster(c) = s else { panic!() };
            assert_eq!(&c.bytes, e, "pieces of {piece}");
        }
    }
}

#[test]
fn an_open_cluster_at_the_end_of_a_live_stream_is_flushed_by_finish() {
    // Live: unknown-size Segment and Clusters; the last cluster only ends
    // when the input does.
    let mut seg = info(1_000_000);
    seg.extend(tracks());
    seg.extend(unknown(CLUSTER, &cluster_body(0, true, false)));
    seg.extend(unknown(CLUSTER, &cluster_body(1000, true, false)));
    let mut data = header();
    data.extend(unknown(SEGMENT, &seg));
    let mut s = Splitter::new();
    let before = s.push(&data).unwrap();
    assert_eq!(clusters(&before), vec![(0, true, 30)]);
    assert_eq!(clusters(&s.finish().unwrap()), vec![(1000, true, 1030)]);
}

#[test]
fn timestamp_scale_is_converted_to_ms() {
    // 0.5 ms per tick: cluster ticks 0,100,200,300 are 0,50,100,150 ms.
    let (data, _) = file_like(500_000, false);
    let segments = split(&data, 777).unwrap();
    assert_eq!(
        clusters(&segments),
        vec![
            (0, true, 15),
            (50, false, 65),
            (100, true, 115),
            (150, false, 165)
        ]
    );
    // A shift stays in ms: 1000 ms = 2000 ticks at this scale.
    let mut s = Splitter::new();
    s.set_timestamp_shift(1000);
    let shifted = s.push(&data).unwrap();
    assert_eq!(clusters(&shifted)[1], (1050, false, 1065));
}

#[test]
fn hostile_sizes_are_refused_before_buffering() {
    let mut prefix = header();
    prefix.extend(unknown(SEGMENT, &[info(1_000_000), tracks()].concat()));
    // A known-size cluster over the limit.
    let mut big = prefix.clone();
    big.extend_from_slice(CLUSTER);
    let mut size = (MAX_ELEMENT + 1).to_be_bytes();
    size[0] = 0x01;
    big.extend_from_slice(&size);
    let mut s = Splitter::new();
    let r = s.push(&big);
    assert!(
        matches!(
            r,
            Err(MediaError::TooLarge {
                id: 0x1F43_B675,
                ..
            })
        ),
        "{r:?}"
    );
    // A child of an unknown-size cluster that claims 2^40 bytes: refused as
    // soon as its header is read, not after buffering toward it.
    let mut open = prefix.clone();
    open.extend(unknown(CLUSTER, &uint(&[0xE7], 0)));
    open.extend_from_slice(&[0xA3, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0]);
    let mut s = Splitter::new();
    let r = s.push(&open);
    assert!(matches!(r, Err(MediaError::TooLarge { .. })), "{r:?}");
    // Tracks of unknown size cannot be handed out whole.
    let mut bad = header();
    bad.extend(unknown(SEGMENT, &unknown(TRACKS, &[])));
    let mut s = Splitter::new();
    assert!(matches!(s.push(&bad), Err(MediaError::Corrupt { .. })));
    // A cluster before any Tracks.
    let mut bad = header();
    bad.extend(unknown(SEGMENT, &el(CLUSTER, &uint(&[0xE7], 0))));
    let mut s = Splitter::new();
    assert!(matches!(s.push(&bad), Err(MediaError::NoTracks { .. })));
}

#[test]
fn large_skipped_elements_stream_past_without_being_buffered() {
    // Attachments bigger than the buffering limit are skipped, not refused.
    let mut seg = info(1_000_000);
    seg.extend(tracks());
    let attachments_len = MAX_ELEMENT as usize + 10;
    let mut head = vec![0x19, 0x41, 0xA4, 0x69];
    head.extend_from_slice(&{
        let mut s = (attachments_len as u64).to_be_bytes();
        s[0] = 0x01;
        s
    });
    let mut s = Splitter::new();
    let mut data = header();
    data.extend(unknown(SEGMENT, &seg));
    data.extend(head);
    s.push(&data).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = attachments_len;
    while left > 0 {
        let n = left.min(zeros.len());
        s.push(&zeros[..n]).unwrap();
        left -= n;
    }
    let out = s.push(&el(CLUSTER, &cluster_body(7, true, false))).unwrap();
    assert_eq!(clusters(&out), vec![(7, true, 37)]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any split of the input into pieces gives the same segments.
    #[test]
    fn piece_boundaries_do_not_matter(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        unknown_clusters in any::<bool>(),
    ) {
        let (data, _) = file_like(1_000_000, unknown_clusters);
        let reference = split(&data, data.len()).unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len())).collect();
        points.sort_unstable();
        let mut s = Splitter::new();
        let mut out = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([data.len()]) {
            out.extend(s.push(&data[last..p]).unwrap());
            last = p;
        }
        out.extend(s.finish().unwrap());
        prop_assert_eq!(out, reference);
    }
}
