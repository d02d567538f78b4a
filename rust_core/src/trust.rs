//! The auditor's trust store for LIC1: issuer keys by kid and the revocation list, loaded from
//! the JSON files of DESIGN.md and refused whole, naming the entry, when any entry is wrong.

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use crate::cbor;
use crate::claims::{Licence, SERIAL_LEN};
use crate::cose::{self, AlgHeader, Wrapping};
use crate::keys::{kid_of_spki, Alg, VerifyingKey};
use crate::seal::{self, Pending, Profile, IAT_SKEW_S, LIC1_PREFIX};
use crate::verdict::{Claims, Outcome, Stage, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustListError(pub String);

impl std::fmt::Display for TrustListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrustListError {}

#[derive(Deserialize)]
struct TrustFile {
    v: u32,
    #[serde(default)]
    issuer: String,
    keys: Vec<TrustEntry>,
}

#[derive(Deserialize)]
struct TrustEntry {
    kid: String,
    alg: String,
    spki: String,
}

#[derive(Deserialize)]
struct RevokedFile {
    v: u32,
    revoked: Vec<String>,
}

#[derive(Default)]
pub struct TrustStore {
    pub issuer: String,
    keys: Vec<VerifyingKey>,
    by_kid: HashMap<[u8; 8], usize>,
    revoked: HashSet<[u8; SERIAL_LEN]>,
}

impl TrustStore {
    pub fn from_json(
        trust_json: &str,
        revoked_json: Option<&str>,
    ) -> Result<TrustStore, TrustListError> {
        let file: TrustFile = serde_json::from_str(trust_json)
            .map_err(|e| TrustListError(format!("trust list is not valid: {e}")))?;
        if file.v != 1 {
            return Err(TrustListError(format!(
                "trust list version {} is not supported (expected 1)",
                file.v
            )));
        }
        let mut store = TrustStore {
            issuer: file.issuer,
            ..TrustStore::default()
        };
        for (i, entry) in file.keys.iter().enumerate() {
            let at = |why: String| {
                TrustListError(format!("trust list keys[{i}] (kid {:?}): {why}", entry.kid))
            };
            let alg = Alg::from_name(&entry.alg)
                .filter(|a| Alg::SIGNING.contains(a))
                .ok_or_else(|| {
                    at(format!(
                        "unknown alg {:?} (expected EdDSA, ES256 or SM2)",
                        entry.alg
                    ))
                })?;
            let der = B64
                .decode(entry.spki.trim())
                .map_err(|e| at(format!("spki is not base64: {e}")))?;
            let key = VerifyingKey::from_spki_der(&der)
                .map_err(|e| at(format!("spki does not parse: {e}")))?;
            if key.alg() != alg {
                return Err(at(format!(
                    "alg {alg} does not match the key type ({})",
                    key.alg()
                )));
            }
            let derived = hex::encode(kid_of_spki(&der));
            if !entry.kid.eq_ignore_ascii_case(&derived) {
                return Err(at(format!(
                    "kid does not match the kid derived from spki ({derived})"
                )));
            }
            store.add_key(key).map_err(at)?;
        }
        if let Some(json) = revoked_json {
            store.load_revoked(json)?;
        }
        Ok(store)
    }

    pub fn from_keys(
        issuer: &str,
        keys: Vec<VerifyingKey>,
        revoked: &[[u8; SERIAL_LEN]],
    ) -> Result<TrustStore, TrustListError> {
        let mut store = TrustStore {
            issuer: issuer.to_owned(),
            ..TrustStore::default()
        };
        for key in keys {
            store.add_key(key).map_err(TrustListError)?;
        }
        store.revoked.extend(revoked.iter().copied());
        Ok(store)
    }

    fn add_key(&mut self, key: VerifyingKey) -> Result<(), String> {
        if key.alg() == Alg::PS256 {
            return Err("RSA keys are not LIC1 issuer keys".into());
        }
        let kid = key.kid();
        if self.by_kid.insert(kid, self.keys.len()).is_some() {
            return Err(format!("duplicate key (kid {})", hex::encode(kid)));
        }
        self.keys.push(key);
        Ok(())
    }

    fn load_revoked(&mut self, json: &str) -> Result<(), TrustListError> {
        let file: RevokedFile = serde_json::from_str(json)
            .map_err(|e| TrustListError(format!("revocation list is not valid: {e}")))?;
        if file.v != 1 {
            return Err(TrustListError(format!(
                "revocation list version {} is not supported",
                file.v
            )));
        }
        for (i, serial) in file.revoked.iter().enumerate() {
            let bytes = hex::decode(serial)
                .ok()
                .and_then(|b| <[u8; SERIAL_LEN]>::try_from(b).ok())
                .ok_or_else(|| {
                    TrustListError(format!(
                        "revocation list revoked[{i}] {serial:?} is not 32 hex digits"
                    ))
                })?;
            self.revoked.insert(bytes);
        }
        Ok(())
    }

    pub fn kids(&self) -> Vec<[u8; 8]> {
        self.keys.iter().map(VerifyingKey::kid).collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    pub fn to_json(&self) -> String {
        trust_list_json(&self.issuer, &self.keys)
    }

    pub fn verify(&self, text: &str, at: i64) -> Outcome {
        seal::verify_one(self, text, at)
    }

    pub fn verify_many<S: AsRef<str> + Sync>(&self, texts: &[S], at: i64) -> Vec<Outcome> {
        seal::verify_many(self, texts, at)
    }
}

impl Profile for TrustStore {
    fn key(&self, index: usize) -> &VerifyingKey {
        &self.keys[index]
    }

    fn prepare(&self, text: &str) -> Result<Pending, Outcome> {
        let cose_bytes = seal::unwrap_text(text, LIC1_PREFIX)?;
        let sign1 = cose::parse_sign1(&cose_bytes, Wrapping::Sign1)
            .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Cose, e))?;
        let claims_value = cbor::decode(sign1.payload)
            .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Cbor, format!("payload: {e}")))?;
        let licence = Licence::decode(&claims_value)
            .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Claims, e))?;
        // LIC1 takes alg and kid from the protected header only.
        let kid = sign1.protected.kid.clone();
        let header = |o: Outcome| o.with_header(kid.clone(), None);
        let alg = match &sign1.protected.alg {
            None => {
                return Err(header(Outcome::fail(
                    Verdict::Malformed,
                    Stage::Cose,
                    "no alg in the protected header",
                )))
            }
            Some(AlgHeader::Known(a)) if Alg::SIGNING.contains(a) => *a,
            Some(AlgHeader::Known(a)) => {
                return Err(header(Outcome::fail(
                    Verdict::UnsupportedAlg,
                    Stage::Alg,
                    format!("alg {a} is not a LIC1 algorithm"),
                )))
            }
            Some(AlgHeader::Other(a)) => {
                return Err(header(Outcome::fail(
                    Verdict::UnsupportedAlg,
                    Stage::Alg,
                    format!("alg {a} is not supported"),
                )))
            }
        };
        let Some(kid) = kid else {
            return Err(Outcome::fail(
                Verdict::Malformed,
                Stage::Cose,
                "no kid in the protected header",
            )
            .with_header(None, Some(alg)));
        };
        let index = <[u8; 8]>::try_from(kid.as_slice())
            .ok()
            .and_then(|k| self.by_kid.get(&k).copied())
            .ok_or_else(|| {
                Outcome::fail(
                    Verdict::UnknownKid,
                    Stage::Kid,
                    format!("kid {} is not in the trust list", hex::encode(&kid)),
                )
                .with_header(Some(kid.clone()), Some(alg))
            })?;
        Ok(Pending {
            candidates: vec![index],
            tbs: cose::sig_structure(sign1.protected_raw, b"", sign1.payload),
            signature: sign1.signature.to_vec(),
            alg,
            kid,
            claims: Claims::Licence(licence),
        })
    }

    fn finish(&self, p: Pending, signer: Option<usize>, at: i64) -> Outcome {
        let header = (Some(p.kid), Some(p.alg));
        let Claims::Licence(licence) = p.claims else {
            unreachable!("the LIC1 profile only prepares licences")
        };
        if signer.is_none() {
            let key_alg = self.keys[p.candidates[0]].alg();
            let why = if key_alg != p.alg {
                format!(
                    "header alg {} differs from the key's algorithm {key_alg}",
                    p.alg
                )
            } else {
                "signature does not verify".to_owned()
            };
            return Outcome::fail(Verdict::BadSignature, Stage::Signature, why)
                .with_header(header.0, header.1);
        }
        let failure = if self.revoked.contains(&licence.cti) {
            Some((
                Verdict::Revoked,
                Stage::Revocation,
                format!("serial {} is revoked", hex::encode(licence.cti)),
            ))
        } else if licence
            .exp
            .is_some_and(|exp| i128::from(at) >= i128::from(exp))
        {
            Some((
                Verdict::Expired,
                Stage::Time,
                "the licence printout has expired".to_owned(),
            ))
        } else if i128::from(licence.iat) > i128::from(at) + i128::from(IAT_SKEW_S) {
            Some((
                Verdict::NotYetValid,
                Stage::Time,
                "issued-at lies in the future".to_owned(),
            ))
        } else {
            None
        };
        match failure {
            Some((verdict, stage, why)) => Outcome::fail(verdict, stage, why),
            None => Outcome::valid(),
        }
        .with_header(header.0, header.1)
        .with_claims(Claims::Licence(licence))
    }
}

/// DESIGN.md's trust list: {"v":1,"issuer":…,"keys":[{"kid":hex,"alg":…,"spki":base64 DER}]}.
pub fn trust_list_json(issuer: &str, keys: &[VerifyingKey]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|k| {
            let der = k.spki_der();
            serde_json::json!({"kid": hex::encode(kid_of_spki(&der)), "alg": k.alg().name(), "spki": B64.encode(&der)})
        })
        .collect();
    serde_json::json!({"v": 1, "issuer": issuer, "keys": keys}).to_string()
}

pub fn revocation_list_json(serials: &[[u8; SERIAL_LEN]]) -> String {
    let revoked: Vec<_> = serials.iter().map(hex::encode).collect();
    serde_json::json!({"v": 1, "revoked": revoked}).to_string()
}
