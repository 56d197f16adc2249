//! The `frame_decode` and `signal_parse` fuzz targets on the stable
//! toolchain: the same harnesses as `fuzz/fuzz_targets/`, fed random bytes
//! and mutations (bit flips, byte writes, truncations, splices,
//! duplications) of the committed seed corpus `fuzz/corpus/<target>/`.
//! `cargo test -p miostream-protocol -- --ignored write_seed_corpus`
//! rewrites the corpus from the seed generators.

use miostream_protocol::fuzz;
use proptest::prelude::*;

#[test]
fn every_seed_is_a_valid_frame_or_message() {
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

miostream_protocol::fuzz_proptests!(
    frames,
    "frame_decode",
    miostream_protocol::fuzz::frame_decode,
    1000,
    seeds = miostream_protocol::fuzz::seed_frames()
);
miostream_protocol::fuzz_proptests!(
    signals,
    "signal_parse",
    miostream_protocol::fuzz::signal_parse,
    1000,
    seeds = miostream_protocol::fuzz::seed_signals()
);

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn signal_parse_on_random_text(s in "\\PC{0,200}") {
        fuzz::signal_parse(s.as_bytes());
    }
}
