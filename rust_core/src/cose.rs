//! COSE_Sign1 (RFC 9052 §4.2): parsing with the protected header kept as its exact bytes,
//! the Sig_structure, and building messages for our own signing.

use crate::cbor::{self, enc, Value};
use crate::keys::{Alg, SigningKey};

pub const TAG_SIGN1: u64 = 18;
/// The CWT tag (RFC 8392 §6) that some EU DCC issuers wrap around COSE_Sign1.
pub const TAG_CWT: u64 = 61;

const LABEL_ALG: i64 = 1;
const LABEL_CRIT: i64 = 2;
const LABEL_KID: i64 = 4;

/// The `alg` header as found: an integer we may or may not support, or a text name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlgHeader {
    Known(Alg),
    Other(String),
}

#[derive(Debug, Default, Clone)]
pub struct Headers {
    pub alg: Option<AlgHeader>,
    pub kid: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct Sign1<'a> {
    /// The protected header bucket exactly as sent: it is what the signature covers.
    pub protected_raw: &'a [u8],
    pub protected: Headers,
    pub unprotected: Headers,
    pub payload: &'a [u8],
    pub signature: &'a [u8],
}

/// Which outer tags a profile accepts around the COSE_Sign1 array.
#[derive(Debug, Clone, Copy)]
pub enum Wrapping {
    /// Tag 18 or untagged (LIC1 and generic COSE).
    Sign1,
    /// Also CWT tag 61 around tag 18 (EU DCC).
    CwtOrSign1,
}

pub fn parse_sign1(data: &[u8], wrapping: Wrapping) -> Result<Sign1<'_>, String> {
    let top = cbor::decode(data).map_err(|e| e.to_string())?;
    let mut item = &top;
    if let (Wrapping::CwtOrSign1, Value::Tag(TAG_CWT, inner)) = (wrapping, item) {
        item = inner;
    }
    if let Value::Tag(tag, inner) = item {
        if *tag != TAG_SIGN1 {
            return Err(format!("CBOR tag {tag} is not COSE_Sign1 (18)"));
        }
        item = inner;
    }
    let Value::Array(parts) = item else {
        return Err("COSE_Sign1 is not a CBOR array".into());
    };
    let [protected, unprotected, payload, signature] = parts.as_slice() else {
        return Err(format!(
            "COSE_Sign1 has {} elements instead of 4",
            parts.len()
        ));
    };
    let protected_raw =
        borrowed_bytes(data, protected).ok_or("protected header is not a byte string")?;
    let payload = borrowed_bytes(data, payload).ok_or("payload is not a byte string")?;
    let signature = borrowed_bytes(data, signature).ok_or("signature is not a byte string")?;

    let protected_map = if protected_raw.is_empty() {
        Value::Map(Vec::new())
    } else {
        cbor::decode(protected_raw).map_err(|e| format!("protected header: {e}"))?
    };
    let Value::Map(protected_entries) = &protected_map else {
        return Err("protected header is not a map".into());
    };
    let Value::Map(unprotected_entries) = unprotected else {
        return Err("unprotected header is not a map".into());
    };
    // RFC 9052 §3: a label must not sit in both buckets. The EU DCC instead lets the protected
    // one win, and real certificates rely on it (DCC test suite CO21).
    if let Wrapping::Sign1 = wrapping {
        for (label, _) in unprotected_entries {
            if protected_entries.iter().any(|(l, _)| l == label) {
                return Err(
                    "a header label is in both the protected and unprotected buckets".into(),
                );
            }
        }
    }
    let protected = headers(protected_entries, true)?;
    let unprotected = headers(unprotected_entries, false)?;
    Ok(Sign1 {
        protected_raw,
        protected,
        unprotected,
        payload,
        signature,
    })
}

/// The slice of `data` behind a byte string; definite strings always borrow from the input,
/// and COSE forbids nothing else here, so a chunked string is refused.
fn borrowed_bytes<'a>(data: &'a [u8], v: &Value<'_>) -> Option<&'a [u8]> {
    let Value::Bytes(std::borrow::Cow::Borrowed(b)) = v else {
        return None;
    };
    // Re-derive the lifetime from `data`: `b` points inside it.
    let start = (b.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    data.get(start..start + b.len())
}

fn headers(entries: &[(Value<'_>, Value<'_>)], protected: bool) -> Result<Headers, String> {
    let mut h = Headers::default();
    for (label, value) in entries {
        match label.as_i64() {
            Some(LABEL_ALG) => {
                h.alg = Some(match value {
                    v if v.as_i64().is_some() => {
                        let id = v.as_i64().unwrap_or_default();
                        Alg::from_cose_id(id)
                            .map_or(AlgHeader::Other(id.to_string()), AlgHeader::Known)
                    }
                    Value::Text(t) => AlgHeader::Other(t.to_string()),
                    _ => return Err("alg header is neither an integer nor text".into()),
                })
            }
            Some(LABEL_KID) => {
                h.kid = Some(
                    value
                        .as_bytes()
                        .ok_or("kid header is not a byte string")?
                        .to_vec(),
                )
            }
            Some(LABEL_CRIT) => {
                if !protected {
                    return Err("crit header outside the protected bucket".into());
                }
                let Value::Array(labels) = value else {
                    return Err("crit header is not an array".into());
                };
                // We process only alg and kid: any other critical label must be refused.
                if labels.is_empty()
                    || labels
                        .iter()
                        .any(|l| !matches!(l.as_i64(), Some(LABEL_ALG | LABEL_KID)))
                {
                    return Err("crit header names a label this verifier does not process".into());
                }
            }
            _ => {}
        }
    }
    Ok(h)
}

/// Sig_structure = ["Signature1", body_protected, external_aad, payload] (RFC 9052 §4.4).
pub fn sig_structure(protected_raw: &[u8], external_aad: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protected_raw.len() + external_aad.len() + payload.len() + 24);
    enc::array(&mut out, 4);
    enc::text(&mut out, "Signature1");
    enc::bytes(&mut out, protected_raw);
    enc::bytes(&mut out, external_aad);
    enc::bytes(&mut out, payload);
    out
}

/// Protected header {1: alg, 4: kid}, deterministically encoded.
pub fn protected_header(alg: Alg, kid: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kid.len());
    enc::map(&mut out, 2);
    enc::int(&mut out, LABEL_ALG);
    enc::int(&mut out, alg.cose_id());
    enc::int(&mut out, LABEL_KID);
    enc::bytes(&mut out, kid);
    out
}

/// A COSE_Sign1 over `payload`, signed by `key`, with protected {1: alg, 4: kid}.
pub fn sign1(
    key: &SigningKey,
    kid: &[u8],
    payload: &[u8],
    external_aad: &[u8],
    tagged: bool,
) -> Vec<u8> {
    let protected = protected_header(key.alg(), kid);
    let signature = key.sign(&sig_structure(&protected, external_aad, payload));
    let mut out = Vec::with_capacity(protected.len() + payload.len() + signature.len() + 16);
    if tagged {
        enc::tag(&mut out, TAG_SIGN1);
    }
    enc::array(&mut out, 4);
    enc::bytes(&mut out, &protected);
    enc::map(&mut out, 0);
    enc::bytes(&mut out, payload);
    enc::bytes(&mut out, &signature);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_parse_roundtrip() {
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let vk = key.verifying_key();
        for tagged in [true, false] {
            let msg = sign1(&key, b"kid-1234", b"payload", b"aad", tagged);
            let s = parse_sign1(&msg, Wrapping::Sign1).unwrap();
            assert_eq!(s.protected.alg, Some(AlgHeader::Known(Alg::EdDSA)));
            assert_eq!(s.protected.kid.as_deref(), Some(&b"kid-1234"[..]));
            assert_eq!(s.payload, b"payload");
            let tbs = sig_structure(s.protected_raw, b"aad", s.payload);
            assert!(vk.verify(&tbs, s.signature));
        }
    }

    #[test]
    fn structural_refusals() {
        let h = |s: &str| hex::decode(s).unwrap();
        // 3-element array, wrong tag, protected as a map, duplicate label across buckets.
        assert!(parse_sign1(&h("d283404040"), Wrapping::Sign1)
            .unwrap_err()
            .contains("3 elements"));
        assert!(parse_sign1(&h("d184404040a0"), Wrapping::Sign1).is_err());
        assert!(parse_sign1(&h("d884a10126a0404040"), Wrapping::Sign1).is_err());
        assert!(parse_sign1(&h("8443a10126a101264040"), Wrapping::Sign1).is_err());
        // CWT tag only where the profile allows it.
        let inner = sign1(
            &SigningKey::generate(Alg::ES256).unwrap(),
            b"k",
            b"p",
            b"",
            true,
        );
        let wrapped = [vec![0xd8, 61], inner].concat();
        assert!(parse_sign1(&wrapped, Wrapping::Sign1).is_err());
        assert!(parse_sign1(&wrapped, Wrapping::CwtOrSign1).is_ok());
    }
}
