"""The A/B layout of installed agent versions on disk, and its crash-safe pointer switches.

    <root>/versions/<version>/   one directory per installed version, never modified once installed
    <root>/versions/<v>.partial/ an install in progress (removed on recovery, never run)
    <root>/current   -> versions/<v>   what the launcher runs
    <root>/previous  -> versions/<v>   the rollback target: the last committed one before current
    <root>/committed -> versions/<v>   the last version that passed its health check: equal to
                                       `current` except while an update is in flight, so even
                                       with an unreadable state.json the launcher knows where to
                                       go back
    <root>/state.json                  the update state machine (agent.update.state)
    <root>/health.json                 the health marks of a switched version (agent.update.health)

A pointer switches atomically: a temporary symlink, a directory fsync, `os.replace` over the
pointer, a directory fsync. A bundle may carry `fleet-bundle.json` (`{"v": 1, "version": "1.3.0",
"module": "agent.cli"}`); the launcher runs `python -m <module>` with the version directory first on
the path, so a bundle holds the agent's own packages and the platform (Python, paho-mqtt,
rust_core) stays where it was installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.durable import fsync_dir

VERSIONS = "versions"
CURRENT = "current"
PREVIOUS = "previous"
COMMITTED = "committed"
POINTERS = (CURRENT, PREVIOUS, COMMITTED)
PARTIAL = ".partial"
MANIFEST = "fleet-bundle.json"
DEFAULT_MODULE = "agent.cli"

#: A version is a directory name: no separators, no `..`, nothing hidden.
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version) or ".." in version or version.endswith(PARTIAL):
        raise ValueError(f"not a usable agent version: {version!r}")
    return version


@dataclass(frozen=True)
class Manifest:
    version: str | None
    module: str


class BundleError(Exception):
    """A version directory is not a runnable agent bundle."""


def read_manifest(vdir: Path) -> Manifest:
    """The bundle's manifest (defaults when there is none); checks the entry module exists."""
    path = vdir / MANIFEST
    version: str | None = None
    module = DEFAULT_MODULE
    if path.is_file() and not path.is_symlink():
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, OSError) as e:
            raise BundleError(f"{MANIFEST}: {e}") from e
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise BundleError(f'{MANIFEST}: not a JSON object with "v": 1')
        v, m = doc.get("version"), doc.get("module", DEFAULT_MODULE)
        if v is not None and not isinstance(v, str):
            raise BundleError(f"{MANIFEST}: version must be a string")
        if not isinstance(m, str) or not MODULE_RE.fullmatch(m):
            raise BundleError(f"{MANIFEST}: module must be a dotted module name")
        version, module = v, m
    rel = Path(*module.split("."))
    if not ((vdir / rel).with_suffix(".py").is_file() or (vdir / rel / "__main__.py").is_file()):
        raise BundleError(f"the bundle has no entry module {module}")
    return Manifest(version, module)


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / VERSIONS

    def ensure(self) -> None:
        for d in (self.root, self.versions):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                fsync_dir(d.parent)

    def version_dir(self, version: str) -> Path:
        return self.versions / check_version(version)

    def partial_dir(self, version: str) -> Path:
        return self.versions / (check_version(version) + PARTIAL)

    def resolve(self, pointer: str) -> str | None:
        """The version a pointer names (None if missing or not of the form versions/<v>)."""
        try:
            target = os.readlink(self.root / pointer)
        except OSError:
            return None
        parts = Path(target).parts
        if len(parts) != 2 or parts[0] != VERSIONS:
            return None
        try:
            return check_version(parts[1])
        except ValueError:
            return None

    def is_complete(self, version: str | None) -> bool:
        """Installed whole (renamed from .partial) and runnable."""
        if version is None:
            return False
        try:
            vdir = self.version_dir(version)
        except ValueError:
            return False
        if vdir.is_symlink() or not vdir.is_dir():
            return False
        try:
            read_manifest(vdir)
        except BundleError:
            return False
        return True

    def set_pointer(self, pointer: str, version: str) -> None:
        """Point `pointer` at versions/<version>, atomically and durably."""
        assert pointer in POINTERS
        link = self.root / pointer
        if self.resolve(pointer) == version:
            return
        tmp = self.root / f".{pointer}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"{VERSIONS}/{check_version(version)}", tmp)
        fsync_dir(self.root)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def installed(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if not p.name.endswith(PARTIAL))

    def prune(self, keep: set[str]) -> list[str]:
        """Remove partial installs and every version not in `keep` (the pointers' targets)."""
        removed: list[str] = []
        if not self.versions.is_dir():
            return removed
        for p in sorted(self.versions.iterdir()):
            if p.name in keep:
                continue
            remove_tree(p)
            removed.append(p.name)
        if removed:
            fsync_dir(self.versions)
        return removed

    def referenced(self) -> set[str]:
        return {v for v in (self.resolve(p) for p in POINTERS) if v is not None}


def remove_tree(path: Path) -> None:
    """Remove a file, a symlink or a tree, whatever its modes (installed files are read-only)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    for d, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(d, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)
