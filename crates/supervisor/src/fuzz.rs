//! Fuzzing harness of the supervisor's signal handling: arbitrary
//! `PeerMessage` JSON from authenticated peers entering
//! [`Manager::handle`], without sockets. Shared by the cargo-fuzz target
//! `manager_signals` (`fuzz/`, nightly) and the stable proptest runs
//! (`tests/fuzz.rs`) over random input and mutations of the committed seed
//! corpus. It panics exactly when an invariant breaks.
//!
//! The input is a sequence of records, `[ctl] [len: u16 LE] [len bytes of
//! JSON]` (a short last record takes what is left): `ctl & 7` picks the
//! sender among [`PEERS`] authenticated peers (peer 0 is a broadcaster, the
//! others receivers), `(ctl >> 3) & 15` is how many 50 ms pass first (the
//! manager's timers run when due), and bit 7 makes the sender's connection
//! drop after its message (it registers again on its next one). Text that
//! is not a valid message is what the connection refuses before the
//! manager; it only advances the clock here.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use miostream_auth::KeyFingerprint;
use miostream_protocol::fuzz::{record as records_record, records, seed_announce};
use miostream_protocol::signal::{Capacity, SignalPayload};
use miostream_protocol::{ComponentType, PeerId, PeerMessage, SupervisorMessage};
use miostream_topology::TopologyConfig;
use rand::SeedableRng;

use crate::manager::{Manager, ManagerConfig, Output, Placement};

/// Authenticated peers in the harness.
pub const PEERS: usize = 8;

/// Outputs one message (or one timer run, or one departure) may cause:
/// a reconfiguration of every peer and a few messages more each.
pub const MAX_OUTPUTS: usize = 8 * PEERS + 8;

/// Peer `i`'s id.
pub fn peer(i: usize) -> PeerId {
    PeerId::from_u128(0x5eed_0000 + i as u128)
}

fn role(i: usize) -> ComponentType {
    if i == 0 {
        ComponentType::Broadcaster
    } else {
        ComponentType::Receiver
    }
}

/// Target `manager_signals`: see the module docs for the input. Checks
/// that nothing panics, that each input causes at most [`MAX_OUTPUTS`]
/// outputs, that they address only peers that are connected (or, for a
/// disconnect, were), and that the manager never holds more peers than
/// are connected. Returns what the input reached (messages relayed, cut-offs).
pub fn manager_signals(data: &[u8]) -> Reach {
    let mut reach = Reach::default();
    let mut manager = Manager::new(ManagerConfig {
        topology: TopologyConfig::default(),
        bad_chunk_limit: 2,
        placement: Placement::default(),
    });
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let mut now = Instant::now();
    let mut connected: HashSet<PeerId> = HashSet::new();
    let check = |outputs: &[Output], connected: &HashSet<PeerId>, what: &str| {
        assert!(
            outputs.len() <= MAX_OUTPUTS,
            "{what} caused {} outputs",
            outputs.len()
        );
        for out in outputs {
            let (Output::Send(to, _) | Output::Disconnect(to, _, _)) = out;
            assert!(
                connected.contains(to),
                "{what}: output to a peer not connected: {out:?}"
            );
        }
    };
    for (ctl, text) in records(data) {
        now += Duration::from_millis(50 * u64::from((ctl >> 3) & 15));
        for _ in 0..4 {
            if manager.poll_timeout().is_none_or(|t| t > now) {
                break;
            }
            let outputs = manager.handle_timeout(now);
            check(&outputs, &connected, "a timer");
            forget_disconnected(&mut manager, &mut connected, &outputs, now);
        }
        let i = usize::from(ctl & 7);
        let from = peer(i);
        let Some(msg) = std::str::from_utf8(text)
            .ok()
            .and_then(|t| PeerMessage::from_json(t).ok())
        else {
            continue;
        };
        if !connected.contains(&from) {
            let key = KeyFingerprint([i as u8; 32]);
            if manager.register(from, role(i), key).is_ok() {
                connected.insert(from);
            }
        }
        let outputs = manager.handle(from, msg, now, &mut rng);
        check(&outputs, &connected, "a message");
        for out in &outputs {
            match out {
                Output::Send(_, SupervisorMessage::Signal { .. }) => reach.signals += 1,
                Output::Send(_, SupervisorMessage::Reconfigure { .. }) => {
                    reach.reconfigurations += 1
                }
                Output::Disconnect(..) => reach.cut_off += 1,
                _ => {}
            }
        }
        forget_disconnected(&mut manager, &mut connected, &outputs, now);
        if ctl & 0x80 != 0 && connected.remove(&from) {
            let outputs = manager.disconnected(from, now);
            check(&outputs, &connected, "a departure");
            forget_disconnected(&mut manager, &mut connected, &outputs, now);
        }
        assert!(
            manager.peer_count() <= connected.len(),
            "the manager holds {} peers, {} are connected",
            manager.peer_count(),
            connected.len()
        );
    }
    reach
}

/// What one input made the manager do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Signaling messages relayed.
    pub signals: usize,
    /// Reconfigurations sent.
    pub reconfigurations: usize,
    /// Peers cut off.
    pub cut_off: usize,
}

/// What the hub does with `Disconnect`: the connection goes, and its end
/// reaches the manager once more (which has forgotten it already).
fn forget_disconnected(
    manager: &mut Manager,
    connected: &mut HashSet<PeerId>,
    outputs: &[Output],
    now: Instant,
) {
    for out in outputs {
        if let Output::Disconnect(who, _, _) = out {
            if connected.remove(who) {
                let more = manager.disconnected(*who, now);
                assert!(
                    more.len() <= MAX_OUTPUTS,
                    "a cut-off caused {} outputs",
                    more.len()
                );
            }
        }
    }
}

/// One record of the harness's input.
pub fn record(sender: usize, steps_50ms: u8, drop_after: bool, msg: &PeerMessage) -> Vec<u8> {
    let ctl = (sender as u8 & 7) | ((steps_50ms & 15) << 3) | if drop_after { 0x80 } else { 0 };
    records_record(ctl, msg.to_json().as_bytes())
}

/// The seeds of `fuzz/corpus/manager_signals/`: a stream announced and
/// joined, signaling between neighbours and strangers, reports, QoS,
/// probes, departures and a reconnection.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let announce = seed_announce();
    let join = PeerMessage::JoinStream {
        name: "cam".into(),
        capacity: Capacity {
            upload_kbps: 50_000,
            rtt_ms: 1,
        },
    };
    let mut stream = record(0, 0, false, &announce);
    for i in 1..PEERS {
        stream.extend(record(i, 1, false, &join));
    }
    let offer = SignalPayload::Offer { sdp: "v=0".into() };
    let mut signals = stream.clone();
    for (from, to) in [(1, 0), (0, 1), (2, 5), (3, 1)] {
        signals.extend(record(
            from,
            0,
            false,
            &PeerMessage::Signal {
                to: peer(to),
                payload: offer.clone(),
            },
        ));
    }
    let mut reports = stream.clone();
    for (from, upstream) in [(3, 1), (4, 1), (2, 2), (5, 0), (6, 1)] {
        reports.extend(record(
            from,
            1,
            false,
            &PeerMessage::ReportBadChunk {
                upstream: peer(upstream),
                seq: 9,
                reason: "bad tag".into(),
                // One report's "evidence" is no chunk: the supervisor
                // disproves it and cuts the accuser out.
                chunk: (from == 3).then(|| "AAAA".into()),
            },
        ));
        reports.extend(record(
            from,
            0,
            false,
            &PeerMessage::ReportLagging {
                upstream: peer(upstream),
            },
        ));
    }
    let mut churn = stream.clone();
    churn.extend(record(
        1,
        2,
        false,
        &PeerMessage::QosReport {
            stalls: 0,
            stall_ms: 0,
            buffer_ms: 2000,
            goodput_bps: 1_200_000,
            chunks_received: 50,
            chunks_rejected: 0,
            latency_ms_p50: 2.0,
            parent_changes: 0,
            latency_ms_p99: 6.0,
            bytes_received: 750_000,
            bytes_from_broadcaster: 250_000,
        },
    ));
    churn.extend(record(2, 0, true, &PeerMessage::LeaveStream {}));
    churn.extend(record(2, 1, false, &join));
    churn.extend(record(3, 15, false, &PeerMessage::CapacityProbeRequest {}));
    churn.extend(record(
        3,
        0,
        false,
        &PeerMessage::CapacityProbe {
            padding: "x".repeat(32),
            last: true,
        },
    ));
    churn.extend(record(3, 0, false, &PeerMessage::AuthenticationResponse {}));
    churn.extend(record(0, 15, true, &PeerMessage::ListStreams {}));
    churn.extend(record(0, 1, false, &announce));
    vec![
        ("stream".to_owned(), stream),
        ("signals".to_owned(), signals),
        ("reports".to_owned(), reports),
        ("churn".to_owned(), churn),
    ]
}
