//! The `frame_decode` and `signal_parse` fuzz targets on the stable
//! toolchain: the same harnesses as `fuzz/fuzz_targets/`, fed random bytes
//! and mutations (bit flips, byte writes, truncations, splices,
//! duplications) of the committed seed corpus `fuzz/corpus/<target>/`.
//! `cargo test -p miostream-protocol --test fuzz -- --ignored` rewrites the
//! corpus from the seed generators.

use miostream_protocol::fuzz;
use proptest::prelude::*;

fn edits() -> impl Strategy<Value = Vec<(u8, usize, usize, usize)>> {
    proptest::collection::vec(any::<(u8, usize, usize, usize)>(), 1..6)
}

#[test]
#[ignore = "writes the seed corpus; run by hand after changing a generator"]
fn write_seed_corpus() {
    fuzz::write_corpus("frame_decode", &fuzz::seed_frames());
    fuzz::write_corpus("signal_parse", &fuzz::seed_signals());
}

#[test]
fn the_committed_seeds_are_the_generated_ones_and_pass() {
    for (target, seeds, run) in [
        (
            "frame_decode",
            fuzz::seed_frames(),
            fuzz::frame_decode as fn(&[u8]),
        ),
        ("signal_parse", fuzz::seed_signals(), fuzz::signal_parse),
    ] {
        let generated: Vec<Vec<u8>> = {
            let mut s = seeds;
            s.sort();
            s.into_iter().map(|(_, b)| b).collect()
        };
        let committed = fuzz::corpus(target);
        assert_eq!(
            committed, generated,
            "fuzz/corpus/{target} is stale: run `cargo test -p miostream-protocol --test fuzz -- --ignored`"
        );
        for seed in &committed {
            run(seed);
        }
    }
    // Every seed of the frame corpus is a valid frame, every signal seed a
    // valid message: mutations start from the real thing.
    for seed in fuzz::corpus("frame_decode") {
        assert!(miostream_protocol::FrameRef::decode(&seed).is_ok());
    }
    for seed in fuzz::corpus("signal_parse") {
        let text = String::from_utf8(seed).unwrap();
        assert!(
            miostream_protocol::PeerMessage::from_json(&text).is_ok()
                || miostream_protocol::SupervisorMessage::from_json(&text).is_ok(),
            "{text}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn frame_decode_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz::frame_decode(&data);
    }

    #[test]
    fn frame_decode_on_mutated_seeds(pick in any::<usize>(), raw in edits()) {
        fuzz::frame_decode(&fuzz::mutate_raw(&fuzz::corpus("frame_decode"), pick, &raw));
    }

    #[test]
    fn signal_parse_on_random_text(s in "\\PC{0,200}") {
        fuzz::signal_parse(s.as_bytes());
    }

    #[test]
    fn signal_parse_on_mutated_seeds(pick in any::<usize>(), raw in edits()) {
        fuzz::signal_parse(&fuzz::mutate_raw(&fuzz::corpus("signal_parse"), pick, &raw));
    }
}
