"""Typed surface of the compiled licence-seal core (rust_core._rust)."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, final

_AlgName = Literal["EdDSA", "ES256", "SM2", "PS256"]
_VerdictName = Literal[
    "valid",
    "malformed",
    "too_large",
    "unsupported_alg",
    "unknown_kid",
    "bad_signature",
    "revoked",
    "expired",
    "not_yet_valid",
]

__all__ = [
    "ALGORITHMS",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_TEXT_CHARS",
    "QR_MAX_CHARS",
    "VERDICTS",
    "DccTrustStore",
    "SigningKey",
    "TrustStore",
    "Verification",
    "VerifyingKey",
    "base45_decode",
    "base45_encode",
    "kid_of_spki",
    "open_cose_sign1",
    "qr_matrix",
    "qr_png",
    "qr_svg",
    "revocation_list_json",
    "trust_list_json",
    "uscc_check_char",
    "uscc_is_valid",
    "verify_cose_sign1",
]

#: Every verdict, in the order checks run ("valid" first).
VERDICTS: Final[tuple[str, ...]]
#: Signing algorithms ("EdDSA", "ES256", "SM2"); "PS256" is verify-only (DCC profile).
ALGORITHMS: Final[tuple[str, ...]]
#: A QR text longer than this is `too_large` (the QR version 40-L alphanumeric capacity).
MAX_TEXT_CHARS: Final[int]
#: Inflating stops (verdict `too_large`) once output would exceed this many bytes.
MAX_DECOMPRESSED_BYTES: Final[int]
#: The longest text qr_svg / qr_png draw: alphanumeric capacity of a version 40-Q symbol (2420).
QR_MAX_CHARS: Final[int]

@final
class SigningKey:
    """A private signing key. LIC1 kid = first 8 bytes of SHA-256 over the SPKI DER."""

    @staticmethod
    def generate(alg: str = "EdDSA") -> SigningKey:
        """New random key for "EdDSA" (Ed25519), "ES256" (P-256) or "SM2" (SM2/SM3)."""
    @staticmethod
    def from_pem(pem: str | bytes) -> SigningKey:
        """Load an unencrypted PKCS#8 PEM private key. Raises KeyFormatError."""
    def to_pem(self) -> str:
        """The private key as PKCS#8 PEM."""
    @property
    def alg(self) -> _AlgName: ...
    @property
    def kid(self) -> bytes: ...
    def public_spki(self) -> bytes:
        """SubjectPublicKeyInfo DER of the public key."""
    def public_pem(self) -> str:
        """SubjectPublicKeyInfo as PEM ("PUBLIC KEY")."""
    def verifying_key(self) -> VerifyingKey: ...
    def sign_licence(self, claims: Mapping[str, Any]) -> str:
        """Sign one licence into "LIC1:..." text.

        claims = {"iss": str, "iat": int, "exp": int (optional), "cti": bytes (16),
        "lic": {1: uscc, 2: name, 3: kind, 4: rep, 5: addr, 6: cap?, 7: est, 8: scope?, 9: term}}.
        Raises ClaimsError for a missing/ill-typed field or an invalid USCC check character.
        """
    def sign_many(self, claims: Sequence[Mapping[str, Any]]) -> list[str]:
        """sign_licence for many: inputs are copied first, then signed on every core
        with the GIL released."""
    def issue_many(
        self, claims: Sequence[Mapping[str, Any]], module_px: int = 4
    ) -> list[tuple[str, str, bytes]]:
        """sign_many that also draws each QR code: [(LIC1 text, SVG, PNG), ...] in input order.
        Inputs are copied first, then signed and drawn on every core with the GIL released.
        Raises ClaimsError (naming claims[i]) or ValueError for module_px outside 1-64."""
    def sign_cose(self, payload: bytes, external_aad: bytes = b"", tagged: bool = True) -> bytes:
        """A raw COSE_Sign1 over `payload` with protected {1: alg, 4: kid} (for other documents)."""

@final
class VerifyingKey:
    """A public key, from SPKI DER or PEM. Its algorithm follows from the key type."""

    @staticmethod
    def from_spki(der: bytes) -> VerifyingKey:
        """Ed25519 -> EdDSA, P-256 -> ES256, SM2 curve -> SM2, RSA -> PS256.

        Raises KeyFormatError."""
    @staticmethod
    def from_pem(pem: str | bytes) -> VerifyingKey: ...
    @property
    def alg(self) -> _AlgName: ...
    @property
    def kid(self) -> bytes: ...
    def spki(self) -> bytes: ...
    def to_pem(self) -> str: ...

@final
class Verification:
    """The one verdict for one text, and what could be read of it."""

    @property
    def verdict(self) -> _VerdictName: ...
    @property
    def kid(self) -> bytes | None: ...
    @property
    def alg(self) -> _AlgName | None: ...
    @property
    def claims(self) -> dict[str, Any] | None:
        """Decoded claims, only once the signature verified (valid, revoked, expired,
        not_yet_valid):
        the contents of a forgery are never handed out. Built anew on each access."""
    @property
    def stage(self) -> str | None:
        """Where a non-valid verdict was decided: "length", "prefix", "base45", "zlib", "cbor",
        "cose", "claims", "alg", "kid", "signature", "revocation", "time"; None when valid."""
    @property
    def detail(self) -> str | None:
        """A human-readable reason for a non-valid verdict."""
    @property
    def valid(self) -> bool: ...
    def __bool__(self) -> bool: ...

@final
class TrustStore:
    """Trusted LIC1 issuer keys and the revocation list, as an auditor carries them."""

    @staticmethod
    def from_json(trust_json: str, revoked_json: str | None = None) -> TrustStore:
        """Load DESIGN.md's trust list (and revocation list).

        Raises TrustListError naming the offending entry."""
    @staticmethod
    def from_keys(
        keys: Sequence[VerifyingKey | SigningKey],
        issuer: str = "",
        revoked: Iterable[bytes] | None = None,
    ) -> TrustStore: ...
    @property
    def issuer(self) -> str: ...
    @property
    def kids(self) -> list[bytes]: ...
    @property
    def revoked_count(self) -> int: ...
    def __len__(self) -> int: ...
    def verify(self, text: str, at: int | None = None) -> Verification:
        """Verify one LIC1 text at `at` (epoch seconds; default now).

        Raises TypeError for a non-str."""
    def verify_many(self, texts: Sequence[str], at: int | None = None) -> list[Verification]:
        """Verify many with the GIL released, on every core, batching Ed25519 signatures."""
    def to_json(self) -> str:
        """The trust list JSON (DESIGN.md format)."""

@final
class DccTrustStore:
    """EU DCC ("HC1:") profile: kids given by the caller, PS256 allowed, CWT tag 61 accepted."""

    def __init__(self) -> None: ...
    def add(
        self,
        kid: bytes,
        key: VerifyingKey,
        not_before: int | None = None,
        not_after: int | None = None,
    ) -> None:
        """Trust `key` under `kid`; not_before/not_after are the signer certificate's validity."""
    def __len__(self) -> int: ...
    def verify(self, text: str, at: int | None = None) -> Verification:
        """claims = {"iss": str|None, "iat": int|None, "exp": int|None, "hcert": dict} (claim -260).
        Time check: cert.not_before <= iat <= at <= exp <= cert.not_after."""
    def verify_many(self, texts: Sequence[str], at: int | None = None) -> list[Verification]: ...

def verify_cose_sign1(cose: bytes, key: VerifyingKey, external_aad: bytes = b"") -> _VerdictName:
    """Verify a raw COSE_Sign1 (tagged 18 or untagged) with generic RFC 9052 rules: alg only from
    the protected header and matching the key. Returns "valid", "malformed", "unsupported_alg"
    or "bad_signature"."""

def open_cose_sign1(
    cose: bytes, key: VerifyingKey, external_aad: bytes = b""
) -> tuple[_VerdictName, bytes | None, str]:
    """verify_cose_sign1 that also returns the payload: (verdict, payload, detail), the payload
    only when the verdict is "valid" (for signed documents such as the desired state)."""

def base45_encode(data: bytes) -> str: ...
def base45_decode(text: str) -> bytes:
    """Strict RFC 9285 decode. Raises Base45Error."""

def kid_of_spki(der: bytes) -> bytes:
    """First 8 bytes of SHA-256 over the SPKI DER."""

def uscc_check_char(first17: str) -> str:
    """The GB 32100-2015 check character for the first 17 characters. Raises ValueError."""

def uscc_is_valid(code: str) -> bool:
    """18 characters from the GB 32100 alphabet with a correct check character."""

def trust_list_json(keys: Sequence[VerifyingKey | SigningKey], issuer: str) -> str: ...
def revocation_list_json(serials: Iterable[bytes]) -> str: ...
def qr_svg(text: str, module_px: int = 4) -> str:
    """The QR code of a LIC1 text as an SVG document: QR Model 2, one alphanumeric segment,
    error correction Q, smallest version, mask by the ISO 18004 penalty rules, 4-module quiet
    zone; viewBox in modules, width/height module_px per module, one <path> of row runs.

    Raises ValueError for an empty text, a character outside 0-9 A-Z space $%*+-./:, more than
    QR_MAX_CHARS characters, or module_px outside 1-64."""

def qr_png(text: str, module_px: int = 4) -> bytes:
    """The same QR code as a 1-bit grayscale PNG, module_px pixels per module. Raises as qr_svg."""

def qr_matrix(text: str) -> list[str]:
    """The symbol's modules without the quiet zone: one str per row, "1" dark, "0" light."""
