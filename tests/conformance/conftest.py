"""Loading of the public conformance vectors for rust_core.

The vectors live beside the repository in `../shared/conformance/` (see its README.md) and are
read in place, never copied into the repository. Test functions receive them through fixtures
parametrized here (`pytest_generate_tests`), one test per vector with a readable id.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
MISSING = f"conformance vectors not found at {VECTORS} (shared/ must sit beside the repository)"

# COSE WG example folders holding COSE_Sign1 ("sign0") cases. The shared README names the first
# four; RFC8152 and countersign* are Sign1 messages too and cost nothing to add.
COSE_WG_SIGN1_DIRS = (
    "sign1-tests",
    "eddsa-examples",
    "ecdsa-examples",
    "CWT",
    "RFC8152",
    "countersign",
    "countersign1",
)
GLUECOSE_BRANCHES = ("main", "negative-tests")


@dataclass(frozen=True)
class Sign1Case:
    """One COSE_Sign1 vector, with its key already turned into DER."""

    id: str
    title: str
    cose: bytes
    external_aad: bytes
    should_verify: bool  # as labelled upstream
    alg: str  # the algorithm name the vector says it uses ("ES256", "EdDSA", ...)
    key_type: str  # "EC P-256", "OKP Ed25519", "RSA", ...
    spki: bytes  # SubjectPublicKeyInfo DER of the public key
    pkcs8_pem: bytes | None  # the private key, when the vector gives it
    payload: bytes | None  # plaintext to sign (sign vectors only)


@dataclass(frozen=True)
class DccCase:
    """One EU DCC test case file, undigested."""

    id: str  # "AT/1", "PL/1.3.0/6", "common/CO22", "QR"
    path: Path
    data: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# JWK-ish keys (both base64url fields "x" and hex fields "x_hex" occur) -> cryptography keys


def _field(jwk: dict[str, Any], name: str) -> bytes:
    if f"{name}_hex" in jwk:
        return bytes.fromhex(jwk[f"{name}_hex"])
    text = jwk[name]
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(jwk: dict[str, Any], name: str) -> int:
    return int.from_bytes(_field(jwk, name), "big")


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}


def key_type(jwk: dict[str, Any]) -> str:
    return f"{jwk['kty']} {jwk['crv']}" if "crv" in jwk else jwk["kty"]


def jwk_public_key(jwk: dict[str, Any]) -> Any:
    kind = key_type(jwk)
    if jwk["kty"] == "EC":
        numbers = ec.EllipticCurvePublicNumbers(
            _int(jwk, "x"), _int(jwk, "y"), _CURVES[jwk["crv"]]()
        )
        return numbers.public_key()
    if kind == "OKP Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_field(jwk, "x"))
    if kind == "OKP Ed448":
        return ed448.Ed448PublicKey.from_public_bytes(_field(jwk, "x"))
    if kind == "RSA":
        return rsa.RSAPublicNumbers(_int(jwk, "e"), _int(jwk, "n")).public_key()
    raise ValueError(f"no SPKI form for key type {kind}")


def jwk_private_key(jwk: dict[str, Any]) -> Any:
    kind = key_type(jwk)
    if jwk["kty"] == "EC":
        return ec.derive_private_key(_int(jwk, "d"), _CURVES[jwk["crv"]]())
    if kind == "OKP Ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(_field(jwk, "d"))
    if kind == "OKP Ed448":
        return ed448.Ed448PrivateKey.from_private_bytes(_field(jwk, "d"))
    if kind == "RSA":
        public = rsa.RSAPublicNumbers(_int(jwk, "e"), _int(jwk, "n"))
        names = ("p", "q", "d", "dp", "dq", "qi")
        return rsa.RSAPrivateNumbers(*(_int(jwk, n) for n in names), public).private_key()
    raise ValueError(f"no PKCS#8 form for key type {kind}")


def _spki(jwk: dict[str, Any]) -> bytes:
    return jwk_public_key(jwk).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pkcs8_pem(jwk: dict[str, Any]) -> bytes | None:
    if "d" not in jwk and "d_hex" not in jwk:
        return None
    return jwk_private_key(jwk).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------------------------------------
# Loaders: each returns [(id, value), ...]


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def base45_vectors(kind: str) -> list[tuple[str, dict[str, Any]]]:
    vectors = _json(VECTORS / "base45-rfc9285-vectors.json")[kind]
    return [(repr(v["base45"]), v) for v in vectors]


def cose_wg_cases() -> list[tuple[str, Sign1Case]]:
    cases = []
    for folder in COSE_WG_SIGN1_DIRS:
        for path in sorted((VECTORS / "cose-examples" / folder).glob("*.json")):
            data = _json(path)
            sign0 = data["input"].get("sign0")
            if sign0 is None:  # COSE_Sign (several signers), not COSE_Sign1
                continue
            case_id = f"{folder}/{path.stem}"
            case = Sign1Case(
                id=case_id,
                title=data["title"],
                cose=bytes.fromhex(data["output"]["cbor"]),
                external_aad=bytes.fromhex(sign0.get("external", "")),
                should_verify=not data.get("fail", False),
                alg=sign0["alg"],
                key_type=key_type(sign0["key"]),
                spki=_spki(sign0["key"]),
                pkcs8_pem=_pkcs8_pem(sign0["key"]),
                payload=None,
            )
            cases.append((case_id, case))
    return cases


def gluecose_cases() -> list[tuple[str, Sign1Case]]:
    cases = []
    for branch in GLUECOSE_BRANCHES:
        for path in sorted((VECTORS / "gluecose-test-vectors" / branch).glob("sign1-*.json")):
            data = _json(path)
            if "sign1::verify" in data:
                body = data["sign1::verify"]
                cose = body["taggedCOSESign1"]["cborHex"]
                should_verify, payload = body["shouldVerify"], None
            else:  # sign1::sign: its expected output must verify too
                body = data["sign1::sign"]
                cose = body["expectedOutput"]["cborHex"]
                should_verify, payload = True, bytes.fromhex(body["payload"])
            case_id = f"{branch}/{path.stem}"
            case = Sign1Case(
                id=case_id,
                title=data["title"].strip(),
                cose=bytes.fromhex(cose),
                external_aad=bytes.fromhex(body.get("external", "")),
                should_verify=should_verify,
                alg=data["alg"],
                key_type=key_type(data["key"]),
                spki=_spki(data["key"]),
                pkcs8_pem=_pkcs8_pem(data["key"]),
                payload=payload,
            )
            cases.append((case_id, case))
    return cases


def _dcc_case_id(path: Path, root: Path) -> str:
    # XX/2DCode/raw/n.json -> "XX/n"; PL/1.3.0/2DCode/raw/6.json -> "PL/1.3.0/6" (IE says "Raw")
    parts = path.relative_to(root).parts
    return "/".join((*parts[: parts.index("2DCode")], path.stem))


def dcc_cases() -> list[tuple[str, DccCase]]:
    root = VECTORS / "dgc-testdata"
    paths = sorted(p for p in root.glob("**/2DCode/*/*.json"))
    cases = [(_dcc_case_id(p, root), DccCase(_dcc_case_id(p, root), p, _json(p))) for p in paths]
    # The extension-less root file QR is one more (positive) case; 6.json beside it is not a case.
    cases.append(("QR", DccCase("QR", root / "QR", _json(root / "QR"))))
    return cases


# fixture name -> loader; a test asking for the fixture runs once per vector
_LOADERS: dict[str, Callable[[], list[tuple[str, Any]]]] = {
    "base45_positive": lambda: base45_vectors("positive"),
    "base45_negative": lambda: base45_vectors("negative"),
    "cose_wg_case": cose_wg_cases,
    "gluecose_case": gluecose_cases,
    "gluecose_sign_case": lambda: [(i, c) for i, c in gluecose_cases() if c.payload is not None],
    "dcc_case": dcc_cases,
}


def _params(loader: Callable[[], list[tuple[str, Any]]]) -> Iterator[Any]:
    if not VECTORS.is_dir():
        yield pytest.param(None, id="vectors-missing", marks=pytest.mark.skip(reason=MISSING))
        return
    for case_id, value in loader():
        yield pytest.param(value, id=case_id)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, loader in _LOADERS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, list(_params(loader)))


@pytest.fixture(scope="session")
def all_dcc_cases() -> list[DccCase]:
    """Every DCC case at once, for the suite summary."""
    if not VECTORS.is_dir():
        pytest.skip(MISSING)
    return [case for _, case in dcc_cases()]


@pytest.fixture(scope="session")
def dcc_known_issues() -> list[dict[str, str]]:
    """dgc-testdata/tests/known_issues.csv: what the upstream runner itself skips, and why."""
    path = VECTORS / "dgc-testdata" / "tests" / "known_issues.csv"
    with path.open(newline="", encoding="utf-8") as rows:
        return list(csv.DictReader(rows))
