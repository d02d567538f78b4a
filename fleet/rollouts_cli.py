"""`fleet rollouts`: staged rollouts of agent versions, through the running server's REST API.

    fleet rollouts create --version V [--site S ...] [--model M ...] [--tag T ...]
                          [--terminal ID ...] [--waves "1,10%,50%,100%"] [--success-threshold F]
                          [--max-failures N] [--max-failure-pct P] [--failure-action pause|abort]
                          [--timeout S] [--override-window]
    fleet rollouts list                 one line per rollout, newest first
    fleet rollouts show ID [--json]     the rollout and its terminals, wave by wave
    fleet rollouts pause ID [--reason TEXT]
    fleet rollouts resume ID
    fleet rollouts abort ID [--reason TEXT]

`--url` (default $FLEET_URL, else http://127.0.0.1:8000) and `--token` (default $FLEET_TOKEN) as
for `fleet config get`: reading needs an operator or admin token, the rest an admin's. The
version must be published in the server's update repository first. The server's refusals (404,
409, 422) end as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fleet.api_client import api_call, api_options
from fleet.cli_common import CliError

#: Terminal states in the order of a rollout's progress (the API's UpdateState).
STATES = (
    "pending",
    "downloading",
    "installing",
    "succeeded",
    "failed",
    "rolled_back",
    "timed_out",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rollouts", help="staged rollouts of agent versions (server API)")
    rsub = p.add_subparsers(dest="rollouts_command", required=True, metavar="COMMAND")

    c = rsub.add_parser(
        "create",
        help="plan a rollout and start its canary wave (admin)",
        description="Target: the listed terminals, plus the terminals matching every filter "
        "given (--site, --model, --tag; each may repeat).",
    )
    c.add_argument("--version", required=True, help="agent version (published on the server)")
    c.add_argument("--site", action="append", default=[], metavar="S", help="a site id")
    c.add_argument("--model", action="append", default=[], metavar="M", help="a hardware model")
    c.add_argument("--tag", action="append", default=[], metavar="T", help="a terminal tag")
    c.add_argument("--terminal", action="append", default=[], metavar="ID", help="a terminal")
    c.add_argument(
        "--waves",
        type=parse_waves,
        metavar="SPEC",
        help='cumulative wave sizes: counts or N%% (server default "1,10%%,50%%,100%%")',
    )
    c.add_argument("--success-threshold", type=float, metavar="F", help="fraction, 0 < F <= 1")
    c.add_argument("--max-failures", type=int, metavar="N", help="failures tolerated")
    c.add_argument("--max-failure-pct", type=float, metavar="P", help="percent tolerated")
    c.add_argument("--failure-action", choices=("pause", "abort"), help="default: pause")
    c.add_argument("--timeout", type=int, metavar="S", help="per-terminal timeout in seconds")
    c.add_argument(
        "--override-window", action="store_true", help="start waves outside the maintenance window"
    )
    api_options(c)
    c.set_defaults(func=run_create)

    ls = rsub.add_parser("list", help="rollouts, newest first")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")
    api_options(ls)
    ls.set_defaults(func=run_list)

    sh = rsub.add_parser("show", help="a rollout with every terminal's state")
    sh.add_argument("id", type=int, metavar="ID")
    sh.add_argument("--json", action="store_true", help="print the API's JSON")
    api_options(sh)
    sh.set_defaults(func=run_show)

    for name, text in (
        ("pause", "start no further wave (admin)"),
        ("resume", "go on, accepting the failures so far (admin)"),
        ("abort", "stop for good; updated terminals keep the version (admin)"),
    ):
        a = rsub.add_parser(name, help=text)
        a.add_argument("id", type=int, metavar="ID")
        if name != "resume":
            a.add_argument("--reason", default="", help="recorded with the rollout")
        a.add_argument("--json", action="store_true", help="print the API's JSON")
        api_options(a)
        a.set_defaults(func=run_control, action=name)


def parse_waves(text: str) -> list[int | str]:
    """`"1, 10%, 50%, 100%"` -> `[1, "10%", "50%", "100%"]` (the server checks the values)."""
    waves: list[int | str] = []
    for part in text.replace(" ", "").split(","):
        if part.isdigit():
            waves.append(int(part))
        elif part.endswith("%") and part[:-1].replace(".", "", 1).isdigit():
            waves.append(part)
        else:
            raise argparse.ArgumentTypeError(f"{part!r} is neither a count nor N%")
    return waves


def create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /api/v1/rollouts body; options not given are left to the server's defaults."""
    body: dict[str, Any] = {
        "version": args.version,
        "target": {
            "sites": args.site,
            "models": args.model,
            "tags": args.tag,
            "terminals": args.terminal,
        },
        "override_window": args.override_window,
    }
    optional = {
        "waves": args.waves,
        "success_threshold": args.success_threshold,
        "max_failures": args.max_failures,
        "max_failure_pct": args.max_failure_pct,
        "failure_action": args.failure_action,
        "per_terminal_timeout_s": args.timeout,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def _dump(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def progress(r: Mapping[str, Any]) -> str:
    if r["current_wave"] < 0:
        return f"not started/{r['wave_count']}"
    return f"wave {r['current_wave'] + 1}/{r['wave_count']}"


def counts(c: Mapping[str, int]) -> str:
    return " ".join(f"{s}={c[s]}" for s in STATES if c.get(s)) or "-"


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart (the last one not padded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _when(value: str | None) -> str:
    """An API timestamp in this machine's time zone, to the second."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def describe(r: Mapping[str, Any]) -> list[str]:
    """`show`'s text: the rollout, its rules, then a table of terminals wave by wave."""
    failed = sum(r["counts"].get(s, 0) for s in ("failed", "rolled_back", "timed_out"))
    target = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["target"].items() if v)
    window = r["window"]
    where = (
        f"{window['start']}-{window['end']} {window['tz']}" if window else "outside service hours"
    )
    if r["override_window"]:
        where += " (overridden: waves start at once)"
    limits = [
        f"max {r['max_failures']}" if r["max_failures"] is not None else "",
        f"max {r['max_failure_pct']}%" if r["max_failure_pct"] is not None else "",
    ]
    lines = [
        f"rollout {r['id']}: agent {r['version']}  {r['state']}  {progress(r)}",
        *([f"reason:    {r['reason']}"] if r["reason"] else []),
        f"target:    {target or '-'}",
        f"waves:     {', '.join(str(w) for w in r['waves_spec'])}",
        f"terminals: {counts(r['counts'])}",
        f"failures:  {failed} ({', '.join(x for x in limits if x) or 'no limit'}; "
        f"then {r['failure_action']}); success threshold {r['success_threshold']:g}",
        f"timeout:   {r['per_terminal_timeout_s']} s per terminal",
        f"window:    {where}",
        f"created:   {_when(r['created_at'])} by {r['created_by'] or '-'}; "
        f"updated {_when(r['updated_at'])}",
        "",
    ]
    rows = [["WAVE", "TERMINAL", "STATE", "STARTED", "UPDATED", "REASON"]]
    for w in r["waves"]:
        for x in w["terminals"]:
            rows.append(
                [
                    f"{w['index'] + 1}" + ("" if w["started"] else " (waiting)"),
                    x["id"],
                    x["state"],
                    _when(x["started_at"]),
                    _when(x["updated_at"]),
                    x["reason"],
                ]
            )
    return lines + table(rows)


def run_create(args: argparse.Namespace) -> int:
    body = create_body(args)
    if not any(body["target"].values()):
        raise CliError("no target: give --site, --model, --tag or --terminal")
    r = api_call(args, "POST", "/api/v1/rollouts", body)
    print("\n".join(describe(r)))
    return 0


def run_list(args: argparse.Namespace) -> int:
    page = api_call(args, "GET", "/api/v1/rollouts?limit=500")
    if args.json:
        _dump(page)
        return 0
    rows = [["ID", "VERSION", "STATE", "PROGRESS", "TERMINALS", "UPDATED"]]
    for r in page["items"]:
        rows.append(
            [
                str(r["id"]),
                r["version"],
                r["state"],
                progress(r),
                counts(r["counts"]),
                _when(r["updated_at"]),
            ]
        )
    if len(rows) == 1:
        print("no rollouts")
    else:
        print("\n".join(table(rows)))
    return 0


def run_show(args: argparse.Namespace) -> int:
    r = api_call(args, "GET", f"/api/v1/rollouts/{args.id}")
    if args.json:
        _dump(r)
    else:
        print("\n".join(describe(r)))
    return 0


def run_control(args: argparse.Namespace) -> int:
    reason = getattr(args, "reason", "")
    body = {"reason": reason} if reason else None
    r = api_call(args, "POST", f"/api/v1/rollouts/{args.id}/{args.action}", body)
    if args.json:
        _dump(r)
    else:
        print(f"rollout {r['id']}: {r['state']}  {progress(r)}  {counts(r['counts'])}")
    return 0
