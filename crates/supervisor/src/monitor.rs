//! The monitor (paper §3.1): an HTTPS dashboard for operators showing each
//! stream's live overlay and its receivers' QoS, with controls that inject
//! failures into the receivers.
//!
//! It is a second listener of the supervisor, with the same TLS
//! certificate. Every request must carry the token of `DIR/monitor.token`
//! (`Authorization: Bearer TOKEN`, or the cookie `/login?token=TOKEN` sets).
//! [`http`] is the pure routing (served by hyper through
//! `miostream_cli::http`, with its limits); [`api`] the JSON shapes and the
//! injector; [`metrics`] the Prometheus scrape. The data comes from the hub,
//! which owns the [`Manager`](crate::manager::Manager). Failure injection
//! is refused (403) unless `[monitor] lab_controls = true`.

pub mod api;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use miostream_cli::http::{HttpRequest, HttpResponse};
use miostream_cli::metrics::Endpoint;
use rand::Rng as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use self::api::{InjectRequest, Injection, MonitorState};
use self::http::{Action, Context, Pages, Response};
use self::metrics::{Counters, HubFigures};
use crate::state::MonitorToken;

/// The dashboard and login pages (self-contained: inline script and style).
pub const PAGES: Pages = Pages {
    dashboard: include_str!("monitor/dashboard.html"),
    login: include_str!("monitor/login.html"),
};

/// Time allowed for the hub to answer.
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// What the monitor asks the hub.
#[derive(Debug)]
pub(crate) enum MonitorQuery {
    /// The state for `GET /api/state`.
    State(oneshot::Sender<MonitorState>),
    /// The figures for `GET /metrics`.
    Metrics(oneshot::Sender<HubFigures>),
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
    pub(crate) lab_controls: bool,
}

/// What the monitor's request handlers share.
struct Shared {
    token: MonitorToken,
    hub: mpsc::Sender<MonitorQuery>,
    counters: Counters,
    lab_controls: bool,
}

impl Monitor {
    /// Serves until `stop` turns true; `hub` answers queries.
    pub(crate) async fn run(
        self,
        hub: mpsc::Sender<MonitorQuery>,
        counters: Counters,
        mut stop: watch::Receiver<bool>,
    ) {
        let Monitor {
            listener,
            tls,
            token,
            max_connections,
            tls_timeout,
            lab_controls,
        } = self;
        let shared = Arc::new(Shared {
            token,
            hub,
            counters,
            lab_controls,
        });
        let upgrade = move |tcp: tokio::net::TcpStream, addr: SocketAddr| {
            let tls = tls.clone();
            async move {
                match timeout(tls_timeout, tls.accept(tcp)).await {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        debug!(%addr, "monitor: TLS handshake failed: {e}");
                        None
                    }
                    Err(_) => {
                        debug!(%addr, "monitor: TLS handshake timed out");
                        None
                    }
                }
            }
        };
        let handler = move |req: HttpRequest, addr: SocketAddr| {
            let shared = shared.clone();
            async move { respond(&req, addr, &shared).await }
        };
        miostream_cli::http::serve(
            listener,
            http::limits(max_connections),
            upgrade,
            handler,
            async move {
                let _ = stop.changed().await;
            },
        )
        .await;
    }
}

/// Answers one monitor request.
async fn respond(req: &HttpRequest, addr: SocketAddr, shared: &Shared) -> HttpResponse {
    // The path only: a /login query holds the token.
    debug!(%addr, method = %req.method(), path = %req.uri().path(), "monitor request");
    let nonce = nonce();
    let cx = Context {
        token: &shared.token,
        pages: &PAGES,
        nonce: &nonce,
        lab_controls: shared.lab_controls,
    };
    let hub = &shared.hub;
    let response = match http::route(req, &cx) {
        Action::Respond(r) => r,
        Action::State => match ask(hub, MonitorQuery::State).await {
            Some(state) => Response::json(200, to_json(&state)),
            None => Response::text(503, "shutting down"),
        },
        Action::Ready => return ready(hub).await.into_hyper(),
        Action::Metrics => return scrape(hub, &shared.counters).await,
        Action::Inject(r) => {
            info!(%addr, rate = r.rate, distribution = ?r.distribution, seed = ?r.seed, "monitor: failure injection set");
            match ask(hub, |tx| MonitorQuery::Inject(r, tx)).await {
                Some(inj) => Response::json(200, to_json(&inj)),
                None => Response::text(503, "shutting down"),
            }
        }
    };
    response.into_hyper()
}

async fn ready(hub: &mpsc::Sender<MonitorQuery>) -> Response {
    match ask(hub, MonitorQuery::Ping).await {
        Some(()) => Response::text(200, "ready"),
        None => Response::text(503, "not ready"),
    }
}

async fn scrape(hub: &mpsc::Sender<MonitorQuery>, counters: &Counters) -> HttpResponse {
    match ask(hub, MonitorQuery::Metrics).await {
        Some(figures) => miostream_cli::metrics::response(&metrics::scrape(&figures, counters)),
        None => Response::text(503, "shutting down").into_hyper(),
    }
}

/// `[metrics] listen`: plain HTTP, no token, `/metrics`, `/healthz` and
/// `/readyz` only — nothing there is a secret.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    hub: mpsc::Sender<MonitorQuery>,
    counters: Counters,
    mut stop: watch::Receiver<bool>,
) {
    let shared = Arc::new((hub, counters));
    let handler = move |req: HttpRequest, _addr: SocketAddr| {
        let shared = shared.clone();
        async move {
            let (hub, counters) = &*shared;
            match miostream_cli::metrics::route(&req) {
                Endpoint::Metrics => scrape(hub, counters).await,
                Endpoint::Health => Response::text(200, "ok").into_hyper(),
                Endpoint::Ready => ready(hub).await.into_hyper(),
                Endpoint::Refused(r) => r,
            }
        }
    };
    miostream_cli::http::serve(
        listener,
        http::limits(16),
        |tcp, _| async move { Some(tcp) },
        handler,
        async move {
            let _ = stop.changed().await;
        },
    )
    .await;
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
