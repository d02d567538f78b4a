"""API tokens: shown once, stored as a hash, verified, revoked; and `fleet tokens`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.server.db.models import ApiToken, Role
from fleet.server.tokens import authenticate, create_token, revoke_token


async def test_create_stores_only_the_hash(db: str) -> None:
    new = await create_token("ops-desk-1", "operator")
    assert new.secret.startswith("fleet_") and len(new.secret) >= 40
    row = await ApiToken.get(id=new.record.id)
    assert row.role is Role.OPERATOR and row.name == "ops-desk-1"
    assert row.token_sha256 == hashlib.sha256(new.secret.encode()).hexdigest()
    assert new.secret not in str(await ApiToken.all().values())
    other = await create_token("ops-desk-2", Role.OPERATOR)
    assert other.secret != new.secret


async def test_verify_right_wrong_missing_and_revoked(db: str) -> None:
    new = await create_token("field-auditor", "auditor")
    got = await authenticate(new.secret)
    assert got is not None and got.id == new.record.id and got.role is Role.AUDITOR
    assert got.last_used_at is not None
    for wrong in (None, "", new.secret[:-1], new.secret + "x", "fleet_" + "A" * 43, "x" * 10_000):
        assert await authenticate(wrong) is None
    assert await revoke_token(new.record.id)
    assert await authenticate(new.secret) is None
    assert not await revoke_token(new.record.id)  # already revoked
    assert not await revoke_token(999_999)


async def test_bad_role_and_empty_name_are_refused(db: str) -> None:
    with pytest.raises(ValueError):
        await create_token("x", "root")
    with pytest.raises(ValueError):
        await create_token("  ", "admin")
    assert await ApiToken.all().count() == 0


def test_cli_create_list_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLEET_DEV_MODE", "1")
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("FLEET_DATABASE_URL", raising=False)
    monkeypatch.delenv("FLEET_CONFIG", raising=False)
    assert main(["tokens", "create", "--role", "admin", "--name", "lead"]) == 0
    out, err = capsys.readouterr()
    secret = out.strip()
    assert secret.startswith("fleet_") and "shown only this once" in err
    assert (tmp_path / "data" / "fleet.sqlite3").exists()
    assert main(["tokens", "list"]) == 0
    out, _ = capsys.readouterr()
    assert "admin\tactive\tlead" in out and secret not in out
    assert main(["tokens", "revoke", "1"]) == 0
    assert main(["tokens", "revoke", "1"]) == 2
    assert main(["tokens", "create", "--role", "admin", "--name", " "]) == 2
    with pytest.raises(SystemExit):
        main(["tokens", "create", "--role", "root", "--name", "x"])
