//! The node's own decisions on a simulated clock: the capacity probe before
//! joining, reopening a link the topology still wants, rejoining after a
//! supervisor restart, the end grace, make before break, failing when the
//! stream cannot be joined, and the player gate.

use std::time::{Duration, Instant};

use bytes::Bytes;
use miostream_node::{
    NodeCore, NodeCoreConfig, NodeEvent, NodeOutput, PlayerGate, TransportCommand, TransportEvent,
    END_GRACE, PROBE_BYTES, PROBE_MESSAGES, PROBE_TIMEOUT, PROBE_WAIT, REJOIN_DELAY, REOPEN_DELAY,
};
use miostream_protocol::signal::{Capacity, ErrorCode, Links, StreamInfo};
use miostream_protocol::{
    ChunkFlags, ChunkHeader, ChunkKind, Frame, IntegrityMode, PeerId, PeerMessage, StreamId,
    SupervisorMessage, TopologyKind,
};
use miostream_relay::{AcceptAll, RelayConfig};

const STREAM: StreamId = StreamId(7);

fn receiver(me: PeerId, capacity: Option<Capacity>) -> NodeCore {
    NodeCore::new(NodeCoreConfig {
        me,
        stream: "cam".into(),
        announce: None,
        relay: RelayConfig::default(),
        verifier: Box::new(|_| Box::new(AcceptAll)),
        capacity,
    })
}

fn drain(node: &mut NodeCore) -> Vec<NodeOutput> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

fn joined(broadcaster: PeerId) -> SupervisorMessage {
    SupervisorMessage::StreamJoined {
        stream: StreamInfo {
            id: STREAM,
            name: "cam".into(),
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Hmac,
            media_type: "video/webm".into(),
            receivers: 1,
            title: String::new(),
            bitrate_bps: 0,
        },
        stream_key: String::new(),
        signing_key: None,
        broadcaster,
    }
}

fn reconfigure(parents: &[PeerId]) -> SupervisorMessage {
    SupervisorMessage::Reconfigure {
        stream: STREAM,
        epoch: 1,
        links: Links {
            parents: parents.to_vec(),
            ..Links::default()
        },
    }
}

fn joins(out: &[NodeOutput]) -> Vec<Capacity> {
    out.iter()
        .filter_map(|o| match o {
            NodeOutput::Supervisor(PeerMessage::JoinStream { capacity, .. }) => Some(*capacity),
            _ => None,
        })
        .collect()
}

/// The joins among timed outputs, with when they were sent.
fn timed_joins(out: Vec<(Instant, NodeOutput)>) -> Vec<(Instant, Capacity)> {
    out.into_iter()
        .filter_map(|(t, o)| match o {
            NodeOutput::Supervisor(PeerMessage::JoinStream { capacity, .. }) => Some((t, capacity)),
            _ => None,
        })
        .collect()
}

fn opens(out: &[NodeOutput]) -> Vec<(PeerId, bool)> {
    out.iter()
        .filter_map(|o| match o {
            NodeOutput::Transport(TransportCommand::Open { peer, initiator }) => {
                Some((*peer, *initiator))
            }
            _ => None,
        })
        .collect()
}

fn closes(out: &[NodeOutput]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            NodeOutput::Transport(TransportCommand::Close { peer }) => Some(*peer),
            _ => None,
        })
        .collect()
}

/// Runs the node's timers from `from` to `to` in 10 ms steps (as a driver
/// would, late by at most a step), collecting the outputs with their time.
fn run(node: &mut NodeCore, from: Instant, to: Instant) -> Vec<(Instant, NodeOutput)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
            // A timer the core does not move would make a driver spin.
            assert!(
                node.poll_timeout().is_none_or(|t| t > now),
                "timer still due"
            );
        }
        out.extend(drain(node).into_iter().map(|o| (now, o)));
        now += Duration::from_millis(10);
    }
    out
}

/// A receiver joined at `t0` with the broadcaster `b` as its parent.
fn joined_receiver(me: PeerId, b: PeerId, t0: Instant) -> NodeCore {
    let mut node = receiver(me, Some(Capacity::default()));
    node.connected(t0);
    node.handle_supervisor(joined(b), t0);
    node.handle_supervisor(reconfigure(&[b]), t0);
    drain(&mut node);
    node
}

#[test]
fn a_receiver_measures_its_uplink_before_it_joins() {
    let t0 = Instant::now();
    let mut node = receiver(PeerId::from_u128(2), None);
    node.connected(t0);
    // It asks for a slot first, and sends the probe once granted.
    let out = drain(&mut node);
    assert!(
        matches!(
            out[..],
            [NodeOutput::Supervisor(PeerMessage::CapacityProbeRequest {})]
        ),
        "{out:?}"
    );
    node.handle_supervisor(SupervisorMessage::CapacityProbeGrant {}, t0);
    let out = drain(&mut node);
    let probes = out
        .iter()
        .filter(|o| matches!(o, NodeOutput::Supervisor(PeerMessage::CapacityProbe { .. })))
        .count();
    assert_eq!(probes, PROBE_MESSAGES);
    assert!(joins(&out).is_empty(), "it joins only once measured");
    // The supervisor has every byte 100 ms later: 192 KiB in 0.1 s.
    let bytes = (PROBE_MESSAGES * PROBE_BYTES) as u64;
    let ack = SupervisorMessage::CapacityProbeAck { bytes };
    node.handle_supervisor(ack, t0 + Duration::from_millis(100));
    let join = joins(&drain(&mut node));
    assert_eq!(join.len(), 1);
    assert_eq!(join[0].upload_kbps, (bytes * 8 / 100) as u32);
    // A reconnect joins again with the same measurement, without probing.
    node.connected(t0 + Duration::from_secs(5));
    assert_eq!(joins(&drain(&mut node)), join);
}

#[test]
fn an_unanswered_probe_reports_the_slowest_uplink_it_could_be_and_joins() {
    let t0 = Instant::now();
    let mut node = receiver(PeerId::from_u128(2), None);
    node.connected(t0);
    node.handle_supervisor(SupervisorMessage::CapacityProbeGrant {}, t0);
    drain(&mut node);
    assert_eq!(node.poll_timeout(), Some(t0 + PROBE_TIMEOUT));
    let out = run(&mut node, t0, t0 + PROBE_TIMEOUT);
    let join = timed_joins(out);
    assert_eq!(join.len(), 1);
    assert_eq!(join[0].0, t0 + PROBE_TIMEOUT);
    let bytes = (PROBE_MESSAGES * PROBE_BYTES) as u64;
    assert_eq!(
        u64::from(join[0].1.upload_kbps),
        bytes * 8 / PROBE_TIMEOUT.as_millis() as u64
    );
}

#[test]
fn a_probe_slot_never_granted_joins_unmeasured_and_a_new_session_asks_again() {
    let t0 = Instant::now();
    let mut node = receiver(PeerId::from_u128(2), None);
    node.connected(t0);
    drain(&mut node);
    assert_eq!(node.poll_timeout(), Some(t0 + PROBE_WAIT));
    // The session drops while waiting: the next one asks again.
    let t1 = t0 + Duration::from_secs(1);
    node.connected(t1);
    let out = drain(&mut node);
    assert!(matches!(
        out[..],
        [NodeOutput::Supervisor(PeerMessage::CapacityProbeRequest {})]
    ));
    let out = run(&mut node, t1, t1 + PROBE_WAIT);
    let join = timed_joins(out);
    assert_eq!(join, [(t1 + PROBE_WAIT, Capacity::default())]);
    // A late grant changes nothing.
    node.handle_supervisor(SupervisorMessage::CapacityProbeGrant {}, t1 + PROBE_WAIT);
    assert!(drain(&mut node).is_empty());
}

#[test]
fn a_link_that_goes_down_while_wanted_is_opened_again_and_only_then() {
    let t0 = Instant::now();
    let (me, b) = (PeerId::from_u128(2), PeerId::from_u128(1));
    let mut node = receiver(me, Some(Capacity::default()));
    node.connected(t0);
    node.handle_supervisor(joined(b), t0);
    node.handle_supervisor(reconfigure(&[b]), t0);
    // We have the larger id: the broadcaster offers.
    assert_eq!(opens(&drain(&mut node)), vec![(b, false)]);
    node.handle_link(TransportEvent::Down(b), t0);
    let out = run(&mut node, t0, t0 + REOPEN_DELAY * 2);
    let reopened: Vec<Instant> = out
        .iter()
        .filter(|(_, o)| matches!(o, NodeOutput::Transport(TransportCommand::Open { peer, .. }) if *peer == b))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(reopened, vec![t0 + REOPEN_DELAY]);
    // Down again, and the topology drops the link before the delay: no reopen.
    let t1 = t0 + Duration::from_secs(1);
    node.handle_link(TransportEvent::Down(b), t1);
    node.handle_supervisor(reconfigure(&[]), t1);
    let out = run(&mut node, t1, t1 + REOPEN_DELAY * 2);
    assert!(opens(&out.into_iter().map(|(_, o)| o).collect::<Vec<_>>()).is_empty());
}

#[test]
fn the_smaller_id_offers_when_a_link_is_opened_again() {
    let t0 = Instant::now();
    let (me, parent) = (PeerId::from_u128(1), PeerId::from_u128(9));
    let mut node = joined_receiver(me, parent, t0);
    node.handle_link(TransportEvent::Down(parent), t0);
    let out: Vec<NodeOutput> = run(&mut node, t0, t0 + REOPEN_DELAY)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(opens(&out), vec![(parent, true)]);
}

#[test]
fn a_receiver_rejoins_after_a_supervisor_restart_once_the_stream_is_back() {
    let t0 = Instant::now();
    let b = PeerId::from_u128(1);
    let mut node = joined_receiver(PeerId::from_u128(2), b, t0);
    // The restarted supervisor does not know the stream yet.
    let t1 = t0 + Duration::from_secs(2);
    node.connected(t1);
    assert_eq!(joins(&drain(&mut node)).len(), 1);
    node.handle_supervisor(
        SupervisorMessage::Error {
            code: ErrorCode::StreamNotFound,
            message: "no such stream".into(),
            fatal: false,
        },
        t1,
    );
    let out = run(&mut node, t1, t1 + REJOIN_DELAY * 2);
    let rejoined: Vec<Instant> = out
        .iter()
        .filter(|(_, o)| matches!(o, NodeOutput::Supervisor(PeerMessage::JoinStream { .. })))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(rejoined, vec![t1 + REJOIN_DELAY]);
    assert!(!node.is_done(), "the stream kept flowing meanwhile");
}

#[test]
fn a_stream_that_cannot_be_joined_fails_the_node() {
    let t0 = Instant::now();
    let mut node = receiver(PeerId::from_u128(2), Some(Capacity::default()));
    node.connected(t0);
    node.handle_supervisor(
        SupervisorMessage::Error {
            code: ErrorCode::StreamNotFound,
            message: "no stream named cam".into(),
            fatal: false,
        },
        t0,
    );
    let out = drain(&mut node);
    assert!(matches!(
        out.last(),
        Some(NodeOutput::App(NodeEvent::Failed(m))) if m == "no stream named cam"
    ));
    assert!(node.is_done());
    assert_eq!(node.poll_timeout(), None);
}

#[test]
fn an_ended_stream_keeps_relaying_for_the_grace_then_ends() {
    let t0 = Instant::now();
    let b = PeerId::from_u128(1);
    let mut node = joined_receiver(PeerId::from_u128(2), b, t0);
    node.handle_link(TransportEvent::Up(b), t0);
    node.handle_supervisor(
        SupervisorMessage::StreamEnded {
            stream: STREAM,
            reason: "broadcaster left".into(),
        },
        t0,
    );
    let out = run(&mut node, t0, t0 + END_GRACE * 2);
    let ended: Vec<Instant> = out
        .iter()
        .filter(
            |(_, o)| matches!(o, NodeOutput::App(NodeEvent::Ended(r)) if r == "broadcaster left"),
        )
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(ended, vec![t0 + END_GRACE]);
    // It heartbeated its link during the grace: still relaying.
    let sent_in_grace = out.iter().any(|(t, o)| {
        *t < t0 + END_GRACE && matches!(o, NodeOutput::Transport(TransportCommand::Send { .. }))
    });
    assert!(sent_in_grace);
    assert!(node.is_done());
    node.handle_link(
        TransportEvent::Frame(b, Bytes::from_static(b"x")),
        t0 + END_GRACE * 3,
    );
    assert!(drain(&mut node).is_empty(), "a done node does nothing");
}

#[test]
fn a_live_link_the_topology_drops_closes_only_when_the_relay_retires_it() {
    let t0 = Instant::now();
    let (old, new) = (PeerId::from_u128(1), PeerId::from_u128(3));
    let mut node = joined_receiver(PeerId::from_u128(2), old, t0);
    node.handle_link(TransportEvent::Up(old), t0);
    drain(&mut node);
    // Moved under `new`: `old` keeps feeding until `new` is up (it never
    // comes up here), so it closes after the retire grace, not at once.
    node.handle_supervisor(reconfigure(&[new]), t0);
    let now_out = drain(&mut node);
    assert_eq!(opens(&now_out), vec![(new, true)]);
    assert!(closes(&now_out).is_empty(), "make before break");
    // `old` stays alive (heartbeats every 50 ms) until it is closed.
    let grace = RelayConfig::default().retire_grace;
    let mut closed = None;
    let mut now = t0;
    while closed.is_none() && now <= t0 + grace * 2 {
        node.handle_link(TransportEvent::Frame(old, heartbeat()), now);
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        if closes(&drain(&mut node)).contains(&old) {
            closed = Some(now);
        }
        now += Duration::from_millis(50);
    }
    let closed = closed.expect("the retired link was closed");
    assert!(closed >= t0 + grace, "closed before the retire grace");
    assert!(closed <= t0 + grace + Duration::from_millis(100));
}

fn heartbeat() -> Bytes {
    let hb = Frame::Heartbeat {
        counter: 1,
        time_us: 0,
        depth: 0,
    };
    Bytes::from(hb.encode().expect("encodes"))
}

fn chunk(seq: u64, keyframe_cluster: bool) -> NodeEvent {
    let flags = if keyframe_cluster {
        ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME)
    } else {
        ChunkFlags::default()
    };
    NodeEvent::Deliver {
        header: ChunkHeader {
            stream: STREAM,
            seq,
            timestamp_ms: seq * 100,
            kind: ChunkKind::Media,
            flags,
            send_time_us: 0,
        },
        payload: Bytes::new(),
    }
}

#[test]
fn a_full_player_queue_skips_to_the_next_keyframe_cluster() {
    let mut gate = PlayerGate::new();
    let mut queued = Vec::new();
    let mut admit = |gate: &mut PlayerGate, ev, room| {
        let mut got = Vec::new();
        gate.admit(ev, room, |e| got.push(e));
        assert!(got.len() <= room, "never more than the queue holds");
        queued.extend(got.iter().map(|e| match e {
            NodeEvent::Deliver { header, .. } => format!("d{}", header.seq),
            NodeEvent::Skipped { first, count } => format!("s{first}+{count}"),
            other => format!("{other:?}"),
        }));
    };
    admit(&mut gate, chunk(0, true), 5);
    admit(&mut gate, chunk(1, false), 0); // full: skipping from 1
    assert!(gate.is_skipping());
    admit(&mut gate, chunk(2, false), 5); // room again, but not a keyframe
    admit(&mut gate, chunk(3, true), 1); // a keyframe, but no room for two
    admit(&mut gate, chunk(4, true), 2); // resumes here
    admit(&mut gate, chunk(5, false), 2);
    assert_eq!(queued, vec!["d0", "s1+3", "d4", "d5"]);
    assert!(!gate.is_skipping());
}

#[test]
fn a_link_closed_for_garbage_is_not_set_up_again_and_never_reported_as_forgery() {
    let t0 = Instant::now();
    // The garbage sender has the smaller id: it would be the one to offer.
    let (garbler, me, honest) = (
        PeerId::from_u128(1),
        PeerId::from_u128(5),
        PeerId::from_u128(9),
    );
    let mut node = joined_receiver(me, honest, t0);
    let links = Links {
        parents: vec![honest],
        children: vec![garbler],
        ..Links::default()
    };
    node.handle_supervisor(
        SupervisorMessage::Reconfigure {
            stream: STREAM,
            epoch: 2,
            links: links.clone(),
        },
        t0,
    );
    node.handle_link(TransportEvent::Up(honest), t0);
    node.handle_link(TransportEvent::Up(garbler), t0);
    drain(&mut node);
    let mut out = Vec::new();
    for i in 0..miostream_relay::GARBAGE_ALLOWANCE {
        node.handle_link(
            TransportEvent::Frame(garbler, Bytes::from(vec![0xba, 0xd0, i as u8])),
            t0,
        );
        out.extend(drain(&mut node));
    }
    assert_eq!(closes(&out), vec![garbler]);
    assert!(
        !out.iter().any(|o| matches!(
            o,
            NodeOutput::Supervisor(PeerMessage::ReportBadChunk { .. })
        )),
        "{out:?}"
    );
    // It is no relay, though: the supervisor hears so (two such reports
    // demote a relay to a leaf, never cut it out).
    let unfit: Vec<PeerId> = out
        .iter()
        .filter_map(|o| match o {
            NodeOutput::Supervisor(PeerMessage::ReportLagging { upstream }) => Some(*upstream),
            _ => None,
        })
        .collect();
    assert_eq!(unfit, vec![garbler]);
    // The transport reports the close; the topology still links us, yet
    // nothing sets the link up again, and its offers are not taken.
    node.handle_link(TransportEvent::Down(garbler), t0);
    let offer = SupervisorMessage::Signal {
        from: garbler,
        payload: miostream_protocol::signal::SignalPayload::Offer { sdp: "v=0".into() },
    };
    node.handle_supervisor(offer, t0 + REOPEN_DELAY);
    let mut out: Vec<NodeOutput> = drain(&mut node);
    out.extend(
        run(&mut node, t0, t0 + REOPEN_DELAY * 5)
            .into_iter()
            .map(|(_, o)| o),
    );
    assert!(opens(&out).is_empty(), "{out:?}");
    assert!(!out
        .iter()
        .any(|o| matches!(o, NodeOutput::Transport(TransportCommand::Signal { .. }))));
    // The honest parent's link stays: its signaling still goes through.
    let offer = SupervisorMessage::Signal {
        from: honest,
        payload: miostream_protocol::signal::SignalPayload::Offer { sdp: "v=0".into() },
    };
    node.handle_supervisor(offer, t0 + REOPEN_DELAY * 5);
    assert!(drain(&mut node)
        .iter()
        .any(|o| matches!(o, NodeOutput::Transport(TransportCommand::Signal { .. }))));
}
