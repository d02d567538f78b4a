"""`reported` and `cmd/result` through the ingest pipeline: drift, dead letters, command results."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fleet.server.db.models import Command, CommandStatus, DeadLetter, TerminalReported
from fleet.server.desired import commands
from fleet.server.desired.drift import drift_seconds, drift_state
from fleet.server.ingest.pipeline import Pipeline
from fleet.server.settings import Settings
from tests.server.desired_support import NOW, FakePublisher, seed, service
from tests.server.test_pipeline import msg


def _reported(**kw: Any) -> bytes:
    doc = {"v": 1, "ts": "2026-11-25T06:00:05Z", "result": "ok", "error": None}
    return json.dumps({**doc, **kw}).encode()


async def _pipeline(db: str) -> Pipeline:
    p = Pipeline(Settings(dev_mode=True, database_url=db), clock=lambda: NOW.timestamp() + 10)
    await p.restore()
    return p


async def test_reported_applied_clears_drift(db: str) -> None:
    await seed({"S1": ["T1"]})
    (out,) = await service().recompute(["T1"])
    before = await drift_state("T1", NOW + timedelta(seconds=30))
    assert before.drift and before.drift_s == 30 and before.desired_version == 1
    assert await drift_seconds(NOW + timedelta(seconds=30)) == {"T1": 30.0}
    p = await _pipeline(db)
    applied = {"version": 1, "hash": out.hash}
    await p.handle([msg("T1", "reported", _reported(version=1, hash=out.hash, applied=applied))])
    rep = await TerminalReported.get(terminal_id="T1")
    assert (rep.result, rep.applied_version, rep.applied_hash) == ("ok", 1, out.hash)
    after = await drift_state("T1", NOW + timedelta(seconds=60))
    assert not after.drift and after.drift_s is None
    assert await drift_seconds(NOW) == {}
    assert p.counts["stored"] == 1


async def test_a_refused_document_is_recorded_and_still_drifts(db: str) -> None:
    await seed({"S1": ["T1"]})
    (out,) = await service().recompute(["T1"])
    p = await _pipeline(db)
    payload = _reported(version=1, hash=out.hash, result="refused", error="bad signature")
    await p.handle([msg("T1", "reported", payload)])
    state = await drift_state("T1", NOW)
    assert state.drift and state.reported_result == "refused"
    assert state.reported_error == "bad signature"


async def test_a_bad_reported_is_dead_lettered_with_its_reason(db: str) -> None:
    await seed({"S1": ["T1"]})
    p = await _pipeline(db)
    await p.handle(
        [
            msg("T1", "reported", _reported(result="maybe")),
            msg("T1", "reported", _reported(hash="md5:x")),
            msg("T1", "reported", _reported(extra=1)),
        ]
    )
    reasons = sorted(d.reason for d in await DeadLetter.all())
    assert reasons == [
        "schema: extra: unknown field",
        "schema: hash: must be sha256:<64 hex>",
        "schema: result: must be one of ok, refused, failed",
    ]
    assert p.counts["rejected"] == 3 and not await TerminalReported.exists()


async def test_command_results_update_the_command_and_unknown_ids_are_refused(db: str) -> None:
    await seed({"S1": ["T1", "T2"]})
    pub = FakePublisher()
    cmd = await commands.issue(pub, "T1", "refresh_status", {}, 300, "op", NOW)
    assert cmd.status == CommandStatus.SENT
    (topic, payload, retain) = pub.sent[0]
    wire = json.loads(payload)
    assert topic == "fleet/v1/t/T1/cmd" and not retain
    assert wire == {
        "v": 1,
        "id": str(cmd.id),
        "name": "refresh_status",
        "args": {},
        "issued_at": "2026-11-25T06:00:00Z",
        "expires_at": "2026-11-25T06:05:00Z",
    }
    p = await _pipeline(db)
    result = {
        "v": 1,
        "id": str(cmd.id),
        "ts": "2026-11-25T06:00:02Z",
        "status": "ok",
        "detail": "done",
    }
    other = {**result, "id": "6f1c1c1e-0000-4000-8000-000000000000"}
    await p.handle(
        [
            msg("T1", "cmd/result", json.dumps(result).encode()),
            msg("T1", "cmd/result", json.dumps(other).encode()),
            # Another terminal answering T1's command is not its answer.
            msg("T2", "cmd/result", json.dumps({**result, "status": "failed"}).encode()),
            msg("T1", "cmd/result", json.dumps({**result, "status": "great"}).encode()),
        ]
    )
    row = await Command.get(id=cmd.id)
    assert (row.status, row.detail) == (CommandStatus.OK, "done") and row.result_at is not None
    reasons = sorted(d.reason.split(":")[0] for d in await DeadLetter.all())
    assert reasons == ["schema", "unknown_command", "unknown_command"]


async def test_unanswered_commands_expire(db: str) -> None:
    await seed({"S1": ["T1"]})
    cmd = await commands.issue(FakePublisher(), "T1", "restart_agent", {}, 60, "op", NOW)
    assert await commands.expire("T1", NOW + timedelta(seconds=30)) == 0
    assert await commands.expire("T1", NOW + timedelta(seconds=61)) == 1
    assert (await Command.get(id=cmd.id)).status == CommandStatus.EXPIRED
    down = await commands.issue(FakePublisher(down=True), "T1", "restart_agent", {}, 60, "op", NOW)
    assert down.status == CommandStatus.FAILED and "not connected" in down.detail
