//! The licence claim set (CWT, RFC 8392, integer keys) of DESIGN.md, and the EU DCC one.

use crate::cbor::{enc, Value};
use crate::uscc;

pub const CLAIM_ISS: i64 = 1;
pub const CLAIM_EXP: i64 = 4;
pub const CLAIM_IAT: i64 = 6;
pub const CLAIM_CTI: i64 = 7;
pub const CLAIM_LIC: i64 = -65537;
pub const CLAIM_HCERT: i64 = -260;

pub const SERIAL_LEN: usize = 16;

/// Licence fields (claim -65537): 1 uscc, 2 name, 3 kind, 4 rep, 5 addr, 6 cap?, 7 est, 8 scope?, 9 term.
pub const LIC_USCC: u64 = 1;
pub const LIC_EST: u64 = 7;
pub const LIC_REQUIRED: [u64; 7] = [1, 2, 3, 4, 5, 7, 9];
pub const LIC_KNOWN: [u64; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licence {
    pub iss: String,
    pub iat: u64,
    pub exp: Option<u64>,
    pub cti: [u8; SERIAL_LEN],
    /// Licence fields by integer key, ascending.
    pub lic: Vec<(u64, String)>,
}

impl Licence {
    pub fn field(&self, key: u64) -> Option<&str> {
        self.lic
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Deterministic CBOR (keys in bytewise order of their encoding: 1, 4, 6, 7, -65537).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        enc::map(&mut out, 4 + usize::from(self.exp.is_some()));
        enc::int(&mut out, CLAIM_ISS);
        enc::text(&mut out, &self.iss);
        if let Some(exp) = self.exp {
            enc::int(&mut out, CLAIM_EXP);
            enc::head(&mut out, 0, exp);
        }
        enc::int(&mut out, CLAIM_IAT);
        enc::head(&mut out, 0, self.iat);
        enc::int(&mut out, CLAIM_CTI);
        enc::bytes(&mut out, &self.cti);
        enc::int(&mut out, CLAIM_LIC);
        enc::map(&mut out, self.lic.len());
        for (k, v) in &self.lic {
            enc::head(&mut out, 0, *k);
            enc::text(&mut out, v);
        }
        out
    }

    /// Read a decoded claim set; every error here makes the text `malformed`.
    /// Unknown top-level claims are ignored; unknown licence fields are kept (text only).
    pub fn decode(v: &Value<'_>) -> Result<Licence, String> {
        v.as_map().ok_or("claims are not a CBOR map")?;
        let mut lic = Vec::new();
        if let Some(fields) = v.map_get(CLAIM_LIC) {
            for (k, val) in fields.as_map().ok_or("claim -65537 (lic) is not a map")? {
                let Value::Uint(key) = k else {
                    return Err("a licence field key is not an unsigned integer".into());
                };
                let text = val
                    .as_text()
                    .ok_or_else(|| format!("licence field {key} is not text"))?;
                lic.push((*key, text.to_owned()));
            }
        } else {
            return Err("claim -65537 (lic) is missing".into());
        }
        lic.sort_by_key(|(k, _)| *k);
        if let Some(missing) = LIC_REQUIRED
            .iter()
            .find(|k| !lic.iter().any(|(f, _)| f == *k))
        {
            return Err(format!("licence field {missing} is missing"));
        }
        // DESIGN.md defines field 1 as a code with a valid check character: anything else is
        // not a licence of this format, whoever signed it.
        let code = &lic[0].1;
        if lic[0].0 != LIC_USCC || !uscc::is_valid(code) {
            return Err(format!(
                "licence field 1 (uscc) {code:?} has no valid GB 32100-2015 check character"
            ));
        }
        let cti = v
            .map_get(CLAIM_CTI)
            .ok_or("claim 7 (cti, the serial) is missing")?
            .as_bytes()
            .ok_or("claim 7 (cti) is not a byte string")?;
        Ok(Licence {
            iss: v
                .map_get(CLAIM_ISS)
                .ok_or("claim 1 (iss) is missing")?
                .as_text()
                .ok_or("claim 1 (iss) is not text")?
                .to_owned(),
            iat: uint_claim(v, CLAIM_IAT, "iat")?.ok_or("claim 6 (iat) is missing")?,
            exp: uint_claim(v, CLAIM_EXP, "exp")?,
            cti: cti
                .try_into()
                .map_err(|_| format!("claim 7 (cti) is {} bytes, not {SERIAL_LEN}", cti.len()))?,
            lic,
        })
    }

    /// What the issuer insists on before signing (stricter than what a verifier reads).
    pub fn check_for_issue(&self) -> Result<(), String> {
        if self.iss.trim().is_empty() {
            return Err("iss must not be empty".into());
        }
        if let Some((k, _)) = self.lic.iter().find(|(k, _)| !LIC_KNOWN.contains(k)) {
            return Err(format!("lic has unknown field {k} (known: 1-9)"));
        }
        if let Some(missing) = LIC_REQUIRED
            .iter()
            .find(|k| self.field(**k).is_none_or(|v| v.trim().is_empty()))
        {
            return Err(format!(
                "lic field {missing} is required and must not be empty"
            ));
        }
        let code = self.field(LIC_USCC).unwrap_or_default();
        if !uscc::is_valid(code) {
            return Err(format!(
                "lic field 1 (uscc) {code:?} is not a valid unified social credit code (GB 32100-2015 check character)"
            ));
        }
        let est = self.field(LIC_EST).unwrap_or_default();
        if !is_iso_date(est) {
            return Err(format!(
                "lic field 7 (est) {est:?} is not a date YYYY-MM-DD"
            ));
        }
        if self.exp.is_some_and(|exp| exp <= self.iat) {
            return Err("exp must be after iat".into());
        }
        Ok(())
    }
}

fn uint_claim(v: &Value<'_>, key: i64, name: &str) -> Result<Option<u64>, String> {
    match v.map_get(key) {
        None => Ok(None),
        Some(Value::Uint(n)) => Ok(Some(*n)),
        Some(_) => Err(format!("claim {key} ({name}) is not an unsigned integer")),
    }
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        s.get(r)?.bytes().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    (1..=12).contains(&m) && d >= 1 && d <= days[(m - 1) as usize]
}

/// The EU DCC claim set: the CWT times and the health certificate (claim -260) kept as CBOR.
#[derive(Debug, Clone)]
pub struct DccClaims {
    pub iss: Option<String>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub hcert: Value<'static>,
}

impl DccClaims {
    pub fn decode(v: Value<'_>) -> Result<DccClaims, String> {
        v.as_map().ok_or("claims are not a CBOR map")?;
        let time = |key: i64, name: &str| -> Result<Option<i64>, String> {
            match v.map_get(key) {
                None => Ok(None),
                Some(Value::Float(f)) if f.is_finite() => Ok(Some(*f as i64)),
                Some(t) => t
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| format!("claim {key} ({name}) is not a number")),
            }
        };
        let iss = match v.map_get(CLAIM_ISS) {
            None => None,
            Some(t) => Some(t.as_text().ok_or("claim 1 (iss) is not text")?.to_owned()),
        };
        let (iat, exp) = (time(CLAIM_IAT, "iat")?, time(CLAIM_EXP, "exp")?);
        let hcert = v
            .map_get(CLAIM_HCERT)
            .ok_or("claim -260 (hcert) is missing")?;
        // The health certificate itself (hcert key 1) must be a map too (DCC suite CBO1).
        if hcert.map_get(1).and_then(Value::as_map).is_none() {
            return Err("claim -260 (hcert) does not hold a certificate map under key 1".into());
        }
        Ok(DccClaims {
            iss,
            iat,
            exp,
            hcert: hcert.clone().into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor;

    pub fn sample() -> Licence {
        Licence {
            iss: "CN-510107".into(),
            iat: 1_764_000_000,
            exp: None,
            cti: [7; 16],
            lic: vec![
                (1, "91350100M000100Y43".into()),
                (2, "成都市武侯区张三小吃店".into()),
                (3, "个体工商户".into()),
                (4, "张三".into()),
                (5, "四川省成都市武侯区人民南路四段1号".into()),
                (7, "2024-03-01".into()),
                (9, "T-0001".into()),
            ],
        }
    }

    #[test]
    fn roundtrip_and_issue_checks() {
        let l = sample();
        l.check_for_issue().unwrap();
        let bytes = l.encode();
        assert_eq!(Licence::decode(&cbor::decode(&bytes).unwrap()).unwrap(), l);
        let mut bad = l.clone();
        bad.lic[0].1 = "91350100M000100Y44".into();
        assert!(bad.check_for_issue().unwrap_err().contains("uscc"));
        let mut bad = l.clone();
        bad.lic[5].1 = "2023-02-29".into();
        assert!(bad.check_for_issue().unwrap_err().contains("est"));
        let mut bad = l;
        bad.lic.remove(6);
        assert!(bad.check_for_issue().unwrap_err().contains("9"));
    }

    #[test]
    fn dates() {
        assert!(is_iso_date("2024-02-29"));
        assert!(!is_iso_date("2100-02-29"));
        assert!(!is_iso_date("2024-13-01"));
        assert!(!is_iso_date("2024-1-01"));
    }
}
