//! The EU Digital COVID Certificate profile ("HC1:"), which holds the same core to a public
//! conformance suite: kid from the protected header else the unprotected one, every key with
//! that kid tried, PS256 allowed, CWT tag 61 accepted, and the certificate-validity time check.

use std::collections::HashMap;

use crate::cbor;
use crate::claims::DccClaims;
use crate::cose::{self, AlgHeader, Wrapping};
use crate::keys::VerifyingKey;
use crate::seal::{self, Pending, Profile};
use crate::verdict::{Claims, Outcome, Stage, Verdict};

pub const HC1_PREFIX: &str = "HC1:";

pub struct DccKey {
    pub key: VerifyingKey,
    /// The signer certificate's validity, epoch seconds.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
}

#[derive(Default)]
pub struct DccTrustStore {
    keys: Vec<DccKey>,
    by_kid: HashMap<Vec<u8>, Vec<usize>>,
}

impl DccTrustStore {
    pub fn add(&mut self, kid: Vec<u8>, key: DccKey) {
        self.by_kid.entry(kid).or_default().push(self.keys.len());
        self.keys.push(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn verify(&self, text: &str, at: i64) -> Outcome {
        seal::verify_one(self, text, at)
    }

    pub fn verify_many<S: AsRef<str> + Sync>(&self, texts: &[S], at: i64) -> Vec<Outcome> {
        seal::verify_many(self, texts, at)
    }
}

impl Profile for DccTrustStore {
    fn key(&self, index: usize) -> &VerifyingKey {
        &self.keys[index].key
    }

    fn prepare(&self, text: &str) -> Result<Pending, Outcome> {
        let cose_bytes = seal::unwrap_text(text, HC1_PREFIX)?;
        let sign1 = cose::parse_sign1(&cose_bytes, Wrapping::CwtOrSign1)
            .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Cose, e))?;
        let claims_value = cbor::decode(sign1.payload)
            .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Cbor, format!("payload: {e}")))?;
        let claims = DccClaims::decode(claims_value)
            .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Claims, e))?;
        let kid = sign1
            .protected
            .kid
            .clone()
            .or_else(|| sign1.unprotected.kid.clone());
        let alg = match sign1
            .protected
            .alg
            .as_ref()
            .or(sign1.unprotected.alg.as_ref())
        {
            None => {
                return Err(
                    Outcome::fail(Verdict::Malformed, Stage::Cose, "no alg header")
                        .with_header(kid, None),
                )
            }
            Some(AlgHeader::Known(a)) => *a,
            Some(AlgHeader::Other(a)) => {
                return Err(Outcome::fail(
                    Verdict::UnsupportedAlg,
                    Stage::Alg,
                    format!("alg {a} is not supported"),
                )
                .with_header(kid, None))
            }
        };
        let Some(kid) = kid else {
            return Err(
                Outcome::fail(Verdict::UnknownKid, Stage::Kid, "no kid header")
                    .with_header(None, Some(alg)),
            );
        };
        let Some(candidates) = self.by_kid.get(&kid) else {
            return Err(Outcome::fail(
                Verdict::UnknownKid,
                Stage::Kid,
                format!("kid {} is not trusted", hex::encode(&kid)),
            )
            .with_header(Some(kid), Some(alg)));
        };
        Ok(Pending {
            candidates: candidates.clone(),
            tbs: cose::sig_structure(sign1.protected_raw, b"", sign1.payload),
            signature: sign1.signature.to_vec(),
            alg,
            kid,
            claims: Claims::Dcc(claims),
        })
    }

    /// Time check: cert.not_before <= iat <= at <= exp <= cert.not_after.
    fn finish(&self, p: Pending, signer: Option<usize>, at: i64) -> Outcome {
        let (kid, alg) = (Some(p.kid), Some(p.alg));
        let Some(signer) = signer else {
            return Outcome::fail(
                Verdict::BadSignature,
                Stage::Signature,
                "no trusted key with this kid verifies the signature",
            )
            .with_header(kid, alg);
        };
        let Claims::Dcc(claims) = &p.claims else {
            unreachable!("the DCC profile only prepares DCC claims")
        };
        let key = &self.keys[signer];
        let le = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => a <= b,
            _ => true,
        };
        let failure = if !le(Some(at), claims.exp) || !le(claims.exp, key.not_after) {
            Some((
                Verdict::Expired,
                "expired, or expires after its signer certificate",
            ))
        } else if !le(claims.iat, Some(at)) || !le(key.not_before, claims.iat) {
            Some((
                Verdict::NotYetValid,
                "issued in the future, or before its signer certificate",
            ))
        } else {
            None
        };
        match failure {
            Some((verdict, why)) => Outcome::fail(verdict, Stage::Time, why),
            None => Outcome::valid(),
        }
        .with_header(kid, alg)
        .with_claims(p.claims)
    }
}
