//! Issuing with the picture: sign each licence (seal::issue) and draw its QR code as SVG and
//! PNG, many at a time on every core.

use rayon::prelude::*;

use crate::claims::Licence;
use crate::keys::SigningKey;
use crate::qr::QrCode;
use crate::qr_render;
use crate::seal;

/// One issued licence: the LIC1 text and its QR code drawn both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub text: String,
    pub svg: String,
    pub png: Vec<u8>,
}

/// Sign and draw one licence; `module_px` already checked (qr_render::check_module_px).
/// Errors are the issuer's refusals and a text too long for a version 40-Q symbol.
pub fn issue(
    key: &SigningKey,
    kid: &[u8],
    licence: &Licence,
    module_px: usize,
) -> Result<Issued, String> {
    let text = seal::issue(key, kid, licence)?;
    let code = QrCode::encode(&text).map_err(|e| e.to_string())?;
    Ok(Issued {
        svg: qr_render::svg(&code, module_px),
        png: qr_render::png(&code, module_px),
        text,
    })
}

/// `issue` for many on every core; the result keeps the input order.
pub fn issue_many(
    key: &SigningKey,
    kid: &[u8],
    licences: &[Licence],
    module_px: usize,
) -> Vec<Result<Issued, String>> {
    licences
        .par_iter()
        .map(|l| issue(key, kid, l, module_px))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Alg;

    fn licence(term: &str) -> Licence {
        Licence {
            iss: "CN-510107".into(),
            iat: 1_764_000_000,
            exp: Some(1_795_536_000),
            cti: [9; 16],
            lic: vec![
                (1, "91350100M000100Y43".into()),
                (2, "成都市武侯区张三小吃店".into()),
                (3, "个体工商户".into()),
                (4, "张三".into()),
                (5, "四川省成都市武侯区人民南路四段1号".into()),
                (7, "2024-03-01".into()),
                (9, term.into()),
            ],
        }
    }

    #[test]
    fn many_equals_one_at_a_time() {
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let kid = key.verifying_key().kid();
        let licences: Vec<_> = (0..5).map(|i| licence(&format!("T-{i:04}"))).collect();
        let issued = issue_many(&key, &kid, &licences, 2);
        for (l, got) in licences.iter().zip(issued) {
            let got = got.unwrap();
            // Ed25519 is deterministic: the same text, hence the same drawings.
            assert_eq!(got.text, seal::issue(&key, &kid, l).unwrap());
            let code = QrCode::encode(&got.text).unwrap();
            assert_eq!(got.svg, qr_render::svg(&code, 2));
            assert_eq!(got.png, qr_render::png(&code, 2));
        }
        let mut bad = licence("T-9");
        bad.lic[0].1 = "91350100M000100Y44".into();
        assert!(issue_many(&key, &kid, &[bad], 2)[0].is_err());
    }
}
