//! Round trips for arbitrary values (the decoders on arbitrary bytes and
//! text, and on mutated seeds: `tests/fuzz.rs`).

#![allow(clippy::unwrap_used)] // generated values are valid by construction

use miostream_protocol::frame::MAX_GAP_COUNT;
use miostream_protocol::signal::{Capacity, Links, SignalPayload, StreamInfo};
use miostream_protocol::*;
use proptest::prelude::*;

fn peer_id() -> impl Strategy<Value = PeerId> {
    any::<u128>()
        .prop_map(|n| PeerId(uuid::Builder::from_random_bytes(n.to_le_bytes()).into_uuid()))
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        0u8..8,
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..=MAX_TAG_LEN),
        proptest::collection::vec(any::<u8>(), 0..=2048),
    )
        .prop_map(|(stream, seq, init, flags, ts, sent, tag, payload)| {
            let kind = if init {
                ChunkKind::Init
            } else {
                ChunkKind::Media
            };
            let mut flags = ChunkFlags::from_bits(flags).unwrap_or_default();
            if init && flags.contains(ChunkFlags::KEYFRAME) {
                flags = ChunkFlags::CLUSTER_START;
            }
            Chunk {
                header: ChunkHeader {
                    stream: StreamId(stream),
                    seq,
                    kind,
                    flags,
                    timestamp_ms: ts,
                    send_time_us: sent,
                },
                tag,
                payload,
            }
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        chunk().prop_map(Frame::Chunk),
        (any::<u64>(), any::<u64>(), any::<u16>()).prop_map(|(counter, time_us, depth)| {
            Frame::Heartbeat {
                counter,
                time_us,
                depth,
            }
        }),
        (any::<u64>(), any::<u64>(), 0u8..4).prop_map(|(s, from, f)| Frame::Subscribe {
            stream: StreamId(s),
            from,
            flags: SubscribeFlags::from_bits(f).unwrap(),
        }),
        any::<u64>().prop_map(|s| Frame::Unsubscribe {
            stream: StreamId(s)
        }),
        (any::<u64>(), any::<u64>(), 0..=MAX_GAP_COUNT).prop_map(|(s, first, count)| {
            Frame::GapRequest {
                stream: StreamId(s),
                first,
                count,
            }
        }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn links() -> impl Strategy<Value = Links> {
    let ids = || proptest::collection::vec(peer_id(), 0..4);
    (ids(), ids(), ids(), ids(), ids()).prop_map(
        |(parents, children, backup_parents, backup_children, neighbours)| Links {
            parents,
            children,
            backup_parents,
            backup_children,
            neighbours,
        },
    )
}

fn payload() -> impl Strategy<Value = SignalPayload> {
    prop_oneof![
        text().prop_map(|sdp| SignalPayload::Offer { sdp }),
        text().prop_map(|sdp| SignalPayload::Answer { sdp }),
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(any::<u16>())
        )
            .prop_map(
                |(candidate, sdp_mid, sdp_mline_index)| SignalPayload::Candidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index
                }
            ),
    ]
}

fn stream_info() -> impl Strategy<Value = StreamInfo> {
    (
        any::<u64>(),
        text(),
        0..3u8,
        any::<bool>(),
        text(),
        any::<u32>(),
    )
        .prop_map(|(id, name, t, sign, media_type, receivers)| StreamInfo {
            id: StreamId(id),
            name,
            topology: [TopologyKind::List, TopologyKind::Tree, TopologyKind::Mesh][t as usize],
            integrity: if sign {
                IntegrityMode::Sign
            } else {
                IntegrityMode::Hmac
            },
            media_type,
            receivers,
            title: String::new(),
            bitrate_bps: 0,
        })
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        (any::<u8>(), peer_id(), text(), any::<bool>()).prop_map(|(v, id, key, b)| {
            PeerMessage::CollectPeerInfoResponse {
                protocol_version: v,
                peer_id: id,
                public_key: key,
                component_type: if b {
                    ComponentType::Broadcaster
                } else {
                    ComponentType::Receiver
                },
            }
        }),
        Just(PeerMessage::AuthenticationResponse {}),
        text().prop_map(|answer| PeerMessage::AuthenticationChallengeResponse { answer }),
        (text(), proptest::option::of(text())).prop_map(|(name, signing_key)| {
            PeerMessage::AnnounceStream {
                name,
                topology: TopologyKind::Mesh,
                integrity: IntegrityMode::Sign,
                media_type: "video/webm".into(),
                signing_key,
                resume: None,
                title: String::new(),
            }
        }),
        Just(PeerMessage::ListStreams {}),
        (text(), any::<u32>(), any::<u32>()).prop_map(|(name, upload_kbps, rtt_ms)| {
            PeerMessage::JoinStream {
                name,
                capacity: Capacity {
                    upload_kbps,
                    rtt_ms,
                },
            }
        }),
        Just(PeerMessage::LeaveStream {}),
        (peer_id(), payload()).prop_map(|(to, payload)| PeerMessage::Signal { to, payload }),
        (
            peer_id(),
            any::<u64>(),
            text(),
            proptest::option::of(text())
        )
            .prop_map(|(upstream, seq, reason, chunk)| {
                PeerMessage::ReportBadChunk {
                    upstream,
                    seq,
                    reason,
                    chunk,
                }
            }),
        (
            proptest::array::uniform9(any::<u64>()),
            0..=1_000_000_000_000u64
        )
            .prop_map(|(n, latency_us)| PeerMessage::QosReport {
                stalls: n[0],
                stall_ms: n[1],
                buffer_ms: n[2],
                goodput_bps: n[3],
                chunks_received: n[4],
                chunks_rejected: n[5],
                // What a report keeps: microseconds.
                latency_ms_p50: latency_us as f64 / 1000.0,
                parent_changes: n[6],
                latency_ms_p99: ((latency_us * 2) % 1_000_000_000_001) as f64 / 1000.0,
                bytes_received: n[7],
                bytes_from_broadcaster: n[8],
            }),
        (text(), any::<bool>())
            .prop_map(|(padding, last)| PeerMessage::CapacityProbe { padding, last }),
        peer_id().prop_map(|upstream| PeerMessage::ReportLagging { upstream }),
        Just(PeerMessage::CapacityProbeRequest {}),
    ]
}

fn supervisor_message() -> impl Strategy<Value = SupervisorMessage> {
    prop_oneof![
        any::<u8>().prop_map(|v| SupervisorMessage::CollectPeerInfoRequest {
            protocol_version: v
        }),
        text().prop_map(|k| SupervisorMessage::AuthenticationRequest { public_key: k }),
        text().prop_map(|n| SupervisorMessage::AuthenticationChallengeRequest { nonce: n }),
        (peer_id(), any::<u64>(), any::<u64>()).prop_map(|(p, i, t)| {
            SupervisorMessage::Authenticated {
                peer_id: p,
                heartbeat_interval_ms: i,
                heartbeat_timeout_ms: t,
            }
        }),
        (stream_info(), text()).prop_map(|(stream, stream_key)| {
            SupervisorMessage::StreamAnnounced { stream, stream_key }
        }),
        proptest::collection::vec(stream_info(), 0..3)
            .prop_map(|streams| SupervisorMessage::StreamList { streams }),
        (
            stream_info(),
            text(),
            proptest::option::of(text()),
            peer_id()
        )
            .prop_map(|(stream, stream_key, signing_key, broadcaster)| {
                SupervisorMessage::StreamJoined {
                    stream,
                    stream_key,
                    signing_key,
                    broadcaster,
                }
            }),
        (any::<u64>(), any::<u64>(), links()).prop_map(|(s, epoch, links)| {
            SupervisorMessage::Reconfigure {
                stream: StreamId(s),
                epoch,
                links,
            }
        }),
        (peer_id(), payload())
            .prop_map(|(from, payload)| SupervisorMessage::Signal { from, payload }),
        (any::<u64>(), text()).prop_map(|(s, reason)| SupervisorMessage::StreamEnded {
            stream: StreamId(s),
            reason
        }),
        Just(SupervisorMessage::InjectFailure {}),
        any::<u64>().prop_map(|bytes| SupervisorMessage::CapacityProbeAck { bytes }),
        Just(SupervisorMessage::CapacityProbeGrant {}),
        (text(), any::<bool>()).prop_map(|(message, fatal)| SupervisorMessage::Error {
            code: signal::ErrorCode::Forbidden,
            message,
            fatal
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = f.encode().unwrap();
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(Frame::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn mutated_frames_decode_or_error_but_never_panic(f in frame(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = f.encode().unwrap();
        let i = at % bytes.len();
        bytes[i] = byte;
        // Whatever decodes re-encodes to the same bytes: no ambiguity.
        miostream_protocol::fuzz::frame_decode(&bytes);
    }

    #[test]
    fn peer_messages_round_trip(m in peer_message()) {
        prop_assert_eq!(PeerMessage::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn supervisor_messages_round_trip(m in supervisor_message()) {
        prop_assert_eq!(SupervisorMessage::from_json(&m.to_json()).unwrap(), m);
    }
}
