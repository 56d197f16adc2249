//! Both sides of the handshake of Fig. 4, message names as in the paper.
//!
//! ```text
//! supervisor                                   peer
//! COLLECT_PEER_INFO_REQUEST        ──▶
//!                                  ◀──  COLLECT_PEER_INFO_RESPONSE (id, key, role)
//!   key authorized for that role?  (else ERROR unknown_key / wrong_role)
//! AUTHENTICATION_REQUEST (its key) ──▶  key == trust bundle? (else close)
//!                                  ◀──  AUTHENTICATION_RESPONSE
//! AUTHENTICATION_CHALLENGE_REQUEST ──▶  OAEP(peer key, n1 ‖ n2)
//!                                  ◀──  AUTHENTICATION_CHALLENGE_RESPONSE
//!                                       OAEP(supervisor key, H(n1, n2, binding, ids, keys))
//! AUTHENTICATED                    ──▶
//! ```
//! `binding` is a TLS exporter secret of the connection ([`CHANNEL_BINDING_LABEL`]),
//! so the answer is only valid on the connection it was computed for. Each
//! step must arrive before a deadline; any error ends the handshake for good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, OaepPublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use miostream_protocol::signal::ErrorCode;
use miostream_protocol::{ComponentType, PeerId, PeerMessage, SupervisorMessage, PROTOCOL_VERSION};
use rand::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::keys::{KeyError, KeyFingerprint, PrivateKey, PublicKey};

/// TLS exporter label both ends use to derive the 32-byte channel binding
/// (RFC 5705 / RFC 8446 §7.5), with an empty context.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-miostream-auth-v1";
const ANSWER_DOMAIN: &[u8] = b"miostream auth answer v1\0";
const NONCE_LEN: usize = 32;
const ANSWER_LEN: usize = 32;
/// Longest base64 ciphertext accepted: an 8192-bit RSA block.
const MAX_CIPHERTEXT_B64: usize = 1400;

/// Settings of the handshake (both sides).
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Time allowed for each step (the other side's next message).
    pub step_timeout: Duration,
    /// Smallest peer RSA key accepted (≥ 2048).
    pub min_peer_key_bits: usize,
    /// Heartbeat interval announced in `AUTHENTICATED`.
    pub heartbeat_interval: Duration,
    /// Heartbeat timeout announced in `AUTHENTICATED`.
    pub heartbeat_timeout: Duration,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(5),
            min_peer_key_bits: crate::MIN_RSA_BITS,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
        }
    }
}

/// The authorized-peers list, as the handshake sees it.
pub trait Authorizer {
    /// The role a key is authorized for, if any.
    fn role_of(&self, key: &KeyFingerprint) -> Option<ComponentType>;
}

/// Why a handshake failed. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The other side speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the other side {theirs}")]
    UnsupportedVersion {
        /// Our version.
        ours: u8,
        /// Theirs.
        theirs: u8,
    },
    /// A message that this step does not expect.
    #[error("unexpected {got} while waiting for {expected}")]
    OutOfOrder {
        /// What the state expected.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The other side did not answer in time.
    #[error("handshake timed out waiting for {waiting_for}")]
    Timeout {
        /// The awaited message.
        waiting_for: &'static str,
    },
    /// The peer's key is not in the authorized list.
    #[error("peer key {0} is not authorized")]
    UnknownKey(KeyFingerprint),
    /// The key is authorized for another role.
    #[error("peer key {key} is authorized as {authorized}, not as {claimed}")]
    WrongRole {
        /// The key.
        key: KeyFingerprint,
        /// Its authorized role.
        authorized: ComponentType,
        /// The claimed role.
        claimed: ComponentType,
    },
    /// A key in a message is unusable.
    #[error("bad key: {0}")]
    BadKey(#[from] KeyError),
    /// The supervisor's key is not the one in the trust bundle.
    #[error("supervisor key {got} does not match the trust bundle ({expected})")]
    UntrustedSupervisor {
        /// Fingerprint from the trust bundle.
        expected: KeyFingerprint,
        /// Fingerprint offered.
        got: KeyFingerprint,
    },
    /// The challenge could not be decrypted or was malformed.
    #[error("malformed challenge: {0}")]
    BadChallenge(&'static str),
    /// The challenge answer is wrong (or was computed for another connection).
    #[error("wrong challenge answer")]
    BadAnswer,
    /// Encryption failed on our side.
    #[error("RSA-OAEP encryption failed: {0}")]
    Crypto(String),
    /// The supervisor refused us.
    #[error("supervisor refused: {message} ({code:?})")]
    Rejected {
        /// Its code.
        code: ErrorCode,
        /// Its reason.
        message: String,
    },
    /// The handshake failed earlier or is complete: no further input accepted.
    #[error("handshake is over")]
    Finished,
}

impl AuthError {
    /// The code the supervisor sends in its `ERROR` before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::OutOfOrder { .. } | Self::Finished => ErrorCode::OutOfOrder,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::UnknownKey(_) => ErrorCode::UnknownKey,
            Self::WrongRole { .. } => ErrorCode::WrongRole,
            Self::BadAnswer => ErrorCode::BadAnswer,
            Self::Rejected { code, .. } => *code,
            Self::BadKey(_) | Self::BadChallenge(_) | Self::UntrustedSupervisor { .. } => {
                ErrorCode::Malformed
            }
            Self::Crypto(_) => ErrorCode::Overloaded,
        }
    }
}

/// A peer that completed the handshake.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Its id for this session.
    pub peer_id: PeerId,
    /// Its authorized role.
    pub role: ComponentType,
    /// Its public key.
    pub key: PublicKey,
}

/// What the supervisor does next.
#[derive(Debug)]
pub enum SupervisorStep {
    /// Send this and wait for the next message.
    Send(SupervisorMessage),
    /// Send this (`AUTHENTICATED`): the peer is authenticated.
    Done(Authenticated, SupervisorMessage),
}

#[derive(Debug)]
enum SupervisorState {
    AwaitPeerInfo,
    AwaitAuthResponse(Authenticated),
    AwaitChallengeResponse(Authenticated, [u8; ANSWER_LEN]),
    Over,
}

/// The supervisor's side of one connection's handshake.
#[derive(Debug)]
pub struct SupervisorHandshake {
    key: Arc<PrivateKey>,
    config: HandshakeConfig,
    binding: [u8; 32],
    state: SupervisorState,
    deadline: Instant,
}

impl SupervisorHandshake {
    /// Starts a handshake on a connection whose channel binding is `binding`;
    /// returns the first message to send (`COLLECT_PEER_INFO_REQUEST`).
    pub fn start(
        key: Arc<PrivateKey>,
        config: HandshakeConfig,
        binding: [u8; 32],
        now: Instant,
    ) -> (Self, SupervisorMessage) {
        let deadline = now + config.step_timeout;
        let hs = Self {
            key,
            config,
            binding,
            state: SupervisorState::AwaitPeerInfo,
            deadline,
        };
        let first = SupervisorMessage::CollectPeerInfoRequest {
            protocol_version: PROTOCOL_VERSION,
        };
        (hs, first)
    }

    /// When the awaited message is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fails the handshake if `now` is past the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), AuthError> {
        if now < self.deadline {
            return Ok(());
        }
        let waiting_for = self.awaiting();
        self.state = SupervisorState::Over;
        Err(AuthError::Timeout { waiting_for })
    }

    fn awaiting(&self) -> &'static str {
        match self.state {
            SupervisorState::AwaitPeerInfo => "COLLECT_PEER_INFO_RESPONSE",
            SupervisorState::AwaitAuthResponse(_) => "AUTHENTICATION_RESPONSE",
            SupervisorState::AwaitChallengeResponse(..) => "AUTHENTICATION_CHALLENGE_RESPONSE",
            SupervisorState::Over => "nothing",
        }
    }

    /// Feeds the peer's next message. Any error is final.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        msg: PeerMessage,
        now: Instant,
        authorizer: &dyn Authorizer,
        rng: &mut R,
    ) -> Result<SupervisorStep, AuthError> {
        self.handle_timeout(now)?;
        let state = std::mem::replace(&mut self.state, SupervisorState::Over);
        let step = self.step(state, msg, authorizer, rng)?;
        self.deadline = now + self.config.step_timeout;
        Ok(step)
    }

    fn step<R: CryptoRng + ?Sized>(
        &mut self,
        state: SupervisorState,
        msg: PeerMessage,
        authorizer: &dyn Authorizer,
        rng: &mut R,
    ) -> Result<SupervisorStep, AuthError> {
        match (state, msg) {
            (
                SupervisorState::AwaitPeerInfo,
                PeerMessage::CollectPeerInfoResponse {
                    protocol_version,
                    peer_id,
                    public_key,
                    component_type,
                },
            ) => {
                if protocol_version != PROTOCOL_VERSION {
                    return Err(AuthError::UnsupportedVersion {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol_version,
                    });
                }
                let key = PublicKey::from_pem(&public_key, self.config.min_peer_key_bits)?;
                // Refuse unknown keys before spending any RSA operation on them.
                match authorizer.role_of(&key.fingerprint()) {
                    None => return Err(AuthError::UnknownKey(key.fingerprint())),
                    Some(role) if role != component_type => {
                        return Err(AuthError::WrongRole {
                            key: key.fingerprint(),
                            authorized: role,
                            claimed: component_type,
                        })
                    }
                    Some(_) => {}
                }
                self.state = SupervisorState::AwaitAuthResponse(Authenticated {
                    peer_id,
                    role: component_type,
                    key,
                });
                Ok(SupervisorStep::Send(
                    SupervisorMessage::AuthenticationRequest {
                        public_key: self.key.public().to_pem().to_owned(),
                    },
                ))
            }
            (SupervisorState::AwaitAuthResponse(peer), PeerMessage::AuthenticationResponse {}) => {
                let mut nonce = [0u8; NONCE_LEN];
                rng.fill_bytes(&mut nonce);
                let encrypted = encrypt(&peer.key, &nonce)?;
                let expected = answer(&nonce, &self.binding, &peer, self.key.public());
                self.state = SupervisorState::AwaitChallengeResponse(peer, expected);
                Ok(SupervisorStep::Send(
                    SupervisorMessage::AuthenticationChallengeRequest {
                        nonce: B64.encode(encrypted),
                    },
                ))
            }
            (
                SupervisorState::AwaitChallengeResponse(peer, expected),
                PeerMessage::AuthenticationChallengeResponse { answer },
            ) => {
                let got = decrypt_exact::<ANSWER_LEN>(&self.key, &answer)
                    .map_err(|_| AuthError::BadAnswer)?;
                if !bool::from(got.ct_eq(&expected)) {
                    return Err(AuthError::BadAnswer);
                }
                let done = SupervisorMessage::Authenticated {
                    peer_id: peer.peer_id,
                    heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                    heartbeat_timeout_ms: self.config.heartbeat_timeout.as_millis() as u64,
                };
                Ok(SupervisorStep::Done(peer, done))
            }
            (SupervisorState::Over, _) => Err(AuthError::Finished),
            (state, msg) => {
                self.state = state;
                let expected = self.awaiting();
                self.state = SupervisorState::Over;
                Err(AuthError::OutOfOrder {
                    expected,
                    got: msg.name(),
                })
            }
        }
    }
}

/// What the peer does next.
#[derive(Debug)]
pub enum PeerStep {
    /// Send this and wait for the next message.
    Send(PeerMessage),
    /// The supervisor accepted us.
    Authenticated {
        /// Our registered id.
        peer_id: PeerId,
        /// How often the supervisor pings.
        heartbeat_interval: Duration,
        /// Silence after which the supervisor is considered gone.
        heartbeat_timeout: Duration,
    },
}

#[derive(Debug)]
enum PeerState {
    AwaitInfoRequest,
    AwaitAuthRequest,
    AwaitChallenge,
    AwaitAuthenticated,
    Over,
}

/// The peer's side of the handshake.
#[derive(Debug)]
pub struct PeerHandshake {
    key: Arc<PrivateKey>,
    peer_id: PeerId,
    role: ComponentType,
    trusted: PublicKey,
    binding: [u8; 32],
    step_timeout: Duration,
    state: PeerState,
    deadline: Instant,
}

impl PeerHandshake {
    /// A handshake for `peer_id` in `role`, trusting only the supervisor key
    /// `trusted` (from the trust bundle), on a connection with `binding`.
    pub fn new(
        key: Arc<PrivateKey>,
        peer_id: PeerId,
        role: ComponentType,
        trusted: PublicKey,
        binding: [u8; 32],
        step_timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            key,
            peer_id,
            role,
            trusted,
            binding,
            step_timeout,
            state: PeerState::AwaitInfoRequest,
            deadline: now + step_timeout,
        }
    }

    /// When the awaited message is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fails the handshake if `now` is past the deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), AuthError> {
        if now < self.deadline {
            return Ok(());
        }
        let waiting_for = self.awaiting();
        self.state = PeerState::Over;
        Err(AuthError::Timeout { waiting_for })
    }

    fn awaiting(&self) -> &'static str {
        match self.state {
            PeerState::AwaitInfoRequest => "COLLECT_PEER_INFO_REQUEST",
            PeerState::AwaitAuthRequest => "AUTHENTICATION_REQUEST",
            PeerState::AwaitChallenge => "AUTHENTICATION_CHALLENGE_REQUEST",
            PeerState::AwaitAuthenticated => "AUTHENTICATED",
            PeerState::Over => "nothing",
        }
    }

    /// Feeds the supervisor's next message. Any error is final.
    pub fn handle(&mut self, msg: SupervisorMessage, now: Instant) -> Result<PeerStep, AuthError> {
        self.handle_timeout(now)?;
        if let SupervisorMessage::Error { code, message, .. } = msg {
            self.state = PeerState::Over;
            return Err(AuthError::Rejected { code, message });
        }
        let state = std::mem::replace(&mut self.state, PeerState::Over);
        let step = match (state, msg) {
            (
                PeerState::AwaitInfoRequest,
                SupervisorMessage::CollectPeerInfoRequest { protocol_version },
            ) => {
                if protocol_version != PROTOCOL_VERSION {
                    return Err(AuthError::UnsupportedVersion {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol_version,
                    });
                }
                self.state = PeerState::AwaitAuthRequest;
                PeerStep::Send(PeerMessage::CollectPeerInfoResponse {
                    protocol_version: PROTOCOL_VERSION,
                    peer_id: self.peer_id,
                    public_key: self.key.public().to_pem().to_owned(),
                    component_type: self.role,
                })
            }
            (
                PeerState::AwaitAuthRequest,
                SupervisorMessage::AuthenticationRequest { public_key },
            ) => {
                let offered = PublicKey::from_pem(&public_key, crate::MIN_RSA_BITS)?;
                if offered != self.trusted {
                    return Err(AuthError::UntrustedSupervisor {
                        expected: self.trusted.fingerprint(),
                        got: offered.fingerprint(),
                    });
                }
                self.state = PeerState::AwaitChallenge;
                PeerStep::Send(PeerMessage::AuthenticationResponse {})
            }
            (
                PeerState::AwaitChallenge,
                SupervisorMessage::AuthenticationChallengeRequest { nonce },
            ) => {
                let nonce = decrypt_exact::<NONCE_LEN>(&self.key, &nonce)?;
                let me = Authenticated {
                    peer_id: self.peer_id,
                    role: self.role,
                    key: self.key.public().clone(),
                };
                let value = answer(&nonce, &self.binding, &me, &self.trusted);
                let encrypted = encrypt(&self.trusted, &value)?;
                self.state = PeerState::AwaitAuthenticated;
                PeerStep::Send(PeerMessage::AuthenticationChallengeResponse {
                    answer: B64.encode(encrypted),
                })
            }
            (
                PeerState::AwaitAuthenticated,
                SupervisorMessage::Authenticated {
                    peer_id,
                    heartbeat_interval_ms,
                    heartbeat_timeout_ms,
                },
            ) if peer_id == self.peer_id => PeerStep::Authenticated {
                peer_id,
                heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
                heartbeat_timeout: Duration::from_millis(heartbeat_timeout_ms),
            },
            (PeerState::Over, _) => return Err(AuthError::Finished),
            (state, msg) => {
                self.state = state;
                let expected = self.awaiting();
                self.state = PeerState::Over;
                return Err(AuthError::OutOfOrder {
                    expected,
                    got: msg.name(),
                });
            }
        };
        self.deadline = now + self.step_timeout;
        Ok(step)
    }
}

/// The answer to a challenge: binds both random numbers to this connection,
/// both identities and both keys.
fn answer(
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    peer: &Authenticated,
    supervisor: &PublicKey,
) -> [u8; ANSWER_LEN] {
    let mut h = Sha256::new();
    h.update(ANSWER_DOMAIN);
    h.update(&nonce[..16]); // first random number
    h.update(&nonce[16..]); // second random number
    h.update(binding);
    h.update(peer.peer_id.as_bytes());
    h.update([peer.role as u8]);
    h.update(peer.key.fingerprint().0);
    h.update(supervisor.fingerprint().0);
    h.finalize().into()
}

fn decrypt_exact<const N: usize>(key: &PrivateKey, b64: &str) -> Result<[u8; N], AuthError> {
    if b64.len() > MAX_CIPHERTEXT_B64 {
        return Err(AuthError::BadChallenge("ciphertext too long"));
    }
    let ciphertext = B64
        .decode(b64)
        .map_err(|_| AuthError::BadChallenge("not base64"))?;
    let failed = |_| AuthError::BadChallenge("RSA-OAEP decryption failed");
    let oaep = OaepPrivateDecryptingKey::new(key.key.clone()).map_err(failed)?;
    let mut plain = vec![0u8; oaep.min_output_size()];
    let plain = oaep
        .decrypt(&OAEP_SHA256_MGF1SHA256, &ciphertext, &mut plain, None)
        .map_err(failed)?;
    plain
        .try_into()
        .map_err(|_| AuthError::BadChallenge("wrong plaintext length"))
}

/// RSA-OAEP (SHA-256) encryption to `key`. The padding's randomness comes
/// from aws-lc's own RNG.
fn encrypt(key: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, AuthError> {
    let crypto = |e: aws_lc_rs::error::Unspecified| AuthError::Crypto(e.to_string());
    let oaep = OaepPublicEncryptingKey::new(key.key.clone()).map_err(crypto)?;
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let len = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
        .map_err(crypto)?
        .len();
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests;
