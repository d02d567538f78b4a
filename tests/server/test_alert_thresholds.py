"""Per-hardware-model alert thresholds: a terminal's `model` picks its firmware_configs/ file's
paper thresholds; other terminals keep the server's `paper_low_pct`."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleet.firmware import load_models
from fleet.server.alerts import AlertEngine, Thresholds, assess
from fleet.server.alerts.thresholds import ThresholdsByModel, model_thresholds
from fleet.server.db.models import Alert, Site, SiteKind, Terminal
from fleet.server.ingest.pipeline import Pipeline
from fleet.server.ingest.receiver import Received
from fleet.server.settings import Settings

MODELS = load_models(Path(__file__).resolve().parents[2] / "firmware_configs")
DEFAULT = Thresholds(paper_low_pct=20.0)
T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC).timestamp()


def report(paper_pct: int) -> dict[str, Any]:
    return {
        "v": 1,
        "seq": 1,
        "ts": "2026-11-25T06:00:00Z",
        "agent": "1.2.0",
        "printer": {
            "driver": "ipp",
            "state": "idle",
            "reasons": [],
            "paper": {"level_pct": paper_pct},
            "toner_pct": 60,
        },
        "reader": {"driver": "pcsc", "state": "ok", "card_present": False},
    }


def rules(paper_pct: int, th: Thresholds, active: frozenset[str] = frozenset()) -> set[str]:
    return {h.rule for h in assess(report(paper_pct), True, th, active).hits}


def test_model_thresholds_take_what_the_model_states() -> None:
    dual = MODELS["kx-a4-dualtray-ipp"]
    t = model_thresholds(dual, Thresholds(paper_low_pct=20, paper_clear_margin_pct=7))
    assert t == Thresholds(paper_low_pct=15, paper_clear_margin_pct=5, toner_low_pct=10)
    bare = replace(dual, paper_clear_margin_pct=None, toner_low_pct=None)
    assert model_thresholds(bare, Thresholds(paper_clear_margin_pct=7, toner_low_pct=12)) == (
        Thresholds(paper_low_pct=15, paper_clear_margin_pct=7, toner_low_pct=12)
    )


@pytest.mark.parametrize(
    ("model", "low"),
    [
        ("kx-a4-ipp", 20),
        ("kx-a4-dualtray-ipp", 15),
        ("KX-A4-DualTray-IPP", 15),  # as typed at `fleet terminals add --model`
        ("kx-receipt-escpos", 25),
        ("sim", 20),
        ("unknown", 20),
        ("", 20),
        (None, 20),
    ],
)
def test_thresholds_for_a_model_id(model: str | None, low: float) -> None:
    by_model = ThresholdsByModel(MODELS, DEFAULT)
    assert by_model.thresholds_for(model).paper_low_pct == low
    assert ThresholdsByModel({}, DEFAULT).thresholds_for(model) == DEFAULT


def test_the_same_level_alerts_by_model() -> None:
    by_model = ThresholdsByModel(MODELS, DEFAULT)
    dual, receipt = (
        by_model.thresholds_for(m) for m in ("kx-a4-dualtray-ipp", "kx-receipt-escpos")
    )
    assert rules(18, DEFAULT) == {"paper_low"}
    assert rules(18, dual) == set()  # 198 of 1,100 sheets: not low yet
    assert rules(14, dual) == {"paper_low"}
    assert rules(22, receipt) == {"paper_low"}  # an estimated roll warns earlier
    assert rules(29, receipt, frozenset({"paper_low"})) == {"paper_low"}  # held until 30 %
    assert rules(30, receipt, frozenset({"paper_low"})) == set()


# -- in the ingest -------------------------------------------------------------------------------


def status_msg(terminal: str, paper_pct: int) -> Received:
    payload = report(paper_pct)
    return Received(
        topic=f"fleet/v1/t/{terminal}/status",
        payload=json.dumps(payload).encode(),
        qos=1,
        retain=False,
        dup=False,
        mid=1,
        received_at=T0,
        connection=1,
    )


async def test_pipeline_uses_the_terminals_model(db: str) -> None:
    site = await Site.create(id="S1", name="武侯区政务服务中心", kind=SiteKind.HALL)
    models = {"DUAL": "kx-a4-dualtray-ipp", "A4": "KX-A4-IPP", "SIM": "sim"}
    for tid, model in models.items():
        await Terminal.create(id=tid, site=site, model=model, mqtt_username=tid)
    p = Pipeline(
        Settings(dev_mode=True, database_url=db),
        engine=AlertEngine(hold_down_s=60),
        clock=lambda: T0,
        models=MODELS,
    )
    await p.restore()
    assert p.thresholds_for("DUAL").paper_low_pct == 15
    assert p.thresholds_for("SIM") == p.thresholds == Thresholds(paper_low_pct=20)
    await p.handle([status_msg(tid, 18) for tid in models])
    await p.handle([status_msg("NEW-1", 18)])  # auto-registered, model "unknown": defaults
    low = await Alert.filter(rule="paper_low", active_key=1).values_list("terminal_id", flat=True)
    assert sorted(low) == ["A4", "NEW-1", "SIM"]


async def test_pipeline_without_models_uses_settings(db: str) -> None:
    p = Pipeline(Settings(dev_mode=True, database_url=db, paper_low_pct=25))
    await p.restore()
    assert p.thresholds_for("anything") == Thresholds(paper_low_pct=25)
