"""`fleet demo-fleet`: the whole product on one machine, with a simulated district's fleet.

1. Registers the sites and N terminals of the simulator's district layout (`fleet-sim layout`)
   in the database, with random MQTT passwords kept in `<dir>/sim-credentials` (mode 0600), and
   makes an operator and an admin token.
2. Starts `fleet serve` on the embedded defaults (its own Mosquitto, SQLite, dev mode, data in
   `<dir>`), then gives the broker the terminals' users.
3. Starts `fleet-sim` with those credentials, and prints the API URL and the tokens.

So that a rollout can be shown, the first run also creates the server's TUF repository of agent
releases (`<dir>/updates`; its root key in `<dir>/dev-only-root-key`, which a real fleet keeps
offline) and publishes a demo release, the next patch version of the running agent: roll it out
from the dashboard's Rollouts page or with `fleet rollouts create`, and watch the simulated
terminals update themselves.
Ctrl-C (or SIGTERM) stops the simulator, then the server and its broker. Running it again reuses
the folder: the same terminals, new tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent.version import agent_version
from fleet.cli_common import CliError, warn

if TYPE_CHECKING:
    from fleet.server.settings import Settings

#: The simulator's site kinds -> the database's.
_KINDS = {"hall": "hall", "street_centre": "street", "community": "community"}
READY_TIMEOUT_S = 30.0
#: Where the demo keeps the repository's root key: a dev-only stand-in for offline media.
DEV_ROOT_KEY_DIR = "dev-only-root-key"
#: The demo release when the running version is not a plain X.Y.Z.
FALLBACK_RELEASE = "1.0.1"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo-fleet",
        help="run the server with a simulated fleet (the product on one machine)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="data folder (default .demo)")
    p.add_argument("--terminals", type=int, default=50)
    p.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    p.add_argument("--status-interval", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument(
        "--time-scale", type=float, default=30.0, help="speed of the paper model (default 30x)"
    )
    p.set_defaults(func=run)


async def _register(database_url: str, count: int) -> tuple[dict[str, str], str, str]:
    """Sites, terminals, an operator and an admin token in the database;
    (id -> password, operator token, admin token)."""
    from agent.sim.sites import layout
    from fleet.server.db import close_db, init_db
    from fleet.server.db.models import Site, SiteKind, Terminal
    from fleet.server.tokens import create_token

    await init_db(database_url)
    try:
        passwords: dict[str, str] = {}
        for spec in layout(count):
            site, _ = await Site.get_or_create(
                id=spec.site.id,
                defaults={"name": spec.site.name, "kind": SiteKind(_KINDS[spec.site.kind])},
            )
            tid = spec.terminal_id
            await Terminal.get_or_create(
                id=tid, defaults={"site": site, "model": "sim", "mqtt_username": tid}
            )
            passwords[tid] = secrets.token_urlsafe(18)
        token = (await create_token("demo-operator", "operator")).secret
        admin = (await create_token("demo-admin", "admin")).secret
    finally:
        await close_db()
    return passwords, token, admin


def next_patch(version: str) -> str:
    """X.Y.(Z+1) of a plain X.Y.Z version, else FALLBACK_RELEASE."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if m is None:
        return FALLBACK_RELEASE
    return f"{m[1]}.{m[2]}.{int(m[3]) + 1}"


def prepare_demo_release(data: Path, running: str) -> str:
    """Create the update repository in `data` if there is none and publish the demo release
    (next_patch of `running`, built from this agent package); returns its version.

    Runs before `fleet serve` starts, so the server is never a second writer. Idempotent: a
    release already published is left as it is.
    """
    from agent.update.tuf_client import bundle_target_name
    from fleet.server.updates.bundle import build_bundle
    from fleet.server.updates.repository import (
        UpdateRepository,
        init_repository,
        server_updates_dir,
    )

    updates = server_updates_dir(data)
    repo = UpdateRepository(updates)
    if not repo.initialised:
        repo = init_repository(updates, data / DEV_ROOT_KEY_DIR)
    version = next_patch(running)
    if bundle_target_name(version) not in repo.targets().targets:
        bundle = build_bundle(version, data / "releases")
        repo.add_target(bundle, version)
    return version


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CliError(f"fleet serve exited with status {server.returncode}")
        try:
            with opener.open(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise CliError(f"fleet serve did not become ready in {READY_TIMEOUT_S:.0f} s")


def run(args: argparse.Namespace) -> int:
    from fleet.server.broker_files import BROKER_SUBDIR, BrokerFiles
    from fleet.server.settings import Settings

    data = args.dir.absolute()
    data.mkdir(parents=True, exist_ok=True)
    # Mosquitto drops to its own user when started as root: it must reach its folder.
    os.chmod(data, 0o755)
    env = {
        **os.environ,
        "FLEET_DEV_MODE": "1",
        "FLEET_DATA_DIR": str(data),
        "FLEET_API_PORT": str(args.port),
        "FLEET_STATUS_INTERVAL_S": str(int(args.status_interval)),
    }
    for name in ("FLEET_BROKER_URL", "FLEET_DATABASE_URL", "DATABASE_URL", "FLEET_CONFIG"):
        env.pop(name, None)
    settings = Settings(dev_mode=True, data_dir=data)
    passwords, token, admin = asyncio.run(_register(settings.database_url, args.terminals))
    running = agent_version()
    try:
        release: str | None = prepare_demo_release(data, running)
    except Exception as e:  # the demo runs on without a release to roll out
        warn(f"no demo agent release to roll out: {type(e).__name__}: {e}")
        release = None
    creds = data / "sim-credentials"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{tid}:{pw}\n" for tid, pw in passwords.items())

    bin_dir = Path(sys.executable).parent
    url = f"http://127.0.0.1:{args.port}"
    log = (data / "serve.log").open("ab")
    server = subprocess.Popen(
        [str(bin_dir / "fleet"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    sim: subprocess.Popen[bytes] | None = None
    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        _wait_ready(url, server)
        files = BrokerFiles(data / BROKER_SUBDIR)
        for tid, pw in passwords.items():
            files.add_user(tid, pw)
        host, port = files.listener()
        public_key = _config_public_key(settings, data)
        sim = subprocess.Popen(
            [
                str(bin_dir / "fleet-sim"),
                "--terminals", str(args.terminals),
                "--broker", f"mqtt://{host}:{port}",
                "--password-file", str(creds),
                "--status-interval", str(args.status_interval),
                "--time-scale", str(args.time_scale),
                "--stats-interval", "60",
                "--config-public-key", str(public_key),
                "--agent-version", running,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
        _announce(url, token, admin, args.terminals, data, release)
        while not stop and server.poll() is None and sim.poll() is None:
            time.sleep(0.5)
    finally:
        for proc in (sim, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log.close()
    return 0


def _config_public_key(settings: Settings, data: Path) -> Path:
    """The public half of the config key `fleet serve` made on its first start, for the sim."""
    import rust_core

    assert settings.config_key_file is not None
    pem = rust_core.SigningKey.from_pem(settings.config_key_file.read_bytes()).public_pem()
    path = data / "fleet-config.pub"
    path.write_text(pem)
    return path


def _announce(
    url: str, token: str, admin: str, terminals: int, data: Path, release: str | None
) -> None:
    rollout = ""
    if release is not None:
        rollout = (
            f"  Rollout    agent {release} is published: roll it out from the dashboard's Rollouts "
            f"page (as admin), or FLEET_TOKEN=<admin token> fleet rollouts create --url {url} "
            f"--version {release} --site WH-HALL --override-window\n"
        )
    warn(
        f"""
The fleet is live: {terminals} simulated terminals report to the server.

  Dashboard  {url}/                 (log in with the token below)
  API        {url}/docs             (Authorize with the token below)
  Fleet      curl -H 'Authorization: Bearer {token}' {url}/api/v1/terminals
  Alerts     curl -H 'Authorization: Bearer {token}' {url}/api/v1/alerts
  Refills    curl -H 'Authorization: Bearer {token}' {url}/api/v1/refill-round
  Metrics    {url}/metrics
{rollout}  Operator token: {token}
  Admin token:    {admin}   (also changes configuration and starts rollouts)

Data and logs in {data}. Ctrl-C stops the simulator, the server and its broker.
"""
    )
