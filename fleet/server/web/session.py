"""Dashboard sessions: a signed cookie naming an API token, and a CSRF token bound to it.

Cookie value: ``base64url(json payload) "." base64url(HMAC-SHA256(key, payload))`` where the key
is derived from `settings.session_secret` for this one purpose (so the same secret can sign
other things, such as SSE tickets, without one being replayable as the other). The payload holds
the token's id (not the token), its role, an expiry and a random nonce. The cookie is HttpOnly,
SameSite=Strict and Path=/; every request re-checks that the token still exists and is not
revoked, so revoking a token ends its sessions at once.

CSRF: the token a page embeds is HMAC(key, "csrf" + nonce): bound to the session, unknown to
another site, and checked (constant time) on every state-changing request: form posts carry it
as a field, fetches as the `X-CSRF-Token` header. SameSite=Strict is a second line, not the only.
The login form (before any session) uses a double-submit cookie instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from fleet.server.api.auth import Principal
from fleet.server.db.models import ApiToken, Role

COOKIE = "fleet_session"
LOGIN_CSRF_COOKIE = "fleet_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
#: A session lasts a working day; logging in again is one paste.
SESSION_TTL_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    token_id: int
    name: str
    role: Role
    expires: int
    nonce: str

    @property
    def principal(self) -> Principal:
        return Principal(self.token_id, self.name, self.role)


def _key(secret: str, purpose: str) -> bytes:
    return hmac.new(
        secret.encode(), b"fleet-dashboard/" + purpose.encode(), hashlib.sha256
    ).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, principal: Principal, now: float | None = None) -> str:
    """A fresh session cookie value for `principal`."""
    now = time.time() if now is None else now
    payload = json.dumps(
        {
            "tid": principal.token_id,
            "name": principal.name,
            "role": str(principal.role),
            "exp": int(now) + SESSION_TTL_S,
            "n": secrets.token_urlsafe(16),
        },
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(_key(secret, "session"), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def unsign(secret: str, value: str | None, now: float | None = None) -> Session | None:
    """The session in a cookie value, or None when missing, forged, malformed or expired."""
    if not value or len(value) > 1024 or value.count(".") != 1:
        return None
    body, mac_text = value.split(".")
    try:
        payload, mac = _unb64(body), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    expected = hmac.new(_key(secret, "session"), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        data = json.loads(payload)
        session = Session(
            int(data["tid"]),
            str(data["name"]),
            Role(data["role"]),
            int(data["exp"]),
            str(data["n"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= (time.time() if now is None else now):
        return None
    return session


def csrf_token(secret: str, session: Session) -> str:
    return _b64(hmac.new(_key(secret, "csrf"), session.nonce.encode(), hashlib.sha256).digest())


def csrf_ok(secret: str, session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(str(given), csrf_token(secret, session))


def secret_of(request: Request) -> str:
    secret: str = request.app.state.ctx.settings.session_secret.get_secret_value()
    return secret


async def current_session(request: Request) -> Session | None:
    """The request's live session: signed, unexpired, and its token neither revoked nor
    re-roled since login (the role is read again from the token store)."""
    session = unsign(secret_of(request), request.cookies.get(COOKIE))
    if session is None:
        return None
    record = await ApiToken.get_or_none(id=session.token_id, revoked_at=None)
    if record is None or Role(record.role) != session.role:
        return None
    return session


async def session_principal(request: Request) -> Principal | None:
    """The caller from the session cookie, for `/api/v1` (see `deps.get_principal`).

    None without a live session. A state-changing request without the session's CSRF token in
    `X-CSRF-Token` is refused with 403: the cookie alone never authorises a change.
    """
    session = await current_session(request)
    if session is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(
        secret_of(request), session, request.headers.get(CSRF_HEADER)
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return session.principal
