//! The monitor (paper §3.1): an HTTPS dashboard for operators showing each
//! stream's live overlay and its receivers' QoS, with controls that inject
//! failures into the receivers.
//!
//! It is a second listener of the supervisor, with the same TLS
//! certificate. Every request must carry the token of `DIR/monitor.token`
//! (`Authorization: Bearer TOKEN`, or the cookie `/login?token=TOKEN` sets).
//! [`http`] is a small bounded HTTP/1.1 subset with pure routing; [`api`]
//! the JSON shapes and the injector; the data comes from the hub, which owns
//! the [`Manager`](crate::manager::Manager).

pub mod api;
pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::api::{InjectRequest, Injection, MonitorState};
use self::http::{Action, HttpError, Pages, Response};
use crate::state::MonitorToken;

/// The dashboard and login pages (self-contained: inline script and style).
pub const PAGES: Pages = Pages {
    dashboard: include_str!("monitor/dashboard.html"),
    login: include_str!("monitor/login.html"),
};

/// Time allowed to read a request (head and body).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to write a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the hub to answer.
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// What the monitor asks the hub.
#[derive(Debug)]
pub(crate) enum MonitorQuery {
    /// The state for `GET /api/state`.
    State(oneshot::Sender<MonitorState>),
    /// Apply an injection request; answer with the injector's state.
    Inject(InjectRequest, oneshot::Sender<Injection>),
    /// Answer at once: the hub is alive (readiness, systemd's watchdog).
    Ping(oneshot::Sender<()>),
}

/// The monitor's listener and what its connections share.
pub(crate) struct Monitor {
    pub(crate) listener: TcpListener,
    pub(crate) tls: TlsAcceptor,
    pub(crate) token: MonitorToken,
    pub(crate) max_connections: usize,
    pub(crate) tls_timeout: Duration,
}

impl Monitor {
    /// Serves until `stop` turns true; `hub` answers queries.
    pub(crate) async fn run(
        self,
        hub: mpsc::Sender<MonitorQuery>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Monitor {
            listener,
            tls,
            token,
            max_connections,
            tls_timeout,
        } = self;
        let shared = Arc::new((tls, token, hub, tls_timeout));
        let permits = Arc::new(Semaphore::new(max_connections));
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let (tcp, addr) = tokio::select! {
                _ = stop.changed() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("monitor: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                debug!(%addr, "monitor: connection refused: at the limit");
                continue;
            };
            let shared = shared.clone();
            tasks.spawn(async move {
                let (tls, token, hub, tls_timeout) = &*shared;
                connection(tcp, addr, tls, token, hub, *tls_timeout, permit).await;
            });
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: &TlsAcceptor,
    token: &MonitorToken,
    hub: &mpsc::Sender<MonitorQuery>,
    tls_timeout: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let mut stream = match timeout(tls_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%addr, "monitor: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%addr, "monitor: TLS handshake timed out");
            return;
        }
    };
    let response = match timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Response::text(408, "request timeout"),
        Ok(Err(ReadError::Http(e))) => e.response(),
        Ok(Err(ReadError::Closed)) => return,
        Ok(Ok((req, body))) => {
            // The path only: a /login query holds the token.
            debug!(%addr, method = %req.method, path = %req.path, "monitor request");
            let nonce = nonce();
            match http::route(&req, &body, token, &PAGES, &nonce) {
                Action::Respond(r) => r,
                Action::State => match ask(hub, MonitorQuery::State).await {
                    Some(state) => Response::json(200, to_json(&state)),
                    None => Response::text(503, "shutting down"),
                },
                Action::Ready => match ask(hub, MonitorQuery::Ping).await {
                    Some(()) => Response::text(200, "ready"),
                    None => Response::text(503, "not ready"),
                },
                Action::Inject(r) => {
                    info!(%addr, rate = r.rate, distribution = ?r.distribution, seed = ?r.seed, "monitor: failure injection set");
                    match ask(hub, |tx| MonitorQuery::Inject(r, tx)).await {
                        Some(inj) => Response::json(200, to_json(&inj)),
                        None => Response::text(503, "shutting down"),
                    }
                }
            }
        }
    };
    let _ = timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

enum ReadError {
    Http(HttpError),
    /// The client went away (or sent nothing).
    Closed,
}

/// Reads one request: the head (bounded), then its body (bounded).
async fn read_request<S: AsyncReadExt + Unpin>(
    stream: &mut S,
) -> Result<(http::Request, Vec<u8>), ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(n) = http::head_len(&buf) {
            break n;
        }
        if buf.len() >= http::MAX_HEAD {
            return Err(ReadError::Http(HttpError::HeadTooLarge));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Http(HttpError::Malformed)
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let req = http::parse_head(&buf[..head_end]).map_err(ReadError::Http)?;
    let mut body = buf.split_off(head_end);
    if body.len() > req.content_length {
        // A second request pipelined behind this one: not served.
        body.truncate(req.content_length);
    }
    while body.len() < req.content_length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Http(HttpError::Malformed));
        }
        let want = req.content_length - body.len();
        body.extend_from_slice(&chunk[..n.min(want)]);
    }
    Ok((req, body))
}

async fn ask<T>(
    hub: &mpsc::Sender<MonitorQuery>,
    query: impl FnOnce(oneshot::Sender<T>) -> MonitorQuery,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    hub.send(query(tx)).await.ok()?;
    timeout(HUB_TIMEOUT, rx).await.ok()?.ok()
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
}

/// A fresh CSP nonce (128 bits, hex).
fn nonce() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_heads_and_bodies_within_bounds() {
        let text = b"POST /api/inject HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdEXTRA";
        let (req, body) = match read_request(&mut &text[..]).await {
            Ok(r) => r,
            Err(_) => panic!("not read"),
        };
        assert_eq!(req.path, "/api/inject");
        assert_eq!(body, b"abcd");
        let big = vec![b'a'; http::MAX_HEAD + 10];
        assert!(matches!(
            read_request(&mut &big[..]).await,
            Err(ReadError::Http(HttpError::HeadTooLarge))
        ));
        assert!(matches!(
            read_request(&mut &b""[..]).await,
            Err(ReadError::Closed)
        ));
        assert!(matches!(
            read_request(&mut &b"GET / HTTP/1.1\r\n"[..]).await,
            Err(ReadError::Http(HttpError::Malformed))
        ));
        let short = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        assert!(matches!(
            read_request(&mut &short[..]).await,
            Err(ReadError::Http(HttpError::Malformed))
        ));
    }

    #[test]
    fn pages_have_their_placeholders() {
        assert!(PAGES.dashboard.contains("nonce=\"{{NONCE}}\""));
        assert!(PAGES.login.contains("{{MESSAGE}}"));
        assert!(!PAGES.dashboard.contains("innerHTML"));
        // Self-contained: nothing loaded from elsewhere (the one link is an
        // empty inline icon, so browsers do not ask for /favicon.ico).
        for page in [PAGES.dashboard, PAGES.login] {
            assert!(!page.contains("src="));
            assert_eq!(
                page.matches("<link").count(),
                page.matches(r#"<link rel="icon" href="data:,">"#).count()
            );
        }
        assert_ne!(nonce(), nonce());
    }
}
