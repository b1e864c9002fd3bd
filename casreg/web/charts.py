"""Small SVG charts computed on the server: the page gets coordinates, the template draws
``<polyline>``, ``<rect>`` and ``<text>`` (no chart library, no inline script or style,
so the strict Content-Security-Policy holds)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["Chart", "Line", "Point", "Segment", "Timeline", "line_chart", "timeline"]

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 12, 28


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    label: str  # the tooltip
    href: str | None = None


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: str  # "x,y x,y ..." for <polyline points=...>
    css: str
    dots: list[Point] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    lines: list[Line]
    xticks: list[tuple[float, str]]
    yticks: list[tuple[float, str]]
    left: int = LEFT
    bottom: float = HEIGHT - BOTTOM
    right: float = WIDTH - RIGHT
    top: int = TOP

    @property
    def empty(self) -> bool:
        return not any(line.points for line in self.lines)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def line_chart(xs: Sequence[int], series: Sequence[tuple[str, Sequence[float | None]]], *,
               fmt: Callable[[float], str] = lambda v: f"{v:.4g}", dot_label: Callable[[int, float], str] | None = None,
               href: Callable[[int], str] | None = None, max_dots: int = 150, zero: bool = False) -> Chart:
    """A line per ``(label, values)`` over ``xs`` (version numbers); ``None`` values are
    gaps. With few points each gets a dot (a tooltip, a link)."""
    values = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    if not xs or not values:
        return Chart(WIDTH, HEIGHT, [], [], [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(0.0, min(values)) if zero else min(values)), max(values)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 1), y1 + (abs(y1) * 0.05 or 1)
    pad = (y1 - y0) * 0.05
    y0, y1 = (y0 if zero and y0 == 0 else y0 - pad), y1 + pad
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (w * (x - x0) / (x1 - x0) if x1 > x0 else w / 2), 1)

    def py(y: float) -> float:
        return round(TOP + h - h * (y - y0) / (y1 - y0), 1)

    lines = []
    for i, (label, vs) in enumerate(series):
        pts = [(x, v) for x, v in zip(xs, vs) if v is not None and math.isfinite(v)]
        dots = []
        if len(pts) <= max_dots:
            dots = [Point(px(x), py(v), dot_label(x, v) if dot_label else f"{x}: {fmt(v)}",
                          href(x) if href else None) for x, v in pts]
        lines.append(Line(label, " ".join(f"{px(x)},{py(v)}" for x, v in pts), f"series-{i % 4}", dots))
    xt = [(px(t), f"{int(t)}") for t in _ticks(x0, x1, 6) if float(t).is_integer()] if x1 > x0 else [(px(x0), str(x0))]
    yt = [(py(t), fmt(t)) for t in _ticks(y0, y1, 4) if y0 <= t <= y1]
    return Chart(WIDTH, HEIGHT, lines, xt, yt)


@dataclass(frozen=True, slots=True)
class Segment:
    x: float
    width: float
    label: str  # what is drawn on it ("v3")
    title: str  # the tooltip
    href: str
    css: str


@dataclass(frozen=True, slots=True)
class Timeline:
    width: int
    height: int
    rows: list[tuple[float, str, list[Segment]]]  # (y, alias, segments)
    xticks: list[tuple[float, str]]
    t0: float  # epoch seconds at x = left
    t1: float  # epoch seconds at x = right
    left: int
    right: int
    marker: float | None  # x of the time asked about

    @property
    def empty(self) -> bool:
        return not self.rows


ROW = 26


def timeline(intervals: Sequence[tuple[str, int | None, datetime, datetime | None]], *, now: datetime,
             href: Callable[[int], str], at: datetime | None = None) -> Timeline:
    """Alias rows of ``(alias, version or None when removed, from, to or None while current)``
    intervals, along one time axis from the first move to ``now``."""
    left, right = 110, WIDTH - RIGHT
    aliases = sorted({a for a, *_ in intervals}, key=lambda a: (a != "production", a != "staging", a))
    if not intervals:
        return Timeline(WIDTH, 40, [], [], 0, 0, left, right, None)
    t0 = min(f.timestamp() for _, _, f, _ in intervals)
    t1 = max(now.timestamp(), t0 + 1)
    span = t1 - t0

    def px(t: float) -> float:
        return round(left + (right - left) * (t - t0) / span, 1)

    rows: list[tuple[float, str, list[Segment]]] = []
    for i, alias in enumerate(aliases):
        segs = []
        for a, version, start, end in intervals:
            if a != alias or version is None:
                continue
            x = px(start.timestamp())
            x_end = px((end or now).timestamp())
            until = end.strftime("%Y-%m-%d %H:%M:%S") if end else "now"
            segs.append(Segment(x, max(x_end - x, 2.0), f"v{version}",
                                f"{alias} → v{version} from {start.strftime('%Y-%m-%d %H:%M:%S')} to {until}",
                                href(version), f"seg-{version % 6}"))
        rows.append((14 + i * ROW, alias, segs))
    ticks = []
    for k in range(5):
        t = t0 + span * k / 4
        ticks.append((px(t), datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M" if span < 3 * 86400
                                                                      else "%Y-%m-%d")))
    marker = px(at.timestamp()) if at is not None and t0 <= at.timestamp() <= t1 else None
    return Timeline(WIDTH, 14 + len(aliases) * ROW + 24, rows, ticks, t0, t1, left, right, marker)
