//! A seeded, deterministic whole-system simulator of MioStream in virtual
//! time. It wires the real supervisor [`Manager`](miostream_supervisor::manager::Manager)
//! (and so the real topology) to one broadcaster and N receivers, each a
//! real [`NodeCore`](miostream_node::NodeCore), over a simulated network
//! ([`HostParams`]: uplink and downlink rates with serialising queues,
//! latency, jitter, loss repaired by retransmission, CPU stalls). Signaling
//! goes through the Manager; data goes over simulated links with message
//! sizes as on the wire. Failures are injected at a Poisson rate, victims
//! chosen by the paper's distributions over the overlay order, and a killed
//! slot rejoins as a new peer. Receivers account stalls with the same
//! [`PlaybackModel`](miostream_media::PlaybackModel) as the real receiver.
//!
//! The same [`SimConfig`] (seed included) gives byte-identical
//! [`SimOutcome`]s: one event queue ordered by (time, insertion), ordered
//! maps only, and randomness only from seeded ChaCha generators.
//!
//! It is not: an emulation of WebRTC's congestion control or of SCTP
//! beyond one retransmission timeout per lost packet; it skips the
//! authentication handshake (tested elsewhere) and the integrity check
//! (chunks are accepted as `AcceptAll`: verification cost is not
//! simulated); see [`SimConfig`] for the timing choices.

mod net;
mod world;

use std::time::Duration;

use miostream_protocol::TopologyKind;
use miostream_relay::RelayConfig;
use miostream_supervisor::manager::{ManagerConfig, Placement};
use miostream_topology::{FailureDistribution, TopologyConfig};

pub use net::{HostParams, MESSAGE_OVERHEAD, PACKET_BYTES, RETRANSMIT_AFTER, UNSHAPED_BPS};
pub use world::run;

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A chunk frame could not be encoded.
    #[error("cannot encode chunk {seq}: {reason}")]
    Encode {
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The configuration makes no sense.
    #[error("invalid simulation settings: {0}")]
    Config(String),
    /// The broadcaster never got its stream announced.
    #[error("the stream was never announced: {0}")]
    NotAnnounced(String),
}

/// The broadcaster's media, as the bundled VP8 test asset looks on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaParams {
    /// Stream bitrate (bit/s).
    pub bitrate_bps: u64,
    /// Cluster duration (each starts with a keyframe).
    pub cluster: Duration,
    /// Largest chunk payload (a cluster is cut into equal chunks up to this).
    pub max_chunk: usize,
    /// Init segment size.
    pub init_bytes: usize,
    /// A cluster's chunks leave spread over this share of its duration (the
    /// broadcaster's pacing).
    pub spread: f64,
}

impl Default for MediaParams {
    fn default() -> Self {
        Self {
            bitrate_bps: 1_100_000,
            cluster: Duration::from_secs(1),
            max_chunk: 16 * 1024,
            init_bytes: 600,
            spread: 0.5,
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds everything random (network, failures, ids, the Manager).
    pub seed: u64,
    /// The overlay.
    pub topology: TopologyKind,
    /// Who fails.
    pub distribution: FailureDistribution,
    /// Failures per second (Poisson; 0 for none), from the window's start.
    pub failures_per_sec: f64,
    /// The measured window, after every receiver plays.
    pub duration: Duration,
    /// The window opens at the latest after this much warm-up.
    pub max_warmup: Duration,
    /// The supervisor's host.
    pub supervisor: HostParams,
    /// The broadcaster's host.
    pub broadcaster: HostParams,
    /// One host per receiver slot, in join order.
    pub receivers: Vec<HostParams>,
    /// Receivers start this far apart (as the lab starts processes).
    pub join_interval: Duration,
    /// The stream.
    pub media: MediaParams,
    /// Receivers' startup buffer (resume after a stall: half of it).
    pub startup: Duration,
    /// A killed slot's new peer connects after this (the lab restarts the
    /// viewer in the same process at once; the handshake adds 3 RTT).
    pub restart_delay: Duration,
    /// The supervisor notices a killed peer's connection after this. A
    /// process killed on a live host has its TCP connection closed by the
    /// kernel within an RTT; a crashed host is found by missed WebSocket
    /// heartbeats within seconds. 1 s sits between and is the default.
    pub disconnect_delay: Duration,
    /// An offer unanswered this long fails (the WebRTC transport's).
    pub answer_timeout: Duration,
    /// Bytes a link may hold unsent before frames are dropped (the WebRTC
    /// transport's send buffer).
    pub send_buffer_limit: usize,
    /// Relay tuning (the daemons' defaults).
    pub relay: RelayConfig,
    /// Manager settings (the supervisor's defaults).
    pub manager: ManagerConfig,
    /// Receivers measure their uplink through the supervisor before they
    /// join (`CAPACITY_PROBE`, 192 KiB each), as the daemons do. Off: they
    /// report their host's uplink as if measured. At 100,000 peers joining
    /// within seconds the probes alone are 19.7 GB through the
    /// supervisor's link (157 s at 1 Gbit/s).
    pub probe: bool,
    /// Fault injection for tests: the first this many offers are addressed
    /// to a peer that is nobody's neighbour, so the Manager refuses them.
    pub misroute_offers: u32,
    /// Scenario for tests: this long after the window opens, kill the
    /// receiver that feeds the most others (a relay), as a failure.
    pub kill_relay_at: Option<Duration>,
}

impl SimConfig {
    /// `receivers` wired LAN hosts, the supervisor's defaults, no failures,
    /// 30 s measured.
    pub fn lan(receivers: usize, topology: TopologyKind, seed: u64) -> Self {
        let placement = Placement::default();
        Self {
            seed,
            topology,
            distribution: FailureDistribution::Uniform,
            failures_per_sec: 0.0,
            duration: Duration::from_secs(30),
            max_warmup: Duration::from_secs(30),
            supervisor: HostParams::wired("wired"),
            broadcaster: HostParams::wired("wired"),
            receivers: vec![HostParams::wired("wired"); receivers],
            join_interval: Duration::from_millis(20),
            media: MediaParams::default(),
            startup: Duration::from_secs(2),
            restart_delay: Duration::from_millis(100),
            disconnect_delay: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(2),
            send_buffer_limit: 512 * 1024,
            relay: RelayConfig::default(),
            manager: ManagerConfig {
                topology: TopologyConfig::default(),
                bad_chunk_limit: 3,
                placement,
            },
            probe: true,
            misroute_offers: 0,
            kill_relay_at: None,
        }
    }
}

/// One receiver slot over the measured window (all its incarnations), the
/// quantities of the lab's `results.csv` row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotOutcome {
    /// Its host's class.
    pub class: String,
    /// Peers that held the slot in the window (1 + times it was killed).
    pub incarnations: u32,
    /// Stalls after playback started.
    pub stalls: u64,
    /// Time stalled (ms).
    pub stall_ms: u64,
    /// Media played (ms).
    pub played_ms: u64,
    /// Startup of the slot's first peer (ms).
    pub startup_ms: u64,
    /// Media bits per second while joined.
    pub goodput_bps: u64,
    /// Latency (broadcaster send → delivery) median of the longest-lived
    /// incarnation (ms; NaN without samples).
    pub latency_ms_p50: f64,
    /// Its 99th percentile (ms).
    pub latency_ms_p99: f64,
    /// New chunks accepted.
    pub chunks_received: u64,
    /// Chunks skipped (never arrived).
    pub chunks_lost: u64,
    /// Upstream changes (the relay's `upstream_changes`).
    pub parent_changes: u64,
    /// Media payload bytes received.
    pub bytes_received: u64,
    /// Wire bytes its host sent.
    pub wire_sent: u64,
    /// Wire bytes its host received.
    pub wire_received: u64,
    /// Peers its current peer feeds at the end (0: a leaf).
    pub feeds: usize,
    /// Whether its current peer plays at the end.
    pub playing: bool,
    /// Its current peer's depth at the end (hops from the broadcaster).
    pub depth: u16,
    /// Times the supervisor cut it out.
    pub cut_out: u32,
    /// Times its node stopped on its own (`Failed`).
    pub crashed: u32,
}

/// A server host over the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostOutcome {
    /// Its class.
    pub class: String,
    /// Wire bytes sent.
    pub wire_sent: u64,
    /// Wire bytes received.
    pub wire_received: u64,
}

/// What a run produced. Deterministic: compare two with `==` or by their
/// `Debug` text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimOutcome {
    /// One per receiver slot.
    pub receivers: Vec<SlotOutcome>,
    /// The broadcaster's host.
    pub broadcaster: HostOutcome,
    /// The supervisor's host.
    pub supervisor: HostOutcome,
    /// Media payload bytes the broadcaster published in the window.
    pub published_bytes: u64,
    /// Failures injected.
    pub failures: u64,
    /// Virtual warm-up until every receiver played (or `max_warmup`).
    pub warmup: Duration,
    /// Events processed.
    pub events: u64,
    /// Offers the Manager relayed, and refused (not neighbours).
    pub signals_relayed: u64,
    /// Signals the Manager refused.
    pub signals_refused: u64,
    /// Links that came up.
    pub links_up: u64,
    /// Frames dropped at a full send buffer.
    pub frames_dropped: u64,
    /// Times a node's timer was still due right after it ran (`poll_timeout`
    /// at or before the instant `handle_timeout` was just called with): a
    /// real driver would spin on it; here it is retried 1 µs later.
    pub timer_spins: u64,
}

/// Progress of a run, reported about once per virtual second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Virtual time since the start.
    pub virtual_time: Duration,
    /// Whether the measured window is open.
    pub measuring: bool,
    /// Receivers playing.
    pub playing: usize,
    /// Failures so far.
    pub failures: u64,
    /// Events so far.
    pub events: u64,
}
