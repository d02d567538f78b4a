"""`fleet replicas retire`: take a replica out of the shared ingest for good, losing nothing."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from fleet.cli_common import CliError
from fleet.server_settings_cli import settings_from


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replicas",
        help="retire a server replica for good",
        description="Replicas of `fleet serve` on one PostgreSQL and one broker.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser(
        "retire",
        help="move what the broker holds for a stopped replica into the inbox; end its session",
        description="For a replica that will not come back: the broker keeps handing its "
        "session a share of the terminals' messages while it is down. This takes the session "
        "over, stops that, files what was queued into the ingest inbox (the lease holder "
        "handles it) and ends the session. Stop the replica first. Settings as for `fleet "
        "serve` (FLEET_BROKER_URL, FLEET_DATABASE_URL, FLEET_BROKER_ADMIN_PASSWORD, ...).",
    )
    r.add_argument("replica_id", nargs="?", help="default: FLEET_REPLICA_ID (this host's)")
    r.add_argument(
        "--force",
        action="store_true",
        help="even if the replica's heartbeat is fresh (it may still be running: it would take "
        "its session back, and the retirement would stop)",
    )
    r.add_argument("--config", metavar="FILE", help="settings file (.toml or .env)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.replica_id:
        overrides["replica_id"] = args.replica_id
    settings = settings_from(args.config, **overrides)
    if not settings.replicated:
        raise CliError("no replicas here: the database is not PostgreSQL (FLEET_DATABASE_URL)")
    if settings.broker_url is None:
        raise CliError("replicas share an external broker: set FLEET_BROKER_URL")
    from fleet.server.serve import parse_broker_url  # the server's stack only here

    try:
        address = parse_broker_url(settings.broker_url)
    except ValueError as e:
        raise CliError(str(e)) from None
    try:
        moved = asyncio.run(_retire(settings, address.host, address.port, address.tls, args.force))
    except (OSError, TimeoutError) as e:
        raise CliError(f"broker {settings.broker_url}: {e or 'no answer'}") from None
    if moved is None:
        raise CliError(f"replica {settings.replica_id} took its session back: it is running")
    print(f"replica {settings.replica_id} retired: {moved} messages moved to the inbox")
    return 0


async def _retire(settings: Any, host: str, port: int, tls: bool, force: bool) -> int | None:
    from fleet.server.db import close_db, init_db
    from fleet.server.ingest.retire import STALE_S, BrokerAt, is_fresh, retire

    await init_db(settings.database_url)
    try:
        if not force and await is_fresh(settings.replica_id):
            raise CliError(
                f"replica {settings.replica_id} was heard in the last {STALE_S:g} s: stop it "
                "first (or --force)"
            )
        return await retire(settings, BrokerAt(host, port, tls), settings.replica_id)
    finally:
        await close_db()
