"""rust_core: the licence seal (LIC1 QR texts: COSE_Sign1 / CWT / zlib / Base45), in Rust.

The names here are the contract of DESIGN.md's "Python face of rust_core". The compiled
module is `rust_core._rust`; its typed surface is in `_rust.pyi`.
"""

from rust_core._errors import (
    Base45Error,
    ClaimsError,
    KeyFormatError,
    LicenceError,
    TrustListError,
)
from rust_core._rust import (
    ALGORITHMS,
    MAX_DECOMPRESSED_BYTES,
    MAX_TEXT_CHARS,
    QR_MAX_CHARS,
    VERDICTS,
    DccTrustStore,
    SigningKey,
    TrustStore,
    Verification,
    VerifyingKey,
    base45_decode,
    base45_encode,
    kid_of_spki,
    open_cose_sign1,
    qr_matrix,
    qr_png,
    qr_svg,
    revocation_list_json,
    trust_list_json,
    uscc_check_char,
    uscc_is_valid,
    verify_cose_sign1,
)

__all__ = [
    "ALGORITHMS",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_TEXT_CHARS",
    "QR_MAX_CHARS",
    "VERDICTS",
    "Base45Error",
    "ClaimsError",
    "DccTrustStore",
    "KeyFormatError",
    "LicenceError",
    "SigningKey",
    "TrustListError",
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
