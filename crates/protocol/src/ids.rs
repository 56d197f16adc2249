//! Identifiers and small enums shared by every message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A peer's identity for one connection: a random UUIDv4 (paper §3.3, item 1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub Uuid);

impl PeerId {
    /// A fresh random id (UUIDv4, 122 random bits).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// A fixed id (simulations and tests: the same run gets the same ids).
    pub fn from_u128(n: u128) -> Self {
        Self(Uuid::from_u128(n))
    }

    /// The id's 16 bytes, as bound into the authentication answer.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 hex digits are plenty to tell peers apart in logs.
        let s = self.0.simple().to_string();
        write!(f, "peer:{}", &s[..8])
    }
}

impl FromStr for PeerId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// A stream's id, chosen at random by the supervisor when it is announced and
/// carried in every chunk frame (so chunks of two streams cannot be spliced).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream:{:016x}", self.0)
    }
}

/// What a peer is, as claimed in `COLLECT_PEER_INFO_RESPONSE` and checked
/// against the role its key was authorized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentType {
    /// The source of one stream.
    Broadcaster,
    /// A viewer that also relays.
    Receiver,
}

impl fmt::Display for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Broadcaster => "broadcaster",
            Self::Receiver => "receiver",
        })
    }
}

impl FromStr for ComponentType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "broadcaster" => Ok(Self::Broadcaster),
            "receiver" => Ok(Self::Receiver),
            other => Err(format!(
                "unknown role {other:?} (expected broadcaster or receiver)"
            )),
        }
    }
}

/// The overlay a stream's receivers are arranged in (paper §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyKind {
    /// Each node forwards to the next, with backup links k nodes ahead.
    List,
    /// A balanced tree (fan-out 2 by default) with backup parents across branches.
    Tree,
    /// A 2D grid where each node links to its 8 neighbours.
    Mesh,
}

impl fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::List => "list",
            Self::Tree => "tree",
            Self::Mesh => "mesh",
        })
    }
}

impl FromStr for TopologyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "list" => Ok(Self::List),
            "tree" => Ok(Self::Tree),
            "mesh" => Ok(Self::Mesh),
            other => Err(format!(
                "unknown topology {other:?} (expected list, tree or mesh)"
            )),
        }
    }
}

/// How chunks are authenticated (see the `integrity` crate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrityMode {
    /// HMAC-SHA256 keyed by the stream key (the paper). Any peer holding the
    /// stream key can forge a tag.
    Hmac,
    /// Ed25519 signatures by the broadcaster: relays cannot forge.
    #[default]
    Sign,
}

impl fmt::Display for IntegrityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hmac => "hmac",
            Self::Sign => "sign",
        })
    }
}

impl FromStr for IntegrityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hmac" => Ok(Self::Hmac),
            "sign" => Ok(Self::Sign),
            other => Err(format!(
                "unknown integrity mode {other:?} (expected hmac or sign)"
            )),
        }
    }
}
