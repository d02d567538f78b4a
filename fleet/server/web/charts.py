"""Server-rendered SVG charts (no JavaScript, no library): what the terminal page draws."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 24, 12, 28


def paper_chart(
    points: Sequence[tuple[datetime, int | None]],
    start: datetime,
    end: datetime,
    zone: tzinfo,
    low_pct: int,
    title: str,
) -> Markup:
    """Paper level (0-100 %) over [start, end] as a step line; gaps where the level is unknown.

    Every number is formatted by us and every text is escaped, so the SVG is safe to inline.
    """
    span = max((end - start).total_seconds(), 1.0)
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(t: datetime) -> float:
        return _LEFT + plot_w * min(max((t - start).total_seconds() / span, 0.0), 1.0)

    def y(pct: float) -> float:
        return _TOP + plot_h * (1 - min(max(pct, 0.0), 100.0) / 100)

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for mark in (0, 25, 50, 75, 100):
        yy = y(mark)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
            f'<text class="axis" x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{mark}%</text>'
        )
    yl = y(low_pct)
    parts.append(
        f'<line class="low" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{yl:.1f}" y2="{yl:.1f}"/>'
    )
    for i in range(5):
        tick = start + (end - start) * (i / 4)
        parts.append(
            f'<text class="axis" x="{x(tick):.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{escape(tick.astimezone(zone).strftime('%H:%M'))}</text>"
        )
    # A step line: the level holds until the next report; None breaks the line.
    runs: list[list[str]] = []
    current: list[str] = []
    prev: float | None = None
    for t, pct in points:
        if pct is None:
            if current:
                runs.append(current)
            current, prev = [], None
            continue
        xx, yy = x(t), y(pct)
        if prev is not None:
            current.append(f"{xx:.1f},{prev:.1f}")
        current.append(f"{xx:.1f},{yy:.1f}")
        prev = yy
    if current:
        runs.append(current)
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            parts.append(f'<circle class="line" cx="{cx}" cy="{cy}" r="2.5"/>')
        else:
            parts.append(f'<polyline class="line" points="{" ".join(run)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
