//! The running supervisor's control socket, `DIR/control.sock` (mode 0600):
//! how `authorize`, `revoke` and `peers` reach it. One request line, one
//! JSON reply line, then the connection closes:
//!
//! - `reload`: re-read the authorized list now (cutting off revoked peers)
//!   and answer once that is done, so the command's effect is in place when
//!   it returns;
//! - `peers`: who is connected now, and when each key was last seen.
//!
//! Requests are bounded (64 bytes, 5 s, a few at once). Nothing secret
//! crosses it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{io, StateDir, StateError};

/// Longest request line.
pub const MAX_REQUEST: usize = 64;
/// Time a client gets to send its request, and we to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reply a client reads.
const MAX_REPLY: u64 = 16 << 20;

/// What a control client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Re-read the authorized list now.
    Reload,
    /// Who is connected.
    Peers,
}

impl ControlRequest {
    /// Its request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reload => "reload",
            Self::Peers => "peers",
        }
    }

    /// Parses a request line.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "reload" => Some(Self::Reload),
            "peers" => Some(Self::Peers),
            _ => None,
        }
    }
}

/// One key's presence on the running supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The key's fingerprint (hex).
    pub fingerprint: String,
    /// Connections authenticated with it now.
    pub connected: u32,
    /// Last time it was connected (Unix seconds; now if it is).
    pub last_seen: u64,
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// The authorized list was re-read and applied.
    Reloaded {
        /// Keys in it.
        keys: usize,
    },
    /// Presence of every key seen since the supervisor started.
    Peers {
        /// One entry per key.
        peers: Vec<Presence>,
        /// When the supervisor started (Unix seconds).
        since: u64,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

impl StateDir {
    /// `DIR/control.sock`.
    pub fn control_path(&self) -> std::path::PathBuf {
        self.root().join("control.sock")
    }

    /// Asks the supervisor running on this directory; `None` if none runs.
    pub fn ask_running(&self, req: ControlRequest) -> Result<Option<ControlReply>, StateError> {
        let path = self.control_path();
        let mut stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(io(&path)(e)),
        };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io(&path))?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io(&path))?;
        writeln!(stream, "{}", req.as_str()).map_err(io(&path))?;
        let mut line = String::new();
        BufReader::new(stream.take(MAX_REPLY))
            .read_line(&mut line)
            .map_err(io(&path))?;
        let reply = serde_json::from_str(&line).map_err(|e| StateError::Config {
            path,
            reason: format!("bad reply from the running supervisor: {e}"),
        })?;
        Ok(Some(reply))
    }
}
