"""History retention: delete status samples past `history_retention_days`, thin out older ones.

Samples older than `downsample_after_hours` keep one per terminal per `bucket_s` (15 minutes by
default: a day of 30 s reports shrinks 30-fold, and the paper forecast still sees the curve). The
kept sample is the first of its bucket and is marked `downsampled`, so a later run -- or a late
report that lands in a bucket already thinned out -- deletes the others and never keeps two.

Done per terminal, in Python, with plain range queries and deletes by id: the same statements on
SQLite and PostgreSQL, and each run touches only what arrived since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet.server.db.models import StatusSample, Terminal
from fleet.server.settings import Settings

log = logging.getLogger(__name__)

BUCKET_S = 15 * 60
#: Ids per DELETE/UPDATE statement (SQLite's bound-parameter limit is 32,766 in 3.32+).
_CHUNK = 5000


@dataclass(frozen=True)
class RetentionResult:
    expired: int
    thinned: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def apply_retention(
    settings: Settings, now: datetime | None = None, bucket_s: int = BUCKET_S
) -> RetentionResult:
    now = now or _utc_now()
    expired = await StatusSample.filter(
        ts__lt=now - timedelta(days=settings.history_retention_days)
    ).delete()
    cutoff = _floor(now - timedelta(hours=settings.downsample_after_hours), bucket_s)
    thinned = 0
    for tid in await Terminal.all().values_list("id", flat=True):
        thinned += await _thin(str(tid), cutoff, bucket_s)
    if expired or thinned:
        log.info("history retention: %d samples expired, %d thinned out", expired, thinned)
    return RetentionResult(expired, thinned)


async def _thin(terminal: str, cutoff: datetime, bucket_s: int) -> int:
    first = (
        await StatusSample.filter(terminal_id=terminal, ts__lt=cutoff, downsampled=False)
        .order_by("ts")
        .first()
        .values_list("ts", flat=True)
    )
    if not isinstance(first, datetime):
        return 0
    start = _floor(first, bucket_s)
    rows = (
        await StatusSample.filter(terminal_id=terminal, ts__gte=start, ts__lt=cutoff)
        .order_by("ts", "id")
        .values_list("id", "ts", "downsampled")
    )
    kept: dict[int, bool] = {}  # bucket -> a downsampled sample is (or will be) there
    for _, ts, downsampled in rows:
        if downsampled:
            kept[_bucket(ts, bucket_s)] = True
    keep: list[int] = []
    drop: list[int] = []
    for sid, ts, downsampled in rows:
        if downsampled:
            continue
        b = _bucket(ts, bucket_s)
        if b in kept:
            drop.append(sid)
        else:
            kept[b] = True
            keep.append(sid)
    for i in range(0, len(drop), _CHUNK):
        await StatusSample.filter(id__in=drop[i : i + _CHUNK]).delete()
    for i in range(0, len(keep), _CHUNK):
        await StatusSample.filter(id__in=keep[i : i + _CHUNK]).update(downsampled=True)
    return len(drop)


def _bucket(ts: datetime, bucket_s: int) -> int:
    return int(ts.timestamp()) // bucket_s


def _floor(ts: datetime, bucket_s: int) -> datetime:
    return datetime.fromtimestamp(_bucket(ts, bucket_s) * bucket_s, UTC)


async def run_retention(
    settings: Settings,
    stop: asyncio.Event,
    interval_s: float = 3600.0,
    clock: Callable[[], datetime] = _utc_now,
) -> None:
    """Apply retention now and then every `interval_s` until `stop` is set."""
    while not stop.is_set():
        try:
            await apply_retention(settings, clock())
        except Exception:  # the next run tries again; history is never the ingest's blocker
            log.exception("history retention failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
