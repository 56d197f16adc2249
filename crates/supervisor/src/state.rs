//! The supervisor's state directory:
//!
//! ```text
//! DIR/config.toml          commented defaults
//! DIR/supervisor.key       RSA private key (0600)   DIR/supervisor.pub
//! DIR/tls/ca.key (0600)    DIR/tls/ca.crt           the CA that signs the server cert
//! DIR/tls/server.key (0600) DIR/tls/server.crt      ECDSA P-256, names --listen + host
//! DIR/authorized_peers     "ROLE FINGERPRINT" lines, edited by authorize/revoke
//! DIR/trust/ca.crt, DIR/trust/supervisor.pub        what peers need (public)
//! DIR/monitor.token (0600)  the operators' dashboard token (64 hex digits)
//! DIR/invites.toml (0600)  issued invites (hashes of their secrets), see invites
//! DIR/.lock                 flock held by every edit of the two lists above
//! DIR/listening            where the running supervisor listens (removed at exit)
//! DIR/control.sock (0600)   the running supervisor's control socket (reload, peers)
//! ```

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use miostream_auth::{Authorizer, KeyFingerprint, PrivateKey, PublicKey};
use miostream_protocol::ComponentType;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::config::{SupervisorConfig, DEFAULT_CONFIG_TOML};

/// What went wrong with the state directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `init` on a directory that already holds a supervisor.
    #[error("{0} is already initialized (config.toml exists); refusing to overwrite its keys")]
    AlreadyInitialized(PathBuf),
    /// A key file is invalid.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: miostream_auth::KeyError,
    },
    /// The config file is invalid.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    /// A line of the authorized-peers file is invalid.
    #[error("{path}:{line}: {reason}")]
    AuthorizedList {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
    /// `revoke` of a key that is not authorized.
    #[error("key {0} is not in the authorized list")]
    NotAuthorized(KeyFingerprint),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One authorized key: its role, and what `peers` shows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The role it may authenticate as.
    pub role: ComponentType,
    /// The operator's (or the invite's) label, if any.
    pub label: Option<String>,
    /// When it was authorized (Unix seconds; unknown in files that predate it).
    pub added: Option<u64>,
}

/// The authorized-peers list: key fingerprint → role (and label).
///
/// One key a line: `ROLE FINGERPRINT [added=UNIX] [label=TEXT TO THE END]`;
/// `#` starts a comment. Older files hold `ROLE FINGERPRINT` lines only, and
/// older supervisors read the first two words of newer lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorized(HashMap<KeyFingerprint, AuthorizedKey>);

impl Authorizer for Authorized {
    fn role_of(&self, key: &KeyFingerprint) -> Option<ComponentType> {
        self.0.get(key).map(|k| k.role)
    }
}

impl Authorized {
    /// Parses the file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, StateError> {
        let mut map = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |reason: String| StateError::AuthorizedList {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            if let Some((fp, key)) = parse_line(raw).map_err(err)? {
                map.insert(fp, key);
            }
        }
        Ok(Self(map))
    }

    /// Number of authorized keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is authorized.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A key's entry.
    pub fn get(&self, key: &KeyFingerprint) -> Option<&AuthorizedKey> {
        self.0.get(key)
    }

    /// Every key, sorted by when it was added, then by fingerprint.
    pub fn entries(&self) -> Vec<(KeyFingerprint, &AuthorizedKey)> {
        let mut all: Vec<_> = self.0.iter().map(|(fp, k)| (*fp, k)).collect();
        all.sort_by_key(|(fp, k)| (k.added, *fp));
        all
    }

    /// Labels by key (for the dashboard).
    pub fn labels(&self) -> HashMap<KeyFingerprint, String> {
        self.0
            .iter()
            .filter_map(|(fp, k)| Some((*fp, k.label.clone()?)))
            .collect()
    }
}

/// One line of the authorized list: `None` for blank and comment lines.
fn parse_line(raw: &str) -> Result<Option<(KeyFingerprint, AuthorizedKey)>, String> {
    let line = raw.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut rest = line;
    let mut word = || {
        let r = rest.trim_start();
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let (w, tail) = r.split_at(end);
        rest = tail;
        (!w.is_empty()).then_some(w)
    };
    let (Some(role), Some(fp)) = (word(), word()) else {
        return Err("expected \"ROLE FINGERPRINT\"".into());
    };
    let role: ComponentType = role.parse()?;
    let fp: KeyFingerprint = fp.parse()?;
    let mut key = AuthorizedKey {
        role,
        label: None,
        added: None,
    };
    loop {
        let r = rest.trim_start();
        if r.is_empty() {
            break;
        }
        if let Some(label) = r.strip_prefix("label=") {
            let label = label.trim();
            miostream_protocol::signal::valid_label(label)?;
            key.label = Some(label.to_owned());
            break;
        }
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        let (w, tail) = r.split_at(end);
        rest = tail;
        match w.strip_prefix("added=") {
            Some(t) => {
                key.added = Some(t.parse().map_err(|_| format!("bad time {w:?}"))?);
            }
            None => {
                return Err(format!(
                    "unexpected {w:?} (expected added=UNIX or label=TEXT)"
                ))
            }
        }
    }
    Ok(Some((fp, key)))
}

/// The line for `fp` in the authorized list.
fn format_line(fp: &KeyFingerprint, key: &AuthorizedKey) -> String {
    let mut line = format!("{} {fp}", key.role);
    if let Some(added) = key.added {
        line.push_str(&format!(" added={added}"));
    }
    if let Some(label) = &key.label {
        line.push_str(&format!(" label={label}"));
    }
    line
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A supervisor state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens `root` (no IO yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `DIR/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `DIR/authorized_peers`.
    pub fn authorized_path(&self) -> PathBuf {
        self.root.join("authorized_peers")
    }
    /// `DIR/trust`.
    pub fn trust_dir(&self) -> PathBuf {
        self.root.join("trust")
    }
    /// `DIR/listening`.
    pub fn listening_path(&self) -> PathBuf {
        self.root.join("listening")
    }

    /// Records where the running supervisor listens (its real port when
    /// config.toml says 0): what `invite` puts in invites.
    pub fn record_listening(&self, addr: SocketAddr) -> Result<(), StateError> {
        let path = self.listening_path();
        let tmp = path.with_extension("tmp");
        write_public(&tmp, &format!("{addr}\n"))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Forgets the record (the supervisor stops).
    pub fn clear_listening(&self) {
        let _ = fs::remove_file(self.listening_path());
    }

    /// Where the running supervisor said it listens, if it did.
    pub fn recorded_listening(&self) -> Option<SocketAddr> {
        fs::read_to_string(self.listening_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `DIR/monitor.token`.
    pub fn monitor_token_path(&self) -> PathBuf {
        self.root.join("monitor.token")
    }
    fn tls(&self, name: &str) -> PathBuf {
        self.root.join("tls").join(name)
    }

    /// Creates a new supervisor: keys, certificates, config, empty authorized
    /// list and the trust bundle. Refuses to overwrite an existing one.
    /// `names` are extra DNS names or IPs the certificate must carry.
    pub fn init(
        &self,
        listen: SocketAddr,
        names: &[String],
        rsa_bits: usize,
    ) -> Result<(), StateError> {
        if self.config_path().exists() {
            return Err(StateError::AlreadyInitialized(self.root.clone()));
        }
        for d in [self.root.clone(), self.root.join("tls"), self.trust_dir()] {
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let key = PrivateKey::generate(rsa_bits).map_err(|source| StateError::Key {
            path: self.root.join("supervisor.key"),
            source,
        })?;
        let pem = key.to_pem().map_err(|source| StateError::Key {
            path: self.root.join("supervisor.key"),
            source,
        })?;
        write_secret(&self.root.join("supervisor.key"), &pem)?;
        write_public(&self.root.join("supervisor.pub"), key.public().to_pem())?;
        write_public(
            &self.trust_dir().join("supervisor.pub"),
            key.public().to_pem(),
        )?;

        let (ca_cert, ca_key, server_cert, server_key) = make_certificates(listen, names)?;
        write_secret(&self.tls("ca.key"), &ca_key)?;
        write_public(&self.tls("ca.crt"), &ca_cert)?;
        write_public(&self.trust_dir().join("ca.crt"), &ca_cert)?;
        write_secret(&self.tls("server.key"), &server_key)?;
        write_public(&self.tls("server.crt"), &server_cert)?;

        write_public(
            &self.authorized_path(),
            "# MioStream authorized peers: ROLE FINGERPRINT (edit with `authorize` / `revoke`)\n",
        )?;
        let config = DEFAULT_CONFIG_TOML.replacen(
            "listen = \"0.0.0.0:8443\"",
            &format!("listen = \"{listen}\""),
            1,
        );
        self.create_monitor_token()?;
        write_public(&self.config_path(), &config)?;
        Ok(())
    }

    /// Writes a new random dashboard token (32 bytes, hex; mode 0600).
    fn create_monitor_token(&self) -> Result<MonitorToken, StateError> {
        use rand::Rng as _;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_secret(&self.monitor_token_path(), &format!("{token}\n"))?;
        Ok(MonitorToken(token))
    }

    /// Loads the dashboard token, creating it if this directory predates it.
    pub fn load_or_create_monitor_token(&self) -> Result<MonitorToken, StateError> {
        let path = self.monitor_token_path();
        match fs::read_to_string(&path) {
            Ok(text) => MonitorToken::parse(text.trim()).ok_or(StateError::Config {
                path,
                reason: "a token is 16 to 256 characters of A-Z a-z 0-9 . _ ~ -".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create_monitor_token(),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Loads `config.toml`.
    pub fn load_config(&self) -> Result<SupervisorConfig, StateError> {
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let config = SupervisorConfig::from_toml(&text).map_err(|e| StateError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|reason| StateError::Config { path, reason })?;
        Ok(config)
    }

    /// Loads the supervisor's RSA key.
    pub fn load_key(&self) -> Result<PrivateKey, StateError> {
        let path = self.root.join("supervisor.key");
        let pem = fs::read_to_string(&path).map_err(io(&path))?;
        PrivateKey::from_pem(&pem).map_err(|source| StateError::Key { path, source })
    }

    /// Loads the TLS server certificate chain and key (PEM).
    pub fn load_tls(&self) -> Result<(String, String), StateError> {
        let cert = self.tls("server.crt");
        let key = self.tls("server.key");
        let mut chain = fs::read_to_string(&cert).map_err(io(&cert))?;
        let ca = self.tls("ca.crt");
        chain.push_str(&fs::read_to_string(&ca).map_err(io(&ca))?);
        Ok((chain, fs::read_to_string(&key).map_err(io(&key))?))
    }

    /// Loads the authorized-peers list.
    pub fn load_authorized(&self) -> Result<Authorized, StateError> {
        let path = self.authorized_path();
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        Authorized::parse(&text, &path)
    }

    /// Authorizes a peer's public key (PEM file) for `role`; replaces its
    /// previous role and label if it had them. Returns the key's fingerprint.
    pub fn authorize(
        &self,
        key_file: &Path,
        role: ComponentType,
        label: Option<&str>,
    ) -> Result<KeyFingerprint, StateError> {
        let fp = read_public_key(key_file)?.fingerprint();
        let _lock = self.lock()?;
        self.authorize_fingerprint_locked(fp, role, label, unix_now())?;
        Ok(fp)
    }

    /// Authorizes `fp`; the caller holds [`lock`](Self::lock).
    pub(crate) fn authorize_fingerprint_locked(
        &self,
        fp: KeyFingerprint,
        role: ComponentType,
        label: Option<&str>,
        now: u64,
    ) -> Result<(), StateError> {
        if let Some(label) = label {
            miostream_protocol::signal::valid_label(label).map_err(|reason| {
                StateError::Config {
                    path: self.authorized_path(),
                    reason: format!("label {label:?}: {reason}"),
                }
            })?;
        }
        let key = AuthorizedKey {
            role,
            label: label.map(str::to_owned),
            added: Some(now),
        };
        self.edit_authorized(|lines| {
            lines.retain(|l| !mentions(l, &fp));
            lines.push(format_line(&fp, &key));
            Ok(())
        })
    }

    /// Removes a peer's key from the authorized list: `target` is its public
    /// key file or its fingerprint (64 hex digits, as `peers` shows it).
    pub fn revoke(&self, target: &Path) -> Result<KeyFingerprint, StateError> {
        let fp = match target.to_str().map(str::parse::<KeyFingerprint>) {
            Some(Ok(fp)) if !target.exists() => fp,
            _ => read_public_key(target)?.fingerprint(),
        };
        let _lock = self.lock()?;
        self.edit_authorized(|lines| {
            let before = lines.len();
            lines.retain(|l| !mentions(l, &fp));
            if lines.len() == before {
                return Err(StateError::NotAuthorized(fp));
            }
            Ok(())
        })?;
        Ok(fp)
    }

    /// Takes the directory's edit lock (`DIR/.lock`, flock): every edit of
    /// the authorized list and the invites — by the CLI or by a running
    /// supervisor enrolling a peer — holds it, so none is lost.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, StateError> {
        let path = self.root.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&path)(e.into()))
    }

    /// Rewrites the list atomically (a running supervisor never reads half a file).
    fn edit_authorized(
        &self,
        edit: impl FnOnce(&mut Vec<String>) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let path = self.authorized_path();
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        Authorized::parse(&text, &path)?; // refuse to edit a broken file
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        edit(&mut lines)?;
        let tmp = path.with_extension("tmp");
        let mut body = lines.join("\n");
        body.push('\n');
        write_public(&tmp, &body)?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }
}

/// The operators' dashboard token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct MonitorToken(String);

impl std::fmt::Debug for MonitorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MonitorToken(..)")
    }
}

impl MonitorToken {
    /// A token from its text: 16 to 256 characters that a URL query and a
    /// cookie carry unescaped.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = (16..=256).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
        ok.then(|| Self(text.to_owned()))
    }

    /// The token's text (for the operator's URL; never log it).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the token, in time independent of where they
    /// differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

fn mentions(line: &str, fp: &KeyFingerprint) -> bool {
    let content = line.split('#').next().unwrap_or("");
    content
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse::<KeyFingerprint>().ok())
        .is_some_and(|f| f == *fp)
}

fn read_public_key(path: &Path) -> Result<PublicKey, StateError> {
    let pem = fs::read_to_string(path).map_err(io(path))?;
    PublicKey::from_pem(&pem, miostream_auth::MIN_RSA_BITS).map_err(|source| StateError::Key {
        path: path.to_owned(),
        source,
    })
}

/// Writes a secret with mode 0600 from the start (never briefly world-readable).
pub fn write_secret(path: &Path, contents: &str) -> Result<(), StateError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // An existing file keeps its old mode on open: force it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), StateError> {
    fs::write(path, contents).map_err(io(path))
}

/// The host's name, for the certificate.
fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// A CA and a server certificate it signs, both ECDSA P-256 (several times
/// cheaper per TLS handshake than RSA). Returns PEMs (ca cert, ca key, server
/// cert, server key).
fn make_certificates(
    listen: SocketAddr,
    names: &[String],
) -> Result<(String, String, String, String), StateError> {
    let cert_err = |e: rcgen::Error| StateError::Certificate(e.to_string());
    let mut sans: Vec<SanType> = vec![
        SanType::DnsName("localhost".try_into().map_err(cert_err)?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(
            "::1"
                .parse()
                .map_err(|_| StateError::Certificate("::1".into()))?,
        ),
    ];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        sans.push(SanType::IpAddress(listen.ip()));
    }
    for name in hostname().into_iter().chain(names.iter().cloned()) {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|_| StateError::Certificate(format!("invalid DNS name {name:?}")))?,
            ),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }

    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "MioStream supervisor CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;

    let server_key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "MioStream supervisor");
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer).map_err(cert_err)?;
    Ok((
        ca_cert.pem(),
        ca_key.serialize_pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_everything_with_private_keys_0600_and_refuses_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("sup"));
        dir.init(
            "127.0.0.1:0".parse().unwrap(),
            &["example.lan".into()],
            2048,
        )
        .unwrap();
        for secret in ["supervisor.key", "tls/ca.key", "tls/server.key"] {
            let mode = fs::metadata(dir.root().join(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
        for public in ["trust/ca.crt", "trust/supervisor.pub", "config.toml"] {
            assert!(dir.root().join(public).exists(), "{public}");
        }
        // Nothing secret in the trust bundle.
        for entry in fs::read_dir(dir.trust_dir()).unwrap() {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains("PRIVATE"));
        }
        let mode = fs::metadata(dir.monitor_token_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "monitor.token");
        let token = dir.load_or_create_monitor_token().unwrap();
        assert_eq!(token.secret().len(), 64);
        assert!(token.secret().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!format!("{token:?}").contains(token.secret()));
        dir.load_config().unwrap();
        dir.load_key().unwrap();
        assert!(dir.load_authorized().unwrap().is_empty());
        assert!(matches!(
            dir.init("127.0.0.1:0".parse().unwrap(), &[], 2048),
            Err(StateError::AlreadyInitialized(_))
        ));
    }

    #[test]
    fn monitor_token_is_created_for_old_directories_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let first = dir.load_or_create_monitor_token().unwrap();
        assert_eq!(dir.load_or_create_monitor_token().unwrap(), first);
        assert!(first.matches(first.secret().as_bytes()));
        assert!(!first.matches(b""));
        assert!(!first.matches(&first.secret().as_bytes()[1..]));
        let mut wrong = first.secret().as_bytes().to_vec();
        wrong[63] ^= 1;
        assert!(!first.matches(&wrong));
        fs::write(dir.monitor_token_path(), "short\n").unwrap();
        assert!(matches!(
            dir.load_or_create_monitor_token(),
            Err(StateError::Config { .. })
        ));
        fs::write(dir.monitor_token_path(), "an-operator-chosen_token.1\n").unwrap();
        assert_eq!(
            dir.load_or_create_monitor_token().unwrap().secret(),
            "an-operator-chosen_token.1"
        );
        assert!(MonitorToken::parse("has space in it; x=y").is_none());
    }

    #[test]
    fn authorize_and_revoke_edit_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.init("127.0.0.1:0".parse().unwrap(), &[], 2048).unwrap();
        let key = PrivateKey::generate(2048).unwrap();
        let pub_file = tmp.path().join("peer.pub");
        fs::write(&pub_file, key.public().to_pem()).unwrap();
        let fp = dir
            .authorize(&pub_file, ComponentType::Receiver, Some("Alice's laptop"))
            .unwrap();
        assert_eq!(
            dir.load_authorized().unwrap().role_of(&fp),
            Some(ComponentType::Receiver)
        );
        let list = dir.load_authorized().unwrap();
        assert_eq!(
            list.get(&fp).unwrap().label.as_deref(),
            Some("Alice's laptop")
        );
        assert!(list.get(&fp).unwrap().added.is_some());
        dir.authorize(&pub_file, ComponentType::Broadcaster, None)
            .unwrap();
        let list = dir.load_authorized().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list.role_of(&fp), Some(ComponentType::Broadcaster));
        assert_eq!(list.get(&fp).unwrap().label, None);
        // Revoked by fingerprint as well as by file.
        dir.revoke(Path::new(&fp.to_string())).unwrap();
        assert!(dir.load_authorized().unwrap().is_empty());
        dir.authorize(&pub_file, ComponentType::Receiver, None)
            .unwrap();
        dir.revoke(&pub_file).unwrap();
        assert!(dir.load_authorized().unwrap().is_empty());
        assert!(matches!(
            dir.revoke(&pub_file),
            Err(StateError::NotAuthorized(_))
        ));
        // A private key or garbage is not a public key.
        fs::write(&pub_file, "garbage").unwrap();
        assert!(matches!(
            dir.authorize(&pub_file, ComponentType::Receiver, None),
            Err(StateError::Key { .. })
        ));
    }

    #[test]
    fn old_and_new_authorized_lines_load() {
        let fp = "ab".repeat(32);
        let text = format!(
            "# header\nreceiver {fp}\nbroadcaster {} added=1700000000 label=Studio cam #2\n\
             receiver {} label=  Bob  \n",
            "cd".repeat(32),
            "ef".repeat(32)
        );
        let list = Authorized::parse(&text, Path::new("x")).unwrap();
        assert_eq!(list.len(), 3);
        let old = list.get(&fp.parse().unwrap()).unwrap();
        assert_eq!(
            (old.role, old.label.as_deref(), old.added),
            (ComponentType::Receiver, None, None)
        );
        let cam = list.get(&"cd".repeat(32).parse().unwrap()).unwrap();
        // '#' starts a comment, so a label never holds one.
        assert_eq!(cam.label.as_deref(), Some("Studio cam"));
        assert_eq!(cam.added, Some(1_700_000_000));
        let bob = list.get(&"ef".repeat(32).parse().unwrap()).unwrap();
        assert_eq!(bob.label.as_deref(), Some("Bob"));
        // A line written today reads back the same.
        let line = format_line(&fp.parse().unwrap(), cam);
        assert_eq!(parse_line(&line).unwrap().unwrap().1, *cam);
        let err =
            Authorized::parse(&format!("receiver {fp} added=soon\n"), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("x:1: bad time"), "{err}");
    }

    #[test]
    fn bad_authorized_lines_name_their_line() {
        let err = Authorized::parse("receiver abc\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().starts_with("x:1:"), "{err}");
        let err = Authorized::parse(&format!("# c\nadmin {}\n", "0".repeat(64)), Path::new("x"))
            .unwrap_err();
        assert!(err.to_string().contains("x:2: unknown role"), "{err}");
    }
}
