"""`fleet licences export`: the trust list and revocation list of the server's licences, as files
for auditors who verify offline (`fleet verify --trust … --revoked …`).

Reads the same settings as `fleet serve` (environment, `--config` file): the issuing key and
authority from them, the revocations from the database. Server modules are imported only when
the subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio

from fleet.cli_common import CliError, warn, write_atomic


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("licences", help="the issued licences' trust and revocation lists")
    p.add_argument("--config", metavar="FILE", help="settings file (.toml or .env)")
    lic_sub = p.add_subparsers(dest="licences_command", required=True, metavar="COMMAND")
    export = lic_sub.add_parser(
        "export",
        help="write the trust list and revocation list for offline auditors",
        description="Write the trust list (the issuing keys, as `fleet keys trust-list` makes "
        "it) and the revocation list (every revoked licence, as `fleet revocations` makes it), "
        "the same documents as GET /api/v1/trust and /api/v1/revoked.",
    )
    export.add_argument("--trust", metavar="TRUST.json", help="write the trust list here")
    export.add_argument("--revoked", metavar="REVOKED.json", help="write the revocation list here")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    if args.trust is None and args.revoked is None:
        raise CliError("give --trust FILE, --revoked FILE or both")
    from fleet.server.db import close_db, init_db
    from fleet.server.licences.keys import IssuerKeyError, load_issuer
    from fleet.server.licences.service import revocation_list_json, revoked_serials
    from fleet.server_settings_cli import settings_from

    settings = settings_from(args.config)
    if args.trust is not None:
        try:
            issuer = load_issuer(settings)
        except IssuerKeyError as e:
            raise CliError(str(e)) from None
        trust = issuer.trust_list_json()
        write_atomic(args.trust, trust.encode(), overwrite=True)
        n = len(issuer.public_keys())
        warn(f"fleet licences: wrote trust list {args.trust!r} ({n} keys, issuer {issuer.name})")
    if args.revoked is not None:

        async def read() -> tuple[str, int]:
            await init_db(settings.database_url)
            try:
                return await revocation_list_json(), len(await revoked_serials())
            finally:
                await close_db()

        revoked, count = asyncio.run(read())
        write_atomic(args.revoked, revoked.encode(), overwrite=True)
        warn(f"fleet licences: wrote revocation list {args.revoked!r} ({count} revoked)")
    return 0
