//! Fuzzing harnesses, shared by the cargo-fuzz targets (`fuzz/`, nightly)
//! and the stable `cargo test` runs over the same inputs (proptest: random
//! bytes and mutations of the committed seed corpus). One function per
//! target: it panics exactly when an invariant breaks, so a fuzz target is
//! a one-line call and a proptest is a loop over inputs.
//!
//! Also the seed-corpus reader and the mutations every crate's stable run
//! applies to it (bit flips, truncations, splices, byte writes).

use std::path::{Path, PathBuf};

use crate::frame::MAX_GAP_COUNT;
use crate::signal::{Capacity, Links, SignalPayload};
use crate::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, ComponentType, Frame, FrameRef, IntegrityMode,
    PeerId, PeerMessage, StreamId, SubscribeFlags, SupervisorMessage, TopologyKind,
};

/// Target `frame_decode`: any bytes decode to a frame or a typed error,
/// never a panic, and whatever decodes re-encodes to the same bytes.
pub fn frame_decode(data: &[u8]) {
    if let Ok(frame) = FrameRef::decode(data) {
        let mut again = Vec::new();
        let encoded = frame.encode_into(&mut again);
        assert!(encoded.is_ok(), "a decoded frame encodes: {encoded:?}");
        assert_eq!(again, data, "decode → encode is not the identity");
    }
}

/// Target `signal_parse`: any text parses as a signaling message (either
/// direction) or a typed error, and what parses survives a round trip.
pub fn signal_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = PeerMessage::from_json(text) {
        let again = PeerMessage::from_json(&m.to_json());
        assert_eq!(again.as_ref().ok(), Some(&m), "peer message round trip");
    }
    if let Ok(m) = SupervisorMessage::from_json(text) {
        let again = SupervisorMessage::from_json(&m.to_json());
        assert_eq!(
            again.as_ref().ok(),
            Some(&m),
            "supervisor message round trip"
        );
    }
}

/// `fuzz/corpus/<target>/` of this repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The committed seed corpus of `target`, sorted by file name. Panics if it
/// is missing or empty: the stable runs must not silently test nothing.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "seed corpus {} is empty", dir.display());
    files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// Writes `seeds` as `fuzz/corpus/<target>/<name>` (the seed generators'
/// ignored tests call it), replacing what was there.
pub fn write_corpus(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = corpus_dir(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (name, bytes) in seeds {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The stable runs of a fuzz target, as a module `$name` of tests:
/// `$harness` on random bytes and on mutations of the committed corpus of
/// `$target`, `$cases` cases each; the committed corpus checked against
/// its generator `$seeds` (and run); and the ignored `write_seed_corpus`
/// that rewrites it (`cargo test -p CRATE -- --ignored write_seed_corpus`).
/// The calling crate needs proptest as a dev-dependency.
#[macro_export]
macro_rules! fuzz_proptests {
    ($name:ident, $target:literal, $harness:path, $cases:expr, seeds = $seeds:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use proptest::prelude::*;

            #[test]
            #[ignore = "writes the seed corpus; run by hand after changing its generator"]
            fn write_seed_corpus() {
                $crate::fuzz::write_corpus($target, &$seeds);
            }

            #[test]
            fn the_committed_seeds_are_current_and_pass() {
                let regenerate = concat!(
                    "cargo test -p ",
                    env!("CARGO_PKG_NAME"),
                    " -- --ignored write_seed_corpus"
                );
                for seed in $crate::fuzz::check_corpus($target, $seeds, regenerate) {
                    $harness(&seed);
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: $cases, ..ProptestConfig::default() })]

                #[test]
                fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
                    $harness(&data);
                }

                #[test]
                fn mutated_seeds(
                    pick in any::<usize>(),
                    raw in proptest::collection::vec(any::<(u8, usize, usize, usize)>(), 1..6),
                ) {
                    let seeds = $crate::fuzz::corpus($target);
                    $harness(&$crate::fuzz::mutate_raw(&seeds, pick, &raw));
                }
            }
        }
    };
}

/// The `ANNOUNCE_STREAM` the seeds use (a tree, HMAC, `cam`).
pub fn seed_announce() -> PeerMessage {
    PeerMessage::AnnounceStream {
        name: "cam".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume: None,
        title: "Friday talk".into(),
    }
}

/// Compares the committed seed corpus of `target` with what its generator
/// makes (`seeds`, in any order) and returns the seeds, sorted by name.
/// Panics if they differ, naming `regenerate`, the command that rewrites it.
pub fn check_corpus(
    target: &str,
    mut seeds: Vec<(String, Vec<u8>)>,
    regenerate: &str,
) -> Vec<Vec<u8>> {
    seeds.sort();
    let generated: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    assert!(
        corpus(target) == generated,
        "fuzz/corpus/{target} is stale: run `{regenerate}`"
    );
    generated
}

/// Splits a harness's input into records `[ctl] [len: u16 LE] [len
/// bytes]`; a short last record takes what is left. The harnesses that
/// drive a state machine read their input this way.
pub fn records(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> + '_ {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&ctl, tail) = rest.split_first()?;
        let len = match tail {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        let body = tail.get(2..).unwrap_or_default();
        let len = len.min(body.len());
        rest = &body[len..];
        Some((ctl, &body[..len]))
    })
}

/// One record (see [`records`]).
pub fn record(ctl: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len().min(usize::from(u16::MAX));
    let mut out = vec![ctl];
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&body[..len]);
    out
}

/// One edit of a seed, as a fuzzer's mutator makes them. Positions are
/// taken modulo the input's length, so any values make a valid edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Flip bit `bit % 8` of byte `at`.
    FlipBit {
        /// Byte position.
        at: usize,
        /// Bit.
        bit: u8,
    },
    /// Overwrite byte `at`.
    SetByte {
        /// Byte position.
        at: usize,
        /// New value.
        value: u8,
    },
    /// Keep only the first `len` bytes.
    Truncate {
        /// New length.
        len: usize,
    },
    /// Replace everything from `at` with `other`'s bytes from `from` (a
    /// splice of two seeds).
    Splice {
        /// Cut in this input.
        at: usize,
        /// Index of the other seed.
        other: usize,
        /// Cut in the other seed.
        from: usize,
    },
    /// Repeat the bytes `at..at+len` once more in place.
    Duplicate {
        /// Start.
        at: usize,
        /// Length (capped at 4 KiB).
        len: usize,
    },
}

/// Applies `edits` to seed `seeds[pick % len]` and returns the result.
pub fn mutate(seeds: &[Vec<u8>], pick: usize, edits: &[Mutation]) -> Vec<u8> {
    if seeds.is_empty() {
        return Vec::new();
    }
    let mut data = seeds[pick % seeds.len()].clone();
    for edit in edits {
        let n = data.len();
        match *edit {
            Mutation::FlipBit { at, bit } if n > 0 => data[at % n] ^= 1 << (bit % 8),
            Mutation::SetByte { at, value } if n > 0 => data[at % n] = value,
            Mutation::Truncate { len } => data.truncate(len % (n + 1)),
            Mutation::Splice { at, other, from } => {
                let other = &seeds[other % seeds.len()];
                data.truncate(at % (n + 1));
                data.extend_from_slice(&other[from % (other.len() + 1)..]);
            }
            Mutation::Duplicate { at, len } if n > 0 => {
                let at = at % n;
                let end = (at + len % 4096).min(n);
                let copy = data[at..end].to_vec();
                let tail = data.split_off(at);
                data.extend(copy);
                data.extend(tail);
            }
            _ => {}
        }
    }
    data
}

impl Mutation {
    /// A mutation from four random numbers (for generators that draw plain
    /// tuples, as proptest's `any::<(u8, usize, usize, usize)>()` does).
    pub fn from_raw((op, a, b, c): (u8, usize, usize, usize)) -> Self {
        match op % 5 {
            0 => Self::FlipBit {
                at: a,
                bit: b as u8,
            },
            1 => Self::SetByte {
                at: a,
                value: b as u8,
            },
            2 => Self::Truncate { len: a },
            3 => Self::Splice {
                at: a,
                other: b,
                from: c,
            },
            _ => Self::Duplicate { at: a, len: b },
        }
    }
}

/// [`mutate`] with the edits drawn as raw tuples ([`Mutation::from_raw`]).
pub fn mutate_raw(seeds: &[Vec<u8>], pick: usize, raw: &[(u8, usize, usize, usize)]) -> Vec<u8> {
    let edits: Vec<Mutation> = raw.iter().copied().map(Mutation::from_raw).collect();
    mutate(seeds, pick, &edits)
}

/// The stream the seed chunks and the relay harness use.
pub const SEED_STREAM: StreamId = StreamId(7);

/// A chunk of [`SEED_STREAM`] with a tag the harnesses' check accepts
/// ([`seed_tag`]) unless `forged`.
pub fn seed_chunk(
    seq: u64,
    kind: ChunkKind,
    flags: ChunkFlags,
    payload: &[u8],
    forged: bool,
) -> Chunk {
    let header = ChunkHeader {
        stream: SEED_STREAM,
        seq,
        kind,
        flags,
        timestamp_ms: seq * 40,
        send_time_us: seq * 40_000,
    };
    let mut tag = seed_tag(&header, payload).to_vec();
    if forged {
        tag[0] ^= 0xff;
    }
    Chunk {
        header,
        tag,
        payload: payload.to_vec(),
    }
}

/// The harnesses' stand-in for a cryptographic tag (no key, no crypto
/// crate: the relay and the fuzzers only need "the tag matches or not"):
/// FNV-1a over the tag preimage and the payload, 8 bytes.
pub fn seed_tag(header: &ChunkHeader, payload: &[u8]) -> [u8; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in header.tag_preimage(payload.len()).iter().chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_le_bytes()
}

/// One encoded frame of every kind (chunks: init, keyframe, media,
/// cluster end, forged, another stream's; heartbeat; subscribe; unsubscribe;
/// gap request), named for the corpus.
pub fn seed_frames() -> Vec<(String, Vec<u8>)> {
    let media =
        |seq, flags| Frame::Chunk(seed_chunk(seq, ChunkKind::Media, flags, b"media", false));
    let mut other = seed_chunk(3, ChunkKind::Media, ChunkFlags::empty(), b"other", false);
    other.header.stream = StreamId(99);
    let frames = [
        (
            "chunk-init",
            Frame::Chunk(seed_chunk(
                0,
                ChunkKind::Init,
                ChunkFlags::CLUSTER_START.with(ChunkFlags::CLUSTER_END),
                b"\x1a\x45\xdf\xa3init",
                false,
            )),
        ),
        (
            "chunk-keyframe",
            media(1, ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME)),
        ),
        ("chunk-media", media(2, ChunkFlags::empty())),
        ("chunk-cluster-end", media(3, ChunkFlags::CLUSTER_END)),
        (
            "chunk-forged",
            Frame::Chunk(seed_chunk(
                4,
                ChunkKind::Media,
                ChunkFlags::empty(),
                b"forged",
                true,
            )),
        ),
        ("chunk-other-stream", Frame::Chunk(other)),
        (
            "heartbeat",
            Frame::Heartbeat {
                counter: 5,
                time_us: 123_456,
                depth: 1,
            },
        ),
        (
            "subscribe",
            Frame::Subscribe {
                stream: SEED_STREAM,
                from: 1,
                flags: SubscribeFlags::NEED_INIT.with(SubscribeFlags::FROM_KEYFRAME),
            },
        ),
        (
            "unsubscribe",
            Frame::Unsubscribe {
                stream: SEED_STREAM,
            },
        ),
        (
            "gap-request",
            Frame::GapRequest {
                stream: SEED_STREAM,
                first: 1,
                count: 3,
            },
        ),
        (
            "gap-request-max",
            Frame::GapRequest {
                stream: SEED_STREAM,
                first: 0,
                count: MAX_GAP_COUNT,
            },
        ),
    ];
    frames
        .into_iter()
        .map(|(name, f)| (name.to_owned(), f.encode().unwrap_or_default()))
        .collect()
}

/// One JSON text of every signaling message type, both directions.
pub fn seed_signals() -> Vec<(String, Vec<u8>)> {
    let a = PeerId::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
    let b = PeerId::from_u128(0x9999_aaaa_bbbb_cccc_dddd_eeee_ffff_0000);
    let info = crate::signal::StreamInfo {
        id: SEED_STREAM,
        name: "cam".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Sign,
        media_type: "video/webm".into(),
        receivers: 2,
        title: "Friday talk".into(),
        bitrate_bps: 1_200_000,
    };
    let links = Links {
        parents: vec![a],
        children: vec![b],
        backup_parents: vec![],
        backup_children: vec![],
        neighbours: vec![],
    };
    let offer = SignalPayload::Offer {
        sdp: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n".into(),
    };
    let peer = [
        PeerMessage::CollectPeerInfoResponse {
            protocol_version: crate::PROTOCOL_VERSION,
            peer_id: a,
            public_key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
            component_type: ComponentType::Receiver,
        },
        PeerMessage::AuthenticationResponse {},
        PeerMessage::AuthenticationChallengeResponse {
            answer: "AAAA".into(),
        },
        seed_announce(),
        PeerMessage::ListStreams {},
        PeerMessage::JoinStream {
            name: "cam".into(),
            capacity: Capacity {
                upload_kbps: 10_000,
                rtt_ms: 2,
            },
        },
        PeerMessage::LeaveStream {},
        PeerMessage::Signal {
            to: b,
            payload: offer.clone(),
        },
        PeerMessage::Signal {
            to: b,
            payload: SignalPayload::Candidate {
                candidate: "candidate:1 1 UDP 1 127.0.0.1 9 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
            },
        },
        PeerMessage::ReportBadChunk {
            upstream: b,
            seq: 4,
            reason: "bad tag".into(),
            chunk: None,
        },
        PeerMessage::ReportLagging { upstream: b },
        PeerMessage::QosReport {
            stalls: 1,
            stall_ms: 40,
            buffer_ms: 2000,
            goodput_bps: 1_200_000,
            chunks_received: 100,
            chunks_rejected: 0,
            latency_ms_p50: 3.5,
            parent_changes: 0,
            latency_ms_p99: 9.25,
            bytes_received: 1_500_000,
            bytes_from_broadcaster: 500_000,
        },
        PeerMessage::CapacityProbeRequest {},
        PeerMessage::CapacityProbe {
            padding: "x".repeat(64),
            last: true,
        },
    ];
    let supervisor = [
        SupervisorMessage::CollectPeerInfoRequest {
            protocol_version: crate::PROTOCOL_VERSION,
        },
        SupervisorMessage::AuthenticationRequest {
            public_key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        },
        SupervisorMessage::AuthenticationChallengeRequest {
            nonce: "AAAA".into(),
        },
        SupervisorMessage::Authenticated {
            peer_id: a,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
        },
        SupervisorMessage::StreamAnnounced {
            stream: info.clone(),
            stream_key: "a2V5".into(),
        },
        SupervisorMessage::StreamList {
            streams: vec![info.clone()],
        },
        SupervisorMessage::StreamJoined {
            stream: info.clone(),
            stream_key: "a2V5".into(),
            signing_key: None,
            broadcaster: b,
        },
        SupervisorMessage::Reconfigure {
            stream: SEED_STREAM,
            epoch: 3,
            links,
        },
        SupervisorMessage::Signal {
            from: a,
            payload: offer,
        },
        SupervisorMessage::StreamEnded {
            stream: SEED_STREAM,
            reason: "broadcaster left".into(),
        },
        SupervisorMessage::InjectFailure {},
        SupervisorMessage::CapacityProbeAck { bytes: 49_152 },
        SupervisorMessage::CapacityProbeGrant {},
        SupervisorMessage::Error {
            code: crate::signal::ErrorCode::Forbidden,
            message: "not a neighbour".into(),
            fatal: false,
        },
    ];
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for m in peer {
        out.push((
            format!("peer-{}", m.name().to_ascii_lowercase()),
            m.to_json().into_bytes(),
        ));
    }
    for m in supervisor {
        out.push((
            format!("supervisor-{}", m.name().to_ascii_lowercase()),
            m.to_json().into_bytes(),
        ));
    }
    // Names repeat for messages sent twice with other payloads.
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for (name, _) in out.iter_mut() {
        let n = seen.entry(name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            name.push_str(&format!("-{n}"));
        }
    }
    out
}
