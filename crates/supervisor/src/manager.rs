//! The stream manager: streams, their topologies and the signaling relay, as
//! a pure state machine. Inputs are authenticated peers arriving, their
//! messages and their departures; outputs are messages to send and peers to
//! cut off. No IO; the time and randomness (stream ids and keys) come in.
//!
//! **Placement by measured capacity.** A receiver measures its uplink
//! before it joins (`CAPACITY_PROBE`: its bytes over the time until the
//! supervisor's answer) and reports it in `JOIN_STREAM`. One whose uplink
//! cannot carry [`Placement::relay_copies`] copies of the stream joins as a
//! leaf-only peer (see `miostream_topology`). Probes run in a few slots at
//! a time ([`probes`]), so a flash crowd's probes measure the peers'
//! uplinks, not the supervisor's. A relay whose copies lag, as
//! reported by [`Placement::lag_reporters`] distinct peers it feeds within
//! [`Placement::lag_window`] (`REPORT_LAGGING`), is demoted to a leaf; its
//! children move, make before break. A liar can at worst demote a
//! neighbour, never cut it out.
//!
//! **Ejection on evidence that holds up.** A relay is cut out as
//! misbehaving only when [`ManagerConfig::bad_chunk_limit`] *distinct*
//! peers linked to it report a bad chunk from it within
//! [`REPORT_WINDOW`]: one liar can accuse, never eject (the reporter's own
//! relay has stopped taking chunks from the accused already). A reporter
//! counts once per accused, by its key: reconnecting under a new peer id
//! makes no second reporter, and keeps its accusations. Only reports
//! against a peer that feeds the reporter (parent, backup parent, mesh
//! neighbour) back an ejection; one against a peer it feeds is only its
//! own accusation. One that accuses [`MAX_LONE_ACCUSATIONS`]
//! distinct peers within the window with nobody backing any of it is itself
//! cut out: honest peers meet a forger rarely, and together.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use miostream_auth::{Authorizer, KeyFingerprint};
use miostream_integrity::Verifier;
use miostream_protocol::signal::{
    Capacity, ErrorCode, ResumeStream, SignalPayload, StreamInfo, MAX_PROBE_MESSAGES,
    MAX_STREAM_NAME_LEN,
};
use miostream_protocol::{
    ComponentType, FrameRef, IntegrityMode, PeerId, PeerMessage, StreamId, SupervisorMessage,
    TopologyKind, MAX_FRAME_LEN,
};
use miostream_topology::{Changes, FailureDistribution, Topology, TopologyConfig};
use rand::{CryptoRng, Rng, RngExt as _};

use crate::monitor::api::{NodeView, Qos, StreamView};

pub mod probes;
use probes::ProbeSlots;

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Queue this message to this peer.
    Send(PeerId, SupervisorMessage),
    /// Send this peer a fatal `ERROR` and close its connection. The manager
    /// has already forgotten it.
    Disconnect(PeerId, ErrorCode, String),
}

/// Manager settings.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Overlay settings for new streams.
    pub topology: TopologyConfig,
    /// Distinct peers whose bad-chunk reports within [`REPORT_WINDOW`] cut a
    /// relay out.
    pub bad_chunk_limit: u32,
    /// Placement by measured capacity.
    pub placement: Placement,
}

/// Where receivers go by their measured capacity (see the module docs).
#[derive(Debug, Clone)]
pub struct Placement {
    /// Copies of the stream a relay's uplink must carry (0: everyone relays).
    pub relay_copies: u32,
    /// The stream's bitrate until receivers report goodput (kbit/s).
    pub stream_kbps: u32,
    /// Distinct lag reporters that demote a relay.
    pub lag_reporters: u32,
    /// Within this window.
    pub lag_window: Duration,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            relay_copies: 4,
            stream_kbps: 1500,
            lag_reporters: 2,
            lag_window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Peer {
    role: ComponentType,
    key: KeyFingerprint,
    stream: Option<StreamId>,
    /// The latest `QOS_REPORT` (receivers only): one per peer, gone with it.
    qos: Option<Qos>,
    /// Whether it was granted a probe slot (once per connection).
    probe_granted: bool,
    /// `CAPACITY_PROBE` messages and bytes so far.
    probes: u32,
    probe_bytes: u64,
    /// What it reported when it joined.
    capacity: Capacity,
}

struct Stream {
    info: StreamInfo,
    key: [u8; 32],
    signing_key: Option<String>,
    /// Checks the chunks that reporters attach (every one: threshold 1).
    checker: Verifier,
    broadcaster: PeerId,
    topology: Topology,
    epoch: u64,
    /// Bad-chunk reports per accused relay: who reported (by key), when
    /// (one entry per reporter). Only a peer linked to the accused can
    /// report it. Reporters count by key, not peer id: one identity that
    /// reconnects under new peer ids is still one reporter.
    reports: HashMap<PeerId, Vec<(KeyFingerprint, Instant)>>,
    /// Per reporter's key: the peers it accused, when (kept across its
    /// reconnections, for the window).
    accusations: HashMap<KeyFingerprint, Vec<(PeerId, Instant)>>,
    /// Lag reports per relay: who reported, when.
    lag_reports: HashMap<PeerId, Vec<(PeerId, Instant)>>,
    /// The stream's bitrate as receivers report it (kbit/s; 0 = none yet).
    bitrate_kbps: u32,
}

/// An `ANNOUNCE_STREAM`'s fields.
struct NewStream {
    name: String,
    topology: TopologyKind,
    integrity: IntegrityMode,
    media_type: String,
    signing_key: Option<String>,
    resume: Option<ResumeStream>,
    title: String,
}

/// Bad-chunk reports against a relay count within this window.
pub const REPORT_WINDOW: Duration = Duration::from_secs(60);

/// Distinct peers one reporter may accuse within [`REPORT_WINDOW`], with
/// nobody confirming, before it is cut out itself.
pub const MAX_LONE_ACCUSATIONS: usize = 3;

/// Reporters' records kept per stream before the stale ones are dropped.
const MAX_ACCUSERS_KEPT: usize = 4096;

/// All streams and connected peers of one supervisor.
pub struct Manager {
    config: ManagerConfig,
    peers: HashMap<PeerId, Peer>,
    streams: HashMap<StreamId, Stream>,
    by_name: HashMap<String, StreamId>,
    probe_slots: ProbeSlots,
    /// Operators' labels of keys, shown by the monitor.
    labels: HashMap<KeyFingerprint, String>,
    /// Bad-chunk reports taken into account, and peers cut out for
    /// misbehaving, since start (for `/metrics`).
    bad_chunk_reports: u64,
    ejections: u64,
}

fn error(code: ErrorCode, message: impl Into<String>) -> SupervisorMessage {
    SupervisorMessage::Error {
        code,
        message: message.into(),
        fatal: false,
    }
}

impl Manager {
    /// An empty manager.
    pub fn new(config: ManagerConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            streams: HashMap::new(),
            by_name: HashMap::new(),
            probe_slots: ProbeSlots::default(),
            labels: HashMap::new(),
            bad_chunk_reports: 0,
            ejections: 0,
        }
    }

    /// The labels of keys (from the authorized list), for the monitor.
    pub fn set_labels(&mut self, labels: HashMap<KeyFingerprint, String>) {
        self.labels = labels;
    }

    /// Connected peers by role.
    pub fn peers_by_role(&self) -> Vec<(ComponentType, u64)> {
        let mut out: Vec<(ComponentType, u64)> = Vec::new();
        for p in self.peers.values() {
            match out.iter_mut().find(|(r, _)| *r == p.role) {
                Some((_, n)) => *n += 1,
                None => out.push((p.role, 1)),
            }
        }
        out
    }

    /// Bad-chunk reports taken into account (one per reporter and accused
    /// within [`REPORT_WINDOW`]) and peers cut out for misbehaving, since
    /// start.
    pub fn integrity_counts(&self) -> (u64, u64) {
        (self.bad_chunk_reports, self.ejections)
    }

    /// The instant of the next timer, if any (a probe slot's hold).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.probe_slots.poll_timeout()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let granted = self.probe_slots.handle_timeout(now);
        self.grant(granted)
    }

    /// Number of registered peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Live streams, as listed to peers.
    pub fn streams(&self) -> Vec<StreamInfo> {
        let mut list: Vec<StreamInfo> = self.streams.values().map(|s| self.info(s)).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    fn info(&self, s: &Stream) -> StreamInfo {
        StreamInfo {
            receivers: s.topology.len() as u32,
            bitrate_bps: u64::from(s.bitrate_kbps) * 1000,
            ..s.info.clone()
        }
    }

    /// A peer completed the handshake. Refused if its id is taken.
    pub fn register(
        &mut self,
        id: PeerId,
        role: ComponentType,
        key: KeyFingerprint,
    ) -> Result<(), ErrorCode> {
        if self.peers.contains_key(&id) {
            return Err(ErrorCode::DuplicatePeer);
        }
        self.peers.insert(
            id,
            Peer {
                role,
                key,
                stream: None,
                qos: None,
                probe_granted: false,
                probes: 0,
                probe_bytes: 0,
                capacity: Capacity::default(),
            },
        );
        Ok(())
    }

    /// A message from an authenticated peer.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        from: PeerId,
        msg: PeerMessage,
        now: Instant,
        rng: &mut R,
    ) -> Vec<Output> {
        let Some(peer) = self.peers.get(&from) else {
            return Vec::new(); // already cut off; its last messages are moot
        };
        let role = peer.role;
        let joined = peer.stream;
        let reply = |m| vec![Output::Send(from, m)];
        match msg {
            PeerMessage::ListStreams {} => reply(SupervisorMessage::StreamList {
                streams: self.streams(),
            }),
            PeerMessage::AnnounceStream {
                name,
                topology,
                integrity,
                media_type,
                signing_key,
                resume,
                title,
            } => {
                if role != ComponentType::Broadcaster {
                    return reply(error(
                        ErrorCode::Forbidden,
                        "only a broadcaster can announce a stream",
                    ));
                }
                if joined.is_some() {
                    return reply(error(
                        ErrorCode::Forbidden,
                        "this broadcaster already has a stream",
                    ));
                }
                let stream = NewStream {
                    name,
                    topology,
                    integrity,
                    media_type,
                    signing_key,
                    resume,
                    title,
                };
                self.announce(from, stream, rng)
            }
            PeerMessage::JoinStream { name, capacity } => {
                if role != ComponentType::Receiver {
                    return reply(error(
                        ErrorCode::Forbidden,
                        "only a receiver can join a stream",
                    ));
                }
                if joined.is_some() {
                    return reply(error(
                        ErrorCode::Forbidden,
                        "already joined a stream; leave it first",
                    ));
                }
                // One that gave up waiting for a probe slot leaves the queue.
                let granted = self.probe_slots.release(from, now);
                let mut out = self.grant(granted);
                out.extend(self.join(from, &name, capacity));
                out
            }
            PeerMessage::LeaveStream {} => self.depart(from, false),
            PeerMessage::Signal { to, payload } => self.relay(from, joined, to, payload),
            PeerMessage::ReportBadChunk {
                upstream,
                seq,
                reason,
                chunk,
            } => self.report(from, joined, upstream, seq, &reason, chunk.as_deref(), now),
            PeerMessage::CapacityProbeRequest {} => self.probe_request(from, now),
            PeerMessage::CapacityProbe { padding, last } => self.probe(from, &padding, last, now),
            PeerMessage::ReportLagging { upstream } => self.lagging(from, joined, upstream, now),
            PeerMessage::QosReport {
                stalls,
                stall_ms,
                buffer_ms,
                goodput_bps,
                chunks_received,
                chunks_rejected,
                latency_ms_p50,
                parent_changes,
                latency_ms_p99,
                bytes_received,
                bytes_from_broadcaster,
            } => {
                if let Some(s) = joined.and_then(|id| self.streams.get_mut(&id)) {
                    // The stream's bitrate, smoothed over every receiver's
                    // goodput (what a relay must carry per copy).
                    let kbps = (goodput_bps / 1000).min(u64::from(u32::MAX)) as u32;
                    if kbps > 0 && role == ComponentType::Receiver {
                        s.bitrate_kbps = if s.bitrate_kbps == 0 {
                            kbps
                        } else {
                            ((u64::from(s.bitrate_kbps) * 15 + u64::from(kbps)) / 16) as u32
                        };
                    }
                }
                if role == ComponentType::Receiver {
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.qos = Some(Qos {
                            stalls,
                            stall_ms,
                            buffer_ms,
                            goodput_bps,
                            chunks_received,
                            chunks_rejected,
                            latency_ms_p50,
                            parent_changes,
                            latency_ms_p99,
                            bytes_received,
                            bytes_from_broadcaster,
                        });
                    }
                }
                Vec::new()
            }
            other => reply(error(
                ErrorCode::OutOfOrder,
                format!("{} is only valid during the handshake", other.name()),
            )),
        }
    }

    fn announce<R: CryptoRng + ?Sized>(
        &mut self,
        from: PeerId,
        stream: NewStream,
        rng: &mut R,
    ) -> Vec<Output> {
        let NewStream {
            name,
            topology,
            integrity,
            media_type,
            signing_key,
            resume,
            title,
        } = stream;
        let reply = |m| vec![Output::Send(from, m)];
        if name.is_empty()
            || name.len() > MAX_STREAM_NAME_LEN
            || name.chars().any(|c| c.is_control())
        {
            return reply(error(
                ErrorCode::Malformed,
                format!("stream name must be 1..={MAX_STREAM_NAME_LEN} printable characters"),
            ));
        }
        if let Err(e) = miostream_protocol::signal::check_title(&title) {
            return reply(error(ErrorCode::Malformed, e));
        }
        if media_type.len() > 256 {
            return reply(error(ErrorCode::Malformed, "media type too long"));
        }
        if self.by_name.contains_key(&name) {
            return reply(error(
                ErrorCode::StreamExists,
                format!("stream {name:?} exists already"),
            ));
        }
        let signing_key = match (integrity, signing_key) {
            (IntegrityMode::Sign, Some(k))
                if B64.decode(&k).map(|b| b.len() == 32).unwrap_or(false) =>
            {
                Some(k)
            }
            (IntegrityMode::Sign, _) => {
                return reply(error(
                    ErrorCode::Malformed,
                    "sign mode needs signing_key: a base64 Ed25519 public key",
                ))
            }
            (IntegrityMode::Hmac, _) => None,
        };
        let (id, key) = match resume {
            // After a supervisor restart the broadcaster keeps its stream's
            // identity: receivers' links and tags stay valid.
            Some(ResumeStream { id, stream_key }) => {
                let key: Option<[u8; 32]> =
                    B64.decode(&stream_key).ok().and_then(|k| k.try_into().ok());
                match key {
                    Some(key) if !self.streams.contains_key(&id) => (id, key),
                    Some(_) => {
                        return reply(error(
                            ErrorCode::StreamExists,
                            format!("stream id {id} is in use"),
                        ))
                    }
                    None => {
                        return reply(error(
                            ErrorCode::Malformed,
                            "resume.stream_key must be 32 bytes of base64",
                        ))
                    }
                }
            }
            None => {
                let mut id = StreamId(rng.random());
                while self.streams.contains_key(&id) {
                    id = StreamId(rng.random());
                }
                let mut key = [0u8; 32];
                rng.fill_bytes(&mut key);
                (id, key)
            }
        };
        // The supervisor checks bad-chunk evidence with the keys the peers
        // verify with; a signing key that is no Ed25519 point is refused now.
        let checker = match Verifier::for_stream(
            id,
            integrity,
            &B64.encode(key),
            signing_key.as_deref(),
            1.0,
        ) {
            Ok(v) => v,
            Err(e) => return reply(error(ErrorCode::Malformed, format!("signing_key: {e}"))),
        };
        let info = StreamInfo {
            id,
            name: name.clone(),
            topology,
            integrity,
            media_type,
            receivers: 0,
            title,
            bitrate_bps: 0,
        };
        self.streams.insert(
            id,
            Stream {
                info: info.clone(),
                key,
                signing_key,
                checker,
                broadcaster: from,
                topology: Topology::new(topology, from, self.config.topology.clone()),
                epoch: 0,
                reports: HashMap::new(),
                accusations: HashMap::new(),
                lag_reports: HashMap::new(),
                bitrate_kbps: 0,
            },
        );
        self.by_name.insert(name, id);
        if let Some(p) = self.peers.get_mut(&from) {
            p.stream = Some(id);
        }
        vec![Output::Send(
            from,
            SupervisorMessage::StreamAnnounced {
                stream: info,
                stream_key: B64.encode(key),
            },
        )]
    }

    fn join(&mut self, from: PeerId, name: &str, capacity: Capacity) -> Vec<Output> {
        let Some(&id) = self.by_name.get(name) else {
            return vec![Output::Send(
                from,
                error(
                    ErrorCode::StreamNotFound,
                    format!("no stream named {name:?}"),
                ),
            )];
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return Vec::new();
        };
        let relay = can_relay(&self.config.placement, stream, capacity);
        let placed = if relay {
            stream.topology.join(from, capacity)
        } else {
            tracing::info!(peer = %from, upload_kbps = capacity.upload_kbps, "joins as a leaf: its uplink cannot carry a relay's copies");
            stream.topology.join_leaf(from, capacity)
        };
        let changes = match placed {
            Ok(c) => c,
            Err(e) => {
                return vec![Output::Send(
                    from,
                    error(ErrorCode::Overloaded, e.to_string()),
                )]
            }
        };
        if let Some(p) = self.peers.get_mut(&from) {
            p.stream = Some(id);
            p.capacity = capacity;
        }
        let mut out = vec![Output::Send(
            from,
            SupervisorMessage::StreamJoined {
                stream: StreamInfo {
                    receivers: stream.topology.len() as u32,
                    bitrate_bps: u64::from(stream.bitrate_kbps) * 1000,
                    ..stream.info.clone()
                },
                stream_key: B64.encode(stream.key),
                signing_key: stream.signing_key.clone(),
                broadcaster: stream.broadcaster,
            },
        )];
        reconfigure(stream, &changes, &mut out);
        out
    }

    /// A peer left politely (`LEAVE_STREAM`) or its connection ended.
    fn depart(&mut self, who: PeerId, failed: bool) -> Vec<Output> {
        let Some(id) = self.peers.get_mut(&who).and_then(|p| p.stream.take()) else {
            return Vec::new();
        };
        let Some(stream) = self.streams.get_mut(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if stream.broadcaster == who {
            self.end_stream(id, "the broadcaster left", &mut out);
            return out;
        }
        let changes = if failed {
            stream.topology.fail(who)
        } else {
            stream.topology.leave(who)
        };
        // A reporter's accusations outlive its session (they expire with
        // the window): reconnecting must not wipe a liar's record.
        stream.reports.remove(&who);
        stream.lag_reports.remove(&who);
        if let Ok(changes) = changes {
            reconfigure(stream, &changes, &mut out);
        }
        out
    }

    fn end_stream(&mut self, id: StreamId, reason: &str, out: &mut Vec<Output>) {
        let Some(stream) = self.streams.remove(&id) else {
            return;
        };
        self.by_name.remove(&stream.info.name);
        for (pid, p) in self.peers.iter_mut() {
            if p.stream == Some(id) {
                p.stream = None;
                if *pid != stream.broadcaster {
                    out.push(Output::Send(
                        *pid,
                        SupervisorMessage::StreamEnded {
                            stream: id,
                            reason: reason.to_owned(),
                        },
                    ));
                }
            }
        }
    }

    /// A peer's connection ended (closed, timed out, dropped).
    pub fn disconnected(&mut self, who: PeerId, now: Instant) -> Vec<Output> {
        let mut out = self.depart(who, true);
        self.peers.remove(&who);
        let granted = self.probe_slots.release(who, now);
        out.extend(self.grant(granted));
        out
    }

    /// Cuts a peer off: it leaves its stream as a failure and is forgotten.
    fn cut_off(
        &mut self,
        who: PeerId,
        code: ErrorCode,
        reason: String,
        now: Instant,
    ) -> Vec<Output> {
        let mut out = self.disconnected(who, now);
        out.push(Output::Disconnect(who, code, reason));
        out
    }

    fn relay(
        &mut self,
        from: PeerId,
        joined: Option<StreamId>,
        to: PeerId,
        payload: SignalPayload,
    ) -> Vec<Output> {
        let linked = joined
            .and_then(|id| self.streams.get(&id))
            .is_some_and(|s| s.topology.is_linked(from, to));
        if !linked {
            return vec![Output::Send(
                from,
                error(ErrorCode::Forbidden, format!("{to} is not your neighbour")),
            )];
        }
        vec![Output::Send(
            to,
            SupervisorMessage::Signal { from, payload },
        )]
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        from: PeerId,
        joined: Option<StreamId>,
        upstream: PeerId,
        seq: u64,
        reason: &str,
        chunk: Option<&str>,
        now: Instant,
    ) -> Vec<Output> {
        let needed = self.config.bad_chunk_limit.max(1) as usize;
        let Some(key) = self.peers.get(&from).map(|p| p.key) else {
            return Vec::new();
        };
        let Some(stream) = joined.and_then(|id| self.streams.get_mut(&id)) else {
            return Vec::new();
        };
        // Only a peer linked to the accused can have received from it, and the
        // broadcaster is the source of truth, never cut out by reports.
        if !stream.topology.is_linked(from, upstream) || upstream == stream.broadcaster {
            return Vec::new();
        }
        // The evidence first: the supervisor checks the attached chunk's
        // tag itself (at most one check per report, and reports are
        // rate-limited with every other message).
        let backed = match check_evidence(&stream.checker, stream.info.id, seq, chunk) {
            Evidence::Holds => true,
            Evidence::Missing => false,
            Evidence::Disproved(why) => {
                tracing::warn!(reporter = %from, %upstream, seq, "false bad-chunk report: {why}");
                return self.cut_off(
                    from,
                    ErrorCode::Misbehaving,
                    format!("you reported chunk {seq} from {upstream} as forged, but {why}"),
                    now,
                );
            }
        };
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < REPORT_WINDOW;
        // Only a peer that feeds the reporter (a parent, a backup parent, a
        // mesh neighbour) can have sent it the stream's chunks: a report
        // against one it feeds itself backs nobody's ejection — else two
        // colluding relays eject the honest children they share — and
        // counts only as the reporter's own accusation.
        let feeds_reporter = stream.topology.links(from).is_some_and(|l| {
            l.parents.contains(&upstream)
                || l.backup_parents.contains(&upstream)
                || l.neighbours.contains(&upstream)
        });
        let reports = stream.reports.entry(upstream).or_default();
        reports.retain(|(_, t)| fresh(t));
        if reports.iter().any(|(k, _)| *k == key) {
            return Vec::new(); // once per reporter and accused
        }
        tracing::warn!(reporter = %from, %upstream, seq, reason, feeds_reporter, backed, "bad chunk reported");
        self.bad_chunk_reports += 1;
        if feeds_reporter && backed {
            reports.push((key, now));
        }
        if reports.len() >= needed {
            let reporters: Vec<KeyFingerprint> = reports.iter().map(|(k, _)| *k).collect();
            stream.reports.remove(&upstream);
            // Backed up: these accusations held.
            for r in reporters {
                if let Some(a) = stream.accusations.get_mut(&r) {
                    a.retain(|(p, _)| *p != upstream);
                }
            }
            self.ejections += 1;
            return self.cut_off(
                upstream,
                ErrorCode::Misbehaving,
                format!("{needed} peers you relayed to received chunks that failed verification"),
                now,
            );
        }
        if stream.accusations.len() >= MAX_ACCUSERS_KEPT {
            stream
                .accusations
                .retain(|_, a| a.iter().any(|(_, t)| fresh(t)));
        }
        let accused = stream.accusations.entry(key).or_default();
        accused.retain(|(_, t)| fresh(t));
        if accused.iter().any(|(p, _)| *p == upstream) {
            return Vec::new(); // the same accusation again (a reconnected reporter)
        }
        accused.push((upstream, now));
        if accused.len() >= MAX_LONE_ACCUSATIONS {
            self.ejections += 1;
            return self.cut_off(
                from,
                ErrorCode::Misbehaving,
                format!(
                    "you reported {MAX_LONE_ACCUSATIONS} peers as forgers within {} s and nobody confirmed it",
                    REPORT_WINDOW.as_secs()
                ),
                now,
            );
        }
        Vec::new()
    }

    /// A receiver asks for a probe slot: granted now or when one is free.
    fn probe_request(&mut self, from: PeerId, now: Instant) -> Vec<Output> {
        let Some(p) = self.peers.get_mut(&from) else {
            return Vec::new();
        };
        if p.stream.is_some() || p.probe_granted {
            return vec![Output::Send(
                from,
                error(
                    ErrorCode::Forbidden,
                    "one capacity probe per connection, before joining",
                ),
            )];
        }
        let granted = self.probe_slots.request(from, now);
        self.grant(granted)
    }

    /// A capacity probe: counted, answered when it is the last one (which
    /// frees its slot).
    fn probe(&mut self, from: PeerId, padding: &str, last: bool, now: Instant) -> Vec<Output> {
        let Some(p) = self.peers.get_mut(&from) else {
            return Vec::new();
        };
        if !p.probe_granted {
            return vec![Output::Send(
                from,
                error(
                    ErrorCode::Forbidden,
                    "capacity probes run in a slot: ask with CAPACITY_PROBE_REQUEST",
                ),
            )];
        }
        if p.stream.is_some() || p.probes >= MAX_PROBE_MESSAGES {
            return vec![Output::Send(
                from,
                error(
                    ErrorCode::Forbidden,
                    format!("at most {MAX_PROBE_MESSAGES} capacity probes, before joining"),
                ),
            )];
        }
        p.probes += 1;
        p.probe_bytes += padding.len() as u64;
        if !last {
            return Vec::new();
        }
        let mut out = vec![Output::Send(
            from,
            SupervisorMessage::CapacityProbeAck {
                bytes: p.probe_bytes,
            },
        )];
        let granted = self.probe_slots.release(from, now);
        out.extend(self.grant(granted));
        out
    }

    /// Grants probe slots: marks the peers and tells them.
    fn grant(&mut self, peers: Vec<PeerId>) -> Vec<Output> {
        for peer in &peers {
            if let Some(p) = self.peers.get_mut(peer) {
                p.probe_granted = true;
            }
        }
        peers
            .into_iter()
            .map(|p| Output::Send(p, SupervisorMessage::CapacityProbeGrant {}))
            .collect()
    }

    /// `from` says the copies `upstream` sends it lag: enough distinct
    /// reporters within the window demote `upstream` to a leaf.
    fn lagging(
        &mut self,
        from: PeerId,
        joined: Option<StreamId>,
        upstream: PeerId,
        now: Instant,
    ) -> Vec<Output> {
        let Some(stream) = joined.and_then(|id| self.streams.get_mut(&id)) else {
            return Vec::new();
        };
        if !stream.topology.is_linked(from, upstream)
            || upstream == stream.broadcaster
            || stream.topology.is_relay(upstream) != Some(true)
        {
            return Vec::new();
        }
        let window = self.config.placement.lag_window;
        let reports = stream.lag_reports.entry(upstream).or_default();
        reports.retain(|(p, t)| *p != from && now.saturating_duration_since(*t) < window);
        reports.push((from, now));
        let feeds = stream.topology.links(upstream).map_or(0, |l| {
            l.children.len() + l.backup_children.len() + l.neighbours.len()
        });
        let needed = (self.config.placement.lag_reporters as usize)
            .min(feeds)
            .max(1);
        if reports.len() < needed {
            return Vec::new();
        }
        stream.lag_reports.remove(&upstream);
        let capacity = self
            .peers
            .get(&upstream)
            .map_or_else(Capacity::default, |p| p.capacity);
        let mut out = Vec::new();
        if let Ok(changes) = stream.topology.leave(upstream) {
            reconfigure(stream, &changes, &mut out);
        }
        match stream.topology.join_leaf(upstream, capacity) {
            Ok(changes) => reconfigure(stream, &changes, &mut out),
            Err(e) => tracing::warn!(%upstream, "cannot re-place a demoted relay: {e}"),
        }
        tracing::info!(%upstream, reporters = needed, "relay demoted to a leaf: its copies lag");
        out
    }

    /// The latest QoS report of a peer.
    pub fn qos(&self, peer: PeerId) -> Option<&Qos> {
        self.peers.get(&peer).and_then(|p| p.qos.as_ref())
    }

    /// Every stream's overlay and its receivers' latest QoS, for the
    /// monitor; streams by name, nodes in overlay order.
    pub fn monitor_view(&self) -> Vec<StreamView> {
        let mut views: Vec<StreamView> = self
            .streams
            .values()
            .map(|s| StreamView {
                id: s.info.id.to_string(),
                name: s.info.name.clone(),
                title: s.info.title.clone(),
                bitrate_bps: u64::from(s.bitrate_kbps) * 1000,
                topology: s.info.topology,
                integrity: s.info.integrity,
                broadcaster: s.broadcaster,
                nodes: s
                    .topology
                    .peers()
                    .into_iter()
                    .enumerate()
                    .filter_map(|(position, peer)| {
                        let l = s.topology.links(peer)?;
                        Some(NodeView {
                            peer,
                            position,
                            depth: s.topology.depth(peer).unwrap_or(0),
                            parents: l.parents,
                            children: l.children,
                            backup_parents: l.backup_parents,
                            backup_children: l.backup_children,
                            neighbours: l.neighbours,
                            qos: self.qos(peer).cloned(),
                            label: self
                                .peers
                                .get(&peer)
                                .and_then(|p| self.labels.get(&p.key))
                                .cloned(),
                            address: None,
                        })
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// The failure injector's choice (paper §4.2): in every stream with
    /// receivers, the receiver at the position `distribution` draws over the
    /// overlay order. Streams are visited by name, so a seeded `rng` replays
    /// the same choices on the same state.
    pub fn pick_victims<R: Rng + ?Sized>(
        &self,
        distribution: FailureDistribution,
        rng: &mut R,
    ) -> Vec<PeerId> {
        let mut streams: Vec<&Stream> = self.streams.values().collect();
        streams.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        streams
            .into_iter()
            .filter_map(|s| {
                let order = s.topology.peers();
                let i = distribution.pick(order.len(), rng)?;
                order.get(i).copied()
            })
            .collect()
    }

    /// The authorized list changed: cuts off every peer whose key is no
    /// longer authorized for its role.
    pub fn reauthorize(&mut self, list: &dyn Authorizer, now: Instant) -> Vec<Output> {
        let revoked: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| list.role_of(&p.key) != Some(p.role))
            .map(|(id, _)| *id)
            .collect();
        revoked
            .into_iter()
            .flat_map(|id| self.cut_off(id, ErrorCode::Revoked, "your key was revoked".into(), now))
            .collect()
    }
}

/// Tells every peer whose links changed its new link set.
/// Whether a receiver with this measured capacity may relay in `stream`.
fn can_relay(placement: &Placement, stream: &Stream, capacity: Capacity) -> bool {
    if placement.relay_copies == 0 || capacity.upload_kbps == 0 {
        return true; // unknown: as before measurement existed
    }
    let kbps = if stream.bitrate_kbps > 0 {
        stream.bitrate_kbps
    } else {
        placement.stream_kbps
    };
    u64::from(capacity.upload_kbps) >= u64::from(placement.relay_copies) * u64::from(kbps)
}

fn reconfigure(stream: &mut Stream, changes: &Changes, out: &mut Vec<Output>) {
    if changes.affected.is_empty() {
        return;
    }
    stream.epoch += 1;
    for &peer in &changes.affected {
        if let Some(links) = stream.topology.links(peer) {
            out.push(Output::Send(
                peer,
                SupervisorMessage::Reconfigure {
                    stream: stream.info.id,
                    epoch: stream.epoch,
                    links,
                },
            ));
        }
    }
}

/// What a bad-chunk report's attached chunk shows.
#[derive(Debug, PartialEq, Eq)]
enum Evidence {
    /// A chunk of this stream with the reported sequence number whose tag
    /// fails: consistent with the report (though it proves nothing about
    /// who sent it, so ejection still takes distinct reporters).
    Holds,
    /// No chunk attached: the report is only its reporter's accusation.
    Missing,
    /// The report is false: the chunk verifies, or is not the reported
    /// chunk at all. An honest reporter attaches exactly the frame whose
    /// check failed, so this is a lie.
    Disproved(String),
}

/// Checks a report's evidence (`chunk`: the frame, base64) against the
/// stream's keys.
fn check_evidence(checker: &Verifier, stream: StreamId, seq: u64, chunk: Option<&str>) -> Evidence {
    let Some(text) = chunk else {
        return Evidence::Missing;
    };
    // Base64 of at most one frame; anything longer is no frame of ours.
    if text.len() > MAX_FRAME_LEN.div_ceil(3) * 4 {
        return Evidence::Disproved("the attached chunk is oversized".into());
    }
    let Ok(bytes) = B64.decode(text) else {
        return Evidence::Disproved("the attached chunk is not base64".into());
    };
    match FrameRef::decode(&bytes) {
        Ok(FrameRef::Chunk(c)) if c.header.stream == stream && c.header.seq == seq => {
            match checker.check_tag(&c) {
                Ok(()) => Evidence::Disproved("it verifies".into()),
                Err(_) => Evidence::Holds,
            }
        }
        Ok(FrameRef::Chunk(_)) => {
            Evidence::Disproved("the attached chunk is another stream's or sequence's".into())
        }
        Ok(_) => Evidence::Disproved("the attachment is no chunk".into()),
        Err(e) => Evidence::Disproved(format!("the attached chunk does not decode: {e}")),
    }
}

#[cfg(test)]
mod tests;
