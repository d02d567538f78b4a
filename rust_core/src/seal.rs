//! The pipeline shared by every profile: QR text → bytes → COSE_Sign1, signature checks
//! (batched for Ed25519, parallel across cores), and issuing LIC1 texts.

use rayon::prelude::*;

use crate::base45;
use crate::claims::Licence;
use crate::cose;
use crate::keys::{Alg, KeyError, SigningKey, VerifyingKey};
use crate::verdict::{Claims, Outcome, Stage, Verdict};
use crate::zlib::{self, InflateError};

/// The largest text a QR code can carry (version 40-L, alphanumeric mode).
pub const MAX_TEXT_CHARS: usize = 4296;
/// Inflating stops here: a larger payload is `too_large`, whatever its stream claims.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024;
pub const LIC1_PREFIX: &str = "LIC1:";
/// How far `iat` may lie ahead of the verifier's clock (clock skew between terminal and auditor).
pub const IAT_SKEW_S: i64 = 300;
/// Texts per parallel work item: large enough for Ed25519 batch verification to pay off.
const CHUNK: usize = 64;

/// Length, prefix, Base45 and zlib: the same for LIC1 and the EU DCC.
pub fn unwrap_text(text: &str, prefix: &str) -> Result<Vec<u8>, Outcome> {
    if text.len() > MAX_TEXT_CHARS && text.chars().count() > MAX_TEXT_CHARS {
        return Err(Outcome::fail(
            Verdict::TooLarge,
            Stage::Length,
            format!("text is longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    let body = text.strip_prefix(prefix).ok_or_else(|| {
        Outcome::fail(
            Verdict::Malformed,
            Stage::Prefix,
            format!("text does not start with {prefix:?}"),
        )
    })?;
    let compressed = base45::decode(body)
        .map_err(|e| Outcome::fail(Verdict::Malformed, Stage::Base45, e.to_string()))?;
    zlib::inflate_limited(&compressed, MAX_DECOMPRESSED_BYTES).map_err(|e| match e {
        InflateError::TooLarge => Outcome::fail(
            Verdict::TooLarge,
            Stage::Zlib,
            format!("payload inflates beyond {MAX_DECOMPRESSED_BYTES} bytes"),
        ),
        InflateError::Corrupt(why) => Outcome::fail(Verdict::Malformed, Stage::Zlib, why),
    })
}

/// A text whose structure parsed and whose signature is still to be checked.
pub struct Pending {
    /// Keys (indices into the profile's key table) that may have signed it.
    pub candidates: Vec<usize>,
    pub tbs: Vec<u8>,
    pub signature: Vec<u8>,
    pub alg: Alg,
    pub kid: Vec<u8>,
    pub claims: Claims,
}

/// What differs between LIC1 and the EU DCC: how a text is read and what follows a good signature.
pub trait Profile: Sync {
    fn key(&self, index: usize) -> &VerifyingKey;
    fn prepare(&self, text: &str) -> Result<Pending, Outcome>;
    /// `signer` is the candidate whose signature verified, if any.
    fn finish(&self, pending: Pending, signer: Option<usize>, at: i64) -> Outcome;
}

pub fn verify_one<P: Profile>(profile: &P, text: &str, at: i64) -> Outcome {
    match profile.prepare(text) {
        Err(outcome) => outcome,
        Ok(p) => {
            let signer = check_one(profile, &p);
            profile.finish(p, signer, at)
        }
    }
}

/// Verify many texts on every core; Ed25519 signatures within a chunk are batch-verified.
pub fn verify_many<P: Profile, S: AsRef<str> + Sync>(
    profile: &P,
    texts: &[S],
    at: i64,
) -> Vec<Outcome> {
    texts
        .par_chunks(CHUNK)
        .map(|chunk| {
            let prepared: Vec<_> = chunk.iter().map(|t| profile.prepare(t.as_ref())).collect();
            let signers = check_chunk(profile, &prepared);
            prepared
                .into_iter()
                .zip(signers)
                .map(|(p, signer)| match p {
                    Err(outcome) => outcome,
                    Ok(p) => profile.finish(p, signer, at),
                })
                .collect::<Vec<_>>()
        })
        .flatten()
        .collect()
}

fn check_one<P: Profile>(profile: &P, p: &Pending) -> Option<usize> {
    p.candidates.iter().copied().find(|&i| {
        let key = profile.key(i);
        key.alg() == p.alg && key.verify(&p.tbs, &p.signature)
    })
}

/// Signature checks for a chunk: one Ed25519 batch equation for every single-candidate Ed25519
/// item; if the batch fails, each is checked alone so exactly the bad ones are found.
fn check_chunk<P: Profile>(profile: &P, items: &[Result<Pending, Outcome>]) -> Vec<Option<usize>> {
    let mut signers = vec![None; items.len()];
    let mut batch = Vec::new();
    for (slot, item) in items.iter().enumerate() {
        let Ok(p) = item else { continue };
        match (p.candidates.as_slice(), p.alg) {
            ([i], Alg::EdDSA) => match (
                profile.key(*i),
                ed25519_dalek::Signature::from_slice(&p.signature),
            ) {
                (VerifyingKey::Ed25519(k), Ok(sig)) => batch.push((slot, *i, *k, sig)),
                _ => signers[slot] = check_one(profile, p),
            },
            _ => signers[slot] = check_one(profile, p),
        }
    }
    let tbs = |slot: usize| match &items[slot] {
        Ok(p) => p.tbs.as_slice(),
        Err(_) => unreachable!("only parsed items are batched"),
    };
    let batch_ok = batch.len() > 1 && {
        let messages: Vec<&[u8]> = batch.iter().map(|(slot, ..)| tbs(*slot)).collect();
        let sigs: Vec<_> = batch.iter().map(|(_, _, _, s)| *s).collect();
        let keys: Vec<_> = batch.iter().map(|(_, _, k, _)| *k).collect();
        ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok()
    };
    for (slot, index, key, sig) in batch {
        if batch_ok || key.verify_strict(tbs(slot), &sig).is_ok() {
            signers[slot] = Some(index);
        }
    }
    signers
}

/// Sign one licence into LIC1 text: claims → CBOR → COSE_Sign1 → zlib → Base45 → "LIC1:".
pub fn issue(key: &SigningKey, kid: &[u8], licence: &Licence) -> Result<String, String> {
    licence.check_for_issue()?;
    let cose = cose::sign1(key, kid, &licence.encode(), b"", true);
    let text = format!("{LIC1_PREFIX}{}", base45::encode(&zlib::compress(&cose)));
    if text.len() > MAX_TEXT_CHARS {
        return Err(format!(
            "the signed licence is {} characters, more than a QR code holds ({MAX_TEXT_CHARS})",
            text.len()
        ));
    }
    Ok(text)
}

/// Sign many on every core; the result keeps the input order.
pub fn issue_many(
    key: &SigningKey,
    kid: &[u8],
    licences: &[Licence],
) -> Vec<Result<String, String>> {
    licences.par_iter().map(|l| issue(key, kid, l)).collect()
}

pub fn parse_alg_name(name: &str) -> Result<Alg, KeyError> {
    Alg::from_name(name).ok_or_else(|| KeyError::UnsupportedAlg(name.to_owned()))
}

/// Generic RFC 9052 check of one COSE_Sign1 with a known key: `alg` only from the protected
/// header and equal to the key's algorithm. For conformance suites and other signed documents.
pub fn verify_cose(data: &[u8], key: &VerifyingKey, external_aad: &[u8]) -> (Verdict, String) {
    match open_cose(data, key, external_aad) {
        Ok(_) => (Verdict::Valid, String::new()),
        Err(e) => e,
    }
}

/// `verify_cose`, returning the payload of a valid COSE_Sign1 (for signed documents other than
/// licences, e.g. the desired-state document): the caller must never read an unverified one.
pub fn open_cose<'a>(
    data: &'a [u8],
    key: &VerifyingKey,
    external_aad: &[u8],
) -> Result<&'a [u8], (Verdict, String)> {
    let sign1 = match cose::parse_sign1(data, cose::Wrapping::Sign1) {
        Ok(s) => s,
        Err(e) => return Err((Verdict::Malformed, e)),
    };
    let alg = match sign1.protected.alg {
        None => return Err((Verdict::Malformed, "no alg in the protected header".into())),
        Some(cose::AlgHeader::Other(a)) => {
            return Err((Verdict::UnsupportedAlg, format!("alg {a} is not supported")))
        }
        Some(cose::AlgHeader::Known(a)) => a,
    };
    if alg != key.alg() {
        return Err((
            Verdict::BadSignature,
            format!(
                "header alg {alg} differs from the key's algorithm {}",
                key.alg()
            ),
        ));
    }
    let tbs = cose::sig_structure(sign1.protected_raw, external_aad, sign1.payload);
    if key.verify(&tbs, sign1.signature) {
        Ok(sign1.payload)
    } else {
        Err((Verdict::BadSignature, "signature does not verify".into()))
    }
}
