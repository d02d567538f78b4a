"""Registering terminals in the database: `fleet terminals add`'s hook, and the demo's fleet.

A site named by a registration that does not exist yet is created (named by its id, kind
`hall`): there is no site editor yet, and refusing would leave `terminals add` unusable on a
fresh server. Adding a terminal that is already registered re-provisions it: its site and model
are updated and it gets a new password (the way to rotate a kiosk's credentials or replace a lost
config); `fleet terminals add` asks for --force before it overwrites a config file.
"""

from __future__ import annotations

import asyncio

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from fleet.server.db import close_db, init_db
from fleet.server.db.models import Site, SiteKind, Terminal
from fleet.server.provisioning import RegisterHook, Registration


async def register_terminal(
    reg: Registration, site_name: str | None = None, site_kind: SiteKind = SiteKind.HALL
) -> bool:
    """Create or update the terminal's row (and its site if new); False if the site was new."""
    async with in_transaction() as conn:
        site, site_existed = await _site(reg.site, site_name, site_kind, conn)
        updated = (
            await Terminal.filter(id=reg.terminal_id)
            .using_db(conn)
            .update(site_id=site.id, model=reg.model)
        )
        if updated:
            return site_existed
        await Terminal.create(
            id=reg.terminal_id,
            site=site,
            model=reg.model,
            mqtt_username=reg.terminal_id,
            using_db=conn,
        )
    return site_existed


async def _site(
    site_id: str, name: str | None, kind: SiteKind, conn: BaseDBAsyncClient
) -> tuple[Site, bool]:
    site, created = await Site.get_or_create(
        id=site_id, defaults={"name": name or site_id, "kind": kind}, using_db=conn
    )
    return site, not created


def db_register_hook(database_url: str) -> RegisterHook:
    """A synchronous hook for `provision_terminal`, for a command with no event loop running."""

    def register(reg: Registration) -> None:
        async def go() -> None:
            await init_db(database_url)
            try:
                await register_terminal(reg)
            finally:
                await close_db()

        asyncio.run(go())

    return register
