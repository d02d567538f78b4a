"""`fleet updates`: reproducible agent bundles that really install and run as their version, and
the TUF repository they are published in, read back by the agent's own client."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import agent
from agent.update.install import install
from agent.update.layout import Layout, Manifest, read_manifest
from agent.update.tuf_client import UpdateClient
from fleet.cli import main
from fleet.server.updates.bundle import build_bundle, read_bundle_version
from fleet.server.updates.repository import (
    UpdateRepository,
    metadata_dir,
    online_key_dir,
    server_updates_dir,
)

pytestmark = pytest.mark.timeout(120)

AGENT_SRC = Path(agent.__file__).parent
V = "1.4.0"


@pytest.fixture(autouse=True)
def _fixed_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fleet(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """`fleet ARGS` in this process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def fleet_process(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", *map(str, args)], capture_output=True, timeout=60
    )
    assert b"Traceback" not in proc.stderr, proc.stderr
    return proc


def agent_copy(tmp_path: Path, extra: str | None = None) -> Path:
    """A copy of the agent package, with byte-compiled leftovers and fresh file times
    (neither may reach the bundle), and optionally one more module (other contents)."""
    src = tmp_path / "src" / "agent"
    shutil.copytree(AGENT_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "__pycache__").mkdir(exist_ok=True)
    (src / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"stale")
    (src / "stray.pyc").write_bytes(b"stale")
    for p in src.rglob("*"):
        os.utime(p, (1_800_000_000, 1_800_000_000))
    if extra is not None:
        (src / "extra.py").write_text(extra)
    return src


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return build_bundle(V, tmp_path / "dist")


@pytest.fixture
def data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A server data dir with an initialised repository (root key kept apart)."""
    data = tmp_path / "data"
    status, _, err = fleet(
        capsys, "updates", "init", "--data-dir", data, "--root-key-dir", tmp_path / "offline"
    )
    assert status == 0, err
    return data


@contextmanager
def serving(directory: Path) -> Iterator[str]:
    """`directory` over HTTP on loopback; yields the base URL."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- build ---------------------------------------------------------------------------------------


def test_build_is_reproducible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for name in ("a", "b"):
        status, out, err = fleet(
            capsys, "updates", "build", "--version", V, "--out", tmp_path / name
        )
        assert status == 0, err
        outs.append(out)
    a, b = (tmp_path / d / f"fleet-agent-{V}.tar.gz" for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert outs[0].splitlines() == [str(a), f"sha256 {sha256(a)}"]
    assert outs[1].endswith(f"sha256 {sha256(a)}\n")
    # Other file times and byte-compiled leftovers in the source change nothing.
    assert build_bundle(V, tmp_path / "c", agent_copy(tmp_path)).read_bytes() == a.read_bytes()

    raw = a.read_bytes()
    assert raw[3] & 0x08 == 0 and raw[4:8] == b"\0\0\0\0"  # gzip: no file name, no time
    with tarfile.open(a) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {
        "agent",
        "agent/cli.py",
        "fleet-bundle.json",
        f"kiosk_fleet-{V}.dist-info/METADATA",
    } <= (set(names))
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644) and (m.isdir() or m.isreg())
    assert read_bundle_version(a) == V


def test_source_date_epoch_sets_the_file_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    with tarfile.open(build_bundle(V, tmp_path)) as tf:
        assert {m.mtime for m in tf.getmembers()} == {1767225600}


@pytest.mark.parametrize("version", ["../1.0.0", "1.0", "", "1.0.0.partial", "1.0.0/x"])
def test_build_refuses_a_bad_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    status, out, err = fleet(capsys, "updates", "build", "--version", version, "--out", tmp_path)
    assert status == 2 and out == ""
    assert err.startswith("fleet updates: error: not ") and "version" in err
    assert list(tmp_path.iterdir()) == []


def test_built_bundle_installs_and_runs_as_its_version(tmp_path: Path, bundle: Path) -> None:
    layout = Layout(tmp_path / "kiosk")
    vdir = install(bundle, V, sha256(bundle), layout)
    assert vdir == layout.version_dir(V)
    assert read_manifest(vdir) == Manifest(V, "agent.cli")
    # As the launcher runs it: the version directory first on the path, nothing from the cwd.
    code = (
        "import agent, agent.version; print(agent.version.agent_version()); print(agent.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code],
        env={**os.environ, "PYTHONPATH": str(vdir)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    version, module = proc.stdout.splitlines()
    assert version == V
    assert Path(module).is_relative_to(vdir)


# -- the repository ------------------------------------------------------------------------------


def test_init_publish_list(
    tmp_path: Path, data_dir: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root_keys = list((tmp_path / "offline").glob("*.pem"))
    assert len(root_keys) == 1
    assert not [p for p in data_dir.rglob("*.pem") if p.name == root_keys[0].name]

    status, out, _ = fleet(capsys, "updates", "list", "--data-dir", data_dir)
    assert status == 0 and "none published" in out

    digest = sha256(bundle)
    length = bundle.stat().st_size
    status, out, err = fleet(capsys, "updates", "publish", bundle, "--data-dir", data_dir)
    assert status == 0, err
    assert out == f"published fleet-agent-{V}.tar.gz length {length} sha256 {digest}\n"

    status, out, _ = fleet(capsys, "updates", "list", "--data-dir", data_dir)
    assert status == 0
    lines = out.splitlines()
    assert any(V in line and str(length) in line and digest in line for line in lines)
    for role, version in (("root", 1), ("targets", 2), ("snapshot", 2), ("timestamp", 2)):
        assert any(
            line.split()[:2] == [role, f"v{version}"] and "expires 20" in line for line in lines
        )

    # The same bytes again change nothing, not even a metadata version.
    timestamp = metadata_dir(server_updates_dir(data_dir)) / "timestamp.json"
    before = timestamp.read_bytes()
    status, out, _ = fleet(
        capsys, "updates", "publish", bundle, "--version", V, "--data-dir", data_dir
    )
    assert status == 0 and out.startswith(f"already published fleet-agent-{V}.tar.gz")
    assert timestamp.read_bytes() == before


def test_init_twice_is_refused(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.name for p in (tmp_path / "offline").iterdir())
    status, _, err = fleet(
        capsys, "updates", "init", "--data-dir", data_dir, "--root-key-dir", tmp_path / "k2"
    )
    assert status == 2 and "already holds a TUF repository" in err
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == before


def test_init_says_where_the_root_key_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = fleet(
        capsys, "updates", "init", "--data-dir", tmp_path / "d", "--root-key-dir", tmp_path / "k"
    )
    assert status == 0
    (key,) = (tmp_path / "k").glob("*.pem")
    assert f"root key: {key}" in out and "offline" in err


def test_publish_refuses_other_bytes_and_a_wrong_version(
    tmp_path: Path, data_dir: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(capsys, "updates", "publish", bundle, "--data-dir", data_dir)[0] == 0
    other = build_bundle(V, tmp_path / "other", agent_copy(tmp_path, extra="X = 1\n"))
    status, out, err = fleet(capsys, "updates", "publish", other, "--data-dir", data_dir)
    assert status == 2 and out == ""
    assert err.endswith(f"fleet-agent-{V}.tar.gz is already published with other contents\n")

    newer = build_bundle("1.5.0", tmp_path / "newer")
    status, _, err = fleet(
        capsys, "updates", "publish", newer, "--version", "1.6.0", "--data-dir", data_dir
    )
    assert status == 2 and "is version 1.5.0, not 1.6.0" in err
    repo = UpdateRepository(server_updates_dir(data_dir))
    assert list(repo.targets().targets) == [f"fleet-agent-{V}.tar.gz"]


def test_publish_errors_are_one_line(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    status, _, err = fleet(capsys, "updates", "publish", bundle, "--data-dir", empty)
    assert status == 2 and "no TUF repository" in err and "fleet updates init" in err
    assert not (server_updates_dir(empty) / "repository").exists()

    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    for path, message in ((tmp_path / "missing.tar.gz", "no such file"), (junk, "not a readable")):
        status, _, err = fleet(capsys, "updates", "publish", path, "--data-dir", empty)
        assert status == 2 and message in err and err.count("\n") == 1

    for cmd in ("list", "root"):
        status, _, err = fleet(capsys, "updates", cmd, "--data-dir", empty)
        assert status == 2 and "no TUF repository" in err


def test_publish_refuses_an_archive_without_the_agent(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "fleet-bundle.json").write_text('{"v": 1, "version": "1.4.0", "module": "agent.cli"}')
    archive = tmp_path / "no-agent.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "fleet-bundle.json", arcname="fleet-bundle.json")
    status, _, err = fleet(capsys, "updates", "publish", archive, "--data-dir", data_dir)
    assert status == 2 and "entry module agent.cli is not in the archive" in err


def test_settings_locate_the_data_dir(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(f'data_dir = "{data_dir}"\ndev_mode = true\n')
    status, out, err = fleet(capsys, "updates", "list", "--config", config)
    assert status == 0, err
    assert "timestamp" in out


def test_root_is_the_served_trust_anchor_for_the_agent(
    tmp_path: Path, data_dir: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(capsys, "updates", "publish", bundle, "--data-dir", data_dir)[0] == 0
    updates = server_updates_dir(data_dir)
    # After a key rotation, the latest root is what new terminals are provisioned with.
    rotating = UpdateRepository(updates, root_key_dir=tmp_path / "offline")
    rotating.rotate_online_keys("timestamp")
    served = metadata_dir(updates) / "2.root.json"
    assert served.is_file() and not (metadata_dir(updates) / "3.root.json").exists()

    proc = fleet_process("updates", "root", "--data-dir", data_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == served.read_bytes()
    out = tmp_path / "root.json"
    status, _, err = fleet(capsys, "updates", "root", "--data-dir", data_dir, "--out", out)
    assert status == 0, err
    assert out.read_bytes() == served.read_bytes()

    with serving(updates / "repository") as url:
        client = UpdateClient(tmp_path / "tuf", tmp_path / "bundles", url, proc.stdout)
        client.refresh()
        info = client.find(V)
        assert info is not None and info.length == bundle.stat().st_size
        assert client.find("1.5.0") is None
        assert client.download(V).read_bytes() == bundle.read_bytes()


def test_rotate_keys_replaces_every_online_key_and_old_terminals_follow(
    tmp_path: Path, data_dir: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a compromised server: all three online keys rotated from the command line; a
    terminal provisioned with the first root follows to the new one and still gets releases."""
    assert fleet(capsys, "updates", "publish", bundle, "--data-dir", data_dir)[0] == 0
    updates = server_updates_dir(data_dir)
    first_root = (metadata_dir(updates) / "1.root.json").read_bytes()
    with serving(updates / "repository") as url:
        client = UpdateClient(tmp_path / "tuf", tmp_path / "bundles", url, first_root)
        client.refresh()
        assert client.find(V) is not None  # it trusts the old keys' metadata now
    old_keys = sorted(p.name for p in online_key_dir(updates).iterdir())
    status, out, err = fleet(
        capsys, "updates", "rotate-keys", "--data-dir", data_dir, "--root-key-dir",
        tmp_path / "offline",
    )  # fmt: skip
    assert status == 0, err
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == [
        "targets",
        "snapshot",
        "timestamp",
    ]
    assert "root version 2" in out
    new_keys = sorted(p.name for p in online_key_dir(updates).iterdir())
    assert len(new_keys) == 3 and not set(new_keys) & set(old_keys)
    with serving(updates / "repository") as url:
        client = UpdateClient(tmp_path / "tuf", tmp_path / "bundles", url, first_root)
        client.refresh()
        assert client.download(V).read_bytes() == bundle.read_bytes()
    # Without the root key nothing changes.
    status, _, err = fleet(
        capsys, "updates", "rotate-keys", "--data-dir", data_dir, "--root-key-dir",
        tmp_path / "empty", "--role", "timestamp",
    )  # fmt: skip
    assert status == 2 and err.count("\n") == 1, err
    assert sorted(p.name for p in online_key_dir(updates).iterdir()) == new_keys
    assert not (metadata_dir(updates) / "3.root.json").exists()


def test_errors_reach_the_user_without_a_traceback(tmp_path: Path) -> None:
    proc = fleet_process("updates", "build", "--version", "1.0", "--out", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode() == "fleet updates: error: not an agent version: '1.0'\n"
    proc = fleet_process("updates", "publish", tmp_path / "nope.tar.gz", "--data-dir", tmp_path)
    assert proc.returncode == 2 and b"no such file" in proc.stderr


def test_publish_waits_for_another_process_writing_the_repository(
    data_dir: Path, bundle: Path
) -> None:
    """`fleet serve` re-signing while an operator publishes: one writer at a time (flock)."""
    updates = server_updates_dir(data_dir)
    fd = os.open(updates / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the server's refresh does for a moment
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet", "updates", "publish", str(bundle), "--data-dir",
             str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(2.0)
        assert proc.poll() is None  # waiting for the lock
        assert UpdateRepository(updates).targets().targets == {}
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"published fleet-agent-1.4.0.tar.gz" in out
