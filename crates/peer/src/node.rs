//! A peer node: the supervisor session, the transport and the relay core
//! wired together in one task. The broadcaster's node announces a stream and
//! publishes chunks; a receiver's node joins one and delivers its chunks in
//! order. Either one relays.
//!
//! The node reacts to the supervisor (links appear and vanish with
//! `RECONFIGURE`), to its transport (links up and down, frames, signaling)
//! and to the relay's timers; everything else — what to subscribe to, what
//! to forward, when a link is dead, how to fill holes — is the relay's
//! decision.

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use miostream_protocol::signal::{ErrorCode, Links, ResumeStream, StreamInfo};
use miostream_protocol::{
    ChunkFlags, ChunkHeader, ChunkKind, IntegrityMode, PeerId, PeerMessage, StreamId,
    SupervisorMessage, TopologyKind,
};
use miostream_relay::{Output, Relay, RelayConfig, RelayStats, Verify};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use crate::session::{Session, SessionConfig, SessionEvent};
use crate::transport::{TransportCommand, TransportEvent, TransportHandle};

/// What the broadcaster announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// Overlay kind.
    pub topology: TopologyKind,
    /// Chunk integrity mode.
    pub integrity: IntegrityMode,
    /// MIME type.
    pub media_type: String,
    /// Ed25519 public key (base64) in `sign` mode.
    pub signing_key: Option<String>,
}

/// The stream's keys, as the supervisor handed them over.
#[derive(Debug, Clone)]
pub struct StreamKeys {
    /// The stream.
    pub stream: StreamInfo,
    /// Per-stream secret (base64).
    pub stream_key: String,
    /// The broadcaster's signing key (base64), in `sign` mode.
    pub signing_key: Option<String>,
}

/// Builds the chunk check once the stream's keys are known.
pub type VerifierFactory = Box<dyn Fn(&StreamKeys) -> Box<dyn Verify + Send> + Send>;

/// A node's settings.
pub struct NodeConfig {
    /// How to reach the supervisor.
    pub session: SessionConfig,
    /// The stream's name.
    pub stream: String,
    /// `Some` for the broadcaster.
    pub announce: Option<Announcement>,
    /// Relay tuning.
    pub relay: RelayConfig,
    /// The integrity check for received chunks.
    pub verifier: VerifierFactory,
}

/// What the node reports to its application.
#[derive(Debug)]
pub enum NodeEvent {
    /// The broadcaster's stream is live: tag chunks with these keys and publish them.
    Announced(StreamKeys),
    /// The receiver joined the stream.
    Joined(StreamKeys),
    /// The next chunk in order.
    Deliver {
        /// Its header.
        header: ChunkHeader,
        /// Its media bytes.
        payload: Bytes,
    },
    /// Chunks that never arrived were skipped.
    Skipped {
        /// First skipped sequence number.
        first: u64,
        /// How many.
        count: u64,
    },
    /// The monitor injected a failure (`INJECT_FAILURE`): the application
    /// should fail as a crash would (e.g. [`NodeHandle::kill`]) and join again
    /// as a new viewer.
    FailureInjected,
    /// The stream ended.
    Ended(String),
    /// The node stopped for good.
    Failed(String),
}

/// The application's end of a node.
pub struct NodeHandle {
    /// The broadcaster publishes encoded, tagged chunk frames here.
    pub publish: mpsc::Sender<Bytes>,
    /// What happened.
    pub events: mpsc::Receiver<NodeEvent>,
    /// Relay counters, updated as they change.
    pub stats: watch::Receiver<RelayStats>,
    /// Our peer id.
    pub peer_id: PeerId,
    /// Weak: the session lives as long as the node, not the handle.
    supervisor: mpsc::WeakSender<PeerMessage>,
    task: JoinHandle<()>,
}

impl NodeHandle {
    /// Stops the node and waits for it: its supervisor connection closes,
    /// so the supervisor repairs the topology at once.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops the node without waiting: no goodbye to its peers, whose links
    /// fall silent (as with `kill -9`).
    pub fn kill(self) {
        self.task.abort();
    }

    /// Sends a message to the supervisor (e.g. a `QOS_REPORT`) without
    /// waiting. Returns false if it was dropped: the session's queue is full
    /// the supervisor is unreachable right now (as with the node's own
    /// signaling), or the node stopped.
    pub fn tell_supervisor(&self, msg: PeerMessage) -> bool {
        self.supervisor
            .upgrade()
            .is_some_and(|tx| tx.try_send(msg).is_ok())
    }
}

/// Starts a node.
pub fn spawn_node(config: NodeConfig, transport: TransportHandle) -> NodeHandle {
    let (publish_tx, publish_rx) = mpsc::channel(256);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (stats_tx, stats_rx) = watch::channel(RelayStats::default());
    let peer_id = config.session.peer_id;
    let session = Session::spawn(config.session.clone());
    let supervisor = session.outbound.downgrade();
    let node = Node {
        me: peer_id,
        session,
        transport,
        name: config.stream,
        announce: config.announce,
        relay_config: config.relay,
        verifier: config.verifier,
        relay: None,
        keys: None,
        linked: HashSet::new(),
        events: events_tx,
        stats: stats_tx,
        ending: None,
        rejoin_at: None,
        pending: Default::default(),
        reopen: Vec::new(),
        dropped_frames: 0,
        player_skip: None,
        probe: Probe::NotStarted,
    };
    let task = tokio::spawn(
        node.run(publish_rx)
            .instrument(tracing::info_span!("node", me = %peer_id)),
    );
    NodeHandle {
        publish: publish_tx,
        events: events_rx,
        stats: stats_rx,
        peer_id,
        supervisor,
        task,
    }
}

struct Node {
    me: PeerId,
    session: Session,
    transport: TransportHandle,
    name: String,
    announce: Option<Announcement>,
    relay_config: RelayConfig,
    verifier: VerifierFactory,
    relay: Option<Relay<Box<dyn Verify + Send>>>,
    keys: Option<StreamKeys>,
    linked: HashSet<PeerId>,
    events: mpsc::Sender<NodeEvent>,
    stats: watch::Sender<RelayStats>,
    /// The stream ended: stop at this time, with this reason.
    ending: Option<(tokio::time::Instant, String)>,
    /// Ask to join again at this time (the stream was not there yet).
    rejoin_at: Option<tokio::time::Instant>,
    /// Links that went down while still in the topology: opened again then.
    reopen: Vec<(tokio::time::Instant, PeerId)>,
    /// Control commands waiting for room in the transport's queue.
    pending: std::collections::VecDeque<TransportCommand>,
    /// Frames dropped because the transport's queue was full.
    dropped_frames: u64,
    /// The uplink measurement before joining (receivers): when it started,
    /// and what it found.
    probe: Probe,
    /// The local player fell behind: chunks from this one on are skipped
    /// until the next keyframe cluster (see [`Node::hand_to_player`]).
    player_skip: Option<u64>,
}

/// Delay before re-joining a stream the restarted supervisor does not know yet.
const REJOIN_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// Delay before setting up again a link that failed while still wanted.
const REOPEN_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a node keeps relaying after its stream ended.
const END_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Probe messages and their filler: 192 KiB, about 0.8 s on a 2 Mbit/s
/// uplink and a few ms on a wired LAN.
const PROBE_MESSAGES: usize = 4;
const PROBE_BYTES: usize = 48 * 1024;
/// A probe unanswered this long: the uplink is slower than its bytes over
/// this time, which is what we report.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A receiver measures its uplink once, before its first join: the bytes
/// of a few filler messages to the supervisor over the time until the
/// supervisor says it has them all (`CAPACITY_PROBE`, `CAPACITY_PROBE_ACK`).
#[derive(Debug, Clone, Copy)]
enum Probe {
    NotStarted,
    Running { since: tokio::time::Instant },
    Done(miostream_protocol::signal::Capacity),
}

/// Upload rate of `bytes` in `elapsed` (kbit/s, at least 1).
fn upload_kbps(bytes: u64, elapsed: std::time::Duration) -> u32 {
    let ms = elapsed.as_millis().max(1) as u64;
    (bytes * 8 / ms).clamp(1, u64::from(u32::MAX)) as u32
}

/// Why the node loop ends.
enum Stop {
    Ended(String),
    Failed(String),
}

impl Node {
    async fn run(mut self, mut publish: mpsc::Receiver<Bytes>) {
        let stop = loop {
            let wake = self
                .relay
                .as_ref()
                .map(|r| tokio::time::Instant::from_std(r.poll_timeout()));
            let ending_at = self.ending.as_ref().map(|(t, _)| *t);
            let rejoin_at = self.rejoin_at;
            let probe_deadline = match self.probe {
                Probe::Running { since } => Some(since + PROBE_TIMEOUT),
                _ => None,
            };
            let reopen_at = self.reopen.iter().map(|(t, _)| *t).min();
            let waiting = !self.pending.is_empty();
            let commands = self.transport.commands.clone();
            let step = tokio::select! {
                permit = commands.reserve(), if waiting => {
                    if let (Ok(permit), Some(cmd)) = (permit, self.pending.pop_front()) {
                        permit.send(cmd);
                    }
                    self.flush_control();
                    Ok(())
                }
                _ = sleep_until_opt(reopen_at) => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<PeerId> = self.reopen.iter().filter(|(t, _)| *t <= now).map(|(_, p)| *p).collect();
                    self.reopen.retain(|(t, _)| *t > now);
                    for peer in due {
                        if self.linked.contains(&peer) {
                            self.control(TransportCommand::Open { peer, initiator: self.me < peer });
                        }
                    }
                    Ok(())
                }
                _ = sleep_until_opt(rejoin_at) => {
                    self.rejoin_at = None;
                    self.join();
                    Ok(())
                }
                _ = sleep_until_opt(probe_deadline) => {
                    let bytes = (PROBE_MESSAGES * PROBE_BYTES) as u64;
                    self.probed(upload_kbps(bytes, PROBE_TIMEOUT));
                    Ok(())
                }
                _ = sleep_until_opt(ending_at) => {
                    let reason = self.ending.take().map(|(_, r)| r).unwrap_or_default();
                    Err(Stop::Ended(reason))
                }
                ev = self.session.events.recv() => match ev {
                    Some(ev) => self.on_session(ev).await,
                    None => Err(Stop::Failed("supervisor session ended".into())),
                },
                ev = self.transport.events.recv() => match ev {
                    Some(ev) => { self.on_transport(ev).await; Ok(()) }
                    None => Err(Stop::Failed("transport ended".into())),
                },
                Some(frame) = publish.recv(), if self.relay.is_some() && self.announce.is_some() => {
                    if let Some(r) = self.relay.as_mut() {
                        r.publish(frame, Instant::now());
                    }
                    Ok(())
                }
                _ = sleep_until_opt(wake) => {
                    if let Some(r) = self.relay.as_mut() {
                        r.handle_timeout(Instant::now());
                    }
                    Ok(())
                }
            };
            if let Err(stop) = step {
                break stop;
            }
            self.drain().await;
        };
        let event = match stop {
            Stop::Ended(reason) => NodeEvent::Ended(reason),
            Stop::Failed(reason) => NodeEvent::Failed(reason),
        };
        let _ = self.events.send(event).await;
    }

    async fn on_session(&mut self, ev: SessionEvent) -> Result<(), Stop> {
        match ev {
            SessionEvent::Connected => {
                let msg = match &self.announce {
                    Some(a) => PeerMessage::AnnounceStream {
                        name: self.name.clone(),
                        topology: a.topology,
                        integrity: a.integrity,
                        media_type: a.media_type.clone(),
                        signing_key: a.signing_key.clone(),
                        resume: self.keys.as_ref().map(|k| ResumeStream {
                            id: k.stream.id,
                            stream_key: k.stream_key.clone(),
                        }),
                    },
                    None => {
                        self.join();
                        return Ok(());
                    }
                };
                self.tell_supervisor(msg);
            }
            SessionEvent::Disconnected(reason) => {
                info!("supervisor unreachable ({reason}); the stream keeps flowing between peers");
            }
            SessionEvent::Failed(e) => return Err(Stop::Failed(e.to_string())),
            SessionEvent::Message(msg) => return self.on_supervisor(msg).await,
        }
        Ok(())
    }

    async fn on_supervisor(&mut self, msg: SupervisorMessage) -> Result<(), Stop> {
        match msg {
            SupervisorMessage::StreamAnnounced { stream, stream_key } => {
                let keys = StreamKeys {
                    stream,
                    stream_key,
                    signing_key: self.announce.as_ref().and_then(|a| a.signing_key.clone()),
                };
                self.start_relay(&keys, true);
                if self.keys.is_none() {
                    let _ = self.events.send(NodeEvent::Announced(keys.clone())).await;
                }
                self.keys = Some(keys);
            }
            SupervisorMessage::StreamJoined {
                stream,
                stream_key,
                signing_key,
                ..
            } => {
                let keys = StreamKeys {
                    stream,
                    stream_key,
                    signing_key,
                };
                let same = self
                    .keys
                    .as_ref()
                    .is_some_and(|k| k.stream.id == keys.stream.id);
                if !same {
                    self.start_relay(&keys, false);
                    let _ = self.events.send(NodeEvent::Joined(keys.clone())).await;
                }
                self.keys = Some(keys);
            }
            SupervisorMessage::Reconfigure { stream, links, .. } => {
                if self.keys.as_ref().is_some_and(|k| k.stream.id == stream) {
                    self.reconfigure(links);
                }
            }
            SupervisorMessage::Signal { from, payload } => {
                self.control(TransportCommand::Signal { from, payload });
            }
            SupervisorMessage::StreamEnded { reason, .. } => {
                // Keep relaying a moment: the last chunks may still be on
                // their way down the overlay.
                if self.ending.is_none() {
                    self.ending = Some((tokio::time::Instant::now() + END_GRACE, reason));
                }
            }
            SupervisorMessage::Error { code, message, .. } => {
                warn!(?code, "supervisor: {message}");
                if self.keys.is_none() {
                    // The stream could not be announced or joined.
                    return Err(Stop::Failed(message));
                }
                if code == ErrorCode::StreamNotFound && self.announce.is_none() {
                    // Re-joining after a supervisor restart, before the
                    // broadcaster re-announced: try again shortly (the
                    // stream keeps flowing between peers meanwhile).
                    self.rejoin_at = Some(tokio::time::Instant::now() + REJOIN_DELAY);
                }
            }
            SupervisorMessage::CapacityProbeAck { bytes } => {
                if let Probe::Running { since } = self.probe {
                    self.probed(upload_kbps(bytes, since.elapsed()));
                }
            }
            SupervisorMessage::InjectFailure {} => {
                info!("the monitor injected a failure");
                let _ = self.events.send(NodeEvent::FailureInjected).await;
            }
            other => debug!(msg = other.name(), "ignored"),
        }
        Ok(())
    }

    /// Joins the stream, measuring the uplink first if it never was.
    fn join(&mut self) {
        match self.probe {
            Probe::Done(capacity) => self.tell_supervisor(PeerMessage::JoinStream {
                name: self.name.clone(),
                capacity,
            }),
            Probe::Running { .. } => {} // joins when the answer comes
            Probe::NotStarted => {
                self.probe = Probe::Running {
                    since: tokio::time::Instant::now(),
                };
                let padding = "0".repeat(PROBE_BYTES);
                for i in 0..PROBE_MESSAGES {
                    self.tell_supervisor(PeerMessage::CapacityProbe {
                        padding: padding.clone(),
                        last: i + 1 == PROBE_MESSAGES,
                    });
                }
            }
        }
    }

    fn probed(&mut self, upload_kbps: u32) {
        info!(upload_kbps, "uplink measured");
        self.probe = Probe::Done(miostream_protocol::signal::Capacity {
            upload_kbps,
            rtt_ms: 0,
        });
        self.join();
    }

    fn start_relay(&mut self, keys: &StreamKeys, source: bool) {
        if self.relay.is_some()
            && self
                .keys
                .as_ref()
                .is_some_and(|k| k.stream.id == keys.stream.id)
        {
            return; // a resumed stream keeps its relay (and its links)
        }
        let verify = (self.verifier)(keys);
        let now = Instant::now();
        let id: StreamId = keys.stream.id;
        let kind = keys.stream.topology;
        let config = self.relay_config.clone();
        self.relay = Some(if source {
            Relay::source(self.me, id, kind, config, verify, now)
        } else {
            Relay::receiver(self.me, id, kind, config, verify, now)
        });
    }

    fn reconfigure(&mut self, links: Links) {
        debug!(?links, "reconfigured");
        let next: HashSet<PeerId> = links.all_peers().collect();
        let new: Vec<PeerId> = next.difference(&self.linked).copied().collect();
        for peer in new {
            let cmd = TransportCommand::Open {
                peer,
                initiator: self.me < peer,
            };
            self.control(cmd);
        }
        let gone: Vec<PeerId> = self.linked.difference(&next).copied().collect();
        for peer in gone {
            // A live link retires through the relay (make before break:
            // it closes once the new upstreams are up); others close now.
            if !self.relay.as_ref().is_some_and(|r| r.is_up(&peer)) {
                self.control(TransportCommand::Close { peer });
            }
        }
        self.linked = next;
        if let Some(r) = self.relay.as_mut() {
            r.set_links(links, Instant::now());
        }
    }

    /// Queues a control command (open, close, signal) for the transport;
    /// the loop hands them over as the transport has room, never blocking.
    fn control(&mut self, cmd: TransportCommand) {
        self.pending.push_back(cmd);
        self.flush_control();
    }

    fn flush_control(&mut self) {
        while let Some(cmd) = self.pending.pop_front() {
            match self.transport.commands.try_send(cmd) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    self.pending.push_front(cmd);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }

    async fn on_transport(&mut self, ev: TransportEvent) {
        let now = Instant::now();
        match ev {
            TransportEvent::Up(peer) => {
                debug!(%peer, "link up");
                if let Some(r) = self.relay.as_mut() {
                    r.link_up(peer, now);
                }
            }
            TransportEvent::Down(peer) => {
                debug!(%peer, "link down");
                if self.linked.contains(&peer) && !self.reopen.iter().any(|(_, p)| *p == peer) {
                    self.reopen
                        .push((tokio::time::Instant::now() + REOPEN_DELAY, peer));
                }
                if let Some(r) = self.relay.as_mut() {
                    r.link_down(peer, now);
                }
            }
            TransportEvent::Frame(peer, frame) => {
                if let Some(r) = self.relay.as_mut() {
                    r.handle_frame(peer, frame, now);
                }
            }
            TransportEvent::Signal { to, payload } => {
                self.tell_supervisor(PeerMessage::Signal { to, payload });
            }
        }
    }

    /// Hands a chunk to the local player without ever waiting for it: a
    /// stalled player (a full stdout pipe) must not stop relaying or
    /// heartbeats for the whole subtree. When the player's queue is full,
    /// chunks are dropped from there on until the next cluster that starts
    /// with a keyframe, which is handed over after a `Skipped` for the gap,
    /// so the player resumes on decodable media.
    fn hand_to_player(&mut self, header: ChunkHeader, payload: Bytes) {
        if let Some(first) = self.player_skip {
            let resumes = header.kind == ChunkKind::Media
                && header
                    .flags
                    .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME))
                && self.events.capacity() >= 2;
            if !resumes {
                return;
            }
            let count = header.seq.saturating_sub(first);
            let _ = self.events.try_send(NodeEvent::Skipped { first, count });
            self.player_skip = None;
            warn!(
                skipped = count,
                "the player fell behind: resumed at a keyframe"
            );
        }
        if self
            .events
            .try_send(NodeEvent::Deliver { header, payload })
            .is_err()
        {
            self.player_skip = Some(header.seq);
        }
    }

    fn tell_supervisor(&mut self, msg: PeerMessage) {
        // Bounded: if the session is backed up (supervisor gone), signaling
        // is stale anyway and is dropped.
        if self.session.outbound.try_send(msg).is_err() {
            debug!("supervisor queue full; message dropped");
        }
    }

    /// Carries out the relay's outputs.
    async fn drain(&mut self) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        let mut outputs = Vec::new();
        while let Some(o) = relay.poll_output() {
            outputs.push(o);
        }
        let stats = relay.stats().clone();
        for o in outputs {
            match o {
                Output::Send { to, frame } => {
                    // Never wait on the transport (it may be waiting on us):
                    // a frame that does not fit is dropped, as a full send
                    // buffer would drop it; the receiver repairs the hole.
                    if self
                        .transport
                        .commands
                        .try_send(TransportCommand::Send { peer: to, frame })
                        .is_err()
                    {
                        self.dropped_frames += 1;
                    }
                }
                Output::Deliver { header, payload } => self.hand_to_player(header, payload),
                Output::Skipped { first, count } => {
                    if self.player_skip.is_none()
                        && self
                            .events
                            .try_send(NodeEvent::Skipped { first, count })
                            .is_err()
                    {
                        self.player_skip = Some(first);
                    }
                }
                Output::Rejected { from, seq, reason } => {
                    warn!(%from, seq, "rejected a chunk: {reason}");
                    self.tell_supervisor(PeerMessage::ReportBadChunk {
                        upstream: from,
                        seq,
                        reason,
                    });
                }
                Output::Lagging { peer } => {
                    info!(%peer, "upstream lags: dropped it, telling the supervisor");
                    self.tell_supervisor(PeerMessage::ReportLagging { upstream: peer });
                }
                Output::Garbage { peer, reason } => {
                    warn!(%peer, "closing a link that sends garbage: {reason}");
                    self.control(TransportCommand::Close { peer });
                }
                Output::LinkDead { peer } => {
                    info!(%peer, "link dead (missed heartbeats)");
                    self.control(TransportCommand::Close { peer });
                }
                Output::Retired { peer } if !self.linked.contains(&peer) => {
                    debug!(%peer, "retired link closed");
                    self.control(TransportCommand::Close { peer });
                }
                Output::Retired { .. } => {}
            }
        }
        self.stats.send_if_modified(|s| {
            let changed = *s != stats;
            *s = stats;
            changed
        });
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
