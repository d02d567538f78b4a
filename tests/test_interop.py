"""rust_core against the independent reference implementation (tests/lic1_reference.py).

Both directions, for every algorithm: rust_core signs and the reference verifies; the reference
signs (with rust_core's keys, and with keys `cryptography`/gmssl made) and rust_core verifies.
The decoded claims must come out equal on both sides.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import cbor2
import lic1_reference as ref
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import rust_core

ALGS = ("EdDSA", "ES256", "SM2")
AT = 1_800_000_000  # a fixed "now" (2027-01-15) so the tests do not depend on the clock
ISSUER = "CN-510107"


def claims_variants() -> list[dict[str, Any]]:
    """Licences covering the optional fields, long and non-ASCII text, and a cited USCC."""
    return [
        ref.make_claims(iat=AT - 60, exp=AT + 86_400 * 365),
        ref.make_claims(iat=AT - 60),  # no exp
        ref.make_claims(iat=0, uscc="91350100M000100Y43", term="T-0002"),
        ref.make_claims(
            iat=AT,
            exp=2**32 + 5,  # beyond 32 bits: CBOR uint64
            extra_lic={6: "10万元人民币", 8: "餐饮服务；食品销售（仅销售预包装食品）"},
            name="深圳市" + "示例" * 40 + "有限公司",
            addr="Nr. 1 Example Road, Chengdu — “quoted” \\ back\\slash \U0001f600",
        ),
    ]


def normalised(claims: dict[str, Any] | None) -> dict[str, Any]:
    """Claims as a plain dict to compare; an absent exp and `"exp": None` count as the same."""
    assert claims is not None
    out = {k: v for k, v in claims.items() if not (k == "exp" and v is None)}
    out["cti"] = bytes(out["cti"])
    out["lic"] = dict(out["lic"])
    return out


def rust_store_for(spkis: list[tuple[str, bytes]], revoked: list[bytes] | None = None) -> Any:
    """A rust_core TrustStore loaded from a trust list the reference wrote (DESIGN.md format)."""
    revoked_json = ref.revocation_list_json(revoked) if revoked is not None else None
    return rust_core.TrustStore.from_json(ref.trust_list_json(spkis, ISSUER), revoked_json)


@pytest.fixture(scope="module", params=ALGS)
def rust_key(request: pytest.FixtureRequest) -> Any:
    return rust_core.SigningKey.generate(request.param)


@pytest.fixture(scope="module")
def ref_twin(rust_key: Any) -> ref.RefKey:
    """The same private key, exported from rust_core as PKCS#8 PEM into the reference."""
    return ref.signing_key_from_pem(rust_key.to_pem())


# --- keys, kid, USCC --------------------------------------------------------------------------


def test_constants_follow_the_design() -> None:
    assert rust_core.MAX_TEXT_CHARS == ref.MAX_TEXT_CHARS == 4296
    assert rust_core.MAX_DECOMPRESSED_BYTES == ref.MAX_DECOMPRESSED_BYTES == 64 * 1024
    assert tuple(rust_core.VERDICTS) == ref.VERDICTS
    assert set(ALGS) <= set(rust_core.ALGORITHMS)


def test_key_export_round_trips(rust_key: Any, ref_twin: ref.RefKey) -> None:
    assert rust_key.alg == ref_twin.alg
    assert ref_twin.spki == rust_key.public_spki()
    assert len(rust_key.kid) == 8
    assert rust_key.kid == ref_twin.kid == ref.kid_of_spki(rust_key.public_spki())
    assert rust_core.kid_of_spki(rust_key.public_spki()) == rust_key.kid
    again = rust_core.SigningKey.from_pem(rust_key.to_pem())
    assert again.kid == rust_key.kid and again.alg == rust_key.alg


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_pem_files_load_in_cryptography(alg: str) -> None:
    """Keys rust_core writes are usable by other tools (pyca/cryptography, hence OpenSSL): an
    operator must be able to inspect, back up or re-import the issuer key. (`cryptography` has
    no SM2 curve, so SM2 is covered by the reference's own DER reader above.)"""
    key = rust_core.SigningKey.generate(alg)
    public = serialization.load_pem_public_key(key.public_pem().encode())
    assert public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == key.public_spki()
    private = serialization.load_pem_private_key(key.to_pem().encode(), password=None)
    assert (
        private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        == key.public_spki()
    )


def test_verifying_key_from_spki_matches(rust_key: Any) -> None:
    public = rust_core.VerifyingKey.from_spki(rust_key.public_spki())
    assert public.alg == rust_key.alg
    assert public.kid == rust_key.kid
    assert public.spki() == rust_key.public_spki()
    assert ref.verifying_key_from_spki(public.spki()).kid == rust_key.kid


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("91350100M000100Y43", True),  # widely cited example; check char worked by hand: 3
        ("91350100M000100Y44", False),
        ("91350100M000100Y4I", False),  # I is not in the GB 32100 alphabet
        ("91350100m000100Y43", False),  # lowercase
        ("91350100M000100Y4", False),  # 17 characters
    ],
)
def test_uscc_known_codes(code: str, valid: bool) -> None:
    assert ref.uscc_is_valid(code) is valid
    assert rust_core.uscc_is_valid(code) is valid


def test_uscc_check_char_agrees_on_random_codes() -> None:
    for _ in range(500):
        body = "".join(secrets.choice(ref.USCC_ALPHABET) for _ in range(17))
        assert rust_core.uscc_check_char(body) == ref.uscc_check_char(body), body
        code = body + secrets.choice(ref.USCC_ALPHABET)
        assert rust_core.uscc_is_valid(code) == ref.uscc_is_valid(code), code


# --- rust_core signs, the reference verifies --------------------------------------------------


def test_rust_signed_verifies_with_reference(rust_key: Any, ref_twin: ref.RefKey) -> None:
    store = ref.RefTrustStore.of([ref.verifying_key_from_spki(rust_key.public_spki())])
    for claims in claims_variants():
        text = rust_key.sign_licence(claims)
        result = store.verify(text, AT)
        assert result.verdict == "valid", (result.stage, result.detail)
        assert result.kid == rust_key.kid and result.alg == rust_key.alg
        assert normalised(result.claims) == normalised(claims)


def test_rust_sign_many_verifies_with_reference(rust_key: Any) -> None:
    store = ref.RefTrustStore.of([ref.verifying_key_from_spki(rust_key.public_spki())])
    batch = [ref.make_claims(iat=AT - i, exp=AT + 3600) for i in range(40)]
    texts = rust_key.sign_many(batch)
    assert len(texts) == len(batch) and len(set(texts)) == len(texts)
    for claims, text in zip(batch, texts, strict=True):
        result = store.verify(text, AT)
        assert result.verdict == "valid", (result.stage, result.detail)
        assert normalised(result.claims) == normalised(claims)


def test_rust_text_has_the_lic1_shape(rust_key: Any) -> None:
    """Prefix, strict Base45, zlib, tag 18, protected {1: alg, 4: kid}, empty unprotected."""
    text = rust_key.sign_licence(ref.make_claims(iat=AT))
    assert text.startswith("LIC1:") and len(text) <= ref.MAX_TEXT_CHARS
    assert set(text[5:]) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    cose = ref.inflate(ref.base45_decode_strict(text[5:]))
    item = cbor2.loads(cose)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    protected, unprotected, payload, signature = item.value
    assert cbor2.loads(protected) == {1: ref.ALG_IDS[rust_key.alg], 4: rust_key.kid}
    assert dict(unprotected) == {}
    assert len(signature) == 64  # Ed25519, and r||s for ES256 and SM2 (not DER)
    cwt = cbor2.loads(payload)
    assert set(cwt) <= {1, 4, 6, 7, -65537}


def test_rust_signature_is_over_the_rfc9052_sig_structure(
    rust_key: Any, ref_twin: ref.RefKey
) -> None:
    payload = b"any payload \x00\xff"
    cose = rust_key.sign_cose(payload)
    protected, _, body, signature = cbor2.loads(cose).value
    assert body == payload
    assert ref_twin.verify(signature, ref.sig_structure(protected, payload))
    if rust_key.alg == "EdDSA":  # deterministic: both sides must produce the very same bytes
        assert ref_twin.sign(ref.sig_structure(protected, payload)) == signature


def test_rust_sign_cose_untagged_and_external_aad(rust_key: Any, ref_twin: ref.RefKey) -> None:
    cose = rust_key.sign_cose(b"doc", external_aad=b"aad", tagged=False)
    protected, _, payload, signature = cbor2.loads(cose)
    assert ref_twin.verify(signature, ref.sig_structure(protected, payload, b"aad"))
    assert not ref_twin.verify(signature, ref.sig_structure(protected, payload))


# --- the reference signs, rust_core verifies --------------------------------------------------


def test_reference_signed_with_rust_key_verifies_in_rust(
    rust_key: Any, ref_twin: ref.RefKey
) -> None:
    from_json = rust_store_for([(rust_key.alg, rust_key.public_spki())])
    from_keys = rust_core.TrustStore.from_keys([rust_key.verifying_key()], issuer=ISSUER)
    for claims in claims_variants():
        text = ref.sign_licence(ref_twin, claims)
        for store in (from_json, from_keys):
            result = store.verify(text, at=AT)
            assert result.verdict == "valid", (result.stage, result.detail)
            assert result.kid == rust_key.kid and result.alg == rust_key.alg
            assert normalised(result.claims) == normalised(claims)


def test_reference_signed_verify_many_in_rust(rust_key: Any, ref_twin: ref.RefKey) -> None:
    store = rust_store_for([(rust_key.alg, rust_key.public_spki())])
    batch = [ref.make_claims(iat=AT - i) for i in range(30)]
    texts = [ref.sign_licence(ref_twin, c) for c in batch]
    results = store.verify_many(texts, at=AT)
    assert [r.verdict for r in results] == ["valid"] * len(texts)
    assert [normalised(r.claims) for r in results] == [normalised(c) for c in batch]


def test_reference_untagged_cose_verifies_in_rust(rust_key: Any, ref_twin: ref.RefKey) -> None:
    payload = ref.encode_claims(ref.make_claims(iat=AT))
    cose = ref.sign_cose(ref_twin, payload, tag=None)
    result = rust_store_for([(rust_key.alg, rust_key.public_spki())]).verify(
        ref.build_text(cose), at=AT
    )
    assert result.verdict == "valid", (result.stage, result.detail)
    public = rust_key.verifying_key()
    assert rust_core.verify_cose_sign1(cose, public) == "valid"
    assert rust_core.open_cose_sign1(cose, public) == ("valid", payload, "")


def test_open_cose_sign1_returns_the_payload_only_when_valid() -> None:
    key = rust_core.SigningKey.generate("EdDSA")
    other = rust_core.SigningKey.generate("EdDSA").verifying_key()
    cose = key.sign_cose(b'{"version":3}', b"aad")
    assert rust_core.open_cose_sign1(cose, key.verifying_key(), b"aad") == (
        "valid",
        b'{"version":3}',
        "",
    )
    verdict, payload, detail = rust_core.open_cose_sign1(cose, other, b"aad")
    assert (verdict, payload) == ("bad_signature", None) and detail
    verdict, payload, _ = rust_core.open_cose_sign1(cose, key.verifying_key(), b"other aad")
    assert (verdict, payload) == ("bad_signature", None)
    tampered = cose.replace(b'"version":3', b'"version":4')
    assert rust_core.open_cose_sign1(tampered, key.verifying_key(), b"aad")[:2] == (
        "bad_signature",
        None,
    )
    assert rust_core.open_cose_sign1(b"\x00garbage", key.verifying_key())[:2] == (
        "malformed",
        None,
    )
    es256 = rust_core.SigningKey.generate("ES256")
    assert rust_core.open_cose_sign1(es256.sign_cose(b"x"), key.verifying_key())[:2] == (
        "bad_signature",
        None,
    )


@pytest.mark.parametrize("alg", ALGS)
def test_foreign_keys_load_into_rust(alg: str) -> None:
    """Keys made by `cryptography` (Ed25519, P-256) or by the reference's gmssl code (SM2),
    loaded into rust_core through PKCS#8 PEM: same kid, and texts verify both ways."""
    foreign = ref.generate_key(alg)
    loaded = rust_core.SigningKey.from_pem(foreign.to_pem())
    assert loaded.alg == alg
    assert loaded.public_spki() == foreign.spki and loaded.kid == foreign.kid

    claims = ref.make_claims(iat=AT - 10, exp=AT + 10)
    store = rust_store_for([(alg, foreign.spki)])
    result = store.verify(ref.sign_licence(foreign, claims), at=AT)
    assert result.verdict == "valid", (result.stage, result.detail)
    assert normalised(result.claims) == normalised(claims)

    back = ref.RefTrustStore.of([foreign]).verify(loaded.sign_licence(claims), AT)
    assert back.verdict == "valid", (back.stage, back.detail)
    assert normalised(back.claims) == normalised(claims)


def test_both_sides_decode_the_same_claims(rust_key: Any, ref_twin: ref.RefKey) -> None:
    """Whoever signed, rust_core and the reference read identical claims from the text."""
    rust_store = rust_store_for([(rust_key.alg, rust_key.public_spki())])
    ref_store = ref.RefTrustStore.of([ref_twin])
    claims = claims_variants()[3]
    for text in (rust_key.sign_licence(claims), ref.sign_licence(ref_twin, claims)):
        mine, theirs = ref_store.verify(text, AT), rust_store.verify(text, at=AT)
        assert mine.verdict == theirs.verdict == "valid"
        assert normalised(mine.claims) == normalised(theirs.claims) == normalised(claims)


def test_default_at_is_now(rust_key: Any, ref_twin: ref.RefKey) -> None:
    now = int(time.time())
    store = rust_store_for([(rust_key.alg, rust_key.public_spki())])
    fresh = ref.sign_licence(ref_twin, ref.make_claims(iat=now - 5, exp=now + 3600))
    stale = ref.sign_licence(ref_twin, ref.make_claims(iat=now - 7200, exp=now - 3600))
    assert store.verify(fresh).verdict == "valid"
    assert store.verify(stale).verdict == "expired"


def test_trust_list_json_round_trips(rust_key: Any) -> None:
    """rust_core's own trust list JSON is DESIGN.md's format: the reference can load it."""
    text = rust_core.trust_list_json([rust_key], ISSUER)
    store = ref.RefTrustStore.from_json(text)
    assert list(store.keys) == [rust_key.kid]
    assert rust_core.TrustStore.from_json(text).kids == [rust_key.kid]
    assert rust_core.TrustStore.from_json(text).issuer == ISSUER
