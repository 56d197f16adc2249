//! The supervisor end to end: real TLS, real WebSockets on loopback (port 0),
//! real peers running the handshake. Each test starts its own supervisor and
//! stops it at the end.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::collections::HashMap;
use std::time::Duration;

use miostream_auth::{PeerHandshake, PeerStep};
use miostream_peer::{ClientError, Identity, SupervisorClient, SupervisorConnection};
use miostream_protocol::signal::{ErrorCode, Links, SignalPayload};
use miostream_protocol::{
    ComponentType, IntegrityMode, PeerId, PeerMessage, SupervisorMessage, TopologyKind,
};
use miostream_supervisor::control::{ControlReply, ControlRequest};
use miostream_test_support::supervisor::{announce, join, keys, recv_until, TestSupervisor, WAIT};

/// Drains a client's queue up to a LIST_STREAMS barrier, returning the last
/// links it was sent (everything the hub queued before the barrier).
async fn latest_links(c: &mut SupervisorClient, mut links: Option<Links>) -> Option<Links> {
    c.send(&PeerMessage::ListStreams {}).await.unwrap();
    recv_until(c, |m| match m {
        SupervisorMessage::Reconfigure { links: l, .. } => {
            links = Some(l);
            None
        }
        SupervisorMessage::StreamList { .. } => Some(()),
        _ => None,
    })
    .await;
    links
}

fn rejected_code(err: ClientError) -> ErrorCode {
    match err {
        ClientError::Auth(miostream_auth::AuthError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other}"),
    }
}

#[tokio::test]
async fn broadcaster_and_receiver_authenticate() {
    let sup = TestSupervisor::start(&[0], &[1], |_| {}).await;
    let b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    let r = sup.connect(1, ComponentType::Receiver).await.unwrap();
    assert_ne!(b.peer_id(), r.peer_id());
    b.close().await;
    r.close().await;
    sup.stop().await;
}

#[tokio::test]
async fn unknown_key_and_wrong_role_are_refused_and_the_supervisor_goes_on() {
    let sup = TestSupervisor::start(&[0], &[1], |_| {}).await;
    let err = sup.connect(5, ComponentType::Receiver).await.unwrap_err();
    assert_eq!(rejected_code(err), ErrorCode::UnknownKey);
    let err = sup
        .connect(1, ComponentType::Broadcaster)
        .await
        .unwrap_err();
    assert_eq!(rejected_code(err), ErrorCode::WrongRole);
    // Nothing else happened to the supervisor.
    sup.connect(1, ComponentType::Receiver).await.unwrap();
    sup.stop().await;
}

#[tokio::test]
async fn supervisor_key_not_in_the_trust_bundle_is_refused_by_the_peer() {
    let sup = TestSupervisor::start(&[], &[1], |_| {}).await;
    let mut trust = sup.trust.clone();
    trust.supervisor_key = keys()[7].public().clone();
    let err = SupervisorClient::connect(
        &sup.url,
        &Identity::from_key(keys()[1].clone()),
        &trust,
        ComponentType::Receiver,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Auth(miostream_auth::AuthError::UntrustedSupervisor { .. })
        ),
        "{err}"
    );
    sup.stop().await;
}

#[tokio::test]
async fn a_different_ca_fails_tls() {
    let sup = TestSupervisor::start(&[], &[1], |_| {}).await;
    let other = TestSupervisor::start(&[], &[], |_| {}).await;
    let err = SupervisorClient::connect(
        &sup.url,
        &Identity::from_key(keys()[1].clone()),
        &other.trust,
        ComponentType::Receiver,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
    other.stop().await;
    sup.stop().await;
}

/// Runs the peer side by hand up to the challenge answer.
async fn handshake_to_answer(
    sup: &TestSupervisor,
    key: usize,
) -> (SupervisorConnection, PeerMessage) {
    let mut conn = SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .unwrap();
    let mut hs = PeerHandshake::new(
        keys()[key].clone(),
        PeerId::random(),
        ComponentType::Receiver,
        sup.trust.supervisor_key.clone(),
        conn.channel_binding().unwrap(),
        WAIT,
        std::time::Instant::now(),
    );
    loop {
        let msg = conn.recv(WAIT).await.unwrap();
        match hs.handle(msg, std::time::Instant::now()).unwrap() {
            PeerStep::Send(m @ PeerMessage::AuthenticationChallengeResponse { .. }) => {
                return (conn, m)
            }
            PeerStep::Send(m) => conn.send(&m).await.unwrap(),
            PeerStep::Authenticated { .. } => unreachable!(),
        }
    }
}

async fn expect_fatal(conn: &mut SupervisorConnection, code: ErrorCode) {
    match conn.recv(WAIT).await.unwrap() {
        SupervisorMessage::Error {
            code: got,
            fatal: true,
            ..
        } => assert_eq!(got, code),
        other => panic!("expected ERROR {code:?}, got {other:?}"),
    }
    assert!(matches!(
        conn.recv(WAIT).await,
        Err(ClientError::Disconnected | ClientError::WebSocket(_))
    ));
}

#[tokio::test]
async fn wrong_and_replayed_answers_are_refused() {
    let sup = TestSupervisor::start(&[], &[1], |_| {}).await;
    // Connection A computes a valid answer (never sent): an eavesdropper's recording.
    let (_a, recorded) = handshake_to_answer(&sup, 1).await;
    // Connection B replays it instead of its own.
    let (mut b, _own) = handshake_to_answer(&sup, 1).await;
    b.send(&recorded).await.unwrap();
    expect_fatal(&mut b, ErrorCode::BadAnswer).await;
    // A wrong answer.
    let (mut c, _) = handshake_to_answer(&sup, 1).await;
    c.send(&PeerMessage::AuthenticationChallengeResponse {
        answer: "AAAA".into(),
    })
    .await
    .unwrap();
    expect_fatal(&mut c, ErrorCode::BadAnswer).await;
    sup.connect(1, ComponentType::Receiver).await.unwrap();
    sup.stop().await;
}

#[tokio::test]
async fn out_of_order_and_slow_handshakes_are_closed() {
    let sup = TestSupervisor::start(&[], &[1], |c| c.auth.step_timeout_ms = 300).await;
    let mut conn = SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .unwrap();
    assert!(matches!(
        conn.recv(WAIT).await.unwrap(),
        SupervisorMessage::CollectPeerInfoRequest { .. }
    ));
    conn.send(&PeerMessage::ListStreams {}).await.unwrap();
    expect_fatal(&mut conn, ErrorCode::OutOfOrder).await;
    // Silent after connecting: the step deadline closes it.
    let mut slow = SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .unwrap();
    slow.recv(WAIT).await.unwrap();
    expect_fatal(&mut slow, ErrorCode::Timeout).await;
    sup.stop().await;
}

#[tokio::test]
async fn streams_are_announced_listed_joined_left_and_ended() {
    let sup = TestSupervisor::start(&[0], &[1, 2], |_| {}).await;
    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    let mut r1 = sup.connect(1, ComponentType::Receiver).await.unwrap();
    let mut r2 = sup.connect(2, ComponentType::Receiver).await.unwrap();
    assert!(r1.list_streams().await.unwrap().is_empty());
    announce(&mut b, "cam", TopologyKind::Tree).await;
    let list = r1.list_streams().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].topology),
        ("cam", TopologyKind::Tree)
    );

    // Unknown stream.
    match join(&mut r1, "nope").await {
        SupervisorMessage::Error {
            code, fatal: false, ..
        } => assert_eq!(code, ErrorCode::StreamNotFound),
        other => panic!("{other:?}"),
    }
    // Join: the key is handed over, and the receiver gets its links.
    let SupervisorMessage::StreamJoined {
        stream,
        stream_key,
        broadcaster,
        ..
    } = join(&mut r1, "cam").await
    else {
        panic!()
    };
    assert_eq!(broadcaster, b.peer_id());
    assert_eq!(stream.receivers, 1);
    assert!(!stream_key.is_empty());
    let links = latest_links(&mut r1, None)
        .await
        .expect("links after joining");
    assert_eq!(links.parents, vec![b.peer_id()]);
    let b_links = latest_links(&mut b, None).await.expect("root links");
    assert!(b_links.children.contains(&r1.peer_id()));

    join(&mut r2, "cam").await;
    assert_eq!(r2.list_streams().await.unwrap()[0].receivers, 2);

    // Leave: the count drops and the root is reconfigured without r1.
    r1.send(&PeerMessage::LeaveStream {}).await.unwrap();
    let b_links = latest_links(&mut b, None).await.unwrap();
    assert!(!b_links.all_peers().any(|p| p == r1.peer_id()));
    assert_eq!(r2.list_streams().await.unwrap()[0].receivers, 1);

    // The broadcaster leaves: receivers are told the stream ended.
    b.send(&PeerMessage::LeaveStream {}).await.unwrap();
    recv_until(&mut r2, |m| {
        matches!(m, SupervisorMessage::StreamEnded { .. }).then_some(())
    })
    .await;
    assert!(r2.list_streams().await.unwrap().is_empty());
    sup.stop().await;
}

#[tokio::test]
async fn signaling_is_relayed_between_neighbours_only() {
    let receivers: Vec<usize> = (1..=6).collect();
    let sup = TestSupervisor::start(&[0], &receivers, |_| {}).await;
    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    announce(&mut b, "s", TopologyKind::Tree).await;
    let mut rs = Vec::new();
    for &i in &receivers {
        let mut r = sup.connect(i, ComponentType::Receiver).await.unwrap();
        join(&mut r, "s").await;
        rs.push(r);
    }
    let mut links = HashMap::new();
    for r in rs.iter_mut() {
        let l = latest_links(r, None).await.unwrap();
        links.insert(r.peer_id(), l);
    }
    let ids: Vec<PeerId> = rs.iter().map(|r| r.peer_id()).collect();
    let linked = |a: PeerId, b: PeerId| links[&a].all_peers().any(|p| p == b);
    // A linked pair and an unlinked pair among the receivers.
    let (a, n) = (0..ids.len())
        .flat_map(|i| (0..ids.len()).map(move |j| (i, j)))
        .find(|&(i, j)| i != j && linked(ids[i], ids[j]))
        .expect("a linked pair");
    let (x, y) = (0..ids.len())
        .flat_map(|i| (0..ids.len()).map(move |j| (i, j)))
        .find(|&(i, j)| i != j && !linked(ids[i], ids[j]) && !linked(ids[j], ids[i]))
        .expect("an unlinked pair in a tree of 6");

    let offer = SignalPayload::Offer {
        sdp: "v=0 test".into(),
    };
    rs[a]
        .send(&PeerMessage::Signal {
            to: ids[n],
            payload: offer.clone(),
        })
        .await
        .unwrap();
    let got = recv_until(&mut rs[n], |m| match m {
        SupervisorMessage::Signal { from, payload } => Some((from, payload)),
        _ => None,
    })
    .await;
    assert_eq!(got, (ids[a], offer.clone()));

    rs[x]
        .send(&PeerMessage::Signal {
            to: ids[y],
            payload: offer,
        })
        .await
        .unwrap();
    let code = recv_until(&mut rs[x], |m| match m {
        SupervisorMessage::Error {
            code, fatal: false, ..
        } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::Forbidden);
    // y never hears of it: its queue up to a barrier holds no SIGNAL.
    rs[y].send(&PeerMessage::ListStreams {}).await.unwrap();
    recv_until(&mut rs[y], |m| match m {
        SupervisorMessage::Signal { .. } => panic!("signal leaked to a non-neighbour"),
        SupervisorMessage::StreamList { .. } => Some(()),
        _ => None,
    })
    .await;
    sup.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_removed_and_its_neighbours_told() {
    let sup = TestSupervisor::start(&[0], &[1, 2], |c| {
        c.heartbeat.interval_ms = 100;
        c.heartbeat.timeout_ms = 400;
    })
    .await;
    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    announce(&mut b, "live", TopologyKind::List).await;
    // The broadcaster stays responsive: something reads its messages.
    let keep_b = tokio::spawn(async move { while b.recv().await.is_ok() {} });
    let mut r1 = sup.connect(1, ComponentType::Receiver).await.unwrap();
    join(&mut r1, "live").await;
    let r2 = sup.connect(2, ComponentType::Receiver).await.unwrap();
    let silent = r2.peer_id();
    let mut r2 = r2;
    join(&mut r2, "live").await;
    // r2 now stops reading and sending (a frozen process): no pongs go out.
    let links = latest_links(&mut r1, None).await.unwrap();
    assert!(
        links.all_peers().any(|p| p == silent),
        "r1 is linked to r2 first"
    );
    // r1 keeps reading (answering pings) until a RECONFIGURE drops r2.
    recv_until(&mut r1, |m| match m {
        SupervisorMessage::Reconfigure { links, .. } => {
            (!links.all_peers().any(|p| p == silent)).then_some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(r1.list_streams().await.unwrap()[0].receivers, 1);
    drop(r2);
    sup.stop().await;
    keep_b.await.unwrap();
}

#[tokio::test]
async fn malformed_oversized_and_flooding_clients_are_cut_off_others_are_served() {
    let sup = TestSupervisor::start(&[0], &[1, 2, 3, 4], |c| {
        c.limits.message_burst = 20;
        c.limits.messages_per_sec = 10;
        c.limits.max_message_bytes = 16 * 1024;
    })
    .await;
    let mut good = sup.connect(4, ComponentType::Receiver).await.unwrap();

    let mut bad_json = sup.connect(1, ComponentType::Receiver).await.unwrap();
    bad_json
        .send_raw("{\"type\":\"LIST_STREAMS\"".into())
        .await
        .unwrap();
    let err = recv_until(&mut bad_json, |m| match m {
        SupervisorMessage::Error {
            code, fatal: true, ..
        } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(err, ErrorCode::Malformed);

    let mut unknown_key = sup.connect(2, ComponentType::Receiver).await.unwrap();
    unknown_key
        .send_raw(r#"{"type":"LIST_STREAMS","admin":true}"#.into())
        .await
        .unwrap();
    let err = recv_until(&mut unknown_key, |m| match m {
        SupervisorMessage::Error {
            code, fatal: true, ..
        } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(err, ErrorCode::Malformed);

    let mut huge = sup.connect(3, ComponentType::Receiver).await.unwrap();
    let _ = huge.send_raw("x".repeat(100 * 1024)).await;
    // The supervisor drops it without reading 100 KB into a message.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match huge
            .recv_within(deadline - tokio::time::Instant::now())
            .await
        {
            Ok(SupervisorMessage::Error { fatal: true, .. })
            | Err(ClientError::Disconnected | ClientError::WebSocket(_)) => break,
            Ok(_) => continue,
            Err(e) => panic!("expected to be cut off, got {e}"),
        }
    }

    let mut flood = sup.connect(1, ComponentType::Receiver).await.unwrap();
    let mut sent = 0;
    for _ in 0..200 {
        if flood.send(&PeerMessage::ListStreams {}).await.is_err() {
            break;
        }
        sent += 1;
    }
    let code = recv_until(&mut flood, |m| match m {
        SupervisorMessage::Error {
            code, fatal: true, ..
        } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::RateLimited, "after {sent} messages");

    // The well-behaved peer is still served.
    assert!(good.list_streams().await.unwrap().is_empty());
    let mut b = sup.connect(0, ComponentType::Broadcaster).await.unwrap();
    announce(&mut b, "still-up", TopologyKind::Mesh).await;
    assert_eq!(good.list_streams().await.unwrap().len(), 1);
    sup.stop().await;
}

#[tokio::test]
async fn revoking_a_key_cuts_off_its_connected_peer() {
    let sup = TestSupervisor::start(&[], &[1, 2], |_| {}).await;
    let mut r1 = sup.connect(1, ComponentType::Receiver).await.unwrap();
    let mut r2 = sup.connect(2, ComponentType::Receiver).await.unwrap();
    let path = TestSupervisor::write_pub(&sup.dir, 1);
    // As `miostream-supervisor revoke` does: edit the list, then tell the
    // running supervisor (a blocking call: off the runtime's thread).
    let state = sup.state();
    tokio::task::spawn_blocking(move || {
        state.revoke(&path).unwrap();
        let reply = state.ask_running(ControlRequest::Reload).unwrap();
        assert!(
            matches!(reply, Some(ControlReply::Reloaded { keys: 1 })),
            "{reply:?}"
        );
    })
    .await
    .unwrap();
    // Cut off by the time the command returns: the ERROR is queued already.
    let code = recv_until(&mut r1, |m| match m {
        SupervisorMessage::Error {
            code, fatal: true, ..
        } => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::Revoked);
    let err = sup.connect(1, ComponentType::Receiver).await.unwrap_err();
    assert_eq!(rejected_code(err), ErrorCode::UnknownKey);
    // The other peer is untouched.
    r2.list_streams().await.unwrap();
    // Authorizing takes effect on the very next attempt, with no notice to
    // the running supervisor at all: every handshake checks the file.
    let path = TestSupervisor::write_pub(&sup.dir, 1);
    sup.state()
        .authorize(&path, ComponentType::Receiver, Some("second try"))
        .unwrap();
    sup.connect(1, ComponentType::Receiver).await.unwrap();
    // So does a revocation, for a new attempt.
    sup.state().revoke(&path).unwrap();
    let err = sup.connect(1, ComponentType::Receiver).await.unwrap_err();
    assert_eq!(rejected_code(err), ErrorCode::UnknownKey);
    sup.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_unauthenticated_limit_are_closed_at_once() {
    let sup = TestSupervisor::start(&[], &[1], |c| {
        c.limits.max_unauthenticated = 2;
        c.auth.step_timeout_ms = 500;
    })
    .await;
    let mut pending = Vec::new();
    for _ in 0..2 {
        let mut c = SupervisorConnection::open(&sup.url, &sup.trust)
            .await
            .unwrap();
        c.recv(WAIT).await.unwrap(); // it got its COLLECT_PEER_INFO_REQUEST
        pending.push(c);
    }
    // A third is refused before TLS completes.
    assert!(SupervisorConnection::open(&sup.url, &sup.trust)
        .await
        .is_err());
    // Once the pending ones time out, a real peer gets in.
    for mut c in pending {
        expect_fatal(&mut c, ErrorCode::Timeout).await;
    }
    sup.connect(1, ComponentType::Receiver).await.unwrap();
    sup.stop().await;
}

async fn next_event(session: &mut miostream_peer::Session) -> miostream_peer::SessionEvent {
    tokio::time::timeout(WAIT, session.events.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn sessions_reconnect_and_resume_their_stream_when_the_supervisor_restarts() {
    use miostream_peer::{Session, SessionConfig, SessionEvent};
    use miostream_protocol::signal::ResumeStream;

    let mut sup = TestSupervisor::start(&[0], &[], |_| {}).await;
    let mut session = Session::spawn(SessionConfig {
        url: sup.url.clone(),
        identity: Identity::from_key(keys()[0].clone()),
        trust: sup.trust.clone(),
        role: ComponentType::Broadcaster,
        peer_id: PeerId::random(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    });
    assert!(matches!(
        next_event(&mut session).await,
        SessionEvent::Connected
    ));
    let announce = |resume| PeerMessage::AnnounceStream {
        name: "cam".into(),
        topology: TopologyKind::Tree,
        integrity: IntegrityMode::Hmac,
        media_type: "video/webm".into(),
        signing_key: None,
        resume,
        title: String::new(),
    };
    session.outbound.send(announce(None)).await.unwrap();
    let SessionEvent::Message(SupervisorMessage::StreamAnnounced { stream, stream_key }) =
        next_event(&mut session).await
    else {
        panic!("no STREAM_ANNOUNCED")
    };

    sup.restart().await;
    loop {
        match next_event(&mut session).await {
            SessionEvent::Disconnected(_) | SessionEvent::Message(_) => continue,
            SessionEvent::Connected => break,
            SessionEvent::Failed(e) => panic!("{e}"),
        }
    }
    let resume = ResumeStream {
        id: stream.id,
        stream_key: stream_key.clone(),
    };
    session.outbound.send(announce(Some(resume))).await.unwrap();
    match next_event(&mut session).await {
        SessionEvent::Message(SupervisorMessage::StreamAnnounced {
            stream: again,
            stream_key: key,
        }) => {
            assert_eq!((again.id, key), (stream.id, stream_key));
        }
        other => panic!("{other:?}"),
    }
    session.stop().await;
    sup.stop().await;
}

#[tokio::test]
async fn a_session_with_an_unknown_key_stops_instead_of_retrying() {
    use miostream_peer::{Session, SessionConfig, SessionEvent};
    let sup = TestSupervisor::start(&[], &[], |_| {}).await;
    let mut session = Session::spawn(SessionConfig {
        url: sup.url.clone(),
        identity: Identity::from_key(keys()[3].clone()),
        trust: sup.trust.clone(),
        role: ComponentType::Receiver,
        peer_id: PeerId::random(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    });
    let event = tokio::time::timeout(WAIT, session.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, SessionEvent::Failed(_)), "{event:?}");
    session.stop().await;
    sup.stop().await;
}
