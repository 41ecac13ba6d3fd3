"""``scan``: the models already in a host's Hugging Face cache, with their config.json.

One command on the kept shell walks ``models--owner--name`` in the cache (the same
:data:`workers.weights.CACHE_EXPR` as ``download``, ``disk`` and ``delete``) and prints, per
model, its size (``du -sb``), whether a download is unfinished (``*.incomplete`` blobs) and the
config.json of its current snapshot (``refs/main``, else the newest snapshot that has one),
read up to :data:`app.ondisk.CONFIG_CAP` bytes. Every line the script writes starts with a
random marker, so file contents cannot pose as structure. The result, with a subset of each
config (:func:`app.ondisk.config_subset`), is stored as ``disk.<host>`` in the state bucket, where
``GET /api/models/ondisk`` reads it without running a job.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

from app import contracts as c
from app import ondisk, shellsafe
from app.bus import Bus
from app.errors import HostError
from workers.actions import JobContext
from workers.weights import CACHE_EXPR, _human, check_repo, repo_of

SCAN_TIMEOUT_S = 300.0


def scan_script(nonce: str, cap: int = ondisk.CONFIG_CAP) -> str:
    """The remote command (bash); its lines are ``<mark> cache|model|config|end ...``."""
    m = f"__SPARK_SCAN_{nonce}"
    return (
        f"m={m}; cache={CACHE_EXPR}; "
        'printf \'%s cache %s\\n\' "$m" "$cache"; '
        '[ -d "$cache" ] || exit 0; '
        'for d in "$cache"/models--*; do [ -d "$d" ] || continue; '
        'inc=0; for b in "$d"/blobs/*.incomplete; do [ -e "$b" ] && inc=1; break; done; '
        'size=$(du -sb -- "$d" 2>/dev/null | cut -f1); '
        'snap=$(head -c 64 -- "$d/refs/main" 2>/dev/null); '
        'case "$snap" in ""|*[!0-9a-f]*) snap="";; esac; '
        '[ -n "$snap" ] && [ -f "$d/snapshots/$snap/config.json" ] || snap=$('
        'ls -1t -- "$d/snapshots" 2>/dev/null | while IFS= read -r s; do '
        '[ -f "$d/snapshots/$s/config.json" ] && { printf \'%s\' "$s"; break; }; done); '
        'printf \'%s model %s\\t%s\\t%s\\t%s\\n\' "$m" "$size" "$inc" "${d##*/}" "$snap"; '
        '[ -n "$snap" ] || continue; f="$d/snapshots/$snap/config.json"; '
        'printf \'%s config %s\\n\' "$m" "$(wc -c < "$f" 2>/dev/null | tr -d \' \')"; '
        f'head -c {cap} -- "$f" 2>/dev/null; '
        "printf '\\n%s end\\n' \"$m\"; "
        "done; true"
    )


def _config(text: str, size: str, cap: int) -> tuple[dict[str, Any] | None, str | None]:
    """(config subset, None) or (None, why not)."""
    if not size.isdigit() or int(size) > cap:
        return None, f"config.json over {cap // 1024} KiB" if size.isdigit() else "unreadable"
    try:
        raw = json.loads(text)
    except ValueError:
        return None, "config.json is not valid JSON"
    if not isinstance(raw, dict):
        return None, "config.json is not a JSON object"
    return ondisk.config_subset(raw), None


def parse_scan(stdout: str, nonce: str, cap: int = ondisk.CONFIG_CAP) -> dict[str, Any]:
    """:func:`scan_script`'s output → ``{"cache", "models": [{"repo", "bytes", "partial",
    "snapshot", "config", "config_error"?}]}``, models sorted by repo."""
    mark = f"__SPARK_SCAN_{nonce} "
    out: dict[str, Any] = {"cache": None, "models": []}
    model: dict[str, Any] | None = None
    body: list[str] | None = None
    size = ""
    for line in stdout.split("\n"):
        if not line.startswith(mark):
            if body is not None:
                body.append(line)
            continue
        kind, _, rest = line[len(mark) :].partition(" ")
        if body is not None and kind != "end":
            body = None  # a config cut short: the next record starts
        if kind == "cache":
            out["cache"] = rest
        elif kind == "model":
            bytes_, inc, name, snap = [*rest.split("\t", 3), "", "", ""][:4]
            repo = repo_of(name)
            model = None
            with contextlib.suppress(shellsafe.UnsafeValue):
                repo = check_repo(repo) if repo else None
                if repo and bytes_.isdigit():
                    model = {"repo": repo, "bytes": int(bytes_), "partial": inc == "1",
                             "snapshot": snap or None, "config": None}  # fmt: skip
                    out["models"].append(model)
        elif kind == "config":
            body, size = [], rest.strip()
        elif kind == "end" and body is not None:
            if model is not None:
                config, error = _config("\n".join(body), size, cap)
                model["config"] = config
                if error:
                    model["config_error"] = error
            body = None
    out["models"].sort(key=lambda x: x["repo"].lower())
    return out


class Scan:
    """``scan``: list the host's cached models with their config; store as ``disk.<host>``."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # reading again is harmless

    async def run(self, ctx: JobContext) -> Any:
        ctx.args_only(set())
        nonce = secrets.token_hex(8)
        res = await ctx.runner.run(scan_script(nonce), timeout=min(ctx.timeout_s, SCAN_TIMEOUT_S))
        if res.exit_status != 0:
            tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise HostError(f"scan failed (exit {res.exit_status}): {tail}", code="SCAN_FAILED")
        parsed = parse_scan(res.stdout, nonce)
        if parsed["cache"] is None:
            raise HostError("scan: the host did not name its HF cache", code="SCAN_FAILED")
        result = {"host": ctx.host.alias, **parsed}
        await self.bus.put_disk_scan(
            ctx.host.alias, {**result, "scanned_at": c.now(), "job_id": ctx.job.id}
        )
        total = sum(m["bytes"] for m in parsed["models"])
        await ctx.progress(f"{len(parsed['models'])} model(s) in {parsed['cache']} "
                           f"({_human(total)})")  # fmt: skip
        return result
