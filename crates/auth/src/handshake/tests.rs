//! Both sides wired together in memory, driven step by step with a simulated
//! clock: every reaction to a good or bad message is checked without a socket.

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::keys::tests::test_key;

struct List(HashMap<KeyFingerprint, ComponentType>);

impl Authorizer for List {
    fn role_of(&self, key: &KeyFingerprint) -> Option<ComponentType> {
        self.0.get(key).copied()
    }
}

fn arc(i: usize) -> Arc<PrivateKey> {
    // Tests share generated keys; PrivateKey is not Clone on purpose, so
    // rebuild it from its PEM.
    Arc::new(PrivateKey::from_pem(&test_key(i).to_pem().unwrap()).unwrap())
}

const SUPERVISOR: usize = 0;
const BROADCASTER: usize = 1;
const RECEIVER: usize = 2;
const STRANGER: usize = 3;

fn authorized() -> List {
    List(HashMap::from([
        (
            test_key(BROADCASTER).public().fingerprint(),
            ComponentType::Broadcaster,
        ),
        (
            test_key(RECEIVER).public().fingerprint(),
            ComponentType::Receiver,
        ),
    ]))
}

struct Pair {
    sup: SupervisorHandshake,
    peer: PeerHandshake,
    now: Instant,
    rng: ChaCha20Rng,
    list: List,
    /// Next message from the supervisor, not yet delivered.
    to_peer: Option<SupervisorMessage>,
}

impl Pair {
    fn new(peer_key: usize, role: ComponentType, binding: [u8; 32]) -> Self {
        Self::with_bindings(peer_key, role, binding, binding)
    }

    fn with_bindings(
        peer_key: usize,
        role: ComponentType,
        sup_binding: [u8; 32],
        peer_binding: [u8; 32],
    ) -> Self {
        let now = Instant::now();
        let (sup, first) = SupervisorHandshake::start(
            arc(SUPERVISOR),
            HandshakeConfig::default(),
            sup_binding,
            now,
        );
        let peer = PeerHandshake::new(
            arc(peer_key),
            PeerId::random(),
            role,
            test_key(SUPERVISOR).public().clone(),
            peer_binding,
            Duration::from_secs(5),
            now,
        );
        Self {
            sup,
            peer,
            now,
            rng: ChaCha20Rng::seed_from_u64(1),
            list: authorized(),
            to_peer: Some(first),
        }
    }

    /// Delivers the pending supervisor message to the peer and returns the
    /// peer's reply.
    fn peer_turn(&mut self) -> Result<PeerStep, AuthError> {
        let msg = self.to_peer.take().expect("a message for the peer");
        self.peer.handle(msg, self.now)
    }

    fn sup_turn(&mut self, msg: PeerMessage) -> Result<SupervisorStep, AuthError> {
        let step = self.sup.handle(msg, self.now, &self.list, &mut self.rng)?;
        match &step {
            SupervisorStep::Send(m) | SupervisorStep::Done(_, m) => self.to_peer = Some(m.clone()),
        }
        Ok(step)
    }

    fn peer_sends(&mut self) -> PeerMessage {
        match self.peer_turn().expect("peer step") {
            PeerStep::Send(m) => m,
            other => panic!("peer did not send: {other:?}"),
        }
    }

    /// Runs to the challenge response; returns it undelivered.
    fn up_to_answer(&mut self) -> PeerMessage {
        let info = self.peer_sends();
        self.sup_turn(info).unwrap();
        let ack = self.peer_sends();
        self.sup_turn(ack).unwrap();
        self.peer_sends()
    }
}

fn complete(pair: &mut Pair) -> Authenticated {
    let answer = pair.up_to_answer();
    let SupervisorStep::Done(who, _) = pair.sup_turn(answer).unwrap() else {
        panic!("not done")
    };
    match pair.peer_turn().unwrap() {
        PeerStep::Authenticated { peer_id, .. } => assert_eq!(peer_id, who.peer_id),
        other => panic!("{other:?}"),
    }
    who
}

#[test]
fn broadcaster_and_receiver_authenticate() {
    for (key, role) in [
        (BROADCASTER, ComponentType::Broadcaster),
        (RECEIVER, ComponentType::Receiver),
    ] {
        let mut pair = Pair::new(key, role, [7; 32]);
        let who = complete(&mut pair);
        assert_eq!(who.role, role);
        assert_eq!(who.key.fingerprint(), test_key(key).public().fingerprint());
    }
}

#[test]
fn unknown_key_is_refused_at_first_response() {
    let mut pair = Pair::new(STRANGER, ComponentType::Receiver, [7; 32]);
    let info = pair.peer_sends();
    let err = pair.sup_turn(info).unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey(_)), "{err}");
    assert_eq!(err.code(), ErrorCode::UnknownKey);
    // The handshake is over: nothing more is accepted.
    let again = pair
        .sup
        .handle(
            PeerMessage::AuthenticationResponse {},
            pair.now,
            &pair.list,
            &mut pair.rng,
        )
        .unwrap_err();
    assert!(matches!(again, AuthError::Finished));
}

#[test]
fn wrong_role_is_refused() {
    let mut pair = Pair::new(RECEIVER, ComponentType::Broadcaster, [7; 32]);
    let info = pair.peer_sends();
    let err = pair.sup_turn(info).unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::WrongRole {
                authorized: ComponentType::Receiver,
                claimed: ComponentType::Broadcaster,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tampered_answer_is_refused() {
    let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [7; 32]);
    let PeerMessage::AuthenticationChallengeResponse { answer } = pair.up_to_answer() else {
        panic!()
    };
    let mut bytes = B64.decode(&answer).unwrap();
    bytes[10] ^= 1;
    let err = pair
        .sup_turn(PeerMessage::AuthenticationChallengeResponse {
            answer: B64.encode(bytes),
        })
        .unwrap_err();
    assert!(matches!(err, AuthError::BadAnswer));
    // Garbage instead of base64 is a bad answer too, not a crash.
    let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [7; 32]);
    pair.up_to_answer();
    let err = pair
        .sup_turn(PeerMessage::AuthenticationChallengeResponse {
            answer: "%%%".into(),
        })
        .unwrap_err();
    assert!(matches!(err, AuthError::BadAnswer));
}

#[test]
fn answer_replayed_on_another_connection_is_refused() {
    // Connection A completes; an eavesdropper records its answer.
    let mut a = Pair::new(RECEIVER, ComponentType::Receiver, [1; 32]);
    let recorded = a.up_to_answer();
    assert!(matches!(
        a.sup_turn(recorded.clone()).unwrap(),
        SupervisorStep::Done(..)
    ));
    // Connection B: the attacker replays it (it cannot decrypt B's challenge).
    let mut b = Pair::new(RECEIVER, ComponentType::Receiver, [2; 32]);
    let _ = b.up_to_answer();
    let err = b.sup_turn(recorded).unwrap_err();
    assert!(matches!(err, AuthError::BadAnswer));
}

#[test]
fn answer_relayed_across_connections_is_refused() {
    // A man in the middle relays messages between two TLS connections: the
    // peer computes its answer for its own connection's binding, which
    // differs from the supervisor's.
    let mut mitm = Pair::with_bindings(RECEIVER, ComponentType::Receiver, [3; 32], [4; 32]);
    let answer = mitm.up_to_answer();
    assert!(matches!(mitm.sup_turn(answer), Err(AuthError::BadAnswer)));
}

#[test]
fn untrusted_supervisor_key_is_refused_by_the_peer() {
    let now = Instant::now();
    let (_sup, first) =
        SupervisorHandshake::start(arc(STRANGER), HandshakeConfig::default(), [0; 32], now);
    let mut peer = PeerHandshake::new(
        arc(RECEIVER),
        PeerId::random(),
        ComponentType::Receiver,
        test_key(SUPERVISOR).public().clone(),
        [0; 32],
        Duration::from_secs(5),
        now,
    );
    peer.handle(first, now).unwrap();
    let err = peer
        .handle(
            SupervisorMessage::AuthenticationRequest {
                public_key: test_key(STRANGER).public().to_pem().to_owned(),
            },
            now,
        )
        .unwrap_err();
    assert!(
        matches!(err, AuthError::UntrustedSupervisor { .. }),
        "{err}"
    );
}

#[test]
fn out_of_order_messages_are_refused_in_every_state() {
    type Setup = Box<dyn Fn(&mut Pair) -> PeerMessage>;
    let wrong_for_each_state: Vec<Setup> = vec![
        Box::new(|_| PeerMessage::AuthenticationResponse {}),
        Box::new(|p| {
            let info = p.peer_sends();
            p.sup_turn(info).unwrap();
            PeerMessage::ListStreams {}
        }),
        Box::new(|p| {
            let _ = p.up_to_answer();
            PeerMessage::AuthenticationResponse {}
        }),
    ];
    for (i, setup) in wrong_for_each_state.iter().enumerate() {
        let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [9; 32]);
        let wrong = setup(&mut pair);
        let err = pair.sup_turn(wrong).unwrap_err();
        assert!(
            matches!(err, AuthError::OutOfOrder { .. }),
            "state {i}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::OutOfOrder);
    }
    // And on the peer side: a challenge before the supervisor's key.
    let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [9; 32]);
    let info = pair.peer_sends();
    pair.sup_turn(info).unwrap();
    pair.to_peer = Some(SupervisorMessage::AuthenticationChallengeRequest {
        nonce: "AAAA".into(),
    });
    assert!(matches!(
        pair.peer_turn(),
        Err(AuthError::OutOfOrder { .. })
    ));
}

#[test]
fn every_step_has_a_deadline() {
    for steps_done in 0..3 {
        let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [5; 32]);
        let mut next = pair.peer_sends();
        for _ in 0..steps_done {
            pair.sup_turn(next).unwrap();
            next = pair.peer_sends();
        }
        let late = pair.sup.deadline() + Duration::from_millis(1);
        pair.now = late;
        let err = pair.sup_turn(next).unwrap_err();
        assert!(
            matches!(err, AuthError::Timeout { .. }),
            "after {steps_done}: {err}"
        );
    }
    // A step just inside its deadline passes, and the deadline moves on.
    let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [5; 32]);
    let info = pair.peer_sends();
    let first_deadline = pair.sup.deadline();
    pair.now = first_deadline - Duration::from_millis(1);
    pair.sup_turn(info).unwrap();
    assert!(pair.sup.deadline() > first_deadline);
}

#[test]
fn version_mismatch_is_refused_both_ways() {
    let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [5; 32]);
    let PeerMessage::CollectPeerInfoResponse {
        peer_id,
        public_key,
        component_type,
        ..
    } = pair.peer_sends()
    else {
        panic!()
    };
    let err = pair
        .sup_turn(PeerMessage::CollectPeerInfoResponse {
            protocol_version: PROTOCOL_VERSION + 1,
            peer_id,
            public_key,
            component_type,
        })
        .unwrap_err();
    assert!(matches!(err, AuthError::UnsupportedVersion { .. }));

    let mut pair = Pair::new(RECEIVER, ComponentType::Receiver, [5; 32]);
    pair.to_peer = Some(SupervisorMessage::CollectPeerInfoRequest {
        protocol_version: PROTOCOL_VERSION + 1,
    });
    assert!(matches!(
        pair.peer_turn(),
        Err(AuthError::UnsupportedVersion { .. })
    ));
}

#[test]
fn supervisor_error_ends_the_peer_side_with_its_reason() {
    let mut pair = Pair::new(STRANGER, ComponentType::Receiver, [5; 32]);
    let info = pair.peer_sends();
    let err = pair.sup_turn(info).unwrap_err();
    pair.to_peer = Some(SupervisorMessage::Error {
        code: err.code(),
        message: err.to_string(),
        fatal: true,
    });
    let peer_err = pair.peer_turn().unwrap_err();
    assert!(
        matches!(
            peer_err,
            AuthError::Rejected {
                code: ErrorCode::UnknownKey,
                ..
            }
        ),
        "{peer_err}"
    );
}
