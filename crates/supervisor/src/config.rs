//! The supervisor's configuration (`DIR/config.toml`): every key optional,
//! with the defaults documented in [`DEFAULT_CONFIG_TOML`].

use std::net::SocketAddr;
use std::time::Duration;

use miostream_auth::HandshakeConfig;
use serde::{Deserialize, Serialize};

/// The commented config file `init` writes: `config/supervisor.example.toml`
/// in the repository, the single source of the documented defaults.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/supervisor.example.toml");

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Handshake settings.
    pub auth: AuthSection,
    /// Liveness settings.
    pub heartbeat: HeartbeatSection,
    /// Limits against bad or hostile clients.
    pub limits: LimitsSection,
    /// Overlay settings.
    pub topology: TopologySection,
    /// Chunk-integrity enforcement.
    pub integrity: IntegritySection,
    /// Where receivers go by their measured capacity.
    pub placement: PlacementSection,
    /// The operators' web dashboard.
    pub monitor: MonitorSection,
    /// The token-less Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Logging.
    pub log: LogSection,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            auth: AuthSection::default(),
            heartbeat: HeartbeatSection::default(),
            limits: LimitsSection::default(),
            topology: TopologySection::default(),
            integrity: IntegritySection::default(),
            placement: PlacementSection::default(),
            monitor: MonitorSection::default(),
            metrics: MetricsSection::default(),
            log: LogSection::default(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `"text"` (colour only on a terminal) or `"json"` (one object per
    /// line, for journald or a log shipper); `--log-format` overrides it.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "text".into(),
        }
    }
}

impl LogSection {
    /// The format, or why it is not one.
    pub fn format(&self) -> Result<miostream_cli::LogFormat, String> {
        self.format.parse()
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Time allowed per handshake step (ms).
    pub step_timeout_ms: u64,
    /// Smallest peer key (bits).
    pub min_peer_key_bits: usize,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            step_timeout_ms: 5000,
            min_peer_key_bits: 2048,
        }
    }
}

/// `[heartbeat]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSection {
    /// Ping interval (ms).
    pub interval_ms: u64,
    /// Silence after which a peer is dropped (ms).
    pub timeout_ms: u64,
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            timeout_ms: 5000,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Connections at once.
    pub max_connections: usize,
    /// Connections in their handshakes at once.
    pub max_unauthenticated: usize,
    /// TLS + WebSocket handshake deadline (ms).
    pub tls_handshake_timeout_ms: u64,
    /// Largest message (bytes).
    pub max_message_bytes: usize,
    /// Sustained message rate per peer.
    pub messages_per_sec: u32,
    /// Burst above the sustained rate.
    pub message_burst: u32,
    /// Outbound queue length per peer.
    pub send_queue: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_unauthenticated: 1024,
            tls_handshake_timeout_ms: 5000,
            max_message_bytes: 64 * 1024,
            messages_per_sec: 200,
            message_burst: 400,
            send_queue: 256,
        }
    }
}

/// `[topology]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologySection {
    /// List backups (k).
    pub list_backups: usize,
    /// Tree fan-out.
    pub tree_fanout: usize,
    /// Mesh grid width.
    pub mesh_width: usize,
    /// Mesh nodes fed by the broadcaster.
    pub mesh_entries: usize,
}

impl Default for TopologySection {
    fn default() -> Self {
        Self {
            list_backups: 2,
            tree_fanout: 2,
            mesh_width: 8,
            mesh_entries: 2,
        }
    }
}

/// `[integrity]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegritySection {
    /// Distinct reporters before a relay is cut out.
    pub bad_chunk_limit: u32,
}

impl Default for IntegritySection {
    fn default() -> Self {
        Self { bad_chunk_limit: 2 }
    }
}

/// `[placement]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementSection {
    /// Copies of the stream a relay's measured uplink must carry (0: all relay).
    pub relay_copies: u32,
    /// Bitrate assumed before receivers report goodput (kbit/s).
    pub stream_kbps: u32,
    /// Distinct lag reporters that demote a relay.
    pub lag_reporters: u32,
    /// Window in which they must report (ms).
    pub lag_window_ms: u64,
}

impl Default for PlacementSection {
    fn default() -> Self {
        Self {
            relay_copies: 4,
            stream_kbps: 1500,
            lag_reporters: 2,
            lag_window_ms: 10_000,
        }
    }
}

/// `[monitor]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSection {
    /// `"auto"` (the host of `listen`, the next port; port 0 stays 0),
    /// `"off"` (or empty: disabled), or `HOST:PORT`.
    pub listen: String,
    /// Dashboard connections at once.
    pub max_connections: usize,
    /// Whether operators may inject failures (`POST /api/inject` and the
    /// dashboard's controls): for a lab, never for an audience.
    pub lab_controls: bool,
}

impl Default for MonitorSection {
    fn default() -> Self {
        Self {
            listen: "auto".into(),
            max_connections: 32,
            lab_controls: false,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// `HOST:PORT` of a plain-HTTP listener serving only `/metrics`,
    /// `/healthz` and `/readyz`, without a token; empty or `"off"`: none
    /// (the monitor still serves `/metrics` to token holders).
    pub listen: String,
}

impl SupervisorConfig {
    /// Where the monitor serves, if it is enabled (see [`MonitorSection`]).
    pub fn monitor_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.monitor.listen.trim() {
            "" | "off" => Ok(None),
            "auto" => {
                let port = match self.listen.port() {
                    0 => 0,
                    p => p.checked_add(1).ok_or(
                        "monitor.listen = \"auto\" needs a listen port below 65535; give HOST:PORT",
                    )?,
                };
                Ok(Some(SocketAddr::new(self.listen.ip(), port)))
            }
            other => other.parse().map(Some).map_err(|_| {
                format!("monitor.listen: {other:?} is not \"auto\", \"off\" or HOST:PORT")
            }),
        }
    }

    /// Where the token-less `/metrics` listener serves, if anywhere.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        match self.metrics.listen.trim() {
            "" | "off" => Ok(None),
            other => other
                .parse()
                .map(Some)
                .map_err(|_| format!("metrics.listen: {other:?} is not \"off\" or HOST:PORT")),
        }
    }

    /// Parses a config file's text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The handshake settings.
    pub fn handshake(&self) -> HandshakeConfig {
        HandshakeConfig {
            step_timeout: Duration::from_millis(self.auth.step_timeout_ms),
            min_peer_key_bits: self.auth.min_peer_key_bits,
            heartbeat_interval: Duration::from_millis(self.heartbeat.interval_ms),
            heartbeat_timeout: Duration::from_millis(self.heartbeat.timeout_ms),
        }
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        if self.heartbeat.interval_ms == 0
            || self.heartbeat.timeout_ms <= self.heartbeat.interval_ms
        {
            return Err("heartbeat.timeout_ms must exceed heartbeat.interval_ms > 0".into());
        }
        if l.max_connections == 0 || l.max_unauthenticated == 0 || l.send_queue == 0 {
            return Err("limits must be positive".into());
        }
        if l.messages_per_sec == 0 || l.message_burst == 0 {
            return Err("limits.messages_per_sec and message_burst must be positive".into());
        }
        if self.topology.tree_fanout == 0
            || self.topology.mesh_width == 0
            || self.topology.mesh_entries == 0
        {
            return Err(
                "topology.tree_fanout, mesh_width and mesh_entries must be positive".into(),
            );
        }
        if self.monitor.max_connections == 0 {
            return Err("monitor.max_connections must be positive".into());
        }
        self.monitor_addr()?;
        self.metrics_addr()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_are_the_defaults() {
        let parsed = SupervisorConfig::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        let def = SupervisorConfig::default();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&def).unwrap()
        );
        def.validate().unwrap();
    }

    #[test]
    fn monitor_listen_values() {
        let mut c = SupervisorConfig::default();
        assert_eq!(
            c.monitor_addr().unwrap(),
            Some("0.0.0.0:8444".parse().unwrap())
        );
        c.listen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            c.monitor_addr().unwrap(),
            Some("127.0.0.1:0".parse().unwrap())
        );
        c.listen = "127.0.0.1:65535".parse().unwrap();
        assert!(c.validate().is_err());
        for off in ["off", "", " off "] {
            c.monitor.listen = off.into();
            assert_eq!(c.monitor_addr().unwrap(), None);
        }
        c.monitor.listen = "[::1]:9000".into();
        assert_eq!(
            c.monitor_addr().unwrap(),
            Some("[::1]:9000".parse().unwrap())
        );
        c.monitor.listen = "localhost:9000".into();
        assert!(c.validate().unwrap_err().contains("monitor.listen"));
        c.monitor.listen = "off".into();
        assert_eq!(c.metrics_addr().unwrap(), None);
        c.metrics.listen = "127.0.0.1:9100".into();
        assert_eq!(
            c.metrics_addr().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        c.metrics.listen = "nowhere".into();
        assert!(c.validate().unwrap_err().contains("metrics.listen"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = SupervisorConfig::from_toml("[limits]\nmax_conections = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }
}
