"""An independent LIC1 implementation, written from DESIGN.md, to hold rust_core to the format.

It shares no code with rust_core: CBOR is cbor2, signatures are `cryptography` (Ed25519, P-256)
and `gmssl` (SM2 with SM3), compression is zlib, Base45 is the `base45` package. Tests use it in
both directions (rust_core signs / reference verifies and back) and to build deliberately broken
texts; the benchmark uses it as "the pure-Python stack".

    QR text      = "LIC1:" + Base45(zlib(COSE_Sign1))
    COSE_Sign1   = 18([protected: bstr .cbor {1: alg, 4: kid}, {}, payload: bstr .cbor claims, sig])
    Sig_structure= ["Signature1", protected, h'', payload]
    kid          = SHA-256(SPKI DER)[:8]
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import base45
import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from gmssl import sm2 as gm_sm2

PREFIX = "LIC1:"
MAX_TEXT_CHARS = 4296
MAX_DECOMPRESSED_BYTES = 64 * 1024
NOT_YET_VALID_LEEWAY_S = 300
COSE_SIGN1_TAG = 18

ALG_IDS: dict[str, int] = {"EdDSA": -8, "ES256": -7, "SM2": -65537}
ALG_NAMES: dict[int, str] = {v: k for k, v in ALG_IDS.items()}

# COSE header labels and CWT claim keys (RFC 9052 / RFC 8392 / DESIGN.md).
HDR_ALG, HDR_CRIT, HDR_KID = 1, 2, 4
CLAIM_ISS, CLAIM_EXP, CLAIM_IAT, CLAIM_CTI, CLAIM_LIC = 1, 4, 6, 7, -65537
LIC_REQUIRED = (1, 2, 3, 4, 5, 7, 9)
LIC_OPTIONAL = (6, 8)

SM2_SIGNER_ID = b"1234567812345678"
SM2_N = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)

VERDICTS = (
    "valid",
    "malformed",
    "too_large",
    "unsupported_alg",
    "unknown_kid",
    "bad_signature",
    "revoked",
    "expired",
    "not_yet_valid",
)

# ---------------------------------------------------------------------------------------------
# GB 32100-2015 unified social credit code
# ---------------------------------------------------------------------------------------------

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # 31 characters: no I, O, S, V, Z
USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))  # 1, 3, 9, 27, 19, 26, 16, ...


def uscc_check_char(first17: str) -> str:
    """The check character for the first 17 characters of a USCC."""
    if len(first17) != 17 or any(c not in USCC_ALPHABET for c in first17):
        raise ValueError(f"not 17 GB 32100 characters: {first17!r}")
    total = sum(USCC_ALPHABET.index(c) * w for c, w in zip(first17, USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def uscc_is_valid(code: str) -> bool:
    """18 characters from the alphabet whose last one is the right check character."""
    if len(code) != 18 or any(c not in USCC_ALPHABET for c in code):
        return False
    return uscc_check_char(code[:17]) == code[17]


def random_uscc() -> str:
    """A random but well-formed USCC (registration authority 9 = industry and commerce)."""
    body = "92" + "510107" + "".join(secrets.choice(USCC_ALPHABET) for _ in range(9))
    return body + uscc_check_char(body)


# ---------------------------------------------------------------------------------------------
# Minimal DER: enough to move SM2 keys between rust_core (PKCS#8 / SPKI) and gmssl (hex)
# ---------------------------------------------------------------------------------------------

DER_INTEGER, DER_BIT_STRING, DER_OCTET_STRING, DER_OID, DER_SEQUENCE = 0x02, 0x03, 0x04, 0x06, 0x30


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def der_oid(dotted: str) -> bytes:
    """DER encoding (with tag and length) of an object identifier."""
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        body.extend(reversed(chunk))
    return der_tlv(DER_OID, bytes(body))


OID_EC_PUBLIC_KEY = der_oid("1.2.840.10045.2.1")
OID_P256 = der_oid("1.2.840.10045.3.1.7")
OID_SM2 = der_oid("1.2.156.10197.1.301")
OID_ED25519 = der_oid("1.3.101.112")


def der_read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """Read one element at `pos`: (tag, content, position after it). Single-byte tags only."""
    if pos + 2 > len(data):
        raise ValueError("DER: truncated header")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("DER: bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("DER: truncated content")
    return tag, data[pos : pos + length], pos + length


def der_children(content: bytes) -> list[tuple[int, bytes]]:
    """The elements inside a constructed element's content, as (tag, content) pairs."""
    out, pos = [], 0
    while pos < len(content):
        tag, value, pos = der_read(content, pos)
        out.append((tag, value))
    return out


def der_expect(data: bytes, tag: int) -> bytes:
    """The content of `data`, which must be exactly one element with `tag`."""
    got, content, end = der_read(data)
    if got != tag or end != len(data):
        raise ValueError(f"DER: expected tag {tag:#x}, got {got:#x}")
    return content


def spki_parts(spki: bytes) -> tuple[bytes, bytes]:
    """(AlgorithmIdentifier content, public key bytes without the BIT STRING's unused-bits byte)."""
    (alg_tag, alg_id), (bits_tag, bits) = der_children(der_expect(spki, DER_SEQUENCE))
    if alg_tag != DER_SEQUENCE or bits_tag != DER_BIT_STRING or bits[:1] != b"\x00":
        raise ValueError("not a SubjectPublicKeyInfo")
    return alg_id, bits[1:]


def pkcs8_parts(der: bytes) -> tuple[bytes, bytes]:
    """(AlgorithmIdentifier content, privateKey OCTET STRING content) of a PKCS#8 key."""
    items = der_children(der_expect(der, DER_SEQUENCE))
    if len(items) < 3 or items[1][0] != DER_SEQUENCE or items[2][0] != DER_OCTET_STRING:
        raise ValueError("not a PKCS#8 PrivateKeyInfo")
    return items[1][1], items[2][1]


def alg_of_algorithm_identifier(alg_id: bytes) -> str:
    """LIC1 algorithm name for an AlgorithmIdentifier (content bytes)."""
    if alg_id == OID_ED25519:
        return "EdDSA"
    if alg_id == OID_EC_PUBLIC_KEY + OID_P256:
        return "ES256"
    if alg_id == OID_EC_PUBLIC_KEY + OID_SM2:
        return "SM2"
    raise ValueError(f"unsupported key algorithm {alg_id.hex()}")


def _pem_body(pem: str) -> bytes:
    lines = [ln.strip() for ln in pem.strip().splitlines()]
    if len(lines) < 3 or not lines[0].startswith("-----BEGIN"):
        raise ValueError("not PEM")
    return base64.b64decode("".join(ln for ln in lines[1:] if not ln.startswith("-----")))


def _der_to_pem(der: bytes, label: str) -> str:
    b64 = base64.b64encode(der).decode()
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


# ---------------------------------------------------------------------------------------------
# Keys: one small class per algorithm, all with the same face
# ---------------------------------------------------------------------------------------------


class RefKey(Protocol):
    """A LIC1 key: public part always, private part when it can sign."""

    alg: str

    @property
    def spki(self) -> bytes: ...
    @property
    def kid(self) -> bytes: ...
    def sign(self, message: bytes) -> bytes: ...
    def verify(self, signature: bytes, message: bytes) -> bool: ...
    def to_pem(self) -> str: ...


def kid_of_spki(spki: bytes) -> bytes:
    """LIC1 kid: first 8 bytes of SHA-256 over the SubjectPublicKeyInfo DER."""
    return hashlib.sha256(spki).digest()[:8]


class _KeyBase:
    alg = ""

    @property
    def spki(self) -> bytes:
        return self._spki

    @property
    def kid(self) -> bytes:
        return kid_of_spki(self._spki)

    _spki: bytes


class Ed25519Key(_KeyBase):
    alg = "EdDSA"

    def __init__(
        self, public: ed25519.Ed25519PublicKey, private: ed25519.Ed25519PrivateKey | None = None
    ) -> None:
        self.public, self.private = public, private
        self._spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        assert self.private is not None, "public key only"
        return self.private.sign(message)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> str:
        assert self.private is not None, "public key only"
        return _cryptography_pkcs8_pem(self.private)


class Es256Key(_KeyBase):
    """ECDSA P-256 / SHA-256; COSE carries r||s (32 bytes each), `cryptography` wants DER."""

    alg = "ES256"

    def __init__(
        self, public: ec.EllipticCurvePublicKey, private: ec.EllipticCurvePrivateKey | None = None
    ) -> None:
        if not isinstance(public.curve, ec.SECP256R1):
            raise ValueError("ES256 needs a P-256 key")
        self.public, self.private = public, private
        self._spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, message: bytes) -> bytes:
        assert self.private is not None, "public key only"
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, signature: bytes, message: bytes) -> bool:
        if len(signature) != 64:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        try:
            self.public.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> str:
        assert self.private is not None, "public key only"
        return _cryptography_pkcs8_pem(self.private)


class Sm2Key(_KeyBase):
    """SM2 with SM3 (GB/T 32918.2), signer id "1234567812345678", signature r||s, via gmssl.

    gmssl keys are hex: the private scalar d, and the public point x||y (128 hex digits).
    Two gmssl 3.2.2 quirks are avoided here: its constructor strips a leading "04" with
    str.lstrip (which also eats a leading 0/4 of x), so the point is set after construction; and
    its default nonce comes from `random.choice`, so the nonce is drawn from `secrets` instead.
    """

    alg = "SM2"

    def __init__(self, public_xy: bytes, private_d: int | None = None) -> None:
        if len(public_xy) != 64:
            raise ValueError("SM2 public point must be x||y, 64 bytes")
        self.public_xy, self.private_d = public_xy, private_d
        self._gm = gm_sm2.CryptSM2(private_key=f"{private_d or 0:064x}", public_key="")
        self._gm.public_key = public_xy.hex()
        self._spki = sm2_spki(public_xy)

    @property
    def gmssl(self) -> gm_sm2.CryptSM2:
        """The gmssl object holding this key (hex form, point already set)."""
        return self._gm

    @classmethod
    def from_private(cls, d: int) -> Sm2Key:
        if not 1 <= d < SM2_N - 1:
            raise ValueError("SM2 private scalar out of range")
        helper = gm_sm2.CryptSM2(private_key=f"{d:064x}", public_key="")
        xy_hex = helper._kg(d, helper.ecc_table["g"])  # gmssl's scalar multiplication d*G
        return cls(bytes.fromhex(xy_hex), d)

    def sign(self, message: bytes) -> bytes:
        assert self.private_d is not None, "public key only"
        while True:  # gmssl returns None for the (negligible) r == 0 / r + k == n cases
            nonce = secrets.randbelow(SM2_N - 1) + 1
            sig_hex = self._gm.sign_with_sm3(message, f"{nonce:064x}")
            if sig_hex:
                return bytes.fromhex(sig_hex)

    def verify(self, signature: bytes, message: bytes) -> bool:
        if len(signature) != 64:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (0 < r < SM2_N and 0 < s < SM2_N):  # gmssl itself does not range-check
            return False
        return bool(self._gm.verify_with_sm3(signature.hex(), message))

    def to_pem(self) -> str:
        assert self.private_d is not None, "public key only"
        return _der_to_pem(sm2_pkcs8(self.private_d, self.public_xy), "PRIVATE KEY")


def sm2_spki(public_xy: bytes) -> bytes:
    """SubjectPublicKeyInfo DER of an SM2 point: id-ecPublicKey with the SM2 curve OID."""
    alg_id = der_tlv(DER_SEQUENCE, OID_EC_PUBLIC_KEY + OID_SM2)
    return der_tlv(DER_SEQUENCE, alg_id + der_tlv(DER_BIT_STRING, b"\x00\x04" + public_xy))


def sm2_pkcs8(d: int, public_xy: bytes) -> bytes:
    """PKCS#8 PrivateKeyInfo DER holding an RFC 5915 ECPrivateKey (with its public key)."""
    public = der_tlv(0xA1, der_tlv(DER_BIT_STRING, b"\x00\x04" + public_xy))
    ec_private = der_tlv(
        DER_SEQUENCE,
        der_tlv(DER_INTEGER, b"\x01") + der_tlv(DER_OCTET_STRING, d.to_bytes(32, "big")) + public,
    )
    alg_id = der_tlv(DER_SEQUENCE, OID_EC_PUBLIC_KEY + OID_SM2)
    return der_tlv(
        DER_SEQUENCE,
        der_tlv(DER_INTEGER, b"\x00") + alg_id + der_tlv(DER_OCTET_STRING, ec_private),
    )


def ec_private_scalar(ec_private_key: bytes) -> int:
    """The 32-byte d of an RFC 5915 ECPrivateKey (the privateKey of an EC PKCS#8 key)."""
    items = der_children(der_expect(ec_private_key, DER_SEQUENCE))
    if len(items) < 2 or items[1][0] != DER_OCTET_STRING or len(items[1][1]) != 32:
        raise ValueError("not an ECPrivateKey with a 32-byte scalar")
    return int.from_bytes(items[1][1], "big")


def _cryptography_pkcs8_pem(private: Any) -> str:
    return str(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def generate_key(alg: str) -> RefKey:
    """A new signing key for "EdDSA", "ES256" or "SM2"."""
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        return Ed25519Key(private.public_key(), private)
    if alg == "ES256":
        private_ec = ec.generate_private_key(ec.SECP256R1())
        return Es256Key(private_ec.public_key(), private_ec)
    if alg == "SM2":
        return Sm2Key.from_private(secrets.randbelow(SM2_N - 2) + 1)
    raise ValueError(f"unknown alg {alg!r}")


def signing_key_from_pem(pem: str | bytes) -> RefKey:
    """A PKCS#8 PEM private key (v1, or v2 / RFC 5958 with the public key), read with the DER
    reader above: `cryptography`'s loader, like OpenSSL 3.0, refuses v2 keys and has no SM2."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    alg_id, private = pkcs8_parts(_pem_body(text))
    alg = alg_of_algorithm_identifier(alg_id)
    if alg == "EdDSA":
        seed = der_expect(private, DER_OCTET_STRING)  # RFC 8410 CurvePrivateKey
        ed_private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        return Ed25519Key(ed_private.public_key(), ed_private)
    d = ec_private_scalar(private)
    if alg == "SM2":
        return Sm2Key.from_private(d)
    ec_private = ec.derive_private_key(d, ec.SECP256R1())
    return Es256Key(ec_private.public_key(), ec_private)


def verifying_key_from_spki(spki: bytes) -> RefKey:
    """A public key from SubjectPublicKeyInfo DER."""
    alg_id, point = spki_parts(spki)
    alg = alg_of_algorithm_identifier(alg_id)
    if alg == "SM2":
        if point[:1] != b"\x04" or len(point) != 65:
            raise ValueError("SM2 key must be an uncompressed point")
        return Sm2Key(point[1:])
    public = serialization.load_der_public_key(spki)
    if alg == "EdDSA":
        assert isinstance(public, ed25519.Ed25519PublicKey)
        return Ed25519Key(public)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return Es256Key(public)


# ---------------------------------------------------------------------------------------------
# Building blocks (public, so tests can assemble broken texts from them)
# ---------------------------------------------------------------------------------------------


def compress(data: bytes, level: int = 9) -> bytes:
    """zlib (RFC 1950) stream."""
    return zlib.compress(data, level)


def b45encode(data: bytes) -> str:
    """RFC 9285 Base45 text."""
    return bytes(base45.b45encode(data)).decode("ascii")


def build_text(cose: bytes, *, compressed: bool = True, prefix: str = PREFIX) -> str:
    """prefix + Base45(zlib(cose)); `compressed=False` skips zlib (a malformed LIC1)."""
    return prefix + b45encode(compress(cose) if compressed else cose)


def protected_header(alg: int | str | None, kid: bytes | None) -> bytes:
    """The protected header bstr contents {1: alg, 4: kid}; None leaves a label out."""
    header: dict[int, Any] = {}
    if alg is not None:
        header[HDR_ALG] = ALG_IDS[alg] if isinstance(alg, str) else alg
    if kid is not None:
        header[HDR_KID] = kid
    return cbor2.dumps(header)


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """RFC 9052 §4.4 ToBeSigned for COSE_Sign1."""
    return cbor2.dumps(["Signature1", protected, external_aad, payload])


def cose_sign1(
    protected: bytes,
    unprotected: Mapping[int, Any],
    payload: bytes | None,
    signature: bytes,
    *,
    tag: int | None = COSE_SIGN1_TAG,
    extra: Sequence[Any] = (),
) -> bytes:
    """Encode a COSE_Sign1 array from its parts; `tag=None` leaves it untagged, `extra` appends
    more elements (and a shorter array can be had from `cose_array`)."""
    return cose_array([protected, dict(unprotected), payload, signature, *extra], tag=tag)


def cose_array(items: Sequence[Any], *, tag: int | None = COSE_SIGN1_TAG) -> bytes:
    """Any CBOR array, optionally tagged: for wrong-arity or wrong-type COSE structures."""
    body = list(items)
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


class RawCbor(bytes):
    """Bytes that are already CBOR: embedded as they are by `cbor_map_raw` and `cbor_array_raw`."""


def _encode_item(value: Any) -> bytes:
    return bytes(value) if isinstance(value, RawCbor) else cbor2.dumps(value)


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    return bytes([major << 5 | 25]) + n.to_bytes(2, "big")


def cbor_map_raw(pairs: Iterable[tuple[Any, Any]]) -> RawCbor:
    """A definite-length CBOR map from pairs, keeping duplicates (cbor2 cannot write those)."""
    items = list(pairs)
    body = b"".join(_encode_item(k) + _encode_item(v) for k, v in items)
    return RawCbor(_cbor_head(5, len(items)) + body)


def cbor_array_raw(items: Sequence[Any], *, tag: int | None = None) -> RawCbor:
    """A CBOR array whose items may be RawCbor, optionally tagged (tag < 65536)."""
    body = _cbor_head(4, len(items)) + b"".join(_encode_item(x) for x in items)
    return RawCbor((_cbor_head(6, tag) if tag is not None else b"") + body)


def claims_to_cwt(claims: Mapping[str, Any]) -> dict[int, Any]:
    """The Python-face claims {"iss","iat","exp"?,"cti","lic"} as the CWT integer-keyed map."""
    cwt: dict[int, Any] = {CLAIM_ISS: claims["iss"], CLAIM_IAT: claims["iat"]}
    if claims.get("exp") is not None:
        cwt[CLAIM_EXP] = claims["exp"]
    cwt[CLAIM_CTI] = bytes(claims["cti"])
    cwt[CLAIM_LIC] = {int(k): v for k, v in claims["lic"].items()}
    return cwt


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    """CBOR payload for the Python-face claims."""
    return cbor2.dumps(claims_to_cwt(claims))


def sign_cose(
    key: RefKey,
    payload: bytes,
    *,
    header_alg: int | str | None = "KEY",
    kid: bytes | None = None,
    unprotected: Mapping[int, Any] | None = None,
    tag: int | None = COSE_SIGN1_TAG,
) -> bytes:
    """A COSE_Sign1 over `payload` signed by `key`, with header knobs for broken variants:
    header_alg="KEY" uses the key's own alg, None omits it, an int/name puts that one;
    kid defaults to the key's kid."""
    alg = key.alg if header_alg == "KEY" else header_alg
    protected = protected_header(alg, key.kid if kid is None else kid)
    signature = key.sign(sig_structure(protected, payload))
    return cose_sign1(protected, unprotected or {}, payload, signature, tag=tag)


def sign_licence(key: RefKey, claims: Mapping[str, Any]) -> str:
    """Sign Python-face claims into a LIC1 text, as rust_core's SigningKey.sign_licence does."""
    check_claims_for_signing(claims)
    return build_text(sign_cose(key, encode_claims(claims)))


def check_claims_for_signing(claims: Mapping[str, Any]) -> None:
    """Refuse claims that would not verify as LIC1 (the reference's ClaimsError is ValueError)."""
    _check_claims(claims_to_cwt(claims))


def make_claims(
    *,
    iat: int,
    exp: int | None = None,
    cti: bytes | None = None,
    uscc: str | None = None,
    name: str = "成都市武侯区示例小吃店",
    rep: str = "张三",
    addr: str = "四川省成都市武侯区示例路1号",
    term: str = "T-0001",
    extra_lic: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Python-face claims for one licence, with a fresh serial and USCC unless given."""
    lic: dict[int, str] = {
        1: uscc or random_uscc(),
        2: name,
        3: "个体工商户",
        4: rep,
        5: addr,
        7: "2024-03-01",
        9: term,
    }
    lic.update(extra_lic or {})
    claims: dict[str, Any] = {"iss": "CN-510107", "iat": iat, "cti": cti or secrets.token_bytes(16)}
    if exp is not None:
        claims["exp"] = exp
    claims["lic"] = lic
    return claims


def zlib_bomb(inflated_size: int) -> bytes:
    """A zlib stream of `inflated_size` zero bytes (about 1/1000 of that compressed)."""
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    out = []
    left = inflated_size
    while left:
        n = min(left, len(chunk))
        out.append(packer.compress(chunk[:n]))
        left -= n
    out.append(packer.flush())
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Trust list and revocation list (DESIGN.md "Trust list")
# ---------------------------------------------------------------------------------------------


def trust_list_json(keys: Iterable[tuple[str, bytes]], issuer: str = "CN-510107") -> str:
    """Trust list JSON for (alg, spki DER) pairs."""
    entries = [
        {"kid": kid_of_spki(spki).hex(), "alg": alg, "spki": base64.b64encode(spki).decode()}
        for alg, spki in keys
    ]
    return json.dumps({"v": 1, "issuer": issuer, "keys": entries})


def revocation_list_json(serials: Iterable[bytes]) -> str:
    return json.dumps({"v": 1, "revoked": [s.hex() for s in serials]})


@dataclass
class RefTrustStore:
    """Trusted keys by kid, and revoked serials: the verifier side of the reference."""

    keys: dict[bytes, RefKey] = field(default_factory=dict)
    revoked: set[bytes] = field(default_factory=set)

    @classmethod
    def of(cls, keys: Iterable[RefKey], revoked: Iterable[bytes] = ()) -> RefTrustStore:
        return cls({k.kid: k for k in keys}, set(revoked))

    @classmethod
    def from_json(cls, trust_json: str, revoked_json: str | None = None) -> RefTrustStore:
        keys: dict[bytes, RefKey] = {}
        for i, entry in enumerate(json.loads(trust_json)["keys"]):
            key = verifying_key_from_spki(base64.b64decode(entry["spki"]))
            if key.alg != entry["alg"] or key.kid.hex() != entry["kid"].lower():
                raise ValueError(f"trust list keys[{i}] (kid {entry['kid']}) is inconsistent")
            keys[key.kid] = key
        revoked = set()
        if revoked_json is not None:
            revoked = {bytes.fromhex(s) for s in json.loads(revoked_json)["revoked"]}
        return cls(keys, revoked)

    def verify(self, text: str, at: int) -> RefVerification:
        return verify(self, text, at)


# ---------------------------------------------------------------------------------------------
# Verification: one verdict, checks in DESIGN.md order
# ---------------------------------------------------------------------------------------------


@dataclass
class RefVerification:
    verdict: str = "valid"
    stage: str | None = None
    detail: str | None = None
    kid: bytes | None = None
    alg: str | None = None
    claims: dict[str, Any] | None = None

    @property
    def valid(self) -> bool:
        return self.verdict == "valid"


class _Reject(Exception):
    def __init__(self, verdict: str, stage: str, detail: str) -> None:
        super().__init__(detail)
        self.verdict, self.stage, self.detail = verdict, stage, detail


@dataclass
class _Sign1:
    protected: bytes
    header: dict[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes


def verify(store: RefTrustStore, text: str, at: int) -> RefVerification:
    """Verify one LIC1 text at epoch second `at`."""
    result = RefVerification()
    try:
        _verify_into(result, store, text, at)
    except _Reject as reject:
        result.verdict, result.stage, result.detail = reject.verdict, reject.stage, reject.detail
    return result


def _verify_into(result: RefVerification, store: RefTrustStore, text: str, at: int) -> None:
    cose = inflate(base45_decode_strict(strip_prefix(text)))
    sign1 = parse_sign1(cose)
    cwt = decode_cbor(sign1.payload, "claims")
    _check_claims(cwt)
    result.claims = cwt_to_claims(cwt)
    alg_id = sign1.header[HDR_ALG]
    kid = sign1.header[HDR_KID]
    result.kid = kid
    if alg_id not in ALG_NAMES:
        raise _Reject("unsupported_alg", "alg", f"alg {alg_id!r} is not a LIC1 algorithm")
    result.alg = ALG_NAMES[alg_id]
    key = store.keys.get(kid)
    if key is None:
        raise _Reject("unknown_kid", "kid", f"no trusted key with kid {kid.hex()}")
    if key.alg != result.alg:
        raise _Reject("bad_signature", "signature", f"header alg {result.alg}, key is {key.alg}")
    if not key.verify(sign1.signature, sig_structure(sign1.protected, sign1.payload)):
        raise _Reject("bad_signature", "signature", "signature does not verify")
    _check_status(cwt, store.revoked, at)


def _check_status(cwt: Mapping[int, Any], revoked: set[bytes], at: int) -> None:
    if cwt[CLAIM_CTI] in revoked:
        raise _Reject("revoked", "revocation", f"serial {cwt[CLAIM_CTI].hex()} is revoked")
    exp = cwt.get(CLAIM_EXP)
    if exp is not None and at >= exp:
        raise _Reject("expired", "time", f"expired at {exp}, now {at}")
    if cwt[CLAIM_IAT] > at + NOT_YET_VALID_LEEWAY_S:
        raise _Reject("not_yet_valid", "time", f"issued at {cwt[CLAIM_IAT]}, now {at}")


def strip_prefix(text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise _Reject("too_large", "length", f"{len(text)} characters > {MAX_TEXT_CHARS}")
    if not text.startswith(PREFIX):
        raise _Reject("malformed", "prefix", "no LIC1: prefix")
    return text[len(PREFIX) :]


_BASE45_RE = re.compile(r"[0-9A-Z $%*+\-./:]*")


def base45_decode_strict(body: str) -> bytes:
    """RFC 9285 decode that refuses anything outside the 45-character alphabet."""
    if not _BASE45_RE.fullmatch(body):
        raise _Reject("malformed", "base45", "character outside the Base45 alphabet")
    try:
        return bytes(base45.b45decode(body))
    except ValueError as exc:
        raise _Reject("malformed", "base45", str(exc)) from None


def inflate(data: bytes, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """zlib inflate that stops at `limit` + 1 bytes: a bomb is refused before it inflates."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise _Reject("malformed", "zlib", str(exc)) from None
    if len(out) > limit:
        raise _Reject("too_large", "zlib", f"inflates to more than {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise _Reject("malformed", "zlib", "truncated zlib stream or trailing bytes")
    return out


def decode_cbor(data: bytes, stage: str) -> Any:
    """One complete CBOR item, no duplicate map keys, no trailing bytes."""
    fp = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(fp, allow_duplicate_keys=False).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise _Reject("malformed", stage, f"CBOR: {exc}") from None
    if fp.tell() != len(data):
        raise _Reject("malformed", stage, "trailing bytes after the CBOR item")
    return item


def parse_sign1(cose: bytes) -> _Sign1:
    """COSE_Sign1 (tag 18 or untagged) with alg and a bstr kid in the protected header."""
    item = decode_cbor(cose, "cbor")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise _Reject("malformed", "cose", f"CBOR tag {item.tag}, not 18")
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise _Reject("malformed", "cose", "COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = item
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise _Reject("malformed", "cose", "protected, payload and signature must be bstr")
    if not isinstance(unprotected, Mapping):
        raise _Reject("malformed", "cose", "unprotected header must be a map")
    header = decode_cbor(protected, "cose") if protected else {}
    _check_header(header, unprotected)
    return _Sign1(protected, dict(header), unprotected, payload, signature)


def _check_header(header: Any, unprotected: Mapping[Any, Any]) -> None:
    if not isinstance(header, Mapping):
        raise _Reject("malformed", "cose", "protected header must be a map")
    if set(header) & set(unprotected):
        raise _Reject("malformed", "cose", "a label is in both headers (RFC 9052 §3)")
    if HDR_ALG not in header:
        raise _Reject("malformed", "cose", "no alg in the protected header")
    if not isinstance(header[HDR_ALG], int | str) or isinstance(header[HDR_ALG], bool):
        raise _Reject("malformed", "cose", "alg must be an integer or text")  # unknown: later
    if not isinstance(header.get(HDR_KID), bytes):
        raise _Reject("malformed", "cose", "no bstr kid in the protected header")
    _check_crit(header, unprotected)


def _check_crit(header: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> None:
    """RFC 9052 §3.1 crit: every label listed must be understood; this verifier knows 1 and 4."""
    if HDR_CRIT in unprotected:
        raise _Reject("malformed", "cose", "crit in the unprotected header")
    if HDR_CRIT not in header:
        return
    crit = header[HDR_CRIT]
    if not isinstance(crit, list | tuple) or not crit:
        raise _Reject("malformed", "cose", "crit must be a non-empty array")
    if any(label not in (HDR_ALG, HDR_KID) for label in crit):
        raise _Reject("malformed", "cose", f"crit names a label not processed here: {crit!r}")


def _is_uint(value: Any) -> bool:
    """A CBOR unsigned integer (major type 0: below 2**64; a bignum is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _check_claims(cwt: Any) -> None:
    """The CWT claims of DESIGN.md: types, required fields, a valid USCC check character."""

    def bad(why: str) -> _Reject:
        return _Reject("malformed", "claims", why)

    if not isinstance(cwt, Mapping):
        raise bad("claims must be a map")
    if not isinstance(cwt.get(CLAIM_ISS), str):
        raise bad("iss must be text")
    if not _is_uint(cwt.get(CLAIM_IAT)):
        raise bad("iat must be an unsigned integer")
    if CLAIM_EXP in cwt and not _is_uint(cwt[CLAIM_EXP]):
        raise bad("exp must be an unsigned integer")
    cti = cwt.get(CLAIM_CTI)
    if not isinstance(cti, bytes) or len(cti) != 16:
        raise bad("cti must be 16 bytes")
    _check_lic(cwt.get(CLAIM_LIC), bad)


def _check_lic(lic: Any, bad: Any) -> None:
    if not isinstance(lic, Mapping):
        raise bad("lic must be a map")
    if any(not isinstance(k, int) or isinstance(k, bool) for k in lic):
        raise bad("lic keys must be integers")
    for k in LIC_REQUIRED:
        if not isinstance(lic.get(k), str):
            raise bad(f"lic {k} must be text")
    for k in LIC_OPTIONAL:
        if k in lic and not isinstance(lic[k], str):
            raise bad(f"lic {k} must be text")
    if not uscc_is_valid(lic[1]):
        raise bad(f"USCC {lic[1]!r} is not valid")


def cwt_to_claims(cwt: Mapping[int, Any]) -> dict[str, Any]:
    """The CWT map as the Python-face claims dict (exp only when present)."""
    claims: dict[str, Any] = {"iss": cwt[CLAIM_ISS], "iat": cwt[CLAIM_IAT]}
    if CLAIM_EXP in cwt:
        claims["exp"] = cwt[CLAIM_EXP]
    claims["cti"] = cwt[CLAIM_CTI]
    claims["lic"] = dict(cwt[CLAIM_LIC])
    return claims


def decode_text(text: str) -> tuple[_Sign1, dict[int, Any]]:
    """Parse a LIC1 text without checking signature or status (raises ValueError if malformed)."""
    try:
        sign1 = parse_sign1(inflate(base45_decode_strict(strip_prefix(text))))
        return sign1, dict(decode_cbor(sign1.payload, "claims"))
    except _Reject as reject:
        raise ValueError(f"{reject.verdict}: {reject.detail}") from None
