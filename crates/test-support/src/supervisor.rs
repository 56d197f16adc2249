//! A real supervisor for a test: state directory in a temp dir, keys from a
//! shared pool authorized by index, TLS on 127.0.0.1 with an OS port; it can
//! be restarted on the same port and is stopped at the end.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use miostream_auth::PrivateKey;
use miostream_peer::{ClientError, Identity, SupervisorClient, SupervisorUrl, Trust};
use miostream_protocol::{
    ComponentType, IntegrityMode, PeerMessage, SupervisorMessage, TopologyKind,
};
use miostream_supervisor::{Server, StateDir, SupervisorConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for anything before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// A pool of RSA keys, generated once per test binary (the slow part).
pub fn keys() -> &'static [Arc<PrivateKey>] {
    static KEYS: OnceLock<Vec<Arc<PrivateKey>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..24)
            .map(|_| Arc::new(PrivateKey::generate(2048).unwrap()))
            .collect()
    })
}

/// A running supervisor.
pub struct TestSupervisor {
    /// Its state directory.
    pub dir: tempfile::TempDir,
    /// Where it listens.
    pub url: SupervisorUrl,
    /// Its trust bundle.
    pub trust: Trust,
    /// Where its monitor (HTTPS dashboard) listens, unless a tweak turned it off.
    pub monitor: Option<std::net::SocketAddr>,
    /// Where its token-less `/metrics` listener is, if a tweak set one.
    pub metrics: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestSupervisor {
    /// Starts a supervisor on 127.0.0.1:0 with key `i` authorized as a
    /// broadcaster for each i in `broadcasters` and as a receiver for each
    /// i in `receivers`.
    pub async fn start(
        broadcasters: &[usize],
        receivers: &[usize],
        tweak: impl FnOnce(&mut SupervisorConfig),
    ) -> Self {
        Self::start_on(
            std::net::Ipv4Addr::LOCALHOST.into(),
            broadcasters,
            receivers,
            tweak,
        )
        .await
    }

    /// As [`start`](Self::start), listening on `ip` (e.g. a test LAN host's
    /// gateway address; the certificate names it).
    pub async fn start_on(
        ip: std::net::IpAddr,
        broadcasters: &[usize],
        receivers: &[usize],
        tweak: impl FnOnce(&mut SupervisorConfig),
    ) -> Self {
        let listen = std::net::SocketAddr::new(ip, 0);
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.init(listen, &[], 2048).unwrap();
        for (list, role) in [
            (broadcasters, ComponentType::Broadcaster),
            (receivers, ComponentType::Receiver),
        ] {
            for &i in list {
                let path = Self::write_pub(&dir, i);
                state.authorize(&path, role, None).unwrap();
            }
        }
        let mut config = state.load_config().unwrap();
        config.listen = listen;
        config.monitor.listen = std::net::SocketAddr::new(ip, 0).to_string();
        tweak(&mut config);
        let server = Server::bind(&state, config).await.unwrap();
        let addr = server.local_addr();
        let monitor = server.monitor_addr();
        let metrics = server.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            trust: Trust::load(&state.trust_dir()).unwrap(),
            url: format!("wss://{}", addr).parse().unwrap(),
            monitor,
            metrics,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Writes pool key `i`'s public key into the state directory.
    pub fn write_pub(dir: &tempfile::TempDir, i: usize) -> PathBuf {
        let path = dir.path().join(format!("peer{i}.pub"));
        std::fs::write(&path, keys()[i].public().to_pem()).unwrap();
        path
    }

    /// The monitor's operator token.
    pub fn monitor_token(&self) -> String {
        self.state()
            .load_or_create_monitor_token()
            .unwrap()
            .secret()
            .to_owned()
    }

    /// Its state directory.
    pub fn state(&self) -> StateDir {
        StateDir::new(self.dir.path())
    }

    /// Connects and authenticates with pool key `key`.
    pub async fn connect(
        &self,
        key: usize,
        role: ComponentType,
    ) -> Result<SupervisorClient, ClientError> {
        SupervisorClient::connect(
            &self.url,
            &Identity::from_key(keys()[key].clone()),
            &self.trust,
            role,
        )
        .await
    }

    /// Waits until the supervisor lists `stream` (asking as pool key `key`,
    /// which must be authorized as a receiver) and returns its entry; fails
    /// the test after `deadline`.
    pub async fn wait_listed(
        &self,
        key: usize,
        stream: &str,
        deadline: Duration,
    ) -> miostream_protocol::signal::StreamInfo {
        let until = tokio::time::Instant::now() + deadline;
        let mut client = self.connect(key, ComponentType::Receiver).await.unwrap();
        loop {
            let listed = client.list_streams().await.unwrap();
            if let Some(s) = listed.into_iter().find(|s| s.name == stream) {
                client.close().await;
                return s;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{stream} was not announced within {deadline:?}"
            );
            // Not a busy loop: a round trip to the supervisor per check.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and starts a new one on the same directory and port
    /// (what systemd's `Restart=on-failure` does).
    pub async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        let state = self.state();
        let mut config = state.load_config().unwrap();
        config.listen = format!("{}:{}", self.url.host, self.url.port)
            .parse()
            .unwrap();
        // The same monitor port too, if it had one.
        config.monitor.listen = match self.monitor {
            Some(addr) => addr.to_string(),
            None => "off".into(),
        };
        if let Some(addr) = self.metrics {
            config.metrics.listen = addr.to_string();
        }
        let server = Server::bind(&state, config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        self.task = Some(tokio::spawn(server.run(async move {
            let _ = stopped.await;
        })));
        self.stop = Some(stop);
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
    }
}

/// Receives until `pick` accepts a message; fails after WAIT.
pub async fn recv_until<T>(
    client: &mut SupervisorClient,
    mut pick: impl FnMut(SupervisorMessage) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = client
            .recv_within(left)
            .await
            .expect("message before the deadline");
        if let Some(t) = pick(msg) {
            return t;
        }
    }
}

/// Announces an HMAC stream `name` and waits until it is announced.
pub async fn announce(b: &mut SupervisorClient, name: &str, topology: TopologyKind) {
    b.send(&PeerMessage::AnnounceStream {
        name: name.into(),
        topology,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume: None,
        title: String::new(),
    })
    .await
    .unwrap();
    recv_until(b, |m| {
        matches!(m, SupervisorMessage::StreamAnnounced { .. }).then_some(())
    })
    .await;
}

/// Asks to join `name`; returns `STREAM_JOINED` or the `ERROR`.
pub async fn join(r: &mut SupervisorClient, name: &str) -> SupervisorMessage {
    r.send(&PeerMessage::JoinStream {
        name: name.into(),
        capacity: Default::default(),
    })
    .await
    .unwrap();
    recv_until(r, |m| match m {
        m @ (SupervisorMessage::StreamJoined { .. } | SupervisorMessage::Error { .. }) => Some(m),
        _ => None,
    })
    .await
}
