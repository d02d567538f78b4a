"""Issuing, finding and revoking licences, and the trust store the server verifies with.

The claims are judged by rust_core alone (required fields, the USCC check character, dates):
one rule book for the server, `fleet sign` and the tests. Its refusal names the field, which
`ClaimsRefused.field` carries on to the API's 422.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.exceptions import IntegrityError

import rust_core
from fleet.licence_claims import LIC_FIELDS, SERIAL_BYTES, claims_to_json
from fleet.server.db.models import Licence
from fleet.server.licences.keys import Issuer

#: Pixels per QR module of the PNG the API returns (a licence code is ~57 modules: ~260 px).
QR_MODULE_PX = 4
#: Attempts at a fresh random serial before giving up (a clash of 128-bit randoms never happens;
#: the loop is for the unique constraint being the judge, not the odds).
_SERIAL_TRIES = 3

_FIELD_NAMES = {number: name for name, number in LIC_FIELDS.items()}
_LIC_FIELD_RE = re.compile(r"lic field (\d+)")
_TOP_FIELD_RE = re.compile(r"^claims: (iss|iat|exp|cti)\b")


class ClaimsRefused(ValueError):
    """rust_core refused the claims; `loc` is where in the request body (e.g. lic.uscc)."""

    def __init__(self, message: str, loc: tuple[str, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class SerialTaken(ValueError):
    """A licence with the requested serial exists already."""


@dataclass(frozen=True)
class Issued:
    licence: Licence
    qr_svg: str
    qr_png: bytes


def refusal_loc(message: str) -> tuple[str, ...]:
    """Where a rust_core ClaimsError message points: ("lic", "uscc"), ("exp",), or ("lic",)."""
    m = _LIC_FIELD_RE.search(message)
    if m is not None:
        number = int(m.group(1))
        return ("lic", _FIELD_NAMES.get(number, str(number)))
    m = _TOP_FIELD_RE.search(message)
    if m is not None:
        return (m.group(1),)
    return ("lic",)


async def issue(
    issuer: Issuer,
    lic: Mapping[int, Any],
    *,
    now: datetime,
    issued_by: str,
    terminal_id: str | None = None,
    exp: int | None = None,
    serial: bytes | None = None,
) -> Issued:
    """Sign, draw and store one licence. Raises ClaimsRefused or SerialTaken."""
    for attempt in range(_SERIAL_TRIES):
        cti = serial if serial is not None else os.urandom(SERIAL_BYTES)
        claims: dict[str, Any] = {
            "iss": issuer.name,
            "iat": int(now.timestamp()),
            "cti": cti,
            "lic": dict(lic),
        }
        if exp is not None:
            claims["exp"] = exp
        try:
            # Sign and draw off the event loop: rust_core releases the GIL meanwhile.
            [(text, svg, png)] = await asyncio.to_thread(
                issuer.key.issue_many, [claims], QR_MODULE_PX
            )
        except rust_core.ClaimsError as e:
            message = str(e)
            # One licence: rust_core's batch index ("claims[0]: ") says nothing to a person.
            raise ClaimsRefused(message.removeprefix("claims[0]: "), refusal_loc(message)) from None
        try:
            row = await Licence.create(
                serial=cti.hex(),
                claims=claims_to_json(claims),
                text=text,
                terminal_id=terminal_id,
                issued_at=now,
                issued_by=issued_by,
            )
        except IntegrityError:
            taken = await Licence.exists(serial=cti.hex())
            if serial is not None and taken:
                raise SerialTaken(cti.hex()) from None
            if not taken or serial is not None or attempt + 1 == _SERIAL_TRIES:
                raise
            continue
        return Issued(row, svg, png)
    raise AssertionError("unreachable")


async def revoke(serial: str, reason: str, by: str, now: datetime) -> Licence | None:
    """Revoke a licence (once: a second call keeps the first time and reason); None if unknown."""
    await Licence.filter(serial=serial, revoked_at__isnull=True).update(
        revoked_at=now, revoke_reason=reason, revoked_by=by
    )
    return await Licence.get_or_none(serial=serial)


async def revoked_serials() -> list[bytes]:
    rows = (
        await Licence.filter(revoked_at__isnull=False)
        .order_by("serial")
        .values_list("serial", flat=True)
    )
    return [bytes.fromhex(str(s)) for s in rows]


async def revocation_list_json() -> str:
    """The revocation list exactly as `fleet revocations` writes it."""
    text = rust_core.revocation_list_json(await revoked_serials())
    return text if text.endswith("\n") else text + "\n"


class TrustStoreCache:
    """The server's trust store (issuer keys + revocations), rebuilt only when revocations change.

    Every request asks the database how many licences are revoked and when the last one was
    (two indexed lookups), so a revocation made by another server replica counts at once.
    """

    def __init__(self) -> None:
        self._store: rust_core.TrustStore | None = None
        self._key: tuple[int, int, datetime | None] | None = None
        self._lock = asyncio.Lock()

    async def get(self, issuer: Issuer) -> rust_core.TrustStore:
        revoked = Licence.filter(revoked_at__isnull=False)
        count = await revoked.count()
        last = await revoked.order_by("-revoked_at").first()
        key = (id(issuer), count, last.revoked_at if last is not None else None)
        async with self._lock:
            if self._store is None or self._key != key:
                self._store = rust_core.TrustStore.from_keys(
                    issuer.public_keys(), issuer.name, await revoked_serials()
                )
                self._key = key
            return self._store
