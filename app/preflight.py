"""Pre-flight of a launch: each check says what it looked at and, when it fails, why.

1. ``command``: the rendered shell line splits (``shlex.split``) back into exactly the argv.
2. ``flags``: every ``--flag`` given to ``vllm serve`` is in ``vllm_flags.txt``, once.
3. ``memory``: what vLLM claims at start-up — its ``gpu_memory_utilization`` of the total
   (the catalog caps it at 0.85), and at least the weights plus a KV floor — fits in the host's
   available memory plus what stopping the running model frees. On a DGX Spark the GPU shares
   this memory: over-committing it is what freezes the box, so a launch that does not fit is
   refused with the numbers.
4. ``disk``: a model still to download fits in the free space of the host's model cache.

Checks 3 and 4 read the host's last probe (``HostState``); without one they fail and say so.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import msgspec

from app import contracts as c
from app.catalog import Recipe
from app.launch import build_argv, render, round_trips

GIB = 2**30
KV_FLOOR_BYTES = 2 * GIB
"""KV budget assumed when the model's shape is unknown: room for a few long sequences."""
FLAGS_FILE = Path(__file__).resolve().parent / "vllm_flags.txt"


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str


class Preflight(msgspec.Struct, kw_only=True):
    model: str
    host: str
    ok: bool
    command: str
    checks: list[Check]


@cache
def known_flags() -> frozenset[str]:
    """The flags ``vllm serve`` accepts (the list kept in the repo)."""
    lines = FLAGS_FILE.read_text().splitlines()
    return frozenset(s for line in lines if (s := line.strip()) and not s.startswith("#"))


def check_command(argv: list[str], line: str) -> Check:
    ok = round_trips(argv, line)
    detail = f"{len(argv)} words" if ok else "the quoted line does not split back into the argv"
    return Check(name="command", ok=ok, detail=detail)


def check_flags(argv: list[str], also: frozenset[str] = frozenset()) -> Check:
    serve = next((i for i in range(len(argv) - 1) if argv[i : i + 2] == ["vllm", "serve"]), -1)
    flags = (
        [w.partition("=")[0] for w in argv[serve + 3 :] if w.startswith("--")] if serve >= 0 else []
    )
    unknown = sorted(set(flags) - known_flags() - also)
    if unknown:
        return Check(name="flags", ok=False, detail=f"not vLLM flags: {', '.join(unknown)}")
    twice = sorted({f for f in flags if flags.count(f) > 1})
    if twice:
        return Check(name="flags", ok=False, detail=f"given more than once: {', '.join(twice)}")
    return Check(name="flags", ok=True, detail=f"{len(flags)} known flags")


def check_memory(recipe: Recipe, state: c.HostState | None, freed_bytes: int = 0) -> Check:
    """What vLLM claims at start-up (its memory fraction of the total, and at least the weights
    plus a KV floor) must fit in what is available once the running model is stopped."""
    if state is None or state.probe is None:
        return Check(name="memory", ok=False, detail="no probe of this host yet: probe it first")
    total = state.probe.mem_total_bytes
    fraction = int(recipe.gpu_memory_utilization * total)
    floor = (recipe.weight_bytes or 0) + KV_FLOOR_BYTES
    need = max(fraction, floor)
    available = state.probe.mem_available_bytes + freed_bytes
    why = (
        f"{recipe.gpu_memory_utilization} of {total / GIB:.1f} GiB"
        if need == fraction
        else f"weights {floor / GIB - KV_FLOOR_BYTES / GIB:.1f} + KV {KV_FLOOR_BYTES / GIB:.0f}"
    )
    freed = f" + {freed_bytes / GIB:.1f} GiB freed by the swap" if freed_bytes else ""
    detail = (
        f"needs {need / GIB:.1f} GiB ({why}); {available / GIB:.1f} GiB available "
        f"({state.probe.mem_available_bytes / GIB:.1f} GiB now{freed})"
    )
    return Check(name="memory", ok=need <= available, detail=detail)


def freed_by_stopping(previous: c.ModelState | None, state: c.HostState | None) -> int:
    """Memory the running model gives back when a swap stops it (its fraction of the total)."""
    if previous is None or previous.model is None or state is None or state.probe is None:
        return 0
    fraction = previous.recipe.get("gpu_memory_utilization", 0) or 0
    return int(float(fraction) * state.probe.mem_total_bytes)


def check_disk(recipe: Recipe, state: c.HostState | None, on_disk: bool) -> Check:
    if on_disk or recipe.local_path:
        return Check(name="disk", ok=True, detail="weights already on the host")
    if state is None or state.probe is None or not state.probe.disks:
        return Check(name="disk", ok=False, detail="no probe of this host yet: probe it first")
    if not recipe.weight_bytes:
        return Check(name="disk", ok=True, detail="download size unknown: not checked")
    cache_disk = state.probe.disks[-1]  # the probe lists $HOME, then the model cache
    ok = recipe.weight_bytes <= cache_disk.free_bytes
    detail = (
        f"download {recipe.weight_bytes / GIB:.1f} GiB, {cache_disk.free_bytes / GIB:.1f} GiB "
        f"free on {cache_disk.path}"
    )
    return Check(name="disk", ok=ok, detail=detail)


def run(
    key: str, recipe: Recipe, host: str, state: c.HostState | None, on_disk: bool = False,
    previous: c.ModelState | None = None, host_flags: frozenset[str] = frozenset(),
) -> Preflight:  # fmt: skip
    """``host_flags``: what the host's vLLM reported (``vllm_flags``), accepted as well."""
    argv = build_argv(key, recipe)
    line = render(argv)
    checks = [
        check_command(argv, line),
        check_flags(argv, host_flags),
        check_memory(recipe, state, freed_by_stopping(previous, state)),
        check_disk(recipe, state, on_disk),
    ]
    return Preflight(
        model=key, host=host, ok=all(ch.ok for ch in checks), command=line, checks=checks
    )
