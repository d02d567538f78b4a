"""`fleet licences export`: the trust and revocation lists as files, from the settings and the
database, the same documents the API serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import rust_core
from fleet.server.db.models import Licence
from fleet.server.licences.keys import load_issuer
from fleet.server.settings import Settings


def _fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


async def test_export_writes_both_lists(db: str, tmp_path: Path) -> None:
    env = {
        "FLEET_DATABASE_URL": db,
        "FLEET_DATA_DIR": str(tmp_path),
        "FLEET_DEV_MODE": "1",
        "FLEET_ISSUER": "CN-510107",
    }
    now = datetime(2026, 11, 27, tzinfo=UTC)
    for i, gone in enumerate((True, False, True)):
        await Licence.create(
            serial=f"{i:032x}",
            claims={},
            text="LIC1:x",
            issued_at=now,
            revoked_at=now if gone else None,
        )
    trust, revoked = tmp_path / "trust.json", tmp_path / "revoked.json"
    out = _fleet(env, "licences", "export", "--trust", str(trust), "--revoked", str(revoked))
    assert out.returncode == 0, out.stderr
    issuer = load_issuer(Settings(dev_mode=True, data_dir=tmp_path))  # the key export made
    assert trust.read_text() == issuer.trust_list_json()
    assert json.loads(revoked.read_text()) == {"v": 1, "revoked": [f"{0:032x}", f"{2:032x}"]}
    store = rust_core.TrustStore.from_json(trust.read_text(), revoked.read_text())
    assert store.kids == [issuer.key.kid] and store.revoked_count == 2


def test_export_needs_a_file_and_a_key(tmp_path: Path) -> None:
    env = {"FLEET_DATA_DIR": str(tmp_path), "FLEET_DEV_MODE": "1"}
    out = _fleet(env, "licences", "export")
    assert out.returncode == 2 and "--trust FILE" in out.stderr
    env = {
        "FLEET_DATA_DIR": str(tmp_path),
        "FLEET_BROKER_ADMIN_PASSWORD": "p" * 20,
        "FLEET_SESSION_SECRET": "s" * 20,
    }
    out = _fleet(env, "licences", "export", "--trust", str(tmp_path / "t.json"))
    assert out.returncode == 2 and "no issuing key" in out.stderr
