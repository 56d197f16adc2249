//! Real WebRTC data channels on loopback between nodes arranged by a real
//! supervisor: every receiver plays every chunk; a relay killed in the
//! middle of a list or inside a tree costs no chunk at any survivor; a
//! relay that forges chunks (sign mode) is rejected by its children, cut
//! out by the supervisor, and no honest receiver plays a forged chunk.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use miostream_integrity::{SourceKey, Tagger};
use miostream_peer::transport::{TransportCommand, TransportHandle};
use miostream_peer::{
    integrity_check, spawn_node, Announcement, Identity, NodeConfig, NodeEvent, NodeHandle,
    SessionConfig, VerifierFactory,
};
use miostream_protocol::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, ComponentType, Frame, IntegrityMode, PeerId,
    StreamId, TopologyKind,
};
use miostream_relay::{AcceptAll, RelayConfig};
use miostream_test_support::supervisor::{keys, TestSupervisor, WAIT};
use miostream_webrtc::WebRtcConfig;
use tokio::sync::mpsc;

fn node(sup: &TestSupervisor, key: usize, announce: Option<Announcement>) -> NodeHandle {
    node_with(sup, key, announce, Box::new(|_| Box::new(AcceptAll)), false)
}

/// A node over WebRTC; `verifier` checks its chunks; a `forger` flips a
/// byte of every chunk it sends (tag untouched), like a tampered relay.
fn node_with(
    sup: &TestSupervisor,
    key: usize,
    announce: Option<Announcement>,
    verifier: VerifierFactory,
    forger: bool,
) -> NodeHandle {
    let role = if announce.is_some() {
        ComponentType::Broadcaster
    } else {
        ComponentType::Receiver
    };
    let peer_id = PeerId::random();
    let config = NodeConfig {
        session: SessionConfig {
            url: sup.url.clone(),
            identity: Identity::from_key(keys()[key].clone()),
            trust: sup.trust.clone(),
            role,
            peer_id,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        },
        stream: "cam".into(),
        announce,
        relay: RelayConfig::default(),
        verifier,
        capacity: None,
    };
    let (transport, _) =
        miostream_webrtc::spawn(peer_id, WebRtcConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let transport = if forger {
        tampering(transport)
    } else {
        transport
    };
    spawn_node(config, transport)
}

/// Puts a forger between a node and its real transport: every chunk frame
/// it sends has its first payload byte flipped; everything else (links,
/// signaling, heartbeats, subscriptions) passes untouched.
fn tampering(real: TransportHandle) -> TransportHandle {
    let (commands, mut from_node) = mpsc::channel(1024);
    let to_transport = real.commands;
    tokio::spawn(async move {
        while let Some(cmd) = from_node.recv().await {
            let cmd = match cmd {
                TransportCommand::Send { peer, frame } => TransportCommand::Send {
                    peer,
                    frame: forge(frame),
                },
                other => other,
            };
            if to_transport.send(cmd).await.is_err() {
                return;
            }
        }
    });
    TransportHandle {
        commands,
        events: real.events,
    }
}

fn forge(frame: Bytes) -> Bytes {
    match Frame::decode(&frame) {
        Ok(Frame::Chunk(mut c)) if c.header.kind == ChunkKind::Media => {
            c.payload[0] ^= 0xff;
            Bytes::from(c.encode().unwrap())
        }
        _ => frame,
    }
}

fn chunk(stream: StreamId, seq: u64) -> Bytes {
    let (kind, flags) = match seq {
        0 => (
            ChunkKind::Init,
            ChunkFlags::CLUSTER_START.with(ChunkFlags::CLUSTER_END),
        ),
        s if s % 10 == 1 => (
            ChunkKind::Media,
            ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME),
        ),
        s if s % 10 == 0 => (ChunkKind::Media, ChunkFlags::CLUSTER_END),
        _ => (ChunkKind::Media, ChunkFlags::empty()),
    };
    let c = Chunk {
        header: ChunkHeader {
            stream,
            seq,
            kind,
            flags,
            timestamp_ms: seq * 10,
            send_time_us: 0,
        },
        tag: vec![],
        payload: vec![seq as u8; 8000],
    };
    Bytes::from(c.encode().unwrap())
}

async fn next(h: &mut NodeHandle) -> NodeEvent {
    match tokio::time::timeout(WAIT * 2, h.events.recv()).await {
        Ok(e) => e.expect("node alive"),
        Err(_) => panic!(
            "no event from {:?} in time; stats {:?}",
            h.peer_id,
            *h.stats.borrow()
        ),
    }
}

/// Streams 300 chunks (50/s of 8 KB: 3.2 Mbit/s) through `receivers` nodes
/// in `topology` and kills receiver `victim` (in join order) after 3 s.
/// Every survivor starts at a keyframe and then misses nothing: its new
/// upstream (already a hot standby, or asked for the gap) fills in.
async fn kill_a_relay(topology: TopologyKind, receivers: usize, victim: usize) {
    stream_through(topology, receivers, Some(victim), false).await
}

/// [`kill_a_relay`]'s stream; at 3 s it kills receiver `victim` and/or
/// restarts the supervisor (peers reconnect and re-register while the
/// chunks keep flowing peer to peer).
async fn stream_through(
    topology: TopologyKind,
    receivers: usize,
    victim: Option<usize>,
    restart_supervisor: bool,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ids: Vec<usize> = (1..=receivers).collect();
    let mut sup = TestSupervisor::start(&[0], &ids, |_| {}).await;
    let mut b = node(
        &sup,
        0,
        Some(Announcement {
            topology,
            integrity: IntegrityMode::Hmac,
            media_type: "video/webm".into(),
            signing_key: None,
            title: String::new(),
        }),
    );
    let NodeEvent::Announced(keys) = next(&mut b).await else {
        panic!("not announced")
    };
    let stream = keys.stream.id;
    let last = 300u64;
    let mut rs = Vec::new();
    let mut deliveries = Vec::new();
    for &i in &ids {
        let mut r = node(&sup, i, None);
        assert!(matches!(next(&mut r).await, NodeEvent::Joined(_)));
        let events = std::mem::replace(&mut r.events, mpsc::channel(1).1);
        deliveries.push(tokio::spawn(record_deliveries(events, last)));
        rs.push(r);
    }
    for seq in 0..=last {
        b.publish.send(chunk(stream, seq)).await.unwrap();
        if seq == 150 {
            if let Some(victim) = victim {
                rs.remove(victim).kill();
                deliveries.remove(victim).abort();
            }
            if restart_supervisor {
                sup.restart().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the source's pace
    }
    let mut worst_pause = Duration::ZERO;
    for (r, d) in rs.iter().zip(deliveries) {
        let got = d
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{:?}: {e}", r.peer_id));
        // Links take a few hundred ms to open: a receiver starts at the
        // first keyframe its upstream still holds, then misses nothing.
        let first = got[0].0;
        assert_eq!(first % 10, 1, "{:?} did not start at a keyframe", r.peer_id);
        assert!(first <= 61, "{:?} started only at {first}", r.peer_id);
        for w in got.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0 + 1,
                "{:?} ({topology}) lost chunks",
                r.peer_id
            );
            if w[0].0 >= 100 {
                worst_pause = worst_pause.max(w[1].1 - w[0].1);
            }
        }
    }
    // A figure, not an assertion: the longest pause in delivery at any
    // survivor around the failure (chunks are sent every 20 ms).
    let what = if restart_supervisor {
        " (supervisor restarted)"
    } else {
        ""
    };
    eprintln!(
        "{topology}{what}: longest pause in delivery at a survivor after seq 100: {worst_pause:?}"
    );
    for r in rs {
        r.stop().await;
    }
    b.stop().await;
    sup.stop().await;
}

/// A receiver's media deliveries with their arrival times, up to `last`;
/// an error if it skips chunks, stops, or falls silent.
async fn record_deliveries(
    mut events: mpsc::Receiver<NodeEvent>,
    last: u64,
) -> Result<Vec<(u64, std::time::Instant)>, String> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT * 2, events.recv()).await {
            Ok(Some(NodeEvent::Deliver { header, .. })) if header.kind == ChunkKind::Media => {
                got.push((header.seq, std::time::Instant::now()));
                if header.seq == last {
                    return Ok(got);
                }
            }
            Ok(Some(NodeEvent::Skipped { first, count })) => {
                return Err(format!("skipped {count} chunks from {first}"))
            }
            Ok(Some(NodeEvent::Failed(e) | NodeEvent::Ended(e))) => {
                return Err(format!("node stopped: {e}"))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("the node is gone".into()),
            Err(_) => return Err(format!("no delivery in time after {:?}", got.last())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_webrtc_delivers_every_chunk_even_when_an_inner_relay_dies() {
    // The first receiver sits under the broadcaster and feeds a subtree.
    kill_a_relay(TopologyKind::Tree, 5, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_over_webrtc_delivers_every_chunk_when_a_node_in_the_middle_dies() {
    kill_a_relay(TopologyKind::List, 5, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_restart_mid_stream_interrupts_no_delivery_over_webrtc() {
    stream_through(TopologyKind::Tree, 5, None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forging_relay_over_webrtc_is_rejected_and_cut_out() {
    let ids: Vec<usize> = (1..=5).collect();
    let sup = TestSupervisor::start(&[0], &ids, |_| {}).await;
    let source = SourceKey::generate(&mut rand::rng());
    let signing_key = source.public_base64();
    let tagger = Tagger::Sign(source);
    let checked = || integrity_check(1.0, Default::default());
    let mut b = node_with(
        &sup,
        0,
        Some(Announcement {
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Sign,
            media_type: "video/webm".into(),
            signing_key: Some(signing_key),
            title: String::new(),
        }),
        checked(),
        false,
    );
    let NodeEvent::Announced(keys) = next(&mut b).await else {
        panic!("not announced")
    };
    let stream = keys.stream.id;
    // The first receiver sits right under the broadcaster and feeds two
    // children; it forges everything it relays.
    let mut forger = node_with(&sup, ids[0], None, checked(), true);
    assert!(matches!(next(&mut forger).await, NodeEvent::Joined(_)));
    let mut rs = Vec::new();
    for &i in &ids[1..] {
        let mut r = node_with(&sup, i, None, checked(), false);
        assert!(matches!(next(&mut r).await, NodeEvent::Joined(_)));
        rs.push(r);
    }
    let last = 250u64;
    for seq in 0..=last {
        let Frame::Chunk(mut c) = Frame::decode(&chunk(stream, seq)).unwrap() else {
            panic!("a chunk")
        };
        c.tag = tagger.tag(&c.header, &c.payload);
        b.publish
            .send(Bytes::from(c.encode().unwrap()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await; // the source's pace
    }
    // The supervisor cut the forger out after its children's reports.
    loop {
        match next(&mut forger).await {
            NodeEvent::Failed(reason) => {
                assert!(reason.contains("failed verification"), "{reason}");
                break;
            }
            _ => continue,
        }
    }
    // Honest receivers played every chunk from their start, never a forged
    // one (a forged chunk's first byte is not its sequence number).
    for r in rs.iter_mut() {
        let mut seqs = Vec::new();
        loop {
            match next(r).await {
                NodeEvent::Deliver { header, payload } if header.kind == ChunkKind::Media => {
                    assert_eq!(
                        payload[0], header.seq as u8,
                        "{:?} played a forged chunk",
                        r.peer_id
                    );
                    seqs.push(header.seq);
                    if header.seq == last {
                        break;
                    }
                }
                NodeEvent::Skipped { first, count } => panic!("skipped {count} from {first}"),
                NodeEvent::Failed(e) | NodeEvent::Ended(e) => panic!("{e}"),
                _ => {}
            }
        }
        assert_eq!(
            seqs.first().unwrap() % 10,
            1,
            "{:?} started mid-cluster",
            r.peer_id
        );
        for w in seqs.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{:?} lost chunks", r.peer_id);
        }
    }
    for r in rs {
        r.stop().await;
    }
    b.stop().await;
    sup.stop().await;
}
