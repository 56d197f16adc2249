//! Signaling messages: JSON text frames between a peer and the supervisor.
//!
//! Each message is an object whose `"type"` names it; handshake messages keep
//! the paper's names (Fig. 4). Unknown types and unknown keys are errors, and
//! a message longer than [`MAX_SIGNAL_LEN`] is refused before it is parsed.
//!
//! Order of a session:
//! ```text
//! S: COLLECT_PEER_INFO_REQUEST        P: COLLECT_PEER_INFO_RESPONSE
//! S: AUTHENTICATION_REQUEST           P: AUTHENTICATION_RESPONSE
//! S: AUTHENTICATION_CHALLENGE_REQUEST P: AUTHENTICATION_CHALLENGE_RESPONSE
//! S: AUTHENTICATED
//! then any of ANNOUNCE_STREAM, LIST_STREAMS, JOIN_STREAM, LEAVE_STREAM,
//! SIGNAL, REPORT_BAD_CHUNK, QOS_REPORT from the peer, and RECONFIGURE,
//! SIGNAL, STREAM_ENDED, INJECT_FAILURE, ERROR from the supervisor.
//! ```
//!
//! Enrollment replaces the handshake on a connection: a peer holding an
//! invite answers `COLLECT_PEER_INFO_REQUEST` with `ENROLL_REQUEST` (its
//! public key and the invite's secret); the supervisor answers `ENROLLED`
//! or a fatal `ERROR` (`invite_refused`) and closes. One attempt per
//! connection; the peer then connects again and runs the handshake.
//!
//! `QOS_REPORT` and `INJECT_FAILURE` serve the monitor (paper §3.1): a
//! receiver reports its QoS about once a second, and the monitor's failure
//! injector tells a receiver to fail (crash and rejoin as a new viewer).

use serde::{Deserialize, Serialize};

use crate::{ComponentType, IntegrityMode, PeerId, StreamId, TopologyKind};

/// Largest signaling message accepted (SDP with many candidates fits easily).
pub const MAX_SIGNAL_LEN: usize = 64 * 1024;
/// Longest stream name.
pub const MAX_STREAM_NAME_LEN: usize = 128;
/// Longest stream title (characters).
pub const MAX_TITLE_LEN: usize = 200;

/// Checks a stream title: at most [`MAX_TITLE_LEN`] characters, no control
/// characters (a title is shown on one line). Empty means "no title".
pub fn check_title(title: &str) -> Result<(), String> {
    let len = title.chars().count();
    if len > MAX_TITLE_LEN {
        return Err(format!(
            "the title is {len} characters long; at most {MAX_TITLE_LEN} are allowed"
        ));
    }
    if title.chars().any(char::is_control) {
        return Err("the title must not contain control characters (newlines, tabs)".into());
    }
    Ok(())
}

/// Why a signaling message was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The text is longer than [`MAX_SIGNAL_LEN`].
    #[error("signaling message of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Message length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not valid JSON, an unknown type, a missing key, or a wrong value.
    #[error("malformed signaling message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The JSON text is not an object.
    #[error("malformed signaling message: expected a JSON object")]
    NotAnObject,
}

/// A peer's self-reported capacity, used to place faster peers nearer the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Upload bandwidth the peer measured (kbit/s, 0 = unknown): see
    /// [`PeerMessage::CapacityProbe`].
    pub upload_kbps: u32,
    /// Round-trip time to the supervisor (ms, 0 = unknown).
    pub rtt_ms: u32,
}

/// One stream as listed by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamInfo {
    /// Stream id (carried in every chunk).
    pub id: StreamId,
    /// Human name, unique on a supervisor.
    pub name: String,
    /// Overlay kind.
    pub topology: TopologyKind,
    /// Chunk integrity mode.
    pub integrity: IntegrityMode,
    /// MIME type, e.g. `video/webm; codecs="vp8,opus"`.
    pub media_type: String,
    /// Receivers currently joined.
    pub receivers: u32,
    /// The broadcaster's title (empty: none). Absent from older supervisors.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// The stream's media bitrate as the supervisor knows it (bit/s; 0 =
    /// not known yet): smoothed over its receivers' goodput reports.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bitrate_bps: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A stream's identity, carried over a supervisor restart by its broadcaster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeStream {
    /// The id it had.
    pub id: StreamId,
    /// The key it had (base64).
    pub stream_key: String,
}

/// The complete set of links of one peer in its stream's overlay, as sent in
/// `RECONFIGURE`. Primary links carry data; backup links are kept warm so a
/// peer can switch at once when a parent dies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Links {
    /// Peers that feed this one (the root is the broadcaster's id).
    pub parents: Vec<PeerId>,
    /// Peers this one feeds.
    pub children: Vec<PeerId>,
    /// Peers that stand ready to feed this one if a parent fails.
    pub backup_parents: Vec<PeerId>,
    /// Peers this one stands ready to feed.
    pub backup_children: Vec<PeerId>,
    /// Mesh neighbours (undirected: both feed each other, duplicates dropped).
    pub neighbours: Vec<PeerId>,
}

impl Links {
    /// Every peer this one must hold a connection to.
    pub fn all_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.parents
            .iter()
            .chain(&self.children)
            .chain(&self.backup_parents)
            .chain(&self.backup_children)
            .chain(&self.neighbours)
            .copied()
    }
}

/// A WebRTC signaling payload relayed between two neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SignalPayload {
    /// SDP offer.
    Offer {
        /// Session description.
        sdp: String,
    },
    /// SDP answer.
    Answer {
        /// Session description.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The candidate line (`candidate:...`).
        candidate: String,
        /// Media stream id tag, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        /// Media line index, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
}

/// Machine-readable reason in an `ERROR` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// Message not valid here (bad JSON, unknown key, wrong type).
    Malformed,
    /// A message that the current state does not expect.
    OutOfOrder,
    /// A handshake step took longer than its deadline.
    Timeout,
    /// The peer's key is not in the authorized list.
    UnknownKey,
    /// The key is authorized, but for another role.
    WrongRole,
    /// The challenge answer was wrong (or replayed from another connection).
    BadAnswer,
    /// The key's authorization was revoked.
    Revoked,
    /// No stream by that name.
    StreamNotFound,
    /// A stream by that name exists already.
    StreamExists,
    /// The request is not allowed to this peer (e.g. signaling a non-neighbour).
    Forbidden,
    /// The peer sends too fast.
    RateLimited,
    /// The supervisor is at a configured limit.
    Overloaded,
    /// The same peer id is connected already.
    DuplicatePeer,
    /// Too many bad chunks came from this peer: it was cut out of the topology.
    Misbehaving,
    /// The supervisor is shutting down.
    ShuttingDown,
    /// An enrollment's invite is unknown, used up, expired, revoked or for
    /// another role (the message says which).
    InviteRefused,
}

/// Length of an invite's secret on the wire: 32 random bytes in hex.
pub const INVITE_SECRET_LEN: usize = 64;
/// Longest label a peer's key may carry.
pub const MAX_LABEL_LEN: usize = 64;

/// An invite's one-time enrollment secret. Its `Debug` never shows it, so
/// a logged message or error cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InviteSecret(pub String);

impl std::fmt::Debug for InviteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InviteSecret(..)")
    }
}

/// The file `miostream-supervisor invite` writes (TOML, mode 0600) and
/// `enroll` reads: where the supervisor is, how to pin it, and the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteFile {
    /// Where to reach the supervisor (`wss://HOST:PORT`), tried in order.
    pub urls: Vec<String>,
    /// The role the invite enrolls.
    pub role: ComponentType,
    /// The label the enrolled key gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the invite expires (Unix seconds).
    pub expires: u64,
    /// The one-time secret.
    pub secret: InviteSecret,
    /// The supervisor's CA certificate (PEM): `trust/ca.crt`.
    pub ca_crt: String,
    /// The supervisor's RSA public key (PEM): `trust/supervisor.pub`.
    pub supervisor_pub: String,
}

/// Largest invite file a peer reads.
pub const MAX_INVITE_FILE_LEN: usize = 64 * 1024;

/// Whether `label` may label a key: 1 to [`MAX_LABEL_LEN`] characters,
/// no control characters and no `#` (the authorized list's comment mark).
pub fn valid_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() || label.trim() != label {
        return Err("a label is not empty and has no leading or trailing spaces".into());
    }
    if label.chars().count() > MAX_LABEL_LEN {
        return Err(format!("a label has at most {MAX_LABEL_LEN} characters"));
    }
    if label.chars().any(|c| c.is_control() || c == '#') {
        return Err("a label has no control characters and no '#'".into());
    }
    Ok(())
}

/// A message sent by the supervisor to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
#[non_exhaustive]
pub enum SupervisorMessage {
    /// Handshake step 1: who are you? Opens every session.
    CollectPeerInfoRequest {
        /// The supervisor's protocol version.
        protocol_version: u8,
    },
    /// Handshake step 2: the supervisor's RSA public key (SPKI PEM), which the
    /// peer checks against its trust bundle.
    AuthenticationRequest {
        /// Supervisor's public key.
        public_key: String,
    },
    /// Handshake step 3: two random numbers, RSA-OAEP encrypted to the peer's key (base64).
    AuthenticationChallengeRequest {
        /// Encrypted nonce.
        nonce: String,
    },
    /// Handshake done: the peer is AUTHENTICATED.
    Authenticated {
        /// The peer's id, as registered.
        peer_id: PeerId,
        /// How often the supervisor pings (ms).
        heartbeat_interval_ms: u64,
        /// Silence after which either side gives the other up (ms).
        heartbeat_timeout_ms: u64,
    },
    /// Answer to [`PeerMessage::EnrollRequest`]: the key is authorized now
    /// (the connection closes; connect again to authenticate).
    Enrolled {
        /// The key's fingerprint (SHA-256 of its SPKI, hex).
        fingerprint: String,
        /// The role it is authorized for.
        role: ComponentType,
        /// The invite's label, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// Answer to `ANNOUNCE_STREAM`: the stream is live.
    StreamAnnounced {
        /// The stream.
        stream: StreamInfo,
        /// Per-stream secret (base64), for `hmac` tags.
        stream_key: String,
    },
    /// Answer to `LIST_STREAMS`.
    StreamList {
        /// Live streams.
        streams: Vec<StreamInfo>,
    },
    /// Answer to `JOIN_STREAM`.
    StreamJoined {
        /// The stream.
        stream: StreamInfo,
        /// Per-stream secret (base64).
        stream_key: String,
        /// The broadcaster's Ed25519 public key (base64) in `sign` mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_key: Option<String>,
        /// The broadcaster's peer id (the root of the overlay).
        broadcaster: PeerId,
    },
    /// Your links in the stream's overlay changed: here is the full new set.
    Reconfigure {
        /// Stream.
        stream: StreamId,
        /// Increases with every change of this stream's topology.
        epoch: u64,
        /// The full new link set of the addressee.
        links: Links,
    },
    /// A signaling payload from a neighbour.
    Signal {
        /// Sender.
        from: PeerId,
        /// Payload.
        payload: SignalPayload,
    },
    /// The monitor's failure injection (paper §4.2): fail now, as a crash
    /// would (drop every link and the supervisor connection without a
    /// goodbye), then join again as a new viewer with a fresh peer id.
    InjectFailure {},
    /// Answer to [`PeerMessage::CapacityProbeRequest`]: send the probe now.
    /// The supervisor lets only a few probes run at once, so that probes of
    /// a flash crowd do not share its link and all measure it instead of
    /// their own uplinks.
    CapacityProbeGrant {},
    /// The last [`PeerMessage::CapacityProbe`] arrived: the peer divides the
    /// bytes it sent by the time until this answer to measure its uplink.
    CapacityProbeAck {
        /// Probe bytes received.
        bytes: u64,
    },
    /// The stream ended (its broadcaster left).
    StreamEnded {
        /// Stream.
        stream: StreamId,
        /// Why.
        reason: String,
    },
    /// A request failed. `fatal` errors are followed by closing the connection.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
        /// Whether the connection closes.
        fatal: bool,
    },
}

/// A message sent by a peer to the supervisor. (`PartialEq` only: a QoS
/// report carries a float.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
#[non_exhaustive]
pub enum PeerMessage {
    /// Handshake: the peer's id, RSA public key (SPKI PEM) and role.
    CollectPeerInfoResponse {
        /// The peer's protocol version.
        protocol_version: u8,
        /// Random UUIDv4 for this session.
        peer_id: PeerId,
        /// The peer's RSA public key.
        public_key: String,
        /// Broadcaster or receiver.
        component_type: ComponentType,
    },
    /// Handshake: the supervisor's key matched the trust bundle.
    AuthenticationResponse {},
    /// Instead of `COLLECT_PEER_INFO_RESPONSE`: register this key with an
    /// invite's one-time secret (see the module doc).
    EnrollRequest {
        /// The peer's protocol version.
        protocol_version: u8,
        /// The invite's secret ([`INVITE_SECRET_LEN`] hex digits).
        secret: InviteSecret,
        /// The peer's RSA public key (SPKI PEM).
        public_key: String,
        /// The role it enrolls as (must be the invite's).
        component_type: ComponentType,
    },
    /// Handshake: the answer, RSA-OAEP encrypted to the supervisor's key (base64).
    AuthenticationChallengeResponse {
        /// Encrypted answer.
        answer: String,
    },
    /// Broadcaster: start a stream.
    AnnounceStream {
        /// Unique name.
        name: String,
        /// Overlay kind.
        topology: TopologyKind,
        /// Integrity mode.
        integrity: IntegrityMode,
        /// MIME type of the media.
        media_type: String,
        /// Ed25519 public key (base64) that signs chunks, required in `sign` mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_key: Option<String>,
        /// Re-announcing after the supervisor restarted: keep the stream's id
        /// and key, so chunks already flowing between peers stay valid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeStream>,
        /// A title shown to viewers (`list`, the dashboard); see
        /// [`check_title`]. Empty or absent: none.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        title: String,
    },
    /// List live streams.
    ListStreams {},
    /// Receiver: join a stream by name.
    JoinStream {
        /// Stream name.
        name: String,
        /// Capacity, for placement.
        #[serde(default)]
        capacity: Capacity,
    },
    /// Leave the joined stream (a broadcaster leaving ends it).
    LeaveStream {},
    /// Relay a signaling payload to a neighbour.
    Signal {
        /// Addressee.
        to: PeerId,
        /// Payload.
        payload: SignalPayload,
    },
    /// A chunk from `upstream` failed verification.
    ReportBadChunk {
        /// The peer that sent it.
        upstream: PeerId,
        /// Its sequence number.
        seq: u64,
        /// Why it failed.
        reason: String,
        /// The evidence: the chunk frame as received, base64 (at most
        /// [`crate::MAX_FRAME_LEN`] bytes before encoding). The supervisor
        /// checks its tag itself: one that verifies proves the report false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chunk: Option<String>,
    },
    /// Before joining: asks for a slot to measure the uplink in; the
    /// supervisor answers [`SupervisorMessage::CapacityProbeGrant`] when
    /// one is free. Once per connection.
    CapacityProbeRequest {},
    /// Before joining, once granted: filler that measures the peer's uplink
    /// (its bytes over the time until [`SupervisorMessage::CapacityProbeAck`]).
    /// At most [`MAX_PROBE_MESSAGES`] per connection, before `JOIN_STREAM`.
    CapacityProbe {
        /// Filler (any text; its length is what counts).
        padding: String,
        /// The last one: answer now.
        last: bool,
    },
    /// The copies `upstream` sends lag those of our other upstreams by more
    /// than the receiver tolerates: its uplink does not carry its children.
    ReportLagging {
        /// The slow upstream.
        upstream: PeerId,
    },
    /// A receiver's QoS so far (sent about once a second), shown by the
    /// monitor. The supervisor keeps the latest one per peer.
    QosReport {
        /// Playback stalls.
        stalls: u64,
        /// Time stalled (ms).
        stall_ms: u64,
        /// Media buffered ahead of the play head (ms).
        buffer_ms: u64,
        /// Media bits per second since joining.
        goodput_bps: u64,
        /// Chunks received.
        chunks_received: u64,
        /// Chunks that failed verification.
        chunks_rejected: u64,
        /// Broadcaster → this receiver, median (ms): finite, 0..=1e9, kept
        /// to the microsecond (so a report survives a JSON round trip exactly).
        #[serde(deserialize_with = "millis")]
        latency_ms_p50: f64,
        /// Upstream changes after the first.
        parent_changes: u64,
        /// Broadcaster → this receiver, 99th percentile (ms), as
        /// `latency_ms_p50` (0 from receivers that predate it).
        #[serde(default, deserialize_with = "millis")]
        latency_ms_p99: f64,
        /// Media bytes received (new chunks; 0 from older receivers).
        #[serde(default)]
        bytes_received: u64,
        /// Of those, the bytes that came straight from the broadcaster: the
        /// rest is the overlay's offload.
        #[serde(default)]
        bytes_from_broadcaster: u64,
    },
}

/// Probe messages a peer may send per connection.
pub const MAX_PROBE_MESSAGES: u32 = 8;

/// Largest latency a QoS report may carry (ms): about 11 days.
pub const MAX_REPORTED_MS: f64 = 1e9;

/// Rounds a millisecond figure to the microsecond (what a QoS report keeps).
pub fn round_millis(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// A millisecond figure: finite, in `0..=MAX_REPORTED_MS`, rounded to the
/// microsecond.
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if !v.is_finite() || !(0.0..=MAX_REPORTED_MS).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "latency {v} ms is outside 0..={MAX_REPORTED_MS}"
        )));
    }
    Ok(round_millis(v))
}

fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, SignalError> {
    if text.len() > MAX_SIGNAL_LEN {
        return Err(SignalError::Oversized {
            len: text.len(),
            max: MAX_SIGNAL_LEN,
        });
    }
    let input: serde_json::Value = serde_json::from_str(text)?;
    if !input.is_object() {
        // serde would also accept a tagged enum written as an array.
        return Err(SignalError::NotAnObject);
    }
    Ok(T::deserialize(&input)?)
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain data types cannot fail: no maps with non-string
    // keys, no custom serializers.
    serde_json::to_string(value).unwrap_or_else(|e| unreachable!("serialize: {e}"))
}

impl SupervisorMessage {
    /// Parses one message, bounded by [`MAX_SIGNAL_LEN`].
    pub fn from_json(text: &str) -> Result<Self, SignalError> {
        parse(text)
    }
    /// Serializes to JSON.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
    /// The message's wire name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CollectPeerInfoRequest { .. } => "COLLECT_PEER_INFO_REQUEST",
            Self::AuthenticationRequest { .. } => "AUTHENTICATION_REQUEST",
            Self::AuthenticationChallengeRequest { .. } => "AUTHENTICATION_CHALLENGE_REQUEST",
            Self::Authenticated { .. } => "AUTHENTICATED",
            Self::Enrolled { .. } => "ENROLLED",
            Self::StreamAnnounced { .. } => "STREAM_ANNOUNCED",
            Self::StreamList { .. } => "STREAM_LIST",
            Self::StreamJoined { .. } => "STREAM_JOINED",
            Self::Reconfigure { .. } => "RECONFIGURE",
            Self::Signal { .. } => "SIGNAL",
            Self::StreamEnded { .. } => "STREAM_ENDED",
            Self::InjectFailure {} => "INJECT_FAILURE",
            Self::CapacityProbeGrant {} => "CAPACITY_PROBE_GRANT",
            Self::CapacityProbeAck { .. } => "CAPACITY_PROBE_ACK",
            Self::Error { .. } => "ERROR",
        }
    }
}

impl PeerMessage {
    /// Parses one message, bounded by [`MAX_SIGNAL_LEN`].
    pub fn from_json(text: &str) -> Result<Self, SignalError> {
        parse(text)
    }
    /// Serializes to JSON.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
    /// The message's wire name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CollectPeerInfoResponse { .. } => "COLLECT_PEER_INFO_RESPONSE",
            Self::AuthenticationResponse { .. } => "AUTHENTICATION_RESPONSE",
            Self::EnrollRequest { .. } => "ENROLL_REQUEST",
            Self::AuthenticationChallengeResponse { .. } => "AUTHENTICATION_CHALLENGE_RESPONSE",
            Self::AnnounceStream { .. } => "ANNOUNCE_STREAM",
            Self::ListStreams { .. } => "LIST_STREAMS",
            Self::JoinStream { .. } => "JOIN_STREAM",
            Self::LeaveStream { .. } => "LEAVE_STREAM",
            Self::Signal { .. } => "SIGNAL",
            Self::ReportBadChunk { .. } => "REPORT_BAD_CHUNK",
            Self::QosReport { .. } => "QOS_REPORT",
            Self::CapacityProbeRequest {} => "CAPACITY_PROBE_REQUEST",
            Self::CapacityProbe { .. } => "CAPACITY_PROBE",
            Self::ReportLagging { .. } => "REPORT_LAGGING",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_names_match_the_paper() {
        let m = SupervisorMessage::CollectPeerInfoRequest {
            protocol_version: 1,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"COLLECT_PEER_INFO_REQUEST","protocol_version":1}"#
        );
        let m = PeerMessage::AuthenticationChallengeResponse { answer: "x".into() };
        assert!(m
            .to_json()
            .starts_with(r#"{"type":"AUTHENTICATION_CHALLENGE_RESPONSE""#));
        assert_eq!(
            PeerMessage::from_json(r#"{"type":"AUTHENTICATION_RESPONSE"}"#).unwrap(),
            PeerMessage::AuthenticationResponse {}
        );
    }

    #[test]
    fn unknown_keys_and_types_are_errors() {
        for bad in [
            r#"{"type":"LIST_STREAMS","extra":1}"#,
            r#"{"type":"NOPE"}"#,
            r#"{"type":"JOIN_STREAM"}"#,
            r#"{"type":"JOIN_STREAM","name":"a","capacity":{"upload_kbps":1,"rtt_ms":2,"x":3}}"#,
            r#"{"type":"SIGNAL","to":"not-a-uuid","payload":{"kind":"offer","sdp":""}}"#,
            r#"["LIST_STREAMS"]"#,
            r#"{"type":"LIST_STREAMS""#,
            "",
        ] {
            let err = PeerMessage::from_json(bad).unwrap_err();
            assert!(
                matches!(err, SignalError::Malformed(_) | SignalError::NotAnObject),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = PeerMessage::from_json(
            r#"{"type":"SIGNAL","to":"6f1c1c1e-4bfa-4a5e-8a43-3f2f0f0e0a01","payload":{"kind":"offer","sdp":"v=0","evil":true}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("evil"), "{err}");
        let err = PeerMessage::from_json(r#"{"type":"LEAVE_STREAM","why":"bored"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `why`"), "{err}");
        // An explicit null for an optional key is accepted.
        PeerMessage::from_json(
            r#"{"type":"ANNOUNCE_STREAM","name":"a","topology":"tree","integrity":"hmac","media_type":"video/webm","signing_key":null}"#,
        )
        .unwrap();
    }

    fn qos(latency: f64) -> PeerMessage {
        PeerMessage::QosReport {
            stalls: 1,
            stall_ms: 250,
            buffer_ms: 1800,
            goodput_bps: 1_200_000,
            chunks_received: 10,
            chunks_rejected: 0,
            latency_ms_p50: latency,
            parent_changes: 2,
            latency_ms_p99: 40.25,
            bytes_received: 5000,
            bytes_from_broadcaster: 1000,
        }
    }

    #[test]
    fn qos_report_and_inject_failure_on_the_wire() {
        let m = qos(20.5);
        assert_eq!(
            m.to_json(),
            r#"{"type":"QOS_REPORT","stalls":1,"stall_ms":250,"buffer_ms":1800,"goodput_bps":1200000,"chunks_received":10,"chunks_rejected":0,"latency_ms_p50":20.5,"parent_changes":2,"latency_ms_p99":40.25,"bytes_received":5000,"bytes_from_broadcaster":1000}"#
        );
        assert_eq!(PeerMessage::from_json(&m.to_json()).unwrap(), m);
        // A report from a receiver that predates the byte counts and p99.
        let old = r#"{"type":"QOS_REPORT","stalls":1,"stall_ms":250,"buffer_ms":1800,"goodput_bps":1200000,"chunks_received":10,"chunks_rejected":0,"latency_ms_p50":20.5,"parent_changes":2}"#;
        let PeerMessage::QosReport {
            latency_ms_p99,
            bytes_received,
            bytes_from_broadcaster,
            ..
        } = PeerMessage::from_json(old).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (latency_ms_p99, bytes_received, bytes_from_broadcaster),
            (0.0, 0, 0)
        );
        assert_eq!(m.name(), "QOS_REPORT");
        let i = SupervisorMessage::InjectFailure {};
        assert_eq!(i.to_json(), r#"{"type":"INJECT_FAILURE"}"#);
        assert_eq!(SupervisorMessage::from_json(&i.to_json()).unwrap(), i);
        assert_eq!(i.name(), "INJECT_FAILURE");
    }

    #[test]
    fn qos_reports_are_checked_and_round_trip_exactly() {
        let base = r#"{"type":"QOS_REPORT","stalls":1,"stall_ms":2,"buffer_ms":3,"goodput_bps":4,"chunks_received":5,"chunks_rejected":6,"parent_changes":7,"latency_ms_p50":"#;
        for bad in [
            "-1",
            "1e10",
            "1e999",
            "null",
            "\"5\"",
            "NaN",
            "1.5,\"extra\":1",
        ] {
            let text = format!("{base}{bad}}}");
            assert!(PeerMessage::from_json(&text).is_err(), "{text}");
        }
        for bad in [
            r#"{"type":"QOS_REPORT","stalls":-1,"stall_ms":2,"buffer_ms":3,"goodput_bps":4,"chunks_received":5,"chunks_rejected":6,"parent_changes":7,"latency_ms_p50":1}"#,
            r#"{"type":"QOS_REPORT","stalls":1.5,"stall_ms":2,"buffer_ms":3,"goodput_bps":4,"chunks_received":5,"chunks_rejected":6,"parent_changes":7,"latency_ms_p50":1}"#,
            r#"{"type":"QOS_REPORT","stall_ms":2,"buffer_ms":3,"goodput_bps":4,"chunks_received":5,"chunks_rejected":6,"parent_changes":7,"latency_ms_p50":1}"#,
            r#"{"type":"INJECT_FAILURE","now":true}"#,
        ] {
            assert!(
                PeerMessage::from_json(bad).is_err() && SupervisorMessage::from_json(bad).is_err(),
                "{bad}"
            );
        }
        // Awkward floats are kept to the microsecond, and survive a round trip.
        for (text, kept) in [
            ("0.1234567890123456789", 0.123),
            ("999999999.99999", 1e9),
            ("1e-300", 0.0),
            ("0", 0.0),
            ("12.3456", 12.346),
        ] {
            let m = PeerMessage::from_json(&format!("{base}{text}}}")).unwrap();
            let PeerMessage::QosReport { latency_ms_p50, .. } = m else {
                panic!()
            };
            assert_eq!(latency_ms_p50, kept, "{text}");
            assert_eq!(PeerMessage::from_json(&m.to_json()).unwrap(), m);
        }
        // A sender's unrounded figure goes out as is and comes back rounded.
        let m = qos(1.0 / 3.0);
        assert_eq!(PeerMessage::from_json(&m.to_json()).unwrap(), qos(0.333));
    }

    #[test]
    fn enrollment_on_the_wire() {
        let m = PeerMessage::EnrollRequest {
            protocol_version: 1,
            secret: InviteSecret("ab".repeat(32)),
            public_key: "PEM".into(),
            component_type: ComponentType::Receiver,
        };
        assert!(m.to_json().starts_with(r#"{"type":"ENROLL_REQUEST""#));
        assert_eq!(PeerMessage::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(m.name(), "ENROLL_REQUEST");
        assert!(!format!("{m:?}").contains("abab"), "Debug hides the secret");
        assert!(valid_label("Alice's laptop").is_ok());
        for bad in ["", " x", "a#b", "a\nb", "x".repeat(65).as_str()] {
            assert!(valid_label(bad).is_err(), "{bad:?}");
        }
        let e = SupervisorMessage::Enrolled {
            fingerprint: "00".repeat(32),
            role: ComponentType::Broadcaster,
            label: None,
        };
        assert!(!e.to_json().contains("label"));
        assert_eq!(SupervisorMessage::from_json(&e.to_json()).unwrap(), e);
        let refused = SupervisorMessage::Error {
            code: ErrorCode::InviteRefused,
            message: "this invite is used up".into(),
            fatal: true,
        };
        assert!(refused.to_json().contains(r#""code":"invite_refused""#));
    }

    #[test]
    fn titles_are_optional_and_bounded() {
        // An announcement and a stream list from before titles parse.
        let m = PeerMessage::from_json(
            r#"{"type":"ANNOUNCE_STREAM","name":"a","topology":"tree","integrity":"hmac","media_type":"video/webm"}"#,
        )
        .unwrap();
        let PeerMessage::AnnounceStream { title, .. } = &m else {
            panic!()
        };
        assert_eq!(title, "");
        assert!(!m.to_json().contains("title"), "no title, no key");
        let list = SupervisorMessage::from_json(
            r#"{"type":"STREAM_LIST","streams":[{"id":255,"name":"a","topology":"tree","integrity":"hmac","media_type":"video/webm","receivers":2}]}"#,
        );
        let SupervisorMessage::StreamList { streams } = list.unwrap() else {
            panic!()
        };
        assert_eq!((streams[0].title.as_str(), streams[0].bitrate_bps), ("", 0));
        let with = PeerMessage::from_json(
            r#"{"type":"ANNOUNCE_STREAM","name":"a","topology":"tree","integrity":"hmac","media_type":"video/webm","title":"Friday talk"}"#,
        )
        .unwrap();
        assert!(with.to_json().contains(r#""title":"Friday talk""#));
        assert!(check_title("Friday talk: Rust & WebRTC").is_ok());
        assert!(check_title("").is_ok());
        assert!(check_title(&"é".repeat(MAX_TITLE_LEN)).is_ok());
        let long = check_title(&"x".repeat(MAX_TITLE_LEN + 1)).unwrap_err();
        assert!(long.contains("at most 200"), "{long}");
        assert!(check_title("two\nlines").is_err());
        assert!(check_title("tab\there").is_err());
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let big = format!(
            r#"{{"type":"JOIN_STREAM","name":"{}"}}"#,
            "a".repeat(MAX_SIGNAL_LEN)
        );
        assert!(matches!(
            PeerMessage::from_json(&big),
            Err(SignalError::Oversized { .. })
        ));
    }
}
