//! The link layer under a node: one bidirectional channel of frames per
//! linked peer, set up through signaling relayed by the supervisor.
//!
//! A transport is a task driven by [`TransportCommand`]s that reports
//! [`TransportEvent`]s, both over bounded queues. The WebRTC transport is the
//! real one; [`memory`] connects nodes inside one process (tests, simulation)
//! while still exchanging its offers and answers through the supervisor.

use tokio::sync::mpsc;

pub use miostream_node::link::{TransportCommand, TransportEvent};

/// A node's ends of its transport's queues.
#[derive(Debug)]
pub struct TransportHandle {
    /// Commands to the transport.
    pub commands: mpsc::Sender<TransportCommand>,
    /// Its events.
    pub events: mpsc::Receiver<TransportEvent>,
}

pub mod memory {
    //! Links inside one process. Offers and answers still travel through
    //! the supervisor, so its neighbours-only relay is exercised; frames go
    //! through a shared hub. A node whose tasks stop simply falls silent,
    //! like a killed process on another host.

    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use miostream_protocol::signal::SignalPayload;
    use miostream_protocol::PeerId;

    use super::*;

    const OFFER: &str = "memory-offer";
    const ANSWER: &str = "memory-answer";

    type Inbox = mpsc::Sender<(PeerId, Bytes)>;

    /// The shared medium: every node's inbox.
    #[derive(Debug, Default, Clone)]
    pub struct MemoryHub {
        inboxes: Arc<Mutex<HashMap<PeerId, Inbox>>>,
        forgers: Arc<Mutex<HashSet<PeerId>>>,
    }

    impl MemoryHub {
        /// A new, empty medium.
        pub fn new() -> Self {
            Self::default()
        }

        /// Starts the transport task of node `me`.
        pub fn attach(&self, me: PeerId) -> TransportHandle {
            let (cmd_tx, cmd_rx) = mpsc::channel(1024);
            let (ev_tx, ev_rx) = mpsc::channel(1024);
            let (in_tx, in_rx) = mpsc::channel(1024);
            if let Ok(mut map) = self.inboxes.lock() {
                map.insert(me, in_tx);
            }
            tokio::spawn(run(me, self.clone(), cmd_rx, in_rx, ev_tx));
            TransportHandle {
                commands: cmd_tx,
                events: ev_rx,
            }
        }

        /// Removes a node from the medium: frames to it vanish.
        pub fn detach(&self, me: PeerId) {
            if let Ok(mut map) = self.inboxes.lock() {
                map.remove(&me);
            }
        }

        fn inbox(&self, peer: PeerId) -> Option<Inbox> {
            self.inboxes.lock().ok()?.get(&peer).cloned()
        }

        /// Makes `peer` a malicious relay: every chunk it sends has a
        /// payload byte flipped (its tag no longer matches).
        pub fn set_forger(&self, peer: PeerId) {
            if let Ok(mut f) = self.forgers.lock() {
                f.insert(peer);
            }
        }

        fn is_forger(&self, peer: PeerId) -> bool {
            self.forgers.lock().is_ok_and(|f| f.contains(&peer))
        }
    }

    fn forge(frame: Bytes) -> Bytes {
        match miostream_protocol::Frame::decode(&frame) {
            Ok(miostream_protocol::Frame::Chunk(mut c)) if !c.payload.is_empty() => {
                c.payload[0] ^= 0xff;
                c.encode().map(Bytes::from).unwrap_or(frame)
            }
            _ => frame,
        }
    }

    async fn run(
        me: PeerId,
        hub: MemoryHub,
        mut commands: mpsc::Receiver<TransportCommand>,
        mut inbox: mpsc::Receiver<(PeerId, Bytes)>,
        events: mpsc::Sender<TransportEvent>,
    ) {
        let mut up: HashSet<PeerId> = HashSet::new();
        // Offers we sent and are awaiting an answer for.
        let mut offered: HashSet<PeerId> = HashSet::new();
        loop {
            let event = tokio::select! {
                c = commands.recv() => match c {
                    None => break,
                    Some(TransportCommand::Open { peer, initiator }) => {
                        if initiator && !up.contains(&peer) {
                            offered.insert(peer);
                            Some(TransportEvent::Signal { to: peer, payload: SignalPayload::Offer { sdp: OFFER.into() } })
                        } else {
                            None
                        }
                    }
                    Some(TransportCommand::Close { peer }) => {
                        offered.remove(&peer);
                        up.remove(&peer).then_some(TransportEvent::Down(peer))
                    }
                    Some(TransportCommand::Send { peer, frame }) => {
                        if up.contains(&peer) {
                            if let Some(inbox) = hub.inbox(peer) {
                                let frame = if hub.is_forger(me) { forge(frame) } else { frame };
                                // A full inbox drops the frame, as a full
                                // send buffer would.
                                let _ = inbox.try_send((me, frame));
                            }
                        }
                        None
                    }
                    Some(TransportCommand::Signal { from, payload }) => match payload {
                        SignalPayload::Offer { sdp } if sdp == OFFER => {
                            up.insert(from);
                            let answer = TransportEvent::Signal { to: from, payload: SignalPayload::Answer { sdp: ANSWER.into() } };
                            if events.send(answer).await.is_err() {
                                break;
                            }
                            Some(TransportEvent::Up(from))
                        }
                        SignalPayload::Answer { sdp } if sdp == ANSWER && offered.remove(&from) => {
                            up.insert(from).then_some(TransportEvent::Up(from))
                        }
                        _ => None,
                    },
                },
                f = inbox.recv() => match f {
                    Some((from, frame)) if up.contains(&from) => Some(TransportEvent::Frame(from, frame)),
                    // The responder's first frame can overtake its answer
                    // (as a data channel's first message can overtake the
                    // signaling): the link is up.
                    Some((from, frame)) if offered.remove(&from) => {
                        up.insert(from);
                        if events.send(TransportEvent::Up(from)).await.is_err() {
                            break;
                        }
                        Some(TransportEvent::Frame(from, frame))
                    }
                    Some(_) => None,
                    None => break,
                },
            };
            if let Some(event) = event {
                if events.send(event).await.is_err() {
                    break;
                }
            }
        }
        hub.detach(me);
    }
}
