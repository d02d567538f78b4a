//! Verdicts are data: exactly one per text, with where it was decided and why.

use crate::claims::{DccClaims, Licence};
use crate::keys::Alg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Malformed,
    TooLarge,
    UnsupportedAlg,
    UnknownKid,
    BadSignature,
    Revoked,
    Expired,
    NotYetValid,
}

impl Verdict {
    /// In the order the checks run, "valid" first.
    pub const ALL: [Verdict; 9] = [
        Verdict::Valid,
        Verdict::Malformed,
        Verdict::TooLarge,
        Verdict::UnsupportedAlg,
        Verdict::UnknownKid,
        Verdict::BadSignature,
        Verdict::Revoked,
        Verdict::Expired,
        Verdict::NotYetValid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Malformed => "malformed",
            Verdict::TooLarge => "too_large",
            Verdict::UnsupportedAlg => "unsupported_alg",
            Verdict::UnknownKid => "unknown_kid",
            Verdict::BadSignature => "bad_signature",
            Verdict::Revoked => "revoked",
            Verdict::Expired => "expired",
            Verdict::NotYetValid => "not_yet_valid",
        }
    }
}

/// The step of the pipeline that decided a non-valid verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Length,
    Prefix,
    Base45,
    Zlib,
    Cbor,
    Cose,
    Claims,
    Alg,
    Kid,
    Signature,
    Revocation,
    Time,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Length => "length",
            Stage::Prefix => "prefix",
            Stage::Base45 => "base45",
            Stage::Zlib => "zlib",
            Stage::Cbor => "cbor",
            Stage::Cose => "cose",
            Stage::Claims => "claims",
            Stage::Alg => "alg",
            Stage::Kid => "kid",
            Stage::Signature => "signature",
            Stage::Revocation => "revocation",
            Stage::Time => "time",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Claims {
    Licence(Licence),
    Dcc(DccClaims),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    pub stage: Option<Stage>,
    pub detail: Option<String>,
    pub kid: Option<Vec<u8>>,
    pub alg: Option<Alg>,
    /// Present only once the signature checked out (valid, revoked, expired, not yet valid):
    /// an auditor is never shown the contents of a forgery as if they meant something.
    pub claims: Option<Box<Claims>>,
}

impl Outcome {
    pub fn fail(verdict: Verdict, stage: Stage, detail: impl Into<String>) -> Outcome {
        Outcome {
            verdict,
            stage: Some(stage),
            detail: Some(detail.into()),
            kid: None,
            alg: None,
            claims: None,
        }
    }

    pub fn valid() -> Outcome {
        Outcome {
            verdict: Verdict::Valid,
            stage: None,
            detail: None,
            kid: None,
            alg: None,
            claims: None,
        }
    }

    pub fn with_claims(mut self, claims: Claims) -> Outcome {
        self.claims = Some(Box::new(claims));
        self
    }

    pub fn with_header(mut self, kid: Option<Vec<u8>>, alg: Option<Alg>) -> Outcome {
        self.kid = kid;
        self.alg = alg;
        self
    }

    pub fn is_valid(&self) -> bool {
        self.verdict == Verdict::Valid
    }
}
