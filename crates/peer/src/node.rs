//! A peer node on tokio: the supervisor session, the transport and the
//! sans-IO [`NodeCore`] wired together in one task. The broadcaster's node
//! announces a stream and publishes chunks; a receiver's node joins one and
//! delivers its chunks in order. Either one relays.
//!
//! This is a driver only: it moves messages, frames and timers between the
//! core and the world, on one clock (tokio's, so paused-time tests hold).
//! Every protocol decision — what to subscribe to, when a link is dead or
//! wanted again, when to rejoin, when to stop — is the core's.

use bytes::Bytes;
use miostream_node::{NodeCore, NodeCoreConfig, NodeOutput, PlayerGate};
use miostream_protocol::signal::Capacity;
use miostream_protocol::PeerMessage;
use miostream_relay::{RelayConfig, RelayStats};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, Instrument};

pub use miostream_node::{Announcement, NodeEvent, StreamKeys, VerifierFactory};
use miostream_protocol::PeerId;

use crate::session::{Session, SessionConfig, SessionEvent};
use crate::transport::{TransportCommand, TransportHandle};

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
    /// A receiver's uplink, if known: it then joins without measuring it
    /// (`None`: it measures it with a capacity probe).
    pub capacity: Option<Capacity>,
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
    let core = NodeCore::new(NodeCoreConfig {
        me: peer_id,
        stream: config.stream,
        announce: config.announce,
        relay: config.relay,
        verifier: config.verifier,
        capacity: config.capacity,
    });
    let node = Node {
        core,
        session,
        transport,
        events: events_tx,
        stats: stats_tx,
        pending: Default::default(),
        dropped_frames: 0,
        player: PlayerGate::new(),
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
    core: NodeCore,
    session: Session,
    transport: TransportHandle,
    events: mpsc::Sender<NodeEvent>,
    stats: watch::Sender<RelayStats>,
    /// Control commands waiting for room in the transport's queue.
    pending: std::collections::VecDeque<TransportCommand>,
    /// Frames dropped because the transport's queue was full.
    dropped_frames: u64,
    /// What the bounded player queue gets (see [`PlayerGate`]).
    player: PlayerGate,
}

impl Node {
    async fn run(mut self, mut publish: mpsc::Receiver<Bytes>) {
        while !self.core.is_done() {
            let wake = self.core.poll_timeout().map(Instant::from_std);
            let waiting = !self.pending.is_empty();
            let commands = self.transport.commands.clone();
            let publishing = self.core.can_publish();
            tokio::select! {
                permit = commands.reserve(), if waiting => {
                    if let (Ok(permit), Some(cmd)) = (permit, self.pending.pop_front()) {
                        permit.send(cmd);
                    }
                }
                ev = self.session.events.recv() => {
                    let now = Instant::now().into_std();
                    match ev {
                        Some(SessionEvent::Connected) => self.core.connected(now),
                        Some(SessionEvent::Disconnected(reason)) => self.core.disconnected(&reason),
                        Some(SessionEvent::Failed(e)) => self.core.fail(e.to_string()),
                        Some(SessionEvent::Message(msg)) => self.core.handle_supervisor(msg, now),
                        None => self.core.fail("supervisor session ended".into()),
                    }
                }
                ev = self.transport.events.recv() => match ev {
                    Some(ev) => self.core.handle_link(ev, Instant::now().into_std()),
                    None => self.core.fail("transport ended".into()),
                },
                Some(frame) = publish.recv(), if publishing => {
                    self.core.publish(frame, Instant::now().into_std());
                }
                () = sleep_until_opt(wake) => self.core.handle_timeout(Instant::now().into_std()),
            }
            self.carry_out().await;
        }
    }

    /// Carries out the core's outputs, in order.
    async fn carry_out(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                NodeOutput::Supervisor(msg) => self.tell_supervisor(msg),
                NodeOutput::Transport(TransportCommand::Send { peer, frame }) => {
                    // Never wait on the transport (it may be waiting on us):
                    // a frame that does not fit is dropped, as a full send
                    // buffer would drop it; the receiver repairs the hole.
                    let cmd = TransportCommand::Send { peer, frame };
                    if self.transport.commands.try_send(cmd).is_err() {
                        self.dropped_frames += 1;
                    }
                }
                NodeOutput::Transport(cmd) => self.control(cmd),
                NodeOutput::App(ev @ (NodeEvent::Deliver { .. } | NodeEvent::Skipped { .. })) => {
                    // Never wait on the player either: see `PlayerGate`.
                    let events = &self.events;
                    self.player.admit(ev, events.capacity(), |ev| {
                        let _ = events.try_send(ev);
                    });
                }
                // Rare, and the application's own business: wait for room.
                NodeOutput::App(ev) => {
                    let _ = self.events.send(ev).await;
                }
            }
        }
        if let Some(stats) = self.core.stats() {
            self.stats.send_if_modified(|s| {
                let changed = s != stats;
                if changed {
                    *s = stats.clone();
                }
                changed
            });
        }
    }

    /// Queues a control command (open, close, signal) for the transport;
    /// the loop hands them over as the transport has room, never blocking.
    fn control(&mut self, cmd: TransportCommand) {
        self.pending.push_back(cmd);
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

    fn tell_supervisor(&mut self, msg: PeerMessage) {
        // Bounded: if the session is backed up (supervisor gone), signaling
        // is stale anyway and is dropped.
        if self.session.outbound.try_send(msg).is_err() {
            debug!("supervisor queue full; message dropped");
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
