"""Small inline SVG charts for the dashboard: a sparkline of samples over a time window and a
24-hour bar of outages. Pure functions returning markup (no JavaScript, no chart library)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from markupsafe import Markup, escape

WIDTH = 120
HEIGHT = 28
COLUMNS = 60
"""Most points drawn per chart: samples are averaged into this many time slots (one minute of
an hour each), so a chart costs the same at a 1 s poll as at 60 s."""


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def bucketed(
    samples: Sequence[tuple[float, float | None]], since: float, until: float, columns: int
) -> list[tuple[float, float | None]]:
    """Samples inside [since, until] averaged per time slot (``columns`` slots): each slot with
    samples becomes (mean ts, mean value), its value None when none of them had one."""
    span = max(until - since, 1e-9)
    slots: dict[int, list[tuple[float, float | None]]] = {}
    for ts, v in samples:
        if since <= ts <= until:
            slot = min(int((ts - since) / span * columns), columns - 1)
            slots.setdefault(slot, []).append((ts, v))
    out: list[tuple[float, float | None]] = []
    for _, group in sorted(slots.items()):
        values = [v for _, v in group if v is not None]
        mean_ts = sum(t for t, _ in group) / len(group)
        out.append((mean_ts, sum(values) / len(values) if values else None))
    return out


def segments(
    samples: Iterable[tuple[float, float | None]], gap_s: float
) -> list[list[tuple[float, float]]]:
    """Samples (ts, value) oldest first, split where a value is missing or two samples are more
    than ``gap_s`` apart (the host was down, or nothing probed it): each run is drawn alone."""
    runs: list[list[tuple[float, float]]] = []
    last_ts: float | None = None
    for ts, value in samples:
        if value is None:
            last_ts = None
            continue
        if last_ts is None or ts - last_ts > gap_s or not runs:
            runs.append([])
        runs[-1].append((ts, value))
        last_ts = ts
    return runs


def sparkline(
    samples: Sequence[tuple[float, float | None]],
    since: float,
    until: float,
    *,
    lo: float = 0.0,
    hi: float = 100.0,
    gap_s: float = 120.0,
    label: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
    columns: int = COLUMNS,
) -> Markup:
    """An ``<svg class="spark">`` of ``samples`` (ts, value) between ``since`` and ``until`` on a
    fixed ``lo``..``hi`` scale (values clamped), averaged into ``columns`` slots, one polyline
    per run of slots (see ``segments``); a run of one is a dot. ``label`` becomes the title
    (escaped)."""
    span = max(until - since, 1e-9)
    scale = max(hi - lo, 1e-9)
    pad = 1.5

    def xy(ts: float, v: float) -> str:
        x = (min(max(ts, since), until) - since) / span * width
        y = height - pad - (min(max(v, lo), hi) - lo) / scale * (height - 2 * pad)
        return f"{_fmt(x)},{_fmt(y)}"

    inside = bucketed(samples, since, until, columns)
    shapes = []
    for run in segments(inside, gap_s):
        if len(run) == 1:
            x, y = xy(*run[0]).split(",")
            shapes.append(f'<circle cx="{x}" cy="{y}" r="1.5"/>')
        else:
            points = " ".join(xy(t, v) for t, v in run)
            shapes.append(f'<polyline points="{points}"/>')
    empty = "" if shapes else " spark-empty"
    title = f"<title>{escape(label)}</title>" if label else ""
    return Markup(
        f'<svg class="spark{empty}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" preserveAspectRatio="none" role="img" aria-label="{escape(label)}">'
        f'{title}<line class="spark-base" x1="0" y1="{height - pad}" x2="{width}" '
        f'y2="{height - pad}"/>{"".join(shapes)}</svg>'
    )


def outage_bar(
    outages: Iterable[tuple[float, float | None]],
    since: float,
    until: float,
    *,
    label: str = "",
    width: int = 1440,
    height: int = 14,
    min_width: float = 2.0,
) -> Markup:
    """An ``<svg class="outages">`` from ``since`` to ``until``: one red bar per (start, end)
    down period (``end`` None: still down, drawn to ``until``), at least ``min_width`` wide so a
    half-second outage is still seen; hour ticks every 6 hours of the span."""
    span = max(until - since, 1e-9)
    bars = []
    for start, end in outages:
        stop = until if end is None else end
        if stop < since or start > until:
            continue
        x0 = (max(start, since) - since) / span * width
        x1 = (min(stop, until) - since) / span * width
        w = max(x1 - x0, min_width)
        bars.append(f'<rect class="down" x="{_fmt(min(x0, width - w))}" y="0" width="{_fmt(w)}" '
                    f'height="{height}"/>')  # fmt: skip
    ticks = "".join(
        f'<line class="tick" x1="{_fmt(width * i / 4)}" y1="0" x2="{_fmt(width * i / 4)}" '
        f'y2="{height}"/>'
        for i in range(1, 4)
    )
    return Markup(
        f'<svg class="outages" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'role="img" aria-label="{escape(label)}"><rect class="span" x="0" y="0" '
        f'width="{width}" height="{height}"/>{ticks}{"".join(bars)}</svg>'
    )
