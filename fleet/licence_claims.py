"""Licence claims between JSON and rust_core's form (DESIGN.md "LIC1: signed licence QR payload").

JSON cannot have integer keys or bytes, so on the JSON side `lic` keys are strings ("1" … "9",
or the field names below) and `cti` is hex; rust_core takes `lic` with int keys and `cti` as bytes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any

#: The `lic` map's fields by name, as in DESIGN.md; a claims file may use the name or the number.
LIC_FIELDS: dict[str, int] = {
    "uscc": 1,
    "name": 2,
    "kind": 3,
    "rep": 4,
    "addr": 5,
    "cap": 6,
    "est": 7,
    "scope": 8,
    "term": 9,
}
TOP_LEVEL = ("iss", "iat", "exp", "cti", "lic")
SERIAL_BYTES = 16
_INT_KEY = re.compile(r"-?[0-9]{1,9}")


class ClaimsInputError(ValueError):
    """A claims document that cannot become rust_core claims; the message names the field."""


def claims_from_json(
    doc: object, *, now: int | None = None, serial: bytes | None = None
) -> dict[str, Any]:
    """Turn one JSON claims object into the mapping `SigningKey.sign_licence` takes.

    `iat` defaults to `now` (default: the current time) and `cti` to `serial` (default: 16 random
    bytes). Types are checked here so the message can name the field; the values themselves (the
    USCC check character, required licence fields) are for rust_core to judge.
    """
    if not isinstance(doc, dict):
        raise ClaimsInputError(f"claims must be a JSON object, not {_json_type(doc)}")
    unknown = [k for k in doc if k not in TOP_LEVEL]
    if unknown:
        raise ClaimsInputError(f"unknown field {unknown[0]!r} (expected {', '.join(TOP_LEVEL)})")
    claims: dict[str, Any] = {}
    iss = doc.get("iss")
    if not isinstance(iss, str) or not iss:
        raise ClaimsInputError(
            '"iss" (issuing authority, e.g. "CN-510107") must be a non-empty string'
        )
    claims["iss"] = iss
    claims["iat"] = _epoch(doc, "iat") if doc.get("iat") is not None else _now(now)
    if doc.get("exp") is not None:
        claims["exp"] = _epoch(doc, "exp")
    cti = doc.get("cti")
    if cti is None:
        claims["cti"] = serial if serial is not None else os.urandom(SERIAL_BYTES)
    else:
        claims["cti"] = _serial(cti)
    claims["lic"] = _lic(doc.get("lic"))
    return claims


def claims_to_json(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Decoded claims (as rust_core returns them) in the `fleet verify --json` form.

    `iss`, `iat`, `exp`, `cti` and `lic` are always present (null when absent) so a reader can
    index them; bytes become hex and integer keys become strings, at any depth.
    """
    out: dict[str, Any] = {key: None for key in TOP_LEVEL}
    for key, value in claims.items():
        out[str(key)] = jsonable(value)
    return out


def jsonable(value: object) -> Any:
    """bytes → hex, map keys → str, tuples → lists, recursively; other values unchanged."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def _epoch(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ClaimsInputError(
            f'"{key}" must be a whole number of seconds since 1970 (got {value!r})'
        )
    return value


def _serial(value: object) -> bytes:
    if not isinstance(value, str):
        raise ClaimsInputError(
            f'"cti" (licence serial) must be a hex string, not {_json_type(value)}'
        )
    try:
        serial = bytes.fromhex(value)
    except ValueError:
        raise ClaimsInputError(f'"cti" (licence serial) is not hex: {value!r}') from None
    if len(serial) != SERIAL_BYTES:
        raise ClaimsInputError(
            f'"cti" (licence serial) must be {2 * SERIAL_BYTES} hex digits ({SERIAL_BYTES} bytes), '
            f"got {len(serial)} bytes"
        )
    return serial


def lic_from_json(value: object) -> dict[int, Any]:
    """The `lic` map with integer keys, from field numbers or names; refuses what is neither."""
    return _lic(value)


def _lic(value: object) -> dict[int, Any]:
    if not isinstance(value, dict):
        raise ClaimsInputError(
            '"lic" (the licence fields) must be an object such as {"1": "<USCC>", "2": "<name>", …}'
        )
    lic: dict[int, Any] = {}
    for key, field in value.items():
        number = LIC_FIELDS.get(key)
        if number is None:
            if not _INT_KEY.fullmatch(key):
                raise ClaimsInputError(
                    f'"lic" key {key!r} is neither a field number nor one of '
                    f"{', '.join(LIC_FIELDS)}"
                )
            number = int(key)
        if number in lic:
            raise ClaimsInputError(f'"lic" field {number} is given twice (as number and name?)')
        lic[number] = field
    return lic


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
