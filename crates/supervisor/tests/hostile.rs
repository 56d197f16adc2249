//! Hostile clients against a real supervisor on loopback: keys below the
//! minimum, a duplicate peer id, binary frames, invalid UTF-8, a message
//! too large before authentication, a TLS slowloris, `max_connections`
//! reached and a peer that stops reading. Each test ends by showing that a
//! well-behaved peer is still served. (Malformed JSON, unknown keys, an
//! oversized message after authentication, floods, out-of-order and slow
//! handshakes and the unauthenticated limit: `tests/supervisor.rs`.)
//!
//! The supervisor's deadlines mix std and tokio clocks, so these tests run
//! in real time, with the limits under test set small and every wait
//! bounded by them (or by `WAIT`).

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use miostream_auth::{PeerHandshake, PeerStep, CHANNEL_BINDING_LABEL};
use miostream_peer::{ClientError, Identity, SupervisorClient, SupervisorConnection};
use miostream_protocol::signal::{ErrorCode, SignalPayload};
use miostream_protocol::{ComponentType, PeerId, PeerMessage, SupervisorMessage, TopologyKind};
use miostream_test_support::supervisor::{announce, join, keys, recv_until, TestSupervisor, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type RawWs = WebSocketStream<TlsStream<TcpStream>>;

/// A 1024-bit RSA public key (generated once with `openssl genrsa 1024`;
/// only its public half is needed: the supervisor must refuse it before
/// any RSA work).
const RSA_1024_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDUYuCoyA4bnKfk/cPD7u7pd90U
YSMX97cfmvC8hoGghUAwQ+m1B1qilFuioHgMavSckMGovoL0/0ti7xpwLAAn9wBz
7NurONddtU6LHo6TOrs9lfy2VxWP+xs6STXqMB4RI1QOy7bwBvqNEERW0r+kcJwb
SRzgrDqyBDlULvF9EwIDAQAB
-----END PUBLIC KEY-----
";

fn tls_config(sup: &TestSupervisor) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(sup.trust.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn addr(sup: &TestSupervisor) -> String {
    format!("{}:{}", sup.url.host, sup.url.port)
}

/// TLS and WebSocket by hand: the test owns the bytes under the frames.
async fn raw_ws(sup: &TestSupervisor) -> RawWs {
    let tcp = TcpStream::connect(addr(sup)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sup.url.host.clone()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_config(sup))
        .connect(name, tcp)
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(sup.url.to_string(), tls)
        .await
        .unwrap();
    ws
}

/// A client → server frame (masked, as RFC 6455 requires), whose header
/// may claim a length other than the payload's.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], claimed: Option<u64>) -> Vec<u8> {
    let len = claimed.unwrap_or(payload.len() as u64);
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Writes raw bytes under the WebSocket layer.
async fn write_raw(ws: &mut RawWs, bytes: &[u8]) {
    let tls = ws.get_mut();
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
}

async fn next_message(ws: &mut RawWs) -> Option<SupervisorMessage> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the supervisor answers within WAIT")
        {
            Some(Ok(Message::Text(t))) => return Some(SupervisorMessage::from_json(&t).unwrap()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Reads until the supervisor's fatal `ERROR` and the end of the
/// connection; returns the error's code and message.
async fn expect_cut_off(ws: &mut RawWs) -> (ErrorCode, String) {
    let mut fatal = None;
    while let Some(msg) = next_message(ws).await {
        if let SupervisorMessage::Error {
            code,
            message,
            fatal: true,
        } = msg
        {
            fatal = Some((code, message));
        }
    }
    fatal.expect("a fatal ERROR before the connection closed")
}

/// Runs the peer side of the handshake over a raw connection.
async fn authenticate(ws: &mut RawWs, sup: &TestSupervisor, key: usize) -> PeerId {
    let mut binding = [0u8; 32];
    ws.get_ref()
        .get_ref()
        .1
        .export_keying_material(&mut binding, CHANNEL_BINDING_LABEL, None)
        .unwrap();
    let mut hs = PeerHandshake::new(
        keys()[key].clone(),
        PeerId::random(),
        ComponentType::Receiver,
        sup.trust.supervisor_key.clone(),
        binding,
        WAIT,
        std::time::Instant::now(),
    );
    loop {
        let msg = next_message(ws).await.expect("handshake message");
        match hs.handle(msg, std::time::Instant::now()).unwrap() {
            PeerStep::Send(m) => ws.send(Message::text(m.to_json())).await.unwrap(),
            PeerStep::Authenticated { peer_id, .. } => return peer_id,
        }
    }
}

/// Joins `name`, which must succeed.
async fn join_ok(r: &mut SupervisorClient, name: &str) {
    let joined = join(r, name).await;
    assert!(
        matches!(joined, SupervisorMessage::StreamJoined { .. }),
        "{joined:?}"
    );
}

/// Connects with pool key `key` as peer id `id`.
async fn connect_as(
    sup: &TestSupervisor,
    key: usize,
    id: PeerId,
) -> Result<SupervisorClient, ClientError> {
    SupervisorClient::connect_as(
        &sup.url,
        &Identity::from_key(keys()[key].clone()),
        &sup.trust,
        ComponentType::Receiver,
        id,
    )
    .await
}

fn rejection(err: ClientError) -> (ErrorCode, String) {
    match err {
        ClientError::Auth(miostream_auth::AuthError::Rejected { code, message }) => (code, message),
        other => panic!("expected a rejection, got {other}"),
    }
}

/// Connects until it works (a slot freed by a closing connection is given
/// back when its task ends, just after the socket closes); fails after WAIT.
async fn connect_eventually(sup: &TestSupervisor, key: usize) -> SupervisorClient {
    let deadline = Instant::now() + WAIT;
    loop {
        match sup.connect(key, ComponentType::Receiver).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "never let in again: {e}"),
        }
    }
}

#[tokio::test]
async fn keys_below_the_minimum_are_refused_with_the_reason() {
    let sup = TestSupervisor::start(&[], &[1, 2], |c| c.auth.min_peer_key_bits = 3072).await;
    // 1024 bits: below anything the handshake accepts (aws-lc will not
    // even parse it; the reason still says it is too small).
    let mut conn = SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .unwrap();
    assert!(matches!(
        conn.recv(WAIT).await.unwrap(),
        SupervisorMessage::CollectPeerInfoRequest { .. }
    ));
    conn.send(&PeerMessage::CollectPeerInfoResponse {
        protocol_version: miostream_protocol::PROTOCOL_VERSION,
        peer_id: PeerId::random(),
        public_key: RSA_1024_PUBLIC.into(),
        component_type: ComponentType::Receiver,
    })
    .await
    .unwrap();
    match conn.recv(WAIT).await.unwrap() {
        SupervisorMessage::Error {
            code: ErrorCode::Malformed,
            message,
            fatal: true,
        } => assert!(message.contains("smaller than 3072 bits"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // 2048 bits, authorized, but below this supervisor's configured 3072.
    let (code, message) = rejection(sup.connect(1, ComponentType::Receiver).await.unwrap_err());
    assert_eq!(code, ErrorCode::Malformed);
    assert!(message.contains("2048 bits"), "{message}");
    // A 3072-bit key, authorized while the supervisor runs, gets in.
    let big = Arc::new(miostream_auth::PrivateKey::generate(3072).unwrap());
    let path = sup.dir.path().join("big.pub");
    std::fs::write(&path, big.public().to_pem()).unwrap();
    sup.state()
        .authorize(&path, ComponentType::Receiver, None)
        .unwrap();
    let identity = Identity::from_key(big);
    let deadline = Instant::now() + WAIT;
    let mut good = loop {
        match SupervisorClient::connect(&sup.url, &identity, &sup.trust, ComponentType::Receiver)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(rejection(e).0, ErrorCode::UnknownKey);
                assert!(Instant::now() < deadline, "authorization never took effect");
            }
        }
    };
    assert!(good.list_streams().await.unwrap().is_empty());
    sup.stop().await;
}

#[tokio::test]
async fn a_duplicate_peer_id_is_refused_and_the_first_session_goes_on() {
    let sup = TestSupervisor::start(&[0], &[1, 2], |_| {}).await;
    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    announce(&mut b, "cam", TopologyKind::Tree).await;
    let id = PeerId::random();
    let mut first = connect_as(&sup, 1, id).await.unwrap();
    join_ok(&mut first, "cam").await;
    // Another key claiming the same id, then the same key reconnecting while
    // its session is live: both authenticate (the id is not secret) but are
    // refused at registration, before the hub hears a message from them.
    for key in [2, 1] {
        let mut dup = connect_as(&sup, key, id).await.unwrap();
        match dup.recv().await {
            Err(ClientError::Closed { code, message }) => {
                assert_eq!(code, ErrorCode::DuplicatePeer, "{message}")
            }
            other => panic!("expected DUPLICATE_PEER, got {other:?}"),
        }
    }
    // The first session is untouched: still joined, still the root's child.
    let streams = first.list_streams().await.unwrap();
    assert_eq!(streams[0].receivers, 1);
    b.send(&PeerMessage::Signal {
        to: id,
        payload: SignalPayload::Offer { sdp: "v=0".into() },
    })
    .await
    .unwrap();
    let from = recv_until(&mut first, |m| match m {
        SupervisorMessage::Signal { from, .. } => Some(from),
        _ => None,
    })
    .await;
    assert_eq!(from, b.peer_id());
    // Once it has gone, its id is free again: a reconnection gets in.
    first.close().await;
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        let mut c = connect_as(&sup, 1, id).await.unwrap();
        match c.list_streams().await {
            Ok(_) => break c,
            Err(ClientError::Closed {
                code: ErrorCode::DuplicatePeer,
                ..
            }) => assert!(Instant::now() < deadline, "the id was never freed"),
            Err(e) => panic!("{e}"),
        }
    };
    join_ok(&mut again, "cam").await;
    assert_eq!(b.list_streams().await.unwrap()[0].receivers, 1);
    sup.stop().await;
}

#[tokio::test]
async fn binary_frames_and_invalid_utf8_are_refused_before_and_after_authentication() {
    let sup = TestSupervisor::start(&[], &[1, 2, 3], |_| {}).await;
    let mut good = sup.connect(1, ComponentType::Receiver).await.unwrap();
    // Before authentication: a binary frame.
    let mut ws = raw_ws(&sup).await;
    assert!(matches!(
        next_message(&mut ws).await,
        Some(SupervisorMessage::CollectPeerInfoRequest { .. })
    ));
    ws.send(Message::binary(b"\x01\x02".to_vec()))
        .await
        .unwrap();
    let (code, message) = expect_cut_off(&mut ws).await;
    assert_eq!(code, ErrorCode::Malformed);
    assert!(message.contains("binary"), "{message}");
    // Before authentication: a text frame that is not UTF-8.
    let mut ws = raw_ws(&sup).await;
    next_message(&mut ws).await.unwrap();
    write_raw(
        &mut ws,
        &client_frame(true, 0x1, b"{\"type\":\"\xff\xfe\"}", None),
    )
    .await;
    let (code, message) = expect_cut_off(&mut ws).await;
    assert_eq!(code, ErrorCode::Malformed);
    assert!(message.to_lowercase().contains("utf"), "{message}");
    // After authentication: both again.
    let mut ws = raw_ws(&sup).await;
    authenticate(&mut ws, &sup, 2).await;
    ws.send(Message::binary(vec![0u8; 64])).await.unwrap();
    let (code, message) = expect_cut_off(&mut ws).await;
    assert_eq!(code, ErrorCode::Malformed);
    assert!(message.contains("binary"), "{message}");
    let mut ws = raw_ws(&sup).await;
    authenticate(&mut ws, &sup, 3).await;
    write_raw(&mut ws, &client_frame(true, 0x1, b"\xc3\x28", None)).await;
    let (code, message) = expect_cut_off(&mut ws).await;
    assert_eq!(code, ErrorCode::Malformed);
    assert!(message.to_lowercase().contains("utf"), "{message}");
    // The well-behaved peer never noticed.
    assert!(good.list_streams().await.unwrap().is_empty());
    sup.stop().await;
}

#[tokio::test]
async fn an_oversized_message_before_authentication_is_refused_from_its_header() {
    let sup = TestSupervisor::start(&[], &[1], |c| {
        c.limits.max_message_bytes = 16 * 1024;
        // Far beyond the test: only the size can end these connections.
        c.auth.step_timeout_ms = 60_000;
    })
    .await;
    // A frame that claims 64 MiB; 1 KiB of it is sent, then nothing.
    let mut ws = raw_ws(&sup).await;
    next_message(&mut ws).await.unwrap();
    let started = Instant::now();
    write_raw(
        &mut ws,
        &client_frame(true, 0x1, &[b' '; 1024], Some(64 << 20)),
    )
    .await;
    let (code, message) = expect_cut_off(&mut ws).await;
    assert_eq!(code, ErrorCode::Malformed, "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused only after {:?}",
        started.elapsed()
    );
    // Fragments each within the frame limit that add up to more than the
    // message limit.
    let mut ws = raw_ws(&sup).await;
    next_message(&mut ws).await.unwrap();
    let piece = [b' '; 10 * 1024];
    write_raw(&mut ws, &client_frame(false, 0x1, &piece, None)).await;
    write_raw(&mut ws, &client_frame(false, 0x0, &piece, None)).await;
    let (code, message) = expect_cut_off(&mut ws).await;
    assert_eq!(code, ErrorCode::Malformed, "{message}");
    let mut good = sup.connect(1, ComponentType::Receiver).await.unwrap();
    assert!(good.list_streams().await.unwrap().is_empty());
    sup.stop().await;
}

/// The first TLS record a real client sends.
fn client_hello(sup: &TestSupervisor) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from(sup.url.host.clone()).unwrap();
    let mut conn = rustls::ClientConnection::new(tls_config(sup), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "a ClientHello");
    hello
}

/// Waits until the server closes `tcp` (EOF or reset); how long after
/// `since` that was.
async fn closed_after(tcp: &mut tokio::net::tcp::OwnedReadHalf, since: Instant) -> Duration {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("closed within WAIT")
        {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {} // a TLS alert
        }
    }
}

#[tokio::test]
async fn a_tls_slowloris_is_closed_at_the_handshake_deadline_and_its_slot_freed() {
    const TLS_DEADLINE: Duration = Duration::from_millis(400);
    let sup = TestSupervisor::start(&[], &[1], |c| {
        c.limits.tls_handshake_timeout_ms = TLS_DEADLINE.as_millis() as u64;
        c.limits.max_unauthenticated = 2;
    })
    .await;
    let hello = client_hello(&sup);
    // One sends nothing at all after connecting; the other dribbles a real
    // ClientHello one byte every 20 ms (it would take seconds).
    let connected = Instant::now();
    let (mut silent_rx, _silent_tx) = TcpStream::connect(addr(&sup)).await.unwrap().into_split();
    let (mut slow_rx, mut slow_tx) = TcpStream::connect(addr(&sup)).await.unwrap().into_split();
    let dribble = tokio::spawn(async move {
        for byte in hello {
            if slow_tx.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Both slots are taken: an honest peer is refused at once meanwhile.
    let refused = Instant::now();
    assert!(sup.connect(1, ComponentType::Receiver).await.is_err());
    assert!(refused.elapsed() < TLS_DEADLINE, "refused at once");
    let (silent, slow) = tokio::join!(
        closed_after(&mut silent_rx, connected),
        closed_after(&mut slow_rx, connected)
    );
    for (who, took) in [("silent", silent), ("slow", slow)] {
        assert!(
            took >= TLS_DEADLINE && took < TLS_DEADLINE * 5,
            "{who} client closed after {took:?}, the deadline is {TLS_DEADLINE:?}"
        );
    }
    dribble.abort();
    // Their slots are free again.
    let mut good = connect_eventually(&sup, 1).await;
    assert!(good.list_streams().await.unwrap().is_empty());
    sup.stop().await;
}

#[tokio::test]
async fn at_max_connections_new_ones_are_refused_at_once_and_let_in_after_others_leave() {
    let sup = TestSupervisor::start(&[], &[1, 2, 3], |c| c.limits.max_connections = 2).await;
    let mut r1 = sup.connect(1, ComponentType::Receiver).await.unwrap();
    let mut r2 = sup.connect(2, ComponentType::Receiver).await.unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let err = sup.connect(3, ComponentType::Receiver).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Tls(_) | ClientError::WebSocket(_)),
            "refused before TLS completes: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "at once");
    }
    // The two in are served as before.
    assert!(r1.list_streams().await.unwrap().is_empty());
    assert!(r2.list_streams().await.unwrap().is_empty());
    // One leaves: a new peer gets its slot.
    r1.close().await;
    let mut r3 = connect_eventually(&sup, 3).await;
    assert!(r3.list_streams().await.unwrap().is_empty());
    assert!(r2.list_streams().await.unwrap().is_empty());
    sup.stop().await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_cut_off_at_its_send_queue_and_others_go_on() {
    let sup = TestSupervisor::start(&[0], &[1, 2], |c| {
        c.limits.send_queue = 8;
        c.limits.messages_per_sec = 100_000;
        c.limits.message_burst = 100_000;
        // Only the send queue may cut it off within the test, not silence.
        c.heartbeat.timeout_ms = 60_000;
    })
    .await;
    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    announce(&mut b, "cam", TopologyKind::Tree).await;
    let mut stalled = sup.connect(1, ComponentType::Receiver).await.unwrap();
    join_ok(&mut stalled, "cam").await;
    let mut good = sup.connect(2, ComponentType::Receiver).await.unwrap();
    join_ok(&mut good, "cam").await;
    assert_eq!(b.list_streams().await.unwrap()[0].receivers, 2);
    // The broadcaster (its parent) signals it heavily; it never reads. The
    // socket buffers fill, then its queue of 8, and it is dropped.
    let victim = stalled.peer_id();
    let offer = SignalPayload::Offer {
        sdp: "a".repeat(32 * 1024),
    };
    let mut sent = 0usize;
    let flood = Instant::now();
    let cut_after = loop {
        for _ in 0..4 {
            b.send(&PeerMessage::Signal {
                to: victim,
                payload: offer.clone(),
            })
            .await
            .unwrap();
            sent += 1;
        }
        // A barrier that also drains the broadcaster's own queue.
        if b.list_streams().await.unwrap()[0].receivers == 1 {
            break sent;
        }
        assert!(
            sent < 4000,
            "still connected after {sent} messages of 32 KiB"
        );
    };
    eprintln!(
        "cut off after {cut_after} messages of 32 KiB, {:?}",
        flood.elapsed()
    );
    // The queue, not the 5 s timeout on a blocked write, cut it off.
    assert!(
        flood.elapsed() < Duration::from_secs(4),
        "cut off only after {:?}",
        flood.elapsed()
    );
    // Cut off within what the socket buffers and the queue hold (loopback
    // buffers are a few MiB each way), not after the whole flood.
    assert!(
        cut_after * 32 * 1024 < 64 << 20,
        "after {cut_after} messages"
    );
    // Everyone else goes on: the good receiver is served and the stream
    // still holds it.
    let streams = good.list_streams().await.unwrap();
    assert_eq!(streams[0].receivers, 1);
    let mut late = sup.connect(1, ComponentType::Receiver).await.unwrap();
    join_ok(&mut late, "cam").await;
    assert_eq!(b.list_streams().await.unwrap()[0].receivers, 2);
    drop(stalled);
    sup.stop().await;
}
