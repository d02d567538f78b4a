"""The command line's client of the running server's REST API (`fleet config`, `fleet rollouts`).

`--url` (default $FLEET_URL, else http://127.0.0.1:8000) and `--token` (default $FLEET_TOKEN);
the server's refusals end as one CliError line naming the method, path, status and detail.
Standard library only (urllib): no install extra has to carry an HTTP client for a few calls.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

from fleet.cli_common import CliError

TIMEOUT_S = 120


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error: the bearer token is not sent on to another place."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment (a proxy must not see the token) and no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)


def api_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("FLEET_URL", "http://127.0.0.1:8000"),
        help="the server (default $FLEET_URL, else http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token", default=os.environ.get("FLEET_TOKEN"), help="API token (default $FLEET_TOKEN)"
    )


def _detail(text: str) -> str:
    """The server's `detail` in words: a 422's list of errors as `field: message; …`."""
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        return text
    if isinstance(detail, list):
        parts = []
        for err in detail:
            if isinstance(err, dict):
                where = [str(x) for x in err.get("loc", []) if x not in ("body", "query", "path")]
                loc = ".".join(where)
                msg = str(err.get("msg", "")).removeprefix("Value error, ")
                parts.append(f"{loc}: {msg}" if loc and f"{loc}:" not in msg else msg)
            else:
                parts.append(str(err))
        return "; ".join(parts)
    return str(detail)


def api_call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """`method path` with `body` as JSON; the JSON answer, or CliError."""
    if not args.token:
        raise CliError("no API token: pass --token or set FLEET_TOKEN")
    url = args.url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url {args.url!r}: not an http:// or https:// URL")
    headers = {"Authorization": f"Bearer {args.token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as r:
            answer = r.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", errors="replace")
        raise CliError(f"{method} {path}: {e.code}: {_detail(text)}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(f"cannot reach {args.url}: {reason}") from None
    try:
        return json.loads(answer)
    except ValueError:
        raise CliError(f"{method} {path}: the answer is not JSON") from None
