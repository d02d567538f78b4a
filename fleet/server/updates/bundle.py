"""Agent release bundles: the `.tar.gz` that `fleet updates publish` signs and terminals install.

A bundle holds the `agent/` package, `kiosk_fleet-V.dist-info/METADATA` (so `agent.version`
reports V once the launcher puts the version directory first on the path) and
`fleet-bundle.json` (agent.update.layout). It is built reproducibly: the same sources and version
give the same bytes, so anyone can rebuild a release and compare its sha256 with the signed one.
Entries are sorted, owners and times fixed (`SOURCE_DATE_EPOCH`, else 0), modes normalised, and
the gzip header carries no time and no file name.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import agent
from agent.durable import write_atomic
from agent.update.layout import DEFAULT_MODULE, MANIFEST, check_version
from agent.update.tuf_client import bundle_target_name

DISTRIBUTION_DIR = "kiosk_fleet-{version}.dist-info"
#: Anything larger is not a bundle we built (the manifest is a few dozen bytes).
MAX_MANIFEST_BYTES = 4096
SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def _mtime() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    try:
        mtime = int(value)
    except ValueError:
        raise ValueError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds") from None
    if mtime < 0:
        raise ValueError(f"SOURCE_DATE_EPOCH={value!r} is negative")
    return mtime


def _package_files(source: Path) -> dict[str, bytes]:
    """The package's files by archive path under `agent/`, without byte-compiled leftovers."""
    files: dict[str, bytes] = {}
    for dirpath, dirs, names in os.walk(source):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        rel = PurePosixPath("agent", Path(dirpath).relative_to(source).as_posix())
        for name in names:
            if not name.endswith(SKIPPED_SUFFIXES):
                files[str(rel / name)] = Path(dirpath, name).read_bytes()
    return files


def _archive(files: dict[str, bytes], mtime: int) -> bytes:
    """A gzipped tar of `files` (and their parent directories) that depends only on `files`."""
    dirs = {str(parent) for path in files for parent in PurePosixPath(path).parents}
    dirs.discard(".")
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        for name in sorted(dirs | files.keys()):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if name in dirs:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                info.mode, info.size = 0o644, len(files[name])
                tf.addfile(info, io.BytesIO(files[name]))
    return raw.getvalue()


def build_bundle(version: str, out: Path, source: Path | None = None) -> Path:
    """Write the bundle of agent `version` as `out/fleet-agent-V.tar.gz`; returns its path.

    `source` is the `agent` package directory (default: the one this process imports).
    Raises ValueError for a version terminals could not install or a source without the agent.
    """
    check_version(version)
    name = bundle_target_name(version)  # stricter: the release numbering the client accepts
    source = Path(source) if source is not None else Path(agent.__file__).parent
    if not (source / "cli.py").is_file():
        raise ValueError(f"{source} is not the agent package (no cli.py)")
    files = _package_files(source)
    info_dir = DISTRIBUTION_DIR.format(version=version)
    files[f"{info_dir}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: kiosk-fleet\nVersion: {version}\n".encode()
    )
    manifest = {"v": 1, "version": version, "module": DEFAULT_MODULE}
    files[MANIFEST] = json.dumps(manifest, sort_keys=True).encode() + b"\n"
    data = _archive(files, _mtime())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / name, data)
    return out / name


def read_bundle_version(bundle: Path) -> str:
    """The version `fleet-bundle.json` in the archive names; ValueError if it is no bundle.

    Also checks the entry module the manifest names is in the archive, so an archive that could
    never run is refused before it is signed.
    """
    try:
        with tarfile.open(bundle, "r:*") as tf:
            members = {PurePosixPath(m.name).as_posix(): m for m in tf.getmembers()}
            member = members.get(MANIFEST)
            if member is None or not member.isreg() or member.size > MAX_MANIFEST_BYTES:
                raise ValueError(f"{bundle}: no {MANIFEST} in the archive")
            f = tf.extractfile(member)
            assert f is not None  # a regular file
            text = f.read()
    except (tarfile.TarError, EOFError, zlib.error) as e:
        # tarfile's "r:*" error lists every compression it tried, over several lines.
        reason = type(e).__name__
        raise ValueError(f"{bundle}: not a readable bundle archive ({reason})") from None
    except OSError as e:
        raise ValueError(f"{bundle}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{bundle}: {MANIFEST} is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("version"), str):
        raise ValueError(f'{bundle}: {MANIFEST} is not {{"v": 1, "version": "..."}}')
    module = doc.get("module", DEFAULT_MODULE)
    entry = "/".join(str(module).split("."))
    if f"{entry}.py" not in members and f"{entry}/__main__.py" not in members:
        raise ValueError(f"{bundle}: the entry module {module} is not in the archive")
    version: str = doc["version"]
    return version
