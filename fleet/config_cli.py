"""`fleet config`: the configuration terminals get.

    fleet config validate [DIR]   check every firmware_configs/*.toml (DIR default:
                                  $FLEET_FIRMWARE_DIR, else the repository's firmware_configs/)
    fleet config get LAYER        print a layer (JSON); LAYER = defaults | model/ID | site/ID |
                                  terminal/ID, or terminal/ID/desired for the computed document
    fleet config set LAYER FILE   replace a layer with FILE's JSON object (- = stdin) and print
                                  each affected terminal's result

`get` and `set` go through the running server's REST API (`--url`, default $FLEET_URL or
http://127.0.0.1:8000; `--token`, default $FLEET_TOKEN): only the server signs and publishes
documents, and the API checks roles (reading: operator or admin; changing: admin).

One line per file, `ok` or the error naming the field; exit status 0 when every file is good,
1 otherwise (CI runs it from `make lint`). Each subcommand registers itself in `add_parser` with
an `_add_<name>` function and runs in its own `run_<name>`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fleet.api_client import api_call, api_options
from fleet.cli_common import CliError, read_text, warn
from fleet.firmware import FirmwareConfigError, firmware_dir, load_model, model_files


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="check and show terminal configuration")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    _add_validate(config_sub)
    _add_get(config_sub)
    _add_set(config_sub)


def _add_validate(config_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = config_sub.add_parser(
        "validate",
        help="check the hardware-model files (firmware_configs/*.toml)",
        description="Check every hardware-model file of DIR against the format "
        "(firmware_configs/schema.json) and for consistency (id = file name, tray totals, "
        "thresholds, the [desired] layer). Prints one line per file; exits 1 if any is bad.",
    )
    v.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="directory of model files (default: $FLEET_FIRMWARE_DIR, else the repository's "
        "firmware_configs/)",
    )
    v.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    directory: Path = args.dir if args.dir is not None else firmware_dir()
    try:
        files = model_files(directory)
    except FirmwareConfigError as e:
        warn(f"fleet config validate: {e}")
        return 1
    if not files:
        warn(f"fleet config validate: {directory}: no model files (*.toml)")
        return 1
    bad = 0
    for path in files:
        try:
            model = load_model(path)
        except FirmwareConfigError as e:
            bad += 1
            print(f"error {e}", flush=True)
            continue
        print(
            f"ok    {path}: {model.id} ({model.printer_driver}, {len(model.trays)} tray(s), "
            f"{model.paper_capacity} sheets, reader {model.reader_type})",
            flush=True,
        )
    if bad:
        warn(f"fleet config validate: {bad} of {len(files)} files are bad")
        return 1
    return 0


# -- get / set through the REST API ------------------------------------------------------------

_SCOPES = {"model": "models", "site": "sites", "terminal": "terminals"}


def _add_get(config_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = config_sub.add_parser("get", help="print a configuration layer or a terminal's document")
    g.add_argument(
        "layer", metavar="LAYER", help="defaults | model/ID | site/ID | terminal/ID[/desired]"
    )
    api_options(g)
    g.set_defaults(func=run_get)


def _add_set(config_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = config_sub.add_parser("set", help="replace a configuration layer (admin)")
    st.add_argument("layer", metavar="LAYER", help="defaults | model/ID | site/ID | terminal/ID")
    st.add_argument("file", metavar="FILE", help="JSON object of settings, - for stdin")
    api_options(st)
    st.set_defaults(func=run_set)


def layer_path(layer: str) -> str:
    """`site/S1` -> `/api/v1/config/sites/S1` (and the others); CliError for anything else."""
    if layer == "defaults":
        return "/api/v1/config/defaults"
    scope, _, rest = layer.partition("/")
    key, _, tail = rest.partition("/")
    if scope in _SCOPES and key and tail in ("", "desired") and (tail == "" or scope == "terminal"):
        return f"/api/v1/config/{_SCOPES[scope]}/{key}" + (f"/{tail}" if tail else "")
    raise CliError(f"{layer!r} is not defaults, model/ID, site/ID or terminal/ID[/desired]")


def run_get(args: argparse.Namespace) -> int:
    print(json.dumps(api_call(args, "GET", layer_path(args.layer)), ensure_ascii=False, indent=2))
    return 0


def run_set(args: argparse.Namespace) -> int:
    path = layer_path(args.layer)
    if path.endswith("/desired"):
        raise CliError("a computed document cannot be set: set one of its layers")
    text = read_text(args.file, "layer file")
    try:
        layer = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{args.file}: not JSON ({e})") from None
    if not isinstance(layer, dict):
        raise CliError(f"{args.file}: a layer is a JSON object of settings")
    out = api_call(args, "PUT", path, layer)
    for r in out.get("results", []):
        where = f"version {r['version']}" if r.get("version") else (r.get("error") or "")
        print(f"{r['terminal']}\t{r['result']}\t{where}")
    warn(
        f"fleet config set: {out.get('new', 0)} new, {out.get('unchanged', 0)} unchanged, "
        f"{out.get('errors', 0)} errors"
    )
    return 1 if out.get("errors") else 0
