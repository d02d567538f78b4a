//! Arbitrary bytes as the COSE layer: wrapped in zlib + Base45 + prefix so the fuzzer spends its
//! time in the CBOR, COSE and claims parsers and the signature path, not in Base45.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use rust_core::{base45, zlib};
use std::sync::OnceLock;

static STORES: OnceLock<(rust_core::trust::TrustStore, rust_core::dcc::DccTrustStore)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (lic1, dcc) = STORES.get_or_init(common::stores);
    let body = base45::encode(&zlib::compress(data));
    let one = lic1.verify(&format!("LIC1:{body}"), 1_800_000_000);
    let many = lic1.verify_many(&[format!("LIC1:{body}")], 1_800_000_000);
    assert_eq!(one.verdict, many[0].verdict, "verify and verify_many disagree");
    dcc.verify(&format!("HC1:{body}"), 1_800_000_000);
    // The parsers alone, on the raw bytes.
    let _ = rust_core::cbor::decode(data);
    let _ = rust_core::cose::parse_sign1(data, rust_core::cose::Wrapping::CwtOrSign1);
});
