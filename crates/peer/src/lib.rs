//! What broadcasters and receivers share: their identity (an RSA key pair in
//! a directory), the trust bundle that pins their supervisor, and the
//! supervisor client — a TLS WebSocket that runs the peer side of the
//! paper's handshake and then carries signaling.
//!
//! On top of that, a [`node`](spawn_node) ties the session, a
//! [`transport`] (WebRTC, or in-memory for tests) and the relay core into
//! one broadcaster or receiver.

mod check;
mod client;
pub mod enroll;
mod identity;
mod net;
mod node;
mod session;
pub mod transport;

pub use check::integrity_check;
pub use client::{ClientError, SupervisorClient, SupervisorConnection, SupervisorUrl};
pub use enroll::{enroll, resolve, Connection, ConnectionFlags, EnrollError, PeerPaths};
pub use identity::{keygen, Identity, IdentityError, Trust};
pub use net::local_ip_towards;
pub use node::{
    spawn_node, Announcement, NodeConfig, NodeEvent, NodeHandle, StreamKeys, VerifierFactory,
};
pub use session::{Session, SessionConfig, SessionEvent};

/// `tracing` directives that quiet the WebRTC stack's own warnings (benign
/// and frequent: ICE checks before candidates arrive, DTLS server names,
/// writes to a closed link), keeping its errors. Binaries append them to
/// their default filter; an explicit `RUST_LOG` replaces both.
pub const QUIET_WEBRTC: &str = "webrtc=error,rtc=error,rtc_datachannel=error,rtc_dtls=error,\
rtc_ice=error,rtc_mdns=error,rtc_sctp=error,rtc_stun=error,rtc_turn=error";

pub use miostream_cli::one_line;

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_does_not_repeat_quoted_causes() {
        let inner = std::io::Error::other("disk on fire");
        let outer = crate::IdentityError::Io {
            path: "/x/peer.key".into(),
            source: inner,
        };
        assert_eq!(super::one_line(&outer), "/x/peer.key: disk on fire");
    }
}
