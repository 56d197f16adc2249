//! `--serve HOST:PORT`: the live stream over HTTP for local players (mpv,
//! VLC, ffplay, a browser `<video>`). Each new client gets the init segment,
//! then the chunks since the latest cluster that starts with a keyframe,
//! then the live stream — so every client starts cleanly. A client that
//! falls behind the bounded live queue is disconnected (it can reconnect),
//! never buffered without bound.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use miostream_protocol::{ChunkFlags, ChunkHeader, ChunkKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tracing::{debug, info};

/// Live chunks queued per client before it counts as too slow.
const LIVE_QUEUE: usize = 512;

#[derive(Default)]
struct State {
    init: Vec<u8>,
    /// Chunks since the latest keyframe cluster start: (seq, payload).
    gop: Vec<(u64, Bytes)>,
}

/// The HTTP endpoint: feed it every delivered chunk.
pub struct Server {
    state: Arc<Mutex<State>>,
    live: broadcast::Sender<(u64, bool, Bytes)>,
    addr: SocketAddr,
}

impl Server {
    /// Binds `addr` and starts accepting players.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        tokio::spawn(accept(listener, state.clone(), live.clone()));
        info!("serving the stream on http://{addr}/");
        Ok(Self { state, live, addr })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A chunk was delivered, in order.
    pub fn deliver(&self, header: &ChunkHeader, payload: Bytes) {
        let Ok(mut s) = self.state.lock() else { return };
        match header.kind {
            ChunkKind::Init => {
                if header.flags.contains(ChunkFlags::CLUSTER_START) {
                    s.init.clear();
                    s.gop.clear();
                }
                s.init.extend_from_slice(&payload);
            }
            ChunkKind::Media => {
                if header
                    .flags
                    .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME))
                {
                    s.gop.clear();
                }
                // Clients join at a keyframe: nothing before the first one.
                if !s.gop.is_empty() || header.flags.contains(ChunkFlags::KEYFRAME) {
                    s.gop.push((header.seq, payload.clone()));
                }
                let keyframe_start = header
                    .flags
                    .contains(ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME));
                let _ = self.live.send((header.seq, keyframe_start, payload));
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    live: broadcast::Sender<(u64, bool, Bytes)>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (state, rx) = (state.clone(), live.subscribe());
        tokio::spawn(async move {
            if let Err(e) = client(stream, state, rx).await {
                debug!(%peer, "player left: {e}");
            }
        });
    }
}

async fn client(
    mut stream: TcpStream,
    state: Arc<Mutex<State>>,
    mut live: broadcast::Receiver<(u64, bool, Bytes)>,
) -> std::io::Result<()> {
    // Read the request head (bounded); any GET gets the stream.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"GET ") && !head.starts_with(b"HEAD ") {
        stream
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let (init, gop) = {
        let s = state
            .lock()
            .map_err(|_| std::io::Error::other("state poisoned"))?;
        (s.init.clone(), s.gop.clone())
    };
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: video/webm\r\nCache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n")
        .await?;
    if head.starts_with(b"HEAD ") {
        return Ok(());
    }
    stream.write_all(&init).await?;
    let mut last = None;
    for (seq, payload) in &gop {
        stream.write_all(payload).await?;
        last = Some(*seq);
    }
    loop {
        match live.recv().await {
            Ok((seq, keyframe_start, payload)) => {
                if last.is_some_and(|l| seq <= l) {
                    continue;
                }
                if last.is_none() && !keyframe_start {
                    // Joined before any keyframe: start at the next one.
                    continue;
                }
                stream.write_all(&payload).await?;
                last = Some(seq);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Err(std::io::Error::other(format!(
                    "too slow: {n} chunks behind"
                )));
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
