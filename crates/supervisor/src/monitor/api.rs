//! The monitor's JSON API (`GET /api/state`, `POST /api/inject`) and the
//! failure injector's state. Pure: no IO, no clock; randomness is seeded.

use std::time::Duration;

use miostream_protocol::{IntegrityMode, PeerId, TopologyKind};
use miostream_topology::FailureDistribution;
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::manager::Manager;

/// A receiver's latest QoS report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qos {
    /// Playback stalls.
    pub stalls: u64,
    /// Time stalled (ms).
    pub stall_ms: u64,
    /// Media buffered ahead of the play head (ms).
    pub buffer_ms: u64,
    /// Media bits per second since joining.
    pub goodput_bps: u64,
    /// Chunks received.
    pub chunks_received: u64,
    /// Chunks that failed verification.
    pub chunks_rejected: u64,
    /// Broadcaster → receiver latency, median (ms).
    pub latency_ms_p50: f64,
    /// Upstream changes after the first.
    pub parent_changes: u64,
    /// Broadcaster → receiver latency, 99th percentile (ms).
    #[serde(default)]
    pub latency_ms_p99: f64,
    /// Media bytes received.
    #[serde(default)]
    pub bytes_received: u64,
    /// Of those, straight from the broadcaster.
    #[serde(default)]
    pub bytes_from_broadcaster: u64,
}

/// One receiver in its stream's overlay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The receiver.
    pub peer: PeerId,
    /// Index in the overlay order (list order, tree breadth-first slots,
    /// mesh row-major): what the failure distributions are drawn over.
    pub position: usize,
    /// Hops from the broadcaster.
    pub depth: u32,
    /// Peers that feed it (the broadcaster's id for the first level).
    pub parents: Vec<PeerId>,
    /// Peers it feeds.
    pub children: Vec<PeerId>,
    /// Standby parents.
    pub backup_parents: Vec<PeerId>,
    /// Peers it stands by for.
    pub backup_children: Vec<PeerId>,
    /// Mesh neighbours.
    pub neighbours: Vec<PeerId>,
    /// Its latest report; `null` until it reported.
    pub qos: Option<Qos>,
    /// Its key's label in the authorized list, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where it connects to the supervisor from (`IP:PORT`), if known.
    #[serde(default)]
    pub address: Option<String>,
}

/// One stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamView {
    /// Stream id (hex: a u64 would lose digits in JavaScript).
    pub id: String,
    /// Name.
    pub name: String,
    /// The broadcaster's title (empty: none).
    #[serde(default)]
    pub title: String,
    /// Media bitrate, smoothed over the receivers' goodput (bit/s; 0: no
    /// report yet).
    #[serde(default)]
    pub bitrate_bps: u64,
    /// Overlay kind.
    pub topology: TopologyKind,
    /// Integrity mode.
    pub integrity: IntegrityMode,
    /// The broadcaster (the overlay's root).
    pub broadcaster: PeerId,
    /// Receivers in overlay order.
    pub nodes: Vec<NodeView>,
}

/// The failure injector, as `/api/state` and `/api/inject` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Injection {
    /// Whether failures are being injected.
    pub running: bool,
    /// Failures per second, in every stream.
    pub rate: f64,
    /// How victims are chosen over the overlay positions.
    pub distribution: FailureDistribution,
    /// Failures injected since the last start.
    pub injected: u64,
}

/// `GET /api/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Streams by name.
    pub streams: Vec<StreamView>,
    /// The injector.
    pub injection: Injection,
    /// Whether failure injection is allowed (`[monitor] lab_controls`):
    /// the dashboard shows its controls only then.
    pub lab_controls: bool,
}

/// Highest injection rate accepted (failures per second per stream).
pub const MAX_RATE: f64 = 1000.0;

/// `POST /api/inject`: `{"rate": 2.0, "distribution": "uniform", "seed": 42}`;
/// `{"rate": 0}` stops.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// Failures per second in every stream (0 stops).
    pub rate: f64,
    /// Victim distribution (default uniform).
    #[serde(default)]
    pub distribution: Option<FailureDistribution>,
    /// Seed of the victim choice (default: from the OS).
    #[serde(default)]
    pub seed: Option<u64>,
}

impl InjectRequest {
    /// Parses and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if !value.is_object() {
            // serde would also take a struct written as an array.
            return Err("expected a JSON object".into());
        }
        let req = Self::deserialize(&value).map_err(|e| e.to_string())?;
        if !req.rate.is_finite() || !(0.0..=MAX_RATE).contains(&req.rate) {
            return Err(format!(
                "rate must be within 0..={MAX_RATE} failures per second"
            ));
        }
        Ok(req)
    }
}

/// The failure injector: its settings, count and seeded generator. The hub
/// fires it every [`period`](Self::period).
#[derive(Debug)]
pub struct Injector {
    rate: f64,
    distribution: FailureDistribution,
    injected: u64,
    rng: ChaCha8Rng,
}

impl Default for Injector {
    fn default() -> Self {
        Self::new()
    }
}

impl Injector {
    /// A stopped injector.
    pub fn new() -> Self {
        Self {
            rate: 0.0,
            distribution: FailureDistribution::Uniform,
            injected: 0,
            rng: rand::make_rng(),
        }
    }

    /// Applies a request (starting resets the count); returns the new state.
    pub fn set(&mut self, req: &InjectRequest) -> Injection {
        self.rate = if req.rate.is_finite() {
            req.rate.clamp(0.0, MAX_RATE)
        } else {
            0.0
        };
        if let Some(d) = req.distribution {
            self.distribution = d;
        }
        if self.rate > 0.0 {
            self.injected = 0;
            self.rng = match req.seed {
                Some(seed) => ChaCha8Rng::seed_from_u64(seed),
                None => rand::make_rng(),
            };
        }
        self.view()
    }

    /// The state shown to operators.
    pub fn view(&self) -> Injection {
        Injection {
            running: self.rate > 0.0,
            rate: self.rate,
            distribution: self.distribution,
            injected: self.injected,
        }
    }

    /// Time between two injections while running.
    pub fn period(&self) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.rate))
    }

    /// One injection: a victim in every stream (see
    /// [`Manager::pick_victims`]), counted.
    pub fn fire(&mut self, manager: &Manager) -> Vec<PeerId> {
        if self.rate <= 0.0 {
            return Vec::new();
        }
        let victims = manager.pick_victims(self.distribution, &mut self.rng);
        self.injected += victims.len() as u64;
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_requests_are_checked() {
        let r = InjectRequest::parse(br#"{"rate": 2.0, "distribution": "binomial", "seed": 42}"#)
            .unwrap();
        assert_eq!(r.rate, 2.0);
        assert_eq!(r.distribution, Some(FailureDistribution::Binomial));
        assert_eq!(r.seed, Some(42));
        let r = InjectRequest::parse(br#"{"rate": 0}"#).unwrap();
        assert_eq!((r.rate, r.distribution, r.seed), (0.0, None, None));
        for bad in [
            &br#"{"rate": -1}"#[..],
            br#"{"rate": 1e9}"#,
            br#"{"rate": "2"}"#,
            br#"{"rate": 1, "distribution": "gaussian"}"#,
            br#"{"rate": 1, "seed": -3}"#,
            br#"{"rate": 1, "extra": true}"#,
            br#"{}"#,
            br#"[1]"#,
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                InjectRequest::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_injector_starts_stops_and_counts() {
        let mut inj = Injector::new();
        assert_eq!(inj.period(), None);
        let v = inj.set(&InjectRequest {
            rate: 4.0,
            distribution: Some(FailureDistribution::Poisson),
            seed: Some(1),
        });
        assert!(v.running);
        assert_eq!(v.distribution, FailureDistribution::Poisson);
        assert_eq!(inj.period(), Some(Duration::from_millis(250)));
        let v = inj.set(&InjectRequest {
            rate: 0.0,
            distribution: None,
            seed: None,
        });
        assert!(!v.running);
        assert_eq!(v.distribution, FailureDistribution::Poisson);
        assert_eq!(inj.period(), None);
        let json = serde_json::to_string(&Injector::new().view()).unwrap();
        assert_eq!(
            json,
            r#"{"running":false,"rate":0.0,"distribution":"uniform","injected":0}"#
        );
    }
}
