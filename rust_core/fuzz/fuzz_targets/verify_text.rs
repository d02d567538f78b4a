//! Any text, as a handheld scanner might type it: one verdict, no panic, bounded time.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static STORES: OnceLock<(rust_core::trust::TrustStore, rust_core::dcc::DccTrustStore)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (lic1, dcc) = STORES.get_or_init(common::stores);
    let text = String::from_utf8_lossy(data);
    let one = lic1.verify(&text, 1_800_000_000);
    let many = lic1.verify_many(&[text.as_ref()], 1_800_000_000);
    assert_eq!(one.verdict, many[0].verdict, "verify and verify_many disagree");
    dcc.verify(&text, 1_800_000_000);
});
