//! The MioStream lab: the one-command demo and the paper's churn
//! experiments (§4), run on this machine with the real binaries — a
//! supervisor, a broadcaster and receiver processes over real WebRTC.
//!
//! - [`attack`]: the malicious receivers' attacks (pure; the
//!   `miostream-attacker` binary drives them);
//! - [`cluster`]: the deployment (processes, identities, summaries; IO);
//! - [`qos`]: receivers' summaries and the arithmetic over them (pure);
//! - [`experiment`]: one run with failures injected at a rate, chosen by a
//!   distribution over the overlay's positions; rows of `results.csv`;
//! - [`figures`]: the paper's figures from `results.csv` (pure + SVG);
//! - [`monitor`]: the supervisor's monitor API, for the overlay order;
//! - [`demo`]: the README's main job;
//! - [`network`]: `--network` profiles (host classes; pure);
//! - [`hosts`]: the shaped hosts a profile becomes (namespaces; IO);
//! - [`simulate`]: the same experiments in virtual time (`miostream-sim`).

pub mod attack;
pub mod cluster;
pub mod demo;
pub mod experiment;
pub mod figures;
pub mod hosts;
pub mod monitor;
pub mod network;
pub mod qos;
pub mod simulate;
pub mod sweep;
