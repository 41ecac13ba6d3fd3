"""``vllm_flags``: ask a host's vLLM image which flags ``vllm serve`` takes (``--help=all``)
and keep the list as ``vllm_flags.<host>`` in the state bucket; the pre-flight accepts those
flags as well as the list kept in the repo (app/vllm_flags.txt), so a newer image's flags can
be used without a release."""

from __future__ import annotations

import re
from typing import Any

from app import catalog, preflight, shellsafe
from app import contracts as c
from app.bus import Bus
from app.errors import HostError
from workers.actions import JobContext

FLAG_RE = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*[a-z0-9]")
MIN_FLAGS = 20
"""Fewer flags than this in the help text means it was not vLLM's help: refuse to store it."""
HELP_TIMEOUT_S = 600.0  # a first run may pull the image


def parse_help(text: str) -> list[str]:
    """Every ``--flag`` the help text names (but ``--help``), sorted, once."""
    return sorted(set(FLAG_RE.findall(text)) - {"--help"})


class VllmFlags:
    reads_only = False  # it runs a container (and may pull its image)

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # asking again is harmless

    async def run(self, ctx: JobContext) -> Any:
        args = ctx.args_only({"image"})
        image = shellsafe.check_image(args.get("image") or catalog.DEFAULT_IMAGE)
        await ctx.progress(f"asking {image} for vllm serve --help=all")
        res = await ctx.runner.run(
            f"docker run --rm {shellsafe.quote(image)} vllm serve --help=all",
            timeout=min(ctx.timeout_s, HELP_TIMEOUT_S),
        )
        flags = parse_help(res.stdout)
        if res.exit_status != 0 or len(flags) < MIN_FLAGS:
            tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise HostError(
                f"could not read vLLM's flags from {image} (exit {res.exit_status}, "
                f"{len(flags)} flags): {tail}",
                code="FLAGS_FAILED",
            )
        known = preflight.known_flags()
        record = {"image": image, "flags": flags, "refreshed_at": c.now(), "job_id": ctx.job.id}
        await self.bus.put_vllm_flags(ctx.host.alias, record)
        return {
            "host": ctx.host.alias, "image": image, "count": len(flags),
            "new": [f for f in flags if f not in known],
            "not_reported": sorted(known - set(flags)),
        }  # fmt: skip
