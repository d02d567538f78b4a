//! The stores every fuzz target verifies against. The Ed25519 key comes from a fixed seed so
//! that seed texts made by `seeds.py` carry a trusted kid and reach the signature checks.

use rust_core::dcc::{DccKey, DccTrustStore};
use rust_core::keys::{SigningKey, VerifyingKey};
use rust_core::trust::TrustStore;

pub const FUZZ_SEED: [u8; 32] = [7; 32];

pub fn stores() -> (TrustStore, DccTrustStore) {
    let key = SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&FUZZ_SEED));
    let vk: VerifyingKey = key.verifying_key();
    let lic1 = TrustStore::from_keys("CN-FUZZ", vec![vk.clone()], &[[0u8; 16]]).expect("one key");
    let mut dcc = DccTrustStore::default();
    dcc.add(vk.kid().to_vec(), DccKey { key: vk, not_before: None, not_after: None });
    (lic1, dcc)
}
