//! The transport's link lifecycle on real WebRTC over loopback, with the
//! test carrying the signaling (as the supervisor would, and dropping what
//! it would refuse): a link that never comes up is reported down, so the
//! node can offer it again; a link replaced by a newer offer never reports
//! for its successor.

#![allow(clippy::unwrap_used)] // a failed step should fail the test loudly

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use miostream_peer::transport::{TransportCommand, TransportEvent, TransportHandle};
use miostream_protocol::signal::SignalPayload;
use miostream_protocol::PeerId;
use miostream_test_support::supervisor::WAIT;
use miostream_webrtc::WebRtcConfig;

fn transport(me: PeerId) -> TransportHandle {
    let mut config = WebRtcConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
    config.answer_timeout = Duration::from_millis(300);
    miostream_webrtc::spawn(me, config).0
}

/// The next event; a transport that says nothing for [`WAIT`] is stuck.
async fn next(t: &mut TransportHandle) -> TransportEvent {
    tokio::time::timeout(WAIT, t.events.recv())
        .await
        .expect("the transport reported nothing")
        .expect("the transport stopped")
}

async fn command(t: &TransportHandle, cmd: TransportCommand) {
    t.commands.send(cmd).await.unwrap();
}

/// The next signaling event of `t`, which must be for `to`.
async fn signal_from(t: &mut TransportHandle, to: PeerId) -> SignalPayload {
    match next(t).await {
        TransportEvent::Signal {
            to: addressee,
            payload,
        } => {
            assert_eq!(addressee, to);
            payload
        }
        other => panic!("expected signaling, got {other:?}"),
    }
}

/// Carries one offer from `a` to `b` and the answer back; both links come up.
async fn link(a: &mut TransportHandle, a_id: PeerId, b: &mut TransportHandle, b_id: PeerId) {
    let offer = signal_from(a, b_id).await;
    assert!(matches!(offer, SignalPayload::Offer { .. }));
    command(
        b,
        TransportCommand::Signal {
            from: a_id,
            payload: offer,
        },
    )
    .await;
    let answer = signal_from(b, a_id).await;
    assert!(matches!(answer, SignalPayload::Answer { .. }));
    command(
        a,
        TransportCommand::Signal {
            from: b_id,
            payload: answer,
        },
    )
    .await;
    assert!(matches!(next(a).await, TransportEvent::Up(p) if p == b_id));
    assert!(matches!(next(b).await, TransportEvent::Up(p) if p == a_id));
}

/// `a` sends `frame` to `b`, and it is the next thing `b` reports.
async fn sends(
    a: &TransportHandle,
    a_id: PeerId,
    b: &mut TransportHandle,
    b_id: PeerId,
    frame: Bytes,
) {
    let send = TransportCommand::Send {
        peer: b_id,
        frame: frame.clone(),
    };
    command(a, send).await;
    match next(b).await {
        TransportEvent::Frame(from, f) => assert_eq!((from, f), (a_id, frame)),
        other => panic!("expected the frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_whose_offer_was_refused_is_reported_down_and_opens_when_offered_again() {
    let (a_id, b_id) = (PeerId::random(), PeerId::random());
    let (mut a, mut b) = (transport(a_id), transport(b_id));
    let open = || TransportCommand::Open {
        peer: b_id,
        initiator: true,
    };
    command(&a, open()).await;
    // The supervisor refuses the offer (the topology moved on): no answer.
    let _refused = signal_from(&mut a, b_id).await;
    assert!(matches!(next(&mut a).await, TransportEvent::Down(p) if p == b_id));
    // The node asks again; this time the signaling goes through.
    command(&a, open()).await;
    link(&mut a, a_id, &mut b, b_id).await;
    sends(&a, a_id, &mut b, b_id, Bytes::from_static(b"hello")).await;
    // Closing reports the link down exactly once, at once.
    command(&a, TransportCommand::Close { peer: b_id }).await;
    assert!(matches!(next(&mut a).await, TransportEvent::Down(p) if p == b_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_replaced_by_a_new_offer_never_reports_for_its_successor() {
    let (a_id, b_id) = (PeerId::random(), PeerId::random());
    let (mut a, mut b) = (transport(a_id), transport(b_id));
    command(
        &a,
        TransportCommand::Open {
            peer: b_id,
            initiator: true,
        },
    )
    .await;
    link(&mut a, a_id, &mut b, b_id).await;
    // Peer a offers b a link again (it restarted with the same id, or lost
    // the link on its side first): the new link replaces the old one at b,
    // whose end (b closes it) is not b's news.
    let _old = a;
    let mut a = transport(a_id);
    command(
        &a,
        TransportCommand::Open {
            peer: b_id,
            initiator: true,
        },
    )
    .await;
    link(&mut a, a_id, &mut b, b_id).await;
    // Frames flow on the new link; nothing from the old one (its close, or
    // frames) reaches b, which hears of a only through the new link.
    for i in 0..20u8 {
        sends(&a, a_id, &mut b, b_id, Bytes::from(vec![i; 100])).await;
    }
    command(&b, TransportCommand::Close { peer: a_id }).await;
    assert!(matches!(next(&mut b).await, TransportEvent::Down(p) if p == a_id));
}
