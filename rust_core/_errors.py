"""Exceptions raised by rust_core for misuse and bad key/claim/trust files.

A verification *verdict* (forged, expired, ...) is never an exception: it is data on
`Verification.verdict`. These are for inputs the caller should not have passed.
"""


class LicenceError(ValueError):
    """Base class: a call to rust_core was given something it cannot use."""


class KeyFormatError(LicenceError):
    """A key file or key bytes could not be parsed, or the key type is not supported."""


class ClaimsError(LicenceError):
    """Licence claims refused by the issuer (missing field, wrong type, invalid USCC...)."""


class TrustListError(LicenceError):
    """A trust list or revocation list was refused when loading; the message names the entry."""


class Base45Error(LicenceError):
    """Text is not strict RFC 9285 Base45."""
