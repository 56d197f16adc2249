//! The tokio driver: accepts TLS WebSocket connections, runs the handshake,
//! and connects authenticated peers to the hub task that owns the
//! [`Manager`](crate::manager::Manager).
//!
//! Every queue is bounded. What happens when one is full is decided here:
//! - connection → hub: the connection waits (its reads pause; TCP pushes back);
//! - hub → connection: the peer is a slow reader and is dropped (in `Hub::deliver`);
//! - new connections beyond `max_connections` or `max_unauthenticated`: closed at once.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use miostream_auth::{
    AuthError, PrivateKey, SupervisorHandshake, SupervisorStep, CHANNEL_BINDING_LABEL,
};
use miostream_protocol::signal::ErrorCode;
use miostream_protocol::{ComponentType, PeerId, PeerMessage, SupervisorMessage};
use miostream_topology::TopologyConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::SupervisorConfig;
use crate::manager::{Manager, ManagerConfig, Output, Placement};
use crate::monitor::api::{Injector, MonitorState};
use crate::monitor::metrics::{Counters, HubFigures};
use crate::monitor::{Monitor, MonitorQuery};
use crate::state::{Authorized, StateDir, StateError};

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The state directory is incomplete or invalid.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// Everything connection tasks share (read-only).
struct Shared {
    config: SupervisorConfig,
    key: Arc<PrivateKey>,
    tls: TlsAcceptor,
    ws_config: WebSocketConfig,
    authorized: watch::Receiver<Arc<Authorized>>,
    /// Handshake outcomes, for `/metrics`.
    counters: Counters,
}

/// A bound, not yet running supervisor.
pub struct Server {
    listener: TcpListener,
    monitor: Option<Monitor>,
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
    dir: StateDir,
    authorized_tx: watch::Sender<Arc<Authorized>>,
}

impl Server {
    /// Loads the state directory and binds `config.listen`.
    pub async fn bind(dir: &StateDir, config: SupervisorConfig) -> Result<Self, ServerError> {
        config.validate().map_err(|reason| StateError::Config {
            path: dir.config_path(),
            reason,
        })?;
        let key = Arc::new(dir.load_key()?);
        let (chain, tls_key) = dir.load_tls()?;
        let tls = TlsAcceptor::from(
            crate::tls::server_config(&chain, &tls_key).map_err(ServerError::Tls)?,
        );
        let (authorized_tx, authorized) = watch::channel(Arc::new(dir.load_authorized()?));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let monitor = match config.monitor_addr().map_err(|reason| StateError::Config {
            path: dir.config_path(),
            reason,
        })? {
            Some(addr) => Some(Monitor {
                token: dir.load_or_create_monitor_token()?,
                listener: TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
                tls: tls.clone(),
                max_connections: config.monitor.max_connections,
                tls_timeout: Duration::from_millis(config.limits.tls_handshake_timeout_ms),
                lab_controls: config.monitor.lab_controls,
            }),
            None => None,
        };
        let metrics = match config.metrics_addr().map_err(|reason| StateError::Config {
            path: dir.config_path(),
            reason,
        })? {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        let limits = &config.limits;
        // A small read buffer per socket: tungstenite's 128 KiB default would
        // cost 1.3 GB for 10,000 idle peers.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(limits.max_message_bytes * 4)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes));
        Ok(Self {
            listener,
            monitor,
            metrics,
            shared: Arc::new(Shared {
                config,
                key,
                tls,
                ws_config,
                authorized,
                counters: Counters::default(),
            }),
            dir: dir.clone(),
            authorized_tx,
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    /// Where the monitor (the operators' HTTPS dashboard) listens, if enabled.
    pub fn monitor_addr(&self) -> Option<SocketAddr> {
        self.monitor
            .as_ref()
            .and_then(|m| m.listener.local_addr().ok())
    }

    /// Where the token-less `/metrics` listener serves, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then tells every peer and closes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            monitor,
            metrics,
            shared,
            dir,
            authorized_tx,
        } = self;
        let limits = shared.config.limits.clone();
        let (hub_tx, hub_rx) = mpsc::channel(4096);
        let (monitor_tx, monitor_rx) = mpsc::channel(64);
        let hub = Hub::new(&shared.config);
        let hub_task = tokio::spawn(hub.run(hub_rx, monitor_rx).instrument(info_span!("hub")));
        let watchdog = miostream_cli::watchdog_interval()
            .map(|every| tokio::spawn(watchdog(every, monitor_tx.clone())));
        let watcher = tokio::spawn(watch_authorized(dir, authorized_tx, hub_tx.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let monitor_task = monitor.map(|m| {
            tokio::spawn(
                m.run(monitor_tx.clone(), shared.counters.clone(), stop_rx.clone())
                    .instrument(info_span!("monitor")),
            )
        });
        let metrics_task = metrics.map(|l| {
            tokio::spawn(
                crate::monitor::serve_metrics(
                    l,
                    monitor_tx.clone(),
                    shared.counters.clone(),
                    stop_rx.clone(),
                )
                .instrument(info_span!("metrics")),
            )
        });
        drop(monitor_tx);
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let unauthenticated = Arc::new(Semaphore::new(limits.max_unauthenticated));
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            let (tcp, addr) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (Ok(conn_permit), Ok(auth_permit)) = (
                connections.clone().try_acquire_owned(),
                unauthenticated.clone().try_acquire_owned(),
            ) else {
                debug!(%addr, "connection refused: at the configured limit");
                continue; // dropping the socket closes it
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                shared: shared.clone(),
                hub: hub_tx.clone(),
                stop: stop_rx.clone(),
            };
            tasks.spawn(
                conn.run(tcp, conn_permit, auth_permit)
                    .instrument(info_span!("conn", %addr)),
            );
        }
        info!("shutting down");
        // Peers that lose us now are not departures: they will re-register
        // with the next supervisor, and their streams keep flowing.
        let _ = hub_tx.send(HubCommand::Shutdown).await;
        let _ = stop_tx.send(true);
        watcher.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        drop(hub_tx);
        let drained = timeout(Duration::from_secs(3), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
        }
        for task in [monitor_task, metrics_task].into_iter().flatten() {
            let _ = task.await;
        }
        let _ = hub_task.await;
    }
}

/// systemd's watchdog (`WatchdogSec=`): `WATCHDOG=1` every `every` while
/// the hub — where every peer's messages are handled — answers a query
/// within that time; a hub that hangs stops the pings and systemd restarts
/// the service.
async fn watchdog(every: Duration, hub: mpsc::Sender<MonitorQuery>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (tx, rx) = oneshot::channel();
        if hub.send(MonitorQuery::Ping(tx)).await.is_err() {
            return;
        }
        match timeout(every, rx).await {
            Ok(Ok(_)) => {
                if let Err(e) = miostream_cli::notify("WATCHDOG=1") {
                    warn!("cannot notify systemd's watchdog: {e}");
                }
            }
            _ => warn!("the hub did not answer within the watchdog interval"),
        }
    }
}

/// Re-reads the authorized list when the file changes (polled: no inotify
/// dependency, and `authorize` replaces the file atomically).
async fn watch_authorized(
    dir: StateDir,
    tx: watch::Sender<Arc<Authorized>>,
    hub: mpsc::Sender<HubCommand>,
) {
    let path = dir.authorized_path();
    let stamp = |p: &std::path::Path| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match dir.load_authorized() {
            Ok(list) => {
                info!(keys = list.len(), "authorized peers reloaded");
                let list = Arc::new(list);
                let _ = tx.send(list.clone());
                if hub.send(HubCommand::Authorized(list)).await.is_err() {
                    return;
                }
            }
            Err(e) => warn!("keeping the previous authorized list: {e}"),
        }
    }
}

/// What the hub sends a connection.
#[derive(Debug)]
enum Outbound {
    Message(SupervisorMessage),
    Close(ErrorCode, String),
}

enum HubCommand {
    Register {
        id: PeerId,
        /// Where it connects from (shown by the monitor).
        addr: Option<SocketAddr>,
        role: ComponentType,
        key: miostream_auth::KeyFingerprint,
        tx: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<(), ErrorCode>>,
    },
    Message {
        from: PeerId,
        msg: PeerMessage,
    },
    Gone {
        id: PeerId,
    },
    Authorized(Arc<Authorized>),
    /// The server is stopping: forget peers silently from now on.
    Shutdown,
}

/// Owns the manager and the outbound queue of every registered peer.
struct Hub {
    manager: Manager,
    peers: HashMap<PeerId, mpsc::Sender<Outbound>>,
    /// Where each registered peer connects from.
    addrs: HashMap<PeerId, SocketAddr>,
    stopping: bool,
    /// The monitor's failure injector, and when it fires next.
    injector: Injector,
    next_injection: Option<Instant>,
    lab_controls: bool,
}

impl Hub {
    fn new(config: &SupervisorConfig) -> Self {
        let topology = TopologyConfig {
            list_backups: config.topology.list_backups,
            tree_fanout: config.topology.tree_fanout,
            mesh_width: config.topology.mesh_width,
            mesh_entries: config.topology.mesh_entries,
        };
        Self {
            manager: Manager::new(ManagerConfig {
                topology,
                bad_chunk_limit: config.integrity.bad_chunk_limit,
                placement: Placement {
                    relay_copies: config.placement.relay_copies,
                    stream_kbps: config.placement.stream_kbps,
                    lag_reporters: config.placement.lag_reporters,
                    lag_window: Duration::from_millis(config.placement.lag_window_ms),
                },
            }),
            peers: HashMap::new(),
            addrs: HashMap::new(),
            stopping: false,
            injector: Injector::new(),
            next_injection: None,
            lab_controls: config.monitor.lab_controls,
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<HubCommand>,
        mut monitor: mpsc::Receiver<MonitorQuery>,
    ) {
        // A Send RNG (the thread-local one cannot cross awaits), seeded by the OS.
        let mut rng: rand::rngs::StdRng = rand::make_rng();
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                Some(query) = monitor.recv() => {
                    self.answer(query);
                    continue;
                }
                _ = sleep_until_opt(self.manager.poll_timeout().map(Instant::from_std)) => {
                    let outputs = self.manager.handle_timeout(Instant::now().into_std());
                    self.deliver(outputs);
                    continue;
                }
                _ = sleep_until_opt(self.next_injection) => {
                    let outputs = self.inject();
                    self.deliver(outputs);
                    continue;
                }
            };
            let outputs = match cmd {
                HubCommand::Register {
                    id,
                    addr,
                    role,
                    key,
                    tx,
                    reply,
                } => {
                    let result = self.manager.register(id, role, key);
                    if result.is_ok() {
                        self.peers.insert(id, tx);
                        if let Some(a) = addr {
                            self.addrs.insert(id, a);
                        }
                        info!(peer = %id, %role, peers = self.peers.len(), "peer authenticated");
                    }
                    let _ = reply.send(result);
                    Vec::new()
                }
                HubCommand::Message { from, msg } => {
                    self.manager
                        .handle(from, msg, Instant::now().into_std(), &mut rng)
                }
                HubCommand::Gone { id } => {
                    self.peers.remove(&id);
                    self.addrs.remove(&id);
                    if self.stopping {
                        Vec::new()
                    } else {
                        self.manager.disconnected(id, Instant::now().into_std())
                    }
                }
                HubCommand::Shutdown => {
                    self.stopping = true;
                    self.next_injection = None;
                    Vec::new()
                }
                HubCommand::Authorized(list) => self
                    .manager
                    .reauthorize(list.as_ref(), Instant::now().into_std()),
            };
            self.deliver(outputs);
        }
    }

    /// The manager's view of every stream, with each receiver's address.
    fn streams_view(&self) -> Vec<crate::monitor::api::StreamView> {
        let mut streams = self.manager.monitor_view();
        for n in streams.iter_mut().flat_map(|s| s.nodes.iter_mut()) {
            n.address = self.addrs.get(&n.peer).map(ToString::to_string);
        }
        streams
    }

    /// Answers the monitor.
    fn answer(&mut self, query: MonitorQuery) {
        match query {
            MonitorQuery::Ping(reply) => {
                let _ = reply.send(());
            }
            MonitorQuery::State(reply) => {
                let _ = reply.send(MonitorState {
                    streams: self.streams_view(),
                    injection: self.injector.view(),
                    lab_controls: self.lab_controls,
                });
            }
            MonitorQuery::Metrics(reply) => {
                let (bad_chunk_reports, ejections) = self.manager.integrity_counts();
                let _ = reply.send(HubFigures {
                    peers: self.manager.peers_by_role(),
                    streams: self.streams_view(),
                    bad_chunk_reports,
                    ejections,
                });
            }
            MonitorQuery::Inject(req, reply) => {
                let view = self.injector.set(&req);
                self.next_injection = match self.injector.period() {
                    Some(p) if !self.stopping => Some(Instant::now() + p),
                    _ => None,
                };
                let _ = reply.send(view);
            }
        }
    }

    /// Fires the failure injector (the paper's monitor "emits commands to
    /// the receivers"): each victim is told `INJECT_FAILURE`; its connection
    /// drop then repairs the topology as a failure.
    fn inject(&mut self) -> Vec<Output> {
        let victims = self.injector.fire(&self.manager);
        self.next_injection = self.injector.period().map(|p| {
            let now = Instant::now();
            let next = self.next_injection.unwrap_or(now) + p;
            // Fell behind (a busy hub): no burst to catch up.
            if next < now {
                now + p
            } else {
                next
            }
        });
        victims
            .into_iter()
            .map(|v| {
                info!(peer = %v, "injecting a failure");
                Output::Send(v, SupervisorMessage::InjectFailure {})
            })
            .collect()
    }

    /// Delivers outputs; a peer whose queue is full is a slow reader and is
    /// dropped (which may produce more outputs for its neighbours).
    fn deliver(&mut self, outputs: Vec<Output>) {
        let mut work = std::collections::VecDeque::from(outputs);
        while let Some(out) = work.pop_front() {
            match out {
                Output::Send(to, msg) => {
                    let Some(tx) = self.peers.get(&to) else {
                        continue;
                    };
                    match tx.try_send(Outbound::Message(msg)) {
                        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            warn!(peer = %to, "slow reader: send queue full, dropping it");
                            self.peers.remove(&to);
                            work.extend(self.manager.disconnected(to, Instant::now().into_std()));
                        }
                    }
                }
                Output::Disconnect(to, code, reason) => {
                    if let Some(tx) = self.peers.remove(&to) {
                        warn!(peer = %to, ?code, %reason, "cutting peer off");
                        let _ = tx.try_send(Outbound::Close(code, reason));
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Why a connection ended (logged; sent to the peer when it can be).
struct Ended(ErrorCode, String);

impl From<AuthError> for Ended {
    fn from(e: AuthError) -> Self {
        Ended(e.code(), e.to_string())
    }
}

struct Connection {
    shared: Arc<Shared>,
    hub: mpsc::Sender<HubCommand>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(
        self,
        tcp: TcpStream,
        _conn: OwnedSemaphorePermit,
        auth_permit: OwnedSemaphorePermit,
    ) {
        let limits = &self.shared.config.limits;
        let deadline = Duration::from_millis(limits.tls_handshake_timeout_ms);
        let counters = &self.shared.counters;
        let addr = tcp.peer_addr().ok();
        let mut ws = match timeout(deadline, self.accept(tcp)).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!("TLS/WebSocket handshake failed: {e}");
                counters.handshake_refused("tls");
                return;
            }
            Err(_) => {
                debug!("TLS/WebSocket handshake timed out");
                counters.handshake_refused("timeout");
                return;
            }
        };
        let peer = match self.authenticate(&mut ws).await {
            Ok(peer) => {
                counters.handshake_ok();
                peer
            }
            Err(Ended(code, reason)) => {
                counters.handshake_refused(&Counters::reason(code));
                info!(?code, "authentication failed: {reason}");
                close_with_error(&mut ws, code, reason).await;
                return;
            }
        };
        drop(auth_permit);
        let span = info_span!("peer", id = %peer.peer_id, role = %peer.role);
        self.session(ws, peer, addr).instrument(span).await;
    }

    async fn accept(&self, tcp: TcpStream) -> Result<Ws, String> {
        let tls = self
            .shared
            .tls
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio_tungstenite::accept_async_with_config(tls, Some(self.shared.ws_config))
            .await
            .map_err(|e| e.to_string())
    }

    async fn authenticate(&self, ws: &mut Ws) -> Result<miostream_auth::Authenticated, Ended> {
        let mut binding = [0u8; 32];
        ws.get_ref()
            .get_ref()
            .1
            .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, None)
            .map_err(|e| Ended(ErrorCode::Malformed, format!("TLS exporter: {e}")))?;
        let (mut hs, first) = SupervisorHandshake::start(
            self.shared.key.clone(),
            self.shared.config.handshake(),
            binding,
            std::time::Instant::now(),
        );
        send(ws, &first).await?;
        loop {
            let deadline = Instant::from_std(hs.deadline());
            let text = tokio::select! {
                t = recv_text(ws) => t?,
                _ = sleep_until(deadline) => {
                    hs.handle_timeout(std::time::Instant::now() + Duration::from_millis(1))?;
                    continue;
                }
            };
            let msg = PeerMessage::from_json(&text)
                .map_err(|e| Ended(ErrorCode::Malformed, e.to_string()))?;
            let authorized = self.shared.authorized.borrow().clone();
            let step = hs.handle(
                msg,
                std::time::Instant::now(),
                authorized.as_ref(),
                &mut rand::rng(),
            )?;
            match step {
                SupervisorStep::Send(m) => send(ws, &m).await?,
                SupervisorStep::Done(peer, m) => {
                    send(ws, &m).await?;
                    return Ok(peer);
                }
            }
        }
    }

    async fn session(
        mut self,
        mut ws: Ws,
        peer: miostream_auth::Authenticated,
        addr: Option<SocketAddr>,
    ) {
        let config = &self.shared.config;
        let id = peer.peer_id;
        let (tx, mut rx) = mpsc::channel(config.limits.send_queue);
        let (reply_tx, reply_rx) = oneshot::channel();
        let register = HubCommand::Register {
            id,
            addr,
            role: peer.role,
            key: peer.key.fingerprint(),
            tx,
            reply: reply_tx,
        };
        if self.hub.send(register).await.is_err() {
            return close_with_error(&mut ws, ErrorCode::ShuttingDown, "shutting down".into())
                .await;
        }
        match reply_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(code)) => {
                return close_with_error(&mut ws, code, "this peer id is connected already".into())
                    .await
            }
            Err(_) => {
                return close_with_error(&mut ws, ErrorCode::ShuttingDown, "shutting down".into())
                    .await
            }
        }
        let ended = self.serve(&mut ws, id, &mut rx).await;
        let _ = self.hub.send(HubCommand::Gone { id }).await;
        match ended {
            Ok(()) => {
                info!("peer disconnected");
                let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
            }
            Err(Ended(code, reason)) => {
                info!(?code, "peer dropped: {reason}");
                close_with_error(&mut ws, code, reason).await;
            }
        }
    }

    /// The authenticated session: relays messages both ways, pings, and
    /// enforces the liveness timeout and the message rate.
    async fn serve(
        &mut self,
        ws: &mut Ws,
        id: PeerId,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), Ended> {
        let config = &self.shared.config;
        let silence = Duration::from_millis(config.heartbeat.timeout_ms);
        let mut ping = tokio::time::interval(Duration::from_millis(config.heartbeat.interval_ms));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut bucket =
            TokenBucket::new(config.limits.messages_per_sec, config.limits.message_burst);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                frame = ws.next() => {
                    last_heard = Instant::now();
                    if !bucket.take(last_heard) {
                        return Err(Ended(ErrorCode::RateLimited, format!(
                            "more than {} messages per second", config.limits.messages_per_sec)));
                    }
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Err(e)) => return Err(Ended(ErrorCode::Malformed, e.to_string())),
                        Some(Ok(Message::Text(text))) => {
                            let msg = PeerMessage::from_json(&text)
                                .map_err(|e| Ended(ErrorCode::Malformed, e.to_string()))?;
                            debug!(msg = msg.name(), "received");
                            if self.hub.send(HubCommand::Message { from: id, msg }).await.is_err() {
                                return Err(Ended(ErrorCode::ShuttingDown, "shutting down".into()));
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            return Err(Ended(ErrorCode::Malformed, "binary messages are not part of signaling".into()));
                        }
                        Some(Ok(_)) => {} // ping, pong: liveness only
                    }
                }
                out = rx.recv() => match out {
                    Some(Outbound::Message(m)) => send(ws, &m).await?,
                    Some(Outbound::Close(code, reason)) => return Err(Ended(code, reason)),
                    // The hub dropped us (slow reader) or is gone.
                    None => return Err(Ended(ErrorCode::Overloaded, "fell too far behind".into())),
                },
                _ = ping.tick() => {
                    write(ws, Message::Ping(Default::default())).await?;
                }
                _ = sleep_until(last_heard + silence) => {
                    return Err(Ended(ErrorCode::Timeout, format!("silent for {silence:?}")));
                }
                _ = self.stop.changed() => {
                    return Err(Ended(ErrorCode::ShuttingDown, "the supervisor is shutting down".into()));
                }
            }
        }
    }
}

/// Token bucket for the per-connection message rate.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Writes one frame, bounded in time: a peer that stops reading cannot hold
/// its connection task (and memory) forever.
async fn write(ws: &mut Ws, msg: Message) -> Result<(), Ended> {
    match timeout(Duration::from_secs(5), ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Ended(ErrorCode::Malformed, format!("write failed: {e}"))),
        Err(_) => Err(Ended(ErrorCode::Overloaded, "write timed out".into())),
    }
}

async fn send(ws: &mut Ws, msg: &SupervisorMessage) -> Result<(), Ended> {
    write(ws, Message::text(msg.to_json())).await
}

/// Next text message, skipping pings and pongs.
async fn recv_text(ws: &mut Ws) -> Result<String, Ended> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => {
                return Err(Ended(
                    ErrorCode::Malformed,
                    "peer closed the connection".into(),
                ))
            }
            Some(Err(e)) => return Err(Ended(ErrorCode::Malformed, e.to_string())),
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_))) => {
                return Err(Ended(
                    ErrorCode::Malformed,
                    "binary messages are not part of signaling".into(),
                ))
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Sends a fatal `ERROR` and closes, both bounded in time.
async fn close_with_error(ws: &mut Ws, code: ErrorCode, message: String) {
    let msg = SupervisorMessage::Error {
        code,
        message: message.clone(),
        fatal: true,
    };
    let _ = timeout(Duration::from_secs(1), async {
        let _ = ws.send(Message::text(msg.to_json())).await;
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: message.chars().take(100).collect::<String>().into(),
        };
        let _ = ws.close(Some(frame)).await;
        // Finish the closing handshake, discarding what the peer still sends:
        // closing a socket with unread input makes the kernel reset it, and
        // the reset would destroy our ERROR before the peer reads it.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
