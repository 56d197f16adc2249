//! The supervisor client: `wss://` with the trust bundle's CA as the only
//! root, the peer side of the handshake, then typed signaling both ways.
//! Pings from the supervisor are answered as they are read; silence longer
//! than the announced heartbeat timeout is an error.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use miostream_auth::{AuthError, PeerHandshake, PeerStep, CHANNEL_BINDING_LABEL};
use miostream_protocol::signal::ErrorCode;
use miostream_protocol::{ComponentType, PeerId, PeerMessage, SupervisorMessage};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::identity::{Identity, Trust};

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Why talking to the supervisor failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `wss://HOST:PORT`.
    #[error("bad supervisor URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Address.
        addr: String,
        /// OS error.
        source: std::io::Error,
    },
    /// TLS failed (e.g. the certificate is not signed by the trusted CA).
    #[error("TLS with the supervisor failed (is the trust bundle for this supervisor?): {0}")]
    Tls(String),
    /// WebSocket failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The handshake failed.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// The supervisor sent something we cannot parse.
    #[error("bad message from the supervisor: {0}")]
    Protocol(String),
    /// The supervisor sent a fatal error.
    #[error("supervisor closed the session: {message} ({code:?})")]
    Closed {
        /// Its code.
        code: ErrorCode,
        /// Its reason.
        message: String,
    },
    /// The connection ended.
    #[error("connection to the supervisor closed")]
    Disconnected,
    /// No message (not even a ping) within the timeout.
    #[error("supervisor silent for {0:?}")]
    Timeout(Duration),
}

/// A parsed `wss://HOST:PORT[/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorUrl {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for SupervisorUrl {
    type Err = ClientError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ClientError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("wss://")
            .ok_or_else(|| bad("must start with wss:// (plaintext is not supported)"))?;
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| bad("expected [IPv6]:PORT"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| bad("missing :PORT"))?
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = port.parse().map_err(|_| bad("invalid port"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for SupervisorUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "wss://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "wss://{}:{}", self.host, self.port)
        }
    }
}

/// A TLS WebSocket to the supervisor before (or without) authentication:
/// the transport under [`SupervisorClient`], public so tests and tools can
/// speak the protocol step by step.
pub struct SupervisorConnection {
    ws: Ws,
}

impl SupervisorConnection {
    /// Opens TCP, TLS (the trust bundle's CA as the only root) and WebSocket.
    pub async fn open(url: &SupervisorUrl, trust: &Trust) -> Result<Self, ClientError> {
        Ok(Self {
            ws: open(url, trust).await?,
        })
    }

    /// The TLS exporter secret the handshake's answer is bound to.
    pub fn channel_binding(&self) -> Result<[u8; 32], ClientError> {
        let mut binding = [0u8; 32];
        self.ws
            .get_ref()
            .get_ref()
            .1
            .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, None)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(binding)
    }

    /// Sends a message.
    pub async fn send(&mut self, msg: &PeerMessage) -> Result<(), ClientError> {
        send_message(&mut self.ws, msg).await
    }

    /// Sends raw text.
    pub async fn send_raw(&mut self, text: String) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))
    }

    /// Receives the next message, waiting at most `silence`.
    pub async fn recv(&mut self, silence: Duration) -> Result<SupervisorMessage, ClientError> {
        recv_message(&mut self.ws, silence).await
    }
}

/// An authenticated session with the supervisor.
pub struct SupervisorClient {
    ws: Ws,
    peer_id: PeerId,
    silence: Duration,
    local_addr: Option<SocketAddr>,
}

impl fmt::Debug for SupervisorClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorClient")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

fn tls_connector(trust: &Trust) -> Result<TlsConnector, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(trust.ca.clone())
        .map_err(|e| ClientError::Tls(format!("trust bundle CA: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

impl SupervisorClient {
    /// Connects, verifies the supervisor against `trust`, and authenticates
    /// as `role` with a fresh random peer id.
    pub async fn connect(
        url: &SupervisorUrl,
        identity: &Identity,
        trust: &Trust,
        role: ComponentType,
    ) -> Result<Self, ClientError> {
        Self::connect_as(url, identity, trust, role, PeerId::random()).await
    }

    /// As [`connect`](Self::connect), with a chosen peer id.
    pub async fn connect_as(
        url: &SupervisorUrl,
        identity: &Identity,
        trust: &Trust,
        role: ComponentType,
        peer_id: PeerId,
    ) -> Result<Self, ClientError> {
        let step_timeout = Duration::from_secs(10);
        let conn = timeout(step_timeout, SupervisorConnection::open(url, trust))
            .await
            .map_err(|_| ClientError::Timeout(step_timeout))??;
        let binding = conn.channel_binding()?;
        let mut ws = conn.ws;
        let local_addr = ws.get_ref().get_ref().0.local_addr().ok();
        let mut hs = PeerHandshake::new(
            identity.key().clone(),
            peer_id,
            role,
            trust.supervisor_key.clone(),
            binding,
            step_timeout,
            std::time::Instant::now(),
        );
        loop {
            let msg = recv_message(&mut ws, step_timeout).await?;
            let step = hs.handle(msg, std::time::Instant::now())?;
            match step {
                PeerStep::Send(m) => send_message(&mut ws, &m).await?,
                PeerStep::Authenticated {
                    peer_id,
                    heartbeat_timeout,
                    ..
                } => {
                    return Ok(Self {
                        ws,
                        peer_id,
                        silence: heartbeat_timeout,
                        local_addr,
                    })
                }
            }
        }
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The local address of the connection (the interface that routes to the
    /// supervisor: where WebRTC host candidates should bind).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Sends a message.
    pub async fn send(&mut self, msg: &PeerMessage) -> Result<(), ClientError> {
        send_message(&mut self.ws, msg).await
    }

    /// Receives the next message. A fatal `ERROR` becomes [`ClientError::Closed`].
    pub async fn recv(&mut self) -> Result<SupervisorMessage, ClientError> {
        match recv_message(&mut self.ws, self.silence).await? {
            SupervisorMessage::Error {
                code,
                message,
                fatal: true,
            } => Err(ClientError::Closed { code, message }),
            m => Ok(m),
        }
    }

    /// Sends `LIST_STREAMS` and returns the list (other messages in between
    /// are skipped).
    pub async fn list_streams(
        &mut self,
    ) -> Result<Vec<miostream_protocol::signal::StreamInfo>, ClientError> {
        self.send(&PeerMessage::ListStreams {}).await?;
        loop {
            if let SupervisorMessage::StreamList { streams } = self.recv().await? {
                return Ok(streams);
            }
        }
    }

    /// Sends raw text (tests of the supervisor's input validation).
    pub async fn send_raw(&mut self, text: String) -> Result<(), ClientError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))
    }

    /// Receives the next message within `wait` (instead of the heartbeat
    /// timeout); a fatal `ERROR` is returned as a message, not an error.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<SupervisorMessage, ClientError> {
        recv_message(&mut self.ws, wait).await
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

async fn open(url: &SupervisorUrl, trust: &Trust) -> Result<Ws, ClientError> {
    let addr = format!("{}:{}", bracket(&url.host), url.port);
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(url.host.clone()).map_err(|_| ClientError::Url {
        url: url.to_string(),
        reason: "invalid host name",
    })?;
    let tls = tls_connector(trust)?
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8192)
        .max_message_size(Some(miostream_protocol::signal::MAX_SIGNAL_LEN))
        .max_frame_size(Some(miostream_protocol::signal::MAX_SIGNAL_LEN));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.to_string(), tls, Some(config))
        .await
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    Ok(ws)
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

async fn send_message(ws: &mut Ws, msg: &PeerMessage) -> Result<(), ClientError> {
    ws.send(Message::text(msg.to_json()))
        .await
        .map_err(|e| ClientError::WebSocket(e.to_string()))
}

async fn recv_message(ws: &mut Ws, silence: Duration) -> Result<SupervisorMessage, ClientError> {
    loop {
        let frame = timeout(silence, ws.next())
            .await
            .map_err(|_| ClientError::Timeout(silence))?;
        match frame {
            None | Some(Ok(Message::Close(_))) => return Err(ClientError::Disconnected),
            Some(Err(e)) => return Err(ClientError::WebSocket(e.to_string())),
            Some(Ok(Message::Text(text))) => {
                let msg = SupervisorMessage::from_json(&text)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                return Ok(msg);
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(ClientError::Protocol("unexpected binary message".into()))
            }
            Some(Ok(_)) => {} // ping/pong: answered by tungstenite on the next write/flush
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_clear_errors() {
        let u: SupervisorUrl = "wss://10.0.0.1:8443".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 8443));
        let u: SupervisorUrl = "wss://[::1]:9/x".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.to_string(), "wss://[::1]:9");
        for bad in [
            "ws://a:1",
            "wss://a",
            "wss://:1",
            "wss://a:99999",
            "https://a:1",
        ] {
            assert!(bad.parse::<SupervisorUrl>().is_err(), "{bad}");
        }
    }
}
