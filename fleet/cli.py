"""The `fleet` command: licence seal tools for issuers and auditors, the server and its clients.

Each subcommand lives in its own module with an `add_parser` and a `run`; user errors are raised
as CliError and end here as one line on stderr with exit status 2, never a traceback.

A subcommand's module is imported only when that subcommand runs: each install (`.[auditor]`,
`.[server]`, `.[agent]`) has only its own dependencies, and `fleet verify` on an auditor's laptop
must not need the server's. `fleet --help` lists them all from COMMANDS without importing any.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from fleet.cli_common import EXIT_USAGE, CliError


class Command(NamedTuple):
    module: str
    #: The install extra its dependencies come from (None: the base install has them).
    extra: str | None
    #: Its line in `fleet --help`.
    help: str


#: Every subcommand, in `fleet --help` order. Its module's `add_parser(sub)` (`add_parsers` when
#: it has several) registers the real one.
COMMANDS: dict[str, Command] = {
    "verify": Command(
        "fleet.verify_cli", "auditor", "check scanned licence QR texts against a trust list"
    ),
    "keys": Command("fleet.keys_cli", None, "generate issuing keys; export a trust list"),
    "sign": Command(
        "fleet.sign_cli", None, "issue licences (LIC1 QR texts) from a claims JSON file"
    ),
    "revocations": Command("fleet.sign_cli", None, "write a revocation list of licence serials"),
    "demo": Command(
        "fleet.demo", None, "show the licence seal end to end (issue, verify, tamper, revoke)"
    ),
    "terminals": Command("fleet.terminals_cli", "server", "provision kiosk terminals"),
    "serve": Command("fleet.serve_cli", "server", "run the fleet server"),
    "replicas": Command("fleet.replicas_cli", "server", "retire a server replica for good"),
    "demo-fleet": Command(
        "fleet.demo_fleet",
        "server",
        "run the server with a simulated fleet (the product on one machine)",
    ),
    "tokens": Command("fleet.tokens_cli", "server", "create, list and revoke REST API tokens"),
    "config": Command("fleet.config_cli", None, "check and show terminal configuration"),
    "licences": Command(
        "fleet.licences_cli", "server", "the issued licences' trust and revocation lists"
    ),
    "updates": Command(
        "fleet.updates_cli", "server", "agent releases: build bundles, run the TUF repository"
    ),
    "rollouts": Command(
        "fleet.rollouts_cli", None, "staged rollouts of agent versions (server API)"
    ),
}
#: Our own packages: a missing one is a bug to show, not an install to complete.
OWN_PACKAGES = frozenset({"fleet", "agent", "rust_core"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s module loaded (all of them with `command="*"`); every other
    subcommand is a placeholder that only lists it."""
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Fleet manager for self-service business-licence kiosks: "
        "issue, verify and revoke signed licence QR codes (LIC1).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = set(COMMANDS) if command == "*" else {command} & set(COMMANDS)
    for module_name in dict.fromkeys(c.module for name, c in COMMANDS.items() if name in wanted):
        module = importlib.import_module(module_name)
        add = getattr(module, "add_parsers", None) or module.add_parser
        add(sub)
    for name, c in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=c.help)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv`: its first word that is not an option (`fleet` itself
    takes only -h)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    # Entity names are Chinese: write UTF-8 whatever the locale, and never die on an encoding.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8", errors="replace")
    args_in = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(args_in)
    try:
        args = build_parser(command).parse_args(args_in)
        status: int = args.func(args)
    except CliError as e:
        print(f"fleet {command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] in OWN_PACKAGES:
            raise
        # This install lacks the subcommand's extra (`fleet serve` on an auditor's laptop).
        extra = COMMANDS[command].extra if command in COMMANDS else None
        hint = f": pip install 'kiosk-fleet[{extra}]'" if extra else ""
        print(
            f"fleet {command}: error: needs {e.name}, which is not installed{hint}", file=sys.stderr
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`fleet verify … | head`): stop quietly, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
