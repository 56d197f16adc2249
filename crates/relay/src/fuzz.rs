//! Fuzzing harness of a linked peer's bytes entering [`Relay::handle_frame`],
//! shared by the cargo-fuzz target `relay_frames` (`fuzz/`, nightly) and
//! the stable proptest runs (`tests/fuzz.rs`) over random bytes and
//! mutations of the committed seed corpus. It panics exactly when an
//! invariant breaks.
//!
//! The input is a sequence of records, each `[ctl] [len: u16 LE] [len
//! bytes]` (a short last record takes what is left): `ctl & 3` picks the
//! sender (0 the parent, 1 a child, 2 the backup parent, 3 a peer that is
//! not linked), `(ctl >> 2) & 31` is how many 10 ms pass first (the relay's
//! timers run when due), and bit 7 asks the harness to give a chunk a valid
//! tag — an authorized sender's chunk, so the fuzzer reaches the states
//! behind verification as well as the garbage before it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use miostream_protocol::fuzz::{
    record as records_record, records, seed_frames, seed_tag, SEED_STREAM,
};
use miostream_protocol::signal::Links;
use miostream_protocol::{ChunkRef, FrameRef, PeerId, TopologyKind, MAX_FRAME_LEN};

use crate::{Output, Refusal, Relay, RelayConfig, Verify};

/// The harness's integrity check: the tag is [`seed_tag`] of the chunk.
#[derive(Debug, Default)]
pub struct SeedVerify;

impl Verify for SeedVerify {
    fn verify(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal> {
        self.check_copy(chunk)
    }

    fn check_copy(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal> {
        if chunk.tag == seed_tag(&chunk.header, chunk.payload) {
            Ok(())
        } else {
            Err(Refusal::Forged("bad tag".into()))
        }
    }
}

/// Buffered media chunks the harness allows (small, so the bound is hit).
pub const MAX_BUFFERED: usize = 64;

fn peer(n: u128) -> PeerId {
    PeerId::from_u128(n)
}

/// Target `relay_frames`: see the module docs for the input. Checks, after
/// every frame:
/// - the bytes it makes the relay send (forwarding, replays, heartbeats)
///   stay within the link's replay budget plus a few frames per link;
/// - the buffer stays within its chunk limit, and the init segment within
///   [`crate::store::MAX_INIT_CHUNKS`];
/// - a forged-chunk report (`Rejected`) names the sender of this frame and
///   only ever follows a well-formed chunk of this stream with a bad tag:
///   garbage is never reported as forgery;
/// - everything delivered to the player is a chunk that passed the check.
///
/// Returns what the input reached, so tests can show the seeds get past
/// decoding and verification.
pub fn relay_frames(data: &[u8]) -> Reach {
    let mut reach = Reach::default();
    let config = RelayConfig {
        max_buffered_chunks: MAX_BUFFERED,
        ..RelayConfig::default()
    };
    let budget = config.repair_burst as usize;
    let (me, parent, child, backup, stranger) = (peer(1), peer(2), peer(3), peer(4), peer(5));
    let senders = [parent, child, backup, stranger];
    let mut now = Instant::now();
    let mut relay = Relay::receiver(me, SEED_STREAM, TopologyKind::Tree, config, SeedVerify, now);
    relay.set_links(
        Links {
            parents: vec![parent],
            children: vec![child],
            backup_parents: vec![backup],
            ..Links::default()
        },
        now,
    );
    for p in [parent, child, backup] {
        relay.link_up(p, now);
    }
    drain(&mut relay);
    // Payloads of chunks that passed the check, by sequence number.
    let mut authentic: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    for (ctl, body) in records(data) {
        let mut frame = body.to_vec();
        let from = senders[usize::from(ctl & 3)];
        now += Duration::from_millis(10 * u64::from((ctl >> 2) & 31));
        for _ in 0..4 {
            if relay.poll_timeout() > now {
                break;
            }
            relay.handle_timeout(now);
        }
        drain(&mut relay);
        if ctl & 0x80 != 0 {
            frame = retag(frame);
        }
        let decoded = FrameRef::decode(&frame).ok();
        if let Some(FrameRef::Chunk(c)) = decoded {
            if c.header.stream == SEED_STREAM && c.tag == seed_tag(&c.header, c.payload) {
                let held = authentic.entry(c.header.seq).or_default();
                if held.len() < 4 {
                    held.push(c.payload.to_vec());
                }
            }
        }
        relay.handle_frame(from, Bytes::from(frame.clone()), now);
        let mut sent = 0usize;
        for out in drain(&mut relay) {
            match out {
                Output::Send { frame, .. } => sent += frame.len(),
                Output::Garbage { .. } => reach.garbage_links += 1,
                Output::Rejected {
                    from: accused, seq, ..
                } => {
                    reach.rejected += 1;
                    assert_eq!(
                        accused, from,
                        "a report against someone other than the sender"
                    );
                    let Some(FrameRef::Chunk(c)) = decoded else {
                        panic!("a forgery report after a frame that is not a chunk: {decoded:?}");
                    };
                    assert_eq!(
                        c.header.stream, SEED_STREAM,
                        "another stream's chunk reported"
                    );
                    assert_eq!(c.header.seq, seq, "report for another sequence number");
                    assert_ne!(
                        c.tag,
                        seed_tag(&c.header, c.payload),
                        "a chunk with a valid tag reported as forged"
                    );
                }
                Output::Deliver { header, payload } => {
                    let ok = authentic
                        .get(&header.seq)
                        .is_some_and(|p| p.iter().any(|p| p[..] == payload[..]));
                    assert!(ok, "delivered chunk {} never passed the check", header.seq);
                    reach.delivered += 1;
                }
                _ => {}
            }
        }
        reach.sent += sent;
        let links = 3;
        assert!(
            sent <= budget + 4 * links * MAX_FRAME_LEN,
            "one frame made the relay send {sent} bytes"
        );
        assert!(relay.store().len() <= MAX_BUFFERED, "buffer over its limit");
        assert!(
            relay.store().init_frames().count() <= crate::store::MAX_INIT_CHUNKS,
            "init segment over its limit"
        );
    }
    reach
}

/// What one input made the relay do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Chunks delivered to the player.
    pub delivered: usize,
    /// Forged chunks reported.
    pub rejected: usize,
    /// Links closed for garbage.
    pub garbage_links: usize,
    /// Bytes sent on links after input frames (forwarding, replays).
    pub sent: usize,
}

fn drain(relay: &mut Relay<SeedVerify>) -> Vec<Output> {
    std::iter::from_fn(|| relay.poll_output()).collect()
}

/// A chunk given a valid tag (other frames unchanged).
fn retag(frame: Vec<u8>) -> Vec<u8> {
    let Ok(FrameRef::Chunk(c)) = FrameRef::decode(&frame) else {
        return frame;
    };
    let tag = seed_tag(&c.header, c.payload);
    let chunk = ChunkRef { tag: &tag, ..c };
    let mut out = Vec::new();
    match chunk.encode_into(&mut out) {
        Ok(()) => out,
        Err(_) => frame,
    }
}

/// One record of the harness's input.
pub fn record(sender: u8, steps_10ms: u8, retag: bool, frame: &[u8]) -> Vec<u8> {
    let ctl = (sender & 3) | ((steps_10ms & 31) << 2) | if retag { 0x80 } else { 0 };
    records_record(ctl, frame)
}

/// The seeds of `fuzz/corpus/relay_frames/`: a parent feeding init and
/// media, a child subscribing and asking for gaps, a backup parent sending
/// a forged chunk, another stream's chunk and undecodable bytes, a stranger.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f: HashMap<String, Vec<u8>> = seed_frames().into_iter().collect();
    let get = |name: &str| f.get(name).cloned().unwrap_or_default();
    let feed: Vec<u8> = [
        "chunk-init",
        "chunk-keyframe",
        "chunk-media",
        "chunk-cluster-end",
    ]
    .iter()
    .flat_map(|n| record(0, 1, false, &get(n)))
    .collect();
    let mut serve = feed.clone();
    for n in ["subscribe", "gap-request", "gap-request-max", "unsubscribe"] {
        serve.extend(record(1, 1, false, &get(n)));
    }
    let mut hostile = feed.clone();
    for (s, n) in [
        (2, "chunk-forged"),
        (2, "chunk-other-stream"),
        (2, "heartbeat"),
        (3, "chunk-media"),
    ] {
        hostile.extend(record(s, 2, false, &get(n)));
    }
    hostile.extend(record(2, 0, false, b"\x01\xffnot a frame"));
    hostile.extend(record(2, 0, false, b""));
    let mut timers = feed.clone();
    timers.extend(record(0, 31, false, &get("heartbeat")));
    timers.extend(record(1, 31, false, &get("heartbeat")));
    vec![
        ("feed".to_owned(), feed),
        ("serve".to_owned(), serve),
        ("hostile".to_owned(), hostile),
        ("timers".to_owned(), timers),
    ]
}
