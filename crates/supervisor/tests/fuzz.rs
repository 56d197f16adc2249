//! The `manager_signals` fuzz target on the stable toolchain: the harness
//! of `fuzz/fuzz_targets/manager_signals.rs` (authenticated peers' messages
//! entering the manager, with bounded outputs addressed only to connected
//! peers) fed random records, random messages and mutations of the
//! committed seed corpus. `cargo test -p miostream-supervisor -- --ignored
//! write_seed_corpus` rewrites the corpus.

use miostream_protocol::fuzz as pfuzz;
use miostream_supervisor::fuzz::{manager_signals, record, PEERS};
use proptest::prelude::*;

const TARGET: &str = "manager_signals";

#[test]
fn the_seeds_get_past_parsing() {
    let generated = pfuzz::corpus(TARGET);
    // Together they get past parsing: signals relayed between neighbours,
    // reconfigurations, a lone accuser or a reported relay cut off.
    let (mut signals, mut reconfigurations, mut cut_off) = (0, 0, 0);
    for seed in &generated {
        let r = manager_signals(seed);
        signals += r.signals;
        reconfigurations += r.reconfigurations;
        cut_off += r.cut_off;
    }
    assert!(
        signals > 0 && reconfigurations > 0,
        "{signals} signals, {reconfigurations} reconfigurations"
    );
    assert!(cut_off > 0, "no report led to a cut-off");
}

miostream_protocol::fuzz_proptests!(
    stable,
    "manager_signals",
    miostream_supervisor::fuzz::manager_signals,
    512,
    seeds = miostream_supervisor::fuzz::seeds()
);

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every signaling message type (the `signal_parse` seeds, mutated: a
    /// fuzzer's peer messages) from random peers at random times: the
    /// manager's reaction to any message in any state.
    #[test]
    fn mutated_messages_from_random_peers(picks in proptest::collection::vec((any::<u8>(), any::<usize>(), proptest::collection::vec(any::<(u8, usize, usize, usize)>(), 0..2)), 1..40)) {
        let signals = pfuzz::corpus("signal_parse");
        let streams = pfuzz::corpus(TARGET);
        // Start from a live stream so joins, signals and reports land.
        let mut data = streams[streams.len() - 1].clone();
        for (ctl, pick, raw) in picks {
            let text = pfuzz::mutate_raw(&signals, pick, &raw);
            let Some(msg) = std::str::from_utf8(&text).ok().and_then(|t| miostream_protocol::PeerMessage::from_json(t).ok()) else {
                continue;
            };
            data.extend(record(usize::from(ctl) % PEERS, (ctl >> 3) & 15, ctl & 0x80 != 0, &msg));
        }
        let _ = manager_signals(&data);
    }
}
