//! What a node asks of its transport and what a transport reports: one
//! bidirectional channel of frames per linked peer, set up through
//! signaling that the supervisor relays.

use bytes::Bytes;
use miostream_protocol::signal::SignalPayload;
use miostream_protocol::PeerId;

/// What a node asks of its transport.
#[derive(Debug)]
pub enum TransportCommand {
    /// Set up a link to `peer`; the `initiator` sends the offer.
    Open {
        /// The peer.
        peer: PeerId,
        /// Whether we make the offer (the smaller peer id does).
        initiator: bool,
    },
    /// Tear the link down.
    Close {
        /// The peer.
        peer: PeerId,
    },
    /// Send a frame; dropped if the link is down or its send buffer is full
    /// (the receiver repairs the hole from its other upstreams).
    Send {
        /// The peer.
        peer: PeerId,
        /// Encoded frame.
        frame: Bytes,
    },
    /// Signaling from `from`, relayed by the supervisor.
    Signal {
        /// Sender.
        from: PeerId,
        /// Payload.
        payload: SignalPayload,
    },
}

/// What a transport reports. Every link the node opened (or that a peer's
/// offer opened) ends in exactly one `Down`: when it closes, fails, or never
/// comes up.
#[derive(Debug)]
pub enum TransportEvent {
    /// The link to this peer is open.
    Up(PeerId),
    /// The link to this peer closed, failed, or could not be set up.
    Down(PeerId),
    /// A frame arrived.
    Frame(PeerId, Bytes),
    /// Signaling to relay to `to` through the supervisor.
    Signal {
        /// Addressee.
        to: PeerId,
        /// Payload.
        payload: SignalPayload,
    },
}
