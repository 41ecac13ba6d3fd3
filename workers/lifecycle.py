"""Model lifecycle on a host: ``swap`` (pre-flight → stop → launch → log until ready → one
token) and ``stop``. The recipe travels in the command (validated again here: the bus is a
boundary too), so an executor needs no access to the front's catalog files.

Readiness: vLLM answers ``/health`` and lists the served name in ``/v1/models``; then a
1-token completion proves it serves. A start is slow, not hung, while its log moves; a wedge
pattern in the log or the container exiting fails it at once with the last log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import httpx
import msgspec

from app import catalog, preflight, shellsafe
from app import contracts as c
from app.bus import Bus
from app.errors import SparkError
from app.launch import DEFAULT_CLUSTER_SCRIPT, build_argv, cluster_stop_argv, render
from workers.actions import JobContext
from workers.notify import Notifier
from workers.probe import probe

WEDGE_PATTERNS = (
    "cudaErrorUnknown", "CUBLAS_STATUS_", "CUFFT_INTERNAL_ERROR", "Engine core init failed",
)  # fmt: skip
QUIET_LIMIT_S = 300.0
"""A start whose log is silent this long (and not ready) is hung."""
POLL_S = 0.2
TAIL = 20


class SwapFailed(SparkError):
    code = "SWAP_FAILED"
    status = 502


def _recipe(args: dict[str, Any], field: str = "model") -> tuple[str, catalog.Recipe]:
    key = args.get(field)
    recipe = catalog.validate_recipe(key, args.get("recipe"), source="command")
    return str(key), recipe


def _base_url(ctx: JobContext, recipe: catalog.Recipe) -> str:
    address = "127.0.0.1" if ctx.host.transport == "local" else ctx.host.address
    return f"http://{address}:{recipe.port}"


class Swap:
    """Put ``args.model`` (with ``args.recipe``) on the host, replacing what runs there; the
    outcome goes to the webhooks once the swap has ended."""

    def __init__(self, bus: Bus, notifier: Notifier, cluster_script: str = DEFAULT_CLUSTER_SCRIPT):
        self.bus = bus
        self.notifier = notifier
        self.cluster_script = cluster_script

    async def close(self) -> None:
        await self.notifier.close()

    async def reconcile(self, ctx: JobContext) -> Any | None:
        """Taken over mid-swap: if the model already serves, the swap happened."""
        key, recipe = _recipe(ctx.job.args)
        with contextlib.suppress(SparkError, httpx.HTTPError):
            if await _serves(_base_url(ctx, recipe), recipe.served_name or key):
                await self._record(ctx, key, recipe)
                return {"model": key, "host": ctx.host.alias, "port": recipe.port}
        return None

    async def run(self, ctx: JobContext) -> Any:
        base = {"job_id": ctx.job.id, "host": ctx.host.alias, "model": ctx.job.args.get("model")}
        try:
            result = await self._swap(ctx)
        except SparkError as exc:
            self.notifier.send({"event": "swap_failed", **base, "error": exc.message,
                                "code": exc.code, "ts": c.now()})  # fmt: skip
            raise
        self.notifier.send({"event": "swap_complete", **base, **result, "ts": c.now()})
        return result

    async def _swap(self, ctx: JobContext) -> dict[str, Any]:
        key, recipe = _recipe(ctx.job.args)
        previous = await self.bus.get_model_state(ctx.host.alias)
        state = c.HostState(
            host=ctx.host.alias, up=True, checked_at=c.now(),
            probe=await probe(ctx.runner, ctx.host.alias, timeout=60),
        )  # fmt: skip
        check = preflight.run(
            key, recipe, ctx.host.alias, state, previous=previous,
            host_flags=await self.bus.get_vllm_flags(ctx.host.alias),
        )  # fmt: skip
        await ctx.progress("pre-flight", data=msgspec.to_builtins(check.checks))
        failed = [ch for ch in check.checks if not ch.ok and ch.name != "disk"]
        if failed:
            first = failed[0]
            raise SparkError(
                f"pre-flight failed: {first.name}: {first.detail}", code="PREFLIGHT_FAILED"
            )
        t0 = time.monotonic()
        try:
            await _stop_recipes(
                ctx, [recipe, _recipe_of(previous)], self.cluster_script,
                {previous.container if previous else None},
            )  # fmt: skip
            await _launch(ctx, key, recipe, self.cluster_script)
        except SparkError as exc:
            if not await self._restore(ctx, previous, recipe, exc):
                await _record_stopped(self.bus, ctx)  # what ran was stopped; nothing serves
            raise
        await self._record(ctx, key, recipe)
        return {
            "model": key, "host": ctx.host.alias, "port": recipe.port,
            "ready_s": round(time.monotonic() - t0, 3),
            "previous": previous.model if previous else None,
        }  # fmt: skip

    async def _restore(
        self, ctx: JobContext, previous: c.ModelState | None, failed: catalog.Recipe,
        exc: SparkError,
    ) -> bool:  # fmt: skip
        """Bring the previous model back when the failed recipe asks for it; True if it
        serves again."""
        if previous is None or previous.model is None or not failed.restore_previous_on_failure:
            return False
        await ctx.progress(f"swap failed; bringing back {previous.model}")
        try:
            recipe = catalog.validate_recipe(previous.model, previous.recipe, source="state")
            await _stop_recipes(ctx, [failed, recipe], self.cluster_script)
            await _launch(ctx, previous.model, recipe, self.cluster_script)
            await self._record(ctx, previous.model, recipe)
            exc.message += f" (previous model {previous.model} restored)"
            return True
        except SparkError as again:
            exc.message += f" (restoring {previous.model} failed too: {again.message})"
            return False

    async def _record(self, ctx: JobContext, key: str, recipe: catalog.Recipe) -> None:
        state = c.ModelState(
            host=ctx.host.alias, model=key, recipe=msgspec.to_builtins(recipe),
            container=recipe.container, port=recipe.port, since=c.now(), job_id=ctx.job.id,
        )  # fmt: skip
        await self.bus.put_model_state(state)
        event = c.Event(kind="model", ts=state.since, host=ctx.host.alias, job_id=ctx.job.id,
                        data={"model": key, "port": recipe.port})  # fmt: skip
        await self.bus.publish_event(c.evt_host(ctx.host.alias, "model"), event)


class Stop:
    """Stop the host's model (its container; a cluster-mode model on every box) and record
    that nothing runs."""

    def __init__(self, bus: Bus, cluster_script: str = DEFAULT_CLUSTER_SCRIPT):
        self.bus = bus
        self.cluster_script = cluster_script

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # stopping twice is harmless

    async def run(self, ctx: JobContext) -> Any:
        current = await self.bus.get_model_state(ctx.host.alias)
        container = str(ctx.job.args.get("container") or (current and current.container) or "")
        if not container:
            return {"stopped": None}
        shellsafe.check_container(container)
        running = _recipe_of(current)
        if running is not None and running.container == container:
            await _stop_recipes(ctx, [running], self.cluster_script)
        else:
            await _stop(ctx, {container})
        await _record_stopped(self.bus, ctx)
        return {"stopped": container}


class Restart:
    """Restart the host's current model in place (``docker restart``; a cluster-mode model is
    stopped and launched again through the head node's script) and wait until it serves
    again, as a swap does; a host with no model recorded has nothing to restart."""

    def __init__(self, bus: Bus, cluster_script: str = DEFAULT_CLUSTER_SCRIPT):
        self.bus = bus
        self.cluster_script = cluster_script

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None  # restarting twice is harmless

    async def run(self, ctx: JobContext) -> Any:
        ctx.args_only(set())
        current = await self.bus.get_model_state(ctx.host.alias)
        if current is None or current.model is None:
            raise SparkError("no model runs on this host", code="NO_MODEL", status=409)
        recipe = catalog.validate_recipe(current.model, current.recipe, source="state")
        await ctx.progress(f"restarting {current.model}")
        t0 = time.monotonic()
        if recipe.mode == "cluster":
            await _stop_recipes(ctx, [recipe], self.cluster_script)
            await _launch(ctx, current.model, recipe, self.cluster_script)
            return {"model": current.model, "ready_s": round(time.monotonic() - t0, 3)}
        res = await ctx.runner.run(
            f"docker restart {shellsafe.quote(recipe.container)}", timeout=300
        )
        if res.exit_status != 0:
            tail = _tail(deque(res.stderr.splitlines()))
            raise SwapFailed(f"docker restart of {recipe.container} failed: {tail}")
        await _wait_ready(ctx, current.model, recipe)
        return {"model": current.model, "ready_s": round(time.monotonic() - t0, 3)}


async def _record_stopped(bus: Bus, ctx: JobContext) -> None:
    """Nothing serves on the host now: the state bucket and ``spark.evt.host.<h>.model``."""
    await bus.put_model_state(
        c.ModelState(host=ctx.host.alias, model=None, since=c.now(), job_id=ctx.job.id)
    )
    event = c.Event(kind="model", ts=c.now(), host=ctx.host.alias, job_id=ctx.job.id,
                    data={"model": None})  # fmt: skip
    await bus.publish_event(c.evt_host(ctx.host.alias, "model"), event)


def _recipe_of(state: c.ModelState | None) -> catalog.Recipe | None:
    """The recipe a model state recorded (None if nothing runs or it no longer validates)."""
    if state is None or state.model is None or not state.recipe:
        return None
    try:
        return catalog.validate_recipe(state.model, state.recipe, source="state")
    except SparkError:
        return None


async def _stop_recipes(
    ctx: JobContext,
    recipes: list[catalog.Recipe | None],
    cluster_script: str,
    containers: set[str | None] | None = None,
) -> None:
    """Stop what these recipes run: cluster-mode ones through the head node's script (its
    ``stop`` reaches every box), then every container by name on this host."""
    for recipe in recipes:
        if recipe is not None and recipe.mode == "cluster":
            await ctx.progress(f"stopping the cluster's {recipe.container}")
            line = render(cluster_stop_argv(recipe, cluster_script))
            await ctx.runner.run(f"{line} >/dev/null 2>&1; true", timeout=120)
    names = {r.container for r in recipes if r is not None} | (containers or set())
    await _stop(ctx, names)


async def _stop(ctx: JobContext, containers: set[str | None]) -> None:
    names = sorted(shellsafe.check_container(n) for n in containers if n)
    if not names:
        return
    await ctx.progress(f"stopping {', '.join(names)}")
    res = await ctx.runner.run(
        f"docker rm -f {shellsafe.quote_argv(names)} >/dev/null 2>&1; true", timeout=120
    )
    if res.exit_status != 0:
        raise SwapFailed("could not stop the running model")


async def _launch(
    ctx: JobContext, key: str, recipe: catalog.Recipe, cluster_script: str = DEFAULT_CLUSTER_SCRIPT
) -> None:
    """Start the recipe and wait until it serves; fail with the log's last lines."""
    await ctx.progress(f"launching {key}")
    res = await ctx.runner.run(render(build_argv(key, recipe, cluster_script)), timeout=300)
    if res.exit_status != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise SwapFailed(f"launch of {key} refused: {' | '.join(tail)[:500]}")
    await _wait_ready(ctx, key, recipe)


async def _wait_ready(ctx: JobContext, key: str, recipe: catalog.Recipe) -> None:
    base, served = _base_url(ctx, recipe), recipe.served_name or key
    last: deque[str] = deque(maxlen=TAIL)
    moved = {"at": time.monotonic()}
    ended, done = asyncio.Event(), asyncio.Event()
    wedged: list[str] = []

    async def follow() -> None:
        cmd = f"docker logs -f {shellsafe.quote(recipe.container)}"
        try:
            async with contextlib.aclosing(ctx.runner.transport.stream_lines(cmd)) as lines:
                async for line in lines:
                    last.append(line)
                    moved["at"] = time.monotonic()
                    await ctx.log(line)
                    if any(p in line for p in WEDGE_PATTERNS):
                        wedged.append(line)
                    if done.is_set():
                        break
        finally:
            ended.set()

    logs = asyncio.create_task(follow())
    deadline = time.monotonic() + recipe.start_timeout_s
    try:
        while True:
            await asyncio.sleep(POLL_S)
            if wedged:
                raise SwapFailed(f"{key} wedged: {wedged[0][:300]}")
            with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
                if await _serves(base, served):
                    break
            now = time.monotonic()
            if ended.is_set() and not await _running(ctx, recipe.container):
                raise SwapFailed(f"{key} exited while starting: {_tail(last)}")
            if now > deadline:
                raise SwapFailed(f"{key} not ready after {recipe.start_timeout_s} s: {_tail(last)}")
            if now - moved["at"] > min(QUIET_LIMIT_S, recipe.start_timeout_s):
                raise SwapFailed(f"{key} hung: no log output for {now - moved['at']:.0f} s")
        await _one_token(base, served)
    finally:
        # nats-py swallows a cancel that lands inside a publish, so the follower also stops
        # at its next line by itself; it is not awaited for longer than a moment
        done.set()
        logs.cancel()
        await asyncio.wait({logs}, timeout=2)


async def _serves(base: str, served: str) -> bool:
    async with httpx.AsyncClient(timeout=3.0) as client:
        if (await client.get(f"{base}/health")).status_code != 200:
            return False
        models = (await client.get(f"{base}/v1/models")).json().get("data", [])
        return any(m.get("id") == served for m in models)


async def _one_token(base: str, served: str) -> None:
    try:
        async with httpx.AsyncClient(timeout=60.0) as client:
            r = await client.post(
                f"{base}/v1/completions", json={"model": served, "prompt": "ping", "max_tokens": 1}
            )
    except httpx.HTTPError as exc:
        raise SwapFailed(
            f"{served} is up but a 1-token completion failed ({type(exc).__name__})"
        ) from exc
    if r.status_code != 200:
        raise SwapFailed(f"{served} is up but a 1-token completion answered {r.status_code}")


async def _running(ctx: JobContext, container: str) -> bool:
    res = await ctx.runner.run(
        f"docker inspect -f '{{{{.State.Running}}}}' {shellsafe.quote(container)}", timeout=30
    )
    return res.stdout.strip() == "true"


def _tail(lines: deque[str]) -> str:
    return " | ".join(list(lines)[-3:])[:500] or "(no log output)"
