//! `--serve HOST:PORT`: the live stream over HTTP/1.1 for local players.
//! Every client gets the init segment, the clusters since the latest video
//! keyframe cluster, then the live clusters. Clusters are shared (`Bytes`)
//! through one fixed ring; a client that falls behind it skips ahead to the
//! next keyframe cluster, and one that stops reading is dropped after a
//! write timeout. A new init segment (a restarted broadcast) closes every
//! client, which reconnects and starts cleanly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use miostream_media::Reassembled;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::MediaIoError;

/// Limits of a [`LiveServer`].
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Clusters in the shared live ring (default 64, about a minute).
    pub ring: usize,
    /// Clients served at once; more get 503 (default 64).
    pub max_clients: usize,
    /// A client that accepts no bytes for this long is dropped (default 10 s).
    pub write_timeout: Duration,
    /// Bytes kept since the latest keyframe cluster for new clients
    /// (default 32 MiB); beyond it, new clients wait for the next keyframe.
    pub max_backlog: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            ring: 64,
            max_clients: 64,
            write_timeout: Duration::from_secs(10),
            max_backlog: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
enum Live {
    Init(u64, Bytes),
    Cluster {
        generation: u64,
        keyframe: bool,
        bytes: Bytes,
    },
}

#[derive(Debug, Default)]
struct Shared {
    /// The live ring; `None` once the stream ended (clients then drain and
    /// close: nothing else holds a sender).
    live: Option<broadcast::Sender<Live>>,
    generation: u64,
    init: Option<Bytes>,
    /// Clusters since the latest keyframe cluster.
    backlog: Vec<Bytes>,
    backlog_bytes: usize,
}

/// The HTTP endpoint. Feed it with [`LiveServer::publish`]; stop it with
/// [`LiveServer::shutdown`].
#[derive(Debug)]
pub struct LiveServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    clients: watch::Receiver<usize>,
    accept: tokio::task::JoinHandle<()>,
    max_backlog: usize,
}

impl LiveServer {
    /// Listens on `addr` (port 0: any free port, see [`LiveServer::local_addr`]).
    pub async fn bind(addr: SocketAddr, config: ServeConfig) -> Result<Self, MediaIoError> {
        let bind_err = |source| MediaIoError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let (live, _) = broadcast::channel(config.ring.max(1));
        let shared = Arc::new(Mutex::new(Shared {
            live: Some(live),
            ..Shared::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let (count_tx, clients) = watch::channel(0usize);
        let accept = tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            stop_rx,
            count_tx,
            config,
        ));
        info!("serving the stream on http://{local}/");
        Ok(Self {
            addr: local,
            shared,
            stop,
            clients,
            accept,
            max_backlog: config.max_backlog,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The number of players receiving the live stream, as it changes.
    pub fn clients(&self) -> watch::Receiver<usize> {
        self.clients.clone()
    }

    /// Hands the players a reassembled piece of the stream.
    pub fn publish(&self, item: &Reassembled) {
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        let Some(live) = s.live.clone() else { return };
        // Under the lock: a client snapshots the backlog and subscribes
        // atomically, so it neither misses nor repeats a cluster.
        match item {
            Reassembled::Init(b) => {
                let bytes = Bytes::copy_from_slice(b);
                if s.init.as_ref() == Some(&bytes) {
                    return;
                }
                s.generation += 1;
                s.init = Some(bytes.clone());
                s.backlog.clear();
                s.backlog_bytes = 0;
                let _ = live.send(Live::Init(s.generation, bytes));
            }
            Reassembled::Cluster {
                keyframe, bytes, ..
            } => {
                let bytes = Bytes::copy_from_slice(bytes);
                if *keyframe {
                    s.backlog.clear();
                    s.backlog_bytes = 0;
                }
                if *keyframe || !s.backlog.is_empty() {
                    if s.backlog_bytes + bytes.len() > self.max_backlog {
                        s.backlog.clear();
                        s.backlog_bytes = 0;
                    } else {
                        s.backlog_bytes += bytes.len();
                        s.backlog.push(bytes.clone());
                    }
                }
                let _ = live.send(Live::Cluster {
                    generation: s.generation,
                    keyframe: *keyframe,
                    bytes,
                });
            }
            _ => {}
        }
    }

    /// Ends the stream: players receive what was published, then the
    /// connection closes; the listener stops. Waits up to `grace` for the
    /// players to take their last bytes.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Ok(mut s) = self.shared.lock() {
            s.live = None;
            s.backlog.clear();
        }
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.accept).await.is_err() {
            self.accept.abort();
        }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Mutex<Shared>>,
    mut stop: watch::Receiver<bool>,
    count: watch::Sender<usize>,
    config: ServeConfig,
) {
    let slots = Arc::new(Semaphore::new(config.max_clients));
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let permit = slots.clone().try_acquire_owned();
                let (shared, count) = (shared.clone(), count.clone());
                clients.spawn(async move {
                    let Ok(_permit) = permit else {
                        let _ = busy(stream).await;
                        return;
                    };
                    let result = client(stream, &shared, &count, config.write_timeout).await;
                    if let Err(e) = result {
                        debug!(%peer, "player left: {e}");
                    }
                });
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // Let clients drain what they were sent; the caller bounds the wait.
    while clients.join_next().await.is_some() {}
}

async fn busy(mut stream: TcpStream) -> std::io::Result<()> {
    stream
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
}

async fn write(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "player stopped reading",
        )),
    }
}

/// Counts a player in [`LiveServer::clients`] while it is subscribed to
/// the live stream (from the moment it gets every new cluster).
struct Counted<'a>(&'a watch::Sender<usize>);

impl<'a> Counted<'a> {
    fn new(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn client(
    mut stream: TcpStream,
    shared: &Mutex<Shared>,
    count: &watch::Sender<usize>,
    timeout: Duration,
) -> std::io::Result<()> {
    // The request head, bounded; any GET (any path) gets the stream.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(timeout, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let is_head = head.starts_with(b"HEAD ");
    if !head.starts_with(b"GET ") && !is_head {
        let reply = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        return write(&mut stream, reply, timeout).await;
    }
    // A close-delimited body: no length, no chunking, every player reads it.
    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: video/webm\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n";
    write(&mut stream, reply, timeout).await?;
    if is_head {
        return Ok(());
    }
    let (mut rx, mut generation, init, backlog) = {
        let s = shared
            .lock()
            .map_err(|_| std::io::Error::other("server state poisoned"))?;
        let Some(live) = &s.live else {
            return Ok(()); // the stream has ended
        };
        (
            live.subscribe(),
            s.generation,
            s.init.clone(),
            s.backlog.clone(),
        )
    };
    let _counted = Counted::new(count);
    let mut sent_init = init.is_some();
    if let Some(init) = init {
        write(&mut stream, &init, timeout).await?;
    }
    // Playing: the next cluster may be any; otherwise wait for a keyframe.
    let mut playing = !backlog.is_empty();
    for cluster in backlog {
        write(&mut stream, &cluster, timeout).await?;
    }
    loop {
        match rx.recv().await {
            Ok(Live::Init(g, bytes)) => {
                if sent_init {
                    // Another stream: the player must start over.
                    return Ok(());
                }
                write(&mut stream, &bytes, timeout).await?;
                sent_init = true;
                generation = g;
            }
            Ok(Live::Cluster {
                generation: g,
                keyframe,
                bytes,
            }) => {
                if !sent_init || g != generation {
                    continue;
                }
                if !playing && !keyframe {
                    continue;
                }
                playing = true;
                write(&mut stream, &bytes, timeout).await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!("player {n} clusters behind: skipping to the next keyframe");
                playing = false;
            }
            Err(broadcast::error::RecvError::Closed) => {
                stream.shutdown().await?;
                return Ok(());
            }
        }
    }
}
