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
    /// Another supervisor answers on this directory's control socket.
    #[error("another supervisor is running on {}", .0.display())]
    Busy(std::path::PathBuf),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
}

/// Everything connection tasks share.
struct Shared {
    config: SupervisorConfig,
    key: Arc<PrivateKey>,
    tls: TlsAcceptor,
    ws_config: WebSocketConfig,
    dir: StateDir,
    authorized: AuthorizedFile,
    /// Handshake outcomes, for `/metrics`.
    counters: Counters,
}

/// The authorized list as last read, and the file's stamp then: re-read
/// when the stamp changes. `authorize` and `revoke` replace the file
/// atomically, so every edit gets a new inode and the stamp always moves.
struct AuthorizedFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<(Option<FileStamp>, Versioned)>,
}

/// A list and its generation (which increases with each re-read), so the
/// hub, fed by many tasks, never goes back to an older list.
type Versioned = (u64, Arc<Authorized>);

type FileStamp = (u64, u64, SystemTime);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

impl AuthorizedFile {
    fn load(dir: &StateDir) -> Result<Self, StateError> {
        let path = dir.authorized_path();
        let before = stamp(&path);
        let list = Arc::new(dir.load_authorized()?);
        Ok(Self {
            path,
            current: std::sync::Mutex::new((before, (0, list))),
        })
    }

    /// The current list.
    fn get(&self) -> Versioned {
        match self.current.lock() {
            Ok(c) => c.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Re-reads the list if the file changed since it was read (or always,
    /// with `force`); returns the new list when it was re-read. A broken
    /// file keeps the previous list.
    fn refresh(&self, dir: &StateDir, force: bool) -> Option<Versioned> {
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = stamp(&self.path);
        if !force && now == current.0 {
            return None;
        }
        current.0 = now;
        match dir.load_authorized() {
            Ok(list) => {
                info!(keys = list.len(), "authorized peers reloaded");
                current.1 = (current.1 .0 + 1, Arc::new(list));
                Some(current.1.clone())
            }
            Err(e) => {
                warn!("keeping the previous authorized list: {e}");
                None
            }
        }
    }
}

/// A bound, not yet running supervisor.
pub struct Server {
    listener: TcpListener,
    monitor: Option<Monitor>,
    control: Option<tokio::net::UnixListener>,
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
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
        let authorized = AuthorizedFile::load(dir)?;
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
        let control = bind_control(dir)?;
        if let Ok(addr) = listener.local_addr() {
            dir.record_listening(addr)?;
        }
        Ok(Self {
            listener,
            monitor,
            control,
            metrics,
            shared: Arc::new(Shared {
                config,
                key,
                tls,
                ws_config,
                dir: dir.clone(),
                authorized,
                counters: Counters::default(),
            }),
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
            control,
            metrics,
            shared,
        } = self;
        let limits = shared.config.limits.clone();
        let (hub_tx, hub_rx) = mpsc::channel(4096);
        let (monitor_tx, monitor_rx) = mpsc::channel(64);
        let mut hub = Hub::new(&shared.config);
        hub.manager.set_labels(shared.authorized.get().1.labels());
        let hub_task = tokio::spawn(hub.run(hub_rx, monitor_rx).instrument(info_span!("hub")));
        let watchdog = miostream_cli::watchdog_interval()
            .map(|every| tokio::spawn(watchdog(every, monitor_tx.clone())));
        let watcher = tokio::spawn(watch_authorized(shared.clone(), hub_tx.clone()));
        let control_task = control.map(|l| {
            tokio::spawn(
                serve_control(l, shared.clone(), hub_tx.clone()).instrument(info_span!("control")),
            )
        });
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
        if let Some(c) = control_task {
            c.abort();
            let _ = std::fs::remove_file(shared.dir.control_path());
        }
        shared.dir.clear_listening();
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

/// A backstop for hand edits of the authorized list: re-read when the
/// file changes (polled; no inotify dependency). `authorize` and `revoke`
/// tell the running supervisor at once over the control socket, and every
/// handshake checks the file first, so neither waits for this.
async fn watch_authorized(shared: Arc<Shared>, hub: mpsc::Sender<HubCommand>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Some(list) = shared.authorized.refresh(&shared.dir, false) {
            if hub.send(HubCommand::Authorized(list, None)).await.is_err() {
                return;
            }
        }
    }
}

/// Binds `DIR/control.sock` (0600), refusing to if another supervisor
/// answers on it; a path too long for a Unix socket leaves the server
/// without one (the CLI's edits then wait for the next handshake or the
/// file poll).
fn bind_control(dir: &StateDir) -> Result<Option<tokio::net::UnixListener>, ServerError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.control_path();
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(ServerError::Busy(dir.root().to_owned()));
    }
    let _ = std::fs::remove_file(&path);
    match tokio::net::UnixListener::bind(&path) {
        Ok(l) => {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| StateError::Io {
                    path: path.clone(),
                    source,
                },
            )?;
            Ok(Some(l))
        }
        Err(e) => {
            warn!("no control socket at {}: {e}", path.display());
            Ok(None)
        }
    }
}

/// Answers the control socket (see [`crate::control`]), a few clients at once.
async fn serve_control(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    hub: mpsc::Sender<HubCommand>,
) {
    use crate::control::{ControlReply, ControlRequest, MAX_REQUEST, TIMEOUT};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let slots = Arc::new(Semaphore::new(4));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropping closes it: at most 4 at once
        };
        let (shared, hub) = (shared.clone(), hub.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64));
            let request = match timeout(TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => ControlRequest::parse(&line),
                _ => return,
            };
            let reply = match request {
                None => ControlReply::Error {
                    message: format!("unknown request {:?}", line.trim()),
                },
                Some(ControlRequest::Reload) => {
                    let list = shared
                        .authorized
                        .refresh(&shared.dir, true)
                        .unwrap_or_else(|| shared.authorized.get());
                    let keys = list.1.len();
                    let (tx, rx) = oneshot::channel();
                    if hub
                        .send(HubCommand::Authorized(list, Some(tx)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match timeout(TIMEOUT, rx).await {
                        Ok(Ok(())) => ControlReply::Reloaded { keys },
                        _ => return,
                    }
                }
                Some(ControlRequest::Peers) => {
                    let (tx, rx) = oneshot::channel();
                    if hub.send(HubCommand::Presence(tx)).await.is_err() {
                        return;
                    }
                    match timeout(TIMEOUT, rx).await {
                        Ok(Ok(reply)) => reply,
                        _ => return,
                    }
                }
            };
            let Ok(mut text) = serde_json::to_string(&reply) else {
                return;
            };
            text.push('\n');
            let _ = timeout(TIMEOUT, write.write_all(text.as_bytes())).await;
        });
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
    /// The authorized list changed; answer once it is applied.
    Authorized(Versioned, Option<oneshot::Sender<()>>),
    /// The control socket's `peers`.
    Presence(oneshot::Sender<crate::control::ControlReply>),
    /// The server is stopping: forget peers silently from now on.
    Shutdown,
}

/// Owns the manager and the outbound queue of every registered peer.
struct Hub {
    manager: Manager,
    peers: HashMap<PeerId, mpsc::Sender<Outbound>>,
    /// The key of every registered peer, and when each key was last
    /// connected (Unix seconds), for `peers`.
    keys: HashMap<PeerId, miostream_auth::KeyFingerprint>,
    last_seen: HashMap<miostream_auth::KeyFingerprint, u64>,
    started: u64,
    /// The generation of the authorized list applied last.
    authorized_generation: u64,
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
            keys: HashMap::new(),
            last_seen: HashMap::new(),
            started: crate::state::unix_now(),
            authorized_generation: 0,
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
                        self.keys.insert(id, key);
                        self.last_seen.insert(key, crate::state::unix_now());
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
                    self.forget(id);
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
                HubCommand::Authorized((generation, list), applied) => {
                    // Several tasks re-read the list; an older one arriving
                    // late is already superseded.
                    if generation > self.authorized_generation {
                        self.authorized_generation = generation;
                        self.manager.set_labels(list.labels());
                        let outputs = self
                            .manager
                            .reauthorize(list.as_ref(), Instant::now().into_std());
                        // Cut-offs are queued to their connections before
                        // the caller hears back.
                        self.deliver(outputs);
                    }
                    if let Some(applied) = applied {
                        let _ = applied.send(());
                    }
                    Vec::new()
                }
                HubCommand::Presence(reply) => {
                    let _ = reply.send(self.presence());
                    Vec::new()
                }
            };
            self.deliver(outputs);
        }
    }

    /// Drops a peer's queue and records when its key was last seen.
    fn forget(&mut self, id: PeerId) {
        self.peers.remove(&id);
        if let Some(key) = self.keys.remove(&id) {
            self.last_seen.insert(key, crate::state::unix_now());
        }
    }

    /// Every key seen since the start: connections now, last seen.
    fn presence(&self) -> crate::control::ControlReply {
        let now = crate::state::unix_now();
        let mut connected: HashMap<miostream_auth::KeyFingerprint, u32> = HashMap::new();
        for key in self.keys.values() {
            *connected.entry(*key).or_default() += 1;
        }
        let peers = self
            .last_seen
            .iter()
            .map(|(key, seen)| {
                let n = connected.get(key).copied().unwrap_or(0);
                crate::control::Presence {
                    fingerprint: key.to_string(),
                    connected: n,
                    last_seen: if n > 0 { now } else { *seen },
                }
            })
            .collect();
        crate::control::ControlReply::Peers {
            peers,
            since: self.started,
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
                            self.forget(to);
                            work.extend(self.manager.disconnected(to, Instant::now().into_std()));
                        }
                    }
                }
                Output::Disconnect(to, code, reason) => {
                    let tx = self.peers.get(&to).cloned();
                    self.forget(to);
                    if let Some(tx) = tx {
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
            Ok(Some(peer)) => {
                counters.handshake_ok();
                peer
            }
            Ok(None) => {
                // Enrolled: the peer connects again to authenticate.
                let _ = timeout(Duration::from_secs(1), async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return;
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

    /// Runs the handshake; `Ok(None)` when the peer enrolled instead.
    async fn authenticate(
        &self,
        ws: &mut Ws,
    ) -> Result<Option<miostream_auth::Authenticated>, Ended> {
        // An `authorize` or `revoke` done before this attempt counts now.
        if let Some(list) = self.shared.authorized.refresh(&self.shared.dir, false) {
            let _ = self.hub.send(HubCommand::Authorized(list, None)).await;
        }
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
        let mut first_reply = true;
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
            if let PeerMessage::EnrollRequest {
                protocol_version,
                secret,
                public_key,
                component_type,
            } = msg
            {
                if !first_reply {
                    return Err(Ended(
                        ErrorCode::OutOfOrder,
                        "ENROLL_REQUEST only answers COLLECT_PEER_INFO_REQUEST".into(),
                    ));
                }
                return self
                    .enroll(ws, protocol_version, secret, public_key, component_type)
                    .await
                    .map(|()| None);
            }
            first_reply = false;
            let (_, authorized) = self.shared.authorized.get();
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
                    return Ok(Some(peer));
                }
            }
        }
    }

    /// One enrollment attempt (the connection's only one): spends a use of
    /// the invite and authorizes the key, or refuses with the reason.
    /// A bad attempt costs a SHA-256 and a read of `DIR/invites.toml`.
    async fn enroll(
        &self,
        ws: &mut Ws,
        protocol_version: u8,
        secret: miostream_protocol::signal::InviteSecret,
        public_key: String,
        role: ComponentType,
    ) -> Result<(), Ended> {
        use crate::invites::InviteRefusal;
        if protocol_version != miostream_protocol::PROTOCOL_VERSION {
            return Err(AuthError::UnsupportedVersion {
                ours: miostream_protocol::PROTOCOL_VERSION,
                theirs: protocol_version,
            }
            .into());
        }
        let refused = |r: InviteRefusal| Ended(ErrorCode::InviteRefused, r.to_string());
        if secret.0.len() != miostream_protocol::signal::INVITE_SECRET_LEN {
            return Err(refused(InviteRefusal::Unknown));
        }
        let key = miostream_auth::PublicKey::from_pem(
            &public_key,
            self.shared.config.handshake().min_peer_key_bits,
        )
        .map_err(|e| Ended(ErrorCode::Malformed, format!("bad key: {e}")))?;
        let dir = self.shared.dir.clone();
        let redeemed = tokio::task::spawn_blocking(move || {
            dir.redeem_invite(&secret, role, &key, crate::state::unix_now())
        })
        .await
        .map_err(|e| Ended(ErrorCode::Overloaded, format!("enrollment failed: {e}")))?;
        let (fp, invite) = match redeemed {
            Ok(Ok(done)) => done,
            Ok(Err(refusal)) => return Err(refused(refusal)),
            Err(e) => {
                warn!("enrollment failed: {e}");
                return Err(Ended(
                    ErrorCode::Overloaded,
                    "the supervisor could not record the enrollment".into(),
                ));
            }
        };
        info!(key = %fp, %role, invite = %invite.id, uses_left = invite.uses, "peer enrolled");
        if let Some(list) = self.shared.authorized.refresh(&self.shared.dir, true) {
            let _ = self.hub.send(HubCommand::Authorized(list, None)).await;
        }
        send(
            ws,
            &SupervisorMessage::Enrolled {
                fingerprint: fp.to_string(),
                role,
                label: invite.label,
            },
        )
        .await
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
