//! RSA key pairs of peers and the supervisor: generation, PEM files and
//! fingerprints (SHA-256 of the SubjectPublicKeyInfo DER).

use std::fmt;
use std::str::FromStr;

use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::rand_core::CryptoRng;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

/// Smallest RSA modulus accepted anywhere (paper §3.3: "key bit length ≥ 2048").
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted from a peer: bounds the cost a hostile peer
/// can impose with a huge key.
pub const MAX_RSA_BITS: usize = 8192;

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
    /// Key generation failed.
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
        if s.len() != 64 || !s.is_ascii() {
            return Err(format!("fingerprint must be 64 hex digits, got {:?}", s));
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("fingerprint must be 64 hex digits, got {s:?}"))?;
        }
        Ok(Self(out))
    }
}

/// An RSA public key with its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub(crate) key: rsa::PublicKey,
    fingerprint: KeyFingerprint,
    pem: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?}, {} bits)", self.fingerprint, self.bits())
    }
}

impl PublicKey {
    fn from_rsa(key: rsa::PublicKey) -> Result<Self, KeyError> {
        let der = key.to_public_key_der().map_err(|e| KeyError::Pem {
            expected: "RSA public key",
            reason: e.to_string(),
        })?;
        let pem = key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Pem {
                expected: "RSA public key",
                reason: e.to_string(),
            })?;
        let fingerprint = KeyFingerprint(Sha256::digest(der.as_bytes()).into());
        Ok(Self {
            key,
            fingerprint,
            pem,
        })
    }

    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`), refusing keys
    /// smaller than `min_bits` or larger than 8192 bits.
    pub fn from_pem(pem: &str, min_bits: usize) -> Result<Self, KeyError> {
        let key = rsa::PublicKey::from_public_key_pem(pem.trim()).map_err(|e| KeyError::Pem {
            expected: "RSA public key",
            reason: e.to_string(),
        })?;
        let bits = key.n_bits_precision() as usize;
        if !(min_bits.max(MIN_RSA_BITS)..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::Size {
                bits,
                min: min_bits.max(MIN_RSA_BITS),
                max: MAX_RSA_BITS,
            });
        }
        Self::from_rsa(key)
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
        self.key.n_bits_precision() as usize
    }
}

/// An RSA private key (peer identity or the supervisor's key). Its `Debug`
/// shows only the public fingerprint.
pub struct PrivateKey {
    pub(crate) key: rsa::PrivateKey,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?})", self.public.fingerprint)
    }
}

impl PrivateKey {
    /// Generates a key of `bits` bits (at least 2048).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R, bits: usize) -> Result<Self, KeyError> {
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::Size {
                bits,
                min: MIN_RSA_BITS,
                max: MAX_RSA_BITS,
            });
        }
        let key = rsa::PrivateKey::new(rng, bits).map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: rsa::PrivateKey) -> Result<Self, KeyError> {
        let public = PublicKey::from_rsa(key.to_public_key())?;
        Ok(Self { key, public })
    }

    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem.trim()).map_err(|e| KeyError::Pem {
            expected: "RSA private key (PKCS#8)",
            reason: e.to_string(),
        })?;
        let bits = key.n_bits_precision() as usize;
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(KeyError::Size {
                bits,
                min: MIN_RSA_BITS,
                max: MAX_RSA_BITS,
            });
        }
        Self::from_rsa(key)
    }

    /// PKCS#8 PEM text. Secret: write it only to a 0600 file.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|doc| doc.as_str().to_owned())
            .map_err(|e| KeyError::Pem {
                expected: "RSA private key (PKCS#8)",
                reason: e.to_string(),
            })
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
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
            (0..4)
                .map(|_| PrivateKey::generate(&mut rng, 2048).unwrap())
                .collect()
        })[i]
    }

    #[test]
    fn pem_round_trips_and_fingerprint_is_stable() {
        let k = test_key(0);
        let pem = k.to_pem().unwrap();
        let back = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(back.public().fingerprint(), k.public().fingerprint());
        let pubk = PublicKey::from_pem(k.public().to_pem(), 2048).unwrap();
        assert_eq!(pubk, *k.public());
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
        let k = test_key(1);
        assert!(matches!(
            PublicKey::from_pem(k.public().to_pem(), 4096),
            Err(KeyError::Size { bits: 2048, .. })
        ));
        let mut rng = rand::rng();
        assert!(matches!(
            PrivateKey::generate(&mut rng, 1024),
            Err(KeyError::Size { .. })
        ));
    }
}
