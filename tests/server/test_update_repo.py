"""The fleet's TUF repository: keys apart, versions, expiry refresh, rotation, and the routes."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from agent.update.tuf_client import UpdateClient
from fleet.server.api.context import AppContext
from fleet.server.api.routes import updates as updates_routes
from fleet.server.updates.freshness import keep_fresh, run_refresh
from fleet.server.updates.repository import (
    RepositoryStateError,
    UpdateRepository,
    init_repository,
)
from tests.server.api_support import served

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "updates", tmp_path / "usb-stick" / "root-keys"


@pytest.fixture
def repo(dirs: tuple[Path, Path], clock: Clock) -> UpdateRepository:
    updates, root_keys = dirs
    return init_repository(updates, root_keys, clock=clock)


def bundle(tmp_path: Path, version: str, size: int = 2048) -> Path:
    path = tmp_path / f"build-{version}.tar.gz"
    path.write_bytes((version.encode() + b"-") * (size // 6 + 1))
    return path


def versions(repo: UpdateRepository) -> dict[str, int]:
    return {
        "root": repo.root().version,
        "targets": repo.targets().version,
        "snapshot": repo.snapshot().version,
        "timestamp": repo.timestamp().version,
    }


def test_init_keeps_the_root_key_apart(repo: UpdateRepository, dirs: tuple[Path, Path]) -> None:
    updates, root_keys = dirs
    root = repo.root()
    assert root.consistent_snapshot
    (root_keyid,) = root.roles["root"].keyids
    assert [p.name for p in root_keys.iterdir()] == [f"{root_keyid}.pem"]
    # Nothing under the server's directory can sign root; online keys are private files.
    assert not list(updates.rglob(f"{root_keyid}.pem"))
    online = {p.stem for p in repo.online_key_dir.iterdir()}
    assert online == {k for r in ("targets", "snapshot", "timestamp") for k in root.roles[r].keyids}
    for path in [*repo.online_key_dir.iterdir(), *root_keys.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((updates / "repository").rglob("*.pem"))  # the served tree holds no keys

    names = {p.name for p in repo.metadata_dir.iterdir()}
    assert {"1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"} <= names
    assert versions(repo) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}
    life = repo.timestamp().expires - repo.clock()
    assert timedelta(hours=23) < life <= timedelta(days=1)

    with pytest.raises(RepositoryStateError):
        init_repository(updates, root_keys)


def test_add_target_publishes_a_consistent_snapshot(repo: UpdateRepository, tmp_path: Path) -> None:
    target = repo.add_target(bundle(tmp_path, "1.3.0"), "1.3.0")
    assert target.path == "fleet-agent-1.3.0.tar.gz"
    assert target.custom == {"version": "1.3.0"}
    stored = repo.targets_dir / f"{target.hashes['sha256']}.fleet-agent-1.3.0.tar.gz"
    assert stored.read_bytes() == bundle(tmp_path, "1.3.0").read_bytes()
    assert versions(repo) == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 2}

    # Every version is its own file, and each role names the exact bytes of the one below.
    targets_bytes = (repo.metadata_dir / "2.targets.json").read_bytes()
    repo.snapshot().meta["targets.json"].verify_length_and_hashes(targets_bytes)
    snapshot_bytes = (repo.metadata_dir / "2.snapshot.json").read_bytes()
    repo.timestamp().snapshot_meta.verify_length_and_hashes(snapshot_bytes)
    assert (repo.metadata_dir / "1.targets.json").is_file()  # older versions stay for clients

    # A published version is immutable.
    assert repo.add_target(bundle(tmp_path, "1.3.0"), "1.3.0") == target
    assert versions(repo)["targets"] == 2
    other = bundle(tmp_path, "1.3.0", size=4096)
    with pytest.raises(RepositoryStateError):
        repo.add_target(other, "1.3.0")
    with pytest.raises(ValueError):
        repo.add_target(other, "../../etc/passwd")


def test_the_running_server_works_without_the_root_key(
    repo: UpdateRepository, dirs: tuple[Path, Path], tmp_path: Path, clock: Clock
) -> None:
    server = UpdateRepository(dirs[0], clock=clock)  # no root key directory
    server.add_target(bundle(tmp_path, "1.3.0"), "1.3.0")
    clock.now += timedelta(days=1)
    assert server.refresh_expiring() == ["timestamp"]
    with pytest.raises(RepositoryStateError, match="root key"):
        server.rotate_online_keys("timestamp")


def test_refresh_expiring_resigns_before_half_life(repo: UpdateRepository, clock: Clock) -> None:
    assert repo.refresh_expiring() == []
    clock.now += timedelta(hours=13)
    assert repo.refresh_expiring() == ["timestamp"]
    assert repo.refresh_expiring() == []
    clock.now += timedelta(days=4)
    assert repo.refresh_expiring() == ["snapshot", "timestamp"]
    clock.now += timedelta(days=16)
    assert repo.refresh_expiring() == ["targets", "snapshot", "timestamp"]
    assert repo.timestamp().expires > clock.now + timedelta(hours=23)


def test_rotating_an_online_key_signs_a_new_root(repo: UpdateRepository) -> None:
    (old,) = repo.root().roles["timestamp"].keyids
    new = repo.rotate_online_keys("timestamp")
    root = repo.root()
    assert root.version == 2 and root.roles["timestamp"].keyids == new["timestamp"]
    assert old not in root.keys
    assert not (repo.online_key_dir / f"{old}.pem").exists()
    # Root v2 is signed by the (unchanged) root key that v1 trusts, and by itself.
    v1: Metadata[Root] = Metadata.from_bytes((repo.metadata_dir / "1.root.json").read_bytes())
    v2 = Metadata.from_bytes((repo.metadata_dir / "2.root.json").read_bytes())
    v1.signed.verify_delegate("root", v2.signed_bytes, v2.signatures)
    ts = Metadata.from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    root.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    with pytest.raises(RepositoryStateError):
        repo.rotate_online_keys("root")


def test_never_publishes_below_threshold(
    dirs: tuple[Path, Path], tmp_path: Path, clock: Clock
) -> None:
    updates, root_keys = dirs
    repo = init_repository(
        updates, root_keys, keys={"targets": 2}, thresholds={"targets": 2}, clock=clock
    )
    assert repo.root().roles["targets"].threshold == 2
    # The second targets key lives with the release manager, not on the server.
    second = repo.root().roles["targets"].keyids[1]
    (repo.online_key_dir / f"{second}.pem").rename(tmp_path / "release-manager.pem")
    server = UpdateRepository(updates, clock=clock)
    with pytest.raises(UnsignedMetadataError):
        server.add_target(bundle(tmp_path, "1.3.0"), "1.3.0")
    assert versions(server) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}


async def test_keep_fresh_resigns_in_the_background(repo: UpdateRepository, clock: Clock) -> None:
    clock.now += timedelta(hours=20)
    task = asyncio.create_task(keep_fresh(repo, interval_s=0.05))
    try:
        for _ in range(100):
            if repo.timestamp().version > 1:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert repo.timestamp().version == 2


async def test_the_lifespan_hook_refreshes_the_servers_repository(tmp_path: Path) -> None:
    then = datetime.now(UTC) - timedelta(hours=20)
    repo = init_repository(tmp_path / "updates", tmp_path / "root-keys", clock=lambda: then)
    ctx = cast(AppContext, SimpleNamespace(settings=SimpleNamespace(data_dir=tmp_path)))
    async with run_refresh(ctx):
        for _ in range(100):
            if repo.timestamp().version > 1:
                break
            await asyncio.sleep(0.02)
    assert repo.timestamp().version == 2


# -- the routes ----------------------------------------------------------------------------------


@pytest.fixture
def app(repo: UpdateRepository) -> Iterator[FastAPI]:
    app = FastAPI()
    app.include_router(updates_routes.router, prefix="/api/v1")
    app.dependency_overrides[updates_routes.updates_dir] = lambda: repo.updates_dir
    yield app


async def test_an_agent_updates_through_the_api(
    app: FastAPI, repo: UpdateRepository, tmp_path: Path
) -> None:
    data = bundle(tmp_path, "1.3.0").read_bytes()
    repo.add_target(bundle(tmp_path, "1.3.0"), "1.3.0")
    repo.rotate_online_keys("timestamp")  # the agent walks from root v1 to v2 over HTTP
    trusted_root = (repo.metadata_dir / "1.root.json").read_bytes()
    async with served(app) as url:
        client = UpdateClient(
            tmp_path / "agent" / "tuf",
            tmp_path / "agent" / "bundles",
            f"{url}/api/v1/updates",
            trusted_root,
        )
        path = await asyncio.to_thread(client.download, "1.3.0")
    assert path.read_bytes() == data


async def test_routes_serve_only_repository_files(
    app: FastAPI, repo: UpdateRepository, tmp_path: Path
) -> None:
    target = repo.add_target(bundle(tmp_path, "1.3.0"), "1.3.0")
    base = "/api/v1/updates"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as http:
        r = await http.get(f"{base}/metadata/timestamp.json")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        assert Metadata.from_bytes(r.content).signed.type == "timestamp"
        r = await http.get(f"{base}/metadata/2.snapshot.json")
        assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
        assert (await http.get(f"{base}/metadata/1.root.json")).status_code == 200
        # The root after the newest is 404: that is how ngclient knows it has the latest.
        assert (await http.get(f"{base}/metadata/2.root.json")).status_code == 404
        name = f"{target.hashes['sha256']}.{target.path}"
        r = await http.get(f"{base}/targets/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert len(r.content) == target.length
        for bad in (
            "metadata/..%2F..%2Fonline-keys",
            "metadata/evil.json",
            "metadata/0.root.json",
            "targets/fleet-agent-1.3.0.tar.gz",
            f"targets/{'a' * 64}.fleet-agent-1.3.0.tar.gz",
            "targets/..%2Fmetadata%2Ftimestamp.json",
        ):
            assert (await http.get(f"{base}/{bad}")).status_code == 404, bad
