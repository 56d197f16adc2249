//! [`Relay`]: one peer's data plane in one stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use miostream_protocol::frame::MAX_GAP_COUNT;
use miostream_protocol::signal::Links;
use miostream_protocol::{
    ChunkFlags, ChunkHeader, ChunkKind, Frame, FrameRef, PeerId, StreamId, SubscribeFlags,
    TopologyKind,
};

use crate::store::ChunkStore;
use crate::{Output, Refusal, RelayConfig, Verify};

/// Depth advertised by a peer that is not fed.
const UNREACHABLE: u16 = u16::MAX;
/// Depths at or beyond this count as unreachable (ends count-to-infinity).
const MAX_DEPTH: u16 = 64;
/// Frames a link may carry that are not ours to read (undecodable,
/// oversized, truncated, chunks or control frames of another stream): at
/// this many it is closed as garbage.
pub const GARBAGE_ALLOWANCE: u32 = 3;
/// Heartbeats to a peer that only ever feeds us (our parent or backup
/// parent) go out every this many intervals: it has no use for a fast
/// verdict on us, while we need one on it.
const SLOW_HEARTBEAT_EVERY: u64 = 10;
/// First arrivals remembered, to measure how late each upstream's copies are.
const ARRIVALS_KEPT: usize = 512;
/// An upstream lags when the median lateness of its copies over this
/// window exceeds [`RelayConfig::max_lag`]: a median over seconds, so the
/// copies a lost packet or a brief stall held back do not count, while a
/// congested uplink, which delays them all, does.
const LAG_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);
/// Samples needed, spanning at least two thirds of the window.
const LAG_SAMPLES: usize = 9;
const LAG_SAMPLES_KEPT: usize = 128;
/// An upstream that sent no chunk for this long while others did is asked
/// again (its subscription may have been lost, e.g. overtaken by an old
/// unsubscribe on the unordered channel).
const SILENT_UPSTREAM: std::time::Duration = std::time::Duration::from_secs(2);

/// Counters for the receiver summary and the monitor.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayStats {
    /// New chunks accepted (verified, not duplicates).
    pub chunks_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// Of those, the bytes that came from a link at depth 0 (the source,
    /// as its heartbeats say): the rest is what the overlay carried.
    pub bytes_from_source: u64,
    /// Copies of chunks held already (redundant upstreams, gap fill overlap).
    pub duplicates: u64,
    /// Chunks that failed verification or were malformed.
    pub rejected: u64,
    /// Chunks delivered to the local player.
    pub delivered: u64,
    /// Chunks skipped because they never arrived.
    pub skipped: u64,
    /// Gap requests sent.
    pub gap_requests: u64,
    /// Upstreams added after the first (failovers and reconfigurations).
    pub upstream_changes: u64,
    /// Links declared dead: silent for [`RelayConfig::link_close_after`].
    pub dead_links: u64,
    /// Times a link fell silent past its timeout (and stopped being an
    /// upstream until heard again).
    pub silent_links: u64,
    /// Frames that were not ours to read (undecodable, oversized, truncated,
    /// chunks or control frames of another stream).
    pub garbage: u64,
    /// Links closed because they carried [`GARBAGE_ALLOWANCE`] such frames.
    pub garbage_links: u64,
    /// Upstreams dropped because their copies came later than the others' by
    /// more than [`RelayConfig::max_lag`].
    pub lagging_upstreams: u64,
    /// Times our own timers fired so late that we, not our links, were
    /// stalled: no link was declared dead for that silence.
    pub local_stalls: u64,
    /// Replays (backlogs, gap fills) cut short by a link's replay budget.
    pub replays_throttled: u64,
    /// Requests for what follows our newest chunk when nothing did.
    pub tail_probes: u64,
}

/// One live link, and what we learn from what it sends.
#[derive(Debug)]
struct Link {
    last_heard: Instant,
    depth: u16,
    /// Smoothed gap between frames heard (µs), and its mean deviation: the
    /// link's timeout adapts to them (as TCP's RTO adapts to the RTT).
    gap_us: f64,
    gap_dev_us: f64,
    /// Lateness of this upstream's recent copies behind the first copy:
    /// (when, µs).
    lags: VecDeque<(Instant, u64)>,
    /// Past its timeout and not heard since.
    silent: bool,
    /// When it last sent a chunk, or we last subscribed to it.
    fed_at: Instant,
    /// We renewed our subscription since its last chunk.
    renewed: bool,
    /// When we last forwarded a chunk on it (a chunk proves we are alive
    /// as well as a heartbeat does).
    sent_at: Option<Instant>,
    garbage: u32,
    /// Bytes we may still replay to this peer (subscription backlogs, gap
    /// fill): a token bucket, refilled at [`RelayConfig::repair_rate`].
    repair_tokens: f64,
    repair_at: Instant,
}

impl Link {
    fn new(now: Instant, heartbeat: std::time::Duration) -> Self {
        let hb = heartbeat.as_micros() as f64;
        Self {
            last_heard: now,
            depth: UNREACHABLE,
            gap_us: hb,
            gap_dev_us: hb / 4.0,
            lags: VecDeque::new(),
            silent: false,
            fed_at: now,
            renewed: false,
            sent_at: None,
            garbage: 0,
            repair_tokens: 0.0,
            repair_at: now,
        }
    }

    /// Takes `bytes` from the replay budget if it holds them.
    fn charge(&mut self, bytes: usize, now: Instant, config: &RelayConfig) -> bool {
        let refill = now.saturating_duration_since(self.repair_at).as_secs_f64()
            * f64::from(config.repair_rate);
        self.repair_at = now;
        self.repair_tokens = (self.repair_tokens + refill).min(f64::from(config.repair_burst));
        if self.repair_tokens < bytes as f64 {
            return false;
        }
        self.repair_tokens -= bytes as f64;
        true
    }

    fn heard(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_heard).as_micros() as f64;
        let err = gap - self.gap_us;
        self.gap_us += err / 8.0;
        self.gap_dev_us += (err.abs() - self.gap_dev_us) / 4.0;
        self.last_heard = now;
    }

    /// Silence after which this link is dead: four deviations beyond the
    /// usual gap plus one heartbeat interval, within the configured bounds.
    fn timeout(&self, config: &RelayConfig) -> std::time::Duration {
        let us = self.gap_us + 4.0 * self.gap_dev_us + config.heartbeat_interval.as_micros() as f64;
        std::time::Duration::from_micros(us.max(0.0) as u64).clamp(
            config.link_timeout,
            config.max_link_timeout.max(config.link_timeout),
        )
    }
}

/// The newest media chunk we hold, to notice a lost *last* chunk: no later
/// chunk arrives to reveal that hole until the next burst, up to a cluster
/// (a second) later.
#[derive(Debug, Clone, Copy)]
struct Tail {
    seq: u64,
    at: Instant,
    /// It ends its cluster: nothing is missing after it.
    ended: bool,
    probed: bool,
}

/// Chunks a tail probe asks for.
const TAIL_PROBE: u32 = 16;

#[derive(Debug)]
struct Hole {
    since: Instant,
    last_ask: Option<Instant>,
    asked: Vec<PeerId>,
}

/// One peer's data plane for one stream (see the crate docs).
#[derive(Debug)]
pub struct Relay<V> {
    me: PeerId,
    stream: StreamId,
    source: bool,
    kind: TopologyKind,
    config: RelayConfig,
    verify: V,
    links: Links,
    up: HashMap<PeerId, Link>,
    subscribers: HashSet<PeerId>,
    upstreams: Vec<PeerId>,
    /// Live links the topology removed, kept until their grace deadline
    /// (make before break): a peer that moves keeps its old parent until a
    /// new upstream is up, and a parent keeps serving a child that moved
    /// until it unsubscribes.
    retiring: HashMap<PeerId, Instant>,
    ever_subscribed: bool,
    store: ChunkStore,
    next_deliver: Option<u64>,
    init_delivered: Option<u64>,
    hole: Option<Hole>,
    tail: Option<Tail>,
    /// Smoothed gap between consecutive chunks of a cluster (µs).
    chunk_gap_us: f64,
    heartbeat_counter: u64,
    next_heartbeat: Instant,
    /// The depth our last heartbeats carried.
    depth_sent: u16,
    /// When the timers last ran, to tell our own stalls from our links'.
    last_tick: Instant,
    /// No link is declared dead before this (we were stalled ourselves).
    liveness_grace: Option<Instant>,
    /// Upstreams whose copies lagged, excluded until then.
    lagging: HashMap<PeerId, Instant>,
    /// Peers that sent us a forged chunk: never our upstream again (the
    /// supervisor decides whether they go; until then holes are filled
    /// from others). Only linked peers are kept.
    distrusted: HashSet<PeerId>,
    /// Peers whose link we closed for sending garbage: their link is not
    /// taken up again while the topology keeps them linked to us (only
    /// linked peers are kept; an unlinked and relinked peer starts afresh).
    shunned: HashSet<PeerId>,
    /// When each recent sequence number first arrived.
    arrivals: VecDeque<(u64, Instant)>,
    /// When we last asked for the init segment we lack.
    init_asked: Option<Instant>,
    /// What recently closed links taught us about their peers' timing
    /// (smoothed gap and deviation, µs), so a link that flaps and comes back
    /// starts from what it showed, not from an idle LAN's.
    gap_history: HashMap<PeerId, (f64, f64)>,
    epoch: Instant,
    out: VecDeque<Output>,
    stats: RelayStats,
}

impl<V: Verify> Relay<V> {
    /// The relay of the stream's source (the broadcaster, the overlay's root).
    pub fn source(
        me: PeerId,
        stream: StreamId,
        kind: TopologyKind,
        config: RelayConfig,
        verify: V,
        now: Instant,
    ) -> Self {
        Self::new(me, stream, true, kind, config, verify, now)
    }

    /// The relay of a receiver.
    pub fn receiver(
        me: PeerId,
        stream: StreamId,
        kind: TopologyKind,
        config: RelayConfig,
        verify: V,
        now: Instant,
    ) -> Self {
        Self::new(me, stream, false, kind, config, verify, now)
    }

    fn new(
        me: PeerId,
        stream: StreamId,
        source: bool,
        kind: TopologyKind,
        config: RelayConfig,
        verify: V,
        now: Instant,
    ) -> Self {
        Self {
            me,
            stream,
            source,
            kind,
            next_heartbeat: now,
            depth_sent: UNREACHABLE,
            last_tick: now,
            liveness_grace: None,
            lagging: HashMap::new(),
            distrusted: HashSet::new(),
            shunned: HashSet::new(),
            arrivals: VecDeque::new(),
            init_asked: None,
            gap_history: HashMap::new(),
            epoch: now,
            config,
            verify,
            links: Links::default(),
            up: HashMap::new(),
            subscribers: HashSet::new(),
            upstreams: Vec::new(),
            retiring: HashMap::new(),
            ever_subscribed: false,
            store: ChunkStore::default(),
            next_deliver: None,
            init_delivered: None,
            hole: None,
            tail: None,
            chunk_gap_us: 0.0,
            heartbeat_counter: 0,
            out: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Peers currently feeding us.
    pub fn upstreams(&self) -> &[PeerId] {
        &self.upstreams
    }

    /// Peers we currently feed.
    pub fn subscribers(&self) -> impl Iterator<Item = &PeerId> {
        self.subscribers.iter()
    }

    /// Hops from the source over our current upstreams.
    pub fn depth(&self) -> u16 {
        if self.source {
            return 0;
        }
        self.upstreams
            .iter()
            .filter_map(|p| self.up.get(p))
            .map(|l| l.depth)
            .filter(|d| *d < MAX_DEPTH)
            .min()
            .map_or(UNREACHABLE, |d| d + 1)
    }

    /// The next chunk the local player needs (`None` before the first keyframe).
    pub fn next_deliver(&self) -> Option<u64> {
        self.next_deliver
    }

    /// The chunk buffer.
    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// The supervisor sent our new link set.
    pub fn set_links(&mut self, links: Links, now: Instant) {
        // Live links to peers no longer linked stay known until the driver
        // closes them: a link can come up before the reconfiguration that
        // explains it arrives. Those that were linked retire gracefully.
        let linked: HashSet<PeerId> = links.all_peers().collect();
        let deadline = now + self.config.retire_grace;
        for p in self.links.all_peers() {
            if !linked.contains(&p) && self.up.contains_key(&p) {
                self.retiring.entry(p).or_insert(deadline);
            }
        }
        self.retiring.retain(|p, _| !linked.contains(p));
        self.distrusted.retain(|p| linked.contains(p));
        self.shunned.retain(|p| linked.contains(p));
        let keep = |p: &PeerId| linked.contains(p) || self.retiring.contains_key(p);
        self.subscribers.retain(keep);
        self.upstreams.retain(keep);
        self.links = links;
        self.refresh_upstreams(now); // also retires what is idle
    }

    /// Whether the link to `peer` is up.
    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.up.contains_key(peer)
    }

    /// Whether we closed the link to `peer` for sending garbage: the driver
    /// should neither set it up again nor accept its offers while the
    /// topology links us (a fresh link would be closed at once).
    pub fn is_shunned(&self, peer: &PeerId) -> bool {
        self.shunned.contains(peer)
    }

    /// Peers the topology removed whose links carry nothing for us any more.
    fn retire_idle(&mut self) {
        let idle: Vec<PeerId> = self
            .retiring
            .keys()
            .filter(|p| !self.upstreams.contains(p) && !self.subscribers.contains(p))
            .copied()
            .collect();
        for peer in idle {
            self.retiring.remove(&peer);
            self.out.push_back(Output::Retired { peer });
        }
    }

    /// The data channel to `peer` opened.
    pub fn link_up(&mut self, peer: PeerId, now: Instant) {
        if self.shunned.contains(&peer) {
            self.out.push_back(Output::Garbage {
                peer,
                reason: "its last link was closed for garbage".into(),
            });
            return;
        }
        // A link that comes up (again) starts fresh on both sides: the peer
        // may have forgotten our subscription, and we theirs.
        self.subscribers.remove(&peer);
        self.upstreams.retain(|p| *p != peer);
        let mut link = Link::new(now, self.config.heartbeat_interval);
        link.repair_tokens = f64::from(self.config.repair_burst);
        if let Some(&(gap, dev)) = self.gap_history.get(&peer) {
            (link.gap_us, link.gap_dev_us) = (gap, dev);
        }
        self.up.insert(peer, link);
        // Tell it our depth at once: it may be choosing upstreams.
        let hb = self.heartbeat_frame(now);
        self.out.push_back(Output::Send {
            to: peer,
            frame: hb,
        });
        self.refresh_upstreams(now);
    }

    /// The data channel to `peer` closed or failed.
    pub fn link_down(&mut self, peer: PeerId, now: Instant) {
        self.retiring.remove(&peer);
        if let Some(mut link) = self.up.remove(&peer) {
            // The silence that ended it is a sample too.
            link.heard(now);
            if self.gap_history.len() >= 1024 {
                self.gap_history.clear();
            }
            self.gap_history
                .insert(peer, (link.gap_us, link.gap_dev_us));
            self.subscribers.remove(&peer);
            self.upstreams.retain(|p| *p != peer);
            self.refresh_upstreams(now);
        }
    }

    /// The broadcaster publishes its next chunk (an encoded, tagged frame).
    pub fn publish(&mut self, frame: Bytes, now: Instant) {
        let Ok(FrameRef::Chunk(chunk)) = FrameRef::decode(&frame) else {
            return;
        };
        let header = chunk.header;
        if self.store.insert(header, frame.clone()) {
            self.forward(None, &frame, now);
        }
        self.store
            .evict(self.config.buffer, self.config.max_buffered_chunks);
    }

    /// A frame arrived on the link from `from`.
    pub fn handle_frame(&mut self, from: PeerId, frame: Bytes, now: Instant) {
        let Some(link) = self.up.get_mut(&from) else {
            return; // not a live link of ours
        };
        link.heard(now);
        if std::mem::take(&mut link.silent) {
            // Heard again: a candidate upstream once more.
            self.refresh_upstreams(now);
        }
        let Some(link) = self.up.get_mut(&from) else {
            return;
        };
        let decoded = match FrameRef::decode(&frame) {
            Ok(f) => f,
            Err(e) => {
                self.garbage(from, e.to_string(), now);
                return;
            }
        };
        match decoded {
            FrameRef::Heartbeat { depth, .. } => {
                let changed = link.depth != depth;
                link.depth = depth;
                if changed && self.kind == TopologyKind::Mesh {
                    self.refresh_upstreams(now);
                }
            }
            FrameRef::Chunk(chunk) => {
                let from_source = link.depth == 0;
                link.fed_at = now;
                link.renewed = false;
                let header = chunk.header;
                if header.stream != self.stream {
                    // Not a chunk of ours at all, so not a failed check of
                    // one: garbage, never a report.
                    self.garbage(
                        from,
                        format!("chunk of {:?}, not {:?}", header.stream, self.stream),
                        now,
                    );
                    return;
                }
                // A copy of what we accepted already is a duplicate
                // (congestion makes late copies; it never makes forgers),
                // unless its bytes differ from ours and its tag fails.
                if let Some((_, held)) = self.store.get(header.seq) {
                    if *held != frame {
                        if let Err(Refusal::Forged(reason)) = self.verify.check_copy(&chunk) {
                            self.reject(from, header.seq, reason, frame.clone(), now);
                            return;
                        }
                    }
                    self.duplicate(from, header.seq, now);
                    return;
                }
                let stale = header.kind == ChunkKind::Media
                    && self.next_deliver.is_some_and(|n| header.seq < n);
                if stale {
                    self.duplicate(from, header.seq, now);
                    return;
                }
                match self.verify.verify(&chunk) {
                    Ok(()) => {}
                    Err(Refusal::Forged(reason)) => {
                        self.reject(from, header.seq, reason, frame.clone(), now);
                        return;
                    }
                    Err(Refusal::Replayed) => {
                        self.duplicate(from, header.seq, now);
                        return;
                    }
                    Err(Refusal::Unchecked(_)) => {
                        // Our own problem (e.g. unusable keys; the driver
                        // says so): nobody is reported.
                        self.stats.rejected += 1;
                        return;
                    }
                }
                if !self.store.insert(header, frame.clone()) {
                    // An init segment past its bound: dropped, not forwarded.
                    self.stats.rejected += 1;
                    return;
                }
                self.arrivals.push_back((header.seq, now));
                if self.arrivals.len() > ARRIVALS_KEPT {
                    self.arrivals.pop_front();
                }
                self.stats.chunks_received += 1;
                self.stats.bytes_received += chunk.payload.len() as u64;
                if from_source {
                    self.stats.bytes_from_source += chunk.payload.len() as u64;
                }
                self.advance_tail(&header, now);
                self.forward(Some(from), &frame, now);
                self.deliver(now);
                self.store
                    .evict(self.config.buffer, self.config.max_buffered_chunks);
            }
            FrameRef::Subscribe {
                stream,
                from: first,
                flags,
            } if stream == self.stream => {
                self.subscribers.insert(from);
                self.serve_subscription(from, first, flags, now);
            }
            FrameRef::Unsubscribe { stream } if stream == self.stream => {
                self.subscribers.remove(&from);
                self.retire_idle();
            }
            FrameRef::GapRequest {
                stream,
                first,
                count,
            } if stream == self.stream => {
                let end = first.saturating_add(u64::from(count));
                let frames: Vec<Bytes> = self
                    .store
                    .media_from(first)
                    .take_while(|(h, _)| h.seq < end)
                    .map(|(_, f)| f.clone())
                    .collect();
                self.replay(from, frames, now);
            }
            FrameRef::Subscribe { .. }
            | FrameRef::Unsubscribe { .. }
            | FrameRef::GapRequest { .. } => {
                self.garbage(from, "control frame for another stream".into(), now);
            }
        }
    }

    /// Runs timers: heartbeats, dead links, hole repair. Call at
    /// [`poll_timeout`](Self::poll_timeout) or later.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Timers are due at least every heartbeat interval. Running much
        // later means this host was starved (CPU, a stopped process): the
        // frames our links sent meanwhile may be queued unread, so their
        // silence is ours. Give them a full timeout to be heard again.
        let late = now.saturating_duration_since(self.last_tick);
        if late > self.config.heartbeat_interval * 3 {
            self.stats.local_stalls += 1;
            self.liveness_grace = Some(now + self.config.link_timeout);
        }
        self.last_tick = now;
        if self.liveness_grace.is_some_and(|g| now >= g) {
            self.liveness_grace = None;
        }
        self.lagging.retain(|_, until| *until > now);
        if self.liveness_grace.is_none() {
            let mut fell_silent = false;
            let mut dead = Vec::new();
            for (p, l) in self.up.iter_mut() {
                let silence = now.saturating_duration_since(l.last_heard);
                // At the deadline poll_timeout named, not after it: else a
                // driver on time would be woken again and again.
                if silence >= self.config.link_close_after {
                    dead.push(*p);
                } else if !l.silent && silence >= l.timeout(&self.config) {
                    l.silent = true;
                    fell_silent = true;
                    self.stats.silent_links += 1;
                }
            }
            for peer in dead {
                self.stats.dead_links += 1;
                self.out.push_back(Output::LinkDead { peer });
                self.link_down(peer, now);
            }
            if fell_silent {
                self.refresh_upstreams(now);
            }
        }
        let expired: Vec<PeerId> = self
            .retiring
            .iter()
            .filter(|(_, &deadline)| now >= deadline)
            .map(|(p, _)| *p)
            .collect();
        if !expired.is_empty() {
            for peer in expired {
                self.retiring.remove(&peer);
                self.subscribers.remove(&peer);
                self.upstreams.retain(|p| *p != peer);
                self.out.push_back(Output::Retired { peer });
            }
            self.refresh_upstreams(now);
        }
        if now >= self.next_heartbeat {
            self.heartbeats(now);
            self.next_heartbeat = now + self.config.heartbeat_interval;
        }
        self.repair_hole(now);
        self.probe_tail(now);
        self.ask_for_init(now);
        self.renew_silent_upstreams(now);
    }

    /// Subscribes again to an upstream that sent no chunk for
    /// [`SILENT_UPSTREAM`] while chunks kept coming from elsewhere.
    ///
    /// A subscription can be lost (a frame that reached the peer before its
    /// side of the link was up, or an old unsubscribe that overtook it on the
    /// unordered channel); a warm standby has no second upstream to hide
    /// that. If the renewed subscription brings nothing either, the
    /// upstream is set aside like a lagging one and the next candidate
    /// takes over (when there is one).
    fn renew_silent_upstreams(&mut self, now: Instant) {
        let silent: Vec<(PeerId, bool)> = self
            .upstreams
            .iter()
            .filter_map(|p| {
                let l = self.up.get(p)?;
                (now.saturating_duration_since(l.fed_at) > SILENT_UPSTREAM)
                    .then_some((*p, l.renewed))
            })
            .collect();
        let mut rotated = false;
        for (peer, renewed) in silent {
            // Rotating is for trees and lists: a mesh picks its upstream by
            // depth, and setting the nearest one aside invites loops.
            let others =
                self.kind != TopologyKind::Mesh && self.candidates().iter().any(|c| *c != peer);
            if renewed && others {
                self.lagging.insert(peer, now + self.config.lag_penalty);
                rotated = true;
                continue;
            }
            if let Some(l) = self.up.get_mut(&peer) {
                l.fed_at = now;
                l.renewed = true;
            }
            let frame = self.subscribe_frame();
            self.out.push_back(Output::Send { to: peer, frame });
        }
        if rotated {
            self.refresh_upstreams(now);
        }
    }

    fn subscribe_frame(&self) -> Bytes {
        let mut flags = SubscribeFlags::empty();
        if !self.store.has_init() {
            flags = flags.with(SubscribeFlags::NEED_INIT);
        }
        let from = match self.next_deliver {
            Some(n) => n,
            None => {
                flags = flags.with(SubscribeFlags::FROM_KEYFRAME);
                0
            }
        };
        let frame = Frame::Subscribe {
            stream: self.stream,
            from,
            flags,
        }
        .encode()
        .unwrap_or_default();
        Bytes::from(frame)
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_heartbeat;
        match self.liveness_grace {
            Some(grace) => t = t.min(grace),
            None => {
                for l in self.up.values() {
                    let after = if l.silent {
                        self.config.link_close_after
                    } else {
                        l.timeout(&self.config)
                    };
                    t = t.min(l.last_heard + after);
                }
            }
        }
        for &deadline in self.retiring.values() {
            t = t.min(deadline);
        }
        if let Some(h) = &self.hole {
            let ask = h.last_ask.unwrap_or(h.since) + self.config.gap_timeout;
            t = t.min(ask);
            // Past it, the hole is skipped as soon as a keyframe cluster
            // follows it; until one arrives (its frame wakes us) there is
            // nothing to wait for — a deadline in the past would make the
            // driver spin.
            let give_up = h.since + self.config.max_hole_wait;
            if give_up > self.last_tick {
                t = t.min(give_up);
            }
        }
        if let Some(due) = self.tail_probe_due() {
            t = t.min(due);
        }
        t
    }

    /// When to ask whether the chunks after our newest one were lost: a
    /// gap timeout plus the usual spacing of a cluster's chunks after it
    /// arrived, unless it ends its cluster or was probed already.
    fn tail_probe_due(&self) -> Option<Instant> {
        let tail = self
            .tail
            .filter(|t| !t.ended && !t.probed && !self.source)?;
        let spacing = std::time::Duration::from_micros(self.chunk_gap_us as u64);
        Some(tail.at + self.config.gap_timeout + spacing)
    }

    /// A new media chunk arrived: the tail moves on, and the spacing within
    /// a cluster is learnt.
    fn advance_tail(&mut self, header: &ChunkHeader, now: Instant) {
        if header.kind != ChunkKind::Media || self.tail.is_some_and(|t| header.seq <= t.seq) {
            return;
        }
        if let Some(t) = self.tail.filter(|t| !t.ended && header.seq == t.seq + 1) {
            let gap = now.saturating_duration_since(t.at).as_micros() as f64;
            self.chunk_gap_us += (gap - self.chunk_gap_us) / 8.0;
        }
        self.tail = Some(Tail {
            seq: header.seq,
            at: now,
            ended: header.flags.contains(ChunkFlags::CLUSTER_END),
            probed: false,
        });
    }

    /// The newest chunk does not end its cluster and nothing followed it
    /// for a while: ask a linked peer that holds the stream for what comes
    /// after it — one that does not feed us first, else an upstream (a lost
    /// last chunk; a peer with nothing newer sends nothing).
    fn probe_tail(&mut self, now: Instant) {
        if self.tail_probe_due().is_none_or(|due| now < due) {
            return;
        }
        let Some(tail) = self.tail.as_mut() else {
            return;
        };
        tail.probed = true;
        let first = tail.seq + 1;
        let live = |p: &PeerId| {
            !self.subscribers.contains(p)
                && !self.distrusted.contains(p)
                && self.up.get(p).is_some_and(|l| !l.silent)
        };
        let feeders = || {
            self.links
                .parents
                .iter()
                .chain(&self.links.backup_parents)
                .chain(&self.links.neighbours)
                .copied()
        };
        let target = feeders()
            .find(|p| live(p) && !self.upstreams.contains(p))
            .or_else(|| self.upstreams.iter().copied().find(|p| live(p)));
        if let Some(peer) = target {
            self.stats.tail_probes += 1;
            let frame = Frame::GapRequest {
                stream: self.stream,
                first,
                count: TAIL_PROBE,
            }
            .encode()
            .unwrap_or_default();
            self.out.push_back(Output::Send {
                to: peer,
                frame: Bytes::from(frame),
            });
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn reject(&mut self, from: PeerId, seq: u64, reason: String, frame: Bytes, now: Instant) {
        self.stats.rejected += 1;
        self.out.push_back(Output::Rejected {
            from,
            seq,
            reason,
            frame,
        });
        if self.distrusted.insert(from) && self.upstreams.contains(&from) {
            self.refresh_upstreams(now);
        }
    }

    /// A frame from `from` that is not ours to read: counted, and at
    /// [`GARBAGE_ALLOWANCE`] the link goes — at once here (nothing more
    /// it sends is read, it is nobody's upstream any more), and the driver
    /// is told to close it. Never a report: the supervisor ejects on
    /// failed checks of well-formed chunks of this stream only.
    fn garbage(&mut self, from: PeerId, reason: String, now: Instant) {
        self.stats.garbage += 1;
        let Some(link) = self.up.get_mut(&from) else {
            return;
        };
        link.garbage += 1;
        if link.garbage >= GARBAGE_ALLOWANCE {
            self.stats.garbage_links += 1;
            self.shunned.insert(from);
            self.out.push_back(Output::Garbage { peer: from, reason });
            self.link_down(from, now);
        }
    }

    /// A copy of chunk `seq` we hold already. If it came from an upstream,
    /// how late it is behind the first copy tells whether that upstream
    /// keeps up; one that lags by more than [`RelayConfig::max_lag`] is
    /// dropped for [`RelayConfig::lag_penalty`] (its uplink is congested, or
    /// it is fed late itself), so no receiver drifts behind live.
    fn duplicate(&mut self, from: PeerId, seq: u64, now: Instant) {
        self.stats.duplicates += 1;
        if !self.upstreams.contains(&from) {
            return;
        }
        let Some(first) = self
            .arrivals
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, t)| *t)
        else {
            return;
        };
        let Some(link) = self.up.get_mut(&from) else {
            return;
        };
        let lag = now.saturating_duration_since(first).as_micros() as u64;
        link.lags.push_back((now, lag));
        while link.lags.len() > LAG_SAMPLES_KEPT
            || link
                .lags
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > LAG_WINDOW)
        {
            link.lags.pop_front();
        }
        let observed = link
            .lags
            .front()
            .map_or(std::time::Duration::ZERO, |(t, _)| {
                now.saturating_duration_since(*t)
            });
        let lagging = link.lags.len() >= LAG_SAMPLES && observed >= LAG_WINDOW * 2 / 3 && {
            let mut sorted: Vec<u64> = link.lags.iter().map(|(_, l)| *l).collect();
            sorted.sort_unstable();
            sorted[sorted.len() / 2] > self.config.max_lag.as_micros() as u64
        };
        if lagging && self.upstreams.len() > 1 {
            link.lags.clear();
            self.stats.lagging_upstreams += 1;
            self.lagging.insert(from, now + self.config.lag_penalty);
            self.out.push_back(Output::Lagging { peer: from });
            self.refresh_upstreams(now);
        }
    }

    /// Media flows but the init segment never came (a dropped frame, or an
    /// upstream that had none yet when we subscribed): ask again, without
    /// replaying media.
    fn ask_for_init(&mut self, now: Instant) {
        if self.source || self.store.has_init() || self.store.is_empty() {
            return;
        }
        if self
            .init_asked
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.gap_timeout * 2)
        {
            return;
        }
        let Some(&to) = self.upstreams.first() else {
            return;
        };
        self.init_asked = Some(now);
        let after = self
            .store
            .media_from(0)
            .last()
            .map_or(0, |(h, _)| h.seq + 1);
        let frame = Frame::Subscribe {
            stream: self.stream,
            from: after,
            flags: SubscribeFlags::NEED_INIT,
        }
        .encode()
        .unwrap_or_default();
        self.out.push_back(Output::Send {
            to,
            frame: Bytes::from(frame),
        });
    }

    fn heartbeat_frame(&mut self, now: Instant) -> Bytes {
        self.heartbeat_counter += 1;
        let frame = Frame::Heartbeat {
            counter: self.heartbeat_counter,
            time_us: now.saturating_duration_since(self.epoch).as_micros() as u64,
            depth: self.depth(),
        };
        Bytes::from(frame.encode().unwrap_or_default())
    }

    /// One heartbeat round. Every link hears from us every interval — by a
    /// heartbeat, or by a chunk we forwarded on it since the last round —
    /// except a peer that only ever feeds us, which hears a heartbeat every
    /// [`SLOW_HEARTBEAT_EVERY`] rounds. A change of depth goes to everyone
    /// at once.
    fn heartbeats(&mut self, now: Instant) {
        let hb = self.heartbeat_frame(now);
        let depth = self.depth();
        let force = depth != self.depth_sent;
        self.depth_sent = depth;
        let slow_round = self.heartbeat_counter % SLOW_HEARTBEAT_EVERY == 0;
        let recently = now.checked_sub(self.config.heartbeat_interval);
        for (&peer, link) in &self.up {
            if !force {
                let feeds_us_only = !self.source
                    && (self.links.parents.contains(&peer)
                        || self.links.backup_parents.contains(&peer))
                    && !self.links.children.contains(&peer)
                    && !self.links.backup_children.contains(&peer)
                    && !self.links.neighbours.contains(&peer);
                if feeds_us_only && !slow_round {
                    continue;
                }
                let sent_recently = link
                    .sent_at
                    .zip(recently)
                    .is_some_and(|(sent, since)| sent > since);
                if !feeds_us_only && sent_recently {
                    continue;
                }
            }
            self.out.push_back(Output::Send {
                to: peer,
                frame: hb.clone(),
            });
        }
    }

    fn forward(&mut self, except: Option<PeerId>, frame: &Bytes, now: Instant) {
        for &peer in &self.subscribers {
            if Some(peer) != except {
                if let Some(l) = self.up.get_mut(&peer) {
                    l.sent_at = Some(now);
                }
                self.out.push_back(Output::Send {
                    to: peer,
                    frame: frame.clone(),
                });
            }
        }
    }

    fn serve_subscription(&mut self, to: PeerId, first: u64, flags: SubscribeFlags, now: Instant) {
        let mut frames: Vec<Bytes> = Vec::new();
        if flags.contains(SubscribeFlags::NEED_INIT) {
            frames.extend(self.store.init_frames().cloned());
        }
        let start = if flags.contains(SubscribeFlags::FROM_KEYFRAME) {
            self.store.latest_keyframe()
        } else {
            Some(first)
        };
        if let Some(start) = start {
            frames.extend(self.store.media_from(start).map(|(_, f)| f.clone()));
        }
        self.replay(to, frames, now);
    }

    /// Sends `to` what it asked for again, within its link's replay budget:
    /// a peer that asks for the buffer over and over (gap requests,
    /// subscriptions) gets [`RelayConfig::repair_rate`] and no more, so it
    /// cannot starve the links of others. What does not fit is not sent
    /// (an honest peer asks again, or gets it from someone else).
    fn replay(&mut self, to: PeerId, frames: Vec<Bytes>, now: Instant) {
        let Some(link) = self.up.get_mut(&to) else {
            return;
        };
        for frame in frames {
            if !link.charge(frame.len(), now, &self.config) {
                self.stats.replays_throttled += 1;
                return;
            }
            self.out.push_back(Output::Send { to, frame });
        }
    }

    /// Upstream candidates in order of preference (live links only).
    fn candidates(&self) -> Vec<PeerId> {
        let live = |p: &PeerId| {
            self.up.get(p).is_some_and(|l| !l.silent)
                && !self.subscribers.contains(p)
                && !self.lagging.contains_key(p)
                && !self.distrusted.contains(p)
                && *p != self.me
        };
        let mut out: Vec<PeerId> = Vec::new();
        let push = |p: PeerId, out: &mut Vec<PeerId>| {
            if live(&p) && !out.contains(&p) {
                out.push(p);
            }
        };
        for &p in &self.links.parents {
            push(p, &mut out);
        }
        // Backup parents: in a list or a tree, and for a mesh's leaf-only
        // peers, which hang from two relays.
        for &p in &self.links.backup_parents {
            push(p, &mut out);
        }
        match self.kind {
            TopologyKind::List | TopologyKind::Tree => {}
            TopologyKind::Mesh => {
                let mut by_depth: Vec<(u16, PeerId)> = self
                    .links
                    .neighbours
                    .iter()
                    .filter_map(|p| self.up.get(p).map(|l| (l.depth, *p)))
                    .filter(|(d, _)| *d < MAX_DEPTH)
                    .collect();
                by_depth.sort();
                let best = by_depth.first().map(|(d, _)| *d);
                for (d, p) in by_depth {
                    // Only the nearest ring: a farther neighbour may be fed by us.
                    if best.is_some_and(|b| d <= b + 1) {
                        push(p, &mut out);
                    }
                }
            }
        }
        if out.is_empty() {
            // Make before break: until a linked upstream is up, a retiring
            // one that feeds us goes on feeding us.
            for &p in &self.upstreams {
                if self.retiring.contains_key(&p) {
                    push(p, &mut out);
                }
            }
        }
        out
    }

    fn refresh_upstreams(&mut self, now: Instant) {
        if self.source {
            return;
        }
        let candidates = self.candidates();
        let want = self
            .config
            .redundancy
            .unwrap_or(match self.kind {
                TopologyKind::List => 2,
                TopologyKind::Tree | TopologyKind::Mesh => 1,
            })
            .max(1);
        // Keep what still qualifies; fill free slots in order of preference;
        // a live primary parent always gets a slot.
        let mut next: Vec<PeerId> = self
            .upstreams
            .iter()
            .copied()
            .filter(|p| candidates.contains(p))
            .collect();
        for &c in &candidates {
            if next.len() >= want {
                break;
            }
            if !next.contains(&c) {
                next.push(c);
            }
        }
        for &p in self.links.parents.iter() {
            if candidates.contains(&p) && !next.contains(&p) {
                if next.len() >= want {
                    if let Some(i) = next.iter().rposition(|q| !self.links.parents.contains(q)) {
                        next.remove(i);
                    }
                }
                next.push(p);
            }
        }
        let added: Vec<PeerId> = next
            .iter()
            .copied()
            .filter(|p| !self.upstreams.contains(p))
            .collect();
        let removed: Vec<PeerId> = self
            .upstreams
            .iter()
            .copied()
            .filter(|p| !next.contains(p))
            .collect();
        for peer in removed {
            let frame = Frame::Unsubscribe {
                stream: self.stream,
            }
            .encode()
            .unwrap_or_default();
            self.out.push_back(Output::Send {
                to: peer,
                frame: Bytes::from(frame),
            });
        }
        for &peer in &added {
            if self.ever_subscribed {
                self.stats.upstream_changes += 1;
            }
            self.ever_subscribed = true;
            if let Some(l) = self.up.get_mut(&peer) {
                l.fed_at = now;
                l.renewed = false;
            }
            let frame = self.subscribe_frame();
            self.out.push_back(Output::Send { to: peer, frame });
        }
        let depth_before = self.depth();
        self.upstreams = next;
        if self.depth() != depth_before {
            // Neighbours choosing upstreams should know at once.
            self.next_heartbeat = now;
        }
        if !self.retiring.is_empty() {
            self.retire_idle();
        }
    }

    /// Delivers what is contiguous; opens or closes the hole timer.
    fn deliver(&mut self, now: Instant) {
        if self.source {
            return;
        }
        // The init segment, once complete (again after a re-init).
        if self.store.has_init() {
            let first_init =
                self.store
                    .init_frames()
                    .next()
                    .and_then(|f| match FrameRef::decode(f) {
                        Ok(FrameRef::Chunk(c)) => Some(c.header.seq),
                        _ => None,
                    });
            if first_init.is_some() && first_init != self.init_delivered {
                self.init_delivered = first_init;
                let frames: Vec<Bytes> = self.store.init_frames().cloned().collect();
                for f in frames {
                    self.emit(&f);
                }
            }
        }
        if self.init_delivered.is_none() {
            return;
        }
        if self.next_deliver.is_none() {
            self.next_deliver = self.store.latest_keyframe();
        }
        let Some(mut next) = self.next_deliver else {
            return;
        };
        while let Some((_, frame)) = self.store.get(next).cloned() {
            self.emit(&frame);
            next += 1;
        }
        self.next_deliver = Some(next);
        let waiting = self.store.media_from(next).next().is_some();
        match (&self.hole, waiting) {
            (None, true) => {
                self.hole = Some(Hole {
                    since: now,
                    last_ask: None,
                    asked: Vec::new(),
                });
            }
            (Some(_), false) => self.hole = None,
            _ => {}
        }
        if !waiting {
            self.hole = None;
        }
    }

    fn emit(&mut self, frame: &Bytes) {
        if let Ok(FrameRef::Chunk(c)) = FrameRef::decode(frame) {
            let start = frame.len() - c.payload.len();
            self.stats.delivered += 1;
            self.out.push_back(Output::Deliver {
                header: c.header,
                payload: frame.slice(start..),
            });
        }
    }

    fn repair_hole(&mut self, now: Instant) {
        let Some(next) = self.next_deliver else {
            return;
        };
        let Some(hole) = &self.hole else { return };
        let since = hole.since;
        let first_held = self.store.media_from(next).next().map(|(h, _)| h.seq);
        let Some(first_held) = first_held else {
            self.hole = None;
            return;
        };
        if now.saturating_duration_since(since) >= self.config.max_hole_wait {
            // Give up on the hole: resume at the next cluster that starts
            // with a keyframe, so the player gets decodable data.
            let resume = self
                .store
                .media_from(first_held)
                .find(|(h, _)| {
                    h.flags
                        .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME))
                })
                .map(|(h, _)| h.seq);
            if let Some(resume) = resume {
                self.stats.skipped += resume - next;
                self.out.push_back(Output::Skipped {
                    first: next,
                    count: resume - next,
                });
                self.next_deliver = Some(resume);
                self.hole = None;
                self.deliver(now);
                return;
            }
            // No keyframe to resume at yet: go on asking meanwhile.
        }
        let due = hole.last_ask.unwrap_or(since) + self.config.gap_timeout;
        if now < due {
            return;
        }
        // Ask the next live peer not asked yet. First those that hold the
        // stream but are not feeding us (backup parents, mesh neighbours): an
        // upstream that owes us the chunk most likely has it in flight (a
        // lost packet being retransmitted), so asking it again gains
        // nothing. Then our upstreams, then anyone linked.
        let asked = hole.asked.clone();
        let feeders: Vec<PeerId> = self
            .links
            .parents
            .iter()
            .chain(&self.links.backup_parents)
            .chain(&self.links.neighbours)
            .copied()
            .filter(|p| {
                !self.upstreams.contains(p)
                    && !self.subscribers.contains(p)
                    && self.up.get(p).is_some_and(|l| !l.silent)
            })
            .collect();
        let mut order: Vec<PeerId> = feeders;
        for &p in &self.upstreams {
            if !order.contains(&p) {
                order.push(p);
            }
        }
        let mut others: Vec<PeerId> = self
            .up
            .iter()
            .filter(|(p, l)| !l.silent && !order.contains(p))
            .map(|(p, _)| *p)
            .collect();
        others.sort();
        order.extend(others);
        // Everyone was asked: start over at once (the answer or the request
        // itself was lost on the way; with one feeder, asking it again is
        // all there is to do).
        let fresh = order.iter().find(|p| !asked.contains(p)).copied();
        let target = fresh.or_else(|| order.first().copied());
        if fresh.is_none() {
            if let Some(hole) = self.hole.as_mut() {
                hole.asked.clear();
            }
        }
        let count = (first_held - next).min(u64::from(MAX_GAP_COUNT)) as u32;
        if let (Some(peer), Some(hole)) = (target, self.hole.as_mut()) {
            hole.asked.push(peer);
            hole.last_ask = Some(now);
            self.stats.gap_requests += 1;
            let frame = Frame::GapRequest {
                stream: self.stream,
                first: next,
                count,
            }
            .encode()
            .unwrap_or_default();
            self.out.push_back(Output::Send {
                to: peer,
                frame: Bytes::from(frame),
            });
        } else if let Some(hole) = self.hole.as_mut() {
            hole.last_ask = Some(now); // nobody to ask
        }
    }
}
