"""Verified agent bundles from the fleet's TUF repository (python-tuf's `ngclient`).

The terminal trusts one thing it was provisioned with: the fleet's root metadata (`root.json`, a
file next to `agent.toml`). From it, `tuf.ngclient.Updater` walks the TUF client workflow: newer
roots (each signed by the previous one and by itself), then timestamp, snapshot and targets, each
checked for threshold signatures, expiry, version rollback and the version/length/hashes the
role above it signed. A bundle is downloaded only if the signed targets metadata names it, and is
written to `targets_dir` only after its length and hashes matched.

What the repository may send is bounded (`LIMITS`): a server (or someone in the middle) that
streams without end is cut off at the limit instead of filling the disk or memory.

Every refusal, whatever ngclient raised, becomes one `UpdateRefused` whose `kind` is a stable
keyword (for `update_*` events and metrics) and whose `reason` says which attack the check guards
against; the original exception is chained as `__cause__`. A local `OSError` (disk full,
permissions) is not a refusal and propagates as it is.

Naming: the bundle of agent version V is the target `fleet-agent-V.tar.gz`, and its signed custom
metadata says `{"version": "V"}`; `find` checks both, so a target cannot be passed off as another
version by renaming it.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig, Urllib3Fetcher

from agent.durable import fsync_dir

#: Agent versions as the release process writes them: 1.3.0, 1.4.0rc1, 2.0.0-beta.2.
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:[-.+]?[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*)?$")
METADATA_PREFIX = "metadata/"
TARGETS_PREFIX = "targets/"
PARTIAL = ".part"


def bundle_target_name(version: str) -> str:
    """The TUF target path of the agent bundle of `version` (shared with the server)."""
    if not VERSION_RE.fullmatch(version):
        raise ValueError(f"not an agent version: {version!r}")
    return f"fleet-agent-{version}.tar.gz"


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what the repository may send (bytes), checked while downloading.

    Metadata of a single-role fleet repository is a few KiB: the limits leave room for years of
    releases and a few key rotations. A bundle's own length comes from signed metadata; `bundle`
    caps even a signed length, so a compromised targets key cannot fill the kiosk's disk.
    """

    root: int = 64 * 1024
    timestamp: int = 16 * 1024
    snapshot: int = 256 * 1024
    targets: int = 2 * 1024 * 1024
    bundle: int = 512 * 1024 * 1024
    #: Root versions walked in one refresh. Each refresh starts from the provisioned root and
    #: walks the cached chain, so this bounds the fleet's root versions over the agent's life.
    root_rotations: int = 256


LIMITS = Limits()


class UpdateRefused(Exception):
    """The update was refused; `kind` is a stable keyword, `reason` a sentence for people."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


#: (exception type, kind, what it means), most specific first: the first match wins.
_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (
        tuf_errors.UnsignedMetadataError,
        "unsigned",
        "metadata is not signed by a threshold of the keys root trusts "
        "(a foreign key, or a compromised key below threshold)",
    ),
    (
        tuf_errors.ExpiredMetadataError,
        "expired",
        "metadata has expired (freeze attack: the server keeps serving stale metadata)",
    ),
    (
        tuf_errors.BadVersionNumberError,
        "bad_version",
        "metadata version is older than one already trusted, or differs from the version "
        "the role above signed (rollback or mix-and-match attack)",
    ),
    (
        tuf_errors.LengthOrHashMismatchError,
        "hash_mismatch",
        "length or hash differs from the signed metadata "
        "(tampered bundle, or metadata mixed from another repository state)",
    ),
    (
        tuf_errors.DownloadLengthMismatchError,
        "too_large",
        "the server sent more than the limit or the signed length (endless data attack)",
    ),
    (
        tuf_errors.SlowRetrievalError,
        "slow_retrieval",
        "the server sent too slowly (slow retrieval attack, or a bad network)",
    ),
    (tuf_errors.DownloadHTTPError, "http_error", "the update server answered with an error"),
    (tuf_errors.DownloadError, "download_failed", "the download failed"),
    (tuf_errors.RepositoryError, "repository", "the repository metadata is not acceptable"),
)


def refusal(exc: Exception) -> UpdateRefused:
    """The `UpdateRefused` for an ngclient exception (kept as `__cause__` by the caller)."""
    for exc_type, kind, meaning in _REFUSALS:
        if isinstance(exc, exc_type):
            return UpdateRefused(kind, f"{meaning}: {exc}")
    return UpdateRefused("repository", f"unexpected update error: {exc!r}")


class UpdateClient:
    """Finds and downloads agent bundles through TUF.

    `base_url` is the server's update root, e.g. `https://fleet.example.org/api/v1/updates/`:
    metadata is fetched from `metadata/` under it and bundles from `targets/`.
    `trusted_root_bytes` is the provisioned root (the trust anchor); `metadata_dir` keeps the
    metadata trusted so far (what rollback protection compares against) across restarts.
    """

    def __init__(
        self,
        metadata_dir: Path,
        targets_dir: Path,
        base_url: str,
        trusted_root_bytes: bytes,
        *,
        limits: Limits = LIMITS,
        socket_timeout_s: int = 30,
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.targets_dir = Path(targets_dir)
        base = base_url if base_url.endswith("/") else base_url + "/"
        self.metadata_url = base + METADATA_PREFIX
        self.targets_url = base + TARGETS_PREFIX
        self.limits = limits
        self._root = trusted_root_bytes
        self._socket_timeout_s = socket_timeout_s
        self._updater: Updater | None = None

    @classmethod
    def from_root_file(
        cls, metadata_dir: Path, targets_dir: Path, base_url: str, root_file: Path
    ) -> UpdateClient:
        """A client trusting the root provisioned with the agent (e.g. next to agent.toml)."""
        return cls(metadata_dir, targets_dir, base_url, Path(root_file).read_bytes())

    def _config(self) -> UpdaterConfig:
        lim = self.limits
        return UpdaterConfig(
            max_root_rotations=lim.root_rotations,
            max_delegations=1,  # the fleet repository delegates nothing
            root_max_length=lim.root,
            timestamp_max_length=lim.timestamp,
            snapshot_max_length=lim.snapshot,
            targets_max_length=lim.targets,
        )

    def refresh(self) -> None:
        """Fetch and verify the current metadata (root, timestamp, snapshot, targets).

        An `Updater` refreshes once in its lifetime, so each call starts a new one from the
        provisioned root; the metadata trusted so far is read back from `metadata_dir`.
        """
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self._updater = None
        try:
            updater = Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.metadata_url,
                target_dir=str(self.targets_dir),
                target_base_url=self.targets_url,
                fetcher=Urllib3Fetcher(
                    socket_timeout=self._socket_timeout_s, app_user_agent="fleet-agent"
                ),
                config=self._config(),
                bootstrap=self._root,
            )
            updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise refusal(exc) from exc
        self._updater = updater

    def _refreshed(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def find(self, version: str) -> TargetFile | None:
        """The signed target of agent `version`, or None when the repository has none."""
        name = bundle_target_name(version)
        updater = self._refreshed()
        try:
            info = updater.get_targetinfo(name)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise refusal(exc) from exc
        if info is None:
            return None
        signed_version = info.custom.get("version")
        if signed_version != version:
            raise UpdateRefused(
                "version_mismatch",
                f"target {name} is signed as version {signed_version!r}, not {version!r}",
            )
        return info

    def download(self, version: str) -> Path:
        """The verified bundle of `version` in `targets_dir`, downloaded unless already there.

        Nothing is written to `targets_dir` unless the bytes matched the signed length and
        hashes: ngclient verifies in a temporary file first, then we copy, fsync and rename.
        """
        info = self.find(version)
        if info is None:
            raise UpdateRefused(
                "unknown_target",
                f"no signed target for agent {version} "
                "(arbitrary installation: only bundles in signed metadata are installed)",
            )
        if info.length > self.limits.bundle:
            raise UpdateRefused(
                "too_large",
                f"signed bundle length {info.length} exceeds the limit {self.limits.bundle} "
                "(endless data attack)",
            )
        updater = self._refreshed()
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        final = self.targets_dir / info.path
        cached = updater.find_cached_target(info, str(final))
        if cached is not None:
            return Path(cached)
        partial = self.targets_dir / f".{info.path}{PARTIAL}"
        try:
            updater.download_target(info, str(partial))
            with partial.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(partial, final)
            fsync_dir(self.targets_dir)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise refusal(exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return final
