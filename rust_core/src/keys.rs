//! Signing and verifying keys for the algorithms the seal speaks, with PKCS#8 / SPKI I/O.

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer as _;
use p256::pkcs8::LineEnding;
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use signature::Verifier as _;

use crate::sm2_verify::Sm2Verifier;

/// GB/T 32918.2 default signer distinguishing identifier, as Chinese deployments use it.
pub const SM2_DISTID: &str = "1234567812345678";

/// Signature algorithms. PS256 is verify-only (the EU DCC profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    EdDSA,
    ES256,
    SM2,
    PS256,
}

impl Alg {
    pub const SIGNING: [Alg; 3] = [Alg::EdDSA, Alg::ES256, Alg::SM2];

    /// The COSE algorithm identifier (SM2 uses the private-use id DESIGN.md fixes).
    pub fn cose_id(self) -> i64 {
        match self {
            Alg::EdDSA => -8,
            Alg::ES256 => -7,
            Alg::SM2 => -65537,
            Alg::PS256 => -37,
        }
    }

    pub fn from_cose_id(id: i64) -> Option<Alg> {
        [Alg::EdDSA, Alg::ES256, Alg::SM2, Alg::PS256]
            .into_iter()
            .find(|a| a.cose_id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::SM2 => "SM2",
            Alg::PS256 => "PS256",
        }
    }

    pub fn from_name(name: &str) -> Option<Alg> {
        [Alg::EdDSA, Alg::ES256, Alg::SM2, Alg::PS256]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    UnsupportedAlg(String),
    /// Bytes or PEM that are not a key of a supported type.
    Format(String),
    /// A key that parses but must not be trusted (e.g. a small-order Ed25519 point).
    Weak(&'static str),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::UnsupportedAlg(a) => {
                write!(
                    f,
                    "unsupported algorithm {a:?} (expected EdDSA, ES256 or SM2)"
                )
            }
            KeyError::Format(m) => f.write_str(m),
            KeyError::Weak(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KeyError {}

/// kid = first 8 bytes of SHA-256 over the SubjectPublicKeyInfo DER.
pub fn kid_of_spki(spki_der: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(spki_der);
    let mut kid = [0u8; 8];
    kid.copy_from_slice(&digest[..8]);
    kid
}

pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    /// p256 holds the key for PKCS#8 I/O; ring signs, several times faster.
    P256(p256::ecdsa::SigningKey, Box<ring::signature::EcdsaKeyPair>),
    Sm2(Box<sm2::dsa::SigningKey>),
}

impl SigningKey {
    pub fn generate(alg: Alg) -> Result<SigningKey, KeyError> {
        Ok(match alg {
            Alg::EdDSA => SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
            Alg::ES256 => SigningKey::p256(p256::ecdsa::SigningKey::random(&mut OsRng))?,
            Alg::SM2 => {
                let secret = sm2::SecretKey::random(&mut OsRng);
                SigningKey::Sm2(Box::new(sm2_signing(&secret)?))
            }
            Alg::PS256 => return Err(KeyError::UnsupportedAlg("PS256 (verify only)".into())),
        })
    }

    /// Load an unencrypted PKCS#8 private key (PEM); the key type picks the algorithm.
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, KeyError> {
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return SigningKey::p256(k);
        }
        if let Ok(secret) = sm2::SecretKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Sm2(Box::new(sm2_signing(&secret)?)));
        }
        Err(KeyError::Format(
            "not an unencrypted PKCS#8 PEM private key of type Ed25519, P-256 or SM2".into(),
        ))
    }

    pub fn to_pkcs8_pem(&self) -> String {
        let pem = match self {
            // PKCS#8 v1 (no embedded public key): the form OpenSSL and pyca/cryptography read.
            SigningKey::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF),
            SigningKey::P256(k, _) => k.to_pkcs8_pem(LineEnding::LF),
            SigningKey::Sm2(k) => {
                sm2::SecretKey::from(k.as_nonzero_scalar()).to_pkcs8_pem(LineEnding::LF)
            }
        };
        pem.expect("encoding a valid key cannot fail").to_string()
    }

    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::Ed25519(_) => Alg::EdDSA,
            SigningKey::P256(..) => Alg::ES256,
            SigningKey::Sm2(_) => Alg::SM2,
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Ed25519(k) => VerifyingKey::Ed25519(k.verifying_key()),
            SigningKey::P256(k, _) => VerifyingKey::p256(*k.verifying_key()),
            SigningKey::Sm2(k) => {
                let public = sm2::PublicKey::from_affine(*k.verifying_key().as_affine())
                    .expect("a signing key's public point is valid");
                VerifyingKey::sm2(public).expect("a signing key's public key is valid")
            }
        }
    }

    /// Raw signature over `msg`: 64 bytes for every signing algorithm (r‖s for the ECDSA kinds).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
            SigningKey::P256(_, ring_key) => ring_key
                .sign(&ring::rand::SystemRandom::new(), msg)
                .expect("ring signs with a valid key")
                .as_ref()
                .to_vec(),
            SigningKey::Sm2(k) => {
                let sig: sm2::dsa::Signature = k.sign(msg);
                sig.to_bytes().to_vec()
            }
        }
    }
}

impl SigningKey {
    fn p256(key: p256::ecdsa::SigningKey) -> Result<SigningKey, KeyError> {
        let public = key.verifying_key().to_encoded_point(false);
        let ring_key = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.to_bytes(),
            public.as_bytes(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| KeyError::Format(format!("P-256 key refused: {e}")))?;
        Ok(SigningKey::P256(key, Box::new(ring_key)))
    }
}

fn sm2_signing(secret: &sm2::SecretKey) -> Result<sm2::dsa::SigningKey, KeyError> {
    sm2::dsa::SigningKey::new(SM2_DISTID, secret)
        .map_err(|_| KeyError::Format("invalid SM2 key".into()))
}

#[derive(Clone)]
pub enum VerifyingKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    /// The uncompressed SEC1 point is kept for ring, which verifies P-256 several times faster.
    P256(p256::ecdsa::VerifyingKey, Box<[u8]>),
    /// The `sm2` crate's key (for encoding) and our table-driven verifier, shared by clones.
    Sm2(Box<sm2::dsa::VerifyingKey>, Arc<Sm2Verifier>),
    Rsa(Box<rsa::pss::VerifyingKey<Sha256>>),
}

impl VerifyingKey {
    /// Parse SubjectPublicKeyInfo DER; Ed25519 → EdDSA, P-256 → ES256, SM2 → SM2, RSA → PS256.
    pub fn from_spki_der(der: &[u8]) -> Result<VerifyingKey, KeyError> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            if k.is_weak() {
                return Err(KeyError::Weak("Ed25519 public key is a small-order point"));
            }
            return Ok(VerifyingKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(VerifyingKey::p256(k));
        }
        if let Ok(pk) = sm2::PublicKey::from_public_key_der(der) {
            return VerifyingKey::sm2(pk);
        }
        if let Ok(pk) = rsa::RsaPublicKey::from_public_key_der(der) {
            // PSS with MGF1-SHA-256 and a 32-byte salt (RFC 8230, EU DCC).
            return Ok(VerifyingKey::Rsa(Box::new(rsa::pss::VerifyingKey::new(pk))));
        }
        Err(KeyError::Format(
            "not a SubjectPublicKeyInfo of type Ed25519, P-256, SM2 or RSA".into(),
        ))
    }

    fn sm2(public_key: sm2::PublicKey) -> Result<VerifyingKey, KeyError> {
        let key = sm2::dsa::VerifyingKey::new(SM2_DISTID, public_key)
            .map_err(|_| KeyError::Format("invalid SM2 public key".into()))?;
        let fast = Sm2Verifier::new(SM2_DISTID, &public_key);
        Ok(VerifyingKey::Sm2(Box::new(key), Arc::new(fast)))
    }

    fn p256(key: p256::ecdsa::VerifyingKey) -> VerifyingKey {
        let sec1 = key.to_encoded_point(false).as_bytes().into();
        VerifyingKey::P256(key, sec1)
    }

    pub fn from_spki_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
        let (label, der) = pem_rfc7468_decode(pem)?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::Format(format!(
                "expected a PUBLIC KEY PEM, found {label:?}"
            )));
        }
        VerifyingKey::from_spki_der(&der)
    }

    pub fn alg(&self) -> Alg {
        match self {
            VerifyingKey::Ed25519(_) => Alg::EdDSA,
            VerifyingKey::P256(..) => Alg::ES256,
            VerifyingKey::Sm2(..) => Alg::SM2,
            VerifyingKey::Rsa(_) => Alg::PS256,
        }
    }

    pub fn spki_der(&self) -> Vec<u8> {
        let doc = match self {
            VerifyingKey::Ed25519(k) => k.to_public_key_der(),
            VerifyingKey::P256(k, _) => k.to_public_key_der(),
            VerifyingKey::Sm2(k, _) => sm2::PublicKey::from_affine(*k.as_affine())
                .expect("a verifying key holds a valid point")
                .to_public_key_der(),
            VerifyingKey::Rsa(k) => k.as_ref().to_public_key_der(),
        };
        doc.expect("encoding a valid key cannot fail").into_vec()
    }

    pub fn spki_pem(&self) -> String {
        pem_rfc7468_encode("PUBLIC KEY", &self.spki_der())
    }

    pub fn kid(&self) -> [u8; 8] {
        kid_of_spki(&self.spki_der())
    }

    /// Check a raw signature; a wrong length is simply a bad signature.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            VerifyingKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(msg, &s).is_ok()),
            VerifyingKey::P256(_, sec1) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                sec1,
            )
            .verify(msg, sig)
            .is_ok(),
            VerifyingKey::Sm2(_, fast) => fast.verify(msg, sig),
            VerifyingKey::Rsa(k) => {
                rsa::pss::Signature::try_from(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
        }
    }
}

fn pem_rfc7468_decode(pem: &str) -> Result<(String, Vec<u8>), KeyError> {
    let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
        .map_err(|e| KeyError::Format(format!("not a PEM document: {e}")))?;
    Ok((label.to_string(), der))
}

fn pem_rfc7468_encode(label: &str, der: &[u8]) -> String {
    pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der)
        .expect("PEM encoding of DER cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_every_alg_and_pem_roundtrip() {
        for alg in Alg::SIGNING {
            let key = SigningKey::generate(alg).unwrap();
            let again = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
            assert_eq!(again.alg(), alg);
            let vk = VerifyingKey::from_spki_der(&key.verifying_key().spki_der()).unwrap();
            assert_eq!(vk.alg(), alg);
            assert_eq!(vk.kid(), again.verifying_key().kid());
            let vk_pem = VerifyingKey::from_spki_pem(&vk.spki_pem()).unwrap();
            assert_eq!(vk_pem.kid(), vk.kid());
            let sig = again.sign(b"message");
            assert_eq!(sig.len(), 64);
            assert!(vk.verify(b"message", &sig));
            assert!(!vk.verify(b"messagf", &sig));
            assert!(!vk.verify(b"message", &sig[..63]));
        }
    }

    #[test]
    fn refuses_garbage_and_ps256_signing() {
        assert!(SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----"
        )
        .is_err());
        assert!(VerifyingKey::from_spki_der(b"\x30\x00").is_err());
        assert!(SigningKey::generate(Alg::PS256).is_err());
    }
}
