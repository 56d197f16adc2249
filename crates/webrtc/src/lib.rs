//! The WebRTC transport of MioStream peers.
//!
//! One overlay link = one peer connection with one reliable, *unordered*
//! data channel: a packet lost on a lossy link (Wi-Fi) delays only the
//! frame it belongs to, never the heartbeats and chunks behind it (SCTP's
//! retransmission timeout is at least 1 s here, so an ordered channel turns
//! 1 % loss into second-long silences that look like dead links). The relay
//! orders chunks by sequence number itself; its control frames carry no
//! ordering assumption it cannot repair (a subscription that an old
//! unsubscribe overtook is renewed when the upstream falls silent). The peer with the smaller id makes the offer; offer and answer
//! travel through the supervisor's signaling relay as complete SDPs (host
//! candidates are gathered at once, so no trickling is needed on a LAN;
//! STUN servers add reflexive candidates for NAT). Links are set up in
//! parallel, one task each, and every send is bounded: a frame for a link
//! whose send buffer is full is dropped and counted (the receiver repairs
//! the hole from another upstream) — a slow child never slows its siblings
//! or grows memory.
//!
//! Every link the node asked for ends in exactly one `Down` — when it
//! closes, fails, or never came up (an offer or answer the supervisor
//! refused because the topology moved on, a timeout) — so the node can set
//! it up again while the topology still wants it. A link replaced by a newer
//! offer from the same peer ends silently: its successor reports for it.
//!
//! Liveness is not this crate's job: the relay's 50 ms heartbeats detect a
//! dead link long before ICE would (5 s), and the node then closes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use miostream_peer::transport::{TransportCommand, TransportEvent, TransportHandle};
use miostream_protocol::signal::SignalPayload;
use miostream_protocol::PeerId;
use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn, Instrument};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription,
    SettingEngineBuilder,
};
use webrtc::runtime::Runtime;

/// Transport settings.
#[derive(Debug, Clone)]
pub struct WebRtcConfig {
    /// The local address host candidates bind to: the interface that routes
    /// to the supervisor (loopback for local demos and tests).
    pub bind: IpAddr,
    /// Optional STUN/TURN URLs (`stun:host:port`) for peers behind NAT.
    pub ice_servers: Vec<String>,
    /// Bytes a data channel may hold unsent before frames are dropped.
    pub send_buffer_limit: usize,
    /// Time allowed for a link to open.
    pub connect_timeout: Duration,
    /// Time an offer waits for its answer. Both travel through the
    /// supervisor (milliseconds on a LAN); an answer that takes longer was
    /// most likely refused there (the peers stopped being neighbours), and
    /// the link is reported down so that it can be offered again.
    pub answer_timeout: Duration,
}

impl WebRtcConfig {
    /// Defaults for a peer binding to `bind`.
    pub fn new(bind: IpAddr) -> Self {
        Self {
            bind,
            ice_servers: Vec::new(),
            // ~2 s of a 1.2 Mbit/s stream: room for a gap-fill burst.
            send_buffer_limit: 512 * 1024,
            connect_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(2),
        }
    }
}

/// Frames dropped because a link's send buffer was full (all links).
#[derive(Debug, Default)]
pub struct TransportCounters {
    /// Frames dropped.
    pub dropped_frames: AtomicU64,
    /// Links opened.
    pub links_opened: AtomicU64,
}

/// Starts the transport of peer `me`.
pub fn spawn(me: PeerId, config: WebRtcConfig) -> (TransportHandle, Arc<TransportCounters>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(4096);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let counters = Arc::new(TransportCounters::default());
    tokio::spawn(
        run(config, cmd_rx, ev_tx, counters.clone()).instrument(tracing::info_span!("webrtc", %me)),
    );
    (
        TransportHandle {
            commands: cmd_tx,
            events: ev_rx,
        },
        counters,
    )
}

enum LinkCommand {
    Send(Bytes),
    Signal(SignalPayload),
    Close,
}

struct Link {
    generation: u64,
    commands: mpsc::Sender<LinkCommand>,
}

#[derive(Clone)]
struct Shared {
    config: WebRtcConfig,
    runtime: Arc<dyn Runtime>,
    counters: Arc<TransportCounters>,
}

/// What one link task reports, tagged with its generation: the transport
/// passes on only the reports of a peer's current link.
struct Report {
    peer: PeerId,
    generation: u64,
    event: TransportEvent,
}

/// A link task's way to report.
struct Reporter {
    peer: PeerId,
    generation: u64,
    tx: mpsc::Sender<Report>,
}

impl Reporter {
    /// False once the transport is gone.
    async fn report(&self, event: TransportEvent) -> bool {
        let report = Report {
            peer: self.peer,
            generation: self.generation,
            event,
        };
        self.tx.send(report).await.is_ok()
    }
}

async fn run(
    config: WebRtcConfig,
    mut commands: mpsc::Receiver<TransportCommand>,
    events: mpsc::Sender<TransportEvent>,
    counters: Arc<TransportCounters>,
) {
    let Some(runtime) = webrtc::runtime::default_runtime() else {
        warn!("webrtc was built without a runtime");
        return;
    };
    let shared = Shared {
        config,
        runtime,
        counters,
    };
    let mut links: HashMap<PeerId, Link> = HashMap::new();
    let mut generation = 0u64;
    let (report_tx, mut reports) = mpsc::channel::<Report>(4096);
    let mut start = |peer: PeerId, offer: Option<String>, links: &mut HashMap<PeerId, Link>| {
        generation += 1;
        let (tx, rx) = mpsc::channel(256);
        links.insert(
            peer,
            Link {
                generation,
                commands: tx,
            },
        );
        let reporter = Reporter {
            peer,
            generation,
            tx: report_tx.clone(),
        };
        let shared = shared.clone();
        tokio::spawn(
            async move {
                link(offer, shared, &reporter, rx).await;
                reporter.report(TransportEvent::Down(peer)).await;
            }
            .instrument(tracing::info_span!("link", %peer)),
        );
    };
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break,
                Some(TransportCommand::Open { peer, initiator }) => {
                    if initiator && !links.contains_key(&peer) {
                        start(peer, None, &mut links);
                    }
                }
                Some(TransportCommand::Close { peer }) => {
                    if let Some(l) = links.remove(&peer) {
                        let _ = l.commands.try_send(LinkCommand::Close);
                        if events.send(TransportEvent::Down(peer)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(TransportCommand::Send { peer, frame }) => {
                    if let Some(l) = links.get(&peer) {
                        if l.commands.try_send(LinkCommand::Send(frame)).is_err() {
                            shared.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(TransportCommand::Signal { from, payload }) => match payload {
                    SignalPayload::Offer { sdp } => {
                        // A new offer replaces whatever link we had with
                        // that peer (it restarted, or lost the old one);
                        // the new link reports Up or Down for both.
                        if let Some(old) = links.remove(&from) {
                            let _ = old.commands.try_send(LinkCommand::Close);
                        }
                        start(from, Some(sdp), &mut links);
                    }
                    other => {
                        if let Some(l) = links.get(&from) {
                            let _ = l.commands.try_send(LinkCommand::Signal(other));
                        }
                    }
                },
            },
            Some(Report { peer, generation, event }) = reports.recv() => {
                // Only the current link of a peer reports: a link that was
                // closed (its Down was sent then) or replaced is stale.
                if links.get(&peer).is_none_or(|l| l.generation != generation) {
                    continue;
                }
                if matches!(event, TransportEvent::Down(_)) {
                    links.remove(&peer);
                }
                if events.send(event).await.is_err() {
                    break;
                }
            }
        }
    }
    for (_, l) in links {
        let _ = l.commands.try_send(LinkCommand::Close);
    }
}

enum HandlerEvent {
    Gathered,
    State(RTCPeerConnectionState),
    DataChannel(Arc<dyn DataChannel>),
}

struct Handler {
    tx: mpsc::Sender<HandlerEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.try_send(HandlerEvent::Gathered);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.try_send(HandlerEvent::State(state));
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        let _ = self.tx.try_send(HandlerEvent::DataChannel(data_channel));
    }
}

/// Why a link did not come up.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("closed before it opened")]
    Closed,
}

async fn build(
    shared: &Shared,
    handler: Handler,
) -> Result<impl PeerConnection, webrtc::error::Error> {
    let config = &shared.config;
    let settings = SettingEngineBuilder::new()
        .with_include_loopback_candidate(config.bind.is_loopback())
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let mut rtc_config = RTCConfigurationBuilder::new();
    if !config.ice_servers.is_empty() {
        rtc_config = rtc_config.with_ice_servers(vec![RTCIceServer {
            urls: config.ice_servers.clone(),
            ..Default::default()
        }]);
    }
    PeerConnectionBuilder::new()
        .with_configuration(rtc_config.build())
        .with_setting_engine(settings)
        .with_handler(Arc::new(handler))
        .with_runtime(shared.runtime.clone())
        .with_udp_addrs(vec![format!("{}:0", bracket(config.bind))])
        .with_data_channel_send_buffer_limit(config.send_buffer_limit)
        .build()
        .await
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

async fn wait_gathered(h: &mut mpsc::Receiver<HandlerEvent>) -> Result<(), LinkError> {
    loop {
        match h.recv().await {
            Some(HandlerEvent::Gathered) => return Ok(()),
            Some(HandlerEvent::State(RTCPeerConnectionState::Failed)) | None => {
                return Err(LinkError::Closed)
            }
            Some(_) => {}
        }
    }
}

/// Waits until the node closes the link (or the transport drops it);
/// anything else sent before the link is up is dropped.
async fn closed(commands: &mut mpsc::Receiver<LinkCommand>) {
    while let Some(cmd) = commands.recv().await {
        if matches!(cmd, LinkCommand::Close) {
            return;
        }
    }
}

/// Sets the link up; returns its open data channel.
async fn connect(
    offer: Option<String>,
    pc: &impl PeerConnection,
    shared: &Shared,
    reporter: &Reporter,
    handler_events: &mut mpsc::Receiver<HandlerEvent>,
    commands: &mut mpsc::Receiver<LinkCommand>,
) -> Result<Arc<dyn DataChannel>, LinkError> {
    let to = reporter.peer;
    let dc = match offer {
        None => {
            let init = RTCDataChannelInit {
                ordered: false,
                ..Default::default()
            };
            let dc = pc.create_data_channel("miostream", Some(init)).await?;
            let offer = pc.create_offer(None).await?;
            pc.set_local_description(offer).await?;
            wait_gathered(handler_events).await?;
            let sdp = pc.local_description().await.ok_or(LinkError::Closed)?.sdp;
            let payload = SignalPayload::Offer { sdp };
            reporter
                .report(TransportEvent::Signal { to, payload })
                .await;
            let answer = async {
                loop {
                    match commands.recv().await {
                        Some(LinkCommand::Signal(SignalPayload::Answer { sdp })) => return Ok(sdp),
                        Some(LinkCommand::Close) | None => return Err(LinkError::Closed),
                        Some(_) => {}
                    }
                }
            };
            let sdp = timeout(shared.config.answer_timeout, answer)
                .await
                .unwrap_or(Err(LinkError::Timeout("waiting for the answer")))?;
            pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                .await?;
            dc
        }
        Some(offer) => {
            pc.set_remote_description(RTCSessionDescription::offer(offer)?)
                .await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer).await?;
            wait_gathered(handler_events).await?;
            let sdp = pc.local_description().await.ok_or(LinkError::Closed)?.sdp;
            let payload = SignalPayload::Answer { sdp };
            reporter
                .report(TransportEvent::Signal { to, payload })
                .await;
            let channel = async {
                loop {
                    match handler_events.recv().await {
                        Some(HandlerEvent::DataChannel(dc)) => return Ok(dc),
                        Some(HandlerEvent::State(RTCPeerConnectionState::Failed)) | None => {
                            return Err(LinkError::Closed)
                        }
                        Some(_) => {}
                    }
                }
            };
            tokio::select! {
                dc = channel => dc?,
                () = closed(commands) => return Err(LinkError::Closed),
            }
        }
    };
    let open = async {
        loop {
            match dc.poll().await {
                Some(DataChannelEvent::OnOpen) => return Ok(()),
                Some(DataChannelEvent::OnClose) | None => return Err(LinkError::Closed),
                Some(_) => {}
            }
        }
    };
    tokio::select! {
        r = open => r?,
        () = closed(commands) => return Err(LinkError::Closed),
    }
    Ok(dc)
}

async fn link(
    offer: Option<String>,
    shared: Shared,
    reporter: &Reporter,
    mut commands: mpsc::Receiver<LinkCommand>,
) {
    let (htx, mut hrx) = mpsc::channel(64);
    let pc = match build(&shared, Handler { tx: htx }).await {
        Ok(pc) => pc,
        Err(e) => {
            warn!("cannot create a peer connection: {e}");
            return;
        }
    };
    let started = std::time::Instant::now();
    let connected = timeout(
        shared.config.connect_timeout,
        connect(offer, &pc, &shared, reporter, &mut hrx, &mut commands),
    )
    .await
    .unwrap_or(Err(LinkError::Timeout("opening the data channel")));
    let dc = match connected {
        Ok(dc) => dc,
        Err(e) => {
            debug!("link did not open: {e}");
            let _ = pc.close().await;
            return;
        }
    };
    shared.counters.links_opened.fetch_add(1, Ordering::Relaxed);
    info!(setup_ms = started.elapsed().as_millis() as u64, "link open");
    if !reporter.report(TransportEvent::Up(reporter.peer)).await {
        let _ = pc.close().await;
        return;
    }
    loop {
        tokio::select! {
            ev = dc.poll() => match ev {
                Some(DataChannelEvent::OnMessage(msg)) => {
                    let frame = msg.data.freeze();
                    if !reporter.report(TransportEvent::Frame(reporter.peer, frame)).await {
                        break;
                    }
                }
                Some(DataChannelEvent::OnClose) | None => break,
                Some(_) => {}
            },
            cmd = commands.recv() => match cmd {
                Some(LinkCommand::Send(frame)) => {
                    if let Err(e) = dc.try_send(BytesMut::from(&frame[..])).await {
                        if matches!(e, webrtc::error::Error::ErrSendBufferFull) {
                            shared.counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
                        } else {
                            debug!("send failed: {e}");
                            break;
                        }
                    }
                }
                Some(LinkCommand::Signal(_)) => {}
                Some(LinkCommand::Close) | None => break,
            },
            h = hrx.recv() => match h {
                Some(HandlerEvent::State(RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)) | None => break,
                Some(_) => {}
            },
        }
    }
    let _ = dc.close().await;
    let _ = pc.close().await;
}
