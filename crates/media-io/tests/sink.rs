//! `--out FILE`: reassembled pieces written in order give init + clusters
//! byte for byte; clusters before an init and holes write nothing.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::path::Path;

use miostream_media::Reassembled;
use miostream_media_io::{MediaIoError, StreamWriter};

#[tokio::test]
async fn a_file_gets_exactly_the_init_and_the_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.webm");
    let mut w = StreamWriter::create(&path).await.unwrap();
    let cluster = |b: &[u8]| Reassembled::Cluster {
        first_seq: 0,
        timestamp_ms: 0,
        keyframe: true,
        bytes: b.to_vec(),
    };
    w.write(&cluster(b"too early")).await.unwrap();
    w.write(&Reassembled::Init(b"INIT".to_vec())).await.unwrap();
    w.write(&cluster(b"C1")).await.unwrap();
    w.write(&Reassembled::Hole {
        first_seq: 3,
        count: 2,
    })
    .await
    .unwrap();
    w.write(&cluster(b"C2")).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), b"INITC1C2");
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
