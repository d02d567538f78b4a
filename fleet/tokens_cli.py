"""`fleet tokens`: make, list and revoke the REST API's bearer tokens.

Reads the same settings as `fleet serve` (environment, `--config` file) to find the database.
The server modules are imported only when a subcommand runs, so `fleet verify` keeps working
on an auditor's laptop without the server extras.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fleet.cli_common import CliError, warn

ROLES = ("operator", "auditor", "admin")
T = TypeVar("T")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tokens", help="create, list and revoke REST API tokens")
    p.add_argument("--config", metavar="FILE", help="settings file (.toml or .env)")
    tokens_sub = p.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")

    create = tokens_sub.add_parser(
        "create",
        help="make a new bearer token",
        description="Make a new bearer token and print it once on stdout: only its SHA-256 is "
        "stored, so it cannot be shown again.",
    )
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True, help="who or what uses it, e.g. 'ops-desk-1'")
    create.set_defaults(func=run_create)

    ls = tokens_sub.add_parser("list", help="list tokens (never their secrets)")
    ls.set_defaults(func=run_list)

    revoke = tokens_sub.add_parser("revoke", help="revoke a token for good")
    revoke.add_argument("id", type=int, help="token id, as `fleet tokens list` shows it")
    revoke.set_defaults(func=run_revoke)


def _with_db(args: argparse.Namespace, work: Callable[[], Awaitable[T]]) -> T:
    from fleet.server.db import close_db, init_db
    from fleet.server_settings_cli import settings_from

    settings = settings_from(args.config)

    async def main() -> T:
        await init_db(settings.database_url)
        try:
            return await work()
        finally:
            await close_db()

    return asyncio.run(main())


def run_create(args: argparse.Namespace) -> int:
    from fleet.server.tokens import create_token

    try:
        new = _with_db(args, lambda: create_token(args.name, args.role))
    except ValueError as e:
        raise CliError(str(e)) from None
    print(new.secret)
    warn(
        f"fleet tokens: created {new.record.role} token {new.record.id} "
        f"({new.record.name!r}); it is shown only this once"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from fleet.server.db.models import ApiToken

    tokens = _with_db(args, lambda: ApiToken.all().order_by("id"))
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
        print(f"{t.id}\t{t.role}\t{state}\t{t.name}\tlast used {used}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from fleet.server.tokens import revoke_token

    if not _with_db(args, lambda: revoke_token(args.id)):
        raise CliError(f"no active token with id {args.id}")
    warn(f"fleet tokens: revoked token {args.id}")
    return 0
