//! RSA key pairs of peers and the supervisor: generation, PEM files and
//! fingerprints (SHA-256 of the SubjectPublicKeyInfo DER). RSA is done by
//! aws-lc-rs, whose OAEP decryption is ten times faster than a pure-Rust
//! one here — the supervisor's handshake rate depends on it.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey, PublicEncryptingKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Smallest RSA modulus accepted anywhere (paper §3.3: "key bit length ≥ 2048").
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted from a peer: bounds the cost a hostile peer
/// can impose with a huge key.
pub const MAX_RSA_BITS: usize = 8192;
/// Key sizes `generate` offers.
pub const RSA_KEY_SIZES: [usize; 4] = [2048, 3072, 4096, 8192];

const PUBLIC_LABEL: &str = "PUBLIC KEY";
const PRIVATE_LABEL: &str = "PRIVATE KEY";

/// What is wrong with a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not a PEM-encoded key of the expected kind.
    #[error("not a valid {expected} PEM: {reason}")]
    Pem {
        /// "RSA public key" or "RSA private key".
        expected: &'static str,
        /// Parser's reason.
        reason: String,
    },
    /// The modulus is outside the accepted range.
    #[error("RSA key of {bits} bits is outside the accepted range {min}..={max}")]
    Size {
        /// The key's size.
        bits: usize,
        /// Lower bound.
        min: usize,
        /// Upper bound.
        max: usize,
    },
    /// The modulus is too small to be parsed at all (aws-lc refuses RSA
    /// keys under 2048 bits outright).
    #[error("RSA key smaller than {min} bits, the minimum accepted")]
    TooSmall {
        /// Lower bound.
        min: usize,
    },
    /// Key generation failed, or the size is not one of [`RSA_KEY_SIZES`].
    #[error("RSA key generation failed: {0}")]
    Generate(String),
}

/// SHA-256 of a public key's SubjectPublicKeyInfo DER: how keys are named in
/// the authorized list and in logs (never the key material itself).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyFingerprint(pub [u8; 32]);

impl fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key:")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for KeyFingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("fingerprint must be 64 hex digits, got {s:?}");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// Decodes one PEM block with the given label (RFC 7468, strict label).
fn pem_decode(text: &str, label: &str, expected: &'static str) -> Result<Vec<u8>, KeyError> {
    let err = |reason: &str| KeyError::Pem {
        expected,
        reason: reason.to_owned(),
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let text = text.trim();
    let body = text
        .strip_prefix(&begin)
        .ok_or_else(|| err(&format!("expected {begin}")))?;
    let body = body
        .trim_end()
        .strip_suffix(&end)
        .ok_or_else(|| err(&format!("expected {end}")))?;
    let b64: String = body.split_whitespace().collect();
    if b64.len() > 16 * 1024 {
        return Err(err("too long"));
    }
    B64.decode(b64).map_err(|e| err(&e.to_string()))
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn check_bits(bits: usize, min: usize) -> Result<(), KeyError> {
    let min = min.max(MIN_RSA_BITS);
    if (min..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Size {
            bits,
            min,
            max: MAX_RSA_BITS,
        })
    }
}

/// An RSA public key with its fingerprint.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) key: PublicEncryptingKey,
    fingerprint: KeyFingerprint,
    pem: String,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?}, {} bits)", self.fingerprint, self.bits())
    }
}

impl PublicKey {
    fn from_der(der: &[u8], min_bits: usize) -> Result<Self, KeyError> {
        let key = PublicEncryptingKey::from_der(der).map_err(|e| match e.to_string().as_str() {
            // Say what is wrong: it is a key, just too weak.
            "TooSmall" => KeyError::TooSmall {
                min: min_bits.max(MIN_RSA_BITS),
            },
            reason => KeyError::Pem {
                expected: "RSA public key",
                reason: reason.to_owned(),
            },
        })?;
        check_bits(key.key_size_bits(), min_bits)?;
        Ok(Self {
            key,
            fingerprint: KeyFingerprint(Sha256::digest(der).into()),
            pem: pem_encode(der, PUBLIC_LABEL),
        })
    }

    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`), refusing keys
    /// smaller than `min_bits` (at least 2048) or larger than 8192 bits.
    pub fn from_pem(pem: &str, min_bits: usize) -> Result<Self, KeyError> {
        let der = pem_decode(pem, PUBLIC_LABEL, "RSA public key")?;
        Self::from_der(&der, min_bits)
    }

    /// The SPKI PEM text.
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.key_size_bits()
    }
}

/// An RSA private key (peer identity or the supervisor's key). Its `Debug`
/// shows only the public fingerprint.
pub struct PrivateKey {
    pub(crate) key: PrivateDecryptingKey,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?})", self.public.fingerprint)
    }
}

impl PrivateKey {
    /// Generates a key of `bits` bits: one of [`RSA_KEY_SIZES`]. Uses the
    /// operating system's RNG.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            other => {
                return Err(KeyError::Generate(format!(
                    "unsupported size {other} (choose one of {RSA_KEY_SIZES:?})"
                )))
            }
        };
        let key =
            PrivateDecryptingKey::generate(size).map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<Self, KeyError> {
        let der = key
            .public_key()
            .as_der()
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        let public = PublicKey::from_der(der.as_ref(), MIN_RSA_BITS)?;
        Ok(Self { key, public })
    }

    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_decode(pem, PRIVATE_LABEL, "RSA private key (PKCS#8)")?;
        let key = PrivateDecryptingKey::from_pkcs8(&der).map_err(|e| KeyError::Pem {
            expected: "RSA private key (PKCS#8)",
            reason: e.to_string(),
        })?;
        check_bits(key.key_size_bits(), MIN_RSA_BITS)?;
        Self::from_key(key)
    }

    /// PKCS#8 PEM text. Secret: write it only to a 0600 file.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let der = self.key.as_der().map_err(|e| KeyError::Pem {
            expected: "RSA private key (PKCS#8)",
            reason: e.to_string(),
        })?;
        Ok(pem_encode(der.as_ref(), PRIVATE_LABEL))
    }

    /// The matching public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// Keys are slow to generate: each test binary makes a few once.
    pub(crate) fn test_key(i: usize) -> &'static PrivateKey {
        static KEYS: OnceLock<Vec<PrivateKey>> = OnceLock::new();
        &KEYS.get_or_init(|| {
            (0..4)
                .map(|_| PrivateKey::generate(2048).unwrap())
                .collect()
        })[i]
    }

    #[test]
    fn pem_round_trips_and_fingerprint_is_stable() {
        let k = test_key(0);
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(back.public().fingerprint(), k.public().fingerprint());
        let pubk = PublicKey::from_pem(k.public().to_pem(), 2048).unwrap();
        assert_eq!(pubk, *k.public());
        assert_eq!(pubk.bits(), 2048);
        let fp: KeyFingerprint = k.public().fingerprint().to_string().parse().unwrap();
        assert_eq!(fp, k.public().fingerprint());
        assert!(!format!("{k:?}").contains("BEGIN"));
    }

    #[test]
    fn bad_pem_and_small_keys_are_refused() {
        assert!(matches!(
            PublicKey::from_pem("hello", 2048),
            Err(KeyError::Pem { .. })
        ));
        assert!(matches!(
            PrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
            Err(KeyError::Pem { .. })
        ));
        // A private key is not a public key.
        let k = test_key(1);
        assert!(PublicKey::from_pem(&k.to_pem().unwrap(), 2048).is_err());
        assert!(matches!(
            PublicKey::from_pem(k.public().to_pem(), 4096),
            Err(KeyError::Size { bits: 2048, .. })
        ));
        assert!(matches!(
            PrivateKey::generate(1024),
            Err(KeyError::Generate(_))
        ));
    }
}
