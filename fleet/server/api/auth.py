"""Bearer token -> principal, through `fleet.server.tokens` (hashing, revocation, last use)."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.server import tokens
from fleet.server.db.models import Role


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name is what an acknowledgement records as `acked_by`."""

    token_id: int
    name: str
    role: Role


async def authenticate(secret: str) -> Principal | None:
    """The principal of a live (not revoked) token, or None."""
    record = await tokens.authenticate(secret)
    if record is None:
        return None
    return Principal(record.id, record.name, Role(record.role))
