"""Unpack a verified bundle into `versions/<v>/`: all of it, safely, or nothing.

A bundle is a `.tar.gz` (or plain tar) archive or a directory whose root holds the agent's packages
(and optionally `fleet-bundle.json`, see agent.update.layout). Order:

    1. the bundle's size (capped) and sha256 (of the archive file; of `tree_sha256` for a
       directory) must match what the signed metadata said
    2. unpack into `versions/<v>.partial/`: only regular files and directories; absolute paths,
       `..`, links, devices and duplicate names are refused; the unpacked bytes and the number of
       entries are capped as they are read (a tar bomb stops at the cap, not at the disk's end)
    3. the manifest (if any) must name this version, and the entry module must exist
    4. byte-compile, make the files read-only, fsync every file and directory
    5. rename `.partial` -> `versions/<v>/`, fsync `versions/`

Any failure removes the partial directory and raises one `InstallError` whose `kind` is a stable
keyword for the `update_failed` report. A version directory that already exists is kept if its
content is the same (`tree_sha256`) and refused otherwise: an installed version is never changed.
"""

from __future__ import annotations

import compileall
import errno
import hashlib
import hmac
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from agent.durable import fsync_dir
from agent.update.layout import BundleError, Layout, read_manifest, remove_tree

CHUNK = 1 << 16
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PYCACHE = "__pycache__"

Step = Callable[[str], None]


@dataclass(frozen=True)
class Limits:
    max_bundle_bytes: int = 64 << 20  # the archive (or directory) as downloaded
    max_unpacked_bytes: int = 256 << 20
    max_entries: int = 20_000
    max_path_chars: int = 1024


class InstallError(Exception):
    """The bundle was refused or could not be installed; nothing was left behind."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind  # bad_hash too_large unsafe_path unsupported_entry not_a_bundle
        self.reason = reason  # version_exists disk_full io_error


@dataclass(frozen=True)
class _Entry:
    rel: PurePosixPath
    is_dir: bool
    executable: bool
    size: int
    open: Callable[[], IO[bytes]] | None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: Path) -> str:
    """A digest of a directory's content: paths, kinds, exec bits and bytes; `__pycache__` aside."""
    h = hashlib.sha256()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != PYCACHE)
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(dirs):
            h.update(f"d {rel_dir}/{name}\0".encode())
        for name in sorted(files):
            p = Path(dirpath, name)
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                h.update(f"? {rel_dir}/{name}\0".encode())
                continue
            x = "x" if st.st_mode & stat.S_IXUSR else "-"
            h.update(f"f{x} {rel_dir}/{name} {file_sha256(p)}\0".encode())
    return h.hexdigest()


def bundle_sha256(bundle: Path) -> str:
    return tree_sha256(bundle) if bundle.is_dir() else file_sha256(bundle)


def install(
    bundle: Path,
    version: str,
    sha256: str,
    layout: Layout,
    limits: Limits | None = None,
    step: Step | None = None,
) -> Path:
    """Install `bundle` as `version` (see the module docstring); returns the version directory."""
    limits = limits or Limits()
    step = step or (lambda name: None)
    layout.ensure()
    final = layout.version_dir(version)
    partial = layout.partial_dir(version)
    _verify(bundle, sha256, limits)
    remove_tree(partial)
    try:
        _unpack(bundle, partial, limits, step)
        manifest = read_manifest(partial)
        if manifest.version is not None and manifest.version != version:
            raise InstallError(
                "not_a_bundle", f"the bundle says it is {manifest.version}, not {version}"
            )
        if final.exists() or final.is_symlink():
            if final.is_dir() and tree_sha256(final) == tree_sha256(partial):
                remove_tree(partial)
                return final  # the same version installed again: nothing to change
            raise InstallError("version_exists", f"{version} is installed with other content")
        compileall.compile_dir(str(partial), quiet=2, workers=1)
        _seal(partial)
        step("unpacked")
        os.rename(partial, final)
        fsync_dir(layout.versions)
    except BundleError as e:
        remove_tree(partial)
        raise InstallError("not_a_bundle", str(e)) from e
    except InstallError:
        remove_tree(partial)
        raise
    except OSError as e:
        remove_tree(partial)
        if e.errno in DISK_FULL:
            raise InstallError("disk_full", f"no space left to install {version}: {e}") from e
        raise InstallError("io_error", f"installing {version}: {e}") from e
    return final


def _verify(bundle: Path, sha256: str, limits: Limits) -> None:
    try:
        size = _bundle_size(bundle)
    except OSError as e:
        raise InstallError("io_error", f"cannot read the bundle: {e}") from e
    if size > limits.max_bundle_bytes:
        raise InstallError(
            "too_large", f"the bundle is {size} bytes, over the {limits.max_bundle_bytes} limit"
        )
    actual = bundle_sha256(bundle)
    expected = sha256.lower().removeprefix("sha256:")
    if not hmac.compare_digest(actual, expected):
        raise InstallError("bad_hash", f"sha256 {actual} is not the expected {expected}")


def _bundle_size(bundle: Path) -> int:
    if not bundle.is_dir():
        return bundle.stat().st_size
    return sum(Path(d, f).lstat().st_size for d, _dirs, files in os.walk(bundle) for f in files)


def _unpack(bundle: Path, dest: Path, limits: Limits, step: Step) -> None:
    dest.mkdir(mode=0o755)
    total = count = 0
    seen: set[PurePosixPath] = set()
    entries = _dir_entries(bundle) if bundle.is_dir() else _tar_entries(bundle)
    for entry in entries:
        count += 1
        if count > limits.max_entries:
            raise InstallError("too_large", f"more than {limits.max_entries} entries")
        if len(str(entry.rel)) > limits.max_path_chars:
            raise InstallError("unsafe_path", f"a path over {limits.max_path_chars} characters")
        if entry.rel in seen:
            raise InstallError("unsafe_path", f"{entry.rel} appears twice")
        seen.add(entry.rel)
        target = dest.joinpath(*entry.rel.parts)
        if entry.is_dir:
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        total += entry.size
        if total > limits.max_unpacked_bytes:
            raise InstallError(
                "too_large", f"unpacks to more than {limits.max_unpacked_bytes} bytes"
            )
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        assert entry.open is not None
        with entry.open() as src:
            written = _copy(src, target, entry.executable)
        if written != entry.size:
            raise InstallError("io_error", f"{entry.rel}: {written} bytes, {entry.size} expected")
        if count == 2:
            step("unpacking")  # test hook: some files written, the rest not


def _copy(src: IO[bytes], target: Path, executable: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(target, flags, 0o755 if executable else 0o644)
    written = 0
    try:
        while chunk := src.read(CHUNK):
            _write_all(fd, chunk)
            written += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _safe_rel(name: str) -> PurePosixPath | None:
    """The entry's relative path; None for the archive root itself; InstallError if unsafe."""
    if "\0" in name or "\\" in name:
        raise InstallError("unsafe_path", f"{name!r}: a NUL or backslash in a path")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise InstallError("unsafe_path", f"{name!r}: an absolute path")
    parts = [part for part in p.parts if part != "."]
    if ".." in parts:
        raise InstallError("unsafe_path", f"{name!r}: a path leaving the bundle")
    return PurePosixPath(*parts) if parts else None


def _tar_entries(bundle: Path) -> Iterator[_Entry]:
    try:
        tf = tarfile.open(bundle, "r:*")  # noqa: SIM115 - closed below, members read lazily
    except (tarfile.TarError, EOFError) as e:
        raise InstallError("not_a_bundle", f"not a tar archive: {e}") from e
    with tf:
        try:
            for m in tf:
                rel = _safe_rel(m.name)
                if m.issym() or m.islnk():
                    raise InstallError("unsafe_path", f"{m.name!r}: links are refused")
                if not (m.isreg() or m.isdir()) or m.issparse():
                    raise InstallError("unsupported_entry", f"{m.name!r}: not a file or directory")
                if rel is None:
                    continue
                yield _Entry(
                    rel,
                    m.isdir(),
                    bool(m.mode & 0o100),
                    m.size,
                    None if m.isdir() else _member_opener(tf, m),
                )
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise InstallError("not_a_bundle", f"a damaged archive: {e}") from e


def _member_opener(tf: tarfile.TarFile, m: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_member() -> IO[bytes]:
        f = tf.extractfile(m)
        assert f is not None  # a regular file
        return f

    return open_member


def _dir_entries(bundle: Path) -> Iterator[_Entry]:
    for dirpath, dirs, files in os.walk(bundle):
        dirs.sort()
        base = Path(dirpath)
        for name in sorted(dirs) + sorted(files):
            p = base / name
            rel = PurePosixPath(p.relative_to(bundle).as_posix())
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise InstallError("unsafe_path", f"{rel}: links are refused")
            if stat.S_ISDIR(st.st_mode):
                yield _Entry(rel, True, False, 0, None)
            elif stat.S_ISREG(st.st_mode):
                yield _Entry(
                    rel,
                    False,
                    bool(st.st_mode & stat.S_IXUSR),
                    st.st_size,
                    _opener(p),
                )
            else:
                raise InstallError("unsupported_entry", f"{rel}: not a file or directory")


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")


def _seal(root: Path) -> None:
    """Files read-only, everything fsynced (directories bottom-up)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(dirpath, name)
            mode = p.lstat().st_mode
            os.chmod(p, 0o555 if mode & stat.S_IXUSR else 0o444)
            if Path(dirpath).name == PYCACHE:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))
