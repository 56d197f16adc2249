//! A supervisor session that survives the supervisor: it keeps one
//! authenticated connection up, reconnecting with exponential backoff (and
//! the same peer id, so peers' links stay valid) whenever it drops. The
//! node above it re-announces or re-joins on every `Connected`; the media
//! keeps flowing peer to peer in between.
//!
//! Both directions are bounded queues. Messages sent while disconnected are
//! dropped (they are signaling for a topology the supervisor will redo).

use std::time::Duration;

use miostream_protocol::signal::ErrorCode;
use miostream_protocol::{ComponentType, PeerId, PeerMessage, SupervisorMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::{ClientError, SupervisorClient, SupervisorUrl};
use crate::identity::{Identity, Trust};

/// How to reach and authenticate to the supervisor.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Supervisor URL.
    pub url: SupervisorUrl,
    /// Our key.
    pub identity: Identity,
    /// Its certificate and key.
    pub trust: Trust,
    /// Our role.
    pub role: ComponentType,
    /// Our id, kept across reconnections.
    pub peer_id: PeerId,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

/// What the session reports.
#[derive(Debug)]
pub enum SessionEvent {
    /// Authenticated (again): announce or join now.
    Connected,
    /// A message from the supervisor.
    Message(SupervisorMessage),
    /// The connection dropped; reconnecting.
    Disconnected(String),
    /// The supervisor refused us for good (unknown or revoked key, wrong
    /// role, untrusted supervisor): the session stopped.
    Failed(ClientError),
}

/// The node's end of a session.
#[derive(Debug)]
pub struct Session {
    /// Messages to the supervisor.
    pub outbound: mpsc::Sender<PeerMessage>,
    /// What happened.
    pub events: mpsc::Receiver<SessionEvent>,
    task: JoinHandle<()>,
}

impl Session {
    /// Starts the session task.
    pub fn spawn(config: SessionConfig) -> Self {
        let (out_tx, out_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let task = tokio::spawn(run(config, out_rx, ev_tx));
        Self {
            outbound: out_tx,
            events: ev_rx,
            task,
        }
    }

    /// Stops the session (closing the connection).
    pub async fn stop(self) {
        drop(self.outbound);
        let _ = self.task.await;
    }
}

/// Errors after which retrying cannot help.
fn is_final(e: &ClientError) -> bool {
    match e {
        ClientError::Auth(miostream_auth::AuthError::Rejected { code, .. }) => matches!(
            code,
            ErrorCode::UnknownKey | ErrorCode::WrongRole | ErrorCode::Revoked
        ),
        ClientError::Closed { code, .. } => {
            matches!(code, ErrorCode::Revoked | ErrorCode::Misbehaving)
        }
        ClientError::Auth(miostream_auth::AuthError::UntrustedSupervisor { .. })
        | ClientError::Url { .. } => true,
        _ => false,
    }
}

async fn run(
    config: SessionConfig,
    mut outbound: mpsc::Receiver<PeerMessage>,
    events: mpsc::Sender<SessionEvent>,
) {
    let mut backoff = config.backoff_min;
    loop {
        let connected = tokio::select! {
            c = SupervisorClient::connect_as(&config.url, &config.identity, &config.trust, config.role, config.peer_id) => c,
            // The node went away while we were connecting.
            None = wait_closed(&mut outbound) => return,
        };
        let ended = match connected {
            Ok(mut client) => {
                backoff = config.backoff_min;
                info!(url = %config.url, "connected to the supervisor");
                if events.send(SessionEvent::Connected).await.is_err() {
                    return;
                }
                let ended = serve(&mut client, &mut outbound, &events).await;
                match ended {
                    Some(e) => e,
                    None => {
                        client.close().await;
                        return;
                    }
                }
            }
            Err(e) => e,
        };
        if is_final(&ended) {
            // Final: the node reports it (a CLI prints it as its one error line).
            debug!("supervisor refused us: {ended}");
            let _ = events.send(SessionEvent::Failed(ended)).await;
            return;
        }
        warn!("supervisor connection lost: {ended}; retrying in {backoff:?}");
        if events
            .send(SessionEvent::Disconnected(ended.to_string()))
            .await
            .is_err()
        {
            return;
        }
        // Drop what was queued for the old connection, then wait.
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                m = outbound.recv() => if m.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Completes with `None` once the node dropped its sender (never otherwise
/// while messages arrive: those are discarded, we are not connected).
async fn wait_closed(outbound: &mut mpsc::Receiver<PeerMessage>) -> Option<()> {
    while outbound.recv().await.is_some() {}
    None
}

/// Relays both ways until the connection fails (`Some(error)`) or the node
/// is gone (`None`).
async fn serve(
    client: &mut SupervisorClient,
    outbound: &mut mpsc::Receiver<PeerMessage>,
    events: &mpsc::Sender<SessionEvent>,
) -> Option<ClientError> {
    loop {
        tokio::select! {
            m = client.recv() => match m {
                Ok(msg) => {
                    if events.send(SessionEvent::Message(msg)).await.is_err() {
                        return None;
                    }
                }
                Err(e) => return Some(e),
            },
            m = outbound.recv() => match m {
                Some(msg) => {
                    if let Err(e) = client.send(&msg).await {
                        return Some(e);
                    }
                }
                None => return None,
            },
        }
    }
}
