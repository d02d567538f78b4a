"""The command line's client of the running server's REST API (`fleet config`, `fleet rollouts`).

`--url` (default $FLEET_URL, else http://127.0.0.1:8000) and `--token` (default $FLEET_TOKEN);
the server's refusals end as one CliError line naming the method, path, status and detail.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx

from fleet.cli_common import CliError


def api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("FLEET_URL", "http://127.0.0.1:8000"),
        help="the server (default $FLEET_URL, else http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token", default=os.environ.get("FLEET_TOKEN"), help="API token (default $FLEET_TOKEN)"
    )


def api_call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """`method path` with `body` as JSON; the JSON answer, or CliError."""
    if not args.token:
        raise CliError("no API token: pass --token or set FLEET_TOKEN")
    try:
        r = httpx.request(
            method,
            args.url.rstrip("/") + path,
            json=body,
            headers={"Authorization": f"Bearer {args.token}"},
            timeout=120,
            trust_env=False,
        )
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {args.url}: {e}") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise CliError(f"{method} {path}: {r.status_code}: {detail}")
    return r.json()
