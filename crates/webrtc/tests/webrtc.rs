//! Real WebRTC data channels on loopback between nodes arranged by a real
//! supervisor: every receiver plays every chunk, and a killed relay costs
//! no chunk.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use miostream_peer::{
    spawn_node, Announcement, Identity, NodeConfig, NodeEvent, NodeHandle, SessionConfig,
};
use miostream_protocol::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, ComponentType, IntegrityMode, PeerId, StreamId,
    TopologyKind,
};
use miostream_relay::{AcceptAll, RelayConfig};
use miostream_test_support::supervisor::{keys, TestSupervisor, WAIT};
use miostream_webrtc::WebRtcConfig;

fn node(sup: &TestSupervisor, key: usize, announce: Option<Announcement>) -> NodeHandle {
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
    };
    let (transport, _) =
        miostream_webrtc::spawn(peer_id, WebRtcConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    spawn_node(config, transport)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_webrtc_delivers_every_chunk_even_when_a_relay_dies() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let receivers = 5;
    let ids: Vec<usize> = (1..=receivers).collect();
    let sup = TestSupervisor::start(&[0], &ids, |_| {}).await;
    let mut b = node(
        &sup,
        0,
        Some(Announcement {
            topology: TopologyKind::Tree,
            integrity: IntegrityMode::Hmac,
            media_type: "video/webm".into(),
            signing_key: None,
        }),
    );
    let NodeEvent::Announced(keys) = next(&mut b).await else {
        panic!("not announced")
    };
    let stream = keys.stream.id;
    let mut rs = Vec::new();
    for &i in &ids {
        let mut r = node(&sup, i, None);
        assert!(matches!(next(&mut r).await, NodeEvent::Joined(_)));
        rs.push(r);
    }
    // 50 chunks/s of 8 KB (3.2 Mbit/s); the first receiver (an inner node
    // of the tree) is killed after 3 s.
    let last = 300u64;
    for seq in 0..=last {
        b.publish.send(chunk(stream, seq)).await.unwrap();
        if seq == 150 {
            rs.remove(0).kill();
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the source's pace
    }
    for r in rs.iter_mut() {
        let seqs = played_until(r, last).await;
        // Links take a few hundred ms to open: a receiver starts at the
        // first keyframe its upstream still holds, then misses nothing.
        let first = *seqs.first().unwrap();
        assert_eq!(first % 10, 1, "{:?} did not start at a keyframe", r.peer_id);
        assert!(first <= 61, "{:?} started only at {first}", r.peer_id);
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
