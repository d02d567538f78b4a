"""Per-terminal MQTT credentials for the simulator, and the Mosquitto password file to match.

Every simulated terminal logs in as its own id (the broker's ACL lets user X write only
`fleet/v1/t/X/...`), with its own password. Passwords come either from a template (`{id}` is
replaced by the terminal id: predictable, fine for a demo or a load test on loopback) or are
random and kept in a credentials file (`id:password` per line, mode 0600) that the simulator reads.

The password file is written in Mosquitto 2's own format (`$7$`: PBKDF2-HMAC-SHA512, 101
iterations, 12-byte salt, base64), the same lines `mosquitto_passwd` writes, because calling
`mosquitto_passwd -b` once per user takes minutes for thousands of terminals.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Mosquitto 2.0's defaults (src/password_mosq.c: PW_DEFAULT_ITERATIONS, SALT_LEN).
PBKDF2_ITERATIONS = 101
SALT_LEN = 12


def mosquitto_hash(
    password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """The `$7$…` hash Mosquitto 2 stores for a password."""
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def from_template(template: str, terminal_ids: Iterable[str]) -> dict[str, str]:
    if "{id}" not in template:
        raise ValueError("a password template must contain {id}, or every terminal shares one")
    return {tid: template.replace("{id}", tid) for tid in terminal_ids}


def random_passwords(terminal_ids: Iterable[str]) -> dict[str, str]:
    return {tid: secrets.token_urlsafe(12) for tid in terminal_ids}


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def write_passwd(path: Path, users: Mapping[str, str], append: bool = False) -> None:
    """A Mosquitto password file; 0644, because the broker reads it after dropping to its user.

    It holds salted hashes only, never a password.
    """
    lines = "".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in users.items())
    if append and path.exists():
        lines = path.read_text(encoding="utf-8") + lines
    _write(path, lines, 0o644)


def write_credentials(path: Path, users: Mapping[str, str]) -> None:
    """The simulator's plaintext `id:password` file, readable by its owner only."""
    _write(path, "".join(f"{u}:{pw}\n" for u, pw in users.items()), 0o600)


def read_credentials(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise ValueError(f"{path}:{n}: expected id:password")
        out[user] = password
    return out
