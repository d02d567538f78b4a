"""RFC 9285 Base45: the RFC's examples round-trip exactly; inputs decoders have wrongly accepted
are refused with Base45Error (vectors: base45-rfc9285-vectors.json)."""

import pytest

import rust_core


def test_encode(base45_positive):
    data = bytes.fromhex(base45_positive["bytes_hex"])
    assert rust_core.base45_encode(data) == base45_positive["base45"]


def test_decode(base45_positive):
    expected = bytes.fromhex(base45_positive["bytes_hex"])
    assert rust_core.base45_decode(base45_positive["base45"]) == expected


def test_refused(base45_negative):
    with pytest.raises(rust_core.Base45Error):
        decoded = rust_core.base45_decode(base45_negative["base45"])
        pytest.fail(f"accepted as {decoded.hex()}: {base45_negative['why']}")
