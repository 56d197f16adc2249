//! Broadcaster and receiver nodes end to end over a real supervisor (TLS,
//! authentication, topology, signaling relay) with in-memory links: every
//! receiver plays every chunk, and a killed relay costs no chunk.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use miostream_peer::transport::memory::MemoryHub;
use miostream_peer::{
    spawn_node, Announcement, Identity, NodeConfig, NodeEvent, NodeHandle, SessionConfig,
};
use miostream_protocol::signal::Capacity;
use miostream_protocol::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, ComponentType, IntegrityMode, PeerId, StreamId,
    TopologyKind,
};
use miostream_relay::{AcceptAll, RelayConfig};
use miostream_test_support::supervisor::{keys, TestSupervisor, WAIT};

fn node(
    sup: &TestSupervisor,
    hub: &MemoryHub,
    key: usize,
    announce: Option<Announcement>,
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
        verifier: Box::new(|_| Box::new(AcceptAll)),
        capacity: None,
    };
    spawn_node(config, hub.attach(peer_id))
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
        payload: vec![seq as u8; 1000],
    };
    Bytes::from(c.encode().unwrap())
}

async fn next(h: &mut NodeHandle) -> NodeEvent {
    match tokio::time::timeout(WAIT, h.events.recv()).await {
        Ok(e) => e.expect("node alive"),
        Err(_) => panic!(
            "no event from {:?} in time; stats {:?}",
            h.peer_id,
            *h.stats.borrow()
        ),
    }
}

/// Waits until the receiver delivered `last`; returns the media seqs it played.
async fn played_until(h: &mut NodeHandle, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        match next(h).await {
            NodeEvent::Deliver { header, .. } if header.kind == ChunkKind::Media => {
                seqs.push(header.seq);
                if header.seq == last {
                    return seqs;
                }
            }
            NodeEvent::Skipped { first, count } => panic!("skipped {count} chunks from {first}"),
            NodeEvent::Failed(e) | NodeEvent::Ended(e) => panic!("node stopped: {e}"),
            _ => {}
        }
    }
}

async fn stream_through(topology: TopologyKind, receivers: usize, kill_after: Option<u64>) {
    stream_through_with(topology, receivers, kill_after, None).await
}

async fn stream_through_with(
    topology: TopologyKind,
    receivers: usize,
    kill_after: Option<u64>,
    restart_supervisor_after: Option<u64>,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ids: Vec<usize> = (1..=receivers).collect();
    let mut sup = TestSupervisor::start(&[0], &ids, |_| {}).await;
    let hub = MemoryHub::new();
    let mut b = node(
        &sup,
        &hub,
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
    let mut rs = Vec::new();
    for &i in &ids {
        let mut r = node(&sup, &hub, i, None);
        assert!(matches!(next(&mut r).await, NodeEvent::Joined(_)));
        rs.push(r);
    }
    // Publish at 100 chunks/s; optionally kill the first receiver midway
    // (in a list or a tree it feeds others).
    let last = 300u64;
    let mut victim = None;
    for seq in 0..=last {
        b.publish.send(chunk(stream, seq)).await.unwrap();
        if Some(seq) == kill_after {
            let r = rs.remove(0);
            victim = Some(r.peer_id);
            r.kill();
        }
        if Some(seq) == restart_supervisor_after {
            sup.restart().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // the source's pace
    }
    let mut played: HashMap<PeerId, Vec<u64>> = HashMap::new();
    for r in rs.iter_mut() {
        let seqs = played_until(r, last).await;
        played.insert(r.peer_id, seqs);
    }
    for (p, seqs) in &played {
        assert_ne!(Some(*p), victim);
        assert_eq!(
            seqs.first(),
            Some(&1),
            "{p:?} ({topology}) did not start at the first keyframe"
        );
        for w in seqs.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "{p:?} ({topology}) lost chunks between {} and {}",
                w[0],
                w[1]
            );
        }
    }
    for r in rs {
        r.stop().await;
    }
    b.stop().await;
    sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_plays_every_chunk_in_each_topology() {
    for topology in [TopologyKind::List, TopologyKind::Tree, TopologyKind::Mesh] {
        stream_through(topology, 6, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_restart_mid_stream_interrupts_no_delivery() {
    stream_through_with(TopologyKind::Tree, 6, None, Some(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_relay_loses_no_chunk_at_any_survivor() {
    for topology in [TopologyKind::List, TopologyKind::Tree] {
        stream_through(topology, 6, Some(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forging_relay_is_rejected_reported_and_cut_out_in_sign_mode() {
    use miostream_integrity::{SourceKey, Tagger};
    use std::sync::{Arc, Mutex};

    let ids: Vec<usize> = (1..=6).collect();
    let sup = TestSupervisor::start(&[0], &ids, |_| {}).await;
    let hub = MemoryHub::new();
    let source = SourceKey::generate(&mut rand::rng());
    let signing_key = source.public_base64();
    let tagger = Tagger::Sign(source);
    let checked = |key: usize, hub: &MemoryHub, announce: Option<Announcement>| {
        let peer_id = PeerId::random();
        let config = NodeConfig {
            session: SessionConfig {
                url: sup.url.clone(),
                identity: Identity::from_key(keys()[key].clone()),
                trust: sup.trust.clone(),
                role: if announce.is_some() {
                    ComponentType::Broadcaster
                } else {
                    ComponentType::Receiver
                },
                peer_id,
                backoff_min: Duration::from_millis(20),
                backoff_max: Duration::from_millis(500),
            },
            stream: "cam".into(),
            announce,
            relay: RelayConfig::default(),
            verifier: miostream_peer::integrity_check(
                1.0,
                Arc::new(Mutex::new(Default::default())),
            ),
            // Equal and known uplinks: the tree keeps the join order (a
            // measured one would let a faster joiner rise above the forger
            // and leave it no child to report it).
            capacity: Some(Capacity {
                upload_kbps: 100_000,
                rtt_ms: 0,
            }),
        };
        spawn_node(config, hub.attach(peer_id))
    };
    let mut b = checked(
        0,
        &hub,
        Some(Announcement {
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Sign,
            media_type: "video/webm".into(),
            signing_key: Some(signing_key),
            title: String::new(),
        }),
    );
    let NodeEvent::Announced(keys) = next(&mut b).await else {
        panic!("not announced")
    };
    let stream = keys.stream.id;
    let mut rs = Vec::new();
    for &i in &ids {
        let mut r = checked(i, &hub, None);
        assert!(matches!(next(&mut r).await, NodeEvent::Joined(_)));
        rs.push(r);
    }
    // The first receiver sits right under the broadcaster and feeds others.
    let mut forger = rs.remove(0);
    hub.set_forger(forger.peer_id);
    let last = 200u64;
    for seq in 0..=last {
        let frame = chunk(stream, seq);
        let miostream_protocol::Frame::Chunk(mut c) =
            miostream_protocol::Frame::decode(&frame).unwrap()
        else {
            panic!()
        };
        c.tag = tagger.tag(&c.header, &c.payload);
        b.publish
            .send(Bytes::from(c.encode().unwrap()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await; // the source's pace
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
    // Honest receivers played every chunk from their start, never a forged one.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_player_never_stalls_its_subtree() {
    // r1 feeds r3 (tree positions 0 and 2; r2 is r3's backup parent). r1's
    // player reads nothing: its queue fills, and r1 must go on relaying and
    // sending heartbeats, skipping its own player ahead instead.
    let sup = TestSupervisor::start(&[0], &[1, 2, 3], |_| {}).await;
    let hub = MemoryHub::new();
    let mut b = node(
        &sup,
        &hub,
        0,
        Some(Announcement {
            topology: TopologyKind::Tree,
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
    let mut rs = Vec::new();
    for i in 1..=3 {
        let mut r = node(&sup, &hub, i, None);
        assert!(matches!(next(&mut r).await, NodeEvent::Joined(_)));
        rs.push(r);
    }
    // More chunks than the player queue holds (1,024); r3's player keeps up.
    let last = 2000u64;
    let mut r3 = rs.pop().unwrap();
    let watcher = tokio::spawn(async move {
        let seqs = played_until(&mut r3, last).await;
        (r3, seqs)
    });
    for seq in 0..=last {
        b.publish.send(chunk(stream, seq)).await.unwrap();
        if seq % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (r3h, seqs) = watcher.await.unwrap();
    assert_eq!(seqs.first(), Some(&1));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "r3 lost chunks");
    let r3 = r3h.stats.borrow().clone();
    rs.push(r3h);
    assert_eq!(
        r3.dead_links, 0,
        "r3 saw its stalled parent as dead: {r3:?}"
    );
    // r1's player reads what queued, then more chunks come: it fell behind,
    // so it skips to the next keyframe cluster.
    let r1 = &mut rs[0];
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), r1.events.recv()).await
    {
    }
    for seq in last + 1..=last + 30 {
        b.publish.send(chunk(stream, seq)).await.unwrap();
    }
    let mut skipped = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), r1.events.recv()).await
    {
        match e {
            NodeEvent::Skipped { first, count } => skipped = Some(first + count),
            NodeEvent::Deliver { header, .. } if skipped == Some(header.seq) => {
                assert!(header.flags.contains(ChunkFlags::KEYFRAME));
                break;
            }
            _ => {}
        }
    }
    assert!(skipped.is_some(), "r1's player never skipped ahead");
    for r in rs {
        r.stop().await;
    }
    b.stop().await;
    sup.stop().await;
}
