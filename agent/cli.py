"""`fleet-agent`: the terminal agent's command line.

    fleet-agent run --config agent.toml            run until SIGTERM
    fleet-agent check-config --config agent.toml   validate the file and the driver settings
    fleet-agent install --root DIR --version V BUNDLE
                                                   install the first (factory) version into an
                                                   empty A/B root for agent.update.launcher

Exit status: 0 clean stop (or a valid config), 1 runtime failure (data dir, outbox, another
instance running), 2 bad usage or a bad config -- which is printed as one line naming the field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import config
from agent.drivers import factory
from agent.service import EXIT_CONFIG, EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleet-agent", description="Kiosk fleet terminal agent")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="report device status to the fleet until stopped")
    run.add_argument("--config", required=True, metavar="FILE", help="agent.toml")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", required=True, metavar="FILE", help="agent.toml")
    install = sub.add_parser(
        "install",
        help="install a release bundle as the first version of an empty update root",
        description="Later versions arrive through self-update (TUF-verified); this first one "
        "is trusted as given, like the package it came in.",
    )
    install.add_argument("--root", required=True, type=Path, help="the versions root (A/B)")
    install.add_argument("--version", required=True, help="the bundle's agent version")
    install.add_argument("bundle", type=Path, help="fleet-agent-V.tar.gz (`fleet updates build`)")
    return p


def install(root: Path, version: str, bundle: Path) -> int:
    from agent.update.install import InstallError, bundle_sha256
    from agent.update.updater import UpdateError, Updater

    try:
        Updater(root).provision(bundle, version, bundle_sha256(bundle))
    except (InstallError, UpdateError, ValueError, OSError) as e:
        print(f"fleet-agent install: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{root}: agent {version} installed; run it with python -m agent.update.launcher")
    return EXIT_OK


def load_checked(path: str) -> config.AgentConfig:
    """The config, with each device table checked against its driver's signature."""
    cfg = config.load(path)
    for section, dev in (("printer", cfg.printer), ("reader", cfg.reader)):
        if dev is not None:
            factory.check(dev, section, source=cfg.source)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "install":
        return install(args.root, args.version, args.bundle)
    try:
        cfg = load_checked(args.config)
    except config.ConfigError as e:
        print(f"fleet-agent: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        devices = ", ".join(
            f"{name} {dev.driver}"
            for name, dev in (("printer", cfg.printer), ("reader", cfg.reader))
            if dev is not None
        )
        print(
            f"{cfg.source}: OK (terminal {cfg.terminal_id}, broker {cfg.broker.url}, "
            f"{devices or 'no devices'})"
        )
        return EXIT_OK
    from agent import service  # the MQTT stack only when running

    return service.run(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
