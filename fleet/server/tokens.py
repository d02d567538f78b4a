"""API bearer tokens: made once, shown once, stored only as their SHA-256.

A token is 32 random bytes (256 bits), so a plain hash is enough: no one can search that space
offline, and a pepper or slow hash would add nothing but a per-request cost. Looking a token up
by its hash also makes verification constant-time with respect to the secret: the database
compares hashes, which an attacker cannot steer byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet.server.db.models import ApiToken, Role

__all__ = ["ApiToken", "NewToken", "Role", "authenticate", "create_token", "revoke_token"]

#: Prefix that makes a leaked token recognisable to secret scanners and to people.
TOKEN_PREFIX = "fleet_"
# last_used_at is written at most this often per token, so every request is not a DB write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class NewToken:
    """A freshly made token: `secret` exists nowhere else, so show it now or lose it."""

    record: ApiToken
    secret: str


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


async def create_token(name: str, role: Role | str) -> NewToken:
    name = name.strip()
    if not name:
        raise ValueError("a token needs a name (who or what uses it)")
    role = Role(role)  # ValueError on anything but operator, auditor, admin
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = await ApiToken.create(name=name, role=role, token_sha256=hash_token(secret))
    return NewToken(record=record, secret=secret)


async def authenticate(secret: str | None) -> ApiToken | None:
    """The live token record for `secret`, or None for a missing, unknown or revoked token."""
    if not secret or len(secret) > 200:  # no hashing of megabyte headers
        return None
    digest = hash_token(secret)
    record = await ApiToken.get_or_none(token_sha256=digest, revoked_at=None)
    # Belt and braces: the row was found by equality, so this can only fail on a DB collation
    # surprise, and then it must fail closed.
    if record is None or not hmac.compare_digest(record.token_sha256, digest):
        return None
    now = datetime.now(UTC)
    if record.last_used_at is None or now - record.last_used_at > _LAST_USED_RESOLUTION:
        record.last_used_at = now
        await ApiToken.filter(id=record.id).update(last_used_at=now)
    return record


async def revoke_token(token_id: int) -> bool:
    """Revoke a token by id; False if there is no such live token. Revocation is permanent."""
    updated = await ApiToken.filter(id=token_id, revoked_at=None).update(
        revoked_at=datetime.now(UTC)
    )
    return updated > 0
