//! The MioStream supervisor (paper §3.1, §3.3, §3.4).
//!
//! A TLS WebSocket server that authenticates every peer with the paper's
//! handshake, keeps the stream manager (the "object lookup"), arranges each
//! stream's receivers with the `topology` crate, relays WebRTC signaling only
//! between neighbours and watches every peer with heartbeats.
//!
//! The decisions live in the pure [`manager::Manager`]; [`server`] is the
//! tokio driver around it: one task per connection, one hub task that owns
//! the manager, bounded queues between them. [`state`] owns the on-disk
//! state directory (`init`, `authorize`, `revoke`), [`invites`] the
//! invites peers enroll with, [`control`] the running supervisor's control
//! socket (reload now, who is connected). [`monitor`] is the
//! operators' HTTPS dashboard (paper §3.1's monitor).
//! It does not carry media: chunks flow peer to peer.

pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzz;
pub mod invites;
pub mod manager;
pub mod monitor;
pub mod server;
pub mod state;
pub mod tls;

pub use config::SupervisorConfig;
pub use server::Server;
pub use state::{MonitorToken, StateDir};
