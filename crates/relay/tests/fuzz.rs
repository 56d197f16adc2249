//! The `relay_frames` fuzz target on the stable toolchain: the harness of
//! `fuzz/fuzz_targets/relay_frames.rs` (a linked peer's bytes entering
//! `Relay::handle_frame`, with its invariants: bounded sends, bounded
//! buffer, no forgery report for garbage, nothing unverified played) fed
//! random records and mutations of the committed seed corpus.
//! `cargo test -p miostream-relay -- --ignored write_seed_corpus` rewrites
//! the corpus.

use miostream_protocol::fuzz::{self as pfuzz, seed_chunk};
use miostream_protocol::{ChunkFlags, ChunkKind, Frame};
use miostream_relay::fuzz::{record, relay_frames};
use proptest::prelude::*;

const TARGET: &str = "relay_frames";

#[test]
fn the_seeds_get_past_decoding_and_verification() {
    let generated = pfuzz::corpus(TARGET);
    // Together they get past decoding and verification: played, forwarded
    // or replayed, reported as forged, closed as garbage.
    let mut total = miostream_relay::fuzz::Reach::default();
    for seed in &generated {
        let r = relay_frames(seed);
        total.delivered += r.delivered;
        total.rejected += r.rejected;
        total.garbage_links += r.garbage_links;
        total.sent += r.sent;
    }
    assert!(
        total.delivered > 0 && total.rejected > 0 && total.garbage_links > 0 && total.sent > 0,
        "{total:?}"
    );
}

/// Found by the harness's buffer bound: an authorized sender's init chunks
/// that never start a new segment used to grow the init segment without
/// limit (and re-sort it on every chunk).
#[test]
fn an_init_segment_that_never_ends_stays_bounded() {
    let mut input = Vec::new();
    for seq in 0..(miostream_relay::MAX_INIT_CHUNKS as u64 + 200) {
        let flags = if seq == 0 {
            ChunkFlags::CLUSTER_START
        } else {
            ChunkFlags::empty()
        };
        let chunk = seed_chunk(seq, ChunkKind::Init, flags, b"init", false);
        input.extend(record(0, 0, false, &Frame::Chunk(chunk).encode().unwrap()));
    }
    assert_eq!(relay_frames(&input).rejected, 0);
}

fn records() -> impl Strategy<Value = Vec<u8>> {
    // Well-formed records around random bodies, so the relay sees many
    // frames per input rather than one long one.
    proptest::collection::vec(
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..96)),
        0..24,
    )
    .prop_map(|recs| {
        recs.into_iter()
            .flat_map(|(ctl, body)| record(ctl & 3, (ctl >> 2) & 31, ctl & 0x80 != 0, &body))
            .collect()
    })
}

miostream_protocol::fuzz_proptests!(
    stable,
    "relay_frames",
    miostream_relay::fuzz::relay_frames,
    512,
    seeds = miostream_relay::fuzz::seeds()
);

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_records(data in records()) {
        let _ = relay_frames(&data);
    }

    /// Mutated seed frames wrapped as records, half of them given a valid
    /// tag: the states behind verification (buffering, forwarding, gap
    /// fill, delivery) under hostile control frames.
    #[test]
    fn mutated_seed_frames(picks in proptest::collection::vec((any::<u8>(), any::<usize>(), proptest::collection::vec(any::<(u8, usize, usize, usize)>(), 0..3)), 1..16)) {
        let frames = pfuzz::corpus("frame_decode");
        let data: Vec<u8> = picks
            .into_iter()
            .flat_map(|(ctl, pick, raw)| {
                let frame = pfuzz::mutate_raw(&frames, pick, &raw);
                record(ctl & 3, (ctl >> 2) & 31, ctl & 0x80 != 0, &frame)
            })
            .collect();
        let _ = relay_frames(&data);
    }
}
