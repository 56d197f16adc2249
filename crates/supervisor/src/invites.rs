//! Invites: one file a peer enrolls with (URL, trust bundle, a one-time
//! secret), and the supervisor's record of them in `DIR/invites.toml`
//! (mode 0600) — only a SHA-256 of each secret, with its role, label, uses
//! left and expiry.
//!
//! [`InviteBook::redeem`] is the decision, a pure function of the book, the
//! secret and the time; [`StateDir::redeem_invite`] is its IO (under the
//! directory's edit lock): the use is spent before the key is authorized.

use std::fs;
use std::path::{Path, PathBuf};

use miostream_auth::{KeyFingerprint, PublicKey};
use miostream_protocol::signal::{valid_label, InviteFile, InviteSecret, INVITE_SECRET_LEN};
use miostream_protocol::ComponentType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::state::{io, write_secret, StateDir, StateError};

/// One issued invite, as the supervisor keeps it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRecord {
    /// Short public name (for `invite --revoke ID`).
    pub id: String,
    /// SHA-256 of the secret (hex).
    pub hash: String,
    /// The role it enrolls.
    pub role: ComponentType,
    /// The label enrolled keys get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Enrollments left.
    pub uses: u32,
    /// Expiry (Unix seconds).
    pub expires: u64,
    /// When it was issued (Unix seconds).
    pub created: u64,
    /// Revoked by the operator.
    #[serde(default)]
    pub revoked: bool,
}

/// Why an enrollment was refused: the one line the enrolling peer prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteRefusal {
    /// No invite has this secret.
    #[error("unknown invite (not issued by this supervisor, or malformed)")]
    Unknown,
    /// Every use was spent.
    #[error("this invite is used up")]
    UsedUp,
    /// Past its expiry.
    #[error("this invite expired {0}")]
    Expired(String),
    /// The operator revoked it.
    #[error("this invite was revoked")]
    Revoked,
    /// For another role.
    #[error("this invite is for a {invite}, not a {claimed}")]
    WrongRole {
        /// The invite's role.
        invite: ComponentType,
        /// The enrolling peer's.
        claimed: ComponentType,
    },
}

/// `DIR/invites.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteBook {
    /// Every invite issued (spent, expired and revoked ones too, so a
    /// refusal can say why).
    #[serde(default)]
    pub invite: Vec<InviteRecord>,
}

/// SHA-256 of a secret, hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl InviteBook {
    /// Spends one use of the invite whose secret is `secret`, for a peer
    /// enrolling as `role` at `now` (Unix seconds). The hash is compared
    /// with every record in constant time; nothing changes on a refusal.
    pub fn redeem(
        &mut self,
        secret: &InviteSecret,
        role: ComponentType,
        now: u64,
    ) -> Result<InviteRecord, InviteRefusal> {
        let s = &secret.0;
        if s.len() != INVITE_SECRET_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InviteRefusal::Unknown);
        }
        let hash = secret_hash(s);
        let mut found = None;
        for (i, r) in self.invite.iter().enumerate() {
            if bool::from(r.hash.as_bytes().ct_eq(hash.as_bytes())) {
                found = Some(i);
            }
        }
        let r = found
            .and_then(|i| self.invite.get_mut(i))
            .ok_or(InviteRefusal::Unknown)?;
        if r.revoked {
            return Err(InviteRefusal::Revoked);
        }
        if now >= r.expires {
            return Err(InviteRefusal::Expired(format!("at {}", utc(r.expires))));
        }
        if r.uses == 0 {
            return Err(InviteRefusal::UsedUp);
        }
        if r.role != role {
            return Err(InviteRefusal::WrongRole {
                invite: r.role,
                claimed: role,
            });
        }
        r.uses -= 1;
        Ok(r.clone())
    }
}

/// What an operator asks of `invite`.
#[derive(Debug, Clone)]
pub struct InviteRequest {
    /// The role it enrolls.
    pub role: ComponentType,
    /// How many peers may enroll with it.
    pub uses: u32,
    /// How long it is valid (seconds).
    pub valid_secs: u64,
    /// The label enrolled keys get.
    pub label: Option<String>,
    /// Where peers reach the supervisor.
    pub urls: Vec<String>,
}

/// A parsed duration: `90s`, `30m`, `24h`, `7d` (or bare seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 90s, 30m, 24h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    n.checked_mul(scale)
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("{text:?}: must be positive and under 500 billion years"))
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

impl StateDir {
    /// `DIR/invites.toml`.
    pub fn invites_path(&self) -> PathBuf {
        self.root().join("invites.toml")
    }

    /// Loads the invites (none if the file does not exist yet).
    pub fn load_invites(&self) -> Result<InviteBook, StateError> {
        let path = self.invites_path();
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| StateError::Config {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InviteBook::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn save_invites(&self, book: &InviteBook) -> Result<(), StateError> {
        let path = self.invites_path();
        let text = toml::to_string(book).map_err(|e| StateError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        write_secret(
            &tmp,
            &format!("# MioStream invites (hashes of their secrets; edit with `invite`)\n{text}"),
        )?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Issues an invite: records it and returns the file to hand to the
    /// peer (which holds the secret; write it with
    /// [`write_invite`](Self::write_invite)).
    pub fn create_invite(
        &self,
        req: &InviteRequest,
        now: u64,
    ) -> Result<(InviteRecord, InviteFile), StateError> {
        let cfg = |reason: String| StateError::Config {
            path: self.invites_path(),
            reason,
        };
        if let Some(label) = &req.label {
            valid_label(label).map_err(|r| cfg(format!("label {label:?}: {r}")))?;
        }
        if req.uses == 0 {
            return Err(cfg("an invite has at least one use".into()));
        }
        if req.urls.is_empty() {
            return Err(cfg("an invite needs the supervisor's URL".into()));
        }
        let read = |name: &str| {
            let p = self.trust_dir().join(name);
            fs::read_to_string(&p).map_err(io(&p))
        };
        let (ca_crt, supervisor_pub) = (read("ca.crt")?, read("supervisor.pub")?);
        use rand::Rng as _;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let mut id = [0u8; 6];
        rand::rng().fill_bytes(&mut id);
        let record = InviteRecord {
            id: hex::encode(id),
            hash: secret_hash(&secret),
            role: req.role,
            label: req.label.clone(),
            uses: req.uses,
            expires: now.saturating_add(req.valid_secs),
            created: now,
            revoked: false,
        };
        let _lock = self.lock()?;
        let mut book = self.load_invites()?;
        book.invite.push(record.clone());
        self.save_invites(&book)?;
        let file = InviteFile {
            urls: req.urls.clone(),
            role: req.role,
            label: req.label.clone(),
            expires: record.expires,
            secret: InviteSecret(secret),
            ca_crt,
            supervisor_pub,
        };
        Ok((record, file))
    }

    /// Writes an invite file, mode 0600 (it grants access), refusing to
    /// replace an existing file.
    pub fn write_invite(path: &Path, file: &InviteFile) -> Result<(), StateError> {
        if path.exists() {
            return Err(io(path)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists; refusing to overwrite it",
            )));
        }
        let text = toml::to_string(file).map_err(|e| StateError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        write_secret(
            path,
            &format!(
                "# MioStream invite for a {}: enroll with `miostream-{} enroll {}`.\n\
                 # Keep it private: until it is used up or expires it lets a peer in.\n{text}",
                file.role,
                file.role,
                path.file_name()
                    .map_or("FILE".into(), |n| n.to_string_lossy())
            ),
        )
    }

    /// Revokes invite `id`: enrollments with it are refused from now on.
    pub fn revoke_invite(&self, id: &str) -> Result<InviteRecord, StateError> {
        let _lock = self.lock()?;
        let mut book = self.load_invites()?;
        let Some(r) = book.invite.iter_mut().find(|r| r.id == id) else {
            return Err(StateError::Config {
                path: self.invites_path(),
                reason: format!("no invite {id:?}"),
            });
        };
        r.revoked = true;
        let r = r.clone();
        self.save_invites(&book)?;
        Ok(r)
    }

    /// Enrolls `key` with the invite whose secret is `secret`: spends a use
    /// and authorizes the key with the invite's role and label. `Ok(Err)`
    /// is a refusal to tell the peer; `Err` a failure of the directory.
    pub fn redeem_invite(
        &self,
        secret: &InviteSecret,
        role: ComponentType,
        key: &PublicKey,
        now: u64,
    ) -> Result<Result<(KeyFingerprint, InviteRecord), InviteRefusal>, StateError> {
        let _lock = self.lock()?;
        let mut book = self.load_invites()?;
        let record = match book.redeem(secret, role, now) {
            Ok(r) => r,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // Spent first: a failure after this loses a use, never grants one.
        self.save_invites(&book)?;
        let fp = key.fingerprint();
        self.authorize_fingerprint_locked(fp, role, record.label.as_deref(), now)?;
        Ok(Ok((fp, record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(uses: u32, expires: u64) -> (InviteBook, InviteSecret) {
        let secret = "5a".repeat(32);
        let record = InviteRecord {
            id: "abc".into(),
            hash: secret_hash(&secret),
            role: ComponentType::Receiver,
            label: Some("town hall".into()),
            uses,
            expires,
            created: 0,
            revoked: false,
        };
        (
            InviteBook {
                invite: vec![record],
            },
            InviteSecret(secret),
        )
    }

    #[test]
    fn redeem_spends_uses_and_refuses_with_the_reason() {
        let (mut b, s) = book(2, 100);
        let r = ComponentType::Receiver;
        assert_eq!(b.redeem(&s, r, 10).unwrap().uses, 1);
        assert_eq!(b.redeem(&s, r, 10).unwrap().uses, 0);
        assert_eq!(b.redeem(&s, r, 10), Err(InviteRefusal::UsedUp));
        let (mut b, s) = book(2, 100);
        assert!(matches!(
            b.redeem(&s, r, 100),
            Err(InviteRefusal::Expired(_))
        ));
        assert_eq!(
            b.redeem(&s, ComponentType::Broadcaster, 10),
            Err(InviteRefusal::WrongRole {
                invite: r,
                claimed: ComponentType::Broadcaster
            })
        );
        assert_eq!(b.invite[0].uses, 2, "refusals spend nothing");
        b.invite[0].revoked = true;
        assert_eq!(b.redeem(&s, r, 10), Err(InviteRefusal::Revoked));
        for bad in [
            "",
            "5a",
            "zz".repeat(32).as_str(),
            "5b".repeat(32).as_str(),
            "5a".repeat(33).as_str(),
        ] {
            assert_eq!(
                b.redeem(&InviteSecret(bad.into()), r, 10),
                Err(InviteRefusal::Unknown),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_and_dates() {
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("30"), Ok(30));
        for bad in ["", "h", "0h", "5w", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_733_333_333), "2024-12-04 17:28 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn invites_are_issued_redeemed_and_revoked_on_disk() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("sup"));
        dir.init("127.0.0.1:0".parse().unwrap(), &[], 2048).unwrap();
        let req = InviteRequest {
            role: ComponentType::Receiver,
            uses: 1,
            valid_secs: 3600,
            label: Some("viewer".into()),
            urls: vec!["wss://127.0.0.1:9".into()],
        };
        let (record, file) = dir.create_invite(&req, 1000).unwrap();
        let out = tmp.path().join("invite.toml");
        StateDir::write_invite(&out, &file).unwrap();
        for p in [&out, &dir.invites_path()] {
            let mode = fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        assert!(StateDir::write_invite(&out, &file).is_err(), "no overwrite");
        let text = fs::read_to_string(&out).unwrap();
        let back: InviteFile = toml::from_str(&text).unwrap();
        assert_eq!(back, file);
        assert!(!fs::read_to_string(dir.invites_path())
            .unwrap()
            .contains(&file.secret.0));
        let key = miostream_auth::PrivateKey::generate(2048).unwrap();
        let (fp, _) = dir
            .redeem_invite(&file.secret, ComponentType::Receiver, key.public(), 1001)
            .unwrap()
            .unwrap();
        let list = dir.load_authorized().unwrap();
        let entry = list.get(&fp).unwrap();
        assert_eq!(entry.label.as_deref(), Some("viewer"));
        assert_eq!(entry.added, Some(1001));
        assert_eq!(
            dir.redeem_invite(&file.secret, ComponentType::Receiver, key.public(), 1002)
                .unwrap(),
            Err(InviteRefusal::UsedUp)
        );
        let (record2, file2) = dir.create_invite(&req, 1000).unwrap();
        assert_ne!(record2.id, record.id);
        dir.revoke_invite(&record2.id).unwrap();
        assert_eq!(
            dir.redeem_invite(&file2.secret, ComponentType::Receiver, key.public(), 1002)
                .unwrap(),
            Err(InviteRefusal::Revoked)
        );
        assert!(dir.revoke_invite("nope").is_err());
    }
}
