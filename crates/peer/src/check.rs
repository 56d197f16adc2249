//! The relay's chunk check, backed by the `integrity` crate: built from the
//! stream's keys when the node joins, sampling with a threshold.

use miostream_integrity::{Counters, Verifier};
use miostream_protocol::ChunkRef;
use miostream_relay::Verify;
use rand::rngs::StdRng;
use std::sync::{Arc, Mutex};

use crate::node::{StreamKeys, VerifierFactory};

/// Verifies chunks with the stream's integrity mode; shares its counters.
struct IntegrityCheck {
    verifier: Verifier,
    rng: StdRng,
    counters: Arc<Mutex<Counters>>,
}

impl Verify for IntegrityCheck {
    fn verify(&mut self, chunk: &ChunkRef<'_>) -> Result<(), String> {
        let result = self
            .verifier
            .verify(chunk, &mut self.rng)
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Ok(mut c) = self.counters.lock() {
            *c = self.verifier.counters();
        }
        result
    }
}

/// Refuses every chunk: the stream's keys were unusable.
struct RejectAll(String);

impl Verify for RejectAll {
    fn verify(&mut self, _: &ChunkRef<'_>) -> Result<(), String> {
        Err(self.0.clone())
    }
}

/// A factory for the node: verify with probability `threshold` (1.0 = every
/// chunk), publishing counters into `counters`.
pub fn integrity_check(threshold: f64, counters: Arc<Mutex<Counters>>) -> VerifierFactory {
    Box::new(move |keys: &StreamKeys| {
        match Verifier::for_stream(
            keys.stream.id,
            keys.stream.integrity,
            &keys.stream_key,
            keys.signing_key.as_deref(),
            threshold,
        ) {
            Ok(verifier) => Box::new(IntegrityCheck {
                verifier,
                rng: rand::make_rng(),
                counters: counters.clone(),
            }),
            Err(e) => Box::new(RejectAll(format!("unusable stream keys: {e}"))),
        }
    })
}
