"""`fleet updates`: build agent release bundles and publish them in the server's TUF repository.

`build` needs nothing but the agent package. The others work on `data_dir/updates`, where
`fleet serve` serves the repository from: `--data-dir` names it directly, otherwise it comes from
the same settings as `fleet serve` (environment, `--config` file). Only `init` needs the root
key; the running server never sees it. Server modules are imported only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.cli_common import CliError, warn, write_atomic

if TYPE_CHECKING:
    from fleet.server.updates.repository import UpdateRepository


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("updates", help="agent releases: build bundles, run the TUF repository")
    up_sub = p.add_subparsers(dest="updates_command", required=True, metavar="COMMAND")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", metavar="FILE", help="settings file (.toml or .env)")
    where.add_argument(
        "--data-dir", metavar="DIR", help="the server's data_dir (default: from the settings)"
    )

    build = up_sub.add_parser(
        "build",
        help="build the reproducible bundle of an agent version",
        description="Write fleet-agent-V.tar.gz: the installed agent package, its dist-info "
        "(version V) and fleet-bundle.json. The same sources give the same bytes "
        "(SOURCE_DATE_EPOCH sets the file times, default 0). Prints the path and sha256.",
    )
    build.add_argument("--version", required=True, metavar="V", help="e.g. 1.4.0")
    build.add_argument("--out", default=".", metavar="DIR", help="default: the current folder")
    build.set_defaults(func=run_build)

    init = up_sub.add_parser(
        "init",
        parents=[where],
        help="create the TUF repository and its keys",
        description="Create data_dir/updates with new Ed25519 keys: the online keys stay in the "
        "data dir, the root key goes to --root-key-dir, which belongs on offline media.",
    )
    init.add_argument(
        "--root-key-dir", required=True, metavar="DIR", help="where the root key goes"
    )
    init.set_defaults(func=run_init)

    publish = up_sub.add_parser(
        "publish",
        parents=[where],
        help="sign and publish a bundle",
        description="Add the bundle as target fleet-agent-V.tar.gz. A published version never "
        "changes: the same bytes again do nothing, other bytes are refused.",
    )
    publish.add_argument("bundle", metavar="BUNDLE", help="a .tar.gz from `fleet updates build`")
    publish.add_argument("--version", metavar="V", help="must match the bundle's manifest")
    publish.set_defaults(func=run_publish)

    listing = up_sub.add_parser(
        "list",
        parents=[where],
        help="published versions and metadata expiry",
        description="Each published version with its length and sha256, then the version and "
        "expiry of the root, targets, snapshot and timestamp metadata.",
    )
    listing.set_defaults(func=run_list)

    rotate = up_sub.add_parser(
        "rotate-keys",
        parents=[where],
        help="replace the online keys (after a leak or a compromised server)",
        description="Make new keys for the online roles (default: all three), sign a new root "
        "that trusts them and revokes the old ones (this needs the root key), re-sign the "
        "metadata and delete the old key files. Terminals follow the new root on their next "
        "refresh; after a compromised server rotate all three.",
    )
    rotate.add_argument(
        "--root-key-dir", required=True, metavar="DIR", help="where the root key is"
    )
    rotate.add_argument(
        "--role",
        action="append",
        choices=("targets", "snapshot", "timestamp"),
        help="a role to rotate (repeatable; default: all three)",
    )
    rotate.set_defaults(func=run_rotate)

    root = up_sub.add_parser(
        "root",
        parents=[where],
        help="write the trusted root metadata for provisioning terminals",
        description="Write the latest N.root.json exactly as the server serves it: the trust "
        "anchor an agent is provisioned with.",
    )
    root.add_argument("--out", metavar="FILE", help="write here (replacing it) instead of stdout")
    root.set_defaults(func=run_root)


def _updates_dir(args: argparse.Namespace) -> Path:
    from fleet.server.updates.repository import server_updates_dir

    if args.data_dir is not None:
        return server_updates_dir(Path(args.data_dir))
    from fleet.server_settings_cli import settings_from

    return server_updates_dir(settings_from(args.config).data_dir)


def _repository(args: argparse.Namespace) -> UpdateRepository:
    """The initialised repository (CliError when there is none)."""
    from fleet.server.updates.repository import UpdateRepository

    repo = UpdateRepository(_updates_dir(args))
    if not repo.initialised:
        raise CliError(
            f"no TUF repository in {repo.updates_dir} (create one with `fleet updates init`)"
        )
    return repo


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def run_build(args: argparse.Namespace) -> int:
    from fleet.server.updates.bundle import build_bundle

    try:
        path = build_bundle(args.version, Path(args.out))
    except ValueError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot write the bundle in {args.out!r}: {e.strerror or e}") from None
    print(f"{path}\nsha256 {_sha256(path)}")
    return 0


def run_init(args: argparse.Namespace) -> int:
    from tuf.api.exceptions import RepositoryError

    from fleet.server.updates.repository import ROOT, RepositoryStateError, init_repository

    updates = _updates_dir(args)
    root_key_dir = Path(args.root_key_dir)
    try:
        repo = init_repository(updates, root_key_dir)
    except (RepositoryStateError, RepositoryError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot create the repository: {e}") from None
    print(f"initialised the TUF repository in {updates}")
    for keyid in repo.root().roles[ROOT].keyids:
        print(f"root key: {root_key_dir / f'{keyid}.pem'}")
    warn(
        "fleet updates: keep the root key offline (removable media, another host): only "
        "`fleet updates init` and key rotation need it, and whoever holds it controls every "
        "terminal's updates"
    )
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from tuf.api.exceptions import RepositoryError

    from fleet.server.updates.repository import (
        ONLINE_ROLES,
        RepositoryStateError,
        UpdateRepository,
    )

    repo = UpdateRepository(_repository(args).updates_dir, root_key_dir=Path(args.root_key_dir))
    roles = tuple(args.role or ONLINE_ROLES)
    try:
        new = repo.rotate_online_keys(*roles)
    except (RepositoryStateError, RepositoryError, ValueError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot rotate the keys: {e}") from None
    version = repo.root().version
    for role, keyids in new.items():
        print(f"{role}: new key {', '.join(keyids)}")
    print(f"root version {version} trusts them; terminals follow it on their next refresh")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from tuf.api.exceptions import RepositoryError

    from agent.update.tuf_client import bundle_target_name
    from fleet.server.updates.bundle import read_bundle_version
    from fleet.server.updates.repository import HASH_ALGORITHM, RepositoryStateError

    bundle = Path(args.bundle)
    if not bundle.is_file():
        raise CliError(f"bundle {args.bundle!r}: no such file")
    try:
        version = read_bundle_version(bundle)
        name = bundle_target_name(version)
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.version is not None and args.version != version:
        raise CliError(f"bundle {args.bundle!r} is version {version}, not {args.version}")
    repo = _repository(args)
    already = name in repo.targets().targets
    try:
        target = repo.add_target(bundle, version)
    except (RepositoryStateError, RepositoryError) as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot publish {args.bundle!r}: {e}") from None
    state = "already published" if already else "published"
    digest = target.hashes[HASH_ALGORITHM]
    print(f"{state} {target.path} length {target.length} sha256 {digest}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from fleet.server.updates.repository import HASH_ALGORITHM, TOP_LEVEL_ROLES

    repo = _repository(args)
    targets = repo.targets().targets
    print("agent versions:" if targets else "agent versions: none published")
    for name in sorted(targets):
        target = targets[name]
        version = target.custom.get("version", "?")
        digest = target.hashes[HASH_ALGORITHM]
        print(f"  {version:<12} {name}  {target.length} bytes  sha256 {digest}")
    print("metadata:")
    for role in TOP_LEVEL_ROLES:
        signed = repo.open(role).signed
        print(f"  {role:<10} v{signed.version:<4} expires {_when(signed.expires)}")
    return 0


def run_root(args: argparse.Namespace) -> int:
    data = _repository(args).latest_root_bytes()
    if args.out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(args.out, data, overwrite=True)
        version = json.loads(data)["signed"]["version"]
        warn(f"fleet updates: wrote the trusted root (version {version}) to {args.out!r}")
    return 0
