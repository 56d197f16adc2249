//! Fuzzing harness of the WebM splitter, shared by the cargo-fuzz target
//! `webm_splitter` (`fuzz/`, nightly) and the stable proptest runs
//! (`tests/split.rs`) over random bytes and mutations of the committed seed
//! corpus. It panics exactly when an invariant breaks.

use crate::{fix_up_init, Segment, Splitter};

/// Any bytes, fed in two pieces (the first byte picks the cut): the
/// splitter yields segments or a typed error, never panics, and what it
/// yields is made of the input (a cluster is never larger than all the
/// bytes pushed, so nothing grows without input); the init fix-up of the
/// same bytes is an error or idempotent.
pub fn webm_splitter(data: &[u8]) {
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut s = Splitter::new();
    let mut segments = Vec::new();
    let result = s
        .push(&data[..cut])
        .map(|out| segments.extend(out))
        .and_then(|_| s.push(&data[cut..]))
        .map(|out| segments.extend(out))
        .and_then(|_| s.finish())
        .map(|out| segments.extend(out));
    let _ = result;
    let clusters: usize = segments
        .iter()
        .map(|seg| match seg {
            Segment::Cluster(c) => c.bytes.len(),
            Segment::Init(_) => 0,
        })
        .sum();
    assert!(
        clusters <= data.len(),
        "{clusters} cluster bytes out of {} bytes in",
        data.len()
    );
    if let Ok(fixed) = fix_up_init(data) {
        assert_eq!(
            fix_up_init(&fixed).as_ref(),
            Ok(&fixed),
            "fix-up is not idempotent"
        );
    }
}

/// The seeds of `fuzz/corpus/webm_splitter/`: the start of a real file
/// (its init segment and first cluster), a cut inside the init segment
/// and inside a cluster, and a cluster on its own.
pub fn seeds(webm: &[u8]) -> Vec<(String, Vec<u8>)> {
    let head = |n: usize| webm[..n.min(webm.len())].to_vec();
    let mut out = vec![
        ("head-4k".to_owned(), head(4096)),
        ("head-32k".to_owned(), head(32 * 1024)),
        ("truncated-init".to_owned(), head(200)),
    ];
    let mut s = Splitter::new();
    if let Ok(segments) = s.push(&head(1024 * 1024)) {
        if let Some(Segment::Init(init)) = segments.first() {
            out.push(("init".to_owned(), init.clone()));
        }
        // The smallest whole cluster, and the start of it alone.
        let smallest = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Cluster(c) => Some(&c.bytes),
                Segment::Init(_) => None,
            })
            .min_by_key(|b| b.len());
        if let Some(bytes) = smallest {
            out.push(("cluster".to_owned(), bytes.clone()));
            out.push((
                "truncated-cluster".to_owned(),
                bytes[..bytes.len().min(8192)].to_vec(),
            ));
        }
    }
    out
}
