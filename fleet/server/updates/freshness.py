"""Keeps the online TUF metadata fresh while the server runs.

The timestamp expires in a day on purpose (a terminal shown an old one knows it is being frozen),
so something must re-sign it: `keep_fresh` calls `UpdateRepository.refresh_expiring` every
`interval_s`, in a worker thread (signing and fsync block). `run_refresh` is the lifespan hook
for `create_app(settings, hooks=[..., run_refresh])`; it does nothing until the repository has been
initialised in `data_dir/updates`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fleet.server.api.context import AppContext
from fleet.server.updates.repository import UpdateRepository, server_updates_dir

log = logging.getLogger(__name__)

#: Well under half the timestamp's one-day lifetime, so a missed run or two costs nothing.
REFRESH_INTERVAL_S = 3600.0


async def keep_fresh(repo: UpdateRepository, interval_s: float = REFRESH_INTERVAL_S) -> None:
    """Re-sign expiring online metadata forever (cancel to stop); errors are logged, not fatal."""
    while True:
        if repo.initialised:
            try:
                roles = await asyncio.to_thread(repo.refresh_expiring)
                if roles:
                    log.info("TUF metadata re-signed: %s", ", ".join(roles))
            except Exception:  # a full disk or a missing key must not kill the server
                log.exception("TUF metadata refresh failed")
        await asyncio.sleep(interval_s)


@asynccontextmanager
async def run_refresh(ctx: AppContext) -> AsyncIterator[None]:
    """Lifespan hook: `keep_fresh` on the server's repository for the app's lifetime."""
    repo = UpdateRepository(server_updates_dir(ctx.settings.data_dir))
    task = asyncio.create_task(keep_fresh(repo), name="tuf-refresh")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
