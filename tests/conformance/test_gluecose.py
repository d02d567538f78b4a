"""GlueCOSE test vectors (branches main and negative-tests) through rust_core.

sign1::verify cases verify with their `external` AAD and must give "valid" when `shouldVerify`;
sign1::sign cases carry their expected output, which must verify too. The negative cases are the
RFC 9052 musts a strict verifier enforces (cose-musts-and-shoulds.md): each is a structure error,
so DESIGN.md's verdict for all of them is "malformed".
"""

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

import rust_core

SUPPORTED_ALGS = {"EdDSA", "ES256", "PS256"}
COSE_ALG_IDS = {"EdDSA": -8, "ES256": -7, "PS256": -37}

UNSUPPORTED_KEY_TYPES = {
    "EC P-384": "P-384 keys (ES384) are outside rust_core's algorithm set",
    "EC P-521": "P-521 keys (ES512) are outside rust_core's algorithm set",
}

NEGATIVE_VERDICTS = {
    "negative-tests/sign1-verify-negative-0000": "malformed",  # protected header not a bstr
    "negative-tests/sign1-verify-negative-0001": "malformed",  # protected bstr holds an array
    "negative-tests/sign1-verify-negative-0002": "malformed",  # duplicate label in protected
    "negative-tests/sign1-verify-negative-0003": "malformed",  # duplicate label in unprotected
    "negative-tests/sign1-verify-negative-0004": "malformed",  # no alg at all
    "negative-tests/sign1-verify-negative-0005": "malformed",  # alg only in unprotected
}


def expected_verdict(case) -> str:
    if not case.should_verify:
        return NEGATIVE_VERDICTS[case.id]
    if case.alg not in SUPPORTED_ALGS:
        return "unsupported_alg"
    return "valid"


def test_verify(gluecose_case):
    case = gluecose_case
    if case.key_type in UNSUPPORTED_KEY_TYPES:
        with pytest.raises(rust_core.KeyFormatError):
            rust_core.VerifyingKey.from_spki(case.spki)
        pytest.skip(f"{case.id}: key refused as expected; {UNSUPPORTED_KEY_TYPES[case.key_type]}")
    key = rust_core.VerifyingKey.from_spki(case.spki)
    verdict = rust_core.verify_cose_sign1(case.cose, key, case.external_aad)
    assert verdict == expected_verdict(case), f"{case.title} ({case.alg}, {case.key_type})"


def _sig_structure(protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, external_aad, payload])  # RFC 9052 §4.4


def _verify_es256(spki: bytes, signature: bytes, message: bytes) -> None:
    """Independent check with `cryptography`; raises InvalidSignature."""
    public_key = serialization.load_der_public_key(spki)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert len(signature) == 64, "ES256 signature must be r||s, 32 bytes each"
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    der = utils.encode_dss_signature(r, s)
    public_key.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_sign_matches_independent_verifier(gluecose_sign_case):
    """rust_core signs the vector's payload with the vector's key and external AAD; the message
    must verify under `cryptography` over the RFC 9052 Sig_structure."""
    case = gluecose_sign_case
    if case.alg != "ES256":
        pytest.skip(f"{case.id}: rust_core does not sign with {case.alg}")
    key = rust_core.SigningKey.from_pem(case.pkcs8_pem)
    assert key.alg == case.alg
    assert key.public_spki() == case.spki

    message = cbor2.loads(key.sign_cose(case.payload, external_aad=case.external_aad))
    assert message.tag == 18
    protected, _unprotected, payload, signature = message.value
    assert payload == case.payload
    assert cbor2.loads(protected) == {1: COSE_ALG_IDS[case.alg], 4: key.kid}
    _verify_es256(case.spki, signature, _sig_structure(protected, case.external_aad, payload))
