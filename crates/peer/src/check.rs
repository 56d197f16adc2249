//! The relay's chunk check, backed by the `integrity` crate: built from the
//! stream's keys when the node joins, sampling with a threshold.

use miostream_integrity::{Counters, IntegrityError, Verifier};
use miostream_protocol::ChunkRef;
use miostream_relay::{Refusal, Verify};
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
    fn verify(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal> {
        let result = self
            .verifier
            .verify(chunk, &mut self.rng)
            .map(|_| ())
            .map_err(|e| match e {
                // Late copies and replays are congestion, not forgery.
                IntegrityError::ReplayedSequence { .. } => Refusal::Replayed,
                e @ (IntegrityError::BadTag { .. }
                | IntegrityError::BadSignature { .. }
                | IntegrityError::WrongStream { .. }) => Refusal::Forged(e.to_string()),
                e => Refusal::Unchecked(e.to_string()),
            });
        if let Ok(mut c) = self.counters.lock() {
            *c = self.verifier.counters();
        }
        result
    }

    fn check_copy(&mut self, chunk: &ChunkRef<'_>) -> Result<(), Refusal> {
        self.verifier
            .check_tag(chunk)
            .map_err(|e| Refusal::Forged(e.to_string()))
    }
}

/// Refuses every chunk: the stream's keys were unusable.
struct RejectAll(String);

impl Verify for RejectAll {
    fn verify(&mut self, _: &ChunkRef<'_>) -> Result<(), Refusal> {
        Err(Refusal::Unchecked(self.0.clone()))
    }

    fn check_copy(&mut self, _: &ChunkRef<'_>) -> Result<(), Refusal> {
        Err(Refusal::Unchecked(self.0.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use miostream_integrity::{SourceKey, Tagger};
    use miostream_protocol::signal::StreamInfo;
    use miostream_protocol::{
        Chunk, ChunkFlags, ChunkHeader, ChunkKind, FrameRef, IntegrityMode, StreamId, TopologyKind,
    };

    fn keys(signing_key: String) -> StreamKeys {
        StreamKeys {
            stream: StreamInfo {
                id: StreamId(3),
                name: "s".into(),
                topology: TopologyKind::Tree,
                integrity: IntegrityMode::Sign,
                media_type: "video/webm".into(),
                receivers: 0,
                title: String::new(),
                bitrate_bps: 0,
            },
            stream_key: String::new(),
            signing_key: Some(signing_key),
        }
    }

    fn signed(tagger: &Tagger, seq: u64, payload: &[u8]) -> Vec<u8> {
        let header = ChunkHeader {
            stream: StreamId(3),
            seq,
            kind: ChunkKind::Media,
            flags: ChunkFlags::empty(),
            timestamp_ms: seq,
            send_time_us: 0,
        };
        Chunk {
            tag: tagger.tag(&header, payload),
            header,
            payload: payload.to_vec(),
        }
        .encode()
        .unwrap_or_default()
    }

    fn check(v: &mut Box<dyn Verify + Send>, frame: &[u8]) -> Result<(), Refusal> {
        match FrameRef::decode(frame) {
            Ok(FrameRef::Chunk(c)) => v.verify(&c),
            other => panic!("not a chunk: {other:?}"),
        }
    }

    #[test]
    fn replays_are_congestion_and_bad_signatures_are_forgery() {
        let source = SourceKey::generate(&mut rand::rng());
        let public = source.public_base64();
        let tagger = Tagger::Sign(source);
        let factory = integrity_check(1.0, Arc::default());
        let mut v = factory(&keys(public));
        let good = signed(&tagger, 1, b"media");
        assert_eq!(check(&mut v, &good), Ok(()));
        // The same chunk again (a slow upstream's late copy): a replay.
        assert_eq!(check(&mut v, &good), Err(Refusal::Replayed));
        // A chunk signed by someone else: forged.
        let other = Tagger::Sign(SourceKey::generate(&mut rand::rng()));
        let forged = signed(&other, 2, b"evil");
        assert!(matches!(check(&mut v, &forged), Err(Refusal::Forged(_))));
    }

    #[test]
    fn unusable_keys_report_nobody() {
        let factory = integrity_check(1.0, Arc::default());
        let mut v = factory(&keys("not base64!".into()));
        let tagger = Tagger::Sign(SourceKey::generate(&mut rand::rng()));
        let frame = signed(&tagger, 1, b"media");
        assert!(matches!(check(&mut v, &frame), Err(Refusal::Unchecked(_))));
    }
}
