"""`fleet serve`: run the fleet server (API, ingest, and its own broker unless one is named)."""

from __future__ import annotations

import argparse
import logging

from fleet.cli_common import CliError
from fleet.server_settings_cli import settings_from


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the fleet server",
        description="Run the REST API, the MQTT ingest and the database. Without a broker URL "
        "(FLEET_BROKER_URL) it starts and supervises its own Mosquitto. Settings come from "
        "FLEET_* environment variables and an optional file (--config or FLEET_CONFIG).",
    )
    p.add_argument("--config", metavar="FILE", help="settings file (.toml or .env)")
    p.add_argument("--host", help="API address (default: api_host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default: api_port, 8000)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["api_host"] = args.host
    if args.port is not None:
        overrides["api_port"] = args.port
    settings = settings_from(args.config, **overrides)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from fleet.server.broker import BrokerError  # the server's stack only when serving
    from fleet.server.serve import serve

    try:
        return serve(settings, log_level=args.log_level)
    except (BrokerError, ValueError) as e:
        raise CliError(str(e)) from None
