"""Alert rules on realistic, partial and garbage status reports (DESIGN.md status v1)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from fleet.server.alerts.rules import (
    RULES,
    STATUS_RULES,
    RuleHit,
    Severity,
    Thresholds,
    assess,
    evaluate,
    paper_level,
)


def report(**printer: Any) -> dict[str, Any]:
    """A healthy DESIGN.md status report, with printer fields overridden."""
    base: dict[str, Any] = {
        "v": 1,
        "seq": 1041,
        "ts": "2026-11-27T09:30:00Z",
        "agent": "1.2.0",
        "desired": "sha256:00",
        "printer": {
            "driver": "ipp",
            "state": "idle",
            "reasons": [],
            "paper": {"level_pct": 64, "sheets_left": 320, "capacity": 500},
            "toner_pct": 41,
            "pages_total": 18211,
        },
        "reader": {"driver": "pcsc", "state": "ok", "card_present": False},
        "host": {"uptime_s": 86400, "disk_free_mb": 5120},
    }
    base["printer"].update(printer)
    return base


def rules_of(status: Any, online: bool = True, **kw: Any) -> set[str]:
    return {h.rule for h in evaluate(status, online, **kw)}


def test_healthy_report_raises_nothing_and_decides_everything() -> None:
    a = assess(report(), True)
    assert a.hits == frozenset()
    assert a.unknown == frozenset()


def test_every_rule_has_messages_and_a_severity() -> None:
    for rid, rule in RULES.items():
        assert rule.id == rid
        assert rule.message("zh") and rule.message("en") != rule.message("zh")
        assert rule.hold_down_s >= 0 and rule.raise_delay_s >= 0
    critical = {r for r, rule in RULES.items() if rule.severity is Severity.CRITICAL}
    assert {"paper_out", "jam", "terminal_offline"} <= critical
    warning = {r for r, rule in RULES.items() if rule.severity is Severity.WARNING}
    assert {"paper_low", "toner_low", "paper_runout_soon"} <= warning


@pytest.mark.parametrize(
    ("printer", "expected"),
    [
        ({"paper": {"level_pct": 18, "sheets_left": 90, "capacity": 500}}, {"paper_low"}),
        ({"paper": {"level_pct": 20}}, set()),  # the threshold itself is not "below"
        ({"paper": {"level_pct": 19.5}}, {"paper_low"}),
        ({"reasons": ["media-low"]}, {"paper_low"}),
        ({"reasons": ["media-empty"], "state": "stopped"}, {"paper_out"}),
        ({"paper": {"level_pct": 0, "sheets_left": 0, "capacity": 500}}, {"paper_out"}),
        ({"paper": {"sheets_left": 0}}, {"paper_out"}),
        ({"paper": {"sheets_left": 60, "capacity": 500}}, {"paper_low"}),  # 12 % from sheets
        ({"reasons": ["media-jam"], "state": "stopped"}, {"jam"}),
        ({"reasons": ["door-open"]}, {"door_open"}),
        ({"reasons": ["cover-open"]}, {"door_open"}),
        ({"reasons": ["toner-low"]}, {"toner_low"}),
        ({"toner_pct": 7}, {"toner_low"}),
        ({"reasons": ["toner-empty"], "state": "stopped"}, {"toner_empty"}),
        ({"toner_pct": 0}, {"toner_empty"}),
        ({"state": "offline", "reasons": ["offline"]}, {"printer_offline"}),
        ({"reasons": ["offline"]}, {"printer_offline"}),
        (
            {"state": "stopped", "reasons": ["media-jam", "cover-open", "toner-low"]},
            {"jam", "door_open", "toner_low"},
        ),
        # Raw IPP keywords with severity suffixes mean the same thing.
        ({"reasons": ["media-empty-error", "toner-low-warning"]}, {"paper_out", "toner_low"}),
        ({"reasons": ["media-low-report"]}, {"paper_low"}),
        ({"reasons": ["none"]}, set()),
        ({"state": "printing", "reasons": ["other"]}, set()),
    ],
)
def test_printer_rules(printer: dict[str, Any], expected: set[str]) -> None:
    assert rules_of(report(**printer)) == expected


def test_out_supersedes_low_and_empty_supersedes_low_toner() -> None:
    s = report(reasons=["media-empty", "media-low", "toner-empty", "toner-low"], toner_pct=3)
    assert rules_of(s) == {"paper_out", "toner_empty"}


def test_paper_low_threshold_is_per_model() -> None:
    s = report(paper={"level_pct": 25})
    assert rules_of(s) == set()
    assert rules_of(s, thresholds=Thresholds(paper_low_pct=30)) == {"paper_low"}
    assert rules_of(report(toner_pct=15), thresholds=Thresholds(toner_low_pct=20)) == {"toner_low"}


def test_paper_low_holds_within_the_clear_margin_while_active() -> None:
    # A sensor jittering 19/21/22 % must keep the open alert, not flap it.
    for level in (19, 21, 22, 24):
        assert rules_of(report(paper={"level_pct": level}), active={"paper_low"}) == {"paper_low"}
    assert rules_of(report(paper={"level_pct": 25}), active={"paper_low"}) == set()
    assert rules_of(report(paper={"level_pct": 22})) == set()


def test_estimated_zero_is_low_not_out() -> None:
    # The agent estimates from pages printed since the refill it saw: it may have missed one.
    s = report(paper={"level_pct": 0, "sheets_left": 0, "capacity": 500, "estimated": True})
    hits = evaluate(s, True)
    assert {h.rule for h in hits} == {"paper_low"}
    assert "estimated" in next(iter(hits)).detail


def test_reader_rules() -> None:
    for state in ("error", "no_reader", "offline"):
        s = report()
        s["reader"]["state"] = state
        assert rules_of(s) == {"reader_fault"}
    s = report()
    s["reader"]["state"] = "warming-up"  # not in the contract: undecided, not a fault
    a = assess(s, True)
    assert a.hits == frozenset() and a.unknown == {"reader_fault"}


def test_terminal_offline_freezes_the_status_rules() -> None:
    s = report(reasons=["media-jam"])
    a = assess(s, False)
    assert {h.rule for h in a.hits} == {"terminal_offline"}
    assert a.unknown == STATUS_RULES | {"paper_runout_soon"}
    assert rules_of(None, online=False) == {"terminal_offline"}


def test_printer_offline_makes_paper_and_door_unknown() -> None:
    a = assess(report(state="offline", reasons=[], paper=None), True)
    assert {h.rule for h in a.hits} == {"printer_offline"}
    assert {"paper_out", "paper_low", "jam", "door_open"} <= a.unknown
    assert "printer_offline" not in a.unknown


def test_missing_parts_are_unknown_never_out() -> None:
    assert assess(None, True).unknown == STATUS_RULES
    assert assess({}, True).unknown == STATUS_RULES
    a = assess({"v": 1, "reader": {"state": "ok"}}, True)
    assert a.hits == frozenset() and "paper_out" in a.unknown and "reader_fault" not in a.unknown
    # A printer with no paper information at all: no paper alert.
    assert rules_of(report(paper=None)) == set()
    assert rules_of(report(paper={"capacity": 500})) == set()


@pytest.mark.parametrize(
    "paper",
    [
        {"level_pct": "0"},
        {"level_pct": None},
        {"level_pct": True},
        {"level_pct": False},  # bool is not a number: False must not read as 0 %
        {"level_pct": -1},
        {"level_pct": 101},
        {"level_pct": float("nan")},
        {"level_pct": float("-inf")},
        {"sheets_left": "0", "capacity": 500},
        {"sheets_left": -3, "capacity": 500},
        {"sheets_left": 0.0},
        "empty",
        [0],
        0,
    ],
)
def test_garbage_paper_never_means_out(paper: Any) -> None:
    assert "paper_out" not in rules_of(report(paper=paper))
    assert paper_level(paper)[0] is None


@pytest.mark.parametrize(
    "status",
    [
        [],
        "status",
        42,
        {"printer": "idle"},
        {"printer": {"state": 3}},
        {"printer": {"state": "idle", "reasons": "media-empty"}},  # not a list: ignored
        {"printer": {"state": "idle", "reasons": [None, 3, {"x": 1}]}},
        {"printer": {"state": "idle", "toner_pct": "0"}},
        {"reader": []},
        {"reader": {"state": None}},
    ],
)
def test_garbage_reports_raise_nothing(status: Any) -> None:
    assert evaluate(status, True) == set()


def test_random_garbage_never_crashes_and_never_claims_empty_without_evidence() -> None:
    rng = random.Random(4)
    junk: list[Any] = [None, "", "x", -1, 0, 1, 0.5, True, [], {}, ["media-jam"], float("nan")]
    keys = ["state", "reasons", "paper", "toner_pct", "level_pct", "sheets_left", "capacity"]
    for _ in range(2000):
        s = report()
        printer = s["printer"]
        for k in rng.sample(keys, rng.randint(1, len(keys))):
            target = printer["paper"] if k in ("level_pct", "sheets_left", "capacity") else printer
            if isinstance(target, dict):
                target[k] = rng.choice(junk)
        hits = evaluate(copy.deepcopy(s), rng.random() < 0.9)
        assert all(h.rule in RULES for h in hits)
        if "paper_out" in {h.rule for h in hits}:
            paper = printer.get("paper")
            reasons = printer.get("reasons")
            says_empty = isinstance(reasons, list) and "media-empty" in reasons
            zero = isinstance(paper, dict) and (
                paper.get("level_pct") == 0 or paper.get("sheets_left") == 0
            )
            assert says_empty or zero


def test_hits_are_identified_by_rule_alone() -> None:
    assert RuleHit("paper_low", "level_pct=18") == RuleHit("paper_low", "media-low")
    assert len({RuleHit("jam", "a"), RuleHit("jam", "b")}) == 1


def test_thresholds_from_config_mapping() -> None:
    assert Thresholds.from_mapping(None) == Thresholds()
    t = Thresholds.from_mapping({"paper_low_pct": 15, "toner_low_pct": "x", "other": 1})
    assert t == Thresholds(paper_low_pct=15)
    assert Thresholds.from_mapping({"paper_low_pct": 500}) == Thresholds()
