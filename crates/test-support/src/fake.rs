//! A fake supervisor for peers' tests: the real TLS set-up (a state
//! directory's CA, certificate and RSA key, the supervisor's rustls
//! configuration) on 127.0.0.1 with an OS port, but the test writes every
//! message — or stalls, or sends garbage — itself.

use std::sync::Arc;

use miostream_auth::PrivateKey;
use miostream_peer::{SupervisorUrl, Trust};
use miostream_supervisor::StateDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;

/// A fake supervisor's WebSocket.
pub type FakeWs = WebSocketStream<TlsStream<TcpStream>>;

/// A listener with the supervisor's TLS identity and nothing behind it.
pub struct FakeSupervisor {
    /// Where it listens.
    pub url: SupervisorUrl,
    /// The trust bundle that pins it.
    pub trust: Trust,
    /// Its RSA key (the one in the trust bundle).
    pub key: Arc<PrivateKey>,
    listener: TcpListener,
    tls: TlsAcceptor,
    _dir: tempfile::TempDir,
}

impl FakeSupervisor {
    /// Creates the identity (as `miostream-supervisor init` does) and binds.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let listen = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        state.init(listen, &[], 2048).unwrap();
        let (chain, key) = state.load_tls().unwrap();
        let tls =
            TlsAcceptor::from(miostream_supervisor::tls::server_config(&chain, &key).unwrap());
        let listener = TcpListener::bind(listen).await.unwrap();
        Self {
            url: format!("wss://{}", listener.local_addr().unwrap())
                .parse()
                .unwrap(),
            trust: Trust::load(&state.trust_dir()).unwrap(),
            key: Arc::new(state.load_key().unwrap()),
            listener,
            tls,
            _dir: dir,
        }
    }

    /// The next TCP connection, before TLS. Without Nagle's delay, as the
    /// real supervisor: a small message held back for an ACK would take
    /// real time that a paused test clock does not see.
    pub async fn accept_tcp(&self) -> TcpStream {
        let tcp = self.listener.accept().await.unwrap().0;
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    /// The next connection through TLS and the WebSocket upgrade.
    pub async fn accept(&self) -> FakeWs {
        let tls = self.tls.accept(self.accept_tcp().await).await.unwrap();
        tokio_tungstenite::accept_async(tls).await.unwrap()
    }
}
