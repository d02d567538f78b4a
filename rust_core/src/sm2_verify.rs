//! SM2 signature verification (GB/T 32918.2) with precomputed tables.
//!
//! The `sm2` crate computes [s]G + [t]P with a generic constant-time ladder: about 400 µs here.
//! Verification handles only public data, so it may run in variable time: with a comb of
//! 8-bit windows for G (built once) and for each trusted key (built on its first use), the
//! combination is at most 64 point additions, several times faster. Agreement with the `sm2`
//! crate's own verifier is tested below on good and bad signatures.

use std::sync::OnceLock;

use sm2::elliptic_curve::group::Group;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::elliptic_curve::sec1::ToEncodedPoint;
use sm2::elliptic_curve::PrimeField;
use sm2::{FieldBytes, ProjectivePoint, PublicKey, Scalar};
use sm3::{Digest, Sm3};

/// Multiples of one point: `rows[i][b]` = b · 256^i · P, so k·P is one addition per byte of k.
struct Comb {
    rows: Vec<[ProjectivePoint; 256]>,
}

impl Comb {
    fn new(point: ProjectivePoint) -> Comb {
        let mut rows = Vec::with_capacity(32);
        let mut base = point;
        for _ in 0..32 {
            let mut row = [ProjectivePoint::IDENTITY; 256];
            for j in 1..256 {
                row[j] = row[j - 1] + base;
            }
            rows.push(row);
            for _ in 0..8 {
                base = base.double();
            }
        }
        Comb { rows }
    }

    fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let bytes = k.to_repr(); // big-endian
        let mut acc = ProjectivePoint::IDENTITY;
        for (row, &b) in self.rows.iter().zip(bytes.iter().rev()) {
            if b != 0 {
                acc += row[usize::from(b)];
            }
        }
        acc
    }
}

fn generator_comb() -> &'static Comb {
    static G: OnceLock<Comb> = OnceLock::new();
    G.get_or_init(|| Comb::new(ProjectivePoint::generator()))
}

pub struct Sm2Verifier {
    /// Z = SM3(ENTL ‖ ID ‖ a ‖ b ‖ xG ‖ yG ‖ xA ‖ yA), fixed per key and signer id.
    z: [u8; 32],
    point: ProjectivePoint,
    comb: OnceLock<Comb>,
}

impl Sm2Verifier {
    pub fn new(distid: &str, public_key: &PublicKey) -> Sm2Verifier {
        let g = ProjectivePoint::generator()
            .to_affine()
            .to_encoded_point(false);
        let a = public_key.as_affine().to_encoded_point(false);
        let bits = (distid.len() * 8) as u16;
        let mut h = Sm3::new();
        h.update(bits.to_be_bytes());
        h.update(distid.as_bytes());
        h.update(curve_a_b());
        h.update(&g.as_bytes()[1..]);
        h.update(&a.as_bytes()[1..]);
        Sm2Verifier {
            z: h.finalize().into(),
            point: public_key.to_projective(),
            comb: OnceLock::new(),
        }
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        // Parsing checks r and s are in [1, n-1] (steps B1, B2).
        let Ok(sig) = sm2::dsa::Signature::from_slice(sig) else {
            return false;
        };
        let (r, s) = sig.split_scalars();
        let digest: FieldBytes = Sm3::new().chain_update(self.z).chain_update(msg).finalize();
        let e = <Scalar as Reduce<sm2::U256>>::reduce_bytes(&digest);
        let t = *r + *s;
        if bool::from(t.is_zero()) {
            return false;
        }
        let comb = self.comb.get_or_init(|| Comb::new(self.point));
        let point = generator_comb().mul(&s) + comb.mul(&t);
        if bool::from(point.is_identity()) {
            return false;
        }
        let x = <Scalar as Reduce<sm2::U256>>::reduce_bytes(&point.to_affine().x());
        *r == e + x
    }
}

/// The curve coefficients a ‖ b as they enter Z (GB/T 32918.5 recommended curve).
fn curve_a_b() -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&hex_literal(
        "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC",
    ));
    out[32..].copy_from_slice(&hex_literal(
        "28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93",
    ));
    out
}

fn hex_literal(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).expect("a 64-digit constant");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SM2_DISTID;
    use rand_core::OsRng;
    use signature::{Signer, Verifier};

    #[test]
    fn agrees_with_the_sm2_crate() {
        for _ in 0..8 {
            let secret = sm2::SecretKey::random(&mut OsRng);
            let signer = sm2::dsa::SigningKey::new(SM2_DISTID, &secret).unwrap();
            let reference = signer.verifying_key().clone();
            let fast = Sm2Verifier::new(SM2_DISTID, &secret.public_key());
            let sig: sm2::dsa::Signature = signer.sign(b"licence");
            let bytes = sig.to_bytes();
            assert!(reference.verify(b"licence", &sig).is_ok());
            assert!(fast.verify(b"licence", &bytes));
            assert!(!fast.verify(b"licencf", &bytes));
            for bit in [0, 100, 300, 511] {
                let mut bad = bytes;
                bad[bit / 8] ^= 1 << (bit % 8);
                let theirs = sm2::dsa::Signature::from_slice(&bad)
                    .is_ok_and(|s| reference.verify(b"licence", &s).is_ok());
                assert_eq!(fast.verify(b"licence", &bad), theirs);
                assert!(!theirs);
            }
            // A different signer id changes Z, so the signature no longer verifies.
            assert!(
                !Sm2Verifier::new("ALICE123@YAHOO.COM", &secret.public_key())
                    .verify(b"licence", &bytes)
            );
        }
    }

    #[test]
    fn refuses_zero_and_short_signatures() {
        let secret = sm2::SecretKey::random(&mut OsRng);
        let fast = Sm2Verifier::new(SM2_DISTID, &secret.public_key());
        assert!(!fast.verify(b"m", &[0u8; 64]));
        assert!(!fast.verify(b"m", &[1u8; 63]));
    }
}
