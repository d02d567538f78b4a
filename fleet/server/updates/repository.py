"""The fleet's TUF repository of agent releases, on disk (python-tuf's Metadata API).

Layout (`updates_dir` is `data_dir/updates` for the server):

    updates_dir/repository/metadata/   what is served: 1.root.json 2.root.json ... root.json,
                                       N.targets.json targets.json, N.snapshot.json snapshot.json,
                                       timestamp.json
    updates_dir/repository/targets/    bundles named `<sha256>.<target name>` (consistent snapshots)
    updates_dir/online-keys/<keyid>.pem  targets, snapshot and timestamp keys (PKCS#8, mode 0600):
                                       the running server signs with these
    root_key_dir/<keyid>.pem           the root key(s): kept apart (offline media, another host);
                                       only `init_repository` and `rotate_online_keys` need them

Consistent snapshots: every snapshot and targets version is its own immutable file, and a bundle is
named by its hash, so a terminal that read timestamp v7 fetches exactly the snapshot and targets v7
named, even while a release is being published; only `timestamp.json` changes in place, and it is
written last. Every write is atomic (temporary file, fsync, rename).

Keys are Ed25519. Before anything is written, the new metadata is checked against root: metadata
below its role's threshold is never published. Online roles expire soon (timestamp in a day) and
`refresh_expiring` re-signs each one before half its lifetime is gone: the server runs it
periodically (`keep_fresh`), so a terminal that sees an old timestamp knows it is being frozen.

One writer at a time: operations hold a process-wide lock (the API's publish and the refresh
loop share one process) and an flock on `updates_dir/.lock` (the `fleet updates` command line
publishing or rotating keys while `fleet serve` re-signs).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from agent.durable import fsync_dir, write_atomic
from agent.update.tuf_client import bundle_target_name

ROOT: Final = Root.type
TARGETS: Final = Targets.type
SNAPSHOT: Final = Snapshot.type
TIMESTAMP: Final = Timestamp.type
ONLINE_ROLES: Final = (TARGETS, SNAPSHOT, TIMESTAMP)
TOP_LEVEL_ROLES: Final = (ROOT, *ONLINE_ROLES)

#: How long each role's metadata stays valid. Root is signed offline, rarely; timestamp proves
#: freshness and is re-signed by `refresh_expiring` well before a day is up.
DEFAULT_EXPIRY: Final[Mapping[str, timedelta]] = {
    ROOT: timedelta(days=365),
    TARGETS: timedelta(days=30),
    SNAPSHOT: timedelta(days=7),
    TIMESTAMP: timedelta(days=1),
}
HASH_ALGORITHM: Final = "sha256"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RepositoryStateError(Exception):
    """The repository cannot do this: not initialised, a key missing, a version reused."""


def repository_dir(updates_dir: Path) -> Path:
    """The served part of the repository (metadata/ and targets/)."""
    return Path(updates_dir) / "repository"


def metadata_dir(updates_dir: Path) -> Path:
    return repository_dir(updates_dir) / "metadata"


def targets_dir(updates_dir: Path) -> Path:
    return repository_dir(updates_dir) / "targets"


def online_key_dir(updates_dir: Path) -> Path:
    return Path(updates_dir) / "online-keys"


def server_updates_dir(data_dir: Path) -> Path:
    """Where `fleet serve` keeps the repository: `data_dir/updates`."""
    return Path(data_dir) / "updates"


class UpdateRepository(Repository):
    """The repository in `updates_dir`; `root_key_dir` only for operations that sign root."""

    def __init__(
        self,
        updates_dir: Path,
        *,
        root_key_dir: Path | None = None,
        clock: Clock = utc_now,
        expiry: Mapping[str, timedelta] = DEFAULT_EXPIRY,
    ) -> None:
        self.updates_dir = Path(updates_dir)
        self.metadata_dir = metadata_dir(self.updates_dir)
        self.targets_dir = targets_dir(self.updates_dir)
        self.online_key_dir = online_key_dir(self.updates_dir)
        self.root_key_dir = Path(root_key_dir) if root_key_dir is not None else None
        self.clock = clock
        self.expiry = dict(expiry)
        self._signers: dict[str, Signer] = {}

    # -- storage (tuf.repository.Repository) ---------------------------------------------------

    @property
    def initialised(self) -> bool:
        return (self.metadata_dir / "1.root.json").is_file()

    def latest_root_bytes(self) -> bytes:
        """The newest `N.root.json` exactly as served: what a new terminal is provisioned with."""
        self._require_initialised()
        versions = [
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob("*.root.json")
            if p.name.split(".", 1)[0].isdigit()
        ]
        return (self.metadata_dir / f"{max(versions)}.root.json").read_bytes()

    def open(self, role: str) -> Metadata[Any]:
        """The current metadata of `role`, or a new version 0 (which `close` makes version 1)."""
        path = self.metadata_dir / f"{role}.json"
        if path.is_file():
            return Metadata.from_bytes(path.read_bytes())
        signed: Signed
        if role == ROOT:
            signed = Root(version=1, consistent_snapshot=True)
        elif role == TARGETS:
            signed = Targets(version=1)
        elif role == SNAPSHOT:
            signed = Snapshot(version=1, meta={})
        elif role == TIMESTAMP:
            signed = Timestamp(version=1)
        else:
            raise RepositoryStateError(f"no such role: {role}")
        signed.version = 0
        return Metadata(signed)

    def close(self, role: str, md: Metadata[Any]) -> None:
        """Bump the version and expiry, sign with every key we hold for the role, publish."""
        md.signed.version += 1
        md.signed.expires = (self.clock() + self.expiry[role]).replace(microsecond=0)
        md.signatures.clear()
        root = md.signed if isinstance(md.signed, Root) else self.root()
        for signer in self._role_signers(role, root):
            md.sign(signer, append=True)
        # Raises UnsignedMetadataError: never publish what a terminal would refuse.
        root.verify_delegate(role, md.signed_bytes, md.signatures)
        data = md.to_bytes(JSONSerializer(compact=False))
        if role != TIMESTAMP:
            _write_atomic(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        _write_atomic(self.metadata_dir / f"{role}.json", data)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {f"{TARGETS}.json": self._meta_file(TARGETS)}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._meta_file(SNAPSHOT)

    def _meta_file(self, role: str) -> MetaFile:
        """Version, length and hash of the current file: a terminal checks all three."""
        data = (self.metadata_dir / f"{role}.json").read_bytes()
        version = Metadata.from_bytes(data).signed.version
        digest = hashlib.sha256(data).hexdigest()
        return MetaFile(version=version, length=len(data), hashes={HASH_ALGORITHM: digest})

    # -- keys ----------------------------------------------------------------------------------

    def _role_signers(self, role: str, root: Root) -> list[Signer]:
        key_dir = self.root_key_dir if role == ROOT else self.online_key_dir
        if key_dir is None:
            raise RepositoryStateError("signing root needs the root key directory")
        signers = []
        for keyid in root.roles[role].keyids:
            signer = self._signers.get(keyid)
            if signer is None:
                path = key_dir / f"{keyid}.pem"
                if not path.is_file():
                    continue  # another holder's key (threshold signing): verify_delegate decides
                public = root.get_key(keyid)
                if not isinstance(public, SSlibKey):
                    raise RepositoryStateError(f"key {keyid} is not a local key")
                signer = CryptoSigner(load_pem_private_key(path.read_bytes(), None), public)
                self._signers[keyid] = signer
            signers.append(signer)
        return signers

    def _new_key(self, key_dir: Path) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        keyid = signer.public_key.keyid
        _write_atomic(key_dir / f"{keyid}.pem", signer.private_bytes, mode=0o600)
        self._signers[keyid] = signer
        return signer

    # -- operations ----------------------------------------------------------------------------

    def _publish(self) -> None:
        """New snapshot naming the current targets, then the new timestamp naming it."""
        with self.edit_snapshot() as snapshot:
            snapshot.meta.update(self.targets_infos)
        with self.edit_timestamp() as timestamp:
            timestamp.snapshot_meta = self.snapshot_info

    def add_target(self, bundle: Path, version: str) -> TargetFile:
        """Publish `bundle` as the agent release `version` (target `fleet-agent-V.tar.gz`).

        A published version is immutable: the same bytes again is a no-op, other bytes refused.
        """
        name = bundle_target_name(version)
        with _writing(self.updates_dir):
            self._require_initialised()
            target = TargetFile.from_file(name, str(bundle), [HASH_ALGORITHM])
            target.unrecognized_fields["custom"] = {"version": version}
            existing = self.targets().targets.get(name)
            if existing is not None:
                if existing.hashes == target.hashes and existing.length == target.length:
                    return existing
                raise RepositoryStateError(f"{name} is already published with other contents")
            digest = target.hashes[HASH_ALGORITHM]
            stored = self.targets_dir / f"{digest}.{name}"
            self.targets_dir.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_path(stored)
            try:
                shutil.copyfile(bundle, tmp)
                _fsync_replace(tmp, stored)
            finally:
                tmp.unlink(missing_ok=True)
            with self.edit_targets() as targets:
                targets.targets[name] = target
            self._publish()
            return target

    def refresh_expiring(self) -> list[str]:
        """Re-sign each online role with less than half its lifetime left; returns the roles.

        A new targets version needs a new snapshot, which needs a new timestamp.
        """
        with _writing(self.updates_dir):
            self._require_initialised()
            now = self.clock()

            def expiring(signed: Signed, role: str) -> bool:
                return signed.expires - now < self.expiry[role] / 2

            done: list[str] = []
            if expiring(self.targets(), TARGETS):
                with self.edit_targets():
                    pass
                done.append(TARGETS)
            if done or expiring(self.snapshot(), SNAPSHOT):
                with self.edit_snapshot() as snapshot:
                    snapshot.meta.update(self.targets_infos)
                done.append(SNAPSHOT)
            if done or expiring(self.timestamp(), TIMESTAMP):
                with self.edit_timestamp() as timestamp:
                    timestamp.snapshot_meta = self.snapshot_info
                done.append(TIMESTAMP)
            return done

    def rotate_online_keys(self, *roles: str) -> dict[str, list[str]]:
        """Replace every key of the online `roles` with new ones; returns the new key ids.

        One new root version (signed with the root key) names the new keys and revokes the old;
        then each rotated role and those below it are re-signed with the new keys and the old key
        files are deleted. This is how the fleet recovers from a leaked online key, including a
        fast-forward attack: a terminal drops trusted metadata that no longer verifies under the
        new root, so versions an attacker pushed up stop blocking the real ones. After the
        server itself was compromised, rotate all three (a fast-forwarded snapshot is only
        forgotten once the timestamp key changes too).
        """
        unknown = set(roles) - set(ONLINE_ROLES)
        if not roles or unknown:
            raise RepositoryStateError(f"not online roles: {sorted(unknown) or 'none given'}")
        with _writing(self.updates_dir):
            self._require_initialised()
            if self.root_key_dir is None:
                raise RepositoryStateError("rotating keys needs the root key directory")
            current = self.root()
            have = len(self._role_signers(ROOT, current))
            need = current.roles[ROOT].threshold
            if have < need:
                raise RepositoryStateError(
                    f"{self.root_key_dir} holds {have} of the {need} root keys a new root needs"
                )
            old = {role: list(current.roles[role].keyids) for role in roles}
            new = {role: [self._new_key(self.online_key_dir) for _ in old[role]] for role in roles}
            try:
                with self.edit_root() as root:
                    for role in roles:
                        for keyid in old[role]:
                            root.revoke_key(keyid, role)
                        for signer in new[role]:
                            root.add_key(signer.public_key, role)
            except BaseException:
                for signer in (s for signers in new.values() for s in signers):
                    self._signers.pop(signer.public_key.keyid, None)
                    (self.online_key_dir / f"{signer.public_key.keyid}.pem").unlink(missing_ok=True)
                raise
            if TARGETS in roles:
                with self.edit_targets():
                    pass
            if TARGETS in roles or SNAPSHOT in roles:
                with self.edit_snapshot() as snapshot:
                    snapshot.meta.update(self.targets_infos)
            with self.edit_timestamp() as timestamp:
                timestamp.snapshot_meta = self.snapshot_info
            still_used = {k for r in ONLINE_ROLES for k in self.root().roles[r].keyids}
            for keyid in {k for keyids in old.values() for k in keyids} - still_used:
                self._signers.pop(keyid, None)
                (self.online_key_dir / f"{keyid}.pem").unlink(missing_ok=True)
            return {role: [s.public_key.keyid for s in new[role]] for role in roles}

    def _require_initialised(self) -> None:
        if not self.initialised:
            raise RepositoryStateError(f"no TUF repository in {self.updates_dir}")


def init_repository(
    updates_dir: Path,
    root_key_dir: Path,
    *,
    keys: Mapping[str, int] | None = None,
    thresholds: Mapping[str, int] | None = None,
    clock: Clock = utc_now,
    expiry: Mapping[str, timedelta] = DEFAULT_EXPIRY,
) -> UpdateRepository:
    """Create keys and the first version of every role (an empty targets).

    `keys` says how many keys each role gets (default one each); a role's threshold defaults to
    all its keys. Root keys go to `root_key_dir`, the others to the online key directory.
    """
    repo = UpdateRepository(updates_dir, root_key_dir=root_key_dir, clock=clock, expiry=expiry)
    if repo.initialised:
        raise RepositoryStateError(f"{updates_dir} already holds a TUF repository")
    counts = {role: 1 for role in TOP_LEVEL_ROLES} | dict(keys or {})
    with _writing(repo.updates_dir):
        with repo.edit_root() as root:
            for role in TOP_LEVEL_ROLES:
                key_dir = root_key_dir if role == ROOT else repo.online_key_dir
                for _ in range(counts[role]):
                    root.add_key(repo._new_key(Path(key_dir)).public_key, role)
                root.roles[role].threshold = (thresholds or {}).get(role, counts[role])
        with repo.edit_targets():
            pass
        repo._publish()
    return repo


#: One writer per process (see the module docstring), and how deep this thread holds it.
_LOCK = threading.RLock()
_DEPTH = threading.local()


@contextlib.contextmanager
def _writing(updates_dir: Path) -> Iterator[None]:
    """The process lock, and the directory's flock on the outermost entry (flock is not
    reentrant across file descriptors)."""
    with _LOCK:
        depth = getattr(_DEPTH, "n", 0)
        _DEPTH.n = depth + 1
        try:
            if depth:
                yield
                return
            updates_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(updates_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
        finally:
            _DEPTH.n = depth


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _fsync_replace(tmp: Path, path: Path) -> None:
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode == 0o600 else 0o755)
    write_atomic(path, data, mode=mode)
