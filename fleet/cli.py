"""The `fleet` command: licence seal tools for issuers and auditors (more subcommands to come).

Each subcommand lives in its own module with an `add_parser` and a `run`; user errors are raised
as CliError and end here as one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fleet import (
    config_cli,
    demo,
    demo_fleet,
    keys_cli,
    licences_cli,
    rollouts_cli,
    serve_cli,
    sign_cli,
    terminals_cli,
    tokens_cli,
    updates_cli,
    verify_cli,
)
from fleet.cli_common import EXIT_USAGE, CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Fleet manager for self-service business-licence kiosks: "
        "issue, verify and revoke signed licence QR codes (LIC1).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verify_cli.add_parser(sub)
    keys_cli.add_parser(sub)
    sign_cli.add_parsers(sub)
    demo.add_parser(sub)
    terminals_cli.add_parser(sub)
    serve_cli.add_parser(sub)
    demo_fleet.add_parser(sub)
    tokens_cli.add_parser(sub)
    config_cli.add_parser(sub)
    licences_cli.add_parser(sub)
    updates_cli.add_parser(sub)
    rollouts_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Entity names are Chinese: write UTF-8 whatever the locale, and never die on an encoding.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(encoding="utf-8", errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"fleet {args.command}"
    try:
        status: int = args.func(args)
    except CliError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
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
