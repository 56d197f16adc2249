//! `--serve HOST:PORT`: the live stream over HTTP/1.1 (hyper) for local
//! players. `GET /` is a browser player page (Media Source Extensions, see
//! `player.html`); `GET /stream.webm` is the raw live WebM for mpv, VLC,
//! ffplay or the page, typed with the stream's codecs; anything else is 404.
//!
//! Every stream client gets the init segment, the clusters since the latest
//! video keyframe cluster, then the live clusters — only whole clusters, as
//! the receiver's reassembler yields them, so a hole never tears one.
//! Clusters are shared (`Bytes`) through one fixed ring; a client that falls
//! behind it skips ahead to the next keyframe cluster, and one that stops
//! reading is dropped after a write timeout. A new init segment (a restarted
//! broadcast) ends every stream response; players reconnect and start
//! cleanly. Stream clients and connections are capped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use miostream_media::{live_media_type, Reassembled};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info};

use crate::MediaIoError;

/// The browser player served at `/`.
const PLAYER_PAGE: &str = include_str!("player.html");

/// The path of the raw live stream.
pub const STREAM_PATH: &str = "/stream.webm";

/// Limits of a [`LiveServer`].
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Clusters in the shared live ring (default 64, about a minute).
    pub ring: usize,
    /// Stream clients served at once; more get 503 (default 64).
    pub max_clients: usize,
    /// Open connections (pages, streams, idle); beyond it a new one is
    /// closed at once (default 256).
    pub max_connections: usize,
    /// A client that accepts no bytes for this long is dropped (default 10 s).
    pub write_timeout: Duration,
    /// A connection that has not sent its request head within this long is
    /// closed (default 10 s).
    pub request_timeout: Duration,
    /// Bytes kept since the latest keyframe cluster for new clients
    /// (default 32 MiB); beyond it, new clients wait for the next keyframe.
    pub max_backlog: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            ring: 64,
            max_clients: 64,
            max_connections: 256,
            write_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_backlog: 32 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
enum Live {
    Init,
    Cluster {
        generation: u64,
        keyframe: bool,
        bytes: Bytes,
    },
}

#[derive(Debug)]
struct Shared {
    /// The live ring; `None` once the stream ended (clients then drain and
    /// close: nothing else holds a sender).
    live: Option<broadcast::Sender<Live>>,
    generation: u64,
    init: Option<Bytes>,
    /// Clusters since the latest keyframe cluster.
    backlog: Vec<Bytes>,
    backlog_bytes: usize,
    /// The stream info's media type, and what is served (with codecs).
    announced: String,
    media_type: String,
}

/// What every connection task shares.
#[derive(Debug)]
struct Context {
    shared: Mutex<Shared>,
    /// The generation of the current init segment (0: none yet), for
    /// clients waiting for one.
    inits: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
    clients: watch::Sender<usize>,
    slots: Arc<Semaphore>,
}

/// The HTTP endpoint. Feed it with [`LiveServer::publish`]; stop it with
/// [`LiveServer::shutdown`].
#[derive(Debug)]
pub struct LiveServer {
    addr: SocketAddr,
    ctx: Arc<Context>,
    stop: watch::Sender<bool>,
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
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Context {
            shared: Mutex::new(Shared {
                live: Some(live),
                generation: 0,
                init: None,
                backlog: Vec::new(),
                backlog_bytes: 0,
                announced: "video/webm".into(),
                media_type: "video/webm".into(),
            }),
            inits: watch::channel(0).0,
            stop: stop_rx,
            clients: watch::channel(0).0,
            slots: Arc::new(Semaphore::new(config.max_clients)),
        });
        let accept = tokio::spawn(accept_loop(listener, ctx.clone(), config));
        info!("serving the stream on http://{local}/ (raw WebM at {STREAM_PATH})");
        Ok(Self {
            addr: local,
            ctx,
            stop,
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
        self.ctx.clients.subscribe()
    }

    /// The stream's media type from its stream info (`video/webm`, maybe
    /// with codecs). Served as is when it names codecs; otherwise the
    /// codecs are read from the init segment.
    pub fn set_media_type(&self, announced: &str) {
        let Ok(mut s) = self.ctx.shared.lock() else {
            return;
        };
        s.announced = announced.to_owned();
        s.media_type = live_media_type(announced, s.init.as_deref());
    }

    /// What `/stream.webm` is served as now.
    pub fn media_type(&self) -> String {
        self.ctx
            .shared
            .lock()
            .map(|s| s.media_type.clone())
            .unwrap_or_default()
    }

    /// Hands the players a reassembled piece of the stream.
    pub fn publish(&self, item: &Reassembled) {
        let Ok(mut s) = self.ctx.shared.lock() else {
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
                s.media_type = live_media_type(&s.announced, Some(&bytes));
                s.init = Some(bytes);
                s.backlog.clear();
                s.backlog_bytes = 0;
                let _ = live.send(Live::Init);
                self.ctx.inits.send_replace(s.generation);
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

    /// A new stream follows (the broadcaster restarted): every stream
    /// response ends now, the backlog is dropped, and players that come
    /// (back) wait for the new stream's init segment.
    pub fn reset(&self) {
        let Ok(mut s) = self.ctx.shared.lock() else {
            return;
        };
        s.generation += 1;
        s.init = None;
        s.backlog.clear();
        s.backlog_bytes = 0;
        if let Some(live) = &s.live {
            let _ = live.send(Live::Init);
        }
        self.ctx.inits.send_replace(0);
    }

    /// Ends the stream: players receive what was published, then the
    /// response ends; the listener stops. Waits up to `grace` for the
    /// players to take their last bytes.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Ok(mut s) = self.ctx.shared.lock() {
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

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, config: ServeConfig) {
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                // Full: the connection is dropped (closed) at once.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    debug!(%peer, "too many connections: closing");
                    continue;
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = connection(stream, ctx, config).await {
                        debug!(%peer, "player left: {e}");
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // Let clients drain what they were sent; the caller bounds the wait.
    while tasks.join_next().await.is_some() {}
}

/// One connection, one request (no keep-alive: a live response never ends
/// on its own, and a page load is two requests at most).
async fn connection(
    stream: TcpStream,
    ctx: Arc<Context>,
    config: ServeConfig,
) -> Result<(), hyper::Error> {
    let _ = stream.set_nodelay(true);
    let mut io = tokio_io_timeout::TimeoutStream::new(stream);
    io.set_write_timeout(Some(config.write_timeout));
    let io = TokioIo::new(Box::pin(io));
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(respond(req, &ctx).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.request_timeout)
        .keep_alive(false)
        .serve_connection(io, service)
        .await
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn empty() -> Body {
    Empty::new().boxed_unsync()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Routes a request: `/` the page, [`STREAM_PATH`] the stream, else 404.
async fn respond(req: Request<Incoming>, ctx: &Context) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = match req.uri().path() {
        "/" => {
            let mut r = Response::new(if head {
                empty()
            } else {
                Full::new(Bytes::from_static(PLAYER_PAGE.as_bytes())).boxed_unsync()
            });
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                "content-security-policy",
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; media-src 'self' blob:",
                ),
            );
            r
        }
        STREAM_PATH => stream(ctx, head).await,
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: the stream is at / and /stream.webm\n",
        ),
    };
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The live stream: waits for the first init segment, then init, backlog
/// and live clusters until the stream ends or changes.
async fn stream(ctx: &Context, head: bool) -> Response<Body> {
    let typed = |body, media_type: &str| {
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type)
                .unwrap_or_else(|_| HeaderValue::from_static("video/webm")),
        );
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        r
    };
    if head {
        let media_type = ctx
            .shared
            .lock()
            .map(|s| s.media_type.clone())
            .unwrap_or_default();
        return typed(empty(), &media_type);
    }
    let Ok(slot) = ctx.slots.clone().try_acquire_owned() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "too many players\n");
    };
    // Before the stream's first init segment, a player waits (its codecs
    // are not known yet).
    let mut inits = ctx.inits.subscribe();
    let mut stop = ctx.stop.clone();
    tokio::select! {
        r = inits.wait_for(|g| *g > 0) => if r.is_err() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the stream has ended\n");
        },
        _ = stop.wait_for(|s| *s) => {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the stream has ended\n");
        }
    }
    let feed = {
        let Ok(s) = ctx.shared.lock() else {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "server state poisoned\n");
        };
        let (Some(live), Some(init)) = (&s.live, &s.init) else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the stream has ended\n");
        };
        let mut queue = VecDeque::with_capacity(s.backlog.len() + 1);
        queue.push_back(init.clone());
        queue.extend(s.backlog.iter().cloned());
        let feed = Feed {
            // Playing: the next cluster may be any; otherwise wait for a keyframe.
            playing: !s.backlog.is_empty(),
            queue,
            rx: live.subscribe(),
            generation: s.generation,
            _slot: slot,
            _counted: Counted::new(ctx.clients.clone()),
        };
        (feed, s.media_type.clone())
    };
    let (feed, media_type) = feed;
    let body = StreamBody::new(futures_util::stream::unfold(feed, |mut f| async move {
        let bytes = f.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), f))
    }));
    typed(body.boxed_unsync(), &media_type)
}

/// One player's view of the live ring.
struct Feed {
    /// Init and backlog, sent first.
    queue: VecDeque<Bytes>,
    rx: broadcast::Receiver<Live>,
    generation: u64,
    playing: bool,
    _slot: OwnedSemaphorePermit,
    _counted: Counted,
}

impl Feed {
    /// The next bytes to send; `None` ends the response.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.queue.pop_front() {
            return Some(b);
        }
        loop {
            match self.rx.recv().await {
                // Another stream: the player must start over.
                Ok(Live::Init) => return None,
                Ok(Live::Cluster {
                    generation,
                    keyframe,
                    bytes,
                }) => {
                    if generation != self.generation || (!self.playing && !keyframe) {
                        continue;
                    }
                    self.playing = true;
                    return Some(bytes);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!("player {n} clusters behind: skipping to the next keyframe");
                    self.playing = false;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Counts a player in [`LiveServer::clients`] while it is subscribed to
/// the live stream (from the moment it gets every new cluster).
struct Counted(watch::Sender<usize>);

impl Counted {
    fn new(count: watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
