//! What broadcasters and receivers share: their identity (an RSA key pair in
//! a directory), the trust bundle that pins their supervisor, and the
//! supervisor client — a TLS WebSocket that runs the peer side of the
//! paper's handshake and then carries signaling.
//!
//! It does not carry media (that is the WebRTC data plane).

mod client;
mod identity;

pub use client::{ClientError, SupervisorClient, SupervisorConnection, SupervisorUrl};
pub use identity::{keygen, Identity, IdentityError, Trust};
