"""`fleet config`: the configuration terminals get, starting with the hardware-model files.

    fleet config validate [DIR]   check every firmware_configs/*.toml (DIR default:
                                  $FLEET_FIRMWARE_DIR, else the repository's firmware_configs/)

One line per file, `ok` or the error naming the field; exit status 0 when every file is good,
1 otherwise (CI runs it from `make lint`). Each subcommand registers itself in `add_parser` with
an `_add_<name>` function and runs in its own `run_<name>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fleet.cli_common import warn
from fleet.firmware import FirmwareConfigError, firmware_dir, load_model, model_files


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="check and show terminal configuration")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    _add_validate(config_sub)


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
