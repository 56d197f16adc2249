//! `--out`: a live output gets the reassembled pieces byte for byte
//! (clusters before an init and holes write nothing); a file is a seekable
//! recording, exactly what media's `Recorder` lays out and closes.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::Path;

use miostream_media::{fix_up_init, Reassembled, Recorder, Segment, Splitter};
use miostream_media_io::{MediaIoError, StreamWriter};

fn cluster(b: &[u8], keyframe: bool) -> Reassembled {
    Reassembled::Cluster {
        first_seq: 0,
        timestamp_ms: 0,
        keyframe,
        bytes: b.to_vec(),
    }
}

#[tokio::test]
async fn a_live_output_gets_exactly_the_init_and_the_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.webm");
    let f = tokio::fs::File::create(&path).await.unwrap();
    let mut w = StreamWriter::new("pipe".into(), Box::new(f));
    w.write(&cluster(b"too early", true)).await.unwrap();
    w.write(&Reassembled::Init(b"INIT".to_vec())).await.unwrap();
    w.write(&cluster(b"C1", true)).await.unwrap();
    w.write(&Reassembled::Hole {
        first_seq: 3,
        count: 2,
    })
    .await
    .unwrap();
    w.write(&cluster(b"C2", false)).await.unwrap();
    assert_eq!(
        w.finish().await.unwrap(),
        None,
        "a live output has no duration"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"INITC1C2");
}

#[tokio::test]
async fn a_file_is_a_closed_recording() {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test.webm"))
        .unwrap();
    let mut s = Splitter::new();
    let mut segments = s.push(&data).unwrap();
    segments.extend(s.finish().unwrap());
    let pieces: Vec<Reassembled> = segments
        .into_iter()
        .skip(3) // joined mid-stream: the init segment comes first anyway
        .take(6)
        .map(|s| match s {
            Segment::Init(_) => unreachable!(),
            Segment::Cluster(c) => cluster(&c.bytes, c.keyframe),
        })
        .collect();
    let Segment::Init(init) = Splitter::new().push(&data).unwrap().remove(0) else {
        panic!()
    };
    let init = fix_up_init(&init).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.webm");
    let mut w = StreamWriter::create(&path).await.unwrap();
    w.write(&Reassembled::Init(init.clone())).await.unwrap();
    for p in &pieces {
        w.write(p).await.unwrap();
    }
    // What is on disk before closing plays as live WebM.
    w.flush().await.unwrap();
    let live = std::fs::read(&path).unwrap();
    let mut s = Splitter::new();
    assert_eq!(s.push(&live).unwrap().len(), 1 + pieces.len());
    let duration = w.finish().await.unwrap().unwrap();

    // The file is the recorder's layout with its closing applied.
    let mut r = Recorder::new();
    let mut expected = r.init(&init).unwrap();
    for p in &pieces {
        let Reassembled::Cluster {
            bytes, keyframe, ..
        } = p
        else {
            unreachable!()
        };
        expected.extend(r.cluster(bytes, *keyframe));
    }
    let closing = r.finish().unwrap();
    assert_eq!(closing.duration_ms, duration);
    assert!(duration > 4000, "{duration} ms");
    closing.apply(&mut expected);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
}

#[tokio::test]
async fn an_unwritable_path_is_a_clear_error() {
    let e = StreamWriter::create(Path::new("/nonexistent-dir/out.webm"))
        .await
        .unwrap_err();
    assert!(matches!(e, MediaIoError::Open { .. }));
    assert!(e
        .to_string()
        .starts_with("cannot open /nonexistent-dir/out.webm"));
}
