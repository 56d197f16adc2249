//! The paper's authentication handshake (Fig. 4), as pure state machines.
//!
//! [`SupervisorHandshake`] and [`PeerHandshake`] take messages in and return
//! the message to send next; neither touches a socket, a clock or a global
//! RNG: the caller passes `now` and an RNG, and drives the deadline. The
//! challenge answer is bound to the TLS connection it travels on (an exporter
//! secret both ends derive), so an answer recorded on one connection is
//! worthless on another.
//!
//! Keys are RSA (≥ 2048 bits), encryption is RSA-OAEP with SHA-256 (aws-lc-rs).

mod handshake;
mod keys;

pub use handshake::{
    AuthError, Authenticated, Authorizer, HandshakeConfig, PeerHandshake, PeerStep,
    SupervisorHandshake, SupervisorStep, CHANNEL_BINDING_LABEL,
};
pub use keys::{
    KeyError, KeyFingerprint, PrivateKey, PublicKey, MAX_RSA_BITS, MIN_RSA_BITS, RSA_KEY_SIZES,
};
