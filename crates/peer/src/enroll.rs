//! Enrollment and the peer's profile: what lets `run`, `list` and `watch`
//! go without `--supervisor`, `--identity` and `--trust`.
//!
//! ```text
//! $XDG_DATA_HOME/miostream/ROLE/peer.key (0600), peer.pub   the identity
//! $XDG_CONFIG_HOME/miostream/ROLE.toml                      URL(s) + trust bundle
//! ```
//! (`~/.local/share` and `~/.config` without the XDG variables; ROLE is
//! `receiver` or `broadcaster`, so the two never share a key.)
//!
//! [`enroll`] reads an invite, creates the identity if there is none,
//! registers its public key over TLS pinned to the invite's CA with the
//! invite's secret (`ENROLL_REQUEST`), and writes the profile.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use miostream_protocol::signal::{ErrorCode, InviteFile, MAX_INVITE_FILE_LEN};
use miostream_protocol::{ComponentType, PeerMessage, SupervisorMessage, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, SupervisorConnection, SupervisorUrl};
use crate::identity::{keygen, Identity, IdentityError, Trust};

/// Why enrolling, or finding the enrolled profile, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The identity or trust bundle is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A URL is unusable.
    #[error(transparent)]
    Url(#[from] ClientError),
    /// No home directory to keep the identity and profile in.
    #[error("neither XDG_DATA_HOME/XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
    /// The invite is for the other binary.
    #[error("this invite is for a {invite}: use miostream-{invite} enroll")]
    WrongBinary {
        /// The invite's role.
        invite: ComponentType,
    },
    /// The supervisor refused the invite (used up, expired, revoked…).
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// No URL of the invite led to the supervisor.
    #[error("cannot reach the supervisor: {0}")]
    Unreachable(String),
    /// Not enrolled, and the flags do not say where to connect.
    #[error(
        "not enrolled as a {role} ({profile} does not exist): run `miostream-{role} enroll INVITE` \
         or pass --supervisor, --identity and --trust"
    )]
    NotEnrolled {
        /// The role.
        role: ComponentType,
        /// The missing profile.
        profile: String,
    },
}

fn file_err(path: &Path, reason: impl ToString) -> EnrollError {
    EnrollError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// What `enroll` stores in the XDG config directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The supervisor's URL(s), the one enrollment reached first.
    pub supervisor: Vec<String>,
    /// The label the supervisor gave this key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The supervisor's CA certificate (PEM).
    pub ca_crt: String,
    /// The supervisor's RSA public key (PEM).
    pub supervisor_pub: String,
}

/// Where a role's identity and profile live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPaths {
    /// The identity directory (`peer.key`, `peer.pub`).
    pub identity: PathBuf,
    /// The profile file.
    pub profile: PathBuf,
}

impl PeerPaths {
    /// From the environment: `XDG_DATA_HOME`, `XDG_CONFIG_HOME`, `HOME`.
    pub fn from_env(role: ComponentType) -> Result<Self, EnrollError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME");
        let data = var("XDG_DATA_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".local/share")))
            .ok_or(EnrollError::NoHome)?;
        let config = var("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .ok_or(EnrollError::NoHome)?;
        Ok(Self::under(&data, &config, role))
    }

    /// Under explicit data and config directories.
    pub fn under(data: &Path, config: &Path, role: ComponentType) -> Self {
        Self {
            identity: data.join("miostream").join(role.to_string()),
            profile: config.join("miostream").join(format!("{role}.toml")),
        }
    }
}

/// What enrolling did.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// Whether the identity was created now (else an existing one was used).
    pub new_identity: bool,
    /// The supervisor reached.
    pub supervisor: String,
    /// The label the key got.
    pub label: Option<String>,
    /// Where things were written.
    pub paths: PeerPaths,
}

impl std::fmt::Display for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "enrolled {}", self.fingerprint)?;
        if let Some(label) = &self.label {
            write!(f, " as {label:?}")?;
        }
        write!(
            f,
            " with {} ({} identity in {}; profile {})",
            self.supervisor,
            if self.new_identity { "new" } else { "existing" },
            self.paths.identity.display(),
            self.paths.profile.display()
        )
    }
}

/// Reads an invite file (bounded).
pub fn read_invite(path: &Path) -> Result<InviteFile, EnrollError> {
    let meta = fs::metadata(path).map_err(|e| file_err(path, e))?;
    if meta.len() > MAX_INVITE_FILE_LEN as u64 {
        return Err(file_err(
            path,
            format!(
                "{} bytes: not an invite (at most {MAX_INVITE_FILE_LEN})",
                meta.len()
            ),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    toml::from_str(&text).map_err(|e| file_err(path, format!("not an invite: {}", e.message())))
}

/// Enrolls as `role` with the invite at `invite_path` (see the module doc).
pub async fn enroll(
    invite_path: &Path,
    role: ComponentType,
    paths: PeerPaths,
) -> Result<Enrolled, EnrollError> {
    let invite = read_invite(invite_path)?;
    if invite.role != role {
        return Err(EnrollError::WrongBinary {
            invite: invite.role,
        });
    }
    let trust = Trust::from_pem(&invite.ca_crt, &invite.supervisor_pub, invite_path)?;
    let (identity, new_identity) = match Identity::load(&paths.identity) {
        Ok(id) => (id, false),
        Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            (keygen(&paths.identity, 2048)?, true)
        }
        Err(e) => return Err(e.into()),
    };
    let mut failures = Vec::new();
    for url in &invite.urls {
        let parsed: SupervisorUrl = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                failures.push(e.to_string());
                continue;
            }
        };
        match register(&parsed, &identity, &trust, &invite).await {
            Ok((fingerprint, label)) => {
                let mut supervisor = vec![url.clone()];
                supervisor.extend(invite.urls.iter().filter(|u| *u != url).cloned());
                let profile = Profile {
                    supervisor,
                    label: label.clone(),
                    ca_crt: invite.ca_crt.clone(),
                    supervisor_pub: invite.supervisor_pub.clone(),
                };
                write_profile(&paths.profile, &profile)?;
                return Ok(Enrolled {
                    fingerprint,
                    new_identity,
                    supervisor: url.clone(),
                    label,
                    paths,
                });
            }
            Err(Attempt::Refused(reason)) => return Err(EnrollError::Refused(reason)),
            Err(Attempt::Failed(e)) => failures.push(format!("{url}: {e}")),
        }
    }
    Err(EnrollError::Unreachable(if failures.is_empty() {
        "the invite names no URL".into()
    } else {
        failures.join("; ")
    }))
}

enum Attempt {
    Refused(String),
    Failed(ClientError),
}

/// One `ENROLL_REQUEST` on a fresh connection.
async fn register(
    url: &SupervisorUrl,
    identity: &Identity,
    trust: &Trust,
    invite: &InviteFile,
) -> Result<(String, Option<String>), Attempt> {
    let wait = Duration::from_secs(10);
    let mut conn = tokio::time::timeout(wait, SupervisorConnection::open(url, trust))
        .await
        .map_err(|_| Attempt::Failed(ClientError::Timeout(wait)))?
        .map_err(Attempt::Failed)?;
    match conn.recv(wait).await.map_err(Attempt::Failed)? {
        SupervisorMessage::CollectPeerInfoRequest { .. } => {}
        other => {
            return Err(Attempt::Failed(ClientError::Protocol(format!(
                "expected COLLECT_PEER_INFO_REQUEST, got {}",
                other.name()
            ))))
        }
    }
    conn.send(&PeerMessage::EnrollRequest {
        protocol_version: PROTOCOL_VERSION,
        secret: invite.secret.clone(),
        public_key: identity.key().public().to_pem().to_owned(),
        component_type: invite.role,
    })
    .await
    .map_err(Attempt::Failed)?;
    match conn.recv(wait).await.map_err(Attempt::Failed)? {
        SupervisorMessage::Enrolled {
            fingerprint, label, ..
        } => Ok((fingerprint, label)),
        SupervisorMessage::Error {
            code: ErrorCode::InviteRefused,
            message,
            ..
        } => Err(Attempt::Refused(message)),
        SupervisorMessage::Error { code, message, .. } => {
            Err(Attempt::Refused(format!("{message} ({code:?})")))
        }
        other => Err(Attempt::Failed(ClientError::Protocol(format!(
            "expected ENROLLED, got {}",
            other.name()
        )))),
    }
}

fn write_profile(path: &Path, profile: &Profile) -> Result<(), EnrollError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    }
    let text = toml::to_string(profile).map_err(|e| file_err(path, e))?;
    let tmp = path.with_extension("tmp");
    fs::write(
        &tmp,
        format!("# MioStream peer profile, written by `enroll` (public: no secrets)\n{text}"),
    )
    .map_err(|e| file_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// Reads the profile.
pub fn load_profile(path: &Path) -> Result<Option<Profile>, EnrollError> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| file_err(path, e.message())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(path, e)),
    }
}

/// Where and as whom to connect: each of `--supervisor`, `--identity` and
/// `--trust` (flag or environment variable) wins over the enrolled profile.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The supervisor.
    pub supervisor: SupervisorUrl,
    /// Our identity.
    pub identity: Identity,
    /// The trust bundle.
    pub trust: Trust,
}

/// The connection flags of `run`, `list` and `watch`: each defaults to
/// what `enroll` stored.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionFlags {
    /// Supervisor URL, wss://HOST:PORT (default: the enrolled one).
    #[arg(long, env = "MIOSTREAM_SUPERVISOR")]
    pub supervisor: Option<SupervisorUrl>,
    /// Identity directory, from keygen (default: the enrolled one).
    #[arg(long, env = "MIOSTREAM_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The supervisor's trust bundle, its DIR/trust (default: the enrolled one).
    #[arg(long, env = "MIOSTREAM_TRUST")]
    pub trust: Option<PathBuf>,
}

impl ConnectionFlags {
    /// The connection for `role`: the flags, then the enrolled profile.
    pub fn resolve(self, role: ComponentType) -> Result<Connection, EnrollError> {
        resolve(
            role,
            PeerPaths::from_env(role),
            self.supervisor,
            self.identity.as_deref(),
            self.trust.as_deref(),
        )
    }
}

/// Resolves a [`Connection`] from the flags, then the profile in `paths`.
pub fn resolve(
    role: ComponentType,
    paths: Result<PeerPaths, EnrollError>,
    supervisor: Option<SupervisorUrl>,
    identity: Option<&Path>,
    trust: Option<&Path>,
) -> Result<Connection, EnrollError> {
    if let (Some(supervisor), Some(identity), Some(trust)) = (&supervisor, identity, trust) {
        return Ok(Connection {
            supervisor: supervisor.clone(),
            identity: Identity::load(identity)?,
            trust: Trust::load(trust)?,
        });
    }
    let paths = paths?;
    let Some(profile) = load_profile(&paths.profile)? else {
        return Err(EnrollError::NotEnrolled {
            role,
            profile: paths.profile.display().to_string(),
        });
    };
    let supervisor = match supervisor {
        Some(s) => s,
        None => profile
            .supervisor
            .first()
            .ok_or_else(|| file_err(&paths.profile, "names no supervisor"))?
            .parse()?,
    };
    let identity = Identity::load(identity.unwrap_or(&paths.identity))?;
    let trust = match trust {
        Some(t) => Trust::load(t)?,
        None => Trust::from_pem(&profile.ca_crt, &profile.supervisor_pub, &paths.profile)?,
    };
    Ok(Connection {
        supervisor,
        identity,
        trust,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_roles_apart_and_follow_xdg() {
        let r = PeerPaths::under(Path::new("/d"), Path::new("/c"), ComponentType::Receiver);
        let b = PeerPaths::under(Path::new("/d"), Path::new("/c"), ComponentType::Broadcaster);
        assert_eq!(r.identity, Path::new("/d/miostream/receiver"));
        assert_eq!(r.profile, Path::new("/c/miostream/receiver.toml"));
        assert_ne!(r.identity, b.identity);
        assert_ne!(r.profile, b.profile);
    }

    #[test]
    fn without_a_profile_or_flags_resolve_says_to_enroll() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = PeerPaths::under(tmp.path(), tmp.path(), ComponentType::Receiver);
        let err = resolve(ComponentType::Receiver, Ok(paths), None, None, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("miostream-receiver enroll") && text.contains("--supervisor"),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn bad_invites_are_refused_with_the_file_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("invite.toml");
        fs::write(&p, "secret = 1").unwrap();
        let err = read_invite(&p).unwrap_err().to_string();
        assert!(
            err.contains("invite.toml") && err.contains("not an invite"),
            "{err}"
        );
        fs::write(&p, vec![b'#'; MAX_INVITE_FILE_LEN + 1]).unwrap();
        assert!(read_invite(&p).unwrap_err().to_string().contains("bytes"));
    }
}
