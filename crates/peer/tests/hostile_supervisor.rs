//! The peer's supervisor client against a hostile "supervisor": one with
//! the real TLS identity (the test support's fake supervisor, pinned by
//! the trust bundle) that stalls at each step of the handshake, or sends a
//! garbage, oversized or out-of-place challenge. The client must give up
//! at its deadline or at once with a clear error, never hang, never panic,
//! never buffer what it was not asked for.
//!
//! The client's deadlines are tokio timers, so these tests run on a paused
//! clock: ten seconds of stalling take no time and are exact.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use miostream_auth::AuthError;
use miostream_peer::{ClientError, Identity, SupervisorClient};
use miostream_protocol::{ComponentType, PeerMessage, SupervisorMessage, PROTOCOL_VERSION};
use miostream_test_support::fake::{FakeSupervisor, FakeWs};
use miostream_test_support::supervisor::keys;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The client's per-step deadline (`SupervisorClient::connect_as`).
const STEP: Duration = Duration::from_secs(10);

async fn connect(fake: &FakeSupervisor) -> Result<SupervisorClient, ClientError> {
    SupervisorClient::connect(
        &fake.url,
        &Identity::from_key(keys()[0].clone()),
        &fake.trust,
        ComponentType::Receiver,
    )
    .await
}

async fn send(ws: &mut FakeWs, m: &SupervisorMessage) {
    ws.send(Message::text(m.to_json())).await.unwrap();
}

async fn recv(ws: &mut FakeWs) -> PeerMessage {
    loop {
        match ws
            .next()
            .await
            .expect("the peer answers")
            .expect("the peer answers")
        {
            Message::Text(t) => return PeerMessage::from_json(&t).unwrap(),
            _ => continue,
        }
    }
}

/// The honest first steps, up to where a challenge is due.
async fn to_challenge(fake: &FakeSupervisor, ws: &mut FakeWs) {
    send(
        ws,
        &SupervisorMessage::CollectPeerInfoRequest {
            protocol_version: PROTOCOL_VERSION,
        },
    )
    .await;
    assert!(matches!(
        recv(ws).await,
        PeerMessage::CollectPeerInfoResponse { .. }
    ));
    send(
        ws,
        &SupervisorMessage::AuthenticationRequest {
            public_key: fake.key.public().to_pem().to_owned(),
        },
    )
    .await;
    assert!(matches!(
        recv(ws).await,
        PeerMessage::AuthenticationResponse {}
    ));
}

/// Where the fake stops answering.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// TCP accepted, TLS never answered.
    BeforeTls,
    /// TLS and WebSocket up, no COLLECT_PEER_INFO_REQUEST.
    BeforeFirstMessage,
    /// The peer's info read, no AUTHENTICATION_REQUEST.
    AfterPeerInfo,
    /// The peer's AUTHENTICATION_RESPONSE read, no challenge.
    BeforeChallenge,
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_that_stalls_mid_handshake_is_given_up_at_the_step_deadline() {
    let fake = FakeSupervisor::start().await;
    for stall in [
        Stall::BeforeTls,
        Stall::BeforeFirstMessage,
        Stall::AfterPeerInfo,
        Stall::BeforeChallenge,
    ] {
        let started = Instant::now();
        let (err, _held) = tokio::join!(connect(&fake), async {
            // The fake holds the connection open, silent, until the client
            // has given up (the join returns only then).
            match stall {
                Stall::BeforeTls => Held::Tcp(fake.accept_tcp().await),
                Stall::BeforeFirstMessage => Held::Ws(Box::new(fake.accept().await)),
                Stall::AfterPeerInfo => {
                    let mut ws = fake.accept().await;
                    send(
                        &mut ws,
                        &SupervisorMessage::CollectPeerInfoRequest {
                            protocol_version: PROTOCOL_VERSION,
                        },
                    )
                    .await;
                    recv(&mut ws).await;
                    Held::Ws(Box::new(ws))
                }
                Stall::BeforeChallenge => {
                    let mut ws = fake.accept().await;
                    to_challenge(&fake, &mut ws).await;
                    Held::Ws(Box::new(ws))
                }
            }
        });
        let err = err.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, ClientError::Timeout(d) if d == STEP),
            "{stall:?}: {err}"
        );
        assert!(
            err.to_string().contains("silent for 10s"),
            "{stall:?}: a clear error: {err}"
        );
        // Given up at the deadline of the step that stalled, not later.
        assert!(
            took >= STEP && took < STEP + Duration::from_millis(100),
            "{stall:?}: gave up after {took:?}"
        );
    }
}

/// What the fake keeps open while the client waits.
#[allow(dead_code)] // held only for its drop
enum Held {
    Tcp(tokio::net::TcpStream),
    Ws(Box<FakeWs>),
}

/// A challenge the client must refuse, and how.
struct BadChallenge {
    name: &'static str,
    /// Sends it on the fake's side.
    send: fn(&mut FakeWs) -> futures_util::future::BoxFuture<'_, ()>,
    /// Whether the client's error is the right one.
    expect: fn(&ClientError) -> bool,
}

fn challenge(nonce: String) -> Message {
    Message::text(SupervisorMessage::AuthenticationChallengeRequest { nonce }.to_json())
}

#[tokio::test(start_paused = true)]
async fn garbage_oversized_and_misplaced_challenges_are_refused_at_once() {
    let fake = FakeSupervisor::start().await;
    let cases = [
        BadChallenge {
            name: "not base64",
            send: |ws| {
                Box::pin(
                    async move { ws.send(challenge("@@ not base64 @@".into())).await.unwrap() },
                )
            },
            expect: |e| matches!(e, ClientError::Auth(AuthError::BadChallenge(r)) if r.contains("base64")),
        },
        BadChallenge {
            name: "random ciphertext",
            send: |ws| {
                Box::pin(async move {
                    let junk = base64::engine::general_purpose::STANDARD.encode([0x5a; 256]);
                    ws.send(challenge(junk)).await.unwrap()
                })
            },
            expect: |e| matches!(e, ClientError::Auth(AuthError::BadChallenge(r)) if r.contains("decryption")),
        },
        BadChallenge {
            name: "ciphertext far too long",
            send: |ws| {
                Box::pin(async move { ws.send(challenge("A".repeat(32 * 1024))).await.unwrap() })
            },
            expect: |e| matches!(e, ClientError::Auth(AuthError::BadChallenge(r)) if r.contains("too long")),
        },
        BadChallenge {
            name: "not JSON",
            send: |ws| {
                Box::pin(async move { ws.send(Message::text("\u{0}{{{{garbage")).await.unwrap() })
            },
            expect: |e| matches!(e, ClientError::Protocol(_)),
        },
        BadChallenge {
            name: "binary",
            send: |ws| {
                Box::pin(async move { ws.send(Message::binary(vec![0xff; 64])).await.unwrap() })
            },
            expect: |e| matches!(e, ClientError::Protocol(_)),
        },
        BadChallenge {
            name: "another message in its place",
            send: |ws| {
                Box::pin(async move {
                    ws.send(Message::text(SupervisorMessage::InjectFailure {}.to_json()))
                        .await
                        .unwrap()
                })
            },
            expect: |e| matches!(e, ClientError::Auth(AuthError::OutOfOrder { .. })),
        },
        BadChallenge {
            // A frame header claiming 1 GiB, then 1 KiB of it: the client
            // refuses it from the header (64 KiB limit), without waiting
            // for the rest or reserving room for it.
            name: "a 1 GiB frame",
            send: |ws| {
                Box::pin(async move {
                    let mut frame = vec![0x81, 127];
                    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
                    frame.extend_from_slice(&[b'{'; 1024]);
                    let tls = ws.get_mut();
                    tls.write_all(&frame).await.unwrap();
                    tls.flush().await.unwrap();
                })
            },
            expect: |e| matches!(e, ClientError::WebSocket(m) if m.to_lowercase().contains("too long") || m.to_lowercase().contains("space limit")),
        },
    ];
    for case in cases {
        let started = Instant::now();
        let (result, _ws) = tokio::join!(connect(&fake), async {
            let mut ws = fake.accept().await;
            to_challenge(&fake, &mut ws).await;
            (case.send)(&mut ws).await;
            ws
        });
        let err = result.unwrap_err();
        assert!((case.expect)(&err), "{}: wrong error: {err}", case.name);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{}: refused only after {:?}",
            case.name,
            started.elapsed()
        );
    }
}
