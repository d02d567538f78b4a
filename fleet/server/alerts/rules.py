"""Alert rules as data, and their evaluation on one status report (DESIGN.md, status v1).

Evaluation is stateless and never trusts a payload: a missing or malformed field is *unknown*, and
unknown never raises an alert ("unknown is never empty"). Unknown is also not "fine": `assess`
names the rules it could not decide, so the engine neither opens nor clears them on a guess (a
printer that drops off USB must not auto-clear its jam alert, a terminal gone offline must not
clear its paper-out alert).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Rule:
    """One alert rule. Timings are defaults; the engine's config may override them per rule."""

    id: str
    severity: Severity
    message_zh: str
    message_en: str
    #: The condition must hold this long before the alert opens (filters brief, expected states).
    raise_delay_s: float = 0.0
    #: The condition must stay absent this long before the alert clears (filters flapping sensors).
    hold_down_s: float = 60.0

    def message(self, lang: str = "zh") -> str:
        return self.message_en if lang.startswith("en") else self.message_zh


C, W = Severity.CRITICAL, Severity.WARNING

#: Every rule the engine knows, by id. Severity reflects whether the kiosk can still serve citizens.
RULES: Mapping[str, Rule] = {
    r.id: r
    for r in (
        Rule("paper_out", C, "打印机缺纸", "Printer is out of paper"),
        Rule("paper_low", W, "打印纸不足", "Printer paper is low"),
        Rule("paper_runout_soon", W, "预计 2 小时内用完打印纸", "Paper runs out within 2 h"),
        Rule("jam", C, "打印机卡纸", "Paper jam"),
        # A refill opens the door for a minute or two: only a door left open is worth an alert.
        Rule("door_open", C, "打印机舱门未关闭", "Printer door/cover open", raise_delay_s=120),
        Rule("toner_empty", C, "墨粉已用完", "Toner is empty"),
        Rule("toner_low", W, "墨粉不足", "Toner is low"),
        # Printers and readers drop off USB briefly on power saving or re-enumeration.
        Rule("printer_offline", C, "打印机离线", "Printer is offline", raise_delay_s=30),
        Rule("reader_fault", C, "读卡器故障", "Card reader fault", raise_delay_s=30),
        # The presence tracker already applies its own hysteresis before calling a terminal
        # offline; a clean goodbye gets a grace period on top (CLEAN_OFFLINE_GRACE_S).
        Rule("terminal_offline", C, "终端离线", "Terminal is offline"),
    )
}

PRINTER_RULES = frozenset(
    {"paper_out", "paper_low", "jam", "door_open", "toner_empty", "toner_low", "printer_offline"}
)
#: Rules decided from the status report (everything but presence and the forecast).
STATUS_RULES = PRINTER_RULES | {"reader_fault"}
#: A terminal that said goodbye (presence offline, reason `clean`) is alerted only if it is not
#: back by then: an agent restarting into a new version, or for a remote restart.
CLEAN_OFFLINE_GRACE_S = 90.0
#: A Last Will (the link dropped, or the agent was killed) is alerted if the terminal is not back
#: by then: an agent that crashed and was restarted by systemd reconnects in seconds. A terminal
#: that went silent without a Will (a hung agent, a cut cable) is alerted at its timeout, at once.
WILL_OFFLINE_GRACE_S = 20.0

#: What an offline terminal leaves undecided: its last report and its forecast are stale.
STALE_WHEN_OFFLINE = STATUS_RULES | {"paper_runout_soon"}


@dataclass(frozen=True)
class RuleHit:
    """A rule whose condition holds. Identity is the rule alone: `detail` is for people."""

    rule: str
    detail: str = field(default="", compare=False)
    #: This occurrence's raise delay, when it differs from the rule's (see CLEAN_OFFLINE_GRACE_S).
    raise_delay_s: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Thresholds:
    """Per-hardware-model thresholds (firmware_configs); defaults from the issue."""

    paper_low_pct: float = 20.0
    #: Once paper_low is active it holds until the level is this far above the threshold, so a
    #: sensor jittering around 20 % does not open and close the alert on every report.
    paper_clear_margin_pct: float = 5.0
    toner_low_pct: float = 10.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> Thresholds:
        """Thresholds from a config mapping; absent or invalid entries keep their default."""
        out = cls()
        if not raw:
            return out
        values = {}
        for name in ("paper_low_pct", "paper_clear_margin_pct", "toner_low_pct"):
            v = _pct(raw.get(name))
            if v is not None:
                values[name] = v
        return cls(**values)


@dataclass(frozen=True)
class Assessment:
    hits: frozenset[RuleHit]
    #: Rules that this report cannot decide either way: the engine keeps their current state.
    unknown: frozenset[str]


_PRINTER_STATES = {"idle", "printing", "stopped", "offline"}
_READER_FAULTS = {"error", "no_reader", "offline"}
# Raw IPP keywords may carry a severity suffix (RFC 8011 §5.4.12); the agent strips it, we too.
_IPP_SUFFIXES = ("-report", "-warning", "-error")


def evaluate(
    status: Mapping[str, Any] | None,
    online: bool,
    thresholds: Thresholds | None = None,
    active: Collection[str] = (),
) -> set[RuleHit]:
    """The rules whose condition holds; see `assess` for the rules that could not be decided."""
    return set(assess(status, online, thresholds, active).hits)


def assess(
    status: Mapping[str, Any] | None,
    online: bool,
    thresholds: Thresholds | None = None,
    active: Collection[str] = (),
    offline_reason: str | None = None,
) -> Assessment:
    """Evaluate every status rule on one report. `active` holds the rules currently alerting
    (for the paper_low clear margin); `online` comes from the ingest's presence tracker, and
    `offline_reason` (clean, will, timeout) with it."""
    th = thresholds or Thresholds()
    if not online:
        # The last report is stale: keep what we knew rather than decide on it.
        if offline_reason == "clean":
            hit = RuleHit("terminal_offline", "clean shutdown", CLEAN_OFFLINE_GRACE_S)
        elif offline_reason == "will":
            hit = RuleHit("terminal_offline", "will", WILL_OFFLINE_GRACE_S)
        else:
            hit = RuleHit("terminal_offline", offline_reason or "")
        return Assessment(frozenset({hit}), STALE_WHEN_OFFLINE)
    if not isinstance(status, Mapping):
        return Assessment(frozenset(), STATUS_RULES)
    hits: set[RuleHit] = set()
    unknown: set[str] = set()
    _printer(status.get("printer"), th, "paper_low" in active, hits, unknown)
    _reader(status.get("reader"), hits, unknown)
    return Assessment(frozenset(hits), frozenset(unknown))


def _printer(
    printer: Any, th: Thresholds, low_active: bool, hits: set[RuleHit], unknown: set[str]
) -> None:
    if not isinstance(printer, Mapping) or _text(printer.get("state")) not in _PRINTER_STATES:
        unknown.update(PRINTER_RULES)
        return
    reasons = _reasons(printer.get("reasons"))
    if printer["state"] == "offline" or "offline" in reasons:
        hits.add(RuleHit("printer_offline", f"state={printer['state']}"))
        # An unreachable printer's paper, door and toner readings are stale or absent.
        unknown.update(PRINTER_RULES - {"printer_offline"})
        return
    if "media-jam" in reasons:
        hits.add(RuleHit("jam", "media-jam"))
    door = sorted(reasons & {"door-open", "cover-open"})
    if door:
        hits.add(RuleHit("door_open", ",".join(door)))
    _paper(printer.get("paper"), reasons, th, low_active, hits)
    _toner(printer.get("toner_pct"), reasons, th, hits)


def _paper(
    paper: Any, reasons: set[str], th: Thresholds, low_active: bool, hits: set[RuleHit]
) -> None:
    level, estimated = paper_level(paper)
    # An estimate (pages printed since the last refill) is not proof of an empty tray: a refill the
    # agent missed would leave a false "out". Only the printer itself says "out".
    if "media-empty" in reasons:
        hits.add(RuleHit("paper_out", "media-empty"))
        return
    if level is not None and level <= 0 and not estimated:
        hits.add(RuleHit("paper_out", "level_pct=0"))
        return
    limit = th.paper_low_pct + (th.paper_clear_margin_pct if low_active else 0.0)
    if level is not None and level < limit:
        note = " (estimated)" if estimated else ""
        hits.add(RuleHit("paper_low", f"level_pct={level:g}{note}"))
    elif "media-low" in reasons:
        hits.add(RuleHit("paper_low", "media-low"))


def _toner(raw: Any, reasons: set[str], th: Thresholds, hits: set[RuleHit]) -> None:
    pct = _pct(raw)
    if "toner-empty" in reasons or pct == 0:
        why = "toner-empty" if "toner-empty" in reasons else "toner_pct=0"
        hits.add(RuleHit("toner_empty", why))
    elif "toner-low" in reasons:
        hits.add(RuleHit("toner_low", "toner-low"))
    elif pct is not None and pct < th.toner_low_pct:
        hits.add(RuleHit("toner_low", f"toner_pct={pct:g}"))


def _reader(reader: Any, hits: set[RuleHit], unknown: set[str]) -> None:
    state = _text(reader.get("state")) if isinstance(reader, Mapping) else None
    if state in _READER_FAULTS:
        hits.add(RuleHit("reader_fault", f"state={state}"))
    elif state != "ok":
        unknown.add("reader_fault")


def paper_level(paper: Any) -> tuple[float | None, bool]:
    """(level in %, estimated) from a status `printer.paper` object; None when unknown."""
    if not isinstance(paper, Mapping):
        return None, False
    estimated = paper.get("estimated") is True
    pct = _pct(paper.get("level_pct"))
    if pct is not None:
        return pct, estimated
    sheets, capacity = _count(paper.get("sheets_left")), _count(paper.get("capacity"))
    if sheets is not None and capacity:
        return min(100.0, 100.0 * sheets / capacity), estimated
    if sheets == 0:
        return 0.0, estimated  # no capacity needed to know an empty tray
    return None, False


def _reasons(raw: Any) -> set[str]:
    if not isinstance(raw, list | tuple):
        return set()
    out = set()
    for r in raw:
        if isinstance(r, str):
            for suffix in _IPP_SUFFIXES:
                r = r.removesuffix(suffix)
            out.add(r)
    return out


def _text(raw: Any) -> str | None:
    # Garbage may be unhashable (a list where a keyword belongs): never look it up in a set.
    return raw if isinstance(raw, str) else None


def _pct(raw: Any) -> float | None:
    """A finite percentage in [0, 100], else None (bool is not a number here)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    v = float(raw)
    return v if math.isfinite(v) and 0.0 <= v <= 100.0 else None


def _count(raw: Any) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        return None
    return raw
