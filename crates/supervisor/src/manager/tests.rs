//! The manager's decisions, without sockets.

use std::collections::HashMap;

use miostream_protocol::signal::SignalPayload;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use miostream_integrity::{StreamKey, Tagger};
use miostream_protocol::signal::{Links, ResumeStream};
use miostream_protocol::{Chunk, ChunkFlags, ChunkHeader, ChunkKind, Frame};

struct Fixture {
    m: Manager,
    rng: ChaCha20Rng,
    now: Instant,
}

fn fp(i: u8) -> KeyFingerprint {
    KeyFingerprint([i; 32])
}

impl Fixture {
    fn new() -> Self {
        Self {
            m: Manager::new(ManagerConfig {
                topology: TopologyConfig::default(),
                bad_chunk_limit: 2,
                placement: Placement::default(),
            }),
            rng: ChaCha20Rng::seed_from_u64(9),
            now: Instant::now(),
        }
    }

    fn peer(&mut self, role: ComponentType, key: u8) -> PeerId {
        let id = PeerId::random();
        self.m.register(id, role, fp(key)).unwrap();
        id
    }

    fn send(&mut self, from: PeerId, msg: PeerMessage) -> Vec<Output> {
        self.m.handle(from, msg, self.now, &mut self.rng)
    }

    fn stream(&mut self, b: PeerId, kind: TopologyKind) {
        let out = self.send(
            b,
            PeerMessage::AnnounceStream {
                name: "s".into(),
                topology: kind,
                integrity: IntegrityMode::Hmac,
                media_type: "video/webm".into(),
                signing_key: None,
                resume: None,
                title: String::new(),
            },
        );
        assert!(
            matches!(out[..], [Output::Send(to, SupervisorMessage::StreamAnnounced { .. })] if to == b)
        );
    }

    fn join(&mut self, r: PeerId) -> Vec<Output> {
        self.send(
            r,
            PeerMessage::JoinStream {
                name: "s".into(),
                capacity: Capacity::default(),
            },
        )
    }
}

fn error_code(out: &[Output]) -> Option<ErrorCode> {
    out.iter().find_map(|o| match o {
        Output::Send(_, SupervisorMessage::Error { code, .. }) => Some(*code),
        _ => None,
    })
}

#[test]
fn roles_are_enforced() {
    let mut f = Fixture::new();
    let r = f.peer(ComponentType::Receiver, 1);
    let out = f.send(
        r,
        PeerMessage::AnnounceStream {
            name: "x".into(),
            topology: TopologyKind::List,
            integrity: IntegrityMode::Hmac,
            media_type: "video/webm".into(),
            signing_key: None,
            resume: None,
            title: String::new(),
        },
    );
    assert_eq!(error_code(&out), Some(ErrorCode::Forbidden));
    let b = f.peer(ComponentType::Broadcaster, 2);
    f.stream(b, TopologyKind::List);
    assert_eq!(error_code(&f.join(b)), Some(ErrorCode::Forbidden));
    assert_eq!(
        f.m.register(b, ComponentType::Broadcaster, fp(2)),
        Err(ErrorCode::DuplicatePeer)
    );
}

#[test]
fn sign_mode_needs_a_signing_key_and_names_are_unique() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    let announce = |name: &str, key: Option<&str>| PeerMessage::AnnounceStream {
        name: name.into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Sign,
        media_type: "video/webm".into(),
        signing_key: key.map(str::to_owned),
        resume: None,
        title: String::new(),
    };
    assert_eq!(
        error_code(&f.send(b, announce("a", None))),
        Some(ErrorCode::Malformed)
    );
    assert_eq!(
        error_code(&f.send(b, announce("a", Some("short")))),
        Some(ErrorCode::Malformed)
    );
    assert_eq!(
        error_code(&f.send(b, announce("", None))),
        Some(ErrorCode::Malformed)
    );
    let key = B64.encode([1u8; 32]);
    assert_eq!(error_code(&f.send(b, announce("a", Some(&key)))), None);
    let b2 = f.peer(ComponentType::Broadcaster, 2);
    assert_eq!(
        error_code(&f.send(b2, announce("a", Some(&key)))),
        Some(ErrorCode::StreamExists)
    );
    // A receiver gets the signing key with the stream.
    let r = f.peer(ComponentType::Receiver, 3);
    let out = f.send(
        r,
        PeerMessage::JoinStream {
            name: "a".into(),
            capacity: Capacity::default(),
        },
    );
    assert!(out.iter().any(|o| matches!(o,
        Output::Send(_, SupervisorMessage::StreamJoined { signing_key: Some(k), .. }) if *k == key)));
}

#[test]
fn every_affected_peer_is_reconfigured_on_join_and_failure() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::List);
    let rs: Vec<PeerId> = (0..4)
        .map(|i| f.peer(ComponentType::Receiver, 10 + i))
        .collect();
    let mut links: HashMap<PeerId, Links> = HashMap::new();
    for &r in &rs {
        for o in f.join(r) {
            if let Output::Send(to, SupervisorMessage::Reconfigure { links: l, .. }) = o {
                links.insert(to, l);
            }
        }
    }
    // Every receiver knows a parent, and the links agree both ways.
    for &r in &rs {
        let l = &links[&r];
        assert_eq!(l.parents.len(), 1, "{r:?}");
        let p = l.parents[0];
        assert!(links[&p].children.contains(&r));
    }
    // A middle receiver fails: every peer that linked to it is told.
    let victim = rs[1];
    let out = f.m.disconnected(victim, f.now);
    let told: Vec<PeerId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(to, SupervisorMessage::Reconfigure { links, .. }) => {
                assert!(!links.all_peers().any(|p| p == victim));
                Some(*to)
            }
            _ => None,
        })
        .collect();
    for (peer, l) in &links {
        if *peer != victim && l.all_peers().any(|p| p == victim) {
            assert!(
                told.contains(peer),
                "{peer:?} linked to the victim but not told"
            );
        }
    }
}

#[test]
fn signaling_only_between_linked_peers_of_the_same_stream() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Tree);
    let r = f.peer(ComponentType::Receiver, 2);
    f.join(r);
    let outsider = f.peer(ComponentType::Receiver, 3);
    let offer = SignalPayload::Offer { sdp: "v=0".into() };
    let out = f.send(
        r,
        PeerMessage::Signal {
            to: b,
            payload: offer.clone(),
        },
    );
    assert_eq!(
        out,
        vec![Output::Send(
            b,
            SupervisorMessage::Signal {
                from: r,
                payload: offer.clone()
            }
        )]
    );
    let out = f.send(
        outsider,
        PeerMessage::Signal {
            to: b,
            payload: offer.clone(),
        },
    );
    assert_eq!(error_code(&out), Some(ErrorCode::Forbidden));
    let out = f.send(
        r,
        PeerMessage::Signal {
            to: outsider,
            payload: offer,
        },
    );
    assert_eq!(error_code(&out), Some(ErrorCode::Forbidden));
}

/// A tree of `n` receivers under a fresh broadcaster; the first receiver
/// that feeds two others, and those two.
fn relay_with_two_children(f: &mut Fixture, n: u8) -> (PeerId, PeerId, PeerId, PeerId) {
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Tree);
    let receivers: Vec<PeerId> = (0..n)
        .map(|i| f.peer(ComponentType::Receiver, 10 + i))
        .collect();
    for &r in &receivers {
        f.join(r);
    }
    let topology = &f.m.streams.values().next().unwrap().topology;
    for &r in &receivers {
        let children = topology.links(r).unwrap().children;
        if children.len() == 2 {
            return (b, r, children[0], children[1]);
        }
    }
    panic!("no relay with two children");
}

/// Chunk 5 of the fixture's (only) stream, tagged with the stream's key
/// when `honest`, else with a forged tag.
fn chunk5(f: &Fixture, honest: bool) -> String {
    let stream = f.m.streams.values().next().expect("a stream");
    let header = ChunkHeader {
        stream: stream.info.id,
        seq: 5,
        kind: ChunkKind::Media,
        flags: ChunkFlags::empty(),
        timestamp_ms: 200,
        send_time_us: 1,
    };
    let payload = vec![7u8; 100];
    let tag = if honest {
        Tagger::Hmac(StreamKey::from_bytes(stream.key)).tag(&header, &payload)
    } else {
        vec![0; 32]
    };
    let frame = Frame::Chunk(Chunk {
        header,
        tag,
        payload,
    });
    B64.encode(frame.encode().unwrap())
}

/// A bad-chunk report against `upstream` with a forged chunk as evidence.
fn report(f: &Fixture, upstream: PeerId) -> PeerMessage {
    report_with(upstream, Some(chunk5(f, false)))
}

/// A bad-chunk report against `upstream` with `chunk` attached.
fn report_with(upstream: PeerId, chunk: Option<String>) -> PeerMessage {
    PeerMessage::ReportBadChunk {
        upstream,
        seq: 5,
        reason: "bad tag".into(),
        chunk,
    }
}

fn cut(out: &[Output], who: PeerId) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Disconnect(p, ErrorCode::Misbehaving, _) if *p == who))
}

#[test]
fn a_relay_is_cut_out_on_reports_from_two_distinct_peers_never_the_broadcaster() {
    let mut f = Fixture::new();
    let (b, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    // Reports against the broadcaster are ignored.
    for _ in 0..5 {
        assert!(f.send(c1, report(&f, b)).is_empty());
    }
    // One child, however often it reports, cannot eject its parent.
    for _ in 0..5 {
        assert!(!cut(&f.send(c1, report(&f, relay)), relay));
    }
    // Counted once per reporter and accused (the repeats are not).
    assert_eq!(f.m.integrity_counts(), (1, 0));
    // A second child backs it up: the relay is cut out.
    let out = f.send(c2, report(&f, relay));
    assert!(cut(&out, relay), "{out:?}");
    assert_eq!(f.m.integrity_counts(), (2, 1));
    assert_eq!(f.m.streams()[0].receivers, 5);
    let roles = f.m.peers_by_role();
    assert!(
        roles.contains(&(ComponentType::Broadcaster, 1)),
        "{roles:?}"
    );
    assert!(roles.contains(&(ComponentType::Receiver, 5)), "{roles:?}");
    assert!(f.m.peers.contains_key(&c1) && f.m.peers.contains_key(&c2));
}

#[test]
fn reports_expire_so_two_lone_reports_far_apart_eject_nobody() {
    let mut f = Fixture::new();
    let (_, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    assert!(f.send(c1, report(&f, relay)).is_empty());
    f.now += REPORT_WINDOW;
    assert!(!cut(&f.send(c2, report(&f, relay)), relay));
}

#[test]
fn a_liar_that_accuses_its_neighbours_one_by_one_is_cut_out_itself() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Mesh);
    let receivers: Vec<PeerId> = (0..12)
        .map(|i| f.peer(ComponentType::Receiver, 10 + i))
        .collect();
    for &r in &receivers {
        f.join(r);
    }
    // A mesh node with many neighbours accuses them, one each.
    let topology = &f.m.streams.values().next().unwrap().topology;
    let (liar, neighbours) = receivers
        .iter()
        .map(|&r| (r, topology.links(r).unwrap().neighbours))
        .max_by_key(|(_, n)| n.len())
        .unwrap();
    assert!(neighbours.len() >= MAX_LONE_ACCUSATIONS);
    for (i, &n) in neighbours.iter().take(MAX_LONE_ACCUSATIONS).enumerate() {
        let out = f.send(liar, report(&f, n));
        assert!(!cut(&out, n), "a lone accusation ejected {n:?}");
        assert_eq!(cut(&out, liar), i + 1 == MAX_LONE_ACCUSATIONS, "{out:?}");
    }
    assert!(!f.m.peers.contains_key(&liar));
    assert!(neighbours.iter().all(|n| f.m.peers.contains_key(n)));
}

#[test]
fn a_liar_that_reconnects_under_a_new_peer_id_is_still_one_reporter() {
    // Found by the lab: a false reporter that was cut out came back as a
    // new viewer (same key, new peer id) and accused the same honest relay
    // again, which made two "distinct" reporters and ejected it.
    let mut f = Fixture::new();
    let (_, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    let key = f.m.peers[&c1].key;
    assert!(f.send(c1, report(&f, relay)).is_empty());
    f.m.disconnected(c1, f.now);
    let again = PeerId::random();
    f.m.register(again, ComponentType::Receiver, key).unwrap();
    f.join(again);
    let topology = &f.m.streams.values().next().unwrap().topology;
    assert!(
        topology.is_linked(again, relay),
        "the newcomer takes the free place under the relay (or its backup)"
    );
    assert!(!cut(&f.send(again, report(&f, relay)), relay));
    assert!(f.m.peers.contains_key(&relay));
    // Another identity backs the accusation up: that is two reporters.
    assert!(cut(&f.send(c2, report(&f, relay)), relay));
}

#[test]
fn relays_that_accuse_the_children_they_feed_eject_nobody() {
    // Found by the lab: the broadcaster's two children, both liars, each
    // accused the children and backup children they share; two
    // "distinct" reporters ejected honest peers. A peer a reporter feeds
    // never sends it the stream: such reports are the liars' own.
    let mut f = Fixture::new();
    let (_, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    let topology = &f.m.streams.values().next().unwrap().topology;
    let (other, _) =
        f.m.peers
            .keys()
            .copied()
            .filter(|p| *p != relay)
            .map(|p| (p, topology.links(p).unwrap()))
            .find(|(_, l)| l.backup_children.contains(&c1) || l.children.contains(&c1))
            .expect("c1 has a backup parent that is a relay");
    assert!(topology.links(c1).unwrap().backup_parents.contains(&other));
    for liar in [relay, other] {
        let out = f.send(liar, report(&f, c1));
        assert!(!cut(&out, c1), "{out:?}");
    }
    assert!(f.m.peers.contains_key(&c1));
    // Their children's reports against them still count.
    assert!(!cut(&f.send(c1, report(&f, relay)), relay));
    assert!(cut(&f.send(c2, report(&f, relay)), relay));
}

#[test]
fn a_report_whose_chunk_verifies_cuts_out_the_accuser_not_the_accused() {
    let mut f = Fixture::new();
    let (_, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    // Two colluding children attach the honest chunk they got: the
    // supervisor checks it, and the first liar goes at once.
    for liar in [c1, c2] {
        let out = f.send(liar, report_with(relay, Some(chunk5(&f, true))));
        assert!(cut(&out, liar), "{out:?}");
        assert!(!cut(&out, relay), "{out:?}");
    }
    assert!(f.m.peers.contains_key(&relay));
}

#[test]
fn a_report_without_evidence_or_with_a_chunk_of_something_else_ejects_nobody() {
    let mut f = Fixture::new();
    let (_, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    // Without a chunk: only the reporters' own accusations.
    for r in [c1, c2] {
        assert!(!cut(&f.send(r, report_with(relay, None)), relay));
    }
    assert!(f.m.peers.contains_key(&relay));
    // Evidence that is not the reported chunk is a lie.
    let mut other_seq = report(&f, relay);
    if let PeerMessage::ReportBadChunk { seq, .. } = &mut other_seq {
        *seq = 6;
    }
    for (liar, msg) in [
        (c1, other_seq),
        (c2, report_with(relay, Some("not base64!".into()))),
    ] {
        let out = f.send(liar, msg);
        assert!(cut(&out, liar) && !cut(&out, relay), "{out:?}");
    }
}

#[test]
fn an_oversized_or_undecodable_attachment_costs_one_bounded_check() {
    let mut f = Fixture::new();
    let (_, relay, c1, c2) = relay_with_two_children(&mut f, 6);
    let huge = "A".repeat(MAX_FRAME_LEN * 2);
    let out = f.send(c1, report_with(relay, Some(huge)));
    assert!(cut(&out, c1), "{out:?}");
    let out = f.send(c2, report_with(relay, Some(B64.encode([1u8, 2, 3]))));
    assert!(cut(&out, c2), "{out:?}");
    assert!(f.m.peers.contains_key(&relay));
}

#[test]
fn revoked_keys_are_cut_off_and_their_streams_end() {
    struct Only(KeyFingerprint, ComponentType);
    impl Authorizer for Only {
        fn role_of(&self, key: &KeyFingerprint) -> Option<ComponentType> {
            (*key == self.0).then_some(self.1)
        }
    }
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Mesh);
    let r = f.peer(ComponentType::Receiver, 2);
    f.join(r);
    let out =
        f.m.reauthorize(&Only(fp(2), ComponentType::Receiver), f.now);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Disconnect(p, ErrorCode::Revoked, _) if *p == b)));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Send(p, SupervisorMessage::StreamEnded { .. }) if *p == r)));
    assert!(f.m.streams().is_empty());
}

#[test]
fn a_broadcaster_resumes_its_stream_identity_after_a_restart() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    let key = B64.encode([5u8; 32]);
    let announce = |resume| PeerMessage::AnnounceStream {
        name: "s".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume,
        title: String::new(),
    };
    let out = f.send(
        b,
        announce(Some(ResumeStream {
            id: StreamId(42),
            stream_key: key.clone(),
        })),
    );
    assert!(
        matches!(&out[..], [Output::Send(_, SupervisorMessage::StreamAnnounced { stream, stream_key })]
            if stream.id == StreamId(42) && *stream_key == key),
        "{out:?}"
    );
    let r = f.peer(ComponentType::Receiver, 2);
    assert!(
        f.join(r).iter().any(|o| matches!(o,
        Output::Send(_, SupervisorMessage::StreamJoined { stream_key, .. }) if *stream_key == key))
    );
    // The id is taken now; a bad key is refused.
    let b2 = f.peer(ComponentType::Broadcaster, 3);
    let mut taken = announce(Some(ResumeStream {
        id: StreamId(42),
        stream_key: key,
    }));
    if let PeerMessage::AnnounceStream { name, .. } = &mut taken {
        *name = "other".into();
    }
    assert_eq!(
        error_code(&f.send(b2, taken)),
        Some(ErrorCode::StreamExists)
    );
    let mut bad = announce(Some(ResumeStream {
        id: StreamId(43),
        stream_key: "short".into(),
    }));
    if let PeerMessage::AnnounceStream { name, .. } = &mut bad {
        *name = "third".into();
    }
    let b3 = f.peer(ComponentType::Broadcaster, 4);
    assert_eq!(error_code(&f.send(b3, bad)), Some(ErrorCode::Malformed));
}

fn qos_report(stalls: u64) -> PeerMessage {
    PeerMessage::QosReport {
        stalls,
        stall_ms: 10 * stalls,
        buffer_ms: 1800,
        goodput_bps: 1_200_000,
        chunks_received: 50,
        chunks_rejected: 0,
        latency_ms_p50: 20.5,
        parent_changes: 1,
        latency_ms_p99: 30.5,
        bytes_received: 1000,
        bytes_from_broadcaster: 400,
    }
}

#[test]
fn qos_reports_keep_the_latest_per_receiver_and_go_with_it() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 0);
    f.stream(b, TopologyKind::Tree);
    let r1 = f.peer(ComponentType::Receiver, 1);
    let r2 = f.peer(ComponentType::Receiver, 2);
    f.join(r1);
    f.join(r2);
    assert!(f.send(r1, qos_report(1)).is_empty());
    assert!(f.send(r1, qos_report(3)).is_empty());
    // A broadcaster's report is not stored.
    assert!(f.send(b, qos_report(9)).is_empty());
    assert!(f.m.qos(b).is_none());
    assert_eq!(f.m.qos(r1).unwrap().stalls, 3);
    assert!(f.m.qos(r2).is_none());

    let view = f.m.monitor_view();
    assert_eq!(view.len(), 1);
    let s = &view[0];
    assert_eq!(
        (s.name.as_str(), s.topology, s.broadcaster),
        ("s", TopologyKind::Tree, b)
    );
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.nodes[0].peer, r1);
    assert_eq!(s.nodes[0].position, 0);
    assert_eq!(s.nodes[0].depth, 1);
    assert_eq!(s.nodes[0].parents, vec![b]);
    assert_eq!(s.nodes[0].qos.as_ref().unwrap().stall_ms, 30);
    assert_eq!(s.nodes[1].qos, None);
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json[0]["id"], serde_json::json!(s.id));
    assert_eq!(json[0]["topology"], "tree");
    assert_eq!(json[0]["nodes"][1]["qos"], serde_json::Value::Null);
    assert_eq!(json[0]["nodes"][0]["qos"]["latency_ms_p50"], 20.5);

    // Gone with the peer: bounded by the connected peers.
    f.m.disconnected(r1, f.now);
    assert!(f.m.qos(r1).is_none());
    let view = f.m.monitor_view();
    assert_eq!(view[0].nodes.len(), 1);
    assert_eq!(view[0].nodes[0].peer, r2);
    assert_eq!(view[0].nodes[0].position, 0);
}

#[test]
fn victims_follow_the_distribution_over_positions_and_replay_from_a_seed() {
    use miostream_topology::FailureDistribution;
    let mut f = Fixture::new();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // No stream, or a stream without receivers: no victim.
    assert!(f
        .m
        .pick_victims(FailureDistribution::Uniform, &mut rng)
        .is_empty());
    let b = f.peer(ComponentType::Broadcaster, 0);
    f.stream(b, TopologyKind::List);
    assert!(f
        .m
        .pick_victims(FailureDistribution::Uniform, &mut rng)
        .is_empty());
    let receivers: Vec<PeerId> = (1..=20)
        .map(|i| {
            let r = f.peer(ComponentType::Receiver, i);
            f.join(r);
            r
        })
        .collect();
    let order: Vec<PeerId> = f.m.monitor_view()[0].nodes.iter().map(|n| n.peer).collect();
    assert_eq!(
        order, receivers,
        "a list of equal capacities keeps arrival order"
    );
    let positions = |d: FailureDistribution, seed: u64| -> Vec<usize> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..400)
            .map(|_| {
                let v = f.m.pick_victims(d, &mut rng);
                assert_eq!(v.len(), 1);
                assert_ne!(v[0], b, "the broadcaster never fails");
                order.iter().position(|p| *p == v[0]).unwrap()
            })
            .collect()
    };
    for d in FailureDistribution::ALL {
        assert_eq!(
            positions(d, 5),
            positions(d, 5),
            "{d}: seeded choice replays"
        );
    }
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
    // Uniform covers every position; binomial(20, 0.8) lands past the middle.
    let uniform = positions(FailureDistribution::Uniform, 3);
    assert!((0..20).all(|i| uniform.contains(&i)));
    assert!((mean(&uniform) - 9.5).abs() < 1.5, "{}", mean(&uniform));
    let binomial = positions(FailureDistribution::Binomial, 3);
    assert!(mean(&binomial) > 13.0, "{}", mean(&binomial));
    // The same choice as the distribution's own draw, position for position.
    let mut a = ChaCha20Rng::seed_from_u64(11);
    let mut c = ChaCha20Rng::seed_from_u64(11);
    for _ in 0..50 {
        let v = f.m.pick_victims(FailureDistribution::Poisson, &mut a)[0];
        let i = FailureDistribution::Poisson.pick(20, &mut c).unwrap();
        assert_eq!(v, order[i]);
    }
}

#[test]
fn the_injector_fires_one_victim_per_stream() {
    use crate::monitor::api::{InjectRequest, Injector};
    use miostream_topology::FailureDistribution;
    let mut f = Fixture::new();
    let mut inj = Injector::new();
    assert!(inj.fire(&f.m).is_empty(), "stopped");
    for (key, name) in [(0u8, "a"), (1, "b")] {
        let b = f.peer(ComponentType::Broadcaster, key);
        f.send(
            b,
            PeerMessage::AnnounceStream {
                name: name.into(),
                topology: TopologyKind::Mesh,
                integrity: IntegrityMode::Hmac,
                media_type: "video/webm".into(),
                signing_key: None,
                resume: None,
                title: String::new(),
            },
        );
        for i in 0..3 {
            let r = f.peer(ComponentType::Receiver, 10 + key * 10 + i);
            f.send(
                r,
                PeerMessage::JoinStream {
                    name: name.into(),
                    capacity: Capacity::default(),
                },
            );
        }
    }
    let start = InjectRequest {
        rate: 2.0,
        distribution: Some(FailureDistribution::Uniform),
        seed: Some(7),
    };
    inj.set(&start);
    let first: Vec<PeerId> = (0..5).flat_map(|_| inj.fire(&f.m)).collect();
    assert_eq!(first.len(), 10);
    assert_eq!(inj.view().injected, 10);
    let view = f.m.monitor_view();
    for pair in first.chunks(2) {
        assert!(view[0].nodes.iter().any(|n| n.peer == pair[0]));
        assert!(view[1].nodes.iter().any(|n| n.peer == pair[1]));
    }
    // Restarting with the same seed replays the same victims.
    inj.set(&start);
    let again: Vec<PeerId> = (0..5).flat_map(|_| inj.fire(&f.m)).collect();
    assert_eq!(again, first);
}

fn reconfigured(out: &[Output]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(to, SupervisorMessage::Reconfigure { .. }) => Some(*to),
            _ => None,
        })
        .collect()
}

#[test]
fn a_capacity_probe_is_answered_on_its_last_message_and_bounded() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Tree);
    let r = f.peer(ComponentType::Receiver, 2);
    let probe = |last| PeerMessage::CapacityProbe {
        padding: "x".repeat(1000),
        last,
    };
    // Only in a slot.
    assert_eq!(
        error_code(&f.send(r, probe(true))),
        Some(ErrorCode::Forbidden)
    );
    let out = f.send(r, PeerMessage::CapacityProbeRequest {});
    assert!(
        matches!(out[..], [Output::Send(to, SupervisorMessage::CapacityProbeGrant {})] if to == r),
        "{out:?}"
    );
    assert_eq!(
        error_code(&f.send(r, PeerMessage::CapacityProbeRequest {})),
        Some(ErrorCode::Forbidden),
        "once per connection"
    );
    assert!(f.send(r, probe(false)).is_empty());
    let out = f.send(r, probe(true));
    assert!(
        matches!(out[..], [Output::Send(to, SupervisorMessage::CapacityProbeAck { bytes: 2000 })] if to == r),
        "{out:?}"
    );
    // Past the bound, or after joining: refused.
    for _ in 2..MAX_PROBE_MESSAGES {
        f.send(r, probe(false));
    }
    assert_eq!(
        error_code(&f.send(r, probe(true))),
        Some(ErrorCode::Forbidden)
    );
    let r2 = f.peer(ComponentType::Receiver, 3);
    f.join(r2);
    assert_eq!(
        error_code(&f.send(r2, PeerMessage::CapacityProbeRequest {})),
        Some(ErrorCode::Forbidden)
    );
}

/// A flash crowd's probes run a few at a time, so that they measure the
/// peers' uplinks and not the supervisor's: a slot is free again when its
/// probe ends, when its peer leaves, or after the hold.
#[test]
fn capacity_probes_run_a_few_at_a_time() {
    use probes::{PROBE_SLOTS, PROBE_SLOT_HOLD};
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Tree);
    let granted = |out: &[Output]| -> Vec<PeerId> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(to, SupervisorMessage::CapacityProbeGrant {}) => Some(*to),
                _ => None,
            })
            .collect()
    };
    let rs: Vec<PeerId> = (0..PROBE_SLOTS + 4)
        .map(|i| f.peer(ComponentType::Receiver, 10 + i as u8))
        .collect();
    let mut first = Vec::new();
    for &r in &rs {
        first.extend(granted(&f.send(r, PeerMessage::CapacityProbeRequest {})));
    }
    assert_eq!(first, rs[..PROBE_SLOTS]);
    // A probe ends: the next in line is granted.
    let out = f.send(
        rs[0],
        PeerMessage::CapacityProbe {
            padding: String::new(),
            last: true,
        },
    );
    assert_eq!(granted(&out), [rs[PROBE_SLOTS]]);
    // A prober leaves: the next.
    assert_eq!(
        granted(&f.m.disconnected(rs[1], f.now)),
        [rs[PROBE_SLOTS + 1]]
    );
    // One gives up waiting and joins unmeasured: it leaves the queue.
    f.join(rs[PROBE_SLOTS + 3]);
    // The hold ends: the last one still waiting, and no timer stays due.
    let hold = f.m.poll_timeout().unwrap();
    assert_eq!(hold, f.now + PROBE_SLOT_HOLD);
    assert!(granted(&f.m.handle_timeout(hold - Duration::from_millis(1))).is_empty());
    assert_eq!(granted(&f.m.handle_timeout(hold)), [rs[PROBE_SLOTS + 2]]);
    assert!(f.m.poll_timeout().unwrap() > hold);
}

#[test]
fn a_receiver_whose_uplink_cannot_carry_a_relay_joins_as_a_leaf() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Tree);
    let join = |f: &mut Fixture, key, kbps| {
        let r = f.peer(ComponentType::Receiver, key);
        f.send(
            r,
            PeerMessage::JoinStream {
                name: "s".into(),
                capacity: Capacity {
                    upload_kbps: kbps,
                    rtt_ms: 1,
                },
            },
        );
        r
    };
    // A 2 Mbit/s laptop joins first (4 copies of the assumed 1.5 Mbit/s do
    // not fit), then five wired desktops.
    let slow = join(&mut f, 2, 2000);
    let fast: Vec<PeerId> = (3..8).map(|k| join(&mut f, k, 100_000)).collect();
    let stream = f.m.streams.values().next().unwrap();
    assert_eq!(stream.topology.is_relay(slow), Some(false));
    let l = stream.topology.links(slow).unwrap();
    assert!(
        l.children.is_empty() && l.backup_children.is_empty(),
        "{l:?}"
    );
    for p in fast {
        assert_eq!(stream.topology.is_relay(p), Some(true));
    }
}

#[test]
fn a_relay_reported_lagging_by_two_of_its_children_becomes_a_leaf() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 1);
    f.stream(b, TopologyKind::Tree);
    let rs: Vec<PeerId> = (2..9)
        .map(|k| {
            let r = f.peer(ComponentType::Receiver, k);
            f.join(r);
            r
        })
        .collect();
    let links = |f: &Fixture, p| {
        f.m.streams
            .values()
            .next()
            .unwrap()
            .topology
            .links(p)
            .unwrap()
    };
    let relay = rs[0];
    let children = links(&f, relay).children.clone();
    assert_eq!(children.len(), 2);
    let lag = |upstream| PeerMessage::ReportLagging { upstream };
    // One child alone, and a peer it does not feed, change nothing.
    assert!(f.send(children[0], lag(relay)).is_empty());
    assert!(
        f.send(children[0], lag(relay)).is_empty(),
        "same reporter twice"
    );
    let stranger = *rs
        .iter()
        .find(|p| **p != relay && !links(&f, relay).all_peers().any(|q| q == **p))
        .unwrap();
    assert!(f.send(stranger, lag(relay)).is_empty());
    // A second child, later than the window: still nothing.
    f.now += Duration::from_secs(11);
    assert!(f.send(children[1], lag(relay)).is_empty());
    // Both within the window: demoted, its children reconfigured.
    f.now += Duration::from_secs(1);
    let out = f.send(children[0], lag(relay));
    let told = reconfigured(&out);
    assert!(children.iter().all(|c| told.contains(c)), "{told:?}");
    let stream = f.m.streams.values().next().unwrap();
    assert_eq!(stream.topology.is_relay(relay), Some(false));
    let l = stream.topology.links(relay).unwrap();
    assert!(l.children.is_empty() && l.backup_children.is_empty());
    // The broadcaster is never demoted.
    assert!(f.send(rs[1], lag(b)).is_empty());
}

#[test]
fn streams_are_listed_with_their_title_viewers_and_bitrate() {
    let mut f = Fixture::new();
    let b = f.peer(ComponentType::Broadcaster, 0);
    let announce = |title: &str| PeerMessage::AnnounceStream {
        name: "s".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume: None,
        title: title.into(),
    };
    // Too long or on two lines: refused, with the reason.
    let out = f.send(b, announce(&"x".repeat(201)));
    assert_eq!(error_code(&out), Some(ErrorCode::Malformed));
    assert!(
        matches!(&out[..], [Output::Send(_, SupervisorMessage::Error { message, .. })] if message.contains("at most 200")),
        "{out:?}"
    );
    assert_eq!(
        error_code(&f.send(b, announce("a\nb"))),
        Some(ErrorCode::Malformed)
    );
    assert!(f.m.streams().is_empty());
    assert_eq!(error_code(&f.send(b, announce("Friday talk"))), None);
    let listed = &f.m.streams()[0];
    assert_eq!(
        (listed.title.as_str(), listed.receivers, listed.bitrate_bps),
        ("Friday talk", 0, 0)
    );
    // Viewers join; their goodput reports give the bitrate.
    let r1 = f.peer(ComponentType::Receiver, 1);
    let r2 = f.peer(ComponentType::Receiver, 2);
    f.join(r1);
    f.join(r2);
    f.send(r1, qos_report(0));
    let listed = &f.m.streams()[0];
    assert_eq!((listed.receivers, listed.bitrate_bps), (2, 1_200_000));
    let view = &f.m.monitor_view()[0];
    assert_eq!(
        (view.title.as_str(), view.bitrate_bps),
        ("Friday talk", 1_200_000)
    );
}
