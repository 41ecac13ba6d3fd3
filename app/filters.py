"""Jinja filters for the pages: sizes, ages, durations, timestamps."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any


def gib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def size(n: float | None) -> str:
    """Bytes in decimal units (transfers: what ``hf`` and S3 report): ``4.2 MB``."""
    if n is None:
        return "n/a"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            rest = s % size
            sub = {"d": ("h", 3600), "h": ("min", 60), "min": ("s", 1)}[unit]
            return (
                f"{s // size} {unit} {rest // sub[1]} {sub[0]}"
                if rest >= sub[1]
                else f"{s // size} {unit}"
            )
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def ago(epoch: float | None) -> str:
    return "never" if not epoch else f"{duration(max(0.0, time.time() - epoch))} ago"


def ts(epoch: float | None) -> str:
    return "" if not epoch else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def register(engine: Any) -> None:
    for f in (gib, size, duration, ago, ts):
        engine.engine.filters[f.__name__] = f
