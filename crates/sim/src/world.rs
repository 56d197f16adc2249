//! The event loop: one queue of events ordered by (virtual time, insertion
//! order), the Manager, the nodes and their simulated transports. Every
//! node output is carried out here exactly as the tokio driver
//! (`miostream-peer`'s node) and the WebRTC transport would, with the
//! network's delays in between.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use miostream_auth::KeyFingerprint;
use miostream_media::PlaybackModel;
use miostream_node::{
    Announcement, NodeCore, NodeCoreConfig, NodeEvent, NodeOutput, TransportCommand, TransportEvent,
};
use miostream_protocol::signal::{Capacity, ErrorCode, SignalPayload};
use miostream_protocol::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, ComponentType, IntegrityMode, PeerId, PeerMessage,
    StreamId, SupervisorMessage,
};
use miostream_relay::AcceptAll;
use miostream_supervisor::manager::{Manager, Output as ManagerOutput};
use rand::{RngExt as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::{rtt, transmit, Host, MESSAGE_OVERHEAD};
use crate::{HostOutcome, Progress, SimConfig, SimError, SimOutcome, SlotOutcome};

const STREAM: &str = "sim";
const SUPERVISOR_HOST: usize = 0;
const BROADCASTER_HOST: usize = 1;
/// Nobody: misrouted offers go here.
fn nobody() -> PeerId {
    PeerId::from_u128(u128::MAX)
}

type Ix = usize;

/// One link end in a node's simulated transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Asked to open as the answering side; no offer yet.
    Waiting,
    /// Offer `gen` sent, no answer yet.
    Offered(u64),
    /// Answer received (initiator) or sent (responder); setting up.
    Connecting(u64, Ix),
    /// Open.
    Up(u64, Ix),
}

impl LinkState {
    fn gen(self) -> Option<(u64, Option<Ix>)> {
        match self {
            Self::Waiting => None,
            Self::Offered(g) => Some((g, None)),
            Self::Connecting(g, r) | Self::Up(g, r) => Some((g, Some(r))),
        }
    }
}

#[derive(Debug)]
struct LinkEnd {
    state: LinkState,
    /// Frames on the uplink not sent yet: (when they are out, bytes).
    backlog: VecDeque<(Instant, usize)>,
    backlog_bytes: usize,
}

impl LinkEnd {
    fn new(state: LinkState) -> Self {
        Self {
            state,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        }
    }
}

/// A receiver's player and counters (one incarnation).
struct Viewer {
    playback: PlaybackModel,
    joined_at: Option<Instant>,
    joined_us: u64,
    latencies: Vec<f32>,
    skipped: u64,
}

struct SimNode {
    core: NodeCore,
    id: PeerId,
    host: usize,
    slot: Option<usize>,
    links: BTreeMap<PeerId, LinkEnd>,
    timer: Option<(Instant, u64)>,
    /// When its timer last fired.
    fired_at: Option<Instant>,
    /// FIFO of the TCP connection to the supervisor, both ways.
    sup_up_last: Instant,
    sup_down_last: Instant,
    viewer: Option<Viewer>,
    started_at: Instant,
}

enum Ev {
    Connect(Ix),
    FromManager(Ix, SupervisorMessage),
    ToManager(PeerId, PeerMessage),
    Link(Ix, TransportEvent),
    Frame {
        to: Ix,
        from: PeerId,
        gen: u64,
        frame: Bytes,
    },
    LinkUp {
        a: Ix,
        b: Ix,
        gen: u64,
    },
    RemoteDown {
        node: Ix,
        peer: PeerId,
        gen: u64,
    },
    OfferTimeout {
        node: Ix,
        peer: PeerId,
        gen: u64,
    },
    Timer(Ix, u64),
    Publish,
    Fail,
    KillRelay,
    Rejoin(usize),
    ManagerDisconnect(PeerId),
    /// The manager's own timer (a probe slot's hold).
    ManagerTimer,
    Tick,
}

/// A queued event's place in the queue: (time since the start in ns,
/// insertion order), and where the event waits in the slab. Small, so the
/// heap moves little.
#[derive(PartialEq, Eq)]
struct Entry {
    at_ns: u64,
    seq: u64,
    slot: u32,
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (other.at_ns, other.seq).cmp(&(self.at_ns, self.seq))
    }
}

/// Monotone counters of one slot, summed over its incarnations.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    stalls: u64,
    stall_ms: u64,
    played_ms: u64,
    chunks_received: u64,
    bytes_received: u64,
    skipped: u64,
    parent_changes: u64,
    wire_sent: u64,
    wire_received: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.stalls += o.stalls;
        self.stall_ms += o.stall_ms;
        self.played_ms += o.played_ms;
        self.chunks_received += o.chunks_received;
        self.bytes_received += o.bytes_received;
        self.skipped += o.skipped;
        self.parent_changes += o.parent_changes;
    }

    fn since(&self, base: &Totals) -> Totals {
        Totals {
            stalls: self.stalls - base.stalls,
            stall_ms: self.stall_ms - base.stall_ms,
            played_ms: self.played_ms - base.played_ms,
            chunks_received: self.chunks_received - base.chunks_received,
            bytes_received: self.bytes_received - base.bytes_received,
            skipped: self.skipped - base.skipped,
            parent_changes: self.parent_changes - base.parent_changes,
            wire_sent: self.wire_sent - base.wire_sent,
            wire_received: self.wire_received - base.wire_received,
        }
    }
}

#[derive(Default)]
struct Slot {
    node: Option<Ix>,
    /// Finished incarnations' counters.
    past: Totals,
    baseline: Totals,
    kills_in_window: u32,
    startup_ms: Option<u64>,
    /// The longest-lived incarnation's window latencies, and its time.
    best_latencies: Vec<f32>,
    best_secs: f64,
    joined_secs: f64,
    cut_out: u32,
    crashed: u32,
}

struct World<'a> {
    cfg: &'a SimConfig,
    t0: Instant,
    now: Instant,
    queue: BinaryHeap<Entry>,
    /// The queued events, by `Entry::slot`; free places are reused.
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    seq: u64,
    manager: Manager,
    hosts: Vec<Host>,
    nodes: Vec<Option<SimNode>>,
    /// Every node's host, also once it is dead (its host still receives).
    node_host: Vec<usize>,
    by_peer: BTreeMap<PeerId, Ix>,
    slots: Vec<Slot>,
    broadcaster: Ix,
    stream: Option<StreamId>,
    net_rng: ChaCha8Rng,
    fail_rng: ChaCha8Rng,
    id_rng: ChaCha8Rng,
    manager_rng: ChaCha8Rng,
    /// When the manager's timer is queued for, if it is.
    manager_timer: Option<Instant>,
    next_gen: u64,
    next_seq: u64,
    next_cluster: u64,
    misroute_left: u32,
    window: Option<(Instant, Instant)>,
    host_base: [(u64, u64); 2],
    published_base: u64,
    published: u64,
    out: SimOutcome,
    error: Option<SimError>,
}

/// Runs one simulation. `progress` is called about once per virtual second.
/// The same `config` gives the same outcome, byte for byte.
pub fn run(config: &SimConfig, progress: &mut dyn FnMut(Progress)) -> Result<SimOutcome, SimError> {
    if config.receivers.is_empty() {
        return Err(SimError::Config("no receivers".into()));
    }
    if config.media.max_chunk == 0 || config.media.bitrate_bps == 0 {
        return Err(SimError::Config("empty media".into()));
    }
    let t0 = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut sub = || ChaCha8Rng::seed_from_u64(rng.random::<u64>());
    let (mut net_rng, fail_rng, mut id_rng, manager_rng) = (sub(), sub(), sub(), sub());
    let mut hosts = vec![
        Host::new(config.supervisor.clone(), t0, &mut net_rng),
        Host::new(config.broadcaster.clone(), t0, &mut net_rng),
    ];
    for p in &config.receivers {
        hosts.push(Host::new(p.clone(), t0, &mut net_rng));
    }
    let broadcaster_id = PeerId::from_u128(id_rng.random::<u128>() >> 1);
    let mut w = World {
        cfg: config,
        t0,
        now: t0,
        queue: BinaryHeap::new(),
        slab: Vec::new(),
        free: Vec::new(),
        seq: 0,
        manager: Manager::new(config.manager.clone()),
        hosts,
        nodes: Vec::new(),
        node_host: Vec::new(),
        by_peer: BTreeMap::new(),
        slots: (0..config.receivers.len())
            .map(|_| Slot::default())
            .collect(),
        broadcaster: 0,
        stream: None,
        net_rng,
        fail_rng,
        id_rng,
        manager_rng,
        manager_timer: None,
        next_gen: 1,
        next_seq: 0,
        next_cluster: 0,
        misroute_left: config.misroute_offers,
        window: None,
        host_base: [(0, 0); 2],
        published_base: 0,
        published: 0,
        out: SimOutcome::default(),
        error: None,
    };
    w.broadcaster = w.spawn(broadcaster_id, BROADCASTER_HOST, None);
    for slot in 0..config.receivers.len() {
        let at = t0 + Duration::from_millis(200) + config.join_interval * slot as u32;
        w.push(at, Ev::Rejoin(slot));
    }
    w.push(t0 + Duration::from_millis(100), Ev::Tick);
    w.run(progress)?;
    Ok(w.out)
}

impl World<'_> {
    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        let at_ns = at.max(self.now).duration_since(self.t0).as_nanos() as u64;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(Entry {
            at_ns,
            seq: self.seq,
            slot,
        });
    }

    fn pop(&mut self) -> Option<(Instant, Ev)> {
        loop {
            let e = self.queue.pop()?;
            self.free.push(e.slot);
            if let Some(ev) = self.slab[e.slot as usize].take() {
                return Some((self.t0 + Duration::from_nanos(e.at_ns), ev));
            }
        }
    }

    fn run(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<(), SimError> {
        let mut next_report = self.t0;
        while let Some((at, ev)) = self.pop() {
            if let Some((_, end)) = self.window {
                if at > end {
                    break;
                }
            }
            self.now = at;
            self.out.events += 1;
            // A host whose CPU is stalled handles nothing until it is back.
            if let Some(host) = self.host_of(&ev) {
                if let Some(until) = self.hosts[host].stalled(at, &mut self.net_rng) {
                    self.push(until, ev);
                    continue;
                }
            }
            self.handle(ev);
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            if at >= next_report {
                next_report = at + Duration::from_secs(1);
                progress(Progress {
                    virtual_time: at - self.t0,
                    measuring: self.window.is_some(),
                    playing: self.playing(),
                    failures: self.out.failures,
                    events: self.out.events,
                });
            }
        }
        let Some((_, end)) = self.window else {
            return Err(SimError::NotAnnounced(
                "the run ended before the window opened".into(),
            ));
        };
        self.now = end;
        self.finish();
        Ok(())
    }

    /// The host whose CPU handles `ev`, if it is a node's.
    fn host_of(&self, ev: &Ev) -> Option<usize> {
        let ix = match ev {
            Ev::Connect(ix) | Ev::FromManager(ix, _) | Ev::Link(ix, _) | Ev::Timer(ix, _) => *ix,
            Ev::Frame { to, .. } => *to,
            Ev::RemoteDown { node, .. } | Ev::OfferTimeout { node, .. } => *node,
            _ => return None,
        };
        self.nodes.get(ix)?.as_ref().map(|n| n.host)
    }

    fn node(&mut self, ix: Ix) -> Option<&mut SimNode> {
        self.nodes.get_mut(ix)?.as_mut()
    }

    fn spawn(&mut self, id: PeerId, host: usize, slot: Option<usize>) -> Ix {
        let announce = slot.is_none().then(|| Announcement {
            topology: self.cfg.topology,
            integrity: IntegrityMode::Hmac,
            media_type: "video/webm".into(),
            signing_key: None,
            title: String::new(),
        });
        let core = NodeCore::new(NodeCoreConfig {
            me: id,
            stream: STREAM.into(),
            announce,
            relay: self.cfg.relay.clone(),
            verifier: Box::new(|_| Box::new(AcceptAll)),
            // Known uplinks: reported as measured, without the probe.
            capacity: (slot.is_some() && !self.cfg.probe).then(|| Capacity {
                upload_kbps: (self.hosts[host].p.uplink_bps.unwrap_or(crate::UNSHAPED_BPS) / 1000)
                    .min(u64::from(u32::MAX)) as u32,
                rtt_ms: 0,
            }),
        });
        let viewer = slot.map(|_| Viewer {
            playback: PlaybackModel::new(self.cfg.startup, self.cfg.startup / 2),
            joined_at: None,
            joined_us: u64::MAX,
            latencies: Vec::new(),
            skipped: 0,
        });
        let ix = self.nodes.len();
        self.node_host.push(host);
        self.nodes.push(Some(SimNode {
            core,
            id,
            host,
            slot,
            links: BTreeMap::new(),
            timer: None,
            fired_at: None,
            sup_up_last: self.now,
            sup_down_last: self.now,
            viewer,
            started_at: self.now,
        }));
        self.by_peer.insert(id, ix);
        // The session: TCP + TLS + the paper's handshake, about 3 RTT.
        let setup = rtt(&self.hosts[host], &self.hosts[SUPERVISOR_HOST]) * 3;
        self.push(self.now + setup, Ev::Connect(ix));
        ix
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Connect(ix) => {
                let Some(n) = self.node(ix) else { return };
                let (id, receiver) = (n.id, n.slot.is_some());
                let role = if receiver {
                    ComponentType::Receiver
                } else {
                    ComponentType::Broadcaster
                };
                let mut fp = [0u8; 32];
                fp[..16].copy_from_slice(id.as_bytes());
                if self.manager.register(id, role, KeyFingerprint(fp)).is_err() {
                    return;
                }
                if let Some(n) = self.node(ix) {
                    n.core.connected(now);
                }
                self.after_input(ix);
            }
            Ev::FromManager(ix, msg) => {
                let Some(n) = self.node(ix) else { return };
                n.core.handle_supervisor(msg, now);
                self.after_input(ix);
            }
            Ev::ToManager(from, msg) => self.manager_receives(from, msg),
            Ev::Link(ix, event) => {
                let Some(n) = self.node(ix) else { return };
                n.core.handle_link(event, now);
                self.after_input(ix);
            }
            Ev::Frame {
                to,
                from,
                gen,
                frame,
            } => {
                let Some(n) = self.node(to) else { return };
                let live = n
                    .links
                    .get(&from)
                    .is_some_and(|l| matches!(l.state, LinkState::Up(g, _) if g == gen));
                if live {
                    n.core.handle_link(TransportEvent::Frame(from, frame), now);
                    self.after_input(to);
                }
            }
            Ev::LinkUp { a, b, gen } => self.link_up(a, b, gen),
            Ev::RemoteDown { node, peer, gen } => {
                let Some(n) = self.node(node) else { return };
                if n.links.get(&peer).and_then(|l| l.state.gen()).map(|g| g.0) == Some(gen) {
                    n.links.remove(&peer);
                    n.core.handle_link(TransportEvent::Down(peer), now);
                    self.after_input(node);
                }
            }
            Ev::OfferTimeout { node, peer, gen } => {
                let Some(n) = self.node(node) else { return };
                if n.links.get(&peer).map(|l| l.state) == Some(LinkState::Offered(gen)) {
                    n.links.remove(&peer);
                    n.core.handle_link(TransportEvent::Down(peer), now);
                    self.after_input(node);
                }
            }
            Ev::Timer(ix, token) => {
                let Some(n) = self.node(ix) else { return };
                if n.timer.map(|(_, t)| t) != Some(token) {
                    return; // superseded
                }
                n.timer = None;
                n.fired_at = Some(now);
                n.core.handle_timeout(now);
                self.after_input(ix);
            }
            Ev::Publish => self.publish(),
            Ev::Fail => self.fail(),
            Ev::KillRelay => {
                let mut best: Option<(usize, Ix)> = None;
                for s in &self.slots {
                    let Some(ix) = s.node else { continue };
                    let feeds = self.nodes[ix]
                        .as_ref()
                        .and_then(|n| n.core.relay())
                        .map_or(0, |r| r.subscribers().count());
                    if feeds > 0 && best.is_none_or(|(f, _)| feeds > f) {
                        best = Some((feeds, ix));
                    }
                }
                if let Some((_, ix)) = best {
                    self.out.failures += 1;
                    self.kill(ix, true);
                }
            }
            Ev::Rejoin(slot) => {
                let id = PeerId::from_u128(self.id_rng.random::<u128>() >> 1);
                let ix = self.spawn(id, 2 + slot, Some(slot));
                self.slots[slot].node = Some(ix);
            }
            Ev::ManagerTimer => {
                self.manager_timer = None;
                let outs = self.manager.handle_timeout(self.now);
                self.manager_outputs(outs);
            }
            Ev::ManagerDisconnect(who) => {
                let outs = self.manager.disconnected(who, self.now);
                self.manager_outputs(outs);
            }
            Ev::Tick => self.tick(),
        }
    }

    /// Carries out a node's outputs and re-arms its timer.
    fn after_input(&mut self, ix: Ix) {
        let mut outs = Vec::new();
        if let Some(n) = self.node(ix) {
            while let Some(o) = n.core.poll_output() {
                outs.push(o);
            }
        }
        canonical_order(&mut outs);
        for o in outs {
            match o {
                NodeOutput::Supervisor(msg) => self.send_to_manager(ix, msg),
                NodeOutput::Transport(cmd) => self.transport(ix, cmd),
                NodeOutput::App(ev) => self.app(ix, ev),
            }
        }
        let now = self.now;
        let seq = self.seq + 1;
        let mut spun = false;
        let Some(n) = self.node(ix) else { return };
        match n.core.poll_timeout() {
            Some(t) if n.timer.map(|(at, _)| at) != Some(t) || t <= now => {
                // A timer due already runs at once, but never twice at the
                // same instant (a core that is not done would spin).
                let at = if t > now {
                    t
                } else if n.fired_at == Some(now) {
                    // Due again right after it ran. Either exactly at the
                    // boundary (the relay's liveness check is strict,
                    // `silence > timeout`, while its poll_timeout names the
                    // boundary itself: only a simulator is exactly on time)
                    // and a moment later settles it; or a deadline the core
                    // does not move (see `SimOutcome::timer_spins`), which a
                    // real driver would spin on: retried at a tokio timer's
                    // 1 ms resolution.
                    spun = true;
                    if t == now {
                        now + Duration::from_micros(1)
                    } else {
                        now + Duration::from_millis(1)
                    }
                } else {
                    now
                };
                n.timer = Some((t, seq));
                self.push(at, Ev::Timer(ix, seq));
            }
            Some(_) => {}
            None => n.timer = None,
        }
        if spun {
            self.out.timer_spins += 1;
        }
    }

    fn send_to_manager(&mut self, ix: Ix, mut msg: PeerMessage) {
        let now = self.now;
        if let PeerMessage::Signal {
            to,
            payload: SignalPayload::Offer { .. },
        } = &mut msg
        {
            if self.misroute_left > 0 {
                self.misroute_left -= 1;
                *to = nobody();
            }
        }
        let bytes = match &msg {
            // Its JSON is the padding and a few dozen bytes around it.
            PeerMessage::CapacityProbe { padding, .. } => padding.len() + 48,
            m => serde_json::to_vec(m).map_or(256, |v| v.len()),
        } + MESSAGE_OVERHEAD;
        let Some(n) = self.nodes.get(ix).and_then(Option::as_ref) else {
            return;
        };
        let (host, id, last) = (n.host, n.id, n.sup_up_last);
        let (a, b) = two(&mut self.hosts, host, SUPERVISOR_HOST);
        let at = transmit(a, b, bytes, false, now, &mut self.net_rng).max(last);
        if let Some(n) = self.node(ix) {
            n.sup_up_last = at;
        }
        self.push(at, Ev::ToManager(id, msg));
    }

    fn manager_receives(&mut self, from: PeerId, msg: PeerMessage) {
        let signal = matches!(msg, PeerMessage::Signal { .. });
        let outs = self
            .manager
            .handle(from, msg, self.now, &mut self.manager_rng);
        if signal {
            for o in &outs {
                match o {
                    ManagerOutput::Send(_, SupervisorMessage::Signal { .. }) => {
                        self.out.signals_relayed += 1;
                    }
                    ManagerOutput::Send(
                        _,
                        SupervisorMessage::Error {
                            code: ErrorCode::Forbidden,
                            ..
                        },
                    ) => self.out.signals_refused += 1,
                    _ => {}
                }
            }
        }
        self.manager_outputs(outs);
    }

    fn manager_outputs(&mut self, outs: Vec<ManagerOutput>) {
        // The manager's timer may have moved earlier.
        if let Some(t) = self.manager.poll_timeout() {
            if self.manager_timer.is_none_or(|queued| t < queued) {
                self.manager_timer = Some(t);
                self.push(t.max(self.now), Ev::ManagerTimer);
            }
        }
        for o in outs {
            match o {
                ManagerOutput::Send(to, msg) => self.manager_sends(to, msg),
                ManagerOutput::Disconnect(to, code, message) => {
                    let fatal = SupervisorMessage::Error {
                        code,
                        message,
                        fatal: true,
                    };
                    self.manager_sends(to, fatal);
                    if let Some(&ix) = self.by_peer.get(&to) {
                        if let Some(slot) = self.nodes[ix].as_ref().and_then(|n| n.slot) {
                            // Cut off: its viewer joins again as a new peer.
                            self.slots[slot].cut_out += 1;
                            self.kill(ix, false);
                        }
                    }
                }
            }
        }
    }

    fn manager_sends(&mut self, to: PeerId, msg: SupervisorMessage) {
        let Some(&ix) = self.by_peer.get(&to) else {
            return;
        };
        let now = self.now;
        let bytes = serde_json::to_vec(&msg).map_or(256, |v| v.len()) + MESSAGE_OVERHEAD;
        let Some(n) = self.nodes[ix].as_ref() else {
            return;
        };
        let (host, last) = (n.host, n.sup_down_last);
        let (a, b) = two(&mut self.hosts, SUPERVISOR_HOST, host);
        let at = transmit(a, b, bytes, false, now, &mut self.net_rng).max(last);
        if let Some(n) = self.node(ix) {
            n.sup_down_last = at;
        }
        self.push(at, Ev::FromManager(ix, msg));
    }

    fn transport(&mut self, ix: Ix, cmd: TransportCommand) {
        let now = self.now;
        match cmd {
            TransportCommand::Open { peer, initiator } => {
                let gen = self.next_gen;
                let timeout = self.cfg.answer_timeout;
                let Some(n) = self.node(ix) else { return };
                if n.links.contains_key(&peer) {
                    return;
                }
                if !initiator {
                    n.links.insert(peer, LinkEnd::new(LinkState::Waiting));
                    return;
                }
                n.links.insert(peer, LinkEnd::new(LinkState::Offered(gen)));
                self.next_gen += 1;
                let offer = SignalPayload::Offer {
                    sdp: format!("sim {gen} {ix}"),
                };
                let ev = TransportEvent::Signal {
                    to: peer,
                    payload: offer,
                };
                self.push(now, Ev::Link(ix, ev));
                self.push(
                    now + timeout,
                    Ev::OfferTimeout {
                        node: ix,
                        peer,
                        gen,
                    },
                );
            }
            TransportCommand::Close { peer } => {
                let Some(n) = self.node(ix) else { return };
                let Some(end) = n.links.remove(&peer) else {
                    return;
                };
                let me = n.id;
                let host = n.host;
                self.push(now, Ev::Link(ix, TransportEvent::Down(peer)));
                if let Some((gen, Some(remote))) = end.state.gen() {
                    let r_host = self.nodes[remote].as_ref().map_or(host, |r| r.host);
                    let later = rtt(&self.hosts[host], &self.hosts[r_host]);
                    self.push(
                        now + later,
                        Ev::RemoteDown {
                            node: remote,
                            peer: me,
                            gen,
                        },
                    );
                }
            }
            TransportCommand::Send { peer, frame } => self.send(ix, peer, frame),
            TransportCommand::Signal { from, payload } => self.signal(ix, from, payload),
        }
    }

    fn signal(&mut self, ix: Ix, from: PeerId, payload: SignalPayload) {
        let now = self.now;
        let parse = |sdp: &str| -> Option<(u64, Ix)> {
            let mut it = sdp.strip_prefix("sim ")?.split(' ');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        };
        match payload {
            SignalPayload::Offer { sdp } => {
                let Some((gen, remote)) = parse(&sdp) else {
                    return;
                };
                let Some(n) = self.node(ix) else { return };
                // A newer offer from the same peer replaces its link silently.
                n.links
                    .insert(from, LinkEnd::new(LinkState::Connecting(gen, remote)));
                let answer = TransportEvent::Signal {
                    to: from,
                    payload: SignalPayload::Answer { sdp },
                };
                self.push(now, Ev::Link(ix, answer));
            }
            SignalPayload::Answer { sdp } => {
                let Some((gen, _)) = parse(&sdp) else { return };
                let Some(&remote) = self.by_peer.get(&from) else {
                    return;
                };
                let Some(n) = self.node(ix) else { return };
                let host = n.host;
                let Some(end) = n.links.get_mut(&from) else {
                    return;
                };
                if end.state != LinkState::Offered(gen) {
                    return;
                }
                end.state = LinkState::Connecting(gen, remote);
                // ICE checks, DTLS and SCTP handshakes: about 2 RTT.
                let r_host = self.nodes[remote].as_ref().map_or(host, |r| r.host);
                let setup = rtt(&self.hosts[host], &self.hosts[r_host]) * 2;
                self.push(
                    now + setup,
                    Ev::LinkUp {
                        a: ix,
                        b: remote,
                        gen,
                    },
                );
            }
            _ => {}
        }
    }

    fn link_up(&mut self, a: Ix, b: Ix, gen: u64) {
        let now = self.now;
        let (Some(a_id), Some(b_id)) = (
            self.nodes.get(a).and_then(Option::as_ref).map(|n| n.id),
            self.nodes.get(b).and_then(Option::as_ref).map(|n| n.id),
        ) else {
            // The answering side is gone: the setup fails at the offerer.
            let mut gone = Vec::new();
            if let Some(n) = self.node(a) {
                gone = n
                    .links
                    .iter()
                    .filter(|(_, l)| l.state == LinkState::Connecting(gen, b))
                    .map(|(p, _)| *p)
                    .collect();
                for p in &gone {
                    n.links.remove(p);
                }
            }
            for p in gone {
                self.push(now, Ev::Link(a, TransportEvent::Down(p)));
            }
            return;
        };
        let connecting = |w: &World<'_>, x: Ix, peer: PeerId, other: Ix| {
            w.nodes[x]
                .as_ref()
                .and_then(|n| n.links.get(&peer))
                .is_some_and(|l| l.state == LinkState::Connecting(gen, other))
        };
        if !connecting(self, a, b_id, b) {
            return;
        }
        if !connecting(self, b, a_id, a) {
            if let Some(n) = self.node(a) {
                n.links.remove(&b_id);
            }
            self.push(now, Ev::Link(a, TransportEvent::Down(b_id)));
            return;
        }
        for (x, peer, other) in [(a, b_id, b), (b, a_id, a)] {
            if let Some(end) = self.node(x).and_then(|n| n.links.get_mut(&peer)) {
                end.state = LinkState::Up(gen, other);
            }
            self.push(now, Ev::Link(x, TransportEvent::Up(peer)));
        }
        self.out.links_up += 1;
    }

    fn send(&mut self, ix: Ix, peer: PeerId, frame: Bytes) {
        let now = self.now;
        let limit = self.cfg.send_buffer_limit;
        let bytes = frame.len() + MESSAGE_OVERHEAD;
        let Some(n) = self.nodes.get_mut(ix).and_then(Option::as_mut) else {
            return;
        };
        let host = n.host;
        let Some(end) = n.links.get_mut(&peer) else {
            return;
        };
        let LinkState::Up(gen, remote) = end.state else {
            return;
        };
        while end.backlog.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, b)) = end.backlog.pop_front() {
                end.backlog_bytes -= b;
            }
        }
        if end.backlog_bytes + bytes > limit {
            self.out.frames_dropped += 1;
            return;
        }
        let Some(r_host) = self.nodes[remote].as_ref().map(|r| r.host) else {
            // Killed: its host still receives (and this one still sends).
            let r_host = self.node_host[remote];
            self.transmit_frame(ix, host, r_host, peer, bytes, None, now);
            return;
        };
        self.transmit_frame(
            ix,
            host,
            r_host,
            peer,
            bytes,
            Some((remote, gen, frame)),
            now,
        );
    }

    /// Puts a frame on the wire; `deliver` if its addressee still runs.
    #[allow(clippy::too_many_arguments)]
    fn transmit_frame(
        &mut self,
        ix: Ix,
        host: usize,
        r_host: usize,
        peer: PeerId,
        bytes: usize,
        deliver: Option<(Ix, u64, Bytes)>,
        now: Instant,
    ) {
        let (a, b) = two(&mut self.hosts, host, r_host);
        let at = transmit(a, b, bytes, true, now, &mut self.net_rng);
        let out_at = now + self.hosts[host].uplink_backlog(now);
        let Some(n) = self.nodes.get_mut(ix).and_then(Option::as_mut) else {
            return;
        };
        let me = n.id;
        if let Some(end) = n.links.get_mut(&peer) {
            end.backlog.push_back((out_at, bytes));
            end.backlog_bytes += bytes;
        }
        if let Some((to, gen, frame)) = deliver {
            self.push(
                at,
                Ev::Frame {
                    to,
                    from: me,
                    gen,
                    frame,
                },
            );
        }
    }

    fn app(&mut self, ix: Ix, ev: NodeEvent) {
        let now = self.now;
        let t0 = self.t0;
        let window_start = self.window.map(|(s, _)| s);
        match ev {
            NodeEvent::Announced(keys) => {
                self.stream = Some(keys.stream.id);
                self.publish_init();
                let first = now.duration_since(self.t0).as_nanos()
                    / self.cfg.media.cluster.as_nanos().max(1)
                    + 1;
                self.next_cluster = first as u64;
                let at = self.t0 + self.cfg.media.cluster * first as u32;
                self.push(at, Ev::Publish);
            }
            NodeEvent::Joined(_) => {
                let Some(n) = self.node(ix) else { return };
                if let Some(v) = n.viewer.as_mut() {
                    v.joined_at = Some(now);
                    v.joined_us = now.duration_since(t0).as_micros() as u64;
                }
            }
            NodeEvent::Deliver { header, .. } => {
                let Some(n) = self.node(ix) else { return };
                let Some(v) = n.viewer.as_mut() else { return };
                if header.kind != ChunkKind::Media {
                    return;
                }
                let now_us = now.duration_since(t0).as_micros() as u64;
                let measuring = window_start.is_some_and(|s| now >= s);
                if measuring && header.send_time_us >= v.joined_us && v.playback.started() {
                    let ms = now_us.saturating_sub(header.send_time_us) as f64 / 1000.0;
                    v.latencies.push(ms as f32);
                }
                if header.flags.contains(ChunkFlags::CLUSTER_END) {
                    v.playback.cluster_complete(header.timestamp_ms, now);
                }
            }
            NodeEvent::Skipped { count, .. } => {
                if let Some(v) = self.node(ix).and_then(|n| n.viewer.as_mut()) {
                    v.skipped += count;
                }
            }
            NodeEvent::Failed(reason) => {
                let slot = self.nodes[ix].as_ref().and_then(|n| n.slot);
                match slot {
                    Some(slot) => {
                        tracing::warn!(slot, "receiver stopped: {reason}");
                        self.slots[slot].crashed += 1;
                        self.kill(ix, false);
                    }
                    None if self.stream.is_none() => {
                        self.error = Some(SimError::NotAnnounced(reason));
                    }
                    None => tracing::warn!("broadcaster stopped: {reason}"),
                }
            }
            NodeEvent::FailureInjected | NodeEvent::Ended(_) => {}
        }
    }

    fn publish_init(&mut self) {
        let Some(stream) = self.stream else { return };
        let header = ChunkHeader {
            stream,
            seq: self.next_seq,
            kind: ChunkKind::Init,
            flags: ChunkFlags::CLUSTER_START.with(ChunkFlags::CLUSTER_END),
            timestamp_ms: 0,
            send_time_us: self.now.duration_since(self.t0).as_micros() as u64,
        };
        self.emit(header, self.cfg.media.init_bytes);
    }

    fn emit(&mut self, header: ChunkHeader, len: usize) {
        let seq = header.seq;
        let chunk = Chunk {
            header,
            tag: Vec::new(),
            payload: vec![0u8; len],
        };
        match chunk.encode() {
            Ok(frame) => {
                self.next_seq += 1;
                if header.kind == ChunkKind::Media {
                    self.published += len as u64;
                }
                let now = self.now;
                let b = self.broadcaster;
                if let Some(n) = self.node(b) {
                    n.core.publish(Bytes::from(frame), now);
                }
                self.after_input(b);
            }
            Err(e) => {
                self.error = Some(SimError::Encode {
                    seq,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Publishes one cluster: its chunks leave spread over part of its
    /// duration, as the broadcaster paces them.
    fn publish(&mut self) {
        let Some(stream) = self.stream else { return };
        let m = &self.cfg.media;
        let bytes = (m.bitrate_bps as f64 / 8.0 * m.cluster.as_secs_f64()).round() as usize;
        let pieces = bytes.div_ceil(m.max_chunk).max(1);
        let cluster = self.next_cluster;
        let start = self.t0 + m.cluster * cluster as u32;
        let gap = if pieces > 1 {
            m.cluster.mul_f64(m.spread) / (pieces as u32 - 1)
        } else {
            Duration::ZERO
        };
        // Which piece is due now.
        let i = if gap.is_zero() {
            0
        } else {
            (self.now.saturating_duration_since(start).as_nanos() / gap.as_nanos()) as usize
        }
        .min(pieces - 1);
        let mut flags = ChunkFlags::empty();
        if i == 0 {
            flags = ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME);
        }
        if i + 1 == pieces {
            flags = flags.with(ChunkFlags::CLUSTER_END);
        }
        let len = bytes / pieces + usize::from(i < bytes % pieces);
        let header = ChunkHeader {
            stream,
            seq: self.next_seq,
            kind: ChunkKind::Media,
            flags,
            timestamp_ms: (m.cluster * cluster as u32).as_millis() as u64,
            send_time_us: self.now.duration_since(self.t0).as_micros() as u64,
        };
        let next = if i + 1 < pieces {
            start + gap * (i as u32 + 1)
        } else {
            self.next_cluster += 1;
            start + m.cluster
        };
        self.emit(header, len);
        self.push(next, Ev::Publish);
    }

    fn playing(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.node)
            .filter_map(|ix| self.nodes[ix].as_ref())
            .filter(|n| n.viewer.as_ref().is_some_and(|v| v.playback.started()))
            .count()
    }

    fn tick(&mut self) {
        let now = self.now;
        if self.window.is_none() {
            let all = self.playing() == self.slots.len();
            if all || now - self.t0 >= self.cfg.max_warmup {
                self.open_window();
            }
        }
        if self.window.is_none() {
            self.push(now + Duration::from_millis(100), Ev::Tick);
        }
    }

    fn open_window(&mut self) {
        let now = self.now;
        self.window = Some((now, now + self.cfg.duration));
        self.out.warmup = now - self.t0;
        for slot in 0..self.slots.len() {
            let t = self.totals(slot);
            let s = &mut self.slots[slot];
            s.baseline = t;
            if let Some(ix) = s.node {
                if let Some(v) = self.nodes[ix].as_mut().and_then(|n| n.viewer.as_mut()) {
                    v.latencies.clear();
                }
            }
        }
        for (i, h) in [SUPERVISOR_HOST, BROADCASTER_HOST].into_iter().enumerate() {
            self.host_base[i] = (self.hosts[h].tx, self.hosts[h].rx);
        }
        self.published_base = self.published;
        if let Some(after) = self.cfg.kill_relay_at {
            self.push(now + after, Ev::KillRelay);
        }
        if self.cfg.failures_per_sec > 0.0 {
            let at = now + self.next_failure_in();
            self.push(at, Ev::Fail);
        }
    }

    fn next_failure_in(&mut self) -> Duration {
        let u: f64 = self.fail_rng.random::<f64>().max(f64::MIN_POSITIVE);
        Duration::from_secs_f64(-u.ln() / self.cfg.failures_per_sec)
    }

    fn fail(&mut self) {
        let victims = self
            .manager
            .pick_victims(self.cfg.distribution, &mut self.fail_rng);
        for v in victims {
            if let Some(&ix) = self.by_peer.get(&v) {
                if self.nodes[ix].as_ref().is_some_and(|n| n.slot.is_some()) {
                    self.out.failures += 1;
                    self.kill(ix, true);
                }
            }
        }
        let at = self.now + self.next_failure_in();
        self.push(at, Ev::Fail);
    }

    /// Counters of a slot now: its finished incarnations plus its live one.
    fn totals(&mut self, slot: usize) -> Totals {
        let now = self.now;
        let mut t = self.slots[slot].past;
        if let Some(ix) = self.slots[slot].node {
            if let Some(n) = self.nodes[ix].as_mut() {
                t.add(&incarnation(n, now));
            }
        }
        t.wire_sent = self.hosts[2 + slot].tx;
        t.wire_received = self.hosts[2 + slot].rx;
        t
    }

    /// Stops a receiver's node as `kill -9` would: its links fall silent,
    /// the supervisor notices after `disconnect_delay`. Its slot joins again
    /// as a new peer after `restart_delay`.
    fn kill(&mut self, ix: Ix, injected: bool) {
        let now = self.now;
        let Some(mut n) = self.nodes[ix].take() else {
            return;
        };
        let Some(slot) = n.slot else {
            self.nodes[ix] = Some(n);
            return;
        };
        let inc = incarnation(&mut n, now);
        let window = self.window;
        let s = &mut self.slots[slot];
        s.past.add(&inc);
        if injected && window.is_some() {
            s.kills_in_window += 1;
        }
        if let Some(v) = &n.viewer {
            if s.startup_ms.is_none() && v.playback.started() {
                let mut p = v.playback.clone();
                s.startup_ms = Some(p.stats(now).startup_ms);
            }
            if let Some((start, _)) = window {
                let secs = now
                    .saturating_duration_since(v.joined_at.unwrap_or(now).max(start))
                    .as_secs_f64();
                s.joined_secs += secs;
                if secs >= s.best_secs {
                    s.best_secs = secs;
                    s.best_latencies = v.latencies.clone();
                }
            }
        }
        s.node = None;
        self.by_peer.remove(&n.id);
        let id = n.id;
        drop(n);
        self.push(now + self.cfg.disconnect_delay, Ev::ManagerDisconnect(id));
        self.push(now + self.cfg.restart_delay, Ev::Rejoin(slot));
    }

    fn finish(&mut self) {
        let now = self.now;
        let Some((start, _)) = self.window else {
            return;
        };
        let mut rows = Vec::new();
        for slot in 0..self.slots.len() {
            let t = self.totals(slot);
            let base = self.slots[slot].baseline;
            let d = t.since(&base);
            let s = &self.slots[slot];
            let live = s.node.and_then(|ix| self.nodes[ix].as_ref());
            let mut best = s.best_latencies.clone();
            let mut joined_secs = s.joined_secs;
            let (mut feeds, mut playing, mut depth) = (0, false, u16::MAX);
            let mut startup_ms = s.startup_ms;
            if let Some(n) = live {
                if let Some(v) = &n.viewer {
                    let secs = now
                        .saturating_duration_since(v.joined_at.unwrap_or(now).max(start))
                        .as_secs_f64();
                    joined_secs += secs;
                    if secs >= s.best_secs {
                        best = v.latencies.clone();
                    }
                    playing = v.playback.started();
                    if startup_ms.is_none() && playing {
                        let mut p = v.playback.clone();
                        startup_ms = Some(p.stats(now).startup_ms);
                    }
                }
                if let Some(r) = n.core.relay() {
                    feeds = r.subscribers().count();
                    depth = r.depth();
                }
            }
            best.sort_by(f32::total_cmp);
            rows.push(SlotOutcome {
                class: self.hosts[2 + slot].p.class.clone(),
                incarnations: 1 + s.kills_in_window,
                stalls: d.stalls,
                stall_ms: d.stall_ms,
                played_ms: d.played_ms,
                startup_ms: startup_ms.unwrap_or(0),
                goodput_bps: if joined_secs > 0.0 {
                    (d.bytes_received as f64 * 8.0 / joined_secs) as u64
                } else {
                    0
                },
                latency_ms_p50: percentile(&best, 0.5),
                latency_ms_p99: percentile(&best, 0.99),
                chunks_received: d.chunks_received,
                chunks_lost: d.skipped,
                parent_changes: d.parent_changes,
                bytes_received: d.bytes_received,
                wire_sent: d.wire_sent,
                wire_received: d.wire_received,
                feeds,
                playing,
                depth,
                cut_out: s.cut_out,
                crashed: s.crashed,
            });
        }
        self.out.receivers = rows;
        for (i, h) in [SUPERVISOR_HOST, BROADCASTER_HOST].into_iter().enumerate() {
            let host = &self.hosts[h];
            let o = HostOutcome {
                class: host.p.class.clone(),
                wire_sent: host.tx - self.host_base[i].0,
                wire_received: host.rx - self.host_base[i].1,
            };
            if i == 0 {
                self.out.supervisor = o;
            } else {
                self.out.broadcaster = o;
            }
        }
        self.out.published_bytes = self.published - self.published_base;
    }
}

/// One incarnation's monotone counters now.
fn incarnation(n: &mut SimNode, now: Instant) -> Totals {
    let mut t = Totals::default();
    if let Some(v) = n.viewer.as_mut() {
        let p = v.playback.stats(now);
        t.stalls = p.stalls;
        t.stall_ms = p.stall_ms;
        t.played_ms = p.played_ms;
        t.skipped = v.skipped;
    }
    if let Some(s) = n.core.stats() {
        t.chunks_received = s.chunks_received;
        t.bytes_received = s.bytes_received;
        t.parent_changes = s.upstream_changes;
    }
    let _ = n.started_at;
    t
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// Two distinct hosts mutably (a host never sends to itself here; if it
/// does, the second is a copy-free alias of the first's neighbour).
fn two(hosts: &mut [Host], a: usize, b: usize) -> (&mut Host, &mut Host) {
    debug_assert_ne!(a, b);
    if a < b {
        let (l, r) = hosts.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = hosts.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

/// The relay iterates hash sets when it forwards a frame to its
/// subscribers, sends heartbeats, or closes idle or dead links; their order
/// differs between runs. Within each such burst (consecutive sends of one
/// frame, consecutive closes) the peers are put in id order, so one input
/// gives one sequence of outputs.
fn canonical_order(outs: &mut [NodeOutput]) {
    let key = |o: &NodeOutput| -> Option<(u8, usize, usize)> {
        match o {
            NodeOutput::Transport(TransportCommand::Send { frame, .. }) => {
                Some((0, frame.as_ptr() as usize, frame.len()))
            }
            NodeOutput::Transport(TransportCommand::Close { .. }) => Some((1, 0, 0)),
            _ => None,
        }
    };
    let peer = |o: &NodeOutput| match o {
        NodeOutput::Transport(
            TransportCommand::Send { peer, .. } | TransportCommand::Close { peer },
        ) => Some(*peer),
        _ => None,
    };
    let mut i = 0;
    while i < outs.len() {
        let Some(k) = key(&outs[i]) else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < outs.len() && key(&outs[j]) == Some(k) {
            j += 1;
        }
        outs[i..j].sort_by_key(|o| peer(o));
        i = j;
    }
}
