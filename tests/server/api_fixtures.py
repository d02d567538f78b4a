"""The API test fixture: the app on the shared `db` fixture (conftest.py: SQLite and PostgreSQL),
a client over ASGI and a token per role. Test modules load it with `pytest_plugins`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from fleet.server.db.models import Role
from tests.server.api_support import Api, make_app, make_token


@pytest.fixture
async def api(db: str) -> AsyncIterator[Api]:
    """The app on the test database (opened by the fixture, not the lifespan), with a client."""
    app, ctx = make_app(db)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        out = Api(app, ctx, client)
        for role in Role:
            out.tokens[role.value] = await make_token(role)
        yield out
