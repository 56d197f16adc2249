//! [`NodeCore`]: one peer's protocol decisions, without IO or a clock.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use miostream_protocol::signal::{Capacity, ErrorCode, Links, ResumeStream, StreamInfo};
use miostream_protocol::{
    ChunkHeader, IntegrityMode, PeerId, PeerMessage, StreamId, SupervisorMessage, TopologyKind,
};
use miostream_relay::{Output as RelayOutput, Relay, RelayConfig, RelayStats, Verify};
use tracing::{debug, info, warn};

use crate::link::{TransportCommand, TransportEvent};

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
    /// Title shown to viewers (empty: none).
    pub title: String,
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
pub struct NodeCoreConfig {
    /// Our peer id.
    pub me: PeerId,
    /// The stream's name.
    pub stream: String,
    /// `Some` for the broadcaster.
    pub announce: Option<Announcement>,
    /// Relay tuning.
    pub relay: RelayConfig,
    /// The integrity check for received chunks.
    pub verifier: VerifierFactory,
    /// A receiver's uplink, if known: it then joins without measuring it
    /// (`CAPACITY_PROBE`) first.
    pub capacity: Option<Capacity>,
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
    /// should fail as a crash would and join again as a new viewer.
    FailureInjected,
    /// The stream ended.
    Ended(String),
    /// The node stopped for good.
    Failed(String),
}

/// What the driver must do.
#[derive(Debug)]
pub enum NodeOutput {
    /// Send this to the supervisor (dropped if the session is backed up:
    /// signaling for a supervisor that is gone is stale anyway).
    Supervisor(PeerMessage),
    /// Hand this to the transport. Control commands (open, close, signal)
    /// must not be lost; a `Send` that does not fit may be dropped.
    Transport(TransportCommand),
    /// Tell the application. After `Ended` or `Failed` the node is done.
    App(NodeEvent),
}

/// Delay before re-joining a stream the restarted supervisor does not know yet.
pub const REJOIN_DELAY: Duration = Duration::from_millis(300);

/// Delay before setting up again a link that went down while still wanted.
pub const REOPEN_DELAY: Duration = Duration::from_millis(200);

/// How long a node keeps relaying after its stream ended: the last chunks
/// may still be on their way down the overlay.
pub const END_GRACE: Duration = Duration::from_secs(1);

/// Probe messages and their filler: 192 KiB, about 0.8 s on a 2 Mbit/s
/// uplink and a few ms on a wired LAN.
pub const PROBE_MESSAGES: usize = 4;
/// Filler bytes per probe message.
pub const PROBE_BYTES: usize = 48 * 1024;
/// A probe unanswered this long: the uplink is slower than its bytes over
/// this time, which is what we report.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// No probe slot granted this long (a crowd is measuring): join unmeasured,
/// which the supervisor places as a relay, as it did before measurement.
pub const PROBE_WAIT: Duration = Duration::from_secs(10);

/// A receiver measures its uplink once, before its first join: it asks the
/// supervisor for a slot (`CAPACITY_PROBE_REQUEST`; only a few peers probe
/// at once, so a crowd does not measure the supervisor's link), then sends
/// a few filler messages and divides their bytes by the time until the
/// supervisor says it has them all (`CAPACITY_PROBE`, `CAPACITY_PROBE_ACK`).
#[derive(Debug, Clone, Copy)]
enum Probe {
    NotStarted,
    Waiting { since: Instant },
    Running { since: Instant },
    Done(Capacity),
}

/// Upload rate of `bytes` in `elapsed` (kbit/s, at least 1).
fn upload_kbps(bytes: u64, elapsed: Duration) -> u32 {
    let ms = elapsed.as_millis().max(1) as u64;
    (bytes * 8 / ms).clamp(1, u64::from(u32::MAX)) as u32
}

/// One peer — a broadcaster or a receiver — as a sans-IO state machine.
///
/// It holds the supervisor session's state (announced or joined, the
/// capacity probe, rejoin after a supervisor restart, the end grace), the
/// link lifecycle (which links the topology wants, reopening one that went
/// down, closing one the relay retired: make before break) and the
/// [`Relay`]. It never touches a socket or a clock.
///
/// # Driving it
///
/// Pass the same clock's `now` to every call. After each input —
/// [`connected`](Self::connected), [`handle_supervisor`](Self::handle_supervisor),
/// [`handle_link`](Self::handle_link), [`publish`](Self::publish) or
/// [`handle_timeout`](Self::handle_timeout) — drain
/// [`poll_output`](Self::poll_output) until it returns `None`, carry the
/// outputs out in order, then call [`poll_timeout`](Self::poll_timeout) and
/// arrange for `handle_timeout` at that instant (it may be in the past:
/// call it at once). Inputs may come in any order and timeouts late; once
/// an `App(Ended | Failed)` output came out, [`is_done`](Self::is_done) is
/// true and further inputs are ignored.
pub struct NodeCore {
    me: PeerId,
    name: String,
    announce: Option<Announcement>,
    relay_config: RelayConfig,
    verifier: VerifierFactory,
    relay: Option<Relay<Box<dyn Verify + Send>>>,
    keys: Option<StreamKeys>,
    /// Peers the latest `RECONFIGURE` links us with.
    linked: HashSet<PeerId>,
    /// The stream ended: stop at this time, with this reason.
    ending: Option<(Instant, String)>,
    /// Ask to join again at this time (the stream was not there yet).
    rejoin_at: Option<Instant>,
    /// Links that went down while still in the topology: opened again then.
    reopen: Vec<(Instant, PeerId)>,
    probe: Probe,
    out: VecDeque<NodeOutput>,
    done: bool,
}

impl NodeCore {
    /// A node that has not reached its supervisor yet.
    pub fn new(config: NodeCoreConfig) -> Self {
        Self {
            me: config.me,
            name: config.stream,
            announce: config.announce,
            relay_config: config.relay,
            verifier: config.verifier,
            relay: None,
            keys: None,
            linked: HashSet::new(),
            ending: None,
            rejoin_at: None,
            reopen: Vec::new(),
            probe: config.capacity.map_or(Probe::NotStarted, Probe::Done),
            out: VecDeque::new(),
            done: false,
        }
    }

    /// Our peer id.
    pub fn id(&self) -> PeerId {
        self.me
    }

    /// The relay's counters, once the stream is announced or joined.
    pub fn stats(&self) -> Option<&RelayStats> {
        self.relay.as_ref().map(Relay::stats)
    }

    /// The relay, once the stream is announced or joined.
    pub fn relay(&self) -> Option<&Relay<Box<dyn Verify + Send>>> {
        self.relay.as_ref()
    }

    /// The stream's keys, once announced or joined.
    pub fn keys(&self) -> Option<&StreamKeys> {
        self.keys.as_ref()
    }

    /// Whether the node stopped (it said `Ended` or `Failed`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The session to the supervisor is (again) authenticated: announce or
    /// join (again). After a supervisor restart this re-registers the
    /// stream, which keeps flowing between peers meanwhile.
    pub fn connected(&mut self, now: Instant) {
        if self.done {
            return;
        }
        match &self.announce {
            Some(a) => {
                let msg = PeerMessage::AnnounceStream {
                    name: self.name.clone(),
                    topology: a.topology,
                    integrity: a.integrity,
                    media_type: a.media_type.clone(),
                    signing_key: a.signing_key.clone(),
                    resume: self.keys.as_ref().map(|k| ResumeStream {
                        id: k.stream.id,
                        stream_key: k.stream_key.clone(),
                    }),
                    title: a.title.clone(),
                };
                self.out.push_back(NodeOutput::Supervisor(msg));
            }
            None => {
                if let Probe::Waiting { .. } | Probe::Running { .. } = self.probe {
                    // Cut off mid-probe: the new session measures afresh.
                    self.probe = Probe::NotStarted;
                }
                self.join(now)
            }
        }
    }

    /// The session to the supervisor is gone (it reconnects by itself).
    pub fn disconnected(&mut self, reason: &str) {
        info!("supervisor unreachable ({reason}); the stream keeps flowing between peers");
    }

    /// The session or the transport failed for good (e.g. the supervisor
    /// refused us): the node stops.
    pub fn fail(&mut self, reason: String) {
        self.stop(NodeEvent::Failed(reason));
    }

    /// A message from the supervisor.
    pub fn handle_supervisor(&mut self, msg: SupervisorMessage, now: Instant) {
        if self.done {
            return;
        }
        match msg {
            SupervisorMessage::StreamAnnounced { stream, stream_key } => {
                let keys = StreamKeys {
                    stream,
                    stream_key,
                    signing_key: self.announce.as_ref().and_then(|a| a.signing_key.clone()),
                };
                self.start_relay(&keys, true, now);
                if self.keys.is_none() {
                    self.app(NodeEvent::Announced(keys.clone()));
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
                    self.start_relay(&keys, false, now);
                    self.app(NodeEvent::Joined(keys.clone()));
                }
                self.keys = Some(keys);
            }
            SupervisorMessage::Reconfigure { stream, links, .. } => {
                if self.keys.as_ref().is_some_and(|k| k.stream.id == stream) {
                    self.reconfigure(links, now);
                }
            }
            SupervisorMessage::Signal { from, payload } => {
                if self.relay.as_ref().is_some_and(|r| r.is_shunned(&from)) {
                    // Its offers would only bring up a link we close at once.
                    debug!(%from, "signal from a peer that sent garbage: dropped");
                } else {
                    self.transport(TransportCommand::Signal { from, payload });
                }
            }
            SupervisorMessage::StreamEnded { reason, .. } => {
                if self.ending.is_none() {
                    self.ending = Some((now + END_GRACE, reason));
                }
            }
            SupervisorMessage::Error { code, message, .. } => {
                warn!(?code, "supervisor: {message}");
                if self.keys.is_none() {
                    // The stream could not be announced or joined.
                    self.stop(NodeEvent::Failed(message));
                } else if code == ErrorCode::StreamNotFound && self.announce.is_none() {
                    // Re-joining after a supervisor restart, before the
                    // broadcaster re-announced: try again shortly (the
                    // stream keeps flowing between peers meanwhile).
                    self.rejoin_at = Some(now + REJOIN_DELAY);
                }
            }
            SupervisorMessage::CapacityProbeGrant {} => {
                if let Probe::Waiting { .. } = self.probe {
                    self.probe = Probe::Running { since: now };
                    let padding = "0".repeat(PROBE_BYTES);
                    for i in 0..PROBE_MESSAGES {
                        let msg = PeerMessage::CapacityProbe {
                            padding: padding.clone(),
                            last: i + 1 == PROBE_MESSAGES,
                        };
                        self.out.push_back(NodeOutput::Supervisor(msg));
                    }
                }
            }
            SupervisorMessage::CapacityProbeAck { bytes } => {
                if let Probe::Running { since } = self.probe {
                    self.probed(
                        upload_kbps(bytes, now.saturating_duration_since(since)),
                        now,
                    );
                }
            }
            SupervisorMessage::InjectFailure {} => {
                info!("the monitor injected a failure");
                self.app(NodeEvent::FailureInjected);
            }
            other => debug!(msg = other.name(), "ignored"),
        }
    }

    /// An event of the transport.
    pub fn handle_link(&mut self, event: TransportEvent, now: Instant) {
        if self.done {
            return;
        }
        match event {
            TransportEvent::Up(peer) => {
                debug!(%peer, "link up");
                if let Some(r) = self.relay.as_mut() {
                    r.link_up(peer, now);
                }
            }
            TransportEvent::Down(peer) => {
                debug!(%peer, "link down");
                let shunned = self.relay.as_ref().is_some_and(|r| r.is_shunned(&peer));
                if self.linked.contains(&peer)
                    && !shunned
                    && !self.reopen.iter().any(|(_, p)| *p == peer)
                {
                    self.reopen.push((now + REOPEN_DELAY, peer));
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
                self.out
                    .push_back(NodeOutput::Supervisor(PeerMessage::Signal { to, payload }));
            }
        }
    }

    /// The broadcaster publishes an encoded, tagged chunk frame. Ignored
    /// before the stream is announced, and at a receiver.
    pub fn publish(&mut self, frame: Bytes, now: Instant) {
        if self.announce.is_some() && !self.done {
            if let Some(r) = self.relay.as_mut() {
                r.publish(frame, now);
            }
        }
    }

    /// Whether the broadcaster can publish (its stream is announced).
    pub fn can_publish(&self) -> bool {
        self.announce.is_some() && self.relay.is_some() && !self.done
    }

    /// The instant of the next timer, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let probe = match self.probe {
            Probe::Waiting { since } => Some(since + PROBE_WAIT),
            Probe::Running { since } => Some(since + PROBE_TIMEOUT),
            _ => None,
        };
        [
            self.relay.as_ref().map(Relay::poll_timeout),
            self.ending.as_ref().map(|(t, _)| *t),
            self.rejoin_at,
            probe,
            self.reopen.iter().map(|(t, _)| *t).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.ending.as_ref().is_some_and(|(t, _)| *t <= now) {
            let reason = self.ending.take().map(|(_, r)| r).unwrap_or_default();
            self.stop(NodeEvent::Ended(reason));
            return;
        }
        if self.reopen.iter().any(|(t, _)| *t <= now) {
            let due: Vec<PeerId> = self
                .reopen
                .iter()
                .filter(|(t, _)| *t <= now)
                .map(|(_, p)| *p)
                .collect();
            self.reopen.retain(|(t, _)| *t > now);
            for peer in due {
                let shunned = self.relay.as_ref().is_some_and(|r| r.is_shunned(&peer));
                if self.linked.contains(&peer) && !shunned {
                    let initiator = self.me < peer;
                    self.transport(TransportCommand::Open { peer, initiator });
                }
            }
        }
        if self.rejoin_at.is_some_and(|t| t <= now) {
            self.rejoin_at = None;
            self.join(now);
        }
        match self.probe {
            Probe::Running { since } if since + PROBE_TIMEOUT <= now => {
                let bytes = (PROBE_MESSAGES * PROBE_BYTES) as u64;
                self.probed(upload_kbps(bytes, PROBE_TIMEOUT), now);
            }
            Probe::Waiting { since } if since + PROBE_WAIT <= now => {
                warn!("no capacity probe slot granted: joining unmeasured");
                self.probed(0, now);
            }
            _ => {}
        }
        if let Some(r) = self.relay.as_mut() {
            if r.poll_timeout() <= now {
                r.handle_timeout(now);
            }
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        if self.out.is_empty() {
            self.drain_relay();
        }
        self.out.pop_front()
    }

    fn app(&mut self, event: NodeEvent) {
        self.out.push_back(NodeOutput::App(event));
    }

    fn transport(&mut self, cmd: TransportCommand) {
        self.out.push_back(NodeOutput::Transport(cmd));
    }

    fn stop(&mut self, event: NodeEvent) {
        if !self.done {
            self.drain_relay();
            self.app(event);
            self.done = true;
        }
    }

    /// Joins the stream, measuring the uplink first if it never was.
    fn join(&mut self, now: Instant) {
        match self.probe {
            Probe::Done(capacity) => {
                let msg = PeerMessage::JoinStream {
                    name: self.name.clone(),
                    capacity,
                };
                self.out.push_back(NodeOutput::Supervisor(msg));
            }
            Probe::Waiting { .. } | Probe::Running { .. } => {} // joins when measured
            Probe::NotStarted => {
                self.probe = Probe::Waiting { since: now };
                let msg = PeerMessage::CapacityProbeRequest {};
                self.out.push_back(NodeOutput::Supervisor(msg));
            }
        }
    }

    fn probed(&mut self, upload_kbps: u32, now: Instant) {
        info!(upload_kbps, "uplink measured");
        self.probe = Probe::Done(Capacity {
            upload_kbps,
            rtt_ms: 0,
        });
        self.join(now);
    }

    fn start_relay(&mut self, keys: &StreamKeys, source: bool, now: Instant) {
        if self.relay.is_some()
            && self
                .keys
                .as_ref()
                .is_some_and(|k| k.stream.id == keys.stream.id)
        {
            return; // a resumed stream keeps its relay (and its links)
        }
        let verify = (self.verifier)(keys);
        let id: StreamId = keys.stream.id;
        let kind = keys.stream.topology;
        let config = self.relay_config.clone();
        self.relay = Some(if source {
            Relay::source(self.me, id, kind, config, verify, now)
        } else {
            Relay::receiver(self.me, id, kind, config, verify, now)
        });
    }

    fn reconfigure(&mut self, links: Links, now: Instant) {
        debug!(?links, "reconfigured");
        let next: HashSet<PeerId> = links.all_peers().collect();
        let mut new: Vec<PeerId> = next.difference(&self.linked).copied().collect();
        new.sort(); // one order for one input: the simulator replays exactly
        for peer in new {
            let initiator = self.me < peer;
            self.transport(TransportCommand::Open { peer, initiator });
        }
        let mut gone: Vec<PeerId> = self.linked.difference(&next).copied().collect();
        gone.sort();
        for peer in gone {
            // A live link retires through the relay (make before break:
            // it closes once the new upstreams are up); others close now.
            if !self.relay.as_ref().is_some_and(|r| r.is_up(&peer)) {
                self.transport(TransportCommand::Close { peer });
            }
        }
        self.linked = next;
        if let Some(r) = self.relay.as_mut() {
            r.set_links(links, now);
        }
    }

    /// Turns the relay's outputs into the node's.
    fn drain_relay(&mut self) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        while let Some(o) = relay.poll_output() {
            let out = match o {
                RelayOutput::Send { to, frame } => {
                    NodeOutput::Transport(TransportCommand::Send { peer: to, frame })
                }
                RelayOutput::Deliver { header, payload } => {
                    NodeOutput::App(NodeEvent::Deliver { header, payload })
                }
                RelayOutput::Skipped { first, count } => {
                    NodeOutput::App(NodeEvent::Skipped { first, count })
                }
                RelayOutput::Rejected {
                    from,
                    seq,
                    reason,
                    frame,
                } => {
                    warn!(%from, seq, "rejected a chunk: {reason}");
                    // The chunk goes along: the supervisor checks its tag
                    // itself, so a report it can disprove costs the reporter.
                    NodeOutput::Supervisor(PeerMessage::ReportBadChunk {
                        upstream: from,
                        seq,
                        reason,
                        chunk: Some(B64.encode(&frame)),
                    })
                }
                RelayOutput::Lagging { peer } => {
                    info!(%peer, "upstream lags: dropped it, telling the supervisor");
                    NodeOutput::Supervisor(PeerMessage::ReportLagging { upstream: peer })
                }
                RelayOutput::Garbage { peer, reason } => {
                    // Never a bad-chunk report: garbage is no evidence of
                    // forgery. But a peer whose links close is no relay:
                    // reported as unfit to feed (REPORT_LAGGING), which
                    // demotes it to a leaf when two peers say so, and never
                    // cuts it out. The link stays closed while the topology
                    // links us.
                    warn!(%peer, "closing a link that sends garbage: {reason}");
                    self.out
                        .push_back(NodeOutput::Supervisor(PeerMessage::ReportLagging {
                            upstream: peer,
                        }));
                    NodeOutput::Transport(TransportCommand::Close { peer })
                }
                RelayOutput::LinkDead { peer } => {
                    info!(%peer, "link dead (missed heartbeats)");
                    NodeOutput::Transport(TransportCommand::Close { peer })
                }
                RelayOutput::Retired { peer } if !self.linked.contains(&peer) => {
                    debug!(%peer, "retired link closed");
                    NodeOutput::Transport(TransportCommand::Close { peer })
                }
                RelayOutput::Retired { .. } => continue,
            };
            self.out.push_back(out);
        }
    }
}
