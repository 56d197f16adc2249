//! Round trips, every tamper, the paper's forging limit, sampling and
//! replays, plus property tests over random chunks.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use miostream_integrity::{IntegrityError, SourceKey, StreamKey, Tagger, Verdict, Verifier};
use miostream_protocol::{Chunk, ChunkFlags, ChunkHeader, ChunkKind, FrameRef, StreamId};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

const STREAM: StreamId = StreamId(42);

fn key() -> StreamKey {
    StreamKey::from_bytes([9; 32])
}

fn source() -> SourceKey {
    SourceKey::generate(&mut ChaCha20Rng::seed_from_u64(5))
}

fn chunk(seq: u64, payload: &[u8], tagger: &Tagger) -> Chunk {
    let header = ChunkHeader {
        stream: STREAM,
        seq,
        kind: ChunkKind::Media,
        flags: ChunkFlags::CLUSTER_START.with(ChunkFlags::KEYFRAME),
        timestamp_ms: 1000 + seq,
        send_time_us: 77,
    };
    Chunk {
        tag: tagger.tag(&header, payload),
        header,
        payload: payload.to_vec(),
    }
}

fn pair(mode: &str) -> (Tagger, Verifier) {
    match mode {
        "hmac" => (Tagger::Hmac(key()), Verifier::hmac(STREAM, key(), 1.0)),
        _ => {
            let s = source();
            let v = Verifier::sign(STREAM, &s.public_base64(), 1.0).unwrap();
            (Tagger::Sign(s), v)
        }
    }
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(11)
}

#[test]
fn round_trips_in_both_modes_through_the_wire_format() {
    for mode in ["hmac", "sign"] {
        let (tagger, mut v) = pair(mode);
        for seq in 0..10 {
            let c = chunk(seq, &[seq as u8; 1000], &tagger);
            let bytes = c.encode().unwrap();
            let FrameRef::Chunk(decoded) = FrameRef::decode(&bytes).unwrap() else {
                panic!()
            };
            assert_eq!(
                v.verify(&decoded, &mut rng()),
                Ok(Verdict::Verified),
                "{mode} {seq}"
            );
        }
        assert_eq!(v.counters().verified, 10);
    }
}

#[test]
fn every_tamper_is_rejected() {
    type Tamper = fn(&mut Chunk);
    let tampers: [(&str, Tamper); 9] = [
        ("payload bit", |c| c.payload[3] ^= 1),
        ("sequence", |c| c.header.seq += 1),
        ("stream id", |c| c.header.stream = StreamId(43)),
        ("kind", |c| {
            c.header.kind = ChunkKind::Init;
            c.header.flags = ChunkFlags::CLUSTER_START;
        }),
        ("flags", |c| c.header.flags = ChunkFlags::empty()),
        ("timestamp", |c| c.header.timestamp_ms += 1),
        ("send time", |c| c.header.send_time_us += 1),
        ("truncation", |c| {
            c.payload.pop();
        }),
        ("tag", |c| c.tag[0] ^= 0x80),
    ];
    for mode in ["hmac", "sign"] {
        let (tagger, _) = pair(mode);
        for (what, tamper) in tampers {
            let (_, mut v) = pair(mode);
            let mut c = chunk(5, &[1; 500], &tagger);
            tamper(&mut c);
            let err = v.verify(&c.as_ref(), &mut rng()).unwrap_err();
            if what == "stream id" {
                assert!(
                    matches!(err, IntegrityError::WrongStream { .. }),
                    "{mode}/{what}: {err}"
                );
            } else if mode == "hmac" {
                assert!(
                    matches!(err, IntegrityError::BadTag { .. }),
                    "{mode}/{what}: {err}"
                );
            } else {
                assert!(
                    matches!(err, IntegrityError::BadSignature { .. }),
                    "{mode}/{what}: {err}"
                );
            }
            assert_eq!(v.counters().rejected, 1);
        }
    }
}

#[test]
fn a_relay_holding_the_stream_key_forges_in_hmac_mode_but_not_in_sign_mode() {
    // Every authenticated receiver gets the stream key from the supervisor.
    let forger = Tagger::Hmac(key());
    let forged = chunk(3, b"not what the broadcaster sent", &forger);
    // The paper's scheme accepts it: the shared key cannot tell who tagged.
    let (_, mut hmac_verifier) = pair("hmac");
    assert_eq!(
        hmac_verifier.verify(&forged.as_ref(), &mut rng()),
        Ok(Verdict::Verified)
    );
    // With signatures only the broadcaster's key verifies: rejected.
    let (_, mut sign_verifier) = pair("sign");
    assert!(matches!(
        sign_verifier.verify(&forged.as_ref(), &mut rng()),
        Err(IntegrityError::BadSignature { .. })
    ));
    // Nor does another Ed25519 key pass for the broadcaster's.
    let impostor = Tagger::Sign(SourceKey::generate(&mut ChaCha20Rng::seed_from_u64(99)));
    let forged = chunk(4, b"x", &impostor);
    assert!(sign_verifier.verify(&forged.as_ref(), &mut rng()).is_err());
}

#[test]
fn replays_are_rejected() {
    for mode in ["hmac", "sign"] {
        let (tagger, mut v) = pair(mode);
        let c = chunk(7, &[0; 10], &tagger);
        v.verify(&c.as_ref(), &mut rng()).unwrap();
        assert!(matches!(
            v.verify(&c.as_ref(), &mut rng()),
            Err(IntegrityError::ReplayedSequence { seq: 7, .. })
        ));
        // Far newer chunks push old ones out of the window: too old is refused too.
        let late = chunk(7 + 10_000, &[0; 10], &tagger);
        v.verify(&late.as_ref(), &mut rng()).unwrap();
        let ancient = chunk(8, &[0; 10], &tagger);
        assert!(matches!(
            v.verify(&ancient.as_ref(), &mut rng()),
            Err(IntegrityError::ReplayedSequence { .. })
        ));
        // Out-of-order chunks inside the window are fine.
        let a = chunk(10_010, &[0; 10], &tagger);
        let b = chunk(10_009, &[0; 10], &tagger);
        v.verify(&a.as_ref(), &mut rng()).unwrap();
        v.verify(&b.as_ref(), &mut rng()).unwrap();
    }
}

#[test]
fn the_threshold_samples_the_expected_fraction() {
    let tagger = Tagger::Hmac(key());
    for threshold in [0.0, 0.1, 0.5, 0.9] {
        let mut v = Verifier::hmac(STREAM, key(), threshold);
        let mut r = ChaCha20Rng::seed_from_u64(2024);
        let n = 20_000u64;
        for seq in 0..n {
            v.verify(&chunk(seq, &[1], &tagger).as_ref(), &mut r)
                .unwrap();
        }
        let c = v.counters();
        assert_eq!(c.verified + c.unverified, n);
        let fraction = c.verified as f64 / n as f64;
        // 20,000 Bernoulli draws: 4 standard deviations is < 0.015.
        assert!(
            (fraction - threshold).abs() < 0.015,
            "threshold {threshold}: verified {fraction}"
        );
    }
    // Unverified chunks are accepted but a sampled forged one is not.
    let mut v = Verifier::hmac(STREAM, key(), 1.0);
    let mut bad = chunk(1, &[1], &tagger);
    bad.payload[0] = 2;
    assert!(v.verify(&bad.as_ref(), &mut rng()).is_err());
}

#[test]
fn keys_decode_with_clear_errors() {
    assert!(StreamKey::from_base64("AAAA").is_err());
    assert!(Verifier::sign(STREAM, "not base64!", 1.0).is_err());
    assert!(Verifier::for_stream(
        STREAM,
        miostream_protocol::IntegrityMode::Sign,
        "",
        None,
        1.0
    )
    .is_err());
    assert!(!format!("{:?}", key()).contains('9'));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_chunks_verify_and_any_single_byte_change_is_caught(
        seq in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        sign in any::<bool>(),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let (tagger, mut v) = pair(if sign { "sign" } else { "hmac" });
        let c = chunk(seq, &payload, &tagger);
        let mut bytes = c.encode().unwrap();
        let (tagger2, mut v2) = pair(if sign { "sign" } else { "hmac" });
        let _ = tagger2;
        let FrameRef::Chunk(ok) = FrameRef::decode(&bytes).unwrap() else { panic!() };
        prop_assert_eq!(v.verify(&ok, &mut rng()), Ok(Verdict::Verified));
        // Change one byte anywhere in the frame: it no longer decodes, or
        // no longer verifies.
        let i = at % bytes.len();
        bytes[i] ^= flip;
        if let Ok(FrameRef::Chunk(changed)) = FrameRef::decode(&bytes) {
            prop_assert!(v2.verify(&changed, &mut rng()).is_err());
        }
    }
}
