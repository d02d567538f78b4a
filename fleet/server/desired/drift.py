"""What terminals report (`reported`) against what they should run: drift.

A terminal drifts while the hash it reports as applied differs from its latest desired document's
hash; it drifts since that document was made (an older document it never applied was superseded,
and the operator cares how long the current one has been waiting). A terminal without any desired
document does not drift; one that never reported does, from its latest document on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tortoise.functions import Max

from fleet.server.db.models import DesiredDoc, TerminalReported


@dataclass(frozen=True)
class LatestDoc:
    version: int
    hash: str
    created_at: datetime


@dataclass(frozen=True)
class DriftState:
    """One terminal's desired vs reported state (the API's `desired_state`)."""

    desired_version: int | None
    desired_hash: str | None
    desired_at: datetime | None
    reported_version: int | None
    reported_hash: str | None
    reported_result: str | None
    reported_error: str | None
    applied_version: int | None
    applied_hash: str | None
    reported_at: datetime | None
    drift: bool
    drift_s: float | None


async def latest_docs(terminal_ids: list[str] | None = None) -> dict[str, LatestDoc]:
    """The latest desired document of each terminal (of `terminal_ids`, or all)."""
    query = DesiredDoc.all()
    if terminal_ids is not None:
        query = query.filter(terminal_id__in=terminal_ids)
    tops = (
        await query.annotate(top=Max("version"))
        .group_by("terminal_id")
        .values_list("terminal_id", "top")
    )
    if not tops:
        return {}
    wanted = {(str(t), int(v)) for t, v in tops}
    rows = await DesiredDoc.filter(
        terminal_id__in=sorted({t for t, _ in wanted}),
        version__in=sorted({v for _, v in wanted}),
    ).values_list("terminal_id", "version", "hash", "created_at")
    return {
        str(t): LatestDoc(int(v), str(h), c) for t, v, h, c in rows if (str(t), int(v)) in wanted
    }


def drifting(latest: LatestDoc | None, applied_hash: str | None, now: datetime) -> float | None:
    """Seconds of drift, or None when in sync (or nothing is desired)."""
    if latest is None or applied_hash == latest.hash:
        return None
    return max(0.0, (now - latest.created_at).total_seconds())


async def drift_state(terminal_id: str, now: datetime) -> DriftState:
    latest = (await latest_docs([terminal_id])).get(terminal_id)
    rep = await TerminalReported.get_or_none(terminal_id=terminal_id)
    drift_s = drifting(latest, rep.applied_hash if rep else None, now)
    return DriftState(
        desired_version=latest.version if latest else None,
        desired_hash=latest.hash if latest else None,
        desired_at=latest.created_at if latest else None,
        reported_version=rep.version if rep else None,
        reported_hash=rep.hash if rep else None,
        reported_result=rep.result if rep else None,
        reported_error=rep.error if rep else None,
        applied_version=rep.applied_version if rep else None,
        applied_hash=rep.applied_hash if rep else None,
        reported_at=rep.ts if rep else None,
        drift=drift_s is not None,
        drift_s=drift_s,
    )


async def drift_seconds(now: datetime) -> dict[str, float]:
    """terminal -> seconds of drift, for every drifting terminal (the metrics)."""
    latest = await latest_docs()
    applied = dict(await TerminalReported.all().values_list("terminal_id", "applied_hash"))
    out = {}
    for tid, doc in latest.items():
        s = drifting(doc, applied.get(tid), now)
        if s is not None:
            out[tid] = s
    return out


async def record_reported(
    terminal_id: str, doc: dict[str, Any], ts: datetime, now: datetime
) -> None:
    """Upsert the terminal's last `reported` (checked with `check_reported` already).

    A message older (by the agent's `ts`) than the stored one is ignored: a QoS 1 redelivery or an
    outbox flushed late must not overwrite a newer report."""
    applied = doc.get("applied") or {}
    values = {
        "version": doc.get("version"),
        "hash": doc.get("hash"),
        "result": doc["result"],
        "error": (doc.get("error") or None) and str(doc["error"])[:2000],
        "applied_version": applied.get("version"),
        "applied_hash": applied.get("hash"),
        "ts": ts,
        "updated_at": now,
    }
    current = await TerminalReported.get_or_none(terminal_id=terminal_id)
    if current is None:
        await TerminalReported.create(terminal_id=terminal_id, **values)
    elif current.ts <= ts:
        await TerminalReported.filter(terminal_id=terminal_id).update(**values)


async def applied_intervals(terminal_ids: Sequence[str] | None = None) -> dict[str, float]:
    """terminal -> the status interval (s) of the document it last reported applying: the
    interval it reports at, which its presence timeout must follow (issue 20)."""
    reported = TerminalReported.filter(applied_version__isnull=False)
    if terminal_ids is not None:
        reported = reported.filter(terminal_id__in=list(terminal_ids))
    pairs = await reported.values_list("terminal_id", "applied_version")
    if not pairs:
        return {}
    versions = {str(t): int(v) for t, v in pairs}
    docs = await DesiredDoc.filter(
        terminal_id__in=list(versions), version__in=list(set(versions.values()))
    ).values_list("terminal_id", "version", "payload")
    out: dict[str, float] = {}
    for tid, version, payload in docs:
        if versions.get(str(tid)) != int(version):
            continue
        try:
            interval = json.loads(payload)["config"]["status_interval_s"]
        except (ValueError, KeyError, TypeError):
            continue  # a document of ours is always whole; an odd one keeps the default
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            out[str(tid)] = float(interval)
    return out
