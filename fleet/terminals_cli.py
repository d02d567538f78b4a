"""`fleet terminals add`: give a terminal its MQTT user and write the agent.toml for the kiosk.

With the server's own broker (no broker URL configured) the user goes into the broker's password
file under the server's data dir, and a running broker rereads it before the command returns.
With an external broker the command writes the config and says which user to create there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fleet.cli_common import CliError, warn, write_atomic
from fleet.server.broker_files import BROKER_SUBDIR, BrokerError, BrokerFiles
from fleet.server.provisioning import (
    CONFIG_KEY_PLACEHOLDER,
    UPDATE_ROOT_PLACEHOLDER,
    ProvisioningError,
    UserRegistry,
    known_models,
    provision_terminal,
)
from fleet.server.registry import db_register_hook

#: The file `fleet terminals add --out` writes beside the agent config for self-update.
UPDATE_ROOT_NAME = "update-root.json"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("terminals", help="provision kiosk terminals")
    t_sub = p.add_subparsers(dest="terminals_command", required=True, metavar="COMMAND")
    add = t_sub.add_parser(
        "add",
        help="create a terminal's MQTT credentials and write its agent.toml",
        description="Create the terminal's MQTT user (username = terminal id, a random "
        "password) and write the agent config to install on the kiosk (mode 0600: it holds "
        "the password). Known hardware models: "
        + ", ".join(["sim", *known_models()])
        + "; any other model gets simulated devices.",
    )
    add.add_argument("terminal_id", metavar="ID", help="terminal id, e.g. WH-HALL-01")
    add.add_argument("--site", required=True, help="site id the terminal stands at")
    add.add_argument("--model", required=True, help="hardware model name")
    add.add_argument(
        "--broker-url",
        help="broker URL the kiosk connects to (default: the configured broker URL, else "
        "the server's own broker's listener)",
    )
    add.add_argument("--out", metavar="agent.toml", help="write here instead of stdout")
    add.add_argument("--force", action="store_true", help="replace an existing --out file")
    add.add_argument(
        "--config-key",
        default=CONFIG_KEY_PLACEHOLDER,
        metavar="PATH",
        help=f"path of the fleet's config-signing public key on the kiosk "
        f"(default {CONFIG_KEY_PLACEHOLDER})",
    )
    add.add_argument(
        "--no-config-key", action="store_true", help="leave config_public_key commented out"
    )
    add.add_argument(
        "--server-url",
        metavar="URL",
        help="the fleet server's HTTP address as the kiosk reaches it (large templates and "
        "self-update come from it); with an update repository (`fleet updates init`) the "
        "config also gets [update] and update-root.json is written beside it",
    )
    add.add_argument(
        "--update-root",
        default=UPDATE_ROOT_PLACEHOLDER,
        metavar="PATH",
        help=f"path of the update repository's trusted root on the kiosk "
        f"(default {UPDATE_ROOT_PLACEHOLDER})",
    )
    add.add_argument(
        "--data-dir",
        type=Path,
        help="the server's data dir (default: from the server settings, FLEET_DATA_DIR)",
    )
    add.add_argument("--config", metavar="FILE", help="server settings file (.toml or .env)")
    add.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    data_dir, configured_url, database_url = _server_side(args)
    files: BrokerFiles | None = None
    if configured_url is None:
        files = BrokerFiles(data_dir / BROKER_SUBDIR)
        if not files.passwd_file.exists():
            raise CliError(
                f"no broker password file in {files.dir}: start `fleet serve` once "
                "(it creates the broker's files), or give --data-dir"
            )
    broker_url = args.broker_url or configured_url
    if broker_url is None:
        assert files is not None
        try:
            host, port = files.listener()
        except BrokerError as e:
            raise CliError(str(e)) from None
        broker_url = f"mqtt://{host}:{port}"
    if args.out is not None and not args.force and Path(args.out).exists():
        raise CliError(f"{args.out!r} already exists (use --force to replace it)")
    registry: UserRegistry | None = files
    trusted_root = _update_root(data_dir)
    if trusted_root is not None and args.server_url is None:
        warn(
            "fleet terminals: the fleet has an update repository but no --server-url was "
            "given: this terminal will not update itself"
        )
    self_update = trusted_root is not None and args.server_url is not None
    try:
        text, _password = provision_terminal(
            args.terminal_id,
            args.site,
            args.model,
            broker_url,
            registry,
            None if args.no_config_key else args.config_key,
            # The Terminal row, before the broker user: a refused id never gets credentials.
            register=db_register_hook(database_url),
            server_url=args.server_url,
            update_root_path=args.update_root if self_update else None,
        )
    except (ProvisioningError, BrokerError) as e:
        raise CliError(str(e)) from None
    if args.out is None:
        print(text, end="")
    else:
        write_atomic(args.out, text.encode(), private=True, overwrite=args.force)
        warn(f"fleet terminals: wrote {args.out!r} (mode 0600) for terminal {args.terminal_id}")
        if not args.no_config_key:
            pub = _write_config_public_key(args, Path(args.out).parent)
            warn(f"fleet terminals: wrote {str(pub)!r}: install it as {args.config_key!r}")
        if self_update:
            assert trusted_root is not None
            root_file = Path(args.out).parent / UPDATE_ROOT_NAME
            write_atomic(str(root_file), trusted_root, private=False, overwrite=True)
            warn(f"fleet terminals: wrote {str(root_file)!r}: install it as {args.update_root!r}")
    if files is None:
        warn(
            f"fleet terminals: the broker is external: create MQTT user {args.terminal_id!r} "
            "there with the password in the config file"
        )
    if args.model.strip().lower() not in known_models():
        warn(f"fleet terminals: unknown model {args.model!r}: the config uses simulated devices")
    return 0


def _update_root(data_dir: Path) -> bytes | None:
    """The update repository's latest root metadata (what kiosks trust), if it has one."""
    from fleet.server.updates.repository import UpdateRepository, server_updates_dir

    repo = UpdateRepository(server_updates_dir(data_dir))
    return repo.latest_root_bytes() if repo.initialised else None


def _write_config_public_key(args: argparse.Namespace, directory: Path) -> Path:
    """The fleet's config public key, next to the agent config (the kiosk needs both)."""
    from pydantic import ValidationError

    from fleet.server.desired.keys import PUBLIC_KEY_NAME, ConfigKeyError, load_config_key
    from fleet.server.settings import load_settings

    overrides: dict[str, object] = {} if args.data_dir is None else {"data_dir": args.data_dir}
    if args.config is None:
        overrides["dev_mode"] = True
    try:
        key = load_config_key(load_settings(args.config, **overrides))
    except (ValidationError, FileNotFoundError, ConfigKeyError) as e:
        raise CliError(f"config key: {e}") from None
    path = directory / PUBLIC_KEY_NAME
    write_atomic(str(path), key.public_pem().encode(), private=False, overwrite=True)
    return path


def _server_side(args: argparse.Namespace) -> tuple[Path, str | None, str]:
    """(data dir, configured broker URL or None for the server's own broker, database URL)."""
    from pydantic import ValidationError

    from fleet.server.settings import load_settings
    from fleet.server_settings_cli import settings_error

    overrides = {} if args.data_dir is None else {"data_dir": args.data_dir}
    if args.config is None:
        # Enough to find the broker's files and the database; the server's secrets are not
        # needed here, so a shell without them (dev mode) may provision.
        overrides["dev_mode"] = True
    try:
        settings = load_settings(args.config, **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as e:
        raise settings_error(e) from None
    broker_url = None if args.data_dir is not None and args.config is None else settings.broker_url
    return settings.data_dir, broker_url, settings.database_url
