"""The agent's TUF client against a real repository served over real HTTP, attack by attack.

Each attack of the TUF specification that applies to a fleet of kiosks is staged by changing
what the server serves (a mirror or man in the middle), or by signing with an online key the
attacker stole; each test checks the exact ngclient exception behind the `UpdateRefused` and that
nothing reached the agent's bundle directory.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, Root

from agent.update.tuf_client import Limits, UpdateClient, UpdateRefused, bundle_target_name
from fleet.server.updates.repository import UpdateRepository, init_repository

pytestmark = pytest.mark.timeout(60)


class _Handler(SimpleHTTPRequestHandler):
    """Serves the repository's files, except where the attacker in the middle swapped them."""

    def __init__(self, *args: Any, overrides: dict[str, bytes], **kw: Any) -> None:
        self.overrides = overrides  # before super(): it handles the request
        super().__init__(*args, **kw)

    def do_GET(self) -> None:
        data = self.overrides.get(self.path.lstrip("/"))
        if data is None:
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Env:
    repo: UpdateRepository
    served: Path  # what the HTTP server serves: metadata/ and targets/
    overrides: dict[str, bytes]  # what the attacker serves instead, by URL path
    url: str
    trusted_root: bytes
    agent_dir: Path

    @property
    def bundles(self) -> Path:
        return self.agent_dir / "bundles"

    def client(self, **kw: Any) -> UpdateClient:
        return UpdateClient(self.agent_dir / "tuf", self.bundles, self.url, self.trusted_root, **kw)

    def bundle(self, version: str, size: int = 4096) -> bytes:
        """Publish a fake release of `version`; returns its bytes."""
        data = (f"agent {version} ".encode() * (size // 8 + 1))[:size]
        path = self.agent_dir.parent / f"build-{version}.tar.gz"
        path.write_bytes(data)
        self.repo.add_target(path, version)
        return data

    def read(self, name: str) -> bytes:
        """What the agent would get for metadata `name` now."""
        url_path = f"metadata/{name}"
        if url_path in self.overrides:
            return self.overrides[url_path]
        return (self.served / url_path).read_bytes()

    def serve(self, name: str, data: bytes) -> None:
        """Make the agent get `data` for metadata `name` (the server's files stay as they are)."""
        self.overrides[f"metadata/{name}"] = data

    def serve_target(self, version: str, data: bytes) -> None:
        (path,) = (self.served / "targets").glob(f"*.{bundle_target_name(version)}")
        self.overrides[f"targets/{path.name}"] = data

    def online_signers(self, role: str) -> list[Signer]:
        """The attacker's haul after breaking into the server: its online keys for `role`."""
        root = self.repo.root()
        signers: list[Signer] = []
        for keyid in root.roles[role].keyids:
            uri = f"file2:{self.repo.online_key_dir / f'{keyid}.pem'}"
            signers.append(CryptoSigner.from_priv_key_uri(uri, root.get_key(keyid)))
        return signers

    def no_bundles(self) -> bool:
        return not self.bundles.exists() or not any(self.bundles.iterdir())


def forge(
    source: bytes,
    signers: list[Signer],
    *,
    bump: bool = False,
    change: Callable[[Any], None] | None = None,
    **fields: Any,
) -> bytes:
    """`source` metadata with `fields` set (version + 1 if `bump`, then `change` applied),
    signed by `signers` only."""
    md: Metadata[Any] = Metadata.from_bytes(source)
    for name, value in fields.items():
        setattr(md.signed, name, value)
    if bump:
        md.signed.version += 1
    if change is not None:
        change(md.signed)
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes()


def meta_of(data: bytes) -> MetaFile:
    return MetaFile.from_data(Metadata.from_bytes(data).signed.version, data, ["sha256"])


@contextmanager
def make_env(tmp_path: Path, **init: Any) -> Iterator[Env]:
    updates = tmp_path / "server" / "updates"
    repo = init_repository(updates, tmp_path / "offline" / "root-keys", **init)
    served = updates / "repository"
    overrides: dict[str, bytes] = {}
    handler = functools.partial(_Handler, directory=str(served), overrides=overrides)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    try:
        yield Env(
            repo=repo,
            served=served,
            overrides=overrides,
            url=f"http://127.0.0.1:{httpd.server_address[1]}/",
            trusted_root=(served / "metadata" / "1.root.json").read_bytes(),
            agent_dir=agent_dir,
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with make_env(tmp_path) as env:
        yield env


def refused(
    call: Callable[[], object], cause: type[Exception], kind: str | None = None
) -> UpdateRefused:
    with pytest.raises(UpdateRefused) as info:
        call()
    assert type(info.value.__cause__) is cause, repr(info.value.__cause__)
    if kind is not None:
        assert info.value.kind == kind, info.value
    return info.value


# -- the happy path ------------------------------------------------------------------------------


def test_publish_find_download_then_next_release(env: Env) -> None:
    data_13 = env.bundle("1.3.0")
    client = env.client()
    client.refresh()
    info = client.find("1.3.0")
    assert info is not None and info.custom == {"version": "1.3.0"} and info.length == 4096
    assert client.find("1.4.0") is None
    path = client.download("1.3.0")
    assert path == env.bundles / "fleet-agent-1.3.0.tar.gz"
    assert path.read_bytes() == data_13
    assert [p.name for p in env.bundles.iterdir()] == [path.name]  # no partial file left

    data_14 = env.bundle("1.4.0", size=10_000)
    client.refresh()
    assert client.download("1.4.0").read_bytes() == data_14

    # A restarted agent keeps what it trusted and reuses the verified bundle on disk.
    again = env.client()
    assert again.download("1.3.0").read_bytes() == data_13


def test_client_follows_root_rotation_from_the_provisioned_root(env: Env) -> None:
    env.repo.rotate_online_keys("targets", "snapshot", "timestamp")
    data = env.bundle("1.3.0")
    assert env.repo.root().version == 2
    assert env.client().download("1.3.0").read_bytes() == data
    assert (env.agent_dir / "tuf" / "root_history" / "2.root.json").is_file()


# -- arbitrary installation ----------------------------------------------------------------------


def test_bundle_not_in_signed_metadata_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    # The file sits on the server, named like a real bundle, but no signed targets names it.
    env.overrides[f"targets/{'0' * 64}.{bundle_target_name('6.6.6')}"] = b"evil"
    client = env.client()
    with pytest.raises(UpdateRefused) as info:
        client.download("6.6.6")
    assert info.value.kind == "unknown_target"
    assert env.no_bundles()


def test_bundle_with_replaced_bytes_is_refused(env: Env) -> None:
    good = env.bundle("1.3.0")
    env.serve_target("1.3.0", b"X" * len(good))  # same length, other bytes
    err = refused(lambda: env.client().download("1.3.0"), tuf_errors.LengthOrHashMismatchError)
    assert err.kind == "hash_mismatch"
    assert env.no_bundles()


def test_target_relabelled_as_another_version_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    # Stolen online keys could sign 1.3.0's bytes under the name of 1.4.0; the signed custom
    # version has to agree with the name the agent asked for.
    _serve_chain(env, env.online_signers("targets"), _relabel("1.3.0", "1.4.0"))
    with pytest.raises(UpdateRefused) as info:
        env.client().download("1.4.0")
    assert info.value.kind == "version_mismatch"
    assert env.no_bundles()


def _relabel(old: str, new: str) -> Callable[[Any], None]:
    """Add target `new` with the bytes (and custom version) of `old`."""

    def change(targets: Any) -> None:
        target = targets.targets[bundle_target_name(old)]
        copy = type(target).from_dict(target.to_dict(), bundle_target_name(new))
        targets.targets[bundle_target_name(new)] = copy

    return change


def _serve_chain(env: Env, targets_signers: list[Signer], change: Callable[[Any], None]) -> None:
    """Serve a new targets version changed by `change` and signed by `targets_signers`, with a
    matching snapshot and timestamp signed by the online keys (the attacker has those)."""

    targets = forge(env.read("targets.json"), targets_signers, bump=True, change=change)
    env.serve(f"{_version_of(targets)}.targets.json", targets)
    snapshot = forge(
        env.read("snapshot.json"),
        env.online_signers("snapshot"),
        bump=True,
        meta={"targets.json": meta_of(targets)},
    )
    env.serve(f"{_version_of(snapshot)}.snapshot.json", snapshot)
    timestamp = forge(
        env.read("timestamp.json"),
        env.online_signers("timestamp"),
        bump=True,
        snapshot_meta=meta_of(snapshot),
    )
    env.serve("timestamp.json", timestamp)


def _version_of(data: bytes) -> int:
    return int(Metadata.from_bytes(data).signed.version)


# -- rollback ------------------------------------------------------------------------------------


def test_older_timestamp_than_trusted_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    old_timestamp = env.read("timestamp.json")
    env.bundle("1.4.0")
    client = env.client()
    client.refresh()  # the agent has seen the state with 1.4.0

    # The server (or a mirror) replays the validly signed, unexpired state from before 1.4.0.
    env.serve("timestamp.json", old_timestamp)
    refused(client.refresh, tuf_errors.BadVersionNumberError, "bad_version")
    # So does a restarted agent: what it trusted is on disk.
    refused(env.client().refresh, tuf_errors.BadVersionNumberError, "bad_version")
    assert env.no_bundles()


def test_timestamp_naming_an_older_snapshot_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    old_snapshot = env.read("snapshot.json")
    env.bundle("1.4.0")
    client = env.client()
    client.refresh()
    # A stolen timestamp key: a newer timestamp, but pointing at the old snapshot.
    forged = forge(
        env.read("timestamp.json"),
        env.online_signers("timestamp"),
        bump=True,
        snapshot_meta=meta_of(old_snapshot),
    )
    env.serve("timestamp.json", forged)
    refused(client.refresh, tuf_errors.BadVersionNumberError, "bad_version")
    assert env.no_bundles()


# -- indefinite freeze ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "age"),
    [
        ("timestamp", timedelta(days=2)),
        ("snapshot", timedelta(days=8)),
        ("targets", timedelta(days=31)),
    ],
)
def test_expired_metadata_is_refused(tmp_path: Path, role: str, age: timedelta) -> None:
    past = datetime.now(UTC) - age
    with make_env(tmp_path, clock=lambda: past) as env:
        env.bundle("1.3.0")
        # The roles below the expired one were re-signed just now: only `role` is stale.
        env.repo.clock = lambda: datetime.now(UTC)
        if role == "targets":
            with env.repo.edit_snapshot() as snapshot:
                snapshot.meta.update(env.repo.targets_infos)
        if role in ("targets", "snapshot"):
            with env.repo.edit_timestamp() as timestamp:
                timestamp.snapshot_meta = env.repo.snapshot_info

        err = refused(env.client().refresh, tuf_errors.ExpiredMetadataError, "expired")
        assert role in str(err)
        assert env.no_bundles()

        # The server's periodic refresh re-signs what is expiring; the agent recovers.
        assert role in env.repo.refresh_expiring()
        assert env.client().download("1.3.0").is_file()


# -- mix-and-match -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_metadata_from_another_repository_state_is_refused(env: Env, role: str) -> None:
    env.bundle("1.3.0")
    old = env.read(f"{role}.json")  # validly signed, unexpired, from state A
    env.bundle("1.4.0")
    current = Metadata.from_bytes(env.read(f"{role}.json")).signed.version
    # State B's timestamp (and snapshot) combined with state A's `role` under B's name.
    env.serve(f"{current}.{role}.json", old)
    refused(env.client().refresh, tuf_errors.LengthOrHashMismatchError, "hash_mismatch")
    assert env.no_bundles()


def test_targets_version_not_matching_snapshot_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    old_targets = env.read("targets.json")
    env.bundle("1.4.0")
    # An attacker with the snapshot and timestamp keys (but no targets key) points a new
    # snapshot at the old targets by version only, dropping the hashes that would catch it.
    current = Metadata.from_bytes(env.read("targets.json")).signed.version
    env.serve(f"{current}.targets.json", old_targets)
    snapshot = forge(
        env.read("snapshot.json"),
        env.online_signers("snapshot"),
        bump=True,
        meta={"targets.json": MetaFile(current)},
    )
    env.serve(f"{Metadata.from_bytes(snapshot).signed.version}.snapshot.json", snapshot)
    timestamp = forge(
        env.read("timestamp.json"),
        env.online_signers("timestamp"),
        bump=True,
        snapshot_meta=meta_of(snapshot),
    )
    env.serve("timestamp.json", timestamp)
    refused(env.client().refresh, tuf_errors.BadVersionNumberError, "bad_version")
    assert env.no_bundles()


# -- endless data --------------------------------------------------------------------------------


def test_oversized_timestamp_is_cut_off(env: Env) -> None:
    env.bundle("1.3.0")
    env.serve("timestamp.json", b" " * (1024 * 1024))
    client = env.client(limits=Limits(timestamp=16 * 1024))
    refused(client.refresh, tuf_errors.DownloadLengthMismatchError, "too_large")
    assert env.no_bundles()


def test_snapshot_longer_than_signed_length_is_cut_off(env: Env) -> None:
    env.bundle("1.3.0")
    version = Metadata.from_bytes(env.read("snapshot.json")).signed.version
    name = f"{version}.snapshot.json"
    env.serve(name, env.read(name) + b" " * 100_000)
    refused(env.client().refresh, tuf_errors.DownloadLengthMismatchError, "too_large")


def test_bundle_longer_than_signed_length_is_cut_off(env: Env) -> None:
    good = env.bundle("1.3.0")
    env.serve_target("1.3.0", good + b"\0" * (2 * 1024 * 1024))
    refused(lambda: env.client().download("1.3.0"), tuf_errors.DownloadLengthMismatchError)
    assert env.no_bundles()


def test_signed_bundle_over_the_agent_limit_is_not_fetched(env: Env) -> None:
    env.bundle("1.3.0", size=64 * 1024)
    client = env.client(limits=Limits(bundle=32 * 1024))
    with pytest.raises(UpdateRefused) as info:
        client.download("1.3.0")
    assert info.value.kind == "too_large"
    assert env.no_bundles()


# -- fast-forward --------------------------------------------------------------------------------


def _version(path: Path) -> int:
    return _version_of(path.read_bytes())


def test_fast_forwarded_timestamp_blocks_until_the_key_is_rotated(env: Env) -> None:
    env.bundle("1.3.0")
    client = env.client()
    client.refresh()

    # The timestamp key leaks; the attacker pushes the version far ahead, validly signed.
    forged = forge(
        env.read("timestamp.json"),
        env.online_signers("timestamp"),
        version=1000,
    )
    env.serve("timestamp.json", forged)
    client.refresh()
    assert _version(env.agent_dir / "tuf" / "timestamp.json") == 1000

    # The attacker leaves and the fleet publishes again: the real timestamp is now below what
    # the agent has trusted, so it refuses it (rollback protection, turned against us).
    env.overrides.clear()
    env.bundle("1.4.0")
    refused(client.refresh, tuf_errors.BadVersionNumberError, "bad_version")
    assert env.no_bundles()

    # Recovery (TUF spec 5.3.11): root rotates the timestamp key. The stolen key is now worth
    # nothing, and the agent drops the trusted timestamp that no longer verifies.
    env.repo.rotate_online_keys("timestamp")
    env.serve("timestamp.json", forged)
    refused(client.refresh, tuf_errors.UnsignedMetadataError, "unsigned")
    env.overrides.clear()
    client.refresh()
    assert _version(env.agent_dir / "tuf" / "timestamp.json") < 1000
    assert client.download("1.4.0").is_file()


def test_fast_forwarded_snapshot_recovers_after_rotating_online_keys(env: Env) -> None:
    env.bundle("1.3.0")
    client = env.client()
    client.refresh()

    snapshot = forge(
        env.read("snapshot.json"),
        env.online_signers("snapshot"),
        version=1000,
    )
    env.serve("1000.snapshot.json", snapshot)
    timestamp = forge(
        env.read("timestamp.json"),
        env.online_signers("timestamp"),
        snapshot_meta=meta_of(snapshot),
        version=1000,
    )
    env.serve("timestamp.json", timestamp)
    client.refresh()
    assert _version(env.agent_dir / "tuf" / "snapshot.json") == 1000

    env.overrides.clear()
    env.bundle("1.4.0")
    refused(client.refresh, tuf_errors.BadVersionNumberError, "bad_version")

    # Rotating the snapshot key alone is not enough while the fast-forwarded timestamp (which
    # names snapshot v1000) still verifies: rotate both, as after a server compromise.
    env.repo.rotate_online_keys("snapshot")
    refused(client.refresh, tuf_errors.BadVersionNumberError, "bad_version")
    env.repo.rotate_online_keys("timestamp")
    client.refresh()
    assert _version(env.agent_dir / "tuf" / "snapshot.json") < 1000
    assert client.download("1.4.0").is_file()


# -- keys below threshold, keys not in root ------------------------------------------------------


@pytest.fixture
def env2(tmp_path: Path) -> Iterator[Env]:
    """A repository whose targets need two of two keys."""
    with make_env(tmp_path, keys={"targets": 2}, thresholds={"targets": 2}) as env:
        yield env


def test_targets_signed_by_one_of_two_required_keys_is_refused(env2: Env) -> None:
    env2.bundle("1.3.0")
    assert env2.client().find("1.3.0") is not None  # both keys signed: accepted
    # One targets key leaked (with the snapshot and timestamp keys): below the threshold of 2.
    one_key = env2.online_signers("targets")[:1]
    _serve_chain(env2, one_key, _relabel("1.3.0", "6.6.6"))
    refused(env2.client().refresh, tuf_errors.UnsignedMetadataError, "unsigned")
    assert env2.no_bundles()


def test_metadata_signed_by_a_key_not_in_root_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    intruder = CryptoSigner.generate_ed25519()
    forged = forge(
        env.read("timestamp.json"),
        [intruder],
        bump=True,
    )
    env.serve("timestamp.json", forged)
    refused(env.client().refresh, tuf_errors.UnsignedMetadataError, "unsigned")
    assert env.no_bundles()


def test_root_not_signed_by_the_trusted_root_key_is_refused(env: Env) -> None:
    env.bundle("1.3.0")
    # An attacker with every online key still cannot make the agent trust a new root.
    intruder = CryptoSigner.generate_ed25519()

    def take_over(root: Root) -> None:
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        root.add_key(intruder.public_key, "root")
        root.version = 2

    env.serve("2.root.json", forge(env.read("1.root.json"), [intruder], change=take_over))
    refused(env.client().refresh, tuf_errors.UnsignedMetadataError, "unsigned")


def test_unrelated_signed_type_is_refused(env: Env) -> None:
    # A snapshot served where the timestamp belongs (a valid document of the wrong role).
    env.bundle("1.3.0")
    env.serve("timestamp.json", env.read("snapshot.json"))
    refused(env.client().refresh, tuf_errors.RepositoryError, "repository")
