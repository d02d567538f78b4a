"""The applied desired-state document on disk, switched atomically, kept across power cuts.

Layout under `data_dir/desired/`:

    current.envelope      the exact MQTT bytes of the applied document (re-verified at start)
    previous.envelope     the one applied before it: the last good one, the fallback
    templates/<sha256>.json   template contents (canonical JSON), named by their hash

Commit order, so that a crash (SIGKILL, power cut) at any point leaves `current.envelope` the old
document or the new one, whole, with every template it names already on disk:

    1. each new template: write `<sha>.json.tmp`, fsync, rename; fsync templates/
    2. write `current.envelope.tmp`, fsync
    3. the applied (known good) envelope -> `previous.envelope` the same way (tmp, fsync, rename)
    4. rename `current.envelope.tmp` -> `current.envelope`; fsync desired/
    5. prune templates named by neither current nor previous

Step 3 copies the bytes that were verified and applied, not whatever `current.envelope` holds,
so a corrupt current is never promoted to "last good". Leftover `*.tmp` files are removed on
load. `step` (a test hook) is called with the name of each step as it completes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import rust_core
from agent.desired.document import DocumentError, Opened, open_envelope, sha256_hex
from agent.durable import fsync_dir

log = logging.getLogger(__name__)

CURRENT = "current.envelope"
PREVIOUS = "previous.envelope"
TEMPLATES = "templates"
TMP = ".tmp"

StepHook = Callable[[str], None]


class StoreError(Exception):
    """The store could not write (disk full, read-only, permissions)."""


@dataclass(frozen=True)
class Loaded:
    """What `load()` found: the document to run on (if any), where from, and what was wrong."""

    applied: Opened | None
    raw: bytes | None
    source: str | None  # CURRENT, PREVIOUS or None
    problems: list[str] = field(default_factory=list)


class DesiredStore:
    def __init__(self, root: Path, step: StepHook | None = None) -> None:
        self.root = root
        self.templates_dir = root / TEMPLATES
        self._step = step or (lambda name: None)

    # -- reading ---------------------------------------------------------------------------

    def load(self, key: rust_core.VerifyingKey, terminal_id: str) -> Loaded:
        """The current document, re-verified; else the previous one; else nothing."""
        self._remove_leftovers()
        problems: list[str] = []
        for name in (CURRENT, PREVIOUS):
            path = self.root / name
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                if name == CURRENT and (self.root / PREVIOUS).exists():
                    problems.append(f"{name}: missing")
                continue
            except OSError as e:
                problems.append(f"{name}: cannot read: {e.strerror or e}")
                continue
            try:
                opened = open_envelope(raw, key, terminal_id)
                self._check_templates(opened)
            except DocumentError as e:
                problems.append(f"{name}: {e}")
                continue
            except Exception as e:  # a library error on garbage bytes: still just unusable
                problems.append(f"{name}: {type(e).__name__}: {e}")
                continue
            return Loaded(opened, raw, name, problems)
        return Loaded(None, None, None, problems)

    def has_template(self, sha256: str) -> bool:
        return (self.templates_dir / f"{sha256}.json").is_file()

    def template(self, sha256: str) -> bytes | None:
        """A stored template's canonical JSON bytes (for the kiosk UI), None if absent."""
        try:
            return (self.templates_dir / f"{sha256}.json").read_bytes()
        except OSError:
            return None

    def _check_templates(self, opened: Opened) -> None:
        for t in opened.document["templates"]:
            data = self.template(t["sha256"])
            if data is None:
                raise DocumentError(f"template {t['id']}", "missing on disk")
            if sha256_hex(data) != t["sha256"]:
                raise DocumentError(f"template {t['id']}", "corrupt on disk")

    # -- writing ---------------------------------------------------------------------------

    def commit(
        self,
        raw: bytes,
        opened: Opened,
        blobs: dict[str, bytes],
        previous: tuple[bytes, Opened] | None,
    ) -> None:
        """Make `raw` the current document (see the module docstring for the order).

        `blobs` maps sha256 -> canonical bytes of templates not yet on disk; `previous` is the
        envelope applied until now (verified), kept as the fallback.
        """
        try:
            self._mkdir(self.root)
            if blobs:
                self._mkdir(self.templates_dir)
                for sha, data in blobs.items():
                    _write_synced(self.templates_dir / f"{sha}.json", data)
                    self._step("template")
                fsync_dir(self.templates_dir)
                self._step("templates_synced")
            tmp = self.root / (CURRENT + TMP)
            _write(tmp, raw)
            self._step("current_tmp")
            if previous is not None:
                _write_synced(self.root / PREVIOUS, previous[0])
                self._step("previous")
            os.replace(tmp, self.root / CURRENT)
            self._step("current")
            fsync_dir(self.root)
            self._step("synced")
        except OSError as e:
            raise StoreError(f"cannot store the desired document: {e.strerror or e}") from e
        keep = {t["sha256"] for t in opened.document["templates"]}
        if previous is not None:
            keep |= {t["sha256"] for t in previous[1].document["templates"]}
        self.prune(keep)
        self._step("pruned")

    def prune(self, keep: Iterable[str]) -> None:
        """Remove templates named by neither current nor previous (best effort)."""
        wanted = {f"{sha}.json" for sha in keep}
        try:
            names = os.listdir(self.templates_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name not in wanted:
                with contextlib.suppress(OSError):
                    os.unlink(self.templates_dir / name)

    def _remove_leftovers(self) -> None:
        for d in (self.root, self.templates_dir):
            with contextlib.suppress(OSError):
                for name in os.listdir(d):
                    if name.endswith(TMP):
                        with contextlib.suppress(OSError):
                            os.unlink(d / name)

    def _mkdir(self, path: Path) -> None:
        if path.is_dir():
            return
        path.mkdir(parents=True, exist_ok=True)
        fsync_dir(path.parent)  # the new directory's own entry must survive a power cut


def _write(path: Path, data: bytes) -> None:
    """Write and fsync `path` (a temporary name; nobody reads it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: tmp, fsync, rename (directory fsync by caller)."""
    tmp = path.with_name(path.name + TMP)
    _write(tmp, data)
    os.replace(tmp, path)
