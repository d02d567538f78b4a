"""Files that survive a power cut: the one atomic write and directory fsync of the agent (and of
the server pieces that import it: the update repository, the signing keys).

`write_atomic` replaces a file so that a reader, or a restart after a power cut, sees either the
old content or the whole new one: a temporary file in the same directory created with the final
mode (a key is never readable by others, not even for an instant), fsync, rename, directory fsync.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the names in `path` durable (a rename, a new entry)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, directory fsync."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp made it 0600: never wider than `mode` on the way
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
