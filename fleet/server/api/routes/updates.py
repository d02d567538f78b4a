"""The TUF repository of agent releases, as terminals fetch it (tuf.ngclient's URL scheme).

Public by design, like every TUF repository: metadata and bundles carry no secret, and what
protects a terminal is the signatures it checks against the root it was provisioned with, not
who may download. A token would add nothing an attacker in the middle could not replay, and a
kiosk locked out by an expired token could no longer be repaired in the field.

    GET /api/v1/updates/metadata/{N.}root.json, timestamp.json, {N.}snapshot.json, {N.}targets.json
    GET /api/v1/updates/targets/<sha256>.<target name>

Versioned metadata and hash-named bundles never change (consistent snapshots) and may be cached
for good; `timestamp.json` and the unversioned names must be fetched fresh.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse

from fleet.server.api.deps import Ctx
from fleet.server.updates.repository import metadata_dir, server_updates_dir, targets_dir

router = APIRouter(prefix="/updates", tags=["updates"])

METADATA_NAME = re.compile(r"(?:([1-9][0-9]{0,9})\.)?(root|timestamp|snapshot|targets)\.json")
TARGET_NAME = re.compile(r"[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
IMMUTABLE = "public, max-age=31536000, immutable"
FRESH = "no-cache"


def updates_dir(ctx: Ctx) -> Path:
    """The repository's directory (tests override this dependency)."""
    return server_updates_dir(ctx.settings.data_dir)


UpdatesDir = Annotated[Path, Depends(updates_dir)]


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "no such update file")


@router.get("/metadata/{name}", response_class=FileResponse)
async def metadata(name: str, base: UpdatesDir) -> FileResponse:
    """One TUF metadata file (ngclient gets 404 for the root version after the newest)."""
    match = METADATA_NAME.fullmatch(name)
    if match is None:
        raise _not_found()
    path = metadata_dir(base) / name
    if not path.is_file():
        raise _not_found()
    versioned = match.group(1) is not None
    return FileResponse(
        path,
        media_type="application/json",
        headers={"Cache-Control": IMMUTABLE if versioned else FRESH},
    )


@router.get("/targets/{name}", response_class=FileResponse)
async def target(name: str, base: UpdatesDir) -> FileResponse:
    """One agent bundle, by `<sha256>.<name>`: the terminal checks length and hash itself."""
    if TARGET_NAME.fullmatch(name) is None:
        raise _not_found()
    path = targets_dir(base) / name
    if not path.is_file():
        raise _not_found()
    return FileResponse(
        path, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE}
    )
