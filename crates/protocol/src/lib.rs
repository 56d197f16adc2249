//! MioStream wire formats, with no IO.
//!
//! Two languages are spoken on the wire:
//! - [`signal`]: JSON text messages between a peer and the supervisor over a
//!   TLS WebSocket (the paper's handshake, stream manager, topology
//!   reconfiguration and the signaling relay). The first exchange carries
//!   [`PROTOCOL_VERSION`].
//! - [`frame`]: compact binary frames between peers over WebRTC data channels
//!   (media chunks, link heartbeats, subscriptions and gap-fill requests).
//!
//! Every decoder here bounds its input and reports malformed data with a
//! typed error; none of them panics on peer input.

pub mod frame;
#[doc(hidden)]
pub mod fuzz;
mod ids;
pub mod signal;

pub use frame::{
    Chunk, ChunkFlags, ChunkHeader, ChunkKind, ChunkRef, Frame, FrameError, FrameRef,
    SubscribeFlags, MAX_CHUNK_PAYLOAD, MAX_FRAME_LEN, MAX_TAG_LEN,
};
pub use ids::{ComponentType, IntegrityMode, PeerId, StreamId, TopologyKind};
pub use signal::{PeerMessage, SignalError, SupervisorMessage};

/// Version of the whole wire protocol (signaling and frames). Sent by the
/// supervisor in `COLLECT_PEER_INFO_REQUEST`, echoed by the peer, and written
/// as the first byte of every binary frame.
pub const PROTOCOL_VERSION: u8 = 1;
