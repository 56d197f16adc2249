//! A peer's identity directory (`peer.key` 0600 + `peer.pub`) and the trust
//! bundle it pins its supervisor with (`ca.crt` + `supervisor.pub`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miostream_auth::{PrivateKey, PublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why an identity or trust bundle could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key is invalid.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: miostream_auth::KeyError,
    },
    /// The trust bundle's certificate is invalid.
    #[error("{path}: not a PEM certificate: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `keygen` would overwrite an existing key.
    #[error("{0} exists; refusing to overwrite an identity")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Generates `DIR/peer.key` (mode 0600) and `DIR/peer.pub`. Returns the key.
pub fn keygen(dir: &Path, bits: usize) -> Result<Identity, IdentityError> {
    let key_path = dir.join("peer.key");
    if key_path.exists() {
        return Err(IdentityError::Exists(key_path));
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = PrivateKey::generate(bits).map_err(|source| IdentityError::Key {
        path: key_path.clone(),
        source,
    })?;
    let pem = key.to_pem().map_err(|source| IdentityError::Key {
        path: key_path.clone(),
        source,
    })?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io(&key_path))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(&key_path))?;
    f.write_all(pem.as_bytes()).map_err(io(&key_path))?;
    let pub_path = dir.join("peer.pub");
    fs::write(&pub_path, key.public().to_pem()).map_err(io(&pub_path))?;
    Ok(Identity { key: Arc::new(key) })
}

/// A peer's RSA identity.
#[derive(Debug, Clone)]
pub struct Identity {
    key: Arc<PrivateKey>,
}

impl Identity {
    /// Loads `DIR/peer.key`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join("peer.key");
        let pem = fs::read_to_string(&path).map_err(io(&path))?;
        let key =
            PrivateKey::from_pem(&pem).map_err(|source| IdentityError::Key { path, source })?;
        Ok(Self { key: Arc::new(key) })
    }

    /// Wraps a key already in memory.
    pub fn from_key(key: Arc<PrivateKey>) -> Self {
        Self { key }
    }

    /// The private key.
    pub fn key(&self) -> &Arc<PrivateKey> {
        &self.key
    }
}

/// What a peer trusts: the supervisor's CA certificate (TLS) and its RSA key
/// (the handshake).
#[derive(Debug, Clone)]
pub struct Trust {
    /// The CA certificate (DER).
    pub ca: CertificateDer<'static>,
    /// The supervisor's RSA public key.
    pub supervisor_key: PublicKey,
}

impl Trust {
    /// Loads `TRUST_DIR/ca.crt` and `TRUST_DIR/supervisor.pub`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let ca_path = dir.join("ca.crt");
        let pem = fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
        let key_path = dir.join("supervisor.pub");
        let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Self::parse(&pem, &ca_path, &key_pem, &key_path)
    }

    /// The bundle from its two PEMs, as an invite or a profile carries
    /// them (`from` names that file in errors).
    pub fn from_pem(
        ca_crt: &str,
        supervisor_pub: &str,
        from: &Path,
    ) -> Result<Self, IdentityError> {
        Self::parse(ca_crt, from, supervisor_pub, from)
    }

    fn parse(
        ca_pem: &str,
        ca_path: &Path,
        key_pem: &str,
        key_path: &Path,
    ) -> Result<Self, IdentityError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| {
            IdentityError::Certificate {
                path: ca_path.to_owned(),
                reason: e.to_string(),
            }
        })?;
        let supervisor_key =
            PublicKey::from_pem(key_pem, miostream_auth::MIN_RSA_BITS).map_err(|source| {
                IdentityError::Key {
                    path: key_path.to_owned(),
                    source,
                }
            })?;
        Ok(Self { ca, supervisor_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_0600_key_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let id = keygen(tmp.path(), 2048).unwrap();
        let mode = fs::metadata(tmp.path().join("peer.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Identity::load(tmp.path()).unwrap();
        assert_eq!(
            loaded.key().public().fingerprint(),
            id.key().public().fingerprint()
        );
        assert!(matches!(
            keygen(tmp.path(), 2048),
            Err(IdentityError::Exists(_))
        ));
    }

    #[test]
    fn missing_trust_bundle_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Trust::load(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
