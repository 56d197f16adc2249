//! One MioStream peer — a broadcaster or a receiver — as a sans-IO state
//! machine, [`NodeCore`]: the supervisor session's state, the link
//! lifecycle and the [relay](miostream_relay), driven by messages, link
//! events and `now`, answering with [`NodeOutput`]s. The tokio node in
//! `miostream-peer` and the whole-system simulator drive the same core, so
//! what the simulator shows at 100,000 peers is what the daemons do.
//!
//! [`PlayerGate`] is the rule for a bounded player queue (skip to the next
//! keyframe cluster, never block relaying); [`link`] holds the vocabulary
//! between a node and its transport.

mod core;
pub mod link;
mod player;

pub use crate::core::{
    Announcement, NodeCore, NodeCoreConfig, NodeEvent, NodeOutput, StreamKeys, VerifierFactory,
    END_GRACE, PROBE_BYTES, PROBE_MESSAGES, PROBE_TIMEOUT, PROBE_WAIT, REJOIN_DELAY, REOPEN_DELAY,
};
pub use link::{TransportCommand, TransportEvent};
pub use player::PlayerGate;
