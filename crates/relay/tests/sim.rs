//! Relays wired through a simulated network with a virtual clock: chunks,
//! heartbeats and subscriptions travel with a fixed latency, peers die
//! without a word, and every surviving receiver must still play every chunk.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use miostream_protocol::signal::Links;
use miostream_protocol::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, PeerId, StreamId, TopologyKind,
};
use miostream_relay::{Output, Refusal, Relay, RelayConfig, Verify};

/// Stands in for the integrity check: a genuine chunk's payload is its
/// sequence number's low byte, repeated.
#[derive(Debug, Clone, Copy)]
struct PayloadCheck;

impl Verify for PayloadCheck {
    fn verify(&mut self, chunk: &miostream_protocol::ChunkRef<'_>) -> Result<(), Refusal> {
        let want = chunk.header.seq as u8;
        if chunk.payload.iter().all(|b| *b == want) {
            Ok(())
        } else {
            Err(Refusal::Forged(format!(
                "forged chunk {}",
                chunk.header.seq
            )))
        }
    }

    fn check_copy(&mut self, chunk: &miostream_protocol::ChunkRef<'_>) -> Result<(), Refusal> {
        self.verify(chunk)
    }
}

const STREAM: StreamId = StreamId(7);
const LATENCY: Duration = Duration::from_millis(2);

struct Net {
    now: Instant,
    relays: BTreeMap<PeerId, Relay<PayloadCheck>>,
    /// Peers that tamper with every chunk they relay.
    forgers: HashSet<PeerId>,
    /// (reporter, accused) for every rejection.
    rejections: Vec<(PeerId, PeerId)>,
    dead: HashSet<PeerId>,
    /// (arrival, from, to, frame)
    in_flight: Vec<(Instant, PeerId, PeerId, Bytes)>,
    delivered: HashMap<PeerId, Vec<(u64, Instant)>>,
    skipped: HashMap<PeerId, u64>,
    root: PeerId,
    seq: u64,
    t0: Instant,
    /// Links that come up later: (when, a, b).
    pending_up: Vec<(Instant, PeerId, PeerId)>,
    /// (peer, retired peer) for every link a relay retired (then closed).
    retired: Vec<(PeerId, PeerId)>,
}

fn frame(seq: u64, kind: ChunkKind, flags: ChunkFlags, ts: u64) -> Bytes {
    let c = Chunk {
        header: ChunkHeader {
            stream: STREAM,
            seq,
            kind,
            flags,
            timestamp_ms: ts,
            send_time_us: 0,
        },
        tag: vec![],
        payload: vec![seq as u8; 100],
    };
    Bytes::from(c.encode().unwrap())
}

impl Net {
    fn new(
        kind: TopologyKind,
        links: &HashMap<PeerId, Links>,
        root: PeerId,
        redundancy: usize,
    ) -> Self {
        let now = Instant::now();
        let config = RelayConfig {
            redundancy: Some(redundancy),
            ..RelayConfig::default()
        };
        let mut relays = BTreeMap::new();
        for (&p, l) in links {
            let mut r = if p == root {
                Relay::source(p, STREAM, kind, config.clone(), PayloadCheck, now)
            } else {
                Relay::receiver(p, STREAM, kind, config.clone(), PayloadCheck, now)
            };
            r.set_links(l.clone(), now);
            relays.insert(p, r);
        }
        let mut net = Self {
            now,
            relays,
            dead: HashSet::new(),
            forgers: HashSet::new(),
            rejections: Vec::new(),
            in_flight: Vec::new(),
            delivered: HashMap::new(),
            skipped: HashMap::new(),
            root,
            seq: 0,
            t0: now,
            pending_up: Vec::new(),
            retired: Vec::new(),
        };
        // Every link comes up at once (WebRTC set-up is the driver's business).
        let pairs: Vec<(PeerId, PeerId)> = links
            .iter()
            .flat_map(|(&a, l)| l.all_peers().map(move |b| (a, b)))
            .collect();
        for (a, b) in pairs {
            net.relays.get_mut(&a).unwrap().link_up(b, now);
        }
        net.publish(frame(
            0,
            ChunkKind::Init,
            ChunkFlags::CLUSTER_START.with(ChunkFlags::CLUSTER_END),
            0,
        ));
        net.seq = 1;
        net
    }

    fn publish(&mut self, f: Bytes) {
        let now = self.now;
        self.relays.get_mut(&self.root).unwrap().publish(f, now);
    }

    /// Runs the network for `d`, the source publishing 20 chunks/s
    /// (clusters of 10 chunks, each starting with a keyframe).
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            let now = self.now;
            if now.saturating_duration_since(self.t0) >= Duration::from_millis(self.seq * 50) {
                let seq = self.seq;
                let flags = if seq % 10 == 1 {
                    ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME)
                } else if seq % 10 == 0 {
                    ChunkFlags::CLUSTER_END
                } else {
                    ChunkFlags::empty()
                };
                self.publish(frame(seq, ChunkKind::Media, flags, seq * 50));
                self.seq += 1;
            }
            // Links whose set-up finished.
            let (ready, later): (Vec<_>, Vec<_>) =
                self.pending_up.drain(..).partition(|(t, ..)| *t <= now);
            self.pending_up = later;
            for (_, a, b) in ready {
                self.relays.get_mut(&a).unwrap().link_up(b, now);
                self.relays.get_mut(&b).unwrap().link_up(a, now);
            }
            // Deliver frames that arrived.
            let (arrived, rest): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(t, ..)| *t <= now);
            self.in_flight = rest;
            for (_, from, to, f) in arrived {
                if self.dead.contains(&to) || self.dead.contains(&from) {
                    continue;
                }
                if let Some(r) = self.relays.get_mut(&to) {
                    r.handle_frame(from, f, now);
                }
            }
            let mut closed = Vec::new();
            for (&p, r) in self.relays.iter_mut() {
                if self.dead.contains(&p) {
                    continue;
                }
                if r.poll_timeout() <= now {
                    r.handle_timeout(now);
                }
                while let Some(o) = r.poll_output() {
                    match o {
                        Output::Send { to, frame } => {
                            let frame = if self.forgers.contains(&p) {
                                tamper(frame)
                            } else {
                                frame
                            };
                            self.in_flight.push((now + LATENCY, p, to, frame))
                        }
                        Output::Deliver { header, .. } => {
                            if header.kind == ChunkKind::Media {
                                self.delivered.entry(p).or_default().push((header.seq, now));
                            }
                        }
                        Output::Skipped { count, .. } => {
                            *self.skipped.entry(p).or_default() += count
                        }
                        Output::Rejected { from, .. } => self.rejections.push((p, from)),
                        Output::LinkDead { .. }
                        | Output::Garbage { .. }
                        | Output::Lagging { .. } => {}
                        Output::Retired { peer } => closed.push((p, peer)),
                    }
                }
            }
            // The driver closes a retired link: both ends see it go down.
            for (a, b) in closed {
                self.retired.push((a, b));
                for (x, y) in [(a, b), (b, a)] {
                    if let Some(r) = self.relays.get_mut(&x) {
                        r.link_down(y, now);
                    }
                }
            }
        }
    }

    /// The supervisor's reconfiguration reaches every peer in `changes` at
    /// once; links it adds take `setup` to come up (WebRTC: ~0.6 s).
    fn reconfigure(&mut self, changes: &[(PeerId, Links)], setup: Duration) {
        let now = self.now;
        for (p, links) in changes {
            let r = self.relays.get_mut(p).unwrap();
            for q in links.all_peers() {
                if !r.is_up(&q) && *p < q {
                    self.pending_up.push((now + setup, *p, q));
                }
            }
            r.set_links(links.clone(), now);
        }
    }

    /// Kills a peer without a word: its frames stop, nobody is told.
    fn kill(&mut self, p: PeerId) {
        self.dead.insert(p);
    }

    /// Every surviving receiver played a contiguous run of chunks with
    /// nothing skipped; returns the longest gap between two deliveries.
    fn check(&self, min_chunks: usize) -> Duration {
        let mut worst = Duration::ZERO;
        for (p, _) in self
            .relays
            .iter()
            .filter(|(p, _)| **p != self.root && !self.dead.contains(p))
        {
            let got = self.delivered.get(p).map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                got.len() >= min_chunks,
                "{p:?} played only {} chunks",
                got.len()
            );
            for w in got.windows(2) {
                assert_eq!(
                    w[1].0,
                    w[0].0 + 1,
                    "{p:?} skipped from {} to {}",
                    w[0].0,
                    w[1].0
                );
                worst = worst.max(w[1].1 - w[0].1);
            }
            assert_eq!(
                self.skipped.get(p).copied().unwrap_or(0),
                0,
                "{p:?} skipped chunks"
            );
        }
        worst
    }
}

/// Flips the last payload byte of a chunk frame (other frames pass).
fn tamper(frame: Bytes) -> Bytes {
    match miostream_protocol::Frame::decode(&frame) {
        Ok(miostream_protocol::Frame::Chunk(mut c)) if !c.payload.is_empty() => {
            let last = c.payload.len() - 1;
            c.payload[last] ^= 0xff;
            Bytes::from(c.encode().unwrap())
        }
        _ => frame,
    }
}

/// A binary tree with a backup parent across branches for every node below
/// the first level: its parent's sibling (or its grandparent when the parent
/// has no sibling).
fn tree(n: usize) -> (PeerId, Vec<PeerId>, HashMap<PeerId, Links>) {
    let ids: Vec<PeerId> = (0..=n).map(|_| PeerId::random()).collect();
    let root = ids[0];
    let mut links: HashMap<PeerId, Links> = ids.iter().map(|p| (*p, Links::default())).collect();
    let parent = |i: usize| if i <= 2 { 0 } else { (i - 1) / 2 };
    for i in 1..=n {
        let p = parent(i);
        links.get_mut(&ids[p]).unwrap().children.push(ids[i]);
        links.get_mut(&ids[i]).unwrap().parents.push(ids[p]);
        // Backup: the parent's sibling (another branch), else the grandparent.
        let backup = if p == 0 {
            None
        } else {
            let gp = parent(p);
            let uncle = if gp == 0 {
                if p == 1 {
                    2
                } else {
                    1
                }
            } else if p % 2 == 1 {
                p + 1
            } else {
                p - 1
            };
            Some(if uncle <= n { uncle } else { gp })
        };
        if let Some(b) = backup {
            links.get_mut(&ids[b]).unwrap().backup_children.push(ids[i]);
            links.get_mut(&ids[i]).unwrap().backup_parents.push(ids[b]);
        }
    }
    (root, ids, links)
}

#[test]
fn a_tree_delivers_every_chunk_to_every_receiver() {
    let (root, _ids, links) = tree(14);
    let mut net = Net::new(TopologyKind::Tree, &links, root, 2);
    net.run(Duration::from_secs(5));
    let worst = net.check(80);
    println!("worst gap between deliveries: {worst:?}");
    assert!(worst <= Duration::from_millis(60), "worst gap {worst:?}");
}

#[test]
fn killing_an_inner_node_loses_nothing_with_hot_standby() {
    let (root, ids, links) = tree(14);
    let mut net = Net::new(TopologyKind::Tree, &links, root, 2);
    net.run(Duration::from_secs(3));
    net.kill(ids[1]); // the root's first child: half the tree hangs below it
    net.run(Duration::from_secs(4));
    let worst = net.check(120);
    println!("worst gap between deliveries: {worst:?}");
    // Hot standby: the other upstream was already sending.
    assert!(worst <= Duration::from_millis(60), "worst gap {worst:?}");
}

#[test]
fn with_warm_standby_failover_is_fast_and_gap_free() {
    let (root, ids, links) = tree(14);
    let mut net = Net::new(TopologyKind::Tree, &links, root, 1);
    net.run(Duration::from_secs(3));
    net.kill(ids[2]);
    net.run(Duration::from_secs(4));
    let worst = net.check(120);
    println!("worst gap between deliveries: {worst:?}");
    // Detection (250 ms of silence) plus one subscription round trip.
    assert!(worst <= Duration::from_millis(350), "worst gap {worst:?}");
}

#[test]
fn forged_chunks_are_rejected_never_relayed_and_the_honest_path_fills_in() {
    let (root, ids, links) = tree(14);
    let mut net = Net::new(TopologyKind::Tree, &links, root, 2);
    net.forgers.insert(ids[3]); // an inner relay two levels down
    net.run(Duration::from_secs(5));
    // Its children reject what it sends, and play every chunk from their
    // other upstream.
    let worst = net.check(80);
    println!("worst gap between deliveries: {worst:?}");
    assert!(!net.rejections.is_empty());
    for (reporter, accused) in &net.rejections {
        assert_eq!(*accused, ids[3], "{reporter:?} blamed an honest peer");
    }
    let victims: HashSet<PeerId> = net.rejections.iter().map(|(r, _)| *r).collect();
    assert!(victims
        .iter()
        .all(|v| links[&ids[3]].all_peers().any(|p| p == *v)));
}

#[test]
fn a_list_survives_a_failure_in_the_middle() {
    // root → r1 → r2 → … → r8, each with backups two and three nodes up.
    let ids: Vec<PeerId> = (0..=8).map(|_| PeerId::random()).collect();
    let mut links: HashMap<PeerId, Links> = ids.iter().map(|p| (*p, Links::default())).collect();
    for i in 1..ids.len() {
        links.get_mut(&ids[i - 1]).unwrap().children.push(ids[i]);
        links.get_mut(&ids[i]).unwrap().parents.push(ids[i - 1]);
        for back in [2, 3] {
            if i >= back {
                links
                    .get_mut(&ids[i - back])
                    .unwrap()
                    .backup_children
                    .push(ids[i]);
                links
                    .get_mut(&ids[i])
                    .unwrap()
                    .backup_parents
                    .push(ids[i - back]);
            }
        }
    }
    let mut net = Net::new(TopologyKind::List, &links, ids[0], 2);
    net.run(Duration::from_secs(3));
    net.kill(ids[4]);
    net.run(Duration::from_secs(4));
    let worst = net.check(120);
    println!("worst gap between deliveries: {worst:?}");
    assert!(worst <= Duration::from_millis(60), "worst gap {worst:?}");
}

#[test]
fn a_moved_receiver_keeps_its_old_upstreams_until_the_new_links_are_up() {
    let (root, ids, mut links) = tree(6);
    let mut net = Net::new(TopologyKind::Tree, &links, root, 2);
    net.run(Duration::from_secs(2));
    // A repair moves ids[6] from under ids[2] (backup ids[1]) to under
    // ids[3] (backup ids[4]): both of its new links take 600 ms to open.
    let (moved, old_parent, old_backup) = (ids[6], ids[2], ids[1]);
    let (new_parent, new_backup) = (ids[3], ids[4]);
    let l = links.get_mut(&moved).unwrap();
    assert_eq!(
        (l.parents.clone(), l.backup_parents.clone()),
        (vec![old_parent], vec![old_backup])
    );
    l.parents = vec![new_parent];
    l.backup_parents = vec![new_backup];
    links
        .get_mut(&old_parent)
        .unwrap()
        .children
        .retain(|p| *p != moved);
    links
        .get_mut(&old_backup)
        .unwrap()
        .backup_children
        .retain(|p| *p != moved);
    links.get_mut(&new_parent).unwrap().children.push(moved);
    links
        .get_mut(&new_backup)
        .unwrap()
        .backup_children
        .push(moved);
    let changes: Vec<(PeerId, Links)> = [moved, old_parent, old_backup, new_parent, new_backup]
        .iter()
        .map(|p| (*p, links[p].clone()))
        .collect();
    net.reconfigure(&changes, Duration::from_millis(600));
    net.run(Duration::from_secs(5));
    // Make before break: no pause beyond the source's 50 ms cadence.
    let worst = net.check(120);
    println!("worst gap between deliveries: {worst:?}");
    assert!(worst <= Duration::from_millis(60), "worst gap {worst:?}");
    // Then the old links were retired and closed, and the new ones feed it.
    for old in [old_parent, old_backup] {
        assert!(
            net.retired
                .iter()
                .any(|&(a, b)| (a, b) == (moved, old) || (a, b) == (old, moved)),
            "link {moved:?}-{old:?} not retired: {:?}",
            net.retired
        );
        assert!(!net.relays[&moved].is_up(&old));
    }
    let mut ups = net.relays[&moved].upstreams().to_vec();
    ups.sort();
    let mut want = vec![new_parent, new_backup];
    want.sort();
    assert_eq!(ups, want);
}
