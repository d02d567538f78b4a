"""Which terminals a rollout reaches, in which order, in which wave.

Target: `{"sites": [...], "models": [...], "tags": [...], "terminals": [...]}`, every key
optional. A terminal is chosen when it is listed in `terminals`, or when it matches every filter
that is given (sites, models, tags; within one filter any value matches). At least one key must
be non-empty, and an explicitly listed terminal must exist.

Waves: each entry is a *cumulative* size, an integer count or a percentage string "N%" of the
chosen terminals (rounded up), so `[1, "10%", "50%", "100%"]` over 20 terminals is waves of 1, 1,
8 and 10. The first wave is the canary. Waves that would add nobody are dropped, and a spec that
stops short of everyone gets one more wave with the rest: the target says who gets the version,
the waves only pace it (and no wave grows beyond what was asked, least of all the canary).

The order is deterministic (terminal id), so the same request plans the same waves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from fleet.server.db.models import Terminal

TARGET_KEYS = ("sites", "models", "tags", "terminals")
_PCT = re.compile(r"(\d{1,3}(?:\.\d+)?)%")


class PlanError(ValueError):
    """The target or the wave spec is not usable; the message says why."""


def check_waves(spec: Sequence[int | str]) -> list[int | str]:
    """Validate a wave spec (see the module docstring); the spec, normalised."""
    if not spec:
        raise PlanError("waves: at least one wave is needed")
    if len(spec) > 100:
        raise PlanError("waves: at most 100 waves")
    out: list[int | str] = []
    for i, w in enumerate(spec):
        if isinstance(w, bool):
            raise PlanError(f'waves[{i}]: a count or a percentage such as "10%"')
        if isinstance(w, int):
            if w < 1:
                raise PlanError(f"waves[{i}]: a count must be at least 1")
            out.append(w)
            continue
        m = _PCT.fullmatch(w.strip()) if isinstance(w, str) else None
        if m is None or not 0 < float(m.group(1)) <= 100:
            raise PlanError(f"waves[{i}]: {w!r} is not a count or a percentage in (0, 100]")
        out.append(w.strip())
    return out


def plan_waves(terminal_ids: Sequence[str], spec: Sequence[int | str]) -> list[list[str]]:
    """Split the ordered terminals into waves (cumulative sizes; see the module docstring)."""
    spec = check_waves(spec)
    total = len(terminal_ids)
    waves: list[list[str]] = []
    done = 0
    for w in spec:
        upto = w if isinstance(w, int) else math.ceil(total * float(w[:-1]) / 100 - 1e-9)
        upto = min(max(upto, 0), total)
        if upto > done:
            waves.append(list(terminal_ids[done:upto]))
            done = upto
    if done < total:
        waves.append(list(terminal_ids[done:]))
    return waves


def check_target(target: dict[str, Any]) -> dict[str, list[str]]:
    unknown = set(target) - set(TARGET_KEYS)
    if unknown:
        raise PlanError(f"target: unknown keys {sorted(unknown)}; use {list(TARGET_KEYS)}")
    out: dict[str, list[str]] = {}
    for key in TARGET_KEYS:
        values = target.get(key) or []
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise PlanError(f"target.{key}: a list of non-empty strings")
        out[key] = sorted(set(values))
    if not any(out.values()):
        raise PlanError("target: empty; give sites, models, tags or terminals")
    return out


async def resolve_targets(target: dict[str, Any]) -> list[str]:
    """The chosen terminal ids, in plan order; PlanError when none or an unknown one is named."""
    t = check_target(target)
    chosen: set[str] = set()
    if t["terminals"]:
        found = {
            str(x)
            for x in await Terminal.filter(id__in=t["terminals"]).values_list("id", flat=True)
        }
        missing = [x for x in t["terminals"] if x not in found]
        if missing:
            raise PlanError(f"target.terminals: unknown terminals {missing}")
        chosen |= found
    if t["sites"] or t["models"] or t["tags"]:
        query = Terminal.all()
        if t["sites"]:
            query = query.filter(site_id__in=t["sites"])
        if t["models"]:
            query = query.filter(model__in=t["models"])
        wanted_tags = set(t["tags"])
        for tid, tags in await query.values_list("id", "tags"):
            if not wanted_tags or wanted_tags & set(tags or []):
                chosen.add(str(tid))
    if not chosen:
        raise PlanError("target: no terminal matches")
    return sorted(chosen)
