"""Shared helpers of the update tests: fake agent bundles and the launcher as a real process.

A fake agent is a module `fakeagent` (so `agent.update.health` still comes from the base
installation, as for a real agent) that behaves one way:

    good    marks every health check, then runs until the update is settled
    exit    exits at once with status 3
    silent  marks `connected` only, then runs (a version that cannot read its drivers)
    hang    marks nothing and runs until stopped
    fail    reports a failed health check itself
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_AGENT = """\
import os, sys, time
from pathlib import Path

VERSION = {version!r}
BEHAVIOUR = {behaviour!r}


def state():
    try:
        return (Path(os.environ["FLEET_UPDATE_ROOT"]) / "state.json").read_text()
    except OSError:
        return ""


def main():
    root = Path(os.environ["FLEET_UPDATE_ROOT"])
    with open(root / "runs.log", "a") as f:
        f.write(f"{{VERSION}} {{BEHAVIOUR}} {{' '.join(sys.argv[1:])}}\\n")
    if BEHAVIOUR == "exit":
        sys.exit(3)
    from agent.update.health import HealthProbe

    probe = HealthProbe.from_env()
    if BEHAVIOUR == "good":
        for kind in ("connected", "drivers_ok", "status_published"):
            probe.mark(kind)
    elif BEHAVIOUR == "silent":
        probe.mark("connected")
    elif BEHAVIOUR == "fail":
        probe.fail("printer unreadable")
    # Run like an agent would, until the update is settled (or our launcher is gone).
    ppid = os.getppid()
    end = time.monotonic() + float(os.environ.get("FAKE_RUN_S", "20"))
    while time.monotonic() < end and os.getppid() == ppid:
        if BEHAVIOUR == "good" and '"switched"' not in state():
            break
        time.sleep(0.02)


main()
"""


def make_fake_dir(dest: Path, version: str, behaviour: str = "good") -> Path:
    dest.mkdir(parents=True)
    (dest / "fakeagent.py").write_text(FAKE_AGENT.format(version=version, behaviour=behaviour))
    (dest / "fleet-bundle.json").write_text(
        json.dumps({"v": 1, "version": version, "module": "fakeagent"})
    )
    return dest


def tar_dir(src: Path, dest: Path, prefix: str = "") -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            if "__pycache__" in p.parts:
                continue
            tf.add(p, arcname=prefix + p.relative_to(src).as_posix(), recursive=False)
    return dest


def make_fake_bundle(tmp: Path, version: str, behaviour: str = "good") -> tuple[Path, str]:
    """A .tar.gz fake agent bundle and its sha256."""
    src = make_fake_dir(tmp / f"src-{version}-{behaviour}", version, behaviour)
    bundle = tar_dir(src, tmp / f"fleet-agent-{version}-{behaviour}.tar.gz")
    return bundle, sha256(bundle)


def make_tar(dest: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def launcher(
    root: Path,
    *agent_args: str,
    deadline: float = 10.0,
    max_starts: int = 3,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """One start of the launcher, as systemd would do it."""
    cmd = [
        sys.executable,
        "-m",
        "agent.update.launcher",
        "--root",
        str(root),
        "--deadline",
        str(deadline),
        "--max-starts",
        str(max_starts),
        "--poll",
        "0.05",
        "--stop-timeout",
        "5",
        "--",
        *agent_args,
    ]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runs(root: Path) -> list[str]:
    try:
        return (root / "runs.log").read_text().splitlines()
    except FileNotFoundError:
        return []
