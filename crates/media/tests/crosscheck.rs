//! Our hand-written splitter against an independent EBML reader
//! (`webm-iterable`): the same clusters, timestamps and keyframe flags.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::Path;

use miostream_media::{Segment, Splitter};
use webm_iterable::matroska_spec::{Master, MatroskaSpec};
use webm_iterable::WebmIterator;

#[test]
fn clusters_agree_with_webm_iterable() {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"))
        .unwrap();

    let mut video = None;
    let (mut number, mut kind) = (None, None);
    let mut theirs: Vec<(u64, Option<bool>)> = Vec::new();
    for tag in WebmIterator::new(std::io::Cursor::new(&data), &[]) {
        match tag.unwrap() {
            MatroskaSpec::TrackNumber(n) => number = Some(n),
            MatroskaSpec::TrackType(t) => kind = Some(t),
            MatroskaSpec::TrackEntry(Master::End) if kind == Some(1) => video = number,
            MatroskaSpec::Cluster(Master::Start) => theirs.push((0, None)),
            MatroskaSpec::Timestamp(t) => {
                if let Some(last) = theirs.last_mut() {
                    last.0 = t;
                }
            }
            MatroskaSpec::SimpleBlock(block) => {
                let last = theirs.last_mut().unwrap();
                // Track number: a one-byte EBML vint for tracks < 127.
                let track = u64::from(block[0] & 0x7F);
                if last.1.is_none() && Some(track) == video {
                    last.1 = Some(block[3] & 0x80 != 0);
                }
            }
            _ => {}
        }
    }
    let mut s = Splitter::new();
    let ours: Vec<(u64, Option<bool>)> = s
        .push(&data)
        .unwrap()
        .into_iter()
        .chain(s.finish().unwrap())
        .filter_map(|seg| match seg {
            Segment::Cluster(c) => Some((c.timestamp_ms, Some(c.keyframe))),
            Segment::Init(_) => None,
        })
        .collect();
    assert!(video.is_some());
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours, theirs);
}
