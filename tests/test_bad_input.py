"""Hostile and broken LIC1 texts: rust_core.TrustStore.verify gives each its one verdict.

The expected verdicts and their precedence are DESIGN.md's ("Verification yields exactly one
verdict"): structure (`malformed`, `too_large`) → `unsupported_alg` → `unknown_kid` → signature
(a header alg that differs from the key's is `bad_signature`) → `revoked` → `expired` →
`not_yet_valid`. Broken inputs are built with the reference implementation's helpers, and the
reference must reach the same verdict (so a case tests what it says it tests).
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import lic1_reference as ref
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import rust_core

AT = 1_800_000_000
ISSUER = "CN-510107"
STRUCTURAL = {"malformed", "too_large"}


@dataclass
class Ctx:
    """Trusted keys (one per alg, made by rust_core), an untrusted one, the stores."""

    ed: ref.RefKey
    es: ref.RefKey
    sm: ref.RefKey
    stranger: ref.RefKey
    revoked_cti: bytes
    store: Any
    ref_store: ref.RefTrustStore

    def claims(self, **kw: Any) -> dict[str, Any]:
        kw.setdefault("iat", AT - 3600)
        return ref.make_claims(**kw)

    def payload(self, **kw: Any) -> bytes:
        return ref.encode_claims(self.claims(**kw))

    def cose(self, key: ref.RefKey | None = None, payload: bytes | None = None, **kw: Any) -> bytes:
        body = self.payload() if payload is None else payload
        return ref.sign_cose(key or self.ed, body, **kw)

    def text(self, key: ref.RefKey | None = None, **claims_kw: Any) -> str:
        return ref.build_text(self.cose(key, self.payload(**claims_kw)))


@pytest.fixture(scope="module")
def ctx() -> Ctx:
    rust_keys = [rust_core.SigningKey.generate(alg) for alg in ("EdDSA", "ES256", "SM2")]
    ed, es, sm = (ref.signing_key_from_pem(k.to_pem()) for k in rust_keys)
    revoked = bytes.fromhex("0badc0de" * 4)
    trust = ref.trust_list_json([(k.alg, k.public_spki()) for k in rust_keys], ISSUER)
    revoked_json = ref.revocation_list_json([revoked])
    return Ctx(
        ed=ed,
        es=es,
        sm=sm,
        stranger=ref.generate_key("EdDSA"),
        revoked_cti=revoked,
        store=rust_core.TrustStore.from_json(trust, revoked_json),
        ref_store=ref.RefTrustStore.from_json(trust, revoked_json),
    )


def check(ctx: Ctx, text: str, expected: str, at: int = AT) -> Any:
    """rust_core's verdict must be `expected` (and the reference's too); never an exception."""
    mine = ctx.ref_store.verify(text, at)
    assert mine.verdict == expected, f"reference: {mine.verdict} ({mine.stage}: {mine.detail})"
    got = ctx.store.verify(text, at=at)
    assert got.verdict in rust_core.VERDICTS
    assert got.verdict == expected, f"rust_core: {got.verdict} ({got.stage}: {got.detail})"
    assert got.valid is (expected == "valid") and bool(got) is got.valid
    if expected == "valid":
        assert got.stage is None
    else:
        assert got.stage and isinstance(got.detail, str) and got.detail
    if expected == "too_large":
        assert got.claims is None
    return got


def body_of(text: str) -> str:
    return text[len(ref.PREFIX) :]


def replace_at(s: str, i: int, c: str) -> str:
    return s[:i] + c + s[i + 1 :]


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def with_signature(ctx: Ctx, change: Callable[[bytes], bytes]) -> str:
    """A genuine Ed25519 licence whose signature bytes were then changed."""
    protected, unprotected, payload, sig = cbor2.loads(ctx.cose()).value
    return ref.build_text(ref.cose_sign1(protected, unprotected, payload, change(sig)))


def tampered_payload(ctx: Ctx) -> str:
    protected, _, body, sig = cbor2.loads(ctx.cose()).value
    cwt = cbor2.loads(body)
    cwt[ref.CLAIM_LIC][2] = "篡改后的名称"
    return ref.build_text(ref.cose_sign1(protected, {}, cbor2.dumps(cwt), sig))


def es256_der_signature(ctx: Ctx) -> str:
    """ES256 with an ASN.1 DER signature instead of COSE's raw r||s: a classic interop bug."""
    payload = ctx.payload()
    protected = ref.protected_header("ES256", ctx.es.kid)
    raw = ctx.es.sign(ref.sig_structure(protected, payload))
    der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    return ref.build_text(ref.cose_sign1(protected, {}, payload, der))


def signed_payload(ctx: Ctx, payload: bytes, key: ref.RefKey | None = None) -> str:
    return ref.build_text(ctx.cose(key, payload))


def claims_raw(ctx: Ctx, **override: Any) -> bytes:
    """The CWT map with some entries replaced (None deletes one), integer keys kept."""
    cwt: dict[int, Any] = ref.claims_to_cwt(ctx.claims())
    for key, value in override.items():
        label = {"iss": 1, "exp": 4, "iat": 6, "cti": 7, "lic": -65537}[key]
        if value is None:
            cwt.pop(label, None)
        else:
            cwt[label] = value
    return cbor2.dumps(cwt)


def duplicate_claim(ctx: Ctx) -> bytes:
    cwt = ref.claims_to_cwt(ctx.claims())
    pairs = [*cwt.items(), (ref.CLAIM_CTI, bytes(16))]  # a second cti, e.g. to dodge revocation
    return ref.cbor_map_raw(pairs)


def duplicate_lic_field(ctx: Ctx) -> bytes:
    cwt = ref.claims_to_cwt(ctx.claims())
    lic = ref.cbor_map_raw([*cwt[ref.CLAIM_LIC].items(), (2, "另一个名称")])
    return ref.cbor_map_raw(
        [*((k, v) for k, v in cwt.items() if k != ref.CLAIM_LIC), (-65537, lic)]
    )


def raw_cose(ctx: Ctx, protected: bytes, unprotected: ref.RawCbor | dict[int, Any]) -> str:
    """COSE_Sign1 signed over `protected` (raw bytes), with an arbitrary unprotected header."""
    payload = ctx.payload()
    signature = ctx.ed.sign(ref.sig_structure(protected, payload))
    un = (
        unprotected
        if isinstance(unprotected, ref.RawCbor)
        else ref.RawCbor(cbor2.dumps(unprotected))
    )
    return ref.build_text(ref.cbor_array_raw([protected, un, payload, signature], tag=18))


def headers(ctx: Ctx, protected: dict[int, Any], unprotected: dict[int, Any]) -> str:
    """A licence signed under exactly these header maps."""
    return raw_cose(ctx, cbor2.dumps(protected), unprotected)


def cwt_tag_wrapped(ctx: Ctx) -> str:
    """CWT tag 61 around the COSE_Sign1: the DCC profile accepts it, LIC1 does not."""
    inner = cbor2.loads(ctx.cose())
    return ref.build_text(cbor2.dumps(cbor2.CBORTag(61, cbor2.CBORTag(18, list(inner.value)))))


def duplicate_protected_label(ctx: Ctx) -> str:
    protected = ref.cbor_map_raw([(1, -8), (4, ctx.ed.kid), (1, -7)])
    return raw_cose(ctx, protected, {})


def duplicate_unprotected_label(ctx: Ctx) -> str:
    protected = ref.protected_header("EdDSA", ctx.ed.kid)
    return raw_cose(ctx, protected, ref.cbor_map_raw([(4, b"a"), (4, b"b")]))


def bomb_text(inflated: int) -> str:
    return ref.PREFIX + ref.b45encode(ref.zlib_bomb(inflated))


def cut_to(text: str, residue: int, *, half: bool = False) -> str:
    """Shorten the Base45 body to a length ≡ residue (mod 3): 0 keeps whole groups, so the cut
    shows up in zlib; 1 is a length Base45 itself refuses."""
    body = body_of(text)
    n = len(body) // 2 if half else len(body) - 1
    n -= (n - residue) % 3
    return ref.PREFIX + body[:n]


def empty_protected_header(ctx: Ctx) -> str:
    """Protected header h'' (an empty map by RFC 9052), so no alg: signed over anyway."""
    payload = ctx.payload()
    signature = ctx.ed.sign(ref.sig_structure(b"", payload))
    return ref.build_text(ref.cose_sign1(b"", {}, payload, signature))


def long_signed_text(ctx: Ctx) -> str:
    """A genuinely signed licence whose text is over 4,296 characters (incompressible addr)."""
    noise = base64.b32encode(random.Random(7).randbytes(3500)).decode()
    return ctx.text(addr=noise)


def cose_variant(ctx: Ctx, mutate: Callable[[list[Any]], list[Any]], tag: int | None = 18) -> str:
    """Take a genuine COSE_Sign1's four parts, change them, re-encode (for wrong-shape cases)."""
    parts = list(cbor2.loads(ctx.cose()).value)
    return ref.build_text(ref.cose_array(mutate(parts), tag=tag))


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _flip_sig_of(ctx: Ctx, key: ref.RefKey) -> str:
    protected, _, payload, sig = cbor2.loads(ctx.cose(key)).value
    return ref.build_text(ref.cose_sign1(protected, {}, payload, flip_bit(sig, 17, 3)))


def _replace_sig_of(ctx: Ctx, key: ref.RefKey, signature: bytes) -> str:
    protected, _, payload, _ = cbor2.loads(ctx.cose(key)).value
    return ref.build_text(ref.cose_sign1(protected, {}, payload, signature))


def _flipped_text(ctx: Ctx, **claims_kw: Any) -> str:
    return _flipped_payload_text(ctx, ctx.payload(**claims_kw))


def _flipped_payload_text(ctx: Ctx, payload: bytes) -> str:
    protected, _, body, sig = cbor2.loads(ctx.cose(payload=payload)).value
    return ref.build_text(ref.cose_sign1(protected, {}, body, flip_bit(sig, 5)))


Case = tuple[str, Callable[[Ctx], str], str]

CASES: list[Case] = [
    # --- structure: prefix, Base45, zlib, CBOR, COSE --------------------------------------
    ("empty text", lambda c: "", "malformed"),
    ("prefix only", lambda c: "LIC1:", "malformed"),
    ("HC1 prefix", lambda c: "HC1:" + body_of(c.text()), "malformed"),
    ("lowercase prefix", lambda c: "lic1:" + body_of(c.text()), "malformed"),
    ("no prefix", lambda c: body_of(c.text()), "malformed"),
    ("prefix without colon", lambda c: "LIC1" + body_of(c.text()), "malformed"),
    ("leading space", lambda c: " " + c.text(), "malformed"),
    ("lowercase Base45", lambda c: "LIC1:" + body_of(c.text()).lower(), "malformed"),
    (
        "illegal Base45 char #",
        lambda c: "LIC1:" + replace_at(body_of(c.text()), 9, "#"),
        "malformed",
    ),
    (
        "illegal Base45 char =",
        lambda c: "LIC1:" + replace_at(body_of(c.text()), 0, "="),
        "malformed",
    ),
    ("non-ASCII char", lambda c: "LIC1:" + replace_at(body_of(c.text()), 6, "é"), "malformed"),
    ("full-width colon in prefix", lambda c: "LIC1：" + body_of(c.text()), "malformed"),
    ("trailing newline", lambda c: c.text() + "\n", "malformed"),
    ("Base45 triple over 0xFFFF", lambda c: "LIC1:GGW" + body_of(c.text()), "malformed"),
    ("Base45 length 3n+1", lambda c: cut_to(c.text(), 1), "malformed"),
    ("truncated by 3 chars", lambda c: c.text()[:-3], "malformed"),
    (
        "truncated to half, whole Base45 groups",
        lambda c: cut_to(c.text(), 0, half=True),
        "malformed",
    ),
    ("not zlib (raw COSE)", lambda c: ref.build_text(c.cose(), compressed=False), "malformed"),
    (
        "raw deflate without zlib header",
        lambda c: ref.PREFIX + ref.b45encode(_raw_deflate(c.cose())),
        "malformed",
    ),
    (
        "zlib with a bad Adler-32",
        lambda c: ref.PREFIX + ref.b45encode(flip_bit(ref.compress(c.cose()), -1)),
        "malformed",
    ),
    (
        "zlib with trailing bytes",
        lambda c: ref.PREFIX + ref.b45encode(ref.compress(c.cose()) + b"\x00"),
        "malformed",
    ),
    ("zlib of text", lambda c: ref.build_text(b"hello, this is not COSE"), "malformed"),
    ("zlib of nothing", lambda c: ref.build_text(b""), "malformed"),
    ("zlib of a CBOR map", lambda c: ref.build_text(cbor2.dumps({1: 2})), "malformed"),
    ("COSE with trailing CBOR", lambda c: ref.build_text(c.cose() + b"\x00"), "malformed"),
    ("CBOR cut short", lambda c: ref.build_text(c.cose()[:-1]), "malformed"),
    ("tag 98 (COSE_Sign)", lambda c: cose_variant(c, lambda p: p, tag=98), "malformed"),
    ("tag 17 (COSE_Mac0)", lambda c: cose_variant(c, lambda p: p, tag=17), "malformed"),
    ("tag 61 around tag 18 (DCC only)", cwt_tag_wrapped, "malformed"),
    ("3-element COSE array", lambda c: cose_variant(c, lambda p: p[:3]), "malformed"),
    ("5-element COSE array", lambda c: cose_variant(c, lambda p: [*p, b""]), "malformed"),
    (
        "protected header as a map",
        lambda c: cose_variant(c, lambda p: [cbor2.loads(p[0]), *p[1:]]),
        "malformed",
    ),
    (
        "protected header not CBOR",
        lambda c: cose_variant(c, lambda p: [b"\xff", *p[1:]]),
        "malformed",
    ),
    (
        "protected header a CBOR array",
        lambda c: cose_variant(c, lambda p: [cbor2.dumps([1, -8]), *p[1:]]),
        "malformed",
    ),
    (
        "unprotected header an array",
        lambda c: cose_variant(c, lambda p: [p[0], [], *p[2:]]),
        "malformed",
    ),
    (
        "detached (nil) payload",
        lambda c: cose_variant(c, lambda p: [*p[:2], None, p[3]]),
        "malformed",
    ),
    (
        "signature not a bstr",
        lambda c: cose_variant(c, lambda p: [*p[:3], p[3].hex()]),
        "malformed",
    ),
    ("empty protected header", empty_protected_header, "malformed"),
    (
        "alg only in the unprotected header",
        lambda c: ref.build_text(c.cose(header_alg=None, unprotected={1: -8})),
        "malformed",
    ),
    ("duplicate label in protected header", duplicate_protected_label, "malformed"),
    ("no kid", lambda c: headers(c, {1: -8}, {}), "malformed"),
    (
        "kid only in the unprotected header",
        lambda c: headers(c, {1: -8}, {4: c.ed.kid}),
        "malformed",
    ),
    ("kid as text", lambda c: headers(c, {1: -8, 4: c.ed.kid.hex()}, {}), "malformed"),
    (
        "alg in both headers (RFC 9052 §3)",
        lambda c: headers(c, {1: -8, 4: c.ed.kid}, {1: -8}),
        "malformed",
    ),
    (
        "crit names an unknown label",
        lambda c: headers(c, {1: -8, 2: [99], 4: c.ed.kid, 99: 0}, {}),
        "malformed",
    ),
    ("duplicate label in unprotected header", duplicate_unprotected_label, "malformed"),
    # --- claims ------------------------------------------------------------------------------
    ("empty payload", lambda c: signed_payload(c, b""), "malformed"),
    ("payload not CBOR", lambda c: signed_payload(c, b"\xff\xfe"), "malformed"),
    ("payload a CBOR array", lambda c: signed_payload(c, cbor2.dumps([1, 2])), "malformed"),
    (
        "payload with trailing bytes",
        lambda c: signed_payload(c, c.payload() + b"\x00"),
        "malformed",
    ),
    ("duplicate CBOR key in claims", lambda c: signed_payload(c, duplicate_claim(c)), "malformed"),
    ("duplicate CBOR key in lic", lambda c: signed_payload(c, duplicate_lic_field(c)), "malformed"),
    ("claims without cti", lambda c: signed_payload(c, claims_raw(c, cti=None)), "malformed"),
    ("cti of 8 bytes", lambda c: signed_payload(c, claims_raw(c, cti=bytes(8))), "malformed"),
    ("cti as text", lambda c: signed_payload(c, claims_raw(c, cti="00" * 16)), "malformed"),
    ("claims without iss", lambda c: signed_payload(c, claims_raw(c, iss=None)), "malformed"),
    ("iat as text", lambda c: signed_payload(c, claims_raw(c, iat="1700000000")), "malformed"),
    ("negative iat", lambda c: signed_payload(c, claims_raw(c, iat=-1)), "malformed"),
    ("iat a bignum", lambda c: signed_payload(c, claims_raw(c, iat=2**70)), "malformed"),
    ("exp a float", lambda c: signed_payload(c, claims_raw(c, exp=1.9e9)), "malformed"),
    (
        "lic with a text key",
        lambda c: signed_payload(c, claims_raw(c, lic={"1": "x"})),
        "malformed",
    ),
    ("claims without lic", lambda c: signed_payload(c, claims_raw(c, lic=None)), "malformed"),
    ("lic without uscc", lambda c: signed_payload(c, claims_raw(c, lic={2: "x"})), "malformed"),
    (
        "lic with a wrong USCC check character",
        lambda c: c.text(uscc="91350100M000100Y44"),
        "malformed",
    ),
    # --- sizes --------------------------------------------------------------------------------
    ("text of 4,297 chars", lambda c: "LIC1:" + "0" * 4292, "too_large"),
    ("signed text over 4,296 chars", long_signed_text, "too_large"),
    ("over 4,296 chars and no prefix", lambda c: "X" * 5000, "too_large"),
    ("text of 4,296 chars (not too large)", lambda c: "LIC1:" + "0" * 4291, "malformed"),
    ("inflates to exactly 64 KiB", lambda c: bomb_text(64 * 1024), "malformed"),
    ("inflates to 64 KiB + 1", lambda c: bomb_text(64 * 1024 + 1), "too_large"),
    ("zlib bomb", lambda c: bomb_text(2_800_000), "too_large"),
    # --- algorithm, kid, signature -----------------------------------------------------------
    (
        "unsupported alg -35 (ES384)",
        lambda c: ref.build_text(c.cose(header_alg=-35)),
        "unsupported_alg",
    ),
    (
        "unsupported alg -37 (PS256)",
        lambda c: ref.build_text(c.cose(header_alg=-37)),
        "unsupported_alg",
    ),
    ("alg as text", lambda c: headers(c, {1: "EdDSA", 4: c.ed.kid}, {}), "unsupported_alg"),
    (
        "unsupported alg, unknown kid",
        lambda c: ref.build_text(c.cose(c.stranger, header_alg=-35)),
        "unsupported_alg",
    ),
    ("unknown kid", lambda c: c.text(c.stranger), "unknown_kid"),
    ("kid of 4 bytes", lambda c: ref.build_text(c.cose(kid=c.ed.kid[:4])), "unknown_kid"),
    (
        "unknown kid with a bad signature",
        lambda c: ref.build_text(c.cose(c.stranger, kid=bytes(8))),
        "unknown_kid",
    ),
    (
        "header ES256 on an Ed25519 key",
        lambda c: ref.build_text(c.cose(header_alg="ES256")),
        "bad_signature",
    ),
    (
        "header EdDSA on a P-256 key",
        lambda c: ref.build_text(c.cose(c.es, header_alg="EdDSA")),
        "bad_signature",
    ),
    (
        "header ES256 on an SM2 key",
        lambda c: ref.build_text(c.cose(c.sm, header_alg="ES256")),
        "bad_signature",
    ),
    (
        "header SM2 on an Ed25519 key",
        lambda c: ref.build_text(c.cose(header_alg="SM2")),
        "bad_signature",
    ),
    ("tampered payload", tampered_payload, "bad_signature"),
    (
        "flipped signature bit (first)",
        lambda c: with_signature(c, lambda s: flip_bit(s, 0)),
        "bad_signature",
    ),
    (
        "flipped signature bit (last)",
        lambda c: with_signature(c, lambda s: flip_bit(s, 63, 7)),
        "bad_signature",
    ),
    (
        "signature of 63 bytes",
        lambda c: with_signature(c, lambda s: s[:63]),
        "bad_signature",
    ),
    ("empty signature", lambda c: with_signature(c, lambda s: b""), "bad_signature"),
    (
        "signature by another key under a trusted kid",
        lambda c: ref.build_text(c.cose(c.stranger, kid=c.ed.kid)),
        "bad_signature",
    ),
    ("ES256 signature in DER", es256_der_signature, "bad_signature"),
    ("ES256 flipped signature bit", lambda c: _flip_sig_of(c, c.es), "bad_signature"),
    ("SM2 flipped signature bit", lambda c: _flip_sig_of(c, c.sm), "bad_signature"),
    (
        "SM2 signature r = 0",
        lambda c: _replace_sig_of(c, c.sm, bytes(32) + b"\x01" * 32),
        "bad_signature",
    ),
    # --- status and time ---------------------------------------------------------------------
    ("revoked serial", lambda c: c.text(cti=c.revoked_cti), "revoked"),
    ("expired (at == exp)", lambda c: c.text(exp=AT), "expired"),
    ("expired long ago", lambda c: c.text(iat=AT - 10**6, exp=AT - 10**5), "expired"),
    ("not yet valid (iat = at + 301)", lambda c: c.text(iat=AT + 301), "not_yet_valid"),
    # --- accepted ----------------------------------------------------------------------------
    ("valid Ed25519", lambda c: c.text(), "valid"),
    ("valid ES256", lambda c: c.text(c.es), "valid"),
    ("valid SM2", lambda c: c.text(c.sm), "valid"),
    ("untagged COSE_Sign1", lambda c: ref.build_text(c.cose(tag=None)), "valid"),
    ("exp one second ahead", lambda c: c.text(exp=AT + 1), "valid"),
    ("iat exactly 300 s ahead", lambda c: c.text(iat=AT + 300), "valid"),
    ("optional cap and scope", lambda c: c.text(extra_lic={6: "50万元", 8: "零售"}), "valid"),
    # --- precedence ----------------------------------------------------------------------------
    ("revoked and expired", lambda c: c.text(cti=c.revoked_cti, exp=AT - 1), "revoked"),
    ("revoked and not yet valid", lambda c: c.text(cti=c.revoked_cti, iat=AT + 3600), "revoked"),
    ("expired and not yet valid", lambda c: c.text(iat=AT + 3600, exp=AT - 1), "expired"),
    ("bad signature and revoked", lambda c: _flipped_text(c, cti=c.revoked_cti), "bad_signature"),
    ("bad signature and expired", lambda c: _flipped_text(c, exp=AT - 1), "bad_signature"),
    (
        "alg mismatch and revoked",
        lambda c: ref.build_text(c.cose(header_alg="ES256", payload=c.payload(cti=c.revoked_cti))),
        "bad_signature",
    ),
    ("unknown kid and revoked", lambda c: c.text(c.stranger, cti=c.revoked_cti), "unknown_kid"),
    (
        "malformed claims and bad signature",
        lambda c: _flipped_payload_text(c, claims_raw(c, cti=bytes(3))),
        "malformed",
    ),
    (
        "alg only unprotected, unknown kid",
        lambda c: ref.build_text(c.cose(c.stranger, header_alg=None, unprotected={1: -8})),
        "malformed",
    ),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdict(ctx: Ctx, build: Callable[[Ctx], str], expected: str) -> None:
    check(ctx, build(ctx), expected)


def test_case_names_are_unique() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


def test_valid_result_carries_kid_alg_claims(ctx: Ctx) -> None:
    claims = ctx.claims(exp=AT + 10)
    got = check(ctx, ref.sign_licence(ctx.es, claims), "valid")
    assert got.kid == ctx.es.kid and got.alg == "ES256"
    assert got.claims["cti"] == claims["cti"] and got.claims["lic"] == claims["lic"]


def test_unknown_kid_result_names_the_kid(ctx: Ctx) -> None:
    got = check(ctx, ctx.text(ctx.stranger), "unknown_kid")
    assert got.kid == ctx.stranger.kid


def test_time_boundaries(ctx: Ctx) -> None:
    """exp: valid up to exp - 1, expired from exp on. iat: valid up to at + 300."""
    text = ctx.text(iat=AT, exp=AT + 100)
    check(ctx, text, "valid", at=AT + 99)
    check(ctx, text, "expired", at=AT + 100)
    check(ctx, text, "valid", at=AT - 300)
    check(ctx, text, "not_yet_valid", at=AT - 301)


def test_zlib_bomb_is_refused_fast(ctx: Ctx) -> None:
    """~2.7 KB of zlib inflating to 2.8 MB: refused at the 64 KiB cap, not after inflating."""
    text = bomb_text(2_800_000)
    assert len(text) <= rust_core.MAX_TEXT_CHARS  # so it is the inflate limit that refuses it
    ctx.store.verify(text, at=AT)  # warm up
    start = time.perf_counter()
    for _ in range(20):
        assert ctx.store.verify(text, at=AT).verdict == "too_large"
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.05, f"{per_call * 1000:.1f} ms per bomb: inflating past the cap?"
    start = time.perf_counter()
    verdicts = {v.verdict for v in ctx.store.verify_many([text] * 50, at=AT)}
    assert verdicts == {"too_large"}
    assert time.perf_counter() - start < 0.5


def test_verify_many_matches_verify(ctx: Ctx) -> None:
    texts = [build(ctx) for _, build, _ in CASES]
    one_by_one = [ctx.store.verify(t, at=AT) for t in texts]
    batch = ctx.store.verify_many(texts, at=AT)
    assert len(batch) == len(texts)
    for (name, _, _), single, many in zip(CASES, one_by_one, batch, strict=True):
        assert many.verdict == single.verdict, name
        assert (many.kid, many.alg, many.stage) == (single.kid, single.alg, single.stage), name
        assert many.claims == single.claims, name
    assert ctx.store.verify_many([], at=AT) == []


def test_random_mutations_never_crash(ctx: Ctx) -> None:
    """Flip bytes in the COSE and in the compressed stream: always one known verdict, and the
    same verdict as the reference wherever the reference says the input is structurally fine."""
    rng = random.Random(2024)
    cose = ctx.cose()
    packed = ref.compress(cose)
    texts = []
    for _ in range(300):
        target = cose if rng.random() < 0.5 else packed
        mutated = flip_bit(target, rng.randrange(len(target)), rng.randrange(8))
        texts.append(
            ref.build_text(mutated) if target is cose else ref.PREFIX + ref.b45encode(mutated)
        )
    for text, got in zip(texts, ctx.store.verify_many(texts, at=AT), strict=True):
        assert got.verdict in rust_core.VERDICTS
        mine = ctx.ref_store.verify(text, AT)
        assert got.verdict != "valid" or mine.valid, (text, mine.stage, mine.detail)
        if mine.verdict not in STRUCTURAL:
            assert got.verdict == mine.verdict, (text, got.stage, got.detail, mine.detail)


# --- misuse raises --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"LIC1:bytes", bytearray(b"LIC1:"), None, 42])
def test_verify_non_str_raises_type_error(ctx: Ctx, value: Any) -> None:
    with pytest.raises(TypeError):
        ctx.store.verify(value, at=AT)


def test_verify_many_non_str_raises_type_error(ctx: Ctx) -> None:
    with pytest.raises(TypeError):
        ctx.store.verify_many([ctx.text(), b"LIC1:bytes"], at=AT)


def test_exceptions_are_value_errors() -> None:
    for exc in (
        rust_core.KeyFormatError,
        rust_core.ClaimsError,
        rust_core.TrustListError,
        rust_core.Base45Error,
    ):
        assert issubclass(exc, rust_core.LicenceError)
    assert issubclass(rust_core.LicenceError, ValueError)


@pytest.mark.parametrize("alg", ["RSA", "PS256", "ES384", ""])
def test_generate_unknown_alg_raises(alg: str) -> None:
    with pytest.raises(ValueError):
        rust_core.SigningKey.generate(alg)


@pytest.mark.parametrize(
    "pem", ["", "not a pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_from_pem_garbage_raises_key_format_error(pem: str) -> None:
    with pytest.raises(rust_core.KeyFormatError):
        rust_core.SigningKey.from_pem(pem)


def _bad_claims() -> list[tuple[str, Callable[[dict[str, Any]], None]]]:
    def set_lic(k: int, v: Any) -> Callable[[dict[str, Any]], None]:
        return lambda c: c["lic"].__setitem__(k, v)

    return [
        ("wrong USCC check char", set_lic(1, "91350100M000100Y44")),
        ("USCC of 17 chars", set_lic(1, "91350100M000100Y4")),
        ("USCC with letter I", set_lic(1, "91350100M000100I43")),
        ("lic without name", lambda c: c["lic"].pop(2)),
        ("no cti", lambda c: c.pop("cti")),
        ("cti of 15 bytes", lambda c: c.__setitem__("cti", bytes(15))),
        ("cti as str", lambda c: c.__setitem__("cti", "00" * 16)),
        ("no iss", lambda c: c.pop("iss")),
        ("iat as str", lambda c: c.__setitem__("iat", "now")),
        ("negative iat", lambda c: c.__setitem__("iat", -5)),
        ("no lic", lambda c: c.pop("lic")),
    ]


@pytest.mark.parametrize(
    ("spoil"), [b[1] for b in _bad_claims()], ids=[b[0] for b in _bad_claims()]
)
def test_sign_bad_claims_raises_claims_error(spoil: Callable[[dict[str, Any]], None]) -> None:
    claims = ref.make_claims(iat=AT)
    spoil(claims)
    key = rust_core.SigningKey.generate("EdDSA")
    with pytest.raises(rust_core.ClaimsError):
        key.sign_licence(claims)
    with pytest.raises(rust_core.ClaimsError):
        key.sign_many([ref.make_claims(iat=AT), claims])


def _trust_entry(key: Any) -> dict[str, str]:
    spki = key.public_spki()
    return {"kid": key.kid.hex(), "alg": key.alg, "spki": base64.b64encode(spki).decode()}


def _spoiled_entries() -> list[tuple[str, Callable[[dict[str, str]], None]]]:
    return [
        ("kid does not match spki", lambda e: e.__setitem__("kid", "00" * 8)),
        ("unknown alg", lambda e: e.__setitem__("alg", "RS256")),
        ("alg differs from the key", lambda e: e.__setitem__("alg", "ES256")),
        (
            "spki not a key",
            lambda e: e.__setitem__("spki", base64.b64encode(b"\x30\x03\x02\x01\x00").decode()),
        ),
        ("spki not base64", lambda e: e.__setitem__("spki", "***")),
    ]


@pytest.mark.parametrize(
    "spoil", [s[1] for s in _spoiled_entries()], ids=[s[0] for s in _spoiled_entries()]
)
def test_trust_list_refuses_bad_entry_and_names_it(spoil: Callable[[dict[str, str]], None]) -> None:
    good, bad = (rust_core.SigningKey.generate("EdDSA") for _ in range(2))
    entry = _trust_entry(bad)
    spoil(entry)
    trust = json.dumps({"v": 1, "issuer": ISSUER, "keys": [_trust_entry(good), entry]})
    with pytest.raises(rust_core.TrustListError) as info:
        rust_core.TrustStore.from_json(trust)
    message = str(info.value)
    assert names_entry(message, entry["kid"], 1), f"entry (kid {entry['kid']}) not named: {message}"


def names_entry(message: str, kid_hex: str, index: int) -> bool:
    """A message names an entry by its kid or by its position in the list."""
    by_index = re.search(rf"\[{index}\]|#{index}\b|\b(entry|key|index) {index}\b", message)
    return kid_hex in message.lower() or by_index is not None


def test_revocation_list_refuses_bad_serial() -> None:
    key = rust_core.SigningKey.generate("EdDSA")
    trust = json.dumps({"v": 1, "issuer": ISSUER, "keys": [_trust_entry(key)]})
    with pytest.raises(rust_core.TrustListError):
        rust_core.TrustStore.from_json(trust, json.dumps({"v": 1, "revoked": ["not hex"]}))


def test_revocation_list_counts(ctx: Ctx) -> None:
    assert ctx.store.revoked_count == 1
    assert len(ctx.store) == 3
