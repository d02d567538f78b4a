//! rust_core: the licence seal. LIC1 QR texts are COSE_Sign1 over CWT claims, zlib-compressed
//! and Base45-encoded (DESIGN.md); the same core verifies EU DCC "HC1:" texts.
//!
//! Every module but `python` is plain Rust, tested by `cargo test` without Python; `python`
//! (feature "python") only binds them for the `rust_core._rust` extension module.

pub mod base45;
pub mod cbor;
pub mod claims;
pub mod cose;
pub mod dcc;
pub mod keys;
pub mod qr;
pub mod qr_issue;
pub mod qr_render;
pub mod seal;
pub mod sm2_verify;
pub mod trust;
pub mod uscc;
pub mod verdict;
pub mod zlib;

#[cfg(feature = "python")]
mod python;
