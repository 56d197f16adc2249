//! One relay driven by hand with a virtual clock: what counts as forgery,
//! when a link is dead, which upstream is dropped for lagging, and what a
//! relay asks for when the init segment went missing.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use miostream_protocol::signal::Links;
use miostream_protocol::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, Frame, FrameRef, PeerId, StreamId, SubscribeFlags,
    TopologyKind,
};
use miostream_relay::{Output, Refusal, Relay, RelayConfig, Verify, GARBAGE_ALLOWANCE};

const STREAM: StreamId = StreamId(7);

/// The integrity check's replay rule, as `miostream-integrity` applies it:
/// a sequence number accepted once is refused as a replay afterwards; a
/// payload byte of 0xff is a forgery, and so is a tag that does not match
/// the header and payload (a stand-in for the real tag: a changed bit fails it).
#[derive(Debug, Default)]
struct ReplayCheck {
    seen: HashSet<u64>,
}

/// FNV-1a over what a real tag covers.
fn tag_of(header: &ChunkHeader, payload: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in header.tag_preimage(payload.len()).iter().chain(payload) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.to_be_bytes().to_vec()
}

impl Verify for ReplayCheck {
    fn verify(&mut self, chunk: &miostream_protocol::ChunkRef<'_>) -> Result<(), Refusal> {
        if chunk.payload.first() == Some(&0xff) {
            return Err(Refusal::Forged("bad signature".into()));
        }
        if chunk.tag != tag_of(&chunk.header, chunk.payload) {
            return Err(Refusal::Forged("bad tag".into()));
        }
        if !self.seen.insert(chunk.header.seq) {
            return Err(Refusal::Replayed);
        }
        Ok(())
    }

    fn check_copy(&mut self, chunk: &miostream_protocol::ChunkRef<'_>) -> Result<(), Refusal> {
        if chunk.payload.first() == Some(&0xff) || chunk.tag != tag_of(&chunk.header, chunk.payload)
        {
            return Err(Refusal::Forged("bad signature".into()));
        }
        Ok(())
    }
}

fn chunk(seq: u64, kind: ChunkKind, flags: ChunkFlags, ts: u64, byte: u8) -> Bytes {
    let header = ChunkHeader {
        stream: STREAM,
        seq,
        kind,
        flags,
        timestamp_ms: ts,
        send_time_us: 0,
    };
    let payload = vec![byte; 100];
    let c = Chunk {
        header,
        tag: tag_of(&header, &payload),
        payload,
    };
    Bytes::from(c.encode().unwrap())
}

fn init(seq: u64) -> Bytes {
    chunk(
        seq,
        ChunkKind::Init,
        ChunkFlags::CLUSTER_START.with(ChunkFlags::CLUSTER_END),
        0,
        1,
    )
}

/// Media chunk `seq` of clusters of 10 chunks, 50 ms apart.
fn media(seq: u64) -> Bytes {
    let flags = if seq % 10 == 1 {
        ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME)
    } else if seq % 10 == 0 {
        ChunkFlags::CLUSTER_END
    } else {
        ChunkFlags::empty()
    };
    chunk(seq, ChunkKind::Media, flags, seq * 50, 2)
}

fn heartbeat(depth: u16) -> Bytes {
    Bytes::from(
        Frame::Heartbeat {
            counter: 1,
            time_us: 0,
            depth,
        }
        .encode()
        .unwrap(),
    )
}

/// Hot standby: two upstreams at once.
fn hot() -> RelayConfig {
    RelayConfig {
        redundancy: Some(2),
        ..RelayConfig::default()
    }
}

struct Rig {
    now: Instant,
    relay: Relay<ReplayCheck>,
    parent: PeerId,
    backups: Vec<PeerId>,
}

impl Rig {
    /// A tree receiver with one parent and `backups` backup parents, all up
    /// and at depth 1.
    fn new(backups: usize, config: RelayConfig) -> Self {
        let now = Instant::now();
        let parent = PeerId::random();
        let backups: Vec<PeerId> = (0..backups).map(|_| PeerId::random()).collect();
        let mut relay = Relay::receiver(
            PeerId::random(),
            STREAM,
            TopologyKind::Tree,
            config,
            ReplayCheck::default(),
            now,
        );
        relay.set_links(
            Links {
                parents: vec![parent],
                backup_parents: backups.clone(),
                ..Links::default()
            },
            now,
        );
        for p in std::iter::once(parent).chain(backups.iter().copied()) {
            relay.link_up(p, now);
            relay.handle_frame(p, heartbeat(1), now);
        }
        let mut rig = Self {
            now,
            relay,
            parent,
            backups,
        };
        rig.drain();
        rig
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.relay.poll_output() {
            out.push(o);
        }
        out
    }

    /// Advances the clock by `d`, running the timers when they are due
    /// (every millisecond of virtual time at most).
    fn advance(&mut self, d: Duration) -> Vec<Output> {
        let end = self.now + d;
        let mut out = Vec::new();
        while self.now < end {
            self.now += Duration::from_millis(1);
            if self.relay.poll_timeout() <= self.now {
                self.relay.handle_timeout(self.now);
                // A timer the relay does not move would make a driver spin.
                assert!(
                    self.relay.poll_timeout() > self.now,
                    "poll_timeout still due after handle_timeout"
                );
            }
            out.extend(self.drain());
        }
        out
    }

    fn from(&mut self, p: PeerId, frame: Bytes) -> Vec<Output> {
        self.relay.handle_frame(p, frame, self.now);
        self.drain()
    }
}

fn rejected(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Rejected { .. }))
        .count()
}

fn dead(out: &[Output]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::LinkDead { peer } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn subscribes(out: &[Output]) -> Vec<(PeerId, u64, SubscribeFlags)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, frame } => match FrameRef::decode(frame) {
                Ok(FrameRef::Subscribe { from, flags, .. }) => Some((*to, from, flags)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn unsubscribes(out: &[Output]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, frame } => match FrameRef::decode(frame) {
                Ok(FrameRef::Unsubscribe { .. }) => Some(*to),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn late_copies_replays_and_an_old_init_segment_are_duplicates_never_reports() {
    // The honest relay behind a congested uplink sends everything late:
    // copies of chunks we accepted, of chunks we already evicted, and an init
    // segment a re-init replaced. None of that may cost it its place.
    let config = RelayConfig {
        buffer: Duration::from_millis(200), // evict fast
        ..hot()
    };
    let mut rig = Rig::new(1, config);
    let (a, b) = (rig.parent, rig.backups[0]);
    let mut out = rig.from(a, init(0));
    for seq in 1..=40 {
        out.extend(rig.from(a, media(seq)));
    }
    // A re-init (the broadcaster restarted its encoder): a newer init segment.
    out.extend(rig.from(a, init(41)));
    // The slow upstream's copies, long after: the first 40 chunks (most
    // evicted by now) and the old init segment.
    out.extend(rig.from(b, init(0)));
    for seq in 1..=40 {
        out.extend(rig.from(b, media(seq)));
    }
    assert_eq!(rejected(&out), 0, "{out:?}");
    let stats = rig.relay.stats();
    assert_eq!(stats.rejected, 0);
    assert_eq!(stats.duplicates, 41);
    assert_eq!(stats.chunks_received, 42);
}

#[test]
fn bytes_from_the_source_are_counted_apart() {
    // The parent says it is the source (depth 0), the backup that it is a
    // receiver (depth 1): only the parent's bytes count as the source's.
    let mut rig = Rig::new(1, hot());
    let (a, b) = (rig.parent, rig.backups[0]);
    rig.from(a, heartbeat(0));
    rig.from(b, heartbeat(1));
    rig.from(a, init(0));
    for seq in 1..=4 {
        rig.from(if seq % 2 == 0 { a } else { b }, media(seq));
    }
    // A copy from the source of what the backup sent first is a duplicate.
    rig.from(a, media(1));
    let stats = rig.relay.stats();
    assert_eq!(stats.chunks_received, 5);
    assert_eq!(stats.bytes_received, 500);
    assert_eq!(stats.bytes_from_source, 300);
}

#[test]
fn a_forged_chunk_not_accepted_yet_is_reported() {
    let mut rig = Rig::new(1, hot());
    let a = rig.parent;
    rig.from(a, init(0));
    let forged = chunk(1, ChunkKind::Media, ChunkFlags::empty(), 50, 0xff);
    let out = rig.from(a, forged);
    assert_eq!(rejected(&out), 1);
    // The genuine chunk still gets in afterwards.
    rig.from(rig.backups[0], media(1));
    assert_eq!(rig.relay.stats().chunks_received, 2);
    // A forged copy that comes second, after the genuine one: its bytes
    // differ and its tag fails, so it is a forgery all the same.
    let forged = chunk(1, ChunkKind::Media, ChunkFlags::empty(), 50, 0xff);
    let out = rig.from(a, forged);
    assert_eq!(rejected(&out), 1);
    // The genuine copy again is only a duplicate.
    let out = rig.from(a, media(1));
    assert_eq!(rejected(&out), 0);
}

#[test]
fn a_forger_is_never_our_upstream_again_and_the_backup_takes_over() {
    // Warm standby: one upstream, the parent.
    let mut rig = Rig::new(1, RelayConfig::default());
    let (a, b) = (rig.parent, rig.backups[0]);
    rig.from(a, init(0));
    rig.from(a, media(1));
    assert_eq!(rig.relay.upstreams(), &[a]);
    let forged = chunk(2, ChunkKind::Media, ChunkFlags::empty(), 100, 0xff);
    let out = rig.from(a, forged);
    assert_eq!(rejected(&out), 1);
    // Dropped at once, for the backup, from the first chunk not accepted.
    assert_eq!(unsubscribes(&out), vec![a]);
    let subs = subscribes(&out);
    assert_eq!(subs.len(), 1);
    assert_eq!((subs[0].0, subs[0].1), (b, 2));
    assert_eq!(rig.relay.upstreams(), &[b]);
    // Even when the backup goes, the forger is not taken back.
    rig.relay.link_down(b, rig.now);
    rig.drain();
    assert!(rig.relay.upstreams().is_empty());
}

fn bytes_sent_to(out: &[Output], peer: PeerId) -> usize {
    out.iter()
        .map(|o| match o {
            Output::Send { to, frame } if *to == peer => frame.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn a_gap_flood_gets_the_replay_budget_and_no_more() {
    let config = RelayConfig {
        repair_rate: 2_000,
        repair_burst: 10_000,
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(1, config);
    let (a, flooder) = (rig.parent, rig.backups[0]);
    rig.from(a, init(0));
    for seq in 1..=40 {
        rig.from(a, media(seq));
    }
    let held: usize = (1..=40).map(|s| media(s).len()).sum();
    assert!(held < 10_000, "one request fits the burst");
    let gap = Bytes::from(
        Frame::GapRequest {
            stream: STREAM,
            first: 1,
            count: 40,
        }
        .encode()
        .unwrap(),
    );
    // The first request is served in full.
    let out = rig.from(flooder, gap.clone());
    assert_eq!(bytes_sent_to(&out, flooder), held);
    // A hundred more within a second get what the budget refills: without
    // it they would cost 100 times the buffer.
    let mut flood = 0;
    for _ in 0..100 {
        rig.now += Duration::from_millis(10);
        flood += bytes_sent_to(&rig.from(flooder, gap.clone()), flooder);
    }
    assert!(
        flood <= 10_000 - held + 2_000 + 200,
        "{flood} bytes replayed"
    );
    assert!(rig.relay.stats().replays_throttled >= 90);
    // Given time, an honest request is served again.
    rig.now += Duration::from_secs(5);
    assert_eq!(bytes_sent_to(&rig.from(flooder, gap), flooder), held);
}

fn gap_requests(out: &[Output]) -> Vec<(PeerId, u64, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, frame } => match FrameRef::decode(frame) {
                Ok(FrameRef::GapRequest { first, count, .. }) => Some((*to, first, count)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_lost_last_chunk_is_asked_for_before_the_next_burst_reveals_it() {
    // A cluster's chunks come in a burst, 10 ms apart; the burst's last
    // chunk (no CLUSTER_END) is lost, and nothing follows for a second.
    let mut rig = Rig::new(1, RelayConfig::default());
    let (a, b) = (rig.parent, rig.backups[0]);
    rig.from(a, init(0));
    for seq in 1..=5 {
        rig.from(a, media(seq));
        rig.from(b, heartbeat(1));
        rig.advance(Duration::from_millis(10));
    }
    let last = rig.now - Duration::from_millis(10);
    // The backup (not the upstream, whose copy is most likely in flight) is
    // asked once for what follows chunk 5, a gap timeout and a chunk
    // spacing after it arrived.
    let mut asked = Vec::new();
    for _ in 0..100 {
        let mut out = rig.from(b, heartbeat(1));
        out.extend(rig.from(a, heartbeat(1)));
        out.extend(rig.advance(Duration::from_millis(5)));
        asked.extend(gap_requests(&out).into_iter().map(|r| (rig.now, r)));
    }
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (when, (to, first, _)) = asked[0];
    assert_eq!((to, first), (b, 6));
    let gap = RelayConfig::default().gap_timeout;
    assert!(
        when >= last + gap && when <= last + gap + Duration::from_millis(30),
        "{:?}",
        when - last
    );
    assert_eq!(rig.relay.stats().tail_probes, 1);
    // A burst that ends its cluster leaves nothing to ask for.
    for seq in 6..=10 {
        rig.from(a, media(seq));
    }
    assert!(gap_requests(&rig.advance(Duration::from_millis(500))).is_empty());
}

#[test]
fn a_hole_with_one_feeder_is_asked_of_it_every_gap_timeout() {
    // Chunk 3 is lost on the only link and its answer too: the request goes
    // again a gap timeout later, not after an idle round.
    let mut rig = Rig::new(0, RelayConfig::default());
    let a = rig.parent;
    rig.from(a, init(0));
    for seq in [1, 2, 4, 5] {
        rig.from(a, media(seq));
    }
    let start = rig.now;
    let mut asked = Vec::new();
    for _ in 0..40 {
        let mut out = rig.from(a, heartbeat(1));
        out.extend(rig.advance(Duration::from_millis(10)));
        asked.extend(
            gap_requests(&out)
                .into_iter()
                .map(|(to, first, _)| (to, first, rig.now - start)),
        );
    }
    // (The tail probe asks for what follows chunk 5 as well.)
    asked.retain(|(_, first, _)| *first == 3);
    let gap = RelayConfig::default().gap_timeout;
    assert!(asked.len() >= 2, "{asked:?}");
    for (i, (to, first, when)) in asked.iter().take(2).enumerate() {
        assert_eq!((*to, *first), (a, 3));
        let due = gap * (i as u32 + 1);
        assert!(
            *when >= due && *when <= due + Duration::from_millis(20),
            "{asked:?}"
        );
    }
}

#[test]
fn a_hole_past_its_wait_is_skipped_at_the_next_keyframe_without_spinning_meanwhile() {
    let mut rig = Rig::new(0, RelayConfig::default());
    let a = rig.parent;
    rig.from(a, init(0));
    for seq in [1, 2, 4, 5] {
        rig.from(a, media(seq));
    }
    // Nobody has chunk 3, and no keyframe follows the hole for 4 s (the
    // rig checks that no timer stays due after it ran: a driver would spin).
    let wait = RelayConfig::default().max_hole_wait;
    for _ in 0..(wait.as_millis() / 10 + 100) {
        rig.from(a, heartbeat(1));
        rig.advance(Duration::from_millis(10));
    }
    assert_eq!(rig.relay.next_deliver(), Some(3));
    // The next cluster starts: playback skips to it at once.
    rig.from(a, media(11));
    let out = rig.advance(Duration::from_millis(60));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Skipped { first: 3, count: 8 })),
        "{out:?}"
    );
}

fn garbage_closed(out: &[Output]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Garbage { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn delivered(out: &[Output]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver { header, .. } => Some(header.seq),
            _ => None,
        })
        .collect()
}

/// A chunk of another stream, tagged and shaped like ours.
fn foreign(seq: u64) -> Bytes {
    let c = Chunk {
        header: ChunkHeader {
            stream: StreamId(STREAM.0 + 1),
            seq,
            kind: ChunkKind::Media,
            flags: ChunkFlags::empty(),
            timestamp_ms: seq * 50,
            send_time_us: 0,
        },
        tag: vec![0; 32],
        payload: vec![2; 100],
    };
    Bytes::from(c.encode().unwrap())
}

/// The kinds of garbage a linked peer can send, `GARBAGE_ALLOWANCE` of each.
fn garbage_kinds() -> Vec<(&'static str, Vec<Bytes>)> {
    let n = GARBAGE_ALLOWANCE as u64;
    let undecodable = (0..n)
        .map(|i| Bytes::from(vec![0xde, 0xad, i as u8]))
        .collect();
    // A real chunk frame grown past the frame limit (a well-formed header).
    let oversized = (0..n)
        .map(|i| {
            let mut f = media(100 + i).to_vec();
            f.resize(miostream_protocol::frame::MAX_FRAME_LEN + 1, 0);
            Bytes::from(f)
        })
        .collect();
    let truncated = (0..n)
        .map(|i| {
            let f = media(100 + i);
            f.slice(..f.len() - 1 - i as usize)
        })
        .collect();
    let foreign_chunks = (0..n).map(|i| foreign(100 + i)).collect();
    let foreign_control = (0..n)
        .map(|i| {
            Bytes::from(
                Frame::GapRequest {
                    stream: StreamId(STREAM.0 + 1),
                    first: i,
                    count: 10,
                }
                .encode()
                .unwrap(),
            )
        })
        .collect();
    vec![
        ("undecodable", undecodable),
        ("oversized", oversized),
        ("truncated", truncated),
        ("foreign stream chunk", foreign_chunks),
        ("foreign stream control", foreign_control),
    ]
}

#[test]
fn every_kind_of_garbage_closes_the_link_without_a_report_while_the_backup_feeds_us() {
    for (kind, frames) in garbage_kinds() {
        // Warm standby: the garbage sender is our only upstream.
        let mut rig = Rig::new(1, RelayConfig::default());
        let (liar, honest) = (rig.parent, rig.backups[0]);
        let mut out = rig.from(liar, init(0));
        out.extend(rig.from(liar, media(1)));
        assert_eq!(rig.relay.upstreams(), &[liar], "{kind}");
        let (last, first) = frames.split_last().unwrap();
        for f in first {
            out.extend(rig.from(liar, f.clone()));
        }
        assert!(garbage_closed(&out).is_empty(), "{kind}: allowance");
        assert!(rig.relay.is_up(&liar), "{kind}");
        out.extend(rig.from(liar, last.clone()));
        assert_eq!(garbage_closed(&out), vec![liar], "{kind}");
        assert_eq!(rejected(&out), 0, "{kind}: garbage is never a report");
        assert!(!rig.relay.is_up(&liar), "{kind}: dropped at once");
        assert!(rig.relay.is_shunned(&liar), "{kind}");
        // The honest backup takes over from the first chunk we lack.
        let subs = subscribes(&out);
        assert_eq!(subs.last().map(|s| (s.0, s.1)), Some((honest, 2)), "{kind}");
        assert_eq!(rig.relay.upstreams(), &[honest], "{kind}");
        let mut out = Vec::new();
        for seq in 2..=20 {
            out.extend(rig.from(honest, media(seq)));
            rig.now += Duration::from_millis(50);
        }
        assert_eq!(delivered(&out), (2..=20).collect::<Vec<_>>(), "{kind}");
        // Whatever the closed link still carries is not read.
        let out = rig.from(liar, media(21));
        assert!(out.is_empty(), "{kind}: {out:?}");
        let stats = rig.relay.stats();
        assert_eq!(stats.garbage, u64::from(GARBAGE_ALLOWANCE), "{kind}");
        assert_eq!(stats.garbage_links, 1, "{kind}");
        assert_eq!(stats.rejected, 0, "{kind}");
    }
}

#[test]
fn garbage_mixed_with_good_frames_still_adds_up_to_a_closed_link() {
    // Heartbeats and chunks in between do not wash the count out.
    let mut rig = Rig::new(1, hot());
    let a = rig.parent;
    rig.from(a, init(0));
    let mut out = Vec::new();
    for seq in 1..=u64::from(GARBAGE_ALLOWANCE) {
        out.extend(rig.from(a, Bytes::from_static(b"\x01\xffnot a frame")));
        out.extend(rig.from(a, heartbeat(1)));
        out.extend(rig.from(a, media(seq)));
    }
    assert_eq!(garbage_closed(&out), vec![a]);
    assert_eq!(rejected(&out), 0);
}

#[test]
fn a_shunned_peer_stays_out_while_linked_and_gets_a_fresh_start_once_relinked() {
    let mut rig = Rig::new(1, hot());
    let (a, b) = (rig.parent, rig.backups[0]);
    for f in &garbage_kinds()[0].1 {
        rig.from(a, f.clone());
    }
    assert!(rig.relay.is_shunned(&a));
    // Its link comes up again (it offered again): closed at once.
    rig.relay.link_up(a, rig.now);
    let out = rig.drain();
    assert_eq!(garbage_closed(&out), vec![a]);
    assert!(!rig.relay.is_up(&a));
    assert!(!rig.relay.upstreams().contains(&a));
    // A reconfiguration that keeps it linked keeps it out.
    let both = Links {
        parents: vec![a],
        backup_parents: vec![b],
        ..Links::default()
    };
    rig.relay.set_links(both.clone(), rig.now);
    assert!(rig.relay.is_shunned(&a));
    // Unlinked, then linked again (a new place in the topology): a fresh start.
    rig.relay.set_links(
        Links {
            parents: vec![b],
            ..Links::default()
        },
        rig.now,
    );
    assert!(!rig.relay.is_shunned(&a));
    rig.relay.set_links(both, rig.now);
    rig.relay.link_up(a, rig.now);
    let out = rig.drain();
    assert!(garbage_closed(&out).is_empty(), "{out:?}");
    assert!(rig.relay.is_up(&a));
}

/// A small deterministic generator (xorshift), so the fuzz loop below is
/// the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mangled_frames_never_panic_and_only_forged_chunks_of_ours_are_reported() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut rig = Rig::new(1, hot());
    let (a, b) = (rig.parent, rig.backups[0]);
    rig.from(b, init(0));
    let mut out = Vec::new();
    let mut seq = 1;
    let mut reports = 0;
    for i in 0..20_000u64 {
        // Mangled copies of real frames (bytes flipped, cut, grown) and
        // pure noise, from a peer the relay takes back each time.
        let mut f = match i % 3 {
            0 => media(1000 + i).to_vec(),
            1 => heartbeat(1).to_vec(),
            _ => (0..rng.next() % 64).map(|_| rng.next() as u8).collect(),
        };
        if !f.is_empty() {
            let at = (rng.next() as usize) % f.len();
            match rng.next() % 3 {
                0 => f[at] ^= 1 << (rng.next() % 8),
                1 => f.truncate(at),
                _ => f.extend(std::iter::repeat_n(0, at)),
            }
        }
        if !rig.relay.is_up(&a) {
            rig.relay.set_links(Links::default(), rig.now);
            rig.relay.set_links(
                Links {
                    parents: vec![a],
                    backup_parents: vec![b],
                    ..Links::default()
                },
                rig.now,
            );
            rig.relay.link_up(a, rig.now);
        }
        // Only a well-formed chunk of this stream whose check fails may be
        // reported (a flipped bit in a real chunk is such a forgery).
        let ours =
            matches!(FrameRef::decode(&f), Ok(FrameRef::Chunk(c)) if c.header.stream == STREAM);
        let o = rig.from(a, Bytes::from(f));
        // One frame: a bounded reaction (at most a close, a resubscription
        // and a delivery or two), whatever it held.
        assert!(o.len() <= 8, "{o:?}");
        if !ours {
            assert_eq!(rejected(&o), 0, "{o:?}");
        }
        reports += rejected(&o);
        out.extend(o);
        if i % 50 == 0 {
            out.extend(rig.from(b, media(seq)));
            seq += 1;
        }
    }
    assert!(reports > 0, "flipped bits in real chunks are forgeries");
    assert!(rig.relay.stats().garbage_links > 100);
    // The honest upstream's chunks were all played.
    assert_eq!(
        delivered(&out)
            .into_iter()
            .filter(|s| *s < 1000)
            .collect::<Vec<_>>(),
        (1..seq).collect::<Vec<_>>()
    );
}

#[test]
fn a_death_on_an_idle_lan_fails_over_within_250_ms_and_closes_the_link_later() {
    let config = hot();
    let close_after = config.link_close_after;
    let mut rig = Rig::new(2, config);
    let (a, b, c) = (rig.parent, rig.backups[0], rig.backups[1]);
    assert_eq!(rig.relay.upstreams(), &[a, b]);
    // Two seconds of steady heartbeats every 50 ms from all three.
    for _ in 0..40 {
        let mut out = rig.advance(Duration::from_millis(50));
        for p in [a, b, c] {
            out.extend(rig.from(p, heartbeat(1)));
        }
        assert!(dead(&out).is_empty());
        assert_eq!(rig.relay.stats().silent_links, 0);
    }
    // `a` dies right after its last heartbeat; the others go on.
    let died = rig.now;
    let mut failed_over = None;
    let mut closed = None;
    for step in 1..=700 {
        let out = rig.advance(Duration::from_millis(10));
        if failed_over.is_none() && subscribes(&out).iter().any(|(to, ..)| *to == c) {
            failed_over = Some(rig.now - died);
            assert_eq!(rig.relay.upstreams(), &[b, c]);
        }
        if dead(&out).contains(&a) {
            closed = Some(rig.now - died);
            break;
        }
        if step % 5 == 0 {
            rig.from(b, heartbeat(1));
            rig.from(c, heartbeat(1));
        }
    }
    let failed_over = failed_over.expect("never failed over");
    assert!(
        failed_over < Duration::from_millis(250),
        "failed over after {failed_over:?}"
    );
    let closed = closed.expect("the dead link was never closed");
    assert!(closed >= close_after && closed < close_after + Duration::from_millis(50));
}

#[test]
fn a_jittery_link_is_given_the_time_its_jitter_asks_for() {
    let mut rig = Rig::new(1, hot());
    let (a, b) = (rig.parent, rig.backups[0]);
    // `a`'s sender is starved now and then: its frames come in bursts, with
    // 300 ms silences between them; `b` is steady. Both carry the stream.
    rig.from(b, init(0));
    let mut silent_late = 0;
    let mut seq = 0;
    for round in 0..20 {
        let before = rig.relay.stats().silent_links;
        for _ in 0..6 {
            rig.advance(Duration::from_millis(50));
            seq += 1;
            rig.from(b, media(seq));
        }
        for s in seq - 5..=seq {
            rig.from(a, media(s));
        }
        if round >= 4 {
            // After a few rounds the timeout has learnt the pattern.
            silent_late += rig.relay.stats().silent_links - before;
        }
    }
    assert_eq!(silent_late, 0, "still taken for silent after learning");
    assert!(
        rig.relay.stats().silent_links > 0,
        "the first silences did count"
    );
    let mut ups = rig.relay.upstreams().to_vec();
    ups.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(ups, both);
    // Silence well beyond that pattern still makes it silent, then dead.
    let mut out = Vec::new();
    for step in 0..110 {
        out.extend(rig.advance(Duration::from_millis(50)));
        rig.from(b, heartbeat(1));
        if step == 50 {
            assert_eq!(rig.relay.upstreams(), &[b], "silent after 2.5 s");
        }
    }
    assert!(dead(&out).contains(&a), "dead after 5.5 s");
}

#[test]
fn our_own_stall_declares_no_link_dead() {
    let mut rig = Rig::new(1, hot());
    let (a, b) = (rig.parent, rig.backups[0]);
    for _ in 0..20 {
        rig.advance(Duration::from_millis(50));
        rig.from(a, heartbeat(1));
        rig.from(b, heartbeat(1));
    }
    // This host is starved for 800 ms: no timer runs, no frame is read.
    rig.now += Duration::from_millis(800);
    rig.relay.handle_timeout(rig.now);
    let mut out = rig.drain();
    // Then the frames that queued meanwhile are read.
    out.extend(rig.from(a, heartbeat(1)));
    out.extend(rig.from(b, heartbeat(1)));
    out.extend(rig.advance(Duration::from_millis(40)));
    rig.from(a, heartbeat(1));
    rig.from(b, heartbeat(1));
    out.extend(rig.advance(Duration::from_millis(40)));
    assert!(dead(&out).is_empty(), "{:?}", dead(&out));
    assert_eq!(rig.relay.stats().silent_links, 0);
    assert_eq!(rig.relay.stats().local_stalls, 1);
    assert_eq!(rig.relay.upstreams(), &[a, b]);
}

#[test]
fn an_upstream_whose_copies_lag_is_replaced() {
    let mut rig = Rig::new(2, hot());
    let (a, b, c) = (rig.parent, rig.backups[0], rig.backups[1]);
    assert_eq!(rig.relay.upstreams(), &[a, b]);
    rig.from(b, init(0));
    rig.from(a, init(0));
    // `b` is live; the parent `a` sends every chunk 1.5 s late (its uplink
    // is congested).
    let mut out = Vec::new();
    for seq in 1..=100u64 {
        out.extend(rig.advance(Duration::from_millis(50)));
        out.extend(rig.from(b, media(seq)));
        out.extend(rig.from(c, heartbeat(1)));
        out.extend(rig.from(a, heartbeat(1)));
        if seq > 30 {
            out.extend(rig.from(a, media(seq - 30)));
        }
    }
    assert_eq!(unsubscribes(&out), vec![a], "{out:?}");
    assert!(subscribes(&out).iter().any(|(to, ..)| *to == c));
    assert_eq!(rig.relay.upstreams(), &[b, c]);
    assert_eq!(rig.relay.stats().lagging_upstreams, 1);
    assert!(out.contains(&Output::Lagging { peer: a }));
    assert_eq!(rejected(&out), 0);
}

#[test]
fn a_missing_init_segment_is_asked_for_again_without_replaying_media() {
    let mut rig = Rig::new(1, hot());
    let a = rig.parent;
    // The init frame was dropped on the way; media flows.
    let mut out = Vec::new();
    for seq in 1..=5 {
        out.extend(rig.from(a, media(seq)));
    }
    for _ in 0..8 {
        out.extend(rig.advance(Duration::from_millis(50)));
        out.extend(rig.from(a, heartbeat(1)));
    }
    let asks: Vec<_> = subscribes(&out)
        .into_iter()
        .filter(|(_, _, f)| f.contains(SubscribeFlags::NEED_INIT))
        .collect();
    assert!(!asks.is_empty(), "{out:?}");
    // From past what we hold: no media replayed.
    assert!(asks.iter().all(|(_, from, _)| *from == 6), "{asks:?}");
    // The init arrives: the held media is delivered.
    let out = rig.from(a, init(0));
    let delivered = out
        .iter()
        .filter(|o| matches!(o, Output::Deliver { .. }))
        .count();
    assert_eq!(delivered, 6, "{out:?}");
}

#[test]
fn an_upstream_that_falls_silent_while_others_feed_us_is_asked_again() {
    let mut rig = Rig::new(1, hot());
    let (a, b) = (rig.parent, rig.backups[0]);
    rig.from(b, init(0));
    // `b` feeds us; `a` is alive (heartbeats) but sends no chunk: our
    // subscription was lost on the way.
    let mut out = Vec::new();
    for seq in 1..=60u64 {
        out.extend(rig.advance(Duration::from_millis(50)));
        out.extend(rig.from(b, media(seq)));
        out.extend(rig.from(a, heartbeat(1)));
    }
    let renewed: Vec<_> = subscribes(&out)
        .into_iter()
        .filter(|(to, ..)| *to == a)
        .collect();
    assert!(!renewed.is_empty(), "never asked the silent upstream again");
    assert!(renewed.len() <= 2, "asked too often: {renewed:?}");
    // `b`, which feeds us, is never asked again.
    assert!(subscribes(&out).iter().all(|(to, ..)| *to != b));
}

#[test]
fn heartbeats_go_where_a_fast_verdict_is_needed() {
    let now = Instant::now();
    let (parent, child) = (PeerId::random(), PeerId::random());
    let mut relay = Relay::receiver(
        PeerId::random(),
        STREAM,
        TopologyKind::Tree,
        RelayConfig::default(),
        ReplayCheck::default(),
        now,
    );
    relay.set_links(
        Links {
            parents: vec![parent],
            children: vec![child],
            ..Links::default()
        },
        now,
    );
    relay.link_up(parent, now);
    relay.link_up(child, now);
    let mut t = now;
    let mut sent: Vec<PeerId> = Vec::new();
    while t < now + Duration::from_secs(2) {
        t += Duration::from_millis(10);
        if t.duration_since(now).as_millis() % 50 == 0 {
            relay.handle_frame(parent, heartbeat(1), t);
            relay.handle_frame(child, heartbeat(3), t);
        }
        if relay.poll_timeout() <= t {
            relay.handle_timeout(t);
        }
        while let Some(o) = relay.poll_output() {
            if let Output::Send { to, frame } = o {
                if matches!(FrameRef::decode(&frame), Ok(FrameRef::Heartbeat { .. })) {
                    sent.push(to);
                }
            }
        }
    }
    let to_parent = sent.iter().filter(|p| **p == parent).count();
    let to_child = sent.iter().filter(|p| **p == child).count();
    // The child needs to know at once if we die: every 50 ms. The parent
    // only feeds us: every 500 ms (plus the first ones, and a depth change).
    assert!((38..=42).contains(&to_child), "{to_child} to the child");
    assert!((3..=7).contains(&to_parent), "{to_parent} to the parent");
}

#[test]
fn a_warm_standby_whose_only_upstream_stops_feeding_it_asks_again_then_moves_on() {
    let warm = RelayConfig {
        redundancy: Some(1),
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(1, warm);
    let (a, b) = (rig.parent, rig.backups[0]);
    assert_eq!(rig.relay.upstreams(), &[a]);
    rig.from(a, init(0));
    for seq in 1..=10 {
        rig.from(a, media(seq));
    }
    // Then `a` sends heartbeats only: our subscription was lost.
    let mut out = Vec::new();
    for _ in 0..100 {
        out.extend(rig.advance(Duration::from_millis(50)));
        out.extend(rig.from(a, heartbeat(1)));
        out.extend(rig.from(b, heartbeat(1)));
    }
    let subs = subscribes(&out);
    let to_a = subs.iter().filter(|(to, ..)| *to == a).count();
    assert_eq!(to_a, 1, "renewed once: {subs:?}");
    // The renewal brought nothing: the backup takes over, from chunk 11.
    assert!(
        subs.iter().any(|(to, from, _)| *to == b && *from == 11),
        "{subs:?}"
    );
    assert_eq!(rig.relay.upstreams(), &[b]);
}
