"""Pre-flight of a launch: each check says what it looked at and, when it fails, why.

1. ``command``: the rendered shell line splits (``shlex.split``) back into exactly the argv.
2. ``flags``: every ``--flag`` given to ``vllm serve`` is in ``vllm_flags.txt``, once.
3. ``memory``: the model's weights plus its KV budget fit in the host's available memory times
   the ceiling (0.85). On a DGX Spark the GPU shares this memory: over-committing it is what
   freezes the box, so a launch that does not fit is refused with the numbers.
4. ``disk``: a model still to download fits in the free space of the host's model cache.

Checks 3 and 4 read the host's last probe (``HostState``); without one they fail and say so.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import msgspec

from app import contracts as c
from app.catalog import MEMORY_CEILING, Recipe
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


def check_flags(argv: list[str]) -> Check:
    serve = argv.index("serve") if "serve" in argv else len(argv)
    flags = [w.partition("=")[0] for w in argv[serve + 2 :] if w.startswith("--")]
    unknown = sorted(set(flags) - known_flags())
    if unknown:
        return Check(name="flags", ok=False, detail=f"not vLLM flags: {', '.join(unknown)}")
    twice = sorted({f for f in flags if flags.count(f) > 1})
    if twice:
        return Check(name="flags", ok=False, detail=f"given more than once: {', '.join(twice)}")
    return Check(name="flags", ok=True, detail=f"{len(flags)} known flags")


def check_memory(recipe: Recipe, state: c.HostState | None, freed_bytes: int = 0) -> Check:
    """Weights + KV budget ≤ (available + what stopping the current model frees) * ceiling."""
    if state is None or state.probe is None:
        return Check(name="memory", ok=False, detail="no probe of this host yet: probe it first")
    if not recipe.weight_bytes:
        return Check(name="memory", ok=True, detail="weight size unknown: not checked")
    need = recipe.weight_bytes + KV_FLOOR_BYTES
    available = state.probe.mem_available_bytes + freed_bytes
    allowed = int(available * MEMORY_CEILING)
    numbers = (
        f"needs {need / GIB:.1f} GiB (weights {recipe.weight_bytes / GIB:.1f} + KV "
        f"{KV_FLOOR_BYTES / GIB:.1f}); allowed {allowed / GIB:.1f} GiB "
        f"({available / GIB:.1f} GiB available * {MEMORY_CEILING})"
    )
    return Check(name="memory", ok=need <= allowed, detail=numbers)


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
    key: str, recipe: Recipe, host: str, state: c.HostState | None, on_disk: bool = False
) -> Preflight:
    argv = build_argv(key, recipe)
    line = render(argv)
    checks = [
        check_command(argv, line),
        check_flags(argv),
        check_memory(recipe, state),
        check_disk(recipe, state, on_disk),
    ]
    return Preflight(
        model=key, host=host, ok=all(ch.ok for ch in checks), command=line, checks=checks
    )
