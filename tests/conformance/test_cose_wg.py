"""COSE WG examples (cose-wg/Examples): every COSE_Sign1 case through rust_core.verify_cose_sign1.

The verdict is the oracle. Upstream labels a case as failing with `"fail": true`; its
`failures{}` block only says how the message was altered (sign-pass-03's "RemoveCBORTag" still
passes: untagged COSE_Sign1 is accepted). Failing cases are held to the exact verdict RFC 9052
processing as DESIGN.md describes it gives (alg only from the protected header, tag 18 or none).
"""

import pytest

import rust_core

SUPPORTED_ALGS = {"EdDSA", "ES256", "PS256"}

# Key types VerifyingKey.from_spki refuses (KeyFormatError): those cases cannot be verified.
UNSUPPORTED_KEY_TYPES = {
    "EC P-384": "P-384 keys (ES384) are outside rust_core's algorithm set",
    "EC P-521": "P-521 keys (ES512) are outside rust_core's algorithm set",
    "OKP Ed448": "Ed448 keys are outside rust_core's algorithm set (EdDSA means Ed25519 here)",
}

# Labelled passing upstream, but failing under correct processing.
MISLABELLED = {
    "sign1-tests/sign-pass-01": (
        "cose-wg/Examples#107: alg sits only in the unprotected header and the signature covers "
        "h'' although the protected header is h'A0'"
    ),
}

# The verdict each failing case must get.
FAILURE_VERDICTS = {
    "sign1-tests/sign-fail-01": "malformed",  # CBOR tag 998 is not COSE_Sign1's 18
    "sign1-tests/sign-fail-02": "bad_signature",  # payload altered
    "sign1-tests/sign-fail-03": "unsupported_alg",  # protected alg -999
    "sign1-tests/sign-fail-04": "unsupported_alg",  # protected alg "unknown" (a tstr alg)
    "sign1-tests/sign-fail-06": "bad_signature",  # protected header gained ctyp
    "sign1-tests/sign-fail-07": "bad_signature",  # protected header lost ctyp
    "sign1-tests/sign-pass-01": "malformed",  # no alg in the protected header
}


def expected_verdict(case) -> str:
    if not case.should_verify or case.id in MISLABELLED:
        return FAILURE_VERDICTS[case.id]
    if case.alg not in SUPPORTED_ALGS:
        return "unsupported_alg"
    return "valid"


def test_verify(cose_wg_case):
    case = cose_wg_case
    if case.key_type in UNSUPPORTED_KEY_TYPES:
        with pytest.raises(rust_core.KeyFormatError):
            rust_core.VerifyingKey.from_spki(case.spki)
        pytest.skip(f"{case.id}: key refused as expected; {UNSUPPORTED_KEY_TYPES[case.key_type]}")
    key = rust_core.VerifyingKey.from_spki(case.spki)
    verdict = rust_core.verify_cose_sign1(case.cose, key, case.external_aad)
    context = f"{case.title} ({case.alg}, {case.key_type}) {MISLABELLED.get(case.id, '')}"
    assert verdict == expected_verdict(case), context
