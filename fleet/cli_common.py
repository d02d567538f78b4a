"""Shared pieces of the `fleet` command line: user errors, file reading and atomic writes, keys."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import rust_core

#: Exit status for bad usage: a missing or refused file, a bad flag, claims the issuer refused.
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line on stderr (no traceback), exit status 2."""


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_text(path: str, what: str) -> str:
    """The whole file as UTF-8 text ("-" is standard input); errors name the file and its role."""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8-sig") as f:  # tolerate a BOM from Windows editors
            return f.read()
    except FileNotFoundError:
        raise CliError(f"{what} {path!r}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{what} {path!r}: is a directory") from None
    except UnicodeDecodeError as e:
        raise CliError(f"{what} {path!r}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CliError(f"{what} {path!r}: cannot read ({e.strerror})") from None


def write_atomic(path: str | Path, data: bytes, *, private: bool = False, overwrite: bool) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part.

    Temp file in the same folder, fsync, then rename (or hard-link when not overwriting, so two
    writers cannot both win). A private file is created 0600 and never has wider permissions,
    not even for an instant; others get 0666 less the umask, like an ordinary file.
    """
    target = Path(path)
    directory = target.parent
    if not overwrite and target.exists():
        raise CliError(f"{str(target)!r} already exists (use --force to replace it)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise CliError(
            f"cannot write {str(target)!r}: folder {str(directory)!r} does not exist"
        ) from None
    except OSError as e:
        raise CliError(f"cannot write {str(target)!r}: {e.strerror}") from None
    try:
        try:
            if not private:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target appeared meanwhile: no clobbering
            except FileExistsError:
                raise CliError(
                    f"{str(target)!r} already exists (use --force to replace it)"
                ) from None
            except OSError:  # a filesystem without hard links
                if target.exists():
                    raise CliError(
                        f"{str(target)!r} already exists (use --force to replace it)"
                    ) from None
                os.replace(tmp, target)
    except OSError as e:
        raise CliError(f"cannot write {str(target)!r}: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut after rename must not lose the new name)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_signing_key(path: str) -> rust_core.SigningKey:
    pem = read_text(path, "key file")
    try:
        return rust_core.SigningKey.from_pem(pem)
    except rust_core.KeyFormatError as e:
        raise CliError(f"key file {path!r}: not a usable private key: {e}") from None


def load_public_key(path: str) -> rust_core.VerifyingKey:
    """The public half of a private (PKCS#8) or public (SPKI) PEM key file."""
    pem = read_text(path, "key file")
    try:
        if "PRIVATE KEY-----" in pem:
            return rust_core.SigningKey.from_pem(pem).verifying_key()
        return rust_core.VerifyingKey.from_pem(pem)
    except rust_core.KeyFormatError as e:
        raise CliError(f"key file {path!r}: not a usable key: {e}") from None


def parse_serial(text: str) -> bytes:
    """A licence serial (cti): 16 bytes written as 32 hex digits."""
    try:
        serial = bytes.fromhex(text)
    except ValueError:
        raise CliError(f"serial {text!r}: not hex digits") from None
    if len(serial) != 16:
        raise CliError(
            f"serial {text!r}: must be 32 hex digits (16 bytes), got {len(serial)} bytes"
        )
    return serial
