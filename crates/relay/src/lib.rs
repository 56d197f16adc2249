//! The data plane of one peer in one stream, as a sans-IO state machine.
//!
//! A [`Relay`] decides, for a broadcaster or a receiver, which linked peers
//! to take chunks from (its *upstreams*), which to send them to (its
//! *subscribers*), what to keep (the last seconds of chunks and the init
//! segment), when a link is dead (missed heartbeats), and how to repair what
//! a failure cost (subscribe elsewhere from the first missing chunk, ask
//! linked peers for holes). It never touches a socket or a clock: the driver
//! feeds it link events, frames and `now`, and carries out its [`Output`]s.
//!
//! Failover without stalls comes from two habits: a receiver keeps its
//! backup links warm (up, heartbeating) and subscribes to `redundancy`
//! upstreams at once — in a tree or a mesh one (a *warm* standby: a dead
//! upstream is noticed within 150 ms and the next one replays what was
//! missed from its buffer, so the wire carries each chunk once), in a list
//! two (a *hot* standby, duplicates dropped by sequence number: there a
//! failure reaches everyone downstream, so it must cost nothing); and every
//! relay keeps the last seconds of chunks,
//! so a receiver that loses all its upstreams resumes from its first missing
//! chunk instead of skipping.
//!
//! It does not verify chunks itself ([`Verify`] is the caller's integrity
//! check) and does not parse media.

#[doc(hidden)]
pub mod fuzz;
mod relay;
mod store;

pub use relay::{Relay, RelayStats, GARBAGE_ALLOWANCE};
pub use store::{ChunkStore, MAX_INIT_CHUNKS};

use std::time::Duration;

use bytes::Bytes;
use miostream_protocol::{ChunkHeader, ChunkRef, PeerId};

/// Tuning of a relay. The defaults aim at sub-200 ms failover on a LAN.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// A heartbeat goes out on every link this often.
    pub heartbeat_interval: Duration,
    /// A link silent for this long is dead when its frames arrive steadily:
    /// the floor of the adaptive timeout, which grows with the jitter a
    /// link shows (a starved sender or a busy network) up to
    /// `max_link_timeout`.
    pub link_timeout: Duration,
    /// The ceiling of the adaptive link timeout.
    pub max_link_timeout: Duration,
    /// A link past its timeout is only *silent*: no longer an upstream (so
    /// failover is as fast as the timeout), but kept open, since on a lossy
    /// link a stalled association usually recovers within a second or two.
    /// Silent for this long, it is dead and the driver closes it.
    pub link_close_after: Duration,
    /// An upstream whose copies arrive later than the first copy by more
    /// than this (the median over 3 s) is dropped as lagging.
    pub max_lag: Duration,
    /// How long a lagging upstream stays out of the choice.
    pub lag_penalty: Duration,
    /// Media kept for late joiners and gap fill (by media timestamp).
    pub buffer: Duration,
    /// Hard cap on buffered chunks.
    pub max_buffered_chunks: usize,
    /// Upstreams subscribed to at once (1 = warm standby, 2 = hot standby);
    /// `None`: by topology, 2 in a list and 1 in a tree or mesh.
    pub redundancy: Option<usize>,
    /// A hole not filled by the upstreams within this long is asked of other peers.
    pub gap_timeout: Duration,
    /// A hole still open after this long is skipped (counted) so playback goes on.
    pub max_hole_wait: Duration,
    /// Make before break: a live link that a reconfiguration removed keeps
    /// feeding (or being fed) until the new upstreams are up or this long
    /// has passed; then the driver closes it.
    pub retire_grace: Duration,
    /// Bytes per second a link may be sent again on request (subscription
    /// backlogs and gap fill), so one peer asking for the buffer over and
    /// over cannot starve the others.
    pub repair_rate: u32,
    /// What a link may be sent again at once (a fresh link's budget).
    pub repair_burst: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(50),
            // A death on an idle LAN is noticed within 150 ms (three
            // heartbeats), and failover takes one more round trip.
            link_timeout: Duration::from_millis(150),
            max_link_timeout: Duration::from_secs(2),
            link_close_after: Duration::from_secs(5),
            // A lost packet holds a copy back for up to SCTP's 1 s retransmission
            // timeout: only a lag beyond that, sustained, is a slow upstream.
            max_lag: Duration::from_millis(1000),
            lag_penalty: Duration::from_secs(10),
            buffer: Duration::from_secs(8),
            max_buffered_chunks: 8192,
            redundancy: None,
            gap_timeout: Duration::from_millis(150),
            max_hole_wait: Duration::from_secs(3),
            retire_grace: Duration::from_secs(3),
            // 3 Mbit/s sustained, 2 MiB at once: a failover's backlog of a
            // few seconds of an HD stream fits; a flood gets no more.
            repair_rate: 384 * 1024,
            repair_burst: 2 * 1024 * 1024,
        }
    }
}

/// Why the caller's check refused a chunk.
///
/// Only [`Refusal::Forged`] costs the sender anything: congestion (late
/// copies, replays of what was accepted, chunks outside the replay window)
/// must never look like forgery, or a slow honest relay gets cut out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A cryptographic failure on a chunk whose sequence number has not been
    /// accepted yet (bad tag or signature): dropped, and its sender reported.
    Forged(String),
    /// A sequence number accepted already, or too old to tell: a late copy,
    /// counted as a duplicate.
    Replayed,
    /// The chunk cannot be checked here (e.g. unusable stream keys): dropped,
    /// nobody reported.
    Unchecked(String),
}

/// The caller's integrity check, run on every new chunk before it is stored,
/// delivered or forwarded.
pub trait Verify {
    /// `Err` drops the chunk; see [`Refusal`] for what follows.
    fn verify(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal>;

    /// Checks a copy of an accepted chunk whose bytes differ from the
    /// accepted one (honest copies are identical): its tag only, with no
    /// replay window. `Err(Refusal::Forged)` reports its sender.
    fn check_copy(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal>;
}

impl Verify for Box<dyn Verify + Send> {
    fn verify(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal> {
        (**self).verify(chunk)
    }

    fn check_copy(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal> {
        (**self).check_copy(chunk)
    }
}

/// Accepts everything (tests, and streams whose chunks are checked elsewhere).
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl Verify for AcceptAll {
    fn verify(&mut self, _: &ChunkRef<'_>) -> Result<(), Refusal> {
        Ok(())
    }

    fn check_copy(&mut self, _: &ChunkRef<'_>) -> Result<(), Refusal> {
        Ok(())
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this encoded frame on the link to `to`.
    Send {
        /// Addressee.
        to: PeerId,
        /// Encoded frame.
        frame: Bytes,
    },
    /// The next chunk, in sequence order, for the local player.
    Deliver {
        /// Its header.
        header: ChunkHeader,
        /// Its media bytes.
        payload: Bytes,
    },
    /// Delivery skipped chunks `first..first+count` that never arrived.
    Skipped {
        /// First skipped sequence number.
        first: u64,
        /// How many.
        count: u64,
    },
    /// A well-formed chunk of this stream from `from` failed a
    /// cryptographic check on a sequence number not accepted yet (or a
    /// differing copy of an accepted one failed it): report its sender.
    Rejected {
        /// The peer that sent it.
        from: PeerId,
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
        /// The frame as it arrived: the evidence for the supervisor.
        frame: Bytes,
    },
    /// The link to `peer` carried [`GARBAGE_ALLOWANCE`] frames that are
    /// not ours to read (undecodable, oversized, truncated, chunks or
    /// control frames of another stream), or came up again after that: the
    /// relay has dropped it already, the driver should close it and not
    /// set it up again while [`Relay::is_shunned`] says so. Garbage is
    /// never reported as forgery.
    Garbage {
        /// The sender.
        peer: PeerId,
        /// The last reason.
        reason: String,
    },
    /// A link was silent for [`RelayConfig::link_close_after`]: the driver
    /// should close it (and may tell the supervisor).
    LinkDead {
        /// The silent peer.
        peer: PeerId,
    },
    /// We dropped `peer` as an upstream: its copies lagged the others' by
    /// more than [`RelayConfig::max_lag`]. The driver may tell the
    /// supervisor, which demotes a relay that several peers report.
    Lagging {
        /// The slow upstream.
        peer: PeerId,
    },
    /// A link that the topology removed is no longer needed (or its grace
    /// ran out): the driver should close it unless the peer is linked again.
    Retired {
        /// The peer.
        peer: PeerId,
    },
}
